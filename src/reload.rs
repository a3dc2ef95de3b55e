//! Hot reload: re-read the config file, validate it, and swap in a new policy snapshot.
//!
//! Triggered by SIGHUP and by a change of the config file (polled: robust against editors
//! that replace the file and against Kubernetes ConfigMap symlink swaps). Only what can change
//! safely while serving is reloaded — destinations, default rung, network, upstream trust and
//! timeouts. A change to listeners, admin auth, state dir, CA, secret source or log settings is
//! refused with a message saying a restart is needed, and the old policy keeps serving.
//! Established tunnels keep the snapshot they were decided with; new connections use the new
//! one. The kill switch lives outside snapshots, so its state survives a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Config};
use crate::dial::{Connect, Dialer, Resolve};
use crate::metrics::ResultLabel;
use crate::state::{Shared, Snapshot};

/// Everything a reload needs besides the new file.
#[derive(Debug)]
pub struct Reloader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) connector: Arc<dyn Connect>,
    pub(crate) ca: Option<Arc<egress_ca::DeploymentCa>>,
    pub(crate) secrets: Option<egress_sds::SecretStore>,
}

/// Sections that need a restart; compared as their serialized form.
fn fixed_sections(c: &Config) -> Vec<(&'static str, serde_json::Value)> {
    let v = |x: Result<serde_json::Value, serde_json::Error>| x.unwrap_or(serde_json::Value::Null);
    vec![
        ("proxy.listen", v(serde_json::to_value(c.proxy.listen))),
        (
            "proxy.max_connections",
            v(serde_json::to_value(c.proxy.max_connections)),
        ),
        ("admin", v(serde_json::to_value(&c.admin))),
        ("log", v(serde_json::to_value(&c.log))),
        ("state_dir", v(serde_json::to_value(&c.state_dir))),
        ("ca", v(serde_json::to_value(&c.ca))),
        ("secrets", v(serde_json::to_value(&c.secrets))),
        (
            "handles",
            v(serde_json::to_value(c.handle_max_ttl.as_secs())),
        ),
    ]
}

impl Reloader {
    /// Validates `new` against the running process and swaps it in.
    pub fn apply(&self, new: Config) -> Result<(), String> {
        let current = self.shared.snapshot().config.clone();
        for ((key, old), (_, newv)) in fixed_sections(&current)
            .into_iter()
            .zip(fixed_sections(&new))
        {
            if old != newv {
                return Err(format!("{key} changed: this needs a restart"));
            }
        }
        if new.policy.has_bump() {
            let Some(ca) = &self.ca else {
                return Err(
                    "the new policy bumps a destination but no CA is loaded: this needs a restart"
                        .into(),
                );
            };
            if let Some(patterns) = new.policy.enumerable_bump_patterns() {
                for p in patterns {
                    let name = match p {
                        crate::policy::HostPattern::Exact(n)
                        | crate::policy::HostPattern::Subdomains(n) => n.clone(),
                        crate::policy::HostPattern::Ip(ip) => ip.to_string(),
                    };
                    if !ca.covers(&name) {
                        return Err(format!(
                            "bump host {p} is outside the CA's name constraints: this needs a new CA"
                        ));
                    }
                }
            } else if ca.permitted_names().is_some() {
                return Err(
                    "default_rung: bump needs an unconstrained CA: this needs a new CA".into(),
                );
            }
        }
        if matches!(new.secrets, Some(config::SecretsConfig::Sds(_)))
            && new.referenced_secrets() != current.referenced_secrets()
        {
            return Err(
                "the set of secrets subscribed over SDS changed: this needs a restart".into(),
            );
        }
        let dialer = Dialer::new(
            new.network.addresses.clone(),
            new.network.hosts.clone(),
            self.resolver.clone(),
            self.connector.clone(),
            new.proxy.connect_timeout,
        );
        let extra = crate::api::sds_roots(&new, self.secrets.as_ref());
        let snapshot = Snapshot::new(Arc::new(new), dialer, &extra).map_err(|e| e.to_string())?;
        self.shared.replace(snapshot);
        Ok(())
    }

    /// Reads, parses and applies `path`, counting the result.
    pub fn reload_file(&self, path: &Path) -> Result<(), String> {
        let result = config::load_file(path)
            .map_err(|e| e.to_string())
            .and_then(|c| self.apply(c));
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.shared
            .metrics
            .config_reloads
            .get_or_create(&ResultLabel {
                result: label.into(),
            })
            .inc();
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
