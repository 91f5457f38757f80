//! A fake OpenAI Responses API server (`POST /v1/responses`, `GET /v1/models`) that plays a
//! script of replies in the shapes OpenAI documents: a `response` object, or its semantic
//! server-sent events ending in `response.completed`.
//!
//! It checks what the real API checks and a client can get wrong: the bearer key (when one
//! is set), a model, input item roles and types, every `function_call_output` answering an
//! earlier `function_call` and every `function_call` answered, arguments as strings,
//! `max_output_tokens` of at least 16, and, for tools in strict mode (the default when
//! `strict` is left out), schemas whose every object is closed and requires every
//! property. Broken requests get the 400 OpenAI sends and consume no reply.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::fake::{DisconnectGuard, Script, Served, body_response, lock, serve};

/// The one model `GET /v1/models` lists.
pub const MODEL_ID: &str = "gpt-fake-1";
/// The `usage.input_tokens` of every answer.
pub const INPUT_TOKENS: u64 = 19;
/// The `Retry-After` the fake sends with its 429s, in seconds.
pub const RETRY_AFTER_SECS: u64 = 2;
/// What the streamed replies that break off start to say.
const BROKEN_TEXT: &str = "this answer stops halfway and never finishes";
/// Arguments of streamed tool calls arrive in pieces of this many characters, which cut
/// through keys, strings and escapes.
const ARGUMENT_PIECE_CHARS: usize = 4;
const CREATED_AT: u64 = 1_741_476_542;

/// One scripted answer to one `POST /v1/responses`.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponsesReply {
    /// The assistant says this text (streamed word by word when asked to stream).
    Text(String),
    /// The assistant calls these tools, `(name, arguments)`, in this order.
    ToolCalls(Vec<(String, Value)>),
    /// An HTTP error with an OpenAI error body; 429s carry `retry-after`.
    Error {
        /// The HTTP status.
        status: u16,
        /// The `error.type`, like `invalid_request_error`.
        kind: String,
        /// The `error.code`, like `model_not_found`.
        code: Option<String>,
        /// The `error.message`.
        message: String,
    },
    /// Accepts the request and never answers.
    Stall,
    /// Sends this many events of a streamed text answer, then nothing more, without
    /// closing. Unstreamed, sends half a body and stops.
    StallAfter(usize),
    /// A response that fails after it started: streamed, a few text deltas then
    /// `response.failed`; unstreamed, a 200 whose `status` is `failed`.
    Failed {
        /// The `error.code`, like `server_error`.
        code: String,
        /// The `error.message`.
        message: String,
    },
    /// Says this text, then stops at `max_output_tokens`: `status: incomplete`.
    Incomplete(String),
    /// Streams a whole text answer but closes without `response.completed`. Unstreamed,
    /// closes after half a body.
    NoCompleted,
}

/// A fake OpenAI Responses server on 127.0.0.1. It stops when dropped.
pub struct FakeOpenAiResponses {
    shared: Arc<Shared>,
    server: Served,
}

struct Shared {
    script: Script<ResponsesReply>,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    api_key: Mutex<Option<String>>,
    next_id: AtomicU64,
    disconnects: Arc<AtomicUsize>,
}

impl FakeOpenAiResponses {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start(script: Vec<ResponsesReply>) -> FakeOpenAiResponses {
        let shared = Arc::new(Shared {
            script: Script::new(script),
            requests: Mutex::default(),
            authorizations: Mutex::default(),
            api_key: Mutex::default(),
            next_id: AtomicU64::new(1),
            disconnects: Arc::default(),
        });
        let server = serve(router(shared.clone()), "openai responses").await;
        FakeOpenAiResponses { shared, server }
    }

    /// Requires `Authorization: Bearer <key>`; other requests get OpenAI's 401 and
    /// consume no reply.
    #[must_use]
    pub fn with_api_key(self, key: &str) -> FakeOpenAiResponses {
        *lock(&self.shared.api_key) = Some(key.to_string());
        self
    }

    /// Once the script is used up, answers every further request with `reply` instead of
    /// the "fake script exhausted" error: for benchmarks and other loops of many calls.
    #[must_use]
    pub fn repeating(self, reply: ResponsesReply) -> FakeOpenAiResponses {
        self.shared.script.repeat(reply);
        self
    }

