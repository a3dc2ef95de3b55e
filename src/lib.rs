//! egress-edge: the egress proxy for sandboxes.
//!
//! Pipeline stages, one module each (a connection flows top to bottom):
//!
//! | stage | module | does |
//! | --- | --- | --- |
//! | listener | [`listener`] | accepts guest connections, limits, drains on shutdown |
//! | request | [`proxy`] | CONNECT / absolute-form dispatch, the per-request ladder |
//! | policy | [`policy`] | pure decision: rung + rule for (host, port, scheme) |
//! | upstream dial | [`dial`] | resolve, vet every address ([`netguard`]), connect |
//! | pass-through | [`sni`], [`tunnel`] | ClientHello SNI check, byte splicing |
//! | bump | [`bump`] | guest TLS termination, per-request host checks |
//! | inject | [`inject`] | handles swapped for credentials |
//! | re-origination | [`forward`], [`upstream`] | pooled, verified upstream requests |
//!
//! Around them: [`config`] (raw → typed), [`host`] (normalization), [`refusal`] (the one
//! error-to-response mapping), [`access_log`], [`metrics`], [`admin`] + [`api`], [`app`]
//! (assembly and lifecycle), [`state`] (shared snapshot, kill switch).

pub mod access_log;
pub mod admin;
pub mod api;
pub mod app;
pub mod bump;
pub mod cli;
pub mod config;
pub mod dial;
pub mod forward;
pub mod handles_cli;
pub mod hop;
pub mod host;
pub mod inject;
pub mod listener;
pub mod logging;
pub mod metered;
pub mod metrics;
pub mod netguard;
pub mod oauth;
pub mod pem;
pub mod policy;
pub mod proxy;
pub mod refusal;
pub mod reload;
pub mod sni;
pub mod state;
pub mod tunnel;
pub mod upstream;

pub use app::{App, BuildOptions, Listeners};
