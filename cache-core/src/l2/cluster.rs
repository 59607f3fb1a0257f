//! Redis Cluster: redis-rs's cluster connection, with its defaults
//! overridden, rebuilt when its view of the cluster has gone stale.
//!
//! **Budgets.** redis-rs's defaults have no response timeout and retry 16
//! times with waits from 1.28 s, which would hold a request far past its
//! budget and keep the breaker from ever seeing a failure. Here a call has
//! the command budget (four at most, redirects included) and is never
//! retried by the client: redis-rs retries a command whose connection
//! dropped, which may have run already, and a rate-limit script run twice
//! would take two tokens for one request. A `MOVED` after a failover fails
//! that one call (answered without Redis, like any failed call).
//!
//! **A stale view.** The client refreshes its slot map when a node answers
//! `MOVED`; a primary that died answers nothing, so calls for its slots
//! would fail for as long as the client lives (and while the breaker is
//! open only probes are sent: `PING` to every primary the map names, the
//! dead one included). So a call that fails because a node is gone (a
//! connection error, a timeout, `CLUSTERDOWN`), or a failed probe, rebuilds
//! the connection (at most once per [`MIN_REBUILD_GAP`]), seeded by the
//! configured seeds and every live node a reachable node lists (`CLUSTER
//! NODES`): a seed may be the primary that died. A watcher also asks a
//! node every [`TOPOLOGY_CHECK_EVERY`] which primaries serve which slots,
//! and rebuilds when that changed (a failover, a resharding), so an
//! instance whose traffic never touched the dead node's slots does not
//! wait for a failed call to learn of it.
//!
//! **Events.** Classic `PUBLISH` reaches subscribers on every node, so the
//! subscriber takes a plain connection to any node: the seeds in turn, then
//! the nodes the cluster lists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, ConnectionInfo, TlsCertificates};

use super::link::client;
use super::lock;
use crate::CacheConfig;

/// The shortest gap between two rebuilds.
const MIN_REBUILD_GAP: Duration = Duration::from_secs(1);
/// How often the cluster's primaries are compared with the last ones seen.
const TOPOLOGY_CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct ClusterLink {
    conn: RwLock<ClusterConnection>,
    /// The configured seeds (credentials and TLS included).
    seeds: Vec<ConnectionInfo>,
    /// Live nodes the cluster listed last time it was asked.
    known: Mutex<Vec<ConnectionInfo>>,
    tls: Option<TlsCertificates>,
    connect_timeout: Duration,
    timeout: Duration,
    rebuilding: AtomicBool,
    last_rebuild: Mutex<Option<Instant>>,
}

impl ClusterLink {
    pub(crate) fn new(
        seeds: Vec<ConnectionInfo>,
        tls: Option<TlsCertificates>,
        config: &CacheConfig,
    ) -> redis::RedisResult<Arc<Self>> {
        let connect_timeout = config.redis_connect_timeout;
        let timeout = config.redis_timeout;
        let conn = connect(&seeds, tls.as_ref(), connect_timeout, timeout)?;
        let link = Arc::new(Self {
            conn: RwLock::new(conn),
            seeds,
            known: Mutex::new(Vec::new()),
            tls,
            connect_timeout,
            timeout,
            rebuilding: AtomicBool::new(false),
            last_rebuild: Mutex::new(None),
        });
        tokio::spawn(watch_topology(Arc::downgrade(&link)));
        Ok(link)
    }

    pub(crate) fn conn(&self) -> ClusterConnection {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The nodes to ask about the cluster: the seeds, then the live nodes
    /// it listed last time.
    fn candidates(&self) -> Vec<ConnectionInfo> {
        let mut nodes = self.seeds.clone();
        nodes.extend(lock(&self.known).iter().cloned());
        nodes
    }

    /// Rebuilds the connection in the background (see the module docs),
    /// unless a rebuild runs or ran less than [`MIN_REBUILD_GAP`] ago.
    /// Returns whether a rebuild started.
    pub(crate) fn rebuild_soon(self: &Arc<Self>) -> bool {
        if lock(&self.last_rebuild).is_some_and(|t| t.elapsed() < MIN_REBUILD_GAP) {
            return false;
        }
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return false;
        }
        *lock(&self.last_rebuild) = Some(Instant::now());
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut nodes = this.seeds.clone();
            for node in this.discover().await {
                if !nodes.iter().any(|n| n.addr() == node.addr()) {
                    nodes.push(node);
                }
            }
            match connect(
                &nodes,
                this.tls.as_ref(),
                this.connect_timeout,
                this.timeout,
            ) {
                Ok(conn) => {
                    *this
                        .conn
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
                    tracing::info!(nodes = nodes.len(), "redis cluster connection rebuilt");
                }
                Err(e) => tracing::warn!(error = %e, "cannot rebuild the redis cluster connection"),
            }
            this.rebuilding.store(false, Ordering::Release);
        });
        true
    }

    /// The live nodes a reachable node lists (seeds first, then the nodes
    /// known from last time); remembered for next time. Empty if none
    /// answers.
    async fn discover(&self) -> Vec<ConnectionInfo> {
        let candidates = self.candidates();
        let budget = self.connect_timeout + self.timeout;
        for candidate in candidates {
            let asked = tokio::time::timeout(budget, async {
                let mut c = client(candidate.clone(), self.tls.as_ref())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async::<String>(&mut c)
                    .await
            })
            .await;
            if let Ok(Ok(listed)) = asked {
                return self.remember(&candidate, &listed);
            }
        }
        // Last, through the cluster connection, which knows nodes the
        // seeds may not be among.
        let mut c = self.conn();
        let asked = tokio::time::timeout(
            budget,
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c),
        )
        .await;
        match (asked, self.seeds.first()) {
            (Ok(Ok(listed)), Some(template)) => self.remember(template, &listed),
            _ => Vec::new(),
        }
    }

    /// The live nodes of a `CLUSTER NODES` answer, with `template`'s
    /// credentials and TLS; kept for the next discovery.
    fn remember(&self, template: &ConnectionInfo, listed: &str) -> Vec<ConnectionInfo> {
        let nodes: Vec<ConnectionInfo> = live_nodes(listed)
            .into_iter()
            .map(|(host, port)| at(template, host, port))
            .collect();
        lock(&self.known).clone_from(&nodes);
        nodes
    }

    /// A pub/sub connection to any node: the seeds from the `attempt`-th
    /// on, then the nodes the cluster lists.
    pub(crate) async fn pubsub(&self, attempt: u64) -> redis::RedisResult<redis::aio::PubSub> {
        let start = usize::try_from(attempt).unwrap_or(0) % self.seeds.len().max(1);
        let mut last = None;
        let seeds = self.seeds.iter().cycle().skip(start).take(self.seeds.len());
        for seed in seeds.cloned().collect::<Vec<_>>() {
            match client(seed, self.tls.as_ref())?.get_async_pubsub().await {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        for node in self.discover().await {
            match client(node, self.tls.as_ref())?.get_async_pubsub().await {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no cluster node answers"))
        }))
    }
}

