//! The connector behind the pooled upstream clients: plain HTTP for absolute-form requests,
//! verified TLS for re-originated bumped requests.
//!
//! The connector dials through the snapshot's [`Dialer`](crate::net::dial::Dialer) — so every new
//! upstream connection is resolved, vetted and connected in that one place — and, for `https`,
//! verifies the upstream certificate against the system roots plus `upstream.extra_roots`
//! (there is no switch to skip verification). Before dialing it takes one of the
//! `upstream.max_connections_per_host` slots for the host and port ([`HostLimits`]); the slot
//! lives inside the returned stream, so it is held exactly as long as the connection (busy or
//! pooled) and freed when the pool or the upstream drops it. A connect that finds every slot
//! taken waits for one, at most `upstream.response_header_timeout`. It does not decide policy
//! and does not inject.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::net::dial::{DialError, Dialer};
use crate::net::host::Host;
use crate::upstream::budget::{Counted, PoolBudget};

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("TLS handshake with {host} failed: {cause}")]
    Tls { host: String, cause: TlsCause },
    #[error("TLS handshake with {host} timed out")]
    TlsTimeout { host: String },
    #[error("upstream URI has no usable host: {0}")]
    BadUri(String),
    #[error(
        "all {max} connections to {host}:{port} stayed busy for {waited:?} (upstream.max_connections_per_host)"
    )]
    HostBusy {
        host: String,
        port: u16,
        max: usize,
        waited: Duration,
    },
}

/// The verification cause reported in `upstream_tls` refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsCause {
    Expired,
    UnknownIssuer,
    NameMismatch,
    Other(String),
}

impl std::fmt::Display for TlsCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsCause::Expired => f.write_str("certificate expired"),
            TlsCause::UnknownIssuer => {
                f.write_str("unknown issuer (certificate not signed by a trusted CA)")
            }
            TlsCause::NameMismatch => f.write_str("certificate not valid for this name"),
            TlsCause::Other(s) => write!(f, "handshake failure: {s}"),
        }
    }
}

fn tls_cause(e: &io::Error) -> TlsCause {
    use rustls::CertificateError as C;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::Expired | C::ExpiredContext { .. } => TlsCause::Expired,
            C::UnknownIssuer => TlsCause::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsCause::NameMismatch,
            other => TlsCause::Other(format!("invalid certificate: {other:?}")),
        },
        Some(other) => TlsCause::Other(other.to_string()),
        None => TlsCause::Other(e.to_string()),
    }
}

/// Finds our [`ConnectError`] inside a client error chain.
pub fn find_connect_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

/// The address an upstream connection was dialed to, attached to every response that came
/// over it (hyper-util copies connection extras into response extensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialedAddr(pub std::net::SocketAddr);

/// A plain or TLS upstream stream.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        let (tcp, h2) = match self {
            MaybeTls::Plain(s) => (s, false),
            MaybeTls::Tls(t) => (t.get_ref().0, t.get_ref().1.alpn_protocol() == Some(b"h2")),
        };
        let mut c = Connected::new();
        if let Ok(addr) = tcp.peer_addr() {
            c = c.extra(DialedAddr(addr));
        }
        if h2 { c.negotiated_h2() } else { c }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

type HostKey = (String, u16);

/// Per-(host, port) connection slots shared by a connector and its clones (one pooled client).
#[derive(Clone, Debug)]
pub struct HostLimits {
    max: usize,
    /// How long a connect waits for a free slot.
    wait: Duration,
    slots: Arc<Mutex<HashMap<HostKey, Arc<Semaphore>>>>,
}

