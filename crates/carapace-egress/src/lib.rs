//! Outbound HTTP for tools and plugins: the one client that touches the network, with an
//! SSRF guard, host allowlists, credential injection and size and time limits.
//!
//! Every hop of a request (the first and each redirect, which this crate follows itself)
//! is checked the same way: scheme, allowlists of the configuration and of the request's
//! [`Scope`], then the host is resolved once and every address checked; the connection
//! goes to exactly those checked addresses (reqwest's resolver only answers from them),
//! so DNS rebinding cannot swap in a private address. Credentials are added at the last
//! moment, only for hosts they belong to, and scrubbed from everything returned.
//!
//! [`Egress::send_stream`] sends one hop the same way for a protocol client that reads a
//! long-lived body (MCP's server-sent events): the request timeout bounds everything up
//! to the response head, the body has no deadline and no size cap of its own (the caller
//! bounds both), and its text is scrubbed piece by piece, a credential split between two
//! pieces included.
//!
//! This crate must never decide policy (it takes fully resolved allowlists and secrets
//! from the Gate and depends on neither the policy nor the vault crate), never resolve a
//! host twice for one hop, never use a proxy from the environment, and never return an
//! injected credential in a response, an error or a URL.

mod addr;
mod body;
mod config;
mod error;
mod resolve;
mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use carapace_types::Secret;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::addr::Cidr;
use crate::body::{Kind, Redactor};
use crate::config::{HostKey, HostPattern, any_match, patterns};
use crate::resolve::{PinnedResolver, Pins};

pub use crate::config::EgressConfig;
pub use crate::error::EgressError;
pub use crate::resolve::{Resolver, Resolving, SystemResolver};
pub use crate::stream::EgressStream;

/// Checks a host list in allowlist syntax (`host`, `host:port`, `*.domain`), as a
/// session's own list is checked before the session is created; the error names the
/// first bad entry.
pub fn check_host_list(entries: &[String]) -> Result<(), String> {
    crate::config::patterns(entries, "allow_hosts").map(drop)
}

/// Whether `url`'s host and port match the allowlist entry `pattern`, by the rules the
/// allowlists and injections use (so the Gate can tell which credentials a call would
/// carry before it asks the owner). False for a URL without a host or a bad pattern.
pub fn url_matches(pattern: &str, url: &str) -> bool {
    let (Ok(pattern), Ok(url)) = (HostPattern::parse(pattern), Url::parse(url)) else {
        return false;
    };
    match (HostKey::of(&url), url.port_or_known_default()) {
        (Some(host), Some(port)) => pattern.matches(&host, port),
        _ => false,
    }
}

/// At most this many caller-provided headers per request.
const MAX_HEADERS: usize = 64;
/// At most this many bytes of caller-provided header names and values per request.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// URLs longer than this are refused.
const MAX_URL_BYTES: usize = 8 * 1024;

/// An outbound request as a tool describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRequest {
    /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
    pub method: String,
    /// An absolute http or https URL.
    pub url: String,
    /// Extra request headers; hop-by-hop and framing headers are refused.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Option<Vec<u8>>,
}

impl EgressRequest {
    /// A GET request for `url` without headers.
    pub fn get(url: impl Into<String>) -> EgressRequest {
        EgressRequest {
            method: "GET".to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }
}

/// What one request may do beyond the configuration: narrower hosts and credentials.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// When set, a host must match this list as well as the configuration's (narrows,
    /// never widens): the tool's own list. Same syntax as [`EgressConfig::allow_hosts`].
    pub allow_hosts: Option<Vec<String>>,
    /// When set, a host must also match this list: the session's own. Same syntax.
    pub session_hosts: Option<Vec<String>>,
    /// Credentials to add to the hops whose host they belong to.
    pub injections: Vec<Injection>,
}

/// A credential the egress layer adds to requests for some hosts.
#[derive(Clone, Debug)]
pub struct Injection {
    /// Hosts (same syntax as the allowlists) that receive the credential.
    pub hosts: Vec<String>,
    /// Where the credential goes.
    pub place: Place,
    /// The credential itself.
    pub value: Secret<String>,
}

