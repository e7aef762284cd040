//! Local delivery into Maildir (<https://cr.yp.to/proto/maildir.html>, Maildir++ folders).
//!
//! Layout: `{data_dir}/mail/{domain}/{localpart}/Maildir/{tmp,new,cur}`; the Junk folder is
//! `Maildir/.Junk/`. The message is written to an unnamed file (`O_TMPFILE`), fsynced, then
//! linked into `new/` under its final name, and the directory is fsynced (grouped with other
//! deliveries) before the queue records it delivered. Readers never see a partial file, as
//! with the classic `tmp/` + rename, but it costs one directory operation instead of two:
//! directory locks and inode allocation are most of the CPU of local delivery. Where
//! `O_TMPFILE` is not supported, the classic `tmp/` + rename is used.
//!
//! Exactly once: the file name is derived from the queue id and recipient index, never from
//! the clock. After a crash, a delivery that may already have happened looks for that name in
//! `new/` and `cur/` first, so a message is neither lost nor delivered twice.
//!
//! Files use LF line endings, as Maildir readers expect, and start with `Return-Path` and
//! `Delivered-To` (RFC 5321 §4.4).

use crate::fsync::DirSync;
use crate::queue::{Body, Folder, Message};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct Maildir {
    root: PathBuf,
    host: String,
    dirsync: DirSync,
    ready: Mutex<HashSet<PathBuf>>,
    sync: MaildirSync,
}

pub use crate::config::MaildirSync;

/// Where a copy is in its delivery.
enum Step {
    /// Written, not yet durable or visible (filesystem mode).
    Staged(Staged, PathBuf),
    /// Durable and linked into this `new/` directory, which still needs its fsync.
    Visible(PathBuf),
    /// An earlier attempt already delivered it.
    AlreadyThere,
}

/// Filesystem mode: one `syncfs` per filesystem for all staged copies, then publish them.
fn sync_and_publish(steps: Vec<std::io::Result<Step>>) -> Vec<std::io::Result<Step>> {
    use std::os::unix::fs::MetadataExt;
    let mut synced: Vec<(u64, Result<(), String>)> = Vec::new();
    steps
        .into_iter()
        .map(|r| {
            let (staged, new) = match r? {
                Step::Staged(staged, new) => (staged, new),
                other => return Ok(other),
            };
            let dev = staged.file.metadata()?.dev();
            if !synced.iter().any(|(d, _)| *d == dev) {
                let res = rustix::fs::syncfs(&staged.file).map_err(|e| e.to_string());
                synced.push((dev, res));
            }
            if let Some((_, Err(e))) = synced.iter().find(|(d, _)| *d == dev) {
                return Err(std::io::Error::other(e.clone()));
            }
            publish(staged)?;
            Ok(Step::Visible(new))
        })
        .collect()
}

/// One recipient's copy of a message.
pub struct Job {
    pub prepared: Arc<Prepared>,
    pub idx: u32,
    pub address: String,
    pub mailbox: String,
    pub folder: Folder,
    /// It may have landed before a crash: look for it first.
    pub recovering: bool,
}

/// A message ready for delivery: its body at hand (in memory or in a spool file). Line
/// endings are converted to LF while each copy is written, so no second copy of the message is
/// held in memory.
pub struct Prepared {
    msg: Arc<Message>,
    content: Content,
}

enum Content {
    Inline(Arc<Vec<u8>>),
    Spool(PathBuf),
}

impl Prepared {
    /// `None` when the body is not at hand ([`Body::Stored`]): load it first.
    pub fn new(msg: Arc<Message>) -> Option<Prepared> {
        let content = match &msg.body {
            Body::Inline(b) => Content::Inline(b.clone()),
            Body::Spooled(p) => Content::Spool(p.clone()),
            Body::Stored => return None,
        };
        Some(Prepared { msg, content })
    }

    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// The message as it is delivered, with CRLF line endings as it was received: the
    /// prepended fields, then the body (read from its spool file if it has one). For LMTP.
    pub fn crlf_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut out = self.msg.meta.prepend.as_bytes().to_vec();
        match &self.content {
            Content::Inline(b) => out.extend_from_slice(b),
            Content::Spool(p) => out.extend(std::fs::read(p)?),
        }
        Ok(out)
    }
}

