//! The forward-proxy request handler: CONNECT and absolute-form HTTP.
//!
//! For each guest request it normalizes the destination, asks the policy for a rung, and then
//! refuses (`deny`), opens a pass-through tunnel after the SNI check, hands the connection to
//! the bump stage, or relays a plain HTTP request. It does not accept connections (that is
//! `listener`) and does not resolve or dial by itself (that is `dial`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::{AccessEvent, Unit};
use crate::forward::{self, Relay};
use crate::hop;
use crate::host::Host;
use crate::policy::{Decision, Rung, Scheme};
use crate::refusal::{self, Body, Kind, Refusal};
use crate::sni::{self, HelloError};
use crate::state::{Shared, Snapshot};
use crate::tunnel::{self, Stops};

/// Per guest connection context.
#[derive(Debug)]
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub client: SocketAddr,
    /// Held by the connection and by anything it spawns (tunnels), so the connection limit
    /// counts open tunnels too.
    pub permit: Arc<OwnedSemaphorePermit>,
    pub bump: Option<Arc<crate::bump::Bumper>>,
}

pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    if req.method() == Method::CONNECT {
        return Ok(connect(req, ctx, start).await);
    }
    Ok(plain(req, ctx, start).await)
}

/// Answers a refusal: counts it, logs the access event, and builds the response.
pub fn refuse(shared: &Shared, mut ev: AccessEvent, r: &Refusal, start: Instant) -> Response<Body> {
    shared.metrics.refusal(r.code());
    ev.outcome = r.code().to_owned();
    if let Some(c) = &r.cause {
        ev.error = Some(c.clone());
    }
    ev.status = Some(r.kind.status().as_u16());
    let rung = ev.rung.map_or("none", Rung::as_str);
    match ev.unit {
        Unit::Request => shared.metrics.request(rung, r.code()),
        Unit::Tunnel | Unit::Bumped => shared.metrics.connection(rung, r.code()),
    }
    ev.emit(start.elapsed());
    refusal::respond(r)
}

fn bad_request(shared: &Shared, ev: AccessEvent, cause: &str, start: Instant) -> Response<Body> {
    let r = Refusal::new(Kind::BadRequest, ev.host.clone(), ev.port, "").with_cause(cause);
    refuse(shared, ev, &r, start)
}

/// The checks every request goes through before anything is dialed: a well-formed host, the
/// kill switch, the policy.
fn admit(
    shared: &Shared,
    snap: &Snapshot,
    ev: &mut AccessEvent,
    raw_host: &str,
    port: u16,
    scheme: Scheme,
) -> Result<(Host, Decision), Refusal> {
    let host = Host::parse(raw_host).map_err(|e| {
        Refusal::new(Kind::BadRequest, raw_host, port, "").with_cause(e.to_string())
    })?;
    ev.host = host.to_string();
    if shared.kill.is_enabled() {
        return Err(Refusal::new(
            Kind::KillSwitch,
            ev.host.clone(),
            port,
            "kill_switch",
        ));
    }
    let decision = snap.config.policy.decide(&host, port, scheme);
    ev.rung = Some(decision.rung);
    ev.rule = Some(decision.rule_id.to_string());
    if decision.rung == Rung::Deny {
        return Err(Refusal::new(
            Kind::DestinationDenied,
            ev.host.clone(),
            port,
            &*decision.rule_id,
        ));
    }
    Ok((host, decision))
}

