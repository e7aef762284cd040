//! The self-audit (`mailwarden audit`, the console's Domains page): our setup as an outside
//! sender sees it, through live DNS and the network. Each finding is pass, warn or fail, with
//! the fix. Checks: MX, PTR and FCrDNS of our addresses, SPF coverage and ending, published
//! DKIM keys against ours, DMARC, MTA-STS and TLS-RPT records, DNS block lists, the
//! certificate, and an unauthenticated relay attempt on our own MX listener.
//!
//! The server repeats the block-list and certificate checks every `audit.interval`
//! ([`watch`]): the findings become the `mailwarden_audit_findings` gauges, and an address
//! that becomes listed is told to the postmaster.
//!
//! Security: everything read here comes from DNS and is shown to an administrator as text
//! (escaped by the console, cleaned by the CLI). The relay attempt never sends DATA.

use crate::config::Config;
use crate::dkim::keys::Keyring;
use crate::dns::Dns;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The check's stable name: `mx`, `ptr`, `spf`, `dkim`, `dmarc`, `mta_sts`, `tls_rpt`,
    /// `dnsbl`, `certificate`, `relay`.
    pub check: &'static str,
    /// What it looked at: a domain, an address, a host.
    pub subject: String,
    pub status: Status,
    pub detail: String,
    /// What to do about it (empty on a pass).
    pub fix: String,
}

fn finding(
    check: &'static str,
    subject: &str,
    status: Status,
    detail: String,
    fix: String,
) -> Finding {
    Finding {
        check,
        subject: subject.to_string(),
        status,
        detail,
        fix: if status == Status::Pass {
            String::new()
        } else {
            fix
        },
    }
}

use crate::checks::spf::{fqdn_name as name, name_text};

fn text_of(n: &Name) -> String {
    name_text(n).to_ascii_lowercase()
}

