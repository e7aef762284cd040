//! Screening in an MX session (see `crate::screening` for the checks and the order they are
//! gathered in): the pregreet banner at connect, DNS list lookups started at connect, HELO
//! and domain-list checks started at MAIL, and one verdict at the first RCPT that every RCPT
//! of the session then gets. Greylisting is per recipient. Each finding is logged once, as
//! `event="screen"`, with the action taken: `reject`, `tempfail`, `would_reject` (observe
//! mode) or `score`.

use super::early::{Early, Started};
use super::shared::Shared;
use crate::config::Mode;
use crate::decision::{self, Finding, Kind, Verdict};
use crate::records::Reason;
use crate::screening::greylist::{self, Answer, Attempt};
use crate::screening::{self, dnsbl, memory};
use mailwarden_proto::replies;
use mailwarden_proto::session::Session;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(super) struct Screen {
    ip: IpAddr,
    local: IpAddr,
    ip_lists: Option<Started<Vec<Finding>>>,
    at_mail: Option<Started<Vec<Finding>>>,
    /// Everything found so far, in the order found: what the decision record will hold.
    findings: Vec<Finding>,
    /// Findings already logged, the DNS lists' total aside (the verdict is decided again
    /// for a new sender domain).
    logged: usize,
    /// Sender domains asked of the domain lists so far.
    senders: Vec<String>,
    /// The HELO checks were started (once per session, at the first MAIL).
    helo_started: bool,
    /// Reverse DNS and protocol behaviour were judged (once per session).
    judged_client: bool,
    /// The session's verdict, once the first RCPT has asked.
    decided: Option<Verdict>,
    /// Bumped whenever what the session's records get from screening changes, so each
    /// transaction copies it once per change, not at every RCPT.
    version: u64,
}

fn log_finding(session: &str, ip: IpAddr, f: &Finding, action: &'static str) {
    let check = f.kind.screening().map_or("-", |p| p.name());
    let code = f.kind.code();
    tracing::info!(event = "screen", session, ip = %ip, check, reason = code.as_ref(),
        detail = %f.detail, score = f.score, action);
    metrics::counter!("mailwarden_screen_total", "check" => check,
        "reason" => code.into_owned(), "action" => action)
    .increment(1);
}

fn now_secs(shared: &Shared) -> i64 {
    shared.clock.now_secs()
}

impl Screen {
    /// A new MX session: start the DNS list lookups for the client's address.
    pub(super) fn at_connect(shared: &Arc<Shared>, peer: SocketAddr, local: SocketAddr) -> Screen {
        let (dns, cfg) = (shared.dns.clone(), shared.config.clone());
        let ip_lists = Some(Started::start(async move {
            screening::at_connect(dns, &cfg, peer.ip()).await
        }));
        Screen {
            ip: peer.ip(),
            local: local.ip(),
            ip_lists,
            at_mail: None,
            findings: Vec::new(),
            logged: 0,
            senders: Vec::new(),
            helo_started: false,
            judged_client: false,
            decided: None,
            version: 0,
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
                let f = Finding::scored(
                    Kind::EarlyTalker,
                    format!("{n} bytes before the end of the greeting"),
                    1.0,
                )
                .refuse(replies::EARLY_TALKER);
                let v = decision::apply(&shared.config, std::slice::from_ref(&f), None);
                let refused = v.action.refusal().is_some();
                log_finding(
                    session,
                    self.ip,
                    &f,
                    if refused { "reject" } else { "would_reject" },
                );
                self.findings.push(f);
                if refused {
                    let r = replies::EARLY_TALKER.to_wire();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), io.write_all(r.as_bytes()))
                            .await;
                    tracing::info!(event = "reject", session, listener = "mx", ip = %self.ip,
                        verb = "CONNECT", reply = %replies::EARLY_TALKER,
                        code = Kind::EarlyTalker.code().as_ref(), reason = "early talker");
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
        let cfg = shared.config.clone();
        let dns = shared.dns.clone();
        if std::mem::replace(&mut self.helo_started, true) {
            // A later MAIL (after RSET, a refusal or a delivered message): only a new sender
            // domain is asked, after whatever an earlier MAIL still waits for, so no answer
            // is lost and no finding counted twice.
            let lists = cfg.screening.dnsbl.mode != Mode::Off
                && !cfg.screening.dnsbl.domain_zones.is_empty();
            if fresh && lists {
                let earlier = self.at_mail.take();
                self.at_mail = Some(Started::start(async move {
                    let mut found = match earlier {
                        Some(h) => h.finish().await.unwrap_or_default(),
                        None => Vec::new(),
                    };
                    let domains = [("sender", sender_domain.as_str())];
                    let (lists, t) = (&cfg.screening.dnsbl, cfg.dns.timeout.get());
                    found.extend(dnsbl::domain_lists(dns, lists, &domains, t).await);
                    found
                }));
                self.decided = None;
            }
            return;
        }
        let (ip, local, helo_name) = (self.ip, self.local, helo_name.to_string());
        self.at_mail = Some(Started::start(async move {
            screening::at_mail(dns, &cfg, ip, local, &helo_name, &sender_domain).await
        }));
    }

