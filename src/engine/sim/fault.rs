//! `--fault`: the failures an engine shows on the wire, injected on purpose, so that kitt's client
//! and scheduler meet every one of them in a test (STYLE 21: faults are part of the test suite).
//!
//! Owns the fault specs (`KIND[:RATE[:AFTER]]`), the rule that picks which calls fault, and the
//! `--fault-state` file that makes a crash happen once; what each fault does to the bytes is done
//! where those bytes are written (`stream` for bodies, `socket` for the connection). The rule is a
//! counter, not a draw from the request hash: unlike an answer, *which* requests fault depends on
//! arrival order (each call's index among the calls of its class), so that a test knows exactly how
//! many of its requests fault — RATE 0.2 is exactly one in every five, never "about 20 %".

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use tokio::time::Instant;

use super::socket::Switch;
use super::stream::{Break, BrokenBody, SimBody};
use super::{Sim, SimApi, error_response, ollama, tgi};

/// What a faulting call suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Stop sending after the first event (or half the body); keep the connection open forever.
    Stall,
    /// Close the connection (FIN) after the first event (or half the body).
    Cut,
    /// Reset the connection (RST: `SO_LINGER` 0, then close) after the first event (or half the body).
    Reset,
    /// Log the request, write `HTTP/1.1 2` of the status line, then reset the connection.
    ResetHead,
    /// One event that is not JSON after the first (a non-streamed body: cut to half its bytes).
    BadJson,
    /// Answer HTTP 500 in the API's error shape.
    Http500,
    /// Answer HTTP 429 with `Retry-After: 1`.
    Http429,
    /// Hold the first token (a non-streamed answer: the whole answer) `--fault-delay` longer.
    SlowFirstToken,
    /// Log the request, then exit the process (status 70); once per `--fault-state` file.
    Crash,
    /// Hold a health call `--fault-delay`, then answer it.
    SlowHealth,
    /// Answer every health call 503 until `--fault-delay` after the start (an engine still loading).
    Loading,
    /// Hold a tokenize call `--fault-delay`, then answer it.
    SlowTokenize,
}

/// Every kind with its name on the command line, in the order `--help` lists them.
const KINDS: [(&str, FaultKind); 12] = [
    ("stall", FaultKind::Stall),
    ("cut", FaultKind::Cut),
    ("reset", FaultKind::Reset),
    ("reset_head", FaultKind::ResetHead),
    ("bad_json", FaultKind::BadJson),
    ("http_500", FaultKind::Http500),
    ("http_429", FaultKind::Http429),
    ("slow_first_token", FaultKind::SlowFirstToken),
    ("crash", FaultKind::Crash),
    ("slow_health", FaultKind::SlowHealth),
    ("loading", FaultKind::Loading),
    ("slow_tokenize", FaultKind::SlowTokenize),
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        KINDS.iter().find(|(_, k)| *k == self).map_or("", |(name, _)| name)
    }

    /// The calls whose index picks this fault.
    fn class(self) -> Call {
        match self {
            FaultKind::SlowHealth | FaultKind::Loading => Call::Health,
            FaultKind::SlowTokenize => Call::Tokenize,
            _ => Call::Generation,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a request is, for counting: each class has its own index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// A POST that asks for an answer (completions, chat, TGI's generate, Ollama's generate and chat).
    Generation,
    Tokenize,
    /// The API's health check (`/health`; TGI also `/` and `/ping`; Ollama `GET /`).
    Health,
    /// Everything else (`/metrics`, `/info`, `/v1/models`, …): never faults, never counted.
    Other,
}

/// A rate as an exact fraction, so that "exactly 1 in 5" holds for any number of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    num: u64,
    den: u64,
}

/// One `--fault KIND[:RATE[:AFTER]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub rate: Rate,
    /// Calls of the kind's class before the first that may fault.
    pub after: u64,
}

/// One `--fault` value: a spec, or nothing (an empty value, as a template renders an empty list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultArg(pub Option<FaultSpec>);

