//! The JSON shapes of the OpenAI Responses API. Decoding is lenient: optional fields may
//! be missing and unknown ones (and unknown output item types) are ignored.

use serde_json::{Map, Value, json};

use crate::http;
use crate::{ChatMessage, ChatRequest, ChatResponse, ProviderError, ToolCallRequest, Usage};

/// The request body of `POST /responses`.
///
/// System messages stay where they are, as `system` messages of the input. Function tools
/// are sent with `strict: false`: strict mode, the API's default, refuses any schema with
/// an optional property. The turn is not stored (`store: false`), so nothing of the
/// conversation stays at the provider beyond the call.
pub(super) fn encode_request(req: &ChatRequest, stream: bool) -> Value {
    let mut input = Vec::new();
    for msg in &req.messages {
        match msg {
            ChatMessage::System { content } => input.push(message("system", content)),
            ChatMessage::User { content } => input.push(message("user", content)),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                    input.push(message("assistant", text));
                }
                input.extend(tool_calls.iter().map(|c| {
                    json!({
                        "type": "function_call",
                        "call_id": c.id,
                        "name": c.name,
                        "arguments": c.arguments,
                    })
                }));
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => input.push(json!({
                "type": "function_call_output",
                "call_id": tool_call_id,
                "output": content,
            })),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("input".into(), Value::Array(input));
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": false,
                })
            })
            .collect();
        body.insert("tools".into(), tools);
    }
    if let Some(max) = req.max_tokens {
        body.insert("max_output_tokens".into(), json!(max));
    }
    if let Some(t) = http::temperature(req.temperature) {
        body.insert("temperature".into(), t);
    }
    body.insert("stream".into(), json!(stream));
    body.insert("store".into(), json!(false));
    Value::Object(body)
}

fn message(role: &str, text: &str) -> Value {
    json!({ "type": "message", "role": role, "content": text })
}

/// Turns a whole `response` object into a response. A `failed` one is its error; one
/// that is neither `completed` nor `incomplete` is not a finished turn.
///
/// The text is that of the `output_text` parts of the `message` items; a refusal part's
/// text counts too, so the refusal reaches the user. `function_call` items are the tool
/// calls, with their `call_id` as id. Reasoning and other items carry nothing a turn
/// reports.
pub(super) fn decode_response(
    response: &Value,
    requested_model: &str,
) -> Result<ChatResponse, ProviderError> {
    let status = response.get("status").and_then(Value::as_str).unwrap_or("");
    let finish = match status {
        "completed" => None,
        "incomplete" => Some(
            match response
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
            {
                Some("max_output_tokens") | None => "length".to_string(),
                Some(other) => other.to_string(),
            },
        ),
        "failed" => {
            let error = response.get("error").unwrap_or(&Value::Null);
            return Err(stream_error(error));
        }
        other => {
            return Err(ProviderError::Protocol(format!(
                "the response ended with status {:?}",
                other.chars().take(40).collect::<String>()
            )));
        }
    };
    let output = response
        .get("output")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the response has no output array".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for item in output {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let parts = item.get("content").and_then(Value::as_array);
                for part in parts.into_iter().flatten() {
                    let piece = match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => part.get("text"),
                        Some("refusal") => part.get("refusal"),
                        _ => None,
                    };
                    text.push_str(piece.and_then(Value::as_str).unwrap_or(""));
                }
            }
            Some("function_call") => tool_calls.push(ToolCallRequest {
                id: str_field(item, "call_id"),
                name: str_field(item, "name"),
                arguments: str_field(item, "arguments"),
                signature: None,
            }),
            _ => {}
        }
    }
    let usage = response
        .get("usage")
        .filter(|u| u.is_object())
        .map(|u| Usage {
            prompt_tokens: u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
        });
    let finish_reason = finish.unwrap_or_else(|| {
        if tool_calls.is_empty() {
            "stop".into()
        } else {
            "tool_calls".into()
        }
    });
    Ok(ChatResponse {
        content: (!text.is_empty()).then_some(text),
        tool_calls,
        finish_reason: Some(finish_reason),
        usage,
        model: response
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(requested_model)
            .to_string(),
    })
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The error of a `failed` response or of an `error` event, `{code, message}`, which
/// arrives after a 200: a rate limit or a server error becomes the HTTP error it stands
/// for (429, 500), so it is retried like one; anything else is a protocol error.
pub(super) fn stream_error(error: &Value) -> ProviderError {
    let code = error.get("code").and_then(Value::as_str);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    let status = match code {
        Some("rate_limit_exceeded") => Some(429),
        Some("server_error") => Some(500),
        _ => None,
    };
    let message = match code {
        Some(code) => format!("{code}: {message}"),
        None => message.to_string(),
    };
    match status {
        Some(status) => ProviderError::Http {
            status,
            message,
            retry_after: None,
        },
        None => ProviderError::Protocol(format!(
            "the provider reported an error in the stream: {message}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{decode_response, stream_error};
    use crate::ProviderError;

    #[test]
    fn a_response_keeps_text_refusals_and_calls_and_skips_reasoning() {
        let response = json!({
            "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-x",
            "output": [
                { "type": "reasoning", "id": "rs_1", "summary": [] },
                { "type": "message", "id": "msg_1", "role": "assistant", "content": [
                    { "type": "output_text", "text": "Let me ", "annotations": [] },
                    { "type": "refusal", "refusal": "not." },
                ] },
                { "type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "now", "arguments": "{}" },
            ],
            "usage": { "input_tokens": 3, "output_tokens": 2, "total_tokens": 5 },
        });
        let resp = decode_response(&response, "asked").unwrap();
        assert_eq!(resp.content.as_deref(), Some("Let me not."));
        assert_eq!(resp.tool_calls[0].id, "call_a");
        assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(resp.model, "gpt-x");
        let cut = json!({ "status": "incomplete", "output": [],
            "incomplete_details": { "reason": "content_filter" } });
        assert_eq!(
            decode_response(&cut, "asked")
                .unwrap()
                .finish_reason
                .as_deref(),
            Some("content_filter")
        );
        let queued = json!({ "status": "queued", "output": [] });
        assert!(matches!(
            decode_response(&queued, "asked"),
            Err(ProviderError::Protocol(_))
        ));
    }

    #[test]
    fn errors_after_the_status_line_keep_their_retriability() {
        let limit = stream_error(&json!({ "code": "rate_limit_exceeded", "message": "slow down" }));
        assert_eq!(
            limit,
            ProviderError::Http {
                status: 429,
                message: "rate_limit_exceeded: slow down".into(),
                retry_after: None
            }
        );
        let prompt = stream_error(&json!({ "code": "invalid_prompt", "message": "no" }));
        assert!(!prompt.retriable(), "{prompt}");
    }
}
