//! The aggregated discovery service (ADS, state of the world) of a control plane: serves the
//! fleet types of a [`Published`] to every edge that subscribes.
//!
//! Per stream and per type it answers the first request, pushes when the type's version
//! changes, treats an ACK as nothing to do, logs a NACK and waits for the next change, and
//! ignores stale nonces, as `service` does for secrets. Items with a TTL are sent wrapped in
//! `envoy.service.discovery.v3.Resource` and the whole set is re-sent every `heartbeat`, so a
//! connected edge keeps its grants and a cut-off one lets them lapse. Types it does not serve
//! are answered with nothing (an ADS client may ask for more than one server offers). It does
//! not authenticate peers (TLS does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::service::{CONTROL_PLANE_ID, Nonces, node_id};
use crate::fleet::{FleetType, Item, Published, TypeSet};
use crate::proto::envoy::config::core::v3::ControlPlane;
use crate::proto::{
    AggregatedDiscoveryService, Any, DiscoveryRequest, DiscoveryResponse, RESOURCE_TYPE_URL,
    Resource,
};

#[derive(Clone)]
pub(crate) struct AdsService {
    published: Published,
    heartbeat: Duration,
    shutdown: CancellationToken,
    nonces: Arc<Nonces>,
}

impl AdsService {
    pub(crate) fn new(
        published: Published,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        AdsService {
            published,
            heartbeat,
            shutdown,
            nonces: Arc::new(Nonces::new()),
        }
    }
}

/// `items` as `DiscoveryResponse.resources`: wrapped when they carry a TTL.
pub fn to_resources(ty: FleetType, set: &TypeSet) -> Vec<Any> {
    set.items
        .iter()
        .map(|i| wrap(ty, &set.version, i))
        .collect()
}

fn wrap(ty: FleetType, version: &str, item: &Item) -> Any {
    let body = Any {
        type_url: ty.type_url().to_owned(),
        value: item.value.clone(),
    };
    let Some(ttl) = item.ttl else {
        return body;
    };
    let resource = Resource {
        version: version.to_owned(),
        resource: Some(body),
        name: item.name.clone(),
        aliases: Vec::new(),
        ttl: Some(prost_duration(ttl)),
    };
    Any {
        type_url: RESOURCE_TYPE_URL.to_owned(),
        value: resource.encode_to_vec(),
    }
}

fn prost_duration(d: Duration) -> crate::proto::google::protobuf::Duration {
    crate::proto::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(stream_loop(self.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What was last sent on one type of one stream.
struct Sent {
    nonce: String,
    version: String,
}

async fn stream_loop(
    svc: AdsService,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut changes = svc.published.subscribe();
    let mut subscribed: BTreeMap<FleetType, Option<Sent>> = BTreeMap::new();
    let mut node = String::new();
    let mut beat = tokio::time::interval(svc.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        // Which types to (re)send, and whether to send even an unchanged version.
        let (due, force): (Vec<FleetType>, bool) = tokio::select! {
            () = svc.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("control plane is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                (subscribed.keys().copied().collect(), false)
            }
            _ = beat.tick() => {
                let ttl_types = subscribed
                    .keys()
                    .copied()
                    .filter(|t| svc.published.get(*t).items.iter().any(|i| i.ttl.is_some()))
                    .collect();
                (ttl_types, true)
            }
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%node, code = ?status.code(), "ADS stream ended by peer");
                        return;
                    }
                };
                if node.is_empty() {
                    node = node_id(&req);
                }
                let Some(ty) = FleetType::from_type_url(&req.type_url) else {
                    tracing::debug!(%node, type_url = %req.type_url, "ADS request for a type this server does not serve");
                    continue;
                };
                match subscribed.get(&ty) {
                    None => {
                        tracing::info!(%node, r#type = %ty, version = %req.version_info, "edge subscribed");
                        subscribed.insert(ty, None);
                        (vec![ty], true)
                    }
                    Some(sent) => {
                        let current = sent.as_ref().map(|s| s.nonce.as_str());
                        if req.response_nonce.is_empty() || Some(req.response_nonce.as_str()) != current {
                            tracing::debug!(%node, r#type = %ty, nonce = %req.response_nonce, "ignoring request with stale nonce");
                            continue;
                        }
                        match &req.error_detail {
                            Some(err) => tracing::warn!(
                                %node,
                                r#type = %ty,
                                version = %sent.as_ref().map(|s| s.version.as_str()).unwrap_or_default(),
                                error = %err.message,
                                "edge rejected (NACKed) a fleet update; it keeps its previous version"
                            ),
                            None => tracing::debug!(%node, r#type = %ty, version = %req.version_info, "edge acknowledged"),
                        }
                        continue;
                    }
                }
            }
        };
        for ty in due {
            let set = svc.published.get(ty);
            let Some(sent) = subscribed.get_mut(&ty) else {
                continue;
            };
            if !force && sent.as_ref().is_some_and(|s| s.version == set.version) {
                continue;
            }
            let nonce = svc.nonces.next();
            let response = DiscoveryResponse {
                version_info: set.version.clone(),
                resources: to_resources(ty, &set),
                canary: false,
                type_url: ty.type_url().to_owned(),
                nonce: nonce.clone(),
                control_plane: Some(ControlPlane {
                    identifier: CONTROL_PLANE_ID.to_owned(),
                }),
            };
            tracing::debug!(%node, r#type = %ty, %nonce, version = %set.version, resources = set.items.len(), "ADS push");
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
            *sent = Some(Sent {
                nonce,
                version: set.version.clone(),
            });
        }
    }
}
