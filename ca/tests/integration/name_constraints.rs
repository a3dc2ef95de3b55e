//! Name-constrained CAs: the extension is written as asked, coverage is checked on restart,
//! and — the point of it all — verifying clients reject leaves outside the constraints even
//! when they are signed with the CA key.

use std::net::IpAddr;

use egress_ca::{
    CA_CERT_FILE, CA_KEY_FILE, CaError, CaOptions, DeploymentCa, PermittedName, mint_leaf,
};
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use x509_parser::extensions::GeneralName;

use crate::common::{parse, verifier_for, verify_chain, verify_leaf};

fn names(list: &[&str]) -> Vec<PermittedName> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn opts(list: &[&str]) -> CaOptions {
    CaOptions::new("nc").with_permitted(names(list))
}

#[test]
fn constraints_are_written_when_requested() {
    let tmp = tempfile::tempdir().unwrap();
    let ca =
        DeploymentCa::load_or_create(tmp.path(), &opts(&["allowed.test", "10.0.0.0/8"])).unwrap();
    let der = ca.cert_der();
    let x = parse(&der);
    let nc = x
        .name_constraints()
        .unwrap()
        .expect("nameConstraints present")
        .value;
    let permitted: Vec<String> = nc
        .permitted_subtrees
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| match &s.base {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(b) => format!("ip:{b:?}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    assert_eq!(
        permitted,
        ["dns:allowed.test", "ip:[10, 0, 0, 0, 255, 0, 0, 0]"]
    );
    // Both name types are listed, so nothing needs excluding.
    assert!(nc.excluded_subtrees.is_none());
    assert_eq!(
        ca.permitted_names().unwrap(),
        names(&["allowed.test", "10.0.0.0/8"]).as_slice()
    );

    assert!(ca.covers("allowed.test") && ca.covers("api.allowed.test"));
    assert!(!ca.covers("other.test") && !ca.covers("notallowed.test"));
    assert!(ca.covers("10.1.2.3") && !ca.covers("192.0.2.1"));
}

#[test]
fn unconstrained_when_not_requested() {
    let ca = DeploymentCa::generate(&CaOptions::new("nc")).unwrap();
    assert!(parse(&ca.cert_der()).name_constraints().unwrap().is_none());
    assert!(ca.permitted_names().is_none());
    assert!(ca.covers("anything.example") && ca.covers("192.0.2.1"));
}

#[test]
fn existing_constrained_ca_must_cover_new_names() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DeploymentCa::load_or_create(tmp.path(), &opts(&["allowed.test"])).unwrap();

    // Narrower requests are covered: same CA comes back.
    let again =
        DeploymentCa::load_or_create(tmp.path(), &opts(&["api.allowed.test", "*.allowed.test"]))
            .unwrap();
    assert_eq!(again.fingerprint_sha256(), first.fingerprint_sha256());

    let err = DeploymentCa::load_or_create(tmp.path(), &opts(&["allowed.test", "new-host.test"]))
        .unwrap_err();
    match &err {
        CaError::ConstraintsDoNotCover { name, path } => {
            assert_eq!(name, "new-host.test");
            assert_eq!(path, tmp.path());
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    for needle in [
        CA_CERT_FILE,
        CA_KEY_FILE,
        "ca.cert",
        "new-host.test",
        "new CA",
    ] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }

    // The CA was created DNS-only, so IP ranges are not covered either.
    let err = DeploymentCa::load_or_create(tmp.path(), &opts(&["10.0.0.0/8"])).unwrap_err();
    assert!(
        matches!(err, CaError::ConstraintsDoNotCover { .. }),
        "{err:?}"
    );
}

#[test]
fn existing_unconstrained_ca_covers_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("u")).unwrap();
    let again =
        DeploymentCa::load_or_create(tmp.path(), &opts(&["x.test", "192.0.2.0/24"])).unwrap();
    assert_eq!(first.fingerprint_sha256(), again.fingerprint_sha256());
}

/// Signs a leaf for `san` with the stored CA key directly, bypassing `mint_leaf`'s refusal.
fn forge_leaf(dir: &std::path::Path, san: SanType) -> rustls_pki_types::CertificateDer<'static> {
    let cert_pem = std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    let key_pem = std::fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, KeyPair::from_pem(&key_pem).unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![san];
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let leaf_key = KeyPair::generate().unwrap();
    params.signed_by(&leaf_key, &issuer).unwrap().der().clone()
}

#[test]
fn verifying_client_enforces_the_constraints() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = DeploymentCa::load_or_create(tmp.path(), &opts(&["allowed.test"])).unwrap();
    let verifier = verifier_for(&ca.cert_der());

    let good = mint_leaf(
        &ca,
        "api.allowed.test",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    verify_leaf(&verifier, &good, "api.allowed.test").unwrap();

    let err = mint_leaf(&ca, "other.test", std::time::Duration::from_secs(3600)).unwrap_err();
    assert!(matches!(err, CaError::NameNotPermitted { .. }), "{err:?}");

    // Even a leaf forged with the CA's own key is rejected by the client.
    let forged = forge_leaf(
        tmp.path(),
        SanType::DnsName("other.test".try_into().unwrap()),
    );
    let err = verify_chain(&verifier, &[forged, ca.cert_der()], "other.test").unwrap_err();
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );

    // A DNS-only CA also excludes all IPs, so a forged IP leaf fails too.
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let forged_ip = forge_leaf(tmp.path(), SanType::IpAddress(ip));
    let err = verify_chain(&verifier, &[forged_ip, ca.cert_der()], "192.0.2.10").unwrap_err();
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );

    // Sanity check of the forging helper: a forged leaf inside the subtree does verify.
    let forged_ok = forge_leaf(
        tmp.path(),
        SanType::DnsName("www.allowed.test".try_into().unwrap()),
    );
    verify_chain(&verifier, &[forged_ok, ca.cert_der()], "www.allowed.test").unwrap();
}

#[test]
fn ip_only_ca_excludes_every_dns_name() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = DeploymentCa::load_or_create(tmp.path(), &opts(&["10.0.0.0/8"])).unwrap();
    let verifier = verifier_for(&ca.cert_der());
    assert!(!ca.covers("example.com"));
    let good = mint_leaf(&ca, "10.9.8.7", std::time::Duration::from_secs(3600)).unwrap();
    verify_leaf(&verifier, &good, "10.9.8.7").unwrap();
    let forged = forge_leaf(
        tmp.path(),
        SanType::DnsName("example.com".try_into().unwrap()),
    );
    let err = verify_chain(&verifier, &[forged, ca.cert_der()], "example.com").unwrap_err();
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );
}
