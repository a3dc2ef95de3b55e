//! Swapping a verified handle for the secret in place: inside a header value (the rest of the
//! value kept), inside `Basic` credentials (`user:handle` re-encoded as `user:secret`), or as
//! the value of a query parameter (percent-encoded).
//!
//! Only values that carry exactly the verified token are rewritten; this module verifies
//! nothing and never logs what it writes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Uri};

/// Why the swap could not be written. Never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the secret is not text that fits a header value")]
    NotHeaderText,
    #[error("the request URI cannot carry the credential")]
    BadUri,
    #[error("the handle is not where the credential swaps it")]
    NotFound,
}

/// Replaces `token` with `secret` in every header of `names` that carries it; returns how many
/// headers were rewritten.
pub fn in_headers(
    parts: &mut Parts,
    names: &[HeaderName],
    token: &str,
    secret: &str,
) -> Result<usize, SwapError> {
    let mut rewritten = 0;
    for name in names {
        let values: Vec<HeaderValue> = parts.headers.get_all(name).iter().cloned().collect();
        if values.is_empty() {
            continue;
        }
        let mut changed = false;
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match in_value(v.as_bytes(), token, secret)? {
                Some(new) => {
                    changed = true;
                    out.push(new);
                }
                None => out.push(v),
            }
        }
        if changed {
            rewritten += 1;
            parts.headers.remove(name);
            for v in out {
                parts.headers.append(name.clone(), v);
            }
        }
    }
    Ok(rewritten)
}

/// The value with `token` replaced, or `None` when it does not carry the token. Works on the
/// value's bytes, so the rest of a value that is not UTF-8 is kept exactly as sent.
fn in_value(value: &[u8], token: &str, secret: &str) -> Result<Option<HeaderValue>, SwapError> {
    let replaced = match replace_bytes(value, token.as_bytes(), secret.as_bytes()) {
        Some(r) => r,
        None => match std::str::from_utf8(value)
            .ok()
            .and_then(|text| in_basic(text, token, secret))
        {
            Some(basic) => basic.into_bytes(),
            None => return Ok(None),
        },
    };
    let mut hv = HeaderValue::from_bytes(&replaced).map_err(|_| SwapError::NotHeaderText)?;
    hv.set_sensitive(true);
    Ok(Some(hv))
}

/// `haystack` with every occurrence of `needle` replaced, or `None` when there is none.
fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut rest = haystack;
    let mut found = false;
    while let Some(i) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(with);
        rest = &rest[i + needle.len()..];
        found = true;
    }
    out.extend_from_slice(rest);
    found.then_some(out)
}

/// `Basic base64(user:token)` → `Basic base64(user:secret)`.
fn in_basic(text: &str, token: &str, secret: &str) -> Option<String> {
    let (scheme, b64) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD
        .decode(b64.trim().trim_end_matches('='))
        .or_else(|_| STANDARD.decode(b64.trim()))
        .ok()?;
    let creds = String::from_utf8(decoded).ok()?;
    if !creds.contains(token) {
        return None;
    }
    Some(format!(
        "{scheme} {}",
        STANDARD.encode(creds.replace(token, secret))
    ))
}

/// Replaces the value of query parameter `param` when it is exactly `token`; returns whether
/// it did.
pub fn in_query(
    parts: &mut Parts,
    param: &str,
    token: &str,
    secret: &str,
) -> Result<bool, SwapError> {
    let Some(query) = parts.uri.query() else {
        return Ok(false);
    };
    let mut changed = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if name == param && value == token => {
                changed = true;
                format!("{name}={}", percent_encode(secret))
            }
            _ => pair.to_owned(),
        })
        .collect();
    if !changed {
        return Ok(false);
    }
    let path = parts.uri.path();
    let pq = format!("{path}?{}", pairs.join("&"));
    let mut builder = Uri::builder().path_and_query(pq);
    if let Some(s) = parts.uri.scheme() {
        builder = builder.scheme(s.clone());
    }
    if let Some(a) = parts.uri.authority() {
        builder = builder.authority(a.clone());
    }
    parts.uri = builder.build().map_err(|_| SwapError::BadUri)?;
    Ok(true)
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn swaps_in_place_keeping_the_rest() {
        let mut p = parts(
            "/",
            &[("authorization", "Bearer eeh_T"), ("x-api-key", "eeh_T")],
        );
        let names = [
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("authorization"),
        ];
        assert_eq!(in_headers(&mut p, &names, "eeh_T", "sk-1").unwrap(), 2);
        assert_eq!(p.headers["authorization"], "Bearer sk-1");
        assert_eq!(p.headers["x-api-key"], "sk-1");
        assert!(p.headers["x-api-key"].is_sensitive());
    }

    #[test]
    fn bytes_around_the_handle_are_kept_exactly() {
        let mut p = parts("/", &[]);
        p.headers.insert(
            "x-api-key",
            HeaderValue::from_bytes(b"caf\xe9 eeh_T \xff").unwrap(),
        );
        let names = [HeaderName::from_static("x-api-key")];
        assert_eq!(in_headers(&mut p, &names, "eeh_T", "sk-1").unwrap(), 1);
        assert_eq!(p.headers["x-api-key"].as_bytes(), b"caf\xe9 sk-1 \xff");
    }

    #[test]
    fn swaps_inside_basic() {
        let v = format!("Basic {}", STANDARD.encode("git:eeh_T"));
        let mut p = parts("/", &[("authorization", v.as_str())]);
        let names = [HeaderName::from_static("authorization")];
        assert_eq!(
            in_headers(&mut p, &names, "eeh_T", "ghp_secret").unwrap(),
            1
        );
        let got = p.headers["authorization"].to_str().unwrap().to_owned();
        assert_eq!(got, format!("Basic {}", STANDARD.encode("git:ghp_secret")));
    }

    #[test]
    fn swaps_the_query_parameter_only() {
        let mut p = parts("https://a.test/v1/m?alt=json&key=eeh_T", &[]);
        assert!(in_query(&mut p, "key", "eeh_T", "AI za/+").unwrap());
        assert_eq!(
            p.uri.to_string(),
            "https://a.test/v1/m?alt=json&key=AI%20za%2F%2B"
        );
        let mut p = parts("/m?other=eeh_T", &[]);
        assert!(!in_query(&mut p, "key", "eeh_T", "s").unwrap());
    }

    #[test]
    fn refuses_secrets_that_cannot_be_header_text() {
        let mut p = parts("/", &[("x-api-key", "eeh_T")]);
        let names = [HeaderName::from_static("x-api-key")];
        assert!(in_headers(&mut p, &names, "eeh_T", "a\nb").is_err());
    }
}
