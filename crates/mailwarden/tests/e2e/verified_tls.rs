//! Verified outbound TLS end to end: a.test delivers to b.test's real MX under b.test's
//! MTA-STS policy (served by b.test's own `listen.mta_sts`) and under DANE (TLSA records in
//! zones the test DNS server signs, validated with its keys as trust anchors). TLS-RPT then
//! tells b.test what happened.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

fn table<'a>(cfg: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    cfg.entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
}

fn path(p: &Path) -> toml::Value {
    toml::Value::String(p.display().to_string())
}

/// The recipient's state in `s`'s queue (`queue list --json`): (status, last reply).
fn rcpt_state(s: &Server, rcpt: &str) -> (String, String) {
    let all: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["queue", "list", "--json"], None)).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["recipients"].as_array().unwrap().iter())
        .find(|r| r["address"] == rcpt)
        .map(|r| {
            (
                r["status"].as_str().unwrap_or("").to_string(),
                r["last_reply"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

#[test]
fn mta_sts_enforce_refuses_an_untrusted_certificate_then_delivers_over_a_trusted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, chain, key) = test_ca(tmp.path(), &["mx.b.test", "mta-sts.b.test"]);
    let zones = "b.test MX 10 mx.b.test
mx.b.test A 127.0.0.1
mta-sts.b.test A 127.0.0.1
_mta-sts.b.test TXT v=STSv1; id=20261202
_smtp._tls.b.test TXT v=TLSRPTv1; rua=mailto:dmarc-reports@b.test
a.test TXT v=spf1 ip4:127.0.0.1 -all
a.test MX 10 mx.a.test
mx.a.test A 127.0.0.1
";
    // b.test: a self-signed certificate on its MX; its policy served with the CA's.
    let mut b = Server::start_with_zones(
        &format!(
            "hostname = \"mx.b.test\"\ndomains = [\"b.test\"]\n[listen]\nmta_sts = \"127.0.0.1:0\"\n\
             [mta_sts]\nmode = \"enforce\"\nmx = [\"mx.b.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            chain.display(),
            key.display()
        ),
        zones,
    );
    b.add_user("bob@b.test", "bobpw");
    let a = Server::start_with_zones(
        &format!(
            "hostname = \"mx.a.test\"\ndomains = [\"a.test\"]\n[delivery]\nport = {}\n\
             mta_sts_port = {}\nextra_roots = [\"{}\"]\nretry_schedule = [\"1s\"]\n",
            b.mx().port(),
            b.ports["mta_sts"].port(),
            ca.display()
        ),
        zones,
    );
    a.add_user("alice@a.test", "alicepw");
    let dkim = a.dkim_keygen("a.test");
    for s in [&a, &b] {
        s.dns.update(|z| z.load(&dkim).unwrap());
    }

    // What b.test says to publish names the policy it serves.
    let records = b.cli_ok(&["dns", "records", "b.test"], None);
    assert!(
        records.contains("_mta-sts.b.test. IN TXT \"v=STSv1; id="),
        "{records}"
    );
    assert!(
        records.contains("mta-sts.b.test. IN CNAME mx.b.test."),
        "{records}"
    );
    let r = submit(
        &a,
        "alice@a.test",
        "alicepw",
        "bob@b.test",
        &["--subject", "over MTA-STS"],
    );
    assert_eq!(r["ok"], true, "{r}");
    a.wait_log(&["mta_sts_policy", "domain=\"b.test\"", "mode=Enforce"]);
    let failed = a.wait_log(&["tls_verify_failed", "policy=\"sts\""]);
    eprintln!("a.test: {failed}");
    // Deferred with the reason, never sent in plaintext.
    let state = wait_for(Duration::from_secs(10), || {
        let s = rcpt_state(&a, "bob@b.test");
        (s.0 == "deferred" && s.1.contains("sts policy")).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "not deferred: {:?}\n{}",
            rcpt_state(&a, "bob@b.test"),
            a.log()
        )
    });
    eprintln!("a.test queue: {state:?}");
    assert!(
        b.messages("bob@b.test").is_empty(),
        "delivered without verified TLS"
    );
    assert!(
        a.query_count(
            "SELECT COUNT(*) FROM tls_results WHERE domain = 'b.test' AND policy_type = 'sts' \
             AND result = 'certificate-not-trusted'"
        ) >= 1
    );

    // b.test's MX gets the CA's certificate: the next attempt is verified and delivered.
    b.pin_ports();
    b.stop();
    b.edit_config(|c| {
        let tls = table(c, "tls");
        tls.insert("cert".into(), path(&chain));
        tls.insert("key".into(), path(&key));
    });
    b.start_again();
    let got = b.wait_messages("bob@b.test", 1);
    assert!(got[0].contains("Subject: over MTA-STS"));
    let line = a.wait_log(&["delivered", "rcpt=bob@b.test"]);
    assert!(line.contains("verified"), "{line}");

    // A day later a.test tells b.test (its `_smtp._tls` rua) how its sessions went.
    a.advance_clock(86_400 + 600);
    a.wait_log(&["report_sent", "kind=tls", "domain=b.test", "status=sent"]);
    b.wait_log(&["report_received", "kind=\"tls\""]);
    let received = b.cli_ok(&["report", "received", "--json"], None);
    eprintln!("b.test report received: {received}");
    let tls: Vec<serde_json::Value> = received
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "tls" && r["domain"] == "b.test")
        .collect();
    assert_eq!(tls.len(), 1, "{received}");
    let policies = &tls[0]["detail"];
    let sts = policies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "Sts")
        .unwrap_or_else(|| panic!("{policies}"));
    assert!(sts["failed"].as_u64().unwrap() >= 1, "{sts}");
    assert!(sts["successful"].as_u64().unwrap() >= 1, "{sts}");
}

