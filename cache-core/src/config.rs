//! Configuration: a builder with the design's defaults, and `from_env()`.
//!
//! ```
//! use std::time::Duration;
//! use apikey_cache::{CacheConfig, Mode};
//!
//! let config = CacheConfig::builder()
//!     .redis_url("redis://127.0.0.1:6379")
//!     .l1_ttl(Duration::from_secs(30))
//!     .build()?;
//! assert_eq!(config.mode, Mode::Normal);
//! assert_eq!(config.negative_ttl, Duration::from_secs(30));
//!
//! let from_env = CacheConfig::from_vars([("APIKEY_CACHE_L1_TTL", "2m")])?;
//! assert_eq!(from_env.l1_ttl, Duration::from_secs(120));
//! # Ok::<(), apikey_cache::ConfigError>(())
//! ```
//!
//! | variable (`APIKEY_CACHE_` + ) | default | meaning |
//! | --- | --- | --- |
//! | `REDIS_URL` | none (L1 only) | the shared cache: `redis://`, `rediss://`, `redis+cluster://h1:p1,h2:p2,…` (`rediss+cluster://`), `redis+sentinel://s1:p1,s2:p2/<primary-name>[/db]`; `user:password@` before the hosts for AUTH/ACL |
//! | `REDIS_CA_CERT` | none (public roots) | PEM file of the CA that signs the Redis servers' certificates; replaces the public roots |
//! | `REDIS_CLIENT_CERT` | none | PEM client certificate for mutual TLS (with `REDIS_CLIENT_KEY`) |
//! | `REDIS_CLIENT_KEY` | none | PEM private key of `REDIS_CLIENT_CERT` |
//! | `KEY_PREFIX` | `apikey-cache:` | prefix of every Redis key and channel |
//! | `MODE` | `normal` | `normal` or `database_only` |
//! | `L1_CAPACITY` | `100000` | in-process entries |
//! | `L1_TTL` | `60s` | in-process entry lifetime (staleness bound if invalidations are lost) |
//! | `L2_TTL` | `300s` | Redis entry lifetime |
//! | `NEGATIVE_TTL` | `30s` | lifetime of "no such key" entries in both tiers |
//! | `REDIS_TIMEOUT` | `50ms` | budget of every Redis command |
//! | `REDIS_CONNECT_TIMEOUT` | `250ms` | budget of one connection attempt |
//! | `STORE_TIMEOUT` | `2s` | budget of one store query |
//! | `TOMBSTONE_TTL` | `10s` | how long an invalidated key blocks Redis refills |
//! | `BREAKER_THRESHOLD` | `5` | consecutive Redis failures that open the breaker |
//! | `BREAKER_COOLDOWN` | `10s` | wait before probing Redis again |
//! | `USAGE_FLUSH_INTERVAL` | `1s` | how often usage counts are flushed to Redis and the store |
//! | `STALE_IF_ERROR` | `0s` | how long past its L1 TTL a record may answer while the store is down |
//! | `PEPPER` | none | HMAC pepper for key hashes |
//! | `WARM_KEYS` | `0` (off) | how many recently used keys to preload at start, in the background |
//! | `WARM_DEADLINE` | `60s` | warming stops when this much time has passed since start |
//! | `WARM_BATCH_SIZE` | `500` | keys per store query while warming (1 to 10000) |
//! | `WARM_BATCH_PAUSE` | `20ms` | pause between two warming queries |
//! | `LEASES` | `on` | rate-limited keys answered from L1 with token leases (`on` or `off`: a Redis round trip per request) |
//! | `LEASE_MAX_TOKENS` | `1000` | the most tokens one lease holds (1 to 1000000) |
//! | `LEASE_REFILL_THRESHOLD` | `50` | refill a lease in the background once this percentage of it is left (0 to 100; 0: only when empty) |
//! | `LEASE_IDLE` | `10s` | a lease no request spent from for this long gives its tokens back (a tenth of it when the key is near its limit; 100ms to 1h) |
//!
//! **Token leases** (`limits/lease.rs`): an instance takes a batch of a
//! rate-limited key's tokens (and of its monthly quota) from Redis in one
//! script and spends them on the request path with an atomic decrement, so
//! such a key is answered from L1 like any other. The lease grows with
//! this instance's rate for the key, up to `LEASE_MAX_TOKENS`, and shrinks
//! near the limit; the fleet never admits more than the limit. Lower
//! `LEASE_MAX_TOKENS` to bound the tokens one instance can hold back from
//! the others; `off` restores one Redis round trip per limited request.
//!
//! Durations are written `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Whether the caches are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// L1, then L2, then the store.
    #[default]
    Normal,
    /// Emergency mode: every request asks the store; caches are neither read
    /// nor written.
    DatabaseOnly,
}

