//! The scale-out test harness itself (`support::deploy`): a Redis Cluster
//! that routes, publishes across nodes and fails over; a Sentinel
//! deployment that fails over; a TLS server that takes the right CA and
//! client certificate and refuses the wrong ones. Real processes: kept in
//! a binary of their own.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::deploy::{RedisCluster, Role, SentinelDeployment, TlsMaterial, TlsRedis};

fn cluster_client(cluster: &RedisCluster, seed: usize) -> redis::cluster::ClusterConnection {
    redis::cluster::ClusterClient::builder(vec![cluster.node_url(seed)])
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .retries(3)
        .build()
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn cluster_routes_publishes_across_nodes_and_fails_over() {
    let t0 = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    eprintln!("cluster up in {:?}", t0.elapsed());
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    assert_eq!(nodes.iter().filter(|n| n.role == Role::Primary).count(), 3);
    assert_eq!(nodes.iter().filter(|n| n.role == Role::Replica).count(), 3);
    assert_eq!(cluster.url().matches("127.0.0.1:").count(), 3);
    assert!(cluster.url().starts_with("redis+cluster://"));
    assert_eq!(
        cluster.seed_url(2),
        format!("redis+cluster://127.0.0.1:{}", cluster.port(2))
    );

    // Written through one seed, read through another: the clients follow
    // the slot map, whatever node they start from.
    let primaries = cluster.primaries();
    let (a, b) = (primaries[0], primaries[1]);
    let mut via_a = cluster_client(&cluster, a);
    let mut via_b = cluster_client(&cluster, b);
    let keys: Vec<String> = (0..20).map(|i| format!("harness:key:{i}")).collect();
    for k in &keys {
        let _: () = via_a.set(k, format!("v-{k}")).unwrap();
    }
    for k in &keys {
        let v: String = via_b.get(k).unwrap();
        assert_eq!(v, format!("v-{k}"));
    }
    // The keys are spread: some live on every primary.
    let owners: std::collections::BTreeSet<usize> =
        keys.iter().map(|k| cluster.primary_for_key(k)).collect();
    assert_eq!(owners.len(), 3, "20 keys all on {owners:?}");

    // PUBLISH on one node reaches a subscriber of another.
    let mut sub_conn = cluster.conn(a);
    let mut sub = sub_conn.as_pubsub();
    sub.subscribe("harness:events").unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("harness:events")
        .arg("hello")
        .query(&mut cluster.conn(b))
        .unwrap();
    // A node counts its own subscribers only.
    assert_eq!(receivers, 0);
    let msg = sub
        .get_message()
        .expect("the message published on another node");
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
    drop(sub);
    drop(sub_conn);

    // Kill the primary of a key; its replica takes over, with the value.
    let key = &keys[0];
    let victim = cluster.primary_for_key(key);
    let replicas = cluster.replicas_of(victim);
    assert_eq!(replicas.len(), 1);
    // The replica has the write before the kill (`WAIT` on a new
    // connection waits for nothing: it has written nothing).
    let mut on_replica = cluster.conn(replicas[0]);
    redis::cmd("READONLY").query::<()>(&mut on_replica).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = redis::cmd("GET").arg(key).query(&mut on_replica).unwrap();
        if v.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never got {key}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    cluster.kill9(victim);
    let successor = cluster.wait_for_failover(victim);
    eprintln!("failover took {:?}", t.elapsed());
    assert_eq!(successor, replicas[0]);
    assert_eq!(cluster.primary_for_key(key), successor);
    assert_eq!(cluster.nodes()[victim].role, Role::Down);
    let mut fresh = cluster_client(&cluster, b);
    let v: String = fresh.get(key).unwrap();
    assert_eq!(v, format!("v-{key}"));

    // Back, as the successor's replica.
    let t = Instant::now();
    cluster.restart(victim);
    eprintln!("rejoin took {:?}", t.elapsed());
    assert_eq!(cluster.nodes()[victim].role, Role::Replica);
    assert_eq!(cluster.replicas_of(successor), vec![victim]);

    // A hung (SIGSTOPped) primary is failed over too; waited for on a
    // tokio runtime this time.
    let t = Instant::now();
    cluster.pause(successor);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let third = rt.block_on(cluster.wait_for_failover_async(successor));
    eprintln!("failover of a paused primary took {:?}", t.elapsed());
    assert_eq!(third, victim);
    assert_eq!(cluster.nodes()[successor].role, Role::Down);
    cluster.resume(successor);
    cluster.wait_converged();
    assert_eq!(cluster.nodes()[successor].role, Role::Replica);
    eprintln!("cluster test took {:?}", t0.elapsed());
}

#[test]
fn sentinels_fail_the_primary_over() {
    let t0 = Instant::now();
    let mut deployment = SentinelDeployment::start();
    eprintln!("sentinel deployment up in {:?}", t0.elapsed());
    let sentinels = deployment.sentinel_ports();
    assert_eq!(sentinels.len(), 3);
    assert_eq!(
        deployment.url(),
        format!(
            "redis+sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/{}",
            sentinels[0],
            sentinels[1],
            sentinels[2],
            deployment.name()
        )
    );
    let [first, second] = deployment.data_ports()[..] else {
        panic!("two data nodes")
    };
    assert_eq!(deployment.primary_port(), first);

    // A write on the primary reaches the replica.
    let _: () = deployment.conn(first).set("harness:s", "1").unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut deployment.conn(first))
        .unwrap();
    assert_eq!(acked, 1);

    let t = Instant::now();
    let killed = deployment.kill9_primary();
    assert_eq!(killed, first);
    let promoted = deployment.wait_for_new_primary(killed);
    let took = t.elapsed();
    eprintln!("sentinel failover took {took:?}");
    assert_eq!(promoted, second);
    assert!(took < Duration::from_secs(15), "failover took {took:?}");
    assert_eq!(deployment.primary_port(), second);
    let mut conn = deployment.conn(second);
    let v: String = conn.get("harness:s").unwrap();
    assert_eq!(v, "1");
    let _: () = conn.set("harness:s", "2").unwrap();

    // The old primary comes back as the new one's replica.
    let t = Instant::now();
    deployment.restart(killed);
    eprintln!("sentinel rejoin took {:?}", t.elapsed());
    let v: String = deployment.conn(killed).get("harness:s").unwrap();
    assert_eq!(v, "2");
    eprintln!("sentinel test took {:?}", t0.elapsed());
}