/// Where an injected credential goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A request header; `format` holds `{}` where the value goes (`"Bearer {}"`).
    Header {
        /// The header name.
        name: String,
        /// The header value with `{}` in place of the credential.
        format: String,
    },
    /// A query parameter (replacing any parameter of the same name).
    Query {
        /// The parameter name.
        name: String,
    },
}

/// A response, with injected credentials replaced by `[REDACTED]` everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The URL of the last hop (without injected query parameters).
    pub final_url: String,
    /// The response headers of the last hop.
    pub headers: Vec<(String, String)>,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The body as readable text, or a one-line summary for binary content.
    pub text: String,
    /// True when the body was cut at `max_response_bytes`.
    pub truncated: bool,
    /// How many body bytes were read.
    pub bytes: u64,
    /// The redirect targets followed, in order.
    pub redirects: Vec<String>,
}

/// A destination that passed every check: only [`Egress::check_url`] builds one.
#[must_use]
#[derive(Clone, Debug)]
pub struct CheckedUrl {
    url: Url,
    host: HostKey,
    port: u16,
    addrs: Vec<IpAddr>,
    private: bool,
}

impl CheckedUrl {
    /// The checked URL, normalised (IPv4 literals in any notation become dotted quads).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The host as the allowlists saw it (IPv6 in brackets).
    pub fn host(&self) -> String {
        self.host.to_string()
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The checked addresses a connection may go to.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }

    /// True when the destination is reachable only through `allow_private`.
    pub fn private_allowed(&self) -> bool {
        self.private
    }

    fn destination(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The outbound HTTP client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    allow_hosts: Vec<HostPattern>,
    allow_private: Vec<HostPattern>,
    allow_http: Vec<HostPattern>,
    deny: Vec<Cidr>,
    config: EgressConfig,
    resolver: Arc<dyn Resolver>,
    /// Requests that may only reach public addresses.
    public: Lane,
    /// Requests whose host:port is in `allow_private`; absent when that list is empty.
    /// A separate client (and pool, and pins) because a pinned private address must
    /// never answer for a request that was not allowed to reach it.
    private: Option<Lane>,
}

/// One reqwest client with the pins its resolver answers from.
struct Lane {
    client: reqwest::Client,
    pins: Arc<Pins>,
}

impl Lane {
    fn new(config: &EgressConfig) -> Result<Lane, EgressError> {
        let pins = Arc::new(Pins::default());
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .referer(false)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.as_str())
            .dns_resolver(Arc::new(PinnedResolver(Arc::clone(&pins))))
            .build()
            .map_err(|_| EgressError::Config("cannot build the http client".to_string()))?;
        Ok(Lane { client, pins })
    }
}

impl Egress {
    /// An egress client using the system resolver.
    pub fn new(config: EgressConfig) -> Result<Egress, EgressError> {
        Egress::with_resolver(config, Arc::new(SystemResolver))
    }

