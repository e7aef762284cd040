//! Two real mailwarden nodes sharing one PostgreSQL (`[store] url`), on different loopback
//! addresses (A on 127.0.0.1, B on 127.0.0.2), driven by real clients: what one node learns
//! or accepts, the other knows; what one node leaves undone, the other finishes, once.
//!
//! Each test gets a fresh database on the test PostgreSQL (`scripts/test` starts one and sets
//! `MAILWARDEN_TEST_POSTGRES`); without one the tests say so and skip. The PostgreSQL outage
//! test starts a server of its own (`scripts/postgres`), since it stops it.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The two nodes' zone: far.test's MX is on 127.0.0.1 (its port is `delivery.port`).
const ZONES: &str = "far.test MX 10 mx.far.test
mx.far.test A 127.0.0.1
";

/// A node of the cluster at `url`, listening on `ip`, sharing `clock` if given.
fn node(url: &str, ip: &str, name: &str, extra: &str, clock: Option<PathBuf>) -> Server {
    let zones: String = (0..97)
        .map(|i| format!("victim{i}.test TIMEOUT\n"))
        .collect::<String>()
        + ZONES;
    Server::start_with_clock(
        &format!(
            "[store]\nurl = \"{url}\"\nnode = \"{name}\"\nlease = \"3s\"\n\
             [listen]\nmx = \"{ip}:0\"\nsubmission = \"{ip}:0\"\nsubmissions = \"{ip}:0\"\n\
             metrics = \"{ip}:0\"\n{extra}"
        ),
        &zones,
        clock,
    )
}

/// Nodes A and B on one fresh database, with the same test clock.
fn pair(test: &str, extra: &str) -> Option<(String, Server, Server)> {
    let url = postgres(test)?;
    let a = node(&url, "127.0.0.1", "a", extra, None);
    let b = node(&url, "127.0.0.2", "b", extra, Some(a.clock_file()));
    Some((url, a, b))
}

#[test]
fn an_account_added_on_one_node_logs_in_on_the_other_and_records_are_shared() {
    let Some((_url, a, b)) = pair("cluster::accounts", "") else {
        return;
    };
    a.add_user("alice@example.test", "alice-pw");
    a.add_user("bob@example.test", "bob-pw");
    let r = submit(
        &b,
        "alice@example.test",
        "alice-pw",
        "bob@example.test",
        &[],
    );
    assert_eq!(r["ok"], true, "alice logs in on B: {r}");
    let got = b.wait_messages("bob@example.test", 1);
    assert!(got[0].contains("Subject: test"), "{}", got[0]);
    let wrong = submit(&b, "alice@example.test", "nope", "bob@example.test", &[]);
    assert_eq!(wrong["code"], 535, "{wrong}");

    // A decision record node A writes, node B explains.
    let r = smtplib(
        a.mx(),
        "plain",
        &["--from", "x@elsewhere.test", "--to", "nobody@example.test"],
    );
    assert_eq!(r["code"], 550, "{r}");
    let recs = wait_for(Duration::from_secs(10), || {
        let v = b.search_records(&["--rcpt", "nobody@example.test"]);
        (!v.is_empty()).then_some(v)
    })
    .expect("B finds A's record");
    let id = recs[0]["id"].as_str().unwrap();
    let explained = b.cli_ok(&["explain", id], None);
    assert!(explained.contains("rcpt.no_such_local_user"), "{explained}");
}

#[test]
fn a_greylisted_sender_retrying_on_the_other_node_passes() {
    let Some((_url, a, b)) = pair(
        "cluster::greylist",
        "[screening.greylist]\nmode = \"enforce\"\nmin_delay = \"5m\"\n",
    ) else {
        return;
    };
    a.add_user("alice@example.test", "alice-pw");
    let send = |s: &Server| {
        smtplib(
            s.mx(),
            "plain",
            &[
                "--source",
                "127.0.30.1",
                "--from",
                "a@sender.test",
                "--to",
                "alice@example.test",
            ],
        )
    };
    let first = send(&a);
    assert_eq!(first["code"], 451, "{first}");
    let early = send(&b);
    assert_eq!(
        early["code"], 451,
        "B knows the triplet is too early: {early}"
    );
    a.advance_clock(301);
    let retry = send(&b);
    assert_eq!(retry["ok"], true, "the retry on B passes: {retry}");
    assert_eq!(b.wait_messages("alice@example.test", 1).len(), 1);
}

