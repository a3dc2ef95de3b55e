//! `egress-edge jail` and `egress-edge nft-rules`, with the real binary. Every jail runs
//! inside a namespace the test makes (the "edge", `ip netns exec EDGE egress-edge jail ...`),
//! so its veth, nftables table and listeners live there and nothing touches the host's
//! network. The edge holds a dummy interface with the test upstream's addresses (10.77.1.2,
//! 10.77.1.3, fd77:1::2), and the upstream is served by this process on a listener bound in
//! the edge.
//!
//! Tests marked WAITS ON THE TRANSPARENT LISTENER or WAITS ON THE GUEST RESOLVER exercise
//! parts built in parallel (`src/frontend/transparent.rs`, `src/frontend/dns.rs`); they fail
//! until those land.
//!
//! These tests need root (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_egress-edge");
/// No child of a test runs longer than this.
const LIMIT: Duration = Duration::from_secs(60);
const REAL_KEY: &str = "sk-REAL-jail-0123456789";

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    pid: u32,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion, killed after [`LIMIT`].
async fn run_limited(cmd: Command) -> Ran {
    let desc = format!("{cmd:?}");
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{desc}: {e}"));
    let pid = child.id().unwrap();
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{desc} did not finish within {LIMIT:?}"))
        .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    }
}

/// The edge namespace with its upstream, a config, a secrets file and a state dir.
struct Edge {
    ns: Netns,
    _dir: tempfile::TempDir,
    pki: Pki,
    config: PathBuf,
    state: PathBuf,
    seen: Arc<Seen>,
}

impl Edge {
    async fn new(tag: &str) -> Edge {
        let ns = Netns::new(tag);
        dummy(&ns, &["10.77.1.2/32", "10.77.1.3/32", "fd77:1::2/128"]);
        let pki = Pki::new("jail test CA");
        let leaf = pki.leaf(&["upstream.test", "api.test", "denied.test"]);
        // On every address of the edge: a proxy that dialled the guest's original destination
        // instead of the address it vetted would reach it on 10.77.1.3 too.
        let l = ns.tcp_listener("0.0.0.0:443".parse().unwrap());
        let (_, seen) = start_upstream_on(l, Some(server_config(&leaf, &[b"http/1.1"])));
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let secrets = write(
            dir.path(),
            "secrets.yaml",
            &format!("secrets:\n  openai-key: {{ value: {REAL_KEY} }}\n"),
        );
        let config = write(
            dir.path(),
            "config.yaml",
            &format!(
                "proxy: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
state_dir: {state}
network:
  deny: [default]
  allow: [10.77.1.2/32, 10.77.1.3/32, fd77:1::2/128]
  hosts: {{ upstream.test: 10.77.1.2, api.test: 10.77.1.2, denied.test: 10.77.1.2 }}
upstream: {{ extra_roots: [{ca}] }}
secrets: {{ file: {secrets}, initial_fetch_timeout: 1s }}
destinations:
  - {{ host: upstream.test }}
  - {{ host: '*.wild.test' }}
  - {{ host: api.test, rung: bump, credential: {{ secret: openai-key, headers: [authorization] }} }}
default_rung: deny
",
                state = state.display(),
                ca = pki.ca_path().display(),
                secrets = secrets.display(),
            ),
        );
        Edge {
            ns,
            _dir: dir,
            pki,
            config,
            state,
            seen,
        }
    }

    /// `egress-edge jail --config C --user 0 -- ARGS` inside the edge, run to completion.
    /// `--user 0`: the same (root without capabilities) whether or not the test runs under
    /// sudo, so the command can read the test's private temp files.
    fn jail(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command(BIN);
        c.args([
            "jail",
            "--config",
            self.config.to_str().unwrap(),
            "--user",
            "0",
            "--",
        ])
        .args(args);
        c
    }

    async fn run_jail(&self, args: &[&str]) -> Ran {
        let ran = run_limited(self.jail(args)).await;
        self.assert_nothing_left(ran.pid);
        ran
    }

