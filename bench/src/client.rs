//! Benchmark clients: TCP (+ a hand-written HTTP CONNECT when going through the proxy), then
//! TLS with the right roots and SNI, then a hyper HTTP/1.1 or HTTP/2 connection.
//!
//! Client TLS session resumption is disabled unless a target asks for it
//! ([`Target::with_resumption`]), so every new connection is a full handshake by default. A
//! target may also take a never-used name for each connection ([`Target::with_fresh_names`]),
//! so each one reaches the proxy with an SNI it has not seen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Which path a target takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Direct,
    Tunnel,
    Bump,
    /// Bump to a destination with a credential, a handle on every request.
    BumpInject,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Tunnel => "tunnel",
            Route::Bump => "bump",
            Route::BumpInject => "bump+inject",
        }
    }
}

/// HTTP version spoken over the TLS connection (pinned with ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
        }
    }
}

/// Where and how to connect for one route.
#[derive(Clone)]
pub struct Target {
    pub route: Route,
    /// TCP destination: the upstream (direct) or the proxy.
    dial: SocketAddr,
    /// `host:port` for CONNECT, when going through the proxy.
    connect: Option<String>,
    /// SNI and Host.
    server_name: ServerName<'static>,
    /// `host:port` for the Host header / `:authority`.
    authority: String,
    /// `Authorization` sent on every request, if any.
    auth: Option<HeaderValue>,
    tls_h1: TlsConnector,
    tls_h2: TlsConnector,
    roots: Arc<RootCertStore>,
    /// A new name per connection instead of `server_name`.
    fresh: Option<Arc<FreshNames>>,
    /// TLS handshakes completed, and how many of them were resumptions (shared by clones).
    handshakes: Arc<(AtomicUsize, AtomicUsize)>,
}

/// Every fresh name of a target has been handed out: the loop using it is over, not failed.
#[derive(Debug)]
pub struct NamesUsedUp;

impl std::fmt::Display for NamesUsedUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fresh names used up")
    }
}

impl std::error::Error for NamesUsedUp {}

/// `{prefix}{i}.{domain}` for i = 0, 1, ... up to a limit, each handed out once.
#[derive(Debug)]
pub struct FreshNames {
    prefix: String,
    domain: String,
    limit: usize,
    next: AtomicUsize,
}

impl FreshNames {
    pub fn new(prefix: &str, domain: &str, limit: usize) -> Arc<FreshNames> {
        Arc::new(FreshNames {
            prefix: prefix.to_owned(),
            domain: domain.to_owned(),
            limit,
            next: AtomicUsize::new(0),
        })
    }

    /// The `i`-th name.
    pub fn name(prefix: &str, domain: &str, i: usize) -> String {
        format!("{prefix}{i}.{domain}")
    }

    fn take(&self) -> Option<String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.limit).then(|| FreshNames::name(&self.prefix, &self.domain, i))
    }

    /// How many were handed out (at most the limit).
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed).min(self.limit)
    }

    pub fn exhausted(&self) -> bool {
        self.next.load(Ordering::Relaxed) >= self.limit
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("route", &self.route)
            .field("dial", &self.dial)
            .field("connect", &self.connect)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

fn connector(roots: &Arc<RootCertStore>, alpn: &[u8], resume: bool) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(cfg)))
}

pub fn root_store(ca: CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).context("adding a trust root")?;
    Ok(Arc::new(roots))
}

impl Target {
    /// `via_proxy`: CONNECT through this proxy address; else dial `upstream` directly.
    pub fn new(
        route: Route,
        host: &str,
        upstream: SocketAddr,
        via_proxy: Option<SocketAddr>,
        roots: &Arc<RootCertStore>,
    ) -> Result<Target> {
        let authority = format!("{host}:{}", upstream.port());
        Ok(Target {
            route,
            dial: via_proxy.unwrap_or(upstream),
            connect: via_proxy.map(|_| authority.clone()),
            server_name: ServerName::try_from(host.to_owned())
                .map_err(|e| anyhow!("server name {host}: {e}"))?,
            authority,
            auth: None,
            tls_h1: connector(roots, b"http/1.1", false)?,
            tls_h2: connector(roots, b"h2", false)?,
            roots: roots.clone(),
            fresh: None,
            handshakes: Arc::default(),
        })
    }

    /// The same target resuming TLS sessions (rustls's in-memory client store, shared by every
    /// clone of the returned target): after the first connection to a name, handshakes are
    /// resumptions the server accepts with a ticket or its session cache.
    pub fn with_resumption(mut self) -> Result<Target> {
        self.tls_h1 = connector(&self.roots, b"http/1.1", true)?;
        self.tls_h2 = connector(&self.roots, b"h2", true)?;
        self.handshakes = Arc::default();
        Ok(self)
    }

    /// (resumed, all) TLS handshakes this target (and its clones) completed.
    pub fn handshakes(&self) -> (usize, usize) {
        (
            self.handshakes.1.load(Ordering::Relaxed),
            self.handshakes.0.load(Ordering::Relaxed),
        )
    }

    /// The same target, each connection to the next of `names` (for SNI, CONNECT and Host).
    pub fn with_fresh_names(mut self, names: Arc<FreshNames>) -> Target {
        self.fresh = Some(names);
        self
    }

    /// Whether every fresh name has been handed out (never, without fresh names).
    pub fn names_exhausted(&self) -> bool {
        self.fresh.as_ref().is_some_and(|f| f.exhausted())
    }

