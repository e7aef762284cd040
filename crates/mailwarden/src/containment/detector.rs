//! The [`Detector`]: watches what accounts do on the submission ports and decides limits
//! (`451 4.7.1`), suspension triggers and AUTH brute-force blocks, over sliding windows of
//! [`crate::limits::Counters`] with an injectable clock.
//!
//! Given the store ([`Detector::with_store`]), accounts' usual volumes are kept in it, so a
//! restart forgets none; on a shared store every count, block and correspondent is there too,
//! and check-then-count steps hold a cluster-wide lock: nodes enforce the limits of one.

use crate::config::Containment as Cfg;
use crate::limits::shared::Shared;
use crate::limits::{Blocks, Clock, Counters, Key, Known, Metric, network};
use crate::store::{ClusterLock, Store};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Active hours an account needs before its hourly volume counts as its usual one.
const MIN_BASELINE_HOURS: u64 = 3;
/// Decision records of abandoned transactions kept per client address and hour.
const ABANDONED_RECORDS_PER_HOUR: usize = 100;
/// AUTH turns kept before the past ones are dropped.
const MAX_AUTH_TURNS: usize = 10_000;

/// The largest number any limit or trigger compares a count with: counters need keep no
/// more events than one past it (memory per client stays bounded, the answers the same).
fn largest_limit(c: &Cfg) -> usize {
    let own = [
        c.max_messages_per_hour,
        c.max_recipients_per_day,
        c.max_messages_per_hour_per_domain,
        c.max_connections_per_minute_per_ip,
        c.burst_per_minute,
        c.burst_per_hour_floor,
        c.new_recipients_per_hour,
        c.unknown_recipients,
        c.login_networks_per_hour,
        c.remote_rejections_per_hour,
        c.spam_messages_per_hour,
        c.auth_failures_per_ip,
        c.auth_failures_per_network,
    ];
    let overrides = c.overrides.iter().flat_map(|o| {
        [
            o.max_messages_per_hour.unwrap_or(0),
            o.max_recipients_per_day.unwrap_or(0),
            o.burst_per_minute.unwrap_or(0),
        ]
    });
    let most = own.into_iter().chain(overrides).max().unwrap_or(0);
    // The surge trigger compares with burst_factor times an account's usual hour, which
    // its hourly limit bounds.
    let per_hour = c
        .overrides
        .iter()
        .filter_map(|o| o.max_messages_per_hour)
        .chain([c.max_messages_per_hour])
        .max()
        .unwrap_or(0);
    most.max((c.burst_factor.max(1.0) * per_hour as f64).ceil() as usize)
}

fn unavailable() -> Limited {
    Limited {
        reason: "the shared store cannot be reached to count this".into(),
    }
}

/// Why an account must be suspended, with the numbers that show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub reason: &'static str,
    pub evidence: String,
}

/// A limit reached: refuse with `451 4.7.1` for now.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub reason: String,
}

/// What an open transaction holds against its account's limits: the message it counts
/// for and the recipients it added to the day's. Counted when reserved, so sessions in
/// parallel cannot all pass a check that each alone would pass; given back with
/// [`Detector::release`] if no message comes of it.
#[derive(Debug, Default)]
pub struct Reservation {
    account: String,
    /// The envelope sender's domain, and when the message was counted for it.
    domain: Option<(String, i64)>,
    /// When the message was counted for the account.
    at: i64,
    /// Recipients this transaction added to the day's distinct recipients.
    rcpts: Vec<String>,
    /// When [`Detector::admit`] counted the message's new recipients, and how many.
    new_at: Option<(i64, usize)>,
    /// The message was accepted: nothing goes back.
    committed: bool,
}

/// What a failed AUTH led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailure {
    /// The IP or network blocked by this failure, if it crossed a threshold.
    pub blocked: Option<IpAddr>,
}

/// An account's usual hourly volume: the average over its active hours, updated as hours end.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Baseline {
    hour: i64,
    in_hour: u64,
    active_hours: u64,
    average: f64,
}

impl Baseline {
    fn roll(&mut self, now: i64) {
        let hour = now / HOUR;
        if hour != self.hour {
            if self.in_hour > 0 {
                self.active_hours += 1;
                // A moving average that settles after about a day of activity.
                let w = (1.0 / self.active_hours as f64).max(1.0 / 24.0);
                self.average += w * (self.in_hour as f64 - self.average);
            }
            self.hour = hour;
            self.in_hour = 0;
        }
    }
}

/// Watches submissions and logins; decides limits and triggers. Time comes from the clock it
/// is given, so tests can replay a week in a moment.
pub struct Detector {
    cfg: Cfg,
    /// `auth.failure_delay` and `auth.max_failure_delay`, in milliseconds.
    auth_delay_ms: (i64, i64),
    /// When each IP, network and account may next have a password checked: failures push
    /// it on, for every connection alike.
    auth_turns: Mutex<HashMap<Key, i64>>,
    counters: Counters,
    /// Makes "check the limit, then count" one step for concurrent transactions.
    reserving: Mutex<()>,
    blocks: Blocks,
    known: Known,
    baselines: Mutex<HashMap<String, Baseline>>,
    /// Where baselines are kept ([`Detector::with_store`]).
    store: Option<Store>,
    shared: Option<Arc<Shared>>,
}

