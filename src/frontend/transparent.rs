//! The transparent listener (`proxy.transparent`): TCP connections that nftables redirected
//! here (REDIRECT or DNAT) from guests that do not know about the proxy.
//!
//! For each connection it recovers the original destination (`SO_ORIGINAL_DST`, or
//! `IP6T_SO_ORIGINAL_DST` for IPv6, through `socket2`), then sniffs the first bytes: a TLS
//! ClientHello names the host by its SNI (no SNI: refused), plain HTTP by each request's
//! `Host`, and anything else is an opaque connection whose host is the original address. The
//! result is a [`Target`] that goes through the same admission and ladder as a CONNECT; the
//! ladder binds the original destination to the host (`address_mismatch`) and dials only the
//! address it vetted. A connection that was not redirected (its original destination is the
//! listener itself) is refused, so the listener cannot be used to loop.
//!
//! This module recovers and sniffs; it does not decide policy and never dials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::body::Body;
use crate::context::{ConnCtx, ReqCtx, Target, Via};
use crate::frontend::accept::{self, Accepted, Acceptor};
use crate::observe::access_log::{Outcome, Unit};
use crate::refusal::{self, Kind};
use crate::rung::sni;
use crate::rung::{self, Ladder, head};
use crate::state::Shared;

/// The transparent listener and what its connections are served with.
#[derive(Debug)]
pub struct TransparentListener {
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    pub ladder: Arc<Ladder>,
}

/// What the first bytes of a redirected connection say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Tls,
    Http,
    /// Neither, or nothing sent in time (a protocol where the server speaks first).
    Opaque,
    Closed,
}

/// Longest HTTP method token looked for.
const MAX_METHOD: usize = 16;

/// Classifies a connection by its first bytes: a TLS handshake record, an HTTP request line
/// (an uppercase method token and a space), or anything else. `None`: not enough bytes yet.
pub(crate) fn classify(first: &[u8]) -> Option<Sniffed> {
    match first.first()? {
        0x16 => return Some(Sniffed::Tls),
        b'A'..=b'Z' => {}
        _ => return Some(Sniffed::Opaque),
    }
    for (i, b) in first.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' => {}
            b' ' if i > 0 => return Some(Sniffed::Http),
            _ => return Some(Sniffed::Opaque),
        }
    }
    if first.len() > MAX_METHOD {
        Some(Sniffed::Opaque)
    } else {
        None
    }
}

/// Peeks (without consuming) until [`classify`] can tell, the guest closes, or `timeout`.
async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let look = async {
        let mut buf = [0u8; MAX_METHOD + 1];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Sniffed::Closed,
                Ok(n) => {
                    if let Some(s) = classify(&buf[..n]) {
                        return s;
                    }
                }
            }
            // peek returns at once while the bytes are unchanged: wait for more briefly.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, look)
        .await
        .unwrap_or(Sniffed::Opaque)
}

impl TransparentListener {
    /// Accepts until `shared.draining` fires.
    pub async fn run(self) {
        let mut acceptor = Acceptor::new(self.listener, "transparent");
        loop {
            let (stream, peer) = match acceptor.next(&self.shared).await {
                Accepted::Conn(s, p) => (s, p),
                // Nothing to answer with before the protocol is known: close.
                Accepted::Shed(s) => {
                    drop(s);
                    continue;
                }
                Accepted::Draining => break,
            };
            // No HTTP to answer with before sniffing: an overloaded guest is closed.
            let Some(conn) = accept::connection(&self.shared, &stream, peer) else {
                continue;
            };
            self.shared
                .tasks
                .spawn(serve(stream, conn, self.ladder.clone()));
        }
    }
}

/// The destination the guest's connection was addressed to before it was redirected.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    // A dual-stack socket carries IPv4 connections as v4-mapped addresses: ask in the family
    // the connection really is, then the other.
    let v4_first = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let (first, second) = if v4_first {
        (sock.original_dst_v4(), None)
    } else {
        (sock.original_dst_v6(), Some(()))
    };
    let addr = match (first, second) {
        (Ok(a), _) => a,
        (Err(_), Some(())) => sock.original_dst_v4()?,
        (Err(e), None) => return Err(e),
    };
    let addr = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::other("the original destination is not an IP address"))?;
    Ok(unmapped(addr))
}

