//! Wall-clock time, injectable so expiry can be tested without sleeping.
//!
//! Expiry (`expires_at`) is a wall-clock fact from the store, so it is judged
//! against a [`Clock`], not against the monotonic clock the caches use for
//! their TTLs.
//!
//! ```
//! use std::time::Duration;
//! use apikey_cache::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(time::macros::datetime!(2030-01-01 0:00 UTC));
//! clock.advance(Duration::from_secs(2));
//! assert_eq!(clock.now(), time::macros::datetime!(2030-01-01 0:00:02 UTC));
//! ```

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

/// A source of the current UTC time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;

    /// Now, as nanoseconds since the Unix epoch (saturating), for the
    /// request path: cheaper than [`now`](Self::now) to read and compare.
    fn unix_nanos(&self) -> i64 {
        i64::try_from(self.now().unix_timestamp_nanos()).unwrap_or(i64::MAX)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[inline]
    fn unix_nanos(&self) -> i64 {
        // No calendar arithmetic: the request path reads this per request.
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
