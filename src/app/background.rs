//! Background tasks of a running proxy: trust roots refreshed from the secret source and
//! revocations re-read from the state directory. They stop when draining starts.

use std::sync::Arc;
use std::time::Duration;

use egress_sds::store::SecretStore;

use crate::state::Shared;
use crate::state::issuers::IssuerTrust;
use crate::state::reload::Reloader;

/// Rebuilds the snapshot (same config) when the secret source delivers new values, so rotated
/// `upstream.extra_roots_sds` take effect without a restart.
pub(super) fn spawn_root_refresh(store: SecretStore, reloader: Arc<Reloader>) {
    let mut changes = store.subscribe();
    let stop = reloader.shared.draining.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = stop.cancelled() => return,
            }
            if let Err(e) = reloader.rebuild() {
                tracing::warn!(error = %e, "cannot refresh upstream trust roots from the secret source");
            }
        }
    });
}

/// Re-reads the SDS-delivered issuer keys (`fleet.handle_issuers[].public_key_sds`) whenever
/// the secret source delivers, so a key the control plane rotates applies within its push.
pub(super) fn spawn_issuer_refresh(
    store: SecretStore,
    issuers: Arc<IssuerTrust>,
    shared: Arc<Shared>,
) {
    let mut changes = store.subscribe();
    let stop = shared.draining.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = stop.cancelled() => return,
            }
            issuers.refresh();
        }
    });
}

/// Revocations made by another process (CLI with --state-dir, another replica) take effect
/// within a second.
pub(super) fn spawn_revocation_reload(
    shared: &Arc<Shared>,
    handles: Arc<egress_handle::HandleAuthority>,
) {
    let stop = shared.draining.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = handles.reload_revocations_if_changed() {
                tracing::warn!(error = %e, "cannot reload the revocation list; keeping the revocations already loaded");
            }
        }
    });
}
