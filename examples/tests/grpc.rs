//! gRPC through the tower layer: a real tonic client against the demo
//! greeter on a loopback port, the key sent as metadata. Rejections must
//! arrive as gRPC statuses, not as HTTP errors the client cannot read.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{
    async_trait, ApiKeyCache, CacheConfig, CreatedKey, KeyAdmin, KeyHash, KeyId, KeyRecord,
    KeyStore, MemoryStore, NewKey, RateLimit, StoreError, UsageBatch,
};
use apikey_cache_examples::grpc::{serve, GreeterClient, HelloRequest, GREET_SCOPE};
use tokio::sync::oneshot;
use tonic::Code;

/// A greeter on 127.0.0.1:0; the server stops when this is dropped.
struct Server {
    client: GreeterClient,
    _stop: oneshot::Sender<()>,
}

async fn start_server(cache: ApiKeyCache) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(cache, listener, async {
        let _ = stopped.await;
    }));
    let client = GreeterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Server {
        client,
        _stop: stop,
    }
}

struct Fixture {
    store: Arc<MemoryStore>,
    server: Server,
    cache: ApiKeyCache,
}

impl Fixture {
    async fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
        let server = start_server(cache.clone()).await;
        Self {
            store,
            server,
            cache,
        }
    }

    async fn issue(&self, new: NewKey) -> CreatedKey {
        self.store
            .create_key(self.cache.hasher(), new)
            .await
            .unwrap()
    }
}

fn hello(metadata: &[(&'static str, String)]) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest {
        name: "grpc".into(),
    });
    for (name, value) in metadata {
        req.metadata_mut().insert(*name, value.parse().unwrap());
    }
    req
}

fn bearer(key: &str) -> tonic::Request<HelloRequest> {
    hello(&[("authorization", format!("Bearer {key}"))])
}

async fn refused(client: &mut GreeterClient, req: tonic::Request<HelloRequest>) -> tonic::Status {
    match client.say_hello(req).await {
        Ok(reply) => panic!("expected a refusal, got {:?}", reply.get_ref()),
        Err(status) => status,
    }
}

#[tokio::test]
async fn valid_key_reaches_the_handler_with_its_record() {
    let mut f = Fixture::new().await;
    let key = f.issue(NewKey::new("acme", [GREET_SCOPE])).await;
    let reply = f
        .server
        .client
        .say_hello(bearer(&key.plaintext))
        .await
        .unwrap();
    let reply = reply.into_inner();
    assert_eq!(reply.message, "hello, grpc");
    assert_eq!(reply.key_id, key.record.id.as_str());
    assert_eq!(reply.owner, "acme");

    // `x-api-key` metadata works too.
    let reply = f
        .server
        .client
        .say_hello(hello(&[("x-api-key", key.plaintext.clone())]))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().key_id, key.record.id.as_str());
}

#[tokio::test]
async fn missing_key_is_unauthenticated() {
    let mut f = Fixture::new().await;
    let status = refused(&mut f.server.client, hello(&[])).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "an API key is required");
}

#[tokio::test]
async fn unknown_key_is_unauthenticated() {
    let mut f = Fixture::new().await;
    let status = refused(&mut f.server.client, bearer("ak_no_such_key")).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn revoked_key_is_unauthenticated() {
    let mut f = Fixture::new().await;
    let key = f.issue(NewKey::new("acme", [GREET_SCOPE])).await;
    f.store.revoke_key(&key.record.id).await.unwrap();
    let status = refused(&mut f.server.client, bearer(&key.plaintext)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "the API key was revoked");
}

#[tokio::test]
async fn wrong_scope_is_permission_denied_and_names_the_scope() {
    let mut f = Fixture::new().await;
    let key = f.issue(NewKey::new("acme", ["orders:read"])).await;
    let status = refused(&mut f.server.client, bearer(&key.plaintext)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        format!("the API key lacks required scopes: {GREET_SCOPE}")
    );
}

#[tokio::test]
async fn rate_limited_key_is_resource_exhausted() {
    let mut f = Fixture::new().await;
    let key = f
        .issue(
            NewKey::new("acme", [GREET_SCOPE])
                .rate_limit(RateLimit::new(1, Duration::from_secs(60))),
        )
        .await;
    f.server
        .client
        .say_hello(bearer(&key.plaintext))
        .await
        .unwrap();
    let status = refused(&mut f.server.client, bearer(&key.plaintext)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The HTTP answer's retry hint travels as metadata.
    assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
}

/// A store that is down: every lookup fails.
struct DownStore;

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

#[tokio::test]
async fn store_down_is_unavailable() {
    let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(DownStore)).unwrap();
    let mut server = start_server(cache).await;
    let status = refused(&mut server.client, bearer("ak_whatever_it_is")).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
