//! Sender ownership on submission, end to end: an account sends only as its own addresses,
//! in the envelope and in the From:/Sender: header; `user alias` grants more, at once.

use crate::support::*;

fn server() -> Server {
    let s = Server::start("");
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("bob@example.test", "bob-pw");
    s
}

fn send_as(s: &Server, envelope: &str, header_from: &str, subject: &str) -> serde_json::Value {
    submit(
        s,
        "alice@example.test",
        "alice-pw",
        "bob@example.test",
        &[
            "--from",
            envelope,
            "--header-from",
            header_from,
            "--subject",
            subject,
        ],
    )
}

#[test]
fn another_users_address_is_refused_in_the_envelope() {
    let s = server();
    let r = send_as(&s, "bob@example.test", "alice@example.test", "env-spoof");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], 550, "{r}");
    assert!(r["message"].as_str().unwrap().contains("5.7.1"), "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("bob@example.test"),
        "{r}"
    );
    let line = s.wait_log(&["event=\"reject\"", "envelope sender <bob@example.test>"]);
    assert!(line.contains("alice@example.test"), "{line}");
    assert!(s.messages("bob@example.test").is_empty());
}

#[test]
fn another_users_address_is_refused_in_the_header() {
    let s = server();
    let r = send_as(
        &s,
        "alice@example.test",
        "Bob <bob@example.test>",
        "hdr-spoof",
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], 550, "{r}");
    assert_eq!(r["stage"], "send", "refused at the end of DATA: {r}");
    s.wait_log(&["event=\"reject\"", "From: <bob@example.test>"]);
    // A display name without any address is no author either.
    let r = send_as(
        &s,
        "alice@example.test",
        "\"Yessenia Lakeshia\"",
        "no-address",
    );
    assert_eq!(r["code"], 550, "{r}");
    assert!(s.messages("bob@example.test").is_empty());
}

#[test]
fn aliases_and_domain_grants_apply_to_the_running_server() {
    let s = server();
    let r = send_as(
        &s,
        "sales@example.test",
        "sales@example.test",
        "before-alias",
    );
    assert_eq!(r["code"], 550, "{r}");

    s.cli_ok(
        &[
            "user",
            "alias",
            "add",
            "alice@example.test",
            "sales@example.test",
        ],
        None,
    );
    let r = send_as(
        &s,
        "sales@example.test",
        "Sales <sales@example.test>",
        "with-alias",
    );
    assert_eq!(r["ok"], true, "{r}");

    s.cli_ok(
        &["user", "alias", "add", "alice@example.test", "@brand.test"],
        None,
    );
    let r = send_as(&s, "news@brand.test", "news@brand.test", "with-domain");
    assert_eq!(r["ok"], true, "{r}");
    // bob got no rights from alice's aliases.
    let r = submit(
        &s,
        "bob@example.test",
        "bob-pw",
        "alice@example.test",
        &["--from", "sales@example.test"],
    );
    assert_eq!(r["code"], 550, "{r}");

    let list = s.cli(&["user", "alias", "list", "alice@example.test"], None);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "@brand.test\nsales@example.test\n"
    );
    let out = s.cli(
        &[
            "user",
            "alias",
            "remove",
            "alice@example.test",
            "sales@example.test",
        ],
        None,
    );
    assert!(out.status.success());
    let r = send_as(
        &s,
        "sales@example.test",
        "sales@example.test",
        "after-remove",
    );
    assert_eq!(r["code"], 550, "{r}");

    let got = s.wait_messages("bob@example.test", 2);
    assert_eq!(got.len(), 2);
    assert!(got.iter().any(|m| m.contains("Subject: with-alias")));
    assert!(got.iter().any(|m| m.contains("Subject: with-domain")));
}

#[test]
fn the_null_sender_is_allowed_with_an_owned_from() {
    let s = server();
    let r = send_as(&s, "", "alice@example.test", "receipt");
    assert_eq!(r["ok"], true, "{r}");
    let m = s.wait_messages("bob@example.test", 1);
    assert!(m[0].starts_with("Return-Path: <>"), "{}", m[0]);
}

#[test]
fn a_suspended_account_cannot_log_in_or_send_and_its_mail_is_held() {
    // remote.test's DNS never answers: alice's message to it waits in the queue.
    let s = Server::start_with_zones("", "remote.test TIMEOUT\n");
    s.add_user("alice@example.test", "alice-pw");
    s.add_user("bob@example.test", "bob-pw");
    let r = send_as(&s, "alice@example.test", "alice@example.test", "before");
    assert_eq!(r["ok"], true, "{r}");
    let r = submit(
        &s,
        "alice@example.test",
        "alice-pw",
        "carol@remote.test",
        &[],
    );
    assert_eq!(r["ok"], true, "{r}");
    let waiting = "SELECT count(*) FROM queue_rcpt WHERE address = 'carol@remote.test'";
    assert_eq!(s.query_count(waiting), 1);

    let out = s.cli_ok(
        &[
            "user",
            "suspend",
            "alice@example.test",
            "--reason",
            "phished",
        ],
        None,
    );
    assert!(out.contains("1 waiting recipient(s) held"), "{out}");
    assert_eq!(
        s.query_count(
            "SELECT count(*) FROM queue_rcpt WHERE address = 'carol@remote.test' AND status = 'held'"
        ),
        1
    );
    let status = s.cli(&["user", "status", "alice@example.test"], None);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("state:    suspended"), "{status}");
    assert!(status.contains("reason:   phished"), "{status}");
    assert!(status.contains("held:     1"), "{status}");

    // The right password no longer opens the account, and the answer is the one a wrong
    // password gets: a guesser learns nothing from a suspension.
    let r = send_as(
        &s,
        "alice@example.test",
        "alice@example.test",
        "while-suspended",
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["stage"], "auth", "{r}");
    assert_eq!(r["code"], 535, "{r}");
    s.wait_log(&["event=\"auth_suspended\"", "alice@example.test"]);
    // It still receives.
    let r = submit(
        &s,
        "bob@example.test",
        "bob-pw",
        "alice@example.test",
        &["--subject", "to-suspended"],
    );
    assert_eq!(r["ok"], true, "{r}");
    s.wait_messages("alice@example.test", 1);

    // Resume asks what to do with the held mail, then releases it.
    let out = s.cli(&["user", "resume", "alice@example.test"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--release"));
    let out = s.cli(&["user", "resume", "alice@example.test", "--release"], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 held recipient(s) released"));
    assert_eq!(
        s.query_count(
            "SELECT count(*) FROM queue_rcpt WHERE address = 'carol@remote.test' AND status = 'held'"
        ),
        0
    );
    let r = send_as(
        &s,
        "alice@example.test",
        "alice@example.test",
        "after-resume",
    );
    assert_eq!(r["ok"], true, "{r}");
}
