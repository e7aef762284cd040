//! The session driver: a thin async loop of read, feed, write around the I/O-free
//! [`mailwarden_proto::session::Session`]. It answers the protocol core's events with policy
//! (routing and relay, AUTH, the queue) and owns the socket, TLS, timeouts and the body spool.
//!
//! Flow: listener → **session** → checks → queue. The session never delivers; it only hands
//! durable messages to the queue. Every refusal is logged once, through [`Ctx::reject`], with
//! session id, queue id, client, HELO, sender and recipient.

use super::message::{self, BodySink, Early};
use super::record::{self, Recorder};
use super::screen::Screen;
use super::{ListenerKind, Shared};
use crate::checks::relay::RcptDecision;
use crate::queue::{Folder, Recipient, Route};
use crate::records;
use crate::util::new_id;
use mailwarden_proto::command::Verb;
use mailwarden_proto::session::{Event, InBuf, Session};
use mailwarden_proto::{Reply, replies};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The connection, before and after TLS.
enum Stream<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
    /// Lost in a failed TLS handshake.
    Gone,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection gone")
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Stream<IO> {
    async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Gone => Err(gone()),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Gone => Err(gone()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
    }
}

/// What the log lines of this session share.
pub(super) struct Ctx {
    pub(super) session: String,
    pub(super) listener: ListenerKind,
    pub(super) peer: SocketAddr,
    pub(super) qid: Option<String>,
    pub(super) from: Option<String>,
    /// The open transaction's decision record.
    pub(super) rec: Recorder,
    /// What the open transaction holds against its account's limits (submission).
    pub(super) reservation: Option<crate::containment::Reservation>,
}

impl Ctx {
    /// Log a refusal known by a short reason, and note it in the transaction's decision
    /// record under a code derived from it.
    pub(super) fn reject(
        &mut self,
        s: &Session,
        verb: Verb,
        reply: &Reply,
        reason: &str,
        rcpt: Option<&str>,
    ) {
        let (head, _) = reason.split_once(": ").unwrap_or((reason, ""));
        let why = records::Reason::refusal(&verb.as_str().to_ascii_lowercase(), head, reason);
        self.reject_as(s, verb, reply, reason, why, rcpt);
    }

    /// The one place refusals are logged; `why` goes into the decision record as it is.
    pub(super) fn reject_as(
        &mut self,
        s: &Session,
        verb: Verb,
        reply: &Reply,
        reason: &str,
        why: records::Reason,
        rcpt: Option<&str>,
    ) {
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
            reason,
        );
        self.rec.refused(rcpt, reply, why);
        metrics::counter!("mailwarden_smtp_rejections_total",
            "listener" => self.listener.name(), "verb" => verb.as_str(),
            "code" => reply.code.to_string())
        .increment(1);
    }

    /// Refuse an AUTH attempt (`reason` counts in the session) and log it once with
    /// `detail`, which never holds the attempted name.
    pub(super) fn refuse_auth(
        &mut self,
        s: &mut Session,
        reply: Reply,
        reason: &'static str,
        detail: &str,
    ) {
        if let Event::Refused { verb, reply, .. } = s.auth_failed(reply, reason) {
            self.reject(s, verb, &reply, detail, None);
        }
    }
}

