//! Assembling and running the proxy: [`App::build`] takes already-bound listeners (so tests
//! bind `127.0.0.1:0`) and a typed config; [`App::run`] serves until the shutdown future
//! resolves, then drains.
//!
//! Startup fails closed: an unreadable CA, bad trust roots, an invalid secrets file or admin
//! material stops the build with an error naming the key or file. Nothing here handles a
//! request.

mod background;
mod ca;
mod limits;
mod listeners;
mod secrets;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::admin::api::Api;
use crate::admin::guard::AdminTransport;
use crate::admin::{AdminAuth, AdminCtx};
use crate::config::Config;
use crate::credential::Injector;
use crate::frontend::dns::GuestResolver;
use crate::frontend::listener::ProxyListener;
use crate::frontend::transparent::TransparentListener;
use crate::net::dial::{Connect, Resolve, SystemResolver, TcpConnector};
use crate::observe::metrics::Metrics;
use crate::rung::Ladder;
use crate::rung::bump::Bumper;
use crate::state::issuers::IssuerTrust;
use crate::state::reload::Reloader;
use crate::state::sandboxes::Registry;
use crate::state::snapshot::CoverageError;
use crate::state::{Shared, Snapshot, Sources};
use crate::upstream::budget::PoolBudget;

pub use ca::{check_files, export_ca, load_ca};
pub use listeners::{AdminListener, DnsListener, Listeners};

