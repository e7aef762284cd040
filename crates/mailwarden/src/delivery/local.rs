//! Local delivery: takes durable messages from the queue and runs their local deliveries in
//! batches, then records every recipient's outcome.
//!
//! Batching is what keeps durable delivery cheap: everything that arrived while the previous
//! batch was busy goes together, so one directory fsync per mailbox and one store commit cover
//! the whole batch, and a few threads write the files. At most [`BATCHES_IN_FLIGHT`] batches
//! run at once; the next one grows meanwhile.
//!
//! Mailboxes are the Maildir tree, or an LMTP server (`delivery.lmtp`, `lmtp.rs`) that gives
//! each recipient its own answer. Mail for `reports.address` goes to the report parser
//! (`reports::inbound`) instead.
//!
//! A local delivery that fails (disk full, permissions, an LMTP `4xx`) leaves the recipient
//! `queued` and the message is tried again after a pause; an LMTP `5xx` fails the recipient.
//! Remote recipients wait for outbound delivery.

use super::lmtp::{Landed, Lmtp, Rcpt};
use super::maildir::{Job, Maildir, Prepared};
use crate::queue::{Body, Dispatch, Outcomes, Queue, RcptOutcome, Route, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Pause before a failed local delivery is tried again.
const LOCAL_RETRY: Duration = Duration::from_secs(30);
const MAX_BATCH: usize = 512;
const BATCHES_IN_FLIGHT: usize = 2;

/// Where local mail goes.
#[derive(Clone)]
pub enum Mailboxes {
    Maildir(Arc<Maildir>),
    Lmtp(Arc<Lmtp>),
}

pub fn spawn(
    queue: Arc<Queue>,
    mut rx: mpsc::UnboundedReceiver<Dispatch>,
    maildir: Mailboxes,
    threads: usize,
    reports: Option<Arc<crate::reports::inbound::Sink>>,
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
            let (queue, maildir, reports) = (queue.clone(), maildir.clone(), reports.clone());
            tokio::spawn(async move {
                run_batch(&queue, &maildir, batch, threads, reports.as_deref()).await;
                drop(permit);
            });
        }
    })
}

