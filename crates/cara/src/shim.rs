//! Multi-call shims: run as `imsg`, `signal-cli`, `discord` or `gog`, `cara` parses its
//! command line like the real tool's common commands, turns each into a `channel.*`
//! request on the agent socket (`ipc.rs`, docs/agent-socket.md) with `channel` = the
//! shim's name, and prints the answer in the real tool's format. `cara shim install`
//! makes the links, `cara shim list` says what each covers.
//!
//! A shim never runs the real tool, never reads its files and holds no credential: the
//! daemon decides, records and sends. What a shim cannot express on the socket it
//! refuses (exit 2) instead of approximating: a dropped `--file` would be a different
//! message.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ipc::{CallError, IpcClient, IpcError, RpcError};

/// A messaging CLI that `cara` can stand in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// iMessage, like steipete/imsg.
    Imsg,
    /// Signal, like AsamK/signal-cli.
    Signal,
    /// Discord, like discli (DevRohit06/discli).
    Discord,
    /// Gmail, like steipete/gogcli (`gog`).
    Gog,
}

/// Every shim.
pub const TOOLS: [Tool; 4] = [Tool::Imsg, Tool::Signal, Tool::Discord, Tool::Gog];

impl Tool {
    /// The tool named `name` (the file name it is invoked as).
    pub fn from_name(name: &str) -> Option<Tool> {
        TOOLS.into_iter().find(|t| t.name() == name)
    }

    /// The name it is invoked as, which is also its channel on the socket.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Imsg => "imsg",
            Tool::Signal => "signal-cli",
            Tool::Discord => "discord",
            Tool::Gog => "gog",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Tool::Imsg => "iMessage; the syntax of steipete/imsg",
            Tool::Signal => "Signal; the syntax of AsamK/signal-cli",
            Tool::Discord => "Discord; the syntax of discli (DevRohit06/discli)",
            Tool::Gog => "Gmail; the syntax of steipete/gogcli",
        }
    }

    fn covered(self) -> &'static str {
        match self {
            Tool::Imsg => "chats, history, send, watch",
            Tool::Signal => "send, receive, listContacts, listGroups",
            Tool::Discord => "message send, message list, dm send, dm list, channel list, listen",
            Tool::Gog => "gmail send, gmail search, gmail thread get",
        }
    }

    /// A refusal in the style of the tool's own errors, with Carapace's code.
    fn error_line(self, label: &str, e: &RpcError) -> String {
        match self {
            // discli is a click program: click prints `Error: ...`.
            Tool::Discord => format!("Error: {label} failed: {e}"),
            _ => format!("{}: {label} failed: {e}", self.name()),
        }
    }
}

/// The tool the running executable was invoked as, from the file name of argv[0].
pub fn invoked_as() -> Option<Tool> {
    let argv0 = std::env::args_os().next()?;
    Tool::from_name(Path::new(&argv0).file_name()?.to_str()?)
}

/// Runs the shim for `tool` with this process's arguments and returns its exit status.
pub fn main(tool: Tool) -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("{}: argument {arg:?} is not UTF-8", tool.name());
                return ExitCode::from(2);
            }
        }
    }
    match parse(tool, &args, &mut io::stdin().lock()) {
        Ok(job) => execute(tool, job),
        Err(e) => {
            eprintln!("{}", e.message(tool));
            ExitCode::from(2)
        }
    }
}

/// One row of what the shims cover.
struct Covered {
    tool: Tool,
    command: &'static str,
    syntax: &'static str,
    method: &'static str,
    output: &'static str,
}

const COVERAGE: &[Covered] = &[
    Covered {
        tool: Tool::Imsg,
        command: "chats",
        syntax: "imsg chats [--limit N] [--json]",
        method: "channel.list_chats",
        output: "`[ID] NAME (IDENTIFIER) last=TIME`; `--json`: one chat object per line",
    },
    Covered {
        tool: Tool::Imsg,
        command: "history",
        syntax: "imsg history --chat-id ID [--limit N] [--attachments] [--json]",
        method: "channel.history",
        output: "`TIME [sent|recv] SENDER: TEXT`; `--json`: one message object per line",
    },
    Covered {
        tool: Tool::Imsg,
        command: "send",
        syntax: "imsg send --to HANDLE --text TEXT [--service S] [--region R] [--json]",
        method: "channel.send",
        output: "`sent`; `--json`: `{\"status\":\"sent\"}`",
    },
    Covered {
        tool: Tool::Imsg,
        command: "watch",
        syntax: "imsg watch [--chat-id ID] [--debounce D] [--attachments] [--json]",
        method: "channel.watch",
        output: "as history, one line per new message until interrupted",
    },
    Covered {
        tool: Tool::Signal,
        command: "send",
        syntax: "signal-cli [-a ACCOUNT] [-o json] send (-m TEXT | --message-from-stdin) [RECIPIENT...] [-g GROUP...]",
        method: "channel.send (one per recipient)",
        output: "the message timestamp; `-o json`: `{\"timestamp\",\"results\"}`",
    },
    Covered {
        tool: Tool::Signal,
        command: "receive",
        syntax: "signal-cli [-a ACCOUNT] [-o json] receive [-t SECONDS] [--max-messages N]",
        method: "channel.watch",
        output: "`Envelope from:` / `Timestamp:` / `Body:` blocks; `-o json`: one `{\"envelope\"}` per line",
    },
    Covered {
        tool: Tool::Signal,
        command: "listContacts",
        syntax: "signal-cli [-a ACCOUNT] [-o json] listContacts",
        method: "channel.list_chats (chats that are not groups)",
        output: "`Number: ... Name: ... Blocked: false ...`; `-o json`: an array",
    },
    Covered {
        tool: Tool::Signal,
        command: "listGroups",
        syntax: "signal-cli [-a ACCOUNT] [-o json] listGroups",
        method: "channel.list_chats (chats that are groups)",
        output: "`Id: ... Name: ...  Active: true Blocked: false`; `-o json`: an array",
    },
    Covered {
        tool: Tool::Discord,
        command: "message send",
        syntax: "discord [--json] message send CHANNEL TEXT",
        method: "channel.send",
        output: "`Sent message ID to #CHANNEL`; `--json`: `{\"id\",\"channel\",\"content\"}`",
    },
    Covered {
        tool: Tool::Discord,
        command: "message list",
        syntax: "discord [--json] message list CHANNEL [--limit N]",
        method: "channel.history",
        output: "`[YYYY-MM-DD HH:MM:SS] AUTHOR: TEXT`; `--json`: an array",
    },
    Covered {
        tool: Tool::Discord,
        command: "dm send",
        syntax: "discord [--json] dm send USER TEXT",
        method: "channel.send",
        output: "`Sent DM to USER (ID: USER): TEXT`; `--json`: an object",
    },
    Covered {
        tool: Tool::Discord,
        command: "dm list",
        syntax: "discord [--json] dm list USER [--limit N]",
        method: "channel.history",
        output: "`[YYYY-MM-DD HH:MM:SS] (msg:ID) AUTHOR: TEXT`; `--json`: an array",
    },
    Covered {
        tool: Tool::Discord,
        command: "channel list",
        syntax: "discord [--json] channel list",
        method: "channel.list_chats",
        output: "`#NAME (TYPE) — SERVER (ID: ID)`; `--json`: an array",
    },
    Covered {
        tool: Tool::Discord,
        command: "listen",
        syntax: "discord [--json] listen [--channel C] [--events E]",
        method: "channel.watch",
        output: "`[TIME] (msg:ID) AUTHOR (uid:AUTHOR) in #CHAT (ch:CHAT): TEXT`; `--json`: one object per line",
    },
    Covered {
        tool: Tool::Gog,
        command: "gmail send",
        syntax: "gog [--account A] [--json|--plain] gmail send --to ADDR[,ADDR] --subject S (--body B | --body-file PATH|-)",
        method: "channel.send (one per address; text `Subject: S\\n\\nBODY`)",
        output: "`message_id<TAB>ID`; `--json`: `{\"messageId\",\"threadId\"}`",
    },
    Covered {
        tool: Tool::Gog,
        command: "gmail search",
        syntax: "gog [--account A] [--json|--plain] gmail search QUERY... [--max N]",
        method: "channel.list_chats (words of QUERY matched here)",
        output: "table `ID DATE FROM SUBJECT LABELS`; `--plain`: TSV; `--json`: `{\"threads\",\"nextPageToken\"}`",
    },
    Covered {
        tool: Tool::Gog,
        command: "gmail thread get",
        syntax: "gog [--account A] [--json|--plain] gmail thread get THREAD_ID",
        method: "channel.history",
        output: "`Thread contains N message(s)`, then `=== Message i/N: ID ===` blocks; `--json`: `{\"thread\",\"downloaded\"}`",
    },
];

fn help(tool: Tool) -> String {
    let mut text = format!(
        "{name}: a Carapace shim ({about})\n\n\
         This is not the real {name}: it is `cara` under another name. Each covered command\n\
         becomes a request on the Carapace agent socket ($CARAPACE_SOCKET) for the channel\n\
         the daemon maps to \"{name}\"; the daemon checks it against its policy, records it\n\
         and talks to the real service. Other commands are not available.\n\n\
         Covered commands:\n",
        name = tool.name(),
        about = tool.about(),
    );
    for row in COVERAGE.iter().filter(|r| r.tool == tool) {
        text.push_str(&format!("  {}\n", row.syntax));
    }
    if tool == Tool::Gog {
        text.push_str(
            "\nThe channel has no subject field: `gmail send` sends the text \
             \"Subject: S\\n\\nBODY\",\nand `gmail thread get` splits such a text again.\n",
        );
    }
    text.push_str(
        "\nExit status: 0 done; 1 refused by Carapace (its code is printed); 2 a usage error,\n\
         a command that is not covered, or no connection to the daemon.\n",
    );
    text
}

#[derive(Debug, PartialEq)]
enum ShimError {
    /// A command or option the shim does not cover.
    NotCovered(String),
    /// A covered command used wrongly.
    Usage(String),
}

impl ShimError {
    fn message(&self, tool: Tool) -> String {
        match self {
            ShimError::NotCovered(what) => format!(
                "{}: {what} is not available inside Carapace (covered: {})",
                tool.name(),
                tool.covered()
            ),
            ShimError::Usage(msg) => {
                format!("{name}: {msg} (see {name} --help)", name = tool.name())
            }
        }
    }
}

fn usage(msg: impl Into<String>) -> ShimError {
    ShimError::Usage(msg.into())
}

