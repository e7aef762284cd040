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
