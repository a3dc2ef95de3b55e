//! The edge side of the fleet stream: one aggregated (ADS, state of the world) stream to the
//! same server and with the same identity as the secrets stream, a wildcard subscription to
//! each [`FleetType`], ACK/NACK per type, TTL bookkeeping, and reconnection with backoff.
//!
//! A response is unwrapped (plain messages, or `envoy.service.discovery.v3.Resource` with a
//! TTL; a wrapper without a body refreshes the TTL of the resource already held under its
//! name) and handed whole to a [`FleetSink`], which judges it: `Ok` is ACKed, `Err` is NACKed
//! with its reason and the last good set stays. Grants ([`FleetType::is_grant`]) whose TTL
//! runs out without a refresh are dropped and the sink is handed the rest (`Why::Lapse`), also
//! while the stream is down; restrictions are never dropped here. It does not decode the
//! fleet messages themselves: that is the sink's business.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::connect::Connector;
use super::session::{Backoff, INVALID_ARGUMENT, node, status_text};
use super::{ClientTls, Target};
use crate::error::SdsError;
use crate::fleet::{FleetType, Item};
use crate::proto::{
    AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse, Node, RESOURCE_TYPE_URL,
    Resource, RpcStatus,
};

/// How often lapsed grants are looked for.
const LAPSE_CHECK: Duration = Duration::from_millis(100);
/// The longest TTL taken: a grant meant to outlive a week of silence is a mistake.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest response taken (tonic's default, 4 MiB, would cut a long revocation list).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Where the fleet stream goes and who the edge is (the `secrets.sds` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    pub target: Target,
    pub tls: Option<ClientTls>,
    pub node_id: String,
    pub cluster: String,
}

/// Why a sink is handed a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The control plane sent it (ACK on `Ok`, NACK on `Err`).
    Update,
    /// Grants lapsed: the set held minus those whose TTL ran out.
    Lapse,
}

/// Receives the fleet state (implemented by the proxy).
pub trait FleetSink: Send + Sync + 'static {
    /// The complete set of `ty` at `version`. `Err` rejects it (the reason is sent in the NACK
    /// and must not contain a secret); the previous set must then stay in force.
    fn apply(&self, ty: FleetType, version: &str, items: &[Item], why: Why) -> Result<(), String>;

    /// The stream came up (`None`) or went down (with the reason).
    fn stream(&self, down: Option<&str>);
}

struct HeldSet {
    version: String,
    items: Vec<(Item, Option<Instant>)>,
}

#[derive(Default)]
struct Held {
    sets: BTreeMap<FleetType, HeldSet>,
}

impl Held {
    fn version(&self, ty: FleetType) -> String {
        self.sets
            .get(&ty)
            .map(|s| s.version.clone())
            .unwrap_or_default()
    }
}

/// Validates the options, loads the TLS material, and spawns the stream and the lapse check.
/// Abort the handle to stop both.
pub fn spawn_fleet_client(
    opts: FleetOptions,
    sink: Arc<dyn FleetSink>,
) -> Result<JoinHandle<()>, SdsError> {
    if opts.node_id.trim().is_empty() {
        return Err(SdsError::Config(
            "secrets.sds: node_id must not be empty".into(),
        ));
    }
    let connector = Connector::new(&opts.target, opts.tls.as_ref())?;
    let held = Arc::new(Mutex::new(Held::default()));
    Ok(tokio::spawn(async move {
        tokio::join!(run(&opts, &connector, &held, &sink), lapse(&held, &sink));
    }))
}

type Shared<T> = Arc<T>;

async fn run(
    opts: &FleetOptions,
    connector: &Connector,
    held: &Shared<Mutex<Held>>,
    sink: &Shared<dyn FleetSink>,
) {
    let node = node(&opts.node_id, &opts.cluster);
    let mut backoff = Backoff::new();
    loop {
        let mut got_response = false;
        let reason = match session(connector, &node, held, sink, &mut got_response).await {
            Ok(()) => "server closed the stream".to_owned(),
            Err(e) => e,
        };
        sink.stream(Some(&reason));
        if got_response {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            target_addr = %opts.target,
            error = %reason,
            retry_in = ?delay,
            "fleet stream down; keeping the fleet state held (grants lapse at their TTL) and reconnecting"
        );
        tokio::time::sleep(delay).await;
    }
}

