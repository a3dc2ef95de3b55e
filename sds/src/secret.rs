//! The secret model shared with the proxy: [`SecretBytes`], [`Secret`], [`Versioned`], their
//! validation, and conversion to and from Envoy's `Secret` message.
//!
//! It does not fetch or store secrets (see `file`, `client`, `store`). A proto `DataSource`
//! that points at a file or an environment variable is refused: those name things on the
//! server's machine, which a remote client cannot (and must not try to) read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::SecretError;
use crate::pem;
use crate::proto::{self, DataSource, Specifier, tls};

/// Secret bytes: redacted in `Debug`, wiped from memory on drop.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The raw value. Callers must not log or format it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as UTF-8, if it is (header values usually must be).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

// Takes the String's buffer as is, so no unwiped copy is left behind.
impl From<String> for SecretBytes {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted, {} bytes>)", self.0.len())
    }
}

// Constant time for equal lengths, so comparing against a secret does not time its prefix.
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for SecretBytes {}

/// One named secret, as the proxy uses it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A credential (`value`) or a set of related credentials (`values`, e.g. OAuth client id
    /// and secret). Envoy's `generic_secret`.
    Generic {
        value: Option<SecretBytes>,
        values: BTreeMap<String, SecretBytes>,
    },
    /// A certificate chain and its private key (PEM). Envoy's `tls_certificate`.
    TlsCertificate {
        chain_pem: String,
        key_pem: SecretBytes,
    },
    /// Trust anchors (PEM). Envoy's `validation_context`.
    ValidationContext { trusted_ca_pem: String },
}

// Hand-written so that even the (public) PEM texts print as sizes: a dump stays short and
// there is no derive that could start printing a field added later.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Generic { value, values } => f
                .debug_struct("Generic")
                .field("value", value)
                .field("values", values)
                .finish(),
            Secret::TlsCertificate { chain_pem, key_pem } => f
                .debug_struct("TlsCertificate")
                .field("chain_pem", &format_args!("<{} bytes>", chain_pem.len()))
                .field("key_pem", key_pem)
                .finish(),
            Secret::ValidationContext { trusted_ca_pem } => f
                .debug_struct("ValidationContext")
                .field(
                    "trusted_ca_pem",
                    &format_args!("<{} bytes>", trusted_ca_pem.len()),
                )
                .finish(),
        }
    }
}

/// A secret with the version it was delivered under.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub secret: Arc<Secret>,
    pub version: String,
    pub updated_at: SystemTime,
}

impl Versioned {
    pub fn new(secret: Secret, version: impl Into<String>) -> Self {
        Self {
            secret: Arc::new(secret),
            version: version.into(),
            updated_at: SystemTime::now(),
        }
    }
}

impl Secret {
    /// A generic secret holding one value.
    pub fn generic(value: impl Into<SecretBytes>) -> Self {
        Secret::Generic {
            value: Some(value.into()),
            values: BTreeMap::new(),
        }
    }

