//! External handle issuers (`fleet.handle_issuers`): handles minted by a platform's control
//! plane with its own Ed25519 key are redeemed by an edge that lists the issuer. The minters
//! are `tests/it/handle_minter.py` (Python, written from `docs/handle-format.md` alone) and
//! `egress-edge handle mint --issuer-key`; keys come from `egress-edge handle keygen`. The key
//! is chosen by issuer: another issuer's key, an unlisted key or an unknown issuer name is
//! `handle_invalid`; expiry and revocation apply as to the edge's own handles; a reload
//! rotates the keys.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::*;
use crate::inject::{capture_logs, leak_scan};

const BIN: &str = env!("CARGO_BIN_EXE_egress-edge");
const SECRET: &str = "sk-issuer-SECRET7";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `egress-edge handle keygen --out DIR/NAME`: the private key path (the public one is
/// `NAME.pub` beside it).
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    run(Command::new(BIN)
        .args(["handle", "keygen", "--out"])
        .arg(&key));
    key
}

fn public(key: &Path) -> String {
    std::fs::read_to_string(format!("{}.pub", key.display())).unwrap()
}

/// A handle from the Python minter.
fn py_mint(key: &Path, issuer: &str, extra: &[&str]) -> String {
    run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/handle_minter.py"
        ))
        .arg("--key")
        .arg(key)
        .args(["--issuer", issuer, "--credential", "api-key"])
        .args(extra))
}

/// The handle's id (bytes 9..25 of its payload) as the admin API takes it.
fn handle_id(handle: &str) -> String {
    let payload = handle
        .strip_prefix("eeh_")
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    bytes[9..25].iter().map(|b| format!("{b:02x}")).collect()
}

struct Env {
    dir: tempfile::TempDir,
    up: std::net::SocketAddr,
    seen: std::sync::Arc<Seen>,
    proxy: Proxy,
}

impl Env {
    /// curl through the bump with `handle` as a bearer token: (status, error code, output).
    async fn redeem(&self, handle: &str) -> (u16, Option<String>, String) {
        let args = vec![
            "-x".to_owned(),
            self.proxy.url(),
            "--cacert".into(),
            self.proxy.bump_ca_path().display().to_string(),
            "-D".into(),
            "-".into(),
            "-H".into(),
            format!("Authorization: Bearer {handle}"),
            format!("https://api.test:{}/small", self.up.port()),
        ];
        let (code, out, err) = curl_async(args).await;
        assert_eq!(code, 0, "{err}");
        let (status, error) = final_status(&out);
        (status, error, out)
    }

    /// The `Authorization` the upstream received last.
    fn upstream_authorization(&self) -> String {
        let seen = self.seen.requests.lock().unwrap();
        let (_, headers) = seen.last().expect("no request reached the upstream");
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Rewrites the issuer key file `control.pub` and reloads the config.
    fn rotate(&self, pems: &[String]) {
        std::fs::write(self.dir.path().join("control.pub"), pems.concat()).unwrap();
        self.proxy
            .reloader
            .reload_file(&self.proxy.config_path)
            .unwrap();
    }
}

async fn env(control: &Path, other: &Path) -> Env {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("issuers upstream CA");
    let leaf = pki.leaf(&["api.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        &format!("secrets:\n  api-key: {{ value: {SECRET} }}\n"),
    );
    std::fs::copy(pki.ca_path(), dir.path().join("up-ca.pem")).unwrap();
    std::fs::write(dir.path().join("control.pub"), public(control)).unwrap();
    std::fs::write(dir.path().join("other.pub"), public(other)).unwrap();
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1 }} }}
secrets: {{ file: {secrets} }}
fleet:
  handle_issuers:
    - {{ id: control, public_key: {d}/control.pub }}
    - {{ id: other, public_key: {d}/other.pub }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: api-key }}, require_handle: true }}
",
        ca = dir.path().join("up-ca.pem").display(),
        secrets = secrets.display(),
        d = dir.path().display(),
        port = up.port(),
    );
    let proxy = Proxy::start(&yaml).await;
    Env {
        dir,
        up,
        seen,
        proxy,
    }
}

