//! Learning from users through a real IMAP server: Dovecot (Debian `dovecot-imapd`, started
//! here on a loopback port over the server's Maildir) serves alice's mail, Junk included;
//! a real client (Python's imaplib) moves a message into Junk and another out of it, and
//! mailwarden learns them as spam and ham (classifier and reputation), once, and unlearns the
//! one moved back.

use crate::support::*;
use std::time::Duration;

#[test]
fn moves_in_a_real_imap_client_are_learned_once_and_unlearned_when_moved_back() {
    // A Date this old is given the junk score by itself here, so one message goes to Junk.
    let s = Server::start(
        "[learning]\nscan_interval = \"1s\"\n\
         [scoring.weights]\n\"headers.date_past\" = 6.0\n",
    );
    s.add_user("alice@example.test", "pw");
    let send = |subject: &str, date: Option<&str>| {
        let date = date.map(|d| format!("Date: {d}\r\n")).unwrap_or_default();
        let raw = format!(
            "From: someone@elsewhere.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\
             {date}Message-ID: <{}@elsewhere.test>\r\n\r\nsome text about {subject}\r\n",
            subject.replace(' ', ".")
        );
        let r = smtplib_stdin(
            s.mx(),
            "plain",
            &[
                "--from",
                "someone@elsewhere.test",
                "--to",
                "alice@example.test",
                "--raw",
            ],
            Some(raw.as_bytes()),
        );
        assert_eq!(r["ok"], true, "{r}");
    };
    send("cheap replica watches", None);
    send(
        "minutes of the meeting",
        Some("Tue, 17 May 2011 14:17:47 -0500"),
    );
    s.wait_messages("alice@example.test", 1);
    let junk = s.maildir("alice@example.test").join(".Junk");
    wait_for(Duration::from_secs(20), || {
        s.messages_in(&junk).into_iter().next()
    })
    .expect("the old-dated message in Junk");

    let dovecot = Dovecot::start(&s.data_dir(), &[("alice@example.test", "imap-pw")], false);
    let seen = dovecot.client("alice@example.test", "imap-pw", &[]);
    assert_eq!(
        seen["folders"]["Junk"],
        serde_json::json!(["minutes of the meeting"]),
        "Dovecot reads the Junk folder we wrote: {seen}"
    );
    assert_eq!(
        seen["folders"]["INBOX"],
        serde_json::json!(["cheap replica watches"])
    );

    // Alice disagrees with both: spam into Junk, the minutes out of it.
    let moved = dovecot.client(
        "alice@example.test",
        "imap-pw",
        &[
            ("cheap replica watches", "INBOX", "Junk"),
            ("minutes of the meeting", "Junk", "INBOX"),
        ],
    );
    assert_eq!(moved["moved"], 2, "{moved}");
    let count = |key: &str| {
        s.query_count(&format!(
            "SELECT COALESCE(MAX(value), 0) FROM bayes_meta WHERE key = '{key}'"
        ))
    };
    wait_for(Duration::from_secs(60), || {
        (count("spam_messages") == 1 && count("ham_messages") == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("not learned; log:\n{}", s.log()));
    // The log line comes after the store's write: wait for it before counting.
    s.wait_log(&["event=\"learned_from_user\"", "label=\"spam\""]);
    s.wait_log(&["event=\"learned_from_user\"", "label=\"ham\""]);
    assert_eq!(
        s.log_lines(&["event=\"learned_from_user\"", "label=\"spam\""])
            .len(),
        1
    );
    assert_eq!(
        s.log_lines(&["event=\"learned_from_user\"", "label=\"ham\""])
            .len(),
        1
    );
    // Reputation: the sender's identities (its IP, /24 and /16) carry the marks.
    assert_eq!(
        s.query_count("SELECT SUM(marked_spam) FROM reputation WHERE identity = 'ip:127.0.0.1'"),
        1
    );
    assert_eq!(
        s.query_count("SELECT SUM(marked_ham) FROM reputation WHERE identity = 'ip:127.0.0.1'"),
        1
    );

    // Once: later passes change nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((count("spam_messages"), count("ham_messages")), (1, 1));

    // Back to the inbox: unlearned.
    dovecot.client(
        "alice@example.test",
        "imap-pw",
        &[("cheap replica watches", "Junk", "INBOX")],
    );
    wait_for(Duration::from_secs(60), || {
        (count("spam_messages") == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("not unlearned; log:\n{}", s.log()));
    assert_eq!(count("ham_messages"), 1);
    assert_eq!(
        s.query_count("SELECT SUM(marked_spam) FROM reputation WHERE identity = 'ip:127.0.0.1'"),
        0
    );
}
