//! Local delivery: takes durable messages from the queue and runs their local deliveries in
//! batches, then records every recipient's outcome.
//!
//! Batching is what keeps durable delivery cheap: everything that arrived while the previous
//! batch was busy goes together, so one directory fsync per mailbox and one store commit cover
//! the whole batch, and a few threads write the files. At most [`BATCHES_IN_FLIGHT`] batches
//! run at once; the next one grows meanwhile.
//!
//! A local delivery that fails (disk full, permissions) leaves the recipient `queued` and the
//! message is tried again after a pause. Remote recipients wait for outbound delivery.

use super::maildir::{Job, Maildir, Prepared};
use crate::queue::{Body, Dispatch, Outcomes, Queue, RcptOutcome, Route, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Pause before a failed local delivery is tried again.
const LOCAL_RETRY: Duration = Duration::from_secs(30);
const MAX_BATCH: usize = 512;
const BATCHES_IN_FLIGHT: usize = 2;

pub fn spawn(
    queue: Arc<Queue>,
    mut rx: mpsc::UnboundedReceiver<Dispatch>,
    maildir: Arc<Maildir>,
    threads: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            // Wait for a free slot first, so the batch collects what arrives meanwhile.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            batch.retain(|d| {
                d.msg
                    .rcpts
                    .iter()
                    .any(|r| matches!(r.route, Route::Local { .. }))
            });
            if batch.is_empty() {
                continue;
            }
            let (queue, maildir) = (queue.clone(), maildir.clone());
            tokio::spawn(async move {
                run_batch(&queue, &maildir, batch, threads).await;
                drop(permit);
            });
        }
    })
}

async fn run_batch(
    queue: &Arc<Queue>,
    maildir: &Arc<Maildir>,
    batch: Vec<Dispatch>,
    threads: usize,
) {
    let mut jobs = Vec::new();
    // For each job: which message (index into `ids`) it belongs to.
    let mut owner = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    // How many recipients each message has in all, when known. A message reloaded after a
    // crash or failure carries only its still-queued recipients, so its total is unknown.
    let mut totals: Vec<Option<usize>> = Vec::new();
    let mut retry: Vec<String> = Vec::new();
    for d in &batch {
        let msg = match &d.msg.body {
            Body::Stored => match queue.load(&d.msg.id, true) {
                Ok(Some(m)) => Arc::new(m),
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(event = "queue_unreadable", qid = %d.msg.id, error = %e);
                    retry.push(d.msg.id.clone());
                    continue;
                }
            },
            _ => d.msg.clone(),
        };
        let Some(prepared) = Prepared::new(msg.clone()) else {
            retry.push(msg.id.clone());
            continue;
        };
        let prepared = Arc::new(prepared);
        ids.push(msg.id.clone());
        totals.push((!d.recovering).then_some(msg.rcpts.len()));
        for r in &msg.rcpts {
            if let Route::Local { mailbox, folder } = &r.route {
                owner.push(ids.len() - 1);
                jobs.push(Job {
                    prepared: prepared.clone(),
                    idx: r.idx,
                    address: r.address.clone(),
                    mailbox: mailbox.clone(),
                    folder: *folder,
                    recovering: d.recovering,
                });
            }
        }
    }
    let described: Vec<(u32, String, String, &'static str)> = jobs
        .iter()
        .map(|j| {
            (
                j.idx,
                j.address.clone(),
                j.mailbox.clone(),
                j.folder.as_str(),
            )
        })
        .collect();
    let results = maildir.deliver_batch(jobs, threads).await;
    let mut outcomes: Vec<(String, Vec<RcptOutcome>)> =
        ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    let mut failed = vec![false; ids.len()];
    for ((m, (idx, address, mailbox, folder)), r) in owner.into_iter().zip(described).zip(results) {
        let id = &ids[m];
        match r {
            Ok(()) => {
                tracing::info!(event = "delivered", qid = %id, rcpt = %address, mailbox = %mailbox, folder);
                outcomes[m].1.push((
                    idx,
                    Status::Delivered,
                    Some("delivered to Maildir".to_string()),
                ));
            }
            Err(e) => {
                tracing::error!(event = "local_delivery_failed", qid = %id, rcpt = %address, error = %e);
                failed[m] = true;
            }
        }
    }
    let per_message: Vec<Outcomes> = outcomes
        .into_iter()
        .zip(&totals)
        .filter(|((_, o), _)| !o.is_empty())
        .map(|((id, outcomes), total)| Outcomes {
            id,
            all_final: Some(outcomes.len()) == *total,
            outcomes,
        })
        .collect();
    if !per_message.is_empty()
        && let Err(e) = queue.record(per_message).await
    {
        // The files are in place; the next attempt finds them and records them then.
        tracing::error!(event = "queue_record_failed", error = %e);
        failed.iter_mut().for_each(|f| *f = true);
    }
    retry.extend(
        ids.into_iter()
            .zip(failed)
            .filter(|(_, f)| *f)
            .map(|(id, _)| id),
    );
    drop(batch);
    for id in retry {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LOCAL_RETRY).await;
            match queue.load(&id, false) {
                Ok(Some(m)) => queue.dispatch(m, true),
                Ok(None) => {}
                Err(e) => tracing::error!(event = "queue_unreadable", qid = %id, error = %e),
            }
        });
    }
}
