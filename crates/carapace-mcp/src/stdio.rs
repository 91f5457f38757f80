//! Starting a stdio server: in the sandbox (the default) or, when its entry says
//! `sandbox = "none"`, as a plain child of the daemon with a cleared environment.

use std::process::Stdio;

use carapace_sandbox::{Bind, Network, Sandbox, SandboxSpec, Stdio3};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::tunnel::StdioEgress;

/// A started server process: our ends of its stdin and stdout, and a task that ends
/// when the process does (aborting it kills the process and everything it started).
pub(crate) struct Process {
    pub stdout: pipe::Receiver,
    pub stdin: pipe::Sender,
    pub stderr: pipe::Receiver,
    pub exited: JoinHandle<String>,
}

/// Starts `command` with exactly `env`. With `egress` (sandboxed servers only) the relay
/// runs first inside, with the daemon's proxy socket and the relay program shown there.
pub(crate) fn spawn(
    command: &[String],
    env: &[(String, String)],
    sandbox: Option<&(Sandbox, SandboxSpec)>,
    egress: Option<&StdioEgress>,
) -> std::io::Result<Process> {
    let (in_tx, in_rx) = pipe::pipe()?;
    let (out_tx, out_rx) = pipe::pipe()?;
    let (err_tx, err_rx) = pipe::pipe()?;
    let exited = match sandbox {
        Some((sb, template)) => {
            let mut spec = template.clone();
            spec.argv = command.to_vec();
            spec.env = env.to_vec();
            if let Some(e) = egress {
                spec.argv = crate::relay::argv(command);
                spec.binds.push(Bind {
                    src: e.relay.clone(),
                    dst: crate::relay::RELAY_INSIDE.into(),
                    writable: false,
                });
                spec.network = Network::UnixSocket {
                    host: e.socket.clone(),
                    inside: crate::relay::SOCKET_INSIDE.into(),
                };
            }
            let stdio = Stdio3 {
                stdin: in_rx.into_blocking_fd()?,
                stdout: out_tx.into_blocking_fd()?,
                stderr: err_tx.into_blocking_fd()?,
            };
            let sb = sb.clone();
            tokio::spawn(async move {
                let (started, _ns) = tokio::sync::oneshot::channel();
                match sb.run_attached(&spec, stdio, started).await {
                    Ok(status) => exit_text(status),
                    Err(e) => format!("the sandbox could not start it: {e}"),
                }
            })
        }
        None => {
            let mut cmd = tokio::process::Command::new(&command[0]);
            cmd.args(&command[1..])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::from(in_rx.into_blocking_fd()?))
                .stdout(Stdio::from(out_tx.into_blocking_fd()?))
                .stderr(Stdio::from(err_tx.into_blocking_fd()?))
                .kill_on_drop(true);
            // Its own process group, so a signal meant for the daemon's terminal does
            // not reach it and it is not left behind by a killed daemon's group.
            cmd.process_group(0);
            let mut child = cmd.spawn()?;
            drop(cmd);
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) => match status.code() {
                        Some(c) => exit_text(c),
                        None => {
                            use std::os::unix::process::ExitStatusExt;
                            exit_text(128 + status.signal().unwrap_or(0))
                        }
                    },
                    Err(e) => format!("cannot wait for it: {e}"),
                }
            })
        }
    };
    Ok(Process {
        stdout: out_rx,
        stdin: in_tx,
        stderr: err_rx,
        exited,
    })
}

fn exit_text(status: i32) -> String {
    if status > 128 {
        format!("it was killed by signal {}", status - 128)
    } else {
        format!("it exited with status {status}")
    }
}

/// Keeps the last lines of a server's stderr (each cut to 500 bytes), for `cara mcp
/// list` and `test`; the rest is read and dropped so the server never blocks on it.
pub(crate) fn drain_stderr(
    stderr: pipe::Receiver,
    tail: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // A line without end is read in pieces; each piece is one entry.
            let n = match (&mut lines).take(4096).read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut line = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
            if line.is_empty() {
                continue;
            }
            if line.len() > 500 {
                let mut end = 500;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                line.truncate(end);
                line.push('…');
            }
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == crate::STDERR_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    })
}

use tokio::io::AsyncReadExt as _;

/// A server's stdout that fails the read once a message (one line) grows past `max`
/// bytes. rmcp drops an oversized line and reads on, which leaves the call it answered
/// waiting for its timeout; a failed read closes the connection instead, so the call
/// ends now with an error and the server is restarted.
pub(crate) struct LineLimit<R> {
    inner: R,
    max: usize,
    /// Bytes since the last newline.
    run: usize,
}

impl<R> LineLimit<R> {
    pub(crate) fn new(inner: R, max: usize) -> LineLimit<R> {
        LineLimit { inner, max, run: 0 }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LineLimit<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        for &b in &buf.filled()[before..] {
            if b == b'\n' {
                this.run = 0;
                continue;
            }
            this.run += 1;
            if this.run > this.max {
                tracing::warn!(
                    max = this.max,
                    "an MCP server sent a message too long to read; closing it"
                );
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a message longer than {} bytes", this.max),
                )));
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}
