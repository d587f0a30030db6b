//! Clocks of a cell's clients and how far apart they are.
//!
//! Each process reads its own clock: the system's real-time clock, read once and carried
//! forward on the monotonic one, so that it never steps inside a run (shards on other hosts have
//! other real-time clocks; on one host they agree to the microsecond, which the offsets show).
//! The coordinator learns each client's offset as NTP does: several round trips, each giving
//! an offset estimate whose error is at most half its round-trip time, and it keeps the sample of
//! the shortest round trip. A test hook (`KITT_TEST_CLOCK_SKEW_MS=SHARD:MS`) sets one shard's
//! clock that far off, so that a test can see the offset measured and the start corrected.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The test hook that skews one shard's clock: `SHARD:MS` (shard from 0; ms may be negative).
pub(crate) const SKEW_ENV: &str = "KITT_TEST_CLOCK_SKEW_MS";

/// One process's clock, in nanoseconds since the Unix epoch (plus its test skew).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    anchor: Instant,
    anchor_ns: i64,
}

impl Clock {
    /// This process's clock, `skew_ns` off the real one.
    pub(crate) fn new(skew_ns: i64) -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        Clock { anchor: Instant::now(), anchor_ns: wall + skew_ns }
    }

    /// The clock of shard `shard`: skewed when the test hook names it.
    pub(crate) fn for_shard(shard: u32) -> Clock {
        Clock::new(skew_for(shard, std::env::var(SKEW_ENV).ok().as_deref()))
    }

    pub(crate) fn now(&self) -> i64 {
        self.at(Instant::now())
    }

    /// The clock's reading at `t`.
    pub(crate) fn at(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.anchor) {
            Some(d) => self.anchor_ns + d.as_nanos() as i64,
            None => self.anchor_ns - self.anchor.duration_since(t).as_nanos() as i64,
        }
    }

    /// The instant at which the clock reads `ns`.
    pub(crate) fn instant(&self, ns: i64) -> Instant {
        let now = Instant::now();
        let delta = ns - self.at(now);
        if delta >= 0 {
            now + std::time::Duration::from_nanos(delta as u64)
        } else {
            now.checked_sub(std::time::Duration::from_nanos(delta.unsigned_abs())).unwrap_or(now)
        }
    }
}

/// The skew the hook value `hook` gives shard `shard`, in ns.
fn skew_for(shard: u32, hook: Option<&str>) -> i64 {
    let Some((which, ms)) = hook.and_then(|h| h.split_once(':')) else { return 0 };
    match (which.trim().parse::<u32>(), ms.trim().parse::<f64>()) {
        (Ok(w), Ok(ms)) if w == shard => (ms * 1e6) as i64,
        _ => 0,
    }
}

/// One round trip: the coordinator's clock when it asked (`t0`) and when the answer came (`t3`),
/// the client's when the question came (`t1`) and when it answered (`t2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundTrip {
    pub(crate) t0: i64,
    pub(crate) t1: i64,
    pub(crate) t2: i64,
    pub(crate) t3: i64,
}

impl RoundTrip {
    /// The client's clock minus the coordinator's, assuming the two legs took equally long.
    pub(crate) fn offset(&self) -> i64 {
        ((self.t1 - self.t0) + (self.t2 - self.t3)) / 2
    }

    /// Time on the wire (the client's own time between question and answer left out).
    pub(crate) fn rtt(&self) -> i64 {
        (self.t3 - self.t0) - (self.t2 - self.t1)
    }
}

/// The offset of the round trip with the shortest RTT (its error is at most half of it), with
/// that RTT; `None` without samples.
pub(crate) fn best(samples: &[RoundTrip]) -> Option<(i64, i64)> {
    samples.iter().min_by_key(|s| s.rtt()).map(|s| (s.offset(), s.rtt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_skews_only_the_shard_it_names() {
        assert_eq!(skew_for(2, Some("2:5000")), 5_000_000_000);
        assert_eq!(skew_for(1, Some("2:5000")), 0);
        assert_eq!(skew_for(0, Some("0:-1.5")), -1_500_000);
        assert_eq!(skew_for(0, Some("nonsense")), 0);
        assert_eq!(skew_for(0, None), 0);
        let skewed = Clock::new(5_000_000_000);
        let plain = Clock::new(0);
        let d = skewed.now() - plain.now();
        assert!((d - 5_000_000_000).abs() < 10_000_000, "{d}");
    }

    #[test]
    fn a_clock_maps_readings_to_instants_and_back() {
        let c = Clock::new(123);
        let t = Instant::now() + std::time::Duration::from_millis(40);
        let ns = c.at(t);
        let back = c.instant(ns);
        let diff = if back > t { back - t } else { t - back };
        assert!(diff < std::time::Duration::from_micros(50), "{diff:?}");
        assert!(c.at(c.anchor - std::time::Duration::from_secs(1)) < c.anchor_ns);
    }

    #[test]
    fn the_shortest_round_trip_gives_the_offset() {
        // A client 5 s ahead; the legs of the first trip are uneven (1 ms out, 9 ms back), the
        // second's are even and short.
        let skew = 5_000_000_000;
        let uneven = RoundTrip { t0: 0, t1: 1_000_000 + skew, t2: 1_000_000 + skew, t3: 10_000_000 };
        let even = RoundTrip { t0: 20_000_000, t1: 20_050_000 + skew, t2: 20_060_000 + skew, t3: 20_110_000 };
        assert_eq!(uneven.rtt(), 10_000_000);
        assert_eq!(uneven.offset(), skew - 4_000_000);
        assert_eq!(even.rtt(), 100_000);
        assert_eq!(even.offset(), skew);
        assert_eq!(best(&[uneven, even]), Some((skew, 100_000)));
        assert_eq!(best(&[]), None);
    }
}
