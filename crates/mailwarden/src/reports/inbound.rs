//! Reports other servers send to `reports.address`: DMARC aggregate (RFC 7489 §7.2, XML,
//! often gzip or zip), DMARC failure reports (RFC 6591 ARF) and TLS-RPT (RFC 8460, JSON).
//! Local delivery hands every message for that address here ([`Sink::take`]); it is parsed,
//! kept in the store (`reports_in`, `report_rows`), and never put in a mailbox.
//!
//! Security: anyone can send a report, so all of it is hostile input.
//! - Decompression is capped: at most `reports.max_size` bytes come out of a gzip member or
//!   a zip entry (one entry is read), whatever sizes the archive claims, so a bomb costs
//!   that much memory and is refused.
//! - XML with a DOCTYPE or entity declaration is refused before any parser sees it (no
//!   external entities, no entity expansion), as is nesting deeper than
//!   `reports.max_depth`; the depth scan is one linear pass. JSON nests at most 128 deep
//!   (serde_json's limit).
//! - Rows per report are capped (`reports.max_rows`); a report already kept (same kind,
//!   organisation and id) is not kept twice.
//! - Decompression is capped per message too: all its parts together produce at most
//!   `reports.max_size`. More `<record>`s than `reports.max_rows` are refused before parsing.
//! - What is stored is cut to size and stripped of control characters; ids are hashes.
//! - A refused report is logged once, recorded as delivered with the reason, and never
//!   tried again (nor is one the store could not take). Parsing runs on the blocking pool,
//!   holding a CPU slot.

use crate::store::{Store, StoreError};
use mail_auth::report::tlsrpt::TlsReport;
use mail_auth::report::{Feedback, Report};
use mail_parser::{MessageParser, MimeHeaders, PartType};
use std::io::Read;
use std::sync::Arc;

/// What mail to `reports.address` turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Aggregate(Report),
    Tls(TlsReport),
    /// The reported domain, source IP and authentication failure of a failure report.
    Failure {
        domain: String,
        source_ip: Option<String>,
        failure: String,
    },
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no report in the message")]
    NotAReport,
    #[error("decompresses to more than {0} bytes")]
    TooLarge(usize),
    #[error("XML nests deeper than {0}")]
    TooDeep(usize),
    #[error("XML declares a DOCTYPE or entities")]
    Entities,
    #[error("more than {0} records")]
    TooManyRows(usize),
    #[error("malformed: {0}")]
    Malformed(String),
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes decompressed per message, over all its parts.
    pub max_size: usize,
    pub max_depth: usize,
    pub max_rows: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::Reports) -> Limits {
        Limits {
            max_size: c.max_size.0 as usize,
            max_depth: c.max_depth,
            max_rows: c.max_rows,
        }
    }
}

/// Read at most `max` bytes out of `r`; more is [`Refused::TooLarge`].
fn read_capped(r: impl Read, max: usize) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::new();
    r.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refused::Malformed(format!("decompression: {e}")))?;
    if out.len() > max {
        return Err(Refused::TooLarge(max));
    }
    Ok(out)
}

/// The first entry of a zip archive, capped.
fn unzip(data: &[u8], max: usize) -> Result<Vec<u8>, Refused> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| Refused::Malformed(format!("zip: {e}")))?;
    let file = archive
        .by_index(0)
        .map_err(|e| Refused::Malformed(format!("zip: {e}")))?;
    read_capped(file, max)
}

