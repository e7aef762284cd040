//! Message shape limits, at the end of DATA and before anything parses the message: the
//! header section's size and field count, the hop count (RFC 5321 §6.3: too many `Received`
//! fields is a loop), and the MIME nesting depth. Every later check is linear in what passes
//! here, so one sender cannot buy unbounded work or memory with one message (`[limits]`).
//!
//! Security: the scan is one pass over the header section that stops counting past the
//! limit; it reads bytes, not text, so no input can make it panic.

use crate::config::Limits;
use crate::decision::{Finding, Kind};
use mail_parser::{Message, PartType};
use mailwarden_proto::replies;

/// The header section as counted: its size, its fields and its `Received` fields, each
/// counted no further than a little past `max_fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub bytes: usize,
    pub fields: usize,
    pub received: usize,
}

/// Count the header section of `raw` in one pass of [`crate::header::fields`]. The scan
/// stops a line past `max_bytes`: a section that long is refused whatever follows, and a
/// 25 MB message with no empty line costs no more to refuse than a 1 MiB one.
pub fn count(raw: &[u8], max_fields: usize, max_bytes: usize) -> Headers {
    let mut h = Headers {
        bytes: 0,
        fields: 0,
        received: 0,
    };
    let mut f = crate::header::fields(raw).capped(max_bytes);
    for field in f.by_ref() {
        if field.name().is_none() && matches!(field.raw.first(), Some(b' ' | b'\t')) {
            continue;
        }
        if h.fields <= max_fields {
            h.fields += 1;
            if field.raw.len() >= 9 && field.raw[..9].eq_ignore_ascii_case(b"received:") {
                h.received += 1;
            }
        }
    }
    h.bytes = f.offset().min(raw.len());
    h
}

/// The header limits of `[limits]`.
pub fn check_headers(limits: &Limits, raw: &[u8]) -> Result<Headers, Finding> {
    let max_bytes = usize::try_from(limits.max_header_size.0).unwrap_or(usize::MAX);
    let h = count(raw, limits.max_header_fields, max_bytes);
    if h.bytes > max_bytes {
        return Err(Finding::refusing(
            Kind::HeaderSize,
            format!(
                "header section of more than {} bytes (limit {})",
                max_bytes, limits.max_header_size
            ),
            replies::HEADER_TOO_LARGE,
        ));
    }
    if h.fields > limits.max_header_fields {
        return Err(Finding::refusing(
            Kind::HeaderFields,
            format!("more than {} header fields", limits.max_header_fields),
            replies::HEADER_TOO_LARGE,
        ));
    }
    if h.received > limits.max_received {
        return Err(Finding::refusing(
            Kind::TooManyHops,
            format!(
                "{} Received fields (limit {}): a mail loop",
                h.received, limits.max_received
            ),
            replies::TOO_MANY_HOPS,
        ));
    }
    Ok(h)
}

/// How deep the MIME structure nests (a single-part message is 1). Iterative: a hostile
/// message nests thousands deep, more than a thread's stack would take in recursion.
pub fn mime_depth(msg: &Message<'_>) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Message<'_>, usize, usize)> = Vec::new();
    if !msg.parts.is_empty() {
        stack.push((msg, 0, 1));
    }
    while let Some((m, part, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match m.parts.get(part).map(|p| &p.body) {
            Some(PartType::Multipart(children)) => {
                // Children come after their parent; anything else would be a cycle.
                let below = children.iter().map(|c| *c as usize).filter(|c| *c > part);
                stack.extend(below.map(|c| (m, c, depth + 1)));
            }
            Some(PartType::Message(inner)) if !inner.parts.is_empty() => {
                stack.push((inner, 0, depth + 1))
            }
            _ => {}
        }
    }
    deepest
}

/// The MIME depth limit, on the part of the message that content scoring parsed.
pub fn check_mime(limits: &Limits, msg: &Message<'_>) -> Result<(), Finding> {
    let depth = mime_depth(msg);
    if depth > limits.max_mime_depth {
        return Err(Finding::refusing(
            Kind::MimeDepth,
            format!("MIME nested {depth} deep (limit {})", limits.max_mime_depth),
            replies::MIME_TOO_DEEP,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fields_folded_lines_and_the_end_of_the_header() {
        let raw = b"Received: a\r\n\tb\r\nreceived: c\r\nSubject: x\r\n\r\nReceived: body\r\n";
        let h = count(raw, 1000, usize::MAX);
        assert_eq!(
            h,
            Headers {
                bytes: 42,
                fields: 3,
                received: 2
            }
        );
        // No empty line: all of it is header.
        assert_eq!(count(b"A: b\nC: d", 10, usize::MAX).bytes, 9);
        // No empty line in a long message: the scan ends a line past the cap.
        let long = "X: y\r\n".repeat(100_000);
        let h = count(long.as_bytes(), 1000, 600);
        assert!(h.bytes > 600 && h.bytes <= 606, "{h:?}");
    }

    #[test]
    fn each_header_limit_refuses_past_it_and_not_at_it() {
        let mut l = Limits::default();
        l.max_header_fields = 3;
        l.max_received = 2;
        l.max_header_size = crate::config::ByteSize(60);
        let ok = b"Received: a\r\nReceived: b\r\nSubject: x\r\n\r\nbody";
        assert!(check_headers(&l, ok).is_ok());
        let fields = b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            check_headers(&l, fields).unwrap_err().kind.code(),
            "shape.header_fields"
        );
        let hops = b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\n";
        let e = check_headers(&l, hops).unwrap_err();
        assert_eq!(e.kind, Kind::TooManyHops);
        assert_eq!(e.refusal.map(|r| r.code), Some(554));
        let big = format!("Subject: {}\r\n\r\n", "x".repeat(60));
        assert_eq!(
            check_headers(&l, big.as_bytes()).unwrap_err().kind.code(),
            "shape.header_size"
        );
    }

    #[test]
    fn mime_depth_counts_multiparts_and_attached_messages() {
        let mut raw = String::from("From: a@b.test\r\n");
        for d in 0..5 {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{d}\"\r\n\r\n--b{d}\r\n"
            ));
        }
        raw.push_str("Content-Type: text/plain\r\n\r\nhello\r\n");
        let msg = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(mime_depth(&msg), 6);
        let mut l = Limits::default();
        l.max_mime_depth = 6;
        assert!(check_mime(&l, &msg).is_ok());
        l.max_mime_depth = 5;
        assert_eq!(
            check_mime(&l, &msg).unwrap_err().kind.code(),
            "shape.mime_depth"
        );
        let flat = mail_parser::MessageParser::default()
            .parse(b"Subject: x\r\n\r\nhi\r\n".as_slice())
            .unwrap();
        assert_eq!(mime_depth(&flat), 1);
    }
}
