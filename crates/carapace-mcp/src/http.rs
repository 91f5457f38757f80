//! Streamable HTTP servers, every request through the egress client.
//!
//! rmcp's [`StreamableHttpClientTransport`] speaks the protocol; [`EgressHttp`] is the
//! HTTP client it uses. Every request goes through egress: the allowlists of the
//! configuration and the scope, the SSRF guard with pinned addresses, credentials injected
//! for their hosts only and redacted from what comes back (also when a credential is split
//! between two pieces of a stream). A redirect is never followed (the server's URL is what
//! the owner allowed); it fails the request.
//!
//! POSTs and the standing GET go out with [`Egress::send_stream`]; the egress `timeout`
//! bounds only the response head. An SSE answer is parsed as it arrives (WHATWG line
//! rules) and each event goes to rmcp at once, so progress and other messages of a call
//! arrive during it and a call may run as long as its own deadline (the Gate's) allows.
//! Each event is capped at rmcp's `max_sse_event_size`, never above the egress
//! `max_response_bytes`: on a POST's stream an event past it fails the call at once (with
//! an error made here that names the limit, and the stream is closed); on the GET stream
//! it is skipped. A JSON answer is read whole within the egress limits (`max_response_bytes`
//! and `timeout`, [`carapace_egress::EgressStream::into_response`]); so is the answer to
//! the DELETE that ends a session.
//!
//! The GET stream carries what the server sends on its own:
//! `notifications/tools/list_changed` outside a call, server requests. A server that
//! answers it with 405 has no such stream, and rmcp then uses POST responses only. rmcp
//! reopens a GET stream that ends or fails (with `Last-Event-ID` when the server numbers
//! its events), waiting 1 s, doubling up to 30 s between failed tries; a 401 or 403 stops
//! it. rmcp does not retry the first opening of a session's stream, so that is retried
//! here (0.5 s doubling to 30 s, longer if a Retry-After asks) while its failure may pass
//! (429, 5xx, no connection, a timeout). What the server sends while the stream is closed is lost unless the server replays
//! it. Neither stream has an idle timeout (a dead connection is noticed by TCP keepalive).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use carapace_egress::{Egress, EgressError, EgressRequest, EgressResponse, EgressStream, Scope};
use futures_util::StreamExt;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{
    ClientJsonRpcMessage, ErrorData, JsonRpcMessage, RequestId, ServerJsonRpcMessage,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::{BoxedSseResponse, ExponentialBackoff};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, SseError, StreamableHttpClient,
    StreamableHttpClientTransportConfig, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};

const SESSION_ID: &str = "mcp-session-id";
const LAST_EVENT_ID: &str = "last-event-id";
const ACCEPT: &str = "application/json, text/event-stream";
/// Bytes of an unexpected error body kept in the error message.
const ERROR_PREFIX: usize = 256;
/// The longest wait between two tries to reopen an SSE stream.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// The first wait before the first opening of a GET stream is tried again.
const FIRST_GET_RETRY: Duration = Duration::from_millis(500);

/// One SSE event as rmcp's stream carries it (`sse_stream::Sse`), named through rmcp's
/// public stream type so this crate needs no direct dependency on its SSE parser.
type Sse = <<BoxedSseResponse as futures_util::Stream>::Item as OkOf>::Ok;

trait OkOf {
    type Ok;
}

impl<T, E> OkOf for Result<T, E> {
    type Ok = T;
}

/// The streamable HTTP transport of one server, every request through `egress`.
pub fn transport(
    url: &str,
    egress: Egress,
    scope: Scope,
) -> StreamableHttpClientTransport<EgressHttp> {
    let mut backoff = ExponentialBackoff::default();
    backoff.max_delay = Some(MAX_RECONNECT_DELAY);
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    config.retry_config = Arc::new(backoff);
    let client = EgressHttp {
        egress,
        scope,
        streaming: Arc::default(),
    };
    StreamableHttpClientTransport::with_client(client, config)
}

