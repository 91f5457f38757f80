//! The Gate: the one pipeline every side effect of Carapace goes through.
//!
//! A call passes envelope -> resolve -> validate -> authorize -> policy -> approve ->
//! execute -> sanitize & label -> audit, and fails with a typed [`GateError`] naming the
//! stage. The executors (built-in tools here, later plugins, sandboxed processes and
//! egress) are private to this crate: nothing else can reach them without passing every
//! stage. The Gate never hands the model a secret, an internal error or a host path;
//! every decision it takes is appended to the hash-chained audit log before the side
//! effect happens.

mod approvals;
mod builtin;
mod catalog;
mod channel;
mod exec;
mod limiter;
mod mcp;
mod net;
#[cfg(test)]
mod tests;

pub use approvals::{Answer, ApprovalDecisionError, ApprovalInfo, PlanInfo, StepInfo};
pub use carapace_egress::{
    Egress, EgressConfig, EgressError, Injection, Place, Scope, check_host_list,
};
pub use carapace_policy::{Level, parse_step_ranges};
pub use carapace_vault::{Scrubber, SharedScrubber};
pub use catalog::ToolSpec;
pub use channel::ChannelSetup;
pub use exec::ExecSetup;
pub use mcp::{McpServerInfo, McpSetup};
pub use net::{InjectRule, NetSetup, SecretSource};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carapace_fs::Workspace;
use carapace_policy::{
    CallMetadata, Destination, Exposure, Grant, ModelAsk, Plan, Policy, SessionState, Step,
};
use carapace_store::{AuditKey, Store};
use carapace_types::{
    Confidentiality, Decision, EffectClass, ErrorCode, GateError, Integrity, Label, Principal,
    SessionId, Source, Stage,
};
use futures_util::FutureExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::approvals::Approvals;
use crate::catalog::{Catalog, ExecCtx, ToolDef};
use crate::limiter::RateLimiter;

/// Every tool the Gate can offer; configuration grants a subset. `propose_plan` is not
/// among them: it is always offered, and does nothing without the owner.
pub const KNOWN_TOOLS: &[&str] = &[
    "read_file",
    "list_dir",
    "write_file",
    "search_files",
    "exec",
    "web_fetch",
    "http_request",
];

/// The tools of messaging channels; they exist when channels are configured.
pub const CHANNEL_TOOLS: &[&str] = &[channel::SEND, channel::LIST_CHATS, channel::HISTORY];

/// The tool through which the agent proposes a plan for the owner to approve once.
pub const PLAN_TOOL: &str = "propose_plan";

/// What a tool's effect class and result label become by the owner's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToolOverride {
    /// The effect class policy decides with, instead of the declared one.
    pub effect: Option<EffectClass>,
    /// The least label of the tool's results, joined with the declared one (it can only
    /// raise a label, never lower it).
    pub result: Option<Label>,
}

/// Judges plain-English rules that did not compile, from metadata only. Implementations
/// time out, cache per session, and turn a failure into an ask; the Gate applies the
/// verdicts with [`carapace_policy::escalate`], which can only ask.
pub trait RuleJudge: Send + Sync {
    /// The asks of every uncompiled rule that applies to this call.
    fn judge<'a>(
        &'a self,
        session: &'a SessionId,
        call: &'a CallMetadata,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<ModelAsk>> + Send + 'a>>;
}

/// Limits and grants of the Gate, validated by the caller's configuration loader.
#[derive(Clone, Debug)]
pub struct GateConfig {
    /// Wall-clock deadline of one executor run.
    pub tool_timeout: Duration,
    /// How long an approval request waits for the owner.
    pub approval_timeout: Duration,
    /// Calls per minute per principal and tool; denied attempts count too.
    pub rate_per_minute: u32,
    /// Largest argument document accepted, in bytes of JSON.
    pub max_args_bytes: usize,
    /// Tools granted to sessions. Nothing else exists for them (deny by default).
    /// `propose_plan` is always there: it does nothing without the owner.
    pub granted_tools: Vec<String>,
    /// Per-tool effect and result label overrides, by tool name.
    pub tool_overrides: std::collections::BTreeMap<String, ToolOverride>,
    /// How long approved plan steps last when the plan does not say (and at most).
    pub plan_ttl: Duration,
}

impl Default for GateConfig {
    fn default() -> GateConfig {
        GateConfig {
            tool_timeout: Duration::from_secs(30),
            approval_timeout: Duration::from_secs(300),
            rate_per_minute: 120,
            max_args_bytes: 256 * 1024,
            granted_tools: builtin::NAMES.iter().map(|s| s.to_string()).collect(),
            tool_overrides: Default::default(),
            plan_ttl: Duration::from_secs(3600),
        }
    }
}

/// What the Gate is built from.
pub struct GateDeps {
    /// State: sessions, labels, provenance of files, the audit log.
    pub store: Arc<Store>,
    /// Signs the audit chain head.
    pub audit_key: Arc<AuditKey>,
    /// The agent's workspace directory; built-in file tools cannot leave it.
    pub workspace_root: std::path::PathBuf,
    /// The policy the Gate consults at the policy stage.
    pub policy: Policy,
    /// Judges plain-English rules that did not compile; `None`: there are none.
    pub judge: Option<Arc<dyn RuleJudge>>,
    /// Scrubs known secrets and credential-shaped strings from results and audit records.
    pub scrubber: SharedScrubber,
    /// Limits and grants.
    pub config: GateConfig,
    /// The sandbox of the `exec` tool; without it, `exec` does not exist.
    pub exec: Option<ExecSetup>,
    /// The egress client and secrets of the network tools; without it, they do not exist.
    pub net: Option<NetSetup>,
    /// Messaging channels and the dead-letter key; without channels the channel tools
    /// do not exist. Configured channels are granted (each has its own allowlists, which
    /// allow nobody until the owner lists someone).
    pub channels: Option<ChannelSetup>,
    /// MCP servers; their tools (`SERVER__TOOL`) are granted, as the owner configured
    /// them, and come and go with the servers' lists.
    pub mcp: Option<McpSetup>,
}

/// Why the Gate could not be built.
#[derive(Debug)]
pub enum GateSetupError {
    /// The workspace directory could not be opened.
    Workspace(carapace_fs::FsError),
    /// A tool override names a tool the Gate does not have.
    UnknownTool(String),
}

impl std::fmt::Display for GateSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateSetupError::Workspace(e) => write!(f, "cannot open the workspace: {e}"),
            GateSetupError::UnknownTool(name) => {
                write!(f, "[tools.{name}] names a tool Carapace does not have")
            }
        }
    }
}

impl std::error::Error for GateSetupError {}

/// Something the owner should see as it happens (sent to the CLI, web UI and WebSocket).
#[derive(Clone, Debug)]
pub enum GateEvent {
    /// A call waits for the owner's approval.
    ApprovalRequested(Box<ApprovalInfo>),
    /// An approval was answered or expired.
    ApprovalResolved {
        /// The approval id.
        id: String,
        /// Whether the call may go ahead.
        approved: bool,
    },
}

