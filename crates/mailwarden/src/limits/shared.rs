//! Limits on the shared store: what [`super::Counters`], [`super::Blocks`] and
//! [`super::Known`] keep in memory on one node, kept in PostgreSQL when nodes share it
//! (`[store] url`), so N nodes enforce the same limits as one.
//!
//! Every call is one statement committed at once (`Store::write_now`): a count another node
//! made a moment ago is seen by the next check here. Checks that must not interleave with
//! another node's (check a limit, then count) hold a cluster lock ([`Shared::lock`]).
//!
//! Failures: a store out of reach counts as nothing counted and is logged; no message can be
//! accepted then anyway, since the queue's commit needs the same store.
//!
//! Security: keys hold client-controlled text (account names from failed AUTH, sender
//! domains); they are bound as parameters, and old rows are purged as new ones arrive, so
//! the tables follow the recent traffic only.

use super::{Key, Metric};
use crate::store::{ClusterLock, Conn, DbResult, Store};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes between purges of rows past the horizon.
const PURGE_EVERY: u64 = 1024;
/// Correspondents not written to for this long are forgotten.
const KNOWN_FOR_MS: i64 = 365 * 86_400_000;
/// Name of the cluster lock that makes check-then-count one step ("mwresv").
const RESERVING: i64 = 0x6d77_7265_7376;

pub struct Shared {
    store: Store,
    writes: AtomicU64,
}

fn key(k: &Key) -> String {
    match k {
        Key::Account(a) => format!("acct:{a}"),
        Key::Ip(ip) => format!("ip:{ip}"),
        Key::Net(n) => format!("net:{n}"),
        Key::SenderDomain(d) => format!("dom:{d}"),
    }
}

fn metric(m: Metric) -> &'static str {
    match m {
        Metric::Messages => "messages",
        Metric::Recipients => "recipients",
        Metric::NewRecipients => "new_recipients",
        Metric::UnknownRecipients => "unknown_recipients",
        Metric::AuthFailures => "auth_failures",
        Metric::Logins => "logins",
        Metric::RemoteRejections => "remote_rejections",
        Metric::Connections => "connections",
        Metric::SpamMessages => "spam_messages",
        Metric::AbandonedRecords => "abandoned_records",
    }
}

impl Shared {
    pub fn new(store: Store) -> Shared {
        Shared {
            store,
            writes: AtomicU64::new(0),
        }
    }

