//! Ed25519 keys for handles: the private [`SigningKey`] kept in the state dir, the public
//! [`VerifyingKey`] other replicas load, and the [`KeyRing`] a verifier consults by key id.
//!
//! Files: `handle-key.pem` (PKCS#8 `PRIVATE KEY`, mode 0600, created race-safely on first use)
//! and `handle-key.pub` (SPKI `PUBLIC KEY`, mode 0644, rewritten from the private key). The key
//! id is the first 8 bytes of SHA-256 of the raw 32-byte public key. This module does not mint
//! or parse handles, and never prints key bytes (Debug shows the key id only).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

use crate::claims::hex;
use crate::error::HandleError;
use crate::{fsutil, pem};

/// File name of the private signing key inside the state dir.
pub const KEY_FILE: &str = "handle-key.pem";
/// File name of the exported public key inside the state dir.
pub const PUBLIC_KEY_FILE: &str = "handle-key.pub";

const PRIVATE_LABEL: &str = "PRIVATE KEY";
/// PKCS#8 v1 (RFC 8410) Ed25519 private key, up to the 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The same for ring's v2 documents (version 1, the public key after the seed).
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PUBLIC_LABEL: &str = "PUBLIC KEY";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The private Ed25519 key that signs handles.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: VerifyingKey,
}

impl SigningKey {
    /// Generates a fresh key, returning it with its PKCS#8 PEM for storage.
    pub fn generate() -> Result<(Self, Zeroizing<String>), HandleError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| HandleError::Random)?;
        let pem = pem::encode(PRIVATE_LABEL, pkcs8.as_ref());
        let key = Self::from_pkcs8(pkcs8.as_ref(), Path::new("<generated>"))?;
        Ok((key, pem))
    }

    /// Parses a PKCS#8 `PRIVATE KEY` PEM (as written by this crate or `openssl genpkey
    /// -algorithm ed25519`). `source` only labels errors.
    pub fn from_pem(text: &str, source: &Path) -> Result<Self, HandleError> {
        let der =
            pem::decode_one(text, PRIVATE_LABEL).map_err(|detail| key_error(source, detail))?;
        Self::from_pkcs8(&der, source)
    }

    fn from_pkcs8(der: &[u8], source: &Path) -> Result<Self, HandleError> {
        // "maybe_unchecked" also accepts PKCS#8 v1 (no embedded public key, as OpenSSL writes);
        // for v2 documents ring still checks the embedded public key matches.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| key_error(source, format!("not an Ed25519 PKCS#8 key ({e})")))?;
        let public = VerifyingKey::from_slice(pair.public_key().as_ref())
            .ok_or_else(|| key_error(source, "unexpected public key length".to_owned()))?;
        Ok(SigningKey { pair, public })
    }

    /// Loads `state_dir/handle-key.pem`, creating it (and the 0700 directory) if missing, and
    /// (re)writes `state_dir/handle-key.pub` to match (best effort: a failure is logged).
    ///
    /// Concurrent first starts agree on one key: each writes a complete temp file and only
    /// the first hard link to the final name succeeds; the others load the winner's key.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, HandleError> {
        fsutil::ensure_dir(state_dir)?;
        let key_path = state_dir.join(KEY_FILE);
        let key = match Self::load(&key_path)? {
            Some(key) => key,
            None => {
                let (key, pem) = Self::generate()?;
                if fsutil::publish_exclusive(&key_path, pem.as_bytes(), 0o600)? {
                    tracing::info!(
                        path = %key_path.display(),
                        kid = %key.public.kid_hex(),
                        "generated a new handle signing key"
                    );
                    key
                } else {
                    // Lost the race: the winner's file is complete (it was linked, not written
                    // in place), so it can be read right away.
                    Self::load(&key_path)?.ok_or_else(|| {
                        key_error(&key_path, "vanished right after being created".to_owned())
                    })?
                }
            }
        };
        let pub_path = state_dir.join(PUBLIC_KEY_FILE);
        if let Err(e) = key.export_public(&pub_path) {
            // The export is a convenience for verify-only replicas; a read-only state dir
            // (e.g. a mounted secret) must not stop this process from signing.
            tracing::warn!(path = %pub_path.display(), error = %e, "could not export handle public key");
        }
        Ok(key)
    }

    /// Generates a key pair for an external issuer: the private key into `key_path` (0600,
    /// never overwriting an existing file) and its public key into `pub_path` (0644), which
    /// edges list under `fleet.handle_issuers`.
    ///
    /// The file is PKCS#8 v1 (RFC 8410: the seed only), the form OpenSSL and most libraries
    /// read, so a minter in another language can load it as is.
    pub fn create_issuer_key(key_path: &Path, pub_path: &Path) -> Result<Self, HandleError> {
        let rng = ring::rand::SystemRandom::new();
        let v2 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| HandleError::Random)?;
        // ring writes v2: the v1 header with version 1 and length 0x53, the 32-byte seed, then
        // the public key. Keep the seed under a v1 header.
        let seed = v2
            .as_ref()
            .strip_prefix(PKCS8_V2_PREFIX.as_slice())
            .and_then(|rest| rest.get(..32))
            .ok_or_else(|| key_error(key_path, "unexpected PKCS#8 layout".to_owned()))?;
        let v1 = Zeroizing::new([PKCS8_V1_PREFIX.as_slice(), seed].concat());
        let key = Self::from_pkcs8(&v1, key_path)?;
        let pem = pem::encode(PRIVATE_LABEL, &v1);
        if !fsutil::publish_exclusive(key_path, pem.as_bytes(), 0o600)? {
            return Err(key_error(
                key_path,
                "already exists; not overwriting a signing key".to_owned(),
            ));
        }
        fsutil::write_atomic(pub_path, key.public.to_pem().as_bytes(), 0o644)?;
        Ok(key)
    }

    /// Loads a private key file (PKCS#8 `PRIVATE KEY` PEM), such as an issuer key.
    pub fn load_file(path: &Path) -> Result<Self, HandleError> {
        Self::load(path)?.ok_or_else(|| key_error(path, "does not exist".to_owned()))
    }

    fn load(path: &Path) -> Result<Option<Self>, HandleError> {
        let Some(bytes) = fsutil::read_optional(path)? else {
            return Ok(None);
        };
        let bytes = Zeroizing::new(bytes);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| key_error(path, "not a PEM text file".to_owned()))?;
        fsutil::warn_if_exposed(path, "handle signing key");
        Self::from_pem(text, path).map(Some)
    }

    /// Writes the public key PEM to `path` unless it already holds exactly that.
    fn export_public(&self, path: &Path) -> Result<(), HandleError> {
        let pem = self.public.to_pem();
        if fsutil::read_optional(path)?.as_deref() == Some(pem.as_bytes()) {
            return Ok(());
        }
        fsutil::write_atomic(path, pem.as_bytes(), 0o644)
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `message` (the caller adds domain separation).
    pub(crate) fn sign(&self, message: &[u8]) -> signature::Signature {
        self.pair.sign(message)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid_hex())
            .field("private", &"<redacted>")
            .finish()
    }
}

