//! The sandboxes this edge knows — from the config file and registered over the admin API —
//! and how a guest connection is matched to one: by its source address (exact address or the
//! longest… only range: ranges of different sandboxes never overlap) or by the proxy token in
//! `Proxy-Authorization`.
//!
//! Reads are lock-free (an immutable index behind an `ArcSwap`); writes (register, remove,
//! reload) are serialised, persisted first and then swapped in. Removing a sandbox cancels its
//! token, which its tunnels and bump sessions watch, so they close at once. Each sandbox gets
//! a metric label when registered: its id for the first `metrics.sandbox_labels` sandboxes
//! (over the process's life), `other` past that, so cardinality stays bounded. This module
//! identifies; it does not decide policy (a sandbox names its profile, the policy judges).

pub mod store;
pub mod token;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use http::HeaderValue;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::sandbox::{id_problem, source_conflict};
use crate::net::netguard;
use crate::policy::{Policy, Who};
use token::{TokenError, TokenHash};

/// The label value shared by sandboxes past `metrics.sandbox_labels`.
pub const OTHER_LABEL: &str = "other";

/// Where a sandbox's registration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Config,
    Api,
    /// Delivered by the control plane (`fleet.source`).
    Fleet,
}

/// A registered sandbox. `Debug` never shows its token hash.
pub struct Sandbox {
    pub id: Arc<str>,
    pub profile: Arc<str>,
    pub sources: Vec<IpNet>,
    token: Option<TokenHash>,
    pub origin: Origin,
    /// Its `sandbox` metric label value.
    pub label: Arc<str>,
    /// Cancelled when the sandbox is removed.
    removed: CancellationToken,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("profile", &self.profile)
            .field("sources", &self.sources)
            .field("token", &self.token.map(|_| "<set>"))
            .field("origin", &self.origin)
            .finish()
    }
}

impl Sandbox {
    pub fn who(&self) -> Who<'_> {
        Who {
            sandbox: &self.id,
            profile: &self.profile,
        }
    }

    /// Fires when the sandbox is removed (admin API, or gone from the config on reload).
    pub fn removed(&self) -> &CancellationToken {
        &self.removed
    }

    /// What `GET /v1/sandboxes` shows: never the token.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": &*self.id,
            "profile": &*self.profile,
            "sources": self.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "token": self.token.is_some(),
            "origin": self.origin,
        })
    }

    /// This sandbox as the control plane would deliver it, under `profile`.
    pub fn to_fleet(&self, profile: &str) -> FleetSandbox {
        FleetSandbox {
            id: self.id.to_string(),
            profile: profile.to_owned(),
            sources: self.sources.iter().map(ToString::to_string).collect(),
            token: self.token,
        }
    }

    /// SHA-256 of its proxy token as hex (what a control plane publishes; never the token).
    pub fn token_sha256(&self) -> Option<String> {
        self.token.as_ref().map(store::hex)
    }

    fn registration(&self) -> Registration {
        Registration {
            id: self.id.to_string(),
            profile: self.profile.to_string(),
            sources: self.sources.iter().map(ToString::to_string).collect(),
            token: self.token.is_some(),
        }
    }

    fn stored(&self) -> store::Stored {
        store::Stored {
            id: self.id.to_string(),
            profile: self.profile.to_string(),
            sources: self.sources.clone(),
            token_sha256: self.token.as_ref().map(store::hex),
        }
    }
}

/// Why a registration, removal or load failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{}: {detail}", path.display())]
    Store { path: PathBuf, detail: String },
    #[error("{key} ({}): {detail}", path.display())]
    TokenFile {
        key: String,
        path: PathBuf,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("sandbox `{0}` is already registered")]
    Exists(String),
    #[error("no sandbox `{0}`")]
    NotFound(String),
    #[error("sandbox `{0}` comes from the config file; remove it there and reload")]
    FromConfig(String),
}

