//! Hostile clients, end to end: each test is one attack from issue 14, tried against the real
//! binary with a raw socket client (or, where TLS or many sessions are needed, a scripted
//! Python one), and the behaviour that defeats it.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A raw SMTP client: exact bytes out, whole replies in.
struct Sock {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Sock {
    fn connect(addr: SocketAddr) -> Sock {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Sock { s, buf: Vec::new() };
        let banner = c.reply();
        assert!(banner.starts_with("220"), "{banner}");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// One complete reply (its lines joined by `\n`), or what came before the close.
    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            while !self.buf.windows(2).any(|w| w == b"\r\n") {
                let mut chunk = [0u8; 4096];
                match self.s.read(&mut chunk) {
                    Ok(0) | Err(_) => return lines.join("\n"),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
            let i = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
            self.buf.drain(..i + 2);
            let last = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Send `line`; the reply must start with `want`.
    fn expect(&mut self, line: &str, want: &str) -> String {
        let r = self.cmd(line);
        assert!(r.starts_with(want), "{line}: want {want}, got {r}");
        r
    }
}

fn spool_files(s: &Server) -> usize {
    std::fs::read_dir(s.data_dir().join("queue"))
        .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
        .unwrap_or(0)
}

#[test]
fn a_multibyte_character_where_a_keyword_ends_gets_a_syntax_error_not_a_panic() {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    let mut c = Sock::connect(s.mx());
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FRO€:<a@b.test>", "501 5.5.4");
    c.expect("RCPT T€:<alice@example.test>", "501 5.5.4");
    // The session is still there and sane.
    c.expect("MAIL FROM:<a@remote.test>", "250");
    c.expect("RCPT TO:<alice@example.test>", "250");
    c.expect("QUIT", "221");
    assert!(s.log_lines(&["session_panic"]).is_empty(), "{}", s.log());
}

#[test]
fn a_broken_starttls_handshake_after_a_large_bdat_leaves_no_spool_file() {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    for round in 0..3 {
        let mut c = Sock::connect(s.mx());
        c.expect("EHLO client.test", "250");
        c.expect("MAIL FROM:<a@remote.test>", "250");
        c.expect("RCPT TO:<alice@example.test>", "250");
        // 5 MB in chunks, no LAST: the body is in a spool file.
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..5 {
            c.send(format!("BDAT {}\r\n", chunk.len()).as_bytes());
            c.send(&chunk);
            let r = c.reply();
            assert!(r.starts_with("250 2.0.0"), "round {round}: {r}");
        }
        assert_eq!(spool_files(&s), 1, "round {round}: the body is spooled");
        c.expect("STARTTLS", "220");
        // Not a TLS ClientHello: the handshake fails and the session ends.
        c.send(b"this is not TLS\r\n\r\n");
        let _ = c.reply();
        let gone = wait_for(Duration::from_secs(10), || {
            (spool_files(&s) == 0).then_some(())
        });
        assert!(
            gone.is_some(),
            "round {round}: the spool file outlived its session"
        );
    }
    s.wait_log(&["event=\"tls_failed\""]);
}

#[test]
fn a_nearly_full_disk_refuses_mail_with_452_instead_of_half_writing_it() {
    // The minimum is set above any disk's free space.
    let s = Server::start("[limits]\nmin_free_space = \"1000000TiB\"\n");
    s.add_user("alice@example.test", "alice-pw");
    let mut c = Sock::connect(s.mx());
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@remote.test>", "452 4.3.1");
    c.expect("QUIT", "221");
    s.wait_log(&["event=\"storage_low\""]);
    assert_eq!(spool_files(&s), 0);
}

#[test]
fn ipv4_clients_on_a_dual_stack_socket_are_keyed_by_their_ipv4_address() {
    // An IPv6 socket bound to the IPv4-mapped loopback address receives IPv4 clients exactly
    // as a [::] listener does (as ::ffff:a.b.c.d), without listening beyond loopback; the
    // IPv6 client uses [::1].
    let s = Server::start(
        "[listen]\nmx = \"[::ffff:127.0.0.1]:0\"\nsubmission = \"[::1]:0\"\n\
         [screening.greylist]\nmode = \"enforce\"\n",
    );
    s.add_user("alice@example.test", "alice-pw");
    let v4: SocketAddr = format!("127.0.0.1:{}", s.mx().port()).parse().unwrap();
    let mut c = Sock::connect(v4);
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@remote.test>", "250");
    // Greylisted by its /24, the IPv4 address's network: not by ::ffff:0:0/64, which would
    // hold every IPv4 client on the Internet.
    c.expect("RCPT TO:<alice@example.test>", "451 4.7.1");
    c.expect("QUIT", "221");
    let line = s.wait_log(&["event=\"connect\"", "listener=\"mx\""]);
    assert!(line.contains("ip=127.0.0.1 "), "{line}");
    assert!(
        !s.log().contains("::ffff:"),
        "a mapped address leaked:\n{}",
        s.log()
    );
    let triplets = s.query_count("SELECT count(*) FROM greylist WHERE triplet LIKE '127.0.0.0|%'");
    assert_eq!(triplets, 1, "greylist keyed by the IPv4 /24");
    // An IPv6 client keeps its own address.
    let mut c6 = Sock::connect(s.submission());
    c6.expect("EHLO client.test", "250");
    c6.expect("QUIT", "221");
    s.wait_log(&["event=\"connect\"", "listener=\"submission\"", "ip=::1"]);
}

#[test]
fn parallel_sessions_of_a_stolen_password_get_no_more_recipients_than_the_daily_limit() {
    let zones: String = (0..13)
        .map(|i| format!("victim{i}.test TIMEOUT\n"))
        .collect();
    let s = Server::start_with_zones("", &zones);
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("postmaster@example.test", "pm-pw");
    let out = run(
        "python3",
        &[
            clients_dir().join("parallel.py").to_str().unwrap(),
            "--port",
            &s.submissions().port().to_string(),
            "--user",
            "alice@example.test",
            "--password",
            "alice-pw",
            "--sessions",
            "50",
            "--rcpts",
            "100",
        ],
        None,
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("parallel.py: {}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("50 sessions x 100 RCPTs: {r}");
    let per_day = 1000;
    let delivered = r["rcpts_delivered"].as_u64().unwrap();
    // The limit answers at RCPT, while the sessions are still sending...
    assert!(
        r["codes"]["451"].as_u64().unwrap_or(0) > 0,
        "the limit never answered: {r}"
    );
    // ...so the recipients of accepted messages never pass the day's limit. (A session that
    // ends without its message gives its recipients back, so RCPT 250s may add up to a few
    // more.) Messages whose DATA ends after the burst trigger fired are refused.
    assert!(delivered <= per_day, "{r}");
    // The first trigger to answer is "many new recipients" (300 an hour): the message that
    // would pass it is refused, so the accepted ones stay within it.
    assert!(delivered <= 300, "{r}");
    assert!(
        r["messages_ok"].as_u64().unwrap() < 50,
        "every session's message was accepted: {r}"
    );
    s.wait_log(&["event=\"account_suspended\"", "alice@example.test"]);
    let queued = s.query_count("SELECT count(*) FROM queue_rcpt WHERE route = 'remote'");
    assert_eq!(queued as u64, delivered, "{r}");
    let held =
        s.query_count("SELECT count(*) FROM queue_rcpt WHERE route = 'remote' AND status = 'held'");
    assert_eq!(held, queued, "everything accepted is held: {r}");
}

/// A message of about `mb` megabytes holding nothing but distinct links.
fn many_links(mb: usize, tag: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <a@remote.test>\r\nTo: <alice@example.test>\r\nSubject: links {tag}\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0;
    while m.len() < mb * 1024 * 1024 {
        for _ in 0..20 {
            m.extend_from_slice(format!("http://h{i}.x{tag}.example.test/ ").as_bytes());
            i += 1;
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

#[test]
fn messages_with_tens_of_thousands_of_links_never_stop_other_sessions() {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    let mx = s.mx();
    let (tx, rx) = std::sync::mpsc::channel();
    let senders: Vec<_> = (0..6)
        .map(|n| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let body = many_links(3, n);
                let mut c = Sock::connect(mx);
                c.expect("EHLO client.test", "250");
                c.expect("MAIL FROM:<a@remote.test>", "250");
                c.expect("RCPT TO:<alice@example.test>", "250");
                c.expect("DATA", "354");
                c.send(&body);
                c.send(b".\r\n");
                tx.send(()).unwrap();
                c.reply()
            })
        })
        .collect();
    // Once every hostile message is in, other clients must still be answered at once.
    for _ in 0..6 {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("a sender stalled");
    }
    for _ in 0..3 {
        let t = ehlo_time(mx);
        assert!(
            t < Duration::from_secs(5),
            "EHLO took {t:?} beside hostile messages"
        );
    }
    for h in senders {
        let r = h.join().unwrap();
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
}

/// Time to an answered EHLO on a fresh connection.
fn ehlo_time(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut c = Sock::connect(addr);
    c.expect("EHLO probe.test", "250");
    c.expect("QUIT", "221");
    t.elapsed()
}

fn authflood(
    s: &Server,
    user: &str,
    password: &str,
    sessions: &str,
    sources: &str,
) -> serde_json::Value {
    let mut args = vec![
        clients_dir()
            .join("authflood.py")
            .to_str()
            .unwrap()
            .to_string(),
        "--port".into(),
        s.submissions().port().to_string(),
        "--user".into(),
        user.into(),
        "--password".into(),
        password.into(),
        "--sessions".into(),
        sessions.into(),
    ];
    if !sources.is_empty() {
        args.extend(["--sources".into(), sources.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("python3", &args, None);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("authflood.py: {}", String::from_utf8_lossy(&out.stderr)))
}

fn metric(s: &Server, name: &str) -> u64 {
    s.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn more_connections_buy_a_password_guesser_nothing() {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    // 30 connections from one address, one guess each, all at the same moment.
    let r = authflood(&s, "alice@example.test", "guess", "30", "");
    eprintln!("30 parallel guesses from one address: {r}");
    let checked = metric(&s, "mailwarden_auth_failures_total");
    let busy = r["codes"]["454"].as_u64().unwrap_or(0);
    // One guess is checked at a time per address; the rest wait their turn behind its
    // failure, and once the address has failed auth_failures_per_ip (10) times it is
    // blocked: 30 connections got no more guesses checked than one connection would.
    assert!(checked <= 10, "{checked} guesses checked: {r}");
    assert!(busy >= 20, "{r}");
    assert_eq!(checked + busy, 30, "{r}");
    assert!(
        !s.log_lines(&["event=\"auth_blocked\""]).is_empty(),
        "{}",
        s.log()
    );
    // A guess written with other spacing and case is the same account's failure.
    let r = authflood(&s, " ALICE@Example.test", "guess", "1", "127.0.0.77-77");
    assert_eq!(r["codes"]["535"], 1, "{r}");
}

#[test]
fn a_flood_of_logins_is_turned_away_not_queued_without_bound() {
    let s = Server::start("[auth]\nmax_pending_verifications = 1\n");
    s.add_user("alice@example.test", "alice-pw");
    // From 30 networks, so no address's or network's line stops them: the verifiers' queue
    // does. (The account's line only makes them wait.)
    let sources: Vec<String> = (10..40).map(|n| format!("127.0.{n}.1")).collect();
    let r = authflood(&s, "alice@example.test", "wrong", "30", &sources.join(","));
    eprintln!("30 logins from 30 addresses, queue of 1: {r}");
    let busy = r["texts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(t, _)| t.starts_with("454 4.7.0 Too many login attempts waiting"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum::<u64>();
    assert!(busy > 0, "{r}");
    assert_eq!(busy + r["codes"]["535"].as_u64().unwrap_or(0), 30, "{r}");
    assert!(
        !s.log_lines(&["verifiers' queue is full"]).is_empty(),
        "{}",
        s.log()
    );
    // The right password still gets in afterwards.
    let ok = submit(
        &s,
        "alice@example.test",
        "alice-pw",
        "alice@example.test",
        &[],
    );
    assert_eq!(ok["ok"], true, "{ok}");
}

#[test]
fn a_suspended_account_answers_exactly_as_a_wrong_password_does() {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    let out = s.cli(
        &[
            "user",
            "suspend",
            "alice@example.test",
            "--reason",
            "phished",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let right = authflood(&s, "alice@example.test", "alice-pw", "1", "127.0.0.81-81");
    let wrong = authflood(&s, "alice@example.test", "not-it", "1", "127.0.0.82-82");
    assert_eq!(
        right["texts"], wrong["texts"],
        "a suspension told the guess was right"
    );
    assert_eq!(right["codes"]["535"], 1, "{right}");
    s.wait_log(&["event=\"auth_suspended\"", "alice@example.test"]);
}

#[test]
fn user_add_refuses_weak_passwords_and_generates_strong_ones() {
    // The defaults, not the test bed's relaxed ones.
    let s = Server::start("[auth]\nmin_password_length = 10\nmin_password_strength = 3\n");
    for weak in ["x", "password1234", "Example2026"] {
        let out = s.cli(
            &["user", "add", "alice@example.test", "--password-stdin"],
            Some(&format!("{weak}\n")),
        );
        assert!(!out.status.success(), "{weak} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("at least 10") || err.contains("too easy to guess"),
            "{weak}: {err}"
        );
    }
    let out = s.cli(
        &["user", "add", "alice@example.test", "--password-stdin"],
        Some("correct horse battery staple\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.cli(
        &["user", "passwd", "alice@example.test", "--generate"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let pw = text
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the generated password is printed")
        .to_string();
    assert_eq!(pw.len(), 20, "{text}");
    let ok = submit(&s, "alice@example.test", &pw, "alice@example.test", &[]);
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(!s.log().contains(&pw), "the password was logged");
}
