//! The decision at the end of DATA for mail from other servers: sender authentication
//! ([`super::sender`]) first, then local-domain forgery ([`super::local_sender`]), then
//! content scoring ([`super::scoring`]), combined into one
//! outcome with every reason typed for the decision record. The server acts on it
//! (`server/message.rs`); `mailwarden explain FILE.eml` prints it, so the offline report and
//! the server cannot disagree.

use super::headers::Parsed;
use super::local_sender;
use super::scoring::{self, Level, Scored};
use super::sender::{self, Envelope};
use super::shape;
use super::verdict::{Action, Code};
use crate::classifier::Model;
use crate::config::{Config, Mode};
use crate::dns::Dns;
use crate::records::Reason;
use mail_auth::{IprevOutput, SpfOutput};
use mailwarden_proto::{Reply, replies};
use std::sync::Arc;

pub enum Outcome {
    /// Deliver; to Junk with this `X-Mailwarden-Verdict` note when it is `Some`.
    Deliver { junk: Option<String> },
    /// Keep for an administrator (`scoring.quarantine`).
    Quarantine,
    /// Refuse with this reply; `reason` for the log.
    Refuse { reply: Reply, reason: String },
}

pub struct Decision {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    /// Fields to prepend: Authentication-Results, and X-Spam-* or the warning when they apply.
    pub headers: String,
    pub sender_verified: bool,
    pub sender: sender::Outcome,
    pub scored: Scored,
}

impl Decision {
    /// A message whose shape ([`shape`]) is refused before any other check reads it.
    pub fn refused(r: shape::Refusal) -> Decision {
        Decision {
            outcome: Outcome::Refuse {
                reply: r.reply,
                reason: format!("{}: {}", r.code, r.detail),
            },
            reasons: vec![Reason::coded(r.code, r.detail, 0.0, true)],
            headers: String::new(),
            sender_verified: false,
            sender: sender::Outcome::unchecked(),
            scored: Scored {
                findings: Vec::new(),
                score: 0.0,
                level: Level::Clean,
            },
        }
    }
}

