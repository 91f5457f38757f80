//! A streamed Converse answer: bytes to event stream frames (`application/vnd.amazon.eventstream`),
//! frames to a response.
//!
//! A frame is a prelude (total length and headers length, both u32 big-endian, and the
//! CRC32 of those eight bytes), the headers (each a name length byte, the name, a type
//! byte and a value), the payload (here JSON), and the CRC32 of everything before it.
//! Frames may arrive cut anywhere; a checksum that does not match fails the turn.

use std::collections::BTreeMap;

use serde_json::Value;

use super::wire;
use crate::{ChatResponse, ProviderError, ToolCallRequest, Usage};

/// Prelude: total length, headers length, prelude checksum.
const PRELUDE_LEN: usize = 12;
/// The message checksum at the end of a frame.
const CRC_LEN: usize = 4;
/// The largest frame the event stream format allows (16 MiB); the whole body is bounded
/// to the same by the transport.
const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// One decoded frame: its string-valued headers and its payload.
#[derive(Debug)]
pub(super) struct Frame {
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl Frame {
    /// The value of a string header.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn protocol(message: &str) -> ProviderError {
    ProviderError::Protocol(message.to_string())
}

/// Cuts a byte stream into frames, whatever the chunk boundaries.
#[derive(Default)]
pub(super) struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// Adds bytes and returns the frames they completed, each checked against both of its
    /// checksums.
    pub(super) fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, ProviderError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut start = 0;
        while self.buf.len() - start >= PRELUDE_LEN {
            let rest = &self.buf[start..];
            let word = |at: usize| {
                u32::from_be_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]])
            };
            if crc32fast::hash(&rest[..8]) != word(8) {
                return Err(protocol("an event stream frame has a bad prelude checksum"));
            }
            let (total, headers_len) = (word(0) as usize, word(4) as usize);
            if total > MAX_FRAME_LEN {
                return Err(crate::http::too_large());
            }
            if total < PRELUDE_LEN + CRC_LEN || headers_len > total - PRELUDE_LEN - CRC_LEN {
                return Err(protocol("an event stream frame has impossible lengths"));
            }
            if rest.len() < total {
                break;
            }
            let (body, crc) = rest[..total].split_at(total - CRC_LEN);
            if crc32fast::hash(body).to_be_bytes() != crc {
                return Err(protocol("an event stream frame has a bad message checksum"));
            }
            let (headers, payload) = body[PRELUDE_LEN..].split_at(headers_len);
            frames.push(Frame {
                headers: parse_headers(headers)?,
                payload: payload.to_vec(),
            });
            start += total;
        }
        self.buf.drain(..start);
        Ok(frames)
    }

    /// Fails when the stream ended in the middle of a frame.
    pub(super) fn finish(&self) -> Result<(), ProviderError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(protocol("the stream ended in the middle of a frame"))
        }
    }
}

/// The string-valued headers of a frame; values of the other types are skipped.
fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, String)>, ProviderError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], ProviderError> {
        if bytes.len() < n {
            return Err(protocol("an event stream header runs past its frame"));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = usize::from(take(&mut bytes, 1)?[0]);
        let name = String::from_utf8_lossy(take(&mut bytes, name_len)?).into_owned();
        let kind = take(&mut bytes, 1)?[0];
        let value_len = match kind {
            0 | 1 => 0, // true, false
            2 => 1,     // byte
            3 => 2,     // short
            4 => 4,     // integer
            5 | 8 => 8, // long, timestamp
            9 => 16,    // uuid
            6 | 7 => {
                // byte array, string: a u16 length first
                let len = take(&mut bytes, 2)?;
                usize::from(u16::from_be_bytes([len[0], len[1]]))
            }
            other => {
                return Err(ProviderError::Protocol(format!(
                    "an event stream header of unknown type {other}"
                )));
            }
        };
        let value = take(&mut bytes, value_len)?;
        if kind == 7 {
            headers.push((name, String::from_utf8_lossy(value).into_owned()));
        }
    }
    Ok(headers)
}

/// A content block being streamed. Text blocks have no start event: their first delta
/// opens them.
enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
}

/// Folds the events of a stream into one response.
#[derive(Default)]
pub(super) struct Assembler {
    blocks: BTreeMap<u64, Block>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    stopped: bool,
    done: bool,
}

