//! A session's tools over the API (`GET /api/sessions/{id}/tools`, `POST
//! /api/sessions/{id}/tools/call`), the owner-side way in of `cara mcp serve`: the same
//! list and result as the agent socket's `tools.list` / `tools.call`, every call a Gate
//! call as the owner in the session of the path (approvals, rate limits, audit), and a
//! refusal the Gate's typed error with a status.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use carapace_gate::GateConfig;
use carapace_server::agent_socket::{AgentIdentity, AgentSocket, Identify, Refusal};
use carapace_types::SessionId;
use common::{Call, Options, audit_events, eventually, harness_with, new_session};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn harness_options() -> Options {
    Options {
        script: None,
        ..Options::default()
    }
}

/// Every socket connection is run `run_t` in session `agent_t`.
struct Fixed;

impl Identify for Fixed {
    fn identify(&self, _: &UnixStream) -> Result<AgentIdentity, Refusal> {
        Ok(AgentIdentity {
            run: "run_t".into(),
            session: SessionId::new("agent_t"),
        })
    }
}

/// Asks the agent socket of `h`'s Gate one method and returns the answer.
async fn socket_call(h: &common::Harness, method: &str, params: Value) -> Value {
    if h.store
        .session(&SessionId::new("agent_t"))
        .unwrap()
        .is_none()
    {
        h.store
            .create_session(&SessionId::new("agent_t"), "agent", 0)
            .unwrap();
    }
    let path = h.dir.path().join(format!("agent-{method}.sock"));
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(AgentSocket::new(h.gate.clone(), Arc::new(Fixed), None).serve(listener));
    let (r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    w.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    serde_json::from_str(&line).unwrap()
}

fn call_path(id: &str) -> String {
    format!("/api/sessions/{id}/tools/call")
}

#[tokio::test]
async fn a_session_lists_the_gates_tools_as_the_agent_socket_does() {
    let h = harness_with(harness_options()).await;
    let id = new_session(&h.app).await;
    let answer = Call::get(&format!("/api/sessions/{id}/tools"))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let listed = answer.json();
    let socket = socket_call(&h, "tools.list", json!({})).await;
    assert_eq!(listed, socket["result"], "the same list at both doors");

    let tools = listed["tools"].as_array().unwrap();
    let read = tools.iter().find(|t| t["name"] == "read_file").unwrap();
    assert_eq!(read["effect"], "read", "{read}");
    assert_eq!(
        read["input_schema"]["additionalProperties"], false,
        "{read}"
    );
    assert!(read["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(tools.iter().any(|t| t["name"] == "propose_plan"));

    let long = "s_".to_string() + &"a".repeat(200);
    for unknown in ["s_unknown", long.as_str()] {
        let answer = Call::get(&format!("/api/sessions/{unknown}/tools"))
            .send(&h.app)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{unknown}");
        assert_eq!(answer.code(), "NOT_FOUND");
        let answer = Call::post(&call_path(unknown))
            .json(&json!({"name": "read_file", "arguments": {"path": "notes.txt"}}))
            .send(&h.app)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{unknown}");
        assert_eq!(answer.code(), "NOT_FOUND");
    }
    assert!(
        audit_events(&h.store, "tool_call").is_empty(),
        "a call to no session reaches no Gate"
    );
}

#[tokio::test]
async fn a_call_is_one_gate_call_as_the_owner_in_that_session_and_is_audited() {
    let h = harness_with(harness_options()).await;
    let id = new_session(&h.app).await;
    let other = new_session(&h.app).await;
    let args = json!({"path": "notes.txt"});
    let answer = Call::post(&call_path(&id))
        .json(&json!({"name": "read_file", "arguments": args}))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let result = answer.json();
    assert_eq!(result["content"]["content"], "buy milk\n", "{result}");
    let socket = socket_call(
        &h,
        "tools.call",
        json!({"name": "read_file", "arguments": args}),
    )
    .await;
    assert_eq!(result, socket["result"], "the same result at both doors");

    // The session of the path took the label; the other did not.
    let label = |sid: &str| {
        h.store
            .session(&SessionId::new(sid))
            .unwrap()
            .unwrap()
            .label
            .confidentiality
    };
    assert_eq!(label(&id).as_str(), "private");
    assert_eq!(label(&other).as_str(), "public");

    // Arguments may be left out (`{}`), as on the socket.
    let listed = Call::post(&call_path(&other))
        .json(&json!({"name": "list_dir"}))
        .send(&h.app)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());

    let calls = audit_events(&h.store, "tool_call");
    let ours: Vec<&Value> = calls
        .iter()
        .filter(|r| r["principal"] == "owner@api")
        .collect();
    assert_eq!(ours.len(), 2, "{calls:#?}");
    assert_eq!(ours[0]["tool"], "read_file");
    assert_eq!(ours[0]["session"], id.as_str());
    assert_eq!(ours[0]["outcome"], "executed");
    assert!(
        ours[0]["call_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("api_")),
        "{}",
        ours[0]
    );
    assert_eq!(ours[1]["tool"], "list_dir");
    assert_eq!(ours[1]["session"], other.as_str());
}

/// The typed Gate error of an answer, after checking the API's error shape.
fn gate_error(answer: &common::Answer) -> Value {
    answer.code();
    let error = answer.json()["error"].clone();
    assert!(
        error["stage"].is_string(),
        "a Gate error names its stage: {error}"
    );
    assert!(error["retriable"].is_boolean(), "{error}");
    error
}

#[tokio::test]
async fn refusals_are_the_gates_typed_errors_with_a_status_and_audited() {
    let h = harness_with(Options {
        script: None,
        gate: GateConfig {
            rate_per_minute: 3,
            ..GateConfig::default()
        },
        ..Options::default()
    })
    .await;
    let id = new_session(&h.app).await;
    let call = |body: Value| Call::post(&call_path(&id)).json(&body).send(&h.app);

    let unknown = call(json!({"name": "no_such_tool", "arguments": {}})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let error = gate_error(&unknown);
    assert_eq!(error["code"], "UNKNOWN_TOOL");
    assert_eq!(error["stage"], "resolve");
    assert_eq!(error["type"], "unknown_tool");

    let invalid = call(json!({"name": "read_file", "arguments": {"path": 5}})).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    let error = gate_error(&invalid);
    assert_eq!(error["code"], "VALIDATION_FAILED");
    assert_eq!(error["field"], "/path");

    // The strict preset asks before a write; the owner says no.
    let app = h.app.clone();
    let path = call_path(&id);
    let write = tokio::spawn(async move {
        Call::post(&path)
            .json(&json!({"name": "write_file", "arguments": {"path": "out.txt", "content": "x"}}))
            .send(&app)
            .await
    });
    eventually("the approval request", || {
        !h.gate.pending_approvals().is_empty()
    })
    .await;
    let approval = h.gate.pending_approvals()[0].clone();
    assert_eq!(approval.session.as_str(), id.as_str());
    let answer = Call::post(&format!("/api/approvals/{}", approval.id))
        .json(&json!({"decision": "deny"}))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let refused = write.await.unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    let error = gate_error(&refused);
    assert_eq!(error["code"], "CONFIRMATION_DENIED");
    assert_eq!(error["stage"], "approve");
    assert!(!h.dir.path().join("workspace/out.txt").exists());

    // Every attempt is charged, the invalid one too: the fourth read_file finds the
    // bucket of three empty.
    for _ in 0..2 {
        let ok = call(json!({"name": "read_file", "arguments": {"path": "notes.txt"}})).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    }
    let limited = call(json!({"name": "read_file", "arguments": {"path": "notes.txt"}})).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text()
    );
    let error = gate_error(&limited);
    assert_eq!(error["code"], "RATE_LIMITED");
    assert_eq!(error["retriable"], true);
    assert!(
        limited
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().unwrap() >= 1)
    );

    let calls = audit_events(&h.store, "tool_call");
    let summary: Vec<(String, String, String)> = calls
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            (s("tool"), s("outcome"), s("code"))
        })
        .collect();
    let expected = [
        ("no_such_tool", "denied", "UNKNOWN_TOOL"),
        ("read_file", "denied", "VALIDATION_FAILED"),
        ("write_file", "asked", "-"),
        ("write_file", "denied", "CONFIRMATION_DENIED"),
        ("read_file", "executed", "-"),
        ("read_file", "executed", "-"),
        ("read_file", "denied", "RATE_LIMITED"),
    ];
    assert_eq!(
        summary,
        expected.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .all(|r| r["session"] == id.as_str() && r["principal"] == "owner@api")
    );
}

