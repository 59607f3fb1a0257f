//! Normal and emergency database-only mode, per instance and fleet-wide.
//!
//! The effective mode is `database_only` if either this instance's own mode
//! or the fleet-wide mode says so. The fleet mode lives in Redis (a key that
//! instances read when they subscribe, so late starters see it) and travels
//! as a pub/sub event. Leaving `database_only` clears L1 (its entries were
//! not refreshed while the caches were bypassed). Invalidations made in the
//! mode still tombstone Redis and notify the fleet, so Redis holds nothing
//! they revoked when the mode ends; a store change that is never
//! invalidated is served from Redis until its TTL, in either mode.

use std::sync::atomic::Ordering;

use crate::cache::mode_to_u8;
use crate::events::{self, Action};
use crate::{ApiKeyCache, InvalidateError, Mode};

fn mode_from_u8(v: u8) -> Mode {
    if v == 0 {
        Mode::Normal
    } else {
        Mode::DatabaseOnly
    }
}

impl ApiKeyCache {
    /// The effective mode.
    pub fn mode(&self) -> Mode {
        let inner = &*self.inner;
        mode_from_u8(
            inner.local_mode.load(Ordering::Acquire) | inner.fleet_mode.load(Ordering::Acquire),
        )
    }

    /// This instance's own mode (the fleet mode may still force
    /// `database_only`).
    pub fn local_mode(&self) -> Mode {
        mode_from_u8(self.inner.local_mode.load(Ordering::Acquire))
    }

    /// The fleet-wide mode as last seen by this instance.
    pub fn fleet_mode(&self) -> Mode {
        mode_from_u8(self.inner.fleet_mode.load(Ordering::Acquire))
    }

    /// Switches this instance's own mode.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore, Mode};
    ///
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    /// cache.set_mode(Mode::DatabaseOnly);
    /// assert_eq!(cache.mode(), Mode::DatabaseOnly);
    /// cache.set_mode(Mode::Normal); // clears L1
    /// # });
    /// ```
    pub fn set_mode(&self, mode: Mode) {
        let before = self.mode();
        let old = self
            .inner
            .local_mode
            .swap(mode_to_u8(mode), Ordering::AcqRel);
        self.mode_changed(before, ("local", mode_from_u8(old), mode, "local"));
    }

    /// Switches the mode of every instance sharing this Redis (and key
    /// prefix), including instances that start later. Applies here at once.
    pub async fn set_fleet_mode(&self, mode: Mode) -> Result<(), InvalidateError> {
        let Some(l2) = &self.inner.l2 else {
            return Err(InvalidateError::Redis(
                "no Redis configured: the fleet mode cannot be shared".into(),
            ));
        };
        let prefix = &self.inner.config.key_prefix;
        let redis_err = |e: crate::l2::L2Error| InvalidateError::Redis(e.to_string());
        l2.set_string(&events::mode_key(prefix), mode.as_str())
            .await
            .map_err(redis_err)?;
        self.apply_fleet_mode(mode, "local");
        let event = events::encode(
            &self.inner.instance_id,
            Action::Mode {
                m: mode.as_str().to_owned(),
            },
        );
        l2.publish(&events::channel(prefix), event)
            .await
            .map_err(redis_err)
    }

    /// Applies the fleet-wide mode; `source` says where it came from
    /// (`local`: this instance's API; `remote`: an event or Redis's key).
    pub(crate) fn apply_fleet_mode(&self, mode: Mode, source: &'static str) {
        let before = self.mode();
        let old = self
            .inner
            .fleet_mode
            .swap(mode_to_u8(mode), Ordering::AcqRel);
        self.mode_changed(before, ("fleet", mode_from_u8(old), mode, source));
    }

    /// Reads the fleet mode from Redis (on every (re)subscription), outside
    /// the breaker: an instance that was cut off while the fleet mode
    /// changed must learn it as soon as Redis answers, even while its
    /// breaker is still open. Returns whether it was read; the subscriber
    /// retries until it is.
    pub(crate) async fn refresh_fleet_mode(&self) -> bool {
        let Some(l2) = &self.inner.l2 else {
            return true;
        };
        let key = events::mode_key(&self.inner.config.key_prefix);
        match l2.get_string_unguarded(&key).await {
            Ok(Some(m)) => match m.parse::<Mode>() {
                Ok(mode) => self.apply_fleet_mode(mode, "remote"),
                Err(_) => tracing::warn!(value = %m, "unknown fleet mode in redis ignored"),
            },
            Ok(None) => self.apply_fleet_mode(Mode::Normal, "remote"),
            Err(e) => {
                tracing::warn!(error = %e, "fleet mode not readable; retrying");
                return false;
            }
        }
        true
    }

    /// After a mode setting changed: `setting` is its scope (`local` or
    /// `fleet`), old and new value, and where the change came from. Audits
    /// a change of the setting; clears L1 when the effective mode returns
    /// to normal.
    fn mode_changed(&self, before: Mode, setting: (&'static str, Mode, Mode, &'static str)) {
        let after = self.mode();
        let (scope, old, new, source) = setting;
        if old != new {
            self.inner
                .audit
                .mode_changed(scope, old, new, after, source);
        }
        if before == after {
            return;
        }
        if after == Mode::Normal {
            self.clear_local();
        }
    }
}
