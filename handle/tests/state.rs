#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What lives in the state dir: key files, their modes, concurrent creation, the revocation
//! list's persistence and cross-process visibility, and redaction of key material.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use egress_handle::{
    DEFAULT_MAX_TTL, HandleAuthority, HandleError, KEY_FILE, KeyRing, MintRequest, PUBLIC_KEY_FILE,
    REVOCATION_FILE, RevocationEntry, RevocationList, RevokeTarget, Verifier, VerifyingKey,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn request(session: &str) -> MintRequest {
    let mut req = MintRequest::new(["openai-key"], Duration::from_secs(600));
    req.session = Some(session.into());
    req
}

#[test]
fn files_are_created_with_tight_modes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a/b/state");
    let auth = HandleAuthority::open(&state, DEFAULT_MAX_TTL).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&state.join(PUBLIC_KEY_FILE)), 0o644);
    let minted = auth.mint(&request("s")).unwrap();
    auth.revoke_id(&minted.id).unwrap();
    assert_eq!(mode(&state.join(REVOCATION_FILE)), 0o600);
    // No temp or lock files are left behind.
    let mut names: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [KEY_FILE, PUBLIC_KEY_FILE, REVOCATION_FILE]);
}

#[test]
fn key_is_reused_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let first = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let minted = first.mint(&request("s")).unwrap();
    drop(first);
    let second = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    second.verify(&minted.handle, SystemTime::now()).unwrap();
}

#[test]
fn concurrent_opens_agree_on_one_key() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(dir.path().join("state"));
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (state, barrier) = (Arc::clone(&state), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    HandleAuthority::open(&state, DEFAULT_MAX_TTL).unwrap()
                })
            })
            .collect();
        let auths: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let kid = auths[0].kid();
        let on_disk = VerifyingKey::load_public(&state.join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(on_disk.kid_hex(), kid);
        for auth in &auths {
            assert_eq!(auth.kid(), kid);
            assert_eq!(auth.public_key_pem(), auths[0].public_key_pem());
            let minted = auth.mint(&request("s")).unwrap();
            auths[0].verify(&minted.handle, SystemTime::now()).unwrap();
        }
    }
}

#[test]
fn replica_verifies_with_public_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let minted = auth.mint(&request("s")).unwrap();

    let replica_dir = tempfile::tempdir().unwrap();
    let key = VerifyingKey::load_public(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(key.to_pem(), auth.public_key_pem());
    let revocations = Arc::new(
        RevocationList::load(&replica_dir.path().join(REVOCATION_FILE), DEFAULT_MAX_TTL).unwrap(),
    );
    let verifier = Verifier::new(
        std::iter::once(key).collect::<KeyRing>(),
        Arc::clone(&revocations),
        DEFAULT_MAX_TTL,
    );
    verifier.verify(&minted.handle, SystemTime::now()).unwrap();
    revocations.revoke_session("s").unwrap();
    assert!(matches!(
        verifier.verify(&minted.handle, SystemTime::now()),
        Err(HandleError::Revoked)
    ));
}

#[test]
fn revocation_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let by_id = auth.mint(&request("keep")).unwrap();
    let by_session = auth.mint(&request("gone")).unwrap();
    let untouched = auth.mint(&request("keep")).unwrap();
    auth.revoke_id(&by_id.id).unwrap();
    auth.revoke_session("gone").unwrap();
    drop(auth);

    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let now = SystemTime::now();
    assert!(matches!(
        auth.verify(&by_id.handle, now),
        Err(HandleError::Revoked)
    ));
    assert!(matches!(
        auth.verify(&by_session.handle, now),
        Err(HandleError::Revoked)
    ));
    auth.verify(&untouched.handle, now).unwrap();
    assert_eq!(auth.revocations().counts(), (1, 1, 0));
}

#[test]
fn other_process_revocation_is_seen_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let a = proxy.mint(&request("s1")).unwrap();
    let b = proxy.mint(&request("s2")).unwrap();
    assert!(!proxy.reload_revocations_if_changed().unwrap());

    // The CLI, as a separate "process": its own authority on the same state dir.
    let cli = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    cli.revoke_id(&a.id).unwrap();
    let now = SystemTime::now();
    // Not yet: the running proxy only sees it after polling.
    proxy.verify(&a.handle, now).unwrap();
    assert!(proxy.reload_revocations_if_changed().unwrap());
    assert!(matches!(
        proxy.verify(&a.handle, now),
        Err(HandleError::Revoked)
    ));
    assert!(!proxy.reload_revocations_if_changed().unwrap());

    // The proxy's own write merges the CLI's entry instead of overwriting it.
    cli.revoke_session("s2").unwrap();
    proxy.revoke_id(&"0".repeat(32)).unwrap();
    assert!(matches!(
        proxy.verify(&b.handle, now),
        Err(HandleError::Revoked)
    ));
    let fresh = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    assert_eq!(fresh.revocations().counts(), (2, 1, 0));
    assert!(matches!(
        fresh.verify(&a.handle, now),
        Err(HandleError::Revoked)
    ));
    assert!(matches!(
        fresh.verify(&b.handle, now),
        Err(HandleError::Revoked)
    ));
}

