//! The agent socket over a real Unix socket: identity decided once per connection,
//! typed errors with stable codes, params that could name a caller refused, the
//! per-run limits that keep one sandbox from exhausting the daemon, and cancels that
//! reach their request however full the connection is.

mod common;

use std::sync::Arc;
use std::time::Duration;

use carapace_server::agent_socket::{
    AgentIdentity, AgentSocket, Identify, MAX_CONNECTIONS_PER_RUN, Refusal,
};
use carapace_types::SessionId;
use common::{audit_events, harness_with};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Accepts every connection as run `run_t`, unless told to refuse.
struct Fixed {
    refuse: bool,
}

impl Identify for Fixed {
    fn identify(&self, _: &UnixStream) -> Result<AgentIdentity, Refusal> {
        if self.refuse {
            return Err(Refusal {
                uid: Some(4242),
                pid: Some(7),
                reason: "a pid namespace of no sandbox this daemon started".into(),
            });
        }
        Ok(AgentIdentity {
            run: "run_t".into(),
            session: SessionId::new("agent_t"),
        })
    }
}

async fn socket(refuse: bool) -> (common::Harness, std::path::PathBuf) {
    let h = harness_with(common::Options {
        script: None,
        ..Default::default()
    })
    .await;
    h.store
        .create_session(&SessionId::new("agent_t"), "agent", 0)
        .unwrap();
    let path = h.dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let socket = AgentSocket::new(h.gate.clone(), Arc::new(Fixed { refuse }), None);
    tokio::spawn(socket.serve(listener));
    (h, path)
}

struct Client {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    async fn connect(path: &std::path::Path) -> Client {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, line: &str) {
        let _ = self.w.write_all(line.as_bytes()).await;
        let _ = self.w.write_all(b"\n").await;
    }

    async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.r.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
        }
    }

    /// The next line, which must come within 10 s.
    async fn recv_soon(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.recv())
            .await
            .expect("a line within 10 s")
            .expect("a line")
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.send(&req.to_string()).await;
        self.recv().await.expect("an answer")
    }
}

#[tokio::test]
async fn an_unknown_caller_gets_one_error_and_is_audited() {
    let (h, path) = socket(true).await;
    let mut c = Client::connect(&path).await;
    let v = c.recv().await.unwrap();
    assert_eq!(v["error"]["code"], -32020);
    assert_eq!(v["id"], Value::Null);
    assert!(c.recv().await.is_none(), "the connection is closed");
    let refused = audit_events(&h.store, "agent_socket_refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["uid"], 4242);
}

#[tokio::test]
async fn methods_answer_with_stable_codes_and_no_param_names_a_caller() {
    let (_h, path) = socket(false).await;
    let mut c = Client::connect(&path).await;
    let info = c.call("session.info", json!({})).await;
    assert_eq!(info["result"]["agent"], "run_t");
    assert_eq!(info["result"]["session"], "agent_t");
    // Not JSON, not a request, an unknown method, and a forged principal.
    c.send("not json").await;
    assert_eq!(c.recv().await.unwrap()["error"]["code"], -32700);
    c.send(r#"[{"jsonrpc":"2.0","id":1,"method":"session.info"}]"#)
        .await;
    assert_eq!(c.recv().await.unwrap()["error"]["code"], -32600);
    let v = c.call("exec", json!({"command": "id"})).await;
    assert_eq!(v["error"]["code"], -32601);
    let v = c
        .call(
            "channel.send",
            json!({"channel": "x", "to": "y", "text": "z", "principal": "owner@api"}),
        )
        .await;
    assert_eq!(v["error"]["code"], -32602);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("params.principal")
    );
    // A Gate error keeps its code, stage and rule; the strict policy asks before a write
    // and nobody answers in this test, so use a tool that is not there.
    let v = c
        .call(
            "tools.call",
            json!({"name": "no_such_tool", "arguments": {}}),
        )
        .await;
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["error"]["data"]["code"], "UNKNOWN_TOOL");
    assert_eq!(v["error"]["data"]["stage"], "resolve");
    let v = c
        .call(
            "tools.call",
            json!({"name": "read_file", "arguments": {"path": "../x"}}),
        )
        .await;
    assert!(v["error"]["code"].as_i64().unwrap() <= -32001, "{v}");
    let ok = c
        .call(
            "tools.call",
            json!({"name": "read_file", "arguments": {"path": "notes.txt"}}),
        )
        .await;
    assert_eq!(ok["result"]["content"]["content"], "buy milk\n", "{ok}");
}

