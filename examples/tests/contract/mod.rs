//! The design's HTTP contract as black-box checks, each a function of the
//! demo binary's path so every demo server (`axum-demo`, later
//! `actix-demo`) runs the same suite: a test file per binary only lists
//! them (see `axum_demo.rs`).
//!
//! Each check starts what it needs itself (its own `redis-server`, its own
//! PostgreSQL database, the demo on a free port) and waits with bounded
//! polling, never fixed sleeps.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod access;
pub mod lifecycle;
pub mod operations;
