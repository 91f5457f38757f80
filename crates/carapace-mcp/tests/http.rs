//! MCP over streamable HTTP through the egress client: a real server (the official
//! Python SDK's, `tests/fixtures/pyserver.py`) reached through `Egress`, and the attacks
//! the egress checks must stop before a byte reaches the wrong place (hosts off the
//! list, loopback without `allow_private`, redirects).
//!
//! The standing GET stream and SSE answers read as they arrive are checked with the same
//! server (a tool it adds reaches the hub) and `tests/fixtures/progress.py` (progress of a
//! call arrives while the answer is held back, past the egress timeout).
//!
//! The tests with the Python servers run when `CARAPACE_TEST_MCP` is set (CI installs
//! `mcp` 2.3.0); the attack tests need nothing and always run.

use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::future::Future;

use carapace_egress::{Egress, EgressConfig, Injection, Place, Scope};
use carapace_mcp::http::transport;
use carapace_mcp::{Hub, HubEnv, ServerConfig, Snapshot, State, Transport};
use carapace_types::Secret;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam,
    ProgressToken, RequestMetaObject,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

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
    Egress::new(egress_config(entries, private)).unwrap()
}

fn egress_config(entries: &[&str], private: bool) -> EgressConfig {
    let list: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    EgressConfig {
        allow_hosts: list.clone(),
        allow_private: if private { list.clone() } else { Vec::new() },
        allow_http: list,
        timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        max_response_bytes: CAP,
        ..EgressConfig::default()
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Python SDK server fixture, killed on drop.
struct PyServer {
    port: u16,
    _child: Child,
}

async fn start_pyserver() -> PyServer {
    start_fixture("pyserver.py", &["--http"]).await
}

/// `tests/fixtures/SCRIPT ARGS... PORT`, once it listens.
async fn start_fixture(script: &str, args: &[&str]) -> PyServer {
    let port = free_port();
    let script = format!("{}/tests/fixtures/{script}", env!("CARGO_MANIFEST_DIR"));
    let child = Command::new("python3")
        .arg(&script)
        .args(args)
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
    panic!("{script} did not listen on {port} within 20 s");
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

// ---------------------------------------------------------------------------------------
// Streams: the standing GET stream and SSE answers read as they arrive

/// Waits up to `within` for the hub's tools to satisfy `ready`; false when they did not.
async fn hub_tools_until(hub: &Hub, within: Duration, ready: impl Fn(&Snapshot) -> bool) -> bool {
    let mut changes = hub.changes();
    tokio::time::timeout(within, async {
        while !ready(&hub.snapshot()) {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await
    .is_ok()
}

async fn hub_call(hub: &Hub, name: &str, args: Value) -> CallToolResult {
    let tool = hub.snapshot().tools[name].clone();
    tokio::time::timeout(Duration::from_secs(30), hub.call(&tool, args))
        .await
        .unwrap_or_else(|_| panic!("{name} hung"))
        .unwrap_or_else(|e| panic!("{name} failed: {e}"))
}

#[tokio::test]
async fn a_tool_an_http_server_adds_reaches_the_hub() {
    if !enabled() {
        return;
    }
    let server = start_pyserver().await;
    let entry = format!("127.0.0.1:{}", server.port);
    let transport = Transport::Http {
        url: format!("http://{entry}/mcp"),
        egress: egress_for(&[&entry], true),
        scope: Scope::default(),
    };
    let hub = Hub::start(
        vec![ServerConfig::new("py", transport)],
        HubEnv {
            scrub: Arc::new(|_: &mut String| {}),
        },
    );
    let listed = hub_tools_until(&hub, Duration::from_secs(30), |s| {
        s.tools.contains_key("py__add_tool")
    })
    .await;
    assert!(listed, "the server's tools are listed: {:?}", hub.status());
    assert!(!hub.snapshot().tools.contains_key("py__late"));

    // `notifications/tools/list_changed` comes on the standing GET stream, which rmcp
    // opens beside the first requests: should the first one be sent before the stream is
    // open (the server drops it then), the next one finds it open.
    let mut relisted = false;
    for _ in 0..3 {
        assert_eq!(
            text(&hub_call(&hub, "py__add_tool", json!({})).await),
            "added"
        );
        relisted = hub_tools_until(&hub, Duration::from_secs(10), |s| {
            s.tools.contains_key("py__late")
        })
        .await;
        if relisted {
            break;
        }
    }
    assert!(relisted, "list_changed never reached the hub");
    // The same connection relisted its tools: nothing restarted.
    let status = &hub.status()[0];
    assert_eq!((status.state, status.restarts), (State::Ready, 0));
    let late = hub_call(&hub, "py__late", json!({"x": "arrival"})).await;
    assert_eq!(text(&late), "late arrival");
    hub.shutdown().await;
}

/// A client that passes on the progress notifications it gets.
struct Progress(mpsc::UnboundedSender<ProgressNotificationParam>);

impl ClientHandler for Progress {
    fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let _ = self.0.send(params);
        std::future::ready(())
    }
}

#[tokio::test]
async fn an_sse_answer_is_read_as_it_arrives_and_outlives_the_egress_timeout() {
    if !enabled() {
        return;
    }
    let server = start_fixture("progress.py", &[]).await;
    let entry = format!("127.0.0.1:{}", server.port);
    let mut config = egress_config(&[&entry], true);
    config.timeout = Duration::from_secs(2);
    let egress = Egress::new(config).unwrap();
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        Progress(progress_tx).serve(transport(
            &format!("http://{entry}/mcp"),
            egress,
            Scope::default(),
        )),
    )
    .await
    .expect("the handshake hung")
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let Value::Object(args) = json!({"path": release}) else {
        unreachable!()
    };
    let mut params = CallToolRequestParams::new("wait_for").with_arguments(args);
    params.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
        NumberOrString::String("wait-1".into()),
    )));
    let peer = client.peer().clone();
    let call = tokio::spawn(async move { peer.call_tool(params).await });

    // The server holds its answer until the file exists, so this progress came through
    // while the answer's stream was still open.
    let first = tokio::time::timeout(Duration::from_secs(30), progress.recv())
        .await
        .expect("progress during the call")
        .unwrap();
    assert_eq!(first.message.as_deref(), Some("waiting"));
    assert!(!call.is_finished());
    // Longer than the egress timeout, which bounds only the response head.
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::write(&release, b"").unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the answer after the release")
        .unwrap()
        .unwrap();
    assert_eq!(text(&result), "released");
    let second = tokio::time::timeout(Duration::from_secs(10), progress.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.message.as_deref(), Some("released"));
    client.cancel().await.unwrap();
}
