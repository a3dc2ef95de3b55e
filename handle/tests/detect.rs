#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Finding and redacting handles in request bytes and log text (exfiltration checks, log
//! hygiene): every way a handle could hide, each with its classification, and the negatives.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use egress_handle::{
    DEFAULT_MAX_TTL, Defect, HandleAuthority, MintRequest, Origin, Shape, contains_handle,
    find_handles, looks_like_handle, redact, redact_in, scan,
};

struct Fixture {
    _dir: tempfile::TempDir,
    auth: HandleAuthority,
    h: String,
    other: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let auth = HandleAuthority::open(dir.path(), DEFAULT_MAX_TTL).unwrap();
    let mint = || {
        auth.mint(&MintRequest::new(["openai-key"], Duration::from_secs(60)))
            .unwrap()
            .handle
    };
    let (h, other) = (mint(), mint());
    Fixture {
        _dir: dir,
        auth,
        h,
        other,
    }
}

fn pct_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const WF: Shape = Shape::WellFormed;
fn bad(d: Defect) -> Shape {
    Shape::Malformed(d)
}

/// One expected candidate: shape, origin and (when given) exact text.
type Want = (Shape, Origin, Option<String>);

fn want(shape: Shape, origin: Origin, text: Option<&str>) -> Want {
    (shape, origin, text.map(str::to_owned))
}