    /// The SNI and `host:port` of the next connection.
    fn next_name(&self) -> Result<(ServerName<'static>, String)> {
        let Some(fresh) = &self.fresh else {
            return Ok((self.server_name.clone(), self.authority.clone()));
        };
        let name = fresh.take().ok_or(NamesUsedUp)?;
        let port = self.authority.rsplit_once(':').map_or("", |(_, p)| p);
        let authority = format!("{name}:{port}");
        let sni = ServerName::try_from(name).map_err(|e| anyhow!("server name: {e}"))?;
        Ok((sni, authority))
    }

    /// Sends `Authorization: Bearer <token>` on every request (marked sensitive).
    pub fn with_bearer(mut self, token: &str) -> Result<Target> {
        let mut v = HeaderValue::try_from(format!("Bearer {token}"))
            .context("the bearer token is not a valid header value")?;
        v.set_sensitive(true);
        self.auth = Some(v);
        Ok(self)
    }

    /// TCP connect (+ CONNECT) + TLS handshake, end to end.
    pub async fn open_tls(&self, proto: Proto) -> Result<TlsStream<TcpStream>> {
        Ok(self.open_named(proto).await?.0)
    }

    /// [`Target::open_tls`], also returning the `host:port` the connection is for.
    async fn open_named(&self, proto: Proto) -> Result<(TlsStream<TcpStream>, String)> {
        let (server_name, authority) = self.next_name()?;
        let mut tcp = TcpStream::connect(self.dial)
            .await
            .with_context(|| format!("connecting to {}", self.dial))?;
        tcp.set_nodelay(true)?;
        if self.connect.is_some() {
            http_connect(&mut tcp, &authority).await?;
        }
        let tls = match proto {
            Proto::H1 => &self.tls_h1,
            Proto::H2 => &self.tls_h2,
        };
        let stream = tls
            .connect(server_name, tcp)
            .await
            .with_context(|| format!("{} TLS handshake", self.route.label()))?;
        self.handshakes.0.fetch_add(1, Ordering::Relaxed);
        if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.handshakes.1.fetch_add(1, Ordering::Relaxed);
        }
        let alpn = stream.get_ref().1.alpn_protocol();
        let want: &[u8] = match proto {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        };
        if alpn != Some(want) {
            bail!(
                "{}: ALPN negotiated {:?}, wanted {}",
                self.route.label(),
                alpn.map(String::from_utf8_lossy),
                String::from_utf8_lossy(want)
            );
        }
        Ok((stream, authority))
    }

    /// A ready HTTP connection.
    pub async fn open(&self, proto: Proto) -> Result<Conn> {
        Ok(self.open_timed(proto).await?.0)
    }

    /// A ready HTTP connection, and how long TCP connect (+ CONNECT) + TLS took.
    pub async fn open_timed(&self, proto: Proto) -> Result<(Conn, Duration)> {
        let t0 = Instant::now();
        let (tls, authority) = self.open_named(proto).await?;
        let hs = t0.elapsed();
        Ok((
            Conn::handshake(tls, proto, authority, self.auth.clone()).await?,
            hs,
        ))
    }
}

/// `CONNECT authority`, reading the response head byte-exactly (nothing follows it before the
/// client's ClientHello).
async fn http_connect(tcp: &mut TcpStream, authority: &str) -> Result<()> {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "proxy closed during CONNECT {authority} (read {:?})",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("CONNECT response head over 16 KiB");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("CONNECT {authority} refused: {status_line:?}");
    }
    if end != buf.len() {
        bail!(
            "proxy sent {} bytes after the CONNECT response",
            buf.len() - end
        );
    }
    Ok(())
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// One HTTP connection (its driver runs on a spawned task).
pub struct Conn {
    sender: Sender,
    authority: String,
    auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Conn {
    async fn handshake(
        tls: TlsStream<TcpStream>,
        proto: Proto,
        authority: String,
        auth: Option<HeaderValue>,
    ) -> Result<Conn> {
        let io = TokioIo::new(tls);
        let sender = match proto {
            Proto::H1 => {
                let (s, conn) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(s)
            }
            Proto::H2 => {
                let (s, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(s)
            }
        };
        Ok(Conn {
            sender,
            authority,
            auth,
        })
    }

    /// GETs `path`, drains the body and returns its length.
    pub async fn get(&mut self, path: &str) -> Result<usize> {
        let with_auth = |mut req: Request<Empty<Bytes>>| {
            if let Some(v) = &self.auth {
                req.headers_mut().insert(header::AUTHORIZATION, v.clone());
            }
            req
        };
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                let req = with_auth(
                    Request::get(path)
                        .header(header::HOST, &self.authority)
                        .body(Empty::new())?,
                );
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let req = with_auth(
                    Request::get(format!("https://{}{path}", self.authority)).body(Empty::new())?,
                );
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let mut body = resp.into_body();
        let mut len = 0usize;
        // The start of an error body, to say why.
        let mut why = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                len += data.len();
                if !status.is_success() && why.len() < 200 {
                    why.extend_from_slice(&data[..data.len().min(200 - why.len())]);
                }
            }
        }
        if !status.is_success() {
            bail!(
                "GET {path}: status {status}: {:?}",
                String::from_utf8_lossy(&why).trim()
            );
        }
        Ok(len)
    }
}
