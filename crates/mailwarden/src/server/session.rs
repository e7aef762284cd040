//! The session driver: a thin async loop of read, feed, write around the I/O-free
//! [`mailwarden_proto::session::Session`]. It answers the protocol core's events with policy
//! (routing and relay, AUTH, the queue) and owns the socket, TLS, timeouts and the body spool.
//!
//! Flow: listener → **session** → checks → queue. The session never delivers; it only hands
//! durable messages to the queue. The driver routes the core's events to the stages
//! (`stage.rs` for connect, MAIL and RCPT, `auth.rs`, `message.rs` for the end of DATA) and
//! acts on their decisions; every refusal is logged once, through `Ctx::reject`.

use super::body::BodySink;
use super::ctx::Ctx;
use super::early::Early;
use super::record::{self, Recorder};
use super::screen::Screen;
use super::shared::{ListenerKind, Shared};
use super::{message, stage};
use crate::decision::{Finding, Kind};
use crate::queue::Recipient;
use crate::util::new_id;
use mailwarden_proto::command::Verb;
use mailwarden_proto::data::ContentFlags;
use mailwarden_proto::session::{Event, InBuf, Session};
use mailwarden_proto::{Why, replies};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The connection, before and after TLS.
pub(super) enum Stream<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
    /// Lost in a failed TLS handshake.
    Gone,
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection gone")
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Stream<IO> {
    pub(super) async fn read_into(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
            Stream::Gone => Err(gone()),
        }
    }

    pub(super) async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
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

    pub(super) async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
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
    let _slot = match stage::connect(&shared, peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            let r = replies::TOO_MANY_CONNECTIONS;
            tracing::info!(event = "reject", session = %ctx.session, listener = kind.name(), ip = %peer.ip(),
                verb = "CONNECT", reply = %r, code = why.kind.code().as_ref(), reason = why.detail.as_str());
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
    let why = Finding::new(Kind::SessionPanic, panic).record(true);
    let rec = ctx.rec.abort(&reply, why, || crate::records::Record {
        id: new_id(),
        session: ctx.session.clone(),
        listener: kind.name().to_string(),
        ip: peer.ip().to_string(),
        ..Default::default()
    });
    record::spawn_save(&shared, rec, None);
    tracing::info!(event = "disconnect", session = %ctx.session, ip = %peer.ip(), reason = "panic",
        secs = started.elapsed().as_secs_f32());
}

