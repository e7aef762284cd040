//! Conformance: the RFC 8463 Appendix A example. The signed message carries an Ed25519 and an
//! RSA signature; both must verify through mailwarden's DKIM check, with the published keys
//! served by the loopback DNS server.

use mail_auth::{AuthenticatedMessage, DkimResult};
use mailwarden::checks::sender;
use mailwarden::config::{Dns as DnsConfig, Duration};
use mailwarden::dns::Dns;
use mailwarden_testdns::{TestDns, Zones};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8463_example_signatures_verify() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim-rfc8463");
    let mut zones = Zones::new();
    for line in std::fs::read_to_string(dir.join("dns-txt.tsv"))
        .unwrap()
        .lines()
    {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, value) = line.split_once('\t').unwrap();
        zones.txt(name, value);
    }
    let server = TestDns::start(zones);
    let mut cfg = DnsConfig::default();
    cfg.nameservers = vec![server.addr.to_string()];
    cfg.timeout = Duration::millis(500);
    let dns = Dns::new(&cfg).unwrap();
    let raw = std::fs::read(dir.join("signed.eml")).unwrap();
    let msg = AuthenticatedMessage::parse(&raw).unwrap();
    let out = sender::dkim(&dns, &msg).await;
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!(o.result(), &DkimResult::Pass, "{o:?}");
    }
    let algs: Vec<String> = out
        .iter()
        .map(|o| o.signature().unwrap().a.name().to_string())
        .collect();
    assert!(
        algs.contains(&"ed25519-sha256".to_string()) && algs.contains(&"rsa-sha256".to_string()),
        "{algs:?}"
    );
}
