//! `/api/...`: sessions, messages, approvals and the audit log as JSON.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use carapace_gate::{Answer, ApprovalDecisionError, ApprovalInfo, PolicyStatus};
use carapace_store::{AuditEntry, MessageRecord, SessionRecord, StoreError, UsageTotal, utc_day};
use carapace_types::{ErrorCode, GateError, Label, SessionId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, AppState, Authenticated};

type ApiResult = Result<Json<Value>, ApiError>;

pub(crate) fn label_json(label: Label) -> Value {
    json!({ "integrity": label.integrity.as_str(), "confidentiality": label.confidentiality.as_str() })
}

pub(crate) fn session_json(s: &SessionRecord) -> Value {
    json!({
        "id": s.id.as_str(),
        "title": s.title,
        "created_ms": s.created_ms,
        "updated_ms": s.updated_ms,
        "label": label_json(s.label),
        "egress_hosts": s.egress_hosts,
        "model": s.model,
        "seen": s.seen,
        "exposure": s.exposure,
    })
}

fn policy_json(p: &PolicyStatus) -> Value {
    json!({
        "exposure_score": p.score,
        "friction": p.level.as_str(),
        "ask_above": p.ask_above,
        "deny_above": p.deny_above,
        "grants": p.grants.iter().map(|g| json!({
            "id": g.id,
            "covers": g.text,
            "remaining": g.remaining,
            "expires_ms": g.expires_ms,
            "live": g.live,
        })).collect::<Vec<_>>(),
    })
}

fn message_json(m: &MessageRecord) -> Value {
    json!({
        "seq": m.seq,
        "role": m.role.as_str(),
        "content": m.content,
        "tool_calls": m.tool_calls,
        "tool_call_id": m.tool_call_id,
        "source": m.source.as_string(),
        "label": label_json(m.label),
        "created_ms": m.created_ms,
    })
}

