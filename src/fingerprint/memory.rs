//! System memory: its size from /proc/meminfo, its type and speed from the SMBIOS table.
//!
//! The type is read from the raw table the firmware hands the kernel
//! (/sys/firmware/dmi/tables/DMI, the same bytes `dmidecode -t 17` decodes) rather than by
//! running dmidecode: no subprocess, no dependency on it being installed, and the same
//! permission (root) either way. Without it the type is `unknown`.

use super::{Host, Memory};

pub(crate) fn detect(host: &Host) -> Memory {
    let total_bytes = host.read("/proc/meminfo").and_then(|t| mem_total(&t)).unwrap_or(0);
    let (kind, speed_mts) = std::fs::read(host.path("/sys/firmware/dmi/tables/DMI"))
        .map(|table| memory_devices(&table))
        .unwrap_or((None, None));
    Memory { total_bytes, kind: kind.unwrap_or("unknown").to_string(), speed_mts }
}

/// `MemTotal` in bytes.
pub(crate) fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// SMBIOS memory type codes (DSP0134, type 17 offset 12h) kitt names.
fn type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x12 => "ddr",
        0x13 | 0x14 => "ddr2",
        0x18 => "ddr3",
        0x1a => "ddr4",
        0x1b => "lpddr",
        0x1c => "lpddr2",
        0x1d => "lpddr3",
        0x1e => "lpddr4",
        0x20 => "hbm",
        0x21 => "hbm2",
        0x22 => "ddr5",
        0x23 => "lpddr5",
        0x24 => "hbm3",
        _ => return None,
    })
}

fn word(s: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*s.get(at)?, *s.get(at + 1)?]))
}

fn dword(s: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([*s.get(at)?, *s.get(at + 1)?, *s.get(at + 2)?, *s.get(at + 3)?]))
}

/// The type and speed (MT/s, configured if known) of the first installed memory device
/// (SMBIOS structure type 17) in a raw SMBIOS table.
pub(crate) fn memory_devices(table: &[u8]) -> (Option<&'static str>, Option<u32>) {
    let mut kind = None;
    let mut speed = None;
    let mut at = 0;
    while at + 4 <= table.len() {
        let (ty, len) = (table[at], table[at + 1] as usize);
        if len < 4 || at + len > table.len() {
            break;
        }
        let s = &table[at..at + len];
        if ty == 17 && len >= 0x17 {
            let size = word(s, 0x0c).unwrap_or(0);
            if size != 0 {
                kind = kind.or_else(|| type_name(s[0x12]));
                speed = speed.or_else(|| device_speed(s));
            }
        }
        if ty == 127 {
            break;
        }
        // The formatted area is followed by its strings, ended by two NULs.
        let strings = at + len;
        match table[strings..].windows(2).position(|w| w == [0, 0]) {
            Some(end) => at = strings + end + 2,
            None => break,
        }
    }
    (kind, speed)
}

/// Configured speed (22h, extended at 58h), else maximum speed (15h, extended at 54h); 0 is
/// unknown and FFFFh points at the extended field.
fn device_speed(s: &[u8]) -> Option<u32> {
    let pick = |short: Option<u16>, extended: usize| match short? {
        0 => None,
        0xffff => dword(s, extended).filter(|v| *v != 0),
        v => Some(u32::from(v)),
    };
    pick(word(s, 0x20), 0x58).or_else(|| pick(word(s, 0x15), 0x54))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type 17 structure of SMBIOS 3.2 length (0x28) with one string.
    fn device(size_mb: u16, code: u8, speed: u16, configured: u16) -> Vec<u8> {
        let mut s = vec![0u8; 0x28];
        s[0] = 17;
        s[1] = 0x28;
        s[0x0c..0x0e].copy_from_slice(&size_mb.to_le_bytes());
        s[0x12] = code;
        s[0x15..0x17].copy_from_slice(&speed.to_le_bytes());
        s[0x20..0x22].copy_from_slice(&configured.to_le_bytes());
        s.extend_from_slice(b"DIMM A1\0\0");
        s
    }

    #[test]
    fn reads_type_and_speed_of_the_first_installed_device() {
        let mut table = vec![0, 0x18, 0, 0];
        table.resize(0x18, 0);
        table.extend_from_slice(b"BIOS vendor\0\0"); // a type 0 structure
        table.extend(device(0, 0x02, 0, 0)); // an empty slot
        table.extend(device(32768, 0x22, 5600, 4800));
        table.extend(device(32768, 0x1a, 3200, 3200));
        table.extend_from_slice(&[127, 4, 0, 0, 0, 0]);
        assert_eq!(memory_devices(&table), (Some("ddr5"), Some(4800)));
    }

    #[test]
    fn unknown_configured_speed_falls_back_to_the_rated_one() {
        let table = device(16384, 0x23, 8533, 0);
        assert_eq!(memory_devices(&table), (Some("lpddr5"), Some(8533)));
        assert_eq!(memory_devices(&[17, 0x28, 1]), (None, None), "a truncated table is not read past its end");
        assert_eq!(memory_devices(&[]), (None, None));
    }

    #[test]
    fn mem_total_is_in_bytes() {
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        21919116 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_684_084 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB"), None);
    }
}
