//! `config.toml`: parsed strictly (unknown keys and wrong types are errors that name the
//! file, line and key), validated, then overridden by environment variables for the
//! provider settings.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use toml::Spanned;

pub mod channels;
pub mod egress;
pub mod mcp;
pub mod policy;
pub mod providers;
pub mod sandbox;
pub mod vault;

/// Turns a problem at a place in the file into `FILE:LINE:COL: key `K`: problem`.
pub struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> Locator<'a> {
    /// Errors in `text`, read from `path`.
    pub fn new(path: &'a Path, text: &'a str) -> Locator<'a> {
        Locator { path, text }
    }
}

impl Locator<'_> {
    /// A problem at `span` (an empty span at 0 is a default value: no line to name).
    pub fn span(&self, span: std::ops::Range<usize>, key: &str, problem: String) -> anyhow::Error {
        if span.is_empty() && span.start == 0 {
            self.key(key, problem)
        } else {
            let (line, col) = line_col(self.text, span.start);
            anyhow::anyhow!(
                "{}:{line}:{col}: key `{key}`: {problem}",
                self.path.display()
            )
        }
    }

    /// A problem with a key whose place is not known.
    pub fn key(&self, key: &str, problem: String) -> anyhow::Error {
        anyhow::anyhow!("{}: key `{key}`: {problem}", self.path.display())
    }
}

/// The file as written by the owner.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub provider: ProviderSection,
    /// `[providers.NAME]`: endpoints of built-in providers, and providers of one's own.
    pub providers: std::collections::BTreeMap<String, providers::ProviderTable>,
    pub agent: AgentSection,
    pub usage: UsageSection,
    pub gate: GateSection,
    pub sandbox: sandbox::SandboxSection,
    pub egress: egress::EgressSection,
    pub vault: vault::VaultSection,
    pub policy: policy::PolicySection,
    /// `[tools.NAME]`: effect class and result label overrides.
    pub tools: std::collections::BTreeMap<String, policy::ToolSection>,
    /// `[[rules]]`: plain-English rules.
    pub rules: Vec<policy::EnglishRule>,
    /// `[channels.NAME]`: messaging channels for agents in shell mode.
    pub channels: channels::ChannelsSection,
    /// `[mcp]` and `[[mcp.servers]]`: MCP tool servers.
    pub mcp: mcp::McpSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Loopback address and port of the gateway.
    pub bind: Spanned<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Spanned<u64>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            bind: Spanned::new(0..0, DEFAULT_BIND.into()),
            max_body_bytes: Spanned::new(0..0, 1024 * 1024),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSection {
    /// Base URL of the `openai` provider (any OpenAI-compatible server).
    pub base_url: Option<Spanned<String>>,
    /// `provider/model` (`anthropic/claude-sonnet-4-5`), an alias, or a model of the
    /// `openai` provider.
    pub model: Option<Spanned<String>>,
    /// Short names for models: `fast = "ollama/llama3.2"`.
    pub aliases: std::collections::BTreeMap<String, Spanned<String>>,
    /// The failover chain: models tried in order when the one before keeps failing.
    /// The first is the model when `model` is not set.
    pub models: Option<Spanned<Vec<String>>>,
    /// Attempts per model before the next of the chain (retries with backoff).
    pub max_attempts: Spanned<u64>,
    /// How long a model that kept failing is skipped, in seconds.
    pub failover_cooldown_secs: Spanned<u64>,
    pub request_timeout_secs: Spanned<u64>,
    pub stall_timeout_secs: Spanned<u64>,
    /// Present only to give a precise error: keys never live in this file.
    api_key: Option<Spanned<toml::Value>>,
}

impl Default for ProviderSection {
    fn default() -> Self {
        ProviderSection {
            base_url: None,
            model: None,
            aliases: Default::default(),
            models: None,
            max_attempts: Spanned::new(0..0, 3),
            failover_cooldown_secs: Spanned::new(0..0, 60),
            request_timeout_secs: Spanned::new(0..0, 300),
            stall_timeout_secs: Spanned::new(0..0, 60),
            api_key: None,
        }
    }
}

/// `[usage]`: what model calls cost and what a day may cost.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSection {
    /// The most a UTC day's priced model calls may cost; a turn asked for after that is
    /// refused until the next day.
    pub daily_budget_usd: Option<Spanned<f64>>,
    /// Prices per model (`provider/model`, a model or its prefix, or `provider/*`), over
    /// the defaults.
    pub prices: std::collections::BTreeMap<String, Spanned<PriceEntry>>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// US dollars per million prompt tokens.
    pub input_per_mtok: f64,
    /// US dollars per million generated tokens.
    pub output_per_mtok: f64,
}

impl UsageSection {
    fn validate(&self, at: &Locator<'_>) -> anyhow::Result<()> {
        if let Some(b) = &self.daily_budget_usd {
            let v = *b.get_ref();
            if !(v.is_finite() && v > 0.0 && v <= 1e9) {
                return Err(at.span(
                    b.span(),
                    "usage.daily_budget_usd",
                    format!("{v} is not a budget; use dollars above 0, like 5.0"),
                ));
            }
        }
        for (model, p) in &self.prices {
            let PriceEntry {
                input_per_mtok,
                output_per_mtok,
            } = *p.get_ref();
            if [input_per_mtok, output_per_mtok]
                .iter()
                .any(|v| !v.is_finite() || *v < 0.0 || *v > 1e6)
            {
                return Err(at.span(
                    p.span(),
                    &format!("usage.prices.{model}"),
                    "prices are dollars per million tokens, 0 or more".into(),
                ));
            }
        }
        Ok(())
    }