async fn connect(req: Request<Incoming>, ctx: Arc<ConnCtx>, start: Instant) -> Response<Body> {
    let shared = &ctx.shared;
    // Taken before the kill-switch check in `admit`: turning the switch on at any later moment
    // cancels this token, so a tunnel admitted just before can never outlive it.
    let kill = shared.kill.token();
    let snap = shared.snapshot();
    let authority = req.uri().authority().cloned();
    let mut ev = AccessEvent::new(Unit::Tunnel, ctx.client, "", 0);
    let Some(authority) = authority else {
        return bad_request(shared, ev, "CONNECT needs host:port", start);
    };
    ev.host = authority.host().to_owned();
    let Some(port) = authority.port_u16() else {
        return bad_request(shared, ev, "CONNECT needs an explicit port", start);
    };
    ev.port = port;
    let (host, decision) = match admit(
        shared,
        &snap,
        &mut ev,
        authority.host(),
        port,
        Scheme::Connect,
    ) {
        Ok(v) => v,
        Err(r) => return refuse(shared, ev, &r, start),
    };
    match decision.rung {
        Rung::Bump => {
            ev.unit = Unit::Bumped;
            let Some(bumper) = ctx.bump.clone() else {
                // Unreachable when the app is built from a config with bump rules; refuse
                // rather than fall back to a tunnel.
                let r = Refusal::new(Kind::UpstreamTls, ev.host.clone(), port, &*decision.rule_id)
                    .with_cause("bumping is not available: no CA loaded");
                return refuse(shared, ev, &r, start);
            };
            // Vet the address now so a denied destination gets a readable 403 before the
            // guest starts TLS; every re-originated request is vetted again when dialed.
            if let Err(e) = snap.dialer.vet(&host).await {
                let r = refusal::from_dial(&e, &ev.host, port, &decision.rule_id);
                return refuse(shared, ev, &r, start);
            }
            let on_upgrade = hyper::upgrade::on(req);
            let ctx2 = ctx.clone();
            shared.tasks.spawn(async move {
                bumper
                    .session(
                        on_upgrade, ctx2, snap, host, port, decision, ev, start, kill,
                    )
                    .await;
            });
            established()
        }
        Rung::Passthrough => {
            let t0 = Instant::now();
            let dialed = match snap.dialer.dial(&host, port).await {
                Ok(d) => d,
                Err(e) => {
                    let r = refusal::from_dial(&e, &ev.host, port, &decision.rule_id);
                    return refuse(shared, ev, &r, start);
                }
            };
            shared
                .metrics
                .connect_latency
                .get_or_create(&crate::metrics::RungLabel {
                    rung: "passthrough".into(),
                })
                .observe(t0.elapsed().as_secs_f64());
            ev.resolved = Some(dialed.addr);
            let on_upgrade = hyper::upgrade::on(req);
            let ctx2 = ctx.clone();
            shared.tasks.spawn(async move {
                passthrough(
                    on_upgrade,
                    dialed.stream,
                    ctx2,
                    snap,
                    port,
                    decision,
                    ev,
                    start,
                    kill,
                )
                .await;
            });
            established()
        }
        Rung::Deny => unreachable_deny(shared, ev, &decision, start),
    }
}

/// `admit` already refused deny; kept total so a future rung cannot slip through unhandled.
fn unreachable_deny(
    shared: &Shared,
    ev: AccessEvent,
    d: &Decision,
    start: Instant,
) -> Response<Body> {
    let r = Refusal::new(
        Kind::DestinationDenied,
        ev.host.clone(),
        ev.port,
        &*d.rule_id,
    );
    refuse(shared, ev, &r, start)
}

fn established() -> Response<Body> {
    let mut resp = Response::new(refusal::full(""));
    *resp.status_mut() = StatusCode::OK;
    resp
}

#[allow(clippy::too_many_arguments)]
async fn passthrough(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut upstream: TcpStream,
    ctx: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
    port: u16,
    decision: Decision,
    mut ev: AccessEvent,
    start: Instant,
    kill: tokio_util::sync::CancellationToken,
) {
    let shared = &ctx.shared;
    let finish = |mut ev: AccessEvent, outcome: &str| {
        ev.outcome = outcome.to_owned();
        shared.metrics.connection("passthrough", outcome);
        shared.metrics.add_bytes(ev.bytes_up, ev.bytes_down);
        ev.emit(start.elapsed());
    };
    let mut guest = match on_upgrade.await {
        Ok(u) => TokioIo::new(u),
        Err(e) => {
            ev.error = Some(e.to_string());
            return finish(ev, "upgrade_failed");
        }
    };
    let hello = match sni::read_client_hello(&mut guest, snap.config.proxy.handshake_timeout).await
    {
        Ok(h) => h,
        Err(e) => {
            let outcome = match e {
                HelloError::Timeout(_) => "handshake_timeout",
                HelloError::Eof | HelloError::Io(_) => "guest_closed",
                HelloError::TooLarge | HelloError::NotTls(_) => {
                    let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
                    "not_tls"
                }
            };
            ev.error = Some(e.to_string());
            return finish(ev, outcome);
        }
    };
    ev.sni = hello.server_name.clone();
    if let Err(cause) = check_sni(&snap, hello.server_name.as_deref(), port, &decision) {
        let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
        let _ = guest.shutdown().await;
        shared.metrics.refusal("sni_mismatch");
        ev.error = Some(cause);
        return finish(ev, "sni_mismatch");
    }
    if let Err(e) = upstream.write_all(&hello.bytes).await {
        ev.error = Some(e.to_string());
        return finish(ev, "upstream_connect");
    }
    ev.bytes_up = hello.bytes.len() as u64;
    let stops = Stops {
        idle: snap.config.proxy.idle_timeout,
        shutdown: shared.hard_stop.clone(),
        kill,
    };
    shared.metrics.active_tunnels.inc();
    let spliced = tunnel::splice(guest, upstream, &stops).await;
    shared.metrics.active_tunnels.dec();
    ev.bytes_up += spliced.up;
    ev.bytes_down = spliced.down;
    finish(ev, spliced.end.as_str());
}

