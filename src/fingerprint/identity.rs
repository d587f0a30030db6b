//! The identity string: `{gpu}_{cpu}_{ram}_{storage}_{cuda}_{driver}_{os}`.
//!
//! The Python kitt's layout, made stable and parseable: every part is a slug (`[a-z0-9.-]`, so
//! `_` only ever separates parts), an absent part keeps its place (`nogpu`, `nocuda`,
//! `nodriver`), and vendor words and marketing noise are dropped by the rules below, each
//! spelled out in docs/hardware.md. Changing a rule changes identities: update the docs and the
//! exact-string tests together.

use super::Hardware;

/// Lower-case ASCII letters, digits and dots; every other run of characters becomes one `-`;
/// no `-` or `.` at either end.
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(|c| c == '-' || c == '.').to_string()
}

/// Bytes in GiB, rounded to the nearest.
fn gib(bytes: u64) -> u64 {
    (bytes + (1 << 29)) >> 30
}

/// `80GB`, `2TB`, `1.92TB`: a capacity, which the identity states once, in its own place.
fn is_capacity(word: &str) -> bool {
    let w = word.to_ascii_lowercase();
    let Some(number) = w.strip_suffix("gb").or_else(|| w.strip_suffix("tb")) else { return false };
    !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.')
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || c == '-' || c == '_').filter(|w| !w.is_empty())
}

/// `NVIDIA GeForce RTX 4090` → `rtx4090`, `NVIDIA A100-SXM4-80GB` → `a100-sxm4`.
pub(crate) fn gpu_name(name: &str) -> String {
    let kept: Vec<&str> = words(name)
        .filter(|w| !["nvidia", "geforce", "tesla"].contains(&w.to_ascii_lowercase().as_str()) && !is_capacity(w))
        .collect();
    let kept = if kept.is_empty() { words(name).collect() } else { kept };
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < kept.len() {
        let w = kept[i];
        let series = ["rtx", "gtx", "gt"].contains(&w.to_ascii_lowercase().as_str());
        match kept.get(i + 1) {
            Some(next) if series && next.starts_with(|c: char| c.is_ascii_digit()) => {
                parts.push(format!("{w}{next}"));
                i += 2;
            }
            _ => {
                parts.push(w.to_string());
                i += 1;
            }
        }
    }
    let s = slug(&parts.join("-"));
    if s.is_empty() { "unknown".to_string() } else { s }
}

/// `13th Gen Intel(R) Core(TM) i9-13900K` → `i9-13900k`,
/// `AMD EPYC 9654 96-Core Processor` → `epyc-9654`.
pub(crate) fn cpu_name(model: &str) -> String {
    let mut text = model.to_string();
    for mark in ["(R)", "(r)", "(TM)", "(tm)", "®", "™"] {
        text = text.replace(mark, " ");
    }
    for tail in [" @ ", " with ", " With ", " w/ "] {
        if let Some(at) = text.find(tail) {
            text.truncate(at);
        }
    }
    let noise = |w: &str| {
        let l = w.to_ascii_lowercase();
        let ordinal = ["st", "nd", "rd", "th"]
            .iter()
            .any(|s| l.strip_suffix(s).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())));
        let cores = ["-core", "-cores"]
            .iter()
            .any(|s| l.strip_suffix(s).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())));
        ordinal || cores || ["intel", "amd", "apple", "core", "cpu", "processor", "gen"].contains(&l.as_str())
    };
    let all: Vec<&str> = text.split_whitespace().collect();
    let kept: Vec<&str> = all.iter().copied().filter(|w| !noise(w)).collect();
    let s = slug(&if kept.is_empty() { all } else { kept }.join("-"));
    if s.is_empty() { "unknown".to_string() } else { s }
}

