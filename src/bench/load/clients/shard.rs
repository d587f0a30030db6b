//! A client shard: one process sending its share of one cell (`kitt client-shard`, started by
//! the cell's coordinator, never by a user).
//!
//! It reads its job from stdin, answers clock pings, waits for the start instant on its own
//! clock, sends its share with the same machinery as a single client (`load::send`) and spools
//! every record to the file the job names; the coordinator tallies the union. It writes nothing
//! else and keeps no state: when its stdin closes (the coordinator died or gave up on the cell)
//! it exits at once, dropping whatever is in flight.
//!
//! Runs a current-thread runtime: a shard is one core's worth of client (oha's model), and
//! several shards are several cores.

use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

use super::super::{Deal, Schedule, Sending, Shared, Spool, earliest_instant, expected_events, send};
use super::clock::Clock;
use super::wire::{self, Done, FromShard, Job, JobSending, ToShard};
use crate::engine::client::{Deadlines, EngineClient};

/// How often a shard tells its coordinator how far it is.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// The test hook that kills one shard mid-window: `SHARD:N` sends SIGKILL to shard `SHARD`
/// once it has finished `N` requests.
pub(crate) const KILL_ENV: &str = "KITT_TEST_SHARD_KILL_AFTER";

/// Runs shard `shard` of `of` over stdin/stdout; the process's exit code.
pub fn main(shard: u32, of: u32, spool: Option<std::path::PathBuf>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: client shard {shard}: cannot start the runtime: {e}");
            return 1;
        }
    };
    let clock = Clock::for_shard(shard);
    // stdin and stdout are the pipes the coordinator made, or, under `srun`, what Slurm's step
    // relays them over (pipes or sockets, by Slurm's version).
    let stdio = rt.block_on(async {
        Ok::<_, std::io::Error>((reader(std::io::stdin().as_fd())?, writer(std::io::stdout().as_fd())?))
    });
    let (input, mut out) = match stdio {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: client shard {shard}: stdin and stdout must be pipes or sockets from its coordinator: {e}"
            );
            return 1;
        }
    };
    match rt.block_on(serve(shard, of, spool, clock, input, &mut out)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = rt.block_on(wire::send(&mut out, &FromShard::Failed { error: e.clone() }));
            eprintln!("error: client shard {shard} of {of}: {e}");
            1
        }
    }
}

