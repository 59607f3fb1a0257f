//! Shared fixtures: a memory store and a manual clock with a cache over
//! them, key issuing, a store that is down, requests and decoded responses.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

// The outcome table as every adapter's tests expect it (the tower layer's
// include the same file).
#[path = "../../../cache-core/tests/support/expectations.rs"]
pub mod expectations;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use apikey_cache::{
    async_trait, ApiKeyCache, CreatedKey, KeyAdmin, KeyHash, KeyId, KeyRecord, KeyStore,
    ManualClock, MemoryStore, NewKey, StoreError, UsageBatch,
};
use time::macros::datetime;
use time::OffsetDateTime;

/// 23:00 UTC on the last day of a month: a quota refused now resets in
/// exactly one hour.
pub const START: OffsetDateTime = datetime!(2030-01-31 23:00 UTC);

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

/// A cache over a store that is down, nothing cached.
pub fn cache_over_a_down_store() -> ApiKeyCache {
    ApiKeyCache::builder(Arc::new(DownStore))
        .clock(Arc::new(ManualClock::new(START)))
        .build()
        .unwrap()
}

/// A store that is down: every call fails.
pub struct DownStore;

fn down() -> StoreError {
    StoreError::unavailable(std::io::Error::other("down"))
}

#[async_trait]
impl KeyStore for DownStore {
    async fn find_by_hash(&self, _hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Err(down())
    }
    async fn find_by_id(&self, _id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Err(down())
    }
    async fn list_by_owner(&self, _owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Err(down())
    }
    async fn record_usage(&self, _batch: &UsageBatch) -> Result<(), StoreError> {
        Err(down())
    }
}

pub fn bearer(path: &str, key: &str) -> TestRequest {
    TestRequest::get()
        .uri(path)
        .insert_header(("authorization", format!("Bearer {key}")))
}

pub fn anonymous(path: &str) -> TestRequest {
    TestRequest::get().uri(path)
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

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Checks this answer against a row of the outcome table.
    pub fn expect(&self, expected: &expectations::Expected) {
        expected.check(
            self.status.as_u16(),
            |name| self.header(name).map(str::to_owned),
            &self.json(),
        );
    }
}

/// Sends `req` through an app from `test::init_service` and reads the whole
/// answer.
pub async fn send<S, B>(app: &S, req: TestRequest) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = test::read_body(res).await.to_vec();
    Answer {
        status,
        headers,
        body,
    }
}
