//! What operators see and do: cache modes, `/health/cache`, `/metrics`,
//! request ids, a store outage, and the settings: embedded defaults and
//! environment fallbacks.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{eventually, random_key, DemoConfig, DemoServer, Env, PgDb, RedisServer};

pub async fn mode_health_metrics_and_request_ids(bin: &str) {
    let env = Env::start(bin).await;
    let (demo, admin) = (&env.demo, env.admin.as_str());
    let (_, key) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:*"]}))
        .await;
    assert_eq!(
        demo.get("/v1/orders", Some(&key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        demo.get("/v1/orders", Some(&key)).await.status,
        StatusCode::OK
    );

    // Health: every field, Redis up and the subscriber listening.
    let health = eventually(
        "redis up and subscribed",
        Duration::from_secs(10),
        || async {
            let h = demo.get("/health/cache", None).await;
            (h.json["l2"]["status"] == "up" && h.json["invalidation"]["subscribed"] == true)
                .then_some(h)
        },
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["status"], "healthy", "{health:?}");
    assert_eq!(health.json["mode"], "normal");
    for (section, fields) in [
        (
            "l1",
            &["entries", "hits", "misses", "hit_rate", "negative_entries"][..],
        ),
        (
            "l2",
            &[
                "status",
                "breaker",
                "latency_ms",
                "hits",
                "misses",
                "errors",
            ][..],
        ),
        ("store", &["status", "latency_ms"][..]),
        (
            "invalidation",
            &["subscribed", "events_received", "resyncs"][..],
        ),
        (
            "usage",
            &["pending_keys", "pending_increments", "flush_errors"][..],
        ),
        ("owner_lists", &["entries"][..]),
        ("warming", &["state", "loaded"][..]),
    ] {
        for field in fields {
            assert!(
                health.json[section].get(field).is_some(),
                "{section}.{field} in {health:?}"
            );
        }
    }
    assert_eq!(health.json["store"]["status"], "up");
    assert_eq!(health.json["l2"]["breaker"], "closed");
    assert!(health.json["l1"]["hits"].as_u64().unwrap() >= 1);
    let checked_at = health.json["checked_at"].as_str().unwrap();
    time::OffsetDateTime::parse(checked_at, &time::format_description::well_known::Rfc3339)
        .unwrap();

    // Database-only mode for this instance, then back.
    let put_mode = |body: serde_json::Value| {
        demo.call(Method::PUT, "/admin/cache/mode", Some(admin), Some(body))
    };
    let res = put_mode(json!({"mode": "database_only", "fleet": false})).await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert_eq!(res.json["mode"], "database_only");
    assert_eq!(
        demo.get("/health/cache", None).await.json["mode"],
        "database_only"
    );
    assert_eq!(
        demo.get("/v1/orders", Some(&key)).await.status,
        StatusCode::OK,
        "keys still work, each from the store"
    );
    let metrics = demo.client.get(demo.url("/metrics")).send().await.unwrap();
    assert!(metrics
        .text()
        .await
        .unwrap()
        .lines()
        .any(|l| l == "apikey_cache_mode 1"));
    let res = put_mode(json!({"mode": "normal", "fleet": false})).await;
    assert_eq!(res.json["mode"], "normal");

    // Fleet-wide through Redis.
    let res = put_mode(json!({"mode": "database_only", "fleet": true})).await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert_eq!(res.json["mode"], "database_only");
    assert_eq!(res.json["fleet_mode"], "database_only");
    let res = put_mode(json!({"mode": "normal", "fleet": true})).await;
    assert_eq!(res.json["mode"], "normal");
    put_mode(json!({"mode": "fast"}))
        .await
        .assert_error(400, "invalid_request");
    demo.call(
        Method::PUT,
        "/admin/cache/mode",
        Some(&key),
        Some(json!({"mode": "normal"})),
    )
    .await
    .assert_error(403, "insufficient_scope");

    // Metrics: the design's names (the core publishes once a second; the
    // demo also publishes on scrape).
    let wanted = [
        "apikey_cache_requests_total{outcome=\"valid\"}",
        "apikey_cache_hits_total{tier=\"l1\"}",
        "apikey_cache_misses_total{tier=\"l1\"}",
        "apikey_cache_store_queries_total{result=\"ok\"}",
        "apikey_cache_lookup_duration_seconds",
        "apikey_cache_entries{tier=\"l1\"}",
        "apikey_cache_l2_errors_total",
        "apikey_cache_breaker_state",
        "apikey_cache_mode",
        "apikey_cache_invalidations_total",
        "apikey_cache_usage_flush_errors_total",
    ];
    let text = eventually("every metric", Duration::from_secs(3), || async {
        let res = demo.client.get(demo.url("/metrics")).send().await.unwrap();
        let ok = res.status() == StatusCode::OK
            && res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain"));
        let text = res.text().await.unwrap();
        (ok && wanted.iter().all(|m| text.contains(m))).then_some(text)
    })
    .await;
    assert!(text.contains("apikey_cache_mode 0"), "{text}");

    // Request ids: kept when sent, made up otherwise, on every answer.
    let res = demo
        .client
        .get(demo.url("/v1/whoami"))
        .header("x-request-id", "test-request-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers().get("x-request-id").unwrap(),
        "test-request-42"
    );
    let res = demo.get("/health/cache", None).await;
    assert_eq!(res.header("x-request-id").map(str::len), Some(36), "a UUID");
}

pub async fn starts_on_embedded_defaults(bin: &str) {
    let dir = crate::support::TempDir::new("embedded");
    let mut demo = DemoServer::start(
        bin,
        DemoConfig {
            cwd: Some(dir.path().to_owned()),
            ..DemoConfig::default()
        },
    )
    .await;
    let health = demo.get("/health/cache", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["l2"]["status"], "disabled", "{health:?}");
    assert_eq!(health.json["store"]["status"], "up");
    assert!(
        dir.path().join("apikey-cache-demo.db").exists(),
        "the SQLite file is created in the working directory"
    );
    demo.get("/v1/whoami", None)
        .await
        .assert_error(401, "missing_api_key");
    let status = demo.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
}

pub async fn fleet_mode_without_redis_is_refused(bin: &str) {
    let dir = crate::support::TempDir::new("no-redis");
    let admin = crate::support::random_key();
    let demo = DemoServer::start(
        bin,
        DemoConfig {
            database_url: Some(format!("sqlite://{}/keys.db", dir.path().display())),
            bootstrap_admin_key: Some(admin.clone()),
            ..DemoConfig::default()
        },
    )
    .await;
    demo.call(
        Method::PUT,
        "/admin/cache/mode",
        Some(&admin),
        Some(json!({"mode": "database_only", "fleet": true})),
    )
    .await
    .assert_error(409, "fleet_mode_unavailable");
    let res = demo
        .call(
            Method::PUT,
            "/admin/cache/mode",
            Some(&admin),
            Some(json!({"mode": "database_only"})),
        )
        .await;
    assert_eq!(res.json["mode"], "database_only", "{res:?}");
    assert_eq!(
        demo.get("/v1/whoami", Some(&admin)).await.status,
        StatusCode::OK
    );
}

/// Polls `/health/cache` (reports are reused for up to a second) until it
/// shows `status`; the last report.
async fn health_becomes(demo: &DemoServer, status: &str) -> crate::support::Answer {
    eventually(
        &format!("health {status}"),
        Duration::from_secs(10),
        || async {
            let h = demo.get("/health/cache", None).await;
            (h.json["status"] == status).then_some(h)
        },
    )
    .await
}

pub async fn store_outage_health_and_unknown_keys(bin: &str) {
    let redis = RedisServer::start();
    let pg = PgDb::create().await;
    let (proxy, proxied_url) = pg.proxied().await;
    let admin = random_key();
    let config = DemoConfig {
        database_url: Some(proxied_url),
        ..Env::config(&redis, &pg, &admin)
    };
    let demo = DemoServer::start(bin, config).await;
    let (_, warm) = demo
        .create_key(&admin, json!({"owner": "acme", "scopes": []}))
        .await;
    let (_, unseen) = demo
        .create_key(&admin, json!({"owner": "acme", "scopes": []}))
        .await;
    assert_eq!(
        demo.get("/v1/whoami", Some(&warm)).await.status,
        StatusCode::OK
    );
    health_becomes(&demo, "healthy").await;

    // The database goes away (connections dropped, new ones refused).
    proxy.cut();
    // Nothing cached can vouch for these: 503, neither a 200 nor a 401 the
    // store never said.
    for (what, key) in [
        ("issued, never used", unseen.as_str()),
        ("unknown", &random_key()),
    ] {
        let res = demo.get("/v1/whoami", Some(key)).await;
        assert_eq!(
            res.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {res:?}"
        );
        res.assert_error(503, "auth_unavailable");
    }
    // What the caches hold is still served; health says so (200).
    assert_eq!(
        demo.get("/v1/whoami", Some(&warm)).await.status,
        StatusCode::OK
    );
    let health = health_becomes(&demo, "degraded").await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    assert_eq!(health.json["store"]["status"], "down", "{health:?}");

    // Database-only with the store down: nothing can answer.
    let res = demo
        .call(
            Method::PUT,
            "/admin/cache/mode",
            Some(&admin),
            Some(json!({"mode": "database_only", "fleet": false})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    let health = health_becomes(&demo, "unhealthy").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{health:?}");
    assert_eq!(health.json["mode"], "database_only");
    assert_eq!(health.json["store"]["status"], "down");
    demo.get("/v1/whoami", Some(&warm))
        .await
        .assert_error(503, "auth_unavailable");

    // The database is back: health recovers, and the key refused during
    // the outage was not remembered as unknown.
    proxy.restore();
    let health = health_becomes(&demo, "healthy").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["store"]["status"], "up");
    for key in [&unseen, &warm] {
        assert_eq!(
            demo.get("/v1/whoami", Some(key)).await.status,
            StatusCode::OK
        );
    }
}

/// The `warming` block of the demo's health once warming is done.
async fn warming_done(demo: &DemoServer) -> Option<serde_json::Value> {
    let health = demo.get("/health/cache", None).await;
    (health.json["warming"]["state"] == "done").then(|| health.json["warming"].clone())
}

pub async fn settings_from_the_environment(bin: &str) {
    let redis = RedisServer::start();
    let pg = PgDb::create().await;
    let admin = random_key();
    let prefix = format!("conf-{}:", uuid::Uuid::new_v4().simple());
    let dir = crate::support::TempDir::new("env");
    let mut config = Env::config(&redis, &pg, &admin);
    config.via_env = true;
    config.cwd = Some(dir.path().to_owned());
    config
        .env
        .push(("APIKEY_CACHE_KEY_PREFIX".to_owned(), prefix.clone()));
    config
        .env
        .push(("APIKEY_CACHE_WARM_KEYS".to_owned(), "100".to_owned()));
    // Answers on the address in BIND (no --bind given), or start fails.
    let demo = DemoServer::start(bin, config.clone()).await;
    // APIKEY_CACHE_WARM_KEYS: warming ran; no key had been used yet.
    let warmed = eventually("warming done", Duration::from_secs(10), || {
        warming_done(&demo)
    })
    .await;
    assert_eq!(warmed, json!({"state": "done", "loaded": 0}));

    // APIKEY_BOOTSTRAP_ADMIN_KEY: the admin key works.
    let (id, key) = demo
        .create_key(&admin, json!({"owner": "acme", "scopes": []}))
        .await;
    // DATABASE_URL: the key is a row in that database, not in an SQLite
    // file in the working directory.
    let mut conn = pg.connect().await;
    let (owner,): (String,) = sqlx::query_as("SELECT owner FROM api_keys WHERE key_id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner, "acme");
    assert!(!dir.path().join("apikey-cache-demo.db").exists());

    // REDIS_URL and APIKEY_CACHE_KEY_PREFIX: the key's L2 entry is in that
    // Redis, and everything there carries the prefix.
    assert_eq!(
        demo.get("/v1/whoami", Some(&key)).await.status,
        StatusCode::OK
    );
    let keys = eventually("keys in Redis", Duration::from_secs(5), || async {
        let keys = redis.keys("*");
        (!keys.is_empty()).then_some(keys)
    })
    .await;
    assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{keys:?}");
    let health = demo.get("/health/cache", None).await;
    assert_eq!(health.json["l2"]["status"], "up", "{health:?}");

    // Started again once both keys' use is in the database: it warms them.
    eventually("usage flushed", Duration::from_secs(10), || async {
        let (used,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL")
                .fetch_one(&mut pg.connect().await)
                .await
                .unwrap();
        (used == 2).then_some(())
    })
    .await;
    drop(demo);
    let demo = DemoServer::start(bin, config).await;
    let warmed = eventually("warming done", Duration::from_secs(10), || {
        warming_done(&demo)
    })
    .await;
    assert_eq!(warmed, json!({"state": "done", "loaded": 2}));
}
