//! Shared test support, split by subject and re-exported flat so tests `use crate::common::*`.

pub mod admin;
pub mod clients;
pub mod fake_api;
pub mod harness;
pub mod netns;
pub mod openmetrics;
pub mod pki;
pub mod upstream;

pub use admin::*;
pub use clients::*;
pub use fake_api::*;
pub use harness::*;
pub use netns::*;
pub use openmetrics::*;
pub use pki::*;
pub use upstream::*;
