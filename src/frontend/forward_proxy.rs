//! The explicit forward-proxy frontend: CONNECT and absolute-form HTTP requests.
//!
//! Each request's header section is measured against `proxy.max_header_bytes` (refused with
//! `headers_too_large` when over), then it becomes a [`Target`] (the destination as the guest
//! named it), goes through admission, and is handed to the ladder (CONNECT) or the plain relay
//! (absolute-form). This module parses what the guest asked for; it does not accept
//! connections (`listener`), decide policy or dial.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, header};
use hyper::body::Incoming;

use crate::body::Body;
use crate::context::{ConnCtx, ReqCtx, Target, Via};
use crate::observe::access_log::Unit;
use crate::refusal::{Kind, Refusal};
use crate::rung::{self, Ladder, head};

/// Serves one request of a guest connection.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    ladder: Arc<Ladder>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    if req.method() == Method::CONNECT {
        return Ok(connect(req, conn, &ladder, start).await);
    }
    Ok(absolute(req, conn, start).await)
}

/// Who sent this request: the sandbox its proxy token names, else the one its source address
/// belongs to (`proxy_auth_required` when a token is wrong, or missing where required).
/// `Proxy-Authorization` is hop-by-hop and never forwarded.
fn identify(ctx: &mut ReqCtx, headers: &HeaderMap) -> Result<(), Refusal> {
    let shared = ctx.shared().clone();
    let found = shared.sandboxes.identify(
        ctx.conn.client.ip(),
        headers.get(header::PROXY_AUTHORIZATION),
        ctx.snap.config.proxy.require_sandbox,
    );
    match found {
        Ok(sandbox) => {
            ctx.identified(sandbox);
            Ok(())
        }
        Err(e) => Err(ctx
            .refusal(Kind::ProxyAuthRequired)
            .with_cause(e.to_string())),
    }
}

async fn connect(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    ladder: &Ladder,
    start: Instant,
) -> Response<Body> {
    let mut ctx = ReqCtx::new(conn, Unit::Tunnel, start);
    if let Err(r) = identify(&mut ctx, req.headers()) {
        return ctx.refuse(&r);
    }
    let Some(authority) = req.uri().authority().cloned() else {
        return ctx.deny(Kind::BadRequest, "CONNECT needs host:port");
    };
    ctx.ev().host = authority.host().to_owned();
    let port = match explicit_port(&authority) {
        Ok(Some(p)) => p,
        Ok(None) => return ctx.deny(Kind::BadRequest, "CONNECT needs an explicit port"),
        Err(cause) => return ctx.deny(Kind::BadRequest, cause),
    };
    ctx.port = port;
    if let Err(cause) = head::check(&req, ctx.snap.config.proxy.max_header_bytes) {
        return ctx.deny(Kind::HeadersTooLarge, cause);
    }
    let target = Target {
        via: Via::Connect,
        host: authority.host().to_owned(),
        port,
    };
    let host = match rung::admit(&mut ctx, &target) {
        Ok(h) => h,
        Err(r) => return ctx.refuse(&r),
    };
    ladder.tunnel(ctx, host, hyper::upgrade::on(req)).await
}

async fn absolute(req: Request<Incoming>, conn: Arc<ConnCtx>, start: Instant) -> Response<Body> {
    let mut ctx = ReqCtx::new(conn, Unit::Request, start);
    ctx.ev().method = Some(req.method().to_string());
    if let Err(r) = identify(&mut ctx, req.headers()) {
        return ctx.refuse(&r);
    }
    let uri = req.uri();
    let (Some(authority), Some(scheme)) = (uri.authority().cloned(), uri.scheme_str()) else {
        return ctx.deny(
            Kind::BadRequest,
            "origin-form request: this is a forward proxy, send an absolute URI or CONNECT",
        );
    };
    ctx.ev().host = authority.host().to_owned();
    if scheme != "http" {
        return ctx.deny(
            Kind::BadRequest,
            "only http:// is proxied in absolute form; use CONNECT for https",
        );
    }
    let port = match explicit_port(&authority) {
        Ok(p) => p.unwrap_or(80),
        Err(cause) => return ctx.deny(Kind::BadRequest, cause),
    };
    ctx.port = port;
    if let Err(cause) = head::check(&req, ctx.snap.config.proxy.max_header_bytes) {
        return ctx.deny(Kind::HeadersTooLarge, cause);
    }
    let target = Target {
        via: Via::Absolute,
        host: authority.host().to_owned(),
        port,
    };
    let host = match rung::admit(&mut ctx, &target) {
        Ok(h) => h,
        Err(r) => return ctx.refuse(&r),
    };
    rung::plain::relay(ctx, host, req).await
}

/// The port an authority names, if it names one. Userinfo (`user@host`) and ports that are not
/// a number in 1..=65535 are refused rather than read leniently (a lenient reader would send
/// `host:99999` to port 80).
pub(crate) fn explicit_port(authority: &Authority) -> Result<Option<u16>, &'static str> {
    let s = authority.as_str();
    if s.contains('@') {
        return Err("the authority carries userinfo (`user@host`); send host:port only");
    }
    let after_host = match s.rfind(']') {
        Some(i) => &s[i + 1..],
        None => s.rfind(':').map_or("", |i| &s[i..]),
    };
    let Some(digits) = after_host.strip_prefix(':') else {
        return Ok(None);
    };
    if digits.is_empty() {
        return Ok(None);
    }
    match digits.parse::<u16>() {
        Ok(p) if p > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(p)),
        _ => Err("the port is not a number between 1 and 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_strictly() {
        let cases: &[(&str, Result<Option<u16>, ()>)] = &[
            ("a.test:443", Ok(Some(443))),
            ("a.test", Ok(None)),
            ("a.test:", Ok(None)),
            ("[::1]:8443", Ok(Some(8443))),
            ("[::1]", Ok(None)),
            ("a.test:99999", Err(())),
            ("a.test:65536", Err(())),
            ("a.test:0", Err(())),
            ("a.test:+80", Err(())),
            ("user@a.test:443", Err(())),
            ("a@b:443", Err(())),
        ];
        for (raw, want) in cases {
            let got = raw
                .parse::<Authority>()
                .map_err(|_| ())
                .and_then(|a| explicit_port(&a).map_err(|_| ()));
            assert_eq!(&got, want, "{raw}");
        }
    }
}