/// Arguments of a call, either already parsed or as the raw text the model produced.
#[derive(Clone, Copy, Debug)]
pub enum RawArgs<'a> {
    /// A parsed JSON document.
    Json(&'a Value),
    /// JSON text, possibly malformed.
    Text(&'a str),
}

/// The successful result of a call, scrubbed and labelled.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOutput {
    /// The result document shown to the model.
    pub content: Value,
    /// The label of the result; the session's label has already been raised by it.
    pub label: Label,
    /// Where the result came from.
    pub source: Source,
}

/// One tool call as the Gate sees it.
#[derive(Clone, Copy, Debug)]
pub struct CallRequest<'a> {
    /// Who is acting, as constructed by the front door.
    pub principal: &'a Principal,
    /// The session the call belongs to.
    pub session: &'a SessionId,
    /// The caller's id for the call (the model's tool call id).
    pub call_id: &'a str,
    /// The tool name as requested.
    pub tool: &'a str,
    /// The arguments.
    pub args: RawArgs<'a>,
}

/// The Gate. Cheap to clone; all clones share one pipeline.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    audit_key: Arc<AuditKey>,
    catalog: Catalog,
    policy: Policy,
    judge: Option<Arc<dyn RuleJudge>>,
    scrubber: SharedScrubber,
    limiter: RateLimiter,
    approvals: Approvals,
    workspace: Arc<Workspace>,
    net: Option<Arc<net::Net>>,
    channels: Option<Arc<channel::Channels>>,
    mcp: Option<mcp::McpTools>,
    config: GateConfig,
    events: broadcast::Sender<GateEvent>,
}

impl Gate {
    /// Builds the Gate with the built-in tools; only tools in `config.granted_tools`
    /// are visible or callable. Fails when the workspace directory cannot be opened.
    pub fn new(deps: GateDeps) -> Result<Gate, GateSetupError> {
        #[allow(unused_mut)]
        let mut catalog = builtin::catalog();
        #[cfg(feature = "noop-tool")]
        catalog.add(builtin::noop());
        if let Some(setup) = deps.exec.clone() {
            catalog.add(exec::tool(setup));
        }
        Gate::with_catalog(deps, catalog)
    }

    fn with_catalog(deps: GateDeps, mut catalog: Catalog) -> Result<Gate, GateSetupError> {
        let net = deps.net.map(|setup| Arc::new(net::Net::new(setup)));
        if let Some(net) = &net {
            for tool in net::tools(net) {
                catalog.add(tool);
            }
        }
        let workspace = Workspace::open(&deps.workspace_root).map_err(GateSetupError::Workspace)?;
        catalog.add(plan_tool());
        catalog.retain(|name| {
            name == PLAN_TOOL || deps.config.granted_tools.iter().any(|g| g == name)
        });
        let channels = deps
            .channels
            .map(|setup| Arc::new(channel::Channels::new(setup)));
        if let Some(ch) = &channels {
            for tool in channel::tools(ch) {
                catalog.add(tool);
            }
        }
        for (name, o) in &deps.config.tool_overrides {
            // An override of a known tool that is not granted is harmless; of an unknown
            // one it is a typo the owner should hear about.
            let Some(tool) = catalog.get_mut(name) else {
                if KNOWN_TOOLS.contains(&name.as_str()) || CHANNEL_TOOLS.contains(&name.as_str()) {
                    continue;
                }
                return Err(GateSetupError::UnknownTool(name.clone()));
            };
            if let Some(effect) = o.effect {
                tool.effect = effect;
            }
            if let Some(floor) = o.result {
                tool.result_floor = tool.result_floor.join(floor);
            }
        }
        let (events, _) = broadcast::channel(256);
        let limiter = RateLimiter::new(deps.config.rate_per_minute);
        Ok(Gate {
            inner: Arc::new(Inner {
                store: deps.store,
                audit_key: deps.audit_key,
                catalog,
                policy: deps.policy,
                judge: deps.judge,
                scrubber: deps.scrubber,
                limiter,
                approvals: Approvals::new(events.clone()),
                workspace: Arc::new(workspace),
                net,
                channels,
                mcp: deps.mcp.map(mcp::McpTools::new),
                config: deps.config,
                events,
            }),
        })
    }

    /// The scrubber as it is now (the vault's values, the token, the provider key and
    /// credential shapes), for front ends that show or store model output.
    pub fn scrubber(&self) -> Arc<Scrubber> {
        self.inner.scrubber.current()
    }

    /// The tools granted to sessions, as offered to the model: the built-in ones, then
    /// the MCP servers' tools as they are listed now, by name.
    pub fn tool_specs(&self) -> Vec<ToolSpec> {
        let mut specs = self.inner.catalog.specs();
        if let Some(mcp) = &self.inner.mcp {
            let defs = mcp.defs();
            let mut names: Vec<&String> = defs.keys().collect();
            names.sort();
            specs.extend(names.into_iter().map(|n| catalog::spec_of(&defs[n])));
        }
        specs
    }

    /// The MCP servers' states (`{"servers": [...]}`; empty without servers).
    pub fn mcp_status(&self) -> Value {
        match &self.inner.mcp {
            Some(m) => m.status(),
            None => json!({ "servers": [] }),
        }
    }

    /// One MCP server's tools with the effect class each got and why; `None`: no such
    /// server.
    pub fn mcp_tools(&self, server: &str) -> Option<Value> {
        self.inner.mcp.as_ref()?.tools_of(server)
    }

    /// Connects to one MCP server anew and lists its tools (and restarts it now if it is
    /// down); `None`: no such server.
    pub async fn mcp_test(&self, server: &str) -> Option<Value> {
        self.inner.mcp.as_ref()?.test(server).await
    }

    /// A tool by name: a built-in one, or an MCP server's as listed now.
    fn resolve(&self, name: &str) -> Option<Arc<ToolDef>> {
        if let Some(t) = self.inner.catalog.get(name) {
            return Some(t.clone());
        }
        self.inner.mcp.as_ref().and_then(|m| m.get(name))
    }

    /// The names of the configured messaging channels.
    pub fn channel_names(&self) -> Vec<String> {
        self.inner
            .channels
            .as_ref()
            .map(|c| c.names())
            .unwrap_or_default()
    }

