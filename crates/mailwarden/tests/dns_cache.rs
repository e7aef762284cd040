//! DNS answers are cached within their TTL, negative ones (NXDOMAIN, NODATA with the SOA of
//! RFC 2308) included: a second message from the same sender asks the DNS server nothing.

use mailwarden::checks::sender;
use mailwarden::config::{Dns as DnsConfig, Duration};
use mailwarden::dns::Dns;
use mailwarden_testdns::TestDns;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_checks_are_answered_from_the_cache() {
    let server = TestDns::with_text(
        "cached.test TXT v=spf1 a:host.cached.test -all\n\
         host.cached.test A 127.0.0.2\n\
         other.cached.test MX 10 host.cached.test\n",
    );
    let mut cfg = DnsConfig::default();
    cfg.nameservers = vec![server.addr.to_string()];
    cfg.timeout = Duration::millis(500);
    let dns = Dns::new(&cfg).unwrap();
    let ip = "127.0.0.2".parse().unwrap();

    let first = sender::spf(&dns, ip, "helo.test", "mx.test", "a@cached.test").await;
    assert_eq!(first.result(), mail_auth::SpfResult::Pass);
    let nx = sender::spf(&dns, ip, "helo.test", "mx.test", "a@missing.test").await;
    assert_eq!(nx.result(), mail_auth::SpfResult::None);
    // NODATA: the name exists, without TXT.
    let nodata = sender::spf(&dns, ip, "helo.test", "mx.test", "a@other.cached.test").await;
    assert_eq!(nodata.result(), mail_auth::SpfResult::None);
    let asked = server.queries();
    // TXT cached.test, A host.cached.test, TXT missing.test, TXT other.cached.test.
    assert_eq!(asked, 4, "the first round went to the server");

    for _ in 0..3 {
        let again = sender::spf(&dns, ip, "helo.test", "mx.test", "a@cached.test").await;
        assert_eq!(again.result(), mail_auth::SpfResult::Pass);
        let nx = sender::spf(&dns, ip, "helo.test", "mx.test", "a@missing.test").await;
        assert_eq!(nx.result(), mail_auth::SpfResult::None);
        let nodata = sender::spf(&dns, ip, "helo.test", "mx.test", "a@other.cached.test").await;
        assert_eq!(nodata.result(), mail_auth::SpfResult::None);
    }
    assert_eq!(server.queries(), asked, "later rounds came from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_lists_are_asked_once_and_a_silent_list_does_not_count() {
    use mailwarden::config::screening::{Dnsbl, ListZone};
    use mailwarden::decision::Kind;
    use mailwarden::screening::dnsbl;
    use std::sync::Arc;
    let server = TestDns::with_text(
        "2.0.0.127.bl.test A 127.0.0.2\n\
         2.0.0.127.slow.test TIMEOUT\n\
         3.0.0.127.slow.test TIMEOUT\n",
    );
    let mut cfg = DnsConfig::default();
    cfg.nameservers = vec![server.addr.to_string()];
    cfg.timeout = Duration::millis(300);
    cfg.attempts = 1;
    let dns = Arc::new(Dns::new(&cfg).unwrap());
    let zone = |z: &str| ListZone {
        zone: z.into(),
        ..ListZone::default()
    };
    let lists = Dnsbl {
        zones: vec![zone("bl.test"), zone("slow.test")],
        ..Dnsbl::default()
    };
    let t = cfg.timeout.get();
    let listed = dnsbl::ip_lists(dns.clone(), &lists, "127.0.0.2".parse().unwrap(), t).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].kind, Kind::DnsblListed);
    assert_eq!(listed[0].source, "bl.test");
    let clean = dnsbl::ip_lists(dns.clone(), &lists, "127.0.0.4".parse().unwrap(), t).await;
    assert!(clean.is_empty(), "{clean:?}");
    let lists_only = Dnsbl {
        zones: vec![zone("bl.test")],
        ..Dnsbl::default()
    };
    let asked = server.queries();
    for _ in 0..3 {
        let again =
            dnsbl::ip_lists(dns.clone(), &lists_only, "127.0.0.2".parse().unwrap(), t).await;
        assert_eq!(again.len(), 1);
        let clean =
            dnsbl::ip_lists(dns.clone(), &lists_only, "127.0.0.4".parse().unwrap(), t).await;
        assert!(clean.is_empty());
    }
    assert_eq!(
        server.queries(),
        asked,
        "answers, positive and negative, came from the cache"
    );
}
