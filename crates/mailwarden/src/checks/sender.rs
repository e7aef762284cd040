//! Sender authentication at the end of DATA, for mail arriving on the MX listener: SPF
//! (RFC 7208), DKIM (RFC 6376, RFC 8463 Ed25519, RFC 8301 algorithm rules), ARC (RFC 8617),
//! DMARC (RFC 7489, RFC 9989 tree walk) and iprev (RFC 8601 §3), all through mail-auth and
//! the configured resolver. It produces the Authentication-Results header and a verdict.
//!
//! Decision, in order:
//! 1. A DMARC record exists for the From domain:
//!    - aligned SPF or DKIM pass → accept;
//!    - no pass and a DNS temporary error on either side → `451 4.7.0` (fail closed);
//!    - fail, and a valid ARC chain sealed by a trusted forwarder → accept (override);
//!    - fail → `p=reject`: `550 5.7.1`; `p=quarantine`: Junk; `p=none`: accept.
//! 2. The DMARC lookup itself failed temporarily → `451 4.7.0`.
//! 3. No DMARC record: SPF `fail` → `550 5.7.23` (if `spf.reject_fail_without_dmarc`); SPF
//!    temporary error → `451 4.7.24`.
//!
//! [`gather`] asks DNS and verifies; [`decide`] is a pure function of what it found
//! ([`Facts`]) and the config, and returns findings: the one that would act carries its
//! refusal (or asks for Junk). Whether it acts is `crate::decision::apply`'s to say, under the
//! check's `mode`, as for every other policy.

use crate::config::{Config, Mode};
use crate::decision::{Finding, Kind};
use crate::dns::Dns;
use mail_auth::common::crypto::Algorithm;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult,
    IprevOutput, IprevResult, SpfOutput, SpfResult,
};
use mailwarden_proto::replies;
use std::net::IpAddr;

/// The envelope facts the checks need.
pub struct Envelope<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// The MAIL FROM address; empty for the null sender.
    pub mail_from: &'a str,
    /// Our hostname: the SPF receiving host and the authserv-id.
    pub hostname: &'a str,
}

pub struct Checked {
    /// Every check's finding, in the order the checks ran; the one that would act carries
    /// its refusal or asks for Junk.
    pub findings: Vec<Finding>,
    /// `Authentication-Results: ...` with CRLF.
    pub header: String,
    /// `spf=pass dkim=pass dmarc=pass ...` for the log.
    pub summary: String,
    /// The RFC5322.From domain DMARC evaluated, if any.
    pub from_domain: Option<String>,
    /// SPF or DMARC passed: the envelope sender is who it claims, so a bounce to it is not
    /// backscatter.
    pub sender_verified: bool,
    /// `d=` of every DKIM signature that passed.
    pub dkim_pass: Vec<String>,
    /// A DKIM signature could not be checked for now (its key lookup failed).
    pub dkim_temp: bool,
    /// A valid ARC chain whose newest seal is from a trusted sealer.
    pub arc_trusted: bool,
    /// What an aggregate report says of this message, when the From domain has a DMARC
    /// record (`reports`).
    pub evaluation: Option<crate::reports::Evaluation>,
}

impl Checked {
    /// No check ran (the message was refused before them).
    pub fn unchecked() -> Checked {
        Checked {
            findings: Vec::new(),
            header: String::new(),
            summary: String::new(),
            from_domain: None,
            sender_verified: false,
            dkim_pass: Vec::new(),
            dkim_temp: false,
            arc_trusted: false,
            evaluation: None,
        }
    }
}

/// SPF for the MAIL FROM identity, or the HELO identity for the null sender (evaluated by
/// `checks::spf`), as the output mail-auth's DMARC and header code take.
pub async fn spf(dns: &Dns, ip: IpAddr, helo: &str, hostname: &str, mail_from: &str) -> SpfOutput {
    let e = super::spf::check(dns.auth.resolver(), ip, helo, hostname, mail_from).await;
    let out = SpfOutput::new(e.domain).with_result(e.result);
    match e.explanation {
        Some(x) => out.with_explanation(x),
        None => out,
    }
}

pub async fn iprev(dns: &Dns, ip: IpAddr) -> IprevOutput {
    dns.auth.verify_iprev(dns.params(ip)).await
}

