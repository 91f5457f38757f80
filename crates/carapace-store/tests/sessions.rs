//! Sessions, messages and agent writes, in memory and on disk.

use std::os::unix::fs::PermissionsExt as _;

use carapace_store::{AgentWrite, NewMessage, Role, Store, StoreError};
use carapace_types::{Confidentiality, Integrity, Label, SessionId, Source};
use rusqlite::Connection;
use serde_json::json;

const UNTRUSTED_PUBLIC: Label = Label {
    integrity: Integrity::Untrusted,
    confidentiality: Confidentiality::Public,
};
const TRUSTED_PRIVATE: Label = Label {
    integrity: Integrity::Trusted,
    confidentiality: Confidentiality::Private,
};
const UNTRUSTED_PRIVATE: Label = Label {
    integrity: Integrity::Untrusted,
    confidentiality: Confidentiality::Private,
};

fn sid(s: &str) -> SessionId {
    SessionId::new(s)
}

fn user(text: &str, at: i64) -> NewMessage {
    NewMessage {
        role: Role::User,
        content: text.into(),
        tool_calls: None,
        tool_call_id: None,
        source: Source::Owner,
        label: Label::TRUSTED_PUBLIC,
        created_ms: at,
    }
}

fn conversation() -> Vec<NewMessage> {
    vec![
        NewMessage {
            role: Role::System,
            content: "You are careful.".into(),
            source: Source::Owner,
            ..user("", 100)
        },
        user("list my files", 101),
        NewMessage {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: Some(json!([{"id": "c1", "name": "list_dir", "args": {"path": "."}}])),
            source: Source::Model,
            ..user("", 102)
        },
        NewMessage {
            role: Role::Tool,
            content: "notes.txt\nweb.html".into(),
            tool_call_id: Some("c1".into()),
            source: Source::Tool("list_dir".into()),
            label: UNTRUSTED_PRIVATE,
            ..user("", 103)
        },
    ]
}

#[test]
fn sessions_and_messages_round_trip_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carapace.db");
    let id = sid("s1");
    {
        let store = Store::open(&path).unwrap();
        let created = store.create_session(&id, "first", 100).unwrap();
        assert_eq!(created.label, Label::TRUSTED_PUBLIC);
        assert_eq!((created.created_ms, created.updated_ms), (100, 100));
        for (i, msg) in conversation().iter().enumerate() {
            assert_eq!(store.append_message(&id, msg).unwrap(), i as i64 + 1);
        }
        store
            .raise_session_label(&id, UNTRUSTED_PRIVATE, 104)
            .unwrap();
        store.set_session_title(&id, "renamed").unwrap();
    }
    let store = Store::open(&path).unwrap();
    let session = store.session(&id).unwrap().unwrap();
    assert_eq!(session.title, "renamed");
    assert_eq!(session.label, UNTRUSTED_PRIVATE);
    assert_eq!((session.created_ms, session.updated_ms), (100, 104));

    let stored = store.messages(&id).unwrap();
    let expected = conversation();
    assert_eq!(stored.len(), expected.len());
    for (i, (got, want)) in stored.iter().zip(&expected).enumerate() {
        assert_eq!(got.seq, i as i64 + 1);
        assert_eq!(got.role, want.role);
        assert_eq!(got.content, want.content);
        assert_eq!(got.tool_calls, want.tool_calls);
        assert_eq!(got.tool_call_id, want.tool_call_id);
        assert_eq!(got.source, want.source);
        assert_eq!(got.label, want.label);
        assert_eq!(got.created_ms, want.created_ms);
    }
}

