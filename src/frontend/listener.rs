//! Accepting guest connections and serving HTTP/1.1 proxy requests on them.
//!
//! Enforces the connection limit, shared with the transparent listener (refusing the excess with a `proxy_overloaded` body rather
//! than leaving it in the backlog) and the header read timeout, bounds hyper's header buffer
//! at `max_header_bytes` (the exact header-section count is `forward_proxy`'s), and
//! drains on shutdown: stop accepting, let in-flight requests finish, close idle keep-alive
//! connections. Tunnels and bump sessions spawned from a connection are tracked by the same
//! task tracker and end at hard stop. It makes no policy decisions.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::body::Body;
use crate::context::ConnCtx;
use crate::frontend::accept::{self, Accepted, Acceptor};
use crate::frontend::forward_proxy;
use crate::observe::access_log::Outcome;
use crate::observe::rate_limit::RateLimited;
use crate::refusal::{self, Kind, Refusal};
use crate::rung::Ladder;
use crate::state::Shared;

/// The explicit proxy listener and what its connections are served with.
#[derive(Debug)]
pub struct ProxyListener {
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    pub ladder: Arc<Ladder>,
}

impl ProxyListener {
    /// Accepts until `shared.draining` fires.
    pub async fn run(self) {
        let mut acceptor = Acceptor::new(self.listener, "proxy");
        loop {
            let (stream, peer) = match acceptor.next(&self.shared).await {
                Accepted::Conn(s, p) => (s, p),
                Accepted::Shed(s) => {
                    self.shared.tasks.spawn(overloaded(s));
                    continue;
                }
                Accepted::Draining => break,
            };
            let Some(ctx) = accept::connection(&self.shared, &stream, peer) else {
                self.shared.tasks.spawn(overloaded(stream));
                continue;
            };
            self.shared
                .tasks
                .spawn(serve(stream, ctx, self.ladder.clone()));
        }
    }
}

static HEADER_TIMEOUTS: RateLimited = RateLimited::new(Duration::from_secs(1));

async fn overloaded(mut stream: TcpStream) {
    let r = Refusal::new(Kind::Overloaded, "", 0, "proxy.max_connections");
    let _ = stream.write_all(&refusal::raw_http1(&r)).await;
    let _ = stream.shutdown().await;
}

async fn serve(stream: TcpStream, ctx: Arc<ConnCtx>, ladder: Arc<Ladder>) {
    let svc_ctx = ctx.clone();
    let service =
        service_fn(move |req| forward_proxy::handle(req, svc_ctx.clone(), ladder.clone()));
    serve_http1(stream, &ctx, service).await;
}

/// Serves HTTP/1.1 (upgrades allowed) on a guest connection of either listener, with the
/// proxy's header buffer bound and header read timeout, until it ends or the drain closes it.
/// A head that misses `proxy.header_read_timeout` (slowloris) is counted and logged.
pub(super) async fn serve_http1<S>(stream: TcpStream, conn: &ConnCtx, service: S)
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cfg = conn.shared.snapshot().config.clone();
    let shared = &conn.shared;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.proxy.header_read_timeout)
        .max_buf_size(cfg.proxy.max_header_bytes)
        .keep_alive(true);
    let served = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    shared.metrics.connection(None, None, Outcome::HeaderTimeout, None);
                    if let Some(suppressed) = HEADER_TIMEOUTS.check() {
                        tracing::warn!(client = %conn.client, suppressed, "guest connection closed: no complete request head within proxy.header_read_timeout");
                    }
                } else {
                    tracing::debug!(client = %conn.client, error = %e, "guest connection ended with an error");
                }
            }
        }
        () = shared.draining.cancelled() => {
            served.as_mut().graceful_shutdown();
            tokio::select! {
                _ = served.as_mut() => {}
                () = shared.hard_stop.cancelled() => {}
            }
        }
    }
}
