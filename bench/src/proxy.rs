//! egress-edge, started in-process on loopback with three destinations on the same upstream:
//! `upstream.test` (passthrough), `bump.test` (bump) and `inject.test` (bump with a header
//! credential, `bench-key`, from a secrets file in the scratch dir).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use egress_edge::app::{AdminListener, App, BuildOptions, Listeners};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
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
pub fn yaml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The secret name `inject.test`'s credential uses.
pub const INJECT_SECRET_NAME: &str = "bench-key";

/// The secrets file: `bench-key` holds the value the upstream expects for `inject.test`.
pub fn secrets_yaml() -> String {
    format!(
        "secrets:\n  {INJECT_SECRET_NAME}: {{ value: {} }}\n",
        crate::upstream::INJECTED_SECRET
    )
}

/// The domain of the cold-SNI rows' names, bumped through one `*.{COLD_DOMAIN}` rule.
pub const COLD_DOMAIN: &str = "cold.test";
/// The prefix of the names the proxy resolves (`network.hosts` takes exact names only).
pub const COLD_PREFIX: &str = "c";

/// The bench proxy's config; `cold_names` names `c0.cold.test` ... resolve to the upstream.
pub fn config_yaml(
    state_dir: &Path,
    secrets_file: &Path,
    upstream_ca: &Path,
    upstream_port: u16,
    cold_names: usize,
) -> String {
    let mut cold_hosts = String::new();
    for i in 0..cold_names {
        let name = crate::client::FreshNames::name(COLD_PREFIX, COLD_DOMAIN, i);
        cold_hosts.push_str(&format!("    {name}: 127.0.0.1\n"));
    }
    format!(
        "proxy: {{ listen: 127.0.0.1:0, shutdown_grace: 1s }}
admin: {{ listen: 127.0.0.1:0 }}
state_dir: {state}
secrets: {{ file: {secrets} }}
upstream: {{ extra_roots: [{roots}] }}
destinations:
  - {{ host: upstream.test, ports: [{port}], rung: passthrough }}
  - {{ host: bump.test, ports: [{port}], rung: bump }}
  - {{ host: {inject}, ports: [{port}], credential: {{ secret: {INJECT_SECRET_NAME} }} }}
  - {{ host: '*.{COLD_DOMAIN}', ports: [{port}], rung: bump }}
default_rung: deny
network:
  allow: [127.0.0.1/32]
  hosts:
    upstream.test: 127.0.0.1
    bump.test: 127.0.0.1
    {inject}: 127.0.0.1
{cold_hosts}",
        state = yaml_path(state_dir),
        secrets = yaml_path(secrets_file),
        roots = yaml_path(upstream_ca),
        port = upstream_port,
        inject = crate::upstream::INJECT_HOST,
    )
}

/// Writes a file readable by its owner only (it holds a (fake) secret).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

impl Proxy {
    /// Writes `secrets_file`, then builds and starts the proxy.
    pub async fn start(
        state_dir: PathBuf,
        secrets_file: &Path,
        upstream_ca: &Path,
        upstream_port: u16,
        cold_names: usize,
    ) -> Result<Proxy> {
        write_private(secrets_file, &secrets_yaml())?;
        let yaml = config_yaml(
            &state_dir,
            secrets_file,
            upstream_ca,
            upstream_port,
            cold_names,
        );
        Proxy::start_yaml(&yaml, &state_dir, "bench").await
    }

    /// Builds and starts a proxy from config text whose `state_dir` is `state_dir`; `what`
    /// names it in errors.
    pub async fn start_yaml(yaml: &str, state_dir: &Path, what: &str) -> Result<Proxy> {
        let config = egress_edge::config::parse_str(yaml, what).with_context(|| {
            let head: String = yaml.chars().take(4000).collect();
            format!("parsing the {what} config:\n{head}")
        })?;
        let proxy = TcpListener::bind("127.0.0.1:0").await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let listeners = Listeners::new(proxy, Some(AdminListener::Tcp(admin)));
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

    /// Mints a handle for `bench-key` through the admin API (`POST /v1/handles`).
    pub async fn mint_handle(&self) -> Result<String> {
        let admin = self.admin.context("the proxy has no admin listener")?;
        let body = format!(r#"{{"credentials":["{INJECT_SECRET_NAME}"],"ttl":"30m"}}"#);
        let tcp = TcpStream::connect(admin)
            .await
            .with_context(|| format!("connecting to the admin API at {admin}"))?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post("/v1/handles")
            .header(header::HOST, admin.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await.context("POST /v1/handles")?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .context("reading the POST /v1/handles response")?
            .to_bytes();
        if !status.is_success() {
            bail!(
                "POST /v1/handles: status {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&text).context("POST /v1/handles: response is not JSON")?;
        match v.get("handle").and_then(|h| h.as_str()) {
            Some(h) if egress_handle::looks_like_handle(h) => Ok(h.to_owned()),
            _ => bail!("POST /v1/handles: no handle in the response"),
        }
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