    /// The base URL a client is configured with, like `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.server.addr())
    }

    /// The JSON bodies of the response requests received, in order, including rejected
    /// ones.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// The `Authorization` header of every request received, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        lock(&self.shared.authorizations).clone()
    }

    /// How many response requests lost their client before the reply was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .fallback(|method: Method, uri: Uri| async move {
            let message = format!("Invalid URL ({method} {})", uri.path());
            error_response(404, "invalid_request_error", None, None, &message)
        })
        .with_state(shared)
}

impl Shared {
    /// Records the `Authorization` header; OpenAI's 401 when a key is required and this
    /// is not it.
    fn check_key(&self, headers: &HeaderMap) -> Option<Response> {
        let seen = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        lock(&self.authorizations).push(seen.clone());
        let key = lock(&self.api_key).clone()?;
        let given = seen.as_deref().and_then(|s| s.strip_prefix("Bearer "));
        if given == Some(key.as_str()) {
            return None;
        }
        let message = match given {
            // OpenAI shows the start and the end of the key it got.
            Some(g) if g.chars().count() > 8 => {
                let chars: Vec<char> = g.chars().collect();
                let head: String = chars[..3].iter().collect();
                let tail: String = chars[chars.len() - 4..].iter().collect();
                format!("Incorrect API key provided: {head}***{tail}. You can find your API key at https://platform.openai.com/account/api-keys.")
            }
            _ => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".into(),
        };
        Some(error_response(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
            &message,
        ))
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_fake_{}",
            self.next_id.fetch_add(1, Ordering::SeqCst)
        )
    }
}

/// Why a request is refused: `(message, param, code)`.
type Invalid = (String, Option<String>, Option<&'static str>);

async fn responses(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(resp) = shared.check_key(&headers) {
        return resp;
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let message = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";
            return error_response(400, "invalid_request_error", None, None, message);
        }
    };
    lock(&shared.requests).push(request.clone());
    if let Err((message, param, code)) = validate(&request) {
        return error_response(
            400,
            "invalid_request_error",
            code,
            param.as_deref(),
            &message,
        );
    }
    let guard = DisconnectGuard::new(shared.disconnects.clone());
    let Some(reply) = shared.script.next_reply() else {
        guard.finish();
        return error_response(500, "server_error", None, None, "fake script exhausted");
    };
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let meta = Meta {
        id: shared.id("resp"),
        request: request.clone(),
    };
    let answer = match reply {
        ResponsesReply::Text(text) => Answer::Text(shared.id("msg"), text),
        ResponsesReply::ToolCalls(calls) => Answer::Calls(
            calls
                .into_iter()
                .map(|(name, args)| (shared.id("fc"), shared.id("call"), name, args))
                .collect(),
        ),
        ResponsesReply::Error {
            status,
            kind,
            code,
            message,
        } => {
            guard.finish();
            return error_response(status, &kind, code.as_deref(), None, &message);
        }
        ResponsesReply::Stall => std::future::pending().await,
        ResponsesReply::StallAfter(n) if stream => {
            let events = stream_events(&meta, &Answer::Text(shared.id("msg"), BROKEN_TEXT.into()));
            return sse_response(events.into_iter().take(n).collect(), true, Some(guard));
        }
        ResponsesReply::StallAfter(_) => {
            let half = format!("{{\"id\":\"{}\",\"object\":\"response\",", meta.id);
            return body_response("application/json", vec![half], true, Some(guard));
        }
        ResponsesReply::Failed { code, message } => {
            let error = json!({ "code": code, "message": message });
            let mut failed = meta.response("failed", Vec::new(), 0);
            failed["error"] = error;
            guard.finish();
            if !stream {
                return Json(failed).into_response();
            }
            let mut events =
                stream_events(&meta, &Answer::Text(shared.id("msg"), BROKEN_TEXT.into()));
            // created, in_progress, item added, part added, two deltas.
            events.truncate(6);
            events.push(json!({ "type": "response.failed", "response": failed }));
            return sse_response(events, false, None);
        }
        ResponsesReply::Incomplete(text) => Answer::Incomplete(shared.id("msg"), text),
        ResponsesReply::NoCompleted if stream => {
            let mut events =
                stream_events(&meta, &Answer::Text(shared.id("msg"), BROKEN_TEXT.into()));
            events.pop();
            guard.finish();
            return sse_response(events, false, None);
        }
        ResponsesReply::NoCompleted => {
            let half = format!("{{\"id\":\"{}\",\"object\":\"response\",", meta.id);
            guard.finish();
            return body_response("application/json", vec![half], false, None);
        }
    };
    if stream {
        return sse_response(stream_events(&meta, &answer), false, Some(guard));
    }
    guard.finish();
    Json(meta.finished(&answer)).into_response()
}

