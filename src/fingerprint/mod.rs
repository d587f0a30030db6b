//! The hardware fingerprint: what machine a result was measured on.
//!
//! Owns reading the host — /proc, /sys, /etc/os-release, NVML (loaded at run time) and, only
//! when asked, the Docker daemon — into one plain value, [`Fingerprint`]. It never fails: a
//! missing GPU, driver, file or permission is a normal answer (`unknown`, an empty list, a note),
//! because a benchmark must still run and record what could be seen.
//!
//! Two decisions shape it. First, the value splits into `hardware` — the stable facts that the
//! identity string and the hash are computed from — and notes or probes around it (`gpu_note`,
//! `docker`), so what is hashed is a type, not a convention. Nothing in `hardware` changes
//! between calls (no free memory, uptime, temperature, serial number or hostname): two identical
//! machines share a hash, and one machine keeps its hash until its hardware, driver, OS or
//! kernel changes. Second, the identity keeps the Python kitt's layout
//! (`{gpu}_{cpu}_{ram}_{storage}_{cuda}_{driver}_{os}`) but slugs every part by rules written
//! down in docs/hardware.md and tested in `identity`, and keeps a segment for what is absent
//! (`nogpu`, `nocuda`, `nodriver`) so the string always splits into seven parts.

mod cpu;
mod docker;
pub mod gpu;
mod identity;
mod memory;
mod storage;
mod system;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

pub use docker::Docker;
pub use identity::slug;

/// Version of the fingerprint model; bump on any incompatible change (it changes every hash).
pub const FINGERPRINT_SCHEMA: &str = "kitt.fingerprint/v1";

/// What kitt knows about the machine it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// `kitt.fingerprint/v1`.
    pub schema: String,
    /// `{gpu}_{cpu}_{ram}_{storage}_{cuda}_{driver}_{os}`, each part slugged (docs/hardware.md).
    pub identity: String,
    /// First 16 hex digits of the SHA-256 of the canonical JSON of `hardware`.
    pub hash: String,
    /// The stable facts: everything the identity and the hash are computed from.
    pub hardware: Hardware,
    /// Why `hardware.gpus` is empty (no NVIDIA driver library, no device, NVML error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_note: Option<String>,
    /// The Docker daemon, when probed (`kitt fingerprint` does; [`Fingerprint::detect`] does not).
    /// Not part of the identity or the hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Docker>,
}

/// The stable facts of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub environment: Environment,
    /// NVIDIA GPUs in NVML index order; empty without a GPU or a driver.
    pub gpus: Vec<Gpu>,
    /// NVIDIA driver version (NVML), e.g. `550.90.07`.
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports (NVML), e.g. `12.4`; a container brings its own
    /// toolkit, so this is the host fact that limits it.
    pub cuda_version: Option<String>,
    pub cpu: Cpu,
    pub memory: Memory,
    /// The disk holding the root filesystem.
    pub storage: Storage,
    pub os: Os,
    /// The machine's vendor and product name from DMI (`/sys/class/dmi/id`), e.g.
    /// `NVIDIA DGX Spark`; absent in most VMs and containers.
    pub system: Option<String>,
}

/// Where kitt runs, as the Python kitt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// An NVIDIA DGX Spark (GB10 superchip, unified memory).
    DgxSpark,
    /// Another NVIDIA DGX system.
    Dgx,
    /// Windows Subsystem for Linux 2.
    Wsl2,
    /// Inside a Docker container (`/.dockerenv`).
    Docker,
    /// Inside another container (podman, LXC, Kubernetes: `/run/.containerenv`, `/proc/1/cgroup`).
    Container,
    NativeLinux,
    NativeMacos,
}

impl Environment {
    pub fn name(self) -> &'static str {
        match self {
            Environment::DgxSpark => "dgx_spark",
            Environment::Dgx => "dgx",
            Environment::Wsl2 => "wsl2",
            Environment::Docker => "docker",
            Environment::Container => "container",
            Environment::NativeLinux => "native_linux",
            Environment::NativeMacos => "native_macos",
        }
    }
}

/// One NVIDIA GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// As NVML reports it, e.g. `NVIDIA GeForce RTX 4090`.
    pub name: String,
    /// Memory the GPU can use, in bytes: its own memory, or the system's RAM (`MemTotal`) when
    /// `unified_memory` is true. Absent when NVML cannot say.
    pub memory_bytes: Option<u64>,
    /// The GPU shares the system's memory (DGX Spark / GB10, Grace Hopper GH200).
    pub unified_memory: bool,
    /// CUDA compute capability, e.g. `8.9`.
    pub compute_capability: Option<String>,
}

