//! The jail's network, made with iproute2 and nftables and undone in reverse: a network
//! namespace, a veth pair (host side in the current namespace, guest side in the new one),
//! an IPv4 /30 from 10.233.0.0/16 and an IPv6 /64 from fd65:6567::/48 derived from the pid,
//! default routes in the guest via the host side, and the nftables table.
//!
//! Every created thing is recorded in a [`Teardown`], which removes them in reverse order when
//! asked or when dropped (an error, a panic). This module does not bind listeners, start the
//! proxy or run the command.

use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::JailError;

/// The programs the jail runs, found once.
#[derive(Clone, Debug)]
pub struct Tools {
    pub ip: PathBuf,
    pub nft: PathBuf,
}

impl Tools {
    /// `ip` and `nft` from `PATH`, or from the sbin directories `PATH` often lacks.
    pub fn find() -> Result<Tools, JailError> {
        Ok(Tools {
            ip: find_tool("ip", "iproute2")?,
            nft: find_tool("nft", "nftables")?,
        })
    }
}

fn find_tool(name: &'static str, package: &'static str) -> Result<PathBuf, JailError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or(JailError::MissingTool { name, package })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The names and addresses of one jail, all derived from the jail's pid.
#[derive(Clone, Debug)]
pub struct Plan {
    pub netns: String,
    pub host_if: String,
    pub guest_if: String,
    pub table: String,
    pub host_v4: Ipv4Addr,
    pub guest_v4: Ipv4Addr,
    /// None when IPv6 is disabled on this host.
    pub v6: Option<(Ipv6Addr, Ipv6Addr)>,
}

/// /30 subnets in 10.233.0.0/16.
const SLOTS: u32 = 16384;

impl Plan {
    /// Names from `pid`; the address slot is the pid's unless another interface already holds
    /// an address in that /30, then the next free one.
    pub fn for_pid(tools: &Tools, pid: u32) -> Plan {
        let used = used_slots(tools);
        let slot = (0..SLOTS)
            .map(|i| (pid + i) % SLOTS)
            .find(|s| !used.contains(s))
            .unwrap_or(pid % SLOTS);
        let base = u32::from(Ipv4Addr::new(10, 233, 0, 0)) + slot * 4;
        let v6_enabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .is_ok_and(|s| s.trim() == "0");
        // `slot` < 16384 fits a u16 segment.
        let seg = u16::try_from(slot).unwrap_or(0);
        let v6 = v6_enabled.then(|| {
            (
                Ipv6Addr::new(0xfd65, 0x6567, 0, seg, 0, 0, 0, 1),
                Ipv6Addr::new(0xfd65, 0x6567, 0, seg, 0, 0, 0, 2),
            )
        });
        Plan {
            netns: format!("ee-{pid}"),
            host_if: format!("eeh{pid}"),
            guest_if: format!("eeg{pid}"),
            table: format!("egress_edge_jail_{pid}"),
            host_v4: Ipv4Addr::from(base + 1),
            guest_v4: Ipv4Addr::from(base + 2),
            v6,
        }
    }
}

/// The 10.233.0.0/16 /30 slots some interface of this namespace already uses.
fn used_slots(tools: &Tools) -> HashSet<u32> {
    let out = Command::new(&tools.ip)
        .args(["-o", "-4", "addr", "show"])
        .stderr(Stdio::null())
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| a.octets()[..2] == [10, 233])
        .map(|a| (u32::from(a) - u32::from(Ipv4Addr::new(10, 233, 0, 0))) / 4)
        .collect()
}

/// One thing the jail created, undone by [`Teardown`].
#[derive(Debug)]
enum Created {
    Netns(String),
    Link(String),
    Table(String),
    Dir(PathBuf),
}

/// What the jail created so far, undone in reverse order by [`Teardown::run`] or on drop.
#[derive(Debug)]
pub struct Teardown {
    tools: Tools,
    created: Vec<Created>,
}

impl Teardown {
    pub fn new(tools: Tools) -> Teardown {
        Teardown {
            tools,
            created: Vec::new(),
        }
    }

    /// Records the private directory, removed at teardown.
    pub fn dir(&mut self, dir: PathBuf) {
        self.created.push(Created::Dir(dir));
    }

    /// Undoes everything recorded, newest first; returns what could not be undone.
    pub fn run(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some(c) = self.created.pop() {
            if let Err(e) = self.undo(&c) {
                failures.push(e);
            }
        }
        failures
    }

