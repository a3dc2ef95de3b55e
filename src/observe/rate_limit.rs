//! Rate-limited log lines for events that come in bursts (a flood of guests the proxy sheds,
//! slowloris connections cut at the header timeout): one line per interval, carrying how many
//! were suppressed since the last one. The metrics count every event; this only bounds logs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimited {
    pub const fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written now, else `None`
    /// (and the event is counted as suppressed).
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_suppressed() {
        let r = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        let r2 = RateLimited::new(Duration::ZERO);
        assert_eq!(r2.check(), Some(0));
        assert_eq!(r2.check(), Some(0));
        let r3 = RateLimited::new(Duration::from_millis(1));
        assert_eq!(r3.check(), Some(0));
        assert_eq!(r3.check(), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(r3.check(), Some(1));
    }
}