impl Assembler {
    /// Takes one frame; returns the piece of text it carried, if any. An exception frame
    /// is the error the turn fails with.
    pub(super) fn frame(&mut self, frame: &Frame) -> Result<Option<String>, ProviderError> {
        match frame.header(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let kind = frame.header(":exception-type").unwrap_or("");
                let message = serde_json::from_slice::<Value>(&frame.payload)
                    .ok()
                    .and_then(|v| wire::error_message(&v))
                    .unwrap_or_else(|| "no message".into());
                // `throttlingException` is `ThrottlingException` in an HTTP error.
                let mut chars = kind.chars();
                let http_kind: String = chars
                    .next()
                    .map(|c| c.to_ascii_uppercase())
                    .into_iter()
                    .chain(chars)
                    .collect();
                return Err(ProviderError::Http {
                    status: wire::exception_status(kind),
                    message: format!("{http_kind}: {message}"),
                    retry_after: None,
                });
            }
            Some("error") => {
                return Err(ProviderError::Protocol(format!(
                    "the event stream failed: {}: {}",
                    frame.header(":error-code").unwrap_or("no code"),
                    frame.header(":error-message").unwrap_or("no message"),
                )));
            }
            _ => {
                return Err(protocol(
                    "an event stream frame without a known message type",
                ));
            }
        }
        let event: Value = serde_json::from_slice(&frame.payload)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode a stream event: {e}")))?;
        match frame.header(":event-type").unwrap_or("") {
            "contentBlockStart" => {
                if let Some(tool) = event.pointer("/start/toolUse") {
                    let field = |k: &str| {
                        tool.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    };
                    let block = Block::ToolUse {
                        id: field("toolUseId"),
                        name: field("name"),
                        json: String::new(),
                    };
                    self.blocks.insert(index(&event)?, block);
                }
            }
            "contentBlockDelta" => return self.delta(&event),
            "messageStop" => {
                self.finish_reason = event
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .map(wire::finish_reason);
                self.stopped = true;
            }
            "metadata" => {
                if let Some(usage) = event.get("usage") {
                    self.usage = Some(wire::usage(usage));
                }
                // The last event: it follows messageStop.
                self.done = self.stopped;
            }
            // `messageStart`, `contentBlockStop` and event types added later.
            _ => {}
        }
        Ok(None)
    }

    fn delta(&mut self, event: &Value) -> Result<Option<String>, ProviderError> {
        let index = index(event)?;
        let delta = event.get("delta").unwrap_or(&Value::Null);
        if let Some(piece) = delta.get("text").and_then(Value::as_str) {
            let block = self
                .blocks
                .entry(index)
                .or_insert_with(|| Block::Text(String::new()));
            let Block::Text(text) = block else {
                return Err(ProviderError::Protocol(format!(
                    "a text delta for content block {index}, which is a tool call"
                )));
            };
            text.push_str(piece);
            return Ok((!piece.is_empty()).then(|| piece.to_string()));
        }
        if let Some(piece) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
            let Some(Block::ToolUse { json, .. }) = self.blocks.get_mut(&index) else {
                return Err(ProviderError::Protocol(format!(
                    "a tool input delta for content block {index}, which is not a tool call"
                )));
            };
            json.push_str(piece);
        }
        // Reasoning and other deltas carry nothing a turn reports.
        Ok(None)
    }

    /// Whether the stream is over: `metadata` arrived after `messageStop`.
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// The response, once `messageStop` arrived; a stream that ended before it was cut
    /// off. Bedrock does not name the model that answered, so it is the one asked for.
    pub(super) fn finish(self, requested_model: &str) -> Result<ChatResponse, ProviderError> {
        if !self.stopped {
            return Err(protocol("the stream ended before messageStop"));
        }
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                Block::Text(t) => text.push_str(&t),
                Block::ToolUse { id, name, json } => tool_calls.push(ToolCallRequest {
                    id,
                    name,
                    // A tool without parameters may get no input delta at all.
                    arguments: if json.is_empty() { "{}".into() } else { json },
                    signature: None,
                }),
            }
        }
        Ok(ChatResponse {
            content: (!text.is_empty()).then_some(text),
            tool_calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
            model: requested_model.to_string(),
        })
    }
}

fn index(event: &Value) -> Result<u64, ProviderError> {
    event
        .get("contentBlockIndex")
        .and_then(Value::as_u64)
        .ok_or_else(|| protocol("a content block event without a contentBlockIndex"))
}

#[cfg(test)]
mod tests {
    use carapace_testkit::bedrock::{event_frame, exception_frame, frame};
    use expect_test::{Expect, expect};
    use serde_json::json;

    use super::{Assembler, Frames};

