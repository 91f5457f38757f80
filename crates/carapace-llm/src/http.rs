//! What every HTTP provider shares: the base URL check (plain `http` only to loopback),
//! the client built on first use, the key header, bounded reads, error bodies turned into
//! [`ProviderError`]s with the key cut out, and server-sent event lines.

use std::net::IpAddr;
use std::time::Duration;

use carapace_types::Secret;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::time::timeout;

use tokio::sync::mpsc::UnboundedSender;

use crate::{ProviderError, StreamEvent};

/// The most response bytes accepted for one call, streamed or not.
pub(crate) const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Error bodies are read only to take their message; nothing useful is longer.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// The longest message an error carries, in characters.
const MAX_MESSAGE_CHARS: usize = 500;

/// What a provider finds in an error body: the message, and a wait it asks for there
/// (Gemini's `RetryInfo`) when the `Retry-After` header has none.
pub(crate) type ErrorDecoder = fn(&Value) -> (Option<String>, Option<Duration>);

/// Authenticates one request just before it is sent, from the request itself: for
/// schemes whose headers depend on the method, URL, headers and body (AWS SigV4).
pub(crate) type Signer =
    Box<dyn Fn(&mut reqwest::Request) -> Result<(), ProviderError> + Send + Sync>;

/// One provider's endpoint and key: every request of a provider goes through here.
pub(crate) struct Transport {
    /// Built on first use: a daemon that is never asked anything holds no TLS state.
    client: std::sync::OnceLock<reqwest::Client>,
    /// Whether the base URL's host is loopback (reached without a proxy).
    loopback: bool,
    /// Without a trailing slash.
    base_url: String,
    /// The key, cut out of every error message (servers sometimes echo what they got).
    key: Option<Secret<String>>,
    /// The header that carries the key, its value marked sensitive so HTTP/2 never
    /// indexes it.
    key_header: Option<(HeaderName, Secret<HeaderValue>)>,
    decode_error: ErrorDecoder,
    /// Signs every request, for providers that authenticate each request on its own.
    signer: Option<Signer>,
    /// More secrets cut out of every error message, the signer's credentials.
    secrets: Vec<Secret<String>>,
    /// A header naming the error kind of an error answer (AWS `x-amzn-ErrorType`); the
    /// kind then opens the message.
    error_kind_header: Option<HeaderName>,
    pub(crate) request_timeout: Duration,
    pub(crate) stall_timeout: Duration,
}

/// How a provider sends its key: the header name and the value around the key, `{}`
/// standing for it (`Bearer {}`).
pub(crate) struct KeyHeader {
    pub(crate) name: HeaderName,
    pub(crate) format: &'static str,
}

