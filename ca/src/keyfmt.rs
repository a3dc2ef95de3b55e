//! Private-key PEM decoding for brought CAs.
//!
//! rcgen on ring only reads PKCS#8, but operators commonly hold SEC1 (`EC PRIVATE KEY`, from
//! `openssl ecparam` or step-ca) or PKCS#1 (`RSA PRIVATE KEY`) files. This module re-wraps those
//! in a PKCS#8 envelope (a pure DER framing change, no key arithmetic) and hands the result to
//! rcgen. It does not decrypt encrypted keys and never logs or formats key bytes.

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::error::CaError;

/// AlgorithmIdentifier contents (without the outer SEQUENCE) for the key kinds we wrap.
const ALG_EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
];
const ALG_EC_P384: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, // secp384r1
];
const ALG_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, // rsaEncryption
    0x05, 0x00, // NULL parameters
];

/// Parses the first private key in `pem` into an rcgen key pair.
pub(crate) fn key_pair_from_pem(pem: &str, source: &str) -> Result<KeyPair, CaError> {
    if pem.contains("ENCRYPTED PRIVATE KEY") {
        return Err(CaError::bad_key(
            source,
            "the key is encrypted; supply it unencrypted (e.g. `openssl pkey -in KEY -out KEY.pem`) \
             and protect the file with permissions instead",
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        CaError::bad_key(
            source,
            format!(
                "no PEM private key found (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY): {e}"
            ),
        )
    })?;
    let candidates: Vec<Zeroizing<Vec<u8>>> = match &der {
        PrivateKeyDer::Pkcs8(k) => vec![Zeroizing::new(k.secret_pkcs8_der().to_vec())],
        // SEC1 may omit the curve; ring checks the curve and the embedded public key, so trying
        // both supported curves cannot produce a wrong key.
        PrivateKeyDer::Sec1(k) => vec![
            wrap_pkcs8(ALG_EC_P256, k.secret_sec1_der()),
            wrap_pkcs8(ALG_EC_P384, k.secret_sec1_der()),
        ],
        PrivateKeyDer::Pkcs1(k) => vec![wrap_pkcs8(ALG_RSA, k.secret_pkcs1_der())],
        _ => {
            return Err(CaError::bad_key(source, "unsupported private key encoding"));
        }
    };
    let mut last_err = None;
    for pkcs8 in candidates {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
        match KeyPair::try_from(&key) {
            Ok(pair) => return Ok(pair),
            Err(e) => last_err = Some(e),
        }
    }
    Err(CaError::bad_key(
        source,
        format!(
            "unsupported key type or corrupt key (ECDSA P-256/P-384, RSA and Ed25519 are supported){}",
            last_err.map(|e| format!(": {e}")).unwrap_or_default()
        ),
    ))
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }`.
fn wrap_pkcs8(alg: &[u8], inner: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(inner.len() + alg.len() + 16));
    body.extend_from_slice(&[0x02, 0x01, 0x00]);
    push_tlv(&mut body, 0x30, alg);
    push_tlv(&mut body, 0x04, inner);
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 4));
    push_tlv(&mut out, 0x30, &body);
    out
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    /// Splits one DER TLV off `input`: (tag, value, rest).
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (input[0], input[1] as usize);
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        };
        (tag, &input[hdr..hdr + len], &input[hdr + len..])
    }

    /// Extracts the SEC1 `ECPrivateKey` from a PKCS#8 document (its privateKey OCTET STRING).
    fn sec1_of(pkcs8: &[u8]) -> Vec<u8> {
        let (_, body, _) = tlv(pkcs8);
        let (_, _version, rest) = tlv(body);
        let (_, _alg, rest) = tlv(rest);
        let (tag, key, _) = tlv(rest);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    #[test]
    fn reads_pkcs8_and_sec1() {
        let original = KeyPair::generate().unwrap();
        let from_pkcs8 = key_pair_from_pem(&original.serialize_pem(), "t").unwrap();
        assert_eq!(from_pkcs8.der_bytes(), original.der_bytes());

        let sec1 = sec1_of(&original.serialize_der());
        let from_sec1 =
            key_pair_from_pem(&crate::ca::pem_block("EC PRIVATE KEY", &sec1), "t").unwrap();
        assert_eq!(from_sec1.der_bytes(), original.der_bytes());
        assert_eq!(from_sec1.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn refuses_garbage_and_encrypted() {
        assert!(matches!(
            key_pair_from_pem("nope", "t"),
            Err(CaError::BadKey { .. })
        ));
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = key_pair_from_pem(enc, "k.pem").unwrap_err().to_string();
        assert!(err.contains("encrypted") && err.contains("k.pem"), "{err}");
    }

    #[test]
    fn long_form_lengths() {
        let mut out = Vec::new();
        push_tlv(&mut out, 0x04, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
