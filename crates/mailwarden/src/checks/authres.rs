//! Authentication-Results headers (RFC 8601): removing incoming ones that claim our
//! authserv-id (§5: a receiver must not trust, and should remove, results that pretend to be
//! its own), and the header for mail that local accounts submitted.

/// A new header section for a message: `head` replaces everything before `rest`, the offset
/// in the original where its untouched remainder (the blank line and the body) begins. A
/// large message is never copied whole to change a header.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadEdit {
    pub head: Vec<u8>,
    pub rest: usize,
}

impl HeadEdit {
    /// The whole edited message.
    pub fn apply(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + raw.len() - self.rest);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&raw[self.rest..]);
        out
    }
}

/// Remove every `Authentication-Results` header whose authserv-id is `authserv_id`
/// (case-insensitive). Returns the header section without them, or `None` when there were
/// none.
pub fn strip_forged(raw: &[u8], authserv_id: &str) -> Option<HeadEdit> {
    let mut fields = crate::header::fields(raw);
    let mut out = Vec::new();
    let mut removed = false;
    for f in fields.by_ref() {
        if is_ours(f.raw, authserv_id) {
            removed = true;
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if !removed {
        return None;
    }
    Some(HeadEdit {
        head: out,
        rest: fields.offset().min(raw.len()),
    })
}

fn is_ours(field: &[u8], authserv_id: &str) -> bool {
    const NAME: &[u8] = b"authentication-results";
    // RFC 5322 §4.5 (obsolete syntax, still to be read): blanks may come before the colon.
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = field[..colon].trim_ascii_end();
    if !name.eq_ignore_ascii_case(NAME) {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let id = first_token(&value);
    id.eq_ignore_ascii_case(authserv_id)
}

/// The authserv-id: the first token after comments (CFWS) and before `;` or whitespace.
fn first_token(value: &str) -> &str {
    let mut rest = value;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('(') {
            // Skip a comment, nesting included.
            let mut depth = 1;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &after[end.min(after.len())..];
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| c == ';' || c == '(' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.')
}

/// The header for mail a local account submitted: its identity was proven by SMTP AUTH.
pub fn submitted(authserv_id: &str, account: &str) -> String {
    format!("Authentication-Results: {authserv_id};\r\n\tauth=pass smtp.auth={account}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_headers_with_our_id() {
        let msg = b"Received: x\r\nAuthentication-Results: MX.Example.Test;\r\n\tspf=pass smtp.mailfrom=a@b.test\r\nAuthentication-Results: other.test; dkim=pass\r\nauthentication-results: (comment) mx.example.test 1; dmarc=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; body text\r\n";
        let out = strip_forged(msg, "mx.example.test").unwrap().apply(msg);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "Received: x\r\nAuthentication-Results: other.test; dkim=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.test; body text\r\n"
        );
    }

    #[test]
    fn blanks_before_the_colon_do_not_hide_a_forgery() {
        let msg =
            b"Authentication-Results \t: mx.example.test; spf=pass\r\nSubject: hi\r\n\r\nbody\r\n";
        let e = strip_forged(msg, "mx.example.test").expect("removed");
        assert_eq!(e.apply(msg), b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(e.rest, msg.len() - 8);
    }

    #[test]
    fn nothing_to_remove() {
        assert!(strip_forged(b"Subject: x\r\n\r\nbody", "mx.example.test").is_none());
        assert!(
            strip_forged(
                b"Authentication-Results: mx.example.test.evil; x\r\n\r\n",
                "mx.example.test"
            )
            .is_none()
        );
    }
}
