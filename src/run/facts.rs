//! Observed facts that kitt takes itself rather than asks an engine for: which kitt build is
//! measuring, and which model file an engine serves.
//!
//! A resume compares them with what the earlier attempts of the run recorded, so each must
//! change exactly when the numbers could: a rebuilt kitt (new measurement code) with the same
//! version string is a different build; a model file replaced at the same path is a different
//! model. Both are cheap enough to take on every start: the build is hashed once per process,
//! a model file is hashed by its edges (first and last MiB plus its size), and the hash is taken
//! again only when the file's size or mtime moved (`--verify-models` hashes whole files).

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The environment variable that replaces the build identity (for tests, which need two
/// "builds" of one binary; never set it to hide a real rebuild).
pub const BUILD_ID_ENV: &str = "KITT_TEST_BUILD_ID";

/// How many bytes of each end of a model file the edge hash reads.
const EDGE: u64 = 1 << 20;

/// This kitt's build: its version and a hash of the running binary, taken once per process.
/// `KITT_TEST_BUILD_ID` replaces the hash (tests only).
pub fn build_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let version = env!("CARGO_PKG_VERSION");
        if let Ok(id) = std::env::var(BUILD_ID_ENV) {
            return format!("{version}+{id}");
        }
        let cache = super::pidfile::state_dir().map(|d| d.join("build-hash.json"));
        let exe = std::env::current_exe().and_then(|p| exe_hash(&p, cache.as_deref()));
        match exe {
            Ok(h) => format!("{version}+exe.{h}"),
            Err(e) => {
                tracing::warn!("cannot hash the running kitt binary ({e}): its build is known by version only");
                version.to_string()
            }
        }
    })
    .clone()
}

/// The running binary's hash, kept in kitt's state directory beside what identified the file
/// (path, device, inode, size, mtime), so that only the first run of a build reads the whole
/// binary (about 0.3 s for a 100 MB debug-info build) and later ones one small file.
fn exe_hash(exe: &Path, cache: Option<&Path>) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(exe)?;
    let stamp = serde_json::json!({
        "path": exe, "dev": meta.dev(), "ino": meta.ino(), "size": meta.len(),
        "mtime_ns": meta.mtime() as i128 * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    });
    let cached: Option<serde_json::Value> =
        cache.and_then(|c| std::fs::read(c).ok()).and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(c) = cached.filter(|c| c["stamp"] == stamp)
        && let Some(h) = c["hash"].as_str()
    {
        return Ok(h.to_string());
    }
    let mut h = Sha256::new();
    io::copy(&mut File::open(exe)?, &mut h)?;
    let hash = hex(&h.finalize()[..8]);
    if let Some(c) = cache {
        let record = serde_json::json!({"stamp": stamp, "hash": hash});
        // A cache that cannot be written only costs the next run the hash again.
        let _ = c.parent().map(std::fs::create_dir_all);
        let _ = super::dir::write_atomic(c, record.to_string().as_bytes());
    }
    Ok(hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a model path looked like when it was fingerprinted: the fast path compares this, and
/// only a change makes kitt read the file again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStat {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u128,
    /// The fingerprint taken at this stat (`sha256-edges:…` or, verified, `sha256:…`).
    pub fingerprint: String,
}

/// The fingerprint of the model at `path` (a file, or a directory of files): reused from
/// `previous` when the size and mtime are unchanged, otherwise the edge hash; with `verify`,
/// always the sha256 of the whole contents.
pub fn model_fingerprint(path: &Path, previous: Option<&ModelStat>, verify: bool) -> io::Result<ModelStat> {
    let files = model_files(path)?;
    let (mut size, mut mtime_ns) = (0u64, 0u128);
    for (_, meta) in &files {
        size += meta.len();
        let t = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        mtime_ns = mtime_ns.max(t);
    }
    let stat = |fingerprint| ModelStat { path: path.to_path_buf(), size, mtime_ns, fingerprint };
    if let Some(p) = previous
        && !verify
        && p.path == path
        && p.size == size
        && p.mtime_ns == mtime_ns
    {
        return Ok(stat(p.fingerprint.clone()));
    }
    let mut all = Sha256::new();
    for (file, meta) in &files {
        let rel = file.strip_prefix(path).unwrap_or(file);
        all.update(rel.to_string_lossy().as_bytes());
        all.update(meta.len().to_le_bytes());
        let mut f = File::open(file)?;
        if verify || meta.len() <= 2 * EDGE {
            io::copy(&mut f, &mut all)?;
        } else {
            let mut buf = vec![0u8; EDGE as usize];
            f.read_exact(&mut buf)?;
            all.update(&buf);
            f.seek(SeekFrom::End(-(EDGE as i64)))?;
            f.read_exact(&mut buf)?;
            all.update(&buf);
        }
    }
    let scheme = if verify { "sha256" } else { "sha256-edges" };
    Ok(stat(format!("{scheme}:{}:{size}", hex(&all.finalize()[..16]))))
}

