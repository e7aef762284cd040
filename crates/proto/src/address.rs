//! Strict envelope address parsing (RFC 5321 §4.1.2, §4.5.3.1; RFC 6531 for UTF-8).
//!
//! Security: routing decisions use only the parsed domain of the final mailbox. The local part is
//! never interpreted for routing, so `%`, `!` and quoted `@` stay inert. Source routes are
//! parsed and dropped as RFC 5321 Appendix C asks. Trailing dots, empty labels and malformed
//! literals are syntax errors. Address literals are kept typed so policy can refuse them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including the angle brackets (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name, lowercased, without a trailing dot. May hold U-labels under SMTPUTF8.
    Name(String),
    /// `[1.2.3.4]` or `[IPv6:...]`.
    Literal(IpAddr),
}

impl Domain {
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Domain::Name(n) => Some(n),
            Domain::Literal(_) => None,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(IpAddr::V4(a)) => write!(f, "[{a}]"),
            Domain::Literal(IpAddr::V6(a)) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// `local@domain`. `local` holds the decoded local part (quotes removed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// True when the local part needs quoting to be sent again on the wire.
    pub fn local_needs_quotes(&self) -> bool {
        !is_dot_string(self.local.as_bytes(), true)
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.to_string().is_ascii()
    }

    /// Lowercased `local@domain`, the key used for account and alias lookups.
    pub fn key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local_needs_quotes() {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// MAIL FROM: either the null reverse-path `<>` or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// RCPT TO: a mailbox, or the bare `<Postmaster>` every server must accept (RFC 5321 §4.1.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("Postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Not enclosed in `<...>`, or junk around it.
    NoBrackets,
    /// The path is longer than RFC 5321 allows.
    TooLong,
    /// A malformed local part.
    LocalPart,
    /// A malformed domain (empty label, trailing dot, bad characters, ...).
    Domain,
    /// A malformed address literal.
    Literal,
    /// A malformed source route.
    Route,
    /// Non-ASCII without SMTPUTF8 (RFC 6531 §3.4).
    NeedsUtf8,
    /// The null path where a mailbox is required.
    Null,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::NoBrackets => "path not enclosed in angle brackets",
            AddressError::TooLong => "path too long",
            AddressError::LocalPart => "malformed local part",
            AddressError::Domain => "malformed domain",
            AddressError::Literal => "malformed address literal",
            AddressError::Route => "malformed source route",
            AddressError::NeedsUtf8 => "non-ASCII address without SMTPUTF8",
            AddressError::Null => "null path not allowed here",
        })
    }
}

/// Split `<path> params...` (the text after `FROM:` / `TO:`) into the path and the rest.
/// Returns the path including its brackets.
pub fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start_matches(' ');
    if !arg.starts_with('<') {
        return Err(AddressError::NoBrackets);
    }
    // Find the closing '>' outside a quoted string.
    let bytes = arg.as_bytes();
    let mut i = 1;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let (path, rest) = arg.split_at(i + 1);
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return Err(AddressError::NoBrackets);
                }
                return Ok((path, rest.trim_start_matches(' ')));
            }
            _ => {}
        }
        i += 1;
    }
    Err(AddressError::NoBrackets)
}

pub fn parse_reverse_path(path: &str, utf8: bool) -> Result<ReversePath, AddressError> {
    let inner = strip_brackets(path)?;
    if inner.is_empty() {
        return Ok(ReversePath::Null);
    }
    parse_route_and_mailbox(inner, utf8).map(ReversePath::Mailbox)
}

pub fn parse_forward_path(path: &str, utf8: bool) -> Result<ForwardPath, AddressError> {
    let inner = strip_brackets(path)?;
    if inner.is_empty() {
        return Err(AddressError::Null);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    parse_route_and_mailbox(inner, utf8).map(ForwardPath::Mailbox)
}

/// Parse a bare `local@domain` (no brackets), e.g. from the CLI or a config file.
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    if s.len() + 2 > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    mailbox(s, utf8)
}

fn strip_brackets(path: &str) -> Result<&str, AddressError> {
    if path.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    path.strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .ok_or(AddressError::NoBrackets)
}

