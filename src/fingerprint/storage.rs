//! The disk under a path, from /sys/block.
//!
//! The path's device number leads to /sys/dev/block/MAJ:MIN; a partition is replaced by its
//! disk and a device-mapper or md device by the first disk beneath it (LVM, LUKS, RAID). A
//! filesystem without a block device number of its own (btrfs, overlayfs) is looked up in
//! /proc/self/mountinfo; when nothing leads to a disk (a container's overlay root, ZFS), the
//! first real disk of the machine stands in — a guess, but the same guess on every call.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::{Host, Storage, StorageKind};

pub(crate) fn detect(host: &Host, path: &Path) -> Storage {
    let disk = by_device_number(host, path)
        .or_else(|| by_mount_source(host, path))
        .or_else(|| first_disk(host))
        .unwrap_or_else(|| "unknown".to_string());
    describe(host, &disk)
}

/// glibc's `major()`/`minor()` of a `dev_t`.
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff);
    (major, minor)
}

fn by_device_number(host: &Host, path: &Path) -> Option<String> {
    let (major, minor) = major_minor(std::fs::metadata(path).ok()?.dev());
    // Major 0 is an anonymous device (btrfs subvolumes, overlayfs, tmpfs): no disk here.
    if major == 0 {
        return None;
    }
    whole_disk(host, &host.path(&format!("/sys/dev/block/{major}:{minor}")), 0)
}

fn by_mount_source(host: &Host, path: &Path) -> Option<String> {
    let mountinfo = host.read("/proc/self/mountinfo")?;
    let path = path.to_string_lossy();
    let (_, source) = mountinfo
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let point = fields.nth(4)?;
            let source = l.split_once(" - ")?.1.split_whitespace().nth(1)?;
            let under = point == "/" || path == point || path.starts_with(&format!("{point}/"));
            under.then_some((point.len(), source))
        })
        .max_by_key(|(len, _)| *len)?;
    let dev = source.strip_prefix("/dev/")?;
    // `/dev/mapper/x` and `/dev/disk/by-*/…` are links to the kernel name.
    let name = std::fs::canonicalize(host.path(source))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| dev.to_string());
    whole_disk(host, &host.path(&format!("/sys/class/block/{name}")), 0)
}

/// The kernel name of the disk a /sys block entry belongs to.
fn whole_disk(host: &Host, entry: &Path, depth: u32) -> Option<String> {
    let dir = std::fs::canonicalize(entry).ok()?;
    let dir = if dir.join("partition").exists() { dir.parent()?.to_path_buf() } else { dir };
    let name = dir.file_name()?.to_string_lossy().to_string();
    if depth < 4 && (name.starts_with("dm-") || name.starts_with("md")) {
        let mut below: Vec<String> = std::fs::read_dir(dir.join("slaves"))
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        below.sort();
        if let Some(first) = below.first() {
            return whole_disk(host, &host.path(&format!("/sys/class/block/{first}")), depth + 1);
        }
    }
    Some(name)
}

fn is_real_disk(name: &str) -> bool {
    !["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"].iter().any(|p| name.starts_with(p))
}

