//! Where `{from_env: NAME}` values come from when a step needs them: the process environment,
//! else the secrets file named by `KITT_SECRETS_FILE` (`execution.slurm.secrets_file` sets it on
//! the nodes). Secrets never travel through a batch system: Slurm keeps every job's script and
//! environment in its state directory, so a task reads them on its node.
//!
//! The file holds `NAME=VALUE` lines (blank lines and `#` comments allowed). It must be a regular
//! file that only its owner can read or write (mode 0600 or stricter); anything else is refused
//! with the reason, never read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// The variable naming the secrets file.
pub const FILE_ENV: &str = "KITT_SECRETS_FILE";

/// The value of the secret `name`: the environment's, else the secrets file's.
pub fn lookup(name: &str) -> Result<Option<String>, String> {
    if let Ok(v) = std::env::var(name) {
        return Ok(Some(v));
    }
    Ok(file()?.get(name).cloned())
}

/// Where a missing secret was looked for, for an error message.
pub fn looked_in() -> String {
    match std::env::var(FILE_ENV) {
        Ok(f) => format!("the environment or the secrets file {f}"),
        Err(_) => "the environment".to_string(),
    }
}

fn file() -> Result<&'static HashMap<String, String>, String> {
    static FILE: OnceLock<Result<HashMap<String, String>, String>> = OnceLock::new();
    FILE.get_or_init(|| match std::env::var_os(FILE_ENV) {
        None => Ok(HashMap::new()),
        Some(p) => read(Path::new(&p)),
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Reads a secrets file, refusing one that others may read.
pub fn read(path: &Path) -> Result<HashMap<String, String>, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the secrets file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("the secrets file {} is not a regular file", path.display()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the secrets file {} may be read or written by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the secrets file {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{}:{}: expected `NAME=VALUE`", path.display(), i + 1));
        };
        out.insert(name.trim().to_string(), value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn only_an_owner_only_file_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secrets");
        std::fs::write(&p, "# keys\nAPI_KEY=a=b c\n\nOTHER = x\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let m = read(&p).unwrap();
        assert_eq!(m["API_KEY"], "a=b c");
        assert_eq!(m["OTHER"], " x");
        std::fs::write(&p, "JUNK\n").unwrap();
        assert!(read(&p).unwrap_err().ends_with(":1: expected `NAME=VALUE`"));
    }
}