fn parse_route_and_mailbox(inner: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    let mailbox_part = if inner.starts_with('@') {
        // A-d-l ":" Mailbox. The route is validated, then ignored (RFC 5321 Appendix C).
        let colon = inner.find(':').ok_or(AddressError::Route)?;
        for hop in inner[..colon].split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::Route)?;
            domain(d, utf8).map_err(|_| AddressError::Route)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    mailbox(mailbox_part, utf8)
}

fn mailbox(s: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    let (local, rest) = local_part(s, utf8)?;
    let dom = rest.strip_prefix('@').ok_or(AddressError::LocalPart)?;
    let domain = if dom.starts_with('[') {
        literal(dom)?
    } else {
        Domain::Name(domain(dom, utf8)?)
    };
    Ok(Mailbox { local, domain })
}

/// Parse a local part at the start of `s`; return it decoded and the remainder (`@...`).
fn local_part(s: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'"') {
        let mut out = String::new();
        let mut i = 1;
        loop {
            let Some(&b) = bytes.get(i) else {
                return Err(AddressError::LocalPart);
            };
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&n) = bytes.get(i + 1) else {
                        return Err(AddressError::LocalPart);
                    };
                    if !(32..=126).contains(&n) {
                        return Err(AddressError::LocalPart);
                    }
                    out.push(n as char);
                    i += 2;
                }
                32..=33 | 35..=91 | 93..=126 => {
                    out.push(b as char);
                    i += 1;
                }
                0x80.. if utf8 => {
                    let ch = s[i..].chars().next().ok_or(AddressError::LocalPart)?;
                    out.push(ch);
                    i += ch.len_utf8();
                }
                _ => return Err(AddressError::LocalPart),
            }
        }
        if out.is_empty() || out.len() > MAX_LOCAL {
            return Err(AddressError::LocalPart);
        }
        Ok((out, &s[i + 1..]))
    } else {
        let end = s.find('@').ok_or(AddressError::LocalPart)?;
        let lp = &s[..end];
        if lp.is_empty() || lp.len() > MAX_LOCAL || !is_dot_string(lp.as_bytes(), utf8) {
            return Err(AddressError::LocalPart);
        }
        Ok((lp.to_string(), &s[end..]))
    }
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_dot_string(s: &[u8], utf8: bool) -> bool {
    if s.is_empty() {
        return false;
    }
    s.split(|b| *b == b'.')
        .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b) || (utf8 && b >= 0x80)))
}

/// Validate a domain name; return it lowercased. No trailing dot, no empty label, labels of
/// letters, digits and inner hyphens (U-labels allowed with SMTPUTF8).
pub fn domain(d: &str, utf8: bool) -> Result<String, AddressError> {
    if d.is_empty() || d.len() > MAX_DOMAIN {
        return Err(AddressError::Domain);
    }
    for label in d.split('.') {
        let lb = label.as_bytes();
        if lb.is_empty() || lb.len() > 63 {
            return Err(AddressError::Domain);
        }
        if lb[0] == b'-' || lb[lb.len() - 1] == b'-' {
            return Err(AddressError::Domain);
        }
        let ok = if utf8 {
            label.chars().all(|c| c.is_alphanumeric() || c == '-')
        } else {
            lb.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        };
        if !ok {
            return Err(AddressError::Domain);
        }
    }
    Ok(d.to_lowercase())
}

