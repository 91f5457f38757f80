//! Messaging channels as Gate tools: `channel_send`, `channel_list_chats` and
//! `channel_history`, with each channel's filters applied in the Gate's stages (address
//! lists and send rates at authorize, content filters at policy; the inbound lists pass
//! the senders and chat ids an agent reads) and blocked messages kept sealed in the
//! dead-letter queue for the owner, within a quota per session.
//!
//! A channel is named by its configured name or by the shim name it claims; the Gate
//! rewrites the argument to the configured name before policy sees it, so rules and
//! destinations (`contact:CHANNEL:ADDRESS`) always use one spelling.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use carapace_channels::{Channel, Outgoing, Refusal, content_verdict, normalize_address};
use carapace_policy::Destination;
use carapace_store::{DeadLetterMeta, DeadLetterStatus, NewDeadLetter, Resolution, Store};
use carapace_types::{ErrorCode, GateError, Integrity, Label, Principal, SessionId, Source, Stage};
use carapace_vault::{SealKey, SealedBlob};
use serde_json::{Value, json};

use crate::catalog::{ExecFn, RawResult, ToolDef, ToolFailure};

/// The channel tools' names.
pub const SEND: &str = "channel_send";
/// Lists chats.
pub const LIST_CHATS: &str = "channel_list_chats";
/// Reads a chat's history.
pub const HISTORY: &str = "channel_history";

/// Longest message text accepted, in bytes.
const MAX_TEXT: usize = 64 * 1024;

/// Most letters one session may have held (or being released) at once.
const MAX_HELD_LETTERS: usize = 100;

/// Most text one session may have held (or being released) at once, in bytes.
const MAX_HELD_BYTES: u64 = 1 << 20;

/// The channels and the key of the dead-letter queue.
pub struct ChannelSetup {
    /// The configured channels.
    pub channels: Vec<Channel>,
    /// Seals blocked messages at rest; without it a blocked message is refused but not
    /// kept (and the owner is told so in the daemon's log).
    pub dead_letter_key: Option<SealKey>,
}

pub(crate) struct Channels {
    list: Vec<Arc<Channel>>,
    key: Option<SealKey>,
    /// One dead letter kept at a time, so the quota and the duplicate check hold for the
    /// letter stored after them.
    keeping: Mutex<()>,
}

/// What became of a blocked send's text.
pub(crate) enum Kept {
    /// Held for the owner under this id: a new letter, or for a rate-limited send the
    /// held letter of the same text to the same recipient from the same session.
    Letter(String),
    /// Not kept: the session's quota of held letters is full.
    QuotaFull,
}

impl Channels {
    pub(crate) fn new(setup: ChannelSetup) -> Channels {
        Channels {
            list: setup.channels.into_iter().map(Arc::new).collect(),
            key: setup.dead_letter_key,
            keeping: Mutex::new(()),
        }
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.list.iter().map(|c| c.name.clone()).collect()
    }

    /// The channel called `name`, or claiming `name` as its shim.
    fn resolve(&self, name: &str) -> Option<&Arc<Channel>> {
        self.list
            .iter()
            .find(|c| c.name == name)
            .or_else(|| self.list.iter().find(|c| c.shim_name() == name))
    }

    /// The channel an executor acts on (authorize already rewrote the argument to its
    /// configured name).
    fn executor_channel(&self, args: &Value) -> Result<Arc<Channel>, ToolFailure> {
        self.resolve(args["channel"].as_str().unwrap_or_default())
            .cloned()
            .ok_or_else(|| ToolFailure("no such channel".into()))
    }

