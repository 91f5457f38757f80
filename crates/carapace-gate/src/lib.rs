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
mod exec;
mod limiter;
mod net;
#[cfg(test)]
mod tests;

pub use approvals::{ApprovalDecisionError, ApprovalInfo};
pub use carapace_egress::{Egress, EgressConfig, EgressError, Place, check_host_list};
pub use carapace_vault::{Scrubber, SharedScrubber};
pub use catalog::ToolSpec;
pub use exec::ExecSetup;
pub use net::{InjectRule, NetSetup, SecretSource};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carapace_fs::Workspace;
use carapace_policy::{Policy, PolicyRequest};
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

/// Every tool the Gate can offer; configuration grants a subset.
pub const KNOWN_TOOLS: &[&str] = &[
    "read_file",
    "list_dir",
    "write_file",
    "search_files",
    "exec",
    "web_fetch",
    "http_request",
];

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
    pub granted_tools: Vec<String>,
}

impl Default for GateConfig {
    fn default() -> GateConfig {
        GateConfig {
            tool_timeout: Duration::from_secs(30),
            approval_timeout: Duration::from_secs(300),
            rate_per_minute: 120,
            max_args_bytes: 256 * 1024,
            granted_tools: builtin::NAMES.iter().map(|s| s.to_string()).collect(),
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
    pub policy: Box<dyn Policy>,
    /// Scrubs known secrets and credential-shaped strings from results and audit records.
    pub scrubber: SharedScrubber,
    /// Limits and grants.
    pub config: GateConfig,
    /// The sandbox of the `exec` tool; without it, `exec` does not exist.
    pub exec: Option<ExecSetup>,
    /// The egress client and secrets of the network tools; without it, they do not exist.
    pub net: Option<NetSetup>,
}

/// Why the Gate could not be built.
#[derive(Debug)]
pub enum GateSetupError {
    /// The workspace directory could not be opened.
    Workspace(carapace_fs::FsError),
}

impl std::fmt::Display for GateSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateSetupError::Workspace(e) => write!(f, "cannot open the workspace: {e}"),
        }
    }
}

impl std::error::Error for GateSetupError {}

/// Something the owner should see as it happens (sent to the CLI, web UI and WebSocket).
#[derive(Clone, Debug)]
pub enum GateEvent {
    /// A call waits for the owner's approval.
    ApprovalRequested(ApprovalInfo),
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
    policy: Box<dyn Policy>,
    scrubber: SharedScrubber,
    limiter: RateLimiter,
    approvals: Approvals,
    workspace: Arc<Workspace>,
    net: Option<Arc<net::Net>>,
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
        catalog.retain(|name| deps.config.granted_tools.iter().any(|g| g == name));
        let (events, _) = broadcast::channel(256);
        let limiter = RateLimiter::new(deps.config.rate_per_minute);
        Ok(Gate {
            inner: Arc::new(Inner {
                store: deps.store,
                audit_key: deps.audit_key,
                catalog,
                policy: deps.policy,
                scrubber: deps.scrubber,
                limiter,
                approvals: Approvals::new(events.clone()),
                workspace: Arc::new(workspace),
                net,
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

    /// The tools granted to sessions, as offered to the model.
    pub fn tool_specs(&self) -> Vec<ToolSpec> {
        self.inner.catalog.specs()
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
        self.inner.approvals.decide(principal, id, approve)?;
        let _ = self.inner.events.send(GateEvent::ApprovalResolved {
            id: id.to_string(),
            approved: approve,
        });
        Ok(())
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
        let Some(tool) = inner.catalog.get(req.tool) else {
            return Err(GateError::new(
                ErrorCode::UnknownTool,
                Stage::Resolve,
                format!("no tool named `{}` is available", truncate(req.tool, 64)),
            ));
        };
        audit.set("effect", json!(tool.effect.as_str()));
        // Charge the rate limiter before validation, so malformed and denied attempts
        // count too; the verdict is applied at the authorize stage.
        let rate = inner
            .limiter
            .charge(&req.principal.audit_name(), tool.name, Instant::now());

        // validate
        let args = parse_args(req.args, inner.config.max_args_bytes)?;
        let scrubber = inner.scrubber.current();
        audit.set_args(&args, &scrubber);
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

        // policy
        let decision = inner.policy.decide(&PolicyRequest {
            principal: req.principal,
            tool: tool.name,
            effect: tool.effect,
            session_label: session.label,
        });
        // Secrets the call would carry; a first use in the session needs the owner, so an
        // allow becomes an ask (never the other way round).
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
                self.approve(req, tool, &args, &rule, &reason, audit)
                    .await?;
                if let Some(net) = &inner.net {
                    net.approved(req.session, &secret_plan.needs_approval);
                }
            }
        }

        // Write-ahead: a call with a side effect is on record before it happens. A read
        // has none, so its decision is recorded once, with its result.
        if tool.effect != EffectClass::Read {
            self.audit_outcome(audit, "allowed", None)?;
        }
        audit.executed = true;

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
                tracing::error!(tool = tool.name, panic = %detail, "tool executor panicked");
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
        let mut label = raw.label;
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
        if let Err(e) = inner
            .store
            .raise_session_label(req.session, label, now_ms())
        {
            return Err(internal(Stage::Sanitize, &e));
        }
        Ok(ToolOutput {
            content,
            label,
            source: raw.source,
        })
    }

    async fn approve(
        &self,
        req: &CallRequest<'_>,
        tool: &ToolDef,
        args: &Value,
        rule: &str,
        reason: &str,
        audit: &mut AuditDraft,
    ) -> Result<(), GateError> {
        let inner = &*self.inner;
        let mut preview = approval_preview(args);
        inner.scrubber.current().scrub_string(&mut preview);
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
        };
        let pending = inner.approvals.open(info.clone());
        audit.set("approval_id", json!(info.id));
        self.audit_outcome(audit, "asked", None)?;
        let _ = inner
            .events
            .send(GateEvent::ApprovalRequested(info.clone()));

        let answer = tokio::time::timeout(inner.config.approval_timeout, pending.wait()).await;
        match answer {
            Ok(Some(true)) => {
                self.audit_outcome(audit, "approved", None)?;
                Ok(())
            }
            Ok(Some(false)) | Ok(None) => Err(GateError::new(
                ErrorCode::ConfirmationDenied,
                Stage::Approve,
                format!("the owner declined {}", tool.name),
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
    fn set_args(&mut self, args: &Value, scrubber: &Scrubber) {
        self.set("args_sha256", json!(sha256_json(args)));
        if depth(args) > MAX_LOGGED_DEPTH {
            // The digest stands for it; the log must stay writable whatever the model sends.
            self.set("args", json!({ "omitted": "nested too deeply" }));
            return;
        }
        let mut shown = args.clone();
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
fn approval_preview(args: &Value) -> String {
    const MAX_VALUE_CHARS: usize = 400;
    let show = |v: &Value| -> String {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let total = text.chars().count();
        if total <= MAX_VALUE_CHARS {
            return match v {
                Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            };
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
