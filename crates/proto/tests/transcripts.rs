//! Golden transcripts against the I/O-free session (tier 1 of docs/testing.md).
//!
//! Each `tests/transcripts/*.smtp` file is a dialogue:
//!
//! ```text
//! ! tls auth_offered auth_required close_on_non_smtp bare_lf=normalize recipients=2 errors=3 size=100
//! ! local example.test
//! ! user alice@example.test secret
//! ! grants grant alice@example.test      MAIL without AUTH asks; this identity is granted
//! S: 220 *                 expected reply line; a trailing `*` matches any rest
//! C: EHLO client.test      client line, CRLF appended
//! R: DATA\r\nabc\n.\n      raw bytes with \r \n \t \\ \xNN escapes, nothing appended
//! M: abc\r\n               the body of the last accepted message
//! N: 1                     number of messages accepted so far
//! P: 1                     commands pipelined without PIPELINING so far
//! X:                       the server closed the connection
//! L: 1                     the spool's disk is (1) or is no longer (0) nearly full
//! ```
//!
//! The policy is scripted: recipients in a `local` domain (and Postmaster) are accepted,
//! others get `554 5.7.1`; AUTH checks the `user` lines; messages are accepted.

use mailwarden_proto::address::ForwardPath;
use mailwarden_proto::data::BareLf;
use mailwarden_proto::replies;
use mailwarden_proto::session::{Event, InBuf, Limits, Session, SessionConfig};
use std::path::Path;

mod common;

struct Runner {
    s: Session,
    inbuf: InBuf,
    body: Vec<u8>,
    out: Vec<String>,
    partial: String,
    local: Vec<String>,
    users: Vec<(String, String)>,
    messages: Vec<Vec<u8>>,
    /// What [`Event::Grant`] is answered with.
    grant: Option<String>,
    closed: bool,
}

impl Runner {
    fn feed(&mut self, bytes: &[u8]) {
        assert!(!self.closed, "client wrote after the server closed");
        self.inbuf.extend(bytes);
        self.run();
    }

