//! Prometheus metrics through the `metrics` facade: what the cache emits,
//! and its descriptions.
//!
//! The library owns no registry: the host installs whichever exporter it
//! likes (the demos use `metrics-exporter-prometheus`); without one, the
//! facade is a no-op. The request path only bumps in-process striped
//! counters; a background task copies them into the facade once a second
//! ([`ApiKeyCache::publish_metrics`]). A facade call per request (a registry
//! lookup keyed by name and labels) would cost more than the L1 read it
//! counts.
//!
//! The names are part of the interface (dashboards and alerts are written
//! against them); [`METRICS`] lists them with their type, unit, HELP text
//! and labels:
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `apikey_cache_requests_total` | counter | `outcome` = [`Outcome::LABELS`] |
//! | `apikey_cache_hits_total` | counter | `tier` = `l1`, `l2` |
//! | `apikey_cache_misses_total` | counter | `tier` = `l1`, `l2` |
//! | `apikey_cache_store_queries_total` | counter | `result` = `ok`, `error` |
//! | `apikey_cache_lookup_duration_seconds` | histogram | (loads past L1 only: an L1 hit is a few hundred nanoseconds, and timing it would cost a third of that) |
//! | `apikey_cache_entries` | gauge | `tier` = `l1` |
//! | `apikey_cache_l2_errors_total` | counter | |
//! | `apikey_cache_breaker_state` | gauge | 0 closed, 1 open, 2 half-open (only with Redis) |
//! | `apikey_cache_mode` | gauge | 0 normal, 1 database_only |
//! | `apikey_cache_invalidations_total` | counter | `source` = `local`, `remote` |
//! | `apikey_cache_stale_served_total` | counter | |
//! | `apikey_cache_resyncs_total` | counter | (`invalidation.resyncs` of `/health/cache`) |
//! | `apikey_cache_usage_flush_errors_total` | counter | |
//! | `apikey_cache_usage_pending_increments` | gauge | |
//! | `apikey_cache_limit_waits_total` | counter | (`limits.waits` of `/health/cache`) |
//!
//! Every metric is described (HELP text and unit) once per process, when
//! the first cache is built. Describe calls reach only the recorder
//! installed at that time: install the exporter first, or call
//! [`describe_metrics`] after installing it. Exporters that render a
//! histogram as a summary by default (`metrics-exporter-prometheus` does)
//! need buckets for the lookup duration to be a Prometheus histogram that
//! aggregates across a fleet: [`LOOKUP_DURATION_BUCKETS`].
//!
//! ```
//! use apikey_cache::telemetry::{self, MetricKind, LOOKUP_DURATION, METRICS};
//!
//! // Once the host's exporter is installed (here: none, a no-op).
//! telemetry::describe_metrics();
//!
//! let lookup = telemetry::metric(LOOKUP_DURATION).unwrap();
//! assert_eq!(lookup.kind, MetricKind::Histogram);
//! assert_eq!(lookup.unit, Some(telemetry::Unit::Seconds));
//! assert!(METRICS.iter().all(|m| m.name.starts_with("apikey_cache_")));
//! ```
//!
//! With `metrics-exporter-prometheus`, the demos
//! (`examples/src/demo/setup.rs`) give the histogram its buckets with
//! `PrometheusBuilder::set_buckets_for_metric(Matcher::Full(LOOKUP_DURATION
//! .into()), LOOKUP_DURATION_BUCKETS)` before installing the recorder, then
//! build the cache.

use std::sync::{Once, Weak};
use std::time::Duration;

/// The unit type of [`MetricDef::unit`], from the `metrics` facade.
pub use metrics::Unit;
use metrics::{counter, gauge};

use crate::cache::Inner;
use crate::{ApiKeyCache, Mode, Outcome};

/// How often the counters are copied into the facade.
const EVERY: Duration = Duration::from_secs(1);

/// The name of the lookup duration histogram, for exporter settings such as
/// per-metric buckets.
///
/// ```
/// assert_eq!(
///     apikey_cache::telemetry::LOOKUP_DURATION,
///     "apikey_cache_lookup_duration_seconds"
/// );
/// ```
pub const LOOKUP_DURATION: &str = "apikey_cache_lookup_duration_seconds";

/// Histogram buckets (upper bounds, in seconds) for [`LOOKUP_DURATION`]:
/// from 10 µs (a Redis hit on the same host) to 5 s (a store at its
/// timeout), about three per decade, so `histogram_quantile` stays within
/// a factor of ~2.5 anywhere in that range.
///
/// ```
/// use apikey_cache::telemetry::LOOKUP_DURATION_BUCKETS as B;
/// assert_eq!((B[0], B[B.len() - 1]), (0.000_01, 5.0));
/// assert!(B.windows(2).all(|w| w[0] < w[1]));
/// ```
pub const LOOKUP_DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The Prometheus type of a metric.
///
/// ```
/// use apikey_cache::telemetry::MetricKind;
/// assert_eq!(MetricKind::Histogram.as_str(), "histogram");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (Prometheus `counter`, name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution, as buckets, `_sum` and `_count`.
    Histogram,
}

impl MetricKind {
    /// The Prometheus `# TYPE` word.
    ///
    /// ```
    /// assert_eq!(apikey_cache::telemetry::MetricKind::Counter.as_str(), "counter");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A label of a metric and every value the cache gives it.
///
/// ```
/// let hits = apikey_cache::telemetry::metric("apikey_cache_hits_total").unwrap();
/// assert_eq!(hits.labels[0].name, "tier");
/// assert_eq!(hits.labels[0].values, ["l1", "l2"]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricLabel {
    /// The label name.
    pub name: &'static str,
    /// Every value it takes. Never a key, a hash or an owner: the set is
    /// fixed, so cardinality is too.
    pub values: &'static [&'static str],
}

