//! `[channels.NAME]`: messaging channels that agents in shell mode reach through the
//! shims (`imsg`, `signal-cli`, ...) and the agent socket, each with its backend and the
//! filters the Gate applies.
//!
//! ```toml
//! [channels.imsg]
//! backend = "command"            # the platform's CLI, run by the daemon; the only backend
//! shim = "imsg"                  # the shim that maps here; default: the channel's name
//! send = ["/usr/local/bin/imsg", "send", "--to", "{to}", "--text", "{text}"]
//! list_chats = ["/usr/local/bin/imsg", "chats", "--limit", "{limit}", "--json"]
//! history = ["/usr/local/bin/imsg", "history", "--chat-id", "{chat}", "--limit", "{limit}", "--json"]
//! watch = ["/usr/local/bin/imsg", "watch", "--json"]
//! timeout_secs = 30
//! env = { IMSG_PROFILE = "work" }
//! outbound = { allow = ["+1415*", "*@example.com"], deny = ["+1415555*"] }
//! inbound = { allow = ["*"], deny = [] }
//! rate = { per_minute = 30, per_recipient_per_minute = 5 }
//! [[channels.imsg.filters]]
//! pattern = "(?i)\\bpassword\\b"
//! action = "block"               # or "warn"
//! ```
//!
//! Deny by default: without `outbound.allow` nothing can be sent, without `inbound.allow`
//! no message is shown to the agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use carapace_channels::{
    AddressFilter, Channel, CommandBackend, CommandConfig, ContentAction, ContentFilter, Filters,
    Op, Pattern, SendLimiter, Template,
};
use serde::Deserialize;
use toml::Spanned;

use super::Locator;

/// Default of `timeout_secs`.
const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Default of `rate.per_minute`.
const DEFAULT_PER_MINUTE: u64 = 30;
/// Default of `rate.per_recipient_per_minute`.
const DEFAULT_PER_RECIPIENT_PER_MINUTE: u64 = 5;

/// `[channels]`: the channels by name.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct ChannelsSection(pub BTreeMap<Spanned<String>, ChannelTable>);

/// `[channels.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTable {
    /// `command`: run the platform's CLI.
    pub backend: Option<Spanned<String>>,
    /// The shim name that maps to this channel (default: the channel's name).
    pub shim: Option<Spanned<String>>,
    /// argv templates per operation; `send` is required.
    pub send: Option<Spanned<Vec<String>>>,
    pub list_chats: Option<Spanned<Vec<String>>>,
    pub history: Option<Spanned<Vec<String>>>,
    pub watch: Option<Spanned<Vec<String>>>,
    /// How long one operation (but `watch`) may run.
    pub timeout_secs: Option<Spanned<u64>>,
    /// Environment variables of the CLI, over `PATH`, `LANG` and `HOME`.
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Who may be sent to.
    pub outbound: Option<AddressLists>,
    /// Whose messages an agent may read.
    pub inbound: Option<AddressLists>,
    pub rate: Option<RateTable>,
    /// Content filters over outgoing text, in order.
    #[serde(default)]
    pub filters: Vec<FilterTable>,
}

/// `{ allow = [...], deny = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressLists {
    pub allow: Option<Spanned<Vec<String>>>,
    pub deny: Option<Spanned<Vec<String>>>,
}

/// `{ per_minute = N, per_recipient_per_minute = N }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTable {
    pub per_minute: Option<Spanned<u64>>,
    pub per_recipient_per_minute: Option<Spanned<u64>>,
}

/// `[[channels.NAME.filters]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterTable {
    /// A regular expression over the outgoing text.
    pub pattern: Option<Spanned<String>>,
    /// `block` (default) or `warn`.
    pub action: Option<Spanned<String>>,
}

/// Channel and shim names: `[a-z0-9_-]{1,32}`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a name; use 1 to 32 of a-z, 0-9, `_` and `-`"
        ))
    }
}

fn check_env_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not an environment variable name"))
    }
}

impl ChannelsSection {
    /// Checks every channel as [`ChannelsSection::build`] would build it.
    pub fn validate(&self, at: &Locator<'_>) -> anyhow::Result<()> {
        self.build_at(at, None).map(drop)
    }

