//! Why a request was refused or failed. Every message is safe to show the model: it names
//! the destination and the rule, never a secret or an internal detail.

/// Why a request was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The URL (or a redirect target) could not be parsed or has a forbidden part.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The scheme is not http(s), or plain http is not allowed for this host and port.
    #[error("scheme {scheme} is not allowed for {host}")]
    SchemeNotAllowed {
        /// The scheme of the refused URL.
        scheme: String,
        /// The host (and port) the URL pointed at.
        host: String,
    },
    /// The host is not on the allowlist (of the configuration or of the request's scope).
    #[error("host {host} is not allowed")]
    HostNotAllowed {
        /// The refused host.
        host: String,
    },
    /// A tunnel (CONNECT) to a port other than 443 or 80 that no allowlist entry names:
    /// an entry without a port stands for web traffic, not every service of the host.
    #[error(
        "port {port} of {host} is not named in any allowlist entry (an entry without a port allows 443, and 80 with allow_http)"
    )]
    PortNotNamed {
        /// The host of the tunnel.
        host: String,
        /// The port no entry names.
        port: u16,
    },
    /// The host resolved to an address the egress layer will not connect to.
    #[error("address {addr} of {host} is blocked ({range})")]
    AddressBlocked {
        /// The host that resolved to the address.
        host: String,
        /// The blocked address.
        addr: String,
        /// The range that blocks it.
        range: String,
    },
    /// The request followed more redirects than allowed.
    #[error("more than {0} redirects")]
    TooManyRedirects(u32),
    /// The request did not finish in time.
    #[error("request timed out")]
    Timeout,
    /// The request body is larger than allowed.
    #[error("request body is too large")]
    TooLarge,
    /// The destination could not be resolved or connected to.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The exchange failed after connecting, or a redirect was refused.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A caller-provided header is forbidden, malformed or too large.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The HTTP method is not one the egress layer sends.
    #[error("method {0} is not allowed")]
    BadMethod(String),
    /// The configuration (or a scope or injection) is invalid.
    #[error("invalid egress configuration: {0}")]
    Config(String),
}

impl EgressError {
    /// A stable snake_case code for the error kind.
    pub fn code(&self) -> &'static str {
        match self {
            EgressError::InvalidUrl(_) => "invalid_url",
            EgressError::SchemeNotAllowed { .. } => "scheme_not_allowed",
            EgressError::HostNotAllowed { .. } => "host_not_allowed",
            EgressError::PortNotNamed { .. } => "port_not_named",
            EgressError::AddressBlocked { .. } => "address_blocked",
            EgressError::TooManyRedirects(_) => "too_many_redirects",
            EgressError::Timeout => "timeout",
            EgressError::TooLarge => "too_large",
            EgressError::Connect(_) => "connect_failed",
            EgressError::Protocol(_) => "protocol_error",
            EgressError::BadHeader(_) => "bad_header",
            EgressError::BadMethod(_) => "bad_method",
            EgressError::Config(_) => "config_invalid",
        }
    }

    /// True when trying the same request again later may succeed.
    pub fn retriable(&self) -> bool {
        matches!(self, EgressError::Timeout | EgressError::Connect(_))
    }

    /// The same error with `f` applied to every text it carries (to redact secrets a
    /// server may have put into a redirect target).
    pub(crate) fn map_text(self, f: impl Fn(&str) -> String) -> EgressError {
        match self {
            EgressError::InvalidUrl(s) => EgressError::InvalidUrl(f(&s)),
            EgressError::SchemeNotAllowed { scheme, host } => EgressError::SchemeNotAllowed {
                scheme: f(&scheme),
                host: f(&host),
            },
            EgressError::HostNotAllowed { host } => EgressError::HostNotAllowed { host: f(&host) },
            EgressError::PortNotNamed { host, port } => EgressError::PortNotNamed {
                host: f(&host),
                port,
            },
            EgressError::AddressBlocked { host, addr, range } => EgressError::AddressBlocked {
                host: f(&host),
                addr,
                range,
            },
            EgressError::Connect(s) => EgressError::Connect(f(&s)),
            EgressError::Protocol(s) => EgressError::Protocol(f(&s)),
            EgressError::BadHeader(s) => EgressError::BadHeader(f(&s)),
            EgressError::BadMethod(s) => EgressError::BadMethod(f(&s)),
            EgressError::Config(s) => EgressError::Config(f(&s)),
            e @ (EgressError::TooManyRedirects(_)
            | EgressError::Timeout
            | EgressError::TooLarge) => e,
        }
    }
}
