//! The POP3 server session (RFC 1939; CAPA, RESP-CODES, PIPELINING and AUTH-RESP-CODE of
//! RFC 2449 and RFC 3206; STLS of RFC 2595; SASL PLAIN of RFC 5034 and RFC 4616) as a state
//! machine with no I/O, like the SMTP session beside it.
//!
//! The driver feeds bytes through [`InBuf`], calls [`Session::poll`], writes what
//! [`Session::take_output`] returns, and answers the events that need the world: a login to
//! check ([`Event::Login`]), a message to send ([`Event::Retrieve`], streamed through
//! [`content::Stuffer`]), the deletions to apply at QUIT ([`Event::Quit`]). The maildrop's
//! listing (sizes and unique ids) is handed in at login; STAT, LIST, UIDL, DELE, RSET and
//! NOOP are answered here.
//!
//! Security: every client-controlled quantity is capped: the command line (RFC 2449 §4) and
//! the SASL response line, errors, commands and failed logins per session. USER, PASS and
//! AUTH are refused until TLS is on (the plaintext listener offers STLS and nothing to log
//! in with), and bytes pipelined after STLS are discarded (the CVE-2011-0411 injection).
//! Pipelined commands wait while more than [`OUTPUT_HIGH`] octets of replies are unwritten.
//! Passwords only travel inside [`Credentials`], and the line buffer that held one is zeroed
//! (the driver scrubs the input buffer after a login: [`InBuf::scrub`]).

pub mod command;
pub mod content;

use crate::sasl::{self, Credentials, SaslError};
pub use crate::session::InBuf;
use command::{Command, CommandError};
use zeroize::Zeroize;

/// Output held before pipelined commands wait for it to be written ([`Event::Flush`]).
pub const OUTPUT_HIGH: usize = 64 * 1024;

/// Client-controlled limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A command line with its CRLF. RFC 2449 §4 says clients keep to 255.
    pub command_line: usize,
    /// A SASL response line (RFC 5034 lifts the 255 limit for them).
    pub auth_line: usize,
    /// `-ERR` replies before the session is closed.
    pub errors: u32,
    /// Commands in one session.
    pub commands: u32,
    /// Failed logins before the session is closed.
    pub auth_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command_line: 512,
            auth_line: 4096,
            errors: 10,
            commands: 100_000,
            auth_failures: 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub hostname: String,
    pub limits: Limits,
    /// STLS can be offered (a certificate is loaded and TLS is not on yet).
    pub tls_available: bool,
    /// The connection began with TLS (RFC 8314 implicit TLS, port 995).
    pub tls_at_start: bool,
}

/// One message of the maildrop, as the driver listed it at login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The octets RETR sends, before stuffing ([`content::SizeCounter`]).
    pub size: u64,
    /// Its unique id: 1 to 70 characters from 0x21 to 0x7E (RFC 1939 §7), stable across
    /// sessions.
    pub uid: String,
}

/// Why the session refused a command by itself, for the one log line the driver writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    UnrecognizedCommand,
    SyntaxError,
    NotUtf8,
    LineTooLong,
    WrongState,
    LoginBeforeTls,
    TlsActive,
    TlsUnavailable,
    PassWithoutUser,
    NoSuchMessage,
    MessageDeleted,
    UnknownMechanism,
    AuthCancelled,
    AuthMalformed,
    ApopUnsupported,
    TooManyCommands,
    /// The driver's answer: a login refused, a message gone.
    Policy,
}

impl Why {
    pub fn slug(self) -> &'static str {
        match self {
            Why::UnrecognizedCommand => "unrecognized_command",
            Why::SyntaxError => "syntax_error",
            Why::NotUtf8 => "not_utf8",
            Why::LineTooLong => "line_too_long",
            Why::WrongState => "wrong_state",
            Why::LoginBeforeTls => "login_before_tls",
            Why::TlsActive => "tls_active",
            Why::TlsUnavailable => "tls_unavailable",
            Why::PassWithoutUser => "pass_without_user",
            Why::NoSuchMessage => "no_such_message",
            Why::MessageDeleted => "message_deleted",
            Why::UnknownMechanism => "unknown_mechanism",
            Why::AuthCancelled => "auth_cancelled",
            Why::AuthMalformed => "auth_malformed",
            Why::ApopUnsupported => "apop_unsupported",
            Why::TooManyCommands => "too_many_commands",
            Why::Policy => "policy",
        }
    }
}

