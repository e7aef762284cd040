//! The decision at the end of DATA for mail from other servers: sender authentication
//! ([`super::sender`]) first, then local-domain forgery ([`super::local_sender`]), then
//! content scoring ([`super::scoring`]) with the sender's reputation ([`crate::reputation`])
//! among its reasons. Their findings go through `crate::decision::apply`
//! together with the content score, so one verdict comes out, with every reason typed for the
//! decision record. The server acts on it (`server/message.rs`); `mailwarden explain
//! FILE.eml` prints it, so the offline report and the server cannot disagree.

use super::headers::Parsed;
use super::local_sender;
use super::scoring::{self, Level, Scored};
use super::sender::{self, Envelope};
use super::shape;
use crate::classifier::Model;
use crate::config::{Config, Mode};
use crate::decision::{self, Action, Cause, Finding, Kind, ScoreAsk, Verdict};
use crate::dns::Dns;
use crate::records::Reason;
use crate::reputation::{self, History, Who};
use mail_auth::{IprevOutput, SpfOutput};
use std::sync::Arc;

pub struct Decision {
    pub verdict: Verdict,
    /// Sender authentication's, local forgery's and content scoring's findings, in order.
    pub findings: Vec<Finding>,
    /// Where content scoring's findings start in `findings`: the ones the score sums.
    content_from: usize,
    /// The content score and its level, when scoring ran.
    pub score: Option<ScoreAsk>,
    /// Fields to prepend: Authentication-Results, and X-Spam-* or the warning when they apply.
    pub headers: String,
    pub sender_verified: bool,
    pub sender: sender::Checked,
    pub scored: Scored,
    /// Who sent it, as far as authentication says: what reputation counts it under.
    pub who: Who,
}

/// What the end-of-DATA decision asks of its host (the server, or `explain`).
pub struct Ours<'a> {
    /// Unix time.
    pub now: i64,
    /// Whether a domain is one of ours (local forgery).
    pub is_local: &'a (dyn Fn(&str) -> Result<bool, String> + Sync),
    /// A sender's history ([`reputation::lookup`] on the store, off the async workers in
    /// the server).
    pub history: &'a (dyn Fn(Who) -> HistoryFuture + Sync),
}

/// What [`Ours::history`] answers with.
pub type HistoryFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<History, String>> + Send>>;

impl Decision {
    /// A message whose shape ([`shape`]) is refused before any other check reads it.
    pub fn refused(f: Finding) -> Decision {
        let findings = vec![f];
        let verdict = Verdict {
            action: Action::refusing(
                findings[0]
                    .refusal
                    .clone()
                    .unwrap_or(mailwarden_proto::replies::LOCAL_ERROR),
            ),
            deciding: Some(Cause::Finding(0)),
            would: Vec::new(),
        };
        Decision {
            verdict,
            content_from: findings.len(),
            findings,
            score: None,
            headers: String::new(),
            sender_verified: false,
            sender: sender::Checked::unchecked(),
            scored: Scored {
                findings: Vec::new(),
                score: 0.0,
                level: Level::Clean,
            },
            who: Who::default(),
        }
    }

    /// The findings as the decision record keeps them: which one decided, which ones the
    /// score counted, and what observe mode kept from acting.
    pub fn reasons(&self) -> Vec<Reason> {
        let acted = self.verdict.action != Action::Accept;
        let mut out: Vec<Reason> = self
            .findings
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let content = i >= self.content_from;
                let deciding = acted
                    && match self.verdict.deciding {
                        Some(Cause::Finding(d)) => d == i,
                        Some(Cause::Score) => content && f.score > 0.0,
                        None => false,
                    };
                Reason {
                    counted: content && self.score.is_some(),
                    ..f.record(deciding)
                }
            })
            .collect();
        out.extend(
            self.verdict
                .would_records(&self.findings, self.score.as_ref()),
        );
        out
    }

    /// The score the decision was taken on.
    pub fn record_score(&self) -> f64 {
        self.score.map_or(0.0, |s| s.score)
    }

    /// The `X-Mailwarden-Verdict` field of a message delivered to Junk.
    pub fn junk_note(&self) -> Option<String> {
        if self.verdict.action != Action::Junk {
            return None;
        }
        let why = match self.verdict.deciding {
            Some(Cause::Finding(i)) => self.findings[i].detail.replace(['\r', '\n'], " "),
            _ => format!("spam score {}", self.record_score()),
        };
        Some(format!("X-Mailwarden-Verdict: junk; {why}\r\n"))
    }
}

