//! Proxy tokens: how a sandbox identified by token proves it on the explicit listener.
//!
//! A token is `eep_` and 43 base64url characters (256 random bits) when the admin API makes it,
//! or any 16 to 256 printable characters from a `token_file`. Only its SHA-256 is kept, in
//! memory and in `state_dir`; a presented token is hashed and looked up, then compared in
//! constant time, so neither the lookup nor the comparison times the secret. The guest sends
//! it in `Proxy-Authorization` as `Bearer TOKEN` or as HTTP Basic with the token as the
//! password (any user name, e.g. the sandbox id) or as the user name with an empty password
//! (`http://TOKEN@proxy:3128`). This module does not know which sandbox a token belongs to.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderValue;
use ring::rand::SecureRandom as _;

/// Prefix of the tokens the admin API makes.
pub const PREFIX: &str = "eep_";
const MIN_LEN: usize = 16;
const MAX_LEN: usize = 256;

/// The SHA-256 of a token: what is stored and compared.
pub type TokenHash = [u8; 32];

/// Why a `Proxy-Authorization` header does not carry a usable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Proxy-Authorization is not `Basic` or `Bearer`")]
    Scheme,
    #[error("Proxy-Authorization is malformed")]
    Malformed,
    #[error("a token file holds {0} characters; a proxy token has 16 to 256 printable characters")]
    Length(usize),
    #[error("a proxy token has printable characters only")]
    Unprintable,
    #[error("the system random source failed")]
    Random,
}

pub fn hash(token: &[u8]) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A fresh token for the admin API to hand out once.
pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Checks a token read from a file (surrounding whitespace already trimmed).
pub fn check(token: &str) -> Result<(), TokenError> {
    if !(MIN_LEN..=MAX_LEN).contains(&token.len()) {
        return Err(TokenError::Length(token.len()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Unprintable);
    }
    Ok(())
}

/// The hash of the token a `Proxy-Authorization` value carries.
pub fn from_header(value: &HeaderValue) -> Result<TokenHash, TokenError> {
    let text = value.to_str().map_err(|_| TokenError::Malformed)?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or(TokenError::Malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return bounded(rest.as_bytes()).map(hash);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(TokenError::Scheme);
    }
    let decoded = STANDARD.decode(rest).map_err(|_| TokenError::Malformed)?;
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return Err(TokenError::Malformed);
    };
    let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
    let token = if pass.is_empty() { user } else { pass };
    bounded(token).map(hash)
}

fn bounded(token: &[u8]) -> Result<&[u8], TokenError> {
    if token.is_empty() || token.len() > MAX_LEN {
        return Err(TokenError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn header_forms() {
        let t = "eep_abcdefghijklmnopqrstuvwxyz";
        let want = hash(t.as_bytes());
        let basic = |s: &str| header(&format!("Basic {}", STANDARD.encode(s)));
        assert_eq!(from_header(&header(&format!("Bearer {t}"))), Ok(want));
        assert_eq!(from_header(&header(&format!("bearer  {t} "))), Ok(want));
        assert_eq!(from_header(&basic(&format!("sbx-1:{t}"))), Ok(want));
        assert_eq!(from_header(&basic(&format!("{t}:"))), Ok(want));
        assert_eq!(
            from_header(&header("Digest x")),
            Err(TokenError::Scheme),
            "other schemes"
        );
        assert_eq!(from_header(&basic("nocolon")), Err(TokenError::Malformed));
        assert_eq!(
            from_header(&header("Basic !!!")),
            Err(TokenError::Malformed)
        );
        assert_eq!(from_header(&header("Bearer")), Err(TokenError::Malformed));
    }

    #[test]
    fn generated_tokens_are_distinct_and_valid() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43);
        assert!(check(&a).is_ok());
        assert_eq!(check("short"), Err(TokenError::Length(5)));
        assert_eq!(check("sixteen chars ok"), Err(TokenError::Unprintable));
    }
}
