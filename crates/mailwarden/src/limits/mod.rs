//! Limits. Keyed counters over sliding time windows, with an injectable clock: the one
//! component behind rate limits, anomaly triggers and brute-force blocking; and the
//! concurrent-connection limits ([`conn`]).
//!
//! On a shared store every count lives in PostgreSQL instead (`shared.rs`), so nodes see one
//! another's at once; on the embedded store it lives here, in memory.
//!
//! Keys name what is counted for whom: an account, a client IP, its network (IPv4 /24,
//! IPv6 /64) or a sender domain. Events older than the longest window asked about are dropped
//! as new ones arrive, so memory follows the recent traffic only.

pub mod conn;
pub mod lines;
pub mod shared;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::clock::{Clock, ManualClock, SystemClock};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Account(String),
    Ip(IpAddr),
    /// IPv4 /24 or IPv6 /64.
    Net(IpAddr),
    SenderDomain(String),
}

/// The /24 or /64 that holds `ip`.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].iter_mut().for_each(|x| *x = 0);
            IpAddr::from(s)
        }
    }
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Messages,
    Recipients,
    /// Recipients the account never wrote to before.
    NewRecipients,
    UnknownRecipients,
    AuthFailures,
    Logins,
    /// Recipients that remote servers refused with 5xx.
    RemoteRejections,
    Connections,
    /// Submitted messages held because their content scored as spam.
    SpamMessages,
    /// Decision records of transactions a client abandoned.
    AbandonedRecords,
}

/// Timestamps of events per (key, metric), and distinct values per (key, metric) with the
/// time each was last seen.
///
/// Bounded whatever clients do: a key keeps at most `cap` events of a metric (the newest:
/// a count past the largest limit compared against it says no more), a key's distinct
/// values at most `cap` too, and past `MAX_KEYS` keys the stalest are dropped.
pub struct Counters {
    clock: Arc<dyn Clock>,
    /// Events older than this are forgotten.
    horizon_ms: i64,
    /// Events kept per (key, metric), by metric; `default_cap` for the others.
    caps: HashMap<Metric, usize>,
    default_cap: usize,
    events: Mutex<HashMap<(Key, Metric), VecDeque<i64>>>,
    distinct: Mutex<HashMap<(Key, Metric), HashMap<String, i64>>>,
    /// Updates since the last sweep of keys that went quiet.
    updates: AtomicU64,
    shared: Option<Arc<shared::Shared>>,
}

/// Updates between sweeps: keys a client invents (IPs, account names in failed AUTH) must
/// not pile up, but a sweep walks every key.
const SWEEP_EVERY: u64 = 4096;
/// Keys (per map) past which the stalest are dropped, whatever the sweep left.
const MAX_KEYS: usize = 200_000;

impl Counters {
    pub fn new(clock: Arc<dyn Clock>, horizon_ms: i64) -> Counters {
        Counters {
            clock,
            horizon_ms,
            caps: HashMap::new(),
            default_cap: usize::MAX,
            events: Mutex::new(HashMap::new()),
            distinct: Mutex::new(HashMap::new()),
            updates: AtomicU64::new(0),
            shared: None,
        }
    }

    /// Count in the shared store instead of in memory.
    pub fn shared(mut self, s: Arc<shared::Shared>) -> Counters {
        self.shared = Some(s);
        self
    }

    /// Keep at most `default` events per key and metric, or the cap given for the metric.
    pub fn with_caps(mut self, default: usize, caps: &[(Metric, usize)]) -> Counters {
        self.default_cap = default.max(1);
        self.caps = caps.iter().map(|(m, c)| (*m, (*c).max(1))).collect();
        self
    }

    fn cap(&self, metric: Metric) -> usize {
        self.caps.get(&metric).copied().unwrap_or(self.default_cap)
    }

