//! Fitting the content score's weights on labelled mail, as SpamAssassin's score generation
//! does: `mailwarden learn` and `eval/classifier.sh` call [`fit`].
//!
//! 1. Each message is read once: its tokens, and the heuristics that fire on it as of the
//!    date of its newest `Received:` field ([`super::super::checks::headers::received_time`]),
//!    so date rules see what they saw when it arrived.
//! 2. The classifier's opinion of each message comes from a model that never saw it: the mail
//!    is cut into [`FOLDS`] folds, and each fold is scored by a model of the others.
//! 3. A logistic regression over the heuristics and the classifier's strength
//!    ([`crate::checks::weights::strength`]) is fitted, with the signs held (heuristics only
//!    add, the classifier's ham side only subtracts) and an L2 penalty. Cross-validated over
//!    the same folds, its out-of-fold scores give the threshold at which at most
//!    [`MAX_HAM_IN_JUNK`] of the legitimate mail would land in Junk.
//! 4. The weights fitted on all the mail are scaled so that this threshold is `scoring.junk`:
//!    the default threshold keeps its meaning, and the weights are points.
//!
//! A heuristic that fired on fewer than [`MIN_HITS`] messages keeps its built-in weight; no
//! heuristic may weigh more than [`HEURISTIC_CAP`] of `scoring.junk`, so none alone puts mail
//! in Junk; the classifier's spam side no more than [`CLASSIFIER_CAP`] of it and below
//! `scoring.quarantine`, so the classifier alone never holds or refuses mail; its ham side no
//! less than [`CLASSIFIER_HAM_CAP`] of it, so words a spammer chooses cannot cancel much
//! other evidence. The report's cross-validated figures are those of the fold models under
//! the same scale, caps and built-in weights: what the stored weights would do, before any
//! `[scoring.weights]` override.

use super::Model;
use crate::checks::headers::{self, Parsed};
use crate::checks::{scoring, weights};
use crate::config::Scoring;
use crate::decision::Kind;
use std::collections::{BTreeMap, HashSet};

/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// Legitimate mail allowed in Junk at the fitted threshold.
pub const MAX_HAM_IN_JUNK: f64 = 0.003;
/// Messages of each kind a fit needs.
pub const MIN_PER_CLASS: usize = 50;
/// Hits a heuristic needs before its weight is learned.
pub const MIN_HITS: usize = 5;
/// The largest weight a heuristic may be given, as a share of `scoring.junk`.
pub const HEURISTIC_CAP: f64 = 0.8;
/// The largest weight the classifier's spam side may be given, as a share of `scoring.junk`
/// (and never more than [`BELOW_QUARANTINE`] of `scoring.quarantine`): however cleanly the
/// training mail separated (a scale fitted on it would otherwise grow without bound), the
/// classifier alone never holds or refuses mail.
pub const CLASSIFIER_CAP: f64 = 1.5;
pub const BELOW_QUARANTINE: f64 = 0.9;
/// The most the classifier's ham side may take away, as a share of `scoring.junk`.
pub const CLASSIFIER_HAM_CAP: f64 = 1.0;
/// The L2 penalty and the descent's steps.
const L2: f64 = 1e-3;
const STEPS: usize = 1500;
const RATE: f64 = 0.5;

/// One labelled message, read once.
pub struct Example {
    pub tokens: HashSet<String>,
    /// The heuristics that fired, unweighed.
    pub fired: Vec<Kind>,
    pub spam: bool,
}

impl Example {
    /// Read a raw message (an mbox `From ` line first is skipped). `now` is used when it has
    /// no dated `Received:` field.
    pub fn read(raw: &[u8], spam: bool, now: i64, ours: &str) -> Example {
        let raw = super::strip_mbox(raw);
        let when = headers::received_time(raw).unwrap_or(now);
        let parsed = Parsed::with_defaults(raw);
        let (found, _) = scoring::heuristics(&parsed, when, ours, false);
        Example {
            tokens: super::tokens_of(&parsed),
            fired: found.into_iter().map(|f| f.kind).collect(),
            spam,
        }
    }
}

/// How often a heuristic fired on each kind of mail.
#[derive(Debug, Clone)]
pub struct HitRate {
    pub kind: Kind,
    pub spam: f64,
    pub ham: f64,
}

/// What a fit found, for `mailwarden learn` and the evaluation.
#[derive(Debug, Clone)]
pub struct Report {
    pub spam: usize,
    pub ham: usize,
    pub hit_rates: Vec<HitRate>,
    /// Out-of-fold, at `scoring.junk` with the fitted weights: legitimate mail in Junk and
    /// spam caught.
    pub cv_ham_in_junk: f64,
    pub cv_spam_recall: f64,
    /// The classifier alone, out-of-fold, with as much legitimate mail let into Junk.
    pub cv_classifier_recall: f64,
}

