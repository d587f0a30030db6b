//! The CPU: model and flags from /proc/cpuinfo, topology from /sys/devices/system/cpu.
//!
//! ARM kernels print no `model name`; the cores are named from `CPU implementer`/`CPU part`
//! by a small table (the names `lscpu` uses), so a DGX Spark reads `Cortex-X925 + Cortex-A725`
//! and a Grace `Neoverse-V2` instead of `unknown`.

use std::collections::BTreeSet;

use super::{Cpu, Host};

/// Flags that decide which kernels an engine can use; the rest of the kernel's list is noise
/// for a benchmark and would make the hash depend on microcode-level details.
const FLAGS: &[&str] = &[
    // x86
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    // aarch64
    "asimd",
    "asimdhp",
    "asimddp",
    "fphp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "svei8mm",
    "svebf16",
    "sme",
    "sme2",
];

/// (implementer, part) → core name, for the cores an inference machine is likely to have.
const ARM_CORES: &[(&str, &str, &str)] = &[
    ("0x41", "0xd03", "Cortex-A53"),
    ("0x41", "0xd05", "Cortex-A55"),
    ("0x41", "0xd08", "Cortex-A72"),
    ("0x41", "0xd0b", "Cortex-A76"),
    ("0x41", "0xd0c", "Neoverse-N1"),
    ("0x41", "0xd40", "Neoverse-V1"),
    ("0x41", "0xd41", "Cortex-A78"),
    ("0x41", "0xd44", "Cortex-X1"),
    ("0x41", "0xd49", "Neoverse-N2"),
    ("0x41", "0xd4f", "Neoverse-V2"),
    ("0x41", "0xd84", "Neoverse-V3"),
    ("0x41", "0xd85", "Cortex-X925"),
    ("0x41", "0xd87", "Cortex-A725"),
    ("0x41", "0xd8e", "Neoverse-N3"),
    ("0xc0", "0xac3", "Ampere-1"),
    ("0xc0", "0xac4", "Ampere-1a"),
];

/// What /proc/cpuinfo says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct CpuInfo {
    pub model: Option<String>,
    pub processors: u32,
    pub flags: BTreeSet<String>,
    /// Distinct (physical id, core id) pairs (x86 only).
    pub cores: BTreeSet<(String, String)>,
    pub sockets: BTreeSet<String>,
}

pub(crate) fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut arm_cores: Vec<String> = Vec::new();
    for block in text.split("\n\n") {
        let mut implementer = None;
        let mut part = None;
        let mut physical = None;
        let mut core = None;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "processor" => info.processors += 1,
                "model name" if info.model.is_none() && !value.is_empty() => info.model = Some(value.to_string()),
                "flags" | "Features" => {
                    info.flags.extend(value.split_whitespace().filter(|f| FLAGS.contains(f)).map(str::to_string))
                }
                "CPU implementer" => implementer = Some(value.to_lowercase()),
                "CPU part" => part = Some(value.to_lowercase()),
                "physical id" => physical = Some(value.to_string()),
                "core id" => core = Some(value.to_string()),
                _ => {}
            }
        }
        if let (Some(i), Some(p)) = (implementer, part) {
            let name = ARM_CORES
                .iter()
                .find(|(ci, cp, _)| *ci == i && *cp == p)
                .map(|(_, _, n)| n.to_string())
                .unwrap_or_else(|| format!("ARM {i}:{p}"));
            if !arm_cores.contains(&name) {
                arm_cores.push(name);
            }
        }
        if let Some(p) = &physical {
            info.sockets.insert(p.clone());
        }
        if let (Some(p), Some(c)) = (physical, core) {
            info.cores.insert((p, c));
        }
    }
    if info.model.is_none() && !arm_cores.is_empty() {
        info.model = Some(arm_cores.join(" + "));
    }
    info
}

/// Distinct thread-sibling sets and packages under /sys/devices/system/cpu.
fn topology(host: &Host) -> (u32, u32, u32) {
    let mut logical = 0;
    let mut cores = BTreeSet::new();
    let mut packages = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(host.path("/sys/devices/system/cpu")) else { return (0, 0, 0) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let topo = e.path().join("topology");
        let Some(siblings) = super::read_file(&topo.join("thread_siblings_list"))
            .or_else(|| super::read_file(&topo.join("core_cpus_list")))
        else {
            continue;
        };
        logical += 1;
        cores.insert(siblings);
        if let Some(p) = super::read_file(&topo.join("physical_package_id")) {
            packages.insert(p);
        }
    }
    (logical, cores.len() as u32, packages.len() as u32)
}

