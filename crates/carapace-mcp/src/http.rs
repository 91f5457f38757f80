//! Streamable HTTP servers, every request through the egress client.
//!
//! rmcp's [`StreamableHttpClientTransport`] speaks the protocol; [`EgressHttp`] is the
//! HTTP client it uses, and it sends each POST and DELETE with [`Egress::send_raw`]: the
//! allowlists of the configuration and the scope, the SSRF guard with pinned addresses,
//! credentials injected for their hosts only and redacted from what comes back, a
//! response size cap and the egress timeout. A redirect is never followed (the server's
//! URL is what the owner allowed); it fails the request.
//!
//! Responses are read whole (within the cap) before rmcp sees them, so an SSE answer to a
//! POST is parsed here from the buffered body. The long-lived GET stream for messages the
//! server sends on its own (`notifications/tools/list_changed` outside a call, server
//! requests) is not opened: [`EgressHttp`] answers that the server does not support it,
//! which rmcp takes as "POST responses only". Such notifications are lost; a tool list is
//! fresh at each connection.

use std::collections::HashMap;
use std::sync::Arc;

use carapace_egress::{Egress, EgressError, EgressRequest, EgressResponse, Scope};
use futures_util::StreamExt;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    HttpStatusError, StreamableHttpClient, StreamableHttpClientTransportConfig,
    StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};

const SESSION_ID: &str = "mcp-session-id";
const ACCEPT: &str = "application/json, text/event-stream";
/// Bytes of an unexpected error body kept in the error message.
const ERROR_PREFIX: usize = 256;

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
    StreamableHttpClientTransport::with_client(
        EgressHttp { egress, scope },
        StreamableHttpClientTransportConfig::with_uri(url),
    )
}

/// rmcp's HTTP client for one server: every request goes through [`Egress::send_raw`]
/// with the server's [`Scope`].
#[derive(Clone, Debug)]
pub struct EgressHttp {
    egress: Egress,
    scope: Scope,
}

type HttpResult<T> = Result<T, StreamableHttpError<EgressError>>;

