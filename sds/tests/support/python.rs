//! Shared by the Python interop tests (`sds/tests/interop.rs` and the edge's
//! `tests/it/fleet_interop.rs`, which include this file by path): a venv under the target dir
//! with the PyPI packages `grpcio`, `xds-protos` and `grpcio-tools`, made once, and a reader
//! of a child's stdout lines.
//!
//! The venv is built beside its final place and renamed into it, so test processes running at
//! once (cargo-nextest runs one per test) never see or share a half-installed venv. Without
//! `python3` [`venv_python`] says SKIP and returns `None`; a failing `pip install` panics.
//! With `INTEROP_ECHO` set, every line a child prints is echoed on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

/// How long one awaited line may take.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Installed together, so pip picks one protobuf runtime that xds-protos' generated code and
/// grpcio-tools' protoc both accept.
const PACKAGES: [&str; 3] = ["grpcio", "xds-protos", "grpcio-tools"];

/// What a usable venv imports.
const IMPORTS: &str = "import grpc, grpc_tools.protoc; \
    from envoy.service.secret.v3 import sds_pb2_grpc; \
    from envoy.service.discovery.v3 import ads_pb2_grpc";

fn ready(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", IMPORTS])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} did not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, or `None` when python3 is absent. Installed once per target dir.
pub fn venv_python() -> Option<PathBuf> {
    static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();
    VENV.get_or_init(|| {
        if Command::new("python3").arg("--version").output().is_err() {
            eprintln!("SKIP interop: python3 not found on PATH");
            return None;
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("..");
        let venv = target.join("interop-venv");
        let python = venv.join("bin/python");
        if ready(&python) {
            return Some(python);
        }
        let fresh = target.join(format!("interop-venv.new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&fresh);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&fresh),
            "python3 -m venv",
        );
        // `python -m pip`, not `bin/pip`: a script's #! names the path it was installed at.
        run(
            Command::new(fresh.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(PACKAGES),
            &format!("pip install {}", PACKAGES.join(" ")),
        );
        assert!(
            ready(&fresh.join("bin/python")),
            "{} installed but do not import",
            PACKAGES.join(", ")
        );
        // Another process may have finished first (then its venv is used and this one
        // dropped); a venv with an older package set is moved away first.
        if !ready(&python) {
            if venv.exists() {
                let old = target.join(format!("interop-venv.old-{}", std::process::id()));
                if std::fs::rename(&venv, &old).is_ok() {
                    let _ = std::fs::remove_dir_all(&old);
                }
            }
            let _ = std::fs::rename(&fresh, &venv);
        }
        let _ = std::fs::remove_dir_all(&fresh);
        assert!(
            ready(&python),
            "the venv at {} does not import",
            venv.display()
        );
        Some(python)
    })
    .clone()
}

/// Stdout lines of a child, read in the background.
pub struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
}

impl Lines {
    pub fn spawn(child: &mut Child) -> Self {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let echo = std::env::var_os("INTEROP_ECHO").is_some();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("python: {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    pub async fn next(&mut self) -> String {
        tokio::time::timeout(LINE_TIMEOUT, self.rx.recv())
            .await
            .expect("timed out waiting for the python process")
            .expect("python process closed stdout (see its stderr above)")
    }

    pub async fn next_json(&mut self) -> Value {
        let line = self.next().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Skips lines until one satisfies `pred`.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = tokio::time::timeout(LINE_TIMEOUT, self.next_json())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            if pred(&v) {
                return v;
            }
        }
    }
}
