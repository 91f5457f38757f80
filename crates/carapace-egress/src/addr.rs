//! Which addresses a request may connect to: the built-in blocklist (everything that is
//! not a public unicast address) and the configured `deny_ranges`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range in CIDR notation, IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    const fn v4(a: [u8; 4], len: u8) -> Cidr {
        Cidr::V4(u32::from_be_bytes(a), len)
    }

    const fn v6(a: [u16; 8], len: u8) -> Cidr {
        let mut n: u128 = 0;
        let mut i = 0;
        while i < 8 {
            n = (n << 16) | a[i] as u128;
            i += 1;
        }
        Cidr::V6(n, len)
    }

    /// Parses `10.0.0.0/8`, `fc00::/7` or a bare address (a single-address range).
    pub(crate) fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address range"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(match ip {
            IpAddr::V4(a) => Cidr::V4(u32::from(a) & mask32(len), len),
            IpAddr::V6(a) => Cidr::V6(u128::from(a) & mask128(len), len),
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4(net, len), IpAddr::V4(a)) => u32::from(a) & mask32(len) == net,
            (Cidr::V6(net, len), IpAddr::V6(a)) => u128::from(a) & mask128(len) == net,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4(n, len) => write!(f, "{}/{len}", Ipv4Addr::from(n)),
            Cidr::V6(n, len) => write!(f, "{}/{len}", Ipv6Addr::from(n)),
        }
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// IPv4 ranges that are never reachable without `allow_private`. Order matters where
/// ranges nest: the first match names the range.
const V4_BLOCKED: &[(Cidr, &str)] = &[
    (Cidr::v4([0, 0, 0, 0], 8), "unspecified 0.0.0.0/8"),
    (Cidr::v4([10, 0, 0, 0], 8), "private 10.0.0.0/8"),
    (
        Cidr::v4([100, 64, 0, 0], 10),
        "shared address space 100.64.0.0/10",
    ),
    (Cidr::v4([127, 0, 0, 0], 8), "loopback 127.0.0.0/8"),
    (Cidr::v4([169, 254, 0, 0], 16), "link-local 169.254.0.0/16"),
    (Cidr::v4([172, 16, 0, 0], 12), "private 172.16.0.0/12"),
    (
        Cidr::v4([192, 0, 0, 0], 24),
        "ietf protocol assignments 192.0.0.0/24",
    ),
    (Cidr::v4([192, 0, 2, 0], 24), "documentation 192.0.2.0/24"),
    (
        Cidr::v4([192, 88, 99, 0], 24),
        "6to4 relay anycast 192.88.99.0/24",
    ),
    (Cidr::v4([192, 168, 0, 0], 16), "private 192.168.0.0/16"),
    (Cidr::v4([198, 18, 0, 0], 15), "benchmarking 198.18.0.0/15"),
    (
        Cidr::v4([198, 51, 100, 0], 24),
        "documentation 198.51.100.0/24",
    ),
    (
        Cidr::v4([203, 0, 113, 0], 24),
        "documentation 203.0.113.0/24",
    ),
    (Cidr::v4([224, 0, 0, 0], 4), "multicast 224.0.0.0/4"),
    (
        Cidr::v4([255, 255, 255, 255], 32),
        "broadcast 255.255.255.255",
    ),
    (Cidr::v4([240, 0, 0, 0], 4), "reserved 240.0.0.0/4"),
];

/// IPv6 ranges blocked outright (after the ones that embed an IPv4 address).
const V6_BLOCKED: &[(Cidr, &str)] = &[
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified ::"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback ::1"),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "ipv4-compatible ::/96",
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use nat64 64:ff9b:1::/48",
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique-local fc00::/7",
    ),
    (
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local fe80::/10",
    ),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local fec0::/10",
    ),
    (
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "multicast ff00::/8",
    ),
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
        "teredo 2001::/32",
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation 2001:db8::/32",
    ),
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "ietf protocol assignments 2001::/23",
    ),
    (
        Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation 3fff::/20",
    ),
];

const V4_MAPPED: Cidr = Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const NAT64: Cidr = Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Cidr = Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const GLOBAL_UNICAST: Cidr = Cidr::v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// The IPv4 address an IPv6 address carries and the name of the form, for the forms
/// that reach that IPv4 host: IPv4-mapped, NAT64 (well-known prefix) and 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let n = u128::from(ip);
    let v6 = IpAddr::V6(ip);
    if V4_MAPPED.contains(v6) {
        Some((Ipv4Addr::from(n as u32), "ipv4-mapped ::ffff:0:0/96"))
    } else if NAT64.contains(v6) {
        Some((Ipv4Addr::from(n as u32), "nat64 64:ff9b::/96"))
    } else if SIX_TO_FOUR.contains(v6) {
        Some((Ipv4Addr::from((n >> 80) as u32), "6to4 2002::/16"))
    } else {
        None
    }
}

/// The built-in blocked range `ip` falls in, named for the error message, or `None` for
/// a public unicast address.
pub(crate) fn builtin_block(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(a) => v4_block(a).map(str::to_string),
        IpAddr::V6(a) => {
            if let Some((v4, form)) = embedded_v4(a) {
                return v4_block(v4).map(|inner| format!("{form} embedding {inner}"));
            }
            if let Some((_, name)) = V6_BLOCKED.iter().find(|(c, _)| c.contains(ip)) {
                return Some((*name).to_string());
            }
            if !GLOBAL_UNICAST.contains(ip) {
                return Some("reserved ipv6 outside 2000::/3".to_string());
            }
            None
        }
    }
}

fn v4_block(a: Ipv4Addr) -> Option<&'static str> {
    V4_BLOCKED
        .iter()
        .find(|(c, _)| c.contains(IpAddr::V4(a)))
        .map(|(_, name)| *name)
}

