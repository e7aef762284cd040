//! The classifier's tokens: words and adjacent word pairs of the decoded text parts (HTML
//! turned to text by mail-parser, every charset mail-parser decodes: ISO-2022-JP, Shift_JIS
//! and EUC-JP included), Subject words, sender domains, link hosts, a few header values and
//! the header names present.
//!
//! Scripts written without spaces (Han, kana, Hangul) have no words to split on: a run of
//! them becomes overlapping character pairs ("未払い" gives "未払", "払い"), as SpamAssassin
//! and rspamd do, so "【緊急】未払い" is not one long, unseen "word".
//!
//! Security: the input is a stranger's message. At most `MAX_BYTES` of it and of its decoded
//! text are read, and at most `MAX_HOSTS` link hosts kept; every step is linear in that.

use crate::checks::headers::{self, Parsed};
use std::collections::HashSet;

/// Bytes of a message looked at, and of its decoded text: enough for any letter, not for
/// attachments, and a bound on the work a message can cost (tokens are allocated).
pub(super) const MAX_BYTES: usize = 256 * 1024;
/// Link hosts turned into tokens at most.
const MAX_HOSTS: usize = 200;

/// A character of a script written without spaces between words.
fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF   // hiragana, katakana
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xF900..=0xFAFF // compatibility ideographs
        | 0xFF66..=0xFF9F // half-width katakana
        | 0xAC00..=0xD7AF // Hangul syllables
    )
}

/// A word, or the character pairs of a run of unspaced script inside it.
fn word(w: &str, prefix: &str, out: &mut HashSet<String>) {
    if w.chars().any(unspaced) {
        let mut run: Vec<char> = Vec::new();
        let mut rest = String::new();
        let flush_run = |run: &mut Vec<char>, out: &mut HashSet<String>| {
            match run.len() {
                0 => {}
                1 => {
                    out.insert(format!("{prefix}{}", run[0]));
                }
                _ => {
                    for p in run.windows(2) {
                        out.insert(format!("{prefix}{}{}", p[0], p[1]));
                    }
                }
            }
            run.clear();
        };
        for c in w.chars() {
            if unspaced(c) {
                if !rest.is_empty() {
                    word(&std::mem::take(&mut rest), prefix, out);
                }
                run.push(c);
            } else {
                flush_run(&mut run, out);
                rest.push(c);
            }
        }
        flush_run(&mut run, out);
        if !rest.is_empty() {
            word(&rest, prefix, out);
        }
        return;
    }
    let n = w.chars().count();
    if n < 3 {
        return;
    }
    if n > 20 {
        // Long strings (encodings, hashes) say little one by one; their shape says more.
        let first = w.chars().next().unwrap_or('x');
        out.insert(format!("{prefix}skip:{first}{}", n / 10 * 10));
        return;
    }
    out.insert(format!("{prefix}{}", w.to_lowercase()));
}

fn words(text: &str, prefix: &str, out: &mut HashSet<String>) {
    for w in text.split(|c: char| !(c.is_alphanumeric() || "$'-!".contains(c))) {
        word(w.trim_matches(|c: char| "'-".contains(c)), prefix, out);
    }
}

/// Adjacent word pairs: "click here", "remove you" say more together than apart. Unspaced
/// runs are left to [`word`]'s character pairs.
fn bigrams(text: &str, out: &mut HashSet<String>) {
    let mut prev: Option<String> = None;
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        let n = w.chars().count();
        if !(2..=20).contains(&n) || w.chars().any(unspaced) {
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
    tokens_of(&Parsed::new(strip_mbox(raw), MAX_BYTES, MAX_HOSTS))
}

/// `raw` without an mbox `From ` line in front.
pub fn strip_mbox(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ") {
        memchr::memchr(b'\n', raw).map_or(raw, |i| &raw[i + 1..])
    } else {
        raw
    }
}

/// `Received:` fields turned into tokens, newest first, at most.
const MAX_RELAYS: usize = 6;

