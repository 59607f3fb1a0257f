//! [`ActixHeaders`]: an actix-web request's headers (and query string) as
//! the core's [`HeaderSource`], so the core's one key extractor reads actix
//! requests too.
//!
//! A newtype because the orphan rule forbids implementing the core's trait
//! for actix's `HeaderMap` here (and the core does not depend on actix).
//!
//! ```
//! use apikey_cache::{Extracted, KeyExtractor};
//! use apikey_cache_actix::ActixHeaders;
//! use actix_web::test::TestRequest;
//!
//! let req = TestRequest::default()
//!     .insert_header(("authorization", "Bearer ak_live123"))
//!     .to_http_request();
//! let source = ActixHeaders::from_request(&req);
//! assert_eq!(KeyExtractor::default().extract(&source), Extracted::Key("ak_live123"));
//! ```

use actix_web::http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use actix_web::HttpRequest;
use apikey_cache::{HeaderLookup, HeaderSource};

/// A request's headers, and optionally its query string, as a
/// [`HeaderSource`]: pass it to [`ApiKeyCache::verify`](apikey_cache::ApiKeyCache::verify)
/// or [`verify_now`](apikey_cache::ApiKeyCache::verify_now) when checking a
/// key outside [`ApiKeyAuth`](crate::ApiKeyAuth).
///
/// ```
/// use std::sync::Arc;
/// use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore, Outcome, RequiredScopes};
/// use apikey_cache_actix::ActixHeaders;
/// use actix_web::test::TestRequest;
///
/// # actix_web::rt::System::new().block_on(async {
/// let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
/// let req = TestRequest::default().to_http_request();
/// let outcome = cache.verify(&ActixHeaders::new(req.headers()), &RequiredScopes::none()).await;
/// assert_eq!(outcome, Outcome::Missing);
/// # });
/// ```
#[derive(Clone, Copy)]
pub struct ActixHeaders<'a> {
    headers: &'a HeaderMap,
    query: Option<&'a str>,
}

impl<'a> ActixHeaders<'a> {
    /// Headers only: a query-parameter key source finds nothing.
    ///
    /// ```
    /// use actix_web::http::header::HeaderMap;
    /// use apikey_cache::{Extracted, KeyExtractor};
    /// use apikey_cache_actix::ActixHeaders;
    ///
    /// let headers = HeaderMap::new();
    /// assert_eq!(KeyExtractor::default().extract(&ActixHeaders::new(&headers)), Extracted::Missing);
    /// ```
    pub fn new(headers: &'a HeaderMap) -> Self {
        Self {
            headers,
            query: None,
        }
    }

    /// A request's headers and its query string (read only if the cache's
    /// [`KeyExtractor`](apikey_cache::KeyExtractor) has a query source).
    ///
    /// ```
    /// use actix_web::test::TestRequest;
    /// use apikey_cache::{Extracted, KeyExtractor, KeySource};
    /// use apikey_cache_actix::ActixHeaders;
    ///
    /// let req = TestRequest::with_uri("/v1/orders?api_key=ak_q").to_http_request();
    /// let from_query = KeyExtractor::new(vec![KeySource::Query("api_key".into())]);
    /// assert_eq!(from_query.extract(&ActixHeaders::from_request(&req)), Extracted::Key("ak_q"));
    /// // Off by default: keys in URLs end up in access logs.
    /// assert_eq!(KeyExtractor::default().extract(&ActixHeaders::from_request(&req)), Extracted::Missing);
    /// ```
    pub fn from_request(req: &'a HttpRequest) -> Self {
        Self {
            headers: req.headers(),
            query: Some(req.query_string()),
        }
    }
}

// Never prints header values: one of them may be a presented key.
impl std::fmt::Debug for ActixHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActixHeaders")
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl HeaderSource for ActixHeaders<'_> {
    #[inline]
    fn header(&self, name: &str) -> HeaderLookup<'_> {
        // Looking up by `&str` parses the name on every request; the default
        // sources get prebuilt names.
        static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
        let values = match name {
            "authorization" => self.headers.get_all(AUTHORIZATION),
            "x-api-key" => self.headers.get_all(&X_API_KEY),
            other => self.headers.get_all(other),
        };
        HeaderLookup::from_values(values.map(|v| v.as_bytes()))
    }

    fn query(&self) -> Option<&str> {
        self.query
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use actix_web::test::TestRequest;
    use apikey_cache::{Extracted, KeyExtractor, KeySource, Malformed};

    #[test]
    fn duplicated_headers_are_many() {
        let req = TestRequest::default()
            .append_header(("x-api-key", "a"))
            .append_header(("x-api-key", "b"))
            .to_http_request();
        let source = ActixHeaders::from_request(&req);
        assert_eq!(source.header("x-api-key"), HeaderLookup::Many);
        assert_eq!(
            KeyExtractor::default().extract(&source),
            Extracted::Malformed(Malformed::Duplicated)
        );
    }

    #[test]
    fn custom_header_names() {
        let req = TestRequest::default()
            .insert_header(("X-Service-Token", "t"))
            .to_http_request();
        let ex = KeyExtractor::new(vec![KeySource::Header("X-Service-Token".into())]);
        assert_eq!(
            ex.extract(&ActixHeaders::from_request(&req)),
            Extracted::Key("t")
        );
        // A name that is not a valid header name finds nothing, no panic.
        let source = ActixHeaders::from_request(&req);
        assert_eq!(source.header("not a name"), HeaderLookup::Absent);
    }

    #[test]
    fn debug_never_prints_values() {
        let req = TestRequest::default()
            .insert_header(("x-api-key", "ak_s3cr3t"))
            .to_http_request();
        let shown = format!("{:?}", ActixHeaders::from_request(&req));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
