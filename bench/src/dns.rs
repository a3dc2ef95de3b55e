//! The guest-resolver rows: queries/s and p50 latency of egress-edge's guest resolver against
//! the proxy's own upstream resolver, measured in the same run.
//!
//! The "upstream resolver" is a tiny hickory-proto responder on `127.0.0.1:0` (UDP) that
//! answers every A query with 127.0.0.1. A second egress-edge app, with a guest resolver on
//! `127.0.0.1:0`, resolves through it: its `Resolve` sends one A query over a fresh UDP
//! socket per lookup, as getaddrinfo does (A only; the dialer asks for nothing else). Rows:
//! the upstream queried directly (baseline), the guest resolver for a `network.hosts` name
//! (no upstream query), and the guest resolver for a wildcard-allowed name (one upstream
//! query per guest query: the proxy does not cache). Only 127.0.0.1 is used.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use egress_edge::app::{App, BuildOptions, DnsListener, Listeners};
use egress_edge::net::dial::{BoxFuture, Resolve};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::phases::Timing;
use crate::stats::{PhaseResult, Rec, Window, fmt_us, pct};
use crate::{Base, REQS_DNS, Report, Row, rate_row, ratio};

/// Concurrent clients, each with one query in flight.
const WORKERS: usize = 4;
/// How long one query may take before it counts as an error.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

const HOSTS_NAME: &str = "hosts.test.";
const RESOLVED_NAME: &str = "pkg.resolved.test.";

/// The stand-in upstream resolver: A → 127.0.0.1 for any name, TTL 0; anything else NOERROR
/// with no answer. Serves until aborted.
async fn start_upstream() -> Result<(SocketAddr, JoinHandle<()>)> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            if let Some(q) = req.queries.first() {
                resp.add_query(q.clone());
                if q.query_type() == RecordType::A {
                    let a = RData::A(A(Ipv4Addr::LOCALHOST));
                    resp.add_answer(Record::from_rdata(q.name().clone(), 0, a));
                }
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    Ok((addr, task))
}

/// One A query to `server` on `sock`; the addresses answered.
async fn ask(sock: &UdpSocket, server: SocketAddr, name: &Name, id: u16) -> Result<Vec<IpAddr>> {
    let mut m = Message::new(id, MessageType::Query, hickory_proto::op::OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    sock.send_to(&m.to_vec()?, server).await?;
    let mut buf = [0u8; 1500];
    let reply = tokio::time::timeout(QUERY_TIMEOUT, async {
        loop {
            let (n, from) = sock.recv_from(&mut buf).await?;
            if from != server {
                continue;
            }
            let r = Message::from_vec(&buf[..n]).map_err(|e| anyhow!("bad reply: {e}"))?;
            if r.metadata.id == id {
                return Ok::<_, anyhow::Error>(r);
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no reply within {QUERY_TIMEOUT:?}"))??;
    if reply.metadata.response_code != ResponseCode::NoError {
        bail!("rcode {}", reply.metadata.response_code);
    }
    let ips: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    if ips.is_empty() {
        bail!("no address in the answer");
    }
    Ok(ips)
}

/// The proxy's resolver: one A query to the stand-in upstream per lookup, fresh socket each.
#[derive(Debug)]
struct UdpResolver {
    server: SocketAddr,
    next_id: AtomicU16,
}

impl Resolve for UdpResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let fqdn = Name::from_ascii(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let sock = UdpSocket::bind("127.0.0.1:0").await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            ask(&sock, self.server, &fqdn, id)
                .await
                .map_err(|e| io::Error::other(format!("{e:#}")))
        })
    }
}

/// An egress-edge app whose guest resolver resolves through `upstream`.
struct GuestProxy {
    dns: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start_proxy(state_dir: &Path, upstream: SocketAddr) -> Result<GuestProxy> {
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:0, shutdown_grace: 1s }}
state_dir: {state:?}
dns: {{ listen: 127.0.0.1:0 }}
network: {{ allow: [127.0.0.1/32], hosts: {{ hosts.test: 127.0.0.1 }} }}
destinations:
  - {{ host: hosts.test }}
  - {{ host: '*.resolved.test' }}
default_rung: deny
",
        state = state_dir.display().to_string()
    );
    let config = egress_edge::config::parse_str(&yaml, "bench-dns")
        .with_context(|| format!("parsing the guest-resolver bench config:\n{yaml}"))?;
    let mut listeners = Listeners::new(TcpListener::bind("127.0.0.1:0").await?, None);
    // UDP takes a free port first; TCP may find it taken: try a few times.
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut bound = DnsListener::bind(any).await;
    for _ in 0..20 {
        if bound.is_ok() {
            break;
        }
        bound = DnsListener::bind(any).await;
    }
    listeners
        .dns
        .push(bound.context("binding the guest resolver")?);
    let opts = BuildOptions {
        resolver: Some(Arc::new(UdpResolver {
            server: upstream,
            next_id: AtomicU16::new(1),
        })),
        ..Default::default()
    };
    let app = App::build(config, listeners, opts)
        .await
        .context("egress-edge App::build (guest resolver)")?;
    let dns = *app
        .dns_addrs
        .first()
        .context("the app reports no guest resolver")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Ok(GuestProxy { dns, stop, task })
}