/// Why a connection could not be identified where identification is required or attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this proxy requires a sandbox proxy token (Proxy-Authorization: Basic or Bearer)")]
    Missing,
    #[error("{0}")]
    Malformed(TokenError),
    #[error("the proxy token is not one of a registered sandbox")]
    Unknown,
    #[error("the proxy token belongs to another sandbox than the connection's source address")]
    Conflict,
}

/// A sandbox as the control plane delivers it.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetSandbox {
    pub id: String,
    pub profile: String,
    pub sources: Vec<String>,
    /// SHA-256 of its proxy token.
    pub token: Option<TokenHash>,
}

impl fmt::Debug for FleetSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSandbox")
            .field("id", &self.id)
            .field("profile", &self.profile)
            .field("sources", &self.sources)
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// What `POST /v1/sandboxes` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub id: String,
    pub profile: String,
    #[serde(default)]
    pub sources: Vec<String>,
    /// Make a proxy token and return it once.
    #[serde(default)]
    pub token: bool,
}

#[derive(Default)]
struct Index {
    by_id: BTreeMap<Arc<str>, Arc<Sandbox>>,
    hosts: HashMap<IpAddr, Arc<Sandbox>>,
    nets: Vec<(IpNet, Arc<Sandbox>)>,
    tokens: HashMap<TokenHash, Arc<Sandbox>>,
}

impl Index {
    fn build(all: impl IntoIterator<Item = Arc<Sandbox>>) -> Index {
        let mut ix = Index::default();
        for s in all {
            for net in &s.sources {
                if net.prefix_len() == net.max_prefix_len() {
                    ix.hosts.insert(net.addr(), s.clone());
                } else {
                    ix.nets.push((*net, s.clone()));
                }
            }
            if let Some(t) = s.token {
                ix.tokens.insert(t, s.clone());
            }
            ix.by_id.insert(s.id.clone(), s);
        }
        ix
    }
}

/// Label values handed out so far.
struct Labels {
    named: HashSet<Arc<str>>,
    max: usize,
}

impl Labels {
    fn label(&mut self, id: &Arc<str>) -> Arc<str> {
        if self.named.contains(id) {
            return id.clone();
        }
        if self.named.len() < self.max {
            self.named.insert(id.clone());
            return id.clone();
        }
        Arc::from(OTHER_LABEL)
    }
}

/// The live set of sandboxes.
pub struct Registry {
    index: ArcSwap<Index>,
    /// Serialises writers; holds the label budget.
    writer: Mutex<Labels>,
    file: PathBuf,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("sandboxes", &self.index.load().by_id.len())
            .field("file", &self.file)
            .finish()
    }
}

impl Registry {
    /// No sandboxes, persisting into `state_dir` (tests and tools that never register).
    pub fn empty(config: &Config) -> Registry {
        Registry {
            index: ArcSwap::from_pointee(Index::default()),
            writer: Mutex::new(Labels {
                named: HashSet::new(),
                max: config.sandbox_metric_labels,
            }),
            file: store::path(&config.state_dir),
        }
    }

    /// The config's sandboxes (token files read now) and those stored in `state_dir`.
    pub fn load(config: &Config) -> Result<Registry, SandboxError> {
        let file = store::path(&config.state_dir);
        let mut labels = Labels {
            named: HashSet::new(),
            max: config.sandbox_metric_labels,
        };
        let from_config = config_sandboxes(config, &mut labels, &HashMap::new())?;
        let stored = store::read(&file)?;
        let mut all = from_config;
        for s in stored {
            let bad = |detail: String| SandboxError::Store {
                path: file.clone(),
                detail,
            };
            let registration = Registration {
                id: s.id.clone(),
                profile: s.profile.clone(),
                sources: s.sources.iter().map(ToString::to_string).collect(),
                token: s.token_sha256.is_some(),
            };
            check(&registration, &config.policy, &all)
                .map_err(|e| bad(format!("sandbox `{}`: {e}", s.id)))?;
            let token = match &s.token_sha256 {
                None => None,
                Some(h) => Some(
                    store::unhex(h)
                        .ok_or_else(|| bad(format!("sandbox `{}`: bad token_sha256", s.id)))?,
                ),
            };
            let id: Arc<str> = Arc::from(s.id.as_str());
            all.push(Arc::new(Sandbox {
                label: labels.label(&id),
                id,
                profile: Arc::from(s.profile.as_str()),
                sources: s.sources,
                token,
                origin: Origin::Api,
                removed: CancellationToken::new(),
            }));
        }
        Ok(Registry {
            index: ArcSwap::from_pointee(Index::build(all)),
            writer: Mutex::new(labels),
            file,
        })
    }