/// The shard's input, as a tokio pipe or socket (the fd is duplicated).
pub(crate) fn reader(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Box<dyn AsyncRead + Unpin>> {
    let fd = fd.try_clone_to_owned()?;
    Ok(match socket(&fd)? {
        Some(s) => Box::new(s),
        None => Box::new(pipe::Receiver::from_owned_fd(fd)?),
    })
}

/// The shard's output, as a tokio pipe or socket (the fd is duplicated).
pub(crate) fn writer(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Box<dyn AsyncWrite + Unpin>> {
    let fd = fd.try_clone_to_owned()?;
    Ok(match socket(&fd)? {
        Some(s) => Box::new(s),
        None => Box::new(pipe::Sender::from_owned_fd(fd)?),
    })
}

/// `fd` as a tokio socket (on a duplicate of it), if it is a socket.
fn socket(fd: &std::os::fd::OwnedFd) -> std::io::Result<Option<tokio::net::UnixStream>> {
    if !is_socket(fd) {
        return Ok(None);
    }
    let s = std::os::unix::net::UnixStream::from(fd.try_clone()?);
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s).map(Some)
}

fn is_socket(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fstat(2) fills a zeroed stat of its own size for an fd we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

async fn serve<R, W>(
    shard: u32,
    of: u32,
    spool_at: Option<std::path::PathBuf>,
    clock: Clock,
    input: R,
    out: &mut W,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = tokio::io::BufReader::new(input).lines();
    let io = |e: std::io::Error| format!("the coordinator's pipe: {e}");
    let mut job = match wire::receive(&mut lines).await.map_err(io)? {
        Some(ToShard::Job(job)) => job,
        Some(other) => return Err(format!("expected the job first, got {other:?}")),
        None => return Err("the coordinator closed the pipe before the job".into()),
    };
    if job.shard != shard || job.of != of {
        return Err(format!("a job for shard {} of {} sent to shard {shard} of {of}", job.shard, job.of));
    }
    if let Some(path) = spool_at {
        job.spool = path;
    }
    let in_flight = match &job.sending {
        JobSending::Open { max_in_flight, .. } => *max_in_flight,
        JobSending::Closed { workers, .. } => workers.len(),
    };
    let client = EngineClient::from_dial(&job.dial, in_flight.max(1)).map_err(|e| e.to_string())?;
    client.size_for(in_flight.max(1));
    let spool = Arc::new(Spool::create_kept(job.spool.clone()).map_err(|e| e.to_string())?);
    let ready = FromShard::Ready { pid: std::process::id(), host: host_name(), slurm_step: slurm_step(), agent: None };
    wire::send(out, &ready).await.map_err(io)?;
    let (announced, cutoff_ns) = loop {
        match wire::receive(&mut lines).await.map_err(io)? {
            Some(ToShard::Ping { t0 }) => {
                let t1 = clock.now();
                wire::send(out, &FromShard::Pong { t0, t1, t2: clock.now() }).await.map_err(io)?;
            }
            Some(ToShard::Start { at, cutoff_ns }) => break (at, cutoff_ns),
            Some(ToShard::Job(_)) => return Err("a second job".into()),
            None => return Err("the coordinator closed the pipe before the start".into()),
        }
    };
    let origin = clock.instant(announced);
    if origin > Instant::now() {
        super::super::wait_until(origin).await;
    }
    let opened = clock.now();
    let origin = origin.min(Instant::now());
    let progress = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let kill = kill_hook(shard, Arc::clone(&progress));
    let report = {
        let (progress, errors) = (Arc::clone(&progress), Arc::clone(&errors));
        let out = &mut *out;
        async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                let (done, errors) = (progress.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
                if wire::send(out, &FromShard::Progress { done, errors }).await.is_err() {
                    return;
                }
            }
        }
    };
    let (sent, truncated) = tokio::select! {
        biased;
        // The coordinator is gone (or gave up on the cell): nothing of this window counts.
        _ = lines.next_line() => return Err("the coordinator closed the pipe during the window".into()),
        () = report => return Err("the coordinator closed the pipe during the window".into()),
        sent = window(*job, client, Arc::clone(&spool), origin, cutoff_ns, progress, errors) => sent?,
    };
    if let Some(k) = kill {
        k.abort();
    }
    spool.finish().map_err(|e| format!("{}: {e}", spool.path.display()))?;
    // The spool file stays (a kept spool): the coordinator reads it.
    drop(spool);
    wire::send(out, &FromShard::Done(Done { sent, truncated, announced, opened })).await.map_err(io)
}

/// Sends the job's share from `origin`; (requests sent, cut at the step's cutoff).
async fn window(
    job: Job,
    client: EngineClient,
    spool: Arc<Spool>,
    origin: Instant,
    cutoff_ns: Option<u64>,
    progress: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> Result<(u64, bool), String> {
    let cutoff = cutoff_ns.map(|ns| origin + Duration::from_nanos(ns));
    let [first_token, between_events, total] = job.deadlines_ns.map(Duration::from_nanos);
    let deadlines = Deadlines { first_token, between_events, total, step_cutoff: cutoff };
    let (sending, deal) = match job.sending {
        JobSending::Open { offsets, first, stride, max_in_flight } => {
            let deal = Deal { first, stride };
            (Sending::Open { offsets, deal, max_in_flight }, deal)
        }
        JobSending::Closed { workers, of, ramp_ns, first, stride } => {
            (Sending::Closed { workers, of, ramp: Duration::from_nanos(ramp_ns) }, Deal { first, stride })
        }
    };
    let deadline = earliest_instant(job.duration_ns.map(|d| origin + Duration::from_nanos(d)), cutoff);
    let shared = Arc::new(Shared {
        client,
        call: job.call,
        bodies: job.bodies.into_iter().map(Bytes::from).collect(),
        lengths: job.lengths,
        schedule: Schedule::closed(job.limit, deadline, deal),
        origin,
        progress,
        // Live counts for the progress display; the result's counts come from the merge.
        errors,
        spool: Some(spool),
        keep_text: job.keep_text,
        expected_events: expected_events(Some(job.expected_events as u64)),
        deadlines,
    });
    let sent = send(shared, sending, cutoff).await.map_err(|e| e.to_string())?;
    Ok((sent, cutoff.is_some_and(|c| Instant::now() >= c)))
}

/// The kill hook's watcher for this shard, if the hook names it.
fn kill_hook(shard: u32, progress: Arc<AtomicU64>) -> Option<tokio::task::JoinHandle<()>> {
    let hook = std::env::var(KILL_ENV).ok()?;
    let (which, after) = hook.split_once(':')?;
    let (which, after) = (which.trim().parse::<u32>().ok()?, after.trim().parse::<u64>().ok()?);
    (which == shard).then(|| {
        tokio::spawn(async move {
            while progress.load(Ordering::Relaxed) < after {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // SAFETY: kill(2) on our own pid has no memory effects; it ends the process as an
            // external SIGKILL would, which is what the hook stands for.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        })
    })
}

/// `JOB.STEP` where Slurm started this shard as a step of the cell's job.
fn slurm_step() -> Option<String> {
    let job = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty())?;
    let step = std::env::var("SLURM_STEP_ID").ok().filter(|s| !s.is_empty())?;
    Some(format!("{job}.{step}"))
}

/// This machine's name, as the shard reports it.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
