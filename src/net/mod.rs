//! Names, addresses and the one place that dials.
//!
//! [`host`] normalizes guest-supplied hosts, [`netguard`] holds the address deny set, and
//! [`dial`] resolves, vets every address against it and connects to exactly the vetted
//! address. Nothing here knows about rungs, HTTP or TLS.

pub mod dial;
pub mod host;
pub mod netguard;