/// Verify DKIM signatures, then apply the RFC rules mail-auth leaves to the caller:
/// - RFC 6376 §3.5: `v=1` is required; a signature without it (pre-RFC drafts) is a PERMFAIL;
/// - RFC 8301: rsa-sha1 never counts as a pass (keys under 1024 bits already fail in ring);
/// - RFC 6376 §6.1: the key is fetched (§6.1.2) before the body hash is compared (§6.1.3),
///   so a body hash mismatch is a TEMPFAIL when the key lookup fails temporarily, a PERMFAIL
///   when there is no usable key, and otherwise `fail` (RFC 8601 §2.7.1; mail-auth says
///   `neutral` because it compares the hash first).
pub async fn dkim<'x>(dns: &'x Dns, msg: &'x AuthenticatedMessage<'x>) -> Vec<DkimOutput<'x>> {
    use mail_auth::common::verify::DomainKey;
    let outputs = dns.auth.verify_dkim(dns.params(msg)).await;
    let mut checked = Vec::with_capacity(outputs.len());
    for o in outputs {
        let b = o.signature().map(|s| s.b.as_slice()).unwrap_or_default();
        let header = msg.dkim_headers.iter().find(|h| h.header.b == b);
        let versioned = header.is_none_or(|h| has_v1(h.value));
        let replacement = match o.result() {
            _ if !versioned => {
                DkimOutput::perm_err(mail_auth::Error::Dkim(DkimError::UnsupportedVersion))
            }
            DkimResult::Pass if o.signature().is_some_and(|s| s.a == Algorithm::RsaSha1) => {
                DkimOutput::perm_err(mail_auth::Error::Dkim(DkimError::UnsupportedAlgorithm))
            }
            DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) => {
                let sig = o.signature();
                let key = match sig {
                    Some(s) => {
                        let name = format!("{}._domainkey.{}.", s.s, s.d);
                        Some(
                            dns.auth
                                .txt_lookup::<DomainKey>(name, Some(&dns.caches.txt))
                                .await,
                        )
                    }
                    None => None,
                };
                match key {
                    Some(Err(e @ mail_auth::Error::Dns(mail_auth::DnsError::Resolver(_)))) => {
                        DkimOutput::temp_err(e)
                    }
                    Some(Err(e)) => DkimOutput::perm_err(e),
                    _ => DkimOutput::fail(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)),
                }
            }
            _ => {
                checked.push(o);
                continue;
            }
        };
        // Re-attach the signature from the message, which outlives the output.
        checked.push(match header.map(|h| &h.header) {
            Some(sig) => replacement.with_signature(sig),
            None => replacement,
        });
    }
    checked
}

/// What [`cap_signatures`] set aside.
struct Capped {
    /// Signatures whose `h=` lists more than `dkim.max_signed_fields` fields.
    long_h: usize,
    /// Signatures past `dkim.max_signatures`.
    excess: usize,
}

/// Keep what DKIM verification may cost bounded: at most `dkim.max_signatures` signatures
/// (and as many malformed ones, which mail-auth reports one by one), none listing more than
/// `dkim.max_signed_fields` fields (hashing walks the header once per listed field).
fn cap_signatures(msg: &mut AuthenticatedMessage<'_>, cfg: &Config) -> Capped {
    let (max, max_h) = (cfg.dkim.max_signatures, cfg.dkim.max_signed_fields);
    let before = msg.dkim_headers.len();
    msg.dkim_headers.retain(|h| h.header.h.len() <= max_h);
    let long_h = before - msg.dkim_headers.len();
    let excess = msg.dkim_headers.len().saturating_sub(max);
    msg.dkim_headers.truncate(max);
    let mut malformed = 0;
    msg.errors.retain(|e| {
        if matches!(e.header, mail_auth::Error::Dkim(_)) {
            malformed += 1;
            malformed <= max
        } else {
            true
        }
    });
    Capped {
        long_h,
        excess: excess + malformed.saturating_sub(max),
    }
}

/// Whether a DKIM-Signature header value carries the tag `v=1`.
fn has_v1(value: &[u8]) -> bool {
    String::from_utf8_lossy(value).split(';').any(|tag| {
        let mut kv = tag.splitn(2, '=');
        let k: String = kv
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let v: String = kv
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        k == "v" && v == "1"
    })
}

