//! Following a Sentinel-managed primary through failovers.
//!
//! redis-rs's `ConnectionManager` keeps the address it was built with: after
//! a failover it reconnects to the old primary (or keeps talking to it, now
//! a replica answering `READONLY`). So the link holds the current primary's
//! manager and asks the sentinels again (`SENTINEL MASTERS`, then `ROLE` on
//! the named primary, which redis-rs checks) when
//! - a call fails with a connection error, a timeout or `READONLY`,
//! - a sentinel announces `+switch-master` (a watcher stays subscribed to
//!   one sentinel, reconnecting to any other when it goes),
//! - no primary is known yet (at start, or the sentinels did not answer).
//!
//! Resolutions run one at a time, in the background, at most every
//! [`MIN_RESOLVE_GAP`]; calls meanwhile use the current manager (and fail
//! over to the breaker if it is gone). Nothing here waits on a request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::ConnectionInfo;

use super::link::AnyConn;
use super::lock;

/// The shortest gap between two resolutions.
const MIN_RESOLVE_GAP: Duration = Duration::from_millis(100);
/// The longest the `+switch-master` watcher waits before reconnecting.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(5);

struct Current {
    address: String,
    client: redis::Client,
    conn: ConnectionManager,
}

pub(crate) struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// A separate client for the watcher, so that a watcher reconnecting
    /// never holds up a resolution.
    watch: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Current>>,
    resolving: AtomicBool,
    last_resolve: Mutex<Option<Instant>>,
    manager_config: ConnectionManagerConfig,
    /// Budget of one resolution (the sentinels, then `ROLE` on the primary).
    budget: Duration,
}

impl SentinelLink {
    /// Builds the link, resolves the primary in the background and starts
    /// the `+switch-master` watcher. Must run inside a Tokio runtime.
    pub(crate) fn new(
        sentinels: Vec<ConnectionInfo>,
        primary_name: String,
        primary: ConnectionInfo,
        manager_config: ConnectionManagerConfig,
        budget: Duration,
    ) -> redis::RedisResult<Arc<Self>> {
        let build = || {
            let addrs = sentinels.iter().map(|s| s.addr().clone());
            let settings = primary.redis_settings();
            let mut b =
                SentinelClientBuilder::new(addrs, &primary_name, SentinelServerType::Master)?
                    .set_client_to_redis_db(settings.db());
            if let Some(user) = settings.username() {
                b = b.set_client_to_redis_username(user);
            }
            if let Some(pass) = settings.password() {
                b = b.set_client_to_redis_password(pass);
            }
            b.build()
        };
        let link = Arc::new(Self {
            sentinel: tokio::sync::Mutex::new(build()?),
            watch: tokio::sync::Mutex::new(build()?),
            current: Mutex::new(None),
            resolving: AtomicBool::new(false),
            last_resolve: Mutex::new(None),
            manager_config,
            budget,
        });
        link.resolve_soon();
        tokio::spawn(watch_switches(Arc::downgrade(&link)));
        Ok(link)
    }

    /// The current primary's address, once known.
    pub(crate) fn primary(&self) -> Option<String> {
        lock(&self.current).as_ref().map(|c| c.address.clone())
    }

    pub(crate) fn conn(self: &Arc<Self>) -> AnyConn {
        match lock(&self.current).as_ref() {
            Some(c) => AnyConn::Manager(c.conn.clone()),
            None => AnyConn::Unresolved,
        }
    }

    /// A pub/sub connection to the current primary (resolving it first if
    /// none is known).
    pub(crate) async fn pubsub(self: &Arc<Self>) -> redis::RedisResult<redis::aio::PubSub> {
        let known = lock(&self.current).as_ref().map(|c| c.client.clone());
        let client = match known {
            Some(c) => c,
            None => {
                self.resolve().await?;
                lock(&self.current)
                    .as_ref()
                    .map(|c| c.client.clone())
                    .ok_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::Client, "no redis primary"))
                    })?
            }
        };
        client.get_async_pubsub().await
    }

    /// Starts a resolution in the background unless one is running or the
    /// last one was less than [`MIN_RESOLVE_GAP`] ago.
    pub(crate) fn resolve_soon(self: &Arc<Self>) {
        if lock(&self.last_resolve).is_some_and(|t| t.elapsed() < MIN_RESOLVE_GAP) {
            return;
        }
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.resolve().await {
                tracing::warn!(error = %e, "cannot find the redis primary through the sentinels");
            }
            this.resolving.store(false, Ordering::Release);
        });
    }

    /// Asks the sentinels for the primary and switches to it if it moved.
    async fn resolve(&self) -> redis::RedisResult<()> {
        *lock(&self.last_resolve) = Some(Instant::now());
        let found = tokio::time::timeout(self.budget * 2, async {
            self.sentinel.lock().await.async_get_client().await
        })
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "the sentinels did not answer in time"))
        })??;
        let address = found.get_connection_info().addr().to_string();
        if lock(&self.current)
            .as_ref()
            .is_some_and(|c| c.address == address)
        {
            return Ok(());
        }
        let conn =
            ConnectionManager::new_lazy_with_config(found.clone(), self.manager_config.clone())?;
        let previous = lock(&self.current).replace(Current {
            address: address.clone(),
            client: found,
            conn,
        });
        match previous {
            Some(p) => tracing::warn!(from = %p.address, to = %address, "redis primary moved"),
            None => tracing::info!(primary = %address, "redis primary found through the sentinels"),
        }
        Ok(())
    }
}

/// Stays subscribed to `+switch-master` on one sentinel and asks for a
/// resolution on every announcement, and after every reconnection (an
/// announcement may have been missed). Ends when the link is dropped.
async fn watch_switches(link: Weak<SentinelLink>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = link.upgrade() else { return };
        let budget = strong.budget;
        let subscribed = tokio::time::timeout(budget * 2, async {
            let client = strong
                .watch
                .lock()
                .await
                .async_get_sentinel_client()
                .await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(p)) => p,
            _ => {
                drop(strong);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        strong.resolve_soon();
        drop(strong);
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(_) = msg else { break };
                    let Some(strong) = link.upgrade() else { return };
                    // The announcement names the new primary, but the
                    // resolution checks it with ROLE before switching.
                    *lock(&strong.last_resolve) = None;
                    strong.resolve_soon();
                }
                _ = ping.tick() => {
                    if link.strong_count() == 0 {
                        return;
                    }
                    let pong = tokio::time::timeout(budget, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
    }
}