/// An Ed25519 public key that verifies handles, with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    bytes: [u8; 32],
    kid: [u8; 8],
}

impl VerifyingKey {
    /// Wraps raw public key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut kid = [0u8; 8];
        kid.copy_from_slice(&digest.as_ref()[..8]);
        VerifyingKey { bytes, kid }
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self::from_bytes)
    }

    /// Parses one `PUBLIC KEY` (Ed25519 SPKI) PEM block. `source` only labels errors.
    pub fn from_pem(text: &str, source: &Path) -> Result<Self, HandleError> {
        let der =
            pem::decode_one(text, PUBLIC_LABEL).map_err(|detail| key_error(source, detail))?;
        Self::from_spki(&der, source)
    }

    /// Parses every `PUBLIC KEY` block in `text` (a bundle of current and previous keys);
    /// at least one. `source` only labels errors.
    pub fn from_pem_bundle(text: &str, source: &Path) -> Result<Vec<Self>, HandleError> {
        let blocks = pem::decode_all(text, PUBLIC_LABEL).map_err(|d| key_error(source, d))?;
        if blocks.is_empty() {
            return Err(key_error(source, format!("no {PUBLIC_LABEL} block found")));
        }
        blocks
            .iter()
            .map(|der| Self::from_spki(der, source))
            .collect()
    }

    fn from_spki(der: &[u8], source: &Path) -> Result<Self, HandleError> {
        der.strip_prefix(SPKI_PREFIX.as_slice())
            .and_then(Self::from_slice)
            .ok_or_else(|| key_error(source, "not an Ed25519 public key".to_owned()))
    }

    /// Loads a public key file such as another replica's `handle-key.pub`.
    pub fn load_public(path: &Path) -> Result<Self, HandleError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| HandleError::io("reading", path, e))?;
        Self::from_pem(&text, path)
    }

    /// The key as a `PUBLIC KEY` PEM block (what `handle-key.pub` holds).
    pub fn to_pem(&self) -> String {
        let mut der = Vec::with_capacity(SPKI_PREFIX.len() + 32);
        der.extend_from_slice(&SPKI_PREFIX);
        der.extend_from_slice(&self.bytes);
        pem::encode(PUBLIC_LABEL, &der).to_string()
    }

    /// The raw 32-byte public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key id: first 8 bytes of SHA-256 of the public key.
    pub fn kid(&self) -> [u8; 8] {
        self.kid
    }

    /// The key id as 16 lowercase hex characters.
    pub fn kid_hex(&self) -> String {
        hex(&self.kid)
    }

    /// Whether `signature` is a valid Ed25519 signature of `message` by this key.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid_hex())
            .finish()
    }
}