/// What a command line asks for.
#[derive(Debug)]
enum Job {
    /// Help or version text for stdout.
    Print(String),
    /// Calls of one method, in order; the results are rendered together.
    Calls {
        label: &'static str,
        method: &'static str,
        params: Vec<Value>,
        out: Out,
    },
    /// `channel.watch`, then each message rendered until the end, the timeout or `max`.
    Watch {
        label: &'static str,
        params: Value,
        out: WatchOut,
        timeout: Option<Duration>,
        max: Option<usize>,
    },
}

// ---------------------------------------------------------------------------------
// Command-line parsing
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Arity {
    Flag,
    One,
    /// Values up to the next option (argparse's `nargs="*"`).
    Many,
}

struct Opt {
    names: &'static [&'static str],
    key: &'static str,
    arity: Arity,
}

const fn flag(names: &'static [&'static str], key: &'static str) -> Opt {
    Opt {
        names,
        key,
        arity: Arity::Flag,
    }
}

const fn one(names: &'static [&'static str], key: &'static str) -> Opt {
    Opt {
        names,
        key,
        arity: Arity::One,
    }
}

const fn many(names: &'static [&'static str], key: &'static str) -> Opt {
    Opt {
        names,
        key,
        arity: Arity::Many,
    }
}

#[derive(Default, Debug)]
struct Parsed {
    values: Vec<(&'static str, String)>,
    flags: Vec<&'static str>,
    positional: Vec<String>,
}

impl Parsed {
    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn flag(&self, key: &str) -> bool {
        self.flags.contains(&key)
    }

    fn merge(&mut self, other: Parsed) {
        self.values.extend(other.values);
        self.flags.extend(other.flags);
        self.positional.extend(other.positional);
    }

    fn no_positional(&self) -> Result<(), ShimError> {
        match self.positional.first() {
            Some(extra) => Err(usage(format!("unexpected argument {extra:?}"))),
            None => Ok(()),
        }
    }

    fn number(&self, key: &str, option: &str) -> Result<Option<u64>, ShimError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| usage(format!("{option} needs a number, not {v:?}")))
            })
            .transpose()
    }
}

/// Parses options anywhere among positionals. `cmd` names the command in messages: an
/// unknown option is "not available", as `cmd --option`.
fn parse_opts(args: &[String], opts: &[&Opt], cmd: &str) -> Result<Parsed, ShimError> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.positional.extend(args[i..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            parsed.positional.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if arg.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let found = opts
            .iter()
            .find(|o| o.names.contains(&name))
            .map(|o| (*o, inline));
        // `-mTEXT`: a short option with its value attached.
        let found = found.or_else(|| {
            let short = arg.get(..2)?;
            let o = opts.iter().find(|o| {
                o.arity == Arity::One && !arg.starts_with("--") && o.names.contains(&short)
            })?;
            Some((*o, Some(arg[2..].to_string())))
        });
        let Some((opt, inline)) = found else {
            return Err(ShimError::NotCovered(format!("{cmd} {name}")));
        };
        match opt.arity {
            Arity::Flag if inline.is_some() => {
                return Err(usage(format!("{name} takes no value")));
            }
            Arity::Flag => parsed.flags.push(opt.key),
            Arity::One => {
                let value = match inline {
                    Some(value) => value,
                    None => {
                        let value = args
                            .get(i)
                            .ok_or_else(|| usage(format!("{name} needs a value")))?;
                        i += 1;
                        value.clone()
                    }
                };
                parsed.values.push((opt.key, value));
            }
            Arity::Many => {
                parsed.values.extend(inline.map(|v| (opt.key, v)));
                while let Some(value) = args.get(i).filter(|a| !a.starts_with('-')) {
                    parsed.values.push((opt.key, value.clone()));
                    i += 1;
                }
            }
        }
    }
    Ok(parsed)
}

/// Splits leading global options from the command: the globals parsed, then the command
/// word and what follows it.
fn split_command<'a>(
    args: &'a [String],
    globals: &[&Opt],
) -> Result<(Parsed, Option<&'a str>, &'a [String]), ShimError> {
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') && args[i] != "--" {
        let name = args[i].split_once('=').map_or(args[i].as_str(), |(n, _)| n);
        match globals.iter().find(|o| o.names.contains(&name)) {
            Some(o) if o.arity == Arity::One && !args[i].contains('=') => i += 2,
            Some(_) => i += 1,
            None => return Err(ShimError::NotCovered(name.to_string())),
        }
    }
    let i = i.min(args.len());
    let parsed = parse_opts(&args[..i], globals, "")?;
    let rest = args.get(i..).unwrap_or_default();
    match rest.split_first() {
        Some((cmd, rest)) if cmd != "--" => Ok((parsed, Some(cmd), rest)),
        _ => Ok((parsed, None, rest)),
    }
}

fn wants_help(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--help" || a == "-h")
}

fn version(tool: Tool) -> String {
    format!(
        "{} (Carapace shim in cara {})\n",
        tool.name(),
        env!("CARGO_PKG_VERSION")
    )
}

fn parse(tool: Tool, args: &[String], stdin: &mut dyn Read) -> Result<Job, ShimError> {
    if wants_help(args) {
        return Ok(Job::Print(help(tool)));
    }
    match tool {
        Tool::Imsg => parse_imsg(args),
        Tool::Signal => parse_signal(args, stdin),
        Tool::Discord => parse_discord(args),
        Tool::Gog => parse_gog(args, stdin),
    }
}

fn channel(tool: Tool) -> Value {
    Value::String(tool.name().to_string())
}

// imsg -----------------------------------------------------------------------------

const IMSG_GLOBALS: &[&Opt] = &[
    &flag(&["--json"], "json"),
    // The real tool reads this database; the daemon's side decides which it reads.
    &one(&["--db"], "db"),
    &flag(&["--verbose"], "verbose"),
    &flag(&["--version", "-V"], "version"),
];

const IMSG_CHATS: &[&Opt] = &[&one(&["--limit"], "limit")];
const IMSG_HISTORY: &[&Opt] = &[
    &one(&["--chat-id"], "chat-id"),
    &one(&["--limit"], "limit"),
    &flag(&["--attachments"], "attachments"),
];
const IMSG_SEND: &[&Opt] = &[
    &one(&["--to"], "to"),
    &one(&["--text"], "text"),
    &one(&["--service"], "service"),
    &one(&["--region"], "region"),
];
const IMSG_WATCH: &[&Opt] = &[
    &one(&["--chat-id"], "chat-id"),
    &one(&["--debounce"], "debounce"),
    &flag(&["--attachments"], "attachments"),
];

/// A command's options after the tool's global ones.
fn with(globals: &[&'static Opt], extra: &[&'static Opt]) -> Vec<&'static Opt> {
    globals.iter().chain(extra).copied().collect()
}

fn parse_imsg(args: &[String]) -> Result<Job, ShimError> {
    let (globals, cmd, rest) = split_command(args, IMSG_GLOBALS)?;
    if globals.flag("version") {
        return Ok(Job::Print(version(Tool::Imsg)));
    }
    let Some(cmd) = cmd else {
        return Err(usage("missing command"));
    };
    let imsg = channel(Tool::Imsg);
    match cmd {
        "chats" => {
            let mut p = parse_opts(rest, &with(IMSG_GLOBALS, IMSG_CHATS), "chats")?;
            p.merge(globals);
            p.no_positional()?;
            let limit = p.number("limit", "--limit")?.unwrap_or(20);
            Ok(Job::Calls {
                label: "chats",
                method: "channel.list_chats",
                params: vec![json!({"channel": imsg, "limit": limit})],
                out: Out::ImsgChats {
                    json: p.flag("json"),
                },
            })
        }
        "history" => {
            // Without attachments on the socket, --attachments has nothing to add.
            let mut p = parse_opts(rest, &with(IMSG_GLOBALS, IMSG_HISTORY), "history")?;
            p.merge(globals);
            p.no_positional()?;
            let chat = p
                .get("chat-id")
                .ok_or_else(|| usage("missing option --chat-id"))?;
            let limit = p.number("limit", "--limit")?.unwrap_or(50);
            Ok(Job::Calls {
                label: "history",
                method: "channel.history",
                params: vec![json!({"channel": imsg, "chat": chat, "limit": limit})],
                out: Out::ImsgHistory {
                    json: p.flag("json"),
                },
            })
        }
        "send" => {
            let mut p = parse_opts(rest, &with(IMSG_GLOBALS, IMSG_SEND), "send")?;
            p.merge(globals);
            p.no_positional()?;
            let to = p
                .get("to")
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| usage("missing option --to"))?;
            let text = p
                .get("text")
                .filter(|t| !t.is_empty())
                .ok_or_else(|| usage("missing option --text"))?;
            // The service and region steer how the real tool delivers; the daemon's side
            // of the channel decides that, so they are checked and then left to it.
            if let Some(service) = p.get("service")
                && !matches!(service, "imessage" | "sms" | "auto")
            {
                return Err(usage(format!(
                    "invalid --service {service:?} (imessage, sms or auto)"
                )));
            }
            Ok(Job::Calls {
                label: "send",
                method: "channel.send",
                params: vec![json!({"channel": imsg, "to": to, "text": text})],
                out: Out::ImsgSend {
                    json: p.flag("json"),
                },
            })
        }
        "watch" => {
            // The daemon pushes messages as they come: there is nothing to debounce.
            let mut p = parse_opts(rest, &with(IMSG_GLOBALS, IMSG_WATCH), "watch")?;
            p.merge(globals);
            p.no_positional()?;
            Ok(Job::Watch {
                label: "watch",
                params: json!({"channel": imsg}),
                out: WatchOut::Imsg {
                    json: p.flag("json"),
                    chat: p.get("chat-id").map(str::to_string),
                },
                timeout: None,
                max: None,
            })
        }
        other => Err(ShimError::NotCovered(other.to_string())),
    }
}

// signal-cli -------------------------------------------------------------------------

const SIGNAL_GLOBALS: &[&Opt] = &[
    &one(&["-a", "--account"], "account"),
    &one(&["-o", "--output"], "output"),
    // Where the real tool keeps its data: the daemon's side, not the sandbox.
    &one(&["--config"], "config"),
    &flag(&["--verbose"], "verbose"),
    &flag(&["-v", "--version"], "version"),
];

