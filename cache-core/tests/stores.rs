//! The SQLite and PostgreSQL key stores against real databases: SQLite in a
//! temp file, PostgreSQL in a fresh database per test (see
//! `support/pg.rs`).
//!
//! Each behaviour is one body run against every store; the in-memory store
//! runs the bodies that need no SQL, as the reference whose semantics the
//! database stores must match.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey_cache::{
    KeyAdmin, KeyDetails, KeyHash, KeyHasher, KeyId, KeyRecord, KeyStatus, KeyStore, MemoryStore,
    NewKey, PostgresStore, RateLimit, Scopes, SqliteStore, StoreError, UsageBatch, UsageDelta,
    KEY_PREFIX,
};
use support::pg::PgTestDb;
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Fixtures

/// A SQLite file under the temp dir, deleted (with its WAL files) on drop.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn new() -> Self {
        let name = format!("apikey_cache_test_{}.db", Uuid::new_v4().simple());
        Self {
            path: std::env::temp_dir().join(name),
        }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Direct access to what is behind a store, for arranging and corrupting.
enum Raw {
    Memory(Arc<MemoryStore>),
    Sqlite(SqliteStore, TempFile),
    Postgres(PostgresStore, PgTestDb),
}

/// One store under test.
struct Backend {
    store: Arc<dyn KeyAdmin>,
    raw: Raw,
}

/// Drops every CHECK constraint of `api_keys`, so tests can store what the
/// schema normally refuses.
const PG_DROP_CHECKS: &str = r#"
DO $$
DECLARE c text;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'api_keys'::regclass AND contype = 'c'
    LOOP
        EXECUTE format('ALTER TABLE api_keys DROP CONSTRAINT %I', c);
    END LOOP;
END $$"#;

impl Backend {
    async fn memory() -> Self {
        let store = Arc::new(MemoryStore::new());
        Self {
            store: store.clone(),
            raw: Raw::Memory(store),
        }
    }

    async fn sqlite() -> Self {
        let file = TempFile::new();
        let store = SqliteStore::connect(&file.url())
            .await
            .expect("open sqlite file");
        store.migrate().await.expect("migrate sqlite");
        Self {
            store: Arc::new(store.clone()),
            raw: Raw::Sqlite(store, file),
        }
    }

    async fn postgres() -> Self {
        let db = PgTestDb::create().await;
        let store = PostgresStore::connect(&db.url)
            .await
            .expect("connect postgres");
        store.migrate().await.expect("migrate postgres");
        Self {
            store: Arc::new(store.clone()),
            raw: Raw::Postgres(store, db),
        }
    }

    async fn finish(self) {
        match self.raw {
            Raw::Memory(_) => {}
            Raw::Sqlite(store, file) => {
                store.pool().close().await;
                drop(file);
            }
            Raw::Postgres(store, db) => {
                store.pool().close().await;
                db.drop_db().await;
            }
        }
    }

    fn is_memory(&self) -> bool {
        matches!(self.raw, Raw::Memory(_))
    }

    /// What the store keeps of an instant: the databases keep milliseconds.
    fn stored(&self, t: OffsetDateTime) -> OffsetDateTime {
        if self.is_memory() {
            t
        } else {
            t.replace_millisecond(t.millisecond()).unwrap()
        }
    }

    /// Runs raw SQL (`sqlite` or `postgres` text, parameters `$1`, `$2`...
    /// bound to `binds`) with CHECK constraints out of the way.
    async fn sql(&self, sqlite: &str, postgres: &str, binds: &[&str]) {
        match &self.raw {
            Raw::Memory(_) => panic!("no SQL behind the memory store"),
            Raw::Sqlite(store, _) => {
                let mut conn = store.pool().acquire().await.unwrap();
                sqlx::query("PRAGMA ignore_check_constraints = ON")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                let mut q = sqlx::query(sqlite);
                for b in binds {
                    q = q.bind(*b);
                }
                let done = q.execute(&mut *conn).await;
                sqlx::query("PRAGMA ignore_check_constraints = OFF")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                done.unwrap_or_else(|e| panic!("{sqlite}: {e}"));
            }
            Raw::Postgres(store, _) => {
                sqlx::query(PG_DROP_CHECKS)
                    .execute(store.pool())
                    .await
                    .unwrap();
                let mut q = sqlx::query(postgres);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(store.pool())
                    .await
                    .unwrap_or_else(|e| panic!("{postgres}: {e}"));
            }
        }
    }

    /// Runs a raw `SELECT COUNT(*) ...`.
    async fn count(&self, sqlite: &str, postgres: &str, binds: &[&str]) -> i64 {
        match &self.raw {
            Raw::Memory(_) => panic!("no SQL behind the memory store"),
            Raw::Sqlite(store, _) => {
                let mut q = sqlx::query_scalar(sqlite);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_one(store.pool()).await.unwrap()
            }
            Raw::Postgres(store, _) => {
                let mut q = sqlx::query_scalar(postgres);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_one(store.pool()).await.unwrap()
            }
        }
    }

