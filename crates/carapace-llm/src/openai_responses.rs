//! A client for the OpenAI Responses API (`POST /responses`, `GET /models`).
//!
//! Every call is stateless (`store: false`): the whole conversation goes in `input` each
//! turn, earlier tool calls as `function_call` items and their results as
//! `function_call_output` items, matched by `call_id`.

mod stream;
mod wire;

use std::fmt;
use std::time::Duration;

use carapace_types::Secret;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::{self, KeyHeader, Transport};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// Where OpenAI serves its API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// How to reach a server that speaks the Responses API.
#[derive(Clone, Debug)]
pub struct OpenAiResponsesConfig {
    /// Base URL up to and including the API version, like `https://api.openai.com/v1`.
    /// Plain `http` is accepted only for loopback hosts.
    pub base_url: String,
    /// Bearer token; `None` sends no `Authorization` header (a proxy that adds it).
    pub api_key: Option<Secret<String>>,
    /// Deadline of a whole unstreamed call, and of the response headers of a streamed one.
    pub request_timeout: Duration,
    /// Longest silence accepted between two pieces of a streamed response.
    pub stall_timeout: Duration,
}

impl Default for OpenAiResponsesConfig {
    /// [`DEFAULT_BASE_URL`], no key, a 300 s request timeout and a 60 s stall timeout.
    fn default() -> OpenAiResponsesConfig {
        OpenAiResponsesConfig {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: None,
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

impl OpenAiResponsesConfig {
    /// The default config with this API key.
    pub fn new(api_key: Secret<String>) -> OpenAiResponsesConfig {
        OpenAiResponsesConfig {
            api_key: Some(api_key),
            ..OpenAiResponsesConfig::default()
        }
    }
}

/// A [`Provider`] speaking the OpenAI Responses API over HTTP.
pub struct OpenAiResponses {
    http: Transport,
}

impl fmt::Debug for OpenAiResponses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("OpenAiResponses");
        self.http.debug_fields(&mut d);
        d.finish_non_exhaustive()
    }
}

impl OpenAiResponses {
    /// Checks the config. The key only ever goes to `base_url`: redirects are not
    /// followed, and plain `http` is refused unless the host is loopback (then reached
    /// directly, never through a proxy).
    pub fn new(cfg: OpenAiResponsesConfig) -> Result<OpenAiResponses, ProviderError> {
        let http = Transport::new(
            &cfg.base_url,
            cfg.api_key,
            KeyHeader {
                name: AUTHORIZATION,
                format: "Bearer {}",
            },
            |v| (crate::openai::wire::error_message(v), None),
            cfg.request_timeout,
            cfg.stall_timeout,
        )?;
        Ok(OpenAiResponses { http })
    }

    fn responses_request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let url = format!("{}/responses", self.http.base_url());
        let body = wire::encode_request(req, stream);
        Ok(self.http.client()?.post(url).json(&body))
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let builder = self.responses_request(req, false)?;
        let response = self.http.fetch_json(builder, "the response").await?;
        wire::decode_response(&response, &req.model)
    }

    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let resp = self
            .http
            .send_streamed(self.responses_request(req, true)?)
            .await?;
        if http::is_json(&resp) {
            // A proxy ignored `stream: true` and answered in one piece.
            let decode = |bytes: &[u8]| {
                let response: Value = serde_json::from_slice(bytes).map_err(|e| {
                    ProviderError::Protocol(format!("cannot decode the response: {e}"))
                })?;
                wire::decode_response(&response, &req.model)
            };
            return self.http.whole_answer(resp, events, decode).await;
        }
        let mut assembler = stream::Assembler::default();
        self.http.stream_text(resp, &mut assembler, events).await?;
        assembler.finish(&req.model)
    }
}

impl Provider for OpenAiResponses {
    fn name(&self) -> &str {
        "openai-responses"
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

    /// The model ids of `GET {base_url}/models`.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        let fetch = async move {
            let url = format!("{}/models", self.http.base_url());
            let builder = self.http.client()?.get(url);
            let body = self.http.fetch_json(builder, "the model list").await?;
            crate::openai::wire::decode_models(&body)
        };
        self.http.bounded(fetch).boxed()
    }
}
