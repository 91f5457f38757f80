//! Ollama answers folded into one response: a whole `/api/chat` answer, or the lines of a
//! stream, each a whole JSON object whose `message.content` is a delta and whose tool
//! calls come whole.

use super::wire::{self, Chunk};
use crate::http::LineFold;
use crate::{ChatResponse, ProviderError, ToolCallRequest, Usage};

/// Folds answers into one response.
#[derive(Default)]
pub(super) struct Assembler {
    text: String,
    /// `(id Ollama sent, name, arguments)`, in arrival order.
    calls: Vec<(Option<String>, String, String)>,
    done_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    done: bool,
}

impl Assembler {
    /// Feeds one object; returns the text it added, if any.
    fn chunk(&mut self, chunk: Chunk) -> Result<Option<String>, ProviderError> {
        if let Some(error) = &chunk.error {
            let message = wire::error_message(&serde_json::json!({ "error": error }))
                .unwrap_or_else(|| "no message".into());
            return Err(ProviderError::Protocol(format!(
                "the provider reported an error in the stream: {message}"
            )));
        }
        if let Some(usage) = chunk.usage() {
            self.usage = Some(usage);
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(reason) = chunk.done_reason.filter(|r| !r.is_empty()) {
            self.done_reason = Some(reason);
        }
        self.done |= chunk.done == Some(true);
        let Some(message) = chunk.message else {
            return Ok(None);
        };
        for call in message.tool_calls.unwrap_or_default() {
            self.calls.push(wire::decode_call(call));
        }
        let text = message.content.filter(|t| !t.is_empty());
        if let Some(text) = &text {
            self.text.push_str(text);
        }
        Ok(text)
    }

    /// The response, once an object with `done: true` arrived; an answer without one was
    /// cut off. Calls Ollama sent without an id get one from `new_id`.
    pub(super) fn finish(
        self,
        requested_model: &str,
        mut new_id: impl FnMut() -> String,
    ) -> Result<ChatResponse, ProviderError> {
        if !self.done {
            return Err(ProviderError::Protocol(
                "the stream ended before the answer was complete".into(),
            ));
        }
        let has_calls = !self.calls.is_empty();
        let tool_calls = self
            .calls
            .into_iter()
            .map(|(id, name, arguments)| ToolCallRequest {
                id: id.unwrap_or_else(&mut new_id),
                name,
                arguments,
                signature: None,
            })
            .collect();
        Ok(ChatResponse {
            content: (!self.text.is_empty()).then_some(self.text),
            tool_calls,
            finish_reason: self.done_reason.map(|r| wire::finish_reason(&r, has_calls)),
            usage: self.usage,
            model: self.model.unwrap_or_else(|| requested_model.to_string()),
        })
    }
}

impl LineFold for Assembler {
    /// Feeds one line of newline-delimited JSON; returns the text delta it carried, if any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let chunk: Chunk = serde_json::from_str(line)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode a stream chunk: {e}")))?;
        self.chunk(chunk)
    }

    /// Whether the object with `done: true` arrived.
    fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::Assembler;
    use crate::http::{LineFold, Lines};

    /// Feeds `ndjson` byte by byte and prints the deltas, then the response or the error.
    fn check(ndjson: &str, expected: Expect) {
        let mut lines = Lines::default();
        let mut asm = Assembler::default();
        let mut all = Vec::new();
        for b in ndjson.as_bytes() {
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
        let mut n = 0;
        match asm.finish("asked-model", || {
            n += 1;
            format!("call_{n}")
        }) {
            Ok(resp) => out.push_str(&format!("{resp:#?}\n")),
            Err(e) => out.push_str(&format!("error: {e}\n")),
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn text_then_calls_then_the_counts() {
        check(
            concat!(
                "{\"model\":\"qwen3\",\"created_at\":\"2025-05-27T22:54:57Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Let me \"},\"done\":false}\n",
                "{\"model\":\"qwen3\",\"created_at\":\"2025-05-27T22:54:57Z\",\"message\":{\"role\":\"assistant\",\"content\":\"look.\"},\"done\":false}\n",
                "{\"model\":\"qwen3\",\"created_at\":\"2025-05-27T22:54:58Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"index\":0,\"name\":\"a\",\"arguments\":{\"k\":1}}},{\"id\":\"o7\",\"function\":{\"index\":1,\"name\":\"b\",\"arguments\":{}}}]},\"done\":false}\n",
                "{\"model\":\"qwen3\",\"created_at\":\"2025-05-27T22:54:58Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":1,\"prompt_eval_count\":12,\"eval_count\":7}\n",
                "{\"ignored\":\"after done\"}\n",
            ),
            expect![[r#"
                delta "Let me "
                delta "look."
                ChatResponse {
                    content: Some(
                        "Let me look.",
                    ),
                    tool_calls: [
                        ToolCallRequest {
                            id: "call_1",
                            name: "a",
                            arguments: "{\"k\":1}",
                            signature: None,
                        },
                        ToolCallRequest {
                            id: "o7",
                            name: "b",
                            arguments: "{}",
                            signature: None,
                        },
                    ],
                    finish_reason: Some(
                        "tool_calls",
                    ),
                    usage: Some(
                        Usage {
                            prompt_tokens: 12,
                            completion_tokens: 7,
                        },
                    ),
                    model: "qwen3",
                }
            "#]],
        );
    }

    #[test]
    fn an_error_line_a_cut_stream_and_garbage_fail_the_turn() {
        check(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Yes\"},\"done\":false}\n{\"error\":\"an error was encountered while running the model\"}\n",
            expect![[r#"
                delta "Yes"
                error: provider protocol error: the provider reported an error in the stream: an error was encountered while running the model
            "#]],
        );
        check(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Yes\"},\"done\":false}",
            expect![[r#"
                delta "Yes"
                error: provider protocol error: the stream ended before the answer was complete
            "#]],
        );
        check(
            "{nope\n",
            expect![[r#"
                error: provider protocol error: cannot decode a stream chunk: key must be a string at line 1 column 2
            "#]],
        );
    }
}
