//! A key's life through the admin routes: revocation, owner revocation,
//! rotation, and usage totals that survive a SIGTERM.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{eventually, DemoServer, Env};

pub async fn revocation_owner_revocation_and_rotation(bin: &str) {
    let env = Env::start(bin).await;
    let (demo, admin) = (&env.demo, env.admin.as_str());

    // Revoke one key: refused from the next request on.
    let (id, key) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:read"]}))
        .await;
    assert_eq!(
        demo.get("/v1/orders", Some(&key)).await.status,
        StatusCode::OK
    );
    let res = demo
        .call(
            Method::DELETE,
            &format!("/admin/keys/{id}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{res:?}");
    demo.get("/v1/orders", Some(&key))
        .await
        .assert_error(401, "revoked_api_key");
    let details = demo.get(&format!("/admin/keys/{id}"), Some(admin)).await;
    assert_eq!(details.json["status"], "revoked");
    demo.call(Method::DELETE, "/admin/keys/key_unknown", Some(admin), None)
        .await
        .assert_error(404, "not_found");

    // Owner revocation: every key of the owner, cached or not.
    let (_, g1) = demo
        .create_key(admin, json!({"owner": "globex", "scopes": ["orders:read"]}))
        .await;
    let (_, g2) = demo
        .create_key(
            admin,
            json!({"owner": "globex", "scopes": ["orders:write"]}),
        )
        .await;
    let (_, other) = demo
        .create_key(admin, json!({"owner": "initech", "scopes": []}))
        .await;
    assert_eq!(
        demo.get("/v1/whoami", Some(&g1)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        demo.get("/v1/whoami", Some(&g2)).await.status,
        StatusCode::OK
    );
    let res = demo
        .post("/admin/owners/globex/revoke", Some(admin), json!({}))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert_eq!(res.json, json!({"revoked": 2}));
    for key in [&g1, &g2] {
        demo.get("/v1/whoami", Some(key))
            .await
            .assert_error(401, "revoked_api_key");
    }
    assert_eq!(
        demo.get("/v1/whoami", Some(&other)).await.status,
        StatusCode::OK,
        "other owners are untouched"
    );
    let res = demo
        .post("/admin/owners/nobody/revoke", Some(admin), json!({}))
        .await;
    assert_eq!(res.json, json!({"revoked": 0}));
    // A path parameter is checked like the same field in a body: a 4xx,
    // never a store error.
    demo.post("/admin/owners/acme%00corp/revoke", Some(admin), json!({}))
        .await
        .assert_error(400, "invalid_request");

    // Rotation: the new key works, the old one during its grace period.
    let (old_id, old) = demo
        .create_key(
            admin,
            json!({"owner": "umbrella", "scopes": ["orders:read", "orders:write"],
                   "rate_limit": {"requests": 100, "per_seconds": 60}, "monthly_quota": 1000}),
        )
        .await;
    assert_eq!(
        demo.get("/v1/orders", Some(&old)).await.status,
        StatusCode::OK
    );
    let rotated = demo
        .post(
            &format!("/admin/keys/{old_id}/rotate"),
            Some(admin),
            json!({"grace_seconds": 60}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{rotated:?}");
    let new_id = rotated.json["key_id"].as_str().unwrap().to_owned();
    let new = rotated.json["key"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    let me = demo.get("/v1/whoami", Some(&new)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json["owner"], "umbrella");
    assert_eq!(me.json["scopes"], json!(["orders:read", "orders:write"]));
    let new_details = demo
        .get(&format!("/admin/keys/{new_id}"), Some(admin))
        .await;
    assert_eq!(
        new_details.json["rate_limit"],
        json!({"requests": 100, "per_seconds": 60})
    );
    assert_eq!(new_details.json["monthly_quota"], 1000);
    assert_eq!(
        demo.get("/v1/orders", Some(&old)).await.status,
        StatusCode::OK,
        "the old key works during the grace period"
    );
    let old_details = demo
        .get(&format!("/admin/keys/{old_id}"), Some(admin))
        .await;
    let expires_at = old_details.json["expires_at"].as_str().unwrap();
    let expires_at =
        time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let left = expires_at - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::seconds(50) && left <= time::Duration::seconds(61),
        "{left}"
    );

    // Rotating with no grace: the replaced key is refused at once, though
    // it was cached a moment ago.
    let again = demo
        .post(
            &format!("/admin/keys/{new_id}/rotate"),
            Some(admin),
            json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    demo.get("/v1/whoami", Some(&new))
        .await
        .assert_error(401, "expired_api_key");
    let newest = again.json["key"].as_str().unwrap();
    assert_eq!(
        demo.get("/v1/whoami", Some(newest)).await.status,
        StatusCode::OK
    );

    // A revoked key cannot be rotated back to life; unknown keys are 404.
    demo.post(
        &format!("/admin/keys/{id}/rotate"),
        Some(admin),
        json!({"grace_seconds": 10}),
    )
    .await
    .assert_error(409, "key_not_active");
    demo.post(
        "/admin/keys/key_unknown/rotate",
        Some(admin),
        json!({"grace_seconds": 10}),
    )
    .await
    .assert_error(404, "not_found");
    demo.post(
        &format!("/admin/keys/{old_id}/rotate"),
        Some(admin),
        json!({"grace_seconds": "soon"}),
    )
    .await
    .assert_error(400, "invalid_request");
}

pub async fn sigterm_flushes_usage_and_exits_zero(bin: &str) {
    let mut env = Env::start(bin).await;
    let admin = env.admin.clone();
    let (id, key) = env
        .demo
        .create_key(&admin, json!({"owner": "acme", "scopes": ["orders:read"]}))
        .await;
    let mut valid = 0;
    for i in 0..25 {
        let path = if i % 2 == 0 {
            "/v1/orders"
        } else {
            "/v1/whoami"
        };
        assert_eq!(env.demo.get(path, Some(&key)).await.status, StatusCode::OK);
        valid += 1;
    }
    // Refused requests are not usage.
    env.demo
        .post("/v1/orders", Some(&key), json!({"item": "x"}))
        .await
        .assert_error(403, "insufficient_scope");

    let status = env.demo.terminate(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        env.demo.log_text()
    );
    assert!(env.demo.log_text().contains("usage flushed"));

    let mut conn = env.pg.connect().await;
    let (total,): (i64,) = sqlx::query_as("SELECT total_requests FROM api_keys WHERE key_id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, valid);

    // Started again on the same database: the bootstrap key is not added
    // twice, and the details route shows the same totals.
    let demo = DemoServer::start(bin, Env::config(&env.redis, &env.pg, &admin)).await;
    let (bootstraps,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM api_keys WHERE owner = 'bootstrap-admin'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(bootstraps, 1);
    let details = demo.get(&format!("/admin/keys/{id}"), Some(&admin)).await;
    assert_eq!(details.json["total_requests"], valid, "{details:?}");
    assert!(details.json["last_used_at"].is_string());
}

/// Reads from `stream` (at most 10 s) until `done` holds for what was read
/// or the peer closes; what was read.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    what: &str,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !done(&buf) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no {what} within 10 s; read {:?}",
        String::from_utf8_lossy(&buf)
    );
    buf
}

/// A response head and as much body as its `Content-Length` says (without
/// one, only the peer closing ends it).
fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

pub async fn in_flight_request_is_answered_after_sigterm(bin: &str) {
    use tokio::io::AsyncWriteExt;

    let mut env = Env::start(bin).await;
    let admin = env.admin.clone();
    let (_, key) = env
        .demo
        .create_key(&admin, json!({"owner": "acme", "scopes": ["orders:write"]}))
        .await;
    let body = br#"{"item": "in-flight", "quantity": 3}"#;
    let (first, rest) = body.split_at(body.len() / 2);

    // `Expect: 100-continue`: the server says when it is reading the body,
    // so the request is known to be in flight (accepted, parsed and past
    // the key check) before the signal, not merely sitting in a backlog.
    let mut conn = tokio::net::TcpStream::connect(&env.demo.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: demo\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let interim = read_until(&mut conn, "100 Continue", |b| {
        b.windows(4).any(|w| w == b"\r\n\r\n")
    })
    .await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    conn.write_all(first).await.unwrap();

    // The signal is handled once the listener is gone.
    env.demo.send_sigterm();
    eventually(
        "the demo to stop accepting connections",
        Duration::from_secs(10),
        || async {
            let refused = tokio::net::TcpStream::connect(&env.demo.addr)
                .await
                .is_err();
            refused.then_some(())
        },
    )
    .await;
    assert!(
        env.demo.is_running(),
        "the demo exited with a request in flight:\n{}",
        env.demo.log_text()
    );

    // The rest of the body: the request is still served, in full.
    conn.write_all(rest).await.unwrap();
    let answer = read_until(&mut conn, "answer", response_complete).await;
    drop(conn);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["item"], "in-flight", "{text}");
    assert_eq!(json["quantity"], 3, "{text}");

    let status = env.demo.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        env.demo.log_text()
    );
}
