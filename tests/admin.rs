//! The admin listener: the authentication matrix (none, token, TLS, mTLS, both), startup
//! refusals for bad admin material, the Prometheus exposition, and the kill switch.
//!
//! Everything runs on real sockets on 127.0.0.1 with certificates generated at test time and
//! real TLS clients (tokio-rustls).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use egress_edge::app::BuildOptions;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "admin-token-0123456789abcdef";

// ---- helpers ------------------------------------------------------------------------------

/// Writes a token file with `mode`.
fn token_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let p = write(dir, name, contents);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Server certificate and key for the admin listener, written to `dir`.
struct AdminTls {
    /// Signs the admin server certificate; clients trust it.
    server_pki: Pki,
    cert: PathBuf,
    key: PathBuf,
}

impl AdminTls {
    fn new(dir: &Path) -> AdminTls {
        let server_pki = Pki::new("admin server CA");
        let leaf = server_pki.leaf(&["localhost", "127.0.0.1"]);
        let cert = write(dir, "admin-cert.pem", &leaf.cert_pem);
        let key = write(dir, "admin-key.pem", &leaf.key_pem);
        AdminTls {
            server_pki,
            cert,
            key,
        }
    }
}

/// A client certificate (clientAuth EKU) signed by `pki`.
fn client_leaf(pki: &Pki, name: &str) -> Leaf {
    pki.leaf_with(&[name], |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    })
}

/// A TLS client for the admin listener: trusts `roots`, presents `cert` when given.
fn admin_client(roots: rustls::RootCertStore, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key: PrivateKeyDer<'static> =
                rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Resp = (u16, Vec<(String, String)>, String);

/// One HTTPS request to the admin listener. `Err` when the TLS handshake or the exchange
/// fails (a refused client certificate surfaces here: with TLS 1.3 the client finishes its
/// side of the handshake and then reads the server's alert).
async fn https(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Resp> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tls.write_all(req.as_bytes()).await?;
        tls.flush().await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(parse_response(&out))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin request timed out",
            ))
        })
}