/// Every `-ERR` text the session writes by itself, with its RFC 2449/3206 response code.
pub mod replies {
    pub const UNRECOGNIZED: &str = "-ERR Unknown command";
    pub const SYNTAX: &str = "-ERR Syntax error in arguments";
    pub const NOT_UTF8: &str = "-ERR Arguments must be UTF-8";
    pub const LINE_TOO_LONG: &str = "-ERR Line too long";
    pub const WRONG_STATE: &str = "-ERR Command not valid in this state";
    pub const NEEDS_TLS: &str = "-ERR [AUTH] Plaintext authentication disallowed: issue STLS first";
    pub const TLS_ACTIVE: &str = "-ERR TLS already active";
    pub const TLS_UNAVAILABLE: &str = "-ERR TLS not available";
    pub const PASS_WITHOUT_USER: &str = "-ERR USER first";
    pub const NO_SUCH_MESSAGE: &str = "-ERR No such message";
    pub const MESSAGE_DELETED: &str = "-ERR Message already deleted";
    pub const MECHANISM: &str = "-ERR [SYS/PERM] Unsupported authentication mechanism";
    pub const AUTH_CANCELLED: &str = "-ERR Authentication cancelled";
    pub const AUTH_MALFORMED: &str = "-ERR [AUTH] Malformed SASL response";
    pub const APOP: &str = "-ERR [SYS/PERM] APOP is not supported; use STLS and USER/PASS";
    pub const TOO_MANY_COMMANDS: &str = "-ERR [SYS/PERM] Too many commands; closing";
    pub const TOO_MANY_ERRORS: &str = "-ERR [SYS/PERM] Too many errors; closing";
    pub const TOO_MANY_AUTH_FAILURES: &str =
        "-ERR [AUTH] Too many authentication failures; closing";
    /// A wrong password, an unknown user, a blocked guesser: all one answer.
    pub const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed";
    pub const IN_USE: &str = "-ERR [IN-USE] Mailbox is in use by another POP3 session";
    pub const TEMP: &str = "-ERR [SYS/TEMP] Temporary failure; try again later";
    /// The address or its network is blocked for failed logins (the SMTP ports' counters).
    pub const BLOCKED: &str =
        "-ERR [SYS/TEMP] Too many failed logins from your network; try again later";
    pub const GONE: &str = "-ERR Message was removed by another client";
    pub const TIMEOUT: &str = "-ERR [SYS/TEMP] Idle timeout; closing";
    pub const SHUTTING_DOWN: &str = "-ERR [SYS/TEMP] Server shutting down";
    pub const SESSION_TOO_LONG: &str = "-ERR [SYS/TEMP] Session time limit; closing";
    pub const TOO_MANY_CONNECTIONS: &str = "-ERR [SYS/TEMP] Too many connections; try later";
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Event {
    /// Flush the output, then read more.
    NeedInput,
    /// Flush the output, then poll again: pipelined commands wait while their replies are
    /// more than [`OUTPUT_HIGH`] octets, so a client that does not read cannot make us hold
    /// more than that.
    Flush,
    /// The session refused a command by itself (the reply is in the output). Log it.
    Refused {
        command: &'static str,
        reply: &'static str,
        reason: Why,
    },
    /// `+OK` is in the output: flush it, start TLS, then call [`Session::tls_started`].
    /// `discarded` bytes were pipelined after STLS and dropped.
    StartTls { discarded: usize },
    /// Check the password, then call [`Session::login_ok`], [`Session::login_failed`] or
    /// [`Session::login_unavailable`].
    Login {
        mechanism: &'static str,
        credentials: Credentials,
    },
    /// Send message `index` (0-based): [`Session::retrieve_begin`], flush, stream the file
    /// through a [`content::Stuffer`] with `top`, or [`Session::retrieve_failed`].
    Retrieve { index: usize, top: Option<u64> },
    /// QUIT in the TRANSACTION state: remove these messages (0-based), then call
    /// [`Session::update_done`] (the UPDATE state, RFC 1939 §6).
    Quit { deleted: Vec<usize> },
    /// Flush the output and close the connection.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Authorization,
    /// `AUTH PLAIN` without an initial response: the next line is the response.
    AuthPlain,
    /// The driver owes an answer.
    Awaiting,
    Transaction,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub commands: u32,
    pub errors: u32,
    pub auth_failures: u32,
    pub retrieved: u32,
}

pub struct Session {
    cfg: Config,
    state: State,
    tls: bool,
    user: Option<String>,
    entries: Vec<Entry>,
    deleted: Vec<bool>,
    counters: Counters,
    out: Vec<u8>,
    line: Vec<u8>,
    discarding_line: bool,
    closing: bool,
    /// The command an [`Event::Retrieve`] answers (RETR or TOP), for its log line.
    retrieving: &'static str,
}

enum Line {
    Complete,
    TooLong,
}

impl Session {
    pub fn new(cfg: Config) -> Session {
        let tls = cfg.tls_at_start;
        Session {
            cfg,
            state: State::Authorization,
            tls,
            user: None,
            entries: Vec::new(),
            deleted: Vec::new(),
            counters: Counters::default(),
            out: Vec::with_capacity(256),
            line: Vec::new(),
            discarding_line: false,
            closing: false,
            retrieving: "RETR",
        }
    }

