//! Frontends: where guest connections come in and become typed targets.
//!
//! [`listener`] accepts connections and enforces connection-level limits; [`forward_proxy`]
//! turns CONNECT and absolute-form requests into a target and hands it to the rungs. Frontends
//! parse what the guest asked for; they do not decide policy and never dial.

pub mod accept;
pub mod dns;
pub mod forward_proxy;
pub mod listener;
pub mod transparent;
