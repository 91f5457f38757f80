//! The gateway's front doors over HTTP: the JSON API, the OpenAI-compatible API and the
//! WebSocket, built as one axum [`Router`] value.
//!
//! This crate owns the wire: it alone knows the JSON shapes clients see. It constructs
//! the caller's identity from the connection (the bearer token) and never from a field
//! of the payload; it refuses requests whose `Host` is not a loopback name (DNS
//! rebinding); it answers with typed errors and never with an internal detail. It does
//! no side effect of its own: turns go to the agent, tool calls to the Gate.

pub mod agent_socket;
mod api;
mod error;
mod openai;
pub mod passthrough;
mod tools;
mod ws;

pub use api::usage_report;
pub use error::ApiError;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use carapace_agent::{Agent, AgentError, AgentEvent, TurnOutcome};
use carapace_gate::Gate;
use carapace_store::{AuditKey, Store};
use carapace_types::{FrontDoor, Principal, Secret, SessionId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// Everything the server is built from.
pub struct ServerDeps {
    /// State.
    pub store: Arc<Store>,
    /// The Gate (for approvals and audit records).
    pub gate: Gate,
    /// The agent; `None` when no model provider is configured.
    pub agent: Option<Agent>,
    /// What to tell a user when `agent` is `None`.
    pub provider_hint: String,
    /// The bearer token every request but `/health` must carry.
    pub token: Secret<String>,
    /// The audit key, for `GET /api/audit/verify`.
    pub audit_key: Arc<AuditKey>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The plain-English rules as the daemon loaded them (text, name, compiled rule or
    /// why not), for `GET /api/rules`.
    pub rules: serde_json::Value,
}

/// Shared state of all handlers.
pub struct AppState {
    store: Arc<Store>,
    gate: Gate,
    agent: Option<Agent>,
    provider_hint: String,
    token_digest: [u8; 32],
    /// The token's bytes, only as the key of the health proof.
    token_key: Vec<u8>,
    audit_key: Arc<AuditKey>,
    max_body_bytes: usize,
    rules: serde_json::Value,
    turn_locks: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    auth_failures: Mutex<AuthFailures>,
}

/// Failed logins are audited at most once per [`AuthFailures::EVERY`], each record
/// counting the failures it stands for: an unauthenticated client (or a web page) must
/// not be able to grow the audit log at the speed it can send requests.
#[derive(Default)]
struct AuthFailures {
    last: Option<std::time::Instant>,
    unrecorded: u64,
}

impl AuthFailures {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
}

impl AppState {
    /// Builds the shared state.
    pub fn new(deps: ServerDeps) -> Arc<AppState> {
        let token_digest = Sha256::digest(deps.token.expose().as_bytes()).into();
        Arc::new(AppState {
            store: deps.store,
            gate: deps.gate,
            agent: deps.agent,
            provider_hint: deps.provider_hint,
            token_digest,
            token_key: deps.token.expose().as_bytes().to_vec(),
            audit_key: deps.audit_key,
            max_body_bytes: deps.max_body_bytes,
            rules: deps.rules,
            turn_locks: Mutex::new(HashMap::new()),
            auth_failures: Mutex::new(AuthFailures::default()),
        })
    }

    fn agent(&self) -> Result<&Agent, ApiError> {
        self.agent
            .as_ref()
            .ok_or_else(|| ApiError::no_provider(&self.provider_hint))
    }

    fn new_session(&self, title: &str) -> Result<SessionId, ApiError> {
        self.new_scoped_session(title, None)
    }

    /// A session whose network tools reach only `egress_hosts` (within the config's
    /// lists), fixed for its life.
    fn new_scoped_session(
        &self,
        title: &str,
        egress_hosts: Option<&[String]>,
    ) -> Result<SessionId, ApiError> {
        let id = SessionId::new(format!("s_{}", random_hex(8)));
        self.store
            .create_scoped_session(&id, title, carapace_gate::now_ms(), egress_hosts)
            .map_err(ApiError::internal)?;
        let _ = self.gate.record(
            "session_created",
            serde_json::json!({ "session": id.as_str(), "egress_hosts": egress_hosts }),
        );
        Ok(id)
    }

    /// Runs one agent turn; turns of one session run one at a time so their messages
    /// never interleave.
    async fn run_turn(
        &self,
        principal: &Principal,
        session: &SessionId,
        text: &str,
        events: Option<mpsc::UnboundedSender<AgentEvent>>,
    ) -> Result<TurnOutcome, ApiError> {
        let agent = self.agent()?;
        let lock = {
            let mut locks = self.turn_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(session.clone()).or_default().clone()
        };
        let _turn = lock.lock().await;
        agent
            .run_turn(principal, session, text, events)
            .await
            .map_err(agent_error)
    }
}

/// An agent failure as the API reports it.
pub(crate) fn agent_error(e: AgentError) -> ApiError {
    match e {
        AgentError::Provider(p) => ApiError::model(&p),
        AgentError::NoSession => ApiError::not_found("no such session"),
        AgentError::TooManySteps(n) => ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "TOO_MANY_STEPS",
            format!("the model made {n} steps without a final answer; stopped"),
        ),
        AgentError::Store(s) => ApiError::internal(s),
        AgentError::UnknownModel(why) => {
            ApiError::new(axum::http::StatusCode::BAD_REQUEST, "UNKNOWN_MODEL", why)
        }
        e @ AgentError::BudgetReached { .. } => ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "BUDGET_REACHED",
            e.to_string(),
        ),
    }
}