    /// An egress client using `resolver` for every host name.
    pub fn with_resolver(
        config: EgressConfig,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Egress, EgressError> {
        let allow_hosts =
            patterns(&config.allow_hosts, "allow_hosts").map_err(EgressError::Config)?;
        let allow_http = patterns(&config.allow_http, "allow_http").map_err(EgressError::Config)?;
        let allow_private =
            patterns(&config.allow_private, "allow_private").map_err(EgressError::Config)?;
        if let Some(i) = allow_private.iter().position(|p| !p.has_port()) {
            return Err(EgressError::Config(format!(
                "allow_private: {:?} needs a port",
                config.allow_private[i]
            )));
        }
        let deny = config
            .deny_ranges
            .iter()
            .map(|r| Cidr::parse(r).map_err(|m| EgressError::Config(format!("deny_ranges: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(EgressError::Config("timeouts must be positive".to_string()));
        }
        if config.max_response_bytes == 0 {
            return Err(EgressError::Config(
                "max_response_bytes must be positive".to_string(),
            ));
        }
        let public = Lane::new(&config)?;
        let private = if allow_private.is_empty() {
            None
        } else {
            Some(Lane::new(&config)?)
        };
        Ok(Egress {
            inner: Arc::new(Inner {
                allow_hosts,
                allow_private,
                allow_http,
                deny,
                config,
                resolver,
                public,
                private,
            }),
        })
    }

    /// The configuration this client was built with (its limits size the callers' own).
    pub fn config(&self) -> &EgressConfig {
        &self.inner.config
    }

    /// Checks without sending: scheme, allowlists (configuration and scope), addresses.
    /// Used by the Gate to refuse early and to name the destination in approvals.
    pub async fn check_url(&self, url: &str, scope: &Scope) -> Result<CheckedUrl, EgressError> {
        let url = parse_url(url)?;
        let narrow = scope_patterns(scope)?;
        tokio::time::timeout(self.inner.config.timeout, self.check(url, &narrow))
            .await
            .unwrap_or(Err(EgressError::Timeout))
    }

    /// Checks a raw TCP tunnel to `dest` (`host:port`, as in an HTTP CONNECT) as the
    /// request it most likely carries: port 443 as `https://`, port 80 as `http://` (so
    /// `allow_http` must list it). Any other port is allowed only where an allowlist entry
    /// names that port (`host:PORT` in `allow_hosts`, `allow_private` or the scope's
    /// list): an entry without a port means web traffic, not every service of the host.
    pub async fn check_tunnel(&self, dest: &str, scope: &Scope) -> Result<CheckedUrl, EgressError> {
        let mut url = parse_url(&format!("https://{dest}/"))?;
        if url.port() == Some(80) {
            let _ = url.set_scheme("http");
        }
        let narrow = scope_patterns(scope)?;
        if let (Some(host), Some(port)) = (HostKey::of(&url), url.port_or_known_default())
            && port != 443
            && port != 80
        {
            let named =
                |list: &[HostPattern]| list.iter().any(|p| p.has_port() && p.matches(&host, port));
            if !named(&self.inner.allow_hosts)
                && !named(&self.inner.allow_private)
                && !narrow.iter().any(|n| named(n))
            {
                return Err(EgressError::PortNotNamed {
                    host: host.to_string(),
                    port,
                });
            }
        }
        tokio::time::timeout(self.inner.config.timeout, self.check(url, &narrow))
            .await
            .unwrap_or(Err(EgressError::Timeout))
    }

    /// Sends `req`, following redirects, each hop checked like the first.
    pub async fn send(
        &self,
        req: EgressRequest,
        scope: &Scope,
    ) -> Result<EgressResponse, EgressError> {
        self.send_mode(req, scope, Mode::Render).await
    }

    /// Sends `req` for a protocol client (an MCP server over HTTP) that needs the body as
    /// the server sent it: checked and given credentials like [`Egress::send`], but a
    /// redirect is returned as it is (never followed) and the body is not rendered (no
    /// HTML to text, no binary summary): `text` holds it whole, with injected credentials
    /// redacted, cut at `max_response_bytes` with `truncated` set.
    pub async fn send_raw(
        &self,
        req: EgressRequest,
        scope: &Scope,
    ) -> Result<EgressResponse, EgressError> {
        self.send_mode(req, scope, Mode::Raw).await
    }

    async fn send_mode(
        &self,
        req: EgressRequest,
        scope: &Scope,
        mode: Mode,
    ) -> Result<EgressResponse, EgressError> {
        let redactor = Redactor::new(scope.injections.iter().map(|i| i.value.expose().as_str()));
        let result = tokio::time::timeout(
            self.inner.config.timeout,
            self.send_checked(req, scope, &redactor, mode),
        )
        .await
        .unwrap_or(Err(EgressError::Timeout));
        result.map_err(|e| e.map_text(|s| redactor.redact(s)))
    }

    async fn send_checked(
        &self,
        req: EgressRequest,
        scope: &Scope,
        redactor: &Redactor,
        mode: Mode,
    ) -> Result<EgressResponse, EgressError> {
        let inner = &self.inner;
        let mut out = self.prepare(req, scope)?;
        let mut redirects = Vec::new();

        loop {
            let (checked, response) = self.send_hop(&out).await?;
            let status = response.status();
            let location = response.headers().get(header::LOCATION);
            let Some(location) = location.filter(|_| is_redirect(status) && mode == Mode::Render)
            else {
                return self
                    .finish(response, &checked.url, redirects, redactor, mode)
                    .await;
            };
            if redirects.len() as u64 >= u64::from(inner.config.max_redirects) {
                return Err(EgressError::TooManyRedirects(inner.config.max_redirects));
            }
            let location = location.to_str().map_err(|_| {
                EgressError::Protocol("redirect location is not valid text".to_string())
            })?;
            let mut next = checked
                .url
                .join(location)
                .map_err(|e| EgressError::InvalidUrl(format!("redirect target: {e}")))?;
            next.set_fragment(None);

            if (status == StatusCode::SEE_OTHER && out.method != Method::HEAD)
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && out.method == Method::POST)
            {
                out.method = Method::GET;
                out.body = None;
                for h in [
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::CONTENT_LANGUAGE,
                    header::CONTENT_LOCATION,
                ] {
                    out.headers.remove(h);
                }
            }
            // A body re-sent elsewhere (307, 308) would reach a host the caller's checks
            // (policy decides on the first host) never saw: refused.
            if out.body.is_some() && next.host_str() != checked.url.host_str() {
                return Err(EgressError::Protocol(format!(
                    "a redirect would re-send the request body to another host ({}); send it there yourself if that is intended",
                    next.host_str().unwrap_or("?")
                )));
            }
            if next.origin() != checked.url.origin() {
                out.headers.remove(header::AUTHORIZATION);
                out.headers.remove(header::COOKIE);
            }
            if let (Some(host), Some(port)) = (HostKey::of(&next), next.port_or_known_default()) {
                let carries = out.injections.iter().any(|i| {
                    i.redactor.found_in(next.as_str()) && !any_match(&i.hosts, &host, port)
                });
                if carries {
                    return Err(EgressError::Protocol(
                        "redirect target would carry a credential to another host".to_string(),
                    ));
                }
            }
            redirects.push(redactor.redact(next.as_str()));
            out.url = next;
        }
    }

    /// Validates what every hop of `req` uses: method, headers, body size, the scope's
    /// lists and injections, the first URL.
    fn prepare<'a>(
        &self,
        req: EgressRequest,
        scope: &'a Scope,
    ) -> Result<Outgoing<'a>, EgressError> {
        let method = parse_method(&req.method)?;
        let headers = caller_headers(&req.headers)?;
        if req
            .body
            .as_ref()
            .is_some_and(|b| b.len() as u64 > self.inner.config.max_request_bytes)
        {
            return Err(EgressError::TooLarge);
        }
        let narrow = scope_patterns(scope)?;
        let injections = scope
            .injections
            .iter()
            .map(Prepared::new)
            .collect::<Result<Vec<_>, _>>()?;
        let url = parse_url(&req.url)?;
        Ok(Outgoing {
            method,
            headers,
            body: req.body,
            narrow,
            injections,
            url,
        })
    }

    /// Checks the hop to `out.url`, adds the credentials that belong to its host and
    /// sends it; returns the checked destination and the response head.
    async fn send_hop(
        &self,
        out: &Outgoing<'_>,
    ) -> Result<(CheckedUrl, reqwest::Response), EgressError> {
        let inner = &self.inner;
        let checked = self.check(out.url.clone(), &out.narrow).await?;
        let lane = if checked.private {
            inner.private.as_ref().ok_or_else(|| {
                EgressError::Config("no client for private destinations".to_string())
            })?
        } else {
            &inner.public
        };

        let mut wire_url = checked.url.clone();
        let mut hop_headers = out.headers.clone();
        for inj in out
            .injections
            .iter()
            .filter(|i| any_match(&i.hosts, &checked.host, checked.port))
        {
            inj.apply(&mut wire_url, &mut hop_headers)?;
        }
        let mut request = lane
            .client
            .request(out.method.clone(), wire_url)
            .headers(hop_headers);
        if let Some(b) = &out.body {
            request = request.body(b.clone());
        }
        // The pin is what reqwest's resolver answers with while this hop connects.
        let pin = match (&checked.host, checked.url.host_str()) {
            (HostKey::Domain(_), Some(name)) => Some(lane.pins.pin(name, &checked.addrs)),
            _ => None,
        };
        let response = request
            .send()
            .await
            .map_err(|e| request_error(e, &checked.destination()))?;
        drop(pin);
        Ok((checked, response))
    }

    /// Resolves (once) and checks one hop.
    async fn check(
        &self,
        mut url: Url,
        narrow: &[Vec<HostPattern>],
    ) -> Result<CheckedUrl, EgressError> {
        let inner = &self.inner;
        let scheme = url.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(EgressError::SchemeNotAllowed {
                scheme,
                host: url.host_str().unwrap_or_default().to_string(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EgressError::InvalidUrl(
                "credentials in the url are not allowed".to_string(),
            ));
        }
        url.set_fragment(None);
        let (Some(host), Some(port)) = (HostKey::of(&url), url.port_or_known_default()) else {
            return Err(EgressError::InvalidUrl("missing host".to_string()));
        };
        let destination = format!("{host}:{port}");
        if !any_match(&inner.allow_hosts, &host, port)
            || narrow.iter().any(|n| !any_match(n, &host, port))
        {
            return Err(EgressError::HostNotAllowed { host: destination });
        }
        if scheme == "http" && !any_match(&inner.allow_http, &host, port) {
            return Err(EgressError::SchemeNotAllowed {
                scheme,
                host: destination,
            });
        }
        let private = any_match(&inner.allow_private, &host, port);
        let addrs = match (&host, url.host_str()) {
            (HostKey::Ip(ip), _) => vec![*ip],
            (HostKey::Domain(_), Some(name)) => {
                let addrs = inner
                    .resolver
                    .resolve(name)
                    .await
                    .map_err(|_| EgressError::Connect(format!("cannot resolve {host}")))?;
                if addrs.is_empty() {
                    return Err(EgressError::Connect(format!("cannot resolve {host}")));
                }
                addrs
            }
            (HostKey::Domain(_), None) => {
                return Err(EgressError::InvalidUrl("missing host".to_string()));
            }
        };
        for ip in &addrs {
            let range = addr::denied_by(&inner.deny, *ip).or_else(|| {
                if private {
                    None
                } else {
                    addr::builtin_block(*ip)
                }
            });
            if let Some(range) = range {
                tracing::debug!(%destination, %ip, %range, "egress address blocked");
                return Err(EgressError::AddressBlocked {
                    host: host.to_string(),
                    addr: ip.to_string(),
                    range,
                });
            }
        }
        Ok(CheckedUrl {
            url,
            host,
            port,
            addrs,
            private,
        })
    }

    /// Reads the body within the limits and builds the scrubbed response.
    async fn finish(
        &self,
        response: reqwest::Response,
        url: &Url,
        redirects: Vec<String>,
        redactor: &Redactor,
        mode: Mode,
    ) -> Result<EgressResponse, EgressError> {
        let status = response.status().as_u16();
        let (headers, content_type) = redacted_head(&response, redactor);
        let declared = match mode {
            Mode::Render => body::kind(content_type.as_deref()),
            Mode::Raw => Some(Kind::Text),
        };
        let keep = declared != Some(Kind::Binary);
        let max = self.inner.config.max_response_bytes;

        let mut buf = Vec::new();
        let mut count: u64 = 0;
        let mut truncated = false;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                if e.is_timeout() {
                    EgressError::Timeout
                } else {
                    EgressError::Protocol("reading the response body failed".to_string())
                }
            })?;
            let room = usize::try_from(max - count).unwrap_or(usize::MAX);
            let take = chunk.len().min(room);
            if keep {
                buf.extend_from_slice(&chunk[..take]);
            }
            count += take as u64;
            if take < chunk.len() {
                truncated = true;
                break;
            }
        }
        drop(stream);

