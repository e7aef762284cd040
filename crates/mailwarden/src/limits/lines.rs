//! One at a time per client address: a line that a client's concurrent attempts wait in
//! (AUTH password checks), so more connections only queue behind the first and every one of
//! them meets the same failures, turns and blocks. How many can wait is bounded by
//! `smtp.max_connections_per_ip`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// One AUTH in progress per client address; the rest wait in line. How many can wait is
/// bounded by `smtp.max_connections_per_ip` (a session has one AUTH at a time).
#[derive(Default)]
pub struct Lines(std::sync::Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>);

/// A place in an address's line, at its head once [`Lines::enter`] returns; leaving it (or
/// giving up waiting) lets the next attempt in, and the last to leave forgets the line.
pub struct Place<'a> {
    lines: &'a Lines,
    ip: IpAddr,
    line: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Lines {
    pub async fn enter(&self, ip: IpAddr) -> Place<'_> {
        let line = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ip)
            .or_default()
            .clone();
        // In place before the wait, so a session dropped while waiting still leaves.
        let mut place = Place {
            lines: self,
            ip,
            line: Some(line.clone()),
            guard: None,
        };
        place.guard = Some(line.lock_owned().await);
        place
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        drop(self.line.take());
        let mut m = self.lines.0.lock().unwrap_or_else(|e| e.into_inner());
        // Nobody else holds or waits for this address's line: forget it.
        if m.get(&self.ip).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;
    use std::time::Duration;

    #[tokio::test]
    async fn a_line_is_forgotten_when_the_last_attempt_leaves_even_one_that_gave_up_waiting() {
        let lines = Lines::default();
        let ip = "192.0.2.7".parse().unwrap();
        let first = lines.enter(ip).await;
        // A second session of the address waits, then goes away before its turn.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), lines.enter(ip)).await;
        assert!(gave_up.is_err(), "the line has one place at its head");
        assert_eq!(lines.0.lock().unwrap().len(), 1);
        drop(first);
        assert!(lines.0.lock().unwrap().is_empty());
    }
}