    /// Builds the channels, for the daemon to hand to the Gate; `path` is the config file
    /// (for error messages) and `home` the daemon's home directory, which the CLIs get as
    /// `HOME`.
    #[allow(
        dead_code,
        reason = "the daemon calls it once the agent socket is wired in serve.rs"
    )]
    pub fn build(&self, path: &Path, home: Option<PathBuf>) -> anyhow::Result<Vec<Channel>> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        self.build_at(&Locator { path, text: &text }, home)
    }

    fn build_at(&self, at: &Locator<'_>, home: Option<PathBuf>) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(self.0.len());
        // Shim name -> (channel, span of the claim).
        let mut shims: BTreeMap<String, String> = BTreeMap::new();
        for (name, table) in &self.0 {
            let channel = table.build(at, name, home.clone())?;
            let shim = channel.shim_name().to_owned();
            let shim_span = table
                .shim
                .as_ref()
                .map_or_else(|| name.span(), Spanned::span);
            let key = format!("channels.{}.shim", name.get_ref());
            if shim != *name.get_ref() && self.0.contains_key(shim.as_str()) {
                return Err(at.span(
                    shim_span,
                    &key,
                    format!("`{shim}` is the name of another channel; a shim name must not be"),
                ));
            }
            if let Some(other) = shims.get(&shim) {
                return Err(at.span(
                    shim_span,
                    &key,
                    format!("the shim `{shim}` is already claimed by channel `{other}`"),
                ));
            }
            shims.insert(shim, name.get_ref().clone());
            channels.push(channel);
        }
        Ok(channels)
    }
}

