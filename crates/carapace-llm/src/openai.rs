//! A client for OpenAI Chat Completions and the servers that copy it: OpenAI, Ollama,
//! llama.cpp, vLLM.

mod stream;
mod wire;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use carapace_types::Secret;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::timeout;

use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// The most response bytes accepted for one call, streamed or not.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Error bodies are read only to take their message; nothing useful is longer.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// The longest message an error carries, in characters.
const MAX_MESSAGE_CHARS: usize = 500;

/// How to reach an OpenAI-compatible server.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Base URL up to and including the API version, like `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Bearer token; `None` sends no `Authorization` header (Ollama, llama.cpp).
    pub api_key: Option<Secret<String>>,
    /// Deadline of a whole unstreamed call, and of the response headers of a streamed one.
    pub request_timeout: Duration,
    /// Longest silence accepted between two pieces of a streamed response.
    pub stall_timeout: Duration,
}

impl OpenAiConfig {
    /// A config for `base_url` with no API key, a 300 s request timeout and a 60 s stall
    /// timeout.
    pub fn new(base_url: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base_url.into(),
            api_key: None,
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// A [`Provider`] speaking OpenAI Chat Completions over HTTP.
pub struct OpenAiCompat {
    /// Built on first use: a daemon that is never asked anything holds no TLS state.
    client: std::sync::OnceLock<reqwest::Client>,
    /// Whether `base_url` is a loopback host (reached without a proxy).
    loopback: bool,
    /// Without a trailing slash.
    base_url: String,
    api_key: Option<Secret<String>>,
    /// `Bearer <key>`, marked sensitive so HTTP/2 never indexes it.
    auth: Option<Secret<HeaderValue>>,
    request_timeout: Duration,
    stall_timeout: Duration,
}

impl fmt::Debug for OpenAiCompat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompat")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("request_timeout", &self.request_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompat {
    /// Checks the config and builds the HTTP client. Loopback servers are reached
    /// directly, never through a proxy; redirects are not followed, so the key only ever
    /// goes to `base_url`.
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAiCompat, ProviderError> {
        let invalid = |m: &str| ProviderError::InvalidConfig(m.to_string());
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base_url)
            .map_err(|e| ProviderError::InvalidConfig(format!("base_url is not a url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("base_url must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("base_url must not carry credentials; use api_key"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("base_url must not have a query or a fragment"));
        }
        if cfg.request_timeout.is_zero() || cfg.stall_timeout.is_zero() {
            return Err(invalid("timeouts must be longer than zero"));
        }
        let auth = match &cfg.api_key {
            None => None,
            Some(key) if key.expose().is_empty() => return Err(invalid("api key is empty")),
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| invalid("api key contains characters not allowed in a header"))?;
                value.set_sensitive(true);
                Some(Secret::new(value))
            }
        };
        let host = url.host_str().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok(OpenAiCompat {
            client: std::sync::OnceLock::new(),
            loopback,
            base_url,
            api_key: cfg.api_key,
            auth,
            request_timeout: cfg.request_timeout,
            stall_timeout: cfg.stall_timeout,
        })
    }

    /// The HTTP client, built on first use.
    fn client(&self) -> Result<&reqwest::Client, ProviderError> {
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

    /// Sends a request; any status but success becomes [`ProviderError::Http`].
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let builder = match &self.auth {
            Some(auth) => builder.header(AUTHORIZATION, auth.expose().clone()),
            None => builder,
        };
        let resp = builder.send().await.map_err(transport_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = crate::retry_after(resp.headers());
        let body = read_bounded(resp, MAX_ERROR_BODY_BYTES, None)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| wire::error_message(&v))
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
        Err(ProviderError::Http {
            status: status.as_u16(),
            message,
            retry_after,
        })
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = wire::encode_request(req, false);
        let resp = self.send(self.client()?.post(url).json(&body)).await?;
        let bytes = read_bounded(resp, MAX_RESPONSE_BYTES, None).await?;
        decode_completion(&bytes, &req.model)
    }

    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let url = format!("{}/chat/completions", self.base_url);
        let body = wire::encode_request(req, true);
        let resp = timeout(
            self.request_timeout,
            self.send(self.client()?.post(url).json(&body)),
        )
        .await
        .map_err(|_| ProviderError::Timeout)??;
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            // The server ignored `stream: true` and answered in one piece.
            let bytes = read_bounded(resp, MAX_RESPONSE_BYTES, Some(self.stall_timeout)).await?;
            let response = decode_completion(&bytes, &req.model)?;
            if let Some(text) = &response.content {
                let _ = events.send(StreamEvent::TextDelta(text.clone()));
            }
            return Ok(response);
        }
        let mut body = resp.bytes_stream();
        let mut lines = stream::Lines::default();
        let mut assembler = stream::Assembler::default();
        let mut received = 0usize;
        loop {
            let piece = timeout(self.stall_timeout, body.next())
                .await
                .map_err(|_| ProviderError::Stalled)?;
            let (new_lines, ended) = match piece {
                None => (
                    std::mem::take(&mut lines).rest().into_iter().collect(),
                    true,
                ),
                Some(piece) => {
                    let piece = piece.map_err(transport_error)?;
                    received += piece.len();
                    if received > MAX_RESPONSE_BYTES {
                        return Err(too_large());
                    }
                    (lines.push(&piece), false)
                }
            };
            for line in new_lines {
                if let Some(delta) = assembler.line(&line)? {
                    // A consumer that went away does not stop the turn; it still has
                    // to finish so the caller gets the tool calls.
                    let _ = events.send(StreamEvent::TextDelta(delta));
                }
                if assembler.is_done() {
                    return assembler.finish(&req.model);
                }
            }
            if ended {
                return assembler.finish(&req.model);
            }
        }
    }

    /// The error with any copy of the API key cut out and the message bounded. Servers
    /// sometimes echo what they were sent.
    fn scrub(&self, err: ProviderError) -> ProviderError {
        let clean = |m: String| {
            let m = match &self.api_key {
                Some(key) if !key.expose().is_empty() => {
                    m.replace(key.expose().as_str(), "[REDACTED]")
                }
                _ => m,
            };
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
            other => other,
        }
    }
}

impl Provider for OpenAiCompat {
    fn name(&self) -> &str {
        "openai-compat"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        events: Option<&'a UnboundedSender<StreamEvent>>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        async move {
            tracing::debug!(model = %req.model, stream = events.is_some(), "chat request");
            let result = match events {
                Some(events) => self.chat_streamed(req, events).await,
                None => timeout(self.request_timeout, self.chat_unstreamed(req))
                    .await
                    .unwrap_or(Err(ProviderError::Timeout)),
            };
            result.map_err(|e| self.scrub(e))
        }
        .boxed()
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        async move {
            let fetch = async {
                let url = format!("{}/models", self.base_url);
                let resp = self.send(self.client()?.get(url)).await?;
                let bytes = read_bounded(resp, MAX_RESPONSE_BYTES, None).await?;
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ProviderError::Protocol(format!("cannot decode the model list: {e}"))
                })?;
                wire::decode_models(&body)
            };
            let result = timeout(self.request_timeout, fetch)
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            result.map_err(|e| self.scrub(e))
        }
        .boxed()
    }
}

fn decode_completion(bytes: &[u8], requested_model: &str) -> Result<ChatResponse, ProviderError> {
    let completion = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Protocol(format!("cannot decode the completion: {e}")))?;
    wire::decode_completion(completion, requested_model)
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

fn too_large() -> ProviderError {
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
