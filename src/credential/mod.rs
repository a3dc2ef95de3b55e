//! Credential injection: a scoped handle in, the real credential out — only on the way to the
//! destination the credential belongs to.
//!
//! For a bumped request this stage (1) finds everything handle-shaped the request carries, in
//! the method, any header value or the URI ([`scan`]); (2) refuses malformed ones
//! (`handle_invalid`) and handles sent to a destination without that credential or outside
//! its binding (exfiltration attempt, audited); (3) for the destination's credential, verifies
//! the handle (signature, expiry, revocation) and its scope (credential, host, method, path),
//! waits for the secret up to `initial_fetch_timeout`, and puts the credential on the request:
//! a filled header template, the handle swapped in place ([`swap`]), an OAuth2 token, or a
//! client certificate. The CONNECT
//! host, the SNI and the request host were already checked to fall under one rule (`bump`), and
//! the dialer vets the address it connects to, so injection only happens when all agree.
//! One audit event per redemption attempt; never the secret, never the whole handle.

mod mtls;
pub mod oauth;
pub mod reflect;
pub mod scan;
mod swap;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use egress_handle::{HandleAuthority, HandleError};
use egress_sds::{Secret, SecretBytes, SecretStore};
use http::HeaderValue;
use http::request::Parts;

use crate::credential::oauth::{OauthError, OauthTokens};
use crate::credential::reflect::{Reflect, Reflection};
use crate::credential::scan::{Found, Place};
use crate::net::host::Host;
use crate::observe::metrics::Metrics;
use crate::policy::{Credential, Rule};
use crate::refusal::{Kind, Refusal};
use crate::state::Snapshot;
use crate::upstream::client::HttpClient;

/// The destination a credential stage call is about: all it needs of the request's context.
#[derive(Clone, Copy, Debug)]
pub struct Dest<'a> {
    pub snap: &'a Snapshot,
    pub host: &'a Host,
    pub port: u16,
    pub rule: Option<&'a Rule>,
    pub rule_id: &'a str,
    /// The sandbox the request's connection was identified as.
    pub sandbox: Option<&'a str>,
}

impl Dest<'_> {
    fn refusal(&self, kind: Kind, cause: &str) -> Refusal {
        Refusal::new(kind, self.host.to_string(), self.port, self.rule_id).with_cause(cause)
    }
}

pub const AUDIT_TARGET: &str = "egress_edge::audit";

/// What injection needs, built once at startup.
pub struct Injector {
    pub handles: Arc<HandleAuthority>,
    pub secrets: Option<SecretStore>,
    pub initial_fetch_timeout: Duration,
    pub oauth: OauthTokens,
    mtls: moka::sync::Cache<(String, String), HttpClient>,
    /// Handles whose signature already verified. Ed25519 verification costs ~30 µs, which at
    /// keep-alive rates is most of a core; expiry and revocation are still checked on every
    /// request, and a miss (or any doubt) goes through the full verification.
    verified: moka::sync::Cache<String, Arc<egress_handle::Claims>>,
    /// Matchers for the forms of each injected secret (by secret name and version, or by a
    /// hash of an OAuth2 token), so a response echoing the secret is redacted.
    reflections: moka::sync::Cache<String, Reflection>,
}

/// Never prints the caches: their keys are handles and their values hold secrets.
impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("secrets", &self.secrets.is_some())
            .field("verified_handles", &self.verified.entry_count())
            .finish_non_exhaustive()
    }
}

/// What a redeemed handle put on the request.
#[derive(Debug, Default)]
pub struct Injected {
    /// A client presenting the credential's client certificate, instead of the default one.
    pub client: Option<HttpClient>,
    /// The injected secret to redact from the response (with its name, for the metric).
    pub reflect: Option<Reflect>,
}

