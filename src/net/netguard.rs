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
///
/// Two kinds of entry: IANA special-purpose ranges that are not globally reachable (RFC 6890
/// and the IANA special-purpose registries), and cloud-provider addresses that sit in
/// otherwise public space but are only reachable from inside that provider's network, where
/// they serve instance metadata, host agents, or private service endpoints. Every cloud
/// metadata service we know of lives in a range below: AWS, GCP, Azure, Oracle, DigitalOcean,
/// Huawei, OpenStack, IBM VPC on `169.254.169.254` (link-local); AWS time sync and DNS on
/// `169.254.169.123` / `169.254.169.253`; Tencent on `169.254.0.23`; Alibaba on
/// `100.100.100.200` (CGNAT); Oracle's legacy `192.0.0.192` (IETF protocol assignments); the
/// IPv6 endpoints (`fd00:ec2::254`, GCP `fd20:ce::254`, Oracle `fd00:c1::a9fe:a9fe`) in ULA.
pub const DEFAULT_DENY: &[&str] = &[
    // IPv4
    "0.0.0.0/8",        // "this network", unspecified
    "10.0.0.0/8",       // RFC 1918
    "100.64.0.0/10",    // CGNAT (Alibaba metadata 100.100.100.200, Huawei 100.125/16)
    "127.0.0.0/8",      // loopback
    "161.26.0.0/16",    // IBM Cloud IaaS private endpoints (DNS, NTP, mirrors, object storage)
    "166.8.0.0/14",     // IBM Cloud PaaS private service endpoints
    "168.63.129.16/32", // Azure WireServer: host agent, DNS, health probes, in every VNet
    "169.254.0.0/16",   // link-local, cloud metadata
    "172.16.0.0/12",    // RFC 1918
    "192.0.0.0/24",     // IETF protocol assignments (Oracle's legacy metadata 192.0.0.192)
    "192.0.2.0/24",     // TEST-NET-1
    "192.88.99.0/24",   // deprecated 6to4 relay anycast (RFC 7526)
    "192.168.0.0/16",   // RFC 1918
    "198.18.0.0/15",    // benchmarking
    "198.51.100.0/24",  // TEST-NET-2
    "203.0.113.0/24",   // TEST-NET-3
    "224.0.0.0/4",      // multicast
    "240.0.0.0/4",      // reserved, including 255.255.255.255 broadcast
    // IPv6
    "::/128",         // unspecified
    "::1/128",        // loopback
    "100::/64",       // discard-only
    "2001::/32",      // Teredo: the IPv4 inside is obfuscated, so no address in it is judged safe
    "2001:2::/48",    // benchmarking
    "2001:10::/28",   // deprecated ORCHID
    "2001:db8::/32",  // documentation
    "3fff::/20",      // documentation (RFC 9637)
    "5f00::/16",      // SRv6 SIDs (RFC 9602)
    "64:ff9b:1::/48", // local-use NAT64
    "fc00::/7",       // unique local (AWS fd00:ec2::/32, GCP fd20:ce::254, Oracle fd00:c1::)
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

    /// One row per cloud metadata / host-agent / private-endpoint address and per IANA
    /// special-purpose range: (who or what, address, the `default` entry that must refuse it).
    #[test]
    fn cloud_and_special_purpose_table() {
        let rows: &[(&str, &str, &str)] = &[
            ("AWS IMDS", "169.254.169.254", "169.254.0.0/16"),
            ("AWS IMDS IPv6", "fd00:ec2::254", "fc00::/7"),
            ("AWS Time Sync", "169.254.169.123", "169.254.0.0/16"),
            ("AWS Time Sync IPv6", "fd00:ec2::123", "fc00::/7"),
            ("AWS Route 53 Resolver", "169.254.169.253", "169.254.0.0/16"),
            ("AWS Route 53 Resolver IPv6", "fd00:ec2::253", "fc00::/7"),
            ("AWS ECS task metadata", "169.254.170.2", "169.254.0.0/16"),
            ("AWS EKS Pod Identity", "169.254.170.23", "169.254.0.0/16"),
            ("AWS EKS Pod Identity IPv6", "fd00:ec2::23", "fc00::/7"),
            (
                "GCP metadata.google.internal",
                "169.254.169.254",
                "169.254.0.0/16",
            ),
            ("GCP metadata IPv6", "fd20:ce::254", "fc00::/7"),
            ("Azure IMDS", "169.254.169.254", "169.254.0.0/16"),
            ("Azure WireServer", "168.63.129.16", "168.63.129.16/32"),
            (
                "Azure WireServer mapped",
                "::ffff:168.63.129.16",
                "168.63.129.16/32",
            ),
            (
                "Azure WireServer NAT64",
                "64:ff9b::a83f:8110",
                "168.63.129.16/32",
            ),
            ("Alibaba metadata", "100.100.100.200", "100.64.0.0/10"),
            ("Alibaba DNS", "100.100.2.136", "100.64.0.0/10"),
            ("Oracle IMDS", "169.254.169.254", "169.254.0.0/16"),
            ("Oracle legacy IMDS", "192.0.0.192", "192.0.0.0/24"),
            ("Oracle IMDS IPv6", "fd00:c1::a9fe:a9fe", "fc00::/7"),
            ("DigitalOcean metadata", "169.254.169.254", "169.254.0.0/16"),
            (
                "Tencent metadata.tencentyun.com",
                "169.254.0.23",
                "169.254.0.0/16",
            ),
            ("Huawei metadata", "169.254.169.254", "169.254.0.0/16"),
            ("Huawei internal services", "100.125.0.1", "100.64.0.0/10"),
            ("OpenStack metadata", "169.254.169.254", "169.254.0.0/16"),
            ("OpenStack metadata IPv6", "fe80::a9fe:a9fe", "fe80::/10"),
            ("IBM VPC metadata", "169.254.169.254", "169.254.0.0/16"),
            (
                "IBM IaaS private endpoint (DNS)",
                "161.26.0.10",
                "161.26.0.0/16",
            ),
            (
                "IBM IaaS private endpoint, top",
                "161.26.255.255",
                "161.26.0.0/16",
            ),
            ("IBM PaaS private endpoint", "166.9.12.1", "166.8.0.0/14"),
            (
                "IBM PaaS private endpoint, top",
                "166.11.255.255",
                "166.8.0.0/14",
            ),
            ("Scaleway metadata", "169.254.42.42", "169.254.0.0/16"),
            ("Linode metadata IPv6", "fd00:a9fe:a9fe::1", "fc00::/7"),
            ("RFC 6890 this network", "0.1.2.3", "0.0.0.0/8"),
            (
                "RFC 6890 IETF protocol assignments",
                "192.0.0.9",
                "192.0.0.0/24",
            ),
            ("RFC 5737 TEST-NET-1", "192.0.2.1", "192.0.2.0/24"),
            (
                "RFC 7526 6to4 relay anycast",
                "192.88.99.1",
                "192.88.99.0/24",
            ),
            ("RFC 2544 benchmarking", "198.19.255.255", "198.18.0.0/15"),
            ("RFC 5737 TEST-NET-2", "198.51.100.1", "198.51.100.0/24"),
            ("RFC 5737 TEST-NET-3", "203.0.113.1", "203.0.113.0/24"),
            ("RFC 1112 reserved", "240.0.0.1", "240.0.0.0/4"),
            ("RFC 6666 discard-only", "100::1", "100::/64"),
            ("RFC 5180 benchmarking v6", "2001:2::1", "2001:2::/48"),
            ("RFC 4843 ORCHID", "2001:10::1", "2001:10::/28"),
            ("RFC 3849 documentation", "2001:db8::1", "2001:db8::/32"),
            ("RFC 9637 documentation", "3fff::1", "3fff::/20"),
            ("RFC 9602 SRv6 SIDs", "5f00::1", "5f00::/16"),
            ("RFC 8215 local-use NAT64", "64:ff9b:1::1", "64:ff9b:1::/48"),
        ];
        let p = policy(&[]);
        for (what, addr, by) in rows {
            let d = p
                .check(addr.parse().unwrap())
                .expect_err(&format!("{what} ({addr}) must be denied"));
            assert_eq!(d.by, by.parse::<IpNet>().unwrap(), "{what} ({addr})");
        }
        // The new entries are exact: their public neighbours still pass.
        for addr in [
            "168.63.129.15",
            "168.63.129.17",
            "161.25.255.255",
            "161.27.0.0",
            "166.7.255.255",
            "166.12.0.0",
            "192.88.98.255",
            "192.88.100.0",
            "3fff:1000::1",
            "2001:20::1",
        ] {
            assert!(p.check(addr.parse().unwrap()).is_ok(), "{addr}");
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
