//! Header-forgery and link heuristics (RFC 5322 §3.6 for the header rules): each finding is a
//! scored reason with a stable code. Spamware fills headers carelessly (the seeds' sample has
//! `From: "Yessenia Lakeshia"` with no address and `Message-ID: <...@1f41un723>`), and
//! phishing hides where its links go.

use crate::decision::{Finding, Kind};
use mail_parser::{DateTime, Message, MessageParser};

/// A heuristic's finding, at its built-in weight (`scoring::content` weighs it).
fn finding(kind: Kind, detail: impl Into<String>) -> Finding {
    Finding::scored(kind, detail, super::weights::builtin(kind))
}

/// Fields RFC 5322 §3.6 allows at most once.
const SINGLE: [&str; 11] = [
    "date",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
];

/// How far a Date may be ahead of us, and behind, before it is suspicious.
const FUTURE_SECS: i64 = 86_400;
const PAST_SECS: i64 = 30 * 86_400;

/// A message parsed once for all the content checks (heuristics, links, the classifier):
/// its header fields and, when it parses, the MIME structure of its first `max_scan_bytes`.
pub struct Parsed<'a> {
    pub fields: Vec<(String, String)>,
    pub msg: Option<Message<'a>>,
    /// Distinct link hosts collected at most (`limits.max_link_hosts`).
    pub max_hosts: usize,
}

/// Header fields kept for the heuristics at most; `[limits]` refuses messages with more
/// before they get here, and `explain` reads files no limit checked.
const MAX_FIELDS: usize = 10_000;