/// The hosts and networks a `Received:` field names: each host's last two labels, each
/// IPv4 address's /24 and /16. Relays a message passed through say much about who sent it.
fn received(value: &str, out: &mut HashSet<String>) {
    let head = value.rsplit_once(';').map_or(value, |(h, _)| h);
    for t in head.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
        let t = t.trim_matches('.');
        if t.len() < 4 || !t.contains('.') {
            continue;
        }
        if t.parse::<std::net::Ipv4Addr>().is_ok() {
            let parts: Vec<&str> = t.split('.').collect();
            out.insert(format!("rcvd:ip:{}.{}.{}", parts[0], parts[1], parts[2]));
            out.insert(format!("rcvd:ip:{}.{}", parts[0], parts[1]));
        } else if t.chars().any(|c| c.is_ascii_alphabetic()) {
            let labels: Vec<&str> = t.rsplit('.').take(2).collect();
            out.insert(format!(
                "rcvd:{}.{}",
                labels[1].to_ascii_lowercase(),
                labels[0].to_ascii_lowercase()
            ));
        }
    }
}

/// Fields a receiver adds (our verdicts, delivery's Return-Path): a message read back from a
/// mailbox to be learned must give the tokens it gave when it was scored.
fn added_on_receipt(name: &str) -> bool {
    matches!(
        name,
        "return-path" | "delivered-to" | "authentication-results"
    ) || name.starts_with("x-mailwarden-")
        || name.starts_with("x-spam-")
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
    let msg = p.msg.as_ref();
    let mut relays = 0;
    for (name, value) in &p.fields {
        if added_on_receipt(name) {
            continue;
        }
        out.insert(format!("h:{name}"));
        match name.as_str() {
            // Decoded (RFC 2047) when the message parsed.
            "subject" => match msg.and_then(|m| m.subject()) {
                Some(s) => words(s, "s:", &mut out),
                None => words(value, "s:", &mut out),
            },
            "from" | "reply-to" | "return-path" => {
                if let Some(d) = value
                    .rsplit_once('@')
                    .map(|(_, d)| d.trim_end_matches(['>', ' ', '"']).to_lowercase())
                {
                    out.insert(format!("{name}:{d}"));
                }
                words(value, &format!("{name}:"), &mut out);
            }
            "message-id" => {
                if let Some((_, right)) = headers::message_id(value) {
                    out.insert(format!("mid:{}", right.to_lowercase()));
                }
            }
            "received" => {
                relays += 1;
                if relays <= MAX_RELAYS {
                    received(value, &mut out);
                }
            }
            "content-type" | "x-mailer" | "user-agent" | "content-transfer-encoding" => {
                let v = value.split(';').next().unwrap_or("").trim().to_lowercase();
                out.insert(format!("{name}:{v}"));
            }

            _ => {}
        }
    }
    let Some(msg) = msg else {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unspaced_scripts_become_character_pairs() {
        let mut t = HashSet::new();
        words("【緊急】未払い料金 – pay now", "", &mut t);
        for want in ["緊急", "未払", "払い", "い料", "料金", "pay", "now"] {
            assert!(t.contains(want), "{want}: {t:?}");
        }
        assert!(!t.iter().any(|x| x.starts_with("skip:")), "{t:?}");
        // A run mixed with Latin letters keeps both.
        let mut t = HashSet::new();
        words("当選ABC123賞金", "", &mut t);
        for want in ["当選", "abc123", "賞金"] {
            assert!(t.contains(want), "{want}: {t:?}");
        }
    }

    #[test]
    fn a_megabyte_of_distinct_kanji_costs_at_most_the_byte_budget() {
        // Characters in a scrambled order, so nearly every pair is new: the worst case for
        // character pairs.
        let mut x = 88_172_645_463_325_252u64;
        let text: String = (0..400_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from_u32(0x4E00 + (x % 20_000) as u32).unwrap()
            })
            .collect();
        let raw = format!("From: a@b.test\r\nSubject: x\r\n\r\n{text}\r\n");
        let t = tokens(raw.as_bytes());
        // Three bytes a character: no more pairs than the budget holds characters.
        assert!(t.len() <= MAX_BYTES / 3 + 16, "{}", t.len());
        assert!(t.len() > 50_000, "{}", t.len());
    }

    #[test]
    fn an_encoded_subject_is_tokenised_decoded() {
        // "緊急" in ISO-2022-JP, base64, as RFC 2047 writes it.
        let raw = b"From: a@b.test\r\nSubject: =?ISO-2022-JP?B?GyRCNls1XhsoQg==?=\r\n\r\nx\r\n";
        let t = tokens(raw);
        assert!(t.contains("s:緊急"), "{t:?}");
    }
}
