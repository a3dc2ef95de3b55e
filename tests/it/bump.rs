//! The bump rung: per-deployment CA, per-SNI leaves, verified re-origination, real clients.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    pki: Pki,
    up: std::net::SocketAddr,
    seen: Arc<Seen>,
    proxy: Proxy,
}

async fn bump_env(leaf: Option<Leaf>) -> Env {
    let pki = Pki::new("upstream test CA");
    let leaf = leaf.unwrap_or_else(|| pki.leaf(&["bump.test", "a.wild.test", "b.wild.test"]));
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"h2", b"http/1.1"]))).await;
    let proxy = bump_proxy(&pki, up.port()).await;
    Env {
        pki,
        up,
        seen,
        proxy,
    }
}

/// A bump env whose upstream offers `alpn`, with extra `upstream:` and `proxy:` settings
/// (`key: value, …`, may be empty).
async fn bump_env_with(alpn: &[&[u8]], upstream: &str, proxy: &str) -> Env {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["bump.test", "a.wild.test", "b.wild.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, alpn))).await;
    let proxy = bump_proxy_with(&pki, up.port(), upstream, proxy).await;
    Env {
        pki,
        up,
        seen,
        proxy,
    }
}

async fn bump_proxy(pki: &Pki, port: u16) -> Proxy {
    bump_proxy_with(pki, port, "", "").await
}

async fn bump_proxy_with(pki: &Pki, port: u16, upstream: &str, proxy: &str) -> Proxy {
    let upstream = if upstream.is_empty() {
        String::new()
    } else {
        format!(", {upstream}")
    };
    let yaml = format!(
        "state_dir: STATE_DIR
proxy: {{ {proxy} }}
upstream: {{ extra_roots: [{ca}]{upstream} }}
network: {{ allow: [127.0.0.1/32], hosts: {{ bump.test: 127.0.0.1, a.wild.test: 127.0.0.1, b.wild.test: 127.0.0.1, other.test: 127.0.0.1 }} }}
destinations:
  - {{ host: bump.test, ports: [{port}], rung: bump }}
  - {{ host: '*.wild.test', ports: [{port}], rung: bump }}
  - {{ host: other.test, ports: [{port}], rung: passthrough }}
",
        ca = pki.ca_path().display()
    );
    Proxy::start(&yaml).await
}

/// An HTTP/2 session to `bump.test` through the proxy; the handle ends when the session does.
async fn h2_session(
    env: &Env,
) -> (
    hyper::client::conn::http2::SendRequest<TBody>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{}", env.up.port()),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

fn empty() -> TBody {
    http_body_util::Empty::<bytes::Bytes>::new().boxed()
}

/// `n` concurrent GETs of `path` on one HTTP/2 session; every one must answer 200 `want`.
async fn h2_burst(env: &Env, n: usize, path: &str, want: &str) {
    let (send, _conn) = h2_session(env).await;
    let url = format!("https://bump.test:{}{path}", env.up.port());
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut send = send.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url).body(empty()).unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..], want.as_bytes());
    }
}

fn curl_args(env: &Env, extra: &[&str], url: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-x".into(),
        env.proxy.url(),
        "--cacert".into(),
        env.proxy.bump_ca_path().display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(url.to_owned());
    v
}

#[tokio::test]
async fn curl_http1_and_http2_through_the_bump_see_a_minted_leaf() {
    let env = bump_env(None).await;
    let url = format!("https://bump.test:{}/small", env.up.port());
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out, err) = curl_async(curl_args(
            &env,
            &["-v", flag, "-w", "\n%{http_version}"],
            &url,
        ))
        .await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("hello\n{version}"));
        assert!(
            err.contains("issuer: O=egress-edge") || err.contains("egress-edge CA"),
            "{err}"
        );
        assert!(
            err.contains("subject: CN=bump.test") || err.contains("bump.test"),
            "{err}"
        );
    }
    // The upstream saw re-originated requests over its own verified TLS.
    assert!(
        env.seen
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
}

/// An upstream offering both protocols is spoken to in HTTP/1.1 for an HTTP/1.1 guest (faster
/// relaying, nothing of HTTP/2 needed) and in HTTP/2 for an HTTP/2 guest (which may need it,
/// as gRPC does).
#[tokio::test]
async fn the_upstream_leg_follows_the_guest_s_protocol() {
    let env = bump_env(None).await;
    let url = format!("https://bump.test:{}/version", env.up.port());
    for (flag, upstream) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2.0")] {
        let (code, out, err) = curl_async(curl_args(&env, &[flag], &url)).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, upstream, "guest {flag}");
    }
}

