//! [`Authenticated`]: the axum extractor for the key the layer verified.
//!
//! ```
//! use apikey_cache_tower::Authenticated;
//!
//! async fn whoami(Authenticated(key): Authenticated) -> String {
//!     format!("{} ({})", key.owner, key.id.as_str())
//! }
//! # let _: axum::routing::MethodRouter = axum::routing::get(whoami);
//! ```

use std::ops::Deref;

use apikey_cache::VerifiedKey;
use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::response::layer_missing_response;

/// The key an [`ApiKeyLayer`](crate::ApiKeyLayer) verified for this
/// request: owner, id, scopes and the rest of its record.
///
/// Only routes behind the layer have one. On a route without the layer the
/// extractor refuses with [`ApiKeyLayerMissing`] (a 500 and an error log):
/// that is a misconfiguration, and a handler written to require a key must
/// never answer without one.
///
/// The same key is in the request extensions as
/// [`apikey_cache::VerifiedKey`], for `Extension<VerifiedKey>` or non-axum
/// services.
///
/// ```
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey};
/// use apikey_cache_tower::{ApiKeyLayer, Authenticated};
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use tower::ServiceExt;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
/// let issued = store.create_key(cache.hasher(), NewKey::new("acme", ["whoami"])).await?;
///
/// let app = Router::new()
///     .route("/whoami", get(|Authenticated(key): Authenticated| async move { key.owner.clone() }))
///     .route_layer(ApiKeyLayer::new(cache));
///
/// let req = Request::get("/whoami")
///     .header("authorization", format!("Bearer {}", issued.plaintext))
///     .body(Body::empty())?;
/// let res = app.oneshot(req).await?;
/// assert_eq!(res.status(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub VerifiedKey);

impl Deref for Authenticated {
    type Target = VerifiedKey;

    fn deref(&self) -> &VerifiedKey {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiKeyLayerMissing;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<VerifiedKey>() {
            Some(key) => Ok(Self(key.clone())),
            None => {
                tracing::error!(
                    method = %parts.method,
                    path = parts.uri.path(),
                    "Authenticated extractor used on a route without ApiKeyLayer; refusing"
                );
                Err(ApiKeyLayerMissing(()))
            }
        }
    }
}

/// Rejection of [`Authenticated`] when no [`ApiKeyLayer`](crate::ApiKeyLayer)
/// ran before the handler: a 500 with the JSON body
/// `{"error": "api_key_layer_missing", "message": "..."}`.
///
/// ```
/// use apikey_cache_tower::Authenticated;
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use tower::ServiceExt;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // Forgot the layer: refused, never served.
/// let app = Router::new().route("/whoami", get(|_key: Authenticated| async { "hi" }));
/// let res = app.oneshot(Request::get("/whoami").body(Body::empty())?).await?;
/// assert_eq!(res.status(), 500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ApiKeyLayerMissing(());

impl std::fmt::Display for ApiKeyLayerMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the API key layer is not applied to this route")
    }
}

impl std::error::Error for ApiKeyLayerMissing {}

impl IntoResponse for ApiKeyLayerMissing {
    fn into_response(self) -> Response {
        layer_missing_response().map(axum_core::body::Body::new)
    }
}
