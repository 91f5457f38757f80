//! Helpers of the end-to-end tests: start the real `cara` binary in a temporary data
//! directory on a loopback port, drive it over HTTP and the command line like a user,
//! and stop it.
//!
//! Child processes start from an empty environment (plus `PATH` and a `HOME` inside the
//! temporary directory), so no `OPENAI_*`, `CARAPACE_*` or proxy variable of the person
//! running the tests can leak in. Nothing here talks beyond 127.0.0.1. Waits are bounded
//! polls, never a fixed sleep followed by an assertion.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use carapace_testkit::FakeOpenAi;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A client WebSocket to the daemon.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The binary under test.
pub const CARA: &str = env!("CARGO_BIN_EXE_cara");

/// How long any wait may take before the test fails. Generous: the suite runs on two
/// cores next to other builds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it gives a value; fails the test after [`PATIENCE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temporary directory holding the data directory (`data/`), a `home/` for the child
/// processes, and room for files outside both.
pub struct TestDir {
    tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let tmp = tempfile::Builder::new()
            .prefix("cara-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        std::fs::create_dir(tmp.path().join("home")).expect("create home");
        TestDir { tmp }
    }

    /// A test directory whose config asks before every consequential call
    /// (`[policy] preset = "strict"`), for tests about approvals in a clean session.
    pub fn strict() -> TestDir {
        let dir = TestDir::new();
        std::fs::create_dir_all(dir.data()).expect("create the data directory");
        std::fs::write(dir.config(), "[policy]\npreset = \"strict\"\n").expect("write config.toml");
        dir
    }

    /// The temporary directory itself (outside the data directory).
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The data directory, as passed to `--data-dir`.
    pub fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The agent's workspace inside the data directory.
    pub fn workspace(&self) -> PathBuf {
        self.data().join("workspace")
    }

    pub fn db(&self) -> PathBuf {
        self.data().join("carapace.db")
    }

    pub fn config(&self) -> PathBuf {
        self.data().join("config.toml")
    }

    fn home(&self) -> PathBuf {
        self.root().join("home")
    }
}

/// `cara --data-dir DIR` with a clean environment.
fn command(dir: &TestDir) -> std::process::Command {
    let mut cmd = std::process::Command::new(CARA);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.home())
        .env("CARAPACE_LOG", "warn")
        .arg("--data-dir")
        .arg(dir.data());
    cmd
}

/// An HTTP client that never uses a proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build an http client")
}