    /// Watches a channel for new messages on behalf of `principal` in `session`. Each
    /// message that passes the channel's inbound lists is taken into the session (as
    /// untrusted, private contact content) before it is yielded; the watch is audited.
    pub async fn watch_channel(
        &self,
        principal: &Principal,
        session: &SessionId,
        channel: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, Value>, GateError> {
        use futures_util::StreamExt as _;
        let channels = self.inner.channels.as_ref().ok_or_else(|| {
            GateError::new(
                ErrorCode::UnknownTool,
                Stage::Resolve,
                "no messaging channels are configured",
            )
        })?;
        if self
            .inner
            .store
            .session(session)
            .map_err(|e| internal(Stage::Envelope, &e))?
            .is_none()
        {
            return Err(GateError::new(
                ErrorCode::Unauthorized,
                Stage::Envelope,
                "no such session",
            ));
        }
        let (name, messages) = channels.watch(channel).await?;
        self.record(
            "channel_watch",
            json!({"principal": principal.audit_name(), "session": session.as_str(), "channel": name}),
        )?;
        let store = self.inner.store.clone();
        let session = session.clone();
        let source = Source::Contact(name.clone()).as_string();
        let label = Label {
            integrity: Integrity::Untrusted,
            confidentiality: Confidentiality::Private,
        };
        let scrubber = self.inner.scrubber.clone();
        Ok(messages
            .filter_map(move |m| {
                // The session holds what it was shown: taken in before the agent sees it;
                // a message that cannot be recorded is not shown.
                let mut exposure = Exposure::default();
                exposure.record(EffectClass::Read, label, false);
                let taken = store
                    .absorb_result(
                        &session,
                        label,
                        &source,
                        &exposure_pairs(&exposure),
                        now_ms(),
                    )
                    .inspect_err(|e| tracing::error!(error = %e, "cannot record a watched message"))
                    .is_ok();
                let mut v = json!({"id": m.id, "chat": m.chat, "from": m.from, "text": m.text,
                                   "at": m.at, "from_me": m.from_me});
                scrubber.current().scrub_json(&mut v);
                std::future::ready(taken.then_some(v))
            })
            .boxed())
    }

    /// Keeps a blocked `channel_send` for the owner; what became of it, when the queue
    /// could take it.
    fn keep_dead_letter(&self, req: &CallRequest<'_>, err: &GateError) -> Option<channel::Kept> {
        let channels = self.inner.channels.as_ref()?;
        let args = parse_args(req.args, self.inner.config.max_args_bytes).ok()?;
        channels.dead_letter(
            &self.inner.store,
            req.session,
            req.principal,
            &args,
            err,
            now_ms(),
        )
    }

    /// The text of a dead letter, for the owner (the reading is audited).
    pub fn dead_letter_text(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(carapace_store::DeadLetter, String), GateError> {
        let channels = self.owner_channels(principal)?;
        let (letter, text) = channels.open(&self.inner.store, id)?;
        self.record(
            "dead_letter_shown",
            json!({"id": id, "principal": principal.audit_name()}),
        )?;
        Ok((letter, text))
    }

    /// Sends a held dead letter as the owner decided, and records that it was sent.
    pub async fn release_dead_letter(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), GateError> {
        let channels = self.owner_channels(principal)?;
        let by = principal.audit_name();
        // Write-ahead, like every side effect: the attempt is on record before it happens.
        self.record("dead_letter_release", json!({"id": id, "principal": by}))?;
        let result = channels.release(&self.inner.store, id, &by, now_ms()).await;
        let fields = match &result {
            Ok((channel, to)) => json!({"id": id, "outcome": "sent", "channel": channel, "to": to}),
            Err(e) => json!({"id": id, "outcome": "failed", "error": e.to_json()}),
        };
        self.record("dead_letter_released", fields)?;
        result.map(drop)
    }

    /// Throws a held dead letter away; false when it was not held.
    pub fn discard_dead_letter(&self, principal: &Principal, id: &str) -> Result<bool, GateError> {
        self.owner_channels(principal)?;
        let by = principal.audit_name();
        let done = self
            .inner
            .store
            .resolve_dead_letter(id, carapace_store::Resolution::Discarded, &by, now_ms())
            .map_err(|e| internal(Stage::Execute, &e))?;
        if done {
            self.record("dead_letter_discarded", json!({"id": id, "principal": by}))?;
        }
        Ok(done)
    }

    fn owner_channels(&self, principal: &Principal) -> Result<&channel::Channels, GateError> {
        if !principal.is_owner() {
            return Err(GateError::new(
                ErrorCode::Unauthorized,
                Stage::Authorize,
                "only the owner handles the dead-letter queue",
            ));
        }
        self.inner.channels.as_deref().ok_or_else(|| {
            GateError::new(
                ErrorCode::ValidationFailed,
                Stage::Validate,
                "no messaging channels are configured",
            )
        })
    }

    /// The session's label as text (`trusted/public`, ...), from the store.
    pub fn session_label(&self, session: &SessionId) -> Result<String, GateError> {
        match self.inner.store.session(session) {
            Ok(Some(s)) => Ok(s.label.to_string()),
            Ok(None) => Err(GateError::new(
                ErrorCode::Unauthorized,
                Stage::Envelope,
                "no such session",
            )),
            Err(e) => Err(internal(Stage::Envelope, &e)),
        }
    }

    /// Subscribes to owner-facing events (approval requests and their answers).
    pub fn subscribe(&self) -> broadcast::Receiver<GateEvent> {
        self.inner.events.subscribe()
    }

    /// Pending approvals, oldest first.
    pub fn pending_approvals(&self) -> Vec<ApprovalInfo> {
        self.inner.approvals.list()
    }

    /// Answers a pending approval. Only the owner may; the waiting call records the
    /// answer in the audit log.
    pub fn decide_approval(
        &self,
        principal: &Principal,
        id: &str,
        approve: bool,
    ) -> Result<(), ApprovalDecisionError> {
        let answer = if approve { Answer::Once } else { Answer::Deny };
        self.answer_approval(principal, id, answer)
    }

    /// Answers a pending approval with any answer: once, for the session, some steps of
    /// a plan, or deny. The first answer wins; later ones find nothing.
    pub fn answer_approval(
        &self,
        principal: &Principal,
        id: &str,
        answer: Answer,
    ) -> Result<(), ApprovalDecisionError> {
        let approved = answer.approves();
        self.inner.approvals.decide(principal, id, answer)?;
        let _ = self.inner.events.send(GateEvent::ApprovalResolved {
            id: id.to_string(),
            approved,
        });
        Ok(())
    }

    /// Where a session stands with policy: exposure score and level, grants.
    pub fn policy_status(&self, session: &SessionId) -> Result<PolicyStatus, GateError> {
        let inner = &*self.inner;
        let record = inner
            .store
            .session(session)
            .map_err(|e| internal(Stage::Envelope, &e))?
            .ok_or_else(|| {
                GateError::new(ErrorCode::Unauthorized, Stage::Envelope, "no such session")
            })?;
        let exposure = exposure_from(&record.exposure);
        let score = inner.policy.friction.score(&exposure);
        let now = now_ms();
        let grants = self
            .grants(session)?
            .into_iter()
            .map(|g| GrantInfo {
                live: g.live(now),
                text: g.step.describe(),
                id: g.id,
                remaining: g.remaining,
                expires_ms: g.expires_ms,
            })
            .collect();
        Ok(PolicyStatus {
            score,
            level: inner.policy.friction.level(score),
            ask_above: inner.policy.friction.ask_above,
            deny_above: inner.policy.friction.deny_above,
            grants,
        })
    }

    /// The owner's reset of a session: exposure back to zero and grants gone (its label
    /// stays: what it holds does not change). Audited.
    pub fn reset_session(
        &self,
        principal: &Principal,
        session: &SessionId,
    ) -> Result<(), GateError> {
        if *principal.kind() != carapace_types::PrincipalKind::Owner {
            return Err(GateError::new(
                ErrorCode::Unauthorized,
                Stage::Authorize,
                "only the owner may reset a session",
            ));
        }
        self.inner
            .store
            .reset_session_policy(session, now_ms())
            .map_err(|e| match e {
                carapace_store::StoreError::UnknownSession(_) => {
                    GateError::new(ErrorCode::Unauthorized, Stage::Envelope, "no such session")
                }
                e => internal(Stage::Envelope, &e),
            })?;
        self.record(
            "session_reset",
            json!({ "session": session.as_str(), "principal": principal.audit_name() }),
        )?;
        Ok(())
    }

    fn grants(&self, session: &SessionId) -> Result<Vec<Grant>, GateError> {
        let records = self
            .inner
            .store
            .grants(session)
            .map_err(|e| internal(Stage::Policy, &e))?;
        // A grant that does not read back covers nothing; it must not stop every call.
        Ok(records
            .into_iter()
            .filter_map(|r| match Step::from_json(&r.step) {
                Ok(step) => Some(Grant {
                    id: r.id,
                    step,
                    remaining: r.remaining,
                    expires_ms: r.expires_ms,
                }),
                Err(e) => {
                    tracing::error!(grant = %r.id, error = %e, "a stored grant is unreadable; it covers nothing");
                    None
                }
            })
            .collect())
    }

    /// Appends an event that is not a tool call (a failed login, a session created) to
    /// the audit log. Secrets in `fields` are scrubbed first.
    pub fn record(&self, event: &str, mut fields: Value) -> Result<u64, GateError> {
        self.inner.scrubber.current().scrub_json(&mut fields);
        let mut record = json!({ "ts_ms": now_ms(), "event": event });
        if let (Some(map), Value::Object(extra)) = (record.as_object_mut(), fields) {
            map.extend(extra);
        }
        self.append(&record)
    }

    /// Runs one call through every stage. Never panics; every outcome is a typed result
    /// and every decision is in the audit log before this returns.
    pub async fn call(&self, req: CallRequest<'_>) -> Result<ToolOutput, GateError> {
        // If the caller goes away mid-call (a cancelled turn, a closed connection), the
        // guard records that, so no decision is left without its outcome.
        let mut guard = CancelGuard {
            gate: self,
            audit: AuditDraft::new(&req),
            finished: false,
        };
        let result = self.run(&req, &mut guard.audit).await;
        guard.finished = true;
        let audit = &mut guard.audit;
        match &result {
            Ok(out) => {
                audit.set("result_sha256", json!(sha256_json(&out.content)));
                audit.set("result_label", json!(out.label.to_string()));
                audit.set("result_source", json!(out.source.as_string()));
                self.audit_outcome(audit, "executed", None)?;
            }
            Err(err) => {
                if req.tool == channel::SEND
                    && channel::is_block(err)
                    && let Some(kept) = self.keep_dead_letter(&req, err)
                {
                    let (mut err, note) = match kept {
                        channel::Kept::Letter(id) => {
                            audit.set("dead_letter", json!(id));
                            let note = "the message was kept for the owner";
                            (err.clone().with_dead_letter(), note)
                        }
                        channel::Kept::QuotaFull => {
                            audit.set("dead_letter_quota_full", json!(true));
                            let note = "the message was not kept (the session's dead-letter \
                                        quota is full)";
                            (err.clone(), note)
                        }
                    };
                    let outcome = "denied";
                    if let Err(audit_err) = self.audit_outcome(audit, outcome, Some(&err)) {
                        tracing::error!(error = %audit_err, "could not record a failed call");
                    }
                    err.message = format!("{}; {note}", err.message);
                    return Err(err);
                }
                let outcome = if audit.executed { "failed" } else { "denied" };
                if let Err(audit_err) = self.audit_outcome(audit, outcome, Some(err)) {
                    tracing::error!(error = %audit_err, "could not record a failed call");
                }
            }
        }
        result
    }

    async fn run(
        &self,
        req: &CallRequest<'_>,
        audit: &mut AuditDraft,
    ) -> Result<ToolOutput, GateError> {
        let inner = &*self.inner;

        // envelope: the session's label comes from the store, never from the caller.
        let session = match inner.store.session(req.session) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(GateError::new(
                    ErrorCode::Unauthorized,
                    Stage::Envelope,
                    "no such session",
                ));
            }
            Err(e) => return Err(internal(Stage::Envelope, &e)),
        };

        // resolve
        let Some(tool) = self.resolve(req.tool) else {
            return Err(GateError::new(
                ErrorCode::UnknownTool,
                Stage::Resolve,
                format!("no tool named `{}` is available", truncate(req.tool, 64)),
            ));
        };
        audit.set("effect", json!(tool.effect.as_str()));
        // Charge the rate limiter before validation, so malformed and denied attempts
        // count too; the verdict is applied at the authorize stage.
        let rate = inner.limiter.charge(
            &req.principal.audit_name(),
            tool.name.clone(),
            Instant::now(),
        );

        // validate
        let args = parse_args(req.args, inner.config.max_args_bytes)?;
        let scrubber = inner.scrubber.current();
        audit.set_args(&args, &scrubber, tool.digest_only);
        tool.validate(&args)?;
        if scrubber.contains_secret(&args.to_string()) {
            return Err(GateError::new(
                ErrorCode::ValidationFailed,
                Stage::Validate,
                "an argument holds a secret value; secrets are added by Carapace where the \
                 owner configured them, never passed in arguments",
            ));
        }

        // authorize
        if let Err(retry_after) = rate {
            return Err(GateError::new(
                ErrorCode::RateLimited,
                Stage::Authorize,
                format!("too many calls to {}; try again later", tool.name),
            )
            .with_retry_after(retry_after));
        }

        // Channels: the channel's name; a send's rate and outbound lists; the inbound
        // lists for the chat a history reads.
        let mut args = args;
        let channels = inner
            .channels
            .as_ref()
            .filter(|_| CHANNEL_TOOLS.contains(&&*tool.name));
        if let Some(ch) = channels {
            ch.authorize(&tool.name, &mut args)?;
        }

        // The plan tool has no effect of its own: the owner's answer is its result.
        if tool.name == PLAN_TOOL {
            return self.propose_plan(req, &session, &args, audit).await;
        }

        // policy: destinations come from the tool's definition, state from the store.
        let destinations = (tool.destinations)(&args, &inner.workspace);
        if !destinations.is_empty() {
            let names: Vec<String> = destinations.iter().map(|d| d.to_string()).collect();
            audit.set("destinations", json!(names));
        }
        if let Some(ch) = channels {
            let warnings = ch.screen(&tool.name, &args)?;
            if !warnings.is_empty() {
                audit.set("filter_warnings", json!(warnings));
            }
        }
        let exposure = exposure_from(&session.exposure);
        let mut grants = self.grants(req.session)?;
        let now = now_ms();
        let preq = carapace_policy::Request {
            principal: req.principal,
            tool: &tool.name,
            effect: tool.effect,
            destinations: &destinations,
            args: &args,
        };
        let decision = loop {
            let state = SessionState {
                label: session.label,
                seen: &session.seen,
                exposure,
                grants: &grants,
                now_ms: now,
            };
            let verdict = carapace_policy::decide(&inner.policy, &state, &preq);
            audit.set("friction", json!(inner.policy.level(&state).as_str()));
            match verdict.grant {
                None => {
                    let mut decision = verdict.decision;
                    // Uncompiled plain-English rules may turn an allow into an ask.
                    if let (Decision::Allow { .. }, Some(judge)) = (&decision, &inner.judge) {
                        let meta = CallMetadata::of(&state, &preq);
                        let asks = judge.judge(req.session, &meta).await;
                        if !asks.is_empty() {
                            let names: Vec<&str> = asks.iter().map(|a| a.rule.as_str()).collect();
                            audit.set("model_rules", json!(names));
                        }
                        decision = carapace_policy::escalate(decision, &asks);
                    }
                    break decision;
                }
                Some(i) => {
                    // Another call may have taken the grant's last use; then decide again
                    // without it.
                    if inner
                        .store
                        .use_grant(req.session, &grants[i].id, now)
                        .map_err(|e| internal(Stage::Policy, &e))?
                    {
                        audit.set("grant", json!(grants[i].id));
                        break verdict.decision;
                    }
                    grants.remove(i);
                }
            }
        };
        // Secrets the call would carry; a first use in the session needs the owner, so an
        // allow becomes an ask (never the other way round), also under a grant: the plan
        // the owner approved did not show which credential a call would carry.
        let secret_plan = match &inner.net {
            Some(net) if tool.effect == EffectClass::Egress => net.plan(req.session, &args),
            _ => net::SecretPlan::default(),
        };
        let decision = match decision {
            Decision::Allow { .. } if !secret_plan.needs_approval.is_empty() => Decision::Ask {
                rule: "secret_first_use".into(),
                reason: format!(
                    "first use in this session of the credential {}",
                    secret_plan.needs_approval.join(", ")
                ),
            },
            Decision::Ask { rule, reason } if !secret_plan.needs_approval.is_empty() => {
                Decision::Ask {
                    rule,
                    reason: format!(
                        "{reason}; and first use in this session of the credential {}",
                        secret_plan.needs_approval.join(", ")
                    ),
                }
            }
            other => other,
        };
        if !secret_plan.rules.is_empty() {
            let names: Vec<&str> = secret_plan
                .rules
                .iter()
                .map(|r| r.secret.as_str())
                .collect();
            audit.set("secrets", json!(names));
        }
        audit.set("rule", json!(decision.rule()));
        match decision {
            Decision::Allow { .. } => {}
            Decision::Deny { rule, reason } => {
                return Err(
                    GateError::new(ErrorCode::PolicyDenied, Stage::Policy, reason).with_rule(rule),
                );
            }
            Decision::Ask { rule, reason } => {
                let scope = session_scope(&tool.name, &destinations);
                let answer = self
                    .approve(req, &tool, &args, &rule, &reason, None, scope, audit)
                    .await?;
                if let Some(net) = &inner.net {
                    net.approved(req.session, &secret_plan.needs_approval);
                }
                if answer == Answer::Session {
                    self.grant_for_session(req.session, &tool.name, &destinations, audit)?;
                }
            }
        }

        // Write-ahead: a call with a side effect is on record before it happens. A read
        // has none, so its decision is recorded once, with its result.
        if tool.effect != EffectClass::Read {
            self.audit_outcome(audit, "allowed", None)?;
        }
        audit.executed = true;
        // What the call was granted counts now, and the session takes the least label of
        // its result now: a call that fails, times out or is cancelled after it started
        // may have had its effect, and its error text may carry what it reached.
        let mut granted = Exposure::default();
        granted.record(
            tool.effect,
            Label::TRUSTED_PUBLIC,
            !secret_plan.rules.is_empty(),
        );
        let floor_source = tool.floor_source.as_ref().map(Source::as_string);
        self.absorb(
            &session,
            tool.result_floor,
            floor_source.as_deref().unwrap_or_default(),
            &granted,
        )
        .map_err(|e| internal(Stage::Execute, &e))?;

        // execute: secrets are released for this call only, after every check.
        let injections = match &inner.net {
            Some(net) if !secret_plan.rules.is_empty() => net
                .release(&secret_plan)
                .await
                .map_err(|f| GateError::new(ErrorCode::ToolError, Stage::Execute, f.0))?,
            _ => Vec::new(),
        };
        let ctx = ExecCtx {
            injections,
            workspace: inner.workspace.clone(),
            store: inner.store.clone(),
            session: req.session.clone(),
            session_label: session.label,
            egress_hosts: session.egress_hosts.clone(),
            now_ms: now_ms(),
            scrubber: inner.scrubber.current(),
        };
        // The executor runs on this task (a thread hop per call costs more than the whole
        // pipeline); a panic is caught here and the deadline drops the future.
        let run = std::panic::AssertUnwindSafe((tool.exec)(ctx, args)).catch_unwind();
        let deadline = tool.timeout.unwrap_or(inner.config.tool_timeout);
        let raw = match tokio::time::timeout(deadline, run).await {
            Err(_) => {
                return Err(GateError::new(
                    ErrorCode::ToolTimeout,
                    Stage::Execute,
                    format!("{} did not finish within {deadline:?}", tool.name),
                ));
            }
            Ok(Err(panic)) => {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(tool = %tool.name, panic = %detail, "tool executor panicked");
                return Err(GateError::new(
                    ErrorCode::ToolError,
                    Stage::Execute,
                    format!("{} failed unexpectedly", tool.name),
                ));
            }
            Ok(Ok(Err(failure))) => {
                let mut message = failure.0;
                inner.scrubber.current().scrub_string(&mut message);
                return Err(GateError::new(
                    ErrorCode::ToolError,
                    Stage::Execute,
                    message,
                ));
            }
            Ok(Ok(Ok(raw))) => raw,
        };

        // sanitize & label
        let mut content = raw.content;
        // Values released during the call (a password-manager entry) are known by now.
        let mut redactions = raw.redactions;
        redactions.extend(inner.scrubber.current().scrub_json_report(&mut content));
        let mut label = raw.label.join(tool.result_floor);
        if !redactions.is_empty() {
            // Something credential-shaped was there: the result is at least private.
            label = label.join(Label {
                integrity: Integrity::Trusted,
                confidentiality: Confidentiality::Private,
            });
            audit.set("scrubbed", json!(true));
            // Where in the result, and how many: the owner can see what was withheld.
            let places: Vec<Value> = redactions
                .iter()
                .map(|r| json!({ "path": r.path, "count": r.count }))
                .collect();
            audit.set("redactions", Value::Array(places));
        }
        // The effect was counted when the call was allowed; now what came back.
        let mut exposure = Exposure::default();
        exposure.record(EffectClass::Read, label, false);
        if let Err(e) = self.absorb(&session, label, &raw.source.as_string(), &exposure) {
            return Err(internal(Stage::Sanitize, &e));
        }
        Ok(ToolOutput {
            content,
            label,
            source: raw.source,
        })
    }