/// rmcp's HTTP client for one server: every request goes through [`Egress`] with the
/// server's [`Scope`].
#[derive(Clone, Debug)]
pub struct EgressHttp {
    egress: Egress,
    scope: Scope,
    /// The session whose standing GET stream has opened once. rmcp retries a GET stream
    /// that fails after that, but gives up on one whose first opening fails, so until
    /// then the opening is retried here.
    streaming: Arc<std::sync::Mutex<Option<Arc<str>>>>,
}

type HttpResult<T> = Result<T, StreamableHttpError<EgressError>>;

impl EgressHttp {
    /// Sends one request and returns when its head arrives; a redirect is an error.
    async fn open(
        &self,
        method: &str,
        uri: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    ) -> HttpResult<EgressStream> {
        let request = EgressRequest {
            method: method.to_string(),
            url: uri.to_string(),
            headers,
            body,
        };
        let stream = self
            .egress
            .send_stream(request, &self.scope)
            .await
            .map_err(StreamableHttpError::Client)?;
        redirect_refused(stream.status())?;
        Ok(stream)
    }

    /// The size limit of one SSE event: rmcp's, never above the egress response cap.
    fn event_cap(&self, asked: usize) -> usize {
        let cap = usize::try_from(self.egress.config().max_response_bytes).unwrap_or(usize::MAX);
        asked.min(cap)
    }
}

fn redirect_refused(status: u16) -> HttpResult<()> {
    if (300..400).contains(&status) {
        return Err(StreamableHttpError::Client(EgressError::Protocol(format!(
            "the server answered with a redirect (HTTP {status}), which is not followed"
        ))));
    }
    Ok(())
}

/// A whole body, or the error for one cut at the egress cap.
fn whole(response: EgressResponse) -> HttpResult<EgressResponse> {
    if response.truncated {
        return Err(StreamableHttpError::ResponseBodyTooLarge {
            max_size: usize::try_from(response.bytes).unwrap_or(usize::MAX),
        });
    }
    Ok(response)
}

/// Reads the rest of a streamed answer whole, within the egress limits.
async fn read_whole(stream: EgressStream) -> HttpResult<EgressResponse> {
    stream
        .into_response()
        .await
        .map_err(StreamableHttpError::Client)
}

/// rmcp's error for a 401 or 403 carrying a challenge, which stops it from retrying.
fn auth_error(stream: &EgressStream) -> Option<StreamableHttpError<EgressError>> {
    let challenge = stream.header("www-authenticate")?.to_string();
    match stream.status() {
        401 => Some(StreamableHttpError::AuthRequired(AuthRequiredError::new(
            challenge,
        ))),
        403 => Some(StreamableHttpError::InsufficientScope(
            InsufficientScopeError::new(challenge, None),
        )),
        _ => None,
    }
}

