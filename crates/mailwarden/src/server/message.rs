//! The end of a message: from the last byte of DATA to the queue's commit. The body is
//! finished (memory or spool file), sender authentication runs on mail from outside, forged
//! Authentication-Results headers are removed, the verdict is applied (reject, tempfail, Junk)
//! and the message, with its trace headers, is handed to the queue.

use super::record::MessageDecision;
use super::session::Ctx;
use super::{ListenerKind, Shared};
use crate::checks::authres::{self, HeadEdit};
use crate::checks::headers::Parsed;
use crate::checks::inbound;
use crate::checks::scoring::{self, Level};
use crate::checks::sender::{self, Envelope};
use crate::checks::shape;
use crate::checks::verdict::Code;
use crate::queue::{Body, Folder, Message, Meta, Recipient, Route};
use crate::received;
use crate::records;
use crate::util::{new_id, unix_now};
use mail_auth::{IprevOutput, SpfOutput};
use mailwarden_proto::session::Session;
use mailwarden_proto::{Reply, replies};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

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
    async fn finish(&mut self) -> std::io::Result<Body> {
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
    fn committed(&mut self) {
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

/// A check started early: finished at once (its DNS answers were cached), or running in a
/// task of its own while the client sends the rest of the transaction.
pub(super) enum Started<T> {
    Done(T),
    Running(JoinHandle<T>),
}

impl<T: Send + 'static> Started<T> {
    /// Poll `fut` once; spawn it only if it is still waiting. With warm caches this saves a
    /// task and a cross-thread wake-up per check, a measurable share of a message's CPU.
    pub(super) fn start(fut: impl std::future::Future<Output = T> + Send + 'static) -> Started<T> {
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Started::Done(v),
            std::task::Poll::Pending => Started::Running(tokio::spawn(fut)),
        }
    }

    pub(super) async fn finish(self) -> Option<T> {
        match self {
            Started::Done(v) => Some(v),
            Started::Running(h) => h.await.ok(),
        }
    }

    pub(super) fn abort(&self) {
        if let Started::Running(h) = self {
            h.abort();
        }
    }
}

/// Checks started before the end of DATA: iprev from connect, SPF from MAIL FROM.
#[derive(Default)]
pub(super) struct Early {
    pub(super) iprev: Option<Started<IprevOutput>>,
    pub(super) iprev_done: Option<IprevOutput>,
    pub(super) spf: Option<Started<SpfOutput>>,
    /// SPF finished early (greylisting asked at RCPT), kept for the end of DATA.
    pub(super) spf_done: Option<SpfOutput>,
}

impl Early {
    /// Start iprev for a new session on the MX listener.
    pub(super) fn at_connect(
        shared: &Arc<Shared>,
        kind: ListenerKind,
        ip: std::net::IpAddr,
    ) -> Early {
        let mut e = Early::default();
        let off = crate::config::Mode::Off;
        let cfg = &shared.config;
        if kind == ListenerKind::Mx && (cfg.iprev.mode != off || cfg.screening.rdns.mode != off) {
            let dns = shared.dns.clone();
            e.iprev = Some(Started::start(async move {
                dns.prime_loopback_ptr(ip).await;
                sender::iprev(&dns, ip).await
            }));
        }
        e
    }

    /// Start SPF for a new transaction from outside.
    pub(super) fn at_mail(
        &mut self,
        shared: &Arc<Shared>,
        ip: std::net::IpAddr,
        helo: &str,
        mail_from: &str,
    ) {
        if let Some(h) = self.spf.take() {
            h.abort();
        }
        self.spf_done = None;
        if shared.config.spf.mode == crate::config::Mode::Off {
            return;
        }
        let (dns, helo, from, host) = (
            shared.dns.clone(),
            helo.to_string(),
            mail_from.to_string(),
            shared.config.hostname.clone(),
        );
        self.spf = Some(Started::start(async move {
            sender::spf(&dns, ip, &helo, &host, &from).await
        }));
    }

    pub(super) async fn iprev(&mut self) -> Option<IprevOutput> {
        if let Some(h) = self.iprev.take() {
            self.iprev_done = h.finish().await;
        }
        self.iprev_done.clone()
    }

