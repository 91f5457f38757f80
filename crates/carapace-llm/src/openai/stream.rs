//! Server-sent events of a streamed completion: bytes to lines, lines to a response.

use std::collections::BTreeMap;

use super::wire::{self, Chunk, WireToolCall};
use crate::http::LineFold;
use crate::{ChatResponse, ProviderError, ToolCallRequest, Usage};

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Folds the lines of a stream into one response.
#[derive(Default)]
pub(super) struct Assembler {
    text: String,
    calls: BTreeMap<u32, PartialCall>,
    last_index: Option<u32>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    done: bool,
}

impl Assembler {
    fn chunk(&mut self, chunk: Chunk) -> Result<Option<String>, ProviderError> {
        if let Some(error) = chunk.error {
            let message = wire::error_message(&serde_json::json!({ "error": error }))
                .unwrap_or_else(|| "no message".into());
            return Err(ProviderError::Protocol(format!(
                "the provider reported an error in the stream: {message}"
            )));
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into_usage());
        }
        let mut delta_text = None;
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = wire::content_text(delta.content).filter(|t| !t.is_empty()) {
                self.text.push_str(&text);
                delta_text.get_or_insert_with(String::new).push_str(&text);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                self.tool_call(call);
            }
        }
        Ok(delta_text)
    }

    fn tool_call(&mut self, call: WireToolCall) {
        let index = match call.index {
            Some(i) => i,
            None => self.index_of_unnumbered(call.id.as_deref()),
        };
        self.last_index = Some(index);
        let entry = self.calls.entry(index).or_default();
        // The id and name come whole in the first fragment; later fragments may repeat
        // them, so the first one wins. The arguments come in pieces.
        if entry.id.is_empty() {
            entry.id = call.id.unwrap_or_default();
        }
        if let Some(function) = call.function {
            if entry.name.is_empty() {
                entry.name = function.name.unwrap_or_default();
            }
            entry
                .arguments
                .push_str(&wire::arguments_text(function.arguments));
        }
    }

    /// Some servers leave out `index`: a fragment with an id not seen before starts a new
    /// call, anything else continues the last one.
    fn index_of_unnumbered(&self, id: Option<&str>) -> u32 {
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            if let Some((&i, _)) = self.calls.iter().find(|(_, c)| c.id == id) {
                return i;
            }
            return self.calls.keys().next_back().map_or(0, |k| k + 1);
        }
        self.last_index.unwrap_or(0)
    }

    /// The response, once the stream has ended. A stream that ended with neither
    /// `[DONE]` nor a finish reason was cut off.
    pub(super) fn finish(self, requested_model: &str) -> Result<ChatResponse, ProviderError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ProviderError::Protocol(
                "the stream ended before the answer was complete".into(),
            ));
        }
        let tool_calls = self
            .calls
            .into_values()
            .enumerate()
            .map(|(i, c)| ToolCallRequest {
                id: if c.id.is_empty() {
                    wire::fallback_call_id(i)
                } else {
                    c.id
                },
                name: c.name,
                arguments: c.arguments,
                signature: None,
            })
            .collect();
        Ok(ChatResponse {
            content: (!self.text.is_empty()).then_some(self.text),
            tool_calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
            model: wire::pick_model(self.model, requested_model),
        })
    }
}

