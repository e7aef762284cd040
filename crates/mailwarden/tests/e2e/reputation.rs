//! Sender reputation from our own history, end to end: a sender our user wrote to, and a
//! reply to a message our user sent, are recognised only when SPF vouches for the From
//! domain; a client whose mail we kept refusing carries that history to its next message.

use crate::support::*;
use std::time::Duration;

const ZONES: &str = "remote.test TXT v=spf1 ip4:127.0.0.1 -all\n";

fn raw(from: &str, to: &str, subject: &str, extra: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\
         Message-ID: <{}@remote.test>\r\n\r\nhello\r\n",
        subject.replace(' ', ".")
    )
}

#[test]
fn correspondents_and_replies_are_recognised_only_when_authenticated() {
    let s = Server::start_with_zones("", ZONES);
    s.add_user("alice@example.test", "pw");
    // Alice writes to bob (the message waits in the queue: remote.test has no MX here).
    let first = "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: lunch\r\n\
        Message-ID: <lunch.1@example.test>\r\n\r\nTuesday?\r\n";
    let r = smtplib_stdin(
        s.submissions(),
        "ssl",
        &[
            "--user",
            "alice@example.test",
            "--password",
            "pw",
            "--from",
            "alice@example.test",
            "--to",
            "bob@remote.test",
            "--raw",
        ],
        Some(first.as_bytes()),
    );
    assert_eq!(r["ok"], true, "{r}");
    wait_for(Duration::from_secs(10), || {
        (s.query_count("SELECT COUNT(*) FROM sent_ids") == 1).then_some(())
    })
    .expect("the sent Message-ID remembered");

    let mx = |from: &str, text: &str| {
        let r = smtplib_stdin(
            s.mx(),
            "plain",
            &["--from", from, "--to", "alice@example.test", "--raw"],
            Some(text.as_bytes()),
        );
        assert_eq!(r["ok"], true, "{r}");
    };
    // Bob answers (SPF passes for remote.test, aligned with his From).
    mx(
        "bob@remote.test",
        &raw(
            "Bob <bob@remote.test>",
            "alice@example.test",
            "re lunch",
            "In-Reply-To: <lunch.1@example.test>\r\n",
        ),
    );
    // Bob again, a new thread: a known correspondent.
    mx(
        "bob@remote.test",
        &raw("bob@remote.test", "alice@example.test", "photos", ""),
    );
    // Someone forging bob's From, from a domain that publishes no SPF: nothing vouches for
    // the From, so nothing is credited.
    mx(
        "x@forger.test",
        &raw(
            "bob@remote.test",
            "alice@example.test",
            "re lunch forged",
            "In-Reply-To: <lunch.1@example.test>\r\n",
        ),
    );
    s.wait_messages("alice@example.test", 3);
    let reply = s.search_records(&["--reason", "reputation.reply"]);
    assert_eq!(reply.len(), 1, "{reply:?}");
    assert_eq!(reply[0]["subject"], "re lunch");
    let known = s.search_records(&["--reason", "reputation.correspondent"]);
    assert_eq!(known.len(), 1, "{known:?}");
    assert_eq!(known[0]["subject"], "photos");
    let id = known[0]["id"].as_str().unwrap();
    let report = s.cli_ok(&["explain", id], None);
    assert!(
        report.contains("our users have written to bob@remote.test")
            && report.contains("weight -2.50 (built-in)"),
        "{report}"
    );
}

#[test]
fn a_client_we_kept_refusing_carries_its_history() {
    // Mail dated this long ago is refused here, so the history is quick to make.
    let s = Server::start_with_zones("[scoring.weights]\n\"headers.date_past\" = 12.0\n", ZONES);
    s.add_user("alice@example.test", "pw");
    let send = |subject: &str, date: &str| {
        smtplib_stdin(
            s.mx(),
            "plain",
            &[
                "--from",
                "x@elsewhere.test",
                "--to",
                "alice@example.test",
                "--source",
                "127.0.0.5",
                "--raw",
            ],
            Some(raw("x@elsewhere.test", "alice@example.test", subject, date).as_bytes()),
        )
    };
    for i in 0..3 {
        let r = send(
            &format!("old {i}"),
            "Date: Tue, 17 May 2011 14:17:47 -0500\r\n",
        );
        assert_eq!(r["code"], 550, "{r}");
    }
    wait_for(Duration::from_secs(10), || {
        (s.query_count("SELECT SUM(rejected) FROM reputation WHERE identity = 'ip:127.0.0.5'") == 3)
            .then_some(())
    })
    .expect("the refusals counted");
    let r = send("new", "");
    assert_eq!(r["ok"], true, "{r}");
    let bad = s.search_records(&["--reason", "reputation.bad"]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    let id = bad[0]["id"].as_str().unwrap();
    let report = s.cli_ok(&["explain", id], None);
    assert!(
        report.contains("ip:127.0.0.5: 0 accepted, 0 junked, 0 quarantined, 3 rejected"),
        "{report}"
    );
}
