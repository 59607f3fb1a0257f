//! A tonic greeter behind `ApiKeyLayer`: issues a few keys in a memory
//! store, serves `demo.Greeter` on a loopback port, and prints what a gRPC
//! client gets for each (a reply, or the status the layer answered).
//!
//! ```text
//! cargo run -p apikey-cache-examples --bin grpc-demo
//! ```

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use apikey_cache::{ApiKeyCache, CacheConfig, KeyAdmin, MemoryStore, NewKey, RateLimit};
use apikey_cache_examples::grpc::{serve, GreeterClient, HelloRequest, GREET_SCOPE};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(CacheConfig::default(), store.clone())?;
    let greeter = store
        .create_key(cache.hasher(), NewKey::new("acme", [GREET_SCOPE]))
        .await?;
    let reader = store
        .create_key(cache.hasher(), NewKey::new("acme", ["orders:read"]))
        .await?;
    let revoked = store
        .create_key(cache.hasher(), NewKey::new("acme", [GREET_SCOPE]))
        .await?;
    store.revoke_key(&revoked.record.id).await?;
    let limited = store
        .create_key(
            cache.hasher(),
            NewKey::new("acme", [GREET_SCOPE])
                .rate_limit(RateLimit::new(1, Duration::from_secs(60))),
        )
        .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(cache, listener, async {
        let _ = stopped.await;
    }));
    println!("demo.Greeter on {addr}, requiring scope {GREET_SCOPE:?}");

    let mut client = GreeterClient::connect(format!("http://{addr}")).await?;
    let calls = [
        (
            "valid key (authorization)",
            Some(("authorization", format!("Bearer {}", greeter.plaintext))),
        ),
        (
            "valid key (x-api-key)",
            Some(("x-api-key", greeter.plaintext.clone())),
        ),
        ("no key", None),
        (
            "unknown key",
            Some(("x-api-key", "ak_not_a_real_key".to_owned())),
        ),
        (
            "revoked key",
            Some(("x-api-key", revoked.plaintext.clone())),
        ),
        ("wrong scope", Some(("x-api-key", reader.plaintext.clone()))),
        (
            "rate limited, 1st",
            Some(("x-api-key", limited.plaintext.clone())),
        ),
        (
            "rate limited, 2nd",
            Some(("x-api-key", limited.plaintext.clone())),
        ),
    ];
    for (what, metadata) in calls {
        let mut req = tonic::Request::new(HelloRequest {
            name: "grpc-demo".into(),
        });
        if let Some((name, value)) = metadata {
            req.metadata_mut().insert(name, value.parse()?);
        }
        match client.say_hello(req).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                println!(
                    "{what:<26} -> OK {:?} (key {})",
                    reply.message, reply.key_id
                );
            }
            Err(status) => {
                println!("{what:<26} -> {:?}: {}", status.code(), status.message());
            }
        }
    }

    let _ = stop.send(());
    server.await??;
    Ok(())
}