    /// Drop keys with nothing inside the horizon, every `SWEEP_EVERY` updates or when there
    /// are more than `MAX_KEYS`; then, if still too many, the half that went quiet first.
    fn maybe_sweep(&self, now: i64) {
        let due = self.updates.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
        let h = self.horizon_ms;
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if due || ev.len() > MAX_KEYS {
            ev.retain(|_, q| q.back().is_some_and(|t| now - t <= h));
            if ev.len() > MAX_KEYS {
                let mut last: Vec<i64> = ev.values().filter_map(|q| q.back().copied()).collect();
                last.sort_unstable();
                let cut = last[last.len() / 2];
                ev.retain(|_, q| q.back().is_some_and(|t| *t > cut));
            }
        }
        drop(ev);
        let mut d = self.distinct.lock().unwrap_or_else(|e| e.into_inner());
        if due || d.len() > MAX_KEYS {
            d.retain(|_, set| set.values().any(|t| now - t <= h));
            if d.len() > MAX_KEYS {
                let mut last: Vec<i64> = d
                    .values()
                    .filter_map(|s| s.values().max().copied())
                    .collect();
                last.sort_unstable();
                let cut = last[last.len() / 2];
                d.retain(|_, s| s.values().any(|t| *t > cut));
            }
        }
    }

    /// Keys with anything counted (for tests of the sweep).
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self
                .distinct
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Count `n` events now; returns the time they were counted at.
    pub fn add(&self, key: Key, metric: Metric, n: usize) -> i64 {
        let now = self.now_ms();
        if let Some(s) = &self.shared {
            s.add(&key, metric, n.min(self.cap(metric)), now, self.horizon_ms);
            return now;
        }
        self.maybe_sweep(now);
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let q = ev.entry((key, metric)).or_default();
        while q.front().is_some_and(|t| now - t > self.horizon_ms) {
            q.pop_front();
        }
        let cap = self.cap(metric);
        q.extend(std::iter::repeat_n(now, n.min(cap)));
        while q.len() > cap {
            q.pop_front();
        }
        now
    }

    /// Take back one event counted at `at` (a reservation that came to nothing).
    pub fn remove(&self, key: &Key, metric: Metric, at: i64) {
        if let Some(s) = &self.shared {
            return s.remove(key, metric, at);
        }
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = ev.get_mut(&(key.clone(), metric))
            && let Some(i) = q.iter().rposition(|t| *t == at)
        {
            q.remove(i);
        }
    }

    /// Events in the last `window_ms`.
    pub fn count(&self, key: &Key, metric: Metric, window_ms: i64) -> usize {
        let now = self.now_ms();
        if let Some(s) = &self.shared {
            return s.count(key, metric, now, window_ms);
        }
        let ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        ev.get(&(key.clone(), metric))
            .map(|q| {
                q.iter()
                    .rev()
                    .take_while(|t| now - **t <= window_ms)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Record a value; returns how many distinct values were seen in the last `window_ms`.
    pub fn add_distinct(&self, key: Key, metric: Metric, value: &str, window_ms: i64) -> usize {
        let now = self.now_ms();
        if let Some(s) = &self.shared {
            return s.add_distinct(&key, metric, value, now, window_ms, self.horizon_ms);
        }
        self.maybe_sweep(now);
        let mut d = self.distinct.lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.cap(metric);
        let set = d.entry((key, metric)).or_default();
        set.retain(|_, t| now - *t <= self.horizon_ms);
        if set.len() >= cap
            && !set.contains_key(value)
            && let Some(oldest) = set.iter().min_by_key(|(_, t)| **t).map(|(v, _)| v.clone())
        {
            set.remove(&oldest);
        }
        set.insert(value.to_string(), now);
        set.values().filter(|t| now - **t <= window_ms).count()
    }

    /// Was `value` seen in the last `window_ms`?
    pub fn seen(&self, key: &Key, metric: Metric, value: &str, window_ms: i64) -> bool {
        let now = self.now_ms();
        if let Some(s) = &self.shared {
            return s.seen(key, metric, value, now - window_ms);
        }
        let d = self.distinct.lock().unwrap_or_else(|e| e.into_inner());
        d.get(&(key.clone(), metric))
            .and_then(|set| set.get(value))
            .is_some_and(|t| now - *t <= window_ms)
    }

    /// Forget a value (a reservation that came to nothing).
    pub fn remove_distinct(&self, key: &Key, metric: Metric, value: &str) {
        if let Some(s) = &self.shared {
            return s.remove_distinct(key, metric, value);
        }
        let mut d = self.distinct.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = d.get_mut(&(key.clone(), metric)) {
            set.remove(value);
        }
    }

    /// Distinct values seen in the last `window_ms`.
    pub fn distinct(&self, key: &Key, metric: Metric, window_ms: i64) -> usize {
        let now = self.now_ms();
        if let Some(s) = &self.shared {
            return s.distinct(key, metric, now - window_ms);
        }
        let d = self.distinct.lock().unwrap_or_else(|e| e.into_inner());
        d.get(&(key.clone(), metric))
            .map(|set| set.values().filter(|t| now - **t <= window_ms).count())
            .unwrap_or(0)
    }

    /// Forget everything about a key (after a suspension is lifted, say).
    pub fn clear(&self, key: &Key) {
        if let Some(s) = &self.shared {
            return s.clear(key);
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, _), _| k != key);
        self.distinct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, _), _| k != key);
    }
}