#[test]
fn label_only_rises() {
    let store = Store::open_in_memory().unwrap();
    let id = sid("s");
    store.create_session(&id, "t", 1).unwrap();
    assert_eq!(
        store.raise_session_label(&id, UNTRUSTED_PUBLIC, 2).unwrap(),
        UNTRUSTED_PUBLIC
    );
    // Each axis keeps its worse value.
    assert_eq!(
        store.raise_session_label(&id, TRUSTED_PRIVATE, 3).unwrap(),
        UNTRUSTED_PRIVATE
    );
    // A lower label changes nothing, not even the update time.
    assert_eq!(
        store
            .raise_session_label(&id, Label::TRUSTED_PUBLIC, 9)
            .unwrap(),
        UNTRUSTED_PRIVATE
    );
    let session = store.session(&id).unwrap().unwrap();
    assert_eq!(session.label, UNTRUSTED_PRIVATE);
    assert_eq!(session.updated_ms, 3);
    let secret = Label {
        confidentiality: Confidentiality::Secret,
        ..Label::TRUSTED_PUBLIC
    };
    assert_eq!(
        store.raise_session_label(&id, secret, 4).unwrap(),
        Label {
            integrity: Integrity::Untrusted,
            confidentiality: Confidentiality::Secret
        }
    );
}

#[test]
fn unknown_and_duplicate_sessions_are_errors() {
    let store = Store::open_in_memory().unwrap();
    let id = sid("s");
    assert_eq!(store.session(&id).unwrap(), None);
    assert!(matches!(
        store.raise_session_label(&id, UNTRUSTED_PUBLIC, 1),
        Err(StoreError::UnknownSession(_))
    ));
    assert!(matches!(
        store.append_message(&id, &user("hi", 1)),
        Err(StoreError::UnknownSession(_))
    ));
    assert!(matches!(
        store.set_session_title(&id, "x"),
        Err(StoreError::UnknownSession(_))
    ));
    assert!(store.messages(&id).unwrap().is_empty());

    store.create_session(&id, "t", 1).unwrap();
    let err = store.create_session(&id, "again", 2).unwrap_err();
    assert!(matches!(err, StoreError::SessionExists(_)), "{err:?}");
    assert_eq!(err.to_string(), "session s already exists");
    assert_eq!(store.session(&id).unwrap().unwrap().title, "t");
}

#[test]
fn messages_number_per_session_and_bump_the_update_time() {
    let store = Store::open_in_memory().unwrap();
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        store.create_session(&sid(id), id, 10 + i as i64).unwrap();
    }
    let order = |store: &Store| -> Vec<String> {
        store
            .list_sessions(10)
            .unwrap()
            .into_iter()
            .map(|s| s.id.to_string())
            .collect()
    };
    assert_eq!(order(&store), ["c", "b", "a"]);

    assert_eq!(store.append_message(&sid("a"), &user("1", 20)).unwrap(), 1);
    assert_eq!(store.append_message(&sid("b"), &user("1", 21)).unwrap(), 1);
    assert_eq!(store.append_message(&sid("a"), &user("2", 22)).unwrap(), 2);
    assert_eq!(order(&store), ["a", "b", "c"]);
    assert_eq!(store.list_sessions(2).unwrap().len(), 2);
    assert_eq!(store.list_sessions(0).unwrap().len(), 0);

    // A message stamped in the past does not move the session back.
    store.append_message(&sid("a"), &user("late", 5)).unwrap();
    assert_eq!(store.session(&sid("a")).unwrap().unwrap().updated_ms, 22);
    let contents: Vec<_> = store
        .messages(&sid("a"))
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.content))
        .collect();
    assert_eq!(
        contents,
        [(1, "1".into()), (2, "2".into()), (3, "late".to_string())]
    );
}

#[test]
fn agent_writes_round_trip_and_the_last_write_wins() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.agent_write("notes/a.txt").unwrap(), None);
    let digest = "ab".repeat(32);
    store
        .record_agent_write("notes/a.txt", &digest, UNTRUSTED_PUBLIC, &sid("s1"), 1)
        .unwrap();
    assert_eq!(
        store.agent_write("notes/a.txt").unwrap(),
        Some(AgentWrite {
            sha256_hex: digest,
            label: UNTRUSTED_PUBLIC,
            session: sid("s1")
        })
    );
    let digest = "cd".repeat(32);
    store
        .record_agent_write("notes/a.txt", &digest, TRUSTED_PRIVATE, &sid("s2"), 2)
        .unwrap();
    assert_eq!(
        store.agent_write("notes/a.txt").unwrap(),
        Some(AgentWrite {
            sha256_hex: digest,
            label: TRUSTED_PRIVATE,
            session: sid("s2")
        })
    );
    assert_eq!(store.agent_write("notes/b.txt").unwrap(), None);
}

