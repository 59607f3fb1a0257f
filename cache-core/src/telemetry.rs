//! Prometheus metrics through the `metrics` facade.
//!
//! The request path only bumps in-process striped counters; a background
//! task copies them into the facade once a second. A facade call per request
//! (a registry lookup keyed by name and labels) would cost more than the L1
//! read it counts. The host installs whichever exporter it likes (the demos
//! use `metrics-exporter-prometheus`); without one, the facade is a no-op.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `apikey_cache_requests_total` | counter | `outcome` |
//! | `apikey_cache_hits_total` | counter | `tier` = `l1`, `l2` |
//! | `apikey_cache_misses_total` | counter | `tier` |
//! | `apikey_cache_store_queries_total` | counter | `result` = `ok`, `error` |
//! | `apikey_cache_lookup_duration_seconds` | histogram | (loads past L1 only: an L1 hit is a few hundred nanoseconds, and timing it would cost a third of that) |
//! | `apikey_cache_entries` | gauge | `tier` = `l1` |
//! | `apikey_cache_l2_errors_total` | counter | |
//! | `apikey_cache_breaker_state` | gauge | 0 closed, 1 open, 2 half-open |
//! | `apikey_cache_mode` | gauge | 0 normal, 1 database_only |
//! | `apikey_cache_invalidations_total` | counter | `source` = `local`, `remote` |
//! | `apikey_cache_stale_served_total` | counter | |
//! | `apikey_cache_resyncs_total` | counter | |
//! | `apikey_cache_usage_flush_errors_total` | counter | |
//! | `apikey_cache_usage_pending_increments` | gauge | |

use std::sync::Weak;
use std::time::Duration;

use metrics::{counter, gauge};

use crate::cache::Inner;
use crate::{ApiKeyCache, Mode, Outcome};

/// How often the counters are copied into the facade.
const EVERY: Duration = Duration::from_secs(1);

impl ApiKeyCache {
    /// Copies the current counters and gauges into the `metrics` facade.
    /// Called once a second by a background task; call it yourself before a
    /// final scrape if you need the very latest values.
    pub fn publish_metrics(&self) {
        let s = self.stats();
        for (label, value) in Outcome::LABELS.iter().zip(s.outcomes) {
            counter!("apikey_cache_requests_total", "outcome" => *label).absolute(value);
        }
        counter!("apikey_cache_hits_total", "tier" => "l1").absolute(s.l1_hits);
        counter!("apikey_cache_hits_total", "tier" => "l2").absolute(s.l2_hits);
        counter!("apikey_cache_misses_total", "tier" => "l1").absolute(s.l1_misses);
        counter!("apikey_cache_misses_total", "tier" => "l2").absolute(s.l2_misses);
        counter!("apikey_cache_store_queries_total", "result" => "ok")
            .absolute(s.store_queries.saturating_sub(s.store_errors));
        counter!("apikey_cache_store_queries_total", "result" => "error").absolute(s.store_errors);
        gauge!("apikey_cache_entries", "tier" => "l1").set(s.l1_entries as f64);
        counter!("apikey_cache_l2_errors_total").absolute(s.l2_errors);
        if let Some(breaker) = s.l2_breaker {
            gauge!("apikey_cache_breaker_state").set(breaker.gauge());
        }
        gauge!("apikey_cache_mode").set(match s.mode {
            Mode::Normal => 0.0,
            Mode::DatabaseOnly => 1.0,
        });
        counter!("apikey_cache_invalidations_total", "source" => "local")
            .absolute(s.invalidations_local);
        counter!("apikey_cache_invalidations_total", "source" => "remote")
            .absolute(s.invalidations_remote);
        counter!("apikey_cache_stale_served_total").absolute(s.stale_served);
        counter!("apikey_cache_resyncs_total").absolute(s.resyncs);
        counter!("apikey_cache_usage_flush_errors_total").absolute(s.usage_flush_errors);
        gauge!("apikey_cache_usage_pending_increments").set(s.usage_pending_increments as f64);
    }
}

/// Publishes once a second for as long as the cache lives.
pub(crate) async fn publisher(cache: Weak<Inner>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(inner) = cache.upgrade() else { return };
        ApiKeyCache { inner }.publish_metrics();
    }
}