        let kind = declared.unwrap_or_else(|| body::sniff(&buf));
        let text = if kind == Kind::Binary {
            body::binary_summary(content_type.as_deref(), count, truncated)
        } else {
            let raw = body_text(buf, truncated, redactor);
            if kind == Kind::Html {
                let rendered = tokio::task::spawn_blocking(move || body::html_to_text(&raw))
                    .await
                    .map_err(|_| EgressError::Protocol("rendering html failed".to_string()))?;
                // Entities may have hidden a credential from the first pass.
                redactor.redact(&rendered)
            } else {
                raw
            }
        };
        Ok(EgressResponse {
            status,
            final_url: redactor.redact(url.as_str()),
            headers,
            content_type,
            text,
            truncated,
            bytes: count,
            redirects,
        })
    }
}

/// The response headers and the Content-Type, with injected credentials redacted.
fn redacted_head(
    response: &reqwest::Response,
    redactor: &Redactor,
) -> (Vec<(String, String)>, Option<String>) {
    let text_of = |v: &HeaderValue| redactor.redact(&String::from_utf8_lossy(v.as_bytes()));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (redactor.redact(n.as_str()), text_of(v)))
        .collect();
    let content_type = response.headers().get(header::CONTENT_TYPE).map(text_of);
    (headers, content_type)
}

