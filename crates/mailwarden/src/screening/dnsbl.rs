//! DNS block and allow lists (RFC 5782): IP lists asked at connect for the client's
//! reversed address, domain lists (RHSBL) for the HELO name and the sender domain. All lists
//! are asked at once, answers go through the resolver's caches, and the whole round never
//! waits longer than one DNS timeout: a list that has not answered by then does not count.
//!
//! The one policy that does not fail closed on a DNS error, by design: a list's answer is
//! evidence against a client, and a list that cannot be asked gives none. Failing closed
//! would let one dead or blocked list (they are run by third parties) stop all mail; every
//! check that can let mail through (SPF, DKIM, DMARC, greylisting, suspension) does fail
//! closed.

use crate::config::screening::{Dnsbl as Cfg, ListZone};
use crate::decision::{Finding, Kind};
use crate::dns::Dns;
use mailwarden_proto::replies;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// The name to ask for `ip` in `zone` (RFC 5782 §2.1 for IPv4, §2.4 nibbles for IPv6).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len());
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + zone
        }
    }
}

/// Ask `name` in `list`; a signal if the list answers with a code it counts.
async fn ask(
    dns: &Dns,
    list: &ListZone,
    name: String,
    what: &str,
    domain_list: bool,
) -> Option<Finding> {
    let t = std::time::Instant::now();
    let answer = dns
        .auth
        .ipv4_lookup(name.as_str(), Some(&dns.caches.ipv4))
        .await;
    let class = match &answer {
        Ok(_) => "ok",
        Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => "nxdomain",
        Err(_) => "error",
    };
    crate::metrics::dns_lookup("A", class, t);
    let answer = answer.ok()?;
    let hits: Vec<Ipv4Addr> = answer
        .rrset
        .iter()
        .copied()
        .filter(|a| {
            if list.codes.is_empty() {
                a.octets()[0] == 127
            } else {
                list.codes
                    .iter()
                    .any(|c| c.parse::<Ipv4Addr>().ok() == Some(*a))
            }
        })
        .collect();
    if hits.is_empty() {
        return None;
    }
    let codes: Vec<String> = hits.iter().map(Ipv4Addr::to_string).collect();
    let reason = if domain_list {
        Kind::RhsblListed
    } else if list.weight < 0.0 {
        Kind::DnswlListed
    } else {
        Kind::DnsblListed
    };
    Some(
        Finding::scored(
            reason,
            format!("{what} listed by {} ({})", list.zone, codes.join(", ")),
            list.weight,
        )
        .from_source(list.zone.clone()),
    )
}

async fn ask_all(
    dns: Arc<Dns>,
    asks: Vec<(ListZone, String, String, bool)>,
    timeout: Duration,
) -> Vec<Finding> {
    let mut set = tokio::task::JoinSet::new();
    for (list, name, what, domain_list) in asks {
        let dns = dns.clone();
        set.spawn(async move { ask(&dns, &list, name, &what, domain_list).await });
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Some(r) = set.join_next().await {
            if let Ok(Some(s)) = r {
                out.push(s);
            }
        }
    })
    .await;
    set.abort_all();
    // Answers arrive in any order; the record should not depend on it.
    out.sort_by(|a, b| a.source.cmp(&b.source));
    out
}

/// The client IP in every IP list.
pub async fn ip_lists(dns: Arc<Dns>, cfg: &Cfg, ip: IpAddr, timeout: Duration) -> Vec<Finding> {
    let asks = cfg
        .zones
        .iter()
        .map(|z| {
            (
                z.clone(),
                query_name(ip, &z.zone),
                format!("client {ip}"),
                false,
            )
        })
        .collect();
    ask_all(dns, asks, timeout).await
}

/// Domains (`(what, domain)`: the HELO name, the sender domain) in every domain list.
pub async fn domain_lists(
    dns: Arc<Dns>,
    cfg: &Cfg,
    domains: &[(&str, &str)],
    timeout: Duration,
) -> Vec<Finding> {
    let mut asks = Vec::new();
    for (what, d) in domains {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() || d.starts_with('[') {
            continue;
        }
        for z in &cfg.domain_zones {
            asks.push((
                z.clone(),
                format!("{d}.{}", z.zone),
                format!("{what} {d}"),
                true,
            ));
        }
    }
    ask_all(dns, asks, timeout).await
}

/// The lists' weights summed: at the threshold or above, a refusal naming the lists.
pub fn verdict(cfg: &Cfg, signals: &[Finding], ip: IpAddr) -> Option<Finding> {
    let listed: Vec<&Finding> = signals
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                Kind::DnsblListed | Kind::DnswlListed | Kind::RhsblListed
            )
        })
        .collect();
    let score: f64 = listed.iter().map(|s| s.score).sum();
    if listed.is_empty() || score < cfg.threshold {
        return None;
    }
    let mut names: Vec<&str> = listed
        .iter()
        .filter(|s| s.score > 0.0)
        .map(|s| s.source.as_str())
        .collect();
    names.dedup();
    Some(
        Finding::scored(
            Kind::DnsblScore,
            format!("DNS list score {score} >= {}", cfg.threshold),
            0.0,
        )
        .refuse(replies::dnsbl_rejected(&ip.to_string(), &names)),
    )
}

/// Does an allow list vouch for the client (a negative weight answered)?
pub fn allowed(signals: &[Finding]) -> bool {
    signals.iter().any(|s| s.kind == Kind::DnswlListed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "bl.test"),
            "99.2.0.192.bl.test"
        );
        assert!(
            query_name("2001:db8::1".parse().unwrap(), "bl.test").starts_with(
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
            )
        );
    }

    fn listed(zone: &str, w: f64, reason: Kind) -> Finding {
        Finding::scored(reason, "x", w).from_source(zone)
    }

    #[test]
    fn weights_add_up_and_an_allow_list_exempts() {
        let cfg = Cfg::default();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let half = [listed("a.test", 0.5, Kind::DnsblListed)];
        assert!(verdict(&cfg, &half, ip).is_none());
        let two = [
            listed("a.test", 0.5, Kind::DnsblListed),
            listed("b.test", 0.5, Kind::DnsblListed),
        ];
        let v = verdict(&cfg, &two, ip).unwrap();
        let text = v.refusal.unwrap().text.into_owned();
        assert!(text.contains("listed by a.test, b.test"), "{text}");
        let allowed_too = [
            listed("a.test", 0.5, Kind::DnsblListed),
            listed("b.test", 0.5, Kind::DnsblListed),
            listed("wl.test", -5.0, Kind::DnswlListed),
        ];
        assert!(verdict(&cfg, &allowed_too, ip).is_none());
        assert!(allowed(&allowed_too));
    }
}
