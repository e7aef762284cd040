//! Sending DMARC aggregate reports (RFC 7489 §7.2) when a period ends.
//!
//! Each ended period's domains are taken one at a time: the taking deletes the period's
//! counts for that domain in one commit, so nodes sharing a store never send one report
//! twice. Then, in order, a report goes nowhere when:
//! - the domain asked for none (`rua`), or `dmarc.send_reports` is off;
//! - the domain has no authenticated good history with us (`dmarc.report_min_good`
//!   messages, aligned and accepted, in the reputation window, and not mostly bad): a
//!   spammer's domain publishing a `rua` learns nothing from us, and cannot make us mail
//!   its victims;
//! - the domain, or a destination's domain, is listed on one of our DNS domain lists;
//! - a destination outside the domain has not published the RFC 7489 §7.1 authorization
//!   (`<domain>._report._dmarc.<destination>`);
//! - the day's budget of reports or bytes is spent, or the report is larger than
//!   `dmarc.report_max_size` or the destination's `!size`;
//! - we hold no DKIM key for the From domain (an unsigned report fails DMARC itself).
//!
//! Every decision, sent or not, is a row of `reports_sent` (`mailwarden report sent`).

use super::aggregate::{self, Meta};
use super::{Published, Row, Rua, domain_of, period};
use crate::config::Config;
use crate::dns::Dns;
use crate::queue::{Folder, Message, Queue, Recipient, Route};
use crate::routing::{RcptDecision, Routing};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// How often ended periods are looked for: one indexed read.
const TICK: Duration = Duration::from_secs(2);
/// Domains taken per tick, at most.
const DOMAINS_PER_TICK: i64 = 100;
/// How long after a period ends it is taken (seconds).
pub(super) const GRACE: i64 = 300;

/// What the reporter needs of the server.
pub struct Reporter {
    pub config: Arc<Config>,
    pub store: Store,
    pub dns: Arc<Dns>,
    pub queue: Arc<Queue>,
    pub routing: Routing,
    pub keyring: Arc<crate::dkim::keys::Keyring>,
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// One decision about one destination, as `reports_sent` keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sent {
    pub kind: String,
    pub period: i64,
    pub domain: String,
    pub destination: String,
    /// `sent` or `skipped`.
    pub status: String,
    pub reason: String,
    pub report_id: String,
    pub bytes: i64,
    pub at: i64,
}

pub async fn run(r: Reporter) {
    loop {
        tokio::time::sleep(TICK).await;
        if let Err(e) = r.send_due().await {
            tracing::warn!(event = "report_run_failed", error = %e);
        }
    }
}

impl Reporter {
    fn interval(&self) -> u64 {
        self.config.dmarc.report_interval.get().as_secs()
    }

    /// Send the reports of every period that has ended: DMARC aggregate, then TLS-RPT; and
    /// now and then forget what is past `reports.retention`.
    pub async fn send_due(&self) -> Result<(), StoreError> {
        self.send_dmarc_due().await?;
        self.send_tls_due().await?;
        self.purge().await
    }

    /// Delete a batch of what is past its time: reports received and our decisions past
    /// `reports.retention`, MTA-STS policies past their `max_age`. At most once a minute.
    async fn purge(&self) -> Result<(), StoreError> {
        static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let now = self.clock.now_secs();
        if now - LAST.load(std::sync::atomic::Ordering::Relaxed) < 60 {
            return Ok(());
        }
        LAST.store(now, std::sync::atomic::Ordering::Relaxed);
        let before = now - self.config.reports.retention.get().as_secs() as i64;
        self.store
            .write(move |c| {
                c.execute(
                    "DELETE FROM report_rows WHERE report IN \
                     (SELECT id FROM reports_in WHERE received < ?1 ORDER BY received, id LIMIT 10)",
                    crate::params![before],
                )?;
                c.execute(
                    "DELETE FROM reports_in WHERE id IN \
                     (SELECT id FROM reports_in WHERE received < ?1 ORDER BY received, id LIMIT 10)",
                    crate::params![before],
                )?;
                c.execute(
                    "DELETE FROM reports_sent WHERE at < ?1",
                    crate::params![before],
                )?;
                c.execute(
                    "DELETE FROM sts_policies WHERE expires < ?1",
                    crate::params![now],
                )?;
                Ok(())
            })
            .await
    }

