//! Real local Redis deployments for the scale-out tests, from Debian's
//! `redis-server` and `redis-cli`: a Redis Cluster ([`RedisCluster`]), a
//! primary and replica watched by three sentinels ([`SentinelDeployment`]),
//! and a TLS-only server with certificates made by the `openssl` command
//! ([`TlsMaterial`], [`TlsRedis`]).
//!
//! Every process listens on a [`PortLease`]d loopback port and works in a
//! temp dir of its own; everything is killed and removed on drop. The
//! processes' output goes to `redis.log` in their dir, whose tail is in the
//! panic message when one does not start.
//!
//! The waits poll with blocking connections to local processes (each call
//! bounded by a short timeout, so a paused or killed node costs at most
//! that). They have `_async` twins that sleep with tokio between polls, for
//! tests whose own tasks must keep running on the runtime meanwhile.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::PortLease;

/// Bound of a process start, a cluster's creation and convergence, the
/// sentinels' discovery of each other.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of a failover (a few seconds when nothing goes wrong).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect and read/write bound of the inspection connections.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "apikey-cache-{kind}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The last lines of a log file, for panic messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A blocking connection to `redis://127.0.0.1:<port>` whose connect, reads
/// and writes time out after [`INSPECT_TIMEOUT`].
fn inspect_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(INSPECT_TIMEOUT)?;
    conn.set_read_timeout(Some(INSPECT_TIMEOUT))?;
    conn.set_write_timeout(Some(INSPECT_TIMEOUT))?;
    Ok(conn)
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    cmd.query(&mut inspect_conn(port)?)
}

/// `INFO <section>` as a map of its `key:value` lines.
fn info(port: u16, section: &str) -> redis::RedisResult<HashMap<String, String>> {
    let text: String = query(port, redis::cmd("INFO").arg(section))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Calls `check` every [`POLL`] until it gives `Ok`; panics with `what` and
/// the last `Err` (the state that was still wrong) after `timeout`.
fn poll_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; last: {last}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// [`poll_until`] sleeping on tokio's timer between polls.
async fn poll_until_async<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; last: {last}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `redis-server` arguments: `extra`, then what every test server has
/// (loopback only, no persistence, in the foreground).
pub(super) fn server_args(extra: &[&str]) -> Vec<String> {
    extra
        .iter()
        .chain(&[
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .map(|s| (*s).to_owned())
        .collect()
}

/// How [`Proc`] knows its process is up.
#[derive(Clone)]
pub(super) enum Readiness {
    /// Answers `PING` over plain TCP (a server, a cluster node, a sentinel).
    Ping,
    /// Answers `redis-cli <args> PING` (over TLS).
    Cli(Vec<String>),
}

/// One `redis-server` process on a leased port, restartable with the same
/// arguments.
pub(super) struct Proc {
    pub(super) port: u16,
    /// The main port's lease and any extra ones (a cluster bus port), held
    /// for the process's whole life, restarts included.
    leases: Vec<PortLease>,
    dir: PathBuf,
    args: Vec<String>,
    readiness: Readiness,
    child: Option<Child>,
    /// `SIGSTOP`ped: not to be asked anything (it would not answer).
    paused: bool,
}

impl Proc {
    /// Leases `ports` ports, makes a dir, and runs `redis-server` with the
    /// arguments `args(ports, dir)` until it is ready. A port can still be
    /// taken by a process that takes no leases: then redis-server exits at
    /// once and other ports are tried.
    pub(super) fn start(
        kind: &str,
        ports: usize,
        readiness: Readiness,
        args: impl Fn(&[u16], &Path) -> Vec<String>,
    ) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            let leases: Vec<PortLease> = (0..ports).map(|_| PortLease::acquire()).collect();
            let nums: Vec<u16> = leases.iter().map(PortLease::port).collect();
            let dir = temp_dir(kind);
            let mut p = Self {
                port: nums[0],
                args: args(&nums, &dir),
                leases,
                dir,
                readiness: readiness.clone(),
                child: None,
                paused: false,
            };
            if p.spawn() {
                return p;
            }
            last_log = log_tail(&p.log());
            p.kill9();
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        panic!("{kind}: redis-server did not start on any of 5 ports; its log:\n{last_log}");
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Runs the process and waits until it is ready; `false` if it exited
    /// first (its port was taken).
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log file");
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if self.ready() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not become ready; its log:\n{}",
            self.port,
            log_tail(&self.log())
        );
    }

    fn ready(&self) -> bool {
        match &self.readiness {
            Readiness::Ping => query::<String>(self.port, &redis::cmd("PING")).is_ok(),
            Readiness::Cli(args) => Command::new("redis-cli")
                .args(args)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "PING"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG"),
        }
    }

    /// Running and not paused: it answers.
    pub(super) fn alive(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub(super) fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = self.child.is_some();
    }

    pub(super) fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    pub(super) fn kill9(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(super) fn restart(&mut self) {
        self.kill9();
        assert!(self.spawn(), "port {} was taken meanwhile", self.port);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Redis Cluster
// ---------------------------------------------------------------------------

/// A node's role as it reports it (`ROLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// Killed, paused, or not answering.
    Down,
}

/// A node of a [`RedisCluster`] now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The index for [`RedisCluster`]'s methods.
    pub index: usize,
    pub port: u16,
    pub role: Role,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The primary's id, for a replica.
    primary: Option<String>,
    /// Slot ranges (`a-b` or `a`) it serves.
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>, String> {
    let text: String = query(port, redis::cmd("CLUSTER").arg("NODES"))
        .map_err(|e| format!("CLUSTER NODES on {port}: {e}"))?;
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("unexpected CLUSTER NODES line on {port}: {line}");
        if f.len() < 8 {
            return Err(bad());
        }
        // `ip:port@cport[,hostname]`
        let addr_port = f[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)?;
        let slots = f[8..]
            .iter()
            // `[slot->-id]` / `[slot-<-id]`: a migration in progress.
            .filter(|s| !s.starts_with('['))
            .map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|a| (a, a)),
            })
            .collect::<Option<Vec<(u16, u16)>>>()
            .ok_or_else(bad)?;
        lines.push(NodeLine {
            id: f[0].to_owned(),
            port: addr_port,
            flags: f[2].split(',').map(str::to_owned).collect(),
            primary: (f[3] != "-").then(|| f[3].to_owned()),
            slots,
        });
    }
    Ok(lines)
}

