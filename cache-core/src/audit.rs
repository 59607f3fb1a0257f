//! Audit events: structured `tracing` events on one target,
//! [`TARGET`] (`apikey_cache::audit`), for what an operator or a security
//! review needs to reconstruct: refused requests, invalidations, resyncs,
//! mode changes and breaker transitions. Rate-limited per kind, so a flood
//! of bad keys cannot flood the logs; never a plaintext key.
//!
//! Every event has a field `event` with its stable name; the other fields
//! are fields, never folded into the message, so a JSON subscriber writes
//! them as JSON fields. [`EVENTS`] lists them all:
//!
//! | `event` | level | fields |
//! | --- | --- | --- |
//! | `auth_failed` | info | `outcome` (the body's `error`, e.g. `revoked_api_key`), `reason` ([`Outcome::label`], e.g. `malformed` or `unknown`, both `invalid_api_key` to the client), `status` (HTTP status), `fingerprint` (first 8 hex digits of the key's hash; absent for a missing or malformed key), `method`, `route` (the request path, no query string), `client` (peer address; absent when the adapter does not know it) |
//! | `key_invalidated` | info | `fingerprint` (for [`ApiKeyCache::invalidate`] and other instances' events) or `key_id` (for [`ApiKeyCache::invalidate_key_id`]), `source` (`local`: this instance's API; `remote`: an event from another instance) |
//! | `owner_invalidated` | info | `owner`, `dropped` (L1 entries dropped here), `source` |
//! | `resync` | warn | `resyncs` (total so far): the invalidation subscriber reconnected and cleared L1 |
//! | `mode_changed` | warn | `scope` (`local`: this instance's own mode; `fleet`: the fleet-wide mode), `from`, `to` (that setting's old and new value), `effective` (the mode in force now), `source` (`local`: this instance's API; `remote`: an event or the fleet-mode key in Redis) |
//! | `breaker_changed` | warn when it opens, else info | `from`, `to` (`closed`, `open`, `half_open`), `failures` (consecutive failures, when it opens) |
//! | `audit_suppressed` | warn | `kind` (the `event` whose events were dropped), `suppressed` (how many since the last summary) |
//!
//! Successful verifications emit nothing (the request path of a valid key
//! does no audit work at all). `auth_failed` is emitted by the web adapters
//! (they know the route and the client) through one function,
//! [`ApiKeyCache::audit_auth_failed`], so every adapter writes the same
//! fields.
//!
//! # Rate limits
//!
//! Each kind has a token bucket of its own ([`EventDef::budget`]):
//! `burst` events at once, refilled with `per_second` tokens for every
//! whole second of the cache's [`Clock`](crate::Clock), never above
//! `burst`. `auth_failed` gets 10 per second, bursts of 50; invalidations
//! 100 per second, bursts of 1000 (a scripted mass revocation stays
//! readable); the rest 10 per second, bursts of 20. An event that finds its
//! bucket empty is dropped and counted: one relaxed load of the bucket (not
//! written while it stays empty) and one increment of a per-thread counter
//! stripe, nothing else: no clock read, no formatting, no hashing.
//!
//! Dropped events are reported, not lost silently: at the first refill
//! after a drop (a background task checks every 250 ms, so within about a
//! second), one `audit_suppressed` event per kind with `suppressed = k`,
//! the number dropped since the previous summary. Summaries themselves are
//! not rate-limited; there is at most one per kind per second.
//! [`ApiKeyCache::flush_audit`] brings the buckets up to date and writes
//! pending summaries at once (call it at shutdown). A cache built outside
//! a Tokio runtime has no background task: there, each audit event checks
//! the clock and refills on the way.
//!
//! Budgets are per cache: two caches in one process each have their own.
//!
//! # Never a key
//!
//! No event carries a presented key: failures carry the fingerprint (the
//! first 8 hex digits of the key's SHA-256 or HMAC), the route loses its
//! query string (where a misconfigured client may put a key) and, should
//! the presented key appear in the path, it is replaced by `<redacted>`.
//!
//! # Filtering
//!
//! With `tracing_subscriber`'s `EnvFilter`, the target is a directive of its
//! own: `RUST_LOG=info,apikey_cache::audit=info` keeps them with the rest
//! of the info logs, `RUST_LOG=warn,apikey_cache::audit=info` keeps them
//! while quieting everything else, `apikey_cache::audit=off` silences them.
//!
//! ```
//! use tracing_subscriber::EnvFilter;
//!
//! let filter = EnvFilter::new(format!("warn,{}=info", apikey_cache::audit::TARGET));
//! let _subscriber = tracing_subscriber::fmt().json().with_env_filter(filter).finish();
//! // `tracing::subscriber::set_global_default(_subscriber)` in a real program.
//! ```
//!
//! An `auth_failed` event as the JSON formatter writes it (one line):
//!
//! ```text
//! {"timestamp":"…","level":"INFO","fields":{"message":"authentication failed",
//!  "event":"auth_failed","outcome":"revoked_api_key","reason":"revoked","status":401,
//!  "fingerprint":"3f9a0c12","method":"GET","route":"/v1/whoami","client":"10.0.0.7:51234"},
//!  "target":"apikey_cache::audit"}
//! ```

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::stats::StripedCounter;
use crate::{
    ApiKeyCache, BreakerState, Clock, Extracted, HeaderSource, KeyHash, KeyId, Mode, Outcome,
};

