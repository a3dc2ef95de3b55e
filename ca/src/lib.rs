//! The egress-edge deployment CA: what lets the proxy "bump" (TLS-intercept) chosen destinations.
//!
//! - [`DeploymentCa::load_or_create`] keeps one CA per deployment in the state dir, generating
//!   it (ECDSA P-256, pathlen 0, optional name constraints) on first start, race-safely.
//! - [`DeploymentCa::from_pem`] accepts a CA brought by the operator or delivered over SDS.
//! - [`mint_leaf`] issues a per-SNI leaf; [`LeafCache`] caches them with single-flight minting.
//! - `install-ca.sh` (next to this crate's manifest) installs the CA into a guest's trust store.
//!
//! This crate holds no policy (which hosts are bumped) and does no networking or TLS serving.

mod ca;
mod cache;
mod constraints;
mod error;
mod generate;
mod keyfmt;
mod leaf;
mod store;

pub use ca::DeploymentCa;
pub use cache::{
    DEFAULT_LEAF_CACHE_CAPACITY, LeafCache, LeafCacheStats, LeafCacheStatsSnapshot, cache_ttl_for,
};
pub use constraints::PermittedName;
pub use error::CaError;
pub use generate::{CaOptions, DEFAULT_CA_VALIDITY};
pub use leaf::{LEAF_BACKDATE, mint_leaf, normalize_name};
pub use store::{CA_CERT_FILE, CA_KEY_FILE};
