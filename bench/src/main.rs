//! egress-bench: egress-edge measured in-process on loopback against a local HTTPS upstream,
//! each path shown next to the direct (no proxy) baseline measured in the same run.
//!
//! Only 127.0.0.1 is ever dialed. Numbers are printed, never asserted. See README.md.

mod certs;
mod client;
mod dns;
mod fleet;
mod phases;
mod policy;
mod proxy;
mod sandboxes;
mod stats;
mod tenants;
mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::client::{FreshNames, Proto, Route, Target};
use crate::phases::Timing;
use crate::stats::{PhaseResult, fmt_us, pct, per_sec};

const USAGE: &str = "\
egress-bench: egress-edge (tunnel and bump) vs direct, in-process on loopback

usage: egress-bench [--quick] [--secs S] [--rounds R] [--warmup-ms MS] [--conns N]
                    [--new-conns N] [--mints N] [--verifies N] [--sandboxes N]
                    [--policy-calls N] [--only LIST] [--edge-bin PATH] [--fleet-rate N]

  --quick          1 s phases in 1 round, 200 ms warm-up
  --secs S         measured seconds per phase (default 4)        env EGRESS_BENCH_SECS
  --rounds R       split each phase into R rounds interleaved with the other paths of its
                   section (direct, tunnel, bump, direct, ...) so drifting machine load hits
                   baseline and proxy alike (default 2)          env EGRESS_BENCH_ROUNDS
  --warmup-ms MS   unmeasured warm-up per round (default 500)    env EGRESS_BENCH_WARMUP_MS
  --conns N        keep-alive connections (default 16)           env EGRESS_BENCH_CONNS
  --new-conns N    new-connection workers (default 8)            env EGRESS_BENCH_NEW_CONNS
  --mints N        cold leaf mints (default 2000)                env EGRESS_BENCH_MINTS
  --verifies N     handle verify+authorize calls (default 20000) env EGRESS_BENCH_VERIFIES
  --sandboxes N    sandboxes (50 rules each) in the policy and sandboxes sections
                   (default 1000)                                env EGRESS_BENCH_SANDBOXES
  --policy-calls N calls per policy decision row (default 200000)
                                                                 env EGRESS_BENCH_POLICY_CALLS
  --cold-names N   never-used names for the cold-SNI rows (default 20000; the proxy
                   config lists them all)                        env EGRESS_BENCH_COLD_NAMES
  --only LIST      comma-separated subset of:
                   keepalive,h2,inject,newconn,resume,coldsni,latency,throughput,
                   throughput-h2,mint,verify,reencrypt,dns,policy,sandboxes,fleet (fleet only
                   when listed: it runs the
                   egress-edge binary as processes)              env EGRESS_BENCH_ONLY
  --edge-bin PATH  the egress-edge binary for `fleet` (default: egress-edge next to this
                   binary, i.e. the same target dir and profile) env EGRESS_BENCH_EDGE_BIN
  --fleet-rate N   control-plane writes per second in the fleet updates rounds
                   (default 10)                                  env EGRESS_BENCH_FLEET_RATE
";

const PHASES: [&str; 16] = [
    "keepalive",
    "h2",
    "inject",
    "newconn",
    "resume",
    "coldsni",
    "latency",
    "throughput",
    "throughput-h2",
    "mint",
    "verify",
    "reencrypt",
    "dns",
    "policy",
    "sandboxes",
    "fleet",
];

/// Phases that run only when `--only` names them.
const OPT_IN: [&str; 1] = ["fleet"];

#[derive(Debug)]
struct Args {
    secs: f64,
    rounds: usize,
    warmup_ms: u64,
    conns: usize,
    new_conns: usize,
    mints: usize,
    verifies: usize,
    sandboxes: usize,
    policy_calls: usize,
    cold_names: usize,
    only: Option<Vec<String>>,
    edge_bin: Option<PathBuf>,
    fleet_rate: f64,
}

impl Args {
    fn wants(&self, phase: &str) -> bool {
        match &self.only {
            None => !OPT_IN.contains(&phase),
            Some(o) => o.iter().any(|p| p == phase),
        }
    }

    /// Timing of one round.
    fn timing(&self) -> Timing {
        Timing {
            warmup: Duration::from_millis(self.warmup_ms),
            secs: Duration::from_secs_f64(self.secs / self.rounds as f64),
        }
    }
}

