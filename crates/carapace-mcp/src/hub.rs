//! The servers' supervisors and the tools they offer.
//!
//! Each server has one task that starts it, lists its tools, relists them on
//! `notifications/tools/list_changed`, and restarts it with backoff when it stops. The
//! tools of a server that is down stay listed, and calls to them fail at once with the
//! reason (the Gate reports `TOOL_ERROR`), so the model sees why instead of losing them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::{ServerConfig, Transport};
use crate::effect::Classified;
use crate::tunnel::{EgressStats, Tunnels};

/// The separator between a server's name and its tool's: `github__create_issue`.
pub const SEPARATOR: &str = "__";
/// At most this many tools are taken from one server.
pub const MAX_TOOLS: usize = 512;
/// At most this many bytes of a tool's description reach the model.
pub const MAX_DESCRIPTION: usize = 2048;
/// The first wait before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that ran this long starts over with the first backoff.
const STABLE: Duration = Duration::from_secs(60);

/// Scrubs text the owner is shown (a server's stderr may print what it was given).
pub type Scrub = Arc<dyn Fn(&mut String) + Send + Sync>;

/// One tool of one server, as the Gate offers it.
#[derive(Clone, Debug, Serialize)]
pub struct McpTool {
    /// `SERVER__TOOL`.
    pub name: String,
    /// The server's name.
    pub server: String,
    /// The tool's name on its server.
    pub remote: String,
    /// The server's description, cut and without control characters.
    pub description: String,
    /// The declared input schema, closed.
    pub schema: Value,
    /// Effect class, result label and why.
    #[serde(skip)]
    pub class: Classified,
    /// The annotations as the server sent them.
    pub annotations: Option<Value>,
}

/// A tool the server offered that is not offered on.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The tool's name on its server (cut).
    pub remote: String,
    /// Why.
    pub reason: String,
}

/// Every server's tools at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Rises with every change.
    pub version: u64,
    /// By `SERVER__TOOL`.
    pub tools: BTreeMap<String, Arc<McpTool>>,
}

/// Where a server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Starting, or waiting for its tool list.
    Starting,
    /// Answering.
    Ready,
    /// Stopped or failed; a restart is due.
    Down,
    /// Shut down with the daemon.
    Stopped,
}

/// What `cara mcp list` shows of a server.
#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    /// The server's name.
    pub name: String,
    /// How it is reached.
    pub transport: String,
    /// Where it is.
    pub state: State,
    /// Why it last failed or stopped.
    pub last_error: Option<String>,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// Tools offered.
    pub tools: usize,
    /// Tools the server listed that are not offered, with the reason.
    pub skipped: Vec<Skipped>,
    /// The last lines it wrote to stderr (scrubbed).
    pub stderr: Vec<String>,
    /// Its tunnels, when it has egress (`network = "egress"`).
    pub egress: Option<EgressStats>,
}

