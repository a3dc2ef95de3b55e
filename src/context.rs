//! The context types every data-path stage shares: the guest connection ([`ConnCtx`]), the
//! typed target a frontend produces ([`Target`]), and the per-unit context ([`ReqCtx`]) with
//! its access-log guard ([`Access`]).
//!
//! This module is a leaf of the data path: frontends create these values and rungs consume
//! them, but nothing here parses guest input, decides policy or dials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Response};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::Body;
use crate::net::host::Host;
use crate::observe::access_log::{AccessEvent, Outcome, Unit};
use crate::policy::{Decision, Scheme, Who};
use crate::refusal::{self, Kind, Refusal};
use crate::state::sandboxes::Sandbox;
use crate::state::{Shared, Snapshot};
use crate::upstream::tunnel::{End, Kill};

/// One accepted guest connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub client: SocketAddr,
    /// Held by the connection and by anything it spawns (tunnels, bump sessions), so the
    /// connection limit counts them too.
    pub permit: Arc<OwnedSemaphorePermit>,
}

/// How the guest named the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `CONNECT host:port` on the explicit listener.
    Connect,
    /// An absolute-form `http://host:port/...` request on the explicit listener.
    Absolute,
    /// A redirected connection on the transparent listener whose TLS ClientHello named the
    /// host (SNI).
    TransparentTls,
    /// A plain-HTTP request on the transparent listener, named by its `Host`.
    TransparentHttp,
    /// A redirected connection that is neither TLS nor HTTP: the host is the original
    /// destination address.
    TransparentOpaque,
}

impl Via {
    /// The scheme the policy matches ports with.
    pub fn scheme(self) -> Scheme {
        match self {
            Via::Connect | Via::TransparentTls | Via::TransparentOpaque => Scheme::Connect,
            Via::Absolute | Via::TransparentHttp => Scheme::Http,
        }
    }
}

/// What a frontend hands to the ladder: the destination as the guest named it, not yet
/// normalized or judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub via: Via,
    /// The host as sent (normalized by admission).
    pub host: String,
    pub port: u16,
}

/// The access event of one unit (tunnel, bump session, request) and the promise that it is
/// logged and counted exactly once: by [`Access::finish`], by a refusal, or — if the unit is
/// dropped on a path nobody finished — on drop, as `aborted`.
#[derive(Debug)]
pub struct Access {
    pub ev: AccessEvent,
    start: Instant,
    shared: Arc<Shared>,
    done: bool,
}

impl Access {
    pub fn new(shared: Arc<Shared>, ev: AccessEvent, start: Instant) -> Access {
        Access {
            ev,
            start,
            shared,
            done: false,
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records how the unit ended, counts it and emits the event.
    pub fn finish(mut self, outcome: Outcome) {
        self.ev.outcome = outcome;
        self.emit();
    }

    fn emit(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if self.ev.would_deny.is_some() && self.ev.outcome == Outcome::Ok {
            self.ev.outcome = Outcome::WouldDeny;
        }
        let ev = &self.ev;
        let metrics = &self.shared.metrics;
        let rule = ev.rule.as_deref();
        let sandbox = ev.sandbox.as_ref().map(|(_, label)| &**label);
        match ev.unit {
            Unit::Request => metrics.request(ev.rung, rule, ev.outcome, ev.status, sandbox),
            Unit::Tunnel | Unit::Bumped => metrics.connection(ev.rung, rule, ev.outcome, sandbox),
        }
        // A bump session's bytes are the sum of its requests', which count themselves.
        if ev.unit != Unit::Bumped {
            metrics.add_bytes(ev.bytes_up, ev.bytes_down);
        }
        ev.emit(self.start.elapsed());
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        if !self.done {
            self.ev.outcome = Outcome::Aborted;
            self.emit();
        }
    }
}

/// The header that carries a request's id to the upstream and back in refusals.
pub const REQUEST_ID: &str = "x-request-id";

/// A fresh request id: 128 random bits, hex.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A guest-sent id is kept when it is short, printable and unremarkable.
fn usable_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
        && egress_handle::scan(s.as_bytes()).is_empty();
    ok.then_some(s)
}

/// Everything one unit of work needs, from admission to its access event.
#[derive(Debug)]
pub struct ReqCtx {
    pub conn: Arc<ConnCtx>,
    pub snap: Arc<Snapshot>,
    pub port: u16,
    /// Set by admission; `None` while the request is still being parsed.
    pub decision: Option<Decision>,
    pub access: Access,
    /// The sandbox the unit was identified as; `None`: the top-level policy applies.
    pub sandbox: Option<Arc<Sandbox>>,
    /// Fires when the kill switch is turned on after this unit started, or its sandbox is
    /// removed.
    pub kill: Kill,
}

impl ReqCtx {
    /// A context for a new unit on `conn`, with the current snapshot. The kill token is taken
    /// before any kill-switch check, so a unit admitted just before the switch cannot
    /// outlive it.
    pub fn new(conn: Arc<ConnCtx>, unit: Unit, start: Instant) -> ReqCtx {
        let shared = conn.shared.clone();
        let kill = Kill::new(shared.kill.token());
        let snap = shared.snapshot();
        let mut ev = AccessEvent::new(unit, conn.client, "", 0);
        ev.request_id = Some(new_request_id());
        ReqCtx {
            conn,
            snap,
            port: 0,
            decision: None,
            access: Access::new(shared, ev, start),
            sandbox: None,
            kill,
        }
    }

