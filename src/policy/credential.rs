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
    /// A `tls_certificate` presented to the upstream (mTLS).
    ClientCert { secret: String },
}

impl Credential {
    /// The secret names this credential needs from the secret source.
    pub fn secret_name(&self) -> &str {
        match self {
            Credential::Header { secret, .. } | Credential::ClientCert { secret } => secret,
            Credential::Oauth2 { client, .. } => client,
        }
    }

    /// The request header a handle is looked for in (none for client certificates).
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            Credential::Header { header, .. } | Credential::Oauth2 { header, .. } => Some(header),
            Credential::ClientCert { .. } => None,
        }
    }
}

fn ser_header<S: serde::Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}
