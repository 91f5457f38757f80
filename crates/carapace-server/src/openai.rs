//! The OpenAI-compatible endpoints: `GET /v1/models` and `POST /v1/chat/completions`.
//!
//! A request runs a full agent turn with Carapace's own tools behind the Gate. The
//! session is chosen by the `user` field (an existing session id, or any string, which
//! names a session of its own), or a new session when there is none. The server keeps
//! the history, so only the last user message of `messages` is new input.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderValue;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use carapace_agent::AgentEvent;
use carapace_types::SessionId;
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{ApiError, AppState, Authenticated, random_hex};

pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .agent
        .iter()
        .map(
            |a| json!({ "id": a.preferred_model(), "object": "model", "created": 0, "owned_by": "carapace" }),
        )
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// The fields Carapace reads. Other OpenAI parameters (temperature, top_p, ...) are
/// accepted and ignored, as OpenAI clients send them freely.
#[derive(Deserialize)]
pub(crate) struct ChatCompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InputMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct InputMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

fn last_user_text(messages: &[InputMessage]) -> Result<String, ApiError> {
    let msg = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .ok_or_else(|| ApiError::bad_request("messages must contain a user message"))?;
    let text = match &msg.content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => {
            return Err(ApiError::bad_request(
                "the user message content must be a string or an array of text parts",
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("the user message is empty"));
    }
    Ok(text)
}

fn choose_session(state: &AppState, user: Option<&str>) -> Result<SessionId, ApiError> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return state.new_session("openai");
    };
    if user.len() > 256 {
        return Err(ApiError::bad_request("user must be at most 256 bytes"));
    }
    let existing = SessionId::new(user);
    // Both kinds of id, so the `x-carapace-session` header can be sent back as `user`.
    if (user.starts_with("s_") || user.starts_with("u_"))
        && state
            .store
            .session(&existing)
            .map_err(ApiError::internal)?
            .is_some()
    {
        return Ok(existing);
    }
    // Any other string names a session of its own, derived so that it is stable.
    let id = SessionId::new(format!(
        "u_{}",
        &hex::encode(Sha256::digest(user.as_bytes()))[..24]
    ));
    if state
        .store
        .session(&id)
        .map_err(ApiError::internal)?
        .is_none()
    {
        let title: String = user.chars().take(100).collect();
        match state
            .store
            .create_session(&id, &title, carapace_gate::now_ms())
        {
            // Two first requests for the same `user` may race; the session exists either way.
            Ok(_) | Err(carapace_store::StoreError::SessionExists(_)) => {}
            Err(e) => return Err(ApiError::internal(e)),
        }
    }
    Ok(id)
}

pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(principal)): Extension<Authenticated>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let agent = state.agent()?;
    if let Some(model) = &req.model {
        // Carapace answers with its configured model; a different name is not an error,
        // so clients that insist on a model name still work.
        tracing::debug!(requested = %model, using = agent.preferred_model(), "model name from client");
    }
    let text = last_user_text(&req.messages)?;
    let session = choose_session(&state, req.user.as_deref())?;
    let id = format!("chatcmpl-{}", random_hex(12));
    let model = agent.preferred_model().to_string();
    let created = carapace_gate::now_ms() / 1000;

    if !req.stream {
        let outcome = state.run_turn(&principal, &session, &text, None).await?;
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": outcome.text },
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": outcome.usage.0,
                "completion_tokens": outcome.usage.1,
                "total_tokens": outcome.usage.0 + outcome.usage.1,
            },
        });
        let mut response = Json(body).into_response();
        set_session_header(&mut response, &session);
        return Ok(response);
    }

    // Streaming: the turn runs in a task owned by the response stream; when the client
    // goes away the stream is dropped and the guard aborts the turn, which drops the
    // upstream model request.
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    let turn = {
        let state = state.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let (events_tx, mut events_rx) = mpsc::unbounded_channel();
            let forward = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(event) = events_rx.recv().await {
                        if let AgentEvent::TextDelta(d) = event {
                            let _ = tx.send(Chunk::Delta(d));
                        }
                    }
                })
            };
            let result = state
                .run_turn(&principal, &session, &text, Some(events_tx))
                .await;
            let _ = forward.await;
            let _ = tx.send(match result {
                Ok(outcome) => Chunk::Finish(outcome.usage),
                Err(e) => Chunk::Error(e),
            });
        })
    };
    let meta = ChunkMeta { id, model, created };
    let mut queue = VecDeque::new();
    queue.push_back(
        meta.chunk(json!({ "role": "assistant", "content": "" }), None)
            .to_string(),
    );
    let state = StreamState {
        rx,
        _turn: AbortOnDrop(turn),
        meta,
        queue,
        finished: false,
    };
    let body = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(Event::default().data(data)), st));
            }
            if st.finished {
                return None;
            }
            match st.rx.recv().await {
                Some(Chunk::Delta(d)) => st
                    .queue
                    .push_back(st.meta.chunk(json!({ "content": d }), None).to_string()),
                Some(Chunk::Finish((prompt, completion))) => {
                    st.queue
                        .push_back(st.meta.chunk(json!({}), Some("stop")).to_string());
                    let mut usage = st.meta.chunk(json!({}), None);
                    usage["choices"] = json!([]);
                    usage["usage"] = json!({
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    });
                    st.queue.push_back(usage.to_string());
                    st.queue.push_back("[DONE]".to_string());
                    st.finished = true;
                }
                Some(Chunk::Error(e)) => {
                    st.queue.push_back(e.body().to_string());
                    st.finished = true;
                }
                None => return None,
            }
        }
    });
    // Comment lines every 15 s keep proxies and clients from timing out a stream that
    // waits for an approval; SSE clients ignore them.
    let mut response = Sse::new(body)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response();
    set_session_header(&mut response, &session);
    Ok(response)
}

enum Chunk {
    Delta(String),
    Finish((u64, u64)),
    Error(ApiError),
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Chunk>,
    _turn: AbortOnDrop,
    meta: ChunkMeta,
    queue: VecDeque<String>,
    finished: bool,
}

struct ChunkMeta {
    id: String,
    model: String,
    created: i64,
}

impl ChunkMeta {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
    }
}

/// Aborts the turn when the response stream is dropped (the client went away).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn set_session_header(response: &mut Response, session: &SessionId) {
    if let Ok(v) = HeaderValue::from_str(session.as_str()) {
        response.headers_mut().insert("x-carapace-session", v);
    }
}
