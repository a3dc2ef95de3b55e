//! Minting: validating a [`MintRequest`], normalising it into claims and signing them.
//!
//! Every refusal names the offending field so the operator (or the orchestrator calling the
//! admin API) can fix the request. This module does not decide who may mint (the admin API's
//! authentication does) and does not store minted handles: they are self-contained.

use std::fmt;
use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom as _;

use crate::claims::{Claims, MAX_UNIX_SECS, from_unix, hex, unix_secs};
use crate::error::HandleError;
use crate::keys::SigningKey;
use crate::scope;
use crate::token;

/// Longest ttl a handle may have unless configured otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// The ttl used when a request does not name one (the CLI's and admin API's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// What a new handle should grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintRequest {
    /// Credential (secret) names the handle may redeem; at least one.
    pub credentials: Vec<String>,
    /// Lifetime; whole seconds count, at least 1 s and at most the authority's maximum.
    pub ttl: Duration,
    /// The sandbox session, so all its handles can be revoked at once.
    pub session: Option<String>,
    /// Host restriction: an exact name or `*.suffix` (case-insensitive; stored lowercase).
    pub host: Option<String>,
    /// Allowed HTTP methods (stored uppercase); `None` allows any.
    pub methods: Option<Vec<String>>,
    /// Allowed path prefixes, each starting with `/`; `None` allows any path.
    pub path_prefixes: Option<Vec<String>>,
    /// The sandbox the handle is bound to: the proxy refuses it on a connection identified as
    /// another sandbox. `None` leaves the handle unbound. Also a revocation key
    /// ([`RevocationList::revoke_sandbox`](crate::RevocationList::revoke_sandbox)).
    pub sandbox: Option<String>,
}

impl MintRequest {
    /// A request for `credentials` with the given ttl and no further restrictions.
    pub fn new<I, S>(credentials: I, ttl: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MintRequest {
            credentials: credentials.into_iter().map(Into::into).collect(),
            ttl,
            session: None,
            host: None,
            methods: None,
            path_prefixes: None,
            sandbox: None,
        }
    }
}

/// A freshly minted handle. Debug redacts the handle text.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    /// The handle to give to the guest (`eeh_…`).
    pub handle: String,
    /// Its id, for `revoke --id` (32 lowercase hex characters).
    pub id: String,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

impl Minted {
    /// The expiry as RFC 3339 (UTC, whole seconds), as the admin API returns it.
    pub fn expires_at_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.expires_at).to_string()
    }
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("handle", &crate::detect::redact(&self.handle))
            .field("id", &self.id)
            .field("expires_at", &self.expires_at_rfc3339())
            .finish()
    }
}

/// Validates `req` against `max_ttl` and signs a handle issued at `now`.
pub(crate) fn mint(
    key: &SigningKey,
    req: &MintRequest,
    max_ttl: Duration,
    now: SystemTime,
) -> Result<Minted, HandleError> {
    mint_claims(key, None, req, max_ttl, now)
}

/// Mints a handle as the external issuer `issuer`, signed with that issuer's `key`: what a
/// platform control plane does (this function, or any implementation of
/// `docs/handle-format.md`). An edge accepts it when `key`'s public half is configured for
/// `issuer`. `max_ttl` bounds the ttl here; the edge applies its own maximum when verifying.
pub fn mint_as_issuer(
    key: &SigningKey,
    issuer: &str,
    req: &MintRequest,
    max_ttl: Duration,
    now: SystemTime,
) -> Result<Minted, HandleError> {
    let issuer = check_name("issuer", Some(issuer))?;
    mint_claims(key, issuer, req, max_ttl, now)
}