/// Decide on a received message whose header section passed [`shape::check_headers`].
/// `spf` and `iprev` are results found earlier in the session, if any. Parsing and scoring
/// hold a [`crate::heavy::cpu`] slot when offloaded; a server runs this through
/// [`crate::heavy::checks`].
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    dns: &Arc<Dns>,
    cfg: &Config,
    model: &Model,
    env: &Envelope<'_>,
    raw: &[u8],
    spf: Option<SpfOutput>,
    iprev: Option<IprevOutput>,
    ours: &Ours<'_>,
) -> Decision {
    let (now, is_local) = (ours.now, ours.is_local);
    let parsed = {
        let _cpu = crate::heavy::cpu().await;
        let l = &cfg.limits;
        Parsed::new(raw, l.max_scan_bytes.0 as usize, l.max_link_hosts)
    };
    if let Some(msg) = &parsed.msg
        && let Err(f) = shape::check_mime(&cfg.limits, msg)
    {
        return Decision::refused(f);
    }
    let mut out = sender::evaluate(dns, cfg, env, raw, spf, iprev).await;
    let mut findings = std::mem::take(&mut out.findings);
    // Our own domains, from outside: something must vouch for them (local_sender), unless
    // sender authentication refuses the message already.
    let sender_refused = decision::apply(cfg, &findings, None)
        .action
        .refusal()
        .is_some();
    if cfg.mx.local_forgery != Mode::Off && !sender_refused {
        let claim = local_sender::Claim {
            ip: env.ip,
            mail_from: env.mail_from,
            from_domain: out.from_domain.as_deref(),
            dkim_pass: &out.dkim_pass,
            dkim_temp: out.dkim_temp,
            arc_trusted: out.arc_trusted,
        };
        findings.extend(local_sender::check(cfg, &claim, is_local));
    }
    let dmarc_policy = findings
        .iter()
        .any(|f| matches!(f.kind, Kind::DmarcPass | Kind::DmarcFail));
    let mut scored = scoring::score(
        dns,
        &cfg.scoring,
        model,
        &parsed,
        now,
        &cfg.hostname,
        dmarc_policy,
        cfg.dns.timeout.get(),
    )
    .await;
    let who = who(&out, env, &findings, &parsed.fields);
    if cfg.reputation.mode != Mode::Off {
        let mut found = match (ours.history)(who.clone()).await {
            Ok(h) => reputation::assess(&cfg.reputation, &who, &h),
            // History is a help, not a gate: without it the message is scored on the rest.
            Err(e) => {
                tracing::warn!(event = "reputation_unavailable", error = %e);
                Vec::new()
            }
        };
        scoring::weights(&cfg.scoring, model).apply(&mut found);
        scored.add(&cfg.scoring, found);
    }
    let content_from = findings.len();
    findings.extend(scored.findings.iter().cloned());
    // With scoring off the level is clean: the score is shown, and asks for nothing.
    let score = Some(ScoreAsk {
        score: scored.score,
        level: scored.level,
    });
    let verdict = decision::apply(cfg, &findings, score.as_ref());

    let mut headers = out.header.clone();
    // X-Spam-* when the score is enforced and the message is delivered on sender grounds.
    let delivered_by_sender = decision::apply(cfg, &findings[..content_from], None)
        .action
        .refusal()
        .is_none();
    if cfg.scoring.mode == Mode::Enforce && delivered_by_sender && scored.level != Level::Clean {
        headers.push_str(&scoring::fields(&cfg.scoring, &scored));
    }
    if cfg.scoring.warning_header && !out.sender_verified {
        headers
            .push_str("X-Mailwarden-Warning: The sender of this message could not be verified\r\n");
    }
    Decision {
        verdict,
        findings,
        content_from,
        score,
        headers,
        sender_verified: out.sender_verified,
        sender: out,
        scored,
        who,
    }
}