/// The records of `rtype` at `q`; none for NXDOMAIN or NODATA, `Err` on other failures.
async fn lookup(dns: &Dns, q: Name, rtype: RecordType) -> Result<Vec<RData>, String> {
    use mail_auth::hickory_resolver::net::{DnsError, NetError};
    match dns.auth.resolver().lookup(q, rtype).await {
        Ok(l) => Ok(l.answers().iter().map(|r| r.data.clone()).collect()),
        Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// TXT records at `n`, each joined.
async fn txt(dns: &Dns, n: &str) -> Result<Vec<String>, String> {
    let Some(q) = name(n) else {
        return Ok(Vec::new());
    };
    Ok(lookup(dns, q, RecordType::TXT)
        .await?
        .iter()
        .filter_map(|d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

async fn mx_hosts(dns: &Dns, domain: &str) -> Result<Vec<String>, String> {
    let Some(q) = name(domain) else {
        return Ok(Vec::new());
    };
    Ok(lookup(dns, q, RecordType::MX)
        .await?
        .iter()
        .filter_map(|d| match d {
            RData::MX(m) => Some(text_of(&m.exchange)),
            _ => None,
        })
        .collect())
}

async fn addresses_of(dns: &Dns, host: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(v4) = dns.auth.ipv4_lookup(host, Some(&dns.caches.ipv4)).await {
        out.extend(v4.rrset.iter().map(|a| IpAddr::V4(*a)));
    }
    if let Ok(v6) = dns.auth.ipv6_lookup(host, Some(&dns.caches.ipv6)).await {
        out.extend(v6.rrset.iter().map(|a| IpAddr::V6(*a)));
    }
    out
}

/// Our public sending addresses: `audit.addresses`, else what `hostname` resolves to.
pub async fn our_addresses(cfg: &Config, dns: &Dns) -> Vec<IpAddr> {
    if !cfg.audit.addresses.is_empty() {
        return cfg
            .audit
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
    }
    addresses_of(dns, &cfg.hostname).await
}

/// The `p=` of a DKIM record.
fn dkim_p(record: &str) -> Option<String> {
    record.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k.trim() == "p").then(|| v.chars().filter(|c| !c.is_whitespace()).collect())
    })
}

/// What the audit needs besides the config.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub dns: &'a Dns,
    pub keyring: &'a Keyring,
    /// Our MX listener as bound (the relay attempt); `None` skips it.
    pub mx: Option<SocketAddr>,
    pub now: i64,
}

/// Every check, for `domain` or every local domain.
pub async fn run(cx: &Ctx<'_>, domain: Option<&str>) -> Vec<Finding> {
    let cfg = cx.cfg;
    let domains: Vec<String> = match domain {
        Some(d) => vec![d.trim_end_matches('.').to_ascii_lowercase()],
        None => cfg.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
    };
    let addrs = our_addresses(cfg, cx.dns).await;
    let mut out = Vec::new();
    for d in &domains {
        out.extend(domain_checks(cx, d, &addrs).await);
    }
    out.extend(ptr_checks(cx, &addrs).await);
    out.extend(dnsbl_checks(cfg, cx.dns, &addrs).await);
    out.push(certificate_check(cfg, cx.now));
    if let Some(mx) = cx.mx {
        out.push(relay_check(cfg, mx).await);
    }
    out
}

async fn domain_checks(cx: &Ctx<'_>, d: &str, addrs: &[IpAddr]) -> Vec<Finding> {
    let (cfg, dns) = (cx.cfg, cx.dns);
    let host = cfg.hostname.trim_end_matches('.').to_ascii_lowercase();
    let mut out = Vec::new();
    // MX
    out.push(match mx_hosts(dns, d).await {
        Err(e) => finding(
            "mx",
            d,
            Status::Fail,
            format!("the MX lookup failed: {e}"),
            "check the domain's nameservers".into(),
        ),
        Ok(v) if v.is_empty() => finding(
            "mx",
            d,
            Status::Fail,
            "no MX record".into(),
            format!("publish {d}. IN MX 10 {host}."),
        ),
        Ok(v) if v.contains(&host) => finding(
            "mx",
            d,
            Status::Pass,
            format!("MX {}", v.join(", ")),
            String::new(),
        ),
        Ok(v) => finding(
            "mx",
            d,
            Status::Fail,
            format!("MX {} does not name {host}", v.join(", ")),
            format!("publish {d}. IN MX 10 {host}."),
        ),
    });
    // SPF
    let spf: Vec<String> = match txt(dns, d).await {
        Ok(v) => v
            .into_iter()
            .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
            .collect(),
        Err(e) => {
            out.push(finding(
                "spf",
                d,
                Status::Fail,
                format!("the TXT lookup failed: {e}"),
                "check the domain's nameservers".into(),
            ));
            Vec::new()
        }
    };
    match spf.as_slice() {
        [] => out.push(finding(
            "spf",
            d,
            Status::Fail,
            "no SPF record".into(),
            format!("publish {d}. IN TXT \"v=spf1 mx -all\""),
        )),
        [rec] => {
            let mut uncovered = Vec::new();
            for ip in addrs {
                let e = crate::checks::spf::check(
                    dns.auth.resolver(),
                    *ip,
                    &host,
                    &host,
                    &format!("postmaster@{d}"),
                )
                .await;
                if e.result != mail_auth::SpfResult::Pass {
                    uncovered.push(format!("{ip} ({})", e.result));
                }
            }
            let last = rec
                .split_whitespace()
                .last()
                .unwrap_or("")
                .to_ascii_lowercase();
            let ends = last == "-all" || last == "~all";
            if !uncovered.is_empty() {
                out.push(finding(
                    "spf",
                    d,
                    Status::Fail,
                    format!("\"{rec}\" does not pass {}", uncovered.join(", ")),
                    "add our sending addresses (mx, ip4:, ip6:) to the record".into(),
                ));
            } else if !ends {
                out.push(finding(
                    "spf",
                    d,
                    Status::Warn,
                    format!("\"{rec}\" does not end in -all or ~all"),
                    "end the record with -all (or ~all)".into(),
                ));
            } else if addrs.is_empty() {
                out.push(finding(
                    "spf",
                    d,
                    Status::Warn,
                    format!("\"{rec}\"; our addresses are unknown, so coverage was not checked"),
                    "set audit.addresses, or an A record for hostname".into(),
                ));
            } else {
                out.push(finding(
                    "spf",
                    d,
                    Status::Pass,
                    format!("\"{rec}\" passes our {} address(es)", addrs.len()),
                    String::new(),
                ));
            }
        }
        _ => out.push(finding(
            "spf",
            d,
            Status::Fail,
            format!("{} SPF records (RFC 7208 allows one)", spf.len()),
            "merge them into one record".into(),
        )),
    }
    // DKIM
    let keys = cx.keyring.keys_for(d);
    if keys.is_empty() {
        out.push(finding(
            "dkim",
            d,
            Status::Warn,
            "no signing key: mail from this domain is not signed".into(),
            format!("mailwarden dkim keygen {d}"),
        ));
    }
    for k in keys.iter() {
        let at = format!("{}._domainkey.{d}", k.selector);
        let ours = dkim_p(&k.record());
        let published = txt(dns, &at).await;
        out.push(match published {
            Err(e) => finding(
                "dkim",
                &at,
                Status::Fail,
                format!("the lookup failed: {e}"),
                "check the domain's nameservers".into(),
            ),
            Ok(v) if v.is_empty() => finding(
                "dkim",
                &at,
                Status::Fail,
                "not published".into(),
                format!("publish the record `mailwarden dns records {d}` prints for {at}"),
            ),
            Ok(v) if v.iter().any(|t| dkim_p(t) == ours) => finding(
                "dkim",
                &at,
                Status::Pass,
                "the published key is ours".into(),
                String::new(),
            ),
            Ok(_) => finding(
                "dkim",
                &at,
                Status::Fail,
                "the published key is not the one we sign with".into(),
                format!("publish the record `mailwarden dns records {d}` prints for {at}"),
            ),
        });
    }
    // DMARC
    let at = format!("_dmarc.{d}");
    let dmarc: Vec<String> = txt(dns, &at)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.to_ascii_lowercase().starts_with("v=dmarc1"))
        .collect();
    let fix = format!(
        "publish _dmarc.{d}. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:{}\"",
        cfg.reports_address()
    );
    out.push(match dmarc.first() {
        None => finding("dmarc", d, Status::Fail, "no DMARC record".into(), fix),
        Some(rec) => {
            let tag = |k: &str| {
                rec.split(';').find_map(|t| {
                    t.split_once('=')
                        .filter(|(a, _)| a.trim().eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.trim().to_string())
                })
            };
            let p = tag("p").unwrap_or_default().to_ascii_lowercase();
            match (p.as_str(), tag("rua")) {
                ("reject" | "quarantine", Some(rua)) => finding(
                    "dmarc",
                    d,
                    Status::Pass,
                    format!("p={p}, reports to {rua}"),
                    String::new(),
                ),
                ("reject" | "quarantine", None) => finding(
                    "dmarc",
                    d,
                    Status::Warn,
                    format!("p={p} but no rua: nobody tells you who sends as {d}"),
                    fix,
                ),
                _ => finding(
                    "dmarc",
                    d,
                    Status::Warn,
                    format!("p={p}: forged mail from {d} is not stopped"),
                    fix,
                ),
            }
        }
    });
    // MTA-STS and TLS-RPT
    if !cfg.listen.mta_sts.is_empty() {
        let id = crate::server::mta_sts::policy_id(cfg);
        let recs = txt(dns, &format!("_mta-sts.{d}")).await.unwrap_or_default();
        let fix = format!("publish _mta-sts.{d}. IN TXT \"v=STSv1; id={id}\"");
        out.push(match recs.iter().find(|t| t.starts_with("v=STSv1")) {
            None => finding(
                "mta_sts",
                d,
                Status::Fail,
                "no _mta-sts record, while listen.mta_sts serves a policy".into(),
                fix,
            ),
            Some(r) if r.contains(&format!("id={id}")) => finding(
                "mta_sts",
                d,
                Status::Pass,
                format!("\"{r}\""),
                String::new(),
            ),
            Some(r) => finding(
                "mta_sts",
                d,
                Status::Warn,
                format!(
                    "\"{r}\" has another id than our policy's {id}: senders keep the old policy"
                ),
                fix,
            ),
        });
    }
    let recs = txt(dns, &format!("_smtp._tls.{d}"))
        .await
        .unwrap_or_default();
    out.push(match recs.iter().find(|t| t.starts_with("v=TLSRPTv1")) {
        Some(r) if r.contains("rua=") => finding(
            "tls_rpt",
            d,
            Status::Pass,
            format!("\"{r}\""),
            String::new(),
        ),
        _ => finding(
            "tls_rpt",
            d,
            Status::Warn,
            "no TLS-RPT record: nobody tells you when TLS to you fails".into(),
            format!(
                "publish _smtp._tls.{d}. IN TXT \"v=TLSRPTv1; rua=mailto:{}\"",
                cfg.reports_address()
            ),
        ),
    });
    out
}