impl HostLimits {
    pub fn new(max: usize, wait: Duration) -> HostLimits {
        HostLimits {
            max: max.max(1),
            wait,
            slots: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostKey, Arc<Semaphore>>> {
        // The map holds no invariant a panicking holder could break.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (bounded) for a slot to `host:port`.
    async fn acquire(&self, host: &str, port: u16) -> Result<HostSlot, ConnectError> {
        let key = (host.to_owned(), port);
        let sem = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
            .clone();
        let busy = || ConnectError::HostBusy {
            host: host.to_owned(),
            port,
            max: self.max,
            waited: self.wait,
        };
        let permit = match tokio::time::timeout(self.wait, sem.acquire_owned()).await {
            Ok(Ok(p)) => p,
            // The semaphores are never closed; treat it like a slot that never came free.
            Ok(Err(_)) | Err(_) => return Err(busy()),
        };
        Ok(HostSlot {
            permit: Some(permit),
            key,
            limits: self.clone(),
        })
    }

    /// Forgets `key`'s semaphore once nothing holds or waits for it, so the map stays as small
    /// as the set of hosts with open connections.
    fn release(&self, key: &HostKey) {
        let mut slots = self.lock();
        if slots.get(key).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(key);
        }
    }

    #[cfg(test)]
    fn tracked_hosts(&self) -> usize {
        self.lock().len()
    }
}

/// One connection's slot: freed when the connection is dropped.
#[derive(Debug)]
struct HostSlot {
    permit: Option<OwnedSemaphorePermit>,
    key: HostKey,
    limits: HostLimits,
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.limits.release(&self.key);
    }
}

/// An upstream connection holding its per-host slot and its place in the pool budget.
#[derive(Debug)]
pub struct UpstreamStream {
    io: MaybeTls,
    _slot: HostSlot,
    counted: Counted,
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let connected = self.io.connected();
        // Over `upstream.max_pooled_total`: serve this request, then close. HTTP/2 too (most
        // real APIs speak it, so exempting it would void the bound); requests that were
        // waiting to share such a connection open their own
        // (`bump::an_h2_upstream_over_the_pool_budget_serves_a_concurrent_burst`).
        if !self.counted.poolable() {
            connected.poison();
        }
        connected
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// tower `Service<Uri>` for hyper-util's pooled client.
#[derive(Clone)]
pub struct UpstreamConnector {
    dialer: Dialer,
    tls: Option<TlsConnector>,
    handshake_timeout: Duration,
    limits: HostLimits,
    budget: PoolBudget,
    max_pooled: usize,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("tls", &self.tls.is_some())
            .field("max_per_host", &self.limits.max)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    /// A connector with the default per-host cap; [`http_client`](super::client::http_client)
    /// sets the configured one.
    pub fn new(
        dialer: Dialer,
        tls: Option<Arc<rustls::ClientConfig>>,
        handshake_timeout: Duration,
    ) -> Self {
        UpstreamConnector {
            dialer,
            tls: tls.map(TlsConnector::from),
            handshake_timeout,
            limits: HostLimits::new(
                crate::config::defaults::MAX_CONNECTIONS_PER_HOST,
                crate::config::defaults::RESPONSE_HEADER_TIMEOUT,
            ),
            budget: PoolBudget::default(),
            max_pooled: crate::config::defaults::MAX_POOLED_TOTAL,
        }
    }

    /// Counts this connector's connections in `budget`; those opened while `max` or more
    /// are open are closed after their request instead of pooled.
    pub fn with_pool_budget(mut self, budget: PoolBudget, max: usize) -> Self {
        self.budget = budget;
        self.max_pooled = max;
        self
    }

    /// Caps open connections per host and port at `max`; a connect waits at most `wait` for
    /// a free slot.
    pub fn with_host_limit(mut self, max: usize, wait: Duration) -> Self {
        self.limits = HostLimits::new(max, wait);
        self
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        let limits = self.limits.clone();
        let budget = self.budget.clone();
        let max_pooled = self.max_pooled;
        Box::pin(async move {
            let raw_host = uri
                .host()
                .ok_or_else(|| ConnectError::BadUri(uri.to_string()))?;
            let host = Host::parse(raw_host).map_err(|e| ConnectError::BadUri(e.to_string()))?;
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let shown = host.to_string();
            let slot = limits.acquire(&shown, port).await?;
            let dialed = dialer.dial(&host, port).await?;
            let stream = |io| {
                TokioIo::new(UpstreamStream {
                    io,
                    _slot: slot,
                    counted: budget.admit(max_pooled),
                })
            };
            if !https {
                return Ok(stream(MaybeTls::Plain(dialed.stream)));
            }
            let Some(tls) = tls else {
                return Err(ConnectError::BadUri(
                    "https upstream without TLS client".into(),
                ));
            };
            let server_name = match &host {
                Host::Name(n) => ServerName::try_from(n.clone())
                    .map_err(|e| ConnectError::BadUri(e.to_string()))?,
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            };
            match tokio::time::timeout(timeout, tls.connect(server_name, dialed.stream)).await {
                Ok(Ok(tls)) => Ok(stream(MaybeTls::Tls(Box::new(tls)))),
                Ok(Err(e)) => Err(ConnectError::Tls {
                    host: shown,
                    cause: tls_cause(&e),
                }),
                Err(_) => Err(ConnectError::TlsTimeout { host: shown }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_slots_cap_wait_and_free() {
        let limits = HostLimits::new(2, Duration::from_millis(200));
        let a = limits.acquire("a.test", 443).await.unwrap();
        let b = limits.acquire("a.test", 443).await.unwrap();
        // Another port is another host.
        let other = limits.acquire("a.test", 8443).await.unwrap();
        assert_eq!(limits.tracked_hosts(), 2);
        // The third connection to a.test:443 waits, and gives up after `wait`.
        let err = limits.acquire("a.test", 443).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::HostBusy { max: 2, .. }),
            "{err}"
        );
        // A waiter gets the slot a dropped connection frees.
        let waiter = tokio::spawn({
            let limits = limits.clone();
            async move { limits.acquire("a.test", 443).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        waiter.await.unwrap().unwrap();
        drop((b, other));
        assert_eq!(limits.tracked_hosts(), 0, "idle hosts are forgotten");
    }
}
