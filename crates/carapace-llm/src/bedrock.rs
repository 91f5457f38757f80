//! A client for Amazon Bedrock's Converse API (`POST /model/{modelId}/converse` and
//! `/converse-stream` on the runtime endpoint, `GET /foundation-models` on the control
//! plane endpoint).
//!
//! Every request is signed with AWS Signature Version 4 (service `bedrock`) just before it
//! is sent, over the exact method, URL, headers and body that go out. The secret access key
//! never leaves the process; the access key id and the session token travel in headers and
//! are cut out of every error message like the secret.

mod stream;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use carapace_types::Secret;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::{self, KeyHeader, Signer, Transport};
use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// The service name both Bedrock endpoints sign for.
const SIGNING_NAME: &str = "bedrock";
/// The header AWS names the kind of an error in.
const ERROR_KIND_HEADER: &str = "x-amzn-errortype";

/// How to reach Amazon Bedrock and the AWS credentials to sign with.
#[derive(Clone, Debug)]
pub struct BedrockConfig {
    /// The AWS region, like `us-east-1`; it picks the default endpoints and is signed for.
    pub region: String,
    /// The runtime endpoint (Converse); `None` is `https://bedrock-runtime.{region}.amazonaws.com`.
    /// Plain `http` is accepted only for loopback hosts.
    pub endpoint: Option<String>,
    /// The control plane endpoint (the model list); `None` is
    /// `https://bedrock.{region}.amazonaws.com`. Plain `http` only for loopback hosts.
    pub control_endpoint: Option<String>,
    /// The access key id, like `AKIA...` or `ASIA...`.
    pub access_key_id: Secret<String>,
    /// The secret access key; only ever used to derive the signing key.
    pub secret_access_key: Secret<String>,
    /// The session token of temporary credentials, sent as `x-amz-security-token`.
    pub session_token: Option<Secret<String>>,
    /// Deadline of a whole unstreamed call, and of the response headers of a streamed one.
    pub request_timeout: Duration,
    /// Longest silence accepted between two pieces of a streamed response.
    pub stall_timeout: Duration,
    /// `inferenceConfig.maxTokens` of requests that set none.
    pub max_tokens: u32,
}

impl BedrockConfig {
    /// The config for `region` with these long-term credentials: the region's default
    /// endpoints, no session token, a 300 s request timeout, a 60 s stall timeout and
    /// 4096 tokens at most.
    pub fn new(
        region: &str,
        access_key_id: Secret<String>,
        secret_access_key: Secret<String>,
    ) -> BedrockConfig {
        BedrockConfig {
            region: region.to_string(),
            endpoint: None,
            control_endpoint: None,
            access_key_id,
            secret_access_key,
            session_token: None,
            request_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
            max_tokens: 4096,
        }
    }

    /// The runtime endpoint requests go to.
    pub fn runtime_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{}.amazonaws.com", self.region))
    }

    /// The control plane endpoint the model list comes from.
    pub fn control_plane_endpoint(&self) -> String {
        self.control_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://bedrock.{}.amazonaws.com", self.region))
    }
}

/// A [`Provider`] speaking the Bedrock Converse API over HTTP, signing with SigV4.
pub struct Bedrock {
    runtime: Transport,
    control: Transport,
    region: String,
    max_tokens: u32,
}

impl fmt::Debug for Bedrock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bedrock")
            .field("region", &self.region)
            .field("endpoint", &self.runtime.base_url())
            .field("control_endpoint", &self.control.base_url())
            .field("credentials", &"[REDACTED]")
            .field("request_timeout", &self.runtime.request_timeout)
            .field("stall_timeout", &self.runtime.stall_timeout)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// What the signer signs with.
struct Credentials {
    access_key_id: Secret<String>,
    secret_access_key: Secret<String>,
    session_token: Option<Secret<String>>,
    region: String,
}

impl Bedrock {
    /// Checks the config. Requests only ever go to the two endpoints: redirects are not
    /// followed, and plain `http` is refused unless the host is loopback (then reached
    /// directly, never through a proxy).
    pub fn new(cfg: BedrockConfig) -> Result<Bedrock, ProviderError> {
        let invalid = |m: &str| Err(ProviderError::InvalidConfig(m.to_string()));
        let region_ok = !cfg.region.is_empty()
            && cfg
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return invalid("region must be a name like us-east-1");
        }
        if cfg.max_tokens == 0 {
            return invalid("max_tokens must be at least 1");
        }
        let header_safe = |s: &Secret<String>| {
            !s.expose().is_empty() && HeaderValue::from_str(s.expose()).is_ok()
        };
        if !header_safe(&cfg.access_key_id) || !header_safe(&cfg.secret_access_key) {
            return invalid(
                "the access key id and the secret access key must be set and printable",
            );
        }
        if cfg.session_token.as_ref().is_some_and(|t| !header_safe(t)) {
            return invalid("the session token must be printable when set");
        }
        let credentials = Arc::new(Credentials {
            access_key_id: cfg.access_key_id.clone(),
            secret_access_key: cfg.secret_access_key.clone(),
            session_token: cfg.session_token.clone(),
            region: cfg.region.clone(),
        });
        let secrets: Vec<Secret<String>> = [
            Some(cfg.access_key_id.clone()),
            Some(cfg.secret_access_key.clone()),
            cfg.session_token.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let transport = |endpoint: &str| -> Result<Transport, ProviderError> {
            let signer = {
                let credentials = credentials.clone();
                Box::new(move |request: &mut reqwest::Request| {
                    sign_request(&credentials, request, SystemTime::now())
                }) as Signer
            };
            Ok(Transport::new(
                endpoint,
                None,
                KeyHeader {
                    name: reqwest::header::AUTHORIZATION,
                    format: "{}",
                },
                |v| (wire::error_message(v), None),
                cfg.request_timeout,
                cfg.stall_timeout,
            )?
            .signed_by(signer, secrets.clone())
            .error_kind_header(HeaderName::from_static(ERROR_KIND_HEADER)))
        };
        Ok(Bedrock {
            runtime: transport(&cfg.runtime_endpoint())?,
            control: transport(&cfg.control_plane_endpoint())?,
            region: cfg.region,
            max_tokens: cfg.max_tokens,
        })
    }