/// The `tracing` target of every audit event.
///
/// ```
/// assert_eq!(apikey_cache::audit::TARGET, "apikey_cache::audit");
/// ```
pub const TARGET: &str = "apikey_cache::audit";

/// A token bucket's settings: `burst` tokens at most, `per_second` more
/// for each whole second.
///
/// ```
/// let auth = apikey_cache::audit::event("auth_failed").unwrap();
/// let budget = auth.budget.unwrap();
/// assert_eq!((budget.per_second, budget.burst), (10, 50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Budget {
    /// Tokens added per whole second of the cache's clock.
    pub per_second: u32,
    /// The bucket's size, and its content at start.
    pub burst: u32,
}

/// One audit event: an entry of [`EVENTS`].
///
/// ```
/// let e = apikey_cache::audit::event("key_invalidated").unwrap();
/// assert!(e.fields.contains(&"source"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventDef {
    /// The value of the `event` field.
    pub name: &'static str,
    /// Its `tracing` level (`info`, `warn`; `breaker_changed` is `warn`
    /// when the breaker opens, `info` otherwise).
    pub level: &'static str,
    /// Every field it may carry besides `event` and `message`. A field
    /// whose value is unknown is left out rather than written empty.
    pub fields: &'static [&'static str],
    /// Its rate limit; `None` for `audit_suppressed` (at most one per kind
    /// per second by construction).
    pub budget: Option<Budget>,
}

const fn def(
    name: &'static str,
    level: &'static str,
    fields: &'static [&'static str],
    budget: Option<Budget>,
) -> EventDef {
    EventDef {
        name,
        level,
        fields,
        budget,
    }
}

const fn budget(per_second: u32, burst: u32) -> Option<Budget> {
    Some(Budget { per_second, burst })
}

/// Every audit event, in [`Kind`] order, then `audit_suppressed`.
///
/// ```
/// use apikey_cache::audit::EVENTS;
/// assert!(EVENTS.iter().all(|e| !e.fields.is_empty()));
/// assert_eq!(EVENTS.iter().filter(|e| e.budget.is_none()).count(), 1);
/// ```
pub const EVENTS: &[EventDef] = &[
    def(
        "auth_failed",
        "info",
        &[
            "outcome",
            "reason",
            "status",
            "fingerprint",
            "method",
            "route",
            "client",
        ],
        budget(10, 50),
    ),
    def(
        "key_invalidated",
        "info",
        &["fingerprint", "key_id", "source"],
        budget(100, 1000),
    ),
    def(
        "owner_invalidated",
        "info",
        &["owner", "dropped", "source"],
        budget(100, 1000),
    ),
    def("resync", "warn", &["resyncs"], budget(10, 20)),
    def(
        "mode_changed",
        "warn",
        &["scope", "from", "to", "effective", "source"],
        budget(10, 20),
    ),
    def(
        "breaker_changed",
        "info",
        &["from", "to", "failures"],
        budget(10, 20),
    ),
    def("audit_suppressed", "warn", &["kind", "suppressed"], None),
];