const SIGNAL_SEND: &[&Opt] = &[
    &one(&["-m", "--message"], "message"),
    &flag(&["--message-from-stdin"], "stdin"),
    &many(&["-g", "--group-id", "--group"], "group"),
    &many(&["-u", "--username"], "username"),
];
const SIGNAL_RECEIVE: &[&Opt] = &[
    &one(&["-t", "--timeout"], "timeout"),
    &one(&["--max-messages"], "max"),
    &flag(&["--json"], "json"),
    &flag(&["--ignore-attachments"], "ignore-attachments"),
    &flag(&["--ignore-stories"], "ignore-stories"),
];

fn parse_signal(args: &[String], stdin: &mut dyn Read) -> Result<Job, ShimError> {
    let (globals, cmd, rest) = split_command(args, SIGNAL_GLOBALS)?;
    if globals.flag("version") {
        return Ok(Job::Print(version(Tool::Signal)));
    }
    let json_output = match globals.get("output") {
        None | Some("plain-text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(usage(format!(
                "invalid --output {other:?} (plain-text or json)"
            )));
        }
    };
    let Some(cmd) = cmd else {
        return Err(usage("missing command"));
    };
    let signal = channel(Tool::Signal);
    match cmd {
        "send" => {
            let p = parse_opts(rest, SIGNAL_SEND, "send")?;
            let message = if p.flag("stdin") {
                if p.get("message").is_some() {
                    return Err(usage(
                        "argument --message-from-stdin: not allowed with argument -m/--message",
                    ));
                }
                let mut text = String::new();
                stdin
                    .read_to_string(&mut text)
                    .map_err(|e| usage(format!("failed to read message from stdin: {e}")))?;
                text
            } else {
                p.get("message").unwrap_or_default().to_string()
            };
            let mut targets: Vec<String> = p.positional.clone();
            targets.extend(p.all("username").into_iter().map(|u| format!("u:{u}")));
            let groups = p.all("group");
            targets.extend(groups.iter().cloned());
            if targets.is_empty() {
                return Err(usage("No recipients given"));
            }
            if message.is_empty() {
                return Err(usage(
                    "Sending empty message is not allowed, either a message, attachment or sticker must be given.",
                ));
            }
            Ok(Job::Calls {
                label: "send",
                method: "channel.send",
                params: targets
                    .iter()
                    .map(|to| json!({"channel": signal, "to": to, "text": message}))
                    .collect(),
                out: Out::SignalSend {
                    json: json_output,
                    groups,
                },
            })
        }
        "receive" => {
            let p = parse_opts(rest, SIGNAL_RECEIVE, "receive")?;
            p.no_positional()?;
            let seconds: f64 = match p.get("timeout") {
                None => 3.0,
                Some(t) => t
                    .parse()
                    .map_err(|_| usage(format!("-t needs a number of seconds, not {t:?}")))?,
            };
            let timeout = (seconds >= 0.0)
                .then(|| Duration::try_from_secs_f64(seconds).ok())
                .flatten();
            if seconds >= 0.0 && timeout.is_none() {
                return Err(usage(format!("-t {seconds} is out of range")));
            }
            let max = p.number("max", "--max-messages")?;
            Ok(Job::Watch {
                label: "receive",
                params: json!({"channel": signal}),
                out: WatchOut::Signal {
                    json: json_output || p.flag("json"),
                    account: globals.get("account").map(str::to_string),
                },
                timeout,
                max: max.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            })
        }
        "listContacts" | "listGroups" => {
            let p = parse_opts(rest, &[], cmd)?;
            p.no_positional()?;
            let groups = cmd == "listGroups";
            Ok(Job::Calls {
                label: if groups { "listGroups" } else { "listContacts" },
                method: "channel.list_chats",
                params: vec![json!({"channel": signal})],
                out: Out::SignalChats {
                    json: json_output,
                    groups,
                },
            })
        }
        other => Err(ShimError::NotCovered(other.to_string())),
    }
}

// discord (discli) ---------------------------------------------------------------------

const DISCORD_GLOBALS: &[&Opt] = &[
    &flag(&["--json"], "json"),
    // The daemon holds the bot token; one given here is not used.
    &one(&["--token"], "token"),
    &flag(&["--yes", "-y"], "yes"),
    &one(&["--profile"], "profile"),
    &flag(&["--version", "-V"], "version"),
];

const DISCORD_LISTEN: &[&Opt] = &[
    &one(&["--channel"], "channel"),
    &one(&["--events"], "events"),
    &flag(&["--ignore-bots", "--include-bots"], "bots"),
];
const DISCORD_LIMIT: &[&Opt] = &[&one(&["--limit"], "limit")];

fn parse_discord(args: &[String]) -> Result<Job, ShimError> {
    let (globals, group, rest) = split_command(args, DISCORD_GLOBALS)?;
    if globals.flag("version") {
        return Ok(Job::Print(version(Tool::Discord)));
    }
    let Some(group) = group else {
        return Err(usage("missing command"));
    };
    let discord = channel(Tool::Discord);
    if group == "listen" {
        let mut p = parse_opts(rest, &with(DISCORD_GLOBALS, DISCORD_LISTEN), "listen")?;
        p.merge(globals);
        p.no_positional()?;
        let messages = p
            .get("events")
            .is_none_or(|e| e.split(',').any(|e| e.trim() == "messages"));
        return Ok(Job::Watch {
            label: "listen",
            params: json!({"channel": discord}),
            out: WatchOut::Discord {
                json: p.flag("json"),
                channel: p
                    .get("channel")
                    .map(|c| c.trim_start_matches('#').to_string()),
                messages,
            },
            timeout: None,
            max: None,
        });
    }
    let Some((sub, rest)) = rest.split_first() else {
        return Err(usage(format!("missing command after {group}")));
    };
    let label = match (group, sub.as_str()) {
        ("message", "send") => "message send",
        ("message", "list") => "message list",
        ("dm", "send") => "dm send",
        ("dm", "list") => "dm list",
        ("channel", "list") => "channel list",
        _ => return Err(ShimError::NotCovered(format!("{group} {sub}"))),
    };
    let extra = if label.ends_with("list") && label != "channel list" {
        DISCORD_LIMIT
    } else {
        &[]
    };
    let p = parse_opts(rest, &with(DISCORD_GLOBALS, extra), label)?;
    let json = p.flag("json") || globals.flag("json");
    let args = |n: usize, names: &str| -> Result<&[String], ShimError> {
        if p.positional.len() == n {
            Ok(&p.positional)
        } else {
            Err(usage(format!("{label} takes {names}")))
        }
    };
    let job = match label {
        "message send" | "dm send" => {
            let a = args(
                2,
                if label == "dm send" {
                    "USER TEXT"
                } else {
                    "CHANNEL TEXT"
                },
            )?;
            let to = a[0].trim_start_matches('#');
            Job::Calls {
                label,
                method: "channel.send",
                params: vec![json!({"channel": discord, "to": to, "text": a[1]})],
                out: Out::DiscordSent {
                    json,
                    dm: label == "dm send",
                },
            }
        }
        "message list" | "dm list" => {
            let a = args(
                1,
                if label == "dm list" {
                    "USER"
                } else {
                    "CHANNEL"
                },
            )?;
            let limit = p.number("limit", "--limit")?.unwrap_or(10);
            Job::Calls {
                label,
                method: "channel.history",
                params: vec![json!({
                    "channel": discord,
                    "chat": a[0].trim_start_matches('#'),
                    "limit": limit,
                })],
                out: Out::DiscordMessages {
                    json,
                    dm: label == "dm list",
                },
            }
        }
        _ => {
            args(0, "no arguments")?;
            Job::Calls {
                label,
                method: "channel.list_chats",
                params: vec![json!({"channel": discord})],
                out: Out::DiscordChannels { json },
            }
        }
    };
    Ok(job)
}

// gog (gogcli) ---------------------------------------------------------------------------

const GOG_GLOBALS: &[&Opt] = &[
    // The daemon's side of the channel decides which account sends.
    &one(&["--account", "-a"], "account"),
    &one(&["--client"], "client"),
    &flag(&["--json", "-j"], "json"),
    &flag(&["--plain", "-p"], "plain"),
    &one(&["--output"], "output"),
    &one(&["--color"], "color"),
    &flag(&["--force"], "force"),
    &flag(&["--no-input"], "no-input"),
    &flag(&["--verbose"], "verbose"),
    &flag(&["--version"], "version"),
];

const GOG_SEND: &[&Opt] = &[
    &one(&["--to"], "to"),
    &one(&["--subject"], "subject"),
    &one(&["--body"], "body"),
    &one(&["--body-file"], "body-file"),
];
const GOG_SEARCH: &[&Opt] = &[&one(&["--max"], "max")];

#[derive(Clone, Copy, Debug, PartialEq)]
enum GogMode {
    Text,
    Plain,
    Json,
}

