//! Port 25: mail for local users from anyone, nothing else; address tricks, SMTP smuggling and
//! STARTTLS injection.

use crate::support::*;

fn mx_server(extra: &str) -> Server {
    let s = Server::start(extra);
    s.add_user("bob@example.test", "bob-pw");
    s
}

#[test]
fn mx_takes_local_users_and_postmaster_only() {
    let s = mx_server("");
    let ok = smtplib(
        s.mx(),
        "plain",
        &[
            "--from",
            "sender@remote.test",
            "--to",
            "bob@example.test",
            "--subject",
            "inbound",
        ],
    );
    assert_eq!(ok["ok"], true, "{ok}");
    let unknown = smtplib(
        s.mx(),
        "plain",
        &[
            "--from",
            "sender@remote.test",
            "--to",
            "nobody@example.test",
        ],
    );
    assert_eq!(unknown["code"], 550, "{unknown}");
    assert!(unknown["message"].as_str().unwrap().starts_with("5.1.1"));
    let relay = smtplib(
        s.mx(),
        "plain",
        &["--from", "sender@remote.test", "--to", "bob@remote.test"],
    );
    assert_eq!(relay["code"], 554, "{relay}");
    let r = raw(
        s.mx(),
        false,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("MAIL FROM:<>"),
            Step::Cmd("RCPT TO:<Postmaster>"),
            Step::Cmd("RCPT TO:<POSTMASTER@example.test>"),
            Step::Cmd("DATA"),
            Step::Cmd("Subject: to postmaster\r\n\r\nhello\r\n."),
            Step::Cmd("QUIT"),
        ],
    );
    assert_eq!(
        r.codes()[2..7],
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 2.0.0",
            "250 2.0.0"
        ],
        "{:?}",
        r.replies
    );
    assert!(!r.reply(1).contains("AUTH"), "port 25 must not offer AUTH");
    let pm = s.wait_messages("postmaster@example.test", 2);
    assert!(pm.iter().all(|m| m.starts_with("Return-Path: <>\n")));
    let bob = s.wait_messages("bob@example.test", 1);
    assert!(bob[0].contains("with ESMTP id"), "{}", bob[0]);
    assert!(bob[0].contains("Subject: inbound"));
}

#[test]
fn relay_tricks_are_never_relayed() {
    let s = mx_server("[smtp]\nmax_errors = 100");
    s.add_user("alice@example.test", "alice-pw");
    let tricks: &[(&str, &str)] = &[
        ("<bob%remote.test@example.test>", "550 5.1.1"),
        ("<remote.test!bob@example.test>", "550 5.1.1"),
        ("<\"bob@remote.test\"@example.test>", "550 5.1.1"),
        ("<\"bob%remote.test\"@example.test>", "550 5.1.1"),
        ("<@example.test:bob@remote.test>", "554 5.7.1"),
        ("<@example.test,@relay.test:bob@remote.test>", "554 5.7.1"),
        ("<bob@remote.test@example.test>", "501 5.1.3"),
        ("<bob@[127.0.0.1]>", "554 5.7.1"),
        ("<bob@[IPv6:::1]>", "554 5.7.1"),
        ("<bob@example.test.>", "501 5.1.3"),
        ("<bob@remote.test.>", "501 5.1.3"),
        ("<BOB@REMOTE.TEST>", "554 5.7.1"),
        ("bob@remote.test", "501 5.1.3"),
        ("<bob\\@remote.test@example.test>", "501 5.1.3"),
        ("<remote.test:bob@example.test>", "501 5.1.3"),
    ];
    let mut steps = vec![
        Step::Read,
        Step::Cmd("EHLO c.example.net"),
        Step::Cmd("MAIL FROM:<x@remote.test>"),
    ];
    let cmds: Vec<String> = tricks.iter().map(|(a, _)| format!("RCPT TO:{a}")).collect();
    steps.extend(cmds.iter().map(|c| Step::Cmd(c)));
    steps.push(Step::Cmd("DATA"));
    let r = raw(s.mx(), false, None, &steps);
    for (i, (addr, want)) in tricks.iter().enumerate() {
        let got = r.reply(3 + i);
        assert!(
            got.starts_with(want),
            "RCPT TO:{addr}: want {want}, got {got}"
        );
    }
    assert!(
        r.reply(3 + tricks.len()).starts_with("554 5.5.1"),
        "DATA must have no recipients"
    );
    // Authenticated, a trick that names a local domain is still never routed through it.
    let r = raw(
        s.submissions(),
        true,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw=="),
            Step::Cmd("MAIL FROM:<alice@example.test>"),
            Step::Cmd("RCPT TO:<bob%remote.test@example.test>"),
            Step::Cmd("RCPT TO:<\"bob@remote.test\"@example.test>"),
            Step::Cmd("RCPT TO:<bob@[127.0.0.1]>"),
        ],
    );
    assert!(r.reply(2).starts_with("235"), "{:?}", r.replies);
    assert!(r.reply(4).starts_with("550 5.1.1"), "{:?}", r.replies);
    assert!(r.reply(5).starts_with("550 5.1.1"), "{:?}", r.replies);
    assert!(r.reply(6).starts_with("553 5.1.3"), "{:?}", r.replies);
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 0);
}