impl Mode {
    /// `normal` or `database_only`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::DatabaseOnly => "database_only",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "database_only" | "database-only" => Ok(Self::DatabaseOnly),
            _ => Err(ConfigError::Invalid {
                name: "MODE",
                value: s.to_owned(),
                expected: "normal or database_only",
            }),
        }
    }
}

/// A configuration value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting had a value of the wrong form.
    #[error("APIKEY_CACHE_{name}={value:?}: expected {expected}")]
    Invalid {
        /// Setting name without the `APIKEY_CACHE_` prefix.
        name: &'static str,
        /// The offending value (never a secret: the pepper is not echoed).
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Every knob of the cache. Build it with [`CacheConfig::builder`] or
/// [`CacheConfig::from_env`]; fields may be added in minor releases.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Redis URL of the shared tier; `None` = in-process cache only. One
    /// server (`redis://`, `rediss://`), a cluster (`redis+cluster://`) or
    /// a sentinel-managed primary (`redis+sentinel://`); see the table above.
    pub redis_url: Option<String>,
    /// PEM file of the CA for TLS connections to Redis (replaces the
    /// public roots); needs a `rediss` URL.
    pub redis_ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with Redis (with
    /// [`redis_client_key`](Self::redis_client_key)).
    pub redis_client_cert: Option<PathBuf>,
    /// PEM private key of [`redis_client_cert`](Self::redis_client_cert).
    pub redis_client_key: Option<PathBuf>,
    /// Prefix of every Redis key and channel.
    pub key_prefix: String,
    /// Mode at start.
    pub mode: Mode,
    /// Maximum in-process entries.
    pub l1_capacity: u64,
    /// In-process entry lifetime.
    pub l1_ttl: Duration,
    /// Redis entry lifetime.
    pub l2_ttl: Duration,
    /// Lifetime of "no such key" entries (in process: at most `l1_ttl`, the
    /// staleness bound when an invalidation is lost).
    pub negative_ttl: Duration,
    /// Budget of every Redis command.
    pub redis_timeout: Duration,
    /// Budget of one Redis connection attempt.
    pub redis_connect_timeout: Duration,
    /// Budget of one store query.
    pub store_timeout: Duration,
    /// How long an invalidation blocks Redis refills of that key.
    pub tombstone_ttl: Duration,
    /// Consecutive Redis failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// Wait before probing Redis again once the breaker is open.
    pub breaker_cooldown: Duration,
    /// How long past its L1 TTL a record may still answer while the store is
    /// down (never a "not found", never past `expires_at`, never after an
    /// invalidation). Zero turns it off.
    pub stale_if_error: Duration,
    /// How often usage counts are flushed to Redis and the store.
    pub usage_flush_interval: Duration,
    /// Cache warming: how many of the most recently used keys to preload
    /// into L1 (and Redis) at start, in the background; 0 turns it off. At
    /// most `l1_capacity` are loaded. See `ApiKeyCache::warming`.
    pub warm_keys: u64,
    /// Warming stops (reported `done`, with a warning) once this much time
    /// has passed since the cache was built.
    pub warm_deadline: Duration,
    /// Keys per store query while warming: the bound on one query's load.
    pub warm_batch_size: u64,
    /// Pause between two warming queries, to leave the store room for
    /// requests.
    pub warm_batch_pause: Duration,
    /// HMAC pepper for key hashes.
    pub pepper: Option<String>,
    /// Token leases for rate-limited keys (see the module docs); `false`:
    /// one Redis round trip per limited request.
    pub leases: bool,
    /// The most tokens one lease holds (1 to 1,000,000).
    pub lease_max_tokens: u64,
    /// A lease is refilled in the background once this percentage of it is
    /// left (0 to 100; 0: only once it is empty).
    pub lease_refill_threshold: u8,
    /// A lease no request spent from for this long gives its tokens back to
    /// the fleet (a tenth of it when the key is near its limit); 100 ms to
    /// 1 h. Shorter strands fewer tokens when traffic moves to other
    /// instances; longer saves Redis calls for keys used in bursts. A lease
    /// lasts 30 s after its last refill: past that, idle tokens lapse
    /// instead (counted as spent).
    pub lease_idle: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_ca_cert: None,
            redis_client_cert: None,
            redis_client_key: None,
            key_prefix: "apikey-cache:".to_owned(),
            mode: Mode::Normal,
            l1_capacity: 100_000,
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            redis_timeout: Duration::from_millis(50),
            redis_connect_timeout: Duration::from_millis(250),
            store_timeout: Duration::from_secs(2),
            tombstone_ttl: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
            stale_if_error: Duration::ZERO,
            usage_flush_interval: Duration::from_secs(1),
            warm_keys: 0,
            warm_deadline: Duration::from_secs(60),
            warm_batch_size: 500,
            warm_batch_pause: Duration::from_millis(20),
            pepper: None,
            leases: true,
            lease_max_tokens: 1000,
            lease_refill_threshold: 50,
            lease_idle: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_ca_cert", &self.redis_ca_cert)
            .field("redis_client_cert", &self.redis_client_cert)
            .field("redis_client_key", &self.redis_client_key)
            .field("key_prefix", &self.key_prefix)
            .field("mode", &self.mode)
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("l2_ttl", &self.l2_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("redis_timeout", &self.redis_timeout)
            .field("redis_connect_timeout", &self.redis_connect_timeout)
            .field("store_timeout", &self.store_timeout)
            .field("tombstone_ttl", &self.tombstone_ttl)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("stale_if_error", &self.stale_if_error)
            .field("usage_flush_interval", &self.usage_flush_interval)
            .field("warm_keys", &self.warm_keys)
            .field("warm_deadline", &self.warm_deadline)
            .field("warm_batch_size", &self.warm_batch_size)
            .field("warm_batch_pause", &self.warm_batch_pause)
            .field("pepper", &self.pepper.as_ref().map(|_| "<redacted>"))
            .field("leases", &self.leases)
            .field("lease_max_tokens", &self.lease_max_tokens)
            .field("lease_refill_threshold", &self.lease_refill_threshold)
            .field("lease_idle", &self.lease_idle)
            .finish()
    }
}

/// `redis://user:secret@host` -> `redis://user:***@host`.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl CacheConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> CacheConfigBuilder {
        CacheConfigBuilder(Self::default())
    }

    /// Reads `APIKEY_CACHE_*` from the process environment; unset variables
    /// keep their defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        // `std::env::vars()` panics on any variable that is not Unicode,
        // ours or not: read them raw, and refuse only our own.
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str().filter(|k| k.starts_with("APIKEY_CACHE_")) else {
                continue;
            };
            let name = k.trim_start_matches("APIKEY_CACHE_").to_owned();
            match v.into_string() {
                Ok(v) => vars.push((k.to_owned(), v)),
                Err(raw) => {
                    let value = if name == "PEPPER" {
                        "<redacted>".to_owned()
                    } else {
                        raw.to_string_lossy().into_owned()
                    };
                    return Err(ConfigError::Invalid {
                        name: leak_name(&name),
                        value,
                        expected: "valid UTF-8",
                    });
                }
            }
        }
        Self::from_vars(vars)
    }

    /// Like [`from_env`](Self::from_env), from any list of variables (names
    /// with the `APIKEY_CACHE_` prefix; others are ignored).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut c = Self::default();
        for (k, v) in vars {
            let Some(name) = k.as_ref().strip_prefix("APIKEY_CACHE_") else {
                continue;
            };
            let v = v.as_ref();
            match name {
                "REDIS_URL" => c.redis_url = (!v.trim().is_empty()).then(|| v.trim().to_owned()),
                "REDIS_CA_CERT" => c.redis_ca_cert = path_var(v),
                "REDIS_CLIENT_CERT" => c.redis_client_cert = path_var(v),
                "REDIS_CLIENT_KEY" => c.redis_client_key = path_var(v),
                "KEY_PREFIX" => c.key_prefix = v.to_owned(),
                "MODE" => c.mode = v.parse()?,
                "L1_CAPACITY" => c.l1_capacity = parse_num("L1_CAPACITY", v)?,
                "L1_TTL" => c.l1_ttl = parse_duration_var("L1_TTL", v)?,
                "L2_TTL" => c.l2_ttl = parse_duration_var("L2_TTL", v)?,
                "NEGATIVE_TTL" => c.negative_ttl = parse_duration_var("NEGATIVE_TTL", v)?,
                "REDIS_TIMEOUT" => c.redis_timeout = parse_duration_var("REDIS_TIMEOUT", v)?,
                "REDIS_CONNECT_TIMEOUT" => {
                    c.redis_connect_timeout = parse_duration_var("REDIS_CONNECT_TIMEOUT", v)?
                }
                "STORE_TIMEOUT" => c.store_timeout = parse_duration_var("STORE_TIMEOUT", v)?,
                "TOMBSTONE_TTL" => c.tombstone_ttl = parse_duration_var("TOMBSTONE_TTL", v)?,
                "BREAKER_THRESHOLD" => {
                    c.breaker_threshold = parse_num::<u32>("BREAKER_THRESHOLD", v)?.max(1)
                }
                "BREAKER_COOLDOWN" => {
                    c.breaker_cooldown = parse_duration_var("BREAKER_COOLDOWN", v)?
                }
                "STALE_IF_ERROR" => c.stale_if_error = parse_duration_var("STALE_IF_ERROR", v)?,
                "USAGE_FLUSH_INTERVAL" => {
                    c.usage_flush_interval = parse_duration_var("USAGE_FLUSH_INTERVAL", v)?
                }
                "WARM_KEYS" => c.warm_keys = parse_num("WARM_KEYS", v)?,
                "WARM_DEADLINE" => c.warm_deadline = parse_duration_var("WARM_DEADLINE", v)?,
                "WARM_BATCH_SIZE" => c.warm_batch_size = parse_num("WARM_BATCH_SIZE", v)?,
                "WARM_BATCH_PAUSE" => {
                    c.warm_batch_pause = parse_duration_var("WARM_BATCH_PAUSE", v)?
                }
                "PEPPER" => c.pepper = (!v.is_empty()).then(|| v.to_owned()),
                "LEASES" => c.leases = parse_switch("LEASES", v)?,
                "LEASE_MAX_TOKENS" => c.lease_max_tokens = parse_num("LEASE_MAX_TOKENS", v)?,
                "LEASE_REFILL_THRESHOLD" => {
                    c.lease_refill_threshold = parse_num("LEASE_REFILL_THRESHOLD", v)?
                }
                "LEASE_IDLE" => c.lease_idle = parse_duration_var("LEASE_IDLE", v)?,
                _ => {}
            }
        }
        c.validate()
    }

    /// The longest one load may take: a Redis read and a Redis fill (each
    /// two command budgets: a script's first call also loads it) around one
    /// store query. Waiters on a load give up a little after it, and a
    /// tombstone must outlive it (see [`validate`](Self::validate)).
    pub fn load_budget(&self) -> Duration {
        self.store_timeout
            .saturating_add(self.redis_timeout.saturating_mul(4))
    }

    /// Checks the settings together; [`CacheConfigBuilder::build`],
    /// [`from_env`](Self::from_env) and the cache's constructor call it, so a
    /// configuration assembled field by field is checked too.
    ///
    /// Refused: durations over 100 years (deadlines are `now + duration`,
    /// which must not overflow), zero timeouts, a zero flush interval or L1
    /// capacity, and a `tombstone_ttl` not longer than
    /// [`load_budget`](Self::load_budget): a load that read the old record
    /// must not be able to outlive the tombstone that blocks its refill.
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey_cache::CacheConfig;
    ///
    /// let short = CacheConfig::builder().tombstone_ttl(Duration::from_secs(1)).build();
    /// assert!(short.is_err(), "a 1 s tombstone cannot outlive a 2 s store timeout");
    /// ```
    pub fn validate(self) -> Result<Self, ConfigError> {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        let durations = [
            ("L1_TTL", self.l1_ttl),
            ("L2_TTL", self.l2_ttl),
            ("NEGATIVE_TTL", self.negative_ttl),
            ("REDIS_TIMEOUT", self.redis_timeout),
            ("REDIS_CONNECT_TIMEOUT", self.redis_connect_timeout),
            ("STORE_TIMEOUT", self.store_timeout),
            ("TOMBSTONE_TTL", self.tombstone_ttl),
            ("BREAKER_COOLDOWN", self.breaker_cooldown),
            ("STALE_IF_ERROR", self.stale_if_error),
            ("USAGE_FLUSH_INTERVAL", self.usage_flush_interval),
            ("WARM_DEADLINE", self.warm_deadline),
            ("WARM_BATCH_PAUSE", self.warm_batch_pause),
        ];
        for (name, d) in durations {
            if d > CENTURY {
                return Err(ConfigError::Invalid {
                    name,
                    value: format!("{}s", d.as_secs()),
                    expected: "at most 100 years",
                });
            }
        }
        for (name, d) in [
            ("REDIS_TIMEOUT", self.redis_timeout),
            ("REDIS_CONNECT_TIMEOUT", self.redis_connect_timeout),
            ("STORE_TIMEOUT", self.store_timeout),
            ("WARM_DEADLINE", self.warm_deadline),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    name,
                    value: "0".into(),
                    expected: "a positive duration",
                });
            }
        }
        if self.tombstone_ttl <= self.load_budget() {
            return Err(ConfigError::Invalid {
                name: "TOMBSTONE_TTL",
                value: format!("{:?}", self.tombstone_ttl),
                expected:
                    "longer than STORE_TIMEOUT + 4 x REDIS_TIMEOUT (the longest a load may take)",
            });
        }
        self.validate_redis()?;
        if self.usage_flush_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "USAGE_FLUSH_INTERVAL",
                value: "0".into(),
                expected: "a positive duration",
            });
        }
        if !(1..=MAX_WARM_BATCH_SIZE).contains(&self.warm_batch_size) {
            return Err(ConfigError::Invalid {
                name: "WARM_BATCH_SIZE",
                value: self.warm_batch_size.to_string(),
                expected: "from 1 to 10000",
            });
        }
        if self.l1_capacity == 0 {
            return Err(ConfigError::Invalid {
                name: "L1_CAPACITY",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        if !(1..=MAX_LEASE_TOKENS).contains(&self.lease_max_tokens) {
            return Err(ConfigError::Invalid {
                name: "LEASE_MAX_TOKENS",
                value: self.lease_max_tokens.to_string(),
                expected: "from 1 to 1000000",
            });
        }
        if self.lease_refill_threshold > 100 {
            return Err(ConfigError::Invalid {
                name: "LEASE_REFILL_THRESHOLD",
                value: self.lease_refill_threshold.to_string(),
                expected: "a percentage, from 0 to 100",
            });
        }
        if !(MIN_LEASE_IDLE..=MAX_LEASE_IDLE).contains(&self.lease_idle) {
            return Err(ConfigError::Invalid {
                name: "LEASE_IDLE",
                value: format!("{:?}", self.lease_idle),
                expected: "from 100ms to 1h",
            });
        }
        Ok(self)
    }
}

impl CacheConfig {
    /// The URL's form, the TLS files (readable, PEM, and only with a TLS
    /// URL), and a key prefix a cluster can use.
    fn validate_redis(&self) -> Result<(), ConfigError> {
        let tls = self.redis_tls_files();
        let Some(url) = &self.redis_url else {
            if tls.is_empty() {
                return Ok(());
            }
            return Err(ConfigError::Invalid {
                name: "REDIS_CA_CERT",
                value: "(set without REDIS_URL)".into(),
                expected: "a rediss:// or rediss+cluster:// REDIS_URL to apply to",
            });
        };
        let target = crate::l2::topology::Target::parse(url)?;
        if !tls.is_empty() && !target.uses_tls() {
            return Err(ConfigError::Invalid {
                name: "REDIS_URL",
                value: redact_url(url),
                expected: "a rediss:// or rediss+cluster:// URL, since TLS files are set",
            });
        }
        tls.load()?;
        // The first `{...}` of a key is its cluster hash tag: braces in the
        // prefix would put every key in one slot (or split one key's
        // script across slots).
        if target.kind() == crate::L2Kind::Cluster && self.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                name: "KEY_PREFIX",
                value: self.key_prefix.clone(),
                expected: "a prefix without { or } with a cluster URL (they would be its hash tag)",
            });
        }
        Ok(())
    }

    pub(crate) fn redis_tls_files(&self) -> crate::l2::topology::TlsFiles {
        crate::l2::topology::TlsFiles {
            ca_cert: self.redis_ca_cert.clone(),
            client_cert: self.redis_client_cert.clone(),
            client_key: self.redis_client_key.clone(),
        }
    }
}

