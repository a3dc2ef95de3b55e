//! Loading the deployment CA the config names (brought files, the secret source, or generated
//! under `state_dir`), and the file checks of `check-config`. The coverage rule itself lives
//! with the snapshot ([`check_ca_coverage`]) so startup, reload and `check-config` share it.

use std::path::Path;
use std::sync::Arc;

use egress_ca::{CaOptions, DeploymentCa};
use egress_sds::store::SecretStore;

use super::AppError;
use super::secrets::start_secrets;
use crate::admin::AdminAuth;
use crate::config::{CaSource, Config, SecretsConfig};
use crate::state::snapshot::{check_ca_coverage, permitted_names};

fn deployment_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "egress-edge".to_owned())
}

/// Loads (or creates) the deployment CA as the config says.
pub async fn load_ca(
    config: &Config,
    secrets: Option<&SecretStore>,
) -> Result<Arc<DeploymentCa>, AppError> {
    load_ca_inner(config, secrets).await
}

/// `egress-edge ca export`: the CA as `run` would load it, created if absent.
pub async fn export_ca(config: &Config) -> Result<String, AppError> {
    let (secrets, task) = match &config.ca.source {
        CaSource::Sds { .. } => start_secrets(config).await?,
        _ => (None, None),
    };
    let ca = load_ca_inner(config, secrets.as_ref()).await;
    if let Some(t) = task {
        t.abort();
    }
    let ca = ca?;
    Ok(ca.cert_pem().to_owned())
}

/// The checks `check-config` runs beyond parsing: every referenced file loads, and the CA
/// that `run` would use (a brought one, or a generated one already in `state_dir`) covers the
/// bump destinations — the same coverage check startup and reload apply.
pub fn check_files(config: &Config) -> Result<(), AppError> {
    let ca = match &config.ca.source {
        CaSource::Files { cert, key } => Some(read_ca_files(cert, key)?),
        CaSource::Generated => {
            let cert = config.state_dir.join(egress_ca::CA_CERT_FILE);
            let key = config.state_dir.join(egress_ca::CA_KEY_FILE);
            if cert.exists() {
                Some(read_ca_files(&cert, &key)?)
            } else {
                None
            }
        }
        // Delivered at run time; checked when it arrives.
        CaSource::Sds { .. } => None,
    };
    if let Some(ca) = &ca {
        check_ca_coverage(Some(ca), &config.policy)?;
    }
    if config.policy.has_bump() {
        crate::upstream::tls::root_store(&config.upstream.extra_roots, &[])?;
    }
    AdminAuth::load(&config.admin)?;
    if let Some(SecretsConfig::File { path, .. }) = &config.secrets {
        egress_sds::file::load_secrets_file(path)?;
    }
    // Token files, and the sandboxes registered over the admin API against this config's
    // profiles.
    crate::state::sandboxes::Registry::load(config)?;
    Ok(())
}

fn read_ca_files(cert: &Path, key: &Path) -> Result<DeploymentCa, AppError> {
    let read = |p: &Path, key: &'static str| {
        std::fs::read_to_string(p).map_err(|e| AppError::CaConfig {
            key,
            msg: format!("{}: {e}", p.display()),
        })
    };
    Ok(DeploymentCa::from_pem(
        &read(cert, "cert")?,
        &read(key, "key")?,
        &cert.display().to_string(),
    )?)
}

async fn load_ca_inner(
    config: &Config,
    secrets: Option<&SecretStore>,
) -> Result<Arc<DeploymentCa>, AppError> {
    let ca = match &config.ca.source {
        CaSource::Files { cert, key } => read_ca_files(cert, key)?,
        CaSource::Sds { secret } => {
            let Some(store) = secrets else {
                return Err(AppError::CaConfig {
                    key: "sds",
                    msg: "needs a secrets source".into(),
                });
            };
            let timeout = config.secret_wait();
            let v = store
                .wait(secret, timeout)
                .await
                .map_err(|e| AppError::CaConfig {
                    key: "sds",
                    msg: format!("secret `{secret}` not delivered: {e}"),
                })?;
            match &*v.secret {
                egress_sds::secret::Secret::TlsCertificate { chain_pem, key_pem } => {
                    let key = key_pem.expose_str().ok_or_else(|| AppError::CaConfig {
                        key: "sds",
                        msg: format!("secret `{secret}`: private key is not PEM text"),
                    })?;
                    DeploymentCa::from_pem(chain_pem, key, &format!("sds:{secret}"))?
                }
                other => {
                    return Err(AppError::CaConfig {
                        key: "sds",
                        msg: format!(
                            "secret `{secret}` is a {}, not a tls_certificate",
                            other.kind()
                        ),
                    });
                }
            }
        }
        // The CA exists from the first start whatever the rungs, so guests started before the
        // first bump rule already trust it and a reload can add one. Its name constraints are
        // the bump hosts of the policy it is first created with (none: unconstrained). On a
        // fleet edge the control plane's profiles add bump hosts later, unknown here, so the
        // CA it generates is unconstrained (bring a constrained CA to have one).
        CaSource::Generated => {
            let permitted = if config.fleet.source.is_some() {
                Vec::new()
            } else {
                permitted_names(&config.policy)
            };
            let opts = CaOptions::new(deployment_name()).with_permitted(permitted);
            let dir = config.state_dir.clone();
            tokio::task::spawn_blocking(move || DeploymentCa::load_or_create(&dir, &opts))
                .await
                .map_err(|e| AppError::CaConfig {
                    key: "state_dir",
                    msg: e.to_string(),
                })??
        }
    };
    // A brought or shared CA must still cover every bump host, or guests would see
    // certificate errors that look like attacks.
    check_ca_coverage(Some(&ca), &config.policy)?;
    Ok(Arc::new(ca))
}