/// One metric the cache emits: an entry of [`METRICS`].
///
/// ```
/// let mode = apikey_cache::telemetry::metric("apikey_cache_mode").unwrap();
/// assert!(mode.help.contains("database_only"));
/// assert!(mode.labels.is_empty());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricDef {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit given to the recorder; `None` for enumerations (breaker
    /// state, mode).
    pub unit: Option<Unit>,
    /// The HELP text.
    pub help: &'static str,
    /// Its labels, with the values they take.
    pub labels: &'static [MetricLabel],
}

const fn def(
    name: &'static str,
    kind: MetricKind,
    unit: Option<Unit>,
    help: &'static str,
    labels: &'static [MetricLabel],
) -> MetricDef {
    MetricDef {
        name,
        kind,
        unit,
        help,
        labels,
    }
}

const fn label(name: &'static str, values: &'static [&'static str]) -> MetricLabel {
    MetricLabel { name, values }
}

const TIER: &[MetricLabel] = &[label("tier", &["l1", "l2"])];

/// Every metric the cache emits, described. `publish_metrics` and the load
/// path emit exactly these (a test pins it).
///
/// ```
/// use apikey_cache::telemetry::{MetricKind, METRICS};
///
/// for m in METRICS {
///     // Prometheus conventions, which `promtool check metrics` enforces.
///     assert_eq!(m.kind == MetricKind::Counter, m.name.ends_with("_total"), "{}", m.name);
///     assert!(!m.help.is_empty());
/// }
/// ```
pub const METRICS: &[MetricDef] = &[
    def(
        "apikey_cache_requests_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Requests verified, by outcome: valid, or why the key was refused.",
        &[label("outcome", &Outcome::LABELS)],
    ),
    def(
        "apikey_cache_hits_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Lookups answered by a cache tier (l1: in-process, l2: Redis).",
        TIER,
    ),
    def(
        "apikey_cache_misses_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Lookups a cache tier could not answer (an l1 miss goes on to l2, an l2 miss to the store).",
        TIER,
    ),
    def(
        "apikey_cache_store_queries_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Queries sent to the key store, by result (error: failed or timed out).",
        &[label("result", &["ok", "error"])],
    ),
    def(
        LOOKUP_DURATION,
        MetricKind::Histogram,
        Some(Unit::Seconds),
        "Time to answer a lookup that missed L1 (Redis, then the store if needed), in seconds.",
        &[],
    ),
    def(
        "apikey_cache_entries",
        MetricKind::Gauge,
        Some(Unit::Count),
        "Entries held by a cache tier (l1: in-process, approximate).",
        &[label("tier", &["l1"])],
    ),
    def(
        "apikey_cache_l2_errors_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Redis calls that failed or timed out (calls skipped by the open breaker not included).",
        &[],
    ),
    def(
        "apikey_cache_breaker_state",
        MetricKind::Gauge,
        None,
        "Redis circuit breaker: 0 closed, 1 open, 2 half-open. Absent without Redis.",
        &[],
    ),
    def(
        "apikey_cache_mode",
        MetricKind::Gauge,
        None,
        "Effective cache mode: 0 normal, 1 database_only (every request asks the store).",
        &[],
    ),
    def(
        "apikey_cache_invalidations_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Invalidations applied to L1, by source (local: made here, remote: another instance's event).",
        &[label("source", &["local", "remote"])],
    ),
    def(
        "apikey_cache_stale_served_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Requests answered from an entry past its TTL while the store was failing (stale-if-error).",
        &[],
    ),
    def(
        "apikey_cache_resyncs_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Times the invalidation subscriber reconnected and cleared L1 (events may have been missed).",
        &[],
    ),
    def(
        "apikey_cache_usage_flush_errors_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Usage counter flushes to the store or Redis that failed (each is retried).",
        &[],
    ),
    def(
        "apikey_cache_usage_pending_increments",
        MetricKind::Gauge,
        Some(Unit::Count),
        "Counted requests not yet flushed to the store.",
        &[],
    ),
    def(
        "apikey_cache_limit_waits_total",
        MetricKind::Counter,
        Some(Unit::Count),
        "Rate-limited or quota requests that waited for Redis (no token lease at hand); flat in steady traffic.",
        &[],
    ),
];

/// The entry of [`METRICS`] named `name`.
///
/// ```
/// use apikey_cache::telemetry::{metric, MetricKind};
/// assert_eq!(metric("apikey_cache_mode").map(|m| m.kind), Some(MetricKind::Gauge));
/// assert!(metric("apikey_cache_nope").is_none());
/// ```
pub fn metric(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// Describes every metric of [`METRICS`] (HELP text and unit) to the
/// installed recorder.
///
/// The cache calls this once per process, when the first cache is built;
/// call it yourself if you install the recorder after that. Repeating it is
/// harmless with recorders that keep the first description
/// (`metrics-exporter-prometheus` does).
///
/// ```
/// // With no recorder installed, a no-op.
/// apikey_cache::telemetry::describe_metrics();
/// ```
pub fn describe_metrics() {
    for m in METRICS {
        let (name, help) = (m.name, m.help);
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(unit)) => metrics::describe_counter!(name, unit, help),
            (MetricKind::Counter, None) => metrics::describe_counter!(name, help),
            (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(name, unit, help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(name, help),
            (MetricKind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

/// [`describe_metrics`], the first time only: called when a cache is built.
pub(crate) fn describe_once() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(describe_metrics);
}

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
        counter!("apikey_cache_limit_waits_total").absolute(s.limit_waits);
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