async fn run_batch(
    queue: &Arc<Queue>,
    maildir: &Mailboxes,
    batch: Vec<Dispatch>,
    threads: usize,
    reports: Option<&crate::reports::inbound::Sink>,
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
    // Still this node's? A message that waited past its lease (a retry after a long LMTP
    // outage, say) may be another node's now: renew each lease first, and leave the rest.
    let wanted: Vec<(String, Vec<u32>)> = ids
        .iter()
        .enumerate()
        .map(|(m, id)| {
            let idxs = jobs
                .iter()
                .zip(&owner)
                .filter(|(_, o)| **o == m)
                .map(|(j, _)| j.idx)
                .collect();
            (id.clone(), idxs)
        })
        .collect();
    let mine = match queue.renew(wanted).await {
        Ok(v) => v,
        Err(e) => {
            // Nothing is tried without its lease: the whole batch waits for the retry.
            tracing::error!(event = "lease_renew_failed", error = %e);
            Vec::new()
        }
    };
    let keep: Vec<bool> = jobs
        .iter()
        .zip(&owner)
        .map(|(j, m)| mine.get(*m).is_some_and(|(_, idxs)| idxs.contains(&j.idx)))
        .collect();
    if mine.is_empty() && !ids.is_empty() {
        retry.extend(ids.iter().cloned());
    }
    let mut k = keep.iter();
    jobs.retain(|_| *k.next().unwrap_or(&false));
    let mut k = keep.iter();
    owner.retain(|_| *k.next().unwrap_or(&false));
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
    // Mail for `reports.address` is parsed as a report, not put in a mailbox.
    let is_report: Vec<bool> = jobs
        .iter()
        .map(|j| reports.is_some_and(|s| j.mailbox == s.address))
        .collect();
    let (mut report_jobs, mut mail_jobs, mut mail_owner) = (Vec::new(), Vec::new(), Vec::new());
    for ((j, r), o) in jobs.into_iter().zip(&is_report).zip(&owner) {
        if *r {
            report_jobs.push(j);
        } else {
            mail_jobs.push(j);
            mail_owner.push(*o);
        }
    }
    let mail_results: Vec<Landed> = match maildir {
        Mailboxes::Maildir(m) => m
            .deliver_batch(mail_jobs, threads)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(()) => Landed::Delivered("delivered to Maildir".into()),
                Err(e) => Landed::Later(e.to_string()),
            })
            .collect(),
        Mailboxes::Lmtp(l) => over_lmtp(l, mail_jobs, &mail_owner, threads).await,
    };
    let mut report_results = Vec::new();
    if let Some(sink) = reports {
        for j in report_jobs {
            let id = j.prepared.message().id.clone();
            report_results.push(match j.prepared.crlf_bytes() {
                Ok(raw) => Landed::Delivered(sink.take(&id, raw).await),
                Err(e) => Landed::Later(e.to_string()),
            });
        }
    }
    let (mut mi, mut ri) = (mail_results.into_iter(), report_results.into_iter());
    let results: Vec<Landed> = is_report
        .iter()
        .map(|r| {
            if *r { ri.next() } else { mi.next() }
                .unwrap_or_else(|| Landed::Later("no outcome".into()))
        })
        .collect();
    let mut outcomes: Vec<(String, Vec<RcptOutcome>)> =
        ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    let mut failed = vec![false; ids.len()];
    for ((m, (idx, address, mailbox, folder)), r) in owner.into_iter().zip(described).zip(results) {
        let id = &ids[m];
        match r {
            Landed::Delivered(reply) => {
                tracing::info!(event = "delivered", qid = %id, rcpt = %address, mailbox = %mailbox, folder);
                outcomes[m].1.push((idx, Status::Delivered, Some(reply)));
            }
            Landed::Failed(reply) => {
                tracing::warn!(event = "local_delivery_refused", qid = %id, rcpt = %address, reply = %reply);
                outcomes[m].1.push((idx, Status::Failed, Some(reply)));
            }
            Landed::Later(e) => {
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

/// The batch's jobs over LMTP: one transaction per message, `threads` messages at once.
/// Outcomes come back in the jobs' order.
async fn over_lmtp(
    lmtp: &Arc<Lmtp>,
    jobs: Vec<Job>,
    owner: &[usize],
    threads: usize,
) -> Vec<Landed> {
    let n = jobs.len();
    // Each message with its recipients, and where each sits among the jobs.
    type Group = (Arc<Prepared>, Vec<(usize, Rcpt)>);
    let mut by_message: Vec<Group> = Vec::new();
    for (i, (job, m)) in jobs.into_iter().zip(owner).enumerate() {
        let rcpt = Rcpt {
            idx: job.idx,
            mailbox: job.mailbox,
            folder: job.folder,
        };
        match by_message.last_mut() {
            Some((_, v)) if owner[v[0].0] == *m => v.push((i, rcpt)),
            _ => by_message.push((job.prepared, vec![(i, rcpt)])),
        }
    }
    let slots = Arc::new(Semaphore::new(threads.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (prepared, rcpts) in by_message {
        let (lmtp, slots) = (lmtp.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let (at, rcpts): (Vec<usize>, Vec<Rcpt>) = rcpts.into_iter().unzip();
            let landed = lmtp.deliver(&prepared, &rcpts).await;
            // Back to job positions by recipient index.
            at.into_iter()
                .zip(&rcpts)
                .map(|(i, r)| {
                    let l = landed
                        .iter()
                        .find(|(idx, _)| *idx == r.idx)
                        .map(|(_, l)| l.clone())
                        .unwrap_or_else(|| Landed::Later("no LMTP answer".into()));
                    (i, l)
                })
                .collect::<Vec<_>>()
        });
    }
    let mut out = vec![Landed::Later("not attempted".into()); n];
    while let Some(r) = tasks.join_next().await {
        if let Ok(v) = r {
            for (i, l) in v {
                out[i] = l;
            }
        }
    }
    out
}