/// PING through a fresh TLS client; every step bounded, so a refusal is an
/// error, never a hang.
fn tls_ping(url: &str, certs: redis::TlsCertificates) -> redis::RedisResult<String> {
    let client = redis::Client::build_with_tls(url, certs)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    redis::cmd("PING").query(&mut conn)
}

/// Asserts `result` is an error that came quickly (not after a timeout).
fn assert_refused(what: &str, t: Instant, result: redis::RedisResult<String>) {
    let took = t.elapsed();
    let err = result.expect_err(what);
    eprintln!("{what}: refused in {took:?}: {err}");
    assert!(!err.is_timeout(), "{what}: timed out ({err}), not refused");
    assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
}

#[test]
fn tls_takes_the_right_ca_and_refuses_the_wrong_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t0 = Instant::now();
    let material = TlsMaterial::generate_temp();
    let server = TlsRedis::start(&material, false);
    eprintln!("certificates and TLS server in {:?}", t0.elapsed());
    assert_eq!(
        server.url(),
        format!("rediss://127.0.0.1:{}", server.port())
    );

    assert_eq!(
        tls_ping(&server.url(), material.certificates(false)).unwrap(),
        "PONG"
    );
    let t = Instant::now();
    let wrong = tls_ping(&server.url(), material.wrong_ca_certificates());
    assert_refused("the wrong CA", t, wrong);

    // An ACL user over TLS.
    server.add_user("app", "secret");
    let url = server.url_with_user("app", "secret");
    assert_eq!(
        tls_ping(&url, material.certificates(false)).unwrap(),
        "PONG"
    );
    let t = Instant::now();
    let bad_password = tls_ping(
        &server.url_with_user("app", "wrong"),
        material.certificates(false),
    );
    assert_refused("a wrong password", t, bad_password);
}

#[test]
fn mutual_tls_requires_a_client_certificate_of_the_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let material = TlsMaterial::generate_temp();
    let server = TlsRedis::start(&material, true);
    assert!(server.require_client_cert);

    assert_eq!(
        tls_ping(&server.url(), material.certificates(true)).unwrap(),
        "PONG"
    );
    let t = Instant::now();
    let without = tls_ping(&server.url(), material.certificates(false));
    assert_refused("no client certificate", t, without);
    let t = Instant::now();
    let other = tls_ping(&server.url(), material.wrong_client_certificates());
    assert_refused("another CA's client certificate", t, other);
    assert_eq!(server.cli(&["PING"]), "PONG");
}
