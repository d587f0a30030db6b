//! Collectors: resources sampled alongside a measuring window, and the engine's own metrics.
//!
//! A [`Sampler`] runs on its own OS thread (never on the async runtime that stamps requests), reads
//! the host (/proc), the engine (its container's cgroup, or its process) and the GPUs (NVML, when
//! present) every `interval`, and on `finish` returns the samples with their times on the
//! benchmark's clock. [`prom`] scrapes Prometheus endpoints for before/after deltas.

pub mod prom;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fingerprint::gpu::{GpuSample, Sampler as GpuSampler};

/// What to read for the engine.
#[derive(Debug, Clone)]
pub enum EngineTarget {
    /// A host process (native engine): /proc/PID.
    Process(u32),
    /// A container's cgroup, found from its first process.
    Cgroup(CgroupFiles),
    /// An endpoint, or an engine kitt cannot see.
    None,
}

/// The files holding a cgroup's memory and CPU usage (v1 or v2).
#[derive(Debug, Clone)]
pub struct CgroupFiles {
    memory: PathBuf,
    /// cgroup v1 `cpuacct.usage` (ns) or v2 `cpu.stat` (`usage_usec`).
    cpu: PathBuf,
    v2: bool,
}

impl EngineTarget {
    /// The cgroup of a container whose first process is `pid` (as the host sees it).
    pub fn container(pid: u32) -> EngineTarget {
        cgroup_of(pid).map(EngineTarget::Cgroup).unwrap_or(EngineTarget::None)
    }
}

/// Cgroups are Linux's: elsewhere a container's usage is not read (a Docker Desktop VM's are
/// not the host's to read anyway).
#[cfg(not(target_os = "linux"))]
fn cgroup_of(_pid: u32) -> Option<CgroupFiles> {
    None
}

#[cfg(target_os = "linux")]
fn cgroup_of(pid: u32) -> Option<CgroupFiles> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let root = Path::new("/sys/fs/cgroup");
    let mut memory = None;
    let mut cpu = None;
    let mut unified = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(root.join(path));
        }
        for c in controllers.split(',') {
            match c {
                "memory" => memory = Some(root.join("memory").join(path).join("memory.usage_in_bytes")),
                "cpuacct" => cpu = Some(root.join("cpuacct").join(path).join("cpuacct.usage")),
                _ => {}
            }
        }
    }
    if let (Some(memory), Some(cpu)) = (memory.filter(|m| m.exists()), cpu.filter(|c| c.exists())) {
        return Some(CgroupFiles { memory, cpu, v2: false });
    }
    let dir = unified?;
    let memory = dir.join("memory.current");
    memory.exists().then(|| CgroupFiles { memory, cpu: dir.join("cpu.stat"), v2: true })
}

/// One reading.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Milliseconds since the sampler started (the start of the measuring window).
    pub t_ms: f64,
    pub host_cpu_pct: Option<f64>,
    pub host_mem_used_mib: Option<f64>,
    pub engine_cpu_pct: Option<f64>,
    pub engine_mem_mib: Option<f64>,
    pub gpus: Vec<GpuSample>,
}

/// Cumulative CPU time readings, to turn into a percentage between two samples.
#[derive(Default)]
struct CpuClock {
    host: Option<(u64, u64)>,
    engine_ns: Option<u64>,
}

/// Host CPU: (busy, total) jiffies from the first line of /proc/stat; none without /proc.
#[cfg(not(target_os = "linux"))]
fn host_cpu() -> Option<(u64, u64)> {
    None
}

/// Host CPU: (busy, total) jiffies from the first line of /proc/stat.
#[cfg(target_os = "linux")]
fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn meminfo(key: &str, text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok()
}

/// Host memory in use, from /proc/meminfo; none without /proc.
#[cfg(not(target_os = "linux"))]
fn host_mem_used_mib() -> Option<f64> {
    None
}

#[cfg(target_os = "linux")]
fn host_mem_used_mib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some((meminfo("MemTotal:", &text)? - meminfo("MemAvailable:", &text)?) / 1024.0)
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// (cumulative CPU ns, memory MiB) of the engine.
fn engine_usage(target: &EngineTarget) -> (Option<u64>, Option<f64>) {
    match target {
        EngineTarget::None => (None, None),
        EngineTarget::Process(pid) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            let cpu = stat.and_then(|s| {
                let rest = s[s.rfind(')')? + 2..].to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15 (11 and 12 after the state).
                let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks * 1_000_000_000 / ticks_per_second())
            });
            let mem = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| meminfo("VmRSS:", &s))
                .map(|kib| kib / 1024.0);
            (cpu, mem)
        }
        EngineTarget::Cgroup(c) => {
            let mem = std::fs::read_to_string(&c.memory).ok().and_then(|m| m.trim().parse::<f64>().ok());
            let cpu = std::fs::read_to_string(&c.cpu).ok().and_then(|t| {
                if c.v2 {
                    let usec = t.lines().find(|l| l.starts_with("usage_usec"))?.split_whitespace().nth(1)?;
                    usec.parse::<u64>().ok().map(|u| u * 1000)
                } else {
                    t.trim().parse().ok()
                }
            });
            (cpu, mem.map(|b| b / (1024.0 * 1024.0)))
        }
    }
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

