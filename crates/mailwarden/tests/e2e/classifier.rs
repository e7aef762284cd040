//! The content classifier end to end: `mailwarden learn` trains it from directories while the
//! server runs, the server picks the model up, and mail it recognises as spam goes to Junk.

use crate::support::*;
use std::time::Duration;

fn write_corpus(dir: &std::path::Path, subject: &str, body: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let text = format!(
            "From: sender{i}@corpus.test\r\nTo: x@example.test\r\nSubject: {subject} {i}\r\n\r\n{body} {i}\r\n"
        );
        std::fs::write(dir.join(format!("{i}.eml")), text).unwrap();
    }
}

#[test]
fn learn_trains_incrementally_and_the_server_files_recognised_spam_in_junk() {
    let s = Server::start("");
    s.add_user("alice@example.test", "pw");
    let corpus = s.dir.path().join("corpus");
    write_corpus(
        &corpus.join("spam"),
        "cheap replica watches",
        "buy discount pills now, limited offer",
        15,
    );
    write_corpus(
        &corpus.join("ham"),
        "committee meeting notes",
        "the agenda for thursday and the minutes",
        15,
    );
    let learn = |extra: &str| {
        let spam = corpus.join("spam");
        let ham = corpus.join("ham");
        let out = s.cli(
            &[
                "learn",
                "--spam",
                spam.to_str().unwrap(),
                "--ham",
                ham.to_str().unwrap(),
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(extra), "{text}");
    };
    learn("the model now knows 15 spam, 15 ham");
    let spammy = [
        "--subject",
        "replica watches discount",
        "--body",
        "buy pills now, limited offer\n",
    ];
    let send = |args: &[&str]| {
        let mut a = vec![
            "--from",
            "someone@elsewhere.test",
            "--to",
            "alice@example.test",
        ];
        a.extend_from_slice(args);
        let r = smtplib(s.mx(), "plain", &a);
        assert_eq!(r["ok"], true, "{r}");
    };
    // Learning again adds to what the model knew (persisted in the store).
    learn("the model now knows 30 spam, 30 ham");
    s.wait_log(&["event=\"classifier_loaded\""]);
    send(&spammy);
    let junk = s.maildir("alice@example.test").join(".Junk");
    let m = wait_for(Duration::from_secs(20), || {
        s.messages_in(&junk).into_iter().next()
    })
    .unwrap_or_else(|| panic!("nothing in Junk; log:\n{}", s.log()));
    assert!(m.contains("content.classifier_spam"), "{m}");

    send(&[
        "--subject",
        "notes from the committee meeting",
        "--body",
        "the agenda for thursday\n",
    ]);
    let inbox = s.wait_messages("alice@example.test", 1);
    assert!(!inbox[0].contains("classifier_spam"), "{}", inbox[0]);
    let found = s.search_records(&["--reason", "content.classifier_ham"]);
    assert_eq!(found[0]["action"], "accept", "{found:?}");
}
