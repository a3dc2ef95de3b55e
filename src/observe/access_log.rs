//! The canonical decision log: one structured event per tunnel or proxied request.
//!
//! Field names are constants so tests, dashboards and log pipelines share one spelling. The
//! event carries destinations, decisions and byte counts — never header values, secrets or
//! handles. Audit events for credential redemption live with the injector, not here.

use std::net::SocketAddr;
use std::time::Duration;

use egress_handle::redact_in;

use crate::policy::Rung;
use crate::refusal::Kind;
use crate::upstream::tunnel::End;

/// Log target of access events (filterable with `log.level: egress_edge::access=info`).
pub const TARGET: &str = "egress_edge::access";

pub mod fields {
    pub const KIND: &str = "kind";
    pub const CLIENT: &str = "client";
    pub const HOST: &str = "host";
    pub const PORT: &str = "port";
    pub const SNI: &str = "sni";
    pub const RESOLVED: &str = "resolved";
    /// Transparent listener: where the guest's connection was addressed.
    pub const ORIGINAL_DST: &str = "original_dst";
    pub const RUNG: &str = "rung";
    pub const RULE: &str = "rule";
    /// The sandbox the unit was identified as (empty when none).
    pub const SANDBOX: &str = "sandbox";
    /// Report mode: the code enforce mode would have refused with.
    pub const WOULD_DENY: &str = "would_deny";
    pub const METHOD: &str = "method";
    pub const PATH: &str = "path";
    pub const REQUEST_ID: &str = "request_id";
    pub const TTFB_MS: &str = "ttfb_ms";
    pub const STATUS: &str = "status";
    pub const BYTES_UP: &str = "bytes_up";
    pub const BYTES_DOWN: &str = "bytes_down";
    pub const DURATION_MS: &str = "duration_ms";
    pub const OUTCOME: &str = "outcome";
    pub const ERROR: &str = "error";
}

/// How a unit ended: the closed set of values of the `outcome` field and metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed normally (a tunnel both sides closed, a response fully relayed).
    Ok,
    /// Refused by the proxy with this code.
    Refused(Kind),
    IdleTimeout,
    Shutdown,
    KillSwitch,
    /// An I/O error on either side (reset, broken pipe).
    IoError,
    /// The HTTP upgrade (CONNECT or WebSocket) never completed.
    UpgradeFailed,
    HandshakeTimeout,
    /// No request head arrived in `proxy.header_read_timeout`.
    HeaderTimeout,
    /// The guest went away before sending a ClientHello.
    GuestClosed,
    /// The guest sent something that is not TLS into a TLS tunnel.
    NotTls,
    SniMismatch,
    /// The upstream connection failed after the tunnel was established.
    UpstreamConnect,
    LeafMintFailed,
    GuestTlsFailed,
    /// The unit was dropped before any stage recorded how it ended.
    Aborted,
    /// Report mode: completed, though enforce mode would have refused it.
    WouldDeny,
    /// Its sandbox was removed (admin API or reload) while it was open.
    SandboxRemoved,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused(k) => k.code(),
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Shutdown => "shutdown",
            Outcome::KillSwitch => "kill_switch",
            Outcome::IoError => "io_error",
            Outcome::UpgradeFailed => "upgrade_failed",
            Outcome::HandshakeTimeout => "handshake_timeout",
            Outcome::HeaderTimeout => "header_timeout",
            Outcome::GuestClosed => "guest_closed",
            Outcome::NotTls => "not_tls",
            Outcome::SniMismatch => "sni_mismatch",
            Outcome::UpstreamConnect => "upstream_connect",
            Outcome::LeafMintFailed => "leaf_mint_failed",
            Outcome::GuestTlsFailed => "guest_tls_failed",
            Outcome::Aborted => "aborted",
            Outcome::WouldDeny => "would_deny",
            Outcome::SandboxRemoved => "sandbox_removed",
        }
    }
}

impl From<End> for Outcome {
    fn from(end: End) -> Outcome {
        match end {
            End::Closed => Outcome::Ok,
            End::IdleTimeout => Outcome::IdleTimeout,
            End::Shutdown => Outcome::Shutdown,
            End::KillSwitch => Outcome::KillSwitch,
            End::SandboxRemoved => Outcome::SandboxRemoved,
            End::Error => Outcome::IoError,
        }
    }
}

/// A request's path for the log: the path as sent, each query value replaced by `…` (query
/// values carry tokens, emails and keys), and any handle redacted.
pub fn loggable_path(uri: &http::Uri) -> String {
    let mut out = redact_in(uri.path()).into_owned();
    if let Some(q) = uri.query() {
        out.push('?');
        let names: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{}=…", redact_in(name)),
                None => redact_in(pair).into_owned(),
            })
            .collect();
        out.push_str(&names.join("&"));
    }
    out
}

