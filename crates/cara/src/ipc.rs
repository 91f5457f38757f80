//! The agent socket's client, for use inside a Carapace sandbox: `cara ipc TOPIC [JSON]`
//! and the small blocking library the shims (`shim.rs`) call. It speaks JSON-RPC 2.0, one
//! object per line, over the Unix socket named by `CARAPACE_SOCKET` (docs/agent-socket.md).
//!
//! It never names the caller (the daemon learns that from the connection), never retries a
//! call on its own (a retried `channel.send` is a second message), and never waits on a
//! line without a bound on its size.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

/// The variable the sandbox sets to the socket's path.
pub const SOCKET_ENV: &str = "CARAPACE_SOCKET";

/// The longest line the client reads from the daemon (16 MiB); a longer one is an error,
/// not an allocation without end.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Notifications kept while a call waits for its response; later ones are dropped, so a
/// stream of `provider.chunk`s read through `cara ipc` cannot fill the memory.
const MAX_QUEUED: usize = 1024;

/// A failure to talk to the daemon at all: no socket, a broken connection, or lines
/// that are not the protocol.
#[derive(Debug)]
pub enum IpcError {
    /// `CARAPACE_SOCKET` is not set.
    NoSocket,
    /// The socket could not be connected to.
    Connect {
        /// The path from `CARAPACE_SOCKET`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The read timeout set with [`IpcClient::set_read_timeout`] passed.
    TimedOut,
    /// The daemon closed the connection before answering.
    Closed,
    /// The daemon sent a line longer than the limit.
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The daemon sent something that is not JSON-RPC 2.0 as the socket speaks it.
    Protocol(String),
}

impl fmt::Display for IpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpcError::NoSocket => write!(
                f,
                "{SOCKET_ENV} is not set; cara ipc runs inside a Carapace sandbox (cara agent run)"
            ),
            IpcError::Connect { path, source } => write!(
                f,
                "cannot connect to the agent socket {}: {source}",
                path.display()
            ),
            IpcError::Io(e) => write!(f, "agent socket: {e}"),
            IpcError::TimedOut => write!(f, "timed out waiting for the daemon"),
            IpcError::Closed => write!(f, "the daemon closed the connection without an answer"),
            IpcError::LineTooLong { limit } => {
                write!(f, "the daemon sent a line longer than {limit} bytes")
            }
            IpcError::Protocol(msg) => write!(f, "protocol error: {msg}"),
        }
    }
}

impl std::error::Error for IpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IpcError::Connect { source, .. } => Some(source),
            IpcError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A JSON-RPC error the daemon answered: a refusal of the Gate or a malformed request.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The stable numeric code (`-32003` is `UNAUTHORIZED`, ...).
    pub code: i64,
    /// The daemon's message.
    pub message: String,
    /// The Gate's typed error (`code`, `stage`, `retriable`, ...), or null.
    pub data: Value,
}

impl RpcError {
    /// The error's name: `data.code` when the daemon sent one (`UNAUTHORIZED`), else the
    /// JSON-RPC name of the code (`INVALID_PARAMS`), else the number.
    pub fn name(&self) -> String {
        if let Some(name) = self.data.get("code").and_then(Value::as_str) {
            return name.to_string();
        }
        match self.code {
            -32700 => "PARSE_ERROR".into(),
            -32600 => "INVALID_REQUEST".into(),
            -32601 => "METHOD_NOT_FOUND".into(),
            -32602 => "INVALID_PARAMS".into(),
            -32001 => "UNKNOWN_TOOL".into(),
            -32002 => "VALIDATION_FAILED".into(),
            -32003 => "UNAUTHORIZED".into(),
            -32004 => "RATE_LIMITED".into(),
            -32005 => "POLICY_DENIED".into(),
            -32006 => "CONFIRMATION_DENIED".into(),
            -32007 => "CONFIRMATION_TIMEOUT".into(),
            -32008 => "TOOL_TIMEOUT".into(),
            -32009 => "TOOL_ERROR".into(),
            -32010 => "INTERNAL".into(),
            -32020 => "CALLER_UNKNOWN".into(),
            n => n.to_string(),
        }
    }

    /// The error object as `cara ipc` prints it: `{"code","message","data"}`.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message, "data": self.data })
    }

    fn from_value(error: &Value) -> Option<RpcError> {
        Some(RpcError {
            code: error.get("code")?.as_i64()?,
            message: error.get("message")?.as_str()?.to_string(),
            data: error.get("data").cloned().unwrap_or(Value::Null),
        })
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.message)
    }
}

/// Why a call has no result: the daemon refused it, or the daemon could not be asked.
#[derive(Debug)]
pub enum CallError {
    /// The daemon answered with a JSON-RPC error.
    Rpc(RpcError),
    /// The connection or the protocol failed.
    Ipc(IpcError),
}

