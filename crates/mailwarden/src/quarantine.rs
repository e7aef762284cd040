//! Quarantine: messages whose score reached `scoring.quarantine` are kept for an
//! administrator instead of being delivered. `mailwarden quarantine list|show|release|delete`
//! works on the store; a release is picked up by the running server within a second and
//! delivered to the recipients' inboxes through the normal queue.

use crate::store::Optional;
use crate::store::{Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub time: i64,
    pub sender: String,
    /// The account that submitted it (outbound mail), whose rules apply when it is released.
    pub account: Option<String>,
    /// (address, local mailbox) of each recipient; an empty mailbox is a remote recipient.
    pub rcpts: Vec<(String, String)>,
    pub score: f64,
    /// The reason codes that put it here.
    pub reasons: String,
    #[serde(skip)]
    pub content: Vec<u8>,
}

/// A held message as people read it: its header fields with encoded words decoded, then its
/// first text part in its own charset (HTML turned to text), at most 64 KiB of it. Nothing in
/// it is interpreted: the caller escapes controls.
pub fn render(content: &[u8]) -> String {
    const MAX_TEXT: usize = 64 * 1024;
    let mut out = String::new();
    for f in crate::header::fields(content).capped(64 * 1024) {
        let Some(name) = f.name() else { continue };
        let name = String::from_utf8_lossy(name).trim().to_string();
        let value = crate::header::decoded(f.raw, &name).unwrap_or_default();
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push('\n');
    let msg = mail_parser::MessageParser::default().parse(content);
    if let Some(text) = msg.as_ref().and_then(|m| m.body_text(0)) {
        let mut end = text.len().min(MAX_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&text[..end].replace("\r\n", "\n"));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub async fn hold(store: &Store, e: Entry) -> Result<(), StoreError> {
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO quarantine(id, time, sender, rcpts, score, reasons, content, account) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                crate::params![
                    e.id,
                    e.time,
                    e.sender,
                    serde_json::to_string(&e.rcpts).unwrap_or_default(),
                    e.score,
                    e.reasons,
                    e.content,
                    e.account
                ],
            )?;
            Ok(())
        })
        .await
}

fn row(r: &crate::store::Row<'_>) -> crate::store::DbResult<Entry> {
    let rcpts: String = r.get(3)?;
    Ok(Entry {
        id: r.get(0)?,
        time: r.get(1)?,
        sender: r.get(2)?,
        rcpts: serde_json::from_str(&rcpts).unwrap_or_default(),
        score: r.get(4)?,
        reasons: r.get(5)?,
        content: r.get(6)?,
        account: r.get(7)?,
    })
}

const COLUMNS: &str = "id, time, sender, rcpts, score, reasons, content, account";

/// The `limit` newest messages waiting, with at most the first 16 KiB of each (enough for
/// its header section): the console's list, whose cost must not grow with the quarantine.
pub fn list_recent(store: &Store, limit: usize) -> Result<Vec<Entry>, StoreError> {
    store.read(|c| {
        c.query_map(
            &format!(
                "SELECT id, time, sender, rcpts, score, reasons, substr(content, 1, 16384), \
                 account FROM quarantine WHERE released = 0 ORDER BY time DESC LIMIT {}",
                limit.max(1)
            ),
            (),
            row,
        )
    })
}

/// How many messages wait.
pub fn waiting(store: &Store) -> Result<i64, StoreError> {
    store.read(|c| {
        c.query_row(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM quarantine WHERE released = 0",
            (),
            |r| r.get(0),
        )
    })
}

/// Messages waiting for a decision, oldest first.
pub fn list(store: &Store) -> Result<Vec<Entry>, StoreError> {
    store.read(|c| {
        c.query_map(
            &format!("SELECT {COLUMNS} FROM quarantine WHERE released = 0 ORDER BY time"),
            (),
            row,
        )
    })
}

pub fn get(store: &Store, id: &str) -> Result<Option<Entry>, StoreError> {
    store.read(|c| {
        c.query_row(
            &format!("SELECT {COLUMNS} FROM quarantine WHERE id = ?1 AND released = 0"),
            [id],
            row,
        )
        .optional()
    })
}

/// Mark for delivery; false if there is no such waiting message.
pub fn release(store: &Store, id: &str) -> Result<bool, StoreError> {
    let id = id.to_string();
    Ok(store.write_blocking(move |c| {
        c.execute(
            "UPDATE quarantine SET released = 1 WHERE id = ?1 AND released = 0",
            [id],
        )
    })? > 0)
}

