//! A fake Amazon Bedrock server: Converse (`POST /model/{modelId}/converse`),
//! ConverseStream (`POST /model/{modelId}/converse-stream`, answered as binary
//! `application/vnd.amazon.eventstream` frames) and the control plane's
//! `GET /foundation-models`, in the shapes AWS documents.
//!
//! Every request must carry a valid AWS Signature Version 4 for [`REGION`], service
//! `bedrock`, [`ACCESS_KEY_ID`] and [`SECRET_ACCESS_KEY`] (and the session token, when
//! one is set): the fake recomputes the signature independently of the client and answers
//! AWS's 403s (`InvalidSignatureException` and the like) when it does not match. It then
//! checks what Bedrock checks in a body and a client can get wrong (roles that alternate
//! starting with `user`, no blank text, every `toolUse` answered by a `toolResult` in the
//! next message, a `toolConfig` whenever tool blocks appear) and answers a
//! `ValidationException` otherwise. Refused requests consume no reply. Errors carry AWS's
//! body `{"message": ...}` and the `x-amzn-ErrorType` header.

mod sigv4;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::fake::{DisconnectGuard, Script, Served, body_response, lock, serve};

/// The region the fake signs for.
pub const REGION: &str = "us-east-1";
/// The access key id every request must be signed with.
pub const ACCESS_KEY_ID: &str = "AKIAFAKEBEDROCK7Q2X";
/// The secret access key every request must be signed with.
pub const SECRET_ACCESS_KEY: &str = "fAkE/bedrock+Secret/9d1c0e7b2a4f6e8d0c2b4a6f";
/// The one text model `GET /foundation-models` lists (an image model is listed too).
pub const MODEL_ID: &str = "anthropic.claude-fake-v1:0";
/// The `inputTokens` of every answer.
pub const INPUT_TOKENS: u64 = 17;
/// The `cacheReadInputTokens` of every answer.
pub const CACHE_READ_INPUT_TOKENS: u64 = 3;
/// What the streamed replies that break off start to say.
const BROKEN_TEXT: &str = "this answer stops halfway and never finishes";
/// Arguments of streamed tool calls arrive in pieces of this many characters.
const ARGUMENT_PIECE_CHARS: usize = 4;
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
const JSON: &str = "application/json";
/// The message AWS sends with an `InvalidSignatureException`.
pub const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// One scripted answer to one Converse or ConverseStream request.
#[derive(Clone, Debug, PartialEq)]
pub enum BedrockReply {
    /// The assistant says this text (streamed word by word when asked to stream).
    Text(String),
    /// The assistant calls these tools, `(name, input)`, in this order.
    ToolCalls(Vec<(String, Value)>),
    /// An HTTP error with AWS's body `{"message"}` and `x-amzn-ErrorType: <kind>`.
    Error {
        /// The HTTP status, like 429.
        status: u16,
        /// The error kind, like `ThrottlingException`.
        kind: String,
        /// The message.
        message: String,
        /// A `Retry-After` header in seconds; Bedrock itself sends none, a proxy may.
        retry_after: Option<u64>,
    },
    /// Accepts the request and never answers.
    Stall,
    /// Sends this many frames of a streamed text answer, then nothing more, without
    /// closing. Unstreamed, sends half a body and stops.
    StallAfter(usize),
    /// Streams the start of a text answer, then an exception frame of this kind (like
    /// `throttlingException`), then closes. Unstreamed, the HTTP error of that kind.
    MidStreamException {
        /// The `:exception-type`, like `modelStreamErrorException`.
        kind: String,
        /// The message of its payload.
        message: String,
    },
    /// Streams a whole text answer but closes without `messageStop` and `metadata`.
    /// Unstreamed, closes after half a body.
    NoMessageStop,
    /// Streams the start of a text answer, then a frame whose message checksum is wrong.
    /// Unstreamed, a plain text answer.
    BadChecksum,
}

/// What a client sent on one request, for tests of the signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    /// The method.
    pub method: String,
    /// The path and query exactly as sent, still percent-encoded.
    pub path: String,
    /// `authorization`.
    pub authorization: Option<String>,
    /// `x-amz-date`.
    pub amz_date: Option<String>,
    /// `x-amz-content-sha256`.
    pub content_sha256: Option<String>,
    /// `x-amz-security-token`.
    pub security_token: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// The kind of the 403 the signature got, or `None` when it was valid.
    pub refused: Option<String>,
}

