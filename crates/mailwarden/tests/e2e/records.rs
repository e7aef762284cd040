//! Decision records end to end: every transaction the real server decides is found with
//! `mailwarden log search` and explained with `mailwarden explain`.

use crate::support::*;
use std::time::Duration;

const ZONES: &str = "2.0.0.127.bl.test A 127.0.0.2\n";
const CONFIG: &str = "[screening.dnsbl]\nzones = [{ zone = \"bl.test\", weight = 1.0 }]\n";

#[test]
fn rejected_and_accepted_transactions_are_found_and_explained() {
    let s = Server::start_with_zones(CONFIG, ZONES);
    s.add_user("alice@example.test", "pw");

    let r = smtplib(
        s.mx(),
        "plain",
        &["--from", "a@sender.test", "--to", "nosuch@example.test"],
    );
    assert_eq!(r["code"], 550, "{r}");
    let r = smtplib(
        s.mx(),
        "plain",
        &[
            "--from",
            "a@sender.test",
            "--to",
            "alice@example.test",
            "--subject",
            "hello-records",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = smtplib(
        s.mx(),
        "plain",
        &[
            "--source",
            "127.0.0.2",
            "--from",
            "b@sender.test",
            "--to",
            "alice@example.test",
        ],
    );
    assert_eq!(r["code"], 554, "{r}");

    // The unknown recipient.
    let found = s.search_records(&["--rcpt", "nosuch@example.test"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["action"], "reject");
    let id = found[0]["id"].as_str().unwrap().to_string();
    let report = s.cli_ok(&["explain", &id], None);
    assert!(
        report.starts_with(&format!("{id} REJECT on mx")),
        "{report}"
    );
    assert!(
        report.contains("why:      rcpt.no_such_local_user"),
        "{report}"
    );
    assert!(
        report.contains("to:       <nosuch@example.test>  550 5.1.1"),
        "{report}"
    );

    // The DNS-listed client: found by address and by reason, explained with the list.
    let found = s.search_records(&["--ip", "127.0.0.2", "--reason", "dnsbl_score"]);
    assert_eq!(found.len(), 1, "{found:?}");
    let report = s.cli_ok(&["explain", found[0]["id"].as_str().unwrap()], None);
    let why = report
        .find("why:      dnsbl_score (screen)")
        .expect(&report);
    let also = report.find("dnsbl_listed (screen)").expect(&report);
    assert!(why < also, "deciding reason first:\n{report}");
    assert!(report.contains("554 5.7.1"), "{report}");
    assert!(report.contains("bl.test"), "{report}");

    // The accepted message, with its Subject and its checks' results.
    let found = s.search_records(&["--action", "accept", "--sender", "@sender.test"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["subject"], "hello-records");
    assert!(found[0]["message_id"].as_str().is_some(), "{:?}", found[0]);
    let codes: Vec<&str> = found[0]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(codes.iter().any(|c| c.starts_with("spf.")), "{codes:?}");
    assert!(codes.iter().any(|c| c.starts_with("dmarc.")), "{codes:?}");

    // Filters narrow: nothing accepted from the listed client, nothing in the future.
    let none = s.cli_ok(
        &["log", "search", "--ip", "127.0.0.2", "--action", "accept"],
        None,
    );
    assert!(none.is_empty(), "{none}");
    let all = s.cli_ok(&["log", "search", "--since", "1h"], None);
    assert_eq!(all.lines().count(), 3, "{all}");
    let missing = s.cli(&["explain", "NOSUCHID"], None);
    assert_eq!(missing.status.code(), Some(2));
}

/// The spam sample of the seeds (`../shared/seeds/004_*`), its header as printed there.
const SEED_SPAM: &str = "From: \"Yessenia Lakeshia\"\r\n\
Message-ID: <201105171916.8F06B8E1441DD3CA51BF4BA1@1f41un723>\r\n\
To:\r\n\
MIME-Version: 1.0\r\n\
Date: Tue, 17 May 2011 14:17:47 -0500\r\n\
Subject: Exquisite Replica Bags - Satisfaction Guaranteed or your money back\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
Exquisite Replica Bags\r\n\
\r\n\
http://hotreplicaolympic.ru\r\n";

/// A tidy message to alice from the seed's sender; alice's inbox once it arrived.
fn send_tidy(s: &Server) -> Vec<String> {
    let r = smtplib(
        s.mx(),
        "plain",
        &[
            "--from",
            "x@replica.test",
            "--to",
            "alice@example.test",
            "--subject",
            "tidy",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    s.wait_messages("alice@example.test", 1)
}

/// The seed spam to alice over port 25.
fn send_seed(s: &Server) -> serde_json::Value {
    smtplib_stdin(
        s.mx(),
        "plain",
        &[
            "--raw",
            "--from",
            "x@replica.test",
            "--to",
            "alice@example.test",
        ],
        Some(SEED_SPAM.as_bytes()),
    )
}

#[test]
fn the_seed_spam_goes_to_junk_and_explain_names_its_forged_headers() {
    let s = Server::start("");
    s.add_user("alice@example.test", "pw");
    let r = send_seed(&s);
    assert_eq!(r["ok"], true, "{r}");
    let junk = s.maildir("alice@example.test").join(".Junk");
    let m = wait_for(Duration::from_secs(20), || {
        s.messages_in(&junk).into_iter().next()
    })
    .unwrap_or_else(|| panic!("nothing in Junk; log:\n{}", s.log()));
    assert!(m.contains("X-Spam-Status: Yes, score="), "{m}");
    assert!(m.contains("headers.from_no_address"), "{m}");
    assert!(s.messages("alice@example.test").is_empty());

    let found = s.search_records(&["--action", "junk", "--reason", "headers.to_empty"]);
    assert_eq!(found.len(), 1, "{found:?}");
    let report = s.cli_ok(&["explain", found[0]["id"].as_str().unwrap()], None);
    assert!(report.contains(" JUNK on mx"), "{report}");
    let why = report.find("why:").expect(&report);
    let also = report.find("also found:").unwrap_or(report.len());
    for code in ["headers.from_no_address", "headers.to_empty"] {
        let at = report
            .find(code)
            .unwrap_or_else(|| panic!("{code} in {report}"));
        assert!(
            why < at && at < also,
            "{code} among the deciding reasons:\n{report}"
        );
    }

    // A tidy message from the same client is neither tagged nor moved.
    let inbox = send_tidy(&s);
    assert!(!inbox[0].contains("X-Spam-Status: Yes"), "{}", inbox[0]);
}

#[test]
fn a_reject_threshold_refuses_and_the_warning_header_marks_unverified_senders() {
    let s = Server::start("[scoring]\nreject = 4.0\nwarning_header = true\n");
    s.add_user("alice@example.test", "pw");
    let r = send_seed(&s);
    assert_eq!(r["code"], 550, "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("5.7.1"), "{r}");
    let found = s.search_records(&["--action", "reject"]);
    assert_eq!(
        found[0]["reply"].as_str().unwrap().get(..9),
        Some("550 5.7.1")
    );

    let r = smtplib(
        s.mx(),
        "plain",
        &["--from", "x@replica.test", "--to", "alice@example.test"],
    );
    assert_eq!(r["ok"], true, "{r}");
    let m = s.wait_messages("alice@example.test", 1);
    assert!(
        m[0].contains("X-Mailwarden-Warning: The sender of this message could not be verified"),
        "{}",
        m[0]
    );
}

#[test]
fn quarantined_mail_is_held_then_released_or_deleted() {
    let s = Server::start("[scoring]\nquarantine = 4.0\n");
    s.add_user("alice@example.test", "pw");
    let send_seed = || {
        let r = send_seed(&s);
        assert_eq!(r["ok"], true, "held, not refused: {r}");
    };
    send_seed();
    send_seed();
    let list = s.cli_ok(&["quarantine", "list"], None);
    let ids: Vec<&str> = list
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(list.contains("headers.from_no_address"), "{list}");
    let shown = s.cli_ok(&["quarantine", "show", ids[0]], None);
    assert!(shown.contains("Subject: Exquisite Replica Bags"), "{shown}");
    assert!(shown.contains("X-Spam-Status: Yes"), "{shown}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.messages("alice@example.test").is_empty(),
        "nothing delivered while held"
    );
    let found = s.search_records(&["--action", "quarantine"]);
    assert_eq!(found.len(), 2, "{found:?}");

    let out = s.cli_ok(&["quarantine", "release", ids[0], "--learn-ham"], None);
    assert!(out.contains("learnt it as ham"), "{out}");
    assert_eq!(
        s.query_count("SELECT value FROM bayes_meta WHERE key = 'ham_messages'"),
        1
    );
    let inbox = s.wait_messages("alice@example.test", 1);
    assert!(
        inbox[0].contains("Subject: Exquisite Replica Bags"),
        "{}",
        inbox[0]
    );
    s.wait_log(&["event=\"quarantine_released\"", ids[0]]);

    assert!(
        s.cli_ok(&["quarantine", "delete", ids[1]], None)
            .contains("deleted")
    );
    assert!(s.cli_ok(&["quarantine", "list"], None).is_empty());
    assert_eq!(
        s.cli(&["quarantine", "release", ids[1]], None)
            .status
            .code(),
        Some(2)
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        s.messages("alice@example.test").len(),
        1,
        "the deleted one never arrives"
    );
}

#[test]
fn explain_runs_the_inbound_checks_offline_on_a_message_file() {
    let s = Server::start_with_zones(CONFIG, ZONES);
    let file = s.dir.path().join("seed.eml");
    std::fs::write(&file, SEED_SPAM).unwrap();
    let f = file.to_str().unwrap();
    let common = [
        "--helo",
        "mail.replica.test",
        "--mail-from",
        "x@replica.test",
        "--rcpt",
        "alice@example.test",
    ];

    let mut args = vec!["explain", f, "--ip", "127.0.0.1"];
    args.extend_from_slice(&common);
    let report = s.cli_ok(&args, None);
    assert!(report.starts_with("offline JUNK on explain"), "{report}");
    let also = report.find("also found:").unwrap_or(report.len());
    for code in ["headers.from_no_address", "headers.to_empty"] {
        let at = report
            .find(code)
            .unwrap_or_else(|| panic!("{code} in {report}"));
        assert!(at < also, "{code} deciding:\n{report}");
    }
    assert!(
        report.contains("subject:  Exquisite Replica Bags"),
        "{report}"
    );

    // From a listed address it would not even be read.
    let mut args = vec!["explain", f, "--json", "--ip", "127.0.0.2"];
    args.extend_from_slice(&common);
    let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&args, None)).unwrap();
    assert_eq!(v["action"], "reject", "{v}");
    assert!(v["reply"].as_str().unwrap().starts_with("554 5.7.1"), "{v}");
    let deciding: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["deciding"] == true)
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(deciding, ["dnsbl_score"], "{v}");
    // Nothing was delivered or recorded.
    assert!(s.cli_ok(&["log", "search"], None).is_empty());
}

#[test]
fn a_listed_link_host_scores_and_the_subject_tag_marks_spam() {
    let s = Server::start_with_zones(
        "[scoring]\nsubject_tag = \"[SPAM]\"\nuribl_zones = [{ zone = \"uribl.test\", weight = 3.0 }]\n",
        "hotreplicaolympic.ru.uribl.test A 127.0.0.2\n",
    );
    s.add_user("alice@example.test", "pw");
    assert_eq!(send_seed(&s)["ok"], true);
    let junk = s.maildir("alice@example.test").join(".Junk");
    let m = wait_for(Duration::from_secs(20), || {
        s.messages_in(&junk).into_iter().next()
    })
    .unwrap_or_else(|| panic!("nothing in Junk; log:\n{}", s.log()));
    assert!(m.contains("Subject: [SPAM] Exquisite Replica Bags"), "{m}");
    assert!(m.contains("content.uribl_listed"), "{m}");
    let found = s.search_records(&["--reason", "content.uribl_listed"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0]["score"].as_f64().unwrap() >= 8.0, "{:?}", found[0]);

    // A tidy message keeps its Subject.
    let inbox = send_tidy(&s);
    assert!(inbox[0].contains("Subject: tidy"), "{}", inbox[0]);
}
