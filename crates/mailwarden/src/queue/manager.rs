//! The queue manager: takes durable messages from the queue and runs their local deliveries,
//! a bounded number at a time, then records each recipient's outcome.
//!
//! A local delivery that fails (disk full, permissions) leaves the recipient `queued` and the
//! message is tried again after a pause. Remote recipients wait for outbound delivery.

use super::{Dispatch, Queue, Route, Status};
use crate::delivery::maildir::{Maildir, Prepared};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Pause before a failed local delivery is tried again.
const LOCAL_RETRY: Duration = Duration::from_secs(30);

pub fn spawn(
    queue: Arc<Queue>,
    mut rx: mpsc::UnboundedReceiver<Dispatch>,
    maildir: Arc<Maildir>,
    concurrency: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        while let Some(d) = rx.recv().await {
            let has_local = d
                .msg
                .rcpts
                .iter()
                .any(|r| matches!(r.route, Route::Local { .. }));
            if !has_local {
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (queue, maildir) = (queue.clone(), maildir.clone());
            tokio::spawn(async move {
                deliver_local(&queue, &maildir, d).await;
                drop(permit);
            });
        }
    })
}

async fn deliver_local(queue: &Arc<Queue>, maildir: &Arc<Maildir>, d: Dispatch) {
    let id = d.msg.id.clone();
    let prepared = Arc::new(Prepared::new(d.msg));
    let msg = prepared.message();
    let mut outcomes = Vec::new();
    let mut failed = false;
    for r in &msg.rcpts {
        let Route::Local { mailbox, folder } = &r.route else {
            continue;
        };
        match maildir
            .deliver(&prepared, r.idx, &r.address, mailbox, *folder, d.recovering)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    event = "delivered",
                    qid = %id,
                    rcpt = %r.address,
                    mailbox = %mailbox,
                    folder = folder.as_str(),
                );
                outcomes.push((
                    r.idx,
                    Status::Delivered,
                    Some("delivered to Maildir".to_string()),
                ));
            }
            Err(e) => {
                failed = true;
                tracing::error!(event = "local_delivery_failed", qid = %id, rcpt = %r.address, error = %e);
            }
        }
    }
    if !outcomes.is_empty()
        && let Err(e) = queue.record(&id, outcomes).await
    {
        // The files are in place; the next attempt finds them and records them then.
        tracing::error!(event = "queue_record_failed", qid = %id, error = %e);
        failed = true;
    }
    if failed {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LOCAL_RETRY).await;
            match queue.load(&id) {
                Ok(Some(m)) => queue.dispatch(m, true),
                Ok(None) => {}
                Err(e) => tracing::error!(event = "queue_unreadable", qid = %id, error = %e),
            }
        });
    }
}