/// The entry of [`EVENTS`] named `name`.
///
/// ```
/// assert!(apikey_cache::audit::event("resync").is_some());
/// assert!(apikey_cache::audit::event("nope").is_none());
/// ```
pub fn event(name: &str) -> Option<&'static EventDef> {
    EVENTS.iter().find(|e| e.name == name)
}

/// The rate-limited kinds, indexing [`EVENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    AuthFailed = 0,
    KeyInvalidated = 1,
    OwnerInvalidated = 2,
    Resync = 3,
    ModeChanged = 4,
    BreakerChanged = 5,
}

const KINDS: usize = 6;

/// The longest route written; longer paths are cut (at a character
/// boundary) and end in `…`.
const MAX_ROUTE: usize = 256;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// How often the background task refills the buckets and writes summaries.
const TICK: Duration = Duration::from_millis(250);

/// What a web adapter knows about a refused request, for
/// [`ApiKeyCache::audit_auth_failed`].
///
/// ```
/// use apikey_cache::audit::RequestInfo;
///
/// let info = RequestInfo::new("GET", "/v1/orders").client(Some("10.0.0.7:5123".parse().unwrap()));
/// assert_eq!(info.route(), "/v1/orders");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    method: &'a str,
    route: &'a str,
    client: Option<SocketAddr>,
}

impl<'a> RequestInfo<'a> {
    /// A request with its method and path (a query string, if passed, is
    /// cut off before logging).
    ///
    /// ```
    /// let info = apikey_cache::audit::RequestInfo::new("POST", "/v1/orders");
    /// assert_eq!((info.method(), info.client_addr()), ("POST", None));
    /// ```
    pub const fn new(method: &'a str, route: &'a str) -> Self {
        Self {
            method,
            route,
            client: None,
        }
    }

    /// The peer address, where the adapter knows it.
    ///
    /// ```
    /// let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    /// let info = apikey_cache::audit::RequestInfo::new("GET", "/").client(Some(addr));
    /// assert_eq!(info.client_addr(), Some(addr));
    /// ```
    #[must_use]
    pub const fn client(mut self, client: Option<SocketAddr>) -> Self {
        self.client = client;
        self
    }

    /// The method.
    ///
    /// ```
    /// assert_eq!(apikey_cache::audit::RequestInfo::new("GET", "/").method(), "GET");
    /// ```
    pub const fn method(&self) -> &'a str {
        self.method
    }

    /// The route as given.
    ///
    /// ```
    /// assert_eq!(apikey_cache::audit::RequestInfo::new("GET", "/a").route(), "/a");
    /// ```
    pub const fn route(&self) -> &'a str {
        self.route
    }

    /// The peer address, if known.
    ///
    /// ```
    /// assert_eq!(apikey_cache::audit::RequestInfo::new("GET", "/").client_addr(), None);
    /// ```
    pub const fn client_addr(&self) -> Option<SocketAddr> {
        self.client
    }
}

/// One kind's token bucket. The tokens may go below zero when threads race
/// for the last one; a refill starts from zero then.
#[derive(Default)]
struct Bucket {
    tokens: AtomicI64,
    /// Events dropped, ever; summaries report the growth.
    dropped: StripedCounter,
}

impl Bucket {
    /// Takes a token, or counts a drop.
    #[inline]
    fn take(&self) -> bool {
        // Loaded first: while the bucket is empty nobody writes it, so a
        // flood of drops only reads a shared cache line.
        if self.tokens.load(Ordering::Relaxed) > 0
            && self.tokens.fetch_sub(1, Ordering::Relaxed) > 0
        {
            return true;
        }
        self.dropped.incr();
        false
    }

    fn refill(&self, add: i64, burst: i64) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.max(0).saturating_add(add).min(burst))
            });
    }
}

/// What the refills and summaries have done so far.
struct Ledger {
    /// The clock reading (ns) up to which tokens were added.
    refilled_to: i64,
    /// Each kind's dropped count at its last summary.
    reported: [u64; KINDS],
}

/// The audit state of one cache: its buckets and its clock.
pub(crate) struct Audit {
    clock: Arc<dyn Clock>,
    buckets: [Bucket; KINDS],
    /// No background task refills: events refill on the way.
    lazy: bool,
    /// When the next refill is due (clock ns); read per event when lazy.
    due: AtomicI64,
    ledger: Mutex<Ledger>,
}

