//! What the admin endpoints read and do, apart from HTTP plumbing: the CA certificate,
//! readiness of secrets, metrics that are sampled at scrape time, the redacted effective
//! config, and handle minting and revocation.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use egress_ca::DeploymentCa;
use egress_sds::store::SecretStore;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::admin::{error, json};
use crate::body::Body;
use crate::config::{Config, SecretsConfig};
use crate::observe::metrics::Metrics;
use crate::observe::process;
use crate::rung::bump::Bumper;
use crate::state::Shared;

/// Counters copied from component stats at scrape time.
#[derive(Debug, Default)]
struct Sampled {
    leaf_hits: Counter<u64, AtomicU64>,
    leaf_misses: Counter<u64, AtomicU64>,
    leaf_mints: Counter<u64, AtomicU64>,
    leaf_mint_failures: Counter<u64, AtomicU64>,
    leaf_mint_seconds: Counter<f64, AtomicU64>,
    leaf_cache_entries: Gauge,
    sds_connected: Gauge,
    sds_reconnects: Counter<u64, AtomicU64>,
    sds_nacks: Counter<u64, AtomicU64>,
    secrets_warm: Gauge,
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    upstream_connections: Gauge,
}

#[derive(Debug)]
pub struct Api {
    ca: Arc<DeploymentCa>,
    bumper: Arc<Bumper>,
    secrets: Option<SecretStore>,
    handles: Arc<egress_handle::HandleAuthority>,
    initial_fetch_timeout: Duration,
    sampled: Sampled,
    /// The secrets arrive over an SDS stream (its gauges mean something).
    sds: bool,
}

impl Api {
    pub fn new(
        ca: Arc<DeploymentCa>,
        bumper: Arc<Bumper>,
        secrets: Option<SecretStore>,
        handles: Arc<egress_handle::HandleAuthority>,
        config: &Config,
    ) -> Api {
        let initial_fetch_timeout = config.secret_wait();
        Api {
            ca,
            bumper,
            secrets,
            handles,
            initial_fetch_timeout,
            sampled: Sampled::default(),
            sds: matches!(config.secrets, Some(SecretsConfig::Sds(_))),
        }
    }

    pub fn register_metrics(&self, metrics: &Metrics) {
        let s = &self.sampled;
        metrics.with_registry(|r| {
            r.register(
                "leaf_cache_hits",
                "Leaf certificate cache hits",
                s.leaf_hits.clone(),
            );
            r.register(
                "leaf_cache_entries",
                "Leaf certificates held in the cache now",
                s.leaf_cache_entries.clone(),
            );
            r.register(
                "leaf_cache_misses",
                "Leaf certificate cache misses",
                s.leaf_misses.clone(),
            );
            r.register(
                "leaf_mints",
                "Leaf certificates minted",
                s.leaf_mints.clone(),
            );
            r.register(
                "leaf_mint_failures",
                "Leaf mint failures",
                s.leaf_mint_failures.clone(),
            );
            r.register(
                "leaf_mint_seconds",
                "Total time spent minting leaves",
                s.leaf_mint_seconds.clone(),
            );
            r.register(
                "resident_memory_bytes",
                "Resident memory of the proxy process (VmRSS)",
                s.resident_memory_bytes.clone(),
            );
            r.register(
                "open_fds",
                "File descriptors the proxy process holds open",
                s.open_fds.clone(),
            );
            r.register(
                "upstream_connections",
                "Upstream connections open now, busy or pooled, across all pooled clients",
                s.upstream_connections.clone(),
            );
            r.register(
                "max_fds",
                "The proxy process's soft RLIMIT_NOFILE",
                s.max_fds.clone(),
            );
            if self.secrets.is_some() {
                r.register(
                    "secrets_warm",
                    "1 when every referenced secret has been delivered",
                    s.secrets_warm.clone(),
                );
            }
            // Only an SDS stream has a connection state, reconnects and NACKs.
            if self.sds {
                r.register(
                    "sds_stream_connected",
                    "1 while the SDS stream is connected",
                    s.sds_connected.clone(),
                );
                r.register(
                    "sds_reconnects",
                    "SDS stream reconnects",
                    s.sds_reconnects.clone(),
                );
                r.register(
                    "sds_nacks",
                    "SDS responses rejected (NACKed)",
                    s.sds_nacks.clone(),
                );
            }
        });
    }

