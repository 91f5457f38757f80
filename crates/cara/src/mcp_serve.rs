//! `cara mcp serve`: MCP on stdin/stdout, every call through the agent socket's Gate.

use std::process::ExitCode;

/// Arguments of `cara mcp serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs the server until the client closes stdin.
pub fn run(_args: ServeArgs) -> ExitCode {
    eprintln!("cara mcp serve: not built yet");
    ExitCode::from(2)
}
