//! Building a session's decision records (see `crate::records`): a record opens at MAIL FROM,
//! collects each RCPT's reply and any refusal's reasons, takes the message's verdict at the
//! end of DATA, and is saved when the transaction ends: after DATA, at the next MAIL, or when
//! the session ends (RSET or QUIT before DATA).

use super::Shared;
use super::message::Early;
use super::screen::Screen;
use crate::records::{self, Rcpt, Reason, Record};
use crate::screening::Signal;
use crate::util::unix_now;
use mailwarden_proto::Reply;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct Recorder {
    cur: Option<Record>,
    /// The last refusal's reply, for a transaction that never reached DATA.
    last_refusal: Option<Reply>,
    /// A message was decided in this transaction.
    decided: bool,
}

impl Recorder {
    /// A new transaction (MAIL FROM). Returns the previous one's record, if any, to save.
    pub(super) fn start(&mut self, base: Record) -> Option<Record> {
        let prev = self.take();
        self.cur = Some(base);
        prev
    }

    /// A refused MAIL FROM or RCPT TO, with what refused it.
    pub(super) fn refused(&mut self, rcpt: Option<&str>, reply: &Reply, why: Reason) {
        let Some(r) = self.cur.as_mut() else { return };
        if let Some(a) = rcpt {
            r.rcpts.push(Rcpt {
                address: a.to_string(),
                reply: reply.to_string(),
            });
        }
        // After DATA's verdict the message's own reasons say it all.
        if !self.decided && !r.reasons.iter().any(|x| x.code == why.code) {
            r.reasons.push(why);
        }
        self.last_refusal = Some(reply.clone());
    }

    pub(super) fn accepted_rcpt(&mut self, rcpt: &str, reply: &Reply) {
        if let Some(r) = self.cur.as_mut() {
            r.rcpts.push(Rcpt {
                address: rcpt.to_string(),
                reply: reply.to_string(),
            });
        }
    }

    /// The end of DATA: the message's verdict and the reply that carried it.
    pub(super) fn message(&mut self, reply: &Reply, d: MessageDecision) {
        let Some(r) = self.cur.as_mut() else { return };
        r.message_id = d.message_id;
        r.subject = d.subject;
        r.reasons.extend(d.reasons);
        r.action = if reply.is_positive() {
            if d.quarantined {
                "quarantine"
            } else if d.junk {
                "junk"
            } else {
                "accept"
            }
        } else if reply.is_transient() {
            "tempfail"
        } else {
            "reject"
        }
        .to_string();
        r.reply = reply.to_string();
        self.decided = true;
    }

    /// The session broke off (a bug): the open transaction's record, or a new one from
    /// `base` when none was open, ends with `reply` for `why`.
    pub(super) fn abort(
        &mut self,
        reply: &Reply,
        why: Reason,
        base: impl FnOnce() -> Record,
    ) -> Record {
        let mut r = self.cur.take().unwrap_or_else(base);
        r.reasons.push(why);
        r.action = "tempfail".into();
        r.reply = reply.to_string();
        self.decided = false;
        self.last_refusal = None;
        r
    }

    /// End the transaction: its record, ready to save.
    pub(super) fn take(&mut self) -> Option<Record> {
        let mut r = self.cur.take()?;
        if !std::mem::take(&mut self.decided) {
            (r.action, r.reply) = match self.last_refusal.take() {
                Some(reply) if reply.is_transient() => ("tempfail".into(), reply.to_string()),
                Some(reply) => ("reject".into(), reply.to_string()),
                None => ("abandoned".into(), String::new()),
            };
        }
        self.last_refusal = None;
        Some(r)
    }
}

/// What the end of DATA found, for the record.
#[derive(Default)]
pub(super) struct MessageDecision {
    pub(super) junk: bool,
    pub(super) quarantined: bool,
    pub(super) reasons: Vec<Reason>,
    pub(super) message_id: Option<String>,
    pub(super) subject: Option<String>,
}

/// Save a finished record in the background (the client's reply does not wait for it), with
/// the session's screening signals and the client's PTR name.
pub(super) fn spawn_save(shared: &Arc<Shared>, r: Record, screen: Option<&Screen>, early: &Early) {
    if r.action == "abandoned"
        && let Ok(ip) = r.ip.parse()
        && !shared.contain.detector.keep_abandoned_record(ip)
    {
        metrics::counter!("mailwarden_records_not_kept_total").increment(1);
        return;
    }
    let signals = screen.map(|s| s.signals.clone()).unwrap_or_default();
    let ptr = early
        .iprev_done
        .as_ref()
        .and_then(|o| o.ptr.as_ref())
        .and_then(|p| p.first())
        .map(|n| n.trim_end_matches('.').to_string());
    let shared = shared.clone();
    tokio::spawn(async move { save(&shared, r, &signals, ptr).await });
}

async fn save(shared: &Shared, mut r: Record, signals: &[Signal], ptr: Option<String>) {
    for s in signals {
        if !r.reasons.iter().any(|x| x.code == s.reason.as_str()) {
            r.reasons.push(Reason::from(s));
        }
    }
    r.score = r.reasons.iter().map(|x| x.score).sum();
    r.ptr = ptr;
    r.time = unix_now();
    let retention = shared.config.records.retention.get().as_secs() as i64;
    let id = r.id.clone();
    if let Err(e) = records::save(shared.accounts.store(), r, retention).await {
        tracing::error!(event = "record_failed", qid = %id, error = %e);
    }
}
