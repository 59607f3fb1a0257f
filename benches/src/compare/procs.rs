//! The processes `compare` starts: redis-server, the servers under test,
//! wrk; the PostgreSQL database it creates and drops.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apikey_cache::{KeyAdmin, KeyHasher, PostgresStore};

use super::report::Run;
use super::{Error, START_TIMEOUT};

fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something listens on `port`, or `child` exits.
fn wait_port(child: &mut Child, port: u16, timeout: Duration) -> Result<(), Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("exited ({status}) before listening on {port}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listened on {port} within {timeout:?}").into())
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A redis-server of our own, no persistence, pinned to the client's core.
pub(super) struct Redis {
    _child: Killed,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    pub(super) fn start(pin: &str) -> Result<Self, Error> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("apikey-cache-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new("taskset")
            .args(["-c", pin, "redis-server", "--port"])
            .arg(port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        wait_port(&mut child, port, Duration::from_secs(10))?;
        Ok(Self {
            _child: Killed(child),
            port,
            dir,
        })
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh database holding the bench keys ([`crate::bench_record`]).
pub(super) struct Postgres {
    admin: PostgresStore,
    name: String,
    /// The database's URL.
    pub(super) url: String,
}

impl Postgres {
    pub(super) async fn create(server_url: &str) -> Result<Self, Error> {
        let admin = PostgresStore::connect(server_url)
            .await
            .map_err(|e| format!("PostgreSQL at {server_url}: {e}"))?;
        let name = format!("apikey_cache_compare_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await?;
        let base = server_url
            .rsplit_once('/')
            .map_or(server_url, |(base, _)| base);
        let pg = Self {
            admin,
            url: format!("{base}/{name}"),
            name,
        };
        if let Err(e) = pg.fill().await {
            pg.drop_database().await;
            return Err(e);
        }
        Ok(pg)
    }

    async fn fill(&self) -> Result<(), Error> {
        let store = PostgresStore::connect(&self.url).await?;
        store.migrate().await?;
        let hasher = KeyHasher::new(None);
        for i in 0..crate::KEYS {
            let hash = hasher.hash(crate::key(i).as_bytes());
            store
                .import_key(&crate::bench_record(i, hash, None))
                .await?;
        }
        store.pool().close().await;
        Ok(())
    }

    pub(super) async fn drop_database(self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = sqlx::query(&drop).execute(self.admin.pool()).await {
            eprintln!("compare: could not drop database {}: {e}", self.name);
        }
        self.admin.pool().close().await;
    }
}

/// A server under test: this binary re-run as `--serve <framework> <mode>`.
pub(super) struct Server {
    child: Killed,
    pub(super) port: u16,
}

impl Server {
    pub(super) fn start(
        exe: &Path,
        framework: &str,
        mode: &str,
        env: &[(String, String)],
        pin: &str,
    ) -> Result<Self, Error> {
        let port = free_port()?;
        // `taskset` execs the server: the child's pid is the server's.
        let mut child = Command::new("taskset")
            .args(["-c", pin])
            .arg(exe)
            .args(["--serve", framework, mode])
            .env("PORT", port.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        if let Err(e) = wait_port(&mut child, port, START_TIMEOUT) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{framework} {mode}: {e}").into());
        }
        Ok(Self {
            child: Killed(child),
            port,
        })
    }

    /// The server's user + system CPU time so far, in seconds (every
    /// thread's, from `/proc/<pid>/stat`).
    pub(super) fn cpu_seconds(&self) -> Result<f64, Error> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.0.id()))?;
        // Fields after the command name (which may hold spaces) in parens.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .ok_or("unexpected /proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 here.
        let ticks: u64 = fields
            .get(11..13)
            .ok_or("short /proc/<pid>/stat")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<_, _>>()?;
        Ok(ticks as f64 / clock_ticks_per_second()?)
    }
}

/// `getconf CLK_TCK` (100 on every Linux this runs on).
fn clock_ticks_per_second() -> Result<f64, Error> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    let t: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(*TICKS.get_or_init(|| t))
}

/// wrk against one server, pinned to the client's core.
pub(super) struct Load<'a> {
    pub(super) pin: &'a str,
    pub(super) threads: u32,
    pub(super) connections: u32,
    pub(super) script: &'a Path,
    pub(super) unknown_pct: u32,
    pub(super) port: u16,
}

impl Load<'_> {
    pub(super) fn run(&self, seconds: u64) -> Result<Run, Error> {
        let out = Command::new("taskset")
            .args(["-c", self.pin, "wrk"])
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{seconds}s"))
            .arg("--latency")
            .arg("-s")
            .arg(self.script)
            .arg(format!("http://127.0.0.1:{}/v1/whoami", self.port))
            .env("UNKNOWN_PCT", self.unknown_pct.to_string())
            .output()
            .map_err(|e| format!("wrk: {e}"))?;
        if !out.status.success() {
            return Err(format!("wrk: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Reads wrk's `--latency` report.
pub(super) fn parse_wrk(out: &str) -> Result<Run, Error> {
    let after = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
    };
    let rps: f64 = after("Requests/sec:")
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{out}"))?
        .parse()?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non_2xx = after("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Run {
        rps,
        p50_ms: after("50%").and_then(to_ms),
        p99_ms: after("99%").and_then(to_ms),
        requests,
        non_2xx,
        cpu_us_per_req: None,
    })
}

/// `123.45us`, `1.2ms`, `2.00s` in milliseconds.
fn to_ms(text: &str) -> Option<f64> {
    let (v, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1e3)
    } else {
        return None;
    };
    v.parse::<f64>().ok().map(|v| v * scale)
}

/// L1 bytes per key at `n` keys, measured in a fresh process
/// (`compare --memory n`, see [`crate::memory`]).
pub(super) fn memory_per_key(exe: &Path, n: u64) -> Result<f64, Error> {
    let out = Command::new(exe)
        .args(["--memory", &n.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("compare --memory {n} failed").into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let out = "Running 3s test @ http://127.0.0.1:1/v1/whoami
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   702.15us  120.33us   4.10ms   90.12%
  Latency Distribution
     50%  680.00us
     75%  720.00us
     90%  800.00us
     99%    1.21ms
  137244 requests in 3.00s, 17.14MB read
  Non-2xx or 3xx responses: 1372
Requests/sec:  45748.01
Transfer/sec:      5.71MB
";
        let run = parse_wrk(out).unwrap_or_default();
        assert_eq!(run.rps, 45748.01);
        assert_eq!(run.requests, 137_244);
        assert_eq!(run.non_2xx, 1372);
        assert_eq!(run.p50_ms, Some(0.68));
        assert_eq!(run.p99_ms, Some(1.21));
        assert_eq!(to_ms("2.5s"), Some(2500.0));
        assert!(parse_wrk("garbage").is_err());
    }
}
