//! Destination host patterns: an exact name, `*.suffix`, or an IP literal, and how specific
//! each is. Matching is on normalized hosts ([`Host`]); this module resolves nothing.

use std::fmt;
use std::net::IpAddr;

use crate::net::host::Host;

/// A destination host pattern from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this normalized name.
    Exact(String),
    /// `*.suffix`: any name strictly below `suffix`, at any depth.
    Subdomains(String),
    /// An IP-literal destination; matched as an address, never as a name.
    Ip(IpAddr),
}

impl HostPattern {
    /// Parses `example.com`, `*.example.com`, `10.0.0.1`, `[::1]` or `::1`.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        if let Some(suffix) = raw.strip_prefix("*.") {
            return match Host::parse(suffix) {
                Ok(Host::Name(n)) => Ok(HostPattern::Subdomains(n)),
                Ok(Host::Ip(_)) => Err(format!(
                    "`{raw}`: a wildcard needs a DNS suffix, not an address"
                )),
                Err(e) => Err(e.to_string()),
            };
        }
        if raw.contains('*') {
            return Err(format!(
                "`{raw}`: only a leading `*.` wildcard is supported (use default_rung for a catch-all)"
            ));
        }
        match Host::parse(raw) {
            Ok(Host::Name(n)) => Ok(HostPattern::Exact(n)),
            Ok(Host::Ip(ip)) => Ok(HostPattern::Ip(ip)),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(p), Host::Name(n)) => p == n,
            (HostPattern::Subdomains(s), Host::Name(n)) => {
                n.len() > s.len() + 1
                    && n.ends_with(s.as_str())
                    && n.as_bytes()[n.len() - s.len() - 1] == b'.'
            }
            (HostPattern::Ip(p), Host::Ip(ip)) => p == ip,
            _ => false,
        }
    }

    /// Higher is more specific; exact beats any wildcard, longer suffix beats shorter.
    pub(super) fn specificity(&self) -> usize {
        match self {
            HostPattern::Exact(_) | HostPattern::Ip(_) => usize::MAX,
            HostPattern::Subdomains(s) => s.split('.').count(),
        }
    }

    /// True when the pattern names finitely many hosts (no wildcard).
    pub fn is_exact(&self) -> bool {
        !matches!(self, HostPattern::Subdomains(_))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}
