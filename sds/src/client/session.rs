//! The client side of state-of-the-world SDS: one `StreamSecrets` session at a time, ACK/NACK
//! of each response, and reconnection with capped exponential backoff and jitter.
//!
//! A response is applied all-or-nothing: every resource must be a `Secret`, named as requested,
//! and usable; otherwise it is NACKed (with a reason that names the secret, never its value)
//! and the last good values stay. Responses are handled strictly in arrival order, each
//! answered with its own nonce, so there is no stale-nonce case on this side.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::connect::Connector;
use super::{ClientOptions, DEFAULT_CLUSTER};
use crate::proto::envoy::config::core::v3::node::UserAgentVersionType;
use crate::proto::{
    DiscoveryRequest, DiscoveryResponse, Node, RpcStatus, SECRET_TYPE_URL,
    SecretDiscoveryServiceClient, tls,
};
use crate::secret::Secret;
use crate::store::SecretStore;

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// google.rpc.Code INVALID_ARGUMENT, the code Envoy uses in its NACKs.
pub(crate) const INVALID_ARGUMENT: i32 = 3;

pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: BACKOFF_BASE }
    }

    /// Half the nominal delay plus a random half, so that many proxies restarted together do
    /// not reconnect in lockstep.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        let half = nominal / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_BASE;
    }
}

struct Ctx {
    opts: ClientOptions,
    connector: Connector,
    names: BTreeSet<String>,
    node: Node,
}

impl Ctx {
    fn request(&self, version: &str, nonce: &str, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.to_string(),
            node: Some(self.node.clone()),
            resource_names: self.opts.names.clone(),
            type_url: SECRET_TYPE_URL.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|message| RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
        }
    }
}

/// How this client introduces itself (`node`), on the secrets and the fleet streams alike.
pub(crate) fn node(node_id: &str, cluster: &str) -> Node {
    let cluster = if cluster.is_empty() {
        DEFAULT_CLUSTER
    } else {
        cluster
    };
    Node {
        id: node_id.to_string(),
        cluster: cluster.to_string(),
        user_agent_name: "egress-edge".to_string(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_string(),
        )),
    }
}

/// Runs sessions forever (until the task is aborted).
pub(crate) async fn run(opts: ClientOptions, connector: Connector, store: SecretStore) {
    let ctx = Ctx {
        node: node(&opts.node_id, &opts.cluster),
        names: opts.names.iter().cloned().collect(),
        opts,
        connector,
    };
    // Sent again on every new stream, so the server knows what this client already holds.
    let mut accepted_version = String::new();
    let mut backoff = Backoff::new();
    let mut attempt: u64 = 0;
    loop {
        if attempt > 0 {
            store.record_reconnect();
        }
        attempt += 1;
        let mut got_response = false;
        let outcome = session(&ctx, &store, &mut accepted_version, &mut got_response).await;
        store.record_connected(false);
        let reason = match outcome {
            Ok(()) => "server closed the stream".to_string(),
            Err(e) => e,
        };
        store.record_error(&reason);
        if got_response {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            target_addr = %ctx.opts.target,
            error = %reason,
            retry_in = ?delay,
            "SDS stream down; keeping last good secrets and reconnecting"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    ctx: &Ctx,
    store: &SecretStore,
    accepted_version: &mut String,
    got_response: &mut bool,
) -> Result<(), String> {
    let channel = ctx.connector.connect().await?;
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    tx.send(ctx.request(accepted_version, "", None))
        .await
        .map_err(|_| "request stream closed".to_string())?;
    let mut inbound = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    store.record_connected(true);
    tracing::info!(target_addr = %ctx.opts.target, names = ?ctx.opts.names, "SDS stream open");
    loop {
        let response = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_text(&s)),
        };
        *got_response = true;
        let error = apply_response(store, &ctx.names, accepted_version, &response).err();
        let reply = ctx.request(accepted_version, &response.nonce, error);
        tx.send(reply)
            .await
            .map_err(|_| "request stream closed".to_string())?;
    }
}

/// Applies one response to `store` all-or-nothing and records the ACK (updating
/// `accepted_version`) or the NACK; `Err` is the NACK reason. No I/O.
pub(crate) fn apply_response(
    store: &SecretStore,
    names: &BTreeSet<String>,
    accepted_version: &mut String,
    response: &DiscoveryResponse,
) -> Result<(), String> {
    match check_response(response, names) {
        Ok(secrets) => {
            let count = secrets.len();
            store.update_many(secrets, &response.version_info);
            store.record_ack();
            *accepted_version = response.version_info.clone();
            tracing::info!(version = %response.version_info, secrets = count, "SDS update applied");
            Ok(())
        }
        Err(Rejection { secret, reason }) => {
            tracing::warn!(
                version = %response.version_info,
                nonce = %response.nonce,
                error = %reason,
                "SDS response rejected (NACK); keeping last good secrets"
            );
            store.record_nack(secret.as_deref(), &reason);
            Err(reason)
        }
    }
}

pub(crate) fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

struct Rejection {
    secret: Option<String>,
    reason: String,
}

fn reject(secret: Option<&str>, reason: String) -> Rejection {
    Rejection {
        secret: secret.map(str::to_string),
        reason,
    }
}

fn check_response(
    resp: &DiscoveryResponse,
    names: &BTreeSet<String>,
) -> Result<Vec<(String, Secret)>, Rejection> {
    if !resp.type_url.is_empty() && resp.type_url != SECRET_TYPE_URL {
        return Err(reject(
            None,
            format!(
                "response type_url {} is not {SECRET_TYPE_URL}",
                resp.type_url
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(resp.resources.len());
    for (i, any) in resp.resources.iter().enumerate() {
        if any.type_url != SECRET_TYPE_URL {
            return Err(reject(
                None,
                format!(
                    "resource #{i} has type_url {}, not {SECRET_TYPE_URL}",
                    any.type_url
                ),
            ));
        }
        let msg = tls::Secret::decode(any.value.as_slice()).map_err(|e| {
            reject(
                None,
                format!("resource #{i} does not decode as a Secret: {e}"),
            )
        })?;
        let name = msg.name.clone();
        if !names.contains(&name) {
            return Err(reject(None, format!("resource {name:?} was not requested")));
        }
        if !seen.insert(name.clone()) {
            return Err(reject(Some(&name), format!("secret {name} appears twice")));
        }
        let secret = Secret::from_proto(&msg)
            .map_err(|e| reject(Some(&name), format!("secret {name}: {e}")))?;
        out.push((name, secret));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(
            first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE,
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_CAP);
        }
        assert!(b.next_delay() >= BACKOFF_CAP / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_BASE);
    }
}
