//! The `policy` rows: what identifying a sandbox and judging one question costs with many
//! sandboxes, each with a profile of its own, against one sandbox with one profile of the same
//! size, in the same run. Pure CPU on one thread; nothing here opens a socket.
//!
//! `Policy::evaluate` cannot be called from outside egress-edge (its module is private, and
//! `Scheme` cannot be named), so one call here is what the proxy runs for a CONNECT and a
//! bumped request, through the public entry points that reach the same code:
//! `Registry::by_source(ip)`, then `Policy::same_rule_for(who, host, port, expected)` —
//! `Host::parse` + `decide(who, host, port, Scheme::Connect)` + a rule comparison, as for
//! every bumped request's Host — then, when the destination is bumped,
//! `Decision::request(method, target)` — the request half of `evaluate`. `expected` is the
//! decision for that question, computed once before timing (with `RuleSet::resolvable`) and
//! checked against `same_rule_for` for every question.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use egress_edge::config::{Config, parse_str};
use egress_edge::net::host::Host;
use egress_edge::state::sandboxes::{Registry, Sandbox};

use crate::stats::pct;
use crate::tenants::{self, Dest, Lookup, RULES, Rng};
use crate::{Report, Row};

/// Questions generated per table; calls pick from them at random.
const CASES: usize = 16_384;
/// Calls per batch of the untimed pass: short (some 0.1 ms), so few batches hold a preemption.
const BATCH: usize = 100;
/// Each round is cut into this many slices, every row running once per slice, first one side
/// first and then the other, so load that comes and goes hits both sides alike.
const SLICES: usize = 10;

/// A parsed config and its sandbox registry, and what loading them took.
struct Loaded {
    config: Config,
    registry: Registry,
    yaml_len: usize,
    parse: Duration,
    registry_load: Duration,
}

fn config_text(dir: &Path, sandboxes: usize) -> String {
    format!(
        "state_dir: {}\ndefault_rung: deny\n{}",
        crate::proxy::yaml_path(dir),
        tenants::tenants_yaml(0, sandboxes, "", "")
    )
}

fn load(yaml: &str, dir: &Path) -> Result<Loaded> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let t0 = Instant::now();
    let config = parse_str(yaml, "bench-policy").context("parsing the generated config")?;
    let parse = t0.elapsed();
    let t1 = Instant::now();
    let registry = Registry::load(&config).context("Registry::load")?;
    let registry_load = t1.elapsed();
    Ok(Loaded {
        config,
        registry,
        yaml_len: yaml.len(),
        parse,
        registry_load,
    })
}

/// One question, its sandbox's address and the decision it gets.
struct Case<D> {
    ip: IpAddr,
    lookup: Lookup,
    bump: bool,
    expected: D,
}

/// [`CASES`] questions, each from a sandbox drawn from `0..sandboxes`; `expected` gives the
/// decision for sandbox `i`'s question and whether it bumps.
fn cases<D>(
    profiles: &[Vec<Dest>],
    seed: u64,
    expected: impl Fn(usize, &Lookup) -> Result<(D, bool)>,
) -> Result<Vec<Case<D>>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(CASES);
    for _ in 0..CASES {
        let i = rng.below(profiles.len());
        let lookup = tenants::lookup(&profiles[i], &mut rng);
        let (d, bump) = expected(i, &lookup)?;
        out.push(Case {
            ip: tenants::source(i),
            lookup,
            bump,
            expected: d,
        });
    }
    Ok(out)
}

/// Gives a closure over a [`Loaded`] one lifetime for all its calls, so the closure it returns
/// may borrow from it.
fn on_loaded<'a, C, F: Fn(&'a Loaded) -> C>(f: F) -> F {
    f
}

/// Samples of one row, pooled over rounds.
#[derive(Debug, Default)]
struct Timed {
    /// Per-call nanoseconds, each between two `Instant::now()`.
    samples: Vec<u32>,
    /// Mean nanoseconds per call of each [`BATCH`] of the untimed pass.
    batches: Vec<f64>,
}

impl Timed {
    /// The median of the batch means: a mean free of clock reads that a few batches
    /// preempted by another process on a shared machine do not move.
    fn mean_ns(&self) -> f64 {
        let mut b = self.batches.clone();
        b.sort_unstable_by(f64::total_cmp);
        b.get(b.len() / 2).copied().unwrap_or_default()
    }
}

