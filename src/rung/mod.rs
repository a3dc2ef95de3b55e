//! The egress ladder: admission of a frontend's [`Target`], then the rung that carries it —
//! pass-through (SNI check, then bytes spliced unchanged), bump (guest TLS terminated, each
//! request re-originated) or a plain-HTTP relay.
//!
//! A frontend calls [`admit`] and then [`Ladder::tunnel`] (CONNECT),
//! [`Ladder::transparent`] (a redirected TLS connection), [`Ladder::opaque`] (a redirected
//! connection that is neither TLS nor HTTP) or [`plain::relay`] (absolute-form and
//! transparent HTTP). For connections the guest addressed itself, the original destination
//! must be one the proxy resolves the host to (destination binding, `address_mismatch`). [`head`] measures a request's header section against
//! `proxy.max_header_bytes` the same way for frontends and bumped requests. Rungs do not
//! parse guest requests (frontends do), do not decide policy (the policy does, once, in
//! `admit`) and dial only through the snapshot's dialer.

pub mod bump;
mod coalesce;
pub mod head;
pub mod passthrough;
pub mod plain;
mod prefixed;
mod relay;
pub mod sni;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use http::{Response, StatusCode};

use crate::body::{Body, full};
use crate::context::{ReqCtx, Target};
use crate::net::host::Host;
use crate::observe::access_log::{Outcome, Unit};
use crate::policy::{Decision, Denied, RequestVerdict, Rung};
use crate::refusal::{self, Kind, Refusal};
use bump::Bumper;
use hyper_util::rt::TokioIo;
use sni::PeekedHello;

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
    if let Some(r) = ctx.killed() {
        return Err(r);
    }
    if ctx.sandbox.is_none() && ctx.snap.config.proxy.require_sandbox {
        return Err(ctx.refusal(Kind::SandboxRequired));
    }
    let decision =
        ctx.snap
            .config
            .policy
            .decide(ctx.who(), &host, target.port, target.via.scheme());
    let deny = decision.rung == Rung::Deny;
    let would_deny = decision.would_deny;
    let rule = decision.rule_id.clone();
    ctx.admitted(&host, decision);
    if deny {
        return Err(ctx.refusal(Kind::DestinationDenied));
    }
    if would_deny {
        report(ctx, Denied::Destination.as_str(), &rule);
    }
    Ok(host)
}

/// Judges one request the proxy can read (bumped, or plain HTTP) by its rule's methods, paths
/// and deny entries. Report mode records `would_deny` on the unit, counts it and lets the
/// request through.
pub fn judge_request(
    ctx: &mut ReqCtx,
    decision: &Decision,
    method: &http::Method,
    uri: &http::Uri,
) -> Result<(), Refusal> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    match decision.request(method.as_str(), target) {
        RequestVerdict::Allow => Ok(()),
        RequestVerdict::Deny(d) => {
            let kind = match d.what {
                Denied::Method => Kind::MethodDenied,
                Denied::Path | Denied::Destination => Kind::PathDenied,
            };
            Err(ctx.refusal(kind).with_cause(d.detail))
        }
        RequestVerdict::WouldDeny(d) => {
            report(ctx, d.what.as_str(), &decision.rule_id);
            Ok(())
        }
    }
}

