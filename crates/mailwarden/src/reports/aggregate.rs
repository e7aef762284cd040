//! An RFC 7489 aggregate report (Appendix C's schema): the XML, its gzip, and the message
//! that carries it (§7.2.1.1: `application/gzip`, the `!`-joined file name, the subject).
//!
//! The XML has no namespace, as RFC 7489's own example and the reports large receivers send:
//! the schema's namespace on the root element alone (its locals are unqualified) is what
//! receivers that match element names fail to parse. Everything written is escaped.

use super::{Published, Row};
use std::fmt::Write;
use std::io::Write as _;

/// What a report is about, besides its rows.
pub struct Meta<'a> {
    pub org_name: &'a str,
    pub email: &'a str,
    pub report_id: &'a str,
    pub begin: i64,
    pub end: i64,
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The report's XML. `rows` are (facts, count); a report has at least one.
pub fn xml(meta: &Meta<'_>, policy: &Published, rows: &[(Row, u64)]) -> String {
    let mut x = String::with_capacity(512 + rows.len() * 512);
    let e = escape;
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback>\n <version>1.0</version>\n");
    let _ = write!(
        x,
        " <report_metadata>\n  <org_name>{}</org_name>\n  <email>{}</email>\n  \
         <report_id>{}</report_id>\n  <date_range>\n   <begin>{}</begin>\n   <end>{}</end>\n  \
         </date_range>\n </report_metadata>\n",
        e(meta.org_name),
        e(meta.email),
        e(meta.report_id),
        meta.begin,
        meta.end
    );
    let _ = write!(
        x,
        " <policy_published>\n  <domain>{}</domain>\n  <adkim>{}</adkim>\n  <aspf>{}</aspf>\n  \
         <p>{}</p>\n  <sp>{}</sp>\n  <pct>{}</pct>\n </policy_published>\n",
        e(&policy.domain),
        e(&policy.adkim),
        e(&policy.aspf),
        e(&policy.p),
        e(&policy.sp),
        policy.pct
    );
    for (r, count) in rows {
        let _ = write!(
            x,
            " <record>\n  <row>\n   <source_ip>{}</source_ip>\n   <count>{count}</count>\n   \
             <policy_evaluated>\n    <disposition>{}</disposition>\n    <dkim>{}</dkim>\n    \
             <spf>{}</spf>\n",
            e(&r.source_ip),
            e(&r.disposition),
            e(&r.dkim),
            e(&r.spf)
        );
        if let Some(reason) = &r.reason {
            let _ = write!(
                x,
                "    <reason>\n     <type>{}</type>\n    </reason>\n",
                e(reason)
            );
        }
        let _ = write!(
            x,
            "   </policy_evaluated>\n  </row>\n  <identifiers>\n   \
             <header_from>{}</header_from>\n   <envelope_from>{}</envelope_from>\n  \
             </identifiers>\n  <auth_results>\n",
            e(&r.header_from),
            e(&r.envelope_from)
        );
        for d in &r.dkim_results {
            let _ = write!(x, "   <dkim>\n    <domain>{}</domain>\n", e(&d.domain));
            if !d.selector.is_empty() {
                let _ = writeln!(x, "    <selector>{}</selector>", e(&d.selector));
            }
            let _ = write!(x, "    <result>{}</result>\n   </dkim>\n", e(&d.result));
        }
        let _ = write!(
            x,
            "   <spf>\n    <domain>{}</domain>\n    <scope>{}</scope>\n    \
             <result>{}</result>\n   </spf>\n  </auth_results>\n </record>\n",
            e(&r.spf_domain),
            e(&r.spf_scope),
            e(&r.spf_result)
        );
    }
    x.push_str("</feedback>\n");
    x
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The report's file name (RFC 7489 §7.2.1.1): `receiver!policy-domain!begin!end.xml.gz`.
pub fn file_name(receiver: &str, domain: &str, begin: i64, end: i64) -> String {
    format!("{receiver}!{domain}!{begin}!{end}.xml.gz")
}

/// The message (CRLF) carrying `gz` to `to`, without its DKIM signature.
#[allow(clippy::too_many_arguments)]
pub fn message(
    from: &str,
    to: &[String],
    receiver: &str,
    domain: &str,
    meta: &Meta<'_>,
    gz: &[u8],
    date: &str,
    message_id: &str,
) -> Vec<u8> {
    use base64::Engine;
    let boundary = format!("=_report_{}", meta.report_id);
    let name = file_name(receiver, domain, meta.begin, meta.end);
    let mut m = String::with_capacity(gz.len() * 4 / 3 + 1024);
    let _ = write!(
        m,
        "From: <{from}>\r\nTo: {}\r\nSubject: Report Domain: {domain} Submitter: {receiver} \
         Report-ID: <{}>\r\nDate: {date}\r\nMessage-ID: <{message_id}>\r\n\
         Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         DMARC aggregate report for {domain} from {receiver}.\r\n\r\n\
         --{boundary}\r\nContent-Type: application/gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n",
        to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", "),
        meta.report_id,
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        m.push_str("\r\n");
    }
    let _ = write!(m, "--{boundary}--\r\n");
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::DkimAuth;

    fn row() -> Row {
        Row {
            source_ip: "192.0.2.1".into(),
            disposition: "none".into(),
            dkim: "pass".into(),
            spf: "fail".into(),
            reason: None,
            header_from: "a.test".into(),
            envelope_from: "a.test".into(),
            dkim_results: vec![DkimAuth {
                domain: "a.test".into(),
                selector: "s1".into(),
                result: "pass".into(),
            }],
            spf_domain: "a.test".into(),
            spf_scope: "mfrom".into(),
            spf_result: "softfail".into(),
        }
    }

    #[test]
    fn the_xml_escapes_and_the_parser_of_mail_auth_reads_it_back() {
        let meta = Meta {
            org_name: "b<&>test",
            email: "noreply@b.test",
            report_id: "r1",
            begin: 86400,
            end: 172799,
        };
        let policy = Published {
            domain: "a.test".into(),
            adkim: "r".into(),
            aspf: "s".into(),
            p: "reject".into(),
            sp: "reject".into(),
            pct: 100,
        };
        let x = xml(&meta, &policy, &[(row(), 7)]);
        assert!(x.contains("<org_name>b&lt;&amp;&gt;test</org_name>"), "{x}");
        let back = mail_auth::report::Report::parse_xml(x.as_bytes()).unwrap();
        assert_eq!(back.org_name(), "b<&>test");
        assert_eq!(back.domain(), "a.test");
        assert_eq!(back.records().len(), 1);
        let r = &back.records()[0];
        assert_eq!(r.count(), 7);
        assert_eq!(r.source_ip(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(r.dkim_auth_result()[0].selector(), "s1");
    }
}