/// An empty path variable is unset.
fn path_var(v: &str) -> Option<PathBuf> {
    let v = v.trim();
    (!v.is_empty()).then(|| PathBuf::from(v))
}

/// The largest warming batch: one query's worth of rows.
const MAX_WARM_BATCH_SIZE: u64 = 10_000;

/// The largest lease: tokens one instance may hold back from the fleet.
const MAX_LEASE_TOKENS: u64 = 1_000_000;
/// The shortest and longest `LEASE_IDLE`: under a sweep's period, a lease
/// would be given back between any two requests; an hour is far past a
/// lease's life.
const MIN_LEASE_IDLE: Duration = Duration::from_millis(100);
const MAX_LEASE_IDLE: Duration = Duration::from_secs(3600);

/// Our setting names are a fixed set; map a raw name onto its `'static`
/// spelling for the error (unknown names are not ours to report).
fn leak_name(name: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "REDIS_URL",
        "REDIS_CA_CERT",
        "REDIS_CLIENT_CERT",
        "REDIS_CLIENT_KEY",
        "KEY_PREFIX",
        "MODE",
        "L1_CAPACITY",
        "L1_TTL",
        "L2_TTL",
        "NEGATIVE_TTL",
        "REDIS_TIMEOUT",
        "REDIS_CONNECT_TIMEOUT",
        "STORE_TIMEOUT",
        "TOMBSTONE_TTL",
        "BREAKER_THRESHOLD",
        "BREAKER_COOLDOWN",
        "STALE_IF_ERROR",
        "USAGE_FLUSH_INTERVAL",
        "WARM_KEYS",
        "WARM_DEADLINE",
        "WARM_BATCH_SIZE",
        "WARM_BATCH_PAUSE",
        "PEPPER",
        "LEASES",
        "LEASE_MAX_TOKENS",
        "LEASE_REFILL_THRESHOLD",
    ];
    NAMES
        .iter()
        .copied()
        .find(|n| *n == name)
        .unwrap_or("(unknown)")
}

