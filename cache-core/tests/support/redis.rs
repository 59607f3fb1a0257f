//! A private `redis-server` per test, so a test can kill, pause or restart it
//! without disturbing the others (one [`Proc`] of the deployments' module).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Mutex;

use super::deploy::{server_args, Proc, Readiness};

pub struct RedisServer {
    pub port: u16,
    /// Behind a lock so that pausing takes `&self`, as tests share the
    /// server with the tasks they pause it under.
    proc: Mutex<Proc>,
}

impl RedisServer {
    /// Starts a server on a leased port (held for its whole life, restarts
    /// included) and waits until it answers.
    pub fn start() -> Self {
        let proc = Proc::start("redis", 1, Readiness::Ping, |ports, _| {
            server_args(&["--port", &ports[0].to_string()])
        });
        Self {
            port: proc.port,
            proc: Mutex::new(proc),
        }
    }

    fn proc(&self) -> std::sync::MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(|p| p.into_inner())
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

    /// `kill -9`: the process is gone, its data with it.
    pub fn kill9(&mut self) {
        self.proc().kill9();
    }

    /// Starts again on the same port (after `kill9`).
    pub fn restart(&mut self) {
        self.proc().restart();
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
        self.proc().pause();
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.proc().resume();
    }
}
