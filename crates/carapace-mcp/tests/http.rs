//! MCP over streamable HTTP through the egress client: a real server (the official
//! Python SDK's, `tests/fixtures/pyserver.py`) reached through `Egress`, and the attacks
//! the egress checks must stop before a byte reaches the wrong place (hosts off the
//! list, loopback without `allow_private`, redirects).
//!
//! The tests with the Python server run when `CARAPACE_TEST_MCP` is set (CI installs
//! `mcp` 2.3.0); the attack tests need nothing and always run.

use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use carapace_egress::{Egress, EgressConfig, Injection, Place, Scope};
use carapace_mcp::http::transport;
use carapace_types::Secret;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// Responses above this many bytes are cut by egress (and so refused by the transport).
const CAP: u64 = 256 * 1024;
const SECRET: &str = "sk-mcp-7d1e4b9a03";

fn enabled() -> bool {
    if std::env::var_os("CARAPACE_TEST_MCP").is_some() {
        return true;
    }
    eprintln!("skipped: set CARAPACE_TEST_MCP=1 (needs python3 with mcp 2.3.0)");
    false
}

/// An egress client that may reach exactly these loopback `host:port` entries over http.
fn egress_for(entries: &[&str], private: bool) -> Egress {
    let list: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    Egress::new(EgressConfig {
        allow_hosts: list.clone(),
        allow_private: if private { list.clone() } else { Vec::new() },
        allow_http: list,
        timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        max_response_bytes: CAP,
        ..EgressConfig::default()
    })
    .unwrap()
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pyserver.py --http PORT`, killed on drop.
struct PyServer {
    port: u16,
    _child: Child,
}

async fn start_pyserver() -> PyServer {
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pyserver.py");
    let child = Command::new("python3")
        .arg(script)
        .arg("--http")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return PyServer {
                port,
                _child: child,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pyserver.py did not listen on {port} within 20 s");
}

async fn connect(url: &str, egress: Egress) -> Result<RunningService<RoleClient, ()>, String> {
    connect_scoped(url, egress, Scope::default()).await
}

async fn connect_scoped(
    url: &str,
    egress: Egress,
    scope: Scope,
) -> Result<RunningService<RoleClient, ()>, String> {
    tokio::time::timeout(
        Duration::from_secs(30),
        ().serve(transport(url, egress, scope)),
    )
    .await
    .map_err(|_| "the handshake hung".to_string())?
    .map_err(|e| e.to_string())
}

async fn call(
    client: &RunningService<RoleClient, ()>,
    name: &'static str,
    args: Value,
) -> Result<CallToolResult, String> {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    let params = CallToolRequestParams::new(name).with_arguments(args);
    tokio::time::timeout(Duration::from_secs(30), client.call_tool(params))
        .await
        .map_err(|_| format!("{name} hung"))?
        .map_err(|e| e.to_string())
}

fn text(result: &CallToolResult) -> String {
    let content = serde_json::to_value(&result.content).unwrap();
    content[0]["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_python_sdk_server_answers_through_egress() {
    if !enabled() {
        return;
    }
    let server = start_pyserver().await;
    let entry = format!("127.0.0.1:{}", server.port);
    let url = format!("http://{entry}/mcp");
    // The server's credential, added by egress to every request to it.
    let scope = Scope {
        injections: vec![Injection {
            hosts: vec![entry.clone()],
            place: Place::Header {
                name: "X-Api-Key".to_string(),
                format: "{}".to_string(),
            },
            value: Secret::new(SECRET.to_string()),
        }],
        ..Scope::default()
    };
    let client = connect_scoped(&url, egress_for(&[&entry], true), scope)
        .await
        .unwrap();
    let info = client.peer_info().expect("initialized");
    assert_eq!(info.server_info.as_ref().unwrap().name, "carapace-pyserver");
    // rmcp's default handshake is `initialize` at its latest version with one.
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");
    let tools_capability = info.capabilities.tools.as_ref().expect("tools");
    assert_eq!(tools_capability.list_changed, Some(true));

    let tools = client.list_all_tools().await.unwrap();
    let by_name = |name: &str| {
        tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} is listed"))
    };
    for name in [
        "echo",
        "add",
        "delete_note",
        "fetch_page",
        "send_out",
        "crash",
        "flood",
        "read_file",
        "reach",
        "sleep",
        "env_value",
        "add_tool",
    ] {
        by_name(name);
    }
    let hints = |name: &str| {
        let a = by_name(name).annotations.clone();
        a.map(|a| (a.read_only_hint, a.destructive_hint, a.open_world_hint))
    };
    assert_eq!(hints("echo"), Some((Some(true), None, None)));
    assert_eq!(hints("add"), None);
    assert_eq!(hints("delete_note"), Some((Some(false), Some(true), None)));
    assert_eq!(hints("fetch_page"), Some((Some(true), None, Some(true))));
    assert_eq!(hints("send_out"), Some((None, Some(true), Some(true))));
    let schema = Value::Object((*by_name("add").input_schema).clone());
    assert_eq!(schema["properties"]["a"]["type"], "integer");

    let echoed = call(&client, "echo", json!({"text": "through egress"}))
        .await
        .unwrap();
    assert_eq!(text(&echoed), "through egress");
    let sum = call(&client, "add", json!({"a": 2, "b": 40}))
        .await
        .unwrap();
    assert_eq!(text(&sum), "42");
    // A server that reflects its credential shows the model only the marker.
    let reflected = call(&client, "echo", json!({"text": format!("key={SECRET}")}))
        .await
        .unwrap();
    assert_eq!(text(&reflected), "key=[REDACTED]");
    assert!(!format!("{reflected:?}").contains(SECRET));

    // A result beyond the cap is refused cleanly, not buffered without bound.
    let flood = call(&client, "flood", json!({"n": 2 * CAP})).await;
    let error = flood.expect_err("a flood beyond the cap fails");
    assert!(
        error.contains("maximum size") || error.contains("too large"),
        "{error}"
    );
    // Below the cap the same tool works.
    let small = call(&client, "flood", json!({"n": 1000})).await.unwrap();
    assert_eq!(text(&small).len(), 1000);

    client.cancel().await.unwrap();
}

/// A listener that counts the connections it accepts and answers each with `reply`.
async fn recorder(reply: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, count)
}

const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn a_host_off_the_list_is_refused_before_connecting() {
    let (port, accepted) = recorder(NOT_FOUND).await;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let error = connect(&url, egress_for(&["mcp.example.com"], false))
        .await
        .expect_err("refused");
    assert!(error.contains("not allowed"), "{error}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn loopback_without_allow_private_is_refused() {
    let (port, accepted) = recorder(NOT_FOUND).await;
    let entry = format!("127.0.0.1:{port}");
    let url = format!("http://{entry}/mcp");
    let error = connect(&url, egress_for(&[&entry], false))
        .await
        .expect_err("refused");
    assert!(error.contains("blocked"), "{error}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let (target, followed) = recorder(NOT_FOUND).await;
    let reply: &'static str = Box::leak(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{target}/mcp\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let (start, asked) = recorder(reply).await;
    let (a, b) = (format!("127.0.0.1:{start}"), format!("127.0.0.1:{target}"));
    // Both are allowed: only the rule that redirects are not followed stops it.
    let error = connect(&format!("http://{a}/mcp"), egress_for(&[&a, &b], true))
        .await
        .expect_err("refused");
    assert!(error.contains("redirect"), "{error}");
    assert!(asked.load(Ordering::SeqCst) >= 1);
    assert_eq!(followed.load(Ordering::SeqCst), 0);
}