/// A body relayed in joined and cut chunks (`rung::coalesce`) arrives byte for byte, over an
/// HTTP/2 guest leg (chunks cut to one TLS record each) and an HTTP/1.1 one, whichever
/// protocol the upstream leg speaks.
#[tokio::test]
async fn a_large_body_in_odd_chunks_arrives_intact_over_both_protocols() {
    use crate::common::upstream::{PATTERN_LEN, pattern_byte};
    let want: Vec<u8> = (0..PATTERN_LEN).map(pattern_byte).collect();
    let dir = tempfile::tempdir().unwrap();
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let h1_only: &[&[u8]] = &[b"http/1.1"];
    for (alpn, upstream) in [(both, "h2 upstream"), (h1_only, "http/1.1 upstream")] {
        let env = bump_env_with(alpn, "", "").await;
        let url = format!("https://bump.test:{}/pattern", env.up.port());
        for flag in ["--http2", "--http1.1"] {
            let out = dir.path().join("pattern.bin");
            let path = out.display().to_string();
            let (code, _, err) = curl_async(curl_args(&env, &[flag, "-o", &path], &url)).await;
            assert_eq!(code, 0, "{upstream}, guest {flag}: {err}");
            let got = std::fs::read(&out).unwrap();
            assert_eq!(got.len(), want.len(), "{upstream}, guest {flag}");
            assert!(got == want, "{upstream}, guest {flag}: the body differs");
        }
    }
}

#[tokio::test]
async fn python_urllib_through_the_bump() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: python3 not found");
        return;
    }
    let env = bump_env(None).await;
    let script = r#"
import ssl, sys, urllib.request
proxy, ca, url = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy}), urllib.request.HTTPSHandler(context=ctx))
print(opener.open(url, timeout=15).read().decode(), end="")
"#;
    let args = vec![
        "-c".to_owned(),
        script.to_owned(),
        env.proxy.url(),
        env.proxy.bump_ca_path().display().to_string(),
        format!("https://bump.test:{}/small", env.up.port()),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
}

/// A hyper client over CONNECT + TLS trusting the bump CA.
async fn h_client(
    env: &Env,
    sni: &str,
    alpn: &[&[u8]],
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tls = tls_through(
        env.proxy.addr,
        &format!("{sni}:{}", env.up.port()),
        sni,
        client_config(env.proxy.bump_roots(), alpn),
    )
    .await
    .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

#[tokio::test]
async fn server_sent_events_stream_without_buffering() {
    let env = bump_env(None).await;
    let mut send = h_client(&env, "bump.test", &[b"http/1.1"]).await;
    let t0 = Instant::now();
    let req = http::Request::get("/sse")
        .header("host", format!("bump.test:{}", env.up.port()))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = t0.elapsed();
    assert_eq!(&first[..], b"data: one\n\n");
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: two\n\n");
    let total = t0.elapsed();
    assert!(
        total >= Duration::from_millis(1400),
        "upstream sleeps 1.5s between events: {total:?}"
    );
    assert!(
        first_at < Duration::from_millis(1000),
        "first event must arrive before the upstream finishes: {first_at:?}"
    );
}

#[tokio::test]
async fn websocket_echo_through_the_bump() {
    let env = bump_env(None).await;
    let mut tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{}", env.up.port()),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    tls.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: bump.test:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
            env.up.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, headers, _) = read_response(&mut tls).await;
    assert_eq!(status, 101);
    assert_eq!(
        header(&headers, "sec-websocket-accept"),
        Some(ws_accept(key).as_str())
    );
    let payload = b"ping through bump";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tls.write_all(&frame).await.unwrap();
    let mut hdr = [0u8; 2];
    tls.read_exact(&mut hdr).await.unwrap();
    let mut echo = vec![0u8; (hdr[1] & 0x7f) as usize];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, payload);
}

