//! The egress ladder decision: which rung a destination gets, by which rule, for whom.
//!
//! [`Policy::decide`] is a pure function of the policy, the asking sandbox ([`Who`]: its
//! profile, or the top-level rules for a connection no sandbox claims), the normalized host,
//! the port and the scheme; [`Decision::request`] then judges each request of a bumped
//! destination by method and normalised path, and [`Policy::evaluate`] is the two in one:
//! (sandbox, host, port, method, path) → verdict. Nothing here reads a clock, resolves a name
//! or opens a socket. The resolved-address check is not here — it happens in the dialer, at the
//! moment of connecting, so the address that was vetted is the address that is used; nor are
//! handles (the credential stage): report mode never softens either.
//!
//! Report mode (a profile's or a destination's `mode: report`): a decision that would deny
//! comes back allowed (a deny rung becomes `passthrough`) and marked `would_deny`, so the
//! caller logs and counts it and lets the unit through.
//!
//! Matching: a rule matches when its host pattern covers the host and its ports cover the port
//! (no `ports` means 443 for CONNECT and 80 for plain HTTP). Among matching rules the most
//! specific host pattern wins (exact name or address, then the longest `*.suffix`); ties go to
//! the rule written first. Nothing matching means `default_rung`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod credential;
mod host_pattern;
pub mod path;
mod rule;
#[cfg(test)]
mod tests;

pub use credential::Credential;
pub use host_pattern::HostPattern;
pub use rule::{Denied, Mode, RequestDenial, RequestMatch, RequestRules, Rule};

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
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Connect => 443,
            Scheme::Http => 80,
        }
    }
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    MatchedRule,
    DefaultRung,
}

/// The sandbox a decision is for: its id and the profile it runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who<'a> {
    pub sandbox: &'a str,
    pub profile: &'a str,
}

/// The outcome of [`Policy::decide`].
#[derive(Clone, Debug)]
pub struct Decision {
    /// The rung to carry the unit on; never `deny` when `would_deny` is set.
    pub rung: Rung,
    /// The rule that matched; `None` for the default rung.
    pub rule: Option<Arc<Rule>>,
    pub rule_id: Arc<str>,
    pub reason: Reason,
    /// The mode the decision was taken in (the rule's, else the profile's).
    pub mode: Mode,
    /// Report mode let through what enforce mode would have denied.
    pub would_deny: bool,
}

/// What the request-level rules say about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    Allow,
    Deny(RequestDenial),
    /// Report mode: logged and counted, then forwarded.
    WouldDeny(RequestDenial),
}

impl Decision {
    /// True when both decisions come from the same rule (or both from the default rung).
    pub fn same_rule(&self, other: &Decision) -> bool {
        let same = match (&self.rule, &other.rule) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same && self.rung == other.rung
    }