#[test]
fn a_hijacked_account_blasting_through_both_nodes_is_suspended_within_twenty() {
    let Some((url, a, b)) = pair("cluster::blast", "") else {
        return;
    };
    a.add_user("alice@example.test", "alice-pw");
    a.add_user("postmaster@example.test", "pm-pw");
    let blast = |s: &Server| {
        let addr = s.submissions();
        std::thread::spawn(move || blast(addr, "alice@example.test", "alice-pw"))
    };
    let (on_a, on_b) = (blast(&a), blast(&b));
    let (on_a, on_b) = (on_a.join().unwrap(), on_b.join().unwrap());
    let accepted = on_a["accepted"].as_i64().unwrap() + on_b["accepted"].as_i64().unwrap();
    eprintln!("two nodes: {accepted} messages accepted in all before the suspension");
    assert!(accepted <= 20, "{on_a} {on_b}");
    for r in [&on_a, &on_b] {
        assert!(
            [550, 451].contains(&r["code"].as_i64().unwrap_or(0)),
            "each blast is stopped: {r}"
        );
    }
    // Everything it queued, on either node, waits held: nothing of it can leave.
    let remote = "SELECT count(*) FROM queue_rcpt WHERE route = 'remote'";
    let held = "SELECT count(*) FROM queue_rcpt WHERE route = 'remote' AND status = 'held'";
    assert_eq!(pg_count(&url, remote), accepted, "{}", a.log());
    assert_eq!(pg_count(&url, held), accepted, "{}\n{}", a.log(), b.log());
    for s in [&a, &b] {
        let status = s.cli_ok(&["user", "status", "alice@example.test"], None);
        assert!(status.contains("state:    suspended"), "{status}");
    }
}

/// far.test's server on `far_port`, with carol's account made before that port opens: a
/// node retrying every second must not find it up and carol unknown (a 550 for good).
fn far_server(far_port: u16) -> Server {
    let mut far = Server::start(
        "hostname = \"mx.far.test\"\ndomains = [\"far.test\"]\n[listen]\nmx = \"127.0.0.1:0\"\n",
    );
    far.add_user("carol@far.test", "carol-pw");
    far.stop();
    far.edit_config(|c| {
        c["listen"]["mx"] = toml::Value::String(format!("127.0.0.1:{far_port}"));
    });
    far.start_again();
    far
}