fn request(
    node: &Node,
    ty: FleetType,
    version: String,
    nonce: &str,
    error: Option<String>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version,
        node: Some(node.clone()),
        resource_names: Vec::new(),
        type_url: ty.type_url().to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: error.map(|message| RpcStatus {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
    }
}

async fn session(
    connector: &Connector,
    node: &Node,
    held: &Shared<Mutex<Held>>,
    sink: &Shared<dyn FleetSink>,
    got_response: &mut bool,
) -> Result<(), String> {
    let channel = connector.connect().await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(8);
    for ty in FleetType::ALL {
        let version = lock(held).version(ty);
        tx.send(request(node, ty, version, "", None))
            .await
            .map_err(|_| "request stream closed".to_owned())?;
    }
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    sink.stream(None);
    tracing::info!(node = %node.id, "fleet stream open");
    loop {
        let response = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_text(&s)),
        };
        *got_response = true;
        let Some(ty) = FleetType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "fleet stream: response of a type not subscribed; ignored");
            continue;
        };
        // Applying may write files and rebuild the policy: off the async threads.
        let (h, s) = (held.clone(), sink.clone());
        let nonce = response.nonce.clone();
        let error = tokio::task::spawn_blocking(move || receive(ty, &response, &h, s.as_ref()))
            .await
            .unwrap_or_else(|e| Err(format!("applying the update failed: {e}")))
            .err();
        let version = lock(held).version(ty);
        tx.send(request(node, ty, version, &nonce, error))
            .await
            .map_err(|_| "request stream closed".to_owned())?;
    }
}

