//! The `fleet` rows (`--only fleet`; not in the default set, it needs the `egress-edge`
//! binary): bump keep-alive requests/s through a real `egress-edge run` process that follows
//! an `egress-edge sds serve` control plane (`fleet.source: sds`), with no fleet updates
//! against `rate` control-plane writes per second, each pushed to the edge over its ADS
//! stream.
//!
//! Both are processes started here (each killed when the section ends, or when the bench is
//! interrupted: `kill_on_drop`), on `127.0.0.1` ports picked free. The client and the upstream
//! are this process's (the `keep-alive` row's hyper client over tokio-rustls, the bench
//! upstream), so the edge is measured as it runs in production, as its own binary, by a
//! client that is not the bottleneck. The writes cycle through: revoke a random handle id,
//! register sandbox `churn-J` (profile `agents` from the fleet file, source 127.0.0.X/32,
//! never the client's 127.0.0.1), revoke, delete `churn-J` (which also revokes its handles,
//! so it pushes both sandboxes and revocations). Rounds alternate no updates, updates, no
//! updates, updates (`--rounds` pairs); the edge's `egress_edge_fleet_updates_total` is read
//! before and after each round, so the rows show the updates the edge actually applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::client::{self, Proto, Route, Target};
use crate::phases::{self, Timing};
use crate::proxy::yaml_path;
use crate::stats::PhaseResult;
use crate::tenants::Rng;
use crate::upstream::SMALL_LEN;
use crate::{Base, REQS, Report, Row, rate_row};

/// What the section needs from the rest of the run.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The `egress-edge` binary (a release build).
    pub edge_bin: PathBuf,
    pub conns: usize,
    pub rounds: usize,
    pub timing: Timing,
    /// Control-plane writes per second in the updates rounds.
    pub rate: f64,
    /// A scratch directory for the processes' files.
    pub dir: &'a Path,
    pub upstream: SocketAddr,
    pub upstream_ca: &'a Path,
}

/// The filesystem type `path` is on (the longest mount point of `/proc/mounts` above it).
fn fstype(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (mnt, kind) = (f.nth(1)?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), kind.to_owned()))
        })
        .max()
        .map_or_else(|| "?".to_owned(), |(_, k)| k)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A process of ours: killed (SIGKILL) when dropped, so an interrupted bench leaves none.
struct Proc {
    child: tokio::process::Child,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], log: PathBuf, what: &'static str) -> Result<Proc> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = tokio::process::Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({what})", bin.display()))?;
        Ok(Proc { child, log, what })
    }

    /// The end of its log, for an error message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!(
            "{} log ({}):\n{}",
            self.what,
            self.log.display(),
            &text[start..]
        )
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// One keep-alive HTTP/1.1 connection to an admin listener, reopened after an error.
struct Admin {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Admin {
    fn new(addr: SocketAddr) -> Admin {
        Admin { addr, sender: None }
    }