fn spf_finding(result: &SpfResult, domain: &str) -> Finding {
    let kind = match result {
        SpfResult::Pass => Kind::SpfPass,
        SpfResult::Fail => Kind::SpfFail,
        SpfResult::SoftFail => Kind::SpfSoftFail,
        SpfResult::Neutral => Kind::SpfNeutral,
        SpfResult::TempError => Kind::SpfTempError,
        SpfResult::PermError => Kind::SpfPermError,
        SpfResult::None => Kind::SpfNone,
    };
    Finding::new(kind, format!("SPF {result} for {domain}"))
}

fn dkim_finding(o: &DkimOutput) -> Finding {
    let d = o.signature().map(|s| s.d.clone()).unwrap_or_default();
    let weak = o.signature().is_some_and(|s| s.a == Algorithm::RsaSha1);
    let (kind, what) = match o.result() {
        DkimResult::Pass => (Kind::DkimPass, "pass".to_string()),
        DkimResult::PermError(_) if weak => (
            Kind::DkimWeak,
            "rsa-sha1 is not accepted (RFC 8301)".to_string(),
        ),
        DkimResult::Fail(e) | DkimResult::Neutral(e) => (Kind::DkimFail, format!("fail: {e}")),
        DkimResult::PermError(e) => (Kind::DkimPermError, format!("permerror: {e}")),
        DkimResult::TempError(e) => (Kind::DkimTempError, format!("temperror: {e}")),
        DkimResult::None => (Kind::DkimNone, "none".to_string()),
    };
    Finding::new(kind, format!("DKIM signature d={d}: {what}"))
}

fn dmarc_side(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::None | Policy::Unspecified => "none",
        Policy::Quarantine => "quarantine",
        Policy::Reject => "reject",
    }
}

/// What the sender checks found, before anything is decided.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// SPF's result and the domain it was for (`spf.mode` not off).
    pub spf: Option<(SpfResult, String)>,
    /// iprev and DKIM results: reported, never deciding by themselves.
    pub reports: Vec<Finding>,
    /// The ARC chain (`arc.mode` not off).
    pub arc: Option<Arc>,
    /// DMARC's evaluation (`dmarc.mode` not off).
    pub dmarc: Option<Dmarc>,
}

#[derive(Clone, Debug)]
pub struct Arc {
    pub result: Kind,
    /// `d=` of the newest seal.
    pub sealer: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Dmarc {
    /// The From domain's policy record was found.
    pub record: bool,
    pub domain: String,
    pub policy: Policy,
    /// The aligned SPF and DKIM sides.
    pub spf: DmarcResult,
    pub dkim: DmarcResult,
}

impl Dmarc {
    fn passed(&self) -> bool {
        self.spf == DmarcResult::Pass || self.dkim == DmarcResult::Pass
    }

    fn temp(&self) -> bool {
        matches!(self.spf, DmarcResult::TempError(_))
            || matches!(self.dkim, DmarcResult::TempError(_))
    }

    /// `dmarc=…` for the log's summary.
    fn summary(&self) -> &'static str {
        if self.record && self.passed() {
            "pass"
        } else if self.temp() {
            "temperror"
        } else if self.record {
            "fail"
        } else {
            "none"
        }
    }
}

/// What [`decide`] concluded.
pub struct Decided {
    pub findings: Vec<Finding>,
    /// A valid ARC chain sealed last by a trusted sealer, under `arc.mode = "enforce"`.
    pub arc_trusted: bool,
}

