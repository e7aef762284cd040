//! The end of a message: from the last byte of DATA to the queue's commit. The body is
//! finished (memory or spool file), sender authentication runs on mail from outside, forged
//! Authentication-Results headers are removed, the verdict is applied (reject, tempfail, Junk)
//! and the message, with its trace headers, is handed to the queue.

use super::body::BodySink;
use super::ctx::Ctx;
use super::early::Early;
use super::record::MessageDecision;
use super::shared::{ListenerKind, Shared};
use crate::checks::authres::{self, HeadEdit};
use crate::checks::headers::Parsed;
use crate::checks::inbound;
use crate::checks::scoring::{self, Level};
use crate::checks::sender::Envelope;
use crate::checks::shape;
use crate::decision::{Action, Cause, Finding, Kind, ScoreAsk};
use crate::learning::{self, LEARN_FIELD, Place};
use crate::queue::{Body, Folder, Message, Meta, Recipient, Route};
use crate::received;
use crate::records;
use crate::reputation::Outcome;
use crate::util::new_id;
use mailwarden_proto::session::Session;
use mailwarden_proto::{Reply, replies};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// A message as the session received it.
pub(super) struct Arrived<'a> {
    pub(super) rcpts: Vec<Recipient>,
    /// The TLS the session runs under, for the Received header.
    pub(super) tls: Option<&'a str>,
    pub(super) size: u64,
}

/// The reply for a finished message, the finding that refused it, and what the decision
/// record keeps of it.
pub(super) struct Finished {
    pub(super) reply: Reply,
    pub(super) refused: Option<Finding>,
    pub(super) notes: MessageDecision,
}

/// A refusal of the server's own: it could not take the message (`451 4.3.0`).
fn local_error(kind: Kind, detail: &str) -> Finding {
    Finding::refusing(kind, detail, replies::LOCAL_ERROR)
}

/// Finish a message: checks, verdict, enqueue.
pub(super) async fn finish(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &Session,
    sink: &mut BodySink,
    early: &mut Early,
    m: Arrived<'_>,
) -> Finished {
    let mut notes = MessageDecision::default();
    match decide_and_queue(shared, ctx, s, sink, early, m, &mut notes).await {
        Ok(reply) => Finished {
            reply,
            refused: None,
            notes,
        },
        Err(f) => {
            if !notes.reasons.iter().any(|r| r.deciding) {
                notes.reasons.push(f.record(true));
            }
            Finished {
                reply: f.refusal.clone().unwrap_or(replies::LOCAL_ERROR),
                refused: Some(f),
                notes,
            }
        }
    }
}

