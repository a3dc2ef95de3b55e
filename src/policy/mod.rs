//! The egress ladder decision: which rung a destination gets, and by which rule.
//!
//! [`Policy::decide`] is a pure function of the policy, the normalized host, the port and the
//! scheme: it reads no clock, resolves no name and opens no socket. The resolved-address check
//! is not here — it happens in the dialer, at the moment of connecting, so the address that was
//! vetted is the address that is used.
//!
//! Matching: a rule matches when its host pattern covers the host and its ports cover the port
//! (no `ports` means 443 for CONNECT and 80 for plain HTTP). Among matching rules the most
//! specific host pattern wins (exact name or address, then the longest `*.suffix`); ties go to
//! the rule written first. Nothing matching means `default_rung`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod credential;
pub use credential::Credential;

use crate::net::host::Host;

/// A rung of the egress ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    Deny,
    Passthrough,
    Bump,
}

impl Rung {
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Deny => "deny",
            Rung::Passthrough => "passthrough",
            Rung::Bump => "bump",
        }
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest asked for the destination; it decides the default ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `CONNECT host:port` (TLS expected).
    Connect,
    /// Absolute-form `http://` request.
    Http,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Connect => 443,
            Scheme::Http => 80,
        }
    }
}

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
    fn specificity(&self) -> usize {
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

/// One destination rule, typed.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Stable id for logs and refusal bodies: the config's `id`, else `destinations[N]`.
    pub id: Arc<str>,
    pub pattern: HostPattern,
    /// `None`: the scheme's default port only.
    pub ports: Option<Vec<u16>>,
    pub rung: Rung,
    pub credential: Option<Credential>,
    pub require_handle: bool,
}

impl Rule {
    fn covers_port(&self, port: u16, scheme: Scheme) -> bool {
        match &self.ports {
            Some(ports) => ports.contains(&port),
            None => port == scheme.default_port(),
        }
    }
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    MatchedRule,
    DefaultRung,
}

/// The outcome of [`Policy::decide`].
#[derive(Clone, Debug)]
pub struct Decision {
    pub rung: Rung,
    /// Index into [`Policy::rules`]; `None` for the default rung.
    pub rule: Option<usize>,
    pub rule_id: Arc<str>,
    pub reason: Reason,
}

impl Decision {
    /// True when both decisions come from the same rule (or both from the default rung).
    pub fn same_rule(&self, other: &Decision) -> bool {
        self.rule == other.rule && self.rung == other.rung
    }
}

/// Why a name does not fall under an expected rule.
#[derive(Debug, thiserror::Error)]
pub enum OtherRule {
    #[error("{0}")]
    Invalid(crate::net::host::HostError),
    #[error("{host} falls under rule `{rule}`, not `{expected}`")]
    Rule {
        host: Host,
        rule: Arc<str>,
        expected: Arc<str>,
    },
}

pub const DEFAULT_RULE_ID: &str = "default_rung";

/// Destination rules plus the default rung.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    default_rung: Rung,
    default_id: Arc<str>,
}

