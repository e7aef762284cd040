//! What one session's log lines and decision records share, and the one place a refusal is
//! logged ([`Ctx::reject`]): one line per refusal, with session id, queue id, client, HELO,
//! account, sender, recipient, the reply, and the finding's stable code and detail.

use super::record::Recorder;
use super::shared::ListenerKind;
use crate::decision::Finding;
use mailwarden_proto::Reply;
use mailwarden_proto::command::Verb;
use mailwarden_proto::session::{Event, Session};
use std::net::SocketAddr;

pub(super) struct Ctx {
    pub(super) session: String,
    pub(super) listener: ListenerKind,
    pub(super) peer: SocketAddr,
    /// The open transaction's queue id.
    pub(super) qid: Option<String>,
    pub(super) from: Option<String>,
    /// The open transaction's decision record.
    pub(super) rec: Recorder,
    /// What the open transaction holds against its account's limits (submission).
    pub(super) reservation: Option<crate::containment::Reservation>,
}

impl Ctx {
    /// Log a refusal once, note it in the transaction's decision record (deciding), and
    /// count it.
    pub(super) fn reject(
        &mut self,
        s: &Session,
        verb: Verb,
        reply: &Reply,
        why: &Finding,
        rcpt: Option<&str>,
    ) {
        let code = why.kind.code();
        tracing::info!(
            event = "reject",
            session = %self.session,
            qid = self.qid.as_deref().unwrap_or("-"),
            listener = self.listener.name(),
            ip = %self.peer.ip(),
            helo = s.helo().unwrap_or("-"),
            user = s.authenticated().unwrap_or("-"),
            from = self.from.as_deref().unwrap_or("-"),
            rcpt = rcpt.unwrap_or("-"),
            verb = verb.as_str(),
            reply = %reply,
            code = code.as_ref(),
            reason = why.detail.as_str(),
        );
        self.rec.refused(rcpt, reply, why.record(true));
        metrics::counter!("mailwarden_smtp_rejections_total",
            "listener" => self.listener.name(), "verb" => verb.as_str(),
            "code" => reply.code.to_string())
        .increment(1);
    }

    /// The protocol core refused on its own: log it under its typed reason.
    pub(super) fn refused_by_core(&mut self, s: &Session, ev: Event) {
        if let Event::Refused {
            verb,
            reply,
            reason,
        } = ev
        {
            let why = Finding::new(crate::decision::Kind::Protocol(verb, reason), reason.text());
            self.reject(s, verb, &reply, &why, None);
        }
    }

    /// Answer a stage's refusal through the core (which counts it and may close the
    /// session), then log it as `why`.
    pub(super) fn refuse_with(
        &mut self,
        s: &Session,
        ev: Option<Event>,
        why: &Finding,
        rcpt: Option<&str>,
    ) {
        if let Some(Event::Refused { verb, reply, .. }) = ev {
            self.reject(s, verb, &reply, why, rcpt);
        }
    }

    /// Refuse an AUTH attempt (it counts in the session) and log it once; the finding's
    /// detail never holds the attempted name.
    pub(super) fn refuse_auth(&mut self, s: &mut Session, why: Finding) {
        let reply = why
            .refusal
            .clone()
            .unwrap_or(mailwarden_proto::replies::AUTH_TEMP);
        let ev = s.auth_failed(reply);
        self.refuse_with(s, Some(ev), &why, None);
    }
}
