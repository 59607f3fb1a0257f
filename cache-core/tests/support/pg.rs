//! Throwaway PostgreSQL databases for integration tests.
//!
//! Each test calls [`PgTestDb::create`] for a database of its own (a unique
//! random name on the server given by `APIKEY_CACHE_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and
//! [`PgTestDb::drop_db`] when done. A test that panics before `drop_db`
//! still drops its database, from `Drop`.
//!
//! Also included by `examples/tests/support` through `#[path]`, so the
//! `postgres` feature gate is on the `mod` declaration, not in here.
#![allow(dead_code, unreachable_pub)]

use sqlx::{Connection, Executor, PgConnection};

/// The environment variable naming the server (and the database to connect
/// to for `CREATE DATABASE`).
pub const PG_URL_ENV: &str = "APIKEY_CACHE_TEST_PG_URL";

/// The server used when [`PG_URL_ENV`] is unset.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL: [`PG_URL_ENV`] or [`DEFAULT_PG_URL`].
pub fn admin_url() -> String {
    std::env::var(PG_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_owned())
}

/// A database created for one test.
#[derive(Debug)]
pub struct PgTestDb {
    /// URL of the new database (same server, user and parameters as the
    /// admin URL).
    pub url: String,
    name: String,
    admin_url: String,
    dropped: bool,
}

impl PgTestDb {
    /// Creates a database named `apikey_cache_test_<random>`.
    ///
    /// Panics with a hint if the server cannot be reached.
    pub async fn create() -> PgTestDb {
        let admin_url = admin_url();
        let name = format!("apikey_cache_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {admin_url} \
                 (set {PG_URL_ENV} to a server where the user may CREATE DATABASE): {e}"
            )
        });
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = conn.close().await;
        PgTestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
            dropped: false,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_db(mut self) {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name)
            .await
            .unwrap_or_else(|e| panic!("DROP DATABASE {} failed: {e}", self.name));
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Reached when a test panicked before `drop_db`. We may be inside a
        // runtime, which cannot block on another, so use a thread of our own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => rt.block_on(drop_database(&admin_url, &name)),
                Err(e) => Err(sqlx::Error::Io(e)),
            }
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop test database {}", self.name),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(admin_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await?;
    let _ = conn.close().await;
    Ok(())
}

/// `base` with its database (the URL path) replaced by `db`.
pub fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (base, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let authority_end = head[authority_start..]
        .find('/')
        .map_or(head.len(), |i| authority_start + i);
    let mut url = format!("{}/{db}", &head[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// `(upstream address, the same URL through 127.0.0.1:port)` of a
/// PostgreSQL URL with a user (`postgres://user@host:port/db`): for tests
/// that put a TCP proxy between the store and the database.
pub fn through_proxy(url: &str, port: u16) -> (std::net::SocketAddr, String) {
    let at = url.find('@').expect("a user in the URL");
    let slash = at + url[at..].find('/').expect("a database in the URL");
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&url[at + 1..slash])
        .ok()
        .and_then(|mut a| a.next())
        .expect("a resolvable PostgreSQL host");
    (
        upstream,
        format!("{}127.0.0.1:{port}{}", &url[..at + 1], &url[slash..]),
    )
}