impl From<IpcError> for CallError {
    fn from(e: IpcError) -> Self {
        CallError::Ipc(e)
    }
}

/// A notification from the daemon (`channel.message`, `provider.chunk`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The notification's method.
    pub method: String,
    /// Its params (null when absent).
    pub params: Value,
}

enum Incoming {
    Notification(Notification),
    Response {
        id: Value,
        outcome: Result<Value, RpcError>,
    },
}

/// A blocking connection to the agent socket. Calls are made one at a time; request ids
/// count from 1. After an error other than [`IpcError::TimedOut`] the connection is in
/// an unknown state and should be dropped.
pub struct IpcClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    partial: Vec<u8>,
    next_id: u64,
    max_line: usize,
    queued: VecDeque<Notification>,
}

impl IpcClient {
    /// Connects to the socket named by `CARAPACE_SOCKET`.
    pub fn connect_env() -> Result<IpcClient, IpcError> {
        let path = std::env::var_os(SOCKET_ENV)
            .filter(|p| !p.is_empty())
            .ok_or(IpcError::NoSocket)?;
        IpcClient::connect(Path::new(&path))
    }

    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<IpcClient, IpcError> {
        let stream = UnixStream::connect(path).map_err(|source| IpcError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = BufReader::new(stream.try_clone().map_err(IpcError::Io)?);
        Ok(IpcClient {
            stream,
            reader,
            partial: Vec::new(),
            next_id: 1,
            max_line: MAX_LINE,
            queued: VecDeque::new(),
        })
    }

    /// Sets how long one read may wait (`None`, the default, waits as long as the daemon
    /// takes: an approval can take minutes). A read that waits longer fails with
    /// [`IpcError::TimedOut`] and leaves the connection usable.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), IpcError> {
        // A zero timeout means "none" to the kernel; the caller meant "now".
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        self.stream.set_read_timeout(timeout).map_err(IpcError::Io)
    }

    /// Sends one request and waits for its response. Notifications that arrive meanwhile
    /// are kept for [`IpcClient::next_notification`] (up to a bound).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| IpcError::Protocol(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        self.stream
            .write_all(&line)
            .and_then(|()| self.stream.flush())
            .map_err(IpcError::Io)?;
        loop {
            match self.read_message()?.ok_or(IpcError::Closed)? {
                Incoming::Notification(n) => {
                    if self.queued.len() < MAX_QUEUED {
                        self.queued.push_back(n);
                    }
                }
                Incoming::Response { id: got, outcome } => {
                    // The daemon answers a refused caller once, with id null, and closes.
                    if got == json!(id) || (got.is_null() && outcome.is_err()) {
                        return outcome.map_err(CallError::Rpc);
                    }
                    return Err(IpcError::Protocol(format!(
                        "a response to request {got} arrived while waiting for request {id}"
                    ))
                    .into());
                }
            }
        }
    }

    /// The next notification, or `None` when the daemon closed the connection. Responses
    /// to no pending call are skipped.
    pub fn next_notification(&mut self) -> Result<Option<Notification>, IpcError> {
        if let Some(n) = self.queued.pop_front() {
            return Ok(Some(n));
        }
        loop {
            match self.read_message()? {
                None => return Ok(None),
                Some(Incoming::Notification(n)) => return Ok(Some(n)),
                Some(Incoming::Response { .. }) => continue,
            }
        }
    }

    fn read_message(&mut self) -> Result<Option<Incoming>, IpcError> {
        let Some(line) = self.read_line()? else {
            return Ok(None);
        };
        let value: Value = serde_json::from_slice(&line).map_err(|e| {
            IpcError::Protocol(format!("the daemon sent a line that is not JSON: {e}"))
        })?;
        parse_incoming(value).map(Some)
    }

    /// One line without its `\n`; `None` at a clean end of the connection. Bytes of a line
    /// cut by a timeout are kept for the next read.
    fn read_line(&mut self) -> Result<Option<Vec<u8>>, IpcError> {
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(IpcError::TimedOut);
                }
                Err(e) => return Err(IpcError::Io(e)),
            };
            if buf.is_empty() {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                return Err(IpcError::Protocol(
                    "the connection closed in the middle of a line".into(),
                ));
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let take = newline.map_or(buf.len(), |i| i + 1);
            let content = take - usize::from(newline.is_some());
            if self.partial.len() + content > self.max_line {
                return Err(IpcError::LineTooLong {
                    limit: self.max_line,
                });
            }
            self.partial.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if newline.is_some() {
                let mut line = std::mem::take(&mut self.partial);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
        }
    }
}

