//! The external issuers' keys in force: from `fleet.handle_issuers` files as loaded with the
//! config, and from secrets of the secret source (`public_key_sds`) as delivered.
//!
//! For an SDS-delivered issuer the control plane publishes only its current keys; a key it
//! drops (or withdraws with the whole secret) stays trusted for `fleet.rotation_overlap`
//! counted from when it was dropped, using the overlap of the config in force at each
//! recomputation, so a reload with `rotation_overlap: 0s` ends every overlap at once (the
//! emergency path for a compromised key). A delivered value that is not a bundle of Ed25519
//! public keys is refused with an error event and the issuer keeps its last good keys; an
//! issuer whose secret has not arrived yet trusts nothing (closed). A file-sourced key removed
//! by a reload stops at once (the operator chose the overlap by keeping both keys in the
//! file). This module computes the table and hands it to the verifier; it verifies nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use egress_handle::{HandleAuthority, Issuers, VerifyingKey};
use egress_sds::Secret;
use egress_sds::store::SecretStore;

use crate::config::Config;

/// Keeps the verifier's issuer table in step with the config and the secret source.
#[derive(Debug)]
pub struct IssuerTrust {
    handles: Arc<HandleAuthority>,
    secrets: Option<SecretStore>,
    tracked: Mutex<Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    /// The config last applied: what a delivery is judged against (kept under the same lock
    /// as the rest, so a delivery racing a reload cannot bring an older config back).
    config: Option<Arc<Config>>,
    /// The last good keys of each SDS-sourced issuer, with the secret name and version they
    /// came from (a refused version is recorded too, so it is reported once).
    current: HashMap<String, Delivered>,
    /// Keys dropped from an SDS-sourced issuer's set, and when.
    retired: Vec<(String, VerifyingKey, SystemTime)>,
}

impl Tracked {
    /// Records what `issuer`'s secret delivered last (`keys`: the ones now in force).
    fn record(&mut self, issuer: &str, secret: &str, version: String, keys: Vec<VerifyingKey>) {
        let d = Delivered {
            secret: secret.to_owned(),
            version,
            keys,
        };
        self.current.insert(issuer.to_owned(), d);
    }
}

#[derive(Debug)]
struct Delivered {
    secret: String,
    version: String,
    keys: Vec<VerifyingKey>,
}

impl IssuerTrust {
    pub fn new(handles: Arc<HandleAuthority>, secrets: Option<SecretStore>) -> IssuerTrust {
        IssuerTrust {
            handles,
            secrets,
            tracked: Mutex::default(),
        }
    }

    /// Recomputes the table for `config` (at startup and on every accepted reload) and gives
    /// it to the verifier.
    pub fn apply(&self, config: &Arc<Config>) {
        let mut t = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        t.config = Some(config.clone());
        self.recompute(&mut t);
    }

    /// Recomputes the table for the config last applied (when the secret source delivers).
    pub fn refresh(&self) {
        let mut t = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        self.recompute(&mut t);
    }

    fn recompute(&self, t: &mut Tracked) {
        let Some(config) = t.config.clone() else {
            return;
        };
        let now = SystemTime::now();
        let overlap = config.fleet.rotation_overlap;
        let mut table = Issuers::new();
        // The edge's own key, under the issuer it mints as (`handles.issuer`).
        if let Some(own) = self.handles.issuer() {
            add(&mut table, own, self.handles.verifying_key().clone(), None);
        }
        let mut sds_ids = Vec::new();
        for issuer in &config.fleet.handle_issuers {
            let Some(secret) = &issuer.public_key_sds else {
                for k in &issuer.keys {
                    add(&mut table, &issuer.id, k.clone(), None);
                }
                continue;
            };
            sds_ids.push(issuer.id.clone());
            let seen = |t: &Tracked, version: &str| {
                t.current
                    .get(&issuer.id)
                    .is_some_and(|d| d.secret == *secret && d.version == version)
            };
            match self.delivered(secret) {
                None => {
                    // Withdrawn (a secrets file that no longer has it): its keys retire.
                    if let Some(gone) = t.current.remove(&issuer.id) {
                        tracing::warn!(issuer = %issuer.id, secret = %secret, trusted_for = ?overlap, "issuer keys withdrawn by the secret source; retiring them");
                        t.retired
                            .extend(gone.keys.into_iter().map(|k| (issuer.id.clone(), k, now)));
                    }
                }
                Some((version, _)) if seen(t, &version) => {}
                Some((version, Err(e))) => {
                    tracing::error!(issuer = %issuer.id, secret = %secret, version = %version, error = %e, "issuer key update refused; the previous keys stay in force");
                    let keys = t
                        .current
                        .remove(&issuer.id)
                        .map(|d| d.keys)
                        .unwrap_or_default();
                    t.record(&issuer.id, secret, version, keys);
                }
                Some((version, Ok(keys))) => {
                    let previous = t.current.remove(&issuer.id);
                    for k in previous.map(|d| d.keys).unwrap_or_default() {
                        if !keys.contains(&k) {
                            tracing::info!(issuer = %issuer.id, key_id = %k.kid_hex(), trusted_for = ?overlap, "issuer key retired");
                            t.retired.push((issuer.id.clone(), k, now));
                        }
                    }
                    let kids: Vec<String> = keys.iter().map(VerifyingKey::kid_hex).collect();
                    tracing::info!(issuer = %issuer.id, secret = %secret, version = %version, key_ids = ?kids, "issuer keys applied");
                    t.record(&issuer.id, secret, version, keys);
                }
            }
            if let Some(d) = t.current.get(&issuer.id) {
                for k in &d.keys {
                    add(&mut table, &issuer.id, k.clone(), None);
                }
            }
        }
        // Forget what no longer applies: overlaps over (by the overlap in force now), issuers
        // no longer configured.
        let until = |retired_at: SystemTime| retired_at.checked_add(overlap);
        t.retired
            .retain(|(id, _, at)| sds_ids.contains(id) && until(*at).is_some_and(|u| u > now));
        t.current.retain(|id, _| sds_ids.contains(id));
        for (id, k, at) in &t.retired {
            if let Some(u) = until(*at) {
                add(&mut table, id, k.clone(), Some(u));
            }
        }
        self.handles.set_issuers(table);
    }

    /// The delivered value of `secret` as keys, with its version; `None` before delivery.
    fn delivered(&self, secret: &str) -> Option<(String, Result<Vec<VerifyingKey>, String>)> {
        let v = self.secrets.as_ref()?.get(secret)?;
        let keys = match &*v.secret {
            Secret::Generic {
                value: Some(bytes), ..
            } => bytes
                .expose_str()
                .ok_or_else(|| "not UTF-8 text".to_owned())
                .and_then(|text| {
                    VerifyingKey::from_pem_bundle(text, Path::new(secret))
                        .map_err(|e| e.to_string())
                }),
            _ => Err("not a single-value generic secret holding PEM public keys".to_owned()),
        };
        Some((v.version.clone(), keys))
    }
}

fn add(table: &mut Issuers, id: &str, key: VerifyingKey, until: Option<SystemTime>) {
    // Ids were checked when the config was loaded; a failure here means the checks drifted
    // apart, and the key is then not trusted (closed).
    let r = match until {
        None => table.add(id, key),
        Some(u) => table.add_until(id, key, u),
    };
    if let Err(e) = r {
        tracing::error!(issuer = %id, error = %e, "handle issuer key not trusted");
    }
}
