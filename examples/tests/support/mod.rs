//! Black-box harness for the demo servers: a private `redis-server`, a
//! throwaway PostgreSQL database, the demo binary on a free port, and a small
//! HTTP client. Written against the contract only, so the actix demo's tests
//! can use it with their own binary.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

// One port reservation scheme for every test server in the workspace.
#[path = "../../../cache-core/tests/support/ports.rs"]
mod ports;
pub use ports::PortLease;
// The server tests create databases on, and URLs through a proxy.
#[path = "../../../cache-core/tests/support/pg.rs"]
mod pg;
// Redis Cluster, Sentinel and TLS deployments, as the core's scale-out
// tests use them.
#[path = "../../../cache-core/tests/support/deploy.rs"]
pub mod deploy;
// A TCP proxy that can cut a demo off from PostgreSQL.
#[path = "../../../cache-core/tests/support/proxy.rs"]
mod proxy;
pub use proxy::TcpProxy;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "apikey-cache-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of this test's own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _lease: PortLease,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        // A process that takes no leases may still hold the port: then
        // redis-server exits at once and another port is tried.
        for _ in 0..5 {
            let dir = TempDir::new("redis");
            let lease = PortLease::acquire();
            let port = lease.port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (apt-get install redis-server)");
            let mut server = Self {
                port,
                child,
                _lease: lease,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if server.ping() {
                    return server;
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server on port {port} did not answer PING"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `KEYS pattern`, spoken in RESP over a plain socket (no Redis client
    /// among the dev-dependencies for one command).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        use std::io::BufRead;
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let command = format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
        s.write_all(command.as_bytes()).unwrap();
        let mut reader = std::io::BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let count: usize = line
            .strip_prefix('*')
            .and_then(|n| n.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("KEYS answered {line:?}"));
        (0..count)
            .map(|_| {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let len: usize = line
                    .strip_prefix('$')
                    .and_then(|n| n.trim_end().parse().ok())
                    .unwrap_or_else(|| panic!("a bulk string, not {line:?}"));
                let mut bytes = vec![0u8; len + 2];
                reader.read_exact(&mut bytes).unwrap();
                bytes.truncate(len);
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of this test's own, dropped (`WITH (FORCE)`) on drop.
pub struct PgDb {
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDb {
    pub async fn create() -> Self {
        use sqlx::{Connection, Executor};
        let admin_url = pg::admin_url();
        let name = format!("apikey_cache_demo_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to PostgreSQL at {admin_url} \
                     (set APIKEY_CACHE_TEST_PG_URL to a server where the user may CREATE DATABASE): {e}"
                )
            });
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap();
        let _ = conn.close().await;
        Self {
            url: pg::with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A proxy in front of this database that the test can cut (a database
    /// outage without touching the shared server), and the database's URL
    /// through it.
    pub async fn proxied(&self) -> (TcpProxy, String) {
        let (upstream, _) = pg::through_proxy(&self.url, 0);
        let proxy = TcpProxy::start(upstream).await;
        let (_, url) = pg::through_proxy(&self.url, proxy.port);
        (proxy, url)
    }

    /// One connection to the test database, for looking at rows directly.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop may run inside a runtime, which cannot block on another:
        // clean up from a thread with a runtime of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .map_err(std::io::Error::other)?;
                conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await
                    .map_err(std::io::Error::other)?;
                let _ = conn.close().await;
                Ok::<(), std::io::Error>(())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// How to start a demo.
#[derive(Default, Clone)]
pub struct DemoConfig {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub bootstrap_admin_key: Option<String>,
    /// Extra environment (e.g. `APIKEY_CACHE_*`).
    pub env: Vec<(String, String)>,
    /// Working directory (default: a fresh temp dir).
    pub cwd: Option<PathBuf>,
    /// Pass the address, URLs and bootstrap key as `BIND`, `DATABASE_URL`,
    /// `REDIS_URL` and `APIKEY_BOOTSTRAP_ADMIN_KEY` instead of flags: the
    /// fallbacks the contract promises.
    pub via_env: bool,
}

/// A random well-formed key, for the bootstrap admin.
pub fn random_key() -> String {
    format!(
        "ak_test{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Variables of the developer's shell that would change what a test runs.
const SCRUBBED_ENV: &[&str] = &[
    "BIND",
    "DATABASE_URL",
    "REDIS_URL",
    "APIKEY_BOOTSTRAP_ADMIN_KEY",
    "APIKEY_CACHE_REDIS_URL",
    "APIKEY_CACHE_MODE",
    "APIKEY_CACHE_PEPPER",
    "APIKEY_CACHE_KEY_PREFIX",
    "APIKEY_CACHE_WARM_KEYS",
];

/// A running demo process, killed on drop (its log printed if the test is
/// failing).
pub struct DemoServer {
    child: Option<Child>,
    pub addr: String,
    pub client: reqwest::Client,
    log: PathBuf,
    /// The demo's port, reserved until the demo is gone.
    _lease: PortLease,
    _dir: TempDir,
}

impl DemoServer {
    /// Starts `bin` on a leased port and waits (at most 20 s) until
    /// `/health/cache` answers 200. If the port was taken by a process that
    /// takes no leases, tries another.
    pub async fn start(bin: &str, config: DemoConfig) -> Self {
        for _ in 0..4 {
            if let Some(server) = Self::try_start(bin, &config).await {
                return server;
            }
        }
        panic!("the demo could not bind any of 4 ports");
    }

    /// `None` if the demo exited because its port was in use.
    async fn try_start(bin: &str, config: &DemoConfig) -> Option<Self> {
        let dir = TempDir::new("demo");
        let log = dir.path().join("demo.log");
        let lease = PortLease::acquire();
        let addr = format!("127.0.0.1:{}", lease.port());
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(bin);
        for name in SCRUBBED_ENV {
            cmd.env_remove(name);
        }
        cmd.current_dir(config.cwd.as_deref().unwrap_or(dir.path()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let settings = [
            ("--bind", "BIND", Some(&addr)),
            (
                "--database-url",
                "DATABASE_URL",
                config.database_url.as_ref(),
            ),
            ("--redis-url", "REDIS_URL", config.redis_url.as_ref()),
            (
                "--bootstrap-admin-key",
                "APIKEY_BOOTSTRAP_ADMIN_KEY",
                config.bootstrap_admin_key.as_ref(),
            ),
        ];
        for (flag, var, value) in settings {
            match value {
                Some(value) if config.via_env => {
                    cmd.env(var, value);
                }
                Some(value) => {
                    cmd.arg(flag).arg(value);
                }
                None => {}
            }
        }
        cmd.envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd.spawn().expect("start the demo binary");
        let mut server = Self {
            child: Some(child),
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            log,
            _lease: lease,
            _dir: dir,
        };
        server.wait_ready().await.then_some(server)
    }

    /// `false` if the demo exited because its address was in use.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                if self
                    .log_text()
                    .to_lowercase()
                    .contains("address already in use")
                {
                    self.child = None;
                    return false;
                }
                panic!(
                    "the demo exited during start-up ({status}):\n{}",
                    self.log_text()
                );
            }
            let res = self
                .client
                .get(self.url("/health/cache"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if matches!(&res, Ok(r) if r.status() == StatusCode::OK) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not become healthy: {res:?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Sends SIGTERM and waits (at most `within`) for the exit.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(within).await
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (at most `within`, then kills it and panics) for the exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the demo did not exit within {within:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One request; `key` goes in `Authorization: Bearer`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.client.request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Answer::from(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.call(Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Answer {
        self.call(Method::POST, path, key, Some(body)).await
    }

    /// `POST /admin/keys` with `body`; panics unless 201. `(key_id, key)`.
    pub async fn create_key(&self, admin: &str, body: Value) -> (String, String) {
        let res = self.post("/admin/keys", Some(admin), body).await;
        assert_eq!(res.status, StatusCode::CREATED, "{res:?}");
        (
            res.json["key_id"].as_str().unwrap().to_owned(),
            res.json["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Writes `raw` on a fresh connection and returns the status code of
    /// the answer (0 if the server closed without one).
    pub async fn raw(&self, raw: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        // The server may answer (and close) before reading everything.
        let _ = stream.write_all(raw).await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "no answer to {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        );
        let head = String::from_utf8_lossy(&buf);
        head.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- demo log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A response: status, headers and the body as JSON (`Null` if not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Answer {
    async fn from(res: reqwest::Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            json,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a core rejection: status, `error`, JSON `message`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.json["error"], error, "{self:?}");
        assert!(self.json["message"].is_string(), "{self:?}");
    }
}

/// Polls `check` (at most `within`) until it returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A demo with its own Redis and PostgreSQL database, a bootstrap admin key,
/// and usage flushed every 100 ms.
pub struct Env {
    pub demo: DemoServer,
    pub admin: String,
    pub redis: RedisServer,
    pub pg: PgDb,
}

impl Env {
    pub async fn start(bin: &str) -> Self {
        let redis = RedisServer::start();
        let pg = PgDb::create().await;
        let admin = random_key();
        let demo = DemoServer::start(bin, Self::config(&redis, &pg, &admin)).await;
        Self {
            demo,
            admin,
            redis,
            pg,
        }
    }

    /// The configuration [`Env::start`] used, to start the demo again.
    pub fn config(redis: &RedisServer, pg: &PgDb, admin: &str) -> DemoConfig {
        DemoConfig {
            database_url: Some(pg.url.clone()),
            redis_url: Some(redis.url()),
            bootstrap_admin_key: Some(admin.to_owned()),
            env: vec![(
                "APIKEY_CACHE_USAGE_FLUSH_INTERVAL".to_owned(),
                "100ms".to_owned(),
            )],
            cwd: None,
            via_env: false,
        }
    }
}
