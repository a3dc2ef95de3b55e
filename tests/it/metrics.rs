//! The Prometheus exposition on the admin listener: the strict parser's own negative cases,
//! and a scrape after real traffic that has every family, the expected samples and no secrets.

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        .wait_metric(
            "egress_edge_connections_total{rung=\"passthrough\",outcome=\"ok\",rule=\"destinations[0]\",sandbox=\"none\"} 1",
        )
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
        ("egress_edge_leaf_cache_entries", "gauge"),
        ("egress_edge_leaf_mint_failures", "counter"),
        ("egress_edge_leaf_mint_seconds", "counter"),
        ("egress_edge_handle_redemptions", "counter"),
        ("egress_edge_config_reloads", "counter"),
        ("egress_edge_admin_auth_failures", "counter"),
        ("egress_edge_secrets_warm", "gauge"),
        ("egress_edge_secret_version", "gauge"),
        ("egress_edge_secret_updated_timestamp_seconds", "gauge"),
        ("egress_edge_resident_memory_bytes", "gauge"),
        ("egress_edge_open_fds", "gauge"),
        ("egress_edge_max_fds", "gauge"),
        ("egress_edge_upstream_connections", "gauge"),
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
    // The secrets come from a file: no SDS stream, so no SDS gauges pretending to be down.
    for family in [
        "egress_edge_sds_stream_connected",
        "egress_edge_sds_reconnects",
        "egress_edge_sds_nacks",
    ] {
        assert!(!exp.types.contains_key(family), "{family} without SDS");
    }

    // Labelled families have the samples the traffic above produced.
    let v = |n: &str, l: &[(&str, &str)]| {
        exp.value(n, l)
            .unwrap_or_else(|| panic!("no sample {n}{l:?}\n---\n{text}"))
    };
    assert_eq!(
        v(
            "egress_edge_connections_total",
            &[
                ("rung", "deny"),
                ("outcome", "destination_denied"),
                ("rule", "default_rung"),
                ("sandbox", "none")
            ]
        ),
        1.0
    );
    assert_eq!(
        v(
            "egress_edge_requests_total",
            &[
                ("rung", "deny"),
                ("outcome", "destination_denied"),
                ("rule", "default_rung"),
                ("status", "4xx"),
                ("sandbox", "none")
            ]
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
    // The process gauges describe this (test) process: at least its listeners are open.
    assert!(v("egress_edge_resident_memory_bytes", &[]) > f64::from(1 << 20));
    let fds = v("egress_edge_open_fds", &[]);
    assert!(fds >= 3.0, "{fds}");
    assert!(v("egress_edge_max_fds", &[]) >= fds);
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