impl Detector {
    pub fn new(cfg: &Cfg, auth: &crate::config::Auth, clock: Arc<dyn Clock>) -> Detector {
        Detector {
            cfg: cfg.clone(),
            auth_delay_ms: (
                auth.failure_delay.get().as_millis() as i64,
                auth.max_failure_delay.get().as_millis() as i64,
            ),
            auth_turns: Mutex::new(HashMap::new()),
            counters: Counters::new(clock.clone(), DAY).with_caps(
                largest_limit(cfg) + 1,
                &[
                    (
                        Metric::Connections,
                        cfg.max_connections_per_minute_per_ip + 1,
                    ),
                    (
                        Metric::AuthFailures,
                        cfg.auth_failures_per_ip.max(cfg.auth_failures_per_network) + 1,
                    ),
                    (Metric::AbandonedRecords, ABANDONED_RECORDS_PER_HOUR + 1),
                ],
            ),
            reserving: Mutex::new(()),
            blocks: Blocks::new(clock),
            known: Known::default(),
            baselines: Mutex::new(HashMap::new()),
            store: None,
            shared: None,
        }
    }

    /// Keep baselines in `store`; on a shared store, every count, block and correspondent
    /// too.
    pub fn with_store(mut self, store: Store) -> Detector {
        if store.is_shared() {
            let s = Arc::new(Shared::new(store.clone()));
            self.counters = self.counters.shared(s.clone());
            self.blocks = self.blocks.shared(s.clone());
            self.known = Known::shared(s.clone());
            self.shared = Some(s);
        }
        self.store = Some(store);
        self
    }

    /// Check-then-count, one at a time: in this process, and across the cluster. `None` when
    /// the cluster lock cannot be had (the shared store is away): a reservation is refused
    /// for now then, never made without it.
    fn exclusive(&self) -> Option<(std::sync::MutexGuard<'_, ()>, Option<ClusterLock>)> {
        let local = self.reserving.lock().unwrap_or_else(|e| e.into_inner());
        match &self.shared {
            None => Some((local, None)),
            Some(s) => s.lock().map(|l| (local, Some(l))),
        }
    }

    /// [`Detector::exclusive`] for steps that go on without the cluster lock when it cannot be
    /// had (the end of DATA: the message cannot be accepted without the store anyway).
    fn exclusive_or_local(&self) -> (std::sync::MutexGuard<'_, ()>, Option<ClusterLock>) {
        match self.exclusive() {
            Some(both) => both,
            None => (
                self.reserving.lock().unwrap_or_else(|e| e.into_inner()),
                None,
            ),
        }
    }

    fn load_baseline(&self, account: &str) -> Baseline {
        let stored = || {
            let Some(store) = &self.store else {
                return Baseline::default();
            };
            store
                .read(|c| {
                    c.query_row(
                        "SELECT hour, in_hour, active_hours, average FROM baselines \
                         WHERE account = ?1",
                        [account],
                        |r| {
                            Ok(Baseline {
                                hour: r.get(0)?,
                                in_hour: r.get(1)?,
                                active_hours: r.get(2)?,
                                average: r.get(3)?,
                            })
                        },
                    )
                })
                .unwrap_or_default()
        };
        if self.shared.is_some() {
            return stored();
        }
        let mut b = self.baselines.lock().unwrap_or_else(|e| e.into_inner());
        *b.entry(account.to_string()).or_insert_with(stored)
    }