#[tokio::test]
async fn a_line_over_the_limit_ends_the_connection_without_buffering_it() {
    let (_h, path) = socket(false).await;
    let mut c = Client::connect(&path).await;
    let big = vec![b'x'; carapace_server::agent_socket::MAX_LINE + 10];
    let _ = c.w.write_all(&big).await;
    let v = c.recv().await.unwrap();
    assert_eq!(v["error"]["code"], -32600);
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn one_run_cannot_hold_more_than_its_share_of_connections() {
    let (_h, path) = socket(false).await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_RUN {
        let mut c = Client::connect(&path).await;
        // Each connection is in and answering.
        assert!(c.call("session.info", json!({})).await["result"].is_object());
        held.push(c);
    }
    let mut extra = Client::connect(&path).await;
    let v = extra.recv().await.unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    // Closing one gives its slot back.
    drop(held.pop());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut again = Client::connect(&path).await;
    assert!(again.call("session.info", json!({})).await["result"].is_object());
}

#[tokio::test]
async fn a_cancelled_request_ends_its_gate_call_and_withdraws_the_approval() {
    let (h, path) = socket(false).await;
    let mut c = Client::connect(&path).await;
    // The strict policy asks before a write; nobody answers.
    let req = json!({"jsonrpc": "2.0", "id": "w1", "method": "tools.call",
        "params": {"name": "write_file", "arguments": {"path": "late.txt", "content": "x"}}});
    c.send(&req.to_string()).await;
    common::eventually("the approval request", || {
        !h.gate.pending_approvals().is_empty()
    })
    .await;
    // A cancel for another id, and one sent as a request, change nothing.
    c.send(r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":"w2"}}"#)
        .await;
    c.send(r#"{"jsonrpc":"2.0","id":9,"method":"$/cancelRequest","params":{"id":"w1"}}"#)
        .await;
    let v = c.recv().await.unwrap();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(9), json!(-32600))
    );
    assert_eq!(h.gate.pending_approvals().len(), 1);
    c.send(r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":"w1"}}"#)
        .await;
    let v = c.recv().await.unwrap();
    assert_eq!(v["id"], "w1", "{v}");
    assert_eq!(v["error"]["code"], -32800, "{v}");
    common::eventually("the approval withdrawn", || {
        h.gate.pending_approvals().is_empty()
    })
    .await;
    let calls = audit_events(&h.store, "tool_call");
    let outcomes: Vec<&str> = calls
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["asked", "cancelled"], "{calls:#?}");
    assert!(!h.dir.path().join("workspace/late.txt").exists());
    // The connection goes on.
    let info = c.call("session.info", json!({})).await;
    assert_eq!(info["result"]["agent"], "run_t");
}

/// A `write_file` of `ID.txt` with request id `ID`: the strict policy asks the owner,
/// and nobody answers in these tests, so it waits until it is cancelled.
fn write(id: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools.call", "params": {"name": "write_file",
        "arguments": {"path": format!("{id}.txt"), "content": "x"}}})
    .to_string()
}

fn cancel(id: &str) -> String {
    json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": id}}).to_string()
}

/// The ids of the writes waiting for the owner, sorted.
fn asking(h: &common::Harness) -> Vec<String> {
    let mut ids: Vec<String> = h
        .gate
        .pending_approvals()
        .iter()
        .map(|a| {
            let at = a.args_preview.find(".txt").expect("a path in the preview");
            let start = a.args_preview[..at].rfind('"').unwrap() + 1;
            a.args_preview[start..at].to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn cancels_are_read_while_requests_wait_for_a_running_slot() {
    let (h, path) = socket(false).await;
    let mut c = Client::connect(&path).await;
    let first: Vec<String> = (1..=16).map(|n| format!("w{n:02}")).collect();
    for id in &first {
        c.send(&write(id)).await;
    }
    common::eventually("16 approval requests", || asking(&h) == first).await;
    // Every running slot is taken: these two wait, and the cancels after them are read.
    c.send(&write("w17")).await;
    c.send(&write("w18")).await;
    c.send(&cancel("w17")).await;
    let v = c.recv_soon().await;
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("w17"), &json!(-32800)),
        "{v}"
    );
    assert_eq!(asking(&h), first, "a waiting request never runs");
    c.send(&cancel("w03")).await;
    let v = c.recv_soon().await;
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("w03"), &json!(-32800)),
        "{v}"
    );
    // The slot it gave back goes to the next waiting request, which a cancel ends too.
    let mut now: Vec<String> = first.iter().filter(|id| *id != "w03").cloned().collect();
    now.push("w18".into());
    common::eventually("w18 asking in w03's place", || asking(&h) == now).await;
    c.send(&cancel("w18")).await;
    let v = c.recv_soon().await;
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("w18"), &json!(-32800)),
        "{v}"
    );
    common::eventually("w18's approval withdrawn", || asking(&h).len() == 15).await;
    let asked = |h: &common::Harness, outcome: &str| {
        audit_events(&h.store, "tool_call")
            .iter()
            .filter(|r| r["outcome"] == outcome)
            .count()
    };
    assert_eq!((asked(&h, "asked"), asked(&h, "cancelled")), (17, 2));
    assert!(!h.dir.path().join("workspace/w17.txt").exists());
    // The connection goes on.
    let info = c.call("session.info", json!({})).await;
    assert_eq!(info["result"]["agent"], "run_t");
}

#[tokio::test]
async fn an_id_in_flight_is_not_reused_and_its_request_stays_cancellable() {
    let (h, path) = socket(false).await;
    let mut c = Client::connect(&path).await;
    c.send(&write("d")).await;
    common::eventually("the approval request", || asking(&h) == ["d"]).await;
    c.send(&write("d")).await;
    let v = c.recv_soon().await;
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("d"), &json!(-32600)),
        "{v}"
    );
    assert_eq!(v["error"]["message"], "id already in flight");
    assert_eq!(asking(&h), ["d"], "the second request does not run");
    // The cancel reaches the first request.
    c.send(&cancel("d")).await;
    let v = c.recv_soon().await;
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("d"), &json!(-32800)),
        "{v}"
    );
    common::eventually("the approval withdrawn", || asking(&h).is_empty()).await;
    // Once answered, the id is free again, and its new request cancellable.
    c.send(&write("d")).await;
    common::eventually("the approval request again", || asking(&h) == ["d"]).await;
    c.send(&cancel("d")).await;
    let v = c.recv_soon().await;
    assert_eq!(
        (&v["id"], &v["error"]["code"]),
        (&json!("d"), &json!(-32800)),
        "{v}"
    );
    common::eventually("the approval withdrawn again", || asking(&h).is_empty()).await;
}