/// Convert CRLF to LF, streaming: a CR at the end of one call is held in `pending_cr`.
/// Copies the runs between CRs whole: this runs over every delivered byte.
pub fn crlf_to_lf(mut input: &[u8], out: &mut Vec<u8>, pending_cr: &mut bool) {
    out.reserve(input.len() + 1);
    if *pending_cr && !input.is_empty() {
        *pending_cr = false;
        if input[0] == b'\n' {
            out.push(b'\n');
            input = &input[1..];
        } else {
            out.push(b'\r');
        }
    }
    while let Some(i) = memchr::memchr(b'\r', input) {
        out.extend_from_slice(&input[..i]);
        match input.get(i + 1) {
            None => {
                *pending_cr = true;
                return;
            }
            Some(b'\n') => {
                out.push(b'\n');
                input = &input[i + 2..];
            }
            Some(_) => {
                out.push(b'\r');
                input = &input[i + 1..];
            }
        }
    }
    out.extend_from_slice(input);
}

/// The inbox Maildir of `local@domain` under `root` (`{data_dir}/mail`).
pub fn mailbox_dir(root: &Path, mailbox: &str) -> PathBuf {
    let (local, domain) = mailbox.rsplit_once('@').unwrap_or((mailbox, "localhost"));
    root.join(domain).join(local).join("Maildir")
}

impl Maildir {
    pub fn new(data_dir: &Path, hostname: &str, dirsync: DirSync, sync: MaildirSync) -> Maildir {
        // Maildir names must not contain '/' or ':' (the flag separator).
        let host = hostname.replace('/', "\\057").replace(':', "\\072");
        Maildir {
            root: data_dir.join("mail"),
            host,
            dirsync,
            ready: Mutex::new(HashSet::new()),
            sync,
        }
    }

    /// The Maildir of `local@domain`, or its Junk folder.
    pub fn dir(&self, mailbox: &str, folder: Folder) -> PathBuf {
        let base = mailbox_dir(&self.root, mailbox);
        match folder {
            Folder::Inbox => base,
            Folder::Junk => base.join(".Junk"),
        }
    }

    fn file_name(&self, msg: &Message, idx: u32) -> String {
        format!("{}.{}_{}.{}", msg.created, msg.id, idx, self.host)
    }

