//! `GET /ws`: a WebSocket carrying chat turns, their events and approval requests.
//!
//! Client messages: `{"type":"chat","text":..,"session":..?}`, `{"type":"cancel"}`,
//! `{"type":"approval","id":..,"decision":"approve"|"session"|"deny","steps":"1-3"?}`.
//! Server messages: `session`, `delta`, `tool_call`, `tool_result`, `done`, `error`,
//! `approval_error` (an answer that was refused; the turn goes on),
//! `cancelled`, `approval_request`, `approval_resolved`, each with a `type` field.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use carapace_agent::AgentEvent;
use carapace_gate::GateEvent;
use carapace_types::{Principal, SessionId};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::{ApiError, AppState, Authenticated, api};

const MAX_MESSAGE_BYTES: usize = 256 * 1024;

pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        // A plain request to /ws gets a typed error like any other bad request.
        Err(rejection) => {
            return ApiError::new(rejection.status(), "BAD_REQUEST", rejection.body_text())
                .into_response();
        }
    };
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(state, principal, socket))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Chat {
        text: String,
        #[serde(default)]
        session: Option<String>,
    },
    Cancel,
    Approval {
        id: String,
        decision: api::Decision,
        #[serde(default)]
        steps: Option<String>,
    },
}

async fn connection(state: Arc<AppState>, principal: Principal, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        while let Some(v) = out_rx.recv().await {
            if sink
                .send(Message::Text(v.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });

    // Approval requests go to every connected owner.
    let mut gate_events = state.gate.subscribe();
    let forward_gate = {
        let out = out_tx.clone();
        tokio::spawn(async move {
            loop {
                match gate_events.recv().await {
                    Ok(GateEvent::ApprovalRequested(info)) => {
                        let mut v = api::approval_json(&info);
                        v["type"] = json!("approval_request");
                        if out.send(v).is_err() {
                            break;
                        }
                    }
                    Ok(GateEvent::ApprovalResolved { id, approved }) => {
                        let _ = out.send(
                            json!({ "type": "approval_resolved", "id": id, "approved": approved }),
                        );
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };

    let mut turn: Option<JoinHandle<()>> = None;
    // Whether a turn runs. Cleared before the turn's last message is sent, so a client
    // that answers `done` at once with its next message never finds the turn busy.
    let running = Arc::new(AtomicBool::new(false));
    while let Some(Ok(msg)) = source.next().await {
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Close(_) => break,
            Message::Binary(_) => {
                let _ = out_tx.send(error_json(
                    "BAD_REQUEST",
                    "binary messages are not supported",
                ));
                continue;
            }
            _ => continue,
        };
        let parsed: ClientMessage = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                let _ = out_tx.send(error_json("BAD_REQUEST", &format!("bad message: {e}")));
                continue;
            }
        };
        match parsed {
            ClientMessage::Chat { text, session } => {
                if running.load(Ordering::SeqCst) {
                    let _ = out_tx.send(error_json(
                        "BUSY",
                        "a turn is already running on this connection; send cancel first",
                    ));
                    continue;
                }
                running.store(true, Ordering::SeqCst);
                let (state, principal, out, running) = (
                    state.clone(),
                    principal.clone(),
                    out_tx.clone(),
                    running.clone(),
                );
                turn = Some(tokio::spawn(async move {
                    let last = run_chat(state, principal, session, text, out.clone()).await;
                    running.store(false, Ordering::SeqCst);
                    let _ = out.send(last);
                }));
            }
            ClientMessage::Cancel => {
                if let Some(t) = turn.take() {
                    t.abort();
                    running.store(false, Ordering::SeqCst);
                    let _ = out_tx.send(json!({ "type": "cancelled" }));
                }
            }
            ClientMessage::Approval {
                id,
                decision,
                steps,
            } => {
                // Not `error`: the turn goes on; only this answer was refused (answered
                // elsewhere, expired, or not understood).
                if let Err(e) = api::decide(&state, &principal, &id, decision, steps.as_deref()) {
                    let mut body = with_type(e.body(), "approval_error");
                    body["id"] = json!(id);
                    let _ = out_tx.send(body);
                }
            }
        }
    }
    // The client went away: cancel its turn and stop forwarding.
    if let Some(t) = turn {
        t.abort();
    }
    forward_gate.abort();
    drop(out_tx);
    let _ = writer.await;
}

/// Runs one chat turn, sending its events to `out`; returns its last message (`done` or
/// `error`) for the caller to send once the connection counts the turn as over.
async fn run_chat(
    state: Arc<AppState>,
    principal: Principal,
    session: Option<String>,
    text: String,
    out: mpsc::UnboundedSender<Value>,
) -> Value {
    let session = match session {
        Some(id) => {
            let id = SessionId::new(id);
            match state.store.session(&id) {
                Ok(Some(_)) => id,
                Ok(None) => return error_json("NOT_FOUND", "no such session"),
                Err(e) => return with_type(ApiError::internal(e).body(), "error"),
            }
        }
        None => match state.new_session("chat") {
            Ok(id) => id,
            Err(e) => return with_type(e.body(), "error"),
        },
    };
    let _ = out.send(json!({ "type": "session", "session": session.as_str() }));
    if text.trim().is_empty() {
        return error_json("BAD_REQUEST", "text must not be empty");
    }
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let forward = {
        let out = out.clone();
        let sid = session.as_str().to_string();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let v = match event {
                    AgentEvent::TextDelta(d) => {
                        json!({ "type": "delta", "session": sid, "text": d })
                    }
                    AgentEvent::ToolCall {
                        id,
                        name,
                        arguments,
                    } => {
                        let args: String = arguments.chars().take(2000).collect();
                        json!({ "type": "tool_call", "session": sid, "id": id, "name": name, "arguments": args })
                    }
                    AgentEvent::ToolResult { id, name, ok, code } => {
                        json!({ "type": "tool_result", "session": sid, "id": id, "name": name, "ok": ok, "code": code })
                    }
                    AgentEvent::Retrying {
                        model,
                        attempt,
                        wait_ms,
                        reason,
                    } => {
                        json!({ "type": "retrying", "session": sid, "model": model, "attempt": attempt, "wait_ms": wait_ms, "reason": reason })
                    }
                    AgentEvent::ModelSwitched { from, to, reason } => {
                        json!({ "type": "model_switched", "session": sid, "from": from, "to": to, "reason": reason })
                    }
                };
                let _ = out.send(v);
            }
        })
    };
    let result = state
        .run_turn(&principal, &session, &text, Some(events_tx))
        .await;
    let _ = forward.await;
    match result {
        Ok(outcome) => {
            let mut done = json!({
                "type": "done",
                "session": session.as_str(),
                "text": outcome.text,
                "steps": outcome.steps,
                "tool_calls": outcome.tool_calls,
            });
            // Where the session stands now, so a front end can show it after every turn.
            if let Ok(Some(s)) = state.store.session(&session) {
                done["label"] = api::label_json(s.label);
            }
            if let Ok(p) = state.gate.policy_status(&session) {
                done["friction"] = json!(p.level.as_str());
                done["exposure_score"] = json!(p.score);
            }
            done
        }
        Err(e) => with_type(e.body(), "error"),
    }
}

fn error_json(code: &str, message: &str) -> Value {
    json!({ "type": "error", "error": { "code": code, "message": message } })
}

fn with_type(mut body: Value, kind: &str) -> Value {
    body["type"] = json!(kind);
    body
}
