//! OAuth2 client-credentials tokens for destinations with an `oauth2` credential.
//!
//! The client id and secret come from a generic secret (`client_id`, `client_secret`); the
//! token endpoint is called over the same verified, vetted upstream path as bumped requests.
//! Tokens are cached until 30 seconds before they expire; concurrent requests share one
//! exchange (single flight). A rotated client secret (new version) gets a new token. Tokens are
//! redacting secret bytes; nothing here logs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use egress_sds::{Secret, SecretBytes, Versioned};
use http::{Request, header};
use http_body_util::BodyExt;

use crate::bump::Session;
use crate::config::Credential;

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
        s: &Session,
        credential: &Credential,
        client: &Versioned,
    ) -> Result<Arc<SecretBytes>, String> {
        let Credential::Oauth2 {
            token_url,
            client: name,
            scopes,
            ..
        } = credential
        else {
            return Err("not an oauth2 credential".into());
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
            .try_get_with(key, self.exchange(s, token_url, scopes, client))
            .await
            .map_err(|e: Arc<String>| (*e).clone())?;
        Ok(t.value)
    }

    async fn exchange(
        &self,
        s: &Session,
        token_url: &str,
        scopes: &[String],
        client: &Versioned,
    ) -> Result<Token, String> {
        self.exchanges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Secret::Generic { values, .. } = &*client.secret else {
            return Err("the oauth2 client secret is not a generic secret".into());
        };
        let get = |k: &str| {
            values
                .get(k)
                .and_then(|v| v.expose_str())
                .ok_or_else(|| format!("the oauth2 client secret has no `{k}`"))
        };
        let (id, secret) = (get("client_id")?, get("client_secret")?);
        let mut form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            urlenc(id),
            urlenc(secret)
        );
        if !scopes.is_empty() {
            form.push_str(&format!("&scope={}", urlenc(&scopes.join(" "))));
        }
        let client_http = if token_url.starts_with("https://") {
            s.snap.tls.clone()
        } else {
            Some(s.snap.plain.clone())
        };
        let Some(client_http) = client_http else {
            return Err("no upstream client for the token endpoint".into());
        };
        let req = Request::post(token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(crate::refusal::full(Bytes::from(form)))
            .map_err(|e| format!("token request: {e}"))?;
        let timeout = s.snap.config.upstream.response_header_timeout;
        let resp = tokio::time::timeout(timeout, client_http.request(req))
            .await
            .map_err(|_| "the token endpoint timed out".to_owned())?
            .map_err(|e| format!("the token endpoint is unreachable: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("token response: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("the token endpoint answered {status}"));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| "the token response is not valid JSON".to_owned())?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        Ok(Token {
            value: Arc::new(SecretBytes::new(parsed.access_token.into_bytes())),
            fresh_until: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }
}

fn urlenc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
