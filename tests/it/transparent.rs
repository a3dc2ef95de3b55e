//! The transparent listener against a real kernel, without `jail`: a guest namespace whose
//! only link is a veth into an "edge" namespace, the ruleset `egress-edge nft-rules` prints
//! loaded there by hand, the proxy's transparent listener and every upstream bound inside the edge
//! namespace. Guests are real clients (curl, python) that know nothing of the proxy.
//!
//! Every address here exists only in the namespaces these tests create: the upstreams sit on
//! a dummy interface of the edge namespace, and the proxy dials from inside it.

use std::sync::Arc;
use std::time::Duration;

use egress_edge::app::BuildOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::inject::capture_logs;

const UP4: &str = "10.99.0.2";
const OTHER4: &str = "10.99.0.3";
const UP6: &str = "fd99::2";
/// A private address with no rule and nothing behind it.
const PRIVATE: &str = "10.66.0.9";

/// Two namespaces, the rules, the upstreams and a proxy.
struct Net {
    guest: Netns,
    /// Kept so the namespace lives as long as the fixture.
    _edge: Netns,
    /// Distinguishes this fixture's host names from other tests' in the shared log capture.
    k: usize,
    up_ca: std::path::PathBuf,
    seen_tls: Arc<Seen>,
    seen_plain: Arc<Seen>,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

impl Net {
    fn name(&self, base: &str) -> String {
        format!("{base}-{}.test", self.k)
    }

