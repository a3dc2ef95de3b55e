//! The process-wide bound on upstream connections kept for reuse (`upstream.max_pooled_total`).
//!
//! Every upstream connection, of every pooled client (plain, bump TLS, WebSocket, each client
//! certificate, and the clients of older snapshots still draining), counts here while it is
//! open. A connection opened while the count is already at the bound is still used for its
//! request, but is marked (poisoned, in hyper-util's terms) so the pool closes it afterwards
//! instead of keeping it idle: thousands of bumped names can no longer leave thousands of
//! idle upstream connections behind. The per-host bounds are the connector's; this module
//! neither dials nor waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared count of open upstream connections.
#[derive(Clone, Debug, Default)]
pub struct PoolBudget {
    open: Arc<AtomicUsize>,
}

impl PoolBudget {
    /// Upstream connections open now (busy, idle or being set up).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts one more open connection until the returned guard drops; the guard says whether
    /// the connection fits under `max` and may be pooled.
    pub fn admit(&self, max: usize) -> Counted {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        Counted {
            open: self.open.clone(),
            poolable: now <= max,
        }
    }
}

/// One open upstream connection's place in the count.
#[derive(Debug)]
pub struct Counted {
    open: Arc<AtomicUsize>,
    poolable: bool,
}

impl Counted {
    /// Whether the connection may be kept idle for reuse after its request.
    pub fn poolable(&self) -> bool {
        self.poolable
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_bound_are_not_poolable_and_the_count_follows_drops() {
        let budget = PoolBudget::default();
        let a = budget.admit(2);
        let b = budget.admit(2);
        let c = budget.admit(2);
        assert_eq!(
            (a.poolable(), b.poolable(), c.poolable(), budget.open()),
            (true, true, false, 3)
        );
        drop(a);
        drop(c);
        assert_eq!(budget.open(), 1);
        // Room again: the next one is kept.
        assert!(budget.admit(2).poolable());
        assert_eq!(budget.open(), 1);
        // A bound of 0 pools nothing.
        assert!(!budget.admit(0).poolable());
    }
}
