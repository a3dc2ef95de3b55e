#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Finding and redacting handles in header values (exfiltration checks, log hygiene).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use egress_handle::{
    DEFAULT_MAX_TTL, HandleAuthority, MintRequest, contains_handle, find_handles,
    looks_like_handle, redact,
};

fn two_handles() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let mint = || {
        auth.mint(&MintRequest::new(["openai-key"], Duration::from_secs(60)))
            .unwrap()
            .handle
    };
    let (a, b) = (mint(), mint());
    (dir, a, b)
}

#[test]
fn finds_bearer_raw_query_and_basic() {
    let (_dir, h, other) = two_handles();
    assert!(looks_like_handle(&h));
    assert_eq!(find_handles(&h), [h.as_str()]);
    assert_eq!(find_handles(&format!("Bearer {h}")), [h.as_str()]);
    assert_eq!(find_handles(&format!("/v1?key={h}&x=1")), [h.as_str()]);
    assert_eq!(find_handles(&format!("token {h}.")), [h.as_str()]);
    assert_eq!(
        find_handles(&format!("{h},{other}")),
        [h.as_str(), other.as_str()]
    );

    let basic = STANDARD.encode(format!("user:{h}"));
    assert_eq!(find_handles(&format!("Basic {basic}")), [h.as_str()]);
    let basic_no_pad = STANDARD_NO_PAD.encode(format!("{h}:"));
    assert_eq!(find_handles(&format!("basic {basic_no_pad}")), [h.as_str()]);
    assert!(contains_handle(&format!("BASIC  {basic}")));
}

#[test]
fn ignores_unrelated_strings() {
    let (_dir, h, _) = two_handles();
    let basic = STANDARD.encode("user:password");
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let dot = h.find('.').unwrap();
    for s in [
        "",
        "Bearer sk-proj-abcdef123456",
        "eeh_",
        "eeh_abc.def",
        jwt,
        &format!("Basic {basic}"),
        &format!("Basic {}", STANDARD.encode(jwt)),
        &h[..h.len() - 1],
        &h[..dot],
        &h.replacen("eeh_", "eeh-", 1),
    ] {
        assert!(find_handles(s).is_empty(), "{s}");
        assert!(!contains_handle(s), "{s}");
    }
    assert!(!looks_like_handle(&format!("{h}x")));
    assert!(!looks_like_handle(&format!(" {h}")));
}

#[test]
fn redaction_keeps_prefix_and_six_characters() {
    let (_dir, h, _) = two_handles();
    let r = redact(&h);
    assert_eq!(r, format!("{}…", &h[..10]));
    assert!(r.chars().count() <= 11);
    assert_eq!(redact("eeh_ab"), "eeh_ab…");
    assert_eq!(redact("sk-live-secret"), "…");
    assert_eq!(redact(""), "…");
    assert_eq!(redact("eeh_ääääääää"), "eeh_…");
}