fn role(port: u16) -> Role {
    match query::<Vec<redis::Value>>(port, &redis::cmd("ROLE")) {
        Ok(v) => match v.first() {
            Some(redis::Value::BulkString(b)) if b == b"master" => Role::Primary,
            Some(redis::Value::BulkString(b)) if b == b"slave" => Role::Replica,
            _ => Role::Down,
        },
        Err(_) => Role::Down,
    }
}

/// A Redis Cluster of `primaries` primaries with `replicas_per_primary`
/// replicas each, one `redis-server --cluster-enabled yes` per node, made
/// with `redis-cli --cluster create`.
///
/// A node keeps its port, bus port, dir and `nodes.conf` across
/// [`kill9`](Self::kill9) and [`restart`](Self::restart), so a restarted
/// node rejoins with its id (as a replica, if a replica took its slots
/// over meanwhile). No node persists data.
pub struct RedisCluster {
    nodes: Vec<Proc>,
    /// The nodes' cluster ids, fixed for their life.
    ids: Vec<String>,
    primaries: usize,
    /// Slot ranges a node served when it was killed, for
    /// [`wait_for_failover`](Self::wait_for_failover).
    killed_slots: HashMap<usize, Vec<(u16, u16)>>,
}

impl RedisCluster {
    /// `--cluster-node-timeout`: a primary is flagged as failed this long
    /// after it stops answering, and its replica is promoted a second or
    /// two later.
    pub const NODE_TIMEOUT_MS: u64 = 1000;

    /// Starts `primaries * (1 + replicas_per_primary)` nodes, creates the
    /// cluster, and waits until every node reports `cluster_state:ok` with
    /// all slots covered, agrees on the topology, and every replica is in
    /// sync with its primary. Which node replicates which is
    /// `redis-cli`'s choice: see [`nodes`](Self::nodes) and
    /// [`replicas_of`](Self::replicas_of).
    pub fn start(primaries: usize, replicas_per_primary: usize) -> Self {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs 3 primaries"
        );
        let total = primaries * (1 + replicas_per_primary);
        let nodes: Vec<Proc> = (0..total)
            .map(|_| {
                Proc::start("cluster-node", 2, Readiness::Ping, |ports, dir| {
                    let mut args: Vec<String> = [
                        "--port",
                        &ports[0].to_string(),
                        // Explicit, so `port + 10000` (maybe another test's
                        // port) is never used.
                        "--cluster-port",
                        &ports[1].to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        &Self::NODE_TIMEOUT_MS.to_string(),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        // A replica's first sync would wait 5 s for others.
                        "--repl-diskless-sync-delay",
                        "0",
                        "--daemonize",
                        "no",
                    ]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
                    // Absolute: redis resolves it against `dir`.
                    args.push("--dir".into());
                    args.push(dir.display().to_string());
                    args.push("--cluster-config-file".into());
                    args.push(dir.join("nodes.conf").display().to_string());
                    args
                })
            })
            .collect();

