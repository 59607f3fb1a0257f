//! What operators see and do: cache modes, `/health/cache`, `/metrics`,
//! request ids, and the embedded defaults.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{eventually, DemoConfig, DemoServer, Env};

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