    /// The Envoy oneof name of this secret's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Generic { .. } => "generic_secret",
            Secret::TlsCertificate { .. } => "tls_certificate",
            Secret::ValidationContext { .. } => "validation_context",
        }
    }

    /// Checks that the secret is usable: PEM parses and the key matches the certificate;
    /// a generic secret holds at least one non-empty value.
    pub fn validate(&self) -> Result<(), SecretError> {
        match self {
            Secret::Generic { value, values } => {
                if value.is_none() && values.is_empty() {
                    return Err(SecretError::Empty("generic_secret".into()));
                }
                if value.as_ref().is_some_and(SecretBytes::is_empty) {
                    return Err(SecretError::Empty("generic_secret.secret".into()));
                }
                if let Some(key) = values.iter().find(|(_, v)| v.is_empty()).map(|(k, _)| k) {
                    return Err(SecretError::Empty(format!("generic_secret.secrets[{key}]")));
                }
                Ok(())
            }
            Secret::TlsCertificate { chain_pem, key_pem } => {
                pem::check_identity(chain_pem.as_bytes(), key_pem.expose()).map_err(
                    |(field, reason)| SecretError::Invalid {
                        field: format!("tls_certificate.{field}"),
                        reason,
                    },
                )
            }
            Secret::ValidationContext { trusted_ca_pem } => pem::roots(trusted_ca_pem.as_bytes())
                .map(|_| ())
                .map_err(|reason| SecretError::Invalid {
                    field: "validation_context.trusted_ca".into(),
                    reason,
                }),
        }
    }

    /// The Envoy message for this secret, with every blob inline.
    pub fn to_proto(&self, name: &str) -> tls::Secret {
        let inline = |b: &[u8]| DataSource {
            specifier: Some(Specifier::InlineBytes(b.to_vec())),
        };
        let r#type = match self {
            Secret::Generic { value, values } => {
                tls::secret::Type::GenericSecret(tls::GenericSecret {
                    secret: value.as_ref().map(|v| inline(v.expose())),
                    secrets: values
                        .iter()
                        .map(|(k, v)| (k.clone(), inline(v.expose())))
                        .collect(),
                })
            }
            Secret::TlsCertificate { chain_pem, key_pem } => {
                tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                    certificate_chain: Some(inline(chain_pem.as_bytes())),
                    private_key: Some(inline(key_pem.expose())),
                    password: None,
                })
            }
            Secret::ValidationContext { trusted_ca_pem } => {
                tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: Some(inline(trusted_ca_pem.as_bytes())),
                })
            }
        };
        tls::Secret {
            name: name.to_string(),
            r#type: Some(r#type),
        }
    }

    /// The secret packed as a DiscoveryResponse resource.
    pub fn to_any(&self, name: &str) -> proto::Any {
        proto::Any {
            type_url: proto::SECRET_TYPE_URL.to_string(),
            value: self.to_proto(name).encode_to_vec(),
        }
    }

    /// Converts and validates an Envoy `Secret`.
    pub fn from_proto(msg: &tls::Secret) -> Result<Secret, SecretError> {
        let secret = match msg.r#type.as_ref().ok_or(SecretError::NoType)? {
            tls::secret::Type::GenericSecret(g) => {
                let value = match &g.secret {
                    Some(ds) => Some(SecretBytes::new(inline(ds, "generic_secret.secret")?)),
                    None => None,
                };
                let mut values = BTreeMap::new();
                for (k, ds) in &g.secrets {
                    let field = format!("generic_secret.secrets[{k}]");
                    values.insert(k.clone(), SecretBytes::new(inline(ds, &field)?));
                }
                Secret::Generic { value, values }
            }
            tls::secret::Type::TlsCertificate(t) => {
                if t.password.is_some() {
                    return Err(SecretError::Unsupported(
                        "tls_certificate with a password-protected private_key",
                    ));
                }
                let chain = t
                    .certificate_chain
                    .as_ref()
                    .ok_or(SecretError::Missing("tls_certificate.certificate_chain"))?;
                let key = t
                    .private_key
                    .as_ref()
                    .ok_or(SecretError::Missing("tls_certificate.private_key"))?;
                Secret::TlsCertificate {
                    chain_pem: utf8(
                        inline(chain, "tls_certificate.certificate_chain")?,
                        "tls_certificate.certificate_chain",
                    )?,
                    key_pem: SecretBytes::new(inline(key, "tls_certificate.private_key")?),
                }
            }
            tls::secret::Type::ValidationContext(v) => {
                let ca = v
                    .trusted_ca
                    .as_ref()
                    .ok_or(SecretError::Missing("validation_context.trusted_ca"))?;
                Secret::ValidationContext {
                    trusted_ca_pem: utf8(
                        inline(ca, "validation_context.trusted_ca")?,
                        "validation_context.trusted_ca",
                    )?,
                }
            }
            tls::secret::Type::SessionTicketKeys(_) => {
                return Err(SecretError::Unsupported("session_ticket_keys"));
            }
        };
        secret.validate()?;
        Ok(secret)
    }

    /// Unpacks, converts and validates one DiscoveryResponse resource; returns its name too.
    pub fn from_any(any: &proto::Any) -> Result<(String, Secret), SecretError> {
        if any.type_url != proto::SECRET_TYPE_URL {
            return Err(SecretError::WrongType(any.type_url.clone()));
        }
        let msg = tls::Secret::decode(any.value.as_slice())
            .map_err(|e| SecretError::Decode(e.to_string()))?;
        let secret = Secret::from_proto(&msg)?;
        Ok((msg.name, secret))
    }
}

fn inline(ds: &DataSource, field: &str) -> Result<Vec<u8>, SecretError> {
    match &ds.specifier {
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(Specifier::Filename(_)) => Err(SecretError::NotInline {
            field: field.to_string(),
            kind: "filename",
        }),
        Some(Specifier::EnvironmentVariable(_)) => Err(SecretError::NotInline {
            field: field.to_string(),
            kind: "environment_variable",
        }),
        None => Err(SecretError::Empty(field.to_string())),
    }
}

fn utf8(bytes: Vec<u8>, field: &str) -> Result<String, SecretError> {
    String::from_utf8(bytes).map_err(|_| SecretError::Invalid {
        field: field.to_string(),
        reason: "is not UTF-8 PEM text".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_values() {
        let s = Secret::Generic {
            value: Some(SecretBytes::from("sk-very-secret".to_string())),
            values: BTreeMap::from([("id".to_string(), SecretBytes::from(b"hidden".to_vec()))]),
        };
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("sk-very-secret") && !dbg.contains("hidden"),
            "{dbg}"
        );
        assert!(dbg.contains("<redacted, 14 bytes>"), "{dbg}");
        let any = s.to_any("k");
        let dbg = format!("{:?} {:?}", any, s.to_proto("k"));
        assert!(
            !dbg.contains("sk-very-secret") && !dbg.contains("hidden"),
            "{dbg}"
        );
    }

    #[test]
    fn generic_round_trip() {
        let s = Secret::generic("v".to_string());
        let (name, back) = Secret::from_any(&s.to_any("n")).unwrap();
        assert_eq!(name, "n");
        assert_eq!(back, s);
    }

    #[test]
    fn filename_source_is_refused() {
        let msg = tls::Secret {
            name: "x".into(),
            r#type: Some(tls::secret::Type::GenericSecret(tls::GenericSecret {
                secret: Some(DataSource {
                    specifier: Some(Specifier::Filename("/etc/secret".into())),
                }),
                secrets: Default::default(),
            })),
        };
        let err = Secret::from_proto(&msg).unwrap_err();
        assert!(
            matches!(
                err,
                SecretError::NotInline {
                    kind: "filename",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_generic_is_invalid() {
        let s = Secret::Generic {
            value: None,
            values: BTreeMap::new(),
        };
        assert!(s.validate().is_err());
        assert!(Secret::generic(Vec::new()).validate().is_err());
    }

    #[test]
    fn garbage_certificate_is_invalid() {
        let s = Secret::TlsCertificate {
            chain_pem: "not a pem".into(),
            key_pem: SecretBytes::from("also not".to_string()),
        };
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("certificate_chain"), "{err}");
    }
}