/// A body read whole as text with injected credentials redacted; a body cut at the size
/// limit loses a split character and a trailing start of a credential.
fn body_text(mut buf: Vec<u8>, truncated: bool, redactor: &Redactor) -> String {
    if truncated {
        // Drop a multi-byte character the cut split, so the tail stays comparable.
        if let Err(e) = std::str::from_utf8(&buf)
            && e.error_len().is_none()
        {
            buf.truncate(e.valid_up_to());
        }
    }
    let mut raw = String::from_utf8_lossy(&buf).into_owned();
    if truncated {
        redactor.trim_partial(&mut raw);
    }
    redactor.redact(&raw)
}

/// A request checked for sending: what every hop of it uses.
struct Outgoing<'a> {
    method: Method,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    /// The scope's host lists; a host must match each.
    narrow: Vec<Vec<HostPattern>>,
    injections: Vec<Prepared<'a>>,
    /// The URL of the next hop.
    url: Url,
}

/// What [`Egress::send_checked`] does with redirects and the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Follow redirects; render HTML as text, summarise binary bodies.
    Render,
    /// Return a redirect as it is; keep the body as sent.
    Raw,
}

/// An injection validated for one request.
struct Prepared<'a> {
    injection: &'a Injection,
    hosts: Vec<HostPattern>,
    header: Option<HeaderName>,
    redactor: Redactor,
}