/// A free port on 127.0.0.1 that nothing listens on yet.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn mail_a_dead_node_accepted_is_delivered_once_by_the_other() {
    let far_port = free_port();
    let extra = format!("[delivery]\nport = {far_port}\nretry_schedule = [\"1s\"]\n");
    let Some((url, mut a, b)) = pair("cluster::takeover", &extra) else {
        return;
    };
    a.add_user("alice@example.test", "alice-pw");
    // far.test is down: A tries, and defers.
    let r = submit(
        &a,
        "alice@example.test",
        "alice-pw",
        "carol@far.test",
        &["--subject", "once"],
    );
    assert_eq!(r["ok"], true, "{r}");
    a.wait_log(&["event=\"destination_deferred\"", "far.test"]);
    a.kill9();
    // far.test comes back; B finds the deferred recipient due and delivers it.
    let far = far_server(far_port);
    let got = far.wait_messages("carol@far.test", 1);
    assert!(got[0].contains("Subject: once"), "{}", got[0]);
    wait_for(Duration::from_secs(20), || {
        (pg_count(&url, "SELECT count(*) FROM queue") == 0).then_some(())
    })
    .expect("the queue empties");
    b.wait_log(&["event=\"delivered\"", "carol@far.test"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(far.messages("carol@far.test").len(), 1, "exactly once");
}

#[test]
fn both_nodes_restart_and_keep_the_usual_volumes() {
    let Some((url, mut a, mut b)) = pair("cluster::baselines", "") else {
        return;
    };
    a.add_user("alice@example.test", "alice-pw");
    a.add_user("bob@example.test", "bob-pw");
    for s in [&a, &b] {
        let r = submit(s, "alice@example.test", "alice-pw", "bob@example.test", &[]);
        assert_eq!(r["ok"], true, "{r}");
    }
    let q = "SELECT in_hour FROM baselines WHERE account = 'alice@example.test'";
    assert_eq!(pg_count(&url, q), 2, "both nodes counted into one baseline");
    a.stop();
    b.stop();
    a.start_again();
    b.start_again();
    let r = submit(
        &b,
        "alice@example.test",
        "alice-pw",
        "bob@example.test",
        &[],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(pg_count(&url, q), 3, "the restart forgot nothing");
}

/// A PostgreSQL of this test's own (`scripts/postgres`), which it stops and starts.
struct OwnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnPostgres {
    fn start() -> Option<OwnPostgres> {
        let dir = tempfile::tempdir().ok()?;
        let out = run(
            &script().to_string_lossy(),
            &["start", &dir.path().to_string_lossy()],
            None,
        );
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            // CI must run it: there, no PostgreSQL is a failure, not a skip.
            assert!(
                std::env::var_os("MAILWARDEN_REQUIRE_POSTGRES").is_none(),
                "no PostgreSQL to start: {why}"
            );
            eprintln!("cluster::outage: skipped, no PostgreSQL to start: {why}");
            return None;
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(OwnPostgres { dir, url })
    }

    fn ctl(&self, what: &str) {
        let out = run(
            &script().to_string_lossy(),
            &[what, &self.dir.path().to_string_lossy()],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = run(
            &script().to_string_lossy(),
            &["stop", &self.dir.path().to_string_lossy()],
            None,
        );
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

#[test]
fn postgres_stopping_mid_session_gets_4xx_and_loses_nothing_acknowledged() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let s = node(&pg.url, "127.0.0.1", "solo", "", None);
    s.add_user("bob@example.test", "bob-pw");
    let send = |subject: &str| {
        smtplib(
            s.mx(),
            "plain",
            &[
                "--from",
                "x@elsewhere.test",
                "--to",
                "bob@example.test",
                "--subject",
                subject,
            ],
        )
    };
    let before = send("before");
    assert_eq!(before["ok"], true, "{before}");
    pg.ctl("pause");
    let during = send("during");
    let code = during["code"].as_i64().unwrap_or(0);
    assert!(
        (400..500).contains(&code),
        "a 4xx while the store is away: {during}"
    );
    pg.ctl("resume");
    let after = wait_for(Duration::from_secs(30), || {
        let r = send("after");
        (r["ok"] == true).then_some(r)
    })
    .expect("accepted again once PostgreSQL is back");
    assert_eq!(after["ok"], true);
    let got = s.wait_messages("bob@example.test", 2);
    let subjects: Vec<&str> = got
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("Subject: ")))
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"Subject: before") && subjects.contains(&"Subject: after"));
    assert!(
        !subjects.contains(&"Subject: during"),
        "refused mail is not delivered"
    );
}