impl<'a> Parsed<'a> {
    /// Parse the first `max_scan_bytes` of `raw`, keeping at most `max_hosts` link hosts.
    pub fn new(raw: &'a [u8], max_scan_bytes: usize, max_hosts: usize) -> Parsed<'a> {
        let scanned = &raw[..raw.len().min(max_scan_bytes)];
        Parsed {
            fields: crate::header::unfolded(raw).take(MAX_FIELDS).collect(),
            msg: MessageParser::default().parse(scanned),
            max_hosts,
        }
    }

    /// With `[limits]`'s defaults.
    pub fn with_defaults(raw: &'a [u8]) -> Parsed<'a> {
        let l = crate::config::Limits::default();
        Parsed::new(raw, l.max_scan_bytes.0 as usize, l.max_link_hosts)
    }
}

/// The header section as (lowercase name, unfolded value) pairs.
pub fn fields(raw: &[u8]) -> Vec<(String, String)> {
    crate::header::unfolded(raw).collect()
}

/// When a stored message arrived (Unix time): what "now" was for it, so date rules see what
/// they saw then. The newest `Received:` field's date; without one, `Delivery-Date:` (what
/// mbox writers add), then `Date:` itself (no date rule fires).
pub fn received_time(raw: &[u8]) -> Option<i64> {
    let parse = |v: &str| DateTime::parse_rfc822(v.trim()).map(|d| d.to_timestamp());
    let mut delivery = None;
    let mut date = None;
    for (n, v) in crate::header::unfolded(raw) {
        match n.as_str() {
            "received" => {
                if let Some(t) = v.rsplit_once(';').and_then(|(_, d)| parse(d)) {
                    return Some(t);
                }
            }
            "delivery-date" if delivery.is_none() => delivery = parse(&v).or_else(|| ctime(&v)),
            "date" if date.is_none() => date = parse(&v),
            _ => {}
        }
    }
    delivery.or(date)
}

/// A ctime(3) date (`Mon Sep  9 17:37:05 2002`), as mbox `Delivery-Date:` fields have it.
fn ctime(v: &str) -> Option<i64> {
    let p: Vec<&str> = v.split_whitespace().collect();
    let [wd, mon, day, time, year] = p[..] else {
        return None;
    };
    DateTime::parse_rfc822(&format!("{wd}, {day} {mon} {year} {time} +0000"))
        .map(|d| d.to_timestamp())
}

fn get<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The mailboxes of an address field (`From:`, `To:`, `Reply-To:`), read as RFC 5322 §3.4
/// and §4.4 do by mail-parser: comments (`root@example.org (Cron Daemon)`), groups
/// (`undisclosed-recipients:;`), quoted and encoded display names, obsolete routes. Each is
/// (display name, addr-spec); the addr-spec is `None` when it has no `@`.
pub fn mailboxes(value: &str) -> Vec<(String, Option<String>)> {
    use mail_parser::{HeaderValue, parsers::MessageStream};
    // The parser reads a field's value up to its line end.
    let line = format!("{}\n", value.replace(['\r', '\n'], " "));
    let one = |a: &mail_parser::Addr<'_>| {
        let addr = a
            .address
            .as_deref()
            .map(str::trim)
            // An obsolete route (`<@relay.test:bob@x.test>`, RFC 5322 §4.4) is not part of
            // the address.
            .map(|x| match x.strip_prefix('@') {
                Some(routed) => routed.rsplit_once(':').map_or(x, |(_, a)| a),
                None => x,
            })
            .filter(|x| {
                x.rsplit_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            })
            .map(str::to_string);
        (a.name.as_deref().unwrap_or("").trim().to_string(), addr)
    };
    match MessageStream::new(line.as_bytes()).parse_address() {
        HeaderValue::Address(mail_parser::Address::List(l)) => l.iter().map(one).collect(),
        HeaderValue::Address(mail_parser::Address::Group(g)) => {
            g.iter().flat_map(|g| g.addresses.iter().map(one)).collect()
        }
        _ => Vec::new(),
    }
}

/// The first addr-spec of a From-like value, and its display name (or the first display
/// name, when no mailbox has an address).
pub fn mailbox(value: &str) -> (Option<String>, String) {
    let all = mailboxes(value);
    if let Some((name, addr)) = all.iter().find(|(_, a)| a.is_some()) {
        return (addr.clone(), name.clone());
    }
    (
        None,
        all.into_iter().next().map(|(n, _)| n).unwrap_or_default(),
    )
}

/// The id of a `Message-ID:` value: `<left@right>`, with any comments or folding around it
/// (RFC 5322 §3.6.4 and the obsolete forms of §4.5.4: a quoted left part, spaces around
/// `@`). `None` when there is no bracketed id.
pub fn message_id(value: &str) -> Option<(String, String)> {
    let l = value.find('<')?;
    let r = l + value[l..].find('>')?;
    let (left, right) = value[l + 1..r].rsplit_once('@')?;
    let (left, right) = (left.trim(), right.trim());
    (!left.is_empty() && !right.is_empty()).then(|| (left.to_string(), right.to_string()))
}

fn domain_of(addr: &str) -> Option<String> {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
}

/// An address-looking token inside a display name.
fn address_in(name: &str) -> Option<String> {
    name.split(|c: char| c.is_whitespace() || "()<>\"'[],;".contains(c))
        .find(|t| {
            t.contains('@')
                && t.rsplit_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        })
        .map(|t| t.to_ascii_lowercase())
}

/// A domain name (one label is enough: legitimate mailers name their Message-IDs after a
/// machine's bare hostname as often as spamware does, so only a right part that is no name at
/// all tells), or an address literal.
fn is_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    (d.starts_with('[') && d.ends_with(']'))
        || (!d.is_empty()
            && mailwarden_proto::address::domain(d, false).is_ok()
            && !d
                .rsplit('.')
                .next()
                .unwrap_or("")
                .bytes()
                .all(|b| b.is_ascii_digit()))
}

