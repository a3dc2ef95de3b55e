//! The `sandboxes` rows: bump keep-alive requests/s through a proxy that knows one sandbox
//! against one that knows many, in the same run (the target: many ≥ 0.95× one).
//!
//! Two more egress-edge apps are started beside the main one, each with a state dir of its
//! own (so each generates its own bump CA). Both have the profile `bench` — `bump.test` on the
//! upstream's port, bumped, with `methods` / `paths` / `deny`, plus 49 generated rules — and
//! the sandbox `bench` whose source is `127.0.0.1/32`, so the bench clients (which connect
//! from 127.0.0.1) are identified as it and judged by that profile. The second app also has
//! `sandboxes - 1` generated sandboxes on `10.x.y.z/32`, each with a 50-rule profile of its
//! own (see `tenants`), all from the config file. The section's rows run interleaved, the
//! order reversed every other round (direct, bump, one, many, many, one, bump, direct, ...),
//! so drift on a busy machine hits both sides alike.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::client::{self, Proto, Route, Target};
use crate::phases::{self, Timing};
use crate::proxy::{Proxy, yaml_path};
use crate::stats::PhaseResult;
use crate::tenants::{self, RULES};
use crate::upstream::SMALL_LEN;
use crate::{Base, REQS, Report, Row, rate_row};

/// What the section needs from the rest of the run.
#[derive(Debug)]
pub struct Setup<'a> {
    pub sandboxes: usize,
    pub conns: usize,
    pub rounds: usize,
    pub timing: Timing,
    /// A scratch directory for the two apps' state dirs.
    pub dir: &'a Path,
    pub upstream: SocketAddr,
    pub upstream_ca: &'a Path,
    /// The direct row's target and the main proxy's bump target (no sandboxes).
    pub direct: &'a Target,
    pub bump: &'a Target,
}

/// The bench sandbox's profile: `bump.test` with request rules the bench's `GET /small`
/// passes, and the first 49 generated rules of profile 0.
fn bench_profile(port: u16) -> String {
    let mut lines = vec![format!(
        "{{ host: bump.test, ports: [{port}], rung: bump, methods: [GET, HEAD], \
         paths: ['/small', '/large'], deny: [{{ methods: [GET], paths: ['/small/admin'] }}] }}"
    )];
    lines.extend(
        tenants::destinations(0)
            .iter()
            .take(RULES - 1)
            .map(tenants::Dest::yaml),
    );
    let mut out = String::new();
    tenants::profile_yaml(&mut out, "bench", false, &lines);
    out
}

/// Config text for an app with the bench sandbox and `sandboxes - 1` generated ones.
fn config_yaml(state_dir: &Path, s: &Setup<'_>, sandboxes: usize) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0, shutdown_grace: 1s }}
admin: {{ listen: 127.0.0.1:0 }}
state_dir: {state}
upstream: {{ extra_roots: [{roots}] }}
network: {{ allow: [127.0.0.1/32], hosts: {{ bump.test: 127.0.0.1 }} }}
default_rung: deny
{tenants}",
        state = yaml_path(state_dir),
        roots = yaml_path(s.upstream_ca),
        tenants = tenants::tenants_yaml(
            1,
            sandboxes,
            &bench_profile(s.upstream.port()),
            "  - { id: bench, profile: bench, sources: [127.0.0.1/32] }\n",
        ),
    )
}

