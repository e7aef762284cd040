//! A statistical content classifier: token counts from labelled mail, combined with
//! Robinson's per-token estimate and Fisher's chi-square method (as SpamBayes and Bogofilter
//! do), so a message needs many strong clues, not one word, to score as spam or ham.
//!
//! Learning only adds counts, so the model learns incrementally, and the stored model is
//! changed in place, never rewritten: `mailwarden learn --spam DIR --ham DIR` adds a run's
//! counts ([`Model::add_to_store`]), users' moves into and out of Junk add or take back one
//! message's ([`Model::record`], from `learning`). Tokens are [`tokens`]'s. `mailwarden learn`
//! also fits the content score's weights on the same mail ([`fit`]); they are stored with the
//! model.

pub mod fit;
mod tokens;

use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
pub use tokens::{strip_mbox, tokens, tokens_of};

/// Messages of each kind a model needs before its opinion counts in scoring.
pub const MIN_TRAINING: u64 = 20;

/// Robinson's prior strength and assumed probability for rare tokens.
const PRIOR_STRENGTH: f64 = 0.45;
const PRIOR: f64 = 0.5;
/// Tokens nearer to 0.5 than this say nothing.
const MIN_DISTANCE: f64 = 0.1;
/// The most telling tokens used per message.
const MAX_CLUES: usize = 150;

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub spam_messages: u64,
    pub ham_messages: u64,
    counts: HashMap<String, (u32, u32)>,
    /// Changes with every save or recorded message, so a running server sees changes that
    /// leave the message counts as they were.
    pub generation: u64,
    /// The content score's weights fitted with this model, by reason code; empty until
    /// `mailwarden learn` fitted them (the built-in weights apply).
    pub weights: BTreeMap<String, f64>,
}

/// chi2Q: the probability that a chi-square with `v` (even) degrees of freedom is ≥ `x2`.
fn chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

impl Model {
    /// Learn one message as spam or ham.
    pub fn learn(&mut self, raw: &[u8], spam: bool) {
        self.adjust(&tokens(raw), spam, true);
    }

    /// Learn a message already tokenised.
    pub fn learn_tokens(&mut self, toks: &HashSet<String>, spam: bool) {
        self.adjust(toks, spam, true);
    }

    /// Undo an earlier [`Model::learn`] with the same label (a user corrected it).
    pub fn forget(&mut self, raw: &[u8], spam: bool) {
        self.adjust(&tokens(raw), spam, false);
    }

    /// Learn (`add`) or forget one message's tokens in the stored model, without rewriting
    /// it: what users' moves into and out of Junk do. A running server reloads the model
    /// (its generation changed).
    pub async fn record(
        store: &Store,
        toks: &HashSet<String>,
        spam: bool,
        add: bool,
    ) -> Result<(), StoreError> {
        let toks: Vec<String> = toks.iter().cloned().collect();
        store
            .write(move |c| Model::record_in(c, &toks, spam, add))
            .await
    }

    /// [`Model::record`] inside a caller's transaction.
    pub fn record_in(
        c: &crate::store::Conn<'_>,
        toks: &[String],
        spam: bool,
        add: bool,
    ) -> crate::store::DbResult<()> {
        let (col, key) = if spam {
            ("spam", "spam_messages")
        } else {
            ("ham", "ham_messages")
        };
        let delta: i64 = if add { 1 } else { -1 };
        let up = format!(
            "INSERT INTO bayes_tokens(token, spam, ham) VALUES (?1, ?2, ?3) \
             ON CONFLICT(token) DO UPDATE SET \
             {col} = CASE WHEN bayes_tokens.{col} + ?4 > 0 THEN bayes_tokens.{col} + ?4 ELSE 0 END"
        );
        let first = delta.max(0);
        let (s, h) = if spam { (first, 0) } else { (0, first) };
        for t in toks {
            c.execute(&up, crate::params![t, s, h, delta])?;
            if !add {
                c.execute(
                    "DELETE FROM bayes_tokens WHERE token = ?1 AND spam = 0 AND ham = 0",
                    [t],
                )?;
            }
        }
        bump(c, key, delta)
    }