impl Injector {
    pub fn new(
        handles: Arc<HandleAuthority>,
        secrets: Option<SecretStore>,
        initial_fetch_timeout: Duration,
    ) -> Injector {
        Injector {
            handles,
            secrets,
            initial_fetch_timeout,
            oauth: OauthTokens::new(),
            mtls: moka::sync::Cache::new(256),
            verified: moka::sync::Cache::builder()
                .max_capacity(16 * 1024)
                .time_to_live(Duration::from_secs(300))
                .build(),
            reflections: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// What to redact from the response to an injection of secret `name`: its matcher,
    /// built once per `key`. A matcher that cannot be built refuses the injection rather than
    /// let an echo of the secret through.
    fn reflect(&self, name: &str, key: String, value: &[u8]) -> Result<Reflect, Unavailable> {
        let reflection = match self.reflections.get(&key) {
            Some(r) => r,
            None => {
                let r = Reflection::new(&[value])
                    .map_err(|_| Unavailable::Redaction(name.to_owned()))?;
                self.reflections.insert(key, r.clone());
                r
            }
        };
        Ok(Reflect {
            reflection,
            secret: name.to_owned(),
        })
    }

    /// Full verification, or a cached signature check plus fresh expiry, revocation and key
    /// trust checks (a key retired from `fleet.handle_issuers` stops its handles at once).
    fn verify(&self, token: &str) -> Result<Arc<egress_handle::Claims>, HandleError> {
        let now = SystemTime::now();
        if let Some(c) = self.verified.get(token)
            && now < c.expires_at()
            && !self.handles.revocations().is_revoked(&c)
            && self.handles.verifier().still_trusts(&c)
        {
            return Ok(c);
        }
        let claims = Arc::new(self.handles.verify(token, now)?);
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }
}

pub(crate) const NO_CREDENTIAL: &str =
    "a credential handle was sent to a destination that holds no credential";

/// Audits and counts a handle found where it can never be redeemed, and returns the
/// `handle_out_of_scope` refusal (`base`) with its cause.
fn exfiltration(
    metrics: &Metrics,
    found: &Found,
    credential: &str,
    base: Refusal,
    cause: &str,
    sandbox: Option<&str>,
) -> Refusal {
    audit(
        sandbox,
        None,
        credential,
        &base.host,
        "exfiltration_attempt",
        &found.candidate.redacted(),
    );
    metrics.handle("exfiltration_attempt");
    base.with_cause(cause)
}

/// One audit event; `claims` once the handle verified (its id, session and issuer).
fn audit(
    sandbox: Option<&str>,
    claims: Option<&egress_handle::Claims>,
    credential: &str,
    destination: &str,
    outcome: &str,
    handle: &str,
) {
    let id = claims.map(egress_handle::Claims::id);
    tracing::info!(
        target: AUDIT_TARGET,
        sandbox = sandbox.unwrap_or(""),
        handle_id = id.as_deref().unwrap_or(""),
        session = claims.and_then(|c| c.session()).unwrap_or(""),
        issuer = claims.and_then(|c| c.issuer()).unwrap_or(""),
        credential,
        destination,
        outcome,
        handle = handle,
        "handle redemption"
    );
}

impl Injector {
    /// Applies the destination's credential, if any; returns a client to use instead of the
    /// default one (mTLS credentials).
    ///
    /// Anything handle-shaped is either redeemed here or refused: a handle never reaches an
    /// upstream. Malformed finds are `handle_invalid` (`handle_out_of_scope`, audited, where
    /// the destination holds no credential); well-formed ones outside the credential's
    /// headers or query parameter are an exfiltration attempt.
    pub async fn apply(
        &self,
        dest: &Dest<'_>,
        parts: &mut Parts,
        metrics: &Metrics,
    ) -> Result<Injected, Refusal> {
        let shown = dest.host.to_string();
        let found = scan::request(parts);
        let credential = dest.rule.and_then(|r| r.credential.as_ref());
        let Some(credential) = credential else {
            if let Some(f) = found.first() {
                return Err(exfiltration(
                    metrics,
                    f,
                    "",
                    dest.refusal(Kind::HandleOutOfScope, ""),
                    NO_CREDENTIAL,
                    dest.sandbox,
                ));
            }
            return Ok(Injected::default());
        };
        let secret_name = credential.secret_name();
        // Every audit event of this request names the same sandbox, credential and destination.
        let say = |claims: Option<&egress_handle::Claims>, outcome: &str, handle: &str| {
            audit(dest.sandbox, claims, secret_name, &shown, outcome, handle);
        };
        if parts.method == http::Method::TRACE {
            // TRACE echoes the request, credential included, back to the guest.
            return Err(dest.refusal(
                Kind::DestinationDenied,
                "TRACE is not relayed to a destination that holds a credential",
            ));
        }
        if let Some(bad) = found.iter().find(|f| !f.candidate.is_well_formed()) {
            let defect = bad.candidate.defect().map_or("malformed", |d| d.describe());
            say(None, "handle_invalid", &bad.candidate.redacted());
            metrics.handle("handle_invalid");
            return Err(dest.refusal(
                Kind::HandleInvalid,
                &format!("a handle-shaped value that is not a valid handle ({defect})"),
            ));
        }
        // A handle outside the credential's headers (or query parameter) is never redeemed: it
        // would be forwarded as-is otherwise.
        let (in_binding, stray): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|f| match &f.place {
                Place::Header(name) => credential.binds_header(name),
                Place::Uri { param } => {
                    param.is_some() && param.as_deref() == credential.binds_query()
                }
                Place::Method => false,
            });
        if let Some(f) = stray.first() {
            return Err(exfiltration(
                metrics,
                f,
                secret_name,
                dest.refusal(Kind::HandleOutOfScope, ""),
                "a handle was sent outside the credential's header or query parameter",
                dest.sandbox,
            ));
        }
        let token = match in_binding.as_slice() {
            [] => {
                if dest.rule.is_some_and(|r| r.require_handle) {
                    metrics.handle("handle_required");
                    return Err(dest.refusal(Kind::HandleRequired, "no handle in the request"));
                }
                return Ok(Injected::default());
            }
            [first, rest @ ..] if rest.iter().all(|f| f.token() == first.token()) => {
                first.token().to_owned()
            }
            _ => {
                return Err(
                    dest.refusal(Kind::HandleInvalid, "more than one handle in the request")
                );
            }
        };
        let redacted = egress_handle::redact(&token);
        let claims = match self.verify(&token) {
            Ok(c) => c,
            Err(e) => {
                say(None, e.code(), &redacted);
                metrics.handle(e.code());
                return Err(dest.refusal(Kind::from(&e), &format!("{e}; handle {redacted}")));
            }
        };
        let id = claims.id();
        if let Some(bound) = claims.sandbox()
            && dest.sandbox != Some(bound)
        {
            say(Some(&claims), "handle_wrong_sandbox", &redacted);
            metrics.handle("handle_wrong_sandbox");
            let here = dest.sandbox.unwrap_or("no sandbox");
            return Err(dest.refusal(
                Kind::HandleWrongSandbox,
                &format!(
                    "issued to sandbox `{bound}`, this connection is `{here}`; handle id {id}"
                ),
            ));
        }
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path().to_owned();
        let host_only = dest
            .host
            .as_name()
            .map(str::to_owned)
            .unwrap_or_else(|| shown.clone());
        if let Err(e) = claims.authorize(secret_name, &host_only, &method, &path) {
            say(Some(&claims), e.code(), &redacted);
            metrics.handle(e.code());
            return Err(dest.refusal(Kind::from(&e), &format!("{e}; handle id {id}")));
        }
        let outcome = self.inject(dest, credential, parts, &token).await;
        let label = if outcome.is_ok() {
            "redeemed"
        } else {
            "credential_unavailable"
        };
        say(Some(&claims), label, &redacted);
        metrics.handle(label);
        outcome.map_err(|e| dest.refusal(Kind::CredentialUnavailable, &e.to_string()))
    }

    /// Puts the credential on the request (or selects the mTLS client). Errors are causes for
    /// `credential_unavailable`; they never contain secret material.
    /// Puts the credential on the request (or selects the mTLS client).
    async fn inject(
        &self,
        dest: &Dest<'_>,
        credential: &Credential,
        parts: &mut Parts,
        token: &str,
    ) -> Result<Injected, Unavailable> {
        let Some(store) = &self.secrets else {
            return Err(Unavailable::NoSource);
        };
        let name = credential.secret_name();
        let versioned = store
            .wait(name, self.initial_fetch_timeout)
            .await
            .map_err(|_| Unavailable::NotDelivered(name.to_owned()))?;
        match credential {
            Credential::Header { header, format, .. } => {
                let value = single_value(name, &versioned.secret)?;
                let filled = fill(format, value.expose())
                    .map_err(|()| Unavailable::NotText(name.to_owned()))?;
                let mut hv = HeaderValue::from_bytes(filled.as_bytes())
                    .map_err(|_| Unavailable::NotHeaderValue(name.to_owned()))?;
                hv.set_sensitive(true);
                parts.headers.insert(header.clone(), hv);
                self.injected(name, &versioned.version, value.expose())
            }
            Credential::Swap { headers, query, .. } => {
                let value = single_value(name, &versioned.secret)?;
                let text = std::str::from_utf8(value.expose())
                    .map_err(|_| Unavailable::NotText(name.to_owned()))?;
                let swap_err = |e| Unavailable::Swap(name.to_owned(), e);
                let mut swapped =
                    swap::in_headers(parts, headers, token, text).map_err(swap_err)?;
                if let Some(q) = query
                    && swap::in_query(parts, q, token, text).map_err(swap_err)?
                {
                    swapped += 1;
                }
                // The scan found the handle in a bound place; if it could not be swapped there,
                // forwarding would send the handle upstream.
                if swapped == 0 {
                    return Err(swap_err(swap::SwapError::NotFound));
                }
                self.injected(name, &versioned.version, value.expose())
            }
            Credential::Oauth2 { header, .. } => {
                let token = self.oauth.token(dest, credential, &versioned).await?;
                let mut hv = HeaderValue::from_str(&format!(
                    "Bearer {}",
                    token.expose_str().unwrap_or_default()
                ))
                .map_err(|_| Unavailable::Oauth(OauthError::UnusableToken))?;
                hv.set_sensitive(true);
                parts.headers.insert(header.clone(), hv);
                let token = token.expose();
                let key = format!("oauth\u{0}{name}\u{0}{:x}", fingerprint(token));
                Ok(Injected {
                    client: None,
                    reflect: Some(self.reflect(name, key, token)?),
                })
            }
            Credential::ClientCert { .. } => {
                // The handle travelled in some header; it must not go upstream.
                let names: Vec<_> = parts
                    .headers
                    .iter()
                    .filter(|(_, v)| !egress_handle::scan(v.as_bytes()).is_empty())
                    .map(|(k, _)| k.clone())
                    .collect();
                for n in names {
                    parts.headers.remove(n);
                }
                let key = (name.to_owned(), versioned.version.clone());
                if let Some(c) = self.mtls.get(&key) {
                    return Ok(Injected {
                        client: Some(c),
                        ..Injected::default()
                    });
                }
                let Secret::TlsCertificate { chain_pem, key_pem } = &*versioned.secret else {
                    return Err(Unavailable::WrongKind(name.to_owned(), "a tls_certificate"));
                };
                let client = mtls::client(dest.snap, chain_pem, key_pem.expose())
                    .map_err(|e| Unavailable::ClientCert(name.to_owned(), e))?;
                self.mtls.insert(key, client.clone());
                Ok(Injected {
                    client: Some(client),
                    ..Injected::default()
                })
            }
        }
    }

    /// What a secret-carrying injection returns: the matcher for that secret's version.
    fn injected(&self, name: &str, version: &str, value: &[u8]) -> Result<Injected, Unavailable> {
        let key = format!("{name}\u{0}{version}");
        Ok(Injected {
            client: None,
            reflect: Some(self.reflect(name, key, value)?),
        })
    }
}

/// The value of a single-value generic secret (header and swap credentials).
fn single_value<'a>(name: &str, secret: &'a Secret) -> Result<&'a SecretBytes, Unavailable> {
    match secret {
        Secret::Generic {
            value: Some(value), ..
        } => Ok(value),
        _ => Err(Unavailable::WrongKind(
            name.to_owned(),
            "a single-value generic secret",
        )),
    }
}