    /// The authorize stage of a channel tool: the channel exists (its argument is
    /// rewritten to the configured name); for a send: the send rate (every attempt
    /// counts, refused ones too) and the outbound address lists; for a history: the
    /// inbound lists pass the chat's id (they name the chats an agent may read, as well
    /// as the senders, so the owner's side of a chat with an unlisted contact stays
    /// unread).
    pub(crate) fn authorize(&self, tool: &str, args: &mut Value) -> Result<(), GateError> {
        let asked = args["channel"].as_str().unwrap_or_default().to_string();
        let Some(channel) = self.resolve(&asked) else {
            return Err(GateError::new(
                ErrorCode::ValidationFailed,
                Stage::Validate,
                format!(
                    "no channel named `{}`; channels: {}",
                    short(&asked),
                    self.names().join(", ")
                ),
            )
            .with_field("/channel"));
        };
        args["channel"] = json!(channel.name);
        if tool == HISTORY {
            let chat = args["chat"].as_str().unwrap_or_default();
            return match channel.filters.inbound.check_chat(chat) {
                Ok(()) => Ok(()),
                Err(refusal) => Err(GateError::new(
                    ErrorCode::Unauthorized,
                    Stage::Authorize,
                    format!(
                        "chat {} cannot be read on channel {}: {refusal}",
                        short(chat),
                        channel.name
                    ),
                )
                .with_rule(format!("channel.{}.inbound", channel.name))),
            };
        }
        if tool != SEND {
            return Ok(());
        }
        let to = args["to"].as_str().unwrap_or_default();
        if let Err(retry) = channel.filters.limiter.charge(to, Instant::now()) {
            return Err(GateError::new(
                ErrorCode::RateLimited,
                Stage::Authorize,
                format!(
                    "too many messages on channel {}; try again later",
                    channel.name
                ),
            )
            .with_retry_after(retry)
            .with_rule(format!("channel.{}.rate", channel.name)));
        }
        match channel.filters.outbound.check(to) {
            Ok(()) => Ok(()),
            Err(refusal) => {
                let (rule, why) = match &refusal {
                    Refusal::Denied { pattern } => (
                        format!("channel.{}.outbound.deny", channel.name),
                        format!("is on the outbound denylist ({pattern})"),
                    ),
                    Refusal::NotAllowed => (
                        format!("channel.{}.outbound.allow", channel.name),
                        "is not on the outbound allowlist".to_string(),
                    ),
                    Refusal::BadAddress { reason } => (
                        format!("channel.{}.outbound", channel.name),
                        format!("is not a usable address ({reason})"),
                    ),
                };
                Err(GateError::new(
                    ErrorCode::Unauthorized,
                    Stage::Authorize,
                    format!("{} {why} of channel {}", short(to), channel.name),
                )
                .with_rule(rule))
            }
        }
    }

    /// The policy stage's channel part: content filters over a send's text. Returns the
    /// warning filters that matched (for the audit record).
    pub(crate) fn screen(&self, tool: &str, args: &Value) -> Result<Vec<String>, GateError> {
        if tool != SEND {
            return Ok(Vec::new());
        }
        let Some(channel) = self.resolve(args["channel"].as_str().unwrap_or_default()) else {
            return Ok(Vec::new());
        };
        let text = args["text"].as_str().unwrap_or_default();
        let verdict = content_verdict(&channel.filters.content, text);
        if let Some(i) = verdict.blocked_by {
            return Err(GateError::new(
                ErrorCode::PolicyDenied,
                Stage::Policy,
                format!(
                    "the message matches content filter {i} of channel {}",
                    channel.name
                ),
            )
            .with_rule(format!("channel.{}.filter.{i}", channel.name)));
        }
        Ok(verdict
            .warnings
            .iter()
            .map(|i| format!("channel.{}.filter.{i}", channel.name))
            .collect())
    }