    /// Deliver a batch of copies durably; results come back in the order of `jobs`.
    ///
    /// Files are written on up to `threads` blocking threads. With [`MaildirSync::File`] each
    /// is fsynced, then linked into `new/`. With [`MaildirSync::Filesystem`] all are written,
    /// one `syncfs` per filesystem makes them durable together, then all are linked. Either way
    /// a copy is durable before it is visible, and each `new/` directory touched is fsynced
    /// once for the whole batch before the caller records anything as delivered.
    pub async fn deliver_batch(
        self: &Arc<Self>,
        jobs: Vec<Job>,
        threads: usize,
    ) -> Vec<std::io::Result<()>> {
        let n = jobs.len();
        let jobs = Arc::new(jobs);
        let per = n.div_ceil(threads.max(1)).max(1);
        let mode = self.sync;
        let run_chunks = |f: fn(&Maildir, &Job, MaildirSync) -> std::io::Result<Step>| {
            let mut handles = Vec::new();
            for start in (0..n).step_by(per) {
                let (me, jobs) = (self.clone(), jobs.clone());
                handles.push(tokio::task::spawn_blocking(move || {
                    jobs[start..(start + per).min(jobs.len())]
                        .iter()
                        .map(|j| f(&me, j, mode))
                        .collect::<Vec<_>>()
                }));
            }
            handles
        };
        let mut steps: Vec<std::io::Result<Step>> = Vec::with_capacity(n);
        for (i, h) in run_chunks(Maildir::write_one).into_iter().enumerate() {
            match h.await {
                Ok(rs) => steps.extend(rs),
                Err(e) => {
                    let len = per.min(n - i * per);
                    steps.extend((0..len).map(|_| Err(std::io::Error::other(e.to_string()))));
                }
            }
        }
        if mode == MaildirSync::Filesystem {
            steps = tokio::task::spawn_blocking(move || sync_and_publish(steps))
                .await
                .unwrap_or_else(|e| {
                    (0..n)
                        .map(|_| Err(std::io::Error::other(e.to_string())))
                        .collect()
                });
        }
        let mut dirs: Vec<PathBuf> = steps
            .iter()
            .filter_map(|r| match r {
                Ok(Step::Visible(d)) => Some(d.clone()),
                _ => None,
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        let results = self.dirsync.sync_many(dirs.clone()).await;
        let synced: Vec<(PathBuf, Result<(), String>)> = dirs
            .into_iter()
            .zip(results)
            .map(|(d, r)| (d, r.map_err(|e| e.to_string())))
            .collect();
        steps
            .into_iter()
            .map(|r| match r? {
                Step::AlreadyThere => Ok(()),
                Step::Staged(..) => Err(std::io::Error::other("copy was never published")),
                Step::Visible(d) => match synced.iter().find(|(p, _)| *p == d) {
                    Some((_, Err(e))) => Err(std::io::Error::other(e.clone())),
                    _ => Ok(()),
                },
            })
            .collect()
    }

    /// Write one copy; in file mode also fsync and publish it.
    fn write_one(&self, j: &Job, mode: MaildirSync) -> std::io::Result<Step> {
        let dir = self.dir(&j.mailbox, j.folder);
        let name = self.file_name(j.prepared.message(), j.idx);
        self.ensure_dirs(&dir, j.folder)?;
        if j.recovering && already_delivered(&dir, &name)? {
            return Ok(Step::AlreadyThere);
        }
        let staged = match stage(&dir, &name, &j.prepared, &j.address) {
            // Someone removed the mailbox directories since we made them: make them again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&dir);
                self.ensure_dirs(&dir, j.folder)?;
                stage(&dir, &name, &j.prepared, &j.address)?
            }
            r => r?,
        };
        let new = dir.join("new");
        match mode {
            MaildirSync::Filesystem => Ok(Step::Staged(staged, new)),
            MaildirSync::File => {
                staged.file.sync_all()?;
                publish(staged)?;
                Ok(Step::Visible(new))
            }
        }
    }

    fn ensure_dirs(&self, dir: &Path, folder: Folder) -> std::io::Result<()> {
        if self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(dir)
        {
            return Ok(());
        }
        let existed = dir.join("new").is_dir();
        for sub in ["tmp", "new", "cur"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))?;
        }
        if folder == Folder::Junk {
            let marker = dir.join("maildirfolder");
            if !marker.exists() {
                std::fs::File::create(marker)?;
            }
        }
        if !existed {
            // New directories must be durable before mail is recorded as delivered into them.
            let mut p = dir.to_path_buf();
            for _ in 0..5 {
                std::fs::File::open(&p)?.sync_all()?;
                if !p.pop() || p == self.root {
                    break;
                }
            }
        }
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_path_buf());
        Ok(())
    }
}

