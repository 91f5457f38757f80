//! A client for OpenAI Chat Completions and the servers that copy it: OpenAI, Ollama,
//! llama.cpp, vLLM.

mod stream;
pub(crate) mod wire;

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
    http: Transport,
}

impl fmt::Debug for OpenAiCompat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompat")
            .field("base_url", &self.http.base_url())
            .field("api_key", self.http.key())
            .field("request_timeout", &self.http.request_timeout)
            .field("stall_timeout", &self.http.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompat {
    /// Checks the config. The key only ever goes to `base_url`: redirects are not
    /// followed, and plain `http` is refused unless the host is loopback (then reached
    /// directly, never through a proxy).
    pub fn new(cfg: OpenAiConfig) -> Result<OpenAiCompat, ProviderError> {
        let http = Transport::new(
            &cfg.base_url,
            cfg.api_key,
            KeyHeader {
                name: AUTHORIZATION,
                format: "Bearer {}",
            },
            |v| (wire::error_message(v), None),
            cfg.request_timeout,
            cfg.stall_timeout,
        )?;
        Ok(OpenAiCompat { http })
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let url = format!("{}/chat/completions", self.http.base_url());
        let body = wire::encode_request(req, false);
        let resp = self
            .http
            .send(self.http.client()?.post(url).json(&body))
            .await?;
        let bytes = self.http.read(resp).await?;
        decode_completion(&bytes, &req.model)
    }

    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let url = format!("{}/chat/completions", self.http.base_url());
        let body = wire::encode_request(req, true);
        let resp = self
            .http
            .send_streamed(self.http.client()?.post(url).json(&body))
            .await?;
        if http::is_json(&resp) {
            // The server ignored `stream: true` and answered in one piece.
            let decode = |bytes: &[u8]| decode_completion(bytes, &req.model);
            return self.http.whole_answer(resp, events, decode).await;
        }
        let mut assembler = stream::Assembler::default();
        self.http.stream_text(resp, &mut assembler, events).await?;
        assembler.finish(&req.model)
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
        tracing::debug!(model = %req.model, stream = events.is_some(), "chat request");
        let call = async move {
            match events {
                Some(events) => self.chat_streamed(req, events).await,
                None => self.chat_unstreamed(req).await,
            }
        };
        self.http.turn(events.is_some(), call).boxed()
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        async move {
            let fetch = async {
                let url = format!("{}/models", self.http.base_url());
                let resp = self.http.send(self.http.client()?.get(url)).await?;
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

fn decode_completion(bytes: &[u8], requested_model: &str) -> Result<ChatResponse, ProviderError> {
    let completion = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Protocol(format!("cannot decode the completion: {e}")))?;
    wire::decode_completion(completion, requested_model)
}
