#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Minting, verification and scope checks through the public API, including every refusal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use egress_handle::{
    CLOCK_SKEW, DEFAULT_MAX_TTL, HandleAuthority, HandleError, KeyRing, MintRequest,
    REVOCATION_FILE, RevocationList, RevokeTarget, Verifier, VerifyingKey,
};

fn authority() -> (tempfile::TempDir, HandleAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(&dir.path().join("state"), DEFAULT_MAX_TTL).unwrap();
    (dir, auth)
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn full_request() -> MintRequest {
    MintRequest {
        credentials: vec!["openai-key".into(), "other-key".into()],
        ttl: Duration::from_secs(15 * 60),
        session: Some("sbx-1".into()),
        host: Some("API.OpenAI.com".into()),
        methods: Some(vec!["post".into(), "GET".into()]),
        path_prefixes: Some(vec!["/v1".into(), "/files/".into()]),
        sandbox: None,
    }
}

/// `full_request` bound to `sandbox`.
fn bound_request(sandbox: &str) -> MintRequest {
    MintRequest {
        sandbox: Some(sandbox.into()),
        ..full_request()
    }
}

/// The decoded payload of a handle.
fn payload_of(token: &str) -> Vec<u8> {
    let (payload, _) = token["eeh_".len()..].split_once('.').unwrap();
    URL_SAFE_NO_PAD.decode(payload).unwrap()
}

fn simple(auth: &HandleAuthority, now: SystemTime) -> String {
    auth.mint_at(
        &MintRequest::new(["openai-key"], Duration::from_secs(600)),
        now,
    )
    .unwrap()
    .handle
}

fn expect_invalid(auth: &HandleAuthority, token: &str) {
    match auth.verify(token, t0()) {
        Err(e @ HandleError::Invalid(_)) => assert_eq!(e.code(), "handle_invalid"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Replaces the character at `idx` with a different one from the same base64 "value class"
/// (so the result is still canonical base64 when `idx` is not the last character).
fn replace_char(token: &str, idx: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[idx] = if bytes[idx] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn round_trip_with_full_scope() {
    let (_dir, auth) = authority();
    let minted = auth.mint_at(&full_request(), t0()).unwrap();
    assert!(minted.handle.starts_with("eeh_"));
    assert!(minted.handle.len() <= egress_handle::MAX_TOKEN_LEN);
    assert_eq!(minted.id.len(), 32);
    assert_eq!(minted.expires_at, t0() + Duration::from_secs(900));

    let claims = auth.verify(&minted.handle, t0()).unwrap();
    assert_eq!(claims.version(), 1);
    assert_eq!(claims.id(), minted.id);
    assert_eq!(claims.kid(), auth.kid());
    assert_eq!(claims.session(), Some("sbx-1"));
    assert_eq!(claims.credentials(), ["openai-key", "other-key"]);
    assert_eq!(claims.host(), Some("api.openai.com"));
    assert_eq!(claims.methods().unwrap(), ["POST", "GET"]);
    assert_eq!(claims.path_prefixes().unwrap(), ["/v1", "/files/"]);
    assert_eq!(claims.sandbox(), None);
    assert_eq!(claims.issued_at(), t0());
    assert_eq!(claims.expires_at(), minted.expires_at);

    claims
        .authorize(
            "openai-key",
            "api.openai.com",
            "POST",
            "/v1/chat/completions?x=1",
        )
        .unwrap();
    claims
        .authorize("other-key", "API.OPENAI.COM", "GET", "/files/abc")
        .unwrap();
    claims
        .authorize("openai-key", "api.openai.com", "GET", "/v1")
        .unwrap();
}

#[test]
fn minimal_handle_allows_any_host_method_path() {
    let (_dir, auth) = authority();
    let claims = auth.verify(&simple(&auth, t0()), t0()).unwrap();
    assert_eq!(claims.session(), None);
    assert_eq!(claims.host(), None);
    claims
        .authorize("openai-key", "anything.example", "DELETE", "/whatever/../x")
        .unwrap();
}

#[test]
fn round_trip_with_sandbox() {
    let (_dir, auth) = authority();
    let minted = auth.mint_at(&bound_request("sbx-a"), t0()).unwrap();
    let claims = auth.verify(&minted.handle, t0()).unwrap();
    assert_eq!(claims.version(), 1);
    assert_eq!(claims.id(), minted.id);
    assert_eq!(claims.sandbox(), Some("sbx-a"));
    assert_eq!(claims.session(), Some("sbx-1"));
    assert_eq!(claims.path_prefixes().unwrap(), ["/v1", "/files/"]);
    assert!(format!("{claims:?}").contains(r#"sandbox: Some("sbx-a")"#));
    // The binding is the proxy's check, not part of the request scope.
    claims
        .authorize("openai-key", "api.openai.com", "GET", "/v1")
        .unwrap();

    // A sandbox alone, on an otherwise minimal handle.
    let mut req = MintRequest::new(["openai-key"], Duration::from_secs(600));
    req.sandbox = Some("sbx-b".into());
    let claims = auth
        .verify(&auth.mint_at(&req, t0()).unwrap().handle, t0())
        .unwrap();
    assert_eq!(claims.sandbox(), Some("sbx-b"));
    assert_eq!(claims.session(), None);
}

#[test]
fn unbound_payload_has_no_extension_bytes() {
    let (_dir, auth) = authority();
    // header (41) + absent session + ["openai-key"] + absent host, methods, path prefixes.
    let plain = payload_of(&simple(&auth, t0()));
    assert_eq!(plain.len(), 41 + 1 + 1 + 1 + 10 + 3);
    assert!(plain.ends_with(b"\x01\x0aopenai-key\x00\x00\x00"));
    // Binding appends exactly one record: tag 1, then the sandbox as a string.
    let mut req = MintRequest::new(["openai-key"], Duration::from_secs(600));
    req.sandbox = Some("sbx-a".into());
    let bound = payload_of(&auth.mint_at(&req, t0()).unwrap().handle);
    assert_eq!(bound.len(), plain.len() + 7);
    assert!(bound.ends_with(b"\x01\x0aopenai-key\x00\x00\x00\x01\x05sbx-a"));
}

/// Public key and handles minted before extension records existed (state dir of that build).
const LEGACY_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAURgMXZ1DqDfk3bniHf8shpuzhmMurDxCKeJFmjKWepQ=
-----END PUBLIC KEY-----
";
/// `MintRequest::new(["openai-key"], 600 s)` at `t0()`.
const LEGACY_MINIMAL: (&str, &str) = (
    "eeh_AZKj7rFQhnKFyyW8dbJPhEcM_x7Lqejn0wAAAABoTuGAAAAAAGhO49gAAQpvcGVuYWkta2V5AAAA.\
     ysukYG1kK3ODrj7WllIbShSYmhswb2DMDp8LUT9qcmd50IznSgatzrFGAt7p3NAnDUHIyqxPcN2FuPKfc9svCA",
    "cb25bc75b24f84470cff1ecba9e8e7d3",
);
/// Session `sbx-1`, two credentials, `*.example.com`, GET/POST, `/v1/`, 900 s at `t0()`.
const LEGACY_FULL: (&str, &str) = (
    "eeh_AZKj7rFQhnKFmxwyHwlhzYlpJppG0--JoAAAAABoTuGAAAAAAGhO5QQBBXNieC0xAgpvcGVuYWkta2V5CW90\
     aGVyLWtleQENKi5leGFtcGxlLmNvbQECA0dFVARQT1NUAQEEL3YxLw.1Cx1S6qzrtg7K06R6Bz3CshrZkh0ViLjIIgiF\
     1CHaRAjzGfI2PmFjoIJbvkQ_Mj-yuEXr06nqYl-9N_Xr0h8Bw",
    "9b1c321f0961cd8969269a46d3ef89a0",
);

#[test]
fn handles_minted_before_extensions_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let key = VerifyingKey::from_pem(LEGACY_PUBLIC_KEY, std::path::Path::new("legacy")).unwrap();
    let revocations = RevocationList::load(&dir.path().join(REVOCATION_FILE), DEFAULT_MAX_TTL)
        .unwrap()
        .into();
    let verifier = Verifier::new(
        std::iter::once(key).collect::<KeyRing>(),
        revocations,
        DEFAULT_MAX_TTL,
    );
    let now = t0() + Duration::from_secs(1);

    let claims = verifier.verify(LEGACY_MINIMAL.0, now).unwrap();
    assert_eq!(claims.id(), LEGACY_MINIMAL.1);
    assert_eq!(claims.sandbox(), None);
    assert_eq!(claims.session(), None);
    assert_eq!(claims.credentials(), ["openai-key"]);
    assert_eq!(claims.issued_at(), t0());

    let claims = verifier.verify(LEGACY_FULL.0, now).unwrap();
    assert_eq!(claims.id(), LEGACY_FULL.1);
    assert_eq!(claims.sandbox(), None);
    assert_eq!(claims.session(), Some("sbx-1"));
    assert_eq!(claims.credentials(), ["openai-key", "other-key"]);
    assert_eq!(claims.host(), Some("*.example.com"));
    assert_eq!(claims.methods().unwrap(), ["GET", "POST"]);
    assert_eq!(claims.path_prefixes().unwrap(), ["/v1/"]);
    assert_eq!(claims.expires_at(), t0() + Duration::from_secs(900));
}

#[test]
fn sandbox_cannot_be_added_or_removed_under_the_signature() {
    let (_dir, auth) = authority();
    let bound = auth.mint_at(&bound_request("sbx-a"), t0()).unwrap().handle;
    let unbound = auth.mint_at(&full_request(), t0()).unwrap().handle;
    let resign = |token: &str, payload: &[u8]| {
        let sig = token.split_once('.').unwrap().1;
        format!("eeh_{}.{sig}", URL_SAFE_NO_PAD.encode(payload))
    };
    // Dropping the record (tag, length, "sbx-a") from a bound handle.
    let mut payload = payload_of(&bound);
    payload.truncate(payload.len() - 7);
    expect_invalid(&auth, &resign(&bound, &payload));
    // Adding one to an unbound handle, or rebinding to another sandbox.
    let mut payload = payload_of(&unbound);
    payload.extend_from_slice(b"\x01\x05sbx-a");
    expect_invalid(&auth, &resign(&unbound, &payload));
    let mut payload = payload_of(&bound);
    let last = payload.len() - 1;
    payload[last] = b'b';
    expect_invalid(&auth, &resign(&bound, &payload));
}

#[test]
fn handles_are_unique() {
    let (_dir, auth) = authority();
    let a = auth.mint_at(&full_request(), t0()).unwrap();
    let b = auth.mint_at(&full_request(), t0()).unwrap();
    assert_ne!(a.id, b.id);
    assert_ne!(a.handle, b.handle);
}

#[test]
fn tampered_payload_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    let dot = token.find('.').unwrap();
    for idx in [5, 10, 20, dot / 2, dot - 2] {
        expect_invalid(&auth, &replace_char(&token, idx));
    }
    // Re-encoding a modified payload (credential renamed) under the original signature.
    let (payload, sig) = token["eeh_".len()..].split_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let forged = format!("eeh_{}.{sig}", URL_SAFE_NO_PAD.encode(&bytes));
    expect_invalid(&auth, &forged);
}

#[test]
fn tampered_signature_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    let dot = token.find('.').unwrap();
    for idx in [dot + 1, dot + 40, token.len() - 2] {
        expect_invalid(&auth, &replace_char(&token, idx));
    }
}

#[test]
fn other_authoritys_handle_is_invalid() {
    let (_d1, a) = authority();
    let (_d2, b) = authority();
    assert_ne!(a.kid(), b.kid());
    let token = simple(&a, t0());
    match b.verify(&token, t0()) {
        Err(HandleError::Invalid(reason)) => assert!(reason.contains("unknown key")),
        other => panic!("expected unknown key, got {other:?}"),
    }
}

#[test]
fn truncated_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    for cut in [1, 2, 3, 10, 86, 87, 100] {
        expect_invalid(&auth, &token[..token.len() - cut]);
    }
    let dot = token.find('.').unwrap();
    // Payload shortened, signature intact.
    expect_invalid(&auth, &format!("{}{}", &token[..dot - 4], &token[dot..]));
    expect_invalid(&auth, "eeh_");
    expect_invalid(&auth, "eeh_.");
    expect_invalid(&auth, "");
}

#[test]
fn padded_base64_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    expect_invalid(&auth, &format!("{token}=="));
    let (payload, sig) = token.split_once('.').unwrap();
    expect_invalid(&auth, &format!("{payload}=.{sig}"));
    expect_invalid(&auth, &format!("{payload}==.{sig}"));
}

#[test]
fn non_canonical_base64_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    // 64 signature bytes leave 2 unused low bits in the last character: setting them gives a
    // string that lenient decoders map to the same bytes.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *token.as_bytes().last().unwrap();
    let value = alphabet.iter().position(|c| *c == last).unwrap();
    assert_eq!(value & 0b11, 0, "canonical encoding has zero trailing bits");
    let mut bytes = token.clone().into_bytes();
    *bytes.last_mut().unwrap() = alphabet[value | 0b01];
    expect_invalid(&auth, &String::from_utf8(bytes).unwrap());
    // Standard-alphabet characters are not base64url.
    let dot = token.find('.').unwrap();
    let mut bytes = token.clone().into_bytes();
    bytes[dot + 5] = b'+';
    expect_invalid(&auth, &String::from_utf8(bytes).unwrap());
}

#[test]
fn extra_dots_are_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    expect_invalid(&auth, &format!("{token}."));
    expect_invalid(&auth, &format!("{token}.AAAA"));
    let mut with_dot = token.clone();
    with_dot.insert(10, '.');
    expect_invalid(&auth, &with_dot);
    expect_invalid(&auth, &token.replace('.', ""));
}

