//! What the guest resolver told guests: name → addresses, kept a while past the TTL.
//!
//! The transparent listener accepts a connection's original destination when the proxy itself
//! resolves the named host to it, or when the guest resolver gave that address out for the
//! name (a name whose answers rotate between lookups would otherwise fail the binding). Only
//! addresses that passed the address policy when answered are recorded. This holds state; it
//! neither answers queries nor dials.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How many names are remembered at most; the oldest go first.
const CAPACITY: u64 = 100_000;

/// Names the guest resolver answered, each with the addresses it gave out.
#[derive(Debug, Clone)]
pub struct GuestAnswers {
    cache: moka::sync::Cache<String, Arc<[IpAddr]>>,
}

impl GuestAnswers {
    /// Answers are honoured for `keep` after they were given (clients cache past the TTL).
    pub fn new(keep: Duration) -> GuestAnswers {
        GuestAnswers {
            cache: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(keep)
                .build(),
        }
    }

    /// Records that `name` was answered with `ips` (added to what it was answered before).
    pub fn record(&self, name: &str, ips: &[IpAddr]) {
        if ips.is_empty() {
            return;
        }
        let mut all: Vec<IpAddr> = self
            .cache
            .get(name)
            .map(|old| old.to_vec())
            .unwrap_or_default();
        for ip in ips {
            if !all.contains(ip) {
                all.push(*ip);
            }
        }
        self.cache.insert(name.to_owned(), Arc::from(all));
    }

    /// Whether `ip` was given out for `name`.
    pub fn answered(&self, name: &str, ip: IpAddr) -> bool {
        self.cache.get(name).is_some_and(|ips| ips.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges_per_name() {
        let a = GuestAnswers::new(Duration::from_secs(60));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!a.answered("x.test", one));
        a.record("x.test", &[one]);
        a.record("x.test", &[two]);
        assert!(a.answered("x.test", one));
        assert!(a.answered("x.test", two));
        assert!(!a.answered("y.test", one));
    }
}