/// The SNI must be present and fall under the same rule that allowed the CONNECT host.
pub fn check_sni(
    snap: &Snapshot,
    sni: Option<&str>,
    port: u16,
    decision: &Decision,
) -> Result<Host, String> {
    let Some(sni) = sni else {
        return Err("the ClientHello carries no server name (SNI)".to_owned());
    };
    let host = Host::parse(sni).map_err(|e| format!("invalid SNI: {e}"))?;
    snap.config
        .policy
        .same_rule_as(&host, port, decision)
        .map_err(|other| {
            format!(
                "SNI {host} falls under rule `{other}`, not `{}` that allowed the CONNECT host",
                decision.rule_id
            )
        })?;
    Ok(host)
}

async fn plain(req: Request<Incoming>, ctx: Arc<ConnCtx>, start: Instant) -> Response<Body> {
    let shared = &ctx.shared;
    let snap = shared.snapshot();
    let mut ev = AccessEvent::new(Unit::Request, ctx.client, "", 0);
    ev.method = Some(req.method().to_string());
    let uri = req.uri().clone();
    let (Some(authority), Some(scheme)) = (uri.authority().cloned(), uri.scheme_str()) else {
        return bad_request(
            shared,
            ev,
            "origin-form request: this is a forward proxy, send an absolute URI or CONNECT",
            start,
        );
    };
    ev.host = authority.host().to_owned();
    if scheme != "http" {
        return bad_request(
            shared,
            ev,
            "only http:// is proxied in absolute form; use CONNECT for https",
            start,
        );
    }
    let port = authority.port_u16().unwrap_or(80);
    ev.port = port;
    let (host, decision) = match admit(shared, &snap, &mut ev, authority.host(), port, Scheme::Http)
    {
        Ok(v) => v,
        Err(r) => return refuse(shared, ev, &r, start),
    };
    let (mut parts, body) = req.into_parts();
    if let Err(r) = crate::inject::refuse_stray_handles(
        &shared.metrics,
        &parts,
        &ev.host,
        port,
        &decision.rule_id,
    ) {
        return refuse(shared, ev, &r, start);
    }
    if decision.rung == Rung::Bump
        && snap
            .config
            .policy
            .rule(decision.rule.unwrap_or(usize::MAX))
            .is_some_and(|r| r.credential.is_some())
    {
        // Credentials are only ever injected into TLS sessions the proxy terminates; a plain
        // http:// request to a credential destination would expose the secret on the wire.
        let r = Refusal::new(
            Kind::DestinationDenied,
            ev.host.clone(),
            port,
            &*decision.rule_id,
        )
        .with_cause("credential destinations are reachable over https only");
        return refuse(shared, ev, &r, start);
    }
    hop::strip(&mut parts.headers, false);
    let authority_str = if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority_str.as_str())
        .path_and_query(pq)
        .build()
    {
        Ok(u) => u,
        Err(e) => return bad_request(shared, ev, &e.to_string(), start),
    };
    // RFC 9112 §3.2.2: the absolute URI's authority wins over any Host header the guest sent.
    match header::HeaderValue::from_str(&authority_str) {
        Ok(v) => {
            parts.headers.insert(header::HOST, v);
        }
        Err(e) => return bad_request(shared, ev, &e.to_string(), start),
    }
    parts.version = http::Version::HTTP_11;
    let relay = Relay {
        event: ev,
        start,
        rung: decision.rung.as_str(),
        response_timeout: snap.config.upstream.response_header_timeout,
    };
    match forward::relay(shared, &snap.plain, Request::from_parts(parts, body), relay).await {
        Ok(resp) => resp,
        Err((r, ev)) => refuse(shared, ev, &r, start),
    }
}
