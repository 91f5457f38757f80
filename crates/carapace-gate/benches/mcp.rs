//! The Gate's added latency per MCP call: the same tool of the same server called
//! directly (`Hub::call`) and through the Gate (`Gate::call` of `SERVER__TOOL`, every
//! stage: envelope, resolve, validate, authorize, policy, the call with its deadline,
//! scrub and label, and the audit append to a WAL SQLite file opened as the daemon opens
//! it). The target is under 1 ms at p99.
//!
//! The two kinds of call alternate in one loop (A then B, then B then A, ...) so drift
//! of the machine and the server hits both alike; each iteration also yields the
//! difference B − A of that pair. Servers run unsandboxed (`sandbox: None`), so only the
//! Gate's own cost differs:
//!
//! 1. `py`: the official Python SDK's server, `carapace-mcp/tests/fixtures/pyserver.py`,
//!    tool `echo` (`readOnlyHint`, and an owner's override to `read`, since an
//!    unsandboxed server counts as networked; so no approval). Needs `python3` with
//!    `mcp` on the PATH; without it this part is skipped. Python's own latency
//!    (hundreds of µs) dominates and is noisy, so its differences are wide.
//! 2. `rs`: a trivial rmcp server with the same `echo` tool: this bench's own binary,
//!    started again with `CARAPACE_BENCH_MCP_SERVER=echo`. Its calls are quick and
//!    steady, so the Gate's cost shows more clearly. It runs once more with an
//!    in-memory store, to separate SQLite's file writes from the rest of the Gate.
//!
//! `cargo bench -p carapace-gate --bench mcp` prints, per server, mean/p50/p99/p99.9 of
//! A, of B and of the per-pair difference, and p99(B) − p99(A).

use std::sync::Arc;
use std::time::{Duration, Instant};

use carapace_gate::{
    CallRequest, Gate, GateConfig, GateDeps, McpServerInfo, McpSetup, RawArgs, Scrubber,
    SharedScrubber,
};
use carapace_mcp::{Hub, HubEnv, McpTool, ServerConfig, ToolOverride, Transport};
use carapace_policy::Policy;
use carapace_store::{AuditKey, Store};
use carapace_types::{EffectClass, FrontDoor, Principal, Secret, SessionId};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig as RmcpServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

/// Set in the environment of this binary when it is to be the Rust MCP server.
const SERVER_ENV: &str = "CARAPACE_BENCH_MCP_SERVER";
const WARMUP: usize = 500;
const PAIRS: usize = 10_000;

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        serve_echo();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "mcp: Gate::call (B) vs Hub::call (A) of SERVER__echo {{\"text\":\"hi\"}}, \
         {PAIRS} interleaved pairs after {WARMUP} warm-up pairs, 2-worker runtime"
    );
    match python() {
        Ok(python) => {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../carapace-mcp/tests/fixtures/pyserver.py"
            );
            run(&rt, "py", vec![python, script.into()], true);
        }
        Err(why) => println!("mcp/py: skipped: {why}"),
    }
    let me = std::env::current_exe().unwrap().display().to_string();
    run(&rt, "rs", vec![me.clone()], true);
    run(&rt, "rs", vec![me], false);
}

