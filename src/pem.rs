//! Reading PEM certificates and private keys, from files or from bytes delivered by the secret
//! source.
//!
//! Errors are fixed phrases plus the file name: a PEM parser's own message can quote the
//! input, and the input may be key material, so it is never echoed.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM material could not be used. Never carries any of the material itself.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: malformed PEM certificate block")]
    MalformedCert { origin: String },
    #[error("{origin}: no CERTIFICATE block")]
    NoCert { origin: String },
    #[error("{origin}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    NoKey { origin: String },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in `bytes`; at least one. `origin` names the source in errors.
pub fn certs_from(bytes: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| PemError::MalformedCert {
            origin: origin.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCert {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in `bytes`. `origin` names the source in errors.
pub fn key_from(bytes: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|_| PemError::NoKey {
        origin: origin.to_owned(),
    })
}

pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certs_from(&read(path)?, &path.display().to_string())
}

pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    key_from(&read(path)?, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_quote_the_input() {
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA!!\n-----END PRIVATE KEY-----\n";
        let e = key_from(secret.as_bytes(), "sds:k")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let e = certs_from(
            b"-----BEGIN CERTIFICATE-----\nc2VjcmV0!!\n-----END CERTIFICATE-----\n",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(matches!(certs_from(b"", "f"), Err(PemError::NoCert { .. })));
    }
}