    /// Queue the greeting (no APOP timestamp: APOP is not offered).
    pub fn greet(&mut self) {
        let g = format!("+OK {} POP3 server ready", self.cfg.hostname);
        self.send(&g);
    }

    /// Queue a last reply (timeout, shutdown) and close.
    pub fn close_with(&mut self, reply: &str) {
        self.send(reply);
        self.closing = true;
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn send(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn refuse(&mut self, command: &'static str, reply: &'static str, reason: Why) -> Event {
        self.send(reply);
        self.counters.errors += 1;
        if self.counters.errors >= self.cfg.limits.errors && !self.closing {
            self.close_with(replies::TOO_MANY_ERRORS);
        }
        Event::Refused {
            command,
            reply,
            reason,
        }
    }

    /// The next command or SASL line into `self.line`; the last one (a password, maybe) is
    /// zeroed first.
    fn next_line(&mut self, inbuf: &mut InBuf, limit: usize) -> Option<Line> {
        self.line.zeroize();
        let t = crate::session::take_line(inbuf, limit, &mut self.line, &mut self.discarding_line)?;
        Some(if t.too_long {
            Line::TooLong
        } else {
            Line::Complete
        })
    }

    /// Advance until an event needs the driver.
    pub fn poll(&mut self, inbuf: &mut InBuf) -> Event {
        loop {
            if self.closing {
                return Event::Close;
            }
            match self.state {
                State::Awaiting => return Event::NeedInput,
                State::AuthPlain => {
                    let limit = self.cfg.limits.auth_line;
                    match self.next_line(inbuf, limit) {
                        None => return Event::NeedInput,
                        Some(Line::TooLong) => {
                            self.state = State::Authorization;
                            return self.refuse("AUTH", replies::LINE_TOO_LONG, Why::LineTooLong);
                        }
                        Some(Line::Complete) => {
                            self.state = State::Authorization;
                            let line = std::mem::take(&mut self.line);
                            return self.plain_response(line);
                        }
                    }
                }
                State::Authorization | State::Transaction => {}
            }
            if self.out.len() >= OUTPUT_HIGH {
                return Event::Flush;
            }
            let limit = self.cfg.limits.command_line;
            match self.next_line(inbuf, limit) {
                None => return Event::NeedInput,
                Some(Line::TooLong) => {
                    return self.refuse("UNKNOWN", replies::LINE_TOO_LONG, Why::LineTooLong);
                }
                Some(Line::Complete) => {}
            }
            self.counters.commands += 1;
            if self.counters.commands > self.cfg.limits.commands {
                self.close_with(replies::TOO_MANY_COMMANDS);
                return Event::Refused {
                    command: "UNKNOWN",
                    reply: replies::TOO_MANY_COMMANDS,
                    reason: Why::TooManyCommands,
                };
            }
            let parsed = command::parse(&self.line);
            self.line.zeroize();
            if let Some(ev) = self.command(parsed, inbuf) {
                return ev;
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
            Err(CommandError::Unrecognized) => {
                return Some(self.refuse(
                    "UNKNOWN",
                    replies::UNRECOGNIZED,
                    Why::UnrecognizedCommand,
                ));
            }
            Err(CommandError::Syntax(v)) => {
                return Some(self.refuse(v, replies::SYNTAX, Why::SyntaxError));
            }
            Err(CommandError::Encoding(v)) => {
                return Some(self.refuse(v, replies::NOT_UTF8, Why::NotUtf8));
            }
        };
        let verb = cmd.verb();
        let authorization = self.state == State::Authorization;
        match cmd {
            Command::Capa => {
                self.capa();
                None
            }
            Command::Quit => {
                if authorization {
                    self.close_with("+OK Bye");
                    return None;
                }
                let deleted = (0..self.entries.len())
                    .filter(|&i| self.deleted[i])
                    .collect();
                self.state = State::Awaiting;
                Some(Event::Quit { deleted })
            }
            Command::Apop => Some(self.refuse(verb, replies::APOP, Why::ApopUnsupported)),
            Command::Stls => {
                if !authorization {
                    return Some(self.refuse(verb, replies::WRONG_STATE, Why::WrongState));
                }
                if self.tls {
                    return Some(self.refuse(verb, replies::TLS_ACTIVE, Why::TlsActive));
                }
                if !self.cfg.tls_available {
                    return Some(self.refuse(verb, replies::TLS_UNAVAILABLE, Why::TlsUnavailable));
                }
                self.send("+OK Begin TLS negotiation");
                // RFC 2595 §4: nothing said before TLS carries over, pipelined bytes included.
                let discarded = inbuf.clear();
                self.user = None;
                Some(Event::StartTls { discarded })
            }
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } if !authorization => {
                Some(self.refuse(verb, replies::WRONG_STATE, Why::WrongState))
            }
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } if !self.tls => {
                Some(self.refuse(verb, replies::NEEDS_TLS, Why::LoginBeforeTls))
            }
            Command::User(u) => {
                self.user = Some(u);
                self.send("+OK");
                None
            }
            Command::Pass(password) => {
                let Some(username) = self.user.take() else {
                    return Some(self.refuse(
                        verb,
                        replies::PASS_WITHOUT_USER,
                        Why::PassWithoutUser,
                    ));
                };
                self.state = State::Awaiting;
                Some(Event::Login {
                    mechanism: "USER",
                    credentials: Credentials { username, password },
                })
            }
            Command::Auth { mechanism, initial } => {
                self.user = None;
                match (mechanism.as_deref(), initial) {
                    (None, _) => {
                        self.send("+OK\r\nPLAIN\r\n.");
                        None
                    }
                    (Some("PLAIN"), Some(ir)) => Some(self.plain_response(ir)),
                    (Some("PLAIN"), None) => {
                        self.send("+ ");
                        self.state = State::AuthPlain;
                        None
                    }
                    (Some(_), _) => {
                        Some(self.refuse(verb, replies::MECHANISM, Why::UnknownMechanism))
                    }
                }
            }
            _ if authorization => Some(self.refuse(verb, replies::WRONG_STATE, Why::WrongState)),
            Command::Stat => {
                let (n, size) = self.totals();
                self.send(&format!("+OK {n} {size}"));
                None
            }
            Command::Noop => {
                self.send("+OK");
                None
            }
            Command::Rset => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let (n, size) = self.totals();
                self.send(&format!("+OK {n} messages ({size} octets)"));
                None
            }
            Command::List(Some(n)) | Command::Uidl(Some(n)) => {
                let i = match self.message(n) {
                    Ok(i) => i,
                    Err((reply, why)) => return Some(self.refuse(verb, reply, why)),
                };
                let e = &self.entries[i];
                let line = if verb == "LIST" {
                    format!("+OK {n} {}", e.size)
                } else {
                    format!("+OK {n} {}", e.uid)
                };
                self.send(&line);
                None
            }
            Command::List(None) | Command::Uidl(None) => {
                let (n, size) = self.totals();
                let list = verb == "LIST";
                let head = if list {
                    format!("+OK {n} messages ({size} octets)")
                } else {
                    "+OK Unique-ID listing follows".to_string()
                };
                self.send(&head);
                for i in 0..self.entries.len() {
                    if self.deleted[i] {
                        continue;
                    }
                    let e = &self.entries[i];
                    let line = if list {
                        format!("{} {}", i + 1, e.size)
                    } else {
                        format!("{} {}", i + 1, e.uid)
                    };
                    self.send(&line);
                }
                self.send(".");
                None
            }
            Command::Dele(n) => match self.message(n) {
                Ok(i) => {
                    self.deleted[i] = true;
                    self.send(&format!("+OK Message {n} deleted"));
                    None
                }
                Err((reply, why)) => Some(self.refuse(verb, reply, why)),
            },
            Command::Retr(n) => self.retrieve(verb, n, None),
            Command::Top(n, lines) => self.retrieve(verb, n, Some(lines)),
        }
    }

