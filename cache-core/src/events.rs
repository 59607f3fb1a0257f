//! Fleet-wide events over Redis pub/sub: invalidations and mode changes.
//!
//! One channel per key prefix (`{prefix}events`). Every instance runs a
//! subscriber task that applies events to its own L1. The subscriber pings
//! its connection every second; when the connection is lost (or hangs) it
//! reconnects with back-off, and on every successful subscription it clears
//! the whole L1: it cannot know which events it missed, so it forgets what
//! they might have invalidated ("resync"). In between, the L1 TTL bounds
//! how stale an entry can be.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{ApiKeyCache, KeyHash, Mode};

const FORMAT_VERSION: u32 = 1;
const PING_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What an event asks every instance to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum Action {
    /// Drop one hash.
    Key { h: String },
    /// Drop every key of an owner.
    Owner { o: String },
    /// Set the fleet-wide mode.
    Mode { m: String },
    /// Drop an owner's key list (a key was issued). Instances of versions
    /// without owner lists count it as undecodable and ignore it.
    List { o: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    v: u32,
    /// The publishing instance, so it can skip its own events.
    from: String,
    #[serde(flatten)]
    action: Action,
}

pub(crate) fn encode(origin: &str, action: Action) -> Vec<u8> {
    serde_json::to_vec(&Wire {
        v: FORMAT_VERSION,
        from: origin.to_owned(),
        action,
    })
    .unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<(String, Action)> {
    let wire: Wire = serde_json::from_slice(bytes).ok()?;
    (wire.v == FORMAT_VERSION).then_some((wire.from, wire.action))
}

pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}events")
}

pub(crate) fn mode_key(prefix: &str) -> String {
    format!("{prefix}fleet-mode")
}

/// Subscriber state, for health.
#[derive(Default)]
pub(crate) struct EventStats {
    pub(crate) subscribed: AtomicBool,
    pub(crate) received: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) bad: AtomicU64,
}

impl ApiKeyCache {
    fn apply(&self, origin: &str, action: Action) {
        if origin == self.inner.instance_id {
            return;
        }
        match action {
            Action::Key { h } => match KeyHash::from_hex(&h) {
                Some(hash) => self.invalidate_local(&hash, "remote"),
                None => {
                    self.inner.events.bad.fetch_add(1, Ordering::Relaxed);
                }
            },
            Action::Owner { o } => {
                // The sender may not have tombstoned the owner's keys yet
                // (it could not list them): distrust Redis's copies of them
                // for a tombstone's lifetime; the sender repeats the event
                // until its tombstones land.
                let until = tokio::time::Instant::now() + self.inner.config.tombstone_ttl;
                let target = crate::invalidation::Target::Owner(o.clone());
                self.inner.invalidations.guard.hold_until(&target, until);
                self.invalidate_owner_local(&o, "remote");
            }
            Action::List { o } => self.invalidate_owner_list_local(&o),
            Action::Mode { m } => match m.parse::<Mode>() {
                Ok(mode) => self.apply_fleet_mode(mode, "remote"),
                Err(_) => {
                    self.inner.events.bad.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
    }
}

/// Keeps a subscription open for as long as the cache lives.
pub(crate) async fn subscriber(cache: Weak<crate::cache::Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut subscriptions = 0u64;
    let mut attempts = 0u64;
    loop {
        let Some(inner) = cache.upgrade() else { return };
        let this = ApiKeyCache { inner };
        let channel = channel(&this.inner.config.key_prefix);
        let connect_budget =
            this.inner.config.redis_connect_timeout + this.inner.config.redis_timeout;
        let Some(l2) = this.inner.l2.clone() else {
            return;
        };
        let attempt = attempts;
        attempts += 1;
        let connected = tokio::time::timeout(connect_budget, async {
            let mut pubsub = l2.pubsub(attempt).await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "invalidation subscriber cannot connect");
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Whatever was published while we were not listening is lost: forget
        // every entry it could have invalidated. The first subscription
        // counts too, since loads may have run before it was in place.
        this.resync(subscriptions == 0);
        subscriptions += 1;
        this.inner.events.subscribed.store(true, Ordering::Release);
        let mut mode_known = this.refresh_fleet_mode().await;
        tracing::info!(channel = %channel, "invalidation subscriber listening");

        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let weak = std::sync::Arc::downgrade(&this.inner);
        let timeout = this.inner.config.redis_connect_timeout + this.inner.config.redis_timeout;
        drop(this);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    let this = ApiKeyCache { inner };
                    match decode(msg.get_payload_bytes()) {
                        Some((origin, action)) => this.apply(&origin, action),
                        None => {
                            this.inner.events.bad.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("undecodable invalidation event ignored");
                        }
                    }
                    // Counted once applied, so "received" means "in effect".
                    this.inner.events.received.fetch_add(1, Ordering::Release);
                }
                _ = ping.tick() => {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("invalidation subscriber lost its connection");
                        break;
                    }
                    if !mode_known {
                        let Some(inner) = weak.upgrade() else { return };
                        mode_known = ApiKeyCache { inner }.refresh_fleet_mode().await;
                    }
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            inner.events.subscribed.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for action in [
            Action::Key { h: "ab".repeat(32) },
            Action::Owner { o: "acme".into() },
            Action::List { o: "acme".into() },
            Action::Mode {
                m: "database_only".into(),
            },
        ] {
            let bytes = encode("me", action.clone());
            assert_eq!(decode(&bytes), Some(("me".into(), action)));
        }
        assert_eq!(
            decode(b"{\"v\":2,\"from\":\"x\",\"k\":\"owner\",\"o\":\"a\"}"),
            None
        );
        assert_eq!(decode(b"garbage"), None);
    }
}
