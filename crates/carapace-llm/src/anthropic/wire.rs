//! The JSON shapes of the Anthropic Messages API.

use serde_json::{Map, Value, json};

use crate::{ChatMessage, ChatRequest, ChatResponse, ProviderError, ToolCallRequest, Usage};

/// The request body of `POST /v1/messages`.
///
/// Anthropic has no system role: every system message goes, in order, into the top-level
/// `system` blocks. Roles must alternate, so consecutive messages of one role are merged,
/// and tool results travel as `tool_result` blocks of a user message, ahead of any text.
/// The last system block and the last tool carry a prompt-caching marker.
pub(super) fn encode_request(req: &ChatRequest, default_max_tokens: u32, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(default_max_tokens)),
    );
    let mut system: Vec<Value> = req
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } if !content.is_empty() => {
                Some(json!({ "type": "text", "text": content }))
            }
            _ => None,
        })
        .collect();
    if let Some(last) = system.last_mut() {
        last["cache_control"] = ephemeral();
    }
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    body.insert("messages".into(), encode_messages(&req.messages));
    if !req.tools.is_empty() {
        let mut tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.parameters,
                })
            })
            .collect();
        if let Some(last) = tools.last_mut() {
            last["cache_control"] = ephemeral();
        }
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(t) = req.temperature.filter(|t| t.is_finite()) {
        // Through the shortest decimal form, so 0.2f32 goes out as 0.2.
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
    }
    Value::Object(body)
}

fn ephemeral() -> Value {
    json!({ "type": "ephemeral" })
}

/// The `messages` array: user and assistant turns, alternating.
fn encode_messages(messages: &[ChatMessage]) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for msg in messages {
        let (role, blocks) = match msg {
            ChatMessage::System { .. } => continue,
            ChatMessage::User { content } => ("user", text_block(content).into_iter().collect()),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks: Vec<Value> = content
                    .as_deref()
                    .and_then(text_block)
                    .into_iter()
                    .collect();
                blocks.extend(tool_calls.iter().map(|c| {
                    json!({
                        "type": "tool_use",
                        "id": c.id,
                        "name": c.name,
                        "input": tool_input(&c.arguments),
                    })
                }));
                ("assistant", blocks)
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": tool_call_id,
                    "content": content,
                })],
            ),
        };
        // Anthropic refuses empty content, so a message with nothing to say is left out.
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Tool results must open the user turn that answers the tool calls; a stable
            // sort keeps the order within results and within the rest.
            blocks.sort_by_key(|b| b["type"] != "tool_result");
            json!({ "role": role, "content": blocks })
        })
        .collect()
}

/// A text block, or none for empty text (Anthropic refuses empty text blocks).
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "type": "text", "text": text }))
}

/// The `input` object of a `tool_use` block from the arguments text the model once
/// produced. Anthropic only accepts an object there; arguments that are not a JSON object
/// (malformed, or another JSON value) go out as `{}`, since the turn is history and the
/// tool result that followed already told the model what went wrong.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Anthropic's `stop_reason` in the words of [`ChatResponse::finish_reason`]
/// (OpenAI's); reasons without an equivalent (`refusal`, `pause_turn`) pass through.
pub(super) fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        other => other,
    }
    .to_string()
}

/// Token counts from a `usage` object: cache writes and reads count as prompt tokens.
pub(super) fn prompt_tokens(usage: &Value) -> Option<u64> {
    let fields = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ];
    let counts: Vec<u64> = fields
        .iter()
        .filter_map(|f| usage.get(*f).and_then(Value::as_u64))
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// Turns a whole `message` object into a response.
pub(super) fn decode_message(
    message: &Value,
    requested_model: &str,
) -> Result<ChatResponse, ProviderError> {
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return Err(ProviderError::Protocol(
            "the answer is not a message object".into(),
        ));
    }
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the message has no content array".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(ToolCallRequest {
                id: str_field(block, "id"),
                name: str_field(block, "name"),
                arguments: block.get("input").unwrap_or(&json!({})).to_string(),
                signature: None,
            }),
            // Thinking and other block kinds carry nothing a turn reports.
            _ => {}
        }
    }
    let usage = message.get("usage").map(|u| Usage {
        prompt_tokens: prompt_tokens(u).unwrap_or(0),
        completion_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    });
    Ok(ChatResponse {
        content: (!text.is_empty()).then_some(text),
        tool_calls,
        finish_reason: message
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(finish_reason),
        usage,
        model: pick_model(message.get("model"), requested_model),
    })
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The model the server named, or the one we asked for when it named none.
pub(super) fn pick_model(answered: Option<&Value>, requested: &str) -> String {
    answered
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(requested)
        .to_string()
}

/// The `error` object of an error body or an `error` stream event as one message,
/// `<type>: <message>`.
pub(super) fn error_message(error: &Value) -> Option<String> {
    let kind = error.get("type").and_then(Value::as_str);
    let message = error.get("message").and_then(Value::as_str);
    match (kind, message) {
        (Some(k), Some(m)) => Some(format!("{k}: {m}")),
        (Some(x), None) | (None, Some(x)) => Some(x.to_string()),
        (None, None) => None,
    }
}

/// The HTTP status Anthropic documents for an error type; an `error` event in a stream
/// arrives after a 200, so its status is taken from its type. Unknown types count as a
/// server error.
pub(super) fn error_status(kind: &str) -> u16 {
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

/// The ids of `GET /v1/models`.
pub(super) fn decode_models(body: &Value) -> Result<Vec<String>, ProviderError> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{decode_message, error_status, finish_reason};

    #[test]
    fn stop_reasons_take_the_words_of_finish_reason() {
        let cases = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "refusal"),
        ];
        for (stop_reason, expected) in cases {
            assert_eq!(finish_reason(stop_reason), expected);
        }
    }

    #[test]
    fn a_message_keeps_text_and_tool_use_and_skips_thinking() {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                { "type": "thinking", "thinking": "hmm", "signature": "s" },
                { "type": "text", "text": "Let me " },
                { "type": "text", "text": "check." },
                { "type": "tool_use", "id": "toolu_1", "name": "now", "input": {} },
            ],
            "stop_reason": "max_tokens",
            "usage": { "input_tokens": 3, "output_tokens": 2 },
        });
        let resp = decode_message(&message, "asked").unwrap();
        assert_eq!(resp.content.as_deref(), Some("Let me check."));
        assert_eq!(resp.tool_calls[0].arguments, "{}");
        assert_eq!(resp.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            resp.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 2))
        );
        assert_eq!(resp.model, "claude-x");
        assert!(decode_message(&json!({ "type": "error" }), "asked").is_err());
    }

    #[test]
    fn error_types_map_to_documented_statuses() {
        assert_eq!(error_status("overloaded_error"), 529);
        assert_eq!(error_status("rate_limit_error"), 429);
        assert_eq!(error_status("something_new"), 500);
    }
}
