//! An account's Maildir inbox as POP3 reads it (<https://cr.yp.to/proto/maildir.html>), beside
//! Dovecot or any other Maildir reader working on it at the same time.
//!
//! - The maildrop is the messages in `new/` and `cur/` of the inbox, oldest first (the
//!   delivery time that starts every Maildir name, then the name). Folders (`.Junk`) are not
//!   POP3's.
//! - A message's unique id (UIDL) is its Maildir base name (the part before `:`), which no
//!   reader changes: flags and the move from `new/` to `cur/` only change what follows it.
//!   A name that is too long for RFC 1939 §7 (70 characters) or has other characters is
//!   replaced by a hash of itself, just as stable.
//! - RETR marks a message seen the Maildir way: `new/NAME` becomes `cur/NAME:2,S`, and a
//!   `cur/` message gains `S` beside the flags it has (in order, as the spec asks).
//! - DELE removes the file at QUIT. Every step finds the message by its base name again if
//!   another reader renamed it meanwhile; one it removed is gone for us too. Renames and
//!   unlinks are atomic, so nothing needs a lock between readers; POP3 sessions take one per
//!   mailbox among themselves (RFC 1939 §4).
//!
//! Security: only regular files are read, opened without following a symlink or blocking on
//! a FIFO planted in a Maildir; sizes are counted once per message and cached (never taken
//! from a file name), and a session lists at most `pop3.max_messages`.
//! All of this is blocking file work, run on the blocking pool by the driver.

use mailwarden_proto::pop3::Entry;
use mailwarden_proto::pop3::content::SizeCounter;
use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One listed message.
#[derive(Clone, Debug)]
struct Msg {
    base: String,
    /// Where it was when last seen; found again by `base` if it moved; `None`: gone.
    path: Option<PathBuf>,
    entry: Entry,
}

/// The inbox of `mailbox` (`local@domain`), where local delivery puts its mail.
pub fn inbox(data_dir: &Path, mailbox: &str) -> PathBuf {
    crate::delivery::maildir::mailbox_dir(&data_dir.join("mail"), mailbox)
}

/// RFC 1939 §7: 1 to 70 characters in 0x21..=0x7E.
pub fn uid_of(base: &str) -> String {
    let ok = (1..=70).contains(&base.len()) && base.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        return base.to_string();
    }
    let d = ring::digest::digest(&ring::digest::SHA256, base.as_bytes());
    format!("h{}", crate::learning::key_hex(&d.as_ref()[..16]))
}

/// Sizes of messages already counted, per inbox and base name: a Maildir file's content never
/// changes, only its name. Each listing keeps exactly its inbox's current messages; past
/// [`SIZES_MAX`] entries in all, the inboxes listed longest ago are forgotten.
#[derive(Default)]
pub struct Sizes(Mutex<SizesInner>);

#[derive(Default)]
struct SizesInner {
    boxes: HashMap<PathBuf, (u64, HashMap<String, u64>)>,
    uses: u64,
}

/// About 100 bytes an entry: some 20 MB at most.
const SIZES_MAX: usize = 200_000;

impl Sizes {
    fn take(&self, dir: &Path) -> HashMap<String, u64> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.boxes.remove(dir).map(|(_, b)| b).unwrap_or_default()
    }

    fn put(&self, dir: &Path, sizes: HashMap<String, u64>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.uses += 1;
        let used = m.uses;
        m.boxes.insert(dir.to_path_buf(), (used, sizes));
        while m.boxes.len() > 1 && m.boxes.values().map(|(_, b)| b.len()).sum::<usize>() > SIZES_MAX
        {
            let oldest = m
                .boxes
                .iter()
                .min_by_key(|(_, (u, _))| *u)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                m.boxes.remove(&k);
            }
        }
    }
}

/// Open a message file: never through a symlink, never blocking on a FIFO, and only a
/// regular file (`None` otherwise, or when it is gone).
fn open_file(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) if f.metadata()?.is_file() => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        // ELOOP: a symlink where a message should be.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The size RETR sends, counted from the file; `None` if it is gone or not a message.
fn count_size(path: &Path) -> std::io::Result<Option<u64>> {
    let Some(mut f) = open_file(path)? else {
        return Ok(None);
    };
    let mut n = SizeCounter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            k => n.push(&buf[..k]),
        }
    }
    Ok(Some(n.finish()))
}

fn sort_key(base: &str) -> u64 {
    let digits = base.bytes().take_while(u8::is_ascii_digit).count();
    base[..digits].parse().unwrap_or(u64::MAX)
}

/// The base name of a Maildir file name, unless it is not a message (dot files).
fn base_of(name: &str) -> Option<&str> {
    if name.starts_with('.') || name.is_empty() {
        return None;
    }
    Some(name.split(':').next().unwrap_or(name))
}

