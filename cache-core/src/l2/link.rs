//! The connections behind the shared tier, one kind per topology.
//!
//! - **Single**: a `ConnectionManager` with no reconnect retries, so a dead
//!   Redis fails at once instead of waiting out a back-off.
//! - **Cluster**: redis-rs's cluster connection with our budgets and no
//!   client retries, rebuilt when its view goes stale (`cluster.rs`).
//! - **Sentinel**: a `ConnectionManager` to the primary the sentinels name
//!   (`sentinel.rs`), replaced when they name another.
//!
//! The invalidation subscriber needs a plain pub/sub connection: one
//! server's, any cluster node's (classic `PUBLISH` reaches every node of a
//! cluster, so the seeds are tried in turn), or the current primary's.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value};

use super::cluster::ClusterLink;
use super::sentinel::SentinelLink;
use super::topology::{L2Kind, Target};
use crate::CacheConfig;

/// How the tier reaches Redis.
pub(crate) enum Link {
    Single {
        /// Boxed: a client is large beside the other variants.
        client: Box<redis::Client>,
        conn: ConnectionManager,
    },
    Cluster(Arc<ClusterLink>),
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
            Target::Cluster(nodes) => Ok(Self::Cluster(ClusterLink::new(nodes, tls, config)?)),
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
            Self::Cluster(_) => L2Kind::Cluster,
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
            Self::Cluster(c) => AnyConn::Cluster(c.conn()),
            Self::Sentinel(s) => s.conn(),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Tells the link that a call failed (`None`: it timed out): a
    /// sentinel link looks for a new primary, a cluster link rebuilds its
    /// view of the cluster, when the failure says a node is gone or
    /// demoted (connection errors, timeouts, `READONLY`, `CLUSTERDOWN`).
    pub(crate) fn failed(&self, error: Option<&redis::RedisError>) {
        let node_gone = error.is_none_or(|e| {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || matches!(
                    e.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::ReadOnly
                            | redis::ServerErrorKind::ClusterDown
                            | redis::ServerErrorKind::MasterDown
                    ) | redis::ErrorKind::Client
                        | redis::ErrorKind::ClusterConnectionNotFound
                )
        });
        if !node_gone {
            return;
        }
        match self {
            Self::Single { .. } => {}
            Self::Cluster(c) => {
                c.rebuild_soon();
            }
            Self::Sentinel(s) => s.resolve_soon(),
        }
    }

    /// Tells the link that the breaker's probe failed: a cluster link
    /// rebuilds its connection (its view of the cluster may be stale).
    pub(crate) fn probe_failed(&self) {
        if let Self::Cluster(c) = self {
            c.rebuild_soon();
        }
    }

    /// A pub/sub connection for the invalidation subscriber; `attempt`
    /// counts its reconnections, so a cluster subscriber moves on to the
    /// next seed when one is gone.
    pub(crate) async fn pubsub(&self, attempt: u64) -> redis::RedisResult<redis::aio::PubSub> {
        match self {
            Self::Single { client, .. } => client.get_async_pubsub().await,
            Self::Cluster(c) => c.pubsub(attempt).await,
            Self::Sentinel(s) => s.pubsub().await,
        }
    }
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
