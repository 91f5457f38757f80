//! The audit chain against an attacker with write access to the database file.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use carapace_store::{AuditKey, AuditReport, MAX_JSON_DEPTH, Store, StoreError, canonical_json};
use hmac::{Hmac, Mac as _};
use rusqlite::{Connection, params};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
    key: AuditKey,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("carapace.db")).unwrap();
        Fixture {
            dir,
            key: AuditKey::generate(),
            store,
        }
    }

    /// A log of five records, checked to be intact.
    fn with_five_records() -> Fixture {
        let f = Fixture::new();
        for n in 1..=5 {
            f.store.append_audit(&f.key, &record(n)).unwrap();
        }
        assert_eq!(f.store.verify_audit(&f.key).unwrap().records, 5);
        f
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("carapace.db")
    }

    /// A second connection, as an attacker who can write the file has. The append-only
    /// triggers only guard against bugs, so the attacker drops them first.
    fn attacker(&self) -> Attacker {
        let conn = Connection::open(self.db()).unwrap();
        conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        Attacker(conn)
    }
}

fn record(n: u64) -> Value {
    json!({"tool": "list_dir", "n": n, "decision": {"allow": true, "rule": "default"}})
}

struct Attacker(Connection);

impl Attacker {
    fn exec(&self, sql: &str) {
        self.0.execute_batch(sql).unwrap();
    }