/// The decision, in the order of the module header. Pure: table-tested below.
pub fn decide(f: &Facts, cfg: &Config) -> Decided {
    // SPF's finding goes first; it carries a refusal only when it speaks for itself.
    let mut out: Vec<Finding> = f.spf.iter().map(|(r, d)| spf_finding(r, d)).collect();
    let spf_at = f.spf.as_ref().map(|_| 0);
    out.extend(f.reports.iter().cloned());
    let mut arc_trusted = false;
    if let Some(a) = &f.arc {
        arc_trusted = a.result == Kind::ArcPass
            && cfg.arc.mode == Mode::Enforce
            && a.sealer.as_ref().is_some_and(|s| {
                cfg.arc
                    .trusted_sealers
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(s))
            });
        out.push(Finding::new(
            a.result,
            format!(
                "ARC chain {} (sealer {})",
                a.result.code(),
                a.sealer.as_deref().unwrap_or("-")
            ),
        ));
    }
    let mut spf_speaks = f.dmarc.is_none();
    if let Some(d) = &f.dmarc {
        let detail = format!(
            "DMARC for {}: spf={} dkim={} policy={}",
            d.domain,
            dmarc_side(&d.spf),
            dmarc_side(&d.dkim),
            policy_name(d.policy)
        );
        if d.record && d.passed() {
            out.push(Finding::new(Kind::DmarcPass, detail));
        } else if d.temp() {
            // With or without a record found: a DNS failure never passes.
            out.push(Finding::refusing(
                Kind::DmarcTempError,
                detail,
                replies::AUTH_DNS_TEMP,
            ));
        } else if d.record {
            let fail = Finding::new(Kind::DmarcFail, detail);
            if arc_trusted {
                out.push(fail);
                out.push(Finding::new(
                    Kind::ArcOverride,
                    "DMARC failure overridden by a trusted ARC sealer",
                ));
            } else {
                out.push(match d.policy {
                    Policy::Reject => fail.refuse(replies::dmarc_reject(&d.domain)),
                    Policy::Quarantine => fail.to_junk(),
                    _ => fail,
                });
            }
        } else {
            out.push(Finding::new(
                Kind::DmarcNone,
                format!(
                    "no DMARC record for {}",
                    if d.domain.is_empty() { "-" } else { &d.domain }
                ),
            ));
            spf_speaks = true;
        }
    }
    // Without DMARC (no record, or the check off), SPF speaks for itself.
    if spf_speaks && let (Some(i), Some((result, domain))) = (spf_at, &f.spf) {
        let reply = match result {
            SpfResult::Fail if cfg.spf.reject_fail_without_dmarc => {
                Some(replies::spf_reject(domain))
            }
            SpfResult::TempError => Some(replies::SPF_TEMP),
            _ => None,
        };
        if let Some(r) = reply {
            out[i].refusal = Some(r);
        }
    }
    Decided {
        findings: out,
        arc_trusted,
    }
}

