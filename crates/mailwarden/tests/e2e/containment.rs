//! Containing a hijacked account and a password-guessing botnet, end to end with the real
//! binary. The trigger arithmetic over long periods (a heavy sender's simulated week) is in
//! `containment.rs`'s tests, with an injected clock.

use crate::support::*;

/// External recipients' DNS never answers, so whatever is accepted stays in the queue where
/// the test can see whether it is held.
fn server() -> Server {
    let zones: String = (0..97)
        .map(|i| format!("victim{i}.test TIMEOUT\n"))
        .collect();
    let s = Server::start_with_zones("", &zones);
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("postmaster@example.test", "pm-pw");
    s
}

#[test]
fn a_hijacked_account_blasting_spam_is_suspended_within_twenty_messages() {
    let s = server();
    let r = blast(s.submissions(), "alice@example.test", "alice-pw");
    let accepted = r["accepted"].as_u64().unwrap();
    eprintln!("hijacked account: {accepted} messages accepted before the suspension");
    assert!(accepted <= 20, "{r}");
    assert_eq!(r["code"], 550, "{r}");
    assert!(r["message"].as_str().unwrap().contains("suspended"), "{r}");

    // Everything it queued waits, held: nothing of it can leave.
    let remote = "SELECT count(*) FROM queue_rcpt WHERE route = 'remote'";
    let held = "SELECT count(*) FROM queue_rcpt WHERE route = 'remote' AND status = 'held'";
    assert_eq!(s.query_count(remote), accepted as i64);
    assert_eq!(s.query_count(held), accepted as i64);

    let line = s.wait_log(&["event=\"account_suspended\"", "alice@example.test"]);
    assert!(line.contains("message burst"), "{line}");
    let status = s.cli(&["user", "status", "alice@example.test"], None);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("state:    suspended"), "{status}");
    assert!(
        status.contains("messages in the last minute"),
        "evidence: {status}"
    );
    let m = s.metrics();
    assert!(
        m.contains("mailwarden_account_suspensions_total{reason=\"message burst\"} 1"),
        "{m}"
    );
    // The postmaster is told, with what to do.
    let notes = s.wait_messages("postmaster@example.test", 1);
    assert!(
        notes[0].contains("Subject: Account suspended: alice@example.test"),
        "{}",
        notes[0]
    );
    assert!(
        notes[0].contains("user resume alice@example.test"),
        "{}",
        notes[0]
    );
    // The password alone no longer opens the account; the answer is a wrong password's.
    let r = submit(
        &s,
        "alice@example.test",
        "alice-pw",
        "postmaster@example.test",
        &[],
    );
    assert_eq!(r["code"], 535, "{r}");
}

#[test]
fn a_guessing_botnet_is_blocked_while_the_owner_still_gets_in() {
    let s = server();
    let mut codes = Vec::new();
    for i in 1..=50 {
        let src = format!("127.0.5.{i}");
        let r = smtplib(
            s.submissions(),
            "ssl",
            // One mechanism, so one failure per address (smtplib's login() tries each).
            &[
                "--source",
                &src,
                "--auth",
                "PLAIN",
                "--user",
                "alice@example.test",
                "--password",
                &format!("guess{i}"),
                "--from",
                "alice@example.test",
                "--to",
                "postmaster@example.test",
            ],
        );
        assert_eq!(r["ok"], false, "{r}");
        codes.push(r["code"].as_i64().unwrap_or(0));
    }
    // The first guesses are plain failures; once the /24 has had 30, the whole network is
    // blocked and no password is even checked.
    assert!(codes[..30].iter().all(|c| *c == 535), "{codes:?}");
    assert!(codes[30..].iter().all(|c| *c == 454), "{codes:?}");
    s.wait_log(&["event=\"auth_blocked\"", "blocked=127.0.5.0"]);
    let m = s.metrics();
    assert!(m.contains("mailwarden_auth_failures_total 30"), "{m}");
    assert!(m.contains("mailwarden_auth_blocks_total 1"), "{m}");

    // The owner, from another network, logs in and sends.
    let r = submit(
        &s,
        "alice@example.test",
        "alice-pw",
        "postmaster@example.test",
        &["--source", "127.0.9.1", "--subject", "still-me"],
    );
    assert_eq!(r["ok"], true, "{r}");
    let got = s.wait_messages("postmaster@example.test", 1);
    assert!(got[0].contains("Subject: still-me"));
}

