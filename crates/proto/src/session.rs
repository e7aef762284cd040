//! The SMTP server session as a state machine with no I/O (RFC 5321 §3, §4.1.4; RFC 2920
//! PIPELINING; RFC 3207 STARTTLS; RFC 4954 AUTH; RFC 3030 CHUNKING).
//!
//! The driver owns the socket. It feeds bytes through [`InBuf`], calls [`Session::poll`], writes
//! what [`Session::take_output`] returns, and answers the events that need policy (MAIL, RCPT,
//! AUTH, the finished message) with a decision. Sequencing, parsing and every client-controlled
//! limit (line length, size, recipients, errors, junk commands, transactions, auth failures)
//! are enforced here, so they hold for every listener and are tested without sockets.
//!
//! Security: bytes pipelined after STARTTLS are discarded (CVE-2011-0411) and all EHLO, AUTH
//! and transaction state is forgotten. AUTH is refused before TLS. Passwords only travel inside
//! [`Credentials`].

use crate::address::{ForwardPath, ReversePath};
use crate::command::{self, Command, CommandError, MailParams, Verb};
use crate::data::{BareLf, ChunkChecker, ContentFlags, DataReader};
use crate::refusal::Why;
use crate::replies;
use crate::reply::Reply;
use crate::sasl::{self, Credentials, Mechanism, SaslError};

/// Client-controlled limits. Defaults follow RFC 5321 §4.5.3.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Command line including CRLF (RFC 5321 §4.5.3.1.4).
    pub command_line: usize,
    /// AUTH response line (RFC 4954 §4 allows 12288).
    pub auth_line: usize,
    /// Text line of message content including CRLF (RFC 5321 §4.5.3.1.6).
    pub text_line: usize,
    pub message_size: u64,
    pub recipients: usize,
    /// Error replies before `421` and close.
    pub errors: u32,
    /// NOOP, RSET, VRFY, HELP, EXPN, HELO/EHLO and empty BDAT chunks before `421`.
    pub junk_commands: u32,
    pub transactions: u32,
    pub auth_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command_line: 512,
            auth_line: 12288,
            text_line: 1000,
            message_size: 25 * 1024 * 1024,
            recipients: 100,
            errors: 10,
            junk_commands: 100,
            transactions: 1000,
            auth_failures: 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub limits: Limits,
    /// STARTTLS can be offered (a certificate is loaded and TLS is not already on).
    pub tls_available: bool,
    /// The connection began with TLS (implicit TLS, RFC 8314).
    pub tls_at_start: bool,
    /// AUTH is advertised on this listener (after TLS).
    pub auth_offered: bool,
    /// MAIL requires a successful AUTH (submission).
    pub auth_required: bool,
    pub bare_lf: BareLf,
    /// A non-SMTP command (an HTTP request line, say) closes the session at once with
    /// `554 5.5.1` instead of counting as one more error.
    pub close_on_non_smtp: bool,
    /// MAIL without AUTH, under TLS, asks the driver for an identity granted some other way
    /// (POP-before-SMTP) with [`Event::Grant`] instead of being refused at once.
    pub grants: bool,
}

/// Input buffer shared by the driver (which appends) and the session (which consumes).
#[derive(Debug, Default)]
pub struct InBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl InBuf {
    pub fn with_capacity(n: usize) -> InBuf {
        InBuf {
            buf: Vec::with_capacity(n),
            pos: 0,
        }
    }

    pub fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    pub fn clear(&mut self) -> usize {
        let n = self.buf.len() - self.pos;
        self.buf.clear();
        self.pos = 0;
        n
    }