#[test]
fn classifies_every_hiding_form() {
    let f = fixture();
    let (h, other) = (f.h.as_str(), f.other.as_str());
    let hb = h.as_bytes();
    let dot = h.find('.').unwrap();
    let body = &h[4..];
    let user_b64 = |s: &str| STANDARD.encode(format!("user:{s}"));
    use Defect::*;
    use Origin::{Basic, PercentDecoded, Raw};

    let cases: Vec<(&str, Vec<u8>, Vec<Want>)> = vec![
        // Positives that are exactly a handle.
        (
            "bare token, as a method",
            hb.to_vec(),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "after Bearer",
            format!("Bearer {h}").into(),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "two handles",
            format!("{h},{other}").into(),
            vec![want(WF, Raw, Some(h)), want(WF, Raw, Some(other))],
        ),
        (
            "non-ASCII byte before",
            cat(&[b"\xff", hb]),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "non-ASCII byte after",
            cat(&[hb, b"\xe9"]),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "latin-1 elsewhere in the value",
            cat(&[b"Bearer ", hb, b"; caf\xe9"]),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "in a URI query",
            format!("/v1/models?key={h}&x=1").into(),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "as a path segment",
            format!("/v1/{h}/x").into(),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "followed by an encoded space",
            format!("/v1?q={h}%20next").into(),
            vec![want(WF, Raw, Some(h))],
        ),
        // Percent-encoding.
        (
            "dot as %2E",
            h.replace('.', "%2E").into(),
            vec![
                want(bad(Truncated), Raw, Some(&h[..dot])),
                want(bad(PercentEncoded), PercentDecoded, Some(h)),
            ],
        ),
        (
            "dot as %2e in a URI query",
            format!("/v1?key={}&x=1", h.replace('.', "%2e")).into(),
            vec![
                want(bad(Truncated), Raw, Some(&h[..dot])),
                want(bad(PercentEncoded), PercentDecoded, Some(h)),
            ],
        ),
        (
            "every character percent-encoded",
            format!("/v1?key={}", pct_all(h)).into(),
            vec![want(bad(PercentEncoded), PercentDecoded, Some(h))],
        ),
        (
            "prefix e as %65",
            format!("%65eh_{body}").into(),
            vec![want(bad(PercentEncoded), PercentDecoded, Some(h))],
        ),
        (
            "prefix _ as %5F",
            format!("Bearer eeh%5F{body}").into(),
            vec![want(bad(PercentEncoded), PercentDecoded, Some(h))],
        ),
        (
            "whole prefix encoded, upper case",
            format!("%45%45%48%5f{body}").into(),
            vec![want(
                bad(PercentEncoded),
                PercentDecoded,
                Some(&format!("EEH_{body}")),
            )],
        ),
        (
            "prefix encoded twice",
            format!("%2565eh_{body}").into(),
            vec![want(bad(PercentEncoded), PercentDecoded, Some(h))],
        ),
        (
            "prefix encoded three times",
            format!("%252565eh_{body}").into(),
            vec![want(bad(PercentEncoded), PercentDecoded, Some(h))],
        ),
        (
            "extended by an encoded character",
            format!("{h}%41").into(),
            vec![
                want(WF, Raw, Some(h)),
                want(bad(PercentEncoded), PercentDecoded, Some(&format!("{h}A"))),
            ],
        ),
        // Wrong length.
        (
            "truncated by one",
            h[..h.len() - 1].into(),
            vec![want(bad(Truncated), Raw, None)],
        ),
        (
            "signature missing",
            h[..dot].into(),
            vec![want(bad(Truncated), Raw, None)],
        ),
        (
            "signature empty",
            h[..=dot].into(),
            vec![want(bad(Truncated), Raw, None)],
        ),
        (
            "payload too short",
            format!("eeh_AAAA{}", &h[dot..]).into(),
            vec![want(bad(Truncated), Raw, None)],
        ),
        (
            "prefix alone",
            b"Bearer eeh_".to_vec(),
            vec![want(bad(Truncated), Raw, Some("eeh_"))],
        ),
        (
            "extended by a character",
            format!("{h}x").into(),
            vec![want(bad(Extended), Raw, Some(&format!("{h}x")))],
        ),
        (
            "extended by a dot",
            format!("token {h}.").into(),
            vec![want(bad(Extended), Raw, None)],
        ),
        (
            "extended by a segment",
            format!("{h}.abc").into(),
            vec![want(bad(Extended), Raw, None)],
        ),
        (
            "payload extended",
            format!("{}AAAA{}", &h[..dot], &h[dot..]).into(),
            vec![want(bad(Undecodable), Raw, None)],
        ),
        (
            "payload cut",
            format!("{}{}", &h[..dot - 4], &h[dot..]).into(),
            vec![want(bad(Undecodable), Raw, None)],
        ),
        (
            "too long",
            format!("eeh_{}.{}", "A".repeat(3000), "A".repeat(86)).into(),
            vec![want(bad(TooLong), Raw, None)],
        ),
        // Case and glue.
        (
            "upper-case prefix",
            format!("EEH_{body}").into(),
            vec![want(bad(PrefixCase), Raw, None)],
        ),
        (
            "mixed-case prefix",
            format!("eEh_{body}").into(),
            vec![want(bad(PrefixCase), Raw, None)],
        ),
        (
            "capitalised prefix",
            format!("Bearer Eeh_{body}").into(),
            vec![want(bad(PrefixCase), Raw, None)],
        ),
        (
            "all upper case",
            h.to_uppercase().into(),
            vec![want(bad(PrefixCase), Raw, None)],
        ),
        (
            "glued to a word",
            format!("x{h}").into(),
            vec![want(bad(Embedded), Raw, Some(h))],
        ),
        (
            "inside a word",
            b"cheeh_x".to_vec(),
            vec![want(bad(Embedded), Raw, Some("eeh_x"))],
        ),
        (
            "after an encoded space",
            format!("/v1?q=hello%20{h}").into(),
            vec![want(WF, Raw, Some(h))],
        ),
        (
            "after an encoded letter",
            format!("/v1?q=%41{h}").into(),
            vec![want(bad(Embedded), Raw, Some(h))],
        ),
        (
            "after an underscore",
            format!("my_{h}").into(),
            vec![want(bad(Embedded), Raw, None)],
        ),
        // Malformed.
        (
            "short junk",
            b"eeh_abc.def".to_vec(),
            vec![want(bad(Truncated), Raw, None)],
        ),
        (
            "bad characters",
            b"eeh_!!!".to_vec(),
            vec![want(bad(Truncated), Raw, Some("eeh_"))],
        ),
        (
            "non-ASCII byte inside",
            cat(&[&hb[..20], b"\xff", &hb[20..]]),
            vec![want(bad(Truncated), Raw, Some(&h[..20]))],
        ),
        (
            "right lengths, not a payload",
            format!("eeh_{}.{}", "A".repeat(dot - 4), "A".repeat(86)).into(),
            vec![want(bad(Undecodable), Raw, None)],
        ),
        (
            "repeated prefix",
            "eeh_".repeat(10).into(),
            vec![want(bad(Truncated), Raw, None)],
        ),
        // Basic credentials.
        (
            "inside Basic",
            format!("Basic {}", user_b64(h)).into(),
            vec![want(WF, Basic, Some(h))],
        ),
        (
            "inside basic, unpadded, handle first",
            format!("basic {}", STANDARD_NO_PAD.encode(format!("{h}:"))).into(),
            vec![want(WF, Basic, Some(h))],
        ),
        (
            "inside BASIC, tab, URL-safe alphabet",
            format!("BASIC\t{}", URL_SAFE.encode(format!("user:{h}"))).into(),
            vec![want(WF, Basic, Some(h))],
        ),
        (
            "inside Basic, stray trailing character",
            format!("Basic {}x", STANDARD.encode(format!("u:{h}!"))).into(),
            vec![want(WF, Basic, Some(h))],
        ),
        (
            "inside Basic, truncated",
            format!("Basic {}", user_b64(&h[..h.len() - 1])).into(),
            vec![want(bad(Truncated), Basic, None)],
        ),
        (
            "inside Basic, upper case",
            format!("Basic {}", user_b64(&format!("EEH_{body}"))).into(),
            vec![want(bad(PrefixCase), Basic, None)],
        ),
        (
            "inside Basic, prefix percent-encoded",
            format!("Basic {}", user_b64(&format!("%65eh_{body}"))).into(),
            vec![want(bad(PercentEncoded), Basic, Some(h))],
        ),
        (
            "Basic percent-encoded in a URI",
            format!("/x?auth=Basic%20{}", user_b64(h).replace('=', "%3D")).into(),
            vec![want(bad(PercentEncoded), Basic, Some(h))],
        ),
    ];

    let now = SystemTime::now();
    for (name, input, expected) in &cases {
        let found = scan(input);
        let got: Vec<(Shape, Origin)> = found
            .candidates()
            .iter()
            .map(|c| (c.shape(), c.origin()))
            .collect();
        let want_pairs: Vec<(Shape, Origin)> = expected.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(got, want_pairs, "{name}");
        for (c, (_, _, text)) in found.candidates().iter().zip(expected) {
            if let Some(text) = text {
                assert_eq!(c.text(), text, "{name}");
            }
            // Every well-formed candidate here is a real handle, exact and ready to verify.
            // (A malformed one is refused whatever its text would verify to.)
            if c.is_well_formed() {
                assert!(f.auth.verify(c.text(), now).is_ok(), "{name}");
            }
            assert_eq!(c.defect().is_none(), c.is_well_formed(), "{name}");
        }
        assert_eq!(
            found.first_malformed().is_some(),
            expected.iter().any(|w| w.0 != WF),
            "{name}"
        );
        // The string helpers agree whenever the input is text.
        if let Ok(text) = std::str::from_utf8(input) {
            assert!(contains_handle(text), "{name}");
            assert_eq!(find_handles(text).len(), expected.len(), "{name}");
        }
    }
}