#[tokio::test]
async fn a_call_body_is_bounded_and_parsed_strictly() {
    let h = harness_with(Options {
        script: None,
        max_body_bytes: 4096,
        ..Options::default()
    })
    .await;
    let id = new_session(&h.app).await;
    let path = call_path(&id);
    let big =
        json!({"name": "write_file", "arguments": {"path": "a", "content": "a".repeat(5000)}});
    let answer = Call::post(&path).json(&big).send(&h.app).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text()
    );
    assert_eq!(answer.code(), "PAYLOAD_TOO_LARGE");
    for bad in [
        json!({"arguments": {}}),
        json!({"name": 5}),
        json!({"name": "read_file", "arguments": {"path": "notes.txt"}, "session": "s_other"}),
        json!({"name": "read_file", "principal": "owner@api"}),
    ] {
        let answer = Call::post(&path).json(&bad).send(&h.app).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.text()
        );
        assert_eq!(answer.code(), "BAD_REQUEST", "{bad}");
    }
    let answer = Call::post(&path)
        .raw(Some("text/plain"), r#"{"name":"list_dir"}"#)
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = Call::post(&path)
        .auth(None)
        .json(&json!({"name": "list_dir"}))
        .send(&h.app)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        audit_events(&h.store, "tool_call").is_empty(),
        "no refused body reaches the Gate"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_call_and_withdraws_the_approval() {
    let h = harness_with(harness_options()).await;
    let id = new_session(&h.app).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, h.app.clone()).into_future());
    // As `cara mcp serve` sends it; the future is dropped as an MCP cancellation drops it.
    let request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{addr}{}", call_path(&id)))
        .bearer_auth(common::TOKEN)
        .json(&json!({"name": "write_file", "arguments": {"path": "late.txt", "content": "x"}}))
        .send();
    tokio::select! {
        _ = request => panic!("the write was answered without the owner"),
        () = eventually("the approval request", || !h.gate.pending_approvals().is_empty()) => {}
    }
    eventually("the approval withdrawn", || {
        h.gate.pending_approvals().is_empty()
    })
    .await;
    eventually("the cancellation recorded", || {
        audit_events(&h.store, "tool_call").len() == 2
    })
    .await;
    let calls = audit_events(&h.store, "tool_call");
    let outcomes: Vec<&str> = calls
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["asked", "cancelled"], "{calls:#?}");
    assert!(!h.dir.path().join("workspace/late.txt").exists());
}
