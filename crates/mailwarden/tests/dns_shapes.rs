//! The shape of a DNS answer decides what a check concludes (RFC 2308, RFC 7208 §2.6): a
//! negative answer, NXDOMAIN or NODATA, means "none" whether or not it carries an SOA; only
//! a timeout, SERVFAIL or REFUSED is a temporary error. Each shape is served by the loopback
//! test DNS server and read by the real consumers: SPF, the DMARC record lookup, outbound
//! routing and the HELO check.

use mail_auth::dmarc::Dmarc;
use mailwarden::checks::spf;
use mailwarden::config;
use mailwarden::delivery::remote::route::{self, RouteError};
use mailwarden::dns::Dns;
use std::net::IpAddr;

const ZONES: &str = "
2.2.0.192.in-addr.arpa NOSOA
3.2.0.192.in-addr.arpa TXT not a name
4.2.0.192.in-addr.arpa TXT not a name
4.2.0.192.in-addr.arpa NOSOA
5.2.0.192.in-addr.arpa SERVFAIL
6.2.0.192.in-addr.arpa REFUSED
7.2.0.192.in-addr.arpa TIMEOUT
nx-bare.test      NOSOA
nodata.test       A 192.0.2.1
nodata-bare.test  A 192.0.2.1
nodata-bare.test  NOSOA
servfail.test     SERVFAIL
refused.test      REFUSED
slow.test         TIMEOUT
";

/// (domain, the address whose PTR has the same shape, negative?) for every shape: NXDOMAIN
/// with and without an SOA, NODATA with and without, SERVFAIL, REFUSED, no answer.
const SHAPES: [(&str, &str, bool); 7] = [
    ("nx.test", "192.0.2.1", true),
    ("nx-bare.test", "192.0.2.2", true),
    ("nodata.test", "192.0.2.3", true),
    ("nodata-bare.test", "192.0.2.4", true),
    ("servfail.test", "192.0.2.5", false),
    ("refused.test", "192.0.2.6", false),
    ("slow.test", "192.0.2.7", false),
];

fn dns(server: &mailwarden_testdns::TestDns) -> Dns {
    let cfg = config::Dns {
        nameservers: vec![server.addr.to_string()],
        timeout: config::Duration::millis(400),
        attempts: 1,
        trust_anchors: None,
    };
    Dns::new(&cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_are_none_and_only_failures_are_temporary() {
    let server = mailwarden_testdns::TestDns::with_text(ZONES);
    let dns = dns(&server);
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    for (domain, client, negative) in SHAPES {
        // SPF: no record is "none"; a lookup that failed is "temperror".
        let e = spf::check(
            dns.auth.resolver(),
            ip,
            "helo.test",
            "mx.test",
            &format!("a@{domain}"),
        )
        .await;
        let want = if negative {
            mail_auth::SpfResult::None
        } else {
            mail_auth::SpfResult::TempError
        };
        assert_eq!(e.result, want, "SPF for {domain}");

        // The DMARC record lookup: not found, or a resolver failure.
        let got = dns
            .auth
            .txt_lookup::<Dmarc>(format!("{domain}."), Some(&dns.caches.txt))
            .await;
        match got {
            Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => {
                assert!(negative, "{domain}: a failure read as no record")
            }
            Err(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(_))) => {
                assert!(!negative, "{domain}: no record read as a failure")
            }
            other => panic!("{domain}: {other:?}"),
        }

        // Outbound routing: no such domain fails for good, NODATA falls back to the
        // domain's own address, a failure is retried later.
        let r = route::resolve(dns.auth.resolver(), domain, "mx.test").await;
        match (domain, r) {
            ("nx.test" | "nx-bare.test", Err(RouteError::Permanent { status, .. })) => {
                assert_eq!(status, "5.1.2", "{domain}")
            }
            ("nodata.test" | "nodata-bare.test", Ok(hosts)) => {
                assert_eq!(hosts[0].addrs, vec!["192.0.2.1".parse::<IpAddr>().unwrap()])
            }
            (_, Err(RouteError::Temporary(_))) if !negative => {}
            (d, r) => panic!("routing {d}: {r:?}"),
        }

        // HELO: a name that does not resolve is evidence; a failed lookup is not.
        let found = mailwarden::screening::helo::resolves(&dns, domain).await;
        let unresolvable = domain.starts_with("nx");
        assert_eq!(found.is_some(), unresolvable, "HELO {domain}: {found:?}");

        // iprev: no PTR is a permanent result, a failed lookup a temporary one.
        let out = mailwarden::checks::sender::iprev(&dns, client.parse().unwrap()).await;
        let temp = matches!(out.result, mail_auth::IprevResult::TempError(_));
        assert_eq!(temp, !negative, "iprev {client}: {:?}", out.result);
    }
}
