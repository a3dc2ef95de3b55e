//! The proxy under test, built in-process on `127.0.0.1:0` with a loopback admin listener,
//! plus the shared pass-through fixture and a helper that writes fixture files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egress_edge::app::{AdminListener, App, BuildOptions, DnsListener, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::admin::admin_post;
use super::clients::{http_get, json};
use super::pki::{Pki, server_config};
use super::upstream::{Seen, start_upstream};

/// Listeners a test binds itself and hands to the proxy besides the explicit one.
#[derive(Default)]
pub struct Extra {
    pub transparent: Vec<TcpListener>,
    pub dns: Vec<egress_edge::app::DnsListener>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The guest resolver (UDP and TCP), bound on `127.0.0.1:0` when the config has `dns:`.
    pub dns: Option<SocketAddr>,
    pub state: tempfile::TempDir,
    pub config_path: PathBuf,
    pub shared: Arc<egress_edge::state::Shared>,
    pub reloader: Arc<egress_edge::state::reload::Reloader>,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// `yaml` may contain `STATE_DIR`, replaced with a fresh temp dir.
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, BuildOptions::default()).await
    }

    pub async fn start_with(yaml: &str, opts: BuildOptions) -> Proxy {
        Proxy::try_start_with(yaml, opts).await.unwrap()
    }

    pub async fn try_start_with(yaml: &str, opts: BuildOptions) -> Result<Proxy, String> {
        Proxy::try_start_full(yaml, opts, Extra::default()).await
    }

    /// Like [`Proxy::start_with`], with transparent listeners and guest resolvers the test
    /// bound itself (for example inside a network namespace).
    pub async fn start_full(yaml: &str, opts: BuildOptions, extra: Extra) -> Proxy {
        Proxy::try_start_full(yaml, opts, extra).await.unwrap()
    }

    pub async fn try_start_full(
        yaml: &str,
        opts: BuildOptions,
        extra: Extra,
    ) -> Result<Proxy, String> {
        let state = tempfile::tempdir().unwrap();
        let text = yaml.replace("STATE_DIR", state.path().join("state").to_str().unwrap());
        let config_path = state.path().join("config.yaml");
        std::fs::write(&config_path, &text).unwrap();
        Proxy::launch(state, config_path, opts, extra).await
    }

    /// Builds and runs an app from the config file in `state`.
    async fn launch(
        state: tempfile::TempDir,
        config_path: PathBuf,
        opts: BuildOptions,
        extra: Extra,
    ) -> Result<Proxy, String> {
        let text = std::fs::read_to_string(&config_path).unwrap();
        let config = egress_edge::config::parse_str(&text, "test").map_err(|e| e.to_string())?;
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let mut listeners = Listeners::new(proxy, Some(AdminListener::Tcp(admin)));
        listeners.transparent = extra.transparent;
        listeners.dns = extra.dns;
        if config.dns.is_some() && listeners.dns.is_empty() {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            listeners.dns.push(DnsListener::bind(any).await.unwrap());
        }
        let app = App::build(config, listeners, opts)
            .await
            .map_err(|e| e.to_string())?;
        let (addr, shared, reloader) = (app.proxy_addr, app.shared().clone(), app.reloader());
        let dns = app.dns_addrs.first().copied();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        Ok(Proxy {
            addr,
            admin: admin_addr,
            dns,
            state,
            config_path,
            shared,
            reloader,
            stop: Some(tx),
            done: Some(done),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops this proxy and starts a new one on the same config and state dir.
    pub async fn restart(mut self) -> Proxy {
        self.shutdown();
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        Proxy::launch(
            state,
            self.config_path.clone(),
            BuildOptions::default(),
            Extra::default(),
        )
        .await
        .unwrap()
    }

    /// Plain-HTTP JSON POST to the admin listener; returns (status, body).
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let (status, _, body) = admin_post(self.admin, path, body, &[]).await;
        (status, body)
    }

    /// Mints a handle through the admin API.
    pub async fn mint(&self, body: &str) -> String {
        let (status, resp) = self.post("/v1/handles", body).await;
        assert_eq!(status, 200, "{resp}");
        json(&resp)["handle"].as_str().unwrap().to_owned()
    }

    pub fn bump_ca_path(&self) -> PathBuf {
        self.state.path().join("state").join("ca.pem")
    }

    pub fn bump_roots(&self) -> rustls::RootCertStore {
        let pem = std::fs::read(self.bump_ca_path()).unwrap();
        let mut r = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    }

    /// Polls `/metrics` until it contains `needle` (events are counted when a tunnel closes).
    pub async fn wait_metric(&self, needle: &str) -> String {
        let mut last = String::new();
        for _ in 0..50 {
            last = self.metrics().await;
            if last.contains(needle) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("metric `{needle}` never appeared:\n{last}");
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = http_get(self.admin, "/metrics", &[]).await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An upstream for `upstream.test` (its leaf also covers `other.test` and `plain.test`) plus a
/// proxy that passes it through: `upstream.test`, `plain.test` and `*.wild.test` are allowed
/// on the upstream's port, `other.test` resolves but is not a destination, and `extra` is
/// appended to the destination list.
pub async fn passthrough_env(extra: &str) -> (Pki, SocketAddr, Arc<Seen>, Proxy) {
    let pki = Pki::new("upstream test CA");
    let leaf = pki.leaf(&["upstream.test", "other.test", "plain.test"]);
    let (up, seen) = start_upstream(Some(server_config(&leaf, &[b"h2", b"http/1.1"]))).await;
    let yaml = format!(
        "state_dir: STATE_DIR
network: {{ allow: [127.0.0.1/32], hosts: {{ upstream.test: 127.0.0.1, other.test: 127.0.0.1, plain.test: 127.0.0.1 }} }}
destinations:
  - {{ host: upstream.test, ports: [{port}] }}
  - {{ host: plain.test, ports: [{port}] }}
  - {{ host: '*.wild.test', ports: [{port}] }}
{extra}
default_rung: deny
",
        port = up.port()
    );
    let proxy = Proxy::start(&yaml).await;
    (pki, up, seen, proxy)
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Our own SDS server (`egress_sds::server`, what `egress-edge sds serve` runs), in process on
/// loopback, serving the watched secrets file `secrets`; stopped by [`Sds::stop`] or on drop.
pub struct Sds {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), egress_sds::SdsError>>>,
}

impl Sds {
    pub async fn start(secrets: &Path) -> Sds {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = egress_sds::server::Server::with_listener(listener, secrets, None).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Sds {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops serving and waits until the server has let go of its port.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Sds {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Polls `f` every 20 ms until it holds, and returns how long that took; fails after `limit`,
/// naming `what`.
pub async fn until<F, Fut>(limit: std::time::Duration, what: &str, mut f: F) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