        let out_path = nodes[0].dir.join("cluster-create.log");
        let out = std::fs::File::create(&out_path).expect("create log");
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let mut child = create
            .args([
                "--cluster-replicas",
                &replicas_per_primary.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("create log"))
            .stderr(out)
            .spawn()
            .expect("redis-cli is installed");
        // It waits for the nodes to join with no limit of its own.
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("redis-cli") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster create did not finish in {START_TIMEOUT:?}:\n{}",
                    log_tail(&out_path)
                );
            }
            std::thread::sleep(POLL);
        };
        assert!(
            status.success(),
            "redis-cli --cluster create failed:\n{}",
            log_tail(&out_path)
        );

        let ids = nodes
            .iter()
            .map(|n| query(n.port, redis::cmd("CLUSTER").arg("MYID")).expect("CLUSTER MYID"))
            .collect();
        let cluster = Self {
            nodes,
            ids,
            primaries,
            killed_slots: HashMap::new(),
        };
        poll_until("the new cluster converges", START_TIMEOUT, || {
            cluster.converged()
        });
        cluster
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// The node with this port.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// `redis://127.0.0.1:<port>` of one node, for a plain connection to it
    /// (or as a seed of `redis::cluster::ClusterClient`).
    pub fn node_url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[node].port)
    }

    /// `redis+cluster://127.0.0.1:<port>`: the cluster, seeded by one node.
    pub fn seed_url(&self, node: usize) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[node].port)
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`: the cluster, seeded
    /// by every node that is a primary now.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Primary)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every node's port and role, as each reports it now.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, n)| NodeInfo {
                index,
                port: n.port,
                role: if n.alive() { role(n.port) } else { Role::Down },
            })
            .collect()
    }

    /// The nodes that report being primaries now.
    pub fn primaries(&self) -> Vec<usize> {
        self.nodes()
            .iter()
            .filter(|n| n.role == Role::Primary)
            .map(|n| n.index)
            .collect()
    }

    /// The nodes that replicate `primary`, in a live node's view.
    pub fn replicas_of(&self, primary: usize) -> Vec<usize> {
        let lines = self.view().expect("a live node's CLUSTER NODES");
        lines
            .iter()
            .filter(|l| l.primary.as_deref() == Some(&self.ids[primary]))
            .filter_map(|l| self.index_of_port(l.port))
            .collect()
    }

    /// The node that serves `key`'s slot, in a live node's view
    /// (`CLUSTER KEYSLOT`, then `CLUSTER NODES`).
    pub fn primary_for_key(&self, key: &str) -> usize {
        let port = self.live_port().expect("a live node");
        let slot: u16 =
            query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).expect("CLUSTER KEYSLOT");
        let lines = cluster_nodes(port).unwrap();
        let owner = lines
            .iter()
            .find(|l| l.has("master") && l.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .unwrap_or_else(|| panic!("no node serves slot {slot} (key {key:?})"));
        self.index_of_port(owner.port)
            .unwrap_or_else(|| panic!("slot {slot} is served by unknown port {}", owner.port))
    }

    /// A blocking connection to one node (reads and writes time out after
    /// a second), for set-up and inspection. Not cluster-aware: a key of
    /// another node's slot gets `MOVED`.
    pub fn conn(&self, node: usize) -> redis::Connection {
        inspect_conn(self.nodes[node].port)
            .unwrap_or_else(|e| panic!("connect to cluster node {node}: {e}"))
    }

    /// `kill -9` one node: it is gone with its data; its `nodes.conf`
    /// stays for [`restart`](Self::restart).
    pub fn kill9(&mut self, node: usize) {
        self.record_slots(node);
        self.nodes[node].kill9();
    }

    /// The slots `node` serves, whose takeover `wait_for_failover` waits
    /// for, as another node sees them.
    fn record_slots(&mut self, node: usize) {
        let others = (0..self.nodes.len()).filter(|&i| i != node && self.nodes[i].alive());
        for i in others {
            if let Ok(lines) = cluster_nodes(self.nodes[i].port) {
                let slots = lines
                    .iter()
                    .find(|l| l.id == self.ids[node])
                    .map(|l| l.slots.clone())
                    .unwrap_or_default();
                self.killed_slots.insert(node, slots);
                break;
            }
        }
    }

    /// `SIGSTOP`: a hung node that keeps its connections open. The others
    /// fail it over after the node timeout all the same:
    /// [`wait_for_failover`](Self::wait_for_failover) works as after
    /// [`kill9`](Self::kill9). Until [`resume`](Self::resume), the harness
    /// asks it nothing and [`nodes`](Self::nodes) says it is down.
    pub fn pause(&mut self, node: usize) {
        self.record_slots(node);
        self.nodes[node].pause();
    }

    /// `SIGCONT`. Does not wait: a failed-over primary turns into a
    /// replica of its successor within a second or so; see
    /// [`wait_converged`](Self::wait_converged).
    pub fn resume(&mut self, node: usize) {
        self.nodes[node].resume();
        self.killed_slots.remove(&node);
    }

    /// Waits until every live node agrees on a healthy cluster (as
    /// [`start`](Self::start) does): `cluster_state:ok`, no live node
    /// flagged as failed, as many primaries serving slots as at the start,
    /// every replica in sync.
    pub fn wait_converged(&self) {
        poll_until("the cluster converges", START_TIMEOUT, || self.converged());
    }

    /// Waits until the live nodes flag `killed` (or paused) as failed, a node that was
    /// its replica serves the slots it served, and every live node reports
    /// `cluster_state:ok`; returns the new primary (for a killed replica,
    /// the primary it had). Blocks the thread: see
    /// [`wait_for_failover_async`](Self::wait_for_failover_async).
    pub fn wait_for_failover(&self, killed: usize) -> usize {
        poll_until(
            &format!("node {killed} is failed over"),
            FAILOVER_TIMEOUT,
            || self.failed_over(killed),
        )
    }

    /// [`wait_for_failover`](Self::wait_for_failover), sleeping on tokio's
    /// timer between polls.
    pub async fn wait_for_failover_async(&self, killed: usize) -> usize {
        poll_until_async(
            &format!("node {killed} is failed over"),
            FAILOVER_TIMEOUT,
            || self.failed_over(killed),
        )
        .await
    }

    /// Starts a killed node again (same port, dir and `nodes.conf`) and
    /// waits until the cluster converges with it: after a failover it is
    /// a replica of the node that took its slots, in sync.
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].restart();
        self.killed_slots.remove(&node);
        poll_until(
            &format!("node {node} rejoins the cluster"),
            START_TIMEOUT,
            || self.converged(),
        );
    }

    fn live_port(&self) -> Option<u16> {
        self.nodes.iter().find(|n| n.alive()).map(|n| n.port)
    }

    /// `CLUSTER NODES` of the first live node that answers.
    fn view(&self) -> Result<Vec<NodeLine>, String> {
        let mut last = "no live node".to_owned();
        for n in self.nodes.iter().filter(|n| n.alive()) {
            match cluster_nodes(n.port) {
                Ok(lines) => return Ok(lines),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `Ok` when every live node: says `cluster_state:ok` with every slot
    /// ok and every node known; sees no live node as failed or in
    /// handshake; sees `primaries` primaries serving slots; and, if a
    /// replica, has its link to its primary up.
    fn converged(&self) -> Result<(), String> {
        let live_ports: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect();
        for &port in &live_ports {
            let ci = cluster_info(port)?;
            let get = |k: &str| ci.get(k).map(String::as_str).unwrap_or("?");
            if get("cluster_state") != "ok"
                || get("cluster_slots_ok") != "16384"
                || get("cluster_known_nodes") != self.nodes.len().to_string()
            {
                return Err(format!("node on {port}: {ci:?}"));
            }
            let lines = cluster_nodes(port)?;
            for l in lines.iter().filter(|l| live_ports.contains(&l.port)) {
                if ["fail", "fail?", "handshake", "noaddr"]
                    .iter()
                    .any(|f| l.has(f))
                {
                    return Err(format!("node on {port} sees {}: {:?}", l.port, l.flags));
                }
            }
            let serving = lines
                .iter()
                .filter(|l| l.has("master") && !l.slots.is_empty())
                .count();
            if serving != self.primaries {
                return Err(format!(
                    "node on {port} sees {serving} primaries serving slots"
                ));
            }
            let repl = info(port, "replication").map_err(|e| e.to_string())?;
            if repl.get("role").map(String::as_str) == Some("slave")
                && repl.get("master_link_status").map(String::as_str) != Some("up")
            {
                return Err(format!("replica on {port}: {repl:?}"));
            }
        }
        Ok(())
    }

    fn failed_over(&self, killed: usize) -> Result<usize, String> {
        let killed_id = &self.ids[killed];
        let slots = self.killed_slots.get(&killed).cloned().unwrap_or_default();
        let mut new_primary = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if i == killed || !n.alive() {
                continue;
            }
            let ci = cluster_info(n.port)?;
            if ci.get("cluster_state").map(String::as_str) != Some("ok") {
                return Err(format!("node {i}: {ci:?}"));
            }
            let lines = cluster_nodes(n.port)?;
            let dead = lines
                .iter()
                .find(|l| &l.id == killed_id)
                .ok_or_else(|| format!("node {i} does not know node {killed}"))?;
            if !dead.has("fail") || !dead.slots.is_empty() {
                return Err(format!(
                    "node {i} sees node {killed} as {:?} serving {:?}",
                    dead.flags, dead.slots
                ));
            }
            // Who serves the killed node's first slot range now (for a
            // replica: its primary).
            let owner = match slots.first() {
                Some(&(a, _)) => lines
                    .iter()
                    .find(|l| l.has("master") && l.slots.iter().any(|&(x, y)| x <= a && a <= y)),
                None => lines.iter().find(|l| Some(&l.id) == dead.primary.as_ref()),
            }
            .ok_or_else(|| format!("node {i} sees nobody serving node {killed}'s slots"))?;
            let owner = self
                .index_of_port(owner.port)
                .ok_or_else(|| format!("unknown port {}", owner.port))?;
            if *new_primary.get_or_insert(owner) != owner {
                return Err(format!("the nodes disagree on node {killed}'s successor"));
            }
        }
        let owner = new_primary.ok_or("no live node")?;
        if role(self.nodes[owner].port) != Role::Primary {
            return Err(format!("node {owner} does not report role master yet"));
        }
        Ok(owner)
    }
}

fn cluster_info(port: u16) -> Result<HashMap<String, String>, String> {
    let text: String = query(port, redis::cmd("CLUSTER").arg("INFO"))
        .map_err(|e| format!("CLUSTER INFO on {port}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// One primary and one replica (`--replicaof`), watched by three sentinels
/// (`redis-server <conf> --sentinel`, quorum 2) that fail the primary over
/// about two seconds after it stops answering.
///
/// Both data nodes keep their port and dir across [`kill9_primary`] and
/// [`restart`]. Nothing persists data.
///
/// [`kill9_primary`]: Self::kill9_primary
/// [`restart`]: Self::restart
pub struct SentinelDeployment {
    /// The two data nodes; the first starts as the primary.
    data: Vec<Proc>,
    sentinels: Vec<Proc>,
}

impl SentinelDeployment {
    /// The name the sentinels monitor the primary under.
    pub const NAME: &'static str = "apikey-primary";
    /// `sentinel down-after-milliseconds`.
    pub const DOWN_AFTER_MS: u64 = 1000;
    /// `sentinel failover-timeout`: also, doubled, the wait before a
    /// sentinel retries a failover whose election failed.
    pub const FAILOVER_TIMEOUT_MS: u64 = 3000;

    /// Starts the primary, the replica (waiting until it is in sync), and
    /// the sentinels, and waits until every sentinel names the primary,
    /// sees the replica and the two other sentinels, and `SENTINEL
    /// CKQUORUM` is `OK`, so that a failover can start right away.
    pub fn start() -> Self {
        let primary = Proc::start("sentinel-data", 1, Readiness::Ping, |p, _| {
            data_node_args(p[0], None)
        });
        let replica = Proc::start("sentinel-data", 1, Readiness::Ping, |p, _| {
            data_node_args(p[0], Some(primary.port))
        });
        poll_until("the replica is in sync", START_TIMEOUT, || {
            replica_in_sync(replica.port)
        });
        let sentinels = (0..3)
            .map(|_| {
                Proc::start("sentinel", 1, Readiness::Ping, |p, dir| {
                    let conf = dir.join("sentinel.conf");
                    // A sentinel rewrites its config file (the replicas and
                    // sentinels it learns of, the new primary): one per
                    // sentinel, in its own dir.
                    std::fs::write(&conf, sentinel_conf(p[0], primary.port, dir))
                        .expect("sentinel.conf");
                    vec![conf.display().to_string(), "--sentinel".into()]
                })
            })
            .collect();
        let deployment = Self {
            data: vec![primary, replica],
            sentinels,
        };
        let primary_port = deployment.data[0].port;
        poll_until(
            "the sentinels see the primary, the replica and each other",
            START_TIMEOUT,
            || deployment.sentinels_ready(primary_port, None),
        );
        deployment
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/<name>`.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{}", sentinels.join(","), Self::NAME)
    }

    pub fn name(&self) -> &'static str {
        Self::NAME
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The two data nodes' ports (the first started as the primary).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|d| d.port).collect()
    }

    /// The primary's port, as the first sentinel that answers names it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn primary_port(&self) -> u16 {
        let mut last = String::new();
        for s in self.sentinels.iter().filter(|s| s.alive()) {
            match master_addr(s.port) {
                Ok(port) => return port,
                Err(e) => last = e,
            }
        }
        panic!("no sentinel names the primary: {last}");
    }

    /// A blocking connection to a data node (`redis://127.0.0.1:<port>`),
    /// reads and writes timing out after a second.
    pub fn conn(&self, port: u16) -> redis::Connection {
        inspect_conn(port).unwrap_or_else(|e| panic!("connect to {port}: {e}"))
    }

    /// `kill -9` the current primary (as the sentinels name it); returns
    /// its port.
    pub fn kill9_primary(&mut self) -> u16 {
        let port = self.primary_port();
        self.data_node(port).kill9();
        port
    }

    /// `kill -9` one data node.
    pub fn kill9(&mut self, port: u16) {
        self.data_node(port).kill9();
    }

    /// `SIGSTOP` one data node: hung, its connections open. `SIGCONT`
    /// with [`resume`](Self::resume).
    pub fn pause(&mut self, port: u16) {
        self.data_node(port).pause();
    }

    pub fn resume(&mut self, port: u16) {
        self.data_node(port).resume();
    }

    /// `kill -9` one sentinel (two still make the quorum and a majority).
    pub fn kill9_sentinel(&mut self, index: usize) {
        self.sentinels[index].kill9();
    }

    /// Waits until every live sentinel names a primary other than
    /// `old_port` and that node reports `role:master`; returns its port.
    /// Blocks the thread: see
    /// [`wait_for_new_primary_async`](Self::wait_for_new_primary_async).
    pub fn wait_for_new_primary(&self, old_port: u16) -> u16 {
        poll_until(
            &format!("the sentinels promote a primary other than {old_port}"),
            FAILOVER_TIMEOUT,
            || self.new_primary(old_port),
        )
    }

    /// [`wait_for_new_primary`](Self::wait_for_new_primary), sleeping on
    /// tokio's timer between polls.
    pub async fn wait_for_new_primary_async(&self, old_port: u16) -> u16 {
        poll_until_async(
            &format!("the sentinels promote a primary other than {old_port}"),
            FAILOVER_TIMEOUT,
            || self.new_primary(old_port),
        )
        .await
    }

    /// Starts a killed data node again, as a replica of the current
    /// primary (`--replicaof`, so there are never two primaries), and
    /// waits until it is in sync and every sentinel lists it as a replica.
    pub fn restart(&mut self, port: u16) {
        let primary = self.primary_port();
        assert_ne!(primary, port, "{port} is still the sentinels' primary");
        let node = self.data_node(port);
        node.args = data_node_args(port, Some(primary));
        node.restart();
        poll_until(
            &format!("{port} is a replica in sync again"),
            START_TIMEOUT,
            || {
                replica_in_sync(port)?;
                self.sentinels_ready(primary, Some(port))
            },
        );
    }

    fn data_node(&mut self, port: u16) -> &mut Proc {
        self.data
            .iter_mut()
            .find(|d| d.port == port)
            .unwrap_or_else(|| panic!("{port} is not a data node"))
    }

    /// Every live sentinel names `primary`, sees a replica in sync (`replica`
    /// if given) and the other sentinels, and reaches its quorum.
    fn sentinels_ready(&self, primary: u16, replica: Option<u16>) -> Result<(), String> {
        let live: Vec<u16> = self
            .sentinels
            .iter()
            .filter(|s| s.alive())
            .map(|s| s.port)
            .collect();
        for &s in &live {
            let named = master_addr(s)?;
            if named != primary {
                return Err(format!("sentinel {s} names {named}"));
            }
            let replicas = sentinel_list(s, "REPLICAS")?;
            let ok_replicas = replicas
                .iter()
                .filter(|r| {
                    replica.is_none_or(|p| r.get("port") == Some(&p.to_string()))
                        && r.get("flags").map(String::as_str) == Some("slave")
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                })
                .count();
            if ok_replicas == 0 {
                return Err(format!(
                    "sentinel {s} sees no replica in sync: {replicas:?}"
                ));
            }
            let others = sentinel_list(s, "SENTINELS")?;
            if others.len() < self.sentinels.len() - 1 {
                return Err(format!("sentinel {s} knows {} sentinels", others.len()));
            }
            let quorum: String = query(s, redis::cmd("SENTINEL").arg("CKQUORUM").arg(Self::NAME))
                .map_err(|e| format!("CKQUORUM on {s}: {e}"))?;
            if !quorum.starts_with("OK") {
                return Err(format!("sentinel {s}: {quorum}"));
            }
        }
        Ok(())
    }

    fn new_primary(&self, old_port: u16) -> Result<u16, String> {
        let mut named = None;
        for s in self.sentinels.iter().filter(|s| s.alive()) {
            let port = master_addr(s.port)?;
            if port == old_port {
                return Err(format!("sentinel {} still names {old_port}", s.port));
            }
            if *named.get_or_insert(port) != port {
                return Err("the sentinels disagree".to_owned());
            }
        }
        let port = named.ok_or("no live sentinel")?;
        let repl = info(port, "replication").map_err(|e| format!("INFO on {port}: {e}"))?;
        if repl.get("role").map(String::as_str) != Some("master") {
            return Err(format!("{port} reports {:?}", repl.get("role")));
        }
        Ok(port)
    }
}

