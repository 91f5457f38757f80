//! Server-sent events of a streamed response: lines to events, events to a response.
//!
//! The closing `response.completed` (or `response.incomplete`) event carries the whole
//! response, which is decoded like an unstreamed one; the output items the events built
//! stand in for its `output` only when a server leaves that empty.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::wire;
use crate::http::LineFold;
use crate::{ChatResponse, ProviderError};

/// Folds the events of a stream into one response.
#[derive(Default)]
pub(super) struct Assembler {
    /// Output items by `output_index`, as added and then as done.
    items: BTreeMap<u64, Value>,
    /// The text deltas of each message item.
    texts: BTreeMap<u64, String>,
    /// The `response` of the closing event.
    last: Option<Value>,
}

impl Assembler {
    fn event(&mut self, event: &Value) -> Result<Option<String>, ProviderError> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let index = event.get("output_index").and_then(Value::as_u64);
        match (kind, index) {
            ("response.output_item.added" | "response.output_item.done", Some(i)) => {
                if let Some(item) = event.get("item") {
                    self.items.insert(i, item.clone());
                }
            }
            ("response.output_text.delta" | "response.refusal.delta", Some(i)) => {
                let delta = event.get("delta").and_then(Value::as_str).unwrap_or("");
                self.texts.entry(i).or_default().push_str(delta);
                return Ok((!delta.is_empty()).then(|| delta.to_string()));
            }
            ("response.function_call_arguments.delta", Some(i)) => {
                let delta = event.get("delta").and_then(Value::as_str).unwrap_or("");
                if let Some(item) = self.items.get_mut(&i) {
                    let so_far = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                    item["arguments"] = json!(format!("{so_far}{delta}"));
                }
            }
            ("response.function_call_arguments.done", Some(i)) => {
                if let (Some(item), Some(arguments)) =
                    (self.items.get_mut(&i), event.get("arguments"))
                {
                    item["arguments"] = arguments.clone();
                }
            }
            ("response.completed" | "response.incomplete" | "response.failed", _) => {
                let response = event.get("response").cloned().unwrap_or(Value::Null);
                if kind == "response.failed" {
                    return Err(wire::stream_error(
                        response.get("error").unwrap_or(&Value::Null),
                    ));
                }
                self.last = Some(response);
            }
            ("error", _) => {
                // OpenAI sends `code` and `message` at the top; some servers nest them.
                return Err(wire::stream_error(event.get("error").unwrap_or(event)));
            }
            // `response.created`, content parts, text done, reasoning and event types
            // added later.
            _ => {}
        }
        Ok(None)
    }

    /// The response, once the closing event arrived; a stream that ended before it was
    /// cut off.
    pub(super) fn finish(self, requested_model: &str) -> Result<ChatResponse, ProviderError> {
        let Some(mut response) = self.last else {
            return Err(ProviderError::Protocol(
                "the stream ended before the answer was complete".into(),
            ));
        };
        let empty = response
            .get("output")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if empty && response.is_object() {
            let mut texts = self.texts;
            let output: Vec<Value> = self
                .items
                .into_iter()
                .map(|(i, mut item)| {
                    let has_content = item
                        .get("content")
                        .and_then(Value::as_array)
                        .is_some_and(|c| !c.is_empty());
                    if item["type"] == "message" && !has_content {
                        let text = texts.remove(&i).unwrap_or_default();
                        item["content"] = json!([{ "type": "output_text", "text": text }]);
                    }
                    item
                })
                .collect();
            response["output"] = Value::Array(output);
        }
        wire::decode_response(&response, requested_model)
    }
}

impl LineFold for Assembler {
    /// Feeds one line; returns the text delta it carried, if any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        // Every event repeats its name in the `type` of its data, so the `event:` lines,
        // comments and blank separators carry nothing more.
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(None);
        };
        let data = data.trim();
        // Some compatible servers end with the `[DONE]` of Chat Completions.
        if data.is_empty() || data == "[DONE]" {
            return Ok(None);
        }
        let event: Value = serde_json::from_str(data)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode a stream event: {e}")))?;
        self.event(&event)
    }

    /// Whether the closing event arrived.
    fn is_done(&self) -> bool {
        self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::Assembler;
    use crate::http::{LineFold, Lines};

    /// Feeds `sse` byte by byte and prints the text deltas followed by the response or
    /// the error.
    fn check(sse: &str, expected: Expect) {
        let mut lines = Lines::default();
        let mut asm = Assembler::default();
        let mut all = Vec::new();
        for b in sse.as_bytes() {
            all.extend(lines.push(std::slice::from_ref(b)));
        }
        all.extend(lines.rest());
        let mut out = String::new();
        for line in all {
            match asm.line(&line) {
                Ok(Some(delta)) => out.push_str(&format!("delta {delta:?}\n")),
                Ok(None) => {}
                Err(e) => {
                    out.push_str(&format!("error: {e}\n"));
                    return expected.assert_eq(&out);
                }
            }
            if asm.is_done() {
                break;
            }
        }
        match asm.finish("asked-model") {
            Ok(resp) => out.push_str(&format!("{resp:#?}\n")),
            Err(e) => out.push_str(&format!("error: {e}\n")),
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn a_server_that_leaves_the_closing_output_empty_gets_the_built_items() {
        check(
            concat!(
                "event: response.output_item.added\n",
                "data: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_1\",\"role\":\"assistant\",\"content\":[]}}\n\n",
                "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hé \"}\n\n",
                "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"content_index\":0,\"delta\":\"there\"}\n\n",
                "data: {\"type\":\"response.output_item.added\",\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"a\",\"arguments\":\"\"}}\n\n",
                "data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":1,\"delta\":\"{\\\"k\\\"\"}\n\n",
                "data: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":1,\"delta\":\":1}\"}\n\n",
                "data: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":4,\"output_tokens\":6}}}\n\n",
            ),
            expect![[r#"
                delta "Hé "
                delta "there"
                ChatResponse {
                    content: Some(
                        "Hé there",
                    ),
                    tool_calls: [
                        ToolCallRequest {
                            id: "call_1",
                            name: "a",
                            arguments: "{\"k\":1}",
                            signature: None,
                        },
                    ],
                    finish_reason: Some(
                        "tool_calls",
                    ),
                    usage: Some(
                        Usage {
                            prompt_tokens: 4,
                            completion_tokens: 6,
                        },
                    ),
                    model: "asked-model",
                }
            "#]],
        );
    }

    #[test]
    fn error_events_a_cut_stream_and_garbage_fail_the_turn() {
        check(
            "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"boom\",\"param\":null,\"sequence_number\":3}\n\n",
            expect![[r#"
                error: provider answered http 500: server_error: boom
            "#]],
        );
        check(
            "data: {\"type\":\"error\",\"sequence_number\":2,\"error\":{\"code\":\"unknown-error\",\"message\":\"Foobar\",\"param\":null}}\n\n",
            expect![[r#"
                error: provider protocol error: the provider reported an error in the stream: unknown-error: Foobar
            "#]],
        );
        check(
            "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"x\"}\n\n",
            expect![[r#"
                delta "x"
                error: provider protocol error: the stream ended before the answer was complete
            "#]],
        );
        check(
            "data: {nope\n\n",
            expect![[r#"
                error: provider protocol error: cannot decode a stream event: key must be a string at line 1 column 2
            "#]],
        );
    }
}