/// `WORKERS` clients, each with its own socket and one A query for `name` in flight.
async fn phase(server: SocketAddr, name: &str, t: Timing) -> Result<PhaseResult> {
    let name = Name::from_ascii(name)?;
    let win = Window::new(t.warmup, t.secs);
    let mut handles = Vec::with_capacity(WORKERS);
    for w in 0..WORKERS {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let name = name.clone();
        handles.push(tokio::spawn(async move {
            let mut rec = Rec::new(win);
            let mut id = (w as u16).wrapping_mul(10_007);
            while rec.go_on(Instant::now(), true) {
                id = id.wrapping_add(1);
                let t0 = Instant::now();
                match ask(&sock, server, &name, id).await {
                    Ok(_) => rec.ok(t0, None, 0),
                    Err(e) => rec.err(&e),
                }
            }
            rec
        }));
    }
    let mut recs = Vec::with_capacity(WORKERS);
    for h in handles {
        recs.push(h.await.map_err(|e| anyhow!("worker task: {e}"))?);
    }
    Ok(PhaseResult::merge(recs))
}

/// Runs the section: the three paths interleaved `rounds` times, printed as ratios of the
/// upstream resolver queried directly.
pub async fn section(report: &mut Report, rounds: usize, t: Timing, state_dir: &Path) {
    report.section(format!(
        "guest resolver: UDP A queries, {WORKERS} clients with one query in flight each; baseline \
         is the proxy's upstream resolver (a loopback hickory-proto responder) queried directly"
    ));
    let setup = async {
        std::fs::create_dir_all(state_dir)?;
        let (upstream, upstream_task) = start_upstream().await?;
        let proxy = start_proxy(state_dir, upstream).await?;
        Ok::<_, anyhow::Error>((upstream, upstream_task, proxy))
    }
    .await;
    let (upstream, upstream_task, proxy) = match setup {
        Ok(s) => s,
        Err(e) => {
            report.fail("guest resolver", &e);
            return;
        }
    };
    let paths: [(&str, SocketAddr, &str); 3] = [
        ("upstream resolver direct", upstream, RESOLVED_NAME),
        ("guest resolver, network.hosts name", proxy.dns, HOSTS_NAME),
        ("guest resolver, resolved name", proxy.dns, RESOLVED_NAME),
    ];
    let mut results: Vec<Option<Result<PhaseResult>>> = paths.iter().map(|_| None).collect();
    for round in 1..=rounds {
        for ((label, server, name), slot) in paths.iter().zip(results.iter_mut()) {
            if matches!(slot, Some(Err(_))) {
                continue;
            }
            eprintln!("bench: running {label} (round {round}/{rounds})");
            let r = phase(*server, name, t).await;
            *slot = Some(match (slot.take(), r) {
                (Some(Ok(a)), Ok(b)) => Ok(a.combine(b)),
                (_, r) => r,
            });
        }
    }
    let results: Vec<Result<PhaseResult>> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow!("not run"))))
        .collect();
    // p50 latencies first (rate_row takes the results).
    let p50s: Vec<Option<u32>> = results
        .iter()
        .map(|r| r.as_ref().ok().and_then(|r| pct(&r.lat, 50.0)))
        .collect();
    let mut results = results.into_iter();
    let mut next = || results.next().unwrap_or_else(|| Err(anyhow!("not run")));
    let base = rate_row(report, paths[0].0, next(), REQS_DNS, &[Base::Is]);
    for (label, _, _) in &paths[1..] {
        rate_row(
            report,
            label,
            next(),
            REQS_DNS,
            &[Base::Vs(base, "upstream resolver")],
        );
    }
    let base_p50 = p50s[0].map(f64::from);
    for ((label, _, _), p50) in paths.iter().zip(&p50s).skip(1) {
        if let Some(p50) = p50 {
            report.push(Row {
                label: format!("{label} p50"),
                value: fmt_us(Some(*p50)),
                p50: String::new(),
                p99: String::new(),
                note: ratio(f64::from(*p50), Base::Vs(base_p50, "upstream resolver p50")),
            });
        }
    }
    let _ = proxy.stop.send(());
    if tokio::time::timeout(Duration::from_secs(5), proxy.task)
        .await
        .is_err()
    {
        eprintln!("bench: guest-resolver proxy did not stop within 5 s");
    }
    upstream_task.abort();
}
