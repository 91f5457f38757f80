//! `cara __agent-entry -- CMD ARGS...`: the first program in the sandbox of
//! `cara agent run`. It serves the provider pass-through on `127.0.0.1` (the port from
//! `CARAPACE_PASSTHROUGH_PORT`, default 4317) and runs CMD under it.
//!
//! A request to `/PROVIDER/REST` goes over a new connection to the agent socket
//! (`CARAPACE_SOCKET`) as `provider.request` (provider = the first path segment, path =
//! the rest with its query); the daemon adds the key and forwards it, and its
//! `provider.head` and `provider.chunk` notifications become the HTTP response, streamed
//! as they come (chunked). The agent's base URL is then `http://127.0.0.1:4317/anthropic`
//! (or `/openai`, ...) and its key any placeholder: this side holds no key and forwards
//! what the agent sends; the daemon drops the agent's credentials.
//!
//! When the socket answers with an error, the HTTP answer is a 502 with an
//! Anthropic-style error body, `{"type":"error","error":{"type":"carapace_error",
//! "message":...}}`: the Anthropic SDKs read `error.type` and `error.message`, the OpenAI
//! SDKs `error.message`, so both show the daemon's reason. An error after the head has
//! gone out aborts the body, so the client sees a broken response, never a short one.
//!
//! The JSON-RPC framing (one object per line) is written here with tokio, apart from the
//! blocking client of `cara ipc`.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The hidden subcommand `main` dispatches here before parsing anything else.
pub const ENTRY_ARG: &str = "__agent-entry";
/// The variable naming the pass-through's port.
pub const PORT_ENV: &str = "CARAPACE_PASSTHROUGH_PORT";
/// The port when [`PORT_ENV`] is not set.
pub const DEFAULT_PORT: u16 = 4317;
/// The variable naming the agent socket.
pub const SOCKET_ENV: &str = "CARAPACE_SOCKET";
/// The largest request body taken from the agent (the daemon's own limit).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The longest line read from the socket; the daemon's chunks are at most 256 KiB.
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// The id of the one request of each connection.
const REQUEST_ID: u64 = 1;

/// Headers that describe one HTTP hop, not the request or response itself.
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Runs `cara __agent-entry [--] CMD ARGS...` (`args` without the program and the
/// subcommand) and returns CMD's exit code, 128 + the signal if a signal ended it.
pub fn entry_main(args: Vec<OsString>) -> ExitCode {
    let command = match args.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => &args[..],
    };
    if command.is_empty() {
        eprintln!("usage: cara {ENTRY_ARG} -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    }
    start_listener();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cara: cannot start: {e}");
            return ExitCode::from(126);
        }
    };
    ExitCode::from(runtime.block_on(supervise(command)))
}

/// Binds the pass-through's port now (so it listens before CMD starts) and serves it on a
/// thread of its own; when that fails, says so and carries on without it.
fn start_listener() {
    let warn = |what: &str| eprintln!("cara: warning: no provider pass-through: {what}");
    let Some(socket) = std::env::var_os(SOCKET_ENV) else {
        warn(&format!("{SOCKET_ENV} is not set"));
        return;
    };
    let port = match std::env::var(PORT_ENV) {
        Err(_) => DEFAULT_PORT,
        Ok(p) => match p.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                warn(&format!("{PORT_ENV}={p:?} is not a port"));
                return;
            }
        },
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            warn(&format!("cannot listen on {addr}: {e}"));
            return;
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        warn(&format!("cannot listen on {addr}: {e}"));
        return;
    }
    let socket = PathBuf::from(socket);
    let spawned = std::thread::Builder::new()
        .name("passthrough".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    rt.block_on(async {
                        serve(tokio::net::TcpListener::from_std(listener)?, socket).await
                    })
                });
            if let Err(e) = served {
                eprintln!("cara: warning: the provider pass-through stopped: {e}");
            }
        });
    if let Err(e) = spawned {
        warn(&e.to_string());
    }
}

