//! JSON shapes of the admin API's handle endpoints, so every front end (admin API, CLI) parses
//! and prints them identically:
//!
//! - `POST /v1/handles` body → [`MintRequest`] (`ttl` is a humantime string such as `"15m"`,
//!   defaulting to [`DEFAULT_TTL`]; unknown fields are refused);
//! - its response ← [`Minted`] (`{"handle","id","expires_at"}` with RFC 3339 expiry);
//! - `POST /v1/handles/revoke` body → [`RevokeTarget`] (exactly one of `id`, `session` or
//!   `sandbox`).
//!
//! Field validation beyond JSON shape happens at mint/revoke time. This module does no I/O.

use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mint::{DEFAULT_TTL, MintRequest, Minted};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequestBody {
    credentials: Vec<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    path_prefixes: Option<Vec<String>>,
    #[serde(default)]
    sandbox: Option<String>,
}

impl<'de> Deserialize<'de> for MintRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let body = MintRequestBody::deserialize(deserializer)?;
        let ttl = match &body.ttl {
            None => DEFAULT_TTL,
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                D::Error::custom(format!("ttl {text:?} is not a duration like \"15m\": {e}"))
            })?,
        };
        Ok(MintRequest {
            credentials: body.credentials,
            ttl,
            session: body.session,
            host: body.host,
            methods: body.methods,
            path_prefixes: body.path_prefixes,
            sandbox: body.sandbox,
        })
    }
}

impl Serialize for Minted {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Minted", 3)?;
        s.serialize_field("handle", &self.handle)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("expires_at", &self.expires_at_rfc3339())?;
        s.end()
    }
}

/// What to revoke: one handle by id, or every handle of a session or bound to a sandbox issued
/// so far.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RevokeTarget {
    /// A handle id (32 hex characters).
    Id(String),
    /// A session name.
    Session(String),
    /// A sandbox id (the handles' `sandbox` claim).
    Sandbox(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
}

impl<'de> Deserialize<'de> for RevokeTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let RevokeBody {
            id,
            session,
            sandbox,
        } = RevokeBody::deserialize(deserializer)?;
        match (id, session, sandbox) {
            (Some(id), None, None) => Ok(RevokeTarget::Id(id)),
            (None, Some(session), None) => Ok(RevokeTarget::Session(session)),
            (None, None, Some(sandbox)) => Ok(RevokeTarget::Sandbox(sandbox)),
            _ => Err(D::Error::custom(
                "give exactly one of \"id\", \"session\" or \"sandbox\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn mint_body_parses_with_defaults() {
        let req: MintRequest = serde_json::from_str(
            r#"{"credentials":["openai-key"],"ttl":"15m","session":"sbx-1","host":"api.openai.com"}"#,
        )
        .unwrap();
        assert_eq!(req.ttl, Duration::from_secs(900));
        assert_eq!(req.session.as_deref(), Some("sbx-1"));
        assert_eq!(req.sandbox, None);
        let req: MintRequest = serde_json::from_str(r#"{"credentials":["a"]}"#).unwrap();
        assert_eq!(req.ttl, DEFAULT_TTL);
        assert_eq!(req, MintRequest::new(["a"], DEFAULT_TTL));
        assert!(
            serde_json::from_str::<MintRequest>(r#"{"credentials":["a"],"ttl":"soon"}"#).is_err()
        );
        assert!(serde_json::from_str::<MintRequest>(r#"{"credentials":["a"],"extra":1}"#).is_err());
    }

    #[test]
    fn mint_body_accepts_sandbox() {
        let req: MintRequest =
            serde_json::from_str(r#"{"credentials":["a"],"session":"s","sandbox":"sbx-7"}"#)
                .unwrap();
        assert_eq!(req.sandbox.as_deref(), Some("sbx-7"));
        assert_eq!(req.session.as_deref(), Some("s"));
        let req: MintRequest =
            serde_json::from_str(r#"{"credentials":["a"],"sandbox":null}"#).unwrap();
        assert_eq!(req.sandbox, None);
        assert!(
            serde_json::from_str::<MintRequest>(r#"{"credentials":["a"],"sandbox":7}"#).is_err()
        );
    }

    #[test]
    fn revoke_body_needs_exactly_one() {
        assert_eq!(
            serde_json::from_str::<RevokeTarget>(r#"{"id":"ab"}"#).unwrap(),
            RevokeTarget::Id("ab".into())
        );
        assert_eq!(
            serde_json::from_str::<RevokeTarget>(r#"{"session":"s"}"#).unwrap(),
            RevokeTarget::Session("s".into())
        );
        assert_eq!(
            serde_json::from_str::<RevokeTarget>(r#"{"sandbox":"sbx-7"}"#).unwrap(),
            RevokeTarget::Sandbox("sbx-7".into())
        );
        for body in [
            r#"{}"#,
            r#"{"id":"a","session":"s"}"#,
            r#"{"id":"a","sandbox":"b"}"#,
            r#"{"session":"s","sandbox":"b"}"#,
            r#"{"id":"a","session":"s","sandbox":"b"}"#,
            r#"{"sandbox":null}"#,
        ] {
            let err = serde_json::from_str::<RevokeTarget>(body).unwrap_err();
            assert!(
                err.to_string()
                    .contains(r#"give exactly one of "id", "session" or "sandbox""#),
                "{body}: {err}"
            );
        }
        assert!(serde_json::from_str::<RevokeTarget>(r#"{"sandboxes":"b"}"#).is_err());
    }

    #[test]
    fn minted_serializes_rfc3339() {
        let minted = Minted {
            handle: "eeh_x.y".into(),
            id: "00".into(),
            expires_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(
            serde_json::to_string(&minted).unwrap(),
            r#"{"handle":"eeh_x.y","id":"00","expires_at":"2023-11-14T22:13:20Z"}"#
        );
    }
}
