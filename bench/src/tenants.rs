//! Many tenants, generated: `profiles:` and `sandboxes:` config text for the `policy` and
//! `sandboxes` phases, and the lookups the `policy` phase asks. Everything is a function of
//! the sandbox's index and a seed (SplitMix64), so every run asks the same questions.
//!
//! Each profile has [`RULES`] destinations, a mix drawn from shared name pools (sandboxes
//! mostly reach the same services) and a few names of its own:
//!
//! | rules | what |
//! | --- | --- |
//! | 4 | exact passthrough names of the tenant's own (`api0.t17.tenants.example.net`) |
//! | 14 | exact passthrough names from a pool of 400; every 4th with `ports: [443, 8443]` |
//! | 12 | `*.suffix` passthrough wildcards from a pool of 200, one to three labels above `example.org`; every 3rd with `ports: [443, 8443]` |
//! | 7 | bump, exact, from a pool of 40: `methods: [GET, HEAD, POST]`, `paths: ['/v1/', '/api/*/repos/']`, two `deny` entries |
//! | 3 | bump, exact, same pool: `methods: [GET, POST]`, `deny: [{ paths: ['/*/*/git-receive-pack'] }]` |
//! | 4 | bump wildcards from a pool of 20: `paths: ['/']`, `deny: [{ methods: [DELETE, PUT] }]` |
//! | 4 | `rung: deny` names |
//! | 2 | `rung: deny, mode: report` names |
//!
//! Every 10th profile is `mode: report`; the default rung is `deny`. Sandbox `i` has the
//! source `10.a.b.c/32` for `i + 1` = `a·2¹⁶ + b·2⁸ + c`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// Destinations per profile.
pub const RULES: usize = 50;

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` ≥ 1), by multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// What a destination is, for picking lookups that hit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exact,
    Wildcard,
    Bump,
    /// `rung: deny`, enforced or reported.
    Deny,
}

/// One generated destination.
#[derive(Clone, Debug)]
pub struct Dest {
    /// The host pattern as written (`*.w3.example.org` for a wildcard).
    pub host: String,
    pub ports: Option<&'static [u16]>,
    pub kind: Kind,
    /// The rest of the flow mapping after `host` and `ports` (`rung: bump, methods: ...`).
    extra: &'static str,
}

const PORTS: &[u16] = &[443, 8443];

const BUMP_PATHS: &str = "rung: bump, methods: [GET, HEAD, POST], paths: ['/v1/', '/api/*/repos/'], \
     deny: [{ methods: [POST], paths: ['/v1/admin/'] }, { paths: ['/api/*/repos/*/git-receive-pack'] }]";
const BUMP_GIT: &str =
    "rung: bump, methods: [GET, POST], deny: [{ paths: ['/*/*/git-receive-pack'] }]";
const BUMP_WILD: &str = "rung: bump, paths: ['/'], deny: [{ methods: [DELETE, PUT] }]";

impl Dest {
    /// The destination as one YAML flow mapping.
    pub fn yaml(&self) -> String {
        let mut s = format!("{{ host: '{}'", self.host);
        if let Some(ports) = self.ports {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            let _ = write!(s, ", ports: [{}]", list.join(", "));
        }
        if !self.extra.is_empty() {
            let _ = write!(s, ", {}", self.extra);
        }
        s.push_str(" }");
        s
    }
}

/// The destinations of profile `i`: [`RULES`] of them, in the mix the module documents.
pub fn destinations(i: usize) -> Vec<Dest> {
    let mut out = Vec::with_capacity(RULES);
    let d = |host: String, ports: Option<&'static [u16]>, kind: Kind, extra: &'static str| Dest {
        host,
        ports,
        kind,
        extra,
    };
    for j in 0..4 {
        out.push(d(
            format!("api{j}.t{i}.tenants.example.net"),
            None,
            Kind::Exact,
            "",
        ));
    }
    // Strides coprime with the pool sizes keep a profile's picks distinct.
    for j in 4..18 {
        let k = (i * 101 + j * 37) % 400;
        let ports = (j % 4 == 0).then_some(PORTS);
        out.push(d(
            format!("h{k}.svc{}.example.com", k % 13),
            ports,
            Kind::Exact,
            "",
        ));
    }
    for j in 18..30 {
        let k = (i * 53 + j * 29) % 200;
        let host = match k % 3 {
            0 => format!("*.w{k}.example.org"),
            1 => format!("*.c{k}.cdn.example.org"),
            _ => format!("*.r{k}.eu.cloud.example.org"),
        };
        let ports = (j % 3 == 0).then_some(PORTS);
        out.push(d(host, ports, Kind::Wildcard, ""));
    }
    for j in 30..40 {
        let k = (i * 7 + j * 3) % 40;
        let extra = if j < 37 { BUMP_PATHS } else { BUMP_GIT };
        out.push(d(format!("b{k}.bump.example.com"), None, Kind::Bump, extra));
    }
    for j in 40..44 {
        let k = (i * 3 + j) % 20;
        out.push(d(
            format!("*.bw{k}.bump.example.com"),
            None,
            Kind::Bump,
            BUMP_WILD,
        ));
    }
    for j in 44..48 {
        let k = (i + j) % 100;
        out.push(d(
            format!("blocked{k}.example.com"),
            None,
            Kind::Deny,
            "rung: deny",
        ));
    }
    for j in 48..50 {
        let k = (i + j) % 100;
        out.push(d(
            format!("legacy{k}.example.com"),
            None,
            Kind::Deny,
            "rung: deny, mode: report",
        ));
    }
    out
}

pub fn profile_name(i: usize) -> String {
    format!("p{i:04}")
}

pub fn sandbox_id(i: usize) -> String {
    format!("s{i:04}")
}

/// Sandbox `i`'s source address.
pub fn source(i: usize) -> IpAddr {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00ff_ffff;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n))
}

/// One profile under `profiles:` (indented two spaces), with `lines` as its destinations.
pub fn profile_yaml(out: &mut String, name: &str, report: bool, lines: &[String]) {
    let _ = writeln!(out, "  {name}:");
    if report {
        out.push_str("    mode: report\n");
    }
    out.push_str("    destinations:\n");
    for l in lines {
        let _ = writeln!(out, "      - {l}");
    }
}

/// `profiles:` and `sandboxes:` for generated sandboxes `from..to` (one profile each), after
/// `extra_profiles` / `extra_sandboxes` (already indented), as config text.
pub fn tenants_yaml(from: usize, to: usize, extra_profiles: &str, extra_sandboxes: &str) -> String {
    let mut y = String::with_capacity((to - from) * RULES * 120);
    y.push_str("profiles:\n");
    y.push_str(extra_profiles);
    for i in from..to {
        let lines: Vec<String> = destinations(i).iter().map(Dest::yaml).collect();
        profile_yaml(&mut y, &profile_name(i), i % 10 == 9, &lines);
    }
    y.push_str("sandboxes:\n");
    y.push_str(extra_sandboxes);
    for i in from..to {
        let _ = writeln!(
            y,
            "  - {{ id: {}, profile: {}, sources: [{}/32] }}",
            sandbox_id(i),
            profile_name(i),
            source(i)
        );
    }
    y
}

/// A request a bumped destination sees: (method, request-target).
pub const REQUESTS: [(&str, &str); 9] = [
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/admin/users"),
    (
        "GET",
        "/api/acme/repos/widget/info/refs?service=git-upload-pack",
    ),
    ("POST", "/api/acme/repos/widget/git-receive-pack"),
    ("GET", "/other/thing"),
    ("GET", "/v1/%2e%2e/admin/users"),
    ("GET", "/v1/a;b/c"),
    ("DELETE", "/v1/files/7"),
];

/// What one policy question asks.
#[derive(Clone, Debug)]
pub struct Lookup {
    pub host: String,
    pub port: u16,
    pub method: &'static str,
    pub target: &'static str,
}

fn pick<'a>(dests: &'a [Dest], kind: Kind, rng: &mut Rng) -> Option<&'a Dest> {
    let n = dests.iter().filter(|d| d.kind == kind).count();
    if n == 0 {
        return None;
    }
    dests.iter().filter(|d| d.kind == kind).nth(rng.below(n))
}

/// A concrete host under a pattern: itself, or one or two labels under a wildcard.
fn host_under(pattern: &str, rng: &mut Rng) -> String {
    match pattern.strip_prefix("*.") {
        None => pattern.to_owned(),
        Some(suffix) if rng.below(4) == 0 => {
            format!("a{}.n{}.{suffix}", rng.below(100), rng.below(1000))
        }
        Some(suffix) => format!("n{}.{suffix}", rng.below(1000)),
    }
}

/// One question about a profile with `dests`: 30% exact names, 20% wildcards, 25% bump
/// destinations with a request from [`REQUESTS`], 5% deny/report names and 20% names no rule
/// matches (the default rung). The port is one the rule covers (443, or 8443 for half the
/// questions to a rule with `ports`).
pub fn lookup(dests: &[Dest], rng: &mut Rng) -> Lookup {
    let r = rng.below(100);
    let kind = match r {
        0..30 => Some(Kind::Exact),
        30..50 => Some(Kind::Wildcard),
        50..75 => Some(Kind::Bump),
        75..80 => Some(Kind::Deny),
        _ => None,
    };
    let (method, target) = REQUESTS[rng.below(REQUESTS.len())];
    let Some(d) = kind.and_then(|k| pick(dests, k, rng)) else {
        return Lookup {
            host: format!("m{}.unknown{}.example", rng.below(100_000), rng.below(50)),
            port: 443,
            method,
            target,
        };
    };
    let port = match d.ports {
        Some(ps) if rng.below(2) == 0 => ps[rng.below(ps.len())],
        _ => 443,
    };
    Lookup {
        host: host_under(&d.host, rng),
        port,
        method,
        target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_distinct_rules() {
        for i in [0, 1, 9, 999, 4321] {
            let d = destinations(i);
            assert_eq!(d.len(), RULES);
            let mut hosts: Vec<&str> = d.iter().map(|d| d.host.as_str()).collect();
            hosts.sort_unstable();
            hosts.dedup();
            assert_eq!(hosts.len(), RULES, "profile {i}");
        }
    }

    #[test]
    fn sources_are_distinct() {
        assert_eq!(source(0).to_string(), "10.0.0.1");
        assert_eq!(source(255).to_string(), "10.0.1.0");
        assert_ne!(source(1000), source(1001));
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(7);
        let mut hits = [0u32; 4];
        for _ in 0..40_000 {
            hits[r.below(4)] += 1;
        }
        assert!(
            hits.iter().all(|&h| (9_000..11_000).contains(&h)),
            "{hits:?}"
        );
    }
}
