//! What the proxy tells operators: the access log, Prometheus metrics and log setup.
//!
//! Stages record facts here; nothing in this folder decides, refuses or relays anything.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod rate_limit;
