//! SQLite persistence for Carapace: sessions and their messages, the labels of files the
//! agent wrote, the token usage of model calls, plain-English rules as the model compiled
//! them, the dead-letter queue (sealed by the caller), and the append-only audit log
//! (hash-chained, with an HMAC-signed head).
//! This is the only crate that speaks SQL; no other crate opens the database.
//!
//! The store keeps facts and never makes a policy decision: it does not decide whether
//! anything is allowed, and it does not derive one label from another except by the join
//! that keeps a session's label from ever going down. Callers pass resolved values (a
//! workspace-relative path, a digest, a label) and get back exactly what was stored; a
//! stored value it cannot read back is an error, never a guess and never a panic.

mod audit;
mod canonical;
mod compiled_rules;
mod dead_letters;
mod error;
mod schema;
mod session;
mod session_policy;
mod usage;

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

pub use audit::{AuditEntry, AuditKey, AuditReport};
pub use canonical::{MAX_JSON_DEPTH, canonical_json};
pub use compiled_rules::{Compilation, CompiledRule};
pub use dead_letters::{
    DeadLetter, DeadLetterMeta, DeadLetterSealed, DeadLetterStatus, NewDeadLetter, Resolution,
    associated_data as dead_letter_associated_data,
};
pub use error::StoreError;
pub use session::{AgentWrite, MessageRecord, NewMessage, Role, SessionRecord};
pub use session_policy::GrantRecord;
pub use usage::{UsageRecord, UsageRow, UsageTotal, utc_day};

/// The database. One connection behind a mutex; cheap calls, so callers share one `Store`.
pub struct Store {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct Inner {
    conn: Connection,
    /// The audit head this store last wrote (see `audit.rs`).
    head: Option<audit::TrustedHead>,
}

impl Store {
    /// Opens or creates the database: file mode 0600, WAL, synchronous=NORMAL, foreign_keys,
    /// busy_timeout 5s, migrations via PRAGMA user_version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        make_private(path)?;
        // SQLite creates the -wal and -shm files with the main file's permissions, but an
        // existing pair from an older run may be wider.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = Path::new(&side);
            if side.exists() {
                make_private(side)?;
            }
        }
        Store::configure(Connection::open(path)?)
    }

    /// Opens the database for the one process that owns it (the daemon): like
    /// [`Store::open`], but SQLite's file lock is taken once and kept
    /// (`locking_mode=EXCLUSIVE`) instead of around every transaction, which halves the
    /// cost of an audit append. No other process can open the file meanwhile; they ask
    /// the daemon instead.
    pub fn open_exclusive(path: &Path) -> Result<Store, StoreError> {
        let store = Store::open(path)?;
        {
            let inner = store.lock();
            inner
                .conn
                .pragma_update(None, "locking_mode", "EXCLUSIVE")?;
            // The lock is taken by the next access; take it now, so a second owner
            // fails here and not on its first write.
            inner.conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
        }
        Ok(store)
    }

    /// A fresh database that lives in memory only, for tests and dry runs.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::configure(Connection::open_in_memory()?)
    }

    fn configure(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        // Answers "memory" for an in-memory database, which is fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        // With WAL, NORMAL loses at most the last commits on power loss and never corrupts.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Store {
            inner: Mutex::new(Inner { conn, head: None }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock dropped any open transaction, which rolled back,
        // and the audit head cache is only written after a commit: the state is sound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates `path` with mode 0600 if it is missing, and narrows it to 0600 if it exists
/// with group or other bits.
fn make_private(path: &Path) -> Result<(), StoreError> {
    let context = || format!("cannot open {}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(StoreError::io(context))?;
    let mode = file
        .metadata()
        .map_err(StoreError::io(context))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(StoreError::io(context))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Store;

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }
}