/// One session's state between events.
struct Driver<'a, IO> {
    stream: &'a mut Stream<IO>,
    ctx: &'a mut Ctx,
    body: &'a mut BodySink,
    shared: Arc<Shared>,
    s: Session,
    inbuf: InBuf,
    early: Early,
    /// Screening, on the MX port.
    screen: Option<Screen>,
    /// The open transaction's accepted recipients.
    routed: Vec<Recipient>,
    tls_info: Option<String>,
    deadline: tokio::time::Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// When this transaction's MAIL came (its latency histogram).
    mail_at: Option<Instant>,
    messages: u32,
    end_reason: &'static str,
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
    let (kind, peer) = (ctx.listener, ctx.peer);
    let mut tls_info: Option<String> = None;
    if kind == ListenerKind::Submissions {
        match upgrade(stream, shared).await {
            Ok(info) => tls_info = Some(info),
            Err(e) => {
                tracing::info!(event = "tls_failed", session = %ctx.session, ip = %peer.ip(), error = %e);
                return;
            }
        }
    }
    let mut inbuf = InBuf::with_capacity(1024);
    // Started now, so their DNS answers come while pregreet waits.
    let early = Early::at_connect(shared, kind, peer.ip());
    let mut screen = (kind == ListenerKind::Mx).then(|| Screen::at_connect(shared, peer, local));
    if let (Some(sc), Stream::Plain(io)) = (screen.as_mut(), &mut *stream) {
        let mut talked = Vec::new();
        if !sc.pregreet(shared, io, &ctx.session, &mut talked).await {
            return;
        }
        inbuf.extend(&talked);
    }
    let mut d = Driver {
        s: Session::new(shared.session_config(kind)),
        early,
        deadline: tokio::time::Instant::now() + shared.config.smtp.max_session_time.get(),
        shutdown: shared.shutdown.clone(),
        shared: shared.clone(),
        stream,
        ctx,
        body,
        inbuf,
        screen,
        routed: Vec::new(),
        tls_info,
        mail_at: None,
        messages: 0,
        end_reason: "quit",
    };
    d.s.greet();
    // An event the core answered a decision with, handled before reading on.
    let mut next = None;
    loop {
        if !d.s.in_data() {
            d.s.set_storage_low(d.shared.free_space.is_low());
        }
        let ev = match next.take() {
            Some(ev) => ev,
            None => d.s.poll(&mut d.inbuf, &mut d.body.buf),
        };
        match ev {
            Event::Grant => next = Some(d.on_grant()),
            Event::NeedInput => {
                if !d.read_more().await {
                    break;
                }
            }
            ev @ Event::Refused { .. } => d.ctx.refused_by_core(&d.s, ev),
            Event::Mail { from, params: _ } => d.on_mail(from.to_string()).await,
            Event::Rcpt { to } => d.on_rcpt(to).await,
            Event::Auth {
                mechanism,
                credentials,
            } => {
                super::auth::attempt(&d.shared, d.ctx, &mut d.s, mechanism, credentials).await;
                // The password went through the input buffer: leave nothing of it there.
                d.inbuf.scrub();
            }
            Event::StartTls { discarded } => {
                if !d.on_starttls(discarded).await {
                    break;
                }
            }
            Event::Message { flags } => d.on_message(flags).await,
            Event::Close => {
                let _ = flush(d.stream, &mut d.s, Duration::from_secs(5)).await;
                d.stream.shutdown().await;
                break;
            }
        }
    }
    d.finish(started).await;
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<'_, IO> {
    /// Flush, then wait for the client (spilling a large message to its spool file first).
    /// False: the session is over.
    async fn read_more(&mut self) -> bool {
        let cfg = &self.shared.config;
        if self.s.in_data() {
            let q = self.shared.queue.clone();
            let id = self.ctx.qid.clone().unwrap_or_else(new_id);
            if let Err(e) = self.body.spill_if_large(|| q.spool_path(&id)).await {
                tracing::error!(event = "spool_failed", session = %self.ctx.session, error = %e);
                self.s.close_with(&replies::LOCAL_ERROR);
                self.end_reason = "spool error";
                return true;
            }
        } else {
            self.inbuf.shrink(4096);
        }
        if self.s.has_output()
            && !flush(self.stream, &mut self.s, cfg.smtp.idle_timeout.get()).await
        {
            self.end_reason = "write failed";
            return false;
        }
        let (wait, reserve) = if self.s.in_data() {
            (cfg.smtp.data_timeout.get(), 64 * 1024)
        } else {
            (cfg.smtp.idle_timeout.get(), 1024)
        };
        tokio::select! {
            r = tokio::time::timeout(wait, self.stream.read_into(self.inbuf.for_read(reserve))) => match r {
                Err(_) => {
                    self.s.close_with(&replies::TIMEOUT);
                    self.end_reason = "timeout";
                }
                Ok(Ok(0)) => {
                    self.end_reason = if self.s.in_data() { "disconnect in DATA" } else { "disconnect" };
                    return false;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(event = "read_error", session = %self.ctx.session, error = %e);
                    self.end_reason = "read error";
                    return false;
                }
            },
            _ = self.shutdown.changed() => {
                self.s.close_with(&replies::SHUTTING_DOWN);
                self.end_reason = "shutdown";
            }
            _ = tokio::time::sleep_until(self.deadline) => {
                self.s.close_with(&replies::SESSION_TOO_LONG);
                self.end_reason = "session time limit";
            }
        }
        true
    }

    /// End the open transaction: screening's findings its record does not hold yet join it
    /// (as evidence only: found after its RCPTs, they decided nothing of it), and it is
    /// saved in the background.
    fn end_transaction(&mut self) {
        if let Some(sc) = &self.screen {
            self.ctx
                .rec
                .note_screen(sc.version(), false, || sc.reasons());
        }
        if let Some(r) = self.ctx.rec.take() {
            record::spawn_save(&self.shared, r, self.early.ptr());
        }
    }

    /// MAIL without AUTH on a submission port, with POP-before-SMTP on: the account this
    /// address may send as now, if any (`grants.rs`). Asked at every MAIL, so the window, a
    /// suspension or a password change ends it between two messages.
    fn on_grant(&mut self) -> Event {
        let shared = &self.shared;
        let ip = self.ctx.peer.ip();
        let found = stage::granted(shared, ip);
        match found {
            Ok(account) => {
                tracing::info!(event = "pop_before_smtp", session = %self.ctx.session, ip = %ip, user = %account);
                self.s.grant_decision(Some(account))
            }
            Err(why) => {
                // The 530 that follows is the one refusal line; this says why.
                tracing::debug!(event = "pop_before_smtp_none", session = %self.ctx.session, ip = %ip, reason = why);
                self.s.grant_decision(None)
            }
        }
    }

    async fn on_mail(&mut self, from: String) {
        let shared = self.shared.clone();
        let (kind, peer) = (self.ctx.listener, self.ctx.peer);
        // A new transaction: forget anything an abandoned one left behind.
        self.body.discard();
        self.routed.clear();
        self.ctx.qid = Some(new_id());
        self.mail_at = Some(Instant::now());
        self.ctx.from = Some(from.clone());
        let base = crate::records::Record {
            id: self.ctx.qid.clone().unwrap_or_default(),
            session: self.ctx.session.clone(),
            listener: kind.name().to_string(),
            ip: peer.ip().to_string(),
            helo: self.s.helo().unwrap_or("").to_string(),
            tls: self.tls_info.clone(),
            account: self.s.authenticated().map(str::to_string),
            mail_from: from.clone(),
            ..Default::default()
        };
        self.end_transaction();
        self.ctx.rec.start(base);
        if self.s.granted() {
            let why = Finding::new(
                Kind::AuthPopBeforeSmtp,
                format!(
                    "no AUTH: a POP3 login from {} within pop_before_smtp.window",
                    peer.ip()
                ),
            );
            self.ctx.rec.note(vec![why.record(false)], None);
        }
        let helo = self.s.helo().unwrap_or("").to_string();
        if let Some(sc) = self.screen.as_mut() {
            sc.at_mail(&shared, &helo, &from);
        }
        if kind == ListenerKind::Mx && self.s.authenticated().is_none() {
            self.early.at_mail(&shared, peer.ip(), &helo, &from);
        }
        // A transaction that never became a message gives its reservation back.
        if let Some(r) = self.ctx.reservation.take() {
            shared.contain.detector.release(r);
        }
        match stage::mail(&shared, self.ctx, &self.s, &from).await {
            None => {
                let ev = self.s.mail_decision(replies::MAIL_OK);
                if let Some(ev) = ev {
                    self.ctx.refused_by_core(&self.s, ev);
                }
            }
            Some(why) => {
                let reply = why.refusal.clone().unwrap_or(replies::LOCAL_ERROR);
                let ev = self.s.mail_decision(reply);
                self.ctx.refuse_with(&self.s, ev, &why, None);
            }
        }
    }

    async fn on_rcpt(&mut self, to: mailwarden_proto::address::ForwardPath) {
        let shared = self.shared.clone();
        let addr = to.to_string();
        let routed = stage::rcpt(
            &shared,
            self.ctx,
            &self.s,
            self.screen.as_mut(),
            &mut self.early,
            &to,
        )
        .await;
        match routed {
            Ok(route) => {
                self.routed.push(Recipient {
                    idx: self.routed.len() as u32,
                    address: addr.clone(),
                    route,
                });
                self.ctx.rec.accepted_rcpt(&addr, &replies::RCPT_OK);
                self.s.rcpt_decision(replies::RCPT_OK);
            }
            Err(why) => {
                let reply = why.refusal.clone().unwrap_or(replies::LOCAL_ERROR);
                let ev = self.s.rcpt_decision(reply);
                self.ctx.refuse_with(&self.s, ev, &why, Some(&addr));
                stage::rcpt_refused(&shared, self.ctx, &self.s, &why).await;
            }
        }
    }

    /// STARTTLS: false when the handshake failed and the session is over.
    async fn on_starttls(&mut self, discarded: usize) -> bool {
        // RFC 3207 §4.2: the transaction is forgotten, and so is its content.
        self.body.discard();
        if discarded > 0 {
            tracing::warn!(event = "starttls_injection", session = %self.ctx.session, ip = %self.ctx.peer.ip(), discarded);
        }
        if !flush(
            self.stream,
            &mut self.s,
            self.shared.config.smtp.idle_timeout.get(),
        )
        .await
        {
            self.end_reason = "write failed";
            return false;
        }
        match upgrade(self.stream, &self.shared).await {
            Ok(info) => {
                tracing::debug!(event = "starttls", session = %self.ctx.session, tls = %info);
                self.tls_info = Some(info);
                self.s.tls_started();
                true
            }
            Err(e) => {
                tracing::info!(event = "tls_failed", session = %self.ctx.session, ip = %self.ctx.peer.ip(), error = %e);
                self.end_reason = "tls failed";
                false
            }
        }
    }

    async fn on_message(&mut self, flags: ContentFlags) {
        let shared = self.shared.clone();
        if let Some((reply, why)) = self.s.content_refusal(&flags) {
            self.body.discard();
            let f = Finding::new(Kind::Protocol(Verb::Data, why), why.text());
            self.ctx.reject(&self.s, Verb::Data, &reply, &f, None);
            self.s.message_decision(reply);
            return;
        }
        let rcpt_list: Vec<String> = self.routed.iter().map(|r| r.address.clone()).collect();
        let data_started = Instant::now();
        let arrived = message::Arrived {
            rcpts: std::mem::take(&mut self.routed),
            tls: self.tls_info.as_deref(),
            size: flags.size,
        };
        let done = message::finish(
            &shared,
            self.ctx,
            &self.s,
            self.body,
            &mut self.early,
            arrived,
        )
        .await;
        let reply = done.reply;
        let listener = self.ctx.listener.name();
        metrics::histogram!("mailwarden_smtp_end_of_data_seconds", "listener" => listener)
            .record(data_started.elapsed().as_secs_f64());
        if let Some(t) = self.mail_at.take() {
            metrics::histogram!("mailwarden_smtp_transaction_seconds", "listener" => listener)
                .record(t.elapsed().as_secs_f64());
        }
        self.ctx.rec.message(&reply, done.notes);
        // Whatever the queue did not take goes now, accepted (held in quarantine) or not.
        self.body.discard();
        if reply.is_positive() {
            self.messages += 1;
            metrics::counter!("mailwarden_messages_accepted_total", "listener" => self.ctx.listener.name())
                .increment(1);
            if let Some(r) = self.ctx.reservation.as_mut() {
                shared.contain.detector.accepted(r, &rcpt_list);
            }
        } else {
            let why = done.refused.unwrap_or_else(|| {
                Finding::new(Kind::Protocol(Verb::Data, Why::Policy), "refused")
            });
            self.ctx.reject(&self.s, Verb::Data, &reply, &why, None);
        }
        self.s.message_decision(reply);
        if let Some(r) = self.ctx.reservation.take() {
            shared.contain.detector.release(r);
        }
        self.end_transaction();
        self.ctx.qid = None;
        self.ctx.from = None;
    }

    /// The session is over: release what it holds, save the open record, log the end.
    async fn finish(mut self, started: Instant) {
        let shared = self.shared.clone();
        self.body.discard();
        if let Some(r) = self.ctx.reservation.take() {
            shared.contain.detector.release(r);
        }
        if let Some(sc) = self.screen.as_mut() {
            sc.at_end(&shared, &self.s, &self.ctx.session).await;
        }
        self.end_transaction();
        let c = self.s.counters();
        tracing::info!(
            event = "disconnect",
            session = %self.ctx.session,
            ip = %self.ctx.peer.ip(),
            reason = self.end_reason,
            messages = self.messages,
            errors = c.errors,
            bare_lf_commands = c.bare_lf_commands,
            secs = started.elapsed().as_secs_f32(),
        );
    }
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

/// Turn the plain stream into TLS in place; on failure nothing is left of it.
pub(super) async fn upgrade<IO>(stream: &mut Stream<IO>, shared: &Shared) -> anyhow::Result<String>
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
    .map_err(|_| anyhow::anyhow!("handshake timeout"))
    .and_then(|r| r.map_err(anyhow::Error::from));
    crate::metrics::tls_handshake("inbound", tls.is_ok());
    let tls = tls?;
    let info = super::tls::describe(tls.get_ref().1);
    *stream = Stream::Tls(Box::new(tls));
    Ok(info)
}