    /// (prev_hash, hash, record) of one row.
    fn row(&self, seq: i64) -> (String, String, String) {
        self.0
            .query_row(
                "SELECT prev_hash, hash, record FROM audit WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    }

    fn hash_of(&self, seq: i64) -> String {
        self.row(seq).1
    }

    /// Writes a row whose hash is computed exactly as the documented format says: what an
    /// attacker who read the source can do without the key.
    fn put(&self, seq: i64, prev_hash: &str, record: &str) -> String {
        let hash = chain_hash(prev_hash, seq as u64, record);
        self.0
            .execute(
                "INSERT OR REPLACE INTO audit (seq, prev_hash, hash, record) VALUES (?1, ?2, ?3, ?4)",
                params![seq, prev_hash, hash, record],
            )
            .unwrap();
        hash
    }

    fn set_head(&self, seq: i64, hash: &str) {
        self.0
            .execute(
                "UPDATE audit_head SET seq = ?1, hash = ?2",
                params![seq, hash],
            )
            .unwrap();
    }
}

/// The chain hash, written from the documentation rather than shared with the crate.
fn chain_hash(prev_hex: &str, seq: u64, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(hex::decode(prev_hex).unwrap());
    h.update(seq.to_be_bytes());
    h.update(record.as_bytes());
    hex::encode(h.finalize())
}

#[track_caller]
fn assert_broken(result: Result<AuditReport, StoreError>, seq: u64, keyword: &str) {
    match result {
        Err(StoreError::AuditBroken { seq: got, reason }) => {
            assert_eq!(got, seq, "wrong seq; reason: {reason}");
            assert!(
                reason.contains(keyword),
                "reason {reason:?} lacks {keyword:?}"
            );
        }
        other => panic!("expected AuditBroken at {seq}, got {other:?}"),
    }
}

/// One kind of tampering: what the attacker does, and the first record verify must name.
fn check_tamper(tamper: impl FnOnce(&Attacker), seq: u64, keyword: &str) {
    let f = Fixture::with_five_records();
    tamper(&f.attacker());
    assert_broken(f.store.verify_audit(&f.key), seq, keyword);
    // A fresh process sees the same.
    let fresh = Store::open(&f.db()).unwrap();
    assert_broken(fresh.verify_audit(&f.key), seq, keyword);
}

#[test]
fn edit_a_record_text() {
    check_tamper(
        |a| a.exec(r#"UPDATE audit SET record = '{"n":3,"tool":"rm_rf"}' WHERE seq = 3"#),
        3,
        "hash",
    );
}

#[test]
fn edit_a_record_and_recompute_its_hash() {
    check_tamper(
        |a| {
            a.put(3, &a.hash_of(2), r#"{"n":3,"tool":"rm_rf"}"#);
        },
        4,
        "prev_hash",
    );
}

#[test]
fn edit_the_last_record_and_recompute_its_hash() {
    check_tamper(
        |a| {
            a.put(5, &a.hash_of(4), r#"{"n":5,"tool":"rm_rf"}"#);
        },
        5,
        "signed head",
    );
}

#[test]
fn edit_a_hash() {
    check_tamper(
        |a| a.exec("UPDATE audit SET hash = (SELECT hash FROM audit WHERE seq = 1) WHERE seq = 2"),
        2,
        "hash",
    );
}

#[test]
fn upper_case_a_hash() {
    check_tamper(
        |a| a.exec("UPDATE audit SET hash = upper(hash) WHERE seq = 2"),
        2,
        "hash",
    );
}

#[test]
fn delete_a_middle_record() {
    check_tamper(
        |a| a.exec("DELETE FROM audit WHERE seq = 3"),
        3,
        "record 3 is missing",
    );
}

#[test]
fn delete_the_first_record() {
    check_tamper(
        |a| a.exec("DELETE FROM audit WHERE seq = 1"),
        1,
        "record 1 is missing",
    );
}

#[test]
fn delete_the_last_record() {
    check_tamper(
        |a| a.exec("DELETE FROM audit WHERE seq = 5"),
        5,
        "record 5 is missing",
    );
}

#[test]
fn delete_the_last_record_and_move_the_head_back() {
    check_tamper(
        |a| {
            a.exec("DELETE FROM audit WHERE seq = 5");
            a.set_head(4, &a.hash_of(4));
        },
        4,
        "signature",
    );
}

#[test]
fn delete_every_record_but_keep_the_head() {
    check_tamper(|a| a.exec("DELETE FROM audit"), 1, "record 1 is missing");
}

#[test]
fn swap_two_records_reorder() {
    // Rows moved whole, hashes and all: the chain links no longer line up.
    check_tamper(
        |a| {
            a.exec(
                "UPDATE audit SET seq = -2 WHERE seq = 2;
                 UPDATE audit SET seq = 2 WHERE seq = 3;
                 UPDATE audit SET seq = 3 WHERE seq = -2;",
            )
        },
        2,
        "prev_hash",
    );
}

#[test]
fn swap_two_records_contents() {
    check_tamper(
        |a| {
            let (two, three) = (a.row(2).2, a.row(3).2);
            a.0.execute("UPDATE audit SET record = ?1 WHERE seq = 2", [&three])
                .unwrap();
            a.0.execute("UPDATE audit SET record = ?1 WHERE seq = 3", [&two])
                .unwrap();
        },
        2,
        "hash",
    );
}

#[test]
fn insert_a_forged_record_in_the_middle() {
    // Make room after record 2, then insert a record that links correctly to record 2. It
    // is consistent on its own; the record after it is not.
    check_tamper(
        |a| {
            a.exec(
                "UPDATE audit SET seq = -seq WHERE seq >= 3;
                 UPDATE audit SET seq = 1 - seq WHERE seq < 0;",
            );
            a.put(3, &a.hash_of(2), r#"{"n":0,"tool":"forged"}"#);
        },
        4,
        "prev_hash",
    );
}

#[test]
fn insert_a_record_before_the_first() {
    check_tamper(
        |a| {
            a.put(0, &"0".repeat(64), r#"{"n":0}"#);
        },
        0,
        "unexpected record 0",
    );
}

#[test]
fn append_a_forged_record_with_a_correct_hash() {
    check_tamper(
        |a| {
            a.put(6, &a.hash_of(5), r#"{"n":6,"tool":"forged"}"#);
        },
        6,
        "unexpected record 6",
    );
}

#[test]
fn append_a_forged_record_and_move_the_head_to_it() {
    check_tamper(
        |a| {
            let hash = a.put(6, &a.hash_of(5), r#"{"n":6,"tool":"forged"}"#);
            a.set_head(6, &hash);
        },
        6,
        "signature",
    );
}

#[test]
fn replace_the_head_signature_with_one_from_another_key() {
    check_tamper(
        |a| {
            let other = Fixture::new();
            other.store.append_audit(&other.key, &record(1)).unwrap();
            let sig: String = Connection::open(other.db())
                .unwrap()
                .query_row("SELECT signature FROM audit_head", [], |r| r.get(0))
                .unwrap();
            a.0.execute("UPDATE audit_head SET signature = ?1", [sig])
                .unwrap();
        },
        5,
        "signature",
    );
}

#[test]
fn replace_the_head_signature_with_garbage() {
    check_tamper(
        |a| a.exec("UPDATE audit_head SET signature = 'abcd'"),
        5,
        "signature",
    );
}

#[test]
fn upper_case_the_head_signature() {
    // The same bytes, but not the text append_audit writes.
    check_tamper(
        |a| a.exec("UPDATE audit_head SET signature = upper(signature)"),
        5,
        "signature",
    );
}

#[test]
fn delete_the_head() {
    check_tamper(|a| a.exec("DELETE FROM audit_head"), 5, "head is missing");
}

#[test]
fn rewrite_a_record_as_non_canonical_json_with_a_correct_hash() {
    check_tamper(
        |a| {
            a.put(5, &a.hash_of(4), r#"{"tool": "list_dir", "n": 5}"#);
        },
        5,
        "canonical",
    );
}

#[test]
fn rewrite_a_record_as_non_json_with_a_correct_hash() {
    check_tamper(
        |a| {
            a.put(5, &a.hash_of(4), "not json");
        },
        5,
        "json",
    );
}

#[test]
fn verify_with_another_key_fails_on_the_signature() {
    let f = Fixture::with_five_records();
    assert_broken(f.store.verify_audit(&AuditKey::generate()), 5, "signature");
}

#[test]
fn empty_log_is_intact() {
    let f = Fixture::new();
    let report = f.store.verify_audit(&f.key).unwrap();
    assert_eq!(
        report,
        AuditReport {
            records: 0,
            head_hash: "0".repeat(64)
        }
    );
    assert!(f.store.audit_tail(10).unwrap().is_empty());
}

#[test]
fn appends_chain_and_read_back_in_order() {
    let f = Fixture::new();
    let entries: Vec<_> = (1..=5)
        .map(|n| f.store.append_audit(&f.key, &record(n)).unwrap())
        .collect();
    assert_eq!(entries[0].prev_hash, "0".repeat(64));
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1);
        assert_eq!(entry.record, record(entry.seq));
        if i > 0 {
            assert_eq!(entry.prev_hash, entries[i - 1].hash);
        }
    }
    let seqs = |v: Vec<carapace_store::AuditEntry>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(f.store.audit_tail(2).unwrap()), [4, 5]);
    assert_eq!(seqs(f.store.audit_tail(100).unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(f.store.audit_tail(0).unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(f.store.audit_after(3, 10).unwrap()), [4, 5]);
    assert_eq!(seqs(f.store.audit_after(0, 2).unwrap()), [1, 2]);
    assert_eq!(seqs(f.store.audit_after(5, 10).unwrap()), Vec::<u64>::new());
    assert_eq!(f.store.audit_tail(5).unwrap(), entries);

    let report = f.store.verify_audit(&f.key).unwrap();
    assert_eq!(
        report,
        AuditReport {
            records: 5,
            head_hash: entries[4].hash.clone()
        }
    );
}

#[test]
fn hash_and_head_signature_follow_the_documented_format() {
    let mut f = Fixture::new();
    let secret = [0x5a; 32];
    f.key = key_from_file(f.dir.path(), &secret);
    let mut reversed = Map::new();
    reversed.insert("zeta".into(), json!([1, {"y": "é\n", "x": null}]));
    reversed.insert("alpha".into(), json!(true));
    let entry = f
        .store
        .append_audit(&f.key, &Value::Object(reversed))
        .unwrap();

    let conn = Connection::open(f.db()).unwrap();
    let stored: String = conn
        .query_row("SELECT record FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, r#"{"alpha":true,"zeta":[1,{"x":null,"y":"é\n"}]}"#);
    assert_eq!(entry.hash, chain_hash(&"0".repeat(64), 1, &stored));

    let (seq, hash, sig): (i64, String, String) = conn
        .query_row(
            "SELECT seq, hash, signature FROM audit_head WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((seq, &hash), (1, &entry.hash));
    let mut message = b"carapace-audit-head-v2".to_vec();
    message.extend(1u64.to_be_bytes());
    message.extend(hex::decode(&hash).unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
    mac.update(&message);
    assert_eq!(sig, hex::encode(mac.finalize().into_bytes()));
}

/// Loads the key whose file holds `secret`, written as the documented format says.
fn key_from_file(dir: &Path, secret: &[u8; 32]) -> AuditKey {
    let path = dir.join("audit.key");
    std::fs::write(&path, format!("{}\n", hex::encode(secret))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    AuditKey::load_or_create(&path).unwrap()
}

#[test]
fn key_fingerprint_follows_the_documented_format() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [0x5a; 32];
    let key = key_from_file(dir.path(), &secret);
    let mut input = b"carapace-audit-key-fingerprint-v1".to_vec();
    input.extend(secret);
    assert_eq!(key.fingerprint_hex(), hex::encode(Sha256::digest(&input)));
    assert!(!format!("{key:?}").contains(&hex::encode(secret)));
}

#[test]
fn append_refuses_to_extend_a_log_cut_at_the_end() {
    // Appending would re-sign the shortened chain and hide the cut.
    let f = Fixture::with_five_records();
    f.attacker().exec("DELETE FROM audit WHERE seq = 5");
    let err = f.store.append_audit(&f.key, &record(6)).unwrap_err();
    assert!(
        matches!(err, StoreError::AuditBroken { seq: 5, .. }),
        "{err:?}"
    );
    assert_broken(f.store.verify_audit(&f.key), 5, "missing");
}

#[test]
fn append_refuses_to_extend_a_forged_head() {
    let f = Fixture::with_five_records();
    let a = f.attacker();
    let hash = a.put(6, &a.hash_of(5), r#"{"n":6}"#);
    a.set_head(6, &hash);
    // Both the store that wrote the real head and a fresh one refuse.
    for store in [&f.store, &Store::open(&f.db()).unwrap()] {
        let err = store.append_audit(&f.key, &record(7)).unwrap_err();
        assert!(
            matches!(err, StoreError::AuditBroken { seq: 6, .. }),
            "{err:?}"
        );
    }
}

#[test]
fn append_with_another_key_is_refused() {
    let f = Fixture::with_five_records();
    let err = Store::open(&f.db())
        .unwrap()
        .append_audit(&AuditKey::generate(), &record(6));
    assert!(
        matches!(err, Err(StoreError::AuditBroken { seq: 5, .. })),
        "{err:?}"
    );
    let err = f.store.append_audit(&AuditKey::generate(), &record(6));
    assert!(
        matches!(err, Err(StoreError::AuditBroken { seq: 5, .. })),
        "{err:?}"
    );
    assert_eq!(f.store.verify_audit(&f.key).unwrap().records, 5);
}

#[test]
fn sql_refuses_to_update_or_delete_audit_records() {
    let f = Fixture::with_five_records();
    let conn = Connection::open(f.db()).unwrap();
    let update = conn
        .execute("UPDATE audit SET record = '{}' WHERE seq = 1", [])
        .unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = conn.execute("DELETE FROM audit", []).unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
}

#[test]
fn deepest_readable_record_verifies_and_a_deeper_one_is_refused() {
    let nested = |depth: usize| (0..depth).fold(json!("leaf"), |v, _| json!([v]));
    let f = Fixture::new();
    // The record itself is one object level around the nested value.
    f.store
        .append_audit(&f.key, &json!({ "args": nested(MAX_JSON_DEPTH - 1) }))
        .unwrap();
    let err = f
        .store
        .append_audit(&f.key, &json!({ "args": nested(MAX_JSON_DEPTH) }));
    assert!(matches!(err, Err(StoreError::TooDeep { .. })), "{err:?}");
    assert_eq!(f.store.verify_audit(&f.key).unwrap().records, 1);
    assert_eq!(
        f.store.audit_tail(1).unwrap()[0].record["args"],
        nested(MAX_JSON_DEPTH - 1)
    );
}

#[test]
fn two_stores_on_one_file_interleave_appends() {
    let f = Fixture::new();
    let other = Store::open(&f.db()).unwrap();
    for n in 0..20 {
        let store = if n % 3 == 0 { &other } else { &f.store };
        let entry = store.append_audit(&f.key, &record(n)).unwrap();
        assert_eq!(entry.seq, n + 1);
    }
    assert_eq!(other.verify_audit(&f.key).unwrap().records, 20);
}

#[test]
fn threads_sharing_a_store_append_without_breaking_the_chain() {
    let f = Fixture::new();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (store, key) = (&f.store, &f.key);
            s.spawn(move || {
                for n in 0..50 {
                    store
                        .append_audit(key, &json!({"thread": t, "n": n}))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(f.store.verify_audit(&f.key).unwrap().records, 200);
}

#[test]
fn many_appends_survive_reopening() {
    let f = Fixture::new();
    for n in 0..500 {
        f.store.append_audit(&f.key, &record(n)).unwrap();
    }
    let head = f.store.verify_audit(&f.key).unwrap();
    drop(f.store);
    let key = f.key;
    let reopened = Store::open(&f.dir.path().join("carapace.db")).unwrap();
    assert_eq!(reopened.verify_audit(&key).unwrap(), head);
    reopened.append_audit(&key, &record(500)).unwrap();
    assert_eq!(reopened.verify_audit(&key).unwrap().records, 501);
}

const KILL_CHILD: &str = "CARAPACE_STORE_TEST_APPEND_FOREVER";

/// Runs this test binary again as a child that appends until it is killed with SIGKILL,
/// then checks that the log a fresh store finds is intact and can be extended.
#[test]
fn log_survives_sigkill_during_appends() {
    if let Some(dir) = std::env::var_os(KILL_CHILD) {
        append_forever(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "log_survives_sigkill_during_appends",
            "--nocapture",
        ])
        .env(KILL_CHILD, dir.path())
        .spawn()
        .unwrap();
    let db = dir.path().join("carapace.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the child never appended 300 records"
        );
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        std::thread::sleep(Duration::from_millis(20));
        if !db.exists() {
            continue;
        }
        let count = Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
        if count >= 300 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let key = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
    let store = Store::open(&db).unwrap();
    let report = store.verify_audit(&key).unwrap();
    assert!(report.records >= 300, "{report:?}");
    store.append_audit(&key, &json!({"after": "kill"})).unwrap();
    assert_eq!(
        store.verify_audit(&key).unwrap().records,
        report.records + 1
    );
}

fn append_forever(dir: &Path) -> ! {
    let key = AuditKey::load_or_create(&dir.join("audit.key")).unwrap();
    let store = Store::open(&dir.join("carapace.db")).unwrap();
    let mut n = 0;
    loop {
        store.append_audit(&key, &record(n)).unwrap();
        n += 1;
    }
}

#[test]
fn audit_key_file_is_created_private_and_reloads_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    let key = AuditKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(
        text.trim_end(),
        key.fingerprint_hex(),
        "the file holds the key, not its fingerprint"
    );

    let again = AuditKey::load_or_create(&path).unwrap();
    assert_eq!(again.fingerprint_hex(), key.fingerprint_hex());
    // And it signs a head the first key verifies.
    let store = Store::open_in_memory().unwrap();
    store.append_audit(&again, &json!(1)).unwrap();
    store.verify_audit(&key).unwrap();
}

#[test]
fn audit_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    AuditKey::load_or_create(&path).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = AuditKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::KeyFilePermissions { mode: m, .. } if m == mode),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

#[test]
fn malformed_audit_key_file_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    let secret_looking = "z".repeat(64);
    std::fs::write(&path, &secret_looking).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = AuditKey::load_or_create(&path).unwrap_err();
    assert!(matches!(err, StoreError::KeyFile { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(&secret_looking));
}

#[test]
fn racing_processes_agree_on_one_audit_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    let keys: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| AuditKey::load_or_create(&path).unwrap().fingerprint_hex()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[test]
fn canonical_json_ignores_insertion_order() {
    let mut a = Map::new();
    a.insert("b".into(), json!(1));
    a.insert("a".into(), json!(2));
    let mut b = Map::new();
    b.insert("a".into(), json!(2));
    b.insert("b".into(), json!(1));
    assert_eq!(
        canonical_json(&Value::Object(a)),
        canonical_json(&Value::Object(b))
    );
}
