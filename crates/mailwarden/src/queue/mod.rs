//! The durable queue: the only bridge between receiving and delivering.
//!
//! A message is an envelope row, one row per recipient with its own status, and a body that
//! is stored inline in the same transaction (small messages, group-committed) or in a spool
//! file under `data_dir/queue/` that is fsynced, with its directory, before the rows commit.
//! [`Queue::enqueue`] returns only when all of it is durable: that is what the `250` means.
//!
//! Nodes sharing one store (`[store] url`) share the queue: a node leases each recipient
//! before it tries it ([`Lease`]: a node name and a time), the claim skipping rows another
//! node holds (`FOR UPDATE SKIP LOCKED`). Only the lease holder records an outcome, so each is
//! committed once; a node that dies loses its leases when they run out, and the others take
//! its recipients over. On the shared store, bodies always go inline: no node can read
//! another's spool directory.
//!
//! Recipient statuses: `queued` (waiting for delivery), `delivered`, `deferred` (retry later),
//! `failed` (permanent), `held` (kept back by an administrator or a policy). A message leaves
//! the queue when no recipient is `queued`, `deferred` or `held` any more.

pub mod account;
pub mod admin;

use crate::fsync::{DirSync, sync_file};
use crate::store::Optional;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Facts about the session that produced a message, kept with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub session: String,
    pub listener: String,
    pub client_ip: String,
    pub helo: String,
    pub tls: Option<String>,
    pub auth: Option<String>,
    /// Header lines (CRLF-terminated) to put in front of the body at delivery: Received and,
    /// later, Authentication-Results.
    pub prepend: String,
    /// The envelope sender was verified (SPF pass or DMARC pass) when the message arrived, so
    /// a bounce to it is not backscatter.
    #[serde(default)]
    pub sender_verified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Inbox,
    /// Maildir++ `.Junk`.
    Junk,
}

