//! The error type of this crate and its mapping to the contract's refusal codes.
//!
//! Messages are written so they can be shown to an operator or a guest: they name what was
//! refused and why, but never contain a whole handle, key material or a secret. This module
//! does not log and does not build HTTP responses (the proxy does, using [`HandleError::code`]).

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while minting, verifying or revoking handles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The token is malformed, not signed by a trusted key, or otherwise unacceptable.
    /// The reason is a fixed phrase so it can never echo attacker-controlled token text.
    #[error("handle is invalid: {0}")]
    Invalid(&'static str),

    /// The token was valid but its expiry has passed.
    #[error("handle has expired; mint a new one")]
    Expired,

    /// The token's id or session has been revoked.
    #[error("handle has been revoked")]
    Revoked,

    /// The token is genuine but does not cover this credential, host, method or path.
    #[error("handle is out of scope: {0}")]
    OutOfScope(String),

    /// A mint or revoke request was refused because of its contents.
    #[error("request refused: {0}")]
    BadRequest(String),

    /// A mint request asked for a longer lifetime than this authority allows.
    #[error(
        "requested ttl {} exceeds the maximum of {}; request a shorter ttl",
        humantime::format_duration(*.requested),
        humantime::format_duration(*.max)
    )]
    TtlTooLong {
        /// What was asked for.
        requested: Duration,
        /// The configured maximum.
        max: Duration,
    },

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

    /// A key file exists but cannot be used.
    #[error("handle key {}: {detail}", .path.display())]
    Key {
        /// The key file (or a label such as `<memory>`).
        path: PathBuf,
        /// What is wrong with it (never the key material).
        detail: String,
    },

    /// The revocation list on disk cannot be parsed; refusing to run without it fails closed.
    #[error("revocation list {}: {detail}", .path.display())]
    RevocationFile {
        /// The revocation file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// The operating system's random number generator failed.
    #[error("system random number generator unavailable")]
    Random,
}

impl HandleError {
    /// The contract's machine-readable code for this error (`x-egress-edge-error`).
    ///
    /// Verification failures map to `handle_invalid`, `handle_expired`, `handle_revoked` and
    /// `handle_out_of_scope`; a refused mint/revoke request is `bad_request`; everything else
    /// (files, keys, randomness) is `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            HandleError::Invalid(_) => "handle_invalid",
            HandleError::Expired => "handle_expired",
            HandleError::Revoked => "handle_revoked",
            HandleError::OutOfScope(_) => "handle_out_of_scope",
            HandleError::BadRequest(_) | HandleError::TtlTooLong { .. } => "bad_request",
            HandleError::Io { .. }
            | HandleError::Key { .. }
            | HandleError::RevocationFile { .. }
            | HandleError::Random => "internal",
        }
    }

    /// True for errors caused by the presented handle (the proxy answers 403 to these).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            HandleError::Invalid(_)
                | HandleError::Expired
                | HandleError::Revoked
                | HandleError::OutOfScope(_)
        )
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        HandleError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
