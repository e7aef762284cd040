//! The message header section, split by one parser. Every reader and editor of header fields
//! (the shape limits, the heuristics, records and `explain`, Authentication-Results removal,
//! the subject tag, DKIM signing, DSNs) walks the fields [`fields`] yields. RFC 5322 §2.2: a
//! field starts at a line that does not begin with SP or HTAB and runs over the continuation
//! lines after it; the section ends at the first empty line (CRLF, or a bare LF, which some
//! senders use).
//!
//! Security: one forward pass over bytes, lazy (a caller stops when it has what it wants, and
//! [`Fields::capped`] stops a line past a size), with no allocation per field; it reads bytes,
//! not text, so no input can make it panic.

/// One field as it is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Its bytes: name, colon, value, continuation lines and the final line break.
    pub raw: &'a [u8],
    /// Where it starts in the message.
    pub start: usize,
    /// The colon's offset in `raw`: `None` for a line without one, or a continuation line
    /// with no field before it.
    colon: Option<usize>,
}

impl<'a> Field<'a> {
    /// The name, as written (blanks before the colon kept: RFC 5322 §4.5 obsolete syntax).
    pub fn name(&self) -> Option<&'a [u8]> {
        self.colon.map(|c| &self.raw[..c])
    }

    /// Everything after the colon, continuation lines and final line break included.
    pub fn value(&self) -> &'a [u8] {
        self.colon.map_or(&[][..], |c| &self.raw[c + 1..])
    }

    /// Is this the field `name` (ASCII case-insensitive, blanks before the colon ignored)?
    pub fn is(&self, name: &str) -> bool {
        self.name()
            .is_some_and(|n| n.trim_ascii_end().eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The fields of a header section, in order. After the last one, [`Fields::offset`] is where
/// the section ends: the offset of the empty line, or of the line the cap stopped at.
pub struct Fields<'a> {
    raw: &'a [u8],
    at: usize,
    cap: usize,
    done: bool,
}

/// The fields of `raw`'s header section.
pub fn fields(raw: &[u8]) -> Fields<'_> {
    Fields {
        raw,
        at: 0,
        cap: usize::MAX,
        done: false,
    }
}

impl<'a> Fields<'a> {
    /// Stop at the first line that starts past `max` bytes: the section is at least that
    /// long, whatever follows.
    pub fn capped(mut self, max: usize) -> Fields<'a> {
        self.cap = max;
        self
    }

    /// Where the scan is: past the last field yielded; once done, the section's end.
    pub fn offset(&self) -> usize {
        self.at
    }

    fn line_end(&self, from: usize) -> usize {
        memchr::memchr(b'\n', &self.raw[from..]).map_or(self.raw.len(), |i| from + i + 1)
    }

    fn ends_section(&self, at: usize) -> bool {
        at >= self.raw.len()
            || at > self.cap
            || self.raw[at..].starts_with(b"\r\n")
            || self.raw[at] == b'\n'
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        if self.done || self.ends_section(self.at) {
            self.done = true;
            return None;
        }
        let start = self.at;
        let first = self.line_end(start);
        let continuation = matches!(self.raw[start], b' ' | b'\t');
        let colon = (!continuation)
            .then(|| memchr::memchr(b':', &self.raw[start..first]))
            .flatten();
        let mut end = first;
        while !self.ends_section(end) && matches!(self.raw[end], b' ' | b'\t') {
            end = self.line_end(end);
        }
        self.at = end;
        Some(Field {
            raw: &self.raw[start..end],
            start,
            colon,
        })
    }
}

/// Offset of the empty line that ends `raw`'s header section, or `raw`'s length when there
/// is none.
pub fn end(raw: &[u8]) -> usize {
    let mut f = fields(raw);
    for _ in f.by_ref() {}
    f.offset().min(raw.len())
}

/// Where the body starts: past the empty line (nothing when there is none).
pub fn body_start(raw: &[u8]) -> usize {
    let e = end(raw);
    if raw[e..].starts_with(b"\r\n") {
        e + 2
    } else if raw[e..].starts_with(b"\n") {
        e + 1
    } else {
        e
    }
}

