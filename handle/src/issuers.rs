//! External handle issuers: the platform control planes (or anything else) whose handles this
//! verifier accepts besides its own, each an id and one or more Ed25519 public keys.
//!
//! A key belongs to exactly the issuers it was added for. The verifier asks for the keys with
//! a handle's key id, checks the signature against each, and then accepts the handle only if
//! the issuer named inside the signed payload owns a key that verified it: an issuer's key
//! cannot vouch for another issuer's handles, and the edge's own key cannot vouch for any
//! issuer's. Several keys per issuer are how rotation overlaps (old and new both valid until
//! the old one is removed, or until the instant a retired key was given). This module holds
//! the table; it reads no files and verifies nothing itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

use crate::error::HandleError;
use crate::keys::VerifyingKey;
use crate::scope;

/// The configured issuers and their keys.
#[derive(Clone, Default)]
pub struct Issuers {
    by_kid: HashMap<[u8; 8], Vec<Entry>>,
    /// Issuer id → key ids, for display.
    ids: BTreeMap<String, Vec<String>>,
}

impl Issuers {
    pub fn new() -> Self {
        Issuers::default()
    }

    /// Trusts `key` for handles naming `issuer`. The id takes the syntax of a session name
    /// (1 to 128 printable ASCII characters, no spaces). Adding the same key twice for one
    /// issuer keeps the longer trust.
    pub fn add(&mut self, issuer: &str, key: VerifyingKey) -> Result<(), HandleError> {
        self.insert(issuer, key, None)
    }

    /// Trusts `key` for `issuer` until `until` (a retired key during a rotation's overlap).
    pub fn add_until(
        &mut self,
        issuer: &str,
        key: VerifyingKey,
        until: SystemTime,
    ) -> Result<(), HandleError> {
        self.insert(issuer, key, Some(until))
    }

    /// Checks an issuer id's syntax (that of a session name), as [`Issuers::add`] does.
    pub fn check_id(issuer: &str) -> Result<(), HandleError> {
        if scope::valid_name(issuer) {
            Ok(())
        } else {
            Err(HandleError::BadRequest(format!(
                "issuer id {issuer:?} is invalid: use 1 to 128 printable ASCII characters \
                 without spaces"
            )))
        }
    }

    fn insert(
        &mut self,
        issuer: &str,
        key: VerifyingKey,
        until: Option<SystemTime>,
    ) -> Result<(), HandleError> {
        Self::check_id(issuer)?;
        let owners = self.by_kid.entry(key.kid()).or_default();
        if let Some(e) = owners
            .iter_mut()
            .find(|e| e.issuer == issuer && e.key == key)
        {
            e.until = match (e.until, until) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            return Ok(());
        }
        self.ids
            .entry(issuer.to_owned())
            .or_default()
            .push(key.kid_hex());
        owners.push(Entry {
            issuer: issuer.to_owned(),
            key,
            until,
        });
        Ok(())
    }

    /// The (issuer, key) pairs whose key has key id `kid` and is trusted at `now`.
    pub(crate) fn with_kid(
        &self,
        kid: &[u8; 8],
        now: SystemTime,
    ) -> impl Iterator<Item = (&str, &VerifyingKey)> {
        self.by_kid
            .get(kid)
            .into_iter()
            .flatten()
            .filter(move |e| e.until.is_none_or(|u| now < u))
            .map(|e| (e.issuer.as_str(), &e.key))
    }

