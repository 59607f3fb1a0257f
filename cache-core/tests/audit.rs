//! Audit events (`apikey_cache::audit`): each kind with its fields, the
//! per-kind rate limit and its summaries, and no plaintext key anywhere in
//! what is logged. Output is captured as the JSON lines a JSON subscriber
//! writes, on the test's thread (current-thread runtimes, so background
//! tasks log there too).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey_cache::audit::{self, RequestInfo};
use apikey_cache::{
    ApiKeyCache, BreakerState, CacheConfig, HeaderLookup, HeaderSource, KeyAdmin, ManualClock,
    MemoryStore, Mode, NewKey, Outcome, RequiredScopes,
};
use serde_json::Value;
use support::capture::{assert_documented_fields, Captured};
use support::redis::RedisServer;
use support::wait_until;

/// A request's headers.
#[derive(Default)]
struct Req(Vec<(&'static str, String)>);

impl Req {
    fn key(key: &str) -> Self {
        Self(vec![("x-api-key", key.to_owned())])
    }

    fn bearer(key: &str) -> Self {
        Self(vec![("authorization", format!("Bearer {key}"))])
    }
}

impl HeaderSource for Req {
    fn header(&self, name: &str) -> HeaderLookup<'_> {
        let mut found = self.0.iter().filter(|(n, _)| *n == name);
        match (found.next(), found.next()) {
            (None, _) => HeaderLookup::Absent,
            (Some((_, v)), None) => HeaderLookup::One(v.as_bytes()),
            _ => HeaderLookup::Many,
        }
    }
}

fn client() -> std::net::SocketAddr {
    "10.1.2.3:4567".parse().unwrap()
}

/// Verifies `req` and audits it the way the adapters do: only refusals.
async fn request(
    cache: &ApiKeyCache,
    req: &Req,
    required: &RequiredScopes,
    route: &str,
) -> Outcome {
    let outcome = cache.verify(req, required).await;
    if !outcome.is_valid() {
        cache.audit_auth_failed(&outcome, req, || {
            RequestInfo::new("GET", route).client(Some(client()))
        });
    }
    outcome
}

fn fields(line: &Value) -> &Value {
    &line["fields"]
}

fn start() -> time::OffsetDateTime {
    time::macros::datetime!(2030-01-01 0:00 UTC)
}

#[tokio::test]
async fn auth_failures_carry_outcome_fingerprint_route_method_and_client() {
    let (log, _guard) = Captured::install();
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    let none = RequiredScopes::none();

    let unknown = "ak_unknown_key_for_the_audit_test";
    assert_eq!(
        request(&cache, &Req::key(unknown), &none, "/v1/orders?page=2").await,
        Outcome::Unknown
    );
    let revoked = store
        .create_key(cache.hasher(), NewKey::new("acme", ["orders:read"]))
        .await
        .unwrap();
    store.revoke_key(&revoked.record.id).await.unwrap();
    assert_eq!(
        request(
            &cache,
            &Req::bearer(&revoked.plaintext),
            &none,
            "/v1/whoami"
        )
        .await,
        Outcome::Revoked
    );
    let valid = store
        .create_key(cache.hasher(), NewKey::new("acme", ["orders:read"]))
        .await
        .unwrap();
    let write = RequiredScopes::new(["orders:write"]);
    assert!(matches!(
        request(&cache, &Req::key(&valid.plaintext), &write, "/v1/orders").await,
        Outcome::InsufficientScope { .. }
    ));
    assert_eq!(
        request(&cache, &Req::default(), &none, "/v1/whoami").await,
        Outcome::Missing
    );
    assert!(matches!(
        request(&cache, &Req::key("ak_has a space"), &none, "/v1/whoami").await,
        Outcome::Malformed(_)
    ));
    // A valid request: nothing, even twice (the second is an L1 hit).
    for _ in 0..2 {
        assert!(
            request(&cache, &Req::key(&valid.plaintext), &none, "/v1/whoami")
                .await
                .is_valid()
        );
    }
    // Valid passed by mistake: still nothing.
    let ok = cache.verify_key(&valid.plaintext, &none).await;
    cache.audit_auth_failed(&ok, &Req::key(&valid.plaintext), || {
        RequestInfo::new("GET", "/x")
    });

    let events = log.audit("auth_failed");
    assert_eq!(events.len(), 5, "{events:#?}");
    for e in &events {
        assert_documented_fields(e);
        assert_eq!(e["level"], "INFO");
        assert_eq!(fields(e)["method"], "GET");
        assert_eq!(fields(e)["client"], "10.1.2.3:4567");
    }
    let [unknown_e, revoked_e, scope_e, missing_e, malformed_e] = &events[..] else {
        unreachable!()
    };
    let f = fields(unknown_e);
    assert_eq!(f["outcome"], "invalid_api_key");
    assert_eq!(f["reason"], "unknown");
    assert_eq!(f["status"], 401);
    assert_eq!(f["route"], "/v1/orders", "the query string is cut");
    assert_eq!(f["fingerprint"], cache.hash_key(unknown).fingerprint());
    assert_eq!(f["message"], "authentication failed");

    let f = fields(revoked_e);
    assert_eq!(f["outcome"], "revoked_api_key");
    assert_eq!(f["fingerprint"], revoked.record.hash.fingerprint());
    assert_eq!(f["route"], "/v1/whoami");

    let f = fields(scope_e);
    assert_eq!(f["outcome"], "insufficient_scope");
    assert_eq!(f["status"], 403);
    assert_eq!(f["fingerprint"], valid.record.hash.fingerprint());

    let f = fields(missing_e);
    assert_eq!(f["outcome"], "missing_api_key");
    assert!(f.get("fingerprint").is_none(), "{f}");

    let f = fields(malformed_e);
    assert_eq!(f["outcome"], "invalid_api_key");
    assert_eq!(f["reason"], "malformed");
    assert!(f.get("fingerprint").is_none(), "{f}");

    // Without a client address, the field is left out.
    cache.audit_auth_failed(&Outcome::Unknown, &Req::key(unknown), || {
        RequestInfo::new("POST", "/v1/orders")
    });
    let last = log.audit("auth_failed").pop().unwrap();
    assert!(fields(&last).get("client").is_none());
    assert_eq!(fields(&last)["method"], "POST");
}

#[tokio::test]
async fn invalidations_and_mode_changes_made_here_are_audited() {
    let (log, _guard) = Captured::install();
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::new(CacheConfig::default(), store.clone()).unwrap();
    let issue = |owner: &'static str| {
        let (store, cache) = (store.clone(), cache.clone());
        async move {
            let k = store
                .create_key(cache.hasher(), NewKey::new(owner, ["a"]))
                .await
                .unwrap();
            let none = RequiredScopes::none();
            assert!(cache.verify_key(&k.plaintext, &none).await.is_valid());
            k
        }
    };
    let a = issue("acme").await;
    let b = issue("acme").await;
    let c = issue("globex").await;

    cache.invalidate(&a.record.hash).await.unwrap();
    cache.invalidate_key_id(&c.record.id).await.unwrap();
    cache.invalidate_owner("acme").await.unwrap();

    let keys = log.audit("key_invalidated");
    assert_eq!(keys.len(), 2, "{keys:#?}");
    keys.iter().for_each(assert_documented_fields);
    assert_eq!(fields(&keys[0])["fingerprint"], a.record.hash.fingerprint());
    assert!(fields(&keys[0]).get("key_id").is_none());
    assert_eq!(fields(&keys[0])["source"], "local");
    assert_eq!(fields(&keys[1])["key_id"], c.record.id.to_string());
    assert_eq!(fields(&keys[1])["source"], "local");
    let owners = log.audit("owner_invalidated");
    assert_eq!(owners.len(), 1);
    assert_documented_fields(&owners[0]);
    assert_eq!(fields(&owners[0])["owner"], "acme");
    // `a` was dropped by its own invalidation: only `b` was left.
    assert_eq!(fields(&owners[0])["dropped"], 1);
    assert_eq!(fields(&owners[0])["source"], "local");
    let _ = b;

    cache.set_mode(Mode::DatabaseOnly);
    cache.set_mode(Mode::DatabaseOnly); // no change, no event
    cache.set_mode(Mode::Normal);
    let modes = log.audit("mode_changed");
    assert_eq!(modes.len(), 2, "{modes:#?}");
    for (e, (from, to)) in modes
        .iter()
        .zip([("normal", "database_only"), ("database_only", "normal")])
    {
        assert_documented_fields(e);
        assert_eq!(e["level"], "WARN");
        let f = fields(e);
        assert_eq!(
            (
                &f["scope"],
                &f["from"],
                &f["to"],
                &f["effective"],
                &f["source"]
            ),
            (
                &Value::from("local"),
                &Value::from(from),
                &Value::from(to),
                &Value::from(to),
                &Value::from("local")
            )
        );
    }
}

