//! A client for the Gemini API (`generativelanguage.googleapis.com`): `generateContent`,
//! `streamGenerateContent?alt=sse` and the model list.
//!
//! The key travels in the `x-goog-api-key` header, never in the URL, so it cannot end up
//! in a logged URL or an error. Plain `http://` is accepted only for loopback hosts.

mod stream;
mod wire;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use carapace_types::Secret;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::HeaderName;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::{self, KeyHeader, Transport};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// The API version in every path.
const API_VERSION: &str = "v1beta";
/// Where Google serves the Gemini API.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// How to reach the Gemini API.
#[derive(Clone, Debug)]
pub struct GeminiConfig {
    /// Scheme and host, without the API version, like
    /// `https://generativelanguage.googleapis.com`.
    pub base_url: String,
    /// The API key; `None` sends no `x-goog-api-key` header (a proxy that adds it).
    pub api_key: Option<Secret<String>>,
    /// Deadline of a whole unstreamed call, and of the response headers of a streamed one.
    pub request_timeout: Duration,
    /// Longest silence accepted between two pieces of a streamed response.
    pub stall_timeout: Duration,
}

impl GeminiConfig {
    /// A config for Google's endpoint with this key, a 300 s request timeout and a 60 s
    /// stall timeout.
    pub fn new(api_key: Secret<String>) -> GeminiConfig {
        GeminiConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key: Some(api_key),
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// A [`Provider`] speaking the Gemini API over HTTP.
///
/// Gemini usually sends function calls without an id; such calls get `call_<n>`, unique
/// within this provider, and those ids are never sent back to Gemini (results are matched
/// by function name). Ids Gemini did send are echoed back with the result.
pub struct Gemini {
    http: Transport,
    next_call_id: AtomicU64,
}

impl fmt::Debug for Gemini {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gemini")
            .field("base_url", &self.http.base_url())
            .field("api_key", self.http.key())
            .field("request_timeout", &self.http.request_timeout)
            .field("stall_timeout", &self.http.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl Gemini {
    /// Checks the config. The key only ever goes to `base_url`: redirects are not
    /// followed, and plain `http` is refused unless the host is loopback (then reached
    /// directly, never through a proxy).
    pub fn new(cfg: GeminiConfig) -> Result<Gemini, ProviderError> {
        let http = Transport::new(
            &cfg.base_url,
            cfg.api_key,
            KeyHeader {
                name: HeaderName::from_static("x-goog-api-key"),
                format: "{}",
            },
            |v| (wire::error_message(v), wire::retry_delay(v)),
            cfg.request_timeout,
            cfg.stall_timeout,
        )?;
        Ok(Gemini {
            http,
            next_call_id: AtomicU64::new(1),
        })
    }

    /// `{base_url}/v1beta/models/{model}:{method}`. The model name goes into the path, so
    /// it may hold only letters, digits, `.`, `-` and `_` (after an optional `models/`).
    fn model_url(&self, model: &str, method: &str) -> Result<String, ProviderError> {
        let name = model.strip_prefix("models/").unwrap_or(model);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(ProviderError::InvalidConfig(format!(
                "model name {:?} is not a gemini model name",
                model.chars().take(100).collect::<String>()
            )));
        }
        Ok(format!(
            "{}/{API_VERSION}/models/{name}:{method}",
            self.http.base_url()
        ))
    }

    fn new_call_id(&self) -> String {
        format!(
            "{}{}",
            wire::LOCAL_ID_PREFIX,
            self.next_call_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let url = self.model_url(&req.model, "generateContent")?;
        let body = wire::encode_request(req)?;
        let resp = self
            .http
            .send(self.http.client()?.post(url).json(&body))
            .await?;
        let bytes = self.http.read(resp).await?;
        let mut assembler = stream::Assembler::default();
        for answer in decode_answers(&bytes)? {
            assembler.chunk(answer)?;
        }
        assembler.finish(&req.model, false, || self.new_call_id())
    }

    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let url = format!(
            "{}?alt=sse",
            self.model_url(&req.model, "streamGenerateContent")?
        );
        let body = wire::encode_request(req)?;
        let resp = self
            .http
            .send_streamed(self.http.client()?.post(url).json(&body))
            .await?;
        let mut assembler = stream::Assembler::default();
        if http::is_json(&resp) {
            // Without `alt=sse` honoured, Gemini streams a JSON array of the same chunks.
            let bytes = self.http.read_unstreamed(resp).await?;
            for answer in decode_answers(&bytes)? {
                if let Some(delta) = assembler.chunk(answer)? {
                    let _ = events.send(StreamEvent::TextDelta(delta));
                }
            }
            return assembler.finish(&req.model, true, || self.new_call_id());
        }
        self.http.stream_text(resp, &mut assembler, events).await?;
        // Gemini ends a stream by closing it; the finish reason says it was whole.
        assembler.finish(&req.model, true, || self.new_call_id())
    }
}

impl Provider for Gemini {
    fn name(&self) -> &str {
        "gemini"
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

    /// `GET {base_url}/v1beta/models?pageSize=1000` (the largest page), names without
    /// `models/`. Later pages are not fetched.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        async move {
            let fetch = async {
                let url = format!(
                    "{}/{API_VERSION}/models?pageSize=1000",
                    self.http.base_url()
                );
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

/// A whole answer: one `GenerateContentResponse`, or a JSON array of them.
fn decode_answers(bytes: &[u8]) -> Result<Vec<wire::GenerateResponse>, ProviderError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Protocol(format!("cannot decode the answer: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    items
        .into_iter()
        .map(|v| {
            serde_json::from_value(v)
                .map_err(|e| ProviderError::Protocol(format!("cannot decode the answer: {e}")))
        })
        .collect()
}
