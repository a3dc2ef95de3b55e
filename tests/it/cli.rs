//! The binary's command line: check-config exit codes and located errors, ca export.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-edge"))
}

#[test]
fn check_config_accepts_examples_and_locates_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "proxy:\n  listen: 127.0.0.1:1\ndestinations:\n  - host: 'a.*.com'\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4: destinations[0].host"), "{err}");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "destinations:\n  - host: a.test\n").unwrap();
    let out = bin()
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn ca_export_creates_then_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let run = || {
        bin()
            .args(["ca", "export", "--state-dir", state.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let a = run();
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    let pem = String::from_utf8(a.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(String::from_utf8(run().stdout).unwrap(), pem);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn partial_byo_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "ca:\n  cert: /nonexistent.pem\ndestinations:\n  - { host: a.test, rung: bump }\n",
    )
    .unwrap();
    let out = bin()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.key"));
}

#[tokio::test]
async fn health_and_handle_cli_against_a_running_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("c.yaml");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "proxy: {{ listen: '{proxy}' }}\nadmin: {{ listen: '{admin}' }}\nstate_dir: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let mut child = bin()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .spawn()
        .unwrap();
    let admin_s = admin.to_string();
    let mut healthy = false;
    for _ in 0..50 {
        if bin()
            .args(["health", "--admin", &admin_s])
            .output()
            .unwrap()
            .status
            .success()
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let url = format!("http://{admin}");
    let minted = bin()
        .args([
            "handle",
            "mint",
            "--credential",
            "k",
            "--ttl",
            "5m",
            "--session",
            "s1",
            "--admin",
            &url,
        ])
        .output()
        .unwrap();
    let direct = bin()
        .args([
            "handle",
            "mint",
            "--credential",
            "k",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let revoked = bin()
        .args(["handle", "revoke", "--session", "s1", "--admin", &url])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy, "health never succeeded");
    assert!(
        String::from_utf8_lossy(&minted.stdout).starts_with("eeh_"),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    assert!(
        String::from_utf8_lossy(&direct.stdout).starts_with("eeh_"),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    // Nothing listening: health fails with exit 2.
    let out = bin()
        .args(["health", "--admin", &admin_s])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `handle mint --admin unix:///…` against a unix-socket admin listener: the CLI's `Host`
/// there is not judged, and its JSON POST passes the admin API's browser defences.
#[tokio::test]
async fn handle_cli_over_a_unix_socket_admin() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sock = dir.path().join("admin.sock");
    let cfg = dir.path().join("c.yaml");
    let proxy = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "proxy: {{ listen: '{proxy}' }}\nadmin: {{ listen: 'unix://{}' }}\nstate_dir: {}\n",
            sock.display(),
            state.display()
        ),
    )
    .unwrap();
    let mut child = bin()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .spawn()
        .unwrap();
    let url = format!("unix://{}", sock.display());
    let mut healthy = false;
    for _ in 0..50 {
        if bin()
            .args(["health", "--admin", &url])
            .output()
            .unwrap()
            .status
            .success()
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let minted = bin()
        .args(["handle", "mint", "--credential", "k", "--admin", &url])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy, "health over the unix socket never succeeded");
    assert!(
        String::from_utf8_lossy(&minted.stdout).starts_with("eeh_"),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
}

/// Every example config in `config/` validates (from a fresh working directory, so a state
/// dir left by an earlier run cannot decide the answer).
#[test]
fn example_configs_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("config"), cwd.path().join("config")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("config")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name.starts_with("secrets") {
            continue;
        }
        let out = bin()
            .current_dir(cwd.path())
            .args(["check-config", "--config", &format!("config/{name}")])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} example configs found");
}
