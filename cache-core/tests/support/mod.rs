#![allow(dead_code, unreachable_pub)]

pub mod capture;
pub mod deploy;
pub mod gated;
pub mod hold_proxy;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod ports;
pub mod proxy;
pub mod redis;
pub mod store;

use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds; panics after 10 s. For conditions
/// that become true through background tasks (pub/sub delivery, breaker
/// probes), where there is nothing to await directly.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Like [`wait_until`], for a condition that has to await (a request).
pub async fn wait_until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
