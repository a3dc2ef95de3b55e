//! Prometheus metrics (prometheus-client): the registry and the handles stages update.
//!
//! Label values are drawn from closed sets (rungs, refusal codes, outcomes, directions), from
//! config (rule ids, secret names) or from the sandbox registry (`sandbox`: a sandbox's id for
//! the first `metrics.sandbox_labels` sandboxes, then `other`; `none` for units no sandbox
//! claims) — never from guest input such as hostnames, so a guest cannot blow up cardinality
//! — and never from secret values.

use std::sync::Mutex;
use std::sync::PoisonError;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::observe::access_log::Outcome;
use crate::policy::Rung;
use crate::refusal::Kind;

/// The `rung` label of a unit whose decision is known (`none` before the policy ran).
fn rung_label(rung: Option<Rung>) -> String {
    rung.map_or("none", Rung::as_str).to_owned()
}

/// Labels of a tunnel or bump session: its rung, how it ended, the rule that admitted it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RungOutcome {
    pub rung: String,
    pub outcome: String,
    pub rule: String,
    pub sandbox: String,
}

/// Labels of a request: as for connections, plus the class of the status the guest got
/// (`2xx`…`5xx`, `none` when no response was sent).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub rung: String,
    pub outcome: String,
    pub rule: String,
    pub status: &'static str,
    pub sandbox: String,
}

/// Labels of a report-mode decision that let through what enforce mode would refuse.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WouldDenyLabels {
    pub sandbox: String,
    pub code: &'static str,
    pub rule: String,
}

/// The `sandbox` label of a unit no sandbox claims.
pub const NO_SANDBOX: &str = "none";

fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RungLabel {
    pub rung: String,
}

/// Labels of a guest-resolver query: the asked type (`a`, `aaaa`, `other`) and the decision
/// (`answered`, `nodata`, `refused`, `servfail`, `formerr`, `notimp`, `dropped`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub qtype: &'static str,
    pub decision: &'static str,
}