/// `Samsung SSD 990 PRO 2TB` on NVMe → `samsung-990-pro-nvme`.
pub(crate) fn storage_name(vendor: Option<&str>, model: &str, kind: &str) -> String {
    let mut text = model.to_string();
    if let Some(v) = vendor.filter(|v| !model.to_lowercase().contains(&v.to_lowercase())) {
        text = format!("{v} {model}");
    }
    let kept: Vec<&str> = words(&text)
        .filter(|w| !["ssd", "nvme", "hdd"].contains(&w.to_ascii_lowercase().as_str()) && !is_capacity(w))
        .collect();
    let name = slug(&kept.join("-"));
    format!("{}-{kind}", if name.is_empty() { "unknown" } else { &name })
}

/// `6.8.0-45-generic` → `6.8`.
fn kernel_series(kernel: &str) -> String {
    let numbers: Vec<&str> = kernel
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .filter(|p| !p.is_empty())
        .take(2)
        .collect();
    if numbers.len() == 2 { numbers.join(".") } else { slug(kernel) }
}

fn gpus(hw: &Hardware) -> String {
    if hw.gpus.is_empty() {
        return "nogpu".to_string();
    }
    // Identical GPUs are one group with a count; groups keep NVML order.
    let mut groups: Vec<(String, usize)> = Vec::new();
    for g in &hw.gpus {
        let memory = g.memory_bytes.map(|b| format!("{}gb", gib(b))).unwrap_or_else(|| "unknown".to_string());
        let label = format!("{}-{memory}", gpu_name(&g.name));
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => groups.push((label, 1)),
        }
    }
    groups
        .into_iter()
        .map(|(label, n)| if n > 1 { format!("{label}-{n}x") } else { label })
        .collect::<Vec<_>>()
        .join("+")
}

pub(crate) fn identity(hw: &Hardware) -> String {
    let memory_type = slug(&hw.memory.kind);
    [
        gpus(hw),
        format!("{}-{}c", cpu_name(&hw.cpu.model), hw.cpu.physical_cores),
        format!("{}gb-{}", gib(hw.memory.total_bytes), if memory_type.is_empty() { "unknown" } else { &memory_type }),
        storage_name(hw.storage.vendor.as_deref(), &hw.storage.model, hw.storage.kind.name()),
        hw.cuda_version.as_deref().map(|v| format!("cuda-{}", slug(v))).unwrap_or_else(|| "nocuda".to_string()),
        hw.driver_version.as_deref().map(slug).unwrap_or_else(|| "nodriver".to_string()),
        format!("{}-{}", slug(&hw.os.family), kernel_series(&hw.os.kernel)),
    ]
    .join("_")
}

#[cfg(test)]
mod tests {
    use super::super::{Cpu, Environment, Gpu, Memory, Os, Storage, StorageKind};
    use super::*;

    fn gpu(name: &str, memory_bytes: Option<u64>, unified: bool, cc: &str) -> Gpu {
        Gpu { name: name.into(), memory_bytes, unified_memory: unified, compute_capability: Some(cc.into()) }
    }

    fn rtx4090_box() -> Hardware {
        Hardware {
            environment: Environment::NativeLinux,
            gpus: vec![gpu("NVIDIA GeForce RTX 4090", Some(25_757_220_864), false, "8.9")],
            driver_version: Some("550.90.07".into()),
            cuda_version: Some("12.4".into()),
            cpu: Cpu {
                model: "13th Gen Intel(R) Core(TM) i9-13900K".into(),
                architecture: "x86_64".into(),
                sockets: 1,
                physical_cores: 24,
                logical_cores: 32,
                flags: vec!["avx2".into(), "avx_vnni".into(), "fma".into()],
            },
            // What the kernel leaves of 64 GiB: 62.6 GiB.
            memory: Memory { total_bytes: 65_663_064 * 1024, kind: "ddr5".into(), speed_mts: Some(5600) },
            storage: Storage {
                device: "nvme0n1".into(),
                kind: StorageKind::Nvme,
                model: "Samsung SSD 990 PRO 2TB".into(),
                vendor: None,
                size_bytes: 2_000_398_934_016,
            },
            os: Os {
                family: "linux".into(),
                name: "Ubuntu 24.04.1 LTS".into(),
                id: Some("ubuntu".into()),
                version_id: Some("24.04".into()),
                kernel: "6.8.0-45-generic".into(),
            },
            system: Some("ASUS ROG STRIX Z790-E GAMING WIFI".into()),
        }
    }