/// Release it, first teaching the classifier that it is ham when `learn_ham` (`quarantine
/// release [--learn-ham]`, and the console's Release). False if there is no such message.
pub fn release_learning(store: &Store, id: &str, learn_ham: bool) -> Result<bool, StoreError> {
    let Some(e) = get(store, id)? else {
        return Ok(false);
    };
    if learn_ham {
        learn(store, &e, false)?;
    }
    release(store, id)
}

/// Teach the classifier that it is spam, then throw it away (the console's "Learn as spam").
/// False if there is no such message.
pub fn learn_spam(store: &Store, id: &str) -> Result<bool, StoreError> {
    let Some(e) = get(store, id)? else {
        return Ok(false);
    };
    learn(store, &e, true)?;
    delete(store, id)
}

fn learn(store: &Store, e: &Entry, spam: bool) -> Result<(), StoreError> {
    let toks: Vec<String> = crate::classifier::tokens(&e.content).into_iter().collect();
    store.write_blocking(move |c| crate::classifier::Model::record_in(c, &toks, spam, true))
}

pub fn delete(store: &Store, id: &str) -> Result<bool, StoreError> {
    let id = id.to_string();
    Ok(store.write_blocking(move |c| {
        c.execute(
            "DELETE FROM quarantine WHERE id = ?1 AND released = 0",
            [id],
        )
    })? > 0)
}

/// Released messages, for the server to deliver (then [`forget`]).
pub fn released(store: &Store) -> Result<Vec<Entry>, StoreError> {
    store.read(|c| {
        c.query_map(
            &format!("SELECT {COLUMNS} FROM quarantine WHERE released = 1"),
            (),
            row,
        )
    })
}

pub async fn forget(store: &Store, id: String) -> Result<(), StoreError> {
    store
        .write(move |c| {
            c.execute("DELETE FROM quarantine WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
}

/// The running server's side: deliver released messages to the recipients' inboxes through
/// the queue, then drop them from the quarantine. Checked every second.
pub async fn deliver_released(store: Store, queue: std::sync::Arc<crate::queue::Queue>) {
    use crate::queue::{Body, Folder, Message, Meta, Recipient, Route};
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let s = store.clone();
        let Ok(Ok(entries)) = tokio::task::spawn_blocking(move || released(&s)).await else {
            continue;
        };
        for e in entries {
            let rcpts = e
                .rcpts
                .iter()
                .enumerate()
                .map(|(i, (address, mailbox))| Recipient {
                    idx: i as u32,
                    address: address.clone(),
                    route: if mailbox.is_empty() {
                        Route::Remote
                    } else {
                        Route::Local {
                            mailbox: mailbox.clone(),
                            folder: Folder::Inbox,
                        }
                    },
                })
                .collect();
            let msg = Message {
                id: crate::util::new_id(),
                created: queue.now(),
                sender: e.sender.clone(),
                size: e.content.len() as u64,
                meta: Meta {
                    listener: "quarantine".into(),
                    auth: e.account.clone(),
                    ..Meta::default()
                },
                rcpts,
                body: Body::Inline(std::sync::Arc::new(e.content)),
            };
            // A crash between the two writes delivers it again at the next release check:
            // a duplicate, never a loss.
            match queue.enqueue(msg).await {
                Ok(_) => {
                    tracing::info!(event = "quarantine_released", id = %e.id);
                    if let Err(err) = forget(&store, e.id.clone()).await {
                        tracing::error!(event = "quarantine_forget_failed", id = %e.id, error = %err);
                    }
                }
                Err(err) => {
                    tracing::error!(event = "quarantine_release_failed", id = %e.id, error = %err)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_listed_released_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["A", "B"] {
            hold(
                &store,
                Entry {
                    id: id.into(),
                    time: 1,
                    sender: "s@x.test".into(),
                    account: None,
                    rcpts: vec![("a@example.test".into(), "a@example.test".into())],
                    score: 9.5,
                    reasons: "headers.from_no_address".into(),
                    content: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(list(&store).unwrap().len(), 2);
        // The CLI's calls block; run them off the runtime as the CLI would.
        let blocking = |f: fn(&Store, &str) -> Result<bool, StoreError>, id: &'static str| {
            let s = store.clone();
            tokio::task::spawn_blocking(move || f(&s, id).unwrap())
        };
        assert!(blocking(release, "A").await.unwrap());
        assert!(!blocking(release, "A").await.unwrap(), "only once");
        assert!(get(&store, "A").unwrap().is_none());
        assert_eq!(released(&store).unwrap()[0].id, "A");
        assert!(blocking(delete, "B").await.unwrap());
        assert!(list(&store).unwrap().is_empty());
        forget(&store, "A".into()).await.unwrap();
        assert!(released(&store).unwrap().is_empty());
    }
}
