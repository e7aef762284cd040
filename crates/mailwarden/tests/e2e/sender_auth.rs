//! Sender authentication on the MX listener, end to end: the real binary, the loopback DNS
//! server, messages signed by dkimpy (an independent implementation), client addresses from
//! 127.0.0.0/8.

use crate::support::*;
use std::path::PathBuf;

pub(crate) fn fixtures() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim-rfc8463")
}

/// The RFC 8463 example keys, republished for sender.test (RSA `test`, Ed25519 `brisbane`).
pub(crate) fn dkim_records(domain: &str) -> String {
    let tsv = std::fs::read_to_string(fixtures().join("dns-txt.tsv")).unwrap();
    tsv.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.split_once('\t').unwrap();
            let selector = name.split('.').next().unwrap();
            format!("{selector}._domainkey.{domain} TXT {value}\n")
        })
        .collect()
}

fn zones() -> String {
    let mut z = String::from(
        "sender.test TXT v=spf1 ip4:127.0.0.1 -all
_dmarc.sender.test TXT v=DMARC1; p=reject
quarantine.test TXT v=spf1 ip4:127.0.0.1 -all
_dmarc.quarantine.test TXT v=DMARC1; p=quarantine
relaxed.test TXT v=spf1 ip4:127.0.0.1 -all
_dmarc.relaxed.test TXT v=DMARC1; p=none
nodmarc.test TXT v=spf1 ip4:127.0.0.1 -all
slow.test TIMEOUT
_dmarc.slow.test TIMEOUT
1.0.0.127.in-addr.arpa PTR client.sender.test
client.sender.test A 127.0.0.1
",
    );
    z.push_str(&dkim_records("sender.test"));
    z
}

fn message(from: &str, subject: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.test\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\r\nHello Bob.\r\nThis line is signed.\r\n"
    )
}