    /// Add this model's counts (a run of `mailwarden learn`) to the stored model, and store
    /// its weights when it has any. Adding, not rewriting: what users' moves stored meanwhile
    /// is kept.
    pub fn add_to_store(&self, store: &Store) -> Result<(), StoreError> {
        let m = self.clone();
        store.write_blocking(move |c| {
            for (t, (s, h)) in &m.counts {
                c.execute(
                    "INSERT INTO bayes_tokens(token, spam, ham) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(token) DO UPDATE SET \
                     spam = bayes_tokens.spam + ?2, ham = bayes_tokens.ham + ?3",
                    crate::params![t, s, h],
                )?;
            }
            bump(c, "spam_messages", m.spam_messages as i64)?;
            bump(c, "ham_messages", m.ham_messages as i64)?;
            c.execute(
                "INSERT INTO bayes_meta(key, value) VALUES ('trained', ?1) \
                 ON CONFLICT(key) DO UPDATE SET value = ?1",
                crate::params![crate::clock::Clock::now_secs(&crate::clock::SystemClock)],
            )?;
            if !m.weights.is_empty() {
                write_weights(c, &m.weights)?;
            }
            Ok(())
        })
    }

    /// When `mailwarden learn` last trained the stored model (Unix time), if ever.
    pub fn trained_at(store: &Store) -> Result<Option<i64>, StoreError> {
        use crate::store::Optional;
        store.read(|c| {
            c.query_row(
                "SELECT value FROM bayes_meta WHERE key = 'trained'",
                (),
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn adjust(&mut self, toks: &HashSet<String>, spam: bool, add: bool) {
        let step = |n: &mut u32| {
            *n = if add {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            }
        };
        let msgs = if spam {
            &mut self.spam_messages
        } else {
            &mut self.ham_messages
        };
        *msgs = if add {
            *msgs + 1
        } else {
            msgs.saturating_sub(1)
        };
        for t in toks {
            if add {
                let e = self.counts.entry(t.clone()).or_default();
                step(if spam { &mut e.0 } else { &mut e.1 });
            } else if let Some(e) = self.counts.get_mut(t) {
                step(if spam { &mut e.0 } else { &mut e.1 });
                if *e == (0, 0) {
                    self.counts.remove(t);
                }
            }
        }
    }

    pub fn tokens_known(&self) -> usize {
        self.counts.len()
    }

    /// The spam probability of a message, 0 (ham) to 1 (spam); 0.5 means no opinion.
    pub fn score(&self, raw: &[u8]) -> f64 {
        self.score_tokens(&tokens(raw))
    }

    pub fn score_tokens(&self, toks: &HashSet<String>) -> f64 {
        if self.spam_messages == 0 || self.ham_messages == 0 {
            return 0.5;
        }
        let (ns, nh) = (self.spam_messages as f64, self.ham_messages as f64);
        let mut clues: Vec<f64> = toks
            .iter()
            .filter_map(|t| self.counts.get(t))
            .map(|&(s, h)| {
                let ps = (s as f64 / ns).min(1.0);
                let ph = (h as f64 / nh).min(1.0);
                let p = ps / (ps + ph);
                let n = (s + h) as f64;
                (PRIOR_STRENGTH * PRIOR + n * p) / (PRIOR_STRENGTH + n)
            })
            .filter(|f| (f - 0.5).abs() >= MIN_DISTANCE)
            .collect();
        if clues.is_empty() {
            return 0.5;
        }
        // The most telling first. Ties (a spammy and a hammy token equally far from 0.5)
        // are broken by value, not by the token set's iteration order, which differs from
        // process to process: the same message must get the same score every time.
        clues.sort_by(|a, b| {
            (b - 0.5)
                .abs()
                .total_cmp(&(a - 0.5).abs())
                .then(a.total_cmp(b))
        });
        clues.truncate(MAX_CLUES);
        let n = clues.len();
        let ln_ham: f64 = clues.iter().map(|f| f.max(1e-200).ln()).sum();
        let ln_spam: f64 = clues.iter().map(|f| (1.0 - f).max(1e-200).ln()).sum();
        let s = 1.0 - chi2q(-2.0 * ln_spam, 2 * n);
        let h = 1.0 - chi2q(-2.0 * ln_ham, 2 * n);
        ((s - h + 1.0) / 2.0).clamp(0.0, 1.0)
    }

    /// Load the model from the store (empty if never trained).
    pub fn load(store: &Store) -> Result<Model, StoreError> {
        store.read(|c| {
            let mut m = Model::default();
            let meta = c.query_map("SELECT key, value FROM bayes_meta", (), |r| {
                Ok((r.get::<String>(0)?, r.get::<i64>(1)?))
            })?;
            for (k, v) in meta {
                match k.as_str() {
                    "spam_messages" => m.spam_messages = v as u64,
                    "ham_messages" => m.ham_messages = v as u64,
                    "generation" => m.generation = v as u64,
                    _ => {}
                }
            }
            let tokens = c.query_map("SELECT token, spam, ham FROM bayes_tokens", (), |r| {
                Ok((r.get::<String>(0)?, r.get::<u32>(1)?, r.get::<u32>(2)?))
            })?;
            for (t, s, h) in tokens {
                m.counts.insert(t, (s, h));
            }
            let weights = c.query_map("SELECT code, weight FROM score_weights", (), |r| {
                Ok((r.get::<String>(0)?, r.get::<f64>(1)?))
            })?;
            for (k, w) in weights {
                m.weights.insert(k, w);
            }
            Ok(m)
        })
    }
}

/// Add `delta` to a stored count (never below 0), and change the model's generation.
fn bump(c: &crate::store::Conn<'_>, key: &str, delta: i64) -> crate::store::DbResult<()> {
    c.execute(
        "INSERT INTO bayes_meta(key, value) VALUES (?1, CASE WHEN ?2 > 0 THEN ?2 ELSE 0 END) \
         ON CONFLICT(key) DO UPDATE SET value = \
         CASE WHEN bayes_meta.value + ?2 > 0 THEN bayes_meta.value + ?2 ELSE 0 END",
        crate::params![key, delta],
    )?;
    next_generation(c)
}

/// A running server reloads a model whose generation changed.
fn next_generation(c: &crate::store::Conn<'_>) -> crate::store::DbResult<()> {
    c.execute(
        "INSERT INTO bayes_meta(key, value) VALUES ('generation', 1) \
         ON CONFLICT(key) DO UPDATE SET value = bayes_meta.value + 1",
        (),
    )?;
    Ok(())
}

/// Replace the stored weights.
fn write_weights(
    c: &crate::store::Conn<'_>,
    w: &BTreeMap<String, f64>,
) -> crate::store::DbResult<()> {
    c.execute("DELETE FROM score_weights", ())?;
    for (k, v) in w {
        c.execute(
            "INSERT INTO score_weights(code, weight) VALUES (?1, ?2)",
            crate::params![k, v],
        )?;
    }
    Ok(())
}

/// The model a running server scores with, reloaded when `mailwarden learn` changed it.
#[derive(Default)]
pub struct Live(RwLock<Arc<Model>>);

impl Live {
    pub fn get(&self) -> Arc<Model> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reload if the stored model changed since it was loaded. Returns whether it
    /// reloaded.
    pub fn refresh(&self, store: &Store) -> Result<bool, StoreError> {
        let counts: Vec<(String, i64)> = store.read(|c| {
            c.query_map("SELECT key, value FROM bayes_meta", (), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })?;
        let get = |k: &str| {
            counts
                .iter()
                .find(|(n, _)| n == k)
                .map_or(0, |(_, v)| *v as u64)
        };
        let cur = self.get();
        let stored = (get("spam_messages"), get("ham_messages"), get("generation"));
        if stored == (cur.spam_messages, cur.ham_messages, cur.generation) {
            return Ok(false);
        }
        let m = Model::load(store)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(m);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, body: &str) -> Vec<u8> {
        format!("From: a@b.test\r\nSubject: {subject}\r\n\r\n{body}\r\n").into_bytes()
    }

    fn trained() -> Model {
        let mut m = Model::default();
        for i in 0..20 {
            m.learn(
                &msg(
                    &format!("cheap replica watches {i}"),
                    "buy viagra now, discount pills",
                ),
                true,
            );
            m.learn(
                &msg(
                    &format!("meeting notes {i}"),
                    "the committee agenda for thursday",
                ),
                false,
            );
        }
        m
    }

    #[test]
    fn learns_and_separates() {
        let m = trained();
        assert!(m.score(&msg("replica watches", "discount pills")) > 0.9);
        assert!(m.score(&msg("agenda", "committee meeting thursday")) < 0.1);
        assert_eq!(
            Model::default().score(&msg("x", "y")),
            0.5,
            "untrained: no opinion"
        );
    }

    #[test]
    fn learning_is_incremental_and_forgettable() {
        let mut m = trained();
        let odd = msg("thursday pills", "committee discount");
        let before = m.score(&odd);
        m.learn(&odd, true);
        assert!(m.score(&odd) > before);
        m.forget(&odd, true);
        assert!((m.score(&odd) - before).abs() < 1e-9);
        assert_eq!(m.spam_messages, 20);
    }

    #[test]
    fn users_moves_update_the_stored_model_in_place() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = trained();
        m.add_to_store(&store).unwrap();
        let odd = tokens(&msg("thursday pills", "committee discount"));
        let before = m.score_tokens(&odd);
        rt.block_on(Model::record(&store, &odd, true, true))
            .unwrap();
        let after = Model::load(&store).unwrap();
        assert_eq!(after.spam_messages, 21);
        assert!(after.score_tokens(&odd) > before);
        assert_ne!(after.generation, m.generation);
        rt.block_on(Model::record(&store, &odd, true, false))
            .unwrap();
        let back = Model::load(&store).unwrap();
        assert_eq!(back.spam_messages, 20);
        assert!((back.score_tokens(&odd) - before).abs() < 1e-9);
        assert_eq!(back.tokens_known(), m.tokens_known());
    }

    #[test]
    fn persists_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = trained();
        m.add_to_store(&store).unwrap();
        let back = Model::load(&store).unwrap();
        assert_eq!(back.spam_messages, 20);
        assert_eq!(back.tokens_known(), m.tokens_known());
        let probe = msg("replica", "pills");
        assert_eq!(back.score(&probe), m.score(&probe));
    }
}

#[cfg(test)]
mod determinism {
    use super::*;

    /// Far more equally telling clues than are kept: which are kept must not depend on the
    /// order the token set happens to iterate in.
    #[test]
    fn equally_telling_clues_give_one_score_whatever_the_iteration_order() {
        let mut m = Model {
            spam_messages: 100,
            ham_messages: 100,
            ..Model::default()
        };
        let mut toks = HashSet::new();
        for i in 0..(MAX_CLUES * 3) {
            let (s, h) = if i % 2 == 0 { (6, 2) } else { (2, 6) };
            m.counts.insert(format!("t{i}"), (s, h));
            toks.insert(format!("t{i}"));
        }
        let first = m.score_tokens(&toks);
        for _ in 0..20 {
            // A new set: a new random iteration order.
            let again: HashSet<String> = toks.iter().cloned().collect();
            assert_eq!(m.score_tokens(&again), first);
        }
    }
}
