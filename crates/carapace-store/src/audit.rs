//! The audit log: an append-only hash chain whose head is signed with HMAC-SHA256.
//!
//! Record `n` stores `hash_n = SHA-256(hash_{n-1} || n as u64 big-endian || canonical
//! JSON of the record)`, with 32 zero bytes before the first record. The chain alone finds
//! an edit, a deletion or a reordering in the middle; the signed head (the last seq and
//! hash, with the tag `HMAC-SHA256(key, b"carapace-audit-head-v2" || seq || hash)` stored
//! as lowercase hex in `audit_head.signature`) finds records cut from the end and records
//! appended by anyone without the key.
//!
//! The key is symmetric: whoever can verify the log can also sign a head. That is enough
//! because verification runs where the data directory is, which holds the key file
//! anyway; an Ed25519 signature instead cost about 16 µs per append, a third of the
//! budget of a whole tool call.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use rusqlite::{OptionalExtension as _, Row, Transaction, TransactionBehavior, params};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::canonical::{MAX_JSON_DEPTH, canonical_json, too_deep, write_value};
use crate::session::sql_limit;
use crate::{Store, StoreError};

const HEAD_DOMAIN: &[u8; 22] = b"carapace-audit-head-v2";
const FINGERPRINT_DOMAIN: &[u8; 33] = b"carapace-audit-key-fingerprint-v1";
const GENESIS: [u8; 32] = [0; 32];
const GENESIS_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One record of the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Its position, from 1, without gaps.
    pub seq: u64,
    /// The hash of the record before it (64 zeros for the first), lowercase hex.
    pub prev_hash: String,
    /// Its own hash, lowercase hex.
    pub hash: String,
    /// The record.
    pub record: Value,
}

/// The result of walking an intact audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// How many records there are.
    pub records: u64,
    /// The hash of the last record (64 zeros when empty), lowercase hex.
    pub head_hash: String,
}

type HeadMac = Hmac<Sha256>;

/// Secret HMAC-SHA256 key that signs the audit chain head. Debug shows only its
/// fingerprint; the key is wiped on drop.
pub struct AuditKey {
    secret: [u8; 32],
    /// Derived from the secret once; not secret itself.
    fingerprint: [u8; 32],
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

impl Drop for AuditKey {
    fn drop(&mut self) {
        wipe(&mut self.secret);
    }
}

impl AuditKey {
    /// A new random key from the operating system's generator.
    ///
    /// # Panics
    /// If the operating system cannot produce random bytes, which leaves nothing safe to
    /// do.
    pub fn generate() -> AuditKey {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random generator failed");
        let key = AuditKey::from_secret(&secret);
        wipe(&mut secret);
        key
    }

    fn from_secret(secret: &[u8; 32]) -> AuditKey {
        let fingerprint = Sha256::new()
            .chain_update(FINGERPRINT_DOMAIN)
            .chain_update(secret)
            .finalize()
            .into();
        AuditKey {
            secret: *secret,
            fingerprint,
        }
    }

    /// Loads the key file (hex of the 32-byte secret) or creates it with mode 0600
    /// (create_new, so two racing processes cannot both create). Refuses a key file
    /// readable by group/other with a clear error.
    pub fn load_or_create(path: &Path) -> Result<AuditKey, StoreError> {
        // A racing process may have created the file and not yet written it: wait a little
        // for it rather than fail, but not forever (it may have died in between).
        for _ in 0..50 {
            match File::open(path) {
                Ok(file) => match read_key_file(path, file)? {
                    Some(key) => return Ok(key),
                    None => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::io(|| format!("cannot open {}", path.display()))(e));
                }
            }
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                Ok(file) => return write_key_file(path, file),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(StoreError::io(|| {
                        format!("cannot create {}", path.display())
                    })(e));
                }
            }
        }
        Err(StoreError::KeyFile {
            path: path.to_owned(),
            reason: "it is shorter than a key; a process may have died while creating it".into(),
        })
    }

    /// Names the key without revealing it, lowercase hex:
    /// `SHA-256(b"carapace-audit-key-fingerprint-v1" || key)`.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// The HMAC over the head message, ready to finalize or to verify a tag.
    fn head_mac(&self, seq: u64, hash: &[u8; 32]) -> HeadMac {
        let mut mac = HeadMac::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(&head_message(seq, hash));
        mac
    }
}

