//! The edge's side of a fleet (`fleet.source: sds`): revocations, profiles, sandboxes and the
//! kill switch as delivered by the control plane over the aggregated xDS stream, applied to
//! this edge's state.
//!
//! - Revocations are merged into the revocation list (persisted in `state_dir`); an entry the
//!   control plane stops listing stays until its own expiry, so nothing is ever unrevoked here.
//! - Profiles are composed with the config's into the policy snapshot (a name in both is
//!   refused); sandboxes replace the previous fleet set (those gone have their tunnels and
//!   sessions closed). Both are grants: the control plane gives them a TTL, and on an edge cut
//!   off from it they lapse (a sandbox without its profile is allowed nothing).
//! - The kill switch follows the control plane; a stream that is down changes nothing.
//!
//! An update that does not decode or does not fit is refused whole (NACK) and the previous
//! one stays. Every applied or refused update is logged and counted
//! ([`FleetStatus`]). Transport is
//! `egress_sds::client::ads`; this module does not speak gRPC, and it does not serve the admin
//! API's writes (those answer 409 on a fleet edge).

pub mod decode;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use egress_handle::HandleAuthority;
use egress_sds::client::{FleetOptions, FleetSink, Why};
use egress_sds::fleet::{FleetType, Item};

use crate::config::{self, SdsConfig};
use crate::state::Shared;
use crate::state::reload::{FleetProfiles, Reloader};
use crate::state::sandboxes::Origin;

pub use crate::state::fleet_status::FleetStatus;

#[derive(Debug)]
struct Rejected {
    items: Vec<Item>,
    why: String,
    /// The snapshot generation it was judged against.
    against: u64,
}

/// The profile a lapsed fleet sandbox is given: no profile can have this name, so the policy
/// allows it nothing.
const LAPSED_PROFILE: &str = "(lapsed)";

/// Applies fleet updates to one edge.
#[derive(Debug)]
pub struct FleetEdge {
    shared: Arc<Shared>,
    handles: Arc<HandleAuthority>,
    reloader: Arc<Reloader>,
    status: Arc<FleetStatus>,
    /// The items last applied per type: a heartbeat that repeats them is not re-applied.
    applied: Mutex<BTreeMap<FleetType, Vec<Item>>>,
    /// The items last rejected per type, why, and the snapshot they were judged against: a
    /// heartbeat that repeats them gets the same answer without another log line or count,
    /// until the edge's own state changes (a reload may remove what they clashed with).
    rejected: Mutex<BTreeMap<FleetType, Rejected>>,
}

impl FleetEdge {
    pub fn new(
        shared: Arc<Shared>,
        handles: Arc<HandleAuthority>,
        reloader: Arc<Reloader>,
        status: Arc<FleetStatus>,
    ) -> FleetEdge {
        FleetEdge {
            shared,
            handles,
            reloader,
            status,
            applied: Mutex::default(),
            rejected: Mutex::default(),
        }
    }

    fn apply_type(&self, ty: FleetType, items: &[Item], why: Why) -> Result<(), String> {
        match ty {
            FleetType::Revocation => {
                // Restrictions are taken even from a response that is refused: the valid
                // revocations are merged, and the bad ones NACKed.
                let (list, mut bad) = decode::revocations_each(items);
                let revocations = self.handles.revocations();
                let fresh = match revocations.merge_entries(&list) {
                    Ok(n) => n,
                    Err(_) => {
                        let mut n = 0;
                        for one in &list {
                            match revocations.merge_entries(std::slice::from_ref(one)) {
                                Ok(k) => n += k,
                                Err(e) => bad.push(e.to_string()),
                            }
                        }
                        n
                    }
                };
                if fresh > 0 {
                    tracing::warn!(target: crate::credential::AUDIT_TARGET, new = fresh, total = list.len(), "revocations from the control plane in force");
                }
                match bad.len() {
                    0 => Ok(()),
                    1 => Err(bad.swap_remove(0)),
                    n => Err(format!("{} (and {} more bad revocations)", bad[0], n - 1)),
                }
            }
            FleetType::Profile => {
                let mut built = FleetProfiles::new();
                for (name, spec) in decode::profiles(items)? {
                    let profile = config::fleet_profile(&name, &spec)?;
                    built.insert(name, profile);
                }
                self.reloader
                    .set_fleet_profiles(built)
                    .map_err(|e| e.to_string())
            }
            FleetType::Sandbox => {
                let mut list = decode::sandboxes(items)?;
                // A lapsed sandbox stays known, allowed nothing, its connections closed: were it
                // forgotten, its addresses would fall to the top-level policy, which may allow
                // more than its profile did. Only the control plane withdraws a sandbox.
                let mut lapsed = Vec::new();
                if why == Why::Lapse {
                    for s in self.shared.sandboxes.list() {
                        if s.origin == Origin::Fleet && !list.iter().any(|l| *l.id == *s.id) {
                            list.push(s.to_fleet(LAPSED_PROFILE));
                            // Closes its open connections; the registry then gives the lapsed
                            // sandbox a fresh signal for the connections still to come.
                            s.removed().cancel();
                            lapsed.push(s.id.clone());
                        }
                    }
                }
                let policy = self.shared.snapshot();
                for s in &list {
                    if !policy.config.policy.has_profile(&s.profile) {
                        tracing::warn!(sandbox = %s.id, profile = %s.profile, "fleet sandbox names a profile not (yet) known: it is allowed nothing until the profile arrives");
                    }
                }
                let gone = self
                    .shared
                    .sandboxes
                    .set_fleet(list)
                    .map_err(|e| e.to_string())?;
                for id in gone {
                    tracing::warn!(target: crate::credential::AUDIT_TARGET, sandbox = %id, "sandbox withdrawn by the control plane: its tunnels and sessions are closed");
                }
                for id in lapsed {
                    tracing::warn!(target: crate::credential::AUDIT_TARGET, sandbox = %id, "sandbox grant lapsed: allowed nothing and its tunnels and sessions closed until the control plane renews it");
                }
                Ok(())
            }
            FleetType::KillSwitch => {
                let ks = match decode::kill_switch(items) {
                    Ok(ks) => ks,
                    Err(e) => {
                        // A kill switch that is there but unreadable is taken as on (closed).
                        if !self.shared.kill.is_enabled() {
                            tracing::error!(error = %e, "unreadable kill switch from the control plane: turned on");
                        }
                        self.shared.kill.set(true);
                        persist_kill_switch(&self.shared, true);
                        return Err(e);
                    }
                };
                let on = ks.as_ref().is_some_and(|k| k.enabled);
                if on != self.shared.kill.is_enabled() {
                    let reason = ks.map(|k| k.reason).unwrap_or_default();
                    tracing::warn!(enabled = on, %reason, "kill switch set by the control plane");
                }
                self.shared.kill.set(on);
                persist_kill_switch(&self.shared, on);
                Ok(())
            }
        }
    }
}

