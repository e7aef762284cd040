//! Local-domain forgery on the MX port, at the end of DATA: mail from outside whose envelope
//! sender or `From:` is in one of our domains. Our users send through the submission ports,
//! where AUTH and ownership prove who they are; on port 25 such a message is the classic
//! "the CEO writes" fraud, which gets through whenever our own domain publishes no DMARC
//! `p=reject`. It passes only when something vouches for it:
//! - a passing DKIM signature whose `d=` is aligned with the claimed domain (the same
//!   domain, or a parent or a subdomain of it at any depth: RFC 7489 relaxed alignment
//!   within our own tree);
//! - a valid ARC chain whose newest seal is from a trusted sealer (`arc.trusted_sealers`,
//!   with `arc.mode = "enforce"`): a mailing list that changed a message we signed;
//! - a client in `mx.trusted_relays`.
//!
//! Fails closed: a DKIM key lookup that failed for now, or a store that cannot say which
//! domains are ours, gives a temporary refusal, never a pass.

use crate::config::Config;
use crate::decision::{Finding, Kind};
use mailwarden_proto::replies;
use std::net::IpAddr;

/// It claims our domain (or may) and what would vouch for it could not be checked.
fn temp_error(detail: String) -> Finding {
    Finding::refusing(Kind::LocalSenderTempError, detail, replies::AUTH_DNS_TEMP)
}

/// The facts from the session and the sender checks.
pub struct Claim<'a> {
    pub ip: IpAddr,
    /// The MAIL FROM address; empty for the null sender.
    pub mail_from: &'a str,
    /// The RFC5322.From domain, if it has one.
    pub from_domain: Option<&'a str>,
    /// `d=` of every passing DKIM signature.
    pub dkim_pass: &'a [String],
    /// A DKIM signature failed for now (its key could not be fetched).
    pub dkim_temp: bool,
    /// A valid ARC chain sealed last by a trusted sealer.
    pub arc_trusted: bool,
}

fn aligned(signer: &str, domain: &str) -> bool {
    let (s, d) = (signer.to_ascii_lowercase(), domain.to_ascii_lowercase());
    s == d || d.ends_with(&format!(".{s}")) || s.ends_with(&format!(".{d}"))
}

/// Does the message claim one of our domains, and is the claim vouched for? `None`: it claims
/// none; otherwise `local_sender.vouched`, or `local_sender.forged` / `.temperror` carrying
/// their refusal. `is_local` says whether a domain is ours (`Err` when the store cannot say).
pub fn check(
    cfg: &Config,
    c: &Claim<'_>,
    is_local: &(dyn Fn(&str) -> Result<bool, String> + Sync),
) -> Option<Finding> {
    let envelope = c
        .mail_from
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
    let header = c
        .from_domain
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    let mut claimed = Vec::new();
    for (what, d) in [("envelope sender", envelope), ("From:", header)] {
        let Some(d) = d.filter(|d| !d.is_empty()) else {
            continue;
        };
        match is_local(&d) {
            Ok(true) => claimed.push((what, d)),
            Ok(false) => {}
            Err(e) => {
                return Some(temp_error(format!("cannot tell whether {d} is ours: {e}")));
            }
        }
    }
    let (what, domain) = claimed.first()?.clone();
    let vouched = |by: String| Some(Finding::new(Kind::LocalSenderVouched, by));
    if let Some(n) = cfg
        .mx
        .trusted_relays
        .iter()
        .filter_map(|n| n.parse::<crate::util::Network>().ok())
        .find(|n| n.contains(c.ip))
    {
        return vouched(format!(
            "{what} {domain} from {} in mx.trusted_relays ({n:?})",
            c.ip
        ));
    }
    // Every claimed domain must be vouched for by a signature.
    if let Some(unsigned) = claimed
        .iter()
        .find(|(_, d)| !c.dkim_pass.iter().any(|s| aligned(s, d)))
    {
        if c.arc_trusted {
            return vouched(format!(
                "{what} {domain}: a trusted ARC sealer vouches for it"
            ));
        }
        let (what, d) = unsigned;
        let detail = format!("{what} {d} is ours, and no passing DKIM signature of it");
        return Some(if c.dkim_temp {
            temp_error(format!("{detail}: a DKIM key could not be fetched for now"))
        } else {
            Finding::refusing(
                Kind::LocalSenderForged,
                detail,
                replies::LOCAL_SENDER_FORGED,
            )
        });
    }
    vouched(format!(
        "{what} {domain}: signed with DKIM by an aligned domain"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(d: &str) -> Result<bool, String> {
        Ok(d == "example.test" || d == "sub.example.test")
    }

    fn claim<'a>(mail_from: &'a str, from: Option<&'a str>, pass: &'a [String]) -> Claim<'a> {
        Claim {
            ip: "192.0.2.9".parse().unwrap(),
            mail_from,
            from_domain: from,
            dkim_pass: pass,
            dkim_temp: false,
            arc_trusted: false,
        }
    }

    fn code(f: Option<Finding>) -> Option<String> {
        f.map(|f| f.kind.code().into_owned())
    }

    #[test]
    fn a_claim_of_our_domain_needs_an_aligned_signature() {
        let cfg = Config::default();
        let none: Vec<String> = vec![];
        assert_eq!(
            check(
                &cfg,
                &claim("a@remote.test", Some("remote.test"), &none),
                &ours
            ),
            None
        );
        assert_eq!(
            code(check(
                &cfg,
                &claim("a@remote.test", Some("example.test"), &none),
                &ours
            )),
            Some("local_sender.forged".to_string())
        );
        assert_eq!(
            code(check(
                &cfg,
                &claim("ceo@example.test", Some("remote.test"), &none),
                &ours
            )),
            Some("local_sender.forged".to_string())
        );
        let signed = vec!["example.test".to_string()];
        assert_eq!(
            code(check(
                &cfg,
                &claim("a@sub.example.test", Some("example.test"), &signed),
                &ours
            )),
            Some("local_sender.vouched".to_string())
        );
        let elsewhere = vec![
            "evil.test".to_string(),
            "example.test.evil.test".to_string(),
        ];
        assert_eq!(
            code(check(
                &cfg,
                &claim("", Some("example.test"), &elsewhere),
                &ours
            )),
            Some("local_sender.forged".to_string())
        );
    }

    #[test]
    fn a_trusted_sealer_or_relay_vouches_and_doubt_fails_closed() {
        let mut cfg = Config::default();
        let none: Vec<String> = vec![];
        let mut c = claim("", Some("example.test"), &none);
        c.arc_trusted = true;
        assert_eq!(
            code(check(&cfg, &c, &ours)),
            Some("local_sender.vouched".to_string())
        );
        c.arc_trusted = false;
        c.dkim_temp = true;
        assert_eq!(
            code(check(&cfg, &c, &ours)),
            Some("local_sender.temperror".to_string())
        );
        cfg.mx.trusted_relays = vec!["192.0.2.0/24".into()];
        assert_eq!(
            code(check(&cfg, &c, &ours)),
            Some("local_sender.vouched".to_string())
        );
        let broken = |_: &str| -> Result<bool, String> { Err("store down".into()) };
        assert_eq!(
            code(check(
                &Config::default(),
                &claim("a@x.test", None, &none),
                &broken
            )),
            Some("local_sender.temperror".to_string())
        );
    }
}
