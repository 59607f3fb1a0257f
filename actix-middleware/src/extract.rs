//! [`Authenticated`]: the extractor for the key [`ApiKeyAuth`](crate::ApiKeyAuth)
//! verified, and [`ApiKeyAuthMissing`], its refusal where no middleware ran.
//!
//! ```
//! use actix_web::web;
//! use apikey_cache_actix::Authenticated;
//!
//! async fn whoami(Authenticated(key): Authenticated) -> String {
//!     format!("{} ({})", key.owner, key.id.as_str())
//! }
//! # let _ = web::get().to(whoami);
//! ```

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use apikey_cache::VerifiedKey;

/// The key an [`ApiKeyAuth`](crate::ApiKeyAuth) verified for this request:
/// owner, id, scopes and the rest of its record.
///
/// Only routes behind the middleware have one. On a route without it the
/// extractor refuses with [`ApiKeyAuthMissing`] (a 500 and an error log):
/// that is a misconfiguration, and a handler written to require a key must
/// never answer without one. `Option<Authenticated>` makes the key optional
/// for routes that serve both.
///
/// The same key is in the request extensions as
/// [`VerifiedKey`], for `req.extensions().get::<VerifiedKey>()`.
///
/// ```
/// use std::sync::Arc;
/// use actix_web::{test, web, App};
/// use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey};
/// use apikey_cache_actix::{ApiKeyAuth, Authenticated};
///
/// # actix_web::rt::System::new().block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
/// let issued = store.create_key(cache.hasher(), NewKey::new("acme", ["whoami"])).await?;
///
/// let app = test::init_service(
///     App::new()
///         .wrap(ApiKeyAuth::new(cache))
///         .route("/whoami", web::get().to(|key: Authenticated| async move { key.owner.clone() })),
/// )
/// .await;
/// let req = test::TestRequest::get()
///     .uri("/whoami")
///     .insert_header(("authorization", format!("Bearer {}", issued.plaintext)))
///     .to_request();
/// let body = test::call_and_read_body(&app, req).await;
/// assert_eq!(body, "acme");
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

impl FromRequest for Authenticated {
    type Error = ApiKeyAuthMissing;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let key = req.extensions().get::<VerifiedKey>().cloned();
        ready(match key {
            Some(key) => Ok(Self(key)),
            None => {
                tracing::error!(
                    method = %req.method(),
                    path = req.path(),
                    "Authenticated extractor used on a route without ApiKeyAuth; refusing"
                );
                Err(ApiKeyAuthMissing(()))
            }
        })
    }
}

/// Refusal of [`Authenticated`] when no [`ApiKeyAuth`](crate::ApiKeyAuth)
/// ran before the handler: a 500 with the JSON body
/// `{"error": "api_key_layer_missing", "message": "..."}`, the same `error`
/// as the tower adapter's.
///
/// ```
/// use actix_web::{test, web, App};
/// use apikey_cache_actix::Authenticated;
///
/// # actix_web::rt::System::new().block_on(async {
/// // Forgot the middleware: refused, never served.
/// let app = test::init_service(
///     App::new().route("/whoami", web::get().to(|_key: Authenticated| async { "hi" })),
/// )
/// .await;
/// let res = test::call_service(&app, test::TestRequest::get().uri("/whoami").to_request()).await;
/// assert_eq!(res.status(), 500);
/// # });
/// ```
#[derive(Debug)]
pub struct ApiKeyAuthMissing(());

impl std::fmt::Display for ApiKeyAuthMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the API key middleware is not applied to this route")
    }
}

impl std::error::Error for ApiKeyAuthMissing {}

const MISSING_BODY: &str = r#"{"error":"api_key_layer_missing","message":"the API key middleware is not applied to this route"}"#;

impl ResponseError for ApiKeyAuthMissing {
    fn status_code(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::InternalServerError()
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(MISSING_BODY)
    }
}
