//! Pooled upstream HTTP clients: plain HTTP for absolute-form requests, verified TLS for
//! re-originated bumped requests.
//!
//! The connector dials through the snapshot's [`Dialer`](crate::net::dial::Dialer) — so every new
//! upstream connection is resolved, vetted and connected in that one place — and, for `https`,
//! verifies the upstream certificate against the system roots plus `upstream.extra_roots`
//! (there is no switch to skip verification). It does not decide policy and does not inject.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::net::dial::{DialError, Dialer};
use crate::net::host::Host;

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

/// tower `Service<Uri>` for hyper-util's pooled client.
#[derive(Clone)]
pub struct UpstreamConnector {
    dialer: Dialer,
    tls: Option<TlsConnector>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    pub fn new(
        dialer: Dialer,
        tls: Option<Arc<rustls::ClientConfig>>,
        handshake_timeout: Duration,
    ) -> Self {
        UpstreamConnector {
            dialer,
            tls: tls.map(TlsConnector::from),
            handshake_timeout,
        }
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<MaybeTls>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let raw_host = uri
                .host()
                .ok_or_else(|| ConnectError::BadUri(uri.to_string()))?;
            let host = Host::parse(raw_host).map_err(|e| ConnectError::BadUri(e.to_string()))?;
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let dialed = dialer.dial(&host, port).await?;
            if !https {
                return Ok(TokioIo::new(MaybeTls::Plain(dialed.stream)));
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
            let shown = host.to_string();
            match tokio::time::timeout(timeout, tls.connect(server_name, dialed.stream)).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(MaybeTls::Tls(Box::new(stream)))),
                Ok(Err(e)) => Err(ConnectError::Tls {
                    host: shown,
                    cause: tls_cause(&e),
                }),
                Err(_) => Err(ConnectError::TlsTimeout { host: shown }),
            }
        })
    }
}