pub async fn run<IO>(
    io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ctx = Ctx {
        session: new_id(),
        listener: kind,
        peer,
        qid: None,
        from: None,
        rec: Recorder::default(),
        reservation: None,
    };
    let mut stream = Stream::Plain(io);
    let acquired = shared
        .limiter
        .acquire(peer.ip())
        .map_err(|why| format!("{why:?}"));
    let acquired = acquired.and_then(|slot| {
        shared
            .contain
            .detector
            .connection(peer.ip())
            .map(|()| slot)
            .map_err(|l| l.reason)
    });
    let _slot = match acquired {
        Ok(slot) => slot,
        Err(why) => {
            let r = replies::TOO_MANY_CONNECTIONS;
            tracing::info!(event = "reject", session = %ctx.session, listener = kind.name(), ip = %peer.ip(),
                verb = "CONNECT", reply = %r, reason = %why);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                stream.write_all(r.to_wire().as_bytes()),
            )
            .await;
            return;
        }
    };
    tracing::info!(event = "connect", session = %ctx.session, listener = kind.name(), ip = %peer.ip(), port = peer.port());
    let started = Instant::now();
    let mut body = BodySink::new(shared.config.queue.inline_max.0 as usize);
    // Isolation: a bug that panics ends this session only. Its slot, its spool file and its
    // tasks are released by their owners' drops; the client is told, and the record says so.
    let served = crate::heavy::CatchPanic::new(serve(
        &mut stream,
        &mut ctx,
        &mut body,
        local,
        &shared,
        started,
    ))
    .await;
    let Err(panic) = served else { return };
    metrics::counter!("mailwarden_session_panics_total", "listener" => kind.name()).increment(1);
    tracing::error!(event = "session_panic", session = %ctx.session, ip = %peer.ip(), error = %panic);
    let reply = replies::INTERNAL_ERROR;
    if !matches!(stream, Stream::Gone) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            stream.write_all(reply.to_wire().as_bytes()),
        )
        .await;
        stream.shutdown().await;
    }
    body.discard();
    if let Some(r) = ctx.reservation.take() {
        shared.contain.detector.release(r);
    }
    let why = records::Reason::coded("session.panic", panic, 0.0, true);
    let record = ctx.rec.abort(&reply, why, || records::Record {
        id: new_id(),
        session: ctx.session.clone(),
        listener: kind.name().to_string(),
        ip: peer.ip().to_string(),
        ..Default::default()
    });
    record::spawn_save(&shared, record, None, &Early::default());
    tracing::info!(event = "disconnect", session = %ctx.session, ip = %peer.ip(), reason = "panic",
        secs = started.elapsed().as_secs_f32());
}

