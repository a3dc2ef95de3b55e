//! Many sandboxes on one edge: identity by source address (127.0.0.2, 127.0.0.3, … as the
//! client's bind address) and by proxy token, per-sandbox profiles with method and path
//! rules, sandbox-bound handles, report mode, the per-sandbox kill switch and registrations
//! that survive a restart. Every client is curl or a raw socket; every upstream is on
//! 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;
use crate::inject::capture_logs;

const SECRETS: &str = "secrets:
  openai-key: { value: sk-live-SANDBOXSECRET }
";

const CI7_TOKEN: &str = "ci7-token-0123456789abcdef";

struct Env {
    _pki: Pki,
    up: SocketAddr,
    seen: Arc<Seen>,
    proxy: Proxy,
    /// The upstream CA and the bump CA, for curl's `--cacert`.
    bundle: std::path::PathBuf,
    dir: tempfile::TempDir,
}

fn config(port: u16, dir: &std::path::Path, ca: &std::path::Path) -> String {
    let secrets = write(dir, "secrets.yaml", SECRETS);
    let token = token_file(dir, "ci-7.token", &format!("{CI7_TOKEN}\n"), 0o600);
    format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1, git.test: 127.0.0.1, ci.test: 127.0.0.1, open.test: 127.0.0.1 }} }}
secrets: {{ file: {secrets}, initial_fetch_timeout: 1s }}
metrics: {{ sandbox_labels: 2 }}
profiles:
  agents:
    destinations:
      - {{ id: api, host: api.test, ports: [{port}], credential: {{ secret: openai-key }}, methods: [GET, POST], paths: ['/v1/'] }}
      - {{ id: git, host: git.test, ports: [{port}], rung: bump, methods: [GET, POST], deny: [{{ paths: ['/*/*/git-receive-pack'] }}] }}
  ci:
    destinations:
      - {{ id: ci, host: ci.test, ports: [{port}] }}
      - {{ id: api, host: api.test, ports: [{port}], credential: {{ secret: openai-key }} }}
  trial:
    mode: report
    destinations:
      - {{ id: api, host: api.test, ports: [{port}], credential: {{ secret: openai-key }}, paths: ['/v1/'] }}
sandboxes:
  - {{ id: sbx-1, profile: agents, sources: [127.0.0.2/32] }}
  - {{ id: sbx-2, profile: ci, sources: [127.0.0.3/32] }}
  - {{ id: ci-7, profile: ci, token_file: {token} }}
  - {{ id: sbx-t, profile: trial, sources: [127.0.0.5/32] }}
destinations:
  - {{ host: open.test, ports: [{port}] }}
default_rung: deny
",
        ca = ca.display(),
        secrets = secrets.display(),
        token = token.display(),
    )
}

async fn env() -> Env {
    capture_logs();
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["api.test", "git.test", "ci.test", "open.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"h2", b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(up.port(), dir.path(), &pki.ca_path())).await;
    let mut bundle = std::fs::read(pki.ca_path()).unwrap();
    bundle.extend(std::fs::read(proxy.bump_ca_path()).unwrap());
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, bundle).unwrap();
    Env {
        _pki: pki,
        up,
        seen,
        proxy,
        bundle: bundle_path,
        dir,
    }
}

/// What curl printed, read back.
struct Curl {
    code: i32,
    out: String,
    err: String,
}

impl Curl {
    /// The status of the last response (the CONNECT's when the tunnel was refused).
    fn status(&self) -> u16 {
        self.out
            .lines()
            .rev()
            .find(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The `x-egress-edge-error` of the last refusal, if any.
    fn error(&self) -> Option<String> {
        self.out
            .lines()
            .rev()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("x-egress-edge-error"))
            .map(|(_, v)| v.trim().to_owned())
    }

    fn has_header(&self, name: &str, value: &str) -> bool {
        self.out
            .lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value))
    }
}

