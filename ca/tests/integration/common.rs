//! Shared helpers: a real rustls/webpki verifier trusting only a given CA, and x509 parsing.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub fn verifier_for(ca: &CertificateDer<'static>) -> Arc<WebPkiServerVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
}

/// Verifies `chain[0]` for `name` with `chain[1..]` as intermediates, the way a client would.
pub fn verify_chain(
    verifier: &WebPkiServerVerifier,
    chain: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), rustls::Error> {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
        .map(|_| ())
}

pub fn verify_leaf(
    verifier: &WebPkiServerVerifier,
    leaf: &CertifiedKey,
    name: &str,
) -> Result<(), rustls::Error> {
    verify_chain(verifier, &leaf.cert, name)
}

pub fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}