/// Refuse what the XML parser should never see: DOCTYPE and entity declarations, nesting
/// deeper than `max_depth`, and more than `max_rows` `<record>`s (the parser would hold them
/// all). One pass; attribute values with `>` inside quotes are skipped correctly.
pub fn check_xml(x: &[u8], max_depth: usize, max_rows: usize) -> Result<(), Refused> {
    let mut depth = 0usize;
    let mut records = 0usize;
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'<', &x[i..]) {
        let start = i + off + 1;
        let next = x.get(start).copied();
        // The end of this markup.
        let mut j = start;
        let mut quote = None;
        while j < x.len() {
            match (quote, x[j]) {
                (None, b'"' | b'\'') if next != Some(b'!') => quote = Some(x[j]),
                (Some(q), c) if c == q => quote = None,
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        match next {
            Some(b'!') => {
                let rest = &x[start..x.len().min(start + 8)];
                if rest.len() >= 8 && rest[1..8].eq_ignore_ascii_case(b"DOCTYPE")
                    || rest.len() >= 7 && rest[1..7].eq_ignore_ascii_case(b"ENTITY")
                {
                    return Err(Refused::Entities);
                }
                // A comment or CDATA: skip to its own end.
                if x[start..].starts_with(b"!--") {
                    j = memchr::memmem::find(&x[start..], b"-->")
                        .map_or(x.len(), |e| start + e + 2);
                } else if x[start..].starts_with(b"![CDATA[") {
                    j = memchr::memmem::find(&x[start..], b"]]>")
                        .map_or(x.len(), |e| start + e + 2);
                }
            }
            Some(b'?') => {}
            Some(b'/') => depth = depth.saturating_sub(1),
            _ => {
                let tag = &x[start..j.min(x.len())];
                if tag.starts_with(b"record")
                    && tag
                        .get(6)
                        .is_none_or(|c| c.is_ascii_whitespace() || *c == b'/')
                {
                    records += 1;
                    if records > max_rows {
                        return Err(Refused::TooManyRows(max_rows));
                    }
                }
                if j == 0 || x.get(j - 1) != Some(&b'/') {
                    depth += 1;
                    if depth > max_depth {
                        return Err(Refused::TooDeep(max_depth));
                    }
                }
            }
        }
        i = (j + 1).min(x.len());
    }
    Ok(())
}

enum Payload {
    Xml,
    Json,
}

/// Parse one message sent to the reports address.
pub fn parse(raw: &[u8], lim: Limits) -> Result<Parsed, Refused> {
    let msg = MessageParser::new()
        .parse(raw)
        .ok_or_else(|| Refused::Malformed("not a message".into()))?;
    let mut refused = Refused::NotAReport;
    // What decompression may still produce for this message, over all its parts.
    let mut left = lim.max_size;
    for part in &msg.parts {
        let ct = part.content_type();
        let ctype = ct
            .map(|c| c.ctype().to_ascii_lowercase())
            .unwrap_or_default();
        let sub = ct
            .and_then(|c| c.subtype())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if ctype == "message" && sub == "feedback-report" {
            return failure(raw);
        }
        let name = part
            .attachment_name()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let bytes: &[u8] = match &part.body {
            PartType::Text(t) => t.as_bytes(),
            PartType::Binary(b) | PartType::InlineBinary(b) => b.as_ref(),
            _ => continue,
        };
        let kind =
            if sub.starts_with("tlsrpt") || name.ends_with(".json") || name.ends_with(".json.gz") {
                Payload::Json
            } else {
                Payload::Xml
            };
        let data = if sub.ends_with("gzip") || name.ends_with(".gz") {
            read_capped(flate2::read::GzDecoder::new(bytes), left)
        } else if sub.ends_with("zip") || name.ends_with(".zip") {
            unzip(bytes, left)
        } else if sub == "xml"
            || name.ends_with(".xml")
            || sub == "tlsrpt+json"
            || name.ends_with(".json")
        {
            if bytes.len() > left {
                Err(Refused::TooLarge(lim.max_size))
            } else {
                Ok(bytes.to_vec())
            }
        } else {
            continue;
        };
        let data = data.inspect(|d| left -= d.len()).map_err(|e| match e {
            Refused::TooLarge(_) => Refused::TooLarge(lim.max_size),
            e => e,
        });
        let result = data.and_then(|d| match kind {
            Payload::Json => TlsReport::parse_json(&d)
                .map(Parsed::Tls)
                .map_err(|e| Refused::Malformed(format!("TLS report: {e:?}"))),
            Payload::Xml => {
                check_xml(&d, lim.max_depth, lim.max_rows)?;
                Report::parse_xml(&d)
                    .map(Parsed::Aggregate)
                    .map_err(|e| Refused::Malformed(format!("aggregate report: {e}")))
            }
        });
        match result {
            Ok(p) => return Ok(p),
            // A bomb or a hostile document is the answer: no other part is read.
            Err(
                e @ (Refused::TooLarge(_)
                | Refused::TooDeep(_)
                | Refused::Entities
                | Refused::TooManyRows(_)),
            ) => {
                return Err(e);
            }
            Err(e) => refused = e,
        }
    }
    Err(refused)
}

fn failure(raw: &[u8]) -> Result<Parsed, Refused> {
    let f = Feedback::parse_rfc5322(raw).map_err(|e| Refused::Malformed(format!("ARF: {e:?}")))?;
    let domain = f
        .reported_domain()
        .first()
        .map(|d| d.to_string())
        .or_else(|| f.original_mail_from().and_then(super::domain_of))
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(Parsed::Failure {
        domain,
        source_ip: f.source_ip().map(|ip| ip.to_string()),
        failure: format!("{:?}", f.auth_failure()),
    })
}

/// The most of a report's summary kept (TLS policies' results, a failure report's facts).
const MAX_DETAIL: usize = 64 << 10;

/// `s` without NUL and control characters, cut to at most `max` bytes on a character
/// boundary.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn pass(r: &mail_auth::report::DmarcResult) -> bool {
    *r == mail_auth::report::DmarcResult::Pass
}

