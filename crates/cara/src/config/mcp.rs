//! `[[mcp.servers]]`: MCP tool servers whose tools the Gate offers as `SERVER__TOOL`.
//!
//! ```toml
//! [[mcp.servers]]
//! name = "github"
//! command = ["github-mcp-server", "stdio"]        # stdio, in the sandbox
//! env = { GITHUB_TOKEN = { vault = "github" } }   # secrets go to this process only
//! sandbox = { profile = "tool", workspace = "none", binds = ["/opt/mcp:/opt/mcp:ro"],
//!             network = "egress", allow_hosts = ["api.github.com"] }  # default: loopback only
//! timeout_secs = 60
//! [mcp.servers.tools.delete_repo]
//! effect = "egress"
//! result = "untrusted"
//!
//! [[mcp.servers]]
//! name = "remote"
//! url = "https://mcp.example.com/mcp"             # streamable HTTP, through egress
//! credential = { vault = "remote", header = "Authorization", format = "Bearer {}" }
//! ```
//!
//! `sandbox = "none"` runs a stdio server as a plain child of the daemon (`cara doctor`
//! warns about it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use carapace_mcp::{ServerConfig, ToolOverride, Transport};
use carapace_types::Secret;
use serde::Deserialize;
use toml::Spanned;

use super::Locator;
use super::sandbox::{SandboxSection, WorkspaceAccess, parse_bind};

/// `[mcp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// `[[mcp.servers]]`.
    pub servers: Vec<ServerTable>,
}

/// One `[[mcp.servers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    pub name: Spanned<String>,
    /// stdio: program and arguments.
    pub command: Option<Spanned<Vec<String>>>,
    /// streamable HTTP: the endpoint.
    pub url: Option<Spanned<String>>,
    /// stdio: the process's environment beyond the sandbox's base (PATH, HOME, ...).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<EnvValue>>,
    /// stdio: the sandbox, or `"none"`.
    pub sandbox: Option<Spanned<SandboxChoice>>,
    /// HTTP: a vault secret the egress layer adds to every request.
    pub credential: Option<Spanned<Credential>>,
    pub timeout_secs: Option<Spanned<u64>>,
    pub startup_timeout_secs: Option<Spanned<u64>>,
    pub max_result_bytes: Option<Spanned<u64>>,
    /// Per-tool overrides, by the server's tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, super::policy::ToolSection>,
}

/// An environment value: text, or a vault secret.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    Text(String),
    Vault { vault: String },
}

/// `sandbox = "none"` or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SandboxChoice {
    Keyword(String),
    Table(SandboxTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxTable {
    /// A `[sandbox.profiles]` name (limits, binds); default `tool`.
    pub profile: Option<String>,
    /// `none` (default), `ro` or `rw`: the agent's workspace at /workspace.
    pub workspace: Option<String>,
    /// Extra binds, `SRC:DST` or `SRC:DST:ro`.
    #[serde(default)]
    pub binds: Vec<String>,
    /// `none` (default): loopback only; `egress`: outbound connections through the
    /// daemon's proxy, each destination checked by the egress layer.
    pub network: Option<String>,
    /// With `network = "egress"` (and required then): the hosts this server may reach,
    /// narrowing `[egress] allow_hosts` (never widening it).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub vault: String,
    #[serde(default = "authorization")]
    pub header: String,
    #[serde(default = "bearer")]
    pub format: String,
}

fn authorization() -> String {
    "Authorization".into()
}

fn bearer() -> String {
    "Bearer {}".into()
}

/// What building needs from the daemon.
pub struct BuildEnv<'a> {
    /// Reads a vault entry; `None`: no such entry.
    pub vault: &'a dyn Fn(&str) -> Option<Secret<String>>,
    /// The sandbox and the base environment, for stdio servers.
    pub sandbox: Option<carapace_sandbox::Sandbox>,
    pub base_env: Vec<(String, String)>,
    /// The agent's workspace.
    pub workspace: &'a Path,
    /// The egress client, for HTTP servers and stdio servers with egress.
    pub egress: Option<carapace_gate::Egress>,
    /// For stdio servers with `network = "egress"`.
    pub proxy: Option<ProxyEnv>,
}

