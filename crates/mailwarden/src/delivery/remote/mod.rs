//! Outbound delivery: remote recipients from the durable queue to other domains' servers.
//!
//! The scheduler reads due recipients from the store (woken when a message is committed, and
//! every second, so CLI changes to the queue apply at once), groups them by destination
//! domain, and hands them to per-domain workers. A worker routes the domain ([`route`]),
//! opens a connection ([`client`]) and sends message after message over it, up to
//! `delivery.max_messages_per_connection`; at most `delivery.max_connections_per_domain`
//! workers serve one domain. Each message's outcome is committed right after the remote
//! server's final reply, so a restart never resends what the remote side accepted.
//!
//! Temporary failures are retried on `delivery.retry_schedule`; permanent ones, and
//! recipients older than `delivery.max_age`, are bounced ([`dsn`]) to senders that can be
//! trusted to be real (RFC 3464; no backscatter).

pub mod client;
pub mod dane;
pub mod dsn;
pub mod route;
pub mod sts;
pub mod tls_policy;

use crate::config::Config;
use crate::containment::Containment;
use crate::dns::Dns;
use crate::queue::{Body, Folder, Message, Queue, Recipient, RemoteOutcome, Route, Status};
use crate::routing::{RcptDecision, Routing};

use client::{ConnectError, Connector, Outgoing, RcptResult, TlsMode};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls_policy::{Plan, PolicyType, TlsPolicies};
use tokio::sync::Semaphore;

/// Recipients read per scan; the rest wait for the next scan.
const SCAN_LIMIT: usize = 500;
/// Jobs waiting for a worker beyond which the scheduler stops reading more.
const MAX_PENDING: usize = 200;

/// Remote recipients of one message for one domain.
struct Job {
    msg: Arc<Message>,
    rcpts: Vec<Recipient>,
    /// Attempts so far, per recipient (same order).
    attempts: Vec<u32>,
}

#[derive(Default)]
struct DomainState {
    pending: VecDeque<Job>,
    workers: usize,
}

pub struct Outbound {
    config: Arc<Config>,
    queue: Arc<Queue>,
    dns: Arc<Dns>,
    routing: Routing,
    /// Told of 5xx replies to submitted mail: a stream of them is a containment trigger.
    contain: Arc<Containment>,
    connector: Connector,
    /// DANE, MTA-STS and what TLS-RPT is told.
    policies: TlsPolicies,
    connections: Arc<Semaphore>,
    /// Our own listeners: mail is never delivered back to one of them.
    ours: Vec<std::net::SocketAddr>,
    inflight: Mutex<HashSet<(String, u32)>>,
    domains: Mutex<HashMap<String, DomainState>>,
}