    /// The prices and budget the agent applies.
    pub fn accounting(&self) -> carapace_agent::Accounting {
        carapace_agent::Accounting {
            prices: carapace_llm::PriceTable::new(
                self.prices
                    .iter()
                    .map(|(model, p)| {
                        let p = p.get_ref();
                        (
                            model.clone(),
                            carapace_llm::Price {
                                input_per_mtok: p.input_per_mtok,
                                output_per_mtok: p.output_per_mtok,
                            },
                        )
                    })
                    .collect(),
            ),
            daily_budget_micros: self
                .daily_budget_usd
                .as_ref()
                .map(|b| (b.get_ref() * 1e6).round() as u64),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    pub max_steps: Spanned<u64>,
    pub system_prompt: Option<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            max_steps: Spanned::new(0..0, 16),
            system_prompt: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSection {
    pub tool_timeout_secs: Spanned<u64>,
    pub approval_timeout_secs: Spanned<u64>,
    pub rate_per_minute: Spanned<u64>,
    /// Tools granted to sessions: nothing else exists for them.
    pub tools: Spanned<Vec<String>>,
}

impl Default for GateSection {
    fn default() -> Self {
        GateSection {
            tool_timeout_secs: Spanned::new(0..0, 30),
            approval_timeout_secs: Spanned::new(0..0, 300),
            rate_per_minute: Spanned::new(0..0, 120),
            tools: Spanned::new(0..0, DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect()),
        }
    }
}

pub const DEFAULT_BIND: &str = "127.0.0.1:8321";

/// Tools granted when config.toml does not say: all of them. `exec` runs in the
/// sandbox, and the network tools reach only hosts in `[egress] allow_hosts` (none by
/// default).
pub const DEFAULT_TOOLS: &[&str] = carapace_gate::KNOWN_TOOLS;

/// The text of a new `config.toml`: every key at its default, commented.
pub const DEFAULT_CONFIG: &str = r#"# Carapace configuration. `cara config validate` checks this file;
# `cara config show` prints the effective settings.

[server]
# Loopback only: a non-loopback address is refused until TLS and auth are available.
bind = "127.0.0.1:8321"
max_body_bytes = 1048576

[provider]
# The model as provider/model: openai/gpt-4o-mini, anthropic/claude-sonnet-4-5,
# gemini/gemini-2.5-flash, ollama/llama3.2, venice/..., openrouter/..., groq/..., or a
# [providers.NAME] of your own. A name without a known prefix goes to the openai
# provider (any OpenAI-compatible server at base_url). $CARAPACE_MODEL overrides it.
# model = "ollama/llama3.2"
# base_url = "http://127.0.0.1:8000/v1"   # the openai provider's server ($OPENAI_BASE_URL)
# API keys are never read from this file: each provider reads its usual variable
# (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, ...) or the vault entry of that name.
request_timeout_secs = 300
stall_timeout_secs = 60

# models = ["anthropic/claude-sonnet-4-5", "openai/gpt-4o-mini", "ollama/llama3.2"]
#                                        # failover chain, tried in order
max_attempts = 3                         # per model, with backoff; Retry-After honoured
failover_cooldown_secs = 60              # a model that kept failing is skipped this long

[provider.aliases]
# fast = "ollama/llama3.2"

# [providers.lab]                 # a provider of your own (vLLM, llama.cpp, LM Studio, a proxy)
# kind = "openai"                 # openai, openai-responses, anthropic, gemini, ollama, bedrock
# base_url = "http://127.0.0.1:8000/v1"
# api_key_env = "LAB_API_KEY"     # the variable (or vault entry) holding its key, if any

[agent]
max_steps = 16

[usage]
# daily_budget_usd = 5.0          # no new turn once a UTC day's priced calls cost this much
# [usage.prices."lab/qwen3-32b"]  # US dollars per million tokens; defaults cover common models
# input_per_mtok = 0.0
# output_per_mtok = 0.0

[gate]
tool_timeout_secs = 30
approval_timeout_secs = 300
rate_per_minute = 120
# Tools granted to sessions; a tool not listed does not exist for the agent.
# exec runs commands in the sandbox ([sandbox] below); web_fetch and http_request
# reach only the hosts in [egress] allow_hosts.
tools = ["read_file", "list_dir", "write_file", "search_files", "exec", "web_fetch", "http_request"]

[sandbox]
# The profile the exec tool runs in. Built in: tool (workspace read-write, no network,
# system read-only) and readonly (workspace read-only). Override or add profiles:
exec_profile = "tool"
# [sandbox.profiles.tool]
# workspace = "rw"                 # rw, ro or none (bound at /workspace)
# binds = ["/opt/data:/data:ro"]   # SRC:DST or SRC:DST:ro
# allow_degraded = false           # run even if a kernel feature is missing
# wall_clock_secs = 60
# cpu_secs = 60
# memory_mb = 1024                 # cgroup v2, where it can be written
# address_space_mb = 4096
# processes = 256
# open_files = 1024
# output_bytes = 1048576
# tmp_mb = 256

[egress]
# Deny by default: the network tools reach only these hosts (host, host:port, *.domain).
allow_hosts = []
# Private addresses (loopback, LAN, link-local) allowed, as host:port; e.g. Ollama:
# allow_private = ["127.0.0.1:11434"]
allow_private = []
# Plain HTTP allowed, as host:port; everything else must be HTTPS.
allow_http = []
# More ranges to refuse, as CIDR.
deny_ranges = []
# A narrower list for one network tool (web_fetch, http_request); never wider:
# [egress.tools.web_fetch]
# allow_hosts = ["*.wikipedia.org"]
max_redirects = 5
timeout_secs = 30
max_response_bytes = 2097152

[vault]
# Secrets live in the encrypted vault (`cara vault set NAME`), never here. Its key comes
# from $CARAPACE_VAULT_PASSPHRASE, the terminal, or a key file:
# key_file = "/home/me/.config/carapace/vault.key"
#
# Entries kept elsewhere:
# [vault.secrets.github]
# backend = "pass"                 # file (default), env, pass, bw, op or keyring
# ref = "carapace/github"          # variable, pass path, bw item, op://vault/item/field
#                                  # or keyring account (default: the entry's name)
# approve_first_use = true         # default: on for pass, bw and op
#
# Where a secret is injected; the model never sees it:
# [[vault.inject]]
# secret = "github"
# hosts = ["api.github.com"]
# header = "Authorization"
# format = "Bearer {}"
"#;

/// Where a value came from, for `cara config show` and `cara doctor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Env(&'static str),
    File,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env(name) => write!(f, "from ${name}"),
            Origin::File => f.write_str("from config.toml"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// The provider, resolved from config and environment.
pub enum ProviderSetup {
    Ready(Box<ProviderSettings>),
    Missing(String),
}

pub struct ProviderSettings {
    /// The model, who serves it, where, with which key.
    pub target: providers::ModelTarget,
    pub model_origin: Origin,
    /// The rest of the failover chain, in order.
    pub fallbacks: Vec<providers::ModelTarget>,
    pub retry: carapace_llm::RetryPolicy,
    pub request_timeout: Duration,
    pub stall_timeout: Duration,
}

/// The validated settings the daemon runs with.
pub struct Settings {
    pub bind: SocketAddr,
    pub bind_origin: Origin,
    pub max_body_bytes: usize,
    pub provider: ProviderSetup,
    pub max_steps: usize,
    pub system_prompt: Option<String>,
    pub gate: carapace_gate::GateConfig,
    /// `[policy]` and `[[policy.rules]]` (compiled plain-English rules are added by the
    /// daemon from the store).
    pub policy: carapace_policy::Policy,
    /// The profile the `exec` tool runs in.
    pub exec_profile: sandbox::Profile,
}

/// Reads and validates `path`; a missing file means all defaults.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(path, &text)
}

/// Parses and validates config text; errors read `FILE:LINE:COL: key `K`: problem`.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Config> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        let key = e.span().and_then(|s| key_at(text, s.start));
        let message = e.message().trim_end_matches('\n').to_string();
        match key {
            Some(key) => anyhow::anyhow!("{}:{line}:{col}: key `{key}`: {message}", path.display()),
            None => anyhow::anyhow!("{}:{line}:{col}: {message}", path.display()),
        }
    })?;
    validate(path, text, &config)?;
    Ok(config)
}

