//! Verification of presented handles: shape, trusted key, signature, timestamps, revocation.
//!
//! The order is deliberate: only the version and key id are read before the signature is
//! checked, so the full payload parser only ever sees bytes a trusted key signed. Scope (which
//! credential, host, method, path) is a separate step, [`Claims::authorize`], because the proxy
//! knows the request only after choosing the destination. This module does not mint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::claims::{Claims, unix_secs};
use crate::error::HandleError;
use crate::issuers::Issuers;
use crate::keys::KeyRing;
use crate::revocation::RevocationList;
use crate::token;

/// How far in the future a handle's issue time may lie (clocks of replicas drift).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Checks handles against trusted keys and a revocation list. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: KeyRing,
    /// External issuers; shared by clones, replaced whole by [`Verifier::set_issuers`].
    issuers: Arc<ArcSwap<Issuers>>,
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
            issuers: Arc::default(),
            revocations,
            max_ttl,
        }
    }

    /// Replaces the external issuers this verifier (and every clone of it) trusts.
    pub fn set_issuers(&self, issuers: Issuers) {
        self.issuers.store(Arc::new(issuers));
    }

    /// The external issuers trusted now.
    pub fn issuers(&self) -> Arc<Issuers> {
        self.issuers.load_full()
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

    /// Whether the key that signed `claims` is still trusted for its issuer (or, without an
    /// issuer, still one of the edge's own): for callers that cache verified claims, so a key
    /// removed from the issuer set stops its handles at once.
    pub fn still_trusts(&self, claims: &Claims) -> bool {
        match claims.issuer.as_deref() {
            None => self.keys.get(&claims.kid).is_some(),
            Some(issuer) => self
                .issuers
                .load()
                .with_kid(&claims.kid, SystemTime::now())
                .any(|(id, _)| id == issuer),
        }
    }

    /// Verifies `token` at time `now` and returns its claims.
    ///
    /// Fails with [`HandleError::Invalid`] for anything malformed, signed by an unknown key,
    /// wrongly signed, naming an issuer that does not own the key that verified it (or naming
    /// none when only an issuer's key verified it), issued more than [`CLOCK_SKEW`] in the future or living longer than the
    /// maximum ttl; [`HandleError::Expired`] once `now` reaches the expiry; and
    /// [`HandleError::Revoked`] if its id, session or sandbox was revoked. Scope (and the
    /// sandbox binding, [`Claims::sandbox`]) is not checked here.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, HandleError> {
        let raw = token::split(token)?;
        let kid = token::peek_kid(&raw.payload)?;
        let input = token::signing_input(&raw.payload);
        // Every key with this key id, with its owner: `None` is the edge itself. Only the
        // version and key id have been read so far; the payload is parsed once a key verified.
        let issuers = self.issuers.load();
        let candidates = self
            .keys
            .get(&kid)
            .map(|k| (None, k))
            .into_iter()
            .chain(issuers.with_kid(&kid, now).map(|(id, k)| (Some(id), k)));
        let mut known = false;
        let mut signers: Vec<Option<&str>> = Vec::new();
        for (owner, key) in candidates {
            known = true;
            if key.verify(&input, &raw.signature) {
                signers.push(owner);
            }
        }
        if signers.is_empty() {
            return Err(HandleError::Invalid(if known {
                "bad signature"
            } else {
                "signed by an unknown key"
            }));
        }
        let claims = token::decode_payload(&raw.payload)?;
        if !signers.contains(&claims.issuer.as_deref()) {
            return Err(HandleError::Invalid(match claims.issuer {
                Some(_) => "signed by a key that is not one of its issuer's",
                None => "signed by an issuer's key but names no issuer",
            }));
        }

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
