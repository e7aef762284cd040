//! Evaluate content scoring at the defaults on a labelled corpus read in place:
//! `eval/classifier.sh` runs it on the SpamAssassin public corpus subset in
//! `../shared/testdata`. Each message goes to training or test by a hash of its file name
//! (30% test), so runs are repeatable. Training is `mailwarden learn`'s; each test message is
//! scored by the server's content pipeline as of the date of its newest `Received:` field,
//! and put in Junk when it reaches the default `scoring.junk`. Prints recall and false
//! positives per group, and throughput per core. `EVAL_MISSES=1` also lists each misjudged
//! test message on standard error, with its score, probability and findings.

use mailwarden::checks::headers::{self, Parsed};
use mailwarden::checks::scoring;
use mailwarden::classifier::Model;
use mailwarden::classifier::fit::{self, Example};
use mailwarden::decision::Kind;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// FNV-1a of the file name: a stable split.
fn in_test(p: &Path) -> bool {
    let name = p.file_name().unwrap_or_default().as_encoded_bytes();
    let h = name.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    h % 10 < 3
}

/// The corpus's groups: easy ham, hard ham, spam.
fn group(dir: &str) -> Option<&'static str> {
    if dir.starts_with("spam") {
        Some("spam")
    } else if dir.starts_with("hard-ham") {
        Some("hard ham")
    } else if dir.contains("ham") {
        Some("easy ham")
    } else {
        None
    }
}

struct Mail {
    raw: Vec<u8>,
    group: &'static str,
}

fn load(root: &Path) -> Vec<(PathBuf, Mail)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for d in dirs {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(g) = group(&name) else { continue };
        for p in files(&d) {
            let raw = std::fs::read(&p).unwrap();
            out.push((p, Mail { raw, group: g }));
        }
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .map(PathBuf::from)
        .expect("usage: eval_classifier CORPUS_DIR [--builtin] (with spam-* and *ham-* folders)");
    let builtin = args.any(|a| a == "--builtin");
    let ours = "mx.example.test";
    let cfg = mailwarden::config::Config::default();
    let all = load(&root);
    let (test, train): (Vec<_>, Vec<_>) = all.into_iter().partition(|(p, _)| in_test(p));
    let started = Instant::now();
    let examples: Vec<Example> = train
        .iter()
        .map(|(_, m)| Example::read(&m.raw, m.group == "spam", 0, ours))
        .collect();
    let mut model = Model::default();
    for e in &examples {
        model.learn_tokens(&e.tokens, e.spam);
    }
    let (weights, report) = fit::fit(&examples, &cfg.scoring).expect("fit");
    if !builtin {
        model.weights = weights;
    }
    let learn_secs = started.elapsed().as_secs_f64();
    println!(
        "trained on {} spam + {} ham ({} tokens) in {learn_secs:.1} s; tested on {} messages; \
         weights: {}",
        model.spam_messages,
        model.ham_messages,
        model.tokens_known(),
        test.len(),
        if builtin { "built-in" } else { "learned" }
    );
    println!(
        "cross-validated on the training split, at scoring.junk: {:.2}% of ham in Junk, \
         spam recall {:.2}% (the classifier alone: {:.2}%)",
        100.0 * report.cv_ham_in_junk,
        100.0 * report.cv_spam_recall,
        100.0 * report.cv_classifier_recall
    );
    println!("\n| heuristic | spam hit rate | ham hit rate | weight |\n|---|---:|---:|---:|");
    let w = scoring::weights(&cfg.scoring, &model);
    for h in &report.hit_rates {
        let (weight, src) = w.of(h.kind);
        println!(
            "| `{}` | {:.2}% | {:.2}% | {weight:.2} ({}) |",
            h.kind.code(),
            100.0 * h.spam,
            100.0 * h.ham,
            src.name()
        );
    }
    for k in [Kind::ClassifierSpam, Kind::ClassifierHam] {
        let (weight, src) = w.of(k);
        println!("| `{}` | | | {weight:.2} ({}) |", k.code(), src.name());
    }

    // Group, messages, then at or above junk, quarantine, reject.
    let mut rows: Vec<(&str, usize, [usize; 3])> = vec![
        ("easy ham", 0, [0; 3]),
        ("hard ham", 0, [0; 3]),
        ("spam", 0, [0; 3]),
    ];
    let sc = &cfg.scoring;
    let started = Instant::now();
    for (_, m) in &test {
        let raw = mailwarden::classifier::strip_mbox(&m.raw);
        let now = headers::received_time(raw).unwrap_or(0);
        let parsed = Parsed::with_defaults(raw);
        let (found, _) = scoring::content(sc, &model, &parsed, now, ours, false);
        let score = scoring::total(&found);
        if std::env::var_os("EVAL_MISSES").is_some() && (m.group == "spam") == (score < sc.junk) {
            let p = scoring::probability(&model, &parsed).unwrap_or(0.5);
            let codes: Vec<String> = found
                .iter()
                .map(|f| format!("{}={}", f.kind.code(), f.score))
                .collect();
            eprintln!("{} {score} p={p:.4} {codes:?}", m.group);
        }
        let row = rows.iter_mut().find(|r| r.0 == m.group).unwrap();
        row.1 += 1;
        for (n, t) in row.2.iter_mut().zip([sc.junk, sc.quarantine, sc.reject]) {
            if score >= t {
                *n += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\nheld-out test split, at the default thresholds (junk {}, quarantine {}, reject {}):\n",
        sc.junk, sc.quarantine, sc.reject
    );
    println!("| group | messages | junk or worse | rate | quarantine or worse | reject |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (g, n, [junk, quar, rej]) in &rows {
        println!(
            "| {g} | {n} | {junk} | {:.2}% | {quar} | {rej} |",
            100.0 * *junk as f64 / *n as f64
        );
    }
    let ham: usize = rows.iter().filter(|r| r.0 != "spam").map(|r| r.1).sum();
    let ham_junk: usize = rows.iter().filter(|r| r.0 != "spam").map(|r| r.2[0]).sum();
    println!(
        "| all ham | {ham} | {ham_junk} | {:.2}% | | |",
        100.0 * ham_junk as f64 / ham as f64
    );
    println!(
        "\ncontent scoring (parse, heuristics, tokens, classifier): {:.0} messages/s on one \
         core ({} messages in {secs:.2} s)",
        test.len() as f64 / secs,
        test.len()
    );
}
