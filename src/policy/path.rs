//! Request-path rules for bumped destinations: [`normalize`] turns a request target's path into
//! the one form path rules are matched against, and [`PathPattern`] is one rule's path from
//! config (an allow list such as `paths: ["/v1/"]`, or a deny rule's
//! `paths: ["/*/*/git-receive-pack"]`).
//!
//! Normalisation is for matching only: the proxy forwards the guest's original path unchanged.
//! It fails closed: a path this module cannot read one way only is a [`PathError`], and the
//! caller refuses the request rather than guess how the upstream server will read it.
//!
//! # Normalisation
//!
//! [`normalize`], in order:
//!
//! 1. cuts the target at the first `?` or `#` (queries and fragments are not matched). An empty
//!    path becomes `/`; any other must start with `/`, so the `*` of `OPTIONS *` and an
//!    absolute-form `http://…` target are errors (pass the origin form, the URI's path and query);
//! 2. refuses a raw `\` or a raw control character (0x00–0x1F, 0x7F) anywhere in the path;
//! 3. splits the path on `/` and, in each segment:
//!    - cuts Tomcat-style path parameters from the first raw `;`, before decoding (`..;foo` is
//!      `..`, `v1;x=y` is `v1`);
//!    - percent-decodes (a bad escape such as `%G1` or a cut-off `%4` is an error);
//!    - refuses a decoded `/` or `\` (an encoded separator, `%2F`/`%5C`), a decoded `%` followed
//!      by two hex digits (double encoding, `%252e`), a decoded control character (`%00`), and
//!      decoded bytes that are not UTF-8 (which also refuses overlong forms such as `%C0%AE`);
//!    - keeps a decoded `;` (from `%3B`) as data, not as a parameter separator; but a segment
//!      whose text before that `;` is `.` or `..` (`%2e%2e%3Bx`) is an error, because a server
//!      that decodes before cutting parameters reads it as a dot segment;
//! 4. drops empty segments (servers such as nginx merge `//`), and resolves dot segments as
//!    RFC 3986 `remove_dot_segments` does, on the decoded segments: `.` goes, `..` removes the
//!    segment before it and stops at the root (`/../a` is `/a`);
//! 5. joins what is left as `/seg/seg`, decoded (not re-encoded: `/%76%31/` is `/v1/`, `/%3B`
//!    is `/;`), ending in `/` when the last segment was empty, `.` or `..` (`/v1/` stays `/v1/`,
//!    `/v1//` is `/v1/`, `/a/b/..` is `/a/`), and `/` when nothing is left.
//!
//! Every check applies to every segment, including those a later `..` removes. A result never
//! has an empty, `.` or `..` segment, a `\` or a control character. Normalising a result again
//! gives the same result, except where the result has a `%`, `;`, `?` or `#`: those come only
//! from escapes and are data in the result (re-escaped, such a result normalises to itself).
//!
//! A path with no `%`, `;`, `//` or `.`/`..` segment (the common case) is checked in one pass and
//! copied once; otherwise the result is built in one buffer, without allocating per segment.
//!
//! # Patterns
//!
//! A [`PathPattern`] starts with `/` and is written as decoded text: no `?`, `#`, `%`, `\`, `;`,
//! whitespace or control characters, no `.`/`..` segments, no empty segments except a trailing
//! `/`, at most 32 segments and 1024 bytes. A segment that is exactly `*` matches any one
//! non-empty segment; `*` inside a segment is an error. Matching is by whole segments,
//! case-sensitive, as a prefix: `/v1/` matches `/v1/` and everything below it (not `/v1`, not
//! `/v1x`); `/v1` matches `/v1` itself and everything below it (`/v1/`, `/v1/x`, not `/v1x`);
//! `/` matches every path.
//!
//! # Not done here
//!
//! Methods, hosts and queries are not matched here. Paths compare case-sensitively, bytes as
//! decoded: no case folding, no Unicode normalisation, no look-alike dots (`．`), no
//! Windows readings (trailing dots or spaces, `::$DATA`, short names), no `+` as space, and a
//! decoded `;` is never a parameter separator. An upstream server that reads paths in one of those
//! ways can see a different path from the one matched, so a deny rule is only as strict as the
//! server's reading agrees with this one; an allow list (`paths`) fails closed.

