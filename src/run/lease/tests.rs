//! The property test of the lease state machine: random interleavings of claims, renewals,
//! observations, expiries, commits and cancellations over several units, each step checked
//! against what must never happen, and every unit driven to an end.

use std::time::Duration;

use super::*;

/// splitmix64: a small seeded generator, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const LEASE: Duration = Duration::from_millis(300);

fn random_input(u: &Unit, rng: &mut Rng) -> Input {
    let epoch = match u.newest() {
        // Mostly the newest attempt, sometimes an older one (a straggler).
        Some(n) if rng.below(4) == 0 => rng.below(n as u64 + 1) as Epoch,
        Some(n) => n,
        None => 0,
    };
    match rng.below(10) {
        0 => Input::Claim,
        1..=3 => Input::Renew(epoch),
        4 => Input::Observe(epoch),
        5 => Input::Expire(epoch),
        6..=8 => Input::Commit(epoch, format!("k{}", rng.below(u.keys.len() as u64))),
        _ => Input::Cancel(epoch),
    }
}

/// Checks one transition against the properties; `commits` is every commit that stood.
fn check(before: &Unit, input: &Input, out: &Outcome, after: &Unit, commits: &mut Vec<(String, Epoch)>, seed: u64) {
    if let (Input::Commit(e, key), Outcome::Committed) = (input, out) {
        let a = &before.attempts[*e as usize];
        assert_eq!(a.state, AttemptState::Live, "seed {seed}: a commit from a {:?} attempt {e}", a.state);
        assert_eq!(before.newest(), Some(*e), "seed {seed}: a commit from superseded attempt {e}");
        assert!(!commits.iter().any(|(k, _)| k == key), "seed {seed}: a second commit of {key}");
        commits.push((key.clone(), *e));
    }
    for (e, a) in after.attempts.iter().enumerate() {
        if a.state == AttemptState::Live {
            assert_eq!(after.newest(), Some(e as Epoch), "seed {seed}: a live attempt below the newest");
        }
    }
    for (key, state) in &after.keys {
        if let KeyState::Committed(e) = state {
            assert!(commits.contains(&(key.clone(), *e)), "seed {seed}: {key} committed by {e} without a commit");
        }
    }
}

/// Drives a unit to its end: the newest attempt stops renewing, the driver expires it and claims
/// another, until the unit is done or out of attempts.
fn drain(u: &mut Unit, clock: &FakeClock, commits: &mut Vec<(String, Epoch)>, seed: u64) {
    for _ in 0..(u.max_attempts as usize + 2) * 4 {
        if matches!(u.state, UnitState::Done | UnitState::Failed) {
            return;
        }
        let input = match u.newest().map(|n| (n, u.attempts[n as usize].state)) {
            Some((n, AttemptState::Live)) => {
                clock.advance(LEASE);
                Input::Expire(n)
            }
            _ => Input::Claim,
        };
        let before = u.clone();
        let out = u.step(input.clone(), clock.now());
        check(&before, &input, &out, u, commits, seed);
    }
    panic!("seed {seed}: the unit never ended: {u:?}");
}

#[test]
fn leases_commit_each_key_at_most_once_never_from_a_superseded_attempt_and_every_key_ends() {
    let mut stats = [0usize; 4];
    for seed in 0..400u64 {
        let mut rng = Rng(seed);
        let clock = FakeClock::default();
        let mut units: Vec<Unit> = (0..3)
            .map(|_| {
                let keys = (0..1 + rng.below(4)).map(|k| format!("k{k}"));
                Unit::new(keys, 1 + rng.below(4) as u32, LEASE)
            })
            .collect();
        let mut commits: Vec<Vec<(String, Epoch)>> = vec![Vec::new(); units.len()];
        for _ in 0..200 {
            // Time moves in steps around the renewal interval, sometimes a whole lease at once.
            clock.advance(Duration::from_millis(if rng.below(8) == 0 { 300 } else { rng.below(120) }));
            let i = rng.below(units.len() as u64) as usize;
            let input = random_input(&units[i], &mut rng);
            let before = units[i].clone();
            let out = units[i].step(input.clone(), clock.now());
            match out {
                Outcome::Committed => stats[0] += 1,
                Outcome::Fenced => stats[1] += 1,
                Outcome::Expired => stats[2] += 1,
                Outcome::Duplicate => stats[3] += 1,
                _ => {}
            }
            check(&before, &input, &out, &units[i], &mut commits[i], seed);
        }
        for (u, c) in units.iter_mut().zip(&mut commits) {
            drain(u, &clock, c, seed);
            for (key, state) in &u.keys {
                assert!(
                    matches!(state, KeyState::Committed(_))
                        || (*state == KeyState::Failed && u.state == UnitState::Failed),
                    "seed {seed}: {key} ended {state:?} in a {:?} unit",
                    u.state
                );
            }
            assert!(u.attempts.len() <= u.max_attempts as usize, "seed {seed}: more than max_attempts");
        }
    }
    // The interleavings reach every interesting transition, so the assertions above were exercised.
    assert!(stats.iter().all(|n| *n > 20), "committed, fenced, expired, duplicate: {stats:?}");
}

