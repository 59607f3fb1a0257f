//! Drives N requests through a bench app in-process (no sockets), for
//! instruction counts under `valgrind --tool=callgrind`: what a guard costs
//! per request through axum, without the kernel and the load generator that
//! make HTTP runs noisy.
//!
//! ```text
//! cargo build --release -p apikey-cache-benches --example router
//! valgrind --tool=callgrind target/release/examples/router apikey 20000
//! valgrind --tool=callgrind target/release/examples/router apikey 0
//! ```
//!
//! (Ir(N) - Ir(0)) / N is the instructions per request; compare modes
//! (`noauth`, `bearer`, `apikey`, `moka`, `quick`). Request i carries key
//! i mod 10k, a hit for every keyed mode.

use apikey_cache_benches::{app, key, KEYS};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "apikey".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let app = app(&mode).await?;
        let headers: Vec<String> = (0..KEYS).map(|i| format!("Bearer {}", key(i))).collect();
        for i in 0..n {
            let req = Request::get("/v1/whoami")
                .header("authorization", &headers[i % KEYS])
                .body(Body::empty())?;
            let res = app.clone().oneshot(req).await?;
            assert!(res.status().is_success(), "{mode}: {}", res.status());
            std::hint::black_box(res.into_body().collect().await?);
        }
        Ok(())
    })
}
