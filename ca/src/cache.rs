//! A bounded, expiring cache of minted leaves, keyed by normalized name, with single-flight
//! minting and lock-free counters for metrics.
//!
//! It does not decide which names may be bumped (policy does, before asking) and it does not
//! export metrics itself; [`LeafCache::stats`] gives the numbers to whoever does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;
use rustls::sign::CertifiedKey;

use crate::ca::DeploymentCa;
use crate::error::CaError;
use crate::leaf::{self, normalize_name};

/// Default number of distinct names kept.
pub const DEFAULT_LEAF_CACHE_CAPACITY: u64 = 10_000;

/// Shortest cache lifetime worth having, when the leaf TTL allows it.
const MIN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Validity a cached leaf keeps at the latest moment it can still be handed out, for long TTLs.
const SERVE_MARGIN: Duration = Duration::from_secs(3600);

/// Leaf certificates per name, minted on first use.
pub struct LeafCache {
    ca: Arc<DeploymentCa>,
    leaf_ttl: Duration,
    cache_ttl: Duration,
    cache: Cache<String, Arc<CertifiedKey>>,
    stats: Arc<LeafCacheStats>,
}

impl LeafCache {
    /// A cache minting from `ca` leaves valid for `leaf_ttl`, holding at most `capacity` names.
    pub fn new(ca: Arc<DeploymentCa>, leaf_ttl: Duration, capacity: u64) -> Self {
        let cache_ttl = cache_ttl_for(leaf_ttl);
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(cache_ttl)
            .build();
        LeafCache {
            ca,
            leaf_ttl,
            cache_ttl,
            cache,
            stats: Arc::new(LeafCacheStats::default()),
        }
    }

    /// The leaf for `name` (DNS name or IP literal; normalized here), minting it if needed.
    ///
    /// Concurrent first requests for one name wait on a single mint.
    pub async fn get(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = normalize_name(name);
        if let Some(hit) = self.cache.get(name.as_str()).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Refusals (wildcard, outside the constraints) are answered before touching the cache,
        // so they come back as their own error variant instead of a shared one.
        leaf::leaf_san(&self.ca, &name)?;

        let init = async {
            // Minting is ~0.1–0.3 ms of CPU, once per name per cache lifetime. That is short
            // enough to run on the async worker: a spawn_blocking hop would cost a comparable
            // amount and add a thread handoff to every first handshake.
            let started = Instant::now();
            let result = leaf::mint_leaf(&self.ca, &name, self.leaf_ttl).map(Arc::new);
            self.stats.record_mint(started.elapsed(), result.is_ok());
            result
        };
        self.cache
            .try_get_with(name.clone(), init)
            .await
            .map_err(|shared| Arc::try_unwrap(shared).unwrap_or_else(CaError::Shared))
    }

    /// Mints leaves for `names` ahead of the first handshake; failures are logged, not returned,
    /// because the same failure will surface (and be refused) on the real request.
    pub async fn prewarm(&self, names: &[String]) {
        for name in names {
            if let Err(err) = self.get(name).await {
                tracing::warn!(name = %name, error = %err, "could not pre-mint a leaf certificate");
            }
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &LeafCacheStats {
        &self.stats
    }

    /// Approximate number of cached leaves.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// How long a leaf stays cached (derived from the leaf TTL).
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// The CA leaves are minted from.
    pub fn ca(&self) -> &Arc<DeploymentCa> {
        &self.ca
    }
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("ca", &self.ca.fingerprint_sha256())
            .field("leaf_ttl", &self.leaf_ttl)
            .field("cache_ttl", &self.cache_ttl)
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// A leaf is minted valid for `leaf_ttl` and then served from cache for up to the returned
/// duration, so the validity left when it is last handed out is `leaf_ttl - cache_ttl`. Half the
/// TTL (capped so at least an hour remains for long TTLs) keeps that comfortably positive, so a
/// client never receives a certificate about to expire mid-connection; the one-minute floor
/// stops very short TTLs from defeating the cache, and is itself capped at half the TTL.
pub fn cache_ttl_for(leaf_ttl: Duration) -> Duration {
    let half = leaf_ttl / 2;
    let preferred = std::cmp::min(half, leaf_ttl.saturating_sub(SERVE_MARGIN));
    let floor = std::cmp::min(MIN_CACHE_TTL, half);
    std::cmp::max(preferred, floor).max(Duration::from_millis(1))
}

/// Lock-free counters; read them with [`LeafCacheStats::snapshot`].
#[derive(Debug, Default)]
pub struct LeafCacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    mints: AtomicU64,
    mint_failures: AtomicU64,
    mint_nanos_total: AtomicU64,
    last_mint_nanos: AtomicU64,
}

/// A point-in-time copy of [`LeafCacheStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeafCacheStatsSnapshot {
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests that found no cached leaf (they mint, or wait for a concurrent mint).
    pub misses: u64,
    /// Successful mints.
    pub mints: u64,
    /// Failed mints.
    pub mint_failures: u64,
    /// Total time spent minting (successes and failures), nanoseconds.
    pub mint_nanos_total: u64,
    /// Duration of the most recent mint, nanoseconds.
    pub last_mint_nanos: u64,
}

impl LeafCacheStats {
    /// Current values.
    pub fn snapshot(&self) -> LeafCacheStatsSnapshot {
        LeafCacheStatsSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            mints: self.mints.load(Ordering::Relaxed),
            mint_failures: self.mint_failures.load(Ordering::Relaxed),
            mint_nanos_total: self.mint_nanos_total.load(Ordering::Relaxed),
            last_mint_nanos: self.last_mint_nanos.load(Ordering::Relaxed),
        }
    }

    fn record_mint(&self, took: Duration, ok: bool) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.mint_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        self.last_mint_nanos.store(nanos, Ordering::Relaxed);
        if ok {
            self.mints.fetch_add(1, Ordering::Relaxed);
        } else {
            self.mint_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ttl_stays_below_leaf_ttl() {
        let h = Duration::from_secs(3600);
        assert_eq!(cache_ttl_for(24 * h), 12 * h);
        assert_eq!(
            cache_ttl_for(90 * 60 * Duration::from_secs(1)),
            Duration::from_secs(30 * 60)
        );
        assert_eq!(
            cache_ttl_for(10 * Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            cache_ttl_for(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        for secs in [1u64, 59, 61, 3599, 3601, 7200, 86_400, 30 * 86_400] {
            let ttl = Duration::from_secs(secs);
            assert!(cache_ttl_for(ttl) < ttl, "{secs}");
        }
    }
}
