//! The one rustls crypto provider of the process (ring), built in one place so every TLS
//! server and client config agrees on it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The process-wide crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
