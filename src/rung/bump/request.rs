//! One request inside a bumped TLS session: host consistency, request rules, credentials,
//! re-origination.
//!
//! A request whose header section is over `proxy.max_header_bytes` is refused with
//! `headers_too_large`. Each request is judged by the policy in force when it arrives: after a
//! reload, or when the session's sandbox changed profile, the CONNECT host is decided again
//! (a destination no longer bumped is refused). The request's Host / `:authority` must fall
//! under the same rule as the CONNECT host and the SNI; otherwise it is refused with
//! `host_mismatch`. The rule's methods, paths and deny entries then judge the request
//! (`method_denied`, `path_denied`; in report mode logged as `would_deny` and forwarded). The injector applies
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
use crate::policy::{Decision, OtherRule, Rung, Scheme};
use crate::refusal::{self, Kind};
use crate::rung::head;
use crate::rung::plain::authority;
use crate::state::Snapshot;
use crate::state::sandboxes::Sandbox;
use crate::upstream::hop;
use crate::upstream::relay::request;
use crate::upstream::tunnel::{self, Stops};

/// Why an `Upgrade` other than WebSocket is refused.
const NOT_WEBSOCKET: &str = "only WebSocket upgrades are relayed through a bumped session (`Upgrade: websocket`, nothing else); other protocols would be spliced uninspected";

/// The sandbox and decision a request is judged by.
type Judged = (Option<Arc<Sandbox>>, Decision);

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
    /// The sandbox the session was identified as.
    pub sandbox: Option<Arc<Sandbox>>,
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
        ev.sandbox = self
            .sandbox
            .as_ref()
            .map(|s| (s.id.clone(), s.label.clone()));
        ReqCtx {
            conn: self.conn.clone(),
            snap: self.conn.shared.snapshot(),
            port: self.port,
            decision: Some(self.decision.clone()),
            access: Access::new(self.conn.shared.clone(), ev, start),
            sandbox: self.sandbox.clone(),
            kill: self.stops.kill.clone(),
        }
    }

    /// The sandbox and decision a request arriving now is judged by: the session's while
    /// neither the policy nor the sandbox changed, else the CONNECT host decided afresh.
    fn current(&self, snap: &Snapshot) -> Result<Judged, (Kind, String)> {
        let sandbox = match &self.sandbox {
            None => None,
            Some(s) => match self.conn.shared.sandboxes.get(&s.id) {
                Some(now) => Some(now),
                None => return Err((Kind::SandboxRemoved, String::new())),
            },
        };
        let same_sandbox = match (&sandbox, &self.sandbox) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => true,
        };
        if same_sandbox && std::ptr::eq(snap, &*self.snap) {
            return Ok((sandbox, self.decision.clone()));
        }
        let who = sandbox.as_deref().map(Sandbox::who);
        let d = snap
            .config
            .policy
            .decide(who, &self.connect_host, self.port, Scheme::Connect);
        if d.rung != Rung::Bump {
            return Err((
                Kind::DestinationDenied,
                format!(
                    "the policy changed: {} is now `{}` by rule `{}`",
                    self.connect_host, d.rung, d.rule_id
                ),
            ));
        }
        Ok((sandbox, d))
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
    let (sandbox, decision) = match s.current(&ctx.snap) {
        Ok(x) => x,
        Err((kind, cause)) => return Ok(ctx.deny(kind, cause)),
    };
    if decision.rule_id != s.decision.rule_id {
        ctx.ev().rule = Some(decision.rule_id.to_string());
    }
    let who = sandbox.as_deref().map(Sandbox::who);
    let host = match request_host(&req, &ctx.snap, who, s.port, &decision) {
        Ok(h) => h,
        Err(cause) => return Ok(ctx.deny(Kind::HostMismatch, cause)),
    };
    ctx.ev().host = host.to_string();
    if ctx.shared().kill.is_enabled() {
        let r = ctx.refusal(Kind::KillSwitch);
        return Ok(ctx.refuse(&r));
    }
    if let Some(r) = ctx.killed() {
        return Ok(ctx.refuse(&r));
    }
    if let Err(r) = crate::rung::judge_request(&mut ctx, &decision, req.method(), req.uri()) {
        return Ok(ctx.refuse(&r));
    }
    let mut req = req;
    let upgrade = hop::upgrade_token(req.headers());
    let guest_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // A guest speaking HTTP/1.1 needs nothing of HTTP/2 upstream, and an HTTP/1.1 upstream
    // leg relays faster (no framing, no second flow control; bench/README.md, "Where the
    // time goes"): such requests go out over HTTP/1.1. HTTP/2 guests keep HTTP/2 upstream
    // where the upstream offers it (gRPC needs it end to end).
    let guest = parts.version;
    let guest_h1 = guest <= http::Version::HTTP_11;
    let snap = ctx.snap.clone();
    let dest = Dest {
        snap: &snap,
        host: &host,
        port: s.port,
        rule: decision.rule.as_deref(),
        rule_id: &decision.rule_id,
        sandbox: sandbox.as_deref().map(|s| &*s.id),
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
            &snap,
            ctx,
            Request::from_parts(parts, body),
            guest_upgrade,
            injected.reflect.map(|r| r.reflection),
        )
        .await);
    }
    let pooled = if guest_h1 { &snap.tls_h1 } else { &snap.tls };
    let Some(client) = injected.client.or_else(|| pooled.clone()) else {
        return Ok(ctx.deny(Kind::UpstreamTls, "no upstream TLS client configured"));
    };
    Ok(crate::rung::relay(
        ctx,
        &client,
        Request::from_parts(parts, body),
        injected.reflect,
        guest,
    )
    .await)
}

/// The request's own host (`:authority` for HTTP/2, `Host` for HTTP/1.1), which must be
/// covered by the session's rule and name the session's port.
fn request_host(
    req: &Request<Incoming>,
    snap: &Snapshot,
    who: Option<crate::policy::Who<'_>>,
    port: u16,
    decision: &Decision,
) -> Result<Host, String> {
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
        && p != port
    {
        return Err(format!(
            "{raw} names port {p}, the session is for port {port}"
        ));
    }
    snap.config
        .policy
        .same_rule_for(who, authority.host(), port, decision)
        .map_err(|e| match e {
            OtherRule::Invalid(e) => e.to_string(),
            other => other.to_string(),
        })
}

async fn upgrade_relay(
    s: &Session,
    snap: &Snapshot,
    mut ctx: ReqCtx,
    req: Request<Body>,
    guest_upgrade: hyper::upgrade::OnUpgrade,
    reflection: Option<Reflection>,
) -> Response<Body> {
    let Some(client) = snap.tls_h1.clone() else {
        return ctx.deny(Kind::UpstreamTls, "no upstream TLS client");
    };
    let timeout = snap.config.upstream.response_header_timeout;
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