/// A fake Bedrock server on 127.0.0.1. It stops when dropped.
pub struct FakeBedrock {
    shared: Arc<Shared>,
    server: Served,
}

struct Shared {
    script: Script<BedrockReply>,
    requests: Mutex<Vec<Value>>,
    model_ids: Mutex<Vec<String>>,
    seen: Mutex<Vec<SeenRequest>>,
    session_token: Mutex<Option<String>>,
    next_id: AtomicU64,
    disconnects: Arc<AtomicUsize>,
}

impl FakeBedrock {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start(script: Vec<BedrockReply>) -> FakeBedrock {
        let shared = Arc::new(Shared {
            script: Script::new(script),
            requests: Mutex::default(),
            model_ids: Mutex::default(),
            seen: Mutex::default(),
            session_token: Mutex::default(),
            next_id: AtomicU64::new(1),
            disconnects: Arc::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = serve(app, "bedrock").await;
        FakeBedrock { shared, server }
    }

    /// Requires temporary credentials: `x-amz-security-token: <token>`, signed.
    #[must_use]
    pub fn with_session_token(self, token: &str) -> FakeBedrock {
        *lock(&self.shared.session_token) = Some(token.to_string());
        self
    }

    /// Once the script is used up, answers every further request with `reply` instead of
    /// the "fake script exhausted" error: for benchmarks and other loops of many calls.
    #[must_use]
    pub fn repeating(self, reply: BedrockReply) -> FakeBedrock {
        self.shared.script.repeat(reply);
        self
    }

    /// The endpoint a client is configured with, like `http://127.0.0.1:PORT`; it serves
    /// both the runtime and the control plane.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The JSON bodies of the Converse requests whose signature was valid, in order,
    /// including those refused as invalid.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// The model id of each Converse request in [`FakeBedrock::requests`], decoded from
    /// the path.
    pub fn model_ids(&self) -> Vec<String> {
        lock(&self.shared.model_ids).clone()
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }

    /// How many Converse requests lost their client before the reply was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }
}

/// Checks the signature of every request first, as AWS does, then routes it.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = lock(&shared.session_token).clone();
    let verdict = sigv4::verify(
        &sigv4::Received {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            body: &body,
        },
        &sigv4::Expected {
            access_key_id: ACCESS_KEY_ID,
            secret_access_key: SECRET_ACCESS_KEY,
            session_token: token.as_deref(),
            region: REGION,
            service: "bedrock",
        },
    );
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    lock(&shared.seen).push(SeenRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
        authorization: text("authorization"),
        amz_date: text("x-amz-date"),
        content_sha256: text("x-amz-content-sha256"),
        security_token: text("x-amz-security-token"),
        content_type: text("content-type"),
        refused: verdict.as_ref().err().map(|r| r.kind.to_string()),
    });
    if let Err(refusal) = verdict {
        return error_response(403, refusal.kind, &refusal.message, None);
    }
    let path = uri.path();
    if method == Method::GET && path == "/foundation-models" {
        return foundation_models(uri.query().unwrap_or(""));
    }
    let operation = path
        .strip_prefix("/model/")
        .and_then(|rest| rest.rsplit_once('/'));
    match (method, operation) {
        (Method::POST, Some((model, "converse"))) => {
            converse(&shared, &sigv4::percent_decode(model), &body, false).await
        }
        (Method::POST, Some((model, "converse-stream"))) => {
            converse(&shared, &sigv4::percent_decode(model), &body, true).await
        }
        _ => error_response(404, "UnknownOperationException", "Unknown operation", None),
    }
}