#[test]
fn wrong_prefix_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    let rest = &token[4..];
    for prefix in ["EEH_", "eeh-", "eex_", "", "xeeh_", " eeh_"] {
        expect_invalid(&auth, &format!("{prefix}{rest}"));
    }
    expect_invalid(&auth, &format!("{token} "));
}

#[test]
fn oversize_is_invalid() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    let dot = token.find('.').unwrap();
    let huge = format!("eeh_{}{}", "A".repeat(3000), &token[dot..]);
    match auth.verify(&huge, t0()) {
        Err(HandleError::Invalid(reason)) => assert_eq!(reason, "too long"),
        other => panic!("expected too long, got {other:?}"),
    }
}

#[test]
fn expiry_is_enforced() {
    let (_dir, auth) = authority();
    let token = simple(&auth, t0());
    let exp = t0() + Duration::from_secs(600);
    auth.verify(&token, exp - Duration::from_secs(1)).unwrap();
    for now in [exp, exp + Duration::from_secs(3600)] {
        match auth.verify(&token, now) {
            Err(e @ HandleError::Expired) => assert_eq!(e.code(), "handle_expired"),
            other => panic!("expected Expired, got {other:?}"),
        }
    }
}

#[test]
fn issued_in_the_future_is_invalid_beyond_skew() {
    let (_dir, auth) = authority();
    let skewed = simple(&auth, t0() + Duration::from_secs(30));
    auth.verify(&skewed, t0()).unwrap();
    let future = simple(&auth, t0() + Duration::from_secs(120));
    match auth.verify(&future, t0()) {
        Err(HandleError::Invalid(reason)) => assert!(reason.contains("future")),
        other => panic!("expected future iat refusal, got {other:?}"),
    }
}