impl Transport {
    /// Checks the base URL and the timeouts. The key only ever goes to `base_url`:
    /// redirects are not followed, and plain `http` is refused unless the host is
    /// loopback (then reached directly, never through a proxy).
    pub(crate) fn new(
        base_url: &str,
        key: Option<Secret<String>>,
        key_header: KeyHeader,
        decode_error: ErrorDecoder,
        request_timeout: Duration,
        stall_timeout: Duration,
    ) -> Result<Transport, ProviderError> {
        let invalid = |m: &str| ProviderError::InvalidConfig(m.to_string());
        let base_url = base_url.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base_url)
            .map_err(|e| ProviderError::InvalidConfig(format!("base_url is not a url: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("base_url must not carry credentials; use api_key"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("base_url must not have a query or a fragment"));
        }
        let loopback = is_loopback_host(url.host_str().unwrap_or_default());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(invalid(
                    "base_url must be https unless the host is loopback",
                ));
            }
            _ => return Err(invalid("base_url must be http or https")),
        }
        if request_timeout.is_zero() || stall_timeout.is_zero() {
            return Err(invalid("timeouts must be longer than zero"));
        }
        let key_header = match &key {
            None => None,
            Some(k) if k.expose().is_empty() => return Err(invalid("api key is empty")),
            Some(k) => {
                let mut value = HeaderValue::from_str(&key_header.format.replace("{}", k.expose()))
                    .map_err(|_| invalid("api key contains characters not allowed in a header"))?;
                value.set_sensitive(true);
                Some((key_header.name, Secret::new(value)))
            }
        };
        Ok(Transport {
            client: std::sync::OnceLock::new(),
            loopback,
            base_url,
            key,
            key_header,
            decode_error,
            signer: None,
            secrets: Vec::new(),
            error_kind_header: None,
            request_timeout,
            stall_timeout,
        })
    }

    /// Signs every request with `signer`; `secrets` (its credentials) are cut out of
    /// every error message like the key.
    pub(crate) fn signed_by(mut self, signer: Signer, secrets: Vec<Secret<String>>) -> Transport {
        self.signer = Some(signer);
        self.secrets = secrets;
        self
    }

    /// Opens the message of an error answer with the kind this header names, without
    /// anything after a `:` (AWS appends a namespace URL there).
    pub(crate) fn error_kind_header(mut self, name: HeaderName) -> Transport {
        self.error_kind_header = Some(name);
        self
    }

    /// The base URL, without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The key, for `Debug` (which redacts it).
    pub(crate) fn key(&self) -> &Option<Secret<String>> {
        &self.key
    }

    /// The HTTP client, built on first use.
    pub(crate) fn client(&self) -> Result<&reqwest::Client, ProviderError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.request_timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("carapace/", env!("CARGO_PKG_VERSION")));
        if self.loopback {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| {
            ProviderError::InvalidConfig(format!("cannot build the http client: {e}"))
        })?;
        // Two first requests may race; both clients work and one is kept.
        Ok(self.client.get_or_init(|| client))
    }

    /// Sends a request with the key header; any status but success becomes
    /// [`ProviderError::Http`] with the provider's message and the wait it asked for.
    pub(crate) async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let builder = match &self.key_header {
            Some((name, value)) => builder.header(name.clone(), value.expose().clone()),
            None => builder,
        };
        let resp = match &self.signer {
            None => builder.send().await,
            Some(sign) => {
                let (client, request) = builder.build_split();
                let mut request = request.map_err(transport_error)?;
                sign(&mut request)?;
                client.execute(request).await
            }
        };
        let resp = resp.map_err(transport_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let header_wait = crate::retry_after(resp.headers());
        let kind = self
            .error_kind_header
            .as_ref()
            .and_then(|name| resp.headers().get(name)?.to_str().ok())
            .and_then(|v| v.split(':').next())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        let body = read_bounded(resp, MAX_ERROR_BODY_BYTES, None)
            .await
            .unwrap_or_default();
        let (message, body_wait) = serde_json::from_slice::<Value>(&body)
            .ok()
            .map(|v| (self.decode_error)(&v))
            .unwrap_or_default();
        let message = message
            .or_else(|| {
                let text = String::from_utf8_lossy(&body).trim().to_string();
                (!text.is_empty()).then_some(text)
            })
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_lowercase()
            });
        let message = match kind {
            Some(kind) => format!("{kind}: {message}"),
            None => message,
        };
        Err(ProviderError::Http {
            status: status.as_u16(),
            message,
            retry_after: header_wait.or(body_wait),
        })
    }

    /// Sends the request of a streamed call: the response headers must arrive within the
    /// request timeout.
    pub(crate) async fn send_streamed(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        timeout(self.request_timeout, self.send(builder))
            .await
            .map_err(|_| ProviderError::Timeout)?
    }

    /// The whole body of an unstreamed answer, at most [`MAX_RESPONSE_BYTES`].
    pub(crate) async fn read(&self, resp: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
        read_bounded(resp, MAX_RESPONSE_BYTES, None).await
    }

    /// The whole body of an answer that was asked to stream but came in one piece: each
    /// piece within the stall timeout of the previous one.
    pub(crate) async fn read_unstreamed(
        &self,
        resp: reqwest::Response,
    ) -> Result<Vec<u8>, ProviderError> {
        read_bounded(resp, MAX_RESPONSE_BYTES, Some(self.stall_timeout)).await
    }

    /// Feeds each line of a streamed body to `on_line` until it says the stream is done
    /// (`Ok(true)`) or the body ends (a last line without a newline included). Each
    /// piece must arrive within the stall timeout; the body is bounded.
    pub(crate) async fn for_each_line(
        &self,
        resp: reqwest::Response,
        mut on_line: impl FnMut(&str) -> Result<bool, ProviderError>,
    ) -> Result<(), ProviderError> {
        let mut lines = Lines::default();
        let mut done = false;
        self.for_each_piece(resp, |piece| {
            for line in lines.push(piece) {
                if on_line(&line)? {
                    done = true;
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await?;
        if !done && let Some(last) = lines.rest() {
            on_line(&last)?;
        }
        Ok(())
    }

    /// Feeds each piece of a streamed body, as it arrives, to `on_piece` until it says
    /// the stream is done (`Ok(true)`) or the body ends. Each piece must arrive within the
    /// stall timeout; the body is bounded.
    pub(crate) async fn for_each_piece(
        &self,
        resp: reqwest::Response,
        mut on_piece: impl FnMut(&[u8]) -> Result<bool, ProviderError>,
    ) -> Result<(), ProviderError> {
        let mut body = resp.bytes_stream();
        let mut received = 0usize;
        loop {
            let piece = timeout(self.stall_timeout, body.next())
                .await
                .map_err(|_| ProviderError::Stalled)?;
            let Some(piece) = piece else { return Ok(()) };
            let piece = piece.map_err(transport_error)?;
            received += piece.len();
            if received > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            if on_piece(&piece)? {
                return Ok(());
            }
        }
    }

    /// A streamed call answered in one piece (a server or proxy that ignored the request
    /// to stream): the whole body decoded by `decode`, its text sent as one delta.
    pub(crate) async fn whole_answer(
        &self,
        resp: reqwest::Response,
        events: &UnboundedSender<StreamEvent>,
        decode: impl FnOnce(&[u8]) -> Result<crate::ChatResponse, ProviderError>,
    ) -> Result<crate::ChatResponse, ProviderError> {
        let bytes = self.read_unstreamed(resp).await?;
        let response = decode(&bytes)?;
        if let Some(text) = &response.content {
            let _ = events.send(StreamEvent::TextDelta(text.clone()));
        }
        Ok(response)
    }

    /// Folds the lines of a streamed body into `fold`, sending each piece of text it
    /// gives as a delta, until it is done or the body ends.
    pub(crate) async fn stream_text(
        &self,
        resp: reqwest::Response,
        fold: &mut impl LineFold,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<(), ProviderError> {
        self.for_each_line(resp, |line| {
            if let Some(delta) = fold.line(line)? {
                // A consumer that went away does not stop the turn; it still has to
                // finish so the caller gets the tool calls.
                let _ = events.send(StreamEvent::TextDelta(delta));
            }
            Ok(fold.is_done())
        })
        .await
    }

    /// Sends a request and decodes its bounded answer as one JSON document; `what` names
    /// it in the error (`the model list`).
    pub(crate) async fn fetch_json(
        &self,
        builder: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, ProviderError> {
        let resp = self.send(builder).await?;
        let bytes = self.read(resp).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Protocol(format!("cannot decode {what}: {e}")))
    }

    /// Runs one turn: a streamed one (`streamed`) is bounded by its stall timeout, an
    /// unstreamed one by the request timeout; either way the error is scrubbed.
    pub(crate) async fn turn<T>(
        &self,
        streamed: bool,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if streamed {
            call.await.map_err(|e| self.scrub(e))
        } else {
            self.bounded(call).await
        }
    }

    /// The fields every provider shows in its `Debug`, the key redacted.
    pub(crate) fn debug_fields(&self, d: &mut std::fmt::DebugStruct<'_, '_>) {
        d.field("base_url", &self.base_url)
            .field("api_key", &self.key)
            .field("request_timeout", &self.request_timeout)
            .field("stall_timeout", &self.stall_timeout);
    }

    /// `call` within the request timeout, its error scrubbed.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let result = timeout(self.request_timeout, call)
            .await
            .unwrap_or(Err(ProviderError::Timeout));
        result.map_err(|e| self.scrub(e))
    }

    /// The error with any copy of the key cut out and the message bounded.
    pub(crate) fn scrub(&self, err: ProviderError) -> ProviderError {
        let clean = |m: String| {
            let m = self
                .key
                .iter()
                .chain(&self.secrets)
                .filter(|s| !s.expose().is_empty())
                .fold(m, |m, s| m.replace(s.expose().as_str(), "[REDACTED]"));
            m.chars().take(MAX_MESSAGE_CHARS).collect::<String>()
        };
        match err {
            ProviderError::Http {
                status,
                message,
                retry_after,
            } => ProviderError::Http {
                status,
                message: clean(message),
                retry_after,
            },
            ProviderError::Connect(m) => ProviderError::Connect(clean(m)),
            ProviderError::Protocol(m) => ProviderError::Protocol(clean(m)),
            ProviderError::InvalidConfig(m) => ProviderError::InvalidConfig(clean(m)),
            other => other,
        }
    }
}

/// A sampling temperature as a JSON number, through its shortest decimal form so 0.2f32
/// goes out as 0.2 and not as 0.20000000298023224; `None` when unset or not finite.
pub(crate) fn temperature(t: Option<f32>) -> Option<Value> {
    let t = t.filter(|t| t.is_finite())?;
    let n = serde_json::Number::from_f64(t.to_string().parse().ok()?)?;
    Some(Value::Number(n))
}

/// A provider's reader of streamed lines (server-sent events).
pub(crate) trait LineFold {
    /// Takes one line; returns the piece of text it carried, if any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError>;

    /// Whether the stream said it is complete; the rest of the body is not read.
    fn is_done(&self) -> bool {
        false
    }
}

/// Whether a URL host is `localhost` or a loopback address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the answer is one JSON document (a server that ignored a request to stream).
pub(crate) fn is_json(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Reads a whole body, failing once it grows past `limit`. With `gap`, each piece must
/// arrive within that long of the previous one.
async fn read_bounded(
    resp: reqwest::Response,
    limit: usize,
    gap: Option<Duration>,
) -> Result<Vec<u8>, ProviderError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = resp.bytes_stream();
    let mut out = Vec::new();
    loop {
        let piece = match gap {
            Some(gap) => timeout(gap, body.next())
                .await
                .map_err(|_| ProviderError::Stalled)?,
            None => body.next().await,
        };
        let Some(piece) = piece else { return Ok(out) };
        let piece = piece.map_err(transport_error)?;
        if out.len() + piece.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&piece);
    }
}

pub(crate) fn too_large() -> ProviderError {
    ProviderError::Protocol(format!(
        "the response is larger than {} MiB",
        MAX_RESPONSE_BYTES >> 20
    ))
}

/// A failure below HTTP. The message is the error chain without the URL.
fn transport_error(err: reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        return ProviderError::Timeout;
    }
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    ProviderError::Connect(message)
}

/// Splits a byte stream into lines, whatever the chunk boundaries. Accepts `\n` and
/// `\r\n` endings.
#[derive(Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline, so a long line that arrives in
    /// many pieces is scanned once.
    scanned: usize,
}

