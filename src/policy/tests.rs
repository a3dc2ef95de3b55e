//! Table tests of the policy: connection-level decisions per rule set, the guest resolver's
//! view, profiles per sandbox, request-level rules and report mode.

use super::*;
use crate::net::host::Host;

fn set(rules: Vec<Rule>, default_rung: Rung) -> RuleSet {
    RuleSet::new(rules, default_rung, Mode::Enforce)
}

fn rule(id: &str, pattern: &str, ports: Option<Vec<u16>>, rung: Rung) -> Rule {
    Rule {
        id: Arc::from(id),
        pattern: HostPattern::parse(pattern).unwrap(),
        ports,
        rung,
        credential: None,
        require_handle: false,
        requests: RequestRules::default(),
        mode: None,
    }
}

fn policy() -> RuleSet {
    set(
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
    let open = set(
        vec![
            rule("evil", "evil.example", None, Rung::Deny),
            rule("evil-sub", "*.evil.example", None, Rung::Deny),
            rule("smtp", "mail.example", Some(vec![25]), Rung::Deny),
            rule("ok", "ok.evil.example", None, Rung::Passthrough),
        ],
        Rung::Passthrough,
    );
    // (case, policy, host, resolvable, rule id of the decision)
    let cases: &[(&str, &RuleSet, &str, bool, &str)] = &[
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
    let p = set(
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
    let open = set(vec![], Rung::Bump);
    assert!(open.enumerable_bump_patterns().is_none());
}

type DenySpec<'a> = (Option<&'a [&'a str]>, Option<&'a [&'a str]>);

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn patterns(v: &[&str]) -> Vec<path::PathPattern> {
    v.iter()
        .map(|p| path::PathPattern::parse(p).unwrap())
        .collect()
}

fn bump_rule(
    id: &str,
    host: &str,
    methods: Option<&[&str]>,
    paths: Option<&[&str]>,
    deny: &[DenySpec<'_>],
) -> Rule {
    let mut r = rule(id, host, None, Rung::Bump);
    r.requests = RequestRules {
        methods: methods.map(strings),
        paths: paths.map(patterns),
        deny: deny
            .iter()
            .map(|(m, p)| RequestMatch {
                methods: m.map(strings),
                paths: p.map(patterns),
            })
            .collect(),
    };
    r
}

fn tenants() -> Policy {
    let top = set(
        vec![rule("pypi-top", "*.pypi.org", None, Rung::Passthrough)],
        Rung::Deny,
    );
    let mut soft = rule("soft", "soft.example", None, Rung::Deny);
    soft.mode = Some(Mode::Report);
    let profiles = [
        (
            "agents",
            RuleSet::new(
                vec![
                    bump_rule(
                        "openai",
                        "api.openai.com",
                        Some(&["GET", "POST"]),
                        Some(&["/v1/"]),
                        &[],
                    ),
                    bump_rule(
                        "github",
                        "github.com",
                        Some(&["GET", "POST"]),
                        None,
                        &[(None, Some(&["/*/*/git-receive-pack"]))],
                    ),
                    rule("pypi", "*.pypi.org", None, Rung::Passthrough),
                ],
                Rung::Deny,
                Mode::Enforce,
            ),
        ),
        (
            "ci",
            RuleSet::new(
                vec![
                    rule("crates", "*.crates.io", None, Rung::Passthrough),
                    bump_rule("gh-read", "github.com", Some(&["GET"]), None, &[]),
                ],
                Rung::Deny,
                Mode::Enforce,
            ),
        ),
        (
            "trial",
            RuleSet::new(
                vec![bump_rule(
                    "openai",
                    "api.openai.com",
                    None,
                    Some(&["/v1/"]),
                    &[],
                )],
                Rung::Deny,
                Mode::Report,
            ),
        ),
        (
            "mixed",
            RuleSet::new(
                vec![rule("ok", "ok.example", None, Rung::Passthrough), soft],
                Rung::Deny,
                Mode::Enforce,
            ),
        ),
    ]
    .into_iter()
    .map(|(n, s)| (Arc::from(n), s))
    .collect();
    Policy::new(top, profiles)
}

/// How a (sandbox, host, port, method, path) tuple comes out: `allow`, `deny:<what>` or
/// `would:<what>`.
fn verdict(d: &Decision, v: &RequestVerdict) -> String {
    if d.rung == Rung::Deny {
        return "deny:destination".into();
    }
    if d.would_deny {
        return "would:destination".into();
    }
    match v {
        RequestVerdict::Allow => "allow".into(),
        RequestVerdict::Deny(r) => format!("deny:{}", r.what.as_str().trim_end_matches("_denied")),
        RequestVerdict::WouldDeny(r) => {
            format!("would:{}", r.what.as_str().trim_end_matches("_denied"))
        }
    }
}

#[test]
fn sandbox_request_table() {
    let p = tenants();
    let sbx1 = Some(Who {
        sandbox: "sbx-1",
        profile: "agents",
    });
    let ci7 = Some(Who {
        sandbox: "ci-7",
        profile: "ci",
    });
    let trial = Some(Who {
        sandbox: "sbx-t",
        profile: "trial",
    });
    let mixed = Some(Who {
        sandbox: "sbx-m",
        profile: "mixed",
    });
    let lost = Some(Who {
        sandbox: "sbx-x",
        profile: "removed",
    });
    type Case<'a> = (
        &'a str,
        Option<Who<'a>>,
        &'a str,
        &'a str,
        &'a str,
        Rung,
        &'a str,
        &'a str,
    );
    // (case, who, host, method, path, rung, rule id, verdict); port 443 over CONNECT.
    let cases: &[Case<'_>] = &[
        (
            "nobody: top-level rule",
            None,
            "files.pypi.org",
            "GET",
            "/",
            Rung::Passthrough,
            "pypi-top",
            "allow",
        ),
        (
            "nobody: profile destinations are not top-level",
            None,
            "api.openai.com",
            "GET",
            "/v1/models",
            Rung::Deny,
            "default_rung",
            "deny:destination",
        ),
        (
            "agents: allowed method and path",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/models",
            Rung::Bump,
            "openai",
            "allow",
        ),
        (
            "agents: POST allowed",
            sbx1,
            "api.openai.com",
            "POST",
            "/v1/chat/completions?x=1",
            Rung::Bump,
            "openai",
            "allow",
        ),
        (
            "agents: method outside the list",
            sbx1,
            "api.openai.com",
            "DELETE",
            "/v1/files/1",
            Rung::Bump,
            "openai",
            "deny:method",
        ),
        (
            "agents: path outside the prefix",
            sbx1,
            "api.openai.com",
            "GET",
            "/v2/models",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: prefix needs the segment boundary",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: ..; escapes the prefix",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/..;/admin",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: encoded dots escape the prefix",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/%2e%2e/admin",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: mixed-case encoded dots",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/%2E%2e/admin",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: encoded slash is ambiguous",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/%2F../admin",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: dot segment inside the prefix",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/./models",
            Rung::Bump,
            "openai",
            "allow",
        ),
        (
            "agents: `;` kept by nginx leaves the prefix",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1;x/models",
            Rung::Bump,
            "openai",
            "deny:path",
        ),
        (
            "agents: `;` inside the prefix either way",
            sbx1,
            "api.openai.com",
            "GET",
            "/v1/models;x",
            Rung::Bump,
            "openai",
            "allow",
        ),
        (
            "agents: git push hidden behind `;`",
            sbx1,
            "github.com",
            "POST",
            "/org/repo.git/git-receive-pack;x",
            Rung::Bump,
            "github",
            "deny:path",
        ),
        (
            "agents: git fetch",
            sbx1,
            "github.com",
            "POST",
            "/org/repo.git/git-upload-pack",
            Rung::Bump,
            "github",
            "allow",
        ),
        (
            "agents: git push refused",
            sbx1,
            "github.com",
            "POST",
            "/org/repo.git/git-receive-pack",
            Rung::Bump,
            "github",
            "deny:path",
        ),
        (
            "agents: git push through a dot segment",
            sbx1,
            "github.com",
            "POST",
            "/org/repo.git/./git-receive-pack",
            Rung::Bump,
            "github",
            "deny:path",
        ),
        (
            "agents: git push with encoded name",
            sbx1,
            "github.com",
            "POST",
            "/org/repo.git/git-receive%2Dpack",
            Rung::Bump,
            "github",
            "deny:path",
        ),
        (
            "agents: other profile's destination",
            sbx1,
            "x.crates.io",
            "GET",
            "/",
            Rung::Deny,
            "default_rung",
            "deny:destination",
        ),
        (
            "ci: read-only github refuses POST",
            ci7,
            "github.com",
            "POST",
            "/org/repo.git/git-upload-pack",
            Rung::Bump,
            "gh-read",
            "deny:method",
        ),
        (
            "ci: GET allowed",
            ci7,
            "github.com",
            "GET",
            "/org/repo.git/info/refs",
            Rung::Bump,
            "gh-read",
            "allow",
        ),
        (
            "ci: not its destination",
            ci7,
            "api.openai.com",
            "GET",
            "/v1/models",
            Rung::Deny,
            "default_rung",
            "deny:destination",
        ),
        (
            "ci: its own passthrough",
            ci7,
            "static.crates.io",
            "GET",
            "/",
            Rung::Passthrough,
            "crates",
            "allow",
        ),
        (
            "report profile: path would be denied",
            trial,
            "api.openai.com",
            "GET",
            "/v2/models",
            Rung::Bump,
            "openai",
            "would:path",
        ),
        (
            "report profile: destination would be denied",
            trial,
            "evil.example",
            "GET",
            "/",
            Rung::Passthrough,
            "default_rung",
            "would:destination",
        ),
        (
            "report destination in an enforce profile",
            mixed,
            "soft.example",
            "GET",
            "/",
            Rung::Passthrough,
            "soft",
            "would:destination",
        ),
        (
            "enforce profile default",
            mixed,
            "other.example",
            "GET",
            "/",
            Rung::Deny,
            "default_rung",
            "deny:destination",
        ),
        (
            "unknown profile allows nothing",
            lost,
            "files.pypi.org",
            "GET",
            "/",
            Rung::Deny,
            "unknown_profile",
            "deny:destination",
        ),
    ];
    for (case, who, host, method, path, rung, id, want) in cases {
        let (d, v) = p.evaluate(
            *who,
            &Host::parse(host).unwrap(),
            443,
            Scheme::Connect,
            method,
            path,
        );
        assert_eq!(
            (d.rung, &*d.rule_id, verdict(&d, &v).as_str()),
            (*rung, *id, *want),
            "case `{case}`"
        );
    }
}

#[test]
fn profiles_count_for_bump_coverage() {
    let p = tenants();
    assert!(p.has_bump());
    let mut hosts: Vec<String> = p
        .enumerable_bump_patterns()
        .unwrap()
        .iter()
        .map(|h| h.to_string())
        .collect();
    hosts.sort();
    assert_eq!(hosts, vec!["api.openai.com", "github.com"]);
}

#[test]
fn report_mode_resolves_would_deny_names() {
    let p = tenants();
    let trial = p.rules_for(Some(Who {
        sandbox: "t",
        profile: "trial",
    }));
    assert!(
        trial
            .resolvable(&Host::parse("evil.example").unwrap())
            .is_ok()
    );
    let agents = p.rules_for(Some(Who {
        sandbox: "a",
        profile: "agents",
    }));
    assert!(
        agents
            .resolvable(&Host::parse("evil.example").unwrap())
            .is_err()
    );
}

#[test]
fn an_exact_rule_off_its_ports_leaves_the_wildcards() {
    let p = set(
        vec![
            rule("wild", "*.corp.example", Some(vec![443]), Rung::Passthrough),
            rule("admin", "admin.corp.example", Some(vec![8443]), Rung::Deny),
            rule(
                "admin-too",
                "admin.corp.example",
                Some(vec![8443]),
                Rung::Bump,
            ),
        ],
        Rung::Deny,
    );
    let host = Host::parse("admin.corp.example").unwrap();
    assert_eq!(&*p.decide(&host, 443, Scheme::Connect).rule_id, "wild");
    // The first written of equal exact rules wins.
    assert_eq!(&*p.decide(&host, 8443, Scheme::Connect).rule_id, "admin");
    let ip = set(
        vec![rule("ip", "10.0.0.1", None, Rung::Passthrough)],
        Rung::Deny,
    );
    let d = ip.decide(&Host::parse("10.0.0.1").unwrap(), 443, Scheme::Connect);
    assert_eq!(&*d.rule_id, "ip");
}