#[tokio::test]
async fn handles_from_a_listed_issuer_are_redeemed_and_the_key_is_chosen_by_issuer() {
    let keys = tempfile::tempdir().unwrap();
    let control = keygen(keys.path(), "control.key");
    let other = keygen(keys.path(), "other.key");
    let unlisted = keygen(keys.path(), "unlisted.key");
    let env = env(&control, &other).await;
    let mut handles = Vec::new();
    let mut bodies = Vec::new();

    // Minted in Python from the spec, and by the CLI: both redeemed, the secret injected.
    let from_python = py_mint(&control, "control", &["--host", "api.test"]);
    let from_cli = run(Command::new(BIN)
        .args([
            "handle",
            "mint",
            "--credential",
            "api-key",
            "--issuer",
            "control",
        ])
        .arg("--issuer-key")
        .arg(&control));
    for h in [&from_python, &from_cli] {
        let (status, code, out) = env.redeem(h).await;
        assert_eq!((status, code.as_deref()), (200, None), "{out}");
        assert_eq!(env.upstream_authorization(), format!("Bearer {SECRET}"));
        handles.push(h.clone());
        bodies.push(out);
    }

    // The audit event names the issuer.
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string();
    assert!(
        logs.lines()
            .any(|l| l.contains(r#""issuer":"control""#) && l.contains(r#""outcome":"redeemed""#)),
        "no audit event naming the issuer"
    );

    // The key is chosen by the issuer named in the handle, never by key id alone.
    let refused = [
        (
            "names another listed issuer",
            py_mint(&control, "other", &[]),
        ),
        ("another issuer's key", py_mint(&other, "control", &[])),
        ("an unlisted key", py_mint(&unlisted, "control", &[])),
        ("an unknown issuer", py_mint(&unlisted, "stranger", &[])),
    ];
    for (case, h) in &refused {
        let (status, code, out) = env.redeem(h).await;
        assert_eq!(
            (status, code.as_deref()),
            (403, Some("handle_invalid")),
            "{case}: {out}"
        );
        handles.push(h.clone());
        bodies.push(out);
    }

    // Expiry and revocation hold for issuers' handles as for the edge's own.
    let expired = py_mint(
        &control,
        "control",
        &["--ttl", "60", "--iat-offset", "-120"],
    );
    let (_, code, _) = env.redeem(&expired).await;
    assert_eq!(code.as_deref(), Some("handle_expired"));
    let revoked = py_mint(&control, "control", &[]);
    assert_eq!(env.redeem(&revoked).await.0, 200);
    let (status, body) = env
        .proxy
        .post(
            "/v1/handles/revoke",
            &format!(r#"{{"id":"{}"}}"#, handle_id(&revoked)),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, code, _) = env.redeem(&revoked).await;
    assert_eq!(code.as_deref(), Some("handle_revoked"));
    handles.extend([expired, revoked]);

    // /v1/config shows the issuers and their key ids.
    let (_, _, cfg) = http_get(env.proxy.admin, "/v1/config", &[]).await;
    let cfg = json(&cfg);
    assert_eq!(cfg["fleet"]["handle_issuers"][0]["id"], "control");
    assert_eq!(
        cfg["fleet"]["handle_issuers"][0]["key_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Rotation: the new key joins the file (both valid), then the old one leaves.
    let next = keygen(keys.path(), "next.key");
    env.rotate(&[public(&control), public(&next)]);
    let from_next = py_mint(&next, "control", &[]);
    let from_old = py_mint(&control, "control", &[]);
    assert_eq!(env.redeem(&from_next).await.0, 200);
    assert_eq!(env.redeem(&from_old).await.0, 200);
    env.rotate(&[public(&next)]);
    assert_eq!(env.redeem(&from_next).await.0, 200);
    let (_, code, _) = env.redeem(&from_old).await;
    assert_eq!(code.as_deref(), Some("handle_invalid"));
    handles.extend([from_next, from_old]);

    let needles: Vec<&str> = handles.iter().map(String::as_str).chain([SECRET]).collect();
    leak_scan(&env.proxy, &needles, &bodies).await;
}

#[test]
fn an_unreadable_or_malformed_issuer_key_refuses_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = |issuers: &str| {
        format!(
            "state_dir: {}\nfleet:\n  handle_issuers:\n{issuers}",
            dir.path().display()
        )
    };
    let bad = write(dir.path(), "bad.pub", "not a key\n");
    let key = keygen(dir.path(), "k.key");
    let good = format!("{}.pub", key.display());
    let cases = [
        (
            "    - { id: control, public_key: /nonexistent/control.pub }\n".to_owned(),
            "fleet.handle_issuers[0].public_key",
        ),
        (
            format!("    - {{ id: control, public_key: {} }}\n", bad.display()),
            "fleet.handle_issuers[0].public_key",
        ),
        (
            format!("    - {{ id: 'has space', public_key: {good} }}\n"),
            "fleet.handle_issuers[0].id",
        ),
        (
            format!(
                "    - {{ id: control, public_key: {good} }}\n    - {{ id: control, public_key: {good} }}\n"
            ),
            "fleet.handle_issuers[1].id",
        ),
        (
            format!("    - {{ id: control, public_key: {good}, trust: all }}\n"),
            "trust",
        ),
        (
            format!("    - {{ id: control, public_key: {good}, public_key_sds: k }}\n"),
            "fleet.handle_issuers[0]: give exactly one of public_key",
        ),
        (
            "    - { id: control }\n".to_owned(),
            "fleet.handle_issuers[0]: give exactly one of public_key",
        ),
        (
            "    - { id: control, public_key_sds: control-keys }\n".to_owned(),
            "fleet.handle_issuers[0].public_key_sds",
        ),
    ];
    for (issuers, located) in cases {
        let e = egress_edge::config::parse_str(&config(&issuers), "test.yaml")
            .err()
            .unwrap_or_else(|| panic!("accepted: {issuers}"))
            .to_string();
        assert!(e.contains(located), "{issuers}: {e}");
    }
    assert!(
        egress_edge::config::parse_str(
            &config(&format!("    - {{ id: control, public_key: {good} }}\n")),
            "test.yaml"
        )
        .is_ok()
    );
}

/// The secrets file `sds serve` reads: the credential and the issuer's current public keys.
fn sds_secrets(path: &Path, keys: &str) {
    let indented: String = keys.lines().map(|l| format!("      {l}\n")).collect();
    std::fs::write(
        path,
        format!(
            "secrets:\n  api-key: {{ value: {SECRET} }}\n  control-keys:\n    value: |\n{indented}"
        ),
    )
    .unwrap();
}

/// Issuer keys delivered over SDS (`public_key_sds`) by a real `sds serve`: the control plane
/// publishes only its current key; a key it drops stays trusted for `fleet.rotation_overlap`,
/// then stops; a value that is not a key bundle is refused and the last good keys stay.
#[tokio::test]
async fn issuer_keys_over_sds_rotate_with_an_overlap_and_keep_the_last_good_set() {
    capture_logs();
    let keys = tempfile::tempdir().unwrap();
    let (old, new) = (
        keygen(keys.path(), "old.key"),
        keygen(keys.path(), "new.key"),
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("issuers upstream CA");
    let leaf = pki.leaf(&["api.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    std::fs::copy(pki.ca_path(), dir.path().join("up-ca.pem")).unwrap();
    let secrets = dir.path().join("secrets.yaml");
    sds_secrets(&secrets, &public(&old));
    let sds = Sds::start(&secrets).await;
    let sds_addr = sds.addr;
    const OVERLAP: Duration = Duration::from_secs(5);
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1 }} }}
secrets:
  sds: {{ target: 'http://{sds_addr}', node_id: test-edge, initial_fetch_timeout: 5s }}
fleet:
  rotation_overlap: {overlap}s
  handle_issuers:
    - {{ id: control, public_key_sds: control-keys }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: api-key }}, require_handle: true }}
",
        ca = dir.path().join("up-ca.pem").display(),
        port = up.port(),
        overlap = OVERLAP.as_secs(),
    );
    let proxy = Proxy::start(&yaml).await;
    let env = Env {
        dir,
        up,
        seen,
        proxy,
    };
    let (status, code, out) = env.redeem(&py_mint(&old, "control", &[])).await;
    assert_eq!((status, code.as_deref()), (200, None), "{out}");
    assert_eq!(env.upstream_authorization(), format!("Bearer {SECRET}"));
    let (status, code, _) = env.redeem(&py_mint(&new, "control", &[])).await;
    assert_eq!((status, code.as_deref()), (403, Some("handle_invalid")));

    // The control plane rotates: only the new key is published.
    sds_secrets(&secrets, &public(&new));
    let t0 = Instant::now();
    loop {
        if env.redeem(&py_mint(&new, "control", &[])).await.0 == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the new key never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let applied = Instant::now();
    // Within the overlap the old key's handles still work (fresh ones: no cache involved)...
    let from_old = py_mint(&old, "control", &[]);
    assert_eq!(env.redeem(&from_old).await.0, 200, "within the overlap");
    assert!(applied.elapsed() < OVERLAP, "too slow to test the overlap");
    // ...and a reload with `rotation_overlap: 0s` (the emergency path for a compromised key)
    // ends it at once, cached verification included.
    let text = std::fs::read_to_string(&env.proxy.config_path).unwrap();
    let text = text.replace(
        &format!("rotation_overlap: {}s", OVERLAP.as_secs()),
        "rotation_overlap: 0s",
    );
    std::fs::write(&env.proxy.config_path, text).unwrap();
    env.proxy
        .reloader
        .reload_file(&env.proxy.config_path)
        .unwrap();
    let (_, code, _) = env.redeem(&from_old).await;
    assert_eq!(code.as_deref(), Some("handle_invalid"));
    let (_, code, _) = env.redeem(&py_mint(&old, "control", &[])).await;
    assert_eq!(code.as_deref(), Some("handle_invalid"));

    // A value that is not a key bundle is refused; the last good key stays in force.
    let before = env.proxy.metrics().await;
    let version = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("egress_edge_secret_version{") && l.contains("control-keys"))
            .map(str::to_owned)
    };
    sds_secrets(&secrets, "not a public key");
    let t0 = Instant::now();
    while version(&env.proxy.metrics().await) == version(&before) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the update never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.redeem(&py_mint(&new, "control", &[])).await.0, 200);
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("issuer key update refused"),
        "no event for the refused update"
    );
    sds.stop().await;
}