/// The weights fitted, by reason code, and the report; `Err` when there is too little mail.
pub fn fit(examples: &[Example], cfg: &Scoring) -> Result<(BTreeMap<String, f64>, Report), String> {
    let junk = cfg.junk;
    let spam = examples.iter().filter(|e| e.spam).count();
    let ham = examples.len() - spam;
    if spam < MIN_PER_CLASS || ham < MIN_PER_CLASS {
        return Err(format!(
            "{spam} spam and {ham} ham: fitting weights needs {MIN_PER_CLASS} of each; \
             the built-in weights apply"
        ));
    }
    let kinds: Vec<Kind> = weights::learnable().collect();
    let fold = |i: usize| i % FOLDS;

    // The classifier's out-of-fold opinions: a model of everything, less one fold at a time.
    let mut all = Model::default();
    for e in examples {
        all.learn_tokens(&e.tokens, e.spam);
    }
    let mut prob = vec![0.5; examples.len()];
    for k in 0..FOLDS {
        let mut m = all.clone();
        for (i, e) in examples.iter().enumerate() {
            if fold(i) == k {
                m.adjust(&e.tokens, e.spam, false);
            }
        }
        for (i, e) in examples.iter().enumerate() {
            if fold(i) == k {
                prob[i] = m.score_tokens(&e.tokens);
            }
        }
    }

    let x: Vec<Vec<f64>> = examples
        .iter()
        .zip(&prob)
        .map(|(e, p)| features(&kinds, &e.fired, *p))
        .collect();
    let y: Vec<bool> = examples.iter().map(|e| e.spam).collect();
    let hits: Vec<usize> = (0..kinds.len())
        .map(|j| x.iter().filter(|row| row[j] > 0.0).count())
        .collect();
    let hit_rates = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| !matches!(k, Kind::ClassifierSpam | Kind::ClassifierHam))
        .map(|(j, k)| {
            let rate = |s: bool| {
                x.iter()
                    .zip(&y)
                    .filter(|(r, l)| **l == s && r[j] > 0.0)
                    .count() as f64
                    / if s { spam } else { ham } as f64
            };
            HitRate {
                kind: *k,
                spam: rate(true),
                ham: rate(false),
            }
        })
        .collect();

    // Cross-validated scores: each fold by a regression of the others.
    let mut oof = vec![0.0; examples.len()];
    let mut fold_weights = Vec::with_capacity(FOLDS);
    for k in 0..FOLDS {
        let idx: Vec<usize> = (0..examples.len()).filter(|i| fold(*i) != k).collect();
        let w = regression(&kinds, &x, &y, &idx);
        for (i, row) in x.iter().enumerate() {
            if fold(i) == k {
                oof[i] = dot(&w, row);
            }
        }
        fold_weights.push(w);
    }
    let ham_scores = highest_first(&oof, &y, false);
    let allowed = (ham as f64 * MAX_HAM_IN_JUNK).floor() as usize;
    let spam_scores = highest_first(&oof, &y, true);
    let spam_median = spam_scores[spam_scores.len() / 2];
    if spam_median <= 0.0 {
        return Err("nothing in this mail tells spam from ham; the built-in weights apply".into());
    }
    // Just above the highest ham score that must stay out of Junk; when the ham is far
    // below, still a good part of the typical spam's score, so one weak clue is not enough.
    let threshold = ham_scores
        .get(allowed)
        .map_or(0.0, |z| z + 1e-6)
        .max(spam_median / 4.0);
    let scale = junk / threshold;
    // Scaled to points, capped, and the built-in weight where too few messages had a say.
    let points = |w: &[f64]| -> Vec<f64> {
        kinds
            .iter()
            .enumerate()
            .map(|(j, k)| {
                if hits[j] < MIN_HITS {
                    return weights::builtin(*k);
                }
                let v = w[j] * scale;
                match k {
                    Kind::ClassifierSpam => v
                        .min(CLASSIFIER_CAP * junk)
                        .min(BELOW_QUARANTINE * cfg.quarantine),
                    Kind::ClassifierHam => v.max(-CLASSIFIER_HAM_CAP * junk),
                    _ => v.min(HEURISTIC_CAP * junk),
                }
            })
            .collect()
    };

    let all_idx: Vec<usize> = (0..examples.len()).collect();
    let w = points(&regression(&kinds, &x, &y, &all_idx));
    let learned = kinds
        .iter()
        .enumerate()
        .filter(|(j, _)| hits[*j] >= MIN_HITS)
        .map(|(j, k)| (k.code().into_owned(), (w[j] * 100.0).round() / 100.0))
        .collect();
    // What the stored weights would do, out of fold.
    let fold_points: Vec<Vec<f64>> = fold_weights.iter().map(|w| points(w)).collect();
    let in_junk = |s: bool| {
        x.iter()
            .enumerate()
            .filter(|(i, row)| y[*i] == s && dot(&fold_points[fold(*i)], row) >= junk)
            .count() as f64
    };
    let ham_p = highest_first(&prob, &y, false);
    let p_threshold = ham_p.get(allowed).map_or(0.0, |p| p + 1e-9);
    let cv_classifier_recall = prob
        .iter()
        .zip(&y)
        .filter(|(p, s)| **s && **p >= p_threshold)
        .count() as f64
        / spam as f64;
    let report = Report {
        cv_classifier_recall,
        spam,
        ham,
        hit_rates,
        cv_ham_in_junk: in_junk(false) / ham as f64,
        cv_spam_recall: in_junk(true) / spam as f64,
    };
    Ok((learned, report))
}

