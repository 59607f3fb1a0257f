//! Command-line flags of the demo servers, each with an environment
//! fallback.
//!
//! ```
//! use clap::Parser;
//! use apikey_cache_examples::demo::args::DemoArgs;
//!
//! let args = DemoArgs::try_parse_from(["axum-demo", "--bind", "127.0.0.1:9000"]).unwrap();
//! assert_eq!(args.bind.port(), 9000);
//! ```
//!
//! The cache itself is configured by the `APIKEY_CACHE_*` variables
//! (`CacheConfig::from_env`); `--redis-url` / `REDIS_URL` overrides
//! `APIKEY_CACHE_REDIS_URL`.

use std::fmt;
use std::net::SocketAddr;

use clap::Parser;

/// The embedded default store: an SQLite file in the working directory,
/// created on first run.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://apikey-cache-demo.db";

/// Flags shared by `axum-demo` and `actix-demo`.
#[derive(Clone, Parser)]
#[command(
    version,
    about = "apikey-cache demo server: the HTTP contract of the design",
    after_help = "Every APIKEY_CACHE_* variable configures the cache (see the README)."
)]
#[non_exhaustive]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// The key store: `sqlite://file.db` (created if missing) or
    /// `postgres://user:pass@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,

    /// Redis URL of the shared cache tier (overrides APIKEY_CACHE_REDIS_URL).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// An admin key to insert (scope `admin`) if no key has its hash yet.
    #[arg(long, env = "APIKEY_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    pub bootstrap_admin_key: Option<String>,
}

// Hand-written so the bootstrap key and URL passwords never reach a log.
impl fmt::Debug for DemoArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoArgs")
            .field("bind", &self.bind)
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field(
                "bootstrap_admin_key",
                &self.bootstrap_admin_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `scheme://user:secret@host/...` -> `scheme://user:***@host/...`, for
/// logging connection URLs.
///
/// ```
/// use apikey_cache_examples::demo::args::redact_url;
///
/// assert_eq!(redact_url("postgres://app:pw@db/app"), "postgres://app:***@db/app");
/// assert_eq!(redact_url("sqlite://demo.db"), "sqlite://demo.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!(
                    "{}{user}:***{}",
                    &url[..scheme_end],
                    &url[scheme_end + at..]
                )
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults() {
        let args = DemoArgs::try_parse_from(["demo"]).unwrap();
        // The environment of whoever runs the tests may set these.
        if std::env::var_os("BIND").is_none() {
            assert_eq!(args.bind, "127.0.0.1:8080".parse().unwrap());
        }
        if std::env::var_os("DATABASE_URL").is_none() {
            assert_eq!(args.database_url, DEFAULT_DATABASE_URL);
        }
    }

    #[test]
    fn flags_win_over_defaults() {
        let args = DemoArgs::try_parse_from([
            "demo",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--database-url",
            "postgres://h/db",
        ])
        .unwrap();
        assert_eq!(args.redis_url.as_deref(), Some("redis://127.0.0.1:1"));
        assert_eq!(args.database_url, "postgres://h/db");
    }

    #[test]
    fn debug_hides_secrets() {
        let args = DemoArgs::try_parse_from([
            "demo",
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--bootstrap-admin-key",
            "ak_secret",
        ])
        .unwrap();
        let shown = format!("{args:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("ak_secret"),
            "{shown}"
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("weird"), "weird");
    }
}
