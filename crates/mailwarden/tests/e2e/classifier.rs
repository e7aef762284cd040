//! The content classifier end to end: `mailwarden learn` trains it from directories while the
//! server runs and fits the content score's weights, the server picks the model up (and has
//! it from its first message after a start), and mail it recognises as spam goes to Junk, with
//! `explain` showing each reason's weight.

use crate::support::*;
use std::time::Duration;

fn write_corpus(dir: &std::path::Path, subject: &str, body: &str, range: std::ops::Range<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    for i in range {
        let text = format!(
            "From: sender{i}@corpus.test\r\nTo: x@example.test\r\nSubject: {subject} {i}\r\n\r\n{body} {i}\r\n"
        );
        std::fs::write(dir.join(format!("{i}.eml")), text).unwrap();
    }
}

#[test]
fn learn_trains_incrementally_fits_weights_and_the_server_files_recognised_spam_in_junk() {
    let mut s = Server::start("");
    s.add_user("alice@example.test", "pw");
    let corpus = s.dir.path().join("corpus");
    let write = |part: &str, range: std::ops::Range<usize>| {
        write_corpus(
            &corpus.join(part).join("spam"),
            "cheap replica watches",
            "buy discount pills now, limited offer",
            range.clone(),
        );
        write_corpus(
            &corpus.join(part).join("ham"),
            "committee meeting notes",
            "the agenda for thursday and the minutes",
            range,
        );
    };
    write("first", 0..15);
    write("second", 15..75);
    let learn = |s: &Server, part: &str, extra: &[&str]| {
        let spam = corpus.join(part).join("spam");
        let ham = corpus.join(part).join("ham");
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
        for e in extra {
            assert!(text.contains(e), "{e}: {text}");
        }
    };
    // Too little mail to fit weights: the model learns, the built-in weights stay.
    learn(
        &s,
        "first",
        &["the model now knows 15 spam, 15 ham", "weights not fitted"],
    );
    let spammy = [
        "--subject",
        "replica watches discount",
        "--body",
        "buy pills now, limited offer\n",
    ];
    let send = |s: &Server, args: &[&str]| {
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
    // Learning again adds to what the model knew (persisted in the store), and with enough
    // mail the weights are fitted and stored with it. The server is stopped meanwhile: it
    // must have the model from its first message on.
    s.stop();
    learn(
        &s,
        "second",
        &[
            "the model now knows 75 spam, 75 ham",
            "weights fitted on this mail",
            "content.classifier_spam = +",
        ],
    );
    s.start_again();
    send(&s, &spammy);
    let junk = s.maildir("alice@example.test").join(".Junk");
    let m = wait_for(Duration::from_secs(20), || {
        s.messages_in(&junk).into_iter().next()
    })
    .unwrap_or_else(|| panic!("nothing in Junk; log:\n{}", s.log()));
    assert!(m.contains("content.classifier_spam"), "{m}");
    let junked = s.search_records(&["--reason", "content.classifier_spam"]);
    let id = junked[0]["id"].as_str().unwrap().to_string();
    let report = s.cli_ok(&["explain", &id], None);
    assert!(
        report.contains("content.classifier_spam") && report.contains("(learned)"),
        "explain shows the learned weight: {report}"
    );

    send(
        &s,
        &[
            "--subject",
            "notes from the committee meeting",
            "--body",
            "the agenda for thursday\n",
        ],
    );
    let inbox = s.wait_messages("alice@example.test", 1);
    assert!(!inbox[0].contains("classifier_spam"), "{}", inbox[0]);
    let found = s.search_records(&["--reason", "content.classifier_ham"]);
    assert_eq!(found[0]["action"], "accept", "{found:?}");
}