/// An upgrade the upstream declines is relayed as an ordinary response, and the request is
/// logged and counted like any other (it used to skip the `requests` metric).
#[tokio::test]
async fn declined_upgrade_is_counted_once() {
    let env = bump_env(None).await;
    let mut tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{}", env.up.port()),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(
        format!(
            "GET /small HTTP/1.1\r\nHost: bump.test:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            env.up.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut tls).await;
    assert_eq!(status, 200, "the upstream declined the upgrade");
    env.proxy
        .wait_metric("egress_edge_requests_total{rung=\"bump\",outcome=\"ok\",rule=\"destinations[0]\",status=\"2xx\",sandbox=\"none\"} 1")
        .await;
}

#[tokio::test]
async fn http2_trailers_pass_through_the_bump() {
    let env = bump_env(None).await;
    let tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{}", env.up.port()),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://bump.test:{}/trailers", env.up.port()))
        .header("te", "trailers")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"body");
}

#[tokio::test]
async fn host_mismatch_inside_a_bumped_session_is_refused() {
    let env = bump_env(None).await;
    let url = format!("https://bump.test:{}/headers", env.up.port());
    for host in ["other.test", "evil.example", "a.wild.test"] {
        let h = format!("Host: {host}:{}", env.up.port());
        let (code, out, err) = curl_async(curl_args(&env, &["-H", &h, "-D", "-"], &url)).await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("x-egress-edge-error: host_mismatch"),
            "{host}: {out}"
        );
    }
    assert!(env.seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn upstream_certificate_failures_are_502_with_the_cause() {
    let pki = Pki::new("upstream test CA");
    let stranger = Pki::new("unknown CA");
    let cases: Vec<(&str, Leaf, &str)> = vec![
        (
            "expired",
            pki.leaf_with(&["bump.test"], |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            "expired",
        ),
        (
            "wrong name",
            pki.leaf(&["elsewhere.test"]),
            "not valid for this name",
        ),
        (
            "unknown CA",
            stranger.leaf(&["bump.test"]),
            "unknown issuer",
        ),
        ("self-signed", self_signed(&["bump.test"]), "unknown issuer"),
    ];
    for (case, leaf, cause) in cases {
        let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
        let proxy = bump_proxy(&pki, up.port()).await;
        let env = Env {
            pki: Pki::new("unused"),
            up,
            seen,
            proxy,
        };
        let url = format!("https://bump.test:{}/small", env.up.port());
        let (code, out, err) = curl_async(curl_args(&env, &["-D", "-"], &url)).await;
        assert_eq!(code, 0, "{case}: {err}");
        assert!(
            out.contains("HTTP/1.1 502") || out.contains("HTTP/2 502"),
            "{case}: {out}"
        );
        assert!(
            out.contains("x-egress-edge-error: upstream_tls"),
            "{case}: {out}"
        );
        assert!(out.contains(cause), "{case}: expected `{cause}` in {out}");
        assert!(
            env.seen.requests.lock().unwrap().is_empty(),
            "{case}: the request must not reach the upstream"
        );
    }
}

#[tokio::test]
async fn upstream_connect_failure_is_a_clear_502() {
    let pki = Pki::new("upstream test CA");
    // A port with nothing listening.
    let port = {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let proxy = bump_proxy(&pki, port).await;
    let env = Env {
        pki,
        up: format!("127.0.0.1:{port}").parse().unwrap(),
        seen: Arc::new(Seen::default()),
        proxy,
    };
    let url = format!("https://bump.test:{port}/small");
    let (code, out, err) = curl_async(curl_args(&env, &["-D", "-"], &url)).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("x-egress-edge-error: upstream_connect"),
        "{out}"
    );
}

#[tokio::test]
async fn concurrent_first_requests_for_one_sni_mint_once() {
    let env = bump_env(None).await;
    let url = format!("https://a.wild.test:{}/small", env.up.port());
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(tokio::spawn(curl_async(curl_args(&env, &[], &url))));
    }
    for t in tasks {
        let (code, out, err) = t.await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, "hello");
    }
    let m = env.proxy.metrics().await;
    // bump.test was pre-minted at startup; a.wild.test exactly once more.
    assert!(m.contains("egress_edge_leaf_mints_total 2"), "{m}");
    let _ = &env.pki;
}

#[tokio::test]
async fn generated_ca_is_name_constrained_to_bump_hosts() {
    let env = bump_env(None).await;
    let pem = std::fs::read_to_string(env.proxy.bump_ca_path()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
            c.wait_with_output().unwrap()
        });
    let Ok(out) = out else {
        eprintln!("SKIP: openssl not found");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Name Constraints"), "{text}");
    assert!(
        text.contains("DNS:bump.test") && text.contains("DNS:wild.test"),
        "{text}"
    );
    assert!(text.contains("pathlen:0"), "{text}");
}