/// A lazy cluster connection seeded by `nodes`, with our budgets.
fn connect(
    nodes: &[ConnectionInfo],
    tls: Option<&TlsCertificates>,
    connect_timeout: Duration,
    timeout: Duration,
) -> redis::RedisResult<ClusterConnection> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(connect_timeout)
        .response_timeout(timeout)
        .overall_response_timeout(Some(timeout * 4))
        .retries(0);
    if let Some(certs) = tls {
        builder = builder.certs(certs.clone());
    }
    Ok(builder.build()?.get_pending_async_connection_with_config(
        redis::cluster::ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(timeout),
    ))
}

/// `template` (credentials, TLS) at another address.
fn at(template: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match template.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    template.clone().set_addr(addr)
}

/// The addresses of the nodes in `CLUSTER NODES` output that are neither
/// failed nor without an address.
fn live_nodes(listed: &str) -> Vec<(String, u16)> {
    listed
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags
                .split(',')
                .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"))
            {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let (host, port) = addr.split('@').next()?.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Compares the cluster's primaries and their slots, as a reachable node
/// lists them, with the last ones seen, and rebuilds the connection when
/// they changed. Ends when the link is dropped.
async fn watch_topology(link: std::sync::Weak<ClusterLink>) {
    let mut seen: Option<Vec<String>> = None;
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut next = 0usize;
    loop {
        tokio::time::sleep(TOPOLOGY_CHECK_EVERY).await;
        let Some(this) = link.upgrade() else { return };
        let budget = this.connect_timeout + this.timeout;
        if conn.is_none() {
            let candidates = this.candidates();
            for _ in 0..candidates.len() {
                let candidate = candidates[next % candidates.len()].clone();
                next = next.wrapping_add(1);
                let connected = tokio::time::timeout(budget, async {
                    client(candidate, this.tls.as_ref())?
                        .get_multiplexed_async_connection()
                        .await
                })
                .await;
                if let Ok(Ok(c)) = connected {
                    conn = Some(c);
                    break;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let asked = tokio::time::timeout(
            budget,
            redis::cmd("CLUSTER").arg("NODES").query_async::<String>(c),
        )
        .await;
        let Ok(Ok(listed)) = asked else {
            conn = None;
            continue;
        };
        let now = primaries(&listed);
        match &seen {
            Some(before) if *before != now => {
                if this.rebuild_soon() {
                    tracing::info!("redis cluster primaries changed: connection rebuilt");
                    seen = Some(now);
                }
            }
            Some(_) => {}
            None => seen = Some(now),
        }
    }
}

/// The primaries of a `CLUSTER NODES` answer that serve slots, with their
/// slots, sorted: equal when the slot map is.
fn primaries(listed: &str) -> Vec<String> {
    let mut out: Vec<String> = listed
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let primary = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "fail?");
            (primary && fields.len() > 8).then(|| {
                let addr = fields[1].split('@').next().unwrap_or("");
                format!("{addr} {}", fields[8..].join(" "))
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_nodes_skip_the_failed() {
        let listed = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,node-b master,fail - 0 0 2 disconnected
c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected
d4 :0@0 noaddr - 0 0 0 disconnected
";
        assert_eq!(
            super::live_nodes(listed),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
        assert_eq!(super::primaries(listed), ["127.0.0.1:7000 0-5460"]);
    }

    #[test]
    fn a_failover_changes_the_primaries() {
        let before = "\
a1 127.0.0.1:7000@17000 master - 0 0 1 connected 0-8191
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 8192-16383
c3 127.0.0.1:7002@17002 slave b2 0 0 2 connected
";
        let after = "\
a1 127.0.0.1:7000@17000 master - 0 0 1 connected 0-8191
b2 127.0.0.1:7001@17001 master,fail - 0 0 2 disconnected
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 8192-16383
";
        assert_ne!(super::primaries(before), super::primaries(after));
        // Order of lines (and a node's own "myself" flag) is not a change.
        let reordered = "\
c3 127.0.0.1:7002@17002 slave b2 0 0 2 connected
b2 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 8192-16383
a1 127.0.0.1:7000@17000 master - 0 0 1 connected 0-8191
";
        assert_eq!(super::primaries(before), super::primaries(reordered));
    }
}