/// The fields with a name, as (lowercase name, unfolded value), so a caller that wants one
/// field or a few never builds them all.
pub fn unfolded(raw: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    fields(raw).filter_map(|f| {
        let name = String::from_utf8_lossy(f.name()?)
            .trim()
            .to_ascii_lowercase();
        let mut value = String::new();
        for (i, line) in f.value().split(|b| *b == b'\n').enumerate() {
            let part = String::from_utf8_lossy(line);
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if i > 0 && !value.is_empty() {
                value.push(' ');
            }
            value.push_str(part);
        }
        Some((name, value))
    })
}

/// The unfolded value of the first `name:` field, at most 998 characters. Only that field
/// is unfolded.
pub fn value(raw: &[u8], name: &str) -> Option<String> {
    value_of(fields(raw).find(|f| f.is(name))?)
}

/// The first `name:` field's value as people read it: unfolded, its RFC 2047 encoded words
/// decoded (ISO-2022-JP, Shift_JIS, EUC-JP and every charset mail-parser knows), at most
/// 998 characters. For what an administrator reads: records, `explain`, quarantine lists.
pub fn decoded(raw: &[u8], name: &str) -> Option<String> {
    let f = fields(raw).find(|f| f.is(name))?;
    let mut value = f.value().to_vec();
    if !value.ends_with(b"\n") {
        value.push(b'\n');
    }
    let text = match mail_parser::parsers::MessageStream::new(&value).parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => t.into_owned(),
        _ => return value_of(f),
    };
    Some(text.trim().chars().take(998).collect())
}

fn value_of(f: Field<'_>) -> Option<String> {
    unfolded(f.raw)
        .next()
        .map(|(_, v)| v.chars().take(998).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_values_read_as_people_read_them() {
        // "【緊急】未払い" in ISO-2022-JP, then in Shift_JIS, both RFC 2047 base64, folded.
        let raw = b"Subject: =?ISO-2022-JP?B?GyRCIVo2WzVeIVtMJEonJCQbKEI=?=\r\n \
            =?Shift_JIS?B?grGC8YLJgr+CzQ==?=\r\n\r\nbody";
        assert_eq!(
            decoded(raw, "subject").as_deref(),
            Some("【緊急】未払いこんにちは")
        );
        assert_eq!(
            decoded(b"Subject: plain\r\n\r\n", "Subject").as_deref(),
            Some("plain")
        );
        assert_eq!(decoded(b"Subject: plain\r\n\r\n", "To"), None);
    }

    #[test]
    fn fields_fold_and_the_section_ends_at_the_empty_line() {
        let raw = b"From: a@b\r\nSubject: hello\r\n  world\r\nNo colon here\r\n\r\nTo: body\r\n";
        let f: Vec<Field> = fields(raw).collect();
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].raw, b"Subject: hello\r\n  world\r\n");
        assert!(f[1].is("SUBJECT"));
        assert_eq!(f[2].name(), None);
        assert_eq!(end(raw), 51);
        assert_eq!(&raw[body_start(raw)..], b"To: body\r\n");
        assert_eq!(value(raw, "subject").as_deref(), Some("hello world"));
        assert_eq!(value(raw, "to"), None);
    }

    #[test]
    fn bare_lf_no_empty_line_and_a_leading_continuation() {
        assert_eq!(end(b"A: 1\nB: 2\n\nbody"), 10);
        assert_eq!(end(b"A: 1\r\nB: 2"), 10);
        let f: Vec<Field> = fields(b" lead\r\nA: 1\r\n\r\n").collect();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name(), None);
        assert!(f[1].is("a"));
        // Blanks before the colon (obsolete syntax) still name the field.
        assert!(fields(b"Received : x\r\n").next().unwrap().is("received"));
    }

    #[test]
    fn a_cap_stops_the_scan_a_line_past_it() {
        let raw = format!("A: {}\r\nB: 1\r\n\r\n", "x".repeat(100));
        let mut f = fields(raw.as_bytes()).capped(50);
        assert_eq!(f.by_ref().count(), 1);
        assert!(f.offset() > 50);
    }
}