impl Policy {
    pub fn new(rules: Vec<Rule>, default_rung: Rung) -> Policy {
        Policy {
            rules,
            default_rung,
            default_id: Arc::from(DEFAULT_RULE_ID),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_rung(&self) -> Rung {
        self.default_rung
    }

    pub fn rule(&self, index: usize) -> Option<&Rule> {
        self.rules.get(index)
    }

    pub fn decide(&self, host: &Host, port: u16, scheme: Scheme) -> Decision {
        let mut best: Option<(usize, usize)> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.pattern.matches(host) || !rule.covers_port(port, scheme) {
                continue;
            }
            let s = rule.pattern.specificity();
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        match best {
            Some((i, _)) => Decision {
                rung: self.rules[i].rung,
                rule: Some(i),
                rule_id: self.rules[i].id.clone(),
                reason: Reason::MatchedRule,
            },
            None => Decision {
                rung: self.default_rung,
                rule: None,
                rule_id: self.default_id.clone(),
                reason: Reason::DefaultRung,
            },
        }
    }

    /// Whether the guest resolver may answer for `host`: `Ok` with a decision that lets some
    /// connection to it through, `Err` with the deny decision otherwise. Pure, like
    /// [`Policy::decide`], which it calls for the ports the policy speaks about for this
    /// host: 443 for CONNECT, 80 for plain HTTP, and every port a rule matching the host
    /// names. So a name no rule matches is resolvable when the default rung is not deny, and
    /// a name some rule matches is judged by the rules (the default rung applies only at
    /// those ports no matching rule covers): a deny rule for the exact name wins, as it does
    /// in `decide`, and a port nothing names never makes a name resolvable.
    pub fn resolvable(&self, host: &Host) -> Result<Decision, Decision> {
        let mut candidates: Vec<(u16, Scheme)> = vec![(443, Scheme::Connect), (80, Scheme::Http)];
        for rule in self.rules.iter().filter(|r| r.pattern.matches(host)) {
            for port in rule.ports.iter().flatten() {
                if !candidates.iter().any(|(p, _)| p == port) {
                    candidates.push((*port, Scheme::Connect));
                }
            }
        }
        let mut denied = None;
        for (port, scheme) in candidates {
            let d = self.decide(host, port, scheme);
            if d.rung != Rung::Deny {
                return Ok(d);
            }
            denied.get_or_insert(d);
        }
        Err(denied.unwrap_or_else(|| self.decide(host, 443, Scheme::Connect)))
    }

    /// True when a rule names `host` exactly (not through a wildcard): operator intent that
    /// lets the guest resolver skip its exfiltration heuristics for this name.
    pub fn names_exactly(&self, host: &Host) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.pattern, HostPattern::Exact(_)) && r.pattern.matches(host))
    }

    /// Parses `raw` (an SNI or a request's host) and checks it falls under the same rule as
    /// `decision`: the SNI and every request host of a session must, so one rule governs the
    /// CONNECT host, the TLS name and the HTTP host alike.
    pub fn same_rule_for(
        &self,
        raw: &str,
        port: u16,
        decision: &Decision,
    ) -> Result<Host, OtherRule> {
        let host = Host::parse(raw).map_err(OtherRule::Invalid)?;
        let d = self.decide(&host, port, Scheme::Connect);
        if d.same_rule(decision) {
            Ok(host)
        } else {
            Err(OtherRule::Rule {
                host,
                rule: d.rule_id,
                expected: decision.rule_id.clone(),
            })
        }
    }

    /// True when some destination could be bumped (a bump rule, or a bump default).
    pub fn has_bump(&self) -> bool {
        self.default_rung == Rung::Bump || self.rules.iter().any(|r| r.rung == Rung::Bump)
    }

    /// The finite set of bump host patterns, or `None` when bumping is open-ended (a bump
    /// default rung). Wildcards are included as patterns: a CA name constraint on `suffix`
    /// permits exactly its subdomains (and the suffix itself).
    pub fn enumerable_bump_patterns(&self) -> Option<Vec<&HostPattern>> {
        if self.default_rung == Rung::Bump {
            return None;
        }
        Some(
            self.rules
                .iter()
                .filter(|r| r.rung == Rung::Bump)
                .map(|r| &r.pattern)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, pattern: &str, ports: Option<Vec<u16>>, rung: Rung) -> Rule {
        Rule {
            id: Arc::from(id),
            pattern: HostPattern::parse(pattern).unwrap(),
            ports,
            rung,
            credential: None,
            require_handle: false,
        }
    }

    fn policy() -> Policy {
        Policy::new(
            vec![
                rule("openai", "api.openai.com", None, Rung::Bump),
                rule("pypi", "*.pypi.org", None, Rung::Passthrough),
                rule("files", "files.pypi.org", None, Rung::Deny),
                rule(
                    "corp",
                    "*.corp.example",
                    Some(vec![443, 8443]),
                    Rung::Passthrough,
                ),
                rule("deep", "*.a.corp.example", None, Rung::Deny),
                rule("plain", "plain.example", Some(vec![80]), Rung::Passthrough),
                rule("ip", "93.184.216.34", None, Rung::Passthrough),
                rule("dup", "api.openai.com", None, Rung::Deny),
            ],
            Rung::Deny,
        )
    }

    #[test]
    fn decision_table() {
        let p = policy();
        let cases: &[(&str, &str, u16, Scheme, Rung, &str)] = &[
            (
                "exact match",
                "api.openai.com",
                443,
                Scheme::Connect,
                Rung::Bump,
                "openai",
            ),
            (
                "first of equal rules wins",
                "api.openai.com",
                443,
                Scheme::Connect,
                Rung::Bump,
                "openai",
            ),
            (
                "exact wrong port",
                "api.openai.com",
                8443,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
            (
                "no ports means 80 for plain http",
                "api.openai.com",
                80,
                Scheme::Http,
                Rung::Bump,
                "openai",
            ),
            (
                "no ports excludes 80 for CONNECT",
                "api.openai.com",
                80,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
            (
                "wildcard subdomain",
                "pypi.pypi.org",
                443,
                Scheme::Connect,
                Rung::Passthrough,
                "pypi",
            ),
            (
                "wildcard deep subdomain",
                "a.b.pypi.org",
                443,
                Scheme::Connect,
                Rung::Passthrough,
                "pypi",
            ),
            (
                "wildcard does not cover apex",
                "pypi.org",
                443,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
            (
                "suffix lookalike",
                "evilpypi.org",
                443,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
            (
                "exact beats wildcard",
                "files.pypi.org",
                443,
                Scheme::Connect,
                Rung::Deny,
                "files",
            ),
            (
                "explicit ports",
                "x.corp.example",
                8443,
                Scheme::Connect,
                Rung::Passthrough,
                "corp",
            ),
            (
                "explicit ports exclude others",
                "x.corp.example",
                22,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
            (
                "longer suffix wins",
                "x.a.corp.example",
                443,
                Scheme::Connect,
                Rung::Deny,
                "deep",
            ),
            (
                "longer suffix port miss falls back",
                "x.a.corp.example",
                8443,
                Scheme::Connect,
                Rung::Passthrough,
                "corp",
            ),
            (
                "plain http port",
                "plain.example",
                80,
                Scheme::Http,
                Rung::Passthrough,
                "plain",
            ),
            (
                "ip literal rule",
                "93.184.216.34",
                443,
                Scheme::Connect,
                Rung::Passthrough,
                "ip",
            ),
            (
                "ip rule never matches a name",
                "example.com",
                443,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
            (
                "unknown host",
                "evil.example",
                443,
                Scheme::Connect,
                Rung::Deny,
                "default_rung",
            ),
        ];
        for (case, host, port, scheme, rung, id) in cases {
            let d = p.decide(&Host::parse(host).unwrap(), *port, *scheme);
            assert_eq!((d.rung, &*d.rule_id), (*rung, *id), "case `{case}`");
        }
    }

    #[test]
    fn resolvable_table() {
        let p = policy();
        let open = Policy::new(
            vec![
                rule("evil", "evil.example", None, Rung::Deny),
                rule("evil-sub", "*.evil.example", None, Rung::Deny),
                rule("smtp", "mail.example", Some(vec![25]), Rung::Deny),
                rule("ok", "ok.evil.example", None, Rung::Passthrough),
            ],
            Rung::Passthrough,
        );
        // (case, policy, host, resolvable, rule id of the decision)
        let cases: &[(&str, &Policy, &str, bool, &str)] = &[
            ("bump rule", &p, "api.openai.com", true, "openai"),
            ("wildcard passthrough", &p, "a.b.pypi.org", true, "pypi"),
            (
                "exact deny beats wildcard",
                &p,
                "files.pypi.org",
                false,
                "files",
            ),
            (
                "wildcard does not cover apex",
                &p,
                "pypi.org",
                false,
                "default_rung",
            ),
            ("explicit ports count", &p, "x.corp.example", true, "corp"),
            (
                "deeper deny, shallower rule on another port",
                &p,
                "x.a.corp.example",
                true,
                "corp",
            ),
            ("plain http rule", &p, "plain.example", true, "plain"),
            (
                "unknown name, default deny",
                &p,
                "evil.example",
                false,
                "default_rung",
            ),
            (
                "unknown name, default open",
                &open,
                "a.test",
                true,
                "default_rung",
            ),
            (
                "exact deny wins over default",
                &open,
                "evil.example",
                false,
                "evil",
            ),
            (
                "wildcard deny wins over default",
                &open,
                "x.evil.example",
                false,
                "evil-sub",
            ),
            (
                "allow below a wildcard deny",
                &open,
                "ok.evil.example",
                true,
                "ok",
            ),
            (
                "deny on one port leaves the default ports",
                &open,
                "mail.example",
                true,
                "default_rung",
            ),
        ];
        for (case, policy, host, ok, id) in cases {
            let r = policy.resolvable(&Host::parse(host).unwrap());
            let (got_ok, d) = match &r {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            assert_eq!((got_ok, &*d.rule_id), (*ok, *id), "case `{case}`");
            assert_eq!(d.rung == Rung::Deny, !got_ok, "case `{case}`");
        }
    }

    #[test]
    fn exact_names() {
        let p = policy();
        let yes = |h: &str| p.names_exactly(&Host::parse(h).unwrap());
        assert!(yes("api.openai.com"));
        assert!(yes("files.pypi.org"));
        assert!(!yes("x.pypi.org"));
        assert!(!yes("93.184.216.34"));
        assert!(!yes("other.example"));
    }

    #[test]
    fn name_rule_does_not_match_its_address() {
        let p = Policy::new(
            vec![rule("n", "localhost", None, Rung::Passthrough)],
            Rung::Deny,
        );
        let d = p.decide(&Host::parse("127.0.0.1").unwrap(), 443, Scheme::Connect);
        assert_eq!(d.rung, Rung::Deny);
    }

    #[test]
    fn patterns_parse_and_refuse() {
        assert_eq!(
            HostPattern::parse("*.Example.COM.").unwrap(),
            HostPattern::Subdomains("example.com".into())
        );
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("*.10.0.0.1").is_err());
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Ip("::1".parse().unwrap())
        );
    }

    #[test]
    fn enumerable_bump_hosts() {
        let p = policy();
        let hosts: Vec<String> = p
            .enumerable_bump_patterns()
            .unwrap()
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(hosts, vec!["api.openai.com"]);
        let open = Policy::new(vec![], Rung::Bump);
        assert!(open.enumerable_bump_patterns().is_none());
    }
}
