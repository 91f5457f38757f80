//! The JSON shapes of Ollama's native API (`/api/chat`, `/api/tags`). Decoding is lenient:
//! optional fields may be missing and unknown ones are ignored.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http;
use crate::{ChatMessage, ChatRequest, ProviderError, Usage};

/// The request body of `POST /api/chat`. `stream` is always sent: Ollama streams unless
/// told not to.
///
/// A tool result names the function of its call in `tool_name` (Ollama's rule), found
/// through the `tool_call_id` of the assistant message that made the call; a result whose
/// id no earlier call had goes without one. Arguments go back as a JSON object, as Ollama
/// requires; arguments that are not one (malformed, or another JSON value) go as `{}`,
/// since the turn is history and the tool result that followed already told the model
/// what went wrong.
pub(super) fn encode_request(req: &ChatRequest, stream: bool) -> Value {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut messages = Vec::new();
    for msg in &req.messages {
        let message = match msg {
            ChatMessage::System { content } => json!({ "role": "system", "content": content }),
            ChatMessage::User { content } => json!({ "role": "user", "content": content }),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut message = json!({
                    "role": "assistant",
                    "content": content.as_deref().unwrap_or(""),
                });
                if !tool_calls.is_empty() {
                    let calls: Vec<Value> = tool_calls
                        .iter()
                        .enumerate()
                        .map(|(index, c)| {
                            names.insert(c.id.as_str(), c.name.as_str());
                            let arguments = match serde_json::from_str::<Value>(&c.arguments) {
                                Ok(v @ Value::Object(_)) => v,
                                _ => json!({}),
                            };
                            json!({
                                "type": "function",
                                "function": { "index": index, "name": c.name, "arguments": arguments },
                            })
                        })
                        .collect();
                    message["tool_calls"] = Value::Array(calls);
                }
                message
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => {
                let mut message = json!({ "role": "tool", "content": content });
                if let Some(name) = names.get(tool_call_id.as_str()) {
                    message["tool_name"] = json!(name);
                }
                message
            }
        };
        messages.push(message);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
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
    body.insert("stream".into(), json!(stream));
    let mut options = Map::new();
    if let Some(max) = req.max_tokens {
        options.insert("num_predict".into(), json!(max));
    }
    if let Some(t) = http::temperature(req.temperature) {
        options.insert("temperature".into(), t);
    }
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    Value::Object(body)
}

/// One object of `/api/chat`: a whole answer, or one line of a stream. The last one has
/// `done: true` and the counts.
#[derive(Deserialize)]
pub(super) struct Chunk {
    pub(super) model: Option<String>,
    pub(super) message: Option<Message>,
    pub(super) done: Option<bool>,
    pub(super) done_reason: Option<String>,
    pub(super) prompt_eval_count: Option<u64>,
    pub(super) eval_count: Option<u64>,
    /// Sent instead of a chunk when the stream fails midway.
    pub(super) error: Option<Value>,
}

impl Chunk {
    /// The counts of the last chunk, when it has any.
    pub(super) fn usage(&self) -> Option<Usage> {
        (self.prompt_eval_count.is_some() || self.eval_count.is_some()).then(|| Usage {
            prompt_tokens: self.prompt_eval_count.unwrap_or(0),
            completion_tokens: self.eval_count.unwrap_or(0),
        })
    }
}

#[derive(Deserialize)]
pub(super) struct Message {
    pub(super) content: Option<String>,
    pub(super) tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
pub(super) struct ToolCall {
    /// Newer Ollama versions send one; most send none.
    pub(super) id: Option<String>,
    pub(super) function: Option<Function>,
}

#[derive(Deserialize)]
pub(super) struct Function {
    pub(super) name: Option<String>,
    pub(super) arguments: Option<Value>,
}

/// A tool call as it arrived: `(id if Ollama sent one, name, arguments as JSON text)`.
/// The arguments are a JSON object; a string (from a proxy that converted them) is taken
/// as the text itself.
pub(super) fn decode_call(call: ToolCall) -> (Option<String>, String, String) {
    let (name, arguments) = match call.function {
        Some(f) => (f.name.unwrap_or_default(), f.arguments),
        None => (String::new(), None),
    };
    let arguments = match arguments {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    (call.id.filter(|id| !id.is_empty()), name, arguments)
}

/// Our `finish_reason` for Ollama's `done_reason`: `stop` is `stop`, or `tool_calls` when
/// the turn calls tools; `length` stays; others (`load`, `unload`) pass through.
pub(super) fn finish_reason(done_reason: &str, has_calls: bool) -> String {
    match done_reason {
        "stop" if has_calls => "tool_calls",
        other => other,
    }
    .to_string()
}

/// The message of an error body, `{"error":"..."}`.
pub(super) fn error_message(body: &Value) -> Option<String> {
    match body.get("error")? {
        Value::String(s) => Some(s.clone()),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// The model names of `GET /api/tags`.
pub(super) fn decode_models(body: &Value) -> Result<Vec<String>, ProviderError> {
    let models = body
        .get("models")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the model list has no models array".into()))?;
    Ok(models
        .iter()
        .filter_map(|m| m.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{error_message, finish_reason};

    #[test]
    fn done_reasons_take_the_words_of_finish_reason() {
        assert_eq!(finish_reason("stop", false), "stop");
        assert_eq!(finish_reason("stop", true), "tool_calls");
        assert_eq!(finish_reason("length", true), "length");
        assert_eq!(finish_reason("unload", false), "unload");
    }

    #[test]
    fn error_bodies_give_their_message() {
        let body = json!({ "error": "model 'x' not found" });
        assert_eq!(error_message(&body).as_deref(), Some("model 'x' not found"));
        let proxy = json!({ "error": { "message": "bad key" } });
        assert_eq!(error_message(&proxy).as_deref(), Some("bad key"));
        assert_eq!(error_message(&json!({ "nope": 1 })), None);
    }
}