#[test]
fn store_copy_moves_a_single_nodes_state_into_the_cluster() {
    let Some(url) = postgres("cluster::store_copy") else {
        return;
    };
    let far_port = free_port();
    let config = format!(
        "[delivery]\nport = {far_port}\nretry_schedule = [\"1s\"]\n[queue]\ninline_max = \"1KiB\"\n"
    );
    // A single node on its embedded store: an account, a DKIM key file, a record, and mail
    // for a remote domain that is down, one body inline and one spooled to a file.
    // `[store]` named, so MAILWARDEN_E2E_STORE=postgres leaves this node on SQLite.
    let mut solo = Server::start_with_zones(&format!("{config}[store]\nurl = \"\"\n"), ZONES);
    solo.add_user("alice@example.test", "alice-pw");
    // Past inline_max over several reads, so the session spills it to a spool file.
    let big = format!("{}\n", "y".repeat(70)).repeat(1400);
    for (subject, body) in [("small", "hello"), ("big", big.as_str())] {
        let r = submit(
            &solo,
            "alice@example.test",
            "alice-pw",
            "carol@far.test",
            &["--subject", subject, "--body", body],
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    solo.wait_log(&["event=\"destination_deferred\"", "far.test"]);
    let spooled = solo.query_count("SELECT count(*) FROM queue WHERE spooled = 1");
    assert_eq!(spooled, 1, "the big body is in a spool file");
    solo.cli_ok(
        &["dkim", "keygen", "example.test", "--algorithm", "ed25519"],
        None,
    );
    solo.stop();

    let data = solo.data_dir();
    let copy = |to: &str| {
        solo.cli_ok(
            &[
                "store",
                "copy",
                "--from",
                &format!("sqlite:{}", data.display()),
                "--to",
                to,
            ],
            None,
        )
    };
    let first = copy(&url);
    let accounts = first
        .lines()
        .find(|l| l.starts_with("accounts "))
        .unwrap_or("");
    assert!(accounts.contains(" 1 added"), "alice went in: {first}");
    let again = copy(&url);
    assert!(
        again.contains("copied 0 rows"),
        "a second copy adds nothing: {again}"
    );
    assert_eq!(
        pg_count(&url, "SELECT count(*) FROM queue WHERE spooled = 1"),
        0
    );
    assert_eq!(pg_count(&url, "SELECT count(*) FROM dkim_keys"), 1);

    // A cluster node with nothing of its own takes over: alice logs in and signs with the
    // copied key, and when far.test comes back the queued messages go out too.
    let node_b = node(&url, "127.0.0.2", "b", &config, None);
    let r = submit(
        &node_b,
        "alice@example.test",
        "alice-pw",
        "carol@far.test",
        &["--subject", "signed"],
    );
    assert_eq!(r["ok"], true, "the copied account logs in: {r}");
    let far = far_server(far_port);
    let got = far.wait_messages("carol@far.test", 3);
    assert!(
        got.iter().any(|m| m.contains(&big)),
        "the spooled body went along"
    );
    let signed = got.iter().find(|m| m.contains("Subject: signed")).unwrap();
    assert!(
        signed.contains("DKIM-Signature:") && signed.contains("s=mw"),
        "{signed}"
    );
}

#[test]
fn both_nodes_deliver_local_mail_to_one_mailbox_server_over_lmtp() {
    let mail = tempfile::tempdir().unwrap();
    let dovecot = Dovecot::start(
        mail.path(),
        &[
            ("bob@example.test", "bob-imap"),
            ("alice@example.test", "alice-imap"),
        ],
        true,
    );
    let lmtp = dovecot.lmtp.unwrap();
    // A Date this old weighs the junk score by itself: that message goes to Junk.
    let extra = format!(
        "[delivery]\nlmtp = \"127.0.0.1:{lmtp}\"\n[scoring.weights]\n\"headers.date_past\" = 6.0\n"
    );
    let Some((url, a, b)) = pair("cluster::lmtp", &extra) else {
        return;
    };
    for u in [
        "bob@example.test",
        "alice@example.test",
        "carol@example.test",
    ] {
        a.add_user(u, "pw");
    }
    let send = |s: &Server, to: &[&str], subject: &str, date: &str| {
        let raw = format!(
            "From: x@elsewhere.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\
             Date: {date}\r\nMessage-ID: <{subject}@elsewhere.test>\r\n\r\nhello\r\n"
        );
        let mut args = vec!["--from", "x@elsewhere.test", "--raw"];
        for t in to {
            args.extend(["--to", t]);
        }
        smtplib_stdin(s.mx(), "plain", &args, Some(raw.as_bytes()))
    };
    let now = mailwarden::util::rfc5322_date(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    // carol has a mailwarden account but no mailbox on the mailbox server: LMTP refuses her
    // alone, and bob still gets his copy.
    let r = send(
        &a,
        &["bob@example.test", "carol@example.test"],
        "via-a",
        &now,
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = send(&b, &["bob@example.test"], "via-b", &now);
    assert_eq!(r["ok"], true, "{r}");
    let r = send(
        &b,
        &["alice@example.test"],
        "old",
        "Mon, 1 Jan 2001 00:00:00 +0000",
    );
    assert_eq!(r["ok"], true, "{r}");

    let inbox = wait_for(Duration::from_secs(20), || {
        let v = dovecot.client("bob@example.test", "bob-imap", &[]);
        let subjects = v["folders"]["INBOX"].to_string();
        (subjects.contains("via-a") && subjects.contains("via-b")).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "bob's mail from both nodes, served by Dovecot: {}\nA: {}\nB: {}",
            dovecot.client("bob@example.test", "bob-imap", &[]),
            a.log(),
            b.log()
        )
    });
    assert_eq!(
        inbox["folders"]["INBOX"].as_array().unwrap().len(),
        2,
        "{inbox}"
    );
    a.wait_log(&["event=\"local_delivery_refused\"", "carol@example.test"]);
    wait_for(Duration::from_secs(20), || {
        (pg_count(&url, "SELECT count(*) FROM queue") == 0).then_some(())
    })
    .expect("every recipient has its outcome");

    // The message for Junk arrives flagged for the mailbox server's filter.
    let alice = mail.path().join("mail/example.test/alice/Maildir");
    let flagged = wait_for(Duration::from_secs(20), || {
        ["new", "cur"]
            .iter()
            .filter_map(|d| std::fs::read_dir(alice.join(d)).ok())
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find(|m| m.contains("Subject: old"))
    })
    .expect("alice's message delivered");
    assert!(flagged.contains("X-Spam-Flag: YES"), "{flagged}");
}
