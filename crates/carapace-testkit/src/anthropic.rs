//! A fake Anthropic Messages API server that plays a script of replies.
//!
//! It checks what the real API checks and a client can get wrong: the `x-api-key` (when
//! one is set) and `anthropic-version` headers, a `max_tokens`, roles that alternate
//! starting with `user`, and every `tool_use` answered by a `tool_result` in the next
//! message. Broken requests get the 400 Anthropic sends and consume no reply.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::fake::{DisconnectGuard, Script, Served, body_response, lock, no_cache, serve};

/// The one model `GET /v1/models` lists.
pub const MODEL_ID: &str = "claude-fake-1";
/// What the streamed replies that break off start to say.
const BROKEN_TEXT: &str = "this answer stops halfway and never finishes";
/// Arguments of streamed tool calls arrive in pieces of this many characters, which cut
/// through keys, strings and escapes.
const ARGUMENT_PIECE_CHARS: usize = 3;
/// Prompt token counts of every answer: plain input, cache writes and cache reads.
pub const INPUT_TOKENS: u64 = 11;
/// See [`INPUT_TOKENS`].
pub const CACHE_CREATION_INPUT_TOKENS: u64 = 5;
/// See [`INPUT_TOKENS`].
pub const CACHE_READ_INPUT_TOKENS: u64 = 7;
/// The `Retry-After` the fake sends with its 429s, in seconds.
pub const RETRY_AFTER_SECS: u64 = 3;

/// One scripted answer to one `POST /v1/messages`.
#[derive(Clone, Debug, PartialEq)]
pub enum AnthropicReply {
    /// The assistant says this text (streamed word by word when asked to stream).
    Text(String),
    /// The assistant calls these tools, `(name, input)`, in this order.
    ToolCalls(Vec<(String, Value)>),
    /// An HTTP error with an Anthropic error body; 429s carry `retry-after`.
    Error {
        /// The HTTP status.
        status: u16,
        /// The `error.type`, like `overloaded_error`.
        kind: String,
        /// The `error.message`.
        message: String,
    },
    /// Accepts the request and never answers.
    Stall,
    /// Sends this many events of a streamed text answer, then nothing more, without
    /// closing. Unstreamed, sends half a body and stops.
    StallAfter(usize),
    /// Streams the start of a text answer, then an `error` event, then closes.
    /// Unstreamed, the HTTP error of that kind.
    MidStreamError {
        /// The `error.type`, like `overloaded_error`.
        kind: String,
        /// The `error.message`.
        message: String,
    },
    /// Streams a whole text answer but closes without `message_stop`. Unstreamed, closes
    /// after half a body.
    NoMessageStop,
}

/// The headers of one request that a client must get right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenHeaders {
    /// `x-api-key`.
    pub api_key: Option<String>,
    /// `anthropic-version`.
    pub version: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
}

/// A fake Anthropic server on 127.0.0.1. It stops when dropped.
pub struct FakeAnthropic {
    shared: Arc<Shared>,
    server: Served,
}

struct Shared {
    script: Script<AnthropicReply>,
    requests: Mutex<Vec<Value>>,
    headers: Mutex<Vec<SeenHeaders>>,
    api_key: Mutex<Option<String>>,
    next_id: AtomicU64,
    disconnects: Arc<AtomicUsize>,
}

impl FakeAnthropic {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start(script: Vec<AnthropicReply>) -> FakeAnthropic {
        let shared = Arc::new(Shared {
            script: Script::new(script),
            requests: Mutex::default(),
            headers: Mutex::default(),
            api_key: Mutex::default(),
            next_id: AtomicU64::new(1),
            disconnects: Arc::default(),
        });
        let server = serve(router(shared.clone()), "anthropic").await;
        FakeAnthropic { shared, server }
    }

    /// Requires `x-api-key: <key>`; other requests get Anthropic's 401 and consume no
    /// reply.
    #[must_use]
    pub fn with_api_key(self, key: &str) -> FakeAnthropic {
        *lock(&self.shared.api_key) = Some(key.to_string());
        self
    }

    /// Once the script is used up, answers every further request with `reply` instead of
    /// the "fake script exhausted" error: for benchmarks and other loops of many calls.
    #[must_use]
    pub fn repeating(self, reply: AnthropicReply) -> FakeAnthropic {
        self.shared.script.repeat(reply);
        self
    }

    /// The base URL a client is configured with, like `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The JSON bodies of the message requests received, in order, including rejected
    /// ones.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// The headers of every request received (messages and models), in order.
    pub fn headers(&self) -> Vec<SeenHeaders> {
        lock(&self.shared.headers).clone()
    }