/// Run every enabled check on a received message ([`gather`]) and [`decide`]. `spf_done`
/// and `iprev_done` are results computed earlier in the session (SPF from MAIL FROM on,
/// iprev from connect).
pub async fn evaluate(
    dns: &Dns,
    cfg: &Config,
    env: &Envelope<'_>,
    raw: &[u8],
    spf_done: Option<SpfOutput>,
    iprev_done: Option<IprevOutput>,
) -> Checked {
    let mut facts = Facts::default();
    let mut ar = AuthenticationResults::new(env.hostname);
    let mut summary = Vec::new();

    let spf_out = match cfg.spf.mode {
        Mode::Off => None,
        _ => Some(match spf_done {
            Some(s) => s,
            None => spf(dns, env.ip, env.helo, env.hostname, env.mail_from).await,
        }),
    };
    if let Some(s) = &spf_out {
        facts.spf = Some((s.result(), s.domain().to_string()));
        summary.push(format!("spf={}", s.result().to_string().to_lowercase()));
        ar = if env.mail_from.is_empty() {
            ar.with_spf_ehlo_result(s, env.ip, env.helo)
        } else {
            ar.with_spf_mailfrom_result(s, env.ip, env.mail_from, env.helo)
        };
    }

    let iprev_out = match cfg.iprev.mode {
        Mode::Off => None,
        _ => Some(match iprev_done {
            Some(i) => i,
            None => iprev(dns, env.ip).await,
        }),
    };
    if let Some(i) = &iprev_out {
        let (kind, name) = match &i.result {
            IprevResult::Pass => (Kind::IprevPass, "pass"),
            IprevResult::Fail(_) | IprevResult::PermError(_) => (Kind::IprevFail, "fail"),
            IprevResult::TempError(_) => (Kind::IprevTempError, "temperror"),
            IprevResult::None => (Kind::IprevNone, "none"),
        };
        facts.reports.push(Finding::new(
            kind,
            format!("iprev {} for {}", i.result, env.ip),
        ));
        summary.push(format!("iprev={name}"));
        ar = ar.with_iprev_result(i, env.ip);
    }

    // Header parse and body hashes: linear in the message, CPU-bound.
    let parsed = {
        let _cpu = crate::heavy::cpu().await;
        AuthenticatedMessage::parse(raw)
    };
    let Some(mut msg) = parsed else {
        // No parseable header section: nothing to verify or align.
        let header = ar.to_header();
        // As always: with nothing to align, SPF is reported, not acted on here; content
        // scoring judges such a message.
        let mut findings = decide(&facts, cfg).findings;
        for f in &mut findings {
            f.refusal = None;
        }
        return Checked {
            sender_verified: verified(&findings),
            findings,
            header,
            summary: summary.join(" "),
            ..Checked::unchecked()
        };
    };
    let from_domain = msg
        .from()
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .filter(|d| !d.is_empty());

    let capped = cap_signatures(&mut msg, cfg);
    let msg = msg;
    let dkim_out = match cfg.dkim.mode {
        Mode::Off => Vec::new(),
        _ => dkim(dns, &msg).await,
    };
    if cfg.dkim.mode != Mode::Off {
        if capped.long_h > 0 {
            facts.reports.push(Finding::new(
                Kind::DkimPermError,
                format!(
                    "{} DKIM signature(s) list more than {} signed fields: not verified",
                    capped.long_h, cfg.dkim.max_signed_fields
                ),
            ));
        }
        if capped.excess > 0 {
            facts.reports.push(Finding::new(
                Kind::DkimCapped,
                format!(
                    "{} DKIM signature(s) past the first {} not verified",
                    capped.excess, cfg.dkim.max_signatures
                ),
            ));
        }
        if dkim_out.is_empty() {
            facts
                .reports
                .push(Finding::new(Kind::DkimNone, "no DKIM signature"));
            summary.push("dkim=none".to_string());
        }
        for o in &dkim_out {
            let f = dkim_finding(o);
            summary.push(format!(
                "dkim={}",
                f.kind.code().trim_start_matches("dkim.")
            ));
            facts.reports.push(f);
        }
        ar = ar.with_dkim_results(&dkim_out, msg.from());
    }
    let dkim_pass: Vec<String> = dkim_out
        .iter()
        .filter(|o| o.result() == &DkimResult::Pass)
        .filter_map(|o| o.signature().map(|s| s.d.to_ascii_lowercase()))
        .collect();
    let dkim_temp = dkim_out
        .iter()
        .any(|o| matches!(o.result(), DkimResult::TempError(_)));

    let arc_out: Option<ArcOutput> = match cfg.arc.mode {
        Mode::Off => None,
        _ => Some(super::arc::verify(dns, &msg, cfg.arc.max_sets).await),
    };
    if let Some(a) = &arc_out {
        let result = match a.result() {
            DkimResult::Pass => Kind::ArcPass,
            DkimResult::None => Kind::ArcNone,
            _ => Kind::ArcFail,
        };
        summary.push(format!("arc={}", result.code().trim_start_matches("arc.")));
        facts.arc = Some(Arc {
            result,
            sealer: a.sets().last().map(|s| s.seal.header.d.to_lowercase()),
        });
        ar = ar.with_arc_result(a, env.ip);
    }

    let mut evaluation = None;
    if cfg.dmarc.mode != Mode::Off {
        let spf_for_dmarc = spf_out
            .clone()
            .unwrap_or_else(|| SpfOutput::new(String::new()));
        let mail_from_domain = if env.mail_from.is_empty() {
            env.helo.to_string()
        } else {
            env.mail_from
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_default()
        };
        let dmarc = dns
            .auth
            .verify_dmarc(dns.params(DmarcParameters::new(
                &msg,
                &dkim_out,
                &mail_from_domain,
                &spf_for_dmarc,
            )))
            .await;
        ar = ar.with_dmarc_result(&dmarc);
        let policy_domain = match dmarc.dmarc_record() {
            Some(_) => record_domain(dns, dmarc.domain()).await,
            None => String::new(),
        };
        evaluation = dmarc.dmarc_record().map(|record| {
            report_evaluation(
                record,
                &dmarc,
                &policy_domain,
                from_domain.as_deref().unwrap_or(""),
                &mail_from_domain,
                env.mail_from.is_empty(),
                spf_out.as_ref(),
                &dkim_out,
            )
        });
        let d = Dmarc {
            record: dmarc.dmarc_record().is_some(),
            domain: dmarc.domain().to_string(),
            policy: dmarc.policy(),
            spf: dmarc.spf_result().clone(),
            dkim: dmarc.dkim_result().clone(),
        };
        summary.push(format!("dmarc={}", d.summary()));
        facts.dmarc = Some(d);
    }

    let decided = decide(&facts, cfg);
    Checked {
        sender_verified: verified(&decided.findings),
        findings: decided.findings,
        header: ar.to_header(),
        summary: summary.join(" "),
        from_domain,
        dkim_pass,
        dkim_temp,
        arc_trusted: decided.arc_trusted,
        evaluation,
    }
}

