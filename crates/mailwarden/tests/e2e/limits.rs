//! Every client-controlled quantity has a limit with the right reply, and the server stays
//! healthy after each.

use crate::support::*;
use std::io::Read;
use std::net::TcpStream;

fn hello<'a>() -> Vec<Step<'a>> {
    vec![Step::Read, Step::Cmd("EHLO c.example.net")]
}

#[test]
fn command_and_text_line_limits() {
    let s = Server::start("");
    s.add_user("bob@example.test", "pw");
    let long_cmd = format!("NOOP {}", "x".repeat(600));
    let long_text = format!("Subject: long\r\n\r\n{}\r\n.", "y".repeat(1200));
    let mut steps = hello();
    steps.extend([
        Step::Cmd(&long_cmd),
        Step::Cmd("NOOP"),
        Step::Cmd("MAIL FROM:<x@remote.test>"),
        Step::Cmd("RCPT TO:<bob@example.test>"),
        Step::Cmd("DATA"),
        Step::Cmd(&long_text),
        Step::Cmd("NOOP"),
    ]);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(2).starts_with("500 5.5.2"), "{:?}", r.replies);
    assert!(
        r.reply(3).starts_with("250"),
        "session must survive: {:?}",
        r.replies
    );
    assert!(r.reply(7).starts_with("554 5.6.0"), "{:?}", r.replies);
    assert!(r.reply(8).starts_with("250"), "{:?}", r.replies);
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 0);
}

#[test]
fn message_size_limit() {
    let s = Server::start("[smtp]\nmax_message_size = \"2KiB\"");
    s.add_user("bob@example.test", "pw");
    let big = format!("Subject: big\r\n\r\n{}\r\n.", "z\r\n".repeat(1000));
    let mut steps = hello();
    steps.extend([
        Step::Cmd("MAIL FROM:<x@remote.test> SIZE=5000"),
        Step::Cmd("MAIL FROM:<x@remote.test> SIZE=100"),
        Step::Cmd("RCPT TO:<bob@example.test>"),
        Step::Cmd("DATA"),
        Step::Cmd(&big),
        Step::Cmd("MAIL FROM:<x@remote.test>"),
        Step::Cmd("RCPT TO:<bob@example.test>"),
        Step::Cmd("DATA"),
        Step::Cmd("Subject: small\r\n\r\nok\r\n."),
    ]);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(1).contains("SIZE 2048"), "{}", r.reply(1));
    assert!(r.reply(2).starts_with("552 5.3.4"), "{:?}", r.replies);
    assert!(r.reply(6).starts_with("552 5.3.4"), "{:?}", r.replies);
    assert!(r.reply(10).starts_with("250 2.0.0"), "{:?}", r.replies);
    let m = s.wait_messages("bob@example.test", 1);
    assert_eq!(m.len(), 1);
    assert!(m[0].contains("Subject: small"));
}

#[test]
fn large_messages_spool_to_disk_and_arrive_intact() {
    let s = Server::start("[queue]\ninline_max = \"4KiB\"");
    s.add_user("bob@example.test", "pw");
    let line = "0123456789abcdefghijklmnopqrstuvwxyz";
    let body: String = (0..20_000).map(|i| format!("{i} {line}\r\n")).collect();
    let data = format!("Subject: big spool\r\n\r\n{body}.");
    let mut steps = hello();
    steps.extend([
        Step::Cmd("MAIL FROM:<x@remote.test>"),
        Step::Cmd("RCPT TO:<bob@example.test>"),
        Step::Cmd("DATA"),
        Step::Cmd(&data),
    ]);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(5).starts_with("250 2.0.0"), "{:?}", r.replies);
    let m = s.wait_messages("bob@example.test", 1);
    assert!(
        m[0].ends_with(&body.replace("\r\n", "\n")),
        "body changed in transit"
    );
    // The spool file goes once the message is delivered.
    let empty = wait_for(std::time::Duration::from_secs(10), || {
        (std::fs::read_dir(s.data_dir().join("queue"))
            .unwrap()
            .count()
            == 0)
            .then_some(())
    });
    assert!(empty.is_some(), "spool file left behind");
}