/// A store holding one session, message and agent write, with `sql` then run on the file
/// by a second connection.
fn store_tampered_with(sql: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carapace.db");
    let store = Store::open(&path).unwrap();
    store.create_session(&sid("s"), "t", 1).unwrap();
    store.append_message(&sid("s"), &user("hi", 1)).unwrap();
    store
        .record_agent_write("f", &"00".repeat(32), UNTRUSTED_PUBLIC, &sid("s"), 1)
        .unwrap();
    Connection::open(&path).unwrap().execute_batch(sql).unwrap();
    (dir, store)
}

#[test]
fn unreadable_stored_values_are_corrupt_errors_not_panics() {
    type Read = fn(&Store) -> Result<(), StoreError>;
    let cases: [(&str, Read); 7] = [
        ("UPDATE sessions SET integrity = 'sorta'", |s| {
            s.session(&sid("s")).map(drop)
        }),
        ("UPDATE sessions SET confidentiality = 'top'", |s| {
            s.list_sessions(5).map(drop)
        }),
        ("UPDATE sessions SET integrity = 'sorta'", |s| {
            s.raise_session_label(&sid("s"), UNTRUSTED_PUBLIC, 2)
                .map(drop)
        }),
        ("UPDATE messages SET role = 'owner'", |s| {
            s.messages(&sid("s")).map(drop)
        }),
        ("UPDATE messages SET source = 'nowhere'", |s| {
            s.messages(&sid("s")).map(drop)
        }),
        ("UPDATE messages SET tool_calls = '{not json'", |s| {
            s.messages(&sid("s")).map(drop)
        }),
        ("UPDATE agent_writes SET integrity = 'x'", |s| {
            s.agent_write("f").map(drop)
        }),
    ];
    for (sql, read) in cases {
        let (_dir, store) = store_tampered_with(sql);
        let err = read(&store).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{sql}: {err:?}");
    }
}

#[test]
fn too_deep_tool_calls_are_refused_before_they_are_stored() {
    let store = Store::open_in_memory().unwrap();
    store.create_session(&sid("s"), "t", 1).unwrap();
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let msg = NewMessage {
        tool_calls: Some(deep),
        ..user("", 2)
    };
    assert!(matches!(
        store.append_message(&sid("s"), &msg),
        Err(StoreError::TooDeep { .. })
    ));
    assert!(store.messages(&sid("s")).unwrap().is_empty());
}

#[test]
fn database_files_are_private_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carapace.db");
    let store = Store::open(&path).unwrap();
    store.create_session(&sid("s"), "t", 1).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("carapace.db-wal")), 0o600);
    let raw = Connection::open(&path).unwrap();
    let journal: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    drop(store);

    // An existing file with wider permissions is narrowed.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Store::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_session_keeps_its_own_host_list_and_a_version_1_file_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carapace.db");
    let store = Store::open(&path).unwrap();
    let hosts = vec!["api.github.com".to_string(), "*.wikipedia.org".to_string()];
    let scoped = SessionId::new("scoped");
    let created = store
        .create_scoped_session(&scoped, "t", 1, Some(&hosts))
        .unwrap();
    assert_eq!(created.egress_hosts.as_deref(), Some(&hosts[..]));
    let empty = SessionId::new("no-egress");
    store
        .create_scoped_session(&empty, "t", 2, Some(&[]))
        .unwrap();
    let plain = SessionId::new("plain");
    store.create_session(&plain, "t", 3).unwrap();
    drop(store);

    let store = Store::open(&path).unwrap();
    // A session's model can be switched and switched back; its host list stays.
    store
        .set_session_model(&scoped, Some("ollama/llama3.2"))
        .unwrap();
    let s = store.session(&scoped).unwrap().unwrap();
    assert_eq!(s.model.as_deref(), Some("ollama/llama3.2"));
    assert_eq!(s.egress_hosts, Some(hosts.clone()));
    store.set_session_model(&scoped, None).unwrap();
    assert_eq!(store.session(&scoped).unwrap().unwrap().model, None);
    assert!(matches!(
        store.set_session_model(&SessionId::new("nope"), Some("x")),
        Err(carapace_store::StoreError::UnknownSession(_))
    ));
    let read = |id: &SessionId| store.session(id).unwrap().unwrap().egress_hosts;
    assert_eq!(read(&scoped), Some(hosts.clone()));
    assert_eq!(read(&empty), Some(Vec::new()));
    assert_eq!(read(&plain), None);
    drop(store);

    // A file written before host lists existed opens, upgraded, with no lists.
    let raw = Connection::open(&path).unwrap();
    raw.execute_batch(
        "DROP TABLE usage; ALTER TABLE sessions DROP COLUMN egress_hosts;
         ALTER TABLE sessions DROP COLUMN model; ALTER TABLE sessions DROP COLUMN seen;
         ALTER TABLE sessions DROP COLUMN exposure; DROP TABLE grants; DROP TABLE compiled_rules;
         DROP TABLE dead_letters;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(raw);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.session(&scoped).unwrap().unwrap().egress_hosts, None);
    assert_eq!(store.list_sessions(10).unwrap().len(), 3);
}