    async fn send_dmarc_due(&self) -> Result<(), StoreError> {
        let now = self.clock.now_secs();
        // A period is taken once it ended GRACE ago: a count still on its way lands first.
        let ended = period(now - GRACE, self.interval());
        let due: Vec<(i64, String)> = self
            .store
            .read_off(move |c| {
                c.query_map(
                    "SELECT period, domain FROM dmarc_policies WHERE period < ?1 \
                     ORDER BY period, domain LIMIT ?2",
                    crate::params![ended, DOMAINS_PER_TICK],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await?;
        for (p, domain) in due {
            let max_rows = self.config.reports.max_rows as i64;
            let dk = domain.clone();
            // Read and delete in one transaction: what is read is what is taken, and of two
            // nodes only the one whose DELETE finds the row sends.
            let taken = self
                .store
                .write(move |c| {
                    let policy: Vec<(String, String)> = c.query_map(
                        "SELECT published, rua FROM dmarc_policies WHERE period = ?1 AND domain = ?2",
                        crate::params![p, dk.clone()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let rows: Vec<(String, i64)> = c.query_map(
                        "SELECT eval, count FROM dmarc_evals WHERE period = ?1 AND domain = ?2 \
                         ORDER BY count DESC, row_key LIMIT ?3",
                        crate::params![p, dk.clone(), max_rows],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let n = c.execute(
                        "DELETE FROM dmarc_policies WHERE period = ?1 AND domain = ?2",
                        crate::params![p, dk.clone()],
                    )?;
                    c.execute(
                        "DELETE FROM dmarc_evals WHERE period = ?1 AND domain = ?2",
                        crate::params![p, dk],
                    )?;
                    Ok((n, policy.into_iter().next(), rows))
                })
                .await?;
            let (1.., Some((published, rua)), rows) = taken else {
                continue; // another node took it
            };
            let (Ok(published), Ok(rua)) = (
                serde_json::from_str::<Published>(&published),
                serde_json::from_str::<Vec<Rua>>(&rua),
            ) else {
                continue;
            };
            let rows: Vec<(Row, u64)> = rows
                .into_iter()
                .filter_map(|(e, n)| Some((serde_json::from_str(&e).ok()?, n.max(0) as u64)))
                .collect();
            if rua.is_empty() || rows.is_empty() || !self.config.dmarc.send_reports {
                continue;
            }
            let decided = self.report(p, &published, &rua, &rows, now).await;
            self.keep_decisions(decided).await?;
        }
        Ok(())
    }

    /// Log and keep what was decided for each destination.
    pub(super) async fn keep_decisions(&self, decided: Vec<Sent>) -> Result<(), StoreError> {
        for s in &decided {
            tracing::info!(event = "report_sent", kind = %s.kind, domain = %s.domain, destination = %s.destination,
                status = %s.status, reason = %s.reason, bytes = s.bytes, report_id = %s.report_id);
        }
        self.store
                .write(move |c| {
                    for s in &decided {
                        c.execute(
                            "INSERT INTO reports_sent(kind, period, domain, destination, status, \
                             reason, report_id, bytes, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                             ON CONFLICT(kind, period, domain, destination) DO NOTHING",
                            crate::params![
                                s.kind.clone(),
                                s.period,
                                s.domain.clone(),
                                s.destination.clone(),
                                s.status.clone(),
                                s.reason.clone(),
                                s.report_id.clone(),
                                s.bytes,
                                s.at
                            ],
                        )?;
                    }
                    Ok(())
                })
                .await
    }

    /// Decide for each destination, and queue the report to those it may go to.
    async fn report(
        &self,
        p: i64,
        policy: &Published,
        rua: &[Rua],
        rows: &[(Row, u64)],
        now: i64,
    ) -> Vec<Sent> {
        let cfg = &self.config;
        let report_id = format!("{p}.{}", crate::util::new_id());
        let decision = |destination: &str, status: &str, reason: String, bytes: usize| Sent {
            kind: "dmarc".into(),
            period: p,
            domain: policy.domain.clone(),
            destination: destination.to_string(),
            status: status.into(),
            reason,
            report_id: report_id.clone(),
            bytes: bytes as i64,
            at: now,
        };
        let skip_all = |reason: String| -> Vec<Sent> {
            rua.iter()
                .map(|r| decision(&r.address, "skipped", reason.clone(), 0))
                .collect()
        };
        if let Some(why) = self.no_good_history(&policy.domain, now).await {
            return skip_all(why);
        }
        if let Some(why) = self.listed(&policy.domain).await {
            return skip_all(why);
        }
        let from = cfg.report_from();
        let from_domain = domain_of(&from).unwrap_or_default();
        let keys = self.keys(&from_domain).await;
        if keys.is_empty() {
            return skip_all(format!("no DKIM key for {from_domain} to sign with"));
        }
        let interval = self.interval() as i64;
        let meta = Meta {
            org_name: if cfg.dmarc.report_org.is_empty() {
                &cfg.hostname
            } else {
                &cfg.dmarc.report_org
            },
            email: &from,
            report_id: &report_id,
            begin: p * interval,
            end: (p + 1) * interval - 1,
        };
        let xml = aggregate::xml(&meta, policy, rows);
        let gz = aggregate::gzip(xml.as_bytes());
        let mut budget = self.budget(now).await;
        let mut out = Vec::new();
        let mut to = Vec::new();
        for r in rua {
            let address = r.address.trim_start_matches("mailto:").to_ascii_lowercase();
            let Some(dest) = domain_of(&address) else {
                continue;
            };
            let limit = match r.max_size {
                0 => cfg.dmarc.report_max_size.0,
                n => (n as u64).min(cfg.dmarc.report_max_size.0),
            };
            let why = if to.contains(&address) {
                continue;
            } else if let Some(why) = self.listed(&dest).await {
                Some(why)
            } else if let Some(why) = self.unauthorized(&policy.domain, &address).await {
                Some(why)
            } else {
                budget.take(cfg, gz.len(), limit)
            };
            match why {
                Some(why) => out.push(decision(&address, "skipped", why, 0)),
                None => to.push(address),
            }
        }
        if to.is_empty() {
            return out;
        }
        let receiver = &cfg.hostname;
        let id = crate::util::new_id();
        let message_id = format!("{id}.dmarc@{receiver}");
        let unsigned = aggregate::message(
            &from,
            &to,
            receiver,
            &policy.domain,
            &meta,
            &gz,
            &crate::util::rfc5322_date(now),
            &message_id,
        );
        out.extend(
            self.dispatch(
                id,
                to,
                unsigned,
                &from_domain,
                keys,
                now,
                gz.len(),
                &decision,
            )
            .await,
        );
        out
    }

    /// DKIM-sign a report and queue it to `to`; what happened for each address.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dispatch(
        &self,
        id: String,
        to: Vec<String>,
        unsigned: Vec<u8>,
        from_domain: &str,
        keys: Arc<Vec<crate::dkim::keys::DomainKey>>,
        now: i64,
        size: usize,
        decision: &(dyn Fn(&str, &str, String, usize) -> Sent + Sync),
    ) -> Vec<Sent> {
        let cfg = &self.config;
        let receiver = &cfg.hostname;
        let mut out = Vec::new();
        let content = Arc::new(unsigned);
        let sign_headers = cfg.dkim.sign_headers.clone();
        let signed = {
            let (content, d) = (content.clone(), from_domain.to_string());
            tokio::task::spawn_blocking(move || {
                crate::dkim::sign::sign_all(&keys, &d, &content, &sign_headers, now.max(0) as u64)
            })
            .await
            .unwrap_or_default()
        };
        let mut full = String::new();
        for (selector, r) in signed {
            match r {
                Ok(h) => full.push_str(&h),
                Err(e) => {
                    tracing::error!(event = "dkim_sign_failed", domain = %from_domain, selector = %selector, error = %e)
                }
            }
        }
        if full.is_empty() {
            out.extend(
                to.iter()
                    .map(|a| decision(a, "skipped", "DKIM signing failed".into(), 0)),
            );
            return out;
        }
        let mut body = full.into_bytes();
        body.extend_from_slice(&content);
        let mut rcpts = Vec::new();
        for (i, a) in to.iter().enumerate() {
            let route =
                match mailwarden_proto::address::parse_forward_path(&format!("<{a}>"), false)
                    .map(|fp| self.routing.decide(&fp, true))
                {
                    Ok(RcptDecision::Local { mailbox }) => Route::Local {
                        mailbox,
                        folder: Folder::Inbox,
                    },
                    Ok(RcptDecision::Remote) => Route::Remote,
                    _ => {
                        out.push(decision(
                            a,
                            "skipped",
                            "not a deliverable address".into(),
                            0,
                        ));
                        continue;
                    }
                };
            rcpts.push(Recipient {
                idx: i as u32,
                address: a.clone(),
                route,
            });
        }
        if rcpts.is_empty() {
            return out;
        }
        let first = rcpts[0].clone();
        let mut msg = Message::generated("report", receiver, now, first, body);
        msg.id = id;
        let addrs: Vec<String> = rcpts.iter().map(|r| r.address.clone()).collect();
        msg.rcpts = rcpts;
        match self.queue.enqueue(msg).await {
            Ok(()) => out.extend(
                addrs
                    .iter()
                    .map(|a| decision(a, "sent", String::new(), size)),
            ),
            Err(e) => {
                tracing::error!(event = "report_enqueue_failed", error = %e);
                out.extend(
                    addrs
                        .iter()
                        .map(|a| decision(a, "skipped", format!("queue: {e}"), 0)),
                );
            }
        }
        out
    }

    /// The DKIM keys of `domain` (a shared store's are a read away: off the async workers).
    pub(super) async fn keys(&self, domain: &str) -> Arc<Vec<crate::dkim::keys::DomainKey>> {
        let (keyring, d) = (self.keyring.clone(), domain.to_string());
        tokio::task::spawn_blocking(move || keyring.keys_for(&d))
            .await
            .unwrap_or_default()
    }

    /// Why `domain` has not earned a report, if it has not.
    async fn no_good_history(&self, domain: &str, now: i64) -> Option<String> {
        let who = crate::reputation::Who {
            domain: Some(domain.to_string()),
            ..Default::default()
        };
        let (store, cfg) = (self.store.clone(), self.config.reputation.clone());
        let h =
            tokio::task::spawn_blocking(move || crate::reputation::lookup(&store, &cfg, &who, now))
                .await
                .ok()?;
        let Ok(h) = h else {
            return Some("its history could not be read".into());
        };
        let c = h.identities.first().map(|(_, c)| *c).unwrap_or_default();
        let bad = c.junked + c.quarantined + c.rejected + c.marked_spam;
        let min = self.config.dmarc.report_min_good;
        if c.accepted < min || bad * 2 > c.accepted {
            Some(format!(
                "no authenticated good history: {} accepted, {} junked, quarantined or \
                 rejected, {min} accepted needed",
                c.accepted, bad
            ))
        } else {
            None
        }
    }

    /// Which of our DNS domain lists lists `domain`, if one does.
    pub(super) async fn listed(&self, domain: &str) -> Option<String> {
        let lists = &self.config.screening.dnsbl;
        if lists.domain_zones.is_empty() {
            return None;
        }
        let found = crate::screening::dnsbl::domain_lists(
            self.dns.clone(),
            lists,
            &[("domain", domain)],
            self.config.dns.timeout.get(),
        )
        .await;
        found.first().map(|f| f.detail.clone())
    }

    /// Why `address` may not receive `domain`'s reports (RFC 7489 §7.1), if it may not.
    async fn unauthorized(&self, domain: &str, address: &str) -> Option<String> {
        let addrs = [address.to_string()];
        match self
            .dns
            .auth
            .verify_dmarc_report_address(domain, &addrs, Some(&self.dns.caches.txt))
            .await
        {
            None => Some("DNS temporary error on the external destination check".into()),
            Some(ok) if ok.is_empty() => Some(format!(
                "no external destination record {domain}._report._dmarc.{}",
                domain_of(address).unwrap_or_default()
            )),
            Some(_) => None,
        }
    }

    /// What is left of the day's budget: reports sent and their bytes since a day ago (none
    /// left when that cannot be read).
    pub(super) async fn budget(&self, now: i64) -> Budget {
        let spent = self
            .store
            .read_off(move |c| {
                c.query_row(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM reports_sent \
                     WHERE status = 'sent' AND at >= ?1",
                    crate::params![now - 86_400],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await;
        let (sent, bytes) = spent.unwrap_or((i64::MAX, i64::MAX));
        Budget { sent, bytes }
    }
}

/// The day's reports and bytes so far, as one run spends them.
pub(super) struct Budget {
    sent: i64,
    bytes: i64,
}

impl Budget {
    /// Why a report of `size` bytes may not go to a destination taking `limit` bytes, or
    /// `None`, counting it as sent.
    pub(super) fn take(&mut self, cfg: &Config, size: usize, limit: u64) -> Option<String> {
        if size as u64 > limit {
            return Some(format!(
                "report too large: {size} bytes, the limit is {limit}"
            ));
        }
        if self.sent >= cfg.dmarc.report_max_per_day as i64
            || self.bytes.saturating_add(size as i64) > cfg.dmarc.report_max_bytes_per_day.0 as i64
        {
            return Some("the daily budget of reports is spent".to_string());
        }
        self.sent += 1;
        self.bytes += size as i64;
        None
    }
}

/// What was decided since `since` (`mailwarden report sent`), newest first.
pub fn sent(store: &Store, since: i64) -> Result<Vec<Sent>, StoreError> {
    store.read(|c| {
        c.query_map(
            "SELECT kind, period, domain, destination, status, reason, report_id, bytes, at \
             FROM reports_sent WHERE at >= ?1 ORDER BY at DESC, domain, destination LIMIT 10000",
            crate::params![since],
            |r| {
                Ok(Sent {
                    kind: r.get(0)?,
                    period: r.get(1)?,
                    domain: r.get(2)?,
                    destination: r.get(3)?,
                    status: r.get(4)?,
                    reason: r.get(5)?,
                    report_id: r.get(6)?,
                    bytes: r.get(7)?,
                    at: r.get(8)?,
                })
            },
        )
    })
}
