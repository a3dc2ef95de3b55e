#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The handle scan is linear in its input: adversarial inputs of 64 KiB (a large header) and
//! 1 MiB stay under generous absolute bounds even in a debug build, and 4× the input costs
//! about 4× the time, not 16×. (The quadratic rescan this replaced took ~0.7 s on a 60 KB
//! header.) Run with `--nocapture` to see the figures.
//!
//! One test in its own binary, so no other test competes for the CPU while it measures; each
//! figure is the fastest of a few runs, the one least disturbed by the rest of the machine.

use std::time::{Duration, Instant};

use egress_handle::{redact_in, scan};

const KIB: usize = 1024;
/// Bound for one scan of 64 KiB, debug build included.
const HEADER_BOUND: Duration = Duration::from_millis(50);
/// Bound for one scan of 1 MiB, debug build included.
const MIB_BOUND: Duration = Duration::from_millis(200);
/// Bound for 1 MiB where a candidate or credential starts every few bytes (some 50 000 to
/// 200 000 of them, each with its own decoded text), debug build included.
const MIB_BOUND_DENSE: Duration = Duration::from_millis(600);
/// Quadratic growth would make 4× the input cost 16×; linear costs ~4× (a bit more once the
/// data outgrows the caches). Allow for noise.
const MAX_RATIO: f64 = 10.0;
/// Below this, timer and scheduler noise dominate and the ratio means nothing.
const RATIO_FLOOR: Duration = Duration::from_millis(5);
/// Runs per figure (the fastest counts), and attempts per pattern: a pattern fails only if
/// every attempt breaks a bound, so a burst of load on the machine does not fail the test
/// while a quadratic scan (16× per 4×, every time) still does.
const RUNS: usize = 3;
const ATTEMPTS: usize = 3;

fn repeat_to(unit: &[u8], len: usize) -> Vec<u8> {
    unit.iter().copied().cycle().take(len).collect()
}

/// The fastest of a few runs, which is the least disturbed by the rest of the machine.
fn fastest(input: &[u8], work: fn(&[u8]) -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut found = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        found = std::hint::black_box(work(std::hint::black_box(input)));
        best = best.min(t.elapsed());
    }
    (best, found)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn scan_count(input: &[u8]) -> usize {
    scan(input).candidates().len()
}

fn redact_len(input: &[u8]) -> usize {
    redact_in(&String::from_utf8_lossy(input)).len()
}

/// Measures one pattern at 64 KiB, 256 KiB and 1 MiB; prints the figures; returns what broke.
fn measure(name: &str, unit: &[u8], work: fn(&[u8]) -> usize, mib_bound: Duration) -> Vec<String> {
    let header = repeat_to(unit, 64 * KIB);
    let quarter = repeat_to(unit, 256 * KIB);
    let full = repeat_to(unit, 1024 * KIB);
    let mut broken = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let (t_header, _) = fastest(&header, work);
        let (t_quarter, _) = fastest(&quarter, work);
        let (t_full, found) = fastest(&full, work);
        let ratio = t_full.as_secs_f64() / t_quarter.as_secs_f64().max(1e-9);
        eprintln!(
            "{name:<20} {:>9.2} {:>9.2} {:>9.2} {ratio:>6.2} {found:>10} {attempt:>3}",
            ms(t_header),
            ms(t_quarter),
            ms(t_full)
        );
        broken.clear();
        if t_header > HEADER_BOUND {
            broken.push(format!("{name}: 64 KiB took {t_header:?}"));
        }
        if t_full > mib_bound {
            broken.push(format!("{name}: 1 MiB took {t_full:?}"));
        }
        if t_quarter >= RATIO_FLOOR && ratio > MAX_RATIO {
            broken.push(format!("{name}: 4x the input took {ratio:.1}x the time"));
        }
        if broken.is_empty() {
            break;
        }
    }
    broken
}

#[test]
fn scan_is_linear_on_adversarial_inputs() {
    // (name, repeated unit, dense: a candidate or credential every few bytes)
    let units: &[(&str, &[u8], bool)] = &[
        ("eeh_ repeated", b"eeh_", false),
        ("eEh_ repeated", b"eEh_", false),
        ("no e at all", b"abcd fghi jklm 0123 ", false),
        ("eeh (no _)", b"eeh", false),
        ("_ alone", b"_", false),
        ("% alone", b"%", false),
        ("%41 (all decoded)", b"%41", false),
        ("glued xeeh_.", b"xeeh_.", false),
        ("basic + blank", b"basic ", false),
        ("eeh_ + space", b"eeh_ ", true),
        ("EEH_ + 0xff", b"EEH_\xff", true),
        ("%65eh_ + space", b"%65eh_ ", true),
        ("%2565eh_ + comma", b"%2565eh_,", true),
        ("Basic ZWVoXw== ", b"Basic ZWVoXw== ", true),
        ("Basic%20 ZWVoXw", b"Basic%20ZWVoXw%3D%3D ", true),
    ];
    eprintln!(
        "{:<20} {:>9} {:>9} {:>9} {:>6} {:>10} {:>3}",
        "pattern (scan)", "64KiB ms", "256KiB ms", "1MiB ms", "ratio", "found/1MiB", "try"
    );
    let mut failures = Vec::new();
    for (name, unit, dense) in units {
        let bound = if *dense { MIB_BOUND_DENSE } else { MIB_BOUND };
        failures.extend(measure(name, unit, scan_count, bound));
    }
    // Redaction of log text uses the same scan.
    let redacted: [(&str, &[u8]); 2] =
        [("redact eeh_x ", b"eeh_x "), ("redact %65eh_ ", b"%65eh_ ")];
    for (name, unit) in redacted {
        failures.extend(measure(name, unit, redact_len, MIB_BOUND_DENSE));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
