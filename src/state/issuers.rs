//! The external issuers' keys in force: from `fleet.handle_issuers` files as loaded with the
//! config, and from secrets of the secret source (`public_key_sds`) as delivered.
//!
//! For an SDS-delivered issuer the control plane publishes only its current keys; a key it
//! drops stays trusted for `fleet.rotation_overlap` (by default the handle max ttl), so
//! handles signed just before the rotation live out their life. A delivered value that is
//! not a bundle of Ed25519 public keys is refused with an error event and the issuer keeps
//! its last good keys; an issuer whose secret has not arrived yet trusts nothing (closed).
//! A file-sourced key removed by a reload stops at once (the operator chose the overlap by
//! keeping both keys in the file). This module computes the table and hands it to the
//! verifier; it verifies nothing.

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
    /// The last good keys of each SDS-sourced issuer, and the secret version they came from.
    current: HashMap<String, (String, Vec<VerifyingKey>)>,
    /// Keys dropped from an SDS-sourced issuer's set, trusted until the instant.
    retired: Vec<(String, VerifyingKey, SystemTime)>,
}

impl IssuerTrust {
    pub fn new(handles: Arc<HandleAuthority>, secrets: Option<SecretStore>) -> IssuerTrust {
        IssuerTrust {
            handles,
            secrets,
            tracked: Mutex::default(),
        }
    }

    /// Recomputes the table for `config` (at startup, on every accepted reload, and whenever
    /// the secret source delivers) and gives it to the verifier.
    pub fn apply(&self, config: &Config) {
        let now = SystemTime::now();
        let overlap = config.fleet.rotation_overlap;
        let mut t = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table = Issuers::new();
        let mut sds_ids = Vec::new();
        for issuer in &config.fleet.handle_issuers {
            let Some(secret) = &issuer.public_key_sds else {
                for k in &issuer.keys {
                    add(&mut table, &issuer.id, k.clone(), None);
                }
                continue;
            };
            sds_ids.push(issuer.id.clone());
            match self.delivered(secret) {
                // Already refused (or applied): nothing new.
                Some((version, Err(_)))
                    if t.current.get(&issuer.id).map(|(v, _)| v) == Some(&version) => {}
                Some((version, Err(e))) => {
                    tracing::error!(issuer = %issuer.id, secret = %secret, version = %version, error = %e, "issuer key update refused; the previous keys stay in force");
                    // Remember the version so the event is not repeated for it.
                    let keys = t
                        .current
                        .remove(&issuer.id)
                        .map(|(_, k)| k)
                        .unwrap_or_default();
                    t.current.insert(issuer.id.clone(), (version, keys));
                }
                None => {}
                Some((version, Ok(keys))) => {
                    let previous = t.current.remove(&issuer.id);
                    let fresh = previous.as_ref().map(|(v, _)| v) != Some(&version);
                    for k in previous.map(|(_, old)| old).unwrap_or_default() {
                        if !keys.contains(&k) {
                            tracing::info!(issuer = %issuer.id, key_id = %k.kid_hex(), trusted_for = ?overlap, "issuer key retired");
                            t.retired.push((issuer.id.clone(), k, now + overlap));
                        }
                    }
                    if fresh {
                        let kids: Vec<String> = keys.iter().map(VerifyingKey::kid_hex).collect();
                        tracing::info!(issuer = %issuer.id, secret = %secret, version = %version, key_ids = ?kids, "issuer keys applied");
                    }
                    t.current.insert(issuer.id.clone(), (version, keys));
                }
            }
            if let Some((_, keys)) = t.current.get(&issuer.id) {
                for k in keys {
                    add(&mut table, &issuer.id, k.clone(), None);
                }
            }
        }
        // Forget what no longer applies: expired retirements, issuers no longer configured.
        t.retired
            .retain(|(id, _, until)| *until > now && sds_ids.contains(id));
        t.current.retain(|id, _| sds_ids.contains(id));
        for (id, k, until) in &t.retired {
            add(&mut table, id, k.clone(), Some(*until));
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
