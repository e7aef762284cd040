//! One account's submitted mail in the queue: held while the account is suspended (its
//! remote recipients only: local mail stays local), then released for delivery or deleted
//! when it resumes. Containment calls these inside its own store transaction, so the account's
//! state and its mail change together; the queue alone knows its tables and statuses.

use super::Status;

/// The account that submitted a queued message, from its JSON `meta`, in the store's dialect.
fn auth(c: &crate::store::Conn<'_>) -> &'static str {
    if c.is_pg() {
        "(meta::json ->> 'auth')"
    } else {
        "json_extract(meta, '$.auth')"
    }
}

/// The recipients of messages the account submitted.
fn of_account(c: &crate::store::Conn<'_>) -> String {
    format!("id IN (SELECT id FROM queue WHERE {} = ?1)", auth(c))
}

/// Hold the account's remote recipients that wait for delivery. Returns how many.
pub fn hold(c: &crate::store::Conn<'_>, account: &str, now: i64) -> crate::store::DbResult<usize> {
    c.execute(
        &format!(
            "UPDATE queue_rcpt SET status = '{held}', updated = ?2 \
             WHERE status IN ('{queued}', '{deferred}') AND route = 'remote' AND {of}",
            of = of_account(c),
            held = Status::Held.as_str(),
            queued = Status::Queued.as_str(),
            deferred = Status::Deferred.as_str(),
        ),
        crate::params![account, now],
    )
}

/// How many of the account's recipients are held.
pub fn held(c: &crate::store::Conn<'_>, account: &str) -> crate::store::DbResult<usize> {
    let n: i64 = c.query_row(
        &format!(
            "SELECT count(*) FROM queue_rcpt WHERE status = '{}' AND {of}",
            Status::Held.as_str(),
            of = of_account(c),
        ),
        [account],
        |r| r.get(0),
    )?;
    Ok(n as usize)
}

/// Release the account's held recipients for delivery now. Returns how many.
pub fn release(
    c: &crate::store::Conn<'_>,
    account: &str,
    now: i64,
) -> crate::store::DbResult<usize> {
    let n = c.execute(
        &format!(
            "UPDATE queue_rcpt SET status = '{}', next_attempt = 0, updated = ?2 \
             WHERE status = '{}' AND {of}",
            Status::Deferred.as_str(),
            Status::Held.as_str(),
            of = of_account(c),
        ),
        crate::params![account, now],
    )?;
    finish_done(c, account)?;
    Ok(n)
}

/// Delete the account's held recipients (they fail, without a bounce). Returns how many.
pub fn delete(
    c: &crate::store::Conn<'_>,
    account: &str,
    now: i64,
) -> crate::store::DbResult<usize> {
    let n = c.execute(
        &format!(
            "UPDATE queue_rcpt SET status = '{}', last_reply = 'deleted when the account resumed', \
             updated = ?2 WHERE status = '{}' AND {of}",
            Status::Failed.as_str(),
            Status::Held.as_str(),
            of = of_account(c),
        ),
        crate::params![account, now],
    )?;
    finish_done(c, account)?;
    Ok(n)
}

/// The account's messages with nothing left to do go (their spool files, if any, are
/// removed as orphans at the next start).
fn finish_done(c: &crate::store::Conn<'_>, account: &str) -> crate::store::DbResult<()> {
    let ids: Vec<String> = c.query_map(
        &format!("SELECT id FROM queue WHERE {} = ?1", auth(c)),
        [account],
        |r| r.get(0),
    )?;
    for id in ids {
        super::finish_if_done(c, &id)?;
    }
    Ok(())
}