fn parse_gog(args: &[String], stdin: &mut dyn Read) -> Result<Job, ShimError> {
    let (globals, service, rest) = split_command(args, GOG_GLOBALS)?;
    if globals.flag("version") {
        return Ok(Job::Print(version(Tool::Gog)));
    }
    let Some(service) = service else {
        return Err(usage("missing command"));
    };
    if service != "gmail" {
        return Err(ShimError::NotCovered(service.to_string()));
    }
    let (pre, sub, rest) = split_command(rest, GOG_GLOBALS)?;
    let Some(sub) = sub else {
        return Err(usage("missing command after gmail"));
    };
    let (label, mut p) = match sub {
        "send" => (
            "gmail send",
            parse_opts(rest, &with(GOG_GLOBALS, GOG_SEND), "gmail send")?,
        ),
        "search" => (
            "gmail search",
            parse_opts(rest, &with(GOG_GLOBALS, GOG_SEARCH), "gmail search")?,
        ),
        "thread" => {
            // `gmail thread get ID` (and the older `gmail thread ID`).
            let rest = match rest.split_first() {
                Some((get, rest)) if get == "get" => rest,
                Some((other, _)) if matches!(other.as_str(), "modify" | "attachments") => {
                    return Err(ShimError::NotCovered(format!("gmail thread {other}")));
                }
                _ => rest,
            };
            (
                "gmail thread get",
                parse_opts(rest, GOG_GLOBALS, "gmail thread get")?,
            )
        }
        other => return Err(ShimError::NotCovered(format!("gmail {other}"))),
    };
    p.merge(globals);
    p.merge(pre);
    let mode = match (p.flag("json"), p.flag("plain"), p.get("output")) {
        (true, true, _) => return Err(usage("--json and --plain cannot be combined")),
        (true, _, _) | (_, _, Some("json")) => GogMode::Json,
        (_, true, _) => GogMode::Plain,
        (_, _, None | Some("text")) => GogMode::Text,
        (_, _, Some(other)) => {
            return Err(usage(format!("invalid --output {other:?} (text or json)")));
        }
    };
    let gog = channel(Tool::Gog);
    match label {
        "gmail send" => {
            p.no_positional()?;
            let body = match (p.get("body"), p.get("body-file")) {
                (Some(_), Some(_)) => return Err(usage("use --body or --body-file, not both")),
                (Some(body), None) => body.to_string(),
                (None, Some("-")) => {
                    let mut body = String::new();
                    stdin
                        .read_to_string(&mut body)
                        .map_err(|e| usage(format!("cannot read the body from stdin: {e}")))?;
                    body
                }
                (None, Some(path)) => fs::read_to_string(path)
                    .map_err(|e| usage(format!("cannot read --body-file {path}: {e}")))?,
                (None, None) => String::new(),
            };
            let to: Vec<&str> = p
                .get("to")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            let subject = p.get("subject").unwrap_or_default();
            if to.is_empty() || subject.trim().is_empty() || body.trim().is_empty() {
                return Err(usage("required: --to, --subject, --body"));
            }
            let text = format!("Subject: {subject}\n\n{body}");
            Ok(Job::Calls {
                label,
                method: "channel.send",
                params: to
                    .iter()
                    .map(|to| json!({"channel": gog, "to": to, "text": text}))
                    .collect(),
                out: Out::GogSent { mode },
            })
        }
        "gmail search" => {
            if p.positional.is_empty() {
                return Err(usage("gmail search needs a query"));
            }
            let limit = p.number("max", "--max")?.unwrap_or(10);
            Ok(Job::Calls {
                label,
                method: "channel.list_chats",
                params: vec![json!({"channel": gog, "limit": limit})],
                out: Out::GogSearch {
                    mode,
                    query: p.positional.join(" "),
                },
            })
        }
        _ => {
            let [id] = p.positional.as_slice() else {
                return Err(usage("gmail thread get takes one THREAD_ID"));
            };
            Ok(Job::Calls {
                label,
                method: "channel.history",
                params: vec![json!({"channel": gog, "chat": id})],
                out: Out::GogThread {
                    mode,
                    id: id.clone(),
                },
            })
        }
    }
}

// ---------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------

/// JSON with fields in the order the real tool writes them (serde_json's maps here are
/// sorted) and the real tool's spacing.
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

fn s(text: impl Into<String>) -> J {
    J::Str(text.into())
}

#[derive(Clone, Copy)]
struct Style {
    item: &'static str,
    key: &'static str,
    indent: bool,
    ascii: bool,
}

/// Swift's, Java's and Go's compact encoders.
const COMPACT: Style = Style {
    item: ",",
    key: ":",
    indent: false,
    ascii: false,
};
/// Python's `json.dumps(data)`.
const PYTHON: Style = Style {
    item: ", ",
    key: ": ",
    indent: false,
    ascii: true,
};
/// Python's `json.dumps(data, indent=2)`.
const PYTHON_INDENT: Style = Style {
    item: ",",
    key: ": ",
    indent: true,
    ascii: true,
};
/// Go's `MarshalIndent(v, "", "  ")`.
const GO_INDENT: Style = Style {
    item: ",",
    key: ": ",
    indent: true,
    ascii: false,
};

fn to_json(j: &J, style: Style) -> String {
    let mut out = String::new();
    write_json(&mut out, j, style, 0);
    out
}

fn write_json(out: &mut String, j: &J, style: Style, level: usize) {
    let newline = |out: &mut String, level: usize| {
        if style.indent {
            out.push('\n');
            out.push_str(&"  ".repeat(level));
        }
    };
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Int(n) => out.push_str(&n.to_string()),
        J::Str(text) => {
            let quoted = Value::String(text.clone()).to_string();
            if style.ascii {
                for c in quoted.chars() {
                    if c.is_ascii() {
                        out.push(c);
                    } else {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                }
            } else {
                out.push_str(&quoted);
            }
        }
        J::Arr(items) if items.is_empty() => out.push_str("[]"),
        J::Obj(fields) if fields.is_empty() => out.push_str("{}"),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(style.item);
                }
                newline(out, level + 1);
                write_json(out, item, style, level + 1);
            }
            newline(out, level);
            out.push(']');
        }
        J::Obj(fields) => {
            out.push('{');
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(style.item);
                }
                newline(out, level + 1);
                write_json(out, &J::Str((*key).to_string()), style, level + 1);
                out.push_str(style.key);
                write_json(out, value, style, level + 1);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

/// A field as text: strings as they are, numbers and booleans written out, else "".
fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => String::new(),
    }
}

/// The real tool's numeric id when the daemon's id is digits, else the text.
fn id_of(v: &Value, key: &str) -> J {
    match v.get(key) {
        Some(Value::Number(n)) if n.is_i64() => J::Int(n.as_i64().unwrap_or_default()),
        _ => {
            let text = field(v, key);
            match text.parse::<i64>() {
                Ok(n) if !text.starts_with(['+', '-', '0']) || text == "0" => J::Int(n),
                _ => J::Str(text),
            }
        }
    }
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn from_me(m: &Value) -> bool {
    m.get("from_me").and_then(Value::as_bool).unwrap_or(false)
}

/// Milliseconds since the epoch of an RFC 3339 time (`2025-01-02T03:04:05.678Z`,
/// `...+01:00`), as signal-cli prints timestamps.
fn unix_ms(time: &str) -> Option<i64> {
    let b = time.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = time.get(from..to)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = time.get(start..i.min(start + 3))?;
        if frac.is_empty() {
            return None;
        }
        millis = format!("{frac:0<3}").parse().ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let minutes = num(i + 1, i + 3)? * 60 + num(i + 4, i + 6)?;
            if *sign == b'-' {
                -minutes * 60
            } else {
                minutes * 60
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date, counting years from March.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset) * 1000 + millis)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// `2025-01-02T03:04:05...` as `2025-01-02 03:04:05` cut to `len` characters; other text
/// as it is.
fn short_time(at: &str, len: usize) -> String {
    if at.len() >= len && at.as_bytes().get(10) == Some(&b'T') && at.is_char_boundary(len) {
        at[..len].replacen('T', " ", 1)
    } else {
        at.to_string()
    }
}

/// Signal's recipient kinds: a number, an ACI (a UUID) or a username (`u:`).
fn is_uuid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Whether a Signal chat is a group: the daemon's `group`/`is_group` when it says,
/// else any id that is not a number, an ACI or a username (group ids are base64).
fn is_signal_group(chat: &Value) -> bool {
    if let Some(group) = ["group", "is_group"]
        .iter()
        .find_map(|k| chat.get(*k).and_then(Value::as_bool))
    {
        return group;
    }
    let id = field(chat, "id");
    !(id.starts_with('+') || id.starts_with("u:") || id.starts_with("PNI:") || is_uuid(&id))
}

/// "Subject: S\n\nBODY" split again; other text is all body.
fn split_subject(text: &str) -> (&str, &str) {
    text.strip_prefix("Subject: ")
        .and_then(|rest| rest.split_once("\n\n"))
        .unwrap_or(("", text))
}

/// What a `Calls` job prints from the results of its calls (with their params).
#[derive(Debug)]
enum Out {
    ImsgChats { json: bool },
    ImsgHistory { json: bool },
    ImsgSend { json: bool },
    SignalSend { json: bool, groups: Vec<String> },
    SignalChats { json: bool, groups: bool },
    DiscordSent { json: bool, dm: bool },
    DiscordMessages { json: bool, dm: bool },
    DiscordChannels { json: bool },
    GogSent { mode: GogMode },
    GogSearch { mode: GogMode, query: String },
    GogThread { mode: GogMode, id: String },
}

/// Text for stdout and notes for stderr.
#[derive(Debug, Default, PartialEq)]
struct Rendered {
    stdout: String,
    stderr: String,
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

fn imsg_chat(chat: &Value, json: bool) -> String {
    let identifier = Some(field(chat, "identifier"))
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| field(chat, "id"));
    if json {
        return to_json(
            &J::Obj(vec![
                ("id", id_of(chat, "id")),
                ("name", s(field(chat, "name"))),
                ("identifier", s(identifier)),
                ("service", s(field(chat, "service"))),
                ("last_message_at", s(field(chat, "last_message_at"))),
            ]),
            COMPACT,
        );
    }
    let group = if chat.get("is_group").and_then(Value::as_bool) == Some(true) {
        " group"
    } else {
        ""
    };
    format!(
        "[{}{group}] {} ({identifier}) last={}",
        field(chat, "id"),
        field(chat, "name"),
        field(chat, "last_message_at")
    )
}

fn imsg_message(m: &Value, json: bool) -> String {
    if json {
        let guid = Some(field(m, "guid"))
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| field(m, "id"));
        return to_json(
            &J::Obj(vec![
                ("id", id_of(m, "id")),
                ("chat_id", id_of(m, "chat")),
                ("guid", s(guid)),
                ("sender", s(field(m, "from"))),
                ("is_from_me", J::Bool(from_me(m))),
                ("text", s(field(m, "text"))),
                ("created_at", s(field(m, "at"))),
                ("attachments", J::Arr(vec![])),
                ("reactions", J::Arr(vec![])),
            ]),
            COMPACT,
        );
    }
    let direction = if from_me(m) { "sent" } else { "recv" };
    format!(
        "{} [{direction}] {}: {}",
        field(m, "at"),
        field(m, "from"),
        field(m, "text")
    )
}

fn filtered_note(tool: Tool, result: &Value) -> String {
    match result.get("filtered").and_then(Value::as_u64) {
        Some(n) if n > 0 => format!(
            "{}: Carapace left out {n} message(s) from senders this channel does not accept\n",
            tool.name()
        ),
        _ => String::new(),
    }
}