fn kind_def(kind: Kind) -> &'static EventDef {
    &EVENTS[kind as usize]
}

fn kind_budget(i: usize) -> Budget {
    EVENTS[i].budget.unwrap_or(Budget {
        per_second: 0,
        burst: 0,
    })
}

impl Audit {
    /// Full buckets. `lazy`: no background task will call
    /// [`tick`](Self::tick).
    pub(crate) fn new(clock: Arc<dyn Clock>, lazy: bool) -> Self {
        let now = clock.unix_nanos();
        let buckets: [Bucket; KINDS] = std::array::from_fn(|i| {
            let b = Bucket::default();
            b.tokens
                .store(i64::from(kind_budget(i).burst), Ordering::Relaxed);
            b
        });
        Self {
            clock,
            buckets,
            lazy,
            due: AtomicI64::new(now.saturating_add(NANOS_PER_SEC)),
            ledger: Mutex::new(Ledger {
                refilled_to: now,
                reported: [0; KINDS],
            }),
        }
    }

    /// Whether an event of `kind` may be written now; counts it as dropped
    /// if not.
    #[inline]
    fn admit(&self, kind: Kind) -> bool {
        if self.lazy {
            let now = self.clock.unix_nanos();
            if now >= self.due.load(Ordering::Relaxed) {
                self.catch_up(now, false, false);
            }
        }
        self.buckets[kind as usize].take()
    }

    /// Refills for the whole seconds passed and writes the summaries of
    /// drops since the last ones (the background task's step).
    pub(crate) fn tick(&self) {
        self.catch_up(self.clock.unix_nanos(), false, true);
    }

    /// [`tick`](Self::tick), then every pending summary whatever the time.
    pub(crate) fn flush(&self) {
        self.catch_up(self.clock.unix_nanos(), true, true);
    }