/// A cache key for a token that does not keep the token itself.
fn fingerprint(token: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

/// Why a verified handle's credential could not be put on the request: the cause of a
/// `credential_unavailable` refusal. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no secret source is configured")]
    NoSource,
    #[error("secret `{0}` has not been delivered by the secret source")]
    NotDelivered(String),
    #[error("secret `{0}` is not {1}")]
    WrongKind(String, &'static str),
    #[error("secret `{0}` is not UTF-8 text")]
    NotText(String),
    #[error("secret `{0}` is not a valid header value")]
    NotHeaderValue(String),
    #[error("secret `{0}`: {1}")]
    ClientCert(String, mtls::MtlsError),
    #[error(transparent)]
    Oauth(#[from] OauthError),
    #[error("secret `{0}`: {1}")]
    Swap(String, swap::SwapError),
    #[error("secret `{0}`: cannot build the matcher that keeps it out of responses")]
    Redaction(String),
}

/// Fills a header template; `Err` when `{secret}` is wanted and the secret is not text.
fn fill(format: &str, secret: &[u8]) -> Result<String, ()> {
    if format.contains("{secret_base64}") {
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        return Ok(format.replace("{secret_base64}", &b64));
    }
    let text = std::str::from_utf8(secret).map_err(|_| ())?;
    Ok(format.replace("{secret}", text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(fill("Bearer {secret}", b"sk-1").unwrap(), "Bearer sk-1");
        assert_eq!(fill("Basic {secret_base64}", b"u:p").unwrap(), "Basic dTpw");
        assert!(fill("{secret}", &[0xff]).is_err());
    }
}
