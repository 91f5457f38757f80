//! What the owner configured for each server, resolved by the caller (secrets read,
//! sandbox profile built, egress client made).

use std::collections::BTreeMap;
use std::time::Duration;

use carapace_sandbox::{Sandbox, SandboxSpec};
use carapace_types::{EffectClass, Label};

use crate::tunnel::StdioEgress;

/// One `[[mcp.servers]]` entry, resolved.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The server's name: the `SERVER` of `SERVER__TOOL`.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// Per-tool overrides by the server's own tool name.
    pub tools: BTreeMap<String, ToolOverride>,
    /// The longest one tool call may take.
    pub call_timeout: Duration,
    /// The longest start, handshake and first tool list may take.
    pub startup_timeout: Duration,
    /// Bytes of a result (text of all its content) kept; the rest is cut.
    pub max_result_bytes: usize,
    /// The longest JSON-RPC message read from the server; a longer one is dropped.
    pub max_message_bytes: usize,
}

impl ServerConfig {
    /// A server with the default limits.
    pub fn new(name: impl Into<String>, transport: Transport) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            transport,
            tools: BTreeMap::new(),
            call_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(30),
            max_result_bytes: 256 * 1024,
            max_message_bytes: 8 << 20,
        }
    }

    /// Whether the server can reach the network: a streamable HTTP server, a stdio
    /// server with egress, or one outside the sandbox. Only a sandboxed stdio server
    /// without egress has loopback alone.
    pub fn networked(&self) -> bool {
        !matches!(
            self.transport,
            Transport::Stdio {
                sandbox: Some(_),
                egress: None,
                ..
            }
        )
    }

    /// The transport's one-word name, for listings.
    pub fn transport_name(&self) -> &'static str {
        match &self.transport {
            Transport::Stdio {
                sandbox: Some(_),
                egress: Some(_),
                ..
            } => "stdio (sandboxed, egress)",
            Transport::Stdio {
                sandbox: Some(_), ..
            } => "stdio (sandboxed)",
            Transport::Stdio { sandbox: None, .. } => "stdio (NOT sandboxed)",
            Transport::Http { .. } => "streamable http (through egress)",
        }
    }
}

/// How a server is reached.
#[derive(Clone)]
pub enum Transport {
    /// A process speaking MCP on its stdin and stdout.
    Stdio {
        /// Program and arguments.
        command: Vec<String>,
        /// The whole environment of the process (secrets included: this process only).
        env: Vec<(String, String)>,
        /// The sandbox and the spec template the process runs in (`argv` and `env` are
        /// filled in); `None` runs it as a plain child of the daemon (`sandbox = "none"`).
        sandbox: Option<(Sandbox, SandboxSpec)>,
        /// Network through the daemon's proxy and the egress layer (sandboxed servers
        /// only); `None`: loopback only.
        egress: Option<Box<StdioEgress>>,
    },
    /// A streamable HTTP endpoint, every request through the egress client.
    Http {
        /// The endpoint URL.
        url: String,
        /// The egress client, with the configuration's allowlists.
        egress: carapace_egress::Egress,
        /// Narrower hosts and the credentials to add.
        scope: carapace_egress::Scope,
    },
}

/// Environment values may be secrets: debug output shows names only.
impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Stdio {
                command,
                env,
                sandbox,
                egress,
            } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("env", &env.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .field("sandboxed", &sandbox.is_some())
                .field("egress", egress)
                .finish(),
            Transport::Http { url, .. } => f.debug_struct("Http").field("url", url).finish(),
        }
    }
}

/// What the owner says of one tool, beating its annotations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToolOverride {
    /// The effect class policy decides with.
    pub effect: Option<EffectClass>,
    /// The least label of its results (raises the one from annotations, never lowers).
    pub result: Option<Label>,
}
