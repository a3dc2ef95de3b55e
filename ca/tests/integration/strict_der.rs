//! DER strictness of everything the crate encodes: leaves and generated CAs.
//!
//! DER forbids encoding a field that equals its DEFAULT. Lenient parsers (webpki, OpenSSL,
//! x509-parser) accept such certificates anyway, but strict ones do not: Python `cryptography`
//! 43 and later (and so sslyze) refuse a leaf carrying `BasicConstraints cA=FALSE` or an
//! extension with an explicit `critical FALSE`. These tests check the encoding itself, and then
//! have `cryptography` parse the certificates when it is installed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use egress_ca::{CaOptions, DeploymentCa, PermittedName, mint_leaf};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::oid_registry::{OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_NAME_CONSTRAINTS};

use crate::common::parse;

const TTL: Duration = Duration::from_secs(3600);

/// One DER TLV: (tag byte, contents, rest of the input). X.509 only uses single-byte tags.
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    assert!(input.len() >= 2, "truncated TLV: {input:02x?}");
    let tag = input[0];
    assert_ne!(tag & 0x1f, 0x1f, "multi-byte tag in {input:02x?}");
    let (len, header) = match input[1] {
        short @ 0..=0x7f => (usize::from(short), 2),
        0x80 => panic!("indefinite length is not DER"),
        long => {
            let n = usize::from(long & 0x7f);
            assert!(n <= 4 && input.len() >= 2 + n, "bad length in {input:02x?}");
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            assert!(
                input[2] != 0 && len >= 0x80,
                "non-minimal length encoding in {input:02x?}"
            );
            (len, 2 + n)
        }
    };
    assert!(input.len() >= header + len, "truncated TLV: {input:02x?}");
    (tag, &input[header..header + len], &input[header + len..])
}

fn elements(mut contents: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, value, rest) = tlv(contents);
        out.push((tag, value));
        contents = rest;
    }
    out
}

const SEQUENCE: u8 = 0x30;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const EXPLICIT_3: u8 = 0xa3;

/// One extension as encoded: OID contents, the critical BOOLEAN's contents if one is encoded,
/// and the extnValue contents.
type RawExtension = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// Each extension of a certificate, read straight from the DER, not through a lenient parser.
fn raw_extensions(cert: &[u8]) -> Vec<RawExtension> {
    let (tag, cert_body, rest) = tlv(cert);
    assert!(tag == SEQUENCE && rest.is_empty());
    let (tag, tbs, _) = tlv(cert_body);
    assert_eq!(tag, SEQUENCE);
    let Some((_, exts)) = elements(tbs).into_iter().find(|(t, _)| *t == EXPLICIT_3) else {
        return Vec::new();
    };
    let (tag, list, rest) = tlv(exts);
    assert!(tag == SEQUENCE && rest.is_empty());
    elements(list)
        .into_iter()
        .map(|(tag, ext)| {
            assert_eq!(tag, SEQUENCE);
            match elements(ext).as_slice() {
                [(0x06, oid), (OCTET_STRING, value)] => (oid.to_vec(), None, value.to_vec()),
                [(0x06, oid), (BOOLEAN, critical), (OCTET_STRING, value)] => {
                    (oid.to_vec(), Some(critical.to_vec()), value.to_vec())
                }
                other => panic!("malformed extension: {other:02x?}"),
            }
        })
        .collect()
}

/// Every BOOLEAN inside `der` (descending into constructed values), as its contents.
fn booleans(der: &[u8], out: &mut Vec<Vec<u8>>) {
    for (tag, value) in elements(der) {
        if tag == BOOLEAN {
            out.push(value.to_vec());
        } else if tag & 0x20 != 0 {
            booleans(value, out);
        }
    }
}