    async fn connect(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>> {
        if self.sender.is_none() {
            let tcp = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            tcp.set_nodelay(true)?;
            let (s, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(s);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let r = self.try_request(method, path, body).await;
        if r.is_err() {
            self.sender = None;
        }
        r
    }

    async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let host = self.addr.to_string();
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, host);
        if method != Method::GET {
            // The admin guard refuses a write that is not JSON, a DELETE included.
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let sender = self.connect().await?;
        sender.ready().await?;
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer within 10 s"))??;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `Some(status)` once anything answers `path`.
    async fn probe(&mut self, path: &str) -> Option<StatusCode> {
        self.request(Method::GET, path, None)
            .await
            .ok()
            .map(|(s, _)| s)
    }
}

/// Waits until `admin` answers `path` with 200, the process still running.
async fn wait_ok(admin: SocketAddr, path: &str, proc: &mut Proc, limit: Duration) -> Result<()> {
    let mut a = Admin::new(admin);
    let t0 = Instant::now();
    loop {
        if a.probe(path).await == Some(StatusCode::OK) {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!("{} exited ({status})\n{}", proc.what, proc.tail());
        }
        if t0.elapsed() > limit {
            bail!(
                "{} not answering 200 on {path} within {limit:?}\n{}",
                proc.what,
                proc.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `egress_edge_fleet_updates_total` by (type, result).
type Updates = BTreeMap<(String, String), f64>;

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let at = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[at..];
    Some(&rest[..rest.find('"')?])
}

async fn fleet_updates(admin: &mut Admin) -> Result<Updates> {
    let (status, body) = admin.request(Method::GET, "/metrics", None).await?;
    if status != StatusCode::OK {
        bail!("GET /metrics: status {status}");
    }
    let text = String::from_utf8_lossy(&body);
    let mut out = Updates::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("egress_edge_fleet_updates_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let (Some(ty), Some(result), Ok(v)) = (
            label(labels, "type"),
            label(labels, "result"),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        out.insert((ty.to_owned(), result.to_owned()), v);
    }
    Ok(out)
}

fn add_delta(acc: &mut Updates, before: &Updates, after: &Updates) {
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or_default();
        if d != 0.0 {
            *acc.entry(k.clone()).or_default() += d;
        }
    }
}

/// What the churn task did.
#[derive(Debug, Default)]
struct Churn {
    revokes: u64,
    registers: u64,
    deletes: u64,
    /// Deletes of the last churn sandbox after a round's window (not in `writes`).
    cleanups: u64,
    errors: u64,
    first_err: Option<String>,
    busy: Duration,
}

impl Churn {
    fn writes(&self) -> u64 {
        self.revokes + self.registers + self.deletes
    }

    fn add(&mut self, o: Churn) {
        self.revokes += o.revokes;
        self.registers += o.registers;
        self.deletes += o.deletes;
        self.cleanups += o.cleanups;
        self.errors += o.errors;
        self.first_err = self.first_err.take().or(o.first_err);
        self.busy += o.busy;
    }
}

/// Writes to the control plane `rate` times a second until `stop` fires; `next` numbers the
/// churn sandboxes across rounds.
async fn churn(cp: SocketAddr, rate: f64, mut stop: oneshot::Receiver<()>, next: u64) -> Churn {
    let mut admin = Admin::new(cp);
    let mut out = Churn::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(seed ^ next);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut j = next;
    let mut registered: Option<String> = None;
    for k in 0u64.. {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let (method, path, body) = match k % 4 {
            0 | 2 => (
                Method::POST,
                "/v1/handles/revoke".to_owned(),
                Some(format!(
                    r#"{{"id":"{:016x}{:016x}"}}"#,
                    rng.next_u64(),
                    rng.next_u64()
                )),
            ),
            1 => {
                j += 1;
                let id = format!("churn-{j}");
                let body = format!(
                    r#"{{"id":"{id}","profile":"agents","sources":["127.0.0.{}/32"]}}"#,
                    10 + j % 240
                );
                registered = Some(id);
                (Method::POST, "/v1/sandboxes".to_owned(), Some(body))
            }
            _ => match registered.take() {
                Some(id) => (Method::DELETE, format!("/v1/sandboxes/{id}"), None),
                None => continue,
            },
        };
        let want = if k % 4 == 1 {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        match admin.request(method.clone(), &path, body).await {
            Ok((s, _)) if s == want => match k % 4 {
                0 | 2 => out.revokes += 1,
                1 => out.registers += 1,
                _ => out.deletes += 1,
            },
            Ok((s, b)) => {
                out.errors += 1;
                out.first_err.get_or_insert_with(|| {
                    format!("{method} {path}: {s}: {}", String::from_utf8_lossy(&b))
                });
            }
            Err(e) => {
                out.errors += 1;
                out.first_err
                    .get_or_insert_with(|| format!("{method} {path}: {e:#}"));
            }
        }
    }
    out.busy = started.elapsed();
    // Leave no churn sandbox behind (after the measured window; counted apart).
    if let Some(id) = registered
        && let Ok((StatusCode::NO_CONTENT, _)) = admin
            .request(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await
    {
        out.cleanups += 1;
    }
    out
}

/// The versions per type in a `/v1/fleet` (control plane) or `fleet.state` (edge) view.
fn versions(types: &serde_json::Value) -> BTreeMap<String, String> {
    types
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(t, v)| Some((t.clone(), v["version"].as_str()?.to_owned())))
        .collect()
}

/// Waits (at most 5 s) until the edge has in force every version the control plane
/// publishes, so the updates a round caused are all counted in that round. Whether it did.
async fn settle(cp: &mut Admin, edge: &mut Admin) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let want = cp.request(Method::GET, "/v1/fleet", None).await;
        let have = edge.request(Method::GET, "/v1/config", None).await;
        if let (Ok((StatusCode::OK, want)), Ok((StatusCode::OK, have))) = (want, have) {
            let want: serde_json::Value = serde_json::from_slice(&want).unwrap_or_default();
            let have: serde_json::Value = serde_json::from_slice(&have).unwrap_or_default();
            let want = versions(&want["types"]);
            if !want.is_empty() && want == versions(&have["fleet"]["state"]["types"]) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

const FLEET_FILE: &str = "profiles:
  agents:
    destinations:
      - { host: other.test, ports: [443], rung: bump, methods: [GET] }
";

struct Fleet {
    cp: Proc,
    edge: Proc,
    cp_admin: SocketAddr,
    edge_admin: SocketAddr,
    target: Target,
    edge_start: Duration,
}

async fn start(s: &Setup<'_>) -> Result<Fleet> {
    if !s.edge_bin.is_file() {
        bail!(
            "no egress-edge binary at {} (build it: cargo build --release -p egress-edge, \
             into the same target dir, or pass --edge-bin)",
            s.edge_bin.display()
        );
    }
    let dir = s.dir.join("fleet");
    std::fs::create_dir_all(&dir)?;
    let secrets = dir.join("secrets.yaml");
    std::fs::write(&secrets, "secrets: {}\n")?;
    let fleet_file = dir.join("fleet.yaml");
    std::fs::write(&fleet_file, FLEET_FILE)?;
    let (sds, cp_admin) = (free_port()?, free_port()?);
    let cp_admin = SocketAddr::from(([127, 0, 0, 1], cp_admin));
    let args: Vec<String> = [
        "sds",
        "serve",
        "--listen",
        &format!("127.0.0.1:{sds}"),
        "--secrets",
        &secrets.display().to_string(),
        "--fleet",
        &fleet_file.display().to_string(),
        "--admin",
        &cp_admin.to_string(),
        "--state-dir",
        &dir.join("control").display().to_string(),
        "--grant-ttl",
        "5m",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut cp = Proc::spawn(&s.edge_bin, &args, dir.join("control.log"), "control plane")?;
    wait_ok(cp_admin, "/healthz", &mut cp, Duration::from_secs(20)).await?;

    let (proxy, admin) = (free_port()?, free_port()?);
    let edge_admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let state = dir.join("edge");
    let config = dir.join("edge.yaml");
    std::fs::write(
        &config,
        format!(
            "proxy: {{ listen: '127.0.0.1:{proxy}', shutdown_grace: 1s }}
admin: {{ listen: '127.0.0.1:{admin}' }}
log: {{ level: warn }}
state_dir: {state}
upstream: {{ extra_roots: [{roots}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ bump.test: 127.0.0.1 }} }}
secrets:
  sds: {{ target: 'http://127.0.0.1:{sds}', node_id: bench-edge, initial_fetch_timeout: 10s }}
fleet: {{ source: sds }}
destinations:
  - {{ host: bump.test, ports: [{port}], rung: bump }}
default_rung: deny
",
            state = yaml_path(&state),
            roots = yaml_path(s.upstream_ca),
            port = s.upstream.port(),
        ),
    )?;
    let t0 = Instant::now();
    let mut edge = Proc::spawn(
        &s.edge_bin,
        &[
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ],
        dir.join("edge.log"),
        "edge",
    )?;
    wait_ok(edge_admin, "/readyz", &mut edge, Duration::from_secs(30)).await?;
    let edge_start = t0.elapsed();
    let ca_path = state.join(egress_ca::CA_CERT_FILE);
    let pem = std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
    let ca = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| anyhow!("parsing the edge's bump CA PEM: {e}"))?;
    let target = Target::new(
        Route::Bump,
        "bump.test",
        s.upstream,
        Some(SocketAddr::from(([127, 0, 0, 1], proxy))),
        &client::root_store(ca)?,
    )?;
    let mut c = target.open(Proto::H1).await.with_context(|| edge.tail())?;
    let n = c.get("/small").await?;
    if n != SMALL_LEN {
        bail!("/small returned {n} bytes");
    }
    Ok(Fleet {
        cp,
        edge,
        cp_admin,
        edge_admin,
        target,
        edge_start,
    })
}

fn sum(u: &Updates, result: &str) -> f64 {
    // `+ 0.0`: an empty f64 sum is -0.0.
    u.iter()
        .filter(|((_, r), _)| r == result)
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0
}

fn by_type(u: &Updates, result: &str) -> String {
    let parts: Vec<String> = u
        .iter()
        .filter(|((_, r), _)| r == result)
        .map(|((t, _), v)| format!("{t} {v:.0}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The `fleet` section.
pub async fn section(report: &mut Report, s: &Setup<'_>) {
    report.section(format!(
        "fleet: bump keep-alive GET /small, HTTP/1.1, {} connections, through an `egress-edge run` \
         process following an `egress-edge sds serve` control plane (fleet.source: sds); no \
         updates vs {:.0} control-plane writes/s (revoke, register sandbox, revoke, delete \
         sandbox), each pushed to the edge; {} round(s) of: no updates, updates; state dirs on {}",
        s.conns,
        s.rate,
        s.rounds,
        fstype(s.dir)
    ));
    report.tag = Some("fleet section");
    let quiet_label = "bump keep-alive, no fleet updates";
    let churn_label = format!("bump keep-alive, {:.0} fleet writes/s", s.rate);
    eprintln!("bench: starting a control plane and an edge process");
    let f = match start(s).await {
        Ok(f) => f,
        Err(e) => {
            report.fail(quiet_label, &e);
            return;
        }
    };
    let mut metrics = Admin::new(f.edge_admin);
    let mut cp_admin = Admin::new(f.cp_admin);
    let mut unsettled = 0u32;
    let mut quiet: Option<Result<PhaseResult>> = None;
    let mut busy: Option<Result<PhaseResult>> = None;
    let (mut quiet_updates, mut busy_updates) = (Updates::new(), Updates::new());
    let mut churned = Churn::default();
    let mut metric_err: Option<anyhow::Error> = None;
    for round in 1..=s.rounds {
        for with_updates in [false, true] {
            let slot = if with_updates { &mut busy } else { &mut quiet };
            if matches!(slot, Some(Err(_))) {
                continue;
            }
            let label = if with_updates {
                churn_label.as_str()
            } else {
                quiet_label
            };
            eprintln!("bench: running {label} (round {round}/{})", s.rounds);
            let before = fleet_updates(&mut metrics).await;
            let (stop, stopped) = oneshot::channel();
            let task = with_updates.then(|| {
                tokio::spawn(churn(
                    f.cp_admin,
                    s.rate,
                    stopped,
                    (round as u64) * 1_000_000,
                ))
            });
            let r = phases::keep_alive(&f.target, Proto::H1, s.conns, s.timing).await;
            let _ = stop.send(());
            if let Some(t) = task {
                match t.await {
                    Ok(c) => churned.add(c),
                    Err(e) => {
                        churned.errors += 1;
                        churned.first_err.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            if !settle(&mut cp_admin, &mut metrics).await {
                unsettled += 1;
            }
            let after = fleet_updates(&mut metrics).await;
            match (before, after) {
                (Ok(b), Ok(a)) => add_delta(
                    if with_updates {
                        &mut busy_updates
                    } else {
                        &mut quiet_updates
                    },
                    &b,
                    &a,
                ),
                (Err(e), _) | (_, Err(e)) => {
                    metric_err.get_or_insert(e);
                }
            }
            *slot = Some(match (slot.take(), r) {
                (Some(Ok(a)), Ok(b)) => Ok(a.combine(b)),
                (_, r) => r,
            });
        }
    }
    let q = rate_row(
        report,
        quiet_label,
        quiet.unwrap_or_else(|| Err(anyhow!("not run"))),
        REQS,
        &[Base::Is],
    );
    rate_row(
        report,
        &churn_label,
        busy.unwrap_or_else(|| Err(anyhow!("not run"))),
        REQS,
        &[Base::Vs(q, "no updates")],
    );
    let secs = churned.busy.as_secs_f64();
    let label = "fleet updates applied";
    match metric_err {
        Some(e) => report.fail(label, &e.context("reading the edge's /metrics")),
        None => {
            report.push(Row {
                label: label.to_owned(),
                value: format!("{:.0} updates", sum(&busy_updates, "applied")),
                p50: String::new(),
                p99: String::new(),
                note: format!(
                    "(by the edge during the updates rounds, warm-ups and clean-up included: {}; \
                     rejected {:.0}; during the no-updates rounds: {:.0}) from {} control-plane \
                     writes in {secs:.1} s ({:.1}/s: {} revoke, {} register, {} delete; then {} \
                     clean-up delete(s))",
                    by_type(&busy_updates, "applied"),
                    sum(&busy_updates, "rejected"),
                    sum(&quiet_updates, "applied") + sum(&quiet_updates, "rejected"),
                    churned.writes(),
                    churned.writes() as f64 / secs.max(f64::MIN_POSITIVE),
                    churned.revokes,
                    churned.registers,
                    churned.deletes,
                    churned.cleanups,
                ),
            });
        }
    }
    if unsettled > 0 {
        report.with_errors.push(format!(
            "fleet section: {unsettled} round(s) ended with the edge not at the control plane's \
             versions within 5 s"
        ));
    }
    if churned.errors > 0 {
        let first = churned.first_err.clone().unwrap_or_default();
        report.with_errors.push(format!(
            "fleet section: control-plane writes: {} errors, first: {first}",
            churned.errors
        ));
    }
    report.push(Row {
        label: "edge start".to_owned(),
        value: format!("{:.0} ms", f.edge_start.as_secs_f64() * 1e3),
        p50: String::new(),
        p99: String::new(),
        note: "(process spawn until /readyz 200: every fleet type acknowledged)".to_owned(),
    });
    f.edge.stop().await;
    f.cp.stop().await;
}
