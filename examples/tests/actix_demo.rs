//! Black-box tests of `actix-demo` against the design's HTTP contract: the
//! built binary, with its own `redis-server` and PostgreSQL database per
//! test. The checks themselves are in `contract/`, shared with the other
//! demo servers.
#![allow(clippy::unwrap_used)]

mod contract;
mod support;

use contract::{access, lifecycle, operations};

const BIN: &str = env!("CARGO_BIN_EXE_actix-demo");

#[tokio::test]
async fn keys_scopes_and_rejections() {
    access::keys_scopes_and_rejections(BIN).await;
}

#[tokio::test]
async fn rate_limit_and_quota() {
    access::rate_limit_and_quota(BIN).await;
}

#[tokio::test]
async fn bad_http_input_is_4xx_never_5xx() {
    access::bad_http_input_is_4xx_never_5xx(BIN).await;
}

#[tokio::test]
async fn revocation_owner_revocation_and_rotation() {
    lifecycle::revocation_owner_revocation_and_rotation(BIN).await;
}

#[tokio::test]
async fn sigterm_flushes_usage_and_exits_zero() {
    lifecycle::sigterm_flushes_usage_and_exits_zero(BIN).await;
}

#[tokio::test]
async fn mode_health_metrics_and_request_ids() {
    operations::mode_health_metrics_and_request_ids(BIN).await;
}

#[tokio::test]
async fn starts_on_embedded_defaults() {
    operations::starts_on_embedded_defaults(BIN).await;
}

#[tokio::test]
async fn fleet_mode_without_redis_is_refused() {
    operations::fleet_mode_without_redis_is_refused(BIN).await;
}
