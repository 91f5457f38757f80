//! Responses read as they arrive, for protocol clients with long-lived bodies (MCP's
//! server-sent events): [`Egress::send_stream`] and the [`EgressStream`] it returns.
//!
//! The body is handed over as text (UTF-8, invalid sequences replaced, as
//! [`Egress::send_raw`] does), piece by piece. Injected credentials are redacted across
//! piece boundaries: text that could be the start of a credential is held back until a
//! later piece (or the end of the body) shows whether it is one, so fewer bytes than the
//! longest credential form wait at any time.
//!
//! There is no idle timeout: a server may stay silent on a standing stream for as long as
//! it likes. A connection that dies without closing is noticed by TCP keepalive
//! (reqwest's default: probes after 15 s of silence, three of them 15 s apart), which
//! ends the body with an error.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::body::{REDACTED, Redactor};
use crate::{Egress, EgressError, EgressRequest, EgressResponse, Scope, body_text, redacted_head};

impl Egress {
    /// Sends `req` and returns when the response head arrives, with the body to read as
    /// it comes (server-sent events of an MCP server).
    ///
    /// Checked, given credentials and returned like [`Egress::send_raw`]: one hop, a
    /// redirect returned as it is and never followed. The configuration's `timeout`
    /// bounds resolution, connection and the response head; the body has no deadline, no
    /// idle timeout and no size cap here (the caller bounds them, and drops the stream to
    /// close the connection). Injected credentials are redacted from the headers, the URL,
    /// errors and every piece of the body.
    pub async fn send_stream(
        &self,
        req: EgressRequest,
        scope: &Scope,
    ) -> Result<EgressStream, EgressError> {
        let redactor = Redactor::new(scope.injections.iter().map(|i| i.value.expose().as_str()));
        let deadline = Instant::now().checked_add(self.inner.config.timeout);
        let sent = within(deadline, async {
            let out = self.prepare(req, scope)?;
            self.send_hop(&out).await
        })
        .await;
        let (checked, response) = sent.map_err(|e| e.map_text(|s| redactor.redact(s)))?;
        let (headers, content_type) = redacted_head(&response, &redactor);
        Ok(EgressStream {
            status: response.status().as_u16(),
            final_url: redactor.redact(checked.url.as_str()),
            headers,
            content_type,
            body: response
                .bytes_stream()
                .map(|chunk| chunk.map(Vec::from).map_err(body_error))
                .boxed(),
            decoder: Utf8Decoder::default(),
            pieces: SplitRedactor::new(redactor),
            deadline,
            max_response_bytes: self.inner.config.max_response_bytes,
            done: false,
        })
    }
}

/// A response whose body is read as it arrives: the head at once, the body as a
/// [`Stream`] of text pieces with injected credentials replaced by `[REDACTED]`.
/// Dropping it closes the connection.
pub struct EgressStream {
    status: u16,
    final_url: String,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: BoxStream<'static, Result<Vec<u8>, EgressError>>,
    decoder: Utf8Decoder,
    pieces: SplitRedactor,
    /// The end of the request's `timeout` (`None`: too far to represent).
    deadline: Option<Instant>,
    max_response_bytes: u64,
    done: bool,
}

impl fmt::Debug for EgressStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressStream")
            .field("status", &self.status)
            .field("final_url", &self.final_url)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl EgressStream {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The URL requested (without injected query parameters).
    pub fn final_url(&self) -> &str {
        &self.final_url
    }

    /// The response headers.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The Content-Type header, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// Reads the rest of the body whole, as [`Egress::send_raw`] would have: cut at
    /// `max_response_bytes` (with `truncated` set) and within what is left of the
    /// request's `timeout`.
    pub async fn into_response(mut self) -> Result<EgressResponse, EgressError> {
        let max = self.max_response_bytes;
        // Text an earlier read held back is the start of the rest.
        let mut buf = std::mem::take(&mut self.pieces.pending).into_bytes();
        buf.append(&mut self.decoder.carry);
        let mut truncated = false;
        if buf.len() as u64 > max {
            buf.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            truncated = true;
        }
        let mut count = buf.len() as u64;
        let body = &mut self.body;
        let done = self.done;
        let read = async {
            while !done
                && !truncated
                && let Some(chunk) = body.next().await
            {
                let chunk = chunk?;
                let room = usize::try_from(max - count).unwrap_or(usize::MAX);
                let take = chunk.len().min(room);
                buf.extend_from_slice(&chunk[..take]);
                count += take as u64;
                truncated = take < chunk.len();
            }
            Ok(())
        };
        within(self.deadline, read).await?;
        Ok(EgressResponse {
            status: self.status,
            final_url: self.final_url,
            headers: self.headers,
            content_type: self.content_type,
            text: body_text(buf, truncated, &self.pieces.redactor),
            truncated,
            bytes: count,
            redirects: Vec::new(),
        })
    }
}

impl Stream for EgressStream {
    type Item = Result<String, EgressError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(this.body.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => {
                    let text = this.decoder.push(&bytes);
                    let piece = this.pieces.push(&text);
                    if !piece.is_empty() {
                        return Poll::Ready(Some(Ok(piece)));
                    }
                }
                Some(Err(e)) => {
                    // What was held back may be part of a credential: dropped.
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let text = this.decoder.finish();
                    let piece = this.pieces.finish(&text);
                    return Poll::Ready((!piece.is_empty()).then_some(Ok(piece)));
                }
            }
        }
    }
}