    /// Keeps a blocked send for the owner, sealed, within the session's quota (100
    /// letters, 1 MiB of text held at once); a rate-limited send whose text the session
    /// holds for the same recipient already is that letter, so a flood keeps one.
    /// `None` when there is no key or the store failed (logged: the caller still gets its
    /// refusal).
    pub(crate) fn dead_letter(
        &self,
        store: &Store,
        session: &SessionId,
        principal: &Principal,
        args: &Value,
        err: &GateError,
        now_ms: i64,
    ) -> Option<Kept> {
        let Some(key) = &self.key else {
            tracing::warn!("a blocked message was not kept: no dead-letter key");
            return None;
        };
        let channel = args["channel"].as_str()?;
        let channel = self.resolve(channel).map_or(channel, |c| c.name.as_str());
        let to = args["to"].as_str()?;
        let text = args["text"].as_str()?;
        let _one = self.keeping.lock().unwrap_or_else(|e| e.into_inner());
        let held = store
            .held_dead_letters_of(session)
            .inspect_err(|e| tracing::error!(error = %e, "cannot count held dead letters"))
            .ok()?;
        if err.code == ErrorCode::RateLimited {
            let recipient = normalize_address(to);
            let same = held.iter().find(|l| {
                l.status == DeadLetterStatus::Held
                    && l.meta.code == err.code.as_str()
                    && l.meta.channel == channel
                    && l.meta.bytes == text.len() as u64
                    && normalize_address(&l.meta.recipient) == recipient
                    && self.open(store, &l.id).is_ok_and(|(_, t)| t == text)
            });
            if let Some(l) = same {
                return Some(Kept::Letter(l.id.clone()));
            }
        }
        let held_bytes: u64 = held.iter().map(|l| l.meta.bytes).sum();
        if held.len() >= MAX_HELD_LETTERS || held_bytes + text.len() as u64 > MAX_HELD_BYTES {
            tracing::warn!(
                session = %session,
                held = held.len(),
                held_bytes,
                "a blocked message was not kept: the session's dead-letter quota is full"
            );
            return Some(Kept::QuotaFull);
        }
        let letter = NewDeadLetter::new(DeadLetterMeta {
            created_ms: now_ms,
            session: session.clone(),
            principal: principal.audit_name(),
            channel: channel.to_string(),
            recipient: to.to_string(),
            code: err.code.as_str().to_string(),
            stage: err.stage.as_str().to_string(),
            rule: err.rule.clone(),
            bytes: text.len() as u64,
        })
        .inspect_err(|e| tracing::error!(error = %e, "cannot make a dead letter"))
        .ok()?;
        let sealed = key
            .seal(&letter.associated_data(), text.as_bytes())
            .inspect_err(|e| tracing::error!(error = %e, "cannot seal a dead letter"))
            .ok()?;
        store
            .add_dead_letter(&letter, &sealed.nonce, &sealed.ciphertext)
            .inspect_err(|e| tracing::error!(error = %e, "cannot store a dead letter"))
            .ok()
            .map(Kept::Letter)
    }