/// Parses a `--fault` value; clap calls it for each comma-separated item.
pub fn parse_arg(text: &str) -> Result<FaultArg, String> {
    if text.trim().is_empty() {
        return Ok(FaultArg(None));
    }
    let mut parts = text.trim().split(':');
    let name = parts.next().unwrap_or_default(); // `split` yields at least one item
    let Some(&(_, kind)) = KINDS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown fault `{name}`: write one of {}", names.join(", ")));
    };
    let rate = match parts.next() {
        None | Some("") => Rate { num: 1, den: 1 },
        Some(rate) => parse_rate(rate)?,
    };
    let after = match parts.next() {
        None | Some("") => 0,
        Some(after) => after
            .parse()
            .map_err(|_| format!("AFTER `{after}` in `{text}` is not a count: write a whole number ≥ 0"))?,
    };
    if parts.next().is_some() {
        return Err(format!("`{text}` has too many parts: write KIND[:RATE[:AFTER]]"));
    }
    if kind == FaultKind::Loading && (rate != Rate { num: 1, den: 1 } || after != 0) {
        return Err("`loading` takes no RATE or AFTER: it answers health 503 until --fault-delay has passed".into());
    }
    Ok(FaultArg(Some(FaultSpec { kind, rate, after })))
}

/// `0.2`, `1`, `.5` or `1/5`, within 0..=1, reduced.
fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!("RATE `{text}` is not a share: write a decimal such as 0.2, or a fraction such as 1/3, within 0..=1")
    };
    let (num, den) = if let Some((n, d)) = text.split_once('/') {
        (n.parse::<u64>().map_err(|_| bad())?, d.parse::<u64>().map_err(|_| bad())?)
    } else {
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || frac.len() > 9 {
            return Err(bad());
        }
        let den = 10u64.pow(frac.len() as u32); // at most 10^9
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let frac: u64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        (whole.checked_mul(den).and_then(|w| w.checked_add(frac)).ok_or_else(bad)?, den)
    };
    if den == 0 || num > den {
        return Err(bad());
    }
    let g = gcd(num, den);
    Ok(Rate { num: num / g, den: den / g })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

impl Rate {
    /// The rule: with `k` calls of the class before this one past AFTER, the call faults when
    /// `⌊((k+1)·num + o) / den⌋ > ⌊(k·num + o) / den⌋`, where `o = seed mod den`. Any `den`
    /// consecutive calls hold exactly `num` faults; with seed 0 the last of each `den` faults.
    fn picks(self, k: u64, seed: u64) -> bool {
        let (num, den) = (u128::from(self.num), u128::from(self.den));
        let (k, o) = (u128::from(k), u128::from(seed % self.den));
        ((k + 1) * num + o) / den > (k * num + o) / den
    }
}

/// The fault configuration of one server and what it has counted.
pub(super) struct Faults {
    specs: Vec<FaultSpec>,
    seed: u64,
    pub delay: Duration,
    started: Instant,
    /// Calls seen so far, per class: generation, tokenize, health.
    seen: [AtomicU64; 3],
    /// Where a crash is recorded; `None`: every process crashes.
    state: Option<PathBuf>,
    /// The crash happened already (the state file exists): crash faults are spent.
    crashed: AtomicBool,
}

/// What a crash leaves in the `--fault-state` file.
const CRASHED: &str = "crashed\n";

/// The exit status of a `crash` fault (EX_SOFTWARE).
pub const CRASH_EXIT: i32 = 70;

