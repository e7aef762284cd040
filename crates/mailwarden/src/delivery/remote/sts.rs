//! MTA-STS (RFC 8461), the sending side: a destination domain's policy, fetched over HTTPS
//! and kept for its `max_age`, and whether an MX host matches it.
//!
//! The `_mta-sts` TXT record says a policy exists and names its version (`id`). A policy we
//! hold with the same id and not expired is used as it is; a new id is fetched from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`. The certificate of that server must
//! be valid for its name (webpki roots and `delivery.extra_roots`). Policies are kept in the
//! store, so a restart does not forget an `enforce` policy (the downgrade RFC 8461 §10.3
//! warns of). When the TXT record is gone or the fetch fails, a policy still held is used
//! until it expires (§5.1).
//!
//! Security: the policy body is hostile input. At most [`MAX_BODY`] bytes are read, within
//! [`FETCH_TIMEOUT`]; redirects are not followed (§3.3); at most [`MAX_MX`] `mx` patterns
//! are kept; `max_age` is capped at a year (§3.2).

use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// RFC 8461 §3.2: policies are at most 64 KiB.
pub const MAX_BODY: usize = 64 << 10;
const MAX_MX: usize = 100;
const MAX_AGE: u64 = 31_557_600;
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub mode: Mode,
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The body as fetched, for TLS-RPT's `policy-string`.
    pub body: String,
}

impl Policy {
    /// Parse a policy body (RFC 8461 §3.2): `key: value` lines, `version: STSv1` first.
    pub fn parse(id: &str, body: &str) -> Result<Policy, String> {
        let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut mode = None;
        let mut mx = Vec::new();
        let mut max_age = None;
        let mut version = false;
        for line in lines.by_ref() {
            let Some((k, v)) = line.split_once(':') else {
                return Err(format!("not a key: value line: {line:.60}"));
            };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "version" => version = v == "STSv1",
                "mode" => {
                    mode = Some(match v {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        _ => return Err(format!("unknown mode {v:.20}")),
                    })
                }
                "mx" if mx.len() < MAX_MX => mx.push(v.trim_end_matches('.').to_ascii_lowercase()),
                "max_age" => max_age = v.parse::<u64>().ok().map(|a| a.min(MAX_AGE)),
                _ => {}
            }
        }
        if !version {
            return Err("no `version: STSv1`".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no valid max_age")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("no mx".into());
        }
        Ok(Policy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
            body: body.to_string(),
        })
    }

    /// Does MX host `host` match one of the policy's patterns (§4.1): equal, or `*.` plus one
    /// label.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// After a failed fetch, the domain's policy is not fetched again for this long (RFC 8461
/// §10.2): a dead policy host must not cost every delivery attempt a 20 s wait.
const RETRY_FETCH: Duration = Duration::from_secs(300);

/// The policies of destination domains.
pub struct Sts {
    http: reqwest::Client,
    store: Store,
    port: u16,
    /// When each domain's last fetch failed.
    failed: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// Names for the policy fetch, through our resolver (`[dns]`), never the system's; private
/// addresses only with `delivery.allow_private_destinations`, as for SMTP.
struct Resolve {
    dns: Arc<crate::dns::Dns>,
    allow_private: bool,
}

impl reqwest::dns::Resolve for Resolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (dns, allow_private) = (self.dns.clone(), self.allow_private);
        let host = format!("{}.", name.as_str().trim_end_matches('.'));
        Box::pin(async move {
            let found = dns
                .auth
                .resolver()
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: Vec<std::net::SocketAddr> = found
                .iter()
                .filter(|ip| allow_private || super::route::is_global(*ip))
                .map(|ip| std::net::SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host}: no usable address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Sts {
    pub fn new(
        store: Store,
        roots: Arc<rustls::RootCertStore>,
        port: u16,
        dns: Arc<crate::dns::Dns>,
        allow_private: bool,
    ) -> anyhow::Result<Sts> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Resolve { dns, allow_private }))
            .timeout(FETCH_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Sts {
            http,
            store,
            port,
            failed: Default::default(),
        })
    }