/// A child process that is killed when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running `cara serve`.
pub struct Daemon {
    child: ChildGuard,
    addr: SocketAddr,
    token: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cara serve --bind 127.0.0.1:0` in `dir` with `fake` as its model provider.
    pub async fn start(dir: &TestDir, fake: &FakeOpenAi) -> Daemon {
        Daemon::start_with_env(
            dir,
            &[
                ("OPENAI_BASE_URL", fake.base_url().as_str()),
                ("CARAPACE_MODEL", "fake-model"),
            ],
        )
        .await
    }

    /// Starts `cara serve --bind 127.0.0.1:0` in `dir` with these extra variables, and
    /// waits until its `daemon.json` names it and it answers `/health`.
    pub async fn start_with_env(dir: &TestDir, env: &[(&str, &str)]) -> Daemon {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = dir.root().join(format!(
            "daemon-{}.log",
            STARTS.fetch_add(1, Ordering::SeqCst)
        ));
        let out = File::create(&log).expect("create the daemon log");
        let mut cmd = command(dir);
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone a file handle"))
            .stderr(out);
        let mut child = ChildGuard(cmd.spawn().expect("spawn cara serve"));
        let pid = child.0.id();

        // daemon.json may still name a daemon that was killed: wait for ours.
        let daemon_file = dir.data().join("daemon.json");
        let deadline = Instant::now() + PATIENCE;
        let addr: SocketAddr = loop {
            if let Some(status) = child.0.try_wait().expect("poll cara serve") {
                panic!(
                    "cara serve exited ({status}) while starting:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let info = std::fs::read_to_string(&daemon_file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if let Some(info) = info.filter(|i| i["pid"] == pid) {
                break info["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("daemon.json has no address: {info}"));
            }
            assert!(
                Instant::now() < deadline,
                "cara serve did not write daemon.json within {PATIENCE:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(addr.ip().is_loopback(), "listens on {addr}");
        let token = std::fs::read_to_string(dir.data().join("server.token"))
            .expect("read server.token")
            .trim()
            .to_string();
        let daemon = Daemon {
            child,
            addr,
            token,
            http: http_client(),
            log,
        };
        wait_for("GET /health", || async {
            let r = daemon.http.get(daemon.url("/health")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        daemon
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// What the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client to send requests of one's own making (no token added).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request carrying the bearer token. It owns what it needs, so it can be sent
    /// from a spawned task.
    pub fn authed(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_response(self.authed(Method::GET, path).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        json_response(
            self.authed(Method::POST, path)
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// `POST /v1/chat/completions`.
    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.authed(Method::POST, "/v1/chat/completions")
            .json(body)
            .send()
            .await
            .expect("POST /v1/chat/completions")
    }

    /// Opens the WebSocket at `/ws`, with a bearer token when given.
    pub async fn websocket(&self, token: Option<&str>) -> Result<Socket, tungstenite::Error> {
        let mut request = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .expect("a websocket request");
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("a header value");
            request.headers_mut().insert("authorization", value);
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws)
    }

    /// Asserts that `/health` still answers.
    /// Waits for the first pending approval and returns it.
    pub async fn pending_approval(&self) -> Value {
        wait_for("a pending approval", || async {
            let (status, body) = self.get("/api/approvals").await;
            assert_eq!(status, 200, "{body}");
            body["approvals"]
                .as_array()
                .and_then(|a| a.first().cloned())
        })
        .await
    }

    pub async fn assert_healthy(&self) {
        let r = self
            .http
            .get(self.url("/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/health failed: {e}\n{}", self.log()));
        assert_eq!(r.status(), StatusCode::OK);
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(mut self) -> ExitStatus {
        signal(self.pid(), "-TERM");
        self.wait_exit().await
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub async fn kill9(mut self) -> ExitStatus {
        signal(self.pid(), "-KILL");
        self.wait_exit().await
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child.0;
        wait_for("the daemon to exit", || {
            let status = child.try_wait().expect("poll cara serve");
            async move { status }
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The daemon's own words are the best clue to why a test failed.
        if std::thread::panicking() {
            eprintln!("--- log of cara serve ---\n{}", self.log());
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Status and JSON body of a response; fails the test if the body is not JSON.
pub async fn json_response(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.expect("read the body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not json ({e}): {text:?}"));
    (status, body)
}

/// Asserts the typed error shape `{"error": {"code", "message"}}` and returns the code.
pub fn error_code(body: &Value) -> &str {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a typed error: {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "a typed error has a message: {body}"
    );
    code
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A one-shot `cara --data-dir DIR ...` command.
pub struct Cli {
    cmd: std::process::Command,
    stdin: String,
}

/// `cara --data-dir DIR`, to be given arguments and run.
pub fn cara(dir: &TestDir) -> Cli {
    Cli {
        cmd: command(dir),
        stdin: String::new(),
    }
}

impl Cli {
    pub fn args<I, S>(mut self, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cli {
        self.cmd.env(key, value);
        self
    }

    /// Text written to standard input, which is then closed.
    pub fn stdin(mut self, text: &str) -> Cli {
        self.stdin = text.to_string();
        self
    }

    /// Runs the command to its end (killed after 30 s, which fails the test).
    pub async fn run(self) -> Output {
        let shown = format!("{:?}", self.cmd.get_args().collect::<Vec<_>>());
        let mut cmd = tokio::process::Command::from(self.cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn cara");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = self.stdin;
        tokio::spawn(async move {
            // The command may exit without reading; that is not this helper's failure.
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("cara {shown} did not finish within 30 s"))
            .expect("wait for cara");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Every audit entry (`{seq, hash, prev_hash, record}`), through `cara audit tail --json`.
pub async fn audit_entries(dir: &TestDir) -> Vec<Value> {
    let out = cara(dir)
        .args(["audit", "tail", "--json", "-n", "100000"])
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The audit records of tool calls to `tool`, in order.
pub async fn tool_call_records(dir: &TestDir, tool: &str) -> Vec<Value> {
    audit_entries(dir)
        .await
        .into_iter()
        .map(|e| e["record"].clone())
        .filter(|r| r["event"] == "tool_call" && r["tool"] == tool)
        .collect()
}

/// The `outcome` field of each record.
pub fn outcomes(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or("?"))
        .collect()
}

/// Waits until the fake has received `n` chat requests and returns them all.
pub async fn wait_requests(fake: &FakeOpenAi, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} requests at the fake provider"), || {
        let requests = fake.requests();
        async move { (requests.len() >= n).then_some(requests) }
    })
    .await
}

/// The `tool` messages of a chat request, in order.
pub fn tool_messages(request: &Value) -> Vec<Value> {
    messages(request)
        .into_iter()
        .filter(|m| m["role"] == "tool")
        .collect()
}

/// The messages of a chat request, without the system prompt, as `role: content` lines
/// (tool calls as `assistant calls NAME`), for comparing conversations.
pub fn transcript(request: &Value) -> Vec<String> {
    messages(request)
        .iter()
        .filter(|m| m["role"] != "system")
        .map(|m| {
            let role = m["role"].as_str().unwrap_or("?");
            match m["tool_calls"].as_array() {
                Some(calls) => {
                    let names: Vec<&str> = calls
                        .iter()
                        .map(|c| c["function"]["name"].as_str().unwrap_or("?"))
                        .collect();
                    format!("{role} calls {}", names.join(", "))
                }
                None => format!("{role}: {}", m["content"].as_str().unwrap_or("")),
            }
        })
        .collect()
}

fn messages(request: &Value) -> Vec<Value> {
    request["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("a chat request has messages: {request}"))
        .clone()
}
