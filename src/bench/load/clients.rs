//! One cell's load from several client processes (`benchmarks[].clients`): the coordinator.
//!
//! Owns the shards' lifecycle and the merge; never the schedule or the formulas, which stay
//! those of one client. The cell is prepared once here (arrivals from the seed, the prompt pool
//! from one tokenizer pass, the benchmark's warmup) and dealt round-robin by request index:
//! shard `k` of `n` sends requests `k, k+n, k+2n, …` with the prompts and arrival times one
//! client would have given them, so the union of the shards' requests is the one-client
//! schedule. A closed loop splits its workers the same way (worker `w` goes to shard `w mod n`,
//! so shards differ by at most one worker: the uneven tail), and takes request indices in the
//! same round-robin; an open loop's in-flight limit is split likewise.
//!
//! The start is coordinated as NTP would: each shard's clock offset is measured over several
//! round trips on its pipe (the shortest one kept), and each shard is told the start instant in
//! its own clock. Every shard spools its records to the step's directory; the merged result is
//! the ordinary tally over the union of those records, read shard after shard, so its counts,
//! extremes and percentiles are exactly those of one client that made the same requests (means,
//! standard deviations and the prefill throughput too, up to the order their floating-point
//! sums are taken in, which a single client's finish order makes arbitrary anyway). Stamps are
//! relative to the start instant, which each shard reads on its corrected clock: the union's
//! window is on the coordinator's clock, within the offsets' error.
//!
//! A shard that dies in the window fails the cell and is named; with `clients_min` the cell
//! completes when at least that many shards finished, and says which did not. A dead shard's
//! records are never used: a partial window is never reported as a whole one. A shard that fails
//! before the start fails the cell whatever `clients_min` says: nothing was sent yet, and a retry
//! (`execution.retries`) starts every shard again.
//!
//! Placement: the process running the cell's step is the coordinator (under every executor:
//! `local`, `processes`, `agents`, `slurm`, it is that unit's `kitt work`). Its shards are
//! processes of the same host, each pinned to a core of its own where the host has enough; in a
//! Slurm job that the `slurm` executor submitted with one task per shard (`--ntasks`, which it
//! exports as [`SLURM_TASKS_ENV`]), each shard is a job step of its own (`srun --ntasks=1
//! --exact`), placed by Slurm on the job's CPUs and nodes, and its pipe is `srun`'s relay of
//! the step's stdin and stdout. Where the coordinator is the unit of an agent and its engine an
//! endpoint, each shard runs on another agent, and its pipe is a `kitt client-relay` of this
//! host that carries the lines through the server (`agent::relay`). The messages (`wire`) carry
//! everything a shard needs, so the protocol is the same whichever channel carries it.

pub(crate) mod clock;
pub mod shard;
pub(crate) mod wire;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::spool::SpoolReader;
use super::{LoadError, LoadInput, LoadOutcome, Prepared, SPOOL_PREFIX, Settle, expected_events, warn_reused};
use crate::bench::metrics::{Distribution, Stat, TallyConfig};
use clock::{Clock, RoundTrip};
use wire::{Done, FromShard, Job, JobSending, ToShard};

/// Set in a Slurm job submitted for client shards: how many tasks the job has for them. With at
/// least as many as a cell's `clients`, the coordinator starts its shards as job steps.
pub const SLURM_TASKS_ENV: &str = "KITT_SLURM_CLIENT_TASKS";
/// The `srun` a coordinator in a Slurm job runs (default: `srun` on `PATH`, else Slurm's
/// usual install paths: a job submitted with `--export=NONE` may have no `PATH` of its own).
pub const SRUN_ENV: &str = "KITT_SRUN";

/// Clock round trips per shard; the shortest gives its offset.
const CLOCK_SAMPLES: usize = 24;
/// How long a shard may take to read its job and get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a cell's load is spread over client processes.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Client shards (at least 2).
    pub count: u32,
    /// The fewest shards that must finish for the cell to complete (default: all of them).
    pub min: Option<u32>,
    /// The binary each shard runs (`kitt client-shard`).
    pub exe: PathBuf,
    /// Where the shards spool their records (the step's directory).
    pub dir: PathBuf,
}