fn read(target: &EngineTarget, gpu: &GpuSampler, clock: &mut CpuClock, t: Duration, since: Duration) -> Sample {
    let host = host_cpu();
    let host_cpu_pct = match (clock.host, host) {
        (Some((b0, t0)), Some((b1, t1))) => pct(b1.saturating_sub(b0), t1.saturating_sub(t0)),
        _ => None,
    };
    clock.host = host;
    let (engine_ns, engine_mem_mib) = engine_usage(target);
    // Engine CPU as a share of one core (100 % = one core busy), like `docker stats` and `top`.
    let engine_cpu_pct = match (clock.engine_ns, engine_ns) {
        (Some(a), Some(b)) if since > Duration::ZERO => {
            Some((b.saturating_sub(a)) as f64 * 100.0 / since.as_nanos() as f64)
        }
        _ => None,
    };
    clock.engine_ns = engine_ns;
    Sample {
        t_ms: t.as_secs_f64() * 1e3,
        host_cpu_pct,
        host_mem_used_mib: host_mem_used_mib(),
        engine_cpu_pct,
        engine_mem_mib,
        gpus: gpu.sample().unwrap_or_default(),
    }
}

/// Samples resources on its own thread until `finish`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Vec<Sample>, Option<String>)>>,
    interval: Duration,
}

impl Sampler {
    /// Starts sampling now; sample times count from `origin` (the measured window's start).
    pub fn start(target: EngineTarget, interval: Duration, origin: Instant) -> Sampler {
        let interval = interval.max(Duration::from_millis(10));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kitt-sampler".into())
            .spawn(move || {
                let gpu = GpuSampler::open();
                let note = gpu.unavailable().map(String::from);
                let started = origin;
                let mut clock = CpuClock::default();
                let mut samples = Vec::new();
                let mut last = Instant::now();
                let mut next = last;
                loop {
                    let now = Instant::now();
                    samples.push(read(&target, &gpu, &mut clock, now.saturating_duration_since(started), now - last));
                    last = now;
                    next += interval;
                    // Sleep in short slices so `finish` never waits a whole interval.
                    while Instant::now() < next {
                        if flag.load(Ordering::Relaxed) {
                            let now = Instant::now();
                            let t = now.saturating_duration_since(started);
                            samples.push(read(&target, &gpu, &mut clock, t, now - last));
                            return (samples, note);
                        }
                        std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
                    }
                }
            })
            .ok();
        Sampler { stop, thread, interval }
    }

    /// Stops sampling; the samples and, when GPUs cannot be sampled, why.
    pub fn finish(mut self) -> (Vec<Sample>, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Peak and mean of a series.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct PeakMean {
    pub peak: f64,
    pub mean: f64,
}

fn peak_mean(values: impl Iterator<Item = f64>) -> Option<PeakMean> {
    let v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    Some(PeakMean { peak: v.iter().cloned().fold(f64::MIN, f64::max), mean: v.iter().sum::<f64>() / v.len() as f64 })
}

/// Per GPU: memory, utilisation, power, temperature.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct GpuSummary {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_mib: Option<PeakMean>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<PeakMean>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<PeakMean>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<PeakMean>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<PeakMean>,
}

/// What a benchmark's resources looked like.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ResourceSummary {
    pub samples: usize,
    pub interval_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_cpu_pct: Option<PeakMean>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_mem_used_mib: Option<PeakMean>,
    /// Engine CPU in percent of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_cpu_pct: Option<PeakMean>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_mem_mib: Option<PeakMean>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_note: Option<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn summarize(samples: &[Sample], interval: Duration, gpu_note: Option<String>) -> ResourceSummary {
    let mut indices: Vec<u32> = samples.iter().flat_map(|s| s.gpus.iter().map(|g| g.index)).collect();
    indices.sort_unstable();
    indices.dedup();
    let gpus = indices
        .into_iter()
        .map(|i| {
            let of = || samples.iter().flat_map(|s| s.gpus.iter().filter(|g| g.index == i));
            GpuSummary {
                index: i,
                memory_used_mib: peak_mean(of().filter_map(|g| g.memory_used_bytes).map(|b| b as f64 / MIB)),
                memory_total_mib: of().find_map(|g| g.memory_total_bytes).map(|b| b as f64 / MIB),
                utilization_pct: peak_mean(of().filter_map(|g| g.gpu_utilization_pct).map(f64::from)),
                power_w: peak_mean(of().filter_map(|g| g.power_mw).map(|p| p as f64 / 1000.0)),
                temperature_c: peak_mean(of().filter_map(|g| g.temperature_c).map(f64::from)),
                sm_clock_mhz: peak_mean(of().filter_map(|g| g.sm_clock_mhz).map(f64::from)),
            }
        })
        .collect();
    ResourceSummary {
        samples: samples.len(),
        interval_ms: interval.as_secs_f64() * 1e3,
        host_cpu_pct: peak_mean(samples.iter().filter_map(|s| s.host_cpu_pct)),
        host_mem_used_mib: peak_mean(samples.iter().filter_map(|s| s.host_mem_used_mib)),
        engine_cpu_pct: peak_mean(samples.iter().filter_map(|s| s.engine_cpu_pct)),
        engine_mem_mib: peak_mean(samples.iter().filter_map(|s| s.engine_mem_mib)),
        gpus,
        gpu_note,
    }
}