    fn undo(&self, c: &Created) -> Result<(), String> {
        match c {
            Created::Dir(d) => std::fs::remove_dir_all(d)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| format!("removing {}: {e}", d.display())),
            Created::Table(t) => quiet(&self.tools.nft, &["delete", "table", "inet", t], None)
                .map_err(|e| format!("deleting nftables table {t}: {e}")),
            Created::Link(l) => {
                // Deleting one end removes the pair; gone already when the netns went first.
                match quiet(&self.tools.ip, &["link", "del", l], None) {
                    Ok(()) => Ok(()),
                    Err(_) if !link_exists(&self.tools, l) => Ok(()),
                    Err(e) => Err(format!("deleting link {l}: {e}")),
                }
            }
            Created::Netns(n) => {
                kill_members(&self.tools, n);
                quiet(&self.tools.ip, &["netns", "del", n], None)
                    .map_err(|e| format!("deleting network namespace {n}: {e}"))
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for f in self.run() {
            eprintln!("egress-edge jail: teardown: {f}");
        }
    }
}

fn link_exists(tools: &Tools, name: &str) -> bool {
    quiet(&tools.ip, &["link", "show", "dev", name], None).is_ok()
}

/// Processes the command left behind in the namespace (daemons it started) are ended, so the
/// namespace does not outlive the jail.
fn kill_members(tools: &Tools, netns: &str) {
    let Ok(out) = Command::new(&tools.ip)
        .args(["netns", "pids", netns])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `program args` (stdin from `input`), returning its stderr as the error when it fails.
fn quiet(program: &Path, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(if stderr.is_empty() {
            format!("{} exited with {}", program.display(), out.status)
        } else {
            stderr
        })
    }
}

/// One creation step: `step` names it in the error.
fn step(program: &Path, step: &str, args: &[&str], input: Option<&str>) -> Result<(), JailError> {
    quiet(program, args, input).map_err(|stderr| JailError::Step {
        step: step.to_owned(),
        stderr,
    })
}

/// Creates the namespace, the veth pair, addresses and routes, recording each in `td`.
pub fn create(tools: &Tools, plan: &Plan, td: &mut Teardown) -> Result<(), JailError> {
    let ip = &tools.ip;
    let (ns, h, g) = (
        plan.netns.as_str(),
        plan.host_if.as_str(),
        plan.guest_if.as_str(),
    );
    step(
        ip,
        "creating the network namespace",
        &["netns", "add", ns],
        None,
    )?;
    td.created.push(Created::Netns(ns.to_owned()));
    step(
        ip,
        "creating the veth pair",
        &[
            "link", "add", h, "type", "veth", "peer", "name", g, "netns", ns,
        ],
        None,
    )?;
    td.created.push(Created::Link(h.to_owned()));
    let host4 = format!("{}/30", plan.host_v4);
    let guest4 = format!("{}/30", plan.guest_v4);
    let host_v4 = plan.host_v4.to_string();
    step(
        ip,
        "addressing the host side",
        &["addr", "add", &host4, "dev", h],
        None,
    )?;
    step(
        ip,
        "addressing the guest side",
        &["-n", ns, "addr", "add", &guest4, "dev", g],
        None,
    )?;
    if let Some((host6, guest6)) = plan.v6 {
        let (h6, g6) = (format!("{host6}/64"), format!("{guest6}/64"));
        step(
            ip,
            "addressing the host side (IPv6)",
            &["-6", "addr", "add", &h6, "dev", h, "nodad"],
            None,
        )?;
        step(
            ip,
            "addressing the guest side (IPv6)",
            &["-n", ns, "-6", "addr", "add", &g6, "dev", g, "nodad"],
            None,
        )?;
    }
    step(
        ip,
        "bringing the host side up",
        &["link", "set", h, "up"],
        None,
    )?;
    step(
        ip,
        "bringing the guest loopback up",
        &["-n", ns, "link", "set", "lo", "up"],
        None,
    )?;
    step(
        ip,
        "bringing the guest side up",
        &["-n", ns, "link", "set", g, "up"],
        None,
    )?;
    step(
        ip,
        "adding the guest's default route",
        &["-n", ns, "route", "add", "default", "via", &host_v4],
        None,
    )?;
    if let Some((host6, _)) = plan.v6 {
        let via = host6.to_string();
        step(
            ip,
            "adding the guest's IPv6 default route",
            &["-n", ns, "-6", "route", "add", "default", "via", &via],
            None,
        )?;
    }
    Ok(())
}

/// Loads the ruleset (`nft -f -`) and records its table.
pub fn load_ruleset(
    tools: &Tools,
    table: &str,
    ruleset: &str,
    td: &mut Teardown,
) -> Result<(), JailError> {
    step(
        &tools.nft,
        "loading the nftables ruleset",
        &["-f", "-"],
        Some(ruleset),
    )?;
    td.created.push(Created::Table(table.to_owned()));
    Ok(())
}
