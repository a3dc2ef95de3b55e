//! Starting the configured secret source (watched file or SDS stream) for the secrets the
//! config references. What the secrets are used for is the credential stage's business.

use egress_sds::store::SecretStore;
use tokio::task::JoinHandle;

use super::AppError;
use crate::config::{Config, SecretsConfig};

/// Starts the configured secret source: the store, and the task feeding it (aborted with the
/// app).
pub(super) async fn start_secrets(
    config: &Config,
) -> Result<(Option<SecretStore>, Option<JoinHandle<()>>), AppError> {
    let Some(source) = &config.secrets else {
        return Ok((None, None));
    };
    let names = config.referenced_secrets();
    let store = SecretStore::new(names.iter().cloned());
    let task = match source {
        SecretsConfig::File { path, .. } => Some(egress_sds::file_source::spawn_file_source(
            path.clone(),
            store.clone(),
            egress_sds::file_source::DEFAULT_POLL_INTERVAL,
        )?),
        // A fleet edge may reference no secret: the server then feeds only the fleet stream.
        SecretsConfig::Sds(_) if names.is_empty() && config.fleet.source.is_some() => None,
        SecretsConfig::Sds(s) => {
            let target = egress_sds::client::Target::parse(&s.target)?;
            let tls = s.tls.as_ref().map(|t| egress_sds::client::ClientTls {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            });
            let opts = egress_sds::client::ClientOptions {
                target,
                tls,
                node_id: s.node_id.clone(),
                cluster: s.cluster.clone(),
                names: names.iter().cloned().collect(),
                initial_fetch_timeout: s.initial_fetch_timeout,
            };
            Some(egress_sds::client::spawn_client(opts, store.clone())?)
        }
    };
    Ok((Some(store), task))
}
