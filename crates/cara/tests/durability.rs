//! Stopping and crashing the daemon: sessions survive a restart, SIGTERM stops it even
//! mid-turn, `kill -9` mid-turn leaves a consistent database and audit log, and
//! `cara audit verify` finds every kind of tampering with the log.

use std::path::Path;
use std::time::Duration;

use carapace_testkit::{FakeOpenAi, Reply};
use reqwest::Method;
use rusqlite::Connection;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{
    Daemon, TestDir, audit_entries, cara, json_response, tool_messages, transcript, wait_requests,
};

fn chat_as(user: &str, text: &str) -> Value {
    json!({ "user": user, "messages": [{ "role": "user", "content": text }] })
}

async fn session_messages(daemon: &Daemon, session: &str) -> Vec<String> {
    let (status, body) = daemon
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap()
            )
        })
        .collect()
}

fn integrity_check(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let fake = FakeOpenAi::start(vec![
        Reply::Text("remembered".into()),
        Reply::Text("still here".into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    let resp = daemon.chat(&chat_as("carol", "remember this")).await;
    let session = resp.headers()["x-carapace-session"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = json_response(resp).await;
    assert_eq!(status, 200, "{body}");
    let status = daemon.stop().await;
    assert!(status.success(), "a clean stop on SIGTERM: {status}");
    assert!(
        !dir.data().join("daemon.json").exists(),
        "a clean stop removes daemon.json"
    );

    let daemon = Daemon::start(&dir, &fake).await;
    let (status, body) = daemon.get("/api/sessions").await;
    assert_eq!(status, 200);
    assert!(
        body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == session.as_str()),
        "{body}"
    );
    assert_eq!(
        session_messages(&daemon, &session).await,
        ["user: remember this", "assistant: remembered"]
    );

    let (status, body) = json_response(daemon.chat(&chat_as("carol", "and now?")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "still here");
    let requests = wait_requests(&fake, 2).await;
    assert_eq!(
        transcript(&requests[1]),
        [
            "user: remember this",
            "assistant: remembered",
            "user: and now?"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_turn_leaves_a_consistent_state() {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("list_dir".into(), json!({}))]),
        // The daemon is killed while it waits for this one.
        Reply::Delayed(
            Duration::from_secs(8),
            Box::new(Reply::Text("never delivered".into())),
        ),
        Reply::Text("back again".into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&chat_as("dave", "list my files"))
            .send(),
    );
    wait_requests(&fake, 2).await;
    let status = daemon.kill9().await;
    assert!(!status.success());
    assert!(
        turn.await.unwrap().is_err(),
        "the client sees the connection drop"
    );

    let out = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("intact"), "{out:?}");
    assert_eq!(integrity_check(&dir.db()), "ok");

    let daemon = Daemon::start(&dir, &fake).await;
    let (status, body) = daemon.get("/api/sessions").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = json_response(daemon.chat(&chat_as("dave", "again?")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "back again");
    let requests = wait_requests(&fake, 3).await;
    assert_eq!(
        transcript(&requests[2]),
        [
            "user: list my files",
            "assistant calls list_dir",
            format!(
                "tool: {}",
                tool_messages(&requests[1])[0]["content"].as_str().unwrap()
            )
            .as_str(),
            "user: again?",
        ],
        "the history before the kill is intact and valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_an_approval_waits_closes_the_open_call() {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![(
            "write_file".into(),
            json!({ "path": "pending.txt", "content": "x" }),
        )]),
        Reply::Text("recovered".into()),
    ])
    .await;
    let dir = TestDir::strict();
    let daemon = Daemon::start(&dir, &fake).await;
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&chat_as("erin", "write it"))
            .send(),
    );
    daemon.pending_approval().await;
    daemon.kill9().await;
    assert!(turn.await.unwrap().is_err());
    assert!(!dir.workspace().join("pending.txt").exists());

    let out = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(integrity_check(&dir.db()), "ok");

    let daemon = Daemon::start(&dir, &fake).await;
    let (status, body) = daemon.get("/api/approvals").await;
    assert_eq!(
        (status.as_u16(), &body["approvals"]),
        (200, &json!([])),
        "an approval does not outlive its daemon"
    );
    let (status, body) = json_response(daemon.chat(&chat_as("erin", "well?")).await).await;
    assert_eq!(status, 200, "{body}");
    let requests = wait_requests(&fake, 2).await;
    let tools = tool_messages(&requests[1]);
    assert_eq!(tools.len(), 1, "the open call gets a result: {tools:?}");
    assert_eq!(tools[0]["tool_call_id"], "call_1");
    assert!(
        tools[0]["content"].as_str().unwrap().contains("CANCELLED"),
        "{tools:?}"
    );
}

/// A copy of the data directory's audit log and key, to tamper with.
fn copy_audit(from: &TestDir, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for name in ["audit.key", "carapace.db", "carapace.db-wal"] {
        let src = from.data().join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name)).unwrap();
        }
    }
}

