//! Sending TLS-RPT reports (RFC 8460): once a period ends, for each domain we delivered to,
//! the outcome of our TLS sessions per policy (MTA-STS, DANE, none), to the `rua` of the
//! domain's `_smtp._tls` record, gzip JSON, DKIM-signed.
//!
//! The same care as DMARC reports (`outbound.rs`): the daily budgets, never to a domain on
//! our DNS domain lists, and only `mailto:` destinations (an `https:` one is recorded as
//! skipped). A domain's results are taken in one commit, so nodes never send one twice.

use super::outbound::{Reporter, Sent};
use super::{domain_of, period};
use crate::store::StoreError;
use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use std::collections::BTreeMap;

/// One counted outcome: (policy type, policy text, MX host, result, receiving IP, count).
type Outcome = (String, String, String, String, String, i64);

fn result_type(r: &str) -> ResultType {
    match r {
        "starttls-not-supported" => ResultType::StartTlsNotSupported,
        "certificate-host-mismatch" => ResultType::CertificateHostMismatch,
        "certificate-expired" => ResultType::CertificateExpired,
        "certificate-not-trusted" => ResultType::CertificateNotTrusted,
        "validation-failure" => ResultType::ValidationFailure,
        "tlsa-invalid" => ResultType::TlsaInvalid,
        "dnssec-invalid" => ResultType::DnssecInvalid,
        "sts-policy-fetch-error" => ResultType::StsPolicyFetchError,
        _ => ResultType::Other,
    }
}

/// The report's policies from a domain's outcomes.
pub fn policies(domain: &str, outcomes: &[Outcome]) -> Vec<Policy> {
    let mut by_policy: BTreeMap<(String, String), Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_policy
            .entry((o.0.clone(), o.1.clone()))
            .or_default()
            .push(o);
    }
    by_policy
        .into_iter()
        .map(|((kind, text), rows)| {
            let policy_type = match kind.as_str() {
                "sts" => PolicyType::Sts,
                "tlsa" => PolicyType::Tlsa,
                _ => PolicyType::NoPolicyFound,
            };
            let mut mx: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
            mx.sort();
            mx.dedup();
            let ok = |r: &&&Outcome| r.3 == "success";
            let total_success: i64 = rows.iter().filter(ok).map(|r| r.5).sum();
            let total_failure: i64 = rows.iter().filter(|r| !ok(r)).map(|r| r.5).sum();
            Policy {
                policy: PolicyDetails {
                    policy_type,
                    policy_string: text.lines().map(str::to_string).collect(),
                    policy_domain: domain.to_string(),
                    mx_host: if policy_type == PolicyType::Sts {
                        mx
                    } else {
                        Vec::new()
                    },
                },
                summary: Summary {
                    total_success: total_success.clamp(0, u32::MAX as i64) as u32,
                    total_failure: total_failure.clamp(0, u32::MAX as i64) as u32,
                },
                failure_details: rows
                    .iter()
                    .filter(|r| !ok(r))
                    .map(|r| FailureDetails {
                        result_type: result_type(&r.3),
                        sending_mta_ip: None,
                        receiving_mx_hostname: Some(r.2.clone()),
                        receiving_mx_helo: None,
                        receiving_ip: r.4.parse().ok(),
                        failed_session_count: r.5.clamp(0, u32::MAX as i64) as u32,
                        additional_information: None,
                        failure_reason_code: None,
                    })
                    .collect(),
            }
        })
        .collect()
}

