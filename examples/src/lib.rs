//! Demo programs for apikey-cache.
//!
//! # Layout
//!
//! * `src/bin/quickstart.rs`: the library without a web server: issue,
//!   verify, revoke.
//! * `src/bin/axum-demo.rs`: the design's HTTP contract served by axum with
//!   `apikey-cache-tower`.
//! * `src/bin/actix-demo.rs`: the same contract served by actix-web with
//!   `apikey-cache-actix`; only the framework glue differs.
//! * `src/bin/grpc-demo.rs` and [`grpc`]: a tonic greeter behind the same
//!   layer; rejections arrive as gRPC statuses.
//! * [`demo`]: what the demo servers share whatever the framework: flags,
//!   set-up and shutdown, JSON bodies, admin operations, orders.
//!
//! ```text
//! APIKEY_BOOTSTRAP_ADMIN_KEY=ak_change_me cargo run -p apikey-cache-examples --bin axum-demo
//! curl -s -H 'Authorization: Bearer ak_change_me' -d '{"owner":"acme","scopes":["orders:*"]}' \
//!     http://127.0.0.1:8080/admin/keys
//! ```

pub mod demo;
pub mod grpc;
