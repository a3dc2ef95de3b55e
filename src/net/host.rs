//! Destination host normalization.
//!
//! Turns the host a guest names (CONNECT authority, absolute URI, TLS SNI, `Host` header) into the
//! one canonical form the policy and the dialer see: an IP address, or a lowercase A-label DNS
//! name without a trailing dot. IPv4 literals in the legacy forms every resolver still accepts
//! (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) become addresses here, so no later stage can
//! mistake them for names. This module does not resolve names and does not judge them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name we accept, in bytes (RFC 1035, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A normalized destination host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Lowercase A-label name, no trailing dot.
    Name(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host `{0}` is not a valid DNS name or IP address")]
    Invalid(String),
    #[error("host `{0}` ends in a number but is not a valid IPv4 address")]
    BadIpv4(String),
}

impl Host {
    /// Normalizes a host as written in an authority (IPv6 in brackets) or an SNI.
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        if let Some(inner) = raw.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| HostError::Invalid(raw.to_owned()))?;
            return parse_ipv6(inner).ok_or_else(|| HostError::Invalid(raw.to_owned()));
        }
        if raw.contains(':') {
            // Bare IPv6 (as in an SNI-less config value); zone ids are refused because they name
            // an interface of this machine, not a destination.
            return parse_ipv6(raw).ok_or_else(|| HostError::Invalid(raw.to_owned()));
        }
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        if trimmed.is_empty() {
            return Err(HostError::Empty);
        }
        let lower = trimmed.to_ascii_lowercase();
        if ends_in_number(&lower) {
            return parse_ipv4_lenient(&lower)
                .map(|v4| Host::Ip(IpAddr::V4(v4)))
                .ok_or_else(|| HostError::BadIpv4(raw.to_owned()));
        }
        let ascii =
            idna::domain_to_ascii(trimmed).map_err(|_| HostError::Invalid(raw.to_owned()))?;
        validate_name(&ascii).ok_or_else(|| HostError::Invalid(raw.to_owned()))?;
        // IDNA mapping can turn full-width digits into ASCII ones: check the number rule again.
        if ends_in_number(&ascii) {
            return parse_ipv4_lenient(&ascii)
                .map(|v4| Host::Ip(IpAddr::V4(v4)))
                .ok_or_else(|| HostError::BadIpv4(raw.to_owned()));
        }
        Ok(Host::Name(ascii))
    }

    pub fn as_name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
        }
    }
}

fn parse_ipv6(s: &str) -> Option<Host> {
    if s.contains('%') {
        return None;
    }
    s.parse::<Ipv6Addr>()
        .ok()
        .map(|v6| Host::Ip(IpAddr::V6(v6)))
}

fn validate_name(name: &str) -> Option<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return None;
        }
        // Underscore appears in real service names; anything else outside LDH is refused so a
        // name can never carry separators, wildcards or control bytes into logs or matching.
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    Some(())
}

/// The WHATWG URL "ends in a number" test: such hosts are IPv4 or invalid, never names.
fn ends_in_number(host: &str) -> bool {
    let mut parts: Vec<&str> = host.split('.').collect();
    if parts.last() == Some(&"") {
        if parts.len() == 1 {
            return false;
        }
        parts.pop();
    }
    let Some(last) = parts.last() else {
        return false;
    };
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    parse_ipv4_number(last).is_some()
}

/// Parses one IPv4 part: decimal, octal (leading 0) or hex (0x), as inet_aton does.
fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    // Leading zeros carry no value, however many there are (glibc's inet_aton agrees), so
    // `0x0000…7f000001` is 127.0.0.1, never a name.
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        // "0x" alone is zero in WHATWG's parser.
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Too large for u64 is too large for an address: saturate so the range check refuses it.
    Some(u64::from_str_radix(digits, radix).unwrap_or(u64::MAX))
}

