//! Sender reputation from our own history: what makes a sender legitimate over time.
//!
//! Each message from outside is counted, per day, under each of its identities: the client IP
//! (`ip:`), its /24 or /64 (`net:`), its /16 or /48 (`wide:`), and only when DKIM or SPF
//! passed aligned with the From domain, the From address (`from:`) and that domain
//! (`domain:`). What we did (accepted, junked, quarantined, rejected) and what users later
//! marked (spam or ham, by moving it into or out of Junk) are kept for `reputation.window`.
//! Mail our users send is remembered too: who they wrote to (correspondents) and the
//! Message-IDs they sent, so an authenticated reply or a known correspondent is recognised.
//!
//! [`assess`] is pure: it turns a [`History`] into findings, most specific identity first
//! (the first with `reputation.min_messages` messages speaks). An authenticated sender is
//! judged by its own name when it has enough history, never by its /16's (neighbours on a
//! shared network are not it); a good history, a correspondent or a reply counts only for an
//! authenticated one, so a forged From gains nothing, and no one can spoil another's name by
//! forging it. A reply is credited only from a domain the replied-to message was sent to.
//!
//! Security: keys are built from values we checked (addresses parsed and lowercased, IPs);
//! every lookup is a handful of primary-key reads whatever the message holds (References are
//! read up to [`MAX_REFERENCES`] ids).

use crate::config::Reputation as Cfg;
use crate::decision::{Finding, Kind};
use crate::store::{Store, StoreError};
use std::net::IpAddr;

/// Message-IDs of `In-Reply-To`/`References` looked up, at most.
pub const MAX_REFERENCES: usize = 20;

/// Who sent a message, as far as we know it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// The From address, lowercased, when authenticated (aligned DKIM or SPF pass).
    pub from: Option<String>,
    /// Its domain, likewise.
    pub domain: Option<String>,
    pub ip: Option<IpAddr>,
    /// The ids (without brackets) in `In-Reply-To` and `References`.
    pub replies_to: Vec<String>,
}

impl Who {
    /// The identities whose history counts, most specific first.
    pub fn keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(f) = &self.from {
            out.push(format!("from:{f}"));
        }
        if let Some(d) = &self.domain {
            out.push(format!("domain:{d}"));
        }
        if let Some(ip) = self.ip {
            let (net, wide) = match ip {
                IpAddr::V4(v) => {
                    let o = v.octets();
                    (
                        format!("{}.{}.{}.0/24", o[0], o[1], o[2]),
                        format!("{}.{}.0.0/16", o[0], o[1]),
                    )
                }
                IpAddr::V6(v) => {
                    let s = v.segments();
                    (
                        format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]),
                        format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]),
                    )
                }
            };
            out.push(format!("ip:{ip}"));
            out.push(format!("net:{net}"));
            out.push(format!("wide:{wide}"));
        }
        out
    }

    fn authenticated(key: &str) -> bool {
        key.starts_with("from:") || key.starts_with("domain:")
    }
}

/// What an identity's mail met, over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub junked: u64,
    pub quarantined: u64,
    pub rejected: u64,
    pub marked_spam: u64,
    pub marked_ham: u64,
}

impl Counts {
    fn messages(&self) -> u64 {
        self.accepted + self.junked + self.quarantined + self.rejected
    }

    fn describe(&self) -> String {
        format!(
            "{} accepted, {} junked, {} quarantined, {} rejected; users marked {} as spam, {} as ham",
            self.accepted,
            self.junked,
            self.quarantined,
            self.rejected,
            self.marked_spam,
            self.marked_ham
        )
    }
}

/// An outcome counted for an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Junked,
    Quarantined,
    Rejected,
    MarkedSpam,
    MarkedHam,
}

impl Outcome {
    fn column(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Junked => "junked",
            Outcome::Quarantined => "quarantined",
            Outcome::Rejected => "rejected",
            Outcome::MarkedSpam => "marked_spam",
            Outcome::MarkedHam => "marked_ham",
        }
    }
}

