//! Many edges, one control plane: three `egress-edge run` processes with `fleet.source: sds`
//! and one `egress-edge sds serve --fleet --admin` process, all on loopback. Handles minted on
//! one edge are redeemed on another; a revocation, a sandbox and the kill switch posted to the
//! control plane take effect on every edge (revocation within 1 s, measured); an update the
//! edges refuse is NACKed and the previous version stays; the control plane killed and
//! restarted: edges keep enforcing and converge; cut off for longer than the grant TTL, an
//! edge lets the sandbox lapse (back to the top-level policy, which denies).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_egress-edge");
const SECRET: &str = "sk-fleet-SECRET9";
/// Short, so the lapse is observable; the control plane's heartbeat is a third of it.
const GRANT_TTL: &str = "3s";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP/1.1 request to an admin listener; `None` while nothing listens.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let (status, _, body) = parse_response(&out);
    Some((status, body))
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    request(addr, "POST", path, body)
        .await
        .unwrap_or_else(|| panic!("{addr} is not answering"))
}

async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path, "").await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Process { child, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct ControlPlane {
    process: Process,
    sds: SocketAddr,
    admin: SocketAddr,
    args: Vec<String>,
    dir: PathBuf,
}

impl ControlPlane {
    async fn start(dir: &Path, secrets: &Path, fleet: &Path) -> ControlPlane {
        let (sds, admin) = (loopback(free_port()), loopback(free_port()));
        let args: Vec<String> = vec![
            "sds".into(),
            "serve".into(),
            "--listen".into(),
            sds.to_string(),
            "--secrets".into(),
            secrets.display().to_string(),
            "--fleet".into(),
            fleet.display().to_string(),
            "--admin".into(),
            admin.to_string(),
            "--state-dir".into(),
            dir.join("control").display().to_string(),
            "--grant-ttl".into(),
            GRANT_TTL.into(),
        ];
        let mut cp = ControlPlane {
            process: Process::spawn(Command::new(BIN).args(&args), dir.join("control.log")),
            sds,
            admin,
            args,
            dir: dir.to_path_buf(),
        };
        cp.wait_up().await;
        cp
    }

    async fn wait_up(&mut self) {
        let admin = self.admin;
        until(
            Duration::from_secs(20),
            "control plane admin up",
            || async move { request(admin, "GET", "/healthz", "").await.is_some() },
        )
        .await;
    }

    async fn restart(&mut self) {
        self.process = Process::spawn(
            Command::new(BIN).args(&self.args),
            self.dir.join("control-2.log"),
        );
        self.wait_up().await;
    }
}

struct Edge {
    name: &'static str,
    process: Process,
    proxy: SocketAddr,
    admin: SocketAddr,
    state: PathBuf,
}

impl Edge {
    fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    fn ca(&self) -> String {
        self.state.join("ca.pem").display().to_string()
    }

    /// curl through this edge's bump: (status of the upstream answer, error code).
    async fn curl(&self, url: &str, extra: &[&str]) -> (u16, Option<String>) {
        curl_bumped(&self.proxy_url(), &self.ca(), url, extra).await
    }
}

struct Fleet {
    dir: tempfile::TempDir,
    up: SocketAddr,
    seen: std::sync::Arc<Seen>,
    cp: ControlPlane,
    edges: Vec<Edge>,
    upstream_roots: Pki,
}

fn keygen(key: &Path) {
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let out = Command::new(BIN)
        .args(["handle", "keygen", "--out"])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PEM public key as an indented YAML block scalar.
fn yaml_block(pem: &str) -> String {
    pem.lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

fn fleet_file(port: u16, extra_profile: &str) -> String {
    format!(
        "profiles:
  agents:
    destinations:
      - {{ host: other.test, ports: [{port}], rung: bump, methods: [GET] }}
{extra_profile}"
    )
}

async fn fleet() -> Fleet {
    fleet_of(&["edge-a", "edge-b", "edge-c"]).await
}

async fn fleet_of(names: &[&'static str]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new("fleet upstream CA");
    let leaf = pki.leaf(&["api.test", "other.test", "tunnel.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    std::fs::copy(pki.ca_path(), d.join("up-ca.pem")).unwrap();

    // Keys made beforehand, as an operator would: each edge's own (it mints as issuer
    // `fleet`) and the control plane's (issuer `control`), all published over SDS.
    let mut bundle = String::new();
    for n in names.iter().copied() {
        keygen(&d.join(n).join("handle-key.pem"));
        bundle.push_str(&std::fs::read_to_string(d.join(n).join("handle-key.pem.pub")).unwrap());
    }
    keygen(&d.join("control").join("handle-key.pem"));
    let control_pub = std::fs::read_to_string(d.join("control/handle-key.pem.pub")).unwrap();
    let secrets = write(
        d,
        "secrets.yaml",
        &format!(
            "secrets:\n  api-key: {{ value: {SECRET} }}\n  fleet-handle-keys:\n    value: |\n{}  control-handle-key:\n    value: |\n{}",
            yaml_block(&bundle),
            yaml_block(&control_pub)
        ),
    );
    let fleet_path = write(d, "fleet.yaml", &fleet_file(up.port(), ""));
    let cp = ControlPlane::start(d, &secrets, &fleet_path).await;

    let mut edges = Vec::new();
    for name in names.iter().copied() {
        let (proxy, admin) = (loopback(free_port()), loopback(free_port()));
        let state = d.join(name);
        let config = write(
            d,
            &format!("{name}.yaml"),
            &format!(
                "proxy: {{ listen: {proxy} }}
admin: {{ listen: {admin} }}
state_dir: {state}
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1, other.test: 127.0.0.1, tunnel.test: 127.0.0.1 }} }}
secrets:
  sds: {{ target: http://{sds}, node_id: {name}, initial_fetch_timeout: 10s }}
handles: {{ issuer: fleet }}
fleet:
  source: sds
  control_plane_admin: http://{cp_admin}
  handle_issuers:
    - {{ id: fleet, public_key_sds: fleet-handle-keys }}
    - {{ id: control, public_key_sds: control-handle-key }}
profiles:
  local: {{ destinations: [] }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: api-key }}, require_handle: true }}
  - {{ host: tunnel.test, ports: [{port}], rung: passthrough }}
",
                state = state.display(),
                ca = d.join("up-ca.pem").display(),
                sds = cp.sds,
                cp_admin = cp.admin,
                port = up.port(),
            ),
        );
        let process = Process::spawn(
            Command::new(BIN).arg("run").arg("--config").arg(&config),
            d.join(format!("{name}.log")),
        );
        edges.push(Edge {
            name,
            process,
            proxy,
            admin,
            state,
        });
    }
    for e in &edges {
        let start = Instant::now();
        loop {
            let ready = request(e.admin, "GET", "/readyz", "").await;
            if ready.as_ref().is_some_and(|(s, _)| *s == 200) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} not ready: {ready:?}\n{}\ncontrol plane:\n{}",
                e.name,
                e.process.log(),
                cp.process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Fleet {
        dir,
        up,
        seen,
        cp,
        edges,
        upstream_roots: pki,
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- logs of the fleet ---\n{}", self.logs());
        }
    }
}

impl Fleet {
    fn api(&self, path: &str) -> String {
        format!("https://api.test:{}{path}", self.up.port())
    }

    fn other(&self) -> String {
        format!("https://other.test:{}/small", self.up.port())
    }

    /// Redeems `handle` on every edge at once until all refuse it with `code`; the time each
    /// edge took.
    async fn until_all_refuse(&self, handle: &str, code: &str, limit: Duration) -> Vec<Duration> {
        let bearer = format!("Authorization: Bearer {handle}");
        let url = self.api("/small");
        let waits = self.edges.iter().map(|e| {
            let (bearer, url) = (bearer.clone(), url.clone());
            async move {
                until(limit, &format!("{} refuses with {code}", e.name), || {
                    let (bearer, url) = (bearer.clone(), url.clone());
                    async move { e.curl(&url, &["-H", &bearer]).await.1.as_deref() == Some(code) }
                })
                .await
            }
        });
        futures_util::future::join_all(waits).await
    }

    fn logs(&self) -> String {
        let mut all = self.cp.process.log();
        for e in &self.edges {
            all.push_str(&e.process.log());
        }
        all
    }
}

async fn mint(admin: SocketAddr, body: &str) -> (String, String) {
    let (status, out) = post(admin, "/v1/handles", body).await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["handle"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

fn fleet_types(config: &serde_json::Value) -> &serde_json::Value {
    &config["fleet"]["state"]["types"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_follow_one_control_plane() {
    let mut f = fleet().await;
    let creds = r#"{"credentials":["api-key"],"ttl":"10m","session":"s-1"}"#;

    // Every edge holds an acknowledged version of each type (that is what /readyz waited for),
    // and shows it in /v1/config.
    for e in &f.edges {
        let c = get_json(e.admin, "/v1/config").await;
        for t in ["revocations", "profiles", "sandboxes", "kill_switch"] {
            assert!(
                fleet_types(&c)[t]["version"].is_string(),
                "{}: {t}: {c}",
                e.name
            );
        }
        assert_eq!(c["fleet"]["state"]["connected"], true);
    }

    // A handle minted on edge A is redeemed on edge C (and B): the real secret reaches the
    // upstream, the handle does not.
    let (handle, id) = mint(f.edges[0].admin, creds).await;
    for e in &f.edges[1..] {
        let (status, code) = e
            .curl(
                &f.api("/small"),
                &["-H", &format!("Authorization: Bearer {handle}")],
            )
            .await;
        assert_eq!((status, code), (200, None), "{}", e.name);
    }
    {
        let seen = f.seen.requests.lock().unwrap();
        let (_, headers) = seen.last().unwrap();
        let sent = headers.get("authorization").unwrap().to_str().unwrap();
        assert_eq!(sent, format!("Bearer {SECRET}"));
    }
    // A handle minted by the control plane (issuer `control`) works everywhere too.
    let (cp_handle, _) = mint(f.cp.admin, creds).await;
    let (status, _) = f.edges[1]
        .curl(
            &f.api("/small"),
            &["-H", &format!("Authorization: Bearer {cp_handle}")],
        )
        .await;
    assert_eq!(status, 200);

    // Fleet-owned writes on an edge: 409, naming the control plane.
    for (method, path, body) in [
        ("POST", "/v1/handles/revoke", format!(r#"{{"id":"{id}"}}"#)),
        ("POST", "/v1/kill-switch", r#"{"enabled":true}"#.to_owned()),
        (
            "POST",
            "/v1/sandboxes",
            r#"{"id":"x","profile":"agents","sources":["127.0.0.9/32"]}"#.to_owned(),
        ),
        ("DELETE", "/v1/sandboxes/x", String::new()),
    ] {
        let (status, out) = request(f.edges[0].admin, method, path, &body)
            .await
            .unwrap();
        assert_eq!(status, 409, "{method} {path}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"], "fleet_managed");
        assert_eq!(v["control_plane"], format!("http://{}", f.cp.sds));
        assert_eq!(v["control_plane_admin"], format!("http://{}", f.cp.admin));
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains(&f.cp.admin.to_string())
        );
    }

    // Without a token, the control plane's admin API takes loopback `Host`s only (no DNS
    // rebinding from a browser on the operator's machine).
    let r = admin_raw(
        f.cp.admin,
        "POST",
        "/v1/kill-switch",
        &[
            ("Host", "rebound.example"),
            ("Content-Type", "application/json"),
        ],
        r#"{"enabled":true}"#,
    )
    .await;
    assert_eq!(r.0, 403, "{}", r.2);

    // A revocation posted to the control plane is refused on all three within 1 s.
    let t0 = Instant::now();
    let (status, out) = post(
        f.cp.admin,
        "/v1/handles/revoke",
        &format!(r#"{{"id":"{id}"}}"#),
    )
    .await;
    assert_eq!(status, 204, "{out}");
    let took = f
        .until_all_refuse(&handle, "handle_revoked", Duration::from_secs(1))
        .await;
    eprintln!(
        "revocation refused on each edge after {took:?} (total {:?})",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(2));

    // A sandbox registered on the control plane is enforced on all three: before, its
    // address gets the top-level policy (other.test denied); after, its profile (GET only).
    let from_sbx = ["--interface", "127.0.0.5"];
    for e in &f.edges {
        assert_eq!(
            e.curl(&f.other(), &from_sbx).await.1.as_deref(),
            Some("destination_denied")
        );
    }
    let (status, out) = post(
        f.cp.admin,
        "/v1/sandboxes",
        r#"{"id":"sbx-1","profile":"agents","sources":["127.0.0.5/32"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{out}");
    for e in &f.edges {
        let other = f.other();
        until(
            Duration::from_secs(1),
            &format!("{} enforces sbx-1", e.name),
            || {
                let other = other.clone();
                async move { e.curl(&other, &from_sbx).await == (200, None) }
            },
        )
        .await;
        let (_, code) = e
            .curl(&f.other(), &["--interface", "127.0.0.5", "-X", "POST"])
            .await;
        assert_eq!(
            code.as_deref(),
            Some("method_denied"),
            "{}: the profile's methods apply",
            e.name
        );
        // The edge's own address is still nobody's sandbox.
        assert_eq!(
            e.curl(&f.other(), &[]).await.1.as_deref(),
            Some("destination_denied")
        );
    }

    // The kill switch closes open tunnels on all three and refuses new egress.
    let mut tunnels = Vec::new();
    for e in &f.edges {
        let tls = tls_through(
            e.proxy,
            &format!("tunnel.test:{}", f.up.port()),
            "tunnel.test",
            client_config(f.upstream_roots.roots(), &[b"http/1.1"]),
        )
        .await
        .unwrap();
        tunnels.push(tls);
    }
    let (status, _) = post(
        f.cp.admin,
        "/v1/kill-switch",
        r#"{"enabled":true,"reason":"drill"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let t0 = Instant::now();
    for tls in &mut tunnels {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "tunnel still open: {closed:?}"
        );
    }
    eprintln!("kill switch closed 3 tunnels in {:?}", t0.elapsed());
    for e in &f.edges {
        assert_eq!(
            e.curl(&f.other(), &from_sbx).await.1.as_deref(),
            Some("kill_switch")
        );
    }
    let (status, _) = post(f.cp.admin, "/v1/kill-switch", r#"{"enabled":false}"#).await;
    assert_eq!(status, 200);
    for e in &f.edges {
        let other = f.other();
        until(Duration::from_secs(1), "kill switch off", || {
            let other = other.clone();
            async move { e.curl(&other, &from_sbx).await == (200, None) }
        })
        .await;
    }

    // An update the edges refuse (a profile named like one of their own) is NACKed: the
    // previous version stays in force and the rejection is reported.
    let before = get_json(f.edges[2].admin, "/v1/config").await;
    let before_version = fleet_types(&before)["profiles"]["version"].clone();
    std::fs::write(
        f.dir.path().join("fleet.yaml"),
        fleet_file(f.up.port(), "  local: { destinations: [] }\n"),
    )
    .unwrap();
    for e in &f.edges {
        let admin = e.admin;
        until(
            Duration::from_secs(5),
            &format!("{} rejects the profiles", e.name),
            || async move {
                let c = get_json(admin, "/v1/config").await;
                fleet_types(&c)["profiles"]["rejected"].as_u64() >= Some(1)
            },
        )
        .await;
        let c = get_json(e.admin, "/v1/config").await;
        assert_eq!(fleet_types(&c)["profiles"]["version"], before_version);
        let err = fleet_types(&c)["profiles"]["last_error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(err.contains("local"), "{err}");
        assert_eq!(
            e.curl(&f.other(), &from_sbx).await,
            (200, None),
            "previous profiles still apply"
        );
    }
    assert!(f.logs().contains("NACK"), "a rejection is logged");
    std::fs::write(f.dir.path().join("fleet.yaml"), fleet_file(f.up.port(), "")).unwrap();

    // Control plane killed: edges keep enforcing (revocation, sandbox within its TTL) and
    // report the stream down.
    f.cp.process.kill();
    for e in &f.edges {
        let admin = e.admin;
        until(Duration::from_secs(5), "stream seen down", || async move {
            get_json(admin, "/v1/config").await["fleet"]["state"]["connected"] == false
        })
        .await;
        let (_, code) = e
            .curl(
                &f.api("/small"),
                &["-H", &format!("Authorization: Bearer {handle}")],
            )
            .await;
        assert_eq!(code.as_deref(), Some("handle_revoked"));
    }
    // Meanwhile a session is revoked on the control plane's state dir (its CLI): once it is
    // back, every edge converges on it.
    let (handle2, _) = mint(f.edges[1].admin, creds).await;
    let out = Command::new(BIN)
        .args(["handle", "revoke", "--session", "s-1", "--state-dir"])
        .arg(f.dir.path().join("control"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.cp.restart().await;
    f.until_all_refuse(&handle2, "handle_revoked", Duration::from_secs(10))
        .await;
    for e in &f.edges {
        let admin = e.admin;
        until(Duration::from_secs(5), "stream up again", || async move {
            get_json(admin, "/v1/config").await["fleet"]["state"]["connected"] == true
        })
        .await;
        assert_eq!(
            e.curl(&f.other(), &from_sbx).await,
            (200, None),
            "{} still has sbx-1",
            e.name
        );
    }

    // Cut off for longer than the grant TTL, the sandbox lapses (closed: back to the
    // top-level policy), while the revocations stay.
    f.cp.process.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for e in &f.edges {
        let other = f.other();
        until(Duration::from_secs(3), &format!("{} lets sbx-1 lapse", e.name), || {
            let other = other.clone();
            async move { e.curl(&other, &from_sbx).await.1.as_deref() == Some("destination_denied") }
        })
        .await;
        let c = get_json(e.admin, "/v1/config").await;
        assert!(
            fleet_types(&c)["sandboxes"]["lapsed"].as_u64() >= Some(1),
            "{c}"
        );
        // Known but allowed nothing: its address does not fall back to the top level.
        let s = get_json(e.admin, "/v1/sandboxes/sbx-1").await;
        assert_eq!(s["profile"], "(lapsed)", "{s}");
        let (_, code) = e
            .curl(
                &f.api("/small"),
                &["-H", &format!("Authorization: Bearer {handle}")],
            )
            .await;
        assert_eq!(code.as_deref(), Some("handle_revoked"));
        let metrics = request(e.admin, "GET", "/metrics", "").await.unwrap().1;
        assert!(
            metrics
                .contains("egress_edge_fleet_updates_total{type=\"sandboxes\",result=\"lapsed\"}"),
            "{metrics}"
        );
        assert!(metrics.contains("egress_edge_fleet_version{"), "{metrics}");
    }
    let logs = f.logs();
    for leak in [SECRET, handle.as_str(), handle2.as_str()] {
        assert!(!logs.contains(leak), "a secret or handle reached a log");
    }
}

impl Edge {
    /// Stops this edge and starts it again from the same config and state dir.
    async fn restart(&mut self, dir: &Path) {
        self.process.kill();
        let config = dir.join(format!("{}.yaml", self.name));
        self.process = Process::spawn(
            Command::new(BIN).arg("run").arg("--config").arg(&config),
            dir.join(format!("{}-2.log", self.name)),
        );
        let admin = self.admin;
        until(Duration::from_secs(20), "edge back", || async move {
            request(admin, "GET", "/healthz", "").await.is_some()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restarted_while_the_control_plane_is_away_keeps_its_kill_switch() {
    let mut f = fleet_of(&["edge-k"]).await;
    let (status, _) = post(f.cp.admin, "/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 200);
    let url = f.api("/small");
    let e = &f.edges[0];
    until(Duration::from_secs(2), "kill switch on", || {
        let url = url.clone();
        async move { e.curl(&url, &[]).await.1.as_deref() == Some("kill_switch") }
    })
    .await;
    f.cp.process.kill();
    let dir = f.dir.path().to_path_buf();
    f.edges[0].restart(&dir).await;
    let e = &f.edges[0];
    assert_eq!(e.curl(&url, &[]).await.1.as_deref(), Some("kill_switch"));
    // Not ready: nothing came from the control plane since the restart.
    let (status, body) = request(e.admin, "GET", "/readyz", "").await.unwrap();
    assert_eq!(status, 503, "{body}");
    // The control plane back with the switch off: the edge follows.
    f.cp.restart().await;
    let (status, _) = post(f.cp.admin, "/v1/kill-switch", r#"{"enabled":false}"#).await;
    assert_eq!(status, 200);
    until(Duration::from_secs(10), "kill switch off again", || {
        let url = url.clone();
        async move { e.curl(&url, &[]).await.1.as_deref() == Some("handle_required") }
    })
    .await;
}

#[tokio::test]
async fn the_control_plane_refuses_unsafe_or_broken_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secrets = write(d, "secrets.yaml", "secrets:\n  k: { value: v }\n");
    let edge_only = write(d, "edge-only.yaml", "proxy: { listen: 127.0.0.1:3128 }\n");
    let bad_profile = write(
        d,
        "bad.yaml",
        "sandboxes:\n  - { id: s, profile: nowhere, sources: [10.0.0.1/32] }\n",
    );
    let state = d.join("state");
    let token = token_file(d, "token", "0123456789abcdef-admin", 0o600);
    let loose = token_file(d, "loose", "0123456789abcdef-admin", 0o644);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--admin".into(), "127.0.0.1:1".into()], "--state-dir"),
        (
            vec![
                "--admin".into(),
                "0.0.0.0:1".into(),
                "--state-dir".into(),
                state.display().to_string(),
            ],
            "--admin-token-file",
        ),
        (
            vec![
                "--admin".into(),
                "127.0.0.1:1".into(),
                "--state-dir".into(),
                state.display().to_string(),
                "--admin-token-file".into(),
                loose.display().to_string(),
            ],
            "chmod 600",
        ),
        (
            vec![
                "--fleet".into(),
                edge_only.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
            ],
            "does not belong in a fleet file",
        ),
        (
            vec![
                "--fleet".into(),
                bad_profile.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
            ],
            "nowhere",
        ),
        (vec!["--grant-ttl".into(), "10ms".into()], "--grant-ttl"),
    ];
    for (extra, want) in cases {
        let out = Command::new(BIN)
            .args(["sds", "serve", "--listen", "127.0.0.1:0", "--secrets"])
            .arg(&secrets)
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err} should mention {want}");
    }

    // With a token, the admin API wants it; the public key is public. A fleet profile may
    // carry credentials: the edges hold the secrets, not the fleet file.
    let fleet = write(
        d,
        "fleet.yaml",
        "profiles:\n  ai:\n    destinations:\n      - { host: api.example, credential: { secret: k } }\n",
    );
    let admin = loopback(free_port());
    let mut cp = ControlPlane {
        process: Process::spawn(
            Command::new(BIN)
                .args(["sds", "serve", "--listen", "127.0.0.1:0", "--secrets"])
                .arg(&secrets)
                .arg("--fleet")
                .arg(&fleet)
                .args(["--admin", &admin.to_string()])
                .arg("--state-dir")
                .arg(&state)
                .arg("--admin-token-file")
                .arg(&token),
            d.join("cp.log"),
        ),
        sds: loopback(0),
        admin,
        args: Vec::new(),
        dir: d.to_path_buf(),
    };
    cp.wait_up().await;
    let r = admin_raw(
        admin,
        "GET",
        "/v1/fleet",
        &[
            ("Host", &admin.to_string()),
            ("Authorization", "Bearer 0123456789abcdef-admin"),
        ],
        "",
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.2);
    assert_eq!(json(&r.2)["types"]["profiles"]["resources"], 1);
    let (status, _) = post(admin, "/v1/kill-switch", r#"{"enabled":true}"#).await;
    assert_eq!(status, 401);
    let with = |t: &str| format!("Bearer {t}");
    let r = admin_post(
        admin,
        "/v1/kill-switch",
        r#"{"enabled":true}"#,
        &[("Authorization", &with("wrong-token-0000000"))],
    )
    .await;
    assert_eq!(r.0, 401);
    let r = admin_post(
        admin,
        "/v1/kill-switch",
        r#"{"enabled":true}"#,
        &[("Authorization", &with("0123456789abcdef-admin"))],
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.2);
    let r = admin_post(
        admin,
        "/v1/kill-switch",
        r#"{"enabled":true}"#,
        &[
            ("Authorization", &with("0123456789abcdef-admin")),
            ("Origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(r.0, 403, "a foreign Origin is refused even with the token");
    let (status, pem) = request(admin, "GET", "/handle-key.pub", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(pem.contains("BEGIN PUBLIC KEY"));
    assert_eq!(
        pem,
        std::fs::read_to_string(state.join("handle-key.pub")).unwrap()
    );
}
