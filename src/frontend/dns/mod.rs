//! The guest resolver (`dns.listen`): the DNS server a sandbox's queries are sent to.
//!
//! What it does: serves UDP and TCP (RFC 1035 / RFC 7766 two-byte length framing, several
//! queries per connection, answered in order) until `shared.draining` fires, with bounded
//! concurrency, idle and read timeouts, and a per-query deadline (`proxy.connect_timeout`).
//! It answers A and AAAA, and only for names the policy lets through on some rung
//! ([`Policy::resolvable`](crate::policy::Policy::resolvable)); the addresses are the proxy's
//! own vetted resolution ([`Dialer::vet`](crate::net::dial::Dialer::vet): `network.hosts`,
//! then the resolver, every address checked against the deny set), filtered to the asked
//! family, with TTL `dns.ttl`, and recorded in [`GuestAnswers`](crate::state::answers) for
//! the transparent listener's destination binding. An allowed name with no address of the
//! asked family gets NOERROR with no answer (NODATA), never REFUSED: getaddrinfo treats a
//! refused AAAA half as a failure. Before any lookup, names that look like data are refused
//! ([`guard`]) unless a rule names them exactly. Every decision is one `egress_edge::dns`
//! log event and one `egress_edge_dns_queries_total` sample.
//!
//! What it does not do: recursion of its own, caching (the resolver behind the dialer may),
//! zone transfers, updates, DNSSEC, or any type other than A/AAAA (REFUSED, whatever the
//! name), nor reverse lookups. Unreadable input gets FORMERR when a header can be read, else
//! silence; responses sent to it are ignored. It parses and builds messages with
//! `hickory-proto` only.

pub(crate) mod answer;
pub mod guard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

pub use answer::{DnsEvent, TARGET, Transport, Verdict};

use crate::state::Shared;

/// UDP queries being answered at once; more are dropped (the client retries).
const MAX_UDP_IN_FLIGHT: usize = 512;
/// TCP connections served at once; more are closed at accept.
const MAX_TCP_CONNECTIONS: usize = 128;
/// Queries served on one TCP connection before it is closed.
const MAX_QUERIES_PER_CONNECTION: usize = 1000;
/// How long a TCP connection may sit between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long the rest of a query (after its length) or the writing of a reply may take.
const TCP_IO: Duration = Duration::from_secs(5);
/// Largest UDP query read; anything longer is cut and fails to parse.
const UDP_BUFFER: usize = 4096;

/// The guest resolver's sockets and what answers are decided with.
#[derive(Debug)]
pub struct GuestResolver {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    pub shared: Arc<Shared>,
}

impl GuestResolver {
    /// Serves until `shared.draining` fires; queries in flight finish under `shared.tasks`.
    pub async fn run(self) {
        let shared = self.shared.clone();
        let udp = serve_udp(Arc::new(self.udp), self.shared.clone());
        let tcp = serve_tcp(self.tcp, self.shared);
        tokio::select! {
            _ = shared.draining.cancelled() => {}
            _ = async { tokio::join!(udp, tcp) } => {}
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // Linux reports ICMP errors of earlier replies here; keep serving.
                tracing::debug!(target: TARGET, error = %e, "guest resolver: UDP receive failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            dropped(&shared, client, "overloaded");
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, task_shared) = (socket.clone(), shared.clone());
        shared.tasks.spawn(async move {
            let _permit = permit;
            if let Some(reply) =
                answer::handle(&task_shared, client, &query, Transport::Udp).await
                && let Err(e) = socket.send_to(&reply, client).await
            {
                tracing::debug!(target: TARGET, error = %e, %client, "guest resolver: UDP send failed");
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: TARGET, error = %e, "guest resolver: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            dropped(&shared, client, "overloaded");
            continue;
        };
        let conn_shared = shared.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            serve_conn(stream, client, &conn_shared).await;
        });
    }
}

/// One TCP connection: length-prefixed queries answered in order, until the guest closes,
/// a timeout, an unanswerable message, the query cap, or draining.
async fn serve_conn(mut stream: TcpStream, client: SocketAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    for _ in 0..MAX_QUERIES_PER_CONNECTION {
        let len = tokio::select! {
            _ = shared.draining.cancelled() => return,
            r = tokio::time::timeout(TCP_IDLE, stream.read_u16()) => match r {
                Ok(Ok(len)) if len > 0 => usize::from(len),
                _ => return,
            },
        };
        let mut query = vec![0u8; len];
        if !matches!(
            tokio::time::timeout(TCP_IO, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = answer::handle(shared, client, &query, Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            tokio::time::timeout(TCP_IO, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// A query that got no reply because of a limit: logged and counted like any decision.
fn dropped(shared: &Shared, client: SocketAddr, reason: &'static str) {
    let ev = DnsEvent {
        client,
        name: String::new(),
        qtype: String::new(),
        verdict: Verdict::Dropped,
        reason,
        rule: String::new(),
        sandbox: None,
        answers: 0,
    };
    ev.emit(shared, Duration::ZERO);
}