/// WHATWG IPv4 parser: 1 to 4 parts, the last filling the remaining bytes.
fn parse_ipv4_lenient(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts
        .iter()
        .map(|p| parse_ipv4_number(p))
        .collect::<Option<_>>()?;
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let remaining_bytes = 4 - init.len() as u32;
    if *last >= 1u64 << (8 * remaining_bytes) {
        return None;
    }
    let mut value: u64 = *last;
    for (i, n) in init.iter().enumerate() {
        value += n << (8 * (3 - i as u32));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }
    fn name(s: &str) -> Host {
        Host::Name(s.to_owned())
    }

    #[test]
    fn normalizes_table() {
        let cases: &[(&str, &str, Result<Host, ()>)] = &[
            ("plain name", "example.com", Ok(name("example.com"))),
            ("uppercase", "API.Example.COM", Ok(name("api.example.com"))),
            ("one trailing dot", "example.com.", Ok(name("example.com"))),
            ("two trailing dots", "example.com..", Err(())),
            (
                "idn to a-label",
                "bücher.example",
                Ok(name("xn--bcher-kva.example")),
            ),
            (
                "fullwidth digits become ipv4",
                "１２７.０.０.１",
                Ok(ip("127.0.0.1")),
            ),
            ("dotted quad", "127.0.0.1", Ok(ip("127.0.0.1"))),
            ("decimal integer", "2130706433", Ok(ip("127.0.0.1"))),
            ("octal", "0177.0.0.1", Ok(ip("127.0.0.1"))),
            ("hex short", "0x7f.1", Ok(ip("127.0.0.1"))),
            ("short form", "127.1", Ok(ip("127.0.0.1"))),
            ("hex whole", "0x7f000001", Ok(ip("127.0.0.1"))),
            ("metadata short", "169.254.43518", Ok(ip("169.254.169.254"))),
            ("trailing dot ipv4", "10.0.0.1.", Ok(ip("10.0.0.1"))),
            ("ipv4 out of range", "256.0.0.1", Err(())),
            (
                "over-long hex with leading zeros",
                "0x00000000000000000000000000000000000000007f000001",
                Ok(ip("127.0.0.1")),
            ),
            (
                "over-long octal with leading zeros",
                "0000000000000000000000000000000000000000177.0.0.1",
                Ok(ip("127.0.0.1")),
            ),
            (
                "over-long hex part",
                "0x7f.0x00000000000000000000000000000000000000000000000001",
                Ok(ip("127.0.0.1")),
            ),
            (
                "hex too large is refused, not a name",
                "0x10000000000000000000000000000000000000000",
                Err(()),
            ),
            ("decimal too large", "99999999999999999999999999", Err(())),
            ("bad octal digit", "08.0.0.1", Err(())),
            ("too many parts", "1.2.3.4.5", Err(())),
            ("name ending in number", "foo.123", Err(())),
            ("bracketed v6", "[::1]", Ok(ip("::1"))),
            (
                "mapped v6",
                "[::ffff:127.0.0.1]",
                Ok(ip("::ffff:127.0.0.1")),
            ),
            ("zone id refused", "[fe80::1%eth0]", Err(())),
            ("unclosed bracket", "[::1", Err(())),
            ("empty", "", Err(())),
            ("only dot", ".", Err(())),
            ("space", "exa mple.com", Err(())),
            ("wildcard char", "*.example.com", Err(())),
            ("slash", "a/b.com", Err(())),
            ("empty label", "a..b.com", Err(())),
            (
                "underscore ok",
                "_svc.example.com",
                Ok(name("_svc.example.com")),
            ),
            ("localhost", "localhost", Ok(name("localhost"))),
        ];
        for (case, input, want) in cases {
            let got = Host::parse(input).map_err(|_| ());
            assert_eq!(&got, want, "case `{case}` ({input})");
        }
    }

    #[test]
    fn display_brackets_v6() {
        assert_eq!(ip("::1").to_string(), "[::1]");
        assert_eq!(name("a.b").to_string(), "a.b");
    }
}
