//! The configuration of the egress layer and the host patterns its allowlists hold.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

/// Everything the egress layer needs, fully resolved by the caller (the Gate).
///
/// Host entries are `"host"` (any port) or `"host:port"`; `"*.example.com"` matches every
/// subdomain of example.com (not example.com itself). IPv6 hosts are written in brackets
/// (`"[::1]:8080"`). Hosts are normalised like URL hosts, so `"2130706433"` means
/// `127.0.0.1`.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    /// Hosts a request may go to at all.
    pub allow_hosts: Vec<String>,
    /// `host:port` entries that may resolve to private or otherwise blocked addresses
    /// (local services such as Ollama); the port is required.
    pub allow_private: Vec<String>,
    /// Hosts that may be reached over plain http; all others need https.
    pub allow_http: Vec<String>,
    /// Extra address ranges (CIDR strings) that are never reachable, not even through
    /// `allow_private`.
    pub deny_ranges: Vec<String>,
    /// How many redirects one request may follow.
    pub max_redirects: u32,
    /// Deadline for a whole request: resolution, redirects and reading the body.
    pub timeout: Duration,
    /// Deadline for establishing one connection.
    pub connect_timeout: Duration,
    /// Response bodies are cut after this many bytes and marked truncated.
    pub max_response_bytes: u64,
    /// The User-Agent header of every request.
    pub user_agent: String,
    /// Request bodies larger than this are refused.
    pub max_request_bytes: u64,
}

impl Default for EgressConfig {
    /// Nothing allowed, five redirects, 30 s per request, 10 s to connect, 2 MiB of
    /// response, 1 MiB of request body.
    fn default() -> EgressConfig {
        EgressConfig {
            allow_hosts: Vec::new(),
            allow_private: Vec::new(),
            allow_http: Vec::new(),
            deny_ranges: Vec::new(),
            max_redirects: 5,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 2 * 1024 * 1024,
            user_agent: concat!("carapace/", env!("CARGO_PKG_VERSION")).to_string(),
            max_request_bytes: 1024 * 1024,
        }
    }
}

/// A URL host in the form the allowlists compare: a lowercase domain without a trailing
/// dot, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostKey {
    Domain(String),
    Ip(IpAddr),
}

impl HostKey {
    pub(crate) fn of(url: &Url) -> Option<HostKey> {
        Some(match url.host()? {
            Host::Domain(d) => HostKey::Domain(strip_dot(d).to_string()),
            Host::Ipv4(a) => HostKey::Ip(IpAddr::V4(a)),
            Host::Ipv6(a) => HostKey::Ip(IpAddr::V6(a)),
        })
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKey::Domain(d) => f.write_str(d),
            HostKey::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            HostKey::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

fn strip_dot(d: &str) -> &str {
    d.strip_suffix('.').unwrap_or(d)
}

/// One allowlist entry: a host or a wildcard for its subdomains, with an optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostPattern {
    host: HostKey,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses `host`, `host:port`, `*.domain`, `*.domain:port`, `[v6]:port` or a bare v6.
    pub(crate) fn parse(entry: &str) -> Result<HostPattern, String> {
        let s = entry.trim();
        let (wildcard, s) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{entry:?} has an unclosed bracket"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{entry:?} is not host or host:port"))?,
                ),
            };
            (format!("[{v6}]"), port)
        } else if s.matches(':').count() > 1 {
            (format!("[{s}]"), None)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (s.to_string(), None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0))
            .map(|p| p.ok_or_else(|| format!("{entry:?} has an invalid port")))
            .transpose()?;
        if host.is_empty() || host.contains(['/', '@', '?', '#', '*']) {
            return Err(format!("{entry:?} is not a host"));
        }
        let host = match Host::parse(&host).map_err(|_| format!("{entry:?} is not a host"))? {
            Host::Domain(d) => HostKey::Domain(strip_dot(&d).to_string()),
            Host::Ipv4(a) if !wildcard => HostKey::Ip(IpAddr::V4(a)),
            Host::Ipv6(a) if !wildcard => HostKey::Ip(IpAddr::V6(a)),
            _ => return Err(format!("{entry:?}: a wildcard needs a domain")),
        };
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    pub(crate) fn has_port(&self) -> bool {
        self.port.is_some()
    }

    pub(crate) fn matches(&self, host: &HostKey, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match (&self.host, host) {
            (HostKey::Domain(pat), HostKey::Domain(h)) if self.wildcard => h
                .strip_suffix(pat.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            (p, h) => p == h,
        }
    }
}

/// Parses a list of entries; `what` names the list in the error.
pub(crate) fn patterns(entries: &[String], what: &str) -> Result<Vec<HostPattern>, String> {
    entries
        .iter()
        .map(|e| HostPattern::parse(e).map_err(|m| format!("{what}: {m}")))
        .collect()
}

pub(crate) fn any_match(patterns: &[HostPattern], host: &HostKey, port: u16) -> bool {
    patterns.iter().any(|p| p.matches(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cases` are (url, expected match).
    fn check(entry: &str, cases: &[(&str, bool)]) {
        let pattern = HostPattern::parse(entry).unwrap();
        for (url, expected) in cases {
            let url = Url::parse(url).unwrap();
            let host = HostKey::of(&url).unwrap();
            let port = url.port_or_known_default().unwrap();
            assert_eq!(pattern.matches(&host, port), *expected, "{entry} vs {url}");
        }
    }

    #[test]
    fn host_patterns() {
        check(
            "api.github.com",
            &[
                ("https://api.github.com/x", true),
                ("http://API.GitHub.com:8080/", true),
                ("https://api.github.com./", true),
                ("https://github.com/", false),
                ("https://evil-api.github.com/", false),
                ("https://api.github.com.evil.com/", false),
            ],
        );
        check(
            "127.0.0.1:11434",
            &[
                ("http://127.0.0.1:11434/", true),
                ("http://2130706433:11434/", true),
                ("http://0x7f000001:11434/", true),
                ("http://127.1:11434/", true),
                ("http://127.0.0.1:11435/", false),
                ("http://127.0.0.1/", false),
            ],
        );
        check(
            "2130706433",
            &[("http://127.0.0.1:1/", true), ("http://127.0.0.2/", false)],
        );
        check(
            "*.example.com",
            &[
                ("https://a.example.com/", true),
                ("https://a.b.example.com:444/", true),
                ("https://example.com/", false),
                ("https://badexample.com/", false),
                ("https://.example.com/", false),
            ],
        );
        check(
            "*.example.com:443",
            &[
                ("https://a.example.com/", true),
                ("http://a.example.com/", false),
            ],
        );
        check(
            "[::1]:8080",
            &[("http://[::1]:8080/", true), ("http://[::1]:8081/", false)],
        );
        check(
            "::ffff:127.0.0.1",
            &[
                ("http://[::ffff:7f00:1]:1/", true),
                ("http://127.0.0.1:1/", false),
            ],
        );
        check(
            "bücher.example",
            &[("https://xn--bcher-kva.example/", true)],
        );
    }

    #[test]
    fn bad_patterns() {
        for entry in [
            "",
            "*",
            "*.",
            "*.127.0.0.1",
            "host:0",
            "host:99999",
            "host:x",
            "user@host",
            "host/path",
            "[::1",
            "[::1]x",
            "a.*.com",
        ] {
            assert!(HostPattern::parse(entry).is_err(), "{entry:?}");
        }
    }
}
