//! Two sandboxes behind one transparent listener, told apart by source address — the only way
//! in transparent mode. Two guest namespaces, each with a veth into one edge namespace where
//! the `nft-rules` ruleset redirects their TCP to the transparent listener and their DNS to
//! the guest resolver. Each guest resolves and reaches only its own profile's destinations;
//! a guest whose address belongs to no sandbox gets the top-level policy (deny here). Every
//! address exists only in the namespaces this test creates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use egress_edge::app::{BuildOptions, DnsListener};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::common::*;
use crate::inject::capture_logs;

const UP: &str = "10.98.0.2";

struct Guest {
    ns: Netns,
    /// The edge's address on this guest's link (the guest's default gateway).
    gateway: String,
}

impl Guest {
    /// curl in the guest with no proxy settings: (exit code, body).
    async fn https(&self, name: &str, ca: &std::path::Path) -> (i32, String) {
        let resolve = format!("{name}:443:{UP}");
        let mut cmd = self.ns.command("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "--cacert"])
            .arg(ca)
            .args(["--resolve", &resolve, &format!("https://{name}/small")])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy");
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::from(cmd).output(),
        )
        .await
        .expect("curl hung")
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    }

    /// An A query from inside the guest to its gateway (redirected to the guest resolver).
    async fn resolve(&self, name: &str) -> ResponseCode {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let sock = self.ns.udp_socket("0.0.0.0:0".parse().unwrap());
        let server: SocketAddr = format!("{}:53", self.gateway).parse().unwrap();
        sock.send_to(&m.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
            .await
            .expect("no DNS reply")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap().metadata.response_code
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_guests_each_reach_only_their_profile() {
    capture_logs();
    let k = unique();
    let edge = Netns::new("sedge");
    dummy(&edge, &[&format!("{UP}/32")]);
    let (a_name, b_name) = (format!("a-{k}.test"), format!("b-{k}.test"));
    let pki = Pki::new("sandboxes upstream CA");
    let leaf = pki.leaf(&[&a_name, &b_name]);
    let tls_l = edge.tcp_listener("[::]:443".parse().unwrap());
    let (_, seen) = start_upstream_on(tls_l, Some(server_config(&leaf, &[b"http/1.1"])));
    let transparent = edge.tcp_listener("[::]:0".parse().unwrap());
    let port = transparent.local_addr().unwrap().port();
    let dns = DnsListener {
        udp: edge.udp_socket("0.0.0.0:53".parse().unwrap()),
        tcp: edge.tcp_listener("0.0.0.0:53".parse().unwrap()),
    };

    // Three guests on three links: a (sandbox sbx-a), b (sandbox sbx-b), c (no sandbox).
    let rules_dir = tempfile::tempdir().unwrap();
    let rules_cfg = write(
        rules_dir.path(),
        "rules.yaml",
        &format!("proxy: {{ transparent: '[::]:{port}' }}\ndns: {{ listen: '0.0.0.0:53' }}\n"),
    );
    let mut guests = Vec::new();
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        let ns = Netns::new(&format!("sg{tag}"));
        let prefix = format!("10.87.{}", i + 1);
        let (edge_if, _) = veth(&edge, &ns, &prefix, &format!("fd87:{}", i + 1));
        ns.ip(&["route", "add", "default", "via", &format!("{prefix}.1")]);
        let out = sh(
            std::process::Command::new(env!("CARGO_BIN_EXE_egress-edge"))
                .args(["nft-rules", "--config"])
                .arg(&rules_cfg)
                .args([
                    "--interface",
                    &edge_if,
                    "--table",
                    &format!("egress_edge_{tag}"),
                ]),
        );
        edge.nft(&String::from_utf8(out.stdout).unwrap());
        guests.push(Guest {
            ns,
            gateway: format!("{prefix}.1"),
        });
    }

    let yaml = format!(
        "state_dir: STATE_DIR
dns: {{ listen: '0.0.0.0:53' }}
network:
  allow: [{UP}/32]
  hosts: {{ {a_name}: {UP}, {b_name}: {UP} }}
profiles:
  pa:
    destinations: [ {{ host: {a_name} }} ]
  pb:
    destinations: [ {{ host: {b_name} }} ]
sandboxes:
  - {{ id: sbx-a, profile: pa, sources: [10.87.1.2/32] }}
  - {{ id: sbx-b, profile: pb, sources: [10.87.2.0/24] }}
default_rung: deny
"
    );
    let opts = BuildOptions {
        connector: Some(Arc::new(edge.connector())),
        ..Default::default()
    };
    let extra = Extra {
        transparent: vec![transparent],
        dns: vec![dns],
    };
    let proxy = Proxy::start_full(&yaml, opts, extra).await;
    let ca = pki.ca_path();
    let [a, b, c] = &guests[..] else {
        unreachable!()
    };

    // DNS: each guest is told only its own profile's names.
    assert_eq!(a.resolve(&a_name).await, ResponseCode::NoError);
    assert_eq!(a.resolve(&b_name).await, ResponseCode::Refused);
    assert_eq!(b.resolve(&b_name).await, ResponseCode::NoError);
    assert_eq!(b.resolve(&a_name).await, ResponseCode::Refused);
    assert_eq!(c.resolve(&a_name).await, ResponseCode::Refused);

    // TCP: the same split, through the transparent listener.
    assert_eq!(a.https(&a_name, &ca).await, (0, "hello".to_owned()));
    assert_eq!(b.https(&b_name, &ca).await, (0, "hello".to_owned()));
    let before = seen.connections.load(std::sync::atomic::Ordering::SeqCst);
    for (guest, name) in [(a, &b_name), (b, &a_name), (c, &a_name)] {
        let (code, body) = guest.https(name, &ca).await;
        assert_ne!(code, 0, "{name} reached from the wrong sandbox: {body}");
    }
    assert_eq!(
        seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "a refused connection reached the upstream"
    );
    // The access events name the sandbox the source address belongs to.
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).to_string();
    let event = |sandbox: &str, host: &str, outcome: &str| {
        logs.lines().any(|l| {
            l.contains("egress_edge::access")
                && l.contains(&format!("\"sandbox\":\"{sandbox}\""))
                && l.contains(&format!("\"host\":\"{host}\""))
                && l.contains(&format!("\"outcome\":\"{outcome}\""))
        })
    };
    assert!(event("sbx-a", &a_name, "ok"), "no ok event for sbx-a");
    assert!(event("sbx-b", &b_name, "ok"), "no ok event for sbx-b");
    assert!(event("sbx-a", &b_name, "destination_denied"));
    assert!(
        event("", &a_name, "destination_denied"),
        "no event for the stranger"
    );
    drop(proxy);
}