impl Faults {
    pub fn new(args: &[FaultArg], seed: u64, delay_ms: f64, state: Option<&Path>) -> io::Result<Self> {
        if !(delay_ms.is_finite() && delay_ms >= 0.0) {
            let message = format!("--fault-delay must be a finite number of milliseconds ≥ 0, got {delay_ms}");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        let crashed = match state {
            Some(path) => path.try_exists().map_err(|e| {
                io::Error::new(e.kind(), format!("cannot read the fault state {}: {e}", path.display()))
            })?,
            None => false,
        };
        let specs: Vec<FaultSpec> = args.iter().filter_map(|a| a.0).collect();
        if crashed && specs.iter().any(|s| s.kind == FaultKind::Crash) {
            tracing::warn!(
                "crash fault spent: {} records an earlier crash",
                state.map_or(Path::new(""), |p| p).display()
            );
        }
        Ok(Faults {
            specs,
            seed,
            delay: Duration::from_secs_f64(delay_ms.min(365.0 * 86_400_000.0) / 1000.0),
            started: Instant::now(),
            seen: Default::default(),
            state: state.map(Path::to_path_buf),
            crashed: AtomicBool::new(crashed),
        })
    }

    /// Counts a call of class `call` and says which fault, if any, it suffers: the first listed
    /// spec of its class that picks it.
    pub fn draw(&self, call: Call) -> Option<FaultKind> {
        let slot = match call {
            Call::Generation => 0,
            Call::Tokenize => 1,
            Call::Health => 2,
            Call::Other => return None,
        };
        if self.specs.iter().all(|s| s.kind.class() != call) {
            return None;
        }
        let n = self.seen[slot].fetch_add(1, Relaxed);
        self.specs.iter().filter(|s| s.kind.class() == call).map(|s| (s, n)).find_map(|(s, n)| {
            let picked = match s.kind {
                FaultKind::Loading => self.started.elapsed() < self.delay,
                FaultKind::Crash if self.crashed.load(Relaxed) => false,
                _ => n >= s.after && s.rate.picks(n - s.after, self.seed),
            };
            picked.then_some(s.kind)
        })
    }

    /// Records the crash in the state file (so a restarted server serves on), then exits.
    pub fn crash(&self) -> ! {
        if let Some(path) = &self.state
            && let Err(e) = write_state(path)
        {
            tracing::error!("cannot record the crash in {}: {e}", path.display());
        }
        tracing::error!("crash fault: exiting with status {CRASH_EXIT}");
        std::process::exit(CRASH_EXIT)
    }
}

/// The answer to a call that drew `fault` (one the access check let through).
pub(super) async fn answer(
    sim: &Sim,
    fault: FaultKind,
    switch: &Switch,
    method: &Method,
    path: &str,
    body: &[u8],
    start: Instant,
) -> Response<SimBody> {
    let delay = sim.faults.delay;
    let brk = match fault {
        FaultKind::Crash => sim.faults.crash(),
        FaultKind::Http500 | FaultKind::Http429 => {
            sim.counters.received();
            sim.counters.failed();
            return if fault == FaultKind::Http500 {
                refusal(sim, StatusCode::INTERNAL_SERVER_ERROR, "simulated failure", "server_error")
            } else {
                let mut response = refusal(sim, StatusCode::TOO_MANY_REQUESTS, "simulated overload", "overloaded");
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            };
        }
        FaultKind::Loading => return refusal(sim, StatusCode::SERVICE_UNAVAILABLE, "loading", "unhealthy"),
        FaultKind::SlowHealth | FaultKind::SlowTokenize => {
            tokio::time::sleep_until(start + delay).await;
            return sim.route(method, path, body, start).await;
        }
        FaultKind::ResetHead => {
            switch.reset_head();
            return sim.route(method, path, body, start).await;
        }
        FaultKind::SlowFirstToken => {
            let mut response = sim.route(method, path, body, start).await;
            match response.body_mut() {
                SimBody::Events(events) => events.hold(start, delay),
                _ => tokio::time::sleep(delay).await,
            }
            return response;
        }
        FaultKind::Stall => Break::Stall,
        FaultKind::Cut | FaultKind::Reset => Break::Close,
        FaultKind::BadJson => Break::BadEvent(BAD_SSE),
    };
    let mut response = sim.route(method, path, body, start).await;
    if !response.status().is_success() {
        return response; // a refusal stays what it is
    }
    let ndjson =
        response.headers().get(CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/x-ndjson"));
    let brk = match brk {
        Break::BadEvent(_) if ndjson => Break::BadEvent(BAD_NDJSON),
        other => other,
    };
    let broken = match std::mem::replace(response.body_mut(), SimBody::Full(None)) {
        SimBody::Events(mut events) => {
            events.fault(brk);
            SimBody::Events(events)
        }
        SimBody::Full(Some(whole)) => match brk {
            // A whole document cut to half its bytes, with a length that says so: valid HTTP, bad JSON.
            Break::BadEvent(_) => SimBody::Full(Some(whole.slice(..whole.len() / 2))),
            brk => SimBody::Broken(BrokenBody::new(whole, brk)),
        },
        other => other,
    };
    *response.body_mut() = broken;
    if fault == FaultKind::Reset {
        switch.reset();
    }
    response
}

/// The event `bad_json` sends in a server-sent-event stream, and in an NDJSON one: cut JSON.
const BAD_SSE: &str = "data: {\"fault\":\"bad_json\",\n\n";
const BAD_NDJSON: &str = "{\"fault\":\"bad_json\",\n";

/// An HTTP error in the API's own error shape.
fn refusal(sim: &Sim, status: StatusCode, message: &str, kind: &str) -> Response<SimBody> {
    match sim.served.api {
        SimApi::Openai => error_response(status, kind, message),
        SimApi::Tgi => tgi::error_response(status, message, kind),
        SimApi::Ollama => ollama::error(status, message),
    }
}

/// Writes the state file whole (temp + fsync + rename), so a kill during the write leaves none.
fn write_state(path: &Path) -> io::Result<()> {
    use std::io::Write as _;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(CRASHED.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> FaultSpec {
        parse_arg(text).unwrap().0.unwrap()
    }

    fn picked(text: &str, seed: u64, calls: u64) -> Vec<u64> {
        let faults = Faults::new(&[FaultArg(Some(spec(text)))], seed, 0.0, None).unwrap();
        (0..calls).filter(|_| faults.draw(Call::Generation).is_some()).collect()
    }

    #[test]
    fn specs_parse_with_defaults_and_exact_rates() {
        assert_eq!(spec("stall"), FaultSpec { kind: FaultKind::Stall, rate: Rate { num: 1, den: 1 }, after: 0 });
        assert_eq!(spec("cut:0.2").rate, Rate { num: 1, den: 5 });
        assert_eq!(spec("reset:1/3:4"), FaultSpec { kind: FaultKind::Reset, rate: Rate { num: 1, den: 3 }, after: 4 });
        assert_eq!(spec("http_429::7").after, 7);
        assert_eq!(spec("bad_json:.25").rate, Rate { num: 1, den: 4 });
        assert_eq!(spec("crash:0").rate, Rate { num: 0, den: 1 });
        assert_eq!(parse_arg("").unwrap(), FaultArg(None));
        for bad in ["stal", "stall:1.5", "stall:x", "stall:0.2:-1", "stall:1:2:3", "stall:1/0", "loading:0.5"] {
            assert!(parse_arg(bad).is_err(), "{bad}");
        }
        assert!(parse_arg("nope").unwrap_err().contains("slow_first_token"));
    }

    #[test]
    fn a_rate_picks_exactly_its_share_in_order() {
        // 0.29 × 100 is 28.999… in floating point: the fraction keeps it exactly 29.
        assert_eq!(picked("stall:0.29", 0, 100).len(), 29);
        assert_eq!(picked("stall:0.2", 0, 10), [4, 9]);
        assert_eq!(picked("stall:0.2", 2, 10), [2, 7]);
        assert_eq!(picked("stall:0.5:3", 0, 8), [4, 6]);
        assert_eq!(picked("stall", 0, 3), [0, 1, 2]);
        assert_eq!(picked("stall:0", 0, 3), Vec::<u64>::new());
        for seed in 0..7 {
            assert_eq!(picked("stall:2/7", seed, 70).len(), 20, "seed {seed}");
        }
    }

    #[test]
    fn classes_count_apart_and_the_first_listed_fault_wins() {
        let args: Vec<FaultArg> =
            ["slow_tokenize:0.5", "cut:0.5", "stall"].iter().map(|s| parse_arg(s).unwrap()).collect();
        let faults = Faults::new(&args, 0, 0.0, None).unwrap();
        assert_eq!(faults.draw(Call::Tokenize), None);
        assert_eq!(faults.draw(Call::Health), None);
        assert_eq!(faults.draw(Call::Other), None);
        let drawn: Vec<_> = (0..4).map(|_| faults.draw(Call::Generation)).collect();
        let (cut, stall) = (Some(FaultKind::Cut), Some(FaultKind::Stall));
        assert_eq!(drawn, [stall, cut, stall, cut]);
        assert_eq!(faults.draw(Call::Tokenize), Some(FaultKind::SlowTokenize));
    }
}