/// Keys of a block list with expiry (IPs or networks blocked after brute force).
pub struct Blocks {
    clock: Arc<dyn Clock>,
    until: Mutex<HashMap<IpAddr, i64>>,
    shared: Option<Arc<shared::Shared>>,
}

impl Blocks {
    pub fn new(clock: Arc<dyn Clock>) -> Blocks {
        Blocks {
            clock,
            until: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Keep blocks in the shared store instead of in memory.
    pub fn shared(mut self, s: Arc<shared::Shared>) -> Blocks {
        self.shared = Some(s);
        self
    }

    pub fn block(&self, what: IpAddr, for_ms: i64) {
        let until = self.clock.now_ms() + for_ms;
        if let Some(s) = &self.shared {
            return s.block(&what.to_string(), until);
        }
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(what, until);
    }

    pub fn is_blocked(&self, what: IpAddr) -> bool {
        let now = self.clock.now_ms();
        if let Some(s) = &self.shared {
            return s.is_blocked(&what.to_string(), now);
        }
        let mut m = self.until.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, t| *t > now);
        m.contains_key(&what)
    }
}

/// Recipients an account has written to before (its correspondents), remembered in memory,
/// or in the shared store.
#[derive(Default)]
pub struct Known {
    mem: Mutex<HashMap<String, Correspondents>>,
    shared: Option<Arc<shared::Shared>>,
}

/// One account's correspondents, each with when it was last written to (a sequence number).
#[derive(Default)]
struct Correspondents {
    seq: u64,
    last: HashMap<String, u64>,
}

/// Correspondents remembered per account at most. Past it the tenth written to longest ago
/// is forgotten: a heavy sender's regular correspondents stay known, so only recipients it
/// has not written to for a long while can count as new again.
const MAX_KNOWN: usize = 20_000;

impl Known {
    /// Remember correspondents in the shared store instead of in memory.
    pub fn shared(s: Arc<shared::Shared>) -> Known {
        Known {
            mem: Mutex::default(),
            shared: Some(s),
        }
    }

    /// How many of `rcpts` the account never wrote to.
    pub fn count_new(&self, account: &str, rcpts: &[String]) -> usize {
        if let Some(s) = &self.shared {
            return s.count_new(account, rcpts);
        }
        let m = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.get(account);
        rcpts
            .iter()
            .filter(|r| !c.is_some_and(|c| c.last.contains_key(&r.to_ascii_lowercase())))
            .count()
    }