/// Why a call did not reach a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No such server or tool.
    #[error("no MCP tool named {0}")]
    Unknown(String),
    /// The server is not running; the reason and the restart state.
    #[error("MCP server {server} is not available ({reason}); it is being restarted")]
    Unavailable {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server stopped or broke the protocol during the call.
    #[error("MCP server {server} failed during the call: {reason}")]
    Failed {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// What the hub needs from the daemon.
#[derive(Clone)]
pub struct HubEnv {
    /// Scrubs what the owner is shown.
    pub scrub: Scrub,
}

/// The configured servers and their tools.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    servers: BTreeMap<String, Arc<Server>>,
    snapshot: RwLock<Arc<Snapshot>>,
    changed: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    env: HubEnv,
}

struct Server {
    cfg: ServerConfig,
    status: Mutex<Status>,
    peer: RwLock<Option<Peer<RoleClient>>>,
    tools: Mutex<Vec<Arc<McpTool>>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    retry_now: Notify,
    /// The egress proxy of a stdio server with `network = "egress"`, once listening.
    tunnels: Mutex<Option<Tunnels>>,
}

#[derive(Clone)]
struct Status {
    state: State,
    last_error: Option<String>,
    restarts: u32,
    skipped: Vec<Skipped>,
}

impl Hub {
    /// Starts a supervisor per server (on the current runtime). Names must be unique.
    pub fn start(servers: Vec<ServerConfig>, env: HubEnv) -> Hub {
        let (changed, _) = watch::channel(0);
        let (stop, _) = watch::channel(false);
        let servers: BTreeMap<String, Arc<Server>> = servers
            .into_iter()
            .map(|cfg| {
                (
                    cfg.name.clone(),
                    Arc::new(Server {
                        cfg,
                        status: Mutex::new(Status {
                            state: State::Starting,
                            last_error: None,
                            restarts: 0,
                            skipped: Vec::new(),
                        }),
                        peer: RwLock::new(None),
                        tools: Mutex::new(Vec::new()),
                        stderr: Arc::default(),
                        retry_now: Notify::new(),
                        tunnels: Mutex::new(None),
                    }),
                )
            })
            .collect();
        let hub = Hub {
            inner: Arc::new(HubInner {
                servers,
                snapshot: RwLock::new(Arc::default()),
                changed,
                stop,
                env,
            }),
        };
        for server in hub.inner.servers.values() {
            tokio::spawn(supervise(hub.clone(), server.clone()));
        }
        hub
    }

    /// The tools of every server now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves when the tools change (or the hub stops); the value is the version.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The servers' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.inner.servers.keys().cloned().collect()
    }

    /// Every server's status, in name order.
    pub fn status(&self) -> Vec<ServerStatus> {
        self.inner
            .servers
            .values()
            .map(|s| self.status_of(s))
            .collect()
    }

    /// Tools of one server, with why each got its class; `None`: no such server.
    pub fn tools_of(&self, server: &str) -> Option<Vec<Arc<McpTool>>> {
        let s = self.inner.servers.get(server)?;
        Some(lock(&s.tools).clone())
    }

    fn status_of(&self, s: &Server) -> ServerStatus {
        let st = lock(&s.status).clone();
        let mut stderr: Vec<String> = lock(&s.stderr).iter().cloned().collect();
        for line in &mut stderr {
            (self.inner.env.scrub)(line);
        }
        let mut last_error = st.last_error;
        if let Some(e) = &mut last_error {
            (self.inner.env.scrub)(e);
        }
        ServerStatus {
            name: s.cfg.name.clone(),
            transport: s.cfg.transport_name().to_string(),
            state: st.state,
            last_error,
            restarts: st.restarts,
            tools: lock(&s.tools).len(),
            skipped: st.skipped,
            stderr,
            egress: lock(&s.tunnels).as_ref().map(|t| lock(&t.stats).clone()),
        }
    }

    /// Calls `tool`; the caller applies the deadline (dropping the future cancels the
    /// call on the server).
    pub async fn call(&self, tool: &McpTool, args: Value) -> Result<CallToolResult, CallError> {
        let Some(server) = self.inner.servers.get(&tool.server) else {
            return Err(CallError::Unknown(tool.name.clone()));
        };
        let peer = server
            .peer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(peer) = peer else {
            let reason = lock(&server.status)
                .last_error
                .clone()
                .unwrap_or_else(|| "it is starting".into());
            let mut reason = reason;
            (self.inner.env.scrub)(&mut reason);
            return Err(CallError::Unavailable {
                server: tool.server.clone(),
                reason,
            });
        };
        let mut params = CallToolRequestParams::new(tool.remote.clone());
        params.arguments = match args {
            Value::Object(m) => Some(m),
            _ => None,
        };
        peer.call_tool(params).await.map_err(|e| CallError::Failed {
            server: tool.server.clone(),
            reason: e.to_string(),
        })
    }

    /// `cara mcp test`: starts a second, separate connection, lists its tools and
    /// closes it; a server that is down is also restarted now. Returns the tools (as the
    /// running connection would offer them) or what failed.
    pub async fn test(&self, server: &str) -> Option<Result<Vec<Arc<McpTool>>, String>> {
        let s = self.inner.servers.get(server)?;
        if lock(&s.status).state == State::Down {
            s.retry_now.notify_one();
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let result = match tokio::time::timeout(
            s.cfg.startup_timeout,
            connect(&s.cfg, mpsc::unbounded_channel().0, tail.clone()),
        )
        .await
        {
            Err(_) => Err(format!(
                "no answer within {:?} (startup_timeout)",
                s.cfg.startup_timeout
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(conn)) => {
                let listed = list(&s.cfg, &conn.peer).await;
                conn.close().await;
                listed.map(|(tools, _)| tools)
            }
        };
        Some(result.map_err(|mut e| {
            let lines: Vec<String> = lock(&tail).iter().cloned().collect();
            if !lines.is_empty() {
                e = format!("{e}\nits stderr:\n  {}", lines.join("\n  "));
            }
            (self.inner.env.scrub)(&mut e);
            e
        }))
    }

    /// Stops every server and waits (up to a few seconds) for them to end.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if self
                .inner
                .servers
                .values()
                .all(|s| lock(&s.status).state == State::Stopped)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn publish(&self) {
        let mut tools = BTreeMap::new();
        for s in self.inner.servers.values() {
            for t in lock(&s.tools).iter() {
                tools.insert(t.name.clone(), t.clone());
            }
        }
        let mut snap = self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let version = snap.version + 1;
        *snap = Arc::new(Snapshot { version, tools });
        drop(snap);
        self.inner.changed.send_replace(version);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tells the supervisor that the server's tool list changed.
struct Handler {
    relist: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Handler {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let _ = self.relist.send(());
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("carapace", env!("CARGO_PKG_VERSION"));
        info
    }
}

/// A live connection: the protocol service (run by a task that ends when the
/// connection does) and, for stdio, the process.
struct Conn {
    peer: Peer<RoleClient>,
    cancel: rmcp::service::RunningServiceCancellationToken,
    closed: tokio::task::JoinHandle<()>,
    exited: Option<tokio::task::JoinHandle<String>>,
    stderr: Option<tokio::task::JoinHandle<()>>,
}

impl Conn {
    fn new(
        service: RunningService<RoleClient, Handler>,
        exited: Option<tokio::task::JoinHandle<String>>,
        stderr: Option<tokio::task::JoinHandle<()>>,
    ) -> Conn {
        let peer = service.peer().clone();
        let cancel = service.cancellation_token();
        let closed = tokio::spawn(async move {
            let _ = service.waiting().await;
        });
        Conn {
            peer,
            cancel,
            closed,
            exited,
            stderr,
        }
    }

    async fn close(self) {
        self.cancel.cancel();
        let mut closed = self.closed;
        if !closed.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut closed).await;
        }
        closed.abort();
        if let Some(mut p) = self.exited {
            // Its stdin is closed now, which asks a stdio server to end; after a grace
            // period the task is dropped, which kills it and everything it started.
            if !p.is_finished() {
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut p).await;
            }
            p.abort();
        }
        if let Some(e) = self.stderr {
            e.abort();
        }
    }
}

async fn connect(
    cfg: &ServerConfig,
    relist: mpsc::UnboundedSender<()>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
) -> Result<Conn, String> {
    let handler = Handler { relist };
    match &cfg.transport {
        Transport::Stdio {
            command,
            env,
            sandbox,
            egress,
        } => {
            let p = crate::stdio::spawn(command, env, sandbox.as_ref(), egress.as_deref())
                .map_err(|e| format!("cannot start {}: {e}", command[0]))?;
            let stderr = crate::stdio::drain_stderr(p.stderr, stderr_tail);
            let transport = rmcp::transport::async_rw::AsyncRwTransport::new_client(
                crate::stdio::LineLimit::new(p.stdout, cfg.max_message_bytes),
                p.stdin,
            )
            // LineLimit fails first; rmcp would drop the line and leave the call hanging.
            .with_max_line_length(cfg.max_message_bytes.saturating_add(1));
            let mut exited = p.exited;
            let service = tokio::select! {
                s = handler.serve(transport) => s.map_err(|e| format!("the MCP handshake failed: {e}")),
                end = &mut exited => Err(format!(
                    "it ended before the handshake: {}",
                    end.unwrap_or_else(|e| e.to_string())
                )),
            };
            match service {
                Ok(service) => Ok(Conn::new(service, Some(exited), Some(stderr))),
                Err(e) => {
                    exited.abort();
                    // Give the stderr reader a moment to take the last words.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    stderr.abort();
                    Err(e)
                }
            }
        }
        Transport::Http { url, egress, scope } => {
            let transport = crate::http::transport(url, egress.clone(), scope.clone());
            let service = handler
                .serve(transport)
                .await
                .map_err(|e| format!("the MCP handshake failed: {e}"))?;
            Ok(Conn::new(service, None, None))
        }
    }
}

/// Lists the server's tools and turns them into the Gate's.
async fn list(
    cfg: &ServerConfig,
    peer: &Peer<RoleClient>,
) -> Result<(Vec<Arc<McpTool>>, Vec<Skipped>), String> {
    let listed = peer
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"))?;
    Ok(crate::tools::convert(cfg, listed))
}

async fn supervise(hub: Hub, server: Arc<Server>) {
    let mut stop = hub.inner.stop.subscribe();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stop.borrow() {
            break;
        }
        set_state(&server, State::Starting, None);
        let (relist_tx, mut relist) = mpsc::unbounded_channel();
        let started = tokio::time::Instant::now();
        let attempt = async {
            listen(&server)?;
            let conn = connect(&server.cfg, relist_tx, server.stderr.clone()).await?;
            match list(&server.cfg, &conn.peer).await {
                Ok(listed) => Ok((conn, listed)),
                Err(e) => {
                    conn.close().await;
                    Err(e)
                }
            }
        };
        let outcome = tokio::select! {
            _ = stop.changed() => break,
            r = tokio::time::timeout(server.cfg.startup_timeout, attempt) => r,
        };
        let reason = match outcome {
            Err(_) => format!(
                "no tool list within {:?} (startup_timeout)",
                server.cfg.startup_timeout
            ),
            Ok(Err(e)) => e,
            Ok(Ok((mut conn, (tools, skipped)))) => {
                install(&hub, &server, tools, skipped);
                *server.peer.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.peer.clone());
                set_state(&server, State::Ready, None);
                tracing::info!(server = %server.cfg.name, tools = lock(&server.tools).len(), "MCP server ready");
                let reason = loop {
                    let exited = async {
                        match &mut conn.exited {
                            Some(p) => p.await.unwrap_or_else(|e| e.to_string()),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        end = exited => {
                            conn.exited = None;
                            break end;
                        }
                        _ = &mut conn.closed => break "the connection closed".to_string(),
                        Some(()) = relist.recv() => {
                            while relist.try_recv().is_ok() {}
                            match list(&server.cfg, &conn.peer).await {
                                Ok((tools, skipped)) => install(&hub, &server, tools, skipped),
                                Err(e) => tracing::warn!(server = %server.cfg.name, error = %e, "relisting tools failed"),
                            }
                        }
                        _ = stop.changed() => {
                            *server.peer.write().unwrap_or_else(|p| p.into_inner()) = None;
                            conn.close().await;
                            stopped(&server);
                            return;
                        }
                    }
                };
                *server.peer.write().unwrap_or_else(|p| p.into_inner()) = None;
                conn.close().await;
                if started.elapsed() > STABLE {
                    backoff = FIRST_BACKOFF;
                }
                reason
            }
        };
        tracing::warn!(server = %server.cfg.name, reason = %reason, "MCP server down; restarting in {backoff:?}");
        {
            let mut st = lock(&server.status);
            st.state = State::Down;
            st.last_error = Some(reason);
            st.restarts += 1;
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(backoff) => {}
            _ = server.retry_now.notified() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    stopped(&server);
}

/// Opens the server's egress proxy if it has one and it is not open yet.
fn listen(server: &Server) -> Result<(), String> {
    let Transport::Stdio {
        egress: Some(cfg), ..
    } = &server.cfg.transport
    else {
        return Ok(());
    };
    let mut tunnels = lock(&server.tunnels);
    if tunnels.is_none() {
        *tunnels = Some(Tunnels::listen(&server.cfg.name, cfg)?);
    }
    Ok(())
}

/// The server is shut down with the daemon: its proxy closes too.
fn stopped(server: &Server) {
    lock(&server.tunnels).take();
    set_state(server, State::Stopped, None);
}

fn set_state(server: &Server, state: State, error: Option<String>) {
    let mut st = lock(&server.status);
    st.state = state;
    if error.is_some() {
        st.last_error = error;
    }
}

fn install(hub: &Hub, server: &Server, tools: Vec<Arc<McpTool>>, skipped: Vec<Skipped>) {
    *lock(&server.tools) = tools;
    lock(&server.status).skipped = skipped;
    hub.publish();
}