impl<'a> Prepared<'a> {
    fn new(injection: &'a Injection) -> Result<Prepared<'a>, EgressError> {
        let hosts = patterns(&injection.hosts, "injection hosts").map_err(EgressError::Config)?;
        let header = match &injection.place {
            Place::Header { name, format } => {
                let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                    EgressError::Config(format!("invalid injection header name {name:?}"))
                })?;
                if forbidden_header(&name) {
                    return Err(EgressError::Config(format!(
                        "header {name} cannot carry a credential"
                    )));
                }
                if !format.contains("{}") {
                    return Err(EgressError::Config(
                        "injection format needs {} where the value goes".to_string(),
                    ));
                }
                Some(name)
            }
            Place::Query { name } if name.is_empty() => {
                return Err(EgressError::Config(
                    "injection query parameter needs a name".to_string(),
                ));
            }
            Place::Query { .. } => None,
        };
        Ok(Prepared {
            injection,
            hosts,
            header,
            redactor: Redactor::new([injection.value.expose().as_str()]),
        })
    }

    /// Adds the credential to this hop's URL or headers.
    fn apply(&self, url: &mut Url, headers: &mut HeaderMap) -> Result<(), EgressError> {
        let value = self.injection.value.expose();
        match (&self.injection.place, &self.header) {
            (Place::Header { format, .. }, Some(name)) => {
                let mut v =
                    HeaderValue::from_str(&format.replacen("{}", value, 1)).map_err(|_| {
                        EgressError::Config(format!("injected value is not valid in header {name}"))
                    })?;
                v.set_sensitive(true);
                headers.insert(name.clone(), v);
            }
            (Place::Query { name }, _) => {
                if url.query_pairs().any(|(k, _)| k == name.as_str()) {
                    let others: Vec<(String, String)> = url
                        .query_pairs()
                        .filter(|(k, _)| k != name.as_str())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    url.query_pairs_mut().clear().extend_pairs(others);
                }
                url.query_pairs_mut().append_pair(name, value);
            }
            (Place::Header { .. }, None) => {
                return Err(EgressError::Config("injection header missing".to_string()));
            }
        }
        Ok(())
    }
}