/// v4-mapped IPv6 as IPv4, so policy, binding and logs see one form.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The context of one unit on a redirected connection: its destination is the original one
/// until the SNI or `Host` names it; its sandbox is the one the source address belongs to
/// (the only way to tell sandboxes apart here).
fn unit(conn: Arc<ConnCtx>, kind: Unit, start: Instant, original: SocketAddr) -> ReqCtx {
    let sandbox = conn.shared.sandboxes.by_source(conn.client.ip());
    let mut ctx = ReqCtx::new(conn, kind, start);
    ctx.identified(sandbox);
    ctx.port = original.port();
    let ev = ctx.ev();
    ev.original_dst = Some(original);
    ev.host = original.ip().to_string();
    ev.port = original.port();
    ctx
}

async fn serve(stream: TcpStream, conn: Arc<ConnCtx>, ladder: Arc<Ladder>) {
    let start = Instant::now();
    let snap = conn.shared.snapshot();
    let timeout = snap.config.proxy.handshake_timeout;
    let original = match original_destination(&stream) {
        Ok(o) if Some(o) != stream.local_addr().ok().map(unmapped) => o,
        found => {
            // Not redirected: the guest connected to the listener itself.
            let mut ctx = ReqCtx::new(conn, Unit::Tunnel, start);
            ctx.ev().original_dst = found.as_ref().ok().copied();
            let cause = match found {
                Ok(_) => "the connection was made to the transparent listener itself, not redirected to it".to_owned(),
                Err(e) => format!("no original destination (was the connection redirected by nftables?): {e}"),
            };
            let _ = ctx.deny(Kind::BadRequest, cause);
            return;
        }
    };
    match sniff(&stream, timeout).await {
        Sniffed::Tls => tls(stream, conn, ladder, original, start).await,
        Sniffed::Http => http(stream, conn, original).await,
        Sniffed::Opaque => {
            let mut ctx = unit(conn, Unit::Tunnel, start, original);
            let target = Target {
                via: Via::TransparentOpaque,
                host: original.ip().to_string(),
                port: original.port(),
            };
            match rung::admit(&mut ctx, &target) {
                Ok(_) => ladder.opaque(ctx, stream, original).await,
                Err(r) => {
                    let _ = ctx.refuse(&r);
                }
            }
        }
        Sniffed::Closed => unit(conn, Unit::Tunnel, start, original)
            .access
            .finish(Outcome::GuestClosed),
    }
}

/// A redirected TLS connection: the ClientHello's SNI names the host.
async fn tls(
    mut stream: TcpStream,
    conn: Arc<ConnCtx>,
    ladder: Arc<Ladder>,
    original: SocketAddr,
    start: Instant,
) {
    let mut ctx = unit(conn, Unit::Tunnel, start, original);
    let timeout = ctx.snap.config.proxy.handshake_timeout;
    let hello = match sni::read_client_hello(&mut stream, timeout).await {
        Ok(h) => h,
        Err(e) => {
            let (outcome, alert) = e.outcome();
            if alert {
                let _ = stream.write_all(&sni::ALERT_ACCESS_DENIED).await;
            }
            ctx.ev().error = Some(e.to_string());
            return ctx.access.finish(outcome);
        }
    };
    ctx.ev().sni = hello.server_name.clone();
    let Some(name) = hello.server_name.clone() else {
        let r = ctx.refusal(Kind::SniMismatch).with_cause(
            "the ClientHello carries no server name (SNI), so the destination is unknown",
        );
        return rung::refuse_tls(ctx, &r, stream).await;
    };
    let target = Target {
        via: Via::TransparentTls,
        host: name,
        port: original.port(),
    };
    let host = match rung::admit(&mut ctx, &target) {
        Ok(h) => h,
        Err(r) => return rung::refuse_tls(ctx, &r, stream).await,
    };
    ladder.transparent(ctx, host, stream, original, hello).await;
}

