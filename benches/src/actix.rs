//! The actix-web apps of the side-by-side HTTP comparison, served by
//! `actix-bench-server`: the same `GET /v1/whoami` and keys as the axum
//! ones, guarded three ways.
//!
//! ```
//! use actix_web::{test, App};
//! use apikey_cache_benches::{actix::ActixApp, key};
//!
//! # actix_web::rt::System::new().block_on(async {
//! let app = ActixApp::new("httpauth").await.unwrap();
//! let app = test::init_service(App::new().configure(|cfg| app.configure(cfg))).await;
//! let req = test::TestRequest::get()
//!     .uri("/v1/whoami")
//!     .insert_header(("authorization", format!("Bearer {}", key(7))))
//!     .to_request();
//! assert_eq!(test::call_service(&app, req).await.status(), 200);
//! # });
//! ```

use actix_web::dev::ServiceRequest;
use actix_web::{web, HttpResponse};
use actix_web_httpauth::extractors::bearer::BearerAuth;
use actix_web_httpauth::middleware::HttpAuthentication;
use apikey_cache::ApiKeyCache;
use apikey_cache_actix::{ApiKeyAuth, Authenticated};

/// The ways `GET /v1/whoami` can be guarded, as [`ActixApp::new`] builds
/// them.
pub const ACTIX_MODES: &[&str] = &["noauth", "httpauth", "apikey"];

/// One app of the comparison. Built once, then cloned into every worker's
/// `App` (clones share the cache).
#[derive(Clone, Debug)]
pub enum ActixApp {
    /// No authentication at all.
    NoAuth,
    /// actix-web-httpauth's `HttpAuthentication::bearer` with a static
    /// check (right prefix and length, no lookup): the lightest auth an
    /// actix stack can have.
    HttpAuth,
    /// `ApiKeyAuth` requiring scope `whoami`, [`crate::KEYS`] keys in L1.
    ApiKey(ApiKeyCache),
}

async fn whoami() -> HttpResponse {
    HttpResponse::Ok().body(r#"{"ok":true}"#)
}

async fn whoami_keyed(Authenticated(key): Authenticated) -> HttpResponse {
    std::hint::black_box(&key.id);
    HttpResponse::Ok().body(r#"{"ok":true}"#)
}

/// The static check: what [`crate`]'s axum `bearer` mode accepts.
async fn static_bearer(
    req: ServiceRequest,
    token: BearerAuth,
) -> Result<ServiceRequest, (actix_web::Error, ServiceRequest)> {
    let t = token.token();
    if t.len() == 43 && t.starts_with("ak_bench_") {
        Ok(req)
    } else {
        Err((
            actix_web::error::ErrorUnauthorized(r#"{"error":"invalid_api_key"}"#),
            req,
        ))
    }
}

impl ActixApp {
    /// The app for `mode` (one of [`ACTIX_MODES`]); `apikey` builds and
    /// warms a cache ([`crate::warm_cache`]), so call it inside the
    /// runtime that will run the cache's background tasks.
    pub async fn new(mode: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(match mode {
            "noauth" => Self::NoAuth,
            "httpauth" => Self::HttpAuth,
            "apikey" => Self::ApiKey(crate::warm_cache().await?),
            other => return Err(format!("unknown mode {other}: one of {ACTIX_MODES:?}").into()),
        })
    }

    /// Registers `GET /v1/whoami`, guarded as this mode says. The guard
    /// wraps the resource, as an actix user would write it.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        let resource = web::resource("/v1/whoami");
        match self {
            Self::NoAuth => cfg.service(resource.route(web::get().to(whoami))),
            Self::HttpAuth => cfg.service(
                resource
                    .wrap(HttpAuthentication::bearer(static_bearer))
                    .route(web::get().to(whoami)),
            ),
            Self::ApiKey(cache) => cfg.service(
                resource
                    .wrap(ApiKeyAuth::new(cache.clone()).require(["whoami"]))
                    .route(web::get().to(whoami_keyed)),
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    // Not `test`: with actix-web's `macros` feature (the workspace turns it
    // on for actix-demo) that name is also an attribute macro and would
    // take `#[test]`'s place.
    use actix_web::{test as actix_test, App};

    use super::*;

    /// Every mode serves a bench key, and every guarded mode refuses a
    /// request without one: a run measures what it says it measures.
    #[test]
    fn each_mode_admits_bench_keys_and_guards_refuse_the_rest() {
        actix_web::rt::System::new().block_on(async {
            for mode in ACTIX_MODES {
                let app = ActixApp::new(mode).await.unwrap();
                let svc =
                    actix_test::init_service(App::new().configure(|cfg| app.configure(cfg))).await;
                let with_key = actix_test::TestRequest::get()
                    .uri("/v1/whoami")
                    .insert_header(("authorization", format!("Bearer {}", crate::key(42))))
                    .to_request();
                assert_eq!(
                    actix_test::call_service(&svc, with_key).await.status(),
                    200,
                    "{mode}"
                );
                let bad = actix_test::TestRequest::get()
                    .uri("/v1/whoami")
                    .insert_header(("authorization", "Bearer ak_bench_nope"))
                    .to_request();
                let status = actix_test::call_service(&svc, bad).await.status().as_u16();
                if *mode == "noauth" {
                    assert_eq!(status, 200);
                } else {
                    assert_eq!(status, 401, "{mode}");
                }
            }
        });
    }
}
