//! Everything on the upstream side of the proxy: verified TLS client configuration, the pooled
//! connector that dials through the vetted dialer (and caps connections per host), the request
//! relay, byte splicing for tunnels and upgrades, hop-by-hop header handling, body metering,
//! and cutting off an upload the upstream answered early.
//!
//! Nothing here decides policy or touches credentials; callers hand over requests that are
//! already admitted and rewritten.

pub mod budget;
pub mod client;
pub mod connector;
pub mod cut;
pub mod hop;
pub mod metered;
pub mod relay;
pub mod tls;
pub mod tunnel;
