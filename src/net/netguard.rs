//! The resolved-address check: which IP addresses the proxy may connect to.
//!
//! An [`AddressPolicy`] is a deny set (the `default` group and/or CIDRs) minus `allow` CIDRs.
//! IPv6 addresses that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 well-known
//! prefix, 6to4) are judged by the IPv4 address they reach as well, so `::ffff:127.0.0.1` is
//! loopback. This module only judges addresses; the dialer calls it for every address it is
//! about to use, and nothing else dials.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The `default` deny group: everything that is not the public internet.
pub const DEFAULT_DENY: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network", unspecified
    "10.0.0.0/8",      // RFC 1918
    "100.64.0.0/10",   // CGNAT
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, cloud metadata
    "172.16.0.0/12",   // RFC 1918
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // TEST-NET-1
    "192.168.0.0/16",  // RFC 1918
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // TEST-NET-2
    "203.0.113.0/24",  // TEST-NET-3
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, including 255.255.255.255 broadcast
    // IPv6
    "::/128",         // unspecified
    "::1/128",        // loopback
    "100::/64",       // discard-only
    "2001::/32",      // Teredo: the IPv4 inside is obfuscated, so no address in it is judged safe
    "2001:db8::/32",  // documentation
    "64:ff9b:1::/48", // local-use NAT64
    "fc00::/7",       // unique local
    "fec0::/10",      // deprecated site-local
    "fe80::/10",      // link-local
    "ff00::/8",       // multicast
];

/// What an address check refused, for logs and the refusal body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub addr: IpAddr,
    /// The deny entry that matched (for an embedded IPv4, the IPv4 entry).
    pub by: IpNet,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>) -> Self {
        AddressPolicy { deny, allow }
    }

    pub fn default_deny_nets() -> Vec<IpNet> {
        DEFAULT_DENY.iter().filter_map(|s| s.parse().ok()).collect()
    }

    /// `Ok` when the proxy may connect to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Denied> {
        let embedded = embedded_ipv4(addr);
        // An allow entry matches the address as written or the IPv4 address it carries, so
        // `allow: [127.0.0.1/32]` also admits `::ffff:127.0.0.1` — the same socket.
        let allowed = |ip: IpAddr| self.allow.iter().any(|n| n.contains(&ip));
        if allowed(addr) || embedded.is_some_and(|v4| allowed(IpAddr::V4(v4))) {
            return Ok(());
        }
        if let Some(net) = self.deny.iter().find(|n| n.contains(&addr)) {
            return Err(Denied { addr, by: *net });
        }
        if let Some(v4) = embedded
            && let Some(net) = self.deny.iter().find(|n| n.contains(&IpAddr::V4(v4)))
        {
            return Err(Denied { addr, by: *net });
        }
        Ok(())
    }
}

/// The IPv4 address an IPv6 address delivers to, for the forms that do.
fn embedded_ipv4(addr: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = addr else {
        return None;
    };
    let o = v6.octets();
    let last4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let within = |net: &str| net.parse::<Ipv6Net>().is_ok_and(|n| n.contains(&v6));
    if v6.to_ipv4_mapped().is_some() {
        return Some(last4);
    }
    // IPv4-compatible (deprecated, ::a.b.c.d) — still routed to the IPv4 host by some stacks.
    if within("::/96") && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return Some(last4);
    }
    if within("64:ff9b::/96") {
        return Some(last4);
    }
    if within("2002::/16") {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // SIIT / IPv4-translatable (::ffff:0:a.b.c.d).
    if within("::ffff:0:0:0/96") {
        return Some(last4);
    }
    None
}

/// Parses one deny entry: the word `default` or a CIDR (a bare address is a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Ipv4Net::new(v4, 32).ok().map(IpNet::V4),
        IpAddr::V6(v6) => Ipv6Net::new(v6, 128).ok().map(IpNet::V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> AddressPolicy {
        AddressPolicy::new(
            AddressPolicy::default_deny_nets(),
            allow.iter().map(|s| parse_net(s).unwrap()).collect(),
        )
    }

    #[test]
    fn default_group_parses_completely() {
        assert_eq!(AddressPolicy::default_deny_nets().len(), DEFAULT_DENY.len());
    }

    #[test]
    fn address_table() {
        let deny: &[(&str, &str)] = &[
            ("loopback", "127.0.0.1"),
            ("loopback high", "127.255.255.254"),
            ("rfc1918 10", "10.1.2.3"),
            ("rfc1918 172", "172.31.255.255"),
            ("rfc1918 192", "192.168.1.1"),
            ("cgnat", "100.64.0.1"),
            ("metadata", "169.254.169.254"),
            ("unspecified v4", "0.0.0.0"),
            ("this network", "0.1.2.3"),
            ("broadcast", "255.255.255.255"),
            ("multicast v4", "224.0.0.1"),
            ("v6 loopback", "::1"),
            ("v6 unspecified", "::"),
            ("ula", "fd00::1"),
            ("link-local v6", "fe80::1"),
            ("multicast v6", "ff02::1"),
            ("mapped loopback", "::ffff:127.0.0.1"),
            ("mapped metadata", "::ffff:169.254.169.254"),
            ("mapped rfc1918", "::ffff:10.0.0.1"),
            ("compatible loopback", "::127.0.0.1"),
            ("compatible rfc1918", "::10.0.0.1"),
            ("nat64 loopback", "64:ff9b::7f00:1"),
            ("nat64 metadata", "64:ff9b::a9fe:a9fe"),
            ("6to4 rfc1918", "2002:0a00:0001::1"),
            ("6to4 loopback", "2002:7f00:0001::"),
            ("siit loopback", "::ffff:0:7f00:1"),
            ("teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
        ];
        let p = policy(&[]);
        for (case, addr) in deny {
            assert!(
                p.check(addr.parse().unwrap()).is_err(),
                "case `{case}` must be denied"
            );
        }
        let allow: &[(&str, &str)] = &[
            ("public v4", "93.184.216.34"),
            ("public v6", "2606:2800:220:1:248:1893:25c8:1946"),
            ("mapped public", "::ffff:93.184.216.34"),
            ("nat64 public", "64:ff9b::5db8:d822"),
            ("6to4 public", "2002:5db8:d822::1"),
        ];
        for (case, addr) in allow {
            assert!(
                p.check(addr.parse().unwrap()).is_ok(),
                "case `{case}` must be allowed"
            );
        }
    }

    #[test]
    fn allow_carves_exceptions_including_mapped_form() {
        let p = policy(&["127.0.0.1/32"]);
        assert!(p.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(p.check("::1".parse().unwrap()).is_err());
    }

    #[test]
    fn denial_names_the_entry() {
        let p = policy(&[]);
        let d = p.check("::ffff:10.9.8.7".parse().unwrap()).unwrap_err();
        assert_eq!(d.by, "10.0.0.0/8".parse::<IpNet>().unwrap());
    }

    #[test]
    fn parse_net_forms() {
        assert_eq!(parse_net("10.0.0.1"), Some("10.0.0.1/32".parse().unwrap()));
        assert_eq!(parse_net("10.0.0.1/8"), Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_net("::1"), Some("::1/128".parse().unwrap()));
        assert_eq!(parse_net("nope"), None);
    }
}
