//! Submission on 465 (implicit TLS) and 587 (STARTTLS) with AUTH, as mail clients use it.

use crate::support::*;

fn server_with_users() -> Server {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("bob@example.test", "bob-pw");
    s
}

fn assert_trace(m: &str, proto: &str) {
    assert!(
        m.starts_with(
            "Return-Path: <alice@example.test>\nDelivered-To: bob@example.test\n\
             Authentication-Results: mx.example.test;\n\tauth=pass smtp.auth=alice@example.test\n\
             Received: from client.example.net ([127.0.0.1])\n\tby mx.example.test (mailwarden) with "
        ),
        "unexpected head:\n{m}"
    );
    assert!(
        m.contains(&format!("with {proto} id ")),
        "{proto} missing:\n{m}"
    );
    assert!(m.contains("\n\tfor <bob@example.test>;\n"), "{m}");
    if proto.contains('S') {
        assert!(m.contains("\n\t(TLSv1."), "TLS details missing:\n{m}");
    }
    assert!(!m.contains('\r'), "Maildir files use LF line endings");
}

#[test]
fn smtplib_465_plain_and_login_deliver_with_trace_headers() {
    let s = server_with_users();
    for auth in ["PLAIN", "LOGIN"] {
        let subject = format!("via 465 {auth}");
        let r = smtplib(
            s.submissions(),
            "ssl",
            &[
                "--user",
                "alice@example.test",
                "--password",
                "alice-pw",
                "--auth",
                auth,
                "--from",
                "alice@example.test",
                "--to",
                "bob@example.test",
                "--subject",
                &subject,
            ],
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    let msgs = s.wait_messages("bob@example.test", 2);
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert_trace(m, "ESMTPSA");
    }
    assert!(msgs.iter().any(|m| m.contains("Subject: via 465 PLAIN")));
    assert!(msgs.iter().any(|m| m.contains("Subject: via 465 LOGIN")));
    let line = s.wait_log(&["event=\"auth_ok\"", "mechanism=\"LOGIN\""]);
    assert!(line.contains("user=alice@example.test"), "{line}");
}

#[test]
fn smtplib_587_starttls_then_login_delivers() {
    let s = server_with_users();
    let r = smtplib(
        s.submission(),
        "starttls",
        &[
            "--user",
            "alice@example.test",
            "--password",
            "alice-pw",
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
            "--subject",
            "via 587",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    let msgs = s.wait_messages("bob@example.test", 1);
    assert_trace(&msgs[0], "ESMTPSA");
    assert!(msgs[0].contains("Subject: via 587"));
}

#[test]
fn remote_recipient_waits_durably_in_the_queue() {
    // remote.test's DNS does not answer: outbound delivery can only defer.
    let mut s = Server::start_with_zones("", "remote.test TIMEOUT\n");
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("bob@example.test", "bob-pw");
    let r = smtplib(
        s.submissions(),
        "ssl",
        &[
            "--user",
            "alice@example.test",
            "--password",
            "alice-pw",
            "--from",
            "alice@example.test",
            "--to",
            "carol@remote.test",
            "--to",
            "bob@example.test",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    s.wait_messages("bob@example.test", 1);
    let remote = "SELECT count(*) FROM queue_rcpt WHERE route = 'remote' \
                  AND status IN ('queued', 'deferred') AND address = 'carol@remote.test'";
    assert_eq!(s.query_count(remote), 1);
    // A crash does not lose it, and the local copy is not delivered again.
    s.restart();
    assert_eq!(s.query_count(remote), 1);
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(s.messages("bob@example.test").len(), 1);
}

#[test]
fn swaks_sends_on_all_three_ports() {
    let s = server_with_users();
    let sub = s.submissions().to_string();
    let subm = s.submission().to_string();
    let mx = s.mx().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "--server",
            &sub,
            "--tls-on-connect",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-pw",
            "--header",
            "Subject: swaks 465",
        ],
        vec![
            "--server",
            &subm,
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-pw",
            "--header",
            "Subject: swaks 587",
        ],
        // From outside, as another server: a sender of its own (our domain would be a
        // local-domain forgery there).
        vec!["--server", &mx, "--header", "Subject: swaks 25"],
    ];
    for args in cases {
        let from = if args.contains(&mx.as_str()) {
            "carol@remote.test"
        } else {
            "alice@example.test"
        };
        let mut a = vec![
            "--from",
            from,
            "--to",
            "bob@example.test",
            "--helo",
            "client.example.net",
        ];
        a.extend(args.iter());
        let out = run("swaks", &a, None);
        assert!(
            out.status.success(),
            "swaks {a:?} failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let msgs = s.wait_messages("bob@example.test", 3);
    let proto = |subj: &str| {
        msgs.iter()
            .find(|m| m.contains(&format!("Subject: {subj}")))
            .map(|m| {
                m.lines()
                    .find(|l| l.contains(" with "))
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_else(|| panic!("{subj} not delivered"))
    };
    assert!(proto("swaks 465").contains("with ESMTPSA"));
    assert!(proto("swaks 587").contains("with ESMTPSA"));
    assert!(proto("swaks 25").contains("with ESMTP id"));
}

#[test]
fn curl_smtps_and_ssl_reqd_starttls() {
    let s = server_with_users();
    let mail =
        "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: curl\r\n\r\nhi from curl\r\n";
    for url in [
        format!("smtps://127.0.0.1:{}", s.submissions().port()),
        format!("smtp://127.0.0.1:{}", s.submission().port()),
    ] {
        let out = run(
            "curl",
            &[
                "-sS",
                "--insecure",
                "--ssl-reqd",
                &url,
                "--user",
                "alice@example.test:alice-pw",
                "--mail-from",
                "alice@example.test",
                "--mail-rcpt",
                "bob@example.test",
                "--upload-file",
                "-",
            ],
            Some(mail),
        );
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let msgs = s.wait_messages("bob@example.test", 2);
    assert!(
        msgs.iter()
            .all(|m| m.contains("with ESMTPSA") && m.contains("hi from curl"))
    );
}

#[test]
fn auth_before_tls_is_refused() {
    let s = server_with_users();
    let r = raw(
        s.submission(),
        false,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO client.example.net"),
            Step::Cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw=="),
            Step::Cmd("AUTH LOGIN"),
            Step::Cmd("MAIL FROM:<alice@example.test>"),
        ],
    );
    assert!(
        !r.reply(1).contains("AUTH"),
        "AUTH offered before TLS: {}",
        r.reply(1)
    );
    assert!(r.reply(1).contains("STARTTLS"));
    assert!(r.reply(2).starts_with("538 5.7.11 "), "{}", r.reply(2));
    assert!(r.reply(3).starts_with("538 5.7.11 "), "{}", r.reply(3));
    assert!(r.reply(4).starts_with("530 5.7.0 "), "{}", r.reply(4));
    // After STARTTLS the mechanisms appear.
    let r = raw(
        s.submission(),
        false,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("STARTTLS"),
            Step::StartTls,
            Step::Cmd("EHLO c.example.net"),
        ],
    );
    assert!(r.reply(3).contains("AUTH PLAIN LOGIN"), "{}", r.reply(3));
}

#[test]
fn no_relay_without_auth_on_any_port() {
    let s = server_with_users();
    // Port 25: anyone may send to local users only.
    let r = smtplib(
        s.mx(),
        "plain",
        &["--from", "x@remote.test", "--to", "y@elsewhere.test"],
    );
    assert_eq!(r["ok"], false);
    assert_eq!(r["code"], 554, "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("5.7.1"), "{r}");
    // 587 and 465: nothing without AUTH, not even for local recipients.
    let r = raw(
        s.submission(),
        false,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("MAIL FROM:<x@remote.test>"),
            Step::Cmd("STARTTLS"),
            Step::StartTls,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("MAIL FROM:<x@remote.test>"),
            Step::Cmd("RCPT TO:<y@elsewhere.test>"),
        ],
    );
    assert!(r.reply(2).starts_with("530 5.7.0"), "{:?}", r.replies);
    assert!(r.reply(5).starts_with("530 5.7.0"), "{:?}", r.replies);
    assert!(r.reply(6).starts_with("503 5.5.1"), "{:?}", r.replies);
    let r = raw(
        s.submissions(),
        true,
        None,
        &[
            Step::Read,
            Step::Cmd("EHLO c.example.net"),
            Step::Cmd("MAIL FROM:<x@remote.test>"),
            Step::Cmd("RCPT TO:<bob@example.test>"),
        ],
    );
    assert!(r.reply(2).starts_with("530 5.7.0"), "{:?}", r.replies);
    assert!(r.reply(3).starts_with("503 5.5.1"), "{:?}", r.replies);
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 0);
    // Each refusal is one log line with the reason.
    let line = s.wait_log(&[
        "event=\"reject\"",
        "verb=\"RCPT\"",
        "rcpt=\"y@elsewhere.test\"",
    ]);
    assert!(
        line.contains("reason=\"relay attempt without authentication\""),
        "{line}"
    );
    assert!(line.contains("reply=554 5.7.1"), "{line}");
}

#[test]
fn failed_auth_is_slowed_logged_once_and_never_logs_the_secret() {
    let s = server_with_users();
    let r = smtplib(
        s.submissions(),
        "ssl",
        &[
            "--user",
            "alice@example.test",
            "--password",
            "Sup3rSecretGuess",
            "--auth",
            "PLAIN",
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
        ],
    );
    assert_eq!(r["code"], 535, "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("5.7.8"), "{r}");
    let line = s.wait_log(&["event=\"reject\"", "verb=\"AUTH\""]);
    assert!(line.contains("reply=535 5.7.8"), "{line}");
    let log = s.log();
    assert!(!log.contains("Sup3rSecretGuess"), "password in log");
    // base64 of "\0alice@example.test\0Sup3rSecretGuess" and its tail must not appear either.
    assert!(
        !log.contains("U3VwM3JTZWNyZXRHdWVzc"),
        "AUTH payload in log"
    );
    assert!(!log.contains("AGFsaWNl"), "AUTH payload in log");
}