#[test]
fn concurrent_revocations_from_two_lists_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(REVOCATION_FILE);
    let lists: Vec<_> = (0..2)
        .map(|_| Arc::new(RevocationList::load(&path, DEFAULT_MAX_TTL).unwrap()))
        .collect();
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = lists
        .iter()
        .enumerate()
        .map(|(t, list)| {
            let (list, barrier) = (Arc::clone(list), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..20 {
                    list.revoke_session(&format!("t{t}-s{i}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let merged = RevocationList::load(&path, DEFAULT_MAX_TTL).unwrap();
    assert_eq!(merged.counts(), (0, 40, 0));
}

#[test]
fn old_entries_are_pruned_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let list = RevocationList::load(&dir.path().join(REVOCATION_FILE), DEFAULT_MAX_TTL).unwrap();
    let t0 = SystemTime::now();
    list.revoke_id_at(&"1".repeat(32), t0).unwrap();
    list.revoke_session_at("old", t0).unwrap();
    list.revoke_id_at(&"2".repeat(32), t0 + Duration::from_secs(1800))
        .unwrap();
    assert_eq!(list.counts(), (2, 1, 0));
    // Past max ttl + skew allowance, the first entries cannot match a live handle any more.
    list.revoke_id_at(&"3".repeat(32), t0 + Duration::from_secs(3600 + 121))
        .unwrap();
    assert_eq!(list.counts(), (2, 0, 0));
}

#[test]
fn sandbox_revocations_persist_merge_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(REVOCATION_FILE);
    let a = RevocationList::load(&path, DEFAULT_MAX_TTL).unwrap();
    let b = RevocationList::load(&path, DEFAULT_MAX_TTL).unwrap();
    let t0 = SystemTime::now();
    a.revoke_sandbox_at("sbx-a", t0).unwrap();
    // The other list's write merges the first one's entry instead of overwriting it.
    b.revoke_sandbox_at("sbx-b", t0 + Duration::from_secs(1800))
        .unwrap();
    assert_eq!(b.counts(), (0, 0, 2));
    assert!(a.reload_if_changed().unwrap());
    assert_eq!(a.counts(), (0, 0, 2));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    let sandboxes = json["sandboxes"].as_object().unwrap();
    assert_eq!(sandboxes.len(), 2);
    assert!(sandboxes["sbx-a"]["revoked_at"].is_u64());
    assert_eq!(
        RevocationList::load(&path, DEFAULT_MAX_TTL)
            .unwrap()
            .counts(),
        (0, 0, 2)
    );
    // Past max ttl + skew allowance, the first entry cannot match a live handle any more.
    a.revoke_id_at(&"3".repeat(32), t0 + Duration::from_secs(3600 + 121))
        .unwrap();
    assert_eq!(a.counts(), (1, 0, 1));
}

#[test]
fn revocation_file_without_sandboxes_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(REVOCATION_FILE);
    let t0 = SystemTime::now();
    let secs = t0.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // As written before sandbox revocation existed.
    let old = format!(
        r#"{{"version":1,"ids":{{"{}":{{"revoked_at":{secs},"prune_after":{}}}}},"sessions":{{"gone":{{"revoked_at":{secs},"prune_after":{}}}}}}}"#,
        "ab".repeat(16),
        secs + 3720,
        secs + 3720
    );
    std::fs::write(&path, &old).unwrap();
    let list = RevocationList::load(&path, DEFAULT_MAX_TTL).unwrap();
    assert_eq!(list.counts(), (1, 1, 0));
    // A write keeps the old entries and always writes the new key.
    list.revoke_sandbox_at("sbx-a", t0).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["ids"].as_object().unwrap().len(), 1);
    assert_eq!(json["sessions"].as_object().unwrap().len(), 1);
    assert_eq!(json["sandboxes"].as_object().unwrap().len(), 1);
    assert_eq!(
        RevocationList::load(&path, DEFAULT_MAX_TTL)
            .unwrap()
            .counts(),
        (1, 1, 1)
    );
    // An empty list writes the key too.
    let fresh = dir.path().join("fresh.json");
    RevocationList::load(&fresh, DEFAULT_MAX_TTL)
        .unwrap()
        .revoke_id_at(&"1".repeat(32), t0)
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&fresh).unwrap()).unwrap();
    assert_eq!(json["sandboxes"], serde_json::json!({}));
}

