//! NVIDIA GPUs through NVML, loaded at run time: what the fingerprint lists, and a [`Sampler`]
//! of per-device readings for collectors.
//!
//! `libnvidia-ml.so.1` comes with the driver, not with kitt: kitt links nothing at build time
//! and runs the same binary on machines with and without a GPU. Every NVML failure — library
//! missing, driver not loaded, a device that does not answer one query — becomes a note or an
//! absent value, never an error, because a machine without a GPU is a normal machine.

use std::ffi::OsStr;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Nvml, cuda_driver_version_major, cuda_driver_version_minor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Gpu;

/// The NVML library as the driver installs it (the unversioned `.so` is a development link).
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// GPUs that share the system's memory even when NVML reports memory of their own: the GPU can
/// use all of it, which is what a model-size decision needs.
const UNIFIED: &[&str] = &["GB10", "GH200"];

/// What NVML says about this machine's GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProbe {
    pub gpus: Vec<Gpu>,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    /// Why `gpus` is empty or incomplete.
    pub note: Option<String>,
}

fn open(library: &OsStr) -> Result<Nvml, String> {
    Nvml::builder().lib_path(library).init().map_err(|e| match e {
        NvmlError::LibloadingError(e) => format!(
            "no NVIDIA GPU support: cannot load {}, which comes with the NVIDIA driver ({e})",
            library.to_string_lossy()
        ),
        NvmlError::DriverNotLoaded => "the NVIDIA driver library is installed but the driver is not loaded".to_string(),
        NvmlError::NoPermission => "NVML refused access to the GPUs (no permission)".to_string(),
        e => format!("NVML failed to start: {e}"),
    })
}

/// Lists the GPUs through the NVML library at `library` (a file name searched the way `dlopen`
/// does, or a path).
pub fn probe(library: &OsStr) -> GpuProbe {
    let nvml = match open(library) {
        Ok(n) => n,
        Err(note) => return GpuProbe { gpus: vec![], driver_version: None, cuda_version: None, note: Some(note) },
    };
    let driver_version = nvml.sys_driver_version().ok();
    let cuda_version = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", cuda_driver_version_major(v), cuda_driver_version_minor(v)));
    let mut notes = Vec::new();
    let mut gpus = Vec::new();
    match nvml.device_count() {
        Ok(0) => notes.push("NVML reports no GPU".to_string()),
        Ok(n) => {
            for i in 0..n {
                match nvml.device_by_index(i) {
                    Ok(d) => {
                        let name = d.name().unwrap_or_else(|_| "unknown".to_string());
                        let memory = d.memory_info();
                        let unified = matches!(memory, Err(NvmlError::NotSupported))
                            || UNIFIED.iter().any(|u| name.to_uppercase().contains(u));
                        gpus.push(Gpu {
                            memory_bytes: memory.ok().map(|m| m.total),
                            unified_memory: unified,
                            compute_capability: d
                                .cuda_compute_capability()
                                .ok()
                                .map(|c| format!("{}.{}", c.major, c.minor)),
                            name,
                        });
                    }
                    Err(e) => notes.push(format!("GPU {i} does not answer: {e}")),
                }
            }
        }
        Err(e) => notes.push(format!("NVML cannot count the GPUs: {e}")),
    }
    GpuProbe { gpus, driver_version, cuda_version, note: (!notes.is_empty()).then(|| notes.join("; ")) }
}

/// The UUIDs of the GPUs whose device minor numbers (`/dev/nvidiaN`) are `minors`, in that
/// order; none when NVML cannot tell for every one of them.
pub fn uuids_by_minor(library: &OsStr, minors: &[u32]) -> Option<Vec<String>> {
    let nvml = open(library).ok()?;
    let n = nvml.device_count().ok()?;
    let mut by_minor = std::collections::HashMap::new();
    for i in 0..n {
        let d = nvml.device_by_index(i).ok()?;
        by_minor.insert(d.minor_number().ok()?, d.uuid().ok()?);
    }
    minors.iter().map(|m| by_minor.get(m).cloned()).collect()
}