    fn dgx_spark() -> Hardware {
        let ram = 125_478_532 * 1024;
        Hardware {
            environment: Environment::DgxSpark,
            gpus: vec![gpu("NVIDIA GB10", Some(ram), true, "12.1")],
            driver_version: Some("580.95.05".into()),
            cuda_version: Some("13.0".into()),
            cpu: Cpu {
                model: "Cortex-X925 + Cortex-A725".into(),
                architecture: "aarch64".into(),
                sockets: 1,
                physical_cores: 20,
                logical_cores: 20,
                flags: vec!["asimd".into(), "bf16".into(), "i8mm".into(), "sve2".into()],
            },
            memory: Memory { total_bytes: ram, kind: "lpddr5".into(), speed_mts: Some(8533) },
            storage: Storage {
                device: "nvme0n1".into(),
                kind: StorageKind::Nvme,
                model: "PM9E1 NVMe Samsung 4096GB".into(),
                vendor: None,
                size_bytes: 4_096_805_658_624,
            },
            os: Os {
                family: "linux".into(),
                name: "Ubuntu 24.04.3 LTS".into(),
                id: Some("ubuntu".into()),
                version_id: Some("24.04".into()),
                kernel: "6.11.0-1016-nvidia".into(),
            },
            system: Some("NVIDIA DGX Spark".into()),
        }
    }

    #[test]
    fn an_rtx_4090_box() {
        assert_eq!(
            identity(&rtx4090_box()),
            "rtx4090-24gb_i9-13900k-24c_63gb-ddr5_samsung-990-pro-nvme_cuda-12.4_550.90.07_linux-6.8"
        );
    }

    #[test]
    fn a_dgx_spark_reports_system_memory_as_gpu_memory() {
        assert_eq!(
            identity(&dgx_spark()),
            "gb10-120gb_cortex-x925-cortex-a725-20c_120gb-lpddr5_pm9e1-samsung-nvme_cuda-13.0_580.95.05_linux-6.11"
        );
    }

    #[test]
    fn a_cpu_only_box_keeps_every_part() {
        let hw = super::super::tests::sample();
        let id = identity(&hw);
        assert_eq!(id, "nogpu_epyc-9654-96c_400gb-ddr5_samsung-mzql23t8hcls-00a07-nvme_nocuda_nodriver_linux-6.8");
        assert_eq!(id.split('_').count(), 7);
    }

    #[test]
    fn identical_gpus_are_counted_and_mixed_ones_joined() {
        let mut hw = rtx4090_box();
        let h100 = gpu("NVIDIA H100 80GB HBM3", Some(85_520_809_984), false, "9.0");
        hw.gpus = vec![h100.clone(); 8];
        assert!(identity(&hw).starts_with("h100-hbm3-80gb-8x_"), "{}", identity(&hw));
        hw.gpus = vec![
            gpu("NVIDIA GeForce RTX 4090", Some(25_757_220_864), false, "8.9"),
            gpu("NVIDIA GeForce RTX 3090", Some(25_769_803_776), false, "8.6"),
            gpu("NVIDIA GeForce RTX 4090", Some(25_757_220_864), false, "8.9"),
        ];
        assert!(identity(&hw).starts_with("rtx4090-24gb-2x+rtx3090-24gb_"), "{}", identity(&hw));
        hw.gpus = vec![gpu("NVIDIA A100-SXM4-40GB", None, false, "8.0")];
        assert!(identity(&hw).starts_with("a100-sxm4-unknown_"), "{}", identity(&hw));
    }

