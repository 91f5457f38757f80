//! Messaging channels for agents in shell mode: send a message, list chats, read a chat's
//! history and watch for new messages on a messaging platform (iMessage, Signal, ...),
//! plus the filters the Gate applies to them: address allowlists and denylists with
//! wildcards, content patterns that block or warn, and send rate limits per channel and
//! recipient.
//!
//! The only backend today is [`CommandBackend`]: it runs the platform's real CLI with a
//! fixed argv template from the owner's configuration. The [`Backend`] trait is the seam
//! for native adapters later.
//!
//! This crate must never decide policy (the Gate applies the filters and decides; this
//! crate only answers whether an address or a text matches), never run a shell string
//! (argv only, no `sh -c`), and never touch the store (dead-lettering and auditing are
//! the Gate's).

mod command;
mod filter;

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use command::{CommandBackend, CommandConfig, MAX_STDOUT_BYTES, Op, Template, TemplateError};
pub use filter::{
    AddressFilter, ContentAction, ContentFilter, ContentPatternError, ContentVerdict, Filters,
    Pattern, PatternError, Refusal, SendLimiter, content_verdict, normalize_address,
};

/// A conversation on a messaging platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chat {
    /// The backend's id of the chat (what `history` takes).
    pub id: String,
    /// A human-readable name; the id when the backend gave none.
    pub name: String,
    /// When the last message arrived, as the backend wrote it.
    pub last_message_at: Option<String>,
}

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The backend's id of the message.
    pub id: String,
    /// The id of the chat it belongs to.
    pub chat: String,
    /// The sender's address (phone number, email, handle).
    pub from: String,
    /// The text of the message.
    pub text: String,
    /// When it was sent, as the backend wrote it.
    pub at: String,
    /// Whether the owner's own account sent it.
    pub from_me: bool,
}

/// A message to send.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// The recipient's address or chat id.
    pub to: &'a str,
    /// The text to send.
    pub text: &'a str,
}

/// Why a channel operation failed. Messages may carry a backend's stderr line: the
/// caller scrubs secrets before showing them to an agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The channel has no template (or the backend no support) for this operation.
    #[error("this channel does not support {0}")]
    Unsupported(&'static str),
    /// A value for a placeholder was refused before anything ran.
    #[error("bad value for {{{placeholder}}}: {reason}")]
    BadValue {
        /// The placeholder's name (`to`, `text`, `chat`, `limit`).
        placeholder: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The backend ran and failed.
    #[error("backend failed ({}): {message}", status_text(*.status))]
    Backend {
        /// The exit code, or none when a signal ended it.
        status: Option<i32>,
        /// The first line of its stderr, at most 200 characters, control characters removed.
        message: String,
    },
    /// The backend did not finish in time; it was killed.
    #[error("backend did not finish in time")]
    Timeout,
    /// The backend could not be started.
    #[error("cannot start backend: {0}")]
    Spawn(String),
    /// The backend's output is not what the channel reads (JSON lines or a JSON array).
    #[error("cannot read backend output: {0}")]
    Output(String),
}

fn status_text(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// A messaging platform. [`CommandBackend`] (the platform's CLI) is one; native adapters
/// (Telegram's Bot API, signal-cli's JSON-RPC, ...) are the others to come. Dropping a
/// returned future cancels the operation.
pub trait Backend: Send + Sync {
    /// The backend's kind, as in the configuration (`command`).
    fn kind(&self) -> &'static str;

    /// Sends `msg`.
    fn send<'a>(&'a self, msg: Outgoing<'a>) -> BoxFuture<'a, Result<(), ChannelError>>;

    /// Lists at most `limit` chats, most recent first as the backend orders them.
    fn list_chats(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Chat>, ChannelError>>;

    /// The last `limit` messages of `chat`.
    fn history<'a>(
        &'a self,
        chat: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, ChannelError>>;

    /// Starts watching for new messages; the stream ends when the backend stops, and
    /// dropping it stops the backend.
    fn watch(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Message, ChannelError>>, ChannelError>>;
}

/// A configured channel: a backend and the filters the Gate applies to it.
pub struct Channel {
    /// The name in `[channels.NAME]`.
    pub name: String,
    /// The shim name that maps to this channel, when it is not the channel's name.
    pub shim: Option<String>,
    /// What talks to the platform.
    pub backend: Arc<dyn Backend>,
    /// Who may be written to and read from, what may be sent, how often.
    pub filters: Filters,
}

impl Channel {
    /// The shim name that maps to this channel: `shim`, or the channel's name.
    pub fn shim_name(&self) -> &str {
        self.shim.as_deref().unwrap_or(&self.name)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("shim", &self.shim)
            .field("backend", &self.backend.kind())
            .field("filters", &self.filters)
            .finish()
    }
}
