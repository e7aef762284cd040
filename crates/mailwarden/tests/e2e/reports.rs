//! DMARC aggregate reports end to end, between two real instances on loopback: a.test sends
//! mail to b.test, and so does a forger (from 127.0.0.3) and a spammer's domain (spam.test,
//! from 127.0.0.4). A day later by b.test's test clock, b.test sends a.test its report; a.test
//! reads it and `report domains` names the forger. Reports never go to the spam-only domain
//! nor to an outside address that did not publish the external-destination record.

use crate::support::*;
use std::time::Duration;

const ZONES: &str = "a.test TXT v=spf1 ip4:127.0.0.1 -all
a.test MX 10 mx.a.test
mx.a.test A 127.0.0.1
1.0.0.127.in-addr.arpa PTR mx.a.test
_dmarc.a.test TXT v=DMARC1; p=reject; rua=mailto:dmarc-reports@a.test,mailto:bob@a.test,mailto:agg@thirdparty.test,mailto:agg@reports.test
a.test._report._dmarc.reports.test TXT v=DMARC1
b.test MX 10 mx.b.test
mx.b.test A 127.0.0.1
b.test TXT v=spf1 ip4:127.0.0.1 -all
_dmarc.b.test TXT v=DMARC1; p=none
spam.test TXT v=spf1 ip4:127.0.0.9 -all
_dmarc.spam.test TXT v=DMARC1; p=quarantine; rua=mailto:dmarc@spam.test
";

/// The gzip attachment of a report message, decompressed.
fn report_xml(msg: &str) -> String {
    use mail_parser::MimeHeaders;
    let m = mail_parser::MessageParser::new()
        .parse(msg.as_bytes())
        .unwrap();
    let part = m
        .attachments()
        .find(|p| p.content_type().and_then(|c| c.subtype()) == Some("gzip"))
        .expect("a gzip attachment");
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(part.contents()), &mut xml)
        .unwrap();
    xml
}

