//! A message's content as it arrives: in memory up to `queue.inline_max`, then in a spool
//! file that lives no longer than its transaction.
//!
//! Security: what a client sends is held once; past the inline limit it is written out in
//! 64 KiB steps from the same buffer, so a session receiving a large message holds little
//! more than that. The spool file is removed by its owner's drop, whatever ends the
//! transaction, unless the queue took it.

use crate::queue::Body;
use std::path::PathBuf;
use std::sync::Arc;

/// Message content as it arrives: in memory up to `queue.inline_max`, then in a spool file.
pub(super) struct BodySink {
    pub(super) buf: Vec<u8>,
    inline_max: usize,
    spool: Option<SpoolFile>,
}

/// A spool file that lives no longer than its transaction: dropping it removes the file,
/// whatever ends the transaction (RSET, QUIT, a timeout, a broken TLS handshake, a panic),
/// unless the queue took it ([`BodySink::committed`]).
struct SpoolFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    kept: bool,
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bytes a spilling body gathers before each write: one read's worth or so. Written from the
/// buffer itself on the blocking pool (no copy into a second buffer), so a session receiving
/// a large message holds little more than this.
const SPILL_CHUNK: usize = 64 * 1024;

impl BodySink {
    pub(super) fn new(inline_max: usize) -> BodySink {
        BodySink {
            buf: Vec::new(),
            inline_max,
            spool: None,
        }
    }

    pub(super) async fn spill_if_large(
        &mut self,
        path: impl FnOnce() -> PathBuf,
    ) -> std::io::Result<()> {
        let threshold = if self.spool.is_none() {
            self.inline_max
        } else {
            SPILL_CHUNK
        };
        if self.buf.len() <= threshold {
            return Ok(());
        }
        if self.spool.is_none() {
            let p = path();
            // Owned before it exists, so a failure below still removes what was created.
            let spool = self.spool.insert(SpoolFile {
                path: p.clone(),
                file: None,
                kept: false,
            });
            spool.file = Some(
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&p)
                })
                .await
                .map_err(std::io::Error::other)??,
            );
        }
        self.write_out().await
    }

    /// Write what the buffer holds to the spool file; the buffer comes back empty, at most
    /// a chunk's capacity kept.
    async fn write_out(&mut self) -> std::io::Result<()> {
        let Some(spool) = self.spool.as_mut() else {
            return Ok(());
        };
        // Gone only after an earlier write failed: what the buffer held then is lost, so the
        // message must not be accepted as if whole.
        let Some(mut f) = spool.file.take() else {
            return Err(std::io::Error::other(
                "spool file lost to an earlier write error",
            ));
        };
        let buf = std::mem::take(&mut self.buf);
        let (f, mut buf, written) = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let r = f.write_all(&buf);
            (f, buf, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        written?;
        buf.clear();
        buf.shrink_to(2 * SPILL_CHUNK);
        self.buf = buf;
        if let Some(s) = self.spool.as_mut() {
            s.file = Some(f);
        }
        Ok(())
    }

    /// Finish the body: write out and close a spool file, or hand over the memory. The spool
    /// file stays owned here until [`BodySink::committed`].
    pub(super) async fn finish(&mut self) -> std::io::Result<Body> {
        if self.spool.is_some() {
            self.write_out().await?;
            self.buf = Vec::new();
            if let Some(spool) = self.spool.as_mut() {
                // Closed now; the queue fsyncs it before the commit.
                spool.file = None;
                return Ok(Body::Spooled(spool.path.clone()));
            }
        }
        Ok(Body::Inline(Arc::new(std::mem::take(&mut self.buf))))
    }

    /// The queue owns the spool file now.
    pub(super) fn committed(&mut self) {
        if let Some(mut s) = self.spool.take() {
            s.kept = true;
        }
    }

    /// Drop whatever an unfinished or refused transaction left behind.
    pub(super) fn discard(&mut self) {
        self.buf = Vec::new();
        self.spool = None;
    }
}
