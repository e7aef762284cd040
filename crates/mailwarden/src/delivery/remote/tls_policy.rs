//! Which TLS an MX host gets, and what TLS-RPT (RFC 8460) will say about it.
//!
//! In order (RFC 8461 §2: DANE takes precedence over MTA-STS):
//! 1. DANE (`dane.rs`): the host's MX and TLSA answers validate under DNSSEC → STARTTLS
//!    required and the certificate must match a TLSA record; a mismatch, or a TLSA lookup
//!    that fails or does not validate, makes the host unusable for now (never plaintext).
//! 2. MTA-STS `enforce` (`sts.rs`): the host must match the policy's `mx`, and its
//!    certificate must be valid for its name (webpki roots and `delivery.extra_roots`), or
//!    the host is not used.
//! 3. MTA-STS `testing`: verified TLS is tried and a failure is reported, then the mail goes
//!    as it would without a policy.
//! 4. Otherwise: opportunistic STARTTLS, or `delivery.require_tls`.
//!
//! Every TLS session's outcome is counted per policy domain, policy and result in
//! `tls_results`, for the daily TLS-RPT report (`reports::tlsrpt`).

use super::dane::{Dane, Tlsa};
use super::sts::{Mode, Policy, Sts};
use crate::config::Config;
use crate::dns::Dns;
use crate::store::Store;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;

/// The kinds of policy TLS-RPT reports on (RFC 8460 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub fn name(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// What a host is to be tried with.
pub enum Plan {
    /// DANE: these records, checked by this config.
    Dane(Arc<rustls::ClientConfig>, Vec<Tlsa>),
    /// MTA-STS enforce: verified TLS.
    Sts(Arc<rustls::ClientConfig>),
    /// MTA-STS testing: verified TLS tried first, then as without a policy.
    StsTesting(Arc<rustls::ClientConfig>),
    /// No policy: as `delivery.require_tls` says.
    Plain,
    /// TLS required, unauthenticated: TLSA records validate but none is usable (RFC 7672
    /// §2.2).
    Required,
    /// The host may not be used now (a policy forbids it, or DNSSEC failed): why, and the
    /// TLS-RPT result type.
    Skip(String, &'static str),
}

pub struct TlsPolicies {
    config: Arc<Config>,
    dns: Arc<Dns>,
    store: Store,
    clock: Arc<dyn crate::clock::Clock>,
    sts: Option<Sts>,
    dane: Option<Dane>,
    /// webpki roots plus `delivery.extra_roots`, checking the host's name.
    webpki: Arc<rustls::ClientConfig>,
}

/// The webpki roots and the extra roots (PEM files) of the config.
pub fn roots(cfg: &Config) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in &cfg.delivery.extra_roots {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("delivery.extra_roots: {}: {e}", path.display()))?;
        for c in certs {
            let c =
                c.map_err(|e| anyhow::anyhow!("delivery.extra_roots: {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("delivery.extra_roots: {}: {e}", path.display()))?;
        }
    }
    Ok(Arc::new(roots))
}

impl TlsPolicies {
    pub fn new(
        config: Arc<Config>,
        dns: Arc<Dns>,
        store: Store,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> anyhow::Result<TlsPolicies> {
        let roots = roots(&config)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let sts = config
            .delivery
            .mta_sts
            .then(|| {
                Sts::new(
                    store.clone(),
                    roots,
                    config.delivery.mta_sts_port,
                    dns.clone(),
                    config.delivery.allow_private_destinations,
                )
            })
            .transpose()?;
        let dane = config
            .delivery
            .dane
            .then(|| Dane::new(&config.dns, config.delivery.port))
            .transpose()?;
        Ok(TlsPolicies {
            config,
            dns,
            store,
            clock,
            sts,
            dane,
            webpki,
        })
    }

    /// The MTA-STS policy of `domain`, if it has one in force (`none` is none).
    pub async fn sts(&self, domain: &str) -> Option<Policy> {
        let sts = self.sts.as_ref()?;
        let name = format!("_mta-sts.{}.", domain.trim_end_matches('.'));
        let id = match self
            .dns
            .auth
            .txt_lookup::<mail_auth::mta_sts::MtaSts>(name, Some(&self.dns.caches.txt))
            .await
        {
            Ok(r) => Some(r.id.clone()),
            Err(_) => None,
        };
        match sts.policy(domain, id, self.clock.now_secs()).await {
            Ok(p) => p.filter(|p| p.mode != Mode::None),
            Err(e) => {
                tracing::warn!(event = "mta_sts_store_failed", domain, error = %e);
                None
            }
        }
    }

    /// How to try `host` of `domain`, under the domain's MTA-STS policy `sts`.
    pub async fn plan(&self, host: &str, mx_secure: bool, sts: Option<&Policy>) -> Plan {
        if let Some(dane) = &self.dane {
            match dane.lookup(host, mx_secure).await {
                Ok(Some(records)) if records.is_empty() => return Plan::Required,
                Ok(Some(records)) => {
                    return Plan::Dane(dane.config(records.clone()), records);
                }
                Ok(None) => {}
                Err(e) => return Plan::Skip(e, "tlsa-invalid"),
            }
        }
        match sts {
            Some(p) if p.mode == Mode::Enforce => {
                if p.matches(host) {
                    Plan::Sts(self.webpki.clone())
                } else {
                    Plan::Skip(
                        format!("{host} is not an MX host of the MTA-STS policy"),
                        "validation-failure",
                    )
                }
            }
            Some(p) if p.mode == Mode::Testing => Plan::StsTesting(self.webpki.clone()),
            _ => Plan::Plain,
        }
    }

    /// The MX answer for `domain` under DNSSEC (insecure when DANE is off).
    pub async fn mx(&self, domain: &str) -> super::dane::Mx {
        match &self.dane {
            Some(d) => d.mx(domain).await,
            None => super::dane::Mx::Insecure,
        }
    }

    /// Count one TLS session's outcome for TLS-RPT, in the background.
    pub fn record(
        &self,
        domain: &str,
        policy: PolicyType,
        policy_text: &str,
        mx_host: &str,
        ip: std::net::IpAddr,
        result: &str,
    ) {
        let store = self.store.clone();
        let p = crate::reports::period(
            self.clock.now_secs(),
            self.config.dmarc.report_interval.get().as_secs(),
        );
        let values = (
            domain.to_ascii_lowercase(),
            policy.name().to_string(),
            // Part of the key: PostgreSQL indexes at most about 2.7 kB per entry.
            cut(policy_text, 1024),
            mx_host.to_ascii_lowercase(),
            result.to_string(),
            ip.to_string(),
        );
        tokio::spawn(async move {
            let r = store
                .write(move |c| {
                    let (d, t, s, mx, r, ip) = values;
                    c.execute(
                        "INSERT INTO tls_results(period, domain, policy_type, policy, mx_host, \
                         result, ip, count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1) \
                         ON CONFLICT(period, domain, policy_type, policy, mx_host, result, ip) \
                         DO UPDATE SET count = tls_results.count + 1",
                        crate::params![p, d, t, s, mx, r, ip],
                    )
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(event = "tls_result_write_failed", error = %e);
            }
        });
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The TLS-RPT result type (RFC 8460 §4.3) of a failed verified handshake.
pub fn failure_type(error: &str) -> &'static str {
    if error.contains("STARTTLS is not offered") || error.contains("STARTTLS refused") {
        "starttls-not-supported"
    } else if error.contains("NotValidForName") {
        "certificate-host-mismatch"
    } else if error.contains("Expired") {
        "certificate-expired"
    } else if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}