/// A real gRPC call (our own SDS server's `FetchSecrets`, served over TLS) made by a tonic
/// client through the bump: HTTP/2 on both sides, `te: trailers`, and `grpc-status` trailers.
#[tokio::test]
async fn grpc_through_the_bump() {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["grpc.test"]);
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "grpc.pem", &leaf.cert_pem);
    let key = write(dir.path(), "grpc-key.pem", &leaf.key_pem);
    let secrets = write(
        dir.path(),
        "s.yaml",
        "secrets:\n  demo: { value: grpc-through-bump }\n",
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let tls = egress_sds::server::ServerTls {
        cert,
        key,
        client_ca: None,
    };
    let server = egress_sds::server::Server::with_listener(l, &secrets, Some(&tls)).unwrap();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let yaml = format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ grpc.test: 127.0.0.1 }} }}
destinations:
  - {{ host: grpc.test, ports: [{port}], rung: bump }}
",
        pki.ca_path().display()
    );
    let proxy = Proxy::start(&yaml).await;
    let (proxy_addr, roots) = (proxy.addr, proxy.bump_roots());
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let roots = roots.clone();
        async move {
            let tls = tls_through(
                proxy_addr,
                &format!("grpc.test:{port}"),
                "grpc.test",
                client_config(roots, &[b"h2"]),
            )
            .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://grpc.test:{port}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut client = egress_sds::proto::SecretDiscoveryServiceClient::new(channel);
    let resp = client
        .fetch_secrets(egress_sds::proto::DiscoveryRequest {
            node: Some(egress_sds::proto::Node {
                id: "t".into(),
                cluster: "t".into(),
                ..Default::default()
            }),
            resource_names: vec!["demo".into()],
            type_url: egress_sds::proto::SECRET_TYPE_URL.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.resources.len(), 1);
    let (name, secret) = egress_sds::Secret::from_any(&resp.resources[0]).unwrap();
    assert_eq!(name, "demo");
    let egress_sds::Secret::Generic { value: Some(v), .. } = secret else {
        panic!("generic expected")
    };
    assert_eq!(v.expose(), b"grpc-through-bump");
    // A gRPC error status travels in trailers too.
    let err = client
        .fetch_secrets(egress_sds::proto::DiscoveryRequest {
            type_url: "type.googleapis.com/wrong".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// Upstream trust roots delivered by the secret source (`validation_context`, as SPIRE and
/// Istio agents serve them) verify re-originated TLS; without them the same upstream fails.
#[tokio::test]
async fn upstream_roots_from_the_secret_source() {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["bump.test"]);
    let (up, _seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.ca_path(), dir.path().join("up-ca.pem")).unwrap();
    let secrets = write(
        dir.path(),
        "s.yaml",
        "secrets:\n  up-roots: { trusted_ca: up-ca.pem }\n",
    );
    for (roots, expect_ok) in [("[up-roots]", true), ("[]", false)] {
        let yaml = format!(
            "state_dir: STATE_DIR
upstream: {{ extra_roots_sds: {roots} }}
secrets: {{ file: {} }}
network: {{ allow: [127.0.0.1/32], hosts: {{ bump.test: 127.0.0.1 }} }}
destinations:
  - {{ host: bump.test, ports: [{}], rung: bump }}
",
            secrets.display(),
            up.port()
        );
        let proxy = Proxy::start(&yaml).await;
        let env = Env {
            pki: Pki::new("unused"),
            up,
            seen: Arc::new(Seen::default()),
            proxy,
        };
        let (code, out, err) = curl_async(curl_args(
            &env,
            &["-D", "-"],
            &format!("https://bump.test:{}/small", up.port()),
        ))
        .await;
        assert_eq!(code, 0, "{err}");
        if expect_ok {
            assert!(out.ends_with("hello"), "{out}");
        } else {
            assert!(out.contains("x-egress-edge-error: upstream_tls"), "{out}");
        }
    }
}

/// One guest HTTP/2 session with 100 concurrent requests to an HTTP/1.1-only upstream used to
/// open one upstream connection per request; the per-host cap holds it to 8, and the excess
/// requests wait for a pooled connection instead of failing.
#[tokio::test]
async fn h2_burst_to_an_http1_upstream_stays_within_the_per_host_connection_cap() {
    let env = bump_env_with(&[b"http/1.1"], "max_connections_per_host: 8", "").await;
    h2_burst(&env, 100, "/slow", "slow").await;
    assert_eq!(env.seen.requests.lock().unwrap().len(), 100);
    let conns = env.seen.connections.load(Ordering::SeqCst);
    assert!(conns <= 8, "{conns} upstream connections for one host");
}

/// `upstream.max_pooled_total` bounds the upstream connections kept for reuse across all
/// hosts: with a bound of 1, `a.wild.test`'s connection is pooled and reused, while each
/// request to `b.wild.test` (opened while one is already open) gets a connection that is
/// closed after it; with the default bound both hosts' connections are reused. The gauge
/// shows what is open.
#[tokio::test]
async fn upstream_connections_beyond_max_pooled_total_are_not_kept() {
    for (bound, want) in [("max_pooled_total: 1", 1 + 3), ("", 2)] {
        let env = bump_env_with(&[b"http/1.1"], bound, "").await;
        for _ in 0..3 {
            for host in ["a.wild.test", "b.wild.test"] {
                let target = format!("{host}:{}", env.up.port());
                let cfg = client_config(env.proxy.bump_roots(), &[b"http/1.1"]);
                let mut tls = tls_through(env.proxy.addr, &target, host, cfg)
                    .await
                    .unwrap();
                let get = format!("GET /small HTTP/1.1\r\nHost: {target}\r\n\r\n");
                tls.write_all(get.as_bytes()).await.unwrap();
                assert_eq!(read_response(&mut tls).await.0, 200, "{bound} {host}");
            }
        }
        let conns = env.seen.connections.load(Ordering::SeqCst);
        assert_eq!(conns, want, "{bound:?}: upstream connections");
        let kept = if bound.is_empty() { 2 } else { 1 };
        env.proxy
            .wait_metric(&format!("egress_edge_upstream_connections {kept}\n"))
            .await;
    }
}

/// Over `upstream.max_pooled_total` (0 here: every connection is over it and closed after its
/// request), an HTTP/2 upstream still serves bursts of concurrent requests, none failing:
/// requests that were waiting to share a connection that turns out not reusable are not lost.
#[tokio::test]
async fn an_h2_upstream_over_the_pool_budget_serves_a_concurrent_burst() {
    let env = bump_env_with(&[b"h2", b"http/1.1"], "max_pooled_total: 0", "").await;
    for round in 1..=5 {
        h2_burst(&env, 100, "/small", "hello").await;
        h2_burst(&env, 40, "/slow", "slow").await;
        assert_eq!(env.seen.requests.lock().unwrap().len(), 140 * round);
    }
}

/// A bump session advertises at most 100 concurrent streams, so one guest connection cannot
/// put more requests than that in flight upstream.
#[tokio::test]
async fn concurrent_streams_per_bump_session_are_capped() {
    let env = bump_env(None).await;
    h2_burst(&env, 150, "/slow", "slow").await;
    let peak = env.seen.peak_inflight.load(Ordering::SeqCst);
    assert!(
        peak <= 100,
        "{peak} requests in flight from one guest session"
    );
    assert!(peak >= 50, "the burst should overlap: peak {peak}");
}

/// An upstream that answers an upload at once (413, or an early 200) and neither reads nor
/// releases the body: the guest gets the response and the exchange ends instead of stalling
/// on flow control, whether the upstream speaks HTTP/2 or HTTP/1.1. curl (a 32 MiB upload,
/// more than the sockets and windows in between can buffer) stops uploading on the 413 and
/// shows it; a client that keeps uploading has the rest drained briefly, then its HTTP/2
/// stream reset with NO_ERROR (RFC 9113 §8.1) or its HTTP/1.1 connection closed.
#[tokio::test]
async fn upload_answered_before_it_is_read_completes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'x'; 32 * 1024 * 1024]).unwrap();
    let file = file.to_str().unwrap();
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let h1_only: &[&[u8]] = &[b"http/1.1"];
    for alpn in [both, h1_only] {
        let env = bump_env_with(alpn, "", "").await;
        // curl stops uploading once it has an error response; it gets it over both protocols.
        let url = format!("https://bump.test:{}/early", env.up.port());
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let t0 = Instant::now();
            let (code, out, err) = curl_async(curl_args(
                &env,
                &[flag, "-T", file, "-w", "\n%{http_code} %{http_version}"],
                &url,
            ))
            .await;
            let took = t0.elapsed();
            assert_eq!(code, 0, "{alpn:?} {flag}: {err}");
            assert_eq!(out, format!("early 413\n413 {version}"), "{alpn:?} {flag}");
            assert!(
                took < Duration::from_secs(5),
                "{alpn:?} {flag}: took {took:?}"
            );
        }
        // Clients that keep uploading after the response.
        for status in [413u16, 200] {
            let case = format!("upstream {alpn:?}, {status}");
            let url = format!("https://bump.test:{}/early?status={status}", env.up.port());
            let want = format!("early {status}");
            // hyper clients streaming their bodies, over HTTP/2 and HTTP/1.1.
            let (mut h2, _conn) = h2_session(&env).await;
            let (body, producer) = streaming_upload();
            let req = http::Request::put(url.clone()).body(body).unwrap();
            let resp = h2.send_request(req);
            check_early(&case, "h2", resp, status, &want, producer).await;
            let tls = tls_through(
                env.proxy.addr,
                &format!("bump.test:{}", env.up.port()),
                "bump.test",
                client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
            )
            .await
            .unwrap();
            let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let (body, producer) = streaming_upload();
            let req = http::Request::put(format!("/early?status={status}"))
                .header("host", format!("bump.test:{}", env.up.port()))
                .body(body)
                .unwrap();
            let resp = h1.send_request(req);
            check_early(&case, "h1", resp, status, &want, producer).await;
        }
    }
}