pub(crate) fn detect(host: &Host) -> Cpu {
    let info = parse_cpuinfo(&host.read("/proc/cpuinfo").unwrap_or_default());
    let (sys_logical, sys_cores, sys_packages) = topology(host);
    let logical = [info.processors, sys_logical].into_iter().find(|n| *n > 0).unwrap_or(1);
    let physical = [sys_cores, info.cores.len() as u32].into_iter().find(|n| *n > 0).unwrap_or(logical);
    let sockets = [sys_packages, info.sockets.len() as u32].into_iter().find(|n| *n > 0).unwrap_or(1);
    Cpu {
        model: info.model.unwrap_or_else(|| "unknown".to_string()),
        architecture: std::env::consts::ARCH.to_string(),
        sockets,
        physical_cores: physical,
        logical_cores: logical,
        flags: info.flags.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: 13th Gen Intel(R) Core(TM) i9-13900K\n\
physical id\t: 0\ncore id\t\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx_vnni sha_ni\n\n\
processor\t: 1\nmodel name\t: 13th Gen Intel(R) Core(TM) i9-13900K\nphysical id\t: 0\ncore id\t\t: 0\n\
flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni sha_ni\n\n\
processor\t: 2\nmodel name\t: 13th Gen Intel(R) Core(TM) i9-13900K\nphysical id\t: 0\ncore id\t\t: 4\n\
flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni sha_ni\n";

    // A DGX Spark prints no model name: ten Cortex-X925 and ten Cortex-A725 cores.
    fn spark() -> String {
        let mut s = String::new();
        for i in 0..20 {
            let part = if i < 10 { "0xd85" } else { "0xd87" };
            s.push_str(&format!(
                "processor\t: {i}\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm aes asimddp sve sve2 i8mm bf16 svebf16\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
            ));
        }
        s
    }

    #[test]
    fn x86_model_flags_and_cores() {
        let info = parse_cpuinfo(X86);
        assert_eq!(info.model.as_deref(), Some("13th Gen Intel(R) Core(TM) i9-13900K"));
        assert_eq!(info.processors, 3);
        assert_eq!(info.cores.len(), 2);
        assert_eq!(info.sockets.len(), 1);
        let flags: Vec<&str> = info.flags.iter().map(String::as_str).collect();
        assert_eq!(flags, ["avx", "avx2", "avx_vnni", "fma", "sse4_2"]);
    }

    #[test]
    fn arm_cores_are_named_from_implementer_and_part() {
        let info = parse_cpuinfo(&spark());
        assert_eq!(info.model.as_deref(), Some("Cortex-X925 + Cortex-A725"));
        assert_eq!(info.processors, 20);
        let flags: Vec<&str> = info.flags.iter().map(String::as_str).collect();
        assert_eq!(flags, ["asimd", "asimddp", "bf16", "i8mm", "sve", "sve2", "svebf16"]);
        let unknown = parse_cpuinfo("processor : 0\nCPU implementer : 0x99\nCPU part : 0x123\n");
        assert_eq!(unknown.model.as_deref(), Some("ARM 0x99:0x123"));
    }

    #[test]
    fn topology_counts_thread_sibling_sets_and_packages() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::at(dir.path());
        for (cpu, siblings) in [(0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")] {
            let topo = host.path(&format!("/sys/devices/system/cpu/cpu{cpu}/topology"));
            std::fs::create_dir_all(&topo).unwrap();
            std::fs::write(topo.join("thread_siblings_list"), format!("{siblings}\n")).unwrap();
            std::fs::write(topo.join("physical_package_id"), "0\n").unwrap();
        }
        std::fs::create_dir_all(host.path("/sys/devices/system/cpu/cpufreq")).unwrap();
        std::fs::create_dir_all(host.path("/proc")).unwrap();
        std::fs::write(host.path("/proc/cpuinfo"), X86).unwrap();
        let cpu = detect(&host);
        assert_eq!((cpu.logical_cores, cpu.physical_cores, cpu.sockets), (3, 2, 1), "cpuinfo's processor count first");
        std::fs::write(host.path("/proc/cpuinfo"), "").unwrap();
        let cpu = detect(&host);
        assert_eq!((cpu.logical_cores, cpu.physical_cores, cpu.sockets), (4, 2, 1));
        assert_eq!(cpu.model, "unknown");
    }
}
