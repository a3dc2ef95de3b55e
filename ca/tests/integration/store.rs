//! State-dir CA: generation shape, file modes, restart reuse, racing creators, broken states.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use egress_ca::{CA_CERT_FILE, CA_KEY_FILE, CaError, CaOptions, DeploymentCa};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::time::ASN1Time;

use crate::common::parse;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generated_ca_is_a_pathlen0_p256_ca_named_after_the_deployment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join("nested");
    let ca = DeploymentCa::load_or_create(&dir, &CaOptions::new("prod-eu")).unwrap();

    let pem = std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    assert_eq!(pem, ca.cert_pem());
    let der = ca.cert_der();
    let x = parse(&der);

    let bc = x.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.key_encipherment());

    let spki = x.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);

    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cn.contains("prod-eu"), "{cn}");
    assert!(
        cn.contains(&time::OffsetDateTime::now_utc().date().to_string()),
        "{cn}"
    );
    let org = x
        .subject()
        .iter_organization()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(org, "egress-edge");
    assert!(x.name_constraints().unwrap().is_none());
    assert!(ca.permitted_names().is_none());

    let now = ASN1Time::now();
    assert!(x.validity().not_before < now);
    let years = (x.validity().not_after.timestamp() - now.timestamp()) / (365 * 86_400);
    assert!((9..=10).contains(&years), "{years}");
    assert_eq!(ca.not_after(), x.validity().not_after.to_datetime());

    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(ca.fingerprint_sha256().len(), 64);
}

#[test]
fn restart_reuses_the_stored_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("d")).unwrap();
    let key_before = std::fs::read(tmp.path().join(CA_KEY_FILE)).unwrap();
    let second = DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("other-name")).unwrap();
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert_eq!(first.fingerprint_sha256(), second.fingerprint_sha256());
    assert_eq!(
        key_before,
        std::fs::read(tmp.path().join(CA_KEY_FILE)).unwrap()
    );
}

#[test]
fn racing_threads_agree_on_one_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(tmp.path().join("state"));
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (dir, barrier) = (dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                DeploymentCa::load_or_create(&dir, &CaOptions::new("race"))
                    .unwrap()
                    .fingerprint_sha256()
            })
        })
        .collect();
    let prints: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(prints.iter().all(|p| p == &prints[0]), "{prints:?}");
    let reloaded = DeploymentCa::load_or_create(&dir, &CaOptions::new("race")).unwrap();
    assert_eq!(reloaded.fingerprint_sha256(), prints[0]);
    let mut names: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [CA_KEY_FILE, CA_CERT_FILE],
        "temporary files must not be left behind"
    );
}

const RACE_DIR_ENV: &str = "EGRESS_CA_TEST_RACE_DIR";

/// Child half of `racing_processes_agree_on_one_ca`; does nothing when run on its own.
#[test]
#[ignore = "helper run as a child process by racing_processes_agree_on_one_ca"]
fn race_child() {
    let Ok(dir) = std::env::var(RACE_DIR_ENV) else {
        return;
    };
    let ca = DeploymentCa::load_or_create(Path::new(&dir), &CaOptions::new("race")).unwrap();
    println!("FINGERPRINT={}", ca.fingerprint_sha256());
}

#[test]
fn racing_processes_agree_on_one_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "store::race_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(RACE_DIR_ENV, &dir)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let prints: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            let stdout = String::from_utf8(out.stdout).unwrap();
            // The harness prints the test name on the same line, so search rather than split lines.
            let at = stdout
                .find("FINGERPRINT=")
                .unwrap_or_else(|| panic!("no fingerprint in child output: {stdout}"));
            stdout[at + "FINGERPRINT=".len()..][..64].to_owned()
        })
        .collect();
    assert!(prints.iter().all(|p| p == &prints[0]), "{prints:?}");
    let ca = DeploymentCa::load_or_create(&dir, &CaOptions::new("race")).unwrap();
    assert_eq!(ca.fingerprint_sha256(), prints[0]);
}

#[test]
fn cert_without_key_is_reported_with_both_paths() {
    let tmp = tempfile::tempdir().unwrap();
    DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("d")).unwrap();
    std::fs::remove_file(tmp.path().join(CA_KEY_FILE)).unwrap();
    let err = DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("d")).unwrap_err();
    assert!(matches!(err, CaError::MissingKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(CA_KEY_FILE) && msg.contains(CA_CERT_FILE),
        "{msg}"
    );
}

#[test]
fn corrupt_stored_cert_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("d")).unwrap();
    std::fs::write(tmp.path().join(CA_CERT_FILE), "not a certificate").unwrap();
    let err = DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("d")).unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { .. }), "{err:?}");
    let path = tmp.path().join(CA_CERT_FILE);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn stored_key_of_another_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("a")).unwrap();
    DeploymentCa::load_or_create(other.path(), &CaOptions::new("b")).unwrap();
    std::fs::copy(other.path().join(CA_KEY_FILE), tmp.path().join(CA_KEY_FILE)).unwrap();
    let err = DeploymentCa::load_or_create(tmp.path(), &CaOptions::new("a")).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
}
