//! Shared fixtures: a memory store and a manual clock with a cache over
//! them, key issuing, requests and decoded responses.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

// The outcome table as every adapter's tests expect it (the actix
// middleware's include the same file).
#[path = "../../../cache-core/tests/support/expectations.rs"]
pub mod expectations;

use std::sync::Arc;

use apikey_cache::{
    async_trait, ApiKeyCache, CreatedKey, KeyAdmin, KeyHash, KeyId, KeyRecord, KeyStore,
    ManualClock, MemoryStore, NewKey, StoreError, UsageBatch,
};
use axum::body::Body;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// 23:00 UTC on the last day of a month: a quota refused now resets in
/// exactly one hour.
pub const START: time::OffsetDateTime = time::macros::datetime!(2030-01-31 23:00 UTC);

pub struct Fixture {
    pub store: Arc<MemoryStore>,
    pub clock: Arc<ManualClock>,
    pub cache: ApiKeyCache,
}

impl Fixture {
    pub fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(START));
        let cache = ApiKeyCache::builder(store.clone())
            .clock(clock.clone())
            .build()
            .unwrap();
        Self {
            store,
            clock,
            cache,
        }
    }

    pub async fn key(&self, scopes: &[&str]) -> CreatedKey {
        self.issue(NewKey::new("acme", scopes.iter().copied()))
            .await
    }

    pub async fn issue(&self, new: NewKey) -> CreatedKey {
        self.store
            .create_key(self.cache.hasher(), new)
            .await
            .unwrap()
    }
}

/// A store that is down: every lookup fails.
pub struct DownStore;

#[async_trait]
impl KeyStore for DownStore {
    async fn find_by_hash(&self, _hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::unavailable(std::io::Error::other("down")))
    }
    async fn find_by_id(&self, _id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::unavailable(std::io::Error::other("down")))
    }
    async fn list_by_owner(&self, _owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Err(StoreError::unavailable(std::io::Error::other("down")))
    }
    async fn record_usage(&self, _batch: &UsageBatch) -> Result<(), StoreError> {
        Err(StoreError::unavailable(std::io::Error::other("down")))
    }
}

pub fn bearer(method: &str, path: &str, key: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

pub fn anonymous(method: &str, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// Checks this answer against a row of the outcome table.
    pub fn expect(&self, expected: &expectations::Expected) {
        expected.check(
            self.status.as_u16(),
            |name| self.header(name).map(str::to_owned),
            &self.json(),
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}