/// The scope's lists; a host must match every one of them.
fn scope_patterns(scope: &Scope) -> Result<Vec<Vec<HostPattern>>, EgressError> {
    [
        (&scope.allow_hosts, "the tool's allow_hosts"),
        (&scope.session_hosts, "the session's allow_hosts"),
    ]
    .into_iter()
    .filter_map(|(list, what)| list.as_ref().map(|h| (h, what)))
    .map(|(h, what)| patterns(h, what).map_err(EgressError::Config))
    .collect()
}

/// Parses with the WHATWG parser, which also normalises every IPv4 notation.
fn parse_url(s: &str) -> Result<Url, EgressError> {
    if s.len() > MAX_URL_BYTES {
        return Err(EgressError::InvalidUrl("url is too long".to_string()));
    }
    let mut url = Url::parse(s.trim()).map_err(|e| EgressError::InvalidUrl(e.to_string()))?;
    url.set_fragment(None);
    Ok(url)
}

fn parse_method(m: &str) -> Result<Method, EgressError> {
    Ok(match m.trim().to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        "OPTIONS" => Method::OPTIONS,
        _ => {
            let shown: String = m.chars().take(32).collect();
            return Err(EgressError::BadMethod(shown));
        }
    })
}

/// Headers that describe the connection or the framing, which only the client sets.
fn forbidden_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
    ) || name.as_str().starts_with("proxy-")
}

fn caller_headers(list: &[(String, String)]) -> Result<HeaderMap, EgressError> {
    if list.len() > MAX_HEADERS {
        return Err(EgressError::BadHeader(format!(
            "more than {MAX_HEADERS} headers"
        )));
    }
    let size: usize = list.iter().map(|(n, v)| n.len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        return Err(EgressError::BadHeader(format!(
            "headers larger than {MAX_HEADER_BYTES} bytes"
        )));
    }
    let mut map = HeaderMap::new();
    for (n, v) in list {
        let name = HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| EgressError::BadHeader(format!("invalid header name {n:?}")))?;
        if forbidden_header(&name) {
            return Err(EgressError::BadHeader(format!(
                "header {name} is not allowed"
            )));
        }
        let value = HeaderValue::from_str(v)
            .map_err(|_| EgressError::BadHeader(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

fn request_error(e: reqwest::Error, destination: &str) -> EgressError {
    let e = e.without_url();
    tracing::debug!(%destination, error = %e, "egress request failed");
    if e.is_timeout() {
        EgressError::Timeout
    } else if e.is_connect() {
        EgressError::Connect(format!("cannot connect to {destination}"))
    } else {
        EgressError::Protocol(format!("request to {destination} failed"))
    }
}
