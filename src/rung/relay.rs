//! Relaying one admitted, rewritten request upstream and its response back to the guest,
//! metering both bodies; the request's access event is emitted when the response body ends.
//!
//! Shared by the plain-HTTP relay and bumped requests. Sending and header hygiene are
//! `upstream::relay`'s; this stage adds the unit's accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::Body;
use crate::context::ReqCtx;
use crate::observe::access_log::Outcome;
use crate::refusal;
use crate::upstream::client::HttpClient;
use crate::upstream::connector::DialedAddr;
use crate::upstream::metered::Counted;
use crate::upstream::relay::send;

/// Sends `req` through `client` and relays the response; refusals go through `ctx`.
pub async fn relay(mut ctx: ReqCtx, client: &HttpClient, req: Request<Incoming>) -> Response<Body> {
    let up = Arc::new(AtomicU64::new(0));
    let (parts, body) = req.into_parts();
    let body = Counted::new(body, up.clone()).boxed();
    let sent = Instant::now();
    let timeout = ctx.snap.config.upstream.response_header_timeout;
    let resp = match send(client, Request::from_parts(parts, body), timeout).await {
        Ok(resp) => resp,
        Err(e) => {
            let r = refusal::from_send(&e, ctx.host(), ctx.port, ctx.rule_id());
            return ctx.refuse(&r);
        }
    };
    let rung = ctx.ev().rung;
    ctx.shared()
        .metrics
        .request_latency(rung, sent.elapsed().as_secs_f64());
    let ttfb = ctx.access.start().elapsed();
    let (parts, body) = resp.into_parts();
    ctx.ev().status = Some(parts.status.as_u16());
    ctx.ev().ttfb = Some(ttfb);
    ctx.ev().resolved = parts.extensions.get::<DialedAddr>().map(|d| d.0);
    let down = Arc::new(AtomicU64::new(0));
    let mut access = ctx.access;
    let counted = down.clone();
    let body = Counted::new(body, down).on_end(move || {
        access.ev.bytes_up = up.load(Ordering::Relaxed);
        access.ev.bytes_down = counted.load(Ordering::Relaxed);
        access.finish(Outcome::Ok);
    });
    Response::from_parts(parts, body.boxed())
}