/// The 400s OpenAI sends for the mistakes a client can make in the body.
fn validate(request: &Value) -> Result<(), Invalid> {
    let invalid = |message: String, param: &str, code: Option<&'static str>| {
        Err((message, Some(param.to_string()), code))
    };
    if !request.get("model").is_some_and(Value::is_string) {
        return invalid(
            "Missing required parameter: 'model'.".into(),
            "model",
            Some("missing_required_parameter"),
        );
    }
    if let Some(max) = request.get("max_output_tokens").and_then(Value::as_u64)
        && max < 16
    {
        return invalid(
            format!(
                "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {max} instead."
            ),
            "max_output_tokens",
            Some("integer_below_min_value"),
        );
    }
    let items: &[Value] = match request.get("input") {
        Some(Value::String(_)) => &[],
        Some(Value::Array(items)) => items,
        _ => {
            return invalid(
                "Missing required parameter: 'input'.".into(),
                "input",
                Some("missing_required_parameter"),
            );
        }
    };
    let mut calls: Vec<&str> = Vec::new();
    let mut answered: HashSet<&str> = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        let call_id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return invalid(
                        format!(
                            "Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."
                        ),
                        &format!("input[{i}].role"),
                        Some("invalid_value"),
                    );
                }
                if !item
                    .get("content")
                    .is_some_and(|c| c.is_string() || c.is_array())
                {
                    return invalid(
                        format!("Missing required parameter: 'input[{i}].content'."),
                        &format!("input[{i}].content"),
                        Some("missing_required_parameter"),
                    );
                }
            }
            "function_call" => {
                if !item.get("arguments").is_some_and(Value::is_string) {
                    return invalid(
                        format!(
                            "Invalid type for 'input[{i}].arguments': expected a string, but got an object instead."
                        ),
                        &format!("input[{i}].arguments"),
                        Some("invalid_type"),
                    );
                }
                calls.push(call_id);
            }
            "function_call_output" => {
                if !calls.contains(&call_id) {
                    return invalid(
                        format!(
                            "No tool call found for function call output with call_id {call_id}."
                        ),
                        "input",
                        None,
                    );
                }
                answered.insert(call_id);
            }
            other => {
                return invalid(
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'message', 'function_call' and 'function_call_output'."
                    ),
                    &format!("input[{i}].type"),
                    Some("invalid_value"),
                );
            }
        }
    }
    if let Some(open) = calls.iter().find(|c| !answered.contains(*c)) {
        return invalid(
            format!("No tool output found for function call {open}."),
            "input",
            None,
        );
    }
    let tools = request.get("tools").and_then(Value::as_array);
    for (i, tool) in tools.into_iter().flatten().enumerate() {
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return invalid(
                format!("Missing required parameter: 'tools[{i}].name'."),
                &format!("tools[{i}].name"),
                Some("missing_required_parameter"),
            );
        }
        let strict = tool.get("strict") != Some(&Value::Bool(false));
        if strict && let Err(why) = strict_schema(tool.get("parameters").unwrap_or(&Value::Null)) {
            return invalid(
                format!("Invalid schema for function '{name}': In context=(), {why}"),
                &format!("tools[{i}].parameters"),
                Some("invalid_function_parameters"),
            );
        }
    }
    Ok(())
}