/// A message's features, in `kinds`' order: 1 for a heuristic that fired, the classifier's
/// strength on its side.
fn features(kinds: &[Kind], fired: &[Kind], prob: f64) -> Vec<f64> {
    let side = weights::strength(prob);
    kinds
        .iter()
        .map(|k| match (k, side) {
            (Kind::ClassifierSpam | Kind::ClassifierHam, Some((s, v))) if s == *k => v,
            (Kind::ClassifierSpam | Kind::ClassifierHam, _) => 0.0,
            _ => f64::from(u8::from(fired.contains(k))),
        })
        .collect()
}

/// The values of one label's messages, highest first.
fn highest_first(values: &[f64], y: &[bool], spam: bool) -> Vec<f64> {
    let mut v: Vec<f64> = values
        .iter()
        .zip(y)
        .filter(|(_, s)| **s == spam)
        .map(|(v, _)| *v)
        .collect();
    v.sort_by(|a, b| b.total_cmp(a));
    v
}

fn dot(w: &[f64], x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

/// Logistic regression by gradient descent on the rows `idx`, each class weighed equally,
/// with the signs held: the weights, without the intercept (the threshold takes its place).
fn regression(kinds: &[Kind], x: &[Vec<f64>], y: &[bool], idx: &[usize]) -> Vec<f64> {
    let d = kinds.len();
    let mut w = vec![0.0; d];
    let mut b = 0.0;
    let n_spam = idx.iter().filter(|i| y[**i]).count().max(1) as f64;
    let n_ham = (idx.len() as f64 - n_spam).max(1.0);
    let total = n_spam + n_ham;
    let mut grad = vec![0.0; d];
    for _ in 0..STEPS {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut gb = 0.0;
        for &i in idx {
            let z = dot(&w, &x[i]) + b;
            let p = 1.0 / (1.0 + (-z).exp());
            let (t, cw) = if y[i] {
                (1.0, total / (2.0 * n_spam))
            } else {
                (0.0, total / (2.0 * n_ham))
            };
            let e = cw * (p - t);
            for j in 0..d {
                if x[i][j] != 0.0 {
                    grad[j] += e * x[i][j];
                }
            }
            gb += e;
        }
        for j in 0..d {
            w[j] -= RATE * (grad[j] / total + L2 * w[j]);
            // Held signs: heuristics and the classifier's spam side add, its ham side
            // subtracts.
            w[j] = if kinds[j] == Kind::ClassifierHam {
                w[j].min(0.0)
            } else {
                w[j].max(0.0)
            };
        }
        b -= RATE * gb / total;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic mail where one heuristic marks spam, one fires on both kinds alike, and the
    /// words tell the rest.
    fn corpus() -> Vec<Example> {
        let mut out = Vec::new();
        for i in 0..200 {
            let spam = i % 2 == 0;
            let mut tokens: HashSet<String> = HashSet::new();
            let words = if spam {
                ["replica", "watches", "discount"]
            } else {
                ["agenda", "meeting", "minutes"]
            };
            for w in words {
                tokens.insert(format!("{w}{}", i % 7));
                tokens.insert(w.to_string());
            }
            // A few ham say a spam word: the classifier is not perfect.
            if i % 20 == 1 {
                tokens.insert("replica".into());
            }
            let mut fired = Vec::new();
            if spam && i % 4 == 0 {
                fired.push(Kind::DateFuture);
            }
            if i % 3 == 0 {
                fired.push(Kind::DatePast);
            }
            out.push(Example {
                tokens,
                fired,
                spam,
            });
        }
        out
    }

    #[test]
    fn fits_signed_weights_scaled_to_the_junk_threshold() {
        let ex = corpus();
        let (w, report) = fit(&ex, &Scoring::default()).unwrap();
        assert!(w["headers.date_future"] > 0.0, "{w:?}");
        assert!(w["headers.date_future"] <= HEURISTIC_CAP * 5.0, "{w:?}");
        assert!(w["content.classifier_spam"] > 0.0, "{w:?}");
        // The heuristic that does not separate gets (almost) nothing.
        assert!(
            w["headers.date_past"] < w["headers.date_future"] / 4.0,
            "{w:?}"
        );
        assert!(report.cv_ham_in_junk <= MAX_HAM_IN_JUNK, "{report:?}");
        let future = report
            .hit_rates
            .iter()
            .find(|h| h.kind == Kind::DateFuture)
            .unwrap();
        assert_eq!((future.spam, future.ham), (0.5, 0.0));
    }

    #[test]
    fn too_little_mail_keeps_the_builtin_weights() {
        let ex: Vec<Example> = corpus().into_iter().take(60).collect();
        assert!(
            fit(&ex, &Scoring::default())
                .unwrap_err()
                .contains("needs 50 of each")
        );
    }
}
