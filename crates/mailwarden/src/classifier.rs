//! A statistical content classifier: token counts from labelled mail, combined with
//! Robinson's per-token estimate and Fisher's chi-square method (as SpamBayes and Bogofilter
//! do), so a message needs many strong clues, not one word, to score as spam or ham.
//!
//! Learning only adds counts, so the model learns incrementally: `mailwarden learn --spam DIR
//! --ham DIR` now, users' moves into and out of Junk later ([`Model::forget`] undoes a wrong
//! label). Tokens come from the decoded message (mail-parser): words of the Subject and the
//! text parts (HTML turned to text), the sender's domain, link hosts and header names.

use crate::checks::headers::{self, Parsed};
use crate::store::{Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// Messages of each kind a model needs before its opinion counts in scoring.
pub const MIN_TRAINING: u64 = 20;

/// Robinson's prior strength and assumed probability for rare tokens.
const PRIOR_STRENGTH: f64 = 0.45;
const PRIOR: f64 = 0.5;
/// Tokens nearer to 0.5 than this say nothing.
const MIN_DISTANCE: f64 = 0.1;
/// The most telling tokens used per message.
const MAX_CLUES: usize = 150;
/// Bytes of a message looked at, and of its decoded text: enough for any letter, not for
/// attachments, and a bound on the work a message can cost (tokens are allocated).
const MAX_BYTES: usize = 256 * 1024;
/// Link hosts turned into tokens at most.
const MAX_HOSTS: usize = 200;

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub spam_messages: u64,
    pub ham_messages: u64,
    counts: HashMap<String, (u32, u32)>,
}

fn words(text: &str, prefix: &str, out: &mut HashSet<String>) {
    for w in text.split(|c: char| !(c.is_alphanumeric() || "$'-!".contains(c))) {
        let w = w.trim_matches(|c: char| "'-".contains(c));
        let n = w.chars().count();
        if n < 3 {
            continue;
        }
        if n > 20 {
            // Long strings (encodings, hashes) say little one by one; their shape says more.
            let first = w.chars().next().unwrap_or('x');
            out.insert(format!("{prefix}skip:{first}{}", n / 10 * 10));
            continue;
        }
        out.insert(format!("{prefix}{}", w.to_lowercase()));
    }
}

/// Adjacent word pairs: "click here", "remove you" say more together than apart.
fn bigrams(text: &str, out: &mut HashSet<String>) {
    let mut prev: Option<String> = None;
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if w.chars().count() < 2 || w.chars().count() > 20 {
            continue;
        }
        let w = w.to_lowercase();
        if let Some(p) = prev {
            out.insert(format!("bi:{p} {w}"));
        }
        prev = Some(w);
    }
}

/// The distinct tokens of a raw message (an mbox `From ` line first is skipped).
pub fn tokens(raw: &[u8]) -> HashSet<String> {
    let raw = if raw.starts_with(b"From ") {
        memchr::memchr(b'\n', raw).map_or(raw, |i| &raw[i + 1..])
    } else {
        raw
    };
    tokens_of(&Parsed::new(raw, MAX_BYTES, MAX_HOSTS))
}

/// At most `left` bytes of `t`, cut at a character boundary; `left` goes down by as much.
fn budget<'t>(t: &'t str, left: &mut usize) -> &'t str {
    let mut n = t.len().min(*left);
    while !t.is_char_boundary(n) {
        n -= 1;
    }
    *left -= n;
    &t[..n]
}