async fn ptr_checks(cx: &Ctx<'_>, addrs: &[IpAddr]) -> Vec<Finding> {
    let host = cx.cfg.hostname.trim_end_matches('.').to_ascii_lowercase();
    let mut out = Vec::new();
    if addrs.is_empty() {
        out.push(finding(
            "ptr",
            &host,
            Status::Warn,
            format!("{host} resolves to no address and audit.addresses is empty"),
            "publish an A/AAAA record for hostname, or set audit.addresses".into(),
        ));
    }
    for ip in addrs {
        let s = ip.to_string();
        let names: Vec<String> = lookup(cx.dns, Name::from(*ip), RecordType::PTR)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|d| match d {
                RData::PTR(p) => Some(text_of(&p.0)),
                _ => None,
            })
            .collect();
        let fix = format!("ask whoever runs the address to set its PTR to {host}");
        if names.is_empty() {
            out.push(finding(
                "ptr",
                &s,
                Status::Fail,
                "no PTR record".into(),
                fix,
            ));
        } else if !names.contains(&host) {
            out.push(finding(
                "ptr",
                &s,
                Status::Warn,
                format!("PTR {} is not {host}", names.join(", ")),
                fix,
            ));
        } else if !addresses_of(cx.dns, &host).await.contains(ip) {
            out.push(finding(
                "ptr",
                &s,
                Status::Fail,
                format!("PTR {host}, but {host} does not resolve back to {s}"),
                format!("publish {host}. IN A/AAAA {s}"),
            ));
        } else {
            out.push(finding(
                "ptr",
                &s,
                Status::Pass,
                format!("PTR {host}, which resolves back"),
                String::new(),
            ));
        }
    }
    out
}

