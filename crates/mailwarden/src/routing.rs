//! Recipient routing and relay control at RCPT (RFC 5321 §3.6, §4.1.1.3, §4.5.1).
//!
//! Security: mailwarden is never an open relay. Only an authenticated session may name a
//! non-local domain. The decision uses only the parsed domain of the final mailbox, so `%`,
//! `!`, quoted `@` and source routes cannot smuggle a remote destination through a local
//! domain: such local parts simply match no account. Address literals are never local and are
//! refused even to authenticated users (they bypass MX routing and DNS-based policy).

use crate::accounts::Accounts;
use crate::config::Config;
use crate::decision::{Finding, Kind};
use mailwarden_proto::address::{Domain, ForwardPath};
use mailwarden_proto::replies;
use std::collections::HashSet;

#[derive(Debug, PartialEq)]
pub enum RcptDecision {
    /// Deliver into this account's mailbox (canonical `local@domain`).
    Local { mailbox: String },
    /// Relay to another domain (authenticated sessions only).
    Remote,
    /// Refused, with the finding that says why (it carries the reply).
    Refuse(Finding),
}

#[derive(Clone)]
pub struct Routing {
    domains: HashSet<String>,
    postmaster: String,
    /// `reports.address`: its mail is parsed as reports, not delivered to a mailbox.
    reports: String,
    accounts: Accounts,
}

impl Routing {
    pub fn new(config: &Config, accounts: Accounts) -> Routing {
        Routing {
            domains: config.domains.iter().map(|d| d.to_lowercase()).collect(),
            postmaster: config.postmaster_address(),
            reports: config.reports_address(),
            accounts,
        }
    }

    /// A configured domain, or the domain of any account (checked live, so accounts added
    /// by the CLI count at once).
    pub fn is_local_domain(&self, domain: &str) -> Result<bool, crate::store::StoreError> {
        if self.domains.contains(domain) {
            return Ok(true);
        }
        self.accounts.has_domain(domain)
    }

    pub fn decide(&self, to: &ForwardPath, authenticated: bool) -> RcptDecision {
        let m = match to {
            ForwardPath::Postmaster => {
                return RcptDecision::Local {
                    mailbox: self.postmaster.clone(),
                };
            }
            ForwardPath::Mailbox(m) => m,
        };
        let domain = match &m.domain {
            Domain::Literal(_) if authenticated => {
                return RcptDecision::Refuse(Finding::refusing(
                    Kind::RcptAddressLiteral,
                    "recipient is an address literal",
                    replies::LITERAL_REFUSED,
                ));
            }
            Domain::Literal(_) => {
                return RcptDecision::Refuse(Finding::refusing(
                    Kind::RelayAddressLiteral,
                    "relay to an address literal",
                    replies::RELAY_DENIED,
                ));
            }
            Domain::Name(d) => d,
        };
        let temp = |_| {
            RcptDecision::Refuse(Finding::refusing(
                Kind::RoutingUnavailable,
                "store unavailable",
                replies::LOCAL_ERROR,
            ))
        };
        match self.is_local_domain(domain) {
            Err(e) => temp(e),
            Ok(true) => {
                if m.local.eq_ignore_ascii_case("postmaster") {
                    return RcptDecision::Local {
                        mailbox: self.postmaster.clone(),
                    };
                }
                let key = m.key();
                if key == self.reports {
                    return RcptDecision::Local { mailbox: key };
                }
                match self.accounts.exists(&key) {
                    Err(e) => temp(e),
                    Ok(true) => RcptDecision::Local { mailbox: key },
                    Ok(false) => RcptDecision::Refuse(Finding::refusing(
                        Kind::NoSuchUser,
                        "no such local user",
                        replies::NO_SUCH_USER,
                    )),
                }
            }
            Ok(false) if authenticated => RcptDecision::Remote,
            Ok(false) => RcptDecision::Refuse(Finding::refusing(
                Kind::RelayDenied,
                "relay attempt without authentication",
                replies::RELAY_DENIED,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use mailwarden_proto::address::parse_forward_path;

    fn routing() -> (tempfile::TempDir, Routing) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let accounts = Accounts::new(store);
        accounts.add("alice@example.test", b"pw").unwrap();
        accounts.add("carol@other.test", b"pw").unwrap();
        let mut c = Config::default();
        c.domains = vec!["example.test".into()];
        (dir, Routing::new(&c, accounts))
    }

    fn decide(r: &Routing, to: &str, auth: bool) -> RcptDecision {
        r.decide(&parse_forward_path(to, true).unwrap(), auth)
    }

    #[test]
    fn local_users_and_domains() {
        let (_d, r) = routing();
        assert_eq!(
            decide(&r, "<Alice@EXAMPLE.test>", false),
            RcptDecision::Local {
                mailbox: "alice@example.test".into()
            }
        );
        assert_eq!(
            decide(&r, "<carol@other.test>", false),
            RcptDecision::Local {
                mailbox: "carol@other.test".into()
            }
        );
        assert!(matches!(
            decide(&r, "<bob@example.test>", false),
            RcptDecision::Refuse(f) if f.refusal == Some(replies::NO_SUCH_USER)
        ));
        assert_eq!(
            decide(&r, "<postmaster@other.test>", false),
            RcptDecision::Local {
                mailbox: "postmaster@example.test".into()
            }
        );
    }

    #[test]
    fn relay_needs_auth_and_tricks_never_route() {
        let (_d, r) = routing();
        let denied = |d: RcptDecision| matches!(d, RcptDecision::Refuse(_));
        assert!(denied(decide(&r, "<bob@remote.test>", false)));
        assert_eq!(decide(&r, "<bob@remote.test>", true), RcptDecision::Remote);
        for trick in [
            "<bob%remote.test@example.test>",
            "<remote.test!bob@example.test>",
            "<\"bob@remote.test\"@example.test>",
            "<@example.test:bob@remote.test>",
            "<bob@[127.0.0.1]>",
            "<alice@[IPv6:::1]>",
        ] {
            assert!(denied(decide(&r, trick, false)), "{trick} was not refused");
        }
        assert!(denied(decide(&r, "<bob@[127.0.0.1]>", true)));
    }
}