/// A redirected plain-HTTP connection: HTTP/1.1 served here (the explicit listener's serve
/// loop), each request named by its `Host` and bound to the original destination.
async fn http(stream: TcpStream, conn: Arc<ConnCtx>, original: SocketAddr) {
    let svc_conn = conn.clone();
    let service = service_fn(move |req| {
        let conn = svc_conn.clone();
        async move { Ok::<_, std::convert::Infallible>(request(req, conn, original).await) }
    });
    super::listener::serve_http1(stream, &conn, service).await;
}

/// The host a transparent HTTP request names: the authority of an absolute-form target, else
/// the `Host` header (its port is ignored: the original destination's port is the port).
fn named_host(req: &Request<Incoming>) -> Result<String, &'static str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req
            .headers()
            .get(http::header::HOST)
            .ok_or("the request has no Host header, so the destination is unknown")?
            .to_str()
            .map_err(|_| "the Host header is not valid text")?
            .to_owned(),
    };
    host_in(&raw)
}

/// The host of an absolute-form authority or `Host` header value (userinfo refused).
pub(crate) fn host_in(raw: &str) -> Result<String, &'static str> {
    let authority: http::uri::Authority = raw.parse().map_err(|_| "the Host is malformed")?;
    if authority.as_str().contains('@') {
        return Err("the Host carries userinfo (`user@host`)");
    }
    Ok(authority.host().to_owned())
}

async fn request(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    original: SocketAddr,
) -> Response<Body> {
    let mut ctx = unit(conn, Unit::Request, Instant::now(), original);
    ctx.ev().method = Some(req.method().to_string());
    if req.method() == Method::CONNECT {
        return ctx.deny(
            Kind::BadRequest,
            "CONNECT reached the transparent listener; send it to the explicit proxy",
        );
    }
    let name = match named_host(&req) {
        Ok(n) => n,
        Err(cause) => return ctx.deny(Kind::BadRequest, cause),
    };
    if let Err(cause) = head::check(&req, ctx.snap.config.proxy.max_header_bytes) {
        return ctx.deny(Kind::HeadersTooLarge, cause);
    }
    let target = Target {
        via: Via::TransparentHttp,
        host: name,
        port: original.port(),
    };
    let host = match rung::admit(&mut ctx, &target) {
        Ok(h) => h,
        Err(r) => return ctx.refuse(&r),
    };
    let answered = ctx
        .shared()
        .answers
        .answered(&host.to_string(), original.ip());
    let dialer = ctx.snap.dialer.clone();
    if let Err(e) = dialer.vet_bound(&host, original.ip(), answered).await {
        let r = refusal::from_dial(&e, ctx.host(), ctx.port, ctx.rule_id());
        return ctx.refuse(&r);
    }
    rung::plain::relay(ctx, host, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_are_classified() {
        let cases: &[(&[u8], Option<Sniffed>)] = &[
            (b"\x16\x03\x01", Some(Sniffed::Tls)),
            (b"\x16", Some(Sniffed::Tls)),
            (b"GET / HTTP/1.1\r\n", Some(Sniffed::Http)),
            (b"POST /x", Some(Sniffed::Http)),
            (b"PRI * HTTP/2.0", Some(Sniffed::Http)),
            (b"OPTIONS ", Some(Sniffed::Http)),
            (b"GE", None),
            (b"", None),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Some(Sniffed::Opaque)),
            (b"get / HTTP/1.1", Some(Sniffed::Opaque)),
            (b" GET", Some(Sniffed::Opaque)),
            (b"\x00\x00", Some(Sniffed::Opaque)),
            (b"\x15\x03\x03", Some(Sniffed::Opaque)),
            (b"AAAAAAAAAAAAAAAAAAAA", Some(Sniffed::Opaque)),
            (b"AAAAAAAAAAAAAAAA ", Some(Sniffed::Http)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
