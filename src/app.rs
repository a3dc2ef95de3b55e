//! Assembling and running the proxy: [`App::build`] takes already-bound listeners (so tests
//! bind `127.0.0.1:0`) and a typed config; [`App::run`] serves until the shutdown future
//! resolves, then drains.
//!
//! Startup fails closed: an unreadable CA, bad trust roots, an invalid secrets file or admin
//! material stops the build with an error naming the key or file. Nothing here handles a
//! request.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use egress_ca::{CaOptions, DeploymentCa, PermittedName};
use egress_sds::store::SecretStore;
use tokio::net::{TcpListener, UnixListener};

use crate::admin::{AdminAuth, AdminCtx};
use crate::api::Api;
use crate::bump::Bumper;
use crate::config::{CaSource, Config, ListenAddr, SecretsConfig};
use crate::dial::{Connect, Dialer, Resolve, SystemResolver, TcpConnector};
use crate::listener::ProxyListener;
use crate::metrics::Metrics;
use crate::policy::HostPattern;
use crate::state::{Shared, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("ca: {0}")]
    Ca(#[from] egress_ca::CaError),
    #[error("ca.{key}: {msg}")]
    CaConfig { key: &'static str, msg: String },
    #[error(transparent)]
    Trust(#[from] crate::bump::tls::TrustError),
    #[error(transparent)]
    Bump(#[from] crate::bump::BumpError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("secrets: {0}")]
    Secrets(#[from] egress_sds::SdsError),
    #[error("handles: {0}")]
    Handles(String),
}

/// The admin listener, bound.
#[derive(Debug)]
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Already-bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<AdminListener>,
}

impl Listeners {
    /// Binds what the config names.
    pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
        let proxy = TcpListener::bind(config.proxy.listen)
            .await
            .map_err(|source| AppError::Bind {
                what: "proxy.listen",
                addr: config.proxy.listen.to_string(),
                source,
            })?;
        let admin = match &config.admin.listen {
            ListenAddr::Tcp(a) => Some(AdminListener::Tcp(TcpListener::bind(a).await.map_err(
                |source| AppError::Bind {
                    what: "admin.listen",
                    addr: a.to_string(),
                    source,
                },
            )?)),
            ListenAddr::Unix(p) => {
                // A stale socket from a previous run would make bind fail; only remove a socket.
                if std::fs::symlink_metadata(p).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(p);
                }
                let l = UnixListener::bind(p).map_err(|source| AppError::Bind {
                    what: "admin.listen",
                    addr: p.display().to_string(),
                    source,
                })?;
                Some(AdminListener::Unix(l, p.clone()))
            }
        };
        Ok(Listeners { proxy, admin })
    }
}

/// Pluggable pieces, for tests and embedding.
#[derive(Debug, Default)]
pub struct BuildOptions {
    pub resolver: Option<Arc<dyn Resolve>>,
    pub connector: Option<Arc<dyn Connect>>,
}

#[derive(Debug)]
pub struct App {
    reloader: Arc<crate::reload::Reloader>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    proxy: TcpListener,
    admin: Option<AdminListener>,
    shared: Arc<Shared>,
    admin_ctx: Arc<AdminCtx>,
    bumper: Option<Arc<Bumper>>,
    grace: Duration,
}

/// The CA name constraints this policy allows: none (unconstrained) when bumping is open-ended.
fn permitted_names(config: &Config) -> Vec<PermittedName> {
    let Some(patterns) = config.policy.enumerable_bump_patterns() else {
        return Vec::new();
    };
    patterns
        .into_iter()
        .filter_map(|p| match p {
            HostPattern::Exact(n) | HostPattern::Subdomains(n) => {
                Some(PermittedName::Dns(n.clone()))
            }
            HostPattern::Ip(ip) => ip.to_string().parse().ok(),
        })
        .collect()
}

fn deployment_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "egress-edge".to_owned())
}

/// Loads (or creates) the deployment CA as the config says.
pub async fn load_ca(
    config: &Config,
    secrets: Option<&SecretStore>,
) -> Result<Option<Arc<DeploymentCa>>, AppError> {
    load_ca_inner(config, secrets, false).await
}

