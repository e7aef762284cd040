//! `mailwarden explain`: a decision record as a report for people, the deciding reasons
//! first, then the client, the envelope, the message and every other finding.

use super::Record;
use crate::util::rfc5322_date;
use std::fmt::Write;

pub fn text(r: &Record) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {} on {} ({})",
        r.id,
        r.action.to_uppercase(),
        r.listener,
        rfc5322_date(r.time)
    );
    let _ = writeln!(o, "reply:    {}", r.reply);
    let deciding: Vec<_> = r.reasons.iter().filter(|x| x.deciding).collect();
    if deciding.is_empty() {
        let _ = writeln!(o, "why:      nothing stood in its way");
    }
    for (i, x) in deciding.iter().enumerate() {
        let label = if i == 0 { "why:" } else { "" };
        let _ = writeln!(o, "{label:<10}{} ({}): {}", x.code, x.check, x.detail);
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        o,
        "client:   {} ptr {} helo {} tls {} account {}",
        r.ip,
        dash(&r.ptr),
        if r.helo.is_empty() { "-" } else { &r.helo },
        dash(&r.tls),
        dash(&r.account)
    );
    let _ = writeln!(o, "from:     <{}>", r.mail_from);
    for rc in &r.rcpts {
        let _ = writeln!(o, "to:       <{}>  {}", rc.address, rc.reply);
    }
    if r.message_id.is_some() || r.subject.is_some() {
        let _ = writeln!(o, "message:  {}", dash(&r.message_id));
        let _ = writeln!(o, "subject:  {}", dash(&r.subject));
    }
    let counted: Vec<&str> = r
        .reasons
        .iter()
        .filter(|x| x.counted && x.score != 0.0)
        .map(|x| x.code.as_str())
        .collect();
    if counted.is_empty() {
        let _ = writeln!(o, "score:    {}", r.score);
    } else {
        let _ = writeln!(o, "score:    {} (counted: {})", r.score, counted.join(", "));
    }
    let others: Vec<_> = r.reasons.iter().filter(|x| !x.deciding).collect();
    if !others.is_empty() {
        let _ = writeln!(o, "also found:");
        for x in others {
            let score = if x.score != 0.0 {
                format!(" [{:+}]", x.score)
            } else {
                String::new()
            };
            let _ = writeln!(o, "  {} ({}){score}: {}", x.code, x.check, x.detail);
        }
    }
    o
}

/// One line per record for `log search`.
pub fn line(r: &Record) -> String {
    let deciding = r
        .reasons
        .iter()
        .find(|x| x.deciding)
        .map(|x| x.code.as_str())
        .unwrap_or("-");
    let rcpts: Vec<&str> = r.rcpts.iter().map(|x| x.address.as_str()).collect();
    format!(
        "{}  {}  {:<9} {:<15} <{}> -> {}  {}",
        r.id,
        rfc5322_date(r.time),
        r.action,
        r.ip,
        r.mail_from,
        rcpts.join(","),
        deciding
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Rcpt, Reason};
    use super::*;

    #[test]
    fn deciding_reasons_come_first() {
        let r = Record {
            id: "Q1".into(),
            action: "reject".into(),
            listener: "mx".into(),
            reply: "554 5.7.1 listed".into(),
            ip: "127.0.0.2".into(),
            mail_from: "a@b.test".into(),
            rcpts: vec![Rcpt {
                address: "alice@example.test".into(),
                reply: "554 5.7.1 listed".into(),
            }],
            reasons: vec![
                Reason {
                    check: "screen".into(),
                    code: "no_ptr".into(),
                    detail: "127.0.0.2 has no PTR".into(),
                    score: 1.0,
                    deciding: false,
                    counted: false,
                },
                Reason {
                    check: "screen".into(),
                    code: "dnsbl_score".into(),
                    detail: "score 1.2".into(),
                    score: 0.0,
                    deciding: true,
                    counted: false,
                },
            ],
            ..Record::default()
        };
        let t = text(&r);
        let why = t.find("why:      dnsbl_score").expect(&t);
        let also = t.find("no_ptr (screen) [+1]").expect(&t);
        assert!(why < also, "{t}");
        assert!(line(&r).ends_with("dnsbl_score"), "{}", line(&r));
    }
}