fn data_node_args(port: u16, replica_of: Option<u16>) -> Vec<String> {
    // A replica's first sync would wait 5 s for others.
    let mut args = server_args(&[
        "--port",
        &port.to_string(),
        "--repl-diskless-sync-delay",
        "0",
    ]);
    if let Some(primary) = replica_of {
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
    }
    args
}

fn sentinel_conf(port: u16, primary: u16, dir: &Path) -> String {
    let name = SentinelDeployment::NAME;
    format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         daemonize no\n\
         dir {dir}\n\
         sentinel resolve-hostnames no\n\
         sentinel monitor {name} 127.0.0.1 {primary} 2\n\
         sentinel down-after-milliseconds {name} {down}\n\
         sentinel failover-timeout {name} {failover}\n\
         sentinel parallel-syncs {name} 1\n",
        dir = dir.display(),
        down = SentinelDeployment::DOWN_AFTER_MS,
        failover = SentinelDeployment::FAILOVER_TIMEOUT_MS,
    )
}

fn replica_in_sync(port: u16) -> Result<(), String> {
    let repl = info(port, "replication").map_err(|e| format!("INFO on {port}: {e}"))?;
    if repl.get("role").map(String::as_str) == Some("slave")
        && repl.get("master_link_status").map(String::as_str) == Some("up")
    {
        Ok(())
    } else {
        Err(format!("{port}: {repl:?}"))
    }
}

