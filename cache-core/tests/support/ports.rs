//! Ports for test servers, reserved across test processes.
//!
//! nextest runs each test in a process of its own. A port found free by
//! binding `:0` and closing the listener can be taken by a parallel test
//! before our server binds it, or while a `kill -9`ed server is restarted on
//! it. A [`PortLease`] avoids both: its port lies outside the kernel's
//! ephemeral range (where `:0` binds and outgoing connections draw from), and
//! it holds an exclusive `flock` on a per-port file in the temp dir for as
//! long as it lives. Every test server's port comes from here, so no two
//! live leases, in any process, share a port. (Also used by
//! `examples/tests/support` through `#[path]`.)
#![allow(dead_code, unreachable_pub)]

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions, TryLockError};
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;

/// A port reserved for this lease's lifetime. Nothing listens on it until
/// the test starts its server there.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    /// The `flock` is released when the file closes, i.e. on drop (or when
    /// the test process dies, whatever killed it).
    _lock: File,
}

impl PortLease {
    /// A random port that no other lease holds and that is free now.
    pub fn acquire() -> Self {
        let (lo, hi) = candidate_range();
        let span = u32::from(hi - lo) + 1;
        let start = random_u32() % span;
        let dir = std::env::temp_dir().join("apikey-cache-test-ports");
        std::fs::create_dir_all(&dir).expect("port lock dir");
        for i in 0..span {
            // `lo + (start + i) % span` fits in u16: it is at most `hi`.
            let port = lo + ((start + i) % span) as u16;
            let Ok(file) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{port}.lock")))
            else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock | TryLockError::Error(_)) => continue,
            }
            // Something that does not take leases (a developer's server)
            // may hold it anyway.
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            return Self { port, _lock: file };
        }
        panic!("no free port in {lo}..={hi}");
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Ports below the ephemeral range (or above it if it starts low).
fn candidate_range() -> (u16, u16) {
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    const FLOOR: u16 = 10_000;
    if eph_lo > FLOOR + 1_000 {
        (FLOOR, eph_lo - 1)
    } else if eph_hi < u16::MAX - 1_000 {
        (eph_hi + 1, u16::MAX)
    } else {
        // The whole range is ephemeral: the lock still keeps test
        // processes apart.
        (FLOOR, u16::MAX)
    }
}

fn random_u32() -> u32 {
    // RandomState is seeded from the OS per process: enough to spread
    // parallel test processes over the range.
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

#[test]
fn leases_are_exclusive_and_outside_the_ephemeral_range() {
    let (lo, hi) = candidate_range();
    let leases: Vec<PortLease> = (0..20).map(|_| PortLease::acquire()).collect();
    let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
    assert!(ports.iter().all(|p| (lo..=hi).contains(p)), "{ports:?}");
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), leases.len(), "a port leased twice");
}
