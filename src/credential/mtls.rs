//! Upstream clients that present a credential's client certificate (mTLS credentials).
//!
//! Built from a `tls_certificate` secret on top of the snapshot's trust roots, over the same
//! vetted dialer as every other upstream client. Used only for requests that carried a valid
//! handle for that credential; caching per secret version is the injector's.

use crate::state::Snapshot;
use crate::upstream::client::{HttpClient, tls_client};

/// Why a client certificate secret cannot be used. Fixed phrases: never the key material.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("certificate chain: {0}")]
    Pem(#[from] crate::pem::PemError),
    #[error("no upstream trust roots")]
    NoRoots,
    #[error("client certificate rejected by the TLS stack")]
    Rejected,
}

/// A verified-TLS client presenting `chain_pem` / `key_pem`.
pub fn client(snap: &Snapshot, chain_pem: &str, key_pem: &[u8]) -> Result<HttpClient, MtlsError> {
    let certs = crate::pem::certs_from(chain_pem.as_bytes(), "certificate")?;
    let key = crate::pem::key_from(key_pem, "private key")?;
    let Some(roots) = snap.roots.clone() else {
        return Err(MtlsError::NoRoots);
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .map_err(|_| MtlsError::Rejected)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|_| MtlsError::Rejected)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls_client(&snap.config, &snap.dialer, &snap.pool, cfg))
}