/// `fut` bounded by `deadline`, if there is one.
async fn within<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T, EgressError>>,
) -> Result<T, EgressError> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut)
            .await
            .unwrap_or(Err(EgressError::Timeout)),
        None => fut.await,
    }
}

fn body_error(e: reqwest::Error) -> EgressError {
    if e.is_timeout() {
        EgressError::Timeout
    } else {
        EgressError::Protocol("reading the response body failed".to_string())
    }
}

/// Bytes to text across piece boundaries: a character split between two pieces is kept
/// whole, an invalid sequence becomes U+FFFD.
#[derive(Debug, Default)]
struct Utf8Decoder {
    /// The start of a character whose remaining bytes have not arrived.
    carry: Vec<u8>,
}

impl Utf8Decoder {
    fn push(&mut self, bytes: &[u8]) -> String {
        let joined;
        let mut rest = if self.carry.is_empty() {
            bytes
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(bytes);
            joined = v;
            &joined[..]
        };
        let mut out = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return out;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            self.carry = after.to_vec();
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// The end of the body: an unfinished character is invalid.
    fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned()
    }
}

/// Redacts text that arrives in pieces, scanning left to right and replacing the longest
/// credential form that starts at each position; a position where a form could still
/// start (the text so far is a prefix of it) waits for more text.
#[derive(Debug)]
struct SplitRedactor {
    redactor: Redactor,
    /// The bytes a credential form can start with.
    firsts: Vec<u8>,
    /// Text not handed over yet.
    pending: String,
}

impl SplitRedactor {
    fn new(redactor: Redactor) -> SplitRedactor {
        let mut firsts: Vec<u8> = redactor
            .needles()
            .iter()
            .filter_map(|n| n.as_bytes().first().copied())
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        SplitRedactor {
            redactor,
            firsts,
            pending: String::new(),
        }
    }

    /// The redacted text that `text` (after what came before) makes certain.
    fn push(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        self.drain(false)
    }

    /// Everything left, after the last piece `text`.
    fn finish(&mut self, text: &str) -> String {
        self.pending.push_str(text);
        self.drain(true)
    }

    fn drain(&mut self, end: bool) -> String {
        let needles = self.redactor.needles();
        let s = self.pending.as_str();
        let bytes = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut emitted = 0;
        let mut i = 0;
        while i < s.len() {
            if self.firsts.binary_search(&bytes[i]).is_err() {
                i += 1;
                continue;
            }
            // A form's first byte never continues a character, so `i` is a boundary.
            let rest = &s[i..];
            let undecided = needles
                .iter()
                .any(|n| n.len() > rest.len() && n.starts_with(rest));
            if undecided && !end {
                break;
            }
            // Longest first: the first form found is the longest that matches.
            match needles.iter().find(|n| rest.starts_with(n.as_str())) {
                Some(n) => {
                    out.push_str(&s[emitted..i]);
                    out.push_str(REDACTED);
                    i += n.len();
                    emitted = i;
                }
                None => i += 1,
            }
        }
        out.push_str(&s[emitted..i]);
        self.pending.drain(..i);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` split at every pair of positions and checks each result against
    /// `expected`.
    fn check_splits(secrets: &[&str], text: &str, expected: &str) {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|b| **b >= a) {
                let mut r = SplitRedactor::new(Redactor::new(secrets.iter().copied()));
                let mut out = r.push(&text[..a]);
                out += &r.push(&text[a..b]);
                out += &r.finish(&text[b..]);
                assert_eq!(out, expected, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn credentials_split_across_pieces_are_redacted() {
        check_splits(&["sk-123"], "a sk-123 b sk-12 c", "a [REDACTED] b sk-12 c");
        check_splits(
            &["p/w x"],
            "raw p/w x, form p%2Fw+x, percent p%2Fw%20x, end",
            "raw [REDACTED], form [REDACTED], percent [REDACTED], end",
        );
        check_splits(&["ab"], "aaabab", "aa[REDACTED][REDACTED]");
        // A longer credential that starts like a shorter one is replaced whole.
        check_splits(&["abc", "abcdef"], "abcdef abcx", "[REDACTED] [REDACTED]x");
        check_splits(&["k\u{e9}y"], "caf\u{e9} k\u{e9}y", "caf\u{e9} [REDACTED]");
        check_splits(&[], "nothing to hide", "nothing to hide");
    }

    #[test]
    fn only_a_possible_start_of_a_credential_waits() {
        let mut r = SplitRedactor::new(Redactor::new(["sk-123"]));
        assert_eq!(r.push("token=sk-1"), "token=");
        assert_eq!(r.push("2"), "");
        assert_eq!(r.push("3 and s"), "[REDACTED] and ");
        assert_eq!(r.push("o on"), "so on");
        assert_eq!(r.finish(""), "");
        let mut r = SplitRedactor::new(Redactor::new(["sk-123"]));
        assert_eq!(r.push("ends with sk-"), "ends with ");
        assert_eq!(r.finish(""), "sk-");
    }

    #[test]
    fn characters_split_across_pieces_stay_whole() {
        let text = "a\u{e9}\u{20ac}\u{1f980}z";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut d = Utf8Decoder::default();
            let mut out = d.push(&bytes[..cut]);
            out += &d.push(&bytes[cut..]);
            out += &d.finish();
            assert_eq!(out, text, "cut at {cut}");
        }
        let invalid = b"a\xffb\xe2\x82";
        let mut d = Utf8Decoder::default();
        let out = d.push(invalid) + &d.finish();
        assert_eq!(out, String::from_utf8_lossy(invalid));
    }
}