    async fn spf(&mut self) -> Option<SpfOutput> {
        match self.spf.take() {
            Some(h) => h.finish().await,
            None => self.spf_done.take(),
        }
    }

    /// The transaction's SPF result, waiting for it if needed, without using it up.
    pub(super) async fn spf_peek(&mut self) -> Option<SpfOutput> {
        if let Some(h) = self.spf.take() {
            self.spf_done = h.finish().await;
        }
        self.spf_done.clone()
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(h) = self.spf.take() {
            h.abort();
        }
        if let Some(h) = self.iprev.take() {
            h.abort();
        }
    }
}

/// The reply for a finished message, and the reason when it is a refusal.
pub(super) struct Finished {
    pub(super) reply: Reply,
    pub(super) reason: Option<String>,
}

/// Finish a message: checks, verdict, enqueue.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish(
    shared: &Shared,
    ctx: &mut Ctx,
    s: &Session,
    sink: &mut BodySink,
    mut rcpts: Vec<Recipient>,
    tls: Option<&str>,
    size: u64,
    early: &mut Early,
    notes: &mut MessageDecision,
) -> Finished {
    let fail = |reply: Reply, reason: &str| Finished {
        reply,
        reason: Some(reason.to_string()),
    };
    let Some(txn) = s.transaction() else {
        return fail(replies::LOCAL_ERROR, "no transaction");
    };
    let cfg = &shared.config;
    let id = ctx.qid.clone().unwrap_or_else(new_id);
    let mut body = match sink.finish().await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(event = "spool_failed", session = %ctx.session, qid = %id, error = %e);
            return fail(replies::LOCAL_ERROR, "spool write failed");
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
        return fail(replies::LOCAL_ERROR, "message memory budget exhausted");
    };
    let raw: Arc<Vec<u8>> = match &body {
        Body::Inline(b) => b.clone(),
        Body::Spooled(p) => match tokio::fs::read(p).await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                tracing::error!(event = "spool_failed", session = %ctx.session, qid = %id, error = %e);
                return fail(replies::LOCAL_ERROR, "spool read failed");
            }
        },
        Body::Stored => Arc::new(Vec::new()),
    };
    // Before anything parses it: a header section past `[limits]` is refused here.
    let head = match shape::check_headers(&cfg.limits, &raw) {
        Ok(h) => h,
        Err(r) => {
            notes
                .reasons
                .push(records::Reason::coded(r.code, r.detail.clone(), 0.0, true));
            return fail(r.reply, &format!("{}: {}", r.code, r.detail));
        }
    };
    // RFC 8601 §5: results claiming to be ours did not come from us. Removed from whatever
    // is kept: the queued message, and a quarantined or held one.
    let mut edit = authres::strip_forged(&raw, &cfg.hostname);
    if edit.is_some() {
        tracing::info!(event = "forged_auth_results_removed", session = %ctx.session, qid = %id,
            reason = Code::ForgedAuthResults.as_str());
    }
    // The message as it will be kept, built whole only where a copy is needed anyway.
    let kept = |edit: &Option<HeadEdit>| match edit {
        Some(e) => e.apply(&raw),
        None => raw.to_vec(),
    };
    notes.message_id = records::header_value(&raw, "Message-ID");
    notes.subject = records::header_value(&raw, "Subject");

    let mut headers = String::new();
    let mut outbound_spam = None;
    let mut tag_subject = false;
    let mut verdict_note = None;
    let mut sender_verified = false;
    let mut signing_domain = None;
    if let Some(account) = s.authenticated() {
        // Suspended while this message was on its way (another session's blast tripped a
        // trigger), or this very message completes a blast: it is not taken.
        let mut refused = super::session::suspension(shared, account);
        if refused.is_none()
            && let Some(r) = ctx.reservation.as_mut()
        {
            let to: Vec<String> = rcpts.iter().map(|r| r.address.clone()).collect();
            if let Err(t) = shared.contain.detector.admit(r, &to) {
                let reason = format!("suspended: {}: {}", t.reason, t.evidence);
                shared.contain.suspend(account, t, &ctx.session).await;
                refused = Some(crate::checks::ownership::Refusal {
                    reply: replies::ACCOUNT_SUSPENDED,
                    reason,
                });
            }
        }
        if let Some(r) = refused {
            notes.reasons.push(records::Reason::coded(
                "containment.suspended",
                r.reason.as_str(),
                0.0,
                true,
            ));
            return fail(r.reply, &r.reason);
        }
        // Submitted by a local account: its identity is proven by AUTH, not by DNS; what it
        // may claim to be in From:/Sender: is what it owns.
        match crate::checks::ownership::header(&shared.accounts, account, &raw) {
            Ok(domain) => signing_domain = Some(domain),
            Err(r) => {
                notes.reasons.push(records::Reason::coded(
                    "ownership.header",
                    r.reason.as_str(),
                    0.0,
                    true,
                ));
                return Finished {
                    reply: r.reply,
                    reason: Some(r.reason),
                };
            }
        }
        headers.push_str(&authres::submitted(&cfg.hostname, account));
        // Outbound mail is scored like inbound: a hijacked account's spam is held.
        let scored = match score_submitted(shared, &raw, &mut notes.reasons).await {
            Ok(s) => s,
            Err(r) => {
                notes
                    .reasons
                    .push(records::Reason::coded(r.code, r.detail.clone(), 0.0, true));
                return fail(r.reply, &format!("{}: {}", r.code, r.detail));
            }
        };
        if cfg.scoring.mode == crate::config::Mode::Enforce
            && matches!(scored.level, Level::Quarantine | Level::Reject)
        {
            outbound_spam = Some(scored);
        }
    } else if ctx.listener == ListenerKind::Mx {
        let mail_from = txn.mail_from.to_string();
        let spf = early.spf().await;
        let iprev = early.iprev().await;
        let (dns, config, model, content, routing) = (
            shared.dns.clone(),
            shared.config.clone(),
            shared.classifier.get(),
            raw.clone(),
            shared.routing.clone(),
        );
        let (ip, helo, from) = (
            ctx.peer.ip(),
            s.helo().unwrap_or("").to_string(),
            mail_from.clone(),
        );
        let decided = crate::heavy::checks(raw.len(), move || async move {
            let env = Envelope {
                ip,
                helo: &helo,
                mail_from: &from,
                hostname: &config.hostname,
            };
            let is_local = |d: &str| routing.is_local_domain(d).map_err(|e| e.to_string());
            let now = unix_now();
            inbound::decide(
                &dns, &config, &model, &env, &content, spf, iprev, now, &is_local,
            )
            .await
        })
        .await;
        let d = match decided {
            Ok(d) => d,
            Err(panic) => {
                // Fail closed: a message nothing could vouch for is not accepted.
                tracing::error!(event = "checks_failed", session = %ctx.session, qid = %id, error = %panic);
                return fail(replies::LOCAL_ERROR, "checks failed");
            }
        };
        let (out, scored) = (&d.sender, &d.scored);
        let v = &out.verdict;
        sender_verified = d.sender_verified;
        notes.reasons.extend(d.reasons);
        tracing::info!(
            event = "sender_auth",
            session = %ctx.session,
            qid = %id,
            ip = %ctx.peer.ip(),
            from = %mail_from,
            header_from = out.from_domain.as_deref().unwrap_or("-"),
            results = %out.summary,
            action = v.action.name(),
            reason = v.deciding.as_ref().map(|r| r.code.as_str()).unwrap_or("-"),
        );
        if let (Some(would), Some(r)) = (&v.would, &v.deciding) {
            tracing::info!(event = "would_reject", session = %ctx.session, qid = %id, ip = %ctx.peer.ip(),
                would = would.name(), reason = r.code.as_str(), detail = %r.detail, "observe mode: delivered anyway");
        }
        if scored.level != Level::Clean {
            tracing::info!(event = "scored", session = %ctx.session, qid = %id, score = scored.score,
                level = scored.level.name(),
                enforce = cfg.scoring.mode == crate::config::Mode::Enforce,
                tests = %scored.findings.iter().map(|f| f.code).collect::<Vec<_>>().join(","));
        }
        headers.push_str(&d.headers);
        tag_subject = !cfg.scoring.subject_tag.is_empty()
            && cfg.scoring.mode == crate::config::Mode::Enforce
            && scored.score >= cfg.scoring.junk;
        match d.outcome {
            inbound::Outcome::Refuse { reply, reason } => {
                return Finished {
                    reply,
                    reason: Some(reason),
                };
            }
            inbound::Outcome::Quarantine => {
                let mut content = headers.into_bytes();
                content.extend_from_slice(&kept(&edit));
                return hold(
                    shared, ctx, &id, &mail_from, None, &rcpts, content, scored, notes,
                )
                .await;
            }
            inbound::Outcome::Deliver { junk: Some(note) } => {
                notes.junk = true;
                for r in rcpts.iter_mut() {
                    if let Route::Local { folder, .. } = &mut r.route {
                        *folder = Folder::Junk;
                    }
                }
                verdict_note = Some(note);
            }
            inbound::Outcome::Deliver { junk: None } => {}
        }
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
                    return fail(replies::LOCAL_ERROR, "spool rewrite failed");
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
    if reply.is_positive() {
        sink.committed();
    }
    let reason = (!reply.is_positive()).then(|| "queue failure".to_string());
    Finished { reply, reason }
}