    fn catch_up(&self, now: i64, summarize_anyway: bool, wait: bool) {
        let mut ledger = if wait {
            self.ledger.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            // Another thread is at it: the event goes on without waiting.
            match self.ledger.try_lock() {
                Ok(l) => l,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        let elapsed = now.saturating_sub(ledger.refilled_to);
        let secs = if elapsed < 0 {
            // The clock went back: start counting again from now.
            ledger.refilled_to = now;
            0
        } else {
            elapsed / NANOS_PER_SEC
        };
        if secs > 0 {
            ledger.refilled_to = ledger
                .refilled_to
                .saturating_add(secs.saturating_mul(NANOS_PER_SEC));
            for (i, bucket) in self.buckets.iter().enumerate() {
                let b = kind_budget(i);
                bucket.refill(
                    secs.saturating_mul(i64::from(b.per_second)),
                    i64::from(b.burst),
                );
            }
        }
        self.due.store(
            ledger.refilled_to.saturating_add(NANOS_PER_SEC),
            Ordering::Relaxed,
        );
        if secs == 0 && !summarize_anyway {
            return;
        }
        for (i, bucket) in self.buckets.iter().enumerate() {
            let total = bucket.dropped.get();
            let suppressed = total.saturating_sub(ledger.reported[i]);
            if suppressed > 0 {
                ledger.reported[i] = total;
                tracing::warn!(
                    target: TARGET,
                    event = "audit_suppressed",
                    kind = EVENTS[i].name,
                    suppressed,
                    "audit events dropped by the rate limit"
                );
            }
        }
    }

    pub(crate) fn key_invalidated(
        &self,
        hash: Option<&KeyHash>,
        key_id: Option<&KeyId>,
        source: &'static str,
    ) {
        if self.admit(Kind::KeyInvalidated) {
            let fingerprint = hash.map(KeyHash::fingerprint);
            tracing::info!(
                target: TARGET,
                event = kind_def(Kind::KeyInvalidated).name,
                fingerprint = fingerprint.as_deref(),
                key_id = key_id.map(tracing::field::display),
                source,
                "key invalidated"
            );
        }
    }

    pub(crate) fn owner_invalidated(&self, owner: &str, dropped: u64, source: &'static str) {
        if self.admit(Kind::OwnerInvalidated) {
            tracing::info!(
                target: TARGET,
                event = kind_def(Kind::OwnerInvalidated).name,
                owner,
                dropped,
                source,
                "owner invalidated"
            );
        }
    }

    pub(crate) fn resync(&self, resyncs: u64) {
        if self.admit(Kind::Resync) {
            tracing::warn!(
                target: TARGET,
                event = kind_def(Kind::Resync).name,
                resyncs,
                "invalidation subscriber reconnected; local cache cleared"
            );
        }
    }

    pub(crate) fn mode_changed(
        &self,
        scope: &'static str,
        from: Mode,
        to: Mode,
        effective: Mode,
        source: &'static str,
    ) {
        if self.admit(Kind::ModeChanged) {
            tracing::warn!(
                target: TARGET,
                event = kind_def(Kind::ModeChanged).name,
                scope,
                from = from.as_str(),
                to = to.as_str(),
                effective = effective.as_str(),
                source,
                "apikey cache mode changed"
            );
        }
    }

    pub(crate) fn breaker_changed(
        &self,
        from: BreakerState,
        to: BreakerState,
        failures: Option<u32>,
    ) {
        if from == to || !self.admit(Kind::BreakerChanged) {
            return;
        }
        let name = kind_def(Kind::BreakerChanged).name;
        if to == BreakerState::Open {
            tracing::warn!(
                target: TARGET,
                event = name,
                from = from.as_str(),
                to = to.as_str(),
                failures,
                "redis circuit breaker changed"
            );
        } else {
            tracing::info!(
                target: TARGET,
                event = name,
                from = from.as_str(),
                to = to.as_str(),
                failures,
                "redis circuit breaker changed"
            );
        }
    }
}

/// Refills and summarizes every [`TICK`] for as long as the audit state
/// lives.
pub(crate) async fn ticker(audit: Weak<Audit>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(audit) = audit.upgrade() else { return };
        audit.tick();
    }
}

/// `route` without its query string or fragment, with `key` (the presented
/// key) replaced, cut to [`MAX_ROUTE`] bytes.
fn loggable_route<'a>(route: &'a str, key: Option<&str>) -> Cow<'a, str> {
    let path = route.split(['?', '#']).next().unwrap_or_default();
    let mut out = match key {
        Some(key) if !key.is_empty() && path.contains(key) => {
            Cow::Owned(path.replace(key, "<redacted>"))
        }
        _ => Cow::Borrowed(path),
    };
    if out.len() > MAX_ROUTE {
        let mut end = MAX_ROUTE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out = Cow::Owned(format!("{}…", &out[..end]));
    }
    out
}

impl ApiKeyCache {
    /// Writes an `auth_failed` audit event for a refused request, within
    /// the rate limit; does nothing for [`Outcome::Valid`]. For web
    /// adapters, on their rejection path only.
    ///
    /// `source` is the request's key source (as passed to
    /// [`verify_now`](Self::verify_now)): the fingerprint is computed from
    /// it only if the event is written. `request` is called only then too.
    /// Past the budget, the call costs a load and a per-thread counter
    /// increment.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::audit::RequestInfo;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore, RequiredScopes};
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-api-key", "ak_unknown".parse().unwrap());
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let outcome = cache.verify(&headers, &RequiredScopes::none()).await;
    /// if !outcome.is_valid() {
    ///     cache.audit_auth_failed(&outcome, &headers, || RequestInfo::new("GET", "/v1/orders?page=2"));
    /// }
    /// # });
    /// ```
    pub fn audit_auth_failed<'r, R, F>(&self, outcome: &Outcome, source: &R, request: F)
    where
        R: HeaderSource + ?Sized,
        F: FnOnce() -> RequestInfo<'r>,
    {
        let Some((status, code)) = outcome.status_and_code() else {
            return;
        };
        if !self.inner.audit.admit(Kind::AuthFailed) {
            return;
        }
        let key = match self.inner.extractor.extract(source) {
            Extracted::Key(key) => Some(key),
            Extracted::Missing | Extracted::Malformed(_) => None,
        };
        let fingerprint = key.map(|k| self.hash_key(k).fingerprint());
        let info = request();
        let route = loggable_route(info.route, key);
        tracing::info!(
            target: TARGET,
            event = kind_def(Kind::AuthFailed).name,
            outcome = code,
            reason = outcome.label(),
            status,
            fingerprint = fingerprint.as_deref(),
            method = info.method,
            route = &*route,
            client = info.client.map(tracing::field::display),
            "authentication failed"
        );
    }

