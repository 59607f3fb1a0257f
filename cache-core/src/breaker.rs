//! A circuit breaker for the Redis tier.
//!
//! Closed: calls go through; `threshold` consecutive failures open it. Open:
//! calls are skipped, so a dead or hung Redis costs requests nothing. A
//! background prober (see `l2.rs`) waits the cool-down, moves to half-open
//! while it sends one probe, and closes or re-opens on the result. Requests
//! never carry the probe, so none of them waits on a reconnect.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Breaker position, as reported in health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Redis is called.
    Closed,
    /// Redis is skipped until a probe succeeds.
    Open,
    /// A probe is in flight.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The `apikey_cache_breaker_state` gauge value: 0, 1 or 2.
    pub const fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    threshold: u32,
    /// Wakes the prober when the breaker opens.
    pub(crate) opened: Notify,
    /// Where transitions are reported (`breaker_changed`).
    audit: Arc<crate::audit::Audit>,
}

fn state_of(v: u8) -> BreakerState {
    match v {
        CLOSED => BreakerState::Closed,
        OPEN => BreakerState::Open,
        _ => BreakerState::HalfOpen,
    }
}

impl Breaker {
    pub(crate) fn new(threshold: u32, audit: Arc<crate::audit::Audit>) -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            opened: Notify::new(),
            audit,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        state_of(self.state.load(Ordering::Acquire))
    }

    /// Moves to `to`, reporting the transition if it is one.
    fn set(&self, to: u8) {
        let from = self.state.swap(to, Ordering::AcqRel);
        self.audit
            .breaker_changed(state_of(from), state_of(to), None);
    }

    /// Whether a request may call Redis now.
    #[inline]
    pub(crate) fn allows(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    pub(crate) fn on_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; opens the breaker at the threshold.
    pub(crate) fn on_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.audit
                .breaker_changed(BreakerState::Closed, BreakerState::Open, Some(n));
            self.opened.notify_one();
        }
    }

    pub(crate) fn begin_probe(&self) {
        self.set(HALF_OPEN);
    }

    pub(crate) fn probe_succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.set(CLOSED);
    }

    pub(crate) fn probe_failed(&self) {
        self.set(OPEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let clock = Arc::new(crate::SystemClock);
        let b = Breaker::new(3, Arc::new(crate::audit::Audit::new(clock, false)));
        b.on_failure();
        b.on_failure();
        b.on_success();
        b.on_failure();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allows());
        b.begin_probe();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allows());
        b.probe_failed();
        assert_eq!(b.state(), BreakerState::Open);
        b.begin_probe();
        b.probe_succeeded();
        assert!(b.allows());
    }
}
