//! One request inside a bumped TLS session: host consistency, credentials, re-origination.
//!
//! The request's Host / `:authority` must fall under the same rule as the CONNECT host and the
//! SNI; otherwise it is refused with `host_mismatch`. The request then goes upstream over
//! verified TLS to the address the dialer vets for that host. WebSocket upgrades are relayed by
//! splicing the two upgraded streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access_log::{AccessEvent, Unit};
use crate::forward::{self, Relay};
use crate::hop;
use crate::host::Host;
use crate::inject;
use crate::policy::{Decision, Rung};
use crate::proxy::{ConnCtx, refuse};
use crate::refusal::{Body, Kind, Refusal};
use crate::state::Snapshot;
use crate::tunnel::{self, Stops};

#[derive(Debug)]
pub struct Session {
    pub ctx: Arc<ConnCtx>,
    pub snap: Arc<Snapshot>,
    pub connect_host: Host,
    pub port: u16,
    pub decision: Decision,
    pub stops: Stops,
}

pub async fn handle(req: Request<Incoming>, s: Arc<Session>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let shared = &s.ctx.shared;
    let mut ev = AccessEvent::new(
        Unit::Request,
        s.ctx.client,
        s.connect_host.to_string(),
        s.port,
    );
    ev.method = Some(req.method().to_string());
    ev.rung = Some(Rung::Bump);
    ev.rule = Some(s.decision.rule_id.to_string());
    let host = match request_host(&req, &s) {
        Ok(h) => h,
        Err(cause) => {
            let r = Refusal::new(
                Kind::HostMismatch,
                ev.host.clone(),
                s.port,
                &*s.decision.rule_id,
            )
            .with_cause(cause);
            return Ok(refuse(shared, ev, &r, start));
        }
    };
    ev.host = host.to_string();
    if shared.kill.is_enabled() {
        let r = Refusal::new(Kind::KillSwitch, ev.host.clone(), s.port, "kill_switch");
        return Ok(refuse(shared, ev, &r, start));
    }
    let mut req = req;
    let upgrade = hop::upgrade_token(req.headers());
    let guest_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let rule = s.decision.rule.and_then(|i| s.snap.config.policy.rule(i));
    let client = match inject::apply(&s, rule, &host, &mut parts, &mut ev).await {
        Ok(c) => c,
        Err(r) => return Ok(refuse(shared, ev, &r, start)),
    };
    hop::strip(&mut parts.headers, true);
    let authority = if s.port == 443 {
        host.to_string()
    } else {
        format!("{host}:{}", s.port)
    };
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = match Uri::builder()
        .scheme("https")
        .authority(authority.as_str())
        .path_and_query(pq)
        .build()
    {
        Ok(u) => u,
        Err(e) => {
            let r = Refusal::new(
                Kind::BadRequest,
                ev.host.clone(),
                s.port,
                &*s.decision.rule_id,
            )
            .with_cause(e.to_string());
            return Ok(refuse(shared, ev, &r, start));
        }
    };
    // The upstream connection's protocol is negotiated separately from the guest's. The
    // client derives Host (HTTP/1.1) or :authority (HTTP/2) from the URI; a Host header next
    // to :authority is a duplicate that servers such as nginx reject with 400.
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(header::HOST);
    if let (Some(token), Some(guest_upgrade)) = (upgrade, guest_upgrade) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, token);
        let body = http_body_util::BodyExt::boxed(body);
        return Ok(upgrade_relay(
            s,
            Request::from_parts(parts, body),
            guest_upgrade,
            ev,
            start,
        )
        .await);
    }
    let Some(client) = client.or_else(|| s.snap.tls.clone()) else {
        let r = Refusal::new(
            Kind::UpstreamTls,
            ev.host.clone(),
            s.port,
            &*s.decision.rule_id,
        )
        .with_cause("no upstream TLS client configured");
        return Ok(refuse(shared, ev, &r, start));
    };
    let relay = Relay {
        event: ev,
        start,
        rung: "bump",
        response_timeout: s.snap.config.upstream.response_header_timeout,
    };
    Ok(
        match forward::relay(shared, &client, Request::from_parts(parts, body), relay).await {
            Ok(resp) => resp,
            Err((r, ev)) => refuse(shared, ev, &r, start),
        },
    )
}

/// The request's own host (`:authority` for HTTP/2, `Host` for HTTP/1.1), which must be
/// covered by the session's rule and name the session's port.
fn request_host(req: &Request<Incoming>, s: &Session) -> Result<Host, String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| "the request has no Host".to_owned())?,
    };
    let authority: http::uri::Authority = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not a valid authority"))?;
    if let Some(p) = authority.port_u16()
        && p != s.port
    {
        return Err(format!(
            "{raw} names port {p}, the session is for port {}",
            s.port
        ));
    }
    let host = Host::parse(authority.host()).map_err(|e| e.to_string())?;
    s.snap
        .config
        .policy
        .same_rule_as(&host, s.port, &s.decision)
        .map_err(|other| {
            format!(
                "{host} falls under rule `{other}`, not `{}`",
                s.decision.rule_id
            )
        })?;
    Ok(host)
}

async fn upgrade_relay(
    s: Arc<Session>,
    req: Request<Body>,
    guest_upgrade: hyper::upgrade::OnUpgrade,
    mut ev: AccessEvent,
    start: Instant,
) -> Response<Body> {
    let shared = s.ctx.shared.clone();
    let rule = s.decision.rule_id.to_string();
    let Some(client) = s.snap.tls_h1.clone() else {
        let r = Refusal::new(Kind::UpstreamTls, ev.host.clone(), s.port, &*rule)
            .with_cause("no upstream TLS client");
        return refuse(&shared, ev, &r, start);
    };
    let timeout = s.snap.config.upstream.response_header_timeout;
    let mut resp = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let r = forward::from_client_error(&e, &ev.host, s.port, &rule);
            return refuse(&shared, ev, &r, start);
        }
        Err(_) => {
            let r = Refusal::new(Kind::UpstreamTimeout, ev.host.clone(), s.port, &*rule)
                .with_cause("no upgrade response");
            return refuse(&shared, ev, &r, start);
        }
    };
    ev.status = Some(resp.status().as_u16());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream declined the upgrade: relay its answer as an ordinary response.
        let (mut parts, body) = resp.into_parts();
        hop::strip(&mut parts.headers, false);
        ev.emit(start.elapsed());
        return Response::from_parts(parts, http_body_util::BodyExt::boxed(body));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let stops = s.stops.clone();
    shared.tasks.spawn({
        let shared = shared.clone();
        async move {
            match tokio::try_join!(guest_upgrade, upstream_upgrade) {
                Ok((g, u)) => {
                    let spliced = tunnel::splice(TokioIo::new(g), TokioIo::new(u), &stops).await;
                    ev.bytes_up = spliced.up;
                    ev.bytes_down = spliced.down;
                    ev.outcome = spliced.end.as_str().to_owned();
                    shared.metrics.add_bytes(spliced.up, spliced.down);
                }
                Err(e) => {
                    ev.outcome = "upgrade_failed".into();
                    ev.error = Some(e.to_string());
                }
            }
            shared.metrics.request("bump", &ev.outcome);
            ev.emit(start.elapsed());
        }
    });
    let (parts, _body) = resp.into_parts();
    Response::from_parts(parts, crate::refusal::full(""))
}