/// Everything [`assess`] needs, read from the store by [`lookup`].
#[derive(Debug, Clone, Default)]
pub struct History {
    /// (identity key, counts), in [`Who::keys`]'s order.
    pub identities: Vec<(String, Counts)>,
    /// The authenticated From is an address our users wrote to.
    pub correspondent: bool,
    /// One of `replies_to` is a Message-ID our users sent to the authenticated From's domain.
    pub reply: bool,
}

/// The findings a history gives. Pure: the server and `explain` share it.
pub fn assess(cfg: &Cfg, who: &Who, h: &History) -> Vec<Finding> {
    let mut out = Vec::new();
    let authenticated = who.from.is_some();
    if authenticated && h.reply {
        out.push(Finding::scored(
            Kind::ReplyToOurs,
            format!(
                "{} replies to a message our users sent",
                who.from.as_deref().unwrap_or("")
            ),
            0.0,
        ));
    } else if authenticated && h.correspondent {
        out.push(Finding::scored(
            Kind::Correspondent,
            format!(
                "our users have written to {}",
                who.from.as_deref().unwrap_or("")
            ),
            0.0,
        ));
    }
    // The most specific identity with enough history speaks; an authenticated sender is not
    // judged by its /16 or /48.
    if let Some((key, c)) = h.identities.iter().find(|(k, c)| {
        c.messages() + c.marked_spam + c.marked_ham >= cfg.min_messages
            && !(authenticated && k.starts_with("wide:"))
    }) {
        let bad = c.junked + c.quarantined + c.rejected + 2 * c.marked_spam;
        let good = c.accepted.saturating_sub(c.marked_spam) + 2 * c.marked_ham;
        let total = (bad + good).max(1) as f64;
        let evidence = format!("{key}: {}", c.describe());
        if bad as f64 / total >= 0.6 {
            out.push(Finding::scored(Kind::ReputationBad, evidence, 0.0));
        } else if Who::authenticated(key)
            && bad as f64 / total <= 0.1
            && c.marked_spam == 0
            // A correspondent or a reply was credited already.
            && out.is_empty()
        {
            out.push(Finding::scored(Kind::ReputationGood, evidence, 0.0));
        }
    }
    out
}

fn day(now: i64) -> i64 {
    now.div_euclid(86_400)
}

