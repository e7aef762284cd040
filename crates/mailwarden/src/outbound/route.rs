//! Where mail for a domain goes (RFC 5321 §5.1, RFC 7505): MX hosts in preference order,
//! else the domain itself as an implicit MX; a null MX means the domain accepts no mail.

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use std::net::IpAddr;

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
    let mx = looked(resolver.mx_lookup(name.clone()).await)
        .map_err(|e| RouteError::Temporary(format!("MX lookup for {domain} failed: {e}")))?;
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