/// The files of a model path, sorted (a directory is walked; symlinks are followed, as the
/// engine follows them).
fn model_files(path: &Path) -> io::Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![(path.to_path_buf(), meta)]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let m = std::fs::metadata(&p)?;
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push((p, m));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_hashed_once_per_build_and_again_when_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let (exe, cache) = (d.path().join("kitt"), d.path().join("state/build-hash.json"));
        std::fs::write(&exe, b"build one").unwrap();
        let first = exe_hash(&exe, Some(&cache)).unwrap();
        assert!(cache.exists());
        // The cached hash is used while the file is the same file: prove it by planting one.
        let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        record["hash"] = "planted".into();
        std::fs::write(&cache, record.to_string()).unwrap();
        assert_eq!(exe_hash(&exe, Some(&cache)).unwrap(), "planted");
        // A rebuilt binary (another size, mtime or inode) is hashed again.
        std::fs::remove_file(&exe).unwrap();
        std::fs::write(&exe, b"build two, longer").unwrap();
        let second = exe_hash(&exe, Some(&cache)).unwrap();
        assert!(second != first && second != "planted");
        assert_eq!(exe_hash(&exe, None).unwrap(), second, "no cache: the same hash, read whole");
    }

    #[test]
    fn a_replaced_file_changes_the_fingerprint_and_a_touch_does_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        // Larger than both edges, so the middle is not read.
        let mut bytes = vec![7u8; 3 * EDGE as usize];
        std::fs::write(&p, &bytes).unwrap();
        let first = model_fingerprint(&p, None, false).unwrap();
        assert!(first.fingerprint.starts_with("sha256-edges:"), "{first:?}");
        // Same bytes rewritten (a new mtime): read again, same fingerprint.
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(model_fingerprint(&p, Some(&first), false).unwrap().fingerprint, first.fingerprint);
        // Last byte changed: a different model.
        *bytes.last_mut().unwrap() = 8;
        std::fs::write(&p, &bytes).unwrap();
        let changed = model_fingerprint(&p, Some(&first), false).unwrap();
        assert_ne!(changed.fingerprint, first.fingerprint);
        // A change in the middle escapes the edges but not --verify-models.
        bytes[EDGE as usize + 5] = 9;
        std::fs::write(&p, &bytes).unwrap();
        let edges = model_fingerprint(&p, None, false).unwrap();
        assert_eq!(edges.fingerprint, changed.fingerprint);
        let full = model_fingerprint(&p, None, true).unwrap();
        assert!(full.fingerprint.starts_with("sha256:"));
        bytes[EDGE as usize + 5] = 7;
        std::fs::write(&p, &bytes).unwrap();
        assert_ne!(model_fingerprint(&p, None, true).unwrap().fingerprint, full.fingerprint);
    }

    #[test]
    fn an_unchanged_stat_reuses_the_recorded_fingerprint_without_reading() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, b"weights").unwrap();
        let now = model_fingerprint(&p, None, false).unwrap();
        let recorded = ModelStat { fingerprint: "sha256-edges:recorded".into(), ..now.clone() };
        assert_eq!(model_fingerprint(&p, Some(&recorded), false).unwrap().fingerprint, "sha256-edges:recorded");
        assert_eq!(model_fingerprint(&p, Some(&recorded), true).unwrap().fingerprint.split(':').next(), Some("sha256"));
    }

    #[test]
    fn the_build_id_names_the_version() {
        assert!(build_id().starts_with(env!("CARGO_PKG_VERSION")));
    }
}
