//! The [`Detector`]: watches what accounts do on the submission ports and decides limits
//! (`451 4.7.1`), suspension triggers and AUTH brute-force blocks, over sliding windows of
//! [`crate::limits::Counters`] with an injectable clock.

use crate::config::Containment as Cfg;
use crate::limits::{Blocks, Clock, Counters, Key, Known, Metric, network};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Active hours an account needs before its hourly volume counts as its usual one.
const MIN_BASELINE_HOURS: u64 = 3;

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

/// What a failed AUTH led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailure {
    /// The IP or network blocked by this failure, if it crossed a threshold.
    pub blocked: Option<IpAddr>,
    /// Failures in the last ten minutes from this IP or for this account, whichever is more;
    /// the delay before the answer grows with it.
    pub recent: usize,
}

/// An account's usual hourly volume: the average over its active hours, updated as hours end.
#[derive(Default, Clone, Copy)]
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
    counters: Counters,
    blocks: Blocks,
    known: Known,
    baselines: Mutex<HashMap<String, Baseline>>,
}

impl Detector {
    pub fn new(cfg: &Cfg, clock: Arc<dyn Clock>) -> Detector {
        Detector {
            cfg: cfg.clone(),
            counters: Counters::new(clock.clone(), DAY),
            blocks: Blocks::new(clock),
            known: Known::default(),
            baselines: Mutex::new(HashMap::new()),
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
        let mut b = self.baselines.lock().unwrap_or_else(|e| e.into_inner());
        let e = b.entry(account.to_string()).or_default();
        e.roll(now);
        (e.average, e.active_hours)
    }

    /// Before a new message (at MAIL FROM): is the account within its limits?
    pub fn check_limits(&self, account: &str) -> Result<(), Limited> {
        let key = Key::Account(account.to_string());
        let (per_hour, per_day, _) = self.limits(account);
        let sent = self.counters.count(&key, Metric::Messages, HOUR);
        if sent >= per_hour {
            return Err(Limited {
                reason: format!(
                    "{account} sent {sent} messages in the last hour (limit {per_hour})"
                ),
            });
        }
        let rcpts = self.counters.distinct(&key, Metric::Recipients, DAY);
        if rcpts >= per_day {
            return Err(Limited {
                reason: format!(
                    "{account} wrote to {rcpts} recipients in the last day (limit {per_day})"
                ),
            });
        }
        Ok(())
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

    /// Before a new message from the envelope sender `domain` (at MAIL FROM).
    pub fn check_domain(&self, domain: &str) -> Result<(), Limited> {
        let key = Key::SenderDomain(domain.to_ascii_lowercase());
        let max = self.cfg.max_messages_per_hour_per_domain;
        let n = self.counters.count(&key, Metric::Messages, HOUR);
        if n >= max {
            return Err(Limited {
                reason: format!("{n} messages from {domain} in the last hour (limit {max})"),
            });
        }
        Ok(())
    }

    /// A message accepted with the envelope sender `domain`.
    pub fn domain_message(&self, domain: &str) {
        self.counters.add(
            Key::SenderDomain(domain.to_ascii_lowercase()),
            Metric::Messages,
            1,
        );
    }

    /// A message accepted from `account` for `rcpts`. Returns a trigger if this is a blast.
    pub fn message(&self, account: &str, rcpts: &[String]) -> Option<Trigger> {
        let key = Key::Account(account.to_string());
        let (usual, known_hours) = self.baseline(account);
        {
            let mut b = self.baselines.lock().unwrap_or_else(|e| e.into_inner());
            b.entry(account.to_string()).or_default().in_hour += 1;
        }
        self.counters.add(key.clone(), Metric::Messages, 1);
        for r in rcpts {
            self.counters.add_distinct(
                key.clone(),
                Metric::Recipients,
                &r.to_ascii_lowercase(),
                DAY,
            );
        }
        let new = self.known.learn(account, rcpts);
        let f = self.cfg.burst_factor;
        let per_minute = self.counters.count(&key, Metric::Messages, MINUTE);
        let (_, _, burst) = self.limits(account);
        let minute_limit = (burst as f64).max(f * usual / 60.0);
        if per_minute as f64 > minute_limit {
            return Some(Trigger {
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
            return Some(Trigger {
                reason: "hourly volume far above the usual",
                evidence: format!(
                    "{per_hour} messages in the last hour; limit {hour_limit:.0} (usual {usual:.0} per hour)"
                ),
            });
        }
        self.new_recipients(account, new)
    }

    fn new_recipients(&self, account: &str, new: usize) -> Option<Trigger> {
        let key = Key::Account(account.to_string());
        self.counters.add(key.clone(), Metric::NewRecipients, new);
        let n = self.counters.count(&key, Metric::NewRecipients, HOUR);
        (n > self.cfg.new_recipients_per_hour).then(|| Trigger {
            reason: "many new recipients",
            evidence: format!(
                "{n} recipients never written to before, in the last hour (limit {})",
                self.cfg.new_recipients_per_hour
            ),
        })
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

    /// A failed AUTH from `ip` that named `account`. Blocks the IP, or its whole network,
    /// past the thresholds. The account is never locked: that would hand attackers a way to
    /// shut its owner out; its failures only lengthen the delay before each failure's answer,
    /// which a correct password never waits for.
    pub fn auth_failed(&self, ip: IpAddr, account: &str) -> AuthFailure {
        let block_ms = self.cfg.auth_block_time.get().as_millis() as i64;
        let net = network(ip);
        let keys = [
            Key::Ip(ip),
            Key::Net(net),
            Key::Account(account.to_ascii_lowercase()),
        ];
        for k in &keys {
            self.counters.add(k.clone(), Metric::AuthFailures, 1);
        }
        let [by_ip, by_net, by_account] =
            keys.map(|k| self.counters.count(&k, Metric::AuthFailures, 10 * MINUTE));
        let blocked = if by_net >= self.cfg.auth_failures_per_network {
            self.blocks.block(net, block_ms);
            Some(net)
        } else if by_ip >= self.cfg.auth_failures_per_ip {
            self.blocks.block(ip, block_ms);
            Some(ip)
        } else {
            None
        };
        AuthFailure {
            blocked,
            recent: by_ip.max(by_account),
        }
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
    use crate::limits::ManualClock;

    fn detector() -> (ManualClock, Detector) {
        let clock = ManualClock::at(1_700_000_000_000);
        let d = Detector::new(&Cfg::default(), Arc::new(clock.clone()));
        (clock, d)
    }

    #[test]
    fn a_blast_is_stopped_within_twenty_messages() {
        let (clock, d) = detector();
        let mut accepted = 0;
        for i in 0..10_000 {
            if d.check_limits("victim@x.test").is_err() {
                break;
            }
            accepted += 1;
            if let Some(t) = d.message("victim@x.test", &[format!("r{i}@random{i}.test")]) {
                assert_eq!(t.reason, "message burst");
                break;
            }
            clock.advance(50);
        }
        assert!(accepted <= 20, "{accepted} accepted before the trigger");
        assert!(accepted > 10, "not before the configured burst: {accepted}");
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
                assert!(
                    d.check_limits("heavy@uni.test").is_ok(),
                    "throttled in hour {hour}"
                );
                let to = format!("person{}@elsewhere.test", (n * 7919) % 200);
                n += 1;
                assert_eq!(
                    d.message("heavy@uni.test", &[to]),
                    None,
                    "hour {hour}, message {m}"
                );
                clock.advance(HOUR / 150);
            }
            if hour % 24 == 9 {
                assert!(d.check_limits("heavy@uni.test").is_ok());
                assert_eq!(
                    d.message("heavy@uni.test", &colleagues),
                    None,
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
            assert!(d.check_limits("a@x.test").is_ok(), "message {i}");
            d.message("a@x.test", &["b@y.test".to_string()]);
            clock.advance(10_000);
        }
        let e = d.check_limits("a@x.test").unwrap_err();
        assert!(e.reason.contains("200 messages"), "{}", e.reason);
        clock.advance(HOUR);
        assert!(d.check_limits("a@x.test").is_ok());
    }

    #[test]
    fn an_hourly_surge_far_above_the_usual_triggers() {
        let mut cfg = Cfg::default();
        cfg.max_messages_per_hour = 100_000;
        let clock = ManualClock::at(1_700_000_000_000);
        let d = Detector::new(&cfg, Arc::new(clock.clone()));
        // A day at 100 an hour sets the usual volume...
        for _ in 0..24 * 100 {
            assert_eq!(d.message("a@x.test", &["b@y.test".to_string()]), None);
            clock.advance(HOUR / 100);
        }
        // ...then 12 a minute, under the minute trigger, adds up to more than 4x in the hour.
        let mut t = None;
        for _ in 0..60 * 12 {
            t = t.or(d.message("a@x.test", &["b@y.test".to_string()]));
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
            t = t.or(d.message("a@x.test", &rcpts));
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
        let d = Detector::new(&cfg, Arc::new(clock.clone()));
        for i in 0..500 {
            assert!(d.check_limits("list@x.test").is_ok(), "message {i}");
            assert_eq!(d.message("list@x.test", &["m@y.test".to_string()]), None);
            clock.advance(1_000);
        }
        for _ in 0..5 {
            assert!(d.check_limits("bob@staff.test").is_ok());
            d.message("bob@staff.test", &["m@y.test".to_string()]);
        }
        assert!(d.check_limits("bob@staff.test").is_err());
        assert_eq!(d.limits("other@x.test").0, 200, "the defaults elsewhere");
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

    #[test]
    fn failures_lengthen_delays_per_ip_and_per_account() {
        let (_clock, d) = detector();
        let ip = IpAddr::from([127, 0, 6, 1]);
        let recent: Vec<usize> = (0..3)
            .map(|_| d.auth_failed(ip, "a@x.test").recent)
            .collect();
        assert_eq!(recent, [1, 2, 3]);
        // A new IP guessing the same account still meets the account's failures...
        assert_eq!(
            d.auth_failed(IpAddr::from([127, 0, 7, 1]), "A@x.test")
                .recent,
            4
        );
        // ...and an IP with failures meets its own, whatever account it names.
        assert_eq!(d.auth_failed(ip, "b@x.test").recent, 4);
        assert_eq!(
            d.auth_failed(IpAddr::from([127, 0, 8, 1]), "c@x.test")
                .recent,
            1
        );
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
        let d = Detector::new(&cfg, Arc::new(clock.clone()));
        let ip = IpAddr::from([127, 0, 0, 9]);
        for _ in 0..3 {
            assert!(d.connection(ip).is_ok());
        }
        let e = d.connection(ip).unwrap_err();
        assert!(e.reason.contains("4 connections"), "{}", e.reason);
        assert!(d.connection(IpAddr::from([127, 0, 0, 10])).is_ok());
        clock.advance(MINUTE + 1);
        assert!(d.connection(ip).is_ok());

        for _ in 0..2 {
            assert!(d.check_domain("Uni.test").is_ok());
            d.domain_message("uni.test");
        }
        assert!(d.check_domain("uni.test").is_err());
        assert!(d.check_domain("other.test").is_ok());
    }
}