/// The distinct tokens of a message already parsed (the server's scoring shares the parse).
pub fn tokens_of(p: &Parsed<'_>) -> HashSet<String> {
    let mut out = HashSet::new();
    for (name, value) in &p.fields {
        out.insert(format!("h:{name}"));
        match name.as_str() {
            "subject" => words(value, "s:", &mut out),
            "from" | "reply-to" | "return-path" => {
                if let Some(d) = value
                    .rsplit_once('@')
                    .map(|(_, d)| d.trim_end_matches(['>', ' ', '"']).to_lowercase())
                {
                    out.insert(format!("{name}:{d}"));
                }
                words(value, &format!("{name}:"), &mut out);
            }
            "content-type" | "x-mailer" | "user-agent" | "content-transfer-encoding" => {
                let v = value.split(';').next().unwrap_or("").trim().to_lowercase();
                out.insert(format!("{name}:{v}"));
            }
            _ => {}
        }
    }
    let Some(msg) = &p.msg else {
        return out;
    };
    let hosts = p.max_hosts.min(MAX_HOSTS);
    let mut left = MAX_BYTES;
    for i in 0.. {
        let Some(t) = msg.body_text(i).filter(|_| left > 0) else {
            break;
        };
        let t = budget(&t, &mut left);
        words(t, "", &mut out);
        bigrams(t, &mut out);
        for h in headers::url_hosts(t, hosts) {
            out.insert(format!("url:{h}"));
        }
    }
    let mut left = MAX_BYTES;
    for i in 0.. {
        let Some(h) = msg.body_html(i).filter(|_| left > 0) else {
            break;
        };
        for host in headers::url_hosts(budget(&h, &mut left), hosts) {
            out.insert(format!("url:{host}"));
        }
    }
    out
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

    /// Undo an earlier [`Model::learn`] with the same label (a user corrected it).
    pub fn forget(&mut self, raw: &[u8], spam: bool) {
        self.adjust(&tokens(raw), spam, false);
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
            let e = self.counts.entry(t.clone()).or_default();
            step(if spam { &mut e.0 } else { &mut e.1 });
        }
        self.counts.retain(|_, (s, h)| *s > 0 || *h > 0);
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
            let mut st = c.prepare("SELECT key, value FROM bayes_meta")?;
            for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = row?;
                match k.as_str() {
                    "spam_messages" => m.spam_messages = v as u64,
                    "ham_messages" => m.ham_messages = v as u64,
                    _ => {}
                }
            }
            let mut st = c.prepare("SELECT token, spam, ham FROM bayes_tokens")?;
            for row in st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            })? {
                let (t, s, h) = row?;
                m.counts.insert(t, (s, h));
            }
            Ok(m)
        })
    }

    /// Replace the stored model with this one (the store's writer commits it as one).
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        let m = self.clone();
        store.write_blocking(move |c| {
            c.execute("DELETE FROM bayes_tokens", [])?;
            {
                let mut ins =
                    c.prepare("INSERT INTO bayes_tokens(token, spam, ham) VALUES (?1, ?2, ?3)")?;
                for (t, (s, h)) in &m.counts {
                    ins.execute(rusqlite::params![t, s, h])?;
                }
            }
            for (k, v) in [
                ("spam_messages", m.spam_messages),
                ("ham_messages", m.ham_messages),
            ] {
                c.execute(
                    "INSERT OR REPLACE INTO bayes_meta(key, value) VALUES (?1, ?2)",
                    rusqlite::params![k, v as i64],
                )?;
            }
            Ok(())
        })
    }
}

/// The model a running server scores with, reloaded when `mailwarden learn` changed it.
#[derive(Default)]
pub struct Live(RwLock<Arc<Model>>);

impl Live {
    pub fn get(&self) -> Arc<Model> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reload if the stored message counts differ from the loaded ones. Returns whether it
    /// reloaded.
    pub fn refresh(&self, store: &Store) -> Result<bool, StoreError> {
        let counts: Vec<(String, i64)> = store.read(|c| {
            c.prepare("SELECT key, value FROM bayes_meta")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        let get = |k: &str| {
            counts
                .iter()
                .find(|(n, _)| n == k)
                .map_or(0, |(_, v)| *v as u64)
        };
        let cur = self.get();
        if (get("spam_messages"), get("ham_messages")) == (cur.spam_messages, cur.ham_messages) {
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
    fn persists_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = trained();
        m.save(&store).unwrap();
        let back = Model::load(&store).unwrap();
        assert_eq!(back.spam_messages, 20);
        assert_eq!(back.tokens_known(), m.tokens_known());
        let probe = msg("replica", "pills");
        assert_eq!(back.score(&probe), m.score(&probe));
    }

    #[test]
    fn tokens_skip_the_mbox_line_and_decode_parts() {
        let raw = b"From someone Mon Jan 1 00:00:00 2002\nFrom: x@shop.test\nSubject: Hello\n\
            Content-Type: text/html\n\n<p>Visit <a href=\"http://shop.test/x\">us</a></p>\n";
        let t = tokens(raw);
        assert!(t.contains("s:hello"), "{t:?}");
        assert!(t.contains("from:shop.test"), "{t:?}");
        assert!(t.contains("url:shop.test"), "{t:?}");
        assert!(t.contains("visit"), "{t:?}");
        assert!(!t.iter().any(|x| x.contains("someone")), "{t:?}");
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