/// Header rules. `now` is Unix time; `ours` our hostname (a Received line claiming to be from
/// us was not written by us: ours is added after the checks); `from_has_dmarc` says whether
/// the From domain publishes a DMARC policy.
pub fn check(p: &Parsed<'_>, now: i64, ours: &str, from_has_dmarc: bool) -> Vec<Finding> {
    let f = &p.fields;
    let mut out = Vec::new();

    let from_addr = match get(f, "from") {
        None => {
            out.push(finding(Kind::FromMissing, "no From: field"));
            None
        }
        Some(v) => {
            let (addr, name) = mailbox(v);
            match &addr {
                None => out.push(finding(
                    Kind::FromNoAddress,
                    format!("From: {v:?} has no address"),
                )),
                Some(a) => {
                    if let Some(shown) = address_in(&name)
                        && shown != a.to_ascii_lowercase()
                    {
                        out.push(finding(
                            Kind::DisplayNameAddress,
                            format!("From: shows {shown} but is {a}"),
                        ));
                    }
                }
            }
            addr
        }
    };

    // No To: at all is how Bcc-only mail (lists, announcements) comes: legitimate mail has it
    // more often than spam, so it says nothing (`headers.to_missing` is no longer found). An
    // empty group (`undisclosed-recipients:;`) is how RFC 5322 writes it: not empty either.
    if get(f, "to").is_some_and(|v| v.trim().is_empty()) {
        out.push(finding(Kind::ToEmpty, "To: is empty"));
    }

    match get(f, "date") {
        None => out.push(finding(Kind::DateMissing, "no Date: field")),
        Some(v) => match DateTime::parse_rfc822(v) {
            None => out.push(finding(
                Kind::DateInvalid,
                format!("Date: {v:?} is not a date"),
            )),
            Some(d) => {
                let t = d.to_timestamp();
                if t > now + FUTURE_SECS {
                    out.push(finding(
                        Kind::DateFuture,
                        format!("Date: {v} is {} days ahead", (t - now) / 86_400),
                    ));
                } else if t < now - PAST_SECS {
                    out.push(finding(
                        Kind::DatePast,
                        format!("Date: {v} is {} days old", (now - t) / 86_400),
                    ));
                }
            }
        },
    }

    match get(f, "message-id") {
        None => out.push(finding(Kind::MessageIdMissing, "no Message-ID")),
        Some(v) => match message_id(v) {
            Some((_, r)) => {
                if !is_domain(&r) {
                    out.push(finding(
                        Kind::MessageIdNotFqdn,
                        format!("Message-ID {v}: {r:?} is not a domain name"),
                    ));
                }
            }
            None => out.push(finding(
                Kind::MessageIdMalformed,
                format!("Message-ID {v:?} is not <left@right>"),
            )),
        },
    }

    for name in SINGLE {
        let n = f.iter().filter(|(k, _)| k == name).count();
        if n > 1 {
            out.push(finding(
                Kind::DuplicateHeader,
                format!("{n} {name} fields (RFC 5322 allows one)"),
            ));
        }
    }

    if from_has_dmarc
        && let (Some(fd), Some(rt)) = (from_addr.as_deref().and_then(domain_of), get(f, "reply-to"))
        && let Some(rd) = mailbox(rt).0.as_deref().and_then(domain_of)
        && rd != fd
        && !rd.ends_with(&format!(".{fd}"))
        && !fd.ends_with(&format!(".{rd}"))
    {
        out.push(finding(
            Kind::ReplyToElsewhere,
            format!("Reply-To goes to {rd}, From is {fd} (which has a DMARC policy)"),
        ));
    }

    let ours = ours.to_ascii_lowercase();
    for (_, v) in f.iter().filter(|(n, _)| n == "received") {
        let lv = v.to_ascii_lowercase();
        if lv
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "by" && w[1].trim_end_matches([';', '.']) == ours)
        {
            out.push(finding(
                Kind::ForgedReceived,
                format!("a Received field claims our host: {}", clip(v)),
            ));
            break;
        }
    }
    out
}

/// The header section (the first `head_end` bytes of `raw`) with `tag` put in front of its
/// Subject (a Subject is added if it has none). Breaks DKIM signatures over Subject, which is
/// why `scoring.subject_tag` is off by default.
pub fn tag_subject(raw: &[u8], head_end: usize, tag: &str) -> Vec<u8> {
    let end = head_end.min(raw.len());
    let head = &raw[..end];
    if let Some(f) = crate::header::fields(head)
        .find(|f| f.raw.len() >= 8 && f.raw[..8].eq_ignore_ascii_case(b"subject:"))
    {
        let mut v = f.start + 8;
        while v < end && (raw[v] == b' ' || raw[v] == b'\t') {
            v += 1;
        }
        let mut out = raw[..v].to_vec();
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&raw[v..end]);
        return out;
    }
    let mut out = format!("Subject: {tag}\r\n").into_bytes();
    out.extend_from_slice(head);
    out
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

/// The host of a URL that starts at `s` (after the scheme), lowercased.
fn url_host(s: &str) -> String {
    let end = s
        .find(|c: char| "/?#:\"'<> \t\r\n)".contains(c))
        .unwrap_or(s.len());
    let host = &s[..end];
    // `[v6]` literals keep their brackets; `host:port` was cut at the colon above.
    let host = if s.starts_with('[') {
        s.find(']').map_or(host, |i| &s[..=i])
    } else {
        host
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Hosts of the `http(s)://` URLs in `text`, in order, each once, at most `max` of them.
/// One pass per scheme and a set for what was seen: linear in `text` however many links it
/// holds.
pub fn url_hosts(text: &str, max: usize) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for scheme in ["http://", "https://"] {
        let mut from = 0;
        while out.len() < max
            && let Some(i) = lower[from..].find(scheme)
        {
            let start = from + i + scheme.len();
            let h = url_host(&lower[start..]);
            if !h.is_empty() && seen.insert(h.clone()) {
                out.push(h);
            }
            from = start;
        }
    }
    out
}

fn is_ip_host(h: &str) -> bool {
    h.parse::<std::net::Ipv4Addr>().is_ok() || (h.starts_with('[') && h.ends_with(']'))
}

/// The registrable-ish part for comparing two hosts: the last two labels.
fn base(h: &str) -> String {
    let labels: Vec<&str> = h.trim_start_matches("www.").rsplit('.').take(2).collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".")
}

