//! Minting of per-SNI leaf certificates signed by the deployment CA.
//!
//! Each leaf gets a fresh ECDSA P-256 key, exactly one SAN, serverAuth only, and a short
//! validity; the result is a rustls [`CertifiedKey`] ready for a TLS acceptor. This module does
//! not cache (see `cache.rs`) and does not decide which names deserve a leaf (that is policy);
//! it only refuses names no client would or should accept: wildcards, malformed names, and
//! names outside the CA's name constraints.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::ca::DeploymentCa;
use crate::error::CaError;

/// Backdating absorbs guests whose clock runs a little behind the proxy's.
pub const LEAF_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// X.520 upper bound for commonName; longer DNS names are carried in the SAN only.
const CN_MAX: usize = 64;

/// id-ce-basicConstraints (2.5.29.19).
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// The DER of an end-entity `BasicConstraints`: `SEQUENCE {}`. `cA` is `BOOLEAN DEFAULT FALSE`,
/// and DER forbids encoding a DEFAULT, so "not a CA" is the empty SEQUENCE. (rcgen's
/// `IsCa::ExplicitNoCa` encodes `cA FALSE`, which strict parsers such as Python
/// `cryptography` >= 43 reject.)
const END_ENTITY_BASIC_CONSTRAINTS: [u8; 2] = [0x30, 0x00];

/// A critical `BasicConstraints` saying "not a CA", as the public WebPKI's leaves carry it.
fn end_entity_basic_constraints() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(
        OID_BASIC_CONSTRAINTS,
        END_ENTITY_BASIC_CONSTRAINTS.to_vec(),
    );
    ext.set_criticality(true);
    ext
}

/// Lowercases, strips one trailing dot and IPv6 brackets: the form [`mint_leaf`] expects and
/// the leaf cache keys on, so `API.example.com.` and `api.example.com` share one leaf.
pub fn normalize_name(name: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// Mints a leaf for `name` (normalized DNS A-label without trailing dot, or an IP literal),
/// valid from five minutes ago until `ttl` from now (never past the CA's own expiry).
///
/// The chain of the returned key is `[leaf, CA, any issuers the CA was brought with]`.
pub fn mint_leaf(ca: &DeploymentCa, name: &str, ttl: Duration) -> Result<CertifiedKey, CaError> {
    let san = leaf_san(ca, name)?;
    let now = OffsetDateTime::now_utc();
    let not_after = std::cmp::min(now + ttl, ca.not_after());
    if not_after <= now {
        return Err(CaError::NotValidNow {
            source_name: ca.source().to_owned(),
            detail: format!("it expired at {}; no leaf can be minted", ca.not_after()),
        });
    }

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Signing {
            context: format!("generating a leaf key for {name}"),
            source,
        })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // Only the SAN matters to modern clients; the CN helps people reading the certificate.
    if matches!(san, SanType::DnsName(_)) && name.len() <= CN_MAX {
        dn.push(DnType::CommonName, name);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = vec![san];
    // Not IsCa::ExplicitNoCa: that encodes the DEFAULT `cA FALSE` (invalid DER). NoCa writes
    // no BasicConstraints (nor a subjectKeyIdentifier, which CA/B discourages on leaves), so the
    // DER-correct empty one is added by hand.
    params.is_ca = IsCa::NoCa;
    params.custom_extensions = vec![end_entity_basic_constraints()];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = std::cmp::max(now - LEAF_BACKDATE, ca.not_before());
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;

    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(|source| CaError::Signing {
            context: format!("signing the leaf for {name}"),
            source,
        })?;

    let pkcs8 = Zeroizing::new(key.serialize_der());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
    let signing_key =
        rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|source| CaError::Rustls {
            context: format!("loading the leaf key for {name}"),
            source,
        })?;
    let mut chain = Vec::with_capacity(3);
    chain.push(cert.der().clone());
    chain.extend(ca.chain().cloned());
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Validates `name` and returns its SAN; the checks cheap enough to run before any caching.
pub(crate) fn leaf_san(ca: &DeploymentCa, name: &str) -> Result<SanType, CaError> {
    let invalid = |detail: &str| CaError::InvalidLeafName {
        name: name.to_owned(),
        detail: detail.to_owned(),
    };
    if name.contains('*') {
        return Err(invalid(
            "wildcard leaves are never minted; each SNI gets its own certificate",
        ));
    }
    let san = match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => {
            if name != normalize_name(name) {
                return Err(invalid(
                    "not normalized (lowercase, no trailing dot, no brackets)",
                ));
            }
            if rustls_pki_types::DnsName::try_from(name).is_err() {
                return Err(invalid("not a valid DNS name or IP address"));
            }
            let ia5 = name
                .to_owned()
                .try_into()
                .map_err(|_| invalid("not an ASCII (A-label) DNS name"))?;
            SanType::DnsName(ia5)
        }
    };
    if !ca.covers(name) {
        return Err(CaError::NameNotPermitted {
            name: name.to_owned(),
            source_name: ca.source().to_owned(),
        });
    }
    Ok(san)
}

/// 16 random bytes with the top bit clear, so the DER INTEGER stays positive and ≤ 20 bytes.
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing {
            context: "drawing a random serial number".into(),
            source: rcgen::Error::RingUnspecified,
        })?;
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped in encoding; keep the length stable.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Signs a throwaway certificate and checks that it names the CA's subject byte-for-byte and
/// verifies under the CA's key. rcgen re-encodes the issuer name from the parsed subject; for
/// an unusual brought CA a lossy re-encoding would yield leaves that silently fail to chain, so
/// that is caught here, at load time, with the CA's source in the message.
pub(crate) fn probe(ca: &DeploymentCa) -> Result<(), CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Signing {
            context: "generating a probe key".into(),
            source,
        })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let probe = params
        .signed_by(&key, ca.issuer())
        .map_err(|source| CaError::Signing {
            context: format!(
                "signing a probe certificate with the CA from {}",
                ca.source()
            ),
            source,
        })?;
    let cert_der = ca.cert_der();
    let broken = |detail: String| CaError::bad_cert(ca.source(), detail);
    let (_, ca_x509) = X509Certificate::from_der(&cert_der)
        .map_err(|e| broken(format!("not a valid X.509 certificate: {e}")))?;
    let (_, leaf) = X509Certificate::from_der(probe.der())
        .map_err(|e| broken(format!("probe certificate unreadable: {e}")))?;
    if leaf.issuer().as_raw() != ca_x509.subject().as_raw() {
        return Err(broken(
            "its subject name cannot be reproduced exactly in issued certificates, so leaves \
             would not chain to it; re-issue the CA with a plain subject (CN, O)"
                .into(),
        ));
    }
    leaf.verify_signature(Some(ca_x509.public_key()))
        .map_err(|e| {
            broken(format!(
                "certificates signed with this key do not verify: {e}"
            ))
        })
}