/// The primary's port a sentinel names.
fn master_addr(sentinel: u16) -> Result<u16, String> {
    let addr: Option<(String, String)> = query(
        sentinel,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SentinelDeployment::NAME),
    )
    .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
    let (_, port) = addr.ok_or_else(|| format!("sentinel {sentinel} knows no primary"))?;
    port.parse()
        .map_err(|_| format!("sentinel {sentinel}: port {port:?}"))
}

/// `SENTINEL REPLICAS|SENTINELS <name>`: one map of fields per entry.
fn sentinel_list(sentinel: u16, what: &str) -> Result<Vec<HashMap<String, String>>, String> {
    let entries: Vec<Vec<String>> = query(
        sentinel,
        redis::cmd("SENTINEL")
            .arg(what)
            .arg(SentinelDeployment::NAME),
    )
    .map_err(|e| format!("SENTINEL {what} on {sentinel}: {e}"))?;
    Ok(entries
        .into_iter()
        .map(|flat| {
            flat.chunks(2)
                .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
                .collect()
        })
        .collect())
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// Certificates made with the `openssl` command (ECDSA P-256, valid two
/// days): a CA; a server certificate for `127.0.0.1` and `localhost` (as
/// subjectAltNames: rustls/webpki ignore the CN) and a client certificate,
/// both signed by the CA; and an unrelated CA with a client certificate of
/// its own, for the wrong-CA tests. All PEM files.
pub struct TlsMaterial {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed neither the server's nor the client's certificate.
    pub other_ca_cert: PathBuf,
    pub other_ca_key: PathBuf,
    /// A client certificate signed by the other CA (refused by a server
    /// that trusts `ca_cert`).
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    /// Whether drop removes `dir` (made by [`generate_temp`](Self::generate_temp)).
    owns_dir: bool,
}

impl TlsMaterial {
    /// Makes the certificates in `dir` (created if missing; the caller
    /// removes it).
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("tls dir");
        let p = |name: &str| dir.join(name);
        let m = Self {
            dir: dir.to_owned(),
            ca_cert: p("ca.crt"),
            ca_key: p("ca.key"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            other_ca_cert: p("other-ca.crt"),
            other_ca_key: p("other-ca.key"),
            other_client_cert: p("other-client.crt"),
            other_client_key: p("other-client.key"),
            owns_dir: false,
        };
        make_ca(&m.ca_cert, &m.ca_key, "apikey-cache test CA");
        make_ca(&m.other_ca_cert, &m.other_ca_key, "apikey-cache other CA");
        let leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        make_leaf(
            (&m.server_cert, &m.server_key),
            (&m.ca_cert, &m.ca_key),
            "localhost",
            &format!(
                "{leaf}extendedKeyUsage=serverAuth\n\
                 subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
        );
        make_leaf(
            (&m.client_cert, &m.client_key),
            (&m.ca_cert, &m.ca_key),
            "app",
            &format!("{leaf}extendedKeyUsage=clientAuth\n"),
        );
        make_leaf(
            (&m.other_client_cert, &m.other_client_key),
            (&m.other_ca_cert, &m.other_ca_key),
            "app",
            &format!("{leaf}extendedKeyUsage=clientAuth\n"),
        );
        m
    }

    /// [`generate`](Self::generate) in a temp dir removed on drop.
    pub fn generate_temp() -> Self {
        let mut m = Self::generate(&temp_dir("tls"));
        m.owns_dir = true;
        m
    }

    /// For `redis::Client::build_with_tls`: trusts the CA (only), and
    /// presents the client certificate if `client_cert`.
    pub fn certificates(&self, client_cert: bool) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: client_cert.then(|| redis::ClientTlsConfig {
                client_cert: read(&self.client_cert),
                client_key: read(&self.client_key),
            }),
            root_cert: Some(read(&self.ca_cert)),
        }
    }

    /// Trusts the other CA only (so the server's certificate is refused),
    /// presenting the right client certificate.
    pub fn wrong_ca_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            root_cert: Some(read(&self.other_ca_cert)),
            ..self.certificates(true)
        }
    }

    /// Trusts the right CA, presenting the other CA's client certificate
    /// (refused by a server that checks client certificates).
    pub fn wrong_client_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.other_client_cert),
                client_key: read(&self.other_client_key),
            }),
            root_cert: Some(read(&self.ca_cert)),
        }
    }
}