fn validate(path: &Path, text: &str, c: &Config) -> anyhow::Result<()> {
    let at = Locator { path, text };
    let err = |span, key: &str, problem| at.span(span, key, problem);
    if let Some(k) = &c.provider.api_key {
        return Err(err(
            k.span(),
            "provider.api_key",
            "API keys are never read from config.toml (plain-text keys are how agents get robbed); remove it and set OPENAI_API_KEY".into(),
        ));
    }
    if let Err(problem) = check_bind(c.server.bind.get_ref()) {
        return Err(err(c.server.bind.span(), "server.bind", problem));
    }
    if let Some(url) = &c.provider.base_url
        && let Err(problem) = check_base_url(url.get_ref())
    {
        return Err(err(url.span(), "provider.base_url", problem));
    }
    if let Some(model) = &c.provider.model
        && model.get_ref().trim().is_empty()
    {
        return Err(err(
            model.span(),
            "provider.model",
            "must not be empty".into(),
        ));
    }
    providers::validate(&at, &c.providers, &c.provider.aliases)?;
    if let Some(models) = &c.provider.models
        && models.get_ref().iter().any(|m| m.trim().is_empty())
    {
        return Err(err(
            models.span(),
            "provider.models",
            "a model name must not be empty".into(),
        ));
    }
    let ranges: [(&Spanned<u64>, &str, u64, u64); 9] = [
        (
            &c.server.max_body_bytes,
            "server.max_body_bytes",
            1024,
            64 * 1024 * 1024,
        ),
        (
            &c.provider.request_timeout_secs,
            "provider.request_timeout_secs",
            1,
            3600,
        ),
        (
            &c.provider.stall_timeout_secs,
            "provider.stall_timeout_secs",
            1,
            3600,
        ),
        (&c.provider.max_attempts, "provider.max_attempts", 1, 10),
        (
            &c.provider.failover_cooldown_secs,
            "provider.failover_cooldown_secs",
            1,
            86400,
        ),
        (&c.agent.max_steps, "agent.max_steps", 1, 200),
        (&c.gate.tool_timeout_secs, "gate.tool_timeout_secs", 1, 3600),
        (
            &c.gate.approval_timeout_secs,
            "gate.approval_timeout_secs",
            1,
            86400,
        ),
        (&c.gate.rate_per_minute, "gate.rate_per_minute", 1, 100_000),
    ];
    for (value, key, min, max) in ranges {
        let v = *value.get_ref();
        if v < min || v > max {
            return Err(err(
                value.span(),
                key,
                format!("{v} is out of range {min}..={max}"),
            ));
        }
    }
    let known = carapace_gate::KNOWN_TOOLS;
    for tool in c.gate.tools.get_ref() {
        if !known.contains(&tool.as_str()) {
            return Err(err(
                c.gate.tools.span(),
                "gate.tools",
                format!("unknown tool `{tool}`; known tools: {}", known.join(", ")),
            ));
        }
    }
    c.usage.validate(&at)?;
    c.sandbox.validate(&at)?;
    c.egress.validate(&at)?;
    c.vault.validate(&at)?;
    c.policy.build(&at)?;
    c.mcp.check_tool_keys(&at, c.tools.keys())?;
    policy::tool_overrides(&at, &c.tools)?;
    c.channels.validate(&at)?;
    c.mcp.validate(&at, &c.sandbox)?;
    for (i, r) in c.rules.iter().enumerate() {
        let text = r.text.get_ref().trim();
        if text.is_empty() || text.len() > 1000 {
            return Err(err(
                r.text.span(),
                &format!("rules[{}].text", i + 1),
                "a rule is 1 to 1000 characters of plain English".into(),
            ));
        }
    }
    Ok(())
}

/// A bind address must parse and be loopback: TLS and auth for other interfaces are
/// not available yet.
pub fn check_bind(bind: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = bind
        .parse()
        .map_err(|_| format!("`{bind}` is not an address:port like 127.0.0.1:8321"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "`{bind}` is not a loopback address; Carapace refuses to listen beyond this machine without TLS and authentication, which are not available yet. Use 127.0.0.1 and an SSH tunnel"
        ));
    }
    Ok(addr)
}

