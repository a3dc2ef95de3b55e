//! The wire format of a handle, and its strict parser.
//!
//! ```text
//! handle    = "eeh_" b64url(payload) "." b64url(signature)      ; ≤ 2048 bytes, no padding
//! signature = Ed25519(key, "eeh-v1\0" || payload)                ; algorithm fixed by version 1
//! payload   = version:u8(=1) kid:[8] id:[16] iat:u64be exp:u64be
//!             session:opt(str) credentials:list host:opt(str)
//!             methods:opt(list) path_prefixes:opt(list)
//!             ext*                                               ; tags strictly increasing
//! ext       = tag:u8(≥1) value:str                               ; tag from the table below
//! opt(x)    = 0x00 | 0x01 x          list = count:u8(≥1) str*count
//! str       = len:u8(≥1) byte*len                                ; each 0x21..=0x7e
//! ```
//!
//! Extension records carry the optional claims added after the fixed layout:
//!
//! ```text
//! tag   claim     value
//! 0x01  sandbox   the sandbox the handle is bound to; same syntax as session
//! 0x02  issuer    the external issuer that signed it (see below); same syntax as session
//! ```
//!
//! A handle without an issuer record was signed by the edge's own key (`kid` names it). A
//! handle with one was minted by that issuer, a platform control plane for example, with its
//! own Ed25519 key: the verifier accepts it only if the key that verifies the signature is
//! one configured for that very issuer, so neither a key id nor an issuer name alone selects
//! a key. `docs/handle-format.md` is the minting specification for other languages.
//!
//! An absent claim writes no record, so a payload without records (every handle minted before
//! extensions existed) is unchanged and still valid. Records follow `path_prefixes` in strictly
//! increasing tag order, each tag at most once, and the payload ends with the last record.
//! Tag 0 is reserved and never valid. A tag the parser does not know makes the payload invalid
//! rather than being skipped, because a claim may be a restriction that a verifier ignoring it
//! would fail to enforce; a new claim takes the next unused tag, and a handle carrying it is
//! accepted only by verifiers that know that tag. The version stays 1: records extend it.
//!
//! There is exactly one encoding per set of claims: the parser rejects optional-field markers
//! other than 0x00 and 0x01; unknown, repeated or out-of-order extension tags; empty strings
//! and lists; bytes after the last field or record; non-canonical base64 and, as a final guard,
//! anything that does not re-encode to the same bytes. This module does not check signatures
//! (see `verify`) or timestamps and revocation; it only splits, decodes and encodes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::claims::Claims;
use crate::error::HandleError;

/// Every handle starts with this.
pub const PREFIX: &str = "eeh_";
/// Longest accepted handle, in bytes; fits comfortably in any HTTP header.
pub const MAX_TOKEN_LEN: usize = 2048;

/// The only format version; it also fixes the signature algorithm (Ed25519).
pub(crate) const VERSION: u8 = 1;
/// Domain separation so a signature over a handle can never be replayed as anything else.
pub(crate) const SIGNING_CONTEXT: &[u8] = b"eeh-v1\0";
pub(crate) const SIGNATURE_LEN: usize = 64;
/// base64url without padding of 64 bytes.
pub(crate) const SIGNATURE_B64_LEN: usize = 86;
/// version + kid + id + iat + exp.
const HEADER_LEN: usize = 1 + 8 + 16 + 8 + 8;
/// Header plus the smallest possible tail (absent session, one 1-char credential, absent rest).
pub(crate) const MIN_PAYLOAD_LEN: usize = HEADER_LEN + 1 + 3 + 1 + 1 + 1;

const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

/// Extension record tags. Records are written in increasing tag order.
const EXT_SANDBOX: u8 = 1;
const EXT_ISSUER: u8 = 2;

/// A handle split into its decoded halves; nothing about it is trusted yet.
pub(crate) struct RawToken {
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: [u8; SIGNATURE_LEN],
}

/// Splits and base64-decodes a handle, checking only its outer shape.
pub(crate) fn split(token: &str) -> Result<RawToken, HandleError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(HandleError::Invalid("too long"));
    }
    let body = token
        .strip_prefix(PREFIX)
        .ok_or(HandleError::Invalid("missing eeh_ prefix"))?;
    let mut parts = body.split('.');
    let (Some(payload_b64), Some(sig_b64), None) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(HandleError::Invalid("expected exactly one '.'"));
    };
    if sig_b64.len() != SIGNATURE_B64_LEN {
        return Err(HandleError::Invalid("bad signature length"));
    }
    let payload = decode_canonical(payload_b64)?;
    let sig_bytes = decode_canonical(sig_b64)?;
    let signature: [u8; SIGNATURE_LEN] = sig_bytes
        .try_into()
        .map_err(|_| HandleError::Invalid("bad signature length"))?;
    if payload.len() < MIN_PAYLOAD_LEN {
        return Err(HandleError::Invalid("payload too short"));
    }
    Ok(RawToken { payload, signature })
}

