//! DMARC and TLS reports: who sends mail as which domain, as receivers see it.
//!
//! - Sending (RFC 7489 §7.2): every DMARC evaluation on the MX port is counted per period,
//!   From domain and result ([`record`]); when a period ends, `outbound.rs` builds one
//!   aggregate report per domain (`aggregate.rs`: the RFC 7489 Appendix C XML, gzip) and
//!   queues it, DKIM-signed, to the domain's `rua`, if the domain has earned it.
//! - Receiving: mail to `reports.address` is parsed (`inbound.rs`), never delivered to a
//!   mailbox, and kept; `domains.rs` answers "who sends as my domain".
//!
//! Security: a report is hostile input from anyone (`inbound.rs` has the caps). What we send
//! can hurt our own reputation: reports go only to domains with an authenticated good
//! history, within daily budgets, and never as the answer to one message (they are built on
//! a schedule from counts, and failure reports are never sent). A report we send holds
//! results of checks we ran, plus domains and selectors as senders wrote them (From, MAIL
//! FROM, DKIM `d=`/`s=`): parsed by those checks, and escaped in the XML.

pub mod aggregate;
pub mod domains;
pub mod inbound;
pub mod outbound;
pub mod tlsrpt;

use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A reporting address from a `rua` tag, with the size it accepts (0: any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rua {
    pub address: String,
    pub max_size: usize,
}

/// The policy a domain published, as RFC 7489's `policy_published`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub domain: String,
    pub adkim: String,
    pub aspf: String,
    pub p: String,
    pub sp: String,
    pub pct: u8,
}

/// One DKIM signature's result, uninterpreted by DMARC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimAuth {
    pub domain: String,
    pub selector: String,
    pub result: String,
}

/// One report row's facts (everything but its count): the record's grouping key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub source_ip: String,
    /// What we did, in DMARC's terms: `none`, `quarantine` or `reject`.
    pub disposition: String,
    /// The aligned results: `pass` or `fail`.
    pub dkim: String,
    pub spf: String,
    /// A policy override (`trusted_forwarder`), when one applied.
    pub reason: Option<String>,
    pub header_from: String,
    pub envelope_from: String,
    pub dkim_results: Vec<DkimAuth>,
    pub spf_domain: String,
    /// `mfrom` or `helo`.
    pub spf_scope: String,
    pub spf_result: String,
}

/// What DMARC evaluation gives a report: the published policy, where reports go, and the
/// row (its disposition and source are filled in once the verdict is known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub published: Published,
    pub rua: Vec<Rua>,
    pub row: Row,
}

/// The period a time falls in, for reports of `interval` seconds.
pub fn period(now: i64, interval: u64) -> i64 {
    now.div_euclid(interval.max(60) as i64)
}

fn key(row: &Row) -> (String, String) {
    let json = serde_json::to_string(row).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (hex, json)
}

/// Count one evaluated message in the current period: one upsert for its row, one for its
/// domain's policy. `disposition` is what we did (`none`, `quarantine`, `reject`).
pub async fn record(
    store: &Store,
    interval: u64,
    now: i64,
    mut eval: Evaluation,
    ip: IpAddr,
    disposition: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    eval.row.source_ip = ip.to_string();
    eval.row.disposition = disposition.to_string();
    eval.row.reason = reason.map(str::to_string);
    let p = period(now, interval);
    let (row_key, json) = key(&eval.row);
    let published = serde_json::to_string(&eval.published).unwrap_or_default();
    let rua = serde_json::to_string(&eval.rua).unwrap_or_default();
    let domain = eval.published.domain.clone();
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO dmarc_evals(period, domain, row_key, eval, count) \
                 VALUES (?1, ?2, ?3, ?4, 1) ON CONFLICT(period, domain, row_key) \
                 DO UPDATE SET count = dmarc_evals.count + 1",
                crate::params![p, domain.clone(), row_key, json],
            )?;
            c.execute(
                "INSERT INTO dmarc_policies(period, domain, published, rua) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(period, domain) \
                 DO UPDATE SET published = excluded.published, rua = excluded.rua",
                crate::params![p, domain, published, rua],
            )?;
            Ok(())
        })
        .await
}

/// Lowercase `a`'s domain part, or `None` for something that is not an address.
pub(crate) fn domain_of(a: &str) -> Option<String> {
    a.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}