    /// Takes `label`, `source` and `exposure` into the session, skipping the write when
    /// the session as read at the start of the call already holds them all (labels and
    /// sources only rise, so what it held then it holds now).
    fn absorb(
        &self,
        session: &carapace_store::SessionRecord,
        label: Label,
        source: &str,
        exposure: &Exposure,
    ) -> Result<(), carapace_store::StoreError> {
        let pairs = exposure_pairs(exposure);
        let known_source = source.is_empty() || session.seen.iter().any(|s| s == source);
        if session.label.dominates(label) && known_source && pairs.is_empty() {
            return Ok(());
        }
        self.inner
            .store
            .absorb_result(&session.id, label, source, &pairs, now_ms())
            .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    async fn approve(
        &self,
        req: &CallRequest<'_>,
        tool: &ToolDef,
        args: &Value,
        rule: &str,
        reason: &str,
        plan: Option<PlanInfo>,
        session_scope: Option<String>,
        audit: &mut AuditDraft,
    ) -> Result<Answer, GateError> {
        let inner = &*self.inner;
        // Each shown value is scrubbed on its own, so a credential-shaped run in one value
        // (a PEM header matches to the end of its text) cannot swallow the rest.
        let preview = match &plan {
            Some(p) => plan_preview(p),
            None => approval_preview(args, &inner.scrubber.current()),
        };
        let now = now_ms();
        let info = ApprovalInfo {
            id: approvals::new_id(),
            session: req.session.clone(),
            tool: tool.name.to_string(),
            args_preview: preview,
            reason: reason.to_string(),
            rule: rule.to_string(),
            created_ms: now,
            expires_ms: now + inner.config.approval_timeout.as_millis() as i64,
            plan,
            session_scope,
        };
        let pending = inner.approvals.open(info.clone());
        audit.set("approval_id", json!(info.id));
        self.audit_outcome(audit, "asked", None)?;
        let _ = inner
            .events
            .send(GateEvent::ApprovalRequested(Box::new(info.clone())));

        let answer = tokio::time::timeout(inner.config.approval_timeout, pending.wait()).await;
        match answer {
            Ok(Some(answered)) if answered.answer.approves() => {
                audit.set("answer", json!(answered.answer.as_str()));
                audit.set("answered_by", json!(answered.by));
                self.audit_outcome(audit, "approved", None)?;
                Ok(answered.answer)
            }
            Ok(Some(answered)) => {
                audit.set("answer", json!("deny"));
                audit.set("answered_by", json!(answered.by));
                Err(GateError::new(
                    ErrorCode::ConfirmationDenied,
                    Stage::Approve,
                    format!("the owner declined {}", tool.name),
                )
                .with_rule(rule))
            }
            Ok(None) => Err(GateError::new(
                ErrorCode::ConfirmationDenied,
                Stage::Approve,
                format!("the request to approve {} was withdrawn", tool.name),
            )
            .with_rule(rule)),
            // The expired request was withdrawn (and announced) when `wait` was dropped.
            Err(_) => Err(GateError::new(
                ErrorCode::ConfirmationTimeout,
                Stage::Approve,
                format!(
                    "the owner did not answer within {:?}",
                    inner.config.approval_timeout
                ),
            )
            .with_rule(rule)),
        }
    }

    /// "Approve for this session": a grant for this tool to these destinations (any
    /// arguments when the tool names none), for the session's life.
    fn grant_for_session(
        &self,
        session: &SessionId,
        tool: &str,
        destinations: &[Destination],
        audit: &mut AuditDraft,
    ) -> Result<(), GateError> {
        // The broker refuses a session answer without a scope; this is the second lock.
        if session_scope(tool, destinations).is_none() {
            return Ok(());
        }
        let mut patterns = Vec::new();
        for d in destinations {
            patterns.push(
                carapace_policy::Pattern::parse(&d.to_string())
                    .map_err(|e| internal(Stage::Approve, &e))?,
            );
        }
        let step = Step {
            tool: tool.to_string(),
            args: Default::default(),
            destinations: patterns,
            max_calls: None,
            why: "approved for this session".into(),
        };
        let id = format!("session_{}", &approvals::new_id()[3..]);
        audit.set("granted", json!([id]));
        self.inner
            .store
            .add_grants(
                session,
                &[carapace_store::GrantRecord {
                    id,
                    step: step.to_json(),
                    remaining: None,
                    expires_ms: None,
                    created_ms: now_ms(),
                }],
            )
            .map_err(|e| internal(Stage::Approve, &e))
    }

    /// The `propose_plan` tool: checks the plan, pre-evaluates each step, asks the owner
    /// once, and turns the approved steps into grants of this session.
    async fn propose_plan(
        &self,
        req: &CallRequest<'_>,
        session: &carapace_store::SessionRecord,
        args: &Value,
        audit: &mut AuditDraft,
    ) -> Result<ToolOutput, GateError> {
        let inner = &*self.inner;
        let invalid = |msg: String| {
            let field = msg.split(':').next().unwrap_or_default().to_string();
            GateError::new(ErrorCode::ValidationFailed, Stage::Validate, msg).with_field(field)
        };
        let plan = Plan::from_args(args).map_err(invalid)?;
        let scrubber = inner.scrubber.current();
        let now = now_ms();
        let exposure = exposure_from(&session.exposure);
        let state = SessionState {
            label: session.label,
            seen: &session.seen,
            exposure,
            grants: &[],
            now_ms: now,
        };
        let mut infos = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let n = i + 1;
            let tool = match self.resolve(&step.tool) {
                Some(t) if t.name != PLAN_TOOL => t,
                _ => {
                    return Err(invalid(format!(
                        "steps[{n}].tool: no tool named `{}` is available",
                        truncate(&step.tool, 64)
                    )));
                }
            };
            let known = tool.schema["properties"].as_object();
            for name in step.args.keys() {
                let top = name
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or_default();
                if !known.is_some_and(|k| k.contains_key(top)) {
                    return Err(invalid(format!(
                        "steps[{n}].args.{name}: {} has no argument `{top}`",
                        tool.name
                    )));
                }
            }
            if tool.effect == EffectClass::Egress && step.destinations.is_empty() {
                return Err(invalid(format!(
                    "steps[{n}].destinations: a step of {} sends data out, so it names the places it may reach (host:NAME, or mcp:SERVER for an MCP tool)",
                    tool.name
                )));
            }
            // What policy would say of such a call without the plan.
            let mut guess = serde_json::Map::new();
            for (name, c) in &step.args {
                match c {
                    carapace_policy::Constraint::Exact(v) => {
                        guess.insert(name.clone(), v.clone());
                    }
                    carapace_policy::Constraint::Prefix(p) => {
                        guess.insert(name.clone(), json!(p));
                    }
                    carapace_policy::Constraint::OneOf(_) => {}
                }
            }
            let guess = Value::Object(guess);
            let destinations: Vec<Destination> = if step.destinations.is_empty() {
                (tool.destinations)(&guess, &inner.workspace)
            } else {
                step.destinations
                    .iter()
                    .map(|p| Destination::parse(p.as_str()))
                    .collect()
            };
            let verdict = carapace_policy::decide(
                &inner.policy,
                &state,
                &carapace_policy::Request {
                    principal: req.principal,
                    tool: &tool.name,
                    effect: tool.effect,
                    destinations: &destinations,
                    args: &guess,
                },
            );
            let (decision, rule) = match &verdict.decision {
                Decision::Allow { rule } => ("allow", rule.clone()),
                Decision::Ask { rule, .. } => ("ask", rule.clone()),
                Decision::Deny { rule, .. } => ("deny", rule.clone()),
            };
            infos.push(StepInfo {
                number: n,
                text: shown(&step.describe(), &scrubber),
                why: shown(&step.why, &scrubber),
                decision,
                rule,
            });
        }
        audit.set(
            "plan",
            json!(
                infos
                    .iter()
                    .map(|s| format!("{}. {} [{}: {}]", s.number, s.text, s.decision, s.rule))
                    .collect::<Vec<_>>()
            ),
        );
        if infos.iter().all(|s| s.decision == "deny") {
            return Err(GateError::new(
                ErrorCode::PolicyDenied,
                Stage::Policy,
                "policy refuses every step of this plan",
            )
            .with_rule(infos[0].rule.clone()));
        }
        let tainted = session.label.integrity == Integrity::Untrusted;
        let reason = if tainted {
            "the agent proposes a plan; approved steps will pass without asking. Careful: this session has already seen untrusted content, which may have shaped the plan"
        } else {
            "the agent proposes a plan; approved steps will pass without asking, even after it reads untrusted content"
        };
        let info = PlanInfo {
            goal: shown(&plan.goal, &scrubber),
            steps: infos.clone(),
        };
        let tool = inner
            .catalog
            .get(PLAN_TOOL)
            .ok_or_else(|| internal(Stage::Resolve, &"the plan tool is missing"))?;
        audit.set("rule", json!("plan"));
        let answer = self
            .approve(req, tool, args, "plan", reason, Some(info), None, audit)
            .await?;
        let chosen: Vec<usize> = match answer {
            Answer::Steps(s) => s,
            _ => infos
                .iter()
                .filter(|s| s.decision != "deny")
                .map(|s| s.number)
                .collect(),
        };
        let ttl = plan
            .ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(inner.config.plan_ttl)
            .min(inner.config.plan_ttl);
        let expires_ms = now_ms() + ttl.as_millis() as i64;
        let plan_id = format!("plan_{}", &approvals::new_id()[3..]);
        let records: Vec<carapace_store::GrantRecord> = chosen
            .iter()
            .map(|&n| {
                let step = &plan.steps[n - 1];
                carapace_store::GrantRecord {
                    id: format!("{plan_id}#{n}"),
                    step: step.to_json(),
                    remaining: step.max_calls,
                    expires_ms: Some(expires_ms),
                    created_ms: now_ms(),
                }
            })
            .collect();
        inner
            .store
            .add_grants(req.session, &records)
            .map_err(|e| internal(Stage::Execute, &e))?;
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        audit.set("granted", json!(ids));
        audit.executed = true;
        let not_approved: Vec<usize> = infos
            .iter()
            .map(|s| s.number)
            .filter(|n| !chosen.contains(n))
            .collect();
        Ok(ToolOutput {
            content: json!({
                "plan": plan_id,
                "approved_steps": chosen,
                "not_approved_steps": not_approved,
                "expires_ms": expires_ms,
                "note": "calls that match an approved step now pass without asking; any other call is decided on its own",
            }),
            label: Label::TRUSTED_PUBLIC,
            source: Source::Owner,
        })
    }