    pub fn metrics_text(&self, shared: &Shared) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.sampled;
        let leaves = self.bumper.leaves();
        s.leaf_cache_entries
            .set(i64::try_from(leaves.entry_count()).unwrap_or(i64::MAX));
        let st = leaves.stats().snapshot();
        s.leaf_hits.inner().store(st.hits, Relaxed);
        s.leaf_misses.inner().store(st.misses, Relaxed);
        s.leaf_mints.inner().store(st.mints, Relaxed);
        s.leaf_mint_failures
            .inner()
            .store(st.mint_failures, Relaxed);
        s.leaf_mint_seconds
            .inner()
            .store((st.mint_nanos_total as f64 / 1e9).to_bits(), Relaxed);
        if let Some(store) = &self.secrets {
            let st = store.stats();
            s.sds_connected.set(i64::from(st.source.connected));
            s.sds_reconnects
                .inner()
                .store(st.source.reconnects, Relaxed);
            s.sds_nacks.inner().store(st.source.nacks, Relaxed);
            s.secrets_warm.set(i64::from(st.warm));
        }
        if self.secrets.is_none() {
            s.secrets_warm.set(1);
        }
        let gauge = |g: &Gauge, v: Option<u64>| {
            if let Some(v) = v {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        };
        gauge(&s.resident_memory_bytes, process::resident_bytes());
        gauge(&s.open_fds, process::open_fds());
        gauge(&s.max_fds, process::max_fds());
        gauge(
            &s.upstream_connections,
            u64::try_from(shared.snapshot().pool.open()).ok(),
        );
        let mut out = shared.metrics.encode();
        if let Some(store) = &self.secrets {
            out = append_secret_versions(out, store);
        }
        out
    }

    /// The deployment CA certificate; it exists from the first start.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    pub fn secrets_ready(&self) -> bool {
        self.secrets
            .as_ref()
            .is_none_or(|s| s.warm_or_timed_out(self.initial_fetch_timeout))
    }

    pub fn secrets(&self) -> Option<&SecretStore> {
        self.secrets.as_ref()
    }

    pub fn config_json(&self, shared: &Shared) -> Response<Body> {
        let snap = shared.snapshot();
        match serde_json::to_value(&*snap.config) {
            Ok(mut v) => {
                v["kill_switch"] = serde_json::Value::Bool(shared.kill.is_enabled());
                if let Some(fleet) = &shared.fleet {
                    v["fleet"]["state"] = fleet.view();
                }
                v["ca"]["fingerprint_sha256"] =
                    serde_json::Value::String(self.ca.fingerprint_sha256());
                json(StatusCode::OK, &v)
            }
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            ),
        }
    }

    pub fn handles(&self) -> &Arc<egress_handle::HandleAuthority> {
        &self.handles
    }

    pub async fn mint_handle(&self, req: Request<Incoming>, shared: &Shared) -> Response<Body> {
        let body: egress_handle::MintRequest = match crate::admin::read_json(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Some(s) = &body.sandbox
            && shared.sandboxes.get(s).is_none()
        {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!(
                    "no sandbox `{s}` is registered; a handle bound to it could never be redeemed"
                ),
            );
        }
        match self.handles.mint(&body) {
            Ok(minted) => {
                tracing::info!(
                    target: crate::credential::AUDIT_TARGET,
                    handle_id = %minted.id,
                    session = body.session.as_deref().unwrap_or(""),
                    sandbox = body.sandbox.as_deref().unwrap_or(""),
                    credentials = ?body.credentials,
                    "handle minted"
                );
                crate::admin::json_ok(&minted)
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
        }
    }

    pub async fn revoke_handle(&self, req: Request<Incoming>) -> Response<Body> {
        let target: egress_handle::RevokeTarget = match crate::admin::read_json(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        match self.handles.revoke(&target) {
            Ok(()) => {
                tracing::info!(target: crate::credential::AUDIT_TARGET, revoked = ?target, "handle revoked");
                crate::admin::no_content()
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
        }
    }
}

/// Per-secret version info as an info-style gauge. Versions are opaque keyed hashes, never
/// derived from secret values in a way that could be inverted.
fn append_secret_versions(out: String, store: &SecretStore) -> String {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct SecretLabels {
        secret: String,
        version: String,
    }
    let mut reg = prometheus_client::registry::Registry::with_prefix("egress_edge");
    let versions = Family::<SecretLabels, Gauge>::default();
    let updated = Family::<SecretLabels, Gauge<f64, AtomicU64>>::default();
    for s in store.stats().secrets {
        let labels = SecretLabels {
            secret: s.name.clone(),
            version: s.version.clone().unwrap_or_default(),
        };
        versions
            .get_or_create(&labels)
            .set(i64::from(s.version.is_some()));
        if let Some(t) = s.updated_at {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            updated.get_or_create(&labels).set(secs);
        }
    }
    reg.register(
        "secret_version",
        "Secret version in use (1 when delivered)",
        versions,
    );
    reg.register(
        "secret_updated_timestamp_seconds",
        "When the secret was last updated",
        updated,
    );
    let mut extra = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut extra, &reg);
    // Both texts end with "# EOF"; keep exactly one, at the end.
    let body = out.trim_end().trim_end_matches("# EOF").to_owned();
    body + &extra
}
