//! The control plane's fleet state and how it becomes xDS resources.
//!
//! - Profiles and sandboxes come from the fleet file (the `profiles:` and `sandboxes:`
//!   sections of an edge config, checked by the same loader; a bad edit is refused and the
//!   last good file stays) and from the admin API (sandboxes, persisted in
//!   `DIR/sandboxes.json` by the same registry an edge uses).
//! - Revocations and the handle issuer key live in `DIR` (`revoked.json`, `handle-key.pem`,
//!   exported as `handle-key.pub`), as on an edge; `handle revoke --state-dir DIR` works too.
//! - The kill switch is set over the admin API and persisted in `DIR/kill-switch.json`.
//!
//! Every change republishes the four types into a [`Published`] (profiles and sandboxes with
//! the grant TTL). This module does no networking.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use egress_handle::{HandleAuthority, MintRequest, Minted, RevokeTarget};
use egress_sds::fleet::{FleetType, Item, Published};
use egress_sds::proto::fleet as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::ControlError;
use crate::config::{self, Config};
use crate::fleet::decode::KILL_SWITCH_NAME;
use crate::state::sandboxes::{Registration, Registry, Sandbox, SandboxError};

const KILL_FILE: &str = "kill-switch.json";

/// The kill switch as set over the admin API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    pub enabled: bool,
    #[serde(default)]
    pub reason: String,
}

/// The last good fleet file: its profiles and sandboxes as an (otherwise default) config,
/// and each profile's body as written, which is what edges receive.
struct FleetFile {
    config: Arc<Config>,
    specs: BTreeMap<String, String>,
    text: Option<String>,
}

/// Everything the control plane publishes.
pub struct ControlState {
    dir: PathBuf,
    file: Option<PathBuf>,
    handles: HandleAuthority,
    registry: Registry,
    fleet: Mutex<FleetFile>,
    kill: Mutex<Kill>,
    published: Published,
    grant_ttl: Option<Duration>,
    /// Held from reading the state to publishing it, so a slower publish can never overwrite
    /// a later one with older state.
    publishing: Mutex<()>,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("dir", &self.dir)
            .field("file", &self.file)
            .field("published", &self.published)
            .finish()
    }
}

