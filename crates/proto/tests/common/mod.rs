//! What the SMTP and POP3 transcript runners share: escapes, reply matching, the files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `\r \n \t \\ \xNN` escapes of `R:` lines and scripted content.
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
                    i += 2;
                }
                c => panic!("bad escape \\{}", c as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Cut CRLF-terminated lines out of `partial` into `out`.
pub fn split_lines(partial: &mut String, out: &mut Vec<String>) {
    while let Some(i) = partial.find("\r\n") {
        let line = partial[..i].to_string();
        partial.drain(..i + 2);
        out.push(line);
    }
}

/// A runner the shared lines drive: `C:` (a client line, CRLF appended), `R:` (raw bytes,
/// escaped), `S:` (the server's next line), `X:` (the server closed). Any other tag is the
/// protocol's own.
pub trait Dialogue {
    fn feed(&mut self, bytes: &[u8]);
    fn output(&self) -> &[String];
    fn closed(&self) -> bool;
    /// Check a line of the protocol's own (`M:`, `D:`...); false: an unknown tag.
    fn check(&mut self, tag: &str, rest: &str, where_: &str) -> bool;
}

/// Play the dialogue lines (numbered from 0) of `path` against `r`, then require that every
/// line the server sent was checked.
pub fn play<'a>(r: &mut impl Dialogue, lines: impl Iterator<Item = (usize, &'a str)>, path: &Path) {
    let mut next = 0;
    for (n, line) in lines {
        let where_ = format!("{}:{}", path.display(), n + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_at(2);
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match tag {
            "C:" => {
                let mut b = rest.as_bytes().to_vec();
                b.extend_from_slice(b"\r\n");
                r.feed(&b);
            }
            "R:" => r.feed(&unescape(rest)),
            "S:" => expect_line(r.output(), &mut next, rest, &where_),
            "X:" => assert!(r.closed(), "{where_}: expected the server to close"),
            _ => assert!(
                r.check(tag, rest, &where_),
                "{where_}: unknown line `{line}`"
            ),
        }
    }
    all_checked(r.output(), next, path);
}

/// An `S:` line: the server's next line is `want`, or starts with it before a trailing `*`.
pub fn expect_line(out: &[String], next: &mut usize, want: &str, where_: &str) {
    let got = out.get(*next).unwrap_or_else(|| {
        panic!("{where_}: expected `{want}`, server sent nothing more (all: {out:?})")
    });
    let ok = match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => got == want,
    };
    assert!(ok, "{where_}: expected `{want}`, got `{got}`");
    *next += 1;
}

/// Every line the server sent was checked.
pub fn all_checked(out: &[String], next: usize, path: &Path) {
    assert_eq!(
        next,
        out.len(),
        "{}: unchecked server output: {:?}",
        path.display(),
        &out[next..]
    );
}

/// The transcripts in `tests/DIR` with extension `ext`, sorted; at least `min` of them.
pub fn files(dir: &str, ext: &str, min: usize) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "transcripts missing in {}",
        dir.display()
    );
    files
}
