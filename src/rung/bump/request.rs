//! One request inside a bumped TLS session: host consistency, credentials, re-origination.
//!
//! A request whose header section is over `proxy.max_header_bytes` is refused with
//! `headers_too_large`. The request's Host / `:authority` must fall under the same rule as the
//! CONNECT host and the SNI; otherwise it is refused with `host_mismatch`. The injector applies
//! the destination's credential; the request then goes upstream over verified TLS to the
//! address the dialer vets for that host. WebSocket upgrades are relayed by splicing the two
//! upgraded streams; any other `Upgrade` (h2c, TLS, a custom protocol) is refused with
//! `bad_request` before it reaches the upstream, because after a 101 the proxy could only
//! splice bytes it cannot inspect (fail closed rather than strip the header and guess).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{Body, full};
use crate::context::{Access, ConnCtx, ReqCtx, new_request_id};
use crate::credential::reflect::{DEFAULT_LIMIT, RedactBody, Reflection};
use crate::credential::{Dest, Injector};
use crate::net::host::Host;
use crate::observe::access_log::{AccessEvent, Outcome, Unit, loggable_path};
use crate::policy::{Decision, OtherRule, Rung};
use crate::refusal::{self, Kind};
use crate::rung::head;
use crate::rung::plain::authority;
use crate::state::Snapshot;
use crate::upstream::hop;
use crate::upstream::relay::request;
use crate::upstream::tunnel::{self, Stops};

/// Why an `Upgrade` other than WebSocket is refused.
const NOT_WEBSOCKET: &str = "only WebSocket upgrades are relayed through a bumped session (`Upgrade: websocket`, nothing else); other protocols would be spliced uninspected";

/// What every request of one bump session shares.
#[derive(Debug)]
pub struct Session {
    pub conn: Arc<ConnCtx>,
    pub snap: Arc<Snapshot>,
    pub connect_host: Host,
    pub port: u16,
    pub decision: Decision,
    pub stops: Stops,
    pub injector: Arc<Injector>,
}

impl Session {
    /// The context of one request on this session.
    fn request_ctx(&self, start: Instant, method: &http::Method) -> ReqCtx {
        let mut ev = AccessEvent::new(
            Unit::Request,
            self.conn.client,
            self.connect_host.to_string(),
            self.port,
        );
        ev.method = Some(method.to_string());
        ev.request_id = Some(new_request_id());
        ev.rung = Some(Rung::Bump);
        ev.rule = Some(self.decision.rule_id.to_string());
        ReqCtx {
            conn: self.conn.clone(),
            snap: self.snap.clone(),
            port: self.port,
            decision: Some(self.decision.clone()),
            access: Access::new(self.conn.shared.clone(), ev, start),
            kill: self.stops.kill.clone(),
        }
    }
}