/// Decodes unpadded base64url and insists the text is the one canonical encoding of the bytes
/// (the engine already rejects padding and stray trailing bits; the round trip makes that a
/// property of this function rather than of an engine setting).
fn decode_canonical(text: &str) -> Result<Vec<u8>, HandleError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| HandleError::Invalid("not canonical base64url"))?;
    if URL_SAFE_NO_PAD.encode(&bytes) != text {
        return Err(HandleError::Invalid("not canonical base64url"));
    }
    Ok(bytes)
}

/// Reads the version and key id, the only fields needed before the signature is checked.
pub(crate) fn peek_kid(payload: &[u8]) -> Result<[u8; 8], HandleError> {
    match payload.first() {
        Some(&VERSION) => {}
        _ => return Err(HandleError::Invalid("unsupported version")),
    }
    payload
        .get(1..9)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .ok_or(HandleError::Invalid("payload too short"))
}

/// The exact bytes the signature covers.
pub(crate) fn signing_input(payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
    input.extend_from_slice(SIGNING_CONTEXT);
    input.extend_from_slice(payload);
    input
}

/// Joins a payload and its signature into the handle text.
pub(crate) fn assemble(payload: &[u8], signature: &[u8]) -> String {
    let mut out = String::with_capacity(PREFIX.len() + payload.len() * 4 / 3 + 4 + 88);
    out.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut out);
    out
}

/// Encodes claims; fails only if a string or list does not fit its one-byte length, which
/// validated claims never do.
pub(crate) fn encode_payload(claims: &Claims) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(256);
    out.push(VERSION);
    out.extend_from_slice(&claims.kid);
    out.extend_from_slice(&claims.id);
    out.extend_from_slice(&claims.iat.to_be_bytes());
    out.extend_from_slice(&claims.exp.to_be_bytes());
    put_opt_str(&mut out, claims.session.as_deref())?;
    put_list(&mut out, &claims.credentials)?;
    put_opt_str(&mut out, claims.host.as_deref())?;
    put_opt_list(&mut out, claims.methods.as_deref())?;
    put_opt_list(&mut out, claims.path_prefixes.as_deref())?;
    // Extension records, in increasing tag order.
    put_ext(&mut out, EXT_SANDBOX, claims.sandbox.as_deref())?;
    put_ext(&mut out, EXT_ISSUER, claims.issuer.as_deref())?;
    Ok(out)
}

/// Writes one extension record, or nothing for an absent claim.
fn put_ext(out: &mut Vec<u8>, tag: u8, value: Option<&str>) -> Result<(), &'static str> {
    if let Some(value) = value {
        out.push(tag);
        put_str(out, value)?;
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), &'static str> {
    let len = u8::try_from(s.len()).map_err(|_| "string too long to encode")?;
    if len == 0 {
        return Err("empty string cannot be encoded");
    }
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) -> Result<(), &'static str> {
    match s {
        None => out.push(ABSENT),
        Some(s) => {
            out.push(PRESENT);
            put_str(out, s)?;
        }
    }
    Ok(())
}

fn put_list(out: &mut Vec<u8>, items: &[String]) -> Result<(), &'static str> {
    let count = u8::try_from(items.len()).map_err(|_| "list too long to encode")?;
    if count == 0 {
        return Err("empty list cannot be encoded");
    }
    out.push(count);
    items.iter().try_for_each(|item| put_str(out, item))
}

fn put_opt_list(out: &mut Vec<u8>, items: Option<&[String]>) -> Result<(), &'static str> {
    match items {
        None => out.push(ABSENT),
        Some(items) => {
            out.push(PRESENT);
            put_list(out, items)?;
        }
    }
    Ok(())
}

