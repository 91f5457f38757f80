//! `cara mcp serve`: MCP on stdin/stdout, every call through the agent socket's Gate.
//!
//! It runs inside a Carapace sandbox (`cara agent run`), where `CARAPACE_SOCKET` names the
//! agent socket (when the MCP client dropped that variable, the socket is found at its
//! place in the sandbox, `/run/carapace/agent.sock`), and offers an MCP client (Claude
//! Code, Cursor, OpenClaw) the tools of the run's session: `tools/list` is the socket's `tools.list` (the Gate's closed schemas,
//! with hints derived from each tool's effect class), `tools/call` is `tools.call` with
//! the same arguments. So every call is the Gate's: the session's labels, plans, policy,
//! the owner's approvals and the audit log, as principal `agent:RUN@socket`. This file
//! only translates; it never decides, never names a principal, and never retries a call.
//!
//! Refusals follow MCP's split between protocol errors and tool errors. A call the Gate
//! cannot route (`UNKNOWN_TOOL`) or whose arguments break the schema
//! (`VALIDATION_FAILED`) is a JSON-RPC error `-32602` whose `data` is the Gate's error.
//! Every other refusal (`POLICY_DENIED`, `CONFIRMATION_DENIED`, `RATE_LIMITED`,
//! `TOOL_ERROR`, ...) is a tool result with `isError: true`, the text `CODE at STAGE:
//! message` and the Gate's error as `structuredContent`, so the model reads it and can
//! adapt (propose a plan, wait, ask the owner).
//!
//! One socket connection serves the whole process; MCP calls in flight share it and are
//! matched to their answers by id (the daemon runs 16 of a connection at once, the
//! others wait). A call waiting for the owner's approval simply waits. An MCP
//! cancellation (`notifications/cancelled`) stops waiting for the answer at once, but the
//! socket has no per-request cancel, so the daemon finishes the Gate call (a pending
//! approval stays in the owner's queue) and its late answer is dropped. Lines are bounded
//! both ways: requests by the socket's own limit (a longer one would close the
//! connection for every call), answers by the `cara ipc` client's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, MetaObject, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::ipc::{RpcError, SOCKET_ENV};

/// The longest request line the agent socket takes; a longer one closes the connection.
const MAX_REQUEST: usize = carapace_server::agent_socket::MAX_LINE;
/// The longest answer line read from the daemon (as `cara ipc` reads).
const MAX_ANSWER: usize = crate::ipc::MAX_LINE;

/// Arguments of `cara mcp serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs the server until the client closes stdin: exit 0; 2 when the agent socket cannot
/// be reached or refuses this process; 1 when the MCP transport fails.
pub fn run(_args: ServeArgs) -> ExitCode {
    let Some(path) = socket_path() else {
        eprintln!(
            "cara mcp serve: {SOCKET_ENV} is not set; it runs inside a Carapace sandbox, \
             where it reaches the Gate through the agent socket: start it as \
             `cara agent run -- cara mcp serve`, or name `cara mcp serve` in the MCP \
             configuration of an agent that runs under `cara agent run`"
        );
        return ExitCode::from(2);
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cara mcp serve: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let server = match Server::connect(Path::new(&path)).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("cara mcp serve: {e:#}");
                return ExitCode::from(2);
            }
        };
        match serve(server).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cara mcp serve: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The agent socket: `CARAPACE_SOCKET`, else, when this is the sandbox's `cara`, the
/// place the sandbox binds the socket. MCP clients start their servers with a few
/// variables only (the SDKs pass `HOME`, `PATH`, `USER`, ...), so the variable is often
/// lost on the way. (On a host with `cara system install` the daemon's own socket has
/// the same path; that one is not taken, as this `cara` is not the sandbox's.)
fn socket_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let sandboxed =
        std::env::current_exe().is_ok_and(|exe| exe == Path::new(crate::agent_run::CARA_INSIDE));
    let inside = Path::new(crate::agent_run::SOCKET_INSIDE);
    (sandboxed && inside.exists()).then(|| inside.to_path_buf())
}

