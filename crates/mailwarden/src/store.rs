//! The embedded store: one SQLite database in WAL mode with `synchronous = FULL`, holding
//! accounts and the queue (and, as they arrive, the other durable state).
//!
//! Durability and speed: every write goes through one writer thread. It takes all jobs waiting
//! in its channel, runs each inside its own savepoint of a single transaction, commits once
//! (one fsync of the WAL) and only then answers every caller. Concurrent sessions therefore
//! share fsyncs (group commit) while each `250` still means "on stable storage".
//!
//! Reads use a small pool of separate connections; WAL lets them run beside the writer, and
//! beside other processes (the CLI) that change accounts while the server runs.
//!
//! Security: the database holds password hashes; the file is created mode 0600 inside a
//! 0700 data directory.

use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store commit failed: {0}")]
    Commit(String),
    #[error("store writer stopped")]
    Closed,
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// True when the disk is full (SQLITE_FULL), which deserves `452 4.3.1`.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Commit(m) => m.contains("full"),
            StoreError::Io(e) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// Largest number of jobs folded into one commit.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
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

const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9,
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

impl Store {
    /// Open (creating if needed) `data_dir/mailwarden.db`, migrate, and start the writer.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join("mailwarden.db");
        let conn = Connection::open(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        configure(&conn)?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<R, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let r = run_in_savepoint(conn, f);
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
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for callers outside the async runtime (the CLI).
    pub fn write_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.submit(f)?
            .blocking_recv()
            .map_err(|_| StoreError::Closed)?
    }

    /// Run a read on a pooled connection, on the calling thread. Keep it short.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let conn = {
            let mut pool = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.pragma_update(None, "query_only", true)?;
                c.set_prepared_statement_cache_capacity(64);
                c
            }
        };
        let r = f(&conn);
        let mut pool = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 16 {
            pool.push(conn);
        }
        r.map_err(StoreError::from)
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

fn run_in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    conn.execute_batch("SAVEPOINT job")?;
    match f(conn) {
        Ok(r) => {
            conn.execute_batch("RELEASE job")?;
            Ok(r)
        }
        Err(e) => {
            // Undo only this job; the others in the batch still commit.
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let begin = conn.execute_batch("BEGIN IMMEDIATE");
        let mut completions = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            completions.push(job(&conn));
        }
        let commit = begin
            .and_then(|_| conn.execute_batch("COMMIT"))
            .map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(event = "store_commit_failed", error = ?commit);
        }
        for c in completions {
            c(commit.clone());
        }
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
            .read(|c| c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 200);
    }

    #[tokio::test]
    async fn a_failing_job_does_not_spoil_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.write(|c| c.execute("INSERT INTO meta VALUES ('a','1')", []));
        let b = store.write(|c| c.execute("INSERT INTO nosuchtable VALUES (1)", []));
        let c = store.write(|c| c.execute("INSERT INTO meta VALUES ('c','1')", []));
        let (a, b, c) = tokio::join!(a, b, c);
        assert!(a.is_ok() && b.is_err() && c.is_ok());
        let n: i64 = store
            .read(|c| c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn reopen_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.write_blocking(|c| c.execute("INSERT INTO meta VALUES ('k','v')", []))
                .unwrap();
            s.close();
        }
        let s = Store::open(dir.path()).unwrap();
        let v: String = s
            .read(|c| c.query_row("SELECT value FROM meta WHERE key='k'", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(v, "v");
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
