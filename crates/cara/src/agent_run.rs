//! Shell mode: `cara agent run` puts an agent Carapace did not write (Claude Code,
//! OpenClaw, a script) in a sandbox the daemon starts, whose one way out is the agent
//! socket.
//!
//! The daemon side keeps the runs it started, each with its sandbox's pid namespace held
//! open, and identifies agent-socket connections by the caller's pid namespace (never by
//! anything the caller says). The owner's side, `cara agent run`, hands the daemon its
//! terminal (the three standard descriptors, over `owner.sock`) with the server token, so
//! the agent talks to the owner's terminal directly while the daemon holds the sandbox.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use carapace_sandbox::{
    Bind, Limits, Network, NsId, PidNamespace, Sandbox, SandboxSpec, Stdio3, fdpass,
};
use carapace_server::agent_socket::{AgentIdentity, Identify, Refusal};
use carapace_store::Store;
use carapace_types::{Secret, SessionId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::datadir::DataDir;

/// Where the agent socket appears inside the sandbox.
pub const SOCKET_INSIDE: &str = "/run/carapace/agent.sock";
/// Where the `cara` binary appears inside the sandbox.
pub const CARA_INSIDE: &str = "/run/carapace/bin/cara";
/// Where the shims appear inside the sandbox (first on `PATH`).
pub const SHIMS_INSIDE: &str = "/run/carapace/shims";
/// The agent's home inside the sandbox (kept per profile between runs).
pub const HOME_INSIDE: &str = "/home/agent";
/// The loopback port of the provider pass-through inside the sandbox.
pub const PASSTHROUGH_PORT: u16 = 4317;
/// Variables of the owner's terminal passed to the agent; nothing else of the owner's
/// environment enters the sandbox.
const TERMINAL_VARS: &[&str] = &["TERM", "COLORTERM", "COLUMNS", "LINES", "LANG", "LC_ALL"];
/// Largest `agent.run` request line.
const MAX_REQUEST: usize = 256 * 1024;

/// The directory holding `agent.sock` and `owner.sock`: `$CARAPACE_SOCKET_DIR` (set by
/// the system unit), else `run/` in the data directory.
pub fn socket_dir(dd: &DataDir) -> PathBuf {
    match std::env::var_os("CARAPACE_SOCKET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dd.root().join("run"),
    }
}

/// What kind of agent runs, and so which variables point its model client at the
/// pass-through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Claude Code: `ANTHROPIC_BASE_URL`.
    ClaudeCode,
    /// OpenClaw and other OpenAI-style clients: `OPENAI_BASE_URL`.
    OpenClaw,
    /// Anything else: both variables, nothing else assumed.
    Custom,
}

