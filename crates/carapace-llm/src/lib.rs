//! The model side of Carapace: the [`Provider`] trait and its implementations, starting
//! with [`OpenAiCompat`], a client for any server that speaks OpenAI Chat Completions
//! (OpenAI, Ollama, llama.cpp, vLLM), then clients for the Anthropic Messages API, the
//! Gemini API, Ollama's native chat API, the OpenAI Responses API and Amazon Bedrock's
//! Converse API (SigV4-signed). A [`Router`] adds retries with backoff and a failover
//! chain over them.
//!
//! A provider turns a [`ChatRequest`] into one model turn and nothing more. This crate
//! never sees or decides policy and never executes a tool: tool calls come back as
//! [`ToolCallRequest`]s with the arguments exactly as the model wrote them, for the Gate
//! to judge. It never logs, displays or puts an API key into an error message.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
mod http;
pub mod ollama;
mod openai;
pub mod openai_responses;
mod prices;
mod route;

pub use openai::{OpenAiCompat, OpenAiConfig};
pub use prices::{Price, PriceTable};
pub use route::{RetryPolicy, Route, RouteEvent, Router};

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;

/// A tool the model may call, as offered to it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The name the model uses to call it.
    pub name: String,
    /// What the tool does, in words for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One message of the conversation sent to the model.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatMessage {
    /// Instructions from Carapace.
    System {
        /// The text.
        content: String,
    },
    /// What the user said.
    User {
        /// The text.
        content: String,
    },
    /// An earlier turn of the model.
    Assistant {
        /// The text of the turn, if any.
        content: Option<String>,
        /// The tool calls the model asked for in that turn.
        tool_calls: Vec<ToolCallRequest>,
    },
    /// The result of one tool call, as the Gate released it.
    Tool {
        /// The id of the call this answers.
        tool_call_id: String,
        /// The result text.
        content: String,
    },
}

/// A tool call the model asked for; nothing has checked it yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCallRequest {
    /// The provider's id for the call, echoed back with the result.
    pub id: String,
    /// The tool name the model used.
    pub name: String,
    /// The arguments as raw JSON text, exactly as the model produced them; may be
    /// malformed.
    pub arguments: String,
    /// An opaque token the provider attached to the call and wants back with it in later
    /// turns (Gemini's `thoughtSignature`); `None` for most providers.
    pub signature: Option<String>,
}

/// One model turn to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// Model name as the provider knows it.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Tools offered to the model; empty offers none.
    pub tools: Vec<ToolSpec>,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

/// Token counts reported by the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// The outcome of one model turn.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    /// The whole text of the turn; `None` when the model wrote none.
    pub content: Option<String>,
    /// The tool calls of the turn, fully assembled, in the model's order.
    pub tool_calls: Vec<ToolCallRequest>,
    /// Why the model stopped, like `stop`, `length` or `tool_calls`.
    pub finish_reason: Option<String>,
    /// Token counts, when the provider reported them.
    pub usage: Option<Usage>,
    /// The model that answered, as the provider named it.
    pub model: String,
}

/// Something that happens while a streamed turn is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The next piece of the turn's text.
    TextDelta(String),
}

/// A model provider. Cancellation is by dropping the returned future: the HTTP request is
/// aborted.
pub trait Provider: Send + Sync {
    /// Short name of the provider for logs and `cara doctor`.
    fn name(&self) -> &str;

    /// One model turn. With `events` the provider streams and sends text deltas as they
    /// arrive; the final [`ChatResponse`] holds the whole text and the assembled tool
    /// calls.
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        events: Option<&'a UnboundedSender<StreamEvent>>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;

    /// Lists models (GET `{base_url}/models`), used by `cara doctor` to check reachability.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>>;
}

/// Why a provider call failed. No variant ever carries an API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an HTTP error status.
    #[error("provider answered http {status}: {message}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The provider's message from the error body, at most 500 characters.
        message: String,
        /// How long the provider asked to wait before trying again (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The provider could not be reached, or the connection broke.
    #[error("cannot reach provider: {0}")]
    Connect(String),
    /// The provider did not answer within the request timeout.
    #[error("provider did not answer in time")]
    Timeout,
    /// A streamed answer stopped arriving for longer than the stall timeout.
    #[error("provider stream stalled")]
    Stalled,
    /// The provider answered something that is not the expected wire format.
    #[error("provider protocol error: {0}")]
    Protocol(String),
    /// The provider configuration is unusable.
    #[error("invalid provider config: {0}")]
    InvalidConfig(String),
}

/// The wait a `Retry-After` header asks for: delay-seconds, or an HTTP date (a date in
/// the past means now).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl ProviderError {
    /// Whether trying the same call again later may succeed: rate limits, server errors,
    /// network failures, timeouts and stalls.
    pub fn retriable(&self) -> bool {
        match self {
            ProviderError::Http { status, .. } => *status == 429 || *status >= 500,
            ProviderError::Connect(_) | ProviderError::Timeout | ProviderError::Stalled => true,
            ProviderError::Protocol(_) | ProviderError::InvalidConfig(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::retry_after;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after(&with("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&with(" 0 ")), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let wait = retry_after(&with(&later)).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(
            retry_after(&with("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&with("soon")), None);
        assert_eq!(retry_after(&with("-3")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