/// An upload that never ends by itself (64 KiB chunks until the body is dropped); the task
/// ends when the proxy resets or closes it.
fn streaming_upload() -> (TBody, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(4);
    let producer = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'y'; 64 * 1024]);
        while tx
            .send(Ok(hyper::body::Frame::data(chunk.clone())))
            .await
            .is_ok()
        {}
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (http_body_util::StreamBody::new(stream).boxed(), producer)
}

/// The early answer arrives whole, and the endless upload is then reset (HTTP/2) or its
/// connection closed (HTTP/1.1) after the drain grace instead of going on forever.
async fn check_early(
    case: &str,
    proto: &str,
    resp: impl std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
    status: u16,
    want: &str,
    producer: tokio::task::JoinHandle<()>,
) {
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap_or_else(|_| panic!("{case} {proto}: no response headers"))
        .unwrap();
    assert_eq!(resp.status(), status, "{case} {proto}");
    let got = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{case} {proto}: no response body"))
        .unwrap()
        .to_bytes();
    assert_eq!(&got[..], want.as_bytes(), "{case} {proto}");
    tokio::time::timeout(Duration::from_secs(5), producer)
        .await
        .unwrap_or_else(|_| panic!("{case} {proto}: the upload must end, not hang"))
        .unwrap();
}