fn parse_num<T: std::str::FromStr>(what: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| anyhow!("{what}: `{v}` is not a valid number"))
}

fn parse_only(v: &str) -> Result<Vec<String>> {
    let list: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for p in &list {
        if !PHASES.contains(&p.as_str()) {
            bail!("--only: unknown phase `{p}` (known: {})", PHASES.join(","));
        }
    }
    Ok(list)
}

/// Defaults, then `--quick`, then environment, then explicit flags.
fn parse_args() -> Result<Option<Args>> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let mut a = Args {
        secs: if quick { 1.0 } else { 4.0 },
        rounds: if quick { 1 } else { 2 },
        warmup_ms: if quick { 200 } else { 500 },
        conns: 16,
        new_conns: 8,
        mints: 2000,
        verifies: 20_000,
        sandboxes: 1000,
        policy_calls: 200_000,
        cold_names: 20_000,
        only: None,
        edge_bin: None,
        fleet_rate: 10.0,
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if !quick {
        if let Some(v) = env("EGRESS_BENCH_SECS") {
            a.secs = parse_num("EGRESS_BENCH_SECS", &v)?;
        }
        if let Some(v) = env("EGRESS_BENCH_ROUNDS") {
            a.rounds = parse_num("EGRESS_BENCH_ROUNDS", &v)?;
        }
        if let Some(v) = env("EGRESS_BENCH_WARMUP_MS") {
            a.warmup_ms = parse_num("EGRESS_BENCH_WARMUP_MS", &v)?;
        }
    }
    if let Some(v) = env("EGRESS_BENCH_CONNS") {
        a.conns = parse_num("EGRESS_BENCH_CONNS", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_NEW_CONNS") {
        a.new_conns = parse_num("EGRESS_BENCH_NEW_CONNS", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_MINTS") {
        a.mints = parse_num("EGRESS_BENCH_MINTS", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_VERIFIES") {
        a.verifies = parse_num("EGRESS_BENCH_VERIFIES", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_SANDBOXES") {
        a.sandboxes = parse_num("EGRESS_BENCH_SANDBOXES", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_POLICY_CALLS") {
        a.policy_calls = parse_num("EGRESS_BENCH_POLICY_CALLS", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_COLD_NAMES") {
        a.cold_names = parse_num("EGRESS_BENCH_COLD_NAMES", &v)?;
    }
    if let Some(v) = env("EGRESS_BENCH_ONLY") {
        a.only = Some(parse_only(&v)?);
    }
    if let Some(v) = env("EGRESS_BENCH_EDGE_BIN") {
        a.edge_bin = Some(PathBuf::from(v));
    }
    if let Some(v) = env("EGRESS_BENCH_FLEET_RATE") {
        a.fleet_rate = parse_num("EGRESS_BENCH_FLEET_RATE", &v)?;
    }
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{flag} needs a value"))
        };
        match flag {
            "--quick" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--secs" => a.secs = parse_num("--secs", &value()?)?,
            "--rounds" => a.rounds = parse_num("--rounds", &value()?)?,
            "--warmup-ms" => a.warmup_ms = parse_num("--warmup-ms", &value()?)?,
            "--conns" => a.conns = parse_num("--conns", &value()?)?,
            "--new-conns" => a.new_conns = parse_num("--new-conns", &value()?)?,
            "--mints" => a.mints = parse_num("--mints", &value()?)?,
            "--verifies" => a.verifies = parse_num("--verifies", &value()?)?,
            "--sandboxes" => a.sandboxes = parse_num("--sandboxes", &value()?)?,
            "--policy-calls" => a.policy_calls = parse_num("--policy-calls", &value()?)?,
            "--cold-names" => a.cold_names = parse_num("--cold-names", &value()?)?,
            "--only" => a.only = Some(parse_only(&value()?)?),
            "--edge-bin" => a.edge_bin = Some(PathBuf::from(value()?)),
            "--fleet-rate" => a.fleet_rate = parse_num("--fleet-rate", &value()?)?,
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    if !(a.secs.is_finite() && a.secs > 0.0 && a.secs <= 3600.0) {
        bail!("--secs must be in (0, 3600]");
    }
    if a.conns == 0 || a.new_conns == 0 || a.rounds == 0 {
        bail!("--conns, --new-conns and --rounds must be at least 1");
    }
    if a.cold_names > 1_000_000 {
        bail!("--cold-names must be at most 1000000");
    }
    if !(2..=100_000).contains(&a.sandboxes) {
        bail!("--sandboxes must be in [2, 100000]");
    }
    if !(a.fleet_rate.is_finite() && a.fleet_rate >= 0.1 && a.fleet_rate <= 1000.0) {
        bail!("--fleet-rate must be in [0.1, 1000]");
    }
    Ok(Some(a))
}

/// One printed line.
#[derive(Debug)]
struct Row {
    label: String,
    value: String,
    p50: String,
    p99: String,
    note: String,
}

#[derive(Debug, Default)]
struct Report {
    sections: Vec<(String, Vec<Row>)>,
    failed: Vec<String>,
    with_errors: Vec<String>,
    /// Prefix for the current section's `FAILED` / `ERRORS` lines, when its row labels repeat
    /// another section's.
    tag: Option<&'static str>,
}

impl Report {
    fn section(&mut self, title: String) {
        self.sections.push((title, Vec::new()));
        self.tag = None;
    }

    /// A row's name in `FAILED` / `ERRORS` lines.
    fn tagged(&self, label: &str) -> String {
        match self.tag {
            Some(t) => format!("{t}: {label}"),
            None => label.to_owned(),
        }
    }

    fn push(&mut self, row: Row) {
        eprintln!(
            "bench:   {}: {} {} {} {}",
            row.label, row.value, row.p50, row.p99, row.note
        );
        if let Some((_, rows)) = self.sections.last_mut() {
            rows.push(row);
        }
    }

    fn fail(&mut self, label: &str, e: &anyhow::Error) {
        self.failed.push(format!("{}: {e:#}", self.tagged(label)));
        self.push(Row {
            label: label.to_owned(),
            value: "FAILED".to_owned(),
            p50: String::new(),
            p99: String::new(),
            note: format!("{e:#}"),
        });
    }

    fn print(&self) {
        let all = self.sections.iter().flat_map(|(_, r)| r.iter());
        let (mut wl, mut wv, mut w50, mut w99) = (0, 0, 0, 0);
        for r in all {
            wl = wl.max(r.label.chars().count());
            wv = wv.max(r.value.chars().count());
            w50 = w50.max(r.p50.chars().count());
            w99 = w99.max(r.p99.chars().count());
        }
        for (title, rows) in &self.sections {
            println!();
            println!("{title}");
            for r in rows {
                let line = format!(
                    "  {:<wl$}  {:>wv$}  {:>w50$}  {:>w99$}  {}",
                    format!("{}:", r.label),
                    r.value,
                    r.p50,
                    r.p99,
                    r.note,
                    wl = wl + 1
                );
                println!("{}", line.trim_end());
            }
        }
    }
}

/// What a row is compared with.
#[derive(Clone, Copy, Debug)]
enum Base<'a> {
    /// This row is the baseline.
    Is,
    /// The baseline's value (if it succeeded) and its name.
    Vs(Option<f64>, &'a str),
}

impl<'a> Base<'a> {
    /// The base for the rows after `target`'s row: itself if it is the direct one.
    fn after(self, target: &Target, v: Option<f64>, name: &'a str) -> Base<'a> {
        if target.route == Route::Direct {
            Base::Vs(v, name)
        } else {
            self
        }
    }

    fn for_target(self, target: &Target) -> Base<'a> {
        if target.route == Route::Direct {
            Base::Is
        } else {
            self
        }
    }
}

fn ratio_part(x: f64, base: Base<'_>) -> String {
    match base {
        Base::Is => "baseline".to_owned(),
        Base::Vs(Some(b), name) if b > 0.0 => format!("{:.2}x {name}", x / b),
        Base::Vs(_, name) => format!("no {name} baseline"),
    }
}

fn ratio(x: f64, base: Base<'_>) -> String {
    ratios(x, &[base])
}

/// `(0.93x bump, 0.55x direct)`.
fn ratios(x: f64, bases: &[Base<'_>]) -> String {
    let parts: Vec<String> = bases.iter().map(|b| ratio_part(x, *b)).collect();
    format!("({})", parts.join(", "))
}

fn p50_p99(sorted: &[u32]) -> (String, String) {
    (
        format!("p50 {:>8}", fmt_us(pct(sorted, 50.0))),
        format!("p99 {:>8}", fmt_us(pct(sorted, 99.0))),
    )
}

fn errors_note(label: &str, r: &PhaseResult, report: &mut Report) -> String {
    if r.errors == 0 {
        return String::new();
    }
    let first = r.first_err.clone().unwrap_or_default();
    let name = report.tagged(label);
    report
        .with_errors
        .push(format!("{name}: {} errors, first: {first}", r.errors));
    format!(" [{} errors; first: {first}]", r.errors)
}

/// What a rate row shows.
#[derive(Clone, Copy, Debug)]
struct Metric {
    unit: &'static str,
    value: fn(&PhaseResult) -> f64,
    with_latency: bool,
}

const REQS: Metric = Metric {
    unit: "req/s",
    value: PhaseResult::rate,
    with_latency: true,
};
const CONNS: Metric = Metric {
    unit: "conn/s",
    value: PhaseResult::rate,
    with_latency: true,
};
const REQS_DNS: Metric = Metric {
    unit: "q/s",
    value: PhaseResult::rate,
    with_latency: true,
};
const MBS: Metric = Metric {
    unit: "MB/s",
    value: PhaseResult::mb_per_sec,
    with_latency: false,
};

/// A throughput-like row (higher is better), compared with each of `bases`; returns the value
/// for use as a baseline.
fn rate_row(
    report: &mut Report,
    label: &str,
    res: Result<PhaseResult>,
    m: Metric,
    bases: &[Base<'_>],
) -> Option<f64> {
    let Metric {
        unit,
        value,
        with_latency,
    } = m;
    match res {
        Ok(r) if r.ok > 0 => {
            let v = value(&r);
            let errs = errors_note(label, &r, report);
            let (p50, p99) = if with_latency {
                p50_p99(&r.lat)
            } else {
                (String::new(), String::new())
            };
            let fmt_v = if v >= 100.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
            report.push(Row {
                label: label.to_owned(),
                value: fmt_v,
                p50,
                p99,
                note: format!("{}{errs}", ratios(v, bases)),
            });
            Some(v)
        }
        Ok(r) => {
            let e = anyhow!(
                "no successful operation ({} errors; first: {})",
                r.errors,
                r.first_err.unwrap_or_default()
            );
            report.fail(label, &e);
            None
        }
        Err(e) => {
            report.fail(label, &e);
            None
        }
    }
}

/// A latency row (lower is better); the ratio is of p50s. Returns the p50 in µs.
/// One [`rate_row`] per target, each against the section's first (direct) row, `base` naming
/// it; a row's label is the target's route and `what`.
fn rate_rows(
    report: &mut Report,
    targets: &[&Target],
    results: Vec<Result<PhaseResult>>,
    m: Metric,
    what: &str,
    base: &'static str,
) {
    let mut vs = Base::Vs(None, base);
    for (target, res) in targets.iter().copied().zip(results) {
        let label = format!("{} {what}", target.route.label());
        let v = rate_row(report, &label, res, m, &[vs.for_target(target)]);
        vs = vs.after(target, v, base);
    }
}

fn latency_row(
    report: &mut Report,
    label: &str,
    res: Result<PhaseResult>,
    base: Base<'_>,
) -> Option<f64> {
    match res {
        Ok(r) if r.ok > 0 => {
            let p50 = pct(&r.hs, 50.0);
            let errs = errors_note(label, &r, report);
            let v = p50.map(f64::from).unwrap_or_default();
            let (p50s, p99s) = p50_p99(&r.hs);
            report.push(Row {
                label: label.to_owned(),
                value: format!("{} samples", r.hs.len()),
                p50: p50s,
                p99: p99s,
                note: format!("{}{errs}", ratio(v, base)),
            });
            Some(v)
        }
        Ok(r) => {
            let e = anyhow!(
                "no successful connect ({} errors; first: {})",
                r.errors,
                r.first_err.unwrap_or_default()
            );
            report.fail(label, &e);
            None
        }
        Err(e) => {
            report.fail(label, &e);
            None
        }
    }
}

/// Runs `phase` for every target, `rounds` times, interleaved (A B C A B C), and pools each
/// target's rounds. A target whose round fails is not run again.
async fn interleaved<'a, F, Fut>(
    rounds: usize,
    targets: &[&'a Target],
    what: &str,
    mut phase: F,
) -> Vec<Result<PhaseResult>>
where
    F: FnMut(&'a Target) -> Fut,
    Fut: Future<Output = Result<PhaseResult>>,
{
    let mut out: Vec<Option<Result<PhaseResult>>> = targets.iter().map(|_| None).collect();
    for round in 1..=rounds {
        for (target, slot) in targets.iter().zip(out.iter_mut()) {
            if matches!(slot, Some(Err(_))) {
                continue;
            }
            eprintln!(
                "bench: running {} {what} (round {round}/{rounds})",
                target.route.label()
            );
            let r = phase(target).await;
            *slot = Some(match (slot.take(), r) {
                (Some(Ok(a)), Ok(b)) => Ok(a.combine(b)),
                (_, r) => r,
            });
        }
    }
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err(anyhow!("not run"))))
        .collect()
}

/// `/proc/loadavg`'s first three fields, when there is one.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// A private scratch directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("egress-bench-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // As the binary does (src/main.rs): freed memory goes back without further allocations.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("egress-bench: allocator background purging unavailable: {e}");
    }
    // Interrupted: drop everything under way first (the fleet section's processes are
    // killed on drop, the scratch dir removed), then leave.
    let result = tokio::select! {
        r = run() => Some(r),
        () = interrupted() => None,
    };
    let Some(result) = result else {
        eprintln!("bench: interrupted; processes stopped, scratch dir removed");
        std::process::exit(130);
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    // A failed registration disables its branch instead of reading as a signal.
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn run() -> Result<bool> {
    let Some(args) = parse_args()? else {
        return Ok(true);
    };
    let t = args.timing();
    let began = Instant::now();
    let scratch = Scratch::new()?;

    // Upstream PKI and server.
    let pki = certs::generate()?;
    let upstream_ca_path = scratch.0.join("upstream-ca.pem");
    std::fs::write(&upstream_ca_path, &pki.ca_pem)?;
    let upstream = upstream::start(&pki).await?;

    // The proxy.
    let state_dir = scratch.0.join("state");
    std::fs::create_dir_all(&state_dir)?;
    let secrets_file = scratch.0.join("secrets.yaml");
    let cold_names = if args.wants("coldsni") {
        args.cold_names
    } else {
        0
    };
    let proxy = proxy::Proxy::start(
        state_dir,
        &secrets_file,
        &upstream_ca_path,
        upstream.port(),
        cold_names,
    )
    .await?;
    let bump_ca = CertificateDer::from_pem_slice(proxy.bump_ca_pem.as_bytes())
        .map_err(|e| anyhow!("parsing the bump CA PEM: {e}"))?;

    let upstream_roots = client::root_store(pki.ca_der.clone())?;
    let bump_roots = client::root_store(bump_ca)?;
    let direct = Target::new(
        Route::Direct,
        "upstream.test",
        upstream,
        None,
        &upstream_roots,
    )?;
    let tunnel = Target::new(
        Route::Tunnel,
        "upstream.test",
        upstream,
        Some(proxy.addr),
        &upstream_roots,
    )?;
    let bump = Target::new(
        Route::Bump,
        "bump.test",
        upstream,
        Some(proxy.addr),
        &bump_roots,
    )?;
    let targets = [&direct, &tunnel, &bump];
    // bump+inject: a handle minted through the admin API, sent on every request to
    // inject.test, where the proxy verifies it and swaps in the `bench-key` secret.
    let inject = if args.wants("inject") {
        let t = async {
            let handle = proxy.mint_handle().await?;
            Target::new(
                Route::BumpInject,
                upstream::INJECT_HOST,
                upstream,
                Some(proxy.addr),
                &bump_roots,
            )?
            .with_bearer(&handle)
        }
        .await;
        if let Err(e) = &t {
            eprintln!("bench: setting up bump+inject failed: {e:#}");
        }
        Some(t)
    } else {
        None
    };

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "egress-bench: {:.1} s per phase in {} interleaved round(s) (+{} ms warm-up each), {} keep-alive conns, \
         {} new-conn workers, {cpus} CPUs, load average {}{}",
        args.secs,
        args.rounds,
        args.warmup_ms,
        args.conns,
        args.new_conns,
        loadavg(),
        if cfg!(debug_assertions) {
            " -- DEBUG BUILD, figures meaningless"
        } else {
            ""
        }
    );
    println!(
        "upstream https://127.0.0.1:{} (h2 + http/1.1), egress-edge proxy {} (admin {}); all figures from this one run",
        upstream.port(),
        proxy.addr,
        proxy
            .admin
            .map_or_else(|| "-".to_owned(), |a| a.to_string())
    );

    // Smoke check every path once, so a broken path reports its error up front.
    let inject_ok = inject.as_ref().and_then(|t| t.as_ref().ok());
    for target in targets.iter().copied().chain(inject_ok) {
        let r = async {
            let mut c = target.open(Proto::H1).await?;
            let n = c.get("/small").await?;
            if n != upstream::SMALL_LEN {
                bail!("/small returned {n} bytes");
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("bench: smoke check {} failed: {e:#}", target.route.label());
        }
    }

    let mut report = Report::default();

    if args.wants("keepalive") {
        report.section(format!(
            "keep-alive GET /small, HTTP/1.1, {} connections, one request in flight each",
            args.conns
        ));
        let results = interleaved(args.rounds, &targets, "keep-alive", |tg| {
            phases::keep_alive(tg, Proto::H1, args.conns, t)
        })
        .await;
        rate_rows(&mut report, &targets, results, REQS, "keep-alive", "direct");
    }

    if args.wants("h2") {
        report.section(format!(
            "keep-alive GET /small, HTTP/2, {} connections, one stream in flight each",
            args.conns
        ));
        let results = interleaved(args.rounds, &targets, "keep-alive h2", |tg| {
            phases::keep_alive(tg, Proto::H2, args.conns, t)
        })
        .await;
        rate_rows(
            &mut report,
            &targets,
            results,
            REQS,
            "keep-alive h2",
            "direct h2",
        );
    }

    if let Some(inject) = &inject {
        report.section(format!(
            "bump with injection vs without: keep-alive GET /small, HTTP/1.1, {} connections, one \
             request in flight each; bump+inject sends a handle on every request and the proxy \
             verifies it and injects the secret",
            args.conns
        ));
        report.tag = Some("inject section");
        match inject {
            Ok(inject) => {
                let cmp = [&direct, &bump, inject];
                let results = interleaved(args.rounds, &cmp, "keep-alive (inject section)", |tg| {
                    phases::keep_alive(tg, Proto::H1, args.conns, t)
                })
                .await;
                let mut results = results.into_iter();
                let mut next = || results.next().unwrap_or_else(|| Err(anyhow!("not run")));
                let d = rate_row(&mut report, "direct keep-alive", next(), REQS, &[Base::Is]);
                let b = rate_row(
                    &mut report,
                    "bump keep-alive",
                    next(),
                    REQS,
                    &[Base::Vs(d, "direct")],
                );
                rate_row(
                    &mut report,
                    "bump+inject keep-alive",
                    next(),
                    REQS,
                    &[Base::Vs(b, "bump"), Base::Vs(d, "direct")],
                );
            }
            Err(e) => report.fail("bump+inject keep-alive", e),
        }
    }

    if args.wants("newconn") {
        report.section(format!(
            "new connection per request, {} workers: TCP (+CONNECT) + full TLS handshake + GET /small \
             (bump: warm leaf, so TLS handshakes/s)",
            args.new_conns
        ));
        let results = interleaved(args.rounds, &targets, "new-connection", |tg| {
            phases::new_conn(tg, args.new_conns, t)
        })
        .await;
        rate_rows(
            &mut report,
            &targets,
            results,
            CONNS,
            "new-connection",
            "direct",
        );
    }

    if args.wants("resume") {
        report.section(format!(
            "new connection per request with TLS session resumption, {} workers: TCP (+CONNECT) + \
             resumed TLS handshake + GET /small (bump: resumed towards the guest; its upstream \
             side is pooled)",
            args.new_conns
        ));
        let resuming = targets
            .iter()
            .map(|t| (*t).clone().with_resumption())
            .collect::<Result<Vec<_>>>()?;
        let resuming: Vec<&Target> = resuming.iter().collect();
        let results = interleaved(args.rounds, &resuming, "new-connection resumed", |tg| {
            phases::new_conn(tg, args.new_conns, t)
        })
        .await;
        rate_rows(
            &mut report,
            &resuming,
            results,
            CONNS,
            "new-connection resumed",
            "direct resumed",
        );
        for target in &resuming {
            // The row means nothing if the server stopped resuming: each worker's first
            // handshake (the store is shared across rounds) is full, every later one should
            // be a resumption.
            let label = format!("{} new-connection resumed", target.route.label());
            let (resumed, all) = target.handshakes();
            if all > 0 && (resumed as f64) < 0.9 * all as f64 {
                report.fail(
                    &label,
                    &anyhow!("only {resumed} of {all} TLS handshakes were resumptions"),
                );
            }
        }
    }

    if args.wants("latency") {
        report.section(
            "new-CONNECT latency, one client, sequential: TCP connect until TLS established end to end"
                .to_owned(),
        );
        let results = interleaved(args.rounds, &targets, "connect+TLS", |tg| {
            phases::connect_latency(tg, t)
        })
        .await;
        let mut base = Base::Vs(None, "direct p50");
        for (target, res) in targets.iter().copied().zip(results) {
            let label = format!("{} connect+TLS", target.route.label());
            let v = latency_row(&mut report, &label, res, base.for_target(target));
            base = base.after(target, v, "direct p50");
        }
    }

    if args.wants("throughput") {
        report.section(format!(
            "throughput, one HTTP/1.1 stream, GET /large ({} MiB) back to back",
            upstream::LARGE_LEN >> 20
        ));
        let results = interleaved(args.rounds, &targets, "/large", |tg| {
            phases::throughput(tg, Proto::H1, t)
        })
        .await;
        rate_rows(&mut report, &targets, results, MBS, "/large", "direct");
    }

    if args.wants("throughput-h2") {
        report.section(format!(
            "throughput, one HTTP/2 stream, GET /large ({} MiB) back to back (bump: HTTP/2 on \
             both legs)",
            upstream::LARGE_LEN >> 20
        ));
        let results = interleaved(args.rounds, &targets, "/large h2", |tg| {
            phases::throughput(tg, Proto::H2, t)
        })
        .await;
        rate_rows(
            &mut report,
            &targets,
            results,
            MBS,
            "/large h2",
            "direct h2",
        );
    }

    if args.wants("mint") && args.mints > 0 {
        report.section(format!(
            "cold leaf mint: egress_ca::mint_leaf on a fresh CA, {} distinct names, one thread",
            args.mints
        ));
        let label = "cold leaf mint";
        eprintln!("bench: running {label}");
        match phases::mint(args.mints).await {
            Ok((samples, total)) => {
                let (p50, p99) = p50_p99(&samples);
                report.push(Row {
                    label: label.to_owned(),
                    value: format!("{:.0} mints/s", per_sec(samples.len() as f64, total)),
                    p50,
                    p99,
                    note: "(no baseline: pure CPU)".to_owned(),
                });
            }
            Err(e) => report.fail(label, &e),
        }
    }

    if args.wants("reencrypt") {
        report.section(
            "re-encryption: AES-256-GCM open + seal of 16 KiB records with ring, one thread, \
             1 GiB of plaintext (the bump's crypto per byte relayed)"
                .to_owned(),
        );
        let label = "AES-256-GCM open+seal";
        eprintln!("bench: running {label}");
        match phases::reencrypt(1 << 30).await {
            Ok(took) => report.push(Row {
                label: label.to_owned(),
                value: format!("{:.0} MB/s", per_sec((1u64 << 30) as f64, took) / 1e6),
                p50: String::new(),
                p99: String::new(),
                note: format!(
                    "(no baseline: pure CPU; {:.1} ms per 64 MiB)",
                    took.as_secs_f64() * 1000.0 / 16.0
                ),
            }),
            Err(e) => report.fail(label, &e),
        }
    }

    if args.wants("verify") && args.verifies > 0 {
        report.section(format!(
            "handle verification: HandleAuthority::verify + Claims::authorize on one handle, {} calls, \
             one thread",
            args.verifies
        ));
        let label = "handle verify+authorize";
        eprintln!("bench: running {label}");
        match phases::verify(scratch.0.join("handle-verify"), args.verifies).await {
            Ok((samples_ns, total)) => {
                let us = |p: f64| {
                    pct(&samples_ns, p).map_or_else(
                        || "-".to_owned(),
                        |ns| format!("{:.1} µs", f64::from(ns) / 1000.0),
                    )
                };
                report.push(Row {
                    label: label.to_owned(),
                    value: format!("{:.0} calls/s", per_sec(samples_ns.len() as f64, total)),
                    p50: format!("p50 {:>8}", us(50.0)),
                    p99: format!("p99 {:>8}", us(99.0)),
                    note: "(no baseline: pure CPU)".to_owned(),
                });
            }
            Err(e) => report.fail(label, &e),
        }
    }

    if args.wants("dns") {
        dns::section(&mut report, args.rounds, t, &scratch.0.join("dns-state")).await;
    }

    if args.wants("policy") && args.policy_calls > 0 {
        policy::section(
            &mut report,
            args.sandboxes,
            args.policy_calls,
            args.rounds,
            scratch.0.join("policy-state"),
        )
        .await;
    }

    if args.wants("sandboxes") {
        let setup = sandboxes::Setup {
            sandboxes: args.sandboxes,
            conns: args.conns,
            rounds: args.rounds,
            timing: t,
            dir: &scratch.0,
            upstream,
            upstream_ca: &upstream_ca_path,
            direct: &direct,
            bump: &bump,
        };
        sandboxes::section(&mut report, &setup).await;
    }

    // Last of the rows through the main proxy: it leaves thousands of leaves cached and up to
    // `max_pooled_total` upstream connections pooled, which must not weigh on the rows before.
    if args.wants("coldsni") {
        report.section(format!(
            "new connection per request, each to a name never used before (*.{}), {} workers, \
             full TLS handshakes: the bump mints a leaf and opens an upstream TLS connection \
             for every one",
            proxy::COLD_DOMAIN,
            args.new_conns
        ));
        let bump_names = FreshNames::new(proxy::COLD_PREFIX, proxy::COLD_DOMAIN, cold_names);
        let first = FreshNames::name(proxy::COLD_PREFIX, proxy::COLD_DOMAIN, 0);
        let cold = [
            Target::new(Route::Direct, &first, upstream, None, &upstream_roots)?
                .with_fresh_names(FreshNames::new("d", proxy::COLD_DOMAIN, usize::MAX)),
            Target::new(Route::Bump, &first, upstream, Some(proxy.addr), &bump_roots)?
                .with_fresh_names(bump_names.clone()),
        ];
        let cold: Vec<&Target> = cold.iter().collect();
        let results = interleaved(args.rounds, &cold, "new-connection cold SNI", |tg| {
            phases::new_conn(tg, args.new_conns, t)
        })
        .await;
        rate_rows(&mut report, &cold, results, CONNS, "cold SNI", "direct");
        if bump_names.exhausted() {
            report.fail(
                "bump cold SNI",
                &anyhow!(
                    "all {} names were used before the row's time was up, so it measured \
                     less than the planned time (or nothing, if they ran out in the warm-up): \
                     raise --cold-names",
                    bump_names.used()
                ),
            );
        }
    }

    if args.wants("fleet") {
        let edge_bin = match &args.edge_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name("egress-edge"),
        };
        let setup = fleet::Setup {
            edge_bin,
            conns: args.conns,
            rounds: args.rounds,
            timing: t,
            rate: args.fleet_rate,
            dir: &scratch.0,
            upstream,
            upstream_ca: &upstream_ca_path,
        };
        fleet::section(&mut report, &setup).await;
    }

    proxy.shutdown().await;
    report.print();
    println!();
    println!(
        "ratios are against the direct row (bump+inject: also the bump row; policy and sandboxes: \
         the 1-sandbox row; fleet: the no-updates row) of the same section, same run; \
         total {:.0} s; load average now {}",
        began.elapsed().as_secs_f64(),
        loadavg()
    );
    for f in &report.failed {
        println!("FAILED {f}");
    }
    for e in &report.with_errors {
        println!("ERRORS {e}");
    }
    if report.failed.is_empty() && report.with_errors.is_empty() {
        println!("bench: done");
        Ok(true)
    } else {
        println!(
            "bench: FAILED ({} phases failed, {} phases with errors)",
            report.failed.len(),
            report.with_errors.len()
        );
        Ok(false)
    }
}
