//! Outbound delivery end to end: two real mailwarden instances, a.test and b.test, on
//! loopback, resolving through loopback DNS servers that publish MX, SPF, DMARC and the DKIM
//! keys `mailwarden dkim keygen` printed. a.test delivers to b.test's MX port
//! (`delivery.port`); b.test checks what arrives like any MX would.

use crate::support::*;
use std::time::Duration;

const ZONES: &str = "a.test TXT v=spf1 ip4:127.0.0.1 -all
_dmarc.a.test TXT v=DMARC1; p=reject
mx.a.test A 127.0.0.1
1.0.0.127.in-addr.arpa PTR mx.a.test
b.test MX 10 mx.b.test
mx.b.test A 127.0.0.1
nullmx.test MX 0 .
";

/// The b.test instance, with bob.
fn start_b() -> Server {
    let b = Server::start_with_zones("hostname = \"mx.b.test\"\ndomains = [\"b.test\"]\n", ZONES);
    b.add_user("bob@b.test", "bobpw");
    b
}

/// The a.test instance, with alice, delivering to `b_port`, retrying every second.
fn start_a(b_port: u16, extra: &str) -> Server {
    let a = Server::start_with_zones(
        &format!(
            "hostname = \"mx.a.test\"\ndomains = [\"a.test\"]\n[delivery]\nport = {b_port}\nretry_schedule = [\"1s\"]\n{extra}"
        ),
        ZONES,
    );
    a.add_user("alice@a.test", "alicepw");
    a
}

/// Run keygen for a.test; return the `NAME TXT ...` lines it printed.
fn keygen(a: &Server) -> Vec<String> {
    let out = a.cli(&["dkim", "keygen", "a.test"], None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keygen failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<String> = text
        .lines()
        .filter(|l| l.contains("._domainkey.") && l.contains(" IN TXT "))
        .map(|l| l.replacen(" IN TXT ", " TXT ", 1))
        .collect();
    assert_eq!(records.len(), 2, "two keys by default:\n{text}");
    assert!(
        text.contains("v=spf1") && text.contains("_dmarc.a.test"),
        "{text}"
    );
    records
}

fn publish(servers: &[&Server], records: &[String]) {
    let zone = records.join("\n");
    for s in servers {
        s.dns.update(|z| z.load(&zone).unwrap());
    }
}

fn send(a: &Server, to: &str, subject: &str) -> serde_json::Value {
    submit(a, "alice@a.test", "alicepw", to, &["--subject", subject])
}

fn with_subject<'a>(msgs: &'a [String], subject: &str) -> Vec<&'a String> {
    msgs.iter()
        .filter(|m| m.contains(&format!("Subject: {subject}\n")))
        .collect()
}

/// The unfolded Authentication-Results field of a delivered (LF) message.
fn auth_results(msg: &str) -> String {
    let mut out = String::new();
    let mut on = false;
    for line in msg.lines() {
        if line.starts_with("Authentication-Results:") {
            on = true;
            out.push_str(line);
        } else if on && (line.starts_with(' ') || line.starts_with('\t')) {
            out.push(' ');
            out.push_str(line.trim());
        } else if on {
            break;
        }
    }
    out
}