/// Whether a schema is what strict mode accepts: each object closed and requiring every
/// one of its properties.
fn strict_schema(schema: &Value) -> Result<(), String> {
    let Some(map) = schema.as_object() else {
        return Ok(());
    };
    if map.get("type").and_then(Value::as_str) == Some("object") {
        if map.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Err(
                "'additionalProperties' is required to be supplied and to be false.".into(),
            );
        }
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let properties = map.get("properties").and_then(Value::as_object);
        for (key, sub) in properties.into_iter().flatten() {
            if !required.contains(&key.as_str()) {
                return Err(format!(
                    "'required' is required to be supplied and to be an array including every key in properties. Missing '{key}'."
                ));
            }
            strict_schema(sub)?;
        }
    }
    if let Some(items) = map.get("items") {
        strict_schema(items)?;
    }
    Ok(())
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(resp) = shared.check_key(&headers) {
        return resp;
    }
    Json(json!({
        "object": "list",
        "data": [{ "id": MODEL_ID, "object": "model", "created": CREATED_AT, "owned_by": "system" }],
    }))
    .into_response()
}

/// What the assistant says: text (with its message id), text cut at the token limit, or
/// tool calls as `(item id, call id, name, arguments)`.
enum Answer {
    Text(String, String),
    Incomplete(String, String),
    Calls(Vec<(String, String, String, Value)>),
}

impl Answer {
    /// The output items, whole.
    fn items(&self) -> Vec<Value> {
        match self {
            Answer::Text(id, text) | Answer::Incomplete(id, text) => {
                let status = match self {
                    Answer::Incomplete(..) => "incomplete",
                    _ => "completed",
                };
                vec![message_item(id, status, text)]
            }
            Answer::Calls(calls) => calls
                .iter()
                .map(|(id, call_id, name, args)| {
                    function_item(id, call_id, name, &args.to_string(), "completed")
                })
                .collect(),
        }
    }

    /// Made-up but deterministic.
    fn output_tokens(&self) -> u64 {
        let chars: usize = match self {
            Answer::Text(_, t) | Answer::Incomplete(_, t) => t.len(),
            Answer::Calls(calls) => calls
                .iter()
                .map(|(_, _, n, a)| n.len() + a.to_string().len())
                .sum(),
        };
        chars as u64 / 4 + 1
    }
}

fn message_item(id: &str, status: &str, text: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{ "type": "output_text", "annotations": [], "logprobs": [], "text": text }])
    };
    json!({ "id": id, "type": "message", "status": status, "content": content, "role": "assistant" })
}

fn function_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "function_call", "status": status,
        "arguments": arguments, "call_id": call_id, "name": name,
    })
}

/// One response of one request.
struct Meta {
    id: String,
    request: Value,
}