/// Certificates covering every shape the crate encodes: unconstrained and name-constrained CAs
/// (DNS only, IP only, both: each adds different excluded subtrees) and DNS/IP leaves.
fn samples() -> Vec<(String, Vec<u8>)> {
    let plain = DeploymentCa::generate(&CaOptions::new("strict-der")).unwrap();
    let permitted = |names: &[&str]| -> Vec<PermittedName> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    };
    let dns_only = DeploymentCa::generate(
        &CaOptions::new("strict-der-dns").with_permitted(permitted(&["example.com"])),
    )
    .unwrap();
    let ip_only = DeploymentCa::generate(
        &CaOptions::new("strict-der-ip").with_permitted(permitted(&["192.0.2.0/24"])),
    )
    .unwrap();
    let both = DeploymentCa::generate(
        &CaOptions::new("strict-der-both")
            .with_permitted(permitted(&[".example.com", "2001:db8::/32"])),
    )
    .unwrap();
    let mut out = Vec::new();
    for (label, ca) in [
        ("plain", &plain),
        ("dns-only", &dns_only),
        ("ip-only", &ip_only),
        ("both", &both),
    ] {
        out.push((format!("{label} CA"), ca.cert_der().to_vec()));
    }
    for (label, ca, name) in [
        ("plain", &plain, "api.example.com"),
        ("plain", &plain, "2001:db8::7"),
        ("dns-only", &dns_only, "www.example.com"),
        ("ip-only", &ip_only, "192.0.2.9"),
        ("both", &both, "a.example.com"),
    ] {
        let leaf = mint_leaf(ca, name, TTL).unwrap();
        out.push((format!("{label} leaf {name}"), leaf.cert[0].to_vec()));
    }
    out
}

/// Regression: leaves carried `BasicConstraints { cA FALSE }`, an encoded DEFAULT.
#[test]
fn leaf_basic_constraints_never_encode_ca_false() {
    let ca = DeploymentCa::generate(&CaOptions::new("strict-der")).unwrap();
    for name in ["api.example.com", "192.0.2.1"] {
        let leaf = mint_leaf(&ca, name, TTL).unwrap();
        let x = parse(&leaf.cert[0]);
        for ext in x.extensions() {
            if ext.oid != OID_X509_EXT_BASIC_CONSTRAINTS {
                continue;
            }
            // BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLen INTEGER OPTIONAL }
            let (tag, body, rest) = tlv(ext.value);
            assert!(tag == SEQUENCE && rest.is_empty(), "{:02x?}", ext.value);
            assert_eq!(
                body,
                [] as [u8; 0],
                "{name}: an end-entity BasicConstraints must be the empty SEQUENCE (30 00); \
                 got {:02x?} (cA FALSE is the DEFAULT and must not be encoded)",
                ext.value
            );
        }
    }
}

/// No encoded DEFAULT anywhere: no explicit `critical FALSE`, no BOOLEAN FALSE inside any
/// extension value (every BOOLEAN in the extensions we emit defaults to FALSE), and no
/// explicit `minimum 0` in a name-constraints GeneralSubtree.
#[test]
fn no_der_default_values_in_leaves_or_cas() {
    for (label, der) in samples() {
        let exts = raw_extensions(&der);
        assert!(!exts.is_empty(), "{label}: no extensions");
        for (oid, critical, value) in exts {
            if let Some(critical) = critical {
                assert_eq!(
                    critical,
                    [0xff],
                    "{label}: extension {oid:02x?} encodes critical {critical:02x?} (FALSE is the DEFAULT; TRUE must be ff)"
                );
            }
            let mut found = Vec::new();
            booleans(&value, &mut found);
            for b in found {
                assert_eq!(
                    b,
                    [0xff],
                    "{label}: extension {oid:02x?} holds BOOLEAN {b:02x?} in {value:02x?}"
                );
            }
            if oid == OID_X509_EXT_NAME_CONSTRAINTS.as_bytes() {
                let (_, trees, _) = tlv(&value);
                for (_, subtrees) in elements(trees) {
                    for (tag, subtree) in elements(subtrees) {
                        assert_eq!(tag, SEQUENCE);
                        assert_eq!(
                            elements(subtree).len(),
                            1,
                            "{label}: GeneralSubtree must hold only its base: {subtree:02x?}"
                        );
                    }
                }
            }
        }
    }
}

/// The walker itself must flag the old encoding, or the test above proves nothing.
#[test]
fn the_checks_catch_an_explicit_default() {
    // BasicConstraints extension { critical TRUE, SEQUENCE { BOOLEAN FALSE } }, as rcgen's
    // IsCa::ExplicitNoCa wrote it, inside a minimal certificate skeleton.
    let ext = [
        0x30, 0x0f, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x05, 0x30, 0x03, 0x01,
        0x01, 0x00,
    ];
    let mut cert = vec![0x30, 0x17, 0x30, 0x15, 0xa3, 0x13, 0x30, 0x11];
    cert.extend_from_slice(&ext);
    let exts = raw_extensions(&cert);
    assert_eq!(exts.len(), 1);
    let mut found = Vec::new();
    booleans(&exts[0].2, &mut found);
    assert_eq!(found, vec![vec![0x00]]);
}

