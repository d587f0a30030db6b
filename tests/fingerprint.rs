//! `kitt fingerprint` on this machine: every field it can read is there, the identity and hash
//! do not move between calls, the JSON agrees with the checked-in schema, and a machine without
//! an NVIDIA driver is a normal machine.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kitt::fingerprint::gpu::{self, Sampler};
use kitt::fingerprint::{self, Fingerprint};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kitt(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kitt")).args(args).output().unwrap();
    assert!(out.status.success(), "kitt {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the dynamic linker knows an NVML library here.
fn nvml_installed() -> bool {
    Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(gpu::LIBRARY))
        .unwrap_or(false)
}

#[test]
fn every_cpu_memory_storage_and_os_field_is_read_here() {
    let hw = Fingerprint::detect().hardware;
    assert!(!hw.cpu.model.is_empty() && hw.cpu.model != "unknown", "{:?}", hw.cpu);
    assert!(!hw.cpu.architecture.is_empty());
    assert!(hw.cpu.sockets >= 1 && hw.cpu.physical_cores >= 1, "{:?}", hw.cpu);
    assert!(hw.cpu.logical_cores >= hw.cpu.physical_cores, "{:?}", hw.cpu);
    assert!(hw.memory.total_bytes > 1 << 28, "{:?}", hw.memory);
    assert!(!hw.memory.kind.is_empty());
    assert!(!hw.storage.device.is_empty() && hw.storage.device != "unknown", "{:?}", hw.storage);
    assert!(!hw.storage.model.is_empty() && hw.storage.model != "unknown", "{:?}", hw.storage);
    assert!(hw.storage.size_bytes > 0, "{:?}", hw.storage);
    assert!(hw.os.name != "unknown" && !hw.os.kernel.is_empty() && hw.os.kernel != "unknown", "{:?}", hw.os);
    assert_eq!(hw.os.family, std::env::consts::OS);
}

#[test]
fn identity_and_hash_are_stable_across_calls() {
    let a = Fingerprint::detect();
    let b = Fingerprint::detect();
    assert_eq!(a.identity, b.identity);
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hardware, b.hardware);
    assert_eq!(a.identity, a.hardware.identity());
    assert_eq!(a.hash, a.hardware.hash());
    assert_eq!(a.identity.split('_').count(), 7, "{}", a.identity);
    assert!(a.identity.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_+".contains(&c)));
    assert_eq!(a.hash.len(), 16);
    // The same machine through the binary.
    assert_eq!(kitt(&["fingerprint"]).trim_end(), a.identity);
}

#[test]
fn no_nvml_library_is_an_empty_gpu_list_with_a_note() {
    let missing = gpu::probe(OsStr::new("/nonexistent/libnvidia-ml.so.1"));
    assert!(missing.gpus.is_empty() && missing.driver_version.is_none() && missing.cuda_version.is_none());
    assert!(missing.note.unwrap().contains("cannot load /nonexistent/libnvidia-ml.so.1"));

    let fp = Fingerprint::detect();
    if fp.hardware.gpus.is_empty() {
        assert!(fp.gpu_note.is_some(), "an empty GPU list says why");
    }
    if !nvml_installed() {
        // This machine has no driver: the real lookup, not a made-up path, ends in the note.
        assert!(fp.hardware.gpus.is_empty());
        assert_eq!((fp.hardware.driver_version.as_deref(), fp.hardware.cuda_version.as_deref()), (None, None));
        let note = fp.gpu_note.as_deref().unwrap();
        assert!(note.starts_with("no NVIDIA GPU support: cannot load libnvidia-ml.so.1"), "{note}");
        assert!(fp.identity.starts_with("nogpu_") && fp.identity.contains("_nocuda_nodriver_"), "{}", fp.identity);
        assert!(Sampler::open().sample().is_err());
    }
}

#[test]
fn a_sampler_without_nvml_is_unavailable_not_broken() {
    let s = Sampler::with_library(OsStr::new("/nonexistent/libnvidia-ml.so.1"));
    let e = s.sample().unwrap_err();
    assert!(e.to_string().contains("cannot load"), "{e}");
    assert!(s.unavailable().is_some());
}

#[test]
fn json_output_validates_against_the_checked_in_schema() {
    let text = std::fs::read_to_string(root().join("schemas/fingerprint.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    for args in [&["fingerprint", "--output", "json"][..], &["fingerprint", "--output", "json", "--no-docker"]] {
        let value: serde_json::Value = serde_json::from_str(&kitt(args)).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{args:?}: {errors:#?}");
        let fp: Fingerprint = serde_json::from_value(value).unwrap();
        assert_eq!(fp.schema, fingerprint::FINGERPRINT_SCHEMA);
        assert_eq!(fp.hash, fp.hardware.hash(), "the hash printed is the hash of the facts printed");
        assert_eq!(fp.identity, fp.hardware.identity());
        assert_eq!(fp.docker.is_some(), !args.contains(&"--no-docker"));
    }
    // The schema rejects what kitt would not write.
    let mut bad: serde_json::Value = serde_json::from_str(&kitt(&["fingerprint", "--output", "json"])).unwrap();
    bad["hardware"]["cpu"]["frequency_mhz"] = 3000.into();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn the_checked_in_schema_is_not_stale() {
    let on_disk = std::fs::read_to_string(root().join("schemas/fingerprint.schema.json")).unwrap_or_default();
    assert!(
        on_disk == fingerprint::schema(),
        "schemas/fingerprint.schema.json is stale: run `cargo run -- schema --out schemas/`"
    );
}

#[test]
fn verbose_text_shows_every_field() {
    let text = kitt(&["fingerprint", "-v", "--no-docker"]);
    let keys: Vec<&str> = text.lines().map(|l| l.split("  ").next().unwrap_or("")).collect();
    for key in ["identity", "hash", "environment", "driver", "cuda", "cpu", "cpu flags", "memory", "storage", "os"] {
        assert!(keys.contains(&key), "no `{key}` line in:\n{text}");
    }
    assert!(keys.contains(&"gpus") || keys.contains(&"gpu 0"), "{text}");
    assert!(!keys.contains(&"docker"), "--no-docker: {text}");
}

#[test]
fn the_docker_probe_answers_within_its_deadline() {
    let mut fp = Fingerprint::detect();
    let hash = fp.hash.clone();
    let started = std::time::Instant::now();
    fp.probe_docker(Duration::from_secs(3));
    // A deadline, not a performance target: the probe gives up instead of hanging.
    assert!(started.elapsed() < Duration::from_secs(10));
    let d = fp.docker.unwrap();
    assert!(d.server_version.is_some() || d.note.is_some(), "{d:?}");
    assert_eq!(fp.hash, hash);
}
