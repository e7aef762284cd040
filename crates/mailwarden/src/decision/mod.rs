//! How mailwarden decides, in one place. Every policy (screening, sender authentication,
//! local-domain forgery, content scoring, relay, ownership, limits, containment, and the
//! protocol core's own refusals) reports [`Finding`]s in one vocabulary ([`reason`]); a stage
//! of the session (connect, HELO, AUTH, MAIL, RCPT, end of DATA) gathers its findings and
//! [`apply`] turns them into one [`Verdict`], applying each policy's `off`/`observe`/`enforce`
//! mode here and nowhere else. The server acts on the verdict; `explain FILE.eml` prints it.

pub mod reason;

pub use reason::{Finding, Kind, Policy};

use crate::checks::scoring::Level;
use crate::config::{Config, Mode};
use mailwarden_proto::{Reply, replies};

/// What a verdict does with the transaction or message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Deliver to the recipients' Junk folders, marked.
    Junk,
    /// Keep for an administrator.
    Quarantine,
    TempFail(Reply),
    Reject(Reply),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Junk => "junk",
            Action::Quarantine => "quarantine",
            Action::TempFail(_) => "tempfail",
            Action::Reject(_) => "reject",
        }
    }

    /// A refusal by its reply's class.
    pub fn refusing(reply: Reply) -> Action {
        if reply.is_transient() {
            Action::TempFail(reply)
        } else {
            Action::Reject(reply)
        }
    }

    pub fn refusal(&self) -> Option<&Reply> {
        match self {
            Action::TempFail(r) | Action::Reject(r) => Some(r),
            _ => None,
        }
    }

    /// Which of two enforced asks wins: a refusal over quarantine over Junk.
    fn rank(&self) -> u8 {
        match self {
            Action::Accept => 0,
            Action::Junk => 1,
            Action::Quarantine => 2,
            Action::TempFail(_) | Action::Reject(_) => 3,
        }
    }
}

/// What made an ask (the cause of a verdict): a finding (its index in the list given to [`apply`]), or the content
/// score reaching a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Finding(usize),
    Score,
}

/// The content score and the level it reached under `[scoring]`.
#[derive(Clone, Copy, Debug)]
pub struct ScoreAsk {
    pub score: f64,
    pub level: Level,
}

impl ScoreAsk {
    fn action(&self) -> Option<Action> {
        match self.level {
            Level::Junk => Some(Action::Junk),
            Level::Quarantine => Some(Action::Quarantine),
            Level::Reject => Some(Action::Reject(replies::SPAM_REJECTED)),
            Level::Clean | Level::Tag => None,
        }
    }
}

/// One stage's decision.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub action: Action,
    /// What decided a non-accept action.
    pub deciding: Option<Cause>,
    /// What `observe` mode kept from acting, with the action it would have taken.
    pub would: Vec<(Action, Cause)>,
}

impl Verdict {
    pub fn accept() -> Verdict {
        Verdict {
            action: Action::Accept,
            deciding: None,
            would: Vec::new(),
        }
    }

    /// The finding that decided, if a finding did.
    pub fn deciding_finding<'a>(&self, findings: &'a [Finding]) -> Option<&'a Finding> {
        match self.deciding {
            Some(Cause::Finding(i)) => findings.get(i),
            _ => None,
        }
    }

    /// The observe-mode entries of a decision record: `would_<action>`, naming the code and
    /// detail of what would have acted. The server and `explain` both write these.
    pub fn would_records(
        &self,
        findings: &[Finding],
        score: Option<&ScoreAsk>,
    ) -> Vec<crate::records::Reason> {
        self.would
            .iter()
            .map(|(action, src)| {
                let detail = match src {
                    Cause::Finding(i) => findings
                        .get(*i)
                        .map(|f| format!("{}: {}", f.kind.code(), f.detail))
                        .unwrap_or_default(),
                    Cause::Score => format!("spam score {}", score.map_or(0.0, |s| s.score)),
                };
                crate::records::Reason {
                    check: "observe".into(),
                    code: format!("would_{}", action.name()),
                    detail,
                    score: 0.0,
                    deciding: false,
                    counted: false,
                }
            })
            .collect()
    }
}

