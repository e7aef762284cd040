//! The weight of every scored content reason: what a finding adds to the content score.
//!
//! Three sources, strongest first: `[scoring.weights]` in the config (one reason at a time),
//! the weights `mailwarden learn` fitted on labelled mail and stored with the classifier's
//! model (`classifier::fit`), and the conservative built-in ones below. The built-in ones
//! apply until a model is fitted; each heuristic's is below the default `scoring.junk`, so no
//! heuristic alone can put a message in Junk. The classifier's alone can, when it is sure
//! (a spam probability of 0.955 or more): a trained model whose weights were not fitted (too
//! little mail, or trained before weights were) still files what it recognises.
//!
//! The classifier's output is a reason too: its spam probability p becomes a strength,
//! `2p - 1` for spam (`content.classifier_spam`) or `1 - 2p` for ham
//! (`content.classifier_ham`), multiplied by the weight.

use crate::decision::{Finding, Kind};
use std::collections::BTreeMap;

/// The reasons the content score counts with a weight of their own, and their built-in
/// weights. `content.uribl_listed` is absent: each list's weight is configured with it.
pub const BUILTIN: &[(Kind, f64)] = &[
    (Kind::FromMissing, 2.0),
    (Kind::FromNoAddress, 2.5),
    (Kind::DisplayNameAddress, 2.0),
    (Kind::ToEmpty, 1.5),
    (Kind::DateMissing, 1.0),
    (Kind::DateInvalid, 1.0),
    (Kind::DateFuture, 1.5),
    (Kind::DatePast, 1.0),
    (Kind::MessageIdMissing, 0.5),
    (Kind::MessageIdMalformed, 1.5),
    (Kind::MessageIdNotFqdn, 1.0),
    (Kind::ReplyToElsewhere, 1.0),
    (Kind::DuplicateHeader, 1.5),
    (Kind::ForgedReceived, 2.0),
    (Kind::IpUrl, 1.5),
    (Kind::LinkMismatch, 1.5),
    (Kind::ClassifierSpam, 5.5),
    (Kind::ClassifierHam, -2.0),
    (Kind::ReputationBad, 3.0),
    (Kind::ReputationGood, -1.5),
    (Kind::Correspondent, -2.5),
    (Kind::ReplyToOurs, -2.5),
];

/// Every reason with a weight (what `[scoring.weights]` may name).
pub fn weighed() -> impl Iterator<Item = Kind> {
    BUILTIN.iter().map(|(k, _)| *k)
}

/// The reasons `mailwarden learn` fits: all but reputation's, which labelled mail from
/// elsewhere has no history for. Heuristics may only add (a heuristic a spammer could trigger
/// on purpose must never lower a score); the classifier's ham side may only subtract.
pub fn learnable() -> impl Iterator<Item = Kind> {
    weighed().filter(|k| k.family() != "reputation")
}

/// The built-in weight of a reason (0 for one the content score does not weigh).
pub fn builtin(kind: Kind) -> f64 {
    BUILTIN
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(0.0, |(_, w)| *w)
}

/// Where a weight came from, for `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Learned,
    Builtin,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Learned => "learned",
            Source::Builtin => "built-in",
        }
    }
}

/// The weights in force: config overrides, then learned ones, then built-in.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub config: &'a BTreeMap<String, f64>,
    pub learned: &'a BTreeMap<String, f64>,
}

impl Weights<'_> {
    pub fn of(&self, kind: Kind) -> (f64, Source) {
        let code = kind.code();
        if let Some(w) = self.config.get(code.as_ref()) {
            (*w, Source::Config)
        } else if let Some(w) = self.learned.get(code.as_ref()) {
            (*w, Source::Learned)
        } else {
            (builtin(kind), Source::Builtin)
        }
    }

    /// Give each heuristic finding its weight, and say which weight in its detail.
    pub fn apply(&self, findings: &mut [Finding]) {
        for f in findings.iter_mut() {
            if !BUILTIN.iter().any(|(k, _)| *k == f.kind) {
                continue;
            }
            let (w, src) = self.of(f.kind);
            f.score = w;
            f.detail = format!("{}; weight {w:+.2} ({})", f.detail, src.name());
        }
    }

    /// The classifier's opinion as a finding: its strength times its weight.
    pub fn classifier(&self, prob: f64) -> Option<Finding> {
        let (kind, strength) = strength(prob)?;
        let (w, src) = self.of(kind);
        let score = (w * strength * 100.0).round() / 100.0;
        Some(Finding::scored(
            kind,
            format!(
                "the classifier gives a spam probability of {prob:.3}: strength {strength:.2} \
                 x weight {w:+.2} ({})",
                src.name()
            ),
            score,
        ))
    }
}

/// The classifier's side and strength (0 to 1) for a spam probability; `None` in the
/// middle, where it has no opinion worth a point.
pub fn strength(prob: f64) -> Option<(Kind, f64)> {
    let s = 2.0 * prob - 1.0;
    if s >= 0.2 {
        Some((Kind::ClassifierSpam, s))
    } else if s <= -0.2 {
        Some((Kind::ClassifierHam, -s))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scoring;

    #[test]
    fn no_builtin_heuristic_alone_reaches_junk() {
        let junk = Scoring::default().junk;
        for (k, w) in BUILTIN.iter().filter(|(k, _)| *k != Kind::ClassifierSpam) {
            assert!(*w < junk, "{} weighs {w}, junk is {junk}", k.code());
        }
        // The classifier alone only when it is sure.
        let w = Weights {
            config: &BTreeMap::new(),
            learned: &BTreeMap::new(),
        };
        assert!(w.classifier(0.96).unwrap().score >= junk);
        assert!(w.classifier(0.95).unwrap().score < junk);
    }

    #[test]
    fn config_overrides_learned_overrides_builtin() {
        let config = BTreeMap::from([("headers.to_empty".to_string(), 0.25)]);
        let learned = BTreeMap::from([
            ("headers.to_empty".to_string(), 3.0),
            ("headers.date_past".to_string(), 0.75),
        ]);
        let w = Weights {
            config: &config,
            learned: &learned,
        };
        assert_eq!(w.of(Kind::ToEmpty), (0.25, Source::Config));
        assert_eq!(w.of(Kind::DatePast), (0.75, Source::Learned));
        assert_eq!(w.of(Kind::DateFuture), (1.5, Source::Builtin));
        let mut f = vec![Finding::scored(Kind::DatePast, "old", 9.0)];
        w.apply(&mut f);
        assert_eq!(f[0].score, 0.75);
        assert!(
            f[0].detail.ends_with("; weight +0.75 (learned)"),
            "{}",
            f[0].detail
        );
    }

    #[test]
    fn the_classifier_scores_by_strength() {
        let w = Weights {
            config: &BTreeMap::new(),
            learned: &BTreeMap::new(),
        };
        assert!(w.classifier(0.5).is_none());
        let spam = w.classifier(0.8).unwrap();
        assert_eq!(spam.kind, Kind::ClassifierSpam);
        assert_eq!(spam.score, 3.3);
        let ham = w.classifier(0.0).unwrap();
        assert_eq!((ham.kind, ham.score), (Kind::ClassifierHam, -2.0));
    }
}
