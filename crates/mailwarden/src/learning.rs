//! Learning from users: a message a user moves into Junk (with any IMAP client, through any
//! IMAP server on our Maildir: Dovecot in the tests) is learned as spam, and one moved from
//! Junk to the inbox as ham, by the classifier and by reputation (a mark for the sender's
//! identities). A message moved back is unlearned. Each message is learned once per mailbox.
//!
//! How it is seen: every `learning.scan_interval`, each mailbox's `cur/` and `new/` and its
//! `.Junk/` are listed. Mail from outside we deliver carries `X-Mailwarden-Id: ID FOLDER MAC`
//! on top (the queue id, where we put it, and an HMAC of both under a key only the server
//! has, `{data_dir}/learn.key`); the first such field of a file is read once per file name
//! and remembered. In each mailbox a message counts where the user put it when a copy is
//! there (a move's copy may briefly sit beside the original); its label (`learned` table)
//! follows where the user put it against where we put it.
//!
//! Security: files come from users' mail and names from their IMAP server; links are not
//! followed. A field anyone else wrote (a sender, in mail we delivered without ours: released
//! from quarantine, or submitted; a user appending files) fails the MAC and is ignored, so no
//! one can make a move count for another message. Only the first [`HEAD_BYTES`] of a file are
//! read to find the field, at most [`MAX_BYTES`] to learn it, and at most [`MAX_TOKENS`] of
//! its tokens go to the store's single writer.

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
/// Tokens of one message written to the store when it is learned (the ones that sort first:
/// a bound on one user's move's cost to the shared writer).
const MAX_TOKENS: usize = 20_000;
/// How long a label is kept once its message is gone from the mailbox.
const FORGET_SECS: i64 = 400 * 86_400;

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

/// A learning key as the shared store keeps it (`meta.learn_key`).
pub fn key_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

/// The cluster's key for [`LEARN_FIELD`]'s MAC on a shared store, where every node must check
/// what the others signed: made by the first node to ask, in `meta` (`learn_key`).
pub async fn shared_key(store: &crate::store::Store) -> Result<ring::hmac::Key, StoreError> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let fresh = key_hex(&b);
    let hex: String = store
        .write(move |c| {
            c.execute(
                "INSERT INTO meta(key, value) VALUES ('learn_key', ?1) ON CONFLICT DO NOTHING",
                [fresh],
            )?;
            c.query_row("SELECT value FROM meta WHERE key = 'learn_key'", (), |r| {
                r.get(0)
            })
        })
        .await?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    if bytes.len() != 32 {
        return Err(std::io::Error::other("meta.learn_key is not 32 hex octets").into());
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// The server's key for [`LEARN_FIELD`]'s MAC: `{data_dir}/learn.key`, made at first use
/// (on a shared store, [`shared_key`]).
pub fn key(data_dir: &Path) -> std::io::Result<ring::hmac::Key> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("learn.key");
    let bytes = match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => b,
        _ => {
            let mut b = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| std::io::Error::other("no randomness"))?;
            crate::store::create_private_dir(data_dir)?;
            let tmp = data_dir.join("learn.key.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&b)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            b.to_vec()
        }
    };
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

fn mac(key: &ring::hmac::Key, id: &str, delivered: Place) -> String {
    let tag = ring::hmac::sign(key, format!("{id} {}", delivered.name()).as_bytes());
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Our field's value for a delivery.
pub fn field_value(key: &ring::hmac::Key, id: &str, delivered: Place) -> String {
    format!("{id} {} {}", delivered.name(), mac(key, id, delivered))
}

/// What a file told us once.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    delivered: Place,
}

/// The scanner's memory of file names, so each file's head is read once.
pub struct Learner {
    key: ring::hmac::Key,
    seen: HashMap<PathBuf, Option<Seen>>,
}

/// A message found in a mailbox: where we put it, where it is, and its file.
struct Found {
    delivered: Place,
    now: Place,
    path: PathBuf,
}

