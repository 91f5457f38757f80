//! The agent socket: JSON-RPC 2.0 over a Unix socket, one object per line, for agents
//! Carapace did not write, running in a sandbox the daemon started (`cara agent run`).
//! The wire format is `docs/agent-socket.md`.
//!
//! Who is calling is decided once per connection by [`Identify`] (the wiring reads the
//! kernel's peer credentials and the caller's pid namespace); nothing in a message can
//! name or change the caller. Every method that does something is a Gate call, so the
//! same tools, policy, approvals and audit apply as to the built-in agent. There is no
//! method that runs an arbitrary command as the daemon's user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use carapace_gate::Gate;

use crate::passthrough::{PassError, PassEvent, PassRequest, Passthrough};
use carapace_types::{ErrorCode, GateError, Principal, SessionId};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Largest request line accepted, in bytes (without the newline): room for a model
/// request of about 6 MiB through the provider pass-through, base64-encoded.
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// Requests of one connection that may run at once; more wait.
const IN_FLIGHT: usize = 16;

/// Requests of one connection that may wait to run. While this many wait, the reader
/// holds the next request and reads no more lines (cancels neither) until one ends.
const WAITING: usize = 16;

/// Connections one run may hold open at once.
pub const MAX_CONNECTIONS_PER_RUN: usize = 32;

/// Channel watches one run may hold open at once (each runs the channel's CLI).
pub const MAX_WATCHES_PER_RUN: usize = 4;

/// Bytes of request lines all connections together may hold in flight, in KiB; a
/// connection whose request does not fit waits until others finish.
const BUDGET_KIB: usize = 512 * 1024;

/// JSON-RPC error codes of the transport.
pub mod codes {
    /// A line is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC 2.0 request object, or the line is too long.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Params missing or of the wrong shape.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The connection is not from a sandbox this daemon started.
    pub const CALLER_UNKNOWN: i64 = -32020;
    /// The caller cancelled the request (`$/cancelRequest`), as in LSP.
    pub const REQUEST_CANCELLED: i64 = -32800;
}

/// The notification that cancels a request in flight: `{"method": "$/cancelRequest",
/// "params": {"id": ID}}` (LSP's name). A request still waiting to run never runs; a Gate
/// call cancelled so is recorded as cancelled and its pending approval withdrawn; either
/// is answered with [`codes::REQUEST_CANCELLED`].
pub const CANCEL_METHOD: &str = "$/cancelRequest";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stable JSON-RPC code of a Gate error code.
pub fn gate_code(code: ErrorCode) -> i64 {
    match code {
        ErrorCode::UnknownTool => -32001,
        ErrorCode::ValidationFailed => -32002,
        ErrorCode::Unauthorized => -32003,
        ErrorCode::RateLimited => -32004,
        ErrorCode::PolicyDenied => -32005,
        ErrorCode::ConfirmationDenied => -32006,
        ErrorCode::ConfirmationTimeout => -32007,
        ErrorCode::ToolTimeout => -32008,
        ErrorCode::ToolError => -32009,
        ErrorCode::Internal => -32010,
    }
}

/// Who a connection is: an agent run and the session its calls belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The run's id, chosen by the daemon.
    pub run: String,
    /// The run's session.
    pub session: SessionId,
}

/// Why a connection was refused, for the daemon's log and the audit record (never sent
/// to the caller, who learns only that it is unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The peer's uid, when the kernel told it.
    pub uid: Option<u32>,
    /// The peer's pid, when the kernel told it.
    pub pid: Option<i32>,
    /// Why.
    pub reason: String,
}

/// Decides who an accepted connection is, from the connection alone.
pub trait Identify: Send + Sync {
    /// The agent run at the other end, or why the connection is refused.
    fn identify(&self, stream: &UnixStream) -> Result<AgentIdentity, Refusal>;
    /// The channels the agent may name (for `session.info`).
    fn channels(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What the agent socket is built from.
pub struct AgentSocket {
    gate: Gate,
    identify: Arc<dyn Identify>,
    passthrough: Option<Arc<Passthrough>>,
    refusals: Mutex<RefusalLog>,
    calls: AtomicU64,
    budget: Arc<Semaphore>,
    connections: Arc<Mutex<HashMap<String, usize>>>,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

/// One slot of a per-run count, given back when dropped.
struct Slot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    run: String,
}

impl Slot {
    /// Takes a slot for `run` unless it holds `max` already.
    fn take(counts: &Arc<Mutex<HashMap<String, usize>>>, run: &str, max: usize) -> Option<Slot> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(run.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: counts.clone(),
            run: run.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.run) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.run);
            }
        }
    }
}