#[test]
fn dane_delivers_on_a_matching_tlsa_waits_on_a_mismatch_and_ignores_unsigned_zones() {
    // b.test serves three domains: b.test (signed, matching TLSA), c.test (signed, a TLSA
    // that matches nothing) and d.test (unsigned, the same wrong TLSA).
    let b = Server::start_with_zones(
        "hostname = \"mx.b.test\"\ndomains = [\"b.test\", \"c.test\", \"d.test\"]\n",
        "",
    );
    for u in ["bob@b.test", "carol@c.test", "dave@d.test"] {
        b.add_user(u, "pw");
    }
    let records = b.cli_ok(&["dns", "records", "b.test"], None);
    let tlsa = records
        .lines()
        .find(|l| l.contains(" IN TLSA 3 1 1 "))
        .unwrap_or_else(|| panic!("no TLSA in dns records:\n{records}"));
    let hash = tlsa.rsplit(' ').next().unwrap();
    for want in [
        "b.test. IN MX 10 mx.b.test.",
        "b.test. IN TXT \"v=spf1 mx -all\"",
        "_dmarc.b.test. IN TXT \"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:dmarc-reports@b.test\"",
        "_smtp._tls.b.test. IN TXT \"v=TLSRPTv1; rua=mailto:dmarc-reports@b.test\"",
        "no DKIM key for b.test",
    ] {
        assert!(records.contains(want), "{want} missing:\n{records}");
    }
    let port = b.mx().port();
    let wrong = "ab".repeat(32);
    let zones = format!(
        "b.test SIGNED
b.test MX 10 mx.b.test
mx.b.test A 127.0.0.1
_{port}._tcp.mx.b.test TLSA 3 1 1 {hash}
c.test SIGNED
c.test MX 10 mx.c.test
mx.c.test A 127.0.0.1
_{port}._tcp.mx.c.test TLSA 3 1 1 {wrong}
d.test MX 10 mx.d.test
mx.d.test A 127.0.0.1
_{port}._tcp.mx.d.test TLSA 3 1 1 {wrong}
"
    );
    let a = Server::start_with_zones(
        &format!(
            "hostname = \"mx.a.test\"\ndomains = [\"a.test\"]\n[delivery]\nport = {port}\n\
             retry_schedule = [\"1s\"]\n"
        ),
        &zones,
    );
    a.add_user("alice@a.test", "alicepw");
    // Its resolver trusts the test DNS server's keys, as a real one trusts the root's
    // (`support`: `dns.trust_anchors`).
    for to in ["bob@b.test", "carol@c.test", "dave@d.test"] {
        let r = submit(
            &a,
            "alice@a.test",
            "alicepw",
            to,
            &["--subject", &format!("to {to}")],
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    // Signed and matching: delivered over TLS the TLSA record vouches for.
    b.wait_messages("bob@b.test", 1);
    let line = a.wait_log(&["delivered", "rcpt=bob@b.test"]);
    assert!(line.contains("verified"), "{line}");
    // Unsigned: DANE is not used, the wrong TLSA changes nothing.
    b.wait_messages("dave@d.test", 1);
    let line = a.wait_log(&["delivered", "rcpt=dave@d.test"]);
    assert!(!line.contains("verified"), "{line}");
    // Signed and not matching: waits, no plaintext fallback.
    let failed = a.wait_log(&["tls_verify_failed", "domain=\"c.test\"", "policy=\"tlsa\""]);
    eprintln!("a.test: {failed}");
    let state = wait_for(Duration::from_secs(10), || {
        let s = rcpt_state(&a, "carol@c.test");
        (s.0 == "deferred" && s.1.contains("tlsa policy")).then_some(s)
    })
    .unwrap_or_else(|| panic!("not deferred: {:?}", rcpt_state(&a, "carol@c.test")));
    eprintln!("a.test queue: {state:?}");
    assert!(a.log_lines(&["tls_fallback", "mx.c.test"]).is_empty());
    // Still waiting after more attempts.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        b.messages("carol@c.test").is_empty(),
        "delivered despite the TLSA mismatch"
    );
    // What an operator's dashboard sees of it (docs/monitoring); the queue's gauges are
    // refreshed every 15 s.
    let m = wait_for(Duration::from_secs(30), || {
        let m = a.metrics();
        m.contains("mailwarden_queue_recipients{state=\"deferred\"} 1")
            .then_some(m)
    })
    .unwrap_or_else(|| a.metrics());
    for want in [
        "mailwarden_outbound_deliveries_total{result=\"delivered\",tls=\"verified\"} 1",
        "mailwarden_outbound_deliveries_total{result=\"delivered\",tls=\"opportunistic\"} 1",
        "mailwarden_tls_handshakes_total{side=\"outbound\",result=\"failed\"}",
        "mailwarden_queue_recipients{state=\"deferred\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
}
