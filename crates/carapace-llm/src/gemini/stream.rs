//! Gemini answers folded into one response: a whole `generateContent` answer, or the
//! chunks of `streamGenerateContent?alt=sse`, each `data:` line a whole
//! `GenerateContentResponse` whose text parts are deltas and whose function calls come
//! whole.

use super::wire::{self, GenerateResponse};
use crate::http::LineFold;
use crate::{ChatResponse, ProviderError, Usage};

/// Folds answers into one response.
#[derive(Default)]
pub(super) struct Assembler {
    text: String,
    /// `(id Gemini sent, name, arguments)`, in arrival order.
    calls: Vec<wire::Call>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    saw_candidate: bool,
}

impl Assembler {
    /// Feeds one `GenerateContentResponse`; returns the text it added, if any.
    pub(super) fn chunk(
        &mut self,
        chunk: GenerateResponse,
    ) -> Result<Option<String>, ProviderError> {
        if let Some(error) = chunk.error {
            let message = wire::error_message(&serde_json::json!({ "error": error }))
                .unwrap_or_else(|| "no message".into());
            return Err(ProviderError::Protocol(format!(
                "the provider reported an error in the stream: {message}"
            )));
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            return Err(ProviderError::Protocol(format!(
                "the provider blocked the prompt: {reason}"
            )));
        }
        if let Some(model) = chunk.model_version.filter(|m| !m.is_empty()) {
            self.model = Some(model);
        }
        if let Some(usage) = chunk.usage_metadata {
            // Each chunk carries the counts so far; the last one holds.
            self.usage = Some(usage.into_usage());
        }
        let mut delta: Option<String> = None;
        for candidate in chunk.candidates.unwrap_or_default() {
            if candidate.index.unwrap_or(0) != 0 {
                continue;
            }
            self.saw_candidate = true;
            if let Some(reason) = candidate.finish_reason {
                self.finish_reason = Some(reason);
            }
            let parts = candidate.content.and_then(|c| c.parts).unwrap_or_default();
            for part in parts {
                if let Some(call) = part.function_call {
                    self.calls
                        .push(wire::decode_call(call, part.thought_signature));
                    continue;
                }
                if part.thought == Some(true) {
                    continue;
                }
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    self.text.push_str(&text);
                    delta.get_or_insert_with(String::new).push_str(&text);
                }
            }
        }
        Ok(delta)
    }

    /// The response. Without any candidate there is no answer; a stream (`streamed`)
    /// that ended without a finish reason was cut off. Calls Gemini sent without an id
    /// get one from `new_id`.
    pub(super) fn finish(
        self,
        requested_model: &str,
        streamed: bool,
        mut new_id: impl FnMut() -> String,
    ) -> Result<ChatResponse, ProviderError> {
        if !self.saw_candidate {
            return Err(ProviderError::Protocol(
                "the answer has no candidates".into(),
            ));
        }
        if streamed && self.finish_reason.is_none() {
            return Err(ProviderError::Protocol(
                "the stream ended before the answer was complete".into(),
            ));
        }
        let has_calls = !self.calls.is_empty();
        let tool_calls = self
            .calls
            .into_iter()
            .map(|c| {
                wire::tool_call(
                    c.id.unwrap_or_else(&mut new_id),
                    c.name,
                    c.arguments,
                    c.signature,
                )
            })
            .collect();
        Ok(ChatResponse {
            content: (!self.text.is_empty()).then_some(self.text),
            tool_calls,
            finish_reason: self
                .finish_reason
                .map(|r| wire::finish_reason(&r, has_calls)),
            usage: self.usage,
            model: self.model.unwrap_or_else(|| requested_model.to_string()),
        })
    }
}

impl LineFold for Assembler {
    /// Feeds one SSE line; returns the text delta it carried, if any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        // Comments, blank separators and other fields carry nothing for us.
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(None);
        };
        let data = data.trim();
        if data.is_empty() {
            return Ok(None);
        }
        let chunk: GenerateResponse = serde_json::from_str(data)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode a stream chunk: {e}")))?;
        self.chunk(chunk)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::Assembler;
    use crate::http::{LineFold, Lines};

    /// Feeds `sse` byte by byte and prints the deltas, then the response or the error.
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
        }
        let mut n = 0;
        match asm.finish("asked-model", true, || {
            n += 1;
            format!("call_{n}")
        }) {
            Ok(resp) => out.push_str(&format!("{resp:#?}\n")),
            Err(e) => out.push_str(&format!("error: {e}\n")),
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn text_and_calls_across_chunks_with_thoughts_skipped() {
        check(
            concat!(
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"plan\",\"thought\":true},{\"text\":\"Let me \"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4},\"modelVersion\":\"gemini-x\"}\r\n\r\n",
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"look.\"},{\"functionCall\":{\"name\":\"a\",\"args\":{\"k\":1}}}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"id\":\"g7\",\"name\":\"b\"}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":6,\"thoughtsTokenCount\":2}}\r\n\r\n",
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
                            id: "g7",
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
                            prompt_tokens: 4,
                            completion_tokens: 8,
                        },
                    ),
                    model: "gemini-x",
                }
            "#]],
        );
    }

    #[test]
    fn a_safety_stop_without_content_is_an_empty_answer() {
        check(
            "data: {\"candidates\":[{\"finishReason\":\"SAFETY\",\"index\":0,\"safetyRatings\":[{\"category\":\"HARM_CATEGORY_HARASSMENT\",\"probability\":\"HIGH\",\"blocked\":true}]}]}\n\n",
            expect![[r#"
                ChatResponse {
                    content: None,
                    tool_calls: [],
                    finish_reason: Some(
                        "safety",
                    ),
                    usage: None,
                    model: "asked-model",
                }
            "#]],
        );
    }

    #[test]
    fn an_error_in_the_stream_and_garbage_fail_the_turn() {
        check(
            "data: {\"error\":{\"code\":500,\"message\":\"boom\",\"status\":\"INTERNAL\"}}\n\n",
            expect![[r#"
                error: provider protocol error: the provider reported an error in the stream: INTERNAL: boom
            "#]],
        );
        check(
            "data: {nope\n\n",
            expect![[r#"
                error: provider protocol error: cannot decode a stream chunk: key must be a string at line 1 column 2
            "#]],
        );
    }
}
