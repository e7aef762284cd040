//! The store: every piece of durable state, behind one SQL surface ([`Conn`], `sql.rs`) with
//! two backends. The embedded default is one SQLite database in WAL mode with
//! `synchronous = FULL`; a cluster shares one PostgreSQL (`[store] url`, `pg.rs`), and every
//! node reads and decides on the same rows.
//!
//! Durability and speed: every write goes through one writer thread. It takes all jobs waiting
//! in its channel, runs each inside its own savepoint of a single transaction, commits once
//! (one fsync of the WAL, SQLite's or PostgreSQL's) and only then answers every caller.
//! Concurrent sessions therefore share commits (group commit) while each `250` still means "on
//! stable storage".
//!
//! Reads use a small pool of separate connections; they run beside the writer, and beside
//! other processes (the CLI, other nodes) that change state while the server runs.
//!
//! Migrations are versioned and run at open on both backends: SQLite counts them in
//! `user_version`, PostgreSQL in `schema_version`, under an advisory lock so that nodes
//! starting together migrate once.
//!
//! Security: the database holds password hashes; the SQLite file is created mode 0600 inside
//! a 0700 data directory. A PostgreSQL URL's password is never logged.

pub mod copy;
pub mod pg;
pub mod sql;

use pg::PgConn;
pub use sql::{Conn, DbError, FromValue, Optional, Params, Row, ToValue, Value};
pub type DbResult<T> = sql::Result<T>;

use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] DbError),
    #[error("store commit failed: {0}")]
    Commit(String),
    #[error("store writer stopped")]
    Closed,
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Db(DbError::Lite(e))
    }
}