fn already_delivered(dir: &Path, name: &str) -> std::io::Result<bool> {
    if dir.join("new").join(name).exists() {
        return Ok(true);
    }
    // A reader may have moved it to cur/ and added flags (`name:2,S`).
    let prefix = format!("{name}:");
    for entry in std::fs::read_dir(dir.join("cur"))? {
        let n = entry?.file_name();
        let n = n.to_string_lossy();
        if n == name || n.starts_with(&prefix) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A written, not yet visible copy.
struct Staged {
    file: std::fs::File,
    /// `Some` when `O_TMPFILE` was not available and the file sits in `tmp/`.
    tmp: Option<PathBuf>,
    target: PathBuf,
}

/// Write a copy where readers cannot see it yet.
fn stage(dir: &Path, name: &str, p: &Prepared, address: &str) -> std::io::Result<Staged> {
    let target = dir.join("new").join(name);
    let (mut file, tmp) = match open_unnamed(&dir.join("new")) {
        Ok(f) => (f, None),
        Err(_) => {
            let tmp = dir.join("tmp").join(name);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            (f, Some(tmp))
        }
    };
    write_content(&mut file, p, address)?;
    Ok(Staged { file, tmp, target })
}

/// Make a durable copy visible under its final name in `new/`.
fn publish(s: Staged) -> std::io::Result<()> {
    if let Some(tmp) = s.tmp {
        return std::fs::rename(tmp, s.target);
    }
    // Link the unnamed file. Through /proc/self/fd this needs no privilege (AT_EMPTY_PATH
    // would need CAP_DAC_READ_SEARCH).
    let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&s.file));
    match rustix::fs::linkat(
        rustix::fs::CWD,
        fd_path.as_str(),
        rustix::fs::CWD,
        &s.target,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    ) {
        // The name is ours alone (queue id + recipient): an earlier attempt of this very
        // delivery already linked a complete, durable copy.
        Err(rustix::io::Errno::EXIST) => Ok(()),
        r => r.map_err(Into::into),
    }
}

fn open_unnamed(dir: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

fn write_content(f: &mut std::fs::File, p: &Prepared, address: &str) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let msg = &p.msg;
    let mut w = std::io::BufWriter::with_capacity(CHUNK, f);
    write!(
        w,
        "Return-Path: <{}>\nDelivered-To: {}\n",
        msg.sender,
        address.replace(['\r', '\n'], "")
    )?;
    let mut cr = false;
    let mut out = Vec::with_capacity(CHUNK + 1);
    let mut put = |w: &mut std::io::BufWriter<&mut std::fs::File>, data: &[u8], cr: &mut bool| {
        out.clear();
        crlf_to_lf(data, &mut out, cr);
        w.write_all(&out)
    };
    put(&mut w, msg.meta.prepend.as_bytes(), &mut cr)?;
    match &p.content {
        Content::Inline(body) => {
            for chunk in body.chunks(CHUNK) {
                put(&mut w, chunk, &mut cr)?;
            }
        }
        Content::Spool(path) => {
            let mut src = std::fs::File::open(path)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                put(&mut w, &buf[..n], &mut cr)?;
            }
        }
    }
    if cr {
        w.write_all(b"\r")?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_conversion_streams_across_chunks() {
        let mut out = Vec::new();
        let mut cr = false;
        crlf_to_lf(b"a\r", &mut out, &mut cr);
        crlf_to_lf(b"\nb\rc\r\n", &mut out, &mut cr);
        assert_eq!(out, b"a\nb\rc\n");
        assert!(!cr);
    }

    #[test]
    fn lf_conversion_is_the_same_at_every_split() {
        // Every CRLF becomes LF; a lone CR stays, also when it ends the input.
        let reference = |input: &[u8]| {
            let mut out = Vec::new();
            let mut i = 0;
            while i < input.len() {
                if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') {
                    out.push(b'\n');
                    i += 2;
                } else {
                    out.push(input[i]);
                    i += 1;
                }
            }
            out
        };
        let inputs: [&[u8]; 6] = [
            b"plain",
            b"a\r\nb\r\n",
            b"\r\r\n\r",
            b"x\ry\n\r\n\r\r",
            b"\r",
            b"",
        ];
        for input in inputs {
            for split in 0..=input.len() {
                for split2 in split..=input.len() {
                    let mut out = Vec::new();
                    let mut cr = false;
                    crlf_to_lf(&input[..split], &mut out, &mut cr);
                    crlf_to_lf(&input[split..split2], &mut out, &mut cr);
                    crlf_to_lf(&input[split2..], &mut out, &mut cr);
                    if cr {
                        out.push(b'\r');
                    }
                    assert_eq!(
                        out,
                        reference(input),
                        "{input:?} split at {split}, {split2}"
                    );
                }
            }
        }
    }
}
