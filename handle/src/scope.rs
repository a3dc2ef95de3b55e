//! Syntax and matching of the scope fields of a handle: credential/session/sandbox names, host
//! patterns, HTTP methods and path prefixes.
//!
//! The same validators serve minting (after normalisation) and parsing (strictly, so a signed
//! token can only carry values a mint could have produced). Matching is pure string logic; this
//! module does not resolve names, decode percent-escapes or know about destinations.

/// Longest credential, secret, session or sandbox name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest host pattern (a DNS name is at most 253 characters).
pub const MAX_HOST_LEN: usize = 253;
/// Longest HTTP method token.
pub const MAX_METHOD_LEN: usize = 16;
/// Longest path prefix.
pub const MAX_PATH_PREFIX_LEN: usize = 128;
/// Most credentials one handle may name.
pub const MAX_CREDENTIALS: usize = 8;
/// Most methods one handle may list.
pub const MAX_METHODS: usize = 8;
/// Most path prefixes one handle may list.
pub const MAX_PATH_PREFIXES: usize = 8;

/// A credential, secret, session or sandbox name: 1..=128 printable ASCII characters, no whitespace.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Lowercases and strips one trailing dot; the result still has to pass [`valid_host_pattern`].
pub(crate) fn normalize_host_pattern(input: &str) -> String {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    trimmed.to_ascii_lowercase()
}

/// An exact lowercase DNS name (LDH labels) or `*.` followed by one.
pub(crate) fn valid_host_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.is_empty() || pattern.len() > MAX_HOST_LEN {
        return false;
    }
    name.split('.').all(valid_label)
}

fn valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && *first != b'-'
                && *last != b'-'
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// An uppercase method token such as `GET` or `M-SEARCH`.
pub(crate) fn valid_method(method: &str) -> bool {
    let bytes = method.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_METHOD_LEN
        && bytes[0].is_ascii_uppercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_')
}

/// A path prefix: starts with `/`, printable ASCII, no query/fragment, backslash or dot
/// segments (a prefix containing `..` could never be matched safely).
pub(crate) fn valid_path_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && prefix.len() <= MAX_PATH_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'\\')
        && !has_dot_segment(prefix)
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Whether `host` (a bare host name, no port) matches `pattern`, case-insensitively.
///
/// `*.suffix` matches strict subdomains only: `a.suffix` and `a.b.suffix`, never `suffix`.
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let Some(split) = host.len().checked_sub(suffix.len()) else {
                return false;
            };
            // `split >= 2` leaves at least one label character plus the dot.
            split >= 2
                && host.is_char_boundary(split)
                && host[split..].eq_ignore_ascii_case(suffix)
                && host.as_bytes().get(split - 1) == Some(&b'.')
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// Why a request path cannot be checked against prefixes, if it cannot.
///
/// Paths with dot segments or percent-encoded dots, slashes or backslashes could be read by the
/// upstream as a different path than the one matched here, so they are refused outright.
pub(crate) fn unsafe_path_reason(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("the request path is not absolute");
    }
    if path.contains('\\') || has_dot_segment(path) {
        return Some("the request path contains dot segments or backslashes");
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c"].iter().any(|enc| lower.contains(enc)) {
        return Some("the request path contains percent-encoded dots or slashes");
    }
    None
}

/// Strips the query and fragment from a request target's path.
pub(crate) fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// Segment-aware prefix match: `/v1` matches `/v1` and `/v1/x` but not `/v1beta`;
/// a prefix ending in `/` matches everything below it.
pub(crate) fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("openai-key"));
        assert!(valid_name(&"a".repeat(128)));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name("tab\t"));
        assert!(!valid_name("ünicode"));
    }

    #[test]
    fn host_patterns() {
        assert!(valid_host_pattern("api.openai.com"));
        assert!(valid_host_pattern("*.example.com"));
        assert!(valid_host_pattern("localhost"));
        assert!(valid_host_pattern("127.0.0.1"));
        assert!(!valid_host_pattern("API.openai.com"));
        assert!(!valid_host_pattern("*"));
        assert!(!valid_host_pattern("*."));
        assert!(!valid_host_pattern("a.*.com"));
        assert!(!valid_host_pattern("**.com"));
        assert!(!valid_host_pattern("-a.com"));
        assert!(!valid_host_pattern("a..com"));
        assert!(!valid_host_pattern("a.com."));
        assert!(!valid_host_pattern("a_b.com"));
        assert_eq!(normalize_host_pattern("API.OpenAI.com."), "api.openai.com");
    }

    #[test]
    fn host_matching() {
        assert!(host_matches("api.openai.com", "API.openai.com"));
        assert!(host_matches("api.openai.com", "api.openai.com."));
        assert!(!host_matches("api.openai.com", "api.openai.com.evil"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.EXAMPLE.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        // Non-ASCII input must not panic on a char boundary.
        assert!(!host_matches("*.example.com", "ääääääääääää"));
    }

    #[test]
    fn methods_and_paths() {
        assert!(valid_method("GET"));
        assert!(valid_method("M-SEARCH"));
        assert!(!valid_method("get"));
        assert!(!valid_method(""));
        assert!(!valid_method("-GET"));
        assert!(valid_path_prefix("/v1/"));
        assert!(!valid_path_prefix("v1"));
        assert!(!valid_path_prefix("/v1/../admin"));
        assert!(!valid_path_prefix("/v1?x"));
        assert!(path_matches("/v1", "/v1"));
        assert!(path_matches("/v1", "/v1/chat"));
        assert!(!path_matches("/v1", "/v1beta"));
        assert!(path_matches("/v1/", "/v1/chat"));
        assert!(!path_matches("/v1/", "/v1"));
        assert_eq!(path_only("/a/b?c=d#e"), "/a/b");
        assert!(unsafe_path_reason("/v1/../admin").is_some());
        assert!(unsafe_path_reason("/v1/%2E%2E/admin").is_some());
        assert!(unsafe_path_reason("/v1/a%2fb").is_some());
        assert!(unsafe_path_reason("relative").is_some());
        assert!(unsafe_path_reason("/v1/chat").is_none());
    }
}