/// Logs go to stderr (stdout is the protocol), at `CARAPACE_LOG` or `warn`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CARAPACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

async fn serve(server: Server) -> anyhow::Result<()> {
    let running = server
        .serve(rmcp::transport::io::stdio_pipes())
        .await
        .context("the MCP client did not complete the initialization")?;
    running
        .waiting()
        .await
        .context("the MCP service stopped unexpectedly")?;
    Ok(())
}

/// Why a socket call has no result.
#[derive(Debug)]
enum SocketError {
    /// The daemon answered with a JSON-RPC error (a Gate refusal, bad params).
    Rpc(RpcError),
    /// The request was too large for the socket.
    TooLarge(usize),
    /// The connection is gone or spoke something other than the protocol.
    Broken(String),
}

/// Calls waiting for their answers, by request id.
#[derive(Default)]
struct Pending {
    calls: HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>,
    /// Why the connection ended, once it did.
    closed: Option<String>,
}

/// The one connection to the agent socket: a writer task takes whole lines (so a call
/// dropped mid-way never leaves half a line), a reader task routes answers by id.
struct Socket {
    lines: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
}

/// Removes a call from [`Pending`] when its waiter goes away (answered or cancelled).
struct Waiting<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).calls.remove(&self.id);
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

impl Socket {
    async fn connect(path: &Path) -> anyhow::Result<Socket> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("cannot connect to the agent socket {}", path.display()))?;
        let (r, mut w) = stream.into_split();
        let (lines, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let pending = Arc::new(Mutex::new(Pending::default()));
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if w.write_all(&line).await.is_err() {
                    break;
                }
            }
        });
        let routes = pending.clone();
        tokio::spawn(async move {
            let why = route_answers(BufReader::new(r), &routes).await;
            tracing::warn!(reason = %why, "the agent socket connection ended");
            let mut p = lock(&routes);
            p.closed = Some(why);
            // Dropping the senders wakes every waiting call.
            p.calls.clear();
        });
        Ok(Socket {
            lines,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, SocketError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| SocketError::Broken(format!("cannot encode the request: {e}")))?;
        if line.len() > MAX_REQUEST {
            return Err(SocketError::TooLarge(line.len()));
        }
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if let Some(why) = &p.closed {
                return Err(SocketError::Broken(why.clone()));
            }
            p.calls.insert(id, tx);
        }
        let _waiting = Waiting {
            pending: &self.pending,
            id,
        };
        if self.lines.send(line).await.is_err() {
            return Err(SocketError::Broken("the agent socket is closed".into()));
        }
        match rx.await {
            Ok(outcome) => outcome.map_err(SocketError::Rpc),
            Err(_) => {
                let why = lock(&self.pending).closed.clone();
                Err(SocketError::Broken(
                    why.unwrap_or_else(|| "the agent socket is closed".into()),
                ))
            }
        }
    }
}

