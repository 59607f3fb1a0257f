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
//! setting sizes both frameworks' servers under `ab-bench`.

use apikey_cache_benches::actix::ActixApp;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "apikey".into());
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8080".into())
        .parse()?;
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(n) => n.parse()?,
        Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
    };
    actix_web::rt::System::new().block_on(async move {
        // One app (and one cache) for every worker.
        let app = ActixApp::new(&mode).await?;
        actix_web::HttpServer::new(move || {
            let app = app.clone();
            actix_web::App::new().configure(move |cfg| app.configure(cfg))
        })
        .workers(workers)
        .bind(("127.0.0.1", port))?
        .run()
        .await?;
        Ok(())
    })
}