    /// Stores a record as it is: `MemoryStore::insert` or `import_key`.
    async fn import(&self, record: &KeyRecord) -> Result<KeyRecord, StoreError> {
        match &self.raw {
            Raw::Memory(store) => {
                store.insert(record.clone());
                Ok(record.clone())
            }
            Raw::Sqlite(store, _) => store.import_key(record).await,
            Raw::Postgres(store, _) => store.import_key(record).await,
        }
    }

    /// Sets a key's status behind the admin API (there is no "disable").
    async fn set_status(&self, id: &KeyId, status: KeyStatus) {
        match &self.raw {
            Raw::Memory(store) => {
                store.update(id, |r| r.status = status).unwrap();
            }
            _ => {
                let sql = "UPDATE api_keys SET status = $2 WHERE key_id = $1";
                self.sql(sql, sql, &[id.as_str(), status.as_str()]).await;
            }
        }
    }
}

/// Runs `body(&Backend)` as one test per listed backend, in a module named
/// after the body: `create_and_find::sqlite`, `create_and_find::postgres`...
macro_rules! for_each_store {
    ($body:ident: $($backend:ident),+) => {
        mod $body {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $backend() {
                    let backend = super::Backend::$backend().await;
                    super::$body(&backend).await;
                    backend.finish().await;
                }
            )+
        }
    };
}

fn hasher() -> KeyHasher {
    KeyHasher::new(Some(b"test pepper"))
}

fn hash_of(plaintext: &str) -> KeyHash {
    hasher().hash(plaintext.as_bytes())
}

