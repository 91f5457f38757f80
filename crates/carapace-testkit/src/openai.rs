//! A fake OpenAI Chat Completions server that plays a script of replies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::fake::{DisconnectGuard, Script, Served, bind, body_response, lock, no_cache};

/// The `created` timestamp of every object, fixed so outputs are reproducible.
const CREATED: u64 = 1_700_000_000;
/// The one model `GET /v1/models` lists.
const MODEL_ID: &str = "fake-model";
/// What [`Reply::StallAfter`] starts to say.
const STALLING_TEXT: &str = "this answer stops halfway and never finishes";
/// Arguments of streamed tool calls arrive in pieces of this many characters.
const ARGUMENT_PIECE_CHARS: usize = 5;

/// One scripted answer to one `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The assistant says this text (streamed word by word when asked to stream).
    Text(String),
    /// The assistant calls these tools, `(name, arguments)`, in this order.
    ToolCalls(Vec<(String, Value)>),
    /// The assistant calls one tool with arguments exactly as given, possibly malformed.
    RawToolCall {
        /// The tool name.
        name: String,
        /// The arguments text.
        arguments: String,
    },
    /// An HTTP error with an OpenAI error body.
    Error {
        /// The HTTP status.
        status: u16,
        /// The `error.message` of the body.
        message: String,
    },
    /// Waits this long, then answers with the inner reply.
    Delayed(Duration, Box<Reply>),
    /// Accepts the request and never answers.
    Stall,
    /// Sends the response headers and this many stream chunks of a text answer, then
    /// nothing more, without closing. Unstreamed, sends half a body and stops.
    StallAfter(usize),
}

/// A fake OpenAI-compatible server on 127.0.0.1. It stops when dropped.
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    server: Served,
}

struct Shared {
    script: Script<Reply>,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    api_key: Mutex<Option<String>>,
    next_call: AtomicU64,
    next_completion: AtomicU64,
    disconnects: Arc<AtomicUsize>,
}

impl FakeOpenAi {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start(script: Vec<Reply>) -> FakeOpenAi {
        FakeOpenAi::bind(0, script)
            .await
            .expect("bind the fake openai server on 127.0.0.1")
    }

    /// Starts the server on `127.0.0.1:port` (0 picks a free one).
    pub async fn bind(port: u16, script: Vec<Reply>) -> std::io::Result<FakeOpenAi> {
        let shared = Arc::new(Shared {
            script: Script::new(script),
            requests: Mutex::default(),
            authorizations: Mutex::default(),
            api_key: Mutex::default(),
            next_call: AtomicU64::new(1),
            next_completion: AtomicU64::new(1),
            disconnects: Arc::default(),
        });
        let server = bind(port, router(shared.clone())).await?;
        Ok(FakeOpenAi { shared, server })
    }

    /// Requires `Authorization: Bearer <key>`; other requests get a 401 with an OpenAI
    /// error body and consume no reply.
    #[must_use]
    pub fn with_api_key(self, key: &str) -> FakeOpenAi {
        *lock(&self.shared.api_key) = Some(key.to_string());
        self
    }

    /// Once the script is used up, answers every further request with `reply` instead of
    /// the "fake script exhausted" error: for benchmarks and other loops of many calls.
    #[must_use]
    pub fn repeating(self, reply: Reply) -> FakeOpenAi {
        self.shared.script.repeat(reply);
        self
    }

    /// The base URL a client is configured with, like `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.server.addr())
    }

    /// Appends a reply to the script.
    pub fn push(&self, reply: Reply) {
        self.shared.script.push(reply);
    }

    /// The JSON bodies of the chat requests received, in order, including rejected ones.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// The `Authorization` header of every request received (chat and models), in order.
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
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .with_state(shared)
}

