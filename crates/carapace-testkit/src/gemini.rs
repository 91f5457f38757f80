//! A fake Gemini API server (`generateContent`, `streamGenerateContent`, `models.list`)
//! that plays a script of replies, in the JSON shapes Google documents.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::fake::{DisconnectGuard, Script, Served, body_response, lock, serve};

/// The one model `GET /v1beta/models` lists.
pub const MODEL_NAME: &str = "fake-gemini";
/// What [`GeminiReply::StallAfter`] starts to say.
const STALLING_TEXT: &str = "this answer stops halfway and never finishes";

/// One scripted answer to one `generateContent` or `streamGenerateContent` call.
#[derive(Clone, Debug, PartialEq)]
pub enum GeminiReply {
    /// The model says this text (streamed word by word when asked to stream).
    Text(String),
    /// The model calls these functions, `(name, args)`, in this order, without ids (as
    /// the Gemini API sends them). Streamed, each call comes in its own chunk.
    ToolCalls(Vec<(String, Value)>),
    /// An HTTP error with a Google error body; a 429 also carries `retry-after: 2` and a
    /// `RetryInfo` detail of `2s`.
    Error {
        /// The HTTP status.
        status: u16,
        /// The `error.status`, like `RESOURCE_EXHAUSTED`.
        status_name: String,
        /// The `error.message`.
        message: String,
    },
    /// A 200 with no candidates and `promptFeedback.blockReason` set to this.
    Blocked(String),
    /// One candidate with `finishReason: SAFETY` and no content.
    SafetyStop,
    /// Accepts the request and never answers.
    Stall,
    /// Sends the response headers and this many stream chunks of a text answer, then
    /// nothing more, without closing. Unstreamed, sends half a body and stops.
    StallAfter(usize),
    /// The text, with no `finishReason` anywhere; a stream then just closes.
    NoFinishReason(String),
}

/// One request the fake received.
#[derive(Clone, Debug, PartialEq)]
pub struct GeminiRequest {
    /// The model of the path (`models/{model}:{method}`); empty for the model list.
    pub model: String,
    /// `generateContent`, `streamGenerateContent` or `list`.
    pub method: String,
    /// The query string, like `alt=sse`.
    pub query: Option<String>,
    /// The `x-goog-api-key` header.
    pub api_key: Option<String>,
    /// The JSON body (`null` for the model list).
    pub body: Value,
}

/// A fake Gemini API server on 127.0.0.1. It stops when dropped.
pub struct FakeGemini {
    shared: Arc<Shared>,
    server: Served,
}

struct Shared {
    script: Script<GeminiReply>,
    requests: Mutex<Vec<GeminiRequest>>,
    api_key: Mutex<Option<String>>,
    next_response: AtomicUsize,
    disconnects: Arc<AtomicUsize>,
}

impl FakeGemini {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start(script: Vec<GeminiReply>) -> FakeGemini {
        let shared = Arc::new(Shared {
            script: Script::new(script),
            requests: Mutex::default(),
            api_key: Mutex::default(),
            next_response: AtomicUsize::new(1),
            disconnects: Arc::default(),
        });
        let server = serve(router(shared.clone()), "gemini").await;
        FakeGemini { shared, server }
    }

    /// Requires `x-goog-api-key: <key>`; other requests get Google's 403 (missing) or 400
    /// (wrong) and consume no reply.
    #[must_use]
    pub fn with_api_key(self, key: &str) -> FakeGemini {
        *lock(&self.shared.api_key) = Some(key.to_string());
        self
    }

    /// Once the script is used up, answers every further request with `reply` instead of
    /// the "fake script exhausted" error: for benchmarks and other loops of many calls.
    #[must_use]
    pub fn repeating(self, reply: GeminiReply) -> FakeGemini {
        self.shared.script.repeat(reply);
        self
    }

    /// The base URL a client is configured with, `http://127.0.0.1:PORT` (no version).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Appends a reply to the script.
    pub fn push(&self, reply: GeminiReply) {
        self.shared.script.push(reply);
    }

    /// Every request received, in order, including rejected ones.
    pub fn requests(&self) -> Vec<GeminiRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many generate requests lost their client before the reply was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1beta/models/{target}", post(generate))
        .route("/v1beta/models", get(models))
        .fallback(not_found)
        .with_state(shared)
}

impl Shared {
    /// Records the request; returns the error to send when a key is required and the
    /// request lacks it.
    fn record(&self, request: GeminiRequest) -> Option<Response> {
        let sent = request.api_key.clone();
        lock(&self.requests).push(request);
        let key = lock(&self.api_key).clone()?;
        match sent {
            Some(sent) if sent == key => None,
            None => Some(error_response(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established \
                 identity). Please use API Key or other form of API consumer identity to \
                 call this API.",
            )),
            Some(_) => Some(error_response(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
            )),
        }
    }
}

