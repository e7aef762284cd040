//! Free space on the filesystem of `data_dir`, against `limits.min_free_space`: below it MAIL,
//! DATA and a message's first BDAT get `452 4.3.1`, so a full disk never leaves a
//! half-written message behind. Many sessions ask; `statvfs` runs at most once a second.
//! A filesystem that cannot be asked counts as full (fail closed).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RECHECK: Duration = Duration::from_secs(1);

pub struct FreeSpace {
    dir: PathBuf,
    min: u64,
    last: Mutex<Option<(Instant, bool)>>,
}

impl FreeSpace {
    pub fn new(dir: PathBuf, min: u64) -> FreeSpace {
        FreeSpace {
            dir,
            min,
            last: Mutex::new(None),
        }
    }

    /// Is free space below the minimum?
    pub fn is_low(&self) -> bool {
        if self.min == 0 {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, low)) = *last
            && at.elapsed() < RECHECK
        {
            return low;
        }
        let low = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize) < self.min,
            Err(e) => {
                tracing::error!(event = "statvfs_failed", dir = %self.dir.display(), error = %e);
                true
            }
        };
        if low && !last.is_some_and(|(_, was)| was) {
            tracing::warn!(event = "storage_low", dir = %self.dir.display(), min_free = self.min,
                "free space below limits.min_free_space: new messages get 452 4.3.1");
        }
        *last = Some((Instant::now(), low));
        low
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimum_above_the_disk_is_low_and_none_is_never_low() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FreeSpace::new(dir.path().into(), u64::MAX).is_low());
        assert!(!FreeSpace::new(dir.path().into(), 0).is_low());
        assert!(!FreeSpace::new(dir.path().into(), 1).is_low());
        assert!(
            FreeSpace::new(dir.path().join("missing"), 1).is_low(),
            "fails closed"
        );
    }
}