impl Shared {
    /// The 401 to send when a key is required and the request lacks it.
    fn auth_failure(&self, headers: &HeaderMap) -> Option<Response> {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        lock(&self.authorizations).push(sent.map(str::to_string));
        let key = lock(&self.api_key).clone()?;
        match sent {
            Some(sent) if sent == format!("Bearer {key}") => None,
            None => Some(error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )),
            Some(_) => Some(error_response(401, "Incorrect API key provided.")),
        }
    }
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth_failure = shared.auth_failure(&headers);
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                400,
                &format!("We could not parse the JSON body of your request. ({e})"),
            );
        }
    };
    lock(&shared.requests).push(request.clone());
    if let Some(resp) = auth_failure {
        return resp;
    }
    let guard = DisconnectGuard::new(shared.disconnects.clone());
    let Some(mut reply) = shared.script.next_reply() else {
        guard.finish();
        return error_response(500, "fake script exhausted");
    };
    while let Reply::Delayed(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let include_usage = request.pointer("/stream_options/include_usage") == Some(&json!(true));
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(MODEL_ID)
        .to_string();
    let id = format!(
        "chatcmpl-fake-{}",
        shared.next_completion.fetch_add(1, Ordering::SeqCst)
    );
    let usage = usage(&request, &reply);
    let answer = match reply {
        Reply::Text(text) => Answer::Text(text),
        Reply::ToolCalls(calls) => Answer::Calls(
            calls
                .into_iter()
                .map(|(name, args)| (shared.call_id(), name, args.to_string()))
                .collect(),
        ),
        Reply::RawToolCall { name, arguments } => {
            Answer::Calls(vec![(shared.call_id(), name, arguments)])
        }
        Reply::Error { status, message } => {
            guard.finish();
            return error_response(status, &message);
        }
        Reply::Stall => std::future::pending().await,
        Reply::StallAfter(n) if stream => {
            let text = Answer::Text(STALLING_TEXT.into());
            let events = stream_events(&id, &model, &text, include_usage.then_some(usage));
            return sse_response(events.into_iter().take(n).collect(), true, guard);
        }
        Reply::StallAfter(_) => {
            let half = format!("{{\"id\":\"{id}\",\"object\":\"chat.completion\",");
            return no_cache(body_response(
                "application/json",
                vec![half],
                true,
                Some(guard),
            ));
        }
        Reply::Delayed(..) => unreachable!("delays were unwrapped above"),
    };
    if stream {
        let events = stream_events(&id, &model, &answer, include_usage.then_some(usage));
        return sse_response(events, false, guard);
    }
    let completion = completion(&id, &model, &answer, usage);
    guard.finish();
    Json(completion).into_response()
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(resp) = shared.auth_failure(&headers) {
        return resp;
    }
    Json(json!({
        "object": "list",
        "data": [{ "id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "carapace-testkit" }],
    }))
    .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(404, &format!("Invalid URL ({method} {})", uri.path()))
}

impl Shared {
    fn call_id(&self) -> String {
        format!("call_{}", self.next_call.fetch_add(1, Ordering::SeqCst))
    }
}

/// What the assistant says: text, or tool calls as `(id, name, arguments)`.
enum Answer {
    Text(String),
    Calls(Vec<(String, String, String)>),
}

impl Answer {
    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "stop",
            Answer::Calls(_) => "tool_calls",
        }
    }

    fn tool_calls_json(calls: &[(String, String, String)]) -> Value {
        calls
            .iter()
            .map(|(id, name, args)| {
                json!({ "id": id, "type": "function", "function": { "name": name, "arguments": args } })
            })
            .collect()
    }
}

/// Token counts made up from the sizes of the texts, deterministic.
fn usage(request: &Value, reply: &Reply) -> Value {
    let prompt_chars: usize = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content")?.as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    let completion_chars = match reply {
        Reply::Text(t) => t.len(),
        Reply::ToolCalls(calls) => calls
            .iter()
            .map(|(n, a)| n.len() + a.to_string().len())
            .sum(),
        Reply::RawToolCall { name, arguments } => name.len() + arguments.len(),
        _ => STALLING_TEXT.len(),
    };
    let prompt = prompt_chars / 4 + 1;
    let completion = completion_chars / 4 + 1;
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

