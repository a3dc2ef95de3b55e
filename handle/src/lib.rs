//! egress-edge handles: short-lived, scoped, Ed25519-signed tokens (`eeh_…`) that a sandbox
//! holds instead of a real credential.
//!
//! - [`HandleAuthority`] bundles what one process needs: the signing key in the state dir,
//!   a [`Verifier`] and the persistent [`RevocationList`].
//! - Minting ([`MintRequest`] → [`Minted`]) validates and signs; verification
//!   ([`Verifier::verify`]) checks shape, key, signature, time and revocation;
//!   [`Claims::authorize`] checks the scope against one request.
//! - [`scan`] finds every handle candidate in raw request bytes (any case, percent-encoded,
//!   inside `Basic`) and tells well-formed handles (to verify) from malformed prefix-bearing
//!   strings (to refuse); [`redact_in`] and [`redact`] keep handles out of logs;
//!   [`find_handles`], [`contains_handle`] and [`looks_like_handle`] are string helpers on top.
//! - [`api`] holds the admin API's JSON shapes.
//!
//! Token format (version 1): `eeh_` + base64url(payload) + `.` + base64url(signature), at most
//! [`MAX_TOKEN_LEN`] bytes, where payload is a fixed binary layout (version, key id, 128-bit id,
//! iat, exp, session, credentials, host, methods, path prefixes) followed by optional tagged
//! extension records (sandbox, issuer), and signature is Ed25519 over `"eeh-v1\0" || payload`; details
//! in the `token` module. Errors map to the contract's refusal codes through
//! [`HandleError::code`].
//!
//! This crate does no networking and holds no credentials: it only decides whether a presented
//! handle may redeem a named credential.

pub mod api;
mod claims;
mod detect;
mod error;
mod fsutil;
mod issuers;
mod keys;
mod mint;
mod pem;
mod revocation;
mod scope;
mod token;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use api::RevokeTarget;
pub use claims::Claims;
pub use detect::{
    Candidate, Defect, Origin, PERCENT_LAYERS, Scan, Shape, contains_handle, find_handles,
    looks_like_handle, redact, redact_in, scan,
};
pub use error::HandleError;
pub use issuers::Issuers;
pub use keys::{KEY_FILE, KeyRing, PUBLIC_KEY_FILE, SigningKey, VerifyingKey};
pub use mint::{DEFAULT_MAX_TTL, DEFAULT_TTL, MintRequest, Minted, mint_as_issuer};
pub use revocation::{REVOCATION_FILE, RevocationEntry, RevocationList};
pub use scope::{
    MAX_CREDENTIALS, MAX_HOST_LEN, MAX_METHOD_LEN, MAX_METHODS, MAX_NAME_LEN, MAX_PATH_PREFIX_LEN,
    MAX_PATH_PREFIXES,
};
pub use token::{MAX_TOKEN_LEN, PREFIX};
pub use verify::{CLOCK_SKEW, Verifier};

/// Mints, verifies and revokes handles for one state directory.
pub struct HandleAuthority {
    state_dir: PathBuf,
    signing: SigningKey,
    verifier: Verifier,
    max_ttl: Duration,
    /// Mint as this issuer (`handles.issuer`), so other edges that list it accept the handles.
    issuer: Option<String>,
}

impl HandleAuthority {
    /// Opens (creating on first use) the signing key `handle-key.pem`, its public export
    /// `handle-key.pub` and the revocation list `revoked.json` in `state_dir` (0700 if created).
    ///
    /// `max_ttl` caps minted lifetimes and bounds how long revocations are remembered; every
    /// process sharing the state dir should use the same value. It must be at least 1 s.
    pub fn open(state_dir: &Path, max_ttl: Duration) -> Result<Self, HandleError> {
        if max_ttl.as_secs() == 0 {
            return Err(HandleError::BadRequest(
                "the maximum handle ttl must be at least 1s".to_owned(),
            ));
        }
        let signing = SigningKey::load_or_create(state_dir)?;
        let revocations = Arc::new(RevocationList::load(
            &state_dir.join(REVOCATION_FILE),
            max_ttl,
        )?);
        let keys: KeyRing = std::iter::once(signing.verifying_key().clone()).collect();
        Ok(HandleAuthority {
            state_dir: state_dir.to_path_buf(),
            signing,
            verifier: Verifier::new(keys, revocations, max_ttl),
            max_ttl,
            issuer: None,
        })
    }