fn literal(d: &str) -> Result<Domain, AddressError> {
    let inner = d
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or(AddressError::Literal)?;
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        let a: Ipv6Addr = v6.parse().map_err(|_| AddressError::Literal)?;
        return Ok(Domain::Literal(IpAddr::V6(a)));
    }
    // Only dotted-quad IPv4 literals; General-address-literal tags are not accepted.
    if inner.split('.').count() != 4 || inner.split('.').any(|p| p.len() > 1 && p.starts_with('0'))
    {
        return Err(AddressError::Literal);
    }
    let a: Ipv4Addr = inner.parse().map_err(|_| AddressError::Literal)?;
    Ok(Domain::Literal(IpAddr::V4(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<ForwardPath, AddressError> {
        parse_forward_path(s, false)
    }

    fn mb(s: &str) -> Mailbox {
        match fwd(s).unwrap() {
            ForwardPath::Mailbox(m) => m,
            ForwardPath::Postmaster => panic!("postmaster"),
        }
    }

    #[test]
    fn plain_mailbox() {
        let m = mb("<Alice@Example.TEST>");
        assert_eq!(m.local, "Alice");
        assert_eq!(m.domain, Domain::Name("example.test".into()));
        assert_eq!(m.key(), "alice@example.test");
    }

    #[test]
    fn percent_and_bang_stay_in_local_part() {
        let m = mb("<bob%evil.test@example.test>");
        assert_eq!(m.local, "bob%evil.test");
        assert_eq!(m.domain.as_name(), Some("example.test"));
        let m = mb("<evil.test!bob@example.test>");
        assert_eq!(m.local, "evil.test!bob");
    }

    #[test]
    fn quoted_local_part_with_at_is_one_local_part() {
        let m = mb("<\"bob@evil.test\"@example.test>");
        assert_eq!(m.local, "bob@evil.test");
        assert_eq!(m.domain.as_name(), Some("example.test"));
        assert!(m.local_needs_quotes());
        assert_eq!(m.to_string(), "\"bob@evil.test\"@example.test");
    }

    #[test]
    fn source_route_is_dropped() {
        let m = mb("<@example.test,@relay.test:bob@evil.test>");
        assert_eq!(m.domain.as_name(), Some("evil.test"));
        assert_eq!(fwd("<@:bob@evil.test>"), Err(AddressError::Route));
        assert_eq!(
            fwd("<@example.test.:bob@evil.test>"),
            Err(AddressError::Route)
        );
    }

    #[test]
    fn bad_domains() {
        for s in [
            "<bob@example.test.>",
            "<bob@.example.test>",
            "<bob@example..test>",
            "<bob@-example.test>",
            "<bob@exa_mple.test>",
            "<bob@>",
            "<bob@example.test@evil.test>",
            "<bob@evil.test@>",
        ] {
            assert!(fwd(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn literals() {
        assert_eq!(
            mb("<bob@[127.0.0.1]>").domain,
            Domain::Literal("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            mb("<bob@[IPv6:::1]>").domain,
            Domain::Literal("::1".parse().unwrap())
        );
        for s in [
            "<bob@[127.0.0.1.]>",
            "<bob@[1.2.3]>",
            "<bob@[010.0.0.1]>",
            "<bob@[tag:x]>",
        ] {
            assert!(fwd(s).is_err(), "{s}");
        }
    }

    #[test]
    fn brackets_required() {
        assert_eq!(fwd("bob@example.test"), Err(AddressError::NoBrackets));
        assert_eq!(fwd("<bob@example.test"), Err(AddressError::NoBrackets));
        assert_eq!(split_path("<a@b.test>x"), Err(AddressError::NoBrackets));
        assert_eq!(
            split_path(" <a@b.test> SIZE=1"),
            Ok(("<a@b.test>", "SIZE=1"))
        );
        assert_eq!(split_path("<\"a>b\"@c.test>"), Ok(("<\"a>b\"@c.test>", "")));
    }

    #[test]
    fn postmaster_and_null() {
        assert_eq!(fwd("<postmaster>"), Ok(ForwardPath::Postmaster));
        assert_eq!(fwd("<>"), Err(AddressError::Null));
        assert_eq!(parse_reverse_path("<>", false), Ok(ReversePath::Null));
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(fwd("<jöran@example.test>"), Err(AddressError::NeedsUtf8));
        assert!(parse_forward_path("<jöran@exämple.test>", true).is_ok());
    }

    #[test]
    fn lengths() {
        let long_local = format!("<{}@example.test>", "a".repeat(65));
        assert_eq!(fwd(&long_local), Err(AddressError::LocalPart));
        let long_path = format!("<a@{}.test>", "b".repeat(260));
        assert_eq!(fwd(&long_path), Err(AddressError::TooLong));
    }

    #[test]
    fn dot_rules_in_local_part() {
        for s in [
            "<.bob@example.test>",
            "<bob.@example.test>",
            "<b..ob@example.test>",
        ] {
            assert_eq!(fwd(s), Err(AddressError::LocalPart), "{s}");
        }
    }
}