    /// How many message requests lost their client before the reply was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .fallback(|| async { error_response(404, "not_found_error", "Not found") })
        .with_state(shared)
}

impl Shared {
    /// Records the headers; the error to send when they are not what Anthropic requires.
    fn check_headers(&self, headers: &HeaderMap) -> Option<Response> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = SeenHeaders {
            api_key: text("x-api-key"),
            version: text("anthropic-version"),
            content_type: text("content-type"),
        };
        lock(&self.headers).push(seen.clone());
        if let Some(key) = lock(&self.api_key).clone()
            && seen.api_key.as_deref() != Some(key.as_str())
        {
            return Some(error_response(
                401,
                "authentication_error",
                "invalid x-api-key",
            ));
        }
        if seen.version.is_none() {
            return Some(error_response(
                400,
                "invalid_request_error",
                "anthropic-version: header is required",
            ));
        }
        None
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_fake_{}",
            self.next_id.fetch_add(1, Ordering::SeqCst)
        )
    }
}

async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let header_failure = shared.check_headers(&headers);
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                400,
                "invalid_request_error",
                &format!("There was an issue with your request body: {e}"),
            );
        }
    };
    lock(&shared.requests).push(request.clone());
    if let Some(resp) = header_failure {
        return resp;
    }
    if let Err(message) = validate(&request) {
        return error_response(400, "invalid_request_error", &message);
    }
    let guard = DisconnectGuard::new(shared.disconnects.clone());
    let Some(reply) = shared.script.next_reply() else {
        guard.finish();
        return error_response(500, "api_error", "fake script exhausted");
    };
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(MODEL_ID)
        .to_string();
    let message_id = shared.id("msg");
    let answer = match reply {
        AnthropicReply::Text(text) => Answer::Text(text),
        AnthropicReply::ToolCalls(calls) => Answer::Calls(
            calls
                .into_iter()
                .map(|(name, input)| (shared.id("toolu"), name, input))
                .collect(),
        ),
        AnthropicReply::Error {
            status,
            kind,
            message,
        } => {
            guard.finish();
            return error_response(status, &kind, &message);
        }
        AnthropicReply::MidStreamError { kind, message } if !stream => {
            guard.finish();
            return error_response(status_of(&kind), &kind, &message);
        }
        AnthropicReply::Stall => std::future::pending().await,
        AnthropicReply::StallAfter(n) if stream => {
            let events = stream_events(&message_id, &model, &Answer::Text(BROKEN_TEXT.into()));
            return sse_response(events.into_iter().take(n).collect(), true, Some(guard));
        }
        AnthropicReply::MidStreamError { kind, message } => {
            let mut events = stream_events(&message_id, &model, &Answer::Text(BROKEN_TEXT.into()));
            // message_start, content_block_start, ping and two text deltas.
            events.truncate(5);
            let error = json!({ "type": "error", "error": { "type": kind, "message": message } });
            events.push(format!("event: error\ndata: {error}\n\n"));
            guard.finish();
            return sse_response(events, false, None);
        }
        AnthropicReply::NoMessageStop if stream => {
            let mut events = stream_events(&message_id, &model, &Answer::Text(BROKEN_TEXT.into()));
            events.pop();
            guard.finish();
            return sse_response(events, false, None);
        }
        AnthropicReply::StallAfter(_) => {
            let half = format!("{{\"id\":\"{message_id}\",\"type\":\"message\",");
            return no_cache(body_response(
                "application/json",
                vec![half],
                true,
                Some(guard),
            ));
        }
        AnthropicReply::NoMessageStop => {
            let half = format!("{{\"id\":\"{message_id}\",\"type\":\"message\",");
            guard.finish();
            return no_cache(body_response("application/json", vec![half], false, None));
        }
    };
    if stream {
        let events = stream_events(&message_id, &model, &answer);
        return sse_response(events, false, Some(guard));
    }
    guard.finish();
    Json(message(&message_id, &model, &answer)).into_response()
}

