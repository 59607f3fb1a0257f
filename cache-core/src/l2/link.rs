//! The connections behind the shared tier, one kind per topology.
//!
//! - **Single**: a `ConnectionManager` with no reconnect retries, so a dead
//!   Redis fails at once instead of waiting out a back-off.
//! - **Cluster**: redis-rs's cluster connection with its defaults overridden:
//!   they have no response timeout and retry 16 times with waits from
//!   1.28 s, which would hold a request far past its budget and keep the
//!   breaker from ever seeing a failure. Here each attempt has the command
//!   budget, a whole call (redirects and retries included) at most four,
//!   and two quick retries, enough to follow a `MOVED` or `TRYAGAIN` during
//!   a failover. A retry can repeat a command whose reply was lost; every
//!   script we run is safe to repeat (fills are `SET NX`, tombstones and the
//!   usage batches idempotent, the limiter's and leases' scripts carry their
//!   own guards, see `limits.rs`).
//! - **Sentinel**: a `ConnectionManager` to the primary the sentinels name
//!   (`sentinel.rs`), replaced when they name another.
//!
//! The invalidation subscriber needs a plain pub/sub connection: one
//! server's, any cluster node's (classic `PUBLISH` reaches every node of a
//! cluster, so the seeds are tried in turn), or the current primary's.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value};

use super::sentinel::SentinelLink;
use super::topology::{L2Kind, Target};
use crate::CacheConfig;

/// Retries of a cluster call (redirects during a failover).
const CLUSTER_RETRIES: u32 = 2;

/// How the tier reaches Redis.
pub(crate) enum Link {
    Single {
        /// Boxed: a client is large beside the other variants.
        client: Box<redis::Client>,
        conn: ConnectionManager,
    },
    Cluster {
        conn: ClusterConnection,
        /// The seed nodes (credentials and TLS included), for pub/sub.
        seeds: Vec<ConnectionInfo>,
        tls: Option<TlsCertificates>,
        /// Budget of asking the cluster for its nodes.
        budget: Duration,
    },
    Sentinel(Arc<SentinelLink>),
}