#[test]
fn well_formed_means_followed_by_a_delimiter() {
    let f = fixture();
    let h = f.h.as_str();
    for delim in [
        &b" "[..],
        b",",
        b";",
        b"\"",
        b"'",
        b"&",
        b"/",
        b"?",
        b"#",
        b"=",
        b":",
        b")",
        b"%",
        b"\n",
        b"\t",
        b"\0",
        b"\xff",
        b"\xc3\xa9",
        b"",
    ] {
        // The delimiter, then more text (or the end of the input).
        let more: &[u8] = if delim.is_empty() { b"" } else { b"rest" };
        let input = cat(&[b"\"", h.as_bytes(), delim, more]);
        let found = scan(&input);
        assert_eq!(found.candidates().len(), 1, "{delim:?}");
        let c = &found.candidates()[0];
        assert_eq!(c.shape(), Shape::WellFormed, "{delim:?}");
        assert_eq!(c.text(), h);
        assert_eq!(c.span(), 1..1 + h.len());
    }
    for glue in ["x", "A", "0", "-", "_", "."] {
        let input = format!("{h}{glue}");
        let found = scan(input.as_bytes());
        assert_eq!(
            found.candidates()[0].shape(),
            Shape::Malformed(Defect::Extended),
            "{glue}"
        );
    }
    // A forged signature has the right shape: it is well-formed, and verification refuses it.
    let dot = h.find('.').unwrap();
    let mut forged = h.as_bytes().to_vec();
    forged[dot + 10] = if forged[dot + 10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(scan(forged.as_bytes()).candidates()[0].is_well_formed());
    assert!(f.auth.verify(&forged, SystemTime::now()).is_err());
}

#[test]
fn sandbox_bound_handles_are_well_formed() {
    let f = fixture();
    let mut req = MintRequest::new(["openai-key"], Duration::from_secs(60));
    req.session = Some("s".repeat(128));
    req.sandbox = Some("x".repeat(128));
    let h = f.auth.mint(&req).unwrap().handle;
    // Longer than any unbound handle of the fixture, and still exactly a handle.
    assert!(h.len() > f.h.len() + 300, "{}", h.len());
    assert_eq!(
        f.auth
            .verify(&h, SystemTime::now())
            .unwrap()
            .sandbox()
            .map(str::len),
        Some(128)
    );
    let input = format!("Bearer {h}, {}", f.h);
    let found = scan(input.as_bytes());
    let shapes: Vec<_> = found
        .candidates()
        .iter()
        .map(|c| (c.shape(), c.origin(), c.text().to_owned()))
        .collect();
    assert_eq!(
        shapes,
        [
            (Shape::WellFormed, Origin::Raw, h.clone()),
            (Shape::WellFormed, Origin::Raw, f.h.clone()),
        ]
    );
    assert!(looks_like_handle(&h));
    assert_eq!(find_handles(&input), [h.as_str(), f.h.as_str()]);
    let basic = format!("Basic {}", STANDARD.encode(format!("user:{h}")));
    let found = scan(basic.as_bytes());
    assert_eq!(found.candidates().len(), 1);
    assert_eq!(found.candidates()[0].shape(), Shape::WellFormed);
    assert_eq!(found.candidates()[0].origin(), Origin::Basic);
    let encoded = pct_all(&h);
    let found = scan(encoded.as_bytes());
    assert_eq!(
        found.candidates()[0].shape(),
        Shape::Malformed(Defect::PercentEncoded)
    );
    assert!(!redact_in(&input).contains(&h[..20]));
    let extended = format!("{h}.");
    assert_eq!(
        scan(extended.as_bytes()).candidates()[0].shape(),
        Shape::Malformed(Defect::Extended)
    );

    // A payload with an extension record this build does not know is not a handle's shape
    // (the signature is irrelevant here: the detector does not check it).
    let (payload, sig) = h[4..].split_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
    bytes.extend_from_slice(b"\x03\x05other");
    let unknown = format!("eeh_{}.{sig}", URL_SAFE_NO_PAD.encode(&bytes));
    assert_eq!(
        scan(unknown.as_bytes()).candidates()[0].shape(),
        Shape::Malformed(Defect::Undecodable)
    );
    assert!(!looks_like_handle(&unknown));
}

#[test]
fn ignores_strings_without_the_prefix() {
    let f = fixture();
    let h = f.h.as_str();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let all_bytes: Vec<u8> = (0..=255).collect();
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"Bearer sk-proj-abcdef123456".to_vec(),
        b"eeh".to_vec(),
        b"ee_h_ e_eh_ eeh-x eeh\xff_".to_vec(),
        h.replacen("eeh_", "eeh-", 1).into(),
        jwt.into(),
        format!("Basic {}", STANDARD.encode("user:password")).into(),
        format!("Basic {}", STANDARD.encode(jwt)).into(),
        b"Basic !!! basic".to_vec(),
        b"100% sure, %zz %6 %".to_vec(),
        b"e%2Eh_ %65%2Eh_ e%25h_".to_vec(),
        b"no letters here: 0123 456".to_vec(),
        all_bytes,
        b"\xc3\xa9\xff\xfe caf\xe9".to_vec(),
    ];
    for input in &cases {
        assert!(
            scan(input).is_empty(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        if let Ok(text) = std::str::from_utf8(input) {
            assert!(find_handles(text).is_empty(), "{text}");
            assert!(!contains_handle(text), "{text}");
            assert!(matches!(redact_in(text), Cow::Borrowed(_)), "{text}");
        }
    }
}

#[test]
fn spans_point_into_the_input() {
    let f = fixture();
    let h = f.h.as_str();
    let body = &h[4..];
    let input = format!("a {h} b %65eh_{body} c Basic {} d", STANDARD.encode(h));
    let found = scan(input.as_bytes());
    let spans: Vec<_> = found.candidates().iter().map(|c| c.span()).collect();
    assert_eq!(spans.len(), 3, "{found:?}");
    assert_eq!(&input[spans[0].clone()], h);
    // Raw first, then Basic credentials of the raw bytes, then the percent-decoded layer.
    assert_eq!(&input[spans[1].clone()], STANDARD.encode(h));
    assert_eq!(&input[spans[2].clone()], format!("%65eh_{body}"));
}

#[test]
fn string_helpers_build_on_scan() {
    let f = fixture();
    let (h, other) = (f.h.as_str(), f.other.as_str());
    assert!(looks_like_handle(h));
    assert!(!looks_like_handle(&format!("{h}x")));
    assert!(!looks_like_handle(&format!(" {h}")));
    assert!(!looks_like_handle(&format!("{h} ")));
    assert!(!looks_like_handle(&format!("EEH_{}", &h[4..])));
    assert_eq!(find_handles(h), [h]);
    assert_eq!(find_handles(&format!("Bearer {h}")), [h]);
    assert_eq!(find_handles(&format!("/v1?key={h}&x=1")), [h]);
    assert_eq!(find_handles(&format!("{h},{other}")), [h, other]);
    let basic = STANDARD.encode(format!("user:{h}"));
    assert_eq!(find_handles(&format!("Basic {basic}")), [h]);
    assert!(contains_handle(&format!("BASIC  {basic}")));
    // Malformed candidates are returned too, so a caller that verifies each refuses them.
    assert_eq!(find_handles(&format!("token {h}.")), [format!("{h}.")]);
    assert_eq!(find_handles("x EEH_abc"), ["EEH_abc"]);
    assert!(contains_handle("eeh_"));
}

#[test]
fn redaction_keeps_prefix_and_six_characters() {
    let f = fixture();
    let h = f.h.as_str();
    let r = redact(h);
    assert_eq!(r, format!("{}…", &h[..10]));
    assert!(r.chars().count() <= 11);
    assert_eq!(redact("eeh_ab"), "eeh_ab…");
    assert_eq!(redact("sk-live-secret"), "…");
    assert_eq!(redact(""), "…");
    assert_eq!(redact("eeh_ääääääää"), "eeh_…");
}

#[test]
fn redact_in_leaves_no_whole_handle() {
    let f = fixture();
    let h = f.h.as_str();
    let dot = h.find('.').unwrap();
    let body = &h[4..];
    assert_eq!(redact_in(&format!("a {h} b")), format!("a {} b", redact(h)));
    assert_eq!(redact_in("header=EEH_abcdefghij;"), "header=EEH_abcdef…;");
    assert_eq!(redact_in("x eeh_ y"), "x eeh_… y");
    assert_eq!(redact_in("é eeh_abcdefgh é"), "é eeh_abcdef… é");

    let basic = STANDARD.encode(format!("user:{h}"));
    let line = format!(
        "GET /v1?key={h}&k2={} auth=\"Basic {basic}\" x-h: EEH_{body}, eEh_{body}. {}",
        h.replace('.', "%2E"),
        pct_all(h),
    );
    let out = redact_in(&line);
    for secret in [&h[10..], &h[dot..], &h[12..dot], &basic, &pct_all(h)[30..]] {
        assert!(!out.contains(secret), "{out}");
    }
    assert!(out.contains(&redact(h)), "{out}");
    assert!(out.contains("EEH_"), "{out}");
    assert!(out.starts_with("GET /v1?key="), "{out}");

    // Debug output of scan results is redacted as well.
    let dbg = format!("{:?}", scan(line.as_bytes()));
    assert!(!dbg.contains(&h[10..]), "{dbg}");
    assert!(dbg.contains("PercentEncoded"), "{dbg}");
}

/// Deterministic pseudo-random inputs (xorshift) from pieces that stress the scanner: prefix
/// fragments in both cases, escapes, `Basic`, delimiters and real handles.
#[test]
fn random_inputs_never_panic_and_redact_fully() {
    let f = fixture();
    let h = f.h.as_str();
    let basic = format!("Basic {}", STANDARD.encode(format!("u:{h}")));
    let escaped_dot = h.replace('.', "%2E");
    let pieces: Vec<&[u8]> = vec![
        b"e",
        b"E",
        b"h",
        b"H",
        b"_",
        b"eeh_",
        b"EEH_",
        b"%",
        b"%65",
        b"%5F",
        b"%2E",
        b"%25",
        b"2",
        b"5",
        b".",
        b" ",
        b",",
        b"=",
        b"A",
        b"x",
        b"\xff",
        b"\xc3\xa9",
        b"Basic ",
        b"ZWVoX",
        b"%20",
        h.as_bytes(),
        basic.as_bytes(),
        escaped_dot.as_bytes(),
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let n = (next() % 12) as usize;
        let input: Vec<u8> = (0..n)
            .flat_map(|_| {
                pieces[(next() % pieces.len() as u64) as usize]
                    .iter()
                    .copied()
            })
            .collect();
        let found = scan(&input);
        for c in found.candidates() {
            assert!(c.text().len() >= 4, "{input:?}");
            assert!(c.text()[..4].eq_ignore_ascii_case("eeh_"), "{input:?}");
            assert!(c.span().end <= input.len() && c.span().start < c.span().end);
        }
        if input.windows(h.len()).any(|w| w == h.as_bytes()) {
            assert!(!found.is_empty(), "{input:?}");
        }
        let text = String::from_utf8_lossy(&input);
        let redacted = redact_in(&text);
        assert!(!redacted.contains(h), "{text}");
        assert!(!redacted.contains(&h[10..]), "{text}");
        for c in scan(redacted.as_bytes()).candidates() {
            assert!(c.text().len() <= 10, "{text} -> {redacted}: {c:?}");
        }
    }
}