#[test]
fn usage_adds_up_per_session_and_utc_day_and_unpriced_calls_are_counted_apart() {
    use carapace_store::{UsageRecord, UsageTotal};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("carapace.db")).unwrap();
    let (a, b) = (SessionId::new("a"), SessionId::new("b"));
    store.create_session(&a, "a", 1).unwrap();
    store.create_session(&b, "b", 1).unwrap();
    // 2026-12-07 23:59:59.999 UTC and 2026-12-08 00:00 UTC.
    let (late, next) = (1_796_687_999_999, 1_796_688_000_000);
    let call = |session: &SessionId, model: &str, at, p, c, cost| UsageRecord {
        session: session.clone(),
        model: model.into(),
        created_ms: at,
        prompt_tokens: p,
        completion_tokens: c,
        cost_micros: cost,
    };
    store
        .record_usage(&call(&a, "anthropic/x", late, 100, 10, Some(450)))
        .unwrap();
    store
        .record_usage(&call(&a, "ollama/y", late, 5, 5, None))
        .unwrap();
    store
        .record_usage(&call(&b, "anthropic/x", next, 1000, 100, Some(4500)))
        .unwrap();

    assert_eq!(
        store.usage_of_day("2026-12-07").unwrap(),
        UsageTotal {
            calls: 2,
            prompt_tokens: 105,
            completion_tokens: 15,
            cost_micros: 450,
            unpriced_calls: 1
        }
    );
    assert_eq!(store.usage_of_day("2026-12-08").unwrap().cost_micros, 4500);
    assert_eq!(
        store.usage_of_day("2026-12-09").unwrap(),
        UsageTotal::default()
    );
    assert_eq!(store.usage_of_session(&b).unwrap().prompt_tokens, 1000);
    let rows = store.usage_since("2026-12-07").unwrap();
    let keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.day.as_str(), r.model.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("2026-12-08", "anthropic/x"),
            ("2026-12-07", "anthropic/x"),
            ("2026-12-07", "ollama/y")
        ]
    );
    assert_eq!(store.usage_since("2026-12-08").unwrap().len(), 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carapace.db");
    drop(Store::open(&path).unwrap());
    let raw = Connection::open(&path).unwrap();
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 7);
    // Reopening does not migrate twice.
    drop(Store::open(&path).unwrap());
    raw.execute_batch("PRAGMA user_version = 99").unwrap();
    let err = Store::open(&path).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 7
            }
        ),
        "{err:?}"
    );
}

#[test]
fn the_owner_of_an_exclusive_store_keeps_other_processes_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carapace.db");
    let owner = Store::open_exclusive(&path).unwrap();
    let id = SessionId::new("s_owned");
    owner.create_session(&id, "t", 1).unwrap();
    // Another connection (another process, for SQLite) cannot read or write meanwhile.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.busy_timeout(std::time::Duration::ZERO).unwrap();
    let err = other
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    drop(other);
    // Once the owner is gone, the data is there for the next one.
    drop(owner);
    let next = Store::open(&path).unwrap();
    assert!(next.session(&id).unwrap().is_some());
}
