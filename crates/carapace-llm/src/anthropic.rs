//! A client for the Anthropic Messages API (`POST /v1/messages`).

mod stream;
mod wire;

use std::fmt;
use std::time::Duration;

use carapace_types::Secret;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::HeaderName;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::{self, KeyHeader, Transport};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// The API version every request names in `anthropic-version`.
const API_VERSION: &str = "2023-06-01";

/// How to reach the Anthropic API.
#[derive(Clone, Debug)]
pub struct AnthropicConfig {
    /// Base URL without the API version, like `https://api.anthropic.com`. Plain `http`
    /// is accepted only for loopback hosts.
    pub base_url: String,
    /// Sent as `x-api-key`; `None` sends none (for a local proxy that adds it).
    pub api_key: Option<Secret<String>>,
    /// Deadline of a whole unstreamed call, and of the response headers of a streamed one.
    pub request_timeout: Duration,
    /// Longest silence accepted between two pieces of a streamed response.
    pub stall_timeout: Duration,
    /// `max_tokens` of requests that set none; Anthropic requires one.
    pub max_tokens: u32,
}

impl Default for AnthropicConfig {
    /// `https://api.anthropic.com`, no key, a 300 s request timeout, a 60 s stall timeout
    /// and 4096 tokens at most.
    fn default() -> AnthropicConfig {
        AnthropicConfig {
            base_url: "https://api.anthropic.com".into(),
            api_key: None,
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
            max_tokens: 4096,
        }
    }
}

impl AnthropicConfig {
    /// The default config with this API key.
    pub fn new(api_key: Secret<String>) -> AnthropicConfig {
        AnthropicConfig {
            api_key: Some(api_key),
            ..AnthropicConfig::default()
        }
    }
}

/// A [`Provider`] speaking the Anthropic Messages API over HTTP.
pub struct Anthropic {
    http: Transport,
    max_tokens: u32,
}

impl fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anthropic")
            .field("base_url", &self.http.base_url())
            .field("api_key", self.http.key())
            .field("request_timeout", &self.http.request_timeout)
            .field("stall_timeout", &self.http.stall_timeout)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl Anthropic {
    /// Checks the config. The key only ever goes to `base_url`: redirects are not
    /// followed, and plain `http` is refused unless the host is loopback (then reached
    /// directly, never through a proxy).
    pub fn new(cfg: AnthropicConfig) -> Result<Anthropic, ProviderError> {
        if cfg.max_tokens == 0 {
            return Err(ProviderError::InvalidConfig(
                "max_tokens must be at least 1".into(),
            ));
        }
        let http = Transport::new(
            &cfg.base_url,
            cfg.api_key,
            KeyHeader {
                name: HeaderName::from_static("x-api-key"),
                format: "{}",
            },
            |v| (v.get("error").and_then(wire::error_message), None),
            cfg.request_timeout,
            cfg.stall_timeout,
        )?;
        Ok(Anthropic {
            http,
            max_tokens: cfg.max_tokens,
        })
    }

    fn messages_request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let url = format!("{}/v1/messages", self.http.base_url());
        let body = wire::encode_request(req, self.max_tokens, stream);
        Ok(self
            .http
            .client()?
            .post(url)
            .header("anthropic-version", API_VERSION)
            .json(&body))
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let resp = self.http.send(self.messages_request(req, false)?).await?;
        let bytes = self.http.read(resp).await?;
        decode_message(&bytes, &req.model)
    }

    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let resp = self
            .http
            .send_streamed(self.messages_request(req, true)?)
            .await?;
        if http::is_json(&resp) {
            // A proxy ignored `stream: true` and answered in one piece.
            let decode = |bytes: &[u8]| decode_message(bytes, &req.model);
            return self.http.whole_answer(resp, events, decode).await;
        }
        let mut assembler = stream::Assembler::default();
        self.http.stream_text(resp, &mut assembler, events).await?;
        assembler.finish(&req.model)
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        events: Option<&'a UnboundedSender<StreamEvent>>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        tracing::debug!(model = %req.model, stream = events.is_some(), "chat request");
        let call = async move {
            match events {
                Some(events) => self.chat_streamed(req, events).await,
                None => self.chat_unstreamed(req).await,
            }
        };
        self.http.turn(events.is_some(), call).boxed()
    }

    /// Lists models with GET `{base_url}/v1/models` (its first page, up to 1000).
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        async move {
            let fetch = async {
                let url = format!("{}/v1/models?limit=1000", self.http.base_url());
                let builder = self
                    .http
                    .client()?
                    .get(url)
                    .header("anthropic-version", API_VERSION);
                let resp = self.http.send(builder).await?;
                let bytes = self.http.read(resp).await?;
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ProviderError::Protocol(format!("cannot decode the model list: {e}"))
                })?;
                wire::decode_models(&body)
            };
            self.http.bounded(fetch).await
        }
        .boxed()
    }
}

fn decode_message(bytes: &[u8], requested_model: &str) -> Result<ChatResponse, ProviderError> {
    let message: Value = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Protocol(format!("cannot decode the message: {e}")))?;
    wire::decode_message(&message, requested_model)
}