impl Drop for TlsMaterial {
    fn drop(&mut self) {
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

fn make_ca(cert: &Path, key: &Path, cn: &str) {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-x509", "-new", "-nodes", "-days", "2"];
    args.extend(EC_KEY);
    args.extend(["-keyout", key, "-out", cert, "-subj", &subject]);
    args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(&args);
}

/// A key and a certificate for it signed by `ca`, with the v3 extensions
/// `ext` (an `-extfile`'s lines).
fn make_leaf((cert, key): (&Path, &Path), (ca_cert, ca_key): (&Path, &Path), cn: &str, ext: &str) {
    let csr = cert.with_extension("csr");
    let ext_file = cert.with_extension("ext");
    std::fs::write(&ext_file, ext).expect("ext file");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(EC_KEY);
    let (key_s, csr_s) = (s(key), s(&csr));
    args.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", &subject]);
    openssl(&args);
    let serial = format!("0x{}", uuid::Uuid::new_v4().simple());
    let (cert_s, ca_cert_s, ca_key_s, ext_s) = (s(cert), s(ca_cert), s(ca_key), s(&ext_file));
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_s,
        "-CA",
        &ca_cert_s,
        "-CAkey",
        &ca_key_s,
        "-set_serial",
        &serial,
        "-days",
        "2",
        "-out",
        &cert_s,
        "-extfile",
        &ext_s,
    ]);
}

