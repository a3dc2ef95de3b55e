//! Leaf cache: single-flight minting under concurrency, hits afterwards, refusals pass through.

use std::sync::Arc;
use std::time::Duration;

use egress_ca::{CaError, CaOptions, DeploymentCa, LeafCache, PermittedName};

use crate::common::{verifier_for, verify_leaf};

fn cache_with(opts: &CaOptions) -> Arc<LeafCache> {
    let ca = Arc::new(DeploymentCa::generate(opts).unwrap());
    Arc::new(LeafCache::new(ca, Duration::from_secs(24 * 3600), 100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_mint_once() {
    let cache = cache_with(&CaOptions::new("cache"));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("api.example.com").await.unwrap() })
        })
        .collect();
    let mut leaves = Vec::new();
    for t in tasks {
        leaves.push(t.await.unwrap());
    }
    assert!(leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])));
    let s = cache.stats().snapshot();
    assert_eq!(s.mints, 1, "{s:?}");
    assert_eq!(s.mint_failures, 0);
    assert_eq!(s.hits + s.misses, 50);
    assert!(s.mint_nanos_total > 0 && s.last_mint_nanos > 0);

    let again = cache.get("API.Example.COM.").await.unwrap();
    assert!(
        Arc::ptr_eq(&again, &leaves[0]),
        "normalized names share one leaf"
    );
    let after = cache.stats().snapshot();
    assert_eq!(after.hits, s.hits + 1);
    assert_eq!(after.mints, 1);

    verify_leaf(
        &verifier_for(&cache.ca().cert_der()),
        &again,
        "api.example.com",
    )
    .unwrap();
}

#[tokio::test]
async fn refusals_are_not_cached_and_keep_their_variant() {
    let names: Vec<PermittedName> = vec!["allowed.test".parse().unwrap()];
    let cache = cache_with(&CaOptions::new("cache").with_permitted(names));
    for _ in 0..2 {
        let err = cache.get("other.test").await.unwrap_err();
        assert!(matches!(err, CaError::NameNotPermitted { .. }), "{err:?}");
    }
    let err = cache.get("*.allowed.test").await.unwrap_err();
    assert!(matches!(err, CaError::InvalidLeafName { .. }), "{err:?}");
    assert_eq!(cache.stats().snapshot().mints, 0);
}

#[tokio::test]
async fn prewarm_fills_the_cache() {
    let cache = cache_with(&CaOptions::new("cache"));
    cache
        .prewarm(&[
            "a.example.com".to_owned(),
            "b.example.com".to_owned(),
            "*.bad".to_owned(),
        ])
        .await;
    assert_eq!(cache.stats().snapshot().mints, 2);
    cache.get("a.example.com").await.unwrap();
    let s = cache.stats().snapshot();
    assert_eq!((s.mints, s.hits), (2, 1));
    assert!(cache.cache_ttl() < Duration::from_secs(24 * 3600));
}