/// Who sent the message, as far as authentication supports it: the From address and domain
/// only when DMARC passed, or a DKIM signature or SPF passed for the From domain itself
/// (strict alignment: without the public suffix list, `d=x.example` cannot be told apart from
/// a stranger under a shared suffix), the client IP always, and the ids it replies to.
/// `fields` are the header fields content scoring parsed already.
fn who(
    out: &sender::Checked,
    env: &Envelope<'_>,
    findings: &[Finding],
    fields: &[(String, String)],
) -> Who {
    let aligned = |d: &str, fd: &str| d.trim_end_matches('.').eq_ignore_ascii_case(fd);
    let has = |k: Kind| findings.iter().any(|f| f.kind == k);
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let from = field("from")
        .and_then(|v| super::headers::mailbox(v).0)
        .map(|a| a.to_ascii_lowercase());
    let authenticated = match (&out.from_domain, &from) {
        (Some(fd), Some(addr)) if addr.rsplit_once('@').is_some_and(|(_, d)| aligned(d, fd)) => {
            let spf_domain = env.mail_from.rsplit_once('@').map_or("", |(_, d)| d);
            has(Kind::DmarcPass)
                || out.dkim_pass.iter().any(|d| aligned(d, fd))
                || (has(Kind::SpfPass) && !spf_domain.is_empty() && aligned(spf_domain, fd))
        }
        _ => false,
    };
    let mut replies_to = Vec::new();
    for name in ["in-reply-to", "references"] {
        let Some(v) = field(name) else {
            continue;
        };
        for part in v.split('<').skip(1) {
            if replies_to.len() >= reputation::MAX_REFERENCES {
                break;
            }
            if let Some((id, _)) = part.split_once('>') {
                replies_to.push(id.trim().to_string());
            }
        }
    }
    Who {
        domain: authenticated
            .then(|| out.from_domain.as_deref().map(str::to_ascii_lowercase))
            .flatten(),
        from: from.filter(|_| authenticated),
        ip: Some(env.ip),
        replies_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope<'static> {
        Envelope {
            ip: "192.0.2.7".parse().unwrap(),
            helo: "mail.sender.test",
            mail_from: "alice@sender.test",
            hostname: "mx.example.test",
        }
    }

    fn fields(raw: &str) -> Vec<(String, String)> {
        crate::header::unfolded(raw.as_bytes()).collect()
    }

    #[test]
    fn a_thousand_references_cost_twenty_lookups() {
        let refs: String = (0..10_000).map(|i| format!("<{i}@x.test> ")).collect();
        let raw = format!("From: a@sender.test\r\nReferences: {refs}\r\n\r\nbody\r\n");
        let w = who(&sender::Checked::unchecked(), &env(), &[], &fields(&raw));
        assert_eq!(w.replies_to.len(), reputation::MAX_REFERENCES);
        assert_eq!(w.replies_to[0], "0@x.test");
    }

    #[test]
    fn the_from_counts_only_when_its_own_domain_is_authenticated() {
        let raw = "From: Alice <Alice@Sender.test>\r\n\r\nbody\r\n";
        let mut out = sender::Checked::unchecked();
        out.from_domain = Some("sender.test".into());
        let spf = [Finding::new(Kind::SpfPass, "pass")];
        let w = who(&out, &env(), &spf, &fields(raw));
        assert_eq!(w.from.as_deref(), Some("alice@sender.test"));
        assert_eq!(w.domain.as_deref(), Some("sender.test"));
        // A signature of a parent or a sibling under a shared suffix is not the From's.
        out.dkim_pass = vec!["test".into()];
        let w = who(&out, &env(), &[], &fields(raw));
        assert_eq!((w.from, w.domain), (None, None));
        // Nothing passed: the IP is all there is.
        let w = who(&sender::Checked::unchecked(), &env(), &[], &fields(raw));
        assert_eq!(w.keys().len(), 3);
    }
}
