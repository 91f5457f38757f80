//! The `command` backend: the platform's real CLI, run on the daemon's side with a fixed
//! argv template per operation.
//!
//! Values (`{to}`, `{text}`, `{chat}`, `{limit}`) are substituted inside the template's
//! arguments and the program is started directly (never through a shell), with a cleared
//! environment, stdin closed, a timeout that kills it and a cap on what is read from it.
//! A value that would start an argument with `-` is refused unless the template put `--`
//! before it, so a recipient like `--exec=x` cannot become an option of the CLI.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::{Backend, ChannelError, Chat, Message, Outgoing};

/// The most of a command's stdout that is read; the rest is discarded.
pub const MAX_STDOUT_BYTES: usize = 4 << 20;

/// The most of a command's stderr that is kept (only its first line is reported).
const MAX_STDERR_BYTES: usize = 64 << 10;

/// The longest line `watch` reads; longer lines are skipped.
const MAX_WATCH_LINE_BYTES: usize = 1 << 20;

/// The longest `{to}` or `{chat}` value.
const MAX_ADDRESS_BYTES: usize = 256;

/// The longest error message taken from stderr, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// `PATH` of the CLI: the system's directories, nothing from the daemon's environment.
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// An operation a channel can be asked for; each has its own template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Send a message: `{to}`, `{text}`.
    Send,
    /// List chats: `{limit}`.
    ListChats,
    /// A chat's messages: `{chat}`, `{limit}`.
    History,
    /// Stream new messages: no placeholders.
    Watch,
}

impl Op {
    /// The operation's name, as the configuration key.
    pub fn name(self) -> &'static str {
        match self {
            Op::Send => "send",
            Op::ListChats => "list_chats",
            Op::History => "history",
            Op::Watch => "watch",
        }
    }

    /// The placeholders this operation's template may use.
    pub fn placeholders(self) -> &'static [&'static str] {
        match self {
            Op::Send => &["to", "text"],
            Op::ListChats => &["limit"],
            Op::History => &["chat", "limit"],
            Op::Watch => &[],
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a template was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template has no program.
    #[error("the command is empty; its first element is the program")]
    Empty,
    /// The program is not an absolute path (it would be looked up in `PATH`).
    #[error("the program `{0}` must be an absolute path")]
    RelativeProgram(String),
    /// The program holds a placeholder.
    #[error("the program must not hold a placeholder")]
    PlaceholderInProgram,
    /// A `{name}` that is no placeholder at all.
    #[error(
        "unknown placeholder `{{{0}}}`; placeholders are {{to}}, {{text}}, {{chat}} and {{limit}}"
    )]
    UnknownPlaceholder(String),
    /// A placeholder this operation has no value for.
    #[error("{op} has no value for `{{{placeholder}}}`; it takes {}", allowed_text(*.op))]
    NotAllowed {
        /// The placeholder.
        placeholder: String,
        /// The operation of the template.
        op: Op,
    },
    /// An argument holds a NUL character, which no argv can carry.
    #[error("an argument holds a NUL character")]
    Nul,
}

fn allowed_text(op: Op) -> String {
    match op.placeholders() {
        [] => "no placeholders".to_owned(),
        names => names
            .iter()
            .map(|n| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(" and "),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    To,
    Text,
    Chat,
    Limit,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "to" => Var::To,
            "text" => Var::Text,
            "chat" => Var::Chat,
            "limit" => Var::Limit,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Var::To => "to",
            Var::Text => "text",
            Var::Chat => "chat",
            Var::Limit => "limit",
        }
    }
}

#[derive(Clone, Debug)]
enum Piece {
    Literal(String),
    Var(Var),
}

#[derive(Clone, Debug)]
struct Arg {
    pieces: Vec<Piece>,
    /// An earlier argument is exactly `--`: the CLI reads no options here.
    after_dashdash: bool,
}

/// A checked argv template of one operation.
#[derive(Clone, Debug)]
pub struct Template {
    op: Op,
    program: String,
    args: Vec<Arg>,
}