impl StoreError {
    /// True when the disk is full (SQLITE_FULL, or PostgreSQL's `disk_full`), which deserves
    /// `452 4.3.1`.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Db(DbError::Lite(rusqlite::Error::SqliteFailure(e, _))) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Db(DbError::Pg(e)) => {
                e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL)
            }
            StoreError::Commit(m) => m.contains("full"),
            StoreError::Io(e) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }

    /// True when a shared store cannot be reached right now.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => e.is_unavailable(),
            StoreError::Commit(m) => m.contains("unavailable") || m.contains("closed"),
            _ => false,
        }
    }
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A job runs with whether it is the first of its batch (its savepoint has no predecessor),
/// or is told with `None` that its batch could not begin.
type Job = Box<dyn FnOnce(Option<(&Conn<'_>, bool)>) -> Completion + Send>;

/// Largest number of jobs folded into one commit.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Backend {
    Lite {
        path: PathBuf,
        readers: Mutex<Vec<Connection>>,
    },
    Pg {
        url: String,
        readers: Mutex<ReaderPool>,
    },
}

/// PostgreSQL connections for reads: idle ones, and how many are open in all.
#[derive(Default)]
struct ReaderPool {
    idle: Vec<PgConn>,
    open: usize,
}

/// Reads at once on PostgreSQL, per node.
const PG_READERS: usize = 16;

struct Inner {
    backend: Backend,
    /// Signalled when a PostgreSQL reader is given back.
    freed: std::sync::Condvar,
    /// Connections that take cluster locks, and that write counters (PostgreSQL only).
    lockers: Mutex<Vec<PgConn>>,
    counters: Mutex<Vec<PgConn>>,
    migrated: (i64, i64),
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

const SCHEMA_V1: &str = r#"
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE accounts(
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE INDEX accounts_domain ON accounts(domain);
CREATE TABLE queue(
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    sender TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB,
    spooled INTEGER NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE queue_rcpt(
    id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    route TEXT NOT NULL,
    mailbox TEXT,
    folder TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT,
    updated INTEGER NOT NULL,
    PRIMARY KEY(id, idx)
) WITHOUT ROWID;
CREATE INDEX queue_rcpt_status ON queue_rcpt(status, next_attempt);
"#;

/// Addresses an account may send as besides its own (`mailwarden user alias`): a mailbox
/// `local@domain`, or `@domain` for every address of a domain.
const SCHEMA_V2: &str = r#"
CREATE TABLE sender_aliases(
    account TEXT NOT NULL,
    address TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY(account, address)
) WITHOUT ROWID;
"#;

/// Account containment state (`containment.rs`): absent means active.
const SCHEMA_V3: &str = r#"
CREATE TABLE account_state(
    account TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since INTEGER NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
"#;

/// Screening's memory: clients and senders that proved themselves (`pregreet:IP`,
/// `grey:NETWORK`, `sender:DOMAIN`) until a time, and greylisting triplets.
const SCHEMA_V4: &str = r#"
CREATE TABLE screen_memory(
    key TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);
CREATE TABLE greylist(
    triplet TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
);
"#;

/// Decision records (`records`): the indexed fields `log search` filters on, and the whole
/// record as JSON.
const SCHEMA_V5: &str = r#"
CREATE TABLE decisions(
    id TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    ip TEXT NOT NULL,
    sender TEXT NOT NULL,
    rcpts TEXT NOT NULL,
    action TEXT NOT NULL,
    codes TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX decisions_time ON decisions(time);
CREATE INDEX decisions_ip ON decisions(ip);
"#;

/// The content classifier's token counts (`classifier`).
const SCHEMA_V6: &str = r#"
CREATE TABLE bayes_tokens(
    token TEXT PRIMARY KEY,
    spam INTEGER NOT NULL,
    ham INTEGER NOT NULL
);
CREATE TABLE bayes_meta(
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#;

/// Messages kept for an administrator (`quarantine`), with their final content.
const SCHEMA_V7: &str = r#"
CREATE TABLE quarantine(
    id TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    sender TEXT NOT NULL,
    rcpts TEXT NOT NULL,
    score REAL NOT NULL,
    reasons TEXT NOT NULL,
    content BLOB NOT NULL,
    account TEXT,
    released INTEGER NOT NULL DEFAULT 0
);
"#;

/// The content score's weights `mailwarden learn` fitted (`classifier::fit`), by reason code.
const SCHEMA_V8: &str = r#"
CREATE TABLE score_weights(
    code TEXT PRIMARY KEY,
    weight REAL NOT NULL
);
"#;

/// Sender reputation (`reputation`): outcomes per identity and day, the identities of each
/// message (for users' marks), who our users wrote to and the Message-IDs they sent; and
/// what users' moves taught (`learning`).
const SCHEMA_V9: &str = r#"
CREATE TABLE reputation(
    identity TEXT NOT NULL,
    day INTEGER NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0,
    junked INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    marked_spam INTEGER NOT NULL DEFAULT 0,
    marked_ham INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(identity, day)
);
CREATE INDEX reputation_day ON reputation(day);
CREATE TABLE reputation_msgs(
    id TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    identities TEXT NOT NULL
);
CREATE INDEX reputation_msgs_time ON reputation_msgs(time);
CREATE TABLE correspondents(
    address TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE sent_ids(
    message_id TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    domains TEXT NOT NULL
);
CREATE INDEX sent_ids_time ON sent_ids(time);
CREATE TABLE learned(
    mailbox TEXT NOT NULL,
    id TEXT NOT NULL,
    spam INTEGER NOT NULL,
    time INTEGER NOT NULL,
    PRIMARY KEY(mailbox, id)
);
"#;

/// Delivery claims (`queue`): a node leases a recipient before it tries it, so nodes sharing
/// the queue never try the same recipient at once, and a node that died loses its lease.
const SCHEMA_V10: &str = r#"
ALTER TABLE queue_rcpt ADD COLUMN lease_node TEXT;
ALTER TABLE queue_rcpt ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
"#;

/// What nodes sharing a store must agree on at once (`limits::shared`): counted events and
/// distinct values per key and metric, AUTH blocks, accounts' correspondents; and every
/// account's usual hourly volume (`containment`), kept so a restart forgets nothing.
const SCHEMA_V11: &str = r#"
CREATE TABLE counter_events(
    key TEXT NOT NULL,
    metric TEXT NOT NULL,
    t INTEGER NOT NULL,
    n INTEGER NOT NULL
);
CREATE INDEX counter_events_key ON counter_events(key, metric, t);
CREATE INDEX counter_events_t ON counter_events(t);
CREATE TABLE counter_values(
    key TEXT NOT NULL,
    metric TEXT NOT NULL,
    value TEXT NOT NULL,
    t INTEGER NOT NULL,
    PRIMARY KEY(key, metric, value)
);
CREATE INDEX counter_values_t ON counter_values(t);
CREATE TABLE blocks(
    what TEXT PRIMARY KEY,
    until INTEGER NOT NULL
);
CREATE TABLE known_rcpts(
    account TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    t INTEGER NOT NULL,
    PRIMARY KEY(account, rcpt)
);
CREATE INDEX known_rcpts_t ON known_rcpts(t);
CREATE TABLE baselines(
    account TEXT PRIMARY KEY,
    hour INTEGER NOT NULL,
    in_hour INTEGER NOT NULL,
    active_hours INTEGER NOT NULL,
    average REAL NOT NULL
);
"#;

/// Secrets every node of a cluster must share: DKIM signing keys (`dkim::keys`; on the
/// embedded store they stay files in `data_dir/dkim`).
const SCHEMA_V12: &str = r#"
CREATE TABLE dkim_keys(
    domain TEXT NOT NULL,
    selector TEXT NOT NULL,
    pem TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY(domain, selector)
);
"#;

/// Reports (`reports`): the DMARC evaluations of the current periods, counted per result
/// (`eval` is the record's canonical JSON, `row_key` its hash), the policy each domain
/// published, the reports we sent or chose not to send, and the reports others sent us.
/// Verified outbound TLS (`delivery::remote`): the MTA-STS policies we hold, and the outcome
/// of every TLS session per policy for TLS-RPT (`result` is `success` or a failure type).
const SCHEMA_V13: &str = r#"
CREATE TABLE dmarc_evals(
    period INTEGER NOT NULL,
    domain TEXT NOT NULL,
    row_key TEXT NOT NULL,
    eval TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY(period, domain, row_key)
);
CREATE TABLE dmarc_policies(
    period INTEGER NOT NULL,
    domain TEXT NOT NULL,
    published TEXT NOT NULL,
    rua TEXT NOT NULL,
    PRIMARY KEY(period, domain)
);
CREATE TABLE reports_sent(
    kind TEXT NOT NULL,
    period INTEGER NOT NULL,
    domain TEXT NOT NULL,
    destination TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    report_id TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY(kind, period, domain, destination)
);
CREATE INDEX reports_sent_at ON reports_sent(at);
CREATE TABLE reports_in(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    org TEXT NOT NULL,
    domain TEXT NOT NULL,
    range_begin INTEGER NOT NULL,
    range_end INTEGER NOT NULL,
    received INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX reports_in_received ON reports_in(received);
CREATE TABLE report_rows(
    report TEXT NOT NULL,
    n INTEGER NOT NULL,
    domain TEXT NOT NULL,
    source_ip TEXT NOT NULL,
    count INTEGER NOT NULL,
    disposition TEXT NOT NULL,
    dmarc_pass INTEGER NOT NULL,
    dkim_pass INTEGER NOT NULL,
    spf_pass INTEGER NOT NULL,
    PRIMARY KEY(report, n)
);
CREATE INDEX report_rows_domain ON report_rows(domain, source_ip);
CREATE TABLE sts_policies(
    domain TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    fetched INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE tls_results(
    period INTEGER NOT NULL,
    domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy TEXT NOT NULL,
    mx_host TEXT NOT NULL,
    result TEXT NOT NULL,
    ip TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY(period, domain, policy_type, policy, mx_host, result, ip)
);
"#;

/// Accounts that may log in to the web console (`user add --admin`; `admin.accounts` adds
/// more from the config).
const SCHEMA_V14: &str = r#"
CREATE TABLE admins(
    address TEXT PRIMARY KEY,
    added INTEGER NOT NULL
);
"#;

const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9, SCHEMA_V10, SCHEMA_V11, SCHEMA_V12, SCHEMA_V13, SCHEMA_V14,
];

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk when COMMIT returns. NORMAL would lose the last commits on
    // power failure in WAL mode.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Writes between purges of old rows: a purge deletes up to a batch of rows past their
/// retention, so running it on one write in this many keeps up with anything that adds fewer
/// than batch/`PURGE_EVERY` rows a write, and spares every other write a statement.
pub const PURGE_EVERY: u64 = 32;

/// True on one call in [`PURGE_EVERY`] of each `counter` (one per purged table).
pub fn purge_due(counter: &std::sync::atomic::AtomicU64) -> bool {
    counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(PURGE_EVERY)
}

/// Which store a URL names: `postgres://…` (or `postgresql://…`), else SQLite.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path() {
            Some(p) => write!(f, "Store(sqlite {})", p.display()),
            None => f.write_str("Store(postgres)"),
        }
    }
}

impl Store {
    /// Open (creating if needed) the embedded store `data_dir/mailwarden.db`, migrate, and
    /// start the writer.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)?;
        Store::open_sqlite(&data_dir.join("mailwarden.db"))
    }

    /// The embedded store at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        configure(&conn)?;
        let migrated = migrate_lite(&conn)?;
        Store::start(
            Backend::Lite {
                path: path.to_path_buf(),
                readers: Mutex::new(Vec::new()),
            },
            migrated,
            move |rx| writer_loop(&Conn::lite(&conn), rx),
        )
    }

    /// The shared store at a `postgres://` URL: connect, migrate, start the writer.
    pub fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let conn = PgConn::new(url);
        let migrated = migrate_pg(&conn)?;
        Store::start(
            Backend::Pg {
                url: url.to_string(),
                readers: Mutex::new(ReaderPool::default()),
            },
            migrated,
            move |rx| writer_loop(&Conn::pg(&conn), rx),
        )
    }

    /// The store a configuration names: `store.url`, or the embedded one in `data_dir`.
    pub fn for_config(cfg: &crate::config::Config) -> Result<Store, StoreError> {
        if is_postgres_url(&cfg.store.url) {
            Store::open_postgres(&cfg.store.url)
        } else {
            Store::open(&cfg.data_dir)
        }
    }

    fn start(
        backend: Backend,
        migrated: (i64, i64),
        writer: impl FnOnce(mpsc::Receiver<Job>) + Send + 'static,
    ) -> Result<Store, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(rx))?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                freed: std::sync::Condvar::new(),
                lockers: Mutex::new(Vec::new()),
                counters: Mutex::new(Vec::new()),
                migrated,
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// The SQLite file, or `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Lite { path, .. } => Some(path),
            Backend::Pg { .. } => None,
        }
    }

    /// True when the store is a shared PostgreSQL.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner.backend, Backend::Pg { .. })
    }

    /// The schema versions this open migrated the store from and to (equal when there was
    /// nothing to do).
    pub fn migrated(&self) -> (i64, i64) {
        self.inner.migrated
    }

    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<R> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<R, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |at: Option<(&Conn<'_>, bool)>| {
            let r = match at {
                Some((conn, first)) => run_in_savepoint(conn, first, f),
                None => Err(DbError::Unavailable(
                    "the store's transaction did not begin".into(),
                )),
            };
            Box::new(move |commit: Result<(), String>| {
                let out = match (commit, r) {
                    (Ok(()), r) => r.map_err(StoreError::from),
                    (Err(e), _) => Err(StoreError::Commit(e)),
                };
                let _ = tx.send(out);
            })
        });
        let guard = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Run `f` in the next group commit; resolves once it is durable.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for callers outside the async runtime (the CLI).
    pub fn write_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?
            .blocking_recv()
            .map_err(|_| StoreError::Closed)?
    }

    /// Queue `f` for the next group commit without waiting for it: state worth keeping that
    /// no reply depends on (containment baselines). A failure is logged.
    pub fn write_detached(
        &self,
        what: &'static str,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<()> + Send + 'static,
    ) {
        match self.submit(f) {
            Ok(rx) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Ok(Err(e)) = rx.await {
                            tracing::warn!(event = "store_write_failed", what, error = %e);
                        }
                    });
                }
            }
            Err(e) => tracing::warn!(event = "store_write_failed", what, error = %e),
        }
    }

    /// On the shared store: run `f` on the calling thread, now, each statement committed by
    /// itself without waiting for its flush to disk (a session with
    /// `synchronous_commit = off`). For counters that every node must see at once but that a
    /// crash of PostgreSQL may lose the last of. `None` on the embedded store, where counters
    /// live in memory.
    pub fn write_now<R>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<R>,
    ) -> Option<Result<R, StoreError>> {
        let Backend::Pg { url, .. } = &self.inner.backend else {
            return None;
        };
        let conn = pop(&self.inner.counters)
            .unwrap_or_else(|| PgConn::with_init(url, "SET synchronous_commit = off"));
        let r = f(&Conn::pg(&conn));
        push(&self.inner.counters, conn);
        Some(r.map_err(StoreError::from))
    }

    /// On the shared store: hold a cluster-wide lock named `key` until the guard drops (a
    /// PostgreSQL advisory lock, released too if this node's connection dies). `None` on the
    /// embedded store, where a process-local mutex is enough.
    pub fn cluster_lock(&self, key: i64) -> Option<Result<ClusterLock, StoreError>> {
        let Backend::Pg { url, .. } = &self.inner.backend else {
            return None;
        };
        let conn = {
            let mut pool = self.inner.lockers.lock().unwrap_or_else(|e| e.into_inner());
            pool.pop().unwrap_or_else(|| PgConn::new(url))
        };
        Some(
            match Conn::pg(&conn).execute_batch(&format!("SELECT pg_advisory_lock({key})")) {
                Ok(()) => Ok(ClusterLock {
                    conn: Some(conn),
                    key,
                    store: self.clone(),
                }),
                Err(e) => Err(e.into()),
            },
        )
    }

    /// [`Store::read`] on the blocking pool, for async code: a read never holds an async
    /// worker.
    pub async fn read_off<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> sql::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read(f))
            .await
            .map_err(|e| StoreError::from(std::io::Error::other(e.to_string())))?
    }

    /// Run a read on a pooled connection, on the calling thread. Keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&Conn<'_>) -> sql::Result<R>) -> Result<R, StoreError> {
        match &self.inner.backend {
            Backend::Lite { path, readers } => {
                let conn = pop(readers);
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        let c = Connection::open_with_flags(
                            path,
                            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                        )?;
                        c.busy_timeout(std::time::Duration::from_secs(10))?;
                        c.pragma_update(None, "query_only", true)?;
                        c.set_prepared_statement_cache_capacity(64);
                        c
                    }
                };
                let r = f(&Conn::lite(&conn));
                push(readers, conn);
                r.map_err(StoreError::from)
            }
            Backend::Pg { url, readers } => {
                // At most PG_READERS connections: past them a read waits for one, so a burst
                // cannot exhaust the server's connection slots (the writer needs one).
                let conn = {
                    let mut pool = readers.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(c) = pool.idle.pop() {
                            break c;
                        }
                        if pool.open < PG_READERS {
                            pool.open += 1;
                            break PgConn::new(url);
                        }
                        pool = self
                            .inner
                            .freed
                            .wait(pool)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                };
                let r = f(&Conn::pg(&conn));
                readers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .idle
                    .push(conn);
                self.inner.freed.notify_one();
                r.map_err(StoreError::from)
            }
        }
    }

    /// Stop the writer after the jobs already queued, and wait for it.
    pub fn close(&self) {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

/// A cluster-wide lock ([`Store::cluster_lock`]).
pub struct ClusterLock {
    conn: Option<PgConn>,
    key: i64,
    store: Store,
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let unlocked =
                Conn::pg(&conn).execute_batch(&format!("SELECT pg_advisory_unlock({})", self.key));
            // A connection whose unlock failed may still hold the lock: never reuse it.
            if unlocked.is_ok() {
                push(&self.store.inner.lockers, conn);
            }
        }
    }
}

