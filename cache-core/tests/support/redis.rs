//! A private `redis-server` per test, so a test can kill, pause or restart it
//! without disturbing the others.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::PortLease;

pub struct RedisServer {
    pub port: u16,
    /// Held for the server's whole life, restarts included, so no other
    /// test process starts a server on this port meanwhile.
    lease: PortLease,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts a server on a leased port and waits until it answers.
    pub fn start() -> Self {
        // A port can still be taken by a process that takes no leases:
        // then redis-server exits at once and another port is tried.
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(format!(
                "apikey-cache-redis-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let lease = PortLease::acquire();
            let mut server = Self {
                port: lease.port(),
                lease,
                child: None,
                dir,
            };
            if server.spawn() {
                return server;
            }
            server.kill9();
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts redis-server on `self.port` and waits until it answers;
    /// `false` if it exited first (the port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(mut conn) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking connection for test set-up and inspection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
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

    /// `kill -9`: the process is gone, its data with it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (after `kill9`).
    pub fn restart(&mut self) {
        self.kill9();
        assert!(self.spawn(), "port {} was taken meanwhile", self.port);
    }

    /// Sets `maxmemory` (with `noeviction`): `"1"` makes the server answer
    /// reads and refuse writes, `"0"` lifts the limit.
    pub fn set_max_memory(&self, bytes: &str) {
        let mut conn = self.conn();
        for (k, v) in [("maxmemory-policy", "noeviction"), ("maxmemory", bytes)] {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query::<()>(&mut conn)
                .unwrap();
        }
    }

    /// `SIGSTOP`: a hung server that keeps its connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
