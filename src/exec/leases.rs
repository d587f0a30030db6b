//! The driver's watch over the leases of the attempts it placed: it is what tells a stopped or
//! hung `kitt work` (whose process still exists, so its claim still looks held) from a slow one.
//! Expiry is judged on the driver's own clock from the renewals it observes (`run::lease`), and
//! an expired attempt is marked so that the unit's next attempt may claim it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Leases;
use crate::run::lease::file::{Watch, mark_expired, newest};
use crate::run::lease::{Epoch, RealClock};

/// Watches `attempts/<unit>/<n>.lease` of each placed unit's newest attempt.
pub struct LeaseWatches {
    attempts: PathBuf,
    lease: Duration,
    watching: HashMap<String, (Epoch, Watch<RealClock>)>,
}

impl LeaseWatches {
    pub fn new(run_dir: &Path, lease: Duration) -> LeaseWatches {
        LeaseWatches { attempts: run_dir.join("attempts"), lease, watching: HashMap::new() }
    }
}

impl Leases for LeaseWatches {
    /// The attempt a unit placed now claims is the one after its newest (this driver is the
    /// only one placing the run's units). Until that attempt's first lease appears, the watch
    /// counts from now: an attempt that never claims expires too.
    fn placed(&mut self, unit: &str) {
        let dir = self.attempts.join(unit);
        let epoch = newest(&dir).map_or(0, |n| n + 1);
        self.watching.insert(unit.to_string(), (epoch, Watch::new(&dir, epoch, self.lease, RealClock::default())));
    }

    fn adopted(&mut self, unit: &str, attempt: u32) {
        let dir = self.attempts.join(unit);
        self.watching.insert(unit.to_string(), (attempt, Watch::new(&dir, attempt, self.lease, RealClock::default())));
    }

    fn expired(&mut self, unit: &str) -> bool {
        let Some((epoch, watch)) = self.watching.get_mut(unit) else { return false };
        if !watch.poll() {
            return false;
        }
        let dir = self.attempts.join(unit);
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| mark_expired(&dir, *epoch)) {
            tracing::warn!("cannot mark attempt {epoch} of unit {unit} expired under {}: {e}", dir.display());
        }
        true
    }
}

/// No lease is watched: the executor's own system judges liveness (Slurm marks a silent node
/// down and requeues its tasks, a hung task meets its time limit), and a task pending in a queue
/// for hours has no lease to renew yet.
pub struct NoLeases;

impl Leases for NoLeases {
    fn placed(&mut self, _: &str) {}

    fn adopted(&mut self, _: &str, _: u32) {}

    fn expired(&mut self, _: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_that_stops_renewing_expires_and_is_marked() {
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("attempts/u");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0"), b"{}").unwrap();
        let mut w = LeaseWatches::new(run.path(), Duration::from_millis(150));
        w.placed("u");
        assert_eq!(w.watching["u"].0, 1, "the next attempt is watched");
        let write = |n: u64| std::fs::write(dir.join("1.lease"), format!(r#"{{"epoch":1,"counter":{n}}}"#)).unwrap();
        for n in 0..5 {
            write(n);
            assert!(!w.expired("u"), "renewed, so not expired");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(w.expired("u"), "no renewal for a lease");
        assert!(crate::run::lease::file::marked_expired(&dir, 1));
        assert!(!crate::run::lease::file::marked_expired(&dir, 0));
        assert!(!w.expired("other"), "an unwatched unit is never expired");
    }
}
