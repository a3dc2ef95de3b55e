//! The state-of-the-world SDS protocol, server side: `StreamSecrets` and `FetchSecrets` over a
//! [`SecretStore`].
//!
//! Per stream it answers each new subscription, pushes when a subscribed secret changes, treats
//! an ACK (matching nonce, no error) as nothing to do and a NACK as "log it and wait for the
//! next change", and ignores requests carrying a stale nonce. Names it does not have are left
//! out of the response (never an error, so a client cannot be driven into a retry loop). It
//! does not authenticate peers (TLS does) or implement delta xDS.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::envoy::config::core::v3::ControlPlane;
use crate::proto::{DiscoveryRequest, DiscoveryResponse, SECRET_TYPE_URL, SecretDiscoveryService};
use crate::store::{SecretStore, Snapshot};

pub(crate) const CONTROL_PLANE_ID: &str = "egress-edge-sds";

#[derive(Clone)]
pub(crate) struct SdsService {
    store: SecretStore,
    shutdown: CancellationToken,
    nonces: Arc<Nonces>,
}

pub(crate) struct Nonces {
    prefix: String,
    counter: AtomicU64,
}

impl Nonces {
    pub(crate) fn new() -> Self {
        let prefix: u32 = rand::random();
        Nonces {
            prefix: format!("{prefix:08x}"),
            counter: AtomicU64::new(1),
        }
    }

    // The random prefix keeps nonces unique across server restarts too, so a client's ACK of
    // a previous incarnation's response can never match a new one.
    pub(crate) fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

impl SdsService {
    pub(crate) fn new(store: SecretStore, shutdown: CancellationToken) -> Self {
        Self {
            store,
            shutdown,
            nonces: Arc::new(Nonces::new()),
        }
    }
}

fn check_type_url(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "this server serves only {SECRET_TYPE_URL}, not {type_url}"
        )))
    }
}

/// Empty means "all" (the xDS wildcard).
fn wanted(names: &BTreeSet<String>, snap: &Snapshot) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = snap
        .secrets
        .iter()
        .filter(|(name, _)| names.is_empty() || names.contains(*name))
        .map(|(name, v)| (name.clone(), v.version.clone()))
        .collect();
    out.sort();
    out
}

fn build_response(names: &BTreeSet<String>, snap: &Snapshot, nonce: String) -> DiscoveryResponse {
    let mut listed: Vec<_> = snap
        .secrets
        .iter()
        .filter(|(name, _)| names.is_empty() || names.contains(*name))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(b.0));
    DiscoveryResponse {
        version_info: snap.version.clone(),
        resources: listed
            .into_iter()
            .map(|(n, v)| v.secret.to_any(n))
            .collect(),
        canary: false,
        type_url: SECRET_TYPE_URL.to_string(),
        nonce,
        control_plane: Some(ControlPlane {
            identifier: CONTROL_PLANE_ID.to_string(),
        }),
    }
}

pub(crate) fn node_id(req: &DiscoveryRequest) -> String {
    req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default()
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(stream_loop(self.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        check_type_url(&req.type_url)?;
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let snap = self.store.snapshot();
        tracing::debug!(node = %req.node.map(|n| n.id).unwrap_or_default(), names = names.len(), "FetchSecrets");
        Ok(Response::new(build_response(
            &names,
            &snap,
            self.nonces.next(),
        )))
    }
}

struct Sent {
    nonce: String,
    resources: Vec<(String, String)>,
}

async fn stream_loop(
    svc: SdsService,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut changes = svc.store.subscribe();
    let mut names: Option<BTreeSet<String>> = None;
    let mut sent: Option<Sent> = None;
    let mut node = String::new();
    loop {
        let force = tokio::select! {
            () = svc.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("SDS server is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%node, code = ?status.code(), "SDS stream ended by peer");
                        return;
                    }
                };
                if let Err(status) = check_type_url(&req.type_url) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if names.is_none() {
                    node = node_id(&req);
                    tracing::info!(%node, names = ?req.resource_names, "SDS stream opened");
                }
                let current_nonce = sent.as_ref().map(|s| s.nonce.as_str());
                if !req.response_nonce.is_empty() && Some(req.response_nonce.as_str()) != current_nonce {
                    // Answers a response that has since been superseded: the newer one is
                    // already on its way, so acting on this would only duplicate it.
                    tracing::debug!(%node, nonce = %req.response_nonce, "ignoring request with stale nonce");
                    continue;
                }
                if let Some(err) = &req.error_detail {
                    tracing::warn!(
                        %node,
                        nonce = %req.response_nonce,
                        version = %req.version_info,
                        error = %err.message,
                        "SDS client rejected (NACKed) a response; waiting for the next change"
                    );
                }
                let requested: BTreeSet<String> = req.resource_names.into_iter().collect();
                if names.as_ref() == Some(&requested) {
                    // ACK, or NACK of the current content: nothing new to send.
                    continue;
                }
                names = Some(requested);
                true
            }
        };
        let Some(subscribed) = &names else {
            // No request yet: nothing to push.
            continue;
        };
        let snap = svc.store.snapshot();
        let resources = wanted(subscribed, &snap);
        if !force && sent.as_ref().is_some_and(|s| s.resources == resources) {
            continue;
        }
        let nonce = svc.nonces.next();
        let response = build_response(subscribed, &snap, nonce.clone());
        tracing::debug!(%node, %nonce, version = %response.version_info, resources = response.resources.len(), "SDS push");
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
        sent = Some(Sent { nonce, resources });
    }
}
