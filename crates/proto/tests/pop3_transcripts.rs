//! Golden transcripts against the I/O-free POP3 session (tier 1 of docs/testing.md).
//!
//! Each `tests/pop3/*.pop3` file is a dialogue:
//!
//! ```text
//! ! tls implicit_tls errors=5 line=64 commands=20 auth_failures=2
//! ! user alice@example.test secret
//! ! message UID Subject: a\n\nbody\n    a maildrop message (escapes \r \n \t \\ \xNN)
//! ! gone 2                              message 2 vanishes before RETR/TOP reach it
//! S: +OK *                              expected reply line; a trailing `*` matches any rest
//! C: USER alice@example.test            client line, CRLF appended
//! R: STLS\r\nUSER x\r\n                 raw bytes, nothing appended
//! D: 1 3                                the messages QUIT removed (1-based), in order
//! X:                                    the server closed the connection
//! ```

use mailwarden_proto::pop3::content::{SizeCounter, Stuffer};
use mailwarden_proto::pop3::{Config, Entry, Event, InBuf, Limits, Session, replies};
use std::path::Path;

mod common;

struct Runner {
    s: Session,
    inbuf: InBuf,
    out: Vec<String>,
    partial: String,
    users: Vec<(String, String)>,
    messages: Vec<(String, Vec<u8>)>,
    gone: Vec<usize>,
    removed: Option<Vec<usize>>,
    closed: bool,
}

impl Runner {
    fn feed(&mut self, bytes: &[u8]) {
        assert!(!self.closed, "client wrote after the server closed");
        self.inbuf.extend(bytes);
        self.run();
    }

    fn run(&mut self) {
        loop {
            match self.s.poll(&mut self.inbuf) {
                Event::NeedInput => break,
                Event::Flush => self.collect(),
                Event::Refused { .. } => {}
                Event::StartTls { .. } => {
                    self.collect();
                    self.s.tls_started();
                }
                Event::Login { credentials, .. } => {
                    let ok = self.users.iter().any(|(u, p)| {
                        *u == credentials.username && p.as_bytes() == credentials.password.expose()
                    });
                    if ok {
                        let entries = self
                            .messages
                            .iter()
                            .map(|(uid, body)| {
                                let mut n = SizeCounter::default();
                                n.push(body);
                                Entry {
                                    size: n.finish(),
                                    uid: uid.clone(),
                                }
                            })
                            .collect();
                        self.s.login_ok(entries);
                    } else {
                        self.s.login_failed(replies::AUTH_FAILED);
                    }
                }
                Event::Retrieve { index, top } => {
                    if self.gone.contains(&(index + 1)) {
                        self.s.retrieve_failed(replies::GONE);
                        continue;
                    }
                    self.s.retrieve_begin();
                    self.collect();
                    let mut out = Vec::new();
                    let mut st = Stuffer::new(top);
                    st.push(&self.messages[index].1, &mut out);
                    st.finish(&mut out);
                    self.partial.push_str(&String::from_utf8_lossy(&out));
                }
                Event::Quit { deleted } => {
                    let n = deleted.len();
                    self.removed = Some(deleted.iter().map(|i| i + 1).collect());
                    self.s.update_done(n, 0);
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
            "D:" => {
                let want: Vec<usize> = rest
                    .split_whitespace()
                    .map(|w| w.parse().unwrap())
                    .collect();
                assert_eq!(
                    self.removed.as_ref(),
                    Some(&want),
                    "{where_}: removed at QUIT"
                );
            }
            _ => return false,
        }
        true
    }
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut cfg = Config {
        hostname: "pop.example.test".into(),
        limits: Limits::default(),
        tls_available: false,
        tls_at_start: false,
    };
    let mut users = Vec::new();
    let mut messages = Vec::new();
    let mut gone = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((_, l)) = lines.peek() {
        if l.starts_with('#') {
            lines.next();
            continue;
        }
        let Some(opts) = l.strip_prefix("! ") else {
            break;
        };
        let mut words = opts.split_whitespace();
        while let Some(w) = words.next() {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            match k {
                "tls" => cfg.tls_available = true,
                "implicit_tls" => cfg.tls_at_start = true,
                "errors" => cfg.limits.errors = v.parse().unwrap(),
                "line" => cfg.limits.command_line = v.parse().unwrap(),
                "commands" => cfg.limits.commands = v.parse().unwrap(),
                "auth_failures" => cfg.limits.auth_failures = v.parse().unwrap(),
                "user" => {
                    let u = words.next().unwrap().to_string();
                    let p = words.next().unwrap().to_string();
                    users.push((u, p));
                }
                "message" => {
                    let uid = words.next().unwrap().to_string();
                    let body: Vec<&str> = words.by_ref().collect();
                    messages.push((uid, common::unescape(&body.join(" "))));
                }
                "gone" => gone.push(words.next().unwrap().parse().unwrap()),
                other => panic!("{}: unknown option {other}", path.display()),
            }
        }
        lines.next();
    }
    let mut r = Runner {
        s: Session::new(cfg),
        inbuf: InBuf::default(),
        out: Vec::new(),
        partial: String::new(),
        users,
        messages,
        gone,
        removed: None,
        closed: false,
    };
    r.s.greet();
    r.run();
    common::play(&mut r, lines, path);
}

#[test]
fn pop3_transcripts() {
    let files = common::files("pop3", "pop3", 5);
    for f in files {
        run_file(&f);
    }
}
