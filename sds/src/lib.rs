//! Envoy SDS v3 for egress-edge: the wire types, the secret model shared with the proxy, the
//! secrets-file source, a subscribing SDS client and the standalone `sds serve` server, plus the
//! fleet resources a control plane shares with its edges over ADS (`fleet`, `client::ads`).
//!
//! It does not decide which request gets which credential (that is the proxy's job) and it
//! never logs, formats or returns a secret value: values live in [`secret::SecretBytes`].

pub mod client;
pub mod file;
pub mod file_source;
pub mod fleet;
pub mod proto;
pub mod secret;
pub mod server;
pub mod store;

mod error;
mod pem;

pub use error::{SdsError, SecretError, Unavailable};
pub use secret::{Secret, SecretBytes, Versioned};
pub use store::SecretStore;

/// Entry points for the fuzz targets in `fuzz/` and their stable replay test. Not an API:
/// hidden, unversioned, and may change with any commit.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::BTreeSet;

    use prost::Message;

    use crate::client::session::apply_response;
    use crate::proto::DiscoveryResponse;
    use crate::store::SecretStore;

    /// The secret names the fuzzed client subscribes to.
    pub const NAMES: [&str; 3] = ["api-key", "client-cert", "upstream-roots"];

    /// Frames responses the way [`responses`] splits them: a 2-byte big-endian length each.
    pub fn frame(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let len = u16::try_from(m.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(m.get(..usize::from(len)).unwrap_or(m.as_slice()));
        }
        out
    }

    /// Seed inputs built from this crate's own types: accepted updates, rejected ones (wrong
    /// type, unrequested or repeated name, unusable secret) and sequences of both.
    pub fn seeds() -> Vec<Vec<u8>> {
        use crate::proto::{Any, SECRET_TYPE_URL};
        use crate::secret::{Secret, SecretBytes};

        let response = |version: &str, nonce: &str, resources: Vec<Any>| {
            DiscoveryResponse {
                version_info: version.to_owned(),
                resources,
                type_url: SECRET_TYPE_URL.to_owned(),
                nonce: nonce.to_owned(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let key = |v: &str| Secret::generic(v.to_owned()).to_any("api-key");
        let values = Secret::Generic {
            value: None,
            values: [
                ("client_id".to_owned(), SecretBytes::from("id".to_owned())),
                (
                    "client_secret".to_owned(),
                    SecretBytes::from("s3cr3t".to_owned()),
                ),
            ]
            .into_iter()
            .collect(),
        }
        .to_any("client-cert");
        let bad_cert = Secret::TlsCertificate {
            chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            key_pem: SecretBytes::from("not a key".to_owned()),
        }
        .to_any("client-cert");
        let roots = Secret::ValidationContext {
            trusted_ca_pem: "not pem".to_owned(),
        }
        .to_any("upstream-roots");
        let wrong_type = Any {
            type_url: "type.googleapis.com/google.protobuf.Empty".to_owned(),
            value: Vec::new(),
        };
        let ok1 = response("v1", "n1", vec![key("one")]);
        let ok2 = response("v2", "n2", vec![key("two"), values.clone()]);
        let dup = response("v3", "n3", vec![key("a"), key("b")]);
        let unrequested = response(
            "v4",
            "n4",
            vec![Secret::generic("x".to_owned()).to_any("other")],
        );
        vec![
            frame(std::slice::from_ref(&ok1)),
            frame(&[ok1.clone(), ok2.clone()]),
            frame(&[ok1.clone(), dup, ok2.clone()]),
            frame(&[ok2.clone(), unrequested, ok1.clone()]),
            frame(&[response("v5", "n5", vec![bad_cert]), ok1.clone()]),
            frame(&[ok1.clone(), response("v6", "n6", vec![roots, wrong_type])]),
            frame(&[response("", "", Vec::new()), ok2]),
        ]
    }

    /// Decodes a sequence of framed `DiscoveryResponse`s and applies each in order, as the
    /// client session does, checking that a NACK leaves the store as it was and an ACK
    /// updates the version.
    pub fn responses(data: &[u8]) {
        let names: BTreeSet<String> = NAMES.iter().map(|s| (*s).to_owned()).collect();
        let store = SecretStore::new(names.iter().cloned());
        let mut accepted = String::new();
        let mut rest = data;
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let body = rest.get(2..2 + len).unwrap_or(&rest[2..]);
            rest = rest.get(2 + len..).unwrap_or_default();
            let Ok(response) = DiscoveryResponse::decode(body) else {
                continue;
            };
            let before: Vec<_> = NAMES
                .iter()
                .map(|n| store.get(n).map(|v| v.version))
                .collect();
            let previous = accepted.clone();
            match apply_response(&store, &names, &mut accepted, &response) {
                Ok(()) => assert_eq!(accepted, response.version_info),
                Err(_) => {
                    assert_eq!(accepted, previous, "a NACK keeps the accepted version");
                    let after: Vec<_> = NAMES
                        .iter()
                        .map(|n| store.get(n).map(|v| v.version))
                        .collect();
                    assert_eq!(before, after, "a NACK keeps the last good secrets");
                }
            }
            let _ = store.stats();
            let _ = store.is_warm();
        }
    }
}