/// Stores `samples()` in `dir`, each as a DER and as a PEM file; returns their paths.
fn write_samples(dir: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    for (i, (_, der)) in samples().into_iter().enumerate() {
        let der_path = dir.join(format!("{i}.der"));
        std::fs::write(&der_path, &der).unwrap();
        let pem_path = dir.join(format!("{i}.pem"));
        std::fs::write(&pem_path, to_pem(&der)).unwrap();
        paths.push(der_path.display().to_string());
        paths.push(pem_path.display().to_string());
    }
    paths
}

fn to_pem(der: &[u8]) -> String {
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(der)
    );
    // Round-trip through a PEM reader so a base64 slip cannot pass for a parser's verdict.
    let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(back.as_ref(), der);
    pem
}

fn base64_lines(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out.as_bytes()
        .chunks(64)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Python `cryptography` parses strictly (it rejects encoded DEFAULTs since 43): load each
/// certificate, from DER and from PEM, and decode every extension.
const PY_STRICT_PARSE: &str = r#"
import sys
from cryptography import x509
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        if path.endswith(".pem"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        for ext in cert.extensions:
            ext.value
        cert.subject, cert.issuer, cert.serial_number
    except Exception as e:
        sys.exit(f"{path}: {type(e).__name__}: {e}")
print("ok", len(sys.argv) - 1)
"#;

/// Path validation by `cryptography`'s own (RFC 5280 / CA/B-profile) verifier, where present.
const PY_VERIFY: &str = r#"
import sys
from cryptography import x509
try:
    from cryptography.x509.verification import PolicyBuilder, Store
except ImportError:
    print("no verifier")
    sys.exit(0)
ca_path, leaf_path, name = sys.argv[1:4]
with open(ca_path, "rb") as f:
    ca = x509.load_pem_x509_certificate(f.read())
with open(leaf_path, "rb") as f:
    leaf = x509.load_pem_x509_certificate(f.read())
verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(name))
print("chain", len(verifier.verify(leaf, [])))
"#;

/// Python `cryptography`'s version, or None (with a printed SKIP) when python3 or the package
/// is missing.
fn python_cryptography() -> Option<String> {
    let out = match Command::new("python3")
        .args(["-c", "import cryptography; print(cryptography.__version__)"])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIP strict DER parse: python3 not runnable ({e})");
            return None;
        }
    };
    if !out.status.success() {
        eprintln!(
            "SKIP strict DER parse: python3 has no `cryptography` package (pip install cryptography): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        );
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Regression: Python `cryptography` >= 43 (sslyze) refused every minted leaf.
#[test]
fn python_cryptography_parses_leaves_and_cas() {
    let Some(version) = python_cryptography() else {
        return;
    };
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 43 {
        eprintln!(
            "WARNING: cryptography {version} predates strict DER parsing (43); this test is weaker"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let mut paths = write_samples(dir.path());
    // The PEM texts exactly as the crate hands them out: the CA's own PEM, and a stored CA.
    let ca =
        DeploymentCa::load_or_create(&dir.path().join("state"), &CaOptions::new("strict-der-pem"))
            .unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    paths.push(ca_pem.display().to_string());
    paths.push(
        dir.path()
            .join("state")
            .join(egress_ca::CA_CERT_FILE)
            .display()
            .to_string(),
    );
    let leaf = mint_leaf(&ca, "pem.example.com", TTL).unwrap();
    let leaf_pem = dir.path().join("leaf.pem");
    std::fs::write(&leaf_pem, to_pem(&leaf.cert[0])).unwrap();
    paths.push(leaf_pem.display().to_string());

    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_STRICT_PARSE)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cryptography {version} refused a certificate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {}", paths.len())
    );

    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_VERIFY)
        .arg(&ca_pem)
        .arg(&leaf_pem)
        .arg("pem.example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cryptography {version} did not verify the leaf against the CA:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(said.trim(), "chain 2" | "no verifier"),
        "unexpected verifier output: {said}"
    );
}
