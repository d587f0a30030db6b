//! Leases, epochs and fencing for unit attempts: why a stopped or partitioned `kitt work` cannot
//! commit after its unit was given to another attempt.
//!
//! An attempt's number is its **epoch**. While it runs, an attempt renews its lease by bumping a
//! counter in `attempts/<unit>/<n>.lease` (written atomically) every renewal interval. A driver
//! judges expiry on its *own* monotonic clock from the renewals it observes: when the counter has
//! not moved for `lease`, the attempt is expired. No clock is ever compared across hosts. The
//! attempt, for its part, stops (commits nothing more) once its own last successful renewal is
//! `lease` old on its clock or a higher attempt exists: since a driver only judges expiry after
//! observing no renewal for `lease`, an attempt that passes that check cannot have been judged
//! expired yet, and every commit carries its epoch into `steps/<key>/.committed`.
//!
//! `lease` must be at least 3× the renewal interval plus the filesystem's attribute-cache time
//! (NFS `acregmax`, 60 s by default): two renewals may be lost or late without an expiry, and a
//! driver on another host may see a renewal that late.
//!
//! The protocol is the [`Unit`] state machine below, every transition in [`Unit::step`], which the
//! property test drives directly with a [`FakeClock`]; [`file`] is the same rules on disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod file;
#[cfg(test)]
mod tests;

/// Test hook: the renewal interval in milliseconds. Never set it outside tests.
pub const RENEW_ENV: &str = "KITT_TEST_LEASE_RENEW_MS";
/// Test hook: the lease length in milliseconds (4× the renewal interval when only that is set).
/// Never set it outside tests.
pub const LEASE_ENV: &str = "KITT_TEST_LEASE_MS";

/// A monotonic clock: the time since an arbitrary origin of this process.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// The real clock: `Instant` (CLOCK_MONOTONIC, which keeps running while a process is stopped).
#[derive(Debug, Clone, Copy)]
pub struct RealClock(Instant);

impl Default for RealClock {
    fn default() -> Self {
        RealClock(Instant::now())
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// How often an attempt renews and how long a silent lease lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub renew: Duration,
    pub lease: Duration,
}

impl Default for LeaseConfig {
    /// Renew every 10 s; a lease of 3 × 10 s plus NFS's default `acregmax` of 60 s.
    fn default() -> Self {
        LeaseConfig { renew: Duration::from_secs(10), lease: Duration::from_secs(90) }
    }
}

impl LeaseConfig {
    /// The default, or the test hooks' values.
    pub fn from_env() -> LeaseConfig {
        let ms = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
        let d = LeaseConfig::default();
        let renew = ms(RENEW_ENV).unwrap_or(d.renew);
        let lease = ms(LEASE_ENV).unwrap_or(if renew == d.renew { d.lease } else { renew * 4 });
        LeaseConfig { renew, lease }
    }
}

/// The attempt's rule: its lease has lapsed once its last successful renewal is `lease` old.
pub fn lapsed(now: Duration, renewed_at: Duration, lease: Duration) -> bool {
    now.saturating_sub(renewed_at) >= lease
}

/// The driver's rule: an attempt is expired once its counter has not moved for `lease` since the
/// driver last saw it move.
pub fn expired(now: Duration, seen_at: Duration, lease: Duration) -> bool {
    now.saturating_sub(seen_at) >= lease
}

pub type Epoch = u32;

/// A unit, as the run directory says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    Pending,
    Claimed(Epoch),
    Done,
    /// `max_attempts` attempts ended without committing every key.
    Failed,
}

/// An attempt, as the driver judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    Live,
    /// The driver saw no renewal for `lease`.
    Expired,
    /// A higher attempt of the unit was claimed.
    Superseded,
    /// It committed the unit's last key.
    Finished,
    Cancelled,
}

/// One measured step's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Open,
    Committed(Epoch),
    Failed,
}

/// One attempt: the driver's judgement, the attempt's own view, and what the driver observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub state: AttemptState,
    /// Its lease file's counter, and when it last renewed it (on its own clock).
    pub counter: u64,
    pub renewed_at: Duration,
    /// It found its lease lapsed or a higher attempt: it commits nothing more.
    pub stopped: bool,
    /// The counter as the driver last saw it, and when the driver saw it move (on its clock).
    pub seen_counter: u64,
    pub seen_at: Duration,
}

/// What happens to a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The driver claims the next attempt (superseding an expired or cancelled one).
    Claim,
    /// The attempt renews its lease.
    Renew(Epoch),
    /// The driver reads the attempt's lease file.
    Observe(Epoch),
    /// The driver reads the lease file and expires the attempt if it has not moved for `lease`.
    Expire(Epoch),
    /// The attempt commits a key.
    Commit(Epoch, String),
    /// The attempt is cancelled (and ends).
    Cancel(Epoch),
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Claimed(Epoch),
    Renewed,
    Observed,
    Expired,
    Committed,
    /// Another attempt's commit of the key stands (the exclusive rename refused this one).
    Duplicate,
    /// The attempt found its lease lapsed or a higher attempt: it stopped, committing nothing.
    Fenced,
    Cancelled,
    /// Not allowed in this state: nothing changed.
    Refused(&'static str),
}