/// The domain whose `_dmarc` record applied to mail from `from` (the From domain, or the
/// nearest parent with a record: RFC 7489 §6.6.3). The lookups hit the cache the DMARC
/// check just filled.
async fn record_domain(dns: &Dns, from: &str) -> String {
    let from = from.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = from.split('.').collect();
    for i in 0..labels.len().saturating_sub(1).min(8) {
        let d = labels[i..].join(".");
        let name = format!("_dmarc.{d}.");
        if dns
            .auth
            .txt_lookup::<mail_auth::dmarc::Dmarc>(name, Some(&dns.caches.txt))
            .await
            .is_ok()
        {
            return d;
        }
    }
    from
}

/// What a DMARC aggregate report needs of this evaluation (RFC 7489 Appendix C): the
/// published policy (of `policy_domain`, where the record was found), where reports go, the
/// aligned results and the raw ones.
#[allow(clippy::too_many_arguments)]
fn report_evaluation(
    record: &mail_auth::dmarc::Dmarc,
    out: &mail_auth::DmarcOutput,
    policy_domain: &str,
    header_from: &str,
    envelope_from: &str,
    helo_scope: bool,
    spf: Option<&SpfOutput>,
    dkim: &[DkimOutput<'_>],
) -> crate::reports::Evaluation {
    use crate::reports::{DkimAuth, Evaluation, Published, Row, Rua};
    use mail_auth::dmarc::Alignment;
    let align = |a: Alignment| if a == Alignment::Strict { "s" } else { "r" };
    let aligned = |r: &DmarcResult| {
        if *r == DmarcResult::Pass {
            "pass"
        } else {
            "fail"
        }
    };
    let dkim_results = dkim
        .iter()
        .filter_map(|o| {
            let s = o.signature()?;
            Some(DkimAuth {
                domain: s.d.to_ascii_lowercase(),
                selector: s.s.clone(),
                result: match o.result() {
                    DkimResult::Pass => "pass",
                    DkimResult::Fail(_) => "fail",
                    DkimResult::Neutral(_) => "neutral",
                    DkimResult::TempError(_) => "temperror",
                    DkimResult::PermError(_) => "permerror",
                    DkimResult::None => "none",
                }
                .to_string(),
            })
        })
        .collect();
    Evaluation {
        published: Published {
            domain: policy_domain.to_string(),
            adkim: align(record.adkim).into(),
            aspf: align(record.aspf).into(),
            p: policy_name(record.p).into(),
            sp: policy_name(record.sp).into(),
            pct: 100,
        },
        rua: record
            .rua
            .iter()
            .map(|u| Rua {
                address: u.uri().trim_start_matches("mailto:").to_ascii_lowercase(),
                max_size: u.max_size(),
            })
            .collect(),
        row: Row {
            source_ip: String::new(),
            disposition: String::new(),
            dkim: aligned(out.dkim_result()).into(),
            spf: aligned(out.spf_result()).into(),
            reason: None,
            header_from: header_from.to_string(),
            envelope_from: envelope_from.to_ascii_lowercase(),
            dkim_results,
            spf_domain: spf
                .map(|s| s.domain().to_ascii_lowercase())
                .unwrap_or_default(),
            spf_scope: if helo_scope { "helo" } else { "mfrom" }.into(),
            spf_result: spf
                .map(|s| s.result().to_string().to_ascii_lowercase())
                .unwrap_or_else(|| "none".into()),
        },
    }
}

fn verified(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| matches!(f.kind, Kind::SpfPass | Kind::DmarcPass))
}