/// The request headers rmcp asks for, plus the session and authorization.
fn request_headers(
    session_id: Option<&str>,
    auth_header: Option<String>,
    custom_headers: HashMap<HeaderName, HeaderValue>,
) -> Vec<(String, String)> {
    let mut headers = vec![("accept".to_string(), ACCEPT.to_string())];
    if let Some(id) = session_id {
        headers.push((SESSION_ID.to_string(), id.to_string()));
    }
    if let Some(token) = auth_header {
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
    }
    for (name, value) in custom_headers {
        // Egress refuses a value that is not valid header text; so does rmcp's client.
        headers.push((
            name.as_str().to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    headers
}

/// The media type, lowercase, without parameters.
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .and_then(|c| c.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn prefix(text: &str) -> &str {
    let mut end = text.len().min(ERROR_PREFIX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An SSE event past the size limit.
#[derive(Debug, PartialEq, Eq)]
struct TooLarge;

/// Splits SSE text into events as it arrives, by the WHATWG rules: `\n`, `\r\n` or `\r`
/// end a line (also when a piece ends between `\r` and `\n`), a blank line ends an event,
/// `:` starts a comment, a leading byte order mark is dropped. An event's size counts its
/// field lines with their newlines (comments not, but a line being read counts whole), as
/// rmcp's own clients count it.
#[derive(Debug)]
struct SseParser {
    max_event: usize,
    /// Skip an event past `max_event` (and go on) instead of failing.
    skip_oversized: bool,
    started: bool,
    /// The last piece ended with `\r`: a `\n` that starts the next one belongs to it.
    after_cr: bool,
    line: String,
    line_len: usize,
    event: Sse,
    data: Option<String>,
    size: usize,
    /// Discarding an oversized event up to its blank line.
    skipping: bool,
    skipped: usize,
}

impl SseParser {
    fn new(max_event: usize, skip_oversized: bool) -> SseParser {
        SseParser {
            max_event,
            skip_oversized,
            started: false,
            after_cr: false,
            line: String::new(),
            line_len: 0,
            event: Sse::default(),
            data: None,
            size: 0,
            skipping: false,
            skipped: 0,
        }
    }

    /// Parses the next piece; complete events are appended to `out`.
    fn feed(&mut self, mut text: &str, out: &mut VecDeque<Sse>) -> Result<(), TooLarge> {
        if !self.started && !text.is_empty() {
            self.started = true;
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if self.after_cr && !text.is_empty() {
            self.after_cr = false;
            text = text.strip_prefix('\n').unwrap_or(text);
        }
        while let Some(i) = text.find(['\r', '\n']) {
            self.extend_line(&text[..i])?;
            let rest = &text[i..];
            let newline = if rest.starts_with("\r\n") { 2 } else { 1 };
            self.after_cr = rest == "\r";
            text = &text[i + newline..];
            self.end_line(out)?;
        }
        self.extend_line(text)
    }

    /// The end of the body: a last event without its blank line is still delivered.
    fn finish(&mut self, out: &mut VecDeque<Sse>) -> Result<(), TooLarge> {
        if self.line_len > 0 {
            self.end_line(out)?;
        }
        if !self.skipping && self.data.is_some() {
            self.event.data = self.data.take();
            out.push_back(std::mem::take(&mut self.event));
        }
        Ok(())
    }

    fn extend_line(&mut self, part: &str) -> Result<(), TooLarge> {
        self.line_len += part.len();
        if self.skipping {
            return Ok(());
        }
        self.line.push_str(part);
        if self.size + self.line.len() > self.max_event {
            return self.oversized();
        }
        Ok(())
    }

    fn oversized(&mut self) -> Result<(), TooLarge> {
        if !self.skip_oversized {
            return Err(TooLarge);
        }
        self.skipping = true;
        self.skipped += 1;
        self.line.clear();
        self.event = Sse::default();
        self.data = None;
        self.size = 0;
        Ok(())
    }

    fn end_line(&mut self, out: &mut VecDeque<Sse>) -> Result<(), TooLarge> {
        let blank = self.line_len == 0;
        self.line_len = 0;
        if self.skipping {
            self.skipping = !blank;
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        if blank {
            let event = &self.event;
            if self.data.is_some()
                || event.event.is_some()
                || event.id.is_some()
                || event.retry.is_some()
            {
                self.event.data = self.data.take();
                out.push_back(std::mem::take(&mut self.event));
            }
            self.size = 0;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        self.size += line.len() + 1;
        if self.size > self.max_event {
            return self.oversized();
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.event.id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.event.retry = value.parse().ok();
            }
            _ => {}
        }
        Ok(())
    }
}

/// What an event past the size limit does to a stream.
#[derive(Clone, Debug)]
enum Oversized {
    /// A POST's answer: the request (if it was one) gets an error naming the limit and
    /// the stream ends, so the call fails now instead of at its deadline.
    Fail(Option<RequestId>),
    /// The GET stream: the event is skipped (and logged) and the stream goes on.
    Skip,
}

/// The events of a streamed SSE body, each handed over as soon as it is complete.
fn sse_events(body: EgressStream, max_event: usize, oversized: Oversized) -> BoxedSseResponse {
    struct State {
        body: EgressStream,
        parser: SseParser,
        ready: VecDeque<Sse>,
        failure: Option<SseError>,
        oversized: Oversized,
        ended: bool,
    }
    let state = State {
        body,
        parser: SseParser::new(max_event, matches!(oversized, Oversized::Skip)),
        ready: VecDeque::new(),
        failure: None,
        oversized,
        ended: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.ready.pop_front() {
                return Some((Ok(event), st));
            }
            if let Some(error) = st.failure.take() {
                return Some((Err(error), st));
            }
            if st.ended {
                return None;
            }
            let parsed = match st.body.next().await {
                Some(Ok(text)) => st.parser.feed(&text, &mut st.ready),
                Some(Err(e)) => {
                    st.ended = true;
                    st.failure = Some(SseError::Body(Box::new(e)));
                    Ok(())
                }
                None => {
                    st.ended = true;
                    st.parser.finish(&mut st.ready)
                }
            };
            if st.parser.skipped > 0 {
                tracing::warn!(
                    skipped = st.parser.skipped,
                    max = st.parser.max_event,
                    "an MCP server sent an SSE event past the size limit on its GET stream; skipped"
                );
                st.parser.skipped = 0;
            }
            if parsed == Err(TooLarge) {
                st.ended = true;
                let message = format!(
                    "the server sent an SSE event past the maximum size of {} bytes",
                    st.parser.max_event
                );
                match &st.oversized {
                    Oversized::Fail(Some(id)) => {
                        let error = ServerJsonRpcMessage::error(
                            ErrorData::internal_error(message, None),
                            Some(id.clone()),
                        );
                        st.ready.push_back(Sse {
                            data: serde_json::to_string(&error).ok(),
                            ..Sse::default()
                        });
                    }
                    _ => st.failure = Some(SseError::Body(message.into())),
                }
            }
        }
    })
    .boxed()
}

impl StreamableHttpClient for EgressHttp {
    type Error = EgressError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_sse_event_size = max_sse_event_size;
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            limits,
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let body = serde_json::to_vec(&message)?;
        let mut headers = request_headers(session_id.as_deref(), auth_header, custom_headers);
        headers.push(("content-type".to_string(), "application/json".to_string()));
        let stream = self.open("POST", &uri, headers, Some(body)).await?;
        if let Some(error) = auth_error(&stream) {
            return Err(error);
        }
        let status = stream.status();
        if status == 202 || status == 204 {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == 404 && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let new_session = stream.header(SESSION_ID).map(str::to_string);
        let media = media_type(stream.content_type());
        let request_id = match &message {
            ClientJsonRpcMessage::Request(request) => Some(request.id.clone()),
            _ => None,
        };
        if !(200..300).contains(&status) {
            let retry_after = stream.header("retry-after").map(str::to_string);
            // Only a prefix of an error body is shown: one cut at the cap is fine.
            let response = read_whole(stream).await?;
            // A JSON-RPC error in the body is the server's answer; keep it.
            if media == "application/json"
                && !response.truncated
                && let Ok(error @ JsonRpcMessage::Error(_)) =
                    serde_json::from_str::<ServerJsonRpcMessage>(&response.text)
            {
                return Ok(StreamableHttpPostResponse::Json(error, new_session));
            }
            if status == 429 || status >= 500 {
                return Err(HttpStatusError::new(status, retry_after).into());
            }
            return Err(StreamableHttpError::UnexpectedServerResponse(
                format!("HTTP {status}: {}", prefix(&response.text)).into(),
            ));
        }
        match media.as_str() {
            "text/event-stream" => {
                let max_event = self.event_cap(limits.max_sse_event_size);
                Ok(StreamableHttpPostResponse::Sse(
                    sse_events(stream, max_event, Oversized::Fail(request_id)),
                    new_session,
                ))
            }
            "application/json" => {
                let response = whole(read_whole(stream).await?)?;
                if response.text.len() > limits.max_json_response_size {
                    return Err(StreamableHttpError::ResponseBodyTooLarge {
                        max_size: limits.max_json_response_size,
                    });
                }
                match serde_json::from_str::<ServerJsonRpcMessage>(&response.text) {
                    Ok(parsed) => Ok(StreamableHttpPostResponse::Json(parsed, new_session)),
                    Err(_) if request_id.is_none() => Ok(StreamableHttpPostResponse::Accepted),
                    Err(e) => Err(StreamableHttpError::UnexpectedServerResponse(
                        format!("not a JSON-RPC message: {e}: {}", prefix(&response.text)).into(),
                    )),
                }
            }
            _ if request_id.is_none() => Ok(StreamableHttpPostResponse::Accepted),
            _ => Err(StreamableHttpError::UnexpectedContentType(
                stream.content_type().map(str::to_string),
            )),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        let headers = request_headers(Some(&session_id), auth_header, custom_headers);
        let response = whole(read_whole(self.open("DELETE", &uri, headers, None).await?).await?)?;
        match response.status {
            405 => Ok(()),
            s if (200..300).contains(&s) => Ok(()),
            s => Err(StreamableHttpError::UnexpectedServerResponse(
                format!("HTTP {s} to the session's DELETE").into(),
            )),
        }
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<BoxedSseResponse> {
        self.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            usize::MAX,
        )
        .await
    }

    /// Opens the standing stream (or resumes a stream after `last_event_id`). 405: the
    /// server has none; 401 and 403 stop rmcp from trying again (a credential the owner
    /// configured will not change by retrying), other failures let it try later. The
    /// first opening of a session's stream, which rmcp does not retry, is retried here
    /// while it fails in a way that may pass (429, 5xx, no connection, a timeout), after
    /// 0.5 s doubling to 30 s, until it opens or the transport closes.
    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<BoxedSseResponse> {
        let first = match &session_id {
            Some(s) if last_event_id.is_none() => {
                lock(&self.streaming).as_deref() != Some(s.as_ref())
            }
            _ => false,
        };
        let mut delay = FIRST_GET_RETRY;
        loop {
            let opened = self
                .open_get(
                    &uri,
                    session_id.as_deref(),
                    last_event_id.clone(),
                    auth_header.clone(),
                    custom_headers.clone(),
                    max_sse_event_size,
                )
                .await;
            match opened {
                Ok(stream) => {
                    if let Some(s) = session_id {
                        *lock(&self.streaming) = Some(s);
                    }
                    return Ok(stream);
                }
                Err(e) if first && may_pass(&e) => {
                    // A Retry-After in seconds may ask for longer, up to the cap.
                    let asked = match &e {
                        StreamableHttpError::HttpStatus(h) => h
                            .retry_after
                            .as_deref()
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs),
                        _ => None,
                    };
                    let wait = asked
                        .map_or(delay, |a| a.max(delay))
                        .min(MAX_RECONNECT_DELAY);
                    tracing::warn!(error = %e, retry_in = ?wait,
                        "an MCP server's GET stream did not open; trying again");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a failed GET stream may open when tried again.
fn may_pass(e: &StreamableHttpError<EgressError>) -> bool {
    match e {
        StreamableHttpError::Client(e) => e.retriable(),
        StreamableHttpError::HttpStatus(_) => true,
        _ => false,
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EgressHttp {
    /// One try of [`StreamableHttpClient::get_stream_with_max_sse_event_size`].
    async fn open_get(
        &self,
        uri: &str,
        session_id: Option<&str>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<BoxedSseResponse> {
        let mut headers = request_headers(session_id, auth_header, custom_headers);
        if let Some(id) = last_event_id {
            headers.push((LAST_EVENT_ID.to_string(), id));
        }
        let stream = self.open("GET", uri, headers, None).await?;
        match stream.status() {
            405 => return Err(StreamableHttpError::ServerDoesNotSupportSse),
            401 | 403 => {
                let challenge = stream.header("www-authenticate").unwrap_or("").to_string();
                return Err(if stream.status() == 401 {
                    StreamableHttpError::AuthRequired(AuthRequiredError::new(challenge))
                } else {
                    StreamableHttpError::InsufficientScope(InsufficientScopeError::new(
                        challenge, None,
                    ))
                });
            }
            s if s == 429 || s >= 500 => {
                let retry_after = stream.header("retry-after").map(str::to_string);
                return Err(HttpStatusError::new(s, retry_after).into());
            }
            s if !(200..300).contains(&s) => {
                return Err(StreamableHttpError::UnexpectedServerResponse(
                    format!("HTTP {s} to the GET stream").into(),
                ));
            }
            _ => {}
        }
        // rmcp's own client takes either (and reads both as SSE).
        let media = media_type(stream.content_type());
        if media != "text/event-stream" && media != "application/json" {
            return Err(StreamableHttpError::UnexpectedContentType(
                stream.content_type().map(str::to_string),
            ));
        }
        let max_event = self.event_cap(max_sse_event_size);
        Ok(sse_events(stream, max_event, Oversized::Skip))
    }
}

#[cfg(test)]
mod tests {
    use carapace_egress::EgressConfig;
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use tokio::sync::oneshot;

    use super::*;

    /// A server that answers one request with `reply`; the receiver gets the request head.
    async fn once(reply: String) -> (String, oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let entry = listener.local_addr().unwrap().to_string();
        let (head_tx, head) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = head_tx.send(String::from_utf8_lossy(&buf).to_ascii_lowercase());
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
        (entry, head)
    }

    fn client(entry: &str, max_response_bytes: u64) -> EgressHttp {
        let list = vec![entry.to_string()];
        let egress = Egress::new(EgressConfig {
            allow_hosts: list.clone(),
            allow_private: list.clone(),
            allow_http: list,
            max_response_bytes,
            ..EgressConfig::default()
        })
        .unwrap();
        EgressHttp {
            egress,
            scope: Scope::default(),
            streaming: Arc::default(),
        }
    }

    /// The standing GET stream (session `s-1`, resuming after event 3) answered `reply`.
    async fn get(reply: &str) -> (HttpResult<BoxedSseResponse>, String) {
        let (entry, head) = once(reply.to_string()).await;
        let result = client(&entry, 1024)
            .get_stream(
                format!("http://{entry}/mcp").into(),
                Some("s-1".into()),
                Some("3".to_string()),
                None,
                HashMap::new(),
            )
            .await;
        (result, head.await.unwrap())
    }

    /// A server that answers its n-th connection with `replies[n]` (the last one again
    /// past the end), and counts them.
    async fn sequence(replies: Vec<&'static str>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let entry = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let reply = replies[n.min(replies.len() - 1)];
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (entry, count)
    }

    const BUSY: &str = "HTTP/1.1 503 Busy\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n";
    const DENIED: &str = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
    const EVENTS: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
        id: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";

    /// The standing GET stream of `session`, as rmcp opens it (no last event id).
    async fn open_standing(
        client: &EgressHttp,
        entry: &str,
        session: &str,
    ) -> HttpResult<BoxedSseResponse> {
        client
            .get_stream(
                format!("http://{entry}/mcp").into(),
                Some(session.into()),
                None,
                None,
                HashMap::new(),
            )
            .await
    }

    #[tokio::test]
    async fn the_first_get_stream_of_a_session_is_retried_until_it_opens() {
        // rmcp gives up on a standing stream whose first opening fails; here it is tried
        // again while the failure may pass.
        let (entry, count) = sequence(vec![BUSY, BUSY, EVENTS, BUSY]).await;
        let client = client(&entry, 1024);
        let stream = open_standing(&client, &entry, "s-1").await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
        let events: Vec<Sse> = stream.map(Result::unwrap).collect().await;
        assert_eq!(events[0].id.as_deref(), Some("1"));
        // Once it has opened, rmcp reconnects it itself: one try, its error returned.
        let again = open_standing(&client, &entry, "s-1").await;
        assert!(
            matches!(&again, Err(StreamableHttpError::HttpStatus(e)) if e.status == 503),
            "{:?}",
            again.map(|_| ())
        );
        assert_eq!(count.load(Ordering::SeqCst), 4);
        // A new session (after the server forgot the old one) is a first opening again.
        let (entry, count) = sequence(vec![BUSY, EVENTS]).await;
        let client2 = EgressHttp {
            streaming: client.streaming.clone(),
            ..self::client(&entry, 1024)
        };
        let stream = open_standing(&client2, &entry, "s-2").await.unwrap();
        assert_eq!(
            stream.map(Result::unwrap).collect::<Vec<Sse>>().await.len(),
            1
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_first_get_stream_refused_for_good_is_not_retried() {
        let (entry, count) = sequence(vec![DENIED, EVENTS]).await;
        let client = client(&entry, 1024);
        let result = open_standing(&client, &entry, "s-1").await;
        assert!(matches!(result, Err(StreamableHttpError::AuthRequired(_))));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_get_stream_answers_as_rmcp_expects() {
        let (result, head) = get("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
             id: 4\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n")
        .await;
        assert!(head.starts_with("get /mcp http/1.1\r\n"), "{head}");
        for line in [
            "mcp-session-id: s-1",
            "last-event-id: 3",
            "accept: application/json, text/event-stream",
        ] {
            assert!(head.contains(&format!("\r\n{line}\r\n")), "{line}: {head}");
        }
        let events: Vec<Sse> = result.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id.as_deref(), Some("4"));

        // 405: no standing stream, which rmcp takes as "POST responses only".
        let (result, _) = get("HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(
            result,
            Err(StreamableHttpError::ServerDoesNotSupportSse)
        ));
        // 401 and 403 stop rmcp from trying again; 429 and 5xx keep their status.
        let (result, _) = get("HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(result, Err(StreamableHttpError::AuthRequired(_))));
        let (result, _) = get("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(
            result,
            Err(StreamableHttpError::InsufficientScope(_))
        ));
        let (result, _) =
            get("HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n").await;
        match result {
            Err(StreamableHttpError::HttpStatus(e)) => {
                assert_eq!((e.status, e.retry_after.as_deref()), (503, Some("7")));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        let (result, _) =
            get("HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(
            result,
            Err(StreamableHttpError::UnexpectedContentType(_))
        ));
        let (result, _) =
            get("HTTP/1.1 307 Moved\r\nlocation: http://example.com/\r\ncontent-length: 0\r\n\r\n")
                .await;
        assert!(matches!(result, Err(StreamableHttpError::Client(_))));
    }

    #[tokio::test]
    async fn an_oversized_answer_fails_its_call_at_once() {
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: s-2\r\n\r\n\
             data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":1,\"progress\":1}}}}\n\n\
             data: {}\n\n",
            "x".repeat(500)
        );
        let (entry, _head) = once(reply).await;
        let ping: ClientJsonRpcMessage = serde_json::from_value(
            serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}),
        )
        .unwrap();
        let response = client(&entry, 256)
            .post_message(
                format!("http://{entry}/mcp").into(),
                ping,
                None,
                None,
                HashMap::new(),
            )
            .await
            .unwrap();
        let StreamableHttpPostResponse::Sse(events, session) = response else {
            panic!("an SSE answer")
        };
        assert_eq!(session.as_deref(), Some("s-2"));
        let events: Vec<Sse> = events.map(Result::unwrap).collect().await;
        assert_eq!(events.len(), 2, "{events:?}");
        let error: Value = serde_json::from_str(events[1].data.as_deref().unwrap()).unwrap();
        assert_eq!(error["id"], 7);
        assert_eq!(
            error["error"]["message"],
            "the server sent an SSE event past the maximum size of 256 bytes"
        );
    }

    type Event<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

    /// Parses `body` whole and cut into two pieces at (up to about 200) character
    /// boundaries; every way gives the same events.
    fn parse(body: &str, max_event: usize, skip: bool) -> Result<Vec<Sse>, TooLarge> {
        let run = |pieces: &[&str]| {
            let mut parser = SseParser::new(max_event, skip);
            let mut out = VecDeque::new();
            for piece in pieces {
                parser.feed(piece, &mut out)?;
            }
            parser.finish(&mut out)?;
            Ok(Vec::from(out))
        };
        let whole = run(&[body]);
        let step = body.len() / 200 + 1;
        for cut in (0..=body.len())
            .step_by(step)
            .filter(|i| body.is_char_boundary(*i))
        {
            let split = run(&[&body[..cut], "", &body[cut..]]);
            assert_eq!(split, whole, "{body:?} cut at {cut}");
        }
        whole
    }

    fn check(body: &str, expected: &[Event<'_>]) {
        let events = parse(body, 1024, false).unwrap();
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.event.as_deref(), e.data.as_deref(), e.id.as_deref()))
            .collect();
        assert_eq!(got, expected, "{body:?}");
    }

    #[test]
    fn sse_text_splits_into_events_however_it_arrives() {
        check(
            "event: message\ndata: {\"a\":1}\n\n",
            &[(Some("message"), Some("{\"a\":1}"), None)],
        );
        check(
            "id: 7\r\ndata: one\r\ndata: two\r\n\r\n: comment\n\ndata:x\n\n",
            &[(None, Some("one\ntwo"), Some("7")), (None, Some("x"), None)],
        );
        check(
            "data: cr\r\rdata: lf\n\ndata:  two spaces\n\n",
            &[
                (None, Some("cr"), None),
                (None, Some("lf"), None),
                (None, Some(" two spaces"), None),
            ],
        );
        // A priming event (id only, empty data) and an unterminated last event.
        check(
            "id: p1\ndata:\n\ndata: last",
            &[(None, Some(""), Some("p1")), (None, Some("last"), None)],
        );
        check(
            "\u{feff}data: after a byte order mark\n\n",
            &[(None, Some("after a byte order mark"), None)],
        );
        check(": keep-alive\n\n\n", &[]);
        check("id: a\0b\ndata: x\n\n", &[(None, Some("x"), None)]);
        let retry = parse("retry: 1500\n\nretry: +5\ndata: x\n\n", 1024, false).unwrap();
        let retry: Vec<_> = retry.iter().map(|e| e.retry).collect();
        assert_eq!(retry, [Some(1500), None]);
    }

    #[test]
    fn an_oversized_event_fails_a_post_and_is_skipped_on_the_get_stream() {
        let body = format!(
            "data: small\n\ndata: {}\ndata: more\n\ndata: after\n\n",
            "x".repeat(2000)
        );
        assert_eq!(parse(&body, 1024, false), Err(TooLarge));
        assert_eq!(parse(&body, 4096, false).unwrap().len(), 3);
        let data = |events: Vec<Sse>| -> Vec<Option<String>> {
            events.into_iter().map(|e| e.data).collect()
        };
        assert_eq!(
            data(parse(&body, 1024, true).unwrap()),
            [Some("small".to_string()), Some("after".to_string())]
        );
        // A line that never ends is cut off as soon as it passes the limit.
        let endless = "data: ".to_string() + &"y".repeat(5000);
        assert_eq!(parse(&endless, 1024, false), Err(TooLarge));
        assert_eq!(data(parse(&endless, 1024, true).unwrap()), []);
        // Comments do not count towards an event, but one line still may not pass it.
        let comments = ": ".to_string() + &"c".repeat(1000) + "\n";
        let body = comments.repeat(3) + "data: ok\n\n";
        assert_eq!(
            data(parse(&body, 1024, false).unwrap()),
            [Some("ok".to_string())]
        );
    }
}