/// Plain HTTP only to loopback: anything else would send the API key in the clear.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let authority = url.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        // `http://localhost:1@example.com/` is example.com, not localhost.
        return Err(format!(
            "`{url}` carries credentials (user@host); put the key in OPENAI_API_KEY"
        ));
    }
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = r.split(['/', '?']).next().unwrap_or("");
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "`{url}` uses plain http to a non-loopback host; use https"
            ));
        }
        r
    } else {
        return Err(format!("`{url}` is not an http:// or https:// URL"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// Applies environment overrides and validates what the daemon needs.
pub fn settings(
    path: &Path,
    c: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Settings> {
    let (bind_text, bind_origin) = match env("CARAPACE_BIND") {
        Some(b) => (b, Origin::Env("CARAPACE_BIND")),
        None => (
            c.server.bind.get_ref().clone(),
            if c.server.bind.span().is_empty() {
                Origin::Default
            } else {
                Origin::File
            },
        ),
    };
    let bind = check_bind(&bind_text).map_err(|p| match bind_origin {
        // `cara serve --bind` arrives here as CARAPACE_BIND too (clap reads either), so
        // name both rather than blame a variable the user may never have set.
        Origin::Env(name) => anyhow::anyhow!("--bind or ${name}: {p}"),
        _ => anyhow::anyhow!("{}: key `server.bind`: {p}", path.display()),
    })?;
    let provider = resolve_provider(path, c, env)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = Locator { path, text: &text };
    let gate = carapace_gate::GateConfig {
        tool_timeout: Duration::from_secs(*c.gate.tool_timeout_secs.get_ref()),
        approval_timeout: Duration::from_secs(*c.gate.approval_timeout_secs.get_ref()),
        rate_per_minute: *c.gate.rate_per_minute.get_ref() as u32,
        granted_tools: c.gate.tools.get_ref().clone(),
        tool_overrides: policy::tool_overrides(&at, &c.tools)?,
        plan_ttl: Duration::from_secs(*c.policy.plan_ttl_minutes.get_ref() * 60),
        ..carapace_gate::GateConfig::default()
    };
    let policy = c.policy.build(&at)?;
    Ok(Settings {
        bind,
        bind_origin,
        max_body_bytes: *c.server.max_body_bytes.get_ref() as usize,
        provider,
        max_steps: *c.agent.max_steps.get_ref() as usize,
        system_prompt: c.agent.system_prompt.clone(),
        gate,
        policy,
        exec_profile: c
            .sandbox
            .profile(c.sandbox.exec_profile.get_ref())
            .context("sandbox.exec_profile names no profile")?,
    })
}

pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini";

pub fn missing_provider_hint() -> String {
    "no model provider is configured.\n\
     Name a model as provider/model, with the provider's key in its usual variable:\n\
     \x20   export CARAPACE_MODEL=ollama/llama3.2                                     # Ollama on this machine\n\
     \x20   export ANTHROPIC_API_KEY=sk-ant-...                                       # Anthropic (default claude-sonnet-4-5)\n\
     \x20   export OPENAI_API_KEY=sk-...                                              # OpenAI (default gpt-4o-mini)\n\
     \x20   export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 CARAPACE_MODEL=my-model   # any OpenAI-compatible server\n\
     or run `cara setup` to write the base URL and model to config.toml"
        .to_string()
}

fn resolve_provider(
    path: &Path,
    c: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<ProviderSetup> {
    let resolver = providers::Resolver {
        providers: &c.providers,
        aliases: &c.provider.aliases,
        legacy_base_url: c.provider.base_url.as_ref(),
        env,
    };
    let openai_base = env("OPENAI_BASE_URL")
        .filter(|u| !u.is_empty())
        .or_else(|| c.provider.base_url.as_ref().map(|u| u.get_ref().clone()));
    let (name, model_origin) = if let Some(m) = env("CARAPACE_MODEL").filter(|m| !m.is_empty()) {
        (m, Origin::Env("CARAPACE_MODEL"))
    } else if let Some(m) = &c.provider.model {
        (m.get_ref().clone(), Origin::File)
    } else if let Some(m) = c.provider.models.as_ref().and_then(|m| m.get_ref().first()) {
        (m.clone(), Origin::File)
    } else if let Some(base) =
        openai_base.filter(|b| b.trim_end_matches('/') != OPENAI_DEFAULT_BASE)
    {
        return Ok(ProviderSetup::Missing(format!(
            "the provider at {base} is configured but no model is: set CARAPACE_MODEL (for example `export CARAPACE_MODEL=llama3.2`) or run `cara setup`"
        )));
    } else if let Some(m) = resolver.default_model() {
        (m, Origin::Default)
    } else {
        return Ok(ProviderSetup::Missing(missing_provider_hint()));
    };
    let target = resolver
        .resolve(&name)
        .map_err(|e| match (e, model_origin) {
            (providers::ResolveError::Setting(p), _) => anyhow::anyhow!(p),
            (providers::ResolveError::Name(p), Origin::Env(var)) => anyhow::anyhow!("${var}: {p}"),
            (providers::ResolveError::Name(p), _) => {
                anyhow::anyhow!("{}: key `provider.model`: {p}", path.display())
            }
        })?;
    let mut fallbacks: Vec<providers::ModelTarget> = Vec::new();
    for name in c.provider.models.iter().flat_map(|m| m.get_ref()) {
        let t = resolver.resolve(name).map_err(|e| match e {
            providers::ResolveError::Setting(p) => anyhow::anyhow!(p),
            providers::ResolveError::Name(p) => {
                anyhow::anyhow!("{}: key `provider.models`: {p}", path.display())
            }
        })?;
        let name = t.full_name();
        if name != target.full_name() && fallbacks.iter().all(|f| f.full_name() != name) {
            fallbacks.push(t);
        }
    }
    let retry = carapace_llm::RetryPolicy {
        attempts: *c.provider.max_attempts.get_ref() as u32,
        cooldown: Duration::from_secs(*c.provider.failover_cooldown_secs.get_ref()),
        ..carapace_llm::RetryPolicy::default()
    };
    Ok(ProviderSetup::Ready(Box::new(ProviderSettings {
        target,
        model_origin,
        fallbacks,
        retry,
        request_timeout: Duration::from_secs(*c.provider.request_timeout_secs.get_ref()),
        stall_timeout: Duration::from_secs(*c.provider.stall_timeout_secs.get_ref()),
    })))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// The dotted key at `offset`: the table header above it plus the key on that line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') || line.find('=').is_none() {
        return None;
    }
    let before: Vec<&str> = text[..line_start].lines().map(str::trim).collect();
    let table = before.iter().rposition(|l| l.starts_with('[')).map(|at| {
        let header = before[at];
        let name = header.trim_matches(|c| c == '[' || c == ']').trim();
        if header.starts_with("[[") {
            // An array of tables: name the entry, counting from 1, like
            // `policy.rules[2]`.
            let n = before[..=at]
                .iter()
                .filter(|l| {
                    l.starts_with("[[") && l.trim_matches(|c| c == '[' || c == ']').trim() == name
                })
                .count();
            format!("{name}[{n}]")
        } else {
            name.to_string()
        }
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// Reads one value by dotted key from the config text, for `cara config get`.
pub fn get_key(text: &str, key: &str) -> Option<String> {
    let doc: toml_edit::DocumentMut = text.parse().ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    for part in key.split('.') {
        item = item.get(part)?;
    }
    Some(match item.as_value() {
        Some(toml_edit::Value::String(s)) => s.value().clone(),
        Some(v) => v.to_string().trim().to_string(),
        None => item.to_string().trim().to_string(),
    })
}

/// Sets a dotted key in the config text, keeping comments; the value is parsed as a
/// TOML value when it is one (numbers, booleans, arrays) and taken as a string
/// otherwise. The result is validated before it is returned.
pub fn set_key(path: &Path, text: &str, key: &str, raw: &str) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} does not parse", path.display()))?;
    let parts: Vec<&str> = key.split('.').collect();
    let Some((name, tables)) = parts.split_last().filter(|(_, t)| !t.is_empty()) else {
        bail!("key `{key}` must look like section.name, for example provider.model");
    };
    let value: toml_edit::Value = raw
        .parse::<toml_edit::Value>()
        .ok()
        .filter(|v| !matches!(v, toml_edit::Value::InlineTable(_)))
        .unwrap_or_else(|| raw.into());
    let mut table = doc.as_table_mut();
    for (i, part) in tables.iter().enumerate() {
        if !table.contains_key(part) {
            let mut new = toml_edit::Table::new();
            // `[providers.anthropic]` alone, without an empty `[providers]` above it.
            new.set_implicit(i + 1 < tables.len());
            table.insert(part, toml_edit::Item::Table(new));
        }
        table = table[part]
            .as_table_mut()
            .with_context(|| format!("`{part}` in `{key}` is not a table"))?;
    }
    table[name] = toml_edit::value(value);
    let new_text = doc.to_string();
    parse(path, &new_text)?;
    Ok(new_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check_err(text: &str, expected: Expect) {
        let err = parse(Path::new("config.toml"), text).unwrap_err();
        expected.assert_eq(&err.to_string());
    }

    #[test]
    fn the_default_config_is_valid() {
        let c = parse(Path::new("config.toml"), DEFAULT_CONFIG).unwrap();
        assert_eq!(c.server.bind.get_ref(), DEFAULT_BIND);
        assert_eq!(
            c.gate.tools.get_ref().len(),
            carapace_gate::KNOWN_TOOLS.len()
        );
        assert_eq!(c.sandbox.exec_profile.get_ref(), "tool");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        check_err(
            "[server]\nbind = \"127.0.0.1:8321\"\nbogus = 1\n",
            expect![[
                r#"config.toml:3:1: key `server.bogus`: unknown field `bogus`, expected `bind` or `max_body_bytes`"#
            ]],
        );
        check_err(
            "[agent]\nmax_steps = \"ten\"\n",
            expect![[
                r#"config.toml:2:13: key `agent.max_steps`: invalid type: string "ten", expected u64"#
            ]],
        );
        check_err(
            "[server]\nbind = \"0.0.0.0:8321\"\n",
            expect![[
                r#"config.toml:2:8: key `server.bind`: `0.0.0.0:8321` is not a loopback address; Carapace refuses to listen beyond this machine without TLS and authentication, which are not available yet. Use 127.0.0.1 and an SSH tunnel"#
            ]],
        );
        check_err(
            "[provider]\nbase_url = \"http://example.com/v1\"\n",
            expect![[
                r#"config.toml:2:12: key `provider.base_url`: `http://example.com/v1` uses plain http to a non-loopback host; use https"#
            ]],
        );
        check_err(
            "[provider]\nbase_url = \"http://localhost:1@example.com/v1\"\n",
            expect![
                "config.toml:2:12: key `provider.base_url`: `http://localhost:1@example.com/v1` carries credentials (user@host); put the key in OPENAI_API_KEY"
            ],
        );
        check_err(
            "[provider]\napi_key = \"sk-123\"\n",
            expect![[
                r#"config.toml:2:11: key `provider.api_key`: API keys are never read from config.toml (plain-text keys are how agents get robbed); remove it and set OPENAI_API_KEY"#
            ]],
        );
        check_err(
            "[gate]\ntools = [\"read_file\", \"rm_rf\"]\n",
            expect![
                "config.toml:2:9: key `gate.tools`: unknown tool `rm_rf`; known tools: read_file, list_dir, write_file, search_files, exec, web_fetch, http_request"
            ],
        );
        check_err(
            "[unknown]\n",
            expect![
                "config.toml:1:2: unknown field `unknown`, expected one of `server`, `provider`, `providers`, `agent`, `usage`, `gate`, `sandbox`, `egress`, `vault`, `policy`, `tools`, `rules`, `channels`, `mcp`"
            ],
        );
        check_err(
            "[sandbox.profiles.build]\nbinds = [\"/opt:opt\"]\n",
            expect![
                "config.toml:2:9: key `sandbox.profiles.build.binds`: bind destination `opt` in `/opt:opt` must be an absolute path"
            ],
        );
        check_err(
            "[sandbox.profiles.build]\nnetwork = \"host\"\n",
            expect![[
                r#"config.toml:2:11: key `sandbox.profiles.build.network`: `host`: only "none" is available (loopback inside the sandbox); tools reach the network through the egress tools"#
            ]],
        );
        check_err(
            "[sandbox.profiles.build]\nprocesses = 0\n",
            expect![
                "config.toml:2:13: key `sandbox.profiles.build.processes`: 0 is out of range 1..=65536"
            ],
        );
        check_err(
            "[sandbox]\nexec_profile = \"gone\"\n",
            expect![
                "config.toml:2:16: key `sandbox.exec_profile`: no profile `gone`; profiles: tool, readonly"
            ],
        );
        check_err(
            "[egress]\nallow_private = [\"127.0.0.1\"]\n",
            expect![
                "config.toml:2:17: key `egress.allow_private`: `127.0.0.1` must name a port, like 127.0.0.1:11434"
            ],
        );
        check_err(
            "[egress.tools.exec]\nallow_hosts = []\n",
            expect![
                "config.toml:1:15: key `egress.tools.exec`: not a network tool; [egress.tools.*] is for web_fetch and http_request"
            ],
        );
        check_err(
            "[egress.tools.web_fetch]\nallow_hosts = [\"https://x.org\"]\n",
            expect![
                "config.toml:2:15: key `egress.tools.web_fetch.allow_hosts`: `https://x.org`: write the host without scheme or path, like `x.org`"
            ],
        );
        check_err(
            "[egress]\ndeny_ranges = [\"10.0.0.0/40\"]\n",
            expect![
                "config.toml:2:15: key `egress.deny_ranges`: `10.0.0.0/40`: prefix length must be 0..=32"
            ],
        );
        check_err(
            "[vault.secrets.gh]\nbackend = \"keychain\"\n",
            expect![
                "config.toml:2:11: key `vault.secrets.gh.backend`: `keychain` is not a backend; use file, env, pass, bw, op or keyring"
            ],
        );
        check_err(
            "[[vault.inject]]\nsecret = \"gh\"\nhosts = [\"api.github.com\"]\nheader = \"Authorization\"\nquery = \"key\"\n",
            expect![
                "config.toml:5:9: key `vault.inject[0].query`: set either `header` or `query`, not both"
            ],
        );
        check_err(
            "[[vault.inject]]\nsecret = \"gh\"\nhosts = [\"api.github.com\"]\nheader = \"Authorization\"\nformat = \"Bearer\"\n",
            expect![
                "config.toml:5:10: key `vault.inject[0].format`: `Bearer` must hold `{}` exactly once, where the secret goes"
            ],
        );
        check_err(
            "[server\n",
            expect!["config.toml:1:8: unclosed table, expected `]`"],
        );
    }

    #[test]
    fn a_keyring_entry_defaults_to_its_name_and_asks_nothing() {
        let c = parse(
            Path::new("c"),
            "[vault.secrets.gh]\nbackend = \"keyring\"\n[vault.secrets.other]\nbackend = \"keyring\"\nref = \"acct\"\n",
        )
        .unwrap();
        let show = |name: &str| {
            let e = c.vault.entry(name);
            format!(
                "{} {} {}",
                e.backend.config_name(),
                e.reference,
                e.approve_first_use
            )
        };
        expect!["keyring gh false"].assert_eq(&show("gh"));
        expect!["keyring acct false"].assert_eq(&show("other"));
    }

    #[test]
    fn environment_overrides_provider_settings() {
        let c = parse(
            Path::new("c"),
            "[provider]\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "OPENAI_BASE_URL" => Some("http://localhost:9/v1".to_string()),
            "CARAPACE_MODEL" => Some("llama3.2".to_string()),
            _ => None,
        };
        let s = settings(Path::new("c"), &c, &env).unwrap();
        let ProviderSetup::Ready(p) = s.provider else {
            panic!("provider should be ready")
        };
        assert_eq!(
            (p.target.base_url.as_str(), p.target.model.as_str()),
            ("http://localhost:9/v1", "llama3.2")
        );
        assert_eq!(p.target.base_url_origin, Origin::Env("OPENAI_BASE_URL"));
    }

    /// `(provider, kind, model, base_url, key)` of what `model` resolves to, or the error.
    fn resolve(
        config: &str,
        model: &str,
        vars: &[(&str, &str)],
    ) -> Result<
        (
            String,
            providers::ProviderKind,
            String,
            String,
            Option<String>,
        ),
        String,
    > {
        let c = parse(Path::new("config.toml"), config).map_err(|e| e.to_string())?;
        let env = |k: &str| {
            if k == "CARAPACE_MODEL" {
                return Some(model.to_string());
            }
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        match settings(Path::new("config.toml"), &c, &env)
            .map_err(|e| e.to_string())?
            .provider
        {
            ProviderSetup::Ready(p) => {
                let t = p.target;
                Ok((
                    t.provider,
                    t.kind,
                    t.model,
                    t.base_url,
                    t.api_key.map(|k| k.expose().clone()),
                ))
            }
            ProviderSetup::Missing(h) => Err(h),
        }
    }

    #[test]
    fn provider_slash_model_names_pick_the_provider_its_endpoint_and_key() {
        use providers::ProviderKind::{Anthropic, Gemini, Ollama, OpenAi};
        let keys = [
            ("ANTHROPIC_API_KEY", "sk-ant-1"),
            ("GOOGLE_API_KEY", "g-2"),
            ("OPENAI_API_KEY", "sk-3"),
            ("VENICE_API_KEY", "v-4"),
        ];
        let t = |m: &str| resolve("", m, &keys).unwrap();
        assert_eq!(
            t("anthropic/claude-sonnet-4-5"),
            (
                "anthropic".into(),
                Anthropic,
                "claude-sonnet-4-5".into(),
                "https://api.anthropic.com".into(),
                Some("sk-ant-1".into())
            )
        );
        assert_eq!(
            t("gemini/gemini-2.5-pro"),
            (
                "gemini".into(),
                Gemini,
                "gemini-2.5-pro".into(),
                "https://generativelanguage.googleapis.com".into(),
                Some("g-2".into())
            )
        );
        assert_eq!(
            t("ollama/llama3.2"),
            (
                "ollama".into(),
                Ollama,
                "llama3.2".into(),
                "http://127.0.0.1:11434".into(),
                None
            )
        );
        assert_eq!(
            t("venice/llama-3.3-70b").3,
            "https://api.venice.ai/api/v1".to_string()
        );
        // OpenRouter model names keep their own slash.
        assert_eq!(
            resolve("", "openrouter/anthropic/claude-3.5-haiku", &[])
                .unwrap()
                .2,
            "anthropic/claude-3.5-haiku"
        );
        // No known prefix: the openai provider, the whole name as the model.
        assert_eq!(
            t("meta-llama/Llama-3-8B"),
            (
                "openai".into(),
                OpenAi,
                "meta-llama/Llama-3-8B".into(),
                "https://api.openai.com/v1".into(),
                Some("sk-3".into())
            )
        );
        // Base URLs from the conventional variables; GEMINI_API_KEY before GOOGLE_API_KEY.
        let vars = [
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9001"),
            ("OLLAMA_BASE_URL", "http://localhost:9002/"),
            ("GEMINI_API_KEY", "g-first"),
            ("GOOGLE_API_KEY", "g-second"),
        ];
        assert_eq!(
            resolve("", "anthropic/c", &vars).unwrap().3,
            "http://127.0.0.1:9001"
        );
        assert_eq!(
            resolve("", "ollama/m", &vars).unwrap().3,
            "http://localhost:9002/"
        );
        // Ollama through its OpenAI-compatible endpoint, by choice.
        let r = resolve("[providers.ollama]\nkind = \"openai\"\n", "ollama/m", &vars).unwrap();
        assert_eq!((r.1, r.3.as_str()), (OpenAi, "http://localhost:9002/v1"));
        assert_eq!(
            resolve("", "gemini/m", &vars).unwrap().4.as_deref(),
            Some("g-first")
        );
        // Plain http to a non-loopback host is refused, naming the variable.
        let err = resolve(
            "",
            "anthropic/c",
            &[("ANTHROPIC_BASE_URL", "http://api.example.com")],
        )
        .unwrap_err();
        assert!(err.starts_with("$ANTHROPIC_BASE_URL:"), "{err}");
        let err = resolve("", "anthropic/", &[]).unwrap_err();
        assert!(err.contains("names no model"), "{err}");
    }

    #[test]
    fn aliases_and_provider_tables() {
        let config = r#"
[provider.aliases]
fast = "ollama/llama3.2"
smart = "lab/qwen3-32b"

[providers.lab]
kind = "openai"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "LAB_KEY"

[providers.anthropic]
base_url = "https://llm-proxy.example.com/anthropic"
"#;
        let vars = [("LAB_KEY", "lab-secret"), ("ANTHROPIC_API_KEY", "a")];
        let r = resolve(config, "fast", &vars).unwrap();
        assert_eq!((r.0.as_str(), r.2.as_str()), ("ollama", "llama3.2"));
        let r = resolve(config, "smart", &vars).unwrap();
        assert_eq!(
            (r.0.as_str(), r.2.as_str(), r.3.as_str(), r.4.as_deref()),
            (
                "lab",
                "qwen3-32b",
                "http://127.0.0.1:8000/v1",
                Some("lab-secret")
            )
        );
        let r = resolve(config, "anthropic/claude-x", &vars).unwrap();
        assert_eq!(r.3, "https://llm-proxy.example.com/anthropic");
        // The variable still wins over the table.
        let r = resolve(
            config,
            "anthropic/claude-x",
            &[("ANTHROPIC_BASE_URL", "http://127.0.0.1:7")],
        )
        .unwrap();
        assert_eq!(r.3, "http://127.0.0.1:7");
    }

    #[test]
    fn bad_policy_settings_name_file_line_and_key() {
        for (text, expected) in [
            (
                "[policy]\npreset = \"default\"\n[[policy.rules]]\nthen = \"ask\"\n[[policy.rules]]\nthen = 5\n",
                "config.toml:6:8: key `policy.rules[2].then`: invalid type: integer `5`, expected a string",
            ),
            (
                "[[rules]]\ntext = 5\n",
                "config.toml:2:8: key `rules[1].text`: invalid type: integer `5`",
            ),
            (
                "[policy]\npreset = \"lax\"\n",
                "config.toml:2:10: key `policy.preset`: `lax` is not a preset (default, strict)",
            ),
            (
                "[[policy.rules]]\neffect = \"exec\"\nthen = \"maybe\"\n",
                "config.toml:1:1: key `policy.rules[1].then`: `maybe` is not one of allow, ask, deny",
            ),
            (
                "[[policy.rules]]\nthen = \"ask\"\n[[policy.rules]]\nwhen = { session_seen = \"web\" }\nthen = \"allow\"\n",
                "config.toml:3:1: key `policy.rules[2].when.session_seen`: an allow rule cannot depend on what the session has seen",
            ),
            (
                "[[policy.rules]]\nthen = \"ask\"\ncolour = \"red\"\n",
                "unknown field `colour`",
            ),
            (
                "[[policy.rules]]\nname = \"x\"\nthen = \"ask\"\n[[policy.rules]]\nname = \"x\"\nthen = \"deny\"\n",
                "key `policy.rules[2].name`: another rule is already named `rules.x`",
            ),
            (
                "[policy.allow_destinations]\nnet = [\"a.com\"]\n",
                "config.toml:2:7: key `policy.allow_destinations.net`: `net` is not an effect class",
            ),
            (
                "[policy.friction]\nask_above = 10\ndeny_above = 10\n",
                "config.toml:3:14: key `policy.friction.deny_above`: 10 must be above policy.friction.ask_above (10)",
            ),
            (
                "[policy]\nplan_ttl_minutes = 0\n",
                "key `policy.plan_ttl_minutes`: 0 is out of range 1..=1440",
            ),
            (
                "[tools.lsit_dir]\nresult = \"untrusted\"\n",
                "key `tools.lsit_dir`: unknown tool `lsit_dir`",
            ),
            (
                "[tools.list_dir]\nresult = \"dirty\"\n",
                "config.toml:2:10: key `tools.list_dir.result`: `dirty` is not a label",
            ),
            (
                "[tools.exec]\neffect = \"run\"\n",
                "config.toml:2:10: key `tools.exec.effect`: `run` is not an effect class",
            ),
            (
                "[[rules]]\ntext = \"  \"\n",
                "config.toml:2:8: key `rules[1].text`: a rule is 1 to 1000 characters of plain English",
            ),
        ] {
            let err = parse(Path::new("config.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}\n{err}");
            assert!(err.starts_with("config.toml:"), "{err}");
        }
        let c = parse(
            Path::new("config.toml"),
            "[policy]\npreset = \"strict\"\n[policy.allow_destinations]\negress = [\"*.example.com\"]\n[[policy.rules]]\nname = \"no-paste\"\ndestination = \"*.pastebin.com\"\nthen = \"deny\"\n[tools.list_dir]\nresult = \"untrusted/private\"\n",
        )
        .unwrap();
        let at = Locator {
            path: Path::new("config.toml"),
            text: "",
        };
        let policy = c.policy.build(&at).unwrap();
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["preset.strict", "rules.no-paste"]);
        assert_eq!(policy.allow_destinations.len(), 1);
        let o = policy::tool_overrides(&at, &c.tools).unwrap();
        assert_eq!(
            o["list_dir"].result.unwrap().to_string(),
            "untrusted/private"
        );
    }

    #[test]
    fn bad_usage_settings_name_the_key() {
        for (text, expected) in [
            (
                "[usage]\ndaily_budget_usd = -1.0\n",
                "config.toml:2:20: key `usage.daily_budget_usd`: -1 is not a budget",
            ),
            (
                "[usage]\ndaily_budget_usd = nan\n",
                "config.toml:2:20: key `usage.daily_budget_usd`: NaN is not a budget",
            ),
            (
                "[usage.prices.\"lab/x\"]\ninput_per_mtok = -1.0\noutput_per_mtok = 0.0\n",
                "key `usage.prices.lab/x`: prices are dollars per million tokens",
            ),
            (
                "[usage.prices.x]\ninput_per_mtok = 1.0\n",
                "missing field `output_per_mtok`",
            ),
        ] {
            let err = parse(Path::new("config.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}\n{err}");
            assert!(err.starts_with("config.toml:"), "{err}");
        }
        let c = parse(
            Path::new("config.toml"),
            "[usage]\ndaily_budget_usd = 2.5\n[usage.prices.\"lab/*\"]\ninput_per_mtok = 0.0\noutput_per_mtok = 0.0\n",
        )
        .unwrap();
        let a = c.usage.accounting();
        assert_eq!(a.daily_budget_micros, Some(2_500_000));
        assert_eq!(
            a.prices.cost_micros(
                "lab/m",
                carapace_llm::Usage {
                    prompt_tokens: 9,
                    completion_tokens: 9
                }
            ),
            Some(0)
        );
    }

    #[test]
    fn bad_provider_tables_name_file_line_and_key() {
        let cases = [
            (
                "[providers.lab]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
                "config.toml: key `providers.lab`: a provider that is not built in needs a kind",
            ),
            (
                "[providers.lab]\nkind = \"cohere\"\nbase_url = \"https://x.example\"\n",
                "config.toml:2:8: key `providers.lab.kind`: `cohere` is not a provider kind",
            ),
            (
                "[providers.lab]\nkind = \"openai\"\nbase_url = \"http://10.0.0.5:8000/v1\"\n",
                "config.toml:3:12: key `providers.lab.base_url`: `http://10.0.0.5:8000/v1` uses plain http",
            ),
            (
                "[providers.openai]\napi_key = \"sk-1\"\n",
                "config.toml:2:11: key `providers.openai.api_key`: API keys are never read",
            ),
            (
                "[providers.openai]\napi_key_env = \"not a var\"\n",
                "config.toml:2:15: key `providers.openai.api_key_env`: must be an environment variable name",
            ),
            (
                "[provider.aliases]\na = \"b\"\nb = \"ollama/x\"\n",
                "config.toml:2:5: key `provider.aliases.a`: an alias must name a model, not another alias",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(Path::new("config.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{text}\n{err}");
        }
        // A model naming an unknown provider with a slash is the openai provider's model;
        // a prefix of a known provider with nothing after it is an error of the file.
        let c = parse(
            Path::new("config.toml"),
            "[provider]\nmodel = \"gemini/\"\n",
        )
        .unwrap();
        let err = settings(Path::new("config.toml"), &c, &|_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("config.toml: key `provider.model`: `gemini/` names no model"),
            "{err}"
        );
    }

    #[test]
    fn no_provider_gives_the_hint() {
        let s = settings(Path::new("c"), &Config::default(), &|_| None).unwrap();
        assert!(
            matches!(s.provider, ProviderSetup::Missing(h) if h.contains("OPENAI_BASE_URL") && h.contains("ANTHROPIC_API_KEY"))
        );
        // A key alone means OpenAI with its default model.
        let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-x".to_string());
        let s = settings(Path::new("c"), &Config::default(), &env).unwrap();
        assert!(
            matches!(s.provider, ProviderSetup::Ready(p) if p.target.model == OPENAI_DEFAULT_MODEL)
        );
        // Another provider's key alone picks that provider's default model.
        let env = |k: &str| (k == "ANTHROPIC_API_KEY").then(|| "sk-ant-x".to_string());
        let s = settings(Path::new("c"), &Config::default(), &env).unwrap();
        assert!(
            matches!(s.provider, ProviderSetup::Ready(p) if p.target.full_name() == "anthropic/claude-sonnet-4-5")
        );
        // A base URL without a model asks for the model.
        let env =
            |k: &str| (k == "OPENAI_BASE_URL").then(|| "http://127.0.0.1:11434/v1".to_string());
        let s = settings(Path::new("c"), &Config::default(), &env).unwrap();
        assert!(matches!(s.provider, ProviderSetup::Missing(h) if h.contains("CARAPACE_MODEL")));
    }

    #[test]
    fn set_key_keeps_comments_and_validates() {
        let text = set_key(Path::new("c"), DEFAULT_CONFIG, "provider.model", "llama3.2").unwrap();
        assert!(text.contains("# Carapace configuration"));
        assert_eq!(
            get_key(&text, "provider.model").as_deref(),
            Some("llama3.2")
        );
        let text = set_key(Path::new("c"), &text, "agent.max_steps", "8").unwrap();
        assert_eq!(get_key(&text, "agent.max_steps").as_deref(), Some("8"));
        assert!(set_key(Path::new("c"), &text, "server.bind", "0.0.0.0:1").is_err());
        assert!(set_key(Path::new("c"), &text, "server.nonsense", "1").is_err());
        let text = set_key(
            Path::new("c"),
            &text,
            "providers.anthropic.base_url",
            "\"https://proxy.example.com\"",
        )
        .unwrap();
        assert!(text.contains("[providers.anthropic]\nbase_url = \"https://proxy.example.com\""));
        assert!(!text.contains("[providers]\n"), "{text}");
        assert!(set_key(Path::new("c"), &text, "model", "x").is_err());
    }
}