#[test]
fn signed_mail_reaches_the_other_domain_and_passes_its_checks() {
    let b = start_b();
    let a = start_a(b.mx().port(), "");
    let records = keygen(&a);
    publish(&[&a, &b], &records);

    let r = send(&a, "bob@b.test", "hello-b");
    assert_eq!(r["ok"], true, "{r}");
    let msgs = b.wait_messages("bob@b.test", 1);
    let msg = with_subject(&msgs, "hello-b")[0];
    let ar = auth_results(msg);
    assert!(ar.starts_with("Authentication-Results: mx.b.test;"), "{ar}");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    assert_eq!(
        ar.matches("dkim=pass").count(),
        2,
        "both signatures pass: {ar}"
    );
    for sel in ["-ed25519", "-rsa"] {
        assert!(ar.contains(sel), "selector {sel} in {ar}");
    }
    // The outbound connection used STARTTLS, and a.test's own headers came along.
    assert!(
        msg.contains("with ESMTPS id"),
        "b received over TLS:\n{msg}"
    );
    assert!(
        msg.contains("by mx.a.test (mailwarden) with ESMTPSA"),
        "{msg}"
    );
    let line = a.wait_log(&["event=\"delivered\"", "bob@b.test"]);
    assert!(
        line.contains("mx.b.test[127.0.0.1]") && line.contains("TLS"),
        "{line}"
    );

    // dkimpy verifies both signatures with the published records, independently.
    let dir = tempfile::tempdir().unwrap();
    let rec_file = dir.path().join("records.txt");
    std::fs::write(&rec_file, records.join("\n")).unwrap();
    let crlf = msg.replace('\n', "\r\n");
    let out = run(
        "python3",
        &[
            clients_dir().join("dkim_verify.py").to_str().unwrap(),
            "--records",
            rec_file.to_str().unwrap(),
        ],
        Some(&crlf),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("dkim_verify: {}", String::from_utf8_lossy(&out.stderr)));
    let sigs = v["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 2, "{v}");
    let mut algs: Vec<&str> = sigs.iter().map(|s| s["a"].as_str().unwrap()).collect();
    algs.sort();
    assert_eq!(algs, vec!["ed25519-sha256", "rsa-sha256"]);
    for s in sigs {
        assert_eq!(s["ok"], true, "dkimpy rejects {s}");
        let h = s["h"].as_str().unwrap().to_ascii_lowercase();
        assert_eq!(h.matches("from").count(), 2, "From is oversigned: {h}");
        for want in [
            "to",
            "subject",
            "message-id",
            "mime-version",
            "content-type",
        ] {
            assert!(h.split(':').any(|x| x.trim() == want), "{want} signed: {h}");
        }
    }
    // So does OpenDKIM (in its test mode, with the same records as its key source).
    let keys: String = records
        .iter()
        .map(|r| {
            let (name, rest) = r.split_once(" TXT ").unwrap();
            let value: String = rest.split('"').skip(1).step_by(2).collect();
            format!("{} {value}\n", name.trim_end_matches('.'))
        })
        .collect();
    std::fs::write(dir.path().join("keys"), keys).unwrap();
    std::fs::write(
        dir.path().join("opendkim.conf"),
        format!(
            "Mode v\nSyslog no\nTestPublicKeys {}\nAlwaysAddARHeader yes\nAuthservID verifier\n",
            dir.path().join("keys").display()
        ),
    )
    .unwrap();
    let eml = dir.path().join("msg.eml");
    std::fs::write(&eml, &crlf).unwrap();
    let out = run(
        "opendkim",
        &[
            "-x",
            dir.path().join("opendkim.conf").to_str().unwrap(),
            "-vv",
            "-t",
            eml.to_str().unwrap(),
        ],
        None,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // -vv prints the Authentication-Results field OpenDKIM would add (authserv-id verifier).
    let ar = text
        .split("hvalue='verifier;")
        .nth(1)
        .unwrap_or_else(|| panic!("OpenDKIM:\n{text}"));
    assert_eq!(ar.matches("dkim=pass").count(), 2, "OpenDKIM:\n{text}");
    assert!(
        ar.contains("header.a=ed25519-sha256") && ar.contains("header.a=rsa-sha256"),
        "{text}"
    );

    assert_eq!(
        a.query_count("SELECT count(*) FROM queue"),
        0,
        "delivered mail leaves a.test's queue"
    );
}

#[test]
fn a_restart_loses_nothing_and_resends_nothing() {
    let mut b = start_b();
    b.pin_ports();
    let mut a = start_a(b.mx().port(), "");
    b.stop();
    let r = send(&a, "bob@b.test", "across-restarts");
    assert_eq!(r["ok"], true, "{r}");
    a.wait_log(&["event=\"destination_deferred\""]);
    // Killed while the message waits: the queue keeps it.
    a.restart();
    b.start_again();
    let msgs = b.wait_messages("bob@b.test", 1);
    assert_eq!(with_subject(&msgs, "across-restarts").len(), 1);
    wait_for(Duration::from_secs(10), || {
        (a.query_count("SELECT count(*) FROM queue") == 0).then_some(())
    })
    .expect("delivered and recorded");
    // Killed after the remote side accepted it: nothing to send again.
    a.restart();
    a.cli(&["queue", "retry"], None);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        with_subject(&b.messages("bob@b.test"), "across-restarts").len(),
        1
    );
}

#[test]
fn a_stopped_destination_is_retried_and_gets_the_message_exactly_once() {
    let mut b = start_b();
    b.pin_ports();
    let a = start_a(b.mx().port(), "");
    b.stop();

    let r = send(&a, "bob@b.test", "retry-me");
    assert_eq!(r["ok"], true, "{r}");
    a.wait_log(&["event=\"destination_deferred\"", "b.test"]);
    let list = a.cli(&["queue", "list", "--json"], None);
    let q: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let rcpt = &q[0]["recipients"][0];
    assert_eq!(rcpt["address"], "bob@b.test", "{q}");
    assert!(
        rcpt["status"] == "deferred" || rcpt["status"] == "queued",
        "{q}"
    );
    // Deferred with the reason, and attempted more than once while b.test is down.
    wait_for(Duration::from_secs(20), || {
        (a.log_lines(&["event=\"destination_deferred\"", "b.test"])
            .len()
            >= 2)
            .then_some(())
    })
    .expect("a.test retries on its schedule");
    let show = a.cli(&["queue", "show", q[0]["id"].as_str().unwrap()], None);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("connect failed"),
        "the last reply says why:\n{show}"
    );

    b.start_again();
    let msgs = b.wait_messages("bob@b.test", 1);
    assert_eq!(with_subject(&msgs, "retry-me").len(), 1);
    wait_for(Duration::from_secs(10), || {
        (a.query_count("SELECT count(*) FROM queue") == 0).then_some(())
    })
    .expect("the queue empties");
    // Nothing is due any more: more retry rounds send nothing twice.
    a.cli(&["queue", "retry"], None);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(with_subject(&b.messages("bob@b.test"), "retry-me").len(), 1);
    assert_eq!(a.log_lines(&["event=\"delivered\"", "bob@b.test"]).len(), 1);
}