impl Reporter {
    /// Send the TLS reports of every ended period.
    pub(super) async fn send_tls_due(&self) -> Result<(), StoreError> {
        let now = self.clock.now_secs();
        let interval = self.config.dmarc.report_interval.get().as_secs();
        let ended = period(now - super::outbound::GRACE, interval);
        let due: Vec<(i64, String)> = self
            .store
            .read_off(move |c| {
                c.query_map(
                    "SELECT DISTINCT period, domain FROM tls_results WHERE period < ?1 \
                     ORDER BY period, domain LIMIT 100",
                    crate::params![ended],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await?;
        for (p, domain) in due {
            let d = domain.clone();
            // Read and delete in one transaction, as for DMARC reports.
            let (taken, outcomes) =
                self.store
                    .write(move |c| {
                        let outcomes: Vec<Outcome> = c.query_map(
                        "SELECT policy_type, policy, mx_host, result, ip, count FROM tls_results \
                         WHERE period = ?1 AND domain = ?2 ORDER BY policy_type, mx_host, result \
                         LIMIT 10000",
                        crate::params![p, d.clone()],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                    )?;
                        let n = c.execute(
                            "DELETE FROM tls_results WHERE period = ?1 AND domain = ?2",
                            crate::params![p, d],
                        )?;
                        Ok((n, outcomes))
                    })
                    .await?;
            if taken == 0 || outcomes.is_empty() || !self.config.dmarc.send_reports {
                continue;
            }
            let decided = self.tls_report(p, &domain, &outcomes, now).await;
            self.keep_decisions(decided).await?;
        }
        Ok(())
    }

    async fn tls_report(&self, p: i64, domain: &str, outcomes: &[Outcome], now: i64) -> Vec<Sent> {
        let cfg = &self.config;
        let report_id = format!("{p}.{}", crate::util::new_id());
        let decision = |destination: &str, status: &str, reason: String, bytes: usize| Sent {
            kind: "tls".into(),
            period: p,
            domain: domain.to_string(),
            destination: destination.to_string(),
            status: status.into(),
            reason,
            report_id: report_id.clone(),
            bytes: bytes as i64,
            at: now,
        };
        let name = format!("_smtp._tls.{}.", domain.trim_end_matches('.'));
        let rua = match self
            .dns
            .auth
            .txt_lookup::<mail_auth::mta_sts::TlsRpt>(name, Some(&self.dns.caches.txt))
            .await
        {
            Ok(r) => r.rua.clone(),
            // No TLS-RPT record: nobody asked.
            Err(_) => return Vec::new(),
        };
        let mut to = Vec::new();
        let mut out = Vec::new();
        if let Some(why) = self.listed(domain).await {
            return vec![decision(domain, "skipped", why, 0)];
        }
        let mut budget = self.budget(now).await;
        let interval = cfg.dmarc.report_interval.get().as_secs() as i64;
        let report = TlsReport {
            organization_name: Some(if cfg.dmarc.report_org.is_empty() {
                cfg.hostname.clone()
            } else {
                cfg.dmarc.report_org.clone()
            }),
            date_range: DateRange::from_timestamps(p * interval, (p + 1) * interval - 1),
            contact_info: Some(cfg.report_from()),
            report_id: report_id.clone(),
            policies: policies(domain, outcomes),
        };
        let gz = super::aggregate::gzip(report.to_json().as_bytes());
        for uri in rua {
            let address = match uri {
                mail_auth::mta_sts::ReportUri::Mail(a) => a.to_ascii_lowercase(),
                mail_auth::mta_sts::ReportUri::Http(u) => {
                    out.push(decision(
                        &u,
                        "skipped",
                        "HTTPS reporting is not supported".into(),
                        0,
                    ));
                    continue;
                }
            };
            let Some(dest) = domain_of(&address) else {
                continue;
            };
            let why = if to.contains(&address) {
                continue;
            } else if let Some(why) = self.listed(&dest).await {
                Some(why)
            } else {
                budget.take(cfg, gz.len(), cfg.dmarc.report_max_size.0)
            };
            match why {
                Some(why) => out.push(decision(&address, "skipped", why, 0)),
                None => to.push(address),
            }
        }
        if to.is_empty() {
            return out;
        }
        let from = cfg.report_from();
        let from_domain = domain_of(&from).unwrap_or_default();
        let keys = self.keys(&from_domain).await;
        if keys.is_empty() {
            out.extend(to.iter().map(|a| {
                decision(
                    a,
                    "skipped",
                    format!("no DKIM key for {from_domain} to sign with"),
                    0,
                )
            }));
            return out;
        }
        let mut unsigned = Vec::new();
        let written = report.write_rfc5322_from_bytes(
            domain,
            &cfg.hostname,
            from.as_str(),
            to.iter().map(String::as_str),
            &gz,
            &mut unsigned,
        );
        if let Err(e) = written {
            out.extend(
                to.iter()
                    .map(|a| decision(a, "skipped", format!("building: {e}"), 0)),
            );
            return out;
        }
        let id = crate::util::new_id();
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
}
