//! PEM decoding and the ring crypto provider, shared by secret validation and both TLS ends.
//!
//! It does not decide trust (callers build verifiers) and its errors are fixed phrases: a PEM
//! parser's own messages can quote a line or a byte of the input, which may be key material.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crate's one crypto provider. Always passed explicitly so that a process-wide default
/// (possibly another backend) never decides how SDS traffic is protected.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All `CERTIFICATE` blocks of a PEM text; at least one is required.
pub(crate) fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "is not valid PEM".to_string())?;
    if certs.is_empty() {
        return Err("contains no PEM CERTIFICATE block".to_string());
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM text.
pub(crate) fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "contains no unencrypted PEM private key (PKCS#8, RSA or EC)".to_string()
        }
        _ => "is not valid PEM".to_string(),
    })
}

/// Checks that a chain and key form a usable TLS identity: both parse, the key is supported by
/// the provider, and it matches the leaf certificate.
pub(crate) fn check_identity(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(), (&'static str, String)> {
    let chain = certs(chain_pem).map_err(|r| ("certificate_chain", r))?;
    let key = private_key(key_pem).map_err(|r| ("private_key", r))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider())
        .map(|_| ())
        .map_err(|e| identity_reason(&e))
}

fn identity_reason(e: &rustls::Error) -> (&'static str, String) {
    match e {
        rustls::Error::InconsistentKeys(_) => (
            "private_key",
            "does not match the leaf certificate of certificate_chain".to_string(),
        ),
        rustls::Error::InvalidCertificate(_) => (
            "certificate_chain",
            "has a leaf certificate that does not parse".to_string(),
        ),
        _ => ("private_key", "is not a supported private key".to_string()),
    }
}

/// Parses trust anchors; every certificate must be usable as one.
pub(crate) fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(pem)? {
        store
            .add(cert)
            .map_err(|_| "contains a certificate that does not parse".to_string())?;
    }
    Ok(store)
}
