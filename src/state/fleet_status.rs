//! What an edge knows about its fleet stream, for `/readyz`, `/metrics` and `/v1/config`: per
//! resource type the version in force, whether one was ever acknowledged, how many resources
//! it holds, counts of applied, rejected and lapsed updates and the last rejection; and
//! whether the stream is up.
//!
//! It records; it does not apply anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use egress_sds::client::Why;
use egress_sds::fleet::FleetType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::observe::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    r#type: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    r#type: &'static str,
    version: String,
}

/// One type's state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    /// The version in force (`None` until one is acknowledged).
    pub version: Option<String>,
    pub resources: usize,
    pub applied: u64,
    pub rejected: u64,
    pub lapsed: u64,
    /// Why the last rejected update was rejected.
    pub last_error: Option<String>,
    /// RFC 3339 time of the last applied update or lapse.
    pub updated_at: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct State {
    connected: bool,
    stream_error: Option<String>,
    types: BTreeMap<&'static str, TypeStatus>,
}

/// The fleet stream's status, shared by the sink and the admin API.
#[derive(Debug)]
pub struct FleetStatus {
    /// The control plane's xDS server, and its admin API when configured, for the 409 answers
    /// of this edge's admin API.
    pub target: String,
    pub admin_url: Option<String>,
    state: Mutex<State>,
    updates: Family<UpdateLabels, Counter<u64, AtomicU64>>,
    resources: Family<TypeLabel, Gauge<i64, AtomicI64>>,
    versions: Family<VersionLabels, Gauge<i64, AtomicI64>>,
    connected: Gauge<i64, AtomicI64>,
}

impl FleetStatus {
    pub fn new(target: String, admin_url: Option<String>, metrics: &Metrics) -> FleetStatus {
        let status = FleetStatus {
            target,
            admin_url,
            state: Mutex::default(),
            updates: Family::default(),
            resources: Family::default(),
            versions: Family::default(),
            connected: Gauge::default(),
        };
        metrics.with_registry(|r| {
            r.register(
                "fleet_updates",
                "Fleet updates by resource type and result (applied, rejected: NACKed, lapsed: grants whose TTL ran out)",
                status.updates.clone(),
            );
            r.register(
                "fleet_resources",
                "Fleet resources in force by type",
                status.resources.clone(),
            );
            r.register(
                "fleet_version",
                "The version in force per fleet resource type (value 1; the version is a label)",
                status.versions.clone(),
            );
            r.register(
                "fleet_stream_connected",
                "1 while the fleet (ADS) stream to the control plane is up",
                status.connected.clone(),
            );
        });
        status
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the outcome of handing `ty` at `version` to the edge.
    pub fn record(
        &self,
        ty: FleetType,
        version: &str,
        resources: usize,
        why: Why,
        result: &Result<(), String>,
    ) {
        let label = ty.label();
        let mut state = self.state();
        let t = state.types.entry(label).or_default();
        let outcome = match (result, why) {
            (Ok(()), Why::Update) => "applied",
            (Ok(()), Why::Lapse) => "lapsed",
            (Err(_), _) => "rejected",
        };
        self.updates
            .get_or_create(&UpdateLabels {
                r#type: label,
                result: outcome,
            })
            .inc();
        match result {
            Ok(()) => {
                match why {
                    Why::Update => t.applied += 1,
                    Why::Lapse => t.lapsed += 1,
                }
                if t.version.as_deref() != Some(version) {
                    if let Some(old) = t.version.take() {
                        self.versions.remove(&VersionLabels {
                            r#type: label,
                            version: old,
                        });
                    }
                    self.versions
                        .get_or_create(&VersionLabels {
                            r#type: label,
                            version: version.to_owned(),
                        })
                        .set(1);
                    t.version = Some(version.to_owned());
                }
                t.resources = resources;
                t.updated_at =
                    Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                self.resources
                    .get_or_create(&TypeLabel { r#type: label })
                    .set(i64::try_from(resources).unwrap_or(i64::MAX));
            }
            Err(e) => {
                t.rejected += 1;
                t.last_error = Some(e.clone());
            }
        }
    }

    /// Whether `version` of `ty` is the one in force.
    pub fn is_current(&self, ty: FleetType, version: &str) -> bool {
        self.state()
            .types
            .get(ty.label())
            .is_some_and(|t| t.version.as_deref() == Some(version))
    }

    /// The stream came up (`None`) or went down.
    pub fn stream(&self, down: Option<&str>) {
        let mut state = self.state();
        state.connected = down.is_none();
        state.stream_error = down.map(str::to_owned);
        self.connected.set(i64::from(down.is_none()));
    }

    /// The types without an acknowledged version yet (ready when empty).
    pub fn missing(&self) -> Vec<&'static str> {
        let state = self.state();
        FleetType::ALL
            .into_iter()
            .map(FleetType::label)
            .filter(|l| state.types.get(l).is_none_or(|t| t.version.is_none()))
            .collect()
    }

    /// For `/v1/config`.
    pub fn view(&self) -> serde_json::Value {
        let state = self.state();
        serde_json::json!({
            "control_plane": self.target,
            "connected": state.connected,
            "stream_error": state.stream_error,
            "types": state.types,
        })
    }
}