    /// No namespace, veth, nftables table or private directory of jail `pid` is left.
    fn assert_nothing_left(&self, pid: u32) {
        assert!(
            !Path::new(&format!("/run/netns/ee-{pid}")).exists(),
            "netns ee-{pid} left behind"
        );
        assert!(
            !Path::new(&format!("/run/egress-edge-jail-{pid}")).exists(),
            "private dir of jail {pid} left behind"
        );
        let links = sh(self.ns.command("ip").args(["-o", "link"]));
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains(&format!("eeh{pid}")), "veth left: {links}");
        let tables = sh(self.ns.command("nft").args(["list", "tables"]));
        let tables = String::from_utf8_lossy(&tables.stdout);
        assert!(
            !tables.contains(&format!("egress_edge_jail_{pid}")),
            "nft table left: {tables}"
        );
    }
}

fn without_proxy_env() -> [&'static str; 9] {
    [
        "env",
        "-u",
        "HTTPS_PROXY",
        "-u",
        "HTTP_PROXY",
        "-u",
        "https_proxy",
        "-u",
        "http_proxy",
    ]
}

#[tokio::test]
async fn nft_rules_load_into_a_namespace() {
    let ns = Netns::new("nftr");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.yaml",
        "proxy: { listen: 127.0.0.1:3128, transparent: 0.0.0.0:3129 }\ndns: { listen: 0.0.0.0:5353 }\n",
    );
    let gateway = run_limited({
        let mut c = Command::new(BIN);
        c.args(["nft-rules", "--config", cfg.to_str().unwrap()])
            .args(["--interface", "veth0", "--table", "eet_gw"]);
        c
    })
    .await;
    assert_eq!(gateway.code, Some(0), "{gateway:?}");
    ns.nft(&gateway.stdout);
    let listed = sh(ns.command("nft").args(["list", "table", "inet", "eet_gw"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    for want in [
        "redirect to :3129",
        "redirect to :5353",
        "iifname \"veth0\"",
        "tcp dport 3128",
    ] {
        assert!(listed.contains(want), "{want:?} not in\n{listed}");
    }
    // Loading it again replaces the table.
    ns.nft(&gateway.stdout);

    let sidecar = run_limited({
        let mut c = Command::new(BIN);
        c.args(["nft-rules", "--config", cfg.to_str().unwrap()])
            .args(["--sidecar-uid", "1337"]);
        c
    })
    .await;
    assert_eq!(sidecar.code, Some(0), "{sidecar:?}");
    ns.nft(&sidecar.stdout);
    let listed = sh(ns
        .command("nft")
        .args(["list", "table", "inet", "egress_edge"]));
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("skuid 1337"), "{listed}");
    assert!(listed.contains("redirect to :3129"), "{listed}");
}

#[tokio::test]
async fn nft_rules_refuses_what_it_cannot_render() {
    let dir = tempfile::tempdir().unwrap();
    let no_transparent = write(dir.path(), "a.yaml", "dns: { listen: 0.0.0.0:5353 }\n");
    let no_dns = write(
        dir.path(),
        "b.yaml",
        "proxy: { transparent: 0.0.0.0:3129 }\n",
    );
    let good = write(
        dir.path(),
        "c.yaml",
        "proxy: { transparent: 0.0.0.0:3129 }\ndns: { listen: 0.0.0.0:5353 }\n",
    );
    let cases: [(&Path, &[&str], &str); 5] = [
        (
            &no_transparent,
            &["--interface", "eth0"],
            "proxy.transparent",
        ),
        (&no_dns, &["--interface", "eth0"], "dns.listen"),
        (&good, &["--interface", "eth0", "--table", "a b"], "--table"),
        (&good, &["--interface", "x\"; flush ruleset"], "--interface"),
        (
            &good,
            &["--interface", "eth0", "--sidecar-uid", "1"],
            "cannot be used",
        ),
    ];
    for (cfg, args, want) in cases {
        let mut c = Command::new(BIN);
        c.args(["nft-rules", "--config", cfg.to_str().unwrap()])
            .args(args);
        let ran = run_limited(c).await;
        assert_eq!(ran.code, Some(1), "{args:?}: {ran:?}");
        assert!(ran.stderr.contains(want), "{args:?}: {ran:?}");
        assert!(ran.stdout.is_empty(), "{ran:?}");
    }
}

#[tokio::test]
async fn jail_returns_the_command_status_and_leaves_nothing() {
    let edge = Edge::new("jexit").await;
    let ran = edge.run_jail(&["sh", "-c", "exit 7"]).await;
    assert_eq!(ran.code, Some(7), "{ran:?}");
    let ran = edge.run_jail(&["sh", "-c", "kill -TERM $$"]).await;
    assert_eq!(ran.code, Some(128 + 15), "{ran:?}");
    let ran = edge.run_jail(&["/nonexistent/program"]).await;
    assert_eq!(ran.code, Some(127), "{ran:?}");
    // --user drops to that user; the command can no longer leave the namespace.
    let mut c = edge.ns.command(BIN);
    c.args(["jail", "--config", edge.config.to_str().unwrap()])
        .args(["--user", "nobody", "--", "sh", "-c"])
        .arg("id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status");
    let ran = run_limited(c).await;
    edge.assert_nothing_left(ran.pid);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.starts_with("65534\n"), "{ran:?}");
    assert!(ran.stdout.contains("CapEff:\t0000000000000000"), "{ran:?}");
    assert!(ran.stdout.contains("CapBnd:\t0000000000000000"), "{ran:?}");
    assert!(ran.stdout.contains("NoNewPrivs:\t1"), "{ran:?}");
    // Root without a user to drop to keeps uid 0 but no capability.
    let ran = edge
        .run_jail(&[
            "sh",
            "-c",
            "id -u; grep CapEff /proc/self/status; ip link add eetx type veth peer name eety && echo escaped",
        ])
        .await;
    assert!(ran.stdout.starts_with("0\n"), "{ran:?}");
    assert!(ran.stdout.contains("CapEff:\t0000000000000000"), "{ran:?}");
    assert!(!ran.stdout.contains("escaped"), "{ran:?}");
}