#[test]
fn b_reports_to_a_who_sends_as_a_and_a_names_the_forger() {
    // a.test first (b.test must know its MX port), then b.test, then a.test again delivering
    // to b.test.
    let mut a = Server::start_with_zones(
        "hostname = \"mx.a.test\"\ndomains = [\"a.test\"]\n[delivery]\nretry_schedule = [\"1s\"]\n",
        ZONES,
    );
    a.add_user("alice@a.test", "alicepw");
    a.add_user("bob@a.test", "bobpw");
    let b = Server::start_with_zones(
        &format!(
            "hostname = \"mx.b.test\"\ndomains = [\"b.test\"]\n[delivery]\nport = {}\n\
             retry_schedule = [\"1s\"]\n[dmarc]\nreport_min_good = 2\n",
            a.mx().port()
        ),
        ZONES,
    );
    b.add_user("carol@b.test", "carolpw");
    let keys = format!("{}\n{}", a.dkim_keygen("a.test"), b.dkim_keygen("b.test"));
    for s in [&a, &b] {
        s.dns.update(|z| z.load(&keys).unwrap());
    }
    a.pin_ports();
    a.stop();
    a.edit_config(|c| {
        let port = toml::Value::Integer(b.mx().port() as i64);
        c["delivery"]
            .as_table_mut()
            .unwrap()
            .insert("port".into(), port);
    });
    a.start_again();

    // Two signed messages from a.test through its own server (source 127.0.0.1).
    for i in 0..2 {
        let r = submit(
            &a,
            "alice@a.test",
            "alicepw",
            "carol@b.test",
            &["--subject", &format!("hello {i}")],
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    b.wait_messages("carol@b.test", 2);
    // A forger from 127.0.0.3: From a.test, not authorised by SPF, unsigned: p=reject.
    let forged = smtplib(
        b.mx(),
        "plain",
        &[
            "--from",
            "ceo@a.test",
            "--to",
            "carol@b.test",
            "--subject",
            "wire transfer",
            "--source",
            "127.0.0.3",
        ],
    );
    assert_eq!(forged["ok"], false, "{forged}");
    assert!(forged.to_string().contains("550"), "{forged}");
    // spam.test's mail fails its own DMARC (p=quarantine): junked, three times.
    for _ in 0..3 {
        let r = smtplib(
            b.mx(),
            "plain",
            &[
                "--from",
                "x@spam.test",
                "--to",
                "carol@b.test",
                "--subject",
                "cheap",
                "--source",
                "127.0.0.4",
            ],
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    let evals = || b.query_count("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM dmarc_evals");
    let counted = wait_for(Duration::from_secs(10), || (evals() >= 6).then_some(()));
    assert!(counted.is_some(), "evaluations counted: {}", evals());
    assert_eq!(
        b.query_count("SELECT COUNT(*) FROM reports_sent"),
        0,
        "nothing is sent before the period ends"
    );

    // The next day on b.test.
    b.advance_clock(86_400 + 600);
    b.wait_log(&[
        "report_sent",
        "kind=dmarc",
        "domain=a.test",
        "destination=dmarc-reports@a.test",
        "status=sent",
    ]);
    let sent = b.cli_ok(&["report", "sent", "--json"], None);
    let sent: Vec<serde_json::Value> = sent
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status = |dest: &str| {
        sent.iter()
            .find(|s| s["destination"] == dest)
            .unwrap_or_else(|| panic!("no decision for {dest}: {sent:?}"))
            .clone()
    };
    assert_eq!(status("dmarc-reports@a.test")["status"], "sent");
    assert_eq!(status("bob@a.test")["status"], "sent");
    assert_eq!(
        status("agg@reports.test")["status"],
        "sent",
        "authorised outside address"
    );
    let third = status("agg@thirdparty.test");
    assert_eq!(third["status"], "skipped");
    assert!(
        third["reason"]
            .as_str()
            .unwrap()
            .contains("a.test._report._dmarc.thirdparty.test"),
        "{third}"
    );
    let spam = status("dmarc@spam.test");
    assert_eq!(spam["status"], "skipped");
    assert!(
        spam["reason"]
            .as_str()
            .unwrap()
            .contains("no authenticated good history"),
        "{spam}"
    );
    eprintln!(
        "b.test report sent:\n{}",
        b.cli_ok(&["report", "sent"], None)
    );

    // a.test: the copy to bob is a real RFC 7489 report; the one to the reports address is
    // read and kept.
    let msgs = a.wait_messages("bob@a.test", 1);
    let report = msgs
        .iter()
        .find(|m| m.contains("Report Domain: a.test"))
        .expect("the report in bob's mailbox");
    assert!(report.contains("DKIM-Signature:"), "signed:\n{report}");
    assert!(
        report.contains("dkim=pass"),
        "b.test's signature checks out at a.test:\n{report}"
    );
    let xml = report_xml(report);
    assert!(xml.contains("<source_ip>127.0.0.3</source_ip>"), "{xml}");
    assert!(xml.contains("<disposition>reject</disposition>"), "{xml}");
    assert!(!xml.contains("spam.test"), "one report per domain:\n{xml}");
    let file = a.dir.path().join("report.xml");
    std::fs::write(&file, &xml).unwrap();
    let xsd =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dmarc-rfc7489.xsd");
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(&file)
        .output()
        .unwrap_or_else(|_| missing("xmllint", "apt-get install libxml2-utils"));
    assert!(
        out.status.success(),
        "the report does not validate:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );

    a.wait_log(&["report_received", "kind=\"aggregate\""]);
    let rows = a.cli_ok(&["report", "domains", "a.test", "--json"], None);
    eprintln!(
        "a.test report domains:\n{}",
        a.cli_ok(&["report", "domains"], None)
    );
    let rows: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let source = |ip: &str| {
        rows.iter()
            .find(|r| r["source_ip"] == ip)
            .unwrap_or_else(|| panic!("no row for {ip}: {rows:?}"))
            .clone()
    };
    let legit = source("127.0.0.1");
    assert_eq!(legit["messages"], 2, "{legit}");
    assert_eq!(legit["dmarc_pass"], 1.0, "{legit}");
    assert_eq!(legit["known"], true, "{legit}");
    assert_eq!(legit["likely_forgery"], false, "{legit}");
    assert_eq!(legit["ptr"], "mx.a.test", "{legit}");
    let forger = source("127.0.0.3");
    assert_eq!(forger["messages"], 1, "{forger}");
    assert_eq!(forger["dmarc_pass"], 0.0, "{forger}");
    assert_eq!(forger["likely_forgery"], true, "{forger}");
    // Mail to the reports address is read, not delivered.
    assert!(a.messages("dmarc-reports@a.test").is_empty());
}

/// Hostile reports to the reports address: a gzip bomb and malformed XML are refused, each
/// logged once, recorded as handled (never tried again), and nothing is kept.
#[test]
fn a_decompression_bomb_and_broken_xml_are_refused_once() {
    let s = Server::start("[reports]\nmax_size = \"1MiB\"\n");
    let bomb = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![b' '; 64 << 20]).unwrap();
        enc.finish().unwrap()
    };
    let deep = format!("<feedback>{}</feedback>", "<a>".repeat(10_000));
    let entity = "<?xml version=\"1.0\"?><!DOCTYPE f [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><feedback>&x;</feedback>";
    let cases: [(&str, &str, Vec<u8>, &str); 3] = [
        (
            "bomb.xml.gz",
            "application/gzip",
            bomb,
            "decompresses to more than",
        ),
        (
            "deep.xml",
            "text/xml",
            deep.into_bytes(),
            "nests deeper than",
        ),
        (
            "entity.xml",
            "text/xml",
            entity.as_bytes().to_vec(),
            "DOCTYPE",
        ),
    ];
    for (name, ctype, data, reason) in cases {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let mut m = format!(
            "From: <r@example.net>\r\nTo: <dmarc-reports@example.test>\r\nSubject: {name}\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
        );
        for c in b64.as_bytes().chunks(76) {
            m.push_str(std::str::from_utf8(c).unwrap());
            m.push_str("\r\n");
        }
        m.push_str("--b--\r\n");
        let r = smtplib_stdin(
            s.mx(),
            "plain",
            &[
                "--from",
                "r@example.net",
                "--to",
                "dmarc-reports@example.test",
                "--raw",
            ],
            Some(m.as_bytes()),
        );
        assert_eq!(r["ok"], true, "{name}: {r}");
        let line = s.wait_log(&["report_refused", reason]);
        eprintln!("{name}: {line}");
    }
    // Each refusal once, none kept, and the queue holds nothing to try again.
    assert_eq!(s.log_lines(&["report_refused"]).len(), 3, "{}", s.log());
    assert_eq!(s.query_count("SELECT COUNT(*) FROM reports_in"), 0);
    let pending = wait_for(Duration::from_secs(10), || {
        (s.query_count("SELECT COUNT(*) FROM queue_rcpt WHERE status = 'queued'") == 0)
            .then_some(())
    });
    assert!(
        pending.is_some(),
        "a refused report waits to be tried again"
    );
}