#[test]
fn a_stopped_attempt_is_expired_by_the_driver_and_fenced_when_it_resumes() {
    let clock = FakeClock::default();
    let mut u = Unit::new(["a".to_string(), "b".to_string()], 3, LEASE);
    assert_eq!(u.step(Input::Claim, clock.now()), Outcome::Claimed(0));
    clock.advance(Duration::from_millis(100));
    assert_eq!(u.step(Input::Renew(0), clock.now()), Outcome::Renewed);
    assert_eq!(u.step(Input::Commit(0, "a".into()), clock.now()), Outcome::Committed);
    // While it renews, the driver never expires it; a claim is refused.
    for _ in 0..10 {
        clock.advance(Duration::from_millis(100));
        assert_eq!(u.step(Input::Renew(0), clock.now()), Outcome::Renewed);
        assert!(matches!(u.step(Input::Expire(0), clock.now()), Outcome::Refused(_)));
    }
    assert!(matches!(u.step(Input::Claim, clock.now()), Outcome::Refused(_)));
    // Stopped: no renewals for a lease.
    clock.advance(LEASE);
    assert_eq!(u.step(Input::Expire(0), clock.now()), Outcome::Expired);
    assert_eq!(u.step(Input::Claim, clock.now()), Outcome::Claimed(1));
    assert_eq!(u.attempts[0].state, AttemptState::Superseded);
    // Resumed: it can neither renew nor commit.
    assert_eq!(u.step(Input::Commit(0, "b".into()), clock.now()), Outcome::Fenced);
    assert!(matches!(u.step(Input::Renew(0), clock.now()), Outcome::Refused(_)));
    assert_eq!(u.step(Input::Commit(1, "a".into()), clock.now()), Outcome::Duplicate);
    assert_eq!(u.step(Input::Commit(1, "b".into()), clock.now()), Outcome::Committed);
    assert_eq!(u.state, UnitState::Done);
    assert_eq!(u.keys["a"], KeyState::Committed(0));
    assert_eq!(u.keys["b"], KeyState::Committed(1));
}

#[test]
fn the_renewer_fences_once_superseded_and_the_watch_expires_a_silent_lease() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("0"), b"{}").unwrap();
    let cfg = LeaseConfig { renew: Duration::from_secs(3600), lease: Duration::from_secs(10) };
    let attempt_clock = FakeClock::default();
    let r = file::Renewer::start(d.path(), 0, cfg, Arc::new(attempt_clock.clone()), Box::new(|_| {})).unwrap();
    let driver = FakeClock::default();
    let mut watch = file::Watch::new(d.path(), 0, cfg.lease, driver.clone());
    assert!(!watch.poll());
    driver.advance(Duration::from_secs(6));
    attempt_clock.advance(Duration::from_secs(6));
    r.renew().unwrap();
    driver.advance(Duration::from_secs(6));
    assert!(!watch.poll(), "it renewed 6 s ago on the driver's clock");
    r.check().unwrap();
    driver.advance(Duration::from_secs(10));
    assert!(watch.poll(), "silent for a lease");
    file::mark_expired(d.path(), 0).unwrap();
    assert!(file::marked_expired(d.path(), 0));
    attempt_clock.advance(Duration::from_secs(10));
    assert_eq!(r.check(), Err(file::Fenced::Lapsed));
    let r2 = file::Renewer::start(d.path(), 2, cfg, Arc::new(FakeClock::default()), Box::new(|_| {})).unwrap();
    std::fs::write(d.path().join("3"), b"{}").unwrap();
    assert_eq!(r2.renew(), Err(file::Fenced::Superseded(3)));
    assert_eq!(r2.check(), Err(file::Fenced::Superseded(3)), "fenced for good");
}

#[test]
fn the_renewing_thread_reports_a_higher_attempt_at_once() {
    let d = tempfile::tempdir().unwrap();
    let cfg = LeaseConfig { renew: Duration::from_millis(5), lease: Duration::from_secs(3600) };
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let on_fenced = Box::new(move |f| tx.lock().unwrap().send(f).unwrap());
    let r = file::Renewer::start(d.path(), 0, cfg, Arc::new(RealClock::default()), on_fenced).unwrap();
    let counter = || {
        std::fs::read(d.path().join("0.lease"))
            .ok()
            .and_then(|b| serde_json::from_slice::<file::LeaseFile>(&b).ok())
            .map_or(0, |l| l.counter)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counter() < 2 {
        assert!(std::time::Instant::now() < deadline, "the lease was never renewed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(rx.try_recv().is_err(), "fenced with no higher attempt");
    std::fs::write(d.path().join("1"), b"{}").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(file::Fenced::Superseded(1)));
    assert_eq!(r.check(), Err(file::Fenced::Superseded(1)));
}