use std::fmt;

/// Why a request path cannot be matched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path (after cutting the query) is neither empty nor starts with `/`.
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// A raw `\`, which some servers read as `/`.
    #[error("the path has a backslash")]
    Backslash,
    /// A raw or decoded byte 0x00–0x1F or 0x7F.
    #[error("the path has a control character or NUL")]
    ControlChar,
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-escape")]
    MalformedEscape,
    /// `%2F` or `%5C`: a separator hidden inside a segment.
    #[error("the path has an encoded '/' or '\\' (%2F/%5C)")]
    EncodedSeparator,
    /// `%25` followed by two hex digits: a second decoding would read something else.
    #[error("the path is double-encoded (%25 followed by hex)")]
    DoubleEncoded,
    /// A `.` or `..` segment followed by an encoded `;` (`%3B`), a dot segment to a server that
    /// decodes before cutting path parameters.
    #[error("the path has a '.' or '..' segment followed by an encoded ';' (%3B)")]
    EncodedParameterDot,
    /// Decoded bytes that are not UTF-8.
    #[error("the decoded path is not UTF-8")]
    NotUtf8,
}

/// Normalises a request target's path (a query `?…` and fragment `#…` are cut off first) for
/// matching; the rules are in the [module documentation](self).
pub fn normalize(target: &str) -> Result<String, PathError> {
    let path = target
        .split_once(['?', '#'])
        .map_or(target, |(path, _)| path);
    if path.is_empty() {
        return Ok("/".to_owned());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let mut escaped = false;
    for &b in path.as_bytes() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b if is_control(b) => return Err(PathError::ControlChar),
            b'%' | b';' => escaped = true,
            _ => {}
        }
    }
    if !escaped && already_resolved(rest) {
        return Ok(path.to_owned());
    }
    resolve(rest)
}

/// True when `rest` (the path after its leading `/`) has no empty segment but a last one, and no
/// dot segment.
fn already_resolved(rest: &str) -> bool {
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return false,
            "" if segments.peek().is_some() => return false,
            _ => {}
        }
    }
    true
}

/// The slow path: decodes, checks and resolves each segment of `rest` (the path after its
/// leading `/`, already free of raw `\` and control characters) into one buffer.
fn resolve(rest: &str) -> Result<String, PathError> {
    let mut out: Vec<u8> = Vec::with_capacity(rest.len() + 2);
    let mut trailing_slash = false;
    for raw in rest.split('/') {
        let raw = raw
            .split_once(';')
            .map_or(raw, |(segment, _params)| segment);
        let start = out.len();
        out.push(b'/');
        decode_into(raw.as_bytes(), &mut out)?;
        let segment = out.get(start + 1..).unwrap_or_default();
        check_decoded(segment)?;
        match segment {
            b"" | b"." => {
                out.truncate(start);
                trailing_slash = true;
            }
            b".." => {
                out.truncate(start);
                let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(parent);
                trailing_slash = true;
            }
            _ => trailing_slash = false,
        }
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Appends `raw` percent-decoded to `out`, refusing malformed escapes and decoded separators and
/// control characters.
fn decode_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = raw.get(i + 1).copied().and_then(hex_value);
        let lo = raw.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::MalformedEscape);
        };
        let decoded = (hi << 4) | lo;
        match decoded {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            d if is_control(d) => return Err(PathError::ControlChar),
            _ => {}
        }
        out.push(decoded);
        i += 3;
    }
    Ok(())
}

