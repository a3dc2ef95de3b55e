//! Verification of presented handles: shape, trusted key, signature, timestamps, revocation.
//!
//! The order is deliberate: only the version and key id are read before the signature is
//! checked, so the full payload parser only ever sees bytes a trusted key signed. Scope (which
//! credential, host, method, path) is a separate step, [`Claims::authorize`], because the proxy
//! knows the request only after choosing the destination. This module does not mint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::claims::{Claims, unix_secs};
use crate::error::HandleError;
use crate::keys::KeyRing;
use crate::revocation::RevocationList;
use crate::token;

/// How far in the future a handle's issue time may lie (clocks of replicas drift).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Checks handles against trusted keys and a revocation list. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: KeyRing,
    revocations: Arc<RevocationList>,
    max_ttl: Duration,
}

impl Verifier {
    /// A verifier trusting `keys`, consulting `revocations`, and refusing handles whose
    /// lifetime exceeds `max_ttl` (revocation entries are only kept that long, so a longer-lived
    /// handle could outlive its revocation).
    pub fn new(keys: KeyRing, revocations: Arc<RevocationList>, max_ttl: Duration) -> Self {
        Verifier {
            keys,
            revocations,
            max_ttl,
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The trusted keys, for rotation (adding the next key, dropping a retired one).
    pub fn keys_mut(&mut self) -> &mut KeyRing {
        &mut self.keys
    }

    /// The revocation list consulted.
    pub fn revocations(&self) -> &Arc<RevocationList> {
        &self.revocations
    }

    /// Verifies `token` at time `now` and returns its claims.
    ///
    /// Fails with [`HandleError::Invalid`] for anything malformed, signed by an unknown key,
    /// wrongly signed, issued more than [`CLOCK_SKEW`] in the future or living longer than the
    /// maximum ttl; [`HandleError::Expired`] once `now` reaches the expiry; and
    /// [`HandleError::Revoked`] if its id, session or sandbox was revoked. Scope (and the
    /// sandbox binding, [`Claims::sandbox`]) is not checked here.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, HandleError> {
        let raw = token::split(token)?;
        let kid = token::peek_kid(&raw.payload)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or(HandleError::Invalid("signed by an unknown key"))?;
        if !key.verify(&token::signing_input(&raw.payload), &raw.signature) {
            return Err(HandleError::Invalid("bad signature"));
        }
        let claims = token::decode_payload(&raw.payload)?;

        let now = unix_secs(now);
        if claims.iat > now.saturating_add(CLOCK_SKEW.as_secs()) {
            return Err(HandleError::Invalid("issued in the future"));
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_ttl.as_secs() {
            return Err(HandleError::Invalid("lifetime exceeds the maximum ttl"));
        }
        if now >= claims.exp {
            return Err(HandleError::Expired);
        }
        if self.revocations.is_revoked(&claims) {
            return Err(HandleError::Revoked);
        }
        Ok(claims)
    }
}
