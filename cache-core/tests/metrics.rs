//! Metric names are part of the interface: dashboards are written against
//! them.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, RequiredScopes};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn design_names_and_labels() {
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    let key = store
        .create_key(cache.hasher(), NewKey::new("a", ["x"]))
        .await
        .unwrap();
    let none = RequiredScopes::none();
    for _ in 0..3 {
        assert!(cache.verify_key(&key.plaintext, &none).await.is_valid());
    }
    cache.verify_key("ak_nope", &none).await;
    cache.verify_key("bad key", &none).await;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || cache.publish_metrics());
    let snapshot = snapshotter.snapshot().into_hashmap();
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(k, _)| {
                let key = k.key();
                key.name() == name
                    && labels
                        .iter()
                        .all(|(l, v)| key.labels().any(|x| x.key() == *l && x.value() == *v))
            })
            .map(|(_, (_, _, v))| v)
    };
    assert_eq!(
        value("apikey_cache_requests_total", &[("outcome", "valid")]),
        Some(&DebugValue::Counter(3))
    );
    assert_eq!(
        value("apikey_cache_requests_total", &[("outcome", "unknown")]),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value("apikey_cache_requests_total", &[("outcome", "malformed")]),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value("apikey_cache_hits_total", &[("tier", "l1")]),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value("apikey_cache_misses_total", &[("tier", "l1")]),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value("apikey_cache_store_queries_total", &[("result", "ok")]),
        Some(&DebugValue::Counter(2))
    );
    for name in [
        "apikey_cache_entries",
        "apikey_cache_l2_errors_total",
        "apikey_cache_mode",
        "apikey_cache_invalidations_total",
    ] {
        assert!(value(name, &[]).is_some(), "{name} missing");
    }
    // No label carries a key.
    for k in snapshot.keys() {
        for label in k.key().labels() {
            assert!(!label.value().contains(&key.plaintext));
        }
    }
}