/// Reads the daemon's lines until the connection ends, handing each answer to its call;
/// returns why it ended.
async fn route_answers<R: AsyncBufRead + Unpin>(mut r: R, pending: &Mutex<Pending>) -> String {
    let mut buf = Vec::new();
    loop {
        match read_line(&mut r, &mut buf, MAX_ANSWER).await {
            Ok(true) => {}
            Ok(false) => return "the daemon closed the agent socket".into(),
            Err(e) => return format!("agent socket: {e}"),
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(Value::Object(mut msg)) = serde_json::from_slice::<Value>(&buf) else {
            return "the daemon sent a line that is not a JSON object".into();
        };
        let Some(id) = msg.remove("id") else {
            // A notification: nothing this server asked for uses them.
            continue;
        };
        let outcome = match (msg.remove("result"), msg.get("error")) {
            (Some(result), _) => Ok(result),
            (None, Some(error)) => match rpc_error(error) {
                Some(e) => Err(e),
                None => return "the daemon sent an error without a code and message".into(),
            },
            (None, None) => return "the daemon sent a response without result or error".into(),
        };
        if id.is_null() {
            // The daemon refuses a caller once, with id null, and closes.
            return match outcome {
                Err(e) => format!("the agent socket refused this process: {e}"),
                Ok(_) => "the daemon answered a request it was not sent".into(),
            };
        }
        let waiter = id.as_u64().and_then(|id| lock(pending).calls.remove(&id));
        if let Some(waiter) = waiter {
            // The call may have been cancelled meanwhile; its answer is dropped.
            let _ = waiter.send(outcome);
        }
    }
}

fn rpc_error(error: &Value) -> Option<RpcError> {
    Some(RpcError {
        code: error.get("code")?.as_i64()?,
        message: error.get("message")?.as_str()?.to_string(),
        data: error.get("data").cloned().unwrap_or(Value::Null),
    })
}

/// Reads one `\n`-terminated line into `buf` without the newline; `false` at a clean
/// end. A line longer than `max` is an error, found before it is all in memory.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(std::io::Error::other(
                "the connection closed in the middle of a line",
            ));
        }
        let newline = available.iter().position(|b| *b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if buf.len() + chunk.len() > max {
            return Err(std::io::Error::other(format!(
                "the daemon sent a line longer than {max} bytes"
            )));
        }
        buf.extend_from_slice(chunk);
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            return Ok(true);
        }
    }
}

/// The MCP server: the socket, and what `session.info` said at the start.
#[derive(Clone)]
struct Server {
    socket: Arc<Socket>,
    instructions: String,
}

impl Server {
    /// Connects and asks `session.info`, so a refused caller fails at once and not at
    /// the client's first call.
    async fn connect(path: &Path) -> anyhow::Result<Server> {
        let socket = Socket::connect(path).await?;
        let info = socket
            .call("session.info", json!({}))
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        let session = info["session"].as_str().unwrap_or("?");
        let agent = info["agent"].as_str().unwrap_or("?");
        let instructions = format!(
            "These are the tools of Carapace session {session} (run {agent}). Every call \
             passes Carapace's Gate: schema, policy, the owner's approval and the audit log. \
             A refusal comes back as a tool error naming its code and the rule; a call that \
             waits for the owner's approval may take minutes. Before reading untrusted \
             content, propose_plan lets the owner approve the calls you will make."
        );
        Ok(Server {
            socket: Arc::new(socket),
            instructions,
        })
    }
}

fn describe(e: &SocketError) -> String {
    match e {
        SocketError::Rpc(e) => format!("the agent socket refused: {e}"),
        SocketError::TooLarge(n) => {
            format!("the request is {n} bytes; the agent socket takes at most {MAX_REQUEST} bytes")
        }
        SocketError::Broken(why) => why.clone(),
    }
}