pub async fn handle(req: Request<Incoming>, s: Arc<Session>) -> Result<Response<Body>, Infallible> {
    let mut ctx = s.request_ctx(Instant::now(), req.method());
    ctx.ev().path = Some(loggable_path(req.uri()));
    if let Err(cause) = head::check(&req, s.snap.config.proxy.max_header_bytes) {
        return Ok(ctx.deny(Kind::HeadersTooLarge, cause));
    }
    if hop::upgrade_token(req.headers()).is_some() && !hop::is_websocket_upgrade(req.headers()) {
        return Ok(ctx.deny(Kind::BadRequest, NOT_WEBSOCKET));
    }
    let host = match request_host(&req, &s) {
        Ok(h) => h,
        Err(cause) => return Ok(ctx.deny(Kind::HostMismatch, cause)),
    };
    ctx.ev().host = host.to_string();
    if ctx.shared().kill.is_enabled() {
        let r = ctx.refusal(Kind::KillSwitch);
        return Ok(ctx.refuse(&r));
    }
    let mut req = req;
    let upgrade = hop::upgrade_token(req.headers());
    let guest_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let dest = Dest {
        snap: &s.snap,
        host: &host,
        port: s.port,
        rule: s.decision.rule.and_then(|i| s.snap.config.policy.rule(i)),
        rule_id: &s.decision.rule_id,
    };
    let injected = match s
        .injector
        .apply(&dest, &mut parts, &ctx.shared().metrics)
        .await
    {
        Ok(c) => c,
        Err(r) => return Ok(ctx.refuse(&r)),
    };
    hop::strip(&mut parts.headers, true);
    ctx.bind_request_id(&mut parts.headers);
    if injected.reflect.is_some() {
        // A compressed echo of the request could not be scanned for the secret.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let authority = authority(&host, s.port, 443);
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
        Err(e) => return Ok(ctx.deny(Kind::BadRequest, e.to_string())),
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
        let body = crate::body::boxed(body);
        return Ok(upgrade_relay(
            &s,
            ctx,
            Request::from_parts(parts, body),
            guest_upgrade,
            injected.reflect.map(|r| r.reflection),
        )
        .await);
    }
    let Some(client) = injected.client.or_else(|| s.snap.tls.clone()) else {
        return Ok(ctx.deny(Kind::UpstreamTls, "no upstream TLS client configured"));
    };
    Ok(crate::rung::relay(
        ctx,
        &client,
        Request::from_parts(parts, body),
        injected.reflect,
    )
    .await)
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
    s.snap
        .config
        .policy
        .same_rule_for(authority.host(), s.port, &s.decision)
        .map_err(|e| match e {
            OtherRule::Invalid(e) => e.to_string(),
            other => other.to_string(),
        })
}

async fn upgrade_relay(
    s: &Session,
    mut ctx: ReqCtx,
    req: Request<Body>,
    guest_upgrade: hyper::upgrade::OnUpgrade,
    reflection: Option<Reflection>,
) -> Response<Body> {
    let Some(client) = s.snap.tls_h1.clone() else {
        return ctx.deny(Kind::UpstreamTls, "no upstream TLS client");
    };
    let timeout = s.snap.config.upstream.response_header_timeout;
    let mut resp = match request(&client, req, timeout).await {
        Ok(r) => r,
        Err(crate::upstream::relay::SendError::Timeout(_)) => {
            return ctx.deny(Kind::UpstreamTimeout, "no upgrade response");
        }
        Err(e) => {
            let r = refusal::from_send(&e, ctx.host(), ctx.port, ctx.rule_id());
            return ctx.refuse(&r);
        }
    };
    ctx.ev().status = Some(resp.status().as_u16());
    if let Some(r) = &reflection {
        r.redact_headers(resp.headers_mut());
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && !hop::is_websocket_upgrade(resp.headers())
    {
        // Only WebSocket was asked for; a switch to anything else is not relayed.
        return ctx.deny(
            Kind::UpstreamConnect,
            "the upstream answered 101 with a protocol other than WebSocket, which is not relayed",
        );
    }
    let mut access = ctx.access;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream declined the upgrade: relay its answer as an ordinary response.
        let (mut parts, body) = resp.into_parts();
        hop::strip(&mut parts.headers, false);
        access.finish(Outcome::Ok);
        return match reflection {
            Some(r) => Response::from_parts(
                parts,
                crate::body::boxed(RedactBody::new(body, r, DEFAULT_LIMIT)),
            ),
            None => Response::from_parts(parts, crate::body::boxed(body)),
        };
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let stops = s.stops.clone();
    s.conn.shared.tasks.spawn(async move {
        match tokio::try_join!(guest_upgrade, upstream_upgrade) {
            Ok((g, u)) => {
                let spliced = tunnel::splice(TokioIo::new(g), TokioIo::new(u), &stops).await;
                access.ev.bytes_up = spliced.up;
                access.ev.bytes_down = spliced.down;
                access.finish(spliced.end.into());
            }
            Err(e) => {
                access.ev.error = Some(e.to_string());
                access.finish(Outcome::UpgradeFailed);
            }
        }
    });
    let (parts, _body) = resp.into_parts();
    Response::from_parts(parts, full(""))
}
