//! What a handle says: its id, key id, lifetime and scope ([`Claims`]), and the scope check a
//! proxy performs per request ([`Claims::authorize`]).
//!
//! Claims are only ever produced by minting or by a successful verification, so holding one
//! means the signature was checked. This module does not encode, sign or verify (see `token`,
//! `mint`, `verify`) and does not consult the revocation list.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::HandleError;
use crate::scope;

/// Latest unix time a token may carry (end of year 9999); keeps time arithmetic overflow-free.
pub(crate) const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// The verified contents of a handle.
#[derive(Clone, PartialEq, Eq)]
pub struct Claims {
    pub(crate) id: [u8; 16],
    pub(crate) kid: [u8; 8],
    pub(crate) iat: u64,
    pub(crate) exp: u64,
    pub(crate) session: Option<String>,
    pub(crate) credentials: Vec<String>,
    pub(crate) host: Option<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) path_prefixes: Option<Vec<String>>,
    pub(crate) sandbox: Option<String>,
    /// The external issuer that signed the handle; `None` for the edge's own key.
    pub(crate) issuer: Option<String>,
}

impl Claims {
    /// The token format version (always 1 for now).
    pub fn version(&self) -> u8 {
        crate::token::VERSION
    }

    /// The handle's unique id as 32 lowercase hex characters (what `revoke --id` takes).
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// The raw 128-bit id.
    pub fn id_bytes(&self) -> &[u8; 16] {
        &self.id
    }

    /// The signing key's id as 16 lowercase hex characters.
    pub fn kid(&self) -> String {
        hex(&self.kid)
    }

    /// The sandbox session the handle was minted for, if any.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The credential (secret) names the handle may redeem; never empty.
    pub fn credentials(&self) -> &[String] {
        &self.credentials
    }

    /// The host restriction: an exact lowercase name or `*.suffix`; `None` means any host.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The allowed HTTP methods; `None` means any method.
    pub fn methods(&self) -> Option<&[String]> {
        self.methods.as_deref()
    }

    /// The allowed path prefixes; `None` means any path.
    pub fn path_prefixes(&self) -> Option<&[String]> {
        self.path_prefixes.as_deref()
    }

    /// The sandbox the handle is bound to, if any: the proxy refuses it on a connection
    /// identified as another sandbox. [`Claims::authorize`] does not check this; the caller,
    /// which knows the connection's sandbox, does.
    pub fn sandbox(&self) -> Option<&str> {
        self.sandbox.as_deref()
    }

    /// The external issuer that minted the handle (the verifier checked that the signing key
    /// is one of that issuer's); `None` when the edge's own key signed it.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// When the handle was issued.
    pub fn issued_at(&self) -> SystemTime {
        from_unix(self.iat)
    }

    /// When the handle stops being accepted.
    pub fn expires_at(&self) -> SystemTime {
        from_unix(self.exp)
    }

    /// Issue time in unix seconds.
    pub fn iat(&self) -> u64 {
        self.iat
    }