/// `egress-edge ca export`: the CA as `run` would load it, created if absent.
pub async fn export_ca(config: &Config) -> Result<String, AppError> {
    let secrets = match &config.ca.source {
        CaSource::Sds { .. } => start_secrets(config).await?,
        _ => None,
    };
    match load_ca_inner(config, secrets.as_ref(), true).await? {
        Some(ca) => Ok(ca.cert_pem().to_owned()),
        None => Err(AppError::CaConfig {
            key: "cert",
            msg: "no CA".into(),
        }),
    }
}

/// Startup checks `check-config` runs beyond parsing: every referenced file loads.
pub fn check_files(config: &Config) -> Result<(), String> {
    if let CaSource::Files { cert, key } = &config.ca.source {
        let c = std::fs::read_to_string(cert)
            .map_err(|e| format!("ca.cert: {}: {e}", cert.display()))?;
        let k =
            std::fs::read_to_string(key).map_err(|e| format!("ca.key: {}: {e}", key.display()))?;
        DeploymentCa::from_pem(&c, &k, &cert.display().to_string())
            .map_err(|e| format!("ca: {e}"))?;
    }
    if config.policy.has_bump() {
        crate::bump::tls::root_store(&config.upstream.extra_roots, &[])
            .map_err(|e| e.to_string())?;
    }
    AdminAuth::load(&config.admin).map_err(|e| e.to_string())?;
    if let Some(SecretsConfig::File { path, .. }) = &config.secrets {
        egress_sds::file::load_secrets_file(path).map_err(|e| format!("secrets.file: {e}"))?;
    }
    Ok(())
}

async fn load_ca_inner(
    config: &Config,
    secrets: Option<&SecretStore>,
    create: bool,
) -> Result<Option<Arc<DeploymentCa>>, AppError> {
    let ca = match &config.ca.source {
        CaSource::Files { cert, key } => {
            let read = |p: &PathBuf, key: &'static str| {
                std::fs::read_to_string(p).map_err(|e| AppError::CaConfig {
                    key,
                    msg: format!("{}: {e}", p.display()),
                })
            };
            Some(DeploymentCa::from_pem(
                &read(cert, "cert")?,
                &read(key, "key")?,
                &cert.display().to_string(),
            )?)
        }
        CaSource::Sds { secret } => {
            let Some(store) = secrets else {
                return Err(AppError::CaConfig {
                    key: "sds",
                    msg: "needs a secrets source".into(),
                });
            };
            let timeout = config.secret_wait();
            let v = store
                .wait(secret, timeout)
                .await
                .map_err(|e| AppError::CaConfig {
                    key: "sds",
                    msg: format!("secret `{secret}` not delivered: {e}"),
                })?;
            match &*v.secret {
                egress_sds::secret::Secret::TlsCertificate { chain_pem, key_pem } => {
                    let key = key_pem.expose_str().ok_or_else(|| AppError::CaConfig {
                        key: "sds",
                        msg: format!("secret `{secret}`: private key is not PEM text"),
                    })?;
                    Some(DeploymentCa::from_pem(
                        chain_pem,
                        key,
                        &format!("sds:{secret}"),
                    )?)
                }
                other => {
                    return Err(AppError::CaConfig {
                        key: "sds",
                        msg: format!(
                            "secret `{secret}` is a {}, not a tls_certificate",
                            other.kind()
                        ),
                    });
                }
            }
        }
        CaSource::Generated => {
            let exists = config.state_dir.join(egress_ca::CA_CERT_FILE).exists();
            if config.policy.has_bump() || exists || create {
                let opts =
                    CaOptions::new(deployment_name()).with_permitted(permitted_names(config));
                let dir = config.state_dir.clone();
                Some(
                    tokio::task::spawn_blocking(move || DeploymentCa::load_or_create(&dir, &opts))
                        .await
                        .map_err(|e| AppError::CaConfig {
                            key: "state_dir",
                            msg: e.to_string(),
                        })??,
                )
            } else {
                None
            }
        }
    };
    if let Some(ca) = &ca {
        // A brought or shared CA must still cover every bump host, or guests would see
        // certificate errors that look like attacks.
        for name in permitted_names(config) {
            if !ca.covers_subtree(&name) {
                return Err(AppError::CaConfig {
                    key: "cert",
                    msg: format!(
                        "the CA ({}) is name-constrained and does not cover bump host {name}",
                        ca.source()
                    ),
                });
            }
        }
    }
    Ok(ca.map(Arc::new))
}