    /// The sandbox whose sources contain `peer`.
    pub fn by_source(&self, peer: IpAddr) -> Option<Arc<Sandbox>> {
        Self::lookup_source(&self.index.load(), peer)
    }

    fn lookup_source(ix: &Index, peer: IpAddr) -> Option<Arc<Sandbox>> {
        let peer = peer.to_canonical();
        if let Some(s) = ix.hosts.get(&peer) {
            return Some(s.clone());
        }
        ix.nets
            .iter()
            .find(|(n, _)| n.contains(&peer))
            .map(|(_, s)| s.clone())
    }

    /// The sandbox registered under `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.index.load().by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.index.load().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every sandbox, by id.
    pub fn list(&self) -> Vec<Arc<Sandbox>> {
        self.index.load().by_id.values().cloned().collect()
    }

    /// Who is on a connection from `peer` that sent `proxy_auth` (explicit listener):
    /// a token names its sandbox (which must agree with the source's, if the source names
    /// one), else the source address does; `required` refuses connections nobody claims.
    /// While no sandbox is identified by token, `Proxy-Authorization` is ignored (clients
    /// that send proxy credentials out of habit keep working); once one is, a token that is
    /// not a sandbox's is refused.
    pub fn identify(
        &self,
        peer: IpAddr,
        proxy_auth: Option<&HeaderValue>,
        required: bool,
    ) -> Result<Option<Arc<Sandbox>>, AuthError> {
        let ix = self.index.load();
        let by_source = Self::lookup_source(&ix, peer);
        let Some(value) = proxy_auth.filter(|_| !ix.tokens.is_empty()) else {
            return match by_source {
                None if required => Err(AuthError::Missing),
                s => Ok(s),
            };
        };
        let presented = token::from_header(value).map_err(AuthError::Malformed)?;
        let found = ix
            .tokens
            .get(&presented)
            .filter(|s| s.token.is_some_and(|t| bool::from(t.ct_eq(&presented))))
            .cloned()
            .ok_or(AuthError::Unknown)?;
        match by_source {
            Some(s) if s.id != found.id => Err(AuthError::Conflict),
            _ => Ok(Some(found)),
        }
    }

    /// Registers a sandbox over the admin API: checked, persisted, then live. Returns the
    /// proxy token when one was asked for (shown once, stored only as a hash).
    pub fn register(
        &self,
        reg: Registration,
        policy: &Policy,
    ) -> Result<(Arc<Sandbox>, Option<String>), SandboxError> {
        let mut labels = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.list();
        let sources = check(&reg, policy, &current)?;
        let token = if reg.token {
            Some(token::generate().map_err(|e| SandboxError::Invalid(e.to_string()))?)
        } else {
            None
        };
        let id: Arc<str> = Arc::from(reg.id.as_str());
        let sandbox = Arc::new(Sandbox {
            label: labels.label(&id),
            id,
            profile: Arc::from(reg.profile.as_str()),
            sources,
            token: token.as_deref().map(|t| token::hash(t.as_bytes())),
            origin: Origin::Api,
            removed: CancellationToken::new(),
        });
        let mut next = current;
        next.push(sandbox.clone());
        self.persist(&next)?;
        self.index.store(Arc::new(Index::build(next)));
        Ok((sandbox, token))
    }

