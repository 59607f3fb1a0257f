//! Benchmarks for apikey-cache live in `benches/`; run them with
//! `cargo bench -p apikey-cache-benches`. This library is empty.
