//! A destination's credential binding: which secret, and how it is presented upstream.
//!
//! This is configuration data attached to a policy [`Rule`](super::Rule); applying it (handle
//! verification, secret lookup, header filling) is the `credential` stage's job, not this one's.

use http::HeaderName;
use serde::Serialize;

/// How a destination's credential is obtained and presented.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// A header filled from a template: `{secret}` is the secret value, `{secret_base64}` its
    /// base64 (for HTTP Basic from a `user:password` secret).
    Header {
        secret: String,
        #[serde(serialize_with = "ser_header")]
        header: HeaderName,
        format: String,
    },
    /// OAuth2 client credentials: `client` names a generic secret with `client_id` and
    /// `client_secret`; the access token goes into `header` as a bearer token.
    Oauth2 {
        token_url: String,
        client: String,
        scopes: Vec<String>,
        #[serde(serialize_with = "ser_header")]
        header: HeaderName,
    },
    /// The handle swapped **in place** for the secret wherever the guest put it: in any of
    /// `headers` (the rest of the value kept, `Bearer eeh_…` → `Bearer sk-…`, and inside
    /// `Basic` credentials too) or in the `query` parameter. One binding serves SDK
    /// generations that moved their key from one header to another.
    Swap {
        secret: String,
        #[serde(serialize_with = "ser_headers")]
        headers: Vec<HeaderName>,
        query: Option<String>,
    },
    /// A `tls_certificate` presented to the upstream (mTLS).
    ClientCert { secret: String },
}

impl Credential {
    /// The secret names this credential needs from the secret source.
    pub fn secret_name(&self) -> &str {
        match self {
            Credential::Header { secret, .. }
            | Credential::Swap { secret, .. }
            | Credential::ClientCert { secret } => secret,
            Credential::Oauth2 { client, .. } => client,
        }
    }

    /// Whether a handle found in request header `name` is where this credential expects it.
    /// A client certificate credential takes its handle in any header (it is removed).
    pub fn binds_header(&self, name: &HeaderName) -> bool {
        match self {
            Credential::Header { header, .. } | Credential::Oauth2 { header, .. } => header == name,
            Credential::Swap { headers, .. } => headers.contains(name),
            Credential::ClientCert { .. } => true,
        }
    }

    /// The query parameter a handle is swapped in, if any.
    pub fn binds_query(&self) -> Option<&str> {
        match self {
            Credential::Swap { query, .. } => query.as_deref(),
            _ => None,
        }
    }
}

fn ser_headers<S: serde::Serializer>(h: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(HeaderName::as_str))
}

fn ser_header<S: serde::Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}
