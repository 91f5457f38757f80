//! The JSON shapes of the Bedrock Converse API. Decoding is lenient: optional fields may
//! be missing and unknown ones (and unknown content block kinds) are ignored.

use serde_json::{Map, Value, json};

use crate::http;
use crate::{ChatMessage, ChatRequest, ChatResponse, ProviderError, ToolCallRequest, Usage};

/// The request body of `POST /model/{modelId}/converse` (and `converse-stream`, which
/// takes the same body); the model is in the path.
///
/// System messages go, in order, into the top-level `system` blocks. Roles must alternate,
/// so consecutive messages of one role are merged into one, and tool results travel as
/// `toolResult` blocks of a user message, ahead of any text. Bedrock refuses blank text,
/// so empty texts are left out.
pub(super) fn encode_request(req: &ChatRequest, default_max_tokens: u32) -> Value {
    let mut body = Map::new();
    body.insert("messages".into(), encode_messages(&req.messages));
    let system: Vec<Value> = req
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } => text_block(content),
            _ => None,
        })
        .collect();
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    inference.insert(
        "maxTokens".into(),
        json!(req.max_tokens.unwrap_or(default_max_tokens)),
    );
    if let Some(t) = http::temperature(req.temperature) {
        inference.insert("temperature".into(), t);
    }
    body.insert("inferenceConfig".into(), Value::Object(inference));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut spec = Map::new();
                spec.insert("name".into(), json!(t.name));
                // The description is optional but may not be empty.
                if !t.description.is_empty() {
                    spec.insert("description".into(), json!(t.description));
                }
                spec.insert("inputSchema".into(), json!({ "json": t.parameters }));
                json!({ "toolSpec": spec })
            })
            .collect();
        body.insert("toolConfig".into(), json!({ "tools": tools }));
    }
    Value::Object(body)
}

/// The `messages` array: user and assistant turns, alternating.
fn encode_messages(messages: &[ChatMessage]) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for msg in messages {
        let (role, blocks): (&'static str, Vec<Value>) = match msg {
            ChatMessage::System { .. } => continue,
            ChatMessage::User { content } => ("user", text_block(content).into_iter().collect()),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let text = content.as_deref().and_then(text_block);
                let calls = tool_calls.iter().map(|c| {
                    // The turn is history: arguments that are not a JSON object go out as
                    // `{}`, and the tool result that followed told the model what went wrong.
                    let input = serde_json::from_str::<Value>(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    json!({ "toolUse": { "toolUseId": c.id, "name": c.name, "input": input } })
                });
                ("assistant", text.into_iter().chain(calls).collect())
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => (
                "user",
                vec![json!({
                    "toolResult": {
                        "toolUseId": tool_call_id,
                        "content": [{ "text": content }],
                    }
                })],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        if let Some((last_role, last_blocks)) = turns.last_mut()
            && *last_role == role
        {
            last_blocks.extend(blocks);
        } else {
            turns.push((role, blocks));
        }
    }
    let messages = turns.into_iter().map(|(role, mut content)| {
        // The results must open the user turn that answers the calls; the sort is stable.
        content.sort_by_key(|block| block.get("toolResult").is_none());
        json!({ "role": role, "content": content })
    });
    Value::Array(messages.collect())
}

/// A text block, or none for empty text.
fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "text": text }))
}

/// Bedrock's `stopReason` in the words of [`ChatResponse::finish_reason`] (OpenAI's);
/// reasons without an equivalent pass through.
pub(super) fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        other => other,
    }
    .to_string()
}

/// Token counts from a `usage` object; cache reads and writes are prompt tokens too.
pub(super) fn usage(usage: &Value) -> Usage {
    let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: count("inputTokens")
            + count("cacheReadInputTokens")
            + count("cacheWriteInputTokens"),
        completion_tokens: count("outputTokens"),
    }
}