fn completion(id: &str, model: &str, answer: &Answer, usage: Value) -> Value {
    let message = match answer {
        Answer::Text(text) => json!({ "role": "assistant", "content": text, "refusal": null }),
        Answer::Calls(calls) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": Answer::tool_calls_json(calls),
            "refusal": null,
        }),
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": answer.finish_reason(),
        }],
        "usage": usage,
        "system_fingerprint": null,
    })
}

/// The SSE events of a streamed answer, as OpenAI sends them: the role first, then the
/// text word by word or each tool call with its arguments in pieces, then the finish
/// reason, the usage when asked for, and `[DONE]`.
fn stream_events(id: &str, model: &str, answer: &Answer, usage: Option<Value>) -> Vec<String> {
    let with_usage = usage.is_some();
    let chunk = |delta: Value, finish_reason: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    match answer {
        Answer::Text(text) => {
            events.push(chunk(
                json!({ "role": "assistant", "content": "", "refusal": null }),
                Value::Null,
            ));
            for word in text.split_inclusive(' ') {
                events.push(chunk(json!({ "content": word }), Value::Null));
            }
        }
        Answer::Calls(calls) => {
            events.push(chunk(
                json!({ "role": "assistant", "content": null, "refusal": null }),
                Value::Null,
            ));
            for (index, (call_id, name, args)) in calls.iter().enumerate() {
                events.push(chunk(
                    json!({ "tool_calls": [{
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": { "name": name, "arguments": "" },
                    }] }),
                    Value::Null,
                ));
                let chars: Vec<char> = args.chars().collect();
                for piece in chars.chunks(ARGUMENT_PIECE_CHARS) {
                    let piece: String = piece.iter().collect();
                    events.push(chunk(
                        json!({ "tool_calls": [{ "index": index, "function": { "arguments": piece } }] }),
                        Value::Null,
                    ));
                }
            }
        }
    }
    events.push(chunk(json!({}), json!(answer.finish_reason())));
    if let Some(usage) = usage {
        let c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        });
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn sse_response(events: Vec<String>, stall: bool, guard: DisconnectGuard) -> Response {
    let content_type = "text/event-stream; charset=utf-8";
    no_cache(body_response(content_type, events, stall, Some(guard)))
}

