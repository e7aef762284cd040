//! POP-before-SMTP (`[pop_before_smtp]`): a POP3 login lets its IP submit without AUTH, as
//! that account, for a while. The legacy scheme of seed 004, kept in the one form that is
//! defensible (docs/security.md):
//!
//! - recorded only for logins over TLS from `networks`, and only while `mode = "enforce"`;
//! - an IP from which more than one account logged in within `window` gets nothing, so two
//!   users behind one NAT can never send as each other;
//! - asked again at every MAIL, so the window, a suspension and a password change (the
//!   account's password stamp at login must still be its stamp) end it at once;
//! - on the submission ports only; the MX port never asks.
//!
//! What it grants is an identity, nothing more: sender ownership, limits and containment
//! apply as they do after AUTH. Grants live in this node's memory.

use crate::clock::Clock;
use crate::config::{Config, GrantMode};
use crate::util::Network;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Addresses remembered at most; past it, expired ones are dropped, then new ones wait.
const MAX_ADDRESSES: usize = 65_536;

struct Login {
    account: String,
    /// `Accounts::password_stamp` at login.
    stamp: String,
    at_ms: i64,
}

pub struct Grants {
    on: bool,
    window_ms: i64,
    networks: Vec<Network>,
    clock: Arc<dyn Clock>,
    logins: Mutex<HashMap<IpAddr, Vec<Login>>>,
}

/// Why no grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoGrant {
    Off,
    Network,
    NoLogin,
    /// More than one account logged in from this IP within the window.
    SharedAddress,
}

impl NoGrant {
    pub fn as_str(self) -> &'static str {
        match self {
            NoGrant::Off => "off",
            NoGrant::Network => "network_not_listed",
            NoGrant::NoLogin => "no_recent_pop3_login",
            NoGrant::SharedAddress => "several_accounts_from_this_address",
        }
    }
}

impl Grants {
    pub fn new(cfg: &Config, clock: Arc<dyn Clock>) -> Grants {
        let networks: Vec<Network> = cfg
            .pop_before_smtp
            .networks
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        Grants {
            on: cfg.pop_before_smtp.mode == GrantMode::Enforce && !networks.is_empty(),
            window_ms: cfg.pop_before_smtp.window.get().as_millis() as i64,
            networks,
            clock,
            logins: Mutex::new(HashMap::new()),
        }
    }

    /// Whether MAIL without AUTH should ask at all.
    pub fn on(&self) -> bool {
        self.on
    }

    fn listed(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// A POP3 login over TLS. Returns whether it was recorded.
    pub fn login(&self, ip: IpAddr, account: &str, stamp: String) -> bool {
        if !self.on || !self.listed(ip) {
            return false;
        }
        let now = self.clock.now_ms();
        let fresh = |l: &Login| now - l.at_ms < self.window_ms;
        let mut m = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_ADDRESSES && !m.contains_key(&ip) {
            m.retain(|_, ls| ls.iter().any(fresh));
            if m.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let ls = m.entry(ip).or_default();
        ls.retain(|l| fresh(l) && l.account != account);
        ls.push(Login {
            account: account.to_string(),
            stamp,
            at_ms: now,
        });
        true
    }

    /// The account this IP may send as now, with its password stamp at login.
    pub fn lookup(&self, ip: IpAddr) -> Result<(String, String), NoGrant> {
        if !self.on {
            return Err(NoGrant::Off);
        }
        if !self.listed(ip) {
            return Err(NoGrant::Network);
        }
        let now = self.clock.now_ms();
        let mut m = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ls) = m.get_mut(&ip) else {
            return Err(NoGrant::NoLogin);
        };
        ls.retain(|l| now - l.at_ms < self.window_ms);
        match ls.as_slice() {
            [] => {
                m.remove(&ip);
                Err(NoGrant::NoLogin)
            }
            [one] => Ok((one.account.clone(), one.stamp.clone())),
            _ => Err(NoGrant::SharedAddress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn grants(mode: &str, networks: &[&str]) -> (Grants, ManualClock) {
        let mut cfg = Config::default();
        cfg.pop_before_smtp.mode = if mode == "enforce" {
            GrantMode::Enforce
        } else {
            GrantMode::Off
        };
        cfg.pop_before_smtp.networks = networks.iter().map(|s| s.to_string()).collect();
        let clock = ManualClock::at(1_000_000);
        (Grants::new(&cfg, Arc::new(clock.clone())), clock)
    }

    #[test]
    fn a_login_grants_its_ip_for_the_window_only() {
        let (g, clock) = grants("enforce", &["192.0.2.0/24"]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(g.lookup(ip), Err(NoGrant::NoLogin));
        assert!(g.login(ip, "alice@example.test", "s1".into()));
        assert_eq!(g.lookup(ip), Ok(("alice@example.test".into(), "s1".into())));
        clock.advance(599_000);
        assert!(g.lookup(ip).is_ok());
        clock.advance(1_000);
        assert_eq!(g.lookup(ip), Err(NoGrant::NoLogin));
    }

    #[test]
    fn two_accounts_from_one_address_get_nothing() {
        let (g, clock) = grants("enforce", &["192.0.2.0/24"]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        g.login(ip, "alice@example.test", "s1".into());
        g.login(ip, "alice@example.test", "s1".into());
        assert!(
            g.lookup(ip).is_ok(),
            "the same account twice is one account"
        );
        clock.advance(1_000);
        g.login(ip, "bob@example.test", "s2".into());
        assert_eq!(g.lookup(ip), Err(NoGrant::SharedAddress));
        // Once alice's login is older than the window, bob's alone remains.
        clock.advance(599_500);
        assert_eq!(g.lookup(ip), Ok(("bob@example.test".into(), "s2".into())));
    }

    #[test]
    fn outside_the_networks_or_off_nothing_is_recorded() {
        let (g, _) = grants("enforce", &["192.0.2.0/24"]);
        let out: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!g.login(out, "alice@example.test", "s".into()));
        assert_eq!(g.lookup(out), Err(NoGrant::Network));
        let (g, _) = grants("off", &["192.0.2.0/24"]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!g.login(ip, "alice@example.test", "s".into()));
        assert_eq!(g.lookup(ip), Err(NoGrant::Off));
        // Enforced with no networks listed: off.
        let (g, _) = grants("enforce", &[]);
        assert!(!g.on());
    }
}