impl Profile {
    /// Parses a profile name as `--profile` takes it.
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "claude-code" => Some(Profile::ClaudeCode),
            "openclaw" => Some(Profile::OpenClaw),
            "custom" => Some(Profile::Custom),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::ClaudeCode => "claude-code",
            Profile::OpenClaw => "openclaw",
            Profile::Custom => "custom",
        }
    }

    /// The variables that point the agent's model client at the pass-through. The keys
    /// are placeholders: the real ones never enter the sandbox.
    fn env(self) -> Vec<(String, String)> {
        let base = format!("http://127.0.0.1:{PASSTHROUGH_PORT}");
        let anthropic = [
            ("ANTHROPIC_BASE_URL", format!("{base}/anthropic")),
            ("ANTHROPIC_API_KEY", "carapace-pass-through".to_string()),
        ];
        let openai = [
            ("OPENAI_BASE_URL", format!("{base}/openai/v1")),
            ("OPENAI_API_KEY", "carapace-pass-through".to_string()),
        ];
        let mut out: Vec<(&str, String)> = match self {
            Profile::ClaudeCode => {
                let mut v = anthropic.to_vec();
                v.push(("DISABLE_AUTOUPDATER", "1".into()));
                v.push(("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()));
                v
            }
            Profile::OpenClaw => openai.to_vec(),
            Profile::Custom => anthropic.into_iter().chain(openai).collect(),
        };
        out.push(("CARAPACE_PASSTHROUGH_PORT", PASSTHROUGH_PORT.to_string()));
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// One run the daemon started.
struct Run {
    id: String,
    session: SessionId,
    /// Held so the namespace's identity cannot pass to another while the run is known.
    _ns: PidNamespace,
}

/// The runs of this daemon, by their sandbox's pid namespace; also the agent socket's
/// [`Identify`].
pub struct Runs {
    runs: Mutex<HashMap<NsId, Run>>,
    own_ns: NsId,
    uid: u32,
    channels: Vec<String>,
}

impl Runs {
    /// No runs yet. `channels` are the names the agents may use (for `session.info`).
    pub fn new(channels: Vec<String>) -> anyhow::Result<Arc<Runs>> {
        let own = PidNamespace::current().context("cannot read this process's pid namespace")?;
        let uid = std::fs::metadata("/proc/self")
            .context("cannot read /proc/self")?
            .uid();
        Ok(Arc::new(Runs {
            runs: Mutex::new(HashMap::new()),
            own_ns: own.id(),
            uid,
            channels,
        }))
    }

    fn insert(&self, ns: PidNamespace, id: &str, session: &SessionId) -> bool {
        let key = ns.id();
        if key == self.own_ns {
            return false;
        }
        self.lock().insert(
            key,
            Run {
                id: id.to_string(),
                session: session.clone(),
                _ns: ns,
            },
        );
        true
    }

    fn remove(&self, id: &str) {
        self.lock().retain(|_, r| r.id != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NsId, Run>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Identify for Runs {
    fn identify(&self, stream: &UnixStream) -> Result<AgentIdentity, Refusal> {
        let peer = carapace_sandbox::peer(stream.as_fd()).map_err(|e| Refusal {
            uid: None,
            pid: None,
            reason: format!("cannot read the peer's credentials: {e}"),
        })?;
        let refuse = |reason: &str| Refusal {
            uid: Some(peer.uid),
            pid: Some(peer.pid),
            reason: reason.to_string(),
        };
        if peer.uid != self.uid {
            return Err(refuse("another user"));
        }
        if peer.pid_ns == self.own_ns {
            return Err(refuse("not in a sandbox (the daemon's own pid namespace)"));
        }
        match self.lock().get(&peer.pid_ns) {
            Some(run) => Ok(AgentIdentity {
                run: run.id.clone(),
                session: run.session.clone(),
            }),
            None => Err(refuse("a pid namespace of no sandbox this daemon started")),
        }
    }

    fn channels(&self) -> Vec<String> {
        self.channels.clone()
    }
}

/// What the daemon needs to start runs.
pub struct Launcher {
    /// The runs, shared with the agent socket.
    pub runs: Arc<Runs>,
    /// State (a session per run).
    pub store: Arc<Store>,
    /// The Gate, for audit records of runs.
    pub gate: carapace_gate::Gate,
    /// SHA-256 of the server token, which `agent.run` must carry.
    pub token_digest: [u8; 32],
    /// The data directory.
    pub dd: DataDir,
    /// Host path of the agent socket.
    pub agent_socket: PathBuf,
    /// Places no workspace may hold or lie inside, resolved (see [`protected_places`]).
    pub protected: Vec<PathBuf>,
    /// Unauthenticated `owner.sock` connections being read at once.
    pub pending: Arc<tokio::sync::Semaphore>,
    /// Refused `agent.run` requests, audited at most once a second.
    pub refusals: Mutex<(Option<std::time::Instant>, u64)>,
}

/// What a workspace may neither hold nor lie inside, with every symlink resolved: the
/// data directory (vault, token, keys, the database, config), the socket directory, the
/// `cara` executable and the init helper beside it (an agent that could rewrite them
/// would run outside the sandbox next time), and `/`.
pub fn protected_places(dd: &DataDir, sockets: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("cannot find the cara executable")?;
    let mut out = Vec::new();
    for p in [
        dd.root().to_path_buf(),
        sockets.to_path_buf(),
        exe.clone(),
        exe.with_file_name(crate::sandbox_cmd::INIT_HELPER),
    ] {
        // A place that does not exist (no init helper) cannot be held; its parent is.
        match p.canonicalize() {
            Ok(c) => out.push(c),
            Err(_) => {
                if let Some(parent) = p.parent().and_then(|d| d.canonicalize().ok()) {
                    out.push(parent.join(p.file_name().unwrap_or_default()));
                }
            }
        }
    }
    Ok(out)
}

/// Binds `agent.sock` and `owner.sock` in `dir` (created 0700 when missing; the system
/// install makes it 0750 for its client group), removing stale sockets of a previous
/// daemon first.
pub fn bind_sockets(dir: &Path) -> anyhow::Result<(UnixListener, UnixListener)> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let bind = |name: &str| -> anyhow::Result<UnixListener> {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).ok();
            }
            Ok(_) => bail!("{} exists and is not a socket", path.display()),
            Err(_) => {}
        }
        let l =
            UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
        Ok(l)
    };
    Ok((bind("agent.sock")?, bind("owner.sock")?))
}

impl Launcher {
    /// Serves `owner.sock`: each connection is one `agent.run`.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.connection(stream).await {
                            tracing::warn!(error = %format!("{e:#}"), "agent run failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "owner socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, stream: UnixStream) -> anyhow::Result<()> {
        // Until the token is checked a connection is anyone's: few at a time, briefly.
        let Ok(reading) = self.pending.clone().try_acquire_owned() else {
            return Ok(());
        };
        let read = async {
            // The owner's terminal arrives with the first bytes of the request.
            let mut first = vec![0u8; 64 * 1024];
            let (n, fds) = stream
                .async_io(tokio::io::Interest::READABLE, || {
                    fdpass::recv_with_fds(stream.as_fd(), &mut first)
                })
                .await
                .context("reading the request")?;
            first.truncate(n);
            anyhow::Ok((first, n, fds))
        };
        let (first, n, fds) = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .context("no request within 10 s")??;
        let (r, mut w) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(r);
        let mut line = first;
        if !line.contains(&b'\n') && n > 0 {
            let mut rest = Vec::new();
            let mut limited = (&mut reader).take(MAX_REQUEST as u64);
            let more = limited.read_until(b'\n', &mut rest);
            tokio::time::timeout(Duration::from_secs(10), more)
                .await
                .context("no request within 10 s")??;
            line.extend_from_slice(&rest);
        }
        drop(reading);
        let reply = |v: Value| v.to_string() + "\n";
        let fail = |msg: String| {
            reply(json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": msg}}))
        };
        let request = match self.check(&line, fds) {
            Ok(r) => r,
            Err(msg) => {
                w.write_all(fail(msg).as_bytes()).await.ok();
                return Ok(());
            }
        };
        let (run_id, session) = self.new_run(&request)?;
        let spec = self.spec(&request)?;
        let sandbox = Sandbox::new(crate::sandbox_cmd::init_program()?);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run = sandbox.run_attached(&spec, request.stdio, tx);
        tokio::pin!(run);
        let mut rx = Some(rx);
        let mut eof = Vec::new();
        let outcome = loop {
            tokio::select! {
                ns = async { rx.as_mut().unwrap().await }, if rx.is_some() => {
                    rx = None;
                    if let Ok(ns) = ns {
                        let nsid = ns.id();
                        if !self.runs.insert(ns, &run_id, &session) {
                            break Err(anyhow::anyhow!(
                                "the sandbox has no pid namespace of its own; refusing to run an agent in it"
                            ));
                        }
                        self.record("agent_run_started", json!({
                            "run": run_id, "session": session.as_str(),
                            "profile": request.profile.name(), "argv": request.argv,
                            "workspace": request.workspace, "pid_ns": nsid.to_string(),
                        }));
                        let note = json!({"jsonrpc": "2.0", "method": "agent.started",
                            "params": {"run": run_id, "session": session.as_str()}});
                        w.write_all(reply(note).as_bytes()).await.ok();
                    }
                }
                code = &mut run => break code.map_err(anyhow::Error::from),
                // The owner's side went away (Ctrl-C): dropping the run kills the sandbox.
                read = reader.read_until(b'\n', &mut eof) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        break Err(anyhow::anyhow!("the owner's cara agent run went away"));
                    }
                    eof.clear();
                }
            }
        };
        self.runs.remove(&run_id);
        let (code, error) = match &outcome {
            Ok(code) => (Some(*code), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        self.record(
            "agent_run_ended",
            json!({"run": run_id, "exit": code, "error": error}),
        );
        let answer = match outcome {
            Ok(code) => reply(json!({"jsonrpc": "2.0", "id": 1, "result": {"exit": code}})),
            Err(e) => fail(format!("{e:#}")),
        };
        w.write_all(answer.as_bytes()).await.ok();
        Ok(())
    }

    fn record(&self, event: &str, fields: Value) {
        if let Err(e) = self.gate.record(event, fields) {
            tracing::error!(error = %e, event, "could not record an agent run event");
        }
    }

    /// Checks the request: the token, the shape, the descriptors.
    fn check(&self, line: &[u8], fds: Vec<OwnedFd>) -> Result<RunRequest, String> {
        let v: Value =
            serde_json::from_slice(line).map_err(|e| format!("the request is not JSON: {e}"))?;
        if v["method"] != "agent.run" {
            return Err("owner.sock takes one agent.run request".into());
        }
        let p = &v["params"];
        let token = p["token"].as_str().unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if !constant_time_eq(&digest, &self.token_digest) {
            // At most one record a second, counting the refusals it stands for.
            let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            r.1 += 1;
            let now = std::time::Instant::now();
            if r.0
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                let count = std::mem::take(&mut r.1);
                r.0 = Some(now);
                drop(r);
                self.record(
                    "agent_run_refused",
                    json!({"reason": "bad token", "count": count}),
                );
            }
            return Err("the token is wrong".into());
        }
        let profile = p["profile"]
            .as_str()
            .and_then(Profile::parse)
            .ok_or("profile must be claude-code, openclaw or custom")?;
        let argv: Vec<String> = p["argv"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) {
            return Err("argv must be a non-empty list of strings without NUL".into());
        }
        let workspace = PathBuf::from(p["workspace"].as_str().unwrap_or_default());
        if !workspace.is_absolute() {
            return Err("the workspace must be an absolute path".into());
        }
        let workspace = workspace
            .canonicalize()
            .map_err(|e| format!("the workspace {} cannot be used: {e}", workspace.display()))?;
        if !workspace.is_dir() || workspace == Path::new("/") {
            return Err(format!(
                "the workspace {} is not a directory one can share",
                workspace.display()
            ));
        }
        if let Some(p) = self
            .protected
            .iter()
            .find(|p| p.starts_with(&workspace) || workspace.starts_with(p))
        {
            return Err(format!(
                "the workspace {} may not hold or lie inside {} (Carapace's data, sockets or \
                 executables); choose a directory of its own",
                workspace.display(),
                p.display()
            ));
        }
        let mut env = Vec::new();
        if let Some(m) = p["env"].as_object() {
            for (k, v) in m {
                if let (true, Some(v)) = (TERMINAL_VARS.contains(&k.as_str()), v.as_str())
                    && !v.contains('\0')
                {
                    env.push((k.clone(), v.to_string()));
                }
            }
        }
        let trusted = p["trust_input"].as_bool().unwrap_or(false);
        let timeout = p["timeout_secs"]
            .as_u64()
            .unwrap_or(24 * 3600)
            .clamp(1, 7 * 24 * 3600);
        let mut fds = fds.into_iter();
        let (Some(stdin), Some(stdout), Some(stderr), None) =
            (fds.next(), fds.next(), fds.next(), fds.next())
        else {
            return Err(
                "agent.run carries exactly three descriptors: stdin, stdout, stderr".into(),
            );
        };
        Ok(RunRequest {
            profile,
            argv,
            workspace,
            env,
            timeout: Duration::from_secs(timeout),
            trusted,
            stdio: Stdio3 {
                stdin,
                stdout,
                stderr,
            },
        })
    }

    fn new_run(&self, req: &RunRequest) -> anyhow::Result<(String, SessionId)> {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).context("the OS random source failed")?;
        let id = format!("run_{}", hex::encode(bytes));
        let session = SessionId::new(format!("agent_{}", hex::encode(bytes)));
        let title = format!("{} ({})", req.argv[0], req.profile.name());
        let now = carapace_gate::now_ms();
        self.store
            .create_session(&session, &title, now)
            .context("cannot create the run's session")?;
        // The Gate never sees what the agent reads (its workspace, its home, its model's
        // answers): unless the owner vouches for it, its session starts untrusted, so
        // policy asks before consequential calls no plan covers.
        if !req.trusted {
            let untrusted = carapace_types::Label {
                integrity: carapace_types::Integrity::Untrusted,
                confidentiality: carapace_types::Confidentiality::Public,
            };
            let source = carapace_types::Source::Tool("agent_run".into()).as_string();
            self.store
                .absorb_result(&session, untrusted, &source, &[], now)
                .context("cannot label the run's session")?;
        }
        Ok((id, session))
    }

    fn spec(&self, req: &RunRequest) -> anyhow::Result<SandboxSpec> {
        let cara = std::env::current_exe().context("cannot find the cara executable")?;
        let shims = self.dd.root().join("run").join("shims");
        make_shims(&shims)?;
        let home = self.dd.root().join("agents").join(req.profile.name());
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
        let mut env = vec![
            (
                "PATH".to_string(),
                format!("{SHIMS_INSIDE}:/run/carapace/bin:/usr/local/bin:/usr/bin:/bin"),
            ),
            ("HOME".into(), HOME_INSIDE.into()),
            ("USER".into(), "agent".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("TERM".into(), "xterm-256color".into()),
            ("CARAPACE_SOCKET".into(), SOCKET_INSIDE.into()),
        ];
        for (k, v) in req.profile.env().into_iter().chain(req.env.clone()) {
            env.retain(|(have, _)| *have != k);
            env.push((k, v));
        }
        let mut argv = vec![CARA_INSIDE.to_string(), "__agent-entry".into(), "--".into()];
        argv.extend(req.argv.iter().cloned());
        Ok(SandboxSpec {
            argv,
            env,
            cwd: req.workspace.clone(),
            binds: vec![
                Bind {
                    src: cara,
                    dst: CARA_INSIDE.into(),
                    writable: false,
                },
                Bind {
                    src: shims,
                    dst: SHIMS_INSIDE.into(),
                    writable: false,
                },
                Bind {
                    src: home,
                    dst: HOME_INSIDE.into(),
                    writable: true,
                },
                Bind {
                    src: req.workspace.clone(),
                    dst: req.workspace.clone(),
                    writable: true,
                },
            ],
            network: Network::UnixSocket {
                host: self.agent_socket.clone(),
                inside: SOCKET_INSIDE.into(),
            },
            limits: Limits {
                wall_clock: req.timeout,
                cpu_seconds: req.timeout.as_secs(),
                // Language runtimes reserve far more address space than they use; the
                // memory cgroup is the real bound.
                address_space_bytes: 1 << 40,
                open_files: 4096,
                processes: 512,
                output_bytes: 0,
                memory_bytes: 8 << 30,
                tmp_bytes: 1 << 30,
            },
            allow_degraded: false,
        })
    }
}

/// The providers of the model chain that an agent's own client can reach through the
/// pass-through: Anthropic-style ones as `anthropic`, OpenAI-style ones as `openai`
/// (the first of each kind). Their base URLs lose a trailing `/v1`, which the agents'
/// clients add themselves.
pub fn passthrough_targets<'a>(
    chain: impl Iterator<Item = &'a crate::config::providers::ModelTarget>,
) -> Vec<carapace_server::passthrough::PassTarget> {
    use crate::config::providers::ProviderKind;
    use carapace_server::passthrough::{AuthStyle, PassTarget};
    let mut out: Vec<PassTarget> = Vec::new();
    for t in chain {
        let (name, auth) = match t.kind {
            ProviderKind::Anthropic => ("anthropic", AuthStyle::Header("x-api-key")),
            ProviderKind::OpenAi | ProviderKind::OpenAiResponses => ("openai", AuthStyle::Bearer),
            _ => continue,
        };
        let Some(key) = t.api_key.clone() else {
            continue;
        };
        if out.iter().any(|o| o.name == name) {
            continue;
        }
        let base = t.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let Ok(base_url) = reqwest::Url::parse(base) else {
            continue;
        };
        out.push(PassTarget {
            name: name.to_string(),
            base_url,
            auth,
            key,
            extra_headers: Vec::new(),
        });
    }
    out
}

/// Links named like the messaging CLIs, pointing at `cara` as the sandbox sees it.
fn make_shims(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in crate::shim::TOOLS.map(crate::shim::Tool::name) {
        let link = dir.join(name);
        match std::fs::read_link(&link) {
            Ok(target) if target == Path::new(CARA_INSIDE) => continue,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(CARA_INSIDE, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct RunRequest {
    profile: Profile,
    argv: Vec<String>,
    workspace: PathBuf,
    env: Vec<(String, String)>,
    timeout: Duration,
    trusted: bool,
    stdio: Stdio3,
}

/// `cara agent run`: hands this terminal and the command to the daemon, waits for the
/// run to end and returns its exit status (125 when the run could not start).
pub fn run_cli(
    dd: &DataDir,
    token: &Secret<String>,
    profile: Profile,
    workspace: &Path,
    timeout: Option<u64>,
    trust_input: bool,
    argv: &[String],
) -> anyhow::Result<i32> {
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("cannot use the workspace {}", workspace.display()))?;
    let path = socket_dir(dd).join("owner.sock");
    let stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to {} (is this daemon new enough to run agents?)",
            path.display()
        )
    })?;
    let env: serde_json::Map<String, Value> = TERMINAL_VARS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), json!(v))))
        .collect();
    let mut params = json!({
        "token": token.expose(),
        "profile": profile.name(),
        "argv": argv,
        "workspace": workspace,
        "env": env,
        "trust_input": trust_input,
    });
    if let Some(t) = timeout {
        params["timeout_secs"] = json!(t);
    }
    let line = json!({"jsonrpc": "2.0", "id": 1, "method": "agent.run", "params": params})
        .to_string()
        + "\n";
    if line.len() > MAX_REQUEST {
        bail!("the command line is too long ({} bytes)", line.len());
    }
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let stdio: [BorrowedFd<'_>; 3] = [i.as_fd(), o.as_fd(), e.as_fd()];
    fdpass::send_with_fds(stream.as_fd(), line.as_bytes(), &stdio)
        .context("cannot hand the terminal to the daemon")?;
    let mut reader = BufReader::new(&stream);
    let mut buf = String::new();
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            bail!("the daemon closed the connection before the run ended");
        }
        let v: Value = serde_json::from_str(&buf).context("the daemon's answer is not JSON")?;
        if v["method"] == "agent.started" {
            tracing::debug!(run = %v["params"]["run"], "agent run started");
            continue;
        }
        if let Some(e) = v.get("error") {
            let msg = e["message"]
                .as_str()
                .unwrap_or("the daemon refused the run");
            let _ = writeln!(std::io::stderr(), "cara agent run: {msg}");
            return Ok(125);
        }
        return Ok(v["result"]["exit"].as_i64().unwrap_or(125) as i32);
    }
}
