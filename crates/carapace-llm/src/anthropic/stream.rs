//! Server-sent events of a streamed message: bytes to lines, lines to a response.

use std::collections::BTreeMap;

use serde_json::Value;

use super::wire;
use crate::http::LineFold;
use crate::{ChatResponse, ProviderError, ToolCallRequest, Usage};

/// A content block being streamed.
enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        /// The `input` of `content_block_start`, used when no JSON delta follows.
        initial: Value,
        json: String,
    },
    /// Thinking and other kinds, which a turn does not report.
    Other,
}

/// Folds the events of a stream into one response.
#[derive(Default)]
pub(super) struct Assembler {
    blocks: BTreeMap<u64, Block>,
    finish_reason: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    model: Option<String>,
    done: bool,
}

impl Assembler {
    fn event(&mut self, event: &Value) -> Result<Option<String>, ProviderError> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = Some(model.to_string());
                }
                if let Some(usage) = message.get("usage") {
                    self.usage(usage);
                }
            }
            "content_block_start" => {
                let index = index(event)?;
                let block = event.get("content_block").unwrap_or(&Value::Null);
                let block = match block.get("type").and_then(Value::as_str) {
                    Some("text") => Block::Text(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    Some("tool_use") => Block::ToolUse {
                        id: text_of(block, "id"),
                        name: text_of(block, "name"),
                        initial: block.get("input").cloned().unwrap_or(Value::Null),
                        json: String::new(),
                    },
                    _ => Block::Other,
                };
                self.blocks.insert(index, block);
            }
            "content_block_delta" => return self.delta(event),
            "message_delta" => {
                if let Some(reason) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.finish_reason = Some(wire::finish_reason(reason));
                }
                if let Some(usage) = event.get("usage") {
                    self.usage(usage);
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let error = event.get("error").unwrap_or(&Value::Null);
                let kind = error.get("type").and_then(Value::as_str).unwrap_or("");
                return Err(ProviderError::Http {
                    status: wire::error_status(kind),
                    message: wire::error_message(error).unwrap_or_else(|| "no message".into()),
                    retry_after: None,
                });
            }
            // `ping`, `content_block_stop` and event types added later.
            _ => {}
        }
        Ok(None)
    }

    fn delta(&mut self, event: &Value) -> Result<Option<String>, ProviderError> {
        let index = index(event)?;
        let delta = event.get("delta").unwrap_or(&Value::Null);
        let Some(block) = self.blocks.get_mut(&index) else {
            return Err(ProviderError::Protocol(format!(
                "a delta for content block {index}, which never started"
            )));
        };
        match (delta.get("type").and_then(Value::as_str), block) {
            (Some("text_delta"), Block::Text(text)) => {
                let piece = delta.get("text").and_then(Value::as_str).unwrap_or("");
                text.push_str(piece);
                Ok((!piece.is_empty()).then(|| piece.to_string()))
            }
            (Some("input_json_delta"), Block::ToolUse { json, .. }) => {
                json.push_str(
                    delta
                        .get("partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                );
                Ok(None)
            }
            (Some("text_delta" | "input_json_delta"), _) => Err(ProviderError::Protocol(format!(
                "a delta that does not fit content block {index}"
            ))),
            // Thinking, signature and citation deltas.
            _ => Ok(None),
        }
    }

    /// Takes the counts of a `usage` object; they are cumulative, so later ones win.
    fn usage(&mut self, usage: &Value) {
        if let Some(n) = wire::prompt_tokens(usage) {
            self.prompt_tokens = Some(n);
        }
        if let Some(n) = usage.get("output_tokens").and_then(Value::as_u64) {
            self.completion_tokens = Some(n);
        }
    }

    /// The response, once `message_stop` arrived; a stream that ended before it was cut
    /// off.
    pub(super) fn finish(self, requested_model: &str) -> Result<ChatResponse, ProviderError> {
        if !self.done {
            return Err(ProviderError::Protocol(
                "the stream ended before message_stop".into(),
            ));
        }
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                Block::Text(t) => text.push_str(&t),
                Block::ToolUse {
                    id,
                    name,
                    initial,
                    json,
                } => {
                    // A tool without parameters gets no JSON delta, or an empty one.
                    let arguments = if json.is_empty() {
                        match initial {
                            Value::Null => "{}".to_string(),
                            v => v.to_string(),
                        }
                    } else {
                        json
                    };
                    tool_calls.push(ToolCallRequest {
                        id,
                        name,
                        arguments,
                        signature: None,
                    });
                }
                Block::Other => {}
            }
        }
        let usage =
            (self.prompt_tokens.is_some() || self.completion_tokens.is_some()).then(|| Usage {
                prompt_tokens: self.prompt_tokens.unwrap_or(0),
                completion_tokens: self.completion_tokens.unwrap_or(0),
            });
        let model = self.model.map(Value::String);
        Ok(ChatResponse {
            content: (!text.is_empty()).then_some(text),
            tool_calls,
            finish_reason: self.finish_reason,
            usage,
            model: wire::pick_model(model.as_ref(), requested_model),
        })
    }
}

fn index(event: &Value) -> Result<u64, ProviderError> {
    event
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| ProviderError::Protocol("a content block event without an index".into()))
}

fn text_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
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
        if data.is_empty() {
            return Ok(None);
        }
        let event: Value = serde_json::from_str(data)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode a stream event: {e}")))?;
        self.event(&event)
    }

    /// Whether `message_stop` arrived.
    fn is_done(&self) -> bool {
        self.done
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
        let mut out = String::new();
        let mut all = Vec::new();
        for b in sse.as_bytes() {
            all.extend(lines.push(std::slice::from_ref(b)));
        }
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
    fn text_and_a_parameterless_tool_call() {
        check(
            concat!(
                "event: message_start\r\n",
                "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\r\n\r\n",
                "event: content_block_start\n",
                "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: ping\ndata: {\"type\": \"ping\"}\n\n",
                "event: content_block_delta\n",
                "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\n\n",
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                "event: content_block_start\n",
                "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"now\",\"input\":{}}}\n\n",
                "event: content_block_delta\n",
                "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
                "event: message_delta\n",
                "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ),
            expect![[r#"
                delta "Hé"
                ChatResponse {
                    content: Some(
                        "Hé",
                    ),
                    tool_calls: [
                        ToolCallRequest {
                            id: "toolu_1",
                            name: "now",
                            arguments: "{}",
                            signature: None,
                        },
                    ],
                    finish_reason: Some(
                        "tool_calls",
                    ),
                    usage: Some(
                        Usage {
                            prompt_tokens: 9,
                            completion_tokens: 9,
                        },
                    ),
                    model: "claude-x",
                }
            "#]],
        );
    }

    #[test]
    fn a_delta_for_a_block_that_never_started_is_a_protocol_error() {
        check(
            "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n",
            expect![[r#"
                error: provider protocol error: a delta for content block 3, which never started
            "#]],
        );
    }

    #[test]
    fn garbage_in_a_data_line_is_a_protocol_error() {
        check(
            "event: message_start\ndata: {nope\n\n",
            expect![[r#"
                error: provider protocol error: cannot decode a stream event: key must be a string at line 1 column 2
            "#]],
        );
    }
}