fn pop<T>(pool: &Mutex<Vec<T>>) -> Option<T> {
    pool.lock().unwrap_or_else(|e| e.into_inner()).pop()
}

fn push<T>(pool: &Mutex<Vec<T>>, conn: T) {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < 16 {
        pool.push(conn);
    }
}

/// Run `f` in a savepoint of its own, so a failing job is undone alone and the rest of the
/// batch still commits. One round trip per job: the previous job's savepoint is released in
/// the same statement, and the last one by the COMMIT.
fn run_in_savepoint<R>(
    conn: &Conn<'_>,
    first: bool,
    f: impl FnOnce(&Conn<'_>) -> sql::Result<R>,
) -> sql::Result<R> {
    conn.execute_batch(if first {
        "SAVEPOINT job"
    } else {
        "RELEASE SAVEPOINT job; SAVEPOINT job"
    })?;
    match f(conn) {
        Ok(r) => Ok(r),
        Err(e) => {
            // Undo only this job; the others in the batch still commit.
            let _ = conn.execute_batch("ROLLBACK TO SAVEPOINT job");
            Err(e)
        }
    }
}

fn writer_loop(conn: &Conn<'_>, rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // Nothing runs outside a transaction: on SQLite a statement would commit by itself
        // while its caller hears that the batch failed.
        let begun = conn.begin();
        let mut completions = Vec::with_capacity(batch.len());
        for (i, job) in batch.drain(..).enumerate() {
            completions.push(job(begun.is_ok().then_some((conn, i == 0))));
        }
        let commit = begun.and_then(|_| conn.commit()).map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.rollback();
            tracing::error!(event = "store_commit_failed", error = ?commit);
        }
        for c in completions {
            c(commit.clone());
        }
    }
}