fn batch(id: Uuid, deltas: &[(&KeyId, u64, OffsetDateTime)]) -> UsageBatch {
    UsageBatch {
        id,
        deltas: deltas
            .iter()
            .map(|(key_id, requests, last_used_at)| UsageDelta {
                key_id: (*key_id).clone(),
                requests: *requests,
                last_used_at: *last_used_at,
            })
            .collect(),
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Corrupt(_)) => {}
        other => panic!("expected StoreError::Corrupt, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Behaviours, run against every store

for_each_store!(create_and_find: memory, sqlite, postgres);
async fn create_and_find(b: &Backend) {
    let s = &*b.store;
    let h = hasher();
    let expires = datetime!(2031-05-06 09:08:09.123456789 +02:00);
    let before = OffsetDateTime::now_utc() - Duration::from_millis(1);
    let a = s
        .create_key(
            &h,
            NewKey::new("acme", ["orders:read", "orders:*", "ünï \"q\" ,[]'"])
                .expires_at(expires)
                .rate_limit(RateLimit::new(100, Duration::from_secs(60)))
                .monthly_quota(1_000_000),
        )
        .await
        .unwrap();
    let e = s
        .create_key(&h, NewKey::new("acme", Vec::<String>::new()))
        .await
        .unwrap();
    let g = s
        .create_key(&h, NewKey::new("globex", ["*"]))
        .await
        .unwrap();

    assert!(a.plaintext.starts_with(KEY_PREFIX));
    assert_ne!(a.plaintext, e.plaintext);
    assert_eq!(a.record.hash, h.hash(a.plaintext.as_bytes()));
    assert_eq!(a.record.owner, "acme");
    assert_eq!(
        a.record.scopes.as_slice(),
        ["orders:read", "orders:*", "ünï \"q\" ,[]'"]
    );
    assert!(a.record.scopes.grants("orders:write"));
    assert_eq!(a.record.status, KeyStatus::Active);
    assert_eq!(a.record.expires_at, Some(b.stored(expires)));
    assert_eq!(
        a.record.rate_limit,
        Some(RateLimit::new(100, Duration::from_secs(60)))
    );
    assert_eq!(a.record.monthly_quota, Some(1_000_000));
    assert_eq!(a.record.created_at, a.record.updated_at);
    assert!(a.record.created_at >= before);
    assert!(a.record.created_at <= OffsetDateTime::now_utc());
    assert!(e.record.scopes.as_slice().is_empty());
    assert_eq!(e.record.expires_at, None);
    assert_eq!(e.record.rate_limit, None);
    assert_eq!(e.record.monthly_quota, None);
    if !b.is_memory() {
        assert_eq!(a.record.created_at.nanosecond() % 1_000_000, 0);
    }

    for k in [&a, &e, &g] {
        let hash = hash_of(&k.plaintext);
        assert_eq!(s.find_by_hash(&hash).await.unwrap(), Some(k.record.clone()));
        assert_eq!(
            s.find_by_id(&k.record.id).await.unwrap(),
            Some(k.record.clone())
        );
        assert_eq!(
            s.key_details(&k.record.id).await.unwrap(),
            Some(KeyDetails::new(k.record.clone(), 0, None))
        );
    }
    // The same plaintext under another pepper is another hash.
    let unpeppered = KeyHasher::new(None).hash(a.plaintext.as_bytes());
    assert_eq!(s.find_by_hash(&unpeppered).await.unwrap(), None);
    let missing = KeyId::from("key_missing");
    assert_eq!(s.find_by_id(&missing).await.unwrap(), None);
    assert_eq!(s.key_details(&missing).await.unwrap(), None);

    let mut acme = vec![a.record.clone(), e.record.clone()];
    acme.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(s.list_by_owner("acme").await.unwrap(), acme);
    assert_eq!(s.list_by_owner("globex").await.unwrap(), vec![g.record]);
    assert!(s.list_by_owner("nobody").await.unwrap().is_empty());
    assert!(s.list_by_owner("ACME").await.unwrap().is_empty());

    if !b.is_memory() {
        // A quota the BIGINT column cannot hold is refused, not clamped.
        let huge = s
            .create_key(&h, NewKey::new("acme", ["x"]).monthly_quota(u64::MAX))
            .await;
        assert_corrupt(huge);
        assert_eq!(s.list_by_owner("acme").await.unwrap().len(), 2);

        // Rate-limit windows are kept in whole seconds: a sub-second one is
        // refused before anything is written (truncated, 5 per 2.5 s would
        // have become a looser 5 per 2 s).
        let odd = s
            .create_key(
                &h,
                NewKey::new("odd", ["x"])
                    .rate_limit(RateLimit::new(5, Duration::from_millis(2500))),
            )
            .await;
        assert!(
            matches!(
                odd,
                Err(StoreError::InvalidRateLimit(
                    apikey_cache::RateLimitError::Period(_)
                ))
            ),
            "{odd:?}"
        );
        assert!(s.list_by_owner("odd").await.unwrap().is_empty());
    }
}

for_each_store!(list_order_is_bytewise: sqlite, postgres);
/// `list_by_owner` orders like `KeyId`'s `Ord` (bytes), whatever the
/// database's collation would say.
async fn list_order_is_bytewise(b: &Backend) {
    let s = &*b.store;
    let h = hasher();
    if let Raw::Postgres(..) = b.raw {
        // Give the column a linguistic collation (where the server has ICU),
        // under which a plain ORDER BY would sort "key_B" after "key_a".
        b.sql(
            "",
            r#"DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu') THEN
                    ALTER TABLE api_keys ALTER COLUMN key_id TYPE text COLLATE "und-x-icu";
                END IF;
            END $$"#,
            &[],
        )
        .await;
    }
    let ids = ["key_b", "key_B", "key__", "key_a", "Key_z", "key_é"];
    for id in ids {
        let k = s.create_key(&h, NewKey::new("acme", ["x"])).await.unwrap();
        let sql = "UPDATE api_keys SET key_id = $2 WHERE key_id = $1";
        b.sql(sql, sql, &[k.record.id.as_str(), id]).await;
    }
    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort();
    let got: Vec<String> = s
        .list_by_owner("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.as_str().to_owned())
        .collect();
    assert_eq!(got, expected);
}

for_each_store!(revoke: memory, sqlite, postgres);
async fn revoke(b: &Backend) {
    let s = &*b.store;
    let h = hasher();
    let k1 = s.create_key(&h, NewKey::new("acme", ["a"])).await.unwrap();
    let k2 = s.create_key(&h, NewKey::new("acme", ["b"])).await.unwrap();
    let k3 = s.create_key(&h, NewKey::new("acme", ["c"])).await.unwrap();
    let other = s.create_key(&h, NewKey::new("other", ["d"])).await.unwrap();
    b.set_status(&k2.record.id, KeyStatus::Disabled).await;
    assert_eq!(
        s.find_by_id(&k2.record.id).await.unwrap().unwrap().status,
        KeyStatus::Disabled
    );
    tokio::time::sleep(Duration::from_millis(5)).await;

    let revoked = s.revoke_key(&k1.record.id).await.unwrap().unwrap();
    let mut expected = k1.record.clone();
    expected.status = KeyStatus::Revoked;
    expected.updated_at = revoked.updated_at;
    assert_eq!(revoked, expected);
    assert!(revoked.updated_at > k1.record.updated_at);
    assert_eq!(
        s.find_by_hash(&hash_of(&k1.plaintext)).await.unwrap(),
        Some(revoked.clone())
    );
    assert_eq!(
        s.revoke_key(&KeyId::from("key_missing")).await.unwrap(),
        None
    );

    // Revoking again still answers with the (revoked) record.
    let again = s.revoke_key(&k1.record.id).await.unwrap().unwrap();
    assert_eq!(again.status, KeyStatus::Revoked);

    // revoke_owner takes the active and disabled keys, not the revoked one,
    // and leaves other owners alone.
    let by_owner = s.revoke_owner("acme").await.unwrap();
    let mut ids: Vec<KeyId> = by_owner.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut want = vec![k2.record.id.clone(), k3.record.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    for r in &by_owner {
        assert_eq!(r.status, KeyStatus::Revoked);
        assert!(r.updated_at > k3.record.updated_at);
        assert_eq!(s.find_by_id(&r.id).await.unwrap().as_ref(), Some(r));
    }
    assert!(s
        .list_by_owner("acme")
        .await
        .unwrap()
        .iter()
        .all(|r| r.status == KeyStatus::Revoked));
    assert_eq!(
        s.find_by_id(&other.record.id).await.unwrap(),
        Some(other.record)
    );
    assert!(s.revoke_owner("acme").await.unwrap().is_empty());
    assert!(s.revoke_owner("nobody").await.unwrap().is_empty());
}

for_each_store!(set_expires_at: memory, sqlite, postgres);
async fn set_expires_at(b: &Backend) {
    let s = &*b.store;
    let k = s
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let at = datetime!(2032-02-03 06:05:06.789123456 +05:30);
    let set = s
        .set_expires_at(&k.record.id, Some(at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.expires_at, Some(b.stored(at)));
    assert!(set.updated_at > k.record.updated_at);
    assert_eq!(set.created_at, k.record.created_at);
    assert!(set.is_expired_at(at + Duration::from_secs(1)));
    assert!(!set.is_expired_at(at - Duration::from_secs(1)));
    assert_eq!(s.find_by_id(&k.record.id).await.unwrap(), Some(set.clone()));
    assert_eq!(
        s.find_by_hash(&hash_of(&k.plaintext)).await.unwrap(),
        Some(set.clone())
    );

    // In the past: the record says so; the store does not refuse it.
    let past = datetime!(2001-01-01 0:00 UTC);
    let set = s
        .set_expires_at(&k.record.id, Some(past))
        .await
        .unwrap()
        .unwrap();
    assert!(set.is_expired_at(OffsetDateTime::now_utc()));

    let cleared = s.set_expires_at(&k.record.id, None).await.unwrap().unwrap();
    assert_eq!(cleared.expires_at, None);
    assert_eq!(s.find_by_id(&k.record.id).await.unwrap(), Some(cleared));
    assert_eq!(
        s.set_expires_at(&KeyId::from("key_missing"), Some(at))
            .await
            .unwrap(),
        None
    );
}

for_each_store!(record_usage_is_idempotent: memory, sqlite, postgres);
async fn record_usage_is_idempotent(b: &Backend) {
    let s = &*b.store;
    let h = hasher();
    let k1 = s.create_key(&h, NewKey::new("acme", ["a"])).await.unwrap();
    let k2 = s.create_key(&h, NewKey::new("acme", ["b"])).await.unwrap();
    let (id1, id2) = (&k1.record.id, &k2.record.id);
    let t1 = datetime!(2030-01-01 0:00:01.500 UTC);
    let t2 = datetime!(2030-01-01 0:00:11.250 UTC);
    let details = |id: &KeyId| {
        let id = id.clone();
        async move {
            let d = s.key_details(&id).await.unwrap().unwrap();
            (d.total_requests, d.last_used_at)
        }
    };

    let first = batch(Uuid::new_v4(), &[(id1, 3, t2), (id2, 1, t1)]);
    s.record_usage(&first).await.unwrap();
    // A retry of the same batch counts once.
    s.record_usage(&first).await.unwrap();
    assert_eq!(details(id1).await, (3, Some(t2)));
    assert_eq!(details(id2).await, (1, Some(t1)));

    // A second batch adds up; last_used_at only moves forward.
    let second = batch(Uuid::new_v4(), &[(id1, 4, t1), (id2, 2, t2)]);
    s.record_usage(&second).await.unwrap();
    assert_eq!(details(id1).await, (7, Some(t2)));
    assert_eq!(details(id2).await, (3, Some(t2)));

    // Replaying the first batch later still does nothing.
    s.record_usage(&first).await.unwrap();
    assert_eq!(details(id1).await, (7, Some(t2)));

    // Unknown keys are skipped; empty batches are fine; duplicates add up.
    let missing = KeyId::from("key_missing");
    let t3 = datetime!(2030-01-01 0:01:00.123456789 UTC);
    s.record_usage(&batch(
        Uuid::new_v4(),
        &[(&missing, 9, t3), (id1, 1, t1), (id1, 2, t3)],
    ))
    .await
    .unwrap();
    s.record_usage(&batch(Uuid::new_v4(), &[])).await.unwrap();
    assert_eq!(details(id1).await, (10, Some(b.stored(t3))));
    assert_eq!(s.find_by_id(&missing).await.unwrap(), None);

    // Zero requests still move last_used_at.
    let t4 = datetime!(2030-01-02 0:00 UTC);
    s.record_usage(&batch(Uuid::new_v4(), &[(id2, 0, t4)]))
        .await
        .unwrap();
    assert_eq!(details(id2).await, (3, Some(t4)));

    // Usage is not a change of the record.
    assert_eq!(s.find_by_id(id1).await.unwrap(), Some(k1.record.clone()));
}

for_each_store!(concurrent_usage_flushes: memory, sqlite, postgres);
/// The same batch flushed from several places at once counts once; distinct
/// concurrent batches all count.
async fn concurrent_usage_flushes(b: &Backend) {
    let k = b
        .store
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    let t = datetime!(2030-01-01 0:00 UTC);
    let same = batch(Uuid::new_v4(), &[(&k.record.id, 5, t)]);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let store = b.store.clone();
        let batch = if i % 2 == 0 {
            same.clone()
        } else {
            batch(
                Uuid::new_v4(),
                &[(&k.record.id, 1, t + Duration::from_secs(i))],
            )
        };
        tasks.spawn(async move { store.record_usage(&batch).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let d = b.store.key_details(&k.record.id).await.unwrap().unwrap();
    assert_eq!(d.total_requests, 5 + 8);
    assert_eq!(d.last_used_at, Some(t + Duration::from_secs(15)));
}

for_each_store!(usage_counts_saturate: memory, sqlite, postgres);
async fn usage_counts_saturate(b: &Backend) {
    // The databases hold at most i64::MAX; they saturate rather than fail
    // or wrap. (The memory store holds u64.)
    let k = b
        .store
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    let t = datetime!(2030-01-01 0:00 UTC);
    let big = i64::MAX as u64 - 1;
    for _ in 0..2 {
        b.store
            .record_usage(&batch(Uuid::new_v4(), &[(&k.record.id, big, t)]))
            .await
            .unwrap();
    }
    let d = b.store.key_details(&k.record.id).await.unwrap().unwrap();
    if b.is_memory() {
        assert_eq!(d.total_requests, 2 * big);
    } else {
        assert_eq!(d.total_requests, i64::MAX as u64);
    }
}

for_each_store!(prunes_old_batch_ids: sqlite, postgres);
async fn prunes_old_batch_ids(b: &Backend) {
    let (old, recent) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let insert_sqlite = "INSERT INTO api_key_usage_batches (batch_id, applied_at) \
         VALUES ($1, CAST(strftime('%s', 'now') AS INTEGER) * 1000 - CAST($2 AS INTEGER) * 86400000)";
    let insert_pg = "INSERT INTO api_key_usage_batches (batch_id, applied_at) \
         VALUES ($1::uuid, now() - make_interval(days => $2::int))";
    b.sql(insert_sqlite, insert_pg, &[&old, "8"]).await;
    b.sql(insert_sqlite, insert_pg, &[&recent, "1"]).await;

    let new = batch(Uuid::new_v4(), &[]);
    b.store.record_usage(&new).await.unwrap();

    let count = |id: String| async move {
        b.count(
            "SELECT COUNT(*) FROM api_key_usage_batches WHERE batch_id = $1",
            "SELECT COUNT(*) FROM api_key_usage_batches WHERE batch_id::text = $1",
            &[&id],
        )
        .await
    };
    assert_eq!(count(old).await, 0, "older than 7 days: pruned");
    assert_eq!(count(recent).await, 1, "kept");
    assert_eq!(count(new.id.to_string()).await, 1, "recorded");
}

for_each_store!(corrupt_rows_are_errors: sqlite, postgres);
/// Rows the schema would refuse (constraints bypassed here) come back as
/// `StoreError::Corrupt`, never as a panic or a made-up record.
async fn corrupt_rows_are_errors(b: &Backend) {
    let s = &*b.store;
    // (what, SQLite, PostgreSQL); `$1` is the key id.
    let cases = [
        (
            "unknown status",
            "UPDATE api_keys SET status = 'weird' WHERE key_id = $1",
            "UPDATE api_keys SET status = 'weird' WHERE key_id = $1",
        ),
        (
            "short hash",
            "UPDATE api_keys SET key_hash = X'0102' WHERE key_id = $1",
            r"UPDATE api_keys SET key_hash = '\x0102'::bytea WHERE key_id = $1",
        ),
        (
            "scopes not strings",
            r#"UPDATE api_keys SET scopes = '["a", 1]' WHERE key_id = $1"#,
            "UPDATE api_keys SET scopes = ARRAY['a', NULL]::text[] WHERE key_id = $1",
        ),
        (
            "negative quota",
            "UPDATE api_keys SET monthly_quota = -1 WHERE key_id = $1",
            "UPDATE api_keys SET monthly_quota = -1 WHERE key_id = $1",
        ),
        (
            "half a rate limit",
            "UPDATE api_keys SET rate_limit_requests = 5 WHERE key_id = $1",
            "UPDATE api_keys SET rate_limit_requests = 5 WHERE key_id = $1",
        ),
        (
            "rate limit beyond u32",
            "UPDATE api_keys SET rate_limit_requests = 5000000000, \
             rate_limit_per_seconds = 1 WHERE key_id = $1",
            "UPDATE api_keys SET rate_limit_requests = 5000000000, \
             rate_limit_per_seconds = 1 WHERE key_id = $1",
        ),
        (
            "negative window",
            "UPDATE api_keys SET rate_limit_requests = 5, \
             rate_limit_per_seconds = -1 WHERE key_id = $1",
            "UPDATE api_keys SET rate_limit_requests = 5, \
             rate_limit_per_seconds = -1 WHERE key_id = $1",
        ),
        (
            "expiry out of range",
            "UPDATE api_keys SET expires_at = 9000000000000000000 WHERE key_id = $1",
            "UPDATE api_keys SET expires_at = 'infinity' WHERE key_id = $1",
        ),
        (
            "created_at out of range",
            "UPDATE api_keys SET created_at = -9000000000000000000 WHERE key_id = $1",
            "UPDATE api_keys SET created_at = '-infinity' WHERE key_id = $1",
        ),
    ];
    for (n, (what, sqlite, postgres)) in cases.into_iter().enumerate() {
        let owner = format!("corrupt-{n}");
        let k = s
            .create_key(&hasher(), NewKey::new(owner.clone(), ["a"]))
            .await
            .unwrap();
        b.sql(sqlite, postgres, &[k.record.id.as_str()]).await;
        eprintln!("case: {what}");
        assert_corrupt(s.find_by_id(&k.record.id).await);
        assert_corrupt(s.list_by_owner(&owner).await);
        assert_corrupt(s.key_details(&k.record.id).await);
        if what != "short hash" {
            assert_corrupt(s.find_by_hash(&hash_of(&k.plaintext)).await);
        } else {
            // Its stored hash no longer matches anything presented.
            assert_eq!(s.find_by_hash(&hash_of(&k.plaintext)).await.unwrap(), None);
        }
    }

    if let Raw::Sqlite(..) = b.raw {
        let k = s
            .create_key(&hasher(), NewKey::new("json", ["a"]))
            .await
            .unwrap();
        b.sql(
            "UPDATE api_keys SET scopes = 'not json' WHERE key_id = $1",
            "",
            &[k.record.id.as_str()],
        )
        .await;
        assert_corrupt(s.find_by_id(&k.record.id).await);
    }

    // Usage totals are not part of the record: only key_details sees them.
    let k = s
        .create_key(&hasher(), NewKey::new("totals", ["a"]))
        .await
        .unwrap();
    let sql = "UPDATE api_keys SET total_requests = -5 WHERE key_id = $1";
    b.sql(sql, sql, &[k.record.id.as_str()]).await;
    assert_eq!(
        s.find_by_id(&k.record.id).await.unwrap(),
        Some(k.record.clone())
    );
    assert_corrupt(s.key_details(&k.record.id).await);

    let k = s
        .create_key(&hasher(), NewKey::new("last_used", ["a"]))
        .await
        .unwrap();
    b.sql(
        "UPDATE api_keys SET last_used_at = 9000000000000000000 WHERE key_id = $1",
        "UPDATE api_keys SET last_used_at = 'infinity' WHERE key_id = $1",
        &[k.record.id.as_str()],
    )
    .await;
    assert_corrupt(s.key_details(&k.record.id).await);

    // The admin path repairs a bad status.
    let k = s
        .create_key(&hasher(), NewKey::new("repair", ["a"]))
        .await
        .unwrap();
    b.sql(
        "UPDATE api_keys SET status = 'weird' WHERE key_id = $1",
        "UPDATE api_keys SET status = 'weird' WHERE key_id = $1",
        &[k.record.id.as_str()],
    )
    .await;
    let revoked = s.revoke_owner("repair").await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].status, KeyStatus::Revoked);
}

for_each_store!(import_keys: memory, sqlite, postgres);
/// Importing a record stores it as it is; importing it again replaces it
/// and keeps its usage totals.
async fn import_keys(b: &Backend) {
    let s = &*b.store;
    let hash = hash_of("ak_issued_elsewhere");
    let mut record = KeyRecord::new(
        KeyId::from("legacy_1"),
        hash,
        "acme",
        Scopes::new(["orders:read"]),
    );
    record.status = KeyStatus::Disabled;
    record.expires_at = Some(datetime!(2033-03-03 3:03:03.333333333 UTC));
    record.rate_limit = Some(RateLimit::new(7, Duration::from_secs(30)));
    record.monthly_quota = Some(42);
    record.created_at = datetime!(2020-01-01 0:00:00.123456 UTC);
    record.updated_at = datetime!(2021-01-01 0:00:00.654321 UTC);

    let stored = b.import(&record).await.unwrap();
    let mut expected = record.clone();
    expected.expires_at = record.expires_at.map(|t| b.stored(t));
    expected.created_at = b.stored(record.created_at);
    expected.updated_at = b.stored(record.updated_at);
    assert_eq!(stored, expected);
    assert_eq!(s.find_by_hash(&hash).await.unwrap(), Some(stored.clone()));
    assert_eq!(s.find_by_id(&record.id).await.unwrap(), Some(stored));

    let t = datetime!(2030-01-01 0:00 UTC);
    s.record_usage(&batch(Uuid::new_v4(), &[(&record.id, 5, t)]))
        .await
        .unwrap();

    let mut changed = record.clone();
    changed.status = KeyStatus::Active;
    changed.scopes = Scopes::new(["orders:*"]);
    changed.rate_limit = None;
    changed.monthly_quota = None;
    changed.expires_at = None;
    let stored = b.import(&changed).await.unwrap();
    assert_eq!(
        s.find_by_id(&record.id).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(
        s.key_details(&record.id).await.unwrap(),
        Some(KeyDetails::new(stored, 5, Some(t)))
    );
    assert_eq!(s.list_by_owner("acme").await.unwrap().len(), 1);

    if !b.is_memory() {
        // Two keys cannot share a hash.
        let clash = KeyRecord::new(KeyId::from("legacy_2"), hash, "acme", Scopes::new(["x"]));
        assert!(matches!(
            b.import(&clash).await,
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(s.find_by_id(&clash.id).await.unwrap(), None);
    }
}

for_each_store!(migrate_twice: memory, sqlite, postgres);
async fn migrate_twice(b: &Backend) {
    let s = &*b.store;
    let k = s
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    assert_eq!(s.find_by_id(&k.record.id).await.unwrap(), Some(k.record));
    let k2 = s
        .create_key(&hasher(), NewKey::new("acme", ["b"]))
        .await
        .unwrap();
    assert_eq!(s.list_by_owner("acme").await.unwrap().len(), 2);
    assert!(s
        .find_by_hash(&hash_of(&k2.plaintext))
        .await
        .unwrap()
        .is_some());
}

for_each_store!(recently_used: memory, sqlite, postgres);
/// Cache warming's listing: used keys only, most recent first, ties broken
/// by hash (descending, bytewise), whatever their status; paged by cursor,
/// one page per call, with nothing skipped or repeated.
async fn recently_used(b: &Backend) {
    let s = &*b.store;
    let h = hasher();
    let mut keys = Vec::new();
    for owner in ["a", "b", "c", "d", "e", "f"] {
        keys.push(s.create_key(&h, NewKey::new(owner, ["x"])).await.unwrap());
    }
    let id = |i: usize| &keys[i].record.id;
    let t1 = datetime!(2030-01-01 0:00:01.250 UTC);
    let t2 = datetime!(2030-01-01 0:00:02.500 UTC);
    let t3 = datetime!(2030-01-01 0:00:03.750 UTC);
    // a, c and f tie at t3; d was used at t2, b at t1; e never.
    s.record_usage(&batch(
        Uuid::new_v4(),
        &[
            (id(0), 1, t3),
            (id(1), 5, t1),
            (id(2), 2, t3),
            (id(3), 1, t2),
            (id(5), 1, t3),
        ],
    ))
    .await
    .unwrap();
    s.revoke_key(id(3)).await.unwrap();

    let mut ties = [0, 2, 5];
    ties.sort_by(|&x, &y| {
        keys[y]
            .record
            .hash
            .as_bytes()
            .cmp(keys[x].record.hash.as_bytes())
    });
    let expected: Vec<(KeyId, OffsetDateTime)> = ties
        .iter()
        .map(|&i| (id(i).clone(), t3))
        .chain([(id(3).clone(), t2), (id(1).clone(), t1)])
        .collect();
    let summary = |page: &[apikey_cache::RecentKey]| -> Vec<(KeyId, OffsetDateTime)> {
        page.iter()
            .map(|k| (k.record.id.clone(), k.last_used_at))
            .collect()
    };

    let all = s.recently_used(10, None).await.unwrap();
    assert_eq!(summary(&all), expected);
    let revoked = all.iter().find(|k| k.record.id == *id(3)).unwrap();
    assert_eq!(revoked.record.status, KeyStatus::Revoked, "listed as it is");
    assert_eq!(
        s.find_by_id(id(0)).await.unwrap().as_ref(),
        Some(&all.iter().find(|k| k.record.id == *id(0)).unwrap().record),
        "the same record a lookup returns"
    );

    // Pages of two, each after the previous page's last key.
    let mut paged = Vec::new();
    let mut cursor = None;
    for want in [2, 2, 1, 0] {
        let page = s.recently_used(2, cursor.as_ref()).await.unwrap();
        assert_eq!(page.len(), want, "page after {cursor:?}");
        cursor = page.last().map(apikey_cache::RecentKey::cursor).or(cursor);
        paged.extend(page);
    }
    assert_eq!(summary(&paged), expected);
    // A cursor inside a tie: the rest of the tie, then the older keys.
    let after_first = all[0].cursor();
    assert_eq!(
        summary(&s.recently_used(10, Some(&after_first)).await.unwrap()),
        expected[1..]
    );
    assert!(s.recently_used(0, None).await.unwrap().is_empty());

    if !b.is_memory() {
        let exists = b
            .count(
                "SELECT COUNT(*) FROM sqlite_master \
                 WHERE type = 'index' AND name = 'api_keys_last_used_at_idx'",
                "SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'api_keys_last_used_at_idx'",
                &[],
            )
            .await;
        assert_eq!(exists, 1, "the migration created the index");
    }
}

for_each_store!(concurrent_migrations: sqlite, postgres);
/// Several instances starting at once may all call `migrate`.
async fn concurrent_migrations(b: &Backend) {
    let url = match &b.raw {
        Raw::Sqlite(_, file) => file.url(),
        Raw::Postgres(_, db) => db.url.clone(),
        Raw::Memory(_) => unreachable!(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        let sqlite = matches!(b.raw, Raw::Sqlite(..));
        tasks.spawn(async move {
            let store: Arc<dyn KeyAdmin> = if sqlite {
                Arc::new(SqliteStore::connect(&url).await?)
            } else {
                Arc::new(PostgresStore::connect(&url).await?)
            };
            store.migrate().await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Store-specific behaviour

fn some_hash() -> KeyHash {
    hash_of("ak_whatever")
}

/// Asserts `fut` fails (not hangs) within `within`.
async fn fails_within<T: std::fmt::Debug>(
    within: Duration,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> StoreError {
    let started = Instant::now();
    let result = tokio::time::timeout(within + Duration::from_secs(5), fut)
        .await
        .expect("the store hung instead of failing");
    let err = result.expect_err("expected an error from an unreachable store");
    assert!(
        started.elapsed() < within,
        "took {:?} to fail ({err})",
        started.elapsed()
    );
    err
}

const UNREACHABLE_PG: &str = "postgres://postgres@127.0.0.1:1/postgres";

#[tokio::test]
async fn postgres_unreachable_fails_fast() {
    let options = PostgresStore::pool_options().acquire_timeout(Duration::from_millis(300));

    let err = fails_within(
        Duration::from_secs(3),
        PostgresStore::connect_with(UNREACHABLE_PG, options.clone()),
    )
    .await;
    assert!(matches!(err, StoreError::Timeout), "{err:?}");

    // The default acquire timeout is bounded too.
    fails_within(
        PostgresStore::DEFAULT_ACQUIRE_TIMEOUT + Duration::from_secs(3),
        PostgresStore::connect(UNREACHABLE_PG),
    )
    .await;

    let store = PostgresStore::connect_lazy_with(UNREACHABLE_PG, options).unwrap();
    let err = fails_within(Duration::from_secs(3), store.find_by_hash(&some_hash())).await;
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    fails_within(
        Duration::from_secs(3),
        store.record_usage(&batch(Uuid::new_v4(), &[])),
    )
    .await;
    fails_within(Duration::from_secs(3), store.migrate()).await;
    fails_within(
        Duration::from_secs(3),
        store.create_key(&hasher(), NewKey::new("acme", ["a"])),
    )
    .await;

    // A bad URL is refused up front.
    assert!(matches!(
        PostgresStore::connect_lazy_with("not a url", PostgresStore::pool_options()),
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn postgres_database_gone_fails_fast() {
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let k = store
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    db.drop_db().await;
    let err = fails_within(
        Duration::from_secs(5),
        store.find_by_hash(&hash_of(&k.plaintext)),
    )
    .await;
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Timeout),
        "{err:?}"
    );
}

#[tokio::test]
async fn postgres_from_pool_and_lazy_connect() {
    let db = PgTestDb::create().await;
    let store = PostgresStore::connect_lazy_with(&db.url, PostgresStore::pool_options()).unwrap();
    store.migrate().await.unwrap();
    let k = store
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    let other = PostgresStore::from_pool(store.pool().clone());
    assert_eq!(
        other.find_by_id(&k.record.id).await.unwrap(),
        Some(k.record)
    );
    store.pool().close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_unusable_database_fails_fast() {
    let dir =
        std::env::temp_dir().join(format!("apikey_cache_missing_{}", Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/keys.db", dir.display());
    let err = fails_within(Duration::from_secs(3), SqliteStore::connect(&url)).await;
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    // Not migrated: an error, not a panic.
    assert!(matches!(
        store.find_by_hash(&some_hash()).await,
        Err(StoreError::Unavailable(_))
    ));
    store.pool().close().await;
    fails_within(Duration::from_secs(3), store.find_by_hash(&some_hash())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory_is_one_shared_database() {
    let options = SqliteStore::pool_options().max_connections(8);
    let store = SqliteStore::connect_with("sqlite::memory:", options)
        .await
        .unwrap();
    assert_eq!(store.pool().options().get_max_connections(), 1);
    store.migrate().await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .create_key(&hasher(), NewKey::new("acme", [format!("s{i}")]))
                .await
        });
    }
    let mut created = Vec::new();
    while let Some(done) = tasks.join_next().await {
        created.push(done.unwrap().unwrap());
    }
    assert_eq!(store.list_by_owner("acme").await.unwrap().len(), 8);
    for k in &created {
        assert_eq!(
            store.find_by_hash(&hash_of(&k.plaintext)).await.unwrap(),
            Some(k.record.clone())
        );
    }

    // Each in-memory store is a database of its own.
    let other = SqliteStore::connect("sqlite::memory:").await.unwrap();
    other.migrate().await.unwrap();
    assert!(other.list_by_owner("acme").await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_and_persists() {
    let file = TempFile::new();
    assert!(!file.path.exists());
    let store = SqliteStore::connect(&file.url()).await.unwrap();
    assert!(file.path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    store.migrate().await.unwrap();
    let k = store
        .create_key(&hasher(), NewKey::new("acme", ["a"]))
        .await
        .unwrap();
    store.pool().close().await;

    let reopened = SqliteStore::connect(&file.url()).await.unwrap();
    reopened.migrate().await.unwrap();
    assert_eq!(
        reopened.find_by_id(&k.record.id).await.unwrap(),
        Some(k.record)
    );
    reopened.pool().close().await;
}

#[test]
fn pg_test_urls_replace_only_the_database() {
    use support::pg::with_database;
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/postgres?sslmode=disable", "t2"),
        "postgres://u:p@h/t2?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5433", "t3"),
        "postgres://h:5433/t3"
    );
}

/// Shared stores work through `Arc` and as trait objects.
#[allow(dead_code)]
fn object_safety(store: SqliteStore, pg: PostgresStore) -> Vec<Arc<dyn KeyStore>> {
    vec![Arc::new(store), Arc::new(Arc::new(pg))]
}