    /// Remember the recipients; return how many were new.
    pub fn learn(&self, account: &str, rcpts: &[String], now_ms: i64) -> usize {
        if let Some(s) = &self.shared {
            let new = s.count_new(account, rcpts);
            s.learn(account, rcpts, now_ms);
            return new;
        }
        let mut m = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(account.to_string()).or_default();
        let mut new = 0;
        for r in rcpts {
            c.seq += 1;
            if c.last.insert(r.to_ascii_lowercase(), c.seq).is_none() {
                new += 1;
            }
        }
        if c.last.len() > MAX_KNOWN {
            // Amortised: one sort-free selection per tenth of the cap written.
            let mut ages: Vec<u64> = c.last.values().copied().collect();
            let keep = MAX_KNOWN * 9 / 10;
            let cut = ages.len() - keep;
            let oldest_kept = *ages.select_nth_unstable(cut).1;
            c.last.retain(|_, seq| *seq >= oldest_kept);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_past_its_correspondent_cap_forgets_only_those_written_to_longest_ago() {
        let k = Known::default();
        let regular = vec!["boss@example.test".to_string()];
        assert_eq!(k.learn("a@x", &regular, 0), 1);
        for i in 0..MAX_KNOWN + 5_000 {
            k.learn("a@x", &[format!("r{i}@example.test")], 0);
            if i % 1000 == 0 {
                // Written to again now and then: stays known however many others come.
                assert_eq!(k.learn("a@x", &regular, 0), 0);
            }
        }
        let m = k.mem.lock().unwrap();
        let kept = m["a@x"].last.len();
        assert!(kept <= MAX_KNOWN, "{kept} remembered");
        drop(m);
        assert_eq!(k.count_new("a@x", &regular), 0);
        let newest = format!("r{}@example.test", MAX_KNOWN + 4_999);
        assert_eq!(k.count_new("a@x", std::slice::from_ref(&newest)), 0);
        assert_eq!(k.count_new("a@x", &["r0@example.test".to_string()]), 1);
    }

    #[test]
    fn windows_slide_with_the_clock() {
        let clock = ManualClock::at(1_000_000);
        let c = Counters::new(Arc::new(clock.clone()), 3_600_000);
        let k = Key::Account("a@x".into());
        c.add(k.clone(), Metric::Messages, 3);
        clock.advance(30_000);
        c.add(k.clone(), Metric::Messages, 1);
        assert_eq!(c.count(&k, Metric::Messages, 60_000), 4);
        assert_eq!(c.count(&k, Metric::Messages, 10_000), 1);
        clock.advance(61_000);
        assert_eq!(c.count(&k, Metric::Messages, 60_000), 0);
        assert_eq!(c.count(&k, Metric::Messages, 3_600_000), 4);
        assert_eq!(
            c.count(&Key::Account("b@x".into()), Metric::Messages, 60_000),
            0
        );
    }

    #[test]
    fn distinct_values_and_networks() {
        let clock = ManualClock::at(0);
        let c = Counters::new(Arc::new(clock.clone()), 3_600_000);
        let k = Key::Account("a@x".into());
        assert_eq!(
            c.add_distinct(k.clone(), Metric::Logins, "1.2.3.4", 3_600_000),
            1
        );
        assert_eq!(
            c.add_distinct(k.clone(), Metric::Logins, "1.2.3.4", 3_600_000),
            1
        );
        assert_eq!(
            c.add_distinct(k.clone(), Metric::Logins, "1.2.3.5", 3_600_000),
            2
        );
        assert_eq!(
            network("127.0.5.77".parse().unwrap()),
            "127.0.5.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let b = Blocks::new(Arc::new(clock.clone()));
        b.block("127.0.5.0".parse().unwrap(), 1000);
        assert!(b.is_blocked("127.0.5.0".parse().unwrap()));
        clock.advance(1001);
        assert!(!b.is_blocked("127.0.5.0".parse().unwrap()));
    }

    #[test]
    fn a_key_keeps_no_more_events_than_its_cap() {
        let clock = ManualClock::at(0);
        let c = Counters::new(Arc::new(clock.clone()), 3_600_000)
            .with_caps(100, &[(Metric::Connections, 10)]);
        let ip = Key::Ip(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..1000 {
            c.add(ip.clone(), Metric::Connections, 1);
            clock.advance(1);
        }
        // Saturated at the cap: still more than any limit compared with it.
        assert_eq!(c.count(&ip, Metric::Connections, 60_000), 10);
        c.add(ip.clone(), Metric::Messages, 5000);
        assert_eq!(c.count(&ip, Metric::Messages, 60_000), 100);
        for i in 0..500 {
            c.add_distinct(ip.clone(), Metric::Recipients, &format!("r{i}"), 3_600_000);
        }
        assert_eq!(c.distinct(&ip, Metric::Recipients, 3_600_000), 100);
    }

    #[test]
    fn keys_that_went_quiet_are_swept() {
        let clock = ManualClock::at(0);
        let c = Counters::new(Arc::new(clock.clone()), 60_000);
        for i in 0..SWEEP_EVERY as u32 {
            c.add(
                Key::Ip(IpAddr::from(i.to_be_bytes())),
                Metric::AuthFailures,
                1,
            );
        }
        assert!(c.keys() > 4000);
        clock.advance(61_000);
        for _ in 0..SWEEP_EVERY {
            c.add(Key::Account("a@x".into()), Metric::Messages, 1);
        }
        assert_eq!(c.keys(), 1);
    }
}