/// An app with `sandboxes` sandboxes, how long it took to start, and its bump target.
async fn start(s: &Setup<'_>, sandboxes: usize) -> Result<(Proxy, Duration, Target)> {
    let state_dir = s.dir.join(format!("sandboxes-{sandboxes}"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let yaml = config_yaml(&state_dir, s, sandboxes);
    let t0 = Instant::now();
    let proxy = Proxy::start_yaml(&yaml, &state_dir, &format!("{sandboxes}-sandbox")).await?;
    let took = t0.elapsed();
    let ca = CertificateDer::from_pem_slice(proxy.bump_ca_pem.as_bytes())
        .map_err(|e| anyhow!("parsing the bump CA PEM: {e}"))?;
    let target = Target::new(
        Route::Bump,
        "bump.test",
        s.upstream,
        Some(proxy.addr),
        &client::root_store(ca)?,
    )?;
    let mut c = target.open(Proto::H1).await?;
    let n = c.get("/small").await?;
    if n != SMALL_LEN {
        bail!("/small returned {n} bytes");
    }
    Ok((proxy, took, target))
}

/// The `sandboxes` section.
pub async fn section(report: &mut Report, s: &Setup<'_>) {
    let n = s.sandboxes;
    report.section(format!(
        "sandboxes: bump keep-alive GET /small, HTTP/1.1, {} connections from 127.0.0.1, \
         identified as sandbox `bench` ({RULES}-rule profile; bump.test with methods, paths, \
         deny); a proxy knowing 1 sandbox vs one knowing {n} ({} more on 10.x.y.z, {RULES} rules \
         each); target: {n} ≥ 0.95x 1",
        s.conns,
        n - 1
    ));
    report.tag = Some("sandboxes section");
    eprintln!("bench: starting proxies with 1 and {n} sandboxes");
    let one = start(s, 1).await;
    let many = start(s, n).await;
    let one_label = "bump keep-alive, 1 sandbox";
    let many_label = format!("bump keep-alive, {n} sandboxes");
    let (one, many) = match (one, many) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            if let Err(e) = &a {
                report.fail(one_label, e);
            }
            if let Err(e) = &b {
                report.fail(&many_label, e);
            }
            for p in [a, b].into_iter().flatten() {
                p.0.shutdown().await;
            }
            return;
        }
    };
    let paths: [(&str, &Target); 4] = [
        ("direct keep-alive", s.direct),
        ("bump keep-alive, no sandbox", s.bump),
        (one_label, &one.2),
        (&many_label, &many.2),
    ];
    let mut results: Vec<Option<Result<PhaseResult>>> = paths.iter().map(|_| None).collect();
    for round in 1..=s.rounds {
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let (label, target) = paths[i];
            let slot = &mut results[i];
            if matches!(slot, Some(Err(_))) {
                continue;
            }
            eprintln!("bench: running {label} (round {round}/{})", s.rounds);
            let r = phases::keep_alive(target, Proto::H1, s.conns, s.timing).await;
            *slot = Some(match (slot.take(), r) {
                (Some(Ok(a)), Ok(b)) => Ok(a.combine(b)),
                (_, r) => r,
            });
        }
    }
    let mut results = results.into_iter();
    let mut next = || {
        results
            .next()
            .flatten()
            .unwrap_or_else(|| Err(anyhow!("not run")))
    };
    let d = rate_row(report, paths[0].0, next(), REQS, &[Base::Is]);
    let b = rate_row(report, paths[1].0, next(), REQS, &[Base::Vs(d, "direct")]);
    let a = rate_row(
        report,
        paths[2].0,
        next(),
        REQS,
        &[Base::Vs(b, "no sandbox"), Base::Vs(d, "direct")],
    );
    rate_row(
        report,
        paths[3].0,
        next(),
        REQS,
        &[Base::Vs(a, "1 sandbox"), Base::Vs(d, "direct")],
    );
    let (t1, tn) = (one.1, many.1);
    report.push(Row {
        label: "proxy start, 1 sandbox".to_owned(),
        value: format!("{:.1} ms", t1.as_secs_f64() * 1e3),
        p50: String::new(),
        p99: String::new(),
        note: "(baseline; parse_str + App::build: CA generation, leaf prewarm)".to_owned(),
    });
    report.push(Row {
        label: format!("proxy start, {n} sandboxes"),
        value: format!("{:.1} ms", tn.as_secs_f64() * 1e3),
        p50: String::new(),
        p99: String::new(),
        note: format!(
            "({:.2}x 1 sandbox)",
            tn.as_secs_f64() / t1.as_secs_f64().max(f64::MIN_POSITIVE)
        ),
    });
    one.0.shutdown().await;
    many.0.shutdown().await;
}