/// Text without its HTML tags.
fn visible(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// The first anchor whose visible text names another domain than its `href`. Each search
/// starts where the last anchor ended, so the scan is linear.
fn link_mismatch(html: &str) -> Option<(String, String)> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<a ") {
        let start = from + i;
        let Some(gt) = lower[start..].find('>').map(|g| start + g) else {
            break;
        };
        let Some(close) = lower[gt..].find("</a>").map(|c| gt + c) else {
            break;
        };
        let tag = &lower[start..gt];
        // What a reader sees: the anchor's text without its tags (an image's `src` is not
        // shown, and newsletters wrap ads' images in links to the advertiser).
        let text = visible(&lower[gt + 1..close]);
        let text = text.trim();
        from = close;
        let Some(h) = tag.find("href=") else { continue };
        let href = tag[h + 5..].trim_start_matches(['"', '\'']);
        let Some(target) = url_hosts(href, 1).into_iter().next() else {
            continue;
        };
        // Visible text that looks like a URL or a bare domain.
        let shown = url_hosts(text, 1).into_iter().next().or_else(|| {
            let t = text.split(['/', '?', '#']).next().unwrap_or("");
            (t.starts_with("www.") && !t.contains(char::is_whitespace)).then(|| t.to_string())
        });
        if let Some(shown) = shown
            && base(&shown) != base(&target)
        {
            return Some((shown, target));
        }
    }
    None
}