/// Everything after admission: TLS on the implicit-TLS port, pregreet, and the command loop.
async fn serve<IO>(
    stream: &mut Stream<IO>,
    ctx: &mut Ctx,
    body: &mut BodySink,
    local: SocketAddr,
    shared: &Arc<Shared>,
    started: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = shared.clone();
    let cfg = &shared.config;
    let (kind, peer) = (ctx.listener, ctx.peer);
    let mut tls_info: Option<String> = None;
    if kind == ListenerKind::Submissions {
        match upgrade(stream, &shared).await {
            Ok(info) => tls_info = Some(info),
            Err(e) => {
                tracing::info!(event = "tls_failed", session = %ctx.session, ip = %peer.ip(), error = %e);
                return;
            }
        }
    }
    let mut s = Session::new(shared.session_config(kind));
    let mut inbuf = InBuf::with_capacity(1024);
    let mut early = Early::at_connect(&shared, kind, peer.ip());
    let mut screen = (kind == ListenerKind::Mx).then(|| Screen::at_connect(&shared, peer, local));
    if let (Some(sc), Stream::Plain(io)) = (screen.as_mut(), &mut *stream) {
        let mut talked = Vec::new();
        if !sc.pregreet(&shared, io, &ctx.session, &mut talked).await {
            return;
        }
        inbuf.extend(&talked);
    }
    let mut routed: Vec<Recipient> = Vec::new();
    let mut shutdown = shared.shutdown.clone();
    let deadline = tokio::time::Instant::now() + cfg.smtp.max_session_time.get();
    let mut messages = 0u32;
    let mut end_reason = "quit";
    s.greet();
    loop {
        if !s.in_data() {
            s.set_storage_low(shared.free_space.is_low());
        }
        match s.poll(&mut inbuf, &mut body.buf) {
            Event::NeedInput => {
                if s.in_data() {
                    let q = shared.queue.clone();
                    let id = ctx.qid.clone().unwrap_or_else(new_id);
                    if let Err(e) = body.spill_if_large(|| q.spool_path(&id)).await {
                        tracing::error!(event = "spool_failed", session = %ctx.session, error = %e);
                        s.close_with(&replies::LOCAL_ERROR);
                        end_reason = "spool error";
                        continue;
                    }
                } else {
                    inbuf.shrink(4096);
                }
                if s.has_output() && !flush(stream, &mut s, cfg.smtp.idle_timeout.get()).await {
                    end_reason = "write failed";
                    break;
                }
                let wait = if s.in_data() {
                    cfg.smtp.data_timeout.get()
                } else {
                    cfg.smtp.idle_timeout.get()
                };
                let reserve = if s.in_data() { 64 * 1024 } else { 1024 };
                tokio::select! {
                    r = tokio::time::timeout(wait, stream.read_into(inbuf.for_read(reserve))) => match r {
                        Err(_) => {
                            s.close_with(&replies::TIMEOUT);
                            end_reason = "timeout";
                        }
                        Ok(Ok(0)) => {
                            end_reason = if s.in_data() { "disconnect in DATA" } else { "disconnect" };
                            break;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(event = "read_error", session = %ctx.session, error = %e);
                            end_reason = "read error";
                            break;
                        }
                    },
                    _ = shutdown.changed() => {
                        s.close_with(&replies::SHUTTING_DOWN);
                        end_reason = "shutdown";
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        s.close_with(&replies::SESSION_TOO_LONG);
                        end_reason = "session time limit";
                    }
                }
            }
            Event::Refused {
                verb,
                reply,
                reason,
            } => {
                ctx.reject(&s, verb, &reply, reason, None);
            }
            Event::Mail { from, params: _ } => {
                // A new transaction: forget anything an abandoned one left behind.
                body.discard();
                routed.clear();
                ctx.qid = Some(new_id());
                ctx.from = Some(from.to_string());
                let base = crate::records::Record {
                    id: ctx.qid.clone().unwrap_or_default(),
                    session: ctx.session.clone(),
                    listener: kind.name().to_string(),
                    ip: peer.ip().to_string(),
                    helo: s.helo().unwrap_or("").to_string(),
                    tls: tls_info.clone(),
                    account: s.authenticated().map(str::to_string),
                    mail_from: from.to_string(),
                    ..Default::default()
                };
                if let Some(prev) = ctx.rec.start(base) {
                    record::spawn_save(&shared, prev, screen.as_ref(), &early);
                }
                if let Some(sc) = screen.as_mut() {
                    sc.at_mail(&shared, s.helo().unwrap_or(""), &from.to_string());
                }
                if kind == ListenerKind::Mx && s.authenticated().is_none() {
                    early.at_mail(
                        &shared,
                        peer.ip(),
                        s.helo().unwrap_or(""),
                        &from.to_string(),
                    );
                }
                // A transaction that never became a message gives its reservation back.
                if let Some(r) = ctx.reservation.take() {
                    shared.contain.detector.release(r);
                }
                // Submission: the envelope sender must be one of the account's addresses, and
                // the message must fit the account's limits (counted now, not after it).
                let owned = match s.authenticated() {
                    _ if shared.free_space.is_low() => Err(crate::checks::ownership::Refusal {
                        reply: replies::NO_STORAGE,
                        reason: "storage low".into(),
                    }),
                    Some(account) if let Some(refused) = suspension(&shared, account) => {
                        Err(refused)
                    }
                    Some(account) if kind != ListenerKind::Mx => {
                        let sender = from.to_string();
                        match crate::checks::ownership::envelope(&shared.accounts, account, &sender)
                        {
                            Err(r) => Err(r),
                            Ok(()) => {
                                let domain = sender.rsplit_once('@').map(|(_, d)| d);
                                match shared.contain.detector.reserve_message(account, domain) {
                                    Ok(r) => {
                                        ctx.reservation = Some(r);
                                        Ok(())
                                    }
                                    Err(l) => {
                                        shared.contain.throttled(account, &l).await;
                                        Err(crate::checks::ownership::Refusal {
                                            reply: replies::rate_limited(&l.reason),
                                            reason: l.reason,
                                        })
                                    }
                                }
                            }
                        }
                    }
                    _ => Ok(()),
                };
                match owned {
                    Ok(()) => {
                        if let Some(Event::Refused {
                            verb,
                            reply,
                            reason,
                        }) = s.mail_decision(replies::MAIL_OK, "")
                        {
                            ctx.reject(&s, verb, &reply, reason, None);
                        }
                    }
                    Err(r) => {
                        if let Some(Event::Refused { verb, reply, .. }) =
                            s.mail_decision(r.reply, "sender not owned")
                        {
                            ctx.reject(&s, verb, &reply, &r.reason, None);
                        }
                    }
                }
            }
            Event::Rcpt { to } => {
                let addr = to.to_string();
                let mut route = match shared.routing.decide(&to, s.authenticated().is_some()) {
                    RcptDecision::Local { mailbox } => Ok(Route::Local {
                        mailbox,
                        folder: Folder::Inbox,
                    }),
                    RcptDecision::Remote => Ok(Route::Remote),
                    RcptDecision::Refuse { reply, reason } => Err((reply, reason)),
                };
                // Screening acts here, late, so the one reject line names everything.
                let mut screened = None;
                if let Some(sc) = screen.as_mut() {
                    let mut refusal = sc.verdict(&shared, &s, &mut early, &ctx.session).await;
                    if refusal.is_none() && route.is_ok() {
                        let from = ctx.from.clone().unwrap_or_default();
                        refusal = sc
                            .greylist(&shared, &mut early, &from, &addr, &ctx.session)
                            .await;
                    }
                    if let Some(r) = refusal {
                        route = Err((r.reply, r.signal.reason.as_str()));
                        screened = Some(r.signal);
                    }
                }
                // Each recipient counts against the account's day when it is accepted, so
                // parallel sessions cannot all pass the limit at once.
                if route.is_ok()
                    && let Some(r) = ctx.reservation.as_mut()
                    && let Err(l) = shared.contain.detector.reserve_rcpt(r, &addr)
                {
                    if let Some(account) = s.authenticated() {
                        shared.contain.throttled(account, &l).await;
                    }
                    tracing::info!(event = "rate_limited", session = %ctx.session, rcpt = %addr, reason = %l.reason);
                    route = Err((replies::rate_limited(&l.reason), "recipient limit reached"));
                }
                match route {
                    Ok(route) => {
                        routed.push(Recipient {
                            idx: routed.len() as u32,
                            address: addr.clone(),
                            route,
                        });
                        ctx.rec.accepted_rcpt(&addr, &replies::RCPT_OK);
                        s.rcpt_decision(replies::RCPT_OK, "");
                    }
                    Err((reply, reason)) => {
                        if let Some(Event::Refused {
                            verb,
                            reply,
                            reason,
                        }) = s.rcpt_decision(reply, reason)
                        {
                            match &screened {
                                Some(sig) => {
                                    let text = format!("{}: {}", reason, sig.detail);
                                    let why = records::Reason {
                                        deciding: true,
                                        ..records::Reason::from(sig)
                                    };
                                    ctx.reject_as(&s, verb, &reply, &text, why, Some(&addr));
                                }
                                None => ctx.reject(&s, verb, &reply, reason, Some(&addr)),
                            }
                        }
                        // Guessing local addresses with a stolen account (BlockCracking).
                        if reason == "no such local user"
                            && kind != ListenerKind::Mx
                            && let Some(account) = s.authenticated().map(str::to_string)
                            && let Some(t) = shared.contain.detector.unknown_recipient(&account)
                        {
                            shared.contain.suspend(&account, t, &ctx.session).await;
                        }
                    }
                }
            }
            Event::Auth {
                mechanism,
                credentials,
            } => super::auth::attempt(&shared, ctx, &mut s, mechanism, credentials).await,
            Event::StartTls { discarded } => {
                // RFC 3207 §4.2: the transaction is forgotten, and so is its content.
                body.discard();
                if discarded > 0 {
                    tracing::warn!(event = "starttls_injection", session = %ctx.session, ip = %peer.ip(), discarded);
                }
                if !flush(stream, &mut s, cfg.smtp.idle_timeout.get()).await {
                    end_reason = "write failed";
                    break;
                }
                match upgrade(stream, &shared).await {
                    Ok(info) => {
                        tracing::debug!(event = "starttls", session = %ctx.session, tls = %info);
                        tls_info = Some(info);
                        s.tls_started();
                    }
                    Err(e) => {
                        tracing::info!(event = "tls_failed", session = %ctx.session, ip = %peer.ip(), error = %e);
                        end_reason = "tls failed";
                        break;
                    }
                }
            }
            Event::Message { flags } => {
                if let Some((reply, reason)) = s.content_refusal(&flags) {
                    body.discard();
                    ctx.reject(&s, Verb::Data, &reply, reason, None);
                    s.message_decision(reply);
                    continue;
                }
                let rcpt_list: Vec<String> = routed.iter().map(|r| r.address.clone()).collect();
                let mut notes = record::MessageDecision::default();
                let done = message::finish(
                    &shared,
                    ctx,
                    &s,
                    body,
                    std::mem::take(&mut routed),
                    tls_info.as_deref(),
                    flags.size,
                    &mut early,
                    &mut notes,
                )
                .await;
                let reply = done.reply;
                if !reply.is_positive() && !notes.reasons.iter().any(|r| r.deciding) {
                    let why = done.reason.as_deref().unwrap_or("refused");
                    let head = why.split_once(": ").map_or(why, |(h, _)| h);
                    notes
                        .reasons
                        .push(records::Reason::refusal("data", head, why));
                }
                ctx.rec.message(&reply, notes);
                // Whatever the queue did not take goes now, accepted (held in quarantine) or not.
                body.discard();
                if reply.is_positive() {
                    messages += 1;
                    metrics::counter!("mailwarden_messages_accepted_total", "listener" => kind.name())
                        .increment(1);
                    if let Some(r) = ctx.reservation.as_mut() {
                        shared.contain.detector.accepted(r, &rcpt_list);
                    }
                } else {
                    ctx.reject(
                        &s,
                        Verb::Data,
                        &reply,
                        done.reason.as_deref().unwrap_or("refused"),
                        None,
                    );
                }
                s.message_decision(reply);
                if let Some(r) = ctx.reservation.take() {
                    shared.contain.detector.release(r);
                }
                if let Some(r) = ctx.rec.take() {
                    record::spawn_save(&shared, r, screen.as_ref(), &early);
                }
                ctx.qid = None;
                ctx.from = None;
            }
            Event::Close => {
                let _ = flush(stream, &mut s, Duration::from_secs(5)).await;
                stream.shutdown().await;
                break;
            }
        }
    }
    body.discard();
    if let Some(r) = ctx.reservation.take() {
        shared.contain.detector.release(r);
    }
    if let Some(sc) = screen.as_mut() {
        sc.at_end(&shared, &s, &ctx.session).await;
    }
    if let Some(r) = ctx.rec.take() {
        record::spawn_save(&shared, r, screen.as_ref(), &early);
    }
    let c = s.counters();
    tracing::info!(
        event = "disconnect",
        session = %ctx.session,
        ip = %peer.ip(),
        reason = end_reason,
        messages,
        errors = c.errors,
        bare_lf_commands = c.bare_lf_commands,
        secs = started.elapsed().as_secs_f32(),
    );
}