pub fn spawn(
    config: Arc<Config>,
    queue: Arc<Queue>,
    dns: Arc<Dns>,
    routing: Routing,
    contain: Arc<Containment>,
    ours: Vec<std::net::SocketAddr>,
    policies: TlsPolicies,
) -> tokio::task::JoinHandle<()> {
    let out = Arc::new(Outbound {
        policies,
        connector: Connector {
            helo: config.hostname.clone(),
            port: config.delivery.port,
            connect_timeout: config.delivery.connect_timeout.get(),
            tls: client::client_tls(),
        },
        connections: Arc::new(Semaphore::new(config.delivery.max_connections)),
        ours,
        config,
        queue,
        dns,
        routing,
        contain,
        inflight: Mutex::new(HashSet::new()),
        domains: Mutex::new(HashMap::new()),
    });
    tokio::spawn(async move {
        loop {
            out.scan().await;
            tokio::select! {
                _ = out.queue.remote_ready.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

impl Outbound {
    fn pending(&self) -> usize {
        lock(&self.domains).values().map(|d| d.pending.len()).sum()
    }

    async fn scan(self: &Arc<Self>) {
        if self.pending() >= MAX_PENDING {
            return;
        }
        let now = self.queue.now();
        let due = match self.queue.claim_remote(now, SCAN_LIMIT).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(event = "queue_scan_failed", error = %e);
                return;
            }
        };
        let mut by_msg: Vec<(String, Vec<(u32, u32)>)> = Vec::new();
        {
            let mut inflight = lock(&self.inflight);
            for (id, idx, attempts) in due {
                if !inflight.insert((id.clone(), idx)) {
                    continue;
                }
                match by_msg.last_mut() {
                    Some((last, v)) if *last == id => v.push((idx, attempts)),
                    _ => by_msg.push((id, vec![(idx, attempts)])),
                }
            }
        }
        for (id, rcpts) in by_msg {
            let wanted: HashMap<u32, u32> = rcpts.iter().copied().collect();
            let msg = match self.queue.load_with(&id, true, |idx, status| {
                wanted.contains_key(&idx) && matches!(status, "queued" | "deferred")
            }) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.release(&id, wanted.keys().copied());
                    continue;
                }
                Err(e) => {
                    tracing::error!(event = "queue_unreadable", qid = %id, error = %e);
                    self.release(&id, wanted.keys().copied());
                    continue;
                }
            };
            let msg = Arc::new(msg);
            if now - msg.created >= self.config.delivery.max_age.get().as_secs() as i64 {
                let failed: Vec<_> = msg
                    .rcpts
                    .iter()
                    .map(|r| (r.clone(), expired_reply()))
                    .collect();
                self.finish_failed(&msg, failed).await;
                continue;
            }
            let mut per_domain: HashMap<String, Job> = HashMap::new();
            for r in &msg.rcpts {
                let domain = r
                    .address
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_default();
                let job = per_domain.entry(domain).or_insert_with(|| Job {
                    msg: msg.clone(),
                    rcpts: Vec::new(),
                    attempts: Vec::new(),
                });
                job.rcpts.push(r.clone());
                job.attempts.push(wanted.get(&r.idx).copied().unwrap_or(0));
            }
            for (domain, job) in per_domain {
                self.submit(domain, job);
            }
        }
    }

    fn release(&self, id: &str, idxs: impl Iterator<Item = u32>) {
        let mut inflight = lock(&self.inflight);
        for idx in idxs {
            inflight.remove(&(id.to_string(), idx));
        }
    }

    fn submit(self: &Arc<Self>, domain: String, job: Job) {
        let spawn = {
            let mut domains = lock(&self.domains);
            let st = domains.entry(domain.clone()).or_default();
            st.pending.push_back(job);
            let spawn = st.workers < self.config.delivery.max_connections_per_domain
                && st.workers < st.pending.len();
            if spawn {
                st.workers += 1;
            }
            spawn
        };
        if spawn {
            let me = self.clone();
            tokio::spawn(async move { me.worker(domain).await });
        }
    }

    /// The next job for a domain; `None` retires the worker in the same critical section, so
    /// a job submitted meanwhile always finds a worker.
    fn take(&self, domain: &str) -> Option<Job> {
        let mut domains = lock(&self.domains);
        let st = domains.get_mut(domain)?;
        let job = st.pending.pop_front();
        if job.is_none() {
            st.workers -= 1;
            if st.workers == 0 {
                domains.remove(domain);
            }
        }
        job
    }

    /// Every job still waiting for this domain (the destination is unreachable now).
    fn drain(&self, domain: &str) -> Vec<Job> {
        let mut domains = lock(&self.domains);
        match domains.get_mut(domain) {
            Some(st) => st.pending.drain(..).collect(),
            None => Vec::new(),
        }
    }

    async fn worker(self: Arc<Self>, domain: String) {
        let Some(mut job) = self.take(&domain) else {
            return;
        };
        let Ok(_permit) = self.connections.clone().acquire_owned().await else {
            return;
        };
        loop {
            let conn = match self.open(&domain).await {
                Ok(c) => c,
                Err(Unusable::Temporary(why)) => {
                    tracing::info!(event = "destination_deferred", domain = %domain, reason = %why);
                    for j in std::iter::once(job).chain(self.drain(&domain)) {
                        self.defer_all(&j, &why).await;
                    }
                    while let Some(j) = self.take(&domain) {
                        self.defer_all(&j, &why).await;
                    }
                    return;
                }
                Err(Unusable::Permanent(status, why)) => {
                    tracing::info!(event = "destination_failed", domain = %domain, reason = %why);
                    for j in std::iter::once(job).chain(self.drain(&domain)) {
                        self.fail_all(&j, &status, &why).await;
                    }
                    while let Some(j) = self.take(&domain) {
                        self.fail_all(&j, &status, &why).await;
                    }
                    return;
                }
            };
            let mut conn = conn;
            let mut sent = 0;
            loop {
                let ok = self.deliver(&mut conn, &job).await;
                sent += 1;
                match self.take(&domain) {
                    Some(next) => job = next,
                    None => {
                        conn.quit().await;
                        return;
                    }
                }
                if !ok || conn.broken || sent >= self.config.delivery.max_messages_per_connection {
                    break;
                }
            }
            conn.quit().await;
        }
    }

    /// A connection to the best reachable host of the domain.
    async fn open(&self, domain: &str) -> Result<client::Conn, Unusable> {
        let mut hosts = route::resolve(self.dns.auth.resolver(), domain, &self.config.hostname)
            .await
            .map_err(|e| match e {
                route::RouteError::Temporary(t) => Unusable::Temporary(t),
                route::RouteError::Permanent { status, text } => {
                    Unusable::Permanent(status.to_string(), text)
                }
            })?;
        let port = self.config.delivery.port;
        let mut refused = None;
        for h in hosts.iter_mut() {
            h.addrs.retain(|ip| {
                let why = route::refused_destination(
                    *ip,
                    port,
                    &self.ours,
                    self.config.delivery.allow_private_destinations,
                );
                if let Some(w) = why {
                    tracing::warn!(event = "destination_refused", domain, host = %h.name, ip = %ip, reason = w.1);
                    refused.get_or_insert((w.0, format!("{} ({ip}): {}", h.name, w.1)));
                }
                why.is_none()
            });
        }
        hosts.retain(|h| !h.addrs.is_empty());
        if hosts.is_empty()
            && let Some((status, why)) = refused
        {
            return Err(Unusable::Permanent(status.to_string(), why));
        }
        let required = self
            .config
            .delivery
            .require_tls
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        // DANE (RFC 7672 §2.2.1): a validated MX answer names the hosts, so a forged
        // unvalidated one cannot send us elsewhere; an answer that fails validation waits.
        let mx_secure = match self.policies.mx(domain).await {
            dane::Mx::Secure(names) => {
                hosts.retain(|h| names.contains(&h.name));
                if hosts.is_empty() {
                    return Err(Unusable::Temporary(format!(
                        "no host of {domain}'s validated MX answer is usable"
                    )));
                }
                true
            }
            dane::Mx::Insecure => false,
            dane::Mx::Failed(why) => return Err(Unusable::Temporary(why)),
        };
        let sts = self.policies.sts(domain).await;
        let mut errors = Vec::new();
        for host in &hosts {
            let plan = self
                .policies
                .plan(&host.name, mx_secure, sts.as_ref())
                .await;
            let (kind, text) = match (&plan, &sts) {
                (Plan::Dane(_, records), _) => (PolicyType::Tlsa, tlsa_text(records)),
                (Plan::Required | Plan::Skip(_, "tlsa-invalid"), _) => {
                    (PolicyType::Tlsa, String::new())
                }
                (Plan::Sts(_) | Plan::StsTesting(_) | Plan::Skip(..), Some(p)) => {
                    (PolicyType::Sts, p.body.clone())
                }
                _ => (PolicyType::NoPolicyFound, String::new()),
            };
            if let Plan::Skip(why, result) = &plan {
                tracing::warn!(event = "tls_policy_refused", domain, host = %host.name, reason = %why);
                if let Some(ip) = host.addrs.first() {
                    self.policies
                        .record(domain, kind, &text, &host.name, *ip, result);
                }
                errors.push(why.clone());
                continue;
            }
            // TLSA records that validate but none usable: TLS all the same (RFC 7672 §2.2).
            let required = required || matches!(plan, Plan::Required);
            for ip in &host.addrs {
                let record = |result: &str| {
                    self.policies
                        .record(domain, kind, &text, &host.name, *ip, result)
                };
                let verify = match &plan {
                    Plan::Dane(c, _) | Plan::Sts(c) | Plan::StsTesting(c) => c.clone(),
                    _ => match self.without_policy(&host.name, *ip, required).await {
                        Ok(c) => {
                            if c.tls.is_some() {
                                record("success");
                            }
                            return Ok(c);
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    },
                };
                match self
                    .connector
                    .connect(&host.name, *ip, TlsMode::Verified(verify))
                    .await
                {
                    Ok(c) => {
                        record("success");
                        return Ok(c);
                    }
                    Err(e @ (ConnectError::TlsFailed(_) | ConnectError::TlsUnavailable(_))) => {
                        let why = e.to_string();
                        record(tls_policy::failure_type(&why));
                        tracing::warn!(event = "tls_verify_failed", domain, host = %host.name, ip = %ip,
                            policy = kind.name(), error = %why);
                        if !matches!(plan, Plan::StsTesting(_)) {
                            // DANE and MTA-STS enforce: never without the verified TLS.
                            errors.push(format!("{why} ({} policy)", kind.name()));
                            continue;
                        }
                        // MTA-STS testing: reported; now as without a policy.
                        match self.without_policy(&host.name, *ip, required).await {
                            Ok(c) => return Ok(c),
                            Err(e) => errors.push(e),
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Err(Unusable::Temporary(errors.join("; ")))
    }

    /// A connection as when no policy applies: TLS when offered (required when `required`),
    /// and plaintext on a fresh connection after a failed handshake only when not required.
    async fn without_policy(
        &self,
        host: &str,
        ip: std::net::IpAddr,
        required: bool,
    ) -> Result<client::Conn, String> {
        let mode = if required {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        };
        match self.connector.connect(host, ip, mode).await {
            Ok(c) => Ok(c),
            Err(ConnectError::TlsFailed(e)) if !required => {
                // Opportunistic TLS that fails must not stop the mail.
                tracing::info!(event = "tls_fallback", host = %host, ip = %ip, error = %e);
                self.connector
                    .connect(host, ip, TlsMode::Off)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Send one job over `conn` and record the outcome. False if the connection failed.
    async fn deliver(&self, conn: &mut client::Conn, job: &Job) -> bool {
        // Still this node's? Its lease may have run out while it waited for a connection, and
        // another node may be sending it now: renew it, or leave the recipient alone.
        let idxs = job.rcpts.iter().map(|r| r.idx).collect();
        let mine = match self.queue.renew(vec![(job.msg.id.clone(), idxs)]).await {
            Ok(mut v) => v.pop().map(|(_, m)| m).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(event = "lease_renew_failed", qid = %job.msg.id, error = %e);
                Vec::new()
            }
        };
        let kept;
        let job = if mine.len() == job.rcpts.len() {
            job
        } else {
            let keep: Vec<usize> = (0..job.rcpts.len())
                .filter(|i| mine.contains(&job.rcpts[*i].idx))
                .collect();
            let gone = job
                .rcpts
                .iter()
                .map(|r| r.idx)
                .filter(|i| !mine.contains(i));
            self.release(&job.msg.id, gone);
            if keep.is_empty() {
                return true;
            }
            kept = Job {
                msg: job.msg.clone(),
                rcpts: keep.iter().map(|i| job.rcpts[*i].clone()).collect(),
                attempts: keep.iter().map(|i| job.attempts[*i]).collect(),
            };
            &kept
        };
        let msg = &job.msg;
        // Suspended since this message was queued: held with the account's other mail; a
        // state that cannot be read defers it (never sends it).
        if let Some(account) = &msg.meta.auth {
            match self.contain.is_suspended(account) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(event = "held_suspended", qid = %msg.id, account = %account);
                    let held = job
                        .rcpts
                        .iter()
                        .map(|r| RemoteOutcome {
                            idx: r.idx,
                            status: Status::Held,
                            reply: Some(format!("held: account {account} is suspended")),
                            next_attempt: 0,
                        })
                        .collect();
                    self.record(msg, held).await;
                    return true;
                }
                Err(e) => {
                    self.defer_all(job, &format!("local error reading the account state: {e}"))
                        .await;
                    return true;
                }
            }
        }
        let body = match &msg.body {
            Body::Inline(b) => b.clone(),
            Body::Spooled(p) => match tokio::fs::read(p).await {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    tracing::error!(event = "spool_failed", qid = %msg.id, error = %e);
                    self.defer_all(job, &format!("local error reading the message: {e}"))
                        .await;
                    return true;
                }
            },
            Body::Stored => Arc::new(Vec::new()),
        };
        let rcpts: Vec<String> = job.rcpts.iter().map(|r| r.address.clone()).collect();
        let content = [msg.meta.prepend.as_bytes(), body.as_slice()];
        let result = conn
            .send(&Outgoing {
                sender: &msg.sender,
                rcpts: &rcpts,
                content: &content,
            })
            .await;
        let results = match result {
            Ok(r) => r,
            Err(e) => {
                let why = format!("{}: {e}", conn.remote);
                tracing::info!(event = "delivery_interrupted", qid = %msg.id, remote = %conn.remote, error = %e);
                self.defer_all(job, &why).await;
                return false;
            }
        };
        let now = self.queue.now();
        let mut outcomes = Vec::new();
        let mut failed = Vec::new();
        let tls_class = match conn.tls.as_deref() {
            None => "none",
            Some(t) if t.ends_with(" verified") => "verified",
            Some(_) => "opportunistic",
        };
        let count = |result: &'static str| {
            metrics::counter!("mailwarden_outbound_deliveries_total", "result" => result, "tls" => tls_class)
                .increment(1);
        };
        for ((r, attempts), res) in job.rcpts.iter().zip(&job.attempts).zip(results) {
            match res {
                RcptResult::Accepted(reply) => {
                    count("delivered");
                    let text = format!("{} said: {}", conn.remote, reply.text());
                    tracing::info!(event = "delivered", qid = %msg.id, rcpt = %r.address,
                        remote = %conn.remote, tls = conn.tls.as_deref().unwrap_or("none"), reply = %reply.text());
                    outcomes.push(RemoteOutcome {
                        idx: r.idx,
                        status: Status::Delivered,
                        reply: Some(text),
                        next_attempt: 0,
                    });
                }
                RcptResult::Deferred(_, text) => {
                    count("deferred");
                    tracing::info!(event = "deferred", qid = %msg.id, rcpt = %r.address, reply = %text);
                    outcomes.push(self.deferral(msg, r, *attempts, &text, now, &mut failed));
                }
                RcptResult::Failed(status, text) => {
                    count("bounced");
                    tracing::info!(event = "bounced", qid = %msg.id, rcpt = %r.address, reply = %text);
                    outcomes.push(RemoteOutcome::failed(r.idx, text.clone()));
                    failed.push(dsn::Failed {
                        address: r.address.clone(),
                        status,
                        remote_mta: Some(conn.remote.clone()),
                        diagnostic: strip_said(&text),
                        from_smtp: true,
                    });
                }
            }
        }
        self.record(msg, outcomes).await;
        if let Some(account) = &msg.meta.auth {
            for _ in failed.iter().filter(|f| f.from_smtp) {
                self.contain.remote_rejected(account, &msg.id).await;
            }
        }
        self.bounce(msg, failed).await;
        true
    }

    /// A deferral, or a failure when the message has waited too long.
    fn deferral(
        &self,
        msg: &Message,
        r: &Recipient,
        attempts: u32,
        text: &str,
        now: i64,
        failed: &mut Vec<dsn::Failed>,
    ) -> RemoteOutcome {
        let d = &self.config.delivery;
        let wait = d.retry_schedule[(attempts as usize).min(d.retry_schedule.len() - 1)]
            .get()
            .as_secs() as i64;
        let next = now + wait.max(1);
        if next - msg.created > d.max_age.get().as_secs() as i64 {
            failed.push(dsn::Failed {
                address: r.address.clone(),
                status: "4.4.7".into(),
                remote_mta: None,
                diagnostic: format!("delivery time expired; last error: {text}"),
                from_smtp: false,
            });
            return RemoteOutcome::failed(r.idx, format!("expired: {text}"));
        }
        RemoteOutcome {
            idx: r.idx,
            status: Status::Deferred,
            reply: Some(text.to_string()),
            next_attempt: next,
        }
    }

    async fn defer_all(&self, job: &Job, why: &str) {
        let now = self.queue.now();
        let mut failed = Vec::new();
        let outcomes = job
            .rcpts
            .iter()
            .zip(&job.attempts)
            .map(|(r, a)| self.deferral(&job.msg, r, *a, why, now, &mut failed))
            .collect();
        self.record(&job.msg, outcomes).await;
        self.bounce(&job.msg, failed).await;
    }

    async fn fail_all(&self, job: &Job, status: &str, why: &str) {
        let failed = job
            .rcpts
            .iter()
            .map(|r| (r.clone(), (status.to_string(), why.to_string())))
            .collect();
        self.finish_failed(&job.msg, failed).await;
    }

    /// Fail recipients for good (our own reason, not a remote reply) and bounce them.
    async fn finish_failed(&self, msg: &Arc<Message>, failed: Vec<(Recipient, (String, String))>) {
        let mut outcomes = Vec::new();
        let mut dsns = Vec::new();
        for (r, (status, why)) in failed {
            tracing::info!(event = "bounced", qid = %msg.id, rcpt = %r.address, reason = %why);
            outcomes.push(RemoteOutcome::failed(r.idx, why.clone()));
            dsns.push(dsn::Failed {
                address: r.address,
                status,
                remote_mta: None,
                diagnostic: why,
                from_smtp: false,
            });
        }
        self.record(msg, outcomes).await;
        self.bounce(msg, dsns).await;
    }

    async fn record(&self, msg: &Message, outcomes: Vec<RemoteOutcome>) {
        let idxs: Vec<u32> = outcomes.iter().map(|o| o.idx).collect();
        if let Err(e) = self.queue.record_remote(&msg.id, outcomes).await {
            // Unrecorded recipients stay due; a later attempt may repeat a delivery.
            tracing::error!(event = "queue_record_failed", qid = %msg.id, error = %e);
        }
        self.release(&msg.id, idxs.into_iter());
    }

    /// Send a DSN for failed recipients, if the sender may get one.
    async fn bounce(&self, msg: &Message, failed: Vec<dsn::Failed>) {
        if failed.is_empty() {
            return;
        }
        if msg.sender.is_empty() {
            tracing::info!(event = "bounce_suppressed", qid = %msg.id, reason = "the message is itself a bounce");
            return;
        }
        if msg.meta.auth.is_none() && !msg.meta.sender_verified {
            tracing::info!(event = "bounce_suppressed", qid = %msg.id, sender = %msg.sender,
                reason = "sender not authenticated and not verified by SPF or DMARC (backscatter)");
            return;
        }
        let route = match mailwarden_proto::address::parse_forward_path(
            &format!("<{}>", msg.sender),
            true,
        ) {
            Ok(fp) => match self.routing.decide(&fp, true) {
                RcptDecision::Local { mailbox } => Route::Local {
                    mailbox,
                    folder: Folder::Inbox,
                },
                RcptDecision::Remote => Route::Remote,
                RcptDecision::Refuse(f) => {
                    tracing::info!(event = "bounce_suppressed", qid = %msg.id, sender = %msg.sender,
                        code = f.kind.code().as_ref(), reason = f.detail.as_str());
                    return;
                }
            },
            Err(e) => {
                tracing::info!(event = "bounce_suppressed", qid = %msg.id, sender = %msg.sender, reason = %e);
                return;
            }
        };
        let original = match &msg.body {
            Body::Inline(b) => dsn::header_of(b, 64 * 1024).to_vec(),
            Body::Spooled(p) => match read_head(p, 64 * 1024).await {
                Ok(h) => dsn::header_of(&h, 64 * 1024).to_vec(),
                Err(_) => Vec::new(),
            },
            Body::Stored => Vec::new(),
        };
        let mut header = msg.meta.prepend.as_bytes().to_vec();
        header.extend_from_slice(&original);
        let now = self.queue.now();
        let body = dsn::build(
            &self.config.hostname,
            &msg.id,
            msg.created,
            &msg.sender,
            &header,
            &failed,
            now,
        );
        let to = Recipient {
            idx: 0,
            address: msg.sender.clone(),
            route,
        };
        let dsn_msg = Message::generated("dsn", &self.config.hostname, now, to, body);
        let id = dsn_msg.id.clone();
        match self.queue.enqueue(dsn_msg).await {
            Ok(()) => tracing::info!(event = "bounce_queued", qid = %id, original = %msg.id,
                to = %msg.sender, recipients = failed.len()),
            Err(e) => tracing::error!(event = "bounce_failed", original = %msg.id, error = %e),
        }
    }
}

enum Unusable {
    Temporary(String),
    Permanent(String, String),
}

/// TLSA records as TLS-RPT's `policy-string` has them: `usage selector matching hex`.
fn tlsa_text(records: &[dane::Tlsa]) -> String {
    records
        .iter()
        .map(|r| {
            let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn expired_reply() -> (String, String) {
    (
        "4.4.7".into(),
        "delivery time expired before the message could be delivered".into(),
    )
}

/// `host[ip] said: 550 ...` → `550 ...` (the DSN names the host separately).
fn strip_said(text: &str) -> String {
    text.split_once(" said: ")
        .map(|(_, r)| r.to_string())
        .unwrap_or_else(|| text.to_string())
}

async fn read_head(p: &std::path::Path, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(p).await?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
