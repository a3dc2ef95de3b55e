//! [`DeploymentCa`]: a validated CA certificate plus its signing key, ready to mint leaves.
//!
//! Every CA, whether just generated, reloaded from the state dir, brought by the operator or
//! delivered over SDS, is built by [`DeploymentCa::from_pem`], which checks that the pair is
//! usable before anything is served with it. This module does not touch the filesystem (see
//! `store.rs`) and does not mint leaves (see `leaf.rs`).

use std::fmt;

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::constraints::{ConstraintSet, PermittedName};
use crate::error::CaError;
use crate::generate::{self, CaOptions};
use crate::keyfmt;

/// The deployment CA. Cheap to share behind an `Arc`; holds the private key, which
/// never appears in `Debug` output.
pub struct DeploymentCa {
    source: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// Further certificates that followed the CA in a brought PEM (its own issuers), served
    /// after it so guests that trust only the root can still build the chain.
    extra_chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    constraints: Option<ConstraintSet>,
    fingerprint: String,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl DeploymentCa {
    /// Generates a new CA in memory (nothing is written; see [`DeploymentCa::load_or_create`]).
    pub fn generate(opts: &CaOptions) -> Result<DeploymentCa, CaError> {
        let pems = generate::generate(opts)?;
        DeploymentCa::from_pem(&pems.cert_pem, &pems.key_pem, "newly generated CA")
    }

    /// Builds a CA from PEM texts: the CA certificate (optionally followed by its issuers) and
    /// its private key (PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, RSA or Ed25519).
    ///
    /// `source` labels the origin in error messages (a path, or e.g. `sds:bump-ca`).
    /// Refuses unparsable input, a key that does not match, a certificate that is not a CA, or
    /// one outside its validity period.
    pub fn from_pem(cert_pem: &str, key_pem: &str, source: &str) -> Result<DeploymentCa, CaError> {
        let mut ders = Vec::new();
        for item in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            ders.push(item.map_err(|e| CaError::bad_cert(source, format!("unreadable PEM: {e}")))?);
        }
        let mut ders = ders.into_iter();
        let Some(cert_der) = ders.next() else {
            return Err(CaError::bad_cert(source, "no PEM CERTIFICATE block found"));
        };
        let extra_chain: Vec<_> = ders.collect();

        let (_, x509) = X509Certificate::from_der(&cert_der).map_err(|e| {
            CaError::bad_cert(source, format!("not a valid X.509 certificate: {e}"))
        })?;
        check_is_ca(&x509, source)?;
        let (not_before, not_after) = check_validity(&x509, source)?;

        let key = keyfmt::key_pair_from_pem(key_pem, source)?;
        if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch {
                source_name: source.to_owned(),
            });
        }
        let constraints = ConstraintSet::from_cert(&x509, source)?;
        let subject = x509.subject().to_string();
        let fingerprint = hex_sha256(&cert_der);

        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::bad_cert(source, format!("cannot use it as an issuer: {e}")))?;

        let mut pem = pem_encode(&cert_der);
        for extra in &extra_chain {
            pem.push_str(&pem_encode(extra));
        }
        let ca = DeploymentCa {
            source: source.to_owned(),
            cert_pem: pem,
            cert_der,
            extra_chain,
            issuer,
            constraints,
            fingerprint,
            subject,
            not_before,
            not_after,
        };
        crate::leaf::probe(&ca)?;
        Ok(ca)
    }

    /// The CA certificate (followed by any issuers it was brought with), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The certificates served after a leaf: the CA, then any issuers it was brought with.
    pub fn chain(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        std::iter::once(&self.cert_der).chain(self.extra_chain.iter())
    }

    /// The DNS and IP subtrees the CA is limited to; `None` for a CA without name constraints.
    pub fn permitted_names(&self) -> Option<&[PermittedName]> {
        self.constraints
            .as_ref()
            .map(ConstraintSet::permitted_names)
    }

    /// Whether clients would accept a leaf from this CA for `name` (DNS name or IP literal).
    pub fn covers(&self, name: &str) -> bool {
        self.constraints.as_ref().is_none_or(|c| c.covers(name))
    }

    /// Whether every name of the subtree `wanted` is covered (see [`DeploymentCa::covers`]).
    pub fn covers_subtree(&self, wanted: &PermittedName) -> bool {
        self.constraints
            .as_ref()
            .is_none_or(|c| c.covers_subtree(wanted))
    }

    /// SHA-256 of the certificate DER, lowercase hex; for logs and for comparing with guests.
    pub fn fingerprint_sha256(&self) -> String {
        self.fingerprint.clone()
    }

    /// The certificate's subject, e.g. `CN=egress-edge CA prod 2026-11-25, O=egress-edge`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Start of the certificate's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the certificate's validity; no leaf is minted past it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The label given when the CA was loaded (a path, `sds:…`, …).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