    fn run(&mut self) {
        let mut next = None;
        loop {
            let ev = match next.take() {
                Some(ev) => ev,
                None => self.s.poll(&mut self.inbuf, &mut self.body),
            };
            match ev {
                Event::NeedInput => break,
                Event::Grant => next = Some(self.s.grant_decision(self.grant.clone())),
                Event::Refused { .. } => {}
                Event::Mail { .. } => {
                    self.s.mail_decision(replies::MAIL_OK);
                }
                Event::Rcpt { to } => {
                    let ok = match &to {
                        ForwardPath::Postmaster => true,
                        ForwardPath::Mailbox(m) => m
                            .domain
                            .as_name()
                            .is_some_and(|d| self.local.iter().any(|l| l == d)),
                    };
                    let r = if ok {
                        replies::RCPT_OK
                    } else {
                        replies::RELAY_DENIED
                    };
                    self.s.rcpt_decision(r);
                }
                Event::Auth { credentials, .. } => {
                    let ok = self.users.iter().any(|(u, p)| {
                        *u == credentials.username && p.as_bytes() == credentials.password.expose()
                    });
                    if ok {
                        self.s.auth_succeeded(credentials.username.clone());
                    } else {
                        self.s.auth_failed(replies::AUTH_FAILED);
                    }
                }
                Event::StartTls { .. } => {
                    self.collect();
                    self.s.tls_started();
                }
                Event::Message { flags } => {
                    let body = std::mem::take(&mut self.body);
                    if let Some((r, _)) = self.s.content_refusal(&flags) {
                        self.s.message_decision(r);
                    } else {
                        self.messages.push(body);
                        let id = format!("Q{}", self.messages.len());
                        self.s.message_decision(replies::queued(&id));
                    }
                }
                Event::Close => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.collect();
    }

    fn collect(&mut self) {
        let out = self.s.take_output();
        self.partial.push_str(&String::from_utf8_lossy(&out));
        common::split_lines(&mut self.partial, &mut self.out);
    }
}

impl common::Dialogue for Runner {
    fn feed(&mut self, bytes: &[u8]) {
        Runner::feed(self, bytes)
    }

    fn output(&self) -> &[String] {
        &self.out
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn check(&mut self, tag: &str, rest: &str, where_: &str) -> bool {
        match tag {
            "M:" => {
                let last = self
                    .messages
                    .last()
                    .unwrap_or_else(|| panic!("{where_}: no message"));
                assert_eq!(
                    String::from_utf8_lossy(last),
                    String::from_utf8_lossy(&common::unescape(rest)),
                    "{where_}: message body"
                );
            }
            "N:" => assert_eq!(
                self.messages.len(),
                rest.parse::<usize>().unwrap(),
                "{where_}: message count"
            ),
            "P:" => assert_eq!(
                self.s.counters().unauthorized_pipelining,
                rest.parse::<u32>().unwrap(),
                "{where_}: commands pipelined without PIPELINING"
            ),
            "L:" => self.s.set_storage_low(rest == "1"),
            _ => return false,
        }
        true
    }
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut limits = Limits::default();
    let mut cfg = SessionConfig {
        hostname: "mx.example.test".into(),
        limits: Limits::default(),
        tls_available: false,
        tls_at_start: false,
        auth_offered: false,
        auth_required: false,
        bare_lf: BareLf::Reject,
        close_on_non_smtp: false,
        grants: false,
    };
    let mut grant = None;
    let mut local = Vec::new();
    let mut users = Vec::new();
    let mut body_lines = text.lines().enumerate().peekable();
    while let Some((_, l)) = body_lines.peek() {
        if l.starts_with('#') {
            body_lines.next();
            continue;
        }
        let Some(opts) = l.strip_prefix("! ") else {
            break;
        };
        let mut words = opts.split_whitespace();
        while let Some(w) = words.next() {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            match k {
                "local" => local.push(words.next().unwrap().to_string()),
                "user" => {
                    let u = words.next().unwrap().to_string();
                    let p = words.next().unwrap().to_string();
                    users.push((u, p));
                }
                "tls" => cfg.tls_available = true,
                "implicit_tls" => cfg.tls_at_start = true,
                "auth_offered" => cfg.auth_offered = true,
                "auth_required" => cfg.auth_required = true,
                "close_on_non_smtp" => cfg.close_on_non_smtp = true,
                "grants" => cfg.grants = true,
                "grant" => grant = Some(words.next().unwrap().to_string()),
                "bare_lf" => {
                    cfg.bare_lf = if v == "normalize" {
                        BareLf::Normalize
                    } else {
                        BareLf::Reject
                    }
                }
                "recipients" => limits.recipients = v.parse().unwrap(),
                "errors" => limits.errors = v.parse().unwrap(),
                "junk" => limits.junk_commands = v.parse().unwrap(),
                "size" => limits.message_size = v.parse().unwrap(),
                "line" => limits.command_line = v.parse().unwrap(),
                "text_line" => limits.text_line = v.parse().unwrap(),
                "transactions" => limits.transactions = v.parse().unwrap(),
                "auth_failures" => limits.auth_failures = v.parse().unwrap(),
                other => panic!("{}: unknown option {other}", path.display()),
            }
        }
        body_lines.next();
    }
    cfg.limits = limits;
    let mut r = Runner {
        s: Session::new(cfg),
        inbuf: InBuf::default(),
        body: Vec::new(),
        out: Vec::new(),
        partial: String::new(),
        local,
        users,
        messages: Vec::new(),
        grant,
        closed: false,
    };
    r.s.greet();
    r.run();
    common::play(&mut r, body_lines, path);
}

#[test]
fn transcripts() {
    let files = common::files("transcripts", "smtp", 8);
    for f in files {
        run_file(&f);
    }
}
