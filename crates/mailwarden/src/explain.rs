//! `mailwarden explain FILE.eml`: the inbound pipeline run offline on a message, as if a
//! client at `--ip` had said `--helo` and sent it from `--mail-from` to `--rcpt`: screening
//! (DNS lists, reverse DNS, HELO), sender authentication and content scoring, through the
//! configured resolver, with nothing delivered. The result is a decision record, printed like
//! one the server wrote. Greylisting and pregreet depend on a client's history and behaviour
//! and are not run.

use crate::checks::inbound::{self, Outcome};
use crate::checks::sender::{self, Envelope};
use crate::classifier::Model;
use crate::config::{Config, Mode};
use crate::dns::Dns;
use crate::records::{self, Rcpt, Reason, Record};
use crate::screening::{self, dnsbl, helo};
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
    routing: &crate::checks::relay::Routing,
    raw: &[u8],
    c: &Client,
) -> anyhow::Result<Record> {
    let dns = Arc::new(Dns::new(&cfg.dns)?);
    let t = cfg.dns.timeout.get();
    let sc = &cfg.screening;
    let mut signals = Vec::new();
    if sc.dnsbl.mode != Mode::Off {
        signals.extend(dnsbl::ip_lists(dns.clone(), &sc.dnsbl, c.ip, t).await);
        let domain = c.mail_from.rsplit_once('@').map_or("", |(_, d)| d);
        let names = [("HELO", c.helo.as_str()), ("sender", domain)];
        signals.extend(dnsbl::domain_lists(dns.clone(), &sc.dnsbl, &names, t).await);
    }
    if sc.helo.mode != Mode::Off {
        let found = helo::static_checks(&c.helo, c.ip, &cfg.hostname, IpAddr::from([0, 0, 0, 0]));
        if found.is_empty()
            && let Some(s) = helo::resolves(&dns, &c.helo).await
        {
            signals.push(s);
        }
        signals.extend(found);
    }
    dns.prime_loopback_ptr(c.ip).await;
    let iprev = sender::iprev(&dns, c.ip).await;
    if sc.rdns.mode != Mode::Off
        && let Some(s) = helo::rdns(&iprev, c.ip)
    {
        signals.push(s);
    }
    let screened = screening::decide(sc, &signals, c.ip);
    let refusal = screened.refuse.as_ref().map(|(_, s)| s.reason);
    let mut reasons: Vec<Reason> = signals
        .iter()
        // The DNS-list total is a signal of its own, found only by the decision.
        .chain(
            screened
                .refuse
                .iter()
                .map(|(_, s)| s)
                .filter(|s| !signals.iter().any(|x| x.reason == s.reason)),
        )
        .map(|s| Reason {
            deciding: Some(s.reason) == refusal,
            ..Reason::from(s)
        })
        .collect();
    for w in &screened.would {
        reasons.push(Reason {
            check: "observe".into(),
            code: format!("would_reject_{}", w.reason.as_str()),
            detail: w.detail.clone(),
            score: 0.0,
            deciding: false,
        });
    }

    let env = Envelope {
        ip: c.ip,
        helo: &c.helo,
        mail_from: &c.mail_from,
        hostname: &cfg.hostname,
    };
    let now = crate::util::unix_now();
    let d = match crate::checks::shape::check_headers(&cfg.limits, raw) {
        Err(r) => inbound::Decision::refused(r),
        Ok(_) => {
            let is_local = |d: &str| routing.is_local_domain(d).map_err(|e| e.to_string());
            let iprev = Some(iprev.clone());
            inbound::decide(&dns, cfg, model, &env, raw, None, iprev, now, &is_local).await
        }
    };
    let (action, reply) = match (&screened.refuse, &d.outcome) {
        (Some((reply, _)), _) => (
            if reply.is_transient() {
                "tempfail"
            } else {
                "reject"
            },
            reply.to_string(),
        ),
        (None, Outcome::Refuse { reply, .. }) => (
            if reply.is_transient() {
                "tempfail"
            } else {
                "reject"
            },
            reply.to_string(),
        ),
        (None, Outcome::Quarantine) => ("quarantine", "250 2.0.0 OK (held)".to_string()),
        (None, Outcome::Deliver { junk: Some(_) }) => ("junk", "250 2.0.0 OK".to_string()),
        (None, Outcome::Deliver { junk: None }) => ("accept", "250 2.0.0 OK".to_string()),
    };
    // A refusal at RCPT means the message itself would never have been read.
    let screened_out = screened.refuse.is_some();
    reasons.extend(d.reasons.into_iter().map(|mut r| {
        r.deciding &= !screened_out;
        r
    }));
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
        subject: records::header_value(raw, "Subject"),
        score: reasons.iter().map(|r| r.score).sum(),
        reasons,
        action: action.into(),
        reply,
    })
}