    async fn new() -> Net {
        capture_logs();
        let k = unique();
        let edge = Netns::new("tedge");
        let guest = Netns::new("tguest");
        let (edge_if, _) = veth(&edge, &guest, "10.88.0", "fd88:0");
        guest.ip(&["route", "add", "default", "via", "10.88.0.1"]);
        guest.ip(&["-6", "route", "add", "default", "via", "fd88:0::1"]);
        dummy(
            &edge,
            &[
                &format!("{UP4}/32"),
                &format!("{OTHER4}/32"),
                &format!("{UP6}/128"),
            ],
        );
        let names: Vec<String> = ["up", "six", "bump", "plain", "denied"]
            .iter()
            .map(|b| format!("{b}-{k}.test"))
            .collect();
        let pki = Pki::new("transparent upstream CA");
        let leaf = pki.leaf(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let tls_l = edge.tcp_listener("[::]:443".parse().unwrap());
        let (_, seen_tls) =
            start_upstream_on(tls_l, Some(server_config(&leaf, &[b"h2", b"http/1.1"])));
        let plain_l = edge.tcp_listener("[::]:80".parse().unwrap());
        let (_, seen_plain) = start_upstream_on(plain_l, None);
        // A raw TCP echo service, for the opaque rung.
        let echo = edge.tcp_listener("[::]:7".parse().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let transparent = edge.tcp_listener("[::]:0".parse().unwrap());
        let port = transparent.local_addr().unwrap().port();
        // The ruleset exactly as `egress-edge nft-rules` prints it for this port.
        let rules_dir = tempfile::tempdir().unwrap();
        let rules_cfg = write(
            rules_dir.path(),
            "rules.yaml",
            &format!("proxy: {{ transparent: '[::]:{port}' }}\ndns: {{ listen: '[::]:53' }}\n"),
        );
        let out = sh(
            std::process::Command::new(env!("CARGO_BIN_EXE_egress-edge"))
                .args(["nft-rules", "--config"])
                .arg(&rules_cfg)
                .args(["--interface", &edge_if, "--table", "egress_edge_test"]),
        );
        edge.nft(&String::from_utf8(out.stdout).unwrap());

        let dir = tempfile::tempdir().unwrap();
        let up_ca = dir.path().join("up-ca.pem");
        std::fs::copy(pki.ca_path(), &up_ca).unwrap();
        let secrets = write(
            dir.path(),
            "secrets.yaml",
            "secrets:\n  openai-key: { value: sk-live-TRANSPARENT }\n",
        );
        let yaml = format!(
            "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network:
  allow: [{UP4}/32, {OTHER4}/32, '{UP6}/128']
  hosts: {{ up-{k}.test: {UP4}, six-{k}.test: '{UP6}', bump-{k}.test: {UP4}, plain-{k}.test: {UP4}, denied-{k}.test: {UP4} }}
secrets: {{ file: {secrets} }}
destinations:
  - {{ host: up-{k}.test }}
  - {{ host: six-{k}.test }}
  - {{ host: bump-{k}.test, credential: {{ secret: openai-key }} }}
  - {{ host: plain-{k}.test, ports: [80] }}
  - {{ host: {UP4}, ports: [7] }}
  - {{ host: {PRIVATE}, ports: [7] }}
default_rung: deny
",
            ca = up_ca.display(),
            secrets = secrets.display(),
        );
        let opts = BuildOptions {
            connector: Some(Arc::new(edge.connector())),
            ..Default::default()
        };
        let extra = Extra {
            transparent: vec![transparent],
            dns: Vec::new(),
        };
        let proxy = Proxy::start_full(&yaml, opts, extra).await;
        Net {
            guest,
            _edge: edge,
            k,
            up_ca,
            seen_tls,
            seen_plain,
            proxy,
            _dir: dir,
        }
    }

    /// curl in the guest, with no proxy settings; returns (exit code, status code, body).
    async fn curl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = self.guest.command("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "10"])
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::from(cmd).output(),
        )
        .await
        .expect("curl hung")
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (
            out.status.code().unwrap_or(-1),
            code.to_owned(),
            body.to_owned(),
        )
    }

    /// `https://{name}{path}` from the guest with the name pinned to `addr` (`--resolve`),
    /// trusting `ca`; `extra` goes before the URL.
    async fn https(
        &self,
        name: &str,
        addr: &str,
        path: &str,
        ca: &std::path::Path,
        extra: &[&str],
    ) -> (i32, String, String) {
        let resolve = format!("{name}:443:{addr}");
        let ca = ca.display().to_string();
        let url = format!("https://{name}{path}");
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        self.curl(&args).await
    }

    fn upstream_connections(&self) -> usize {
        self.seen_tls
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// python3 in the guest: connect to addr:port, send `send`, print what comes back.
    async fn raw(&self, host: &str, port: u16, send: &str) -> String {
        let script = format!(
            "import socket\ns=socket.create_connection(('{host}',{port}),timeout=5)\ns.sendall(b'{send}')\ns.settimeout(5)\ntry:\n  print(repr(s.recv(100)))\nexcept Exception as e:\n  print('error', type(e).__name__)\n"
        );
        let mut cmd = self.guest.command("python3");
        cmd.args(["-c", &script]);
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::from(cmd).output(),
        )
        .await
        .expect("python hung")
        .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The access event (its `fields`) whose line contains every needle, waiting briefly for it.
async fn access_event(needles: &[&str]) -> serde_json::Value {
    let logs = capture_logs();
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
        let found = text
            .lines()
            .filter(|l| l.contains("egress_edge::access") && needles.iter().all(|n| l.contains(n)))
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        if let Some(v) = found {
            return v["fields"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access event with {needles:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_passes_through_to_the_vetted_address_and_fronting_is_refused() {
    let net = Net::new().await;
    let up = net.name("up");
    let ca = net.up_ca.clone();
    // The guest resolved the name to the address the proxy also resolves it to: allowed.
    let (rc, code, body) = net.https(&up, UP4, "/small", &ca, &[]).await;
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    let ev = access_event(&[&up, "\"outcome\":\"ok\""]).await;
    assert_eq!(ev["original_dst"], format!("{UP4}:443"));
    assert_eq!(ev["resolved"], format!("{UP4}:443"));
    assert_eq!(ev["rung"], "passthrough");
    assert_eq!(ev["kind"], "tunnel");
    assert_eq!(ev["sni"], up);

    // `curl --resolve allowed:443:<another address>`: the upstream listens there too, so only
    // the binding check stands between the guest and it.
    let before = net.upstream_connections();
    let (rc, _, _) = net.https(&up, OTHER4, "/small", &ca, &[]).await;
    assert_ne!(rc, 0, "a fronted connection must fail");
    let ev = access_event(&[&up, "address_mismatch"]).await;
    assert_eq!(ev["original_dst"], format!("{OTHER4}:443"));
    assert_eq!(
        net.upstream_connections(),
        before,
        "the proxy must not dial the guest's chosen address"
    );

    // A name no rule allows, at an address the upstream answers on.
    let denied = net.name("denied");
    let (rc, _, _) = net.https(&denied, UP4, "/small", &ca, &[]).await;
    assert_ne!(rc, 0);
    let ev = access_event(&[&denied, "destination_denied"]).await;
    assert_eq!(ev["rule"], "default_rung");
    assert_eq!(net.upstream_connections(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_connections_are_recovered_and_bound() {
    let net = Net::new().await;
    let six = net.name("six");
    let ca = net.up_ca.clone();
    let v6 = format!("[{UP6}]");
    let (rc, code, body) = net.https(&six, &v6, "/small", &ca, &["-6"]).await;
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    let ev = access_event(&[&six, "\"outcome\":\"ok\""]).await;
    assert_eq!(ev["original_dst"], format!("[{UP6}]:443"));
    // The IPv4 upstream's name on the IPv6 address: not an address the name resolves to.
    let up = net.name("up");
    let (rc, _, _) = net.https(&up, &v6, "/small", &ca, &["-6"]).await;
    assert_ne!(rc, 0);
    let ev = access_event(&[&up, "address_mismatch"]).await;
    assert_eq!(ev["original_dst"], format!("[{UP6}]:443"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bumped_connections_get_the_credential_for_a_handle() {
    let net = Net::new().await;
    let bump = net.name("bump");
    let handle = net
        .proxy
        .mint(&format!(
            r#"{{"credentials":["openai-key"],"ttl":"5m","host":"{bump}"}}"#
        ))
        .await;
    let ca = net.proxy.bump_ca_path();
    let auth = format!("Authorization: Bearer {handle}");
    let (rc, code, body) = net.https(&bump, UP4, "/headers", &ca, &["-H", &auth]).await;
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    let seen = net.seen_tls.requests.lock().unwrap().clone();
    let (_, headers) = seen
        .iter()
        .rev()
        .find(|(p, _)| p == "/headers")
        .expect("the upstream saw the request");
    assert_eq!(
        headers.get("authorization").unwrap(),
        "Bearer sk-live-TRANSPARENT"
    );
    let ev = access_event(&[&bump, "bump_session"]).await;
    assert_eq!(ev["original_dst"], format!("{UP4}:443"));
    // Fronting a bumped name: refused before any TLS is terminated.
    let (rc, _, _) = net.https(&bump, OTHER4, "/headers", &ca, &[]).await;
    assert_ne!(rc, 0);
    access_event(&[&bump, "address_mismatch"]).await;
    // Neither the secret nor the whole handle reached a log line or the metrics.
    crate::inject::leak_scan(&net.proxy, &["sk-live-TRANSPARENT", &handle], &[body]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_named_by_its_host_and_bound_too() {
    let net = Net::new().await;
    let plain = net.name("plain");
    let resolve = format!("{plain}:80:{UP4}");
    let (rc, code, body) = net
        .curl(&["--resolve", &resolve, &format!("http://{plain}/small")])
        .await;
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    assert!(
        net.seen_plain
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _)| p == "/small")
    );
    // Plain HTTP can carry the contract's refusal body.
    let resolve = format!("{plain}:80:{OTHER4}");
    let (rc, code, body) = net
        .curl(&["--resolve", &resolve, &format!("http://{plain}/small")])
        .await;
    assert_eq!((rc, code.as_str()), (0, "403"), "{body}");
    let v = json(&body);
    assert_eq!(v["error"], "address_mismatch");
    assert!(v["detail"].as_str().unwrap().contains(OTHER4), "{body}");
    // A Host no rule allows.
    let (_, code, body) = net
        .curl(&["-H", "Host: elsewhere.test", &format!("http://{UP4}/small")])
        .await;
    assert_eq!(code, "403", "{body}");
    assert_eq!(json(&body)["error"], "destination_denied");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_tcp_needs_a_rule_naming_the_address() {
    let net = Net::new().await;
    // A rule names 10.99.0.2:7: the echo service answers through the proxy.
    let out = net.raw(UP4, 7, "ping").await;
    assert!(out.contains("b'ping'"), "{out}");
    access_event(&[
        &format!("\"original_dst\":\"{UP4}:7\""),
        "\"outcome\":\"ok\"",
    ])
    .await;
    // No rule for port 9: closed without a byte.
    let out = net.raw(UP4, 9, "ping").await;
    assert!(out.contains("b''") || out.contains("error"), "{out}");
    let ev = access_event(&[&format!("\"original_dst\":\"{UP4}:9\"")]).await;
    assert_eq!(ev["outcome"], "destination_denied");
    // A rule names a private address the deny set covers: refused at dial time, never dialed
    // (nothing exists at that address inside the namespace either).
    let out = net.raw(PRIVATE, 7, "ping").await;
    assert!(out.contains("b''") || out.contains("error"), "{out}");
    let ev = access_event(&[&format!("\"original_dst\":\"{PRIVATE}:7\"")]).await;
    assert_eq!(ev["outcome"], "address_denied");
}
