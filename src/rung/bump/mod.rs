//! The bump rung: terminate the guest's TLS with a per-SNI leaf and re-originate each request.
//!
//! A bump session reads the ClientHello, checks the SNI against the rule that allowed the
//! CONNECT host, completes the handshake with a leaf from the deployment CA (ALPN `h2` and
//! `http/1.1`), then serves HTTP on the session; each request is handled by `request.rs`,
//! which hands credentials to the injector it is given. A session carries at most
//! `BUMP_MAX_CONCURRENT_STREAMS` HTTP/2 streams at once; request heads are timed by
//! `proxy.header_read_timeout` and the idle session by `proxy.idle_timeout` (`timing.rs`).
//! Upstream TLS (verification, pooling) lives in `upstream`; credentials in `credential`.
//! This module does not decide rungs and never falls back to a tunnel.

mod request;
mod timing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use egress_ca::{DeploymentCa, LeafCache};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::{Acceptor, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, server::ProducesTickets};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use crate::config::defaults;
use crate::context::ReqCtx;
use crate::credential::Injector;
use crate::net::host::Host;
use crate::observe::access_log::Outcome;
use crate::policy::Decision;
use crate::refusal::Kind;
use crate::rung::sni;
use crate::state::sandboxes::Sandbox;
use crate::upstream::metered::CountedIo;
use crate::upstream::tunnel::Stops;

/// Mints leaves and terminates guest TLS for bumped destinations.
#[derive(Debug)]
pub struct Bumper {
    leaves: LeafCache,
    provider: Arc<rustls::crypto::CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    configs: moka::sync::Cache<String, (Arc<CertifiedKey>, Arc<ServerConfig>)>,
    /// Resolves no certificate: completing a handshake with it sends the guest a fatal alert.
    refusing: Arc<ServerConfig>,
    /// Credentials for bumped requests.
    injector: Arc<Injector>,
}

#[derive(Debug)]
struct NoCert;

impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BumpError {
    #[error("cannot set up TLS termination: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot mint a leaf: {0}")]
    Leaf(#[from] egress_ca::CaError),
}

/// A fixed-leaf resolver: one `ServerConfig` per leaf, so the leaf never depends on state the
/// resolver would have to look up synchronously mid-handshake.
#[derive(Debug)]
struct FixedLeaf(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedLeaf {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl Bumper {
    pub fn new(
        ca: Arc<DeploymentCa>,
        leaf_ttl: std::time::Duration,
        injector: Arc<Injector>,
    ) -> Result<Bumper, BumpError> {
        let provider = crate::crypto::provider();
        let refusing = Arc::new(
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(NoCert)),
        );
        Ok(Bumper {
            refusing,
            leaves: LeafCache::new(ca, leaf_ttl, egress_ca::DEFAULT_LEAF_CACHE_CAPACITY),
            provider,
            sessions: ServerSessionMemoryCache::new(16 * 1024),
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            configs: moka::sync::Cache::new(egress_ca::DEFAULT_LEAF_CACHE_CAPACITY),
            injector,
        })
    }

    pub fn leaves(&self) -> &LeafCache {
        &self.leaves
    }

    pub fn ca(&self) -> &Arc<DeploymentCa> {
        self.leaves.ca()
    }

    /// The TLS server config for `name`, reusing one per leaf so session tickets and the
    /// session cache are shared by every connection.
    async fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, BumpError> {
        let leaf = self.leaves.get(name).await?;
        if let Some((cached_leaf, cfg)) = self.configs.get(name)
            && Arc::ptr_eq(&cached_leaf, &leaf)
        {
            return Ok(cfg);
        }
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedLeaf(leaf.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = self.sessions.clone();
        cfg.ticketer = self.ticketer.clone();
        let cfg = Arc::new(cfg);
        self.configs.insert(name.to_owned(), (leaf, cfg.clone()));
        Ok(cfg)
    }

    /// Runs one bump session to completion and logs it. `guest` is the guest's connection
    /// positioned at its ClientHello (a CONNECT's upgraded stream, or a transparent
    /// connection with the hello the frontend read put back in front).
    pub async fn session<G>(self: Arc<Self>, ctx: ReqCtx, host: Host, decision: Decision, guest: G)
    where
        G: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ReqCtx {
            conn,
            snap,
            port,
            mut access,
            kill,
            sandbox,
            ..
        } = ctx;
        let shared = conn.shared.clone();
        let timeout = snap.config.proxy.handshake_timeout;
        let accept = LazyConfigAcceptor::new(Acceptor::default(), guest);
        let start_hs = match tokio::time::timeout(timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                access.ev.error = Some(e.to_string());
                return access.finish(Outcome::NotTls);
            }
            Err(_) => return access.finish(Outcome::HandshakeTimeout),
        };
        let sni_raw = start_hs.client_hello().server_name().map(str::to_owned);
        access.ev.sni = sni_raw.clone();
        // Without SNI (IP-literal destinations) the leaf names the CONNECT host itself.
        let leaf_host = match sni_raw.as_deref() {
            None => host.clone(),
            Some(_) => match sni::check(
                &snap,
                sandbox.as_deref().map(Sandbox::who),
                sni_raw.as_deref(),
                port,
                &decision,
            ) {
                Ok(h) => h,
                Err(cause) => {
                    // A config with no certificate makes rustls answer with a fatal alert, so
                    // the guest sees a TLS refusal rather than a reset.
                    let _ = start_hs.into_stream(self.refusing.clone()).await;
                    shared.metrics.refusal(Kind::SniMismatch);
                    access.ev.error = Some(cause);
                    return access.finish(Outcome::SniMismatch);
                }
            },
        };
        let leaf_name = match &leaf_host {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        };
        let config = match self.server_config(&leaf_name).await {
            Ok(c) => c,
            Err(e) => {
                let _ = start_hs.into_stream(self.refusing.clone()).await;
                access.ev.error = Some(e.to_string());
                return access.finish(Outcome::LeafMintFailed);
            }
        };
        let tls = match tokio::time::timeout(timeout, start_hs.into_stream(config)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                access.ev.error = Some(e.to_string());
                return access.finish(Outcome::GuestTlsFailed);
            }
            Err(_) => return access.finish(Outcome::HandshakeTimeout),
        };
        let session = Arc::new(request::Session {
            conn,
            snap: snap.clone(),
            connect_host: host,
            port,
            decision,
            stops: Stops {
                idle: snap.config.proxy.idle_timeout,
                shutdown: shared.hard_stop.clone(),
                kill: kill.clone(),
            },
            injector: self.injector.clone(),
            sandbox: sandbox.clone(),
        });
        let activity = Arc::new(timing::Activity::default());
        let in_flight = activity.clone();
        let svc = hyper::service::service_fn(move |req| {
            let busy = in_flight.begin();
            let session = session.clone();
            async move {
                let resp = request::handle(req, session).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| timing::hold(body, busy)))
            }
        });
        let proxy = &snap.config.proxy;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(timing::HeadTimer::new(
                activity.clone(),
                proxy.header_read_timeout,
                proxy.idle_timeout,
            ))
            .header_read_timeout(proxy.header_read_timeout)
            .max_buf_size(proxy.max_header_bytes);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(defaults::BUMP_MAX_CONCURRENT_STREAMS)
            // Pings after idle_timeout without reads; a peer that does not answer is gone.
            .keep_alive_interval(proxy.idle_timeout)
            // HTTP/2 counts 32 bytes per field on top of name and value; the exact limit is
            // request.rs's count, this only bounds what the decoder buffers.
            .max_header_list_size(
                u32::try_from(proxy.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            );
        shared.metrics.active_tunnels.inc();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tls = CountedIo::new(tls, up.clone(), down.clone());
        let guest = timing::GuestIo::new(tls, activity.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(guest), svc);
        tokio::pin!(conn);
        let outcome = tokio::select! {
            r = conn.as_mut() => match r {
                Ok(()) => Outcome::Ok,
                // The guest closed without TLS close_notify or reset the connection between
                // requests: how most clients end a session, not a failure.
                Err(e) if guest_went_away(&*e) => Outcome::Ok,
                Err(e) => {
                    access.ev.error = Some(e.to_string());
                    Outcome::IoError
                }
            },
            () = activity.no_request_within(proxy.header_read_timeout) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.as_mut()).await;
                Outcome::HeaderTimeout
            }
            () = activity.idle(proxy.idle_timeout) => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => Outcome::IdleTimeout,
                    () = shared.hard_stop.cancelled() => Outcome::Shutdown,
                    end = kill.fired() => end.into(),
                }
            }
            () = shared.draining.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => Outcome::Shutdown,
                    () = shared.hard_stop.cancelled() => Outcome::Shutdown,
                    end = kill.fired() => end.into(),
                }
            }
            end = kill.fired() => end.into(),
        };
        shared.metrics.active_tunnels.dec();
        // TLS bytes on the guest side, handshake excluded.
        access.ev.bytes_up = up.load(Ordering::Relaxed);
        access.ev.bytes_down = down.load(Ordering::Relaxed);
        access.finish(outcome);
    }
}

/// Whether a session error only says the guest went away (EOF without close_notify, reset).
fn guest_went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return crate::upstream::tunnel::is_closing(io);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return true;
        }
        cur = err.source();
    }
    false
}
