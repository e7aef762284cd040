//! Delivery status notifications (RFC 3464, RFC 3462 multipart/report): the bounce a sender
//! gets when recipients fail for good. It quotes the remote reply and the original's header.

use crate::util::{new_id, rfc5322_date};

/// One failed recipient.
pub struct Failed {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// `name[ip]` of the server that refused, when one did.
    pub remote_mta: Option<String>,
    /// The remote reply (`550 5.1.1 ...`) or our own reason.
    pub diagnostic: String,
    /// The reply came from a remote SMTP server (`smtp;` diagnostic type).
    pub from_smtp: bool,
}

/// The complete DSN message (header and body, CRLF line ends).
pub fn build(
    hostname: &str,
    original_id: &str,
    arrival: i64,
    recipient: &str,
    original_header: &[u8],
    failed: &[Failed],
    now: i64,
) -> Vec<u8> {
    let boundary = format!("{}/{}", new_id(), hostname);
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{recipient}>\r\n"));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    m.push_str(&format!("Message-ID: <{}@{hostname}>\r\n", new_id()));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\n");
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
    m.push_str(&format!(
        "This is the mail system at {hostname}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         It is attached below (its header only).\r\n\r\n"
    ));
    for f in failed {
        m.push_str(&format!("<{}>: {}\r\n", f.address, one_line(&f.diagnostic)));
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: message/delivery-status\r\n\r\n");
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Mailwarden-Queue-ID: {original_id}\r\n"));
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(arrival)));
    for f in failed {
        m.push_str("\r\n");
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.address));
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", f.status));
        if let Some(r) = &f.remote_mta {
            let name = r.split('[').next().unwrap_or(r);
            m.push_str(&format!("Remote-MTA: dns; {name}\r\n"));
        }
        let kind = if f.from_smtp { "smtp" } else { "x-mailwarden" };
        m.push_str(&format!(
            "Diagnostic-Code: {kind}; {}\r\n",
            one_line(&f.diagnostic)
        ));
        m.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(now)));
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(original_header);
    if !original_header.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The header section of a stored message (up to the blank line), at most `max` octets.
pub fn header_of(message: &[u8], max: usize) -> &[u8] {
    &message[..crate::header::end(message).min(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_has_the_three_parts_and_quotes_the_reply() {
        let d = build(
            "mx.a.test",
            "Q1",
            0,
            "alice@a.test",
            b"From: alice@a.test\r\nSubject: hello\r\n",
            &[Failed {
                address: "nobody@b.test".into(),
                status: "5.1.1".into(),
                remote_mta: Some("mx.b.test[127.0.0.1]".into()),
                diagnostic: "550 5.1.1 No such user".into(),
                from_smtp: true,
            }],
            0,
        );
        let text = String::from_utf8(d).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@b.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Remote-MTA: dns; mx.b.test\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user"));
        assert!(
            text.contains("text/rfc822-headers\r\n\r\nFrom: alice@a.test\r\nSubject: hello\r\n")
        );
        let msg = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(msg.parts.len(), 4, "multipart root and three parts");
    }

    #[test]
    fn header_of_stops_at_the_blank_line() {
        assert_eq!(
            header_of(b"A: 1\r\nB: 2\r\n\r\nbody", 1000),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_of(b"A: 1\r\n", 1000), b"A: 1\r\n");
    }
}
