//! Conformance: the OpenSPF RFC 7208 test suite and pyspf's extra suite (`tests/fixtures/spf/`,
//! licences beside them). Each YAML document's zone data is served by the loopback DNS server and
//! every test runs through mailwarden's SPF check (mail-auth, the real resolver). Every test
//! must give one of the results the suite accepts.
//!
//! pyspf's tests of its non-RFC `strict` modes are left out (2 of 16).
//!
//! Harness rules (../shared/testdata/README.md): SPF-type records are also served as TXT
//! unless `TXT: NONE`; `TIMEOUT` makes the name time out; absent names are NXDOMAIN.

use mailwarden::checks::sender;
use mailwarden::config::{Dns as DnsConfig, Duration};
use mailwarden::dns::Dns;
use mailwarden_testdns::{Rec, TestDns, Zones};
use serde::Deserialize;
use serde_yaml::Value;
use std::net::IpAddr;

fn string_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // A list of strings is one TXT record of several character-strings: joined.
        Value::Sequence(parts) => parts.iter().map(string_of).collect(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn zones(data: &Value) -> Zones {
    let mut z = Zones::new();
    let Some(map) = data.as_mapping() else {
        return z;
    };
    for (name, records) in map {
        let name = name.as_str().unwrap_or_default();
        let records = records.as_sequence().cloned().unwrap_or_default();
        let txt_none = records
            .iter()
            .any(|r| r.get("TXT").and_then(Value::as_str) == Some("NONE"));
        let has_txt = records.iter().any(|r| r.get("TXT").is_some());
        for r in &records {
            if r.as_str() == Some("TIMEOUT") {
                z.timeout(name);
                continue;
            }
            let Some(m) = r.as_mapping() else { continue };
            for (k, v) in m {
                match k.as_str().unwrap_or_default() {
                    "SPF" if !txt_none && !has_txt => {
                        // An empty list is an empty record.
                        z.add(name, Rec::Txt(string_of(v).into_bytes()));
                    }
                    "SPF" => {}
                    "TXT" if v.as_str() == Some("NONE") => {}
                    "TXT" => {
                        z.add(name, Rec::Txt(string_of(v).into_bytes()));
                    }
                    "A" => {
                        if let Ok(ip) = string_of(v).parse() {
                            z.add(name, Rec::A(ip));
                        }
                    }
                    "AAAA" => {
                        if let Ok(ip) = string_of(v).parse() {
                            z.add(name, Rec::Aaaa(ip));
                        }
                    }
                    "MX" => {
                        let s = v.as_sequence().cloned().unwrap_or_default();
                        let pref = s.first().and_then(Value::as_u64).unwrap_or(0) as u16;
                        let host = s.get(1).map(string_of).unwrap_or_default();
                        z.add(name, Rec::Mx(pref, mailwarden_testdns::fqdn(&host)));
                    }
                    "PTR" => {
                        z.add(name, Rec::Ptr(mailwarden_testdns::fqdn(&string_of(v))));
                    }
                    "CNAME" => {
                        z.add(name, Rec::Cname(mailwarden_testdns::fqdn(&string_of(v))));
                    }
                    other => panic!("zone data type {other} not handled"),
                }
            }
        }
    }
    z
}

/// Run every test of a suite file; returns the test count and the failures.
async fn run_suite(file: &str, dns_server: &TestDns) -> (usize, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spf")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let mut total = 0;
    let mut failures = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).unwrap();
        let z = zones(&doc["zonedata"]);
        dns_server.update(|live| *live = z.clone());
        // A fresh resolver (and answer cache) per document: the zones differ.
        let mut cfg = DnsConfig::default();
        cfg.nameservers = vec![dns_server.addr.to_string()];
        cfg.timeout = Duration::millis(300);
        cfg.attempts = 1;
        let dns = Dns::new(&cfg).unwrap();
        let Some(tests) = doc["tests"].as_mapping() else {
            continue;
        };
        for (name, t) in tests {
            // pyspf's lax mode (`strict: 0`, a pre-RFC `default=` modifier) and its harsh
            // mode's "ambiguous" result are not RFC 7208, which ignores unknown modifiers.
            if t["strict"].as_u64() == Some(0) || t["result"].as_str() == Some("ambiguous") {
                continue;
            }
            total += 1;
            let name = name.as_str().unwrap_or_default();
            let ip: IpAddr = t["host"].as_str().unwrap().parse().unwrap();
            let helo = t["helo"].as_str().unwrap_or_default();
            let mailfrom = t["mailfrom"].as_str().unwrap_or_default();
            let want: Vec<String> = match &t["result"] {
                Value::Sequence(v) => v.iter().map(string_of).collect(),
                v => vec![string_of(v)],
            };
            let out = sender::spf(&dns, ip, helo, "receiver.test", mailfrom).await;
            let got = out.result().to_string().to_lowercase();
            if !want.iter().any(|w| w.eq_ignore_ascii_case(&got)) {
                failures.push(format!("{file} {name}: got {got}, want {want:?}"));
            }
        }
    }
    (total, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openspf_rfc7208_suite() {
    let dns_server = TestDns::start(Zones::new());
    let (total, failures) = run_suite("rfc7208-tests.shared.yml", &dns_server).await;
    eprintln!(
        "OpenSPF RFC 7208 suite: {} of {total} pass",
        total - failures.len()
    );
    assert!(total >= 141, "suite not loaded ({total} tests)");
    assert!(
        failures.is_empty(),
        "{} of {total} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyspf_extra_suite() {
    let dns_server = TestDns::start(Zones::new());
    let (total, failures) = run_suite("pyspf-extra-test.yml", &dns_server).await;
    eprintln!(
        "pyspf extra suite: {} of {total} pass",
        total - failures.len()
    );
    assert!(total >= 13, "suite not loaded ({total} tests)");
    assert!(
        failures.is_empty(),
        "{} of {total} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