#[test]
fn lifetime_beyond_verifier_max_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let long = HandleAuthority::open(dir.path(), Duration::from_secs(7200)).unwrap();
    let token = long
        .mint_at(&MintRequest::new(["k"], Duration::from_secs(7200)), t0())
        .unwrap()
        .handle;
    // Same key, shorter max: a replica configured with 1h refuses a 2h handle.
    let short = HandleAuthority::open(dir.path(), Duration::from_secs(3600)).unwrap();
    assert!(matches!(
        short.verify(&token, t0()),
        Err(HandleError::Invalid(_))
    ));
    long.verify(&token, t0()).unwrap();
}

#[test]
fn revoked_by_id() {
    let (_dir, auth) = authority();
    let a = auth.mint_at(&full_request(), t0()).unwrap();
    let b = auth.mint_at(&full_request(), t0()).unwrap();
    auth.revoke_id(&a.id).unwrap();
    match auth.verify(&a.handle, t0()) {
        Err(e @ HandleError::Revoked) => assert_eq!(e.code(), "handle_revoked"),
        other => panic!("expected Revoked, got {other:?}"),
    }
    auth.verify(&b.handle, t0()).unwrap();
    // Uppercase ids are the same id.
    auth.revoke_id(&b.id.to_uppercase()).unwrap();
    assert!(matches!(
        auth.verify(&b.handle, t0()),
        Err(HandleError::Revoked)
    ));
    assert!(matches!(
        auth.revoke_id("not-an-id"),
        Err(HandleError::BadRequest(_))
    ));
}

