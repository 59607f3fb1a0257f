//! Who gets in: key sources, scopes and wildcards, every rejection of the
//! outcome table, limits and quotas, hostile HTTP input.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::Env;

pub async fn keys_scopes_and_rejections(bin: &str) {
    let env = Env::start(bin).await;
    let (demo, admin) = (&env.demo, env.admin.as_str());

    let (reader_id, reader) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:read"]}))
        .await;
    let (_, writer) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:write"]}))
        .await;
    let (_, wildcard) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:*"]}))
        .await;
    let (_, star) = demo
        .create_key(admin, json!({"owner": "root", "scopes": ["*"]}))
        .await;
    assert!(reader.starts_with("ak_"));

    // whoami: any valid key.
    let me = demo.get("/v1/whoami", Some(&reader)).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(
        me.json,
        json!({"key_id": reader_id, "owner": "acme", "scopes": ["orders:read"]})
    );

    // orders:read vs orders:write.
    let list = demo.get("/v1/orders", Some(&reader)).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json, json!([]));
    let refused = demo
        .post("/v1/orders", Some(&reader), json!({"item": "widget"}))
        .await;
    refused.assert_error(403, "insufficient_scope");
    assert_eq!(refused.json["missing_scopes"], json!(["orders:write"]));
    let created = demo
        .post(
            "/v1/orders",
            Some(&writer),
            json!({"item": "widget", "quantity": 2}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.json["item"], "widget");
    assert_eq!(created.json["quantity"], 2);
    demo.get("/v1/orders", Some(&writer))
        .await
        .assert_error(403, "insufficient_scope");

    // Wildcards: orders:* reads and writes, * does everything.
    let list = demo.get("/v1/orders", Some(&wildcard)).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(
        list.json.as_array().unwrap().len(),
        1,
        "per owner: {list:?}"
    );
    let created = demo
        .post("/v1/orders", Some(&wildcard), json!({"item": "gadget"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    demo.get("/admin/keys/nope", Some(&wildcard))
        .await
        .assert_error(403, "insufficient_scope");
    assert_eq!(
        demo.get("/v1/orders", Some(&star)).await.json,
        json!([]),
        "another owner's orders are not shown"
    );
    let details = demo
        .get(&format!("/admin/keys/{reader_id}"), Some(&star))
        .await;
    assert_eq!(
        details.status,
        StatusCode::OK,
        "* grants admin: {details:?}"
    );

    // Missing, unknown, expired.
    let missing = demo.get("/v1/orders", None).await;
    missing.assert_error(401, "missing_api_key");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    demo.get("/v1/whoami", Some("ak_not_a_real_key_at_all"))
        .await
        .assert_error(401, "invalid_api_key");
    let res = demo
        .client
        .get(demo.url("/v1/whoami"))
        .header("x-api-key", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "X-API-Key is a key source");
    let (_, expired) = demo
        .create_key(
            admin,
            json!({"owner": "acme", "scopes": ["orders:read"], "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    demo.get("/v1/orders", Some(&expired))
        .await
        .assert_error(401, "expired_api_key");

    // Key details as the store has them.
    let details = demo
        .get(&format!("/admin/keys/{reader_id}"), Some(admin))
        .await;
    assert_eq!(details.status, StatusCode::OK);
    for field in [
        "key_id",
        "owner",
        "scopes",
        "status",
        "expires_at",
        "total_requests",
        "last_used_at",
    ] {
        assert!(details.json.get(field).is_some(), "{field} in {details:?}");
    }
    assert_eq!(details.json["status"], "active");
    assert_eq!(details.json["scopes"], json!(["orders:read"]));
    demo.get("/admin/keys/key_unknown", Some(admin))
        .await
        .assert_error(404, "not_found");

    // Bad admin input: JSON 400s.
    for body in [
        json!({"owner": "acme"}),
        json!({"owner": "", "scopes": []}),
        json!({"owner": "acme", "scopes": ["has space"]}),
        json!({"owner": "acme", "scopes": [], "expires_at": "soon"}),
        json!({"owner": "acme", "scopes": [], "rate_limit": {"requests": 0, "per_seconds": 60}}),
        json!({"owner": "acme", "scopes": [], "monthly_quota": -1}),
        // A key that could never be used is a mistake, not "unlimited".
        json!({"owner": "acme", "scopes": [], "monthly_quota": 0}),
        // More than the limiter enforces exactly (requests x period in ms > 2^53).
        json!({"owner": "acme", "scopes": [],
               "rate_limit": {"requests": 4_294_967_295u32, "per_seconds": 31_622_400}}),
        json!({"owner": "acme", "scopes": [], "colour": "blue"}),
        json!([1, 2]),
    ] {
        demo.post("/admin/keys", Some(admin), body)
            .await
            .assert_error(400, "invalid_request");
    }
    let broken = demo
        .client
        .post(demo.url("/admin/keys"))
        .bearer_auth(admin)
        .body("{\"owner\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = broken.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    // An unsupported method is a 405, not a scope error.
    let res = demo
        .call(Method::DELETE, "/v1/orders", Some(&wildcard), None)
        .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{res:?}");

    // No key for unknown paths: 404, not 401.
    demo.get("/v2/nothing", None)
        .await
        .assert_error(404, "not_found");
}

pub async fn rate_limit_and_quota(bin: &str) {
    let env = Env::start(bin).await;
    let (demo, admin) = (&env.demo, env.admin.as_str());

    let (_, limited) = demo
        .create_key(
            admin,
            json!({"owner": "acme", "scopes": [], "rate_limit": {"requests": 3, "per_seconds": 60}}),
        )
        .await;
    for i in 0..3 {
        let res = demo.get("/v1/whoami", Some(&limited)).await;
        assert_eq!(res.status, StatusCode::OK, "request {i}: {res:?}");
    }
    let res = demo.get("/v1/whoami", Some(&limited)).await;
    res.assert_error(429, "rate_limited");
    // 3 per 60 s: the next request 20 s after the burst, the bucket whole
    // after 60 s (less the real time the requests took, rounded up).
    let retry_after: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry_after), "{res:?}");
    assert_eq!(res.header("ratelimit-limit"), Some("3"));
    assert_eq!(res.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = res.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((59..=60).contains(&reset), "{res:?}");

    let (_, quota) = demo
        .create_key(
            admin,
            json!({"owner": "acme", "scopes": [], "monthly_quota": 2}),
        )
        .await;
    for i in 0..2 {
        let res = demo.get("/v1/whoami", Some(&quota)).await;
        assert_eq!(res.status, StatusCode::OK, "request {i}: {res:?}");
    }
    let res = demo.get("/v1/whoami", Some(&quota)).await;
    res.assert_error(429, "quota_exceeded");
    assert!(res.header("retry-after").is_some());
}

pub async fn bad_http_input_is_4xx_never_5xx(bin: &str) {
    let env = Env::start(bin).await;
    let (demo, admin) = (&env.demo, env.admin.as_str());
    let (_, key) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": []}))
        .await;

    let request = |headers: &[u8]| {
        let mut raw = b"GET /v1/whoami HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n".to_vec();
        raw.extend_from_slice(headers);
        raw.extend_from_slice(b"\r\n");
        raw
    };
    let mut huge = b"Authorization: Bearer ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 * 1024));
    huge.extend_from_slice(b"\r\n");
    let duplicated = format!("Authorization: Bearer {key}\r\nAuthorization: Bearer {key}\r\n");
    // Only the head: the limit refuses on Content-Length alone, and a body
    // the server never reads could turn its close into a reset that eats
    // the answer.
    let oversized_body = format!(
        "POST /admin/keys HTTP/1.1\r\nHost: demo\r\nConnection: close\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        200 * 1024
    )
    .into_bytes();
    // What reaches the key layer is refused as the contract says.
    for (what, raw) in [
        (
            "invalid UTF-8",
            request(b"Authorization: Bearer ak_\xff\xfe\xfd\x80\r\n"),
        ),
        ("duplicated authorization", request(duplicated.as_bytes())),
        (
            "basic scheme",
            request(b"Authorization: Basic dXNlcjpwYXNz\r\n"),
        ),
    ] {
        assert_eq!(demo.raw(&raw).await, 401, "{what}");
    }
    // Anything else: a 4xx from whichever part refuses it first (hyper may
    // answer 431 to a huge header).
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("10 kB authorization", request(&huge)),
        (
            "invalid UTF-8",
            request(b"Authorization: Bearer ak_\xff\xfe\xfd\x80\r\n"),
        ),
        (
            "latin-1 in x-api-key",
            request(b"X-API-Key: ak_caf\xe9\r\n"),
        ),
        ("duplicated authorization", request(duplicated.as_bytes())),
        (
            "basic scheme",
            request(b"Authorization: Basic dXNlcjpwYXNz\r\n"),
        ),
        ("empty bearer", request(b"Authorization: Bearer \r\n")),
        ("NUL byte", request(b"X-API-Key: ak_\x00x\r\n")),
        (
            "garbage request line",
            b"\xff\xfe NONSENSE\r\n\r\n".to_vec(),
        ),
        ("oversized body", oversized_body),
    ];
    for (what, raw) in cases {
        let status = demo.raw(&raw).await;
        assert!(
            (400..500).contains(&status),
            "{what}: answered {status}\n{}",
            demo.log_text()
        );
    }
    // A path that is not valid percent-encoded UTF-8.
    let status = demo
        .raw(
            format!(
                "GET /admin/keys/%FF%FE HTTP/1.1\r\nHost: demo\r\nConnection: close\r\nAuthorization: Bearer {admin}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert!((400..500).contains(&status), "bad path: {status}");

    let health = demo.get("/health/cache", None).await;
    assert_eq!(health.status, StatusCode::OK, "still serving");
    assert_eq!(
        demo.get("/v1/whoami", Some(&key)).await.status,
        StatusCode::OK
    );
}