/// The configured range that denies `ip` (directly or through an embedded IPv4 address).
pub(crate) fn denied_by(ranges: &[Cidr], ip: IpAddr) -> Option<String> {
    let embedded = match ip {
        IpAddr::V6(a) => embedded_v4(a).map(|(v4, _)| IpAddr::V4(v4)),
        IpAddr::V4(_) => None,
    };
    ranges
        .iter()
        .find(|r| r.contains(ip) || embedded.is_some_and(|e| r.contains(e)))
        .map(|r| format!("denied range {r}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expected` is the range name, or "" for an address that must be reachable.
    fn check(ip: &str, expected: &str) {
        let ip: IpAddr = ip.parse().unwrap();
        let got = builtin_block(ip).unwrap_or_default();
        assert_eq!(got, expected, "{ip}");
    }

    #[test]
    fn ipv4_ranges() {
        check("127.0.0.1", "loopback 127.0.0.0/8");
        check("127.255.255.254", "loopback 127.0.0.0/8");
        check("0.0.0.0", "unspecified 0.0.0.0/8");
        check("10.1.2.3", "private 10.0.0.0/8");
        check("172.16.0.1", "private 172.16.0.0/12");
        check("172.31.255.255", "private 172.16.0.0/12");
        check("172.32.0.1", "");
        check("192.168.1.1", "private 192.168.0.0/16");
        check("169.254.169.254", "link-local 169.254.0.0/16");
        check("100.64.0.1", "shared address space 100.64.0.0/10");
        check("100.127.255.255", "shared address space 100.64.0.0/10");
        check("100.128.0.1", "");
        check("192.0.0.8", "ietf protocol assignments 192.0.0.0/24");
        check("192.0.2.1", "documentation 192.0.2.0/24");
        check("198.18.0.1", "benchmarking 198.18.0.0/15");
        check("198.19.255.1", "benchmarking 198.18.0.0/15");
        check("198.51.100.7", "documentation 198.51.100.0/24");
        check("203.0.113.9", "documentation 203.0.113.0/24");
        check("224.0.0.1", "multicast 224.0.0.0/4");
        check("239.255.255.250", "multicast 224.0.0.0/4");
        check("240.0.0.1", "reserved 240.0.0.0/4");
        check("255.255.255.255", "broadcast 255.255.255.255");
        check("93.184.216.34", "");
        check("8.8.8.8", "");
        check("1.1.1.1", "");
    }

    #[test]
    fn ipv6_ranges() {
        check("::", "unspecified ::");
        check("::1", "loopback ::1");
        check("::7f00:1", "ipv4-compatible ::/96");
        check("::8.8.8.8", "ipv4-compatible ::/96");
        check(
            "::ffff:127.0.0.1",
            "ipv4-mapped ::ffff:0:0/96 embedding loopback 127.0.0.0/8",
        );
        check(
            "::ffff:169.254.169.254",
            "ipv4-mapped ::ffff:0:0/96 embedding link-local 169.254.0.0/16",
        );
        check("::ffff:8.8.8.8", "");
        check(
            "64:ff9b::7f00:1",
            "nat64 64:ff9b::/96 embedding loopback 127.0.0.0/8",
        );
        check(
            "64:ff9b::a00:1",
            "nat64 64:ff9b::/96 embedding private 10.0.0.0/8",
        );
        check("64:ff9b::808:808", "");
        check("64:ff9b:1::1", "local-use nat64 64:ff9b:1::/48");
        check(
            "2002:7f00:1::1",
            "6to4 2002::/16 embedding loopback 127.0.0.0/8",
        );
        check(
            "2002:c0a8:101::",
            "6to4 2002::/16 embedding private 192.168.0.0/16",
        );
        check("2002:808:808::1", "");
        check("2001::1", "teredo 2001::/32");
        check("2001:0:4136:e378::1", "teredo 2001::/32");
        check("2001:db8::1", "documentation 2001:db8::/32");
        check("2001:10::1", "ietf protocol assignments 2001::/23");
        check("3fff::1", "documentation 3fff::/20");
        check("fc00::1", "unique-local fc00::/7");
        check("fd12:3456::1", "unique-local fc00::/7");
        check("fe80::1", "link-local fe80::/10");
        check("febf::1", "link-local fe80::/10");
        check("fec0::1", "site-local fec0::/10");
        check("ff02::1", "multicast ff00::/8");
        check("100::1", "reserved ipv6 outside 2000::/3");
        check("::ffff:0:7f00:1", "reserved ipv6 outside 2000::/3");
        check("2606:2800:220:1:248:1893:25c8:1946", "");
        check("2a00:1450:4001:82a::200e", "");
    }

    #[test]
    fn deny_ranges() {
        let ranges = [
            Cidr::parse("93.184.0.0/16").unwrap(),
            Cidr::parse("2606:2800::/32").unwrap(),
            Cidr::parse("1.1.1.1").unwrap(),
        ];
        let denied = |s: &str| denied_by(&ranges, s.parse().unwrap()).unwrap_or_default();
        assert_eq!(denied("93.184.216.34"), "denied range 93.184.0.0/16");
        assert_eq!(denied("::ffff:93.184.216.34"), "denied range 93.184.0.0/16");
        assert_eq!(denied("64:ff9b::5db8:d822"), "denied range 93.184.0.0/16");
        assert_eq!(denied("2606:2800:220::1"), "denied range 2606:2800::/32");
        assert_eq!(denied("1.1.1.1"), "denied range 1.1.1.1/32");
        assert_eq!(denied("1.1.1.2"), "");
        assert_eq!(denied("8.8.8.8"), "");
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com/8").is_err());
        assert!(Cidr::parse("::/129").is_err());
    }
}