fn sign(msg: &str) -> Vec<u8> {
    let f = fixtures();
    let out = run(
        "python3",
        &[
            clients_dir().join("dkim_sign.py").to_str().unwrap(),
            "--domain",
            "sender.test",
            "--selector",
            "test",
            "--key",
            f.join("rsa-private.pem").to_str().unwrap(),
            "--ed25519-seed",
            f.join("ed25519-seed.b64").to_str().unwrap(),
            "--ed25519-selector",
            "brisbane",
        ],
        Some(msg),
    );
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn send_from(s: &Server, source: &str, mail_from: &str, raw: &[u8]) -> serde_json::Value {
    smtplib_stdin(
        s.mx(),
        "plain",
        &[
            "--raw",
            "--source",
            source,
            "--from",
            mail_from,
            "--to",
            "bob@example.test",
        ],
        Some(raw),
    )
}

fn auth_results(m: &str) -> String {
    let start = m
        .find("Authentication-Results: mx.example.test")
        .expect("our A-R header");
    let rest = &m[start..];
    let mut end = rest.find('\n').unwrap();
    while rest[end + 1..].starts_with('\t') || rest[end + 1..].starts_with(' ') {
        end += 1 + rest[end + 1..].find('\n').unwrap();
    }
    rest[..end].to_string()
}

fn server() -> Server {
    let s = Server::start_with_zones("", &zones());
    s.add_user("bob@example.test", "pw");
    s
}

#[test]
fn aligned_spf_and_both_dkim_signatures_pass_dmarc() {
    let s = server();
    let signed = sign(&message("alice@sender.test", "good"));
    let r = send_from(&s, "127.0.0.1", "alice@sender.test", &signed);
    assert_eq!(r["ok"], true, "{r}\n{}", s.log());
    let m = &s.wait_messages("bob@example.test", 1)[0];
    let ar = auth_results(m);
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    assert_eq!(
        ar.matches("dkim=pass").count(),
        2,
        "both signatures (RSA and Ed25519) must pass: {ar}"
    );
    assert!(ar.contains("iprev=pass"), "{ar}");
    // A-R sits above our Received header.
    assert!(m.find("Authentication-Results:").unwrap() < m.find("Received:").unwrap());
    s.wait_log(&["event=\"sender_auth\"", "action=\"accept\""]);
}

#[test]
fn unauthorised_ip_without_signature_is_rejected_by_dmarc() {
    let s = server();
    let r = send_from(
        &s,
        "127.0.0.66",
        "alice@sender.test",
        message("alice@sender.test", "forged").as_bytes(),
    );
    assert_eq!(r["code"], 550, "{r}");
    let text = r["message"].as_str().unwrap();
    assert!(text.starts_with("5.7.1"), "{text}");
    assert!(
        text.contains("DMARC") && text.contains("sender.test"),
        "{text}"
    );
    let line = s.wait_log(&["event=\"reject\"", "verb=\"DATA\""]);
    assert!(line.contains("dmarc.fail"), "{line}");
    assert!(s.messages("bob@example.test").is_empty());
    assert_eq!(s.query_count("SELECT count(*) FROM queue"), 0);
}

#[test]
fn quarantine_policy_lands_in_junk() {
    let s = server();
    let r = send_from(
        &s,
        "127.0.0.66",
        "alice@quarantine.test",
        message("alice@quarantine.test", "quar").as_bytes(),
    );
    assert_eq!(r["ok"], true, "{r}");
    let junk = s.maildir("bob@example.test").join(".Junk");
    let m = wait_for(std::time::Duration::from_secs(20), || {
        s.messages_in(&junk).into_iter().next()
    })
    .unwrap_or_else(|| panic!("nothing in Junk; log:\n{}", s.log()));
    assert!(m.contains("X-Mailwarden-Verdict: junk"), "{m}");
    assert!(auth_results(&m).contains("dmarc=fail"), "{m}");
    assert!(
        s.messages("bob@example.test").is_empty(),
        "quarantined mail also in the inbox"
    );
}

#[test]
fn policy_none_is_delivered_with_results() {
    let s = server();
    let r = send_from(
        &s,
        "127.0.0.66",
        "alice@relaxed.test",
        message("alice@relaxed.test", "none").as_bytes(),
    );
    assert_eq!(r["ok"], true, "{r}");
    let m = &s.wait_messages("bob@example.test", 1)[0];
    let ar = auth_results(m);
    assert!(ar.contains("spf=fail") && ar.contains("dmarc=fail"), "{ar}");
}

#[test]
fn spf_fail_without_dmarc_is_rejected() {
    let s = server();
    let r = send_from(
        &s,
        "127.0.0.66",
        "alice@nodmarc.test",
        message("alice@nodmarc.test", "nod").as_bytes(),
    );
    assert_eq!(r["code"], 550, "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("5.7.23"), "{r}");
}

#[test]
fn dns_timeout_fails_closed_with_451() {
    let s = server();
    let r = send_from(
        &s,
        "127.0.0.1",
        "alice@slow.test",
        message("alice@slow.test", "slow").as_bytes(),
    );
    assert_eq!(r["code"], 451, "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("4.7."), "{r}");
    assert!(s.messages("bob@example.test").is_empty());
}

#[test]
fn forged_authentication_results_are_removed() {
    let s = server();
    let msg = format!(
        "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=ceo@sender.test; dkim=pass; dmarc=pass\r\nAuthentication-Results: elsewhere.test; spf=none\r\n{}",
        message("alice@sender.test", "forged-ar")
    );
    let signed = sign(&msg);
    let r = send_from(&s, "127.0.0.1", "alice@sender.test", &signed);
    assert_eq!(r["ok"], true, "{r}");
    let m = &s.wait_messages("bob@example.test", 1)[0];
    assert_eq!(
        m.matches("Authentication-Results: mx.example.test").count(),
        1,
        "forged header kept:\n{m}"
    );
    assert!(!m.contains("smtp.mailfrom=ceo@sender.test"), "{m}");
    assert!(
        m.contains("Authentication-Results: elsewhere.test; spf=none"),
        "other servers' results are kept"
    );
    s.wait_log(&["event=\"forged_auth_results_removed\""]);
}

#[test]
fn body_changed_after_signing_fails_dkim() {
    let s = server();
    let signed = String::from_utf8(sign(&message("alice@sender.test", "tampered"))).unwrap();
    let tampered = signed.replace("This line is signed.", "This line was changed.");
    // SPF still passes and aligns, so DMARC passes and the message is delivered: DKIM alone
    // never rejects.
    let r = send_from(&s, "127.0.0.1", "alice@sender.test", tampered.as_bytes());
    assert_eq!(r["ok"], true, "{r}");
    let ar = auth_results(&s.wait_messages("bob@example.test", 1)[0]);
    assert_eq!(ar.matches("dkim=fail").count(), 2, "{ar}");
    assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{ar}");
}

#[test]
fn observe_mode_logs_would_reject_and_delivers() {
    let s = Server::start_with_zones("[dmarc]\nmode = \"observe\"", &zones());
    s.add_user("bob@example.test", "pw");
    let r = send_from(
        &s,
        "127.0.0.66",
        "alice@sender.test",
        message("alice@sender.test", "obs").as_bytes(),
    );
    assert_eq!(r["ok"], true, "{r}");
    s.wait_messages("bob@example.test", 1);
    let line = s.wait_log(&["event=\"would_reject\""]);
    assert!(line.contains("dmarc.fail"), "{line}");
}

#[test]
fn submitted_mail_is_not_checked_as_if_from_outside() {
    let s = server();
    s.add_user("alice@sender.test", "pw");
    // sender.test's SPF does not list 127.0.0.66, yet a logged-in local user sends from there.
    let r = smtplib_stdin(
        s.submissions(),
        "ssl",
        &[
            "--raw",
            "--source",
            "127.0.0.66",
            "--user",
            "alice@sender.test",
            "--password",
            "pw",
            "--from",
            "alice@sender.test",
            "--to",
            "bob@example.test",
        ],
        Some(message("alice@sender.test", "submitted").as_bytes()),
    );
    assert_eq!(r["ok"], true, "{r}");
    let m = &s.wait_messages("bob@example.test", 1)[0];
    assert!(
        m.contains(
            "Authentication-Results: mx.example.test;\n\tauth=pass smtp.auth=alice@sender.test"
        ),
        "{m}"
    );
    assert!(!m.contains("dmarc="), "{m}");
}