/// Our addresses on the configured IP lists (`screening.dnsbl.zones` with a positive weight).
pub async fn dnsbl_checks(cfg: &Config, dns: &Dns, addrs: &[IpAddr]) -> Vec<Finding> {
    let mut out = Vec::new();
    let zones: Vec<_> = cfg
        .screening
        .dnsbl
        .zones
        .iter()
        .filter(|z| z.weight > 0.0)
        .collect();
    for ip in addrs {
        let mut listed = Vec::new();
        for z in &zones {
            let q = crate::screening::dnsbl::query_name(*ip, &z.zone);
            if let Ok(a) = dns
                .auth
                .ipv4_lookup(q.as_str(), Some(&dns.caches.ipv4))
                .await
                && a.rrset.iter().any(|a| a.octets()[0] == 127)
            {
                listed.push(z.zone.clone());
            }
        }
        let s = ip.to_string();
        out.push(if zones.is_empty() {
            finding("dnsbl", &s, Status::Warn, "no DNS block list is configured to check against".into(), "list zones in screening.dnsbl.zones".into())
        } else if listed.is_empty() {
            finding("dnsbl", &s, Status::Pass, format!("not on {} list(s)", zones.len()), String::new())
        } else {
            finding("dnsbl", &s, Status::Fail, format!("listed on {}", listed.join(", ")), "find out what sent spam from it (`mailwarden log search`), stop it, then ask each list to delist".into())
        });
    }
    out
}