/// Turns a whole Converse answer into a response. Bedrock does not name the model that
/// answered, so it is the one asked for.
pub(super) fn decode_response(
    response: &Value,
    requested_model: &str,
) -> Result<ChatResponse, ProviderError> {
    let blocks = response
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the response has no output message".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(call) = block.get("toolUse") {
            let field = |k: &str| {
                call.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            tool_calls.push(ToolCallRequest {
                id: field("toolUseId"),
                name: field("name"),
                arguments: call.get("input").unwrap_or(&json!({})).to_string(),
                signature: None,
            });
        }
        // Reasoning and other blocks carry nothing a turn reports.
    }
    Ok(ChatResponse {
        content: (!text.is_empty()).then_some(text),
        tool_calls,
        finish_reason: response
            .get("stopReason")
            .and_then(Value::as_str)
            .map(finish_reason),
        usage: response.get("usage").map(usage),
        model: requested_model.to_string(),
    })
}

/// The message of an AWS error body: `{"message": ...}`, or `{"Message": ...}` as some
/// AWS front ends spell it.
pub(super) fn error_message(body: &Value) -> Option<String> {
    ["message", "Message"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(str::to_string)
}

/// The status Bedrock documents for the exception a stream ends with (its
/// `:exception-type`, like `throttlingException`).
pub(super) fn exception_status(kind: &str) -> u16 {
    match kind {
        "validationException" => 400,
        "accessDeniedException" => 403,
        "resourceNotFoundException" => 404,
        "modelTimeoutException" => 408,
        "modelStreamErrorException" | "modelErrorException" => 424,
        "throttlingException" | "modelNotReadyException" => 429,
        "serviceUnavailableException" => 503,
        _ => 500,
    }
}

/// The model ids of a `ListFoundationModels` answer.
pub(super) fn decode_models(body: &Value) -> Result<Vec<String>, ProviderError> {
    let summaries = body
        .get("modelSummaries")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the model list has no modelSummaries".into()))?;
    Ok(summaries
        .iter()
        .filter_map(|m| m.get("modelId").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{decode_response, exception_status, finish_reason};

    #[test]
    fn stop_reasons_take_the_words_of_finish_reason() {
        let cases = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            (
                "model_context_window_exceeded",
                "model_context_window_exceeded",
            ),
        ];
        for (stop_reason, expected) in cases {
            assert_eq!(finish_reason(stop_reason), expected);
        }
    }

    #[test]
    fn a_response_keeps_text_and_tool_use_and_skips_reasoning() {
        let response = json!({
            "output": { "message": { "role": "assistant", "content": [
                { "reasoningContent": { "reasoningText": { "text": "hmm", "signature": "s" } } },
                { "text": "Let me " },
                { "text": "check." },
                { "toolUse": { "toolUseId": "tooluse_1", "name": "now", "input": {} } },
            ] } },
            "stopReason": "tool_use",
            "usage": { "inputTokens": 3, "outputTokens": 2, "totalTokens": 5, "cacheReadInputTokens": 4 },
            "metrics": { "latencyMs": 120 },
        });
        let resp = decode_response(&response, "asked").unwrap();
        assert_eq!(resp.content.as_deref(), Some("Let me check."));
        assert_eq!(resp.tool_calls[0].id, "tooluse_1");
        assert_eq!(resp.tool_calls[0].arguments, "{}");
        assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            resp.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((7, 2))
        );
        assert_eq!(resp.model, "asked");
        assert!(decode_response(&json!({ "message": "x" }), "asked").is_err());
    }

    #[test]
    fn stream_exceptions_map_to_documented_statuses() {
        assert_eq!(exception_status("throttlingException"), 429);
        assert_eq!(exception_status("modelStreamErrorException"), 424);
        assert_eq!(exception_status("validationException"), 400);
        assert_eq!(exception_status("serviceUnavailableException"), 503);
        assert_eq!(exception_status("somethingNew"), 500);
    }
}