/// Content scoring of submitted mail ([`scoring`]), off the async workers: the scanned part
/// is parsed, its MIME depth checked, and the findings added to the record's reasons.
async fn score_submitted(
    shared: &Shared,
    raw: &Arc<Vec<u8>>,
    reasons: &mut Vec<records::Reason>,
) -> Result<scoring::Scored, shape::Refusal> {
    let (dns, cfg, model, raw) = (
        shared.dns.clone(),
        shared.config.clone(),
        shared.classifier.get(),
        raw.clone(),
    );
    let size = raw.len();
    let scored = crate::heavy::checks(size, move || async move {
        let l = &cfg.limits;
        let parsed = {
            let _cpu = crate::heavy::cpu().await;
            Parsed::new(&raw, l.max_scan_bytes.0 as usize, l.max_link_hosts)
        };
        if let Some(msg) = &parsed.msg {
            shape::check_mime(l, msg)?;
        }
        let now = unix_now();
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
    for f in &scored.findings {
        reasons.push(records::Reason::coded(
            f.code,
            f.detail.as_str(),
            f.score,
            false,
        ));
    }
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
) -> Finished {
    let e = crate::quarantine::Entry {
        id: id.to_string(),
        time: unix_now(),
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
            .map(|f| f.code)
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
            Finished {
                reply: replies::queued(id),
                reason: None,
            }
        }
        Err(e) => {
            tracing::error!(event = "quarantine_failed", qid = %id, error = %e);
            Finished {
                reply: replies::LOCAL_ERROR,
                reason: Some("quarantine write failed".into()),
            }
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
    let signed = tokio::task::spawn_blocking(move || {
        let now = unix_now().max(0) as u64;
        keys.iter()
            .map(|k| {
                crate::dkim::sign::sign(k, &d, &content, &sign_headers, now)
                    .map(|h| (k.selector.clone(), h))
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut out = String::new();
    for r in signed.unwrap_or_default() {
        match r {
            Ok((selector, h)) => {
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
    let now = unix_now();
    let single = (rcpts.len() == 1).then(|| rcpts[0].address.clone());
    let mut prepend = headers;
    prepend += &received::header(&received::Trace {
        helo: s.helo().unwrap_or("unknown"),
        ip: ctx.peer.ip(),
        hostname: &shared.config.hostname,
        esmtp: s.esmtp(),
        smtputf8: txn.params.smtputf8,
        tls,
        authenticated: s.authenticated().is_some(),
        id: &id,
        single_rcpt: single.as_deref(),
        time: now,
        hide_client: s.authenticated().is_some() && shared.config.submission.hide_client,
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
