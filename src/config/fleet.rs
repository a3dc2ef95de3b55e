//! `fleet:`: what an edge shares with the other edges of a fleet. For now the external handle
//! issuers (`fleet.handle_issuers`): each an id and a file of Ed25519 public keys, read when
//! the config is loaded so a missing or malformed key file refuses the config (at startup,
//! in `check-config` and on reload) instead of leaving the edge trusting fewer issuers than
//! written. This module reads the key files; verifying handles is `egress_handle`'s.

use std::collections::BTreeSet;

use egress_handle::{Issuers, VerifyingKey};

use super::HandleIssuer;
use super::raw::RawIssuer;

/// The issuers of `fleet.handle_issuers`, or the located problem with one of them.
pub(super) fn issuers_from(raw: Vec<RawIssuer>) -> Result<Vec<HandleIssuer>, (String, String)> {
    let mut ids = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("fleet.handle_issuers[{i}]");
        let text = std::fs::read_to_string(&r.public_key).map_err(|e| {
            (
                format!("{at}.public_key"),
                format!("cannot read {}: {e}", r.public_key.display()),
            )
        })?;
        let keys = VerifyingKey::from_pem_bundle(&text, &r.public_key)
            .map_err(|e| (format!("{at}.public_key"), e.to_string()))?;
        // The id's syntax is the handle format's; checking it by building the table keeps
        // one definition of it.
        let mut probe = Issuers::new();
        for k in &keys {
            probe
                .add(&r.id, k.clone())
                .map_err(|e| (format!("{at}.id"), e.to_string()))?;
        }
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
            keys,
        });
    }
    Ok(out)
}

/// The verifier's table for `issuers` (already validated by [`issuers_from`]).
pub fn table(issuers: &[HandleIssuer]) -> Issuers {
    let mut t = Issuers::new();
    for issuer in issuers {
        for k in &issuer.keys {
            // Validated at load: an error here would mean the two checks drifted apart, and
            // the key is then simply not trusted (closed).
            if let Err(e) = t.add(&issuer.id, k.clone()) {
                tracing::error!(issuer = %issuer.id, error = %e, "handle issuer key not trusted");
            }
        }
    }
    t
}
