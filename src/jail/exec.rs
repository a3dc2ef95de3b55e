//! The jail's child side (`egress-edge __jail-exec`): enters the jail's network namespace,
//! gives itself a private mount namespace in which the trust-store bundle and `resolv.conf`
//! are bind-mounted over the system's (the host's files stay untouched), sets the CA and proxy
//! variables, drops privileges so the command cannot leave the namespace, and execs the
//! command.
//!
//! It runs before any runtime or thread starts (namespace changes apply to the calling thread
//! only). It does not create or remove anything: the parent (`jail`) owns the namespace and
//! the private directory.

use std::ffi::{CString, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Gid, Uid, User};

use crate::cli::JailExecArgs;

/// Where distributions keep the system CA bundle; the jail's bundle covers each that exists.
pub const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// File names in the jail's private directory.
pub const BUNDLE: &str = "ca-bundle.pem";
pub const CA: &str = "ca.pem";
pub const RESOLV: &str = "resolv.conf";

/// Why the child could not start the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("{0}")]
    Other(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ExecError {
    let what = what.into();
    move |source| ExecError::Sys { what, source }
}

/// Sets the jail up and execs the command; returns only on failure, with the exit code
/// (127: the command could not be run, 126: it is not executable, 125: the jail's own setup).
pub fn run(args: &JailExecArgs) -> u8 {
    match prepare(args) {
        Ok(mut cmd) => {
            let err = cmd.exec();
            let program = args
                .command
                .first()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            eprintln!("egress-edge jail: {program}: {err}");
            if err.kind() == std::io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            }
        }
        Err(e) => {
            eprintln!("egress-edge jail: {e}");
            125
        }
    }
}

fn prepare(args: &JailExecArgs) -> Result<std::process::Command, ExecError> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| ExecError::Other("no command given".into()))?;
    enter_network(&args.netns)?;
    private_mounts(&args.dir)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    set_env(&mut cmd, &args.dir, &args.proxy);
    drop_privileges(&mut cmd, args.user.as_deref())?;
    Ok(cmd)
}

fn enter_network(netns: &str) -> Result<(), ExecError> {
    let path = format!("/run/netns/{netns}");
    let fd = std::fs::File::open(&path).map_err(|e| ExecError::Other(format!("{path}: {e}")))?;
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(sys(format!("entering {path}")))
}

fn private_mounts(dir: &Path) -> Result<(), ExecError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("a private mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("making / a slave mount"))?;
    let bundle = dir.join(BUNDLE);
    for target in SYSTEM_BUNDLES {
        if Path::new(target).exists() {
            bind_ro(&bundle, Path::new(target))?;
        }
    }
    let resolv = Path::new("/etc/resolv.conf");
    if resolv.exists() {
        bind_ro(&dir.join(RESOLV), resolv)?;
    } else {
        eprintln!(
            "egress-edge jail: note: /etc/resolv.conf does not exist; name resolution in the jail uses the guest resolver only if the command is told so"
        );
    }
    Ok(())
}

/// Bind-mounts `source` over `target`, read-only.
fn bind_ro(source: &Path, target: &Path) -> Result<(), ExecError> {
    let what = || {
        format!(
            "bind-mounting {} over {}",
            source.display(),
            target.display()
        )
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(what()))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys(what()))
}

fn set_env(cmd: &mut std::process::Command, dir: &Path, proxy: &str) {
    let bundle = dir.join(BUNDLE);
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
    ] {
        cmd.env(var, &bundle);
    }
    cmd.env("NODE_EXTRA_CA_CERTS", dir.join(CA));
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        cmd.env(var, proxy);
    }
    cmd.env("NO_PROXY", "").env("no_proxy", "");
}

/// Who the command runs as.
struct Target {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    user: Option<User>,
}

fn resolve_user(spec: &str) -> Result<Target, ExecError> {
    let lookup = |r: nix::Result<Option<User>>| r.map_err(sys(format!("looking up user {spec}")));
    let user = match spec.parse::<u32>() {
        Ok(uid) => lookup(User::from_uid(Uid::from_raw(uid)))?,
        Err(_) => Some(
            lookup(User::from_name(spec))?
                .ok_or_else(|| ExecError::Other(format!("--user {spec}: no such user")))?,
        ),
    };
    Ok(match user {
        Some(u) => target_of(u)?,
        None => {
            // A uid with no passwd entry: its own group, no supplementary groups.
            let uid = spec.parse::<u32>().unwrap_or(u32::MAX);
            Target {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(uid),
                groups: Vec::new(),
                user: None,
            }
        }
    })
}

fn target_of(u: User) -> Result<Target, ExecError> {
    let name = CString::new(u.name.clone())
        .map_err(|_| ExecError::Other(format!("user name {:?}", u.name)))?;
    let groups = nix::unistd::getgrouplist(&name, u.gid).unwrap_or_else(|_| vec![u.gid]);
    Ok(Target {
        uid: u.uid,
        gid: u.gid,
        groups,
        user: Some(u),
    })
}

/// The user `sudo` was run by, if any.
fn sudo_user() -> Result<Option<Target>, ExecError> {
    let Some(uid) = std::env::var("SUDO_UID")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return Ok(None);
    };
    let gid = std::env::var("SUDO_GID")
        .ok()
        .and_then(|s| s.parse::<u32>().ok());
    let user = User::from_uid(Uid::from_raw(uid)).map_err(sys("looking up SUDO_UID"))?;
    Ok(Some(match user {
        Some(u) => {
            let mut t = target_of(u)?;
            if let Some(g) = gid {
                t.gid = Gid::from_raw(g);
            }
            t
        }
        None => Target {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid.unwrap_or(uid)),
            groups: Vec::new(),
            user: None,
        },
    }))
}

fn drop_privileges(cmd: &mut std::process::Command, user: Option<&str>) -> Result<(), ExecError> {
    let target = match user {
        Some(spec) => Some(resolve_user(spec)?),
        None => sudo_user()?,
    };
    // No capability can come back through exec (setuid binaries included) once the bounding
    // set is empty; the command cannot setns out, remount or change the firewall.
    caps::clear(None, caps::CapSet::Bounding)
        .map_err(|e| ExecError::Other(format!("clearing the capability bounding set: {e}")))?;
    if let Some(t) = &target {
        nix::unistd::setgroups(&t.groups).map_err(sys("setgroups"))?;
        nix::unistd::setgid(t.gid).map_err(sys(format!("setgid {}", t.gid)))?;
        nix::unistd::setuid(t.uid).map_err(sys(format!("setuid {}", t.uid)))?;
        if let Some(u) = &t.user {
            cmd.env("HOME", &u.dir)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
    }
    if nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "egress-edge jail: note: running the command as root without capabilities (no --user and no SUDO_UID)"
        );
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set)
            .map_err(|e| ExecError::Other(format!("clearing capabilities: {e}")))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    Ok(())
}

/// The arguments `jail` passes to `__jail-exec`.
pub fn helper_args(netns: &str, dir: &Path, proxy: &str, user: Option<&str>) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "__jail-exec".into(),
        "--netns".into(),
        netns.into(),
        "--dir".into(),
        dir.into(),
        "--proxy".into(),
        proxy.into(),
    ];
    if let Some(u) = user {
        v.push("--user".into());
        v.push(u.into());
    }
    v.push("--".into());
    v
}
