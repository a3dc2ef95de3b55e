//! egress-edge: the egress proxy for sandboxes.
//!
//! The data path reads one way; each stage is a folder that says what it does and does not do:
//!
//! | stage | module | does |
//! | --- | --- | --- |
//! | frontend | [`frontend`] | accepts guest connections (explicit and transparent listeners, guest resolver); CONNECT, absolute-form, SNI and Host become a typed target |
//! | policy | [`policy`] | pure decision: rung + rule for (sandbox, host, port, scheme), then each request's method and path |
//! | dial | [`net`] | resolve, vet every address against the deny set, connect to the vetted one |
//! | rung | [`rung`] | pass-through (SNI check, splice) or bump (guest TLS terminated) |
//! | credential | [`credential`] | handles swapped for credentials, OAuth2, mTLS client certificates |
//! | upstream | [`upstream`] | verified TLS, pooled clients, request relay, byte splicing |
//!
//! Around them: [`config`] (raw YAML → typed config), [`refusal`] (the one error-to-response
//! mapping), [`observe`] (access log, metrics, logging), [`state`] (snapshot, kill switch,
//! reload), [`admin`] (admin listener and API), [`app`] (assembly and lifecycle), [`jail`] (a confined
//! process and the nftables ruleset for sandbox networks), [`cli`].

pub mod admin;
pub mod app;
mod body;
pub mod cli;
pub mod config;
mod context;
pub mod control;
mod credential;
mod crypto;
pub mod fleet;
mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod jail;
pub mod net;
pub mod observe;
mod pem;
pub mod policy;
mod refusal;
mod rung;
pub mod state;
mod upstream;

pub use app::{App, BuildOptions, Listeners};