    /// Mints from now on as `issuer` (the handle names it, inside the signed payload), so
    /// that every edge listing this issuer with this key accepts the handles. The caller must
    /// also trust the own key under that issuer (see [`Issuers::add`]) to verify them here.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Result<Self, HandleError> {
        if let Some(id) = &issuer {
            Issuers::check_id(id)?;
        }
        self.issuer = issuer;
        Ok(self)
    }

    /// The issuer this authority mints as, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The public half of the signing key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.signing.verifying_key()
    }

    /// Mints a handle issued now.
    pub fn mint(&self, req: &MintRequest) -> Result<Minted, HandleError> {
        self.mint_at(req, SystemTime::now())
    }

    /// Mints a handle issued at `now` (tests, deterministic tooling).
    pub fn mint_at(&self, req: &MintRequest, now: SystemTime) -> Result<Minted, HandleError> {
        match &self.issuer {
            Some(issuer) => mint_as_issuer(&self.signing, issuer, req, self.max_ttl, now),
            None => mint::mint(&self.signing, req, self.max_ttl, now),
        }
    }

    /// Verifies a handle at `now`; see [`Verifier::verify`]. Scope is checked separately with
    /// [`Claims::authorize`].
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, HandleError> {
        self.verifier.verify(token, now)
    }

    /// Replaces the external issuers whose handles are accepted (see [`Issuers`]).
    pub fn set_issuers(&self, issuers: Issuers) {
        self.verifier.set_issuers(issuers);
    }

    /// Revokes one handle by id, persistently.
    pub fn revoke_id(&self, id: &str) -> Result<(), HandleError> {
        self.verifier.revocations().revoke_id(id)
    }

    /// Revokes every handle of `session` issued so far, persistently.
    pub fn revoke_session(&self, session: &str) -> Result<(), HandleError> {
        self.verifier.revocations().revoke_session(session)
    }

    /// Revokes every handle bound to `sandbox` issued so far, persistently.
    pub fn revoke_sandbox(&self, sandbox: &str) -> Result<(), HandleError> {
        self.verifier.revocations().revoke_sandbox(sandbox)
    }

    /// Revokes what an admin API request names.
    pub fn revoke(&self, target: &RevokeTarget) -> Result<(), HandleError> {
        match target {
            RevokeTarget::Id(id) => self.revoke_id(id),
            RevokeTarget::Session(session) => self.revoke_session(session),
            RevokeTarget::Sandbox(sandbox) => self.revoke_sandbox(sandbox),
        }
    }

    /// Picks up revocations written by other processes; call about once a second.
    /// See [`RevocationList::reload_if_changed`].
    pub fn reload_revocations_if_changed(&self) -> Result<bool, HandleError> {
        self.verifier.revocations().reload_if_changed()
    }

    /// The public key as PEM (also in `state_dir/handle-key.pub`), for replicas that only verify.
    pub fn public_key_pem(&self) -> String {
        self.signing.verifying_key().to_pem()
    }

    /// The signing key's id (16 hex characters).
    pub fn kid(&self) -> String {
        self.signing.verifying_key().kid_hex()
    }

    /// The verifier (clone it to share with request handlers).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The verifier, to trust further public keys (rotation, other replicas' keys).
    pub fn verifier_mut(&mut self) -> &mut Verifier {
        &mut self.verifier
    }

    /// The revocation list.
    pub fn revocations(&self) -> &Arc<RevocationList> {
        self.verifier.revocations()
    }

    /// The configured maximum ttl.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl fmt::Debug for HandleAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandleAuthority")
            .field("state_dir", &self.state_dir)
            .field("signing", &self.signing)
            .field("max_ttl", &self.max_ttl)
            .field("issuer", &self.issuer)
            .field("verifier", &self.verifier)
            .finish()
    }
}

/// Entry points for the fuzz targets in `fuzz/` and their stable replay test. Not an API:
/// hidden, unversioned, and may change with any commit.
#[doc(hidden)]
pub mod fuzzing {
    use crate::detect::{Shape, contains_handle, find_handles, looks_like_handle, redact_in, scan};
    use crate::token;

    /// The token parser: split and base64 layer, then (first byte `!`) the binary payload
    /// decoder directly, so fuzzing is not stopped by the signature check in front of it.
    pub fn token(data: &[u8]) {
        if let Some(payload) = data.strip_prefix(b"!") {
            if let Ok(claims) = token::decode_payload(payload) {
                assert_eq!(
                    token::encode_payload(&claims).ok().as_deref(),
                    Some(payload),
                    "a decoded payload re-encodes to itself"
                );
            }
            return;
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let _ = crate::detect::redact(text);
        if let Ok(raw) = token::split(text) {
            let _ = token::peek_kid(&raw.payload);
            let _ = token::decode_payload(&raw.payload);
        }
    }

    /// The detector over raw request bytes, and the string helpers on top of it.
    pub fn detect(data: &[u8]) {
        let found = scan(data);
        for c in found.candidates() {
            assert!(c.span().start <= c.span().end && c.span().end <= data.len());
            let _ = c.redacted();
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let redacted = redact_in(text);
        for c in found.well_formed() {
            if c.text().len() > 16 {
                assert!(
                    !redacted.contains(c.text()),
                    "a well-formed handle survives redaction"
                );
            }
        }
        assert_eq!(contains_handle(text), !find_handles(text).is_empty());
        if looks_like_handle(text) {
            assert!(
                found
                    .candidates()
                    .iter()
                    .any(|c| c.shape() == Shape::WellFormed)
            );
        }
    }
}
