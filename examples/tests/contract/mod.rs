//! The design's HTTP contract as black-box checks, each a function of the
//! demo binary's path so every demo server (`axum-demo`,
//! `actix-demo`) runs the same suite: a test file per binary is one
//! [`contract_suite!`] line (see `axum_demo.rs`), and a mixed fleet calls
//! [`fleet::two_instances_act_as_one_fleet`] with two different binaries.
//!
//! Each check starts what it needs itself (its own `redis-server`, its own
//! PostgreSQL database, the demo on a free port) and waits with bounded
//! polling, never fixed sleeps.
// `unused_macros`: the mixed-fleet test calls the checks, not the suite.
#![allow(dead_code, unreachable_pub, unused_macros, clippy::unwrap_used)]

pub mod access;
pub mod audit;
pub mod fleet;
pub mod lifecycle;
pub mod metrics;
pub mod operations;
pub mod owner_lists;
pub mod topologies;

/// One `#[tokio::test]` per check, each run against the binary `$bin`
/// (e.g. `env!("CARGO_BIN_EXE_axum-demo")`); the fleet check runs two
/// instances of it. Expects `mod contract; mod support;` at the crate root.
macro_rules! contract_suite {
    ($bin:expr) => {
        $crate::contract::contract_suite!(@tests $bin;
            access::keys_scopes_and_rejections,
            access::rate_limit_and_quota,
            access::bad_http_input_is_4xx_never_5xx,
            lifecycle::revocation_owner_revocation_and_rotation,
            lifecycle::sigterm_flushes_usage_and_exits_zero,
            lifecycle::in_flight_request_is_answered_after_sigterm,
            operations::mode_health_metrics_and_request_ids,
            operations::starts_on_embedded_defaults,
            operations::fleet_mode_without_redis_is_refused,
            operations::store_outage_health_and_unknown_keys,
            operations::settings_from_the_environment,
            metrics::metrics_exposition,
            owner_lists::owner_key_list,
            audit::audit_events_in_the_log,
            topologies::cluster_sentinel_and_tls_urls,
        );

        #[tokio::test]
        async fn two_instances_act_as_one_fleet() {
            $crate::contract::fleet::two_instances_act_as_one_fleet($bin, $bin).await;
        }
    };
    (@tests $bin:expr; $($module:ident :: $check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::contract::$module::$check($bin).await;
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use contract_suite;
