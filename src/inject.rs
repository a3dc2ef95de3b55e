//! Credential injection for bumped requests.
//!
//! Placeholder until the handle issue lands: a request to a destination with a credential
//! binding is refused `credential_unavailable` (fail closed), never forwarded without it.

use http::request::Parts;

use crate::access_log::AccessEvent;
use crate::bump::Session;
use crate::host::Host;
use crate::policy::Rule;
use crate::refusal::{Kind, Refusal};
use crate::state::HttpClient;

/// Applies the destination's credential, if any; returns a client to use instead of the
/// default one (mTLS credentials).
pub async fn apply(
    s: &Session,
    rule: Option<&Rule>,
    host: &Host,
    _parts: &mut Parts,
    _ev: &mut AccessEvent,
) -> Result<Option<HttpClient>, Refusal> {
    match rule.and_then(|r| r.credential.as_ref()) {
        None => Ok(None),
        Some(c) => Err(Refusal::new(
            Kind::CredentialUnavailable,
            host.to_string(),
            s.port,
            &*s.decision.rule_id,
        )
        .with_cause(format!(
            "credential `{}` cannot be injected yet",
            c.secret_name()
        ))),
    }
}