/// What a stdio server's egress proxy needs from the daemon.
pub struct ProxyEnv {
    /// The daemon's own directory (mode 0700) for the servers' proxy sockets.
    pub socket_dir: std::path::PathBuf,
    /// The relay program: this `cara` binary.
    pub relay: std::path::PathBuf,
    /// Where tunnel decisions are recorded.
    pub audit: carapace_mcp::Audit,
}

/// A server's name: the `SERVER` of `SERVER__TOOL`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err("a server name has 1 to 32 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        || name.starts_with(['_', '-'])
    {
        return Err(format!(
            "`{name}` is not a server name (lowercase letters, digits, `_` and `-`)"
        ));
    }
    if name.contains("__") || name.ends_with('_') {
        return Err(format!(
            "`{name}` must not contain `__` or end with `_`: tool names are SERVER__TOOL"
        ));
    }
    Ok(())
}

impl McpSection {
    /// Checks every entry as [`McpSection::build`] would, without reading secrets.
    pub fn validate(&self, at: &Locator<'_>, sandbox: &SandboxSection) -> anyhow::Result<()> {
        let mut seen = BTreeMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            let key = format!("mcp.servers[{}]", i + 1);
            check_name(s.name.get_ref())
                .map_err(|p| at.span(s.name.span(), &format!("{key}.name"), p))?;
            if let Some(j) = seen.insert(s.name.get_ref().clone(), i) {
                return Err(at.span(
                    s.name.span(),
                    &format!("{key}.name"),
                    format!("mcp.servers[{}] has the same name", j + 1),
                ));
            }
            s.check(at, &key, sandbox)?;
        }
        Ok(())
    }

    /// The servers, resolved: secrets read, sandboxes made.
    pub fn build(
        &self,
        at: &Locator<'_>,
        sandbox: &SandboxSection,
        env: &BuildEnv<'_>,
    ) -> anyhow::Result<Vec<ServerConfig>> {
        self.validate(at, sandbox)?;
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| s.build(at, &format!("mcp.servers[{}]", i + 1), sandbox, env))
            .collect()
    }

    /// The vault entries the servers use (in `env` and `credential`).
    pub fn vault_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .servers
            .iter()
            .flat_map(|s| {
                s.env
                    .values()
                    .filter_map(|v| match v.get_ref() {
                        EnvValue::Vault { vault } => Some(vault.clone()),
                        EnvValue::Text(_) => None,
                    })
                    .chain(s.credential.as_ref().map(|c| c.get_ref().vault.clone()))
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Servers that run without the sandbox, for `cara doctor`.
    pub fn unsandboxed(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| {
                matches!(s.sandbox.as_ref().map(Spanned::get_ref), Some(SandboxChoice::Keyword(k)) if k == "none")
            })
            .map(|s| s.name.get_ref().clone())
            .collect()
    }

    /// `[tools.SERVER__TOOL]` for a configured server: the override belongs in the
    /// server's entry, under the tool's own name (which `SERVER__TOOL` may have changed).
    pub fn check_tool_keys<'a>(
        &self,
        at: &Locator<'_>,
        keys: impl Iterator<Item = &'a String>,
    ) -> anyhow::Result<()> {
        for key in keys {
            let Some((server, tool)) = key.split_once(carapace_mcp::SEPARATOR) else {
                continue;
            };
            if let Some((i, _)) = self
                .servers
                .iter()
                .enumerate()
                .find(|(_, s)| s.name.get_ref() == server)
            {
                return Err(at.key(
                    &format!("tools.{key}"),
                    format!(
                        "`{key}` is a tool of the MCP server `{server}`: override it in that \
                         server's entry (mcp.servers[{}]) as [mcp.servers.tools.{tool}], by its \
                         name on the server (`cara mcp tools {server}` shows both)",
                        i + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Names of the stdio servers with `network = "egress"`, for `cara doctor`.
    pub fn with_egress(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| {
                matches!(s.sandbox.as_ref().map(Spanned::get_ref), Some(SandboxChoice::Table(t)) if t.network.as_deref() == Some("egress"))
            })
            .map(|s| s.name.get_ref().clone())
            .collect()
    }
}

impl ServerTable {
    fn check(&self, at: &Locator<'_>, key: &str, sandbox: &SandboxSection) -> anyhow::Result<()> {
        let k = |f: &str| format!("{key}.{f}");
        match (&self.command, &self.url) {
            (Some(_), Some(u)) => {
                return Err(at.span(
                    u.span(),
                    &k("url"),
                    "a server has `command` (stdio) or `url` (streamable HTTP), not both".into(),
                ));
            }
            (None, None) => {
                return Err(at.span(
                    self.name.span(),
                    key,
                    "a server needs `command` (stdio) or `url` (streamable HTTP)".into(),
                ));
            }
            (Some(c), None) => {
                if c.get_ref().is_empty() || c.get_ref()[0].is_empty() {
                    return Err(at.span(c.span(), &k("command"), "the program is missing".into()));
                }
                if c.get_ref().iter().any(|a| a.contains('\0')) {
                    return Err(at.span(
                        c.span(),
                        &k("command"),
                        "an argument holds a NUL byte".into(),
                    ));
                }
                if let Some(cred) = &self.credential {
                    return Err(at.span(cred.span(), &k("credential"), "only an HTTP server (`url`) takes a credential; give a stdio server its secret in `env`".into()));
                }
            }
            (None, Some(u)) => {
                let parsed = url::Url::parse(u.get_ref())
                    .map_err(|e| at.span(u.span(), &k("url"), format!("not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                    return Err(at.span(
                        u.span(),
                        &k("url"),
                        "an http:// or https:// URL with a host".into(),
                    ));
                }
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return Err(at.span(
                        u.span(),
                        &k("url"),
                        "no credentials in the URL; use `credential = { vault = \"NAME\" }`".into(),
                    ));
                }
                for (what, present) in [
                    ("env", !self.env.is_empty()),
                    ("sandbox", self.sandbox.is_some()),
                ] {
                    if present {
                        return Err(at.span(u.span(), &k(what), format!("`{what}` is for stdio servers (`command`); an HTTP server runs elsewhere")));
                    }
                }
            }
        }
        for (name, v) in &self.env {
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(at.span(
                    v.span(),
                    &k(&format!("env.{name}")),
                    format!("`{name}` is not an environment variable name"),
                ));
            }
            if let EnvValue::Vault { vault } = v.get_ref()
                && vault.is_empty()
            {
                return Err(at.span(
                    v.span(),
                    &k(&format!("env.{name}")),
                    "the vault entry name is empty".into(),
                ));
            }
        }
        if let Some(sb) = &self.sandbox {
            let key = k("sandbox");
            match sb.get_ref() {
                SandboxChoice::Keyword(w) if w == "none" => {}
                SandboxChoice::Keyword(w) => {
                    return Err(at.span(sb.span(), &key, format!("`{w}`: the sandbox is a table ({{ profile = \"tool\", ... }}) or \"none\"")));
                }
                SandboxChoice::Table(t) => {
                    let profile = t.profile.as_deref().unwrap_or("tool");
                    if sandbox.profile(profile).is_none() {
                        return Err(at.span(
                            sb.span(),
                            &format!("{key}.profile"),
                            format!(
                                "no profile `{profile}`; profiles: {}",
                                sandbox.profile_names().join(", ")
                            ),
                        ));
                    }
                    if let Some(w) = &t.workspace
                        && !matches!(w.as_str(), "none" | "ro" | "rw")
                    {
                        return Err(at.span(
                            sb.span(),
                            &format!("{key}.workspace"),
                            format!("`{w}`: none, ro or rw"),
                        ));
                    }
                    for b in &t.binds {
                        parse_bind(b)
                            .map_err(|p| at.span(sb.span(), &format!("{key}.binds"), p))?;
                    }
                    match t.network.as_deref() {
                        None | Some("none") => {
                            if !t.allow_hosts.is_empty() {
                                return Err(at.span(
                                    sb.span(),
                                    &format!("{key}.allow_hosts"),
                                    "only with network = \"egress\"".into(),
                                ));
                            }
                        }
                        Some("egress") => {
                            // Deny by default: a server reaches the hosts its entry names,
                            // never the whole `[egress]` list (which may hold private
                            // services allowed for other purposes).
                            if t.allow_hosts.is_empty() {
                                return Err(at.span(
                                    sb.span(),
                                    &format!("{key}.allow_hosts"),
                                    "network = \"egress\" needs allow_hosts: the hosts this server may reach (each also allowed by [egress] allow_hosts)".into(),
                                ));
                            }
                            carapace_gate::check_host_list(&t.allow_hosts).map_err(|p| {
                                at.span(sb.span(), &format!("{key}.allow_hosts"), p)
                            })?;
                        }
                        Some(other) => {
                            return Err(at.span(
                                sb.span(),
                                &format!("{key}.network"),
                                format!(
                                    "`{other}`: \"none\" (loopback only) or \"egress\" (through the egress layer)"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for (field, v, lo, hi) in [
            ("timeout_secs", &self.timeout_secs, 1, 3600),
            ("startup_timeout_secs", &self.startup_timeout_secs, 1, 600),
            ("max_result_bytes", &self.max_result_bytes, 1024, 16 << 20),
        ] {
            if let Some(v) = v
                && !(lo..=hi).contains(v.get_ref())
            {
                return Err(at.span(
                    v.span(),
                    &k(field),
                    format!("{} is out of range {lo}..={hi}", v.get_ref()),
                ));
            }
        }
        for (tool, t) in &self.tools {
            let tk = k(&format!("tools.{tool}"));
            if let Some(e) = &t.effect {
                super::policy::effect(e.get_ref())
                    .map_err(|p| at.span(e.span(), &format!("{tk}.effect"), p))?;
            }
            if let Some(r) = &t.result {
                super::policy::parse_result_label(r.get_ref())
                    .map_err(|p| at.span(r.span(), &format!("{tk}.result"), p))?;
            }
        }
        Ok(())
    }

    fn build(
        &self,
        at: &Locator<'_>,
        key: &str,
        sandbox: &SandboxSection,
        env: &BuildEnv<'_>,
    ) -> anyhow::Result<ServerConfig> {
        let k = |f: &str| format!("{key}.{f}");
        let transport = match (&self.command, &self.url) {
            (Some(command), _) => {
                let mut vars = env.base_env.clone();
                for (name, v) in &self.env {
                    let value = match v.get_ref() {
                        EnvValue::Text(t) => t.clone(),
                        EnvValue::Vault { vault } => (env.vault)(vault)
                            .ok_or_else(|| {
                                at.span(
                                    v.span(),
                                    &k(&format!("env.{name}")),
                                    format!(
                                        "the vault has no entry `{vault}` (cara vault set {vault})"
                                    ),
                                )
                            })?
                            .expose()
                            .clone(),
                    };
                    vars.retain(|(k, _)| k != name);
                    vars.push((name.clone(), value));
                }
                let sandbox = match self.sandbox.as_ref().map(Spanned::get_ref) {
                    Some(SandboxChoice::Keyword(_)) => None,
                    table => {
                        let t = match table {
                            Some(SandboxChoice::Table(t)) => Some(t),
                            _ => None,
                        };
                        let profile_name = t.and_then(|t| t.profile.as_deref()).unwrap_or("tool");
                        let mut profile = sandbox.profile(profile_name).ok_or_else(|| {
                            at.key(
                                &k("sandbox.profile"),
                                format!("no profile `{profile_name}`"),
                            )
                        })?;
                        profile.workspace = match t.and_then(|t| t.workspace.as_deref()) {
                            Some("rw") => WorkspaceAccess::ReadWrite,
                            Some("ro") => WorkspaceAccess::ReadOnly,
                            _ => WorkspaceAccess::None,
                        };
                        for b in t.map(|t| t.binds.as_slice()).unwrap_or_default() {
                            profile
                                .binds
                                .push(parse_bind(b).map_err(|p| at.key(&k("sandbox.binds"), p))?);
                        }
                        let mut spec = profile.spec(env.workspace, Vec::new(), Vec::new());
                        // A server lives as long as the daemon: the profile's per-run
                        // clock and CPU limits are for commands, not for it.
                        spec.limits.wall_clock = Duration::from_secs(365 * 24 * 3600);
                        spec.limits.cpu_seconds = 365 * 24 * 3600;
                        let sb = env.sandbox.clone().ok_or_else(|| {
                            at.key(&k("sandbox"), "the sandbox is not available here".into())
                        })?;
                        Some((sb, spec))
                    }
                };
                let egress = match self.sandbox.as_ref().map(Spanned::get_ref) {
                    Some(SandboxChoice::Table(t)) if t.network.as_deref() == Some("egress") => {
                        let missing =
                            || at.key(&k("sandbox.network"), "egress is not available here".into());
                        let proxy = env.proxy.as_ref().ok_or_else(missing)?;
                        Some(Box::new(carapace_mcp::StdioEgress {
                            egress: env.egress.clone().ok_or_else(missing)?,
                            scope: carapace_gate::Scope {
                                allow_hosts: Some(t.allow_hosts.clone()),
                                ..Default::default()
                            },
                            socket: proxy
                                .socket_dir
                                .join(format!("{}.sock", self.name.get_ref())),
                            relay: proxy.relay.clone(),
                            audit: proxy.audit.clone(),
                        }))
                    }
                    _ => None,
                };
                Transport::Stdio {
                    command: command.get_ref().clone(),
                    env: vars,
                    sandbox,
                    egress,
                }
            }
            (None, Some(url)) => {
                let egress = env.egress.clone().ok_or_else(|| {
                    at.key(&k("url"), "the egress client is not available".into())
                })?;
                let parsed =
                    url::Url::parse(url.get_ref()).map_err(|e| at.key(&k("url"), e.to_string()))?;
                let host = parsed.host_str().unwrap_or_default().to_string();
                let mut scope = carapace_gate::Scope {
                    // This server's requests go to its own host only.
                    allow_hosts: Some(vec![match parsed.port() {
                        Some(p) => format!("{host}:{p}"),
                        None => host.clone(),
                    }]),
                    ..Default::default()
                };
                if let Some(c) = &self.credential {
                    let c = c.get_ref();
                    let value = (env.vault)(&c.vault).ok_or_else(|| {
                        at.key(
                            &k("credential.vault"),
                            format!(
                                "the vault has no entry `{}` (cara vault set {})",
                                c.vault, c.vault
                            ),
                        )
                    })?;
                    scope.injections.push(carapace_gate::Injection {
                        hosts: vec![host.clone()],
                        place: carapace_gate::Place::Header {
                            name: c.header.clone(),
                            format: c.format.clone(),
                        },
                        value,
                    });
                }
                Transport::Http {
                    url: url.get_ref().clone(),
                    egress,
                    scope,
                }
            }
            (None, None) => unreachable!("validated"),
        };
        let mut cfg = ServerConfig::new(self.name.get_ref().clone(), transport);
        if let Some(t) = &self.timeout_secs {
            cfg.call_timeout = Duration::from_secs(*t.get_ref());
        }
        if let Some(t) = &self.startup_timeout_secs {
            cfg.startup_timeout = Duration::from_secs(*t.get_ref());
        }
        if let Some(b) = &self.max_result_bytes {
            cfg.max_result_bytes = *b.get_ref() as usize;
        }
        for (tool, t) in &self.tools {
            cfg.tools.insert(
                tool.clone(),
                ToolOverride {
                    effect: t
                        .effect
                        .as_ref()
                        .and_then(|e| super::policy::effect(e.get_ref()).ok()),
                    result: t
                        .result
                        .as_ref()
                        .and_then(|r| super::policy::parse_result_label(r.get_ref()).ok()),
                },
            );
        }
        Ok(cfg)
    }
}

/// The host a server's calls go to, for the Gate's destinations.
pub fn http_host(cfg: &ServerConfig) -> Option<String> {
    match &cfg.transport {
        Transport::Http { url, .. } => url::Url::parse(url).ok().and_then(|u| {
            u.host_str()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        }),
        Transport::Stdio { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    fn err(text: &str) -> String {
        match parse(Path::new("config.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn bad_entries_name_file_line_and_key() {
        let cases = [
            (
                "[[mcp.servers]]\nname = \"Bad Name\"\ncommand = [\"x\"]\n",
                "config.toml:2:8: key `mcp.servers[1].name`: `Bad Name` is not a server name",
            ),
            (
                "[[mcp.servers]]\nname = \"a__b\"\ncommand = [\"x\"]\n",
                "must not contain `__`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\n",
                "key `mcp.servers[1]`: a server needs `command` (stdio) or `url`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nurl = \"https://e.com/mcp\"\n",
                "config.toml:4:7: key `mcp.servers[1].url`: a server has `command` (stdio) or `url`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\nurl = \"https://user:pw@e.com/mcp\"\n",
                "no credentials in the URL",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nsandbox = { network = \"host\" }\n",
                "key `mcp.servers[1].sandbox.network`: `host`: \"none\" (loopback only) or \"egress\"",
            ),
            (
                "[tools.gh__create_issue]\neffect = \"write\"\n\n[[mcp.servers]]\nname = \"gh\"\ncommand = [\"x\"]\n",
                "key `tools.gh__create_issue`: `gh__create_issue` is a tool of the MCP server `gh`: override it in that server's entry (mcp.servers[1]) as [mcp.servers.tools.create_issue]",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nsandbox = { allow_hosts = [\"a.com\"] }\n",
                "key `mcp.servers[1].sandbox.allow_hosts`: only with network = \"egress\"",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nsandbox = { network = \"egress\" }\n",
                "config.toml:4:11: key `mcp.servers[1].sandbox.allow_hosts`: network = \"egress\" needs allow_hosts",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nsandbox = { network = \"egress\", allow_hosts = [\"http://a.com/x\"] }\n",
                "key `mcp.servers[1].sandbox.allow_hosts`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nsandbox = \"off\"\n",
                "config.toml:4:11: key `mcp.servers[1].sandbox`: `off`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nsandbox = { profile = \"gone\" }\n",
                "no profile `gone`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout_secs = 0\n",
                "config.toml:4:16: key `mcp.servers[1].timeout_secs`: 0 is out of range 1..=3600",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\n[mcp.servers.tools.t]\neffect = \"send\"\n",
                "config.toml:5:10: key `mcp.servers[1].tools.t.effect`: `send` is not an effect class",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nunknown = 1\n",
                "config.toml:4:1: key `mcp.servers[1].unknown`: unknown field `unknown`",
            ),
            (
                "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\n[[mcp.servers]]\nname = \"a\"\ncommand = [\"y\"]\n",
                "config.toml:5:8: key `mcp.servers[2].name`: mcp.servers[1] has the same name",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.contains(want),
                "for\n{text}\nwant `{want}`\ngot  `{got}`"
            );
        }
    }

    #[test]
    fn only_vault_values_are_secrets() {
        let c = parse(
            Path::new("config.toml"),
            "[[mcp.servers]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { T = { vault = \"tok\" }, PAGE = \"plain text here\" }\n\
             [[mcp.servers]]\nname = \"b\"\nurl = \"https://e.com/mcp\"\ncredential = { vault = \"remote\" }\n",
        )
        .unwrap();
        assert_eq!(c.mcp.vault_entries(), ["remote", "tok"]);
        assert!(c.mcp.unsandboxed().is_empty());
    }
}