#[test]
fn revoked_by_session() {
    let (_dir, auth) = authority();
    let now = SystemTime::now();
    let mut req = full_request();
    let in_session = auth.mint_at(&req, now).unwrap();
    req.session = Some("sbx-2".into());
    let other_session = auth.mint_at(&req, now).unwrap();
    let no_session = simple(&auth, now);

    auth.revoke_session("sbx-1").unwrap();
    assert!(matches!(
        auth.verify(&in_session.handle, now),
        Err(HandleError::Revoked)
    ));
    auth.verify(&other_session.handle, now).unwrap();
    auth.verify(&no_session, now).unwrap();

    // Handles minted for the session after the revocation (past the skew allowance) work.
    req.session = Some("sbx-1".into());
    let later = now + Duration::from_secs(120);
    let fresh = auth.mint_at(&req, later).unwrap();
    auth.verify(&fresh.handle, later).unwrap();
    assert!(matches!(
        auth.revoke_session("has space"),
        Err(HandleError::BadRequest(_))
    ));
}

#[test]
fn revoked_by_sandbox() {
    let (_dir, auth) = authority();
    let revoked_at = t0() + Duration::from_secs(10);
    let bound = auth.mint_at(&bound_request("sbx-a"), t0()).unwrap();
    let other_sandbox = auth.mint_at(&bound_request("sbx-b"), t0()).unwrap();
    let unbound = auth.mint_at(&full_request(), t0()).unwrap();
    // A session that happens to have the sandbox's name is a different key.
    let mut req = full_request();
    req.session = Some("sbx-a".into());
    let session_named_alike = auth.mint_at(&req, t0()).unwrap();
    // Issued after the revocation but within the clock-skew allowance: revoked too.
    let within_skew = auth
        .mint_at(&bound_request("sbx-a"), revoked_at + CLOCK_SKEW)
        .unwrap();
    // Issued after the revocation and the allowance: valid.
    let after = auth
        .mint_at(
            &bound_request("sbx-a"),
            revoked_at + CLOCK_SKEW + Duration::from_secs(1),
        )
        .unwrap();

    auth.revocations()
        .revoke_sandbox_at("sbx-a", revoked_at)
        .unwrap();
    assert_eq!(auth.revocations().counts(), (0, 0, 1));
    let now = t0() + Duration::from_secs(200);
    for revoked in [&bound, &within_skew] {
        match auth.verify(&revoked.handle, now) {
            Err(e @ HandleError::Revoked) => assert_eq!(e.code(), "handle_revoked"),
            other => panic!("expected Revoked, got {other:?}"),
        }
    }
    for valid in [&other_sandbox, &unbound, &session_named_alike, &after] {
        auth.verify(&valid.handle, now).unwrap();
    }

    // Sessions and sandboxes are separate keys: revoking session "sbx-1" revokes `after`
    // (bound to "sbx-a", session "sbx-1") but not the handle of session "sbx-a".
    auth.revocations()
        .revoke_session_at("sbx-1", revoked_at + Duration::from_secs(100))
        .unwrap();
    assert!(matches!(
        auth.verify(&after.handle, now),
        Err(HandleError::Revoked)
    ));
    auth.verify(&session_named_alike.handle, now).unwrap();
    assert_eq!(auth.revocations().counts(), (0, 1, 1));
}