/// The CPU, from /proc/cpuinfo and /sys/devices/system/cpu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// `model name`, or on ARM the core names from `CPU implementer`/`CPU part`
    /// (`Cortex-X925 + Cortex-A725`); `unknown` when neither is there.
    pub model: String,
    /// `x86_64`, `aarch64`, …
    pub architecture: String,
    pub sockets: u32,
    /// Physical cores (distinct thread-sibling sets).
    pub physical_cores: u32,
    /// Logical CPUs (hardware threads).
    pub logical_cores: u32,
    /// The vector and matrix extensions that decide which kernels an engine can use (AVX2,
    /// AVX-512, AMX, NEON, SVE, …), in the kernel's spelling, sorted.
    pub flags: Vec<String>,
}

/// System memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// `MemTotal` from /proc/meminfo, in bytes.
    pub total_bytes: u64,
    /// `ddr4`, `ddr5`, `lpddr5`, … from the SMBIOS table (readable by root only); else `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Configured speed in MT/s, from the same table.
    pub speed_mts: Option<u32>,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Kernel name of the whole disk, e.g. `nvme0n1`, `sda`; `unknown` when none was found.
    pub device: String,
    #[serde(rename = "type")]
    pub kind: StorageKind,
    /// The disk's model (`/sys/block/<dev>/device/model`), or its driver when it has none
    /// (`virtio_blk`); `unknown` otherwise.
    pub model: String,
    /// The disk's vendor when the kernel knows one that is not a bus name (`ATA`) or a number.
    pub vendor: Option<String>,
    pub size_bytes: u64,
}

/// What kind of disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    Nvme,
    /// Non-rotational, not NVMe.
    Ssd,
    /// Rotational.
    Hdd,
    /// A paravirtual disk (virtio, Xen): what lies beneath is unknown.
    Virtual,
    Unknown,
}

impl StorageKind {
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Nvme => "nvme",
            StorageKind::Ssd => "ssd",
            StorageKind::Hdd => "hdd",
            StorageKind::Virtual => "virtual",
            StorageKind::Unknown => "unknown",
        }
    }
}

/// The operating system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// `linux`, `macos`.
    pub family: String,
    /// `PRETTY_NAME` from /etc/os-release, e.g. `Ubuntu 24.04.1 LTS`; `unknown` without one.
    pub name: String,
    /// `ID` and `VERSION_ID` from /etc/os-release, e.g. `ubuntu`, `24.04`.
    pub id: Option<String>,
    pub version_id: Option<String>,
    /// Kernel release (`uname -r`).
    pub kernel: String,
}

impl Fingerprint {
    /// Reads this machine: CPU, memory, storage, OS and environment from /proc, /sys and /etc,
    /// GPUs from NVML when the driver library loads. Never fails and never calls Docker (see
    /// [`Fingerprint::probe_docker`]); takes a few milliseconds, plus NVML's start-up on a
    /// machine with a GPU.
    pub fn detect() -> Fingerprint {
        let started = std::time::Instant::now();
        let host = Host::real();
        let nvml = gpu::probe(std::ffi::OsStr::new(gpu::LIBRARY));
        let fingerprint = Fingerprint::from_hardware(host.hardware(nvml.gpus, nvml.driver_version, nvml.cuda_version))
            .with_gpu_note(nvml.note);
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "fingerprint detected");
        fingerprint
    }

    /// A fingerprint of given facts, with their identity and hash.
    pub fn from_hardware(hardware: Hardware) -> Fingerprint {
        Fingerprint {
            schema: FINGERPRINT_SCHEMA.to_string(),
            identity: identity::identity(&hardware),
            hash: hardware.hash(),
            hardware,
            gpu_note: None,
            docker: None,
        }
    }

    fn with_gpu_note(mut self, note: Option<String>) -> Fingerprint {
        self.gpu_note = note;
        self
    }

    /// Asks the Docker daemon for its version and runtimes (`docker info`, at most `timeout`).
    /// A missing CLI or an unreachable daemon is recorded as a note, not an error.
    pub fn probe_docker(&mut self, timeout: std::time::Duration) {
        self.docker = Some(docker::probe(timeout));
    }

    /// The identity string (see [`Hardware::identity`]).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The short hash (see [`Hardware::hash`]).
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl Hardware {
    /// `{gpu}_{cpu}_{ram}_{storage}_{cuda}_{driver}_{os}`, e.g.
    /// `rtx4090-24gb_i9-13900k-24c_64gb-ddr5_samsung-990-pro-nvme_cuda-12.4_550.90.07_linux-6.8`.
    pub fn identity(&self) -> String {
        identity::identity(self)
    }

    /// The first 16 hex digits of the SHA-256 of [`Hardware::canonical_json`].
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The facts as compact JSON with object keys sorted at every level — the same text whatever
    /// serde_json's features (`preserve_order`) in the build.
    pub fn canonical_json(&self) -> String {
        let mut out = String::new();
        // Serializing plain structs of strings, integers, booleans and options cannot fail.
        write_canonical(&serde_json::to_value(self).unwrap_or(Json::Null), &mut out);
        out
    }
}