/// Every message file of the inbox with its base name, each once. `new/` is read first: a
/// message another reader moves to `cur/` meanwhile is then seen there.
fn scan(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for sub in ["new", "cur"] {
        let rd = match std::fs::read_dir(dir.join(sub)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            // Not following links: a symlink is not a message.
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = e.file_name();
            let Some(base) = name.to_str().and_then(base_of) else {
                continue;
            };
            if seen.insert(base.to_string()) {
                found.push((base.to_string(), e.path()));
            }
        }
    }
    Ok(found)
}

/// A session's maildrop: the inbox and the messages listed at login, each where it was last
/// seen. When a path has gone stale (another reader renamed or removed files), one scan
/// finds every message again, so a session pays at most one directory read per change made
/// behind its back, never one per message.
pub struct Maildrop {
    dir: PathBuf,
    msgs: Vec<Msg>,
}

impl Maildrop {
    /// List the inbox: the oldest `max` messages, and how many there are in all.
    pub fn list(dir: &Path, max: usize, sizes: &Sizes) -> std::io::Result<(Maildrop, usize)> {
        let mut found: Vec<(u64, String, PathBuf)> = scan(dir)?
            .into_iter()
            .map(|(base, path)| (sort_key(&base), base, path))
            .collect();
        let total = found.len();
        found.sort();
        found.truncate(max);
        let mut known = sizes.take(dir);
        let mut kept = HashMap::with_capacity(found.len());
        let mut msgs = Vec::with_capacity(found.len());
        for (_, base, path) in found {
            let size = match known.remove(&base) {
                Some(s) => s,
                None => match count_size(&path) {
                    Ok(Some(s)) => s,
                    // Removed by another reader since the listing: not ours to show.
                    Ok(None) => continue,
                    Err(e) => {
                        sizes.put(dir, kept);
                        return Err(e);
                    }
                },
            };
            kept.insert(base.clone(), size);
            msgs.push(Msg {
                entry: Entry {
                    size,
                    uid: uid_of(&base),
                },
                base,
                path: Some(path),
            });
        }
        sizes.put(dir, kept);
        let md = Maildrop {
            dir: dir.to_path_buf(),
            msgs,
        };
        Ok((md, total))
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.msgs.iter().map(|m| m.entry.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Find every message again after another reader's changes; one no longer there is gone.
    fn rescan(&mut self) -> std::io::Result<()> {
        let now: HashMap<String, PathBuf> = scan(&self.dir)?.into_iter().collect();
        for m in &mut self.msgs {
            if m.path.is_some() {
                m.path = now.get(&m.base).cloned();
            }
        }
        Ok(())
    }

    /// Where message `i` is now (`None`: gone).
    fn path(&mut self, i: usize) -> std::io::Result<Option<PathBuf>> {
        let current = |m: &Msg| {
            m.path
                .as_ref()
                .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|md| md.is_file()))
                .cloned()
        };
        if let Some(p) = current(&self.msgs[i]) {
            return Ok(Some(p));
        }
        if self.msgs[i].path.is_none() {
            return Ok(None);
        }
        self.rescan()?;
        Ok(self.msgs[i].path.clone())
    }

    /// Open message `i` for RETR or TOP and, for RETR, mark it seen. `None`: it is gone.
    pub fn open(&mut self, i: usize, seen: bool) -> std::io::Result<Option<std::fs::File>> {
        for _ in 0..3 {
            let Some(path) = self.path(i)? else {
                return Ok(None);
            };
            let Some(f) = open_file(&path)? else {
                // Renamed or removed between the look and the open: look again.
                self.rescan()?;
                continue;
            };
            if seen {
                // The open file stays readable whatever happens to its name now; a flag that
                // cannot be set is no reason to withhold the message.
                if let Err(e) = self.mark_seen(i) {
                    tracing::warn!(event = "pop3_seen_failed", path = %path.display(), error = %e);
                }
            }
            return Ok(Some(f));
        }
        Ok(None)
    }