    /// Records who the unit is for: its policy, log field, metric label and kill signal.
    pub fn identified(&mut self, sandbox: Option<Arc<Sandbox>>) {
        if let Some(s) = &sandbox {
            self.access.ev.sandbox = Some((s.id.clone(), s.label.clone()));
            self.kill = self.kill.clone().with_sandbox(s.removed().clone());
        }
        self.sandbox = sandbox;
    }

    /// Whom the policy judges this unit for.
    pub fn who(&self) -> Option<Who<'_>> {
        self.sandbox.as_deref().map(Sandbox::who)
    }

    /// The sandbox's metric label, if any.
    pub fn sandbox_label(&self) -> Option<&str> {
        self.access.ev.sandbox.as_ref().map(|(_, l)| &**l)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.conn.shared
    }

    pub fn ev(&mut self) -> &mut AccessEvent {
        &mut self.access.ev
    }

    pub fn host(&self) -> &str {
        &self.access.ev.host
    }

    /// Records the admitted host and decision.
    pub fn admitted(&mut self, host: &Host, decision: Decision) {
        self.access.ev.host = host.to_string();
        self.access.ev.rung = Some(decision.rung);
        self.access.ev.rule = Some(decision.rule_id.to_string());
        self.decision = Some(decision);
    }

    /// Takes the guest's `x-request-id` when it is well-formed, else puts this unit's
    /// generated one on the request, so the upstream, the access event and any refusal share
    /// one id.
    pub fn bind_request_id(&mut self, headers: &mut HeaderMap) {
        if let Some(theirs) = headers.get(REQUEST_ID).and_then(usable_request_id) {
            self.access.ev.request_id = Some(theirs.to_owned());
            return;
        }
        let id = self
            .access
            .ev
            .request_id
            .get_or_insert_with(new_request_id)
            .clone();
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert(REQUEST_ID, v);
        }
    }

    pub fn rule_id(&self) -> &str {
        self.decision.as_ref().map_or("", |d| &*d.rule_id)
    }

    /// A refusal of `kind` for this unit's destination and rule.
    pub fn refusal(&self, kind: Kind) -> Refusal {
        let rule = match kind {
            Kind::KillSwitch => "kill_switch",
            Kind::ProxyAuthRequired | Kind::SandboxRequired => "sandbox_identity",
            _ => self.rule_id(),
        };
        Refusal::new(kind, self.host(), self.port, rule)
    }

    /// The kill switch or the sandbox's removal, as a refusal, when either has fired.
    pub fn killed(&self) -> Option<Refusal> {
        match self.kill.state()? {
            End::SandboxRemoved => Some(self.refusal(Kind::SandboxRemoved)),
            _ => Some(self.refusal(Kind::KillSwitch)),
        }
    }

    /// Answers `r`: counts it, logs the access event, and builds the guest-facing response.
    pub fn refuse(mut self, r: &Refusal) -> Response<Body> {
        self.shared().metrics.refusal(r.kind);
        let mut r = r.clone();
        r.request_id = self.access.ev.request_id.clone();
        if let Some(c) = &r.cause {
            self.access.ev.error = Some(c.clone());
        }
        self.access.ev.status = Some(r.kind.status().as_u16());
        self.access.finish(Outcome::Refused(r.kind));
        refusal::respond(&r)
    }

    /// Refuses with `kind` and a cause.
    pub fn deny(self, kind: Kind, cause: impl Into<String>) -> Response<Body> {
        let r = self.refusal(kind).with_cause(cause);
        self.refuse(&r)
    }
}