    #[test]
    fn gpu_names() {
        for (name, want) in [
            ("NVIDIA GeForce RTX 4090", "rtx4090"),
            ("NVIDIA GeForce RTX 4090 D", "rtx4090-d"),
            ("NVIDIA GeForce GTX 1080 Ti", "gtx1080-ti"),
            ("NVIDIA RTX A6000", "rtx-a6000"),
            ("NVIDIA RTX 6000 Ada Generation", "rtx6000-ada-generation"),
            ("NVIDIA A100-SXM4-80GB", "a100-sxm4"),
            ("NVIDIA H100 PCIe", "h100-pcie"),
            ("NVIDIA H100 80GB HBM3", "h100-hbm3"),
            ("NVIDIA GH200 480GB", "gh200"),
            ("NVIDIA GB10", "gb10"),
            ("Tesla V100-SXM2-16GB", "v100-sxm2"),
            ("NVIDIA", "nvidia"),
            ("", "unknown"),
        ] {
            assert_eq!(gpu_name(name), want, "{name}");
        }
    }

    #[test]
    fn cpu_names() {
        for (model, want) in [
            ("13th Gen Intel(R) Core(TM) i9-13900K", "i9-13900k"),
            ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "i7-8700"),
            ("Intel(R) Xeon(R) Platinum 8480+", "xeon-platinum-8480"),
            ("Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz", "xeon-e5-2690-v4"),
            ("Intel(R) Core(TM) Ultra 9 285K", "ultra-9-285k"),
            ("AMD Ryzen 9 7950X 16-Core Processor", "ryzen-9-7950x"),
            ("AMD Ryzen 7 7840U w/ Radeon 780M Graphics", "ryzen-7-7840u"),
            ("AMD EPYC 9654 96-Core Processor", "epyc-9654"),
            ("AMD EPYC", "epyc"),
            ("Neoverse-V2", "neoverse-v2"),
            ("Apple M2 Max", "m2-max"),
            ("Intel Core", "intel-core"),
            ("unknown", "unknown"),
        ] {
            assert_eq!(cpu_name(model), want, "{model}");
        }
    }

    #[test]
    fn storage_names() {
        assert_eq!(storage_name(None, "Samsung SSD 990 PRO 2TB", "nvme"), "samsung-990-pro-nvme");
        assert_eq!(storage_name(None, "WD_BLACK SN850X 2000GB", "nvme"), "wd-black-sn850x-nvme");
        assert_eq!(storage_name(Some("SEAGATE"), "ST4000NM0035-1V4", "hdd"), "seagate-st4000nm0035-1v4-hdd");
        assert_eq!(storage_name(Some("Samsung"), "Samsung SSD 870 EVO 1TB", "ssd"), "samsung-870-evo-ssd");
        assert_eq!(storage_name(None, "virtio_blk", "virtual"), "virtio-blk-virtual");
        assert_eq!(storage_name(None, "1.92TB NVMe SSD", "nvme"), "unknown-nvme");
    }

    #[test]
    fn slugs_and_kernel_series() {
        assert_eq!(slug("  Foo_Bar (x) 12.4 "), "foo-bar-x-12.4");
        assert_eq!(slug("--a--"), "a");
        assert_eq!(slug("Ünïcode"), "n-code");
        assert_eq!(kernel_series("6.8.0-45-generic"), "6.8");
        assert_eq!(kernel_series("6.18.44-fc-v669"), "6.18");
        assert_eq!(kernel_series("5.15.153.1-microsoft-standard-WSL2"), "5.15");
        assert_eq!(kernel_series("unknown"), "unknown");
        assert_eq!(gib(25_757_220_864), 24);
        assert_eq!(gib(1 << 29), 1, "half a GiB rounds up");
    }
}
