//! Leaf minting: chains to the CA under a real verifier, one fresh key per leaf, sane validity,
//! exact SAN, refusal of wildcards and malformed names.

use std::time::Duration;

use egress_ca::{CaError, CaOptions, DeploymentCa, mint_leaf};
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use crate::common::{parse, verifier_for, verify_leaf};

const TTL: Duration = Duration::from_secs(24 * 3600);

fn ca() -> DeploymentCa {
    DeploymentCa::generate(&CaOptions::new("leaf-tests")).unwrap()
}

#[test]
fn leaf_chains_to_the_ca_for_its_name_only() {
    let ca = ca();
    let verifier = verifier_for(&ca.cert_der());
    let leaf = mint_leaf(&ca, "api.example.com", TTL).unwrap();
    assert_eq!(leaf.cert.len(), 2);
    assert_eq!(leaf.cert[1], ca.cert_der());
    verify_leaf(&verifier, &leaf, "api.example.com").unwrap();
    let err = verify_leaf(&verifier, &leaf, "www.example.com").unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // A different CA's root store does not accept it.
    let stranger = verifier_for(&self::ca().cert_der());
    assert!(verify_leaf(&stranger, &leaf, "api.example.com").is_err());
}

#[test]
fn each_leaf_has_its_own_fresh_key() {
    let ca = ca();
    let a = mint_leaf(&ca, "a.example.com", TTL).unwrap();
    let b = mint_leaf(&ca, "a.example.com", TTL).unwrap();
    let (xa, xb, xca) = (parse(&a.cert[0]), parse(&b.cert[0]), parse(&a.cert[1]));
    assert_ne!(xa.public_key().raw, xb.public_key().raw);
    assert_ne!(xa.public_key().raw, xca.public_key().raw);
    assert_ne!(xa.raw_serial(), xb.raw_serial());
}

#[test]
fn leaf_profile_is_a_server_end_entity() {
    let ca = ca();
    let leaf = mint_leaf(&ca, "api.example.com", TTL).unwrap();
    let x = parse(&leaf.cert[0]);

    let now = ASN1Time::now().timestamp();
    let nb = x.validity().not_before.timestamp();
    let na = x.validity().not_after.timestamp();
    assert!(nb < now, "validity must start in the past");
    assert!(
        (now - nb - 300).abs() <= 5,
        "backdated ~5 minutes, got {}s",
        now - nb
    );
    assert!(
        (na - now - TTL.as_secs() as i64).abs() <= 5,
        "ends after the TTL"
    );

    let sans = &x
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1);
    assert!(matches!(sans[0], GeneralName::DNSName("api.example.com")));
    // Explicitly not a CA: a critical BasicConstraints, encoded as the empty SEQUENCE.
    let bc = x.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca && bc.value.path_len_constraint.is_none());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth && eku.other.is_empty());
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert_eq!(
        x.issuer().as_raw(),
        parse(&ca.cert_der()).subject().as_raw()
    );
    x.verify_signature(Some(parse(&ca.cert_der()).public_key()))
        .unwrap();
}

#[test]
fn ip_literals_get_ip_sans() {
    let ca = ca();
    let verifier = verifier_for(&ca.cert_der());
    for ip in ["192.0.2.44", "2001:db8::7"] {
        let leaf = mint_leaf(&ca, ip, TTL).unwrap();
        let x = parse(&leaf.cert[0]);
        let sans = &x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let expected: std::net::IpAddr = ip.parse().unwrap();
        let octets = match expected {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        assert!(matches!(sans.as_slice(), [GeneralName::IPAddress(b)] if *b == octets.as_slice()));
        verify_leaf(&verifier, &leaf, ip).unwrap();
    }
}

#[test]
fn wildcards_and_malformed_names_are_refused() {
    let ca = ca();
    for bad in [
        "*.example.com",
        "*",
        "a.*.com",
        "",
        "Upper.example.com",
        "trailing.dot.",
        "bad name",
        "ex\u{e4}mple.com",
    ] {
        let err = mint_leaf(&ca, bad, TTL).unwrap_err();
        assert!(
            matches!(err, CaError::InvalidLeafName { .. }),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn leaf_never_outlives_the_ca() {
    let mut opts = CaOptions::new("short");
    opts.validity = Duration::from_secs(2 * 3600);
    let ca = DeploymentCa::generate(&opts).unwrap();
    let leaf = mint_leaf(&ca, "x.example.com", TTL).unwrap();
    let x = parse(&leaf.cert[0]);
    assert!(x.validity().not_after.to_datetime() <= ca.not_after());
}