/// The whole HTTP surface as a value, so tests can call it without binding a socket.
pub fn router(state: Arc<AppState>) -> Router {
    let authed = Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/api/status", get(api::status))
        .route("/api/usage", get(api::usage))
        .route(
            "/api/sessions",
            get(api::list_sessions).post(api::create_session),
        )
        .route("/api/sessions/{id}", get(api::get_session))
        .route("/api/sessions/{id}/model", put(api::set_session_model))
        .route("/api/sessions/{id}/reset", post(api::reset_session))
        .route("/api/sessions/{id}/tools", get(api::session_tools))
        .route("/api/sessions/{id}/tools/call", post(api::call_tool))
        .route(
            "/api/sessions/{id}/messages",
            get(api::list_messages).post(api::post_message),
        )
        .route("/api/rules", get(api::rules))
        .route("/api/approvals", get(api::list_approvals))
        .route("/api/approvals/{id}", post(api::decide_approval))
        .route("/api/mcp", get(api::mcp_servers))
        .route("/api/mcp/{name}/tools", get(api::mcp_tools))
        .route("/api/mcp/{name}/test", post(api::mcp_test))
        .route("/api/dlq", get(api::dead_letters))
        .route("/api/dlq/{id}", get(api::dead_letter))
        .route("/api/dlq/{id}/release", post(api::release_dead_letter))
        .route("/api/dlq/{id}/discard", post(api::discard_dead_letter))
        .route("/api/audit", get(api::audit_tail))
        .route("/api/audit/verify", get(api::audit_verify))
        .route("/ws", get(ws::upgrade))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .merge(authed)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn(require_loopback_host))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct HealthQuery {
    challenge: Option<String>,
}

/// `GET /health`, no auth. With `?challenge=<hex>` the answer also carries
/// `proof = HMAC-SHA256(token, "carapace-health-v1" || challenge)`, so a client can check
/// that it talks to the daemon that holds the token *before* it sends the token: any
/// local process could otherwise listen on the port and collect it.
async fn health(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::Json<serde_json::Value> {
    let mut body = serde_json::json!({ "status": "ok" });
    if let Ok(axum::extract::Query(HealthQuery { challenge: Some(c) })) = query
        && c.len() <= 128
        && c.bytes().all(|b| b.is_ascii_hexdigit())
    {
        body["proof"] = serde_json::json!(health_proof(&state.token_key, &c));
    }
    axum::Json(body)
}

/// The proof of [`health`]: hex of HMAC-SHA256 keyed with the token.
pub fn health_proof(token: &[u8], challenge: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(b"carapace-health-v1");
    mac.update(challenge.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The identity a request proved; handlers take it from the request extensions, where
/// only [`require_token`] puts it.
#[derive(Clone)]
struct Authenticated(Principal);

async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let door = if req.uri().path().starts_with("/v1/") {
        FrontDoor::OpenAi
    } else {
        FrontDoor::Api
    };
    match bearer(req.headers()) {
        Some(given) => {
            let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            if bool::from(digest.ct_eq(&state.token_digest)) {
                req.extensions_mut()
                    .insert(Authenticated(Principal::owner(door)));
                return next.run(req).await;
            }
            audit_auth_failure(&state, &req, "wrong token");
        }
        None => audit_auth_failure(&state, &req, "missing token"),
    }
    axum::response::IntoResponse::into_response(ApiError::unauthorized())
}

fn audit_auth_failure(state: &AppState, req: &Request, reason: &str) {
    let count = {
        let mut f = state
            .auth_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        f.unrecorded += 1;
        if f.last
            .is_some_and(|last| now.duration_since(last) < AuthFailures::EVERY)
        {
            return;
        }
        f.last = Some(now);
        std::mem::take(&mut f.unrecorded)
    };
    let path: String = req.uri().path().chars().take(200).collect();
    // `count` includes this failure and those not recorded since the last record.
    let fields = serde_json::json!({ "path": path, "reason": reason, "count": count });
    if let Err(e) = state.gate.record("auth_failed", fields) {
        tracing::error!(error = %e, "could not audit an authentication failure");
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Refuses requests addressed to any name but a loopback one: a web page that
/// rebinds its own DNS name to 127.0.0.1 still sends its own name as `Host`.
async fn require_loopback_host(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        next.run(req).await
    } else {
        axum::response::IntoResponse::into_response(ApiError::new(
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "BAD_HOST",
            "the Host header must be a loopback name (localhost, 127.0.0.1 or [::1])",
        ))
    }
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || valid_port(port) => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_port(port: &str) -> bool {
    port.strip_prefix(':')
        .unwrap_or(port)
        .parse::<u16>()
        .is_ok()
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "localhost",
            "localhost:8321",
            "127.0.0.1:1",
            "127.8.9.10",
            "[::1]:8321",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.com",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "10.0.0.1:8321",
            "[::2]:80",
            "localhost:notaport",
            "[::1]x",
            "0.0.0.0:8321",
            "evil.com:8321",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
