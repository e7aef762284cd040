//! Screening the MX port's clients at the door, postscreen's trade: pregreet, protocol abuse,
//! DNS lists (RFC 5782), reverse DNS (RFC 8601 §3 iprev), HELO names (RFC 5321 §4.1.1.1),
//! and smart greylisting.
//!
//! Each check yields [`Finding`]s (a stable `Kind`, a detail for the log, a score, and the
//! refusal it asks for). What the findings of a session add up to is decided once, at the
//! first RCPT, by [`decide`], through `crate::decision::apply` like every other policy.
//! The stages below gather findings in one order, which the server (`server/screen.rs`, at
//! connect, MAIL and RCPT) and `explain FILE.eml` share. [`memory`] keeps what clients proved
//! (pregreet passed, greylisting passed) in the store.

pub mod dnsbl;
pub mod greylist;
pub mod helo;
pub mod memory;

use crate::config::{Config, Mode};
use crate::decision::{self, Cause, Finding, Kind, Verdict};
use crate::dns::Dns;
use crate::records::Reason;
use mail_auth::IprevOutput;
use std::net::IpAddr;
use std::sync::Arc;

/// At connect: the client's address in the IP lists.
pub async fn at_connect(dns: Arc<Dns>, cfg: &Config, ip: IpAddr) -> Vec<Finding> {
    let lists = &cfg.screening.dnsbl;
    if lists.mode == Mode::Off || lists.zones.is_empty() {
        return Vec::new();
    }
    dnsbl::ip_lists(dns, lists, ip, cfg.dns.timeout.get()).await
}

/// The client, at the first MAIL: its HELO name, then the HELO name and the sender domain in
/// the domain lists. `local` is the address the client connected to.
pub async fn at_mail(
    dns: Arc<Dns>,
    cfg: &Config,
    ip: IpAddr,
    local: IpAddr,
    helo_name: &str,
    sender_domain: &str,
) -> Vec<Finding> {
    let sc = &cfg.screening;
    let mut found = Vec::new();
    if sc.helo.mode != Mode::Off {
        found = helo::static_checks(helo_name, ip, &cfg.hostname, local);
        if found.is_empty()
            && let Some(s) = helo::resolves(&dns, helo_name).await
        {
            found.push(s);
        }
    }
    if sc.dnsbl.mode != Mode::Off && !sc.dnsbl.domain_zones.is_empty() {
        let domains = [("HELO", helo_name), ("sender", sender_domain)];
        found.extend(dnsbl::domain_lists(dns, &sc.dnsbl, &domains, cfg.dns.timeout.get()).await);
    }
    found
}

/// At the first RCPT: the client's reverse DNS.
pub fn at_rcpt(cfg: &Config, iprev: Option<&IprevOutput>, ip: IpAddr) -> Option<Finding> {
    if cfg.screening.rdns.mode == Mode::Off {
        return None;
    }
    helo::rdns(iprev?, ip)
}

/// The session's verdict: the DNS lists' total joins the findings (as `dnsbl_score`) when it
/// reaches its threshold, then every finding's refusal is weighed under its check's mode.
pub fn decide(cfg: &Config, findings: &mut Vec<Finding>, ip: IpAddr) -> Verdict {
    findings.retain(|f| f.kind != Kind::DnsblScore);
    if let Some(total) = dnsbl::verdict(&cfg.screening.dnsbl, findings, ip) {
        findings.push(total);
    }
    decision::apply(cfg, findings, None)
}

/// Screening's findings as a decision record keeps them (what decided, what observe mode
/// kept from acting), and the score a refusal by the DNS lists' weight was taken on. The
/// server's records and `explain` both come from here.
pub fn reasons(findings: &[Finding], v: &Verdict) -> (Vec<Reason>, Option<f64>) {
    let listed = |k: Kind| matches!(k, Kind::DnsblListed | Kind::DnswlListed | Kind::RhsblListed);
    let by_lists = v
        .deciding_finding(findings)
        .is_some_and(|f| f.kind == Kind::DnsblScore);
    let mut out: Vec<Reason> = findings
        .iter()
        .enumerate()
        .map(|(i, f)| Reason {
            counted: by_lists && listed(f.kind),
            ..f.record(v.deciding == Some(Cause::Finding(i)))
        })
        .collect();
    out.extend(v.would_records(findings, None));
    let score = by_lists.then(|| {
        findings
            .iter()
            .filter(|f| listed(f.kind))
            .map(|f| f.score)
            .sum()
    });
    (out, score)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn the_dns_lists_total_refuses_once_and_only_at_its_threshold() {
        let mut cfg = Config::default();
        cfg.screening.dnsbl.mode = Mode::Enforce;
        cfg.screening.dnsbl.threshold = 1.0;
        let listed = |zone: &str, w: f64| {
            Finding::scored(Kind::DnsblListed, "listed", w).from_source(zone.to_string())
        };
        let mut f = vec![listed("a.test", 0.5)];
        assert_eq!(decide(&cfg, &mut f, IP).action.name(), "accept");
        f.push(listed("b.test", 0.5));
        let v = decide(&cfg, &mut f, IP);
        assert_eq!(v.action.name(), "reject");
        assert_eq!(
            v.deciding_finding(&f).map(|f| f.kind),
            Some(Kind::DnsblScore)
        );
        // Decided again (a new sender domain): still one total.
        decide(&cfg, &mut f, IP);
        assert_eq!(f.iter().filter(|f| f.kind == Kind::DnsblScore).count(), 1);
    }
}
