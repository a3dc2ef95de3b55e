//! `fleet:`: what an edge shares with the other edges of a fleet. For now the external handle
//! issuers (`fleet.handle_issuers`): each an id and its Ed25519 public keys, from a file read
//! when the config is loaded (so a missing or malformed key file refuses the config at
//! startup, in `check-config` and on reload instead of leaving the edge trusting fewer
//! issuers than written) or from a secret of the secret source (`public_key_sds`, read when
//! delivered, by `state::issuers`). This module reads the key files; verifying handles is
//! `egress_handle`'s.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use egress_handle::{Issuers, VerifyingKey};

use super::raw::{RawFleet, RawFleetSource, RawIssuer};
use super::{FleetConfig, FleetSource, HandleIssuer};

/// The longest `fleet.rotation_overlap`.
const MAX_ROTATION_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// `fleet:` typed, or the located problem. `has_secrets`: whether a secret source is
/// configured (an SDS-delivered key needs one); `handle_max_ttl` is the default overlap, so a
/// handle signed just before a rotation lives out its life.
pub(super) fn fleet_from(
    raw: RawFleet,
    secrets: Option<&super::SecretsConfig>,
    own_issuer: Option<String>,
    handle_max_ttl: Duration,
) -> Result<FleetConfig, (String, String)> {
    let has_secrets = secrets.is_some();
    let source = match raw.source {
        None => None,
        Some(RawFleetSource::Sds) if matches!(secrets, Some(super::SecretsConfig::Sds(_))) => {
            Some(FleetSource::Sds)
        }
        Some(RawFleetSource::Sds) => {
            return Err((
                "fleet.source".to_owned(),
                "`sds` needs `secrets.sds`: the fleet state comes from that server".to_owned(),
            ));
        }
    };
    if let Some(url) = &raw.control_plane_admin {
        let ok = url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !ok {
            return Err((
                "fleet.control_plane_admin".to_owned(),
                "an http:// or https:// URL of the control plane's admin API".to_owned(),
            ));
        }
        if source.is_none() {
            return Err((
                "fleet.control_plane_admin".to_owned(),
                "only means something with `fleet.source`".to_owned(),
            ));
        }
    }
    if let Some(id) = &own_issuer {
        Issuers::check_id(id).map_err(|e| ("handles.issuer".to_owned(), e.to_string()))?;
    }
    let rotation_overlap = raw.rotation_overlap.map_or(handle_max_ttl, |d| d.0);
    if rotation_overlap > MAX_ROTATION_OVERLAP {
        return Err((
            "fleet.rotation_overlap".to_owned(),
            "at most 30d (a retired key should not outlive the handles it signed by much)"
                .to_owned(),
        ));
    }
    Ok(FleetConfig {
        source,
        control_plane_admin: raw.control_plane_admin,
        own_issuer,
        handle_issuers: issuers_from(raw.handle_issuers, has_secrets)?,
        rotation_overlap,
    })
}

/// Reads and checks one file of public keys.
fn read_keys(path: &Path) -> Result<Vec<VerifyingKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    VerifyingKey::from_pem_bundle(&text, path).map_err(|e| e.to_string())
}

/// The issuers of `fleet.handle_issuers`, or the located problem with one of them.
fn issuers_from(
    raw: Vec<RawIssuer>,
    has_secrets: bool,
) -> Result<Vec<HandleIssuer>, (String, String)> {
    let mut ids = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("fleet.handle_issuers[{i}]");
        let keys = match (&r.public_key, &r.public_key_sds) {
            (Some(path), None) => read_keys(path).map_err(|e| (format!("{at}.public_key"), e))?,
            (None, Some(_)) if !has_secrets => {
                return Err((
                    format!("{at}.public_key_sds"),
                    "needs a secret source (`secrets:`) to deliver the key".to_owned(),
                ));
            }
            (None, Some(_)) => Vec::new(),
            _ => {
                return Err((
                    at,
                    "give exactly one of public_key (a file) or public_key_sds (a secret name)"
                        .to_owned(),
                ));
            }
        };
        // The id's syntax is the handle format's, checked by the verifier's own table.
        Issuers::check_id(&r.id).map_err(|e| (format!("{at}.id"), e.to_string()))?;
        if !ids.insert(r.id.clone()) {
            return Err((
                format!("{at}.id"),
                format!(
                    "issuer {:?} is listed twice: put all its keys in one file",
                    r.id
                ),
            ));
        }
        out.push(HandleIssuer {
            key_ids: keys.iter().map(VerifyingKey::kid_hex).collect(),
            id: r.id,
            public_key: r.public_key,
            public_key_sds: r.public_key_sds,
            keys,
        });
    }
    Ok(out)
}