    /// The policy of `domain`, if it has one we may use. `txt` is the `_mta-sts` record's
    /// id (`None`: no record). Errors are the store's only: a failed fetch means no policy,
    /// unless one is still held.
    pub async fn policy(
        &self,
        domain: &str,
        txt: Option<String>,
        now: i64,
    ) -> Result<Option<Policy>, StoreError> {
        let held = self.held(domain, now).await?;
        let Some(id) = txt else {
            return Ok(held);
        };
        if let Some(p) = &held
            && p.id == id
        {
            return Ok(held);
        }
        let recently_failed = {
            let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            f.retain(|_, at| at.elapsed() < RETRY_FETCH);
            f.contains_key(domain)
        };
        if recently_failed {
            return Ok(held);
        }
        match self.fetch(domain, &id).await {
            Ok(p) => {
                let (d, id, body, expires) = (
                    domain.to_string(),
                    p.id.clone(),
                    p.body.clone(),
                    now + p.max_age as i64,
                );
                self.store
                    .write(move |c| {
                        c.execute(
                            "INSERT INTO sts_policies(domain, id, body, fetched, expires) \
                             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(domain) DO UPDATE SET \
                             id = excluded.id, body = excluded.body, \
                             fetched = excluded.fetched, expires = excluded.expires",
                            crate::params![d, id, body, now, expires],
                        )
                    })
                    .await?;
                tracing::info!(event = "mta_sts_policy", domain, id = ?p.id, mode = ?p.mode, mx = ?p.mx.join(","));
                Ok(Some(p))
            }
            Err(e) => {
                tracing::warn!(event = "mta_sts_fetch_failed", domain, error = ?e);
                self.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(domain.to_string(), std::time::Instant::now());
                Ok(held)
            }
        }
    }

    async fn held(&self, domain: &str, now: i64) -> Result<Option<Policy>, StoreError> {
        let d = domain.to_string();
        let row: Option<(String, String)> = self
            .store
            .read_off(move |c| {
                c.query_map(
                    "SELECT id, body FROM sts_policies WHERE domain = ?1 AND expires > ?2",
                    crate::params![d, now],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map(|v| v.into_iter().next())
            })
            .await?;
        Ok(row.and_then(|(id, body)| Policy::parse(&id, &body).ok()))
    }

    async fn fetch(&self, domain: &str, id: &str) -> Result<Policy, String> {
        let url = if self.port == 443 {
            format!("https://mta-sts.{domain}/.well-known/mta-sts.txt")
        } else {
            format!(
                "https://mta-sts.{domain}:{}/.well-known/mta-sts.txt",
                self.port
            )
        };
        let mut resp = self.http.get(&url).send().await.map_err(|e| {
            // The TLS error is the useful part of reqwest's chain.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        })?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype.to_ascii_lowercase().starts_with("text/plain") {
            return Err(format!("{url}: Content-Type {ctype:.40}, not text/plain"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{url}: policy larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|_| format!("{url}: not UTF-8"))?;
        Policy::parse(id, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_match_one_wildcard_label() {
        let p = Policy::parse(
            "1",
            "version: STSv1\r\nmode: enforce\r\nmx: mx.example.org\r\nmx: *.backup.example.org\r\nmax_age: 999999999\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, MAX_AGE);
        assert!(p.matches("MX.example.org."));
        assert!(p.matches("a.backup.example.org"));
        assert!(!p.matches("a.b.backup.example.org"));
        assert!(!p.matches("backup.example.org"));
        assert!(!p.matches("mx.example.org.evil.test"));
        assert!(Policy::parse("1", "mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(Policy::parse("1", "version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(Policy::parse("1", "version: STSv1\nmode: sure\nmx: a\nmax_age: 1\n").is_err());
    }
}