#[test]
fn recipient_limit() {
    let s = Server::start("[smtp]\nmax_recipients = 3");
    for u in ["a", "b", "c", "d"] {
        s.add_user(&format!("{u}@example.test"), "pw");
    }
    let mut steps = hello();
    steps.extend([
        Step::Cmd("MAIL FROM:<x@remote.test>"),
        Step::Cmd("RCPT TO:<a@example.test>"),
        Step::Cmd("RCPT TO:<b@example.test>"),
        Step::Cmd("RCPT TO:<c@example.test>"),
        Step::Cmd("RCPT TO:<d@example.test>"),
        Step::Cmd("DATA"),
        Step::Cmd("Subject: three\r\n\r\nhi\r\n."),
    ]);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(6).starts_with("452 4.5.3"), "{:?}", r.replies);
    assert!(r.reply(8).starts_with("250 2.0.0"), "{:?}", r.replies);
    for u in ["a", "b", "c"] {
        s.wait_messages(&format!("{u}@example.test"), 1);
    }
    assert!(s.messages("d@example.test").is_empty());
}

#[test]
fn idle_and_data_timeouts_close_with_421() {
    let s = Server::start("[smtp]\nidle_timeout = \"1s\"\ndata_timeout = \"1s\"");
    s.add_user("bob@example.test", "pw");
    let r = raw(s.mx(), false, None, &[Step::Read, Step::UntilClose]);
    assert!(r.reply(1).starts_with("421 4.4.2"), "{:?}", r.replies);
    assert!(r.closed);
    let mut steps = hello();
    steps.extend([
        Step::Cmd("MAIL FROM:<x@remote.test>"),
        Step::Cmd("RCPT TO:<bob@example.test>"),
        Step::Cmd("DATA"),
        Step::Send("Subject: slow\r\n\r\nhalf a mess"),
        Step::UntilClose,
    ]);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(5).starts_with("421 4.4.2"), "{:?}", r.replies);
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 0);
    s.wait_log(&["event=\"disconnect\"", "reason=\"timeout\""]);
}

#[test]
fn session_time_limit() {
    let s = Server::start("[smtp]\nmax_session_time = \"1s\"");
    let mut steps = hello();
    for _ in 0..8 {
        steps.push(Step::Sleep(0.3));
        steps.push(Step::Cmd("NOOP"));
    }
    let r = raw(s.mx(), false, None, &steps);
    assert!(
        r.replies.iter().any(|x| x.starts_with("421 4.4.2")),
        "{:?}",
        r.replies
    );
    assert!(r.closed || r.error.is_some());
}

#[test]
fn error_limit_closes_the_session() {
    let s = Server::start("");
    let mut steps = hello();
    for _ in 0..10 {
        steps.push(Step::Cmd("BOGUS"));
    }
    steps.push(Step::UntilClose);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(11).starts_with("500 5.5.2"), "{:?}", r.replies);
    assert!(r.reply(12).starts_with("421 4.7.0"), "{:?}", r.replies);
    assert!(r.closed);
}

#[test]
fn junk_and_message_count_limits() {
    let s = Server::start("[smtp]\nmax_junk_commands = 5\nmax_messages_per_session = 2");
    s.add_user("bob@example.test", "pw");
    let mut steps = hello();
    for _ in 0..5 {
        steps.push(Step::Cmd("NOOP"));
    }
    steps.push(Step::UntilClose);
    let r = raw(s.mx(), false, None, &steps);
    assert!(
        r.replies.last().unwrap().starts_with("421 4.7.0"),
        "{:?}",
        r.replies
    );
    let mut steps = hello();
    for _ in 0..2 {
        steps.extend([
            Step::Cmd("MAIL FROM:<x@remote.test>"),
            Step::Cmd("RCPT TO:<bob@example.test>"),
            Step::Cmd("DATA"),
            Step::Cmd("Subject: n\r\n\r\nx\r\n."),
        ]);
    }
    steps.push(Step::Cmd("MAIL FROM:<x@remote.test>"));
    steps.push(Step::UntilClose);
    let r = raw(s.mx(), false, None, &steps);
    assert!(r.reply(10).starts_with("421 4.7.0"), "{:?}", r.replies);
    s.wait_messages("bob@example.test", 2);
}

