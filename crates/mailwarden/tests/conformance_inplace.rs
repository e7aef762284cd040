//! Conformance suites that may only be read in place (not redistributed with mailwarden):
//! the Mail::DKIM verifier corpus and the ValiMail ARC validation suite, from
//! `../shared/testdata` (override with `MAILWARDEN_TESTDATA`). Built only with the
//! `conformance` feature; `.ci/run` runs it when the folder exists:
//!
//! ```sh
//! cargo test -p mailwarden --features conformance --test conformance_inplace -- --nocapture
//! ```
//!
//! Records are served by the loopback DNS server and checked through mailwarden's own DKIM and
//! ARC code paths (mail-auth, the real resolver).

use mail_auth::{AuthenticatedMessage, DkimResult};
use mailwarden::checks::sender;
use mailwarden::config::{Dns as DnsConfig, Duration};
use mailwarden::dns::Dns;
use mailwarden_testdns::{TestDns, Zones};
use std::path::PathBuf;

fn testdata() -> PathBuf {
    std::env::var_os("MAILWARDEN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        })
}

fn dns_for(server: &TestDns) -> Dns {
    let mut c = DnsConfig::default();
    c.nameservers = vec![server.addr.to_string()];
    c.timeout = Duration::millis(300);
    c.attempts = 1;
    Dns::new(&c).unwrap()
}

/// Mail::DKIM's result vocabulary for one message, from our outputs.
fn class(outputs: &[mail_auth::DkimOutput]) -> &'static str {
    let has = |f: fn(&DkimResult) -> bool| outputs.iter().any(|o| f(o.result()));
    if has(|r| *r == DkimResult::Pass) {
        "pass"
    } else if has(|r| matches!(r, DkimResult::Fail(_))) {
        "fail"
    } else if has(|r| matches!(r, DkimResult::TempError(_))) {
        "temperror"
    } else if has(|r| matches!(r, DkimResult::PermError(_) | DkimResult::Neutral(_))) {
        "invalid"
    } else {
        "none"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_dkim_corpus_error_classes() {
    let dir = testdata().join("dkim-perl-mail-dkim");
    let mut zones = Zones::new();
    for line in std::fs::read_to_string(dir.join("FAKE_DNS.dat"))
        .unwrap()
        .lines()
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(char::is_whitespace).unwrap();
        let value = value.trim();
        match value {
            "NXDOMAIN" => {}
            "~~Query timed out~~" => {
                zones.timeout(name);
            }
            "~~SERVFAIL~~" => {
                zones.servfail(name);
            }
            v => {
                zones.txt(name, v.trim_matches('"'));
            }
        }
    }
    let server = TestDns::start(zones);
    let dns = dns_for(&server);
    let (mut total, mut matched) = (0, 0);
    let mut mismatches = Vec::new();
    for row in std::fs::read_to_string(dir.join("expected.tsv"))
        .unwrap()
        .lines()
    {
        if row.starts_with('#') || row.starts_with("file\t") || row.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = row.split('\t').collect();
        let (file, upstream, note) = (f[0], f[1], f.get(2).copied().unwrap_or(""));
        let (sig_v, sig_a, key_bits) = (
            f.get(4).copied().unwrap_or(""),
            f.get(5).copied().unwrap_or(""),
            f.get(7).copied().unwrap_or(""),
        );
        if file == "ignore_7.txt" {
            // An expired x= signature: depends on the clock, not on the verifier.
            continue;
        }
        // What an RFC 6376 + RFC 8301 verifier should say, from the upstream verdict.
        let modern = sig_v == "1"
            && matches!(sig_a, "rsa-sha256" | "ed25519-sha256")
            && key_bits
                .parse::<u32>()
                .map_or(sig_a == "ed25519-sha256", |b| b >= 1024);
        let want: &[&str] = if note.contains("DomainKeys") {
            &["none"] // DomainKey-Signature is not DKIM: unsigned.
        } else if matches!(file, "badkey_14.txt" | "badkey_15.txt") {
            &["temperror"]
        } else if upstream == "pass" && modern {
            &["pass"]
        } else if upstream == "pass" {
            &["fail", "invalid", "none"] // obsolete: any result but pass
        } else if upstream == "fail" && modern {
            &["fail"]
        } else {
            &["fail", "invalid", "none"]
        };
        let raw = std::fs::read(dir.join("corpus").join(file)).unwrap();
        let raw = to_crlf(&raw);
        let msg = AuthenticatedMessage::parse(&raw).expect("parseable corpus message");
        let outputs = sender::dkim(&dns, &msg).await;
        let got = class(&outputs);
        total += 1;
        if want.contains(&got) {
            matched += 1;
        } else {
            mismatches.push(format!(
                "{file}: got {got}, want {want:?} (upstream {upstream})"
            ));
        }
    }
    eprintln!("Mail::DKIM corpus: {matched} of {total} rows in the expected RFC 6376/8301 class");
    assert!(total >= 50, "corpus not loaded");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 30);
    let mut prev = 0;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Cases where mailwarden deliberately differs from the suite. The test fails if another case
/// fails, or if one of these starts to match (then remove it here).
/// - `ams_fields_h_empty`: an AMS with `h=` empty signs no header, not even From; as in DKIM
///   (RFC 6376 §3.5, §5.4: From MUST be signed) mail-auth rejects it, and so do we.
const KNOWN_ARC_DIVERGENCES: &[&str] = &["ams_fields_h_empty"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_validation_suite() {
    let path = testdata().join("arc-valimail-suite/arc-draft-validation-tests.shared.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let server = TestDns::start(Zones::new());
    let (mut total, mut matched) = (0, 0);
    let mut mismatches = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        let mut zones = Zones::new();
        if let Some(recs) = doc["txt-records"].as_mapping() {
            for (name, value) in recs {
                // The suite folds long keys with spaces; DKIM key records ignore whitespace.
                zones.txt(
                    name.as_str().unwrap(),
                    &value.as_str().unwrap().replace(' ', ""),
                );
            }
        }
        server.update(|z| *z = zones);
        let dns = dns_for(&server);
        let Some(tests) = doc["tests"].as_mapping() else {
            continue;
        };
        for (name, t) in tests {
            let want = t["cv"].as_str().unwrap_or("").to_ascii_lowercase();
            let raw = to_crlf(t["message"].as_str().unwrap_or("").as_bytes());
            let got = match AuthenticatedMessage::parse(&raw) {
                None => "fail".to_string(),
                Some(msg) => {
                    // At the defaults: the suite must pass as mailwarden runs.
                    let max_sets = mailwarden::config::Config::default().arc.max_sets;
                    let out = mailwarden::checks::arc::verify(&dns, &msg, max_sets).await;
                    match out.result() {
                        DkimResult::Pass => "pass",
                        DkimResult::None => "none",
                        _ => "fail",
                    }
                    .to_string()
                }
            };
            total += 1;
            let name = name.as_str().unwrap_or("?");
            // An empty cv means "no valid ARC set": none or fail are both acceptable.
            let ok = got == want || (want.is_empty() && (got == "none" || got == "fail"));
            if ok {
                matched += 1;
            }
            if ok == KNOWN_ARC_DIVERGENCES.contains(&name) {
                mismatches.push(format!(
                    "{name}: got {got}, want {want} (known divergence: {})",
                    !ok
                ));
            }
        }
    }
    eprintln!("ARC validation suite: {matched} of {total} tests give the expected cv");
    assert!(total >= 100, "suite not loaded");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// A sample report file as the attachment of a message, the way reporters send it.
fn as_report_mail(name: &str, data: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let ctype = if name.ends_with(".gz") {
        "application/gzip"
    } else if name.ends_with(".zip") {
        "application/zip"
    } else if name.ends_with(".json") {
        "application/tlsrpt+json"
    } else {
        "text/xml"
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut m = format!(
        "From: <r@example.net>\r\nTo: <dmarc-reports@example.com>\r\nSubject: report\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nreport\r\n--b\r\nContent-Type: {ctype}\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{}\"\r\n\r\n",
        name.replace('"', "")
    );
    for c in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(c).unwrap());
        m.push_str("\r\n");
    }
    m.push_str("--b--\r\n");
    m.into_bytes()
}

/// parsedmarc's sample reports, read in place, through the parser the server runs on mail
/// to `reports.address`: every well-formed aggregate, TLS and failure report is read with
/// its rows; the broken ones are refused with a reason, never a panic.
#[test]
fn parsedmarc_sample_reports_are_read_and_broken_ones_refused() {
    use mailwarden::reports::inbound::{Limits, Parsed, Refused, parse};
    let dir = testdata().join("dmarc-reports-parsedmarc/samples");
    if !dir.exists() {
        eprintln!("skipped: {} not found", dir.display());
        return;
    }
    let lim = Limits {
        max_size: 10 << 20,
        max_depth: 20,
        max_rows: 10_000,
    };
    let mut seen = Vec::new();
    for sub in ["aggregate", "aggregate_invalid", "smtp_tls", "failure"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&f).unwrap();
            let raw = if name.ends_with(".eml") {
                data
            } else {
                as_report_mail(&name, &data)
            };
            let got = parse(&raw, lim);
            let what = match &got {
                Ok(Parsed::Aggregate(r)) => {
                    assert!(!r.domain().is_empty(), "{name}: no policy domain");
                    format!("aggregate {} rows", r.records().len())
                }
                Ok(Parsed::Tls(t)) => format!("tls {} policies", t.policies.len()),
                Ok(Parsed::Failure { domain, .. }) => format!("failure for {domain}"),
                Err(e) => format!("refused: {e}"),
            };
            eprintln!("{sub}/{name}: {what}");
            seen.push((name, got));
        }
    }
    let find = |n: &str| {
        &seen
            .iter()
            .find(|(name, _)| name.starts_with(n))
            .unwrap_or_else(|| panic!("no sample {n}"))
            .1
    };
    // Plain, gzip, zip and mailed aggregates.
    for n in [
        "example.net!example.com!1529366400",
        "fastmail.com!example.com",
        "estadocuenta1.infonacot.gob.mx",
        "Report domain- borschow.com",
        "rfc9990-sample",
    ] {
        match find(n) {
            Ok(Parsed::Aggregate(r)) => assert!(!r.records().is_empty(), "{n}: no rows"),
            other => panic!("{n}: {other:?}"),
        }
    }
    assert!(matches!(find("invalid_xml"), Err(Refused::Malformed(_))));
    assert!(matches!(find("smtp_tls.json"), Ok(Parsed::Tls(_))));
    assert!(matches!(find("mail.ru.json"), Ok(Parsed::Tls(_))));
    // RFC 8460's own example gives `mx-host` as a string where its schema has an array.
    assert!(matches!(find("rfc8460.json"), Err(Refused::Malformed(_))));
    // Documentation, not a report: it opens with an XML schema.
    assert!(matches!(find("ikea.com"), Err(Refused::Malformed(_))));
    assert!(matches!(
        find("exim_plain_text_only_no_arf_part"),
        Err(Refused::NotAReport)
    ));
    assert!(matches!(
        find("google.com_smtp_tls_report"),
        Ok(Parsed::Tls(_))
    ));
    assert!(matches!(
        find("dmarc_ruf_report_linkedin.eml"),
        Ok(Parsed::Failure { .. })
    ));
    let aggregates = seen
        .iter()
        .filter(|(_, g)| matches!(g, Ok(Parsed::Aggregate(_))))
        .count();
    assert!(aggregates >= 12, "only {aggregates} aggregate samples read");
}
