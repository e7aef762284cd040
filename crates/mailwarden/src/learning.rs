//! Learning from users: a message a user moves into Junk (with any IMAP client, through any
//! IMAP server on our Maildir: Dovecot in the tests) is learned as spam, and one moved from
//! Junk to the inbox as ham, by the classifier and by reputation (a mark for the sender's
//! identities). A message moved back is unlearned. Each message is learned once.
//!
//! How it is seen: every `learning.scan_interval`, each mailbox's `cur/` and `new/` and its
//! `.Junk/` are listed. A message we delivered carries `X-Mailwarden-Id: ID FOLDER` on top
//! (the queue id, and where we put it); the first such field of a file is read once per file
//! name and remembered. A message is where its newest copy is; its label (`learned` table)
//! follows where the user put it against where we put it.
//!
//! Security: files come from users' mail and names from their IMAP server; links are not
//! followed. Only the first
//! [`HEAD_BYTES`] of a file are read to find the field, at most [`MAX_BYTES`] to learn it; a
//! field a sender wrote further down is never the first (ours is prepended); ids not in
//! `reputation_msgs` (expired, or never ours) still teach the classifier but mark no one.

use crate::classifier::Model;
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The field that names a delivered message and where we put it.
pub const LEARN_FIELD: &str = "X-Mailwarden-Id";

/// Bytes of a file read to find our field.
const HEAD_BYTES: usize = 16 * 1024;
/// Bytes of a message read to learn it (the classifier looks at no more).
const MAX_BYTES: u64 = 512 * 1024;

/// Where a message is, or where we put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    Inbox,
    Junk,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Place::Inbox => "inbox",
            Place::Junk => "junk",
        }
    }
}

/// The label a user's move gives: spam for what we put in the inbox and they put in Junk,
/// ham for the reverse, none where it was put.
pub fn label(delivered: Place, now: Place) -> Option<bool> {
    match (delivered, now) {
        (Place::Inbox, Place::Junk) => Some(true),
        (Place::Junk, Place::Inbox) => Some(false),
        _ => None,
    }
}

/// Our field's value for a delivery.
pub fn field_value(id: &str, delivered: Place) -> String {
    format!("{id} {}", delivered.name())
}

/// What a file told us once.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    delivered: Place,
}

/// The scanner's memory of file names, so each file's head is read once.
#[derive(Default)]
pub struct Learner {
    seen: HashMap<PathBuf, Option<Seen>>,
}

/// A message found in a mailbox: its id, where we put it, where it is, and its file.
struct Found {
    delivered: Place,
    now: Place,
    path: PathBuf,
}

/// Our field in the head of a file: the first one.
fn ours(head: &[u8]) -> Option<Seen> {
    let v = crate::header::value(head, LEARN_FIELD)?;
    let mut w = v.split_whitespace();
    let id = w.next()?.to_string();
    let delivered = match w.next()? {
        "inbox" => Place::Inbox,
        "junk" => Place::Junk,
        _ => return None,
    };
    (id.len() <= 64).then_some(Seen { id, delivered })
}

fn head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Every mailbox's Maildir: `{data_dir}/mail/{domain}/{localpart}/Maildir`.
fn maildirs(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(domains) = std::fs::read_dir(data_dir.join("mail")) else {
        return out;
    };
    for d in domains.flatten() {
        let Ok(users) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for u in users.flatten() {
            let m = u.path().join("Maildir");
            if m.is_dir() {
                out.push(m);
            }
        }
    }
    out
}