/// How the shards of a cell sent it: the result's `clients`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientsReport {
    /// Shards started.
    pub count: u32,
    /// `clients_min`, when the benchmark sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Shards whose records are in the metrics.
    pub completed: u32,
    /// Every shard finished: the metrics are the whole cell's. `false` (only with
    /// `clients_min`): they cover the completed shards' requests alone.
    pub complete: bool,
    /// The start instant on the coordinator's clock (ns since the Unix epoch).
    pub start_unix_ns: i64,
    /// The largest start error of any shard (ms; with a handful of shards, their p99).
    pub start_error_max_ms: f64,
    pub shards: Vec<ShardReport>,
}

/// One shard's part.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub shard: u32,
    pub host: String,
    pub pid: u32,
    /// The core it was pinned to (this host had a core per shard), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<u32>,
    /// `JOB.STEP`, where it ran as a step of the cell's Slurm job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_step: Option<String>,
    /// `agent@host`, where another agent than the coordinator's ran it (relayed through the
    /// server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `ok`, or `failed` (then `error` says why and its records are not in the metrics).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its clock minus the coordinator's (ms), and the round trip that measured it.
    pub clock_offset_ms: f64,
    pub clock_rtt_ms: f64,
    /// The start instant it was told, on its own clock (ns since the Unix epoch): the
    /// coordinator's start plus its offset.
    pub announced_start_ns: i64,
    /// How late its window opened after the announced instant, on its own clock (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_error_ms: Option<f64>,
    /// Requests it sent.
    pub requests: u64,
    /// Open loop: how late its requests left after their scheduled times (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<Distribution>,
}

/// A running shard: its process and both ends of its pipe.
struct Shard {
    index: u32,
    /// The core it is pinned to.
    core: Option<u32>,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    spool: PathBuf,
    pid: u32,
    host: String,
    slurm_step: Option<String>,
    agent: Option<String>,
    /// Its process is a relay (`srun`, `kitt client-relay`): asked to stop with SIGTERM, which
    /// it passes on, rather than killed.
    gentle: bool,
    offset: i64,
    rtt: i64,
    announced: i64,
}

impl Shard {
    fn name(&self, of: u32) -> String {
        format!("client shard {} of {of} (pid {})", self.index, self.pid)
    }

    async fn send(&mut self, msg: &ToShard) -> Result<(), String> {
        wire::send(&mut self.stdin, msg).await.map_err(|e| format!("cannot write to it: {e}"))
    }

    async fn receive(&mut self) -> Result<FromShard, String> {
        match wire::receive(&mut self.lines).await {
            Ok(Some(FromShard::Failed { error })) => Err(error),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(self.death().await),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Why the shard's pipe closed: how its process ended.
    async fn death(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                match (status.code(), status.signal()) {
                    (_, Some(sig)) => format!("it died (signal {sig})"),
                    (Some(code), _) => format!("it exited with status {code}"),
                    _ => "it exited".into(),
                }
            }
            _ => "its pipe closed".into(),
        }
    }
}

