//! `cara mcp list | tools | test`: the daemon's MCP servers as the owner sees them.

use std::process::ExitCode;

use crate::datadir::DataDir;

/// `cara mcp list`.
pub async fn list(_dd: &DataDir, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// `cara mcp tools NAME`.
pub async fn tools(_dd: &DataDir, _name: &str, _json: bool) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}

/// `cara mcp test NAME`.
pub async fn test(_dd: &DataDir, _name: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
