//! Bring-your-own CA: accepted pairs mint verifiable leaves; bad inputs are refused clearly.

use std::time::Duration;

use egress_ca::{CaError, DeploymentCa, PermittedName, mint_leaf};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose,
    NameConstraints, SignatureAlgorithm,
};
use time::OffsetDateTime;

use crate::common::{verifier_for, verify_leaf};

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Corp Proxy CA");
    p.distinguished_name.push(DnType::OrganizationName, "Corp");
    p.distinguished_name.push(DnType::CountryName, "DE");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = OffsetDateTime::now_utc() + time::Duration::days(365);
    p
}

fn pair(params: &CertificateParams, alg: &'static SignatureAlgorithm) -> (String, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn matching_pairs_are_accepted_and_mint_verifiable_leaves() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let (cert, key) = pair(&ca_params(), alg);
        let ca = DeploymentCa::from_pem(&cert, &key, "/etc/corp/ca.pem").unwrap();
        assert_eq!(ca.source(), "/etc/corp/ca.pem");
        assert!(ca.permitted_names().is_none());
        assert!(!format!("{ca:?}").contains(key.lines().nth(1).unwrap()));
        let leaf = mint_leaf(&ca, "svc.corp.example", Duration::from_secs(3600)).unwrap();
        verify_leaf(&verifier_for(&ca.cert_der()), &leaf, "svc.corp.example")
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
    }
}

#[test]
fn brought_constraints_are_parsed() {
    let mut params = ca_params();
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("corp.example".into())],
        excluded_subtrees: vec![],
    });
    let (cert, key) = pair(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    let ca = DeploymentCa::from_pem(&cert, &key, "byo").unwrap();
    assert_eq!(
        ca.permitted_names(),
        Some([PermittedName::Dns("corp.example".into())].as_slice())
    );
    assert!(ca.covers("a.corp.example") && !ca.covers("evil.example"));
    let err = mint_leaf(&ca, "evil.example", Duration::from_secs(60)).unwrap_err();
    assert!(matches!(err, CaError::NameNotPermitted { .. }));
}

#[test]
fn mismatched_key_is_refused() {
    let (cert, _) = pair(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, other_key) = pair(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let err = DeploymentCa::from_pem(&cert, &other_key, "/etc/corp/ca.pem").unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("/etc/corp/ca.pem"));
}

#[test]
fn non_ca_certificates_are_refused() {
    let mut leafish = ca_params();
    leafish.is_ca = IsCa::ExplicitNoCa;
    let mut no_bc = ca_params();
    no_bc.is_ca = IsCa::NoCa;
    let mut no_certsign = ca_params();
    no_certsign.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    for (what, params) in [
        ("CA:FALSE", leafish),
        ("no basicConstraints", no_bc),
        ("no keyCertSign", no_certsign),
    ] {
        let (cert, key) = pair(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
        let err = DeploymentCa::from_pem(&cert, &key, "byo.pem").unwrap_err();
        assert!(matches!(err, CaError::NotCa { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains("byo.pem"));
    }
}

#[test]
fn expired_ca_is_refused() {
    let mut params = ca_params();
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let (cert, key) = pair(&params, &rcgen::PKCS_ECDSA_P256_SHA256);
    let err = DeploymentCa::from_pem(&cert, &key, "old.pem").unwrap_err();
    assert!(matches!(err, CaError::NotValidNow { .. }), "{err:?}");
    assert!(err.to_string().contains("expired"));
}

#[test]
fn garbage_is_refused() {
    let (cert, key) = pair(&ca_params(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let err = DeploymentCa::from_pem("hello", &key, "c.pem").unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { .. }), "{err:?}");
    let bad_body = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
    let err = DeploymentCa::from_pem(bad_body, &key, "c.pem").unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { .. }), "{err:?}");
    let err = DeploymentCa::from_pem(&cert, "not a key", "k.pem").unwrap_err();
    assert!(matches!(err, CaError::BadKey { .. }), "{err:?}");
    assert!(err.to_string().contains("k.pem"));
    // Key and cert swapped is a classic operator slip.
    let err = DeploymentCa::from_pem(&key, &cert, "swapped").unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { .. }), "{err:?}");
}