/// `calls` calls of `f` on questions drawn from `cases` after `calls / 10` unmeasured: once
/// timing each call (for p50/p99), once timing only batches of [`BATCH`] calls (for the mean,
/// free of the clock reads). Returns how many calls said true, as a check.
fn run<C>(cases: &[C], calls: usize, seed: u64, f: &impl Fn(&C) -> bool, t: &mut Timed) -> u64 {
    let mut rng = Rng::new(seed);
    let mut yes = 0u64;
    for _ in 0..calls / 10 {
        yes += u64::from(black_box(f(&cases[rng.below(cases.len())])));
    }
    t.samples.reserve(calls);
    for _ in 0..calls {
        let c = &cases[rng.below(cases.len())];
        let t0 = Instant::now();
        let r = black_box(f(black_box(c)));
        let ns = t0.elapsed().as_nanos();
        t.samples.push(u32::try_from(ns).unwrap_or(u32::MAX));
        yes += u64::from(r);
    }
    let mut left = calls;
    while left > 0 {
        let n = left.min(BATCH);
        let t0 = Instant::now();
        for _ in 0..n {
            yes += u64::from(black_box(f(black_box(&cases[rng.below(cases.len())]))));
        }
        t.batches.push(t0.elapsed().as_secs_f64() * 1e9 / n as f64);
        left -= n;
    }
    yes
}

/// What the question table holds, for the mix row.
#[derive(Debug, Default)]
struct Mix {
    default_rung: usize,
    deny_rules: usize,
    passthrough_rules: usize,
    bump: usize,
    bump_allowed: usize,
    bump_refused: usize,
    bump_would_deny: usize,
}

/// All figures of the section.
#[derive(Debug)]
struct Figures {
    small: (usize, Duration, Duration),
    big: (usize, Duration, Duration),
    /// `[1 sandbox, many]` each.
    id: [Timed; 2],
    parse: [Timed; 2],
    decision: [Timed; 2],
    mix: Mix,
}

