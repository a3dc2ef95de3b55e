//! Scoped handles and credential injection, end to end with real clients, plus secrets over
//! SDS from our own `sds serve`. From the first test here on, every log line of the test
//! binary (every module of `it`, not just this one) is captured and scanned: no secret value
//! and no whole handle may appear in logs, metrics or refusal bodies.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::*;

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = LogBuf(buf.clone());
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug,h2=info,hyper=info,rustls=info,tonic=info,tower=info")
            .with_writer(move || w.clone())
            .try_init();
        buf
    })
    .clone()
}

/// Asserts that none of `needles` appears in the logs, metrics or collected bodies.
pub(crate) async fn leak_scan(proxy: &Proxy, needles: &[&str], bodies: &[String]) {
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("egress_edge::access"),
        "log capture is not working"
    );
    let metrics = proxy.metrics().await;
    let (_, cfg) = (0, http_get(proxy.admin, "/v1/config", &[]).await.2);
    for n in needles {
        assert!(!logs.contains(n), "`{n}` leaked into logs");
        assert!(!metrics.contains(n), "`{n}` leaked into metrics");
        assert!(!cfg.contains(n), "`{n}` leaked into /v1/config");
        for b in bodies {
            assert!(!b.contains(n), "`{n}` leaked into a response body: {b}");
        }
    }
}

pub(crate) struct Env {
    pub(crate) up: std::net::SocketAddr,
    pub(crate) seen: Arc<Seen>,
    pub(crate) proxy: Proxy,
    secrets: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const SECRETS: &str = "secrets:
  openai-key: { value: sk-live-SECRET1 }
  other-key: { value: sk-other-SECRET9 }
  oauth-client: { values: { client_id: example-client, client_secret: cs-SECRET } }
";

pub(crate) async fn env() -> Env {
    capture_logs();
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&[
        "api.test",
        "plain.test",
        "strict.test",
        "oauth.test",
        "missing.test",
        "swap.test",
        "query.test",
    ]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"h2", b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write(dir.path(), "secrets.yaml", SECRETS);
    std::fs::copy(pki.ca_path(), dir.path().join("up-ca.pem")).unwrap();
    let port = up.port();
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1, plain.test: 127.0.0.1, strict.test: 127.0.0.1, oauth.test: 127.0.0.1, missing.test: 127.0.0.1, swap.test: 127.0.0.1, query.test: 127.0.0.1 }} }}
secrets: {{ file: {secrets}, initial_fetch_timeout: 1s }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: openai-key }} }}
  - {{ host: plain.test, ports: [{port}], rung: bump }}
  - {{ host: strict.test, ports: [{port}], credential: {{ secret: openai-key, header: x-api-key, format: '{{secret}}' }}, require_handle: true }}
  - {{ host: oauth.test, ports: [{port}], credential: {{ oauth2: {{ token_url: 'https://api.test:{port}/token', client: oauth-client }} }} }}
  - {{ host: missing.test, ports: [{port}], credential: {{ secret: not-delivered }} }}
  - {{ host: swap.test, ports: [{port}], credential: {{ secret: openai-key, headers: [x-api-key, authorization] }} }}
  - {{ host: query.test, ports: [{port}], credential: {{ secret: openai-key, query: key }} }}
",
        ca = dir.path().join("up-ca.pem").display(),
        secrets = secrets.display()
    );
    let proxy = Proxy::start(&yaml).await;
    Env {
        up,
        seen,
        proxy,
        secrets,
        _dir: dir,
    }
}

impl Env {
    /// curl through the bump; returns (status line + headers + body as printed by -D -).
    pub(crate) async fn get(&self, host: &str, path: &str, headers: &[&str]) -> String {
        let mut args: Vec<String> = vec![
            "-x".into(),
            self.proxy.url(),
            "--cacert".into(),
            self.proxy.bump_ca_path().display().to_string(),
            "-D".into(),
            "-".into(),
        ];
        for h in headers {
            args.push("-H".into());
            args.push((*h).to_owned());
        }
        args.push(format!("https://{host}:{}{path}", self.up.port()));
        let (code, out, err) = curl_async(args).await;
        assert_eq!(code, 0, "{err}");
        out
    }

