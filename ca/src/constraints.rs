//! X.509 name constraints: the names a deployment CA may vouch for.
//!
//! Parses operator input ([`PermittedName`]), turns it into rcgen subtrees for a new CA, reads
//! the constraints back out of any CA certificate (generated or brought), and answers "would a
//! verifying client accept a leaf for this name?" and "does this CA cover that whole subtree?"
//! with the RFC 5280 semantics that webpki, OpenSSL and Go implement. It does not mint anything.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::error::CaError;

/// One permitted subtree of a name-constrained CA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PermittedName {
    /// A DNS subtree. `example.com` permits that name and every name below it; a leading dot
    /// (`.example.com`, also accepted as `*.example.com`) permits only the names below it.
    Dns(String),
    /// An IP range; a bare address is a /32 or /128.
    Ip(IpNet),
}

impl PermittedName {
    /// Whether a leaf for `name` (a normalized DNS name or an IP literal) falls in this subtree.
    pub fn matches(&self, name: &str) -> bool {
        match (self, LeafName::parse(name)) {
            (PermittedName::Dns(base), Some(LeafName::Dns(n))) => dns_matches(base, n),
            (PermittedName::Ip(net), Some(LeafName::Ip(ip))) => net.contains(&ip),
            _ => false,
        }
    }

    fn to_subtree(&self) -> GeneralSubtree {
        match self {
            PermittedName::Dns(base) => GeneralSubtree::DnsName(base.clone()),
            PermittedName::Ip(net) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                net.network(),
                net.prefix_len(),
            )),
        }
    }
}

impl fmt::Display for PermittedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PermittedName::Dns(base) => f.write_str(base),
            PermittedName::Ip(net) => write!(f, "{net}"),
        }
    }
}

impl FromStr for PermittedName {
    type Err = CaError;

    /// Accepts `example.com`, `*.example.com` / `.example.com`, `10.0.0.0/8`, `192.0.2.7`,
    /// `2001:db8::/32`. DNS names are lowercased and lose a trailing dot.
    fn from_str(value: &str) -> Result<Self, CaError> {
        let bad = |detail: &str| CaError::BadConstraint {
            value: value.to_owned(),
            detail: detail.to_owned(),
        };
        let trimmed = value.trim();
        if trimmed.contains('/') {
            let net: IpNet = trimmed
                .parse()
                .map_err(|_| bad("not a CIDR range such as 10.0.0.0/8"))?;
            // The constraint is the network, not the host bits someone typed after it.
            return Ok(PermittedName::Ip(net.trunc()));
        }
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return Ok(PermittedName::Ip(IpNet::from(ip)));
        }
        let lowered = trimmed.to_ascii_lowercase();
        let lowered = lowered.strip_suffix('.').unwrap_or(&lowered);
        let (subdomains_only, base) = match lowered.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => match lowered.strip_prefix('.') {
                Some(rest) => (true, rest),
                None => (false, lowered),
            },
        };
        if base.is_empty() {
            return Err(bad("empty DNS name"));
        }
        if base.contains('*') {
            return Err(bad(
                "a wildcard is only allowed as the whole first label (*.example.com)",
            ));
        }
        if rustls_pki_types::DnsName::try_from(base).is_err() {
            return Err(bad(
                "not a valid DNS name (use the punycode A-label form for IDNs)",
            ));
        }
        Ok(PermittedName::Dns(if subdomains_only {
            format!(".{base}")
        } else {
            base.to_owned()
        }))
    }
}

/// A leaf name, as the verifier sees it in the SAN.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LeafName<'a> {
    Dns(&'a str),
    Ip(IpAddr),
}

impl<'a> LeafName<'a> {
    pub(crate) fn parse(name: &'a str) -> Option<Self> {
        if name.is_empty() {
            return None;
        }
        Some(match name.parse::<IpAddr>() {
            Ok(ip) => LeafName::Ip(ip),
            Err(_) => LeafName::Dns(name),
        })
    }
}

/// One subtree as found in a certificate; kinds other than DNS and IP are kept only so that
/// their presence is visible, because they never constrain the DNS/IP SANs we mint.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subtree {
    Dns(String),
    Ip(IpNet),
    Other,
}

/// The complete nameConstraints extension of a CA certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConstraintSet {
    permitted: Vec<Subtree>,
    excluded: Vec<Subtree>,
    /// DNS and IP permitted subtrees, for [`crate::DeploymentCa::permitted_names`].
    permitted_names: Vec<PermittedName>,
}

impl ConstraintSet {
    pub(crate) fn permitted_names(&self) -> &[PermittedName] {
        &self.permitted_names
    }