#[tokio::test]
async fn a_flood_writes_the_budget_then_one_summary_with_the_count() {
    let (log, _guard) = Captured::install();
    let clock = Arc::new(ManualClock::new(start()));
    let store = Arc::new(MemoryStore::new());
    let cache = ApiKeyCache::builder(store)
        .clock(clock.clone())
        .build()
        .unwrap();
    let none = RequiredScopes::none();
    let burst = audit::event("auth_failed").unwrap().budget.unwrap();
    let (per_second, burst) = (burst.per_second as usize, burst.burst as usize);

    // 10k distinct keys: each is a store query, and each is refused.
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("ak_flood_{i:05}_secret"))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        // Some put the key in the path and the query too.
        let route = if i % 2 == 0 {
            format!("/v1/{key}/x?api_key={key}")
        } else {
            "/v1/whoami".to_owned()
        };
        let req = if i % 3 == 0 {
            Req::bearer(key)
        } else {
            Req::key(key)
        };
        assert_eq!(request(&cache, &req, &none, &route).await, Outcome::Unknown);
    }
    let written = log.audit("auth_failed");
    assert_eq!(written.len(), burst);
    assert!(
        log.audit("audit_suppressed").is_empty(),
        "no summary before a second has passed"
    );
    // The first ones are written, with their fingerprints.
    for (e, key) in written.iter().zip(&keys) {
        assert_eq!(fields(e)["fingerprint"], cache.hash_key(key).fingerprint());
    }
    assert_eq!(fields(&written[0])["route"], "/v1/<redacted>/x");

    // A second later: one summary with the exact count, and a refill.
    clock.advance(Duration::from_secs(1));
    cache.flush_audit();
    let summaries = log.audit("audit_suppressed");
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    assert_documented_fields(&summaries[0]);
    assert_eq!(fields(&summaries[0])["kind"], "auth_failed");
    assert_eq!(fields(&summaries[0])["suppressed"], 10_000 - burst);
    assert_eq!(summaries[0]["level"], "WARN");
    cache.flush_audit();
    assert_eq!(log.audit("audit_suppressed").len(), 1, "reported once");

    for key in keys.iter().take(2 * per_second) {
        request(&cache, &Req::key(key), &none, "/v1/whoami").await;
    }
    assert_eq!(log.audit("auth_failed").len(), burst + per_second);
    cache.flush_audit();
    let summaries = log.audit("audit_suppressed");
    assert_eq!(summaries.len(), 2);
    assert_eq!(fields(&summaries[1])["suppressed"], per_second);

    let text = log.text();
    for key in &keys {
        assert!(!text.contains(key.as_str()), "{key} was logged");
    }
    // The check above could fail: the fingerprints of the keys are there.
    assert!(text.contains(&cache.hash_key(&keys[0]).fingerprint()));
}