impl Drop for Shard {
    /// An `srun` is asked to stop its step (it forwards the signal to the shard) rather than
    /// killed, which would leave the step to Slurm, and a `kitt client-relay` to end its relay;
    /// a local shard is killed with its handle.
    fn drop(&mut self) {
        if self.gentle
            && matches!(self.child.try_wait(), Ok(None))
            && let Some(pid) = self.child.id()
        {
            // SAFETY: kill(2) on our own child, which try_wait just saw running (not reaped, so
            // the pid is still its own).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

/// Where a cell's shards run.
#[derive(Debug)]
enum Launch {
    /// Processes of this host; pinned to these cores, one each, where there are enough.
    Local { cpus: Vec<usize> },
    /// Steps of the Slurm job this coordinator runs in, started by this `srun`.
    Srun(PathBuf),
    /// On other agents, each through a `kitt client-relay` of this host (this coordinator is
    /// an agent's unit whose engine is an endpoint). `gang` names this try of the cell.
    Relay { gang: String },
}

impl Launch {
    fn for_cell(n: u32) -> Launch {
        if std::env::var_os(crate::agent::relay::RELAY_ENV).is_some_and(|v| !v.is_empty()) {
            return Launch::Relay { gang: crate::serve::tokens::random_hex(8) };
        }
        let tasks = std::env::var(SLURM_TASKS_ENV).ok().and_then(|t| t.trim().parse::<u32>().ok());
        let in_job = std::env::var_os("SLURM_JOB_ID").is_some();
        match tasks {
            Some(t) if in_job && t >= n => match srun() {
                Some(srun) => return Launch::Srun(srun),
                None => tracing::warn!(
                    "this Slurm job has {t} tasks for client shards, but no `srun` was found (set {SRUN_ENV}); \
                     its {n} shards run as processes of this node"
                ),
            },
            Some(t) if in_job => tracing::warn!(
                "this Slurm job has {t} tasks for client shards, fewer than the cell's {n}; \
                 its shards run as processes of this node"
            ),
            _ => {}
        }
        Launch::Local { cpus: allowed_cpus() }
    }

    fn command(
        &self,
        exe: &std::path::Path,
        k: u32,
        n: u32,
        spool: &std::path::Path,
    ) -> (tokio::process::Command, Option<u32>) {
        let shard_args = ["client-shard".to_string(), "--shard".into(), k.to_string(), "--of".into(), n.to_string()];
        match self {
            Launch::Relay { gang } => {
                let mut cmd = tokio::process::Command::new(exe);
                cmd.args(["client-relay", "--shard", &k.to_string(), "--of", &n.to_string(), "--gang", gang]);
                cmd.arg("--spool").arg(spool);
                (cmd, None)
            }
            Launch::Srun(srun) => {
                let mut cmd = tokio::process::Command::new(srun);
                // One task on one node with one CPU of the job's own (`--exact`), no GPU (the
                // engine's stay with it), the coordinator's environment (the job's may be
                // `--export=NONE`), and an end of the step when the shard fails.
                cmd.args(["--ntasks=1", "--nodes=1", "--exact", "--gres=none", "--export=ALL", "--quiet"])
                    .args(["--kill-on-bad-exit=1", "--job-name", &format!("kitt-client-{k}")])
                    .arg(exe)
                    .args(&shard_args);
                (cmd, None)
            }
            Launch::Local { cpus } => {
                let mut cmd = tokio::process::Command::new(exe);
                cmd.args(&shard_args);
                let core = (cpus.len() >= n as usize).then(|| cpus[k as usize]);
                if let Some(cpu) = core {
                    // SAFETY: sched_setaffinity(2) on the child itself, between fork and exec:
                    // every thread it starts later inherits the one core.
                    unsafe {
                        cmd.pre_exec(move || {
                            let mut set: libc::cpu_set_t = std::mem::zeroed();
                            libc::CPU_SET(cpu, &mut set);
                            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                            Ok(())
                        });
                    }
                }
                (cmd, core.map(|c| c as u32))
            }
        }
    }
}

/// The `srun` to start shards with: [`SRUN_ENV`], else the first on `PATH` or in Slurm's usual
/// install directories.
fn srun() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SRUN_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/opt/slurm/bin"].map(PathBuf::from))
        .map(|d| d.join("srun"))
        .find(|p| p.is_file())
}

/// Runs the prepared cell from `clients.count` shards and merges their records.
pub(super) async fn run(
    input: LoadInput,
    prepared: Prepared,
    clients: Clients,
    warmup_requests: u64,
) -> Result<LoadOutcome, LoadError> {
    let n = clients.count.max(1);
    let need = clients.min.unwrap_or(n).clamp(1, n);
    let fail = |what: String| LoadError::Clients(what);
    let coordinator = Clock::new(0);
    let Prepared { arrivals, workers, bodies, lengths, prompts_exact, input_tokens } = prepared;
    let open_loop = arrivals.is_some();
    let pool = bodies.len() as u64;
    let bodies: Vec<String> = bodies.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    let timeout = input.load.request_timeout.unwrap_or_default();

    // Declared before the shards, so that on every path it is dropped after them (their
    // processes killed first), removing what they spooled.
    let spools = SpoolFiles((0..n).map(|k| clients.dir.join(format!("{SPOOL_PREFIX}client-{k}"))).collect());
    // Start every shard first, so their runtimes come up together: processes of this host (each
    // on a core of its own where this process may run on enough), or steps of its Slurm job.
    let launch = Launch::for_cell(n);
    let mut shards = Vec::with_capacity(n as usize);
    for k in 0..n {
        let spool = spools.0[k as usize].clone();
        let _ = std::fs::remove_file(&spool);
        let (mut cmd, core) = launch.command(&clients.exe, k, n, &spool);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // An srun or a relay is stopped by `Shard`'s drop (SIGTERM, which it passes on), a
        // process killed.
        let gentle = !matches!(launch, Launch::Local { .. });
        cmd.kill_on_drop(!gentle);
        let program = match &launch {
            Launch::Srun(srun) => srun,
            Launch::Local { .. } | Launch::Relay { .. } => &clients.exe,
        };
        let mut child =
            cmd.spawn().map_err(|e| fail(format!("cannot start client shard {k} ({}): {e}", program.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(fail(format!("client shard {k}: no pipe")));
        };
        let pid = child.id().unwrap_or(0);
        let lines = BufReader::new(stdout).lines();
        shards.push(Shard {
            index: k,
            core,
            child,
            stdin,
            lines,
            spool,
            pid,
            host: String::new(),
            // Known from the start for an srun.
            slurm_step: matches!(launch, Launch::Srun(_)).then(String::new),
            agent: None,
            gentle,
            offset: 0,
            rtt: 0,
            announced: 0,
        });
    }
    // Jobs: the pool is shipped whole (request i uses slot i mod pool on whichever shard).
    let max_in_flight = workers;
    for s in &mut shards {
        let k = u64::from(s.index);
        let stride = u64::from(n);
        let sending = match &arrivals {
            Some(all) => JobSending::Open {
                offsets: all.iter().skip(k as usize).step_by(n as usize).copied().collect(),
                first: k,
                stride,
                max_in_flight: share(max_in_flight as u64, k, stride).max(1) as usize,
            },
            None => JobSending::Closed {
                workers: (k..workers as u64).step_by(n as usize).collect(),
                of: workers as u64,
                ramp_ns: input.load.ramp.map(|r| r.0.as_nanos() as u64).unwrap_or(0),
                first: k,
                stride,
            },
        };
        let job = Job {
            shard: s.index,
            of: n,
            dial: input.client.dial().clone(),
            call: input.call.clone(),
            bodies: bodies.clone(),
            lengths: lengths.clone(),
            sending,
            limit: if open_loop { None } else { input.load.requests },
            duration_ns: if open_loop { None } else { input.load.duration.map(|d| d.0.as_nanos() as u64) },
            deadlines_ns: [timeout.first_token.0, timeout.between_events.0, timeout.total.0]
                .map(|d| d.as_nanos() as u64),
            keep_text: input.tokenize.is_some(),
            expected_events: expected_events(input.expected_output_tokens),
            spool: s.spool.clone(),
        };
        let name = s.name(n);
        s.send(&ToShard::Job(Box::new(job))).await.map_err(|e| fail(format!("{name}: {e}")))?;
    }
    drop(bodies);
    for s in &mut shards {
        let name = s.name(n);
        match tokio::time::timeout(READY_TIMEOUT, s.receive()).await {
            Ok(Ok(FromShard::Ready { pid, host, slurm_step, agent })) => {
                s.pid = pid;
                s.host = host;
                s.agent = agent;
                if s.slurm_step.is_some() {
                    s.slurm_step = Some(slurm_step.unwrap_or_default());
                }
            }
            Ok(Ok(other)) => return Err(fail(format!("{name}: expected `ready`, got {other:?}"))),
            Ok(Err(e)) => return Err(fail(format!("{name} failed before the window: {e}"))),
            Err(_) if matches!(launch, Launch::Relay { .. }) => {
                return Err(fail(format!(
                    "{name} was not ready within {READY_TIMEOUT:?}: no agent took it (each shard takes a free slot \
                     on an agent of its own: {n} shards need {n} agents with a free slot)"
                )));
            }
            Err(_) => return Err(fail(format!("{name} was not ready within {READY_TIMEOUT:?}"))),
        }
    }
    // Clock offsets, one shard at a time (the others are idle meanwhile).
    for s in &mut shards {
        let name = s.name(n);
        let mut samples = Vec::with_capacity(CLOCK_SAMPLES);
        for _ in 0..CLOCK_SAMPLES {
            let t0 = coordinator.now();
            s.send(&ToShard::Ping { t0 }).await.map_err(|e| fail(format!("{name}: {e}")))?;
            match s.receive().await {
                Ok(FromShard::Pong { t0: echo, t1, t2 }) if echo == t0 => {
                    samples.push(RoundTrip { t0, t1, t2, t3: coordinator.now() });
                }
                Ok(other) => return Err(fail(format!("{name}: expected `pong`, got {other:?}"))),
                Err(e) => return Err(fail(format!("{name} failed before the window: {e}"))),
            }
        }
        // CLOCK_SAMPLES > 0, so there is a best sample.
        let (offset, rtt) = clock::best(&samples).unwrap_or((0, 0));
        s.offset = offset;
        s.rtt = rtt;
    }
    if let Some(opens) = &input.window_opens {
        opens().await;
    }
    // The start: far enough ahead for every announcement to arrive and every shard to wake.
    let lead = Duration::from_millis(100 + 20 * u64::from(n));
    let start = coordinator.now() + lead.as_nanos() as i64;
    let origin = coordinator.instant(start);
    // The step's cutoff, as time after the start.
    let cutoff_ns = input.cutoff.map(|c| c.saturating_duration_since(origin).as_nanos() as u64);
    for s in &mut shards {
        s.announced = start + s.offset;
        let (name, at) = (s.name(n), s.announced);
        s.send(&ToShard::Start { at, cutoff_ns }).await.map_err(|e| fail(format!("{name}: {e}")))?;
    }
    tracing::debug!(clients = n, "client shards started");

    // Wait for every shard's end; the first death fails the cell unless `clients_min` allows it.
    // Meanwhile their progress adds up in the cell's counter (the progress display).
    let mut outcomes: Vec<Option<Result<Done, String>>> = (0..n).map(|_| None).collect();
    let done_by_shard: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let errors_by_shard: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let (done_by_shard, errors_by_shard) = (&done_by_shard, &errors_by_shard);
    let (progress, errors) = (&input.progress, &input.errors);
    let sum = |counts: &[AtomicU64]| counts.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>();
    let mut waiting: FuturesUnordered<_> = shards
        .iter_mut()
        .map(|s| async move {
            let result = loop {
                match s.receive().await {
                    Ok(FromShard::Progress { done, errors: failed }) => {
                        done_by_shard[s.index as usize].store(done, Ordering::Relaxed);
                        errors_by_shard[s.index as usize].store(failed, Ordering::Relaxed);
                        progress.store(sum(done_by_shard), Ordering::Relaxed);
                        errors.store(sum(errors_by_shard), Ordering::Relaxed);
                    }
                    Ok(FromShard::Done(done)) => break Ok(done),
                    Ok(other) => break Err(format!("expected `done`, got {other:?}")),
                    Err(e) => break Err(e),
                }
            };
            (s.index, result)
        })
        .collect();
    let mut failures = 0;
    while let Some((k, result)) = waiting.next().await {
        if let Err(e) = &result {
            failures += 1;
            if n - failures < need {
                let name = format!("client shard {k} of {n}");
                let what = match clients.min {
                    Some(m) => {
                        format!("{name} failed during the window ({e}): fewer than `clients_min: {m}` can finish")
                    }
                    None => format!("{name} failed during the window ({e}); set `clients_min` to complete with fewer"),
                };
                // Dropping the shards kills the rest.
                return Err(fail(what));
            }
            tracing::warn!("client shard {k} of {n} failed during the window ({e}); the cell goes on without it");
        }
        outcomes[k as usize] = Some(result);
    }
    drop(waiting);
    for s in &mut shards {
        let _ = s.child.wait().await;
    }

    // The merge: the ordinary tally over the union of the finished shards' records.
    let finished: Vec<usize> = (0..n as usize).filter(|k| matches!(outcomes[*k], Some(Ok(_)))).collect();
    let mut sources = Vec::with_capacity(finished.len());
    for k in &finished {
        let path = &shards[*k].spool;
        sources.push(SpoolReader::open(path).map_err(|e| LoadError::Records(format!("{}: {e}", path.display())))?);
    }
    let (settle, config) = Settle::of(&input);
    let (tally, lags) = settle.run(sources, config).await?;
    drop(spools);
    let sent: u64 = outcomes.iter().flatten().flatten().map(|d| d.sent).sum();
    warn_reused(sent, pool);
    let mut lags = lags.into_iter();
    let reports: Vec<ShardReport> = shards
        .iter()
        .zip(&outcomes)
        .map(|(s, outcome)| {
            let (status, error, done) = match outcome {
                Some(Ok(done)) => ("ok", None, Some(done)),
                Some(Err(e)) => ("failed", Some(e.clone()), None),
                None => ("failed", Some("no answer".into()), None),
            };
            let lag: Option<Stat> = done.and_then(|_| lags.next());
            ShardReport {
                shard: s.index,
                host: s.host.clone(),
                pid: s.pid,
                core: s.core,
                slurm_step: s.slurm_step.clone().filter(|step| !step.is_empty()),
                agent: s.agent.clone(),
                status,
                error,
                clock_offset_ms: s.offset as f64 / 1e6,
                clock_rtt_ms: s.rtt as f64 / 1e6,
                announced_start_ns: s.announced,
                start_error_ms: done.map(|d| (d.opened - d.announced) as f64 / 1e6),
                requests: done.map_or(0, |d| d.sent),
                send_lag_ms: lag.and_then(|l| l.summary()),
            }
        })
        .collect();
    let completed = finished.len() as u32;
    let report = ClientsReport {
        count: n,
        min: clients.min,
        completed,
        complete: completed == n,
        start_unix_ns: start,
        start_error_max_ms: reports.iter().filter_map(|r| r.start_error_ms).fold(0.0, f64::max),
        shards: reports,
    };
    Ok(LoadOutcome {
        truncated: outcomes.iter().flatten().flatten().any(|d| d.truncated),
        window_ns: tally.window_ns(),
        tally,
        prompts_exact,
        input_tokens,
        open_loop,
        warmup_requests,
        records: input.records,
        origin,
        clients: Some(report),
    })
}

/// The coordinator's merge alone, for `cargo bench --bench kitt`: spools `records` as `shards`
/// shard spools in `dir` (dealt round-robin by index), then tallies their union as a
/// coordinator does (appending it to `out` when given); the tally and the merge's own time.
pub async fn merge_for_bench(
    dir: &std::path::Path,
    shards: u64,
    records: impl Iterator<Item = crate::engine::client::RequestRecord>,
    out: Option<&std::path::Path>,
) -> Result<(crate::bench::metrics::Tally, Duration), LoadError> {
    let paths: Vec<PathBuf> = (0..shards.max(1)).map(|k| dir.join(format!("{SPOOL_PREFIX}client-{k}"))).collect();
    let spools = SpoolFiles(paths.clone());
    {
        let writers: Vec<super::spool::Spool> =
            paths.iter().map(|p| super::spool::Spool::create_kept(p.clone())).collect::<Result<_, _>>()?;
        for r in records {
            writers[(r.index % shards.max(1)) as usize].push(&r);
        }
        for w in &writers {
            w.finish().map_err(|e| LoadError::Records(e.to_string()))?;
        }
    }
    let sources = paths
        .iter()
        .map(|p| SpoolReader::open(p).map_err(|e| LoadError::Records(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let started = std::time::Instant::now();
    let (tally, _) = Settle { tokenize: None, out, index_offset: 0 }.run(sources, TallyConfig::default()).await?;
    let took = started.elapsed();
    drop(spools);
    Ok((tally, took))
}

/// The shards' spool files, removed when dropped.
struct SpoolFiles(Vec<PathBuf>);

impl Drop for SpoolFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How many of `total` items dealt round-robin over `of` go to `k`.
fn share(total: u64, k: u64, of: u64) -> u64 {
    if k >= total { 0 } else { (total - k).div_ceil(of) }
}

/// The cores this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity(2) fills a zeroed cpu_set_t of its own size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|c| libc::CPU_ISSET(*c, &set)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Deal;

    #[test]
    fn dealing_round_robin_covers_every_item_once() {
        for (total, of) in [(10u64, 4u64), (3, 4), (8, 4), (1, 1), (0, 3)] {
            let shares: Vec<u64> = (0..of).map(|k| share(total, k, of)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total, "{total} over {of}: {shares:?}");
            // Shards differ by at most one item: the uneven tail goes to the first ones.
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{shares:?}");
            let mut indices: Vec<u64> = (0..of as u32)
                .flat_map(|k| {
                    let d = Deal { first: u64::from(k), stride: of };
                    (0..share(total, u64::from(k), of)).map(move |j| d.index(j))
                })
                .collect();
            indices.sort_unstable();
            assert_eq!(indices, (0..total).collect::<Vec<_>>());
        }
    }
}
