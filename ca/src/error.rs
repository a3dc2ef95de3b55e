//! The error type of this crate.
//!
//! Every variant that concerns a file or a CA source names it (`source`/`path`), so an operator
//! reading one line of log knows which file to look at. This module does not log anything itself.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong while loading, creating or using the deployment CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was being attempted ("reading", "creating directory", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The certificate text could not be parsed.
    #[error("CA certificate from {source_name}: {detail}")]
    BadCertificate {
        /// Where the certificate came from (a path, or a label such as `sds:bump-ca`).
        source_name: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The private key text could not be parsed or is of an unsupported kind.
    #[error("CA private key from {source_name}: {detail}")]
    BadKey {
        /// Where the key came from.
        source_name: String,
        /// What is wrong with it (never the key material).
        detail: String,
    },

    /// The key does not belong to the certificate.
    #[error(
        "CA private key from {source_name} does not match the certificate's public key; \
         supply the key that was used to create that certificate"
    )]
    KeyMismatch {
        /// Where the pair came from.
        source_name: String,
    },

    /// The certificate may not sign other certificates.
    #[error("certificate from {source_name} is not a CA: {detail}")]
    NotCa {
        /// Where the certificate came from.
        source_name: String,
        /// Which requirement is missing (basicConstraints, keyCertSign).
        detail: String,
    },

    /// The certificate is outside its validity period.
    #[error("CA certificate from {source_name} is not valid now: {detail}")]
    NotValidNow {
        /// Where the certificate came from.
        source_name: String,
        /// Expired or not yet valid, with the dates.
        detail: String,
    },

    /// The existing, name-constrained CA does not cover a name the configuration needs.
    #[error(
        "the CA in {dir} is name-constrained and does not cover {name}; adding a bump host \
         needs a new CA: remove {cert} and {key} so a new one is generated on the next start \
         (every guest must then trust the new CA), or supply your own with ca.cert/ca.key",
        dir = .path.display(),
        cert = .path.join(crate::store::CA_CERT_FILE).display(),
        key = .path.join(crate::store::CA_KEY_FILE).display()
    )]
    ConstraintsDoNotCover {
        /// The name (host or CIDR) that is not covered.
        name: String,
        /// The state directory holding the CA.
        path: PathBuf,
    },

    /// A name constraint given in the options is malformed.
    #[error("invalid CA name constraint {value:?}: {detail}")]
    BadConstraint {
        /// The offending text.
        value: String,
        /// Why it was refused.
        detail: String,
    },

    /// A leaf was requested for a name that is not a valid DNS name or IP literal.
    #[error("cannot mint a leaf certificate for {name:?}: {detail}")]
    InvalidLeafName {
        /// The requested name.
        name: String,
        /// Why it was refused.
        detail: String,
    },

    /// A leaf was requested for a name outside the CA's name constraints.
    #[error(
        "cannot mint a leaf certificate for {name}: the CA ({source_name}) is name-constrained \
         and does not permit it; clients would reject the certificate"
    )]
    NameNotPermitted {
        /// The requested name.
        name: String,
        /// The CA source.
        source_name: String,
    },

    /// The key file exists but the certificate never appeared (an interrupted first start).
    #[error(
        "{} exists but {} does not (an interrupted first start?); remove {} to generate a new CA",
        .key.display(), .cert.display(), .key.display()
    )]
    IncompleteCa {
        /// The key file found.
        key: PathBuf,
        /// The certificate file missing.
        cert: PathBuf,
    },

    /// The certificate file exists but the key file does not.
    #[error(
        "{} exists but its private key {} does not; restore the key or remove {} to generate a new CA",
        .cert.display(), .key.display(), .cert.display()
    )]
    MissingKey {
        /// The certificate file found.
        cert: PathBuf,
        /// The key file missing.
        key: PathBuf,
    },

    /// Certificate generation or signing failed inside rcgen/ring.
    #[error("{context}: {source}")]
    Signing {
        /// What was being produced.
        context: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// rustls refused the freshly minted key or chain.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },

    /// A failure shared by several waiters of one cache fill (the leaf cache coalesces requests).
    #[error(transparent)]
    Shared(Arc<CaError>),
}

impl CaError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CaError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_cert(source_name: &str, detail: impl Into<String>) -> Self {
        CaError::BadCertificate {
            source_name: source_name.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn bad_key(source_name: &str, detail: impl Into<String>) -> Self {
        CaError::BadKey {
            source_name: source_name.to_owned(),
            detail: detail.into(),
        }
    }

    /// The error behind any [`CaError::Shared`] wrappers, for matching on the variant.
    pub fn root(&self) -> &CaError {
        match self {
            CaError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}
