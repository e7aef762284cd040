//! Grouped directory fsync. A rename or a new file is durable only once its directory is
//! fsynced; under load many deliveries land in the same directories, so requests that arrive
//! while an fsync runs are served together by the next one (each request is covered by an fsync
//! that started after it was made).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::sync::oneshot;

type Request = (PathBuf, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct DirSync {
    tx: mpsc::Sender<Request>,
}

impl DirSync {
    pub fn start() -> DirSync {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("dir-fsync".into())
            .spawn(move || run(rx))
            .expect("spawn dir-fsync thread");
        DirSync { tx }
    }

    /// fsync several directories (in one round when the thread is free); one result each.
    pub async fn sync_many(&self, dirs: Vec<PathBuf>) -> Vec<std::io::Result<()>> {
        let mut rxs = Vec::with_capacity(dirs.len());
        for d in dirs {
            let (tx, rx) = oneshot::channel();
            rxs.push(self.tx.send((d, tx)).ok().map(|_| rx));
        }
        let mut out = Vec::with_capacity(rxs.len());
        for rx in rxs {
            out.push(match rx {
                Some(rx) => rx
                    .await
                    .map_err(|_| std::io::Error::other("dir-fsync thread stopped"))
                    .and_then(|r| r.map_err(std::io::Error::other)),
                None => Err(std::io::Error::other("dir-fsync thread stopped")),
            });
        }
        out
    }

    /// Resolve once `dir` has been fsynced after this call.
    pub async fn sync(&self, dir: PathBuf) -> std::io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((dir, tx))
            .map_err(|_| std::io::Error::other("dir-fsync thread stopped"))?;
        rx.await
            .map_err(|_| std::io::Error::other("dir-fsync thread stopped"))?
            .map_err(std::io::Error::other)
    }
}

fn run(rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut waiting: HashMap<PathBuf, Vec<oneshot::Sender<Result<(), String>>>> =
            HashMap::new();
        waiting.entry(first.0).or_default().push(first.1);
        while let Ok((p, tx)) = rx.try_recv() {
            waiting.entry(p).or_default().push(tx);
        }
        let dirs: Vec<_> = waiting.into_iter().collect();
        // Distinct directories are synced in parallel; the journal merges their commits.
        let chunks: Vec<_> = dirs.chunks(dirs.len().div_ceil(8).max(1)).collect();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|&chunk| {
                    s.spawn(move || chunk.iter().map(|(p, _)| sync_dir(p)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .zip(&chunks)
                .flat_map(|(h, chunk)| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err("fsync thread panicked".to_string()); chunk.len()]
                    })
                })
                .collect()
        });
        for ((_, txs), r) in dirs.into_iter().zip(results) {
            for tx in txs {
                let _ = tx.send(r.clone());
            }
        }
    }
}

fn sync_dir(p: &std::path::Path) -> Result<(), String> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync {}: {e}", p.display()))
}

/// fsync a file's data and metadata, off the async runtime.
pub async fn sync_file(file: std::fs::File) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(std::io::Error::other)?
}
