//! The admin listener's authentication matrix (none, token, TLS, mTLS, both), the browser
//! defences on `/v1` (foreign `Origin`, rebound `Host`, non-JSON writes), and the startup
//! refusals for bad admin material.
//!
//! Everything runs on real sockets on 127.0.0.1 with certificates generated at test time and
//! real TLS clients (tokio-rustls).

use std::path::Path;

use crate::common::*;
use egress_edge::app::BuildOptions;

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

// ---- browser defences (CSRF, DNS rebinding) --------------------------------------------------

/// `GET /v1/kill-switch`'s `enabled`.
async fn kill_switch_on(proxy: &Proxy) -> bool {
    let (status, _, body) = http_get(proxy.admin, "/v1/kill-switch", &[]).await;
    assert_eq!(status, 200, "{body}");
    json(&body)["enabled"].as_bool().unwrap()
}

/// The cross-site form a browser can send without a preflight: `text/plain` with a foreign
/// `Origin`. It must not turn the kill switch on, and neither must the same body without
/// `Origin` or as a form (`curl -d`'s default type).
#[tokio::test]
async fn cross_site_text_plain_post_cannot_set_the_kill_switch() {
    let proxy = Proxy::start("state_dir: STATE_DIR\n").await;
    let host = proxy.admin.to_string();
    let (status, headers, body) = admin_raw(
        proxy.admin,
        "POST",
        "/v1/kill-switch",
        &[
            ("Host", &host),
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(json(&body)["error"], "cross_origin");
    assert!(json(&body)["detail"].is_string(), "{body}");
    assert!(
        !kill_switch_on(&proxy).await,
        "a cross-site POST set the kill switch"
    );

    for ctype in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut h = vec![("Host", host.as_str())];
        if let Some(c) = ctype {
            h.push(("Content-Type", c));
        }
        let (status, _, body) = admin_raw(
            proxy.admin,
            "POST",
            "/v1/kill-switch",
            &h,
            r#"{"enabled":true}"#,
        )
        .await;
        assert_eq!(status, 415, "{ctype:?}: {body}");
        assert_eq!(json(&body)["error"], "unsupported_media_type", "{ctype:?}");
        assert!(
            !kill_switch_on(&proxy).await,
            "{ctype:?} set the kill switch"
        );
    }
    assert!(!proxy.shared.kill.is_enabled());
}

/// A JSON POST (which a browser could only send cross-site after a preflight we never answer)
/// is refused all the same when it carries a foreign `Origin`, including `null` and another
/// port on the same host; reads under `/v1` are refused on a foreign `Origin` too.
#[tokio::test]
async fn foreign_origin_is_refused_on_v1() {
    let proxy = Proxy::start("state_dir: STATE_DIR\n").await;
    let other_port = format!("http://127.0.0.1:{}", proxy.admin.port() ^ 1);
    for origin in [
        "http://evil.example",
        "https://evil.example",
        "null",
        other_port.as_str(),
        "http://localhost:1",
    ] {
        let (status, _, body) = admin_post(
            proxy.admin,
            "/v1/kill-switch",
            r#"{"enabled":true}"#,
            &[("Origin", origin)],
        )
        .await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert_eq!(json(&body)["error"], "cross_origin", "{origin}");
        let (status, _, body) = http_get(proxy.admin, "/v1/config", &[("Origin", origin)]).await;
        assert_eq!(status, 403, "{origin}: {body}");
        let (status, _, _) = admin_post(
            proxy.admin,
            "/v1/handles",
            r#"{"credentials":["k"],"ttl":"5m"}"#,
            &[("Origin", origin)],
        )
        .await;
        assert_eq!(status, 403, "{origin}");
    }
    assert!(!kill_switch_on(&proxy).await);
    // The open endpoints do not look at Origin.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body) =
            http_get(proxy.admin, path, &[("Origin", "http://evil.example")]).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The listener's own origin is not foreign.
    let own = format!("http://{}", proxy.admin);
    let (status, _, body) = admin_post(
        proxy.admin,
        "/v1/kill-switch",
        r#"{"enabled":false}"#,
        &[("Origin", &own)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    proxy
        .wait_metric("egress_edge_admin_auth_failures_total{code=\"cross_origin\"} 15")
        .await;
}

/// What curl and the CLI send: JSON, no `Origin`, a loopback `Host` (any loopback spelling,
/// any port: port forwards change it).
#[tokio::test]
async fn json_post_without_origin_on_a_loopback_host_works() {
    let proxy = Proxy::start("state_dir: STATE_DIR\n").await;
    let port = proxy.admin.port();
    let hosts = [
        proxy.admin.to_string(),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "LOCALHOST.:19901".to_owned(),
        format!("[::1]:{port}"),
        format!("127.0.0.2:{port}"),
    ];
    for (i, host) in hosts.iter().enumerate() {
        let on = i % 2 == 0;
        let (status, _, body) = admin_raw(
            proxy.admin,
            "POST",
            "/v1/kill-switch",
            &[
                ("Host", host),
                ("Content-Type", "application/json; charset=utf-8"),
            ],
            &format!(r#"{{"enabled":{on}}}"#),
        )
        .await;
        assert_eq!(status, 200, "Host {host}: {body}");
        assert_eq!(kill_switch_on(&proxy).await, on, "Host {host}");
    }
    let (status, body) = proxy.post("/v1/kill-switch", r#"{"enabled":false}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(!kill_switch_on(&proxy).await);
}

/// DNS rebinding: a page on `evil.example` rebound to 127.0.0.1 is same-origin with the
/// listener, but its requests name `evil.example` in `Host`.
#[tokio::test]
async fn rebound_host_is_refused() {
    let proxy = Proxy::start("state_dir: STATE_DIR\n").await;
    for host in [
        "evil.example",
        "evil.example:9901",
        "localhost.evil.example",
    ] {
        let own_origin = format!("http://{host}");
        let (status, _, body) = admin_raw(
            proxy.admin,
            "POST",
            "/v1/kill-switch",
            &[
                ("Host", host),
                ("Origin", &own_origin),
                ("Content-Type", "application/json"),
            ],
            r#"{"enabled":true}"#,
        )
        .await;
        assert_eq!(status, 403, "Host {host}: {body}");
        assert_eq!(json(&body)["error"], "host_not_allowed", "Host {host}");
        let (status, _, body) =
            admin_raw(proxy.admin, "GET", "/v1/config", &[("Host", host)], "").await;
        assert_eq!(status, 403, "Host {host}: {body}");
        assert_eq!(json(&body)["error"], "host_not_allowed");
    }
    // No Host at all is not the listener either.
    let (status, _, body) = admin_raw(
        proxy.admin,
        "POST",
        "/v1/kill-switch",
        &[("Content-Type", "application/json")],
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(!kill_switch_on(&proxy).await);
    // Health and metrics stay open whatever the Host.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body) =
            admin_raw(proxy.admin, "GET", path, &[("Host", "evil.example")], "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    proxy
        .wait_metric("egress_edge_admin_auth_failures_total{code=\"host_not_allowed\"} 7")
        .await;
}

/// With the token, the request is authenticated by something a web page cannot send, so any
/// `Host` works (a remote operator names the listener as they like); a foreign `Origin` is
/// still refused, and a write must still be JSON.
#[tokio::test]
async fn token_requests_may_name_any_host_but_not_a_foreign_origin() {
    let dir = tempfile::tempdir().unwrap();
    let tf = token_file(dir.path(), "token", TOKEN, 0o600);
    let proxy = Proxy::start(&format!(
        "state_dir: STATE_DIR\nadmin: {{ token_file: '{}' }}\n",
        tf.display()
    ))
    .await;
    let auth = bearer(TOKEN);
    let json_post = |host: &'static str, extra: Option<(&'static str, &'static str)>| {
        let auth = auth.clone();
        let admin = proxy.admin;
        async move {
            let mut h = vec![
                ("Host", host),
                ("Content-Type", "application/json"),
                ("Authorization", auth.as_str()),
            ];
            h.extend(extra);
            admin_raw(admin, "POST", "/v1/kill-switch", &h, r#"{"enabled":false}"#).await
        }
    };
    let (status, _, body) = json_post("edge.corp.example:9901", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = json_post(
        "edge.corp.example:9901",
        Some(("Origin", "http://evil.example")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["error"], "cross_origin");
    let (status, _, body) = admin_raw(
        proxy.admin,
        "POST",
        "/v1/kill-switch",
        &[
            ("Host", "localhost"),
            ("Content-Type", "text/plain"),
            ("Authorization", &auth),
        ],
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    // Without the token a strange Host gets the authentication answer, not a hint.
    let (status, _, body) = admin_raw(
        proxy.admin,
        "GET",
        "/v1/config",
        &[("Host", "evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(!proxy.shared.kill.is_enabled());
}

/// A unix-socket listener has no meaningful `Host`, so it is not judged; `Origin` and the
/// JSON rule still apply.
#[tokio::test]
async fn unix_socket_admin_skips_the_host_check_only() {
    use egress_edge::app::{AdminListener, App, Listeners};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let config = egress_edge::config::parse_str(
        &format!(
            "state_dir: '{}'\nadmin: {{ listen: 'unix://{}' }}\n",
            dir.path().join("state").display(),
            sock.display()
        ),
        "test",
    )
    .unwrap();
    let listeners = Listeners::new(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(AdminListener::Unix(
            tokio::net::UnixListener::bind(&sock).unwrap(),
            sock.clone(),
        )),
    );
    let app = App::build(config, listeners, BuildOptions::default())
        .await
        .unwrap();
    let shared = app.shared().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let request = |head: String, body: &'static str| {
        let sock = sock.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let req = format!(
                "POST /v1/kill-switch HTTP/1.1\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            parse_response(&out)
        }
    };
    let (status, _, body) = request(
        "Host: whatever.example\r\nContent-Type: application/json\r\n".into(),
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(shared.kill.is_enabled());
    let (status, _, body) = request(
        "Host: localhost\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\n"
            .into(),
        r#"{"enabled":false}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["error"], "cross_origin");
    let (status, _, body) = request(
        "Host: localhost\r\nContent-Type: text/plain\r\n".into(),
        r#"{"enabled":false}"#,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert!(shared.kill.is_enabled());
    let _ = stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
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
    // Nothing is bumped, yet the CA exists from the first start and needs no token.
    let (status, _, body) = http_get(proxy.admin, "/ca.pem", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("-----BEGIN CERTIFICATE-----"), "{body}");

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
