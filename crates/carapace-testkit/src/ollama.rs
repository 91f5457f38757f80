//! A fake Ollama server (`POST /api/chat`, `GET /api/tags`) that plays a script of
//! replies in the JSON shapes Ollama documents: newline-delimited JSON when streaming (the
//! default when a request does not say `"stream": false`), whole objects otherwise, and
//! errors as `{"error": "..."}`.
//!
//! It checks what Ollama checks and a client can get wrong: a model name, known roles, and
//! tool call arguments that are JSON objects. Ollama itself wants no key; with
//! [`FakeOllama::with_api_key`] it stands for a proxy in front of Ollama that wants a
//! bearer token. Broken requests get a 400 and consume no reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::fake::{DisconnectGuard, Script, Served, body_response, lock, serve};

/// The one model `GET /api/tags` lists.
pub const MODEL_NAME: &str = "llama-fake:latest";
/// The `prompt_eval_count` of every answer.
pub const PROMPT_EVAL_COUNT: u64 = 26;
/// What the streamed replies that break off start to say.
const BROKEN_TEXT: &str = "this answer stops halfway and never finishes";
const CREATED_AT: &str = "2025-05-27T22:54:57.641643Z";
const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json; charset=utf-8";

/// One scripted answer to one `POST /api/chat`.
#[derive(Clone, Debug, PartialEq)]
pub enum OllamaReply {
    /// The assistant says this text (streamed word by word when asked to stream).
    Text(String),
    /// The assistant calls these tools, `(name, arguments)`, in this order, without ids.
    ToolCalls(Vec<(String, Value)>),
    /// An HTTP error with Ollama's body `{"error": message}`.
    Error {
        /// The HTTP status, like 404 for a model that is not pulled.
        status: u16,
        /// The `error` text.
        message: String,
        /// A `Retry-After` header in seconds, as a proxy or Ollama's cloud sends with 429.
        retry_after: Option<u64>,
    },
    /// Accepts the request and never answers.
    Stall,
    /// Sends this many lines of a streamed text answer, then nothing more, without
    /// closing. Unstreamed, sends half a body and stops.
    StallAfter(usize),
    /// Streams the start of a text answer, then `{"error": message}`, then closes (the
    /// status is already 200). Unstreamed, a 500 with that message.
    MidStreamError(String),
    /// Streams a whole text answer but closes without the `done: true` line. Unstreamed,
    /// closes after half a body.
    NoDone,
}

/// A fake Ollama server on 127.0.0.1. It stops when dropped.
pub struct FakeOllama {
    shared: Arc<Shared>,
    server: Served,
}

struct Shared {
    script: Script<OllamaReply>,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    api_key: Mutex<Option<String>>,
    disconnects: Arc<AtomicUsize>,
}

impl FakeOllama {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start(script: Vec<OllamaReply>) -> FakeOllama {
        let shared = Arc::new(Shared {
            script: Script::new(script),
            requests: Mutex::default(),
            authorizations: Mutex::default(),
            api_key: Mutex::default(),
            disconnects: Arc::default(),
        });
        let server = serve(router(shared.clone()), "ollama").await;
        FakeOllama { shared, server }
    }

    /// Requires `Authorization: Bearer <key>`, like a proxy in front of Ollama; other
    /// requests get a 401 and consume no reply.
    #[must_use]
    pub fn with_api_key(self, key: &str) -> FakeOllama {
        *lock(&self.shared.api_key) = Some(key.to_string());
        self
    }

    /// Once the script is used up, answers every further request with `reply` instead of
    /// the "fake script exhausted" error: for benchmarks and other loops of many calls.
    #[must_use]
    pub fn repeating(self, reply: OllamaReply) -> FakeOllama {
        self.shared.script.repeat(reply);
        self
    }

    /// The base URL a client is configured with, like `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The JSON bodies of the chat requests received, in order, including rejected ones.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// The `Authorization` header of every request received (chat and tags), in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        lock(&self.shared.authorizations).clone()
    }

    /// How many chat requests lost their client before the reply was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/tags", get(tags))
        // Ollama's router (gin) answers unknown paths in plain text.
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") })
        .with_state(shared)
}