impl Env {
    /// curl from `src` through the proxy to `https://host:port{path}`.
    async fn curl(&self, src: &str, host: &str, path: &str, extra: &[&str]) -> Curl {
        let mut args: Vec<String> = vec![
            "--interface".into(),
            src.into(),
            "-x".into(),
            self.proxy.url(),
            "--cacert".into(),
            self.bundle.display().to_string(),
            "--path-as-is".into(),
            "-D".into(),
            "-".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(format!("https://{host}:{}{path}", self.up.port()));
        let (code, out, err) = curl_async(args).await;
        Curl { code, out, err }
    }

    /// Registers `sbx-9` (profile ci, 127.0.0.4) over the admin API.
    async fn register_sbx9(&self) {
        let (status, body) = self
            .proxy
            .post(
                "/v1/sandboxes",
                r#"{"id":"sbx-9","profile":"ci","sources":["127.0.0.4/32"]}"#,
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    fn upstream_paths(&self) -> Vec<String> {
        self.seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// A raw CONNECT from `src`, with extra header lines.
async fn connect_from(
    src: &str,
    proxy: SocketAddr,
    target: &str,
    headers: &str,
) -> (u16, Vec<(String, String)>, String, TcpStream) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let (st, h, b) = read_response(&mut s).await;
    (st, h, b, s)
}

async fn delete(proxy: &Proxy, path: &str) -> (u16, Vec<(String, String)>, String) {
    let host = proxy.admin.to_string();
    admin_raw(
        proxy.admin,
        "DELETE",
        path,
        &[("host", &host), ("content-type", "application/json")],
        "",
    )
    .await
}

/// CONNECT from `src` to `host` on the upstream's port, then TLS trusting `roots`.
async fn tls_from(
    src: &str,
    env: &Env,
    host: &str,
    roots: rustls::RootCertStore,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let target = format!("{host}:{}", env.up.port());
    let (status, _, body, raw) = connect_from(src, env.proxy.addr, &target, "").await;
    assert_eq!(status, 200, "{body}");
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(client_config(roots, &[b"http/1.1"]))
        .connect(name, raw)
        .await
        .unwrap()
}

fn logs() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string()
}

/// The JSON log lines that contain every one of `needles`.
fn log_lines(needles: &[&str]) -> Vec<serde_json::Value> {
    logs()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn each_sandbox_reaches_only_its_own_destinations() {
    let env = env().await;
    // sbx-1 (agents) from 127.0.0.2: its bumped API, not ci's or the top level's destinations.
    let r = env.curl("127.0.0.2", "api.test", "/v1/models", &[]).await;
    assert_eq!((r.code, r.error()), (0, None), "{} {}", r.out, r.err);
    assert!(env.upstream_paths().contains(&"/v1/models".to_owned()));
    for host in ["ci.test", "open.test"] {
        let r = env.curl("127.0.0.2", host, "/small", &[]).await;
        assert_eq!(r.status(), 403, "{host}: {}", r.out);
        assert_eq!(r.error().as_deref(), Some("destination_denied"), "{host}");
    }
    // sbx-2 (ci) from 127.0.0.3: ci.test passes through; agents' git.test is not its.
    let r = env.curl("127.0.0.3", "ci.test", "/small", &[]).await;
    assert_eq!((r.code, r.out.ends_with("hello")), (0, true), "{}", r.err);
    let r = env.curl("127.0.0.3", "git.test", "/x", &[]).await;
    assert_eq!(r.error().as_deref(), Some("destination_denied"));
    // No sandbox (127.0.0.1, no token): the top-level policy.
    let r = env.curl("127.0.0.1", "open.test", "/small", &[]).await;
    assert_eq!((r.code, r.out.ends_with("hello")), (0, true), "{}", r.err);
    let r = env.curl("127.0.0.1", "api.test", "/v1/models", &[]).await;
    assert_eq!(r.error().as_deref(), Some("destination_denied"));

    // ci-7 by proxy token: Basic (curl --proxy-user) and Bearer (raw CONNECT).
    let user = format!("ci-7:{CI7_TOKEN}");
    let r = env
        .curl("127.0.0.1", "ci.test", "/small", &["--proxy-user", &user])
        .await;
    assert_eq!((r.code, r.out.ends_with("hello")), (0, true), "{}", r.err);
    let target = format!("ci.test:{}", env.up.port());
    let bearer = format!("Proxy-Authorization: Bearer {CI7_TOKEN}\r\n");
    let (status, _, body, _) = connect_from("127.0.0.1", env.proxy.addr, &target, &bearer).await;
    assert_eq!(status, 200, "{body}");
    // A wrong token: 407 with both challenges and the contract's JSON body.
    let r = env
        .curl(
            "127.0.0.1",
            "ci.test",
            "/small",
            &["--proxy-user", "ci-7:wrong-token-value"],
        )
        .await;
    assert_eq!(r.status(), 407, "{}", r.out);
    assert_eq!(r.error().as_deref(), Some("proxy_auth_required"));
    let (status, headers, body, _) = connect_from(
        "127.0.0.1",
        env.proxy.addr,
        &target,
        "Proxy-Authorization: Bearer not-a-token-of-anyone\r\n",
    )
    .await;
    assert_eq!(status, 407, "{body}");
    let challenges: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "proxy-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic ")),
        "{headers:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer ")),
        "{headers:?}"
    );
    let v = json(&body);
    assert_eq!(v["error"], "proxy_auth_required");
    assert!(!body.contains("not-a-token-of-anyone"), "{body}");
    // A token from an address that belongs to another sandbox is refused, not mixed.
    let (status, _, body, _) = connect_from("127.0.0.2", env.proxy.addr, &target, &bearer).await;
    assert_eq!(status, 407, "{body}");
    assert!(body.contains("another sandbox"), "{body}");

    // The sandbox is on access events and metric labels; past `metrics.sandbox_labels: 2`
    // (sbx-1 and sbx-2), the rest share `other`.
    let lines = log_lines(&["egress_edge::access", "\"sandbox\":\"sbx-1\"", "api.test"]);
    assert!(!lines.is_empty(), "no access event carries sandbox sbx-1");
    let metrics = env
        .proxy
        .wait_metric("egress_edge_connections_total{rung=\"passthrough\",outcome=\"ok\",rule=\"ci\",sandbox=\"other\"}")
        .await;
    assert!(metrics.contains("sandbox=\"sbx-2\""), "{metrics}");
    assert!(metrics.contains("sandbox=\"none\""), "{metrics}");
    assert!(!metrics.contains("sandbox=\"ci-7\""), "{metrics}");
    assert!(!metrics.contains(CI7_TOKEN));
    assert!(
        !logs().contains(CI7_TOKEN),
        "the proxy token reached the logs"
    );
}