    /// Would a standard verifier accept a leaf whose only SAN is `name`?
    ///
    /// RFC 5280: a subtree list only restricts names of its own type, so a DNS name is free of
    /// any permitted list that holds no DNS subtree; excluded subtrees always win.
    pub(crate) fn covers(&self, name: &str) -> bool {
        let Some(leaf) = LeafName::parse(name) else {
            return false;
        };
        let hit = |s: &Subtree| match (s, leaf) {
            (Subtree::Dns(base), LeafName::Dns(n)) => Some(dns_matches(base, n)),
            (Subtree::Ip(net), LeafName::Ip(ip)) => Some(net.contains(&ip)),
            _ => None,
        };
        if self.excluded.iter().any(|s| hit(s) == Some(true)) {
            return false;
        }
        let mut same_type = self.permitted.iter().filter_map(hit).peekable();
        same_type.peek().is_none() || same_type.any(|m| m)
    }

    /// Does this CA cover every name of the requested subtree?
    pub(crate) fn covers_subtree(&self, wanted: &PermittedName) -> bool {
        if self
            .excluded
            .iter()
            .any(|s| relation(s, wanted).is_some_and(|r| r.overlaps))
        {
            return false;
        }
        let mut same_type = self
            .permitted
            .iter()
            .filter_map(|s| relation(s, wanted).map(|r| r.contains))
            .peekable();
        same_type.peek().is_none() || same_type.any(|m| m)
    }

    /// Reads the nameConstraints extension; `Ok(None)` when the certificate has none.
    pub(crate) fn from_cert(
        cert: &X509Certificate<'_>,
        source: &str,
    ) -> Result<Option<Self>, CaError> {
        let ext = cert
            .name_constraints()
            .map_err(|e| CaError::bad_cert(source, format!("unreadable nameConstraints: {e}")))?;
        let Some(ext) = ext else {
            return Ok(None);
        };
        let convert = |list: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
            list.iter()
                .flatten()
                .map(|s| subtree_from_x509(&s.base, source))
                .collect::<Result<Vec<_>, _>>()
        };
        let permitted = convert(&ext.value.permitted_subtrees)?;
        let excluded = convert(&ext.value.excluded_subtrees)?;
        let permitted_names = permitted
            .iter()
            .filter_map(|s| match s {
                Subtree::Dns(d) => Some(PermittedName::Dns(d.clone())),
                Subtree::Ip(n) => Some(PermittedName::Ip(*n)),
                Subtree::Other => None,
            })
            .collect();
        Ok(Some(ConstraintSet {
            permitted,
            excluded,
            permitted_names,
        }))
    }
}

/// How a certificate subtree relates to a requested one of the same type.
struct Relation {
    /// Every requested name lies inside the certificate subtree.
    contains: bool,
    /// Some requested name lies inside the certificate subtree.
    overlaps: bool,
}

/// `None` when the two are of different name types and so do not constrain each other.
fn relation(have: &Subtree, wanted: &PermittedName) -> Option<Relation> {
    match (have, wanted) {
        (Subtree::Dns(base), PermittedName::Dns(w)) => {
            let contains = dns_subtree_contains(base, w);
            Some(Relation {
                contains,
                overlaps: contains || dns_subtree_contains(w, base),
            })
        }
        (Subtree::Ip(net), PermittedName::Ip(w)) => Some(Relation {
            contains: net.contains(w),
            overlaps: net.contains(w) || w.contains(net),
        }),
        _ => None,
    }
}

/// rcgen constraints for a new CA limited to `names`.
///
/// Besides the permitted subtrees, a name type the operator did not list at all is excluded
/// outright (all IPv4 and IPv6 space, or every DNS name via the empty dNSName), as the CA/Browser
/// Forum requires of technically constrained CAs: without it RFC 5280 would leave that whole type
/// unconstrained, and a leaked key could still mint a trusted certificate for any IP address.
pub(crate) fn to_rcgen(names: &[PermittedName]) -> Option<NameConstraints> {
    if names.is_empty() {
        return None;
    }
    let permitted_subtrees: Vec<GeneralSubtree> =
        names.iter().map(PermittedName::to_subtree).collect();
    let has_dns = names.iter().any(|n| matches!(n, PermittedName::Dns(_)));
    let has_ip = names.iter().any(|n| matches!(n, PermittedName::Ip(_)));
    let mut excluded_subtrees = Vec::new();
    if !has_ip {
        excluded_subtrees.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
        excluded_subtrees.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
    }
    if !has_dns {
        excluded_subtrees.push(GeneralSubtree::DnsName(String::new()));
    }
    Some(NameConstraints {
        permitted_subtrees,
        excluded_subtrees,
    })
}

fn subtree_from_x509(name: &GeneralName<'_>, source: &str) -> Result<Subtree, CaError> {
    Ok(match name {
        GeneralName::DNSName(d) => Subtree::Dns(d.to_ascii_lowercase()),
        GeneralName::IPAddress(bytes) => {
            Subtree::Ip(ipnet_from_constraint(bytes).ok_or_else(|| {
                CaError::bad_cert(
                    source,
                    "nameConstraints holds an IP range that is not address + contiguous mask",
                )
            })?)
        }
        _ => Subtree::Other,
    })
}