    /// The text of a dead letter, opened with the key.
    pub(crate) fn open(
        &self,
        store: &Store,
        id: &str,
    ) -> Result<(carapace_store::DeadLetter, String), GateError> {
        let key = self.key.as_ref().ok_or_else(|| {
            GateError::new(
                ErrorCode::ToolError,
                Stage::Execute,
                "no dead-letter key is configured",
            )
        })?;
        let sealed = store
            .dead_letter(id)
            .map_err(|e| crate::internal(Stage::Execute, &e))?
            .ok_or_else(|| {
                GateError::new(
                    ErrorCode::ValidationFailed,
                    Stage::Validate,
                    "no such dead letter",
                )
            })?;
        let blob =
            SealedBlob::from_parts(&sealed.nonce, sealed.ciphertext.clone()).ok_or_else(|| {
                crate::internal(
                    Stage::Execute,
                    &"a dead letter's nonce has the wrong length",
                )
            })?;
        let plain = key
            .open(&sealed.letter.associated_data(), &blob)
            .map_err(|e| crate::internal(Stage::Execute, &e))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| crate::internal(Stage::Execute, &"a dead letter is not UTF-8"))?;
        Ok((sealed.letter, text))
    }

    /// Sends a held letter as the owner decided (no filter applies: the owner has read
    /// it). The letter is claimed first, so a second release or a discard cannot take it
    /// while it is sent; it is marked released after the send, or put back on hold when
    /// the send failed. Returns its channel and recipient.
    pub(crate) async fn release(
        &self,
        store: &Store,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<(String, String), GateError> {
        let (letter, text) = self.open(store, id)?;
        let channel = self.resolve(&letter.meta.channel).ok_or_else(|| {
            GateError::new(
                ErrorCode::ToolError,
                Stage::Execute,
                format!("channel {} is no longer configured", letter.meta.channel),
            )
        })?;
        let internal = |e: carapace_store::StoreError| crate::internal(Stage::Execute, &e);
        if !store.claim_dead_letter(id, by).map_err(internal)? {
            let status = store
                .dead_letter(id)
                .map_err(internal)?
                .map_or(letter.status, |l| l.letter.status);
            return Err(GateError::new(
                ErrorCode::ValidationFailed,
                Stage::Validate,
                match status {
                    DeadLetterStatus::Releasing => format!("{id} is being released already"),
                    other => format!("{id} was {} already", other.as_str()),
                },
            ));
        }
        let sent = channel
            .backend
            .send(Outgoing {
                to: &letter.meta.recipient,
                text: &text,
            })
            .await;
        if let Err(e) = sent {
            // Not sent: the owner may try again, or discard it.
            store.unclaim_dead_letter(id).map_err(internal)?;
            return Err(GateError::new(
                ErrorCode::ToolError,
                Stage::Execute,
                e.to_string(),
            ));
        }
        if !store
            .resolve_dead_letter(id, Resolution::Released, by, now_ms)
            .map_err(internal)?
        {
            tracing::error!(id, "a released dead letter was no longer being released");
        }
        Ok((letter.meta.channel, letter.meta.recipient))
    }

    /// Starts watching a channel: messages from senders the inbound lists refuse are
    /// dropped, and so are the owner's own messages in chats whose id they refuse.
    /// Returns the channel's configured name and the stream.
    pub(crate) async fn watch(
        &self,
        name: &str,
    ) -> Result<
        (
            String,
            futures_util::stream::BoxStream<'static, carapace_channels::Message>,
        ),
        GateError,
    > {
        let channel = self.resolve(name).cloned().ok_or_else(|| {
            GateError::new(
                ErrorCode::ValidationFailed,
                Stage::Validate,
                format!(
                    "no channel named `{}`; channels: {}",
                    short(name),
                    self.names().join(", ")
                ),
            )
            .with_field("/channel")
        })?;
        let stream = channel
            .backend
            .watch()
            .await
            .map_err(|e| GateError::new(ErrorCode::ToolError, Stage::Execute, e.to_string()))?;
        use futures_util::StreamExt as _;
        let keep = channel.clone();
        let messages = stream
            .filter_map(move |m| {
                let keep = keep.clone();
                async move {
                    match m {
                        Ok(m) => {
                            let inbound = &keep.filters.inbound;
                            let readable = if m.from_me {
                                inbound.check_chat(&m.chat)
                            } else {
                                inbound.check(&m.from)
                            };
                            readable.is_ok().then_some(m)
                        }
                        Err(e) => {
                            tracing::warn!(channel = %keep.name, error = %e, "channel watch failed");
                            None
                        }
                    }
                }
            })
            .boxed();
        Ok((channel.name.clone(), messages))
    }
}

/// The destination of a send: `contact:CHANNEL:ADDRESS`.
fn send_destination(args: &Value, _: &carapace_fs::Workspace) -> Vec<Destination> {
    let channel = args["channel"].as_str().unwrap_or_default();
    let to = args["to"].as_str().unwrap_or_default();
    vec![Destination::contact(format!("{channel}:{to}"))]
}