fn mint_claims(
    key: &SigningKey,
    issuer: Option<String>,
    req: &MintRequest,
    max_ttl: Duration,
    now: SystemTime,
) -> Result<Minted, HandleError> {
    let ttl_secs = check_ttl(req.ttl, max_ttl)?;
    let credentials = check_list(
        "credentials",
        req.credentials.clone(),
        scope::MAX_CREDENTIALS,
        scope::valid_name,
        "1 to 128 printable ASCII characters without spaces",
    )?;
    let session = check_name("session", req.session.as_deref())?;
    let host = match &req.host {
        None => None,
        Some(h) => {
            let normalized = scope::normalize_host_pattern(h);
            if !scope::valid_host_pattern(&normalized) {
                return Err(bad(format!(
                    "host {} is invalid: use a DNS name such as api.example.com or a wildcard \
                     such as *.example.com",
                    quote(h)
                )));
            }
            Some(normalized)
        }
    };
    let methods = req
        .methods
        .as_ref()
        .map(|m| {
            check_list(
                "methods",
                m.iter().map(|m| m.to_ascii_uppercase()).collect(),
                scope::MAX_METHODS,
                scope::valid_method,
                "an HTTP method token such as GET",
            )
        })
        .transpose()?;
    let path_prefixes = req
        .path_prefixes
        .as_ref()
        .map(|p| {
            check_list(
                "path_prefixes",
                p.clone(),
                scope::MAX_PATH_PREFIXES,
                scope::valid_path_prefix,
                "a path starting with '/' without spaces, '?', '#', '\\' or dot segments",
            )
        })
        .transpose()?;
    let sandbox = check_name("sandbox", req.sandbox.as_deref())?;

    let iat = unix_secs(now);
    let exp = iat
        .checked_add(ttl_secs)
        .filter(|exp| *exp <= MAX_UNIX_SECS)
        .ok_or_else(|| bad("the clock is beyond the representable range".to_owned()))?;
    let claims = Claims {
        id: random_id()?,
        kid: key.verifying_key().kid(),
        iat,
        exp,
        session,
        credentials,
        host,
        methods,
        path_prefixes,
        sandbox,
        issuer,
    };
    // The field checks above are the friendly version of these; this guards against the two
    // ever drifting apart, since the verifier runs exactly these.
    claims
        .check_fields()
        .map_err(|reason| bad(format!("internal check failed: {reason}")))?;
    let payload = token::encode_payload(&claims).map_err(|reason| bad(reason.to_owned()))?;
    let signature = key.sign(&token::signing_input(&payload));
    let handle = token::assemble(&payload, signature.as_ref());
    if handle.len() > token::MAX_TOKEN_LEN {
        return Err(bad(format!(
            "the requested scope makes the handle {} bytes, over the {}-byte limit; name fewer \
             or shorter credentials, methods or path prefixes, or a shorter session or sandbox",
            handle.len(),
            token::MAX_TOKEN_LEN
        )));
    }
    Ok(Minted {
        handle,
        id: hex(&claims.id),
        expires_at: from_unix(exp),
    })
}

fn check_ttl(ttl: Duration, max_ttl: Duration) -> Result<u64, HandleError> {
    if ttl.as_secs() == 0 {
        return Err(bad("ttl must be at least 1s".to_owned()));
    }
    if ttl > max_ttl {
        return Err(HandleError::TtlTooLong {
            requested: ttl,
            max: max_ttl,
        });
    }
    Ok(ttl.as_secs())
}

/// An optional name field (session, sandbox): `None`, or a valid name kept as given.
fn check_name(field: &str, name: Option<&str>) -> Result<Option<String>, HandleError> {
    match name {
        Some(n) if !scope::valid_name(n) => Err(bad(format!(
            "{field} {} is invalid: use 1 to 128 printable ASCII characters without spaces",
            quote(n)
        ))),
        other => Ok(other.map(str::to_owned)),
    }
}

fn check_list(
    field: &str,
    items: Vec<String>,
    max: usize,
    valid: impl Fn(&str) -> bool,
    expected: &str,
) -> Result<Vec<String>, HandleError> {
    if items.is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    if items.len() > max {
        return Err(bad(format!("{field} may list at most {max} entries")));
    }
    for (i, item) in items.iter().enumerate() {
        if !valid(item) {
            return Err(bad(format!(
                "{field} entry {} is invalid: expected {expected}",
                quote(item)
            )));
        }
        if items[..i].contains(item) {
            return Err(bad(format!("{field} lists {} twice", quote(item))));
        }
    }
    Ok(items)
}

fn random_id() -> Result<[u8; 16], HandleError> {
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| HandleError::Random)?;
    Ok(id)
}

fn bad(message: String) -> HandleError {
    HandleError::BadRequest(message)
}

/// Quotes a request value for an error message, capped and with control characters replaced.
fn quote(s: &str) -> String {
    let shown: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}