/// The 400s Anthropic sends for the mistakes a client can make in the body.
fn validate(request: &Value) -> Result<(), String> {
    if !request.get("max_tokens").is_some_and(Value::is_u64) {
        return Err("max_tokens: Field required".into());
    }
    if !request.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required".into());
    }
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Field required")?;
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut expected_results: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if role != want {
            return Err(format!(
                "messages.{i}: roles must alternate between \"user\" and \"assistant\", starting with \"user\""
            ));
        }
        let blocks: Vec<&Value> = match m.get("content") {
            Some(Value::String(s)) if !s.is_empty() => Vec::new(),
            Some(Value::Array(blocks)) if !blocks.is_empty() => blocks.iter().collect(),
            _ => {
                return Err(format!(
                    "messages.{i}: all messages must have non-empty content"
                ));
            }
        };
        let kind = |b: &Value| {
            b.get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let results: Vec<&str> = blocks
            .iter()
            .filter(|b| kind(b) == "tool_result")
            .filter_map(|b| b.get("tool_use_id").and_then(Value::as_str))
            .collect();
        if results != expected_results {
            return Err(format!(
                "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {expected_results:?}"
            ));
        }
        if let Some(first_other) = blocks.iter().position(|b| kind(b) != "tool_result")
            && blocks[first_other..]
                .iter()
                .any(|b| kind(b) == "tool_result")
        {
            return Err(format!(
                "messages.{i}: tool_result blocks must come first in the content"
            ));
        }
        for b in &blocks {
            match kind(b).as_str() {
                "text"
                    if b.get("text")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty) =>
                {
                    return Err(format!(
                        "messages.{i}: text content blocks must be non-empty"
                    ));
                }
                "tool_use" if !b.get("input").is_some_and(Value::is_object) => {
                    return Err(format!(
                        "messages.{i}: tool_use.input: Input should be an object"
                    ));
                }
                "text" | "tool_use" | "tool_result" => {}
                other => {
                    return Err(format!(
                        "messages.{i}: unknown content block type {other:?}"
                    ));
                }
            }
        }
        expected_results = blocks
            .iter()
            .filter(|b| kind(b) == "tool_use")
            .filter_map(|b| b.get("id").and_then(Value::as_str))
            .collect();
    }
    Ok(())
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(resp) = shared.check_headers(&headers) {
        return resp;
    }
    Json(json!({
        "data": [{
            "type": "model",
            "id": MODEL_ID,
            "display_name": "Claude Fake",
            "created_at": "2025-01-01T00:00:00Z",
        }],
        "has_more": false,
        "first_id": MODEL_ID,
        "last_id": MODEL_ID,
    }))
    .into_response()
}

/// What the assistant says: text, or tool calls as `(id, name, input)`.
enum Answer {
    Text(String),
    Calls(Vec<(String, String, Value)>),
}

impl Answer {
    fn stop_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "end_turn",
            Answer::Calls(_) => "tool_use",
        }
    }

    /// Made-up but deterministic.
    fn output_tokens(&self) -> u64 {
        let chars = match self {
            Answer::Text(t) => t.len(),
            Answer::Calls(calls) => calls
                .iter()
                .map(|(_, n, input)| n.len() + input.to_string().len())
                .sum(),
        };
        chars as u64 / 4 + 1
    }
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": CACHE_CREATION_INPUT_TOKENS,
        "cache_read_input_tokens": CACHE_READ_INPUT_TOKENS,
        "output_tokens": output_tokens,
    })
}

/// A whole `message` object, as an unstreamed call answers.
fn message(id: &str, model: &str, answer: &Answer) -> Value {
    let content: Vec<Value> = match answer {
        Answer::Text(text) => vec![json!({ "type": "text", "text": text })],
        Answer::Calls(calls) => calls
            .iter()
            .map(|(id, name, input)| {
                json!({ "type": "tool_use", "id": id, "name": name, "input": input })
            })
            .collect(),
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": answer.stop_reason(),
        "stop_sequence": null,
        "usage": usage(answer.output_tokens()),
    })
}

