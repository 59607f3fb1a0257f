//! `GET /admin/owners/{owner}/keys`: the owner's keys from the owner
//! key-list cache, kept right by create, revoke, rotate and owner
//! suspension, on the instance that made the change at once and on a second
//! instance sharing Redis and the database within the propagation bound.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{eventually, DemoServer, Env};

/// Generous against a loaded CI machine (the event takes milliseconds).
const REACH: Duration = Duration::from_secs(5);

/// `GET /admin/owners/{owner}/keys`, asserting 200 and a JSON array.
async fn list(demo: &DemoServer, admin: &str, owner: &str) -> Vec<Value> {
    let res = demo
        .get(&format!("/admin/owners/{owner}/keys"), Some(admin))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    res.json
        .as_array()
        .unwrap_or_else(|| panic!("{res:?}"))
        .clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = list
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted<const N: usize>(ids: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

fn status(list: &[Value], id: &str) -> Option<String> {
    list.iter()
        .find(|k| k["key_id"] == id)
        .map(|k| k["status"].as_str().unwrap().to_owned())
}

/// Polls `demo`'s list of `owner` until `check` holds.
async fn list_within(
    demo: &DemoServer,
    admin: &str,
    owner: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) {
    eventually(what, REACH, || async {
        let l = list(demo, admin, owner).await;
        check(&l).then_some(())
    })
    .await;
}

/// The contract suite's check: two instances of one binary.
pub async fn owner_key_list(bin: &str) {
    owner_key_list_across_instances(bin, bin).await;
}

/// The check for any two demo binaries on one Redis and database.
pub async fn owner_key_list_across_instances(bin_a: &str, bin_b: &str) {
    let env = Env::start(bin_a).await;
    let admin = env.admin.as_str();
    let a = &env.demo;
    let b = DemoServer::start(bin_b, Env::config(&env.redis, &env.pg, admin)).await;
    for demo in [a, &b] {
        eventually("subscribed to invalidations", REACH, || async {
            let h = demo.get("/health/cache", None).await;
            (h.json["invalidation"]["subscribed"] == true).then_some(())
        })
        .await;
    }

    // Nothing yet, and both instances have cached that.
    assert!(list(a, admin, "acme").await.is_empty());
    assert!(list(&b, admin, "acme").await.is_empty());

    // Keys created on A: on A's list at once, with their fields.
    let (k1, key1) = a
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:read"]}))
        .await;
    let (k2, _) = a
        .create_key(
            admin,
            json!({"owner": "acme", "scopes": ["orders:*", "admin:x"],
                   "expires_at": "2031-01-02T03:04:05Z"}),
        )
        .await;
    a.create_key(admin, json!({"owner": "globex", "scopes": []}))
        .await;
    let res = a.get("/admin/owners/acme/keys", Some(admin)).await;
    assert!(!res.text.contains(&key1), "no plaintext in the list");
    let listed = list(a, admin, "acme").await;
    assert_eq!(ids(&listed), sorted([&k1, &k2]), "{listed:?}");
    let second = listed.iter().find(|k| k["key_id"] == k2.as_str()).unwrap();
    assert_eq!(
        *second,
        json!({"key_id": k2, "scopes": ["orders:*", "admin:x"], "status": "active",
               "expires_at": "2031-01-02T03:04:05Z"})
    );
    let first = listed.iter().find(|k| k["key_id"] == k1.as_str()).unwrap();
    assert_eq!(first["expires_at"], Value::Null);
    // B cached the empty list before the creates: it follows.
    list_within(&b, admin, "acme", "B to list the keys created on A", |l| {
        ids(l) == sorted([&k1, &k2])
    })
    .await;

    // Revoked on A: A at once, B within the bound.
    let res = a
        .call(
            Method::DELETE,
            &format!("/admin/keys/{k1}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{res:?}");
    let listed = list(a, admin, "acme").await;
    assert_eq!(status(&listed, &k1).as_deref(), Some("revoked"));
    assert_eq!(status(&listed, &k2).as_deref(), Some("active"));
    list_within(&b, admin, "acme", "B to list the key revoked on A", |l| {
        status(l, &k1).as_deref() == Some("revoked")
    })
    .await;

    // A key created on B appears on A's list.
    let (k3, _) = b
        .create_key(admin, json!({"owner": "acme", "scopes": []}))
        .await;
    assert_eq!(ids(&list(&b, admin, "acme").await), sorted([&k1, &k2, &k3]));
    list_within(a, admin, "acme", "A to list the key created on B", |l| {
        ids(l) == sorted([&k1, &k2, &k3])
    })
    .await;

    // Rotated on B: the new key at once on B, the old one with its grace
    // expiry; A follows.
    let res = b
        .post(
            &format!("/admin/keys/{k3}/rotate"),
            Some(admin),
            json!({"grace_seconds": 60}),
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{res:?}");
    let k4 = res.json["key_id"].as_str().unwrap().to_owned();
    let listed = list(&b, admin, "acme").await;
    assert_eq!(ids(&listed), sorted([&k1, &k2, &k3, &k4]));
    let old = listed.iter().find(|k| k["key_id"] == k3.as_str()).unwrap();
    assert!(old["expires_at"].is_string(), "grace expiry: {old}");
    list_within(a, admin, "acme", "A to list the rotation made on B", |l| {
        ids(l) == sorted([&k1, &k2, &k3, &k4])
            && l.iter()
                .any(|k| k["key_id"] == k3.as_str() && k["expires_at"].is_string())
    })
    .await;

    // The owner suspended on A: every key revoked on A at once, B follows;
    // another owner's list is untouched.
    let res = a
        .post("/admin/owners/acme/revoke", Some(admin), json!({}))
        .await;
    assert_eq!(res.json, json!({"revoked": 3}), "{res:?}");
    let all_revoked = |l: &[Value]| l.len() == 4 && l.iter().all(|k| k["status"] == "revoked");
    assert!(all_revoked(&list(a, admin, "acme").await));
    list_within(&b, admin, "acme", "B to list the suspension", all_revoked).await;
    for demo in [a, &b] {
        let globex = list(demo, admin, "globex").await;
        assert_eq!(globex.len(), 1);
        assert_eq!(globex[0]["status"], "active");
    }

    // Bad owners are 400; the route wants an admin key.
    for bad in ["acme%00corp", "%20", "acme%01", &"o".repeat(129)] {
        a.get(&format!("/admin/owners/{bad}/keys"), Some(admin))
            .await
            .assert_error(400, "invalid_request");
    }
    a.get("/admin/owners/acme/keys", None)
        .await
        .assert_error(401, "missing_api_key");
    let (_, plain) = a
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:*"]}))
        .await;
    a.get("/admin/owners/acme/keys", Some(&plain))
        .await
        .assert_error(403, "insufficient_scope");
    let h = a.get("/health/cache", None).await;
    assert!(
        h.json["owner_lists"]["entries"].as_u64().unwrap() >= 1,
        "{h:?}"
    );
}