    /// The first RCPT asks for the session's verdict; later ones get the same. Returns the
    /// finding that refuses every RCPT of the session, if one does.
    pub(super) async fn verdict(
        &mut self,
        shared: &Shared,
        s: &Session,
        early: &mut Early,
        session: &str,
    ) -> Option<Finding> {
        if self.decided.is_none() {
            self.decide(shared, s, early, session).await;
        }
        let v = self.decided.as_ref()?;
        v.deciding_finding(&self.findings).cloned()
    }

    async fn decide(&mut self, shared: &Shared, s: &Session, early: &mut Early, session: &str) {
        let cfg = &shared.config;
        if let Some(h) = self.ip_lists.take() {
            self.findings.extend(h.finish().await.unwrap_or_default());
        }
        if let Some(h) = self.at_mail.take() {
            self.findings.extend(h.finish().await.unwrap_or_default());
        }
        let judge_client = !std::mem::replace(&mut self.judged_client, true);
        if judge_client
            && cfg.screening.rdns.mode != Mode::Off
            && let Some(f) = screening::at_rcpt(cfg, early.iprev().await.as_ref(), self.ip)
        {
            self.findings.push(f);
        }
        if judge_client && cfg.screening.protocol.mode != Mode::Off {
            let c = s.counters();
            if c.unauthorized_pipelining > 0 {
                self.findings.push(
                    Finding::scored(
                        Kind::UnauthorizedPipelining,
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
                self.findings.push(Finding::scored(
                    Kind::BareLfCommand,
                    format!("{} commands ended with a bare LF", c.bare_lf_commands),
                    0.5,
                ));
            }
        }
        let v = screening::decide(cfg, &mut self.findings, self.ip);
        // `logged` counts findings other than the DNS lists' total, which is decided (and
        // logged) anew each time.
        let mut seen = 0;
        for (i, f) in self.findings.iter().enumerate() {
            if f.kind != Kind::DnsblScore {
                seen += 1;
                // The early talker was logged when it talked.
                if seen <= self.logged || f.kind == Kind::EarlyTalker {
                    continue;
                }
            }
            let src = Some(decision::Cause::Finding(i));
            let action = if src == v.deciding {
                "reject"
            } else if v.would.iter().any(|(_, w)| Some(*w) == src) {
                "would_reject"
            } else {
                "score"
            };
            log_finding(session, self.ip, f, action);
        }
        self.logged = seen;
        self.version += 1;
        self.decided = Some(v);
    }

    /// Greylisting for one local recipient the session's verdict let through: the finding
    /// and its verdict, if the triplet is greylisted (or greylisting cannot say). The
    /// finding belongs to this recipient's transaction, not to the session: a session of
    /// many transactions and recipients keeps no more screening state than one.
    pub(super) async fn greylist(
        &mut self,
        shared: &Shared,
        early: &mut Early,
        sender: &str,
        rcpt: &str,
        session: &str,
    ) -> Option<(Finding, Verdict)> {
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
            allowlisted: dnsbl::allowed(&self.findings),
        };
        // Fail closed: a greylist that cannot say whether the client retried tempfails.
        let f = match greylist::check(shared.accounts.store(), cfg, &a, now_secs(shared)).await {
            Ok(Answer::Greylisted { wait }) => Finding::new(
                Kind::Greylisted,
                format!("first attempt for {rcpt}; retry in {wait}s or later"),
            )
            .refuse(replies::GREYLISTED),
            Ok(outcome) => {
                tracing::debug!(event = "greylist", session, rcpt, outcome = ?outcome);
                return None;
            }
            Err(e) => {
                tracing::error!(event = "greylist_failed", session, error = %e);
                Finding::new(
                    Kind::GreylistUnavailable,
                    format!("greylist memory unavailable: {e}"),
                )
                .refuse(replies::LOCAL_ERROR)
            }
        };
        let v = decision::apply(&shared.config, std::slice::from_ref(&f), None);
        let refused = v.action.refusal().is_some();
        log_finding(
            session,
            self.ip,
            &f,
            if refused { "tempfail" } else { "would_reject" },
        );
        Some((f, v))
    }

    /// Changes whenever [`Screen::reasons`] would give something new.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// The session's findings as the transaction's record keeps them, and the score a
    /// refusal among them was taken on.
    pub(super) fn reasons(&self) -> (Vec<Reason>, Option<f64>) {
        match &self.decided {
            Some(v) => screening::reasons(&self.findings, v),
            None => screening::reasons(&self.findings, &Verdict::accept()),
        }
    }

    /// The session ended: a client closed for too many errors loses its pregreet exemption.
    pub(super) async fn at_end(&mut self, shared: &Shared, s: &Session, session: &str) {
        let cfg = &shared.config.screening.protocol;
        if cfg.mode == Mode::Off || s.counters().errors < shared.config.smtp.max_errors {
            return;
        }
        let f = Finding::scored(
            Kind::TooManyErrors,
            format!("closed after {} errors", s.counters().errors),
            1.0,
        );
        log_finding(session, self.ip, &f, "score");
        self.findings.push(f);
        self.version += 1;
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
