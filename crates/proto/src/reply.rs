//! SMTP replies: a basic code (RFC 5321 §4.2) plus an enhanced status code (RFC 3463, RFC 2034).
//!
//! Every client-visible reply is a [`Reply`]; the texts live in [`crate::replies`]. Text the
//! client sees stays generic; details belong in the log.

use std::borrow::Cow;
use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u8, pub u16, pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply. `text` may hold several lines separated by `\n`; each is sent with the
/// code, and with the enhanced status when there is one (RFC 2034 §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<Status>,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: Status, text: &'static str) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, status: Option<Status>, text: String) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Owned(text),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The same reply with a different text, keeping code and status.
    pub fn with_text(&self, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code: self.code,
            status: self.status,
            text: text.into(),
        }
    }

    /// Append the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        if lines.peek().is_none() {
            lines = "".split('\n').peekable();
        }
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            // Never let a reply text carry a raw CR or LF onto the wire.
            let line = line.trim_end_matches('\r');
            let mut head = format!("{}{}", self.code, sep);
            if let Some(s) = self.status {
                head.push_str(&s.to_string());
                if !line.is_empty() {
                    head.push(' ');
                }
            }
            out.extend_from_slice(head.as_bytes());
            out.extend(line.bytes().filter(|b| *b != b'\r'));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl fmt::Display for Reply {
    /// One-line form for logs: `550 5.1.1 text` (multi-line texts joined with ` / `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(s) = self.status {
            write!(f, " {s}")?;
        }
        for (i, line) in self.text.split('\n').enumerate() {
            if i == 0 {
                write!(f, " {line}")?;
            } else {
                write!(f, " / {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_status() {
        let r = Reply::new(550, Status(5, 1, 1), "Mailbox unavailable");
        assert_eq!(r.to_wire(), "550 5.1.1 Mailbox unavailable\r\n");
    }

    #[test]
    fn multi_line_repeats_code_and_status() {
        let r = Reply::owned(554, Some(Status(5, 7, 1)), "a\nb".into());
        assert_eq!(r.to_wire(), "554-5.7.1 a\r\n554 5.7.1 b\r\n");
    }

    #[test]
    fn no_status() {
        let r = Reply::owned(250, None, "host\nPIPELINING".into());
        assert_eq!(r.to_wire(), "250-host\r\n250 PIPELINING\r\n");
    }

    #[test]
    fn cr_in_text_is_dropped() {
        let r = Reply::owned(250, None, "a\rb".into());
        assert_eq!(r.to_wire(), "250 ab\r\n");
    }
}
