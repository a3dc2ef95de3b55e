//! The fleet stream against a control plane that is not ours: `fleet_interop.py`, an ADS (and
//! SDS) server written with grpcio, Envoy's published protos (`xds-protos`) and our
//! `fleet.proto` compiled at test time by `grpcio-tools`, drives one in-process edge
//! (`fleet.source: sds`). It reports every ACK and NACK it receives; the test checks each
//! against what the edge enforces (curl through the bump) and shows (`/readyz`, `/v1/config`):
//!
//! (a) ready only once all four types are ACKed, with the server's versions in `/v1/config`;
//! (b) a revocation by handle id refuses that handle (`handle_revoked`), and the edge ACKs it;
//!     served with a TTL and never refreshed, it does not lapse;
//! (c) the kill switch refuses new requests (`kill_switch`) and, removed, lets them through;
//! (d) a profile and a sandbox wrapped in `Resource` with a 2 s TTL, kept alive by body-less
//!     heartbeat `Resource`s, outlive their TTL; heartbeats stopped, the sandbox lapses within
//!     TTL + 1 s (back to the top-level policy: `destination_denied`);
//! (e) an invalid revocation and an invalid sandbox are NACKed with a readable reason and the
//!     last accepted version; `/v1/config` keeps that version and shows the rejection, and
//!     enforcement does not change.
//!
//! The venv (`grpcio`, `xds-protos`, `grpcio-tools`) is shared with `sds/tests/interop.rs`.
//! Without `python3` the test says SKIP and passes; a failing `pip install` fails it.

#[path = "../../sds/tests/support/python.rs"]
mod python;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use python::{Lines, venv_python};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};

use crate::common::*;

const SECRET: &str = "sk-py-fleet-SECRET7";
/// The grants' TTL; heartbeats every quarter of it.
const TTL: Duration = Duration::from_secs(2);
const HEARTBEAT: f64 = 0.5;
const CREDS: &str = r#"{"credentials":["api-key"],"ttl":"10m","session":"s-py"}"#;
/// How long a step may take to show on the edge.
const STEP: Duration = Duration::from_secs(5);

/// The Python control plane: its stdin (commands) and its stdout (events).
struct ControlPlane {
    child: Child,
    stdin: ChildStdin,
    lines: Lines,
    port: u16,
}

