//! The side-by-side HTTP comparison in one command: see
//! [`apikey_cache_benches::compare`].
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --bin compare -- [--rounds 8] [--seconds 3]
//! ```
//!
//! It re-runs itself for what must run in a process of its own:
//! `compare --serve <axum|actix> <mode>` (a server under test, on
//! 127.0.0.1:$PORT) and `compare --memory <n>` (L1 bytes per key).

use apikey_cache_benches::compare::{self, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => {
            let (framework, mode) = match &args[1..] {
                [f, m] => (f.as_str(), m.as_str()),
                _ => return Err("usage: compare --serve <axum|actix> <mode>".into()),
            };
            let port = std::env::var("PORT")?.parse()?;
            match framework {
                "axum" => apikey_cache_benches::serve_axum(mode, port),
                "actix" => apikey_cache_benches::serve_actix(
                    mode,
                    port,
                    apikey_cache_benches::workers_from_env()?,
                ),
                other => Err(format!("unknown framework {other}").into()),
            }
        }
        Some("--memory") => {
            let n = args
                .get(1)
                .ok_or("usage: compare --memory <keys>")?
                .parse()?;
            let m = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(apikey_cache_benches::memory::measure(n, None))?;
            println!("{:.1}", m.l1_bytes_per_key);
            Ok(())
        }
        _ => {
            let options = match Options::parse(args) {
                Ok(o) => o,
                Err(usage) => {
                    eprintln!("{usage}");
                    std::process::exit(2);
                }
            };
            let report = compare::run(&options)?;
            print!("{}", report.to_markdown());
            eprintln!(
                "compare: wrote latest.json, latest.md and latest.svg to {}",
                options.out.display()
            );
            Ok(())
        }
    }
}