/// A unit's leases: the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub state: UnitState,
    pub attempts: Vec<Attempt>,
    pub keys: BTreeMap<String, KeyState>,
    pub max_attempts: u32,
    pub lease: Duration,
}

impl Unit {
    pub fn new(keys: impl IntoIterator<Item = String>, max_attempts: u32, lease: Duration) -> Unit {
        let keys = keys.into_iter().map(|k| (k, KeyState::Open)).collect();
        Unit { state: UnitState::Pending, attempts: Vec::new(), keys, max_attempts, lease }
    }

    /// The newest attempt's epoch.
    pub fn newest(&self) -> Option<Epoch> {
        self.attempts.len().checked_sub(1).map(|n| n as Epoch)
    }

    /// Every transition of a unit and its attempts, at time `now`.
    pub fn step(&mut self, input: Input, now: Duration) -> Outcome {
        let lease = self.lease;
        let newest = self.newest();
        match input {
            Input::Claim => {
                if matches!(self.state, UnitState::Done | UnitState::Failed) {
                    return Outcome::Refused("the unit has ended");
                }
                if let Some(prev) = self.attempts.last_mut() {
                    match prev.state {
                        AttemptState::Expired | AttemptState::Cancelled => prev.state = AttemptState::Superseded,
                        _ => return Outcome::Refused("the newest attempt still holds the unit"),
                    }
                }
                let epoch = self.attempts.len() as Epoch;
                self.attempts.push(Attempt {
                    state: AttemptState::Live,
                    counter: 0,
                    renewed_at: now,
                    stopped: false,
                    seen_counter: 0,
                    seen_at: now,
                });
                self.state = UnitState::Claimed(epoch);
                Outcome::Claimed(epoch)
            }
            Input::Renew(e) => {
                let Some(a) = self.attempts.get_mut(e as usize) else { return Outcome::Refused("no such attempt") };
                if a.stopped || matches!(a.state, AttemptState::Finished | AttemptState::Cancelled) {
                    return Outcome::Refused("the attempt has ended");
                }
                // What the attempt can see: its own clock and the attempt files.
                if lapsed(now, a.renewed_at, lease) || newest != Some(e) {
                    a.stopped = true;
                    return Outcome::Fenced;
                }
                a.counter += 1;
                a.renewed_at = now;
                Outcome::Renewed
            }
            Input::Observe(e) | Input::Expire(e) => {
                let Some(a) = self.attempts.get_mut(e as usize) else { return Outcome::Refused("no such attempt") };
                if a.counter != a.seen_counter {
                    a.seen_counter = a.counter;
                    a.seen_at = now;
                }
                if !matches!(input, Input::Expire(_)) {
                    return Outcome::Observed;
                }
                if a.state != AttemptState::Live || !expired(now, a.seen_at, lease) {
                    return Outcome::Refused("not a live attempt whose lease ran out");
                }
                a.state = AttemptState::Expired;
                self.end_attempt(e);
                Outcome::Expired
            }
            Input::Commit(e, key) => {
                let Some(a) = self.attempts.get_mut(e as usize) else { return Outcome::Refused("no such attempt") };
                if a.stopped || matches!(a.state, AttemptState::Finished | AttemptState::Cancelled) {
                    return Outcome::Refused("the attempt has ended");
                }
                // The fence, from what the attempt can see: no higher attempt, its lease not lapsed.
                if lapsed(now, a.renewed_at, lease) || newest != Some(e) {
                    a.stopped = true;
                    return Outcome::Fenced;
                }
                match self.keys.get_mut(&key) {
                    None => Outcome::Refused("no such key"),
                    Some(KeyState::Open) => {
                        self.keys.insert(key, KeyState::Committed(e));
                        if self.keys.values().all(|k| matches!(k, KeyState::Committed(_))) {
                            a.state = AttemptState::Finished;
                            self.state = UnitState::Done;
                        }
                        Outcome::Committed
                    }
                    Some(_) => Outcome::Duplicate,
                }
            }
            Input::Cancel(e) => {
                let Some(a) = self.attempts.get_mut(e as usize) else { return Outcome::Refused("no such attempt") };
                if a.state != AttemptState::Live {
                    return Outcome::Refused("not a live attempt");
                }
                a.state = AttemptState::Cancelled;
                self.end_attempt(e);
                Outcome::Cancelled
            }
        }
    }

    /// The newest attempt `e` ended without finishing: the unit fails once it was the last allowed.
    fn end_attempt(&mut self, e: Epoch) {
        if self.newest() == Some(e) && e + 1 >= self.max_attempts {
            self.state = UnitState::Failed;
            for k in self.keys.values_mut() {
                if *k == KeyState::Open {
                    *k = KeyState::Failed;
                }
            }
        }
    }
}
