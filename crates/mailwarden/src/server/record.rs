//! Building a session's decision records (see `crate::records`): a record opens at MAIL FROM,
//! collects each RCPT's reply and any refusal's reasons, takes the message's verdict at the
//! end of DATA, and is saved when the transaction ends: after DATA, at the next MAIL, or when
//! the session ends (RSET or QUIT before DATA). Screening's findings join it at the first RCPT
//! (and any found later, when the transaction ends), so it reads in the order `explain`
//! prints: the client first, then the message.

use super::shared::Shared;
use crate::records::{self, Rcpt, Reason, Record};
use mailwarden_proto::Reply;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct Recorder {
    cur: Option<Record>,
    /// The last refusal's reply, for a transaction that never reached DATA.
    last_refusal: Option<Reply>,
    /// A message was decided in this transaction.
    decided: bool,
    /// The version of screening's findings this transaction's record holds.
    screen_noted: Option<u64>,
}

impl Recorder {
    /// A new transaction (MAIL FROM), once the previous one was taken.
    pub(super) fn start(&mut self, base: Record) {
        debug_assert!(self.cur.is_none(), "the previous transaction was not taken");
        self.cur = Some(base);
        self.decided = false;
        self.last_refusal = None;
        self.screen_noted = None;
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
        // After DATA's verdict the message's own reasons say it all. A finding the record
        // holds already (screening's, noted at RCPT) is marked as the one that decided.
        if !self.decided {
            match r.reasons.iter_mut().find(|x| x.code == why.code) {
                Some(x) => x.deciding |= why.deciding,
                None => r.reasons.push(why),
            }
        }
        self.last_refusal = Some(reply.clone());
    }

    /// Findings of the session that belong to this transaction too (screening's); each
    /// once. `score`: the score a refusal among them was decided on.
    pub(super) fn note(&mut self, reasons: Vec<Reason>, score: Option<f64>) {
        let Some(r) = self.cur.as_mut() else { return };
        for why in reasons {
            if !r
                .reasons
                .iter()
                .any(|x| x.code == why.code && x.detail == why.detail)
            {
                r.reasons.push(why);
            }
        }
        if let Some(s) = score {
            r.score = s;
        }
    }

    /// Screening's findings at `version`, unless the record holds them already: computed
    /// only then. Without `deciding` (the transaction is over), they join as evidence only.
    pub(super) fn note_screen(
        &mut self,
        version: u64,
        deciding: bool,
        reasons: impl FnOnce() -> (Vec<Reason>, Option<f64>),
    ) {
        if self.cur.is_none() || self.screen_noted == Some(version) {
            return;
        }
        self.screen_noted = Some(version);
        let (mut reasons, score) = reasons();
        if !deciding {
            reasons.iter_mut().for_each(|r| r.deciding = false);
        }
        self.note(reasons, score.filter(|_| deciding));
    }

    /// A finding of one recipient (greylisting), kept once per transaction by its code, as
    /// records always kept it. Returns whether it was new to the record.
    pub(super) fn note_first(&mut self, why: Reason) -> bool {
        let Some(r) = self.cur.as_mut() else {
            return false;
        };
        if r.reasons.iter().any(|x| x.code == why.code) {
            return false;
        }
        r.reasons.push(why);
        true
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
        if d.score.is_some() {
            r.score = d.score.unwrap_or_default();
        }
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
    /// The score the message's verdict was taken on, if scoring ran.
    pub(super) score: Option<f64>,
    pub(super) message_id: Option<String>,
    pub(super) subject: Option<String>,
}

/// Save a finished record in the background (the client's reply does not wait for it), with
/// the client's PTR name.
pub(super) fn spawn_save(shared: &Arc<Shared>, mut r: Record, ptr: Option<String>) {
    if r.action == "abandoned"
        && let Ok(ip) = r.ip.parse()
        && !shared.contain.detector.keep_abandoned_record(ip)
    {
        metrics::counter!("mailwarden_records_not_kept_total").increment(1);
        return;
    }
    r.ptr = ptr;
    r.time = shared.clock.now_secs();
    let shared = shared.clone();
    tokio::spawn(async move {
        let retention = shared.config.records.retention.get().as_secs() as i64;
        let id = r.id.clone();
        if let Err(e) = records::save(shared.accounts.store(), r, retention).await {
            tracing::error!(event = "record_failed", qid = %id, error = %e);
        }
    });
}
