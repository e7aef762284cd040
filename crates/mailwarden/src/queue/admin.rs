//! Queue administration for the CLI (`mailwarden queue list|show|retry|hold|release|delete`).
//!
//! These functions change the same store the server uses; outbound delivery reads the due
//! recipients from the store every second, so a running server honours a change at once
//! without any signal. Holding and releasing act on recipients that wait for delivery
//! (`queued` or `deferred`); local recipients are delivered as soon as they are committed.

use crate::clock::Clock;
use crate::store::{Store, StoreError};

use crate::store::Optional;
use std::path::Path;

/// One line of `queue list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub id: String,
    pub created: i64,
    pub sender: String,
    pub size: u64,
    pub recipients: Vec<RcptState>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RcptState {
    pub idx: u32,
    pub address: String,
    pub route: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_reply: Option<String>,
}

/// The `limit` newest messages (the console's list, whose cost must not grow with the
/// queue), and how many there are in all.
pub fn list_recent(store: &Store, limit: usize) -> Result<(Vec<Summary>, i64), StoreError> {
    let (ids, total): (Vec<String>, i64) = store.read(|c| {
        let ids = c.query_map(
            &format!(
                "SELECT id FROM queue ORDER BY created DESC, id DESC LIMIT {}",
                limit.max(1)
            ),
            (),
            |r| r.get(0),
        )?;
        let total = c.query_row("SELECT CAST(COUNT(*) AS BIGINT) FROM queue", (), |r| {
            r.get(0)
        })?;
        Ok((ids, total))
    })?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(s) = show(store, &id)? {
            out.push(s);
        }
    }
    Ok((out, total))
}

pub fn list(store: &Store) -> Result<Vec<Summary>, StoreError> {
    let ids: Vec<String> = store.read(|c| {
        c.query_map("SELECT id FROM queue ORDER BY created, id", (), |r| {
            r.get(0)
        })
    })?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(s) = show(store, &id)? {
            out.push(s);
        }
    }
    Ok(out)
}

pub fn show(store: &Store, id: &str) -> Result<Option<Summary>, StoreError> {
    let head = store.read(|c| {
        c.query_row(
            "SELECT created, sender, size FROM queue WHERE id = ?1",
            [id],
            |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
        )
        .optional()
    })?;
    let Some((created, sender, size)) = head else {
        return Ok(None);
    };
    let recipients = store.read(|c| {
        c.query_map(
            "SELECT idx, address, route, status, attempts, next_attempt, last_reply \
             FROM queue_rcpt WHERE id = ?1 ORDER BY idx",
            [id],
            |r| {
                Ok(RcptState {
                    idx: r.get(0)?,
                    address: r.get(1)?,
                    route: r.get(2)?,
                    status: r.get(3)?,
                    attempts: r.get(4)?,
                    next_attempt: r.get(5)?,
                    last_reply: r.get(6)?,
                })
            },
        )
    })?;
    Ok(Some(Summary {
        id: id.to_string(),
        created,
        sender,
        size: size as u64,
        recipients,
    }))
}

/// The queue by recipient state: how many recipients, and the oldest one's arrival (Unix
/// time), for the console's overview and `/metrics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StateCount {
    pub status: String,
    pub recipients: i64,
    pub oldest: i64,
}

pub fn stats(store: &Store) -> Result<Vec<StateCount>, StoreError> {
    store.read(|c| {
        c.query_map(
            "SELECT r.status, CAST(COUNT(*) AS BIGINT), CAST(MIN(q.created) AS BIGINT) \
             FROM queue_rcpt r JOIN queue q ON q.id = r.id GROUP BY r.status ORDER BY r.status",
            (),
            |r| {
                Ok(StateCount {
                    status: r.get(0)?,
                    recipients: r.get(1)?,
                    oldest: r.get(2)?,
                })
            },
        )
    })
}

/// Make deferred recipients (of one message, or all) due now. Returns how many.
pub fn retry(store: &Store, id: Option<&str>) -> Result<usize, StoreError> {
    let id = id.map(str::to_string);
    store.write_blocking(move |c| {
        Ok(match &id {
            Some(id) => c.execute(
                "UPDATE queue_rcpt SET next_attempt = 0 WHERE id = ?1 AND status = 'deferred'",
                [id],
            )?,
            None => c.execute(
                "UPDATE queue_rcpt SET next_attempt = 0 WHERE status = 'deferred'",
                (),
            )?,
        })
    })
}

/// Keep a message's waiting recipients back from delivery. Returns how many.
pub fn hold(store: &Store, id: &str) -> Result<usize, StoreError> {
    let id = id.to_string();
    store.write_blocking(move |c| {
        c.execute(
            "UPDATE queue_rcpt SET status = 'held', updated = ?2 \
             WHERE id = ?1 AND status IN ('queued', 'deferred')",
            crate::params![id, crate::clock::SystemClock.now_secs()],
        )
    })
}

/// Let held recipients go, due at once. Returns how many.
pub fn release(store: &Store, id: &str) -> Result<usize, StoreError> {
    let id = id.to_string();
    store.write_blocking(move |c| {
        c.execute(
            "UPDATE queue_rcpt SET status = 'deferred', next_attempt = 0, updated = ?2 \
             WHERE id = ?1 AND status = 'held'",
            crate::params![id, crate::clock::SystemClock.now_secs()],
        )
    })
}

/// Remove a message and its spool file without delivering or bouncing it.
pub fn delete(store: &Store, data_dir: &Path, id: &str) -> Result<bool, StoreError> {
    let id2 = id.to_string();
    let removed = store.write_blocking(move |c| {
        c.execute("DELETE FROM queue_rcpt WHERE id = ?1", [&id2])?;
        let n = c.execute("DELETE FROM queue WHERE id = ?1", [&id2])?;
        Ok(n > 0)
    })?;
    let spool = data_dir.join("queue").join(id);
    if removed && spool.exists() {
        let _ = std::fs::remove_file(spool);
    }
    Ok(removed)
}