impl Folder {
    pub fn as_str(self) -> &'static str {
        match self {
            Folder::Inbox => "",
            Folder::Junk => "Junk",
        }
    }

    fn parse(s: Option<&str>) -> Folder {
        match s {
            Some("Junk") => Folder::Junk,
            _ => Folder::Inbox,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Deliver into the Maildir of this account (`local@domain`).
    Local { mailbox: String, folder: Folder },
    /// Relay to another domain.
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Delivered,
    Deferred,
    Failed,
    Held,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Deferred => "deferred",
            Status::Failed => "failed",
            Status::Held => "held",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recipient {
    pub idx: u32,
    /// As given in RCPT TO.
    pub address: String,
    pub route: Route,
}

#[derive(Debug, Clone)]
pub enum Body {
    Inline(Arc<Vec<u8>>),
    /// In `data_dir/queue/<id>`.
    Spooled(PathBuf),
    /// Inline in the store but not kept in memory (over the memory budget): read it back
    /// before delivery.
    Stored,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub created: i64,
    /// Envelope sender; empty for the null reverse-path.
    pub sender: String,
    /// Body size in octets, without the prepended headers.
    pub size: u64,
    pub meta: Meta,
    pub rcpts: Vec<Recipient>,
    pub body: Body,
}

impl Message {
    /// A message mailwarden writes itself (a bounce, a notice to the postmaster): from the
    /// null sender `<>`, so it can never cause a bounce in turn.
    pub fn generated(
        listener: &str,
        hostname: &str,
        now: i64,
        to: Recipient,
        content: Vec<u8>,
    ) -> Message {
        Message {
            id: crate::util::new_id(),
            created: now,
            sender: String::new(),
            size: content.len() as u64,
            meta: Meta {
                listener: listener.to_string(),
                client_ip: "127.0.0.1".into(),
                helo: hostname.to_string(),
                ..Meta::default()
            },
            rcpts: vec![to],
            body: Body::Inline(Arc::new(content)),
        }
    }
}

/// A recipient's new status and the reply that explains it.
pub type RcptOutcome = (u32, Status, Option<String>);

/// A remote recipient's new status after an attempt.
#[derive(Debug, Clone)]
pub struct RemoteOutcome {
    pub idx: u32,
    pub status: Status,
    pub reply: Option<String>,
    /// For `deferred`: when to try again (Unix time).
    pub next_attempt: i64,
}

impl RemoteOutcome {
    /// Failed for good, with the reply or reason.
    pub fn failed(idx: u32, reply: String) -> RemoteOutcome {
        RemoteOutcome {
            idx,
            status: Status::Failed,
            reply: Some(reply),
            next_attempt: 0,
        }
    }
}

/// Claim the recipients that `filter` selects (in `order`), for this node: `?3` is the lease's
/// end and `?4` the node (PostgreSQL wants every parameter used). One statement; on PostgreSQL it skips rows another node is claiming
/// at the same moment. Returns (message id, recipient index, attempts) of each claimed.
fn claim(
    c: &crate::store::Conn<'_>,
    filter: &str,
    order: &str,
    params: &[&dyn crate::store::ToValue],
) -> crate::store::DbResult<Vec<(String, u32, u32)>> {
    let skip = if c.is_pg() {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    c.query_map(
        &format!(
            "WITH due AS MATERIALIZED (SELECT id, idx FROM queue_rcpt WHERE {filter} {order}{skip}) \
             UPDATE queue_rcpt SET lease_node = ?4, lease_until = ?3 FROM due \
             WHERE queue_rcpt.id = due.id AND queue_rcpt.idx = due.idx AND {filter} \
             RETURNING queue_rcpt.id, queue_rcpt.idx, queue_rcpt.attempts"
        ),
        params,
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// Delete a message whose recipients are all final. True if it was deleted.
pub(crate) fn finish_if_done(c: &crate::store::Conn<'_>, id: &str) -> crate::store::DbResult<bool> {
    let left: i64 = c.query_row(
        "SELECT count(*) FROM queue_rcpt WHERE id = ?1 \
             AND status IN ('queued', 'deferred', 'held')",
        [id],
        |r| r.get(0),
    )?;
    if left > 0 {
        return Ok(false);
    }
    c.execute("DELETE FROM queue_rcpt WHERE id = ?1", [id])?;
    c.execute("DELETE FROM queue WHERE id = ?1", [id])?;
    Ok(true)
}

/// Outcomes for one message.
pub struct Outcomes {
    pub id: String,
    pub outcomes: Vec<RcptOutcome>,
    /// The outcomes cover every recipient of the message and all are final.
    pub all_final: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("queue I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl QueueError {
    pub fn is_full(&self) -> bool {
        match self {
            QueueError::Store(e) => e.is_full(),
            QueueError::Io(e) => e.raw_os_error() == Some(28),
        }
    }
}

/// A message handed to the delivery side, with whether it may have been attempted before a
/// crash (then delivery first checks what already landed).
pub struct Dispatch {
    pub msg: Arc<Message>,
    pub recovering: bool,
    /// Holds the body's share of the memory budget until delivery is done with it.
    _held: Option<Held>,
}

/// Bytes of message bodies kept in memory between the commit and delivery. Past the budget a
/// body is dropped after the commit and read back from the store at delivery, so a delivery
/// backlog cannot grow memory without bound.
struct Held {
    bytes: u64,
    counter: Arc<AtomicU64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Who claims deliveries, and for how long.
#[derive(Debug, Clone)]
pub struct Lease {
    pub node: String,
    pub secs: i64,
}

impl Lease {
    /// `store.node` or, when empty, the hostname (the same after a restart, so a node takes
    /// its own deliveries back at once); `store.lease` long.
    pub fn from_config(cfg: &crate::config::Config) -> Lease {
        let node = if cfg.store.node.is_empty() {
            cfg.hostname.clone()
        } else {
            cfg.store.node.clone()
        };
        Lease {
            node,
            secs: cfg.store.lease.get().as_secs().max(1) as i64,
        }
    }
}

pub struct Queue {
    store: Store,
    lease: Lease,
    dir: PathBuf,
    dirsync: DirSync,
    notify: mpsc::UnboundedSender<Dispatch>,
    held: Arc<AtomicU64>,
    budget: u64,
    clock: Arc<dyn crate::clock::Clock>,
    /// Wakes outbound delivery when a message with remote recipients is committed.
    pub remote_ready: Arc<tokio::sync::Notify>,
}

impl Queue {
    pub fn new(
        store: Store,
        data_dir: &Path,
        dirsync: DirSync,
        memory_budget: u64,
        clock: Arc<dyn crate::clock::Clock>,
        lease: Lease,
    ) -> std::io::Result<(Arc<Queue>, mpsc::UnboundedReceiver<Dispatch>)> {
        let dir = data_dir.join("queue");
        crate::store::create_private_dir(&dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Arc::new(Queue {
                store,
                lease,
                dir,
                dirsync,
                notify: tx,
                held: Arc::new(AtomicU64::new(0)),
                budget: memory_budget,
                clock,
                remote_ready: Arc::new(tokio::sync::Notify::new()),
            }),
            rx,
        ))
    }

    /// Now, in seconds, by the server's clock: what retry times and stamps are taken from.
    pub fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    pub fn spool_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Make the message durable, then hand it to delivery.
    pub async fn enqueue(&self, mut msg: Message) -> Result<(), QueueError> {
        if let (true, Body::Spooled(path)) = (self.store.is_shared(), &msg.body) {
            let path = path.clone();
            let bytes = tokio::fs::read(&path).await?;
            let _ = std::fs::remove_file(&path);
            msg.body = Body::Inline(Arc::new(bytes));
        }
        let spooled = matches!(msg.body, Body::Spooled(_));
        if let Body::Spooled(path) = &msg.body {
            let f = std::fs::File::open(path)?;
            sync_file(f).await?;
            self.dirsync.sync(self.dir.clone()).await?;
        }
        let meta = serde_json::to_string(&msg.meta).expect("meta serializes");
        let inline = match &msg.body {
            Body::Inline(b) => Some(b.clone()),
            Body::Spooled(_) | Body::Stored => None,
        };
        let rows: Vec<(u32, String, &'static str, Option<String>, &'static str)> = msg
            .rcpts
            .iter()
            .map(|r| match &r.route {
                Route::Local { mailbox, folder } => (
                    r.idx,
                    r.address.clone(),
                    "local",
                    Some(mailbox.clone()),
                    folder.as_str(),
                ),
                Route::Remote => (r.idx, r.address.clone(), "remote", None, ""),
            })
            .collect();
        let (id, created, sender, size) =
            (msg.id.clone(), msg.created, msg.sender.clone(), msg.size);
        let auth = msg.meta.auth.clone();
        let (node, lease) = (self.lease.node.clone(), self.lease.secs);
        let r = self
            .store
            .write(move |c| {
                c.execute(
                    "INSERT INTO queue(id, created, sender, size, body, spooled, meta) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    crate::params![
                        id,
                        created,
                        sender,
                        size as i64,
                        inline.as_deref().map(|v| v.as_slice()),
                        spooled,
                        meta
                    ],
                )?;
                // Mail an account submits after it was suspended is held, like the mail it
                // had waiting then: in the same transaction, so no suspension slips between.
                let suspended = match &auth {
                    Some(a) => c.exists(
                        "SELECT 1 FROM account_state WHERE account = ?1 AND state = 'suspended'",
                        [a],
                    )?,
                    None => false,
                };
                for (idx, address, route, mailbox, folder) in rows {
                    let status = if suspended && route == "remote" {
                        "held"
                    } else {
                        "queued"
                    };
                    // Local recipients are this node's to deliver now: leased from the start.
                    let (node, until) = match route {
                        "local" => (Some(node.as_str()), created + lease),
                        _ => (None, 0),
                    };
                    c.execute(
                        "INSERT INTO queue_rcpt(id, idx, address, route, mailbox, folder, \
                         status, updated, lease_node, lease_until) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        crate::params![
                            id, idx, address, route, mailbox, folder, status, created, node, until
                        ],
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            if let Body::Spooled(p) = &msg.body {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
        if msg.rcpts.iter().any(|r| r.route == Route::Remote) {
            self.remote_ready.notify_one();
        }
        let mut msg = msg;
        let held = match &msg.body {
            Body::Inline(b) => {
                let bytes = b.len() as u64;
                if self.held.fetch_add(bytes, Ordering::Relaxed) + bytes <= self.budget {
                    Some(Held {
                        bytes,
                        counter: self.held.clone(),
                    })
                } else {
                    self.held.fetch_sub(bytes, Ordering::Relaxed);
                    msg.body = Body::Stored;
                    None
                }
            }
            _ => None,
        };
        let _ = self.notify.send(Dispatch {
            msg: Arc::new(msg),
            recovering: false,
            _held: held,
        });
        Ok(())
    }

    /// Record delivery outcomes of several messages in one commit. A message with no
    /// recipient left to deliver is removed with its spool file. Returns the ids removed.
    pub async fn record(&self, outcomes: Vec<Outcomes>) -> Result<Vec<String>, QueueError> {
        let now = self.now();
        let finished = self
            .store
            .write(move |c| {
                let mut done = Vec::new();
                for rec in outcomes {
                    // Every recipient delivered just now: nothing to keep, skip the updates.
                    let finished = rec.all_final || {
                        for (idx, status, reply) in &rec.outcomes {
                            c.execute(
                                "UPDATE queue_rcpt SET status = ?3, last_reply = ?4, updated = ?5, \
                             attempts = attempts + 1 WHERE id = ?1 AND idx = ?2",
                                crate::params![rec.id, idx, status.as_str(), reply, now],
                            )?;
                        }
                        let left: i64 = c.query_row(
                            "SELECT count(*) FROM queue_rcpt WHERE id = ?1 \
                                 AND status IN ('queued', 'deferred', 'held')",
                            [&rec.id],
                            |r| r.get(0),
                        )?;
                        left == 0
                    };
                    if finished {
                        c.execute("DELETE FROM queue_rcpt WHERE id = ?1", [&rec.id])?;
                        c.execute("DELETE FROM queue WHERE id = ?1", [&rec.id])?;
                        done.push(rec.id);
                    }
                }
                Ok(done)
            })
            .await?;
        for id in &finished {
            let p = self.spool_path(id);
            if p.exists() {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(finished)
    }

    /// Messages with local recipients still `queued` whose node is gone (its lease ran out)
    /// or, at `startup`, this node's own: claimed, they go back to delivery, which first
    /// checks what already landed. At startup the remote recipients this node had claimed
    /// are let go too, for the next scan.
    pub async fn recover(&self, startup: bool) -> Result<Vec<Message>, QueueError> {
        let (now, me, until) = (
            self.now(),
            self.lease.node.clone(),
            self.now() + self.lease.secs,
        );
        // A single node's store has no other node: at startup everything waiting is its own,
        // whatever name it had before.
        let all = startup && !self.store.is_shared();
        let mut ids: Vec<String> = self
            .store
            .write(move |c| {
                if startup {
                    c.execute(
                        "UPDATE queue_rcpt SET lease_node = NULL, lease_until = 0 \
                         WHERE route = 'remote' AND (?2 OR lease_node = ?1)",
                        crate::params![me, all],
                    )?;
                }
                // Periodically only others' expired leases: this node retries its own.
                let stale = if startup {
                    "(?5 OR lease_node = ?4 OR lease_until <= ?1)"
                } else {
                    "(NOT ?5 AND lease_until <= ?1 AND COALESCE(lease_node, '') <> ?4)"
                };
                claim(
                    c,
                    &format!("status = 'queued' AND route = 'local' AND {stale}"),
                    "ORDER BY id, idx LIMIT ?2",
                    crate::params![now, i64::MAX, until, me, all],
                )
                .map(|rows| rows.into_iter().map(|(id, _, _)| id).collect())
            })
            .await?;
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            match self.load(&id, false) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e) => tracing::error!(event = "queue_unreadable", qid = %id, error = %e),
            }
        }
        Ok(out)
    }

    /// Load a message with its `queued` recipients. Without `with_body`, an inline body stays
    /// in the store ([`Body::Stored`]).
    pub fn load(&self, id: &str, with_body: bool) -> Result<Option<Message>, QueueError> {
        self.load_with(id, with_body, |_, status| status == "queued")
    }

    /// Load a message with the recipients `keep(idx, status)` selects.
    pub fn load_with(
        &self,
        id: &str,
        with_body: bool,
        keep: impl Fn(u32, &str) -> bool,
    ) -> Result<Option<Message>, QueueError> {
        let sql = if with_body {
            "SELECT created, sender, size, body, spooled, meta FROM queue WHERE id = ?1"
        } else {
            "SELECT created, sender, size, NULL, spooled, meta FROM queue WHERE id = ?1"
        };
        let row = self.store.read(|c| {
            c.query_row(sql, [id], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<i64>(2)?,
                    r.get::<Option<Vec<u8>>>(3)?,
                    r.get::<bool>(4)?,
                    r.get::<String>(5)?,
                ))
            })
            .optional()
        })?;
        let Some((created, sender, size, body, spooled, meta)) = row else {
            return Ok(None);
        };
        let rcpts = self.store.read(|c| {
            c.query_map(
                "SELECT idx, address, route, mailbox, folder, status FROM queue_rcpt \
                 WHERE id = ?1 ORDER BY idx",
                [id],
                |r| {
                    let route: String = r.get(2)?;
                    let mailbox: Option<String> = r.get(3)?;
                    let folder: Option<String> = r.get(4)?;
                    let status: String = r.get(5)?;
                    Ok((
                        status,
                        Recipient {
                            idx: r.get(0)?,
                            address: r.get(1)?,
                            route: match (route.as_str(), mailbox) {
                                ("local", Some(mailbox)) => Route::Local {
                                    mailbox,
                                    folder: Folder::parse(folder.as_deref()),
                                },
                                _ => Route::Remote,
                            },
                        },
                    ))
                },
            )
        })?;
        let rcpts: Vec<Recipient> = rcpts
            .into_iter()
            .filter(|(status, r)| keep(r.idx, status))
            .map(|(_, r)| r)
            .collect();
        let meta: Meta = serde_json::from_str(&meta)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let body = if spooled {
            let p = self.spool_path(id);
            if !p.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("spool file {} missing", p.display()),
                )
                .into());
            }
            Body::Spooled(p)
        } else if with_body {
            Body::Inline(Arc::new(body.unwrap_or_default()))
        } else {
            Body::Stored
        };
        Ok(Some(Message {
            id: id.to_string(),
            created,
            sender,
            size: size as u64,
            meta,
            rcpts,
            body,
        }))
    }

    /// Spool files with no queue row are leftovers of transactions that never got their
    /// `250`: remove them.
    pub fn remove_orphan_spools(&self) -> Result<usize, QueueError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = self
                .store
                .read(|c| c.exists("SELECT 1 FROM queue WHERE id = ?1", [&name]))?;
            if !known {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Claim remote recipients due for an attempt: `queued`, or `deferred` with their time
    /// come, that no node holds a lease on. Returns (message id, recipient index, attempts so
    /// far), oldest messages first; they are this node's until [`Queue::record_remote`] or
    /// until the lease runs out.
    pub async fn claim_remote(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, u32, u32)>, QueueError> {
        let (node, until) = (self.lease.node.clone(), now + self.lease.secs);
        let mut rows: Vec<(String, u32, u32)> = self
            .store
            .write(move |c| {
                claim(
                    c,
                    "route = 'remote' AND lease_until <= ?1 \
                     AND ((status = 'queued') OR (status = 'deferred' AND next_attempt <= ?1))",
                    "ORDER BY id, idx LIMIT ?2",
                    crate::params![now, limit as i64, until, node],
                )
            })
            .await?;
        rows.sort();
        Ok(rows)
    }

    /// Just before an attempt, on a shared store: extend this node's lease on each message's
    /// recipients, or take those whose lease ran out. Returns, per message, the recipients that are this node's
    /// now; the others went to another node while they waited here, and are not tried.
    pub async fn renew(
        &self,
        wanted: Vec<(String, Vec<u32>)>,
    ) -> Result<Vec<(String, Vec<u32>)>, QueueError> {
        // One node alone has nobody to lose a recipient to: no write on its delivery path.
        if !self.store.is_shared() {
            return Ok(wanted);
        }
        let (now, me) = (self.now(), self.lease.node.clone());
        let until = now + self.lease.secs;
        Ok(self
            .store
            .write(move |c| {
                let mut out = Vec::with_capacity(wanted.len());
                for (id, idxs) in wanted {
                    let mut mine = Vec::with_capacity(idxs.len());
                    for idx in idxs {
                        let n = c.execute(
                            "UPDATE queue_rcpt SET lease_node = ?3, lease_until = ?4 \
                             WHERE id = ?1 AND idx = ?2 AND status IN ('queued', 'deferred') \
                             AND (lease_node = ?3 OR lease_until <= ?5)",
                            crate::params![id, idx, me, until, now],
                        )?;
                        if n == 1 {
                            mine.push(idx);
                        }
                    }
                    out.push((id, mine));
                }
                Ok(out)
            })
            .await?)
    }

    /// Record the outcome of remote delivery attempts for one message in one commit; a
    /// deferred recipient gets its next attempt time. Recipients that an administrator held
    /// or deleted meanwhile keep that state. Removes the message when nothing is left to do;
    /// returns whether it did.
    pub async fn record_remote(
        &self,
        id: &str,
        outcomes: Vec<RemoteOutcome>,
    ) -> Result<bool, QueueError> {
        let id2 = id.to_string();
        let now = self.now();
        let node = self.lease.node.clone();
        let finished = self
            .store
            .write(move |c| {
                for o in &outcomes {
                    c.execute(
                        "UPDATE queue_rcpt SET status = ?3, last_reply = ?4, updated = ?5, \
                         attempts = attempts + 1, next_attempt = ?6, lease_node = NULL, \
                         lease_until = 0 WHERE id = ?1 AND idx = ?2 \
                         AND status IN ('queued', 'deferred') AND lease_node = ?7",
                        crate::params![
                            id2,
                            o.idx,
                            o.status.as_str(),
                            o.reply,
                            now,
                            o.next_attempt,
                            node
                        ],
                    )?;
                }
                finish_if_done(c, &id2)
            })
            .await?;
        if finished {
            self.remove_spool(id);
        }
        Ok(finished)
    }

    fn remove_spool(&self, id: &str) {
        let p = self.spool_path(id);
        if p.exists() {
            let _ = std::fs::remove_file(p);
        }
    }

    pub fn dispatch(&self, msg: Message, recovering: bool) {
        let _ = self.notify.send(Dispatch {
            msg: Arc::new(msg),
            recovering,
            _held: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mail_committed_for_a_suspended_account_is_held_whoever_commits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (queue, _rx) = Queue::new(
            store.clone(),
            dir.path(),
            DirSync::start(),
            1 << 20,
            crate::clock::system(),
            Lease {
                node: "test".into(),
                secs: 60,
            },
        )
        .unwrap();
        let s = store.clone();
        tokio::task::spawn_blocking(move || {
            crate::containment::suspend(&s, "alice@example.test", "phished", "by hand", 0)
        })
        .await
        .unwrap()
        .unwrap();
        // As a quarantine release commits it: the account that submitted it, no session.
        let msg = Message {
            id: "released1".into(),
            created: 1,
            sender: "alice@example.test".into(),
            size: 6,
            meta: Meta {
                listener: "quarantine".into(),
                auth: Some("alice@example.test".into()),
                ..Meta::default()
            },
            rcpts: vec![
                Recipient {
                    idx: 0,
                    address: "far@remote.test".into(),
                    route: Route::Remote,
                },
                Recipient {
                    idx: 1,
                    address: "bob@example.test".into(),
                    route: Route::Local {
                        mailbox: "bob@example.test".into(),
                        folder: Folder::Inbox,
                    },
                },
            ],
            body: Body::Inline(Arc::new(b"hello\n".to_vec())),
        };
        queue.enqueue(msg).await.unwrap();
        let status = |route: &str| -> String {
            let route = route.to_string();
            store
                .read(move |c| {
                    c.query_row(
                        "SELECT status FROM queue_rcpt WHERE id = 'released1' AND route = ?1",
                        [&route],
                        |r| r.get(0),
                    )
                })
                .unwrap()
        };
        assert_eq!(
            status("remote"),
            "held",
            "nothing leaves for a suspended account"
        );
        assert_eq!(
            status("local"),
            "queued",
            "a suspended account's mail to us still arrives"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_sharing_a_queue_claim_apart_and_take_over_a_dead_nodes_recipients() {
        let dir = tempfile::tempdir().unwrap();
        // On PostgreSQL each node has its own store, writer and connections, as in a cluster.
        let mut pairs = vec![{
            let s = Store::open(dir.path()).unwrap();
            (s.clone(), s)
        }];
        if let Some(url) = crate::store::test_postgres() {
            pairs.push((
                Store::open_postgres(&url).unwrap(),
                Store::open_postgres(&url).unwrap(),
            ));
        }
        for (store, store_b) in pairs {
            let node = |name: &str, store: &Store| {
                let lease = Lease {
                    node: name.into(),
                    secs: 60,
                };
                let dirsync = DirSync::start();
                Queue::new(
                    store.clone(),
                    dir.path(),
                    dirsync,
                    1 << 20,
                    crate::clock::system(),
                    lease,
                )
                .unwrap()
                .0
            };
            let (a, b) = (node("a", &store), node("b", &store_b));
            let rcpt = |idx: u32| Recipient {
                idx,
                address: format!("r{idx}@far.test"),
                route: Route::Remote,
            };
            let mut msg = Message::generated("mx", "h", a.now(), rcpt(0), b"x\r\n".to_vec());
            msg.rcpts.extend([rcpt(1), rcpt(2)]);
            let id = msg.id.clone();
            a.enqueue(msg).await.unwrap();
            let now = a.now();
            // At the same moment: on PostgreSQL each skips what the other is claiming.
            let (on_a, on_b) = tokio::join!(a.claim_remote(now, 2), b.claim_remote(now, 10));
            let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
            assert_eq!(on_a.len() + on_b.len(), 3, "{store:?}: {on_a:?} {on_b:?}");
            assert!(on_a.iter().all(|r| !on_b.contains(r)), "never both");
            assert!(a.claim_remote(now, 10).await.unwrap().is_empty());
            assert!(b.claim_remote(now, 10).await.unwrap().is_empty());
            // The node that got something dies. Once its lease runs out, the other takes its
            // recipients over.
            let (dead, held, alive) = if on_a.is_empty() {
                (&b, on_b, &a)
            } else {
                (&a, on_a, &b)
            };
            let later = alive.claim_remote(now + 61, 10).await.unwrap();
            assert!(held.iter().all(|r| later.contains(r)), "{later:?}");
            // The dead node's late outcome no longer counts; the other's does, once.
            let idx = held[0].1;
            dead.record_remote(&id, vec![RemoteOutcome::failed(idx, "550 late".into())])
                .await
                .unwrap();
            let status = |idx: u32| -> String {
                store
                    .read(|c| {
                        c.query_row(
                            "SELECT status FROM queue_rcpt WHERE id = ?1 AND idx = ?2",
                            crate::params![id, idx],
                            |r| r.get(0),
                        )
                    })
                    .unwrap()
            };
            assert_eq!(status(idx), "queued");
            let delivered = RemoteOutcome {
                idx,
                status: Status::Delivered,
                reply: Some("250 ok".into()),
                next_attempt: 0,
            };
            alive.record_remote(&id, vec![delivered]).await.unwrap();
            assert_eq!(status(idx), "delivered");
        }
    }
}