async fn converse(shared: &Arc<Shared>, model: &str, body: &[u8], stream: bool) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return error_response(
                400,
                "SerializationException",
                "Unexpected token in the request body",
                None,
            );
        }
    };
    lock(&shared.requests).push(request.clone());
    lock(&shared.model_ids).push(model.to_string());
    if let Err(message) = validate(&request) {
        return error_response(400, "ValidationException", &message, None);
    }
    let guard = DisconnectGuard::new(shared.disconnects.clone());
    let Some(reply) = shared.script.next_reply() else {
        guard.finish();
        return error_response(
            500,
            "InternalServerException",
            "fake script exhausted",
            None,
        );
    };
    let broken = || Answer::Text(BROKEN_TEXT.into());
    let answer = match reply {
        BedrockReply::Text(text) => Answer::Text(text),
        BedrockReply::ToolCalls(calls) => Answer::Calls(
            calls
                .into_iter()
                .map(|(name, input)| {
                    let id = format!(
                        "tooluse_fake_{}",
                        shared.next_id.fetch_add(1, Ordering::SeqCst)
                    );
                    (id, name, input)
                })
                .collect(),
        ),
        BedrockReply::Error {
            status,
            kind,
            message,
            retry_after,
        } => {
            guard.finish();
            return error_response(status, &kind, &message, retry_after);
        }
        BedrockReply::Stall => std::future::pending().await,
        BedrockReply::MidStreamException { kind, message } if !stream => {
            guard.finish();
            let (status, kind) = http_error_of(&kind);
            return error_response(status, &kind, &message, None);
        }
        BedrockReply::BadChecksum if !stream => Answer::Text(BROKEN_TEXT.into()),
        BedrockReply::StallAfter(n) if stream => {
            let frames = stream_frames(&broken()).into_iter().take(n).collect();
            return body_response(EVENT_STREAM, frames, true, Some(guard));
        }
        BedrockReply::MidStreamException { kind, message } => {
            // messageStart and two text deltas.
            let mut frames = stream_frames(&broken());
            frames.truncate(3);
            frames.push(exception_frame(&kind, &message));
            guard.finish();
            return body_response(EVENT_STREAM, frames, false, None);
        }
        BedrockReply::NoMessageStop if stream => {
            let mut frames = stream_frames(&broken());
            frames.truncate(frames.len() - 2);
            guard.finish();
            return body_response(EVENT_STREAM, frames, false, None);
        }
        BedrockReply::BadChecksum => {
            let mut frames = stream_frames(&broken());
            frames.truncate(3);
            let last = frames.last_mut().expect("three frames");
            let at = last.len() - 1;
            last[at] ^= 0xff;
            guard.finish();
            return body_response(EVENT_STREAM, frames, false, None);
        }
        BedrockReply::StallAfter(_) => {
            return body_response(JSON, vec!["{\"output\":{\"message\":"], true, Some(guard));
        }
        BedrockReply::NoMessageStop => {
            guard.finish();
            return body_response(JSON, vec!["{\"output\":{\"message\":"], false, None);
        }
    };
    if stream {
        // Each frame in two pieces, so frames arrive cut in the middle.
        let pieces = stream_frames(&answer)
            .into_iter()
            .flat_map(|f| {
                let (a, b) = f.split_at(f.len() / 2);
                [a.to_vec(), b.to_vec()]
            })
            .collect();
        return body_response(EVENT_STREAM, pieces, false, Some(guard));
    }
    guard.finish();
    let output = json!({
        "output": { "message": { "role": "assistant", "content": answer.content() } },
        "stopReason": answer.stop_reason(),
        "usage": usage(answer.output_tokens()),
        "metrics": { "latencyMs": 321 },
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        output.to_string(),
    )
        .into_response()
}

/// The `ValidationException`s Bedrock answers for the mistakes a client can make in the
/// body.
fn validate(request: &Value) -> Result<(), String> {
    let allowed = [
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "guardrailConfig",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
    ];
    if let Some(key) = request
        .as_object()
        .and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())))
    {
        return Err(format!(
            "Malformed input request: extraneous key [{key}] is not permitted, please reformat your input and try again."
        ));
    }
    if let Some(max) = request.pointer("/inferenceConfig/maxTokens")
        && max.as_u64().is_none_or(|m| m == 0)
    {
        return Err("1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1".into());
    }
    for (i, block) in request
        .get("system")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if block
            .get("text")
            .and_then(Value::as_str)
            .is_none_or(|t| t.trim().is_empty())
        {
            return Err(format!(
                "The text field in the SystemContentBlock object at system.{i} is blank. Add text to the text field, and try again."
            ));
        }
    }
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("A conversation must start with a user message. Try again with a conversation that starts with a user message.")?;
    let has_tools = request
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let mut expected_results: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if i == 0 && role != "user" {
            return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
        }
        if role != if i % 2 == 0 { "user" } else { "assistant" } {
            return Err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into());
        }
        let blocks = m
            .get("content")
            .and_then(Value::as_array)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."))?;
        let mut results = Vec::new();
        let mut uses = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            if let Some(text) = b.get("text") {
                if text.as_str().is_none_or(|t| t.trim().is_empty()) {
                    return Err(format!(
                        "The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text field, and try again."
                    ));
                }
            } else if let Some(tool_use) = b.get("toolUse") {
                uses.push(
                    tool_use
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
            } else if let Some(result) = b.get("toolResult") {
                results.push(
                    result
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
            } else {
                return Err(format!("messages.{i}.content.{j}: unknown content block"));
            }
        }
        let has_tool_blocks = !uses.is_empty() || !results.is_empty();
        if has_tool_blocks && !has_tools {
            return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
        }
        if results != expected_results {
            return Err(format!(
                "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                expected_results.join(", ")
            ));
        }
        expected_results = uses;
    }
    Ok(())
}