async fn decide_and_queue(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &Session,
    sink: &mut BodySink,
    early: &mut Early,
    m: Arrived<'_>,
    notes: &mut MessageDecision,
) -> Result<Reply, Finding> {
    let Arrived {
        mut rcpts,
        tls,
        size,
    } = m;
    let Some(txn) = s.transaction() else {
        return Err(local_error(Kind::NoTransaction, "no transaction"));
    };
    let cfg = &shared.config;
    let id = ctx.qid.clone().unwrap_or_else(new_id);
    let mut body = match sink.finish().await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(event = "spool_failed", session = %ctx.session, qid = %id, error = %e);
            return Err(local_error(Kind::SpoolWriteFailed, "spool write failed"));
        }
    };
    // The message is checked in memory: wait for its share of `limits.message_memory`, its
    // size and a quarter (what parsing and checking it was measured to add) and the part of
    // it that content scoring copies (at most `max_scan_bytes`).
    let scanned = size.min(cfg.limits.max_scan_bytes.0);
    let Some(_memory) = shared
        .memory
        .reserve(size.saturating_add(size / 4).saturating_add(scanned))
        .await
    else {
        tracing::warn!(event = "message_memory_exhausted", session = %ctx.session, qid = %id, size);
        return Err(local_error(
            Kind::MemoryExhausted,
            "message memory budget exhausted",
        ));
    };
    let raw: Arc<Vec<u8>> = match &body {
        Body::Inline(b) => b.clone(),
        Body::Spooled(p) => match tokio::fs::read(p).await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                tracing::error!(event = "spool_failed", session = %ctx.session, qid = %id, error = %e);
                return Err(local_error(Kind::SpoolReadFailed, "spool read failed"));
            }
        },
        Body::Stored => Arc::new(Vec::new()),
    };
    // Before anything parses it: a header section past `[limits]` is refused here.
    let head = shape::check_headers(&cfg.limits, &raw)?;
    // RFC 8601 §5: results claiming to be ours did not come from us. Removed from whatever
    // is kept: the queued message, and a quarantined or held one.
    let mut edit = authres::strip_forged(&raw, &cfg.hostname);
    if edit.is_some() {
        tracing::info!(event = "forged_auth_results_removed", session = %ctx.session, qid = %id,
            reason = Kind::ForgedAuthResults.code().as_ref());
    }
    // The message as it will be kept, built whole only where a copy is needed anyway.
    let kept = |edit: &Option<HeadEdit>| match edit {
        Some(e) => e.apply(&raw),
        None => raw.to_vec(),
    };
    notes.message_id = records::header_value(&raw, "Message-ID");
    notes.subject = crate::header::decoded(&raw, "Subject");

    let mut headers = String::new();
    let mut outbound_spam = None;
    let mut tag_subject = false;
    let mut verdict_note = None;
    let mut sender_verified = false;
    let mut signing_domain = None;
    // What reputation counts once the message is queued: (identities, outcome) for mail from
    // outside, (recipients, Message-ID) for mail our users send.
    let mut outcome = None;
    let mut wrote = None;
    if let Some(account) = s.authenticated() {
        // Suspended while this message was on its way (another session's blast tripped a
        // trigger), or this very message completes a blast: it is not taken.
        if let Some(f) = super::stage::suspension(shared, account) {
            return Err(f);
        }
        if let Some(r) = ctx.reservation.as_mut() {
            let to: Vec<String> = rcpts.iter().map(|r| r.address.clone()).collect();
            if let Err(t) = shared.contain.detector.admit(r, &to) {
                let detail = format!("suspended: {}: {}", t.reason, t.evidence);
                shared.contain.suspend(account, t, &ctx.session).await;
                return Err(Finding::refusing(
                    Kind::Suspended,
                    detail,
                    replies::ACCOUNT_SUSPENDED,
                ));
            }
        }
        // Submitted by a local account: its identity is proven by AUTH, not by DNS; what it
        // may claim to be in From:/Sender: is what it owns.
        signing_domain = Some(crate::checks::ownership::header(
            &shared.accounts,
            account,
            &raw,
        )?);
        headers.push_str(&authres::submitted(&cfg.hostname, account));
        wrote = Some((
            rcpts.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
            notes
                .message_id
                .as_deref()
                .and_then(|v| v.split('<').nth(1))
                .and_then(|v| v.split_once('>'))
                .map(|(id, _)| id.trim().to_string()),
        ));
        // Outbound mail is scored like inbound: a hijacked account's spam is held (what
        // would be quarantined or refused from outside), never refused to the user.
        let scored = score_submitted(shared, &raw, notes).await?;
        let ask = ScoreAsk {
            score: scored.score,
            level: scored.level,
        };
        let v = crate::decision::apply(cfg, &[], Some(&ask));
        if matches!(v.action, Action::Quarantine | Action::Reject(_)) {
            outbound_spam = Some(scored);
        }
    } else if ctx.listener == ListenerKind::Mx {
        let mail_from = txn.mail_from.to_string();
        let spf = early.spf().await;
        let iprev = early.iprev().await;
        let (dns, config, model, content, routing, store) = (
            shared.dns.clone(),
            shared.config.clone(),
            shared.classifier.get(),
            raw.clone(),
            shared.routing.clone(),
            shared.accounts.store().clone(),
        );
        let (ip, helo, from) = (
            ctx.peer.ip(),
            s.helo().unwrap_or("").to_string(),
            mail_from.clone(),
        );
        let now = shared.clock.now_secs();
        let decided = crate::heavy::checks(raw.len(), move || async move {
            let env = Envelope {
                ip,
                helo: &helo,
                mail_from: &from,
                hostname: &config.hostname,
            };
            let is_local = |d: &str| routing.is_local_domain(d).map_err(|e| e.to_string());
            let history = |w: crate::reputation::Who| -> inbound::HistoryFuture {
                let (store, cfg) = (store.clone(), config.reputation.clone());
                Box::pin(async move {
                    // SQLite reads: on the blocking pool, not an async worker.
                    tokio::task::spawn_blocking(move || {
                        crate::reputation::lookup(&store, &cfg, &w, now)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
                })
            };
            let ours = inbound::Ours {
                now,
                is_local: &is_local,
                history: &history,
            };
            inbound::decide(&dns, &config, &model, &env, &content, spf, iprev, &ours).await
        })
        .await;
        let d = match decided {
            Ok(d) => d,
            Err(panic) => {
                // Fail closed: a message nothing could vouch for is not accepted.
                tracing::error!(event = "checks_failed", session = %ctx.session, qid = %id, error = %panic);
                return Err(local_error(Kind::ChecksFailed, "checks failed"));
            }
        };
        let (out, scored) = (&d.sender, &d.scored);
        let v = &d.verdict;
        sender_verified = d.sender_verified;
        notes.reasons.extend(d.reasons());
        notes.score = Some(d.record_score());
        let deciding = v.deciding_finding(&d.findings);
        tracing::info!(
            event = "sender_auth",
            session = %ctx.session,
            qid = %id,
            ip = %ctx.peer.ip(),
            from = %mail_from,
            header_from = out.from_domain.as_deref().unwrap_or("-"),
            results = %out.summary,
            action = v.action.name(),
            reason = deciding.map(|f| f.kind.code()).unwrap_or("-".into()).as_ref(),
        );
        for (would, src) in &v.would {
            let (code, detail) = match src {
                Cause::Finding(i) => (d.findings[*i].kind.code(), d.findings[*i].detail.clone()),
                Cause::Score => (
                    Kind::SpamScore.code(),
                    format!("spam score {}", scored.score),
                ),
            };
            tracing::info!(event = "would_reject", session = %ctx.session, qid = %id, ip = %ctx.peer.ip(),
                would = would.name(), reason = code.as_ref(), detail = %detail, "observe mode: delivered anyway");
        }
        if scored.level != Level::Clean {
            tracing::info!(event = "scored", session = %ctx.session, qid = %id, score = scored.score,
                level = scored.level.name(),
                enforce = cfg.scoring.mode == crate::config::Mode::Enforce,
                tests = %scored.findings.iter().map(|f| f.kind.code()).collect::<Vec<_>>().join(","));
        }
        headers.push_str(&d.headers);
        tag_subject = !cfg.scoring.subject_tag.is_empty()
            && cfg.scoring.mode == crate::config::Mode::Enforce
            && scored.score >= cfg.scoring.junk;
        let keys = d.who.keys();
        if let Some(eval) = &out.evaluation {
            let disposition = match &v.action {
                Action::Reject(_) => Some("reject"),
                Action::Quarantine | Action::Junk => Some("quarantine"),
                Action::Accept => Some("none"),
                // Not taken: the sender tries again, and that attempt is the one counted.
                Action::TempFail(_) => None,
            };
            let reason = (out.arc_trusted && eval.row.dkim == "fail" && eval.row.spf == "fail")
                .then_some("trusted_forwarder");
            if let Some(disposition) = disposition {
                remember_dmarc(shared, eval.clone(), ctx.peer.ip(), disposition, reason);
            }
        }
        match &v.action {
            Action::Reject(reply) | Action::TempFail(reply) => {
                if matches!(v.action, Action::Reject(_)) {
                    remember(shared, &id, keys, Outcome::Rejected);
                }
                return Err(match deciding {
                    Some(f) => f.clone(),
                    None => Finding::refusing(
                        Kind::SpamScore,
                        format!("spam score {}", scored.score),
                        reply.clone(),
                    ),
                });
            }
            Action::Quarantine => {
                let mut content = headers.into_bytes();
                content.extend_from_slice(&kept(&edit));
                let done = hold(
                    shared, ctx, &id, &mail_from, None, &rcpts, content, scored, notes,
                )
                .await;
                if done.is_ok() {
                    remember(shared, &id, keys, Outcome::Quarantined);
                }
                return done;
            }
            Action::Junk => {
                notes.junk = true;
                for r in rcpts.iter_mut() {
                    if let Route::Local { folder, .. } = &mut r.route {
                        *folder = Folder::Junk;
                    }
                }
                verdict_note = d.junk_note();
                outcome = Some((keys, Outcome::Junked));
            }
            Action::Accept => outcome = Some((keys, Outcome::Accepted)),
        }
        // Which message a user later moves into or out of Junk, and where we put it
        // (`learning`); on top, so a field the sender wrote further down is never the one
        // read.
        let place = if notes.junk {
            Place::Junk
        } else {
            Place::Inbox
        };
        headers.insert_str(
            0,
            &format!(
                "{LEARN_FIELD}: {}\r\n",
                learning::field_value(&shared.learn_key, &id, place)
            ),
        );
    }

    if tag_subject {
        let (base, rest): (&[u8], usize) = match &edit {
            Some(e) => (&e.head, e.rest),
            None => (&raw[..head.bytes], head.bytes),
        };
        let head = crate::checks::headers::tag_subject(base, base.len(), &cfg.scoring.subject_tag);
        edit = Some(HeadEdit { head, rest });
    }
    let signing = signing_domain.filter(|_| cfg.dkim.sign);
    // What is signed: the message as it will be delivered.
    let mut content = raw.clone();
    if let Some(e) = &edit {
        match &body {
            Body::Spooled(p) => {
                if let Err(err) = rewrite(p, &e.head, &raw[e.rest..]).await {
                    tracing::error!(event = "spool_failed", session = %ctx.session, qid = %id, error = %err);
                    return Err(local_error(
                        Kind::SpoolRewriteFailed,
                        "spool rewrite failed",
                    ));
                }
                if signing.is_some() {
                    content = Arc::new(e.apply(&raw));
                }
            }
            _ => {
                content = Arc::new(e.apply(&raw));
                body = Body::Inline(content.clone());
            }
        }
    }
    if let Some(note) = verdict_note {
        headers.insert_str(0, &note);
    }
    if let Some(domain) = signing {
        headers.insert_str(0, &dkim_sign(shared, &id, content, domain).await);
    }
    if let Some(scored) = outbound_spam {
        // Signed already, so a release sends it as the account would have.
        let mut held = headers.into_bytes();
        held.extend_from_slice(&kept(&edit));
        let account = s.authenticated().map(str::to_string);
        let sender = txn.mail_from.to_string();
        let done = hold(
            shared,
            ctx,
            &id,
            &sender,
            account.clone(),
            &rcpts,
            held,
            &scored,
            notes,
        )
        .await;
        if let Some(a) = account
            && let Some(t) = shared.contain.detector.outbound_spam(&a, scored.score)
        {
            shared.contain.suspend(&a, t, &ctx.session).await;
        }
        return done;
    }
    let qid = id.clone();
    let reply = enqueue(
        shared,
        ctx,
        s,
        Queued {
            body,
            rcpts,
            tls,
            size,
            id,
            headers,
            sender_verified,
        },
    )
    .await;
    if !reply.is_positive() {
        return Err(Finding::refusing(Kind::QueueFailed, "queue failure", reply));
    }
    sink.committed();
    if let Some((keys, o)) = outcome {
        remember(shared, &qid, keys, o);
    }
    if let Some((to, message_id)) = wrote
        && shared.config.reputation.mode != crate::config::Mode::Off
    {
        let (store, now) = (shared.accounts.store().clone(), shared.clock.now_secs());
        tokio::spawn(async move {
            if let Err(e) = crate::reputation::wrote(&store, to, message_id, now).await {
                tracing::warn!(event = "reputation_write_failed", error = %e);
            }
        });
    }
    Ok(reply)
}

/// Count an outcome for a sender's identities, in the background: reputation is a help, and
/// waiting for its commit would hold the client's reply.
fn remember(shared: &Shared, id: &str, keys: Vec<String>, o: Outcome) {
    let cfg = &shared.config.reputation;
    if cfg.mode == crate::config::Mode::Off {
        return;
    }
    let (store, now, id) = (
        shared.accounts.store().clone(),
        shared.clock.now_secs(),
        id.to_string(),
    );
    let days = (cfg.window.get().as_secs() / 86_400) as i64;
    tokio::spawn(async move {
        if let Err(e) = crate::reputation::record(&store, &id, keys, o, now, days).await {
            tracing::warn!(event = "reputation_write_failed", error = %e);
        }
    });
}

/// Count a DMARC evaluation for the aggregate reports (`reports`), in the background like
/// [`remember`].
fn remember_dmarc(
    shared: &Shared,
    eval: crate::reports::Evaluation,
    ip: std::net::IpAddr,
    disposition: &'static str,
    reason: Option<&'static str>,
) {
    let cfg = &shared.config.dmarc;
    if !cfg.send_reports {
        return;
    }
    let (store, now, interval) = (
        shared.accounts.store().clone(),
        shared.clock.now_secs(),
        cfg.report_interval.get().as_secs(),
    );
    tokio::spawn(async move {
        if let Err(e) =
            crate::reports::record(&store, interval, now, eval, ip, disposition, reason).await
        {
            tracing::warn!(event = "dmarc_record_failed", error = %e);
        }
    });
}

/// Content scoring of submitted mail ([`scoring`]), off the async workers: the scanned part
/// is parsed, its MIME depth checked, and the findings added to the record's reasons.
async fn score_submitted(
    shared: &Shared,
    raw: &Arc<Vec<u8>>,
    notes: &mut MessageDecision,
) -> Result<scoring::Scored, Finding> {
    let (dns, cfg, model, raw) = (
        shared.dns.clone(),
        shared.config.clone(),
        shared.classifier.get(),
        raw.clone(),
    );
    let size = raw.len();
    let now = shared.clock.now_secs();
    let scored = crate::heavy::checks(size, move || async move {
        let l = &cfg.limits;
        let parsed = {
            let _cpu = crate::heavy::cpu().await;
            Parsed::new(&raw, l.max_scan_bytes.0 as usize, l.max_link_hosts)
        };
        if let Some(msg) = &parsed.msg {
            shape::check_mime(l, msg)?;
        }
        let timeout = cfg.dns.timeout.get();
        Ok(scoring::score(
            &dns,
            &cfg.scoring,
            &model,
            &parsed,
            now,
            &cfg.hostname,
            false,
            timeout,
        )
        .await)
    })
    .await
    .unwrap_or_else(|panic| {
        tracing::error!(event = "scoring_failed", error = %panic);
        // Scoring is advisory for submitted mail: a bug in it must not stop the user's mail.
        Ok(scoring::Scored {
            findings: Vec::new(),
            score: 0.0,
            level: Level::Clean,
        })
    })?;
    notes
        .reasons
        .extend(scored.findings.iter().map(|f| records::Reason {
            counted: true,
            ..f.record(false)
        }));
    notes.score = Some(scored.score);
    Ok(scored)
}

/// Keep a message in quarantine instead of queueing it; the client still gets its `250`.
#[allow(clippy::too_many_arguments)]
async fn hold(
    shared: &Shared,
    ctx: &Ctx,
    id: &str,
    sender: &str,
    account: Option<String>,
    rcpts: &[Recipient],
    content: Vec<u8>,
    scored: &scoring::Scored,
    notes: &mut MessageDecision,
) -> Result<Reply, Finding> {
    let e = crate::quarantine::Entry {
        id: id.to_string(),
        time: shared.clock.now_secs(),
        sender: sender.to_string(),
        account,
        rcpts: rcpts
            .iter()
            .map(|r| match &r.route {
                Route::Local { mailbox, .. } => (r.address.clone(), mailbox.clone()),
                Route::Remote => (r.address.clone(), String::new()),
            })
            .collect(),
        score: scored.score,
        reasons: scored
            .findings
            .iter()
            .map(|f| f.kind.code())
            .collect::<Vec<_>>()
            .join(","),
        content,
    };
    match crate::quarantine::hold(shared.accounts.store(), e).await {
        Ok(()) => {
            notes.quarantined = true;
            for r in notes.reasons.iter_mut().filter(|r| r.score > 0.0) {
                r.deciding = true;
            }
            tracing::info!(event = "quarantined", session = %ctx.session, qid = %id,
                score = scored.score);
            Ok(replies::queued(id))
        }
        Err(e) => {
            tracing::error!(event = "quarantine_failed", qid = %id, error = %e);
            Err(local_error(
                Kind::QuarantineFailed,
                "quarantine write failed",
            ))
        }
    }
}

/// DKIM-Signature fields for submitted mail, one per key of the `From:` domain (none if the
/// domain has no key). Signing failures are logged and the mail goes unsigned: refusing it
/// would not help the user.
async fn dkim_sign(shared: &Shared, id: &str, content: Arc<Vec<u8>>, domain: String) -> String {
    let keys = shared.keyring.keys_for(&domain);
    if keys.is_empty() {
        return String::new();
    }
    let sign_headers = shared.config.dkim.sign_headers.clone();
    let d = domain.clone();
    let now = shared.clock.now_secs().max(0) as u64;
    let signed = tokio::task::spawn_blocking(move || {
        crate::dkim::sign::sign_all(&keys, &d, &content, &sign_headers, now)
    })
    .await;
    let mut out = String::new();
    for (selector, r) in signed.unwrap_or_default() {
        match r {
            Ok(h) => {
                tracing::info!(event = "dkim_signed", qid = %id, domain = %domain, selector = %selector);
                out.push_str(&h);
            }
            Err(e) => {
                tracing::error!(event = "dkim_sign_failed", qid = %id, domain = %domain, error = %e)
            }
        }
    }
    out
}

/// Write a spooled message again with a new header section; the body comes from the copy
/// already in memory.
async fn rewrite(path: &std::path::Path, head: &[u8], rest: &[u8]) -> std::io::Result<()> {
    let mut f = tokio::fs::File::create(path).await?;
    f.write_all(head).await?;
    f.write_all(rest).await?;
    f.flush().await
}

/// A finished message on its way into the queue.
struct Queued<'a> {
    body: Body,
    rcpts: Vec<Recipient>,
    tls: Option<&'a str>,
    size: u64,
    id: String,
    /// Header lines that go above our Received header.
    headers: String,
    sender_verified: bool,
}