    fn save_baseline(&self, account: &str, b: Baseline) {
        if self.shared.is_none() {
            self.baselines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(account.to_string(), b);
        }
        let Some(store) = &self.store else {
            return;
        };
        let account = account.to_string();
        let write = move |c: &crate::store::Conn<'_>| {
            c.execute(
                "INSERT INTO baselines(account, hour, in_hour, active_hours, average) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(account) DO UPDATE SET \
                 hour = excluded.hour, in_hour = excluded.in_hour, \
                 active_hours = excluded.active_hours, average = excluded.average",
                crate::params![account, b.hour, b.in_hour, b.active_hours, b.average],
            )?;
            Ok(())
        };
        if let Some(Err(e)) = store.write_now(write.clone()) {
            tracing::warn!(event = "store_write_failed", what = "baseline", error = %e);
        } else if !store.is_shared() {
            store.write_detached("baseline", write);
        }
    }

    /// The limits that apply to `account`: its first matching override, else the defaults.
    fn limits(&self, account: &str) -> (usize, usize, usize) {
        let domain = account.rsplit_once('@').map(|(_, d)| format!("@{d}"));
        let o = self.cfg.overrides.iter().find(|o| {
            o.accounts.iter().any(|a| {
                a.eq_ignore_ascii_case(account)
                    || domain.as_deref().is_some_and(|d| a.eq_ignore_ascii_case(d))
            })
        });
        let c = &self.cfg;
        (
            o.and_then(|o| o.max_messages_per_hour)
                .unwrap_or(c.max_messages_per_hour),
            o.and_then(|o| o.max_recipients_per_day)
                .unwrap_or(c.max_recipients_per_day),
            o.and_then(|o| o.burst_per_minute)
                .unwrap_or(c.burst_per_minute),
        )
    }

    /// The account's usual hourly volume and how many active hours it rests on.
    fn baseline(&self, account: &str) -> (f64, u64) {
        let now = self.counters.now_ms();
        let mut b = self.load_baseline(account);
        let before = b;
        b.roll(now);
        if b != before {
            self.save_baseline(account, b);
        }
        (b.average, b.active_hours)
    }

    /// A new message from `account` (at MAIL FROM), with the envelope sender's `domain`:
    /// within the hourly limits, it is counted at once and the reservation returned.
    pub fn reserve_message(
        &self,
        account: &str,
        domain: Option<&str>,
    ) -> Result<Reservation, Limited> {
        let _one_at_a_time = self.exclusive().ok_or_else(unavailable)?;
        let key = Key::Account(account.to_string());
        let (per_hour, _, _) = self.limits(account);
        let sent = self.counters.count(&key, Metric::Messages, HOUR);
        if sent >= per_hour {
            return Err(Limited {
                reason: format!(
                    "{account} sent {sent} messages in the last hour (limit {per_hour})"
                ),
            });
        }
        let domain = match domain.map(str::to_ascii_lowercase) {
            None => None,
            Some(d) => {
                let max = self.cfg.max_messages_per_hour_per_domain;
                let n = self
                    .counters
                    .count(&Key::SenderDomain(d.clone()), Metric::Messages, HOUR);
                if n >= max {
                    return Err(Limited {
                        reason: format!("{n} messages from {d} in the last hour (limit {max})"),
                    });
                }
                // Its own time: the clock may tick before the account's event below, and
                // `release` must remove exactly the events added here.
                let at = self
                    .counters
                    .add(Key::SenderDomain(d.clone()), Metric::Messages, 1);
                Some((d, at))
            }
        };
        let at = self.counters.add(key, Metric::Messages, 1);
        Ok(Reservation {
            account: account.to_string(),
            domain,
            at,
            rcpts: Vec::new(),
            new_at: None,
            committed: false,
        })
    }

    /// A recipient for the reserved message (at RCPT TO): within the day's distinct
    /// recipients, it is counted at once. A recipient already written to today is free.
    pub fn reserve_rcpt(&self, r: &mut Reservation, rcpt: &str) -> Result<(), Limited> {
        let _one_at_a_time = self.exclusive().ok_or_else(unavailable)?;
        let key = Key::Account(r.account.clone());
        let rcpt = rcpt.to_ascii_lowercase();
        if self.counters.seen(&key, Metric::Recipients, &rcpt, DAY) {
            return Ok(());
        }
        let (_, per_day, _) = self.limits(&r.account);
        let n = self.counters.distinct(&key, Metric::Recipients, DAY);
        if n >= per_day {
            return Err(Limited {
                reason: format!(
                    "{} wrote to {n} recipients in the last day (limit {per_day})",
                    r.account
                ),
            });
        }
        self.counters
            .add_distinct(key, Metric::Recipients, &rcpt, DAY);
        r.rcpts.push(rcpt);
        Ok(())
    }

    /// Give back what a transaction that ended without a message reserved.
    pub fn release(&self, r: Reservation) {
        if r.committed {
            return;
        }
        let key = Key::Account(r.account.clone());
        self.counters.remove(&key, Metric::Messages, r.at);
        if let Some((d, at)) = r.domain {
            self.counters
                .remove(&Key::SenderDomain(d), Metric::Messages, at);
        }
        for rcpt in &r.rcpts {
            self.counters
                .remove_distinct(&key, Metric::Recipients, rcpt);
        }
        if let Some((at, n)) = r.new_at {
            for _ in 0..n {
                self.counters.remove(&key, Metric::NewRecipients, at);
            }
        }
    }

    /// A message from `account` scored as spam and was held. One may be a false positive; a
    /// few in an hour are a spammer.
    pub fn outbound_spam(&self, account: &str, score: f64) -> Option<Trigger> {
        let key = Key::Account(account.to_string());
        self.counters.add(key.clone(), Metric::SpamMessages, 1);
        let n = self.counters.count(&key, Metric::SpamMessages, HOUR);
        (n >= self.cfg.spam_messages_per_hour).then(|| Trigger {
            reason: "outbound mail scores as spam",
            evidence: format!(
                "{n} messages held as spam in the last hour, the last scoring {score} (limit {})",
                self.cfg.spam_messages_per_hour
            ),
        })
    }

    /// A new connection from `ip` (any listener): within the per-minute rate?
    pub fn connection(&self, ip: IpAddr) -> Result<(), Limited> {
        let max = self.cfg.max_connections_per_minute_per_ip;
        if max == 0 {
            return Ok(());
        }
        let key = Key::Ip(ip);
        self.counters.add(key.clone(), Metric::Connections, 1);
        let n = self.counters.count(&key, Metric::Connections, MINUTE);
        if n > max {
            return Err(Limited {
                reason: format!("{n} connections from {ip} in the last minute (limit {max})"),
            });
        }
        Ok(())
    }

    /// May the reserved message, for `rcpts`, be accepted? Asked at the end of DATA: the
    /// message that would complete a blast is refused, not accepted and then held. Under the
    /// same lock as the reservations, and counting what it admits (messages were counted at
    /// MAIL, new recipients are counted here), so sessions ending in parallel cannot all
    /// pass together.
    pub fn admit(&self, r: &mut Reservation, rcpts: &[String]) -> Result<(), Trigger> {
        let _one_at_a_time = self.exclusive_or_local();
        let account = r.account.clone();
        let key = Key::Account(account.clone());
        let (usual, known_hours) = self.baseline(&account);
        let f = self.cfg.burst_factor;
        let per_minute = self.counters.count(&key, Metric::Messages, MINUTE);
        let (_, _, burst) = self.limits(&account);
        let minute_limit = (burst as f64).max(f * usual / 60.0);
        if per_minute as f64 > minute_limit {
            return Err(Trigger {
                reason: "message burst",
                evidence: format!(
                    "{per_minute} messages in the last minute; limit {minute_limit:.0} (usual {usual:.0} per hour)"
                ),
            });
        }
        let per_hour = self.counters.count(&key, Metric::Messages, HOUR);
        let hour_limit = (self.cfg.burst_per_hour_floor as f64).max(f * usual);
        // Without a few active hours there is no usual volume to be far above.
        if known_hours >= MIN_BASELINE_HOURS && per_hour as f64 > hour_limit {
            return Err(Trigger {
                reason: "hourly volume far above the usual",
                evidence: format!(
                    "{per_hour} messages in the last hour; limit {hour_limit:.0} (usual {usual:.0} per hour)"
                ),
            });
        }
        let new = self.known.count_new(&account, rcpts);
        let n = self.counters.count(&key, Metric::NewRecipients, HOUR) + new;
        if n > self.cfg.new_recipients_per_hour {
            return Err(Trigger {
                reason: "many new recipients",
                evidence: format!(
                    "{n} recipients never written to before, in the last hour (limit {})",
                    self.cfg.new_recipients_per_hour
                ),
            });
        }
        if new > 0 {
            r.new_at = Some((self.counters.add(key, Metric::NewRecipients, new), new));
        }
        Ok(())
    }

    /// The admitted message was accepted, for `rcpts`: it is the account's for good, and its
    /// recipients are its correspondents now.
    pub fn accepted(&self, r: &mut Reservation, rcpts: &[String]) {
        r.committed = true;
        let account = r.account.as_str();
        let now = self.counters.now_ms();
        {
            let _one_at_a_time = self.exclusive_or_local();
            let mut b = self.load_baseline(account);
            // Into the current hour, once a finished one has gone into the average.
            b.roll(now);
            b.in_hour += 1;
            self.save_baseline(account, b);
        }
        self.known.learn(account, rcpts, now);
    }

    /// A RCPT from `account` to a local address that does not exist.
    pub fn unknown_recipient(&self, account: &str) -> Option<Trigger> {
        let key = Key::Account(account.to_string());
        self.counters.add(key.clone(), Metric::UnknownRecipients, 1);
        let n = self
            .counters
            .count(&key, Metric::UnknownRecipients, 10 * MINUTE);
        (n > self.cfg.unknown_recipients).then(|| Trigger {
            reason: "recipients that do not exist",
            evidence: format!(
                "{n} RCPTs to unknown local addresses in ten minutes (limit {})",
                self.cfg.unknown_recipients
            ),
        })
    }

    /// A successful login.
    pub fn login(&self, account: &str, ip: IpAddr) -> Option<Trigger> {
        let net = network(ip).to_string();
        let n = self.counters.add_distinct(
            Key::Account(account.to_string()),
            Metric::Logins,
            &net,
            HOUR,
        );
        (n >= self.cfg.login_networks_per_hour).then(|| Trigger {
            reason: "logins from many networks",
            evidence: format!(
                "logins from {n} networks in the last hour (limit {})",
                self.cfg.login_networks_per_hour
            ),
        })
    }

    /// May this IP try AUTH now? A blocked IP or network may not.
    pub fn auth_allowed(&self, ip: IpAddr) -> bool {
        !self.blocks.is_blocked(ip) && !self.blocks.is_blocked(network(ip))
    }

    /// How long an AUTH attempt from `ip` naming `account` (canonical) waits before its
    /// password is checked: the turn of the IP, its network and the account, which failures
    /// from every connection push on (see [`Detector::auth_failed`]). `None` when the IP's
    /// or network's turn is further off than twice `auth.max_failure_delay`: answer
    /// `454 4.7.0` at once. The account's turn never refuses (that would lock its owner
    /// out); an attempt waits for it at most the max delay.
    pub fn auth_turn(&self, ip: IpAddr, account: &str) -> Option<std::time::Duration> {
        let now = self.counters.now_ms();
        let turns = self.auth_turns.lock().unwrap_or_else(|e| e.into_inner());
        let at = |k: &Key| turns.get(k).map_or(0, |t| t - now);
        let line = at(&Key::Ip(ip)).max(at(&Key::Net(network(ip))));
        let max = self.auth_delay_ms.1;
        if line > 2 * max {
            return None;
        }
        let wait = line.max(at(&Key::Account(account.to_string())).min(max));
        Some(std::time::Duration::from_millis(wait.max(0) as u64))
    }

    /// A failed AUTH from `ip` that named `account` (canonical). Blocks the IP, or its whole
    /// network, past the thresholds, and pushes the turns of both and of the account on by
    /// `auth.failure_delay`, doubled for each failure of that key in the last ten minutes.
    /// The account is never locked: that would hand attackers a way to shut its owner out.
    pub fn auth_failed(&self, ip: IpAddr, account: &str) -> AuthFailure {
        let block_ms = self.cfg.auth_block_time.get().as_millis() as i64;
        let net = network(ip);
        let keys = [
            Key::Ip(ip),
            Key::Net(net),
            Key::Account(account.to_string()),
        ];
        for k in &keys {
            self.counters.add(k.clone(), Metric::AuthFailures, 1);
        }
        let counts = keys
            .clone()
            .map(|k| self.counters.count(&k, Metric::AuthFailures, 10 * MINUTE));
        {
            let now = self.counters.now_ms();
            let (base, max) = self.auth_delay_ms;
            let mut turns = self.auth_turns.lock().unwrap_or_else(|e| e.into_inner());
            if turns.len() > MAX_AUTH_TURNS {
                turns.retain(|_, t| *t > now);
            }
            for (k, n) in keys.into_iter().zip(counts) {
                let delay = base
                    .saturating_mul(1 << n.saturating_sub(1).min(16))
                    .min(max);
                let t = turns.entry(k).or_insert(now);
                *t = (*t).max(now) + delay;
            }
        }
        let [by_ip, by_net, _] = counts;
        let blocked = if by_net >= self.cfg.auth_failures_per_network {
            self.blocks.block(net, block_ms);
            Some(net)
        } else if by_ip >= self.cfg.auth_failures_per_ip {
            self.blocks.block(ip, block_ms);
            Some(ip)
        } else {
            None
        };
        AuthFailure { blocked }
    }

    /// A transaction from `ip` ended without a message or a refusal: keep its decision
    /// record? At most `ABANDONED_RECORDS_PER_HOUR` per client address, so a client looping
    /// MAIL/RSET cannot fill the store with records.
    pub fn keep_abandoned_record(&self, ip: IpAddr) -> bool {
        let key = Key::Ip(ip);
        self.counters.add(key.clone(), Metric::AbandonedRecords, 1);
        self.counters.count(&key, Metric::AbandonedRecords, HOUR) <= ABANDONED_RECORDS_PER_HOUR
    }

    /// A remote server refused, with a 5xx, a recipient of mail `account` submitted: many
    /// in a short time is a spammer's list of guessed or dead addresses (Exim's
    /// BlockCracking).
    pub fn remote_rejected(&self, account: &str) -> Option<Trigger> {
        let key = Key::Account(account.to_string());
        self.counters.add(key.clone(), Metric::RemoteRejections, 1);
        let n = self.counters.count(&key, Metric::RemoteRejections, HOUR);
        (n > self.cfg.remote_rejections_per_hour).then(|| Trigger {
            reason: "remote servers refuse its mail",
            evidence: format!(
                "{n} recipients refused with 5xx by remote servers in the last hour (limit {})",
                self.cfg.remote_rejections_per_hour
            ),
        })
    }

    /// Start an account afresh (after a resume).
    pub fn forget(&self, account: &str) {
        self.counters.clear(&Key::Account(account.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Auth;
    use crate::limits::ManualClock;

    fn detector() -> (ManualClock, Detector) {
        let clock = ManualClock::at(1_700_000_000_000);
        let d = Detector::new(&Cfg::default(), &Auth::default(), Arc::new(clock.clone()));
        (clock, d)
    }

    /// One message from `account` to `rcpts` as a session sends it: reserved, then accepted
    /// unless it completes a blast (then the trigger, and the message is not accepted).
    fn send(d: &Detector, account: &str, rcpts: &[String]) -> Result<Option<Trigger>, Limited> {
        let domain = account.rsplit_once('@').map(|(_, d)| d);
        let mut r = d.reserve_message(account, domain)?;
        for to in rcpts {
            if let Err(l) = d.reserve_rcpt(&mut r, to) {
                d.release(r);
                return Err(l);
            }
        }
        if let Err(t) = d.admit(&mut r, rcpts) {
            d.release(r);
            return Ok(Some(t));
        }
        d.accepted(&mut r, rcpts);
        Ok(None)
    }

    fn one(to: &str) -> Vec<String> {
        vec![to.to_string()]
    }

    #[test]
    fn a_blast_is_stopped_within_twenty_messages() {
        let (clock, d) = detector();
        let mut accepted = 0;
        for i in 0..10_000 {
            let Ok(t) = send(&d, "victim@x.test", &one(&format!("r{i}@random{i}.test"))) else {
                break;
            };
            if let Some(t) = t {
                assert_eq!(t.reason, "message burst");
                break;
            }
            accepted += 1;
            clock.advance(50);
        }
        assert!(accepted <= 15, "{accepted} accepted before the trigger");
        assert!(accepted > 10, "not before the configured burst: {accepted}");
    }

    #[test]
    fn two_nodes_on_a_shared_store_stop_a_blast_as_one_would() {
        let Some(url) = crate::store::test_postgres() else {
            return;
        };
        let store = Store::open_postgres(&url).unwrap();
        let clock = ManualClock::at(1_700_000_000_000);
        let node = || {
            Detector::new(&Cfg::default(), &Auth::default(), Arc::new(clock.clone()))
                .with_store(store.clone())
        };
        let nodes = [node(), node()];
        // Both nodes at once, each on its own thread: only the cluster lock keeps their
        // check-then-count steps apart.
        let accepted: usize = std::thread::scope(|s| {
            let blast = |n: usize| {
                let (d, clock) = (&nodes[n], clock.clone());
                s.spawn(move || {
                    let mut accepted = 0;
                    for i in 0..10_000 {
                        let to = one(&format!("r{n}-{i}@random{i}.test"));
                        let Ok(t) = send(d, "victim@x.test", &to) else {
                            break;
                        };
                        if let Some(t) = t {
                            assert_eq!(t.reason, "message burst");
                            break;
                        }
                        accepted += 1;
                        clock.advance(25);
                    }
                    accepted
                })
            };
            let (a, b) = (blast(0), blast(1));
            a.join().unwrap() + b.join().unwrap()
        });
        assert!(
            accepted <= 15,
            "{accepted} accepted before the trigger, both nodes together"
        );
        assert!(accepted > 10, "not before the configured burst: {accepted}");
        // Blocks and correspondents are the cluster's too.
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..Cfg::default().auth_failures_per_ip {
            nodes[0].auth_failed(ip, "x@x.test");
        }
        assert!(
            !nodes[1].auth_allowed(ip),
            "blocked on one node, blocked on all"
        );
        assert_eq!(
            nodes[1]
                .known
                .count_new("victim@x.test", &one("r0-0@random0.test")),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_keeps_the_usual_volume() {
        let dir = tempfile::tempdir().unwrap();
        for store in crate::store::test_stores(dir.path()) {
            let clock = ManualClock::at(1_700_000_000_000);
            let node = || {
                Detector::new(&Cfg::default(), &Auth::default(), Arc::new(clock.clone()))
                    .with_store(store.clone())
            };
            let d = node();
            for h in 0..5 {
                for i in 0..10 {
                    send(&d, "steady@x.test", &one(&format!("r{h}-{i}@x.test"))).unwrap();
                    clock.advance(60_000);
                }
                clock.advance(HOUR - 10 * 60_000);
            }
            let before = d.baseline("steady@x.test");
            assert!(before.1 >= 4 && before.0 > 5.0, "{before:?}");
            drop(d);
            // Detached writes land with the next commit.
            store.write(|_| Ok(())).await.unwrap();
            let again = node();
            assert_eq!(again.baseline("steady@x.test"), before, "{store:?}");
        }
    }

    #[test]
    fn a_heavy_but_steady_sender_is_never_stopped_in_a_simulated_week() {
        let (clock, d) = detector();
        let colleagues: Vec<String> = (0..40).map(|i| format!("colleague{i}@uni.test")).collect();
        let mut n = 0u64;
        // 150 messages an hour, around the clock, to a pool of 200 correspondents; once a
        // day one message to 40 colleagues.
        for hour in 0..(7 * 24) {
            for m in 0..150 {
                let to = format!("person{}@elsewhere.test", (n * 7919) % 200);
                n += 1;
                assert_eq!(
                    send(&d, "heavy@uni.test", &[to]),
                    Ok(None),
                    "hour {hour}, message {m}"
                );
                clock.advance(HOUR / 150);
            }
            if hour % 24 == 9 {
                assert_eq!(
                    send(&d, "heavy@uni.test", &colleagues),
                    Ok(None),
                    "daily message, hour {hour}"
                );
            }
        }
        assert!(d.baseline("heavy@uni.test").0 > 140.0);
    }

    #[test]
    fn the_hourly_limit_throttles_and_lifts() {
        let (clock, d) = detector();
        for i in 0..200 {
            assert!(
                send(&d, "a@x.test", &one("b@y.test")).is_ok(),
                "message {i}"
            );
            clock.advance(10_000);
        }
        let e = send(&d, "a@x.test", &one("b@y.test")).unwrap_err();
        assert!(e.reason.contains("200 messages"), "{}", e.reason);
        clock.advance(HOUR);
        assert!(send(&d, "a@x.test", &one("b@y.test")).is_ok());
    }

    #[test]
    fn an_hourly_surge_far_above_the_usual_triggers() {
        let mut cfg = Cfg::default();
        cfg.max_messages_per_hour = 100_000;
        let clock = ManualClock::at(1_700_000_000_000);
        let d = Detector::new(&cfg, &Auth::default(), Arc::new(clock.clone()));
        // A day at 100 an hour sets the usual volume...
        for _ in 0..24 * 100 {
            assert_eq!(send(&d, "a@x.test", &one("b@y.test")), Ok(None));
            clock.advance(HOUR / 100);
        }
        // ...then 12 a minute, under the minute trigger, adds up to more than 4x in the hour.
        let mut t = None;
        for _ in 0..60 * 12 {
            t = t.or(send(&d, "a@x.test", &one("b@y.test")).unwrap());
            clock.advance(MINUTE / 12);
        }
        let t = t.expect("triggered");
        assert_eq!(t.reason, "hourly volume far above the usual");
        assert!(
            t.evidence.contains("messages in the last hour"),
            "{}",
            t.evidence
        );
    }

    #[test]
    fn many_new_recipients_trigger() {
        let (clock, d) = detector();
        let mut t = None;
        // Ten new addresses a message, three messages a minute: no burst, but 300+ strangers.
        for i in 0..40 {
            let rcpts: Vec<String> = (0..10).map(|j| format!("s{i}-{j}@far.test")).collect();
            t = t.or(send(&d, "a@x.test", &rcpts).unwrap());
            clock.advance(20_000);
        }
        assert_eq!(t.expect("triggered").reason, "many new recipients");
    }

    #[test]
    fn overrides_apply_to_accounts_and_domains() {
        let cfg: Cfg = toml::from_str(
            "[[overrides]]\naccounts = [\"list@x.test\"]\nmax_messages_per_hour = 1000\n\
             burst_per_minute = 100\n\
             [[overrides]]\naccounts = [\"@staff.test\"]\nmax_messages_per_hour = 5\n",
        )
        .unwrap();
        let clock = ManualClock::at(1_700_000_000_000);
        let d = Detector::new(&cfg, &Auth::default(), Arc::new(clock.clone()));
        for i in 0..500 {
            assert_eq!(
                send(&d, "list@x.test", &one("m@y.test")),
                Ok(None),
                "message {i}"
            );
            clock.advance(1_000);
        }
        for _ in 0..5 {
            assert!(send(&d, "bob@staff.test", &one("m@y.test")).is_ok());
        }
        assert!(send(&d, "bob@staff.test", &one("m@y.test")).is_err());
        assert_eq!(d.limits("other@x.test").0, 200, "the defaults elsewhere");
    }

    #[test]
    fn recipients_are_reserved_at_rcpt_so_parallel_sessions_cannot_outrun_the_day() {
        let (_clock, d) = detector();
        let d = Arc::new(d);
        let per_day = Cfg::default().max_recipients_per_day;
        let mut first = d.reserve_message("victim@x.test", None).unwrap();
        d.reserve_rcpt(&mut first, "first@far.test").unwrap();
        first.committed = true;
        // 50 sessions of one stolen account, 100 RCPTs each, all at once.
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..50)
                .map(|t| {
                    let d = d.clone();
                    s.spawn(move || {
                        let Ok(mut r) = d.reserve_message("victim@x.test", Some("x.test")) else {
                            return 0;
                        };
                        let ok = (0..100)
                            .filter(|i| {
                                d.reserve_rcpt(&mut r, &format!("r{t}-{i}@far.test"))
                                    .is_ok()
                            })
                            .count();
                        r.committed = true;
                        ok
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(accepted + 1, per_day);
        // One already written to today stays free; a new one does not.
        let mut r = d.reserve_message("victim@x.test", None).unwrap();
        assert!(d.reserve_rcpt(&mut r, "FIRST@far.test").is_ok());
        assert!(d.reserve_rcpt(&mut r, "new@far.test").is_err());
    }

    #[test]
    fn a_transaction_without_a_message_gives_its_reservation_back() {
        let mut cfg = Cfg::default();
        cfg.max_messages_per_hour = 1;
        cfg.max_recipients_per_day = 2;
        let d = Detector::new(
            &cfg,
            &Auth::default(),
            Arc::new(ManualClock::at(1_700_000_000_000)),
        );
        let mut r = d.reserve_message("a@x.test", Some("x.test")).unwrap();
        d.reserve_rcpt(&mut r, "b@y.test").unwrap();
        d.reserve_rcpt(&mut r, "c@y.test").unwrap();
        assert!(
            d.reserve_message("a@x.test", None).is_err(),
            "the hour is full"
        );
        d.release(r);
        let mut r = d.reserve_message("a@x.test", None).unwrap();
        d.reserve_rcpt(&mut r, "d@y.test").unwrap();
        d.reserve_rcpt(&mut r, "e@y.test").unwrap();
        assert_eq!(d.admit(&mut r, &[]), Ok(()));
        d.accepted(&mut r, &[]);
        d.release(r);
        assert!(
            d.reserve_message("a@x.test", None).is_err(),
            "a sent message stays"
        );
    }

    #[test]
    fn unknown_recipients_and_login_spread_trigger() {
        let (_clock, d) = detector();
        let mut t = None;
        for _ in 0..21 {
            t = d.unknown_recipient("a@x.test");
        }
        assert_eq!(t.unwrap().reason, "recipients that do not exist");
        let mut t = None;
        for i in 0..10u8 {
            t = d.login("b@x.test", IpAddr::from([10, i, 0, 1]));
        }
        assert_eq!(t.unwrap().reason, "logins from many networks");
        // Many logins from one network are one network.
        for i in 0..50u8 {
            assert!(d.login("c@x.test", IpAddr::from([10, 0, 0, i])).is_none());
        }
    }

    #[test]
    fn guessing_blocks_the_network_but_not_the_owner() {
        let (clock, d) = detector();
        let mut blocked = None;
        for i in 1..=50u8 {
            let ip = IpAddr::from([127, 0, 5, i]);
            assert!(d.auth_allowed(ip) || blocked.is_some());
            if let Some(b) = d.auth_failed(ip, "owner@x.test").blocked {
                blocked = Some(b);
            }
            // Each guess waits its turn in the network's line.
            clock.advance(9_000);
        }
        assert_eq!(blocked, Some(IpAddr::from([127, 0, 5, 0])));
        assert!(!d.auth_allowed(IpAddr::from([127, 0, 5, 200])));
        assert!(
            d.auth_allowed(IpAddr::from([127, 0, 9, 1])),
            "the owner elsewhere"
        );
        clock.advance(16 * MINUTE);
        assert!(d.auth_allowed(IpAddr::from([127, 0, 5, 200])));
    }

    fn wait_ms(d: &Detector, ip: IpAddr, account: &str) -> Option<u128> {
        d.auth_turn(ip, account).map(|w| w.as_millis())
    }

    #[test]
    fn auth_failures_push_turns_shared_by_every_connection() {
        let (clock, d) = detector();
        let (base, max) = (1000, 8000);
        let ip = IpAddr::from([127, 0, 6, 1]);
        assert_eq!(wait_ms(&d, ip, "a@x.test"), Some(0));
        // One failure: the next attempt from that IP (any connection) waits the base delay;
        // the second doubles it on top of the first.
        d.auth_failed(ip, "a@x.test");
        assert_eq!(wait_ms(&d, ip, "a@x.test"), Some(base));
        d.auth_failed(ip, "a@x.test");
        assert_eq!(wait_ms(&d, ip, "a@x.test"), Some(3 * base));
        // Another address of the same network waits too; the account waits wherever.
        let neighbour = IpAddr::from([127, 0, 6, 2]);
        assert_eq!(wait_ms(&d, neighbour, "b@x.test"), Some(3 * base));
        let far = IpAddr::from([127, 0, 9, 9]);
        assert_eq!(wait_ms(&d, far, "a@x.test"), Some(3 * base));
        assert_eq!(wait_ms(&d, far, "b@x.test"), Some(0));
        // Hammering on only pushes the turn further, until attempts are turned away.
        for _ in 0..3 {
            d.auth_failed(ip, "a@x.test");
        }
        assert_eq!(wait_ms(&d, ip, "a@x.test"), None);
        // The account's turn is never refused, only waited for (at most the max delay).
        assert_eq!(wait_ms(&d, far, "a@x.test"), Some(max));
        clock.advance(60_000);
        assert_eq!(wait_ms(&d, ip, "a@x.test"), Some(0));
    }

    #[test]
    fn a_client_abandoning_transactions_leaves_a_bounded_number_of_records() {
        let (clock, d) = detector();
        let ip = IpAddr::from([192, 0, 2, 33]);
        let kept = (0..1000).filter(|_| d.keep_abandoned_record(ip)).count();
        assert_eq!(kept, ABANDONED_RECORDS_PER_HOUR);
        assert!(d.keep_abandoned_record(IpAddr::from([192, 0, 2, 34])));
        clock.advance(HOUR + 1);
        assert!(d.keep_abandoned_record(ip));
    }

    #[test]
    fn remote_rejections_trigger() {
        let (_clock, d) = detector();
        let n = Cfg::default().remote_rejections_per_hour;
        for _ in 0..n {
            assert_eq!(d.remote_rejected("a@x.test"), None);
        }
        let t = d.remote_rejected("a@x.test").expect("triggered");
        assert_eq!(t.reason, "remote servers refuse its mail");
        assert_eq!(d.remote_rejected("b@x.test"), None);
    }

    #[test]
    fn connection_rate_and_sender_domain_limits() {
        let mut cfg = Cfg::default();
        cfg.max_connections_per_minute_per_ip = 3;
        cfg.max_messages_per_hour_per_domain = 2;
        let clock = ManualClock::at(1_700_000_000_000);
        let d = Detector::new(&cfg, &Auth::default(), Arc::new(clock.clone()));
        let ip = IpAddr::from([127, 0, 0, 9]);
        for _ in 0..3 {
            assert!(d.connection(ip).is_ok());
        }
        let e = d.connection(ip).unwrap_err();
        assert!(e.reason.contains("4 connections"), "{}", e.reason);
        assert!(d.connection(IpAddr::from([127, 0, 0, 10])).is_ok());
        clock.advance(MINUTE + 1);
        assert!(d.connection(ip).is_ok());

        for i in 0..2 {
            let r = d.reserve_message(&format!("u{i}@uni.test"), Some("Uni.test"));
            d.accepted(&mut r.unwrap(), &[]);
        }
        let e = d
            .reserve_message("u9@uni.test", Some("uni.test"))
            .unwrap_err();
        assert!(
            e.reason.contains("2 messages from uni.test"),
            "{}",
            e.reason
        );
        assert!(
            d.reserve_message("u9@other.test", Some("other.test"))
                .is_ok()
        );
    }
}
