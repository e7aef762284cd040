//! HACKING.md is the map a newcomer trusts: every path it names must exist. A path is a
//! backticked word with a `/` or a file extension, relative to the repository root (or to
//! `crates/mailwarden/src/`); a bare file name (`mod.rs` in the `limits/` row) is looked for
//! in the directories the same line names.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Backticked words that look like paths, each with the directories its line names.
fn named_paths(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let words: Vec<&str> = line
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| looks_like_path(w))
            .collect();
        let dirs: Vec<String> = words
            .iter()
            .filter(|w| w.contains('/'))
            .map(|w| match w.rsplit_once('/') {
                Some((d, "")) => d.to_string(),
                Some((d, _)) => d.to_string(),
                None => String::new(),
            })
            .collect();
        for w in words {
            out.push((w.to_string(), dirs.clone()));
        }
    }
    out
}

fn looks_like_path(w: &str) -> bool {
    !w.contains(' ')
        && !w.starts_with('-')
        && !w.starts_with("//")
        && !w.starts_with("../")
        && !w.contains("::")
        && !w.contains('(')
        && !w.contains('=')
        && !w.contains('<')
        && (w.contains('/')
            || [".rs", ".md", ".toml", ".sh", ".py", ".smtp"]
                .iter()
                .any(|e| w.ends_with(e)))
}

fn exists(name: &str, dirs: &[String]) -> bool {
    let root = root();
    let crate_src = root.join("crates/mailwarden/src");
    let mut candidates = vec![root.join(name), crate_src.join(name)];
    for d in dirs {
        candidates.push(root.join(d).join(name));
        candidates.push(crate_src.join(d).join(name));
    }
    candidates.iter().any(|p| p.exists())
}

#[test]
fn every_path_hacking_md_names_exists() {
    let text = std::fs::read_to_string(root().join("HACKING.md")).unwrap();
    let named = named_paths(&text);
    assert!(named.len() > 50, "only {} paths found", named.len());
    let missing: Vec<String> = named
        .iter()
        .filter(|(n, d)| !exists(n, d))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "HACKING.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_module_of_the_server_is_on_the_map() {
    let text = std::fs::read_to_string(root().join("HACKING.md")).unwrap();
    let src = root().join("crates/mailwarden/src");
    let mut unnamed = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let shown = if p.is_dir() {
            format!("{name}/")
        } else {
            name.clone()
        };
        if name == "lib.rs" {
            continue;
        }
        if !text.contains(&format!("src/{shown}")) {
            unnamed.push(shown);
        }
    }
    assert!(
        unnamed.is_empty(),
        "modules HACKING.md does not place: {unnamed:?}"
    );
}

/// The server's files import each other one way: no file reaches back to one that uses it.
/// An edge is a `super::NAME` in a file's code (tests aside), or, in `mod.rs`, a `NAME::`
/// of a sibling module; a `super::` item that is not a module is `mod.rs`'s.
#[test]
fn the_server_modules_form_no_import_cycle() {
    let dir = root().join("crates/mailwarden/src/server");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            (p.file_stem().unwrap().to_string_lossy().into_owned(), code)
        })
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let idents = |code: &str, prefix: &str| -> Vec<String> {
        code.match_indices(prefix)
            .map(|(i, _)| {
                code[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                    .collect::<String>()
            })
            .collect()
    };
    let mut edges: Vec<(String, String)> = Vec::new();
    for (name, code) in &files {
        if name == "mod" {
            for other in &names {
                if other != "mod" && code.contains(&format!("{other}::")) {
                    edges.push((name.clone(), other.clone()));
                }
            }
            continue;
        }
        for target in idents(code, "super::") {
            if target.starts_with('{') {
                // `use super::{a, b}`: take the names listed.
                let start = code.find(&format!("super::{target}")).unwrap() + 7;
                let list = &code[start + 1..start + code[start..].find('}').unwrap()];
                for item in list
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap())
                {
                    let to = if names.iter().any(|n| n == item) {
                        item
                    } else {
                        "mod"
                    };
                    edges.push((name.clone(), to.to_string()));
                }
                continue;
            }
            let to = if names.contains(&target) {
                target.as_str()
            } else {
                "mod"
            };
            edges.push((name.clone(), to.to_string()));
        }
    }
    edges.retain(|(a, b)| a != b);
    // Depth-first search for a cycle.
    fn visit(
        n: &str,
        edges: &[(String, String)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.iter().any(|d| d == n) {
            return None;
        }
        path.push(n.to_string());
        for (_, to) in edges.iter().filter(|(from, _)| from == n) {
            if let Some(c) = visit(to, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(n.to_string());
        None
    }
    let mut done = Vec::new();
    for n in &names {
        let cycle = visit(n, &edges, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "server/ import cycle: {:?}",
            cycle.unwrap()
        );
    }
    assert!(edges.len() > 10, "too few edges found: {edges:?}");
}