#[test]
fn connection_limits_overall_and_per_ip() {
    let s = Server::start("[smtp]\nmax_connections = 3\nmax_connections_per_ip = 2");
    let hold = |src: &str| {
        let mut sock = connect_from(src, s.mx());
        let mut buf = [0u8; 256];
        let n = sock.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"220 "),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        sock
    };
    let a1 = hold("127.0.0.1");
    let _a2 = hold("127.0.0.1");
    let r = raw(s.mx(), false, Some("127.0.0.1"), &[Step::Read]);
    assert!(
        r.reply(0).starts_with("421 4.7.0"),
        "per-IP limit: {:?}",
        r.replies
    );
    let _b1 = hold("127.0.0.2");
    let r = raw(s.mx(), false, Some("127.0.0.3"), &[Step::Read]);
    assert!(
        r.reply(0).starts_with("421 4.7.0"),
        "overall limit: {:?}",
        r.replies
    );
    drop(a1);
    let ok = wait_for(std::time::Duration::from_secs(10), || {
        let r = raw(
            s.mx(),
            false,
            Some("127.0.0.1"),
            &[Step::Read, Step::Cmd("QUIT")],
        );
        r.reply(0).starts_with("220").then_some(())
    });
    assert!(ok.is_some(), "slot not released");
}

/// Connect from a chosen address of 127.0.0.0/8 (Linux routes all of it to loopback).
fn connect_from(src: &str, to: std::net::SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{src}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap().into_std().unwrap()
    });
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    sock
}

#[test]
fn auth_failures_close_the_session() {
    let s = Server::start("");
    s.add_user("alice@example.test", "right");
    let bad = "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==";
    let r = raw(
        s.submissions(),
        true,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd(bad),
            Step::Cmd(bad),
            Step::Cmd(bad),
            Step::UntilClose,
        ],
    );
    assert!(r.reply(2).starts_with("535 5.7.8"), "{:?}", r.replies);
    assert!(r.reply(3).starts_with("535 5.7.8"), "{:?}", r.replies);
    assert!(r.reply(4).starts_with("535 5.7.8"), "{:?}", r.replies);
    assert!(r.reply(5).starts_with("421 4.7.0"), "{:?}", r.replies);
    assert!(r.closed);
}

#[test]
fn connection_rate_per_ip_answers_421_at_connect() {
    let s = Server::start("[containment]\nmax_connections_per_minute_per_ip = 3");
    for _ in 0..3 {
        let r = raw(
            s.mx(),
            false,
            Some("127.0.0.1"),
            &[Step::Read, Step::Cmd("QUIT")],
        );
        assert!(r.reply(0).starts_with("220 "), "{:?}", r.replies);
    }
    let r = raw(s.mx(), false, Some("127.0.0.1"), &[Step::Read]);
    assert!(r.reply(0).starts_with("421 4.7.0"), "{:?}", r.replies);
    s.wait_log(&[
        "event=\"reject\"",
        "verb=\"CONNECT\"",
        "4 connections from 127.0.0.1",
    ]);
    // Another address is counted on its own.
    let r = raw(
        s.mx(),
        false,
        Some("127.0.0.2"),
        &[Step::Read, Step::Cmd("QUIT")],
    );
    assert!(r.reply(0).starts_with("220 "), "{:?}", r.replies);
}
