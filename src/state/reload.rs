//! Hot reload: re-read the config file, validate it, and swap in a new policy snapshot.
//!
//! Triggered by SIGHUP and by a change of the config file (polled: robust against editors
//! that replace the file and against Kubernetes ConfigMap symlink swaps). Only what can change
//! safely while serving is reloaded — destinations, profiles, sandboxes, default rung, network,
//! upstream trust and timeouts. A change to listeners, admin auth, state dir, CA, secret source or log settings is
//! refused with a message saying a restart is needed, and the old policy keeps serving.
//! Established tunnels keep the snapshot they were decided with; new connections use the new
//! one. The kill switch lives outside snapshots, so its state survives a reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::{self, Config, ConfigError, ProfileView};
use crate::policy::RuleSet;
use crate::state::snapshot::{CoverageError, Sources, check_ca_coverage};
use crate::state::{Shared, Snapshot};
use crate::upstream::tls::TrustError;

/// Everything a reload needs besides the new file.
#[derive(Debug)]
pub struct Reloader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) sources: Sources,
    pub(crate) ca: Arc<egress_ca::DeploymentCa>,
    /// Takes the reloaded `fleet.handle_issuers`.
    pub(crate) issuers: Arc<crate::state::issuers::IssuerTrust>,
    /// What each snapshot is composed of; the lock also serialises every snapshot swap.
    composed: Mutex<Composition>,
}

/// Profiles delivered by the control plane, by name, as built from their specs.
pub type FleetProfiles = BTreeMap<String, (RuleSet, ProfileView)>;

/// The config file's config and the fleet's profiles, composed into the snapshot in force.
#[derive(Debug)]
struct Composition {
    base: Arc<Config>,
    fleet: FleetProfiles,
}

/// Why a reload was rejected; the previous policy keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} changed: this needs a restart")]
    NeedsRestart(&'static str),
    #[error("{0}: this needs a restart with a suitable CA")]
    Coverage(#[from] CoverageError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("sandboxes: {0}")]
    Sandboxes(#[from] crate::state::sandboxes::SandboxError),
    #[error("fleet profiles: {0}")]
    Fleet(String),
}

/// The first section that differs and cannot change while serving.
fn fixed_section_changed(old: &Config, new: &Config) -> Option<&'static str> {
    let changed: [(&'static str, bool); 13] = [
        ("proxy.listen", old.proxy.listen != new.proxy.listen),
        (
            "proxy.transparent",
            old.proxy.transparent != new.proxy.transparent,
        ),
        (
            "dns.listen",
            old.dns.as_ref().map(|d| d.listen) != new.dns.as_ref().map(|d| d.listen),
        ),
        (
            "proxy.max_connections",
            old.proxy.max_connections != new.proxy.max_connections,
        ),
        ("admin", old.admin != new.admin),
        ("log", old.log != new.log),
        ("state_dir", old.state_dir != new.state_dir),
        ("ca", old.ca != new.ca),
        ("secrets", old.secrets != new.secrets),
        ("handles", old.handle_max_ttl != new.handle_max_ttl),
        (
            "handles.issuer",
            old.fleet.own_issuer != new.fleet.own_issuer,
        ),
        ("fleet.source", old.fleet.source != new.fleet.source),
        (
            "metrics.sandbox_labels",
            old.sandbox_metric_labels != new.sandbox_metric_labels,
        ),
    ];
    changed.into_iter().find(|(_, c)| *c).map(|(k, _)| k)
}

impl Reloader {
    /// `base`: the config the running snapshot was built from.
    pub fn new(
        shared: Arc<Shared>,
        sources: Sources,
        ca: Arc<egress_ca::DeploymentCa>,
        issuers: Arc<crate::state::issuers::IssuerTrust>,
        base: Arc<Config>,
    ) -> Reloader {
        Reloader {
            shared,
            sources,
            ca,
            issuers,
            composed: Mutex::new(Composition {
                base,
                fleet: FleetProfiles::new(),
            }),
        }
    }

    fn composition(&self) -> std::sync::MutexGuard<'_, Composition> {
        self.composed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates `new` against the running process and swaps it in.
    pub fn apply(&self, new: Config) -> Result<(), ReloadError> {
        let mut composition = self.composition();
        let current = self.shared.snapshot().config.clone();
        if let Some(key) = fixed_section_changed(&current, &new) {
            return Err(ReloadError::NeedsRestart(key));
        }
        if matches!(new.secrets, Some(config::SecretsConfig::Sds(_)))
            && new.referenced_secrets() != current.referenced_secrets()
        {
            return Err(ReloadError::NeedsRestart(
                "the set of secrets subscribed over SDS",
            ));
        }
        let new = Arc::new(new);
        self.swap(&new, &composition.fleet)?;
        composition.base = new;
        Ok(())
    }

    /// Rebuilds the snapshot from what it is composed of (after the upstream trust roots from
    /// the secret source changed).
    pub fn rebuild(&self) -> Result<(), ReloadError> {
        let composition = self.composition();
        self.swap(&composition.base, &composition.fleet)
    }

    /// Puts the control plane's profiles in force beside the config's.
    pub fn set_fleet_profiles(&self, fleet: FleetProfiles) -> Result<(), ReloadError> {
        let mut composition = self.composition();
        self.swap(&composition.base, &fleet)?;
        composition.fleet = fleet;
        Ok(())
    }

    /// Composes `base` and `fleet`, checks and swaps the result in.
    fn swap(&self, base: &Config, fleet: &FleetProfiles) -> Result<(), ReloadError> {
        let composed = config::with_fleet_profiles(base, fleet).map_err(ReloadError::Fleet)?;
        // The secret subscription is fixed at start: a fleet profile may only use secrets the
        // config already references (otherwise its requests could never get the credential).
        let subscribed = base.referenced_secrets();
        if let Some(missing) = composed
            .referenced_secrets()
            .into_iter()
            .find(|s| !subscribed.contains(s))
        {
            return Err(ReloadError::Fleet(format!(
                "a profile uses secret `{missing}`, which this edge's config does not reference \
                 (the secret source subscription is fixed at start); reference it in the config"
            )));
        }
        check_ca_coverage(Some(&self.ca), &composed.policy)?;
        let snapshot = Snapshot::build(Arc::new(composed), &self.sources)?;
        // Sandboxes that left the config are closed; those that stay are judged by their new
        // profile from their next request on.
        self.shared.sandboxes.reconcile(&snapshot.config)?;
        self.issuers.apply(&snapshot.config);
        self.shared.replace(snapshot);
        Ok(())
    }

    /// Reads, parses and applies `path`, counting the result.
    pub fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        let result = config::load_file(path)
            .map_err(ReloadError::from)
            .and_then(|c| self.apply(c));
        self.shared.metrics.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "config reload rejected; the previous policy keeps serving")
            }
        }
        result
    }

    /// Reloads on SIGHUP and whenever the file's contents change, until draining.
    pub fn watch(self: Arc<Self>, path: PathBuf) {
        let stop = self.shared.draining.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read(&path).ok();
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let forced = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let now = std::fs::read(&path).ok();
                if forced || (now.is_some() && now != last) {
                    last = now;
                    let _ = self.reload_file(&path);
                }
            }
        });
    }
}
