//! Black-box tests of `axum-demo` against the design's HTTP contract: the
//! built binary, with its own `redis-server` and PostgreSQL database per
//! test. The checks themselves are in `contract/`, shared with the other
//! demo servers.

mod contract;
mod support;

contract::contract_suite!(env!("CARGO_BIN_EXE_axum-demo"));