    /// Judges one request of this destination by the matched rule's methods, paths and deny
    /// entries (`target`: the request-target's path and query).
    pub fn request(&self, method: &str, target: &str) -> RequestVerdict {
        let Some(rule) = &self.rule else {
            return RequestVerdict::Allow;
        };
        match rule.requests.check(&self.rule_id, method, target) {
            Ok(()) => RequestVerdict::Allow,
            Err(d) if self.mode == Mode::Report => RequestVerdict::WouldDeny(d),
            Err(d) => RequestVerdict::Deny(d),
        }
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

/// One list of destination rules with its default rung and mode: the top-level policy, or a
/// profile.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    /// Indexes of the rules with an exact name or address, by host, in written order: an exact
    /// pattern beats every wildcard, so a host found here needs no scan.
    exact: HashMap<Host, Vec<usize>>,
    /// Indexes of the `*.suffix` rules, in written order.
    wildcards: Vec<usize>,
    default_rung: Rung,
    default_id: Arc<str>,
    mode: Mode,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>, default_rung: Rung, mode: Mode) -> RuleSet {
        let mut exact: HashMap<Host, Vec<usize>> = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.pattern {
                HostPattern::Exact(n) => exact.entry(Host::Name(n.clone())).or_default().push(i),
                HostPattern::Ip(ip) => exact.entry(Host::Ip(*ip)).or_default().push(i),
                HostPattern::Subdomains(_) => wildcards.push(i),
            }
        }
        RuleSet {
            rules: rules.into_iter().map(Arc::new).collect(),
            exact,
            wildcards,
            default_rung,
            default_id: Arc::from(DEFAULT_RULE_ID),
            mode,
        }
    }

    /// The index of the rule that decides `host:port`: the first exact rule covering the port,
    /// else the most specific covering wildcard (the first written among equals).
    fn matching(&self, host: &Host, port: u16, scheme: Scheme) -> Option<usize> {
        if let Some(i) = self.exact.get(host).and_then(|ix| {
            ix.iter()
                .copied()
                .find(|&i| self.rules[i].covers_port(port, scheme))
        }) {
            return Some(i);
        }
        let mut best: Option<(usize, usize)> = None;
        for &i in &self.wildcards {
            let rule = &self.rules[i];
            if !rule.pattern.matches(host) || !rule.covers_port(port, scheme) {
                continue;
            }
            let s = rule.pattern.specificity();
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn default_rung(&self) -> Rung {
        self.default_rung
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn decide(&self, host: &Host, port: u16, scheme: Scheme) -> Decision {
        let (rung, rule, rule_id, reason, mode) = match self.matching(host, port, scheme) {
            Some(i) => {
                let r = &self.rules[i];
                let mode = r.mode.unwrap_or(self.mode);
                (
                    r.rung,
                    Some(r.clone()),
                    r.id.clone(),
                    Reason::MatchedRule,
                    mode,
                )
            }
            None => (
                self.default_rung,
                None,
                self.default_id.clone(),
                Reason::DefaultRung,
                self.mode,
            ),
        };
        let would_deny = rung == Rung::Deny && mode == Mode::Report;
        Decision {
            rung: if would_deny { Rung::Passthrough } else { rung },
            rule,
            rule_id,
            reason,
            mode,
            would_deny,
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

/// The whole policy: the top-level rules (for connections no sandbox claims) and the named
/// profiles sandboxes run under.
#[derive(Clone, Debug)]
pub struct Policy {
    top: RuleSet,
    profiles: BTreeMap<Arc<str>, RuleSet>,
    /// For a sandbox whose profile is gone: nothing is allowed (fail closed).
    nothing: RuleSet,
}

impl Policy {
    pub fn new(top: RuleSet, profiles: BTreeMap<Arc<str>, RuleSet>) -> Policy {
        Policy {
            top,
            profiles,
            nothing: RuleSet {
                default_id: Arc::from("unknown_profile"),
                ..RuleSet::new(Vec::new(), Rung::Deny, Mode::Enforce)
            },
        }
    }

    /// The top-level rules.
    pub fn top(&self) -> &RuleSet {
        &self.top
    }

    pub fn profiles(&self) -> &BTreeMap<Arc<str>, RuleSet> {
        &self.profiles
    }

    pub fn has_profile(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    /// The rules `who` is judged by: its profile's, the top-level ones for nobody, and none
    /// at all for a profile this policy does not define.
    pub fn rules_for(&self, who: Option<Who<'_>>) -> &RuleSet {
        match who {
            None => &self.top,
            Some(w) => self.profiles.get(w.profile).unwrap_or(&self.nothing),
        }
    }

    /// Every rule set: the top level, then the profiles by name.
    pub fn rule_sets(&self) -> impl Iterator<Item = &RuleSet> {
        std::iter::once(&self.top).chain(self.profiles.values())
    }

    pub fn decide(&self, who: Option<Who<'_>>, host: &Host, port: u16, scheme: Scheme) -> Decision {
        self.rules_for(who).decide(host, port, scheme)
    }

    /// The connection-level decision and the request-level verdict in one: what happens to a
    /// `method` request for `target` on `host:port` from `who`.
    pub fn evaluate(
        &self,
        who: Option<Who<'_>>,
        host: &Host,
        port: u16,
        scheme: Scheme,
        method: &str,
        target: &str,
    ) -> (Decision, RequestVerdict) {
        let d = self.decide(who, host, port, scheme);
        let v = if d.rung == Rung::Bump {
            d.request(method, target)
        } else {
            RequestVerdict::Allow
        };
        (d, v)
    }

    /// True when some destination of some rule set could be bumped.
    pub fn has_bump(&self) -> bool {
        self.rule_sets().any(RuleSet::has_bump)
    }

    /// The finite set of bump host patterns over every rule set, or `None` when one of them
    /// bumps open-endedly.
    pub fn enumerable_bump_patterns(&self) -> Option<Vec<&HostPattern>> {
        let mut all = Vec::new();
        for set in self.rule_sets() {
            for p in set.enumerable_bump_patterns()? {
                if !all.contains(&p) {
                    all.push(p);
                }
            }
        }
        Some(all)
    }

    /// [`RuleSet::same_rule_for`] in `who`'s rules.
    pub fn same_rule_for(
        &self,
        who: Option<Who<'_>>,
        raw: &str,
        port: u16,
        decision: &Decision,
    ) -> Result<Host, OtherRule> {
        self.rules_for(who).same_rule_for(raw, port, decision)
    }

    /// Every rule of every rule set.
    pub fn all_rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rule_sets().flat_map(|s| s.rules.iter())
    }
}