/// Refused connections are audited at most once per [`RefusalLog::EVERY`], each record
/// counting the refusals it stands for, so a local process cannot grow the audit log
/// at the speed it can connect.
struct RefusalLog {
    last: Option<Instant>,
    unrecorded: u64,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(1);
}

impl AgentSocket {
    /// The socket's handler over `gate`, identifying callers with `identify`.
    pub fn new(
        gate: Gate,
        identify: Arc<dyn Identify>,
        passthrough: Option<Arc<Passthrough>>,
    ) -> Arc<AgentSocket> {
        Arc::new(AgentSocket {
            gate,
            identify,
            passthrough,
            refusals: Mutex::new(RefusalLog {
                last: None,
                unrecorded: 0,
            }),
            calls: AtomicU64::new(0),
            budget: Arc::new(Semaphore::new(BUDGET_KIB)),
            connections: Arc::default(),
            watches: Arc::default(),
        })
    }

    /// Accepts connections until the listener fails; each connection is served on a
    /// task of its own.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let this = self.clone();
                    tokio::spawn(async move { this.connection(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "agent socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let identity = match self.identify.identify(&stream) {
            Ok(id) => id,
            Err(refusal) => {
                self.refused(&refusal);
                let (_, mut w) = stream.into_split();
                let line = error_line(
                    &Value::Null,
                    codes::CALLER_UNKNOWN,
                    "this connection does not come from a sandbox Carapace started",
                    None,
                );
                let _ = w.write_all(line.as_bytes()).await;
                let _ = w.shutdown().await;
                return;
            }
        };
        let Some(_slot) = Slot::take(&self.connections, &identity.run, MAX_CONNECTIONS_PER_RUN)
        else {
            let (_, mut w) = stream.into_split();
            let msg = format!("a run may hold at most {MAX_CONNECTIONS_PER_RUN} connections");
            let line = error_line(&Value::Null, codes::INVALID_REQUEST, &msg, None);
            let _ = w.write_all(line.as_bytes()).await;
            let _ = w.shutdown().await;
            return;
        };
        tracing::debug!(run = %identity.run, "agent connected");
        let principal = Principal::agent(&identity.run);
        let (r, mut w) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if w.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        // Requests admitted, running or waiting to: when this many are in, the reader
        // stops, so a connection holds a bounded number of them.
        let admitted = Arc::new(Semaphore::new(IN_FLIGHT + WAITING));
        let running = Arc::new(Semaphore::new(IN_FLIGHT));
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        // Requests admitted that have an id, by their id's JSON text, each with its
        // cancel until it is cancelled. A request removes its own entry before it is
        // answered, and no two share an id (a reused one is refused), so an entry is
        // never another request's.
        let cancels: Arc<Mutex<HashMap<String, Option<oneshot::Sender<()>>>>> = Arc::default();
        let ctx = Arc::new(Conn {
            principal,
            identity,
        });
        loop {
            match read_line(&mut reader, &mut buf, MAX_LINE).await {
                Ok(Line::Eof) | Err(_) => break,
                Ok(Line::TooLong) => {
                    let msg = format!("a request line is longer than {MAX_LINE} bytes");
                    let _ = tx
                        .send(error_line(&Value::Null, codes::INVALID_REQUEST, &msg, None))
                        .await;
                    break;
                }
                Ok(Line::Full) => {}
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request = match parse_request(&buf) {
                Ok(r) => r,
                Err((id, code, msg)) => {
                    if tx.send(error_line(&id, code, &msg, None)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if request.method == CANCEL_METHOD {
                match &request.id {
                    None => {
                        // Taken, not removed: the entry stays until the request ends.
                        let target = request.params.get("id").map(Value::to_string);
                        let cancel =
                            target.and_then(|t| lock(&cancels).get_mut(&t).and_then(Option::take));
                        if let Some(cancel) = cancel {
                            let _ = cancel.send(());
                        }
                    }
                    Some(id) => {
                        let msg = format!("{CANCEL_METHOD} is a notification (no id)");
                        if tx
                            .send(error_line(id, codes::INVALID_REQUEST, &msg, None))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                continue;
            }
            let key = request.id.as_ref().map(Value::to_string);
            // Only this loop adds entries, so an id free now is still free below.
            if let (Some(id), Some(k)) = (&request.id, &key)
                && lock(&cancels).contains_key(k)
            {
                let line = error_line(id, codes::INVALID_REQUEST, "id already in flight", None);
                if tx.send(line).await.is_err() {
                    break;
                }
                continue;
            }
            let Ok(admission) = admitted.clone().acquire_owned().await else {
                break;
            };
            // The parsed request is held until it is answered: it counts against the
            // budget of all connections, also while it waits to run.
            let kib = u32::try_from(buf.len() / 1024 + 1).unwrap_or(u32::MAX);
            let Ok(bytes) = self.budget.clone().acquire_many_owned(kib).await else {
                break;
            };
            let cancelled = key.as_ref().map(|k| {
                let (cancel, cancelled) = oneshot::channel();
                lock(&cancels).insert(k.clone(), Some(cancel));
                cancelled
            });
            let (this, ctx, tx) = (self.clone(), ctx.clone(), tx.clone());
            let (running, cancels) = (running.clone(), cancels.clone());
            let mut closed = closed_rx.clone();
            tokio::spawn(async move {
                let run = async {
                    // The semaphore is never closed.
                    let _slot = running.acquire().await.ok()?;
                    this.dispatch(&ctx, &request, &tx).await
                };
                // A request ends with its connection, or when the caller cancels it:
                // one still waiting never runs; a watch stops, a model call is
                // dropped, a Gate call records its cancellation.
                let line = tokio::select! {
                    line = run => line,
                    _ = async { closed.wait_for(|c| *c).await.map(drop) } => None,
                    Ok(()) = async {
                        match cancelled {
                            Some(c) => c.await,
                            None => std::future::pending().await,
                        }
                    } => request.id.as_ref().map(|id| {
                        error_line(id, codes::REQUEST_CANCELLED, "the request was cancelled", None)
                    }),
                };
                // Before the answer, so the caller may reuse the id once it has it.
                if let Some(k) = key {
                    lock(&cancels).remove(&k);
                }
                if let Some(line) = line {
                    let _ = tx.send(line).await;
                }
                drop((admission, bytes));
            });
        }
        let _ = closed_tx.send(true);
        drop(tx);
        let _ = writer.await;
    }

    fn refused(&self, refusal: &Refusal) {
        tracing::warn!(uid = ?refusal.uid, pid = ?refusal.pid, reason = %refusal.reason,
            "agent socket refused a connection");
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        log.unrecorded += 1;
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < RefusalLog::EVERY)
        {
            return;
        }
        let count = std::mem::take(&mut log.unrecorded);
        log.last = Some(now);
        drop(log);
        let fields = json!({
            "door": "socket",
            "uid": refusal.uid,
            "pid": refusal.pid,
            "reason": refusal.reason,
            "count": count,
        });
        if let Err(e) = self.gate.record("agent_socket_refused", fields) {
            tracing::error!(error = %e, "could not record a refused agent connection");
        }
    }

    /// Answers one request; `None` for a notification (no id), which gets no answer.
    async fn dispatch(
        &self,
        conn: &Conn,
        req: &Request,
        out: &mpsc::Sender<String>,
    ) -> Option<String> {
        let result = match req.method.as_str() {
            "provider.request" => self.provider_request(conn, req, out).await,
            "channel.watch" => return self.watch(conn, req, out).await,
            _ => self.method(conn, req).await,
        };
        let id = req.id.as_ref()?;
        Some(match result {
            Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}).to_string() + "\n",
            Err(MethodError::Rpc(code, msg)) => error_line(id, code, &msg, None),
            Err(MethodError::Gate(e)) => {
                error_line(id, gate_code(e.code), &e.message, Some(e.to_json()))
            }
        })
    }

    async fn method(&self, conn: &Conn, req: &Request) -> Result<Value, MethodError> {
        let p = &req.params;
        match req.method.as_str() {
            "session.info" => {
                let session = &conn.identity.session;
                let status = self
                    .gate
                    .policy_status(session)
                    .map_err(MethodError::Gate)?;
                let tools: Vec<String> =
                    self.gate.tool_specs().into_iter().map(|t| t.name).collect();
                Ok(json!({
                    "agent": conn.identity.run,
                    "session": session.as_str(),
                    "label": self.gate.session_label(session).map_err(MethodError::Gate)?,
                    "friction": status.level.as_str(),
                    "tools": tools,
                    "channels": self.identify.channels(),
                }))
            }
            "tools.list" => Ok(crate::tools::list(&self.gate)),
            "tools.call" => {
                let name = str_param(p, "name")?;
                let args = match p.get("arguments") {
                    None | Some(Value::Null) => json!({}),
                    Some(v) => v.clone(),
                };
                self.call(conn, name, &args).await
            }
            "channel.send" => {
                let args = pick(p, &["channel", "to", "text"], &[])?;
                self.call(conn, "channel_send", &args).await?;
                Ok(json!({"sent": true, "channel": p["channel"], "to": p["to"]}))
            }
            "channel.list_chats" => {
                let args = pick(p, &["channel"], &["limit"])?;
                let out = self.call(conn, "channel_list_chats", &args).await?;
                Ok(out["content"].clone())
            }
            "channel.history" => {
                let args = pick(p, &["channel", "chat"], &["limit"])?;
                let out = self.call(conn, "channel_history", &args).await?;
                Ok(out["content"].clone())
            }
            other => Err(MethodError::Rpc(
                codes::METHOD_NOT_FOUND,
                format!("no method named `{}`", short(other)),
            )),
        }
    }

    /// `channel.watch`: answers `{"watching": true}`, then sends each new message as a
    /// `channel.message` notification until the channel's watch ends or the connection
    /// closes. Returns the answer when the watch could not start.
    async fn watch(
        &self,
        conn: &Conn,
        req: &Request,
        out: &mpsc::Sender<String>,
    ) -> Option<String> {
        use futures_util::StreamExt as _;
        let id = req.id.clone().unwrap_or(Value::Null);
        let Some(_slot) = Slot::take(&self.watches, &conn.identity.run, MAX_WATCHES_PER_RUN) else {
            let msg = format!("a run may hold at most {MAX_WATCHES_PER_RUN} watches");
            return req
                .id
                .as_ref()
                .map(|_| error_line(&id, codes::INVALID_REQUEST, &msg, None));
        };
        let started = match pick(&req.params, &["channel"], &[]) {
            Err(MethodError::Rpc(code, msg)) => Err(error_line(&id, code, &msg, None)),
            Err(MethodError::Gate(e)) => Err(error_line(
                &id,
                gate_code(e.code),
                &e.message,
                Some(e.to_json()),
            )),
            Ok(p) => {
                let channel = p["channel"].as_str().unwrap_or_default().to_string();
                self.gate
                    .watch_channel(&conn.principal, &conn.identity.session, &channel)
                    .await
                    .map(|s| (channel, s))
                    .map_err(|e| error_line(&id, gate_code(e.code), &e.message, Some(e.to_json())))
            }
        };
        let (channel, mut messages) = match started {
            Ok(s) => s,
            Err(line) => return req.id.as_ref().map(|_| line),
        };
        let ok = json!({"jsonrpc": "2.0", "id": id, "result": {"watching": true}});
        if out.send(ok.to_string() + "\n").await.is_err() {
            return None;
        }
        while let Some(message) = messages.next().await {
            let note = json!({"jsonrpc": "2.0", "method": "channel.message",
                              "params": {"channel": channel, "message": message}});
            if out.send(note.to_string() + "\n").await.is_err() {
                return None;
            }
        }
        // The channel's watcher stopped: the client should not wait for more.
        let end = json!({"jsonrpc": "2.0", "method": "channel.watch_ended",
                         "params": {"id": id, "channel": channel}});
        let _ = out.send(end.to_string() + "\n").await;
        None
    }

    /// Forwards one HTTP request of the agent's own model client, streaming the answer
    /// back as `provider.head` and `provider.chunk` notifications, and records it.
    async fn provider_request(
        &self,
        conn: &Conn,
        req: &Request,
        out: &mpsc::Sender<String>,
    ) -> Result<Value, MethodError> {
        let Some(pass) = &self.passthrough else {
            return Err(MethodError::Rpc(
                codes::METHOD_NOT_FOUND,
                "no provider pass-through is configured".into(),
            ));
        };
        let p = &req.params;
        let headers = match p.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|h| match h.as_array().map(Vec::as_slice) {
                    Some([Value::String(n), Value::String(v)]) => Ok((n.clone(), v.clone())),
                    _ => Err(MethodError::Rpc(
                        codes::INVALID_PARAMS,
                        "params.headers is a list of [name, value] pairs".into(),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(MethodError::Rpc(
                    codes::INVALID_PARAMS,
                    "params.headers is a list of [name, value] pairs".into(),
                ));
            }
        };
        let body = match p.get("body_b64").and_then(Value::as_str) {
            None => Vec::new(),
            Some(b) => B64.decode(b).map_err(|_| {
                MethodError::Rpc(
                    codes::INVALID_PARAMS,
                    "params.body_b64 is not base64".into(),
                )
            })?,
        };
        let request = PassRequest {
            provider: str_param(p, "provider")?.to_string(),
            method: str_param(p, "method")?.to_string(),
            path: str_param(p, "path")?.to_string(),
            headers,
            body,
        };
        let id = req.id.clone().unwrap_or(Value::Null);
        let (tx, mut rx) = mpsc::channel::<PassEvent>(16);
        let relay = async {
            while let Some(event) = rx.recv().await {
                let note = match event {
                    PassEvent::Head { status, headers } => json!({
                        "jsonrpc": "2.0", "method": "provider.head",
                        "params": {"id": id, "status": status, "headers": headers},
                    }),
                    PassEvent::Chunk(data) => json!({
                        "jsonrpc": "2.0", "method": "provider.chunk",
                        "params": {"id": id, "data_b64": B64.encode(&data)},
                    }),
                };
                if out.send(note.to_string() + "\n").await.is_err() {
                    return;
                }
            }
        };
        let (result, ()) = tokio::join!(pass.forward(request, tx), relay);
        let run = &conn.identity.run;
        match result {
            Ok(s) => {
                let fields = json!({
                    "principal": conn.principal.audit_name(), "run": run,
                    "session": conn.identity.session.as_str(), "provider": s.provider,
                    "method": s.method, "path": s.path, "status": s.status,
                    "bytes_out": s.bytes_out, "bytes_in": s.bytes_in,
                    "duration_ms": s.duration.as_millis() as u64,
                });
                self.gate
                    .record("provider_passthrough", fields)
                    .map_err(MethodError::Gate)?;
                Ok(json!({"done": true}))
            }
            Err(PassError::Cancelled) => Err(MethodError::Rpc(
                codes::INVALID_REQUEST,
                "the request was cancelled".into(),
            )),
            Err(e) => {
                let fields = json!({
                    "principal": conn.principal.audit_name(), "run": run,
                    "session": conn.identity.session.as_str(), "error": e.to_string(),
                });
                let _ = self.gate.record("provider_passthrough_failed", fields);
                let stage = carapace_types::Stage::Execute;
                Err(MethodError::Gate(GateError::new(
                    e.code(),
                    stage,
                    e.to_string(),
                )))
            }
        }
    }

    async fn call(&self, conn: &Conn, tool: &str, args: &Value) -> Result<Value, MethodError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let call_id = format!("rpc_{n}");
        let session = &conn.identity.session;
        crate::tools::call(&self.gate, &conn.principal, session, &call_id, tool, args)
            .await
            .map_err(MethodError::Gate)
    }
}

struct Conn {
    principal: Principal,
    identity: AgentIdentity,
}

enum MethodError {
    Rpc(i64, String),
    Gate(GateError),
}

/// A parsed request.
struct Request {
    id: Option<Value>,
    method: String,
    params: Value,
}

fn parse_request(line: &[u8]) -> Result<Request, (Value, i64, String)> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| (Value::Null, codes::PARSE_ERROR, format!("not JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err((
            Value::Null,
            codes::INVALID_REQUEST,
            "a request is one JSON object (batches are not supported)".into(),
        ));
    };
    let id = m.remove("id");
    let id_for_error = id.clone().unwrap_or(Value::Null);
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64() || id.is_null())
    {
        return Err((
            Value::Null,
            codes::INVALID_REQUEST,
            "id must be a string, an integer or null".into(),
        ));
    }
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            id_for_error,
            codes::INVALID_REQUEST,
            "jsonrpc must be \"2.0\"".into(),
        ));
    }
    let Some(Value::String(method)) = m.remove("method") else {
        return Err((
            id_for_error,
            codes::INVALID_REQUEST,
            "method must be a string".into(),
        ));
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err((
                id_for_error,
                codes::INVALID_PARAMS,
                "params must be an object".into(),
            ));
        }
    };
    Ok(Request { id, method, params })
}

