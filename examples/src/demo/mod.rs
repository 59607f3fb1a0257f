//! The parts of the demo servers that do not depend on a web framework, so
//! `axum-demo` and `actix-demo` serve one contract (see the design's "demo
//! servers' HTTP contract") from the same code.
//!
//! * [`args`]: flags with environment fallbacks.
//! * [`setup`]: logs, store, cache, bootstrap admin key, metrics recorder,
//!   signals, the final usage flush.
//! * [`contract`]: request and response bodies, [`contract::ApiError`].
//! * [`admin`]: the admin operations (store change, then invalidation).
//! * [`orders`]: the in-memory orders behind `/v1/orders`.

pub mod admin;
pub mod args;
pub mod contract;
pub mod orders;
pub mod setup;