#[cfg(test)]
mod tests {
    //! The decision as a table: DMARC policy × the aligned SPF and DKIM sides, SPF alone,
    //! a trusted ARC chain, the local-domain rule, and observe mode, each row through
    //! [`decide`], `local_sender::check` and `decision::apply` as the server runs them.
    use super::*;
    use crate::checks::local_sender::{self, Claim};
    use crate::decision::{self, Action};
    use mail_auth::Error;

    const PASS: DmarcResult = DmarcResult::Pass;
    const NONE: DmarcResult = DmarcResult::None;

    fn fail() -> DmarcResult {
        DmarcResult::Fail(Error::NotAligned)
    }

    fn temp() -> DmarcResult {
        DmarcResult::TempError(Error::Dns(mail_auth::DnsError::Resolver("timeout".into())))
    }

    fn dmarc(policy: Policy, spf: DmarcResult, dkim: DmarcResult) -> Option<Dmarc> {
        Some(Dmarc {
            record: true,
            domain: "sender.test".into(),
            policy,
            spf,
            dkim,
        })
    }

    fn no_record() -> Option<Dmarc> {
        Some(Dmarc {
            record: false,
            domain: "sender.test".into(),
            policy: Policy::Unspecified,
            spf: NONE,
            dkim: NONE,
        })
    }