/// The samples as CSV: one row per sample, GPU columns per device index.
pub fn csv(samples: &[Sample]) -> String {
    let gpus = samples.iter().map(|s| s.gpus.len()).max().unwrap_or(0);
    let mut out = String::from("t_ms,host_cpu_pct,host_mem_used_mib,engine_cpu_pct,engine_mem_mib");
    for i in 0..gpus {
        out.push_str(&format!(",gpu{i}_mem_used_mib,gpu{i}_util_pct,gpu{i}_power_w,gpu{i}_temp_c,gpu{i}_sm_clock_mhz"));
    }
    out.push('\n');
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
    for s in samples {
        out.push_str(&format!(
            "{:.3},{},{},{},{}",
            s.t_ms,
            f(s.host_cpu_pct),
            f(s.host_mem_used_mib),
            f(s.engine_cpu_pct),
            f(s.engine_mem_mib)
        ));
        for i in 0..gpus {
            let g = s.gpus.get(i);
            out.push_str(&format!(
                ",{},{},{},{},{}",
                f(g.and_then(|g| g.memory_used_bytes).map(|b| b as f64 / MIB)),
                f(g.and_then(|g| g.gpu_utilization_pct).map(f64::from)),
                f(g.and_then(|g| g.power_mw).map(|p| p as f64 / 1000.0)),
                f(g.and_then(|g| g.temperature_c).map(f64::from)),
                f(g.and_then(|g| g.sm_clock_mhz).map(f64::from)),
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_and_the_host() {
        // A busy thread makes this process's CPU visible.
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let busy = std::thread::spawn(move || {
            let mut x = 0u64;
            while !s2.load(Ordering::Relaxed) {
                x = x.wrapping_add(1);
            }
            x
        });
        let sampler =
            Sampler::start(EngineTarget::Process(std::process::id()), Duration::from_millis(20), Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        let (samples, _note) = sampler.finish();
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
        assert!(samples.len() >= 5, "{} samples", samples.len());
        let sum = summarize(&samples, Duration::from_millis(20), None);
        assert!(sum.host_mem_used_mib.as_ref().unwrap().peak > 0.0);
        assert!(sum.engine_mem_mib.as_ref().unwrap().peak > 1.0, "{sum:?}");
        // Wide slack: a shared machine; one busy thread is close to 100 % of a core.
        assert!(sum.engine_cpu_pct.as_ref().unwrap().mean > 20.0, "{sum:?}");
        assert!(samples.windows(2).all(|w| w[1].t_ms > w[0].t_ms));
        let csv = csv(&samples);
        assert_eq!(csv.lines().count(), samples.len() + 1);
        assert!(csv.starts_with("t_ms,host_cpu_pct,host_mem_used_mib,engine_cpu_pct,engine_mem_mib\n"));
    }

    #[test]
    fn gpu_columns_and_summaries_come_from_gpu_samples() {
        let g = |used: u64, util: u32| GpuSample {
            index: 0,
            memory_used_bytes: Some(used * 1024 * 1024),
            memory_total_bytes: Some(80 * 1024 * 1024 * 1024),
            gpu_utilization_pct: Some(util),
            memory_utilization_pct: None,
            power_mw: Some(300_000),
            temperature_c: Some(60),
            sm_clock_mhz: Some(1980),
            memory_clock_mhz: None,
        };
        let s = |t: f64, used, util| Sample {
            t_ms: t,
            host_cpu_pct: None,
            host_mem_used_mib: None,
            engine_cpu_pct: None,
            engine_mem_mib: None,
            gpus: vec![g(used, util)],
        };
        let samples = [s(0.0, 1000, 10), s(200.0, 3000, 90)];
        let sum = summarize(&samples, Duration::from_millis(200), None);
        assert_eq!(sum.gpus[0].memory_used_mib, Some(PeakMean { peak: 3000.0, mean: 2000.0 }));
        assert_eq!(sum.gpus[0].utilization_pct, Some(PeakMean { peak: 90.0, mean: 50.0 }));
        assert_eq!(sum.gpus[0].power_w.as_ref().unwrap().peak, 300.0);
        let csv = csv(&samples);
        assert!(
            csv.lines()
                .next()
                .unwrap()
                .ends_with(",gpu0_mem_used_mib,gpu0_util_pct,gpu0_power_w,gpu0_temp_c,gpu0_sm_clock_mhz")
        );
        assert!(csv.lines().nth(2).unwrap().ends_with(",3000.000,90.000,300.000,60.000,1980.000"), "{csv}");
    }
}
