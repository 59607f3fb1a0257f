//! Every Redis URL form the configuration table lists, through the demo:
//! a cluster, a sentinel-managed primary, `rediss://` with a custom CA and
//! a client certificate (mutual TLS) and an ACL user; and a certificate
//! file that cannot be read, refused at start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::deploy::{RedisCluster, SentinelDeployment, TlsMaterial, TlsRedis};
use crate::support::{eventually, random_key, DemoConfig, DemoServer, TempDir};

/// A demo on SQLite in `dir` and the Redis at `url` (given through
/// `REDIS_URL`), with `env` added.
async fn demo_on(
    bin: &str,
    url: &str,
    env: &[(&str, &str)],
    dir: &TempDir,
) -> (DemoServer, String) {
    let admin = random_key();
    let demo = DemoServer::start(
        bin,
        DemoConfig {
            database_url: Some(format!("sqlite://{}/keys.db", dir.path().display())),
            redis_url: Some(url.to_owned()),
            bootstrap_admin_key: Some(admin.clone()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            via_env: true,
            ..DemoConfig::default()
        },
    )
    .await;
    (demo, admin)
}

/// Waits until health shows Redis up (the subscriber too), and returns
/// its `l2` block.
async fn l2_up(demo: &DemoServer) -> Value {
    eventually("redis up in health", Duration::from_secs(10), || async {
        let health = demo.get("/health/cache", None).await.json;
        (health["l2"]["status"] == "up" && health["invalidation"]["subscribed"] == true)
            .then(|| health["l2"].clone())
    })
    .await
}

/// A key issued and used through the demo lands in Redis: returns its
/// entry's Redis key.
async fn used_key(demo: &DemoServer, admin: &str) -> String {
    let (_, key) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": []}))
        .await;
    assert_eq!(
        demo.get("/v1/whoami", Some(&key)).await.status,
        StatusCode::OK
    );
    let hash = apikey_cache::KeyHasher::new(None).hash(key.as_bytes());
    format!("apikey-cache:key:{}", hash.to_hex())
}

pub async fn cluster_sentinel_and_tls_urls(bin: &str) {
    // Redis Cluster, seeded by two of its nodes.
    let cluster = RedisCluster::start(3, 0);
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        cluster.port(0),
        cluster.port(1)
    );
    let dir = TempDir::new("cluster");
    let (demo, admin) = demo_on(bin, &url, &[], &dir).await;
    assert_eq!(l2_up(&demo).await["kind"], "cluster");
    let entry = used_key(&demo, &admin).await;
    let node = cluster.primary_for_key(&entry);
    eventually(
        "the entry is on its node",
        Duration::from_secs(5),
        || async {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&entry)
                .query(&mut cluster.conn(node))
                .unwrap();
            exists.then_some(())
        },
    )
    .await;
    drop(demo);
    drop(cluster);

    // Sentinel: the primary the sentinels name.
    let sentinels = SentinelDeployment::start();
    let dir = TempDir::new("sentinel");
    let (demo, admin) = demo_on(bin, &sentinels.url(), &[], &dir).await;
    let l2 = l2_up(&demo).await;
    assert_eq!(l2["kind"], "sentinel");
    assert_eq!(
        l2["primary"],
        format!("127.0.0.1:{}", sentinels.primary_port())
    );
    let entry = used_key(&demo, &admin).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&entry)
        .query(&mut sentinels.conn(sentinels.primary_port()))
        .unwrap();
    assert!(exists);
    drop(demo);
    drop(sentinels);

    // Mutual TLS with a custom CA, as an ACL user, all from the
    // environment.
    let material = TlsMaterial::generate_temp();
    let server = TlsRedis::start(&material, true);
    server.add_user("demo", "pw");
    let files = [
        ("APIKEY_CACHE_REDIS_CA_CERT", path(&material.ca_cert)),
        (
            "APIKEY_CACHE_REDIS_CLIENT_CERT",
            path(&material.client_cert),
        ),
        ("APIKEY_CACHE_REDIS_CLIENT_KEY", path(&material.client_key)),
    ];
    let env: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = TempDir::new("tls");
    let (demo, admin) = demo_on(bin, &server.url_with_user("demo", "pw"), &env, &dir).await;
    assert_eq!(l2_up(&demo).await["kind"], "single");
    let entry = used_key(&demo, &admin).await;
    assert_eq!(server.cli(&["EXISTS", &entry]), "1");
    drop(demo);

    // A certificate file that cannot be read: refused at start, saying
    // which setting.
    let missing = material.dir.join("missing.pem");
    let (code, log) = start_and_exit(
        bin,
        &[
            ("REDIS_URL", server.url()),
            ("APIKEY_CACHE_REDIS_CA_CERT", path(&missing)),
            (
                "DATABASE_URL",
                format!("sqlite://{}/keys.db", dir.path().display()),
            ),
            ("BIND", "127.0.0.1:0".to_owned()),
        ],
    );
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("REDIS_CA_CERT"), "{log}");
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Runs the demo with `env` and waits (at most 20 s) for it to exit;
/// its exit code and output.
fn start_and_exit(bin: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin);
    for name in [
        "REDIS_URL",
        "DATABASE_URL",
        "BIND",
        "APIKEY_CACHE_REDIS_URL",
    ] {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo kept running with an unreadable certificate file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), log)
}