    fn retrieve(&mut self, verb: &'static str, n: u32, top: Option<u64>) -> Option<Event> {
        match self.message(n) {
            Ok(index) => {
                self.state = State::Awaiting;
                self.retrieving = verb;
                Some(Event::Retrieve { index, top })
            }
            Err((reply, why)) => Some(self.refuse(verb, reply, why)),
        }
    }

    /// Message number `n` (1-based) as an index, if it exists and is not deleted.
    fn message(&self, n: u32) -> Result<usize, (&'static str, Why)> {
        let i = (n as usize).wrapping_sub(1);
        if n == 0 || i >= self.entries.len() {
            Err((replies::NO_SUCH_MESSAGE, Why::NoSuchMessage))
        } else if self.deleted[i] {
            Err((replies::MESSAGE_DELETED, Why::MessageDeleted))
        } else {
            Ok(i)
        }
    }

    fn totals(&self) -> (usize, u64) {
        self.entries
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| !**d)
            .fold((0, 0), |(n, s), (e, _)| (n + 1, s.saturating_add(e.size)))
    }

    fn capa(&mut self) {
        let mut c = String::from(
            "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING",
        );
        if self.state != State::Transaction {
            if self.tls {
                c.push_str("\r\nUSER\r\nSASL PLAIN");
            } else if self.cfg.tls_available {
                c.push_str("\r\nSTLS");
            }
        }
        c.push_str("\r\n.");
        self.send(&c);
    }