/// The certificate the listeners serve: valid for `hostname`, and not near its end.
pub fn certificate_check(cfg: &Config, now: i64) -> Finding {
    let path = crate::dns_records::cert_path(cfg);
    let host = cfg.hostname.trim_end_matches('.').to_string();
    let subject = path.display().to_string();
    let fix_cert = format!("install a certificate for {host} from a public CA (tls.cert, tls.key)");
    let der = {
        use rustls_pki_types::pem::PemObject;
        match rustls_pki_types::CertificateDer::pem_file_iter(&path).map(|mut i| i.next()) {
            Ok(Some(Ok(d))) => d,
            _ => {
                return finding(
                    "certificate",
                    &subject,
                    Status::Fail,
                    "no readable certificate".into(),
                    fix_cert,
                );
            }
        }
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return finding(
            "certificate",
            &subject,
            Status::Fail,
            "the certificate does not parse".into(),
            fix_cert,
        );
    };
    let not_after = cert.validity().not_after.timestamp();
    crate::metrics::set_cert_expiry(not_after);
    let for_host = rustls_pki_types::ServerName::try_from(host.clone())
        .ok()
        .zip(webpki::EndEntityCert::try_from(&der).ok())
        .is_some_and(|(n, c)| c.verify_is_valid_for_subject_name(&n).is_ok());
    let days = (not_after - now) / 86400;
    let warn = cfg.audit.cert_warn.get().as_secs() as i64;
    let self_signed = cert.issuer() == cert.subject();
    if !for_host {
        finding(
            "certificate",
            &subject,
            Status::Fail,
            format!("not valid for {host}"),
            fix_cert,
        )
    } else if not_after <= now {
        finding(
            "certificate",
            &subject,
            Status::Fail,
            format!("expired {} day(s) ago", -days),
            "renew it".into(),
        )
    } else if not_after - now < warn {
        finding(
            "certificate",
            &subject,
            Status::Warn,
            format!("expires in {days} day(s)"),
            "renew it".into(),
        )
    } else if self_signed {
        finding(
            "certificate",
            &subject,
            Status::Warn,
            format!("self-signed; valid for {host} for {days} more day(s)"),
            fix_cert,
        )
    } else {
        finding(
            "certificate",
            &subject,
            Status::Pass,
            format!("valid for {host} for {days} more day(s)"),
            String::new(),
        )
    }
}

