//! Relaying one HTTP request to its upstream through a pooled client, and its response back.
//!
//! Shared by absolute-form plain HTTP and by bumped requests: strips hop-by-hop headers both
//! ways, applies the response-header timeout, maps connection failures to refusals, and emits
//! the request's access event when the response body ends. Policy and credential decisions are
//! made by the caller before this runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::access_log::AccessEvent;
use crate::hop;
use crate::metered::Counted;
use crate::refusal::{Body, Kind, Refusal};
use crate::state::{HttpClient, Shared};
use crate::upstream::{ConnectError, find_connect_error};

/// What the caller already knows about the request.
#[derive(Debug)]
pub struct Relay {
    pub event: AccessEvent,
    pub start: Instant,
    pub rung: &'static str,
    pub response_timeout: std::time::Duration,
}

/// Sends `req` (already rewritten: absolute URI, Host, credentials) and relays the response.
/// `Err` carries the refusal and the event so the caller answers through `refusal::respond`.
pub async fn relay(
    shared: &Arc<Shared>,
    client: &HttpClient,
    req: Request<Incoming>,
    mut relay: Relay,
) -> Result<Response<Body>, (Refusal, AccessEvent)> {
    let up = Arc::new(AtomicU64::new(0));
    let (parts, body) = req.into_parts();
    let body = Counted::new(body, up.clone()).boxed();
    let sent = Instant::now();
    let result = tokio::time::timeout(
        relay.response_timeout,
        client.request(Request::from_parts(parts, body)),
    )
    .await;
    let host = relay.event.host.clone();
    let port = relay.event.port;
    let rule = relay.event.rule.clone().unwrap_or_default();
    let resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err((from_client_error(&e, &host, port, &rule), relay.event)),
        Err(_) => {
            let cause = format!("no response headers within {:?}", relay.response_timeout);
            return Err((
                Refusal::new(Kind::UpstreamTimeout, host, port, rule).with_cause(cause),
                relay.event,
            ));
        }
    };
    shared
        .metrics
        .request_latency
        .get_or_create(&crate::metrics::RungLabel {
            rung: relay.rung.to_owned(),
        })
        .observe(sent.elapsed().as_secs_f64());
    let (mut parts, body) = resp.into_parts();
    hop::strip(&mut parts.headers, true);
    parts.headers.remove(header::ALT_SVC);
    relay.event.status = Some(parts.status.as_u16());
    let down = Arc::new(AtomicU64::new(0));
    let shared2 = shared.clone();
    let down2 = down.clone();
    let body = Counted::new(body, down).on_end(move || {
        let mut ev = relay.event;
        ev.bytes_up = up.load(Ordering::Relaxed);
        ev.bytes_down = down2.load(Ordering::Relaxed);
        shared2.metrics.add_bytes(ev.bytes_up, ev.bytes_down);
        shared2.metrics.request(relay.rung, &ev.outcome);
        ev.emit(relay.start.elapsed());
    });
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Maps a pooled-client failure: our connect error when there is one, else `upstream_connect`
/// with the whole error chain.
pub fn from_client_error(
    e: &(dyn std::error::Error + 'static),
    host: &str,
    port: u16,
    rule: &str,
) -> Refusal {
    match find_connect_error(e) {
        Some(c) => from_connect(c, host, port, rule),
        None => Refusal::new(Kind::UpstreamConnect, host, port, rule).with_cause(error_chain(e)),
    }
}

/// Maps an upstream connection failure to the guest-facing refusal.
pub fn from_connect(e: &ConnectError, host: &str, port: u16, rule: &str) -> Refusal {
    match e {
        ConnectError::Dial(d) => crate::refusal::from_dial(d, host, port, rule),
        ConnectError::Tls { cause, .. } => {
            Refusal::new(Kind::UpstreamTls, host, port, rule).with_cause(cause.to_string())
        }
        ConnectError::TlsTimeout { .. } => Refusal::new(Kind::UpstreamTimeout, host, port, rule)
            .with_cause("TLS handshake timed out"),
        ConnectError::BadUri(m) => {
            Refusal::new(Kind::BadRequest, host, port, rule).with_cause(m.clone())
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