fn api_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, method)) = target.split_once(':') else {
        return error_response(404, "NOT_FOUND", "Method not found.");
    };
    if !matches!(method, "generateContent" | "streamGenerateContent") {
        return error_response(404, "NOT_FOUND", "Method not found.");
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid JSON payload received. {e}"),
            );
        }
    };
    let request = GeminiRequest {
        model: model.to_string(),
        method: method.to_string(),
        query: query.clone(),
        api_key: api_key(&headers),
        body,
    };
    let usage_in = prompt_tokens(&request.body);
    if let Some(resp) = shared.record(request) {
        return resp;
    }
    let guard = DisconnectGuard::new(shared.disconnects.clone());
    let Some(reply) = shared.script.next_reply() else {
        guard.finish();
        return error_response(500, "INTERNAL", "fake script exhausted");
    };
    let stream = method == "streamGenerateContent";
    let sse = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    let meta = Meta {
        version: format!("{model}-001"),
        response_id: format!(
            "fake-response-{}",
            shared.next_response.fetch_add(1, Ordering::SeqCst)
        ),
        prompt_tokens: usage_in,
    };
    let chunks = match reply {
        GeminiReply::Error {
            status,
            status_name,
            message,
        } => {
            guard.finish();
            return error_response(status, &status_name, &message);
        }
        GeminiReply::Stall => std::future::pending().await,
        GeminiReply::StallAfter(n) if stream => {
            let chunks = text_chunks(&meta, STALLING_TEXT, true);
            let events = chunks.iter().take(n).map(sse_event).collect();
            return body_response("text/event-stream", events, true, Some(guard));
        }
        GeminiReply::StallAfter(_) => {
            let half = "{\"candidates\": [{\"content\": {".to_string();
            return body_response("application/json", vec![half], true, Some(guard));
        }
        GeminiReply::Text(text) => text_chunks(&meta, &text, true),
        GeminiReply::NoFinishReason(text) => text_chunks(&meta, &text, false),
        GeminiReply::ToolCalls(calls) => call_chunks(&meta, &calls),
        GeminiReply::Blocked(reason) => vec![meta.wrap(json!({
            "promptFeedback": {
                "blockReason": reason,
                "safetyRatings": [
                    { "category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH" },
                ],
            },
        }), 0)],
        GeminiReply::SafetyStop => vec![meta.wrap(json!({
            "candidates": [{
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [
                    { "category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true },
                ],
            }],
        }), 0)],
    };
    if stream && sse {
        let events = chunks.iter().map(sse_event).collect();
        return body_response("text/event-stream", events, false, Some(guard));
    }
    if stream {
        // Without `alt=sse` the API streams one JSON array of the chunks.
        let array = Value::Array(chunks).to_string();
        return body_response(
            "application/json; charset=UTF-8",
            vec![array],
            false,
            Some(guard),
        );
    }
    guard.finish();
    Json(merge(chunks)).into_response()
}

async fn models(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = GeminiRequest {
        model: String::new(),
        method: "list".into(),
        query,
        api_key: api_key(&headers),
        body: Value::Null,
    };
    if let Some(resp) = shared.record(request) {
        return resp;
    }
    Json(json!({
        "models": [{
            "name": format!("models/{MODEL_NAME}"),
            "version": "001",
            "displayName": "Fake Gemini",
            "description": "A scripted fake of the Gemini API.",
            "inputTokenLimit": 32768,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }],
    }))
    .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(
        404,
        "NOT_FOUND",
        &format!("The requested URL {} ({method}) was not found.", uri.path()),
    )
}

/// What every chunk of one answer shares.
struct Meta {
    version: String,
    response_id: String,
    prompt_tokens: usize,
}

impl Meta {
    /// Adds the usage, model version and response id that every chunk carries.
    fn wrap(&self, mut chunk: Value, generated_tokens: usize) -> Value {
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "totalTokenCount": self.prompt_tokens + generated_tokens,
        });
        if generated_tokens > 0 {
            usage["candidatesTokenCount"] = json!(generated_tokens);
        }
        chunk["usageMetadata"] = usage;
        chunk["modelVersion"] = json!(self.version);
        chunk["responseId"] = json!(self.response_id);
        chunk
    }
}

/// Token counts made up from the size of the texts, deterministic.
fn prompt_tokens(body: &Value) -> usize {
    let chars: usize = body
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("parts")?.as_array())
        .flatten()
        .filter_map(|p| p.get("text")?.as_str())
        .map(str::len)
        .sum();
    chars / 4 + 1
}

