//! `cara __mcp-relay -- CMD ARGS...`: the first program in the sandbox of a stdio server
//! with `network = "egress"`.
//!
//! It listens on an ephemeral port of the sandbox's loopback, runs CMD with
//! `HTTPS_PROXY` (and its spellings) pointing there, and carries each connection byte
//! for byte to the daemon's socket at [`SOCKET_INSIDE`], where the proxy (`tunnel.rs`,
//! set up from [`crate::StdioEgress`]) reads the CONNECT request and decides. Nothing
//! here is trusted: the server could write to the socket itself, and the decision is the
//! daemon's. CMD's stdin and stdout are this process's, so the MCP messages pass
//! untouched; its exit status is this process's.

use std::ffi::OsString;
use std::process::ExitCode;

use tokio::net::{TcpListener, UnixStream};

/// The hidden subcommand the `cara` binary dispatches here.
pub const ENTRY_ARG: &str = "__mcp-relay";
/// Where the relay program appears inside the sandbox.
pub const RELAY_INSIDE: &str = "/run/carapace/bin/cara";
/// Where the daemon's proxy socket appears inside the sandbox.
pub const SOCKET_INSIDE: &str = "/run/carapace/egress.sock";
/// Hosts the server reaches without the proxy: its own loopback.
const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// The argv of a sandboxed server that gets egress: the relay, then `command`.
pub(crate) fn argv(command: &[String]) -> Vec<String> {
    let mut argv = vec![RELAY_INSIDE.to_string(), ENTRY_ARG.into(), "--".into()];
    argv.extend(command.iter().cloned());
    argv
}

/// Runs `__mcp-relay [--] CMD ARGS...` (`args` without the program and the subcommand)
/// and returns CMD's exit code, 128 + the signal if a signal ended it.
pub fn relay_main(args: Vec<OsString>) -> ExitCode {
    let command = match args.split_first() {
        Some((first, rest)) if first == "--" => rest,
        _ => &args[..],
    };
    if command.is_empty() {
        eprintln!("usage: cara {ENTRY_ARG} -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("carapace relay: cannot start: {e}");
            return ExitCode::from(125);
        }
    };
    runtime.block_on(run(command))
}

async fn run(command: &[OsString]) -> ExitCode {
    let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("carapace relay: cannot listen on loopback: {e}");
            return ExitCode::from(125);
        }
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => {
            eprintln!("carapace relay: {e}");
            return ExitCode::from(125);
        }
    };
    let proxy = format!("http://127.0.0.1:{port}");
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        cmd.env(var, &proxy);
    }
    cmd.env("NO_PROXY", NO_PROXY).env("no_proxy", NO_PROXY);
    // Node's own fetch reads the proxy variables only when asked to (Node 24+).
    cmd.env("NODE_USE_ENV_PROXY", "1");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "carapace relay: cannot run {}: {e}",
                command[0].to_string_lossy()
            );
            return ExitCode::from(127);
        }
    };
    let accept = async {
        loop {
            let mut tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                match UnixStream::connect(SOCKET_INSIDE).await {
                    Ok(mut unix) => {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                    Err(e) => eprintln!("carapace relay: cannot reach the daemon: {e}"),
                }
            });
        }
    };
    let status = tokio::select! {
        s = child.wait() => s,
        () = accept => unreachable!("the accept loop never ends"),
    };
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let code = s.code().unwrap_or(128 + s.signal().unwrap_or(0));
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("carapace relay: cannot wait: {e}");
            ExitCode::from(125)
        }
    }
}
