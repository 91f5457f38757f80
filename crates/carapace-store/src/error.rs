use std::path::PathBuf;

use carapace_types::SessionId;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be opened, read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A stored value cannot be read back (an unknown role, label or source name, bad JSON).
    #[error("corrupt value in the database: {0}")]
    Corrupt(String),
    /// The database was written by a newer version of Carapace.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// The `user_version` found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// No session has this id.
    #[error("no session {0}")]
    UnknownSession(SessionId),
    /// A session with this id already exists.
    #[error("session {0} already exists")]
    SessionExists(SessionId),
    /// A JSON value nests deeper than the store can read back.
    #[error("json nests deeper than {max} levels")]
    TooDeep {
        /// The deepest nesting the store accepts.
        max: usize,
    },
    /// The audit chain failed verification; `seq` names the first bad record.
    #[error("audit log broken at record {seq}: {reason}")]
    AuditBroken {
        /// The first record (or head position) found wrong.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The audit key file may be read by other users.
    #[error(
        "audit key file {} is readable by group or other (mode {mode:o}); run `chmod 600` on it",
        path.display()
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The audit key file exists but does not hold a key.
    #[error("audit key file {} is invalid: {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it (never its contents).
        reason: String,
    },
}

impl StoreError {
    /// For `map_err`: the context is only formatted when there is an error.
    pub(crate) fn io(
        context: impl FnOnce() -> String,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| StoreError::Io {
            context: context(),
            source,
        }
    }

    pub(crate) fn broken(seq: u64, reason: impl Into<String>) -> StoreError {
        StoreError::AuditBroken {
            seq,
            reason: reason.into(),
        }
    }
}
