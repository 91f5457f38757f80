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
    let failures: Vec<(&str, &str, u64)> = entries
        .iter()
        .map(|e| &e["record"])
        .filter(|r| r["event"] == "auth_failed")
        .map(|r| {
            (
                r["path"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    // Failures are recorded at most once a second, each record counting the failures
    // since the previous one; the first is always recorded at once.
    assert_eq!(
        failures[0],
        ("/api/status", "missing token", 1),
        "{failures:?}"
    );
    let recorded: u64 = failures.iter().map(|f| f.2).sum();
    assert!(recorded <= 3 && !failures.is_empty(), "{failures:?}");
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

/// A local process that squats on the gateway's port while no gateway runs must not
/// receive the token: the CLI first asks for a proof that only the token's holder can
/// compute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_never_sends_the_token_to_an_impostor_on_the_port() {
    let dir = TestDir::new();
    // A data dir with a token, as after an earlier run.
    std::fs::create_dir_all(dir.data()).unwrap();
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.data().join("server.token"))
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            b"0123456789abcdef0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
    }
    // The impostor answers every request with 200 {"status":"ok"} and keeps what it hears.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let impostor = {
        let heard = heard.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    break;
                };
                let heard = heard.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    heard
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                    let body = r#"{"status":"ok"}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        })
    };
    let bind = format!("127.0.0.1:{port}");
    for args in [vec!["status"], vec!["approvals", "list"]] {
        let out = crate::util::cara(&dir)
            .env("CARAPACE_BIND", &bind)
            .args(&args)
            .run()
            .await;
        assert_ne!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("could not prove"),
            "{args:?}: {}",
            out.stderr
        );
    }
    impostor.abort();
    let heard = heard.lock().unwrap().clone();
    assert!(
        heard.contains("GET /health?challenge="),
        "the CLI did knock: {heard}"
    );
    assert!(
        !heard.to_ascii_lowercase().contains("authorization"),
        "token leaked: {heard}"
    );
    assert!(
        !heard.contains("0123456789abcdef0123"),
        "token leaked: {heard}"
    );
}

/// A client without the token (or a web page firing requests at 127.0.0.1) cannot grow
/// the audit log at the speed it sends requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_logins_is_audited_in_summary() {
    let fake = FakeOpenAi::start(vec![]).await;
    let dir = TestDir::new();
    let daemon = Daemon::start(&dir, &fake).await;
    for _ in 0..300 {
        let resp = daemon
            .http()
            .get(daemon.url("/api/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let entries = audit_entries(&dir).await;
    let counts: Vec<u64> = entries
        .iter()
        .map(|e| &e["record"])
        .filter(|r| r["event"] == "auth_failed")
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    // One record a second at most; 300 local requests take far less than 30 s.
    assert!(!counts.is_empty() && counts.len() < 30, "{counts:?}");
    assert!(counts.iter().sum::<u64>() <= 300, "{counts:?}");
}
