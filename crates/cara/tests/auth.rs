//! Who may talk to the daemon: a bearer token on every endpoint but `/health`, and only
//! under a loopback `Host` name (against DNS rebinding).

use std::net::SocketAddr;

use carapace_testkit::FakeOpenAi;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Daemon, TestDir, audit_entries, error_code, json_response};

/// A raw HTTP/1.1 GET with exactly these headers; returns the status and the body.
async fn raw_get(addr: SocketAddr, path: &str, host: &str, token: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an http response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_and_failures_are_audited() {
    let fake = FakeOpenAi::start(vec![]).await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    let wrong = "not-the-token-but-a-guess-of-forty-bytes";

    let resp = daemon
        .http()
        .get(daemon.url("/api/status"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_response(resp).await;
    assert_eq!((status.as_u16(), error_code(&body)), (401, "UNAUTHORIZED"));

    let resp = daemon
        .http()
        .post(daemon.url("/v1/chat/completions"))
        .bearer_auth(wrong)
        .json(&json!({ "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    let (status, body) = json_response(resp).await;
    assert_eq!((status.as_u16(), error_code(&body)), (401, "UNAUTHORIZED"));
    assert!(fake.requests().is_empty(), "nothing reached the model");

    // A token in another scheme is no bearer token.
    let resp = daemon
        .http()
        .get(daemon.url("/api/sessions"))
        .basic_auth("owner", Some(daemon.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = daemon
        .http()
        .get(daemon.url("/health"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_response(resp).await;
    assert_eq!((status.as_u16(), body), (200, json!({ "status": "ok" })));
    let (status, _) = daemon.get("/api/status").await;
    assert_eq!(status, 200, "the right token passes");

    let entries = audit_entries(&dir).await;
    let failures: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| &e["record"])
        .filter(|r| r["event"] == "auth_failed")
        .map(|r| (r["path"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        failures,
        [
            ("/api/status", "missing token"),
            ("/v1/chat/completions", "wrong token"),
            ("/api/sessions", "missing token"),
        ]
    );
    let log: String = entries.iter().map(Value::to_string).collect();
    assert!(!log.contains(wrong), "a guessed token is not logged");
    assert!(!log.contains(daemon.token()), "the token is not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_name_is_refused_even_with_the_token() {
    let fake = FakeOpenAi::start(vec![]).await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    let addr = daemon.addr();
    let port = addr.port();

    for host in [
        "evil.example.com".to_string(),
        format!("evil.example.com:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        let (status, body) = raw_get(addr, "/api/status", &host, daemon.token()).await;
        assert_eq!(status, 421, "Host: {host}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error_code(&body), "BAD_HOST");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = raw_get(addr, "/api/status", &host, daemon.token()).await;
        assert_eq!(status, 200, "Host: {host}: {body}");
    }
}