/// The tools, when at least one channel is configured.
pub(crate) fn tools(channels: &Arc<Channels>) -> Vec<ToolDef> {
    if channels.list.is_empty() {
        return Vec::new();
    }
    let untrusted = Label {
        integrity: Integrity::Untrusted,
        confidentiality: carapace_types::Confidentiality::Private,
    };
    let c = channels.clone();
    let send: ExecFn = Arc::new(move |_ctx, args| {
        let c = c.clone();
        Box::pin(async move {
            let channel = c.executor_channel(&args)?;
            let to = args["to"].as_str().unwrap_or_default();
            let text = args["text"].as_str().unwrap_or_default();
            channel
                .backend
                .send(Outgoing { to, text })
                .await
                .map_err(|e| ToolFailure(e.to_string()))?;
            Ok(RawResult {
                content: json!({"sent": true, "channel": channel.name, "to": to}),
                label: Label::TRUSTED_PUBLIC,
                source: Source::Tool(SEND.into()),
                redactions: Vec::new(),
            })
        })
    });
    let c = channels.clone();
    let list: ExecFn = Arc::new(move |_ctx, args| {
        let c = c.clone();
        Box::pin(async move {
            let channel = c.executor_channel(&args)?;
            let limit = args["limit"].as_u64().unwrap_or(20) as usize;
            let chats = channel
                .backend
                .list_chats(limit)
                .await
                .map_err(|e| ToolFailure(e.to_string()))?;
            let inbound = &channel.filters.inbound;
            let total = chats.len();
            let shown: Vec<Value> = chats
                .into_iter()
                // By id only: the name is the contact's to choose.
                .filter(|c| inbound.check_chat(&c.id).is_ok())
                .map(|c| json!({"id": c.id, "name": c.name, "last_message_at": c.last_message_at}))
                .collect();
            let filtered = total - shown.len();
            Ok(RawResult {
                content: json!({"chats": shown, "filtered": filtered}),
                label: untrusted,
                source: Source::Contact(channel.name.clone()),
                redactions: Vec::new(),
            })
        })
    });
    let c = channels.clone();
    let history: ExecFn = Arc::new(move |_ctx, args| {
        let c = c.clone();
        Box::pin(async move {
            let channel = c.executor_channel(&args)?;
            let chat = args["chat"].as_str().unwrap_or_default();
            let limit = args["limit"].as_u64().unwrap_or(20) as usize;
            let messages = channel
                .backend
                .history(chat, limit)
                .await
                .map_err(|e| ToolFailure(e.to_string()))?;
            let inbound = &channel.filters.inbound;
            let total = messages.len();
            let shown: Vec<Value> = messages
                .into_iter()
                .filter(|m| m.from_me || inbound.check(&m.from).is_ok())
                .map(|m| {
                    json!({"id": m.id, "chat": m.chat, "from": m.from, "text": m.text,
                           "at": m.at, "from_me": m.from_me})
                })
                .collect();
            let filtered = total - shown.len();
            Ok(RawResult {
                content: json!({"messages": shown, "filtered": filtered}),
                label: untrusted,
                source: Source::Contact(channel.name.clone()),
                redactions: Vec::new(),
            })
        })
    });
    let name = json!({"type": "string", "minLength": 1, "maxLength": 64,
                      "description": "the channel's name (or the name of its shim)"});
    vec![
        ToolDef::new(
            SEND,
            "Send a text message on a messaging channel to one recipient (a phone number, \
             email address or handle the channel knows).",
            carapace_types::EffectClass::Egress,
            json!({
                "type": "object",
                "properties": {
                    "channel": name,
                    "to": {"type": "string", "minLength": 1, "maxLength": 256},
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
                },
                "required": ["channel", "to", "text"],
                "additionalProperties": false
            }),
            send,
        )
        .with_destinations(send_destination)
        .with_digest_only(&["text"]),
        ToolDef::new(
            LIST_CHATS,
            "List recent chats of a messaging channel (chats the owner does not let the \
             agent read are left out).",
            carapace_types::EffectClass::Read,
            json!({
                "type": "object",
                "properties": {
                    "channel": name,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 200}
                },
                "required": ["channel"],
                "additionalProperties": false
            }),
            list,
        )
        .with_result(untrusted, None),
        ToolDef::new(
            HISTORY,
            "Read the last messages of one chat of a messaging channel, one the owner lets \
             the agent read (messages from senders the owner does not let the agent read are \
             left out).",
            carapace_types::EffectClass::Read,
            json!({
                "type": "object",
                "properties": {
                    "channel": name,
                    "chat": {"type": "string", "minLength": 1, "maxLength": 256},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 500}
                },
                "required": ["channel", "chat"],
                "additionalProperties": false
            }),
            history,
        )
        .with_result(untrusted, None),
    ]
}

/// At most 64 characters of a caller's text, without control characters.
fn short(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Whether a failed send was blocked (and so is kept for the owner) rather than broken.
pub(crate) fn is_block(err: &GateError) -> bool {
    matches!(
        err.code,
        ErrorCode::Unauthorized
            | ErrorCode::RateLimited
            | ErrorCode::PolicyDenied
            | ErrorCode::ConfirmationDenied
            | ErrorCode::ConfirmationTimeout
    ) && matches!(err.stage, Stage::Authorize | Stage::Policy | Stage::Approve)
}