    fn audit_outcome(
        &self,
        audit: &mut AuditDraft,
        outcome: &str,
        err: Option<&GateError>,
    ) -> Result<u64, GateError> {
        let mut record = audit.record.clone();
        record["outcome"] = json!(outcome);
        record["ts_ms"] = json!(now_ms());
        if let Some(err) = err {
            record["code"] = json!(err.code.as_str());
            record["stage"] = json!(err.stage.as_str());
            record["message"] = json!(err.message);
            if let Some(rule) = &err.rule {
                record["rule"] = json!(rule);
            }
            if let Some(field) = &err.field {
                record["field"] = json!(field);
            }
        }
        self.inner.scrubber.current().scrub_json(&mut record);
        self.append(&record)
    }

    fn append(&self, record: &Value) -> Result<u64, GateError> {
        match self.inner.store.append_audit(&self.inner.audit_key, record) {
            Ok(entry) => Ok(entry.seq),
            Err(e) => Err(internal(Stage::Audit, &e)),
        }
    }
}

/// Where a session stands with policy, for `cara session show` and the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The exposure score.
    pub score: u32,
    /// The friction level it puts the session at.
    pub level: Level,
    /// The configured thresholds.
    pub ask_above: u32,
    /// The configured thresholds.
    pub deny_above: u32,
    /// The session's grants, oldest first.
    pub grants: Vec<GrantInfo>,
}

