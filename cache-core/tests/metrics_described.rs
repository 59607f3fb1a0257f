//! `telemetry::METRICS` is exactly what the cache emits, and every metric
//! reaches the recorder described as listed (HELP text, unit, type).
//!
//! A test binary of its own: it installs a global recorder (the histogram
//! is recorded on a spawned task, out of reach of a thread-local one), and
//! the descriptions are sent once per process, when the first cache is
//! built.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use apikey_cache::telemetry::{self, MetricKind, METRICS};
use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, RequiredScopes};
use metrics_util::debugging::DebuggingRecorder;
use support::redis::RedisServer;

fn kind(k: metrics_util::MetricKind) -> MetricKind {
    match k {
        metrics_util::MetricKind::Counter => MetricKind::Counter,
        metrics_util::MetricKind::Gauge => MetricKind::Gauge,
        metrics_util::MetricKind::Histogram => MetricKind::Histogram,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_what_is_emitted_and_described() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // With Redis, so the breaker gauge exists; a miss, so the histogram does.
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let config = CacheConfig::builder()
        .redis_url(redis.url())
        .build()
        .unwrap();
    let cache = ApiKeyCache::new(config, store.clone()).unwrap();
    let key = store
        .create_key(cache.hasher(), NewKey::new("acme", ["x"]))
        .await
        .unwrap();
    let none = RequiredScopes::none();
    assert!(cache.verify_key(&key.plaintext, &none).await.is_valid());
    cache.verify_key("ak_unknown_key_0000", &none).await;
    cache.publish_metrics();

    // name -> (kind, unit, description, label name -> values seen)
    type Seen = BTreeMap<&'static str, BTreeSet<String>>;
    let mut emitted: BTreeMap<String, (MetricKind, Option<telemetry::Unit>, String, Seen)> =
        BTreeMap::new();
    for (ck, unit, desc, _) in snapshotter.snapshot().into_vec() {
        let name = ck.key().name().to_owned();
        let entry = emitted.entry(name.clone()).or_insert_with(|| {
            (
                kind(ck.kind()),
                unit,
                desc.map(|d| d.to_string()).unwrap_or_default(),
                Seen::new(),
            )
        });
        assert_eq!(entry.0, kind(ck.kind()), "{name} emitted as two types");
        let def = telemetry::metric(&name).unwrap_or_else(|| panic!("{name} is not in METRICS"));
        for l in ck.key().labels() {
            let declared = def
                .labels
                .iter()
                .find(|d| d.name == l.key())
                .unwrap_or_else(|| panic!("{name}: label {} not declared", l.key()));
            assert!(
                declared.values.contains(&l.value()),
                "{name}: {}={} not declared",
                l.key(),
                l.value()
            );
            entry
                .3
                .entry(declared.name)
                .or_default()
                .insert(l.value().to_owned());
        }
    }

    let listed: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
    assert_eq!(listed.len(), METRICS.len(), "a name listed twice");
    let emitted_names: BTreeSet<&str> = emitted.keys().map(String::as_str).collect();
    assert_eq!(emitted_names, listed, "emitted vs listed");

    for m in METRICS {
        let (k, unit, desc, labels) = &emitted[m.name];
        assert_eq!(*k, m.kind, "{}", m.name);
        // The recorder keys descriptions by type and name: a description
        // under another type would not be found here.
        assert_eq!(desc, m.help, "{}: described once, as listed", m.name);
        assert_eq!(*unit, m.unit, "{}", m.name);
        // publish_metrics sets every declared label value, zero or not
        // (all outcomes, both tiers): a series that appears only once it
        // is non-zero breaks `rate()` in alerts.
        for l in m.labels {
            let declared: BTreeSet<String> = l.values.iter().map(|v| (*v).to_owned()).collect();
            assert_eq!(labels.get(l.name), Some(&declared), "{}", m.name);
        }
    }

    // The design's names, by name: a rename breaks dashboards.
    for name in [
        "apikey_cache_requests_total",
        "apikey_cache_hits_total",
        "apikey_cache_misses_total",
        "apikey_cache_store_queries_total",
        "apikey_cache_lookup_duration_seconds",
        "apikey_cache_entries",
        "apikey_cache_l2_errors_total",
        "apikey_cache_breaker_state",
        "apikey_cache_mode",
        "apikey_cache_invalidations_total",
        "apikey_cache_usage_flush_errors_total",
    ] {
        assert!(listed.contains(name), "{name}");
    }
}
