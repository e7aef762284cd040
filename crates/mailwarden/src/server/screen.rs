//! Screening in an MX session (see `crate::screening` for the checks): the pregreet banner
//! at connect, DNS list lookups started at connect, HELO and domain-list checks started at
//! MAIL, and one decision at the first RCPT that every RCPT of the session then gets.
//! Greylisting is per recipient. Each signal is logged once, as `event="screen"`, with the
//! action taken: `reject`, `tempfail`, `would_reject` (observe mode) or `score`.

use super::Shared;
use super::message::{Early, Started};
use crate::config::Mode;
use crate::screening::greylist::{self, Attempt, Outcome};
use crate::screening::{self, Reason, Signal, dnsbl, helo, memory};
use mailwarden_proto::session::Session;
use mailwarden_proto::{Reply, replies};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A refusal decided by screening, for every RCPT of the session.
#[derive(Clone)]
pub(super) struct Refusal {
    pub(super) reply: Reply,
    /// The signal that refused.
    pub(super) signal: Signal,
}

pub(super) struct Screen {
    ip: IpAddr,
    local: IpAddr,
    ip_lists: Option<Started<Vec<Signal>>>,
    at_mail: Option<Started<Vec<Signal>>>,
    /// Everything found so far, in the order found: what the decision record will hold.
    pub(super) signals: Vec<Signal>,
    /// Signals already logged (the verdict is decided again for a new sender domain).
    logged: usize,
    /// Sender domains asked of the domain lists so far.
    senders: Vec<String>,
    /// The HELO checks were started (once per session, at the first MAIL).
    helo_started: bool,
    /// Reverse DNS and protocol behaviour were judged (once per session).
    judged_client: bool,
    /// The session's verdict, once the first RCPT has asked.
    decided: Option<Option<Refusal>>,
}

fn log_signal(session: &str, ip: IpAddr, s: &Signal, action: &'static str) {
    tracing::info!(event = "screen", session, ip = %ip, check = s.reason.check().as_str(),
        reason = s.reason.as_str(), detail = %s.detail, score = s.score, action);
    metrics::counter!("mailwarden_screen_total", "check" => s.reason.check().as_str(),
        "reason" => s.reason.as_str(), "action" => action)
    .increment(1);
}

fn now_secs(shared: &Shared) -> i64 {
    shared.clock.now_ms().div_euclid(1000)
}

impl Screen {
    /// A new MX session: start the DNS list lookups for the client's address.
    pub(super) fn at_connect(shared: &Arc<Shared>, peer: SocketAddr, local: SocketAddr) -> Screen {
        let cfg = &shared.config.screening.dnsbl;
        let ip_lists = (cfg.mode != Mode::Off && !cfg.zones.is_empty()).then(|| {
            let (dns, cfg, t) = (
                shared.dns.clone(),
                cfg.clone(),
                shared.config.dns.timeout.get(),
            );
            Started::start(async move { dnsbl::ip_lists(dns, &cfg, peer.ip(), t).await })
        });
        Screen {
            ip: peer.ip(),
            local: local.ip(),
            ip_lists,
            at_mail: None,
            signals: Vec::new(),
            logged: 0,
            senders: Vec::new(),
            helo_started: false,
            judged_client: false,
            decided: None,
        }
    }

