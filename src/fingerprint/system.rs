//! The operating system (/etc/os-release, the kernel release), the machine's DMI name, and the
//! environment type.
//!
//! The environment is decided by the first marker found, in this order: DGX markers
//! (/etc/dgx-release, a GB10 GPU, a DMI product name with `DGX`) — the hardware matters more
//! than how kitt was started on it —, then WSL (/proc/version), Docker (/.dockerenv), other
//! containers (/run/.containerenv, /proc/1/cgroup), and otherwise the native OS.

use super::{Environment, Gpu, Host, Os};

pub(crate) fn os(host: &Host) -> Os {
    let release = host.read("/etc/os-release").or_else(|| host.read("/usr/lib/os-release")).unwrap_or_default();
    let field = |key: &str| os_release_field(&release, key);
    Os {
        family: std::env::consts::OS.to_string(),
        name: field("PRETTY_NAME").or_else(|| field("NAME")).unwrap_or_else(|| "unknown".to_string()),
        id: field("ID"),
        version_id: field("VERSION_ID"),
        kernel: host.read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".to_string()),
    }
}

/// One `KEY=value` of os-release(5), unquoted.
pub(crate) fn os_release_field(text: &str, key: &str) -> Option<String> {
    let value = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))?.trim();
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
    (!value.is_empty()).then(|| value.to_string())
}

/// Placeholders firmware leaves in DMI fields.
const DMI_PLACEHOLDERS: &[&str] =
    &["to be filled by o.e.m.", "default string", "system product name", "system manufacturer", "not specified"];

/// `sys_vendor` and `product_name` from /sys/class/dmi/id (readable by every user).
pub(crate) fn dmi_product(host: &Host) -> Option<String> {
    let field = |f: &str| {
        host.read(&format!("/sys/class/dmi/id/{f}")).filter(|v| !DMI_PLACEHOLDERS.contains(&v.to_lowercase().as_str()))
    };
    match (field("sys_vendor"), field("product_name")) {
        (Some(v), Some(p)) if p.to_lowercase().starts_with(&v.to_lowercase()) => Some(p),
        (Some(v), Some(p)) => Some(format!("{v} {p}")),
        (v, p) => v.or(p),
    }
}

pub(crate) fn environment(host: &Host, gpus: &[Gpu], system: Option<&str>) -> Environment {
    let dgx = |text: &str| if text.to_lowercase().contains("spark") { Environment::DgxSpark } else { Environment::Dgx };
    if host.exists("/etc/dgx-release") {
        return dgx(&host.read("/etc/dgx-release").unwrap_or_default());
    }
    if gpus.iter().any(|g| g.name.to_uppercase().contains("GB10")) {
        return Environment::DgxSpark;
    }
    if let Some(s) = system.filter(|s| s.to_uppercase().contains("DGX")) {
        return dgx(s);
    }
    let version = host.read("/proc/version").unwrap_or_default().to_lowercase();
    if version.contains("microsoft") || version.contains("wsl") {
        return Environment::Wsl2;
    }
    if host.exists("/.dockerenv") {
        return Environment::Docker;
    }
    let cgroup = host.read("/proc/1/cgroup").unwrap_or_default();
    if host.exists("/run/.containerenv")
        || ["docker", "lxc", "kubepods", "containerd", "libpod"].iter().any(|m| cgroup.contains(m))
    {
        return Environment::Container;
    }
    if cfg!(target_os = "macos") { Environment::NativeMacos } else { Environment::NativeLinux }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(host: &Host, path: &str, text: &str) {
        let p = host.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn gpu(name: &str) -> Gpu {
        Gpu { name: name.into(), memory_bytes: None, unified_memory: false, compute_capability: None }
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text =
            "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nPRETTY_NAME='Ubuntu 24.04.1 LTS'\nID_LIKE=debian\n";
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("ubuntu"));
        assert_eq!(os_release_field(text, "VERSION_ID").as_deref(), Some("24.04"));
        assert_eq!(os_release_field(text, "PRETTY_NAME").as_deref(), Some("Ubuntu 24.04.1 LTS"));
        assert_eq!(os_release_field(text, "VERSION"), None);
    }

    #[test]
    fn environment_markers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::at(dir.path());
        assert_eq!(
            environment(&host, &[], None),
            if cfg!(target_os = "macos") { Environment::NativeMacos } else { Environment::NativeLinux }
        );
        write(&host, "/proc/1/cgroup", "0::/kubepods/besteffort/pod1/abc\n");
        assert_eq!(environment(&host, &[], None), Environment::Container);
        write(&host, "/.dockerenv", "");
        assert_eq!(environment(&host, &[], None), Environment::Docker);
        write(&host, "/proc/version", "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@1) #1 SMP\n");
        assert_eq!(environment(&host, &[], None), Environment::Wsl2);
        assert_eq!(environment(&host, &[], Some("NVIDIA DGX H100")), Environment::Dgx);
        assert_eq!(environment(&host, &[gpu("NVIDIA GB10")], Some("NVIDIA DGX H100")), Environment::DgxSpark);
        write(&host, "/etc/dgx-release", "DGX_NAME=\"DGX Server\"\n");
        assert_eq!(environment(&host, &[], None), Environment::Dgx);
        write(&host, "/etc/dgx-release", "DGX_NAME=\"DGX Spark\"\n");
        assert_eq!(environment(&host, &[], None), Environment::DgxSpark);
    }

    #[test]
    fn dmi_placeholders_are_dropped_and_the_vendor_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::at(dir.path());
        assert_eq!(dmi_product(&host), None);
        write(&host, "/sys/class/dmi/id/sys_vendor", "NVIDIA\n");
        write(&host, "/sys/class/dmi/id/product_name", "DGX Spark\n");
        assert_eq!(dmi_product(&host).as_deref(), Some("NVIDIA DGX Spark"));
        write(&host, "/sys/class/dmi/id/product_name", "NVIDIA DGX H100\n");
        assert_eq!(dmi_product(&host).as_deref(), Some("NVIDIA DGX H100"));
        write(&host, "/sys/class/dmi/id/product_name", "To Be Filled By O.E.M.\n");
        assert_eq!(dmi_product(&host).as_deref(), Some("NVIDIA"));
    }
}
