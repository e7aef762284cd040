//! Decision records: one per SMTP transaction, accepted, rejected or tempfailed, kept in the
//! store for `records.retention` (30 days), so `mailwarden log search` finds it and
//! `mailwarden explain ID` says why it got its verdict, deciding reasons first.
//!
//! A record holds who the client was (IP, PTR, HELO, TLS, account), the envelope, the
//! Message-ID and Subject, every check's typed reason with its detail and score, the action
//! and the exact reply sent. Reasons use the stable codes of `decision::Kind`, so searches by
//! reason keep working across versions. `score` is the score the decision was taken on: the
//! sum of the reasons marked `counted`.

pub mod report;

use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Expired records removed per write, so retention never costs one long delete.
const PURGE_BATCH: i64 = 200;
static PURGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One finding, as a record keeps it (made by `decision::Finding::record`; stored as text so
/// old records stay readable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The finding's family: `screen`, `spf`, `dkim`, `dmarc`, `rcpt`, `limits`, ...
    pub check: String,
    /// The stable reason code (`decision::Kind::code`), e.g. `dnsbl_score`, `dmarc.fail`,
    /// `rcpt.no_such_local_user`; or `would_<action>` for what observe mode kept from acting.
    pub code: String,
    pub detail: String,
    pub score: f64,
    /// This reason decided the action.
    pub deciding: bool,
    /// Its score is part of the record's `score`, the one the decision was taken on.
    #[serde(default)]
    pub counted: bool,
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rcpt {
    pub address: String,
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Record {
    /// The queue id of the transaction (assigned at MAIL FROM).
    pub id: String,
    /// Unix time of the decision.
    pub time: i64,
    pub session: String,
    pub listener: String,
    pub ip: String,
    pub ptr: Option<String>,
    pub helo: String,
    pub tls: Option<String>,
    pub account: Option<String>,
    pub mail_from: String,
    pub rcpts: Vec<Rcpt>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub reasons: Vec<Reason>,
    /// The score the decision was taken on (the content score, or the DNS lists' weight when
    /// they refused): the sum of the `counted` reasons.
    pub score: f64,
    /// `accept`, `junk`, `tempfail`, `reject`, or `abandoned` (the client left or reset
    /// before DATA without being refused anything).
    pub action: String,
    /// The reply that carried the decision (the final one of DATA, or a refusal).
    pub reply: String,
}

/// Store a record, and drop a batch of expired ones. `retention` in seconds.
pub async fn save(store: &Store, rec: Record, retention: i64) -> Result<(), StoreError> {
    metrics::counter!("mailwarden_verdicts_total", "action" => rec.action.clone()).increment(1);
    let data = serde_json::to_string(&rec).unwrap_or_default();
    let rcpts: String = rec
        .rcpts
        .iter()
        .map(|r| r.address.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    // Surrounded by spaces so a search for one code matches whole codes only.
    let codes = format!(
        " {} ",
        rec.reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO decisions(id, time, ip, sender, rcpts, action, codes, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO UPDATE SET \
                 time = excluded.time, ip = excluded.ip, sender = excluded.sender, \
                 rcpts = excluded.rcpts, action = excluded.action, codes = excluded.codes, \
                 data = excluded.data",
                crate::params![
                    rec.id,
                    rec.time,
                    rec.ip,
                    rec.mail_from.to_ascii_lowercase(),
                    rcpts,
                    rec.action,
                    codes,
                    data
                ],
            )?;
            if crate::store::purge_due(&PURGES) {
                c.execute(
                    "DELETE FROM decisions WHERE time < ?1 AND id IN (SELECT id FROM decisions \
                     WHERE time < ?1 LIMIT ?2)",
                    crate::params![rec.time - retention, PURGE_BATCH],
                )?;
            }
            Ok(())
        })
        .await
}

/// What `log search` looks for; every given field must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ip: Option<String>,
    /// The envelope sender, or `@domain` for any sender of a domain.
    pub sender: Option<String>,
    pub rcpt: Option<String>,
    /// Unix time.
    pub since: Option<i64>,
    pub action: Option<String>,
    /// A reason code.
    pub reason: Option<String>,
    pub limit: usize,
}

/// Records matching `f`, newest first.
pub fn search(store: &Store, f: &Filter) -> Result<Vec<Record>, StoreError> {
    let mut sql = String::from("SELECT data FROM decisions WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: String| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(ip) = &f.ip {
        arg(&mut sql, " AND ip = ?", ip.clone());
    }
    if let Some(s) = &f.sender {
        let s = s.to_ascii_lowercase();
        if s.starts_with('@') {
            arg(
                &mut sql,
                " AND sender LIKE ? ESCAPE '\\'",
                format!("%{}", like_escape(&s)),
            );
        } else {
            arg(&mut sql, " AND sender = ?", s);
        }
    }
    if let Some(r) = &f.rcpt {
        let r = like_escape(&r.to_ascii_lowercase());
        arg(
            &mut sql,
            " AND (' ' || rcpts || ' ') LIKE ? ESCAPE '\\'",
            format!("% {r} %"),
        );
    }
    if let Some(t) = f.since {
        arg(&mut sql, " AND time >= CAST(? AS BIGINT)", t.to_string());
    }
    if let Some(a) = &f.action {
        arg(&mut sql, " AND action = ?", a.clone());
    }
    if let Some(code) = &f.reason {
        arg(
            &mut sql,
            " AND codes LIKE ? ESCAPE '\\'",
            format!("% {} %", like_escape(code)),
        );
    }
    sql.push_str(&format!(
        " ORDER BY time DESC, id DESC LIMIT {}",
        f.limit.max(1)
    ));
    let rows: Vec<String> = store.read(|c| {
        c.query_map(
            &sql,
            args.iter()
                .map(|a| crate::store::Value::Text(a.clone()))
                .collect::<Vec<_>>(),
            |r| r.get(0),
        )
    })?;
    Ok(rows
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect())
}

/// One record by id.
pub fn get(store: &Store, id: &str) -> Result<Option<Record>, StoreError> {
    let row: Option<String> = store.read(|c| {
        use crate::store::Optional;
        c.query_row("SELECT data FROM decisions WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
    })?;
    Ok(row.and_then(|d| serde_json::from_str(&d).ok()))
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The unfolded value of the first `name:` field of a message's header section.
pub fn header_value(raw: &[u8], name: &str) -> Option<String> {
    crate::header::value(raw, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, time: i64, ip: &str, action: &str, code: &str) -> Record {
        Record {
            id: id.into(),
            time,
            ip: ip.into(),
            mail_from: "Spam@Bad.test".into(),
            rcpts: vec![Rcpt {
                address: "alice@example.test".into(),
                reply: "550 5.7.1 no".into(),
            }],
            reasons: vec![Reason {
                check: "screen".into(),
                code: code.into(),
                detail: "d".into(),
                score: 1.0,
                deciding: true,
                counted: false,
            }],
            action: action.into(),
            ..Record::default()
        }
    }

    #[tokio::test]
    async fn saved_found_by_every_filter_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        save(
            &store,
            rec("A", 1000, "127.0.0.2", "reject", "dnsbl_score"),
            86400,
        )
        .await
        .unwrap();
        save(
            &store,
            rec("B", 2000, "127.0.0.3", "accept", "spf.pass"),
            86400,
        )
        .await
        .unwrap();
        let ids = |f: Filter| -> Vec<String> {
            search(&store, &Filter { limit: 10, ..f })
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids(Filter::default()), ["B", "A"]);
        assert_eq!(
            ids(Filter {
                ip: Some("127.0.0.2".into()),
                ..Filter::default()
            }),
            ["A"]
        );
        assert_eq!(
            ids(Filter {
                action: Some("accept".into()),
                ..Filter::default()
            }),
            ["B"]
        );
        assert_eq!(
            ids(Filter {
                reason: Some("dnsbl_score".into()),
                ..Filter::default()
            }),
            ["A"]
        );
        // Whole codes only: `dnsbl` is not `dnsbl_score`.
        assert!(
            ids(Filter {
                reason: Some("dnsbl".into()),
                ..Filter::default()
            })
            .is_empty()
        );
        assert_eq!(
            ids(Filter {
                since: Some(1500),
                ..Filter::default()
            }),
            ["B"]
        );
        assert_eq!(
            ids(Filter {
                sender: Some("spam@bad.test".into()),
                ..Filter::default()
            })
            .len(),
            2
        );
        assert_eq!(
            ids(Filter {
                sender: Some("@bad.test".into()),
                ..Filter::default()
            })
            .len(),
            2
        );
        assert_eq!(
            ids(Filter {
                rcpt: Some("ALICE@example.test".into()),
                ..Filter::default()
            })
            .len(),
            2
        );
        assert!(
            ids(Filter {
                rcpt: Some("lice@example.test".into()),
                ..Filter::default()
            })
            .is_empty()
        );
        assert_eq!(get(&store, "A").unwrap().unwrap().ip, "127.0.0.2");
        // Records a day newer push A and B past a one-day retention: gone within one purge
        // interval of saves.
        for i in 0..crate::store::PURGE_EVERY {
            let id = format!("C{i:02}");
            let r = rec(&id, 2000 + 86400 + 1, "127.0.0.4", "accept", "x");
            save(&store, r, 86400).await.unwrap();
        }
        assert!(get(&store, "A").unwrap().is_none());
        assert!(get(&store, "B").unwrap().is_none());
        assert!(get(&store, "C00").unwrap().is_some());
    }

    #[test]
    fn header_values_are_unfolded() {
        let raw =
            b"From: a@b\r\nSubject: hello\r\n  world\r\nMessage-ID: <1@x>\r\n\r\nSubject: body";
        assert_eq!(header_value(raw, "subject").as_deref(), Some("hello world"));
        assert_eq!(header_value(raw, "Message-Id").as_deref(), Some("<1@x>"));
        assert_eq!(header_value(raw, "To"), None);
    }
}
