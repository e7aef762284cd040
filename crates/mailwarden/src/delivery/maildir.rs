//! Local delivery into Maildir (<https://cr.yp.to/proto/maildir.html>, Maildir++ folders).
//!
//! Layout: `{data_dir}/mail/{domain}/{localpart}/Maildir/{tmp,new,cur}`; the Junk folder is
//! `Maildir/.Junk/`. The message is written to `tmp/`, fsynced, renamed into `new/`, and the
//! directory is fsynced (grouped with other deliveries) before the queue records it delivered.
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
}

/// The message with LF line endings and its prepended headers, computed once per message.
pub struct Prepared {
    msg: Arc<Message>,
    content: Content,
}

enum Content {
    /// Prepended headers and body, already in LF form.
    Lf(Vec<u8>),
    /// Converted while copying, so a large message is never held in memory.
    Spool(PathBuf),
}

impl Prepared {
    pub fn new(msg: Arc<Message>) -> Prepared {
        let content = match &msg.body {
            Body::Inline(b) => {
                let mut out = Vec::with_capacity(msg.meta.prepend.len() + b.len());
                let mut cr = false;
                crlf_to_lf(msg.meta.prepend.as_bytes(), &mut out, &mut cr);
                crlf_to_lf(b, &mut out, &mut cr);
                if cr {
                    out.push(b'\r');
                }
                Content::Lf(out)
            }
            Body::Spooled(p) => Content::Spool(p.clone()),
        };
        Prepared { msg, content }
    }

    pub fn message(&self) -> &Message {
        &self.msg
    }
}

/// Convert CRLF to LF, streaming: a CR at the end of one call is held in `pending_cr`.
pub fn crlf_to_lf(input: &[u8], out: &mut Vec<u8>, pending_cr: &mut bool) {
    for &b in input {
        if *pending_cr {
            *pending_cr = false;
            if b == b'\n' {
                out.push(b'\n');
                continue;
            }
            out.push(b'\r');
        }
        if b == b'\r' {
            *pending_cr = true;
        } else {
            out.push(b);
        }
    }
}

impl Maildir {
    pub fn new(data_dir: &Path, hostname: &str, dirsync: DirSync) -> Maildir {
        // Maildir names must not contain '/' or ':' (the flag separator).
        let host = hostname.replace('/', "\\057").replace(':', "\\072");
        Maildir {
            root: data_dir.join("mail"),
            host,
            dirsync,
            ready: Mutex::new(HashSet::new()),
        }
    }

    /// The Maildir of `local@domain`, or its Junk folder.
    pub fn dir(&self, mailbox: &str, folder: Folder) -> PathBuf {
        let (local, domain) = mailbox.rsplit_once('@').unwrap_or((mailbox, "localhost"));
        let base = self.root.join(domain).join(local).join("Maildir");
        match folder {
            Folder::Inbox => base,
            Folder::Junk => base.join(".Junk"),
        }
    }

    fn file_name(&self, msg: &Message, idx: u32) -> String {
        format!("{}.{}_{}.{}", msg.created, msg.id, idx, self.host)
    }

    /// Deliver one recipient's copy durably. With `recovering`, first check whether an earlier
    /// attempt already landed.
    pub async fn deliver(
        self: &Arc<Self>,
        prepared: &Arc<Prepared>,
        idx: u32,
        address: &str,
        mailbox: &str,
        folder: Folder,
        recovering: bool,
    ) -> std::io::Result<()> {
        let dir = self.dir(mailbox, folder);
        let name = self.file_name(&prepared.msg, idx);
        let me = self.clone();
        let p = prepared.clone();
        let address = address.to_string();
        let d = dir.clone();
        let wrote = tokio::task::spawn_blocking(move || {
            me.ensure_dirs(&d, folder)?;
            if recovering && already_delivered(&d, &name)? {
                return Ok(false);
            }
            write_file(&d, &name, &p, &address)?;
            Ok::<bool, std::io::Error>(true)
        })
        .await
        .map_err(std::io::Error::other)??;
        if wrote {
            self.dirsync.sync(dir.join("new")).await?;
        }
        Ok(())
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

fn write_file(dir: &Path, name: &str, p: &Prepared, address: &str) -> std::io::Result<()> {
    let tmp = dir.join("tmp").join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let msg = &p.msg;
    let head = format!(
        "Return-Path: <{}>\nDelivered-To: {}\n",
        msg.sender,
        address.replace(['\r', '\n'], "")
    );
    match &p.content {
        Content::Lf(lf) => {
            let mut all = Vec::with_capacity(head.len() + lf.len());
            all.extend_from_slice(head.as_bytes());
            all.extend_from_slice(lf);
            f.write_all(&all)?;
        }
        Content::Spool(path) => {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut f);
            w.write_all(head.as_bytes())?;
            let mut cr = false;
            let mut out = Vec::with_capacity(64 * 1024);
            crlf_to_lf(msg.meta.prepend.as_bytes(), &mut out, &mut cr);
            let mut src = std::fs::File::open(path)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                crlf_to_lf(&buf[..n], &mut out, &mut cr);
                w.write_all(&out)?;
                out.clear();
            }
            if cr {
                out.push(b'\r');
            }
            w.write_all(&out)?;
            w.flush()?;
        }
    }
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("new").join(name))
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
}