async fn https_get(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Resp> {
    https(addr, cfg.clone(), "GET", path, headers, "").await
}

/// Asserts that the admin listener gave no HTTP answer: the handshake or the exchange failed,
/// or the connection closed without a status line.
fn assert_refused(r: &io::Result<Resp>, what: &str) {
    if let Ok((status, _, body)) = r {
        assert_eq!(
            *status, 0,
            "{what}: expected no response, got {status}: {body}"
        );
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Plain-HTTP POST to the admin listener with optional extra headers.
async fn admin_post(admin: SocketAddr, path: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    parse_response(&out)
}

/// Polls an HTTPS `/metrics` until it contains `needle`.
async fn wait_metric_https(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    needle: &str,
) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let (status, _, body) = https_get(addr, cfg, "/metrics", &[]).await.unwrap();
        assert_eq!(status, 200);
        if body.contains(needle) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("metric `{needle}` never appeared:\n{last}");
}

// ---- no authentication ----------------------------------------------------------------------

/// With neither a token nor TLS, `/v1/*` is open (the listener is loopback-only).
#[tokio::test]
async fn no_auth_v1_config_is_open_on_loopback() {
    let proxy = Proxy::start("state_dir: STATE_DIR\n").await;
    let (status, headers, body) = http_get(proxy.admin, "/v1/config", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v = json(&body);
    assert_eq!(v["kill_switch"], false);
    assert!(v["admin"].is_object(), "{body}");
    let (status, _, body) = http_get(proxy.admin, "/healthz", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");
    let (status, _, _) = http_get(proxy.admin, "/readyz", &[]).await;
    assert_eq!(status, 200);
    let (status, _, body) = http_get(proxy.admin, "/v1/no-such-thing", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "not_found");
}

// ---- bearer token ---------------------------------------------------------------------------

#[tokio::test]
async fn token_guards_v1_but_not_health_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let tf = token_file(dir.path(), "token", &format!("{TOKEN}\n"), 0o600);
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR\nadmin: {{ token_file: '{}' }}\n",
        tf.display()
    ))
    .await;

    // No Authorization header: 401 token_missing, with a Bearer challenge.
    let (status, headers, body) = http_get(proxy.admin, "/v1/config", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["error"], "token_missing");
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));

    // Another scheme is not a bearer token at all.
    let (status, _, body) = http_get(
        proxy.admin,
        "/v1/config",
        &[("Authorization", "Basic YWRtaW46YWRtaW4=")],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["error"], "token_missing");

    // Wrong token (including a prefix of the right one): 403 token_invalid.
    for wrong in ["not-the-admin-token-at-all", &TOKEN[..TOKEN.len() - 1]] {
        let (status, headers, body) = http_get(
            proxy.admin,
            "/v1/config",
            &[("Authorization", &bearer(wrong))],
        )
        .await;
        assert_eq!(status, 403, "{wrong}: {body}");
        let v = json(&body);
        assert_eq!(v["error"], "token_invalid");
        assert!(!body.contains(TOKEN), "the error must not echo the token");
        assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    }

    // A state-changing call without the token changes nothing.
    let (status, _, _) =
        admin_post(proxy.admin, "/v1/kill-switch", r#"{"enabled":true}"#, &[]).await;
    assert_eq!(status, 401);
    assert!(!proxy.shared.kill.is_enabled());

    // The right token (the file's trailing newline is not part of it).
    let (status, _, body) = http_get(
        proxy.admin,
        "/v1/config",
        &[("Authorization", &bearer(TOKEN))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(
        v["admin"]["token_file"].as_str(),
        Some(tf.to_str().unwrap()),
        "the config dump names the token file"
    );
    assert!(
        !body.contains(TOKEN),
        "the config dump must not contain the token"
    );
    let (status, _, body) = admin_post(
        proxy.admin,
        "/v1/kill-switch",
        r#"{"enabled":false}"#,
        &[("Authorization", &bearer(TOKEN))],
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Health, readiness and metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body) = http_get(proxy.admin, path, &[]).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Nothing is bumped, so there is no CA: 404, not an auth failure.
    let (status, _, body) = http_get(proxy.admin, "/ca.pem", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["error"], "no_ca");

    let m = proxy
        .wait_metric("egress_edge_admin_auth_failures_total{code=\"token_invalid\"} 2")
        .await;
    assert!(
        m.contains("egress_edge_admin_auth_failures_total{code=\"token_missing\"} 3"),
        "{m}"
    );
    assert!(!m.contains(TOKEN));
}

// ---- mTLS -----------------------------------------------------------------------------------

#[tokio::test]
async fn mtls_requires_a_client_cert_from_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = AdminTls::new(dir.path());
    let client_pki = Pki::new("admin client CA");
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR\nadmin:\n  tls: {{ cert: '{}', key: '{}', client_ca: '{}' }}\n",
        tls.cert.display(),
        tls.key.display(),
        client_pki.ca_path().display()
    ))
    .await;
    let roots = || tls.server_pki.roots();

    // A certificate signed by client_ca: allowed, no token configured or needed.
    let good = admin_client(roots(), Some(&client_leaf(&client_pki, "operator")));
    let (status, _, body) = https_get(proxy.admin, &good, "/v1/config", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["admin"]["tls"].is_object());
    let (status, _, body) = https(
        proxy.admin,
        good.clone(),
        "POST",
        "/v1/kill-switch",
        &[("Content-Type", "application/json")],
        r#"{"enabled":false}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // No client certificate: the handshake completes (probes and scrapers need no
    // certificate), /healthz answers, but /v1 is refused with 401.
    let anonymous = admin_client(roots(), None);
    let (status, _, _) = https_get(proxy.admin, &anonymous, "/healthz", &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _, body) = https_get(proxy.admin, &anonymous, "/v1/config", &[])
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["error"], "client_cert_required");

    // A certificate from a CA the admin listener does not trust.
    let rogue_pki = Pki::new("rogue CA");
    let rogue = admin_client(roots(), Some(&client_leaf(&rogue_pki, "operator")));
    let r = https_get(proxy.admin, &rogue, "/v1/config", &[]).await;
    assert_refused(&r, "untrusted client cert");

    // A certificate signed by the *server's* CA is not a client certificate either.
    let wrong_ca = admin_client(roots(), Some(&client_leaf(&tls.server_pki, "operator")));
    let r = https_get(proxy.admin, &wrong_ca, "/v1/config", &[]).await;
    assert_refused(&r, "client cert from the server CA");

    // Plaintext HTTP on the TLS port gets no HTTP answer.
    let (status, _, _) = http_get(proxy.admin, "/healthz", &[]).await;
    assert_eq!(status, 0);

    // Every failed handshake is counted under code="tls": the rogue and wrong-CA
    // certificates and the plaintext request (read with the good client).
    wait_metric_https(
        proxy.admin,
        &good,
        "egress_edge_admin_auth_failures_total{code=\"tls\"} 3",
    )
    .await;
}

