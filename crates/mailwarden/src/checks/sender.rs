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
//! A check in `observe` mode never changes the action: what it would have done is recorded
//! in `Verdict::would` and logged as "would reject".

use super::verdict::{Action, Code, Reason, Verdict};
use crate::config::{Config, Mode};
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

pub struct Outcome {
    pub verdict: Verdict,
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
}

impl Outcome {
    /// No check ran (the message was refused before them).
    pub fn unchecked() -> Outcome {
        Outcome {
            verdict: Verdict::accept(Vec::new()),
            header: String::new(),
            summary: String::new(),
            from_domain: None,
            sender_verified: false,
            dkim_pass: Vec::new(),
            dkim_temp: false,
            arc_trusted: false,
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

fn spf_reason(o: &SpfOutput) -> Reason {
    let code = match o.result() {
        SpfResult::Pass => Code::SpfPass,
        SpfResult::Fail => Code::SpfFail,
        SpfResult::SoftFail => Code::SpfSoftFail,
        SpfResult::Neutral => Code::SpfNeutral,
        SpfResult::TempError => Code::SpfTempError,
        SpfResult::PermError => Code::SpfPermError,
        SpfResult::None => Code::SpfNone,
    };
    Reason::new(code, format!("SPF {} for {}", o.result(), o.domain()))
}

fn dkim_reason(o: &DkimOutput) -> Reason {
    let d = o.signature().map(|s| s.d.clone()).unwrap_or_default();
    let weak = o.signature().is_some_and(|s| s.a == Algorithm::RsaSha1);
    let (code, what) = match o.result() {
        DkimResult::Pass => (Code::DkimPass, "pass".to_string()),
        DkimResult::PermError(_) if weak => (
            Code::DkimWeak,
            "rsa-sha1 is not accepted (RFC 8301)".to_string(),
        ),
        DkimResult::Fail(e) | DkimResult::Neutral(e) => (Code::DkimFail, format!("fail: {e}")),
        DkimResult::PermError(e) => (Code::DkimPermError, format!("permerror: {e}")),
        DkimResult::TempError(e) => (Code::DkimTempError, format!("temperror: {e}")),
        DkimResult::None => (Code::DkimNone, "none".to_string()),
    };
    Reason::new(code, format!("DKIM signature d={d}: {what}"))
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

/// Run every enabled check on a received message and decide. `spf_done` and `iprev_done` are
/// results computed earlier in the session (SPF from MAIL FROM on, iprev from connect).
pub async fn evaluate(
    dns: &Dns,
    cfg: &Config,
    env: &Envelope<'_>,
    raw: &[u8],
    spf_done: Option<SpfOutput>,
    iprev_done: Option<IprevOutput>,
) -> Outcome {
    let mut reasons = Vec::new();
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
        reasons.push(spf_reason(s));
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
        let (code, name) = match &i.result {
            IprevResult::Pass => (Code::IprevPass, "pass"),
            IprevResult::Fail(_) | IprevResult::PermError(_) => (Code::IprevFail, "fail"),
            IprevResult::TempError(_) => (Code::IprevTempError, "temperror"),
            IprevResult::None => (Code::IprevNone, "none"),
        };
        reasons.push(Reason::new(
            code,
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
        let sender_verified = verified(&reasons);
        return Outcome {
            verdict: Verdict::accept(reasons),
            header,
            summary: summary.join(" "),
            sender_verified,
            ..Outcome::unchecked()
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
            reasons.push(Reason::new(
                Code::DkimPermError,
                format!(
                    "{} DKIM signature(s) list more than {} signed fields: not verified",
                    capped.long_h, cfg.dkim.max_signed_fields
                ),
            ));
        }
        if capped.excess > 0 {
            reasons.push(Reason::new(
                Code::DkimCapped,
                format!(
                    "{} DKIM signature(s) past the first {} not verified",
                    capped.excess, cfg.dkim.max_signatures
                ),
            ));
        }
        if dkim_out.is_empty() {
            reasons.push(Reason::new(Code::DkimNone, "no DKIM signature"));
            summary.push("dkim=none".to_string());
        }
        for o in &dkim_out {
            let r = dkim_reason(o);
            summary.push(format!(
                "dkim={}",
                r.code.as_str().trim_start_matches("dkim.")
            ));
            reasons.push(r);
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
    let mut arc_trusted_pass = false;
    if let Some(a) = &arc_out {
        let sealer = a.sets().last().map(|s| s.seal.header.d.to_lowercase());
        let pass = a.result() == &DkimResult::Pass;
        let code = match a.result() {
            DkimResult::Pass => Code::ArcPass,
            DkimResult::None => Code::ArcNone,
            _ => Code::ArcFail,
        };
        arc_trusted_pass = pass
            && sealer.as_ref().is_some_and(|s| {
                cfg.arc
                    .trusted_sealers
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(s))
            });
        reasons.push(Reason::new(
            code,
            format!(
                "ARC chain {} (sealer {})",
                code.as_str(),
                sealer.as_deref().unwrap_or("-")
            ),
        ));
        summary.push(format!("arc={}", code.as_str().trim_start_matches("arc.")));
        ar = ar.with_arc_result(a, env.ip);
    }

    let mut action = Action::Accept;
    let mut deciding: Option<(Reason, Mode)> = None;
    let mut decide = |a: Action, r: Reason, mode: Mode, reasons: &mut Vec<Reason>| {
        reasons.push(r.clone());
        if deciding.is_none() {
            action = a;
            deciding = Some((r, mode));
        }
    };

    let mut spf_speaks = cfg.dmarc.mode == Mode::Off;
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
        let (spf_side, dkim_side) = (dmarc.spf_result(), dmarc.dkim_result());
        let passed = *spf_side == DmarcResult::Pass || *dkim_side == DmarcResult::Pass;
        let temp = matches!(spf_side, DmarcResult::TempError(_))
            || matches!(dkim_side, DmarcResult::TempError(_));
        let domain = dmarc.domain().to_string();
        let policy = policy_name(dmarc.policy());
        let detail = format!(
            "DMARC for {domain}: spf={} dkim={} policy={policy}",
            dmarc_side(spf_side),
            dmarc_side(dkim_side)
        );
        let mode = cfg.dmarc.mode;
        let has_record = dmarc.dmarc_record().is_some();
        if has_record && passed {
            reasons.push(Reason::new(Code::DmarcPass, detail));
            summary.push("dmarc=pass".into());
        } else if temp {
            // With or without a record found: a DNS failure never passes.
            summary.push("dmarc=temperror".into());
            decide(
                Action::TempFail(replies::AUTH_DNS_TEMP),
                Reason::new(Code::DmarcTempError, detail),
                mode,
                &mut reasons,
            );
        } else if has_record {
            if arc_trusted_pass && cfg.arc.mode == Mode::Enforce {
                summary.push("dmarc=fail".into());
                reasons.push(Reason::new(Code::DmarcFail, detail));
                reasons.push(Reason::new(
                    Code::ArcOverride,
                    "DMARC failure overridden by a trusted ARC sealer",
                ));
            } else {
                summary.push("dmarc=fail".into());
                let r = Reason::new(Code::DmarcFail, detail);
                match dmarc.policy() {
                    Policy::Reject => decide(
                        Action::Reject(replies::dmarc_reject(&domain)),
                        r,
                        mode,
                        &mut reasons,
                    ),
                    Policy::Quarantine => decide(Action::Junk, r, mode, &mut reasons),
                    _ => reasons.push(r),
                }
            }
        } else {
            summary.push("dmarc=none".into());
            reasons.push(Reason::new(
                Code::DmarcNone,
                format!(
                    "no DMARC record for {}",
                    if domain.is_empty() { "-" } else { &domain }
                ),
            ));
            spf_speaks = true;
        }
    }
    // Without DMARC (no record, or the check off), SPF speaks for itself.
    if spf_speaks && let Some(s) = &spf_out {
        let mode = cfg.spf.mode;
        match s.result() {
            SpfResult::Fail if cfg.spf.reject_fail_without_dmarc => decide(
                Action::Reject(replies::spf_reject(s.domain())),
                spf_reason(s),
                mode,
                &mut reasons,
            ),
            SpfResult::TempError => decide(
                Action::TempFail(replies::SPF_TEMP),
                spf_reason(s),
                mode,
                &mut reasons,
            ),
            _ => {}
        }
    }

    let (verdict_action, would, deciding) = match deciding {
        Some((r, Mode::Enforce)) => (action, None, Some(r)),
        Some((r, _)) => (Action::Accept, Some(action), Some(r)),
        None => (Action::Accept, None, None),
    };
    let sender_verified = verified(&reasons);
    Outcome {
        verdict: Verdict {
            action: verdict_action,
            deciding,
            would,
            reasons,
        },
        header: ar.to_header(),
        summary: summary.join(" "),
        from_domain,
        sender_verified,
        dkim_pass,
        dkim_temp,
        arc_trusted: arc_trusted_pass && cfg.arc.mode == Mode::Enforce,
    }
}

fn verified(reasons: &[Reason]) -> bool {
    reasons
        .iter()
        .any(|r| matches!(r.code, Code::SpfPass | Code::DmarcPass))
}