/// The checks on one decoded segment: double encoding, UTF-8, and a dot segment before a decoded
/// `;`.
fn check_decoded(segment: &[u8]) -> Result<(), PathError> {
    if segment
        .windows(3)
        .any(|w| matches!(w, [b'%', hi, lo] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit()))
    {
        return Err(PathError::DoubleEncoded);
    }
    if std::str::from_utf8(segment).is_err() {
        return Err(PathError::NotUtf8);
    }
    if let Some(semicolon) = segment.iter().position(|&b| b == b';')
        && matches!(segment.get(..semicolon), Some(b"." | b".."))
    {
        return Err(PathError::EncodedParameterDot);
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// The most segments a [`PathPattern`] may have.
const MAX_SEGMENTS: usize = 32;
/// The longest [`PathPattern`], in bytes.
const MAX_LEN: usize = 1024;

/// A path pattern from config: `/v1/`, `/v1`, `/*/*/git-receive-pack`, `/`. The syntax and the
/// matching rules are in the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    /// As written; the only spelling of this pattern.
    raw: String,
    /// The segments between the leading `/` and the trailing `/`, if any.
    segments: Vec<Segment>,
    /// Written with a trailing `/` (or `/` itself): matches only paths that continue below the
    /// segments, not the bare segments.
    below: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Exactly this text.
    Literal(Box<str>),
    /// `*`: any one non-empty segment.
    Any,
}

impl PathPattern {
    /// Parses a pattern from config; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<PathPattern, String> {
        if raw.len() > MAX_LEN {
            return Err(format!(
                "a path pattern is at most {MAX_LEN} bytes, this one has {}",
                raw.len()
            ));
        }
        let shown = raw.escape_debug();
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(format!("`{shown}`: a path pattern starts with '/'"));
        };
        if let Some(c) = raw.chars().find(|&c| {
            matches!(c, '?' | '#' | '%' | '\\' | ';') || c.is_whitespace() || c.is_control()
        }) {
            let why = match c {
                '?' | '#' => "no query or fragment ('?', '#'): only the path is matched",
                '%' => {
                    "no percent-escapes ('%'): paths are matched decoded, so write the characters themselves"
                }
                '\\' => "no backslash: paths with one are refused",
                ';' => "no ';': path parameters are cut off before matching",
                _ => "no whitespace or control characters",
            };
            return Err(format!("`{shown}`: a path pattern has {why}"));
        }
        if rest.is_empty() {
            return Ok(PathPattern {
                raw: raw.to_owned(),
                segments: Vec::new(),
                below: true,
            });
        }
        let (body, below) = match rest.strip_suffix('/') {
            Some(body) => (body, true),
            None => (rest, false),
        };
        let mut segments = Vec::new();
        for segment in body.split('/') {
            let parsed = match segment {
                "" => {
                    return Err(format!(
                        "`{shown}`: a path pattern has no empty segments ('//'); only a trailing '/' is allowed"
                    ));
                }
                "." | ".." => {
                    return Err(format!(
                        "`{shown}`: a path pattern has no '.' or '..' segments: paths are matched after they are resolved"
                    ));
                }
                "*" => Segment::Any,
                s if s.contains('*') => {
                    return Err(format!(
                        "`{shown}`: '*' stands for one whole segment ('/a/*/b'), not part of one"
                    ));
                }
                s => Segment::Literal(s.into()),
            };
            segments.push(parsed);
            if segments.len() > MAX_SEGMENTS {
                return Err(format!(
                    "`{shown}`: a path pattern has at most {MAX_SEGMENTS} segments"
                ));
            }
        }
        Ok(PathPattern {
            raw: raw.to_owned(),
            segments,
            below,
        })
    }

    /// True when the pattern covers `normalized`, which is [`normalize`]'s output. Walks the
    /// path without allocating.
    pub fn matches(&self, normalized: &str) -> bool {
        let Some(rest) = normalized.strip_prefix('/') else {
            return false;
        };
        let mut path = rest.split('/');
        for segment in &self.segments {
            let Some(got) = path.next() else {
                return false;
            };
            let same = match segment {
                Segment::Any => !got.is_empty(),
                Segment::Literal(want) => **want == *got,
            };
            if !same {
                return false;
            }
        }
        // Below `/v1/` means a further segment, even the empty one of `/v1/` itself.
        !self.below || path.next().is_some()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use PathError::*;

    #[test]
    fn normalize_table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            // Plain paths are returned as they are.
            ("/", Ok("/")),
            ("", Ok("/")),
            ("/v1", Ok("/v1")),
            ("/v1/", Ok("/v1/")),
            ("/v1/models", Ok("/v1/models")),
            ("/V1/Models", Ok("/V1/Models")),
            ("/a.b/.c/..d/...", Ok("/a.b/.c/..d/...")),
            ("/*", Ok("/*")),
            ("/caf\u{e9}", Ok("/caf\u{e9}")),
            ("/a b", Ok("/a b")),
            // Query and fragment.
            ("/v1/a?x=/../..", Ok("/v1/a")),
            ("/v1/a#/../..", Ok("/v1/a")),
            ("/v1/a?", Ok("/v1/a")),
            ("?x", Ok("/")),
            ("#x", Ok("/")),
            ("/v1/a?x=%zz\\", Ok("/v1/a")),
            ("/v1/%2e%2e?q", Ok("/")),
            // Not origin form.
            ("*", Err(NotAbsolute)),
            ("v1/a", Err(NotAbsolute)),
            ("http://a.test/v1/", Err(NotAbsolute)),
            ("%2Fv1", Err(NotAbsolute)),
            // Empty segments.
            ("//v1//a", Ok("/v1/a")),
            ("/v1//", Ok("/v1/")),
            ("//", Ok("/")),
            ("///", Ok("/")),
            ("/a//b/", Ok("/a/b/")),
            // Dot segments.
            ("/v1/./../admin", Ok("/admin")),
            ("/v1/../admin", Ok("/admin")),
            ("/../a", Ok("/a")),
            ("/../../a/../../b", Ok("/b")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/./b", Ok("/a/b")),
            ("/.", Ok("/")),
            ("/..", Ok("/")),
            ("/a/..", Ok("/")),
            ("/a//../b", Ok("/b")),
            ("/a/b/../../..", Ok("/")),
            // Path parameters, cut before decoding.
            ("/v1/..;/admin", Ok("/admin")),
            ("/v1/..;foo/admin", Ok("/admin")),
            ("/v1;x=y/models", Ok("/v1/models")),
            ("/v1/.;x/a", Ok("/v1/a")),
            ("/;x/a", Ok("/a")),
            ("/a/;x", Ok("/a/")),
            ("/v1;/", Ok("/v1/")),
            ("/v1/%2e%2e;x/admin", Ok("/admin")),
            ("/a;%zz/b", Ok("/a/b")),
            ("/a;%2F/b", Ok("/a/b")),
            // Encoded dots.
            ("/v1/%2e%2e/admin", Ok("/admin")),
            ("/v1/%2E%2E/admin", Ok("/admin")),
            ("/v1/%2E%2e/admin", Ok("/admin")),
            ("/v1/.%2e/admin", Ok("/admin")),
            ("/v1/%2e./admin", Ok("/admin")),
            ("/v1/%2e/admin", Ok("/v1/admin")),
            ("/v1/%2e%2e", Ok("/")),
            ("/v1/a%2eb", Ok("/v1/a.b")),
            ("/v1/%2e%2e%2e", Ok("/v1/...")),
            // Decoding.
            ("/%76%31/models", Ok("/v1/models")),
            ("/v1/%3B", Ok("/v1/;")),
            ("/v1/%3b", Ok("/v1/;")),
            ("/v1/a%3Bx/b", Ok("/v1/a;x/b")),
            ("/v1/%3F", Ok("/v1/?")),
            ("/v1/%23", Ok("/v1/#")),
            ("/v1/%25", Ok("/v1/%")),
            ("/v1/%25zz", Ok("/v1/%zz")),
            ("/v1/%25/41", Ok("/v1/%/41")),
            ("/v1/%20", Ok("/v1/ ")),
            ("/caf%C3%A9", Ok("/caf\u{e9}")),
            ("/caf%c3%a9", Ok("/caf\u{e9}")),
            // Encoded separators.
            ("/v1/%2Fadmin", Err(EncodedSeparator)),
            ("/v1/%2fadmin", Err(EncodedSeparator)),
            ("/v1/%5cadmin", Err(EncodedSeparator)),
            ("/v1/%5Cadmin", Err(EncodedSeparator)),
            ("/v1/..%2F..%2Fadmin", Err(EncodedSeparator)),
            ("/v1/%2F/../a", Err(EncodedSeparator)),
            // Double encoding.
            ("/v1/%252e%252e/admin", Err(DoubleEncoded)),
            ("/v1/%252F", Err(DoubleEncoded)),
            ("/v1/%25%32%65", Err(DoubleEncoded)),
            ("/v1/a%2541", Err(DoubleEncoded)),
            // Malformed escapes.
            ("/v1/%G1", Err(MalformedEscape)),
            ("/v1/%4", Err(MalformedEscape)),
            ("/v1/%", Err(MalformedEscape)),
            ("/v1/%%41", Err(MalformedEscape)),
            ("/v1/%4/a", Err(MalformedEscape)),
            ("/v1/%\u{e9}", Err(MalformedEscape)),
            // Backslashes.
            ("/v1\\admin", Err(Backslash)),
            ("/v1/..\\admin", Err(Backslash)),
            ("/v1/a;\\", Err(Backslash)),
            ("\\v1", Err(NotAbsolute)),
            // Control characters.
            ("/a/%00", Err(ControlChar)),
            ("/a/%0a", Err(ControlChar)),
            ("/a/%1F", Err(ControlChar)),
            ("/a/%7f", Err(ControlChar)),
            ("/a/\0", Err(ControlChar)),
            ("/a/\tb", Err(ControlChar)),
            ("/a/b\r\n", Err(ControlChar)),
            ("/a;\u{7f}/b", Err(ControlChar)),
            ("/%00/../a", Err(ControlChar)),
            // Not UTF-8.
            ("/a/%FF", Err(NotUtf8)),
            ("/a/%C3", Err(NotUtf8)),
            ("/a/%C3/%A9", Err(NotUtf8)),
            ("/a/%C0%AE%C0%AE/b", Err(NotUtf8)),
            ("/%FF/../a", Err(NotUtf8)),
            // A dot segment before an encoded ';'.
            ("/v1/..%3Bx/admin", Err(EncodedParameterDot)),
            ("/v1/%2e%2e%3B/admin", Err(EncodedParameterDot)),
            ("/v1/.%3b", Err(EncodedParameterDot)),
            ("/v1/...%3Bx", Ok("/v1/...;x")),
            ("/v1/%3B../a", Ok("/v1/;../a")),
        ];
        for (input, want) in cases {
            let want = want.clone().map(str::to_owned);
            assert_eq!(normalize(input), want, "normalize({input:?})");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            EncodedSeparator.to_string(),
            "the path has an encoded '/' or '\\' (%2F/%5C)"
        );
        assert_eq!(
            DoubleEncoded.to_string(),
            "the path is double-encoded (%25 followed by hex)"
        );
        assert_eq!(
            MalformedEscape.to_string(),
            "the path has a malformed percent-escape"
        );
        assert_eq!(Backslash.to_string(), "the path has a backslash");
        assert_eq!(
            ControlChar.to_string(),
            "the path has a control character or NUL"
        );
        assert_eq!(NotAbsolute.to_string(), "the path does not start with '/'");
        assert_eq!(NotUtf8.to_string(), "the decoded path is not UTF-8");
    }

    #[test]
    fn fast_path_is_the_slow_path() {
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/v1/models",
            "/a.b/.c/..d/...",
            "/*",
            "/caf\u{e9}",
        ] {
            assert!(already_resolved(&path[1..]), "{path}");
            assert_eq!(resolve(&path[1..]).as_deref(), Ok(path), "{path}");
        }
    }

    #[test]
    fn pattern_parse_errors() {
        let long_segment = format!("/{}", "a".repeat(MAX_LEN));
        let many_segments = "/a".repeat(MAX_SEGMENTS + 1);
        let cases: &[(&str, &str)] = &[
            ("", "starts with '/'"),
            ("v1/", "starts with '/'"),
            ("*", "starts with '/'"),
            ("/v1?x", "query"),
            ("/v1#x", "fragment"),
            ("/v1/%2e", "percent-escapes"),
            ("/v1\\a", "backslash"),
            ("/v1;x", "';'"),
            ("/v1 a", "whitespace"),
            ("/v1\ta", "whitespace"),
            ("/v1\u{0}", "control"),
            ("/v1/\u{85}", "whitespace or control"),
            ("//", "empty segments"),
            ("//v1", "empty segments"),
            ("/v1//", "empty segments"),
            ("/v1//a", "empty segments"),
            ("/.", "'.' or '..'"),
            ("/v1/./a", "'.' or '..'"),
            ("/v1/../", "'.' or '..'"),
            ("/v1/..", "'.' or '..'"),
            ("/a*b", "whole segment"),
            ("/v1/*x", "whole segment"),
            ("/**", "whole segment"),
            (&long_segment, "at most 1024 bytes"),
            (&many_segments, "at most 32 segments"),
        ];
        for (raw, want) in cases {
            match PathPattern::parse(raw) {
                Ok(p) => panic!("{raw:?} parsed as {p:?}"),
                Err(e) => assert!(e.contains(want), "{raw:?}: {e:?} lacks {want:?}"),
            }
        }
        for raw in [
            format!("/{}", "a".repeat(MAX_LEN - 1)),
            "/a".repeat(MAX_SEGMENTS),
            format!("{}/", "/a".repeat(MAX_SEGMENTS)),
            format!("{}/", "/*".repeat(MAX_SEGMENTS)),
        ] {
            assert!(PathPattern::parse(&raw).is_ok(), "{raw}");
        }
        // The message quotes the pattern with control characters escaped.
        assert_eq!(
            PathPattern::parse("/a\nb").err().as_deref(),
            Some("`/a\\nb`: a path pattern has no whitespace or control characters")
        );
    }

    #[test]
    fn pattern_display_round_trips() {
        for raw in [
            "/",
            "/v1",
            "/v1/",
            "/*",
            "/*/",
            "/*/*/git-receive-pack",
            "/a.b/...",
            "/caf\u{e9}/",
            "/V1/Models",
        ] {
            let p = match PathPattern::parse(raw) {
                Ok(p) => p,
                Err(e) => panic!("{raw}: {e}"),
            };
            assert_eq!(p.to_string(), raw);
            assert_eq!(PathPattern::parse(&p.to_string()), Ok(p.clone()));
            assert!(p.matches(raw), "{raw} matches itself");
            assert_eq!(normalize(raw).as_deref(), Ok(raw), "{raw} is normalized");
        }
        assert_ne!(PathPattern::parse("/v1"), PathPattern::parse("/v1/"));
    }

    #[test]
    fn pattern_matches_table() {
        let cases: &[(&str, &str, bool)] = &[
            // A trailing '/': strictly below.
            ("/v1/", "/v1/", true),
            ("/v1/", "/v1/models", true),
            ("/v1/", "/v1/models/x/", true),
            ("/v1/", "/v1", false),
            ("/v1/", "/v1x", false),
            ("/v1/", "/v1x/", false),
            ("/v1/", "/", false),
            ("/v1/", "/V1/", false),
            ("/v1/", "/v2/v1/", false),
            ("/v1/models/", "/v1/", false),
            ("/v1/models/", "/v1/models/a", true),
            // No trailing '/': the path itself and below.
            ("/v1", "/v1", true),
            ("/v1", "/v1/", true),
            ("/v1", "/v1/x", true),
            ("/v1", "/v1x", false),
            ("/v1", "/v", false),
            ("/v1", "/", false),
            ("/v1/models", "/v1/models", true),
            ("/v1/models", "/v1/models/1", true),
            ("/v1/models", "/v1/models2", false),
            ("/v1/models", "/v1/", false),
            ("/v1/models", "/v1", false),
            // The root matches everything.
            ("/", "/", true),
            ("/", "/a", true),
            ("/", "/a/b/", true),
            // Wildcards: one whole non-empty segment.
            ("/*", "/", false),
            ("/*", "/a", true),
            ("/*", "/a/b", true),
            ("/*/", "/a", false),
            ("/*/", "/a/", true),
            ("/*/", "/a/b", true),
            ("/a/*/c", "/a/b/c", true),
            ("/a/*/c", "/a/c", false),
            ("/a/*/c", "/a/b/d/c", false),
            (
                "/*/*/git-receive-pack",
                "/org/repo.git/git-receive-pack",
                true,
            ),
            (
                "/*/*/git-receive-pack",
                "/org/repo.git/git-receive-pack/x",
                true,
            ),
            (
                "/*/*/git-receive-pack",
                "/org/repo.git/git-upload-pack",
                false,
            ),
            ("/*/*/git-receive-pack", "/org/git-receive-pack", false),
            ("/*/*/git-receive-pack", "/a/b/c/git-receive-pack", false),
            (
                "/*/*/git-receive-pack",
                "/org/repo.git/git-receive-packs",
                false,
            ),
            // Not a normalized path: never matches.
            ("/", "", false),
            ("/", "v1", false),
            ("/v1", "v1", false),
        ];
        for (pattern, path, want) in cases {
            let p = match PathPattern::parse(pattern) {
                Ok(p) => p,
                Err(e) => panic!("{pattern}: {e}"),
            };
            assert_eq!(p.matches(path), *want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn tricks_do_not_pass_an_allow_rule() {
        let allow = PathPattern::parse("/v1/").unwrap();
        for trick in [
            "/v1/..;/admin",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2E/admin",
            "/v1/%2E%2e/admin",
            "/v1/.%2e/admin",
            "/v1/./../admin",
            "/v1/models/../../admin",
            "/v1;x/../admin",
            "/v1/%2Fadmin/..",
            "/v1/%252e%252e/admin",
            "/v1/..%3Bx/admin",
            "/v1\\..\\admin",
        ] {
            let allowed = normalize(trick).is_ok_and(|p| allow.matches(&p));
            assert!(!allowed, "{trick} passes /v1/");
        }
        for fine in [
            "/v1/",
            "/v1/models",
            "/v1//models",
            "/v1/a/../models",
            "/v1;x/models",
        ] {
            let allowed = normalize(fine).is_ok_and(|p| allow.matches(&p));
            assert!(allowed, "{fine} is refused by /v1/");
        }
    }

    /// RFC 3986 section 5.2.4, as written, on a string.
    fn rfc_remove_dot_segments(path: &str) -> String {
        let mut input = path.to_owned();
        let mut output = String::new();
        while !input.is_empty() {
            if let Some(r) = input.strip_prefix("../") {
                input = r.to_owned();
            } else if let Some(r) = input.strip_prefix("./") {
                input = r.to_owned();
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".to_owned();
            } else if input.starts_with("/../") || input == "/.." {
                let len = if input == "/.." { 3 } else { 4 };
                input.replace_range(..len, "/");
                let cut = output.rfind('/').unwrap_or(0);
                output.truncate(cut);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let from = usize::from(input.starts_with('/'));
                let end = input[from..].find('/').map_or(input.len(), |i| i + from);
                output.push_str(&input[..end]);
                input.replace_range(..end, "");
            }
        }
        output
    }

    /// The generated paths' meaning, by a different route: cut parameters, decode the dots, merge
    /// slashes, then the RFC algorithm.
    fn reference(path: &str) -> String {
        let mut s = path.replace(";x", "");
        for dot in ["%2e", "%2E"] {
            s = s.replace(dot, ".");
        }
        while s.contains("//") {
            s = s.replace("//", "/");
        }
        let out = rfc_remove_dot_segments(&s);
        if out.is_empty() { "/".to_owned() } else { out }
    }

    #[test]
    fn generated_paths_normalize_to_a_fixed_point() {
        const PARTS: [&str; 9] = ["a", "v1", ".", "..", "%2e", "%2E%2e", "..;x", "", ".%2E"];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut checked = 0;
        for _ in 0..600 {
            let count = (next() % 7) as usize;
            let mut path = String::new();
            for _ in 0..count {
                path.push('/');
                path.push_str(PARTS[(next() % PARTS.len() as u64) as usize]);
            }
            if next() % 4 == 0 {
                path.push('/');
            }
            let got = match normalize(&path) {
                Ok(p) => p,
                Err(e) => panic!("{path:?}: {e}"),
            };
            assert!(got.starts_with('/'), "{path:?} -> {got:?}");
            for bad in ["/./", "/../", "//"] {
                assert!(!got.contains(bad), "{path:?} -> {got:?}");
            }
            assert!(
                !got.ends_with("/.") && !got.ends_with("/.."),
                "{path:?} -> {got:?}"
            );
            assert_eq!(normalize(&got).as_deref(), Ok(got.as_str()), "{path:?}");
            if !path.is_empty() {
                assert_eq!(got, reference(&path), "{path:?}");
            }
            checked += 1;
        }
        assert_eq!(checked, 600);
    }

    #[test]
    fn rfc_reference_examples() {
        assert_eq!(rfc_remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(rfc_remove_dot_segments("mid/content=5/../6"), "mid/6");
        assert_eq!(rfc_remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(normalize("/a/b/c/./../../g").as_deref(), Ok("/a/g"));
    }
}