fn candidate(parts: Vec<Value>, finish: bool) -> Value {
    let mut c = json!({ "content": { "parts": parts, "role": "model" }, "index": 0 });
    if finish {
        c["finishReason"] = json!("STOP");
    }
    json!({ "candidates": [c] })
}

/// The chunks of a text answer, one per word; the last carries the finish reason.
fn text_chunks(meta: &Meta, text: &str, finish: bool) -> Vec<Value> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let mut sent = 0;
    words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            sent += word.len();
            let last = i + 1 == words.len();
            meta.wrap(
                candidate(vec![json!({ "text": word })], finish && last),
                sent / 4 + 1,
            )
        })
        .collect()
}

/// The chunks of a function-calling answer, one per call; the last carries `STOP`.
fn call_chunks(meta: &Meta, calls: &[(String, Value)]) -> Vec<Value> {
    let mut sent = 0;
    calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            sent += name.len() + args.to_string().len();
            // Thinking models sign the thought behind each call; the signature must come
            // back with the call in the next request.
            let part = json!({
                "functionCall": { "name": name, "args": args },
                "thoughtSignature": signature_of(name),
            });
            meta.wrap(candidate(vec![part], i + 1 == calls.len()), sent / 4 + 1)
        })
        .collect()
}

/// The thought signature the fake attaches to a call of `name` (opaque base64 to a
/// client, like Gemini's).
pub fn signature_of(name: &str) -> String {
    format!("c2lnLW9mLQ{}", name.len())
}

/// The unstreamed answer: the chunks' parts in one candidate, the last chunk's rest.
fn merge(chunks: Vec<Value>) -> Value {
    let mut parts = Vec::new();
    let mut last = json!({});
    for chunk in chunks {
        if let Some(p) = chunk
            .pointer("/candidates/0/content/parts")
            .and_then(Value::as_array)
        {
            parts.extend(p.iter().cloned());
        }
        last = chunk;
    }
    if let Some(content) = last.pointer_mut("/candidates/0/content") {
        // Text parts that follow each other are one part in an unstreamed answer.
        let mut merged: Vec<Value> = Vec::new();
        for part in parts {
            let text = part.get("text").and_then(Value::as_str).map(str::to_string);
            match (merged.last_mut(), text) {
                (Some(prev), Some(text)) if prev.get("text").is_some() => {
                    let joined = format!("{}{text}", prev["text"].as_str().unwrap_or(""));
                    prev["text"] = json!(joined);
                }
                _ => merged.push(part),
            }
        }
        content["parts"] = Value::Array(merged);
    }
    last
}

fn sse_event(chunk: &Value) -> String {
    format!("data: {chunk}\r\n\r\n")
}

/// An HTTP error with the body Google sends: `{"error":{"code","message","status"}}`.
fn error_response(status: u16, status_name: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = json!({ "code": status.as_u16(), "message": message, "status": status_name });
    if status == StatusCode::TOO_MANY_REQUESTS {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": "2s",
        }]);
    }
    let mut response = (status, Json(json!({ "error": error }))).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    }
    response
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn meta() -> Meta {
        Meta {
            version: "m-001".into(),
            response_id: "r1".into(),
            prompt_tokens: 3,
        }
    }

    #[test]
    fn a_text_answer_streams_by_word_and_merges_whole() {
        let chunks = text_chunks(&meta(), "Hi there", true);
        let sse: String = chunks
            .iter()
            .map(|c| sse_event(&crate::sorted_keys(c)))
            .collect();
        expect![[r#"
            data: {"candidates":[{"content":{"parts":[{"text":"Hi "}],"role":"model"},"index":0}],"modelVersion":"m-001","responseId":"r1","usageMetadata":{"candidatesTokenCount":1,"promptTokenCount":3,"totalTokenCount":4}}

            data: {"candidates":[{"content":{"parts":[{"text":"there"}],"role":"model"},"finishReason":"STOP","index":0}],"modelVersion":"m-001","responseId":"r1","usageMetadata":{"candidatesTokenCount":3,"promptTokenCount":3,"totalTokenCount":6}}

        "#]]
        .assert_eq(&sse.replace('\r', ""));
        let whole = crate::sorted_keys(&merge(chunks));
        expect![[r#"{"candidates":[{"content":{"parts":[{"text":"Hi there"}],"role":"model"},"finishReason":"STOP","index":0}],"modelVersion":"m-001","responseId":"r1","usageMetadata":{"candidatesTokenCount":3,"promptTokenCount":3,"totalTokenCount":6}}"#]]
        .assert_eq(&whole.to_string());
    }
}
