//! HELO/EHLO names (RFC 5321 §4.1.1.1, §4.1.3) and the client's reverse DNS (iprev, RFC 8601
//! §3) as screening signals. Spam software says `HELO localhost`, names the server itself,
//! or claims an address it does not have; bots on residential lines rarely have a PTR that
//! resolves back.

use crate::decision::{Finding, Kind};
use crate::dns::Dns;
use mail_auth::{DnsError, Error, IprevOutput, IprevResult};
use mailwarden_proto::replies;
use std::net::IpAddr;

fn refuse(reason: Kind, detail: String, score: f64, why: &str) -> Finding {
    Finding::scored(reason, detail, score).refuse(replies::helo_rejected(why))
}

/// Checks that need no DNS. `ours` is our hostname, `local_ip` the address the client
/// connected to.
pub fn static_checks(name: &str, client: IpAddr, ours: &str, local_ip: IpAddr) -> Vec<Finding> {
    if let Some(lit) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let lit = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return match lit.parse::<IpAddr>() {
            Err(_) => vec![refuse(
                Kind::HeloSyntax,
                format!("HELO {name}: not an address literal"),
                1.0,
                "invalid address literal",
            )],
            Ok(ip) if ip == client => vec![],
            Ok(ip) if ip == local_ip => vec![refuse(
                Kind::HeloIsOurs,
                format!("HELO {name} is our own address"),
                2.0,
                "that is our address",
            )],
            Ok(_) => vec![refuse(
                Kind::HeloLiteralMismatch,
                format!("HELO {name} but the client is {client}"),
                1.0,
                "the address literal is not your address",
            )],
        };
    }
    if name.parse::<IpAddr>().is_ok() {
        return vec![refuse(
            Kind::HeloSyntax,
            format!("HELO {name}: an address without brackets"),
            1.0,
            "an address must be written as [address]",
        )];
    }
    if mailwarden_proto::address::domain(name, false).is_err() {
        return vec![refuse(
            Kind::HeloSyntax,
            format!("HELO {name}: not a domain name"),
            1.0,
            "not a valid name",
        )];
    }
    let bare = name.trim_end_matches('.');
    if bare.eq_ignore_ascii_case(ours) {
        return vec![refuse(
            Kind::HeloIsOurs,
            format!("HELO {name} is our own name"),
            2.0,
            "that is our name",
        )];
    }
    let tld = bare.rsplit('.').next().unwrap_or("");
    if !bare.contains('.') || tld.bytes().all(|b| b.is_ascii_digit()) {
        return vec![refuse(
            Kind::HeloNotFqdn,
            format!("HELO {name} is not a fully qualified domain name"),
            0.5,
            "not a fully qualified domain name",
        )];
    }
    vec![]
}

/// Does a HELO name that passed [`static_checks`] resolve to any address? Only a definite
/// "no such name / no address" is a signal; a DNS failure is not evidence.
pub async fn resolves(dns: &Dns, name: &str) -> Option<Finding> {
    let name = name.trim_end_matches('.');
    if name.starts_with('[') {
        return None;
    }
    // Found an address, or could not tell: no signal either way.
    fn settled<T>(r: &Result<mail_auth::RecordSet<T>, Error>) -> bool {
        match r {
            Ok(set) => !set.rrset.is_empty(),
            Err(Error::Dns(DnsError::RecordNotFound(_))) => false,
            Err(_) => true,
        }
    }
    if settled(&dns.auth.ipv4_lookup(name, Some(&dns.caches.ipv4)).await)
        || settled(&dns.auth.ipv6_lookup(name, Some(&dns.caches.ipv6)).await)
    {
        return None;
    }
    Some(
        refuse(
            Kind::HeloUnresolvable,
            format!("HELO {name} has no address in DNS"),
            0.5,
            "the name does not resolve",
        )
        .from_source(name.to_string()),
    )
}

/// The iprev result as a signal: no PTR, a PTR that does not resolve back, or a DNS error.
pub fn rdns(out: &IprevOutput, client: IpAddr) -> Option<Finding> {
    let names: Vec<&str> = out
        .ptr
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|n| n.as_ref())
        .collect();
    match &out.result {
        IprevResult::Pass => None,
        IprevResult::TempError(e) => Some(
            Finding::scored(
                Kind::PtrTempError,
                format!("reverse DNS of {client}: {e}"),
                0.0,
            )
            .refuse(replies::RDNS_TEMP),
        ),
        _ if names.is_empty() => Some(
            Finding::scored(Kind::NoPtr, format!("{client} has no PTR"), 1.0)
                .refuse(replies::RDNS_REJECTED),
        ),
        _ => Some(
            Finding::scored(
                Kind::PtrNotConfirmed,
                format!("PTR {} does not resolve back to {client}", names.join(", ")),
                0.5,
            )
            .refuse(replies::RDNS_REJECTED),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(name: &str) -> Vec<Kind> {
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let local: IpAddr = "192.0.2.1".parse().unwrap();
        static_checks(name, client, "mx.example.test", local)
            .into_iter()
            .map(|s| s.kind)
            .collect()
    }

    #[test]
    fn helo_rules() {
        assert_eq!(reasons("mail.sender.test"), []);
        assert_eq!(reasons("[192.0.2.7]"), []);
        assert_eq!(reasons("[192.0.2.8]"), [Kind::HeloLiteralMismatch]);
        assert_eq!(reasons("[192.0.2.1]"), [Kind::HeloIsOurs]);
        assert_eq!(reasons("[nonsense]"), [Kind::HeloSyntax]);
        assert_eq!(reasons("192.0.2.7"), [Kind::HeloSyntax]);
        assert_eq!(reasons("bad_name!"), [Kind::HeloSyntax]);
        assert_eq!(reasons("localhost"), [Kind::HeloNotFqdn]);
        assert_eq!(reasons("host.123"), [Kind::HeloNotFqdn]);
        assert_eq!(reasons("MX.example.test"), [Kind::HeloIsOurs]);
    }
}