    /// Hold the cluster-wide reservation lock (see the module header).
    pub fn lock(&self) -> Option<ClusterLock> {
        match self.store.cluster_lock(RESERVING)? {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(event = "limits_store_failed", error = %e);
                None
            }
        }
    }

    fn write<R: Default>(&self, f: impl FnOnce(&Conn<'_>) -> DbResult<R>) -> R {
        match self.store.write_now(f) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(event = "limits_store_failed", error = %e);
                R::default()
            }
            None => R::default(),
        }
    }

    fn read<R: Default>(&self, f: impl FnOnce(&Conn<'_>) -> DbResult<R>) -> R {
        self.store.read(f).unwrap_or_else(|e| {
            tracing::warn!(event = "limits_store_failed", error = %e);
            R::default()
        })
    }

    /// Purge rows older than `horizon_ms` now and then.
    fn maybe_purge(&self, c: &Conn<'_>, now: i64, horizon_ms: i64) -> DbResult<()> {
        if self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PURGE_EVERY)
        {
            c.execute(
                "DELETE FROM counter_events WHERE t < ?1",
                [now - horizon_ms],
            )?;
            c.execute(
                "DELETE FROM counter_values WHERE t < ?1",
                [now - horizon_ms],
            )?;
            c.execute("DELETE FROM blocks WHERE until < ?1", [now])?;
            c.execute("DELETE FROM known_rcpts WHERE t < ?1", [now - KNOWN_FOR_MS])?;
        }
        Ok(())
    }

    pub fn add(&self, k: &Key, m: Metric, n: usize, now: i64, horizon_ms: i64) {
        self.write(|c| {
            self.maybe_purge(c, now, horizon_ms)?;
            c.execute(
                "INSERT INTO counter_events(key, metric, t, n) VALUES (?1, ?2, ?3, ?4)",
                crate::params![key(k), metric(m), now, n as i64],
            )?;
            Ok(())
        })
    }

    pub fn remove(&self, k: &Key, m: Metric, at: i64) {
        self.write(|c| {
            c.execute(
                // One event back, however many were counted in the same millisecond (this
                // module runs on PostgreSQL only: ctid names one row).
                "UPDATE counter_events SET n = n - 1 WHERE ctid = (SELECT ctid FROM \
                 counter_events WHERE key = ?1 AND metric = ?2 AND t = ?3 AND n > 0 LIMIT 1)",
                crate::params![key(k), metric(m), at],
            )?;
            Ok(())
        })
    }

    pub fn count(&self, k: &Key, m: Metric, now: i64, window_ms: i64) -> usize {
        self.read(|c| {
            c.query_row(
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM counter_events \
                 WHERE key = ?1 AND metric = ?2 AND t >= ?3",
                crate::params![key(k), metric(m), now - window_ms],
                |r| r.get::<i64>(0),
            )
        })
        .max(0) as usize
    }

    /// Record `value`; the distinct values seen in the window.
    pub fn add_distinct(
        &self,
        k: &Key,
        m: Metric,
        value: &str,
        now: i64,
        window_ms: i64,
        horizon_ms: i64,
    ) -> usize {
        self.write(|c| {
            self.maybe_purge(c, now, horizon_ms)?;
            c.execute(
                "INSERT INTO counter_values(key, metric, value, t) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(key, metric, value) DO UPDATE SET t = excluded.t",
                crate::params![key(k), metric(m), value, now],
            )?;
            distinct(c, k, m, now - window_ms)
        })
    }

    pub fn seen(&self, k: &Key, m: Metric, value: &str, since: i64) -> bool {
        self.read(|c| {
            c.exists(
                "SELECT 1 FROM counter_values WHERE key = ?1 AND metric = ?2 AND value = ?3 \
                 AND t >= ?4",
                crate::params![key(k), metric(m), value, since],
            )
        })
    }

    pub fn remove_distinct(&self, k: &Key, m: Metric, value: &str) {
        self.write(|c| {
            c.execute(
                "DELETE FROM counter_values WHERE key = ?1 AND metric = ?2 AND value = ?3",
                crate::params![key(k), metric(m), value],
            )?;
            Ok(())
        })
    }

    pub fn distinct(&self, k: &Key, m: Metric, since: i64) -> usize {
        self.read(|c| distinct(c, k, m, since))
    }

    pub fn clear(&self, k: &Key) {
        self.write(|c| {
            c.execute("DELETE FROM counter_events WHERE key = ?1", [key(k)])?;
            c.execute("DELETE FROM counter_values WHERE key = ?1", [key(k)])?;
            Ok(())
        })
    }

    pub fn block(&self, what: &str, until: i64) {
        self.write(|c| {
            c.execute(
                "INSERT INTO blocks(what, until) VALUES (?1, ?2) \
                 ON CONFLICT(what) DO UPDATE SET until = excluded.until",
                crate::params![what, until],
            )?;
            Ok(())
        })
    }

    pub fn is_blocked(&self, what: &str, now: i64) -> bool {
        self.read(|c| {
            c.exists(
                "SELECT 1 FROM blocks WHERE what = ?1 AND until > ?2",
                crate::params![what, now],
            )
        })
    }

    /// How many of `rcpts` (lowercase) the account never wrote to.
    pub fn count_new(&self, account: &str, rcpts: &[String]) -> usize {
        self.read(|c| {
            let mut n = 0;
            for r in rcpts {
                if !c.exists(
                    "SELECT 1 FROM known_rcpts WHERE account = ?1 AND rcpt = ?2",
                    crate::params![account, r.to_ascii_lowercase()],
                )? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Remember the recipients as the account's correspondents.
    pub fn learn(&self, account: &str, rcpts: &[String], now: i64) {
        self.write(|c| {
            for r in rcpts {
                c.execute(
                    "INSERT INTO known_rcpts(account, rcpt, t) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(account, rcpt) DO UPDATE SET t = excluded.t",
                    crate::params![account, r.to_ascii_lowercase(), now],
                )?;
            }
            Ok(())
        })
    }
}

fn distinct(c: &Conn<'_>, k: &Key, m: Metric, since: i64) -> DbResult<usize> {
    c.query_row(
        "SELECT count(*) FROM counter_values WHERE key = ?1 AND metric = ?2 AND t >= ?3",
        crate::params![key(k), metric(m), since],
        |r| r.get(0),
    )
}
