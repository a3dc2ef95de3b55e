//! Test PKI for the local upstream: a throwaway CA and one leaf valid for every name the
//! benchmark dials (`upstream.test` for direct and tunnel, `bump.test`, `inject.test` and
//! `*.cold.test` for the bump's verified re-origination, and `127.0.0.1`).

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The upstream's CA (what clients and the proxy trust) and its server leaf.
pub struct UpstreamPki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub leaf_chain: Vec<CertificateDer<'static>>,
    pub leaf_key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for UpstreamPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPki").finish_non_exhaustive()
    }
}

/// Names the upstream leaf carries (`*.cold.test`: the cold-SNI rows' never-used names).
pub const UPSTREAM_NAMES: [&str; 5] = [
    "upstream.test",
    "bump.test",
    "inject.test",
    "*.cold.test",
    "127.0.0.1",
];

pub fn generate() -> Result<UpstreamPki> {
    let ca_key = KeyPair::generate().context("upstream CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "egress-bench upstream CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the upstream CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().context("upstream leaf key")?;
    let mut leaf_params = CertificateParams::new(
        UPSTREAM_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
    )?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "upstream.test");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .context("signing the upstream leaf")?;

    Ok(UpstreamPki {
        ca_der: ca_cert.der().clone(),
        ca_pem: ca_cert.pem(),
        leaf_chain: vec![leaf.der().clone(), ca_cert.der().clone()],
        leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    })
}
