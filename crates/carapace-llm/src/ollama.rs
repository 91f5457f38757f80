//! A client for Ollama's native chat API (`POST /api/chat`, `GET /api/tags`).
//!
//! Ollama streams newline-delimited JSON, not server-sent events, sends tool call
//! arguments as JSON objects and usually no call id, and matches a tool result to its call
//! by the function name. It wants no key; one can be set for a proxy in front of it.

mod stream;
mod wire;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use carapace_types::Secret;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::AUTHORIZATION;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::{KeyHeader, LineFold, Transport};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// Where a local Ollama listens.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:11434";

/// How to reach an Ollama server.
#[derive(Clone, Debug)]
pub struct OllamaConfig {
    /// Scheme, host and port, without `/api`, like `http://127.0.0.1:11434`. Plain `http`
    /// is accepted only for loopback hosts.
    pub base_url: String,
    /// Bearer token for a proxy in front of Ollama; `None` (Ollama's own case) sends no
    /// `Authorization` header.
    pub api_key: Option<Secret<String>>,
    /// Deadline of a whole unstreamed call, and of the response headers of a streamed one.
    pub request_timeout: Duration,
    /// Longest silence accepted between two pieces of a streamed response.
    pub stall_timeout: Duration,
}

impl Default for OllamaConfig {
    /// [`DEFAULT_BASE_URL`], no key, a 300 s request timeout (a model may have to load
    /// first) and a 60 s stall timeout.
    fn default() -> OllamaConfig {
        OllamaConfig {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: None,
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// A [`Provider`] speaking Ollama's native chat API over HTTP.
///
/// Ollama usually sends tool calls without an id; such calls get `call_<n>`, unique within
/// this provider. Ids are never sent back: a tool result names the function of its call.
pub struct Ollama {
    http: Transport,
    next_call_id: AtomicU64,
}

impl fmt::Debug for Ollama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Ollama");
        self.http.debug_fields(&mut d);
        d.finish_non_exhaustive()
    }
}

impl Ollama {
    /// Checks the config. The key only ever goes to `base_url`: redirects are not
    /// followed, and plain `http` is refused unless the host is loopback (then reached
    /// directly, never through a proxy).
    pub fn new(cfg: OllamaConfig) -> Result<Ollama, ProviderError> {
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
        Ok(Ollama {
            http,
            next_call_id: AtomicU64::new(1),
        })
    }

    fn new_call_id(&self) -> String {
        format!("call_{}", self.next_call_id.fetch_add(1, Ordering::Relaxed))
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let url = format!("{}/api/chat", self.http.base_url());
        let body = wire::encode_request(req, stream);
        Ok(self.http.client()?.post(url).json(&body))
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let resp = self.http.send(self.chat_request(req, false)?).await?;
        let bytes = self.http.read(resp).await?;
        let mut assembler = stream::Assembler::default();
        assembler.line(&String::from_utf8_lossy(&bytes))?;
        assembler.finish(&req.model, || self.new_call_id())
    }

    /// Every line is one JSON object, so an answer that came in one piece despite
    /// `stream: true` reads the same way.
    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let resp = self
            .http
            .send_streamed(self.chat_request(req, true)?)
            .await?;
        let mut assembler = stream::Assembler::default();
        self.http.stream_text(resp, &mut assembler, events).await?;
        assembler.finish(&req.model, || self.new_call_id())
    }
}

impl Provider for Ollama {
    fn name(&self) -> &str {
        "ollama"
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

    /// The names of the local models, from `GET {base_url}/api/tags`.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        let fetch = async move {
            let url = format!("{}/api/tags", self.http.base_url());
            let builder = self.http.client()?.get(url);
            let body = self.http.fetch_json(builder, "the model list").await?;
            wire::decode_models(&body)
        };
        self.http.bounded(fetch).boxed()
    }
}