/// Keep a parsed report; `false` when it was kept already.
pub async fn keep(store: &Store, p: Parsed, now: i64, max_rows: usize) -> Result<bool, StoreError> {
    let (id, kind, org, domain, begin, end, detail, rows) = match &p {
        Parsed::Aggregate(r) => {
            let rows: Vec<(String, String, i64, String, bool, bool, bool)> = r
                .records()
                .iter()
                .take(max_rows)
                .map(|rec| {
                    let hf = rec.header_from().to_ascii_lowercase();
                    let d = if hf.is_empty() {
                        r.domain().to_ascii_lowercase()
                    } else {
                        hf
                    };
                    (
                        d,
                        rec.source_ip().map(|i| i.to_string()).unwrap_or_default(),
                        rec.count() as i64,
                        format!("{:?}", rec.action_disposition()).to_ascii_lowercase(),
                        pass(&rec.dmarc_dkim_result()) || pass(&rec.dmarc_spf_result()),
                        rec.dkim_auth_result()
                            .iter()
                            .any(|d| d.result() == mail_auth::report::DkimResult::Pass),
                        rec.spf_auth_result()
                            .iter()
                            .any(|s| s.result() == mail_auth::report::SpfResult::Pass),
                    )
                })
                .collect();
            (
                format!("dmarc:{}:{}", r.org_name(), r.report_id()),
                "dmarc",
                r.org_name().to_string(),
                r.domain().to_ascii_lowercase(),
                r.date_range_begin() as i64,
                r.date_range_end() as i64,
                String::new(),
                rows,
            )
        }
        Parsed::Tls(t) => {
            let policies: Vec<serde_json::Value> = t
                .policies
                .iter()
                .take(max_rows)
                .map(|p| {
                    serde_json::json!({
                        "domain": p.policy.policy_domain,
                        "type": format!("{:?}", p.policy.policy_type),
                        "successful": p.summary.total_success,
                        "failed": p.summary.total_failure,
                        "failures": p.failure_details.iter().take(20).map(|f| format!("{:?}", f.result_type)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let domain = t
                .policies
                .first()
                .map(|p| p.policy.policy_domain.to_ascii_lowercase())
                .unwrap_or_default();
            (
                format!(
                    "tls:{}:{}",
                    t.organization_name.as_deref().unwrap_or(""),
                    t.report_id
                ),
                "tls",
                t.organization_name.clone().unwrap_or_default(),
                domain,
                t.date_range.start_datetime.to_timestamp(),
                t.date_range.end_datetime.to_timestamp(),
                serde_json::Value::Array(policies).to_string(),
                Vec::new(),
            )
        }
        Parsed::Failure {
            domain,
            source_ip,
            failure,
        } => {
            let detail =
                serde_json::json!({"source_ip": source_ip, "failure": failure}).to_string();
            let digest = ring::digest::digest(&ring::digest::SHA256, detail.as_bytes());
            let hex: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (
                format!("arf:{domain}:{now}:{hex}"),
                "failure",
                String::new(),
                domain.clone(),
                now,
                now,
                detail,
                Vec::new(),
            )
        }
    };
    // Everything below came from the sender: bounded and NUL-free before it is stored
    // (PostgreSQL refuses NUL in text and indexes at most about 2.7 kB per entry).
    let id = {
        let d = ring::digest::digest(&ring::digest::SHA256, format!("{kind}\0{id}").as_bytes());
        let hex: String = d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{kind}:{hex}")
    };
    let (org, domain) = (clean(&org, 255), clean(&domain, 255));
    let detail = match clean(&detail, MAX_DETAIL) {
        d if d.len() < detail.len() => "{\"truncated\": true}".to_string(),
        d => d,
    };
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(d, ip, n, disp, a, b, c)| {
            (clean(&d, 255), clean(&ip, 64), n, clean(&disp, 32), a, b, c)
        })
        .collect();
    let kind = kind.to_string();
    store
        .write(move |c| {
            let added = c.execute(
                "INSERT INTO reports_in(id, kind, org, domain, range_begin, range_end, received, \
                 detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO NOTHING",
                crate::params![id.clone(), kind, org, domain, begin, end, now, detail],
            )?;
            if added == 0 {
                return Ok(false);
            }
            for (n, (d, ip, count, disp, dmarc, dkim, spf)) in rows.iter().enumerate() {
                c.execute(
                    "INSERT INTO report_rows(report, n, domain, source_ip, count, disposition, \
                     dmarc_pass, dkim_pass, spf_pass) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    crate::params![
                        id.clone(),
                        n as i64,
                        d.clone(),
                        ip.clone(),
                        *count,
                        disp.clone(),
                        *dmarc as i64,
                        *dkim as i64,
                        *spf as i64
                    ],
                )?;
            }
            Ok(true)
        })
        .await
}

/// A report kept, as `mailwarden report received` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    pub id: String,
    pub kind: String,
    pub org: String,
    pub domain: String,
    pub begin: i64,
    pub end: i64,
    pub received: i64,
    /// Aggregate rows kept.
    pub rows: i64,
    /// TLS reports: each policy's results; failure reports: the source and failure.
    pub detail: serde_json::Value,
}

/// The reports received since `since`, newest first.
pub fn received(store: &Store, since: i64) -> Result<Vec<Received>, StoreError> {
    store.read(|c| {
        c.query_map(
            "SELECT i.id, i.kind, i.org, i.domain, i.range_begin, i.range_end, i.received, \
             i.detail, (SELECT COUNT(*) FROM report_rows r WHERE r.report = i.id) \
             FROM reports_in i WHERE i.received >= ?1 ORDER BY i.received DESC, i.id LIMIT 10000",
            crate::params![since],
            |r| {
                let detail: String = r.get(7)?;
                Ok(Received {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    org: r.get(2)?,
                    domain: r.get(3)?,
                    begin: r.get(4)?,
                    end: r.get(5)?,
                    received: r.get(6)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    rows: r.get(8)?,
                })
            },
        )
    })
}

/// Where local delivery hands mail for `reports.address`.
pub struct Sink {
    pub address: String,
    pub store: Store,
    pub limits: Limits,
    pub max_rows: usize,
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl Sink {
    /// Parse and keep one message (its CRLF bytes); the reply local delivery records. Every
    /// outcome is final, a refused report's and a store failure's too: a report is never
    /// worth parsing twice.
    pub async fn take(&self, qid: &str, raw: Vec<u8>) -> String {
        let lim = self.limits;
        let parsed = crate::heavy::offload(move || async move {
            let _cpu = crate::heavy::cpu().await;
            parse(&raw, lim)
        })
        .await
        .unwrap_or_else(|e| Err(Refused::Malformed(format!("parser failed: {e}"))));
        match parsed {
            Ok(p) => {
                let what = match &p {
                    Parsed::Aggregate(_) => "aggregate",
                    Parsed::Tls(_) => "tls",
                    Parsed::Failure { .. } => "failure",
                };
                match keep(&self.store, p, self.clock.now_secs(), self.max_rows).await {
                    Ok(kept) => {
                        tracing::info!(event = "report_received", qid = %qid, kind = what, duplicate = !kept);
                        format!("report kept ({what})")
                    }
                    Err(e) => {
                        tracing::error!(event = "report_store_failed", qid = %qid, kind = what, error = %e);
                        format!("report not kept: {e}")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(event = "report_refused", qid = %qid, reason = ?e.to_string());
                format!("report refused: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xml_check_refuses_entities_and_depth_and_passes_reports() {
        let ok = b"<?xml version=\"1.0\"?><!-- <a><a> --><feedback a=\"x>y\"><x/><b><c>1</c></b></feedback>";
        assert_eq!(check_xml(ok, 3, 10), Ok(()));
        assert_eq!(check_xml(ok, 2, 10), Err(Refused::TooDeep(2)));
        let rows = "<feedback><record><a/></record><record/><records/></feedback>";
        assert_eq!(check_xml(rows.as_bytes(), 5, 2), Ok(()));
        assert_eq!(
            check_xml(rows.as_bytes(), 5, 1),
            Err(Refused::TooManyRows(1))
        );
        let doctype = b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>";
        assert_eq!(check_xml(doctype, 20, 10), Err(Refused::Entities));
        let deep = "<a>".repeat(100_000);
        assert_eq!(
            check_xml(deep.as_bytes(), 20, 10),
            Err(Refused::TooDeep(20))
        );
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_cap() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![b'<'; 8 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        let r = read_capped(flate2::read::GzDecoder::new(&bomb[..]), 1 << 20);
        assert_eq!(r, Err(Refused::TooLarge(1 << 20)));
    }
}
