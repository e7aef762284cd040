//! Smart greylisting: `451 4.7.1` for the first attempt of a (client, sender, recipient)
//! triplet, only when nothing speaks for the client. Fire-and-forget spamware never retries;
//! real servers do. The client part of the triplet is the /24 (/64), or the sender's domain
//! when SPF passes for the client, so a provider's rotating pool of outbound IPs passes on
//! its retry from any of them.

use super::memory;
use crate::config::screening::Greylist as Cfg;
use crate::limits::network;
use crate::store::Optional;
use crate::store::{Store, StoreError};
use std::net::IpAddr;

/// Triplets and memories removed per write once they are long expired.
const PURGE_BATCH: i64 = 100;
/// Unexpired triplets recorded per client (network, or SPF-passing sender domain) at most.
const MAX_PENDING_PER_CLIENT: i64 = 1000;

/// Triplets recorded for `client` (their keys start with `client|`) since `since`. Expired
/// ones do not count: they are purged only by later writes, and a client at its cap writes
/// none, so counting them would keep it from ever being recorded again.
fn pending(store: &Store, client: &str, since: i64) -> Result<i64, StoreError> {
    let (lo, hi) = (format!("{client}|"), format!("{client}}}"));
    store.read(|c| {
        c.query_row(
            "SELECT count(*) FROM greylist WHERE triplet >= ?1 AND triplet < ?2 \
             AND first_seen >= ?3",
            crate::params![lo, hi, since],
            |r| r.get(0),
        )
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not greylisted, and why.
    Exempt(&'static str),
    /// A retry inside the window: passes, and the network (and SPF sender) is remembered.
    Passed,
    /// Come back later; `wait` seconds remain of the minimum delay.
    Greylisted { wait: i64 },
}

pub struct Attempt<'a> {
    pub ip: IpAddr,
    pub sender: &'a str,
    pub rcpt: &'a str,
    /// The sender's domain when SPF passed for this client.
    pub spf_pass: Option<&'a str>,
    /// An allow list answered for the client.
    pub allowlisted: bool,
}

fn opted_out(cfg: &Cfg, rcpt: &str) -> bool {
    let domain = rcpt.rsplit_once('@').map(|(_, d)| d);
    cfg.opt_out.iter().any(|o| {
        o.eq_ignore_ascii_case(rcpt)
            || o.strip_prefix('@')
                .is_some_and(|d| domain.is_some_and(|rd| rd.eq_ignore_ascii_case(d)))
    })
}

/// Decide one RCPT at `now` (seconds, from the server's clock).
pub async fn check(
    store: &Store,
    cfg: &Cfg,
    a: &Attempt<'_>,
    now: i64,
) -> Result<Answer, StoreError> {
    if opted_out(cfg, a.rcpt) {
        return Ok(Answer::Exempt("recipient opted out"));
    }
    if a.allowlisted {
        return Ok(Answer::Exempt("on an allow list"));
    }
    let net_key = format!("grey:{}", network(a.ip));
    if memory::known(store, &net_key, now)? {
        return Ok(Answer::Exempt("network passed greylisting before"));
    }
    let sender_key = a
        .spf_pass
        .map(|d| format!("sender:{}", d.to_ascii_lowercase()));
    if let Some(k) = &sender_key
        && memory::known(store, k, now)?
    {
        return Ok(Answer::Exempt("SPF pass from a sender that passed before"));
    }
    let client = match a.spf_pass {
        Some(d) => format!("spf:{}", d.to_ascii_lowercase()),
        None => network(a.ip).to_string(),
    };
    let triplet = format!(
        "{client}|{}|{}",
        a.sender.to_ascii_lowercase(),
        a.rcpt.to_ascii_lowercase()
    );
    let t = triplet.clone();
    let first: Option<i64> = store.read(|c| {
        c.query_row(
            "SELECT first_seen FROM greylist WHERE triplet = ?1",
            [&t],
            |r| r.get(0),
        )
        .optional()
    })?;
    let (min, expiry) = (
        cfg.min_delay.get().as_secs() as i64,
        cfg.expiry.get().as_secs() as i64,
    );
    match first {
        Some(f) if now - f >= min && now - f <= expiry => {
            let until = now + cfg.remember.get().as_secs() as i64;
            memory::remember(store, net_key, until).await?;
            if let Some(k) = sender_key {
                memory::remember(store, k, until).await?;
            }
            Ok(Answer::Passed)
        }
        Some(f) if now - f < min => Ok(Answer::Greylisted {
            wait: min - (now - f),
        }),
        // New, or expired: the clock starts (again), unless this client already has its
        // fill of triplets waiting (a sender inventing addresses): then it waits unrecorded.
        _ if pending(store, &client, now - expiry)? >= MAX_PENDING_PER_CLIENT => {
            Ok(Answer::Greylisted { wait: min })
        }
        _ => {
            store
                .write(move |c| {
                    c.execute(
                        "INSERT INTO greylist(triplet, first_seen) VALUES (?1, ?2) \
                         ON CONFLICT(triplet) DO UPDATE SET first_seen = ?2",
                        crate::params![triplet, now],
                    )?;
                    c.execute(
                        "DELETE FROM greylist WHERE first_seen < ?1 AND triplet IN (SELECT triplet FROM greylist \
                         WHERE first_seen < ?1 LIMIT ?2)",
                        crate::params![now - expiry, PURGE_BATCH],
                    )?;
                    c.execute(
                        "DELETE FROM screen_memory WHERE until < ?1 AND key IN (SELECT key FROM \
                         screen_memory WHERE until < ?1 LIMIT ?2)",
                        crate::params![now, PURGE_BATCH],
                    )?;
                    Ok(())
                })
                .await?;
            Ok(Answer::Greylisted { wait: min })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt<'a>(ip: &str, spf: Option<&'a str>) -> Attempt<'a> {
        Attempt {
            ip: ip.parse().unwrap(),
            sender: "a@sender.test",
            rcpt: "bob@example.test",
            spf_pass: spf,
            allowlisted: false,
        }
    }

    #[tokio::test]
    async fn first_early_late_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = Cfg::default();
        let t0 = 1_000_000;
        let a = attempt("192.0.2.10", None);
        assert_eq!(
            check(&store, &cfg, &a, t0).await.unwrap(),
            Answer::Greylisted { wait: 300 }
        );
        assert_eq!(
            check(&store, &cfg, &a, t0 + 60).await.unwrap(),
            Answer::Greylisted { wait: 240 }
        );
        // The retry may come from another address of the same /24.
        let b = attempt("192.0.2.77", None);
        assert_eq!(
            check(&store, &cfg, &b, t0 + 301).await.unwrap(),
            Answer::Passed
        );
        let other = Attempt {
            rcpt: "carol@example.test",
            ..attempt("192.0.2.200", None)
        };
        assert!(matches!(
            check(&store, &cfg, &other, t0 + 400).await.unwrap(),
            Answer::Exempt(_)
        ));
        // Too late a retry starts over.
        let c = attempt("198.51.100.1", None);
        check(&store, &cfg, &c, t0).await.unwrap();
        assert!(matches!(
            check(&store, &cfg, &c, t0 + 86_401).await.unwrap(),
            Answer::Greylisted { .. }
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_inventing_senders_cannot_fill_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = Cfg::default();
        for i in 0..MAX_PENDING_PER_CLIENT + 50 {
            let sender = format!("s{i}@random{i}.test");
            let a = Attempt {
                sender: &sender,
                ..attempt("192.0.2.10", None)
            };
            assert!(matches!(
                check(&store, &cfg, &a, 1_000_000).await.unwrap(),
                Answer::Greylisted { .. }
            ));
        }
        let rows: i64 = store
            .read(|c| c.query_row("SELECT count(*) FROM greylist", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(rows, MAX_PENDING_PER_CLIENT);
        // Another network has room of its own.
        assert_eq!(pending(&store, "198.51.100.0", 0).unwrap(), 0);
        // Once its triplets have expired, the client is recorded again, and may pass.
        let later = 1_000_000 + cfg.expiry.get().as_secs() as i64 + 1;
        let a = attempt("192.0.2.10", None);
        assert!(matches!(
            check(&store, &cfg, &a, later).await.unwrap(),
            Answer::Greylisted { .. }
        ));
        let retry = later + cfg.min_delay.get().as_secs() as i64;
        assert_eq!(
            check(&store, &cfg, &a, retry).await.unwrap(),
            Answer::Passed
        );
    }

    #[tokio::test]
    async fn spf_pass_keys_by_domain_so_rotating_pools_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = Cfg::default();
        let t0 = 1_000_000;
        let first = attempt("203.0.113.5", Some("sender.test"));
        assert!(matches!(
            check(&store, &cfg, &first, t0).await.unwrap(),
            Answer::Greylisted { .. }
        ));
        let retry = attempt("198.51.100.9", Some("sender.test"));
        assert_eq!(
            check(&store, &cfg, &retry, t0 + 600).await.unwrap(),
            Answer::Passed
        );
        // Good history now: SPF-passing mail from the domain is exempt from any network.
        let later = Attempt {
            rcpt: "dave@example.test",
            ..attempt("192.0.2.99", Some("sender.test"))
        };
        assert_eq!(
            check(&store, &cfg, &later, t0 + 700).await.unwrap(),
            Answer::Exempt("SPF pass from a sender that passed before")
        );
    }

    #[tokio::test]
    async fn opt_out_and_allow_lists_exempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cfg = Cfg {
            opt_out: vec!["@example.test".into()],
            ..Cfg::default()
        };
        assert!(matches!(
            check(&store, &cfg, &attempt("192.0.2.1", None), 0)
                .await
                .unwrap(),
            Answer::Exempt("recipient opted out")
        ));
        let cfg = Cfg::default();
        let a = Attempt {
            allowlisted: true,
            ..attempt("192.0.2.1", None)
        };
        assert_eq!(
            check(&store, &cfg, &a, 0).await.unwrap(),
            Answer::Exempt("on an allow list")
        );
    }
}
