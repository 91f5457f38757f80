//! The JSON shapes of OpenAI Chat Completions. Decoding is lenient on purpose: servers
//! that claim compatibility (Ollama, llama.cpp, vLLM) leave out optional fields, send
//! `null` where OpenAI sends a value, and add fields of their own.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{ChatMessage, ChatRequest, ChatResponse, ProviderError, ToolCallRequest, Usage};

/// The request body of `POST /chat/completions`.
pub(super) fn encode_request(req: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert(
        "messages".into(),
        req.messages.iter().map(encode_message).collect(),
    );
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                })
            })
            .collect();
        body.insert("tools".into(), tools);
    }
    if let Some(max) = req.max_tokens {
        body.insert("max_tokens".into(), json!(max));
    }
    if let Some(t) = req.temperature.filter(|t| t.is_finite()) {
        // Through the shortest decimal form, so 0.2f32 goes out as 0.2 and not as
        // 0.20000000298023224.
        if let Some(n) = t
            .to_string()
            .parse()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            body.insert("temperature".into(), Value::Number(n));
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    Value::Object(body)
}

fn encode_message(msg: &ChatMessage) -> Value {
    match msg {
        ChatMessage::System { content } => json!({ "role": "system", "content": content }),
        ChatMessage::User { content } => json!({ "role": "user", "content": content }),
        ChatMessage::Assistant {
            content,
            tool_calls,
        } if tool_calls.is_empty() => {
            json!({ "role": "assistant", "content": content.as_deref().unwrap_or("") })
        }
        ChatMessage::Assistant {
            content,
            tool_calls,
        } => {
            // OpenAI rejects an empty `tool_calls` array, hence the two arms.
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": { "name": c.name, "arguments": c.arguments },
                    })
                })
                .collect();
            json!({ "role": "assistant", "content": content, "tool_calls": calls })
        }
        ChatMessage::Tool {
            tool_call_id,
            content,
        } => {
            json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content })
        }
    }
}

/// A `chat.completion` object.
#[derive(Deserialize)]
pub(super) struct Completion {
    model: Option<String>,
    choices: Option<Vec<Choice>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    index: Option<u32>,
    message: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<Value>,
    tool_calls: Option<Vec<WireToolCall>>,
}

/// A tool call, whole (in a completion) or a fragment (in a stream chunk).
#[derive(Deserialize)]
pub(super) struct WireToolCall {
    pub(super) index: Option<u32>,
    pub(super) id: Option<String>,
    pub(super) function: Option<WireFunction>,
}

#[derive(Deserialize)]
pub(super) struct WireFunction {
    pub(super) name: Option<String>,
    pub(super) arguments: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl WireUsage {
    pub(super) fn into_usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
        }
    }
}

/// A `chat.completion.chunk` object of a stream.
#[derive(Deserialize)]
pub(super) struct Chunk {
    pub(super) model: Option<String>,
    pub(super) choices: Option<Vec<ChunkChoice>>,
    pub(super) usage: Option<WireUsage>,
    pub(super) error: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct ChunkChoice {
    pub(super) index: Option<u32>,
    pub(super) delta: Option<Delta>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Delta {
    pub(super) content: Option<Value>,
    pub(super) tool_calls: Option<Vec<WireToolCall>>,
}

/// The text of a `content` field: a string, or the text parts of an array of parts.
pub(super) fn content_text(content: Option<Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<String>(),
        ),
        _ => None,
    }
}

/// The `arguments` of a tool call as text. OpenAI sends a string; a few servers send the
/// JSON object itself.
pub(super) fn arguments_text(arguments: Option<Value>) -> String {
    match arguments {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

/// The id to use for a tool call the server sent without one.
pub(super) fn fallback_call_id(index: usize) -> String {
    format!("call_{index}")
}

/// Turns a whole completion into a response.
pub(super) fn decode_completion(
    completion: Completion,
    requested_model: &str,
) -> Result<ChatResponse, ProviderError> {
    let choice = completion
        .choices
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0)
        .ok_or_else(|| ProviderError::Protocol("the answer has no choices".into()))?;
    let (content, wire_calls) = match choice.message {
        Some(m) => (content_text(m.content), m.tool_calls.unwrap_or_default()),
        None => (None, Vec::new()),
    };
    let tool_calls = wire_calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let (name, arguments) = match call.function {
                Some(f) => (f.name.unwrap_or_default(), arguments_text(f.arguments)),
                None => (String::new(), String::new()),
            };
            let id = call
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| fallback_call_id(i));
            ToolCallRequest {
                id,
                name,
                arguments,
                signature: None,
            }
        })
        .collect();
    Ok(ChatResponse {
        content: content.filter(|c| !c.is_empty()),
        tool_calls,
        finish_reason: choice.finish_reason,
        usage: completion.usage.map(WireUsage::into_usage),
        model: pick_model(completion.model, requested_model),
    })
}

/// The model the server named, or the one we asked for when it named none.
pub(super) fn pick_model(answered: Option<String>, requested: &str) -> String {
    answered
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| requested.to_string())
}

/// The message of an error body: OpenAI's `{"error":{"message"}}`, or the shapes other
/// servers use (`{"error":"..."}`, `{"message":"..."}`, `{"detail":"..."}`).
pub(crate) fn error_message(body: &Value) -> Option<String> {
    let text = match body.get("error") {
        Some(Value::Object(e)) => e.get("message").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => ["message", "detail"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_str)),
    };
    text.map(str::to_string)
}

/// The ids of `GET /models`.
pub(crate) fn decode_models(body: &Value) -> Result<Vec<String>, ProviderError> {
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the model list has no data array".into()))?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}
