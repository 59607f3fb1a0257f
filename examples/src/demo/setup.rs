//! Everything a demo server does around its routes: logs, the store, the
//! cache, the bootstrap admin key, the Prometheus recorder, signals and the
//! final usage flush.
//!
//! ```no_run
//! use clap::Parser;
//! use apikey_cache_examples::demo::{args::DemoArgs, setup};
//!
//! # async fn run() -> Result<(), setup::SetupError> {
//! setup::init_tracing();
//! let demo = setup::Demo::start(&DemoArgs::parse()).await?;
//! // ... build the app from demo.admin, demo.orders, demo.metrics and serve
//! // until setup::shutdown_signal() ...
//! let exit = setup::flush_on_exit(demo.cache()).await;
//! # Ok(()) }
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::telemetry::{LOOKUP_DURATION, LOOKUP_DURATION_BUCKETS};
use apikey_cache::{
    check_key, ApiKeyCache, CacheConfig, Extracted, KeyAdmin, KeyId, KeyRecord, KeyStore,
    PostgresStore, Scopes, SqliteStore,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::admin::Admin;
use super::args::{redact_url, DemoArgs};
use super::orders::OrderBook;

/// How long the final usage flush may take on shutdown.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish after a shutdown signal
/// before the server closes their connections.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// The owner of the bootstrap admin key.
pub const BOOTSTRAP_OWNER: &str = "bootstrap-admin";

/// A demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The key store could not be opened or migrated.
    #[error("key store {url}: {source}")]
    Store {
        /// The URL, password redacted.
        url: String,
        /// What failed.
        #[source]
        source: apikey_cache::StoreError,
    },
    /// An `APIKEY_CACHE_*` variable or `--redis-url` is wrong.
    #[error(transparent)]
    Config(#[from] apikey_cache::ConfigError),
    /// An `APIKEY_CACHE_*` variable holds bytes that are not Unicode.
    #[error("{0} is not valid Unicode")]
    NotUnicode(String),
    /// The cache could not be built (e.g. a Redis URL the client refuses).
    #[error(transparent)]
    Cache(#[from] apikey_cache::BuildError),
    /// The bootstrap admin key cannot be a key (empty, too long, bytes
    /// outside visible ASCII).
    #[error("the bootstrap admin key is not usable as an API key ({0})")]
    BootstrapKey(&'static str),
    /// The Prometheus recorder could not be installed.
    #[error("metrics recorder: {0}")]
    Metrics(String),
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// JSON logs on stdout, filtered by `RUST_LOG` (default `info`), with the
/// audit events (target `apikey_cache::audit`) at info whatever `RUST_LOG`
/// says unless it names that target itself (`apikey_cache::audit=off`
/// silences them): see [`log_directives`]. Each event is one JSON line,
/// its details under `fields`.
pub fn init_tracing() {
    let directives = log_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_directives(None)));
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .try_init();
}

/// The demos' log filter for a `RUST_LOG` value: its directives (`info`
/// if unset), plus `apikey_cache::audit=info` unless they name the audit
/// target. An unparsable value falls back to `log_directives(None)`.
///
/// ```
/// use apikey_cache_examples::demo::setup::log_directives;
///
/// assert_eq!(log_directives(None), "info,apikey_cache::audit=info");
/// assert_eq!(log_directives(Some("warn")), "warn,apikey_cache::audit=info");
/// assert_eq!(log_directives(Some("warn,apikey_cache::audit=off")), "warn,apikey_cache::audit=off");
/// ```
pub fn log_directives(rust_log: Option<&str>) -> String {
    let base = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    if base.contains(apikey_cache::audit::TARGET) {
        base.to_owned()
    } else {
        format!("{base},{}=info", apikey_cache::audit::TARGET)
    }
}

/// The key store behind a URL, both as the admin side and as the cache's
/// read side (two handles on one store).
#[derive(Clone)]
pub struct OpenedStore {
    /// Issuing and withdrawing keys.
    pub admin: Arc<dyn KeyAdmin>,
    /// What the cache reads through.
    pub reader: Arc<dyn KeyStore>,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore").finish_non_exhaustive()
    }
}

/// Opens `postgres://...` as a [`PostgresStore`], anything else as a
/// [`SqliteStore`] (`sqlite://file.db` is created if missing), and runs
/// the migrations.
pub async fn open_store(url: &str) -> Result<OpenedStore, SetupError> {
    let err = |source| SetupError::Store {
        url: redact_url(url),
        source,
    };
    let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = Arc::new(PostgresStore::connect(url).await.map_err(err)?);
        OpenedStore {
            admin: store.clone(),
            reader: store,
        }
    } else {
        let store = Arc::new(SqliteStore::connect(url).await.map_err(err)?);
        OpenedStore {
            admin: store.clone(),
            reader: store,
        }
    };
    store.admin.migrate().await.map_err(err)?;
    Ok(store)
}

/// `CacheConfig::from_env()`, with `--redis-url` / `REDIS_URL` (if given)
/// in place of `APIKEY_CACHE_REDIS_URL`.
pub fn cache_config(redis_url: Option<&str>) -> Result<CacheConfig, SetupError> {
    // Not `std::env::vars()`, which panics on any variable that is not
    // Unicode, ours or not.
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with("APIKEY_CACHE_")) else {
            continue;
        };
        match value.into_string() {
            Ok(value) => vars.push((name.to_owned(), value)),
            Err(_) => return Err(SetupError::NotUnicode(name.to_owned())),
        }
    }
    if let Some(url) = redis_url {
        // Later variables win in `from_vars`, and it validates the URL.
        vars.push(("APIKEY_CACHE_REDIS_URL".to_owned(), url.to_owned()));
    }
    Ok(CacheConfig::from_vars(vars)?)
}

