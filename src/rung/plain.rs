//! The plain-HTTP relay for admitted absolute-form `http://` requests: refuses handles (no
//! credential is ever injected into cleartext) and credential destinations, rewrites the
//! request for the upstream (hop-by-hop headers, absolute URI, `Host`) and relays it through
//! the snapshot's pooled plain client.

use http::{Request, Response, Uri, header};
use hyper::body::Incoming;

use crate::body::Body;
use crate::context::ReqCtx;
use crate::credential;
use crate::net::host::Host;
use crate::observe::access_log::loggable_path;
use crate::policy::Rung;
use crate::refusal::Kind;
use crate::upstream::hop;

/// `host[:port]`, leaving out the scheme's default port.
pub fn authority(host: &Host, port: u16, default_port: u16) -> String {
    if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// Relays an admitted absolute-form request.
pub async fn relay(mut ctx: ReqCtx, host: Host, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    ctx.ev().path = Some(loggable_path(&parts.uri));
    if let Err(r) = credential::scan::refuse_stray_handles(
        &ctx.shared().metrics,
        &parts,
        ctx.host(),
        ctx.port,
        ctx.rule_id(),
        ctx.sandbox.as_deref().map(|s| &*s.id),
    ) {
        return ctx.refuse(&r);
    }
    let bumps_credential = ctx.decision.as_ref().is_some_and(|d| {
        d.rung == Rung::Bump && d.rule.as_ref().is_some_and(|r| r.credential.is_some())
    });
    if bumps_credential {
        // Credentials are only ever injected into TLS sessions the proxy terminates; a plain
        // http:// request to a credential destination would expose the secret on the wire.
        return ctx.deny(
            Kind::DestinationDenied,
            "credential destinations are reachable over https only",
        );
    }
    if let Some(d) = ctx.decision.clone()
        && d.rung == Rung::Bump
        && let Err(r) = super::judge_request(&mut ctx, &d, &parts.method, &parts.uri)
    {
        return ctx.refuse(&r);
    }
    hop::strip(&mut parts.headers, false);
    ctx.bind_request_id(&mut parts.headers);
    let authority = authority(&host, ctx.port, 80);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(pq)
        .build()
    {
        Ok(u) => u,
        Err(e) => return ctx.deny(Kind::BadRequest, e.to_string()),
    };
    // RFC 9112 §3.2.2: the absolute URI's authority wins over any Host header the guest sent.
    match header::HeaderValue::from_str(&authority) {
        Ok(v) => {
            parts.headers.insert(header::HOST, v);
        }
        Err(e) => return ctx.deny(Kind::BadRequest, e.to_string()),
    }
    parts.version = http::Version::HTTP_11;
    let client = ctx.snap.plain.clone();
    // Plain-HTTP guests speak HTTP/1.x to the proxy.
    let guest = http::Version::HTTP_11;
    super::relay(ctx, &client, Request::from_parts(parts, body), None, guest).await
}