type Hist = Family<RungLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub connections: Family<RungOutcome, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub refusals: Family<CodeLabel, Counter>,
    pub bytes: Family<DirectionLabel, Counter>,
    pub active_tunnels: Gauge,
    pub connect_latency: Hist,
    pub request_latency: Hist,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub admin_auth_failures: Family<CodeLabel, Counter>,
    pub handles: Family<ResultLabel, Counter>,
    pub reflections: Family<SecretLabel, Counter>,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_latency: Histogram,
    pub would_deny: Family<WouldDenyLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabel {
    pub secret: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("egress_edge");
        let connections = Family::<RungOutcome, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let refusals = Family::<CodeLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        let active_tunnels = Gauge::default();
        let connect_latency: Hist = Family::new_with_constructor(latency_histogram);
        let request_latency: Hist = Family::new_with_constructor(latency_histogram);
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let admin_auth_failures = Family::<CodeLabel, Counter>::default();
        let handles = Family::<ResultLabel, Counter>::default();
        let reflections = Family::<SecretLabel, Counter>::default();
        let dns_queries = Family::<DnsLabels, Counter>::default();
        let would_deny = Family::<WouldDenyLabels, Counter>::default();
        registry.register(
            "would_deny",
            "Report-mode decisions that let through what enforce mode would refuse, by sandbox, code and rule",
            would_deny.clone(),
        );
        // 50 µs .. ~1.6 s
        let dns_latency = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register(
            "dns_queries",
            "Guest-resolver queries by asked type (a, aaaa, other) and decision",
            dns_queries.clone(),
        );
        registry.register(
            "dns_query_seconds",
            "Time from a guest-resolver query to its answer",
            dns_latency.clone(),
        );
        registry.register(
            "secret_reflections",
            "Occurrences of an injected secret redacted from upstream responses, by secret name",
            reflections.clone(),
        );
        registry.register(
            "handle_redemptions",
            "Handle redemption attempts by result (redeemed or a refusal code)",
            handles.clone(),
        );
        registry.register(
            "connections",
            "Guest connections (CONNECT tunnels and bump sessions) by rung and outcome",
            connections.clone(),
        );
        registry.register(
            "requests",
            "Proxied HTTP requests by rung and outcome",
            requests.clone(),
        );
        registry.register(
            "refusals",
            "Refusals sent to guests, by code",
            refusals.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed, by direction (up: guest to upstream)",
            bytes.clone(),
        );
        registry.register(
            "active_tunnels",
            "Open pass-through tunnels and bump sessions",
            active_tunnels.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Time to resolve, vet and connect to an upstream",
            connect_latency.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from request to upstream response headers",
            request_latency.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            config_reloads.clone(),
        );
        registry.register(
            "admin_auth_failures",
            "Admin API authentication failures by reason",
            admin_auth_failures.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            connections,
            requests,
            refusals,
            bytes,
            active_tunnels,
            connect_latency,
            request_latency,
            config_reloads,
            admin_auth_failures,
            handles,
            reflections,
            dns_queries,
            dns_latency,
            would_deny,
        }
    }

    /// Lets other stages (leaf cache, secret source, handles) register their own series.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut reg)
    }

    pub fn handle(&self, result: &str) {
        self.handles
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn refusal(&self, kind: Kind) {
        self.refusals
            .get_or_create(&CodeLabel {
                code: kind.code().to_owned(),
            })
            .inc();
    }

    /// A tunnel or bump session ended. `rule` is a config rule id (bounded by the config).
    pub fn connection(
        &self,
        rung: Option<Rung>,
        rule: Option<&str>,
        outcome: Outcome,
        sandbox: Option<&str>,
    ) {
        self.connections
            .get_or_create(&RungOutcome {
                rung: rung_label(rung),
                outcome: outcome.as_str().to_owned(),
                rule: rule.unwrap_or("none").to_owned(),
                sandbox: sandbox.unwrap_or(NO_SANDBOX).to_owned(),
            })
            .inc();
    }

    /// Report mode let a unit through that enforce mode would refuse with `code`.
    pub fn would_deny(&self, sandbox: Option<&str>, code: &'static str, rule: &str) {
        self.would_deny
            .get_or_create(&WouldDenyLabels {
                sandbox: sandbox.unwrap_or(NO_SANDBOX).to_owned(),
                code,
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// A proxied request ended with `status` sent to the guest.
    pub fn request(
        &self,
        rung: Option<Rung>,
        rule: Option<&str>,
        outcome: Outcome,
        status: Option<u16>,
        sandbox: Option<&str>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                rung: rung_label(rung),
                outcome: outcome.as_str().to_owned(),
                rule: rule.unwrap_or("none").to_owned(),
                status: status_class(status),
                sandbox: sandbox.unwrap_or(NO_SANDBOX).to_owned(),
            })
            .inc();
    }

    /// Time to resolve, vet and connect, by rung.
    pub fn connect_latency(&self, rung: Rung, seconds: f64) {
        self.connect_latency
            .get_or_create(&RungLabel {
                rung: rung.as_str().to_owned(),
            })
            .observe(seconds);
    }

    /// Time from sending a request upstream to its response headers, by rung.
    pub fn request_latency(&self, rung: Option<Rung>, seconds: f64) {
        self.request_latency
            .get_or_create(&RungLabel {
                rung: rung_label(rung),
            })
            .observe(seconds);
    }

    /// A guest-resolver query was decided (labels from closed sets, see [`DnsLabels`]).
    pub fn dns_query(&self, qtype: &'static str, decision: &'static str, seconds: f64) {
        self.dns_queries
            .get_or_create(&DnsLabels { qtype, decision })
            .inc();
        self.dns_latency.observe(seconds);
    }

    /// A config reload was applied (`ok`) or rejected (`failed`).
    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// `n` occurrences of secret `name` were redacted from a response (names come from config).
    pub fn secret_reflected(&self, name: &str, n: u64) {
        self.reflections
            .get_or_create(&SecretLabel {
                secret: name.to_owned(),
            })
            .inc_by(n);
    }

    pub fn add_bytes(&self, up: u64, down: u64) {
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: "up".into(),
            })
            .inc_by(up);
        self.bytes
            .get_or_create(&DirectionLabel {
                direction: "down".into(),
            })
            .inc_by(down);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Encoding into a String only fails on fmt errors, which String never returns.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
