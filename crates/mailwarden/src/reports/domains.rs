//! "Who sends as my domain?" (`mailwarden report domains`): the aggregate reports others sent
//! us, summed per From domain and source address, with the source's PTR name, its volume,
//! and how often SPF, DKIM and DMARC passed for it.
//!
//! A source is ours when it is an address of `hostname` or inside `reports.known_senders`.
//! A source that is not ours and fails DMARC for most of its mail is flagged as a likely
//! forgery: that is the botnet or the phisher using the domain.

use crate::config::Config;
use crate::dns::Dns;
use crate::store::{Store, StoreError};
use crate::util::Network;
use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Source {
    pub domain: String,
    pub source_ip: String,
    /// The /24 or /64 it is in.
    pub network: String,
    pub ptr: Option<String>,
    pub messages: i64,
    pub spf_pass: f64,
    pub dkim_pass: f64,
    pub dmarc_pass: f64,
    /// Ours, or one of `reports.known_senders`.
    pub known: bool,
    /// Not ours, and failing DMARC for most of its mail.
    pub likely_forgery: bool,
    /// Reports that named it.
    pub reports: i64,
}

fn network(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v)) => {
            let o = v.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(IpAddr::V6(v)) => {
            let s = v.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => String::new(),
    }
}

/// The sums of every row received since `since` (for `domain` only, when given), largest
/// volume first within each domain. Addresses are named and judged with `dns` when given.
pub async fn sources(
    store: &Store,
    cfg: &Config,
    dns: Option<&Dns>,
    since: i64,
    domain: Option<&str>,
) -> Result<Vec<Source>, StoreError> {
    let domain = domain.map(str::to_ascii_lowercase);
    let d = domain.clone().unwrap_or_default();
    let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = store.read(|c| {
        c.query_map(
            "SELECT r.domain, r.source_ip, CAST(SUM(r.count) AS BIGINT), \
             CAST(SUM(CASE WHEN r.spf_pass = 1 THEN r.count ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN r.dkim_pass = 1 THEN r.count ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN r.dmarc_pass = 1 THEN r.count ELSE 0 END) AS BIGINT), \
             COUNT(DISTINCT r.report) \
             FROM report_rows r JOIN reports_in i ON i.id = r.report \
             WHERE i.received >= ?1 AND (?2 = '' OR r.domain = ?2) \
             GROUP BY r.domain, r.source_ip \
             ORDER BY r.domain, 3 DESC, r.source_ip LIMIT 10000",
            crate::params![since, d],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
    })?;
    let mut ours: Vec<Network> = cfg
        .reports
        .known_senders
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    if let Some(dns) = dns {
        let host = format!("{}.", cfg.hostname.trim_end_matches('.'));
        if let Ok(v4) = dns.auth.ipv4_lookup(&host, Some(&dns.caches.ipv4)).await {
            ours.extend(
                v4.rrset
                    .iter()
                    .filter_map(|a| a.to_string().parse::<Network>().ok()),
            );
        }
        if let Ok(v6) = dns.auth.ipv6_lookup(&host, Some(&dns.caches.ipv6)).await {
            ours.extend(
                v6.rrset
                    .iter()
                    .filter_map(|a| a.to_string().parse::<Network>().ok()),
            );
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for (domain, ip, n, spf, dkim, dmarc, reports) in rows {
        let addr = ip.parse::<IpAddr>().ok();
        let known = addr.is_some_and(|a| ours.iter().any(|net| net.contains(a)));
        let ptr = match (dns, addr) {
            (Some(dns), Some(a)) => {
                dns.prime_loopback_ptr(a).await;
                dns.auth
                    .ptr_lookup(a, Some(&dns.caches.ptr))
                    .await
                    .ok()
                    .and_then(|p| p.rrset.first().map(|s| s.trim_end_matches('.').to_string()))
            }
            _ => None,
        };
        let rate = |x: i64| if n > 0 { x as f64 / n as f64 } else { 0.0 };
        out.push(Source {
            network: network(&ip),
            likely_forgery: !known && rate(dmarc) < 0.5,
            domain,
            source_ip: ip,
            ptr,
            messages: n,
            spf_pass: rate(spf),
            dkim_pass: rate(dkim),
            dmarc_pass: rate(dmarc),
            known,
            reports,
        });
    }
    Ok(out)
}