/// Read the history of `who` over the window. A few primary-key reads.
pub fn lookup(store: &Store, cfg: &Cfg, who: &Who, now: i64) -> Result<History, StoreError> {
    let since = day(now) - (cfg.window.get().as_secs() / 86_400) as i64;
    let keys = who.keys();
    let replies: Vec<String> = who
        .replies_to
        .iter()
        .take(MAX_REFERENCES)
        .cloned()
        .collect();
    store.read(|c| {
        let mut h = History::default();
        // Every identity in one statement.
        let marks: Vec<String> = (0..keys.len()).map(|i| format!("?{}", i + 2)).collect();
        let mut values = vec![crate::store::Value::Int(since)];
        values.extend(keys.iter().map(|k| crate::store::Value::Text(k.clone())));
        let found: Vec<(String, Counts)> = if keys.is_empty() {
            Vec::new()
        } else {
            c.query_map(
                &format!(
                    "SELECT identity, CAST(SUM(accepted) AS BIGINT), CAST(SUM(junked) AS BIGINT), \
                     CAST(SUM(quarantined) AS BIGINT), CAST(SUM(rejected) AS BIGINT), \
                     CAST(SUM(marked_spam) AS BIGINT), CAST(SUM(marked_ham) AS BIGINT) \
                     FROM reputation WHERE identity IN ({}) AND day >= ?1 GROUP BY identity",
                    marks.join(", ")
                ),
                values,
                |r| {
                    let g = |i| r.get::<Option<i64>>(i).map(|v| v.unwrap_or(0) as u64);
                    Ok((
                        r.get(0)?,
                        Counts {
                            accepted: g(1)?,
                            junked: g(2)?,
                            quarantined: g(3)?,
                            rejected: g(4)?,
                            marked_spam: g(5)?,
                            marked_ham: g(6)?,
                        },
                    ))
                },
            )?
        };
        for k in keys {
            let counts = found
                .iter()
                .find(|(i, _)| *i == k)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            h.identities.push((k, counts));
        }
        if let Some(f) = &who.from {
            h.correspondent = c.exists(
                "SELECT 1 FROM correspondents WHERE address = ?1 AND last >= ?2",
                crate::params![f, since * 86_400],
            )?;
        }
        // A Message-ID is public once a list has it: a reply counts only from a domain the
        // message was sent to.
        if let Some(d) = &who.domain {
            for id in &replies {
                let domains: Option<String> = c
                    .query_row(
                        "SELECT domains FROM sent_ids WHERE message_id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .map(Some)
                    .or_else(none_if_missing)?;
                if domains.is_some_and(|ds| ds.split(' ').any(|x| x == d)) {
                    h.reply = true;
                    break;
                }
            }
        }
        Ok(h)
    })
}

static PURGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SENT_PURGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn none_if_missing<T>(e: crate::store::DbError) -> crate::store::DbResult<Option<T>> {
    match e {
        crate::store::DbError::NoRows => Ok(None),
        e => Err(e),
    }
}

/// Count `outcome` for each of `keys` today, and remember which keys message `id` had (for a
/// user's mark later). Old days are dropped a batch at a time.
pub async fn record(
    store: &Store,
    id: &str,
    keys: Vec<String>,
    outcome: Outcome,
    now: i64,
    window_days: i64,
) -> Result<(), StoreError> {
    let id = id.to_string();
    store
        .write(move |c| {
            count(c, &keys, outcome, now)?;
            c.execute(
                "INSERT INTO reputation_msgs(id, time, identities) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(id) DO UPDATE SET time = excluded.time, \
                 identities = excluded.identities",
                crate::params![id, now, keys.join(" ")],
            )?;
            if crate::store::purge_due(&PURGES) {
                let old = day(now) - window_days;
                c.execute(
                    "DELETE FROM reputation WHERE day < ?1 AND (identity, day) IN \
                     (SELECT identity, day FROM reputation WHERE day < ?1 LIMIT 1000)",
                    [old],
                )?;
                c.execute(
                    "DELETE FROM reputation_msgs WHERE time < ?1 AND id IN \
                     (SELECT id FROM reputation_msgs WHERE time < ?1 LIMIT 1000)",
                    [old * 86_400],
                )?;
            }
            Ok(())
        })
        .await
}

fn count(
    c: &crate::store::Conn<'_>,
    keys: &[String],
    outcome: Outcome,
    now: i64,
) -> crate::store::DbResult<()> {
    count_by(c, keys, outcome, now, 1)
}

/// Add `delta` to `outcome` for each of `keys` on the day of `when`.
fn count_by(
    c: &crate::store::Conn<'_>,
    keys: &[String],
    outcome: Outcome,
    when: i64,
    delta: i64,
) -> crate::store::DbResult<()> {
    let col = outcome.column();
    // One statement for all of them (a row may be changed once per statement: distinct keys).
    let mut keys: Vec<&String> = keys.iter().collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = (0..keys.len())
        .map(|i| format!("(?{}, ?1, CASE WHEN ?2 > 0 THEN ?2 ELSE 0 END)", i + 3))
        .collect();
    let mut values = vec![
        crate::store::Value::Int(day(when)),
        crate::store::Value::Int(delta),
    ];
    values.extend(
        keys.iter()
            .map(|k| crate::store::Value::Text(k.to_string())),
    );
    c.execute(
        &format!(
            "INSERT INTO reputation(identity, day, {col}) VALUES {} \
             ON CONFLICT(identity, day) DO UPDATE SET {col} = CASE \
             WHEN reputation.{col} + ?2 > 0 THEN reputation.{col} + ?2 ELSE 0 END",
            rows.join(", ")
        ),
        values,
    )?;
    Ok(())
}

/// A user marked message `id` as spam or ham (`add`), or took the mark back: count it for
/// the identities the message had, on the day it arrived (so a mark taken back later cancels
/// it, and it leaves the window with the message). Returns whether the message was known.
pub async fn mark(store: &Store, id: &str, spam: bool, add: bool) -> Result<bool, StoreError> {
    let id = id.to_string();
    store.write(move |c| mark_in(c, &id, spam, add)).await
}

/// [`mark`] inside a caller's transaction.
pub fn mark_in(
    c: &crate::store::Conn<'_>,
    id: &str,
    spam: bool,
    add: bool,
) -> crate::store::DbResult<bool> {
    let found: Option<(String, i64)> = c
        .query_row(
            "SELECT identities, time FROM reputation_msgs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(none_if_missing)?;
    let Some((keys, when)) = found else {
        return Ok(false);
    };
    let keys: Vec<String> = keys.split(' ').map(str::to_string).collect();
    let outcome = if spam {
        Outcome::MarkedSpam
    } else {
        Outcome::MarkedHam
    };
    count_by(c, &keys, outcome, when, if add { 1 } else { -1 })?;
    Ok(true)
}

/// Mail one of our users sent: its recipients become correspondents, its Message-ID a
/// message their domains may reply to.
pub async fn wrote(
    store: &Store,
    rcpts: Vec<String>,
    message_id: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    store
        .write(move |c| {
            for r in &rcpts {
                c.execute(
                    "INSERT INTO correspondents(address, last) VALUES (?1, ?2) \
                 ON CONFLICT(address) DO UPDATE SET last = ?2",
                    crate::params![r.to_ascii_lowercase(), now],
                )?;
            }
            if let Some(id) = &message_id {
                let mut domains: Vec<String> = rcpts
                    .iter()
                    .filter_map(|r| r.rsplit_once('@'))
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .collect();
                domains.sort();
                domains.dedup();
                c.execute(
                    "INSERT INTO sent_ids(message_id, time, domains) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO NOTHING",
                    crate::params![id, now, domains.join(" ")],
                )?;
            }
            // Replies come within months; a year-old id is dropped, a batch at a time.
            if crate::store::purge_due(&SENT_PURGES) {
                c.execute(
                    "DELETE FROM sent_ids WHERE time < ?1 AND message_id IN \
                     (SELECT message_id FROM sent_ids WHERE time < ?1 LIMIT 1000)",
                    [now - 365 * 86_400],
                )?;
            }
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Cfg {
        Cfg::default()
    }

    fn who(auth: bool) -> Who {
        Who {
            from: auth.then(|| "alice@sender.test".into()),
            domain: auth.then(|| "sender.test".into()),
            ip: Some("192.0.2.7".parse().unwrap()),
            replies_to: vec!["1@ours.test".into()],
        }
    }

    fn history(w: &Who, at: usize, c: Counts) -> History {
        let mut h = History {
            identities: w
                .keys()
                .into_iter()
                .map(|k| (k, Counts::default()))
                .collect(),
            ..History::default()
        };
        h.identities[at].1 = c;
        h
    }

    fn kinds(f: Vec<Finding>) -> Vec<Kind> {
        f.into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn keys_are_most_specific_first_and_authenticated_ones_only_when_authenticated() {
        assert_eq!(
            who(true).keys(),
            [
                "from:alice@sender.test",
                "domain:sender.test",
                "ip:192.0.2.7",
                "net:192.0.2.0/24",
                "wide:192.0.0.0/16"
            ]
        );
        assert_eq!(who(false).keys().len(), 3);
        let v6 = Who {
            ip: Some("2001:db8:1:2:3::9".parse().unwrap()),
            ..Who::default()
        };
        assert_eq!(
            v6.keys(),
            [
                "ip:2001:db8:1:2:3::9",
                "net:2001:db8:1:2::/64",
                "wide:2001:db8:1::/48"
            ]
        );
    }

    #[test]
    fn history_decides_by_its_most_specific_identity_with_enough_mail() {
        let good = Counts {
            accepted: 10,
            ..Counts::default()
        };
        let bad = Counts {
            junked: 4,
            rejected: 2,
            ..Counts::default()
        };
        let w = who(true);
        assert_eq!(
            kinds(assess(&cfg(), &w, &history(&w, 0, good))),
            [Kind::ReputationGood]
        );
        assert_eq!(
            kinds(assess(&cfg(), &w, &history(&w, 0, bad))),
            [Kind::ReputationBad]
        );
        // An IP's good history is no credential (shared hosts, big providers)...
        assert_eq!(kinds(assess(&cfg(), &w, &history(&w, 2, good))), []);
        // ...and an authenticated sender is not judged by its /16.
        assert_eq!(kinds(assess(&cfg(), &w, &history(&w, 4, bad))), []);
        // ...its bad one counts, authenticated or not.
        let anon = who(false);
        assert_eq!(
            kinds(assess(&cfg(), &anon, &history(&anon, 1, bad))),
            [Kind::ReputationBad]
        );
        // Too little history says nothing.
        let two = Counts {
            junked: 2,
            ..Counts::default()
        };
        assert_eq!(kinds(assess(&cfg(), &w, &history(&w, 0, two))), []);
        // Users' marks weigh double: accepted mail they call spam is bad.
        let marked = Counts {
            accepted: 3,
            marked_spam: 3,
            ..Counts::default()
        };
        assert_eq!(
            kinds(assess(&cfg(), &w, &history(&w, 0, marked))),
            [Kind::ReputationBad]
        );
    }

    #[test]
    fn replies_and_correspondents_count_only_when_authenticated() {
        let w = who(true);
        let mut h = history(&w, 0, Counts::default());
        h.correspondent = true;
        assert_eq!(kinds(assess(&cfg(), &w, &h)), [Kind::Correspondent]);
        h.reply = true;
        assert_eq!(kinds(assess(&cfg(), &w, &h)), [Kind::ReplyToOurs]);
        let anon = who(false);
        assert_eq!(kinds(assess(&cfg(), &anon, &h)), []);
    }

    #[tokio::test]
    async fn the_store_counts_outcomes_marks_correspondents_and_replies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let w = who(true);
        let now = 1_795_000_000;
        for i in 0..3 {
            record(
                &store,
                &format!("q{i}"),
                w.keys(),
                Outcome::Accepted,
                now,
                90,
            )
            .await
            .unwrap();
        }
        let h = lookup(&store, &cfg(), &w, now).unwrap();
        assert_eq!(h.identities[0].1.accepted, 3);
        assert_eq!(h.identities[4].1.accepted, 3, "{h:?}");
        assert!(!h.correspondent && !h.reply);
        assert!(mark(&store, "q1", true, true).await.unwrap());
        assert!(!mark(&store, "unknown", true, true).await.unwrap());
        let h = lookup(&store, &cfg(), &w, now).unwrap();
        assert_eq!(h.identities[0].1.marked_spam, 1);
        assert!(mark(&store, "q1", true, false).await.unwrap());
        assert_eq!(
            lookup(&store, &cfg(), &w, now).unwrap().identities[0]
                .1
                .marked_spam,
            0
        );
        // Sent to another domain: a reply from sender.test is not one.
        wrote(
            &store,
            vec!["carol@elsewhere.test".into()],
            Some("1@ours.test".into()),
            now,
        )
        .await
        .unwrap();
        assert!(!lookup(&store, &cfg(), &w, now).unwrap().reply);
        wrote(
            &store,
            vec!["Alice@Sender.test".into()],
            Some("2@ours.test".into()),
            now,
        )
        .await
        .unwrap();
        let w2 = Who {
            replies_to: vec!["2@ours.test".into()],
            ..w.clone()
        };
        let h = lookup(&store, &cfg(), &w2, now).unwrap();
        assert!(h.correspondent && h.reply, "{h:?}");
        // Past the window, history is gone.
        let later = now + 91 * 86_400;
        let h = lookup(&store, &cfg(), &w, later).unwrap();
        assert_eq!(h.identities[0].1, Counts::default());
        assert!(!h.correspondent);
    }
}