impl FleetSink for FleetEdge {
    fn apply(&self, ty: FleetType, version: &str, items: &[Item], why: Why) -> Result<(), String> {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rejected = self.rejected.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = rejected.get(&ty)
            && r.items.as_slice() == items
            && r.against == self.shared.generation()
        {
            return Err(r.why.clone());
        }
        let against = self.shared.generation();
        let repeat = applied.get(&ty).is_some_and(|a| a.as_slice() == items);
        let result = if repeat {
            Ok(())
        } else {
            self.apply_type(ty, items, why)
        };
        match &result {
            Ok(()) => {
                applied.insert(ty, items.to_vec());
                rejected.remove(&ty);
            }
            Err(e) => {
                rejected.insert(
                    ty,
                    Rejected {
                        items: items.to_vec(),
                        why: e.clone(),
                        against,
                    },
                );
            }
        }
        if !repeat || !self.status.is_current(ty, version) {
            self.status.record(ty, version, items.len(), why, &result);
            match (&result, why) {
                (Ok(()), Why::Update) => {
                    tracing::info!(r#type = %ty, %version, resources = items.len(), "fleet update applied");
                }
                (Ok(()), Why::Lapse) => {
                    tracing::debug!(r#type = %ty, %version, resources = items.len(), "fleet grants lapsed");
                }
                (Err(e), _) => {
                    tracing::warn!(r#type = %ty, %version, error = %e, "fleet update rejected (NACK); the previous version stays in force");
                }
            }
        }
        result
    }

    fn stream(&self, down: Option<&str>) {
        self.status.stream(down);
    }
}

/// Where a fleet edge remembers the control plane's kill switch, so that an edge restarted
/// while the control plane is unreachable starts with it still on.
const KILL_FILE: &str = "fleet-kill-switch";

fn persist_kill_switch(shared: &Shared, on: bool) {
    let path = shared.snapshot().config.state_dir.join(KILL_FILE);
    let result = if on {
        std::fs::write(&path, b"on\n")
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    };
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "cannot record the fleet kill switch; a restart before the control plane is reachable would start with it off");
    }
}

/// At start: turns the kill switch on if the control plane had it on when last heard.
pub fn restore_kill_switch(shared: &Shared) {
    let path = shared.snapshot().config.state_dir.join(KILL_FILE);
    if path.exists() {
        tracing::warn!(path = %path.display(), "the control plane's kill switch was on when last heard: on until it says otherwise");
        shared.kill.set(true);
    }
}

/// The fleet stream's settings: the `secrets.sds` server and identity.
pub fn options(sds: &SdsConfig) -> Result<FleetOptions, egress_sds::SdsError> {
    Ok(FleetOptions {
        target: egress_sds::client::Target::parse(&sds.target)?,
        tls: sds.tls.as_ref().map(|t| egress_sds::client::ClientTls {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
        node_id: sds.node_id.clone(),
        cluster: sds.cluster.clone(),
    })
}