/// Copies the named keys of `params` into a tool's arguments: required ones must be
/// there; nothing else is passed (the tool's closed schema would refuse it anyway, but
/// the error should name the method's params, not the tool's).
fn pick(params: &Value, required: &[&str], optional: &[&str]) -> Result<Value, MethodError> {
    let mut out = serde_json::Map::new();
    for key in required {
        match params.get(*key) {
            Some(v) if !v.is_null() => {
                out.insert(key.to_string(), v.clone());
            }
            _ => {
                return Err(MethodError::Rpc(
                    codes::INVALID_PARAMS,
                    format!("params.{key} is required"),
                ));
            }
        }
    }
    for key in optional {
        if let Some(v) = params.get(*key).filter(|v| !v.is_null()) {
            out.insert(key.to_string(), v.clone());
        }
    }
    if let Some(extra) = params.as_object().and_then(|m| {
        m.keys()
            .find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
    }) {
        return Err(MethodError::Rpc(
            codes::INVALID_PARAMS,
            format!("params.{} is not a parameter of this method", short(extra)),
        ));
    }
    Ok(Value::Object(out))
}

fn str_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, MethodError> {
    params.get(key).and_then(Value::as_str).ok_or_else(|| {
        MethodError::Rpc(
            codes::INVALID_PARAMS,
            format!("params.{key} must be a string"),
        )
    })
}