/// Unified-memory GPUs get the system's memory as theirs.
pub(crate) fn with_unified_memory(mut gpus: Vec<Gpu>, system_bytes: u64) -> Vec<Gpu> {
    for g in gpus.iter_mut().filter(|g| g.unified_memory && system_bytes > 0) {
        g.memory_bytes = Some(system_bytes);
    }
    gpus
}

/// One reading of one GPU; a value the device does not report is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Percent of time a kernel ran during the driver's last sample period.
    pub gpu_utilization_pct: Option<u32>,
    /// Percent of time memory was read or written during that period.
    pub memory_utilization_pct: Option<u32>,
    pub power_mw: Option<u32>,
    pub temperature_c: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
}

/// GPU sampling cannot run here, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GPU sampling is not available: {0}")]
pub struct Unavailable(pub String);

/// Reads every GPU's memory, utilisation, power, temperature and clocks on demand. Opening
/// loads NVML once; a sampler without NVML answers [`Unavailable`] to every call.
pub struct Sampler {
    nvml: Result<Nvml, String>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").field("unavailable", &self.unavailable()).finish()
    }
}

impl Sampler {
    /// A sampler over the driver's NVML library.
    pub fn open() -> Sampler {
        Sampler::with_library(OsStr::new(LIBRARY))
    }

    /// A sampler over the NVML library at `library`.
    pub fn with_library(library: &OsStr) -> Sampler {
        Sampler { nvml: open(library) }
    }

    /// Why sampling cannot run; `None` when it can.
    pub fn unavailable(&self) -> Option<&str> {
        self.nvml.as_ref().err().map(String::as_str)
    }

    /// One reading of every GPU, in index order (empty when NVML lists none).
    pub fn sample(&self) -> Result<Vec<GpuSample>, Unavailable> {
        let nvml = self.nvml.as_ref().map_err(|e| Unavailable(e.clone()))?;
        let count = nvml.device_count().map_err(|e| Unavailable(format!("NVML cannot count the GPUs: {e}")))?;
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let Ok(d) = nvml.device_by_index(index) else { continue };
            let memory = d.memory_info().ok();
            let utilization = d.utilization_rates().ok();
            out.push(GpuSample {
                index,
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
                gpu_utilization_pct: utilization.as_ref().map(|u| u.gpu),
                memory_utilization_pct: utilization.as_ref().map(|u| u.memory),
                power_mw: d.power_usage().ok(),
                temperature_c: d.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu).ok(),
                sm_clock_mhz: d.clock_info(nvml_wrapper::enum_wrappers::device::Clock::SM).ok(),
                memory_clock_mhz: d.clock_info(nvml_wrapper::enum_wrappers::device::Clock::Memory).ok(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSING: &str = "/nonexistent/kitt-test/libnvidia-ml.so.1";

    #[test]
    fn a_missing_library_is_a_note_not_an_error() {
        let p = probe(OsStr::new(MISSING));
        assert!(p.gpus.is_empty());
        assert_eq!((p.driver_version, p.cuda_version), (None, None));
        let note = p.note.unwrap();
        assert!(
            note.starts_with("no NVIDIA GPU support: cannot load /nonexistent/kitt-test/libnvidia-ml.so.1, "),
            "{note}"
        );
    }

    #[test]
    fn a_sampler_without_nvml_says_why() {
        let s = Sampler::with_library(OsStr::new(MISSING));
        assert!(s.unavailable().is_some_and(|w| w.contains("cannot load")));
        let e = s.sample().unwrap_err();
        assert!(e.to_string().starts_with("GPU sampling is not available: no NVIDIA GPU support"), "{e}");
    }

    #[test]
    fn unified_gpus_take_the_system_memory() {
        let gpu = |unified| Gpu {
            name: "x".into(),
            memory_bytes: Some(1),
            unified_memory: unified,
            compute_capability: None,
        };
        let gpus = with_unified_memory(vec![gpu(true), gpu(false)], 128 << 30);
        assert_eq!(gpus[0].memory_bytes, Some(128 << 30));
        assert_eq!(gpus[1].memory_bytes, Some(1));
    }
}
