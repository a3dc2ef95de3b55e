//! install-ca.sh against fake Debian, Alpine and RHEL roots (no system tools are run: a
//! non-/ root is treated as an image build and the bundle is patched directly).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_ca::{CaOptions, DeploymentCa};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install-ca.sh")
}

fn shell() -> String {
    // EGRESS_CA_TEST_SH picks another shell, e.g. "busybox sh" for Alpine's ash.
    if let Ok(sh) = std::env::var("EGRESS_CA_TEST_SH") {
        return sh;
    }
    // dash is the strictest POSIX sh commonly at hand; fall back to whatever sh is.
    if Path::new("/usr/bin/dash").exists() || Path::new("/bin/dash").exists() {
        "dash".into()
    } else {
        "sh".into()
    }
}

fn run(args: &[&str]) -> Output {
    let shell = shell();
    let mut words = shell.split_whitespace();
    Command::new(words.next().unwrap_or("sh"))
        .args(words)
        .arg(script())
        .args(args)
        .output()
        .unwrap()
}

struct Layout {
    marker: &'static str,
    bundle: &'static str,
    anchor: &'static str,
}

const DEBIAN: Layout = Layout {
    marker: "etc/debian_version",
    bundle: "/etc/ssl/certs/ca-certificates.crt",
    anchor: "/usr/local/share/ca-certificates/egress-edge-ca.crt",
};
const ALPINE: Layout = Layout {
    marker: "etc/alpine-release",
    bundle: "/etc/ssl/certs/ca-certificates.crt",
    anchor: "/usr/local/share/ca-certificates/egress-edge-ca.crt",
};
const RHEL: Layout = Layout {
    marker: "etc/redhat-release",
    bundle: "/etc/pki/tls/certs/ca-bundle.crt",
    anchor: "/etc/pki/ca-trust/source/anchors/egress-edge-ca.pem",
};

const EXISTING: &str =
    "# distro bundle\n-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----";

fn fake_root(layout: &Layout) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let marker = root.path().join(layout.marker);
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "1\n").unwrap();
    let bundle = root.path().join(&layout.bundle[1..]);
    std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    // No trailing newline on purpose: appending must still start on a fresh line.
    std::fs::write(&bundle, EXISTING).unwrap();
    root
}

fn ca_pem_file(dir: &Path) -> (PathBuf, String) {
    let pem = DeploymentCa::generate(&CaOptions::new("installer"))
        .unwrap()
        .cert_pem()
        .to_owned();
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pem).unwrap();
    (path, pem)
}

