//! Confining a process or a sandbox.
//!
//! - [`nft`]: the nftables ruleset that sends a sandbox's traffic to the transparent listener
//!   and the guest resolver (`egress-edge nft-rules` prints it, see [`nft_rules`]).
//! - `egress-edge jail -- CMD` ([`run`]): checks privileges, creates a network namespace with a
//!   veth to this process ([`netns`]), binds a transparent listener, a guest resolver and an
//!   explicit proxy listener on the veth's host side, loads the ruleset, starts the proxy
//!   in-process, prepares a private directory with the trust-store bundle and a `resolv.conf`,
//!   runs CMD through `__jail-exec` ([`exec`]), forwards SIGTERM to it, and tears everything
//!   down on every exit path, returning CMD's status.
//!
//! This module does not implement the transparent listener or the resolver (the app serves
//! them); it only gives them sockets and traffic.

pub mod exec;
pub mod netns;
pub mod nft;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::app::{App, AppError, BuildOptions, DnsListener, Listeners};
use crate::config::Config;
use netns::{Plan, Teardown, Tools};
use nft::{Mode, Ruleset};

/// Why the jail or `nft-rules` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "jail needs CAP_NET_ADMIN and CAP_SYS_ADMIN to create a network namespace and mount a trust store: run as root or with CAP_NET_ADMIN and CAP_SYS_ADMIN (missing: {0})"
    )]
    Privileges(String),
    #[error("jail needs `{name}` (package {package}), which was not found in PATH")]
    MissingTool {
        name: &'static str,
        package: &'static str,
    },
    #[error("{step}: {stderr}")]
    Step { step: String, stderr: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl JailError {
    /// True for usage, privilege and configuration problems (exit code 1), false for failures
    /// of the environment while setting up (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            JailError::Privileges(_) | JailError::MissingTool { .. } | JailError::Usage(_) => true,
            JailError::App(e) => !e.is_runtime(),
            JailError::Step { .. } | JailError::Io { .. } => false,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

/// What `nft-rules` is asked for.
#[derive(Debug, Clone)]
pub struct NftRulesRequest {
    pub interface: Option<String>,
    pub sidecar_uid: Option<u32>,
    pub table: String,
}

/// `egress-edge nft-rules`: the ruleset for the config's transparent, DNS and proxy ports.
pub fn nft_rules(config: &Config, req: &NftRulesRequest) -> Result<String, JailError> {
    let transparent = config.proxy.transparent.ok_or_else(|| {
        JailError::Usage(
            "nft-rules: the config sets no proxy.transparent: the ruleset redirects TCP to that listener's port"
                .into(),
        )
    })?;
    let dns = config.dns.as_ref().ok_or_else(|| {
        JailError::Usage(
            "nft-rules: the config sets no dns.listen: the ruleset redirects DNS to the guest resolver's port"
                .into(),
        )
    })?;
    if !nft::valid_name(&req.table) {
        return Err(JailError::Usage(format!(
            "nft-rules: --table {:?}: use letters, digits, `_`, `-` and `.` (at most 64)",
            req.table
        )));
    }
    let mode = match (&req.interface, req.sidecar_uid) {
        (Some(i), None) if nft::valid_name(i) && i.len() < 16 => Mode::Gateway {
            interface: i.clone(),
        },
        (Some(i), None) => {
            return Err(JailError::Usage(format!(
                "nft-rules: --interface {i:?} is not an interface name"
            )));
        }
        (None, Some(uid)) => Mode::Sidecar { proxy_uid: uid },
        _ => {
            return Err(JailError::Usage(
                "nft-rules: give exactly one of --interface IFACE and --sidecar-uid UID".into(),
            ));
        }
    };
    Ok(Ruleset {
        table: req.table.clone(),
        mode,
        transparent_port: transparent.port(),
        dns_port: dns.listen.port(),
        proxy_port: Some(config.proxy.listen.port()),
    }
    .render())
}

/// Checks what the jail needs before anything is created: the capabilities and the tools.
pub fn preflight() -> Result<Tools, JailError> {
    let mut missing = Vec::new();
    for (cap, name) in [
        (caps::Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (caps::Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if !caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false) {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(JailError::Privileges(missing.join(", ")));
    }
    Tools::find()
}

/// What to run in the jail.
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// Run CMD as this user (name or uid); default: `SUDO_UID`, else root without capabilities.
    pub user: Option<String>,
    pub command: Vec<OsString>,
}

/// How long the proxy may drain once the command is done.
const JAIL_GRACE: Duration = Duration::from_secs(1);

/// `egress-edge jail`: returns the command's exit status (128+signal when it was killed).
pub async fn run(mut config: Config, tools: Tools, opts: JailOptions) -> Result<u8, JailError> {
    // Handlers first: from here on SIGINT/SIGTERM/SIGHUP no longer kill this process before
    // its teardown has run.
    let mut signals = Signals::new()?;
    let mut log = config.log.clone();
    if log.level == crate::config::defaults::LOG_LEVEL {
        log.level = "warn".into();
    }
    crate::observe::logging::init(&log);
    config.proxy.shutdown_grace = config.proxy.shutdown_grace.min(JAIL_GRACE);

    let plan = Plan::for_pid(&tools, std::process::id());
    let mut td = Teardown::new(tools.clone());
    netns::create(&tools, &plan, &mut td)?;

    let bound = bind_listeners(&config, &plan).await?;
    let ruleset = Ruleset {
        table: plan.table.clone(),
        mode: Mode::Gateway {
            interface: plan.host_if.clone(),
        },
        transparent_port: bound.transparent_port,
        dns_port: bound.dns_port,
        proxy_port: Some(bound.proxy_port),
    }
    .render();
    netns::load_ruleset(&tools, &plan.table, &ruleset, &mut td)?;

    let app = App::build(config.clone(), bound.listeners, BuildOptions::default()).await?;
    let ca_pem = crate::app::export_ca(&config).await?;
    let dir = PathBuf::from(format!("/run/egress-edge-jail-{}", std::process::id()));
    td.dir(dir.clone());
    prepare_dir(&dir, &ca_pem, &plan)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));

    let status = if let Some(sig) = signals.pending() {
        // Asked to stop while setting up: no command was started.
        128 + sig
    } else {
        let proxy_url = format!("http://{}:{}", plan.host_v4, bound.proxy_port);
        let exe = std::env::current_exe().map_err(io("locating the egress-edge binary"))?;
        let mut child = tokio::process::Command::new(exe)
            .args(exec::helper_args(
                &plan.netns,
                &dir,
                &proxy_url,
                opts.user.as_deref(),
            ))
            .args(&opts.command)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting the command"))?;
        wait_child(&mut child, &mut signals).await?
    };

    for f in td.run() {
        eprintln!("egress-edge jail: teardown: {f}");
    }
    let _ = stop_tx.send(());
    if tokio::time::timeout(JAIL_GRACE * 4, proxy).await.is_err() {
        tracing::warn!("the proxy did not stop in time");
    }
    Ok(status)
}

/// The jail's listeners: what the config names, plus the veth ones.
struct Bound {
    listeners: Listeners,
    transparent_port: u16,
    dns_port: u16,
    proxy_port: u16,
}

/// Attempts at finding a port free on both the IPv4 and the IPv6 address.
const PORT_ATTEMPTS: usize = 16;

async fn bind_listeners(config: &Config, plan: &Plan) -> Result<Bound, JailError> {
    let mut listeners = Listeners::bind(config).await?;
    let v4 = IpAddr::V4(plan.host_v4);
    let v6 = plan.v6.map(|(h, _)| IpAddr::V6(h));
    let (transparent_port, t) = same_port(
        "the jail's transparent listener",
        v4,
        v6,
        TcpListener::bind,
        TcpListener::local_addr,
    )
    .await?;
    let (dns_port, d) = same_port(
        "the jail's guest resolver",
        v4,
        v6,
        DnsListener::bind,
        |d: &DnsListener| d.udp.local_addr(),
    )
    .await?;

    let a4 = SocketAddr::new(v4, 0);
    let explicit = TcpListener::bind(a4)
        .await
        .map_err(bind_err("the jail's proxy listener", a4))?;
    let proxy_port = explicit.local_addr().map_err(io("proxy listener"))?.port();

    listeners.transparent.extend(t);
    listeners.dns.extend(d);
    listeners.extra_proxy.push(explicit);
    Ok(Bound {
        listeners,
        transparent_port,
        dns_port,
        proxy_port,
    })
}

fn bind_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| {
        JailError::App(AppError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
    }
}

/// Binds on the IPv4 address (a port the kernel picks) and, when there is one, on the IPv6
/// address at the same port, so one `redirect to :PORT` serves both families; a port taken on
/// the IPv6 side is retried with another.
async fn same_port<T, B, F>(
    what: &'static str,
    v4: IpAddr,
    v6: Option<IpAddr>,
    bind: B,
    local: impl Fn(&T) -> std::io::Result<SocketAddr>,
) -> Result<(u16, Vec<T>), JailError>
where
    B: Fn(SocketAddr) -> F,
    F: std::future::Future<Output = std::io::Result<T>>,
{
    for _ in 0..PORT_ATTEMPTS {
        let a4 = SocketAddr::new(v4, 0);
        let l4 = bind(a4).await.map_err(bind_err(what, a4))?;
        let port = local(&l4).map_err(io(what))?.port();
        let Some(v6) = v6 else {
            return Ok((port, vec![l4]));
        };
        let a6 = SocketAddr::new(v6, port);
        match bind(a6).await {
            Ok(l6) => return Ok((port, vec![l4, l6])),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(bind_err(what, a6)(e)),
        }
    }
    Err(JailError::Usage(format!(
        "no port free on both veth addresses for {what}"
    )))
}

/// The system bundle the jail's bundle extends: the first that exists.
fn system_bundle() -> Option<&'static str> {
    exec::SYSTEM_BUNDLES
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

/// The private directory: the bundle (system bundle + CA), the CA alone, and `resolv.conf`.
fn prepare_dir(dir: &Path, ca_pem: &str, plan: &Plan) -> Result<(), JailError> {
    // A directory left by a jail that was killed and whose pid came round again.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", dir.display())))?;
    let mut bundle = match system_bundle() {
        Some(p) => std::fs::read_to_string(p).map_err(io(format!("reading {p}")))?,
        None => String::new(),
    };
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    let files = [
        (exec::BUNDLE, bundle),
        (exec::CA, ca_pem.to_owned()),
        (exec::RESOLV, format!("nameserver {}\n", plan.host_v4)),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(io(format!("chmod {}", p.display())))?;
    }
    Ok(())
}

/// The signals the jail handles itself while it runs.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Signals, JailError> {
        let s = |k: SignalKind| signal(k).map_err(io("installing signal handlers"));
        Ok(Signals {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
        })
    }

    /// A signal that arrived already (while setting up), as its number.
    fn pending(&mut self) -> Option<u8> {
        use futures_util::FutureExt;
        if self.term.recv().now_or_never().is_some() {
            return Some(15);
        }
        if self.int.recv().now_or_never().is_some() {
            return Some(2);
        }
        if self.hup.recv().now_or_never().is_some() {
            return Some(1);
        }
        None
    }
}

/// Waits for the command. SIGTERM and SIGHUP are forwarded as SIGTERM. SIGINT from a terminal
/// already reached the command (same process group), so it is only forwarded when stdin is no
/// terminal (a signal sent to the jail alone). A second forwarded signal kills the command.
async fn wait_child(
    child: &mut tokio::process::Child,
    signals: &mut Signals,
) -> Result<u8, JailError> {
    use std::io::IsTerminal;
    let from_terminal = std::io::stdin().is_terminal();
    let mut forwarded = 0;
    loop {
        let forward = tokio::select! {
            status = child.wait() => {
                let status = status.map_err(io("waiting for the command"))?;
                return Ok(exit_code(status));
            }
            _ = signals.term.recv() => true,
            _ = signals.hup.recv() => true,
            _ = signals.int.recv() => !from_terminal,
        };
        if !forward {
            continue;
        }
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            continue;
        };
        let sig = if forwarded == 0 {
            nix::sys::signal::Signal::SIGTERM
        } else {
            nix::sys::signal::Signal::SIGKILL
        };
        forwarded += 1;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + (s & 0x7f)).unwrap_or(255),
        (None, None) => 1,
    }
}