#[test]
fn bad_sandbox_entries_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(REVOCATION_FILE);
    for sandboxes in [
        r#"{"has space":{"revoked_at":1,"prune_after":2}}"#,
        r#"{"":{"revoked_at":1,"prune_after":2}}"#,
        r#"{"s":{"revoked_at":1}}"#,
        r#"["s"]"#,
    ] {
        let text = format!(r#"{{"version":1,"ids":{{}},"sessions":{{}},"sandboxes":{sandboxes}}}"#);
        std::fs::write(&path, text).unwrap();
        assert!(
            matches!(
                RevocationList::load(&path, DEFAULT_MAX_TTL),
                Err(HandleError::RevocationFile { .. })
            ),
            "{sandboxes}"
        );
    }
}

#[test]
fn corrupt_revocation_file_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let minted = auth.mint(&request("s")).unwrap();
    auth.revoke_id(&minted.id).unwrap();
    std::fs::write(dir.path().join(REVOCATION_FILE), b"{not json").unwrap();
    // A running process keeps what it knows and reports the problem.
    let err = auth.reload_revocations_if_changed().unwrap_err();
    assert_eq!(err.code(), "internal");
    assert!(matches!(
        auth.verify(&minted.handle, SystemTime::now()),
        Err(HandleError::Revoked)
    ));
    // A starting one refuses to run without its revocations.
    assert!(matches!(
        HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL),
        Err(HandleError::RevocationFile { .. })
    ));
}

#[test]
fn unusable_key_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
    let err = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap_err();
    assert!(matches!(err, HandleError::Key { .. }), "{err}");
    assert!(err.to_string().contains(KEY_FILE));
}

#[test]
fn zero_max_ttl_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(HandleAuthority::open(dir.path(), Duration::ZERO).is_err());
}

#[test]
fn debug_output_has_no_key_material_or_handles() {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let pem = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(&body).unwrap();
    // The 32-byte seed follows the 16-byte PKCS#8 header.
    let seed = &der[16..48];
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let seed_b64 = STANDARD.encode(seed);
    let seed_debug = format!("{seed:?}");

    let minted = auth.mint(&request("s")).unwrap();
    let outputs = [
        format!("{auth:?}"),
        format!("{auth:#?}"),
        format!("{minted:?}"),
    ];
    for out in &outputs {
        assert!(!out.contains(&body[20..60]), "{out}");
        assert!(!out.contains(&seed_hex), "{out}");
        assert!(!out.contains(&seed_b64[..20]), "{out}");
        assert!(!out.contains(&seed_debug[1..40]), "{out}");
        assert!(!out.contains(&minted.handle[10..]), "{out}");
    }
    assert!(outputs[0].contains(&auth.kid()));
    assert!(outputs[2].contains(&minted.id));
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<HandleAuthority>();
    check::<Verifier>();
    check::<RevocationList>();
}

#[test]
fn merged_revocations_last_this_list_s_retention_and_are_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(24 * 3600);
    let list = RevocationList::load(&dir.path().join(REVOCATION_FILE), day).unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let id = "0123456789abcdef0123456789abcdef";
    // The sender keeps it 1 h (its own handle lifetime); this list accepts handles of a day.
    let from_sender = RevocationEntry {
        target: RevokeTarget::Id(id.into()),
        revoked_at: secs(t0),
        expires_at: secs(t0) + 3600,
    };
    assert_eq!(
        list.merge_entries_at(std::slice::from_ref(&from_sender), t0)
            .unwrap(),
        1
    );
    assert_eq!(
        list.merge_entries_at(std::slice::from_ref(&from_sender), t0)
            .unwrap(),
        0,
        "nothing new: no write"
    );
    // Two hours later, past the sender's expiry, a write (which prunes) keeps it.
    let later = t0 + Duration::from_secs(2 * 3600);
    let other = RevocationEntry {
        target: RevokeTarget::Session("s-2".into()),
        revoked_at: secs(later),
        expires_at: secs(later) + 3600,
    };
    assert_eq!(list.merge_entries_at(&[other], later).unwrap(), 1);
    assert_eq!(list.counts(), (1, 1, 0), "the id is still revoked here");
    // A day and more later it is pruned.
    let gone = t0 + day + Duration::from_secs(3600);
    let third = RevocationEntry {
        target: RevokeTarget::Sandbox("sbx".into()),
        revoked_at: secs(gone),
        expires_at: secs(gone),
    };
    assert_eq!(list.merge_entries_at(&[third], gone).unwrap(), 1);
    assert_eq!(list.counts(), (0, 1, 1));
    // One bad entry refuses the whole batch.
    let bad = RevocationEntry {
        target: RevokeTarget::Id("not-hex".into()),
        revoked_at: secs(gone),
        expires_at: secs(gone),
    };
    let fresh = RevocationEntry {
        target: RevokeTarget::Session("s-3".into()),
        ..bad.clone()
    };
    assert!(list.merge_entries_at(&[fresh, bad], gone).is_err());
    assert_eq!(list.counts(), (0, 1, 1));
    let reread = RevocationList::load(&dir.path().join(REVOCATION_FILE), day).unwrap();
    assert_eq!(reread.counts(), (0, 1, 1), "persisted");
}