#[tokio::test]
async fn jail_without_privileges_says_so_and_creates_nothing() {
    let ns = Netns::new("jpriv");
    // Root without the two capabilities, and (where the binary is reachable for it) nobody.
    let mut attempts = vec![vec![
        "--bounding-set",
        "-net_admin,-sys_admin",
        "--inh-caps",
        "-all",
    ]];
    let nobody = ["--reuid", "65534", "--regid", "65534", "--clear-groups"];
    let reachable = Command::new("setpriv")
        .args(nobody)
        .args([BIN, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if reachable {
        attempts.push(nobody.to_vec());
    }
    for setpriv in attempts {
        let mut c = ns.command("setpriv");
        c.args(&setpriv).args([BIN, "jail", "--", "true"]);
        let ran = run_limited(c).await;
        assert_eq!(ran.code, Some(1), "{setpriv:?}: {ran:?}");
        assert!(
            ran.stderr
                .contains("run as root or with CAP_NET_ADMIN and CAP_SYS_ADMIN"),
            "{ran:?}"
        );
        let pid = ran.pid;
        assert!(!Path::new(&format!("/run/netns/ee-{pid}")).exists());
        assert!(!Path::new(&format!("/run/egress-edge-jail-{pid}")).exists());
        let links = sh(ns.command("ip").args(["-o", "link"]));
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains("eeh"), "{links}");
    }
}

#[tokio::test]
async fn jail_tears_down_after_sigterm() {
    let edge = Edge::new("jterm").await;
    let mut cmd = tokio::process::Command::from(edge.jail(&["sleep", "30"]));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    // The private directory is the last thing made before the command starts.
    let dir = PathBuf::from(format!("/run/egress-edge-jail-{pid}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !dir.join("resolv.conf").exists() {
        assert!(tokio::time::Instant::now() < deadline, "jail never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the jail did not stop after SIGTERM")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    edge.assert_nothing_left(pid);
}

#[tokio::test]
async fn jailed_trust_store_has_the_ca_and_the_host_file_is_unchanged() {
    let edge = Edge::new("jtrust").await;
    let host_file = "/etc/ssl/certs/ca-certificates.crt";
    let before = std::fs::read(host_file).unwrap();
    let host_count = String::from_utf8_lossy(&before).matches("BEGIN").count();
    // No variables: the system store itself.
    let ran = edge
        .run_jail(&["env", "-i", "/bin/sh", "-c", &format!("cat {host_file}")])
        .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(
        ran.stdout.matches("BEGIN").count(),
        host_count + 1,
        "the jail's bundle is the system's plus the CA"
    );
    let ca = run_limited({
        let mut c = Command::new(BIN);
        c.args(["ca", "export", "--config", edge.config.to_str().unwrap()]);
        c
    })
    .await;
    assert_eq!(ca.code, Some(0), "{ca:?}");
    assert!(
        ran.stdout.trim_end().ends_with(ca.stdout.trim_end()),
        "the deployment CA closes the bundle"
    );
    // The CA alone, for Node, and the resolver.
    let ran = edge
        .run_jail(&[
            "sh",
            "-c",
            "cat \"$NODE_EXTRA_CA_CERTS\"; cat /etc/resolv.conf; echo \"$SSL_CERT_FILE $HTTPS_PROXY\"",
        ])
        .await;
    assert!(ran.stdout.starts_with(ca.stdout.trim_end()), "{ran:?}");
    assert!(ran.stdout.contains("nameserver 10.233."), "{ran:?}");
    assert!(ran.stdout.contains("http://10.233."), "{ran:?}");
    assert_eq!(
        std::fs::read(host_file).unwrap(),
        before,
        "the host's trust store is unchanged"
    );
}

#[tokio::test]
async fn jailed_udp_has_no_path() {
    let edge = Edge::new("judp").await;
    let server = edge.ns.udp_socket("0.0.0.0:443".parse().unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while server.recv_from(&mut buf).await.is_ok() {
            r.fetch_add(1, Ordering::SeqCst);
        }
    });
    let script = r#"
import socket
for host, fam in (("10.77.1.2", socket.AF_INET), ("10.77.1.3", socket.AF_INET), ("fd77:1::2", socket.AF_INET6)):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.connect((host, 443))
        s.send(b"quic?")
        s.recv(64)
        print(host, "answered")
    except (ConnectionRefusedError, socket.timeout, OSError) as e:
        print(host, "no path", type(e).__name__)
"#;
    let ran = edge.run_jail(&["python3", "-c", script]).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(!ran.stdout.contains("answered"), "{ran:?}");
    assert_eq!(ran.stdout.matches("no path").count(), 3, "{ran:?}");
    // The local address's datagram is rejected outright (ICMP port unreachable).
    assert!(
        ran.stdout
            .contains("10.77.1.2 no path ConnectionRefusedError"),
        "{ran:?}"
    );
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

/// A DNS query over UDP to the jail's nameserver, printing `NAME TYPE RCODE ANSWERS` per query
/// (`timeout` when nothing answers).
const DNS_SCRIPT: &str = r#"
import random, socket, struct, sys
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
def query(name, qtype):
    msg = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\0" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(msg, (ns, 53))
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        return "timeout"
    flags, _, an = struct.unpack(">HHH", data[2:8])
    return "%d %d" % (flags & 0xF, an)
for arg in sys.argv[1:]:
    name, qtype = arg.split(":")
    print(name, qtype, query(name, int(qtype)))
"#;

/// WAITS ON THE GUEST RESOLVER.
#[tokio::test]
async fn jailed_dns_answers_only_allowed_names() {
    let edge = Edge::new("jdns").await;
    let long = format!("{}.wild.test", "a".repeat(60));
    let ran = edge
        .run_jail(&[
            "python3",
            "-c",
            DNS_SCRIPT,
            "upstream.test:1",
            "denied.test:1",
            "upstream.test:16",
            &format!("{long}:1"),
        ])
        .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{ran:?}");
    assert!(
        lines[0].starts_with("upstream.test 1 0 "),
        "allowed name answered: {ran:?}"
    );
    assert_ne!(lines[0], "upstream.test 1 0 0", "with an address: {ran:?}");
    assert_eq!(
        lines[1], "denied.test 1 5 0",
        "denied name REFUSED: {ran:?}"
    );
    assert_eq!(lines[2], "upstream.test 16 5 0", "TXT REFUSED: {ran:?}");
    assert_eq!(
        lines[3],
        format!("{long} 1 5 0"),
        "long label REFUSED: {ran:?}"
    );
}

/// WAITS ON THE TRANSPARENT LISTENER.
#[tokio::test]
async fn jailed_curl_without_proxy_reaches_allowed_and_not_denied() {
    let edge = Edge::new("jcurl").await;
    let ca = edge.pki.ca_path();
    let script = format!(
        "curl -sS -m 10 --noproxy '*' --cacert {ca} --resolve upstream.test:443:10.77.1.2 https://upstream.test/small; echo \" allowed=$?\"; \
         curl -sS -m 10 --noproxy '*' --cacert {ca} --resolve denied.test:443:10.77.1.2 https://denied.test/small; echo \" denied=$?\"",
        ca = ca.display()
    );
    let mut args: Vec<&str> = without_proxy_env().to_vec();
    args.extend(["sh", "-c", &script]);
    let ran = edge.run_jail(&args).await;
    assert!(ran.stdout.contains("hello allowed=0"), "{ran:?}");
    assert!(!ran.stdout.contains("denied=0"), "{ran:?}");
    let paths: Vec<String> = edge
        .seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(
        paths,
        ["/small"],
        "only the allowed request reached the upstream"
    );
}

/// WAITS ON THE TRANSPARENT LISTENER: `--resolve allowed:443:<another address>` is
/// `address_mismatch`, though the upstream listens there too.
#[tokio::test]
async fn jailed_resolve_to_another_address_is_refused() {
    let edge = Edge::new("jmism").await;
    let ca = edge.pki.ca_path();
    let script = format!(
        "curl -sS -m 10 --noproxy '*' --cacert {} --resolve upstream.test:443:10.77.1.3 https://upstream.test/small; echo \" mismatch=$?\"",
        ca.display()
    );
    let mut args: Vec<&str> = without_proxy_env().to_vec();
    args.extend(["sh", "-c", &script]);
    let ran = edge.run_jail(&args).await;
    assert!(ran.stdout.contains("mismatch="), "{ran:?}");
    assert!(!ran.stdout.contains("mismatch=0"), "{ran:?}");
    assert_eq!(edge.seen.connections.load(Ordering::SeqCst), 0, "{ran:?}");
}

/// WAITS ON THE TRANSPARENT LISTENER: a connection that is neither TLS nor HTTP to a private
/// address no rule allows is closed, and nothing reaches the service there.
#[tokio::test]
async fn jailed_raw_tcp_to_a_private_address_is_refused() {
    let edge = Edge::new("jraw").await;
    let listener = edge.ns.tcp_listener("10.77.1.3:5432".parse().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            a.fetch_add(1, Ordering::SeqCst);
        }
    });
    let script = r#"
import socket
s = socket.create_connection(("10.77.1.3", 5432), timeout=10)
s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
try:
    data = s.recv(64)
    print("closed" if not data else "data")
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
"#;
    let ran = edge.run_jail(&["python3", "-c", script]).await;
    let out = ran.stdout.trim();
    assert!(out == "closed" || out == "reset", "{ran:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// WAITS ON THE TRANSPARENT LISTENER AND THE GUEST RESOLVER: Node `fetch` with no proxy
/// settings reaches a bumped host, and the upstream receives the credential the handle stands
/// for.
#[tokio::test]
async fn jailed_node_fetch_gets_the_credential_injected() {
    let edge = Edge::new("jnode").await;
    let mint = run_limited({
        let mut c = Command::new(BIN);
        c.args([
            "handle",
            "mint",
            "--state-dir",
            edge.state.to_str().unwrap(),
        ])
        .args([
            "--credential",
            "openai-key",
            "--host",
            "api.test",
            "--ttl",
            "5m",
        ]);
        c
    })
    .await;
    assert_eq!(mint.code, Some(0), "{mint:?}");
    let handle = mint.stdout.trim().to_owned();
    let script = "fetch('https://api.test/small', { headers: { authorization: 'Bearer ' + process.env.H }, signal: AbortSignal.timeout(15000) })
      .then(async r => { console.log('status', r.status); console.log(await r.text()); })
      .catch(e => { console.error(e); process.exit(3); })";
    let h = format!("H={handle}");
    let mut args: Vec<&str> = without_proxy_env().to_vec();
    args.extend([h.as_str(), "node", "-e", script]);
    let ran = edge.run_jail(&args).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.contains("status 200\nhello"), "{ran:?}");
    let seen = edge.seen.requests.lock().unwrap().clone();
    let auth: Vec<String> = seen
        .iter()
        .filter_map(|(_, h)| h.get("authorization"))
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(auth, [format!("Bearer {REAL_KEY}")], "{ran:?}");
    // Neither the secret nor the whole handle reaches the jail's output or the proxy's log.
    for needle in [REAL_KEY, handle.as_str()] {
        assert!(!ran.stdout.contains(needle), "{needle} leaked: {ran:?}");
        assert!(!ran.stderr.contains(needle), "{needle} leaked: {ran:?}");
    }
}