/// Serves the pass-through on `listener`, each request over a new connection to the
/// agent socket at `socket`.
pub async fn serve(listener: tokio::net::TcpListener, socket: PathBuf) -> std::io::Result<()> {
    axum::serve(listener, router(socket)).await
}

fn router(socket: PathBuf) -> Router {
    Router::new().fallback(forward).with_state(Arc::new(socket))
}

/// `/PROVIDER/REST?QUERY` -> (`PROVIDER`, `/REST?QUERY`); `/PROVIDER` alone is `/`.
/// `None` when there is no provider segment.
fn split_target(path_and_query: &str) -> Option<(&str, String)> {
    let rest = path_and_query.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (provider, path) = rest.split_at(end);
    if provider.is_empty() {
        return None;
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Some((provider, path))
}

/// An error the agent's model client can read: Anthropic's error shape, which OpenAI's
/// clients read too (`error.message`).
fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": "carapace_error", "message": message},
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// What the socket connection reports to the HTTP side.
#[derive(Debug)]
enum Reply {
    Head {
        status: u16,
        headers: Vec<(String, String)>,
    },
    Chunk(Bytes),
    Done,
    Failed(String),
}

async fn forward(State(socket): State<Arc<PathBuf>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Some((provider, path)) = split_target(target) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no provider in the path; use http://127.0.0.1:PORT/PROVIDER/... as the base URL",
        );
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter(|(n, _)| !HOP_HEADERS.contains(&n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let request = json!({
        "jsonrpc": "2.0",
        "id": REQUEST_ID,
        "method": "provider.request",
        "params": {
            "provider": provider,
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
            "body_b64": BASE64.encode(&body),
        },
    });
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(converse(socket, request, tx));
    match rx.recv().await {
        Some(Reply::Head { status, headers }) => streamed(status, &headers, rx),
        Some(Reply::Failed(message)) => error_response(StatusCode::BAD_GATEWAY, &message),
        Some(Reply::Chunk(_) | Reply::Done) | None => error_response(
            StatusCode::BAD_GATEWAY,
            "the daemon ended the request without a response",
        ),
    }
}

/// The response whose body is the chunks still to come; anything but a clean end
/// aborts it.
fn streamed(status: u16, headers: &[(String, String)], rx: mpsc::Receiver<Reply>) -> Response {
    let Ok(status) = StatusCode::from_u16(status) else {
        return error_response(StatusCode::BAD_GATEWAY, "the provider's status is invalid");
    };
    let body = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        loop {
            let item = match rx.recv().await {
                Some(Reply::Chunk(b)) => Ok(b),
                Some(Reply::Done) => return None,
                Some(Reply::Head { .. }) => continue,
                Some(Reply::Failed(m)) => Err(std::io::Error::other(m)),
                None => Err(std::io::Error::other("the daemon's answer broke off")),
            };
            let next = item.is_ok().then_some(rx);
            return Some((item, next));
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if HOP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// Sends `request` on a new connection to the socket and reports what comes back until
/// the response to it; stops when nobody listens any more (dropping the connection, so
/// the daemon stops too).
async fn converse(socket: Arc<PathBuf>, request: Value, tx: mpsc::Sender<Reply>) {
    let failed = match exchange(&socket, &request, &tx).await {
        Ok(()) => return,
        Err(message) => message,
    };
    let _ = tx.send(Reply::Failed(failed)).await;
}

async fn exchange(
    socket: &std::path::Path,
    request: &Value,
    tx: &mpsc::Sender<Reply>,
) -> Result<(), String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the carapace daemon at {}: {e}",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = request.to_string().into_bytes();
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| format!("cannot send to the carapace daemon: {e}"))?;
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| format!("reading from the carapace daemon: {e}"))?;
        if n == 0 {
            return Err("the carapace daemon closed the connection".into());
        }
        if buf.last() != Some(&b'\n') {
            return Err("the carapace daemon sent a line that is too long".into());
        }
        let message: Value = serde_json::from_slice(&buf)
            .map_err(|_| "the carapace daemon sent a line that is not JSON".to_string())?;
        let reply = match interpret(&message)? {
            Some(reply) => reply,
            None => continue,
        };
        let last = matches!(reply, Reply::Done);
        if tx.send(reply).await.is_err() || last {
            return Ok(());
        }
    }
}