    /// Expiry time in unix seconds.
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// Checks that this handle may redeem `credential` for a request to `host` with `method`
    /// and `path` (a request target path; query and fragment are ignored).
    ///
    /// `host` is a bare host name without port, compared case-insensitively; `*.suffix`
    /// matches strict subdomains only. Methods compare exactly (HTTP methods are
    /// case-sensitive). Path prefixes match on segment boundaries, and a path with dot
    /// segments or encoded slashes is refused when prefixes are set, because the upstream might
    /// resolve it to a path outside the prefix.
    pub fn authorize(
        &self,
        credential: &str,
        host: &str,
        method: &str,
        path: &str,
    ) -> Result<(), HandleError> {
        if !self.credentials.iter().any(|c| c == credential) {
            return Err(HandleError::OutOfScope(format!(
                "the handle does not grant credential {credential:?}"
            )));
        }
        if let Some(pattern) = &self.host
            && !scope::host_matches(pattern, host)
        {
            return Err(HandleError::OutOfScope(format!(
                "the handle is restricted to host {pattern:?}, not {:?}",
                printable(host)
            )));
        }
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| m == method)
        {
            return Err(HandleError::OutOfScope(format!(
                "the handle does not allow method {:?} (allowed: {})",
                printable(method),
                methods.join(", ")
            )));
        }
        if let Some(prefixes) = &self.path_prefixes {
            let path = scope::path_only(path);
            if let Some(reason) = scope::unsafe_path_reason(path) {
                return Err(HandleError::OutOfScope(format!(
                    "{reason}, so it cannot be matched against the handle's path prefixes"
                )));
            }
            if !prefixes.iter().any(|p| scope::path_matches(p, path)) {
                return Err(HandleError::OutOfScope(format!(
                    "the request path is outside the handle's path prefixes ({})",
                    prefixes.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Checks every field's syntax and bounds, returning a fixed reason on the first failure.
    ///
    /// Run on parsed tokens so a signed token can only carry what a mint would produce.
    pub(crate) fn check_fields(&self) -> Result<(), &'static str> {
        if self.iat > MAX_UNIX_SECS || self.exp > MAX_UNIX_SECS {
            return Err("timestamp out of range");
        }
        if self.exp <= self.iat {
            return Err("expires before it was issued");
        }
        if let Some(session) = &self.session
            && !scope::valid_name(session)
        {
            return Err("bad session name");
        }
        check_list(
            &self.credentials,
            scope::MAX_CREDENTIALS,
            scope::valid_name,
            "bad credential list",
        )?;
        if let Some(host) = &self.host
            && !scope::valid_host_pattern(host)
        {
            return Err("bad host pattern");
        }
        if let Some(methods) = &self.methods {
            check_list(
                methods,
                scope::MAX_METHODS,
                scope::valid_method,
                "bad method list",
            )?;
        }
        if let Some(prefixes) = &self.path_prefixes {
            check_list(
                prefixes,
                scope::MAX_PATH_PREFIXES,
                scope::valid_path_prefix,
                "bad path prefix list",
            )?;
        }
        if let Some(sandbox) = &self.sandbox
            && !scope::valid_name(sandbox)
        {
            return Err("bad sandbox name");
        }
        if let Some(issuer) = &self.issuer
            && !scope::valid_name(issuer)
        {
            return Err("bad issuer name");
        }
        Ok(())
    }
}

/// Non-empty, bounded, every item valid, no duplicates.
fn check_list(
    items: &[String],
    max: usize,
    valid: fn(&str) -> bool,
    reason: &'static str,
) -> Result<(), &'static str> {
    if items.is_empty() || items.len() > max || !items.iter().all(|i| valid(i)) {
        return Err(reason);
    }
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            return Err(reason);
        }
    }
    Ok(())
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claims")
            .field("id", &self.id())
            .field("kid", &self.kid())
            .field("iat", &self.iat)
            .field("exp", &self.exp)
            .field("session", &self.session)
            .field("credentials", &self.credentials)
            .field("host", &self.host)
            .field("methods", &self.methods)
            .field("path_prefixes", &self.path_prefixes)
            .field("sandbox", &self.sandbox)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Request values end up in refusal messages; cap them so a huge or binary header cannot bloat
/// or corrupt a log line.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Parses exactly 32 hex digits (either case) into a 128-bit id.
pub(crate) fn parse_id(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Unix seconds of `t`, or 0 for times before the epoch (a clock that wrong expires everything).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `SystemTime` of unix seconds `secs`; inputs are bounded by [`MAX_UNIX_SECS`], so the
/// fallback is unreachable on any platform that can represent year 9999.
pub(crate) fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = [0xab; 16];
        assert_eq!(parse_id(&hex(&id)), Some(id));
        assert_eq!(parse_id(&hex(&id).to_uppercase()), Some(id));
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(&"g".repeat(32)), None);
    }
}
