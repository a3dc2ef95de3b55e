//! Upstream TLS client configuration for re-originated requests.
//!
//! Trust = the system roots plus `upstream.extra_roots` (files) plus any PEM delivered by the
//! secret source; hostname verification is rustls's webpki verifier. There is deliberately no
//! option to disable verification. Client certificates for mTLS credentials are added by the
//! injector, per credential, on top of this.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("upstream.extra_roots: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upstream.extra_roots: {path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("upstream.extra_roots: {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("no trust roots at all: the system store is empty and no extra_roots are configured")]
    NoRoots,
    #[error("TLS client setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the root store once per snapshot.
pub fn root_store(
    extra_roots: &[PathBuf],
    extra_pems: &[(String, String)],
) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    // Unreadable individual system certificates are skipped (distros ship a few odd ones);
    // what matters is that verification is never skipped.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in extra_roots {
        let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        add_pem(&mut roots, &bytes, path)?;
    }
    for (name, pem) in extra_pems {
        add_pem(
            &mut roots,
            pem.as_bytes(),
            &PathBuf::from(format!("sds:{name}")),
        )?;
    }
    if roots.is_empty() {
        return Err(TrustError::NoRoots);
    }
    Ok(roots)
}

fn add_pem(roots: &mut RootCertStore, bytes: &[u8], path: &Path) -> Result<(), TrustError> {
    let certs =
        crate::pem::certs_from(bytes, &path.display().to_string()).map_err(|e| match e {
            crate::pem::PemError::NoCert { .. } => TrustError::Empty {
                path: path.to_path_buf(),
            },
            other => TrustError::Bad {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
    for c in certs {
        roots.add(c).map_err(|e| TrustError::Bad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// A verifying client config with the given ALPN list.
pub fn client_config(
    roots: Arc<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TrustError> {
    let provider = crate::crypto::provider();
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}
