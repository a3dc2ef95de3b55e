//! The secrets file: every kind, relative paths, env, located errors without values.

use std::collections::BTreeMap;

use egress_sds::file::{content_version, load_secrets_file};
use egress_sds::{SdsError, Secret, SecretBytes};

use crate::common::self_signed_pem;

fn load(
    yaml: &str,
) -> (
    tempfile::TempDir,
    Result<BTreeMap<String, Secret>, SdsError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.yaml");
    std::fs::write(&path, yaml).unwrap();
    let r = load_secrets_file(&path);
    (dir, r)
}

fn err(yaml: &str) -> String {
    load(yaml).1.unwrap_err().to_string()
}

#[test]
fn every_kind_with_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("conf");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("key.txt"), "sk-from-file\n").unwrap();
    std::fs::write(sub.join("cs.txt"), "client-secret-file").unwrap();
    let (cert, key) = self_signed_pem("svid.test");
    let (ca, _) = self_signed_pem("ca.test");
    std::fs::write(sub.join("svid.pem"), &cert).unwrap();
    std::fs::write(sub.join("svid-key.pem"), &key).unwrap();
    std::fs::write(sub.join("roots.pem"), &ca).unwrap();
    // Setting a variable needs `unsafe` (forbidden here); PATH is always set.
    let path_env = std::env::var("PATH").unwrap();
    let path = sub.join("secrets.yaml");
    std::fs::write(
        &path,
        r#"
secrets:
  inline: { value: "sk-inline" }
  from-file: { file: key.txt }
  from-env: { env: PATH }
  client: { values: { client_id: "id-1", client_secret: { file: ./cs.txt } } }
  svid: { certificate: svid.pem, private_key: svid-key.pem }
  roots: { trusted_ca: roots.pem }
"#,
    )
    .unwrap();
    // Loaded from a different working directory: paths follow the file, not the cwd.
    let secrets = load_secrets_file(&path).unwrap();
    let value = |n: &str| match &secrets[n] {
        Secret::Generic { value: Some(v), .. } => v.expose_str().unwrap().to_string(),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(value("inline"), "sk-inline");
    assert_eq!(
        value("from-file"),
        "sk-from-file",
        "one trailing newline trimmed"
    );
    assert_eq!(value("from-env"), path_env);
    match &secrets["client"] {
        Secret::Generic {
            value: None,
            values,
        } => {
            assert_eq!(values["client_id"].expose(), b"id-1");
            assert_eq!(values["client_secret"].expose(), b"client-secret-file");
        }
        other => panic!("{other:?}"),
    }
    match &secrets["svid"] {
        Secret::TlsCertificate { chain_pem, key_pem } => {
            assert_eq!(chain_pem, &cert);
            assert_eq!(key_pem.expose(), key.as_bytes());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&secrets["roots"], Secret::ValidationContext { trusted_ca_pem } if *trusted_ca_pem == ca)
    );

    let dbg = format!("{secrets:?}");
    for v in ["sk-inline", "sk-from-file", "id-1", "client-secret-file"] {
        assert!(!dbg.contains(v), "Debug leaks {v}: {dbg}");
    }
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
}

#[test]
fn missing_file_error_names_key_not_value() {
    let e = err("secrets:\n  openai-key: { file: ./x }\n");
    assert!(
        e.contains("secrets.openai-key.file: cannot read ./x"),
        "{e}"
    );
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn missing_env_names_variable() {
    let e = err("secrets:\n  k: { env: EGRESS_SDS_TEST_SURELY_UNSET }\n");
    assert!(
        e.contains("secrets.k.env: environment variable EGRESS_SDS_TEST_SURELY_UNSET is not set"),
        "{e}"
    );
}

#[test]
fn errors_never_echo_values() {
    for (yaml, secret) in [
        (
            "secrets:\n  k: { value: 918273645546372 }\n",
            "918273645546372",
        ),
        (
            "secrets:\n  k: \"sk-plain-string-mistake\"\n",
            "sk-plain-string-mistake",
        ),
        ("secrets: sk-top-level-mistake\n", "sk-top-level-mistake"),
        ("secrets:\n  k: { value: \"sk-both\", env: X }\n", "sk-both"),
        (
            "secrets:\n  k: { values: { id: [\"sk-in-list\"] } }\n",
            "sk-in-list",
        ),
    ] {
        let e = err(yaml);
        assert!(!e.contains(secret), "error leaks {secret}: {e}");
        assert!(e.contains("secrets"), "{e}");
    }
}

#[test]
fn unknown_and_conflicting_keys() {
    let e = err("secrets:\n  k: { vaule: \"x\" }\n");
    assert!(e.contains("secrets.k: unknown key `vaule`"), "{e}");
    let e = err("secretz:\n  k: { value: \"x\" }\n");
    assert!(e.contains("unknown top-level key `secretz`"), "{e}");
    let e = err("secrets:\n  k: { value: \"x\", file: y }\n");
    assert!(e.contains("set exactly one of"), "{e}");
    let e = err("secrets:\n  k: { certificate: c.pem }\n");
    assert!(e.contains("secrets.k.private_key: is missing"), "{e}");
}

#[test]
fn invalid_pem_and_mismatched_key_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed_pem("a.test");
    let (_, other_key) = self_signed_pem("b.test");
    std::fs::write(dir.path().join("c.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), &other_key).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not pem at all").unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(
        &path,
        "secrets:\n  svid: { certificate: c.pem, private_key: k.pem }\n",
    )
    .unwrap();
    let e = load_secrets_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("secrets.svid: tls_certificate.private_key does not match"),
        "{e}"
    );
    std::fs::write(&path, "secrets:\n  roots: { trusted_ca: junk.pem }\n").unwrap();
    let e = load_secrets_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("secrets.roots: validation_context.trusted_ca"),
        "{e}"
    );
}

#[test]
fn empty_values_are_rejected() {
    let e = err("secrets:\n  k: { value: \"\" }\n");
    assert!(e.contains("secrets.k:") && e.contains("empty"), "{e}");
    let (_, ok) = load("secrets: {}\n");
    assert!(ok.unwrap().is_empty());
}

#[test]
fn version_follows_content() {
    let mut a = BTreeMap::new();
    a.insert(
        "k".to_string(),
        Secret::generic(SecretBytes::from("v1".to_string())),
    );
    let b = a.clone();
    assert_eq!(content_version(&a), content_version(&b));
    let mut c = a.clone();
    c.insert(
        "k".to_string(),
        Secret::generic(SecretBytes::from("v2".to_string())),
    );
    assert_ne!(content_version(&a), content_version(&c));
    assert_eq!(content_version(&a).len(), 12);
}