/// Starts the configured secret source.
async fn start_secrets(config: &Config) -> Result<Option<SecretStore>, AppError> {
    let Some(source) = &config.secrets else {
        return Ok(None);
    };
    let names = config.referenced_secrets();
    let store = SecretStore::new(names.iter().cloned());
    match source {
        SecretsConfig::File { path, .. } => {
            egress_sds::file_source::spawn_file_source(
                path.clone(),
                store.clone(),
                egress_sds::file_source::DEFAULT_POLL_INTERVAL,
            )?;
        }
        SecretsConfig::Sds(s) => {
            let target = egress_sds::client::Target::parse(&s.target)?;
            let tls = s.tls.as_ref().map(|t| egress_sds::client::ClientTls {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            });
            let opts = egress_sds::client::ClientOptions {
                target,
                tls,
                node_id: s.node_id.clone(),
                cluster: s.cluster.clone(),
                names: names.iter().cloned().collect(),
                initial_fetch_timeout: s.initial_fetch_timeout,
            };
            egress_sds::client::spawn_client(opts, store.clone())?;
        }
    }
    Ok(Some(store))
}

impl App {
    pub async fn build(
        config: Config,
        listeners: Listeners,
        opts: BuildOptions,
    ) -> Result<App, AppError> {
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let secrets = start_secrets(&config).await?;
        let ca = load_ca(&config, secrets.as_ref()).await?;
        let bumper = match (&ca, config.policy.has_bump()) {
            (Some(ca), true) => Some(Arc::new(Bumper::new(ca.clone(), config.ca.leaf_ttl)?)),
            _ => None,
        };
        if let Some(b) = &bumper {
            let exact: Vec<String> = config
                .policy
                .rules()
                .iter()
                .filter(|r| r.rung == crate::policy::Rung::Bump && r.pattern.is_exact())
                .map(|r| r.pattern.to_string())
                .collect();
            b.leaves().prewarm(&exact).await;
        }
        let resolver: Arc<dyn Resolve> = opts.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
        let connector: Arc<dyn Connect> = opts.connector.unwrap_or_else(|| Arc::new(TcpConnector));
        let dialer = Dialer::new(
            config.network.addresses.clone(),
            config.network.hosts.clone(),
            resolver.clone(),
            connector.clone(),
            config.proxy.connect_timeout,
        );
        if let Some(store) = &secrets {
            // Trust roots from the secret source must be there before the first re-originated
            // request; if they never arrive, verification against them fails (closed).
            let timeout = config.secret_wait();
            for name in &config.upstream.extra_roots_sds {
                if store.wait(name, timeout).await.is_err() {
                    tracing::warn!(secret = %name, "upstream.extra_roots_sds: not delivered yet; upstreams it would verify fail until it arrives");
                }
            }
        }
        let extra_pems = crate::api::sds_roots(&config, secrets.as_ref());
        let snapshot = Snapshot::new(config.clone(), dialer, &extra_pems)?;
        let auth = AdminAuth::load(&config.admin)?;
        let handles = {
            let dir = config.state_dir.clone();
            let ttl = config.handle_max_ttl;
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    egress_handle::HandleAuthority::open(&dir, ttl)
                })
                .await
                .map_err(|e| AppError::Handles(e.to_string()))?
                .map_err(|e| AppError::Handles(e.to_string()))?,
            )
        };
        let fetch_timeout = config.secret_wait();
        let injector = Arc::new(crate::inject::Injector::new(
            handles.clone(),
            secrets.clone(),
            fetch_timeout,
        ));
        let shared = Arc::new(Shared::new(snapshot, metrics, Some(injector)));
        spawn_revocation_reload(&shared, handles.clone());
        let reloader = Arc::new(crate::reload::Reloader {
            shared: shared.clone(),
            resolver,
            connector,
            ca: ca.clone(),
            secrets: secrets.clone(),
        });
        if let (Some(store), false) = (&secrets, config.upstream.extra_roots_sds.is_empty()) {
            spawn_root_refresh(store.clone(), reloader.clone());
        }
        let api = Api::new(ca, bumper.clone(), secrets, handles, &config);
        api.register_metrics(&shared.metrics);
        let admin_ctx = Arc::new(AdminCtx {
            shared: shared.clone(),
            auth,
            ready: AtomicBool::new(false),
            api,
        });
        let proxy_addr = listeners
            .proxy
            .local_addr()
            .map_err(|source| AppError::Bind {
                what: "proxy.listen",
                addr: config.proxy.listen.to_string(),
                source,
            })?;
        let admin_addr = match &listeners.admin {
            Some(AdminListener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        };
        Ok(App {
            reloader,
            proxy_addr,
            admin_addr,
            proxy: listeners.proxy,
            admin: listeners.admin,
            shared,
            admin_ctx,
            bumper,
            grace: config.proxy.shutdown_grace,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Validates and swaps in configs while serving (SIGHUP, file changes, tests).
    pub fn reloader(&self) -> Arc<crate::reload::Reloader> {
        self.reloader.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains for the grace period,
    /// and ends what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared.clone();
        let proxy = ProxyListener {
            listener: self.proxy,
            shared: shared.clone(),
            bump: self.bumper.clone(),
        };
        let proxy_task = tokio::spawn(proxy.run());
        let admin_task = self
            .admin
            .map(|l| tokio::spawn(admin_loop(l, self.admin_ctx.clone())));
        self.admin_ctx.ready.store(true, Ordering::SeqCst);
        tracing::info!(proxy = %self.proxy_addr, admin = %self.admin_addr.map_or_else(|| "unix socket".to_owned(), |a| a.to_string()), "egress-edge serving");
        shutdown.await;
        tracing::info!(grace = ?self.grace, "shutting down: no new connections, draining");
        self.admin_ctx.ready.store(false, Ordering::SeqCst);
        shared.draining.cancel();
        let _ = proxy_task.await;
        shared.tasks.close();
        if tokio::time::timeout(self.grace, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: closing remaining tunnels");
            shared.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.tasks.wait()).await;
        }
        if let Some(t) = admin_task {
            t.abort();
        }
        tracing::info!("stopped");
    }
}

/// Rebuilds the snapshot (same config) when the secret source delivers new values, so rotated
/// `upstream.extra_roots_sds` take effect without a restart.
fn spawn_root_refresh(store: SecretStore, reloader: Arc<crate::reload::Reloader>) {
    let mut changes = store.subscribe();
    let stop = reloader.shared.draining.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = stop.cancelled() => return,
            }
            let current = (*reloader.shared.snapshot().config).clone();
            if let Err(e) = reloader.apply(current) {
                tracing::warn!(error = %e, "cannot refresh upstream trust roots from the secret source");
            }
        }
    });
}

/// Revocations made by another process (CLI with --state-dir, another replica) take effect
/// within a second.
fn spawn_revocation_reload(shared: &Arc<Shared>, handles: Arc<egress_handle::HandleAuthority>) {
    let stop = shared.draining.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = handles.reload_revocations_if_changed() {
                tracing::warn!(error = %e, "cannot reload the revocation list; keeping the revocations already loaded");
            }
        }
    });
}

async fn admin_loop(l: AdminListener, ctx: Arc<AdminCtx>) {
    match l {
        AdminListener::Tcp(l) => loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(crate::admin::serve_conn(s, ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        },
        AdminListener::Unix(l, _path) => loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(crate::admin::serve_conn(s, ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        },
    }
}