    /// Removes an admin-API sandbox: persisted, then its tunnels and sessions are cancelled.
    pub fn remove(&self, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        let _labels = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.list();
        let Some(gone) = current.iter().find(|s| &*s.id == id).cloned() else {
            return Err(SandboxError::NotFound(id.to_owned()));
        };
        if gone.origin == Origin::Config {
            return Err(SandboxError::FromConfig(id.to_owned()));
        }
        let next: Vec<_> = current.into_iter().filter(|s| &*s.id != id).collect();
        self.persist(&next)?;
        self.index.store(Arc::new(Index::build(next)));
        gone.removed.cancel();
        Ok(gone)
    }

    /// Takes a reloaded config's sandboxes: the admin API's stay (their profiles must still
    /// exist, and no config sandbox may clash with them); config sandboxes that are gone are
    /// cancelled; one that stays keeps its cancellation token, so its open connections live
    /// on and their next requests are judged by the new profile.
    pub fn reconcile(&self, config: &Config) -> Result<(), SandboxError> {
        let mut labels = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.list();
        let tokens: HashMap<Arc<str>, CancellationToken> = current
            .iter()
            .filter(|s| s.origin == Origin::Config)
            .map(|s| (s.id.clone(), s.removed.clone()))
            .collect();
        let mut next = config_sandboxes(config, &mut labels, &tokens)?;
        for s in current.iter().filter(|s| s.origin == Origin::Api) {
            check(&s.registration(), &config.policy, &next).map_err(|e| {
                SandboxError::Invalid(format!(
                    "sandbox `{}` registered over the admin API: {e}",
                    s.id
                ))
            })?;
            next.push(s.clone());
        }
        for s in current.iter().filter(|s| s.origin == Origin::Fleet) {
            check_shape(&s.registration(), &next).map_err(|e| {
                SandboxError::Invalid(format!("sandbox `{}` of the control plane: {e}", s.id))
            })?;
            next.push(s.clone());
        }
        for s in current.iter().filter(|s| s.origin == Origin::Config) {
            if !next.iter().any(|n| n.id == s.id) {
                s.removed.cancel();
            }
        }
        self.index.store(Arc::new(Index::build(next)));
        Ok(())
    }

    /// Takes the control plane's sandboxes (the whole set): checked against the others (ids,
    /// sources and tokens must not clash) all-or-nothing; one that stays keeps its open
    /// connections, one that is gone has them closed. Returns the ids removed.
    pub fn set_fleet(&self, fleet: Vec<FleetSandbox>) -> Result<Vec<Arc<str>>, SandboxError> {
        let mut labels = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.list();
        let mut next: Vec<Arc<Sandbox>> = current
            .iter()
            .filter(|s| s.origin != Origin::Fleet)
            .cloned()
            .collect();
        for f in fleet {
            let reg = Registration {
                id: f.id.clone(),
                profile: f.profile.clone(),
                sources: f.sources.clone(),
                token: f.token.is_some(),
            };
            let sources = check_shape(&reg, &next)
                .map_err(|e| SandboxError::Invalid(format!("sandbox `{}`: {e}", f.id)))?;
            if let Some(t) = f.token
                && let Some(other) = next.iter().find(|s| s.token == Some(t))
            {
                return Err(SandboxError::Invalid(format!(
                    "sandbox `{}` has the proxy token of sandbox `{}`",
                    f.id, other.id
                )));
            }
            let id: Arc<str> = Arc::from(f.id.as_str());
            // One that stays keeps its connections, unless they were closed (a lapse).
            let removed = current
                .iter()
                .find(|s| s.origin == Origin::Fleet && s.id == id)
                .map(|s| s.removed.clone())
                .filter(|t| !t.is_cancelled())
                .unwrap_or_default();
            next.push(Arc::new(Sandbox {
                label: labels.label(&id),
                id,
                profile: Arc::from(f.profile.as_str()),
                sources,
                token: f.token,
                origin: Origin::Fleet,
                removed,
            }));
        }
        let gone: Vec<Arc<Sandbox>> = current
            .into_iter()
            .filter(|s| s.origin == Origin::Fleet && !next.iter().any(|n| n.id == s.id))
            .collect();
        self.index.store(Arc::new(Index::build(next)));
        for s in &gone {
            s.removed.cancel();
        }
        Ok(gone.iter().map(|s| s.id.clone()).collect())
    }

