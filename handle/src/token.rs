//! The wire format of a handle, and its strict parser.
//!
//! ```text
//! handle    = "eeh_" b64url(payload) "." b64url(signature)      ; ≤ 2048 bytes, no padding
//! signature = Ed25519(key, "eeh-v1\0" || payload)                ; algorithm fixed by version 1
//! payload   = version:u8(=1) kid:[8] id:[16] iat:u64be exp:u64be
//!             session:opt(str) credentials:list host:opt(str)
//!             methods:opt(list) path_prefixes:opt(list)
//! opt(x)    = 0x00 | 0x01 x          list = count:u8(≥1) str*count
//! str       = len:u8(≥1) ascii-bytes
//! ```
//!
//! The layout is fixed, so there is exactly one encoding per set of claims: the parser rejects
//! trailing bytes, unknown tags, non-canonical base64 and, as a final guard, anything that does
//! not re-encode to the same bytes. This module does not check signatures (see `verify`) or
//! timestamps and revocation; it only splits, decodes and encodes.

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
    Ok(out)
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
        if self.pos != self.buf.len() {
            return Err("trailing bytes in payload");
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
        }
    }

    #[test]
    fn payload_round_trip() {
        let claims = sample();
        let bytes = encode_payload(&claims).unwrap();
        assert_eq!(decode_payload(&bytes).unwrap(), claims);
    }

    #[test]
    fn minimal_payload_length_matches_constant() {
        let claims = Claims {
            session: None,
            credentials: vec!["a".into()],
            host: None,
            methods: None,
            path_prefixes: None,
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