    struct Row {
        name: &'static str,
        spf: SpfResult,
        dmarc: Option<Dmarc>,
        /// The newest ARC seal's `d=`, with a passing chain.
        arc_sealer: Option<&'static str>,
        /// The From: domain, and `d=` of the passing DKIM signatures.
        from: &'static str,
        dkim_pass: &'static [&'static str],
        action: &'static str,
        deciding: Option<&'static str>,
    }

    fn row(name: &'static str, spf: SpfResult, dmarc: Option<Dmarc>) -> Row {
        Row {
            name,
            spf,
            dmarc,
            arc_sealer: None,
            from: "sender.test",
            dkim_pass: &[],
            action: "accept",
            deciding: None,
        }
    }

    impl Row {
        fn then(mut self, action: &'static str, deciding: Option<&'static str>) -> Row {
            self.action = action;
            self.deciding = deciding;
            self
        }
    }

    fn config() -> Config {
        let mut cfg = Config::default();
        for m in [
            &mut cfg.spf.mode,
            &mut cfg.dkim.mode,
            &mut cfg.dmarc.mode,
            &mut cfg.arc.mode,
            &mut cfg.mx.local_forgery,
        ] {
            *m = Mode::Enforce;
        }
        cfg.spf.reject_fail_without_dmarc = true;
        cfg.arc.trusted_sealers = vec!["lists.trusted.test".into()];
        cfg
    }

    /// What the server does with a row: sender findings, then local forgery unless sender
    /// authentication refuses, then one verdict.
    fn run(cfg: &Config, r: &Row) -> (String, Option<String>, Vec<Finding>) {
        let facts = Facts {
            spf: Some((r.spf, "sender.test".into())),
            reports: Vec::new(),
            arc: r.arc_sealer.map(|s| Arc {
                result: Kind::ArcPass,
                sealer: Some(s.into()),
            }),
            dmarc: r.dmarc.clone(),
        };
        let d = decide(&facts, cfg);
        let mut findings = d.findings;
        let refused = decision::apply(cfg, &findings, None)
            .action
            .refusal()
            .is_some();
        if !refused {
            let pass: Vec<String> = r.dkim_pass.iter().map(|s| s.to_string()).collect();
            let claim = Claim {
                ip: "192.0.2.9".parse().unwrap(),
                mail_from: "someone@sender.test",
                from_domain: Some(r.from),
                dkim_pass: &pass,
                dkim_temp: false,
                arc_trusted: d.arc_trusted,
            };
            let ours = |d: &str| Ok(d == "ours.test");
            findings.extend(local_sender::check(cfg, &claim, &ours));
        }
        let v = decision::apply(cfg, &findings, None);
        let deciding = v
            .deciding_finding(&findings)
            .map(|f| f.kind.code().into_owned());
        (v.action.name().to_string(), deciding, findings)
    }

    #[test]
    fn every_combination_that_matters() {
        use Policy::{None as PNone, Quarantine, Reject};
        use SpfResult::{Fail, Pass, SoftFail, TempError};
        let rows = [
            // DMARC record: an aligned pass on either side passes, whatever the policy.
            row(
                "reject, aligned DKIM pass",
                Fail,
                dmarc(Reject, fail(), PASS),
            )
            .then("accept", None),
            row(
                "reject, aligned SPF pass",
                Pass,
                dmarc(Reject, PASS, fail()),
            )
            .then("accept", None),
            row(
                "quarantine, DKIM pass",
                SoftFail,
                dmarc(Quarantine, fail(), PASS),
            )
            .then("accept", None),
            // No aligned pass: the policy speaks.
            row("reject, both fail", Fail, dmarc(Reject, fail(), fail()))
                .then("reject", Some("dmarc.fail")),
            row("reject, DKIM none", Pass, dmarc(Reject, fail(), NONE))
                .then("reject", Some("dmarc.fail")),
            row(
                "quarantine, both fail",
                SoftFail,
                dmarc(Quarantine, fail(), fail()),
            )
            .then("junk", Some("dmarc.fail")),
            row("none, both fail", Fail, dmarc(PNone, fail(), fail())).then("accept", None),
            // A DNS failure never passes, under any policy.
            row(
                "reject, SPF side temperror",
                TempError,
                dmarc(Reject, temp(), fail()),
            )
            .then("tempfail", Some("dmarc.temperror")),
            row(
                "none, DKIM side temperror",
                Pass,
                dmarc(PNone, fail(), temp()),
            )
            .then("tempfail", Some("dmarc.temperror")),
            // A trusted ARC chain overrides a DMARC failure; an untrusted one does not.
            Row {
                arc_sealer: Some("lists.trusted.test"),
                ..row("reject, trusted ARC", Fail, dmarc(Reject, fail(), fail()))
            }
            .then("accept", None),
            Row {
                arc_sealer: Some("lists.other.test"),
                ..row("reject, untrusted ARC", Fail, dmarc(Reject, fail(), fail()))
            }
            .then("reject", Some("dmarc.fail")),
            // No DMARC record: SPF speaks for itself.
            row("no record, SPF pass", Pass, no_record()).then("accept", None),
            row("no record, SPF fail", Fail, no_record()).then("reject", Some("spf.fail")),
            row("no record, SPF softfail", SoftFail, no_record()).then("accept", None),
            row("no record, SPF temperror", TempError, no_record())
                .then("tempfail", Some("spf.temperror")),
            row("DMARC off, SPF fail", Fail, None).then("reject", Some("spf.fail")),
            // Our own domain from outside: vouched for by an aligned signature, or refused.
            Row {
                from: "ours.test",
                ..row("ours, unsigned", Pass, no_record())
            }
            .then("reject", Some("local_sender.forged")),
            Row {
                from: "ours.test",
                dkim_pass: &["ours.test"],
                ..row("ours, signed", Pass, no_record())
            }
            .then("accept", None),
            Row {
                from: "ours.test",
                arc_sealer: Some("lists.trusted.test"),
                ..row("ours, trusted ARC", Pass, no_record())
            }
            .then("accept", None),
        ];
        let cfg = config();
        for r in &rows {
            let (action, deciding, _) = run(&cfg, r);
            assert_eq!(
                (action.as_str(), deciding.as_deref()),
                (r.action, r.deciding),
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn observe_mode_keeps_every_row_from_acting_and_says_what_it_would_do() {
        let mut cfg = config();
        cfg.dmarc.mode = Mode::Observe;
        cfg.spf.mode = Mode::Observe;
        let r = row(
            "reject, both fail",
            SpfResult::Fail,
            dmarc(Policy::Reject, fail(), fail()),
        );
        let (action, deciding, findings) = run(&cfg, &r);
        assert_eq!((action.as_str(), deciding), ("accept", None));
        let v = decision::apply(&cfg, &findings, None);
        assert!(
            matches!(v.would.as_slice(), [(Action::Reject(_), _)]),
            "{:?}",
            v.would
        );
        let w = v.would_records(&findings, None);
        assert_eq!(w[0].code, "would_reject");
        assert!(w[0].detail.starts_with("dmarc.fail: "), "{}", w[0].detail);
    }
}
