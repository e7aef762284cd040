//! The trace header every accepted message gains (RFC 5321 §4.4, RFC 5322 §3.6.7), with the
//! `with` protocol type of RFC 3848 / RFC 6531 (SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA,
//! UTF8SMTPS...) so a reader can see whether TLS and AUTH were used.

use crate::util::rfc5322_date;
use std::net::IpAddr;

pub struct Trace<'a> {
    pub helo: &'a str,
    pub ip: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub smtputf8: bool,
    pub tls: Option<&'a str>,
    pub authenticated: bool,
    pub id: &'a str,
    /// Named in a `for` clause only when there is exactly one recipient, so a copy never
    /// reveals the other recipients.
    pub single_rcpt: Option<&'a str>,
    pub time: i64,
    /// Leave out the `from` clause (the client's HELO and IP): `submission.hide_client`.
    pub hide_client: bool,
    /// The account a POP3 login let this client send as, without AUTH (`[pop_before_smtp]`).
    pub pop_before_smtp: Option<&'a str>,
}

pub fn protocol(esmtp: bool, smtputf8: bool, tls: bool, auth: bool) -> String {
    let base = match (esmtp, smtputf8) {
        (_, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, false) => "SMTP",
    };
    let mut p = base.to_string();
    if esmtp || smtputf8 {
        if tls {
            p.push('S');
        }
        if auth {
            p.push('A');
        }
    }
    p
}

/// `Received: ...` with folded continuation lines, CRLF-terminated.
pub fn header(t: &Trace) -> String {
    let ip = match t.ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("IPv6:{a}"),
    };
    let helo: String = t
        .helo
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .collect();
    let from = if t.hide_client {
        String::new()
    } else {
        format!("from {helo} ([{ip}])\r\n\t")
    };
    let mut h = format!(
        "Received: {from}by {} (mailwarden) with {} id {}",
        t.hostname,
        protocol(t.esmtp, t.smtputf8, t.tls.is_some(), t.authenticated),
        t.id
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t({tls})"));
    }
    if let Some(a) = t.pop_before_smtp {
        h.push_str(&format!("\r\n\t(POP-before-SMTP as {a})"));
    }
    if let Some(r) = t.single_rcpt {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(t.time)));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        assert_eq!(protocol(false, false, false, false), "SMTP");
        assert_eq!(protocol(true, false, false, false), "ESMTP");
        assert_eq!(protocol(true, false, true, false), "ESMTPS");
        assert_eq!(protocol(true, false, true, true), "ESMTPSA");
        assert_eq!(protocol(true, true, true, true), "UTF8SMTPSA");
    }

    #[test]
    fn header_shape() {
        let h = header(&Trace {
            helo: "client(evil)",
            ip: "127.0.0.1".parse().unwrap(),
            hostname: "mx.example.test",
            esmtp: true,
            smtputf8: false,
            tls: Some("TLSv1.3 TLS13_AES_128_GCM_SHA256"),
            authenticated: true,
            id: "0ABC",
            single_rcpt: Some("alice@example.test"),
            time: 0,
            hide_client: false,
            pop_before_smtp: None,
        });
        assert_eq!(
            h,
            "Received: from clientevil ([127.0.0.1])\r\n\tby mx.example.test (mailwarden) with ESMTPSA id 0ABC\r\n\t(TLSv1.3 TLS13_AES_128_GCM_SHA256)\r\n\tfor <alice@example.test>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn hidden_client_leaves_no_trace_of_it() {
        let h = header(&Trace {
            helo: "alice-laptop.corp.internal",
            ip: "10.1.2.3".parse().unwrap(),
            hostname: "mx.example.test",
            esmtp: true,
            smtputf8: false,
            tls: None,
            authenticated: true,
            id: "0ABC",
            single_rcpt: None,
            time: 0,
            hide_client: true,
            pop_before_smtp: None,
        });
        assert!(
            h.starts_with("Received: by mx.example.test (mailwarden) with ESMTPA id 0ABC;"),
            "{h}"
        );
        assert!(
            !h.contains("10.1.2.3") && !h.contains("alice-laptop"),
            "{h}"
        );
    }
}