    /// `S` among message `i`'s flags, moving it to `cur/` if it is in `new/`.
    fn mark_seen(&mut self, i: usize) -> std::io::Result<()> {
        for _ in 0..3 {
            let Some(path) = self.path(i)? else {
                return Ok(());
            };
            let Some(target) = seen_name(&self.dir, &self.msgs[i].base, &path) else {
                return Ok(());
            };
            match std::fs::rename(&path, &target) {
                Ok(()) => {
                    self.msgs[i].path = Some(target);
                    return Ok(());
                }
                // Another reader renamed it first: look again.
                Err(e) if e.kind() == ErrorKind::NotFound => self.rescan()?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Remove the messages deleted in the session (QUIT); how many could not be. A message
    /// another reader removed already counts as removed.
    pub fn remove(&mut self, deleted: &[usize]) -> usize {
        deleted
            .iter()
            .filter(|&&i| self.remove_one(i).is_err())
            .count()
    }

    fn remove_one(&mut self, i: usize) -> std::io::Result<()> {
        for _ in 0..3 {
            let Some(path) = self.path(i)? else {
                return Ok(());
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    self.msgs[i].path = None;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::NotFound => self.rescan()?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The name `path` (message `base`) takes once seen: in `cur/`, with `S` among its flags in
/// order. `None` when it has that name already, or info that is not ours to rewrite.
fn seen_name(dir: &Path, base: &str, path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let in_cur = path.parent().is_some_and(|p| p.ends_with("cur"));
    let flags = match name.split_once(':') {
        None => "",
        // Experimental (`1,`) or unknown info: not ours to rewrite.
        Some((_, info)) => info.strip_prefix("2,")?,
    };
    if in_cur && flags.contains('S') {
        return None;
    }
    let mut f: Vec<char> = flags.chars().chain(['S']).collect();
    f.sort_unstable();
    f.dedup();
    let flags: String = f.into_iter().collect();
    Some(dir.join("cur").join(format!("{base}:2,{flags}")))
}

/// One POP3 session per mailbox (RFC 1939 §4: the maildrop is locked in the TRANSACTION
/// state), on this node.
#[derive(Default)]
pub struct Locks(Mutex<HashSet<String>>);

pub struct Lock<'a> {
    locks: &'a Locks,
    mailbox: String,
}

impl Locks {
    pub fn take(&self, mailbox: &str) -> Option<Lock<'_>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(mailbox.to_string()).then(|| Lock {
            locks: self,
            mailbox: mailbox.to_string(),
        })
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        self.locks
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, sub: &str, name: &str, body: &str) {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join(name), body).unwrap();
    }

    #[test]
    fn uids_are_base_names_or_their_hash() {
        assert_eq!(uid_of("1700000000.Q1_0.mx"), "1700000000.Q1_0.mx");
        let long = "x".repeat(71);
        let h = uid_of(&long);
        assert_eq!(h.len(), 33);
        assert_eq!(h, uid_of(&long));
        assert!(uid_of("a b").starts_with('h'));
    }

    #[test]
    fn the_inbox_is_listed_oldest_first_with_flags_and_moves_kept_apart_from_ids() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        put(d, "new", "200.b.host", "B: 1\n\nbody\n");
        put(d, "cur", "100.a.host:2,F", "A: 1\n\nx\n");
        put(d, "cur", ".hidden", "x");
        put(d, "tmp", "50.c.host", "in progress");
        std::os::unix::fs::symlink("/etc/passwd", d.join("cur/10.link.host:2,")).unwrap();
        let sizes = Sizes::default();
        let (mut m, total) = Maildrop::list(d, 10, &sizes).unwrap();
        assert_eq!(total, 2);
        let ids: Vec<_> = m.entries().into_iter().map(|e| e.uid).collect();
        assert_eq!(ids, ["100.a.host", "200.b.host"]);
        assert_eq!(m.entries()[1].size, 14);
        // Seen: new/ moves to cur/ with S; a flagged one keeps F, in order.
        assert!(m.open(1, true).unwrap().is_some());
        assert!(d.join("cur/200.b.host:2,S").exists());
        m.open(0, true).unwrap();
        assert!(d.join("cur/100.a.host:2,FS").exists());
        // Another reader renames both: one scan finds them again by their base names.
        std::fs::rename(
            d.join("cur/100.a.host:2,FS"),
            d.join("cur/100.a.host:2,FRS"),
        )
        .unwrap();
        std::fs::rename(d.join("cur/200.b.host:2,S"), d.join("cur/200.b.host:2,RS")).unwrap();
        assert!(m.open(0, false).unwrap().is_some());
        assert_eq!(
            m.msgs[1].path.as_deref(),
            Some(d.join("cur/200.b.host:2,RS").as_path())
        );
        // Removed at QUIT; one another reader removed first counts as removed.
        std::fs::remove_file(d.join("cur/200.b.host:2,RS")).unwrap();
        assert_eq!(m.remove(&[0, 1]), 0);
        assert!(!d.join("cur/100.a.host:2,FRS").exists());
        assert!(m.open(0, false).unwrap().is_none());
        assert!(m.open(1, false).unwrap().is_none());
        put(d, "new", "300.c.host", "C: 1\n\n");
        let (m, _) = Maildrop::list(d, 1, &sizes).unwrap();
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn one_session_per_mailbox() {
        let l = Locks::default();
        let a = l.take("a@x.test").unwrap();
        assert!(l.take("a@x.test").is_none());
        assert!(l.take("b@x.test").is_some());
        drop(a);
        assert!(l.take("a@x.test").is_some());
    }
}