fn first_disk(host: &Host) -> Option<String> {
    let mut disks: Vec<String> = std::fs::read_dir(host.path("/sys/block"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| is_real_disk(n))
        .collect();
    disks.sort();
    disks.into_iter().next()
}

fn link_name(path: PathBuf) -> Option<String> {
    std::fs::read_link(path).ok()?.file_name().map(|n| n.to_string_lossy().to_string())
}

/// What /sys/block says about one disk.
fn describe(host: &Host, name: &str) -> Storage {
    let dir = format!("/sys/block/{name}");
    let read = |file: &str| host.read(&format!("{dir}/{file}"));
    let size_bytes = read("size").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512;
    let driver = link_name(host.path(&format!("{dir}/device/driver")));
    let paravirtual = driver.as_deref().is_some_and(|d| d.starts_with("virtio") || d.starts_with("xen"))
        || name.starts_with("vd")
        || name.starts_with("xvd");
    let kind = if name.starts_with("nvme") {
        StorageKind::Nvme
    } else if paravirtual {
        StorageKind::Virtual
    } else {
        match read("queue/rotational").as_deref() {
            Some("0") => StorageKind::Ssd,
            Some("1") => StorageKind::Hdd,
            _ => StorageKind::Unknown,
        }
    };
    let vendor = read("device/vendor").filter(|v| v != "ATA" && !v.starts_with("0x"));
    let model = read("device/model").or(driver).unwrap_or_else(|| "unknown".to_string());
    Storage { device: name.to_string(), kind, model, vendor, size_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(host: &Host, path: &str, text: &str) {
        let p = host.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn link(host: &Host, path: &str, target: &str) {
        let p = host.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// An NVMe disk with a partition under LUKS, as sysfs lays it out.
    fn machine() -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::at(dir.path());
        let disk = "/sys/devices/pci0000:00/0000:00:01.0/nvme/nvme0/nvme0n1";
        write(&host, &format!("{disk}/size"), "3907029168\n");
        write(&host, &format!("{disk}/queue/rotational"), "0\n");
        write(&host, &format!("{disk}/nvme0n1p2/partition"), "2\n");
        write(&host, "/sys/devices/pci0000:00/0000:00:01.0/nvme/nvme0/model", "Samsung SSD 990 PRO 2TB          \n");
        link(&host, &format!("{disk}/device"), "../../nvme0");
        write(&host, "/sys/devices/virtual/block/dm-0/slaves/nvme0n1p2", "");
        link(&host, "/sys/block/nvme0n1", &host.path(disk).to_string_lossy());
        link(&host, "/sys/class/block/nvme0n1p2", &host.path(&format!("{disk}/nvme0n1p2")).to_string_lossy());
        link(&host, "/sys/dev/block/253:0", &host.path("/sys/devices/virtual/block/dm-0").to_string_lossy());
        link(&host, "/sys/dev/block/259:2", &host.path(&format!("{disk}/nvme0n1p2")).to_string_lossy());
        std::fs::create_dir_all(host.path("/sys/block/loop0")).unwrap();
        (dir, host)
    }

    #[test]
    fn a_partition_under_device_mapper_leads_to_its_nvme_disk() {
        let (_dir, host) = machine();
        assert_eq!(whole_disk(&host, &host.path("/sys/dev/block/259:2"), 0).as_deref(), Some("nvme0n1"));
        assert_eq!(whole_disk(&host, &host.path("/sys/dev/block/253:0"), 0).as_deref(), Some("nvme0n1"));
        let s = describe(&host, "nvme0n1");
        assert_eq!(s.kind, StorageKind::Nvme);
        assert_eq!(s.model, "Samsung SSD 990 PRO 2TB");
        assert_eq!(s.size_bytes, 3_907_029_168 * 512);
        assert_eq!(first_disk(&host).as_deref(), Some("nvme0n1"), "loop devices are not disks");
    }

    #[test]
    fn sata_and_virtio_disks() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::at(dir.path());
        write(&host, "/sys/block/sda/queue/rotational", "1\n");
        write(&host, "/sys/block/sda/device/vendor", "ATA     \n");
        write(&host, "/sys/block/sda/device/model", "ST4000DM004-2U91\n");
        let s = describe(&host, "sda");
        assert_eq!((s.kind, s.model.as_str(), s.vendor), (StorageKind::Hdd, "ST4000DM004-2U91", None));
        write(&host, "/sys/block/vda/queue/rotational", "1\n");
        write(&host, "/sys/block/vda/device/vendor", "0x1af4\n");
        link(&host, "/sys/block/vda/device/driver", "../../../../bus/virtio/drivers/virtio_blk");
        let s = describe(&host, "vda");
        assert_eq!((s.kind, s.model.as_str(), s.vendor), (StorageKind::Virtual, "virtio_blk", None));
        let s = describe(&host, "unknown");
        assert_eq!((s.kind, s.model.as_str(), s.size_bytes), (StorageKind::Unknown, "unknown", 0));
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(major_minor(0xfe00), (254, 0));
        assert_eq!(major_minor((259 << 8) | 2), (259, 2));
        assert_eq!(major_minor(0x0010_082c), (8, 300), "a minor above 255");
    }
}
