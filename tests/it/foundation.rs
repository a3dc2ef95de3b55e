//! Forward proxy, deny and pass-through rungs, SSRF-safe resolution, limits and shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use egress_edge::app::BuildOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn curl_tunnels_to_allowed_host() {
    let (pki, up, seen, proxy) = passthrough_env("").await;
    let url = format!("https://upstream.test:{}/small", up.port());
    let (code, out, err) = curl_async(vec![
        "-x".into(),
        proxy.url(),
        "--cacert".into(),
        pki.ca_path().display().to_string(),
        url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello");
    assert_eq!(seen.handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    proxy
        .wait_metric("egress_edge_connections_total{rung=\"passthrough\",outcome=\"ok\",rule=\"destinations[0]\",sandbox=\"none\"} 1")
        .await;
}

#[tokio::test]
async fn denied_host_gets_contract_body_and_no_upstream_connection() {
    let (_pki, up, seen, proxy) = passthrough_env("").await;
    for target in [
        "evil.example:443".to_owned(),
        format!("upstream.test:{}", up.port() + 1),
        "upstream.test:443".into(),
    ] {
        let (status, headers, body, _) = connect(proxy.addr, &target).await;
        assert_eq!(status, 403, "{target}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("destination_denied")
        );
        let v = json(&body);
        assert_eq!(v["error"], "destination_denied");
        assert_eq!(v["rule"], "default_rung");
        assert!(v["detail"].as_str().unwrap().contains("is not allowed"));
        assert!(v["hint"].as_str().unwrap().contains("do not retry"));
    }
    assert_eq!(
        seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Clients that show only the status line (requests, aiohttp, undici) still show the code;
/// SDKs that honour `x-should-retry` stop retrying a policy refusal.
#[tokio::test]
async fn refusals_carry_the_code_where_every_client_can_see_it() {
    let (_pki, _up, _seen, proxy) = passthrough_env("").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed early");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 403 destination_denied\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nproxy-status: egress-edge; error=http_request_denied; details=\"destination_denied\"\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-should-retry: false\r\n"), "{head}");
    assert!(!head.contains("retry-after"), "{head}");
}

/// Userinfo in a CONNECT authority and out-of-range ports are bad requests, never read
/// leniently (`http://host:99999/` used to go to port 80).
#[tokio::test]
async fn authorities_with_userinfo_or_bad_ports_are_bad_requests() {
    let connector = Arc::new(RecordingConnector::default());
    let proxy = Proxy::start_with(
        "state_dir: STATE_DIR\ndefault_rung: passthrough\nnetwork: { deny: [] }\n",
        BuildOptions {
            connector: Some(connector.clone()),
            ..Default::default()
        },
    )
    .await;
    for req in [
        "CONNECT a@b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n",
        "CONNECT b.test:99999 HTTP/1.1\r\nHost: b.test\r\n\r\n",
        "GET http://b.test:99999/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
        "GET http://b.test:65536/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
    ] {
        let (status, _, body, _) = raw(proxy.addr, req).await;
        assert_eq!(status, 400, "{req}: {body}");
    }
    assert!(
        connector.attempts.lock().unwrap().is_empty(),
        "nothing may be dialed"
    );
}

/// Every address form of the SSRF corpus is refused before any connection attempt. The
/// recording connector never connects, so a broken check could not reach these addresses.
#[tokio::test]
async fn ssrf_corpus_has_no_bypass() {
    let yaml = "state_dir: STATE_DIR
network:
  hosts:
    metadata.test: 169.254.169.254
    private.test: 10.0.0.7
    mixed.test: [93.184.216.34, 192.168.1.1]
    mapped.test: '::ffff:127.0.0.1'
    ula.test: 'fd00::1'
default_rung: passthrough
";
    let recorder = Arc::new(RecordingConnector::default());
    let opts = BuildOptions {
        connector: Some(recorder.clone()),
        ..Default::default()
    };
    let proxy = Proxy::start_with(yaml, opts).await;
    let corpus = [
        "127.0.0.1:443",
        "2130706433:443",
        "0177.0.0.1:443",
        "0x7f.1:443",
        "127.1:443",
        "0x7f000001:443",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "[::127.0.0.1]:443",
        "[64:ff9b::7f00:1]:443",
        "[2002:7f00:1::]:443",
        "0.0.0.0:443",
        "0:443",
        "localhost:443",
        "LOCALHOST.:443",
        "169.254.169.254:443",
        "169.254.43518:443",
        "[::ffff:169.254.169.254]:443",
        "[::ffff:a9fe:a9fe]:443",
        "metadata.test:443",
        "private.test:443",
        "mixed.test:443",
        "mapped.test:443",
        "ula.test:443",
        "10.0.0.1:443",
        "172.16.0.1:443",
        "192.168.0.1:443",
        "100.64.0.1:443",
        "[fd00::1]:443",
        "[fe80::1]:443",
        "224.0.0.1:443",
        "255.255.255.255:443",
        "[ff02::1]:443",
        "[::]:443",
    ];
    for target in corpus {
        let (status, headers, body, _) = connect(proxy.addr, target).await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("address_denied"),
            "{target}: {body}"
        );
    }
    // The same through absolute-form plain HTTP.
    for target in [
        "169.254.169.254",
        "2852039166",
        "metadata.test",
        "[::ffff:10.0.0.1]",
    ] {
        let (status, headers, body, _) = raw(
            proxy.addr,
            &format!("GET http://{target}/latest/meta-data HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("address_denied"),
            "{target}"
        );
    }
    assert!(
        recorder.attempts.lock().unwrap().is_empty(),
        "attempts: {:?}",
        recorder.attempts.lock().unwrap()
    );
    // A public literal does reach the dialer (the recorder refuses it): proves the corpus
    // was stopped by the check, not by something that stops everything.
    let (status, headers, _, _) = connect(proxy.addr, "93.184.216.34:443").await;
    assert_eq!(status, 502);
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("upstream_connect")
    );
    assert_eq!(recorder.attempts.lock().unwrap().len(), 1);
}

/// Each cloud's metadata, host-agent and private-endpoint addresses, by name (pinned to the
/// address the provider's resolver gives) and as literals, are refused by the `default` group
/// before any connection attempt, on every port. Azure's WireServer and IBM's private
/// endpoints are public-range addresses, so they need their own entries.
#[tokio::test]
async fn cloud_metadata_endpoints_are_refused_before_dialing() {
    let yaml = "state_dir: STATE_DIR
network:
  hosts:
    metadata.google.internal: 169.254.169.254
    metadata.tencentyun.com: 169.254.0.23
    instance-data.ec2.internal: 169.254.169.254
    wireserver.azure.test: 168.63.129.16
default_rung: passthrough
";
    let recorder = Arc::new(RecordingConnector::default());
    let opts = BuildOptions {
        connector: Some(recorder.clone()),
        ..Default::default()
    };
    let proxy = Proxy::start_with(yaml, opts).await;
    let corpus: &[(&str, &str)] = &[
        ("AWS IMDS", "169.254.169.254:80"),
        ("AWS IMDS by name", "instance-data.ec2.internal:80"),
        ("AWS IMDS IPv6", "[fd00:ec2::254]:80"),
        ("AWS Time Sync", "169.254.169.123:123"),
        ("AWS DNS", "169.254.169.253:53"),
        ("AWS ECS task metadata", "169.254.170.2:80"),
        ("GCP metadata", "metadata.google.internal:80"),
        ("GCP metadata IPv6", "[fd20:ce::254]:80"),
        ("Azure IMDS", "169.254.169.254:80"),
        ("Azure WireServer", "168.63.129.16:80"),
        ("Azure WireServer HostGAPlugin", "168.63.129.16:32526"),
        ("Azure WireServer by name", "wireserver.azure.test:443"),
        ("Azure WireServer mapped", "[::ffff:168.63.129.16]:80"),
        ("Alibaba metadata", "100.100.100.200:80"),
        ("Oracle IMDS", "169.254.169.254:80"),
        ("Oracle legacy IMDS", "192.0.0.192:80"),
        ("DigitalOcean metadata", "169.254.169.254:80"),
        ("Tencent metadata", "metadata.tencentyun.com:80"),
        ("Tencent metadata literal", "169.254.0.23:80"),
        ("Huawei metadata", "169.254.169.254:80"),
        ("OpenStack metadata", "169.254.169.254:80"),
        ("IBM VPC metadata", "169.254.169.254:80"),
        ("IBM IaaS private endpoint", "161.26.0.10:53"),
        ("IBM PaaS private endpoint", "166.9.0.1:443"),
    ];
    for (what, target) in corpus {
        let (status, headers, body, _) = connect(proxy.addr, target).await;
        assert_eq!(status, 403, "{what} ({target}): {body}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("address_denied"),
            "{what} ({target}): {body}"
        );
    }
    assert!(
        recorder.attempts.lock().unwrap().is_empty(),
        "attempts: {:?}",
        recorder.attempts.lock().unwrap()
    );
    // A public neighbour of the WireServer reaches the dialer (which refuses it).
    let (status, headers, _, _) = connect(proxy.addr, "168.63.129.17:80").await;
    assert_eq!(status, 502);
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("upstream_connect")
    );
    assert_eq!(recorder.attempts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn ports_outside_the_rule_are_denied() {
    let yaml = "state_dir: STATE_DIR
destinations:
  - { host: good.test, ports: [443] }
default_rung: deny
";
    let recorder = Arc::new(RecordingConnector::default());
    let proxy = Proxy::start_with(
        yaml,
        BuildOptions {
            connector: Some(recorder.clone()),
            ..Default::default()
        },
    )
    .await;
    for target in ["good.test:22", "good.test:80", "good.test:8443"] {
        let (status, headers, _, _) = connect(proxy.addr, target).await;
        assert_eq!(status, 403, "{target}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("destination_denied")
        );
    }
    assert!(recorder.attempts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn sni_mismatch_and_missing_sni_are_refused() {
    let (pki, up, seen, proxy) = passthrough_env("").await;
    let cfg = client_config(pki.roots(), &[b"http/1.1"]);
    let target = format!("upstream.test:{}", up.port());
    // Domain fronting: CONNECT to an allowed host, SNI of a host the policy does not allow.
    let err = tls_through(proxy.addr, &target, "other.test", cfg.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("access") || err.to_string().contains("alert"),
        "{err}"
    );
    // No SNI at all (rustls sends none for an IP server name).
    let err = tls_through(proxy.addr, &target, "127.0.0.1", cfg.clone())
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    // The upstream never saw a ClientHello it completed.
    assert_eq!(seen.handshakes.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The matching SNI works on the same proxy.
    let mut tls = tls_through(proxy.addr, &target, "upstream.test", cfg)
        .await
        .unwrap();
    tls.write_all(b"GET /small HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.ends_with("hello"), "{out}");
    proxy
        .wait_metric("egress_edge_refusals_total{code=\"sni_mismatch\"} 2")
        .await;
}

#[tokio::test]
async fn plain_http_is_proxied_with_keepalive_and_hop_headers_removed() {
    let (up, seen) = start_upstream(None).await;
    let yaml = format!(
        "state_dir: STATE_DIR
network: {{ allow: [127.0.0.1/32], hosts: {{ plain.test: 127.0.0.1 }} }}
destinations:
  - {{ host: plain.test, ports: [{}] }}
",
        up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    let url = format!("http://plain.test:{}/headers", up.port());
    let (code, out, err) = curl_async(vec![
        "-v".into(),
        "-x".into(),
        proxy.url(),
        "-H".into(),
        "Connection: x-hop".into(),
        "-H".into(),
        "X-Hop: 1".into(),
        "-H".into(),
        "Proxy-Authorization: Basic Zm9vOmJhcg==".into(),
        "-H".into(),
        "X-Keep: yes".into(),
        url.clone(),
        url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
    let mut objects = serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>();
    let first = objects.next().unwrap().unwrap();
    assert!(
        objects.next().unwrap().is_ok(),
        "two responses expected: {out}"
    );
    assert_eq!(first["x-keep"], "yes");
    assert!(first.get("x-hop").is_none(), "{first}");
    assert!(first.get("proxy-authorization").is_none(), "{first}");
    assert_eq!(first["host"], format!("plain.test:{}", up.port()));
    assert_eq!(seen.requests.lock().unwrap().len(), 2);
    // https in absolute form is refused with a readable body.
    let (status, headers, _, _) = raw(
        proxy.addr,
        "GET https://plain.test/ HTTP/1.1\r\nHost: plain.test\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("bad_request"));
}

#[tokio::test]
async fn limits_header_size_and_connection_count() {
    let yaml = "state_dir: STATE_DIR
proxy: { max_connections: 1, max_header_bytes: 8192 }
default_rung: deny
";
    let proxy = Proxy::start(yaml).await;
    let big = "a".repeat(20_000);
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!("GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut s).await;
    assert!(
        status == 431 || status == 0,
        "oversized headers must not be served, got {status}"
    );
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Hold the only slot, then a second connection is refused with a body.
    let mut hold = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    hold.write_all(b"GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut hold).await;
    assert_eq!(status, 403);
    let (status, headers, body, _) = raw(
        proxy.addr,
        "GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("proxy_overloaded")
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
}

/// `proxy.max_header_bytes` bounds the whole header section on the explicit listener, not
/// hyper's read buffer: at a 65,536 limit, 65,000 bytes pass and 70,000 are refused with 431
/// before anything is forwarded.
#[tokio::test]
async fn header_limit_is_exact_on_the_explicit_listener() {
    let (up, seen) = start_upstream(None).await;
    let port = up.port();
    let yaml = format!(
        "state_dir: STATE_DIR
proxy: {{ max_header_bytes: 65536 }}
network: {{ allow: [127.0.0.1/32], hosts: {{ plain.test: 127.0.0.1 }} }}
destinations:
  - {{ host: plain.test, ports: [{port}] }}
"
    );
    let proxy = Proxy::start(&yaml).await;
    let start =
        format!("GET http://plain.test:{port}/small HTTP/1.1\r\nHost: plain.test:{port}\r\n");
    let (status, _, body, _) = raw(proxy.addr, &sized_head(&start, 65_000)).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, headers, body, _) = raw(proxy.addr, &sized_head(&start, 70_000)).await;
    assert_eq!(status, 431, "{body}");
    if let Some(code) = header(&headers, "x-egress-edge-error") {
        assert_eq!(code, "headers_too_large");
        let v = json(&body);
        assert_eq!(v["error"], "headers_too_large");
        assert!(v["detail"].as_str().unwrap().contains("65536"), "{body}");
    }
    // A CONNECT carries the same limit.
    let connect = format!("CONNECT plain.test:{port} HTTP/1.1\r\nHost: plain.test:{port}\r\n");
    let (status, _, _, _) = raw(proxy.addr, &sized_head(&connect, 70_000)).await;
    assert_eq!(status, 431);
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn handshake_and_idle_timeouts_close_tunnels() {
    let (pki, up, _seen, proxy) = passthrough_env("").await;
    drop(proxy);
    let yaml = format!(
        "state_dir: STATE_DIR
proxy: {{ handshake_timeout: 1s, idle_timeout: 1s }}
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test, ports: [{}] }}
",
        up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    let target = format!("upstream.test:{}", up.port());
    // Handshake timeout: CONNECT, then send nothing.
    let (status, _, _, mut s) = connect(proxy.addr, &target).await;
    assert_eq!(status, 200);
    let t0 = Instant::now();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        t0.elapsed()
    );
    // Idle timeout: a working TLS session that then goes quiet.
    let mut tls = open_tunnel(&proxy, &pki, up).await;
    let mut buf = vec![0u8; 16];
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "tunnel should close when idle");
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn shutdown_drains_an_open_tunnel() {
    let (pki, up, _seen, mut proxy) = passthrough_env("").await;
    let target = format!("upstream.test:{}", up.port());
    let mut tls = tls_through(
        proxy.addr,
        &target,
        "upstream.test",
        client_config(pki.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections are accepted, and readiness says why...
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
    let (s, _, body) = http_get(proxy.admin, "/readyz", &[]).await;
    assert_eq!(s, 503);
    assert!(body.contains("draining"), "{body}");
    // ...but the open tunnel keeps working.
    tls.write_all(b"GET /small HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.ends_with("hello"), "{out}");
    drop(tls);
    // Once it closes, the proxy finishes well before the grace period.
    let done = proxy.done.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn admin_health_ready_and_access_log_shape() {
    let (_pki, _up, _seen, proxy) = passthrough_env("").await;
    let (s, _, _) = http_get(proxy.admin, "/healthz", &[]).await;
    assert_eq!(s, 200);
    let (s, _, _) = http_get(proxy.admin, "/readyz", &[]).await;
    assert_eq!(s, 200);
    let (s, _, body) = http_get(proxy.admin, "/v1/config", &[]).await;
    assert_eq!(s, 200);
    let v = json(&body);
    assert_eq!(v["default_rung"], "deny");
}

/// A guest that trickles a request head (slowloris) on the explicit listener is cut at
/// `proxy.header_read_timeout`, and the cut is counted.
#[tokio::test]
async fn a_trickled_head_is_cut_at_the_header_timeout_and_counted() {
    let proxy = Proxy::start("state_dir: STATE_DIR\nproxy: { header_read_timeout: 1s }\n").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"CONNECT upstream.test:443 HTTP/1.1\r\nHost: ups")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the trickled head was not cut");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    proxy.wait_metric("outcome=\"header_timeout\"").await;
}