/// Inserts `key` with scope `admin` (owner [`BOOTSTRAP_OWNER`]) unless a
/// record already has its hash. The plaintext is never logged; a record
/// that exists but is revoked or disabled is left alone (someone withdrew
/// it on purpose).
pub async fn bootstrap_admin(
    cache: &ApiKeyCache,
    store: &dyn KeyAdmin,
    key: &str,
) -> Result<(), SetupError> {
    if let Extracted::Malformed(m) = check_key(key.as_bytes()) {
        return Err(SetupError::BootstrapKey(m.as_str()));
    }
    let hash = cache.hash_key(key);
    let store_err = |source| SetupError::Store {
        url: "(bootstrap)".to_owned(),
        source,
    };
    match store.find_by_hash(&hash).await.map_err(store_err)? {
        Some(record) => {
            if record.status != apikey_cache::KeyStatus::Active {
                tracing::warn!(
                    key_id = %record.id,
                    status = record.status.as_str(),
                    "the bootstrap admin key exists but is not active; left as it is"
                );
            } else {
                tracing::info!(key_id = %record.id, key = %hash.fingerprint(), "bootstrap admin key present");
            }
        }
        None => {
            let record = KeyRecord::new(
                KeyId::generate(),
                hash,
                BOOTSTRAP_OWNER,
                Scopes::new(["admin"]),
            );
            let stored = store.import_key(&record).await.map_err(store_err)?;
            tracing::info!(key_id = %stored.id, key = %hash.fingerprint(), "bootstrap admin key inserted");
        }
    }
    Ok(())
}

/// Installs the global Prometheus recorder (the core publishes through the
/// `metrics` facade) and keeps its histograms drained.
///
/// The lookup duration is a Prometheus histogram with the core's buckets
/// (10 µs to 5 s), not the exporter's default summary: bucket counts add up
/// across a fleet and feed `histogram_quantile`, quantiles do not. Call it
/// before building the cache: the cache describes its metrics (HELP text)
/// to the recorder installed at that time.
pub fn install_metrics() -> Result<PrometheusHandle, SetupError> {
    let err = |e: metrics_exporter_prometheus::BuildError| SetupError::Metrics(e.to_string());
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(LOOKUP_DURATION.to_owned()),
            LOOKUP_DURATION_BUCKETS,
        )
        .map_err(err)?
        .install_recorder()
        .map_err(err)?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What a demo's routes share.
#[derive(Clone)]
pub struct Demo {
    /// Admin operations (and the cache and store).
    pub admin: Admin,
    /// The orders.
    pub orders: OrderBook,
    /// The Prometheus recorder's handle, for `GET /metrics`.
    pub metrics: PrometheusHandle,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Installs the metrics recorder, opens and migrates the store, builds
    /// the cache from the environment and `args`, and inserts the bootstrap
    /// admin key. Call inside a Tokio runtime, once per process.
    pub async fn start(args: &DemoArgs) -> Result<Self, SetupError> {
        let metrics = install_metrics()?;
        let store = open_store(&args.database_url).await?;
        let config = cache_config(args.redis_url.as_deref())?;
        tracing::info!(
            database = %redact_url(&args.database_url),
            config = ?config,
            "starting"
        );
        let cache = ApiKeyCache::new(config, store.reader.clone())?;
        if let Some(key) = &args.bootstrap_admin_key {
            bootstrap_admin(&cache, &*store.admin, key).await?;
        }
        Ok(Self {
            admin: Admin::new(cache, store.admin),
            orders: OrderBook::default(),
            metrics,
        })
    }

    /// The cache.
    pub fn cache(&self) -> &ApiKeyCache {
        self.admin.cache()
    }

    /// The Prometheus text exposition, with the cache's latest counters.
    pub fn render_metrics(&self) -> String {
        // The core publishes once a second; a scrape should not lag that.
        self.cache().publish_metrics();
        self.metrics.render()
    }
}

/// A demo's whole life, whatever the framework: start ([`Demo::start`]),
/// `serve` (until [`shutdown_signal`]), then the final usage flush
/// ([`flush_on_exit`]); returns the process exit code.
pub async fn run<F, Fut>(args: &DemoArgs, serve: F) -> ExitCode
where
    F: FnOnce(Demo, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), SetupError>>,
{
    let demo = match Demo::start(args).await {
        Ok(demo) => demo,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let cache = demo.cache().clone();
    if let Err(e) = serve(demo, args.bind).await {
        tracing::error!(error = %e, "cannot serve");
        // Nothing was served, but the bootstrap may have counted nothing
        // either: still flush, then report the failure.
        let _ = flush_on_exit(&cache).await;
        return ExitCode::FAILURE;
    }
    flush_on_exit(&cache).await
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = term => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// Flushes the usage counters to the store (bounded by
/// [`FLUSH_DEADLINE`]) once the server has stopped; the process exit code:
/// success only if every counted request is durable.
pub async fn flush_on_exit(cache: &ApiKeyCache) -> ExitCode {
    // Audit events dropped by the rate limit since the last summary.
    cache.flush_audit();
    match cache.shutdown(FLUSH_DEADLINE).await {
        Ok(()) => {
            tracing::info!("usage flushed; bye");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "usage flush failed on shutdown");
            ExitCode::FAILURE
        }
    }
}
