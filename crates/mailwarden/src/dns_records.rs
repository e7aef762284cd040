//! `mailwarden dns records DOMAIN`: every DNS record a domain of ours needs, as zone-file
//! lines: MX, SPF, the DKIM keys we sign with, DMARC asking for aggregate reports at
//! `reports.address` (and the RFC 7489 §7.1 authorization when that address is in another
//! domain), MTA-STS (RFC 8461) when `listen.mta_sts` serves a policy, TLS-RPT (RFC 8460) to
//! the same address, and the TLSA record (RFC 7672, DANE-EE SPKI SHA-256) of our
//! certificate, and the RFC 6186 SRV records that point mail clients at submission (with the
//! autoconfiguration names when `listen.autoconfig` is on). Read-only: it prints what to
//! publish.

use crate::config::Config;
use crate::dkim::keys::{Keyring, txt_strings};
use std::fmt::Write;

/// The `3 1 1` TLSA data of the first certificate in a PEM file: SHA-256 of its
/// SubjectPublicKeyInfo, which stays the same across renewals with the same key.
pub fn tlsa_311(pem_file: &std::path::Path) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_file_iter(pem_file)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate in {}", pem_file.display()))??;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", pem_file.display()))?;
    let spki = cert.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Where the certificate the listeners serve is (the generated one when none is set).
pub fn cert_path(cfg: &Config) -> std::path::PathBuf {
    cfg.tls
        .cert
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("tls").join("cert.pem"))
}

/// The records for `domain`, one zone-file line each, with `;` comments.
pub fn records(cfg: &Config, keyring: &Keyring, domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let host = cfg.hostname.trim_end_matches('.');
    let reports = cfg.reports_address();
    let reports_domain = crate::reports::domain_of(&reports).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "; mail for {d} comes to this server");
    let _ = writeln!(out, "{d}. IN MX 10 {host}.");
    let _ = writeln!(out, "; who may send as {d}: this server only");
    let _ = writeln!(out, "{d}. IN TXT \"v=spf1 mx -all\"");
    let keys = keyring.keys_for(&d);
    if keys.is_empty() {
        let _ = writeln!(
            out,
            "; no DKIM key for {d}: run `mailwarden dkim keygen {d}`"
        );
    } else {
        let _ = writeln!(out, "; the keys mail from {d} is signed with");
        for k in keys.iter() {
            let _ = writeln!(
                out,
                "{}._domainkey.{d}. IN TXT {}",
                k.selector,
                txt_strings(&k.record())
            );
        }
    }
    let _ = writeln!(out, "; DMARC, with aggregate reports to {reports}");
    let _ = writeln!(
        out,
        "_dmarc.{d}. IN TXT \"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:{reports}\""
    );
    if !reports_domain.is_empty()
        && reports_domain != d
        && !reports_domain.ends_with(&format!(".{d}"))
    {
        let _ = writeln!(
            out,
            "; {reports_domain} accepts {d}'s reports (RFC 7489 7.1)"
        );
        let _ = writeln!(
            out,
            "{d}._report._dmarc.{reports_domain}. IN TXT \"v=DMARC1\""
        );
    }
    if !cfg.listen.mta_sts.is_empty() {
        let _ = writeln!(
            out,
            "; MTA-STS (RFC 8461): the policy is served on listen.mta_sts (publish it on port 443)"
        );
        let _ = writeln!(out, "mta-sts.{d}. IN CNAME {host}.");
        let _ = writeln!(
            out,
            "_mta-sts.{d}. IN TXT \"v=STSv1; id={}\"",
            crate::server::mta_sts::policy_id(cfg)
        );
    }
    let ac = &cfg.autoconfig;
    let client_host = if ac.host.is_empty() {
        host
    } else {
        ac.host.trim_end_matches('.')
    };
    let _ = writeln!(
        out,
        "; mail clients find submission (and POP3) here (RFC 6186)"
    );
    for (name, port) in [
        ("_submissions", ac.submissions_port),
        ("_submission", ac.submission_port),
    ] {
        if port != 0 {
            let _ = writeln!(out, "{name}._tcp.{d}. IN SRV 0 1 {port} {client_host}.");
        }
    }
    if !cfg.listen.pop3s.is_empty() && ac.pop3.is_empty() && ac.pop3s_port != 0 {
        let _ = writeln!(
            out,
            "_pop3s._tcp.{d}. IN SRV 0 1 {} {client_host}.",
            ac.pop3s_port
        );
    }
    if !cfg.listen.autoconfig.is_empty() {
        let _ = writeln!(
            out,
            "; mail-client autoconfiguration is served on listen.autoconfig (publish it on 443)"
        );
        let _ = writeln!(out, "autoconfig.{d}. IN CNAME {host}.");
        let _ = writeln!(out, "autodiscover.{d}. IN CNAME {host}.");
    }
    let _ = writeln!(out, "; TLS reports (RFC 8460) to the same address");
    let _ = writeln!(
        out,
        "_smtp._tls.{d}. IN TXT \"v=TLSRPTv1; rua=mailto:{reports}\""
    );
    match tlsa_311(&cert_path(cfg)) {
        Ok(hash) => {
            let _ = writeln!(
                out,
                "; DANE (RFC 7672) for {host}: publish only in a DNSSEC-signed zone"
            );
            let _ = writeln!(out, "_25._tcp.{host}. IN TLSA 3 1 1 {hash}");
        }
        Err(e) => {
            let _ = writeln!(out, "; no TLSA record: {e}");
        }
    }
    out
}
