//! Header-forgery and link heuristics (RFC 5322 §3.6 for the header rules): each finding is a
//! scored reason with a stable code. Spamware fills headers carelessly (the seeds' sample has
//! `From: "Yessenia Lakeshia"` with no address and `Message-ID: <...@1f41un723>`), and
//! phishing hides where its links go.

use crate::decision::{Finding, Kind};
use mail_parser::{DateTime, Message, MessageParser};

fn finding(kind: Kind, detail: impl Into<String>, score: f64) -> Finding {
    Finding::scored(kind, detail, score)
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

fn get<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The addr-spec of a From-like value, and the display name before it.
pub fn mailbox(value: &str) -> (Option<String>, String) {
    if let (Some(l), Some(r)) = (value.rfind('<'), value.rfind('>'))
        && l < r
    {
        let addr = value[l + 1..r].trim();
        let name = value[..l].trim().trim_matches('"').to_string();
        return (addr.contains('@').then(|| addr.to_string()), name);
    }
    let bare = value.trim();
    let ok = bare.contains('@') && !bare.contains([' ', '"', ',']);
    (ok.then(|| bare.to_string()), String::new())
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

fn is_fqdn(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    (d.starts_with('[') && d.ends_with(']'))
        || (d.contains('.')
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
            out.push(finding(Kind::FromMissing, "no From: field", 2.0));
            None
        }
        Some(v) => {
            let (addr, name) = mailbox(v);
            match &addr {
                None => out.push(finding(
                    Kind::FromNoAddress,
                    format!("From: {v:?} has no address"),
                    2.0,
                )),
                Some(a) => {
                    if let Some(shown) = address_in(&name)
                        && shown != a.to_ascii_lowercase()
                    {
                        out.push(finding(
                            Kind::DisplayNameAddress,
                            format!("From: shows {shown} but is {a}"),
                            2.0,
                        ));
                    }
                }
            }
            addr
        }
    };

    match get(f, "to") {
        None => out.push(finding(Kind::ToMissing, "no To: field", 0.5)),
        Some(v) if v.trim().is_empty() => out.push(finding(Kind::ToEmpty, "To: is empty", 1.0)),
        Some(_) => {}
    }

    match get(f, "date") {
        None => out.push(finding(Kind::DateMissing, "no Date: field", 1.0)),
        Some(v) => match DateTime::parse_rfc822(v) {
            None => out.push(finding(
                Kind::DateInvalid,
                format!("Date: {v:?} is not a date"),
                1.0,
            )),
            Some(d) => {
                let t = d.to_timestamp();
                if t > now + FUTURE_SECS {
                    out.push(finding(
                        Kind::DateFuture,
                        format!("Date: {v} is {} days ahead", (t - now) / 86_400),
                        1.5,
                    ));
                } else if t < now - PAST_SECS {
                    out.push(finding(
                        Kind::DatePast,
                        format!("Date: {v} is {} days old", (now - t) / 86_400),
                        1.0,
                    ));
                }
            }
        },
    }

    match get(f, "message-id") {
        None => out.push(finding(Kind::MessageIdMissing, "no Message-ID", 0.5)),
        Some(v) => {
            let inner = v.trim().strip_prefix('<').and_then(|x| x.strip_suffix('>'));
            match inner.and_then(|x| x.rsplit_once('@')) {
                Some((l, r)) if !l.is_empty() && !r.is_empty() => {
                    if !is_fqdn(r) {
                        out.push(finding(
                            Kind::MessageIdNotFqdn,
                            format!("Message-ID {v}: {r} is not a fully qualified domain"),
                            1.5,
                        ));
                    }
                }
                _ => out.push(finding(
                    Kind::MessageIdMalformed,
                    format!("Message-ID {v:?} is not <left@right>"),
                    1.5,
                )),
            }
        }
    }

    for name in SINGLE {
        let n = f.iter().filter(|(k, _)| k == name).count();
        if n > 1 {
            out.push(finding(
                Kind::DuplicateHeader,
                format!("{n} {name} fields (RFC 5322 allows one)"),
                1.5,
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
            1.0,
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
                2.0,
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
        let text = lower[gt + 1..close].trim();
        from = close;
        let Some(h) = tag.find("href=") else { continue };
        let href = tag[h + 5..].trim_start_matches(['"', '\'']);
        let Some(target) = url_hosts(href, 1).into_iter().next() else {
            continue;
        };
        // Visible text that looks like a URL or a bare domain.
        let shown = url_hosts(text, 1).into_iter().next().or_else(|| {
            let t = text.trim_end_matches('/');
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
            1.5,
        ));
    }
    if let Some((shown, target)) = mismatch {
        out.push(finding(
            Kind::LinkMismatch,
            format!("a link shows {shown} but goes to {target}"),
            2.5,
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
    fn to_empty_or_missing() {
        assert_eq!(codes(&with("To", Some("")), false), [Kind::ToEmpty]);
        assert_eq!(codes(&with("To", None), false), [Kind::ToMissing]);
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
            [Kind::MessageIdNotFqdn]
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
    }
}