#[test]
fn the_hourly_limit_answers_451_and_shows_the_account_throttled() {
    let s = Server::start("[containment]\nmax_messages_per_hour = 3\n");
    s.add_user("alice@example.test", "alice-pw");
    for i in 0..3 {
        let r = submit(
            &s,
            "alice@example.test",
            "alice-pw",
            "alice@example.test",
            &["--subject", &format!("n{i}")],
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = submit(
        &s,
        "alice@example.test",
        "alice-pw",
        "alice@example.test",
        &[],
    );
    assert_eq!(r["code"], 451, "{r}");
    let text = r["message"].as_str().unwrap();
    assert!(text.starts_with("4.7.1"), "{r}");
    assert!(text.contains("3 messages in the last hour"), "{r}");
    let status = s.cli(&["user", "status", "alice@example.test"], None);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("state:    throttled"), "{status}");
    assert!(status.contains("limit 3"), "{status}");
}

#[test]
fn a_heavy_but_steady_user_is_never_throttled_in_a_simulated_week() {
    let s = Server::start("");
    s.add_user("heavy@example.test", "heavy-pw");
    // Its usual correspondents, and the colleagues of its daily message: local accounts, so
    // every message is delivered and nothing waits in the queue.
    let people: Vec<String> = (0..100).map(|i| format!("p{i}@example.test")).collect();
    let colleagues: Vec<String> = (0..40).map(|i| format!("c{i}@example.test")).collect();
    for a in people.iter().chain(&colleagues) {
        s.add_user(a, "pw");
    }
    let port = s.submissions().port().to_string();
    let clock = s.dir.path().join("clock");
    let mut args = vec![
        clients_dir()
            .join("steady.py")
            .to_string_lossy()
            .into_owned(),
        "--port".into(),
        port,
        "--user".into(),
        "heavy@example.test".into(),
        "--password".into(),
        "heavy-pw".into(),
        "--clock".into(),
        clock.to_string_lossy().into_owned(),
        "--hours".into(),
        "168".into(),
        "--per-hour".into(),
        "150".into(),
    ];
    for p in &people {
        args.extend(["--to".into(), p.clone()]);
    }
    for c in &colleagues {
        args.extend(["--colleague".into(), c.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("python3", &args, None);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("steady.py: {}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("heavy user: {r}");
    assert_eq!(r["code"], serde_json::Value::Null, "refused: {r}");
    assert_eq!(r["sent"], 168 * 150 + 7, "{r}");
    let status = s.cli(&["user", "status", "heavy@example.test"], None);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("state:    active"), "{status}");
    assert!(s.log_lines(&["event=\"account_suspended\""]).is_empty());
    assert_eq!(
        s.messages("c0@example.test").len(),
        7,
        "one daily message a day"
    );
}

#[test]
fn outbound_mail_that_scores_as_spam_is_held_and_repeated_spam_suspends() {
    let s =
        Server::start("[scoring]\nquarantine = 3.0\n[containment]\nspam_messages_per_hour = 2\n");
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("bob@example.test", "bob-pw");
    s.add_user("postmaster@example.test", "pm-pw");
    // No Date, no Message-ID, an empty To and a link to a bare address.
    let spam = "From: alice@example.test\r\nTo:\r\nSubject: deal\r\n\r\nhttp://192.0.2.9/buy\r\n";
    let send = || {
        smtplib_stdin(
            s.submissions(),
            "ssl",
            &[
                "--raw",
                "--user",
                "alice@example.test",
                "--password",
                "alice-pw",
                "--from",
                "alice@example.test",
                "--to",
                "bob@example.test",
            ],
            Some(spam.as_bytes()),
        )
    };
    let r = send();
    assert_eq!(r["ok"], true, "held, the client is not told: {r}");
    let list = String::from_utf8_lossy(&s.cli(&["quarantine", "list"], None).stdout).into_owned();
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains("content.ip_url"), "{list}");
    assert_eq!(
        s.query_count("SELECT count(*) FROM quarantine WHERE account = 'alice@example.test'"),
        1
    );

    let r = send();
    assert_eq!(r["ok"], true, "{r}");
    let line = s.wait_log(&["event=\"account_suspended\"", "alice@example.test"]);
    assert!(line.contains("outbound mail scores as spam"), "{line}");
    assert_eq!(
        send()["code"],
        535,
        "suspended: AUTH refused as a wrong password"
    );
    assert!(s.messages("bob@example.test").is_empty());

    // An administrator who disagrees releases one; it is delivered.
    let id = list.split_whitespace().next().unwrap();
    assert!(s.cli(&["quarantine", "release", id], None).status.success());
    let got = s.wait_messages("bob@example.test", 1);
    assert!(got[0].contains("Subject: deal"), "{}", got[0]);
}