/// Decide on a received message whose header section passed [`shape::check_headers`].
/// `spf` and `iprev` are results found earlier in the session, if any; `now` is Unix time.
/// Parsing and scoring hold a [`crate::heavy::cpu`] slot when offloaded; a server runs this
/// through [`crate::heavy::checks`].
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    dns: &Arc<Dns>,
    cfg: &Config,
    model: &Model,
    env: &Envelope<'_>,
    raw: &[u8],
    spf: Option<SpfOutput>,
    iprev: Option<IprevOutput>,
    now: i64,
    is_local: &(dyn Fn(&str) -> Result<bool, String> + Sync),
) -> Decision {
    let parsed = {
        let _cpu = crate::heavy::cpu().await;
        let l = &cfg.limits;
        Parsed::new(raw, l.max_scan_bytes.0 as usize, l.max_link_hosts)
    };
    if let Some(msg) = &parsed.msg
        && let Err(r) = shape::check_mime(&cfg.limits, msg)
    {
        return Decision::refused(r);
    }
    let out = sender::evaluate(dns, cfg, env, raw, spf, iprev).await;
    let v = &out.verdict;
    let acted = v.action != Action::Accept;
    let mut reasons: Vec<Reason> = Vec::new();
    for r in &v.reasons {
        let deciding = acted && v.deciding.as_ref().is_some_and(|d| d.code == r.code);
        // The sender checks may name one finding twice (as a result and as the deciding one).
        if !reasons
            .iter()
            .any(|x| x.code == r.code.as_str() && x.detail == r.detail)
        {
            reasons.push(Reason::coded(
                r.code.as_str(),
                r.detail.as_str(),
                0.0,
                deciding,
            ));
        }
    }
    if let (Some(would), Some(r)) = (&v.would, &v.deciding) {
        reasons.push(Reason {
            check: "observe".into(),
            code: format!("would_{}", would.name()),
            detail: format!("{}: {}", r.code.as_str(), r.detail),
            score: 0.0,
            deciding: false,
        });
    }
    // Our own domains, from outside: something must vouch for them (local_sender).
    let mut forged: Option<(mailwarden_proto::Reply, String)> = None;
    let sender_refused = matches!(v.action, Action::Reject(_) | Action::TempFail(_));
    if cfg.mx.local_forgery != Mode::Off && !sender_refused {
        let claim = local_sender::Claim {
            ip: env.ip,
            mail_from: env.mail_from,
            from_domain: out.from_domain.as_deref(),
            dkim_pass: &out.dkim_pass,
            dkim_temp: out.dkim_temp,
            arc_trusted: out.arc_trusted,
        };
        let enforce = cfg.mx.local_forgery == Mode::Enforce;
        match local_sender::check(cfg, &claim, is_local) {
            None => {}
            Some(local_sender::Finding::Vouched(r)) => {
                reasons.push(Reason::coded(r.code.as_str(), r.detail, 0.0, false))
            }
            Some(local_sender::Finding::Forged(r) | local_sender::Finding::TempError(r)) => {
                let reply = if r.code == Code::LocalSenderForged {
                    replies::LOCAL_SENDER_FORGED
                } else {
                    replies::AUTH_DNS_TEMP
                };
                let why = format!("{}: {}", r.code.as_str(), r.detail);
                if enforce {
                    forged = Some((reply, why));
                } else {
                    reasons.push(Reason {
                        check: "observe".into(),
                        code: format!(
                            "would_{}",
                            if reply.is_transient() {
                                "tempfail"
                            } else {
                                "reject"
                            }
                        ),
                        detail: why,
                        score: 0.0,
                        deciding: false,
                    });
                }
                reasons.push(Reason::coded(r.code.as_str(), r.detail, 0.0, enforce));
            }
        }
    }
    let dmarc_policy = v
        .reasons
        .iter()
        .any(|r| matches!(r.code, Code::DmarcPass | Code::DmarcFail));
    let scored = scoring::score(
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
    let enforce = cfg.scoring.mode == Mode::Enforce;
    // The score decides only what sender authentication left open.
    let refused = sender_refused || forged.is_some();
    let acting = !refused
        && matches!(
            scored.level,
            Level::Junk | Level::Quarantine | Level::Reject
        );
    reasons.extend(scored.findings.iter().map(|f| {
        Reason::coded(
            f.code,
            f.detail.as_str(),
            f.score,
            enforce && acting && f.score > 0.0,
        )
    }));
    let mut headers = out.header.clone();
    let sender_verified = out.sender_verified;
    let mut outcome = match &v.action {
        Action::Reject(reply) | Action::TempFail(reply) => Outcome::Refuse {
            reply: reply.clone(),
            reason: v
                .deciding
                .as_ref()
                .map(|r| format!("{}: {}", r.code.as_str(), r.detail))
                .unwrap_or_default(),
        },
        Action::Junk => Outcome::Deliver {
            junk: Some(format!(
                "X-Mailwarden-Verdict: junk; {}\r\n",
                v.deciding
                    .as_ref()
                    .map(|r| r.detail.replace(['\r', '\n'], " "))
                    .unwrap_or_default()
            )),
        },
        Action::Accept => Outcome::Deliver { junk: None },
    };
    if let Some((reply, reason)) = forged {
        outcome = Outcome::Refuse { reply, reason };
    }
    if enforce && let Outcome::Deliver { junk } = &outcome {
        outcome = match scored.level {
            Level::Reject => Outcome::Refuse {
                reply: replies::SPAM_REJECTED,
                reason: format!("spam score {}", scored.score),
            },
            Level::Quarantine => Outcome::Quarantine,
            Level::Junk if junk.is_none() => Outcome::Deliver {
                junk: Some(format!(
                    "X-Mailwarden-Verdict: junk; spam score {}\r\n",
                    scored.score
                )),
            },
            _ => Outcome::Deliver { junk: junk.clone() },
        };
        if scored.level != Level::Clean {
            headers.push_str(&scoring::fields(&cfg.scoring, &scored));
        }
    }
    if cfg.scoring.warning_header && !sender_verified {
        headers
            .push_str("X-Mailwarden-Warning: The sender of this message could not be verified\r\n");
    }
    Decision {
        outcome,
        reasons,
        headers,
        sender_verified,
        sender: out,
        scored,
    }
}