/// A grant as shown to the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    /// Its id.
    pub id: String,
    /// What it covers, in one line.
    pub text: String,
    /// Calls left; `None`: unbounded.
    pub remaining: Option<u32>,
    /// When it expires; `None`: with the session.
    pub expires_ms: Option<i64>,
    /// Whether it still covers calls.
    pub live: bool,
}

const EXPOSURE_KINDS: [&str; 7] = [
    "untrusted_reads",
    "private_reads",
    "writes",
    "egress",
    "exec",
    "secrets",
    "self_modify",
];

fn exposure_fields(e: &mut Exposure) -> [&mut u32; 7] {
    [
        &mut e.untrusted_reads,
        &mut e.private_reads,
        &mut e.writes,
        &mut e.egress,
        &mut e.exec,
        &mut e.secrets,
        &mut e.self_modify,
    ]
}

/// The stored counters as the policy crate's `Exposure` (unknown kinds are ignored).
fn exposure_from(map: &std::collections::BTreeMap<String, u32>) -> Exposure {
    let mut e = Exposure::default();
    for (kind, field) in EXPOSURE_KINDS.iter().zip(exposure_fields(&mut e)) {
        *field = map.get(*kind).copied().unwrap_or(0);
    }
    e
}

fn exposure_pairs(e: &Exposure) -> Vec<(&'static str, u32)> {
    let mut e = *e;
    EXPOSURE_KINDS
        .iter()
        .zip(exposure_fields(&mut e))
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (*k, *n))
        .collect()
}

