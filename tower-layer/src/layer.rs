//! [`ApiKeyLayer`]: the configuration, and the [`Layer`] that wraps a service
//! in [`ApiKey`].
//!
//! ```
//! use std::sync::Arc;
//! use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
//! use apikey_cache_tower::ApiKeyLayer;
//! use axum::{routing::get, Router};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
//! let app: Router = Router::new()
//!     .route("/v1/orders", get(|| async { "[]" }))
//!     .route_layer(ApiKeyLayer::new(cache).require(["orders:read"]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

use apikey_cache::{ApiKeyCache, RequiredScopes};
use tower_layer::Layer;

use crate::ApiKey;

/// What every [`ApiKey`] service built by one layer shares: one `Arc`, so
/// cloning the service (axum does, once per request) costs one atomic
/// increment whatever the configuration holds.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cache: ApiKeyCache,
    pub(crate) required: RequiredScopes,
}

/// Authenticates every request with an API key before the inner service
/// sees it; see the [crate docs](crate) for the responses.
///
/// Holds the cache (shared: clones of one [`ApiKeyCache`] are one cache) and
/// the scopes the wrapped routes require. Mount one layer per set of
/// required scopes.
///
/// ```
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
/// use apikey_cache_tower::ApiKeyLayer;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
/// // Any valid key:
/// let any_key = ApiKeyLayer::new(cache.clone());
/// // A valid key granting both scopes:
/// let writers = ApiKeyLayer::new(cache).require(["orders:read", "orders:write"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ApiKeyLayer {
    shared: Arc<Shared>,
}

impl ApiKeyLayer {
    /// Requires a valid key and no particular scope.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_tower::ApiKeyLayer;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
    /// let layer = ApiKeyLayer::new(cache);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn new(cache: ApiKeyCache) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                required: RequiredScopes::none(),
            }),
        }
    }

    /// Requires every scope in `scopes` (replacing any set before). A key
    /// scope `orders:*` grants every `orders:...` scope, `*` grants all.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
    /// use apikey_cache_tower::ApiKeyLayer;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new()))?;
    /// let admin = ApiKeyLayer::new(cache).require(["admin"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn require<I, T>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Self {
            shared: Arc::new(Shared {
                cache: self.shared.cache.clone(),
                required: RequiredScopes::new(scopes),
            }),
        }
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKey::from_parts(inner, Arc::clone(&self.shared))
    }
}
