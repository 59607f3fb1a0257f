//! A TCP proxy between a test and its database that can cut or blackhole
//! the connection, to play a database outage without touching the server.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FORWARD: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;

pub struct TcpProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped to drop every open connection.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let (epoch, _) = watch::channel(0u64);
        let task = {
            let (mode, epoch) = (mode.clone(), epoch.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let mut killed = epoch.subscribe();
                    match mode.load(Ordering::SeqCst) {
                        REFUSE => drop(client),
                        BLACKHOLE => {
                            // Hold the socket, read nothing, answer nothing.
                            tokio::spawn(async move {
                                let _held = client;
                                let _ = killed.changed().await;
                            });
                        }
                        _ => {
                            tokio::spawn(async move {
                                let Ok(mut server) = TcpStream::connect(upstream).await else {
                                    return;
                                };
                                let mut client = client;
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    _ = killed.changed() => {}
                                }
                            });
                        }
                    }
                }
            })
        };
        Self {
            port,
            mode,
            epoch,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Drops every connection and refuses new ones (a crashed database).
    pub fn cut(&self) {
        self.set(REFUSE);
    }

    /// Drops every connection; new ones are accepted and never answered (a
    /// partitioned database: the worst case, only timeouts end the wait).
    pub fn blackhole(&self) {
        self.set(BLACKHOLE);
    }

    /// Forwards again (held blackholed sockets are dropped).
    pub fn restore(&self) {
        self.set(FORWARD);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