/// The one place modes are applied. Each finding that asks for something (a refusal, or the
/// Junk folder) and the content score's level are weighed under their policy's mode: `off`
/// ignores the ask, `observe` notes what it would have done, `enforce` makes it a candidate.
/// The strongest candidate wins (a refusal, then quarantine, then Junk); among equals, the
/// first found, which is the cheapest evidence, since stages list findings in the order
/// their checks run.
pub fn apply(cfg: &Config, findings: &[Finding], score: Option<&ScoreAsk>) -> Verdict {
    let mut v = Verdict::accept();
    let asks = findings
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let action = match (&f.refusal, f.junk) {
                (Some(r), _) => Action::refusing(r.clone()),
                (None, true) => Action::Junk,
                (None, false) => return None,
            };
            Some((action, f.kind.policy(), Cause::Finding(i)))
        })
        .chain(
            score
                .and_then(|s| s.action())
                .map(|a| (a, Some(Policy::Scoring), Cause::Score)),
        );
    for (action, policy, src) in asks {
        match policy.map_or(Mode::Enforce, |p| p.mode(cfg)) {
            Mode::Off => {}
            Mode::Observe => v.would.push((action, src)),
            Mode::Enforce if action.rank() > v.action.rank() => {
                v.action = action;
                v.deciding = Some(src);
            }
            Mode::Enforce => {}
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforce_acts_observe_only_notes_off_ignores() {
        let mut cfg = Config::default();
        let f = [Finding::scored(Kind::HeloNotFqdn, "HELO foo", 0.5)
            .refuse(replies::helo_rejected("not a FQDN"))];
        cfg.screening.helo.mode = Mode::Observe;
        let v = apply(&cfg, &f, None);
        assert_eq!(v.action, Action::Accept);
        assert_eq!(v.would.len(), 1);
        let w = v.would_records(&f, None);
        assert_eq!(w[0].code, "would_reject");
        assert!(w[0].detail.starts_with("helo_not_fqdn: "), "{w:?}");
        cfg.screening.helo.mode = Mode::Enforce;
        let v = apply(&cfg, &f, None);
        assert_eq!(v.action.name(), "reject");
        assert_eq!(v.deciding, Some(Cause::Finding(0)));
        assert!(v.would.is_empty());
        cfg.screening.helo.mode = Mode::Off;
        let v = apply(&cfg, &f, None);
        assert_eq!(v.action, Action::Accept);
        assert!(v.would.is_empty());
    }

    #[test]
    fn a_refusal_beats_the_score_and_the_score_beats_junk() {
        let mut cfg = Config::default();
        cfg.scoring.mode = Mode::Enforce;
        cfg.dmarc.mode = Mode::Enforce;
        let junk = Finding::new(Kind::DmarcFail, "p=quarantine").to_junk();
        let temp = Finding::new(Kind::DmarcTempError, "x").refuse(replies::AUTH_DNS_TEMP);
        let quarantine = ScoreAsk {
            score: 9.0,
            level: Level::Quarantine,
        };
        let v = apply(&cfg, std::slice::from_ref(&junk), Some(&quarantine));
        assert_eq!(v.action, Action::Quarantine);
        assert_eq!(v.deciding, Some(Cause::Score));
        let v = apply(&cfg, &[temp, junk], Some(&quarantine));
        assert_eq!(v.action.name(), "tempfail");
        assert_eq!(v.deciding, Some(Cause::Finding(0)));
    }

    #[test]
    fn findings_of_no_policy_always_enforce() {
        let mut cfg = Config::default();
        cfg.screening.helo.mode = Mode::Off;
        let f = [Finding::refusing(
            Kind::NoSuchUser,
            "no such local user",
            replies::NO_SUCH_USER,
        )];
        assert_eq!(apply(&cfg, &f, None).action.name(), "reject");
    }

    #[test]
    fn every_code_is_stable_and_unique() {
        use mailwarden_proto::Why;
        use mailwarden_proto::command::Verb;
        let k = Kind::Protocol(Verb::Rcpt, Why::RecipientLimit);
        assert_eq!(k.code(), "rcpt.recipient_limit");
        assert_eq!(k.family(), "rcpt");
        assert_eq!(Kind::DnsblScore.family(), "screen");
        assert_eq!(Kind::DmarcFail.policy(), Some(Policy::Dmarc));
        assert_eq!(Kind::FromNoAddress.family(), "headers");
        assert_eq!(Kind::NoSuchUser.policy(), None);
        // The findings explain cannot know are exactly the screening checks of behaviour.
        for k in Kind::BEHAVIOURAL {
            assert!(matches!(
                k.screening(),
                Some(Policy::Pregreet | Policy::Greylist | Policy::Protocol)
            ));
        }
    }
}