impl Link {
    /// Builds the connection without connecting. Must run inside a Tokio
    /// runtime (the sentinel link spawns its watcher).
    pub(crate) fn open(
        target: Target,
        tls: Option<TlsCertificates>,
        config: &CacheConfig,
    ) -> Result<Self, redis::RedisError> {
        crate::l2::install_crypto_provider();
        match target {
            Target::Single(info) => {
                let client = client(info, tls.as_ref())?;
                let conn = ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    manager_config(config),
                )?;
                Ok(Self::Single {
                    client: Box::new(client),
                    conn,
                })
            }
            Target::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(config.redis_connect_timeout)
                    .response_timeout(config.redis_timeout)
                    .overall_response_timeout(Some(config.redis_timeout * 4))
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(1)
                    .max_retry_wait(millis(config.redis_timeout))
                    .retry_wait_formula(5, 2);
                if let Some(certs) = &tls {
                    builder = builder.certs(certs.clone());
                }
                let conn = builder.build()?.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(config.redis_connect_timeout)
                        .set_response_timeout(config.redis_timeout),
                );
                Ok(Self::Cluster {
                    conn,
                    seeds: nodes,
                    tls,
                    budget: config.redis_connect_timeout + config.redis_timeout,
                })
            }
            Target::Sentinel {
                sentinels,
                primary_name,
                primary,
            } => Ok(Self::Sentinel(SentinelLink::new(
                sentinels,
                primary_name,
                primary,
                manager_config(config),
                config.redis_connect_timeout + config.redis_timeout,
            )?)),
        }
    }

    pub(crate) fn kind(&self) -> L2Kind {
        match self {
            Self::Single { .. } => L2Kind::Single,
            Self::Cluster { .. } => L2Kind::Cluster,
            Self::Sentinel(_) => L2Kind::Sentinel,
        }
    }

    /// The primary in use, for a sentinel link (`host:port`).
    pub(crate) fn primary(&self) -> Option<String> {
        match self {
            Self::Sentinel(s) => s.primary(),
            _ => None,
        }
    }

    /// A handle for one call.
    pub(crate) fn conn(&self) -> AnyConn {
        match self {
            Self::Single { conn, .. } => AnyConn::Manager(conn.clone()),
            Self::Cluster { conn, .. } => AnyConn::Cluster(conn.clone()),
            Self::Sentinel(s) => s.conn(),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// Tells the link that a call failed, so a sentinel link can look for
    /// a new primary (on connection errors, timeouts and `READONLY`).
    pub(crate) fn failed(&self, error: Option<&redis::RedisError>) {
        if let Self::Sentinel(s) = self {
            let moved = error.is_none_or(|e| {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    || e.kind() == redis::ErrorKind::Client
            });
            if moved {
                s.resolve_soon();
            }
        }
    }

    /// A pub/sub connection for the invalidation subscriber; `attempt`
    /// counts its reconnections, so a cluster subscriber moves on to the
    /// next seed when one is gone.
    pub(crate) async fn pubsub(&self, attempt: u64) -> redis::RedisResult<redis::aio::PubSub> {
        match self {
            Self::Single { client, .. } => client.get_async_pubsub().await,
            Self::Cluster {
                conn,
                seeds,
                tls,
                budget,
            } => {
                // The seeds first, from the next one on each attempt; when
                // none answers, the nodes the cluster knows of (a seed
                // may be a primary that died and was replaced).
                let start = usize::try_from(attempt).unwrap_or(0) % seeds.len().max(1);
                let mut last = None;
                for seed in seeds.iter().cycle().skip(start).take(seeds.len()) {
                    match subscribe_to(seed.clone(), tls.as_ref()).await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                let mut c = conn.clone();
                let listed = tokio::time::timeout(
                    *budget,
                    redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query_async::<String>(&mut c),
                )
                .await;
                if let (Ok(Ok(listed)), Some(template)) = (listed, seeds.first()) {
                    for (host, port) in live_nodes(&listed) {
                        let addr = match template.addr() {
                            redis::ConnectionAddr::TcpTls { insecure, .. } => {
                                redis::ConnectionAddr::TcpTls {
                                    host,
                                    port,
                                    insecure: *insecure,
                                    tls_params: None,
                                }
                            }
                            _ => redis::ConnectionAddr::Tcp(host, port),
                        };
                        match subscribe_to(template.clone().set_addr(addr), tls.as_ref()).await {
                            Ok(p) => return Ok(p),
                            Err(e) => last = Some(e),
                        }
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no cluster node answers"))
                }))
            }
            Self::Sentinel(s) => s.pubsub().await,
        }
    }
}

async fn subscribe_to(
    info: ConnectionInfo,
    tls: Option<&TlsCertificates>,
) -> redis::RedisResult<redis::aio::PubSub> {
    client(info, tls)?.get_async_pubsub().await
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn manager_config(config: &CacheConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(config.redis_connect_timeout))
        .set_response_timeout(Some(config.redis_timeout))
}

/// A client for `info`, with the TLS files when the scheme is TLS.
pub(crate) fn client(
    info: ConnectionInfo,
    tls: Option<&TlsCertificates>,
) -> redis::RedisResult<redis::Client> {
    match (tls, info.addr()) {
        (Some(certs), redis::ConnectionAddr::TcpTls { .. }) => {
            redis::Client::build_with_tls(info, certs.clone())
        }
        _ => redis::Client::open(info),
    }
}

/// One call's connection, whatever the topology.
#[derive(Clone)]
pub(crate) enum AnyConn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
    /// A sentinel link whose primary is not known yet: every call fails at
    /// once (and asks for a resolution).
    Unresolved,
}

fn unresolved() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "no redis primary known yet (asking the sentinels)",
    ))
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Unresolved => Box::pin(async { Err(unresolved()) }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Unresolved => Box::pin(async { Err(unresolved()) }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Unresolved => 0,
        }
    }
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
    }
}