impl Template {
    /// Checks `argv` for `op`: an absolute program, only the placeholders `op` has values
    /// for. `{name}` with letters, digits or `_` inside is a placeholder; other braces are
    /// literal text.
    pub fn parse(op: Op, argv: &[String]) -> Result<Template, TemplateError> {
        let (program, rest) = argv.split_first().ok_or(TemplateError::Empty)?;
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(TemplateError::Nul);
        }
        if split(program)?.iter().any(|p| matches!(p, Piece::Var(_))) {
            return Err(TemplateError::PlaceholderInProgram);
        }
        if !program.starts_with('/') {
            return Err(TemplateError::RelativeProgram(program.clone()));
        }
        let mut args = Vec::with_capacity(rest.len());
        let mut after_dashdash = false;
        for a in rest {
            let pieces = split(a)?;
            for p in &pieces {
                if let Piece::Var(v) = p
                    && !op.placeholders().contains(&v.name())
                {
                    return Err(TemplateError::NotAllowed {
                        placeholder: v.name().to_owned(),
                        op,
                    });
                }
            }
            args.push(Arg {
                pieces,
                after_dashdash,
            });
            after_dashdash |= a == "--";
        }
        Ok(Template {
            op,
            program: program.clone(),
            args,
        })
    }

    /// The operation this template is for.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The argv with `values` substituted, or the first value refused.
    fn render(&self, values: &Values<'_>) -> Result<Vec<String>, ChannelError> {
        let mut argv = Vec::with_capacity(self.args.len() + 1);
        argv.push(self.program.clone());
        for arg in &self.args {
            let mut out = String::new();
            for piece in &arg.pieces {
                match piece {
                    Piece::Literal(text) => out.push_str(text),
                    Piece::Var(var) => {
                        let value = values.get(*var)?;
                        // The first character of the argument comes from this value.
                        if out.is_empty() && value.starts_with('-') && !arg.after_dashdash {
                            return Err(ChannelError::BadValue {
                                placeholder: var.name(),
                                reason: "starts with `-`, which the program would read as an \
                                         option; the template must put `--` before it"
                                    .to_owned(),
                            });
                        }
                        out.push_str(&value);
                    }
                }
            }
            argv.push(out);
        }
        Ok(argv)
    }
}

/// Splits a template argument into literal text and placeholders.
fn split(arg: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            let name = &after[..name_len];
            let var = Var::parse(name)
                .ok_or_else(|| TemplateError::UnknownPlaceholder(name.to_owned()))?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Var(var));
            rest = &after[name_len + 1..];
        } else {
            literal.push('{');
            rest = after;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// The values of one operation's placeholders.
#[derive(Default)]
struct Values<'a> {
    to: Option<&'a str>,
    text: Option<&'a str>,
    chat: Option<&'a str>,
    limit: Option<usize>,
}

impl Values<'_> {
    /// The checked value of `var`.
    fn get(&self, var: Var) -> Result<String, ChannelError> {
        let bad = |reason: &str| ChannelError::BadValue {
            placeholder: var.name(),
            reason: reason.to_owned(),
        };
        let value = match var {
            Var::To => self.to,
            Var::Text => self.text,
            Var::Chat => self.chat,
            Var::Limit => return self.limit.map(|l| l.to_string()).ok_or(bad("no value")),
        }
        .ok_or_else(|| bad("no value in this operation"))?;
        if value.contains('\0') {
            return Err(bad("holds a NUL character"));
        }
        if matches!(var, Var::To | Var::Chat) {
            if value.is_empty() {
                return Err(bad("is empty"));
            }
            if value.len() > MAX_ADDRESS_BYTES {
                return Err(bad("is longer than 256 bytes"));
            }
            if value.chars().any(char::is_control) {
                return Err(bad("holds control characters"));
            }
        }
        Ok(value.to_owned())
    }
}

/// What a [`CommandBackend`] runs: a template per operation (`send` required), extra
/// environment and a timeout.
#[derive(Clone)]
pub struct CommandConfig {
    /// Sends a message.
    pub send: Template,
    /// Lists chats; without it the channel cannot.
    pub list_chats: Option<Template>,
    /// Reads a chat's history; without it the channel cannot.
    pub history: Option<Template>,
    /// Streams new messages; without it the channel cannot.
    pub watch: Option<Template>,
    /// Environment variables for the CLI, over `PATH`, `LANG` and `HOME`.
    pub env: Vec<(String, String)>,
    /// The daemon's home directory, passed on as `HOME`.
    pub home: Option<PathBuf>,
    /// How long `send`, `list_chats` and `history` may run before they are killed.
    pub timeout: Duration,
}

impl fmt::Debug for CommandConfig {
    /// Names the environment variables without their values, which may be credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandConfig")
            .field("send", &self.send)
            .field("list_chats", &self.list_chats)
            .field("history", &self.history)
            .field("watch", &self.watch)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("home", &self.home)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Runs the platform's CLI (see the module docs).
#[derive(Clone, Debug)]
pub struct CommandBackend {
    config: CommandConfig,
    max_stdout: usize,
}

/// What a finished command printed.
struct Output {
    stdout: Vec<u8>,
    truncated: bool,
}

impl CommandBackend {
    /// A backend running `config`'s templates; each must have been parsed for its own
    /// operation.
    pub fn new(config: CommandConfig) -> CommandBackend {
        CommandBackend {
            config,
            max_stdout: MAX_STDOUT_BYTES,
        }
    }