    pub(crate) fn upstream_saw_no_handle(&self) {
        for (path, headers) in self.seen.requests.lock().unwrap().iter() {
            assert!(
                !path.to_ascii_lowercase().contains("eeh_"),
                "handle reached the upstream in {path}"
            );
            for (k, v) in headers {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes())
                        .to_ascii_lowercase()
                        .contains("eeh_"),
                    "handle reached the upstream in {k} on {path}"
                );
            }
        }
    }
}

impl Env {
    /// Header `name` of the last request the upstream received: what the destination saw,
    /// not its echo (the proxy redacts an echoed secret before the guest sees it).
    pub(crate) fn upstream_header(&self, name: &str) -> String {
        let seen = self.seen.requests.lock().unwrap();
        let (_, headers) = seen.last().expect("the upstream saw no request");
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    }

    /// Every value of header `name` the upstream received, oldest first.
    pub(crate) fn upstream_headers(&self, name: &str) -> Vec<String> {
        self.seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, h)| h.get(name))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The path and query of the last request the upstream received.
    pub(crate) fn upstream_path(&self) -> String {
        let seen = self.seen.requests.lock().unwrap();
        seen.last().map(|(p, _)| p.clone()).unwrap_or_default()
    }
}

pub(crate) fn error_code(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("x-egress-edge-error: "))
        .map(|s| s.trim().to_owned())
}

pub(crate) fn body_json(out: &str) -> serde_json::Value {
    let start = out.rfind("\r\n\r\n").map_or(0, |i| i + 4);
    json(&out[start..])
}