#[tokio::test]
async fn method_and_path_rules_use_the_normalised_path() {
    let env = env().await;
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        ("GET", "api.test", "/v1/models", None),
        ("POST", "api.test", "/v1/chat/completions", None),
        ("DELETE", "api.test", "/v1/files/1", Some("method_denied")),
        ("GET", "api.test", "/v2/models", Some("path_denied")),
        ("GET", "api.test", "/v1", Some("path_denied")),
        ("GET", "api.test", "/v1/../admin", Some("path_denied")),
        ("GET", "api.test", "/v1/..;/admin", Some("path_denied")),
        ("GET", "api.test", "/v1/%2e%2e/admin", Some("path_denied")),
        ("GET", "api.test", "/v1/%2E%2e/admin", Some("path_denied")),
        ("GET", "api.test", "/v1/%2F../admin", Some("path_denied")),
        ("GET", "api.test", "/v1;x/models", Some("path_denied")),
        ("POST", "git.test", "/org/repo.git/git-upload-pack", None),
        (
            "POST",
            "git.test",
            "/org/repo.git/git-receive-pack",
            Some("path_denied"),
        ),
        (
            "POST",
            "git.test",
            "/org/repo.git/./git-receive-pack",
            Some("path_denied"),
        ),
        (
            "POST",
            "git.test",
            "/org/repo.git/git-receive%2Dpack",
            Some("path_denied"),
        ),
        ("PUT", "git.test", "/org/repo.git/x", Some("method_denied")),
    ];
    for (method, host, path, want) in cases {
        let before = env.upstream_paths().len();
        let r = env
            .curl("127.0.0.2", host, path, &["-X", method, "-d", "{}"])
            .await;
        assert_eq!(
            r.error().as_deref(),
            *want,
            "{method} {host}{path}: {}",
            r.out
        );
        let forwarded = env.upstream_paths().len() > before;
        assert_eq!(forwarded, want.is_none(), "{method} {host}{path}");
        if want.is_some() {
            assert_eq!(r.status(), 403, "{method} {path}");
            assert!(r.has_header("x-should-retry", "false"), "{}", r.out);
        }
    }
    assert!(
        !env.upstream_paths().iter().any(|p| p.contains("receive")),
        "a push reached the upstream"
    );
}