/// What "approve for this session" would cover: this tool to exactly these places. `None`
/// when the call names no places, or a place that would not read back as itself (a `*`
/// would widen into a glob; control characters are not shown safely).
fn session_scope(tool: &str, destinations: &[Destination]) -> Option<String> {
    let plain = |v: &str| {
        !v.is_empty()
            && !v.contains('*')
            && !v
                .chars()
                .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
    };
    if destinations.is_empty() || !destinations.iter().all(|d| plain(&d.value)) {
        return None;
    }
    let places: Vec<String> = destinations.iter().map(|d| d.to_string()).collect();
    Some(format!("{tool} to {}", places.join(", ")))
}

/// The `propose_plan` tool as offered to the model.
fn plan_tool() -> ToolDef {
    let exec: catalog::ExecFn = Arc::new(|_, _| {
        Box::pin(async {
            Err(catalog::ToolFailure(
                "propose_plan is run by the Gate".into(),
            ))
        })
    });
    let constraint = json!({
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "exact": {},
            "prefix": { "type": "string", "minLength": 1 },
            "one_of": { "type": "array", "minItems": 1, "maxItems": 64 }
        },
        "additionalProperties": false
    });
    ToolDef::new(
        PLAN_TOOL,
        "Propose a plan to the owner BEFORE reading untrusted content (web pages, messages, \
         files you did not write) when the task will then need to write, send or run \
         something. List each call you will make: the tool, constraints on its arguments \
         (exact values, prefixes, one_of), and for tools that send data out the hosts they \
         may reach. The owner approves once; later calls that match an approved step pass \
         without asking, any other call is decided on its own. Content you read later \
         cannot add steps.",
        EffectClass::Read,
        json!({
            "type": "object",
            "properties": {
                "goal": { "type": "string", "maxLength": 500, "description": "what the plan is for" },
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": carapace_policy::MAX_STEPS,
                    "items": {
                        "type": "object",
                        "properties": {
                            "tool": { "type": "string", "minLength": 1, "maxLength": 128 },
                            "args": {
                                "type": "object",
                                "maxProperties": 16,
                                "additionalProperties": constraint,
                                "description": "argument name -> {\"exact\": value} | {\"prefix\": \"...\"} | {\"one_of\": [...]}; unconstrained arguments may take any value"
                            },
                            "destinations": {
                                "type": "array", "maxItems": 32,
                                "items": { "type": "string", "minLength": 1, "maxLength": 300 },
                                "description": "hosts (like example.com or *.example.com) or path:notes/* the calls may reach"
                            },
                            "max_calls": { "type": "integer", "minimum": 1, "maximum": 1000 },
                            "why": { "type": "string", "maxLength": 500 }
                        },
                        "required": ["tool"],
                        "additionalProperties": false
                    }
                },
                "ttl_minutes": { "type": "integer", "minimum": 1, "maximum": 1440 }
            },
            "required": ["goal", "steps"],
            "additionalProperties": false
        }),
        exec,
    )
}