fn parse_incoming(value: Value) -> Result<Incoming, IpcError> {
    let Value::Object(mut obj) = value else {
        return Err(IpcError::Protocol(
            "the daemon sent something other than an object".into(),
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(IpcError::Protocol(
            "the daemon's message is not JSON-RPC 2.0".into(),
        ));
    }
    if let Some(id) = obj.remove("id") {
        if let Some(result) = obj.remove("result") {
            return Ok(Incoming::Response {
                id,
                outcome: Ok(result),
            });
        }
        if let Some(error) = obj.get("error") {
            let error = RpcError::from_value(error).ok_or_else(|| {
                IpcError::Protocol("an error without a numeric code and a message".into())
            })?;
            return Ok(Incoming::Response {
                id,
                outcome: Err(error),
            });
        }
        return Err(IpcError::Protocol(
            "a response with neither result nor error".into(),
        ));
    }
    match obj.remove("method") {
        Some(Value::String(method)) => Ok(Incoming::Notification(Notification {
            method,
            params: obj.remove("params").unwrap_or(Value::Null),
        })),
        _ => Err(IpcError::Protocol(
            "a message that is neither a response nor a notification".into(),
        )),
    }
}

/// Call the agent socket from inside a Carapace sandbox: one JSON-RPC request.
#[derive(clap::Args)]
pub struct IpcArgs {
    /// The JSON-RPC method: session.info, tools.list, tools.call, channel.send,
    /// channel.list_chats, channel.history, channel.watch.
    topic: String,
    /// The params as JSON [default: {}]; `-` reads them from standard input.
    json: Option<String>,
}

/// Runs `cara ipc`: the result on stdout (exit 0), the JSON-RPC error object on stderr
/// (exit 1), or a plain message on stderr when the daemon cannot be asked (exit 2). For
/// `channel.watch` it then prints each `channel.message` notification's params, one JSON
/// line each, until the daemon closes the connection.
pub fn run(args: IpcArgs) -> ExitCode {
    let params = match read_params(args.json.as_deref(), io::stdin().lock()) {
        Ok(params) => params,
        Err(msg) => return fail(&msg),
    };
    let mut client = match IpcClient::connect_env() {
        Ok(client) => client,
        Err(e) => return fail(&e.to_string()),
    };
    let result = match client.call(&args.topic, params) {
        Ok(result) => result,
        Err(CallError::Rpc(e)) => {
            eprintln!("{}", e.to_json());
            return ExitCode::from(1);
        }
        Err(CallError::Ipc(e)) => return fail(&e.to_string()),
    };
    let mut out = io::stdout().lock();
    if writeln!(out, "{result}").is_err() {
        return ExitCode::SUCCESS;
    }
    if args.topic == "channel.watch" {
        loop {
            match client.next_notification() {
                Ok(Some(n)) if n.method == "channel.message" => {
                    if writeln!(out, "{}", n.params).is_err() {
                        // The reader went away (`| head -1`): that ends a watch normally.
                        break;
                    }
                }
                Ok(Some(n)) if n.method == "channel.watch_ended" => break,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return fail(&e.to_string()),
            }
        }
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("cara ipc: {msg}");
    ExitCode::from(2)
}

/// The params: `{}` without an argument, standard input for `-`, else the argument.
fn read_params(arg: Option<&str>, mut stdin: impl Read) -> Result<Value, String> {
    let text = match arg {
        None => return Ok(json!({})),
        Some("-") => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the params from standard input: {e}"))?;
            text
        }
        Some(text) => text.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("the params are not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io::BufRead as _;
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    /// A fake daemon on a socket in a temporary directory: for each request line it reads,
    /// it writes the canned lines `answer` returns for it.
    fn fake_daemon(
        answer: impl Fn(Value) -> Vec<String> + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<Value>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut seen = Vec::new();
            for line in io::BufReader::new(stream).lines() {
                let request: Value = serde_json::from_str(&line.unwrap()).unwrap();
                seen.push(request.clone());
                for reply in answer(request) {
                    if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
                        return seen;
                    }
                }
            }
            seen
        });
        (dir, path, handle)
    }

    #[test]
    fn a_call_sends_one_request_and_returns_its_result() {
        let (_dir, path, daemon) = fake_daemon(|req| {
            vec![
                json!({"jsonrpc":"2.0","method":"channel.message","params":{"n":1}}).to_string(),
                json!({"jsonrpc":"2.0","id":req["id"],"result":{"sent":true}}).to_string(),
            ]
        });
        let mut client = IpcClient::connect(&path).unwrap();
        let result = client
            .call(
                "channel.send",
                json!({"channel":"imsg","to":"+1","text":"hi"}),
            )
            .unwrap();
        assert_eq!(result, json!({"sent": true}));
        // The notification that came first is kept for the watcher.
        assert_eq!(
            client.next_notification().unwrap(),
            Some(Notification {
                method: "channel.message".into(),
                params: json!({"n": 1})
            })
        );
        drop(client);
        let seen = daemon.join().unwrap();
        assert_eq!(
            seen,
            vec![json!({"jsonrpc":"2.0","id":1,"method":"channel.send",
                        "params":{"channel":"imsg","to":"+1","text":"hi"}})]
        );
    }

    #[test]
    fn a_json_rpc_error_is_an_rpc_error_with_its_name() {
        let (_dir, path, _daemon) = fake_daemon(|req| {
            vec![
                json!({"jsonrpc":"2.0","id":req["id"],"error":{"code":-32003,
                "message":"+1999 is not on the outbound allowlist of channel imsg",
                "data":{"code":"UNAUTHORIZED","stage":"authorize","retriable":false}}})
                .to_string(),
            ]
        });
        let mut client = IpcClient::connect(&path).unwrap();
        let Err(CallError::Rpc(e)) = client.call("channel.send", json!({})) else {
            panic!("expected a JSON-RPC error");
        };
        assert_eq!(e.code, -32003);
        assert_eq!(
            e.to_string(),
            "UNAUTHORIZED: +1999 is not on the outbound allowlist of channel imsg"
        );
    }

    #[test]
    fn a_refused_caller_gets_the_error_with_id_null() {
        let (_dir, path, _daemon) = fake_daemon(|_| {
            vec![
                json!({"jsonrpc":"2.0","id":null,"error":{"code":-32020,
                "message":"caller unknown"}})
                .to_string(),
            ]
        });
        let mut client = IpcClient::connect(&path).unwrap();
        let Err(CallError::Rpc(e)) = client.call("session.info", json!({})) else {
            panic!("expected a JSON-RPC error");
        };
        assert_eq!(e.name(), "CALLER_UNKNOWN");
        assert_eq!(e.data, Value::Null);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_not_a_hang() {
        let (_dir, path, _daemon) = fake_daemon(|_| vec!["x".repeat(4096)]);
        let mut client = IpcClient::connect(&path).unwrap();
        client.max_line = 1000;
        let Err(CallError::Ipc(IpcError::LineTooLong { limit: 1000 })) =
            client.call("tools.list", json!({}))
        else {
            panic!("expected LineTooLong");
        };
    }

    #[test]
    fn closing_without_an_answer_and_garbage_are_protocol_failures() {
        let (_dir, path, _daemon) = fake_daemon(|_| vec![]);
        let mut client = IpcClient::connect(&path).unwrap();
        client.stream.shutdown(std::net::Shutdown::Read).unwrap();
        assert!(matches!(
            client.call("tools.list", json!({})),
            Err(CallError::Ipc(IpcError::Closed))
        ));

        let (_dir, path, _daemon) = fake_daemon(|_| vec!["not json".into()]);
        let mut client = IpcClient::connect(&path).unwrap();
        assert!(matches!(
            client.call("tools.list", json!({})),
            Err(CallError::Ipc(IpcError::Protocol(_)))
        ));

        let (_dir, path, _daemon) =
            fake_daemon(|_| vec![json!({"jsonrpc":"2.0","id":7,"result":{}}).to_string()]);
        let mut client = IpcClient::connect(&path).unwrap();
        assert!(matches!(
            client.call("tools.list", json!({})),
            Err(CallError::Ipc(IpcError::Protocol(_)))
        ));
    }

    #[test]
    fn a_read_timeout_keeps_the_connection_usable() {
        let (_dir, path, _daemon) = fake_daemon(|req| {
            thread::sleep(Duration::from_millis(300));
            vec![json!({"jsonrpc":"2.0","id":req["id"],"result":{"watching":true}}).to_string()]
        });
        let mut client = IpcClient::connect(&path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        assert!(matches!(
            client.call("channel.watch", json!({})),
            Err(CallError::Ipc(IpcError::TimedOut))
        ));
        client.set_read_timeout(None).unwrap();
        // Closing our side ends the fake daemon, which then closes its side too.
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
        // The late answer is a response to no pending call: skipped; then the end.
        assert_eq!(client.next_notification().unwrap(), None);
    }

    #[test]
    fn connect_env_needs_the_variable() {
        // Only the message is checked here; the variable itself is set per process by
        // the integration tests.
        assert_eq!(
            IpcError::NoSocket.to_string(),
            "CARAPACE_SOCKET is not set; cara ipc runs inside a Carapace sandbox (cara agent run)"
        );
    }

    #[test]
    fn params_default_to_an_empty_object_and_dash_reads_stdin() {
        assert_eq!(read_params(None, io::empty()), Ok(json!({})));
        assert_eq!(
            read_params(Some("-"), &b"{\"name\":\"x\"}"[..]),
            Ok(json!({"name": "x"}))
        );
        assert_eq!(read_params(Some("[1]"), io::empty()), Ok(json!([1])));
        assert!(
            read_params(Some("{nope"), io::empty())
                .unwrap_err()
                .starts_with("the params are not valid JSON")
        );
    }
}
