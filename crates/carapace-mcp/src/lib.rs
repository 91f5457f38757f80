//! MCP tool servers behind the Gate: the client side.
//!
//! [`Hub`] starts the servers of `[[mcp.servers]]` (stdio servers in the Carapace
//! sandbox, streamable HTTP servers through the egress client), keeps their tool lists
//! (named `SERVER__TOOL`, schemas closed, effect classes from annotations or the
//! owner's overrides) and restarts them with backoff. A sandboxed stdio server may get
//! network only through the daemon's CONNECT proxy ([`StdioEgress`]), where the egress
//! layer checks each destination. The Gate offers the tools and
//! decides every call; this crate only reaches the servers.

mod config;
mod effect;
pub mod http;
mod hub;
pub mod relay;
mod schema;
mod stdio;
mod tools;
mod tunnel;

pub use config::{ServerConfig, ToolOverride, Transport};
pub use effect::{Classified, classify};
pub use hub::{
    CallError, Hub, HubEnv, MAX_DESCRIPTION, MAX_TOOLS, McpTool, SEPARATOR, Scrub, ServerStatus,
    Skipped, Snapshot, State,
};
pub use rmcp::model::CallToolResult;
pub use schema::close as close_schema;
pub use tunnel::{AUDIT_EVENT as EGRESS_AUDIT_EVENT, Audit, EgressStats, MAX_TUNNELS, StdioEgress};

/// Lines of a server's stderr kept for `cara mcp list` and `test`.
const STDERR_LINES: usize = 20;

/// Bidirectional-text controls, which can make text read differently than it is.
pub(crate) fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}