fn write_canonical(value: &Json, out: &mut String) {
    match value {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The JSON Schema of [`Fingerprint`], pretty, ending in a newline.
pub fn schema() -> String {
    let s = schemars::schema_for!(Fingerprint);
    let mut v = serde_json::to_value(s).unwrap_or(Json::Null);
    v["$id"] = "https://kitt.dev/schemas/fingerprint.schema.json".into();
    v["title"] = format!("kitt hardware fingerprint ({FINGERPRINT_SCHEMA})").into();
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

/// The filesystem the facts are read from: `/` on a real machine, a directory of fixtures in
/// tests (`<root>/proc/cpuinfo`, `<root>/sys/block/…`).
#[derive(Debug, Clone)]
pub(crate) struct Host {
    root: PathBuf,
}

impl Host {
    pub(crate) fn real() -> Host {
        Host { root: PathBuf::from("/") }
    }

    #[cfg(test)]
    pub(crate) fn at(root: &Path) -> Host {
        Host { root: root.to_path_buf() }
    }

    /// `path` (absolute, as on a real machine) under this host's root.
    pub(crate) fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The text of `path` (absolute, as on a real machine), trimmed; see [`read_file`].
    pub(crate) fn read(&self, path: &str) -> Option<String> {
        read_file(&self.path(path))
    }

    pub(crate) fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// Everything but the GPUs, which NVML gave.
    fn hardware(&self, gpus: Vec<Gpu>, driver_version: Option<String>, cuda_version: Option<String>) -> Hardware {
        let memory = memory::detect(self);
        let gpus = gpu::with_unified_memory(gpus, memory.total_bytes);
        let system = system::dmi_product(self);
        Hardware {
            environment: system::environment(self, &gpus, system.as_deref()),
            driver_version,
            cuda_version,
            cpu: cpu::detect(self),
            memory,
            storage: storage::detect(self, Path::new("/")),
            os: system::os(self),
            system,
            gpus,
        }
    }
}

/// The file's text, trimmed; `None` when it is missing, unreadable or empty.
pub(crate) fn read_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Hardware {
        Hardware {
            environment: Environment::NativeLinux,
            gpus: vec![],
            driver_version: None,
            cuda_version: None,
            cpu: Cpu {
                model: "AMD EPYC 9654 96-Core Processor".into(),
                architecture: "x86_64".into(),
                sockets: 1,
                physical_cores: 96,
                logical_cores: 192,
                flags: vec!["avx2".into(), "avx512f".into()],
            },
            memory: Memory { total_bytes: 400 << 30, kind: "ddr5".into(), speed_mts: Some(4800) },
            storage: Storage {
                device: "nvme0n1".into(),
                kind: StorageKind::Nvme,
                model: "SAMSUNG MZQL23T8HCLS-00A07".into(),
                vendor: None,
                size_bytes: 3_840_755_982_336,
            },
            os: Os {
                family: "linux".into(),
                name: "Ubuntu 24.04.1 LTS".into(),
                id: Some("ubuntu".into()),
                version_id: Some("24.04".into()),
                kernel: "6.8.0-45-generic".into(),
            },
            system: None,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let json = sample().canonical_json();
        assert!(json.starts_with(r#"{"cpu":{"architecture":"x86_64","flags":["avx2","avx512f"],"logical_cores":192,"#));
        assert!(json.contains(r#""memory":{"speed_mts":4800,"total_bytes":429496729600,"type":"ddr5"}"#), "{json}");
        assert!(!json.contains(": ") && !json.contains(", "), "compact: {json}");
    }

    #[test]
    fn the_hash_is_16_hex_digits_and_follows_every_stable_fact() {
        let a = sample();
        let h = a.hash();
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(h, sample().hash());
        let mut b = sample();
        b.cpu.flags.push("amx_tile".into());
        assert_ne!(b.hash(), h);
        let mut c = sample();
        c.os.kernel = "6.8.0-46-generic".into();
        assert_ne!(c.hash(), h);
    }

    #[test]
    fn notes_and_docker_are_outside_the_hash() {
        let a = Fingerprint::from_hardware(sample());
        let mut b = Fingerprint::from_hardware(sample()).with_gpu_note(Some("no driver".into()));
        b.docker = Some(Docker { server_version: Some("27.3.1".into()), nvidia_runtime: true, note: None });
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.identity, b.identity);
    }

    #[test]
    fn a_fingerprint_round_trips_through_json() {
        let a = Fingerprint::from_hardware(sample());
        let text = serde_json::to_string(&a).unwrap();
        let b: Fingerprint = serde_json::from_str(&text).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.hardware.hash(), b.hash);
    }
}