impl LineFold for Assembler {
    /// Feeds one line; returns the text delta it carried, if any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        // Comments (`: keep-alive`), blank separators and fields other than `data`
        // (`event`, `id`, `retry`) carry nothing for us. Every compatible server puts one
        // JSON document on each `data` line, and some omit the blank line between events,
        // so each line is decoded on its own.
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(None);
        };
        let data = data.trim();
        if data.is_empty() {
            return Ok(None);
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode a stream chunk: {e}")))?;
        self.chunk(chunk)
    }

    /// Whether `data: [DONE]` arrived.
    fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::Assembler;
    use crate::http::{LineFold, Lines};

    /// Feeds `sse` byte by byte (the worst chunking a server can do) and prints the text
    /// deltas followed by the response or the error.
    fn check(sse: &str, expected: Expect) {
        let mut lines = Lines::default();
        let mut asm = Assembler::default();
        let mut out = String::new();
        let mut all = Vec::new();
        for b in sse.as_bytes() {
            all.extend(lines.push(std::slice::from_ref(b)));
        }
        all.extend(lines.rest());
        let mut failed = false;
        for line in all {
            if asm.is_done() {
                break;
            }
            match asm.line(&line) {
                Ok(Some(delta)) => out.push_str(&format!("delta {delta:?}\n")),
                Ok(None) => {}
                Err(e) => {
                    out.push_str(&format!("error: {e}\n"));
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            match asm.finish("asked-model") {
                Ok(resp) => out.push_str(&format!("{resp:#?}\n")),
                Err(e) => out.push_str(&format!("error: {e}\n")),
            }
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn openai_text_stream_with_usage_chunk() {
        check(
            concat!(
                "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
                "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n",
                "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo é\"},\"finish_reason\":null}],\"usage\":null}\n\n",
                "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
                "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
                "data: [DONE]\n\n",
            ),
            expect![[r#"
                delta "Hel"
                delta "lo é"
                ChatResponse {
                    content: Some(
                        "Hello é",
                    ),
                    tool_calls: [],
                    finish_reason: Some(
                        "stop",
                    ),
                    usage: Some(
                        Usage {
                            prompt_tokens: 9,
                            completion_tokens: 2,
                        },
                    ),
                    model: "gpt-x",
                }
            "#]],
        );
    }

    #[test]
    fn crlf_comments_keepalives_and_other_fields_are_tolerated() {
        check(
            concat!(
                ": keep-alive\r\n\r\n",
                "event: message\r\nid: 7\r\nretry: 100\r\n",
                "data:{\"choices\":[{\"delta\":{\"content\":\"a\",\"extra\":1}}],\"x_vendor\":true}\r\n\r\n",
                ":\r\n",
                "data: {\"choices\":[{\"delta\":{\"content\":null},\"finish_reason\":\"length\"}]}\r\n",
                "data: [DONE]\r\n",
            ),
            expect![[r#"
                delta "a"
                ChatResponse {
                    content: Some(
                        "a",
                    ),
                    tool_calls: [],
                    finish_reason: Some(
                        "length",
                    ),
                    usage: None,
                    model: "asked-model",
                }
            "#]],
        );
    }

    #[test]
    fn tool_call_fragments_are_assembled_by_index() {
        check(
            concat!(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"read_file\",\"arguments\":\"\"}}]}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"pa\"}}]}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"list_dir\",\"arguments\":\"{}\"}}]}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"th\\\":\\\"a\\\"}\"}}]}}]}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
                "data: [DONE]\n\n",
            ),
            expect![[r#"
                ChatResponse {
                    content: None,
                    tool_calls: [
                        ToolCallRequest {
                            id: "call_a",
                            name: "read_file",
                            arguments: "{\"path\":\"a\"}",
                            signature: None,
                        },
                        ToolCallRequest {
                            id: "call_b",
                            name: "list_dir",
                            arguments: "{}",
                            signature: None,
                        },
                    ],
                    finish_reason: Some(
                        "tool_calls",
                    ),
                    usage: None,
                    model: "asked-model",
                }
            "#]],
        );
    }

    #[test]
    fn tool_calls_without_index_or_id_still_assemble() {
        // As some Ollama and llama.cpp versions send them: no index, whole calls, an
        // object instead of a string for the arguments, no id at all.
        check(
            concat!(
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"x1\",\"function\":{\"name\":\"a\",\"arguments\":{\"k\":1}}}]}}]}\n",
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"x2\",\"function\":{\"name\":\"b\",\"arguments\":\"{\"}}]}}]}\n",
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"}\"}}]}}]}\n",
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":5,\"function\":{\"name\":\"c\",\"arguments\":\"[]\"}}]}}]}\n",
                "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n",
            ),
            expect![[r#"
                ChatResponse {
                    content: None,
                    tool_calls: [
                        ToolCallRequest {
                            id: "x1",
                            name: "a",
                            arguments: "{\"k\":1}",
                            signature: None,
                        },
                        ToolCallRequest {
                            id: "x2",
                            name: "b",
                            arguments: "{}",
                            signature: None,
                        },
                        ToolCallRequest {
                            id: "call_2",
                            name: "c",
                            arguments: "[]",
                            signature: None,
                        },
                    ],
                    finish_reason: Some(
                        "tool_calls",
                    ),
                    usage: None,
                    model: "asked-model",
                }
            "#]],
        );
    }

    #[test]
    fn a_stream_cut_off_before_the_end_is_an_error() {
        check(
            "data: {\"choices\":[{\"delta\":{\"content\":\"half\"}}]}\n\n",
            expect![[r#"
                delta "half"
                error: provider protocol error: the stream ended before the answer was complete
            "#]],
        );
    }

    #[test]
    fn an_error_object_in_the_stream_fails_the_turn() {
        check(
            concat!(
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "data: {\"error\":{\"message\":\"model overloaded\",\"type\":\"server_error\"}}\n\n",
            ),
            expect![[r#"
                delta "a"
                error: provider protocol error: the provider reported an error in the stream: model overloaded
            "#]],
        );
    }

    #[test]
    fn garbage_in_a_data_line_is_a_protocol_error() {
        check(
            "data: {not json\n\n",
            expect![[r#"
                error: provider protocol error: cannot decode a stream chunk: key must be a string at line 1 column 2
            "#]],
        );
    }

    #[test]
    fn a_last_line_without_newline_is_still_read() {
        check(
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]",
            expect![[r#"
                delta "x"
                ChatResponse {
                    content: Some(
                        "x",
                    ),
                    tool_calls: [],
                    finish_reason: Some(
                        "stop",
                    ),
                    usage: None,
                    model: "asked-model",
                }
            "#]],
        );
    }
}