impl Learner {
    /// List every mailbox once: each of our messages, where it is now. A message in both
    /// places (a copy not yet expunged) counts where we did not put it: the user's act.
    fn scan(&mut self, data_dir: &Path) -> HashMap<String, Found> {
        let mut found: HashMap<String, Found> = HashMap::new();
        let mut alive = std::collections::HashSet::new();
        for m in maildirs(data_dir) {
            for (dir, place) in [
                (m.join("cur"), Place::Inbox),
                (m.join("new"), Place::Inbox),
                (m.join(".Junk").join("cur"), Place::Junk),
                (m.join(".Junk").join("new"), Place::Junk),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    // Regular files only: a link a mailbox's owner planted would have the
                    // server read (and learn) a file that is not mail.
                    if !e.file_type().is_ok_and(|t| t.is_file()) {
                        continue;
                    }
                    let path = e.path();
                    alive.insert(path.clone());
                    let seen = self
                        .seen
                        .entry(path.clone())
                        .or_insert_with(|| head(&path).ok().and_then(|h| ours(&h)));
                    let Some(seen) = seen else { continue };
                    let moved = place != seen.delivered;
                    match found.get(&seen.id) {
                        Some(f) if f.now != f.delivered || !moved => {}
                        _ => {
                            found.insert(
                                seen.id.clone(),
                                Found {
                                    delivered: seen.delivered,
                                    now: place,
                                    path,
                                },
                            );
                        }
                    }
                }
            }
        }
        // Forget files that are gone (moved, expunged): the map stays the size of the mail.
        self.seen.retain(|p, _| alive.contains(p));
        found
    }

    /// One pass: learn what users moved since the last one. Returns (learned, unlearned).
    pub async fn pass(
        &mut self,
        store: &Store,
        data_dir: &Path,
        now: i64,
    ) -> Result<(usize, usize), StoreError> {
        let found = self.scan(data_dir);
        let labels: HashMap<String, bool> = store.read(|c| {
            c.prepare("SELECT id, spam FROM learned")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?
                .collect()
        })?;
        let (mut learned, mut unlearned) = (0, 0);
        for (id, f) in &found {
            let want = label(f.delivered, f.now);
            let have = labels.get(id).copied();
            if want == have {
                continue;
            }
            let raw = read_capped(&f.path).unwrap_or_default();
            if raw.is_empty() {
                continue;
            }
            let toks = crate::classifier::tokens(&raw);
            if let Some(spam) = have {
                Model::record(store, &toks, spam, false).await?;
                crate::reputation::mark(store, id, spam, false, now).await?;
                unlearned += 1;
            }
            if let Some(spam) = want {
                Model::record(store, &toks, spam, true).await?;
                crate::reputation::mark(store, id, spam, true, now).await?;
                learned += 1;
            }
            let key = id.clone();
            store
                .write(move |c| match want {
                    Some(spam) => c
                        .execute(
                            "INSERT OR REPLACE INTO learned(id, spam, time) VALUES (?1, ?2, ?3)",
                            rusqlite::params![key, spam, now],
                        )
                        .map(|_| ()),
                    None => c
                        .execute("DELETE FROM learned WHERE id = ?1", [key])
                        .map(|_| ()),
                })
                .await?;
            tracing::info!(
                event = "learned_from_user",
                qid = %id,
                label = match want { Some(true) => "spam", Some(false) => "ham", None => "none" },
                was = match have { Some(true) => "spam", Some(false) => "ham", None => "none" },
            );
        }
        Ok((learned, unlearned))
    }
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_BYTES)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// The server's task: a pass every `every`. Scans run on the blocking pool.
pub async fn run(
    store: Store,
    data_dir: PathBuf,
    every: std::time::Duration,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
) {
    let learner = std::sync::Arc::new(tokio::sync::Mutex::new(Learner::default()));
    loop {
        tokio::time::sleep(every).await;
        let (l, store, dir) = (learner.clone(), store.clone(), data_dir.clone());
        let now = clock.now_secs();
        let handle = tokio::runtime::Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            handle.block_on(async move { l.lock().await.pass(&store, &dir, now).await })
        })
        .await;
        match done {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((learned, unlearned))) => {
                tracing::info!(event = "learning_pass", learned, unlearned)
            }
            Ok(Err(e)) => tracing::error!(event = "learning_failed", error = %e),
            Err(e) => tracing::error!(event = "learning_failed", error = %e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(dir: &Path, folder: &str, name: &str, id: &str, delivered: Place, body: &str) {
        let d = dir.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        let text = format!(
            "Return-Path: <x@y.test>\n{LEARN_FIELD}: {}\nFrom: a@b.test\nSubject: {body}\n\n{body}\n",
            field_value(id, delivered)
        );
        std::fs::write(d.join(name), text).unwrap();
    }

    #[test]
    fn labels_follow_where_the_user_put_it() {
        assert_eq!(label(Place::Inbox, Place::Junk), Some(true));
        assert_eq!(label(Place::Junk, Place::Inbox), Some(false));
        assert_eq!(label(Place::Inbox, Place::Inbox), None);
        assert_eq!(label(Place::Junk, Place::Junk), None);
    }

    #[test]
    fn only_the_first_field_is_ours() {
        let h = format!("{LEARN_FIELD}: q1 inbox\r\n{LEARN_FIELD}: forged junk\r\n\r\n");
        let s = ours(h.as_bytes()).unwrap();
        assert_eq!((s.id.as_str(), s.delivered), ("q1", Place::Inbox));
        assert!(ours(b"Subject: x\r\n\r\n").is_none());
        assert!(ours(format!("{LEARN_FIELD}: q1 elsewhere\r\n\r\n").as_bytes()).is_none());
    }

    #[tokio::test]
    async fn moves_are_learned_once_and_unlearned_when_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let data = dir.path().join("data");
        let m = data.join("mail/example.test/alice/Maildir");
        deliver(&m, "cur", "1:2,S", "q1", Place::Inbox, "replica watches");
        deliver(&m, ".Junk/new", "2", "q2", Place::Junk, "meeting agenda");
        let mut l = Learner::default();
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (0, 0));
        // Alice moves q1 to Junk (a new name, as IMAP servers do) and q2 to her inbox.
        std::fs::remove_file(m.join("cur/1:2,S")).unwrap();
        deliver(
            &m,
            ".Junk/cur",
            "3:2,S",
            "q1",
            Place::Inbox,
            "replica watches",
        );
        std::fs::remove_file(m.join(".Junk/new/2")).unwrap();
        deliver(&m, "cur", "4:2,S", "q2", Place::Junk, "meeting agenda");
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (2, 0));
        let model = Model::load(&store).unwrap();
        assert_eq!((model.spam_messages, model.ham_messages), (1, 1));
        // Once.
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (0, 0));
        // A fresh learner (a restart) agrees, from the store.
        assert_eq!(
            Learner::default().pass(&store, &data, 1000).await.unwrap(),
            (0, 0)
        );
        // q1 back to the inbox: unlearned.
        std::fs::remove_file(m.join(".Junk/cur/3:2,S")).unwrap();
        deliver(&m, "cur", "5:2,S", "q1", Place::Inbox, "replica watches");
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (0, 1));
        let model = Model::load(&store).unwrap();
        assert_eq!((model.spam_messages, model.ham_messages), (0, 1));
    }
}