pub(crate) fn approval_json(a: &ApprovalInfo) -> Value {
    json!({
        "id": a.id,
        "session": a.session.as_str(),
        "tool": a.tool,
        "args": a.args_preview,
        "reason": a.reason,
        "rule": a.rule,
        "created_ms": a.created_ms,
        "expires_ms": a.expires_ms,
        "session_scope": a.session_scope,
        "plan": a.plan.as_ref().map(|p| json!({
            "goal": p.goal,
            "steps": p.steps.iter().map(|s| json!({
                "number": s.number,
                "covers": s.text,
                "why": s.why,
                "decision": s.decision,
                "rule": s.rule,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({ "seq": e.seq, "prev_hash": e.prev_hash, "hash": e.hash, "record": e.record })
}

pub(crate) async fn status(State(state): State<Arc<AppState>>) -> ApiResult {
    let mut body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "provider_configured": state.agent.is_some(),
        "pending_approvals": state.gate.pending_approvals().len(),
        "tools": state.gate.tool_specs().iter().map(|t| json!({ "name": t.name, "effect": t.effect.as_str() })).collect::<Vec<_>>(),
    });
    match &state.agent {
        Some(agent) => body["model"] = json!(agent.preferred_model()),
        None => body["provider_hint"] = json!(state.provider_hint),
    }
    Ok(Json(body))
}

pub(crate) async fn list_sessions(State(state): State<Arc<AppState>>) -> ApiResult {
    let sessions = state.store.list_sessions(200).map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "sessions": sessions.iter().map(session_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSession {
    #[serde(default)]
    title: Option<String>,
    /// The session's own list of hosts its network tools may reach (allowlist syntax);
    /// it narrows the config's lists, never widens them.
    #[serde(default)]
    egress_hosts: Option<Vec<String>>,
}

/// The most entries a session's host list may have.
const MAX_SESSION_HOSTS: usize = 100;

pub(crate) async fn create_session(
    State(state): State<Arc<AppState>>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body?;
    // The body is optional: an empty POST creates an untitled session.
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSession {
            title: None,
            egress_hosts: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if let Some(hosts) = &parsed.egress_hosts {
        if hosts.len() > MAX_SESSION_HOSTS {
            return Err(ApiError::bad_request(format!(
                "egress_hosts has {} entries; at most {MAX_SESSION_HOSTS} are allowed",
                hosts.len()
            )));
        }
        carapace_gate::check_host_list(hosts)
            .map_err(|e| ApiError::bad_request(format!("egress_hosts: {e}")))?;
    }
    let title: String = parsed.title.unwrap_or_default().chars().take(200).collect();
    let id = state.new_scoped_session(&title, parsed.egress_hosts.as_deref())?;
    let record = state
        .store
        .session(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("session vanished"))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "session": session_json(&record) })),
    ))
}

fn find_session(state: &AppState, id: &str) -> Result<SessionRecord, ApiError> {
    if id.len() > 100 {
        return Err(ApiError::not_found("no such session"));
    }
    match state.store.session(&SessionId::new(id)) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(ApiError::not_found("no such session")),
        Err(e) => Err(ApiError::internal(e)),
    }
}

pub(crate) async fn get_session(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let s = find_session(&state, &id)?;
    let usage = state
        .store
        .usage_of_session(&s.id)
        .map_err(ApiError::internal)?;
    let policy = state.gate.policy_status(&s.id).map_err(ApiError::from)?;
    Ok(Json(json!({
        "session": session_json(&s),
        "usage": usage_json(&usage),
        "policy": policy_json(&policy),
    })))
}

/// `POST /api/sessions/{id}/reset`: the owner resets the session's exposure and grants.
pub(crate) async fn reset_session(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let s = find_session(&state, &id)?;
    state
        .gate
        .reset_session(&principal, &s.id)
        .map_err(ApiError::from)?;
    let policy = state.gate.policy_status(&s.id).map_err(ApiError::from)?;
    Ok(Json(
        json!({ "session": s.id.as_str(), "policy": policy_json(&policy) }),
    ))
}

fn usage_json(t: &UsageTotal) -> Value {
    json!({
        "calls": t.calls,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "cost_usd": t.cost_micros as f64 / 1e6,
        "unpriced_calls": t.unpriced_calls,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetModel {
    /// `provider/model` or an alias; `null` goes back to the configured model.
    model: Option<String>,
}

/// Switches a session to another model (`/model` in the chat).
pub(crate) async fn set_session_model(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<SetModel>, JsonRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let s = find_session(&state, &id)?;
    if body
        .model
        .as_ref()
        .is_some_and(|m| m.trim().is_empty() || m.len() > 300)
    {
        return Err(ApiError::bad_request("model must be 1 to 300 characters"));
    }
    let agent = state.agent()?;
    let model = agent
        .set_session_model(&s.id, body.model.as_deref())
        .map_err(crate::agent_error)?;
    Ok(Json(json!({ "session": s.id.as_str(), "model": model })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    /// How many UTC days back, today included.
    #[serde(default = "default_usage_days")]
    days: u32,
}

fn default_usage_days() -> u32 {
    7
}

/// Token counts and cost: today's totals and budget, and per day and model.
pub(crate) async fn usage(
    State(state): State<Arc<AppState>>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !(1..=366).contains(&q.days) {
        return Err(ApiError::bad_request("days must be between 1 and 366"));
    }
    let budget = state
        .agent
        .as_ref()
        .and_then(|a| a.accounting().daily_budget_micros);
    usage_report(&state.store, q.days, budget, carapace_gate::now_ms())
        .map(Json)
        .map_err(ApiError::internal)
}

/// Usage as `GET /api/usage` answers it: today's totals and the daily budget, and per
/// day and model for the last `days` UTC days (today included). `cara usage` prints it.
pub fn usage_report(
    store: &carapace_store::Store,
    days: u32,
    daily_budget_micros: Option<u64>,
    now_ms: i64,
) -> Result<Value, StoreError> {
    let today = utc_day(now_ms);
    let first = utc_day(now_ms - i64::from(days.max(1) - 1) * 86_400_000);
    let total = store.usage_of_day(&today)?;
    let rows = store.usage_since(&first)?;
    Ok(json!({
        "today": { "day": today, "usage": usage_json(&total) },
        "daily_budget_usd": daily_budget_micros.map(|b| b as f64 / 1e6),
        "since": first,
        "days": rows.iter().map(|r| json!({
            "day": r.day, "model": r.model, "usage": usage_json(&r.total),
        })).collect::<Vec<_>>(),
    }))
}

pub(crate) async fn list_messages(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let s = find_session(&state, &id)?;
    let messages = state.store.messages(&s.id).map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "messages": messages.iter().map(message_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostMessage {
    text: String,
}

pub(crate) async fn post_message(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<PostMessage>, JsonRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Json(body) = body?;
    if body.text.trim().is_empty() {
        return Err(ApiError::bad_request("text must not be empty"));
    }
    let s = find_session(&state, &id)?;
    let outcome = state.run_turn(&principal, &s.id, &body.text, None).await?;
    Ok(Json(json!({
        "session": s.id.as_str(),
        "text": outcome.text,
        "steps": outcome.steps,
        "tool_calls": outcome.tool_calls,
    })))
}

/// `GET /api/sessions/{id}/tools`: the tools the Gate offers the session, as the agent
/// socket's `tools.list` lists them (closed schemas, effect classes).
pub(crate) async fn session_tools(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    find_session(&state, &id)?;
    Ok(Json(crate::tools::list(&state.gate)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolCall {
    name: String,
    /// The tool's arguments; absent or null is `{}`.
    #[serde(default)]
    arguments: Option<Value>,
}

/// `POST /api/sessions/{id}/tools/call`: one Gate call as the authenticated owner in that
/// session, with the session's labels, plans, policy, approvals and audit. The result is
/// the agent socket's `tools.call` result (`{content, label, source}`); a refusal is the
/// Gate's typed error (see [`gate_refusal`]).
pub(crate) async fn call_tool(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ToolCall>, JsonRejection>,
) -> Result<Json<Value>, Response> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()).into_response())?;
    let Json(body) = body.map_err(|e| ApiError::from(e).into_response())?;
    let s = find_session(&state, &id).map_err(IntoResponse::into_response)?;
    let args = body.arguments.unwrap_or_else(|| json!({}));
    let call_id = format!("api_{}", crate::random_hex(8));
    crate::tools::call(&state.gate, &principal, &s.id, &call_id, &body.name, &args)
        .await
        .map(Json)
        .map_err(gate_refusal)
}

/// A Gate refusal over HTTP: the API's error shape `{"error": {"code", "message",
/// "type"}}` holding the Gate's typed error (`stage`, `retriable`, `rule`, `field`, ...),
/// with a status for its code: the caller's mistake 400, a refusal 403, too many calls
/// 429 (with `Retry-After`), the tool's own failure 502 or 504, Carapace's 500.
fn gate_refusal(e: GateError) -> Response {
    let status = match e.code {
        ErrorCode::UnknownTool | ErrorCode::ValidationFailed => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized
        | ErrorCode::PolicyDenied
        | ErrorCode::ConfirmationDenied
        | ErrorCode::ConfirmationTimeout => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ToolTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::ToolError => StatusCode::BAD_GATEWAY,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut error = e.to_json();
    error["type"] = json!(e.code.as_str().to_ascii_lowercase());
    let mut response = (status, Json(json!({ "error": error }))).into_response();
    if let Some(after) = e.retry_after {
        let secs = after.as_millis().div_ceil(1000).max(1);
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(secs as u64),
        );
    }
    response
}

/// `GET /api/rules`: the plain-English rules as loaded at start.
pub(crate) async fn rules(State(state): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(json!({ "rules": state.rules })))
}

pub(crate) async fn list_approvals(State(state): State<Arc<AppState>>) -> ApiResult {
    let pending = state.gate.pending_approvals();
    Ok(Json(
        json!({ "approvals": pending.iter().map(approval_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decide {
    decision: Decision,
    /// For a plan: the steps approved, like `1-3,5` (with `decision = "approve"`).
    #[serde(default)]
    steps: Option<String>,
}

/// `approve` (this call, or every step of a plan), `session` (this tool to these
/// destinations for the rest of the session) or `deny`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Decision {
    Approve,
    Session,
    Deny,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Session => "session",
            Decision::Deny => "deny",
        }
    }
}

pub(crate) async fn decide_approval(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<Decide>, JsonRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Json(body) = body?;
    decide(
        &state,
        &principal,
        &id,
        body.decision,
        body.steps.as_deref(),
    )?;
    let mut out = json!({ "id": id, "decision": body.decision.as_str() });
    if let Some(steps) = body.steps {
        out["steps"] = json!(steps);
    }
    Ok(Json(out))
}

pub(crate) fn decide(
    state: &AppState,
    principal: &carapace_types::Principal,
    id: &str,
    decision: Decision,
    steps: Option<&str>,
) -> Result<(), ApiError> {
    let answer = match (decision, steps) {
        (Decision::Deny, _) => Answer::Deny,
        (Decision::Session, None) => Answer::Session,
        (Decision::Approve, None) => Answer::Once,
        (Decision::Approve, Some(text)) => {
            let n = state
                .gate
                .pending_approvals()
                .into_iter()
                .find(|a| a.id == id)
                .ok_or_else(|| {
                    ApiError::not_found(
                        "no pending approval with that id (answered, expired or unknown)",
                    )
                })?
                .plan
                .map(|p| p.steps.len())
                .ok_or_else(|| {
                    ApiError::bad_request("this approval is for one call; steps are for plans")
                })?;
            Answer::Steps(carapace_gate::parse_step_ranges(text, n).map_err(ApiError::bad_request)?)
        }
        (Decision::Session, Some(_)) => {
            return Err(ApiError::bad_request("steps go with decision \"approve\""));
        }
    };
    state
        .gate
        .answer_approval(principal, id, answer)
        .map_err(|e| match e {
            ApprovalDecisionError::NotFound => ApiError::not_found(
                "no pending approval with that id (answered, expired or unknown)",
            ),
            ApprovalDecisionError::NotOwner => {
                ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", e.to_string())
            }
            ApprovalDecisionError::BadAnswer(why) => ApiError::bad_request(why),
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailQuery {
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    after: Option<u64>,
}

pub(crate) async fn audit_tail(
    State(state): State<Arc<AppState>>,
    query: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let n = q.n.unwrap_or(50).min(10_000);
    let entries = match q.after {
        Some(after) => state.store.audit_after(after, n),
        None => state.store.audit_tail(n),
    }
    .map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "entries": entries.iter().map(audit_json).collect::<Vec<_>>() }),
    ))
}

pub(crate) async fn audit_verify(State(state): State<Arc<AppState>>) -> ApiResult {
    match state.store.verify_audit(&state.audit_key) {
        Ok(report) => Ok(Json(
            json!({ "ok": true, "records": report.records, "head_hash": report.head_hash }),
        )),
        Err(StoreError::AuditBroken { seq, reason }) => {
            Ok(Json(json!({ "ok": false, "seq": seq, "reason": reason })))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize)]
pub(crate) struct DeadLetterQuery {
    #[serde(default)]
    all: bool,
}

fn dead_letter_json(l: &carapace_store::DeadLetter) -> Value {
    json!({
        "id": l.id,
        "created_ms": l.meta.created_ms,
        "session": l.meta.session.as_str(),
        "principal": l.meta.principal,
        "channel": l.meta.channel,
        "to": l.meta.recipient,
        "code": l.meta.code,
        "stage": l.meta.stage,
        "rule": l.meta.rule,
        "bytes": l.meta.bytes,
        "status": l.status.as_str(),
        "resolved_ms": l.resolved_ms,
        "resolved_by": l.resolved_by,
    })
}

/// `GET /api/dlq`: the dead-letter queue without the texts.
pub(crate) async fn dead_letters(
    State(state): State<Arc<AppState>>,
    Query(q): Query<DeadLetterQuery>,
) -> ApiResult {
    let letters = state
        .store
        .dead_letters(q.all)
        .map_err(ApiError::internal)?;
    let list: Vec<Value> = letters.iter().map(dead_letter_json).collect();
    Ok(Json(json!({ "dead_letters": list })))
}

/// `GET /api/dlq/{id}`: one dead letter with its text (the reading is audited).
pub(crate) async fn dead_letter(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (letter, text) = state
        .gate
        .dead_letter_text(&principal, &id)
        .map_err(dead_letter_error)?;
    let mut v = dead_letter_json(&letter);
    v["text"] = json!(text);
    Ok(Json(v))
}

/// `POST /api/dlq/{id}/release`: sends a held letter as the owner decided.
pub(crate) async fn release_dead_letter(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state
        .gate
        .release_dead_letter(&principal, &id)
        .await
        .map_err(dead_letter_error)?;
    Ok(Json(json!({ "released": true })))
}

/// `POST /api/dlq/{id}/discard`: throws a held letter away.
pub(crate) async fn discard_dead_letter(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let done = state
        .gate
        .discard_dead_letter(&principal, &id)
        .map_err(dead_letter_error)?;
    if !done {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "NOT_HELD",
            format!("{id} is not held (unknown, or released or discarded already)"),
        ));
    }
    Ok(Json(json!({ "discarded": true })))
}

/// A letter that is not there, or not held, is the caller's mistake (404/409), not a
/// Gate failure.
fn dead_letter_error(e: carapace_types::GateError) -> ApiError {
    if e.message == "no such dead letter" {
        return ApiError::not_found("no such dead letter");
    }
    if e.code == carapace_types::ErrorCode::ValidationFailed && e.message.contains(" already") {
        return ApiError::new(StatusCode::CONFLICT, "NOT_HELD", e.message);
    }
    ApiError::from(e)
}

/// `GET /api/mcp`: the MCP servers and their states.
pub(crate) async fn mcp_servers(State(state): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(state.gate.mcp_status()))
}

/// `GET /api/mcp/{name}/tools`: one server's tools, effect classes and why.
pub(crate) async fn mcp_tools(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = name.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state
        .gate
        .mcp_tools(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no MCP server of that name"))
}

/// `POST /api/mcp/{name}/test`: connects anew, lists the tools, reports what failed.
pub(crate) async fn mcp_test(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = name.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let v = state
        .gate
        .mcp_test(&name)
        .await
        .ok_or_else(|| ApiError::not_found("no MCP server of that name"))?;
    let _ = state.gate.record(
        "mcp_test",
        json!({ "principal": principal.audit_name(), "server": name, "ok": v["ok"] }),
    );
    Ok(Json(v))
}