    /// Feeds the frames byte by byte and prints the text deltas followed by the response
    /// or the error.
    fn check(frames: &[Vec<u8>], expected: Expect) {
        let mut decoder = Frames::default();
        let mut asm = Assembler::default();
        let mut out = String::new();
        let result = (|| {
            for b in frames.concat() {
                for f in decoder.push(&[b])? {
                    if let Some(delta) = asm.frame(&f)? {
                        out.push_str(&format!("delta {delta:?}\n"));
                    }
                }
            }
            decoder.finish()?;
            asm.finish("asked-model")
        })();
        match result {
            Ok(resp) => out.push_str(&format!("{resp:#?}\n")),
            Err(e) => out.push_str(&format!("error: {e}\n")),
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn text_then_a_tool_call_then_the_counts() {
        check(
            &[
                event_frame("messageStart", json!({ "role": "assistant" })),
                event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "text": "Hé " } }),
                ),
                event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "text": "there" } }),
                ),
                event_frame("contentBlockStop", json!({ "contentBlockIndex": 0 })),
                event_frame(
                    "contentBlockStart",
                    json!({ "contentBlockIndex": 1, "start": { "toolUse": { "toolUseId": "tooluse_1", "name": "read" } } }),
                ),
                event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 1, "delta": { "toolUse": { "input": "{\"pa" } } }),
                ),
                event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 1, "delta": { "toolUse": { "input": "th\":\"a\"}" } } }),
                ),
                event_frame("contentBlockStop", json!({ "contentBlockIndex": 1 })),
                event_frame(
                    "contentBlockStart",
                    json!({ "contentBlockIndex": 2, "start": { "toolUse": { "toolUseId": "tooluse_2", "name": "now" } } }),
                ),
                event_frame("contentBlockStop", json!({ "contentBlockIndex": 2 })),
                event_frame("messageStop", json!({ "stopReason": "tool_use" })),
                event_frame(
                    "metadata",
                    json!({ "usage": { "inputTokens": 5, "outputTokens": 9, "totalTokens": 14 }, "metrics": { "latencyMs": 1 } }),
                ),
            ],
            expect![[r#"
                delta "Hé "
                delta "there"
                ChatResponse {
                    content: Some(
                        "Hé there",
                    ),
                    tool_calls: [
                        ToolCallRequest {
                            id: "tooluse_1",
                            name: "read",
                            arguments: "{\"path\":\"a\"}",
                            signature: None,
                        },
                        ToolCallRequest {
                            id: "tooluse_2",
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
                            prompt_tokens: 5,
                            completion_tokens: 9,
                        },
                    ),
                    model: "asked-model",
                }
            "#]],
        );
    }

    #[test]
    fn an_exception_frame_is_the_error_of_the_turn() {
        check(
            &[
                event_frame("messageStart", json!({ "role": "assistant" })),
                event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "text": "Hi" } }),
                ),
                exception_frame(
                    "throttlingException",
                    "Too many requests, please wait before trying again.",
                ),
            ],
            expect![[r#"
                delta "Hi"
                error: provider answered http 429: ThrottlingException: Too many requests, please wait before trying again.
            "#]],
        );
        check(
            &[frame(
                &[
                    (":message-type", "error"),
                    (":error-code", "InternalFailure"),
                    (":error-message", "boom"),
                ],
                b"",
            )],
            expect![[r#"
                error: provider protocol error: the event stream failed: InternalFailure: boom
            "#]],
        );
    }

    #[test]
    fn broken_frames_and_cut_streams_are_protocol_errors() {
        let good = event_frame("messageStart", json!({ "role": "assistant" }));
        let mut bad_message = good.clone();
        let last = bad_message.len() - 1;
        bad_message[last] ^= 1;
        check(
            &[bad_message],
            expect![[r#"
                error: provider protocol error: an event stream frame has a bad message checksum
            "#]],
        );
        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 1;
        check(
            &[bad_prelude],
            expect![[r#"
                error: provider protocol error: an event stream frame has a bad prelude checksum
            "#]],
        );
        check(
            &[good[..good.len() - 3].to_vec()],
            expect![[r#"
                error: provider protocol error: the stream ended in the middle of a frame
            "#]],
        );
        check(
            std::slice::from_ref(&good),
            expect![[r#"
                error: provider protocol error: the stream ended before messageStop
            "#]],
        );
        check(
            &[
                good,
                event_frame(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 4, "delta": { "toolUse": { "input": "{" } } }),
                ),
            ],
            expect![[r#"
                error: provider protocol error: a tool input delta for content block 4, which is not a tool call
            "#]],
        );
    }

    #[test]
    fn headers_of_every_type_are_skipped_and_strings_kept() {
        // `:event-type` after a bool, a byte, a long, a byte array and a uuid header.
        let mut headers = Vec::new();
        for (name, kind, value) in [
            ("t", 0u8, vec![]),
            ("b", 2, vec![7]),
            ("l", 5, vec![0; 8]),
            ("a", 6, vec![0, 2, 1, 2]),
            ("u", 9, vec![0; 16]),
        ] {
            headers.push(name.len() as u8);
            headers.extend_from_slice(name.as_bytes());
            headers.push(kind);
            headers.extend(value);
        }
        let payload = br#"{"contentBlockIndex":0,"delta":{"text":"ok"}}"#;
        let mut plain = frame(
            &[
                (":message-type", "event"),
                (":event-type", "contentBlockDelta"),
            ],
            payload,
        );
        // Rebuild with the extra headers in front.
        let headers_len = u32::from_be_bytes(plain[4..8].try_into().unwrap()) as usize;
        let mut all = headers;
        all.extend_from_slice(&plain[12..12 + headers_len]);
        let total = (12 + all.len() + payload.len() + 4) as u32;
        plain.clear();
        plain.extend_from_slice(&total.to_be_bytes());
        plain.extend_from_slice(&(all.len() as u32).to_be_bytes());
        plain.extend_from_slice(&crc32fast::hash(&plain).to_be_bytes());
        plain.extend_from_slice(&all);
        plain.extend_from_slice(payload);
        plain.extend_from_slice(&crc32fast::hash(&plain).to_be_bytes());
        let frames = Frames::default().push(&plain).unwrap();
        let mut asm = Assembler::default();
        assert_eq!(asm.frame(&frames[0]).unwrap().as_deref(), Some("ok"));
    }
}