#[tokio::test]
async fn handle_is_swapped_for_the_secret_and_rotation_applies() {
    let env = env().await;
    let handle = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m","session":"sbx-1","host":"api.test"}"#)
        .await;
    assert!(handle.starts_with("eeh_"));
    let auth = format!("Authorization: Bearer {handle}");
    let out = env.get("api.test", "/headers", &[&auth]).await;
    assert_eq!(
        env.upstream_header("authorization"),
        "Bearer sk-live-SECRET1",
        "{out}"
    );
    env.upstream_saw_no_handle();
    // Rotate the secret in the file: the next request carries the new value.
    std::fs::write(
        &env.secrets,
        SECRETS.replace("sk-live-SECRET1", "sk-live-SECRET2"),
    )
    .unwrap();
    let mut rotated = false;
    for _ in 0..40 {
        env.get("api.test", "/headers", &[&auth]).await;
        let seen = env.upstream_header("authorization");
        assert!(seen == "Bearer sk-live-SECRET1" || seen == "Bearer sk-live-SECRET2");
        if seen == "Bearer sk-live-SECRET2" {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "rotation never applied");
    // Revoking a handle that was already redeemed takes effect on the next request.
    let (status, _) = env
        .proxy
        .post("/v1/handles/revoke", r#"{"session":"sbx-1"}"#)
        .await;
    assert_eq!(status, 204);
    let out = env.get("api.test", "/headers", &[&auth]).await;
    assert_eq!(error_code(&out).as_deref(), Some("handle_revoked"), "{out}");
    let m = env.proxy.metrics().await;
    assert!(
        m.contains("egress_edge_handle_redemptions_total{result=\"redeemed\"}"),
        "{m}"
    );
    // (The upstream's echo legitimately contains the secret: it is the destination.)
    leak_scan(
        &env.proxy,
        &["sk-live-SECRET1", "sk-live-SECRET2", &handle],
        &[],
    )
    .await;
}

#[tokio::test]
async fn every_refusal_of_the_handle_table() {
    let env = env().await;
    let mut bodies = Vec::new();
    let good = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m","session":"sbx-2"}"#)
        .await;
    // Tampered: flip one character of the signature.
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other = env
        .proxy
        .mint(r#"{"credentials":["other-key"],"ttl":"5m"}"#)
        .await;
    let wrong_host = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m","host":"elsewhere.test"}"#)
        .await;
    let revoked = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m","session":"sbx-doomed"}"#)
        .await;
    let (status, _) = env
        .proxy
        .post("/v1/handles/revoke", r#"{"session":"sbx-doomed"}"#)
        .await;
    assert_eq!(status, 204);
    let short = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"1s"}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "tampered",
            "api.test",
            format!("Authorization: Bearer {tampered}"),
            "handle_invalid",
        ),
        (
            "expired",
            "api.test",
            format!("Authorization: Bearer {short}"),
            "handle_expired",
        ),
        (
            "revoked by session",
            "api.test",
            format!("Authorization: Bearer {revoked}"),
            "handle_revoked",
        ),
        (
            "other credential",
            "api.test",
            format!("Authorization: Bearer {other}"),
            "handle_out_of_scope",
        ),
        (
            "host restriction",
            "api.test",
            format!("Authorization: Bearer {wrong_host}"),
            "handle_out_of_scope",
        ),
        (
            "destination without the credential",
            "plain.test",
            format!("Authorization: Bearer {good}"),
            "handle_out_of_scope",
        ),
        (
            "handle outside the binding header",
            "api.test",
            format!("X-Smuggle: {good}"),
            "handle_out_of_scope",
        ),
        (
            "require_handle without one",
            "strict.test",
            "x-api-key: sk-guess".to_owned(),
            "handle_required",
        ),
    ];
    for (case, host, header, code) in cases {
        let out = env.get(host, "/headers", &[&header]).await;
        assert!(
            out.contains("HTTP/2 403") || out.contains("HTTP/1.1 403"),
            "{case}: {out}"
        );
        assert_eq!(error_code(&out).as_deref(), Some(code), "{case}: {out}");
        let b = body_json(&out);
        assert_eq!(b["error"], code);
        bodies.push(out);
    }
    assert!(
        env.seen.requests.lock().unwrap().is_empty(),
        "no refused request may reach the upstream"
    );
    // No handle: forwarded unchanged, nothing injected.
    let out = env
        .get(
            "api.test",
            "/headers",
            &["Authorization: Bearer user-own-token"],
        )
        .await;
    assert_eq!(body_json(&out)["authorization"], "Bearer user-own-token");
    assert_eq!(
        env.upstream_header("authorization"),
        "Bearer user-own-token"
    );
    // Credential not delivered: 503 after the wait, not forwarded.
    let h = env
        .proxy
        .mint(r#"{"credentials":["not-delivered"],"ttl":"5m"}"#)
        .await;
    let out = env
        .get(
            "missing.test",
            "/headers",
            &[&format!("Authorization: Bearer {h}")],
        )
        .await;
    assert_eq!(
        error_code(&out).as_deref(),
        Some("credential_unavailable"),
        "{out}"
    );
    bodies.push(out);
    // The exfiltration attempt left an audit event.
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string();
    assert!(logs.contains("exfiltration_attempt") && logs.contains("egress_edge::audit"));
    env.upstream_saw_no_handle();
    leak_scan(
        &env.proxy,
        &[
            "sk-live-SECRET1",
            "sk-other-SECRET9",
            &good,
            &tampered,
            &other,
            &revoked,
            &short,
        ],
        &bodies,
    )
    .await;
}

#[tokio::test]
async fn plain_http_never_carries_a_handle() {
    let env = env().await;
    let good = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    let (status, headers, body, _) = raw(
        env.proxy.addr,
        &format!("GET http://api.test:{}/headers HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {good}\r\n\r\n", env.up.port()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("handle_out_of_scope")
    );
    leak_scan(&env.proxy, &[&good], &[body]).await;
}

#[tokio::test]
async fn oauth2_token_is_exchanged_once_for_concurrent_requests() {
    let env = env().await;
    let handle = env
        .proxy
        .mint(r#"{"credentials":["oauth-client"],"ttl":"5m"}"#)
        .await;
    let auth = format!("Authorization: Bearer {handle}");
    let mut tasks = Vec::new();
    let env = Arc::new(env);
    for _ in 0..6 {
        let env = env.clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            env.get("oauth.test", "/headers", &[&auth]).await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.contains(" 200"), "{out}");
    }
    assert_eq!(env.seen.tokens.load(std::sync::atomic::Ordering::SeqCst), 1);
    let bearers = env.upstream_headers("authorization");
    assert_eq!(bearers.len(), 6, "{bearers:?}");
    assert!(bearers.iter().all(|b| b == "Bearer tok-1"), "{bearers:?}");
    env.upstream_saw_no_handle();
    leak_scan(&env.proxy, &["cs-SECRET", "tok-1", &handle], &[]).await;
}

#[tokio::test]
async fn revocation_survives_a_restart() {
    let env = env().await;
    let handle = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    let out = env
        .get(
            "api.test",
            "/headers",
            &[&format!("Authorization: Bearer {handle}")],
        )
        .await;
    assert!(out.contains(" 200"), "{out}");
    assert_eq!(
        env.upstream_header("authorization"),
        "Bearer sk-live-SECRET1"
    );
    let id = {
        let (s, b) = env
            .proxy
            .post(
                "/v1/handles",
                r#"{"credentials":["openai-key"],"ttl":"5m"}"#,
            )
            .await;
        assert_eq!(s, 200);
        let v = json(&b);
        (
            v["handle"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    };
    let (s, _) = env
        .proxy
        .post("/v1/handles/revoke", &format!(r#"{{"id":"{}"}}"#, id.1))
        .await;
    assert_eq!(s, 204);
    let Env {
        up,
        seen,
        proxy,
        secrets,
        _dir,
    } = env;
    let proxy = proxy.restart().await;
    let env = Env {
        up,
        seen,
        proxy,
        secrets,
        _dir,
    };
    let out = env
        .get(
            "api.test",
            "/headers",
            &[&format!("Authorization: Bearer {}", id.0)],
        )
        .await;
    assert_eq!(error_code(&out).as_deref(), Some("handle_revoked"), "{out}");
    // The unrevoked handle still works after the restart (same signing key).
    let out = env
        .get(
            "api.test",
            "/headers",
            &[&format!("Authorization: Bearer {handle}")],
        )
        .await;
    assert!(out.contains(" 200"), "{out}");
    assert_eq!(
        env.upstream_header("authorization"),
        "Bearer sk-live-SECRET1"
    );
}

/// Credentials from our own `sds serve` over gRPC: delivery, rotation without restart, and
/// surviving an SDS server restart.
#[tokio::test]
async fn credentials_over_sds_rotate_and_survive_a_server_restart() {
    capture_logs();
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["api.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"h2", b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        "secrets:\n  openai-key: { value: sk-sds-ONE }\n",
    );
    let sds = Sds::start(&secrets).await;
    let sds_addr = sds.addr;
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1 }} }}
secrets:
  sds: {{ target: 'http://{sds_addr}', node_id: test-edge, initial_fetch_timeout: 5s }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: openai-key }} }}
",
        ca = pki.ca_path().display(),
        port = up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    let env = Env {
        up,
        seen,
        proxy,
        secrets: secrets.clone(),
        _dir: dir,
    };
    let handle = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"ttl":"5m"}"#)
        .await;
    let auth = format!("Authorization: Bearer {handle}");
    // What the upstream received (its echo of the secret is redacted on the way back).
    let value = |_out: String| env.upstream_header("authorization");
    assert_eq!(
        value(env.get("api.test", "/headers", &[&auth]).await),
        "Bearer sk-sds-ONE"
    );
    let (s, _, _) = http_get(env.proxy.admin, "/readyz", &[]).await;
    assert_eq!(s, 200);
    // Rotation pushed by the server.
    std::fs::write(&secrets, "secrets:\n  openai-key: { value: sk-sds-TWO }\n").unwrap();
    let mut seen_two = false;
    for _ in 0..50 {
        if value(env.get("api.test", "/headers", &[&auth]).await) == "Bearer sk-sds-TWO" {
            seen_two = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_two, "rotation over SDS never arrived");
    // Kill the SDS server: warm credentials keep working.
    sds.stop().await;
    for _ in 0..3 {
        assert_eq!(
            value(env.get("api.test", "/headers", &[&auth]).await),
            "Bearer sk-sds-TWO"
        );
    }
    // Restart it on the same address with a new value: the client reconnects and resubscribes.
    std::fs::write(
        &secrets,
        "secrets:\n  openai-key: { value: sk-sds-THREE }\n",
    )
    .unwrap();
    let l2 = tokio::net::TcpListener::bind(sds_addr).await.unwrap();
    let server2 = egress_sds::server::Server::with_listener(l2, &secrets, None).unwrap();
    let (_stop2, rx2) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server2.run(async {
        let _ = rx2.await;
    }));
    let mut seen_three = false;
    for _ in 0..150 {
        if value(env.get("api.test", "/headers", &[&auth]).await) == "Bearer sk-sds-THREE" {
            seen_three = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen_three,
        "the client did not resubscribe after the SDS server restarted"
    );
    let m = env.proxy.metrics().await;
    assert!(m.contains("egress_edge_sds_reconnects_total"), "{m}");
    leak_scan(
        &env.proxy,
        &["sk-sds-ONE", "sk-sds-TWO", "sk-sds-THREE", &handle],
        &[],
    )
    .await;
}