/// Commit the message to the queue.
async fn enqueue(shared: &Shared, ctx: &Ctx, s: &Session, q: Queued<'_>) -> Reply {
    let Queued {
        body,
        rcpts,
        tls,
        size,
        id,
        headers,
        sender_verified,
    } = q;
    let Some(txn) = s.transaction() else {
        return replies::LOCAL_ERROR;
    };
    let now = shared.clock.now_secs();
    let single = (rcpts.len() == 1).then(|| rcpts[0].address.clone());
    let mut prepend = headers;
    prepend += &received::header(&received::Trace {
        helo: s.helo().unwrap_or("unknown"),
        ip: ctx.peer.ip(),
        hostname: &shared.config.hostname,
        esmtp: s.esmtp(),
        smtputf8: txn.params.smtputf8,
        tls,
        // RFC 3848's `A` says SMTP AUTH; a grant is named in its own comment instead.
        authenticated: s.authenticated().is_some() && !s.granted(),
        id: &id,
        single_rcpt: single.as_deref(),
        time: now,
        hide_client: s.authenticated().is_some()
            && !s.granted()
            && shared.config.submission.hide_client,
        pop_before_smtp: s.authenticated().filter(|_| s.granted()),
    });
    let nrcpt = rcpts.len();
    let msg = Message {
        id: id.clone(),
        created: now,
        sender: txn.mail_from.to_string(),
        size,
        meta: Meta {
            session: ctx.session.clone(),
            listener: ctx.listener.name().to_string(),
            client_ip: ctx.peer.ip().to_string(),
            helo: s.helo().unwrap_or_default().to_string(),
            tls: tls.map(str::to_string),
            auth: s.authenticated().map(str::to_string),
            prepend,
            sender_verified,
        },
        rcpts,
        body,
    };
    match shared.queue.enqueue(msg).await {
        Ok(()) => {
            tracing::info!(
                event = "queued",
                session = %ctx.session,
                qid = %id,
                ip = %ctx.peer.ip(),
                user = s.authenticated().unwrap_or("-"),
                from = %txn.mail_from,
                rcpts = nrcpt,
                size,
            );
            replies::queued(&id)
        }
        Err(e) => {
            tracing::error!(event = "enqueue_failed", session = %ctx.session, qid = %id, error = %e);
            // enqueue removed the spool file already.
            if e.is_full() {
                replies::NO_STORAGE
            } else {
                replies::LOCAL_ERROR
            }
        }
    }
}
