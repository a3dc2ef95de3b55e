//! Network namespaces the tests create themselves, so transparent interception, the guest
//! resolver and the jail are exercised against real kernels without touching the host's
//! network: every address used here lives inside a namespace made by the test, and every
//! namespace is deleted when its guard drops.
//!
//! These tests need root (CI runs as root). Without it they fail with a message saying so.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use egress_edge::net::dial::{BoxFuture, Connect};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique small number per namespace made by this process (for names and subnets).
pub fn unique() -> usize {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Fails the test with a clear message when not root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test creates network namespaces and nftables rules: run it as root (CI does)"
    );
}

/// Runs a command and fails the test with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS`, asserted.
pub fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add` with a name unique to this process and test; loopback up.
    pub fn new(tag: &str) -> Netns {
        require_root();
        let name = format!("eet-{tag}-{}-{}", std::process::id(), unique());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`, asserted.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs inside the namespace (`ip netns exec NAME PROGRAM`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f failed: {}\nruleset:\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a fresh thread that has entered this namespace: sockets it creates belong
    /// to the namespace for their whole life, whichever thread uses them afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// A tokio TCP listener bound inside the namespace.
    pub fn tcp_listener(&self, addr: SocketAddr) -> tokio::net::TcpListener {
        let std = self.enter(move || {
            let l = std::net::TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        });
        tokio::net::TcpListener::from_std(std).unwrap()
    }

    /// A tokio UDP socket bound inside the namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> tokio::net::UdpSocket {
        let std = self.enter(move || {
            let s = std::net::UdpSocket::bind(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        });
        tokio::net::UdpSocket::from_std(std).unwrap()
    }

    /// A connector whose connections start inside this namespace (the proxy under test runs
    /// in the test process, its upstreams live in the namespace).
    pub fn connector(&self) -> NetnsConnector {
        NetnsConnector {
            path: format!("/run/netns/{}", self.name),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects from inside a namespace, on a thread of its own per connection.
#[derive(Debug, Clone)]
pub struct NetnsConnector {
    path: String,
}

impl Connect for NetnsConnector {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<tokio::net::TcpStream>> {
        let path = self.path.clone();
        Box::pin(async move {
            let std = tokio::task::spawn_blocking(move || {
                // A blocking-pool thread must not stay in the namespace: use a thread of our own.
                std::thread::spawn(move || -> io::Result<std::net::TcpStream> {
                    let fd = File::open(&path)?;
                    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    let s = std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_secs(5),
                    )?;
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
                .join()
                .map_err(|_| io::Error::other("connector thread panicked"))?
            })
            .await
            .map_err(io::Error::other)??;
            tokio::net::TcpStream::from_std(std)
        })
    }
}

/// A veth pair between two namespaces with an IPv4 /24 and an IPv6 /64 on each end
/// (`prefix4` like "10.77.1", `prefix6` like "fd77:1"): `.1`/`::1` on `a`, `.2`/`::2` on `b`.
/// Returns the interface names (a side, b side).
pub fn veth(a: &Netns, b: &Netns, prefix4: &str, prefix6: &str) -> (String, String) {
    let n = unique();
    let (ia, ib) = (
        format!("eta{}x{n}", std::process::id() % 100_000),
        format!("etb{}x{n}", std::process::id() % 100_000),
    );
    a.ip(&[
        "link", "add", &ia, "type", "veth", "peer", "name", &ib, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", &format!("{prefix4}.1/24"), "dev", &ia]);
    a.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{prefix6}::1/64"),
        "dev",
        &ia,
        "nodad",
    ]);
    a.ip(&["link", "set", &ia, "up"]);
    b.ip(&["addr", "add", &format!("{prefix4}.2/24"), "dev", &ib]);
    b.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{prefix6}::2/64"),
        "dev",
        &ib,
        "nodad",
    ]);
    b.ip(&["link", "set", &ib, "up"]);
    (ia, ib)
}

/// A dummy interface in `ns` carrying `addrs` (CIDR strings): test hosts that exist only there.
/// On kernels without the dummy driver the addresses go on the namespace's loopback, where
/// they are just as local (and just as private to the namespace).
pub fn dummy(ns: &Netns, addrs: &[&str]) {
    let name = format!("etd{}", unique());
    let added = Command::new("ip")
        .args(["-n", &ns.name, "link", "add", &name, "type", "dummy"])
        .output()
        .is_ok_and(|o| o.status.success());
    let name = if added { name } else { "lo".to_owned() };
    for a in addrs {
        if a.contains(':') {
            ns.ip(&["-6", "addr", "add", a, "dev", &name, "nodad"]);
        } else {
            ns.ip(&["addr", "add", a, "dev", &name]);
        }
    }
    ns.ip(&["link", "set", &name, "up"]);
}