/// The number of migrations this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// A store migrated by a newer build: this one would misread it.
fn too_new(version: i64) -> Result<(), StoreError> {
    if version > latest_version() {
        return Err(std::io::Error::other(format!(
            "the store is at schema version {version}, newer than this build's {}: run the newer mailwarden",
            latest_version()
        ))
        .into());
    }
    Ok(())
}

fn migrate_lite(conn: &Connection) -> Result<(i64, i64), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    too_new(version)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok((version, latest_version().max(version)))
}

/// Key of the advisory lock nodes take to migrate one at a time ("mwmigr").
const MIGRATION_LOCK: i64 = 0x6d77_6d69_6772;

fn migrate_pg(conn: &PgConn) -> Result<(i64, i64), StoreError> {
    let c = Conn::pg(conn);
    conn.connect()?;
    c.begin()?;
    let r = (|| {
        c.execute_batch(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); \
             CREATE TABLE IF NOT EXISTS schema_version(version BIGINT NOT NULL)"
        ))?;
        let version: Option<i64> =
            c.query_row("SELECT max(version) FROM schema_version", (), |r| r.get(0))?;
        too_new(version.unwrap_or(0)).map_err(|e| DbError::Unavailable(e.to_string()))?;
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(version.unwrap_or(0) as usize)
        {
            c.execute_batch(&pg::schema(sql))?;
            c.execute(
                "INSERT INTO schema_version(version) VALUES (?1)",
                [(i + 1) as i64],
            )?;
        }
        let from = version.unwrap_or(0);
        Ok::<_, DbError>((from, latest_version().max(from)))
    })();
    match r {
        Ok(v) => {
            c.commit()?;
            Ok(v)
        }
        Err(e) => {
            let _ = c.rollback();
            Err(e.into())
        }
    }
}

