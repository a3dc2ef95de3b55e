//! Per-worker recording and merged phase results.

use std::time::{Duration, Instant};

/// When a phase's measured window opens and closes. Operations that start during the warm-up
/// run but are not recorded.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, secs: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + secs,
        }
    }
}

/// Saturating microseconds.
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One worker's record.
#[derive(Debug)]
pub struct Rec {
    win: Window,
    pub ok: u64,
    pub errors: u64,
    pub first_err: Option<String>,
    /// Per-operation latency, µs.
    pub lat: Vec<u32>,
    /// Per-operation handshake latency (TCP connect → TLS established), µs, when measured.
    pub hs: Vec<u32>,
    pub bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Rec {
    pub fn new(win: Window) -> Rec {
        Rec {
            win,
            ok: 0,
            errors: 0,
            first_err: None,
            lat: Vec::new(),
            hs: Vec::new(),
            bytes: 0,
            first: None,
            last: None,
        }
    }

    /// Whether to start another operation at `now`. With `at_least_one`, keeps going past the
    /// end (bounded) until one operation has been recorded.
    pub fn go_on(&self, now: Instant, at_least_one: bool) -> bool {
        if now < self.win.end {
            return true;
        }
        at_least_one && self.ok == 0 && now < self.win.end + Duration::from_secs(30)
    }

    pub fn ok(&mut self, t0: Instant, hs: Option<Duration>, bytes: usize) {
        if t0 < self.win.start {
            return;
        }
        let t1 = Instant::now();
        self.ok += 1;
        self.lat.push(micros(t1 - t0));
        if let Some(hs) = hs {
            self.hs.push(micros(hs));
        }
        self.bytes += bytes as u64;
        self.first.get_or_insert(t0);
        self.last = Some(t1);
    }

    pub fn err(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_err.is_none() {
            self.first_err = Some(format!("{e:#}"));
        }
    }
}

/// Merged results of all workers of a phase.
#[derive(Debug)]
pub struct PhaseResult {
    pub ok: u64,
    pub errors: u64,
    pub first_err: Option<String>,
    pub lat: Vec<u32>,
    pub hs: Vec<u32>,
    pub bytes: u64,
    /// From the first recorded operation's start to the last one's end.
    pub elapsed: Duration,
}

impl PhaseResult {
    pub fn merge(recs: Vec<Rec>) -> PhaseResult {
        let mut r = PhaseResult {
            ok: 0,
            errors: 0,
            first_err: None,
            lat: Vec::new(),
            hs: Vec::new(),
            bytes: 0,
            elapsed: Duration::ZERO,
        };
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        for rec in recs {
            r.ok += rec.ok;
            r.errors += rec.errors;
            if r.first_err.is_none() {
                r.first_err = rec.first_err;
            }
            r.lat.extend(rec.lat);
            r.hs.extend(rec.hs);
            r.bytes += rec.bytes;
            if let Some(f) = rec.first {
                first = Some(first.map_or(f, |x| x.min(f)));
            }
            if let Some(l) = rec.last {
                last = Some(last.map_or(l, |x| x.max(l)));
            }
        }
        r.lat.sort_unstable();
        r.hs.sort_unstable();
        if let (Some(f), Some(l)) = (first, last) {
            r.elapsed = l.saturating_duration_since(f);
        }
        r
    }

    /// Two measurements of the same thing (e.g. interleaved rounds) as one: samples pooled,
    /// measured windows added.
    pub fn combine(mut self, other: PhaseResult) -> PhaseResult {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_err.is_none() {
            self.first_err = other.first_err;
        }
        self.lat.extend(other.lat);
        self.lat.sort_unstable();
        self.hs.extend(other.hs);
        self.hs.sort_unstable();
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self
    }

    /// Operations per second over the measured window.
    pub fn rate(&self) -> f64 {
        per_sec(self.ok as f64, self.elapsed)
    }

    /// Decimal MB/s over the measured window.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e6, self.elapsed)
    }
}

pub fn per_sec(x: f64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { x / s } else { 0.0 }
}

/// Nearest-rank percentile of sorted samples, µs.
pub fn pct(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// `850 µs` / `12.3 ms`.
pub fn fmt_us(us: Option<u32>) -> String {
    match us {
        None => "-".to_owned(),
        Some(us) if us < 1000 => format!("{us} µs"),
        Some(us) if us < 100_000 => format!("{:.2} ms", f64::from(us) / 1000.0),
        Some(us) => format!("{:.0} ms", f64::from(us) / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(pct(&v, 50.0), Some(50));
        assert_eq!(pct(&v, 99.0), Some(99));
        assert_eq!(pct(&v, 100.0), Some(100));
        assert_eq!(pct(&[7], 99.0), Some(7));
        assert_eq!(pct(&[], 50.0), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(Some(850)), "850 µs");
        assert_eq!(fmt_us(Some(12_345)), "12.35 ms");
        assert_eq!(fmt_us(None), "-");
    }
}
