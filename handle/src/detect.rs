//! Recognising handles in arbitrary text, for redaction in logs and for exfiltration checks
//! (a handle must never reach an upstream, in any header).
//!
//! [`find_handles`] looks for handle-shaped strings anywhere in a header value, including
//! inside `Basic` credentials (`base64(user:eeh_…)`). It is a shape check, deliberately
//! liberal about surrounding text and strict about the token's own structure; it verifies
//! nothing (that is `verify`). Percent-encoding or other encodings are not undone.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::token::{MAX_TOKEN_LEN, MIN_PAYLOAD_LEN, PREFIX, SIGNATURE_B64_LEN};

/// Characters shown after the prefix by [`redact`].
const REDACT_KEEP: usize = 6;
/// Base64 characters the smallest payload occupies.
const MIN_PAYLOAD_B64_LEN: usize = (MIN_PAYLOAD_LEN * 4).div_ceil(3);

/// Basic credentials come from many clients: accept padded or unpadded standard base64.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A loggable stand-in for a handle: `eeh_` and its first 6 characters, then `…`.
/// Anything not starting with `eeh_` is shown as `…` alone, since it may be a real secret.
pub fn redact(token: &str) -> String {
    match token.strip_prefix(PREFIX) {
        Some(rest) => {
            let shown: String = rest
                .chars()
                .take(REDACT_KEEP)
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            format!("{PREFIX}{shown}…")
        }
        None => "…".to_owned(),
    }
}

/// Whether `s` as a whole has the shape of a handle (prefix, base64url payload of plausible
/// length, one `.`, 86-character signature). Does not verify anything.
pub fn looks_like_handle(s: &str) -> bool {
    let Some(body) = s.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((payload, sig)) = body.split_once('.') else {
        return false;
    };
    s.len() <= MAX_TOKEN_LEN
        && payload.len() >= MIN_PAYLOAD_B64_LEN
        && sig.len() == SIGNATURE_B64_LEN
        && payload.bytes().all(is_b64url)
        && sig.bytes().all(is_b64url)
}

/// Every handle-shaped token in `haystack`: bare, after `Bearer`, in a query string, or inside
/// `Basic` credentials (those are returned decoded, hence `Cow`).
pub fn find_handles(haystack: &str) -> Vec<Cow<'_, str>> {
    let mut found: Vec<Cow<'_, str>> = find_raw(haystack).into_iter().map(Cow::Borrowed).collect();
    for decoded in basic_payloads(haystack) {
        for token in find_raw(&decoded) {
            found.push(Cow::Owned(token.to_owned()));
        }
    }
    found
}

/// Whether `haystack` contains anything [`find_handles`] would report.
pub fn contains_handle(haystack: &str) -> bool {
    !find_handles(haystack).is_empty()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn find_raw(haystack: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = haystack.get(from..).and_then(|rest| rest.find(PREFIX)) {
        let start = from + offset;
        let tail = &haystack.as_bytes()[start + PREFIX.len()..];
        let run = tail
            .iter()
            .take_while(|b| is_b64url(**b) || **b == b'.')
            .count();
        // A sentence-ending dot after a handle is not part of it.
        let candidate = haystack[start..start + PREFIX.len() + run].trim_end_matches('.');
        if looks_like_handle(candidate) {
            found.push(candidate);
            from = start + candidate.len();
        } else {
            from = start + PREFIX.len();
        }
    }
    found
}

/// Decoded texts of every `Basic <base64>` occurrence (scheme matched case-insensitively).
fn basic_payloads(haystack: &str) -> Vec<String> {
    const SCHEME: &[u8] = b"basic ";
    let bytes = haystack.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + SCHEME.len() <= bytes.len() {
        if !bytes[i..i + SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
            i += 1;
            continue;
        }
        let start = i + SCHEME.len();
        let start = start + bytes[start..].iter().take_while(|b| **b == b' ').count();
        let len = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(**b, b'+' | b'/' | b'='))
            .count();
        if let Ok(decoded) = BASIC_B64.decode(&bytes[start..start + len]) {
            out.push(String::from_utf8_lossy(&decoded).into_owned());
        }
        i = start + len.max(1);
    }
    out
}