/// Stores for tests: the embedded one, and a fresh PostgreSQL database when
/// `MAILWARDEN_TEST_POSTGRES` names a server (`scripts/test` starts one).
#[cfg(test)]
pub(crate) fn test_stores(dir: &Path) -> Vec<Store> {
    let mut out = vec![Store::open(dir).unwrap()];
    if let Some(url) = test_postgres() {
        out.push(Store::open_postgres(&url).unwrap());
    }
    out
}

/// A fresh database on the test PostgreSQL, or `None` (said once on stderr) without one.
pub fn test_postgres() -> Option<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let Ok(url) = std::env::var("MAILWARDEN_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("MAILWARDEN_REQUIRE_POSTGRES").is_none(),
            "MAILWARDEN_REQUIRE_POSTGRES is set but MAILWARDEN_TEST_POSTGRES is not"
        );
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!("MAILWARDEN_TEST_POSTGRES is not set: PostgreSQL cases skipped (scripts/test sets it)")
        });
        return None;
    };
    let name = format!(
        "mwt_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    Some(pg::create_database(&url, &name).expect("the test PostgreSQL makes a database"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQL is written once for both backends: these SQLite-only spellings would fail on
    /// PostgreSQL at run time, so no source file may hold them.
    #[test]
    fn no_sqlite_only_sql_in_the_sources() {
        let forbidden = [
            "INSERT OR ",
            "OR REPLACE",
            "OR IGNORE",
            "rowid",
            "MAX(0,",
            " max(0,",
            "json_extract(",
            "group_concat",
            "GLOB ",
            "strftime(",
        ];
        // The places that speak a dialect on purpose.
        let allowed = [
            "store/mod.rs",
            "store/pg.rs",
            "store/sql.rs",
            "store/copy.rs",
            "queue/account.rs",
        ];
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src.clone()];
        let mut bad = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                if allowed.contains(&rel.as_str()) || p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for f in forbidden {
                    if text.contains(f) {
                        bad.push(format!("{rel}: {f}"));
                    }
                }
            }
        }
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        for store in test_stores(dir.path()) {
            let mut tasks = Vec::new();
            for i in 0..200 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    s.write(move |c| {
                        c.execute(
                            "INSERT INTO meta(key, value) VALUES (?1, 'x')",
                            [format!("k{i}")],
                        )
                    })
                    .await
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap(), 1);
            }
            let n: i64 = store
                .read(|c| c.query_row("SELECT count(*) FROM meta", (), |r| r.get(0)))
                .unwrap();
            assert_eq!(n, 200, "{:?}", store.path());
        }
    }

    #[tokio::test]
    async fn a_failing_job_does_not_spoil_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        for store in test_stores(dir.path()) {
            let a = store.write(|c| c.execute("INSERT INTO meta VALUES ('a','1')", ()));
            let b = store.write(|c| c.execute("INSERT INTO nosuchtable VALUES (1)", ()));
            let c = store.write(|c| c.execute("INSERT INTO meta VALUES ('c','1')", ()));
            let (a, b, c) = tokio::join!(a, b, c);
            assert!(a.is_ok() && b.is_err() && c.is_ok());
            let n: i64 = store
                .read(|c| c.query_row("SELECT count(*) FROM meta", (), |r| r.get(0)))
                .unwrap();
            assert_eq!(n, 2);
        }
    }

    #[test]
    fn reopen_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.write_blocking(|c| c.execute("INSERT INTO meta VALUES ('k','v')", ()))
                .unwrap();
            s.close();
        }
        let s = Store::open(dir.path()).unwrap();
        let v: String = s
            .read(|c| c.query_row("SELECT value FROM meta WHERE key='k'", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(v, "v");
        let mode = std::fs::metadata(s.path().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