/// A socket failure that is not a Gate refusal, as a protocol error.
fn socket_failure(e: SocketError) -> McpError {
    match e {
        SocketError::Rpc(e) if e.code == -32602 => McpError::invalid_params(e.message, None),
        SocketError::TooLarge(_) => McpError::invalid_params(describe(&e), None),
        SocketError::Rpc(ref rpc) => {
            let data = (!rpc.data.is_null()).then(|| rpc.data.clone());
            McpError::internal_error(describe(&e), data)
        }
        SocketError::Broken(_) => McpError::internal_error(describe(&e), None),
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let mut capabilities = ServerCapabilities::builder().enable_tools().build();
        if let Some(tools) = capabilities.tools.as_mut() {
            tools.list_changed = Some(false);
        }
        ServerConfig::new(capabilities)
            .with_server_info(
                Implementation::new("carapace", env!("CARGO_PKG_VERSION")).with_title("Carapace"),
            )
            .with_instructions(self.instructions.clone())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let answer = tokio::select! {
            answer = self.socket.call("tools.list", json!({})) => answer,
            () = context.ct.cancelled() => return Err(cancelled()),
        };
        let answer = answer.map_err(socket_failure)?;
        Ok(ListToolsResult::with_all_items(tools_from_gate(&answer)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let params = json!({"name": request.name, "arguments": arguments});
        let answer = tokio::select! {
            answer = self.socket.call("tools.call", params) => answer,
            () = context.ct.cancelled() => return Err(cancelled()),
        };
        call_result(answer).map(CallToolResponse::from)
    }
}

/// The answer to a request the client cancelled (the client ignores it).
fn cancelled() -> McpError {
    McpError::internal_error("the request was cancelled", None)
}

/// The Gate's tools as MCP tools; an entry without a name or an object schema (never
/// sent by the daemon) is left out.
fn tools_from_gate(answer: &Value) -> Vec<Tool> {
    let Some(tools) = answer["tools"].as_array() else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|t| {
            let name = t["name"].as_str()?.to_string();
            let schema: Map<String, Value> = t["input_schema"].as_object()?.clone();
            let description = t["description"].as_str().map(|d| d.to_string().into());
            let effect = t["effect"].as_str().unwrap_or("");
            let mut meta = Map::new();
            meta.insert("carapace/effect".into(), json!(effect));
            Some(
                Tool::new_with_raw(name, description, schema)
                    .with_annotations(annotations(effect))
                    .with_meta(MetaObject(meta)),
            )
        })
        .collect()
}

/// MCP's behaviour hints from the Gate's effect class. Only what the class says is
/// claimed: an unknown class (or `secret`, `self_modify`) leaves MCP's cautious defaults.
fn annotations(effect: &str) -> ToolAnnotations {
    let hints = ToolAnnotations::new();
    match effect {
        "read" => hints.read_only(true).open_world(false),
        "write" | "exec" => hints.read_only(false).destructive(true),
        "egress" => hints.read_only(false).open_world(true),
        "self_modify" => hints.read_only(false),
        _ => hints,
    }
}

/// The MCP answer to a `tools.call`: the Gate's result, a tool error the model sees, or
/// a protocol error.
fn call_result(answer: Result<Value, SocketError>) -> Result<CallToolResult, McpError> {
    match answer {
        Ok(out) => Ok(success(out)),
        Err(SocketError::Rpc(e)) => gate_refusal(e),
        Err(e) => Err(socket_failure(e)),
    }
}

fn success(out: Value) -> CallToolResult {
    let content = out.get("content").cloned().unwrap_or(Value::Null);
    let text = match &content {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    if content.is_object() {
        result.structured_content = Some(content);
    }
    let mut meta = Map::new();
    for key in ["label", "source"] {
        if let Some(v) = out.get(key).filter(|v| !v.is_null()) {
            meta.insert(format!("carapace/{key}"), v.clone());
        }
    }
    if !meta.is_empty() {
        result.meta = Some(MetaObject(meta));
    }
    result
}

/// A Gate refusal: unroutable calls and bad arguments are protocol errors (`-32602`),
/// every other refusal is a tool error the model reads.
fn gate_refusal(e: RpcError) -> Result<CallToolResult, McpError> {
    let data = (!e.data.is_null()).then(|| e.data.clone());
    match e.code {
        // UNKNOWN_TOOL, VALIDATION_FAILED, and the socket's own invalid params.
        -32001 | -32002 | -32602 => Err(McpError::invalid_params(e.message, data)),
        // UNAUTHORIZED .. INTERNAL: the Gate's typed errors.
        -32010..=-32003 => {
            let code = e.name();
            let stage = e.data["stage"].as_str().unwrap_or("gate");
            let text = format!("{code} at {stage}: {}", e.message);
            let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
            result.structured_content = Some(data.unwrap_or_else(|| json!({"code": code})));
            Ok(result)
        }
        _ => Err(socket_failure(SocketError::Rpc(e))),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    /// The MCP answer to a socket answer, as the JSON the client receives.
    fn check(answer: Value, expected: Expect) {
        let answer = match answer.get("error") {
            Some(error) => Err(SocketError::Rpc(rpc_error(error).unwrap())),
            None => Ok(answer["result"].clone()),
        };
        let got = match call_result(answer) {
            Ok(result) => json!({"result": result}),
            Err(error) => json!({"error": error}),
        };
        expected.assert_eq(&serde_json::to_string_pretty(&got).unwrap());
    }

    #[test]
    fn a_result_is_text_and_an_object_also_structured_content() {
        check(
            json!({"result": {"content": "hello\n", "label": {"integrity": "trusted"},
                   "source": "file:notes.txt"}}),
            expect![[r#"
                {
                  "result": {
                    "_meta": {
                      "carapace/label": {
                        "integrity": "trusted"
                      },
                      "carapace/source": "file:notes.txt"
                    },
                    "content": [
                      {
                        "text": "hello\n",
                        "type": "text"
                      }
                    ],
                    "isError": false,
                    "resultType": "complete"
                  }
                }"#]],
        );
        check(
            json!({"result": {"content": {"entries": ["a.txt"]}}}),
            expect![[r#"
                {
                  "result": {
                    "content": [
                      {
                        "text": "{\"entries\":[\"a.txt\"]}",
                        "type": "text"
                      }
                    ],
                    "isError": false,
                    "resultType": "complete",
                    "structuredContent": {
                      "entries": [
                        "a.txt"
                      ]
                    }
                  }
                }"#]],
        );
    }

    #[test]
    fn a_policy_refusal_is_a_tool_error_the_model_reads() {
        check(
            json!({"error": {"code": -32005, "message": "secret.txt is off limits",
                   "data": {"code": "POLICY_DENIED", "stage": "policy", "retriable": false,
                            "rule": "rules.no-secrets"}}}),
            expect![[r#"
                {
                  "result": {
                    "content": [
                      {
                        "text": "POLICY_DENIED at policy: secret.txt is off limits",
                        "type": "text"
                      }
                    ],
                    "isError": true,
                    "resultType": "complete",
                    "structuredContent": {
                      "code": "POLICY_DENIED",
                      "retriable": false,
                      "rule": "rules.no-secrets",
                      "stage": "policy"
                    }
                  }
                }"#]],
        );
        check(
            json!({"error": {"code": -32004, "message": "too many calls",
                   "data": {"code": "RATE_LIMITED", "stage": "rate_limit", "retriable": true,
                            "retry_after_ms": 1500}}}),
            expect![[r#"
                {
                  "result": {
                    "content": [
                      {
                        "text": "RATE_LIMITED at rate_limit: too many calls",
                        "type": "text"
                      }
                    ],
                    "isError": true,
                    "resultType": "complete",
                    "structuredContent": {
                      "code": "RATE_LIMITED",
                      "retriable": true,
                      "retry_after_ms": 1500,
                      "stage": "rate_limit"
                    }
                  }
                }"#]],
        );
    }

    #[test]
    fn unknown_tools_and_bad_arguments_are_invalid_params() {
        check(
            json!({"error": {"code": -32001, "message": "no tool named nope",
                   "data": {"code": "UNKNOWN_TOOL", "stage": "resolve", "retriable": false}}}),
            expect![[r#"
                {
                  "error": {
                    "code": -32602,
                    "data": {
                      "code": "UNKNOWN_TOOL",
                      "retriable": false,
                      "stage": "resolve"
                    },
                    "message": "no tool named nope"
                  }
                }"#]],
        );
        check(
            json!({"error": {"code": -32002, "message": "path must be a string",
                   "data": {"code": "VALIDATION_FAILED", "stage": "validate",
                            "retriable": false, "field": "path"}}}),
            expect![[r#"
                {
                  "error": {
                    "code": -32602,
                    "data": {
                      "code": "VALIDATION_FAILED",
                      "field": "path",
                      "retriable": false,
                      "stage": "validate"
                    },
                    "message": "path must be a string"
                  }
                }"#]],
        );
    }

    #[test]
    fn a_refused_caller_and_a_broken_socket_are_internal_errors() {
        check(
            json!({"error": {"code": -32020, "message": "caller unknown"}}),
            expect![[r#"
                {
                  "error": {
                    "code": -32603,
                    "message": "the agent socket refused: CALLER_UNKNOWN: caller unknown"
                  }
                }"#]],
        );
        let got = call_result(Err(SocketError::Broken(
            "the daemon closed the agent socket".into(),
        )))
        .unwrap_err();
        assert_eq!(got.message, "the daemon closed the agent socket");
        let got = call_result(Err(SocketError::TooLarge(9 << 20))).unwrap_err();
        assert_eq!(got.code.0, -32602);
    }

    #[test]
    fn tools_carry_the_closed_schema_and_hints_from_their_effect_class() {
        let answer = json!({"tools": [
            {"name": "read_file", "description": "Read a file", "effect": "read",
             "input_schema": {"type": "object", "additionalProperties": false,
                              "properties": {"path": {"type": "string"}}, "required": ["path"]}},
            {"name": "exec", "description": "Run", "effect": "exec",
             "input_schema": {"type": "object", "additionalProperties": false}},
            {"name": "web_fetch", "description": "Fetch", "effect": "egress",
             "input_schema": {"type": "object", "additionalProperties": false}},
            {"name": "broken", "effect": "read", "input_schema": "not a schema"},
        ]});
        let tools = tools_from_gate(&answer);
        expect![[r#"
            [
              {
                "_meta": {
                  "carapace/effect": "read"
                },
                "annotations": {
                  "openWorldHint": false,
                  "readOnlyHint": true
                },
                "description": "Read a file",
                "inputSchema": {
                  "additionalProperties": false,
                  "properties": {
                    "path": {
                      "type": "string"
                    }
                  },
                  "required": [
                    "path"
                  ],
                  "type": "object"
                },
                "name": "read_file"
              },
              {
                "_meta": {
                  "carapace/effect": "exec"
                },
                "annotations": {
                  "destructiveHint": true,
                  "readOnlyHint": false
                },
                "description": "Run",
                "inputSchema": {
                  "additionalProperties": false,
                  "type": "object"
                },
                "name": "exec"
              },
              {
                "_meta": {
                  "carapace/effect": "egress"
                },
                "annotations": {
                  "openWorldHint": true,
                  "readOnlyHint": false
                },
                "description": "Fetch",
                "inputSchema": {
                  "additionalProperties": false,
                  "type": "object"
                },
                "name": "web_fetch"
              }
            ]"#]]
        .assert_eq(&serde_json::to_string_pretty(&serde_json::to_value(&tools).unwrap()).unwrap());
    }

    #[tokio::test]
    async fn answers_reach_their_calls_out_of_order_and_a_closed_socket_fails_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let daemon = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut ids = Vec::new();
            for _ in 0..2 {
                let line = lines.next_line().await.unwrap().unwrap();
                let req: Value = serde_json::from_str(&line).unwrap();
                ids.push(req["id"].clone());
            }
            // Answer the second first, then close without answering a third.
            for id in ids.iter().rev() {
                let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"id": id}});
                w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
            let _ = lines.next_line().await;
        });
        let socket = Socket::connect(&path).await.unwrap();
        let (a, b) = tokio::join!(
            socket.call("tools.list", json!({})),
            socket.call("tools.list", json!({}))
        );
        assert_eq!(a.unwrap()["id"], 1);
        assert_eq!(b.unwrap()["id"], 2);
        let c = socket.call("tools.list", json!({}));
        let (c, _) = tokio::join!(c, daemon);
        assert!(
            matches!(&c, Err(SocketError::Broken(why)) if why.contains("closed")),
            "{c:?}"
        );
        assert!(lock(&socket.pending).calls.is_empty());
    }
}