/// A TLS-only `redis-server` (`--port 0 --tls-port <leased>`) with a
/// [`TlsMaterial`]'s server certificate, trusting its CA for client
/// certificates, which it requires if `require_client_cert`
/// (`--tls-auth-clients yes|no`). The material's files must outlive it.
pub struct TlsRedis {
    proc: Proc,
    /// redis-cli's TLS arguments.
    cli_tls: Vec<String>,
    pub require_client_cert: bool,
}

impl TlsRedis {
    /// Starts the server and waits until `redis-cli --tls` gets `PONG`.
    pub fn start(material: &TlsMaterial, require_client_cert: bool) -> Self {
        let s = |p: &Path| p.display().to_string();
        let mut cli_tls = vec!["--tls".to_owned(), "--cacert".into(), s(&material.ca_cert)];
        if require_client_cert {
            cli_tls.extend([
                "--cert".into(),
                s(&material.client_cert),
                "--key".into(),
                s(&material.client_key),
            ]);
        }
        let proc = Proc::start("tls", 1, Readiness::Cli(cli_tls.clone()), |p, _| {
            let mut args = server_args(&[
                "--port",
                "0",
                "--tls-port",
                &p[0].to_string(),
                "--tls-auth-clients",
                if require_client_cert { "yes" } else { "no" },
            ]);
            for (flag, path) in [
                ("--tls-cert-file", &material.server_cert),
                ("--tls-key-file", &material.server_key),
                ("--tls-ca-cert-file", &material.ca_cert),
            ] {
                args.extend([flag.to_owned(), s(path)]);
            }
            args
        });
        Self {
            proc,
            cli_tls,
            require_client_cert,
        }
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.proc.port)
    }

    /// `rediss://<user>:<password>@127.0.0.1:<port>`.
    pub fn url_with_user(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}", self.proc.port)
    }

    /// Runs `redis-cli` over TLS (with the client certificate if the
    /// server requires one) with these arguments; its stdout, trimmed.
    /// Panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli_tls)
            .args(["-h", "127.0.0.1", "-p", &self.proc.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !stdout.starts_with("ERR"),
            "redis-cli {args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// An ACL user with every key, channel and command
    /// (`ACL SETUSER <user> on ><password> ~* &* +@all`), for
    /// [`url_with_user`](Self::url_with_user).
    pub fn add_user(&self, user: &str, password: &str) {
        let pass = format!(">{password}");
        let ok = self.cli(&["ACL", "SETUSER", user, "on", &pass, "~*", "&*", "+@all"]);
        assert_eq!(ok, "OK", "ACL SETUSER {user}");
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts again on the same port (ACL users are lost).
    pub fn restart(&mut self) {
        self.proc.restart();
    }

    /// `SIGSTOP`: hung, its connections open.
    pub fn pause(&mut self) {
        self.proc.pause();
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) {
        self.proc.resume();
    }
}