    fn converse_request(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let operation = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        let url = format!(
            "{}/model/{}/{operation}",
            self.runtime.base_url(),
            path_segment(&req.model)
        );
        let body = wire::encode_request(req, self.max_tokens);
        Ok(self.runtime.client()?.post(url).json(&body))
    }

    async fn chat_unstreamed(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let builder = self.converse_request(req, false)?;
        let response = self.runtime.fetch_json(builder, "the response").await?;
        wire::decode_response(&response, &req.model)
    }

    async fn chat_streamed(
        &self,
        req: &ChatRequest,
        events: &UnboundedSender<StreamEvent>,
    ) -> Result<ChatResponse, ProviderError> {
        let resp = self
            .runtime
            .send_streamed(self.converse_request(req, true)?)
            .await?;
        if http::is_json(&resp) {
            // A proxy answered in one piece, as `converse` does.
            let decode = |bytes: &[u8]| {
                let response: Value = serde_json::from_slice(bytes).map_err(|e| {
                    ProviderError::Protocol(format!("cannot decode the response: {e}"))
                })?;
                wire::decode_response(&response, &req.model)
            };
            return self.runtime.whole_answer(resp, events, decode).await;
        }
        let mut frames = stream::Frames::default();
        let mut assembler = stream::Assembler::default();
        self.runtime
            .for_each_piece(resp, |piece| {
                for frame in frames.push(piece)? {
                    if let Some(delta) = assembler.frame(&frame)? {
                        // A consumer that went away does not stop the turn; it still has
                        // to finish so the caller gets the tool calls.
                        let _ = events.send(StreamEvent::TextDelta(delta));
                    }
                }
                Ok(assembler.is_done())
            })
            .await?;
        frames.finish()?;
        assembler.finish(&req.model)
    }
}

impl Provider for Bedrock {
    fn name(&self) -> &str {
        "bedrock"
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
        self.runtime.turn(events.is_some(), call).boxed()
    }

    /// The ids of the text models of `GET {control endpoint}/foundation-models`.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
        let fetch = async move {
            let url = format!(
                "{}/foundation-models?byOutputModality=TEXT",
                self.control.base_url()
            );
            let builder = self.control.client()?.get(url);
            let body = self.control.fetch_json(builder, "the model list").await?;
            wire::decode_models(&body)
        };
        self.control.bounded(fetch).boxed()
    }
}

/// A model id (or an ARN) as one path segment: everything but the unreserved characters
/// percent-encoded, as AWS encodes labels (`:` is `%3A`, `/` is `%2F`).
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Adds the SigV4 headers (`x-amz-date`, the session token, `authorization`) computed over
/// the request as it will go out: its method, URL (the path encoded once more in the
/// canonical request), headers and body.
fn sign_request(
    credentials: &Credentials,
    request: &mut reqwest::Request,
    now: SystemTime,
) -> Result<(), ProviderError> {
    let failed = |e: &dyn fmt::Display| {
        ProviderError::InvalidConfig(format!("cannot sign the request: {e}"))
    };
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.expose().as_str(),
        credentials.secret_access_key.expose().as_str(),
        credentials
            .session_token
            .as_ref()
            .map(|t| t.expose().clone()),
        None,
        "carapace",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&credentials.region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let body = match request.body() {
        None => &[][..],
        Some(body) => body
            .as_bytes()
            .ok_or_else(|| failed(&"the body is a stream"))?,
    };
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| Ok((name.as_str(), value.to_str()?)))
        .collect::<Result<Vec<_>, reqwest::header::ToStrError>>()
        .map_err(|e| failed(&e))?;
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.url().as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    let (headers, _query) = instructions.into_parts();
    for header in headers {
        let mut value = HeaderValue::from_str(header.value()).map_err(|e| failed(&e))?;
        value.set_sensitive(header.sensitive());
        let name = HeaderName::from_bytes(header.name().as_bytes()).map_err(|e| failed(&e))?;
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn model_ids_are_one_encoded_path_segment() {
        assert_eq!(
            path_segment("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            "anthropic.claude-3-5-sonnet-20240620-v1%3A0"
        );
        assert_eq!(
            path_segment("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x~y_z"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x~y_z"
        );
        assert_eq!(path_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
