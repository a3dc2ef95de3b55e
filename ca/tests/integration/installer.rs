//! install-ca.sh against fake Debian, Alpine and RHEL roots (no system tools are run: a
//! non-/ root is treated as an image build and the bundle is patched directly).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egress_ca::{CaOptions, DeploymentCa};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install-ca.sh")
}

fn shell() -> &'static str {
    // dash is the strictest POSIX sh commonly at hand; fall back to whatever sh is.
    if Path::new("/usr/bin/dash").exists() || Path::new("/bin/dash").exists() {
        "dash"
    } else {
        "sh"
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(shell())
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
