//! The watched-file secret source: loads the secrets file into a [`SecretStore`] and keeps it
//! current.
//!
//! It polls instead of using inotify: re-reading a small file (and the files it references)
//! every interval is cheap, follows Kubernetes' symlink swaps and editors' rename-over saves
//! without special cases, and notices a change in a referenced file or variable too. A change
//! is applied only if the whole file is valid; otherwise the error is logged (once per distinct
//! error, never with values) and the previous secrets stay in force.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::SdsError;
use crate::file::{content_version, load_secrets_file};
use crate::store::SecretStore;

/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Loads `path` into `store` now and then keeps polling it. An initial load error is returned
/// (so `run` can refuse to start). Must be called inside a tokio runtime; abort the returned
/// handle to stop watching.
pub fn spawn_file_source(
    path: PathBuf,
    store: SecretStore,
    poll_interval: Duration,
) -> Result<JoinHandle<()>, SdsError> {
    let secrets = load_secrets_file(&path)?;
    let version = content_version(&secrets);
    tracing::info!(
        path = %path.display(),
        secrets = secrets.len(),
        %version,
        "secrets file loaded"
    );
    store.replace_all(secrets, version.clone());
    store.record_connected(true);
    Ok(tokio::spawn(watch(path, store, poll_interval, version)))
}

async fn watch(path: PathBuf, store: SecretStore, poll_interval: Duration, mut version: String) {
    let mut interval = tokio::time::interval(poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        interval.tick().await;
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            load_secrets_file(&p).map(|s| {
                let v = content_version(&s);
                (s, v)
            })
        })
        .await;
        match loaded {
            Ok(Ok((secrets, new_version))) => {
                if last_error.take().is_some() {
                    tracing::info!(path = %path.display(), "secrets file is valid again");
                }
                if new_version != version {
                    tracing::info!(
                        path = %path.display(),
                        secrets = secrets.len(),
                        version = %new_version,
                        "secrets file changed; new secrets in force"
                    );
                    store.replace_all(secrets, new_version.clone());
                    version = new_version;
                }
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "secrets file change rejected; previous secrets stay in force");
                    store.record_error(&msg);
                    last_error = Some(msg);
                }
            }
            Err(e) => tracing::error!(error = %e, "secrets file reload task failed"),
        }
    }
}
