//! The nftables ruleset that makes egress-edge a sandbox's only way out.
//!
//! Two shapes, both printed by `egress-edge nft-rules` and the first loaded by `jail`:
//!
//! - [`Mode::Gateway`]: the sandbox's traffic arrives on an interface of the proxy's own
//!   namespace (the jail's veth, a container bridge). Every TCP connection from it is
//!   redirected to the transparent listener and every DNS query to the guest resolver, in
//!   prerouting, so `SO_ORIGINAL_DST` answers in the namespace the proxy runs in. Nothing from
//!   the interface is forwarded anywhere; other UDP (QUIC) is rejected so clients fall back to
//!   TCP at once; of ICMP only what TCP and IPv6 neighbour discovery need is let in.
//! - [`Mode::Sidecar`]: the proxy shares the sandbox's namespace (a pod sidecar), running as
//!   its own user. Every other process's TCP and DNS is redirected in output (ahead of Docker's
//!   embedded-DNS NAT); other UDP, loopback UDP to anything but the guest resolver, and
//!   Docker's embedded resolver itself are rejected; the proxy's own traffic is left alone.
//!   Loopback TCP stays open (a guest's own local services), so in this mode the proxy's
//!   admin listener belongs on a unix socket or behind its token.
//!
//! This module only writes text; loading it (`nft -f -`) is the caller's.

use std::fmt::Write;

/// Where the sandbox's traffic is caught.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Traffic arrives on `interface` (a veth or bridge) of the proxy's namespace.
    Gateway { interface: String },
    /// The proxy shares the sandbox's namespace and runs as `proxy_uid`.
    Sidecar { proxy_uid: u32 },
}

/// What the ruleset sends where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// The nftables table (family `inet`), one per sandbox network.
    pub table: String,
    pub mode: Mode,
    /// The transparent listener's port.
    pub transparent_port: u16,
    /// The guest resolver's port (UDP and TCP).
    pub dns_port: u16,
    /// The explicit proxy's port, reachable unredirected for clients that honour
    /// `HTTPS_PROXY` (gateway mode: on the proxy's local addresses only).
    pub proxy_port: Option<u16>,
}

/// ICMP types TCP needs (path MTU discovery, errors for open connections).
const ICMP_NEEDED: &str = "destination-unreachable, time-exceeded, parameter-problem";
/// ICMPv6 types TCP and neighbour discovery need.
const ICMPV6_NEEDED: &str = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit";

