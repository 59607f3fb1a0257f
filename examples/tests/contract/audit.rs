//! Audit events in the demo's log: JSON lines on the `apikey_cache::audit`
//! target, on by default (here even with `RUST_LOG=warn`), their details as
//! JSON fields, and never a plaintext key.

use std::net::SocketAddr;
use std::time::Duration;

use apikey_cache::KeyHasher;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{eventually, random_key, DemoServer, Env, PgDb, RedisServer};

/// The demo's audit lines whose `event` is `name`.
fn audit_lines(log: &str, name: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == apikey_cache::audit::TARGET && l["fields"]["event"] == name)
        .collect()
}

/// The demos hash keys without a pepper (the harness scrubs
/// `APIKEY_CACHE_PEPPER`).
fn fingerprint(key: &str) -> String {
    KeyHasher::new(None).hash(key.as_bytes()).fingerprint()
}

pub async fn audit_events_in_the_log(bin: &str) {
    let redis = RedisServer::start();
    let pg = PgDb::create().await;
    let admin = random_key();
    let mut config = Env::config(&redis, &pg, &admin);
    // Quieter than the harness's `info`: the audit target stays on anyway.
    config.env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    let demo = DemoServer::start(bin, config).await;

    // An unknown key, with a query string that must not reach the log.
    let unknown = random_key();
    demo.get("/v1/whoami?api_key=also-secret", Some(&unknown))
        .await
        .assert_error(401, "invalid_api_key");
    // A key revoked through the admin API.
    let (id, revoked) = demo
        .create_key(&admin, json!({"owner": "acme", "scopes": ["orders:read"]}))
        .await;
    assert_eq!(
        demo.get("/v1/orders", Some(&revoked)).await.status,
        StatusCode::OK
    );
    let res = demo
        .call(
            Method::DELETE,
            &format!("/admin/keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{res:?}");
    demo.get("/v1/orders", Some(&revoked))
        .await
        .assert_error(401, "revoked_api_key");
    // No key.
    demo.call(Method::POST, "/v1/orders", None, Some(json!({})))
        .await
        .assert_error(401, "missing_api_key");
    // An owner suspended.
    let (_, suspended) = demo
        .create_key(
            &admin,
            json!({"owner": "globex", "scopes": ["orders:read"]}),
        )
        .await;
    let res = demo
        .call(
            Method::POST,
            "/admin/owners/globex/revoke",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");

    let failures = eventually("three auth_failed lines", Duration::from_secs(10), || {
        let lines = audit_lines(&demo.log_text(), "auth_failed");
        async move { (lines.len() >= 3).then_some(lines) }
    })
    .await;
    assert_eq!(failures.len(), 3, "{failures:#?}");
    let expected = [
        (
            "GET",
            "/v1/whoami",
            "invalid_api_key",
            Some(fingerprint(&unknown)),
        ),
        (
            "GET",
            "/v1/orders",
            "revoked_api_key",
            Some(fingerprint(&revoked)),
        ),
        ("POST", "/v1/orders", "missing_api_key", None),
    ];
    for (line, (method, route, outcome, fp)) in failures.iter().zip(expected) {
        let f = &line["fields"];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(f["outcome"], outcome, "{line}");
        assert_eq!(f["status"], 401, "{line}");
        assert_eq!(f["method"], method, "{line}");
        assert_eq!(f["route"], route, "{line}");
        match fp {
            Some(fp) => assert_eq!(f["fingerprint"], fp, "{line}"),
            None => assert!(f.get("fingerprint").is_none(), "{line}"),
        }
        let client: SocketAddr = f["client"]
            .as_str()
            .unwrap_or_else(|| panic!("no client address: {line}"))
            .parse()
            .unwrap();
        assert!(client.ip().is_loopback(), "{line}");
        // Fields, not text in the message.
        assert_eq!(f["message"], "authentication failed", "{line}");
    }

    let revocations = eventually("the revocation", Duration::from_secs(10), || {
        let lines = audit_lines(&demo.log_text(), "key_invalidated");
        async move { (!lines.is_empty()).then_some(lines) }
    })
    .await;
    let f = &revocations[0]["fields"];
    assert_eq!(f["fingerprint"], fingerprint(&revoked), "{f}");
    assert_eq!(f["source"], "local", "{f}");
    let suspensions = eventually("the owner suspension", Duration::from_secs(10), || {
        let lines = audit_lines(&demo.log_text(), "owner_invalidated");
        async move { (!lines.is_empty()).then_some(lines) }
    })
    .await;
    assert_eq!(suspensions[0]["fields"]["owner"], "globex");
    assert_eq!(suspensions[0]["fields"]["source"], "local");

    let log = demo.log_text();
    for secret in [&unknown, &revoked, &suspended, &admin] {
        assert!(
            !log.contains(secret.as_str()),
            "a plaintext key is in the log"
        );
    }
    assert!(
        !log.contains("also-secret"),
        "the query string is in the log"
    );
    // `RUST_LOG=warn` is honoured for everything else.
    assert!(!log.contains("\"level\":\"DEBUG\""));
    assert!(
        !log.contains("\"message\":\"listening\""),
        "info lines outside the audit target were written"
    );
}