/// What kind of unit the event describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Tunnel,
    Request,
    Bumped,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Tunnel => "tunnel",
            Unit::Request => "request",
            Unit::Bumped => "bump_session",
        }
    }
}

/// The facts of one access; filled in as the stages learn them, emitted once.
#[derive(Debug)]
pub struct AccessEvent {
    pub unit: Unit,
    pub client: SocketAddr,
    pub host: String,
    pub port: u16,
    pub sni: Option<String>,
    pub resolved: Option<SocketAddr>,
    /// Transparent listener: the connection's original destination (`SO_ORIGINAL_DST`).
    pub original_dst: Option<SocketAddr>,
    pub rung: Option<Rung>,
    pub rule: Option<String>,
    /// The sandbox's id, and its metric label value.
    pub sandbox: Option<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    /// Report mode: what enforce mode would have refused the unit with.
    pub would_deny: Option<&'static str>,
    pub method: Option<String>,
    /// The request path, query values redacted (see [`loggable_path`]).
    pub path: Option<String>,
    /// `x-request-id` as sent by the guest (when well-formed) or generated.
    pub request_id: Option<String>,
    /// Time from the unit's start to the upstream's response headers.
    pub ttfb: Option<Duration>,
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `ok`, a refusal code, or a closing reason (`idle_timeout`, `shutdown`, `kill_switch`).
    pub outcome: Outcome,
    pub error: Option<String>,
}

impl AccessEvent {
    pub fn new(unit: Unit, client: SocketAddr, host: impl Into<String>, port: u16) -> AccessEvent {
        AccessEvent {
            unit,
            client,
            host: host.into(),
            port,
            sni: None,
            resolved: None,
            original_dst: None,
            rung: None,
            rule: None,
            sandbox: None,
            would_deny: None,
            method: None,
            path: None,
            request_id: None,
            ttfb: None,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            outcome: Outcome::Ok,
            error: None,
        }
    }

    /// Emits the event. tracing needs literal field names; `fields` must spell them the same
    /// way, which the test below checks against a real JSON log line.
    pub fn emit(&self, elapsed: Duration) {
        // Guest-controlled strings may carry a handle (a CONNECT host, a method, an SNI, an
        // error quoting the request): no whole handle reaches a log line.
        let guest = |v: &Option<String>| redact_in(v.as_deref().unwrap_or("")).into_owned();
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        tracing::info!(
            target: TARGET,
            kind = self.unit.as_str(),
            client = tracing::field::display(&self.client),
            host = redact_in(&self.host).as_ref(),
            port = self.port,
            sni = guest(&self.sni),
            resolved = self.resolved.map(|a| a.to_string()).unwrap_or_default(),
            original_dst = self.original_dst.map(|a| a.to_string()).unwrap_or_default(),
            rung = self.rung.map(Rung::as_str).unwrap_or(""),
            rule = opt(&self.rule),
            sandbox = self.sandbox.as_ref().map_or("", |(id, _)| &**id),
            would_deny = self.would_deny.unwrap_or(""),
            method = guest(&self.method),
            path = guest(&self.path),
            request_id = guest(&self.request_id),
            ttfb_ms = self.ttfb.map_or(0, |d| d.as_millis() as u64),
            status = self.status.unwrap_or(0),
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = elapsed.as_millis() as u64,
            outcome = self.outcome.as_str(),
            error = guest(&self.error),
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn paths_are_logged_without_query_values() {
        let uri: http::Uri = "/v1/models?key=sk-secret&alt=json&flag".parse().unwrap();
        assert_eq!(loggable_path(&uri), "/v1/models?key=…&alt=…&flag");
        let uri: http::Uri = "/p".parse().unwrap();
        assert_eq!(loggable_path(&uri), "/p");
    }

    #[test]
    fn json_fields_match_constants() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            let ev = AccessEvent::new(Unit::Tunnel, "127.0.0.1:1".parse().unwrap(), "a.test", 443);
            ev.emit(Duration::from_millis(3));
        });
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        for f in [
            fields::KIND,
            fields::CLIENT,
            fields::HOST,
            fields::PORT,
            fields::SNI,
            fields::RESOLVED,
            fields::ORIGINAL_DST,
            fields::RUNG,
            fields::RULE,
            fields::SANDBOX,
            fields::WOULD_DENY,
            fields::METHOD,
            fields::PATH,
            fields::REQUEST_ID,
            fields::TTFB_MS,
            fields::STATUS,
            fields::BYTES_UP,
            fields::BYTES_DOWN,
            fields::DURATION_MS,
            fields::OUTCOME,
            fields::ERROR,
        ] {
            assert!(v.get(f).is_some(), "field {f} missing from {line}");
        }
        assert_eq!(v[fields::HOST], "a.test");
    }
}