/// The public keys a verifier trusts, by key id; holding several allows key rotation.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: HashMap<[u8; 8], VerifyingKey>,
}

impl KeyRing {
    /// An empty ring (verifies nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key`; returns the key previously held under the same id, if any.
    pub fn insert(&mut self, key: VerifyingKey) -> Option<VerifyingKey> {
        self.keys.insert(key.kid, key)
    }

    /// Trusts every `PUBLIC KEY` block in `text` (e.g. a bundle of current and previous keys).
    pub fn insert_pem_bundle(&mut self, text: &str, source: &Path) -> Result<usize, HandleError> {
        let keys = VerifyingKey::from_pem_bundle(text, source)?;
        let n = keys.len();
        for key in keys {
            self.insert(key);
        }
        Ok(n)
    }

    /// The key with id `kid`, if trusted.
    pub fn get(&self, kid: &[u8; 8]) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// Stops trusting the key with id `kid`.
    pub fn remove(&mut self, kid: &[u8; 8]) -> Option<VerifyingKey> {
        self.keys.remove(kid)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromIterator<VerifyingKey> for KeyRing {
    fn from_iter<I: IntoIterator<Item = VerifyingKey>>(iter: I) -> Self {
        let mut ring = KeyRing::new();
        for key in iter {
            ring.insert(key);
        }
        ring
    }
}

fn key_error(path: &Path, detail: String) -> HandleError {
    HandleError::Key {
        path: PathBuf::from(path),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let (key, pem) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&pem, Path::new("t")).unwrap();
        assert_eq!(again.verifying_key(), key.verifying_key());
        let public = VerifyingKey::from_pem(&key.verifying_key().to_pem(), Path::new("t")).unwrap();
        assert_eq!(&public, key.verifying_key());
        assert_eq!(public.kid_hex().len(), 16);
    }

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let sig = a.sign(b"msg");
        assert!(a.verifying_key().verify(b"msg", sig.as_ref()));
        assert!(!a.verifying_key().verify(b"msh", sig.as_ref()));
        assert!(!b.verifying_key().verify(b"msg", sig.as_ref()));
    }

    #[test]
    fn openssl_v1_pkcs8_is_accepted() {
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1, no public key inside).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIEpG+WdoYYr6vVvK4BNdqjfeOag9IIwM+5dWOF1xaX/j\n\
                   -----END PRIVATE KEY-----\n";
        assert!(SigningKey::from_pem(pem, Path::new("t")).is_ok());
    }

    #[test]
    fn bundle_and_garbage() {
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let bundle = format!(
            "{}{}",
            a.verifying_key().to_pem(),
            b.verifying_key().to_pem()
        );
        let mut ring = KeyRing::new();
        assert_eq!(ring.insert_pem_bundle(&bundle, Path::new("t")).unwrap(), 2);
        assert!(ring.get(&a.verifying_key().kid()).is_some());
        assert!(ring.insert_pem_bundle("nothing", Path::new("t")).is_err());
        assert!(VerifyingKey::from_pem("junk", Path::new("t")).is_err());
        assert!(SigningKey::from_pem(&a.verifying_key().to_pem(), Path::new("t")).is_err());
    }
}