/// Why the proxy could not be assembled. Every variant is a configuration or environment
/// problem found before serving (exit code 1), except [`AppError::Bind`] and
/// [`AppError::Join`], which are runtime failures (exit code 2).
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
    #[error("ca.cert: {0}")]
    Coverage(#[from] CoverageError),
    #[error(transparent)]
    Trust(#[from] crate::upstream::tls::TrustError),
    #[error(transparent)]
    Bump(#[from] crate::rung::bump::BumpError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("secrets: {0}")]
    Secrets(#[from] egress_sds::SdsError),
    #[error("handles: {0}")]
    Handles(#[from] egress_handle::HandleError),
    #[error("a startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("sandboxes: {0}")]
    Sandboxes(#[from] crate::state::sandboxes::SandboxError),
}

impl AppError {
    /// True for failures of the environment at run time rather than of the configuration.
    pub fn is_runtime(&self) -> bool {
        matches!(self, AppError::Bind { .. } | AppError::Join(_))
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
    /// The secret source's and the fleet stream's tasks, stopped with the app.
    _streams: Streams,
    reloader: Arc<Reloader>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// Where the transparent listeners and guest resolvers are bound.
    pub transparent_addrs: Vec<SocketAddr>,
    pub dns_addrs: Vec<SocketAddr>,
    proxy: tokio::net::TcpListener,
    extra_proxy: Vec<tokio::net::TcpListener>,
    transparent: Vec<tokio::net::TcpListener>,
    dns: Vec<DnsListener>,
    admin: Option<AdminListener>,
    shared: Arc<Shared>,
    admin_ctx: Arc<AdminCtx>,
    ladder: Arc<Ladder>,
    grace: Duration,
}

/// Tasks that feed the app from outside (secret source, fleet stream): aborted when the app is
/// dropped, so an app stopped in process (tests, restarts) leaves no stream behind.
#[derive(Debug, Default)]
struct Streams(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl App {
    pub async fn build(
        config: Config,
        listeners: Listeners,
        opts: BuildOptions,
    ) -> Result<App, AppError> {
        let config = Arc::new(config);
        limits::raise_nofile(config.proxy.max_connections);
        let (secrets, secret_task) = secrets::start_secrets(&config).await?;
        let mut streams = Streams(secret_task.into_iter().collect());
        let ca = load_ca(&config, secrets.as_ref()).await?;
        let handles = {
            let dir = config.state_dir.clone();
            let ttl = config.handle_max_ttl;
            let issuer = config.fleet.own_issuer.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || {
                    egress_handle::HandleAuthority::open(&dir, ttl)?.with_issuer(issuer)
                })
                .await??,
            )
        };
        let injector = Arc::new(Injector::new(
            handles.clone(),
            secrets.clone(),
            config.secret_wait(),
        ));
        // There is always a CA and a bump stage, so a reload can add the first bump destination.
        let bumper = Arc::new(Bumper::new(ca.clone(), config.ca.leaf_ttl, injector)?);
        let exact: Vec<String> = config
            .policy
            .all_rules()
            .filter(|r| r.rung == crate::policy::Rung::Bump && r.pattern.is_exact())
            .map(|r| r.pattern.to_string())
            .collect();
        bumper.leaves().prewarm(&exact).await;
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
        let sources = Sources {
            resolver: opts.resolver.unwrap_or_else(|| Arc::new(SystemResolver)),
            connector: opts.connector.unwrap_or_else(|| Arc::new(TcpConnector)),
            secrets: secrets.clone(),
            pool: PoolBudget::default(),
        };
        let snapshot = Snapshot::build(config.clone(), &sources)?;
        let auth = AdminAuth::load(&config.admin)?;
        let sandboxes = Registry::load(&config)?;
        let metrics = Metrics::new();
        let fleet_status = match (&config.fleet.source, &config.secrets) {
            (Some(_), Some(crate::config::SecretsConfig::Sds(sds))) => {
                Some(Arc::new(crate::fleet::FleetStatus::new(
                    sds.target.clone(),
                    config.fleet.control_plane_admin.clone(),
                    &metrics,
                )))
            }
            _ => None,
        };
        let mut shared = Shared::new(snapshot, metrics).with_sandboxes(sandboxes);
        if let Some(status) = &fleet_status {
            shared = shared.with_fleet(status.clone());
        }
        let shared = Arc::new(shared);
        background::spawn_revocation_reload(&shared, handles.clone());
        let issuers = Arc::new(IssuerTrust::new(handles.clone(), secrets.clone()));
        // Subscribed before the first computation, so a delivery in between is not missed.
        // Always, with a secret source: a reload may add an issuer whose key it delivers.
        if let Some(store) = &secrets {
            background::spawn_issuer_refresh(store.clone(), issuers.clone(), shared.clone());
        }
        issuers.apply(&config);
        let reloader = Arc::new(Reloader::new(
            shared.clone(),
            sources,
            ca.clone(),
            issuers,
            config.clone(),
        ));
        if let (Some(status), Some(crate::config::SecretsConfig::Sds(sds))) =
            (fleet_status, &config.secrets)
        {
            crate::fleet::restore_kill_switch(&shared);
            let edge = crate::fleet::FleetEdge::new(
                shared.clone(),
                handles.clone(),
                reloader.clone(),
                status,
            );
            streams.0.push(egress_sds::client::spawn_fleet_client(
                crate::fleet::options(sds)?,
                Arc::new(edge),
            )?);
        }
        if let (Some(store), false) = (&secrets, config.upstream.extra_roots_sds.is_empty()) {
            background::spawn_root_refresh(store.clone(), reloader.clone());
        }
        let api = Api::new(ca, bumper.clone(), secrets, handles, &config);
        api.register_metrics(&shared.metrics);
        let admin_ctx = Arc::new(AdminCtx {
            shared: shared.clone(),
            auth,
            ready: AtomicBool::new(false),
            api,
            transport: admin_transport(&config, listeners.admin.as_ref()),
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
        let transparent_addrs = listeners
            .transparent
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let dns_addrs = listeners
            .dns
            .iter()
            .filter_map(|l| l.udp.local_addr().ok())
            .collect();
        Ok(App {
            _streams: streams,
            reloader,
            proxy_addr,
            admin_addr,
            transparent_addrs,
            dns_addrs,
            proxy: listeners.proxy,
            extra_proxy: listeners.extra_proxy,
            transparent: listeners.transparent,
            dns: listeners.dns,
            admin: listeners.admin,
            shared,
            admin_ctx,
            ladder: Arc::new(Ladder { bump: bumper }),
            grace: config.proxy.shutdown_grace,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Validates and swaps in configs while serving (SIGHUP, file changes, tests).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains for the grace period,
    /// and ends what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared.clone();
        let proxy = ProxyListener {
            listener: self.proxy,
            shared: shared.clone(),
            ladder: self.ladder.clone(),
        };
        let mut accept_tasks = vec![tokio::spawn(proxy.run())];
        for listener in self.extra_proxy {
            let l = ProxyListener {
                listener,
                shared: shared.clone(),
                ladder: self.ladder.clone(),
            };
            accept_tasks.push(tokio::spawn(l.run()));
        }
        for listener in self.transparent {
            let l = TransparentListener {
                listener,
                shared: shared.clone(),
                ladder: self.ladder.clone(),
            };
            accept_tasks.push(tokio::spawn(l.run()));
        }
        for d in self.dns {
            let r = GuestResolver {
                udp: d.udp,
                tcp: d.tcp,
                shared: shared.clone(),
            };
            accept_tasks.push(tokio::spawn(r.run()));
        }
        let admin_task = self
            .admin
            .map(|l| tokio::spawn(listeners::admin_loop(l, self.admin_ctx.clone())));
        self.admin_ctx.ready.store(true, Ordering::SeqCst);
        tracing::info!(proxy = %self.proxy_addr, admin = %self.admin_addr.map_or_else(|| "unix socket".to_owned(), |a| a.to_string()), "egress-edge serving");
        shutdown.await;
        tracing::info!(grace = ?self.grace, "shutting down: no new connections, draining");
        self.admin_ctx.ready.store(false, Ordering::SeqCst);
        shared.draining.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
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

/// What the admin API's `Host` check accepts besides loopback: the configured listen address
/// and the address actually bound (they differ for port 0 or when the caller bound it).
fn admin_transport(config: &Config, bound: Option<&AdminListener>) -> AdminTransport {
    match bound {
        Some(AdminListener::Unix(..)) => AdminTransport::Unix,
        Some(AdminListener::Tcp(l)) => {
            let mut addrs: Vec<std::net::IpAddr> =
                l.local_addr().map(|a| a.ip()).into_iter().collect();
            if let crate::config::ListenAddr::Tcp(a) = &config.admin.listen {
                addrs.push(a.ip());
            }
            AdminTransport::Tcp { addrs }
        }
        None => match &config.admin.listen {
            crate::config::ListenAddr::Unix(_) => AdminTransport::Unix,
            crate::config::ListenAddr::Tcp(a) => AdminTransport::Tcp {
                addrs: vec![a.ip()],
            },
        },
    }
}
