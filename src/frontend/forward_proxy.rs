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

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::context::{ConnCtx, ReqCtx, Target, Via};
use crate::observe::access_log::Unit;
use crate::refusal::Kind;
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

async fn connect(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    ladder: &Ladder,
    start: Instant,
) -> Response<Body> {
    let mut ctx = ReqCtx::new(conn, Unit::Tunnel, start);
    let Some(authority) = req.uri().authority().cloned() else {
        return ctx.deny(Kind::BadRequest, "CONNECT needs host:port");
    };
    ctx.ev().host = authority.host().to_owned();
    let Some(port) = authority.port_u16() else {
        return ctx.deny(Kind::BadRequest, "CONNECT needs an explicit port");
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
    ctx.port = authority.port_u16().unwrap_or(80);
    if let Err(cause) = head::check(&req, ctx.snap.config.proxy.max_header_bytes) {
        return ctx.deny(Kind::HeadersTooLarge, cause);
    }
    let target = Target {
        via: Via::Absolute,
        host: authority.host().to_owned(),
        port: authority.port_u16().unwrap_or(80),
    };
    let host = match rung::admit(&mut ctx, &target) {
        Ok(h) => h,
        Err(r) => return ctx.refuse(&r),
    };
    rung::plain::relay(ctx, host, req).await
}
