//! egress-edge, started in-process on loopback with two destinations on the same upstream:
//! `upstream.test` (passthrough) and `bump.test` (bump).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use egress_edge::app::{AdminListener, App, BuildOptions, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The bump CA certificate (PEM) guests must trust.
    pub bump_ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// A YAML double-quoted scalar for a path.
fn yaml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

pub fn config_yaml(state_dir: &Path, upstream_ca: &Path, upstream_port: u16) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0, shutdown_grace: 1s }}
admin: {{ listen: 127.0.0.1:0 }}
state_dir: {state}
upstream: {{ extra_roots: [{roots}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1, bump.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test, ports: [{port}], rung: passthrough }}
  - {{ host: bump.test, ports: [{port}], rung: bump }}
default_rung: deny
",
        state = yaml_path(state_dir),
        roots = yaml_path(upstream_ca),
        port = upstream_port,
    )
}

impl Proxy {
    pub async fn start(
        state_dir: PathBuf,
        upstream_ca: &Path,
        upstream_port: u16,
    ) -> Result<Proxy> {
        let yaml = config_yaml(&state_dir, upstream_ca, upstream_port);
        let config = egress_edge::config::parse_str(&yaml, "bench")
            .with_context(|| format!("parsing the bench config:\n{yaml}"))?;
        let proxy = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let listeners = Listeners {
            proxy,
            admin: Some(AdminListener::Tcp(admin)),
        };
        let app = App::build(config, listeners, BuildOptions::default())
            .await
            .context("egress-edge App::build")?;
        let addr = app.proxy_addr;
        let admin = app.admin_addr;

        let ca_path = state_dir.join(egress_ca::CA_CERT_FILE);
        let bump_ca_pem = std::fs::read_to_string(&ca_path)
            .with_context(|| format!("reading the bump CA at {}", ca_path.display()))?;
        if !bump_ca_pem.contains("BEGIN CERTIFICATE") {
            bail!("{} holds no PEM certificate", ca_path.display());
        }

        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Ok(Proxy {
            addr,
            admin,
            bump_ca_pem,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Asks the proxy to stop and waits (bounded) for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        if waited.is_err() {
            eprintln!("bench: proxy did not stop within 5 s");
        }
    }
}