impl fmt::Debug for DeploymentCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploymentCa")
            .field("source", &self.source)
            .field("subject", &self.subject)
            .field("fingerprint_sha256", &self.fingerprint)
            .field("not_after", &self.not_after)
            .field("permitted_names", &self.permitted_names())
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

fn check_is_ca(x509: &X509Certificate<'_>, source: &str) -> Result<(), CaError> {
    let not_ca = |detail: &str| CaError::NotCa {
        source_name: source.to_owned(),
        detail: detail.to_owned(),
    };
    let bc = x509
        .basic_constraints()
        .map_err(|e| CaError::bad_cert(source, format!("unreadable basicConstraints: {e}")))?;
    match bc {
        Some(ext) if ext.value.ca => {}
        Some(_) => return Err(not_ca("basicConstraints says CA:FALSE")),
        None => {
            return Err(not_ca(
                "it has no basicConstraints extension (CA:TRUE is required)",
            ));
        }
    }
    let ku = x509
        .key_usage()
        .map_err(|e| CaError::bad_cert(source, format!("unreadable keyUsage: {e}")))?;
    // An absent keyUsage places no restriction (RFC 5280); a present one must allow signing
    // certificates, or clients reject every leaf.
    if let Some(ext) = ku
        && !ext.value.key_cert_sign()
    {
        return Err(not_ca("its keyUsage lacks keyCertSign"));
    }
    Ok(())
}

fn check_validity(
    x509: &X509Certificate<'_>,
    source: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let not_before = x509.validity().not_before.to_datetime();
    let not_after = x509.validity().not_after.to_datetime();
    let now = OffsetDateTime::now_utc();
    let invalid = |detail: String| CaError::NotValidNow {
        source_name: source.to_owned(),
        detail,
    };
    if now >= not_after {
        return Err(invalid(format!("it expired at {not_after}")));
    }
    if now < not_before {
        return Err(invalid(format!(
            "it is not valid before {not_before} (check the clock)"
        )));
    }
    Ok((not_before, not_after))
}

pub(crate) fn hex_sha256(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn pem_encode(der: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", der)
}

/// Standard PEM armour (64-column base64); written by hand to avoid a dependency for 20 lines.
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let ca = DeploymentCa::generate(&CaOptions::new("t")).unwrap();
        let again = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(again, ca.cert_der());
    }

    #[test]
    fn debug_hides_the_key() {
        let pems = generate::generate(&CaOptions::new("t")).unwrap();
        let ca = DeploymentCa::from_pem(&pems.cert_pem, &pems.key_pem, "t").unwrap();
        let dbg = format!("{ca:?}");
        assert!(dbg.contains("[redacted]"));
        let key_body: String = pems
            .key_pem
            .lines()
            .nth(1)
            .unwrap()
            .chars()
            .take(20)
            .collect();
        assert!(!dbg.contains(&key_body));
    }

    #[test]
    fn fingerprint_is_hex_sha256() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