/// An HTTP error with the body OpenAI sends: `{"error":{"message","type","param","code"}}`.
fn error_response(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        429 => ("requests", json!("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    let body =
        json!({ "error": { "message": message, "type": kind, "param": null, "code": code } });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        // As OpenAI does when it knows when the limit resets.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    }
    response
}

/// Why a script file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad fake script: {0}")]
pub struct ScriptError(String);

/// Parses a script for the `fake-openai` program: a JSON array of replies, each one of
/// `{"text": "..."}`, `{"tool_calls": [{"name": "...", "arguments": {...}}]}`,
/// `{"raw_tool_call": {"name": "...", "arguments": "..."}}`,
/// `{"error": {"status": 429, "message": "..."}}`, `{"delayed": {"ms": 500, "reply": ...}}`,
/// `"stall"` or `{"stall_after": 3}`.
pub fn parse_script(text: &str) -> Result<Vec<Reply>, ScriptError> {
    let script: Value =
        serde_json::from_str(text).map_err(|e| ScriptError(format!("not json: {e}")))?;
    let replies = script
        .as_array()
        .ok_or_else(|| ScriptError("the script must be a json array of replies".into()))?;
    replies
        .iter()
        .enumerate()
        .map(|(i, r)| reply_from_json(r).map_err(|e| ScriptError(format!("reply {i}: {e}"))))
        .collect()
}

fn reply_from_json(v: &Value) -> Result<Reply, String> {
    if v.as_str() == Some("stall") {
        return Ok(Reply::Stall);
    }
    let only = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next());
    let Some((kind, body)) = only else {
        return Err("a reply is \"stall\" or an object with one key".into());
    };
    let str_field = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("{kind}.{key} must be a string"))
    };
    let int_field = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_u64)
            .ok_or(format!("{kind}.{key} must be a whole number"))
    };
    Ok(match kind.as_str() {
        "text" => Reply::Text(body.as_str().ok_or("text must be a string")?.to_string()),
        "tool_calls" => Reply::ToolCalls(
            body.as_array()
                .ok_or("tool_calls must be an array")?
                .iter()
                .map(|c| {
                    Ok((
                        str_field(c, "name")?,
                        c.get("arguments").cloned().unwrap_or(json!({})),
                    ))
                })
                .collect::<Result<_, String>>()?,
        ),
        "raw_tool_call" => Reply::RawToolCall {
            name: str_field(body, "name")?,
            arguments: str_field(body, "arguments")?,
        },
        "error" => Reply::Error {
            status: u16::try_from(int_field(body, "status")?)
                .map_err(|_| "error.status is not a status")?,
            message: str_field(body, "message")?,
        },
        "delayed" => Reply::Delayed(
            Duration::from_millis(int_field(body, "ms")?),
            Box::new(reply_from_json(
                body.get("reply").ok_or("delayed.reply is missing")?,
            )?),
        ),
        "stall_after" => Reply::StallAfter(
            body.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or("stall_after must be a whole number")?,
        ),
        other => return Err(format!("unknown reply kind {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_every_kind_of_reply() {
        let script = r#"[
            {"text": "hi"},
            {"tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]},
            {"raw_tool_call": {"name": "x", "arguments": "{oops"}},
            {"error": {"status": 429, "message": "slow down"}},
            {"delayed": {"ms": 5, "reply": "stall"}},
            {"stall_after": 2}
        ]"#;
        assert_eq!(
            parse_script(script).unwrap(),
            vec![
                Reply::Text("hi".into()),
                Reply::ToolCalls(vec![("list_dir".into(), json!({"path": "."}))]),
                Reply::RawToolCall {
                    name: "x".into(),
                    arguments: "{oops".into()
                },
                Reply::Error {
                    status: 429,
                    message: "slow down".into()
                },
                Reply::Delayed(Duration::from_millis(5), Box::new(Reply::Stall)),
                Reply::StallAfter(2),
            ]
        );
        let err = parse_script(r#"[{"text": "a"}, {"shout": "b"}]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"bad fake script: reply 1: unknown reply kind "shout""#
        );
    }
}

#[cfg(test)]
mod wire_tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn a_streamed_tool_call_looks_like_openai_sends_it() {
        let answer = Answer::Calls(vec![(
            "call_1".into(),
            "list_dir".into(),
            r#"{"path":"src/a"}"#.into(),
        )]);
        let usage = json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 });
        // Keys sorted, so the snapshot holds whatever serde_json's `preserve_order` is.
        let events: String = stream_events("chatcmpl-fake-1", "m", &answer, Some(usage))
            .iter()
            .map(
                |e| match serde_json::from_str(e.trim_start_matches("data: ")) {
                    Ok(v) => format!("data: {}\n\n", crate::sorted_keys(&v)),
                    Err(_) => e.clone(),
                },
            )
            .collect();
        expect![[r#"
            data: {"choices":[{"delta":{"content":null,"refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"list_dir"},"id":"call_1","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"pat"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"h\":\"s"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"rc/a\""},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":null}

            data: {"choices":[],"created":1700000000,"id":"chatcmpl-fake-1","model":"m","object":"chat.completion.chunk","system_fingerprint":null,"usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5}}

            data: [DONE]

        "#]]
        .assert_eq(&events);
    }
}