fn check_layout(layout: &Layout) {
    let root = fake_root(layout);
    let work = tempfile::tempdir().unwrap();
    let (ca_path, pem) = ca_pem_file(work.path());
    for _ in 0..2 {
        let out = run(&[
            "--root",
            root.path().to_str().unwrap(),
            ca_path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let anchor = std::fs::read_to_string(root.path().join(&layout.anchor[1..])).unwrap();
    assert_eq!(anchor, pem);

    let bundle = std::fs::read_to_string(root.path().join(&layout.bundle[1..])).unwrap();
    assert_eq!(
        bundle.matches(pem.as_str()).count(),
        1,
        "CA must be in the bundle exactly once"
    );
    assert!(
        bundle.starts_with(EXISTING),
        "existing bundle content is kept"
    );
    assert_eq!(
        bundle.matches("-----BEGIN CERTIFICATE-----\n").count(),
        2,
        "{bundle}"
    );

    let env = std::fs::read_to_string(root.path().join("etc/egress-edge/ca.env")).unwrap();
    let exports: Vec<&str> = env.lines().filter(|l| !l.starts_with('#')).collect();
    let b = layout.bundle;
    let expected = [
        format!("export SSL_CERT_FILE={b}"),
        format!("export REQUESTS_CA_BUNDLE={b}"),
        format!("export CURL_CA_BUNDLE={b}"),
        format!("export NODE_EXTRA_CA_CERTS={}", layout.anchor),
        format!("export GIT_SSL_CAINFO={b}"),
        format!("export PIP_CERT={b}"),
    ];
    assert_eq!(exports, expected);
}

#[test]
fn debian_layout() {
    check_layout(&DEBIAN);
}

#[test]
fn alpine_layout() {
    check_layout(&ALPINE);
}

#[test]
fn rhel_layout() {
    check_layout(&RHEL);
}

#[test]
fn custom_env_file_and_name() {
    let root = fake_root(&DEBIAN);
    let work = tempfile::tempdir().unwrap();
    let (ca_path, _) = ca_pem_file(work.path());
    let env_path = work.path().join("out/proxy.env");
    let out = run(&[
        "--root",
        root.path().to_str().unwrap(),
        "--env-file",
        env_path.to_str().unwrap(),
        "--name",
        "corp-proxy",
        ca_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        root.path()
            .join("usr/local/share/ca-certificates/corp-proxy.crt")
            .is_file()
    );
    let env = std::fs::read_to_string(env_path).unwrap();
    assert!(
        env.contains(
            "export NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/corp-proxy.crt\n"
        )
    );
}

#[test]
fn private_key_input_is_refused() {
    let root = fake_root(&DEBIAN);
    let work = tempfile::tempdir().unwrap();
    let (_, pem) = ca_pem_file(work.path());
    let bad = work.path().join("both.pem");
    std::fs::write(
        &bad,
        format!("{pem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let out = run(&[
        "--root",
        root.path().to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PRIVATE KEY"));
    assert!(
        !root.path().join("usr/local/share/ca-certificates").exists(),
        "nothing installed"
    );
    let bundle = std::fs::read_to_string(root.path().join(&DEBIAN.bundle[1..])).unwrap();
    assert_eq!(bundle, EXISTING);
}

#[test]
fn non_pem_input_and_unknown_layout_are_refused() {
    let root = fake_root(&DEBIAN);
    let work = tempfile::tempdir().unwrap();
    let junk = work.path().join("junk.der");
    std::fs::write(&junk, [0x30u8, 0x82, 0x01, 0x00]).unwrap();
    let out = run(&[
        "--root",
        root.path().to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a PEM CERTIFICATE"));

    let empty_root = tempfile::tempdir().unwrap();
    let (ca_path, _) = ca_pem_file(work.path());
    let out = run(&[
        "--root",
        empty_root.path().to_str().unwrap(),
        ca_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown trust-store layout"));
}

// --- symlinks inside the guest root -------------------------------------------------------
//
// Image roots are full of absolute symlinks (RHEL: /etc/pki/tls/certs/ca-bundle.crt ->
// /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem). Inside the guest they mean ROOT/target;
// followed from the host they lead to the host's own files. The installer must resolve them the
// way the guest would and never write outside the root. Each test points the links at a second
// temp dir ("outside") that is where the host would resolve them, snapshots it and the host's
// own trust store, and checks both are untouched.

/// What the host's trust store looked like, to prove the installer never touched it.
const HOST_TRUST_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/certs",
    "/etc/pki",
    "/usr/local/share/ca-certificates",
];

const SENTINEL: &str = "# outside the guest root: must never change\n\
    -----BEGIN CERTIFICATE-----\nT1VUU0lERQ==\n-----END CERTIFICATE-----\n";

/// Every entry under `path` (not following links): file contents hashed, link targets.
fn snapshot(path: &Path, out: &mut std::collections::BTreeMap<PathBuf, String>) {
    let entry = match std::fs::symlink_metadata(path) {
        Err(e) => format!("error {:?}", e.kind()),
        Ok(m) if m.file_type().is_symlink() => {
            format!("link -> {:?}", std::fs::read_link(path).unwrap())
        }
        Ok(m) if m.is_dir() => {
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries {
                    snapshot(&e.unwrap().path(), out);
                }
            }
            "dir".to_owned()
        }
        Ok(m) => match std::fs::read(path) {
            Ok(bytes) => format!(
                "file {} bytes sha256 {:02x?} mode {:o}",
                bytes.len(),
                ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
                std::os::unix::fs::PermissionsExt::mode(&m.permissions())
            ),
            Err(e) => format!("unreadable {:?}", e.kind()),
        },
    };
    out.insert(path.to_owned(), entry);
}

fn snapshot_all(paths: &[&Path]) -> std::collections::BTreeMap<PathBuf, String> {
    let mut out = std::collections::BTreeMap::new();
    for p in paths {
        snapshot(p, &mut out);
    }
    out
}

/// A guest root with only a layout marker, and an "outside" dir holding a sentinel bundle
/// (`bundle.pem`, `certs/ca-certificates.crt`, `ssl/certs/ca-certificates.crt`) and empty
/// `anchors/` and `egress/` dirs: where the links below lead when followed on the host.
struct Guarded {
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
    /// Holds the CA PEM given to every run.
    work: tempfile::TempDir,
}

impl Guarded {
    fn new(marker: &str) -> Guarded {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join(marker), "1\n");
        let outside = tempfile::tempdir().unwrap();
        for f in [
            "bundle.pem",
            "certs/ca-certificates.crt",
            "ssl/certs/ca-certificates.crt",
        ] {
            write(&outside.path().join(f), SENTINEL);
        }
        for d in ["anchors", "egress"] {
            std::fs::create_dir_all(outside.path().join(d)).unwrap();
        }
        let work = tempfile::tempdir().unwrap();
        ca_pem_file(work.path());
        Guarded {
            root,
            outside,
            work,
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn outside(&self) -> &Path {
        self.outside.path()
    }

    /// The host path of the guest path `guest` (absolute, as seen inside the guest).
    fn at(&self, guest: impl AsRef<Path>) -> PathBuf {
        self.root().join(guest.as_ref().strip_prefix("/").unwrap())
    }

    /// The outside dir's path as a guest path: where an absolute link to it lands in the guest.
    fn outside_in_guest(&self, rel: &str) -> PathBuf {
        self.at(self.outside().join(rel))
    }

    /// Creates the symlink `guest` (inside the root) pointing at `target`, verbatim.
    fn link(&self, guest: &str, target: impl AsRef<Path>) {
        let at = self.at(guest);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, at).unwrap();
    }

    /// Runs the installer on the root; asserts that neither the outside dir nor the host's
    /// trust store changed, whatever the outcome.
    fn install(&self, extra: &[&str]) -> Output {
        let ca_path = self.work.path().join("ca.pem");
        let host: Vec<&Path> = HOST_TRUST_PATHS.iter().map(Path::new).collect();
        let (host_before, outside_before) = (snapshot_all(&host), snapshot_all(&[self.outside()]));
        let mut args = vec!["--root", self.root().to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(ca_path.to_str().unwrap());
        let out = run(&args);
        assert_eq!(
            snapshot_all(&[self.outside()]),
            outside_before,
            "the installer wrote outside the guest root\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            snapshot_all(&host),
            host_before,
            "the installer changed the host's own trust store"
        );
        assert_eq!(read(&self.outside().join("bundle.pem")), SENTINEL);
        out
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_installed(out: &Output, anchor: &Path, bundle: &Path) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let anchor = read(anchor);
    assert!(
        anchor.starts_with("-----BEGIN CERTIFICATE-----\n"),
        "{anchor}"
    );
    let bundle = read(bundle);
    assert!(bundle.starts_with(EXISTING), "{bundle}");
    assert_eq!(bundle.matches(anchor.as_str()).count(), 1, "{bundle}");
}

fn assert_refused(out: &Output, root: &Path, wanted: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(wanted), "{stderr}");
    // Refused before anything was written, not halfway through.
    assert!(
        !root.join("usr/local/share/ca-certificates").exists(),
        "anchor written before the refusal"
    );
    assert!(
        !root.join("etc/egress-edge").exists(),
        "env file written despite the refusal"
    );
}

#[test]
fn debian_absolute_links_resolve_inside_the_root() {
    let g = Guarded::new(DEBIAN.marker);
    // Followed on the host, these lead into the outside dir.
    g.link(DEBIAN.bundle, g.outside().join("bundle.pem"));
    g.link(
        "/usr/local/share/ca-certificates",
        g.outside().join("anchors"),
    );
    // Inside the guest they lead to ROOT/<outside>/...; only the bundle exists there yet.
    write(&g.outside_in_guest("bundle.pem"), EXISTING);

    let out = g.install(&[]);
    assert_installed(
        &out,
        &g.outside_in_guest("anchors/egress-edge-ca.crt"),
        &g.outside_in_guest("bundle.pem"),
    );
    let env = read(&g.at("/etc/egress-edge/ca.env"));
    assert!(env.contains(&format!("export SSL_CERT_FILE={}\n", DEBIAN.bundle)));
    assert!(env.contains(&format!("export NODE_EXTRA_CA_CERTS={}\n", DEBIAN.anchor)));
}

#[test]
fn alpine_absolute_directory_links_resolve_inside_the_root() {
    let g = Guarded::new(ALPINE.marker);
    g.link("/etc/ssl", g.outside().join("ssl"));
    g.link("/etc/egress-edge", g.outside().join("egress"));
    write(
        &g.outside_in_guest("ssl/certs/ca-certificates.crt"),
        EXISTING,
    );

    let out = g.install(&[]);
    assert_installed(
        &out,
        &g.at(ALPINE.anchor),
        &g.outside_in_guest("ssl/certs/ca-certificates.crt"),
    );
    assert!(read(&g.outside_in_guest("egress/ca.env")).contains("SSL_CERT_FILE="));

    // An --env-file given inside the root is a guest path too.
    let env_in_root = g.root().join("etc/egress-edge/other.env");
    let out = g.install(&["--env-file", env_in_root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(read(&g.outside_in_guest("egress/other.env")).contains("SSL_CERT_FILE="));
    let bundle = read(&g.outside_in_guest("ssl/certs/ca-certificates.crt"));
    assert_eq!(
        bundle.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "installed once: {bundle}"
    );
}

#[test]
fn rhel_absolute_links_resolve_inside_the_root() {
    let g = Guarded::new(RHEL.marker);
    // The real RHEL layout: the compat bundle is an absolute link into the extracted store.
    let extracted = "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem";
    g.link(RHEL.bundle, extracted);
    write(&g.at(extracted), EXISTING);
    // And an anchors dir that, followed on the host, lands outside.
    g.link(
        "/etc/pki/ca-trust/source/anchors",
        g.outside().join("anchors"),
    );

    let out = g.install(&[]);
    assert_installed(
        &out,
        &g.outside_in_guest("anchors/egress-edge-ca.pem"),
        &g.at(extracted),
    );
    let env = read(&g.at("/etc/egress-edge/ca.env"));
    assert!(env.contains(&format!("export SSL_CERT_FILE={}\n", RHEL.bundle)));
}

#[test]
fn rhel_chained_links_into_the_outside_dir_resolve_inside_the_root() {
    let g = Guarded::new(RHEL.marker);
    let extracted = "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem";
    g.link(RHEL.bundle, extracted);
    g.link(extracted, g.outside().join("bundle.pem"));
    write(&g.outside_in_guest("bundle.pem"), EXISTING);

    let out = g.install(&[]);
    assert_installed(&out, &g.at(RHEL.anchor), &g.outside_in_guest("bundle.pem"));
}

#[test]
fn relative_links_within_the_root_are_followed() {
    let g = Guarded::new(DEBIAN.marker);
    g.link(DEBIAN.bundle, "../../../var/lib/distro/./bundle.pem");
    write(&g.at("/var/lib/distro/bundle.pem"), EXISTING);
    let out = g.install(&[]);
    assert_installed(
        &out,
        &g.at(DEBIAN.anchor),
        &g.at("/var/lib/distro/bundle.pem"),
    );
}

#[test]
fn links_leading_above_the_root_are_refused() {
    let up = "../".repeat(40);
    let outside_rel = |g: &Guarded, rel: &str| {
        format!(
            "{up}{}",
            g.outside()
                .join(rel)
                .to_str()
                .unwrap()
                .trim_start_matches('/')
        )
    };
    // Relative link climbing out of the root: on the host it lands on the outside bundle.
    let g = Guarded::new(DEBIAN.marker);
    g.link(DEBIAN.bundle, outside_rel(&g, "bundle.pem"));
    assert_refused(&g.install(&[]), g.root(), "above the guest root");

    // Absolute link that climbs with '..' before descending.
    let g = Guarded::new(DEBIAN.marker);
    g.link(
        DEBIAN.bundle,
        format!("/..{}", g.outside().join("bundle.pem").display()),
    );
    assert_refused(&g.install(&[]), g.root(), "above the guest root");

    // A directory link doing the same, for the anchor's directory.
    let g = Guarded::new(DEBIAN.marker);
    write(&g.at(DEBIAN.bundle), EXISTING);
    g.link("/usr/local/share", outside_rel(&g, "anchors"));
    assert_refused(&g.install(&[]), g.root(), "above the guest root");
    assert_eq!(read(&g.at(DEBIAN.bundle)), EXISTING);

    // A directory link above the root, then the rest of the path.
    let g = Guarded::new(ALPINE.marker);
    g.link(
        "/etc/ssl",
        format!(
            "{up}{}",
            g.outside().to_str().unwrap().trim_start_matches('/')
        ),
    );
    assert_refused(&g.install(&[]), g.root(), "above the guest root");
    assert_eq!(
        read(&g.outside().join("certs/ca-certificates.crt")),
        SENTINEL
    );
}

#[test]
fn symlink_loops_are_refused() {
    let g = Guarded::new(DEBIAN.marker);
    g.link(DEBIAN.bundle, "loop-a");
    g.link("/etc/ssl/certs/loop-a", "loop-b");
    g.link("/etc/ssl/certs/loop-b", "ca-certificates.crt");
    assert_refused(
        &g.install(&[]),
        g.root(),
        "too many levels of symbolic links",
    );
}
