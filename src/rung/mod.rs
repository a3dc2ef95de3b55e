//! The egress ladder: admission of a frontend's [`Target`], then the rung that carries it —
//! pass-through (SNI check, then bytes spliced unchanged), bump (guest TLS terminated, each
//! request re-originated) or a plain-HTTP relay.
//!
//! A frontend calls [`admit`] and then [`Ladder::tunnel`] (CONNECT) or [`plain::relay`]
//! (absolute-form). [`head`] measures a request's header section against
//! `proxy.max_header_bytes` the same way for frontends and bumped requests. Rungs do not
//! parse guest requests (frontends do), do not decide policy (the policy does, once, in
//! `admit`) and dial only through the snapshot's dialer.

pub mod bump;
pub mod head;
pub mod passthrough;
pub mod plain;
mod relay;
pub mod sni;

use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};

use crate::body::{Body, full};
use crate::context::{ReqCtx, Target};
use crate::net::host::Host;
use crate::observe::access_log::Unit;
use crate::policy::Rung;
use crate::refusal::{self, Kind, Refusal};
use bump::Bumper;

pub use relay::relay;

/// The checks every target goes through before anything is dialed: a well-formed host, the
/// kill switch, the policy. Records the host and decision on `ctx`.
pub fn admit(ctx: &mut ReqCtx, target: &Target) -> Result<Host, Refusal> {
    ctx.port = target.port;
    ctx.ev().host = target.host.clone();
    ctx.ev().port = target.port;
    let host = Host::parse(&target.host)
        .map_err(|e| ctx.refusal(Kind::BadRequest).with_cause(e.to_string()))?;
    ctx.ev().host = host.to_string();
    if ctx.shared().kill.is_enabled() {
        return Err(ctx.refusal(Kind::KillSwitch));
    }
    let decision = ctx
        .snap
        .config
        .policy
        .decide(&host, target.port, target.via.scheme());
    let deny = decision.rung == Rung::Deny;
    ctx.admitted(&host, decision);
    if deny {
        return Err(ctx.refusal(Kind::DestinationDenied));
    }
    Ok(host)
}

/// The rungs that carry tunnels, built once at startup.
#[derive(Debug)]
pub struct Ladder {
    pub bump: Arc<Bumper>,
}

impl Ladder {
    /// Carries an admitted CONNECT: opens the upstream (pass-through) or vets it (bump), then
    /// answers 200 and continues on the upgraded connection in a task of its own.
    pub async fn tunnel(
        &self,
        mut ctx: ReqCtx,
        host: Host,
        on_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<Body> {
        let Some(decision) = ctx.decision.clone() else {
            return ctx.deny(Kind::DestinationDenied, "not admitted");
        };
        match decision.rung {
            Rung::Bump => {
                ctx.ev().unit = Unit::Bumped;
                let bumper = self.bump.clone();
                // Vet the address now so a denied destination gets a readable 403 before the
                // guest starts TLS; every re-originated request is vetted again when dialed.
                if let Err(e) = ctx.snap.dialer.vet(&host).await {
                    let r = refusal::from_dial(&e, ctx.host(), ctx.port, ctx.rule_id());
                    return ctx.refuse(&r);
                }
                let tasks = ctx.shared().tasks.clone();
                tasks.spawn(bumper.session(ctx, host, decision, on_upgrade));
                established()
            }
            Rung::Passthrough => {
                let t0 = Instant::now();
                let dialed = match ctx.snap.dialer.dial(&host, ctx.port).await {
                    Ok(d) => d,
                    Err(e) => {
                        let r = refusal::from_dial(&e, ctx.host(), ctx.port, ctx.rule_id());
                        return ctx.refuse(&r);
                    }
                };
                ctx.shared()
                    .metrics
                    .connect_latency(Rung::Passthrough, t0.elapsed().as_secs_f64());
                ctx.ev().resolved = Some(dialed.addr);
                let tasks = ctx.shared().tasks.clone();
                tasks.spawn(passthrough::run(ctx, decision, on_upgrade, dialed.stream));
                established()
            }
            // `admit` already refused deny; kept total so a future rung cannot slip through.
            Rung::Deny => {
                let r = ctx.refusal(Kind::DestinationDenied);
                ctx.refuse(&r)
            }
        }
    }
}

fn established() -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::OK;
    resp
}
