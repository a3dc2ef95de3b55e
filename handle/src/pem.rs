//! Minimal PEM (RFC 7468) encoding and decoding for the key files.
//!
//! Only what the key files need: one label per call, standard base64 bodies, text outside
//! blocks ignored. Buffers that may hold private key bytes are zeroized. This module does not
//! interpret the DER inside.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Wraps `der` as a PEM block with 64-column lines.
pub(crate) fn encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + 80));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Chunks of an ASCII string are ASCII; the fallback never triggers.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes every block labelled `label`, in order. Errors describe the problem without
/// echoing the file's contents.
pub(crate) fn decode_all(text: &str, label: &str) -> Result<Vec<Zeroizing<Vec<u8>>>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut body: Option<Zeroizing<String>> = None;
    for line in text.lines().map(str::trim) {
        match &mut body {
            None if line == begin => body = Some(Zeroizing::new(String::new())),
            None => {}
            Some(_) if line == end => {
                if let Some(collected) = body.take() {
                    let der = STANDARD
                        .decode(collected.as_bytes())
                        .map_err(|_| format!("{label} block is not valid base64"))?;
                    blocks.push(Zeroizing::new(der));
                }
            }
            Some(_) if line.starts_with("-----") => {
                return Err(format!("unterminated {label} block"));
            }
            Some(collected) => collected.push_str(line),
        }
    }
    if body.is_some() {
        return Err(format!("unterminated {label} block"));
    }
    Ok(blocks)
}

/// Decodes exactly one block labelled `label`.
pub(crate) fn decode_one(text: &str, label: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut blocks = decode_all(text, label)?;
    match (blocks.pop(), blocks.is_empty()) {
        (Some(der), true) => Ok(der),
        (None, _) => Err(format!("no {label} block found")),
        (Some(_), false) => Err(format!("more than one {label} block")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let der = vec![1u8; 100];
        let text = encode("PUBLIC KEY", &der);
        assert_eq!(decode_one(&text, "PUBLIC KEY").unwrap().as_slice(), der);
        assert!(decode_one(&text, "PRIVATE KEY").is_err());
        let two = format!("{}{}", *text, *text);
        assert_eq!(decode_all(&two, "PUBLIC KEY").unwrap().len(), 2);
        assert!(decode_one(&two, "PUBLIC KEY").is_err());
        assert!(decode_one("-----BEGIN PUBLIC KEY-----\nAAAA\n", "PUBLIC KEY").is_err());
        assert!(
            decode_one(
                "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----",
                "PUBLIC KEY"
            )
            .is_err()
        );
    }
}
