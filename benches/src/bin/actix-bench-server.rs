//! The actix-web servers of the side-by-side HTTP comparison (see
//! [`apikey_cache_benches::actix`]).
//!
//! ```text
//! actix-bench-server noauth    # no authentication at all
//! actix-bench-server httpauth  # actix-web-httpauth, a static bearer check
//! actix-bench-server apikey    # ApiKeyAuth over 10k keys, all in L1
//! ```
//!
//! Listens on 127.0.0.1:$PORT (default 8080) with as many workers as
//! `TOKIO_WORKER_THREADS` says (default: one per core), so that one
//! setting sizes both frameworks' servers under `compare`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "apikey".into());
    let port = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    let workers = apikey_cache_benches::workers_from_env()?;
    apikey_cache_benches::serve_actix(&mode, port, workers)
}