impl Meta {
    /// A `response` object with this status, output and output token count.
    fn response(&self, status: &str, output: Vec<Value>, output_tokens: u64) -> Value {
        let r = &self.request;
        let usage = (status != "in_progress").then(|| {
            json!({
                "input_tokens": INPUT_TOKENS,
                "input_tokens_details": { "cached_tokens": 0 },
                "output_tokens": output_tokens,
                "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": INPUT_TOKENS + output_tokens,
            })
        });
        json!({
            "id": self.id,
            "object": "response",
            "created_at": CREATED_AT,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": (status == "incomplete").then(|| json!({ "reason": "max_output_tokens" })),
            "instructions": r.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": r.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": r.get("model").cloned().unwrap_or(json!(MODEL_ID)),
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": { "effort": null, "summary": null },
            "store": r.get("store").cloned().unwrap_or(json!(true)),
            "temperature": r.get("temperature").cloned().unwrap_or(json!(1.0)),
            "text": { "format": { "type": "text" } },
            "tool_choice": "auto",
            "tools": r.get("tools").cloned().unwrap_or(json!([])),
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    }

    /// The finished `response` object of an answer.
    fn finished(&self, answer: &Answer) -> Value {
        let status = match answer {
            Answer::Incomplete(..) => "incomplete",
            _ => "completed",
        };
        self.response(status, answer.items(), answer.output_tokens())
    }
}

/// The events of a streamed answer, in the documented order: `response.created`,
/// `response.in_progress`, per output item its `added`, its content or argument deltas and
/// `done`s, then `response.completed` (or `response.incomplete`) with the whole response.
fn stream_events(meta: &Meta, answer: &Answer) -> Vec<Value> {
    let started = meta.response("in_progress", Vec::new(), 0);
    let mut events = vec![
        json!({ "type": "response.created", "response": started }),
        json!({ "type": "response.in_progress", "response": started }),
    ];
    match answer {
        Answer::Text(id, text) | Answer::Incomplete(id, text) => {
            let index = 0;
            let part = |text: &str| json!({ "type": "output_text", "annotations": [], "logprobs": [], "text": text });
            events.push(json!({ "type": "response.output_item.added", "output_index": index, "item": message_item(id, "in_progress", "") }));
            events.push(json!({ "type": "response.content_part.added", "item_id": id, "output_index": index, "content_index": 0, "part": part("") }));
            for word in text.split_inclusive(' ') {
                events.push(json!({ "type": "response.output_text.delta", "item_id": id, "output_index": index, "content_index": 0, "delta": word, "logprobs": [] }));
            }
            events.push(json!({ "type": "response.output_text.done", "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": [] }));
            events.push(json!({ "type": "response.content_part.done", "item_id": id, "output_index": index, "content_index": 0, "part": part(text) }));
            events.push(json!({ "type": "response.output_item.done", "output_index": index, "item": answer.items()[0] }));
        }
        Answer::Calls(calls) => {
            for (index, (id, call_id, name, args)) in calls.iter().enumerate() {
                let arguments = args.to_string();
                events.push(json!({ "type": "response.output_item.added", "output_index": index, "item": function_item(id, call_id, name, "", "in_progress") }));
                let chars: Vec<char> = arguments.chars().collect();
                for piece in chars.chunks(ARGUMENT_PIECE_CHARS) {
                    let delta: String = piece.iter().collect();
                    events.push(json!({ "type": "response.function_call_arguments.delta", "item_id": id, "output_index": index, "delta": delta }));
                }
                events.push(json!({ "type": "response.function_call_arguments.done", "item_id": id, "output_index": index, "arguments": arguments }));
                events.push(json!({ "type": "response.output_item.done", "output_index": index, "item": function_item(id, call_id, name, &arguments, "completed") }));
            }
        }
    }
    let finished = meta.finished(answer);
    let closing = match answer {
        Answer::Incomplete(..) => "response.incomplete",
        _ => "response.completed",
    };
    events.push(json!({ "type": closing, "response": finished }));
    events
}

/// The events as server-sent events, numbered.
fn sse_response(events: Vec<Value>, stall: bool, guard: Option<DisconnectGuard>) -> Response {
    let pieces = events
        .into_iter()
        .enumerate()
        .map(|(n, mut data)| {
            data["sequence_number"] = json!(n);
            let name = data["type"].as_str().unwrap_or_default().to_string();
            format!("event: {name}\ndata: {data}\n\n")
        })
        .collect();
    body_response("text/event-stream; charset=utf-8", pieces, stall, guard)
}

/// An HTTP error with the body OpenAI sends: `{"error":{"message","type","param","code"}}`.
fn error_response(
    status: u16,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: &str,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body =
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } });
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
    use super::*;

    #[test]
    fn a_streamed_tool_call_has_the_documented_events() {
        let meta = Meta {
            id: "resp_1".into(),
            request: json!({ "model": "m" }),
        };
        let answer = Answer::Calls(vec![(
            "fc_1".into(),
            "call_1".into(),
            "list_dir".into(),
            json!({ "path": "src" }),
        )]);
        let kinds: Vec<String> = stream_events(&meta, &answer)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
    }

    #[test]
    fn validation_catches_what_openai_refuses() {
        let ok = json!({ "model": "m", "input": [
            { "type": "message", "role": "user", "content": "hi" },
            { "type": "function_call", "call_id": "c1", "name": "x", "arguments": "{}" },
            { "type": "function_call_output", "call_id": "c1", "output": "r" },
        ], "tools": [{ "type": "function", "name": "x", "strict": false,
            "parameters": { "type": "object", "properties": { "p": {} } } }] });
        assert_eq!(validate(&ok), Ok(()));
        let mut unanswered = ok.clone();
        unanswered["input"].as_array_mut().unwrap().pop();
        assert!(
            validate(&unanswered)
                .unwrap_err()
                .0
                .contains("No tool output found")
        );
        let mut strict = ok.clone();
        strict["tools"][0].as_object_mut().unwrap().remove("strict");
        assert!(validate(&strict).unwrap_err().0.contains("Invalid schema"));
        let mut object_args = ok;
        object_args["input"][1]["arguments"] = json!({});
        assert!(
            validate(&object_args)
                .unwrap_err()
                .0
                .contains("expected a string")
        );
    }
}