/// Link rules over the decoded text and HTML parts; also returns every URL host, for URI
/// block lists.
pub fn check_links(p: &Parsed<'_>) -> (Vec<Finding>, Vec<String>) {
    let Some(msg) = &p.msg else {
        return (Vec::new(), Vec::new());
    };
    let max = p.max_hosts;
    let mut hosts: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |found: Vec<String>, hosts: &mut Vec<String>| {
        for h in found {
            if hosts.len() < max && seen.insert(h.clone()) {
                hosts.push(h);
            }
        }
    };
    let mut out = Vec::new();
    let mut mismatch = None;
    for i in 0.. {
        let Some(t) = msg.body_text(i) else { break };
        add(url_hosts(&t, max), &mut hosts);
    }
    for i in 0.. {
        let Some(h) = msg.body_html(i) else { break };
        add(url_hosts(&h, max), &mut hosts);
        if mismatch.is_none() {
            mismatch = link_mismatch(&h);
        }
    }
    if let Some(ip) = hosts.iter().find(|h| is_ip_host(h)) {
        out.push(finding(
            Kind::IpUrl,
            format!("a link goes to a bare address: {ip}"),
        ));
    }
    if let Some((shown, target)) = mismatch {
        out.push(finding(
            Kind::LinkMismatch,
            format!("a link shows {shown} but goes to {target}"),
        ));
    }
    hosts.retain(|h| !is_ip_host(h));
    (out, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1795435200; // 2026-11-23 12:00 UTC
    const GOOD: &str = "From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\n\
        Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@mail.sender.test>\r\n\
        Subject: hi\r\nReply-To: alice@lists.sender.test\r\n\
        Received: from x by mx.sender.test; Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n";

    fn codes(raw: &str, dmarc: bool) -> Vec<Kind> {
        check(
            &Parsed::with_defaults(raw.as_bytes()),
            NOW,
            "mx.example.test",
            dmarc,
        )
        .into_iter()
        .map(|f| f.kind)
        .collect()
    }

    fn with(field: &str, value: Option<&str>) -> String {
        let mut out = String::new();
        let mut replaced = false;
        for line in GOOD.split_inclusive("\r\n") {
            if line
                .to_ascii_lowercase()
                .starts_with(&format!("{}:", field.to_ascii_lowercase()))
            {
                if let Some(v) = value {
                    out.push_str(&format!("{field}: {v}\r\n"));
                }
                replaced = true;
            } else {
                out.push_str(line);
            }
        }
        assert!(replaced, "{field}");
        out
    }

    #[test]
    fn the_header_section_ends_at_its_first_empty_line_whatever_the_line_endings() {
        // LF-only headers, then a CRLF body holding what looks like a field: not a header.
        let raw = b"From: a@x.test\nSubject: hi\n\nbody\r\nX-Forged: yes\r\n\r\nmore\r\n";
        let names: Vec<String> = crate::header::unfolded(raw).map(|(n, _)| n).collect();
        assert_eq!(names, ["from", "subject"]);
    }

    #[test]
    fn a_well_formed_message_has_no_findings() {
        assert_eq!(codes(GOOD, true), Vec::<Kind>::new());
    }

    #[test]
    fn from_without_an_address() {
        assert_eq!(
            codes(&with("From", Some("\"Yessenia Lakeshia\"")), false),
            [Kind::FromNoAddress]
        );
        assert_eq!(
            codes(&with("From", Some("alice@sender.test")), false),
            Vec::<Kind>::new()
        );
        assert_eq!(codes(&with("From", None), false), [Kind::FromMissing]);
    }

    #[test]
    fn to_empty_but_not_missing_nor_an_empty_group() {
        assert_eq!(codes(&with("To", Some("")), false), [Kind::ToEmpty]);
        assert_eq!(codes(&with("To", None), false), Vec::<Kind>::new());
        assert_eq!(
            codes(&with("To", Some("undisclosed-recipients:;")), false),
            Vec::<Kind>::new()
        );
    }

    #[test]
    fn addresses_are_read_as_rfc_5322_writes_them() {
        // The comment form, a quoted name with an address inside, an encoded name, a group,
        // an obsolete route.
        for (v, addr, name) in [
            (
                "root@example.org (Cron Daemon)",
                "root@example.org",
                "Cron Daemon",
            ),
            ("\"Doe, Jane\" <jane@x.test>", "jane@x.test", "Doe, Jane"),
            ("=?utf-8?q?J=C3=BCrgen?= <j@x.test>", "j@x.test", "Jürgen"),
            ("friends: a@x.test, b@y.test;", "a@x.test", ""),
            ("<@relay.test:bob@x.test>", "bob@x.test", ""),
        ] {
            assert_eq!(
                mailbox(v),
                (Some(addr.to_string()), name.to_string()),
                "{v}"
            );
        }
        assert_eq!(mailbox("\"Yessenia Lakeshia\"").0, None);
        // A From listing twenty thousand mailboxes is read once, and its first one counts.
        let many: Vec<String> = (0..20_000).map(|i| format!("u{i} <u{i}@x.test>")).collect();
        assert_eq!(mailbox(&many.join(", ")).0.as_deref(), Some("u0@x.test"));
        assert_eq!(mailboxes("a@x.test, Bob <b@y.test>").len(), 2);
        assert_eq!(
            codes(&with("From", Some("root@example.org (Cron Daemon)")), false),
            Vec::<Kind>::new()
        );
    }

    #[test]
    fn date_missing_invalid_future_past() {
        assert_eq!(codes(&with("Date", None), false), [Kind::DateMissing]);
        assert_eq!(
            codes(&with("Date", Some("yesterday")), false),
            [Kind::DateInvalid]
        );
        assert_eq!(
            codes(
                &with("Date", Some("Mon, 23 Nov 2037 10:00:00 +0000")),
                false
            ),
            [Kind::DateFuture]
        );
        assert_eq!(
            codes(
                &with("Date", Some("Tue, 17 May 2011 14:17:47 -0500")),
                false
            ),
            [Kind::DatePast]
        );
        assert_eq!(
            codes(
                &with("Date", Some("Sun, 22 Nov 2026 23:00:00 -0500")),
                false
            ),
            Vec::<Kind>::new()
        );
    }

    #[test]
    fn message_id_rules() {
        assert_eq!(
            codes(&with("Message-ID", None), false),
            [Kind::MessageIdMissing]
        );
        assert_eq!(
            codes(
                &with(
                    "Message-ID",
                    Some("<201105171916.8F06B8E1441DD3CA51BF4BA1@1f41un723>")
                ),
                false
            ),
            Vec::<Kind>::new(),
            "a bare hostname is a name"
        );
        assert_eq!(
            codes(&with("Message-ID", Some("<x@.>")), false),
            [Kind::MessageIdNotFqdn]
        );
        assert_eq!(
            codes(&with("Message-ID", Some("<x@bad_host!>")), false),
            [Kind::MessageIdNotFqdn]
        );
        // Comments and folding around the id (RFC 5322 §3.6.4, obsolete forms of §4.5.4).
        assert_eq!(
            codes(
                &with("Message-ID", Some("<a.b@c.test> (added by relay)")),
                false
            ),
            Vec::<Kind>::new()
        );
        assert_eq!(
            codes(&with("Message-ID", Some("<\"quoted id\"@c.test>")), false),
            Vec::<Kind>::new()
        );
        assert_eq!(
            codes(&with("Message-ID", Some("no-brackets")), false),
            [Kind::MessageIdMalformed]
        );
        assert_eq!(
            codes(&with("Message-ID", Some("<x@[192.0.2.1]>")), false),
            Vec::<Kind>::new()
        );
    }

    #[test]
    fn duplicated_single_fields() {
        let dup = GOOD.replacen("Subject: hi\r\n", "Subject: hi\r\nSubject: again\r\n", 1);
        assert_eq!(codes(&dup, false), [Kind::DuplicateHeader]);
        let received_twice = GOOD.replacen("Received:", "Received: from a by b; x\r\nReceived:", 1);
        assert_eq!(codes(&received_twice, false), Vec::<Kind>::new());
    }

    #[test]
    fn display_name_with_another_address() {
        assert_eq!(
            codes(
                &with("From", Some("\"ceo@bank.test\" <x@evil.test>")),
                false
            ),
            [Kind::DisplayNameAddress]
        );
        assert_eq!(
            codes(
                &with("From", Some("\"alice@sender.test\" <Alice@sender.test>")),
                false
            ),
            Vec::<Kind>::new()
        );
    }

    #[test]
    fn reply_to_elsewhere_only_with_dmarc() {
        let raw = with("Reply-To", Some("collect@elsewhere.test"));
        assert_eq!(codes(&raw, true), [Kind::ReplyToElsewhere]);
        assert_eq!(codes(&raw, false), Vec::<Kind>::new());
        // A subdomain of the From domain is the same sender.
        assert_eq!(codes(GOOD, true), Vec::<Kind>::new());
    }

    #[test]
    fn received_claiming_our_host() {
        let raw = GOOD.replacen("by mx.sender.test", "by mx.example.test", 1);
        assert_eq!(codes(&raw, false), [Kind::ForgedReceived]);
    }

    #[test]
    fn subject_tags() {
        let raw = b"From: a@b\r\nSubject:  hello\r\n\r\nSubject: body\r\n";
        let t = tag_subject(raw, crate::header::end(raw), "[SPAM]");
        assert_eq!(t, b"From: a@b\r\nSubject:  [SPAM] hello\r\n");
        let raw = b"From: a@b\r\n\r\nbody\r\n";
        let t = tag_subject(raw, crate::header::end(raw), "[SPAM]");
        assert_eq!(t, b"Subject: [SPAM]\r\nFrom: a@b\r\n");
    }

    fn link_codes(body: &str, html: bool) -> (Vec<Kind>, Vec<String>) {
        let ct = if html { "text/html" } else { "text/plain" };
        let raw = format!("From: a@b.test\r\nContent-Type: {ct}\r\n\r\n{body}\r\n");
        let (f, hosts) = check_links(&Parsed::with_defaults(raw.as_bytes()));
        (f.into_iter().map(|f| f.kind).collect(), hosts)
    }

    #[test]
    fn bare_ip_links() {
        assert_eq!(
            link_codes("see http://192.0.2.7/login", false).0,
            [Kind::IpUrl]
        );
        let (codes, hosts) = link_codes("see https://www.shop.test/a?b", false);
        assert!(codes.is_empty());
        assert_eq!(hosts, ["www.shop.test"]);
    }

    #[test]
    fn link_text_naming_another_domain() {
        let bad = r#"<a href="http://evil.test/x">https://www.bank.test/login</a>"#;
        assert_eq!(link_codes(bad, true).0, [Kind::LinkMismatch]);
        let ok = r#"<a href="https://login.bank.test/x">https://www.bank.test/login</a> <a href="http://evil.test/">click here</a>"#;
        assert!(link_codes(ok, true).0.is_empty());
        // An image's address is not what the reader sees; a bare domain's path is not its
        // name.
        let image = r#"<a href="http://shop.test/"><img src="http://cdn.test/ad.gif"></a>"#;
        assert!(link_codes(image, true).0.is_empty());
        let path = r#"<a href="http://www.shop.test/">www.shop.test/offers</a>"#;
        assert!(link_codes(path, true).0.is_empty());
    }
}
