//! Relaying one admitted, rewritten request upstream and its response back to the guest,
//! metering both bodies; the request's access event is emitted when the response body ends.
//!
//! Shared by the plain-HTTP relay and bumped requests. Sending and header hygiene are
//! `upstream::relay`'s; this stage adds the unit's accounting; for requests that carried an
//! injected secret it keeps that secret out of what comes back (`credential::reflect`); and it
//! takes the guest's request
//! body back from the upstream client once the response has ended ([`crate::upstream::cut`]):
//! the rest of an upload the upstream answered early is drained for `EARLY_RESPONSE_DRAIN`,
//! then dropped (an HTTP/2 stream is reset with `NO_ERROR`, an HTTP/1.1 connection closed),
//! instead of stalling behind an upstream that does not read it. The grace, rather than an
//! immediate drop, lets a client that stops uploading by itself once it has an error response
//! (curl does) finish cleanly and show that response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{Body, boxed};
use crate::config::defaults;
use crate::context::ReqCtx;
use crate::credential::reflect::{DEFAULT_LIMIT, RedactBody, Reflect};
use crate::observe::access_log::Outcome;
use crate::refusal;
use crate::rung::coalesce::Coalesce;
use crate::state::Shared;
use crate::upstream::client::HttpClient;
use crate::upstream::connector::DialedAddr;
use crate::upstream::cut::{cuttable, drain};
use crate::upstream::metered::{Counted, Ended};
use crate::upstream::relay::send;

/// Sends `req` through `client` and relays the response; refusals go through `ctx`. With
/// `reflect`, the secret (and its encodings) is redacted from the response headers and the
/// first bytes of the body, each redaction counted and audited. `guest` is the protocol the
/// response goes back in, which sizes its chunks ([`Coalesce`]).
pub async fn relay(
    mut ctx: ReqCtx,
    client: &HttpClient,
    req: Request<Incoming>,
    reflect: Option<Reflect>,
    guest: http::Version,
) -> Response<Body> {
    let up = Arc::new(AtomicU64::new(0));
    let (parts, body) = req.into_parts();
    let (body, cutter) = cuttable(Counted::new(body, up.clone()));
    let tasks = ctx.shared().tasks.clone();
    let body = body.boxed();
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
    let (mut parts, body) = resp.into_parts();
    ctx.ev().status = Some(parts.status.as_u16());
    ctx.ev().ttfb = Some(ttfb);
    ctx.ev().resolved = parts.extensions.get::<DialedAddr>().map(|d| d.0);
    let down = Arc::new(AtomicU64::new(0));
    let host = ctx.host().to_owned();
    let mut access = ctx.access;
    let counted = down.clone();
    let body = if guest >= http::Version::HTTP_2 {
        Coalesce::for_h2_guest(body)
    } else {
        Coalesce::new(body)
    };
    let body = Counted::new(body, down).on_end(move |how| {
        // The response is over: whatever the guest has not uploaded yet is not needed.
        if let Some(rest) = cutter.cut() {
            tasks.spawn(drain(rest, defaults::EARLY_RESPONSE_DRAIN));
        }
        access.ev.bytes_up = up.load(Ordering::Relaxed);
        // What was relayed before the end, not what the upstream meant to send.
        access.ev.bytes_down = counted.load(Ordering::Relaxed);
        let outcome = match how {
            Ended::Complete => Outcome::Ok,
            Ended::Failed => {
                access.ev.error = Some("the upstream broke off the response body".to_owned());
                Outcome::Aborted
            }
            Ended::Abandoned => {
                access.ev.error = Some(
                    "the response was cut short: the guest went away or the session was closed"
                        .to_owned(),
                );
                Outcome::Aborted
            }
        };
        access.finish(outcome);
    });
    let Some(Reflect { reflection, secret }) = reflect else {
        return Response::from_parts(parts, boxed(body));
    };
    let shared = ctx.conn.shared.clone();
    let in_headers = reflection.redact_headers(&mut parts.headers);
    reflected(&shared, &secret, &host, in_headers as u64);
    let body = RedactBody::new(body, reflection, DEFAULT_LIMIT)
        .on_redacted(move |n| reflected(&shared, &secret, &host, n));
    Response::from_parts(parts, boxed(body))
}

/// Counts and audits `n` redactions of `secret` from a response of `host`.
fn reflected(shared: &Shared, secret: &str, host: &str, n: u64) {
    if n == 0 {
        return;
    }
    shared.metrics.secret_reflected(secret, n);
    tracing::warn!(
        target: crate::credential::AUDIT_TARGET,
        credential = secret,
        destination = host,
        redactions = n,
        outcome = "secret_reflected",
        "the upstream echoed an injected secret; redacted before it reached the guest"
    );
}