/// An iPAddress constraint is the address followed by a mask of the same length.
fn ipnet_from_constraint(bytes: &[u8]) -> Option<IpNet> {
    let half = bytes.len() / 2;
    let (addr, mask) = bytes.split_at(half);
    let prefix = mask_prefix(mask)?;
    let ip = match half {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    IpNet::new(ip, prefix).ok().map(|n| n.trunc())
}

fn mask_prefix(mask: &[u8]) -> Option<u8> {
    let mut prefix = 0u8;
    let mut seen_zero = false;
    for byte in mask {
        for bit in (0..8).rev() {
            let set = byte & (1 << bit) != 0;
            if set && seen_zero {
                return None;
            }
            if set {
                prefix += 1;
            } else {
                seen_zero = true;
            }
        }
    }
    Some(prefix)
}

/// RFC 5280 dNSName matching: `base` matches itself and any name made by adding labels on the
/// left; a leading dot restricts it to the added-labels case; the empty base matches everything.
fn dns_matches(base: &str, name: &str) -> bool {
    if base.is_empty() {
        return true;
    }
    let name = name.to_ascii_lowercase();
    match base.strip_prefix('.') {
        Some(_) => name.len() > base.len() && name.ends_with(base),
        None => {
            name == base
                || (name.len() > base.len()
                    && name.ends_with(base)
                    && name.as_bytes().get(name.len() - base.len() - 1) == Some(&b'.'))
        }
    }
}

/// Is every name matched by `inner` also matched by `outer`?
fn dns_subtree_contains(outer: &str, inner: &str) -> bool {
    if outer.is_empty() {
        return true;
    }
    if inner.is_empty() {
        return false;
    }
    // `.x` matches exactly the names strictly below `x`; `x` matches those plus `x`. So `inner`
    // is contained when its apex (if included) and its strict subtree both lie inside `outer`.
    match inner.strip_prefix('.') {
        Some(inner_base) => dns_matches(outer, inner_base) || format!(".{inner_base}") == outer,
        None => dns_matches(outer, inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(s: &str) -> PermittedName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_operator_input() {
        assert_eq!(pn("Example.COM."), PermittedName::Dns("example.com".into()));
        assert_eq!(
            pn("*.example.com"),
            PermittedName::Dns(".example.com".into())
        );
        assert_eq!(
            pn("10.1.2.3/8"),
            PermittedName::Ip("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            pn("192.0.2.7"),
            PermittedName::Ip("192.0.2.7/32".parse().unwrap())
        );
        assert!("".parse::<PermittedName>().is_err());
        assert!("a.*.com".parse::<PermittedName>().is_err());
        assert!("10.0.0.0/33".parse::<PermittedName>().is_err());
    }

    #[test]
    fn dns_matching_respects_label_boundaries() {
        assert!(dns_matches("example.com", "example.com"));
        assert!(dns_matches("example.com", "api.example.com"));
        assert!(!dns_matches("example.com", "badexample.com"));
        assert!(!dns_matches(".example.com", "example.com"));
        assert!(dns_matches(".example.com", "a.example.com"));
        assert!(dns_matches("", "anything.test"));
    }

    #[test]
    fn subtree_containment() {
        assert!(dns_subtree_contains("example.com", "api.example.com"));
        assert!(dns_subtree_contains("example.com", ".example.com"));
        assert!(!dns_subtree_contains(".example.com", "example.com"));
        assert!(dns_subtree_contains(".example.com", ".example.com"));
        assert!(dns_subtree_contains(".example.com", "a.example.com"));
        assert!(!dns_subtree_contains("api.example.com", "example.com"));
    }

    #[test]
    fn masks() {
        assert_eq!(mask_prefix(&[255, 255, 0, 0]), Some(16));
        assert_eq!(mask_prefix(&[0, 0, 0, 0]), Some(0));
        assert_eq!(mask_prefix(&[255, 0, 255, 0]), None);
        assert_eq!(
            ipnet_from_constraint(&[10, 0, 0, 0, 255, 0, 0, 0]),
            Some("10.0.0.0/8".parse().unwrap())
        );
    }

    #[test]
    fn set_semantics_follow_rfc5280() {
        let set = ConstraintSet {
            permitted: vec![Subtree::Dns("allowed.test".into())],
            excluded: vec![Subtree::Dns("secret.allowed.test".into())],
            permitted_names: Vec::new(),
        };
        assert!(set.covers("allowed.test"));
        assert!(set.covers("api.allowed.test"));
        assert!(!set.covers("other.test"));
        assert!(!set.covers("x.secret.allowed.test"));
        // No IP subtree at all: IPs are not restricted by a DNS-only list.
        assert!(set.covers("192.0.2.1"));
        assert!(set.covers_subtree(&pn("api.allowed.test")));
        assert!(
            !set.covers_subtree(&pn("allowed.test")),
            "overlaps the exclusion"
        );
        assert!(!set.covers_subtree(&pn("other.test")));
    }
}