/// Go's tabwriter with padding 2: every cell but the last of a row padded to its
/// column's width.
fn tabulate(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if c + 1 < row.len() {
                out.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

impl Out {
    /// Renders the successful calls: `(params, result)` each.
    fn render(&self, done: &[(Value, Value)]) -> Rendered {
        let mut r = Rendered::default();
        let first = done
            .first()
            .map(|(_, result)| result)
            .unwrap_or(&Value::Null);
        match self {
            Out::ImsgChats { json } => {
                for chat in list(first, "chats") {
                    line(&mut r.stdout, &imsg_chat(chat, *json));
                }
            }
            Out::ImsgHistory { json } => {
                for m in list(first, "messages") {
                    line(&mut r.stdout, &imsg_message(m, *json));
                }
                r.stderr = filtered_note(Tool::Imsg, first);
            }
            Out::ImsgSend { json } => {
                line(
                    &mut r.stdout,
                    if *json {
                        "{\"status\":\"sent\"}"
                    } else {
                        "sent"
                    },
                );
            }
            Out::SignalSend { json, groups } => {
                let timestamp = first
                    .get("timestamp")
                    .and_then(Value::as_i64)
                    .unwrap_or_else(now_ms);
                if *json {
                    let results = done
                        .iter()
                        .map(|(params, _)| {
                            let to = field(params, "to");
                            let group = groups.contains(&to);
                            let mut fields = vec![(
                                "recipientAddress",
                                J::Obj(vec![
                                    ("uuid", if is_uuid(&to) { s(&to) } else { J::Null }),
                                    ("number", if to.starts_with('+') { s(&to) } else { J::Null }),
                                ]),
                            )];
                            if group {
                                fields.push(("groupId", s(&to)));
                            }
                            fields.push(("type", s("SUCCESS")));
                            J::Obj(fields)
                        })
                        .collect();
                    let object = J::Obj(vec![
                        ("timestamp", J::Int(timestamp)),
                        ("results", J::Arr(results)),
                    ]);
                    line(&mut r.stdout, &to_json(&object, COMPACT));
                } else {
                    line(&mut r.stdout, &timestamp.to_string());
                }
            }
            Out::SignalChats { json, groups } => {
                let chats: Vec<&Value> = list(first, "chats")
                    .iter()
                    .filter(|c| is_signal_group(c) == *groups)
                    .collect();
                let mut items = Vec::new();
                for chat in chats {
                    let id = field(chat, "id");
                    let name = field(chat, "name");
                    if *groups {
                        if *json {
                            items.push(J::Obj(vec![
                                ("id", s(&id)),
                                ("name", s(&name)),
                                ("isMember", J::Bool(true)),
                                ("isBlocked", J::Bool(false)),
                            ]));
                        } else {
                            line(
                                &mut r.stdout,
                                &format!("Id: {id} Name: {name}  Active: true Blocked: false"),
                            );
                        }
                    } else {
                        let (number, aci) = if is_uuid(&id) {
                            (String::new(), id.clone())
                        } else {
                            (id.clone(), String::new())
                        };
                        if *json {
                            let opt = |t: &str| if t.is_empty() { J::Null } else { s(t) };
                            items.push(J::Obj(vec![
                                ("number", opt(&number)),
                                ("uuid", opt(&aci)),
                                ("username", J::Null),
                                ("name", s(&name)),
                                ("isBlocked", J::Bool(false)),
                            ]));
                        } else {
                            line(
                                &mut r.stdout,
                                &format!(
                                    "Number: {number} ACI: {aci} Name: {name} Profile name:  \
                                     Username:  Color:  Blocked: false Message expiration: disabled"
                                ),
                            );
                        }
                    }
                }
                if *json {
                    line(&mut r.stdout, &to_json(&J::Arr(items), COMPACT));
                }
            }
            Out::DiscordSent { json, dm } => {
                for (params, result) in done {
                    let to = field(params, "to");
                    let text = field(params, "text");
                    let id = field(result, "id");
                    let id_json = if id.is_empty() { J::Null } else { s(&id) };
                    let (object, plain) = if *dm {
                        let short: String = text.chars().take(50).collect();
                        (
                            J::Obj(vec![
                                ("id", id_json),
                                ("to", s(&to)),
                                ("to_id", s(&to)),
                                ("content", s(&text)),
                            ]),
                            format!("Sent DM to {to} (ID: {to}): {short}"),
                        )
                    } else {
                        let plain = if id.is_empty() {
                            format!("Sent message to #{to}")
                        } else {
                            format!("Sent message {id} to #{to}")
                        };
                        (
                            J::Obj(vec![
                                ("id", id_json),
                                ("channel", s(&to)),
                                ("content", s(&text)),
                            ]),
                            plain,
                        )
                    };
                    let text = if *json {
                        to_json(&object, PYTHON_INDENT)
                    } else {
                        plain
                    };
                    line(&mut r.stdout, &text);
                }
            }
            Out::DiscordMessages { json, dm } => {
                let messages = list(first, "messages");
                if *json {
                    let items = messages
                        .iter()
                        .map(|m| {
                            let mut fields =
                                vec![("id", s(field(m, "id"))), ("author", s(field(m, "from")))];
                            if *dm {
                                fields.push(("author_id", s(field(m, "from"))));
                            }
                            fields.push(("content", s(field(m, "text"))));
                            fields.push(("timestamp", s(field(m, "at"))));
                            J::Obj(fields)
                        })
                        .collect();
                    line(&mut r.stdout, &to_json(&J::Arr(items), PYTHON_INDENT));
                } else {
                    let lines: Vec<String> = messages
                        .iter()
                        .map(|m| {
                            let ts = short_time(&field(m, "at"), 19);
                            if *dm {
                                format!(
                                    "[{ts}] (msg:{}) {}: {}",
                                    field(m, "id"),
                                    field(m, "from"),
                                    field(m, "text")
                                )
                            } else {
                                format!("[{ts}] {}: {}", field(m, "from"), field(m, "text"))
                            }
                        })
                        .collect();
                    let text = if lines.is_empty() && *dm {
                        "No DMs found.".to_string()
                    } else {
                        lines.join("\n")
                    };
                    line(&mut r.stdout, &text);
                }
                r.stderr = filtered_note(Tool::Discord, first);
            }
            Out::DiscordChannels { json } => {
                let chats = list(first, "chats");
                let kind = |c: &Value| {
                    Some(field(c, "type"))
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "text".into())
                };
                if *json {
                    let items = chats
                        .iter()
                        .map(|c| {
                            J::Obj(vec![
                                ("id", s(field(c, "id"))),
                                ("name", s(field(c, "name"))),
                                ("type", s(kind(c))),
                                ("server", s(field(c, "server"))),
                            ])
                        })
                        .collect();
                    line(&mut r.stdout, &to_json(&J::Arr(items), PYTHON_INDENT));
                } else if chats.is_empty() {
                    line(&mut r.stdout, "No channels found.");
                } else {
                    for c in chats {
                        line(
                            &mut r.stdout,
                            &format!(
                                "#{} ({}) — {} (ID: {})",
                                field(c, "name"),
                                kind(c),
                                field(c, "server"),
                                field(c, "id")
                            ),
                        );
                    }
                }
            }
            Out::GogSent { mode } => {
                for (_, result) in done {
                    let id = Some(field(result, "id"))
                        .filter(|i| !i.is_empty())
                        .unwrap_or_else(|| field(result, "message_id"));
                    let thread = field(result, "thread_id");
                    if *mode == GogMode::Json {
                        let object = J::Obj(vec![("messageId", s(id)), ("threadId", s(thread))]);
                        line(&mut r.stdout, &to_json(&object, GO_INDENT));
                    } else {
                        line(&mut r.stdout, &format!("message_id\t{id}"));
                        if !thread.is_empty() {
                            line(&mut r.stdout, &format!("thread_id\t{thread}"));
                        }
                    }
                }
            }
            Out::GogSearch { mode, query } => {
                let (operators, words): (Vec<&str>, Vec<&str>) =
                    query.split_whitespace().partition(|w| w.contains(':'));
                if !operators.is_empty() {
                    r.stderr.push_str(&format!(
                        "gog: Carapace does not apply the Gmail operators {}; \
                         the other words are matched against subject and sender\n",
                        operators.join(" ")
                    ));
                }
                let threads: Vec<&Value> = list(first, "chats")
                    .iter()
                    .filter(|c| {
                        let haystack =
                            format!("{} {}", field(c, "name"), field(c, "from")).to_lowercase();
                        words.iter().all(|w| haystack.contains(&w.to_lowercase()))
                    })
                    .collect();
                let row = |c: &Value| {
                    [
                        field(c, "id"),
                        short_time(&field(c, "last_message_at"), 16),
                        field(c, "from").replace('\t', " "),
                        field(c, "name").replace('\t', " "),
                        String::new(),
                    ]
                };
                match mode {
                    GogMode::Json => {
                        let items = threads
                            .iter()
                            .map(|c| {
                                let [id, date, from, subject, _] = row(c);
                                let mut fields = vec![("id", s(id))];
                                for (key, value) in
                                    [("date", date), ("from", from), ("subject", subject)]
                                {
                                    if !value.is_empty() {
                                        fields.push((key, s(value)));
                                    }
                                }
                                J::Obj(fields)
                            })
                            .collect();
                        let object =
                            J::Obj(vec![("threads", J::Arr(items)), ("nextPageToken", s(""))]);
                        line(&mut r.stdout, &to_json(&object, GO_INDENT));
                    }
                    _ if threads.is_empty() => r.stderr.push_str("No results\n"),
                    GogMode::Plain => {
                        line(&mut r.stdout, "ID\tDATE\tFROM\tSUBJECT\tLABELS");
                        for c in threads {
                            line(&mut r.stdout, &row(c).join("\t"));
                        }
                    }
                    GogMode::Text => {
                        let mut rows = vec![
                            ["ID", "DATE", "FROM", "SUBJECT", "LABELS"]
                                .map(String::from)
                                .to_vec(),
                        ];
                        rows.extend(threads.into_iter().map(|c| row(c).to_vec()));
                        r.stdout.push_str(&tabulate(&rows));
                    }
                }
            }
            Out::GogThread { mode, id } => {
                let messages = list(first, "messages");
                if *mode == GogMode::Json {
                    let items = messages
                        .iter()
                        .map(|m| {
                            let text = field(m, "text");
                            let (subject, body) = split_subject(&text);
                            let header = |name: &'static str, value: String| {
                                J::Obj(vec![("name", s(name)), ("value", s(value))])
                            };
                            J::Obj(vec![
                                ("id", s(field(m, "id"))),
                                ("threadId", s(id)),
                                ("snippet", s(body)),
                                (
                                    "payload",
                                    J::Obj(vec![(
                                        "headers",
                                        J::Arr(vec![
                                            header("From", field(m, "from")),
                                            header("Subject", subject.to_string()),
                                            header("Date", field(m, "at")),
                                        ]),
                                    )]),
                                ),
                            ])
                        })
                        .collect();
                    let object = J::Obj(vec![
                        (
                            "thread",
                            J::Obj(vec![("id", s(id)), ("messages", J::Arr(items))]),
                        ),
                        ("downloaded", J::Arr(vec![])),
                    ]);
                    line(&mut r.stdout, &to_json(&object, GO_INDENT));
                } else if messages.is_empty() {
                    r.stderr.push_str("Empty thread\n");
                } else {
                    let n = messages.len();
                    line(&mut r.stdout, &format!("Thread contains {n} message(s)"));
                    line(&mut r.stdout, "");
                    for (i, m) in messages.iter().enumerate() {
                        let text = field(m, "text");
                        let (subject, body) = split_subject(&text);
                        line(
                            &mut r.stdout,
                            &format!("=== Message {}/{n}: {} ===", i + 1, field(m, "id")),
                        );
                        line(&mut r.stdout, &format!("From: {}", field(m, "from")));
                        line(&mut r.stdout, "To: ");
                        line(&mut r.stdout, &format!("Subject: {subject}"));
                        line(&mut r.stdout, &format!("Date: {}", field(m, "at")));
                        line(&mut r.stdout, "");
                        if !body.is_empty() {
                            let mut shown: String = body.chars().take(500).collect();
                            if body.chars().count() > 500 {
                                shown.push_str("... [truncated]");
                            }
                            line(&mut r.stdout, &shown);
                            line(&mut r.stdout, "");
                        }
                    }
                }
                r.stderr.push_str(&filtered_note(Tool::Gog, first));
            }
        }
        r
    }
}