async fn flush<IO: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut Stream<IO>,
    s: &mut Session,
    limit: Duration,
) -> bool {
    let out = s.take_output();
    if out.is_empty() {
        return true;
    }
    let ok = matches!(
        tokio::time::timeout(limit, stream.write_all(&out)).await,
        Ok(Ok(()))
    );
    // Hand the buffer back so its allocation is reused.
    let mut out = out;
    out.clear();
    *s.output() = out;
    ok
}

/// The refusal for a suspended account, if it is one. A store that cannot say answers
/// `451 4.3.0`: a suspension is never assumed away.
pub(super) fn suspension(
    shared: &Shared,
    account: &str,
) -> Option<crate::checks::ownership::Refusal> {
    match shared.contain.is_suspended(account) {
        Ok(false) => None,
        Ok(true) => Some(crate::checks::ownership::Refusal {
            reply: replies::ACCOUNT_SUSPENDED,
            reason: format!("account {account} is suspended"),
        }),
        Err(e) => {
            tracing::error!(event = "suspension_check_failed", account, error = %e);
            Some(crate::checks::ownership::Refusal {
                reply: replies::LOCAL_ERROR,
                reason: format!("cannot read the state of {account}: {e}"),
            })
        }
    }
}

/// Turn the plain stream into TLS in place; on failure nothing is left of it.
async fn upgrade<IO>(stream: &mut Stream<IO>, shared: &Shared) -> anyhow::Result<String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Stream::Plain(io) = std::mem::replace(stream, Stream::Gone) else {
        anyhow::bail!("TLS already active");
    };
    let acceptor = shared.tls.clone();
    let tls = tokio::time::timeout(
        shared.config.smtp.tls_handshake_timeout.get(),
        acceptor.accept(io),
    )
    .await
    .map_err(|_| anyhow::anyhow!("handshake timeout"))??;
    let info = super::tls::describe(tls.get_ref().1);
    *stream = Stream::Tls(Box::new(tls));
    Ok(info)
}
