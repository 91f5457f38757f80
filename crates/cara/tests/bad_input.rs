//! Bad input from a client or from the model: each gets a typed error, nothing runs,
//! and the daemon keeps answering.

use carapace_testkit::{FakeOpenAi, Reply};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::util::{
    Daemon, TestDir, audit_entries, error_code, json_response, tool_messages, wait_requests,
};

/// What is wrong, method, path, content type, body; then the expected status, error
/// code and a text the error message must contain.
type Case<'a> = (
    &'a str,
    Method,
    &'a str,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
    &'a str,
);

/// Sends `body` with `content_type` (none when `None`) and returns status and JSON body.
async fn send_raw(
    daemon: &Daemon,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = daemon.authed(method.clone(), path).body(body);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (status, body) = json_response(resp).await;
    (status.as_u16(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors() {
    let fake = FakeOpenAi::start(vec![]).await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    let (status, created) = daemon.post("/api/sessions", &json!({ "title": "t" })).await;
    assert_eq!(status, 201, "{created}");
    let session = created["session"]["id"].as_str().unwrap().to_string();
    let messages = format!("/api/sessions/{session}/messages");
    let json_ct = Some("application/json");
    let big_text = "a".repeat(1024 * 1024 + 10);

    let chat = "/v1/chat/completions";
    let cases: Vec<Case> = vec![
        (
            "malformed json",
            Method::POST,
            chat,
            json_ct,
            br#"{"messages": [{"role": "user""#.to_vec(),
            400,
            "BAD_REQUEST",
            "",
        ),
        (
            "wrong type",
            Method::POST,
            chat,
            json_ct,
            br#"{"messages": 5}"#.to_vec(),
            400,
            "BAD_REQUEST",
            "messages",
        ),
        (
            "no user message",
            Method::POST,
            chat,
            json_ct,
            br#"{"messages": [{"role": "system", "content": "x"}]}"#.to_vec(),
            400,
            "BAD_REQUEST",
            "user message",
        ),
        (
            "unknown field",
            Method::POST,
            &messages,
            json_ct,
            br#"{"text": "x", "bogus": 1}"#.to_vec(),
            400,
            "BAD_REQUEST",
            "bogus",
        ),
        (
            "oversized body (openai)",
            Method::POST,
            chat,
            json_ct,
            json!({ "messages": [{ "role": "user", "content": big_text }] })
                .to_string()
                .into_bytes(),
            413,
            "PAYLOAD_TOO_LARGE",
            "",
        ),
        (
            "oversized body (api)",
            Method::POST,
            &messages,
            json_ct,
            json!({ "text": big_text }).to_string().into_bytes(),
            413,
            "PAYLOAD_TOO_LARGE",
            "",
        ),
        (
            "oversized body (new session)",
            Method::POST,
            "/api/sessions",
            json_ct,
            json!({ "title": big_text }).to_string().into_bytes(),
            413,
            "PAYLOAD_TOO_LARGE",
            "",
        ),
        (
            "not utf-8",
            Method::POST,
            &messages,
            json_ct,
            b"{\"text\": \"\xff\xfe\"}".to_vec(),
            400,
            "BAD_REQUEST",
            "",
        ),
        (
            "no content type",
            Method::POST,
            &messages,
            None,
            br#"{"text": "x"}"#.to_vec(),
            415,
            "BAD_REQUEST",
            "Content-Type",
        ),
        (
            "unknown endpoint",
            Method::GET,
            "/api/nothing",
            None,
            Vec::new(),
            404,
            "NOT_FOUND",
            "",
        ),
        (
            "wrong method",
            Method::GET,
            chat,
            None,
            Vec::new(),
            405,
            "METHOD_NOT_ALLOWED",
            "",
        ),
        (
            "a websocket path without an upgrade",
            Method::GET,
            "/ws",
            None,
            Vec::new(),
            400,
            "BAD_REQUEST",
            "",
        ),
        (
            "unknown session",
            Method::POST,
            "/api/sessions/s_0000/messages",
            json_ct,
            br#"{"text": "x"}"#.to_vec(),
            404,
            "NOT_FOUND",
            "",
        ),
    ];
    for (what, method, path, ct, body, want_status, want_code, mentions) in cases {
        let (status, body) = send_raw(&daemon, method, path, ct, body).await;
        assert_eq!(
            (status, error_code(&body)),
            (want_status, want_code),
            "{what}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{what}: {message}");
        assert!(
            message.len() < 1000,
            "{what}: the input is not echoed whole"
        );
        daemon.assert_healthy().await;
    }
    assert!(
        fake.requests().is_empty(),
        "no bad request reached the model"
    );
    let (_, listed) = daemon.get(&messages).await;
    assert_eq!(listed["messages"], json!([]), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_calls_from_the_model_get_typed_errors() {
    let fake = FakeOpenAi::start(vec![
        Reply::ToolCalls(vec![("rm_rf".into(), json!({ "path": "." }))]),
        Reply::RawToolCall {
            name: "read_file".into(),
            arguments: r#"{"path": "a.txt""#.into(),
        },
        Reply::ToolCalls(vec![(
            "read_file".into(),
            json!({ "path": "a.txt", "bogus_field": 1 }),
        )]),
        Reply::Text("I give up".into()),
    ])
    .await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    std::fs::write(dir.workspace().join("a.txt"), "A").unwrap();

    let (status, body) = json_response(
        daemon
            .chat(&json!({ "messages": [{ "role": "user", "content": "go" }] }))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "I give up");

    let requests = wait_requests(&fake, 4).await;
    let errors: Vec<Value> = tool_messages(&requests[3])
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m["content"].as_str().unwrap()).unwrap()["error"].clone()
        })
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0]["code"], "UNKNOWN_TOOL", "{errors:?}");
    assert_eq!(errors[0]["stage"], "resolve");
    assert_eq!(errors[1]["code"], "VALIDATION_FAILED", "{errors:?}");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{errors:?}"
    );
    assert_eq!(errors[2]["code"], "VALIDATION_FAILED", "{errors:?}");
    assert!(
        errors[2]["message"]
            .as_str()
            .unwrap()
            .contains("bogus_field"),
        "the unknown field is named: {errors:?}"
    );

    let records: Vec<String> = audit_entries(&dir)
        .await
        .iter()
        .map(|e| &e["record"])
        .filter(|r| r["event"] == "tool_call")
        .map(|r| format!("{} {} {}", r["tool"], r["outcome"], r["code"]))
        .collect();
    assert_eq!(
        records,
        [
            r#""rm_rf" "denied" "UNKNOWN_TOOL""#,
            r#""read_file" "denied" "VALIDATION_FAILED""#,
            r#""read_file" "denied" "VALIDATION_FAILED""#,
        ]
    );
    daemon.assert_healthy().await;
}