/// Reads a key file. `Ok(None)` when it is still too short to hold a key.
fn read_key_file(path: &Path, mut file: File) -> Result<Option<AuditKey>, StoreError> {
    let context = || format!("cannot read {}", path.display());
    let meta = file.metadata().map_err(StoreError::io(context))?;
    if !meta.is_file() {
        return Err(StoreError::KeyFile {
            path: path.to_owned(),
            reason: "not a file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    // A fixed buffer, wiped afterwards, so no copy of the key is left on the heap.
    let mut buf = [0u8; 80];
    let mut len = 0;
    loop {
        let n = file
            .read(&mut buf[len..])
            .map_err(StoreError::io(context))?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            wipe(&mut buf);
            return Err(StoreError::KeyFile {
                path: path.to_owned(),
                reason: "it is longer than a key".into(),
            });
        }
    }
    let text = buf[..len].trim_ascii();
    let mut secret = [0u8; 32];
    let parsed = match text.len() {
        0..64 => None,
        64 => Some(hex::decode_to_slice(text, &mut secret).is_ok()),
        _ => Some(false),
    };
    wipe(&mut buf);
    let key = (parsed == Some(true)).then(|| AuditKey::from_secret(&secret));
    wipe(&mut secret);
    if parsed == Some(false) {
        return Err(StoreError::KeyFile {
            path: path.to_owned(),
            reason: "it does not hold 64 hex digits".into(),
        });
    }
    Ok(key)
}

fn write_key_file(path: &Path, mut file: File) -> Result<AuditKey, StoreError> {
    let key = AuditKey::generate();
    let mut text = [b'\n'; 65];
    let encoded = hex::encode_to_slice(&key.secret, &mut text[..64]);
    let written = encoded
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| file.write_all(&text))
        .and_then(|()| file.sync_all());
    wipe(&mut text);
    written.map_err(StoreError::io(|| {
        format!("cannot write {}", path.display())
    }))?;
    Ok(key)
}

/// Overwrites a buffer that held key material. `black_box` keeps the compiler from
/// dropping the writes to a buffer that is about to go out of scope.
fn wipe<const N: usize>(buf: &mut [u8; N]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

fn head_message(seq: u64, hash: &[u8; 32]) -> [u8; 62] {
    let mut msg = [0u8; 62];
    msg[..22].copy_from_slice(HEAD_DOMAIN);
    msg[22..30].copy_from_slice(&seq.to_be_bytes());
    msg[30..].copy_from_slice(hash);
    msg
}

fn chain_hash(prev: &[u8; 32], seq: u64, canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The audit head this store wrote last, with the fingerprint of the key it signed with.
/// While the database still holds exactly this head, an append need not parse and check
/// the signature again.
pub(crate) struct TrustedHead {
    fingerprint: [u8; 32],
    head: StoredHead,
}

#[derive(Clone, PartialEq, Eq)]
struct StoredHead {
    seq: i64,
    hash: String,
    signature: String,
}

impl Store {
    /// Appends one record to the hash-chained audit log and re-signs the chain head, in one
    /// IMMEDIATE transaction.
    ///
    /// Refuses (with [`StoreError::AuditBroken`]) to extend a chain whose last record does
    /// not match a head signed by `key`: appending would otherwise re-sign, and so hide,
    /// records cut from the end. Refuses a record nested deeper than [`MAX_JSON_DEPTH`].
    /// The returned entry holds `record` as given; read back, a float with an integral
    /// value comes back as an integer, because canonical JSON writes `1.0` as `1`.
    pub fn append_audit(&self, key: &AuditKey, record: &Value) -> Result<AuditEntry, StoreError> {
        if too_deep(record) {
            return Err(StoreError::TooDeep {
                max: MAX_JSON_DEPTH,
            });
        }
        let canonical = canonical_json(record);
        let mut guard = self.lock();
        let inner = &mut *guard;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;

        let last = tx
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        let (last_seq, prev_hex) = match last {
            Some((seq, hash)) => {
                let Ok(seq) = u64::try_from(seq) else {
                    return Err(StoreError::broken(0, format!("unexpected record {seq}")));
                };
                (seq, hash)
            }
            None => (0, GENESIS_HEX.to_string()),
        };
        let head = read_head(&tx, last_seq)?;
        check_head_matches_tail(last_seq, &prev_hex, head.as_ref())?;
        if let Some(head) = &head {
            let trusted = inner
                .head
                .as_ref()
                .is_some_and(|t| t.fingerprint == key.fingerprint && t.head == *head);
            if !trusted {
                check_head_signature(key, head)?;
            }
        }
        let prev = parse_hex32(&prev_hex)
            .ok_or_else(|| StoreError::broken(last_seq, "hash is not 64 lowercase hex digits"))?;

        let seq = last_seq + 1;
        let hash = chain_hash(&prev, seq, canonical.as_bytes());
        let hash_hex = hex::encode(hash);
        let signature = hex::encode(key.head_mac(seq, &hash).finalize().into_bytes());
        let seq_sql = i64::try_from(seq).map_err(|_| StoreError::broken(seq, "the log is full"))?;
        tx.prepare_cached(
            "INSERT INTO audit (seq, prev_hash, hash, record) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![seq_sql, prev_hex, hash_hex, canonical])?;
        tx.prepare_cached(
            "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET
                 seq = excluded.seq, hash = excluded.hash, signature = excluded.signature",
        )?
        .execute(params![seq_sql, hash_hex, signature])?;
        tx.commit()?;

        inner.head = Some(TrustedHead {
            fingerprint: key.fingerprint,
            head: StoredHead {
                seq: seq_sql,
                hash: hash_hex.clone(),
                signature,
            },
        });
        Ok(AuditEntry {
            seq,
            prev_hash: prev_hex,
            hash: hash_hex,
            record: record.clone(),
        })
    }

    /// The last `n` records, in ascending seq order.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT seq, prev_hash, hash, record FROM audit ORDER BY seq DESC LIMIT ?1",
        )?;
        let mut rows = stmt.query([sql_limit(n)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(entry_from_row(row)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` records with seq greater than `after_seq`, in ascending seq order.
    pub fn audit_after(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT seq, prev_hash, hash, record FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after, sql_limit(limit)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(entry_from_row(row)?);
        }
        Ok(out)
    }

    /// Walks the whole chain. Ok(report) when intact; Err(StoreError::AuditBroken { seq,
    /// reason }) naming the FIRST bad record.
    ///
    /// Reads one snapshot (a read transaction), so a concurrent append by another process
    /// cannot make an intact log look broken. Holds this store's lock for the whole walk.
    pub fn verify_audit(&self, key: &AuditKey) -> Result<AuditReport, StoreError> {
        let mut guard = self.lock();
        let tx = guard.conn.transaction()?;
        let mut expected: u64 = 1;
        let mut prev = GENESIS;
        let mut prev_hex = GENESIS_HEX.to_string();
        {
            let mut stmt =
                tx.prepare("SELECT seq, prev_hash, hash, record FROM audit ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            let mut canonical = String::new();
            while let Some(row) = rows.next()? {
                let seq = row.get_ref(0)?.as_i64().map_err(|_| {
                    StoreError::broken(expected, format!("record {expected} has a bad seq"))
                })?;
                check_seq(expected, seq)?;
                let prev_text = text_column(row, 1, expected)?;
                if prev_text != prev_hex {
                    let reason = if expected == 1 {
                        "prev_hash of the first record is not the genesis hash".to_string()
                    } else {
                        format!(
                            "prev_hash does not match the hash of record {}",
                            expected - 1
                        )
                    };
                    return Err(StoreError::broken(expected, reason));
                }
                let stored_hash = text_column(row, 2, expected)?;
                let record = text_column(row, 3, expected)?;
                let hash = chain_hash(&prev, expected, record.as_bytes());
                let hash_hex = hex::encode(hash);
                if stored_hash != hash_hex {
                    return Err(StoreError::broken(
                        expected,
                        "hash does not match the record's contents",
                    ));
                }
                // A correct hash over text that is not what append_audit writes means
                // someone computed the hash themselves.
                let value: Value = serde_json::from_str(record)
                    .map_err(|_| StoreError::broken(expected, "record text is not valid json"))?;
                canonical.clear();
                write_value(&mut canonical, &value);
                if canonical != record {
                    return Err(StoreError::broken(
                        expected,
                        "record text is not canonical json",
                    ));
                }
                prev = hash;
                prev_hex = hash_hex;
                expected += 1;
            }
        }
        let records = expected - 1;
        let head = read_head(&tx, records)?;
        check_head_matches_tail(records, &prev_hex, head.as_ref())?;
        if let Some(head) = &head {
            check_head_signature(key, head)?;
        }
        Ok(AuditReport {
            records,
            head_hash: prev_hex,
        })
    }
}

fn entry_from_row(row: &Row<'_>) -> Result<AuditEntry, StoreError> {
    let seq: i64 = row.get(0)?;
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("audit record with seq {seq}")))?;
    let text: String = row.get(3)?;
    let record = serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("audit record {seq} is not json: {e}")))?;
    Ok(AuditEntry {
        seq,
        prev_hash: row.get(1)?,
        hash: row.get(2)?,
        record,
    })
}

fn check_seq(expected: u64, seq: i64) -> Result<(), StoreError> {
    match u64::try_from(seq) {
        Ok(seq) if seq == expected => Ok(()),
        Ok(seq) if seq > expected => Err(StoreError::broken(
            expected,
            format!("record {expected} is missing"),
        )),
        // Rows come in ascending seq order without duplicates, so a smaller seq can
        // only be zero or negative: a record that no append wrote.
        _ => Err(StoreError::broken(
            u64::try_from(seq).unwrap_or(0),
            format!("unexpected record {seq}"),
        )),
    }
}

/// A text column of an audit row; anything else is tampering, not a database error.
fn text_column<'r>(row: &'r Row<'_>, idx: usize, seq: u64) -> Result<&'r str, StoreError> {
    row.get_ref(idx)?
        .as_str()
        .map_err(|_| StoreError::broken(seq, format!("column {idx} of record {seq} is not text")))
}

/// The head row. `tail_seq` is only for naming the place in an error.
fn read_head(tx: &Transaction<'_>, tail_seq: u64) -> Result<Option<StoredHead>, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT seq, hash, signature FROM audit_head WHERE id = 1")?;
    let mut rows = stmt.query([])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let malformed = |_| StoreError::broken(tail_seq, "the signed head is malformed");
    Ok(Some(StoredHead {
        seq: row.get_ref(0)?.as_i64().map_err(malformed)?,
        hash: row.get_ref(1)?.as_str().map_err(malformed)?.to_string(),
        signature: row.get_ref(2)?.as_str().map_err(malformed)?.to_string(),
    }))
}

/// The last record must be the one the head names: fewer records means some were cut from
/// the end, more means some were appended by someone who could not sign.
fn check_head_matches_tail(
    tail_seq: u64,
    tail_hash: &str,
    head: Option<&StoredHead>,
) -> Result<(), StoreError> {
    let Some(head) = head else {
        if tail_seq == 0 {
            return Ok(());
        }
        return Err(StoreError::broken(tail_seq, "the signed head is missing"));
    };
    let Ok(head_seq) = u64::try_from(head.seq) else {
        return Err(StoreError::broken(
            tail_seq,
            "the signed head names a negative seq",
        ));
    };
    if head_seq > tail_seq {
        let missing = tail_seq + 1;
        return Err(StoreError::broken(
            missing,
            format!("record {missing} is missing: the signed head names record {head_seq}"),
        ));
    }
    if head_seq < tail_seq {
        let extra = head_seq + 1;
        return Err(StoreError::broken(
            extra,
            format!("unexpected record {extra}: the signed head ends at record {head_seq}"),
        ));
    }
    if head.hash != tail_hash {
        return Err(StoreError::broken(
            head_seq,
            format!("record {head_seq} does not match the signed head"),
        ));
    }
    Ok(())
}

fn check_head_signature(key: &AuditKey, head: &StoredHead) -> Result<(), StoreError> {
    // Both were checked against the tail just before; a failure here is still tampering.
    let seq = u64::try_from(head.seq).unwrap_or(0);
    let hash = parse_hex32(&head.hash)
        .ok_or_else(|| StoreError::broken(seq, "the signed head hash is malformed"))?;
    let tag = parse_hex32(&head.signature)
        .ok_or_else(|| StoreError::broken(seq, "the head signature is malformed"))?;
    // verify_slice compares in constant time.
    key.head_mac(seq, &hash).verify_slice(&tag).map_err(|_| {
        StoreError::broken(
            seq,
            "the head signature is invalid (forged head or another key)",
        )
    })
}

/// 64 lowercase hex digits (a hash or a tag) to bytes.
fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let lowercase = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (text.len() == 64 && lowercase && hex::decode_to_slice(text, &mut out).is_ok()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = AuditKey::generate();
        let secret = hex::encode(key.secret);
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains(&secret));
        assert!(shown.contains(&key.fingerprint_hex()));
    }

    #[test]
    fn genesis_hex_is_the_hex_of_genesis() {
        assert_eq!(hex::encode(GENESIS), GENESIS_HEX);
    }
}