    /// The vector to read into: consumed bytes are dropped first, then at least `reserve`
    /// bytes of spare capacity are made available.
    pub fn for_read(&mut self, reserve: usize) -> &mut Vec<u8> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(reserve);
        &mut self.buf
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.for_read(bytes.len()).extend_from_slice(bytes);
    }

    /// Zero every byte already consumed (and the spare capacity they may have been moved
    /// into), keeping the unread ones: after a password went through.
    pub fn scrub(&mut self) {
        self.for_read(0);
        let len = self.buf.len();
        self.buf.resize(self.buf.capacity(), 0);
        self.buf.truncate(len);
    }

    /// Give memory back after a large message, keeping unread bytes.
    pub fn shrink(&mut self, keep: usize) {
        if self.buf.capacity() > keep && self.buf.len() - self.pos <= keep {
            self.for_read(0);
            self.buf.shrink_to(keep);
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// A line [`take_line`] took.
pub(crate) struct Taken {
    /// Over the limit: discarded to its end, and `line` left as it was.
    pub too_long: bool,
    /// It ended in CRLF (else a bare LF).
    pub crlf: bool,
}

/// Take the next complete line out of `inbuf` into `line`, without its ending. A line longer
/// than `limit` is discarded to its end, however many reads that takes (`discarding` carries
/// it across calls), and reported once, so a client cannot make us buffer more than `limit`.
/// `None`: no complete line yet. Shared by the SMTP and POP3 cores.
pub(crate) fn take_line(
    inbuf: &mut InBuf,
    limit: usize,
    line: &mut Vec<u8>,
    discarding: &mut bool,
) -> Option<Taken> {
    let data = inbuf.unread();
    match memchr::memchr(b'\n', data) {
        Some(i) => {
            let was_discarding = std::mem::replace(discarding, false);
            let crlf = i > 0 && data[i - 1] == b'\r';
            let end = if crlf { i - 1 } else { i };
            let too_long = was_discarding || i + 1 > limit;
            if !too_long {
                line.clear();
                line.extend_from_slice(&data[..end]);
            }
            inbuf.consume(i + 1);
            Some(Taken { too_long, crlf })
        }
        None => {
            if data.len() >= limit {
                *discarding = true;
                inbuf.clear();
            }
            None
        }
    }
}

/// The envelope of the transaction in progress.
#[derive(Debug)]
pub struct Transaction {
    pub mail_from: ReversePath,
    pub params: MailParams,
    pub rcpts: Vec<ForwardPath>,
    chunks: Option<ChunkChecker>,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Event {
    /// Every complete input was handled: flush the output, then read more.
    NeedInput,
    /// The session sent a refusal of its own (already in the output). Log it.
    Refused {
        verb: Verb,
        reply: Reply,
        reason: Why,
    },
    /// Decide with [`Session::mail_decision`].
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    /// Decide with [`Session::rcpt_decision`].
    Rcpt { to: ForwardPath },
    /// MAIL without AUTH where grants are on: answer with [`Session::grant_decision`], whose
    /// event is handled next.
    Grant,
    /// Verify, then call [`Session::auth_succeeded`] or [`Session::auth_failed`].
    Auth {
        mechanism: Mechanism,
        credentials: Credentials,
    },
    /// `220` is in the output: flush it, discard nothing else, hand over to TLS, then call
    /// [`Session::tls_started`]. `discarded` bytes were pipelined after STARTTLS and dropped.
    StartTls { discarded: usize },
    /// The message content is complete in the body buffer. Decide with
    /// [`Session::message_decision`].
    Message { flags: ContentFlags },
    /// Flush the output and close the connection.
    Close,
}

#[derive(Debug)]
enum State {
    Command,
    Data(DataReader),
    Bdat {
        remaining: u64,
        last: bool,
        /// Read the chunk, then send this instead of accepting it.
        refuse: Option<(Reply, Why)>,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass(String),
    Awaiting(Pending),
}

#[derive(Debug)]
enum Pending {
    Mail(ReversePath, MailParams),
    Grant(ReversePath, MailParams),
    Rcpt(ForwardPath),
    Auth,
    Message,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub errors: u32,
    pub junk: u32,
    pub transactions: u32,
    pub auth_failures: u32,
    pub bare_lf_commands: u32,
    /// Commands that arrived with more input behind them although PIPELINING was not
    /// offered (before EHLO, or after HELO): RFC 2920 §3.1 says wait for each reply.
    pub unauthorized_pipelining: u32,
    pub non_smtp_commands: u32,
}

pub struct Session {
    cfg: SessionConfig,
    state: State,
    helo: Option<(String, bool)>,
    tls: bool,
    auth: Option<String>,
    /// `auth` was granted by the driver ([`Event::Grant`]), not by AUTH: asked again at each
    /// MAIL, and AUTH may still replace it.
    granted: bool,
    txn: Option<Transaction>,
    counters: Counters,
    out: Vec<u8>,
    line: Vec<u8>,
    discarding_line: bool,
    closing: bool,
    /// The spool's filesystem is nearly full: DATA and BDAT get `452 4.3.1`.
    storage_low: bool,
}

enum Line {
    Complete,
    TooLong,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        let tls = cfg.tls_at_start;
        Session {
            cfg,
            state: State::Command,
            helo: None,
            tls,
            auth: None,
            granted: false,
            txn: None,
            counters: Counters::default(),
            out: Vec::with_capacity(256),
            line: Vec::new(),
            discarding_line: false,
            closing: false,
            storage_low: false,
        }
    }

    /// Tell the session whether the spool's filesystem has room for messages. While it does
    /// not, DATA and the first BDAT of a message are refused with `452 4.3.1`, so nothing is
    /// half written. The driver decides MAIL itself.
    pub fn set_storage_low(&mut self, low: bool) {
        self.storage_low = low;
    }

    /// Queue the `220` banner.
    pub fn greet(&mut self) {
        let r = replies::greeting(&self.cfg.hostname);
        self.send(&r);
    }

    /// Queue a final reply (timeout, shutdown, connection limit) and close.
    pub fn close_with(&mut self, reply: &Reply) {
        self.send(reply);
        self.closing = true;
    }

    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|(h, _)| h.as_str())
    }

    pub fn esmtp(&self) -> bool {
        self.helo.as_ref().is_some_and(|(_, e)| *e)
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn authenticated(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// The identity came from a grant (POP-before-SMTP), not from AUTH.
    pub fn granted(&self) -> bool {
        self.granted
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.txn.as_ref()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Write-side buffer for drivers that want to reuse allocations.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    fn send(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    /// Send an error reply, count it, and close after too many.
    fn refuse(&mut self, verb: Verb, reply: Reply, reason: Why) -> Event {
        self.send(&reply);
        self.counters.errors += 1;
        if self.counters.errors >= self.cfg.limits.errors && !self.closing {
            self.close_with(&replies::TOO_MANY_ERRORS);
        }
        Event::Refused {
            verb,
            reply,
            reason,
        }
    }

    fn junk(&mut self) -> bool {
        self.counters.junk += 1;
        if self.counters.junk > self.cfg.limits.junk_commands {
            self.close_with(&replies::TOO_MANY_COMMANDS);
            return true;
        }
        false
    }

    /// Take the next complete line out of `inbuf` into `self.line`.
    fn next_line(&mut self, inbuf: &mut InBuf, limit: usize) -> Option<Line> {
        let t = take_line(inbuf, limit, &mut self.line, &mut self.discarding_line)?;
        if !t.crlf {
            self.counters.bare_lf_commands += 1;
        }
        Some(if t.too_long {
            Line::TooLong
        } else {
            Line::Complete
        })
    }

    /// Advance until an event needs the driver. Message content is appended to `body`.
    pub fn poll(&mut self, inbuf: &mut InBuf, body: &mut Vec<u8>) -> Event {
        loop {
            if self.closing {
                return Event::Close;
            }
            match &mut self.state {
                State::Awaiting(_) => {
                    // The driver owes a decision; nothing may be read until then.
                    debug_assert!(false, "poll() while a decision is pending");
                    self.closing = true;
                    return Event::Close;
                }
                State::Data(reader) => {
                    let (n, done) = reader.feed(inbuf.unread(), body);
                    inbuf.consume(n);
                    if !done {
                        return Event::NeedInput;
                    }
                    let flags = reader.flags();
                    self.state = State::Awaiting(Pending::Message);
                    return Event::Message { flags };
                }
                State::Bdat {
                    remaining,
                    last,
                    refuse,
                } => {
                    let avail = inbuf.unread();
                    let take = (*remaining).min(avail.len() as u64) as usize;
                    if refuse.is_none()
                        && let Some(chk) = self.txn.as_mut().and_then(|t| t.chunks.as_mut())
                    {
                        chk.feed(&avail[..take], body);
                    }
                    inbuf.consume(take);
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return Event::NeedInput;
                    }
                    let last = *last;
                    let refuse = refuse.take();
                    self.state = State::Command;
                    if let Some((reply, reason)) = refuse {
                        self.txn = None;
                        return self.refuse(Verb::Bdat, reply, reason);
                    }
                    if last {
                        let flags = match self.txn.as_mut().and_then(|t| t.chunks.as_mut()) {
                            Some(chk) => chk.finish(body),
                            None => ContentFlags::default(),
                        };
                        self.state = State::Awaiting(Pending::Message);
                        return Event::Message { flags };
                    }
                    let size = self
                        .txn
                        .as_ref()
                        .and_then(|t| t.chunks.as_ref())
                        .map(|c| c.size())
                        .unwrap_or(0);
                    let r = replies::chunk_received(size);
                    self.send(&r);
                    continue;
                }
                State::AuthPlain | State::AuthLoginUser | State::AuthLoginPass(_) => {
                    match self.next_line(inbuf, self.cfg.limits.auth_line) {
                        None => return Event::NeedInput,
                        Some(Line::TooLong) => {
                            self.state = State::Command;
                            return self.refuse(
                                Verb::Auth,
                                replies::LINE_TOO_LONG,
                                Why::AuthLineTooLong,
                            );
                        }
                        Some(Line::Complete) => {
                            if let Some(ev) = self.auth_response() {
                                return ev;
                            }
                            continue;
                        }
                    }
                }
                State::Command => {}
            }
            match self.next_line(inbuf, self.cfg.limits.command_line) {
                None => return Event::NeedInput,
                Some(Line::TooLong) => {
                    return self.refuse(
                        Verb::Unknown,
                        replies::LINE_TOO_LONG,
                        Why::CommandLineTooLong,
                    );
                }
                Some(Line::Complete) => {
                    if !inbuf.unread().is_empty() && !matches!(self.helo, Some((_, true))) {
                        self.counters.unauthorized_pipelining += 1;
                    }
                    let parsed = command::parse(&self.line);
                    if let Some(ev) = self.command(parsed, inbuf) {
                        return ev;
                    }
                }
            }
        }
    }

    fn command(
        &mut self,
        parsed: Result<Command, CommandError>,
        inbuf: &mut InBuf,
    ) -> Option<Event> {
        let cmd = match parsed {
            Ok(c) => c,
            Err(e) => {
                let (verb, reply, reason) = match e {
                    CommandError::Unrecognized => (
                        Verb::Unknown,
                        replies::UNRECOGNIZED,
                        Why::UnrecognizedCommand,
                    ),
                    CommandError::NonSmtp => {
                        self.counters.non_smtp_commands += 1;
                        if self.cfg.close_on_non_smtp {
                            self.close_with(&replies::NON_SMTP_CLOSE);
                            return Some(Event::Refused {
                                verb: Verb::Unknown,
                                reply: replies::NON_SMTP_CLOSE,
                                reason: Why::NonSmtpCommand,
                            });
                        }
                        (Verb::Unknown, replies::NON_SMTP, Why::NonSmtpCommand)
                    }
                    CommandError::Encoding => {
                        (Verb::Unknown, replies::BAD_ENCODING, Why::CommandNotUtf8)
                    }
                    CommandError::Syntax(v) => (v, replies::SYNTAX, Why::SyntaxError),
                    CommandError::BadSender(crate::address::AddressError::NeedsUtf8) => {
                        (Verb::Mail, replies::NEEDS_SMTPUTF8, Why::NonAsciiSender)
                    }
                    CommandError::BadSender(_) => (Verb::Mail, replies::BAD_SENDER, Why::BadSender),
                    CommandError::BadRecipient(_) => {
                        (Verb::Rcpt, replies::BAD_RECIPIENT, Why::BadRecipient)
                    }
                    CommandError::UnsupportedParam(v) => {
                        (v, replies::UNSUPPORTED_PARAM, Why::UnsupportedParameter)
                    }
                };
                return Some(self.refuse(verb, reply, reason));
            }
        };
        match cmd {
            Command::Helo(name) => self.hello(name, false),
            Command::Ehlo(name) => self.hello(name, true),
            Command::Mail { from, params } => {
                if self.helo.is_none() {
                    return Some(self.refuse(Verb::Mail, replies::NEED_HELO, Why::MailBeforeHelo));
                }
                if self.txn.is_some() {
                    return Some(self.refuse(Verb::Mail, replies::NESTED_MAIL, Why::NestedMail));
                }
                if self.cfg.auth_required && (self.auth.is_none() || self.granted) {
                    if self.cfg.grants && self.tls {
                        self.state = State::Awaiting(Pending::Grant(from, params));
                        return Some(Event::Grant);
                    }
                    return Some(self.refuse(
                        Verb::Mail,
                        replies::AUTH_REQUIRED,
                        Why::MailWithoutAuth,
                    ));
                }
                Some(self.mail_checked(from, params))
            }
            Command::Rcpt { to } => {
                let Some(txn) = &self.txn else {
                    return Some(self.refuse(Verb::Rcpt, replies::NEED_MAIL, Why::RcptBeforeMail));
                };
                if txn.chunks.is_some() {
                    return Some(self.refuse(Verb::Rcpt, replies::NEED_MAIL, Why::RcptAfterBdat));
                }
                if !txn.params.smtputf8
                    && let ForwardPath::Mailbox(m) = &to
                    && !m.is_ascii()
                {
                    return Some(self.refuse(
                        Verb::Rcpt,
                        replies::NEEDS_SMTPUTF8,
                        Why::NonAsciiRecipient,
                    ));
                }
                if txn.rcpts.len() >= self.cfg.limits.recipients {
                    return Some(self.refuse(
                        Verb::Rcpt,
                        replies::TOO_MANY_RCPTS,
                        Why::RecipientLimit,
                    ));
                }
                self.state = State::Awaiting(Pending::Rcpt(to.clone()));
                Some(Event::Rcpt { to })
            }
            Command::Data => {
                let Some(txn) = &self.txn else {
                    return Some(self.refuse(Verb::Data, replies::NEED_MAIL, Why::DataBeforeMail));
                };
                if txn.chunks.is_some() {
                    return Some(self.refuse(
                        Verb::Data,
                        replies::BDAT_THEN_DATA,
                        Why::DataAfterBdat,
                    ));
                }
                if txn.rcpts.is_empty() {
                    return Some(self.refuse(
                        Verb::Data,
                        replies::NO_VALID_RCPT,
                        Why::DataWithoutRecipients,
                    ));
                }
                if self.storage_low {
                    return Some(self.refuse(Verb::Data, replies::NO_STORAGE, Why::StorageLow));
                }
                self.send(&replies::START_DATA);
                let l = &self.cfg.limits;
                self.state = State::Data(DataReader::new(
                    l.message_size,
                    l.text_line,
                    self.cfg.bare_lf,
                ));
                None
            }
            Command::Bdat { size, last } => {
                let refuse = match &mut self.txn {
                    None => Some((replies::NEED_MAIL, Why::BdatBeforeMail)),
                    Some(t) if t.rcpts.is_empty() => {
                        Some((replies::NO_VALID_RCPT, Why::BdatWithoutRecipients))
                    }
                    Some(t) if t.chunks.is_none() && self.storage_low => {
                        Some((replies::NO_STORAGE, Why::StorageLow))
                    }
                    Some(t) => {
                        let l = &self.cfg.limits;
                        let chk = t.chunks.get_or_insert_with(|| {
                            ChunkChecker::new(l.message_size, l.text_line, self.cfg.bare_lf)
                        });
                        if chk.size().saturating_add(size) > l.message_size {
                            Some((replies::SIZE_EXCEEDED, Why::BdatOverSizeLimit))
                        } else {
                            None
                        }
                    }
                };
                if size == 0 && !last && refuse.is_none() && self.junk() {
                    return None;
                }
                self.state = State::Bdat {
                    remaining: size,
                    last,
                    refuse,
                };
                None
            }
            Command::Rset => {
                if !self.junk() {
                    self.txn = None;
                    self.send(&replies::RESET);
                }
                None
            }
            Command::Noop => {
                if !self.junk() {
                    self.send(&replies::OK);
                }
                None
            }
            Command::Help => {
                if !self.junk() {
                    self.send(&replies::HELP);
                }
                None
            }
            Command::Vrfy => {
                if !self.junk() {
                    self.send(&replies::VRFY);
                }
                None
            }
            Command::Expn => {
                if !self.junk() {
                    self.send(&replies::EXPN);
                }
                None
            }
            Command::Quit => {
                self.send(&replies::BYE);
                self.closing = true;
                None
            }
            Command::StartTls => {
                if self.tls {
                    return Some(self.refuse(
                        Verb::StartTls,
                        replies::TLS_ACTIVE,
                        Why::StartTlsUnderTls,
                    ));
                }
                if !self.cfg.tls_available {
                    return Some(self.refuse(
                        Verb::StartTls,
                        replies::TLS_UNAVAILABLE,
                        Why::NoTlsConfigured,
                    ));
                }
                self.send(&replies::START_TLS);
                // RFC 3207 §4.2: forget everything learnt before TLS, including pipelined input.
                let discarded = inbuf.clear();
                self.helo = None;
                self.txn = None;
                self.auth = None;
                self.granted = false;
                Some(Event::StartTls { discarded })
            }
            Command::Auth { mechanism, initial } => self.auth_command(&mechanism, initial),
        }
    }

    fn hello(&mut self, name: String, esmtp: bool) -> Option<Event> {
        if self.junk() {
            return None;
        }
        // RFC 5321 §4.1.4: HELO/EHLO resets any transaction.
        self.txn = None;
        let reply = if esmtp {
            self.ehlo_reply()
        } else {
            replies::helo(&self.cfg.hostname)
        };
        self.helo = Some((name, esmtp));
        self.send(&reply);
        None
    }

    fn ehlo_reply(&self) -> Reply {
        let mut t = format!(
            "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
            self.cfg.hostname, self.cfg.limits.message_size
        );
        if self.cfg.tls_available && !self.tls {
            t.push_str("\nSTARTTLS");
        }
        if self.cfg.auth_offered && self.tls && (self.auth.is_none() || self.granted) {
            t.push_str("\nAUTH PLAIN LOGIN");
        }
        Reply::owned(250, None, t)
    }

    fn auth_command(&mut self, mechanism: &str, initial: Option<String>) -> Option<Event> {
        if !self.cfg.auth_offered {
            return Some(self.refuse(Verb::Auth, replies::AUTH_NOT_OFFERED, Why::AuthNotOffered));
        }
        if !self.tls {
            return Some(self.refuse(Verb::Auth, replies::AUTH_NEEDS_TLS, Why::AuthBeforeTls));
        }
        if self.helo.is_none() {
            return Some(self.refuse(Verb::Auth, replies::NEED_HELO, Why::AuthBeforeEhlo));
        }
        if self.auth.is_some() && !self.granted {
            return Some(self.refuse(Verb::Auth, replies::AUTH_ALREADY, Why::SecondAuth));
        }
        if self.txn.is_some() {
            return Some(self.refuse(Verb::Auth, replies::AUTH_IN_TXN, Why::AuthInTransaction));
        }
        let Some(mech) = Mechanism::parse(mechanism) else {
            return Some(self.refuse(Verb::Auth, replies::AUTH_MECHANISM, Why::UnknownMechanism));
        };
        match (mech, initial) {
            (Mechanism::Plain, Some(resp)) => self.finish_plain(resp.as_bytes()),
            (Mechanism::Plain, None) => {
                self.send(&replies::auth_challenge(""));
                self.state = State::AuthPlain;
                None
            }
            (Mechanism::Login, Some(user)) => {
                match sasl::decode_response(user.as_bytes()).and_then(sasl::utf8_username) {
                    Ok(u) => {
                        self.send(&replies::auth_challenge(&sasl::encode("Password:")));
                        self.state = State::AuthLoginPass(u);
                        None
                    }
                    Err(e) => Some(self.sasl_error(e)),
                }
            }
            (Mechanism::Login, None) => {
                self.send(&replies::auth_challenge(&sasl::encode("Username:")));
                self.state = State::AuthLoginUser;
                None
            }
        }
    }

    fn auth_response(&mut self) -> Option<Event> {
        let line = std::mem::take(&mut self.line);
        let state = std::mem::replace(&mut self.state, State::Command);
        let ev = match state {
            State::AuthPlain => self.finish_plain(&line),
            State::AuthLoginUser => {
                match sasl::decode_response(&line).and_then(sasl::utf8_username) {
                    Ok(u) => {
                        self.send(&replies::auth_challenge(&sasl::encode("Password:")));
                        self.state = State::AuthLoginPass(u);
                        None
                    }
                    Err(e) => Some(self.sasl_error(e)),
                }
            }
            State::AuthLoginPass(username) => match sasl::decode_response(&line) {
                Ok(pw) if !pw.is_empty() => {
                    self.state = State::Awaiting(Pending::Auth);
                    Some(Event::Auth {
                        mechanism: Mechanism::Login,
                        credentials: Credentials {
                            username,
                            password: sasl::Secret::new(pw),
                        },
                    })
                }
                Ok(_) => Some(self.sasl_error(SaslError::Malformed)),
                Err(e) => Some(self.sasl_error(e)),
            },
            other => {
                self.state = other;
                None
            }
        };
        // The line may have held a password: scrub it before reuse.
        let mut line = line;
        zeroize::Zeroize::zeroize(&mut line);
        self.line = line;
        ev
    }

    fn finish_plain(&mut self, resp: &[u8]) -> Option<Event> {
        match sasl::decode_response(resp).and_then(sasl::parse_plain) {
            Ok(credentials) => {
                self.state = State::Awaiting(Pending::Auth);
                Some(Event::Auth {
                    mechanism: Mechanism::Plain,
                    credentials,
                })
            }
            Err(SaslError::AuthzMismatch) => {
                Some(self.auth_failed_inner(replies::AUTH_FAILED, Why::AuthzDiffers))
            }
            Err(e) => Some(self.sasl_error(e)),
        }
    }

    fn sasl_error(&mut self, e: SaslError) -> Event {
        self.state = State::Command;
        match e {
            SaslError::Cancelled => {
                self.refuse(Verb::Auth, replies::AUTH_CANCELLED, Why::AuthCancelled)
            }
            _ => self.refuse(
                Verb::Auth,
                replies::AUTH_MALFORMED,
                Why::MalformedAuthResponse,
            ),
        }
    }

    fn take_pending(&mut self) -> Option<Pending> {
        match std::mem::replace(&mut self.state, State::Command) {
            State::Awaiting(p) => Some(p),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// MAIL's checks once the client is known: the transaction budget and SIZE.
    fn mail_checked(&mut self, from: ReversePath, params: MailParams) -> Event {
        if self.counters.transactions >= self.cfg.limits.transactions {
            self.close_with(&replies::TOO_MANY_MESSAGES);
            return Event::Refused {
                verb: Verb::Mail,
                reply: replies::TOO_MANY_MESSAGES,
                reason: Why::TransactionLimit,
            };
        }
        if params
            .size
            .is_some_and(|s| s > self.cfg.limits.message_size)
        {
            return self.refuse(
                Verb::Mail,
                replies::SIZE_EXCEEDED,
                Why::DeclaredSizeOverLimit,
            );
        }
        self.state = State::Awaiting(Pending::Mail(from.clone(), params.clone()));
        Event::Mail { from, params }
    }

    /// Answer an [`Event::Grant`]: the identity granted to this client now, if any. The
    /// event returned (MAIL's, or its refusal) is handled like one from [`Session::poll`].
    pub fn grant_decision(&mut self, identity: Option<String>) -> Event {
        let Some(Pending::Grant(from, params)) = self.take_pending() else {
            return Event::NeedInput;
        };
        match identity {
            Some(id) => {
                self.auth = Some(id);
                self.granted = true;
                self.mail_checked(from, params)
            }
            None => {
                if self.granted {
                    self.auth = None;
                    self.granted = false;
                }
                self.refuse(Verb::Mail, replies::AUTH_REQUIRED, Why::MailWithoutAuth)
            }
        }
    }

    /// Answer an [`Event::Mail`]. A positive reply opens the transaction.
    pub fn mail_decision(&mut self, reply: Reply) -> Option<Event> {
        let Some(Pending::Mail(from, params)) = self.take_pending() else {
            return None;
        };
        if reply.is_positive() {
            self.txn = Some(Transaction {
                mail_from: from,
                params,
                rcpts: Vec::new(),
                chunks: None,
            });
            self.counters.transactions += 1;
            self.send(&reply);
            None
        } else {
            Some(self.refuse(Verb::Mail, reply, Why::Policy))
        }
    }

    /// Answer an [`Event::Rcpt`]. A positive reply adds the recipient.
    pub fn rcpt_decision(&mut self, reply: Reply) -> Option<Event> {
        let Some(Pending::Rcpt(to)) = self.take_pending() else {
            return None;
        };
        if reply.is_positive() {
            if let Some(t) = self.txn.as_mut() {
                t.rcpts.push(to);
            }
            self.send(&reply);
            None
        } else {
            Some(self.refuse(Verb::Rcpt, reply, Why::Policy))
        }
    }

    pub fn auth_succeeded(&mut self, identity: String) {
        if let Some(Pending::Auth) = self.take_pending() {
            self.auth = Some(identity);
            self.granted = false;
            self.send(&replies::AUTH_OK);
        }
    }

    /// Answer a failed [`Event::Auth`] (the driver applies any delay before calling this).
    pub fn auth_failed(&mut self, reply: Reply) -> Event {
        self.auth_failed_inner(reply, Why::Policy)
    }

    fn auth_failed_inner(&mut self, reply: Reply, reason: Why) -> Event {
        self.take_pending();
        self.counters.auth_failures += 1;
        let ev = self.refuse(Verb::Auth, reply, reason);
        if self.counters.auth_failures >= self.cfg.limits.auth_failures && !self.closing {
            self.close_with(&replies::TOO_MANY_AUTH_FAILURES);
        }
        ev
    }

    /// Answer an [`Event::Message`]: the queue's verdict, or the reply for a content flaw.
    /// The transaction ends either way.
    pub fn message_decision(&mut self, reply: Reply) {
        if let Some(Pending::Message) = self.take_pending() {
            self.txn = None;
            self.send(&reply);
        }
    }

    /// The reply for a message whose content the session itself must refuse, if any.
    pub fn content_refusal(&self, flags: &ContentFlags) -> Option<(Reply, Why)> {
        if flags.too_big {
            Some((replies::SIZE_EXCEEDED, Why::MessageOverSizeLimit))
        } else if flags.bare_line_ending && self.cfg.bare_lf == BareLf::Reject {
            Some((replies::BARE_LINE_ENDING, Why::BareLineEnding))
        } else if flags.long_line {
            Some((replies::LONG_LINE, Why::TextLineOverLimit))
        } else {
            None
        }
    }

    /// Call after the TLS handshake succeeded.
    pub fn tls_started(&mut self) {
        self.tls = true;
    }
}