#[test]
fn a_refused_recipient_bounces_to_the_sender_with_the_remote_reply() {
    let b = start_b();
    let a = start_a(b.mx().port(), "");
    let r = send(&a, "nobody@b.test", "to-nobody");
    assert_eq!(r["ok"], true, "{r}");
    let dsns = a.wait_messages("alice@a.test", 1);
    let dsn = &dsns[0];
    assert!(
        dsn.contains("From: Mail Delivery System <MAILER-DAEMON@mx.a.test>"),
        "{dsn}"
    );
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@b.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("Remote-MTA: dns; mx.b.test"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{dsn}");
    assert!(dsn.contains("text/rfc822-headers"), "{dsn}");
    assert!(
        dsn.contains("Subject: to-nobody"),
        "the original's header is quoted:\n{dsn}"
    );
    // A bounce is sent with the null sender.
    assert!(dsn.contains("Return-Path: <>"), "{dsn}");
    wait_for(Duration::from_secs(10), || {
        (a.query_count("SELECT count(*) FROM queue") == 0).then_some(())
    })
    .expect("the original and the bounce both leave the queue");
}

#[test]
fn a_null_mx_domain_fails_at_once() {
    // No b.test needed: nothing may be attempted.
    let a = start_a(9, "");
    let r = send(&a, "someone@nullmx.test", "to-null-mx");
    assert_eq!(r["ok"], true, "{r}");
    let dsns = a.wait_messages("alice@a.test", 1);
    assert!(dsns[0].contains("Status: 5.1.10"), "{}", dsns[0]);
    assert!(dsns[0].contains("null MX"), "{}", dsns[0]);
    assert!(a.log_lines(&["event=\"destination_deferred\""]).is_empty());
}

#[test]
fn a_bounce_is_never_bounced() {
    let b = start_b();
    let a = start_a(b.mx().port(), "");
    // An authenticated user sending with the null reverse-path, to a refused recipient.
    let r = submit(
        &a,
        "alice@a.test",
        "alicepw",
        "nobody@b.test",
        &[
            "--from",
            "",
            "--header-from",
            "alice@a.test",
            "--subject",
            "null-sender",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    a.wait_log(&["event=\"bounce_suppressed\"", "itself a bounce"]);
    assert!(a.messages("alice@a.test").is_empty());
}

#[test]
fn queue_commands_control_the_running_server() {
    // Delivery goes to a port where nothing listens: every attempt defers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let a = start_a(port, "");
    let r = send(&a, "bob@b.test", "held");
    assert_eq!(r["ok"], true, "{r}");
    a.wait_log(&["event=\"destination_deferred\""]);
    let list = a.cli(&["queue", "list", "--json"], None);
    let q: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = q[0]["id"].as_str().unwrap().to_string();

    let out = a.cli(&["queue", "hold", &id], None);
    assert!(out.status.success());
    let status = || {
        let out = a.cli(&["queue", "show", &id], None);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(status().contains("bob@b.test> remote held"), "{}", status());
    let attempts = a.log_lines(&["event=\"destination_deferred\""]).len();
    a.cli(&["queue", "retry"], None);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        a.log_lines(&["event=\"destination_deferred\""]).len(),
        attempts,
        "a held message is not attempted"
    );

    let out = a.cli(&["queue", "release", &id], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("released 1"));
    wait_for(Duration::from_secs(10), || {
        (a.log_lines(&["event=\"destination_deferred\""]).len() > attempts).then_some(())
    })
    .expect("a released message is attempted at once");

    let out = a.cli(&["queue", "delete", &id], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.query_count("SELECT count(*) FROM queue"), 0);
    let out = a.cli(&["queue", "show", &id], None);
    assert!(!out.status.success());
    assert!(
        a.messages("alice@a.test").is_empty(),
        "delete does not bounce"
    );
}

#[test]
fn keys_are_private_and_hidden_clients_leave_no_trace() {
    let b = start_b();
    // Key files are the embedded store's: `[store]` named keeps this node on it even under
    // MAILWARDEN_E2E_STORE=postgres (on a shared store keys live in it; e2e::cluster).
    let a = start_a(
        b.mx().port(),
        "[submission]\nhide_client = true\n[store]\nurl = \"\"\n",
    );
    let records = keygen(&a);
    publish(&[&b], &records);
    use std::os::unix::fs::PermissionsExt;
    let dir = a.data_dir().join("dkim/a.test");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&dir).unwrap() {
        let mode = e.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let r = send(&a, "bob@b.test", "hidden");
    assert_eq!(r["ok"], true, "{r}");
    let msgs = b.wait_messages("bob@b.test", 1);
    let msg = with_subject(&msgs, "hidden")[0];
    // send.py says EHLO client.example.net from 127.0.0.1: neither may appear in a.test's
    // Received header.
    let a_received: Vec<String> = msg
        .split("\nReceived: ")
        .skip(1)
        .map(|rest| {
            // The field ends at the first line that is not a continuation.
            let mut field = String::new();
            for (i, line) in rest.split('\n').enumerate() {
                if i > 0 && !line.starts_with([' ', '\t']) {
                    break;
                }
                field.push_str(line);
                field.push('\n');
            }
            field
        })
        .filter(|h| h.contains("by mx.a.test"))
        .collect();
    assert_eq!(a_received.len(), 1, "{msg}");
    assert!(
        a_received[0].starts_with("by mx.a.test (mailwarden) with ESMTPSA"),
        "{msg}"
    );
    assert!(!a_received[0].contains("client.example.net"), "{msg}");
}

#[test]
fn an_account_whose_mail_remote_servers_keep_refusing_is_suspended() {
    let b = start_b();
    let a = start_a(
        b.mx().port(),
        "[containment]\nremote_rejections_per_hour = 3\n",
    );
    a.add_user("postmaster@a.test", "pmpw");
    // b.test has no such users: its MX answers 550 5.1.1 to each.
    for i in 0..4 {
        let r = send(&a, &format!("nobody{i}@b.test"), &format!("guess-{i}"));
        assert_eq!(r["ok"], true, "{r}");
    }
    let line = a.wait_log(&["event=\"account_suspended\"", "alice@a.test"]);
    assert!(line.contains("remote servers refuse its mail"), "{line}");
    let status = a.cli(&["user", "status", "alice@a.test"], None);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("state:    suspended"), "{status}");
    assert!(status.contains("refused with 5xx"), "{status}");
    let r = send(&a, "bob@b.test", "after");
    assert_eq!(r["code"], 535, "{r}");
    // One notice, however many refusals arrive afterwards.
    let notes = a.wait_messages("postmaster@a.test", 1);
    assert!(notes[0].contains("Subject: Account suspended: alice@a.test"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        a.log_lines(&["event=\"account_suspended\""]).len(),
        1,
        "suspended once"
    );
}