fn parse_num<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .replace('_', "")
        .parse()
        .map_err(|_| ConfigError::Invalid {
            name,
            value: v.to_owned(),
            expected: "a non-negative integer",
        })
}

fn parse_switch(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid {
            name,
            value: v.to_owned(),
            expected: "on or off",
        }),
    }
}

fn parse_duration_var(name: &'static str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).ok_or_else(|| ConfigError::Invalid {
        name,
        value: v.to_owned(),
        expected: "a duration such as 500ms, 30s, 5m or 1h",
    })
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `2d` or a bare number of seconds.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(apikey_cache::parse_duration("5m"), Some(Duration::from_secs(300)));
/// assert_eq!(apikey_cache::parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(apikey_cache::parse_duration("soon"), None);
/// ```
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// Builder for [`CacheConfig`]; every setter takes and returns `Self`.
#[derive(Debug, Clone)]
pub struct CacheConfigBuilder(CacheConfig);

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.0.$name = value;
                self
            }
        )*
    };
}

impl CacheConfigBuilder {
    /// Uses Redis at `url` as the shared tier.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.0.redis_url = Some(url.into());
        self
    }

    /// PEM file of the CA that signs the Redis servers' certificates (it
    /// replaces the public roots); needs a `rediss` URL.
    ///
    /// ```no_run
    /// let config = apikey_cache::CacheConfig::builder()
    ///     .redis_url("rediss://cache.internal:6380")
    ///     .redis_ca_cert("/etc/redis/ca.pem")
    ///     .redis_client_cert("/etc/redis/client.pem", "/etc/redis/client.key")
    ///     .build()?;
    /// # Ok::<(), apikey_cache::ConfigError>(())
    /// ```
    pub fn redis_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.redis_ca_cert = Some(path.into());
        self
    }

    /// A client certificate and its private key (PEM files) for mutual TLS
    /// with Redis.
    pub fn redis_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.0.redis_client_cert = Some(cert.into());
        self.0.redis_client_key = Some(key.into());
        self
    }

    /// Prefix of every Redis key and channel.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.0.key_prefix = prefix.into();
        self
    }

    /// HMAC pepper for key hashes.
    pub fn pepper(mut self, pepper: impl Into<String>) -> Self {
        self.0.pepper = Some(pepper.into());
        self
    }

    setters! {
        /// Mode at start.
        mode: Mode,
        /// Maximum in-process entries.
        l1_capacity: u64,
        /// In-process entry lifetime.
        l1_ttl: Duration,
        /// Redis entry lifetime.
        l2_ttl: Duration,
        /// Lifetime of "no such key" entries.
        negative_ttl: Duration,
        /// Budget of every Redis command.
        redis_timeout: Duration,
        /// Budget of one Redis connection attempt.
        redis_connect_timeout: Duration,
        /// Budget of one store query.
        store_timeout: Duration,
        /// How long an invalidation blocks Redis refills of that key.
        tombstone_ttl: Duration,
        /// Consecutive Redis failures that open the breaker.
        breaker_threshold: u32,
        /// Wait before probing Redis again.
        breaker_cooldown: Duration,
        /// How long past its L1 TTL a record may answer while the store is down.
        stale_if_error: Duration,
        /// How often usage counts are flushed.
        usage_flush_interval: Duration,
        /// How many recently used keys to preload at start (0: off).
        warm_keys: u64,
        /// When warming stops, counted from the cache's start.
        warm_deadline: Duration,
        /// Keys per store query while warming (1 to 10000).
        warm_batch_size: u64,
        /// Pause between two warming queries.
        warm_batch_pause: Duration,
        /// Token leases for rate-limited keys (default on).
        leases: bool,
        /// The most tokens one lease holds (1 to 1,000,000; default 1000).
        lease_max_tokens: u64,
        /// Refill a lease once this percentage of it is left (0 to 100;
        /// default 50).
        lease_refill_threshold: u8,
        /// Give an untouched lease's tokens back after this long (100 ms to
        /// 1 h; default 10 s).
        lease_idle: Duration,
    }

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        self.0.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults() {
        let c = CacheConfig::from_vars([
            (
                "APIKEY_CACHE_REDIS_URL",
                "rediss://u:pw@redis.internal:6380/0",
            ),
            ("APIKEY_CACHE_MODE", "database_only"),
            ("APIKEY_CACHE_L1_CAPACITY", "10_000"),
            ("APIKEY_CACHE_REDIS_TIMEOUT", "20ms"),
            ("APIKEY_CACHE_NEGATIVE_TTL", "5"),
            ("APIKEY_CACHE_PEPPER", "s3cret"),
            ("UNRELATED", "x"),
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::DatabaseOnly);
        assert_eq!(c.l1_capacity, 10_000);
        assert_eq!(c.redis_timeout, Duration::from_millis(20));
        assert_eq!(c.negative_ttl, Duration::from_secs(5));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("pw@"), "{dbg}");
        // Every setting is shown, secrets as redacted.
        assert!(dbg.contains(r#"pepper: Some("<redacted>")"#), "{dbg}");
        assert!(dbg.contains("lease_idle: 10s"), "{dbg}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (k, v) in [
            ("APIKEY_CACHE_L1_TTL", "forever"),
            ("APIKEY_CACHE_MODE", "chaos"),
            ("APIKEY_CACHE_L1_CAPACITY", "-1"),
            ("APIKEY_CACHE_REDIS_URL", "http://x"),
            ("APIKEY_CACHE_L1_CAPACITY", "0"),
        ] {
            assert!(CacheConfig::from_vars([(k, v)]).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn settings_that_could_overflow_or_outrun_a_tombstone_are_refused() {
        let century = Duration::from_secs(100 * 365 * 86_400);
        assert!(CacheConfig::builder().l1_ttl(century).build().is_ok());
        for bad in [
            CacheConfig::builder().l1_ttl(century + Duration::from_secs(1)),
            CacheConfig::builder().stale_if_error(Duration::MAX),
            CacheConfig::builder().redis_timeout(Duration::MAX),
            CacheConfig::builder().redis_timeout(Duration::ZERO),
            CacheConfig::builder().store_timeout(Duration::ZERO),
            // The default load budget is 2 s + 4 x 50 ms.
            CacheConfig::builder().tombstone_ttl(Duration::from_millis(2200)),
            CacheConfig::builder().store_timeout(Duration::from_secs(10)),
        ] {
            assert!(bad.clone().build().is_err(), "{bad:?}");
        }
        let c = CacheConfig::builder()
            .tombstone_ttl(Duration::from_millis(2201))
            .build()
            .unwrap();
        assert_eq!(c.load_budget(), Duration::from_millis(2200));
        assert!(CacheConfig::from_vars([("APIKEY_CACHE_TOMBSTONE_TTL", "1s")]).is_err());
        // Assembled field by field: checked when the cache is built.
        let raw = CacheConfig {
            l2_ttl: Duration::MAX,
            ..CacheConfig::default()
        };
        assert!(raw.clone().validate().is_err());
        let store = std::sync::Arc::new(crate::MemoryStore::new());
        assert!(matches!(
            crate::ApiKeyCache::new(raw, store),
            Err(crate::BuildError::Config(_))
        ));
    }

    #[test]
    fn warming_settings() {
        let c = CacheConfig::from_vars([
            ("APIKEY_CACHE_WARM_KEYS", "10_000"),
            ("APIKEY_CACHE_WARM_DEADLINE", "2m"),
            ("APIKEY_CACHE_WARM_BATCH_SIZE", "250"),
            ("APIKEY_CACHE_WARM_BATCH_PAUSE", "0"),
        ])
        .unwrap();
        assert_eq!(c.warm_keys, 10_000);
        assert_eq!(c.warm_deadline, Duration::from_secs(120));
        assert_eq!(c.warm_batch_size, 250);
        assert_eq!(c.warm_batch_pause, Duration::ZERO);
        let d = CacheConfig::default();
        assert_eq!(d.warm_keys, 0, "off unless asked for");
        assert_eq!(
            (d.warm_deadline, d.warm_batch_size, d.warm_batch_pause),
            (Duration::from_secs(60), 500, Duration::from_millis(20))
        );
        for (k, v) in [
            ("APIKEY_CACHE_WARM_KEYS", "many"),
            ("APIKEY_CACHE_WARM_KEYS", "-1"),
            ("APIKEY_CACHE_WARM_BATCH_SIZE", "0"),
            ("APIKEY_CACHE_WARM_BATCH_SIZE", "10001"),
            ("APIKEY_CACHE_WARM_DEADLINE", "0s"),
            ("APIKEY_CACHE_WARM_DEADLINE", "never"),
            ("APIKEY_CACHE_WARM_BATCH_PAUSE", "36600d"),
        ] {
            let err = CacheConfig::from_vars([(k, v)]).unwrap_err();
            let ConfigError::Invalid { name, .. } = err;
            assert_eq!(format!("APIKEY_CACHE_{name}"), k, "{v}");
        }
        assert!(CacheConfig::builder()
            .warm_keys(1)
            .warm_batch_size(10_000)
            .build()
            .is_ok());
    }

    #[test]
    fn lease_settings() {
        let d = CacheConfig::default();
        assert!(d.leases, "on unless turned off");
        assert_eq!((d.lease_max_tokens, d.lease_refill_threshold), (1000, 50));
        let c = CacheConfig::from_vars([
            ("APIKEY_CACHE_LEASES", "off"),
            ("APIKEY_CACHE_LEASE_MAX_TOKENS", "10_000"),
            ("APIKEY_CACHE_LEASE_REFILL_THRESHOLD", "0"),
            ("APIKEY_CACHE_LEASE_IDLE", "500ms"),
        ])
        .unwrap();
        assert!(!c.leases);
        assert_eq!((c.lease_max_tokens, c.lease_refill_threshold), (10_000, 0));
        assert_eq!(c.lease_idle, Duration::from_millis(500));
        assert_eq!(d.lease_idle, Duration::from_secs(10));
        for on in ["on", "ON", "true", "1", "yes"] {
            assert!(
                CacheConfig::from_vars([("APIKEY_CACHE_LEASES", on)])
                    .unwrap()
                    .leases
            );
        }
        for (k, v) in [
            ("APIKEY_CACHE_LEASES", "maybe"),
            ("APIKEY_CACHE_LEASE_MAX_TOKENS", "0"),
            ("APIKEY_CACHE_LEASE_MAX_TOKENS", "1000001"),
            ("APIKEY_CACHE_LEASE_MAX_TOKENS", "-5"),
            ("APIKEY_CACHE_LEASE_REFILL_THRESHOLD", "101"),
            ("APIKEY_CACHE_LEASE_REFILL_THRESHOLD", "256"),
            ("APIKEY_CACHE_LEASE_IDLE", "99ms"),
            ("APIKEY_CACHE_LEASE_IDLE", "3601s"),
            ("APIKEY_CACHE_LEASE_IDLE", "soon"),
        ] {
            let err = CacheConfig::from_vars([(k, v)]).unwrap_err();
            let ConfigError::Invalid { name, .. } = err;
            assert_eq!(format!("APIKEY_CACHE_{name}"), k, "{v}");
        }
        assert!(CacheConfig::builder()
            .lease_max_tokens(1_000_000)
            .lease_refill_threshold(100)
            .lease_idle(Duration::from_millis(100))
            .build()
            .is_ok());
        assert!(CacheConfig::builder()
            .lease_idle(Duration::from_secs(3600))
            .build()
            .is_ok());
        assert!(CacheConfig::builder().lease_max_tokens(0).build().is_err());
        assert!(CacheConfig::builder()
            .lease_refill_threshold(101)
            .build()
            .is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 10s "), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10 s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