/// Payloads of the SMTP-smuggling family: each tries to end DATA early with a non-CRLF
/// terminator and start a second, spoofed transaction.
fn smuggling_payloads() -> Vec<String> {
    let smuggled = "MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: SMUGGLED\r\n\r\nspoofed\r\n";
    [
        "\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r.\r", "\n.\r",
    ]
    .iter()
    .map(|end| format!("Subject: first\r\n\r\nfirst part{end}{smuggled}.\r\n"))
    .collect()
}

#[test]
fn smuggling_payloads_never_create_a_second_message() {
    let s = mx_server("");
    for p in smuggling_payloads() {
        let r = raw(
            s.mx(),
            false,
            None,
            &[
                Step::Read,
                Step::Cmd("EHLO c.example.net"),
                Step::Cmd("MAIL FROM:<x@remote.test>"),
                Step::Cmd("RCPT TO:<bob@example.test>"),
                Step::Cmd("DATA"),
                Step::Send(&p),
                Step::Read,
                Step::Cmd("QUIT"),
            ],
        );
        assert!(
            r.reply(5).starts_with("554 5.5.2"),
            "payload {p:?}: {:?}",
            r.replies
        );
        assert!(
            r.reply(6).starts_with("221"),
            "payload {p:?}: {:?}",
            r.replies
        );
    }
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(s.messages("bob@example.test").is_empty());
    assert_eq!(
        s.log_lines(&["event=\"reject\"", "bare CR or LF"]).len(),
        smuggling_payloads().len()
    );
}

#[test]
fn smuggling_in_normalize_mode_gives_exactly_one_message_each() {
    let s = mx_server("[smtp]\nbare_lf = \"normalize\"");
    let payloads = smuggling_payloads();
    for p in &payloads {
        let r = raw(
            s.mx(),
            false,
            None,
            &[
                Step::Read,
                Step::Cmd("EHLO c.example.net"),
                Step::Cmd("MAIL FROM:<x@remote.test>"),
                Step::Cmd("RCPT TO:<bob@example.test>"),
                Step::Cmd("DATA"),
                Step::Send(p),
                Step::Read,
                Step::Cmd("QUIT"),
            ],
        );
        assert!(
            r.reply(5).starts_with("250 2.0.0"),
            "payload {p:?}: {:?}",
            r.replies
        );
        assert!(
            r.reply(6).starts_with("221"),
            "one reply per transaction: {:?}",
            r.replies
        );
    }
    let msgs = s.wait_messages("bob@example.test", payloads.len());
    assert_eq!(msgs.len(), payloads.len());
    for m in &msgs {
        // The would-be second message is inert text inside the first.
        assert!(m.contains("first part") && m.contains("SMUGGLED"), "{m}");
        assert!(!m.starts_with("Return-Path: <admin@example.test>"));
    }
}

#[test]
fn starttls_injection_is_discarded() {
    let s = mx_server("");
    let r = raw(
        s.mx(),
        false,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Send(
                "STARTTLS\r\nMAIL FROM:<injected@remote.test>\r\nRCPT TO:<bob@example.test>\r\n",
            ),
            Step::Read,
            Step::StartTls,
            Step::Cmd("RCPT TO:<bob@example.test>"),
            Step::Cmd("MAIL FROM:<x@remote.test>"),
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("MAIL FROM:<x@remote.test>"),
        ],
    );
    assert!(r.reply(2).starts_with("220 2.0.0"), "{:?}", r.replies);
    // Neither the injected MAIL nor the pre-TLS EHLO survived the handshake.
    assert!(r.reply(3).starts_with("503 5.5.1"), "{:?}", r.replies);
    assert!(
        r.reply(4).starts_with("503 5.5.1 Send HELO"),
        "{:?}",
        r.replies
    );
    assert!(
        !r.reply(5).contains("STARTTLS"),
        "STARTTLS offered twice: {}",
        r.reply(5)
    );
    assert!(r.reply(6).starts_with("250 2.1.0"), "{:?}", r.replies);
    let line = s.wait_log(&["event=\"starttls_injection\""]);
    assert!(line.contains("discarded=62"), "{line}");
}