    /// Pregreet: send `220-`, wait, and see whether the client talks first. Returns false
    /// when the client was an early talker and is refused (the refusal is already sent);
    /// bytes an observed early talker sent stay in `early_bytes` for the session to read.
    pub(super) async fn pregreet<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        shared: &Shared,
        io: &mut IO,
        session: &str,
        early_bytes: &mut Vec<u8>,
    ) -> bool {
        let cfg = &shared.config.screening.pregreet;
        let wait = cfg.wait.get();
        if cfg.mode == Mode::Off || wait.is_zero() {
            return true;
        }
        let key = format!("pregreet:{}", self.ip);
        let store = shared.accounts.store();
        if memory::known(store, &key, now_secs(shared)).unwrap_or(false) {
            return true;
        }
        let first = replies::greeting_first(&shared.config.hostname);
        if tokio::time::timeout(Duration::from_secs(5), io.write_all(first.as_bytes()))
            .await
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 512];
        let talked = match tokio::time::timeout(wait, io.read(&mut buf)).await {
            Err(_) => None,
            // A client that hung up is not an early talker; the session sees the EOF.
            Ok(Ok(0)) | Ok(Err(_)) => Some(0),
            Ok(Ok(n)) => {
                early_bytes.extend_from_slice(&buf[..n]);
                Some(n)
            }
        };
        match talked {
            None => {
                let until = now_secs(shared) + cfg.remember.get().as_secs() as i64;
                let _ = memory::remember(store, key, until).await;
                true
            }
            Some(0) => true,
            Some(n) => {
                let s = Signal::new(
                    Reason::EarlyTalker,
                    format!("{n} bytes before the end of the greeting"),
                    1.0,
                )
                .refuse(replies::EARLY_TALKER);
                let enforce = cfg.mode == Mode::Enforce;
                log_signal(
                    session,
                    self.ip,
                    &s,
                    if enforce { "reject" } else { "would_reject" },
                );
                self.signals.push(s);
                if enforce {
                    let r = replies::EARLY_TALKER.to_wire();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), io.write_all(r.as_bytes()))
                            .await;
                    tracing::info!(event = "reject", session, listener = "mx", ip = %self.ip,
                        verb = "CONNECT", reply = %replies::EARLY_TALKER, reason = "early talker");
                    return false;
                }
                true
            }
        }
    }

    /// MAIL on the MX port: start the HELO checks and the domain lists for the HELO name and
    /// the sender domain. HELO is checked once per session; every new sender domain is asked
    /// of the domain lists, and the session's verdict is decided again with its answers.
    pub(super) fn at_mail(&mut self, shared: &Arc<Shared>, helo_name: &str, sender: &str) {
        let sender_domain = sender
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let fresh = !sender_domain.is_empty() && !self.senders.contains(&sender_domain);
        if fresh {
            self.senders.push(sender_domain.clone());
        }
        let cfg = &shared.config.screening;
        let lists = cfg.dnsbl.mode != Mode::Off && !cfg.dnsbl.domain_zones.is_empty();
        if std::mem::replace(&mut self.helo_started, true) {
            // A later MAIL (after RSET, a refusal or a delivered message): only a new sender
            // domain is asked, after whatever an earlier MAIL still waits for, so no answer
            // is lost and no signal counted twice.
            if fresh && lists {
                let (dns, dcfg, t) = (
                    shared.dns.clone(),
                    cfg.dnsbl.clone(),
                    shared.config.dns.timeout.get(),
                );
                let earlier = self.at_mail.take();
                self.at_mail = Some(Started::start(async move {
                    let mut found = match earlier {
                        Some(h) => h.finish().await.unwrap_or_default(),
                        None => Vec::new(),
                    };
                    let domains = [("sender", sender_domain.as_str())];
                    found.extend(dnsbl::domain_lists(dns, &dcfg, &domains, t).await);
                    found
                }));
                self.decided = None;
            }
            return;
        }
        let mut found = Vec::new();
        if cfg.helo.mode != Mode::Off {
            found = helo::static_checks(helo_name, self.ip, &shared.config.hostname, self.local);
        }
        let resolve = cfg.helo.mode != Mode::Off && found.is_empty();
        if !resolve && !lists {
            self.signals.extend(found);
            return;
        }
        let (dns, dcfg, t) = (
            shared.dns.clone(),
            cfg.dnsbl.clone(),
            shared.config.dns.timeout.get(),
        );
        let helo_name = helo_name.to_string();
        self.at_mail = Some(Started::start(async move {
            if resolve && let Some(s) = helo::resolves(&dns, &helo_name).await {
                found.push(s);
            }
            if lists {
                let domains = [
                    ("HELO", helo_name.as_str()),
                    ("sender", sender_domain.as_str()),
                ];
                found.extend(dnsbl::domain_lists(dns, &dcfg, &domains, t).await);
            }
            found
        }));
    }

    /// The first RCPT asks for the session's verdict; later ones get the same.
    pub(super) async fn verdict(
        &mut self,
        shared: &Shared,
        s: &Session,
        early: &mut Early,
        session: &str,
    ) -> Option<Refusal> {
        if let Some(d) = &self.decided {
            return d.clone();
        }
        let cfg = &shared.config.screening;
        if let Some(h) = self.ip_lists.take() {
            self.signals.extend(h.finish().await.unwrap_or_default());
        }
        if let Some(h) = self.at_mail.take() {
            self.signals.extend(h.finish().await.unwrap_or_default());
        }
        let judge_client = !std::mem::replace(&mut self.judged_client, true);
        if judge_client
            && cfg.rdns.mode != Mode::Off
            && let Some(out) = early.iprev().await
            && let Some(sig) = helo::rdns(&out, self.ip)
        {
            self.signals.push(sig);
        }
        if judge_client && cfg.protocol.mode != Mode::Off {
            let c = s.counters();
            if c.unauthorized_pipelining > 0 {
                self.signals.push(
                    Signal::new(
                        Reason::UnauthorizedPipelining,
                        format!(
                            "{} commands sent before their replies without PIPELINING",
                            c.unauthorized_pipelining
                        ),
                        1.0,
                    )
                    .refuse(replies::PIPELINING_REJECTED),
                );
            }
            if c.bare_lf_commands > 0 {
                self.signals.push(Signal::new(
                    Reason::BareLfCommand,
                    format!("{} commands ended with a bare LF", c.bare_lf_commands),
                    0.5,
                ));
            }
        }
        let d = screening::decide(cfg, &self.signals, self.ip);
        let refusing = d.refuse.as_ref().map(|(_, s)| s.reason);
        // The DNS lists' total exists only in the decision; the early talker was logged
        // when it talked.
        let total = d
            .refuse
            .iter()
            .map(|(_, s)| s)
            .chain(&d.would)
            .filter(|s| s.reason == Reason::DnsblScore);
        for sig in self.signals[self.logged..]
            .iter()
            .filter(|s| s.reason != Reason::EarlyTalker)
            .chain(total)
        {
            let action = if Some(sig.reason) == refusing {
                "reject"
            } else if d.would.iter().any(|w| w.reason == sig.reason) {
                "would_reject"
            } else {
                "score"
            };
            log_signal(session, self.ip, sig, action);
        }
        self.logged = self.signals.len();
        let refusal = d.refuse.map(|(reply, signal)| Refusal { reply, signal });
        self.decided = Some(refusal.clone());
        refusal
    }

    /// Greylisting for one local recipient the session's verdict let through.
    pub(super) async fn greylist(
        &mut self,
        shared: &Shared,
        early: &mut Early,
        sender: &str,
        rcpt: &str,
        session: &str,
    ) -> Option<Refusal> {
        let cfg = &shared.config.screening.greylist;
        if cfg.mode == Mode::Off {
            return None;
        }
        let spf = early.spf_peek().await;
        let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let spf_pass = spf
            .as_ref()
            .is_some_and(|o| o.result() == mail_auth::SpfResult::Pass)
            .then_some(domain)
            .filter(|d| !d.is_empty());
        let a = Attempt {
            ip: self.ip,
            sender,
            rcpt,
            spf_pass,
            allowlisted: dnsbl::allowed(&self.signals),
        };
        // Fail closed: a greylist that cannot say whether the client retried tempfails.
        let sig = match greylist::check(shared.accounts.store(), cfg, &a, now_secs(shared)).await {
            Ok(Outcome::Greylisted { wait }) => Signal::new(
                Reason::Greylisted,
                format!("first attempt for {rcpt}; retry in {wait}s or later"),
                0.0,
            )
            .refuse(replies::GREYLISTED),
            Ok(outcome) => {
                tracing::debug!(event = "greylist", session, rcpt, outcome = ?outcome);
                return None;
            }
            Err(e) => {
                tracing::error!(event = "greylist_failed", session, error = %e);
                Signal::new(
                    Reason::GreylistUnavailable,
                    format!("greylist memory unavailable: {e}"),
                    0.0,
                )
                .refuse(replies::LOCAL_ERROR)
            }
        };
        let enforce = cfg.mode == Mode::Enforce;
        log_signal(
            session,
            self.ip,
            &sig,
            if enforce { "tempfail" } else { "would_reject" },
        );
        self.signals.push(sig.clone());
        enforce.then(|| Refusal {
            reply: sig.refusal.clone().unwrap_or(replies::GREYLISTED),
            signal: sig,
        })
    }

    /// The session ended: a client closed for too many errors loses its pregreet exemption.
    pub(super) async fn at_end(&mut self, shared: &Shared, s: &Session, session: &str) {
        let cfg = &shared.config.screening.protocol;
        if cfg.mode == Mode::Off || s.counters().errors < shared.config.smtp.max_errors {
            return;
        }
        let sig = Signal::new(
            Reason::TooManyErrors,
            format!("closed after {} errors", s.counters().errors),
            1.0,
        );
        log_signal(session, self.ip, &sig, "score");
        self.signals.push(sig);
        if cfg.mode == Mode::Enforce {
            let _ = memory::forget(shared.accounts.store(), format!("pregreet:{}", self.ip)).await;
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        for h in [self.ip_lists.take(), self.at_mail.take()]
            .into_iter()
            .flatten()
        {
            h.abort();
        }
    }
}
