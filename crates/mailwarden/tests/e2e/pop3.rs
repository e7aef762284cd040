//! POP3 (RFC 1939, 2449, 2595, 5034) with Python's poplib against mail delivered through
//! SMTP, Dovecot IMAP on the same Maildir, and POP-before-SMTP with its safeguards.

use crate::support::*;
use serde_json::Value;
use std::path::Path;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const PW: &str = "alice-pw";
const BOB_PW: &str = "bob-pw";

fn op(v: &Value, i: usize) -> &Value {
    let o = &v["ops"][i];
    assert!(!o.is_null(), "no op {i} in {v}");
    o
}

fn ok(v: &Value, i: usize) -> &Value {
    let o = op(v, i);
    assert!(o.get("error").is_none(), "op {i} failed: {v}");
    o
}

fn lines(o: &Value) -> Vec<String> {
    o["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// The subject in a RETR's or TOP's lines.
fn subject(o: &Value) -> String {
    lines(o)
        .into_iter()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        .unwrap_or_default()
}

/// Files in a Maildir's `new/` and `cur/`.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

fn deliver(s: &Server, subjects: &[&str]) {
    for subj in subjects {
        let r = submit(s, ALICE, PW, ALICE, &["--subject", subj]);
        assert_eq!(r["ok"], true, "{r}");
    }
    s.wait_messages(ALICE, subjects.len());
}

#[test]
fn poplib_reads_deletes_at_quit_and_keeps_its_uids() {
    let s = Server::start("[listen]\npop3 = \"127.0.0.1:0\"\n");
    s.add_user(ALICE, PW);
    deliver(&s, &["one", "two", "three"]);
    let pop3s = s.ports["pop3s"];
    let login = Some((ALICE, PW));

    // Over implicit TLS: the listing, TOP, RETR and a DELE never confirmed by QUIT.
    let v = pop3(
        pop3s,
        "ssl",
        login,
        None,
        &[
            "stat", "list", "uidl", "top:1:0", "retr:2", "dele:1", "noquit",
        ],
    );
    assert!(
        ok(&v, 0)["resp"]
            .as_str()
            .unwrap()
            .starts_with("+OK Logged in: 3 messages"),
        "{v}"
    );
    assert_eq!(ok(&v, 1)["count"], 3);
    let listed = lines(ok(&v, 2));
    assert_eq!(listed.len(), 3);
    let sizes: Vec<u64> = listed
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ok(&v, 1)["size"], sizes.iter().sum::<u64>());
    let uids = lines(ok(&v, 3));
    let top = ok(&v, 4);
    assert!(
        lines(top).last().unwrap().is_empty(),
        "TOP n 0: the header and the blank line only: {top}"
    );
    let retr = ok(&v, 5);
    // The octets RETR sent (before unstuffing, with CRLFs) match what LIST announced.
    let body_lines = lines(retr);
    assert!(
        body_lines.iter().any(|l| l == "Hello from smtplib."),
        "{retr}"
    );
    let announced = sizes[1];
    let sent: u64 = body_lines.iter().map(|l| l.len() as u64 + 2).sum();
    assert_eq!(sent, announced, "LIST's size is what RETR sends");
    let retrieved = subject(retr);
    assert!(["one", "two", "three"].contains(&retrieved.as_str()));
    assert!(ok(&v, 6)["resp"].as_str().unwrap().starts_with("+OK"));
    assert_eq!(
        s.messages(ALICE).len(),
        3,
        "DELE without QUIT removes nothing"
    );
    // RETR marked it seen: moved to cur/ with S; the others are untouched.
    let dir = s.maildir(ALICE);
    let seen: Vec<_> = files(&dir)
        .into_iter()
        .filter(|f| f.ends_with(":2,S"))
        .collect();
    assert_eq!(seen.len(), 1, "{:?}", files(&dir));
    assert!(seen[0].starts_with("cur/"));

    // Over STLS: the same ids; DELE then QUIT removes.
    let v = pop3(
        s.ports["pop3"],
        "stls",
        login,
        None,
        &["uidl", "dele:1", "retr:1", "list"],
    );
    assert!(v["stls"].as_str().unwrap().starts_with("+OK"), "{v}");
    assert_eq!(lines(ok(&v, 1)), uids, "UIDs are stable across sessions");
    assert!(
        op(&v, 3)["error"].as_str().unwrap().starts_with("-ERR"),
        "{v}"
    );
    assert_eq!(lines(ok(&v, 4)).len(), 2, "a deleted message is not listed");
    assert!(v["quit"].as_str().unwrap().starts_with("+OK"), "{v}");
    assert_eq!(s.messages(ALICE).len(), 2, "QUIT applied the deletion");
    let v = pop3(pop3s, "ssl", login, None, &["uidl"]);
    assert_eq!(
        lines(ok(&v, 1)),
        uids[1..]
            .iter()
            .map(|u| {
                let (n, id) = u.split_once(' ').unwrap();
                format!("{} {id}", n.parse::<u32>().unwrap() - 1)
            })
            .collect::<Vec<_>>()
    );

    // Plaintext: STLS and nothing else to log in with; USER/PASS refused.
    let v = pop3(s.ports["pop3"], "plain", login, None, &["capa"]);
    let refused = op(&v, 0)["error"].as_str().unwrap();
    assert!(refused.starts_with("-ERR [AUTH]"), "{v}");
    let caps = &ok(&v, 1)["caps"];
    assert!(
        caps.get("STLS").is_some() && caps.get("USER").is_none(),
        "{v}"
    );
    assert!(
        s.wait_log(&["pop3_refused", "login_before_tls"])
            .contains("\"USER\"")
    );
    // A wrong password counts with the AUTH failures.
    let v = pop3(pop3s, "ssl", Some((ALICE, "wrong")), None, &[]);
    assert_eq!(op(&v, 0)["error"], "-ERR [AUTH] Authentication failed");
    assert!(s.metrics().contains("mailwarden_auth_failures_total 1"));
    s.wait_log(&["pop3_login_refused", "invalid_credentials"]);
}

#[test]
fn one_pop3_session_per_mailbox_and_a_suspended_account_still_reads() {
    let s = Server::start("");
    s.add_user(ALICE, PW);
    deliver(&s, &["one"]);
    let pop3s = s.ports["pop3s"];
    let held = Pop3Held::start(pop3s, (ALICE, PW), &[], &["stat"]);
    let v = pop3(pop3s, "ssl", Some((ALICE, PW)), None, &[]);
    assert_eq!(
        op(&v, 0)["error"],
        "-ERR [IN-USE] Mailbox is in use by another POP3 session"
    );
    let v = held.finish();
    assert_eq!(ok(&v, 3)["count"], 1, "{v}");
    // Suspended: no sending, but the mail is still the user's to read.
    s.cli_ok(&["user", "suspend", ALICE], None);
    let v = pop3(pop3s, "ssl", Some((ALICE, PW)), None, &["stat"]);
    assert_eq!(ok(&v, 1)["count"], 1, "{v}");
}

#[test]
fn dovecot_and_pop3_see_each_others_flags_on_one_maildir() {
    let s = Server::start("");
    s.add_user(ALICE, PW);
    deliver(&s, &["a", "b", "c"]);
    let d = Dovecot::start(&s.data_dir(), &[(ALICE, PW)], false);
    let pop3s = s.ports["pop3s"];
    let login = Some((ALICE, PW));
    // Which number is which subject.
    let v = pop3(
        pop3s,
        "ssl",
        login,
        None,
        &["top:1:0", "top:2:0", "top:3:0"],
    );
    let by_subject: Vec<String> = (1..=3).map(|i| subject(ok(&v, i))).collect();
    let n = |subj: &str| (by_subject.iter().position(|x| x == subj).unwrap() + 1).to_string();

    // POP3's RETR is IMAP's \Seen; TOP is not.
    let v = pop3(pop3s, "ssl", login, None, &[&format!("retr:{}", n("a"))]);
    ok(&v, 1);
    let f = d.flags(ALICE, PW, &[], &[]);
    assert_eq!(f["a"], serde_json::json!(["\\Seen"]), "{f}");
    assert_eq!(f["b"], serde_json::json!([]), "{f}");

    // IMAP flags b and renames its file; POP3 still finds it by its id and keeps the flag.
    let uids_before = lines(ok(&pop3(pop3s, "ssl", login, None, &["uidl"]), 1));
    d.flags(ALICE, PW, &[("b", "\\Flagged")], &[]);
    let v = pop3(
        pop3s,
        "ssl",
        login,
        None,
        &["uidl", &format!("retr:{}", n("b"))],
    );
    assert_eq!(
        lines(ok(&v, 1)),
        uids_before,
        "an IMAP flag change does not change POP3 ids"
    );
    assert_eq!(subject(ok(&v, 2)), "b");
    let f = d.flags(ALICE, PW, &[], &[]);
    assert_eq!(f["b"], serde_json::json!(["\\Flagged", "\\Seen"]), "{f}");

    // IMAP expunges c while a POP3 session has it listed: RETR says it is gone, the
    // session goes on, and its own DELE of a still applies at QUIT.
    let held = Pop3Held::start(
        pop3s,
        (ALICE, PW),
        &["list"],
        &[&format!("retr:{}", n("c")), &format!("dele:{}", n("a"))],
    );
    let f = d.flags(ALICE, PW, &[], &["c"]);
    assert!(f.get("c").is_none(), "{f}");
    let v = held.finish();
    assert_eq!(
        op(&v, 4)["error"],
        "-ERR Message was removed by another client",
        "{v}"
    );
    ok(&v, 5);
    assert!(v["quit"].as_str().unwrap().starts_with("+OK"), "{v}");
    let f = d.flags(ALICE, PW, &[], &[]);
    let left: Vec<&String> = f.as_object().unwrap().keys().collect();
    assert_eq!(left, ["b"], "{f}");
}

/// Send from `source` on `port` without AUTH (send.py, STARTTLS or implicit TLS).
fn send(port: std::net::SocketAddr, mode: &str, source: &str, from: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--source", source, "--from", from, "--to", BOB];
    args.extend_from_slice(extra);
    smtplib(port, mode, &args)
}

fn pop_login(s: &Server, who: (&str, &str), source: &str) {
    let v = pop3(s.ports["pop3s"], "ssl", Some(who), Some(source), &[]);
    ok(&v, 0);
}

#[test]
fn pop_before_smtp_grants_one_account_on_submission_for_its_window() {
    let s = Server::start(
        "[pop_before_smtp]\nmode = \"enforce\"\nwindow = \"10m\"\nnetworks = [\"127.0.0.5\", \"127.0.0.6\", \"127.0.0.8\"]\n",
    );
    s.add_user(ALICE, PW);
    s.add_user(BOB, BOB_PW);
    // No POP3 login yet: AUTH is required, as ever.
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");

    pop_login(&s, (ALICE, PW), "127.0.0.5");
    let r = send(
        s.submission(),
        "starttls",
        "127.0.0.5",
        ALICE,
        &["--subject", "granted"],
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = send(
        s.submissions(),
        "ssl",
        "127.0.0.5",
        ALICE,
        &["--subject", "granted 465"],
    );
    assert_eq!(r["ok"], true, "{r}");
    let got = s.wait_messages(BOB, 2);
    assert!(
        got.iter()
            .all(|m| m.contains("(POP-before-SMTP as alice@example.test)")
                && m.contains("with ESMTPS ")),
        "{got:?}"
    );
    let rec = s.search_records(&["--reason", "auth.pop_before_smtp"]);
    assert!(rec.iter().all(|r| r["account"] == ALICE), "{rec:?}");
    s.wait_log(&["\"pop_before_smtp\"", "127.0.0.5"]);

    // As that account only: another's address, in the envelope or in From:, is refused.
    let r = send(s.submission(), "starttls", "127.0.0.5", BOB, &[]);
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["code"].as_u64().is_some_and(|c| c >= 550), "{r}");
    let r = send(
        s.submission(),
        "starttls",
        "127.0.0.5",
        ALICE,
        &["--header-from", BOB],
    );
    assert_eq!(r["ok"], false, "{r}");
    // The MX port never asks: no relay from a granted address.
    let r = smtplib(
        s.mx(),
        "plain",
        &[
            "--source",
            "127.0.0.5",
            "--from",
            ALICE,
            "--to",
            "someone@elsewhere.test",
        ],
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["stage"], "rcpt", "{r}");

    // Outside `networks`: a POP3 login grants nothing.
    pop_login(&s, (ALICE, PW), "127.0.0.7");
    let r = send(s.submission(), "starttls", "127.0.0.7", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");

    // Two accounts from one address: nothing for either.
    pop_login(&s, (ALICE, PW), "127.0.0.6");
    pop_login(&s, (BOB, BOB_PW), "127.0.0.6");
    for from in [ALICE, BOB] {
        let r = send(s.submission(), "starttls", "127.0.0.6", from, &[]);
        assert_eq!(r["code"], 530, "{r}");
    }

    // A password change ends it.
    s.cli_ok(
        &["user", "passwd", ALICE, "--password-stdin"],
        Some("alice-pw-2\n"),
    );
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");
    // So does a suspension, and a suspended account's login grants nothing.
    pop_login(&s, (ALICE, "alice-pw-2"), "127.0.0.5");
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["ok"], true, "{r}");
    s.cli_ok(&["user", "suspend", ALICE], None);
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");
    s.cli_ok(&["user", "resume", ALICE, "--release"], None);

    // After the window: AUTH required again.
    pop_login(&s, (ALICE, "alice-pw-2"), "127.0.0.5");
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["ok"], true, "{r}");
    s.advance_clock(601);
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");

    // A second account's right password counts even when its login goes no further (its
    // account is suspended; it still reads): nothing for the first either.
    s.cli_ok(&["user", "suspend", BOB], None);
    pop_login(&s, (ALICE, "alice-pw-2"), "127.0.0.8");
    pop_login(&s, (BOB, BOB_PW), "127.0.0.8");
    let r = send(s.submission(), "starttls", "127.0.0.8", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");
}

#[test]
fn pop3_logins_from_many_networks_suspend_the_account_as_smtp_auth_does() {
    let s = Server::start("");
    s.add_user(ALICE, PW);
    deliver(&s, &["one"]);
    // Ten /24s within the hour (containment.login_networks_per_hour).
    for n in 1..=10 {
        let ip = format!("127.0.{n}.1");
        let v = pop3(
            s.ports["pop3s"],
            "ssl",
            Some((ALICE, PW)),
            Some(&ip),
            &["stat"],
        );
        // Suspended or not, the mail is still there to read.
        assert_eq!(ok(&v, 1)["count"], 1, "{v}");
    }
    let status = s.cli_ok(&["user", "status", ALICE], None);
    assert!(status.contains("state:    suspended"), "{status}");
    assert!(status.contains("logins from many networks"), "{status}");
    // Sending is over until an administrator resumes it.
    let r = submit(&s, ALICE, PW, ALICE, &[]);
    assert_eq!(r["ok"], false, "{r}");
}

#[test]
fn pop_before_smtp_is_off_by_default() {
    let s = Server::start("");
    s.add_user(ALICE, PW);
    pop_login(&s, (ALICE, PW), "127.0.0.5");
    let r = send(s.submission(), "starttls", "127.0.0.5", ALICE, &[]);
    assert_eq!(r["code"], 530, "{r}");
}