/// A name nftables accepts for a table or interface: letters, digits, `_`, `-`, `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Ruleset {
    /// The ruleset as `nft -f` reads it. It first deletes a table of the same name, so loading
    /// it twice replaces rather than duplicates.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let t = &self.table;
        // `add` then `delete` makes the delete succeed whether or not the table existed.
        let _ = writeln!(out, "add table inet {t}");
        let _ = writeln!(out, "delete table inet {t}");
        let _ = writeln!(out, "table inet {t} {{");
        match &self.mode {
            Mode::Gateway { interface } => self.gateway(&mut out, interface),
            Mode::Sidecar { proxy_uid } => self.sidecar(&mut out, *proxy_uid),
        }
        let _ = writeln!(out, "}}");
        out
    }

    fn gateway(&self, out: &mut String, interface: &str) {
        let i = format!("iifname \"{interface}\"");
        let (tp, dp) = (self.transparent_port, self.dns_port);
        let _ = writeln!(
            out,
            "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
        );
        let _ = writeln!(out, "    {i} udp dport 53 redirect to :{dp}");
        let _ = writeln!(out, "    {i} tcp dport 53 redirect to :{dp}");
        if let Some(pp) = self.proxy_port {
            let _ = writeln!(out, "    {i} fib daddr type local tcp dport {pp} accept");
        }
        let _ = writeln!(out, "    {i} meta l4proto tcp redirect to :{tp}");
        let _ = writeln!(out, "  }}");
        let mut ports = vec![tp.to_string(), dp.to_string()];
        if let Some(pp) = self.proxy_port {
            ports.push(pp.to_string());
        }
        let _ = writeln!(
            out,
            "  chain input {{\n    type filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(out, "    {i} tcp dport {{ {} }} accept", ports.join(", "));
        let _ = writeln!(out, "    {i} udp dport {dp} accept");
        let _ = writeln!(out, "    {i} icmp type {{ {ICMP_NEEDED} }} accept");
        let _ = writeln!(out, "    {i} icmpv6 type {{ {ICMPV6_NEEDED} }} accept");
        let _ = writeln!(out, "    {i} meta l4proto udp reject");
        let _ = writeln!(out, "    {i} meta l4proto tcp reject with tcp reset");
        let _ = writeln!(out, "    {i} drop");
        let _ = writeln!(out, "  }}");
        let _ = writeln!(
            out,
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(out, "    {i} meta l4proto udp reject");
        let _ = writeln!(out, "    {i} drop");
        let _ = writeln!(out, "    oifname \"{interface}\" drop");
        let _ = writeln!(out, "  }}");
    }

    fn sidecar(&self, out: &mut String, uid: u32) {
        let (tp, dp) = (self.transparent_port, self.dns_port);
        let _ = writeln!(
            out,
            "  chain output_nat {{\n    type nat hook output priority -150; policy accept;"
        );
        let _ = writeln!(out, "    meta skuid {uid} return");
        let _ = writeln!(out, "    udp dport 53 redirect to :{dp}");
        let _ = writeln!(out, "    tcp dport 53 redirect to :{dp}");
        let _ = writeln!(out, "    oifname \"lo\" return");
        let _ = writeln!(out, "    meta l4proto tcp redirect to :{tp}");
        let _ = writeln!(out, "  }}");
        let _ = writeln!(
            out,
            "  chain output_filter {{\n    type filter hook output priority filter; policy accept;"
        );
        let _ = writeln!(out, "    meta skuid {uid} accept");
        // Docker's embedded resolver listens on 127.0.0.11 at ports of its own: a guest that
        // found them would resolve around the guest resolver.
        let _ = writeln!(out, "    ip daddr 127.0.0.11 reject");
        // Loopback UDP only to the guest resolver (no other local resolver is reachable).
        let _ = writeln!(out, "    oifname \"lo\" udp dport != {dp} reject");
        let _ = writeln!(out, "    oifname \"lo\" accept");
        let _ = writeln!(out, "    meta l4proto tcp accept");
        let _ = writeln!(out, "    icmp type {{ {ICMP_NEEDED} }} accept");
        let _ = writeln!(out, "    icmpv6 type {{ {ICMPV6_NEEDED} }} accept");
        let _ = writeln!(out, "    meta l4proto udp reject");
        let _ = writeln!(out, "    drop");
        let _ = writeln!(out, "  }}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> Ruleset {
        Ruleset {
            table: "egress_edge".into(),
            mode: Mode::Gateway {
                interface: "veth0".into(),
            },
            transparent_port: 3129,
            dns_port: 5353,
            proxy_port: Some(3128),
        }
    }

    /// Returns the index of the first line containing `needle`, failing when absent.
    fn line(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    }

    #[test]
    fn gateway_redirects_dns_before_tcp_and_rejects_the_rest() {
        let text = gateway().render();
        let dns_tcp = line(&text, "tcp dport 53 redirect to :5353");
        let tcp = line(&text, "meta l4proto tcp redirect to :3129");
        assert!(dns_tcp < tcp, "DNS over TCP must be caught before all TCP");
        assert!(line(&text, "fib daddr type local tcp dport 3128 accept") < tcp);
        line(&text, "iifname \"veth0\" udp dport 53 redirect to :5353");
        line(
            &text,
            "iifname \"veth0\" tcp dport { 3129, 5353, 3128 } accept",
        );
        let udp_reject = line(&text, "iifname \"veth0\" meta l4proto udp reject");
        let drop = line(&text, "iifname \"veth0\" drop");
        assert!(udp_reject < drop);
        line(&text, "chain forward");
        assert!(!text.contains("echo-request"), "ping must not be let in");
    }

    #[test]
    fn sidecar_leaves_the_proxy_user_alone() {
        let mut r = gateway();
        r.mode = Mode::Sidecar { proxy_uid: 1337 };
        let text = r.render();
        // nft 1.0.6 accepts the `dstnat` keyword in prerouting only; -150 runs ahead of the
        // DNAT Docker's embedded DNS installs at -100, so port 53 is ours first.
        line(&text, "type nat hook output priority -150;");
        let docker = line(&text, "ip daddr 127.0.0.11 reject");
        let lo_udp = line(&text, "oifname \"lo\" udp dport != 5353 reject");
        assert!(docker < line(&text, "oifname \"lo\" accept"));
        assert!(lo_udp < line(&text, "oifname \"lo\" accept"));
        let skip = line(&text, "meta skuid 1337 return");
        assert!(skip < line(&text, "meta l4proto tcp redirect to :3129"));
        line(&text, "meta skuid 1337 accept");
        line(&text, "meta l4proto udp reject");
    }

    #[test]
    fn reloading_replaces_the_table() {
        let text = gateway().render();
        assert!(text.starts_with("add table inet egress_edge\ndelete table inet egress_edge\n"));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["veth0", "br-1a2b", "egress_edge.1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "x\"; flush ruleset", "a{b}", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