    fn template(&self, op: Op) -> Result<&Template, ChannelError> {
        match op {
            Op::Send => Some(&self.config.send),
            Op::ListChats => self.config.list_chats.as_ref(),
            Op::History => self.config.history.as_ref(),
            Op::Watch => self.config.watch.as_ref(),
        }
        .ok_or(ChannelError::Unsupported(op.name()))
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("LANG", "C.UTF-8");
        if let Some(home) = &self.config.home {
            cmd.env("HOME", home);
        }
        cmd.envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `op` with `values` to its end, within the timeout.
    async fn run(&self, op: Op, values: Values<'_>) -> Result<Output, ChannelError> {
        let argv = self.template(op)?.render(&values)?;
        let mut child = self
            .command(&argv)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ChannelError::Spawn(format!("{}: {e}", argv[0])))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let max_stdout = self.max_stdout;
        let finished = tokio::time::timeout(self.config.timeout, async {
            tokio::join!(
                read_capped(stdout, max_stdout),
                read_capped(stderr, MAX_STDERR_BYTES),
                child.wait(),
            )
        })
        .await;
        let Ok((stdout, stderr, status)) = finished else {
            // Dropping the child would kill it too; this also reaps it.
            let _ = child.kill().await;
            tracing::debug!(op = op.name(), "channel command timed out and was killed");
            return Err(ChannelError::Timeout);
        };
        let status = status.map_err(|e| ChannelError::Spawn(e.to_string()))?;
        let (stdout, truncated) = stdout.map_err(|e| ChannelError::Output(e.to_string()))?;
        if !status.success() {
            let (stderr, _) = stderr.unwrap_or_default();
            return Err(ChannelError::Backend {
                status: status.code(),
                message: first_line(&stderr),
            });
        }
        if truncated {
            tracing::warn!(
                op = op.name(),
                limit = max_stdout,
                "channel command printed more than the limit; the rest was discarded"
            );
        }
        Ok(Output { stdout, truncated })
    }
}

/// Reads all of `reader`, keeping the first `cap` bytes; whether more was discarded.
async fn read_capped(
    reader: Option<impl AsyncRead + Unpin>,
    cap: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let (mut kept, mut truncated) = (Vec::new(), false);
    let Some(mut reader) = reader else {
        return Ok((kept, truncated));
    };
    let mut chunk = vec![0; 16 << 10];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        // Keep reading past the cap so the program is never stuck on a full pipe.
        let room = cap - kept.len();
        truncated |= n > room;
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// The first line of `stderr`, without control characters, at most 200 characters.
fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.trim_start()
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// The objects of an output that is one JSON array or JSON lines. Lines (or array
/// elements) that are not objects are skipped and counted.
fn objects(out: &Output) -> Result<Vec<Map<String, Value>>, ChannelError> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut skipped = 0;
    let values: Vec<Value> = if text.trim_start().starts_with('[') {
        if out.truncated {
            return Err(ChannelError::Output(format!(
                "a JSON array longer than {} bytes",
                out.stdout.len()
            )));
        }
        match serde_json::from_str(&text) {
            Ok(Value::Array(items)) => items,
            Ok(_) => return Err(ChannelError::Output("not a JSON array".to_owned())),
            Err(e) => return Err(ChannelError::Output(format!("not a JSON array: {e}"))),
        }
    } else {
        // A line cut by the cap is not a line.
        let complete = match (out.truncated, text.rfind('\n')) {
            (true, Some(end)) => &text[..end],
            (true, None) => "",
            (false, _) => &text,
        };
        let lines = complete.lines().map(str::trim).filter(|l| !l.is_empty());
        lines
            .filter_map(|line| {
                let value = serde_json::from_str(line).ok();
                skipped += usize::from(value.is_none());
                value
            })
            .collect()
    };
    let mut objects = Vec::with_capacity(values.len());
    for value in values {
        match value {
            Value::Object(o) => objects.push(o),
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::debug!(skipped, "skipped backend output that is not a JSON object");
    }
    Ok(objects)
}

const CHAT_ID: &[&str] = &["id", "chat_id", "guid", "rowid"];
const MESSAGE_ID: &[&str] = &["id", "guid", "rowid", "message_id"];
const CHAT_NAME: &[&str] = &["name", "display_name", "title", "identifier"];
const SENDER: &[&str] = &["from", "sender", "handle", "source", "author"];
const TEXT: &[&str] = &["text", "body", "message", "content"];
const TIME: &[&str] = &["at", "date", "timestamp", "created_at", "time"];
const LAST_MESSAGE_TIME: &[&str] = &[
    "last_message_at",
    "at",
    "date",
    "timestamp",
    "created_at",
    "time",
];
const FROM_ME: &[&str] = &["from_me", "is_from_me", "outgoing"];
const MESSAGE_CHAT: &[&str] = &["chat", "chat_id", "chat_identifier"];

/// The first of `names` that holds a string or a number, as text.
fn field(o: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match o.get(*n)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn flag(o: &Map<String, Value>, names: &[&str]) -> bool {
    names.iter().find_map(|n| match o.get(*n)? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => Some(n.as_i64() == Some(1)),
        _ => None,
    }) == Some(true)
}

fn chat_from(o: &Map<String, Value>) -> Option<Chat> {
    let id = field(o, CHAT_ID)?;
    Some(Chat {
        name: field(o, CHAT_NAME).unwrap_or_else(|| id.clone()),
        last_message_at: field(o, LAST_MESSAGE_TIME),
        id,
    })
}

/// A message, or none for an object that has no id, sender or text (a status line).
fn message_from(o: &Map<String, Value>, chat: Option<&str>) -> Option<Message> {
    let (id, from, text) = (field(o, MESSAGE_ID), field(o, SENDER), field(o, TEXT));
    if id.is_none() && from.is_none() && text.is_none() {
        return None;
    }
    Some(Message {
        id: id.unwrap_or_default(),
        chat: field(o, MESSAGE_CHAT)
            .or_else(|| chat.map(str::to_owned))
            .unwrap_or_default(),
        from: from.unwrap_or_default(),
        text: text.unwrap_or_default(),
        at: field(o, TIME).unwrap_or_default(),
        from_me: flag(o, FROM_ME),
    })
}

/// A running `watch` command.
struct Watching {
    child: Child,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    done: bool,
}

impl Watching {
    async fn next(&mut self) -> Option<Result<Message, ChannelError>> {
        while !self.done {
            match read_line(&mut self.stdout, &mut self.line).await {
                Ok(Some(true)) => tracing::debug!("skipped an overlong line of watch output"),
                Ok(Some(false)) => {
                    let message = serde_json::from_slice::<Value>(&self.line)
                        .ok()
                        .and_then(|v| message_from(v.as_object()?, None));
                    match message {
                        Some(m) => return Some(Ok(m)),
                        None if self.line.iter().all(u8::is_ascii_whitespace) => {}
                        None => tracing::debug!("skipped watch output that is not a message"),
                    }
                }
                Ok(None) => {
                    self.done = true;
                    let status =
                        tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                    if let Ok(Ok(status)) = status
                        && !status.success()
                    {
                        return Some(Err(ChannelError::Backend {
                            status: status.code(),
                            message: String::new(),
                        }));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(ChannelError::Output(e.to_string())));
                }
            }
        }
        None
    }
}

/// Reads one line into `line`: `Some(too_long)`, or none at the end. A line longer than
/// the limit is consumed but not kept.
async fn read_line(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (part, used, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if line.len() + part.len() > MAX_WATCH_LINE_BYTES {
            too_long = true;
            line.clear();
        } else if !too_long {
            line.extend_from_slice(part);
        }
        reader.consume(used);
        if end {
            return Ok(Some(too_long));
        }
    }
}

impl Backend for CommandBackend {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn send<'a>(&'a self, msg: Outgoing<'a>) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let values = Values {
                to: Some(msg.to),
                text: Some(msg.text),
                ..Values::default()
            };
            self.run(Op::Send, values).await.map(drop)
        })
    }

    fn list_chats(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Chat>, ChannelError>> {
        Box::pin(async move {
            let values = Values {
                limit: Some(limit),
                ..Values::default()
            };
            let out = self.run(Op::ListChats, values).await?;
            let objects = objects(&out)?;
            let chats: Vec<Chat> = objects.iter().filter_map(chat_from).collect();
            if chats.len() < objects.len() {
                tracing::debug!(
                    skipped = objects.len() - chats.len(),
                    "skipped chats without an id"
                );
            }
            Ok(chats)
        })
    }

    fn history<'a>(
        &'a self,
        chat: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, ChannelError>> {
        Box::pin(async move {
            let values = Values {
                chat: Some(chat),
                limit: Some(limit),
                ..Values::default()
            };
            let out = self.run(Op::History, values).await?;
            Ok(objects(&out)?
                .iter()
                .filter_map(|o| message_from(o, Some(chat)))
                .collect())
        })
    }

    fn watch(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Message, ChannelError>>, ChannelError>>
    {
        Box::pin(async move {
            let argv = self.template(Op::Watch)?.render(&Values::default())?;
            // Nobody reads stderr of a long-running watcher; a full pipe would stall it.
            let mut child = self
                .command(&argv)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| ChannelError::Spawn(format!("{}: {e}", argv[0])))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| ChannelError::Spawn("no stdout".to_owned()))?;
            let watching = Watching {
                child,
                stdout: BufReader::new(stdout),
                line: Vec::new(),
                done: false,
            };
            // The child is killed when the stream (which owns it) is dropped.
            Ok(stream::unfold(watching, |mut w| async move {
                let item = w.next().await?;
                Some((item, w))
            })
            .boxed())
        })
    }
}

#[cfg(test)]
mod tests;