#[tokio::test]
async fn summaries_arrive_on_their_own() {
    let (log, _guard) = Captured::install();
    let cache = ApiKeyCache::new(CacheConfig::default(), Arc::new(MemoryStore::new())).unwrap();
    for i in 0..200 {
        cache.audit_auth_failed(&Outcome::Unknown, &Req::key(&format!("ak_{i}")), || {
            RequestInfo::new("GET", "/")
        });
    }
    // The background task reports within about a second.
    wait_until("the summary is written", || {
        !log.audit("audit_suppressed").is_empty()
    })
    .await;
    let summary = log.audit("audit_suppressed").remove(0);
    assert_eq!(fields(&summary)["suppressed"], 150);
}

#[test]
fn without_a_runtime_the_budget_refills_on_the_way() {
    let (log, _guard) = Captured::install();
    let clock = Arc::new(ManualClock::new(start()));
    let cache = ApiKeyCache::builder(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .build()
        .unwrap();
    let fail = || {
        cache.audit_auth_failed(&Outcome::Expired, &Req::key("ak_expired"), || {
            RequestInfo::new("GET", "/")
        })
    };
    (0..100).for_each(|_| fail());
    assert_eq!(log.audit("auth_failed").len(), 50);
    clock.advance(Duration::from_secs(1));
    (0..100).for_each(|_| fail());
    assert_eq!(log.audit("auth_failed").len(), 60);
    let summaries = log.audit("audit_suppressed");
    assert_eq!(summaries.len(), 1);
    assert_eq!(fields(&summaries[0])["suppressed"], 50);
}

fn redis_config(redis: &RedisServer) -> apikey_cache::CacheConfigBuilder {
    CacheConfig::builder()
        .redis_url(redis.url())
        .redis_timeout(Duration::from_millis(200))
        .redis_connect_timeout(Duration::from_millis(200))
        .breaker_cooldown(Duration::from_millis(100))
}

async fn subscribed(config: CacheConfig, store: Arc<MemoryStore>) -> ApiKeyCache {
    let cache = ApiKeyCache::new(config, store).unwrap();
    wait_until("subscribed", || cache.stats().subscribed).await;
    cache
}

/// The lines of `name` whose `source` is `remote`.
fn remote(log: &Captured, name: &str) -> Vec<Value> {
    log.audit(name)
        .into_iter()
        .filter(|e| fields(e)["source"] == "remote")
        .collect()
}

#[tokio::test]
async fn other_instances_events_and_resyncs_are_audited_as_remote() {
    let (log, _guard) = Captured::install();
    let redis = RedisServer::start();
    let store = Arc::new(MemoryStore::new());
    let a = subscribed(redis_config(&redis).build().unwrap(), store.clone()).await;
    let b = subscribed(redis_config(&redis).build().unwrap(), store.clone()).await;
    let key = store
        .create_key(a.hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();

    a.invalidate(&key.record.hash).await.unwrap();
    wait_until("B applied the key event", || {
        !remote(&log, "key_invalidated").is_empty()
    })
    .await;
    let e = remote(&log, "key_invalidated").remove(0);
    assert_documented_fields(&e);
    assert_eq!(fields(&e)["fingerprint"], key.record.hash.fingerprint());

    a.invalidate_owner("acme").await.unwrap();
    wait_until("B applied the owner event", || {
        !remote(&log, "owner_invalidated").is_empty()
    })
    .await;
    assert_eq!(
        fields(&remote(&log, "owner_invalidated")[0])["owner"],
        "acme"
    );

    a.set_fleet_mode(Mode::DatabaseOnly).await.unwrap();
    wait_until("B applied the fleet mode", || {
        !remote(&log, "mode_changed").is_empty()
    })
    .await;
    let modes = log.audit("mode_changed");
    let local: Vec<_> = modes
        .iter()
        .filter(|e| fields(e)["source"] == "local")
        .collect();
    assert_eq!(local.len(), 1, "{modes:#?}");
    let e = &remote(&log, "mode_changed")[0];
    assert_documented_fields(e);
    for e in [local[0], e] {
        assert_eq!(fields(e)["scope"], "fleet");
        assert_eq!(fields(e)["from"], "normal");
        assert_eq!(fields(e)["to"], "database_only");
        assert_eq!(fields(e)["effective"], "database_only");
    }
    assert_eq!(b.mode(), Mode::DatabaseOnly);

    // Cut the subscribers' connections: both resubscribe and resync.
    assert!(
        log.audit("resync").is_empty(),
        "the first subscription is no resync"
    );
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query::<i64>(&mut redis.conn())
        .unwrap();
    wait_until("both resynced", || log.audit("resync").len() >= 2).await;
    let resync = &log.audit("resync")[0];
    assert_documented_fields(resync);
    assert_eq!(resync["level"], "WARN");
    assert_eq!(fields(resync)["resyncs"], 1);
}

#[tokio::test]
async fn breaker_transitions_are_audited() {
    let (log, _guard) = Captured::install();
    let mut redis = RedisServer::start();
    let cache = subscribed(
        redis_config(&redis).breaker_threshold(1).build().unwrap(),
        Arc::new(MemoryStore::new()),
    )
    .await;
    let transitions = || -> Vec<(String, String)> {
        log.audit("breaker_changed")
            .iter()
            .map(|e| {
                assert_documented_fields(e);
                let f = fields(e);
                (
                    f["from"].as_str().unwrap().to_owned(),
                    f["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert!(transitions().is_empty());

    redis.kill9();
    // A miss asks Redis, fails, and opens the breaker (threshold 1).
    cache.verify_key("ak_nobody", &RequiredScopes::none()).await;
    wait_until("the breaker opened and was probed", || {
        transitions().len() >= 3
    })
    .await;
    let seen = transitions();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(seen[0], pair("closed", "open"));
    assert_eq!(seen[1], pair("open", "half_open"));
    assert_eq!(seen[2], pair("half_open", "open"));
    let opened = &log.audit("breaker_changed")[0];
    assert_eq!(opened["level"], "WARN");
    assert_eq!(fields(opened)["failures"], 1);

    redis.restart();
    wait_until("the breaker closed", || {
        cache.stats().l2_breaker == Some(BreakerState::Closed)
    })
    .await;
    let last = transitions().pop().unwrap();
    assert_eq!(last, pair("half_open", "closed"));
    let closed = log.audit("breaker_changed").pop().unwrap();
    assert_eq!(closed["level"], "INFO");
}