#[test]
fn revoked_by_sandbox_through_the_authority() {
    let (_dir, auth) = authority();
    let now = SystemTime::now();
    let a = auth.mint_at(&bound_request("sbx-a"), now).unwrap();
    let b = auth.mint_at(&bound_request("sbx-b"), now).unwrap();
    auth.revoke(&RevokeTarget::Sandbox("sbx-a".into())).unwrap();
    assert!(matches!(
        auth.verify(&a.handle, now),
        Err(HandleError::Revoked)
    ));
    auth.verify(&b.handle, now).unwrap();
    auth.revoke_sandbox("sbx-b").unwrap();
    assert!(matches!(
        auth.verify(&b.handle, now),
        Err(HandleError::Revoked)
    ));
    assert_eq!(auth.revocations().counts(), (0, 0, 2));
    for name in ["has space", "", &"s".repeat(129)] {
        assert!(matches!(
            auth.revoke_sandbox(name),
            Err(HandleError::BadRequest(_))
        ));
        assert!(matches!(
            auth.revoke(&RevokeTarget::Sandbox(name.into())),
            Err(HandleError::BadRequest(_))
        ));
    }
}

#[test]
fn out_of_scope() {
    let (_dir, auth) = authority();
    let claims = auth
        .verify(&auth.mint_at(&full_request(), t0()).unwrap().handle, t0())
        .unwrap();
    let cases = [
        ("anthropic-key", "api.openai.com", "POST", "/v1/x"),
        ("openai-key", "api.openai.com.evil.com", "POST", "/v1/x"),
        ("openai-key", "evil.com", "POST", "/v1/x"),
        ("openai-key", "api.openai.com", "DELETE", "/v1/x"),
        ("openai-key", "api.openai.com", "post", "/v1/x"),
        ("openai-key", "api.openai.com", "POST", "/v2/x"),
        ("openai-key", "api.openai.com", "POST", "/v1beta"),
        ("openai-key", "api.openai.com", "POST", "/files"),
        ("openai-key", "api.openai.com", "POST", "/v1/../admin"),
        ("openai-key", "api.openai.com", "POST", "/v1/%2e%2e/admin"),
        ("openai-key", "api.openai.com", "POST", "*"),
    ];
    for (cred, host, method, path) in cases {
        match claims.authorize(cred, host, method, path) {
            Err(e @ HandleError::OutOfScope(_)) => assert_eq!(e.code(), "handle_out_of_scope"),
            other => panic!("{cred} {host} {method} {path}: expected OutOfScope, got {other:?}"),
        }
    }
}

