//! One account's submitted mail in the queue: held while the account is suspended (its
//! remote recipients only: local mail stays local), then released for delivery or deleted
//! when it resumes. Containment calls these inside its own store transaction, so the account's
//! state and its mail change together; the queue alone knows its tables and statuses.

use super::Status;

/// The recipients of messages the account submitted.
const OF_ACCOUNT: &str = "id IN (SELECT id FROM queue WHERE json_extract(meta, '$.auth') = ?1)";

/// Hold the account's remote recipients that wait for delivery. Returns how many.
pub fn hold(c: &crate::store::Conn<'_>, account: &str, now: i64) -> crate::store::DbResult<usize> {
    c.execute(
        &format!(
            "UPDATE queue_rcpt SET status = '{held}', updated = ?2 \
             WHERE status IN ('{queued}', '{deferred}') AND route = 'remote' AND {OF_ACCOUNT}",
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
            "SELECT count(*) FROM queue_rcpt WHERE status = '{}' AND {OF_ACCOUNT}",
            Status::Held.as_str()
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
             WHERE status = '{}' AND {OF_ACCOUNT}",
            Status::Deferred.as_str(),
            Status::Held.as_str()
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
             updated = ?2 WHERE status = '{}' AND {OF_ACCOUNT}",
            Status::Failed.as_str(),
            Status::Held.as_str()
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
        "SELECT id FROM queue WHERE json_extract(meta, '$.auth') = ?1",
        [account],
        |r| r.get(0),
    )?;
    for id in ids {
        super::finish_if_done(c, &id)?;
    }
    Ok(())
}