/// What one message from the socket means for our request; `None` for messages about
/// something else, `Err` for the final error answer.
fn interpret(message: &Value) -> Result<Option<Reply>, String> {
    let ours = |v: Option<&Value>| v.and_then(Value::as_u64) == Some(REQUEST_ID);
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        let params = &message["params"];
        if !ours(params.get("id")) {
            return Ok(None);
        }
        return match method {
            "provider.head" => {
                let status = params["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or("the carapace daemon sent a head without a status")?;
                let headers = params["headers"]
                    .as_array()
                    .map(|hs| {
                        hs.iter()
                            .filter_map(|h| {
                                Some((
                                    h.get(0)?.as_str()?.to_string(),
                                    h.get(1)?.as_str()?.to_string(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Some(Reply::Head { status, headers }))
            }
            "provider.chunk" => {
                let data = params["data_b64"]
                    .as_str()
                    .and_then(|d| BASE64.decode(d).ok())
                    .ok_or("the carapace daemon sent a chunk that is not base64")?;
                Ok(Some(Reply::Chunk(Bytes::from(data))))
            }
            _ => Ok(None),
        };
    }
    if !ours(message.get("id")) {
        // `CALLER_UNKNOWN` comes with id null before the connection closes.
        if let Some(e) = message.get("error") {
            return Err(error_text(e));
        }
        return Ok(None);
    }
    if let Some(e) = message.get("error") {
        return Err(error_text(e));
    }
    Ok(Some(Reply::Done))
}

/// The message of a JSON-RPC error, with its stable code name when there is one.
fn error_text(error: &Value) -> String {
    let message = error["message"]
        .as_str()
        .unwrap_or("the carapace daemon refused");
    match error["data"]["code"].as_str() {
        Some(code) => format!("{code}: {message}"),
        None => message.to_string(),
    }
}

/// Runs the command with this process's stdio and environment, passes SIGTERM, SIGINT
/// and SIGHUP on to it, and returns its exit code (128 + the signal that ended it; 127
/// when it does not exist, 126 when it cannot be run).
async fn supervise(command: &[OsString]) -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let (program, args) = command.split_first().expect("a command");
    // Listening first, so no signal falls between the start and the forwarding.
    let kinds = [
        (SignalKind::terminate(), rustix::process::Signal::TERM),
        (SignalKind::interrupt(), rustix::process::Signal::INT),
        (SignalKind::hangup(), rustix::process::Signal::HUP),
    ];
    let mut signals = Vec::new();
    for (kind, sig) in kinds {
        match signal(kind) {
            Ok(s) => signals.push((s, sig)),
            Err(e) => eprintln!("cara: warning: signals will not reach the command: {e}"),
        }
    }
    let mut child = match tokio::process::Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cara: cannot run {}: {e}", program.to_string_lossy());
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => exit_code(status),
                    Err(e) => {
                        eprintln!("cara: waiting for the command: {e}");
                        126
                    }
                };
            }
            sig = next_signal(&mut signals) => {
                // The id is gone once the child is reaped, so a recycled pid is never hit.
                let pid = child.id().and_then(|p| i32::try_from(p).ok());
                if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    }
}

/// The next of these signals to arrive, as the signal to send on.
async fn next_signal(
    signals: &mut [(tokio::signal::unix::Signal, rustix::process::Signal)],
) -> rustix::process::Signal {
    std::future::poll_fn(|cx| {
        for (stream, sig) in signals.iter_mut() {
            if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                return std::task::Poll::Ready(*sig);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 126,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::net::UnixListener;
    use tokio::sync::Notify;

    use super::*;

    #[test]
    fn the_first_segment_names_the_provider() {
        #[track_caller]
        fn check(input: &str, expected: Option<(&str, &str)>) {
            let got = split_target(input);
            let got = got.as_ref().map(|(p, rest)| (*p, rest.as_str()));
            assert_eq!(got, expected, "{input}");
        }
        check(
            "/anthropic/v1/messages?beta=true",
            Some(("anthropic", "/v1/messages?beta=true")),
        );
        check(
            "/openai/v1/chat/completions",
            Some(("openai", "/v1/chat/completions")),
        );
        check("/openai", Some(("openai", "/")));
        check("/openai/", Some(("openai", "/")));
        check("/openai?x=1", Some(("openai", "/?x=1")));
        check(
            "/gemini/v1beta/models/g:generateContent?alt=sse",
            Some(("gemini", "/v1beta/models/g:generateContent?alt=sse")),
        );
        check("/", None);
        check("//v1/messages", None);
        check("/?x=1", None);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = |args: &[&str]| {
            let command: Vec<OsString> = args.iter().map(OsString::from).collect();
            rt.block_on(supervise(&command))
        };
        assert_eq!(run(&["sh", "-c", "exit 3"]), 3);
        assert_eq!(run(&["true"]), 0);
        assert_eq!(run(&["sh", "-c", "kill -KILL $$"]), 128 + 9);
        assert_eq!(run(&["/nonexistent/agent"]), 127);
    }

    #[test]
    fn a_hangup_is_passed_on_to_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = format!(
            "trap 'exit 42' HUP; touch {}; while :; do sleep 0.02; done",
            ready.display()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let command: Vec<OsString> = ["sh", "-c", &script].iter().map(OsString::from).collect();
        let code = rt.block_on(async {
            let run = supervise(&command);
            let poke = async {
                while !ready.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // To this process: the one the sandbox's init would signal.
                let me = rustix::process::Pid::from_raw(std::process::id() as i32).unwrap();
                rustix::process::kill_process(me, rustix::process::Signal::HUP).unwrap();
            };
            let (code, ()) = tokio::join!(run, poke);
            code
        });
        assert_eq!(code, 42);
    }

    /// A fake agent socket: answers `provider.request` for `anthropic` with a head and
    /// three chunks (the last two only after the test has read the first), for `cutoff`
    /// with a head, a chunk and an error, and for anything else with an error.
    struct FakeSocket {
        path: PathBuf,
        params: Arc<Mutex<Vec<Value>>>,
        go_on: Arc<Notify>,
        _dir: tempfile::TempDir,
    }

    async fn fake_socket() -> FakeSocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let params = Arc::new(Mutex::new(Vec::new()));
        let go_on = Arc::new(Notify::new());
        let (seen, go) = (params.clone(), go_on.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (seen, go) = (seen.clone(), go.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    BufReader::new(read).read_line(&mut line).await.unwrap();
                    let req: Value = serde_json::from_str(&line).unwrap();
                    assert_eq!(req["method"], "provider.request");
                    let id = req["id"].clone();
                    let params = req["params"].clone();
                    seen.lock().unwrap().push(params.clone());
                    let mut send = async |v: Value| {
                        let mut line = v.to_string();
                        line.push('\n');
                        write.write_all(line.as_bytes()).await.unwrap();
                    };
                    let head = json!({"jsonrpc": "2.0", "method": "provider.head", "params": {
                        "id": id, "status": 200,
                        "headers": [["content-type", "text/event-stream"], ["x-request-id", "r1"],
                                    ["content-length", "999"], ["transfer-encoding", "gzip"]],
                    }});
                    let chunk = |text: &str| {
                        json!({"jsonrpc": "2.0", "method": "provider.chunk", "params": {
                            "id": id, "data_b64": BASE64.encode(text),
                        }})
                    };
                    let error = json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32003, "message": "provider \"nope\" is not configured for pass-through",
                        "data": {"code": "UNAUTHORIZED", "stage": "authorize", "retriable": false},
                    }});
                    match params["provider"].as_str().unwrap() {
                        "anthropic" => {
                            send(head).await;
                            // Another request's notification on the way is ignored.
                            send(json!({"jsonrpc": "2.0", "method": "provider.chunk",
                                "params": {"id": 99, "data_b64": BASE64.encode("not ours")}}))
                            .await;
                            send(chunk("event: one\n\n")).await;
                            go.notified().await;
                            send(chunk("event: two\n\n")).await;
                            send(chunk("event: three\n\n")).await;
                            send(json!({"jsonrpc": "2.0", "id": id, "result": {"done": true}}))
                                .await;
                        }
                        "cutoff" => {
                            send(head).await;
                            send(chunk("event: one\n\n")).await;
                            let mut error = error;
                            error["error"]["message"] =
                                json!("response of provider cutoff broke off");
                            send(error).await;
                        }
                        _ => send(error).await,
                    }
                });
            }
        });
        FakeSocket {
            path,
            params,
            go_on,
            _dir: dir,
        }
    }

    async fn entry(socket: &FakeSocket) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, socket.path.clone()));
        addr
    }

    #[tokio::test]
    async fn a_stream_passes_chunk_by_chunk_in_order() {
        let socket = fake_socket().await;
        let addr = entry(&socket).await;
        let client = reqwest::Client::new();
        let mut resp = client
            .post(format!("http://{addr}/anthropic/v1/messages?beta=true"))
            .header("content-type", "application/json")
            .header("x-api-key", "placeholder")
            .body("{\"stream\":true}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["x-request-id"], "r1");
        assert_eq!(h["transfer-encoding"], "chunked");
        assert!(h.get("content-length").is_none());

        let mut got = Vec::new();
        let deadline = Duration::from_secs(10);
        let first = tokio::time::timeout(deadline, resp.chunk()).await.unwrap();
        got.extend_from_slice(&first.unwrap().unwrap());
        // The daemon sends the rest only now: the first chunk was not held back.
        assert_eq!(got, b"event: one\n\n");
        socket.go_on.notify_one();
        while let Some(c) = tokio::time::timeout(deadline, resp.chunk())
            .await
            .unwrap()
            .unwrap()
        {
            got.extend_from_slice(&c);
        }
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "event: one\n\nevent: two\n\nevent: three\n\n"
        );

        let params = socket.params.lock().unwrap()[0].clone();
        assert_eq!(params["provider"], "anthropic");
        assert_eq!(params["method"], "POST");
        assert_eq!(params["path"], "/v1/messages?beta=true");
        assert_eq!(
            BASE64.decode(params["body_b64"].as_str().unwrap()).unwrap(),
            b"{\"stream\":true}"
        );
        let headers = params["headers"].as_array().unwrap();
        assert!(headers.contains(&json!(["content-type", "application/json"])));
        assert!(headers.contains(&json!(["x-api-key", "placeholder"])));
        assert!(
            !headers
                .iter()
                .any(|h| h[0] == "host" || h[0] == "content-length")
        );
    }

    #[tokio::test]
    async fn an_error_answer_is_a_502_with_a_json_body() {
        let socket = fake_socket().await;
        let addr = entry(&socket).await;
        let resp = reqwest::get(format!("http://{addr}/nope/v1/models"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "carapace_error",
                "message": "UNAUTHORIZED: provider \"nope\" is not configured for pass-through"}})
        );

        let resp = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(resp.status(), 404);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "carapace_error");
    }

    #[tokio::test]
    async fn an_error_after_the_head_breaks_the_body() {
        let socket = fake_socket().await;
        let addr = entry(&socket).await;
        // The head may not even have gone out when the error comes; either way the
        // client sees a broken response, never a short one that looks complete.
        match reqwest::get(format!("http://{addr}/cutoff/v1/messages")).await {
            Err(e) => assert!(e.is_request(), "{e}"),
            Ok(resp) => {
                assert_eq!(resp.status(), 200);
                assert!(resp.bytes().await.is_err());
            }
        }
    }

    #[tokio::test]
    async fn no_daemon_is_a_502() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, dir.path().join("absent.sock")));
        let resp = reqwest::get(format!("http://{addr}/anthropic/v1/models"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("cannot reach the carapace daemon"),
            "{message}"
        );
    }
}
