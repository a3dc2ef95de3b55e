//! State shared by every connection: the current policy snapshot, the kill switch, shutdown
//! signals and the task tracker.
//!
//! A [`Snapshot`] is immutable; a reload builds a new one and swaps it in, so a connection that
//! took a snapshot keeps the decision it was made with. This module holds state; it does not
//! serve traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bump::tls::TrustError;
use crate::config::Config;
use crate::dial::Dialer;
use crate::metrics::Metrics;
use crate::upstream::UpstreamConnector;

/// One consistent view of configuration for a connection's lifetime.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub dialer: Dialer,
    /// Pooled plain-HTTP client for absolute-form requests.
    pub plain: HttpClient,
    /// Verified-TLS clients for bumped requests (ALPN h2+http/1.1, and http/1.1 only for
    /// upgrades); `None` when no destination is bumped.
    pub tls: Option<HttpClient>,
    pub tls_h1: Option<HttpClient>,
    pub roots: Option<Arc<rustls::RootCertStore>>,
}

pub type HttpClient = hyper_util::client::legacy::Client<UpstreamConnector, crate::refusal::Body>;

impl Snapshot {
    pub fn new(
        config: Arc<Config>,
        dialer: Dialer,
        extra_pems: &[(String, String)],
    ) -> Result<Snapshot, TrustError> {
        let plain = http_client(
            &config,
            UpstreamConnector::new(dialer.clone(), None, config.proxy.handshake_timeout),
        );
        let (mut tls, mut tls_h1, mut roots) = (None, None, None);
        if config.policy.has_bump() {
            let store = Arc::new(crate::bump::tls::root_store(
                &config.upstream.extra_roots,
                extra_pems,
            )?);
            let both = crate::bump::tls::client_config(store.clone(), &[b"h2", b"http/1.1"])?;
            let h1 = crate::bump::tls::client_config(store.clone(), &[b"http/1.1"])?;
            tls = Some(tls_client(&config, &dialer, both));
            tls_h1 = Some(tls_client(&config, &dialer, h1));
            roots = Some(store);
        }
        Ok(Snapshot {
            config,
            dialer,
            plain,
            tls,
            tls_h1,
            roots,
        })
    }
}

/// A pooled client over `connector` with the config's timeouts.
pub fn http_client(config: &Config, connector: UpstreamConnector) -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(config.upstream.pool_idle_timeout)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        // Streamed downloads over an HTTP/2 upstream are window-bound with the defaults; let
        // the window follow the bandwidth-delay product and carry larger frames.
        .http2_adaptive_window(true)
        .http2_max_frame_size(256 * 1024)
        .build(connector)
}

/// A verified-TLS pooled client (used per snapshot and, with a client certificate, per
/// credential).
pub fn tls_client(config: &Config, dialer: &Dialer, tls: rustls::ClientConfig) -> HttpClient {
    http_client(
        config,
        UpstreamConnector::new(
            dialer.clone(),
            Some(Arc::new(tls)),
            config.proxy.handshake_timeout,
        ),
    )
}

/// Denies new egress and closes open tunnels while enabled.
#[derive(Debug, Default)]
pub struct KillSwitch {
    enabled: AtomicBool,
    /// Cancelled (and replaced) when the switch is turned on; tunnels hold the current one.
    generation: Mutex<CancellationToken>,
}

impl KillSwitch {
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// The token that fires when the switch is next turned on.
    pub fn token(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, on: bool) {
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was = self.enabled.swap(on, Ordering::SeqCst);
        if on && !was {
            generation.cancel();
            *generation = CancellationToken::new();
        }
    }
}

#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    pub kill: KillSwitch,
    /// Stop accepting; ask keep-alive connections to close.
    pub draining: CancellationToken,
    /// Grace period over: end tunnels and sessions now.
    pub hard_stop: CancellationToken,
    pub tasks: TaskTracker,
    pub metrics: Metrics,
    pub injector: Option<Arc<crate::inject::Injector>>,
}

impl Shared {
    pub fn new(
        snapshot: Snapshot,
        metrics: Metrics,
        injector: Option<Arc<crate::inject::Injector>>,
    ) -> Shared {
        Shared {
            current: ArcSwap::from_pointee(snapshot),
            kill: KillSwitch::default(),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics,
            injector,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
