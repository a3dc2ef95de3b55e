//! Error types of the crate. Messages name secrets, keys, paths and fields, never a value:
//! every constructor takes only non-secret context.

use std::path::PathBuf;
use std::time::Duration;

/// Why a secret (from a file or from the wire) is unusable. Never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the resource sets no secret type")]
    NoType,
    #[error("secret type {0} is not supported by egress-edge")]
    Unsupported(&'static str),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error(
        "{field} is a {kind} data source, which names a path or variable on the server: \
         send the contents inline (inline_bytes or inline_string)"
    )]
    NotInline { field: String, kind: &'static str },
    #[error("{0} is empty")]
    Empty(String),
    #[error("{field} {reason}")]
    Invalid { field: String, reason: String },
    #[error("resource has type {0}, expected an envoy.extensions.transport_sockets.tls.v3.Secret")]
    WrongType(String),
    #[error("resource does not decode as a Secret: {0}")]
    Decode(String),
}

/// All errors surfaced by this crate's public functions.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    /// The secrets file is unreadable or invalid. `message` is located (`secrets.NAME.KEY: ...`).
    #[error("{}: {message}", path.display())]
    SecretsFile { path: PathBuf, message: String },
    #[error("secret {name}: {source}")]
    InvalidSecret {
        name: String,
        #[source]
        source: SecretError,
    },
    /// A configuration mistake (partial TLS set, bad listen address, ...).
    #[error("{0}")]
    Config(String),
    #[error("invalid SDS target {target:?}: {reason}")]
    Target { target: String, reason: String },
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A referenced secret was not delivered within the wait timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name} is not available (waited {waited:?})")]
pub struct Unavailable {
    pub name: String,
    pub waited: Duration,
}