impl Shared {
    /// Records the `Authorization` header; the 401 to send when a key is required and
    /// this is not it.
    fn check_key(&self, headers: &HeaderMap) -> Option<Response> {
        let seen = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        lock(&self.authorizations).push(seen.clone());
        let key = lock(&self.api_key).clone()?;
        (seen != Some(format!("Bearer {key}"))).then(|| error_response(401, "unauthorized", None))
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(resp) = shared.check_key(&headers) {
        return resp;
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(400, &e.to_string(), None),
    };
    lock(&shared.requests).push(request.clone());
    if let Err(message) = validate(&request) {
        return error_response(400, &message, None);
    }
    let guard = DisconnectGuard::new(shared.disconnects.clone());
    let Some(reply) = shared.script.next_reply() else {
        guard.finish();
        return error_response(500, "fake script exhausted", None);
    };
    // Ollama streams unless asked not to.
    let stream = request.get("stream") != Some(&Value::Bool(false));
    let model = request["model"].as_str().unwrap_or(MODEL_NAME).to_string();
    let answer = match reply {
        OllamaReply::Text(text) => Answer::Text(text),
        OllamaReply::ToolCalls(calls) => Answer::Calls(calls),
        OllamaReply::Error {
            status,
            message,
            retry_after,
        } => {
            guard.finish();
            return error_response(status, &message, retry_after);
        }
        OllamaReply::MidStreamError(message) if !stream => {
            guard.finish();
            return error_response(500, &message, None);
        }
        OllamaReply::Stall => std::future::pending().await,
        OllamaReply::StallAfter(n) if stream => {
            let lines = stream_lines(&model, &Answer::Text(BROKEN_TEXT.into()));
            return body_response(
                NDJSON,
                lines.into_iter().take(n).collect(),
                true,
                Some(guard),
            );
        }
        OllamaReply::MidStreamError(message) => {
            let mut lines = stream_lines(&model, &Answer::Text(BROKEN_TEXT.into()));
            lines.truncate(2);
            lines.push(format!("{}\n", json!({ "error": message })));
            guard.finish();
            return body_response(NDJSON, lines, false, None);
        }
        OllamaReply::NoDone if stream => {
            let mut lines = stream_lines(&model, &Answer::Text(BROKEN_TEXT.into()));
            lines.pop();
            guard.finish();
            return body_response(NDJSON, lines, false, None);
        }
        OllamaReply::StallAfter(_) => {
            let half = format!("{{\"model\":\"{model}\",\"created_at\":");
            return body_response(JSON, vec![half], true, Some(guard));
        }
        OllamaReply::NoDone => {
            let half = format!("{{\"model\":\"{model}\",\"created_at\":");
            guard.finish();
            return body_response(JSON, vec![half], false, None);
        }
    };
    if stream {
        return body_response(NDJSON, stream_lines(&model, &answer), false, Some(guard));
    }
    guard.finish();
    let mut whole = chunk(&model, answer.message());
    finish_chunk(&mut whole, answer.eval_count());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        whole.to_string(),
    )
        .into_response()
}

/// The 400s Ollama sends for the mistakes a client can make in the body.
fn validate(request: &Value) -> Result<(), String> {
    if request
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("model is required".into());
    }
    if request.get("stream").is_some_and(|s| !s.is_boolean()) {
        return Err(
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool"
                .into(),
        );
    }
    let messages = match request.get("messages") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err("json: cannot unmarshal object into Go struct field ChatRequest.messages of type []api.Message".into());
        }
    };
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !matches!(role, "system" | "user" | "assistant" | "tool") {
            return Err(format!("invalid role: {role:?}"));
        }
        if m.get("content").is_some_and(|c| !c.is_string()) {
            return Err("json: cannot unmarshal array into Go struct field Message.messages.content of type string".into());
        }
        let calls = m.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            if !call
                .pointer("/function/arguments")
                .is_some_and(Value::is_object)
            {
                return Err("json: cannot unmarshal string into Go struct field ToolCallFunction.messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments".into());
            }
        }
    }
    Ok(())
}

async fn tags(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(resp) = shared.check_key(&headers) {
        return resp;
    }
    Json(json!({
        "models": [{
            "name": MODEL_NAME,
            "model": MODEL_NAME,
            "modified_at": "2025-05-04T17:37:44.706015396-07:00",
            "size": 2_019_393_189_u64,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
        }],
    }))
    .into_response()
}

/// What the assistant says: text, or tool calls as `(name, arguments)`.
enum Answer {
    Text(String),
    Calls(Vec<(String, Value)>),
}