/// What a watch prints for each `channel.message`.
#[derive(Debug)]
enum WatchOut {
    Imsg {
        json: bool,
        chat: Option<String>,
    },
    Signal {
        json: bool,
        account: Option<String>,
    },
    Discord {
        json: bool,
        channel: Option<String>,
        messages: bool,
    },
}

impl WatchOut {
    /// The text for one notification's params (`{"channel", "message"}`), or `None` when
    /// this command's filters leave it out.
    fn render(&self, params: &Value) -> Option<String> {
        let m = params.get("message")?;
        let chat = field(m, "chat");
        match self {
            WatchOut::Imsg { json, chat: only } => {
                if only.as_ref().is_some_and(|c| *c != chat) {
                    return None;
                }
                Some(format!("{}\n", imsg_message(m, *json)))
            }
            WatchOut::Signal { json, account } => {
                let from = field(m, "from");
                let at = field(m, "at");
                let timestamp = unix_ms(&at).unwrap_or(0);
                let group = (!chat.is_empty() && chat != from).then_some(chat);
                if *json {
                    let mut data = vec![
                        ("timestamp", J::Int(timestamp)),
                        ("message", s(field(m, "text"))),
                    ];
                    if let Some(group) = &group {
                        data.push(("groupInfo", J::Obj(vec![("groupId", s(group))])));
                    }
                    let number = if from.starts_with('+') {
                        s(&from)
                    } else {
                        J::Null
                    };
                    let envelope = J::Obj(vec![
                        ("source", s(&from)),
                        ("sourceNumber", number),
                        ("timestamp", J::Int(timestamp)),
                        ("dataMessage", J::Obj(data)),
                    ]);
                    let account = account.as_deref().map_or(J::Null, s);
                    let object = J::Obj(vec![("envelope", envelope), ("account", account)]);
                    return Some(format!("{}\n", to_json(&object, COMPACT)));
                }
                let mut text = format!(
                    "Envelope from: {from}\nTimestamp: {timestamp} ({at})\nBody: {}\n",
                    field(m, "text")
                );
                if let Some(group) = group {
                    text.push_str(&format!("Group info:\n  Id: {group}\n"));
                }
                text.push('\n');
                Some(text)
            }
            WatchOut::Discord {
                json,
                channel,
                messages,
            } => {
                if !messages || channel.as_ref().is_some_and(|c| *c != chat) {
                    return None;
                }
                let (id, from, text, at) = (
                    field(m, "id"),
                    field(m, "from"),
                    field(m, "text"),
                    field(m, "at"),
                );
                if *json {
                    let object = J::Obj(vec![
                        ("event", s("message")),
                        ("channel", s(&chat)),
                        ("channel_id", s(&chat)),
                        ("author", s(&from)),
                        ("author_id", s(&from)),
                        ("content", s(&text)),
                        ("timestamp", s(&at)),
                        ("message_id", s(&id)),
                        ("mentions_bot", J::Bool(false)),
                        ("attachments", J::Arr(vec![])),
                        ("reply_to", J::Null),
                    ]);
                    return Some(format!("{}\n", to_json(&object, PYTHON)));
                }
                Some(format!(
                    "[{}] (msg:{id}) {from} (uid:{from}) in #{chat} (ch:{chat}): {text}\n",
                    short_time(&at, 19)
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------

/// Writes to stdout; false when the reader went away.
fn print(text: &str) -> bool {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn unreachable_daemon(tool: Tool, e: &IpcError) -> ExitCode {
    eprintln!("{}: cannot reach the Carapace daemon: {e}", tool.name());
    ExitCode::from(2)
}

fn execute(tool: Tool, job: Job) -> ExitCode {
    match job {
        Job::Print(text) => {
            print(&text);
            ExitCode::SUCCESS
        }
        Job::Calls {
            label,
            method,
            params,
            out,
        } => {
            let mut client = match IpcClient::connect_env() {
                Ok(client) => client,
                Err(e) => return unreachable_daemon(tool, &e),
            };
            let mut done = Vec::new();
            let mut refused = false;
            for params in params {
                match client.call(method, params.clone()) {
                    Ok(result) => done.push((params, result)),
                    Err(CallError::Rpc(e)) => {
                        eprintln!("{}", tool.error_line(label, &e));
                        refused = true;
                    }
                    Err(CallError::Ipc(e)) => return unreachable_daemon(tool, &e),
                }
            }
            if !done.is_empty() || !refused {
                let rendered = out.render(&done);
                eprint!("{}", rendered.stderr);
                print(&rendered.stdout);
            }
            if refused {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Job::Watch {
            label,
            params,
            out,
            timeout,
            max,
        } => watch(tool, label, params, &out, timeout, max),
    }
}

fn watch(
    tool: Tool,
    label: &str,
    params: Value,
    out: &WatchOut,
    timeout: Option<Duration>,
    max: Option<usize>,
) -> ExitCode {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut client = match IpcClient::connect_env() {
        Ok(client) => client,
        Err(e) => return unreachable_daemon(tool, &e),
    };
    let set_timeout = |client: &mut IpcClient| -> Result<bool, IpcError> {
        match deadline {
            None => Ok(true),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                client.set_read_timeout(Some(left))?;
                Ok(!left.is_zero())
            }
        }
    };
    if let Err(e) = set_timeout(&mut client) {
        return unreachable_daemon(tool, &e);
    }
    match client.call("channel.watch", params) {
        Ok(_) => {}
        Err(CallError::Rpc(e)) => {
            eprintln!("{}", tool.error_line(label, &e));
            return ExitCode::from(1);
        }
        Err(CallError::Ipc(IpcError::TimedOut)) => return ExitCode::SUCCESS,
        Err(CallError::Ipc(e)) => return unreachable_daemon(tool, &e),
    }
    if matches!(out, WatchOut::Discord { .. }) {
        eprintln!("Listening via Carapace... (Ctrl+C to stop)");
    }
    let mut shown = 0;
    while max.is_none_or(|max| shown < max) {
        match set_timeout(&mut client) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return unreachable_daemon(tool, &e),
        }
        match client.next_notification() {
            Ok(Some(n)) if n.method == "channel.message" => {
                if let Some(text) = out.render(&n.params) {
                    if !print(&text) {
                        break;
                    }
                    shown += 1;
                }
            }
            Ok(Some(n)) if n.method == "channel.watch_ended" => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(IpcError::TimedOut) => break,
            Err(e) => return unreachable_daemon(tool, &e),
        }
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// cara shim install / list
// ---------------------------------------------------------------------------------

/// `cara shim ...`.
#[derive(clap::Subcommand)]
pub enum ShimCommand {
    /// Create links DIR/NAME -> cara for shims (imsg, signal-cli, discord, gog).
    ///
    /// Put DIR first on PATH inside the sandbox and the agent's `imsg send ...` goes
    /// through the agent socket. Creates DIR if missing; refuses to replace existing files
    /// unless --force.
    Install {
        /// Directory for the links.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
        /// What the links point to [default: this cara executable]; in the sandbox the
        /// binary is /run/carapace/bin/cara.
        #[arg(long, value_name = "PATH")]
        target: Option<PathBuf>,
        /// Shim names: imsg, signal-cli, discord, gog.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// List the shims and the commands each covers.
    List,
}

/// Runs `cara shim install` or `cara shim list`.
pub fn command(cmd: ShimCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ShimCommand::Install {
            dir,
            force,
            target,
            names,
        } => {
            let target = match target {
                Some(target) => target,
                None => std::env::current_exe().context("cannot find the cara executable")?,
            };
            for (link, target) in install(&dir, &target, &names, force)? {
                println!("{} -> {}", link.display(), target.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ShimCommand::List => {
            print!("{}", coverage_list());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates the links; checks every name and existing file before creating any.
fn install(
    dir: &Path,
    target: &Path,
    names: &[String],
    force: bool,
) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut tools: Vec<Tool> = Vec::new();
    for name in names {
        let Some(tool) = Tool::from_name(name) else {
            bail!(
                "unknown shim {name:?}; the shims are {}",
                TOOLS.map(Tool::name).join(", ")
            );
        };
        if !tools.contains(&tool) {
            tools.push(tool);
        }
    }
    for tool in &tools {
        let link = dir.join(tool.name());
        match fs::symlink_metadata(&link) {
            Ok(meta) if meta.is_dir() => bail!("{} is a directory", link.display()),
            Ok(_) if !force => {
                bail!("{} exists; pass --force to replace it", link.display())
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", link.display())),
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut made = Vec::new();
    for tool in tools {
        let link = dir.join(tool.name());
        if force && fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        made.push((link, target.to_path_buf()));
    }
    Ok(made)
}

fn coverage_list() -> String {
    let mut text = String::new();
    for tool in TOOLS {
        text.push_str(&format!("{}  ({})\n", tool.name(), tool.about()));
        for row in COVERAGE.iter().filter(|r| r.tool == tool) {
            text.push_str(&format!(
                "  {:<16} {}\n  {:<16} -> {}; prints {}\n",
                row.command,
                row.syntax,
                "",
                row.method,
                row.output.replace('`', "")
            ));
        }
        text.push('\n');
    }
    text.push_str(
        "Anything else prints \"TOOL: COMMAND is not available inside Carapace\" and exits 2.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace()
            .map(|a| a.replace('~', " "))
            .collect()
    }

    /// The requests a command line makes (or its error), as the socket would see them.
    fn check(tool: Tool, line: &str, expected: Expect) {
        let args = argv(line);
        let actual = match parse(tool, &args, &mut &b"from stdin"[..]) {
            Ok(Job::Calls { method, params, .. }) => params
                .into_iter()
                .map(|p| json!({"method": method, "params": p}).to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(Job::Watch {
                params,
                timeout,
                max,
                ..
            }) => format!(
                "{} timeout={timeout:?} max={max:?}",
                json!({"method": "channel.watch", "params": params})
            ),
            Ok(Job::Print(text)) => text.lines().next().unwrap_or_default().to_string(),
            Err(e) => e.message(tool),
        };
        expected.assert_eq(&actual);
    }

    #[test]
    fn imsg_command_lines() {
        check(
            Tool::Imsg,
            "chats --limit 5 --json",
            expect![[r#"{"method":"channel.list_chats","params":{"channel":"imsg","limit":5}}"#]],
        );
        check(
            Tool::Imsg,
            "history --chat-id 12",
            expect![[
                r#"{"method":"channel.history","params":{"channel":"imsg","chat":"12","limit":50}}"#
            ]],
        );
        check(
            Tool::Imsg,
            "send --to +14155550100 --text hi~there --service imessage",
            expect![[
                r#"{"method":"channel.send","params":{"channel":"imsg","text":"hi there","to":"+14155550100"}}"#
            ]],
        );
        check(
            Tool::Imsg,
            "watch --chat-id 3 --json",
            expect![[
                r#"{"method":"channel.watch","params":{"channel":"imsg"}} timeout=None max=None"#
            ]],
        );
        check(
            Tool::Imsg,
            "send --to +1 --text hi --file /tmp/pic.jpg",
            expect![[
                r#"imsg: send --file is not available inside Carapace (covered: chats, history, send, watch)"#
            ]],
        );
        check(
            Tool::Imsg,
            "react --chat-id 1",
            expect![[
                r#"imsg: react is not available inside Carapace (covered: chats, history, send, watch)"#
            ]],
        );
        check(
            Tool::Imsg,
            "send --text hi",
            expect![[r#"imsg: missing option --to (see imsg --help)"#]],
        );
        check(
            Tool::Imsg,
            "chats --limit many",
            expect![[r#"imsg: --limit needs a number, not "many" (see imsg --help)"#]],
        );
        check(
            Tool::Imsg,
            "send --help",
            expect!["imsg: a Carapace shim (iMessage; the syntax of steipete/imsg)"],
        );
    }

    #[test]
    fn signal_command_lines() {
        check(
            Tool::Signal,
            "-a +15550001 send -m hello +14155550100 +14155550101",
            expect![[r#"
                {"method":"channel.send","params":{"channel":"signal-cli","text":"hello","to":"+14155550100"}}
                {"method":"channel.send","params":{"channel":"signal-cli","text":"hello","to":"+14155550101"}}"#]],
        );
        check(
            Tool::Signal,
            "send -g R3JvdXA= --message-from-stdin",
            expect![[
                r#"{"method":"channel.send","params":{"channel":"signal-cli","text":"from stdin","to":"R3JvdXA="}}"#
            ]],
        );
        check(
            Tool::Signal,
            "-o json receive -t 10 --max-messages 2",
            expect![[
                r#"{"method":"channel.watch","params":{"channel":"signal-cli"}} timeout=Some(10s) max=Some(2)"#
            ]],
        );
        check(
            Tool::Signal,
            "receive -t -1",
            expect![[
                r#"{"method":"channel.watch","params":{"channel":"signal-cli"}} timeout=None max=None"#
            ]],
        );
        check(
            Tool::Signal,
            "listGroups",
            expect![[r#"{"method":"channel.list_chats","params":{"channel":"signal-cli"}}"#]],
        );
        check(
            Tool::Signal,
            "send -m hi",
            expect![[r#"signal-cli: No recipients given (see signal-cli --help)"#]],
        );
        check(
            Tool::Signal,
            "send -a /tmp/x.png -m hi +1",
            expect![[
                r#"signal-cli: send -a is not available inside Carapace (covered: send, receive, listContacts, listGroups)"#
            ]],
        );
        check(
            Tool::Signal,
            "updateProfile --name x",
            expect![[
                r#"signal-cli: updateProfile is not available inside Carapace (covered: send, receive, listContacts, listGroups)"#
            ]],
        );
    }

    #[test]
    fn discord_command_lines() {
        check(
            Tool::Discord,
            "--json message send #general deploy~done",
            expect![[
                r#"{"method":"channel.send","params":{"channel":"discord","text":"deploy done","to":"general"}}"#
            ]],
        );
        check(
            Tool::Discord,
            "message list 1234 --limit 3",
            expect![[
                r#"{"method":"channel.history","params":{"channel":"discord","chat":"1234","limit":3}}"#
            ]],
        );
        check(
            Tool::Discord,
            "dm send alice hi",
            expect![[
                r#"{"method":"channel.send","params":{"channel":"discord","text":"hi","to":"alice"}}"#
            ]],
        );
        check(
            Tool::Discord,
            "listen --channel #general",
            expect![[
                r#"{"method":"channel.watch","params":{"channel":"discord"}} timeout=None max=None"#
            ]],
        );
        check(
            Tool::Discord,
            "message send #general hi --file x.png",
            expect![[
                r#"discord: message send --file is not available inside Carapace (covered: message send, message list, dm send, dm list, channel list, listen)"#
            ]],
        );
        check(
            Tool::Discord,
            "member ban srv bob",
            expect![[
                r#"discord: member ban is not available inside Carapace (covered: message send, message list, dm send, dm list, channel list, listen)"#
            ]],
        );
        check(
            Tool::Discord,
            "message send #general",
            expect![[r#"discord: message send takes CHANNEL TEXT (see discord --help)"#]],
        );
    }

    #[test]
    fn gog_command_lines() {
        check(
            Tool::Gog,
            "gmail send --to a@example.com,b@example.com --subject Hi --body Hello~you",
            expect![[r#"
                {"method":"channel.send","params":{"channel":"gog","text":"Subject: Hi\n\nHello you","to":"a@example.com"}}
                {"method":"channel.send","params":{"channel":"gog","text":"Subject: Hi\n\nHello you","to":"b@example.com"}}"#]],
        );
        check(
            Tool::Gog,
            "--account me@example.com gmail send --to a@example.com --subject Hi --body-file -",
            expect![[
                r#"{"method":"channel.send","params":{"channel":"gog","text":"Subject: Hi\n\nfrom stdin","to":"a@example.com"}}"#
            ]],
        );
        check(
            Tool::Gog,
            "gmail search newer_than:7d invoice --max 5 --json",
            expect![[r#"{"method":"channel.list_chats","params":{"channel":"gog","limit":5}}"#]],
        );
        check(
            Tool::Gog,
            "gmail thread get 18c2f",
            expect![[r#"{"method":"channel.history","params":{"channel":"gog","chat":"18c2f"}}"#]],
        );
        check(
            Tool::Gog,
            "gmail thread 18c2f",
            expect![[r#"{"method":"channel.history","params":{"channel":"gog","chat":"18c2f"}}"#]],
        );
        check(
            Tool::Gog,
            "gmail send --to a@example.com --subject Hi",
            expect![[r#"gog: required: --to, --subject, --body (see gog --help)"#]],
        );
        check(
            Tool::Gog,
            "gmail send --to a@example.com --subject Hi --body x --attach f.pdf",
            expect![[
                r#"gog: gmail send --attach is not available inside Carapace (covered: gmail send, gmail search, gmail thread get)"#
            ]],
        );
        check(
            Tool::Gog,
            "drive ls",
            expect![[
                r#"gog: drive is not available inside Carapace (covered: gmail send, gmail search, gmail thread get)"#
            ]],
        );
    }

    fn render(out: Out, params: Value, result: Value) -> String {
        let r = out.render(&[(params, result)]);
        format!("{}{}", r.stdout, r.stderr)
    }

    /// Lines without their trailing blanks (which the real tools print, and the
    /// snapshots would lose).
    fn trimmed(text: &str) -> String {
        text.lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect()
    }

    fn history() -> Value {
        json!({"messages": [
            {"id": "41", "chat": "7", "from": "+14155550100", "text": "lunch?",
             "at": "2025-01-02T12:30:00.000Z", "from_me": false},
            {"id": "42", "chat": "7", "from": "me", "text": "yes, héllo",
             "at": "2025-01-02T12:31:00.000Z", "from_me": true},
        ], "filtered": 1})
    }

    fn chats() -> Value {
        json!({"chats": [
            {"id": "7", "name": "Alice", "last_message_at": "2025-01-02T12:31:00.000Z"},
            {"id": "R3JvdXBJZA==", "name": "Book club"},
        ]})
    }

    #[test]
    fn imsg_output() {
        expect![[r#"
            [7] Alice (7) last=2025-01-02T12:31:00.000Z
            [R3JvdXBJZA==] Book club (R3JvdXBJZA==) last=
        "#]]
        .assert_eq(&render(Out::ImsgChats { json: false }, json!({}), chats()));
        expect![[r#"
            {"id":7,"name":"Alice","identifier":"7","service":"","last_message_at":"2025-01-02T12:31:00.000Z"}
            {"id":"R3JvdXBJZA==","name":"Book club","identifier":"R3JvdXBJZA==","service":"","last_message_at":""}
        "#]]
        .assert_eq(&render(Out::ImsgChats { json: true }, json!({}), chats()));
        expect![[r#"
            2025-01-02T12:30:00.000Z [recv] +14155550100: lunch?
            2025-01-02T12:31:00.000Z [sent] me: yes, héllo
            imsg: Carapace left out 1 message(s) from senders this channel does not accept
        "#]]
        .assert_eq(&render(
            Out::ImsgHistory { json: false },
            json!({}),
            history(),
        ));
        expect![[r#"
            {"id":41,"chat_id":7,"guid":"41","sender":"+14155550100","is_from_me":false,"text":"lunch?","created_at":"2025-01-02T12:30:00.000Z","attachments":[],"reactions":[]}
            {"id":42,"chat_id":7,"guid":"42","sender":"me","is_from_me":true,"text":"yes, héllo","created_at":"2025-01-02T12:31:00.000Z","attachments":[],"reactions":[]}
            imsg: Carapace left out 1 message(s) from senders this channel does not accept
        "#]]
        .assert_eq(&render(Out::ImsgHistory { json: true }, json!({}), history()));
        expect![[r#"
            sent
        "#]]
        .assert_eq(&render(
            Out::ImsgSend { json: false },
            json!({}),
            json!({"sent": true}),
        ));
    }

    fn signal_chats() -> Value {
        json!({"chats": [{"id": "+14155550100", "name": "Alice"},
                          {"id": "R3JvdXA=", "name": "Club"},
                          {"id": "+14155550101", "name": "Bob", "group": true}]})
    }

    #[test]
    fn signal_output() {
        let sent = Out::SignalSend {
            json: true,
            groups: vec!["R3JvdXA=".into()],
        };
        let r = sent.render(&[
            (
                json!({"to": "+14155550100"}),
                json!({"sent": true, "timestamp": 1700000000000_i64}),
            ),
            (json!({"to": "R3JvdXA="}), json!({"sent": true})),
        ]);
        expect![[r#"
            {"timestamp":1700000000000,"results":[{"recipientAddress":{"uuid":null,"number":"+14155550100"},"type":"SUCCESS"},{"recipientAddress":{"uuid":null,"number":null},"groupId":"R3JvdXA=","type":"SUCCESS"}]}
        "#]]
        .assert_eq(&r.stdout);
        let plain = Out::SignalSend {
            json: false,
            groups: vec![],
        };
        expect![[r#"
            1700000000000
        "#]]
        .assert_eq(&render(
            plain,
            json!({"to": "+1"}),
            json!({"timestamp": 1700000000000_i64}),
        ));
        expect![[r#"
            Number: +14155550100 ACI:  Name: Alice Profile name:  Username:  Color:  Blocked: false Message expiration: disabled
        "#]]
        .assert_eq(&render(
            Out::SignalChats {
                json: false,
                groups: false,
            },
            json!({}),
            signal_chats(),
        ));
        expect![[r#"
            Id: R3JvdXA= Name: Club  Active: true Blocked: false
            Id: +14155550101 Name: Bob  Active: true Blocked: false
        "#]]
        .assert_eq(&render(
            Out::SignalChats {
                json: false,
                groups: true,
            },
            json!({}),
            signal_chats(),
        ));
    }

    #[test]
    fn signal_receive_output() {
        let params = json!({"channel": "signal-cli", "message": {"id": "1", "chat": "R3JvdXA=",
            "from": "+14155550100", "text": "hi all", "at": "2023-11-14T22:13:20.000Z", "from_me": false}});
        let plain = WatchOut::Signal {
            json: false,
            account: None,
        };
        expect![[r#"
            Envelope from: +14155550100
            Timestamp: 1700000000000 (2023-11-14T22:13:20.000Z)
            Body: hi all
            Group info:
              Id: R3JvdXA=

        "#]]
        .assert_eq(&plain.render(&params).unwrap());
        let json = WatchOut::Signal {
            json: true,
            account: Some("+15550001".into()),
        };
        expect![[r#"
            {"envelope":{"source":"+14155550100","sourceNumber":"+14155550100","timestamp":1700000000000,"dataMessage":{"timestamp":1700000000000,"message":"hi all","groupInfo":{"groupId":"R3JvdXA="}}},"account":"+15550001"}
        "#]]
        .assert_eq(&json.render(&params).unwrap());
    }

    #[test]
    fn discord_output() {
        expect![[r#"
            Sent message to #general
        "#]]
        .assert_eq(&render(
            Out::DiscordSent {
                json: false,
                dm: false,
            },
            json!({"to": "general", "text": "hi"}),
            json!({"sent": true}),
        ));
        expect![[r#"
            {
              "id": "99",
              "channel": "general",
              "content": "h\u00e9 \ud83d\ude00"
            }
        "#]]
        .assert_eq(&render(
            Out::DiscordSent {
                json: true,
                dm: false,
            },
            json!({"to": "general", "text": "hé 😀"}),
            json!({"sent": true, "id": "99"}),
        ));
        expect![[r#"
            [2025-01-02 12:30:00] +14155550100: lunch?
            [2025-01-02 12:31:00] me: yes, héllo
            discord: Carapace left out 1 message(s) from senders this channel does not accept
        "#]]
        .assert_eq(&render(
            Out::DiscordMessages {
                json: false,
                dm: false,
            },
            json!({}),
            history(),
        ));
        expect![[r#"
            No DMs found.
        "#]]
        .assert_eq(&render(
            Out::DiscordMessages {
                json: false,
                dm: true,
            },
            json!({}),
            json!({"messages": []}),
        ));
        let listen = WatchOut::Discord {
            json: true,
            channel: Some("general".into()),
            messages: true,
        };
        let note = json!({"message": {"id": "5", "chat": "general", "from": "bob", "text": "yo",
            "at": "2025-01-02T12:30:00+00:00", "from_me": false}});
        expect![[r#"
            {"event": "message", "channel": "general", "channel_id": "general", "author": "bob", "author_id": "bob", "content": "yo", "timestamp": "2025-01-02T12:30:00+00:00", "message_id": "5", "mentions_bot": false, "attachments": [], "reply_to": null}
        "#]]
        .assert_eq(&listen.render(&note).unwrap());
        let other = json!({"message": {"id": "6", "chat": "random", "from": "bob", "text": "x"}});
        assert_eq!(listen.render(&other), None);
    }

    #[test]
    fn gog_output() {
        let threads = json!({"chats": [
            {"id": "18c2f", "name": "Invoice 42", "from": "Billing <b@example.com>",
             "last_message_at": "2025-01-02T12:31:00Z"},
            {"id": "18c30", "name": "Lunch", "from": "Alice <a@example.com>"},
        ]});
        let search = |mode, query: &str| Out::GogSearch {
            mode,
            query: query.into(),
        };
        expect![[r#"
            ID     DATE              FROM                     SUBJECT     LABELS
            18c2f  2025-01-02 12:31  Billing <b@example.com>  Invoice 42
            18c30                    Alice <a@example.com>    Lunch
            gog: Carapace does not apply the Gmail operators in:inbox; the other words are matched against subject and sender
        "#]]
        .assert_eq(&trimmed(&render(
            search(GogMode::Text, "in:inbox"),
            json!({}),
            threads.clone(),
        )));
        expect![[r#"
            {
              "threads": [
                {
                  "id": "18c2f",
                  "date": "2025-01-02 12:31",
                  "from": "Billing <b@example.com>",
                  "subject": "Invoice 42"
                }
              ],
              "nextPageToken": ""
            }
        "#]]
        .assert_eq(&render(
            search(GogMode::Json, "INVOICE"),
            json!({}),
            threads.clone(),
        ));
        expect![[r#"
            No results
        "#]]
        .assert_eq(&render(
            search(GogMode::Plain, "nothing"),
            json!({}),
            threads,
        ));
        let thread = json!({"messages": [{"id": "m1", "chat": "18c2f", "from": "b@example.com",
            "text": "Subject: Invoice 42\n\nPlease pay.", "at": "2025-01-02T12:31:00Z", "from_me": false}]});
        expect![[r#"
            Thread contains 1 message(s)

            === Message 1/1: m1 ===
            From: b@example.com
            To:
            Subject: Invoice 42
            Date: 2025-01-02T12:31:00Z

            Please pay.

        "#]]
        .assert_eq(&trimmed(&render(
            Out::GogThread {
                mode: GogMode::Text,
                id: "18c2f".into(),
            },
            json!({}),
            thread,
        )));
        expect![[r#"
            message_id	18c31
            thread_id	18c2f
        "#]]
        .assert_eq(&render(
            Out::GogSent {
                mode: GogMode::Text,
            },
            json!({}),
            json!({"sent": true, "id": "18c31", "thread_id": "18c2f"}),
        ));
    }

    #[test]
    fn refusals_name_the_code_in_the_tools_style() {
        let e = RpcError {
            code: -32003,
            message: "+1999 is not on the outbound allowlist of channel imsg".into(),
            data: json!({"code": "UNAUTHORIZED", "stage": "authorize", "retriable": false}),
        };
        assert_eq!(
            Tool::Imsg.error_line("send", &e),
            "imsg: send failed: UNAUTHORIZED: +1999 is not on the outbound allowlist of channel imsg"
        );
        assert_eq!(
            Tool::Discord.error_line("message send", &e),
            "Error: message send failed: UNAUTHORIZED: +1999 is not on the outbound allowlist of channel imsg"
        );
    }

    #[test]
    fn rfc3339_times_become_milliseconds() {
        assert_eq!(unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_ms("2023-11-14T22:13:20.000Z"), Some(1_700_000_000_000));
        assert_eq!(
            unix_ms("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500)
        );
        assert_eq!(unix_ms("2000-02-29T00:00:00-00:30"), Some(951_784_200_000));
        assert_eq!(unix_ms("yesterday"), None);
        assert_eq!(unix_ms("2023-13-14T22:13:20Z"), None);
    }

    #[test]
    fn install_links_refuses_unknown_names_and_existing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bin");
        let target = Path::new("/run/carapace/bin/cara");
        let made = install(&dir, target, &["imsg".into(), "gog".into()], false).unwrap();
        assert_eq!(made.len(), 2);
        assert_eq!(fs::read_link(dir.join("imsg")).unwrap(), target);

        let err = install(&dir, target, &["telegram".into()], false).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown shim \"telegram\""),
            "{err}"
        );

        fs::write(dir.join("discord"), "real discord").unwrap();
        let err = install(
            &dir,
            target,
            &["signal-cli".into(), "discord".into()],
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("exists; pass --force to replace it"),
            "{err}"
        );
        // Nothing was created when one name was refused.
        assert!(fs::symlink_metadata(dir.join("signal-cli")).is_err());

        install(
            &dir,
            Path::new("/other/cara"),
            &["discord".into(), "imsg".into()],
            true,
        )
        .unwrap();
        assert_eq!(
            fs::read_link(dir.join("discord")).unwrap(),
            Path::new("/other/cara")
        );
        assert_eq!(
            fs::read_link(dir.join("imsg")).unwrap(),
            Path::new("/other/cara")
        );
    }

    #[test]
    fn every_covered_command_is_in_the_readme_and_the_help() {
        let readme = include_str!("../../../README.md");
        for row in COVERAGE {
            assert!(
                readme.contains(&row.syntax.replace('|', "\\|")),
                "README lacks {}",
                row.syntax
            );
            assert!(help(row.tool).contains(row.syntax));
        }
    }
}