/// A client certificate delivered as a `tls_certificate` secret is presented to an upstream
/// that requires mTLS, only for requests that carry a valid handle; the handle never goes up.
#[tokio::test]
async fn client_certificate_credential_is_presented_only_with_a_handle() {
    capture_logs();
    let pki = Pki::new("upstream test CA");
    let client_ca = Pki::new("workload identity CA");
    let leaf = pki.leaf(&["mtls.test"]);
    let svid = client_ca.leaf(&["spiffe-workload.test"]);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(client_ca.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key: rustls_pki_types::PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (up, seen) = start_upstream(Some(Arc::new(sc))).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "svid.pem", &svid.cert_pem);
    write(dir.path(), "svid-key.pem", &svid.key_pem);
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        "secrets:\n  svid: { certificate: svid.pem, private_key: svid-key.pem }\n",
    );
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ mtls.test: 127.0.0.1 }} }}
secrets: {{ file: {secrets} }}
destinations:
  - {{ host: mtls.test, ports: [{port}], credential: {{ client_cert: svid }}, require_handle: true }}
",
        ca = pki.ca_path().display(),
        secrets = secrets.display(),
        port = up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    let env = Env {
        up,
        seen,
        proxy,
        secrets,
        _dir: dir,
    };
    let out = env.get("mtls.test", "/small", &[]).await;
    assert_eq!(
        error_code(&out).as_deref(),
        Some("handle_required"),
        "{out}"
    );
    let handle = env
        .proxy
        .mint(r#"{"credentials":["svid"],"ttl":"5m"}"#)
        .await;
    let out = env
        .get(
            "mtls.test",
            "/headers",
            &[&format!("Authorization: Bearer {handle}")],
        )
        .await;
    let v = body_json(&out);
    assert!(
        v.get("authorization").is_none(),
        "the handle must not reach the upstream: {out}"
    );
    assert_eq!(
        env.seen
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one mTLS handshake"
    );
    env.upstream_saw_no_handle();
    leak_scan(&env.proxy, &[&handle, "PRIVATE KEY"], &[out]).await;
}
