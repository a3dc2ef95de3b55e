//! Generation of a fresh per-deployment CA (ECDSA P-256, self-signed).
//!
//! Produces the PEM texts only; storing them (and racing other processes for it) is
//! `store.rs`, and turning them into a usable [`crate::DeploymentCa`] is `ca.rs`, so a generated
//! CA goes through exactly the same validation as one loaded from disk or brought by the operator.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::constraints::{self, PermittedName};
use crate::error::CaError;

/// Default CA lifetime: long enough that rotating the guests' trust store is a rare, planned event.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Backdating absorbs guests whose clock runs behind the proxy's.
const CA_BACKDATE: Duration = Duration::from_secs(3600);

/// X.520 upper bound for commonName.
const CN_MAX: usize = 64;

/// What a new deployment CA should look like, and what an existing one must cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaOptions {
    /// Names the deployment in the CA's common name, so a person inspecting a guest's trust
    /// store can tell which proxy a CA belongs to.
    pub deployment: String,
    /// Name constraints. Empty: an unconstrained CA. Non-empty: a new CA is limited to these
    /// subtrees, and an existing constrained CA must cover all of them.
    pub permitted: Vec<PermittedName>,
    /// Lifetime of a newly generated CA.
    pub validity: Duration,
}

impl CaOptions {
    /// Unconstrained CA for `deployment`, valid for [`DEFAULT_CA_VALIDITY`].
    pub fn new(deployment: impl Into<String>) -> Self {
        CaOptions {
            deployment: deployment.into(),
            permitted: Vec::new(),
            validity: DEFAULT_CA_VALIDITY,
        }
    }

    /// Restricts a new CA to `permitted` (see [`CaOptions::permitted`]).
    pub fn with_permitted(mut self, permitted: Vec<PermittedName>) -> Self {
        self.permitted = permitted;
        self
    }
}

/// PEM texts of a freshly generated CA. The key is wiped from memory on drop.
pub(crate) struct GeneratedPems {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: Zeroizing<String>,
}

pub(crate) fn generate(opts: &CaOptions) -> Result<GeneratedPems, CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Signing {
            context: "generating the CA key".into(),
            source,
        })?;
    let now = OffsetDateTime::now_utc();

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name(&opts.deployment, now));
    dn.push(DnType::OrganizationName, "egress-edge");
    params.distinguished_name = dn;
    // pathlen 0: this CA signs leaves only; a leaked key cannot be used to create sub-CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - CA_BACKDATE;
    params.not_after = now + opts.validity;
    params.serial_number = Some(crate::leaf::random_serial()?);
    params.name_constraints = constraints::to_rcgen(&opts.permitted);

    let cert = params
        .self_signed(&key)
        .map_err(|source| CaError::Signing {
            context: "self-signing the CA certificate".into(),
            source,
        })?;
    Ok(GeneratedPems {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn common_name(deployment: &str, now: OffsetDateTime) -> String {
    let deployment = deployment.trim();
    let deployment = if deployment.is_empty() {
        "default"
    } else {
        deployment
    };
    let date = now.date();
    let fixed = format!("egress-edge CA  {date}").len();
    let room = CN_MAX.saturating_sub(fixed);
    let short: String = deployment.chars().take(room).collect();
    format!("egress-edge CA {short} {date}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_fits_and_names_deployment() {
        let now = OffsetDateTime::now_utc();
        let cn = common_name("prod-eu", now);
        assert!(cn.starts_with("egress-edge CA prod-eu "), "{cn}");
        assert!(cn.ends_with(&now.date().to_string()));
        let long = common_name(&"x".repeat(200), now);
        assert_eq!(long.chars().count(), CN_MAX);
        assert!(common_name("  ", now).contains(" default "));
    }
}
