//! `[egress]`: which hosts the network tools may reach, and how.
//!
//! Deny by default: with an empty `allow_hosts`, `web_fetch` and `http_request` reach
//! nothing. Private addresses (loopback, LAN, link-local, ...) are reachable only when a
//! `host:port` is listed in `allow_private`, and plain HTTP only for `allow_http`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Locator;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSection {
    /// Hosts the egress tools may reach: `host`, `host:port` or `*.domain`.
    pub allow_hosts: Spanned<Vec<String>>,
    /// Private addresses allowed, as `host:port` (for local services such as Ollama).
    pub allow_private: Spanned<Vec<String>>,
    /// Plain HTTP allowed, as `host:port`.
    pub allow_http: Spanned<Vec<String>>,
    /// More address ranges to refuse, as CIDR (`203.0.113.0/24`, `2001:db8::/32`).
    pub deny_ranges: Spanned<Vec<String>>,
    pub max_redirects: Spanned<u64>,
    pub timeout_secs: Spanned<u64>,
    pub max_response_bytes: Spanned<u64>,
    /// Per network tool, a narrower host list (`[egress.tools.web_fetch]`).
    pub tools: BTreeMap<Spanned<String>, ToolEgress>,
}

/// One network tool's own host list: within `allow_hosts`, never wider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolEgress {
    pub allow_hosts: Spanned<Vec<String>>,
}

/// The tools `[egress.tools.*]` may name.
const NETWORK_TOOLS: &[&str] = &["web_fetch", "http_request"];

impl Default for EgressSection {
    fn default() -> Self {
        let empty = || Spanned::new(0..0, Vec::new());
        EgressSection {
            allow_hosts: empty(),
            allow_private: empty(),
            allow_http: empty(),
            deny_ranges: empty(),
            max_redirects: Spanned::new(0..0, 5),
            timeout_secs: Spanned::new(0..0, 30),
            max_response_bytes: Spanned::new(0..0, 2 << 20),
            tools: BTreeMap::new(),
        }
    }
}

/// Checks `host`, `host:port`, `[v6]:port` or `*.domain`; `need_port` for entries that
/// must name one service.
pub fn check_host_entry(entry: &str, need_port: bool) -> Result<(), String> {
    if let Some((_, rest)) = entry.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        return Err(format!(
            "`{entry}`: write the host without scheme or path, like `{host}`"
        ));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Err(format!("`{entry}`: unclosed `[`"));
        };
        (h, after.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(format!("`{entry}`: write IPv6 addresses as [addr]:port")),
            None => (entry, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("`{entry}`: `{p}` is not a port"));
    }
    if need_port && port.is_none() {
        return Err(format!("`{entry}` must name a port, like {entry}:11434"));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !(valid_name || host.parse::<IpAddr>().is_ok()) {
        return Err(format!("`{entry}` is not a host name or address"));
    }
    Ok(())
}

/// Checks a CIDR range like `10.0.0.0/8` or `fd00::/8`.
pub fn check_cidr(range: &str) -> Result<(), String> {
    let Some((addr, len)) = range.split_once('/') else {
        return Err(format!("`{range}` is not a CIDR range like 203.0.113.0/24"));
    };
    let max = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => 32,
        Ok(IpAddr::V6(_)) => 128,
        Err(_) => return Err(format!("`{range}`: `{addr}` is not an IP address")),
    };
    match len.parse::<u8>() {
        Ok(l) if l <= max => Ok(()),
        _ => Err(format!("`{range}`: prefix length must be 0..={max}")),
    }
}

impl EgressSection {
    pub fn validate(&self, at: &Locator) -> anyhow::Result<()> {
        let lists = [
            (&self.allow_hosts, "egress.allow_hosts", false),
            (&self.allow_private, "egress.allow_private", true),
            (&self.allow_http, "egress.allow_http", true),
        ];
        for (list, key, need_port) in lists {
            for entry in list.get_ref() {
                if let Err(problem) = check_host_entry(entry, need_port) {
                    return Err(at.span(list.span(), key, problem));
                }
            }
        }
        for (tool, own) in &self.tools {
            if !NETWORK_TOOLS.contains(&tool.get_ref().as_str()) {
                return Err(at.span(
                    tool.span(),
                    &format!("egress.tools.{}", tool.get_ref()),
                    format!(
                        "not a network tool; [egress.tools.*] is for {}",
                        NETWORK_TOOLS.join(" and ")
                    ),
                ));
            }
            let key = format!("egress.tools.{}.allow_hosts", tool.get_ref());
            for entry in own.allow_hosts.get_ref() {
                if let Err(problem) = check_host_entry(entry, false) {
                    return Err(at.span(own.allow_hosts.span(), &key, problem));
                }
            }
        }
        for range in self.deny_ranges.get_ref() {
            if let Err(problem) = check_cidr(range) {
                return Err(at.span(self.deny_ranges.span(), "egress.deny_ranges", problem));
            }
        }
        let ranges = [
            (&self.max_redirects, "egress.max_redirects", 0, 20),
            (&self.timeout_secs, "egress.timeout_secs", 1, 3600),
            (
                &self.max_response_bytes,
                "egress.max_response_bytes",
                1024,
                256 << 20,
            ),
        ];
        for (v, key, min, max) in ranges {
            if !(min..=max).contains(v.get_ref()) {
                return Err(at.span(
                    v.span(),
                    key,
                    format!("{} is out of range {min}..={max}", v.get_ref()),
                ));
            }
        }
        Ok(())
    }

    /// Each network tool's narrower host list.
    pub fn tool_hosts(&self) -> HashMap<String, Vec<String>> {
        self.tools
            .iter()
            .map(|(tool, own)| (tool.get_ref().clone(), own.allow_hosts.get_ref().clone()))
            .collect()
    }

    /// The egress client's configuration.
    pub fn to_config(&self) -> carapace_gate::EgressConfig {
        carapace_gate::EgressConfig {
            allow_hosts: self.allow_hosts.get_ref().clone(),
            allow_private: self.allow_private.get_ref().clone(),
            allow_http: self.allow_http.get_ref().clone(),
            deny_ranges: self.deny_ranges.get_ref().clone(),
            max_redirects: *self.max_redirects.get_ref() as u32,
            timeout: Duration::from_secs(*self.timeout_secs.get_ref()),
            max_response_bytes: *self.max_response_bytes.get_ref(),
            ..carapace_gate::EgressConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_entries() {
        for ok in [
            "api.github.com",
            "127.0.0.1:11434",
            "*.example.com",
            "[::1]:8080",
            "localhost:1",
        ] {
            check_host_entry(ok, false).unwrap();
        }
        for bad in [
            "",
            "http://x.com",
            "x.com:0",
            "x.com:99999",
            "::1:80",
            "a..b",
            "[::1",
        ] {
            assert!(check_host_entry(bad, false).is_err(), "{bad} was accepted");
        }
        assert!(check_host_entry("127.0.0.1", true).is_err());
    }

    #[test]
    fn cidr_ranges() {
        check_cidr("10.0.0.0/8").unwrap();
        check_cidr("fd00::/8").unwrap();
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129"] {
            assert!(check_cidr(bad).is_err(), "{bad} was accepted");
        }
    }
}