/// Unwraps, hands to the sink and, when it accepts, holds the set. `Err` is the NACK reason.
fn receive(
    ty: FleetType,
    response: &DiscoveryResponse,
    held: &Mutex<Held>,
    sink: &dyn FleetSink,
) -> Result<(), String> {
    let now = Instant::now();
    let mut held = lock(held);
    let unwrapped = unwrap(ty, response, held.sets.get(&ty));
    let result = unwrapped.and_then(|items| {
        sink.apply(ty, &response.version_info, &items, Why::Update)?;
        Ok(items)
    });
    match result {
        Ok(items) => {
            let count = items.len();
            let items = items
                .into_iter()
                .map(|i| {
                    // TTLs are capped at MAX_TTL, so this cannot overflow; if it did, the
                    // grant would lapse at once rather than never.
                    let deadline = i
                        .ttl
                        .filter(|_| ty.is_grant())
                        .map(|t| now.checked_add(t).unwrap_or(now));
                    (i, deadline)
                })
                .collect();
            held.sets.insert(
                ty,
                HeldSet {
                    version: response.version_info.clone(),
                    items,
                },
            );
            tracing::debug!(r#type = %ty, version = %response.version_info, resources = count, "fleet update accepted");
            Ok(())
        }
        Err(reason) => {
            // The control plane is alive and still grants what it names: the grants held (the
            // previous version, which stays in force) keep their lease as a heartbeat would
            // renew it, instead of lapsing on a connected edge while the fix is under way.
            if ty.is_grant()
                && let Some(set) = held.sets.get_mut(&ty)
            {
                for (name, ttl) in leases(response) {
                    for (item, deadline) in set.items.iter_mut().filter(|(i, _)| i.name == name) {
                        item.ttl = Some(ttl);
                        *deadline = Some(now.checked_add(ttl).unwrap_or(now));
                    }
                }
            }
            tracing::debug!(r#type = %ty, version = %response.version_info, error = %reason, "fleet update NACKed");
            Err(reason)
        }
    }
}

/// The items of a response, or why it is rejected.
fn unwrap(
    ty: FleetType,
    response: &DiscoveryResponse,
    held: Option<&HeldSet>,
) -> Result<Vec<Item>, String> {
    let mut out: Vec<Item> = Vec::with_capacity(response.resources.len());
    for (i, any) in response.resources.iter().enumerate() {
        let item = if any.type_url == RESOURCE_TYPE_URL {
            let r = Resource::decode(any.value.as_slice())
                .map_err(|e| format!("resource #{i} does not decode as a Resource: {e}"))?;
            if r.name.is_empty() {
                return Err(format!("resource #{i}: a wrapped resource needs a name"));
            }
            let ttl = match r.ttl {
                None => None,
                Some(d) if d.seconds >= 0 && d.nanos >= 0 && (d.seconds > 0 || d.nanos > 0) => {
                    Some(Duration::new(
                        d.seconds.unsigned_abs(),
                        d.nanos.unsigned_abs(),
                    ))
                }
                Some(_) => return Err(format!("resource {:?}: ttl must be positive", r.name)),
            };
            if ttl.is_some_and(|t| t > MAX_TTL) {
                return Err(format!(
                    "resource {:?}: ttl above the {}-day maximum",
                    r.name,
                    MAX_TTL.as_secs() / 86_400
                ));
            }
            let value = match r.resource {
                Some(body) if body.type_url == ty.type_url() => body.value,
                Some(body) => {
                    return Err(format!(
                        "resource {:?} has type_url {}, not {}",
                        r.name,
                        body.type_url,
                        ty.type_url()
                    ));
                }
                // A heartbeat: the TTL of what is held under that name is refreshed.
                None => held
                    .and_then(|h| h.items.iter().find(|(it, _)| it.name == r.name))
                    .map(|(it, _)| it.value.clone())
                    .ok_or_else(|| {
                        format!(
                            "resource {:?}: a TTL refresh for a resource not held",
                            r.name
                        )
                    })?,
            };
            Item {
                name: r.name,
                value,
                ttl,
            }
        } else if any.type_url == ty.type_url() {
            // Unwrapped: the name is inside the message, which the sink decodes.
            Item {
                name: String::new(),
                value: any.value.clone(),
                ttl: None,
            }
        } else {
            return Err(format!(
                "resource #{i} has type_url {}, not {}",
                any.type_url,
                ty.type_url()
            ));
        };
        if !item.name.is_empty() && out.iter().any(|o| o.name == item.name) {
            return Err(format!("resource {:?} appears twice", item.name));
        }
        out.push(item);
    }
    Ok(out)
}

/// The names and TTLs of the wrapped resources of a response that decode that far.
fn leases(response: &DiscoveryResponse) -> Vec<(String, Duration)> {
    response
        .resources
        .iter()
        .filter(|a| a.type_url == RESOURCE_TYPE_URL)
        .filter_map(|a| Resource::decode(a.value.as_slice()).ok())
        .filter_map(|r| {
            let d = r.ttl?;
            let ttl = Duration::new(u64::try_from(d.seconds).ok()?, u32::try_from(d.nanos).ok()?);
            (!r.name.is_empty() && !ttl.is_zero() && ttl <= MAX_TTL).then_some((r.name, ttl))
        })
        .collect()
}

/// Drops grants whose TTL ran out and hands the sink what is left.
async fn lapse(held: &Shared<Mutex<Held>>, sink: &Shared<dyn FleetSink>) {
    let mut tick = tokio::time::interval(LAPSE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due = lock(held)
            .sets
            .values()
            .any(|s| s.items.iter().any(|(_, d)| d.is_some_and(|d| d <= now)));
        if due {
            let (h, s) = (held.clone(), sink.clone());
            let _ = tokio::task::spawn_blocking(move || lapse_now(&h, s.as_ref(), now)).await;
        }
    }
}

fn lapse_now(held: &Mutex<Held>, sink: &dyn FleetSink, now: Instant) {
    let mut held = lock(held);
    for (ty, set) in &mut held.sets {
        let expired = |d: &Option<Instant>| d.is_some_and(|d| d <= now);
        let lapsed: Vec<String> = set
            .items
            .iter()
            .filter(|(_, d)| expired(d))
            .map(|(i, _)| i.name.clone())
            .collect();
        if lapsed.is_empty() {
            continue;
        }
        let before = set.items.len();
        let remaining: Vec<Item> = set
            .items
            .iter()
            .filter(|(_, d)| !expired(d))
            .map(|(i, _)| i.clone())
            .collect();
        if let Err(e) = sink.apply(*ty, &set.version, &remaining, Why::Lapse) {
            // The rest cannot be kept on its own: drop every grant of the type (closed).
            tracing::error!(r#type = %ty, error = %e, "lapsing some fleet grants failed; dropping all of this type");
            if let Err(e) = sink.apply(*ty, &set.version, &[], Why::Lapse) {
                tracing::error!(r#type = %ty, error = %e, "dropping the fleet grants failed");
                continue;
            }
            set.items.clear();
        } else {
            set.items.retain(|(_, d)| !expired(d));
        }
        tracing::warn!(
            r#type = %ty,
            version = %set.version,
            ?lapsed,
            before,
            after = set.items.len(),
            "fleet grants lapsed: not refreshed by the control plane within their TTL"
        );
    }
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Any;
    use crate::proto::google::protobuf::Duration as PbDuration;

    const TY: FleetType = FleetType::Sandbox;

    fn plain(value: &[u8]) -> Any {
        Any {
            type_url: TY.type_url().to_owned(),
            value: value.to_vec(),
        }
    }

    fn wrapped(name: &str, body: Option<Any>, ttl: Option<(i64, i32)>) -> Any {
        Any {
            type_url: RESOURCE_TYPE_URL.to_owned(),
            value: Resource {
                version: String::new(),
                resource: body,
                name: name.to_owned(),
                aliases: Vec::new(),
                ttl: ttl.map(|(seconds, nanos)| PbDuration { seconds, nanos }),
            }
            .encode_to_vec(),
        }
    }

    fn response(resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "v".into(),
            resources,
            type_url: TY.type_url().to_owned(),
            nonce: "n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn unwrap_table() {
        let held = HeldSet {
            version: "v0".into(),
            items: vec![(
                Item {
                    name: "kept".into(),
                    value: b"old body".to_vec(),
                    ttl: Some(Duration::from_secs(1)),
                },
                None,
            )],
        };
        // Plain and wrapped resources, with and without TTL; a body-less wrapper refreshes
        // what is held under its name.
        let items = unwrap(
            TY,
            &response(vec![
                plain(b"a"),
                wrapped("b", Some(plain(b"b")), Some((2, 500))),
                wrapped("kept", None, Some((5, 0))),
            ]),
            Some(&held),
        )
        .unwrap();
        assert_eq!(items[0].name, "");
        assert_eq!(items[1].ttl, Some(Duration::new(2, 500)));
        assert_eq!(items[2].value, b"old body");
        assert_eq!(items[2].ttl, Some(Duration::from_secs(5)));

        let bad: Vec<(Vec<Any>, &str)> = vec![
            (vec![wrapped("x", None, Some((1, 0)))], "not held"),
            (vec![wrapped("", Some(plain(b"x")), None)], "needs a name"),
            (
                vec![wrapped("x", Some(plain(b"x")), Some((-1, 0)))],
                "positive",
            ),
            (
                vec![wrapped("x", Some(plain(b"x")), Some((0, 0)))],
                "positive",
            ),
            (
                vec![wrapped("x", Some(plain(b"x")), Some((i64::MAX, 0)))],
                "maximum",
            ),
            (
                vec![
                    wrapped("x", Some(plain(b"x")), None),
                    wrapped("x", Some(plain(b"y")), None),
                ],
                "twice",
            ),
            (
                vec![Any {
                    type_url: FleetType::Profile.type_url().to_owned(),
                    value: Vec::new(),
                }],
                "not type.googleapis.com/egress_edge.fleet.v1.Sandbox",
            ),
            (
                vec![wrapped(
                    "x",
                    Some(Any {
                        type_url: FleetType::KillSwitch.type_url().to_owned(),
                        value: Vec::new(),
                    }),
                    None,
                )],
                "has type_url",
            ),
            (
                vec![Any {
                    type_url: RESOURCE_TYPE_URL.to_owned(),
                    value: vec![0xff; 3],
                }],
                "does not decode",
            ),
        ];
        for (resources, want) in bad {
            let e = unwrap(TY, &response(resources), Some(&held)).unwrap_err();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