/// The SSE events of a streamed answer, in the documented order: `message_start`, then
/// per content block a `content_block_start`, its deltas and a `content_block_stop` (with
/// a `ping` after the first start), then `message_delta` and `message_stop`.
fn stream_events(id: &str, model: &str, answer: &Answer) -> Vec<String> {
    let event = |data: Value| {
        let name = data["type"].as_str().unwrap_or_default().to_string();
        format!("event: {name}\ndata: {data}\n\n")
    };
    let mut start = message(id, model, answer);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    let mut events = vec![event(json!({ "type": "message_start", "message": start }))];
    let mut blocks: Vec<(Value, Vec<Value>)> = Vec::new();
    match answer {
        Answer::Text(text) => blocks.push((
            json!({ "type": "text", "text": "" }),
            text.split_inclusive(' ')
                .map(|w| json!({ "type": "text_delta", "text": w }))
                .collect(),
        )),
        Answer::Calls(calls) => {
            for (id, name, input) in calls {
                let chars: Vec<char> = input.to_string().chars().collect();
                // Anthropic opens with an empty piece.
                let pieces = std::iter::once(String::new()).chain(
                    chars
                        .chunks(ARGUMENT_PIECE_CHARS)
                        .map(|p| p.iter().collect()),
                );
                blocks.push((
                    json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                    pieces
                        .map(|p| json!({ "type": "input_json_delta", "partial_json": p }))
                        .collect(),
                ));
            }
        }
    }
    for (index, (block, deltas)) in blocks.into_iter().enumerate() {
        events.push(event(
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
        ));
        if index == 0 {
            events.push(event(json!({ "type": "ping" })));
        }
        for delta in deltas {
            events.push(event(
                json!({ "type": "content_block_delta", "index": index, "delta": delta }),
            ));
        }
        events.push(event(
            json!({ "type": "content_block_stop", "index": index }),
        ));
    }
    events.push(event(json!({
        "type": "message_delta",
        "delta": { "stop_reason": answer.stop_reason(), "stop_sequence": null },
        "usage": { "output_tokens": answer.output_tokens() },
    })));
    events.push(event(json!({ "type": "message_stop" })));
    events
}

fn sse_response(events: Vec<String>, stall: bool, guard: Option<DisconnectGuard>) -> Response {
    let content_type = "text/event-stream; charset=utf-8";
    no_cache(body_response(content_type, events, stall, guard))
}

/// The status Anthropic documents for an error type.
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// An HTTP error with the body Anthropic sends:
/// `{"type":"error","error":{"type","message"},"request_id"}`.
fn error_response(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "type": "error",
        "error": { "type": kind, "message": message },
        "request_id": "req_fake",
    });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(RETRY_AFTER_SECS),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn a_streamed_tool_call_looks_like_anthropic_sends_it() {
        let answer = Answer::Calls(vec![(
            "toolu_1".into(),
            "list_dir".into(),
            json!({ "path": "src" }),
        )]);
        let events: String = stream_events("msg_1", "m", &answer)
            .iter()
            .map(|e| {
                let (name, data) = e.trim_end().split_once('\n').unwrap();
                let data: Value = serde_json::from_str(data.trim_start_matches("data: ")).unwrap();
                format!("{name}\ndata: {}\n\n", crate::sorted_keys(&data))
            })
            .collect();
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_1","model":"m","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"input_tokens":11,"output_tokens":1}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"id":"toolu_1","input":{},"name":"list_dir","type":"tool_use"},"index":0,"type":"content_block_start"}

            event: ping
            data: {"type":"ping"}

            event: content_block_delta
            data: {"delta":{"partial_json":"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_delta
            data: {"delta":{"partial_json":"{\"p","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_delta
            data: {"delta":{"partial_json":"ath","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_delta
            data: {"delta":{"partial_json":"\":\"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_delta
            data: {"delta":{"partial_json":"src","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_delta
            data: {"delta":{"partial_json":"\"}","type":"input_json_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_stop
            data: {"index":0,"type":"content_block_stop"}

            event: message_delta
            data: {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"output_tokens":6}}

            event: message_stop
            data: {"type":"message_stop"}

        "#]].assert_eq(&events);
    }

    #[test]
    fn validation_catches_what_anthropic_refuses() {
        let ok = json!({ "model": "m", "max_tokens": 5, "messages": [
            { "role": "user", "content": "hi" },
            { "role": "assistant", "content": [{ "type": "tool_use", "id": "t1", "name": "x", "input": {} }] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "t1", "content": "r" },
                { "type": "text", "text": "more" },
            ] },
        ] });
        assert_eq!(validate(&ok), Ok(()));
        let mut no_result = ok.clone();
        no_result["messages"][2]["content"] = json!([{ "type": "text", "text": "no" }]);
        assert!(
            validate(&no_result)
                .unwrap_err()
                .contains("without `tool_result`")
        );
        let mut text_first = ok.clone();
        text_first["messages"][2]["content"] = json!([
            { "type": "text", "text": "more" },
            { "type": "tool_result", "tool_use_id": "t1", "content": "r" },
        ]);
        assert!(
            validate(&text_first)
                .unwrap_err()
                .contains("must come first")
        );
        let mut twice = ok.clone();
        twice["messages"][1]["role"] = json!("user");
        assert!(validate(&twice).unwrap_err().contains("alternate"));
        let mut no_max = ok;
        no_max.as_object_mut().unwrap().remove("max_tokens");
        assert!(validate(&no_max).unwrap_err().contains("max_tokens"));
    }
}