/// Reads and checks a fleet file (`None`: no file, nothing defined).
fn load_fleet(file: Option<&Path>, dir: &Path) -> Result<FleetFile, String> {
    let text = match file {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        ),
    };
    let origin = file.map_or("<no fleet file>".to_owned(), |p| p.display().to_string());
    let value: serde_yaml_ng::Value = match &text {
        Some(t) if !t.trim().is_empty() => {
            serde_yaml_ng::from_str(t).map_err(|e| format!("{origin}: {e}"))?
        }
        _ => serde_yaml_ng::Value::Null,
    };
    let mut specs = BTreeMap::new();
    if let serde_yaml_ng::Value::Mapping(top) = &value {
        for (k, v) in top {
            let key = k.as_str().unwrap_or_default();
            match key {
                "sandboxes" => {}
                "profiles" => {
                    if let serde_yaml_ng::Value::Mapping(profiles) = v {
                        for (name, body) in profiles {
                            let spec = serde_yaml_ng::to_string(body)
                                .map_err(|e| format!("{origin}: {e}"))?;
                            specs.insert(name.as_str().unwrap_or_default().to_owned(), spec);
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "{origin}: `{other}` does not belong in a fleet file (only `profiles` and \
                         `sandboxes`, shaped as in an edge config)"
                    ));
                }
            }
        }
    }
    let mut config = config::parse_fleet_str(text.as_deref().unwrap_or_default(), &origin)
        .map_err(|e| e.to_string())?;
    config.state_dir = dir.to_path_buf();
    Ok(FleetFile {
        config: Arc::new(config),
        specs,
        text,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ControlState {
    /// Opens (creating) the state dir, loads the fleet file and publishes.
    pub fn open(
        dir: &Path,
        file: Option<&Path>,
        issuer: &str,
        handle_max_ttl: Duration,
        grant_ttl: Option<Duration>,
        published: Published,
    ) -> Result<ControlState, ControlError> {
        let handles = HandleAuthority::open(dir, handle_max_ttl)
            .and_then(|h| h.with_issuer(Some(issuer.to_owned())))
            .map_err(|e| ControlError::State(e.to_string()))?;
        let fleet = load_fleet(file, dir).map_err(ControlError::FleetFile)?;
        let registry =
            Registry::load(&fleet.config).map_err(|e| ControlError::State(e.to_string()))?;
        let kill = match std::fs::read(dir.join(KILL_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ControlError::State(format!("{}: {e}", dir.join(KILL_FILE).display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kill::default(),
            Err(e) => {
                return Err(ControlError::State(format!(
                    "{}: {e}",
                    dir.join(KILL_FILE).display()
                )));
            }
        };
        let state = ControlState {
            dir: dir.to_path_buf(),
            file: file.map(Path::to_path_buf),
            handles,
            registry,
            fleet: Mutex::new(fleet),
            kill: Mutex::new(kill),
            published,
            grant_ttl,
            publishing: Mutex::new(()),
        };
        state.publish_all();
        Ok(state)
    }

    pub fn handles(&self) -> &HandleAuthority {
        &self.handles
    }

    pub fn published(&self) -> &Published {
        &self.published
    }

    /// Re-reads the fleet file if it changed; a bad version is refused and the last good one
    /// stays. Returns whether a new version was put in force.
    pub fn reload_file(&self) -> Result<bool, String> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(path).ok();
        let mut fleet = lock(&self.fleet);
        if text.is_none() || text == fleet.text {
            return Ok(false);
        }
        let next = load_fleet(Some(path), &self.dir)?;
        self.registry
            .reconcile(&next.config)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        *fleet = next;
        drop(fleet);
        self.publish(FleetType::Profile);
        self.publish(FleetType::Sandbox);
        Ok(true)
    }

    /// Registers a sandbox (its profile must be one of the fleet file's).
    pub fn register(
        &self,
        reg: Registration,
    ) -> Result<(Arc<Sandbox>, Option<String>), SandboxError> {
        let fleet = lock(&self.fleet);
        let done = self.registry.register(reg, &fleet.config.policy)?;
        drop(fleet);
        self.publish(FleetType::Sandbox);
        Ok(done)
    }

    /// Removes an API sandbox and revokes the handles bound to it.
    pub fn remove(&self, id: &str) -> Result<Arc<Sandbox>, ControlError> {
        let gone = self.registry.remove(id)?;
        self.handles
            .revoke_sandbox(id)
            .map_err(|e| ControlError::State(e.to_string()))?;
        self.publish(FleetType::Sandbox);
        self.publish(FleetType::Revocation);
        Ok(gone)
    }

    pub fn sandboxes(&self) -> Vec<Arc<Sandbox>> {
        self.registry.list()
    }

    pub fn sandbox(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.registry.get(id)
    }

    pub fn revoke(&self, target: &RevokeTarget) -> Result<(), egress_handle::HandleError> {
        self.handles.revoke(target)?;
        self.publish(FleetType::Revocation);
        Ok(())
    }

    /// Picks up revocations written to `DIR/revoked.json` by another process.
    pub fn reload_revocations(&self) {
        match self.handles.reload_revocations_if_changed() {
            Ok(true) => self.publish(FleetType::Revocation),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "revocation list unreadable; the last good list stays published")
            }
        }
    }

    /// Mints a handle as this control plane's issuer.
    pub fn mint(&self, req: &MintRequest) -> Result<Minted, String> {
        if let Some(s) = &req.sandbox
            && self.registry.get(s).is_none()
        {
            return Err(format!(
                "no sandbox `{s}` is registered; a handle bound to it could never be redeemed"
            ));
        }
        self.handles.mint(req).map_err(|e| e.to_string())
    }

    pub fn kill(&self) -> Kill {
        lock(&self.kill).clone()
    }

    /// Sets the kill switch, persisted before it is published.
    pub fn set_kill(&self, kill: Kill) -> Result<(), ControlError> {
        let mut current = lock(&self.kill);
        let path = self.dir.join(KILL_FILE);
        let tmp = self.dir.join(format!("{KILL_FILE}.tmp"));
        let bytes = serde_json::to_vec(&kill).map_err(|e| ControlError::State(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| ControlError::State(format!("{}: {e}", path.display())))?;
        *current = kill;
        drop(current);
        self.publish(FleetType::KillSwitch);
        Ok(())
    }

    /// Versions and counts per type, for `GET /v1/fleet`.
    pub fn view(&self) -> serde_json::Value {
        let types: serde_json::Map<String, serde_json::Value> = FleetType::ALL
            .into_iter()
            .map(|t| {
                let set = self.published.get(t);
                (
                    t.label().to_owned(),
                    serde_json::json!({"version": set.version, "resources": set.items.len()}),
                )
            })
            .collect();
        serde_json::json!({
            "types": types,
            "issuer": self.handles.issuer(),
            "issuer_key_id": self.handles.kid(),
            "grant_ttl": self.grant_ttl.map(|d| humantime::format_duration(d).to_string()),
        })
    }

    fn publish_all(&self) {
        for t in FleetType::ALL {
            self.publish(t);
        }
    }

    fn grant(&self, name: String, value: Vec<u8>) -> Item {
        Item {
            name,
            value,
            ttl: self.grant_ttl,
        }
    }

    /// Republishes one type from the current state.
    fn publish(&self, ty: FleetType) {
        let _one_at_a_time = lock(&self.publishing);
        let items: Vec<Item> = match ty {
            FleetType::Revocation => self
                .handles
                .revocations()
                .entries()
                .into_iter()
                .map(|e| {
                    let (kind, prefix, key) = match e.target {
                        RevokeTarget::Id(k) => (pb::revocation::Kind::Id, "id", k),
                        RevokeTarget::Session(k) => (pb::revocation::Kind::Session, "session", k),
                        RevokeTarget::Sandbox(k) => (pb::revocation::Kind::Sandbox, "sandbox", k),
                    };
                    Item {
                        name: format!("{prefix}/{key}"),
                        value: pb::Revocation {
                            kind: kind as i32,
                            key,
                            revoked_at: e.revoked_at,
                            expires_at: e.expires_at,
                        }
                        .encode_to_vec(),
                        ttl: None,
                    }
                })
                .collect(),
            FleetType::Profile => lock(&self.fleet)
                .specs
                .iter()
                .map(|(name, spec)| {
                    let value = pb::Profile {
                        name: name.clone(),
                        spec: spec.clone(),
                    }
                    .encode_to_vec();
                    self.grant(name.clone(), value)
                })
                .collect(),
            FleetType::Sandbox => self
                .registry
                .list()
                .iter()
                .map(|s| {
                    let value = pb::Sandbox {
                        id: s.id.to_string(),
                        profile: s.profile.to_string(),
                        sources: s.sources.iter().map(ToString::to_string).collect(),
                        token_sha256: s.token_sha256().unwrap_or_default(),
                    }
                    .encode_to_vec();
                    self.grant(s.id.to_string(), value)
                })
                .collect(),
            FleetType::KillSwitch => {
                let kill = self.kill();
                if kill.enabled {
                    vec![Item {
                        name: KILL_SWITCH_NAME.to_owned(),
                        value: pb::KillSwitch {
                            enabled: true,
                            reason: kill.reason,
                        }
                        .encode_to_vec(),
                        ttl: None,
                    }]
                } else {
                    Vec::new()
                }
            }
        };
        let count = items.len();
        let version = self.published.set(ty, items);
        tracing::info!(r#type = %ty, %version, resources = count, "fleet state published");
    }
}