impl ControlPlane {
    async fn start(python: &Path) -> ControlPlane {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(python)
            .arg(here.join("tests/it/fleet_interop.py"))
            .arg("--proto-root")
            .arg(here.join("sds/proto"))
            .args(["--secret", &format!("api-key={SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = Lines::spawn(&mut child);
        let versions = lines.next_json().await;
        assert_eq!(versions["event"], "versions", "{versions}");
        let major = |v: &Value| v.as_str().unwrap().split('.').next().unwrap().to_owned();
        assert_eq!(
            major(&versions["runtime"]),
            major(&versions["gencode"]),
            "protobuf runtime and grpcio-tools' protoc disagree: {versions}"
        );
        eprintln!(
            "python protobuf runtime {}, fleet.proto compiled by protoc for {}",
            versions["runtime"], versions["gencode"]
        );
        let port_line = lines.next().await;
        let port = port_line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line: {port_line}"));
        ControlPlane {
            child,
            stdin,
            lines,
            port,
        }
    }

    /// Sends one command and waits until the server has carried it out.
    async fn cmd(&mut self, cmd: Value) -> Value {
        let name = cmd["cmd"].clone();
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.lines
            .until(&format!("{name} done"), |v| {
                v["event"] == "done" && v["cmd"] == name
            })
            .await
    }

    /// Serves `resources` as `version` of `ty` (pushed to the edge); the response as sent.
    async fn set(&mut self, ty: &str, version: &str, resources: Value) -> Value {
        self.cmd(json!({"cmd": "set", "type": ty, "version": version, "resources": resources}))
            .await;
        // Pushed after "done" is printed: the server's loop does not yield in between.
        self.lines
            .until(&format!("{ty} {version} sent"), |v| {
                v["event"] == "sent" && v["type"] == ty && v["version"] == version
            })
            .await
    }

    /// The next ACK or NACK for `ty` that does not answer a heartbeat.
    async fn answer(&mut self, ty: &str) -> Value {
        self.lines
            .until(&format!("an ACK or NACK of {ty}"), |v| {
                (v["event"] == "ack" || v["event"] == "nack")
                    && v["type"] == ty
                    && v["heartbeat"] == false
            })
            .await
    }

    /// Serves `resources` as `version` of `ty`; the edge's ACK of that response.
    async fn set_acked(&mut self, ty: &str, version: &str, resources: Value) -> Value {
        let sent = self.set(ty, version, resources).await;
        let answer = self.answer(ty).await;
        assert_eq!(answer["event"], "ack", "{ty} {version}: {answer}");
        assert_eq!(answer["version"], version, "{answer}");
        assert_eq!(answer["nonce"], sent["nonce"], "{answer}");
        assert!(answer["error"].is_null(), "{answer}");
        answer
    }

    /// Serves `resources` as `version` of `ty`; the edge's NACK of that response, which must
    /// carry `kept`, the version it still holds.
    async fn set_nacked(&mut self, ty: &str, version: &str, resources: Value, kept: &str) -> Value {
        let sent = self.set(ty, version, resources).await;
        let answer = self.answer(ty).await;
        assert_eq!(answer["event"], "nack", "{ty} {version}: {answer}");
        assert_eq!(answer["nonce"], sent["nonce"], "{answer}");
        assert_eq!(
            answer["version"], kept,
            "a NACK carries the last accepted version"
        );
        assert_eq!(answer["code"], 3, "INVALID_ARGUMENT: {answer}");
        answer
    }
}

/// One proxied request through the edge's bump: (status, `x-egress-edge-error`).
async fn curl_through(p: &Proxy, url: &str, extra: &[&str]) -> (u16, Option<String>) {
    let ca = p.bump_ca_path().display().to_string();
    curl_bumped(&p.url(), &ca, url, extra).await
}

async fn readyz(admin: SocketAddr) -> (u16, String) {
    let (status, _, body) = http_get(admin, "/readyz", &[]).await;
    (status, body)
}

/// The edge's `/v1/config` `fleet.state`.
async fn fleet_state(admin: SocketAddr) -> Value {
    let (status, _, body) = http_get(admin, "/v1/config", &[]).await;
    assert_eq!(status, 200, "{body}");
    json(&body)["fleet"]["state"].clone()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_control_plane_drives_an_edge() {
    let Some(python) = venv_python() else { return };
    let t0 = Instant::now();
    let mut cp = ControlPlane::start(&python).await;

    let pki = Pki::new("fleet interop upstream CA");
    let leaf = pki.leaf(&["api.test", "other.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"http/1.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let up_ca = dir.path().join("up-ca.pem");
    std::fs::copy(pki.ca_path(), &up_ca).unwrap();
    let port = up.port();
    let edge = Proxy::start(&format!(
        "state_dir: STATE_DIR
upstream: {{ extra_roots: [{ca}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ api.test: 127.0.0.1, other.test: 127.0.0.1 }} }}
secrets:
  sds: {{ target: http://127.0.0.1:{sds}, node_id: edge-py, initial_fetch_timeout: 10s }}
fleet: {{ source: sds }}
destinations:
  - {{ host: api.test, ports: [{port}], credential: {{ secret: api-key }}, require_handle: true }}
",
        ca = up_ca.display(),
        sds = cp.port,
    ))
    .await;
    let api = format!("https://api.test:{port}/small");
    let other = format!("https://other.test:{port}/small");

    // (a) The edge subscribes to the four types (wildcard) and, while the server holds them
    // back, is not ready and says which types it lacks. Meanwhile the secrets stream gets the
    // credential and ACKs it.
    let mut subscribed = Vec::new();
    let mut sds_acked = None;
    while subscribed.len() < 4 || sds_acked.is_none() {
        let v = cp.lines.next_json().await;
        if v["event"] == "sds" && v["nonce"] != "" {
            sds_acked = Some(v);
        } else if v["event"] == "subscribe" {
            assert_eq!(v["names"], json!([]), "a wildcard subscription: {v}");
            assert_eq!(v["node"], "edge-py");
            assert_eq!(v["version"], "", "nothing accepted yet: {v}");
            subscribed.push(v["type"].as_str().unwrap().to_owned());
        }
    }
    let sds_acked = sds_acked.unwrap();
    assert!(sds_acked["error"].is_null(), "{sds_acked}");
    assert_eq!(sds_acked["names"], json!(["api-key"]));
    subscribed.sort();
    assert_eq!(
        subscribed,
        ["KillSwitch", "Profile", "Revocation", "Sandbox"],
        "the four fleet types"
    );
    let admin = edge.admin;
    until(STEP, "/readyz waiting for the fleet alone", || async move {
        readyz(admin).await.1.contains("no acknowledged version")
    })
    .await;
    let releases = [
        ("Revocation", "revocations", "py-rev-1"),
        ("Profile", "profiles", "py-prof-1"),
        ("Sandbox", "sandboxes", "py-sbx-1"),
        ("KillSwitch", "kill_switch", "py-ks-1"),
    ];
    for (i, (ty, _, version)) in releases.iter().enumerate() {
        let (status, body) = readyz(admin).await;
        assert_eq!(status, 503, "ready before {ty} was ACKed: {body}");
        for (_, missing, _) in &releases[i..] {
            assert!(body.contains(missing), "{body} should name {missing}");
        }
        for (_, acked, _) in &releases[..i] {
            assert!(!body.contains(acked), "{body} should not name {acked}");
        }
        cp.cmd(json!({"cmd": "set", "type": ty, "version": version, "resources": []}))
            .await;
        cp.cmd(json!({"cmd": "release", "type": ty})).await;
        let sent = cp
            .lines
            .until("the held response", |v| {
                v["event"] == "sent" && v["type"] == *ty
            })
            .await;
        let ack = cp.answer(ty).await;
        assert_eq!(ack["event"], "ack", "{ack}");
        assert_eq!(ack["version"], *version);
        assert_eq!(ack["nonce"], sent["nonce"]);
    }
    // The edge records a version before it sends the ACK: ready by the time the server has it.
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 200, "all four ACKed: {body}");
    eprintln!("(a) ready at the fourth ACK, {:?} in", t0.elapsed());
    let state = fleet_state(admin).await;
    assert_eq!(state["connected"], true, "{state}");
    assert_eq!(
        state["control_plane"],
        format!("http://127.0.0.1:{}", cp.port)
    );
    for (_, label, version) in releases {
        assert_eq!(state["types"][label]["version"], version, "{state}");
        assert_eq!(state["types"][label]["resources"], 0, "{state}");
        assert_eq!(state["types"][label]["rejected"], 0, "{state}");
    }

    // (b) A handle redeems (the secret the Python server delivered over SDS reaches the
    // upstream); revoked by id over ADS, it is refused, and the edge ACKs that version. The
    // revocation comes wrapped with a 1 s TTL that nobody refreshes: restrictions ignore it.
    let (status, out) = edge.post("/v1/handles", CREDS).await;
    assert_eq!(status, 200, "{out}");
    let minted = json(&out);
    let (handle, id) = (
        minted["handle"].as_str().unwrap().to_owned(),
        minted["id"].as_str().unwrap().to_owned(),
    );
    let bearer = format!("Authorization: Bearer {handle}");
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer]).await,
        (200, None)
    );
    {
        let requests = seen.requests.lock().unwrap();
        let (_, headers) = requests.last().unwrap();
        let sent = headers["authorization"].to_str().unwrap();
        assert_eq!(
            sent,
            format!("Bearer {SECRET}"),
            "the secret from SDS, not the handle"
        );
    }
    let now = unix_now();
    let revoke_at = Instant::now();
    cp.set_acked(
        "Revocation",
        "py-rev-2",
        json!([{
            "msg": {"kind": "ID", "key": id, "revokedAt": now, "expiresAt": now + 3600},
            "name": format!("id/{id}"),
            "ttl": 1.0,
        }]),
    )
    .await;
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer]).await,
        (403, Some("handle_revoked".to_owned()))
    );
    eprintln!(
        "(b) revocation ACKed and enforced in {:?}",
        revoke_at.elapsed()
    );
    let state = fleet_state(admin).await;
    assert_eq!(state["types"]["revocations"]["version"], "py-rev-2");
    assert_eq!(state["types"]["revocations"]["resources"], 1);

