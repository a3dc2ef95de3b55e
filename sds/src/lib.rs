//! Envoy SDS v3 for egress-edge: the wire types, the secret model shared with the proxy, the
//! secrets-file source, a subscribing SDS client and the standalone `sds serve` server.
//!
//! It does not decide which request gets which credential (that is the proxy's job) and it
//! never logs, formats or returns a secret value: values live in [`secret::SecretBytes`].

pub mod client;
pub mod file;
pub mod file_source;
pub mod proto;
pub mod secret;
pub mod server;
pub mod store;

mod error;
mod pem;

pub use error::{SdsError, SecretError, Unavailable};
pub use secret::{Secret, SecretBytes, Versioned};
pub use store::SecretStore;