impl Lines {
    /// Adds bytes and returns the lines they completed.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(pos) = self.buf[from..].iter().position(|b| *b == b'\n') {
            let end = from + pos;
            lines.push(line_text(&self.buf[start..end]));
            start = end + 1;
            from = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        lines
    }

    /// The last line, when the stream ended without a newline after it.
    pub(crate) fn rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        (!rest.is_empty()).then(|| line_text(&rest))
    }
}

fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use carapace_types::Secret;
    use reqwest::header::HeaderName;

    use super::{KeyHeader, Lines, Transport};
    use crate::ProviderError;

    fn transport(url: &str) -> Result<Transport, ProviderError> {
        Transport::new(
            url,
            Some(Secret::new("k-123".into())),
            KeyHeader {
                name: HeaderName::from_static("x-api-key"),
                format: "{}",
            },
            |_| (None, None),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn plain_http_is_refused_unless_the_host_is_loopback() {
        for ok in [
            "https://api.example.com",
            "http://127.0.0.1:8080/v1",
            "http://127.9.9.9",
            "http://localhost:11434",
            "http://[::1]:8000",
        ] {
            assert!(transport(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.example.com",
            "http://10.0.0.2:11434",
            "http://169.254.169.254",
            "http://localhost.example.com",
            "ftp://127.0.0.1",
            "https://user:pw@api.example.com",
            "https://api.example.com/?key=1",
            "not a url",
        ] {
            assert!(
                matches!(transport(bad), Err(ProviderError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_lose_every_copy_of_the_key_and_are_bounded() {
        let t = transport("https://api.example.com").unwrap();
        let long = format!("bad key k-123 (k-123) {}", "x".repeat(1000));
        let ProviderError::Http { message, .. } = t.scrub(ProviderError::Http {
            status: 401,
            message: long,
            retry_after: None,
        }) else {
            panic!("not http");
        };
        assert!(message.starts_with("bad key [REDACTED] ([REDACTED]) x"));
        assert!(!message.contains("k-123"));
        assert_eq!(message.chars().count(), 500);
    }

    #[test]
    fn lines_are_split_whatever_the_chunk_boundaries() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"data: a"), Vec::<String>::new());
        assert_eq!(lines.push(b"bc\r\n\ndata"), vec!["data: abc", ""]);
        assert_eq!(lines.push(b": x\n"), vec!["data: x"]);
        assert_eq!(lines.push(b"tail"), Vec::<String>::new());
        assert_eq!(lines.rest().as_deref(), Some("tail"));
        assert_eq!(lines.rest(), None);
    }
}