#[test]
fn wildcard_host_scope() {
    let (_dir, auth) = authority();
    let mut req = MintRequest::new(["k"], Duration::from_secs(60));
    req.host = Some("*.Example.com".into());
    let claims = auth
        .verify(&auth.mint_at(&req, t0()).unwrap().handle, t0())
        .unwrap();
    assert_eq!(claims.host(), Some("*.example.com"));
    claims
        .authorize("k", "api.example.com", "GET", "/")
        .unwrap();
    claims
        .authorize("k", "a.b.EXAMPLE.com", "GET", "/")
        .unwrap();
    for host in [
        "example.com",
        "badexample.com",
        "example.com.evil",
        "evil.com",
        "",
    ] {
        assert!(
            matches!(
                claims.authorize("k", host, "GET", "/"),
                Err(HandleError::OutOfScope(_))
            ),
            "{host}"
        );
    }
}

#[test]
fn mint_refusals() {
    let (_dir, auth) = authority();
    let ok = || MintRequest::new(["openai-key"], Duration::from_secs(60));
    let refuse = |req: MintRequest| {
        let err = auth.mint_at(&req, t0()).unwrap_err();
        assert_eq!(err.code(), "bad_request", "{err}");
        err.to_string()
    };

    let mut r = ok();
    r.ttl = Duration::ZERO;
    assert!(refuse(r).contains("ttl"));
    let mut r = ok();
    r.ttl = Duration::from_millis(500);
    refuse(r);
    let mut r = ok();
    r.ttl = Duration::from_secs(7200);
    let msg = refuse(r);
    assert!(msg.contains("1h"), "{msg}");
    let mut r = ok();
    r.ttl = DEFAULT_MAX_TTL;
    auth.mint_at(&r, t0()).unwrap();

    refuse(MintRequest::new(
        Vec::<String>::new(),
        Duration::from_secs(60),
    ));
    refuse(MintRequest::new([""], Duration::from_secs(60)));
    refuse(MintRequest::new(["has space"], Duration::from_secs(60)));
    refuse(MintRequest::new(["a".repeat(129)], Duration::from_secs(60)));
    refuse(MintRequest::new(["dup", "dup"], Duration::from_secs(60)));
    refuse(MintRequest::new(
        (0..9).map(|i| format!("k{i}")),
        Duration::from_secs(60),
    ));
    for host in [
        "",
        "*",
        "a.*.com",
        "exa mple.com",
        "-a.com",
        "a..com",
        "http://a.com",
    ] {
        let mut r = ok();
        r.host = Some(host.into());
        refuse(r);
    }
    let mut r = ok();
    r.session = Some("tab\there".into());
    refuse(r);
    // The value is quoted with control characters replaced and capped at 64 characters.
    let long = "s".repeat(129);
    let capped = format!("{:?}…", "s".repeat(64));
    for (sandbox, shown) in [
        ("has space", r#""has space""#),
        ("", r#""""#),
        ("tab\there", r#""tab?here""#),
        (&long, &capped),
    ] {
        let mut r = ok();
        r.sandbox = Some(sandbox.into());
        let msg = refuse(r);
        assert!(
            msg.contains(&format!(
                "sandbox {shown} is invalid: use 1 to 128 printable ASCII characters without \
                 spaces"
            )),
            "{msg}"
        );
    }
    let mut r = ok();
    r.sandbox = Some("s".repeat(128));
    auth.mint_at(&r, t0()).unwrap();
    let mut r = ok();
    r.methods = Some(vec![]);
    refuse(r);
    let mut r = ok();
    r.methods = Some(vec!["GE T".into()]);
    refuse(r);
    let mut r = ok();
    r.methods = Some(vec!["get".into(), "GET".into()]);
    refuse(r);
    for prefix in ["v1", "", "/v1/../x", "/v1?x", "/a b"] {
        let mut r = ok();
        r.path_prefixes = Some(vec![prefix.into()]);
        refuse(r);
    }
    // Every field at its maximum does not fit in 2048 bytes: refused, not truncated.
    let mut r = MintRequest::new(
        (0..8).map(|i| format!("{i}{}", "c".repeat(127))),
        Duration::from_secs(60),
    );
    r.path_prefixes = Some((0..8).map(|i| format!("/{i}{}", "p".repeat(126))).collect());
    assert!(refuse(r).contains("2048"));
}

#[test]
fn errors_never_contain_the_handle() {
    let (_d1, a) = authority();
    let (_d2, b) = authority();
    let token = simple(&a, t0());
    let payload = &token[4..token.find('.').unwrap()];
    let errors = [
        b.verify(&token, t0()).unwrap_err(),
        a.verify(&replace_char(&token, 20), t0()).unwrap_err(),
        a.verify(&token, t0() + Duration::from_secs(10_000))
            .unwrap_err(),
        a.verify(&format!("{token}x"), t0()).unwrap_err(),
    ];
    for err in errors {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(payload), "{text}");
            assert!(!text.contains(&token[20..40]), "{text}");
        }
    }
}

#[test]
fn random_mutations_never_verify() {
    let (_dir, auth) = authority();
    let token = auth.mint_at(&full_request(), t0()).unwrap().handle;
    auth.verify(&token, t0()).unwrap();
    // xorshift64*: deterministic, no dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut tried = 0;
    for _ in 0..3000 {
        let mut bytes = token.clone().into_bytes();
        let rounds = 1 + (next() % 3) as usize;
        for _ in 0..rounds {
            let idx = (next() as usize) % bytes.len();
            match next() % 4 {
                0 => bytes[idx] ^= 1 << (next() % 8),
                1 => bytes[idx] = (next() % 256) as u8,
                2 => {
                    bytes.remove(idx);
                }
                _ => bytes.insert(idx, (next() % 128) as u8),
            }
        }
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        if mutated == token {
            continue;
        }
        tried += 1;
        assert!(
            auth.verify(&mutated, t0()).is_err(),
            "mutation verified: {mutated}"
        );
    }
    assert!(tried > 2900);
}
