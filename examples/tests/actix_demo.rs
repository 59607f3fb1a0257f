//! Black-box tests of `actix-demo` against the design's HTTP contract: the
//! same checks as `axum_demo.rs` (they are in `contract/`), run against the
//! actix-web binary.

mod contract;
mod support;

contract::contract_suite!(env!("CARGO_BIN_EXE_actix-demo"));