/// Inside the bump, a request head must arrive within `header_read_timeout`; a keep-alive
/// connection waiting for its next request is governed by `idle_timeout` instead.
#[tokio::test]
async fn bumped_request_heads_are_timed_by_header_read_timeout() {
    let env = bump_env_with(
        &[b"h2", b"http/1.1"],
        "",
        "header_read_timeout: 1s, idle_timeout: 30s",
    )
    .await;
    let mut tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{}", env.up.port()),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let get = format!(
        "GET /small HTTP/1.1\r\nHost: bump.test:{}\r\n\r\n",
        env.up.port()
    );
    tls.write_all(get.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut tls).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    // Idle for longer than the header timeout: the keep-alive connection stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tls.write_all(get.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut tls).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    // A head that never completes is cut after the header timeout, not the idle timeout.
    tls.write_all(b"GET /small HTTP/1.1\r\nHost: bump.t")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("the partial head must be cut at header_read_timeout");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "cut after {took:?}"
    );
}

/// An HTTP/2 bump session with no request in flight ends at `idle_timeout`; a request that
/// streams for longer than that is not cut.
#[tokio::test]
async fn idle_h2_bump_session_ends_at_idle_timeout() {
    let env = bump_env_with(&[b"h2", b"http/1.1"], "", "idle_timeout: 1s").await;
    let (mut send, conn) = h2_session(&env).await;
    let req = http::Request::get(format!("https://bump.test:{}/sse", env.up.port()))
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data: one\n\ndata: two\n\n");
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), conn)
        .await
        .expect("an idle HTTP/2 session must end at idle_timeout")
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(800), "ended after {took:?}");
}

