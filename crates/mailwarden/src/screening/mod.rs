//! Screening the MX port's clients at the door, postscreen's trade: pregreet, protocol abuse,
//! DNS lists (RFC 5782), reverse DNS (RFC 8601 §3 iprev), HELO names (RFC 5321 §4.1.1.1),
//! and smart greylisting.
//!
//! Each check yields [`Signal`]s: a stable [`Reason`], a detail for the log, a score, and
//! the refusal it asks for when its check is in `enforce` mode. [`decide`] turns a session's
//! signals into the one refusal (or none) applied at the first RCPT, and lists the refusals
//! `observe` mode only logs. The decision record of the verdict issue takes these as they are.
//! [`memory`] keeps what clients proved (pregreet passed, greylisting passed) in the store.

pub mod dnsbl;
pub mod greylist;
pub mod helo;
pub mod memory;

use crate::config::Mode;
use crate::config::Screening as Cfg;
use mailwarden_proto::Reply;

/// Which check a signal comes from (each has its own `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Pregreet,
    Protocol,
    Dnsbl,
    Rdns,
    Helo,
    Greylist,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Pregreet => "pregreet",
            Check::Protocol => "protocol",
            Check::Dnsbl => "dnsbl",
            Check::Rdns => "rdns",
            Check::Helo => "helo",
            Check::Greylist => "greylist",
        }
    }

    pub fn mode(self, cfg: &Cfg) -> Mode {
        match self {
            Check::Pregreet => cfg.pregreet.mode,
            Check::Protocol => cfg.protocol.mode,
            Check::Dnsbl => cfg.dnsbl.mode,
            Check::Rdns => cfg.rdns.mode,
            Check::Helo => cfg.helo.mode,
            Check::Greylist => cfg.greylist.mode,
        }
    }
}

/// Why a signal was raised: stable names for logs, records and `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    EarlyTalker,
    NonSmtpCommand,
    UnauthorizedPipelining,
    BareLfCommand,
    TooManyErrors,
    /// An IP block list answered.
    DnsblListed,
    /// An allow list (negative weight) answered.
    DnswlListed,
    /// A domain block list answered for the HELO name or the sender domain.
    RhsblListed,
    /// The DNS lists' weights reached the threshold.
    DnsblScore,
    NoPtr,
    PtrNotConfirmed,
    PtrTempError,
    HeloSyntax,
    HeloNotFqdn,
    HeloIsOurs,
    HeloLiteralMismatch,
    HeloUnresolvable,
    Greylisted,
    /// Greylisting could not read or write its memory: a tempfail, never a pass.
    GreylistUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EarlyTalker => "early_talker",
            Reason::NonSmtpCommand => "non_smtp_command",
            Reason::UnauthorizedPipelining => "unauthorized_pipelining",
            Reason::BareLfCommand => "bare_lf_command",
            Reason::TooManyErrors => "too_many_errors",
            Reason::DnsblListed => "dnsbl_listed",
            Reason::DnswlListed => "dnswl_listed",
            Reason::RhsblListed => "rhsbl_listed",
            Reason::DnsblScore => "dnsbl_score",
            Reason::NoPtr => "no_ptr",
            Reason::PtrNotConfirmed => "ptr_not_confirmed",
            Reason::PtrTempError => "ptr_temperror",
            Reason::HeloSyntax => "helo_syntax",
            Reason::HeloNotFqdn => "helo_not_fqdn",
            Reason::HeloIsOurs => "helo_is_ours",
            Reason::HeloLiteralMismatch => "helo_literal_mismatch",
            Reason::HeloUnresolvable => "helo_unresolvable",
            Reason::Greylisted => "greylisted",
            Reason::GreylistUnavailable => "greylist_unavailable",
        }
    }

    pub fn check(self) -> Check {
        use Reason::*;
        match self {
            EarlyTalker => Check::Pregreet,
            NonSmtpCommand | UnauthorizedPipelining | BareLfCommand | TooManyErrors => {
                Check::Protocol
            }
            DnsblListed | DnswlListed | RhsblListed | DnsblScore => Check::Dnsbl,
            NoPtr | PtrNotConfirmed | PtrTempError => Check::Rdns,
            HeloSyntax | HeloNotFqdn | HeloIsOurs | HeloLiteralMismatch | HeloUnresolvable => {
                Check::Helo
            }
            Greylisted | GreylistUnavailable => Check::Greylist,
        }
    }
}

/// One finding about a client.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Signal {
    pub reason: Reason,
    pub detail: String,
    /// Where the evidence came from: a DNS list's zone, a name looked up; may be empty.
    pub source: String,
    /// Added to the session's screening score (DNS list weights; small ones elsewhere).
    pub score: f64,
    /// What the client gets when this signal's check enforces; `None`: scored only.
    #[serde(skip)]
    pub refusal: Option<Reply>,
}

impl Signal {
    pub fn new(reason: Reason, detail: impl Into<String>, score: f64) -> Signal {
        Signal {
            reason,
            detail: detail.into(),
            source: String::new(),
            score,
            refusal: None,
        }
    }

    pub fn from_source(mut self, source: impl Into<String>) -> Signal {
        self.source = source.into();
        self
    }

    pub fn refuse(mut self, reply: Reply) -> Signal {
        self.refusal = Some(reply);
        self
    }
}

/// What the session's signals add up to at the first RCPT.
#[derive(Debug, Default)]
pub struct Decision {
    /// The refusal for every RCPT of the session, with the signal that caused it.
    pub refuse: Option<(Reply, Signal)>,
    /// Refusals that `observe` mode only logs.
    pub would: Vec<Signal>,
    pub score: f64,
}

/// Combine signals: the DNS lists by their summed weight, every other check by its own
/// refusal. Enforced refusals win in the order the checks run (cheapest evidence first).
pub fn decide(cfg: &Cfg, signals: &[Signal], ip: std::net::IpAddr) -> Decision {
    let mut d = Decision {
        score: signals.iter().map(|s| s.score).sum(),
        ..Decision::default()
    };
    let mut candidates: Vec<Signal> = signals
        .iter()
        .filter(|s| s.refusal.is_some())
        .cloned()
        .collect();
    if let Some(s) = dnsbl::verdict(&cfg.dnsbl, signals, ip) {
        candidates.push(s);
    }
    for s in candidates {
        match s.reason.check().mode(cfg) {
            Mode::Enforce if d.refuse.is_none() => {
                d.refuse = Some((s.refusal.clone().expect("filtered"), s));
            }
            Mode::Enforce | Mode::Off => {}
            Mode::Observe => d.would.push(s),
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailwarden_proto::replies;

    const IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn enforce_refuses_observe_only_logs() {
        let mut cfg = Cfg::default();
        let sig = Signal::new(Reason::HeloNotFqdn, "HELO foo", 0.5)
            .refuse(replies::helo_rejected("not a FQDN"));
        cfg.helo.mode = Mode::Observe;
        let d = decide(&cfg, std::slice::from_ref(&sig), IP);
        assert!(d.refuse.is_none());
        assert_eq!(d.would.len(), 1);
        assert_eq!(d.score, 0.5);
        cfg.helo.mode = Mode::Enforce;
        let d = decide(&cfg, &[sig], IP);
        assert_eq!(d.refuse.unwrap().1.reason, Reason::HeloNotFqdn);
        assert!(d.would.is_empty());
    }
}