    fn persist(&self, all: &[Arc<Sandbox>]) -> Result<(), SandboxError> {
        let stored: Vec<_> = all
            .iter()
            .filter(|s| s.origin == Origin::Api)
            .map(|s| s.stored())
            .collect();
        store::write(&self.file, &stored)
    }
}

/// Checks a registration against the policy and the sandboxes already there; returns its
/// parsed sources.
fn check(
    reg: &Registration,
    policy: &Policy,
    existing: &[Arc<Sandbox>],
) -> Result<Vec<IpNet>, SandboxError> {
    if !policy.has_profile(&reg.profile) {
        return Err(SandboxError::Invalid(format!(
            "no profile `{}` in the config",
            reg.profile
        )));
    }
    check_shape(reg, existing)
}

/// [`check`] without the profile: a control plane's sandbox may arrive before its profile
/// (each resource type travels on its own), and meanwhile the policy allows it nothing.
fn check_shape(reg: &Registration, existing: &[Arc<Sandbox>]) -> Result<Vec<IpNet>, SandboxError> {
    if let Some(problem) = id_problem(&reg.id) {
        return Err(SandboxError::Invalid(problem));
    }
    if existing.iter().any(|s| *s.id == *reg.id) {
        return Err(SandboxError::Exists(reg.id.clone()));
    }
    match (reg.sources.is_empty(), reg.token) {
        (true, false) => {
            return Err(SandboxError::Invalid(
                "give `sources` (the sandbox's addresses) or `\"token\": true`".into(),
            ));
        }
        (false, true) => {
            return Err(SandboxError::Invalid(
                "give `sources` or `\"token\": true`, not both".into(),
            ));
        }
        _ => {}
    }
    let mut sources = Vec::with_capacity(reg.sources.len());
    for s in &reg.sources {
        let net = netguard::parse_net(s)
            .ok_or_else(|| SandboxError::Invalid(format!("`{s}` is not a CIDR or IP address")))?;
        sources.push(net);
    }
    let taken = existing
        .iter()
        .flat_map(|o| o.sources.iter().map(move |n| (&*o.id, n)));
    if let Some(conflict) = source_conflict(&sources, taken) {
        return Err(SandboxError::Invalid(conflict));
    }
    Ok(sources)
}

/// The config's sandboxes, reading token files; `keep` carries over cancellation tokens by id.
fn config_sandboxes(
    config: &Config,
    labels: &mut Labels,
    keep: &HashMap<Arc<str>, CancellationToken>,
) -> Result<Vec<Arc<Sandbox>>, SandboxError> {
    let mut out = Vec::with_capacity(config.sandboxes.len());
    for (i, s) in config.sandboxes.iter().enumerate() {
        let token = match &s.token_file {
            None => None,
            Some(path) => Some(read_token_file(i, path)?),
        };
        let id: Arc<str> = Arc::from(s.id.as_str());
        out.push(Arc::new(Sandbox {
            label: labels.label(&id),
            removed: keep.get(&id).cloned().unwrap_or_default(),
            id,
            profile: Arc::from(s.profile.as_str()),
            sources: s.sources.clone(),
            token,
            origin: Origin::Config,
        }));
    }
    Ok(out)
}

/// Reads a token file: not group- or world-readable, one printable token.
fn read_token_file(index: usize, path: &std::path::Path) -> Result<TokenHash, SandboxError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bad = |detail: String| SandboxError::TokenFile {
        key: format!("sandboxes[{index}].token_file"),
        path: path.to_path_buf(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            "readable by group or others; chmod 600 it (it holds a credential)".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let t = text.trim();
    token::check(t).map_err(|e| bad(e.to_string()))?;
    Ok(token::hash(t.as_bytes()))
}