impl EgressHttp {
    /// Sends one request; a redirect or a body cut at the egress cap is an error.
    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    ) -> HttpResult<EgressResponse> {
        let request = EgressRequest {
            method: method.to_string(),
            url: uri.to_string(),
            headers,
            body,
        };
        let response = self
            .egress
            .send_raw(request, &self.scope)
            .await
            .map_err(StreamableHttpError::Client)?;
        if (300..400).contains(&response.status) {
            return Err(StreamableHttpError::Client(EgressError::Protocol(format!(
                "the server answered with a redirect (HTTP {}), which is not followed",
                response.status
            ))));
        }
        if response.truncated {
            return Err(StreamableHttpError::ResponseBodyTooLarge {
                max_size: usize::try_from(response.bytes).unwrap_or(usize::MAX),
            });
        }
        Ok(response)
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

fn header<'a>(response: &'a EgressResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The media type of the response, lowercase, without parameters.
fn media_type(response: &EgressResponse) -> String {
    response
        .content_type
        .as_deref()
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

/// Splits a complete SSE body into events (the WHATWG rules: `\n`, `\r\n` or `\r` end
/// a line, a blank line ends an event, `:` starts a comment). An event larger than
/// `max_event` bytes is an error, as rmcp's own clients treat it.
fn parse_sse(body: &str, max_event: usize) -> Result<Vec<Sse>, String> {
    let mut events = Vec::new();
    let mut event = Sse::default();
    let mut data: Option<String> = None;
    let mut size = 0usize;
    let body = body.replace("\r\n", "\n").replace('\r', "\n");
    for line in body.split('\n') {
        if line.is_empty() {
            if data.is_some() || event.event.is_some() || event.id.is_some() {
                event.data = data.take();
                events.push(std::mem::take(&mut event));
            }
            event.retry = None;
            size = 0;
            continue;
        }
        size += line.len() + 1;
        if size > max_event {
            return Err(format!(
                "an SSE event is larger than the maximum of {max_event} bytes"
            ));
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => event.event = Some(value.to_string()),
            "id" if !value.contains('\0') => event.id = Some(value.to_string()),
            "retry" => event.retry = value.parse().ok(),
            _ => {}
        }
    }
    // A stream cut without the final blank line still delivers its last event.
    if data.is_some() {
        event.data = data;
        events.push(event);
    }
    Ok(events)
}

fn sse_stream(events: Vec<Sse>) -> BoxedSseResponse {
    futures_util::stream::iter(events.into_iter().map(Ok)).boxed()
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
        let response = self.send("POST", &uri, headers, Some(body)).await?;
        let status = response.status;
        if status == 202 || status == 204 {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == 404 && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let new_session = header(&response, SESSION_ID).map(str::to_string);
        let media = media_type(&response);
        let awaits_no_response = !matches!(message, ClientJsonRpcMessage::Request(_));
        if !(200..300).contains(&status) {
            // A JSON-RPC error in the body is the server's answer; keep it.
            if media == "application/json"
                && let Ok(error @ JsonRpcMessage::Error(_)) =
                    serde_json::from_str::<ServerJsonRpcMessage>(&response.text)
            {
                return Ok(StreamableHttpPostResponse::Json(error, new_session));
            }
            if status == 429 || status >= 500 {
                let retry_after = header(&response, "retry-after").map(str::to_string);
                return Err(HttpStatusError::new(status, retry_after).into());
            }
            return Err(StreamableHttpError::UnexpectedServerResponse(
                format!("HTTP {status}: {}", prefix(&response.text)).into(),
            ));
        }
        match media.as_str() {
            "text/event-stream" => {
                let events = parse_sse(&response.text, limits.max_sse_event_size)
                    .map_err(|e| StreamableHttpError::UnexpectedServerResponse(e.into()))?;
                Ok(StreamableHttpPostResponse::Sse(
                    sse_stream(events),
                    new_session,
                ))
            }
            "application/json" => {
                if response.text.len() > limits.max_json_response_size {
                    return Err(StreamableHttpError::ResponseBodyTooLarge {
                        max_size: limits.max_json_response_size,
                    });
                }
                match serde_json::from_str::<ServerJsonRpcMessage>(&response.text) {
                    Ok(parsed) => Ok(StreamableHttpPostResponse::Json(parsed, new_session)),
                    Err(_) if awaits_no_response => Ok(StreamableHttpPostResponse::Accepted),
                    Err(e) => Err(StreamableHttpError::UnexpectedServerResponse(
                        format!("not a JSON-RPC message: {e}: {}", prefix(&response.text)).into(),
                    )),
                }
            }
            _ if awaits_no_response => Ok(StreamableHttpPostResponse::Accepted),
            _ => Err(StreamableHttpError::UnexpectedContentType(
                response.content_type.clone(),
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
        let response = self.send("DELETE", &uri, headers, None).await?;
        match response.status {
            405 => Ok(()),
            s if (200..300).contains(&s) => Ok(()),
            s => Err(StreamableHttpError::UnexpectedServerResponse(
                format!("HTTP {s} to the session's DELETE").into(),
            )),
        }
    }

    /// Not opened: a buffered client cannot hold a stream that never ends (see the
    /// module documentation). rmcp then uses POST responses only.
    async fn get_stream(
        &self,
        _uri: Arc<str>,
        _session_id: Option<Arc<str>>,
        _last_event_id: Option<String>,
        _auth_header: Option<String>,
        _custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<BoxedSseResponse> {
        Err(StreamableHttpError::ServerDoesNotSupportSse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: &[(Option<&str>, Option<&str>, Option<&str>)]) {
        let events = parse_sse(body, 1024).unwrap();
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.event.as_deref(), e.data.as_deref(), e.id.as_deref()))
            .collect();
        assert_eq!(got, expected, "{body:?}");
    }

    #[test]
    fn sse_bodies_split_into_events() {
        check(
            "event: message\ndata: {\"a\":1}\n\n",
            &[(Some("message"), Some("{\"a\":1}"), None)],
        );
        check(
            "id: 7\r\ndata: one\r\ndata: two\r\n\r\n: comment\n\ndata:x\n\n",
            &[(None, Some("one\ntwo"), Some("7")), (None, Some("x"), None)],
        );
        // A priming event (id only, empty data) and an unterminated last event.
        check(
            "id: p1\ndata:\n\ndata: last",
            &[(None, Some(""), Some("p1")), (None, Some("last"), None)],
        );
        check(": keep-alive\n\n\n", &[]);
    }

    #[test]
    fn an_oversized_event_is_refused() {
        let body = format!("data: {}\n\n", "x".repeat(2000));
        assert!(parse_sse(&body, 1024).is_err());
        assert!(parse_sse(&body, 4096).is_ok());
    }
}