impl Answer {
    /// The whole `message` of an unstreamed answer.
    fn message(&self) -> Value {
        match self {
            Answer::Text(text) => json!({ "role": "assistant", "content": text }),
            Answer::Calls(calls) => json!({
                "role": "assistant",
                "content": "",
                "tool_calls": calls
                    .iter()
                    .enumerate()
                    .map(|(index, (name, arguments))| json!({
                        "function": { "index": index, "name": name, "arguments": arguments },
                    }))
                    .collect::<Vec<_>>(),
            }),
        }
    }

    /// One token a word, or made up but deterministic for calls.
    fn eval_count(&self) -> u64 {
        match self {
            Answer::Text(text) => text.split_inclusive(' ').count() as u64,
            Answer::Calls(calls) => calls
                .iter()
                .map(|(n, a)| (n.len() + a.to_string().len()) as u64 / 4 + 1)
                .sum(),
        }
    }
}

fn chunk(model: &str, message: Value) -> Value {
    json!({ "model": model, "created_at": CREATED_AT, "message": message, "done": false })
}

/// Turns a chunk into the last one: `done`, the reason and the counts.
fn finish_chunk(chunk: &mut Value, eval_count: u64) {
    chunk["done"] = json!(true);
    chunk["done_reason"] = json!("stop");
    chunk["total_duration"] = json!(4_883_583_458_u64);
    chunk["load_duration"] = json!(1_334_875);
    chunk["prompt_eval_count"] = json!(PROMPT_EVAL_COUNT);
    chunk["prompt_eval_duration"] = json!(342_546_000);
    chunk["eval_count"] = json!(eval_count);
    chunk["eval_duration"] = json!(4_535_599_000_u64);
}

/// The lines of a streamed answer: a chunk a word of text, or one chunk with all the tool
/// calls, then the `done` chunk with empty content and the counts.
fn stream_lines(model: &str, answer: &Answer) -> Vec<String> {
    let mut chunks: Vec<Value> = match answer {
        Answer::Text(text) => text
            .split_inclusive(' ')
            .map(|w| chunk(model, json!({ "role": "assistant", "content": w })))
            .collect(),
        Answer::Calls(_) => vec![chunk(model, answer.message())],
    };
    let mut last = chunk(model, json!({ "role": "assistant", "content": "" }));
    finish_chunk(&mut last, answer.eval_count());
    chunks.push(last);
    chunks.iter().map(|c| format!("{c}\n")).collect()
}

/// An HTTP error with Ollama's body `{"error": message}`.
fn error_response(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn a_streamed_tool_call_looks_like_ollama_sends_it() {
        let answer = Answer::Calls(vec![("list_dir".into(), json!({ "path": "src" }))]);
        let lines: String = stream_lines("qwen3", &answer)
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!("{}\n", crate::sorted_keys(&v))
            })
            .collect();
        expect![[r#"
            {"created_at":"2025-05-27T22:54:57.641643Z","done":false,"message":{"content":"","role":"assistant","tool_calls":[{"function":{"arguments":{"path":"src"},"index":0,"name":"list_dir"}}]},"model":"qwen3"}
            {"created_at":"2025-05-27T22:54:57.641643Z","done":true,"done_reason":"stop","eval_count":6,"eval_duration":4535599000,"load_duration":1334875,"message":{"content":"","role":"assistant"},"model":"qwen3","prompt_eval_count":26,"prompt_eval_duration":342546000,"total_duration":4883583458}
        "#]]
        .assert_eq(&lines);
    }

    #[test]
    fn validation_catches_what_ollama_refuses() {
        let ok = json!({ "model": "m", "messages": [
            { "role": "user", "content": "hi" },
            { "role": "assistant", "content": "", "tool_calls": [
                { "type": "function", "function": { "index": 0, "name": "x", "arguments": {} } },
            ] },
            { "role": "tool", "tool_name": "x", "content": "r" },
        ] });
        assert_eq!(validate(&ok), Ok(()));
        let mut text_args = ok.clone();
        text_args["messages"][1]["tool_calls"][0]["function"]["arguments"] = json!("{}");
        assert!(validate(&text_args).unwrap_err().contains("arguments"));
        let mut bad_role = ok.clone();
        bad_role["messages"][0]["role"] = json!("developer");
        assert!(validate(&bad_role).unwrap_err().contains("invalid role"));
        let mut no_model = ok;
        no_model["model"] = json!("");
        assert_eq!(validate(&no_model).unwrap_err(), "model is required");
    }
}