fn measure(sandboxes: usize, calls: usize, rounds: usize, dir: &Path) -> Result<Figures> {
    let small_yaml = config_text(&dir.join("one"), 1);
    let big_yaml = config_text(&dir.join("many"), sandboxes);
    // Loads interleaved, best of `rounds`; the last ones are kept.
    let best = |yaml: &str, sub: &str, slot: &mut Option<(Duration, Duration)>| {
        let l = load(yaml, &dir.join(sub))?;
        let (p, r) = slot.get_or_insert((l.parse, l.registry_load));
        *p = (*p).min(l.parse);
        *r = (*r).min(l.registry_load);
        Ok::<_, anyhow::Error>(l)
    };
    let (mut sb, mut bb) = (None, None);
    let mut small = best(&small_yaml, "one", &mut sb)?;
    eprintln!("bench: loading {sandboxes} sandboxes × {RULES} rules (round 1/{rounds})");
    let mut big = best(&big_yaml, "many", &mut bb)?;
    for round in 2..=rounds {
        eprintln!("bench: loading {sandboxes} sandboxes × {RULES} rules (round {round}/{rounds})");
        small = best(&small_yaml, "one", &mut sb)?;
        big = best(&big_yaml, "many", &mut bb)?;
    }
    let (sb, bb) = (
        sb.ok_or_else(|| anyhow!("not loaded"))?,
        bb.ok_or_else(|| anyhow!("not loaded"))?,
    );
    if big.registry.len() != sandboxes || small.registry.len() != 1 {
        bail!(
            "registries hold {} and {} sandboxes, expected {sandboxes} and 1",
            big.registry.len(),
            small.registry.len()
        );
    }

    let profiles: Vec<Vec<Dest>> = (0..sandboxes).map(tenants::destinations).collect();
    // The decision each question gets, from the registry and policy of `l`.
    let expect = on_loaded(|l| {
        let policy = &l.config.policy;
        let registry = &l.registry;
        move |i: usize, q: &Lookup| -> Result<_> {
            let s = registry
                .by_source(tenants::source(i))
                .ok_or_else(|| anyhow!("no sandbox for {}", tenants::source(i)))?;
            if *s.profile != *tenants::profile_name(i) {
                bail!("{} is sandbox {} of profile {}", s.id, i, s.profile);
            }
            let host = Host::parse(&q.host).with_context(|| q.host.clone())?;
            let d = match policy.rules_for(Some(s.who())).resolvable(&host) {
                Ok(d) | Err(d) => d,
            };
            let bump = d.rung.as_str() == "bump";
            Ok((d, bump))
        }
    });
    let big_cases = cases(&profiles, 1, expect(&big))?;
    let small_cases = cases(&profiles[..1], 1, expect(&small))?;

    // The timed operation, and the check that `expected` is what `decide` says.
    let judge = on_loaded(|l| {
        let policy = &l.config.policy;
        let registry = &l.registry;
        move |c: &Case<_>| {
            let s = registry.by_source(c.ip);
            let who = s.as_deref().map(Sandbox::who);
            let same = policy
                .same_rule_for(who, &c.lookup.host, c.lookup.port, &c.expected)
                .is_ok();
            if c.bump {
                black_box(c.expected.request(c.lookup.method, c.lookup.target));
            }
            same
        }
    });
    let judge_big = judge(&big);
    let judge_small = judge(&small);
    for (name, table, f) in [
        ("many", &big_cases, &judge_big),
        ("one", &small_cases, &judge_small),
    ] {
        if let Some(c) = table.iter().find(|c| !f(c)) {
            bail!(
                "{name}: {}:{} from {} is not decided as precomputed",
                c.lookup.host,
                c.lookup.port,
                c.ip
            );
        }
    }
    let mut mix = Mix::default();
    for c in &big_cases {
        let d = &c.expected;
        if c.bump {
            mix.bump += 1;
            let v = format!("{:?}", d.request(c.lookup.method, c.lookup.target));
            if v.starts_with("Allow") {
                mix.bump_allowed += 1;
            } else if v.starts_with("WouldDeny") {
                mix.bump_would_deny += 1;
            } else {
                mix.bump_refused += 1;
            }
        } else if d.rule.is_none() {
            mix.default_rung += 1;
        } else if d.rung.as_str() == "deny" || d.would_deny {
            mix.deny_rules += 1;
        } else {
            mix.passthrough_rules += 1;
        }
    }

    let identify = on_loaded(|l| {
        let registry = &l.registry;
        move |c: &Case<_>| registry.by_source(c.ip).is_some()
    });
    let id_big_f = identify(&big);
    let id_small_f = identify(&small);
    let parse = |c: &Case<_>| Host::parse(&c.lookup.host).is_ok();
    let slices = rounds * SLICES;
    let per_slice = calls.div_ceil(slices);
    // [what][side]: what 0 by_source, 1 Host::parse, 2 decision; side 0 one sandbox, 1 many.
    let mut t: [[Timed; 2]; 3] = Default::default();
    for slice in 0..slices {
        if slice % SLICES == 0 {
            eprintln!(
                "bench: running policy decision, 1 and {sandboxes} sandboxes (round {}/{rounds})",
                slice / SLICES + 1
            );
        }
        let seed = 2 + slice as u64;
        let mut order: Vec<(usize, usize)> = (0..3).flat_map(|w| [(w, 0), (w, 1)]).collect();
        // Alternate which goes first, so drift within a round hits both sides alike.
        if slice % 2 == 1 {
            order.reverse();
        }
        let mut yes = 0;
        for &(what, side) in &order {
            let table = if side == 0 { &small_cases } else { &big_cases };
            let slot = &mut t[what][side];
            yes += match what {
                0 => {
                    let f = if side == 0 { &id_small_f } else { &id_big_f };
                    run(table, per_slice, seed, f, slot)
                }
                1 => run(table, per_slice, seed, &parse, slot),
                _ => {
                    let f = if side == 0 { &judge_small } else { &judge_big };
                    run(table, per_slice, seed, f, slot)
                }
            };
        }
        let want = order.len() as u64 * (2 * per_slice + per_slice / 10) as u64;
        if yes != want {
            bail!(
                "{} of {want} calls did not identify, parse or decide as expected",
                want - yes
            );
        }
    }
    for t in t.iter_mut().flatten() {
        t.samples.sort_unstable();
    }
    let [id, parse, decision] = t;
    Ok(Figures {
        small: (small.yaml_len, sb.0, sb.1),
        big: (big.yaml_len, bb.0, bb.1),
        id,
        parse,
        decision,
        mix,
    })
}

/// `312 ns` / `1.25 µs` / `3.40 ms` / `1.95 s`.
fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn fmt_dur(d: Duration) -> String {
    fmt_ns(d.as_secs_f64() * 1e9)
}

fn fmt_bytes(n: usize) -> String {
    if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    }
}

fn pct_ns(t: &Timed, p: f64) -> f64 {
    pct(&t.samples, p).map(f64::from).unwrap_or_default()
}

fn x(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".to_owned()
    }
}

