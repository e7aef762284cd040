//! Evaluate the content classifier on a labelled corpus read in place (issue 8):
//! `eval/classifier.sh` runs it on the SpamAssassin public corpus subset in
//! `../shared/testdata`. Each message goes to training or test by a hash of its file name
//! (30% test), so runs are repeatable. Prints spam recall at the threshold that keeps ham
//! false positives at 0.5% or less, and at the fixed threshold 0.9.

use mailwarden::classifier::Model;
use std::path::{Path, PathBuf};

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

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: eval_classifier CORPUS_DIR (with spam-* and *ham-* folders)");
    let mut sets: Vec<(PathBuf, bool)> = Vec::new();
    for d in files_and_dirs(&root) {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("spam") {
            sets.extend(files(&d).into_iter().map(|p| (p, true)));
        } else if name.contains("ham") {
            sets.extend(files(&d).into_iter().map(|p| (p, false)));
        }
    }
    let (test, train): (Vec<_>, Vec<_>) = sets.into_iter().partition(|(p, _)| in_test(p));
    let mut model = Model::default();
    for (p, spam) in &train {
        model.learn(&std::fs::read(p).unwrap(), *spam);
    }
    let mut spam_scores = Vec::new();
    let mut ham_scores = Vec::new();
    for (p, spam) in &test {
        let s = model.score(&std::fs::read(p).unwrap());
        if *spam {
            spam_scores.push(s)
        } else {
            ham_scores.push(s)
        }
    }
    ham_scores.sort_by(|a, b| b.total_cmp(a));
    // The lowest threshold with at most 0.5% of test ham at or above it.
    let allowed = (ham_scores.len() as f64 * 0.005).floor() as usize;
    let threshold = ham_scores.get(allowed).map_or(0.0, |s| s + 1e-12);
    let recall =
        |t: f64| spam_scores.iter().filter(|s| **s >= t).count() as f64 / spam_scores.len() as f64;
    let fp = |t: f64| ham_scores.iter().filter(|s| **s >= t).count();
    println!(
        "trained on {} spam + {} ham ({} tokens); tested on {} spam + {} ham",
        model.spam_messages,
        model.ham_messages,
        model.tokens_known(),
        spam_scores.len(),
        ham_scores.len()
    );
    println!(
        "at <= 0.5% ham false positives (threshold {threshold:.4}, {} false positives): spam recall {:.2}%",
        fp(threshold),
        100.0 * recall(threshold)
    );
    println!(
        "at the fixed threshold 0.9: spam recall {:.2}%, {} ham false positives ({:.2}%)",
        100.0 * recall(0.9),
        fp(0.9),
        100.0 * fp(0.9) as f64 / ham_scores.len() as f64
    );
}

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}