    /// Refills the audit rate limits for the time passed and writes an
    /// `audit_suppressed` summary for every kind with events dropped since
    /// its last summary, now. A background task does this about every
    /// second; call it before exiting so the last drops are reported.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// cache.flush_audit(); // nothing dropped: writes nothing
    /// ```
    pub fn flush_audit(&self) {
        self.inner.audit.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn start() -> time::OffsetDateTime {
        time::macros::datetime!(2030-01-01 0:00 UTC)
    }

    #[test]
    fn a_bucket_admits_its_burst_then_refills_per_whole_second() {
        let clock = Arc::new(ManualClock::new(start()));
        let audit = Audit::new(clock.clone(), false);
        let admitted = (0..1000).filter(|_| audit.admit(Kind::AuthFailed)).count();
        assert_eq!(admitted, 50);
        assert_eq!(audit.buckets[0].dropped.get(), 950);
        // Other kinds have buckets of their own.
        assert!(audit.admit(Kind::Resync));

        // Not a whole second: nothing added.
        clock.advance(Duration::from_millis(999));
        audit.tick();
        assert!(!audit.admit(Kind::AuthFailed));
        clock.advance(Duration::from_millis(1));
        audit.tick();
        let admitted = (0..100).filter(|_| audit.admit(Kind::AuthFailed)).count();
        assert_eq!(admitted, 10);

        // A long pause fills the bucket to its burst, no more.
        clock.advance(Duration::from_secs(3600));
        audit.tick();
        let admitted = (0..1000).filter(|_| audit.admit(Kind::AuthFailed)).count();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let clock = Arc::new(ManualClock::new(start()));
        let audit = Audit::new(clock.clone(), false);
        while audit.admit(Kind::ModeChanged) {}
        clock.set(start() - Duration::from_secs(3600));
        audit.tick();
        assert!(!audit.admit(Kind::ModeChanged));
        clock.advance(Duration::from_secs(1));
        audit.tick();
        assert_eq!(
            (0..100).filter(|_| audit.admit(Kind::ModeChanged)).count(),
            10
        );
    }

    #[test]
    fn without_a_ticker_events_refill_on_the_way() {
        let clock = Arc::new(ManualClock::new(start()));
        let audit = Audit::new(clock.clone(), true);
        while audit.admit(Kind::Resync) {}
        clock.advance(Duration::from_secs(1));
        assert_eq!((0..100).filter(|_| audit.admit(Kind::Resync)).count(), 10);
    }

    #[test]
    fn racing_threads_never_admit_more_than_the_budget() {
        let clock = Arc::new(ManualClock::new(start()));
        let audit = Arc::new(Audit::new(clock, false));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    (0..2500).filter(|_| audit.admit(Kind::AuthFailed)).count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 50);
        assert_eq!(audit.buckets[0].dropped.get(), 10_000 - 50);
    }

    #[test]
    fn routes_lose_their_query_and_any_presented_key() {
        assert_eq!(loggable_route("/v1/orders?key=ak_x", None), "/v1/orders");
        assert_eq!(loggable_route("/a#frag", None), "/a");
        assert_eq!(
            loggable_route("/v1/ak_secret/x", Some("ak_secret")),
            "/v1/<redacted>/x"
        );
        let long = format!("/{}", "é".repeat(300));
        let cut = loggable_route(&long, None);
        assert!(cut.len() <= MAX_ROUTE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn events_table_matches_the_kinds() {
        for (i, kind) in [
            Kind::AuthFailed,
            Kind::KeyInvalidated,
            Kind::OwnerInvalidated,
            Kind::Resync,
            Kind::ModeChanged,
            Kind::BreakerChanged,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(kind as usize, i);
            assert!(EVENTS[i].budget.is_some());
        }
        assert_eq!(EVENTS.len(), KINDS + 1);
        assert_eq!(EVENTS[KINDS].name, "audit_suppressed");
    }
}