/// The `policy` section.
pub async fn section(
    report: &mut Report,
    sandboxes: usize,
    calls: usize,
    rounds: usize,
    dir: PathBuf,
) {
    report.section(format!(
        "policy decision, one thread, no I/O: {sandboxes} sandboxes with a {RULES}-rule profile each vs \
         1 sandbox with one; a call is Registry::by_source + Policy::same_rule_for (Host::parse + \
         decide, CONNECT) + Decision::request when bumped, on a random sandbox's question; \
         {calls} calls per row (mean: median of {BATCH}-call batch means, untimed; p50/p99: each call timed)"
    ));
    report.tag = Some("policy section");
    eprintln!("bench: running policy decision setup ({sandboxes} sandboxes)");
    let r = tokio::task::spawn_blocking(move || measure(sandboxes, calls, rounds, &dir))
        .await
        .map_err(|e| anyhow!("policy task: {e}"))
        .and_then(|r| r);
    let f = match r {
        Ok(f) => f,
        Err(e) => {
            report.fail("policy decision", &e);
            return;
        }
    };
    let one = "1 sandbox";
    let many = format!("{sandboxes} sandboxes");
    let (sy, sp, sr) = f.small;
    let (by, bp, br) = f.big;
    report.push(Row {
        label: format!("config load, 1 × {RULES} rules"),
        value: fmt_dur(sp),
        p50: String::new(),
        p99: String::new(),
        note: format!(
            "(baseline; parse_str of {}, best of {rounds}; Registry::load {})",
            fmt_bytes(sy),
            fmt_dur(sr)
        ),
    });
    report.push(Row {
        label: format!("config load, {sandboxes} × {RULES} rules"),
        value: fmt_dur(bp),
        p50: String::new(),
        p99: String::new(),
        note: format!(
            "({} 1 × {RULES}; parse_str of {}, best of {rounds}; Registry::load {}, {} 1)",
            x(bp.as_secs_f64(), sp.as_secs_f64()),
            fmt_bytes(by),
            fmt_dur(br),
            x(br.as_secs_f64(), sr.as_secs_f64()),
        ),
    });
    let [id1, idn] = &f.id;
    let [parse1, parsen] = &f.parse;
    let [dec1, decn] = &f.decision;
    let rows = [
        (format!("by_source, {one}"), id1, None),
        (format!("by_source, {many}"), idn, Some(id1)),
        (format!("Host::parse, {one}'s questions"), parse1, None),
        (
            format!("Host::parse, {many}' questions"),
            parsen,
            Some(parse1),
        ),
        (format!("decision, {one} × {RULES} rules"), dec1, None),
        (
            format!("decision, {many} × {RULES} rules"),
            decn,
            Some(dec1),
        ),
    ];
    for (label, t, base) in rows {
        let note = match base {
            None => format!(
                "(baseline; {:.2} M calls/s)",
                1e3 / t.mean_ns().max(f64::MIN_POSITIVE)
            ),
            Some(b) => format!(
                "({} {one} mean, {} p50, {} p99; above 1 = slower)",
                x(t.mean_ns(), b.mean_ns()),
                x(pct_ns(t, 50.0), pct_ns(b, 50.0)),
                x(pct_ns(t, 99.0), pct_ns(b, 99.0)),
            ),
        };
        report.push(Row {
            label,
            value: format!("mean {}", fmt_ns(t.mean_ns())),
            p50: format!("p50 {:>8}", fmt_ns(pct_ns(t, 50.0))),
            p99: format!("p99 {:>8}", fmt_ns(pct_ns(t, 99.0))),
            note,
        });
    }
    // The part that depends on the policy: decision means less Host::parse means.
    let (rest1, restn) = (
        dec1.mean_ns() - parse1.mean_ns(),
        decn.mean_ns() - parsen.mean_ns(),
    );
    report.push(Row {
        label: format!("decision less Host::parse, {many}"),
        value: format!("mean {}", fmt_ns(restn)),
        p50: String::new(),
        p99: String::new(),
        note: format!(
            "({} {one}, whose mean is {}; differences of the means above)",
            x(restn, rest1),
            fmt_ns(rest1)
        ),
    });
    let m = &f.mix;
    let share = |n: usize| format!("{:.0}%", 100.0 * n as f64 / CASES as f64);
    let of_bump = |n: usize| format!("{:.0}%", 100.0 * n as f64 / m.bump.max(1) as f64);
    report.push(Row {
        label: "questions".to_owned(),
        value: format!("{CASES}"),
        p50: String::new(),
        p99: String::new(),
        note: format!(
            "(default rung {}, passthrough rule {}, deny/report rule {}, bump {} — of which \
             request allowed {}, refused {}, would-deny {})",
            share(m.default_rung),
            share(m.passthrough_rules),
            share(m.deny_rules),
            share(m.bump),
            of_bump(m.bump_allowed),
            of_bump(m.bump_refused),
            of_bump(m.bump_would_deny),
        ),
    });
}
