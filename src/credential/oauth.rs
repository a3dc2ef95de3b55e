//! OAuth2 client-credentials tokens for destinations with an `oauth2` credential.
//!
//! The client id and secret come from a generic secret (`client_id`, `client_secret`); the
//! token endpoint is called over the same verified, vetted upstream path as bumped requests.
//! Tokens are cached until 30 seconds before they expire; concurrent requests share one
//! exchange (single flight). A rotated client secret (new version) gets a new token. Tokens are
//! held as redacting secret bytes; nothing here logs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use egress_sds::{Secret, SecretBytes, Versioned};
use http::{Request, header};
use http_body_util::BodyExt;

use crate::credential::Dest;
use crate::credential::swap::percent_encode;
use crate::policy::Credential;

/// Why no access token could be had. Never carries the client secret or a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OauthError {
    #[error("not an oauth2 credential")]
    NotOauth,
    #[error("the oauth2 client secret is not a generic secret")]
    NotGeneric,
    #[error("the oauth2 client secret has no `{0}`")]
    Missing(&'static str),
    #[error("no upstream client for the token endpoint")]
    NoClient,
    #[error("token request: {0}")]
    Request(String),
    #[error("the token endpoint timed out")]
    Timeout,
    #[error("the token endpoint is unreachable: {0}")]
    Unreachable(String),
    #[error("token response: {0}")]
    Body(String),
    #[error("the token endpoint answered {0}")]
    Status(http::StatusCode),
    #[error("the token response is not valid JSON")]
    NotJson,
    #[error("the token endpoint returned an unusable token")]
    UnusableToken,
}

const REFRESH_MARGIN: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct Token {
    value: Arc<SecretBytes>,
    fresh_until: Instant,
}

#[derive(Debug)]
pub struct OauthTokens {
    cache: moka::future::Cache<String, Token>,
    exchanges: std::sync::atomic::AtomicU64,
}

impl Default for OauthTokens {
    fn default() -> Self {
        OauthTokens::new()
    }
}

impl OauthTokens {
    pub fn new() -> OauthTokens {
        OauthTokens {
            cache: moka::future::Cache::builder()
                .max_capacity(1024)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            exchanges: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Token exchanges performed so far (for metrics and tests).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn token(
        &self,
        dest: &Dest<'_>,
        credential: &Credential,
        client: &Versioned,
    ) -> Result<Arc<SecretBytes>, OauthError> {
        let Credential::Oauth2 {
            token_url,
            client: name,
            scopes,
            ..
        } = credential
        else {
            return Err(OauthError::NotOauth);
        };
        let key = format!(
            "{name}\u{0}{}\u{0}{token_url}\u{0}{}",
            client.version,
            scopes.join(" ")
        );
        if let Some(t) = self.cache.get(&key).await {
            if t.fresh_until > Instant::now() {
                return Ok(t.value);
            }
            self.cache.invalidate(&key).await;
        }
        let t = self
            .cache
            .try_get_with(key, self.exchange(dest, token_url, scopes, client))
            .await
            .map_err(|e: Arc<OauthError>| (*e).clone())?;
        Ok(t.value)
    }

    async fn exchange(
        &self,
        dest: &Dest<'_>,
        token_url: &str,
        scopes: &[String],
        client: &Versioned,
    ) -> Result<Token, OauthError> {
        self.exchanges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Secret::Generic { values, .. } = &*client.secret else {
            return Err(OauthError::NotGeneric);
        };
        let get = |k: &'static str| {
            values
                .get(k)
                .and_then(|v| v.expose_str())
                .ok_or(OauthError::Missing(k))
        };
        let (id, secret) = (get("client_id")?, get("client_secret")?);
        let mut form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            percent_encode(id),
            percent_encode(secret)
        );
        if !scopes.is_empty() {
            form.push_str(&format!("&scope={}", percent_encode(&scopes.join(" "))));
        }
        let client_http = if token_url.starts_with("https://") {
            dest.snap.tls.clone()
        } else {
            Some(dest.snap.plain.clone())
        };
        let Some(client_http) = client_http else {
            return Err(OauthError::NoClient);
        };
        let req = Request::post(token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(crate::body::full(Bytes::from(form)))
            .map_err(|e| OauthError::Request(e.to_string()))?;
        let timeout = dest.snap.config.upstream.response_header_timeout;
        let resp = tokio::time::timeout(timeout, client_http.request(req))
            .await
            .map_err(|_| OauthError::Timeout)?
            .map_err(|e| OauthError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| OauthError::Body(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(OauthError::Status(status));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| OauthError::NotJson)?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        Ok(Token {
            value: Arc::new(SecretBytes::new(parsed.access_token.into_bytes())),
            fresh_until: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }
}