impl ChannelTable {
    fn build(
        &self,
        at: &Locator<'_>,
        name: &Spanned<String>,
        home: Option<PathBuf>,
    ) -> anyhow::Result<Channel> {
        let prefix = format!("channels.{}", name.get_ref());
        let key = |k: &str| format!("{prefix}.{k}");
        check_name(name.get_ref()).map_err(|p| at.span(name.span(), &prefix, p))?;
        match &self.backend {
            None => {
                return Err(at.span(
                    name.span(),
                    &key("backend"),
                    "a channel needs a backend; the only one is \"command\"".into(),
                ));
            }
            Some(b) if b.get_ref() != "command" => {
                return Err(at.span(
                    b.span(),
                    &key("backend"),
                    format!(
                        "`{}` is not a backend; the only one is \"command\"",
                        b.get_ref()
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(shim) = &self.shim {
            check_name(shim.get_ref()).map_err(|p| at.span(shim.span(), &key("shim"), p))?;
        }
        let template = |op: Op, argv: &Spanned<Vec<String>>| {
            Template::parse(op, argv.get_ref())
                .map_err(|e| at.span(argv.span(), &key(op.name()), e.to_string()))
        };
        let optional = |op: Op, argv: &Option<Spanned<Vec<String>>>| {
            argv.as_ref().map(|a| template(op, a)).transpose()
        };
        let send = match &self.send {
            Some(argv) => template(Op::Send, argv)?,
            None => {
                return Err(at.span(
                    name.span(),
                    &key("send"),
                    "a command channel needs a `send` template, like [\"/usr/local/bin/imsg\", \"send\", \"--to\", \"{to}\", \"--text\", \"{text}\"]".into(),
                ));
            }
        };
        let list_chats = optional(Op::ListChats, &self.list_chats)?;
        let history = optional(Op::History, &self.history)?;
        let watch = optional(Op::Watch, &self.watch)?;
        let in_range = |value: &Option<Spanned<u64>>, k: &str, default: u64, max: u64| {
            let Some(v) = value else {
                return Ok(default);
            };
            let n = *v.get_ref();
            if (1..=max).contains(&n) {
                Ok(n)
            } else {
                Err(at.span(v.span(), &key(k), format!("{n} is out of range 1..={max}")))
            }
        };
        let timeout = in_range(
            &self.timeout_secs,
            "timeout_secs",
            DEFAULT_TIMEOUT_SECS,
            600,
        )?;
        let mut env = Vec::with_capacity(self.env.len());
        for (k, v) in &self.env {
            let env_key = key(&format!("env.{}", k.get_ref()));
            check_env_name(k.get_ref()).map_err(|p| at.span(k.span(), &env_key, p))?;
            if v.get_ref().contains('\0') {
                return Err(at.span(
                    v.span(),
                    &env_key,
                    "a value must not hold a NUL character".into(),
                ));
            }
            env.push((k.get_ref().clone(), v.get_ref().clone()));
        }
        let lists = |lists: &Option<AddressLists>, which: &str| -> anyhow::Result<AddressFilter> {
            let patterns = |list: &Option<Spanned<Vec<String>>>, part: &str| {
                let Some(list) = list else {
                    return Ok(Vec::new());
                };
                list.get_ref()
                    .iter()
                    .map(|p| {
                        Pattern::parse(p).map_err(|e| {
                            at.span(
                                list.span(),
                                &key(&format!("{which}.{part}")),
                                format!("`{p}`: {e}"),
                            )
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            Ok(match lists {
                Some(l) => AddressFilter {
                    allow: patterns(&l.allow, "allow")?,
                    deny: patterns(&l.deny, "deny")?,
                },
                None => AddressFilter::default(),
            })
        };
        let outbound = lists(&self.outbound, "outbound")?;
        let inbound = lists(&self.inbound, "inbound")?;
        let (per_minute, per_recipient) = match &self.rate {
            Some(r) => (
                in_range(&r.per_minute, "rate.per_minute", DEFAULT_PER_MINUTE, 10_000)?,
                in_range(
                    &r.per_recipient_per_minute,
                    "rate.per_recipient_per_minute",
                    DEFAULT_PER_RECIPIENT_PER_MINUTE,
                    10_000,
                )?,
            ),
            None => (DEFAULT_PER_MINUTE, DEFAULT_PER_RECIPIENT_PER_MINUTE),
        };
        let mut content = Vec::with_capacity(self.filters.len());
        for (i, f) in self.filters.iter().enumerate() {
            let n = i + 1;
            let pattern_key = key(&format!("filters[{n}].pattern"));
            let action = match &f.action {
                None => ContentAction::Block,
                Some(a) => match a.get_ref().as_str() {
                    "block" => ContentAction::Block,
                    "warn" => ContentAction::Warn,
                    other => {
                        return Err(at.span(
                            a.span(),
                            &key(&format!("filters[{n}].action")),
                            format!("`{other}` is not an action; use block or warn"),
                        ));
                    }
                },
            };
            let Some(pattern) = &f.pattern else {
                return Err(at.key(&pattern_key, "a filter needs a pattern".into()));
            };
            let filter = ContentFilter::new(n, pattern.get_ref(), action)
                .map_err(|e| at.span(pattern.span(), &pattern_key, e.to_string()))?;
            content.push(filter);
        }
        let backend = CommandBackend::new(CommandConfig {
            send,
            list_chats,
            history,
            watch,
            env,
            home,
            timeout: Duration::from_secs(timeout),
        });
        Ok(Channel {
            name: name.get_ref().clone(),
            shim: self.shim.as_ref().map(|s| s.get_ref().clone()),
            backend: Arc::new(backend),
            filters: Filters {
                outbound,
                inbound,
                content,
                limiter: SendLimiter::new(per_minute as u32, per_recipient as u32),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use carapace_channels::{ContentVerdict, Refusal, content_verdict};

    use super::*;
    use crate::config::parse;

    const EXAMPLE: &str = r#"
[channels.imsg]
backend = "command"
send = ["/usr/local/bin/imsg", "send", "--to", "{to}", "--text", "{text}"]
list_chats = ["/usr/local/bin/imsg", "chats", "--limit", "{limit}", "--json"]
history = ["/usr/local/bin/imsg", "history", "--chat-id", "{chat}", "--limit", "{limit}", "--json"]
watch = ["/usr/local/bin/imsg", "watch", "--json"]
timeout_secs = 30
env = { IMSG_PROFILE = "work" }
outbound = { allow = ["+1415*", "*@example.com"], deny = ["+1415555*"] }
inbound = { allow = ["*"], deny = [] }
rate = { per_minute = 30, per_recipient_per_minute = 5 }
[[channels.imsg.filters]]
pattern = "(?i)\\bpassword\\b"
action = "block"
[[channels.imsg.filters]]
pattern = "(?i)urgent"
action = "warn"

[channels.work-signal]
backend = "command"
shim = "signal-cli"
send = ["/usr/bin/signal-cli", "send", "-m", "{text}", "--", "{to}"]
"#;

    #[test]
    fn the_example_builds() {
        let c = parse(Path::new("config.toml"), EXAMPLE).unwrap();
        let at = Locator {
            path: Path::new("config.toml"),
            text: EXAMPLE,
        };
        let channels = c.channels.build_at(&at, None).unwrap();
        let names: Vec<(&str, &str, &str)> = channels
            .iter()
            .map(|c| (c.name.as_str(), c.shim_name(), c.backend.kind()))
            .collect();
        assert_eq!(
            names,
            [
                ("imsg", "imsg", "command"),
                ("work-signal", "signal-cli", "command")
            ]
        );
        let imsg = &channels[0].filters;
        assert_eq!(imsg.outbound.check("+1 (415) 777-0100"), Ok(()));
        assert!(matches!(
            imsg.outbound.check("+14155550100"),
            Err(Refusal::Denied { .. })
        ));
        assert_eq!(
            imsg.outbound.check("+12125550100"),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(imsg.inbound.check("anyone"), Ok(()));
        assert_eq!(
            content_verdict(&imsg.content, "URGENT: the Password"),
            ContentVerdict {
                blocked_by: Some(1),
                warnings: vec![2]
            }
        );
        assert_eq!(
            (
                imsg.limiter.per_minute(),
                imsg.limiter.per_recipient_per_minute()
            ),
            (30, 5)
        );
        // Deny by default: a channel without lists reaches nobody, and reads nobody.
        let signal = &channels[1].filters;
        assert_eq!(
            signal.outbound.check("+14155550100"),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            signal.inbound.check("+14155550100"),
            Err(Refusal::NotAllowed)
        );
    }

    #[tokio::test]
    async fn a_channel_without_a_template_does_not_support_the_operation() {
        let c = parse(Path::new("config.toml"), EXAMPLE).unwrap();
        let channels = c.channels.build(Path::new("config.toml"), None).unwrap();
        assert_eq!(
            channels[1].backend.history("x", 1).await,
            Err(carapace_channels::ChannelError::Unsupported("history"))
        );
    }

    #[test]
    fn bad_channels_name_file_line_and_key() {
        let send = "send = [\"/bin/imsg\", \"{to}\", \"{text}\"]\n";
        let cases = [
            (
                format!("[channels.Bad]\nbackend = \"command\"\n{send}"),
                "config.toml:1:11: key `channels.Bad`: `Bad` is not a name; use 1 to 32 of a-z, 0-9, `_` and `-`",
            ),
            (
                format!("[channels.imsg]\nbackend = \"telegram\"\n{send}"),
                "config.toml:2:11: key `channels.imsg.backend`: `telegram` is not a backend; the only one is \"command\"",
            ),
            (
                format!("[channels.imsg]\n{send}"),
                "config.toml:1:11: key `channels.imsg.backend`: a channel needs a backend",
            ),
            (
                "[channels.imsg]\nbackend = \"command\"\n".to_owned(),
                "config.toml:1:11: key `channels.imsg.send`: a command channel needs a `send` template",
            ),
            (
                "[channels.imsg]\nbackend = \"command\"\nsend = [\"imsg\", \"{to}\", \"{text}\"]\n"
                    .to_owned(),
                "config.toml:3:8: key `channels.imsg.send`: the program `imsg` must be an absolute path",
            ),
            (
                "[channels.imsg]\nbackend = \"command\"\nsend = []\n".to_owned(),
                "config.toml:3:8: key `channels.imsg.send`: the command is empty",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}history = [\"/bin/imsg\", \"{{foo}}\"]\n"
                ),
                "config.toml:4:11: key `channels.imsg.history`: unknown placeholder `{foo}`",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}list_chats = [\"/bin/imsg\", \"{{chat}}\"]\n"
                ),
                "config.toml:4:14: key `channels.imsg.list_chats`: list_chats has no value for `{chat}`; it takes {limit}",
            ),
            (
                format!("[channels.imsg]\nbackend = \"command\"\n{send}timeout_secs = 0\n"),
                "config.toml:4:16: key `channels.imsg.timeout_secs`: 0 is out of range 1..=600",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}env = {{ \"A-B\" = \"x\" }}\n"
                ),
                "config.toml:4:9: key `channels.imsg.env.A-B`: `A-B` is not an environment variable name",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}outbound = {{ allow = [\"+1415*\", \"\"] }}\n"
                ),
                "config.toml:4:22: key `channels.imsg.outbound.allow`: ``: a pattern must not be empty",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}rate = {{ per_minute = 0 }}\n"
                ),
                "config.toml:4:23: key `channels.imsg.rate.per_minute`: 0 is out of range 1..=10000",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}[[channels.imsg.filters]]\npattern = \"ok\"\n[[channels.imsg.filters]]\npattern = \"(unclosed\"\n"
                ),
                "config.toml:7:11: key `channels.imsg.filters[2].pattern`: not a regular expression: unclosed group",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}[[channels.imsg.filters]]\npattern = \"x\"\naction = \"drop\"\n"
                ),
                "config.toml:6:10: key `channels.imsg.filters[1].action`: `drop` is not an action; use block or warn",
            ),
            (
                format!("[channels.imsg]\nbackend = \"command\"\n{send}colour = \"red\"\n"),
                "config.toml:4:1: key `channels.imsg.colour`: unknown field `colour`",
            ),
            (
                format!(
                    "[channels.imsg]\nbackend = \"command\"\n{send}[channels.work]\nbackend = \"command\"\nshim = \"imsg\"\n{send}"
                ),
                "config.toml:6:8: key `channels.work.shim`: `imsg` is the name of another channel",
            ),
            (
                format!(
                    "[channels.a]\nbackend = \"command\"\nshim = \"imsg\"\n{send}[channels.b]\nbackend = \"command\"\nshim = \"imsg\"\n{send}"
                ),
                "config.toml:7:8: key `channels.b.shim`: the shim `imsg` is already claimed by channel `a`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(Path::new("config.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{text}\n{err}");
        }
    }
}
