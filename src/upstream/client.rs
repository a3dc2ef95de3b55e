//! Pooled upstream HTTP clients over the vetted connector: one constructor for every client
//! the proxy uses (plain, verified TLS, and per-credential mTLS), so pool and HTTP/2 settings
//! cannot drift between them.

use std::sync::Arc;

use crate::body::Body;
use crate::config::Config;
use crate::net::dial::Dialer;
use crate::upstream::budget::PoolBudget;
use crate::upstream::connector::UpstreamConnector;

/// A pooled client whose every new connection goes through the dialer.
pub type HttpClient = hyper_util::client::legacy::Client<UpstreamConnector, Body>;

/// A pooled client over `connector` with the config's timeouts and pool limits: at most
/// `upstream.max_connections_per_host` connections per host and port (enforced by the
/// connector, so requests beyond it wait for a pooled connection instead of opening more),
/// of which at most `upstream.max_idle_per_host` are kept idle; and, counted in the
/// process-wide `budget`, no connection is pooled while `upstream.max_pooled_total` are open.
pub fn http_client(
    config: &Config,
    connector: UpstreamConnector,
    budget: &PoolBudget,
) -> HttpClient {
    let up = &config.upstream;
    let connector = connector
        .with_host_limit(up.max_connections_per_host, up.response_header_timeout)
        .with_pool_budget(budget.clone(), up.max_pooled_total);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(up.pool_idle_timeout)
        .pool_max_idle_per_host(up.max_idle_per_host)
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
pub fn tls_client(
    config: &Config,
    dialer: &Dialer,
    budget: &PoolBudget,
    tls: rustls::ClientConfig,
) -> HttpClient {
    http_client(
        config,
        UpstreamConnector::new(
            dialer.clone(),
            Some(Arc::new(tls)),
            config.proxy.handshake_timeout,
        ),
        budget,
    )
}
