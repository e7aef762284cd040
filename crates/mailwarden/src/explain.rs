//! `mailwarden explain FILE.eml`: the inbound pipeline run offline on a message, as if a
//! client at `--ip` had said `--helo` and sent it from `--mail-from` to `--rcpt`: screening
//! (DNS lists, reverse DNS, HELO), sender authentication and content scoring, through the
//! configured resolver, with nothing delivered. The result is a decision record, printed like
//! one the server wrote. The screening stages and the end-of-DATA decision are the server's
//! own functions (`screening::at_connect`/`at_mail`/`at_rcpt`/`decide`, `checks::inbound`), so
//! the two give the same reasons, score and action for the same facts. Pregreet, greylisting
//! and protocol habits depend on a client's behaviour over time (`decision::Kind::behavioural`)
//! and are not run.

use crate::checks::inbound;
use crate::checks::sender::{self, Envelope};
use crate::classifier::Model;
use crate::config::Config;
use crate::decision::Action;
use crate::dns::Dns;
use crate::records::{self, Rcpt, Record};
use crate::screening;
use std::net::IpAddr;
use std::sync::Arc;

pub struct Client {
    pub ip: IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub rcpt: String,
}

/// Defaults for what was not given: the loopback client, the From address as sender, the
/// postmaster as recipient.
pub fn client(
    cfg: &Config,
    raw: &[u8],
    ip: Option<IpAddr>,
    helo: Option<String>,
    mail_from: Option<String>,
    rcpt: Option<String>,
) -> Client {
    let from = records::header_value(raw, "From")
        .and_then(|v| crate::checks::headers::mailbox(&v).0)
        .unwrap_or_default();
    Client {
        ip: ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        helo: helo.unwrap_or_else(|| "localhost".into()),
        mail_from: mail_from.unwrap_or(from),
        rcpt: rcpt.unwrap_or_else(|| cfg.postmaster_address()),
    }
}

pub async fn run(
    cfg: &Config,
    model: &Model,
    store: &crate::store::Store,
    routing: &crate::routing::Routing,
    raw: &[u8],
    c: &Client,
    now: i64,
) -> anyhow::Result<Record> {
    let dns = Arc::new(Dns::new(&cfg.dns)?);
    // The door, gathered in the server's order: connect, the first MAIL, the first RCPT.
    let mut findings = screening::at_connect(dns.clone(), cfg, c.ip).await;
    let domain = c.mail_from.rsplit_once('@').map_or("", |(_, d)| d);
    let unspecified = IpAddr::from([0, 0, 0, 0]);
    findings.extend(
        screening::at_mail(
            dns.clone(),
            cfg,
            c.ip,
            unspecified,
            &c.helo,
            &domain.to_ascii_lowercase(),
        )
        .await,
    );
    dns.prime_loopback_ptr(c.ip).await;
    let iprev = sender::iprev(&dns, c.ip).await;
    findings.extend(screening::at_rcpt(cfg, Some(&iprev), c.ip));
    let screened = screening::decide(cfg, &mut findings, c.ip);
    let (mut reasons, lists_score) = screening::reasons(&findings, &screened);

    // A refusal at RCPT means the message itself would never have been read: as in the
    // server, its checks do not run and its findings are not in the record.
    let screened_out = screened.action.refusal().is_some();
    let d = if screened_out {
        None
    } else {
        // The end of DATA, as the server decides it.
        let env = Envelope {
            ip: c.ip,
            helo: &c.helo,
            mail_from: &c.mail_from,
            hostname: &cfg.hostname,
        };
        Some(
            match crate::checks::shape::check_headers(&cfg.limits, raw) {
                Err(f) => inbound::Decision::refused(f),
                Ok(_) => {
                    let is_local = |d: &str| routing.is_local_domain(d).map_err(|e| e.to_string());
                    let iprev = Some(iprev.clone());
                    let history = |w: crate::reputation::Who| -> inbound::HistoryFuture {
                        let found = crate::reputation::lookup(store, &cfg.reputation, &w, now)
                            .map_err(|e| e.to_string());
                        Box::pin(async move { found })
                    };
                    let ours = inbound::Ours {
                        now,
                        is_local: &is_local,
                        history: &history,
                    };
                    inbound::decide(&dns, cfg, model, &env, raw, None, iprev, &ours).await
                }
            },
        )
    };
    let action = match &d {
        Some(d) => &d.verdict.action,
        None => &screened.action,
    };
    let reply = match action {
        Action::TempFail(r) | Action::Reject(r) => r.to_string(),
        Action::Quarantine => "250 2.0.0 OK (held)".to_string(),
        Action::Junk | Action::Accept => "250 2.0.0 OK".to_string(),
    };
    if let Some(d) = &d {
        reasons.extend(d.reasons());
    }
    let score = match (lists_score, &d) {
        (Some(s), _) => s,
        (None, Some(d)) => d.record_score(),
        (None, None) => 0.0,
    };
    Ok(Record {
        id: "offline".into(),
        time: now,
        session: "-".into(),
        listener: "explain".into(),
        ip: c.ip.to_string(),
        ptr: iprev
            .ptr
            .as_ref()
            .and_then(|p| p.first())
            .map(|n| n.trim_end_matches('.').to_string()),
        helo: c.helo.clone(),
        tls: None,
        account: None,
        mail_from: c.mail_from.clone(),
        rcpts: vec![Rcpt {
            address: c.rcpt.clone(),
            reply: reply.clone(),
        }],
        message_id: records::header_value(raw, "Message-ID"),
        subject: crate::header::decoded(raw, "Subject"),
        score,
        reasons,
        action: action.name().into(),
        reply,
    })
}