    /// Issuer ids and the key ids trusted for each, in id order.
    pub fn list(&self) -> &BTreeMap<String, Vec<String>> {
        &self.ids
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[derive(Clone)]
struct Entry {
    issuer: String,
    key: VerifyingKey,
    /// Trusted until then (a retired key); `None`: until removed.
    until: Option<SystemTime>,
}

impl fmt::Debug for Issuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.ids.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{HandleAuthority, MintRequest, SigningKey, mint_as_issuer};

    const TTL: Duration = Duration::from_secs(600);

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    fn issue(key: &SigningKey, issuer: &str) -> String {
        let req = MintRequest::new(["openai-key"], TTL);
        mint_as_issuer(key, issuer, &req, TTL, SystemTime::now())
            .unwrap()
            .handle
    }

    fn trusting(pairs: &[(&str, &SigningKey)]) -> (tempfile::TempDir, HandleAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let auth = HandleAuthority::open(dir.path(), TTL).unwrap();
        let mut issuers = Issuers::new();
        for (id, k) in pairs {
            issuers.add(id, k.verifying_key().clone()).unwrap();
        }
        auth.set_issuers(issuers);
        (dir, auth)
    }

    fn refusal(auth: &HandleAuthority, handle: &str) -> &'static str {
        match auth.verify(handle, SystemTime::now()) {
            Err(HandleError::Invalid(reason)) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn an_issuers_handle_verifies_only_under_that_issuer() {
        let (control, other) = (key(), key());
        let (_d, auth) = trusting(&[("control", &control), ("other", &other)]);
        let claims = auth
            .verify(&issue(&control, "control"), SystemTime::now())
            .unwrap();
        assert_eq!(claims.issuer(), Some("control"));
        assert_eq!(claims.credentials(), ["openai-key"]);
        // Another configured issuer's key cannot vouch for "control".
        assert_eq!(
            refusal(&auth, &issue(&other, "control")),
            "signed by a key that is not one of its issuer's"
        );
        // An issuer nobody configured.
        assert_eq!(
            refusal(&auth, &issue(&control, "stranger")),
            "signed by a key that is not one of its issuer's"
        );
        // A key nobody configured.
        assert_eq!(
            refusal(&auth, &issue(&key(), "control")),
            "signed by an unknown key"
        );
    }

    #[test]
    fn the_edges_own_key_and_issuer_keys_do_not_stand_in_for_each_other() {
        let control = key();
        let (_d, auth) = trusting(&[("control", &control)]);
        // The edge's own handles carry no issuer and still verify.
        let own = auth.mint(&MintRequest::new(["k"], TTL)).unwrap().handle;
        assert_eq!(auth.verify(&own, SystemTime::now()).unwrap().issuer(), None);
        // An issuer's key signing a handle that names no issuer: refused. (Minted with the
        // crate-internal path that writes no issuer record.)
        let req = MintRequest::new(["k"], TTL);
        let bare = crate::mint::mint(&control, &req, TTL, SystemTime::now())
            .unwrap()
            .handle;
        assert_eq!(
            refusal(&auth, &bare),
            "signed by an issuer's key but names no issuer"
        );
    }

    #[test]
    fn rotation_overlaps_while_both_keys_are_configured() {
        let (old, new) = (key(), key());
        let (_d, auth) = trusting(&[("control", &old), ("control", &new)]);
        let (from_old, from_new) = (issue(&old, "control"), issue(&new, "control"));
        assert!(auth.verify(&from_old, SystemTime::now()).is_ok());
        assert!(auth.verify(&from_new, SystemTime::now()).is_ok());
        assert_eq!(auth.verifier().issuers().list()["control"].len(), 2);
        // The old key retired: its handles stop verifying, the new key's keep working.
        let mut only_new = Issuers::new();
        only_new
            .add("control", new.verifying_key().clone())
            .unwrap();
        auth.set_issuers(only_new);
        assert_eq!(refusal(&auth, &from_old), "signed by an unknown key");
        assert!(auth.verify(&from_new, SystemTime::now()).is_ok());
    }

    #[test]
    fn a_retired_key_is_trusted_until_its_instant() {
        let (old, new) = (key(), key());
        let (_d, auth) = trusting(&[("control", &new)]);
        let now = SystemTime::now();
        let mut table = Issuers::new();
        table.add("control", new.verifying_key().clone()).unwrap();
        table
            .add_until(
                "control",
                old.verifying_key().clone(),
                now + Duration::from_secs(60),
            )
            .unwrap();
        auth.set_issuers(table);
        let from_old = issue(&old, "control");
        assert!(auth.verify(&from_old, now).is_ok());
        let later = now + Duration::from_secs(120);
        assert!(matches!(
            auth.verify(&from_old, later),
            Err(HandleError::Invalid("signed by an unknown key"))
        ));
        assert!(auth.verify(&issue(&new, "control"), later).is_ok());
        // Added again without an instant (back in the current set): trusted without limit.
        let mut again = Issuers::new();
        again
            .add_until("control", old.verifying_key().clone(), now)
            .unwrap();
        again.add("control", old.verifying_key().clone()).unwrap();
        auth.set_issuers(again);
        assert!(auth.verify(&from_old, later).is_ok());
    }

    #[test]
    fn the_issuer_record_is_covered_by_the_signature() {
        let control = key();
        let (_d, auth) = trusting(&[("control", &control), ("contro1", &control)]);
        let handle = issue(&control, "control");
        // Re-encode the payload with another issuer name of the same length and keep the
        // signature: the one key trusted for both names must still refuse it.
        let raw = crate::token::split(&handle).unwrap();
        let mut payload = raw.payload.clone();
        let at = payload.len() - "control".len();
        payload[at..].copy_from_slice(b"contro1");
        let forged = crate::token::assemble(&payload, &raw.signature);
        assert_eq!(refusal(&auth, &forged), "bad signature");
        // Issuer ids follow the session syntax.
        assert!(
            Issuers::new()
                .add("has space", control.verifying_key().clone())
                .is_err()
        );
    }
}