/// The Python interpreter that has the `mcp` SDK, as an absolute path.
fn python() -> Result<String, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, mcp.server.mcpserver; print(sys.executable)",
        ])
        .output()
        .map_err(|e| format!("python3 not found on the PATH: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 cannot import the mcp SDK: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Setup {
    gate: Gate,
    hub: Hub,
    tool: Arc<McpTool>,
    session: SessionId,
    owner: Principal,
    _dir: tempfile::TempDir,
}

/// A Gate with one MCP server (`name`, running `command`) and a session, as the
/// daemon builds them; waits until the server's `echo` is listed.
async fn setup(name: &str, command: Vec<String>, on_disk: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let store = if on_disk {
        Store::open_exclusive(&dir.path().join("carapace.db")).unwrap()
    } else {
        Store::open_in_memory().unwrap()
    };
    let store = Arc::new(store);
    let session = SessionId::new("s_bench");
    store.create_session(&session, "bench", 0).unwrap();
    // The Rust server is this binary, told by the variable; Python ignores it.
    let mut env = vec![(SERVER_ENV.to_string(), "echo".to_string())];
    for key in ["PATH", "HOME", "LANG"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_string(), v));
        }
    }
    let mut config = ServerConfig::new(
        name,
        Transport::Stdio {
            command,
            env,
            sandbox: None,
            egress: None,
        },
    );
    // Unsandboxed, the server counts as networked (every tool at least egress); the
    // owner's override keeps `echo` a read, the path this bench measures.
    config.tools.insert(
        "echo".into(),
        ToolOverride {
            effect: Some(EffectClass::Read),
            result: None,
        },
    );
    let info = McpServerInfo {
        name: name.to_string(),
        host: None,
        max_result_bytes: config.max_result_bytes,
        call_timeout: config.call_timeout,
    };
    let scrubber = SharedScrubber::new(Scrubber::new(&[Secret::new(
        "sk-bench-0123456789abcdef".to_string(),
    )]));
    let shared = scrubber.clone();
    let hub = Hub::start(
        vec![config],
        HubEnv {
            scrub: Arc::new(move |s: &mut String| {
                shared.current().scrub_string(s);
            }),
        },
    );
    let full = format!("{name}__echo");
    let deadline = Instant::now() + Duration::from_secs(30);
    let tool = loop {
        if let Some(t) = hub.snapshot().tools.get(&full) {
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{full} was not listed within 30 s: {:?}",
            hub.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gate = Gate::new(GateDeps {
        store,
        audit_key: Arc::new(AuditKey::generate()),
        workspace_root: root,
        policy: Policy::strict(),
        judge: None,
        scrubber,
        // No rate limit in the way of a benchmark loop.
        config: GateConfig {
            rate_per_minute: u32::MAX,
            ..GateConfig::default()
        },
        exec: None,
        net: None,
        channels: None,
        mcp: Some(McpSetup {
            hub: hub.clone(),
            servers: vec![info],
        }),
    })
    .unwrap();
    Setup {
        gate,
        hub,
        tool,
        session,
        owner: Principal::owner(FrontDoor::Api),
        _dir: dir,
    }
}

/// (A) the hub's call, as the Gate's executor makes it.
async fn direct(s: &Setup, args: &Value) -> Duration {
    let t = Instant::now();
    let result = s.hub.call(&s.tool, args.clone()).await.unwrap();
    let took = t.elapsed();
    assert_ne!(result.is_error, Some(true));
    took
}

/// (B) the same call through every Gate stage.
async fn gated(s: &Setup, args: &Value) -> Duration {
    let t = Instant::now();
    let out = s
        .gate
        .call(CallRequest {
            principal: &s.owner,
            session: &s.session,
            call_id: "call_1",
            tool: &s.tool.name,
            args: RawArgs::Json(args),
        })
        .await
        .expect("the allowed call succeeds");
    let took = t.elapsed();
    // Python's SDK adds the text as structured content too.
    assert!(
        out.content.to_string().contains("\"hi\""),
        "{}",
        out.content
    );
    took
}

fn run(rt: &tokio::runtime::Runtime, name: &str, command: Vec<String>, on_disk: bool) {
    let store = if on_disk {
        "wal-file store"
    } else {
        "in-memory store"
    };
    let args = json!({ "text": "hi" });
    let (a, b) = rt.block_on(async {
        let s = setup(name, command, on_disk).await;
        let mut a = Vec::with_capacity(PAIRS);
        let mut b = Vec::with_capacity(PAIRS);
        for i in 0..WARMUP + PAIRS {
            let (da, db) = if i % 2 == 0 {
                let da = direct(&s, &args).await;
                (da, gated(&s, &args).await)
            } else {
                let db = gated(&s, &args).await;
                (direct(&s, &args).await, db)
            };
            if i >= WARMUP {
                a.push(micros(da));
                b.push(micros(db));
            }
        }
        s.hub.shutdown().await;
        (a, b)
    });
    let mut diff: Vec<f64> = a.iter().zip(&b).map(|(a, b)| b - a).collect();
    let (mut a, mut b) = (a, b);
    println!("mcp/{name} ({store}):");
    let pa = summary("A direct Hub::call", &mut a);
    let pb = summary("B Gate::call     ", &mut b);
    summary("B - A per pair   ", &mut diff);
    println!("  p99(B) - p99(A): {:.1} µs", pb - pa);
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints mean, p50, p99, p99.9 and max of `samples` (sorted in place); returns p99.
fn summary(what: &str, samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let pct = |p: f64| samples[((n as f64 * p) as usize).min(n - 1)];
    let mean = samples.iter().sum::<f64>() / n as f64;
    println!(
        "  {what}: mean {mean:7.1} µs  p50 {:7.1} µs  p99 {:7.1} µs  p99.9 {:7.1} µs  \
         max {:8.1} µs  (n = {n})",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[n - 1],
    );
    pct(0.99)
}

/// The Rust server: one tool, `echo`, answering its `text` at once.
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> RmcpServerConfig {
        RmcpServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let schema = json!({
            "type": "object",
            "properties": { "text": { "type": "string" } },
            "required": ["text"],
        });
        let Value::Object(schema) = schema else {
            unreachable!()
        };
        let tool = Tool::new_with_raw("echo", Some("Return the text unchanged.".into()), schema)
            .with_annotations(ToolAnnotations::new().read_only(true).open_world(false));
        Ok(ListToolsResult::with_all_items(vec![tool]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let text = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

fn serve_echo() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let running = Echo
            .serve(rmcp::transport::io::stdio_pipes())
            .await
            .expect("the client initializes");
        let _ = running.waiting().await;
    });
}
