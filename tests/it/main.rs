//! The integration tests, built as one test binary (`it`) so the shared harness in `common`
//! is compiled once. Each module covers one subject; run one with `cargo test --test it
//! <module>::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admin_auth;
mod agreement;
mod bump;
mod cli;
mod deadlines;
mod dns;
mod fleet;
mod fleet_interop;
mod foundation;
mod fuzz_replay;
mod hiding;
mod inject;
mod issuers;
mod jail;
mod kill_switch;
mod layering;
mod limits;
mod metrics;
mod reload;
mod sandboxes;
mod sdk;
mod soak;
mod transparent;
mod transparent_sandboxes;