/// Parses a payload whose signature has already been verified, strictly.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Claims, HandleError> {
    let claims = Reader {
        buf: payload,
        pos: 0,
    }
    .claims()
    .map_err(HandleError::Invalid)?;
    claims.check_fields().map_err(HandleError::Invalid)?;
    // Belt and braces: one set of claims, one byte string.
    match encode_payload(&claims) {
        Ok(again) if again == payload => Ok(claims),
        _ => Err(HandleError::Invalid("non-canonical payload")),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn claims(mut self) -> Result<Claims, &'static str> {
        if self.u8()? != VERSION {
            return Err("unsupported version");
        }
        let kid = self.array::<8>()?;
        let id = self.array::<16>()?;
        let iat = u64::from_be_bytes(self.array::<8>()?);
        let exp = u64::from_be_bytes(self.array::<8>()?);
        let session = self.opt(Self::string)?;
        let credentials = self.list()?;
        let host = self.opt(Self::string)?;
        let methods = self.opt(Self::list)?;
        let path_prefixes = self.opt(Self::list)?;
        let (mut sandbox, mut issuer) = (None, None);
        let mut last_tag = 0;
        while self.pos < self.buf.len() {
            let tag = self.u8()?;
            match tag {
                0 => return Err("reserved extension tag 0 in payload"),
                _ if tag <= last_tag => {
                    return Err("repeated or out-of-order extension tag in payload");
                }
                EXT_SANDBOX => sandbox = Some(self.string()?),
                EXT_ISSUER => issuer = Some(self.string()?),
                _ => return Err("unknown extension tag in payload"),
            }
            last_tag = tag;
        }
        Ok(Claims {
            id,
            kid,
            iat,
            exp,
            session,
            credentials,
            host,
            methods,
            path_prefixes,
            sandbox,
            issuer,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("truncated payload")?;
        let slice = self.buf.get(self.pos..end).ok_or("truncated payload")?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| "truncated payload")
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Err("empty string in payload");
        }
        let bytes = self.take(len)?;
        if !bytes.iter().all(u8::is_ascii_graphic) {
            return Err("non-printable string in payload");
        }
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "non-printable string in payload")
    }

    fn list(&mut self) -> Result<Vec<String>, &'static str> {
        let count = self.u8()?;
        if count == 0 {
            return Err("empty list in payload");
        }
        (0..count).map(|_| self.string()).collect()
    }

    fn opt<T>(
        &mut self,
        read: fn(&mut Self) -> Result<T, &'static str>,
    ) -> Result<Option<T>, &'static str> {
        match self.u8()? {
            ABSENT => Ok(None),
            PRESENT => read(self).map(Some),
            _ => Err("bad optional-field tag"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Claims {
        Claims {
            id: [7; 16],
            kid: [9; 8],
            iat: 1_700_000_000,
            exp: 1_700_000_900,
            session: Some("sbx-1".into()),
            credentials: vec!["openai-key".into(), "other".into()],
            host: Some("*.example.com".into()),
            methods: Some(vec!["GET".into(), "POST".into()]),
            path_prefixes: Some(vec!["/v1/".into()]),
            sandbox: None,
            issuer: None,
        }
    }

    fn bound() -> Claims {
        Claims {
            sandbox: Some("sbx-a".into()),
            ..sample()
        }
    }

    fn issued() -> Claims {
        Claims {
            issuer: Some("control".into()),
            ..bound()
        }
    }

    /// The reason `decode_payload` refuses `bytes` with.
    fn reason(bytes: &[u8]) -> &'static str {
        match decode_payload(bytes) {
            Err(HandleError::Invalid(reason)) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn payload_round_trip() {
        for claims in [sample(), bound(), issued()] {
            let bytes = encode_payload(&claims).unwrap();
            let decoded = decode_payload(&bytes).unwrap();
            assert_eq!(decoded.sandbox(), claims.sandbox());
            assert_eq!(decoded.issuer(), claims.issuer());
            assert_eq!(decoded, claims);
        }
    }

    #[test]
    fn absent_sandbox_writes_nothing_and_present_appends_one_record() {
        let plain = encode_payload(&sample()).unwrap();
        // Ends with path_prefixes (present, one entry, "/v1/"): no extension bytes at all.
        assert!(plain.ends_with(b"\x01\x01\x04/v1/"));
        let with = encode_payload(&bound()).unwrap();
        let mut expected = plain.clone();
        expected.extend_from_slice(b"\x01\x05sbx-a");
        assert_eq!(with, expected);
        // The issuer record follows the sandbox record.
        expected.extend_from_slice(b"\x02\x07control");
        assert_eq!(encode_payload(&issued()).unwrap(), expected);
    }

    #[test]
    fn payload_from_before_extensions_decodes_unchanged() {
        // The payload of a handle minted before extension records existed (full scope).
        let payload = URL_SAFE_NO_PAD
            .decode(
                "AZKj7rFQhnKFmxwyHwlhzYlpJppG0--JoAAAAABoTuGAAAAAAGhO5QQBBXNieC0xAgpvcGVuYWkta2V5CW90\
                 aGVyLWtleQENKi5leGFtcGxlLmNvbQECA0dFVARQT1NUAQEEL3YxLw",
            )
            .unwrap();
        let claims = decode_payload(&payload).unwrap();
        assert_eq!(claims.session(), Some("sbx-1"));
        assert_eq!(claims.sandbox(), None);
        assert_eq!(claims.path_prefixes().unwrap(), ["/v1/"]);
        assert_eq!(encode_payload(&claims).unwrap(), payload);
    }

    #[test]
    fn rejects_bad_extension_records() {
        let plain = encode_payload(&sample()).unwrap();
        let with = |tail: &[u8]| [plain.as_slice(), tail].concat();
        assert_eq!(
            reason(&with(b"\x03\x05other")),
            "unknown extension tag in payload"
        );
        assert_eq!(
            reason(&with(b"\x02\x07control\x01\x05sbx-a")),
            "repeated or out-of-order extension tag in payload"
        );
        assert_eq!(
            reason(&with(b"\xff\x05other")),
            "unknown extension tag in payload"
        );
        assert_eq!(
            reason(&with(b"\x00\x05sbx-a")),
            "reserved extension tag 0 in payload"
        );
        assert_eq!(
            reason(&with(b"\x01\x05sbx-a\x01\x05sbx-b")),
            "repeated or out-of-order extension tag in payload"
        );
        assert_eq!(
            reason(&with(b"\x01\x05sbx-a\x01\x05sbx-a")),
            "repeated or out-of-order extension tag in payload"
        );
        assert_eq!(reason(&with(b"\x01\x00")), "empty string in payload");
        assert_eq!(reason(&with(b"\x01")), "truncated payload");
        assert_eq!(reason(&with(b"\x01\x06sbx-a")), "truncated payload");
        assert_eq!(
            reason(&with(b"\x01\x05sbx a")),
            "non-printable string in payload"
        );
        let long = [b"\x01\x81".as_slice(), &[b'a'; 0x81]].concat();
        assert_eq!(reason(&with(&long)), "bad sandbox name");
        // Anything after a complete record is read as a further record, and refused.
        for garbage in [&b"\x00"[..], b"\x01", b"\x02", b"\x07\x01x", b"\xff"] {
            let bytes = [with(b"\x01\x05sbx-a").as_slice(), garbage].concat();
            assert!(decode_payload(&bytes).is_err(), "{garbage:?}");
        }
        // A valid record still decodes with the same tail.
        assert_eq!(decode_payload(&with(b"\x01\x05sbx-a")).unwrap(), bound());
        assert_eq!(
            decode_payload(&with(b"\x01\x05sbx-a\x02\x07control")).unwrap(),
            issued()
        );
    }

    #[test]
    fn minimal_payload_length_matches_constant() {
        let claims = Claims {
            session: None,
            credentials: vec!["a".into()],
            host: None,
            methods: None,
            path_prefixes: None,
            sandbox: None,
            issuer: None,
            ..sample()
        };
        assert_eq!(encode_payload(&claims).unwrap().len(), MIN_PAYLOAD_LEN);
    }

    #[test]
    fn rejects_trailing_and_bad_tags() {
        let mut bytes = encode_payload(&sample()).unwrap();
        bytes.push(0);
        assert!(decode_payload(&bytes).is_err());
        let mut bytes = encode_payload(&sample()).unwrap();
        bytes[HEADER_LEN] = 2; // session tag
        assert!(decode_payload(&bytes).is_err());
        let mut bytes = encode_payload(&sample()).unwrap();
        bytes[0] = 2; // version
        assert!(decode_payload(&bytes).is_err());
    }

    #[test]
    fn rejects_invalid_field_contents() {
        let mut claims = sample();
        claims.host = Some("UPPER.example.com".into());
        let bytes = encode_payload(&claims).unwrap();
        assert!(decode_payload(&bytes).is_err());
        let mut claims = sample();
        claims.credentials = vec!["dup".into(), "dup".into()];
        let bytes = encode_payload(&claims).unwrap();
        assert!(decode_payload(&bytes).is_err());
    }

    #[test]
    fn signature_b64_length_constant() {
        assert_eq!(
            URL_SAFE_NO_PAD.encode([0u8; SIGNATURE_LEN]).len(),
            SIGNATURE_B64_LEN
        );
    }
}