    // (c) The kill switch refuses new requests; withdrawn (absent means off), they pass again.
    let (status, out) = edge.post("/v1/handles", CREDS).await;
    assert_eq!(status, 200, "{out}");
    let bearer2 = format!(
        "Authorization: Bearer {}",
        json(&out)["handle"].as_str().unwrap()
    );
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer2]).await,
        (200, None)
    );
    cp.set_acked(
        "KillSwitch",
        "py-ks-2",
        json!([{"msg": {"enabled": true, "reason": "python drill"}}]),
    )
    .await;
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer2]).await,
        (403, Some("kill_switch".to_owned()))
    );
    let (_, _, cfg) = http_get(admin, "/v1/config", &[]).await;
    assert_eq!(json(&cfg)["kill_switch"], true);
    cp.set_acked("KillSwitch", "py-ks-3", json!([])).await;
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer2]).await,
        (200, None)
    );
    assert_eq!(
        fleet_state(admin).await["types"]["kill_switch"]["version"],
        "py-ks-3"
    );
    let (_, _, cfg) = http_get(admin, "/v1/config", &[]).await;
    assert_eq!(json(&cfg)["kill_switch"], false);

    // (d) A profile and a sandbox for 127.0.0.5, both wrapped with a 2 s TTL and kept alive by
    // heartbeats that carry no body.
    let from_sbx = ["--interface", "127.0.0.5"];
    assert_eq!(
        curl_through(&edge, &other, &from_sbx).await.1.as_deref(),
        Some("destination_denied"),
        "no sandbox yet: the top-level policy"
    );
    let ttl = TTL.as_secs_f64();
    let spec = format!(
        "destinations:\n  - {{ host: other.test, ports: [{port}], rung: bump, methods: [GET] }}\n"
    );
    let sandbox = |token: &str| {
        let mut msg = json!({"id": "sbx-py", "profile": "agents", "sources": ["127.0.0.5/32"]});
        if !token.is_empty() {
            msg["tokenSha256"] = json!(token);
        }
        json!([{ "msg": msg, "name": "sbx-py", "ttl": ttl }])
    };
    cp.set_acked(
        "Profile",
        "py-prof-2",
        json!([{"msg": {"name": "agents", "spec": spec}, "name": "agents", "ttl": ttl}]),
    )
    .await;
    cp.set_acked("Sandbox", "py-sbx-2", sandbox("")).await;
    let granted = Instant::now();
    cp.cmd(json!({"cmd": "heartbeat", "types": ["Profile", "Sandbox"], "interval": HEARTBEAT}))
        .await;
    assert_eq!(curl_through(&edge, &other, &from_sbx).await, (200, None));
    let (_, method) =
        curl_through(&edge, &other, &["--interface", "127.0.0.5", "-X", "POST"]).await;
    assert_eq!(
        method.as_deref(),
        Some("method_denied"),
        "the profile's methods apply"
    );
    assert_eq!(
        curl_through(&edge, &other, &[]).await.1.as_deref(),
        Some("destination_denied"),
        "the edge's own address is nobody's sandbox"
    );

    // (e) While the grants are kept alive: an invalid revocation (kind unspecified) and an
    // invalid sandbox (token_sha256 not hex) are NACKed; nothing the edge enforces changes.
    let nack = cp
        .set_nacked(
            "Revocation",
            "py-rev-bad",
            json!([{"msg": {"kind": "KIND_UNSPECIFIED", "key": "whatever", "revokedAt": now, "expiresAt": now + 60}}]),
            "py-rev-2",
        )
        .await;
    let why = nack["error"].as_str().unwrap();
    assert!(why.contains("kind must be ID, SESSION or SANDBOX"), "{why}");
    assert!(
        why.contains(r#"key "whatever""#),
        "names the revocation: {why}"
    );
    let nack = cp
        .set_nacked("Sandbox", "py-sbx-bad", sandbox("not-a-hash"), "py-sbx-2")
        .await;
    let why_sbx = nack["error"].as_str().unwrap().to_owned();
    assert!(
        why_sbx.contains("sbx-py") && why_sbx.contains("token_sha256"),
        "{why_sbx}"
    );
    assert!(
        !why_sbx.contains("not-a-hash"),
        "a token never travels back: {why_sbx}"
    );
    let state = fleet_state(admin).await;
    for (label, version, reason) in [
        ("revocations", "py-rev-2", why),
        ("sandboxes", "py-sbx-2", why_sbx.as_str()),
    ] {
        let t = &state["types"][label];
        assert_eq!(t["version"], version, "{state}");
        assert_eq!(t["rejected"], 1, "{state}");
        assert_eq!(t["last_error"], reason, "{state}");
    }
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer])
            .await
            .1
            .as_deref(),
        Some("handle_revoked"),
        "the revocation stays"
    );
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer2]).await,
        (200, None)
    );
    assert_eq!(curl_through(&edge, &other, &from_sbx).await, (200, None));
    eprintln!("(e) both NACKs seen, enforcement unchanged");

    // (d, continued) Past twice the TTL the grants hold, refreshed by heartbeats the edge ACKs
    // at the version it holds.
    let mut beats = 0;
    while granted.elapsed() < TTL * 2 + Duration::from_millis(500) {
        let v = cp
            .lines
            .until("a heartbeat", |v| v["heartbeat"] == true)
            .await;
        if v["event"] == "sent" {
            assert_eq!(v["bodies"], 0, "a heartbeat carries no body: {v}");
            continue;
        }
        assert_eq!(v["event"], "ack", "{v}");
        let want = if v["type"] == "Profile" {
            "py-prof-2"
        } else {
            "py-sbx-2"
        };
        assert_eq!(v["version"], want, "{v}");
        beats += 1;
        if beats % 4 == 0 {
            assert_eq!(curl_through(&edge, &other, &from_sbx).await, (200, None));
        }
    }
    assert_eq!(curl_through(&edge, &other, &from_sbx).await, (200, None));
    let state = fleet_state(admin).await;
    assert_eq!(state["types"]["sandboxes"]["lapsed"], 0, "{state}");
    assert_eq!(state["types"]["sandboxes"]["resources"], 1, "{state}");
    eprintln!(
        "(d) grants held {:?} on {beats} heartbeat ACKs (TTL {TTL:?})",
        granted.elapsed()
    );

    // Heartbeats stop: the sandbox lapses within TTL + 1 s; the revocation, whose 1 s TTL
    // ran out long ago, stays.
    cp.cmd(json!({"cmd": "heartbeat", "types": [], "interval": 0}))
        .await;
    let lapse = until(TTL + Duration::from_secs(1), "the sandbox lapses", || {
        let (edge, other) = (&edge, &other);
        async move {
            curl_through(edge, other, &from_sbx).await.1.as_deref() == Some("destination_denied")
        }
    })
    .await;
    assert!(
        lapse >= TTL - Duration::from_secs_f64(HEARTBEAT) - Duration::from_millis(100),
        "lapsed after {lapse:?}: before the TTL of the last heartbeat ran out"
    );
    eprintln!("(d) sandbox lapsed {lapse:?} after the heartbeats stopped (TTL {TTL:?})");
    // A lapse is counted just after it is enforced (no ACK orders the two): poll briefly.
    until(
        Duration::from_secs(1),
        "both lapses counted",
        || async move {
            let state = fleet_state(admin).await;
            ["sandboxes", "profiles"].iter().all(|label| {
                let t = &state["types"][label];
                t["lapsed"].as_u64() >= Some(1) && t["resources"] == 0
            })
        },
    )
    .await;
    let state = fleet_state(admin).await;
    assert_eq!(state["types"]["revocations"]["lapsed"], 0, "{state}");
    assert_eq!(state["types"]["revocations"]["resources"], 1, "{state}");
    assert_eq!(
        curl_through(&edge, &api, &["-H", &bearer])
            .await
            .1
            .as_deref(),
        Some("handle_revoked"),
        "restrictions never lapse"
    );

    cp.cmd(json!({"cmd": "quit"})).await;
    let status = tokio::time::timeout(Duration::from_secs(10), cp.child.wait())
        .await
        .expect("the python server did not exit")
        .unwrap();
    assert!(status.success(), "python server exited with {status}");
    eprintln!("fleet interop took {:?}", t0.elapsed());
}
