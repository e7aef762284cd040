//! Where mail for a domain goes (RFC 5321 §5.1, RFC 7505): MX hosts in preference order,
//! else the domain itself as an implicit MX; a null MX means the domain accepts no mail.

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use std::net::IpAddr;

/// Why mail may not go to `ip` on `port`, as (status, reason): one of our own listeners
/// (`ours`: a loop, whatever the names said), or, unless `allow_private`, an address that is
/// not globally routable.
pub fn refused_destination(
    ip: IpAddr,
    port: u16,
    ours: &[std::net::SocketAddr],
    allow_private: bool,
) -> Option<(&'static str, &'static str)> {
    let ip = ip.to_canonical();
    let loops = ours.iter().any(|l| {
        l.port() == port
            && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_this_host(ip)))
    });
    if loops {
        return Some((
            "5.4.6",
            "the address is one of our own listeners: a mail loop",
        ));
    }
    if !allow_private && !is_global(ip) {
        return Some((
            "5.4.4",
            "the address is loopback, private or otherwise not public \
             (delivery.allow_private_destinations)",
        ));
    }
    None
}

/// Is `ip` one of this host's addresses (what a wildcard listener answers on)? Only the
/// host's own addresses can be bound; this asks the kernel rather than listing interfaces.
fn is_this_host(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Is `ip` a public unicast address? (`IpAddr::is_global` is not stable.) An IPv4 address
/// carried in IPv6 (6to4, NAT64) is judged as that IPv4 address.
pub fn is_global(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2002 && !is_global(v4(s[1], s[2])))
                || (s[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] && !is_global(v4(s[6], s[7]))))
        }
    }
}

fn v4(hi: u16, lo: u16) -> IpAddr {
    IpAddr::from(((hi as u32) << 16 | lo as u32).to_be_bytes())
}

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Try again later (DNS temporarily failing, no address yet).
    Temporary(String),
    /// The domain accepts no mail, or does not exist: status code and text for the DSN.
    Permanent { status: &'static str, text: String },
}

enum Looked<T> {
    Found(Vec<T>),
    /// The name exists but has no records of this type.
    NoData,
    NxDomain,
}

fn looked(
    res: Result<mail_auth::hickory_resolver::lookup::Lookup, NetError>,
) -> Result<Looked<RData>, String> {
    match res {
        Ok(l) => Ok(Looked::Found(
            l.answers().iter().map(|r| r.data.clone()).collect(),
        )),
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
            Ok(if nr.response_code == ResponseCode::NXDomain {
                Looked::NxDomain
            } else {
                Looked::NoData
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

fn fqdn(name: &str) -> Option<Name> {
    let n = name.trim_end_matches('.');
    let mut name = Name::from_ascii(n).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn text(n: &Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// The hosts for `domain`, best first. `myself` is our own hostname: an MX pointing back at
/// us would loop (§5.1), so it and everything less preferred is dropped.
pub async fn resolve(
    resolver: &TokioResolver,
    domain: &str,
    myself: &str,
) -> Result<Vec<Host>, RouteError> {
    let Some(name) = fqdn(domain) else {
        return Err(RouteError::Permanent {
            status: "5.1.2",
            text: format!("{domain} is not a valid domain name"),
        });
    };
    let t = std::time::Instant::now();
    let mx = looked(resolver.mx_lookup(name.clone()).await);
    let class = match &mx {
        Ok(Looked::NxDomain) => "nxdomain",
        Ok(_) => "ok",
        Err(_) => "error",
    };
    crate::metrics::dns_lookup("MX", class, t);
    let mx =
        mx.map_err(|e| RouteError::Temporary(format!("MX lookup for {domain} failed: {e}")))?;
    let mut exchanges: Vec<(u16, String)> = match mx {
        Looked::NxDomain => {
            return Err(RouteError::Permanent {
                status: "5.1.2",
                text: format!("domain {domain} does not exist"),
            });
        }
        Looked::NoData => vec![(0, domain.to_ascii_lowercase())],
        Looked::Found(rs) => rs
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some((m.preference, text(&m.exchange))),
                _ => None,
            })
            .collect(),
    };
    if exchanges.is_empty() {
        exchanges.push((0, domain.to_ascii_lowercase()));
    }
    // RFC 7505: a single MX with an empty exchange ("." ) and preference 0.
    if exchanges.iter().any(|(_, h)| h.is_empty()) {
        return Err(RouteError::Permanent {
            status: "5.1.10",
            text: format!("{domain} publishes a null MX: it accepts no mail (RFC 7505)"),
        });
    }
    exchanges.sort_by_key(|(p, _)| *p);
    if let Some(pos) = exchanges
        .iter()
        .position(|(_, h)| h.eq_ignore_ascii_case(myself))
    {
        exchanges.truncate(pos);
        if exchanges.is_empty() {
            return Err(RouteError::Permanent {
                status: "5.4.6",
                text: format!("mail for {domain} loops back to myself ({myself})"),
            });
        }
    }
    let mut hosts = Vec::new();
    let mut temp_err = None;
    for (_, h) in exchanges {
        match addresses(resolver, &h).await {
            Ok(addrs) if !addrs.is_empty() => hosts.push(Host { name: h, addrs }),
            Ok(_) => {}
            Err(e) => temp_err = Some(e),
        }
    }
    if hosts.is_empty() {
        return Err(match temp_err {
            Some(e) => RouteError::Temporary(e),
            None => RouteError::Temporary(format!("no address found for any MX host of {domain}")),
        });
    }
    Ok(hosts)
}

/// A and AAAA of one host; IPv4 first (loopback tests and most of today's MX hosts).
async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let Some(name) = fqdn(host) else {
        return Ok(Vec::new());
    };
    let (a, aaaa) = tokio::join!(
        resolver.ipv4_lookup(name.clone()),
        resolver.ipv6_lookup(name)
    );
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for r in [a, aaaa] {
        match looked(r) {
            Ok(Looked::Found(rs)) => out.extend(rs.into_iter().filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if out.is_empty() && !errors.is_empty() {
        return Err(format!(
            "address lookup for {host} failed: {}",
            errors.join("; ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_and_our_own_listeners_are_refused() {
        let public: IpAddr = "203.0.114.5".parse().unwrap();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.2.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "2002:a00:1::1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let r = refused_destination(ip, 25, &[], false).map(|r| r.0);
            assert_eq!(r, Some("5.4.4"), "{ip}");
            assert_eq!(refused_destination(ip, 25, &[], true), None, "{ip}");
        }
        assert_eq!(refused_destination(public, 25, &[], false), None);
        for ip in ["2002:cb00:7205::1", "64:ff9b::cb00:7205"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refused_destination(ip, 25, &[], false), None, "{ip}");
        }
        let ours = [
            "203.0.114.5:25".parse().unwrap(),
            "0.0.0.0:2525".parse().unwrap(),
        ];
        let r = refused_destination(public, 25, &ours, true).map(|r| r.0);
        assert_eq!(r, Some("5.4.6"));
        assert_eq!(refused_destination(public, 587, &ours, true), None);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let r = refused_destination(lo, 2525, &ours, true).map(|r| r.0);
        assert_eq!(r, Some("5.4.6"));
        // A wildcard listener answers on every address of this host, and only those.
        let elsewhere: IpAddr = "127.0.3.9".parse().unwrap();
        let r = refused_destination(elsewhere, 2525, &ours, true).map(|r| r.0);
        assert_eq!(r, Some("5.4.6"));
        assert_eq!(refused_destination(public, 2525, &ours, true), None);
    }
}