    fn plain_response(&mut self, mut line: Vec<u8>) -> Event {
        let decoded = sasl::decode_response(&line).and_then(sasl::parse_plain);
        line.zeroize();
        match decoded {
            Ok(credentials) => {
                self.state = State::Awaiting;
                Event::Login {
                    mechanism: "PLAIN",
                    credentials,
                }
            }
            Err(SaslError::Cancelled) => {
                self.refuse("AUTH", replies::AUTH_CANCELLED, Why::AuthCancelled)
            }
            Err(_) => self.refuse("AUTH", replies::AUTH_MALFORMED, Why::AuthMalformed),
        }
    }

    /// The login is good: the maildrop is locked and listed.
    pub fn login_ok(&mut self, entries: Vec<Entry>) {
        if self.state != State::Awaiting {
            return;
        }
        self.deleted = vec![false; entries.len()];
        self.entries = entries;
        self.state = State::Transaction;
        let (n, size) = self.totals();
        self.send(&format!("+OK Logged in: {n} messages ({size} octets)"));
    }

    /// The login failed (a wrong password, or any refusal the client must not tell apart
    /// from one). Counted; the last allowed failure closes the session.
    pub fn login_failed(&mut self, reply: &'static str) -> Event {
        self.state = State::Authorization;
        self.counters.auth_failures += 1;
        let ev = self.refuse("AUTH", reply, Why::Policy);
        if self.counters.auth_failures >= self.cfg.limits.auth_failures && !self.closing {
            self.close_with(replies::TOO_MANY_AUTH_FAILURES);
        }
        ev
    }