/// Records a report-mode would-deny on the unit and counts it.
fn report(ctx: &mut ReqCtx, code: &'static str, rule: &str) {
    ctx.ev().would_deny = Some(code);
    let label = ctx.sandbox_label().map(str::to_owned);
    ctx.shared()
        .metrics
        .would_deny(label.as_deref(), code, rule);
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
                tasks.spawn(async move {
                    if let Some((ctx, guest)) = upgraded(ctx, on_upgrade).await {
                        bumper.session(ctx, host, decision, guest).await;
                    }
                });
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
                tasks.spawn(async move {
                    if let Some((ctx, guest, buffered)) = upgraded_tcp(ctx, on_upgrade).await {
                        let opening = passthrough::Opening::ReadHello;
                        passthrough::run(ctx, decision, guest, buffered, dialed.stream, opening)
                            .await;
                    }
                });
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

impl Ladder {
    /// Carries an admitted transparent TLS connection whose ClientHello (`hello`, already
    /// read) named `host`: binds the original destination to the host, then opens a
    /// pass-through to exactly that address or bumps. Refusals end the unit and send the guest
    /// a TLS alert.
    pub async fn transparent(
        &self,
        mut ctx: ReqCtx,
        host: Host,
        guest: TcpStream,
        original: SocketAddr,
        hello: PeekedHello,
    ) {
        let Some(decision) = ctx.decision.clone() else {
            let _ = ctx.deny(Kind::DestinationDenied, "not admitted");
            return;
        };
        let answered = ctx
            .shared()
            .answers
            .answered(&host.to_string(), original.ip());
        let dialer = ctx.snap.dialer.clone();
        match decision.rung {
            Rung::Bump => {
                ctx.ev().unit = Unit::Bumped;
                if let Err(e) = dialer.vet_bound(&host, original.ip(), answered).await {
                    return refuse_dial_tls(ctx, &e, guest).await;
                }
                let guest = prefixed::Prefixed::new(hello.bytes, guest);
                self.bump.clone().session(ctx, host, decision, guest).await;
            }
            Rung::Passthrough => {
                let t0 = Instant::now();
                let dialed = match dialer.dial_bound(&host, original, answered).await {
                    Ok(d) => d,
                    Err(e) => return refuse_dial_tls(ctx, &e, guest).await,
                };
                ctx.shared()
                    .metrics
                    .connect_latency(Rung::Passthrough, t0.elapsed().as_secs_f64());
                ctx.ev().resolved = Some(dialed.addr);
                let opening = passthrough::Opening::Hello(hello);
                passthrough::run(ctx, decision, guest, Vec::new(), dialed.stream, opening).await;
            }
            Rung::Deny => {
                let r = ctx.refusal(Kind::DestinationDenied);
                refuse_tls(ctx, &r, guest).await;
            }
        }
    }

    /// Carries an admitted redirected connection that is neither TLS nor HTTP: only a rule
    /// naming the address (not the default rung) lets raw TCP through, as a pass-through to
    /// exactly the original destination. A refusal closes the connection.
    pub async fn opaque(&self, mut ctx: ReqCtx, guest: TcpStream, original: SocketAddr) {
        let Some(decision) = ctx.decision.clone() else {
            let _ = ctx.deny(Kind::DestinationDenied, "not admitted");
            return;
        };
        if decision.rule.is_none() || decision.rung != Rung::Passthrough {
            let _ = ctx.deny(
                Kind::DestinationDenied,
                "the connection is neither TLS nor HTTP; raw TCP needs a pass-through rule naming this address and port",
            );
            return;
        }
        let host = Host::Ip(original.ip());
        let t0 = Instant::now();
        let dialed = match ctx
            .snap
            .dialer
            .clone()
            .dial_bound(&host, original, false)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                let r = refusal::from_dial(&e, ctx.host(), ctx.port, ctx.rule_id());
                let _ = ctx.refuse(&r);
                return;
            }
        };
        ctx.shared()
            .metrics
            .connect_latency(Rung::Passthrough, t0.elapsed().as_secs_f64());
        ctx.ev().resolved = Some(dialed.addr);
        let opening = passthrough::Opening::Opaque;
        passthrough::run(ctx, decision, guest, Vec::new(), dialed.stream, opening).await;
    }
}

/// Ends a refused transparent TLS unit: counted and logged like any refusal, and the guest's
/// TLS stack gets a fatal `access_denied` alert instead of a reset (there is no HTTP yet to
/// carry the refusal body).
pub async fn refuse_tls(ctx: ReqCtx, r: &Refusal, mut guest: TcpStream) {
    let _ = ctx.refuse(r);
    let _ = guest.write_all(&sni::ALERT_ACCESS_DENIED).await;
    let _ = guest.shutdown().await;
}

/// [`refuse_tls`] for a dial failure.
async fn refuse_dial_tls(ctx: ReqCtx, e: &crate::net::dial::DialError, guest: TcpStream) {
    let r = refusal::from_dial(e, ctx.host(), ctx.port, ctx.rule_id());
    refuse_tls(ctx, &r, guest).await;
}

/// The CONNECT's upgraded connection as the guest's TCP stream and the bytes hyper had
/// already read past the CONNECT head, or the unit finished as `upgrade_failed`.
async fn upgraded_tcp(
    ctx: ReqCtx,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<(ReqCtx, TcpStream, Vec<u8>)> {
    let (mut ctx, upgraded) = upgraded(ctx, on_upgrade).await?;
    match upgraded.into_inner().downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Some((ctx, parts.io.into_inner(), parts.read_buf.to_vec())),
        Err(_) => {
            ctx.ev().error = Some("the upgraded connection is not a TCP stream".to_owned());
            ctx.access.finish(Outcome::UpgradeFailed);
            None
        }
    }
}

/// The CONNECT's upgraded connection, or the unit finished as `upgrade_failed`.
async fn upgraded(
    mut ctx: ReqCtx,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<(ReqCtx, TokioIo<hyper::upgrade::Upgraded>)> {
    match on_upgrade.await {
        Ok(u) => Some((ctx, TokioIo::new(u))),
        Err(e) => {
            ctx.ev().error = Some(e.to_string());
            ctx.access.finish(Outcome::UpgradeFailed);
            None
        }
    }
}

fn established() -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::OK;
    resp
}