/// Token and mTLS together. `authorize` lets a request through on **a verified client
/// certificate OR the token**: a client with a certificate signed by client_ca needs no
/// token (and a wrong token alongside a valid certificate is ignored).
///
/// A client without a certificate completes the handshake and is then held to the token.
#[tokio::test]
async fn token_and_mtls_cert_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let tls = AdminTls::new(dir.path());
    let client_pki = Pki::new("admin client CA");
    let tf = token_file(dir.path(), "token", TOKEN, 0o600);
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR\nadmin:\n  token_file: '{}'\n  tls: {{ cert: '{}', key: '{}', client_ca: '{}' }}\n",
        tf.display(),
        tls.cert.display(),
        tls.key.display(),
        client_pki.ca_path().display()
    ))
    .await;
    let roots = || tls.server_pki.roots();

    let with_cert = admin_client(roots(), Some(&client_leaf(&client_pki, "operator")));
    // Verified certificate, no token: allowed.
    let (status, _, body) = https_get(proxy.admin, &with_cert, "/v1/config", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // Verified certificate and the token: allowed.
    let (status, _, body) = https_get(
        proxy.admin,
        &with_cert,
        "/v1/config",
        &[("Authorization", &bearer(TOKEN))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // Verified certificate and a wrong token: the certificate is enough, the token is not
    // looked at.
    let (status, _, body) = https_get(
        proxy.admin,
        &with_cert,
        "/v1/config",
        &[("Authorization", "Bearer definitely-not-the-token")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // No certificate: the right token is enough, a wrong one is refused.
    let anonymous = admin_client(roots(), None);
    let (status, _, body) = https_get(
        proxy.admin,
        &anonymous,
        "/v1/config",
        &[("Authorization", &bearer(TOKEN))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = https_get(
        proxy.admin,
        &anonymous,
        "/v1/config",
        &[("Authorization", "Bearer definitely-not-the-token")],
    )
    .await
    .unwrap();
    assert_eq!(status, 403);

    // Exactly one token failure: the anonymous wrong token. The wrong token next to a valid
    // certificate was not looked at.
    wait_metric_https(
        proxy.admin,
        &with_cert,
        "egress_edge_admin_auth_failures_total{code=\"token_invalid\"} 1",
    )
    .await;
}

/// TLS without client_ca only encrypts; the token is the authentication.
#[tokio::test]
async fn tls_without_client_ca_still_requires_token() {
    let dir = tempfile::tempdir().unwrap();
    let tls = AdminTls::new(dir.path());
    let tf = token_file(dir.path(), "token", TOKEN, 0o600);
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR\nadmin:\n  token_file: '{}'\n  tls: {{ cert: '{}', key: '{}' }}\n",
        tf.display(),
        tls.cert.display(),
        tls.key.display(),
    ))
    .await;
    let client = admin_client(tls.server_pki.roots(), None);

    let (status, _, body) = https_get(proxy.admin, &client, "/healthz", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = https_get(proxy.admin, &client, "/metrics", &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let (status, _, body) = https_get(proxy.admin, &client, "/v1/config", &[])
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["error"], "token_missing");
    let (status, _, body) = https_get(
        proxy.admin,
        &client,
        "/v1/config",
        &[("Authorization", "Bearer wrong-token-wrong-token")],
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["error"], "token_invalid");
    let (status, _, body) = https_get(
        proxy.admin,
        &client,
        "/v1/config",
        &[("Authorization", &bearer(TOKEN))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // A client certificate is not asked for, so presenting one changes nothing: the token is
    // still required (has_cert only counts when client_ca verified it).
    let stranger = Pki::new("some CA");
    let with_cert = admin_client(tls.server_pki.roots(), Some(&client_leaf(&stranger, "x")));
    let (status, _, body) = https_get(proxy.admin, &with_cert, "/v1/config", &[])
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");

    // A client that does not trust the admin certificate fails on its side.
    let untrusting = admin_client(Pki::new("other").roots(), None);
    let err = https_get(proxy.admin, &untrusting, "/healthz", &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Plaintext on the TLS port: no HTTP answer.
    let (status, _, _) = http_get(proxy.admin, "/healthz", &[]).await;
    assert_eq!(status, 0);
}

// ---- startup refusals -------------------------------------------------------------------------

#[tokio::test]
async fn partial_admin_tls_is_refused_at_parse() {
    let cases = [
        ("admin:\n  tls: { cert: a.pem }\n", "admin.tls.key"),
        ("admin:\n  tls: { key: a-key.pem }\n", "admin.tls.cert"),
        (
            "admin:\n  tls: { client_ca: ca.pem }\n",
            "admin.tls.client_ca",
        ),
        (
            "admin:\n  tls: { cert: a.pem, client_ca: ca.pem }\n",
            "admin.tls.key",
        ),
        ("admin:\n  tls: {}\n", "admin.tls"),
        (
            "admin:\n  tls: { cert: a.pem, key: k.pem, ca: ca.pem }\n",
            "admin.tls.ca",
        ),
    ];
    for (yaml, key) in cases {
        let err = egress_edge::config::parse_str(yaml, "admin.yaml").unwrap_err();
        assert_eq!(err.key, key, "{yaml}: {err}");
        assert_eq!(err.line, Some(2), "{yaml}: {err}");
        let shown = err.to_string();
        assert!(shown.starts_with("admin.yaml:2: "), "{shown}");
    }
    // The complete set parses (files are read at build, not at parse).
    let ok = egress_edge::config::parse_str(
        "admin:\n  tls: { cert: a.pem, key: k.pem, client_ca: ca.pem }\n",
        "admin.yaml",
    )
    .unwrap();
    let tls = ok.admin.tls.unwrap();
    assert_eq!(tls.client_ca.as_deref(), Some(Path::new("ca.pem")));
}

async fn start_err(yaml: &str) -> String {
    match Proxy::try_start_with(yaml, BuildOptions::default()).await {
        Ok(_) => panic!("the proxy started with:\n{yaml}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn unreadable_or_malformed_admin_tls_is_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let tls = AdminTls::new(dir.path());
    let client_pki = Pki::new("admin client CA");
    let garbage = write(dir.path(), "garbage.pem", "this is not PEM\n");
    let truncated = write(
        dir.path(),
        "truncated.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    );
    let missing = dir.path().join("missing.pem");
    let other_key = write(
        dir.path(),
        "other-key.pem",
        &tls.server_pki.leaf(&["localhost"]).key_pem,
    );
    let yaml = |cert: &Path, key: &Path, ca: &Path| {
        format!(
            "state_dir: STATE_DIR\nadmin:\n  tls: {{ cert: '{}', key: '{}', client_ca: '{}' }}\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    };
    let ca = client_pki.ca_path();
    for (cert, key, ca, names) in [
        (&missing, &tls.key, &ca, &missing),
        (&garbage, &tls.key, &ca, &garbage),
        (&truncated, &tls.key, &ca, &truncated),
        (&tls.cert, &missing, &ca, &missing),
        (&tls.cert, &garbage, &ca, &garbage),
        (&tls.cert, &tls.key, &missing, &missing),
        (&tls.cert, &tls.key, &garbage, &garbage),
        (&tls.cert, &tls.key, &truncated, &truncated),
    ] {
        let err = start_err(&yaml(cert, key, ca)).await;
        assert!(err.starts_with("admin.tls: "), "{err}");
        assert!(
            err.contains(names.to_str().unwrap()),
            "the error should name {}: {err}",
            names.display()
        );
    }
    // A key that does not belong to the certificate.
    let err = start_err(&yaml(&tls.cert, &other_key, &ca)).await;
    assert!(err.starts_with("admin.tls: "), "{err}");
    // The complete, matching set starts.
    Proxy::try_start_with(&yaml(&tls.cert, &tls.key, &ca), BuildOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_token_files_are_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |p: &Path| {
        format!(
            "state_dir: STATE_DIR\nadmin: {{ token_file: '{}' }}\n",
            p.display()
        )
    };
    let empty = token_file(dir.path(), "empty", "", 0o600);
    let blank = token_file(dir.path(), "blank", "  \n\n", 0o600);
    let world = token_file(dir.path(), "world", TOKEN, 0o644);
    let short = token_file(dir.path(), "short", "fifteen-chars-x\n", 0o600);
    let missing = dir.path().join("missing-token");
    for (p, needle) in [
        (&empty, "is empty"),
        (&blank, "is empty"),
        (&world, "world-readable"),
        (&short, "at least 16 characters"),
        (&missing, "No such file"),
    ] {
        let err = start_err(&yaml(p)).await;
        assert!(err.starts_with("admin.token_file: "), "{err}");
        assert!(err.contains(p.to_str().unwrap()), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains(TOKEN), "the error must not contain the token");
    }
    // Exactly 16 characters, group-readable but not world-readable: accepted.
    let ok = token_file(dir.path(), "ok", "sixteen-chars-xx\n", 0o640);
    let proxy = Proxy::try_start_with(&yaml(&ok), BuildOptions::default())
        .await
        .unwrap();
    let (status, _, _) = http_get(
        proxy.admin,
        "/v1/config",
        &[("Authorization", "Bearer sixteen-chars-xx")],
    )
    .await;
    assert_eq!(status, 200);
}

/// `AdminAuth::load` refuses a non-loopback TCP admin listener unless the token or mTLS
/// authenticates `/v1/*`. Called directly: nothing is bound.
#[tokio::test]
async fn non_loopback_admin_needs_token_or_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let tls = AdminTls::new(dir.path());
    let client_pki = Pki::new("admin client CA");
    let tf = token_file(dir.path(), "token", TOKEN, 0o600);
    let load = |admin: &str| {
        let config = egress_edge::config::parse_str(&format!("admin:\n{admin}"), "test").unwrap();
        egress_edge::admin::AdminAuth::load(&config.admin)
    };

    for listen in ["0.0.0.0:0", "'[::]:0'", "192.0.2.10:9901"] {
        let err = load(&format!("  listen: {listen}\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("admin.listen: "), "{msg}");
        assert!(msg.contains("is not loopback"), "{msg}");
        // TLS alone encrypts but does not authenticate.
        let err = load(&format!(
            "  listen: {listen}\n  tls: {{ cert: '{}', key: '{}' }}\n",
            tls.cert.display(),
            tls.key.display()
        ))
        .unwrap_err();
        assert!(err.to_string().contains("is not loopback"), "{err}");
        // A token, or a client CA, makes it acceptable.
        load(&format!(
            "  listen: {listen}\n  token_file: '{}'\n",
            tf.display()
        ))
        .unwrap();
        load(&format!(
            "  listen: {listen}\n  tls: {{ cert: '{}', key: '{}', client_ca: '{}' }}\n",
            tls.cert.display(),
            tls.key.display(),
            client_pki.ca_path().display()
        ))
        .unwrap();
    }
    // Loopback and unix sockets need nothing.
    load("  listen: 127.0.0.1:0\n").unwrap();
    load("  listen: '[::1]:0'\n").unwrap();
    load("  listen: unix:///tmp/egress-edge-admin-test.sock\n").unwrap();
    // The Debug form never shows the token.
    let auth = load(&format!(
        "  listen: 0.0.0.0:0\n  token_file: '{}'\n",
        tf.display()
    ))
    .unwrap();
    let dbg = format!("{auth:?}");
    assert!(!dbg.contains(TOKEN), "{dbg}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
}

/// The same check applies when the app is built (the harness binds its own loopback admin
/// listener but validates `admin.listen` from the config).
#[tokio::test]
async fn build_refuses_non_loopback_admin_without_auth() {
    let err = start_err("state_dir: STATE_DIR\nadmin: { listen: 0.0.0.0:9901 }\n").await;
    assert!(
        err.starts_with("admin.listen: 0.0.0.0:9901 is not loopback"),
        "{err}"
    );
}

// ---- metrics --------------------------------------------------------------------------------

/// One parsed exposition: families by name with their type, and samples.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    fn family_samples(&self, family: &str) -> Vec<&(String, BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| family_of(n, &self.types).as_deref() == Some(family))
            .collect()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.iter().find_map(|(n, l, v)| {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (n == name && *l == want).then_some(*v)
        })
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample name belongs to, given the declared types.
fn family_of(sample: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if let Some(t) = types.get(sample)
        && matches!(t.as_str(), "gauge" | "unknown" | "stateset")
    {
        return Some(sample.to_owned());
    }
    for suffix in ["_total", "_created", "_bucket", "_sum", "_count", "_info"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && let Some(t) = types.get(base)
        {
            let ok = match t.as_str() {
                "counter" => matches!(suffix, "_total" | "_created"),
                "histogram" => matches!(suffix, "_bucket" | "_sum" | "_count" | "_created"),
                "summary" => matches!(suffix, "_sum" | "_count" | "_created"),
                "info" => suffix == "_info",
                _ => false,
            };
            if ok {
                return Some(base.to_owned());
            }
        }
    }
    None
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value `{s}`: {e}")),
    }
}

/// `{k="v",...}`: returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected `{`")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label `{name}`"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// A strict parser for the text exposition prometheus-client writes (OpenMetrics text):
/// `# HELP`/`# TYPE`/`# UNIT` lines, samples that belong to the most recently declared
/// family, no duplicate families or series, and exactly one `# EOF` as the last line.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen_series = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: `{line}`", i + 1);
        if eof {
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .ok_or_else(|| at("missing metric name".into()))?;
            if !valid_name(name) {
                return Err(at(format!("bad metric name `{name}`")));
            }
            match kind {
                "HELP" => {
                    if !exp.helps.insert(name.to_owned()) {
                        return Err(at("duplicate HELP".into()));
                    }
                }
                "TYPE" => {
                    let t = parts
                        .next()
                        .ok_or_else(|| at("TYPE without a type".into()))?;
                    if !matches!(
                        t,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "info"
                            | "stateset"
                            | "unknown"
                            | "gaugehistogram"
                    ) {
                        return Err(at(format!("unknown type `{t}`")));
                    }
                    if exp.types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at("duplicate TYPE".into()));
                    }
                    current = Some(name.to_owned());
                }
                "UNIT" => {}
                _ => return Err(at(format!("unknown comment `{kind}`"))),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("blank or malformed comment line".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at(format!("bad sample name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("expected a space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &exp.types)
            .ok_or_else(|| at(format!("sample `{name}` has no declared family")))?;
        if current.as_deref() != Some(family.as_str()) {
            return Err(at(format!(
                "sample of `{family}` outside its family block (current: {current:?})"
            )));
        }
        if !seen_series.insert((name.to_owned(), labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        exp.samples.push((name.to_owned(), labels, value));
    }
    if !eof {
        return Err("missing # EOF at the end".into());
    }
    check_histograms(&exp)?;
    Ok(exp)
}

/// Buckets are cumulative, end with `le="+Inf"`, and `+Inf` equals `_count`.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, t) in &exp.types {
        if t != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let count = format!("{family}_count");
        let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for (n, labels, v) in &exp.samples {
            if *n != bucket {
                continue;
            }
            let mut rest = labels.clone();
            let le = rest
                .remove("le")
                .ok_or_else(|| format!("{bucket} without `le`"))?;
            by_series
                .entry(rest)
                .or_default()
                .push((parse_value(&le)?, *v));
        }
        for (labels, buckets) in by_series {
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!(
                    "{bucket}{labels:?}: buckets not cumulative: {buckets:?}"
                ));
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY {
                return Err(format!("{bucket}{labels:?}: no +Inf bucket"));
            }
            let c = exp
                .samples
                .iter()
                .find(|(n, l, _)| *n == count && *l == labels)
                .map(|(_, _, v)| *v)
                .ok_or_else(|| format!("{count}{labels:?} missing"))?;
            if c != last.1 {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {} != count {c}",
                    last.1
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn exposition_parser_rejects_malformed_text() {
    let good = "# HELP x A counter.\n# TYPE x counter\nx_total{a=\"1\"} 2\n# EOF\n";
    parse_exposition(good).unwrap();
    for bad in [
        "# TYPE x counter\nx_total 1\n",                   // no EOF
        "# TYPE x counter\nx_total 1\n# EOF\nx_total 2\n", // after EOF
        "x_total 1\n# EOF\n",                              // undeclared
        "# TYPE x counter\nx_total{a=1} 1\n# EOF\n",       // unquoted label
        "# TYPE x counter\nx_total one\n# EOF\n",          // bad value
        "# TYPE x counter\nx_total 1\nx_total 1\n# EOF\n", // duplicate series
        "# TYPE x gauge\nx_total 1\n# EOF\n",              // wrong suffix for a gauge
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n# EOF\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted:\n{bad}");
    }
}

#[tokio::test]
async fn metrics_exposition_parses_and_has_every_family() {
    // A pass-through upstream, a bumped destination with a credential (so a CA, leaf
    // prewarming and a secret source exist), and a token (for an auth-failure sample).
    // prometheus-client omits a labelled family with no series at all, so every labelled
    // family gets at least one sample from the traffic below.
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["upstream.test", "bump.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write(
        dir.path(),
        "secrets.yaml",
        "secrets:\n  demo-key: { value: \"demo-secret-value-123\" }\n",
    );
    let tf = token_file(dir.path(), "token", TOKEN, 0o600);
    let yaml = format!(
        "state_dir: STATE_DIR
admin: {{ token_file: '{tf}' }}
upstream: {{ extra_roots: ['{ca}'] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1, bump.test: 127.0.0.1 }} }}
secrets: {{ file: '{secrets}' }}
destinations:
  - {{ host: upstream.test, ports: [{port}] }}
  - host: bump.test
    ports: [{port}]
    credential: {{ secret: demo-key, header: Authorization, format: 'Bearer {{secret}}' }}
default_rung: deny
",
        tf = tf.display(),
        ca = pki.ca_path().display(),
        secrets = secrets.display(),
        port = up.port()
    );
    let proxy = Proxy::start(&yaml).await;

    // Traffic: a denied CONNECT, a denied plain request, a pass-through tunnel, a failed
    // admin call.
    let (status, _, _, _) = connect(proxy.addr, "denied.example:443").await;
    assert_eq!(status, 403);
    let (status, _, _, _) = raw(
        proxy.addr,
        "GET http://denied.example/ HTTP/1.1\r\nHost: denied.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);
    let mut tls = tls_through(
        proxy.addr,
        &format!("upstream.test:{}", up.port()),
        "upstream.test",
        client_config(pki.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(b"GET /small HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.ends_with("hello"), "{out}");
    drop(tls);
    let (status, _, _) = http_get(
        proxy.admin,
        "/v1/config",
        &[("Authorization", "Bearer nope-nope-nope-nope")],
    )
    .await;
    assert_eq!(status, 403);
    // A bumped request redeeming a handle minted through the admin API.
    let (status, _, body) = admin_post(
        proxy.admin,
        "/v1/handles",
        r#"{"credentials":["demo-key"],"ttl":"5m","host":"bump.test"}"#,
        &[("Authorization", &bearer(TOKEN))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let handle = json(&body)["handle"].as_str().unwrap().to_owned();
    let mut tls = tls_through(
        proxy.addr,
        &format!("bump.test:{}", up.port()),
        "bump.test",
        client_config(proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(
        format!(
            "GET /headers HTTP/1.1\r\nHost: bump.test:{}\r\nAuthorization: Bearer {handle}\r\nConnection: close\r\n\r\n",
            up.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    drop(tls);
    // A config reload (same file: accepted).
    proxy.reloader.reload_file(&proxy.config_path).unwrap();

    let text = proxy
        .wait_metric("egress_edge_connections_total{rung=\"passthrough\",outcome=\"ok\"} 1")
        .await;
    let text = if text.contains("egress_edge_connections_total{rung=\"bump\"") {
        text
    } else {
        proxy
            .wait_metric("egress_edge_connections_total{rung=\"bump\"")
            .await
    };
    let (status, headers, _) = http_get(proxy.admin, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    let exp = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));

    let expected = [
        ("egress_edge_connections", "counter"),
        ("egress_edge_requests", "counter"),
        ("egress_edge_refusals", "counter"),
        ("egress_edge_bytes", "counter"),
        ("egress_edge_active_tunnels", "gauge"),
        ("egress_edge_upstream_connect_seconds", "histogram"),
        ("egress_edge_request_seconds", "histogram"),
        ("egress_edge_leaf_mints", "counter"),
        ("egress_edge_leaf_cache_hits", "counter"),
        ("egress_edge_leaf_cache_misses", "counter"),
        ("egress_edge_leaf_mint_failures", "counter"),
        ("egress_edge_leaf_mint_seconds", "counter"),
        ("egress_edge_handle_redemptions", "counter"),
        ("egress_edge_config_reloads", "counter"),
        ("egress_edge_admin_auth_failures", "counter"),
        ("egress_edge_sds_stream_connected", "gauge"),
        ("egress_edge_sds_reconnects", "counter"),
        ("egress_edge_sds_nacks", "counter"),
        ("egress_edge_secrets_warm", "gauge"),
        ("egress_edge_secret_version", "gauge"),
        ("egress_edge_secret_updated_timestamp_seconds", "gauge"),
    ];
    for (family, t) in expected {
        assert_eq!(
            exp.types.get(family).map(String::as_str),
            Some(t),
            "family {family}\n---\n{text}"
        );
        assert!(exp.helps.contains(family), "HELP for {family}");
    }
    for name in exp.types.keys() {
        assert!(name.starts_with("egress_edge_"), "unprefixed family {name}");
    }

    // Labelled families have the samples the traffic above produced.
    let v = |n: &str, l: &[(&str, &str)]| {
        exp.value(n, l)
            .unwrap_or_else(|| panic!("no sample {n}{l:?}\n---\n{text}"))
    };
    assert_eq!(
        v(
            "egress_edge_connections_total",
            &[("rung", "deny"), ("outcome", "destination_denied")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "egress_edge_requests_total",
            &[("rung", "deny"), ("outcome", "destination_denied")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "egress_edge_refusals_total",
            &[("code", "destination_denied")]
        ),
        2.0
    );
    assert!(v("egress_edge_bytes_total", &[("direction", "up")]) > 0.0);
    assert!(v("egress_edge_bytes_total", &[("direction", "down")]) > 0.0);
    assert_eq!(
        v(
            "egress_edge_upstream_connect_seconds_count",
            &[("rung", "passthrough")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "egress_edge_admin_auth_failures_total",
            &[("code", "token_invalid")]
        ),
        1.0
    );
    assert_eq!(
        v("egress_edge_request_seconds_count", &[("rung", "bump")]),
        1.0
    );
    assert_eq!(
        v(
            "egress_edge_handle_redemptions_total",
            &[("result", "redeemed")]
        ),
        1.0
    );
    assert_eq!(
        v("egress_edge_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(v("egress_edge_active_tunnels", &[]), 0.0);
    // bump.test is an exact bump host: its leaf is minted at startup.
    assert!(v("egress_edge_leaf_mints_total", &[]) >= 1.0);
    assert_eq!(v("egress_edge_secrets_warm", &[]), 1.0);
    let versions = exp.family_samples("egress_edge_secret_version");
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(
        versions[0].1.get("secret").map(String::as_str),
        Some("demo-key")
    );
    assert_eq!(versions[0].2, 1.0);
    // Nothing secret leaks into the exposition.
    assert!(!text.contains("demo-secret-value-123"));
    assert!(!text.contains(TOKEN));
    assert!(!text.contains(&handle));
    // No guest hostname becomes a label value.
    assert!(!text.contains("denied.example"));
}

// ---- kill switch ----------------------------------------------------------------------------

/// An upstream for `upstream.test` plus a proxy that passes it through (as in foundation.rs).
async fn passthrough_env() -> (Pki, SocketAddr, Proxy) {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["upstream.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let yaml = format!(
        "state_dir: STATE_DIR
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1, plain.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test, ports: [{port}] }}
  - {{ host: plain.test, ports: [{port}] }}
default_rung: deny
",
        port = up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    (pki, up, proxy)
}

#[tokio::test]
async fn kill_switch_closes_tunnels_and_refuses_new_egress() {
    let (pki, up, proxy) = passthrough_env().await;
    let mut tunnel = open_tunnel(&proxy, &pki, up).await;
    let (status, _, body) = http_get(proxy.admin, "/v1/kill-switch", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["enabled"], false);

    // On: the open tunnel is closed within a second.
    let t0 = Instant::now();
    let (status, body) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["enabled"], true);
    let mut buf = vec![0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(1), tunnel.read(&mut buf))
        .await
        .expect("the tunnel was still open 1s after the kill switch");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));

    // New CONNECTs and plain requests are refused before any upstream connection.
    let (status, headers, body, _) =
        connect(proxy.addr, &format!("upstream.test:{}", up.port())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("kill_switch"));
    let v = json(&body);
    assert_eq!(v["error"], "kill_switch");
    assert!(
        v["detail"].as_str().unwrap().contains("kill switch"),
        "{body}"
    );
    let (status, headers, _, _) = raw(
        proxy.addr,
        &format!(
            "GET http://plain.test:{}/small HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n",
            up.port()
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("kill_switch"));
    // Turning it on again is idempotent.
    let (status, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    // The state shows in the API.
    let (_, _, body) = http_get(proxy.admin, "/v1/kill-switch", &[]).await;
    assert_eq!(json(&body)["enabled"], true);
    let (_, _, body) = http_get(proxy.admin, "/v1/config", &[]).await;
    assert_eq!(json(&body)["kill_switch"], true);

    // Malformed bodies are refused and change nothing.
    for bad in ["", "{", r#"{"enabled":"no"}"#, r#"{"enabled":false,"x":1}"#] {
        let (status, body) = proxy.post("/v1/kill-switch", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(json(&body)["error"], "bad_request");
    }
    assert!(proxy.shared.kill.is_enabled());

    // Off: new tunnels work again.
    let (status, body) = proxy.post("/v1/kill-switch", r#"{"enabled":false}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["enabled"], false);
    let mut again = open_tunnel(&proxy, &pki, up).await;
    // ...and a later kill closes that one too (a fresh generation).
    let (status, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    let r = tokio::time::timeout(Duration::from_secs(1), again.read(&mut buf))
        .await
        .expect("the second tunnel was still open 1s after the kill switch");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

    let m = proxy
        .wait_metric(
            "egress_edge_connections_total{rung=\"passthrough\",outcome=\"kill_switch\"} 2",
        )
        .await;
    assert!(
        m.contains("egress_edge_refusals_total{code=\"kill_switch\"} 2"),
        "{m}"
    );
}

/// A CONNECT admitted just before the kill switch, whose ClientHello arrives just after,
/// must not become a live tunnel: the tunnel holds the kill-switch token taken at CONNECT.
#[tokio::test]
async fn kill_switch_catches_tunnels_admitted_before_it() {
    let (pki, up, proxy) = passthrough_env().await;
    let (status, _, body, s) = connect(proxy.addr, &format!("upstream.test:{}", up.port())).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = proxy.post("/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    let name = ServerName::try_from("upstream.test").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        let mut tls = tokio_rustls::TlsConnector::from(client_config(pki.roots(), &[b"http/1.1"]))
            .connect(name, s)
            .await?;
        tls.write_all(b"GET /small HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await?;
        io::Result::Ok(out)
    })
    .await;
    if let Ok(Ok(out)) = r {
        assert!(
            !out.contains("hello"),
            "a tunnel reached the upstream while the kill switch was on"
        );
    }
}