/// At most 64 characters of a caller's text, for error messages.
fn short(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn error_line(id: &Value, code: i64, message: &str, data: Option<Value>) -> String {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string() + "\n"
}

enum Line {
    Full,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (without the newline), refusing lines
/// longer than `max` without buffering them.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Full
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Line::Full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_long_ones_refused_without_buffering_them() {
        let data = b"{\"a\":1}\n\n{\"b\":2}".to_vec();
        let mut r = BufReader::with_capacity(3, &data[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut r, &mut buf, 100).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"{\"a\":1}");
        assert!(matches!(
            read_line(&mut r, &mut buf, 100).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"");
        assert!(matches!(
            read_line(&mut r, &mut buf, 100).await.unwrap(),
            Line::Full
        ));
        assert_eq!(buf, b"{\"b\":2}");
        assert!(matches!(
            read_line(&mut r, &mut buf, 100).await.unwrap(),
            Line::Eof
        ));

        let long = [b'x'; 50];
        let mut r = BufReader::with_capacity(8, &long[..]);
        assert!(matches!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::TooLong
        ));
        assert!(buf.len() <= 10);
    }

    #[test]
    fn malformed_requests_get_the_transport_codes() {
        let code = |line: &str| parse_request(line.as_bytes()).err().map(|e| e.1);
        assert_eq!(code("not json"), Some(codes::PARSE_ERROR));
        assert_eq!(code("[1,2]"), Some(codes::INVALID_REQUEST));
        assert_eq!(
            code(r#"{"id":1,"method":"x"}"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":{"x":1},"method":"a"}"#),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":[1]}"#),
            Some(codes::INVALID_PARAMS)
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#), None);
    }

    #[test]
    fn gate_codes_are_stable_and_distinct() {
        let all = [
            ErrorCode::UnknownTool,
            ErrorCode::ValidationFailed,
            ErrorCode::Unauthorized,
            ErrorCode::RateLimited,
            ErrorCode::PolicyDenied,
            ErrorCode::ConfirmationDenied,
            ErrorCode::ConfirmationTimeout,
            ErrorCode::ToolTimeout,
            ErrorCode::ToolError,
            ErrorCode::Internal,
        ];
        let got: Vec<i64> = all.iter().map(|c| gate_code(*c)).collect();
        assert_eq!(got, (1..=10).map(|n| -32000 - n).collect::<Vec<i64>>());
    }

    #[test]
    fn params_are_picked_and_extra_ones_named() {
        let p = json!({"channel": "imsg", "to": "+1", "text": "hi"});
        let got = pick(&p, &["channel", "to", "text"], &[]).ok().unwrap();
        assert_eq!(got, p);
        let p = json!({"channel": "imsg", "to": "+1", "text": "hi", "as": "owner"});
        match pick(&p, &["channel", "to", "text"], &[]) {
            Err(MethodError::Rpc(code, msg)) => {
                assert_eq!(code, codes::INVALID_PARAMS);
                assert!(msg.contains("params.as"), "{msg}");
            }
            _ => panic!("an extra param must be refused"),
        }
    }
}
