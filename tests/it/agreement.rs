//! Startup, reload and `check-config` accept exactly the same configs: one CA-coverage check
//! and one snapshot builder serve all three. Name-constrained brought CAs, wildcard bump
//! rules, `default_rung: bump` and a generated CA whose constraints came from an earlier
//! policy are each judged the same way by all three paths.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use tokio::net::TcpListener;

use egress_edge::app::{App, BuildOptions, Listeners};
use egress_edge::config::parse_str;

/// Writes a CA (name-constrained to `permitted` DNS subtrees when non-empty) to `dir`.
fn write_ca(dir: &Path, name: &str, permitted: &[&str]) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if !permitted.is_empty() {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted
                .iter()
                .map(|n| GeneralSubtree::DnsName((*n).to_owned()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
    }
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn yaml(
    state: &Path,
    ca: Option<&(PathBuf, PathBuf)>,
    destinations: &str,
    default: &str,
) -> String {
    let ca = ca.map_or(String::new(), |(c, k)| {
        format!("ca: {{ cert: {}, key: {} }}\n", c.display(), k.display())
    });
    format!(
        "state_dir: {}\n{ca}destinations:\n{destinations}\ndefault_rung: {default}\n",
        state.display()
    )
}

/// Builds (and drops) an app from `text`: the startup path.
async fn startup(text: &str) -> Result<App, String> {
    let config = parse_str(text, "agreement.yaml").map_err(|e| e.to_string())?;
    let listeners = Listeners::new(TcpListener::bind("127.0.0.1:0").await.unwrap(), None);
    App::build(config, listeners, BuildOptions::default())
        .await
        .map_err(|e| e.to_string())
}

fn check_config(text: &str) -> Result<(), String> {
    let config = parse_str(text, "agreement.yaml").map_err(|e| e.to_string())?;
    egress_edge::app::check_files(&config).map_err(|e| e.to_string())
}

#[tokio::test]
async fn startup_reload_and_check_config_agree_on_brought_cas() {
    let dir = tempfile::tempdir().unwrap();
    let constrained = write_ca(dir.path(), "constrained", &["allowed.test", "corp.test"]);
    let narrow = write_ca(dir.path(), "narrow", &["a.corp.test"]);
    let open = write_ca(dir.path(), "open", &[]);
    let bump = |h: &str| format!("  - {{ host: '{h}', rung: bump }}");
    let pass = "  - { host: pass.test }".to_owned();
    // (what, CA, destinations, default rung, accepted)
    type Case<'a> = (&'a str, &'a (PathBuf, PathBuf), String, &'a str, bool);
    let cases: Vec<Case> = vec![
        ("no bump at all", &constrained, pass.clone(), "deny", true),
        (
            "exact bump host inside",
            &constrained,
            bump("allowed.test"),
            "deny",
            true,
        ),
        (
            "name below a permitted subtree",
            &constrained,
            bump("x.allowed.test"),
            "deny",
            true,
        ),
        (
            "wildcard inside",
            &constrained,
            bump("*.corp.test"),
            "deny",
            true,
        ),
        (
            "wildcard wider than the CA",
            &narrow,
            bump("*.corp.test"),
            "deny",
            false,
        ),
        (
            "exact bump host outside",
            &constrained,
            bump("other.test"),
            "deny",
            false,
        ),
        (
            "default bump, constrained CA",
            &constrained,
            pass.clone(),
            "bump",
            false,
        ),
        (
            "default bump, unconstrained CA",
            &open,
            pass.clone(),
            "bump",
            true,
        ),
        (
            "any bump host, unconstrained CA",
            &open,
            bump("other.test"),
            "deny",
            true,
        ),
    ];
    for (what, ca, dests, default, accepted) in cases {
        let state = tempfile::tempdir().unwrap();
        let text = yaml(state.path(), Some(ca), &dests, default);
        let started = startup(&text).await;
        let checked = check_config(&text);
        assert_eq!(
            started.is_ok(),
            accepted,
            "{what}: startup: {:?}",
            started.err()
        );
        assert_eq!(
            checked.is_ok(),
            accepted,
            "{what}: check-config: {checked:?}"
        );
        // Reload into a proxy running with the same CA and no bump rule.
        let base = startup(&yaml(state.path(), Some(ca), &pass, "deny"))
            .await
            .unwrap();
        let reloaded = base
            .reloader()
            .apply(parse_str(&text, "agreement.yaml").unwrap());
        assert_eq!(reloaded.is_ok(), accepted, "{what}: reload: {reloaded:?}");
        // And the same file reloaded into the proxy it started.
        if let Ok(app) = started {
            let again = app
                .reloader()
                .apply(parse_str(&text, "agreement.yaml").unwrap());
            assert!(again.is_ok(), "{what}: reload of the same file: {again:?}");
        }
    }
}

#[tokio::test]
async fn generated_ca_constraints_are_judged_alike() {
    let state = tempfile::tempdir().unwrap();
    let first = yaml(
        state.path(),
        None,
        "  - { host: allowed.test, rung: bump }",
        "deny",
    );
    let app = startup(&first).await.unwrap();
    // The generated CA is constrained to the first policy's bump hosts.
    let wider = yaml(
        state.path(),
        None,
        "  - { host: other.test, rung: bump }",
        "deny",
    );
    let reloaded = app.reloader().apply(parse_str(&wider, "w").unwrap());
    assert!(reloaded.is_err(), "reload accepted a host outside the CA");
    assert!(check_config(&wider).is_err(), "check-config accepted it");
    drop(app);
    assert!(startup(&wider).await.is_err(), "startup accepted it");
    // The same file the proxy started with reloads, checks and restarts cleanly.
    let app = startup(&first).await.unwrap();
    app.reloader()
        .apply(parse_str(&first, "f").unwrap())
        .unwrap();
    check_config(&first).unwrap();
}