    /// The password was right but the maildrop cannot be had now (in use, a store error).
    pub fn login_unavailable(&mut self, reply: &'static str) -> Event {
        self.state = State::Authorization;
        self.refuse("AUTH", reply, Why::Policy)
    }

    /// The message is at hand: queue `+OK`; the driver flushes it, then streams the content.
    pub fn retrieve_begin(&mut self) {
        if self.state == State::Awaiting {
            self.state = State::Transaction;
            self.counters.retrieved += 1;
            self.send("+OK Message follows");
        }
    }

    /// The message is gone (another client removed it) or unreadable.
    pub fn retrieve_failed(&mut self, reply: &'static str) -> Event {
        self.state = State::Transaction;
        self.refuse(self.retrieving, reply, Why::Policy)
    }

    /// The UPDATE state is over: `failed` deletions could not be made.
    pub fn update_done(&mut self, removed: usize, failed: usize) {
        if failed == 0 {
            self.close_with(&format!("+OK Bye ({removed} messages removed)"));
        } else {
            self.close_with(&format!(
                "-ERR [SYS/TEMP] {failed} messages could not be removed"
            ));
        }
    }

    pub fn tls_started(&mut self) {
        self.tls = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged_in(messages: usize) -> (Session, InBuf) {
        let mut s = Session::new(Config {
            hostname: "pop.example.test".into(),
            limits: Limits::default(),
            tls_available: false,
            tls_at_start: true,
        });
        let mut inbuf = InBuf::default();
        inbuf.extend(b"USER a@b.test\r\nPASS pw\r\n");
        assert!(matches!(s.poll(&mut inbuf), Event::Login { .. }));
        let entries = (0..messages)
            .map(|i| Entry {
                size: 4000,
                uid: format!("{i:0>40}"),
            })
            .collect();
        s.login_ok(entries);
        (s, inbuf)
    }

    #[test]
    fn pipelined_listings_wait_for_their_replies_to_be_written() {
        let (mut s, mut inbuf) = logged_in(5000);
        inbuf.extend(&b"UIDL\r\n".repeat(100));
        let mut written = 0;
        let mut flushes = 0;
        loop {
            let ev = s.poll(&mut inbuf);
            // Never much more than the high-water mark and one reply held at once.
            assert!(s.out.len() < OUTPUT_HIGH + 5000 * 50, "{}", s.out.len());
            match ev {
                Event::Flush => {
                    flushes += 1;
                    written += s.take_output().len();
                }
                Event::NeedInput => break,
                other => panic!("{other:?}"),
            }
        }
        written += s.take_output().len();
        assert!(flushes >= 99, "{flushes}");
        assert!(
            written > 100 * 5000 * 40,
            "every listing was answered: {written}"
        );
    }

    #[test]
    fn scrub_keeps_what_is_unread() {
        let mut inbuf = InBuf::default();
        inbuf.extend(b"PASS secret\r\nNOOP\r\n");
        inbuf.consume(13);
        inbuf.scrub();
        assert_eq!(inbuf.unread(), b"NOOP\r\n");
    }
}