/// A plan as the owner sees it in a prompt: numbered steps with what policy says of each.
/// Model-written text as the owner sees it in a prompt: scrubbed on its own, and cut
/// after 400 characters saying how much is missing.
fn shown(text: &str, scrubber: &Scrubber) -> String {
    const MAX_CHARS: usize = 400;
    let mut text = text.to_string();
    scrubber.scrub_string(&mut text);
    let total = text.chars().count();
    if total <= MAX_CHARS {
        return text;
    }
    let head: String = text.chars().take(MAX_CHARS).collect();
    format!("{head}… (+{} more characters)", total - MAX_CHARS)
}

/// Its parts were scrubbed and cut one by one (`shown`) when the plan was read.
fn plan_preview(plan: &PlanInfo) -> String {
    let mut out = format!(
        "a plan of {} step{}; goal: {:?}",
        plan.steps.len(),
        if plan.steps.len() == 1 { "" } else { "s" },
        plan.goal
    );
    for s in &plan.steps {
        let note = match s.decision {
            "deny" => format!("REFUSED by policy ({})", s.rule),
            "ask" => format!("would ask ({})", s.rule),
            _ => "allowed by policy anyway".to_string(),
        };
        out.push_str(&format!("\n{}. {} [{note}]", s.number, s.text));
        if !s.why.is_empty() {
            out.push_str(&format!("\n   why: {:?}", s.why));
        }
    }
    out
}

/// Records a call whose future was dropped before it finished.
struct CancelGuard<'a> {
    gate: &'a Gate,
    audit: AuditDraft,
    finished: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // During execution the side effect may or may not have happened; say so.
        let outcome = if self.audit.executed {
            "cancelled_during_execution"
        } else {
            "cancelled"
        };
        if let Err(e) = self.gate.audit_outcome(&mut self.audit, outcome, None) {
            tracing::error!(error = %e, "could not record a cancelled call");
        }
    }
}

/// The audit record of one call, filled in stage by stage.
struct AuditDraft {
    record: Value,
    executed: bool,
}

impl AuditDraft {
    fn new(req: &CallRequest<'_>) -> AuditDraft {
        AuditDraft {
            record: json!({
                "event": "tool_call",
                "principal": req.principal.audit_name(),
                "session": req.session.as_str(),
                "call_id": truncate(req.call_id, 128),
                "tool": truncate(req.tool, 128),
            }),
            executed: false,
        }
    }

    fn set(&mut self, key: &str, value: Value) {
        self.record[key] = value;
    }

    /// Arguments enter the log scrubbed, and large values only as digests.
    /// Records the arguments: their digest, and a copy with long strings, secrets and the
    /// `digest_only` fields (a message's text: a blocked one lives only sealed in the
    /// dead-letter queue) replaced by digests.
    fn set_args(&mut self, args: &Value, scrubber: &Scrubber, digest_only: &[&str]) {
        self.set("args_sha256", json!(sha256_json(args)));
        if depth(args) > MAX_LOGGED_DEPTH {
            // The digest stands for it; the log must stay writable whatever the model sends.
            self.set("args", json!({ "omitted": "nested too deeply" }));
            return;
        }
        let mut shown = args.clone();
        if let Value::Object(map) = &mut shown {
            for key in digest_only {
                if let Some(Value::String(text)) = map.get(*key) {
                    let digest = hex::encode(Sha256::digest(text.as_bytes()));
                    map.insert(
                        key.to_string(),
                        json!({ "sha256": digest, "bytes": text.len() }),
                    );
                }
            }
        }
        digest_large_strings(&mut shown);
        scrubber.scrub_json(&mut shown);
        self.set("args", shown);
    }
}

const MAX_LOGGED_STRING: usize = 256;
const MAX_LOGGED_DEPTH: usize = 32;

/// Nesting depth of a JSON value (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The arguments as the owner sees them when asked: `path` first, then the other fields
/// by name, one per line; a long value is cut and says how much is missing and its
/// digest, so nothing can hide past the end of the preview.
fn approval_preview(args: &Value, scrubber: &Scrubber) -> String {
    const MAX_VALUE_CHARS: usize = 400;
    let show = |v: &Value| -> String {
        let quoted = v.is_string();
        let mut text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        scrubber.scrub_string(&mut text);
        let total = text.chars().count();
        if total <= MAX_VALUE_CHARS {
            return if quoted { format!("{text:?}") } else { text };
        }
        let head: String = text.chars().take(MAX_VALUE_CHARS).collect();
        format!(
            "{head:?}… (+{} more characters, {} in all, sha256 {})",
            total - MAX_VALUE_CHARS,
            text.len(),
            &hex::encode(Sha256::digest(text.as_bytes()))[..16]
        )
    };
    match args {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| (k.as_str() != "path", k.as_str().to_owned()));
            keys.iter()
                .map(|k| format!("{k} = {}", show(&map[k.as_str()])))
                .collect::<Vec<_>>()
                .join("\n")
        }
        other => show(other),
    }
}

fn digest_large_strings(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_LOGGED_STRING => {
            *v = json!({ "sha256": hex::encode(Sha256::digest(s.as_bytes())), "bytes": s.len() });
        }
        Value::Array(items) => items.iter_mut().for_each(digest_large_strings),
        Value::Object(map) => map.values_mut().for_each(digest_large_strings),
        _ => {}
    }
}

fn parse_args(args: RawArgs<'_>, max_bytes: usize) -> Result<Value, GateError> {
    let too_big = || {
        GateError::new(
            ErrorCode::ValidationFailed,
            Stage::Validate,
            format!("arguments are larger than {max_bytes} bytes"),
        )
    };
    match args {
        RawArgs::Json(v) => {
            // Serialised size is the honest measure of a parsed document.
            if serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX) > max_bytes {
                return Err(too_big());
            }
            Ok(v.clone())
        }
        RawArgs::Text(text) => {
            if text.len() > max_bytes {
                return Err(too_big());
            }
            let text = if text.trim().is_empty() { "{}" } else { text };
            serde_json::from_str(text).map_err(|e| {
                GateError::new(
                    ErrorCode::ValidationFailed,
                    Stage::Validate,
                    format!("arguments are not valid JSON: {e}"),
                )
            })
        }
    }
}

fn internal(stage: Stage, detail: &dyn std::fmt::Display) -> GateError {
    tracing::error!(stage = stage.as_str(), error = %detail, "internal failure in the gate");
    GateError::new(
        ErrorCode::Internal,
        stage,
        "internal error; see the daemon log",
    )
}

fn sha256_json(v: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(v).unwrap_or_default()))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