/// Our field in the head of a file: the first one, if its MAC is ours.
fn ours(key: &ring::hmac::Key, head: &[u8]) -> Option<Seen> {
    let v = crate::header::value(head, LEARN_FIELD)?;
    let mut w = v.split_whitespace();
    let (id, place, tag) = (w.next()?, w.next()?, w.next()?);
    let delivered = match place {
        "inbox" => Place::Inbox,
        "junk" => Place::Junk,
        _ => return None,
    };
    (id.len() <= 64 && tag == mac(key, id, delivered)).then(|| Seen {
        id: id.to_string(),
        delivered,
    })
}

fn head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Every mailbox's Maildir, `{data_dir}/mail/{domain}/{localpart}/Maildir`, with its name
/// (`domain/localpart`).
fn maildirs(data_dir: &Path) -> Vec<(String, PathBuf)> {
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
                let name = format!(
                    "{}/{}",
                    d.file_name().to_string_lossy(),
                    u.file_name().to_string_lossy()
                );
                out.push((name, m));
            }
        }
    }
    out
}

/// (mailbox, queue id).
type Key = (String, String);

impl Learner {
    pub fn new(key: ring::hmac::Key) -> Learner {
        Learner {
            key,
            seen: HashMap::new(),
        }
    }

    /// List every mailbox once: each of our messages in each mailbox, and where it is now.
    fn scan(&mut self, data_dir: &Path) -> HashMap<Key, Found> {
        let mut found: HashMap<Key, Found> = HashMap::new();
        let mut alive = std::collections::HashSet::new();
        for (mailbox, m) in maildirs(data_dir) {
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
                    let key = &self.key;
                    let seen = self
                        .seen
                        .entry(path.clone())
                        .or_insert_with(|| head(&path).ok().and_then(|h| ours(key, &h)));
                    let Some(seen) = seen else { continue };
                    let k = (mailbox.clone(), seen.id.clone());
                    let moved = place != seen.delivered;
                    // A copy where the user put it wins over one where we put it.
                    if found.get(&k).is_none_or(|f| f.now == f.delivered && moved) {
                        found.insert(
                            k,
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
        let labels: HashMap<Key, (bool, i64)> = store
            .read(|c| {
                c.query_map("SELECT mailbox, id, spam, time FROM learned", (), |r| {
                    Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
                })
            })?
            .into_iter()
            .collect();
        let (mut learned, mut unlearned) = (0, 0);
        for (k, f) in &found {
            let want = label(f.delivered, f.now);
            let have = labels.get(k).map(|(spam, _)| *spam);
            if want == have {
                continue;
            }
            let raw = read_capped(&f.path).unwrap_or_default();
            if raw.is_empty() {
                continue;
            }
            let mut toks: Vec<String> = crate::classifier::tokens(&raw).into_iter().collect();
            toks.sort_unstable();
            toks.truncate(MAX_TOKENS);
            let (mailbox, id) = k.clone();
            // One transaction: the model, the marks and the label move together, so a crash
            // never leaves a message learned twice or half.
            store
                .write(move |c| {
                    if let Some(spam) = have {
                        Model::record_in(c, &toks, spam, false)?;
                        crate::reputation::mark_in(c, &id, spam, false)?;
                    }
                    match want {
                        Some(spam) => {
                            Model::record_in(c, &toks, spam, true)?;
                            crate::reputation::mark_in(c, &id, spam, true)?;
                            c.execute(
                                "INSERT INTO learned(mailbox, id, spam, time) \
                                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(mailbox, id) \
                                 DO UPDATE SET spam = excluded.spam, time = excluded.time",
                                crate::params![mailbox, id, spam, now],
                            )?;
                        }
                        None => {
                            c.execute(
                                "DELETE FROM learned WHERE mailbox = ?1 AND id = ?2",
                                [&mailbox, &id],
                            )?;
                        }
                    }
                    Ok(())
                })
                .await?;
            unlearned += usize::from(have.is_some());
            learned += usize::from(want.is_some());
            let name = |l: Option<bool>| match l {
                Some(true) => "spam",
                Some(false) => "ham",
                None => "none",
            };
            tracing::info!(event = "learned_from_user", mailbox = %k.0, qid = %k.1,
                label = name(want), was = name(have));
        }
        // Labels of messages gone from their mailbox for long are dropped: the table stays
        // the size of the mail kept.
        let gone: Vec<Key> = labels
            .iter()
            .filter(|(k, (_, t))| *t < now - FORGET_SECS && !found.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        if !gone.is_empty() {
            store
                .write(move |c| {
                    for (m, i) in &gone {
                        c.execute("DELETE FROM learned WHERE mailbox = ?1 AND id = ?2", [m, i])?;
                    }
                    Ok(())
                })
                .await?;
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
    key: ring::hmac::Key,
    every: std::time::Duration,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
) {
    let learner = std::sync::Arc::new(tokio::sync::Mutex::new(Learner::new(key)));
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

    fn test_key() -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"test key, 32 bytes long.........")
    }

    fn deliver(dir: &Path, folder: &str, name: &str, id: &str, delivered: Place, body: &str) {
        let d = dir.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        let text = format!(
            "Return-Path: <x@y.test>\n{LEARN_FIELD}: {}\nFrom: a@b.test\nSubject: {body}\n\n{body}\n",
            field_value(&test_key(), id, delivered)
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
    fn only_the_first_field_and_only_with_our_mac() {
        let k = test_key();
        let good = field_value(&k, "q1", Place::Inbox);
        let h = format!("{LEARN_FIELD}: {good}\r\n{LEARN_FIELD}: forged junk x\r\n\r\n");
        let s = ours(&k, h.as_bytes()).unwrap();
        assert_eq!((s.id.as_str(), s.delivered), ("q1", Place::Inbox));
        assert!(ours(&k, b"Subject: x\r\n\r\n").is_none());
        // What a sender can write: a guessed id, any folder, no key.
        let forged = good.replace("inbox", "junk");
        assert!(ours(&k, format!("{LEARN_FIELD}: {forged}\r\n\r\n").as_bytes()).is_none());
        let other = field_value(&k, "q2", Place::Inbox).replace("q2", "q1");
        assert!(ours(&k, format!("{LEARN_FIELD}: {other}\r\n\r\n").as_bytes()).is_none());
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = key(dir.path()).unwrap();
        let b = key(dir.path()).unwrap();
        assert_eq!(mac(&a, "q", Place::Junk), mac(&b, "q", Place::Junk));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("learn.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn moves_are_learned_once_per_mailbox_and_unlearned_when_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let data = dir.path().join("data");
        let m = data.join("mail/example.test/alice/Maildir");
        let bob = data.join("mail/example.test/bob/Maildir");
        deliver(&m, "cur", "1:2,S", "q1", Place::Inbox, "replica watches");
        deliver(&bob, "cur", "1:2,S", "q1", Place::Inbox, "replica watches");
        deliver(&m, ".Junk/new", "2", "q2", Place::Junk, "meeting agenda");
        let mut l = Learner::new(test_key());
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (0, 0));
        // Alice moves q1 to Junk (a new name, as IMAP servers do) and q2 to her inbox; Bob
        // keeps his copy of q1.
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
            Learner::new(test_key())
                .pass(&store, &data, 1000)
                .await
                .unwrap(),
            (0, 0)
        );
        // Alice empties her Junk: Bob's untouched copy does not unlearn her label.
        std::fs::remove_file(m.join(".Junk/cur/3:2,S")).unwrap();
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (0, 0));
        // q2 back to Junk: unlearned.
        std::fs::remove_file(m.join("cur/4:2,S")).unwrap();
        deliver(
            &m,
            ".Junk/cur",
            "5:2,S",
            "q2",
            Place::Junk,
            "meeting agenda",
        );
        assert_eq!(l.pass(&store, &data, 1000).await.unwrap(), (0, 1));
        let model = Model::load(&store).unwrap();
        assert_eq!((model.spam_messages, model.ham_messages), (1, 0));
    }
}