/// `ListFoundationModels`, filtered by `byOutputModality` like the real one.
fn foundation_models(query: &str) -> Response {
    let summary = |id: &str, name: &str, output: &str| {
        json!({
            "modelArn": format!("arn:aws:bedrock:{REGION}::foundation-model/{id}"),
            "modelId": id,
            "modelName": name,
            "providerName": "Fake",
            "inputModalities": ["TEXT"],
            "outputModalities": [output],
            "responseStreamingSupported": output == "TEXT",
            "customizationsSupported": [],
            "inferenceTypesSupported": ["ON_DEMAND"],
            "modelLifecycle": { "status": "ACTIVE" },
        })
    };
    let all = [
        summary(MODEL_ID, "Claude Fake", "TEXT"),
        summary("fake.image-generator-v1:0", "Image Fake", "IMAGE"),
    ];
    let wanted = query
        .split('&')
        .find_map(|p| p.strip_prefix("byOutputModality="));
    let models: Vec<Value> = all
        .into_iter()
        .filter(|m| wanted.is_none_or(|w| m["outputModalities"][0] == w))
        .collect();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        json!({ "modelSummaries": models }).to_string(),
    )
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

    fn content(&self) -> Vec<Value> {
        match self {
            Answer::Text(text) => vec![json!({ "text": text })],
            Answer::Calls(calls) => calls
                .iter()
                .map(|(id, name, input)| {
                    json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } })
                })
                .collect(),
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
        "inputTokens": INPUT_TOKENS,
        "outputTokens": output_tokens,
        "totalTokens": INPUT_TOKENS + CACHE_READ_INPUT_TOKENS + output_tokens,
        "cacheReadInputTokens": CACHE_READ_INPUT_TOKENS,
        "cacheWriteInputTokens": 0,
    })
}

/// One event stream frame with these string headers and this payload: the prelude
/// (total length, headers length, their CRC32), the headers (type 7, string), the
/// payload and the CRC32 of all before it.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(u8::try_from(name.len()).expect("a header name under 256 bytes"));
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(7);
        let len = u16::try_from(value.len()).expect("a header value under 64 KiB");
        encoded.extend_from_slice(&len.to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let total = 12 + encoded.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    let total = u32::try_from(total).expect("a frame under 4 GiB");
    let headers_len = u32::try_from(encoded.len()).expect("headers under 4 GiB");
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&headers_len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out
}

/// An event frame as ConverseStream sends it. Bedrock pads every payload with a `p` field
/// of varying length so the size of a frame does not tell its content.
pub fn event_frame(event_type: &str, mut payload: Value) -> Vec<u8> {
    const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = payload.to_string().len() % PADDING.len();
    payload["p"] = json!(&PADDING[..len.max(1)]);
    frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// An exception frame, like the one ConverseStream ends with on a mid-stream failure.
pub fn exception_frame(kind: &str, message: &str) -> Vec<u8> {
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({ "message": message }).to_string().as_bytes(),
    )
}

/// The frames of a streamed answer in the documented order: `messageStart`; per text
/// block its deltas (text blocks have no start event) and a `contentBlockStop`; per tool
/// call a `contentBlockStart` with its id and name, its input in pieces and a
/// `contentBlockStop`; then `messageStop` and `metadata`.
fn stream_frames(answer: &Answer) -> Vec<Vec<u8>> {
    let mut frames = vec![event_frame("messageStart", json!({ "role": "assistant" }))];
    match answer {
        Answer::Text(text) => {
            for word in text.split_inclusive(' ') {
                frames.push(event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "text": word } }),
                ));
            }
            frames.push(event_frame(
                "contentBlockStop",
                json!({ "contentBlockIndex": 0 }),
            ));
        }
        Answer::Calls(calls) => {
            for (index, (id, name, input)) in calls.iter().enumerate() {
                frames.push(event_frame(
                    "contentBlockStart",
                    json!({
                        "contentBlockIndex": index,
                        "start": { "toolUse": { "toolUseId": id, "name": name } },
                    }),
                ));
                let chars: Vec<char> = input.to_string().chars().collect();
                for piece in chars.chunks(ARGUMENT_PIECE_CHARS) {
                    let piece: String = piece.iter().collect();
                    frames.push(event_frame(
                        "contentBlockDelta",
                        json!({ "contentBlockIndex": index, "delta": { "toolUse": { "input": piece } } }),
                    ));
                }
                frames.push(event_frame(
                    "contentBlockStop",
                    json!({ "contentBlockIndex": index }),
                ));
            }
        }
    }
    frames.push(event_frame(
        "messageStop",
        json!({ "stopReason": answer.stop_reason() }),
    ));
    frames.push(event_frame(
        "metadata",
        json!({ "usage": usage(answer.output_tokens()), "metrics": { "latencyMs": 321 } }),
    ));
    frames
}

