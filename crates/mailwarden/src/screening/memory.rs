//! What clients proved, kept in the store until a time: `pregreet:IP` (waited for the
//! banner), `grey:NETWORK` (passed greylisting), `sender:DOMAIN` (passed greylisting with SPF).
//! Times come from the caller's clock, in seconds, so tests can move them.

use crate::store::Optional;
use crate::store::{Store, StoreError};

/// Is `key` remembered at `now`?
pub fn known(store: &Store, key: &str, now: i64) -> Result<bool, StoreError> {
    let until: Option<i64> = store.read(|c| {
        c.query_row(
            "SELECT until FROM screen_memory WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
    })?;
    Ok(until.is_some_and(|u| u > now))
}

/// Remember `key` until `until`.
pub async fn remember(store: &Store, key: String, until: i64) -> Result<(), StoreError> {
    store
        .write(move |c| {
            c.execute(
                "INSERT INTO screen_memory(key, until) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET until = \
                 CASE WHEN screen_memory.until > ?2 THEN screen_memory.until ELSE ?2 END",
                crate::params![key, until],
            )?;
            Ok(())
        })
        .await
}

/// Forget `key` (an IP that misbehaved loses its pregreet exemption).
pub async fn forget(store: &Store, key: String) -> Result<(), StoreError> {
    store
        .write(move |c| {
            c.execute("DELETE FROM screen_memory WHERE key = ?1", [key])?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembered_until_expiry_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!known(&store, "pregreet:127.0.0.9", 100).unwrap());
        remember(&store, "pregreet:127.0.0.9".into(), 200)
            .await
            .unwrap();
        assert!(known(&store, "pregreet:127.0.0.9", 199).unwrap());
        assert!(!known(&store, "pregreet:127.0.0.9", 200).unwrap());
        forget(&store, "pregreet:127.0.0.9".into()).await.unwrap();
        assert!(!known(&store, "pregreet:127.0.0.9", 100).unwrap());
    }
}