/// Only WebSocket upgrades are relayed. Any other `Upgrade` (h2c, TLS, a custom protocol)
/// would turn the session into uninspected bytes after a 101, so it is refused before the
/// upstream sees it.
#[tokio::test]
async fn only_websocket_upgrades_are_relayed() {
    let env = bump_env(None).await;
    for token in ["h2c", "foo", "TLS/1.0", "websocket, foo", "foo, websocket"] {
        let mut tls = tls_through(
            env.proxy.addr,
            &format!("bump.test:{}", env.up.port()),
            "bump.test",
            client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
        )
        .await
        .unwrap();
        tls.write_all(
            format!(
                "GET /raw-upgrade HTTP/1.1\r\nHost: bump.test:{}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {token}\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
                env.up.port()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (status, headers, body) = read_response(&mut tls).await;
        assert_eq!(status, 400, "{token}: {body}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("bad_request"),
            "{token}"
        );
        assert!(
            json(&body)["detail"]
                .as_str()
                .unwrap()
                .contains("WebSocket"),
            "{body}"
        );
    }
    assert!(env.seen.requests.lock().unwrap().is_empty());
    env.proxy
        .wait_metric("egress_edge_refusals_total{code=\"bad_request\"} 5")
        .await;
    // An upstream that answers a WebSocket upgrade by switching to something else is not
    // relayed either.
    let mut tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{}", env.up.port()),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(
        format!(
            "GET /raw-upgrade?as=h2c HTTP/1.1\r\nHost: bump.test:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            env.up.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, headers, body) = read_response(&mut tls).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("upstream_connect")
    );
    assert!(body.contains("other than WebSocket"), "{body}");
}

/// `proxy.max_header_bytes` bounds the whole header section of a bumped request, over
/// HTTP/1.1 and HTTP/2: 65,000 bytes pass a 65,536 limit, 70,000 are refused with 431.
#[tokio::test]
async fn header_limit_is_enforced_inside_the_bump() {
    let env = bump_env_with(&[b"h2", b"http/1.1"], "", "max_header_bytes: 65536").await;
    let port = env.up.port();
    for (size, want) in [(65_000, 200), (70_000, 431)] {
        // HTTP/1.1: the head is exactly `size` bytes on the wire.
        let mut tls = tls_through(
            env.proxy.addr,
            &format!("bump.test:{port}"),
            "bump.test",
            client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
        )
        .await
        .unwrap();
        let head = sized_head(
            &format!("GET /small HTTP/1.1\r\nHost: bump.test:{port}\r\n"),
            size,
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        let (status, headers, _) = read_response(&mut tls).await;
        assert_eq!(status, want, "h1, {size} bytes");
        if want == 431 {
            // hyper's own buffer limit may answer first, without a body; when the request
            // reaches the proxy's count, the refusal carries its code.
            if let Some(code) = header(&headers, "x-egress-edge-error") {
                assert_eq!(code, "headers_too_large");
            }
        }
        // HTTP/2: the same header section, counted the same way.
        let (mut send, _conn) = h2_session(&env).await;
        let fill =
            size - format!("GET https://bump.test:{port}/small HTTP/1.1\r\nx-fill: \r\n\r\n").len();
        let req = http::Request::get(format!("https://bump.test:{port}/small"))
            .header("x-fill", "f".repeat(fill))
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), want, "h2, {size} bytes");
        if want == 431 {
            assert_eq!(resp.headers()["x-egress-edge-error"], "headers_too_large");
        }
    }
    let seen = env.seen.requests.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "only the two requests under the limit reach the upstream"
    );
}