/// Opens a copied database as an attacker would: the append-only triggers guard against
/// bugs, not against someone who can drop them.
fn tamper(data: &Path, sql: &str) {
    let conn = Connection::open(data.join("carapace.db")).unwrap();
    conn.execute_batch(&format!(
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; {sql}"
    ))
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn chain_hash(prev_hex: &str, seq: u64, record: &str) -> String {
    let mut prev = [0u8; 32];
    for (i, byte) in prev.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&prev_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(record.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_every_kind_of_tampering() {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![
            ("list_dir".into(), json!({})),
            ("search_files".into(), json!({ "query": "x" })),
        ]),
        Reply::Text("ok".into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    let (status, body) = json_response(
        daemon
            .chat(&json!({ "messages": [{ "role": "user", "content": "look" }] }))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(daemon.stop().await.success());

    let entries = audit_entries(&dir).await;
    let n = entries.len() as u64;
    assert!(n >= 5, "enough records to tamper with: {entries:?}");
    let out = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&format!("intact: {n} records")),
        "{out:?}"
    );

    let last_hash = entries.last().unwrap()["hash"].as_str().unwrap();
    let forged = r#"{"event":"daemon_stopped","ts_ms":1}"#;
    let forged_hash = chain_hash(last_hash, n + 1, forged);
    let cases: Vec<(&str, String, u64)> = vec![
        (
            "edit a record",
            "UPDATE audit SET record = replace(record, '\"event\":\"', '\"event\":\"x') WHERE seq = 2"
                .into(),
            2,
        ),
        (
            "delete a middle record",
            "DELETE FROM audit WHERE seq = 3".into(),
            3,
        ),
        (
            "delete the last record",
            format!("DELETE FROM audit WHERE seq = {n}"),
            n,
        ),
        (
            "swap two records",
            "CREATE TEMP TABLE pair AS SELECT seq, record, hash FROM audit WHERE seq IN (2, 4);
             UPDATE audit SET
                 record = (SELECT record FROM pair WHERE pair.seq = 6 - audit.seq),
                 hash = (SELECT hash FROM pair WHERE pair.seq = 6 - audit.seq)
             WHERE seq IN (2, 4)"
                .into(),
            2,
        ),
        (
            "append a well-chained forged record",
            format!(
                "INSERT INTO audit (seq, prev_hash, hash, record) VALUES ({}, '{last_hash}', '{forged_hash}', '{forged}')",
                n + 1
            ),
            n + 1,
        ),
    ];
    for (i, (what, sql, broken_at)) in cases.iter().enumerate() {
        let copy = TestDir::new();
        copy_audit(&dir, &copy.data());
        tamper(&copy.data(), sql);
        let out = cara(&copy).args(["audit", "verify"]).run().await;
        assert_eq!(out.code, Some(1), "case {i} ({what}): {out:?}");
        assert!(
            out.stderr.contains(&format!("at record {broken_at}:")),
            "case {i} ({what}) should name record {broken_at}: {out:?}"
        );
    }
}

/// Fixed by this suite: `cara serve` used to wait for every request in flight after
/// SIGTERM, so a turn waiting for an approval (up to 5 minutes) kept it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_even_with_a_turn_in_flight() {
    let fake = FakeOpenAi::start(vec![Reply::ToolCalls(vec![(
        "write_file".into(),
        json!({ "path": "pending.txt", "content": "x" }),
    )])])
    .await;
    let dir = TestDir::strict();
    let daemon = Daemon::start(&dir, &fake).await;
    let turn = tokio::spawn(
        daemon
            .authed(Method::POST, "/v1/chat/completions")
            .json(&chat_as("frank", "write it"))
            .send(),
    );
    daemon.pending_approval().await;
    // A chat client is connected too, as when someone stops the daemon under `cara chat`.
    let _socket = daemon.websocket(Some(daemon.token())).await.unwrap();

    let status = daemon.stop().await;
    assert!(status.success(), "{status}");
    assert!(turn.await.unwrap().is_err(), "the cut request fails");
    assert!(!dir.workspace().join("pending.txt").exists());
    let out = cara(&dir).args(["audit", "verify"]).run().await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let entries = audit_entries(&dir).await;
    let events: Vec<String> = entries
        .iter()
        .map(|e| {
            let r = &e["record"];
            format!(
                "{} {}",
                r["event"].as_str().unwrap_or("?"),
                r["outcome"].as_str().unwrap_or("-")
            )
        })
        .collect();
    // The stop is on record, and the call cut off by it is recorded as cancelled (when
    // the process drops its last tasks, which may come after the stop record).
    assert!(
        events.contains(&"daemon_stopped -".to_string()),
        "{events:?}"
    );
    let asked = events
        .iter()
        .position(|e| e == "tool_call asked")
        .expect("asked");
    assert!(
        events[asked..].contains(&"tool_call cancelled".to_string()),
        "the cut call has its outcome: {events:?}"
    );
}