/// Try to relay through our own MX as an unauthenticated outsider: connect from
/// `audit.relay_test_from`, give a foreign sender and a foreign recipient, never DATA.
pub async fn relay_check(cfg: &Config, mx: SocketAddr) -> Finding {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let from: IpAddr = cfg
        .audit
        .relay_test_from
        .parse()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
    // A listener on every address (0.0.0.0, [::]) is reached on loopback, in the family of
    // the address we test from.
    let mx = if mx.ip().is_unspecified() {
        let ip = if from.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, mx.port())
    } else {
        mx
    };
    let subject = mx.to_string();
    let attempt = async {
        let sock = if from.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.bind(SocketAddr::new(from, 0))?;
        let stream = sock.connect(mx).await?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        // The last line of a reply (`250 ...`, not `250-...`).
        async fn reply(
            r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        ) -> std::io::Result<String> {
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await? == 0 || line.len() > 2048 {
                    return Err(std::io::Error::other("connection closed"));
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(line.trim_end().to_string());
                }
            }
        }
        let mut steps = vec![reply(&mut r).await?];
        // An address literal that is the client's own, and the null sender: nothing for
        // the MX's other checks to refuse, so only relay control stands in the way.
        let ehlo = match from {
            IpAddr::V4(v4) => format!("EHLO [{v4}]"),
            IpAddr::V6(v6) => format!("EHLO [IPv6:{v6}]"),
        };
        for cmd in [
            ehlo.as_str(),
            "MAIL FROM:<>",
            "RCPT TO:<relay-test@relay-test.invalid>",
        ] {
            if !steps.last().is_some_and(|l| l.starts_with('2')) {
                break;
            }
            w.write_all(format!("{cmd}\r\n").as_bytes()).await?;
            steps.push(reply(&mut r).await?);
        }
        let _ = w.write_all(b"QUIT\r\n").await;
        Ok::<_, std::io::Error>(steps)
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(steps)) if steps.len() == 4 && steps[3].starts_with('2') => finding(
            "relay",
            &subject,
            Status::Fail,
            format!(
                "an unauthenticated client from {from} may relay: {}",
                steps[3]
            ),
            "this is an open relay: stop the server and report a bug".into(),
        ),
        Ok(Ok(steps)) if steps.len() == 4 => finding(
            "relay",
            &subject,
            Status::Pass,
            format!("refused from {from}: {}", steps[3]),
            String::new(),
        ),
        Ok(Ok(steps)) => finding(
            "relay",
            &subject,
            Status::Warn,
            format!(
                "refused before RCPT from {from}, so relaying was not tried: {}",
                steps.last().cloned().unwrap_or_default()
            ),
            "set audit.relay_test_from to an address the MX accepts connections from".into(),
        ),
        Ok(Err(e)) => finding(
            "relay",
            &subject,
            Status::Warn,
            format!("could not talk to the MX from {from}: {e}"),
            "set audit.relay_test_from to a local address of this host".into(),
        ),
        Err(_) => finding(
            "relay",
            &subject,
            Status::Warn,
            "the MX did not answer in 30 s".into(),
            "check the MX listener".into(),
        ),
    }
}

/// The server's periodic part: block lists and the certificate every `audit.interval`, as
/// gauges; a newly listed address is told to the postmaster.
pub struct Watch {
    pub config: std::sync::Arc<Config>,
    pub dns: std::sync::Arc<Dns>,
    pub queue: std::sync::Arc<crate::queue::Queue>,
    pub routing: crate::routing::Routing,
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

pub async fn watch(w: Watch) {
    let every = w.config.audit.interval.get();
    if every.is_zero() {
        return;
    }
    let mut listed_before: std::collections::HashSet<String> = Default::default();
    loop {
        let cfg = &w.config;
        let addrs = our_addresses(cfg, &w.dns).await;
        let mut found = dnsbl_checks(cfg, &w.dns, &addrs).await;
        found.push(certificate_check(cfg, w.clock.now_secs()));
        crate::metrics::audit_findings(&found);
        let listed: std::collections::HashSet<String> = found
            .iter()
            .filter(|f| f.check == "dnsbl" && f.status == Status::Fail)
            .map(|f| format!("{} ({})", f.subject, f.detail))
            .collect();
        // Told once per listing; a notice that could not be queued is tried again next time.
        let mut told: std::collections::HashSet<String> =
            listed.intersection(&listed_before).cloned().collect();
        for l in listed.difference(&listed_before) {
            tracing::warn!(event = "address_listed", listing = %l);
            let text = format!(
                "One of this server's addresses is on a DNS block list:\r\n\r\n  {l}\r\n\r\n\
                 Mail sent from it may be refused. Find what sent spam from it\r\n\
                 (mailwarden log search, mailwarden user status), stop it, then ask the list\r\n\
                 to delist the address. `mailwarden audit` shows every finding.\r\n"
            );
            if let Err(e) = crate::containment::act::notify_postmaster(
                cfg,
                &w.routing,
                &w.queue,
                w.clock.now_secs(),
                "audit",
                "An address of ours is listed",
                &text,
            )
            .await
            {
                tracing::error!(event = "postmaster_notice_failed", error = %e);
            } else {
                told.insert(l.clone());
            }
        }
        listed_before = told;
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dkim_keys_compare_by_their_p_tag() {
        assert_eq!(
            super::dkim_p("v=DKIM1; k=ed25519; p=AB C"),
            Some("ABC".into())
        );
        assert_eq!(super::dkim_p("v=DKIM1"), None);
    }
}