#[tokio::test]
async fn handles_are_bound_to_their_sandbox() {
    let env = env().await;
    let handle = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"sandbox":"sbx-1"}"#)
        .await;
    let auth = format!("Authorization: Bearer {handle}");
    // Redeemed in sbx-1: the upstream sees the real key.
    let r = env
        .curl("127.0.0.2", "api.test", "/v1/models", &["-H", &auth])
        .await;
    assert_eq!(r.error(), None, "{}", r.out);
    let seen = env.seen.requests.lock().unwrap().last().unwrap().1.clone();
    assert_eq!(seen["authorization"], "Bearer sk-live-SANDBOXSECRET");
    // Copied into sbx-2 (whose profile holds the same credential): refused and audited.
    let before = env.upstream_paths().len();
    let r = env
        .curl("127.0.0.3", "api.test", "/v1/models", &["-H", &auth])
        .await;
    assert_eq!(r.status(), 403, "{}", r.out);
    assert_eq!(r.error().as_deref(), Some("handle_wrong_sandbox"));
    assert_eq!(env.upstream_paths().len(), before, "forwarded anyway");
    let audit = log_lines(&[
        "egress_edge::audit",
        "handle_wrong_sandbox",
        "\"sandbox\":\"sbx-2\"",
    ]);
    assert!(!audit.is_empty(), "no audit event for the wrong sandbox");
    // An unbound handle still works in both.
    let any = env.proxy.mint(r#"{"credentials":["openai-key"]}"#).await;
    let r = env
        .curl(
            "127.0.0.3",
            "api.test",
            "/v1/models",
            &["-H", &format!("Authorization: Bearer {any}")],
        )
        .await;
    assert_eq!(r.error(), None, "{}", r.out);
    // Minting for a sandbox nobody registered is refused.
    let (status, body) = env
        .proxy
        .post(
            "/v1/handles",
            r#"{"credentials":["openai-key"],"sandbox":"nobody"}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Neither the handle nor the secret reached a log line or a metric.
    crate::inject::leak_scan(
        &env.proxy,
        &[&handle, &any, "sk-live-SANDBOXSECRET"],
        &[r.out],
    )
    .await;
}

#[tokio::test]
async fn report_mode_logs_would_deny_and_forwards() {
    let env = env().await;
    // A path outside the profile's `/v1/`: forwarded, logged and counted as would_deny.
    let r = env.curl("127.0.0.5", "api.test", "/v2/models", &[]).await;
    assert_eq!((r.code, r.error()), (0, None), "{} {}", r.out, r.err);
    assert!(env.upstream_paths().contains(&"/v2/models".to_owned()));
    // A destination outside the profile: passed through, also would_deny.
    let r = env.curl("127.0.0.5", "ci.test", "/small", &[]).await;
    assert_eq!((r.code, r.out.ends_with("hello")), (0, true), "{}", r.err);
    let metrics = env
        .proxy
        .wait_metric("egress_edge_would_deny_total{sandbox=\"other\",code=\"destination_denied\",rule=\"default_rung\"} 1")
        .await;
    assert!(
        metrics.contains(
            "egress_edge_would_deny_total{sandbox=\"other\",code=\"path_denied\",rule=\"api\"} 1"
        ),
        "{metrics}"
    );
    let lines = log_lines(&["egress_edge::access", "\"sandbox\":\"sbx-t\"", "/v2/models"]);
    let ev = lines
        .last()
        .expect("no access event for the report-mode request");
    assert_eq!(ev["fields"]["outcome"], "would_deny", "{ev}");
    assert_eq!(ev["fields"]["would_deny"], "path_denied", "{ev}");
    let lines = log_lines(&["egress_edge::access", "\"sandbox\":\"sbx-t\"", "ci.test"]);
    let ev = lines
        .last()
        .expect("no access event for the report-mode tunnel");
    assert_eq!(ev["fields"]["would_deny"], "destination_denied", "{ev}");
    // Handle checks always enforce: a forged handle is refused, report mode or not.
    let r = env
        .curl(
            "127.0.0.5",
            "api.test",
            "/v1/models",
            &["-H", "Authorization: Bearer eeh_AAAA.BBBB"],
        )
        .await;
    assert_eq!(r.error().as_deref(), Some("handle_invalid"), "{}", r.out);
}

#[tokio::test]
async fn report_mode_never_softens_the_address_deny_set() {
    // The metadata address is only ever "dialed" through a recorder that never connects.
    let recorder = Arc::new(RecordingConnector::default());
    let yaml = "state_dir: STATE_DIR
network: { hosts: { meta.test: 169.254.169.254, rfc1918.test: 10.1.2.3 } }
profiles:
  trial: { mode: report }
sandboxes:
  - { id: sbx-t, profile: trial, sources: [127.0.0.1/32] }
default_rung: deny
";
    let opts = egress_edge::app::BuildOptions {
        connector: Some(recorder.clone()),
        ..Default::default()
    };
    let proxy = Proxy::start_with(yaml, opts).await;
    for target in ["meta.test:443", "rfc1918.test:443", "169.254.169.254:80"] {
        let (status, headers, body, _) = connect(proxy.addr, target).await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(
            header(&headers, "x-egress-edge-error"),
            Some("address_denied"),
            "{target}"
        );
    }
    assert!(
        recorder.attempts.lock().unwrap().is_empty(),
        "a private address was dialed"
    );
}

#[tokio::test]
async fn removing_a_sandbox_closes_its_tunnels_and_sessions_within_a_second() {
    let env = env().await;
    env.register_sbx9().await;
    let handle = env
        .proxy
        .mint(r#"{"credentials":["openai-key"],"sandbox":"sbx-9"}"#)
        .await;
    // A pass-through tunnel and a bump session from 127.0.0.4, both open and working.
    let port = env.up.port();
    let mut tunnel = tls_from("127.0.0.4", &env, "ci.test", env._pki.roots()).await;
    tunnel
        .write_all(b"GET /small HTTP/1.1\r\nHost: ci.test\r\n\r\n")
        .await
        .unwrap();
    tunnel.flush().await.unwrap();
    let (status, _, body) = read_response(&mut tunnel).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    let mut bump = tls_from("127.0.0.4", &env, "api.test", env.proxy.bump_roots()).await;
    bump.write_all(
        format!("GET /v1/models HTTP/1.1\r\nHost: api.test:{port}\r\nAuthorization: Bearer {handle}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    bump.flush().await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = bump.read(&mut buf).await.unwrap();
    // The upstream answers (404: it has no /v1/models); the proxy refused nothing.
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("x-egress-edge-error"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let t0 = Instant::now();
    let resp = delete(&env.proxy, "/v1/sandboxes/sbx-9").await;
    assert_eq!(resp.0, 204, "{}", resp.2);
    for (what, r) in [
        (
            "tunnel",
            tokio::time::timeout(Duration::from_secs(1), tunnel.read(&mut buf)).await,
        ),
        (
            "bump session",
            tokio::time::timeout(Duration::from_secs(1), bump.read(&mut buf)).await,
        ),
    ] {
        let r = r.unwrap_or_else(|_| panic!("the {what} was still open 1s after DELETE"));
        assert!(matches!(r, Ok(0) | Err(_)), "{what}: {r:?}");
    }
    let closed_in = t0.elapsed();
    assert!(closed_in < Duration::from_secs(1), "{closed_in:?}");
    env.proxy.wait_metric("outcome=\"sandbox_removed\"").await;
    // 127.0.0.4 is nobody now: the top-level policy (which does not allow ci.test).
    let (status, headers, _, _) =
        connect_from("127.0.0.4", env.proxy.addr, &format!("ci.test:{port}"), "").await;
    assert_eq!(status, 403);
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("destination_denied")
    );
    // Registered again under the same id, the old handle stays dead.
    env.register_sbx9().await;
    let r = env
        .curl(
            "127.0.0.4",
            "api.test",
            "/v1/models",
            &["-H", &format!("Authorization: Bearer {handle}")],
        )
        .await;
    assert_eq!(r.error().as_deref(), Some("handle_revoked"), "{}", r.out);
    // A config sandbox cannot be removed over the API; an unknown one is 404.
    let resp = delete(&env.proxy, "/v1/sandboxes/sbx-1").await;
    assert_eq!(resp.0, 409, "{}", resp.2);
    let resp = delete(&env.proxy, "/v1/sandboxes/nope").await;
    assert_eq!(resp.0, 404, "{}", resp.2);
    println!("sandbox removal closed its tunnel and bump session in {closed_in:?}");
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let env = env().await;
    env.register_sbx9().await;
    let (status, body) = env
        .proxy
        .post(
            "/v1/sandboxes",
            r#"{"id":"tok-1","profile":"agents","token":true}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = json(&body)["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("eep_"), "{body}");
    // Refused registrations: a duplicate id, an overlapping source, an unknown profile,
    // both or neither identification.
    for (bad, want) in [
        (
            r#"{"id":"sbx-9","profile":"ci","sources":["127.0.0.9/32"]}"#,
            409,
        ),
        (
            r#"{"id":"x-1","profile":"ci","sources":["127.0.0.0/24"]}"#,
            400,
        ),
        (
            r#"{"id":"x-2","profile":"nope","sources":["127.0.0.9/32"]}"#,
            400,
        ),
        (r#"{"id":"x-3","profile":"ci"}"#, 400),
        (
            r#"{"id":"x-4","profile":"ci","sources":["127.0.0.9/32"],"token":true}"#,
            400,
        ),
        (
            r#"{"id":"bad id","profile":"ci","sources":["127.0.0.9/32"]}"#,
            400,
        ),
    ] {
        let (status, body) = env.proxy.post("/v1/sandboxes", bad).await;
        assert_eq!(status, want, "{bad}: {body}");
    }
    let (status, _, list) = http_get(env.proxy.admin, "/v1/sandboxes", &[]).await;
    assert_eq!(status, 200);
    assert!(!list.contains(&token), "the token is listed: {list}");
    let stored =
        std::fs::read_to_string(env.proxy.state.path().join("state/sandboxes.json")).unwrap();
    assert!(!stored.contains(&token), "the token is stored in clear");

    let Env {
        _pki,
        up,
        seen: _seen,
        proxy,
        bundle,
        dir,
    } = env;
    let proxy = proxy.restart().await;
    let env = Env {
        _pki,
        up,
        seen: _seen,
        proxy,
        bundle,
        dir,
    };
    let (_, _, list) = http_get(env.proxy.admin, "/v1/sandboxes", &[]).await;
    let v = json(&list);
    let ids: Vec<&str> = v["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["ci-7", "sbx-1", "sbx-2", "sbx-9", "sbx-t", "tok-1"],
        "{list}"
    );
    // Both are enforced after the restart: sbx-9 by address, tok-1 by its token.
    let r = env.curl("127.0.0.4", "ci.test", "/small", &[]).await;
    assert_eq!((r.code, r.out.ends_with("hello")), (0, true), "{}", r.err);
    let user = format!("tok-1:{token}");
    let r = env
        .curl(
            "127.0.0.1",
            "api.test",
            "/v1/models",
            &["--proxy-user", &user],
        )
        .await;
    assert_eq!(r.error(), None, "{}", r.out);
    let r = env
        .curl(
            "127.0.0.1",
            "api.test",
            "/v2/models",
            &["--proxy-user", &user],
        )
        .await;
    assert_eq!(r.error().as_deref(), Some("path_denied"), "{}", r.out);
}

#[tokio::test]
async fn a_reload_judges_the_next_request_of_an_open_session() {
    let env = env().await;
    let port = env.up.port();
    let mut bump = tls_from("127.0.0.2", &env, "api.test", env.proxy.bump_roots()).await;
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: api.test:{port}\r\n\r\n");
    bump.write_all(request.as_bytes()).await.unwrap();
    bump.flush().await.unwrap();
    let (status, headers, _) = read_response(&mut bump).await;
    assert_eq!(
        (status, header(&headers, "x-egress-edge-error")),
        (404, None)
    );
    // The agents profile now allows only /v2/ on api.test.
    let text = std::fs::read_to_string(&env.proxy.config_path).unwrap();
    let narrowed = text.replace(
        "paths: ['/v1/'] }}\n      - { id: git",
        "paths: ['/v2/'] }}\n      - { id: git",
    );
    let narrowed = if narrowed == text {
        text.replacen("paths: ['/v1/']", "paths: ['/v2/']", 1)
    } else {
        narrowed
    };
    assert_ne!(narrowed, text);
    std::fs::write(&env.proxy.config_path, narrowed).unwrap();
    env.proxy
        .reloader
        .reload_file(&env.proxy.config_path)
        .unwrap();
    // Same TLS session, next request: judged by the new profile.
    bump.write_all(request.as_bytes()).await.unwrap();
    bump.flush().await.unwrap();
    let (status, headers, body) = read_response(&mut bump).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(header(&headers, "x-egress-edge-error"), Some("path_denied"));
}

#[tokio::test]
async fn transparent_style_require_sandbox_refuses_strangers() {
    // `proxy.require_sandbox`: a connection nobody claims gets 407 on the explicit listener.
    let yaml = "state_dir: STATE_DIR
proxy: { require_sandbox: true }
profiles:
  p: { default_rung: passthrough }
sandboxes:
  - { id: only, profile: p, sources: [127.0.0.2/32] }
";
    let proxy = Proxy::start(yaml).await;
    let (status, headers, body, _) =
        connect_from("127.0.0.1", proxy.addr, "example.test:443", "").await;
    assert_eq!(status, 407, "{body}");
    assert_eq!(
        header(&headers, "x-egress-edge-error"),
        Some("proxy_auth_required")
    );
}

#[test]
fn config_refuses_ambiguous_sandboxes_and_unseeable_rules() {
    let cases: &[(&str, &str)] = &[
        (
            "profiles: { p: {} }\nsandboxes:\n  - { id: a, profile: p, sources: [10.0.0.0/24] }\n  - { id: b, profile: p, sources: [10.0.0.7/32] }\n",
            "sandboxes[1].sources",
        ),
        (
            "profiles: { p: {} }\nsandboxes:\n  - { id: a, profile: q, sources: [10.0.0.1/32] }\n",
            "sandboxes[0].profile",
        ),
        (
            "profiles: { p: {} }\nsandboxes:\n  - { id: a, profile: p }\n",
            "sandboxes[0]",
        ),
        (
            "profiles: { p: {} }\nsandboxes:\n  - { id: a, profile: p, sources: [10.0.0.1/32] }\n  - { id: a, profile: p, sources: [10.0.0.2/32] }\n",
            "sandboxes[1].id",
        ),
        (
            "profiles:\n  p:\n    destinations:\n      - { host: a.test, methods: [GET] }\n",
            "profiles.p.destinations[0].methods",
        ),
        (
            "profiles:\n  p:\n    destinations:\n      - { host: a.test, rung: bump, paths: ['/v1/../x'] }\n",
            "profiles.p.destinations[0].paths[0]",
        ),
        (
            "profiles:\n  p:\n    destinations:\n      - { host: a.test, rung: bump, deny: [{}] }\n",
            "profiles.p.destinations[0].deny[0]",
        ),
        ("profiles:\n  p:\n    mode: loud\n", "profiles.p.mode"),
    ];
    for (yaml, key) in cases {
        let e = egress_edge::config::parse_str(yaml, "t").unwrap_err();
        assert_eq!(e.key, *key, "{yaml}: {e}");
    }
}