/// The access log users expect: request events with the path (query values redacted), a
/// request id (the guest's, propagated, or a generated one, also in refusal bodies), the
/// upstream status, time to first byte and the address actually dialed; the session event
/// with real byte counts and an `ok` outcome when the guest simply closes.
#[tokio::test]
async fn access_events_carry_path_id_status_ttfb_dialed_address_and_bytes() {
    let logs = crate::inject::capture_logs();
    let env = bump_env(None).await;
    let port = env.up.port();
    let mut tls = tls_through(
        env.proxy.addr,
        &format!("bump.test:{port}"),
        "bump.test",
        client_config(env.proxy.bump_roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    tls.write_all(
        format!(
            "GET /headers?marker=access-shape-1&key=hush HTTP/1.1\r\nHost: bump.test:{port}\r\nX-Request-Id: guest-id-42\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut tls).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["x-request-id"],
        "guest-id-42",
        "propagated upstream"
    );
    // A refused request on the same session: the id comes back in the body.
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .unwrap();
    let (status, headers, body) = read_response(&mut tls).await;
    assert_eq!(status, 403);
    let id = json(&body)["request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{body}");
    assert_eq!(header(&headers, "x-request-id"), Some(id.as_str()));
    drop(tls);
    // The capture is tracing's JSON with the event's fields under `fields`.
    let fields = |l: &str| -> Option<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .map(|v| v["fields"].clone())
    };
    let wanted = |lines: &str, needle: &str| -> Option<serde_json::Value> {
        lines
            .lines()
            .filter(|l| l.contains(needle) && l.contains("egress_edge::access"))
            .find_map(fields)
    };
    let mut request = None;
    let mut session = None;
    for _ in 0..50 {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
        request = wanted(&text, "marker=…&key=…");
        session = text
            .lines()
            .filter(|l| l.contains("\"bump_session\"") && l.contains("bump.test"))
            .filter_map(fields)
            .find(|v| v["port"] == port && v["bytes_down"].as_u64().unwrap_or(0) > 0);
        if request.is_some() && session.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = request.expect("request event");
    assert_eq!(request["path"], "/headers?marker=…&key=…");
    assert!(!request.to_string().contains("hush"), "query value logged");
    assert_eq!(request["request_id"], "guest-id-42");
    assert_eq!(request["status"], 200);
    assert!(request["ttfb_ms"].as_u64().is_some());
    assert_eq!(
        request["resolved"],
        format!("127.0.0.1:{port}"),
        "{request}"
    );
    let session = session.expect("session event with bytes");
    assert_eq!(session["outcome"], "ok", "{session}");
    assert!(session["bytes_up"].as_u64().unwrap() > 0, "{session}");
}

/// A session that completes its handshake (or sends only the HTTP/2 preface) and then stays
/// silent holds a connection slot: it is closed at `header_read_timeout`, not at the much
/// longer `idle_timeout` meant for keep-alive between requests. A session that made a request
/// is not cut by it.
#[tokio::test]
async fn a_silent_session_is_held_to_the_header_timeout_not_the_idle_timeout() {
    let env = bump_env_with(
        &[b"h2", b"http/1.1"],
        "",
        "header_read_timeout: 1s, idle_timeout: 5m",
    )
    .await;
    let target = format!("bump.test:{}", env.up.port());
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let cfg = client_config(env.proxy.bump_roots(), &[alpn]);
        let mut tls = tls_through(env.proxy.addr, &target, "bump.test", cfg)
            .await
            .unwrap();
        if alpn == b"h2" {
            // The connection preface and an empty SETTINGS frame, then nothing.
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let took = t0.elapsed();
        assert!(closed.is_ok(), "{alpn:?}: a silent session was not closed");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{alpn:?}: closed after {took:?}"
        );
    }
    env.proxy.wait_metric("outcome=\"header_timeout\"").await;
    // One request, then quiet for longer than the header timeout: still served.
    let cfg = client_config(env.proxy.bump_roots(), &[b"http/1.1"]);
    let mut tls = tls_through(env.proxy.addr, &target, "bump.test", cfg)
        .await
        .unwrap();
    let get = format!("GET /small HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tls.write_all(get.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tls.write_all(get.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls).await.0, 200);
}

/// A response the guest walks away from is `aborted`, with the bytes actually relayed, not
/// `ok` with the bytes the upstream meant to send.
#[tokio::test]
async fn a_response_cut_short_is_logged_as_aborted_with_the_bytes_relayed() {
    let logs = crate::inject::capture_logs();
    let env = bump_env(None).await;
    let target = format!("bump.test:{}", env.up.port());
    let cfg = client_config(env.proxy.bump_roots(), &[b"http/1.1"]);
    let mut tls = tls_through(env.proxy.addr, &target, "bump.test", cfg)
        .await
        .unwrap();
    let id = "cut-short-0123456789";
    let get = format!("GET /sse HTTP/1.1\r\nHost: {target}\r\nx-request-id: {id}\r\n\r\n");
    tls.write_all(get.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: one") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    // Gone before the second event (sent 1.5 s later).
    drop(tls);
    let mut event = None;
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
        event = text
            .lines()
            .filter(|l| l.contains("egress_edge::access") && l.contains(id))
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        if event.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = event.expect("no access event for the request")["fields"].clone();
    assert_eq!(ev["outcome"], "aborted", "{ev}");
    assert_eq!(ev["bytes_down"], "data: one\n\n".len(), "{ev}");
    env.proxy.wait_metric("outcome=\"aborted\"").await;
}