/// The HTTP status and error kind of a stream exception kind (`throttlingException` is
/// a 429 `ThrottlingException`).
fn http_error_of(kind: &str) -> (u16, String) {
    let status = match kind {
        "validationException" => 400,
        "modelStreamErrorException" => 424,
        "throttlingException" => 429,
        "serviceUnavailableException" => 503,
        _ => 500,
    };
    let mut chars = kind.chars();
    let kind = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    (status, kind)
}

/// An AWS error: `{"message": ...}` with `x-amzn-ErrorType` and `x-amzn-RequestId`.
fn error_response(status: u16, kind: &str, message: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, JSON.to_string()),
            (
                header::HeaderName::from_static("x-amzn-errortype"),
                kind.to_string(),
            ),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                "7f0c3a52-fake-4b1e-9d2a-0c1e5b7a9f31".to_string(),
            ),
        ],
        json!({ "message": message }).to_string(),
    )
        .into_response();
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
    fn a_frame_has_the_documented_layout() {
        let f = frame(&[(":event-type", "x")], b"{}");
        // prelude 12 + header (1 + 11 + 1 + 2 + 1) + payload 2 + crc 4
        assert_eq!(f.len(), 34);
        assert_eq!(&f[..8], &[0, 0, 0, 34, 0, 0, 0, 16]);
        assert_eq!(&f[8..12], &crc32fast::hash(&f[..8]).to_be_bytes());
        assert_eq!(f[12], 11);
        assert_eq!(&f[13..24], b":event-type");
        assert_eq!(&f[24..27], &[7, 0, 1]);
        assert_eq!(&f[28..30], b"{}");
        assert_eq!(&f[30..], &crc32fast::hash(&f[..30]).to_be_bytes());
    }

    #[test]
    fn validation_catches_what_bedrock_refuses() {
        let tools =
            json!({ "tools": [{ "toolSpec": { "name": "x", "inputSchema": { "json": {} } } }] });
        let ok = json!({
            "messages": [
                { "role": "user", "content": [{ "text": "hi" }] },
                { "role": "assistant", "content": [{ "toolUse": { "toolUseId": "t1", "name": "x", "input": {} } }] },
                { "role": "user", "content": [
                    { "toolResult": { "toolUseId": "t1", "content": [{ "text": "r" }] } },
                    { "text": "more" },
                ] },
            ],
            "toolConfig": tools,
        });
        assert_eq!(validate(&ok), Ok(()));
        let mut no_config = ok.clone();
        no_config.as_object_mut().unwrap().remove("toolConfig");
        assert!(validate(&no_config).unwrap_err().contains("toolConfig"));
        let mut no_result = ok.clone();
        no_result["messages"][2]["content"] = json!([{ "text": "no" }]);
        assert!(
            validate(&no_result)
                .unwrap_err()
                .contains("Expected toolResult")
        );
        let mut blank = ok.clone();
        blank["messages"][0]["content"] = json!([{ "text": " " }]);
        assert!(validate(&blank).unwrap_err().contains("is blank"));
        let mut extra = ok.clone();
        extra["model"] = json!("m");
        assert!(
            validate(&extra)
                .unwrap_err()
                .contains("extraneous key [model]")
        );
        let mut twice = ok;
        twice["messages"][1]["role"] = json!("user");
        assert!(validate(&twice).unwrap_err().contains("alternate"));
    }

    #[test]
    fn stream_exceptions_become_their_http_errors() {
        let got: Vec<(u16, String)> = [
            "throttlingException",
            "modelStreamErrorException",
            "internalServerException",
        ]
        .iter()
        .map(|k| http_error_of(k))
        .collect();
        expect![[r#"
            [(429, "ThrottlingException"), (424, "ModelStreamErrorException"), (500, "InternalServerException")]
        "#]]
        .assert_eq(&format!("{got:?}\n"));
    }
}
