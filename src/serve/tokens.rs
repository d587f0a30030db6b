//! API tokens: who may call `kitt serve`, and with which scope.
//!
//! A token is 256 random bits (`kitt_` + 64 hex digits), shown once when it is made; only its
//! SHA-256 is kept, with a name, a scope and when it was made, last used and revoked. Checking a
//! presented token hashes it and compares the hash with every kept one in constant time, so the
//! time taken says nothing about how close a guess was.
//!
//! Decision: tokens live in a 0600 JSON file (`tokens.json` in kitt's config directory, or
//! `--tokens`/`KITT_TOKENS`), not in the results store: a server that publishes a store it may
//! not write (`--read-only`, a read-only mount) still needs tokens, and access to the API is a
//! property of the server, not of the results. The file is replaced atomically; a server re-reads
//! it when it changes, so `kitt serve token revoke` takes effect on a running server at once.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token may do; each scope includes the ones before it, except `agent`: the remote GPU
/// agents' routes accept only agent tokens, and agent tokens reach nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read results, runs, events and settings.
    Read,
    /// Read, and start, resume and cancel runs.
    Run,
    /// Everything, tokens and settings included.
    Admin,
    /// The agents' routes only.
    Agent,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Run => "run",
            Scope::Admin => "admin",
            Scope::Agent => "agent",
        }
    }

    /// Whether a token of this scope may call a route that needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        match (self, needed) {
            // The agent routes act as one agent, on its units: an agent's own token only.
            (Scope::Agent, Scope::Agent) => true,
            (Scope::Agent, _) | (_, Scope::Agent) => false,
            (have, need) => have >= need,
        }
    }
}

/// One kept token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// A short public id (the first 8 hex digits of the hash), to name a token in `revoke`.
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_unix_ns: u64,
    #[serde(default)]
    pub last_used_unix_ns: Option<u64>,
    #[serde(default)]
    pub revoked_unix_ns: Option<u64>,
    /// An `agent` token's labels (`--labels gpu=h100,rack=r1`): what `execution.agents.select`
    /// matches. The agent cannot change them; only whoever makes its token can.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the token file {0} is damaged: {1}; fix or remove it (every token in it stops working)")]
    Parse(PathBuf, serde_json::Error),
    #[error("cannot write the token file {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error(
        "the token file {0} can be written by other users (mode {1:o}): `chmod 600 {0}`, since anyone who can write it can add a token of their own"
    )]
    Mode(PathBuf, u32),
    #[error("no token `{0}` (see `kitt serve token list`)")]
    Unknown(String),
    #[error("a token name is 1 to 64 letters, digits, `-`, `_` or `.`; got `{0}`")]
    BadName(String),
    #[error("an agent token's name is its agent's: 1 to 63 of a-z, 0-9 and `-`; got `{0}`")]
    BadAgentName(String),
    #[error("no random source: {0}")]
    Random(std::io::Error),
}

/// Where tokens are kept: `--tokens`, else `$KITT_TOKENS`, else `$XDG_CONFIG_HOME/kitt/tokens.json`,
/// else `~/.config/kitt/tokens.json`.
pub fn location(flag: Option<&Path>) -> PathBuf {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    flag.map(Path::to_path_buf).or_else(|| env("KITT_TOKENS")).unwrap_or_else(|| {
        env("XDG_CONFIG_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| env("HOME").map(|h| h.join(".config")))
            .unwrap_or_else(|| PathBuf::from(".kitt"))
            .join("kitt")
            .join("tokens.json")
    })
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// 256 random bits from the kernel, as `kitt_` + 64 hex digits.
pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(TokenError::Random)?;
    Ok(format!("kitt_{}", hex(&bytes)))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes from the kernel as hex: ids that name nothing secret (relays, gangs, exec
/// commands). A kernel that cannot give them gives zeros, which are still ids.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    hex(&bytes)
}

/// SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp + fsync + rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // An existing temp file keeps its mode through open: set it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    crate::run::dir::rename_durably(&tmp, path)
}

fn read_file(path: &Path) -> Result<TokenFile, TokenError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
        Err(e) => return Err(TokenError::Read(path.to_path_buf(), e)),
    };
    let mode = std::fs::metadata(path).map_err(|e| TokenError::Read(path.to_path_buf(), e))?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(TokenError::Mode(path.to_path_buf(), mode & 0o777));
    }
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Parse(path.to_path_buf(), e))
}

/// Runs `f` holding an exclusive lock on the token file (a lock file beside it): a
/// read-modify-write (create, revoke, a server recording last uses) never loses another's.
fn locked<T>(path: &Path, f: impl FnOnce() -> Result<T, TokenError>) -> Result<T, TokenError> {
    use std::os::fd::AsRawFd as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TokenError::Write(path.to_path_buf(), e))?;
    let name = path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!(".{name}.lock")))
        .map_err(|e| TokenError::Write(path.to_path_buf(), e))?;
    // SAFETY: flock on a descriptor we own; the lock goes when the file is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(TokenError::Write(path.to_path_buf(), std::io::Error::last_os_error()));
    }
    let out = f();
    drop(lock);
    out
}

fn write_file(path: &Path, file: &TokenFile) -> Result<(), TokenError> {
    let text = serde_json::to_vec_pretty(file).unwrap_or_default();
    write_private(path, &text).map_err(|e| TokenError::Write(path.to_path_buf(), e))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Makes a token, keeps its hash in the file at `path`, and returns it with its entry: the only
/// time the token itself exists outside the caller.
pub fn create(path: &Path, name: &str, scope: Scope) -> Result<(String, TokenEntry), TokenError> {
    create_labelled(path, name, scope, Default::default())
}

/// [`create`], with labels (an agent token's).
pub fn create_labelled(
    path: &Path,
    name: &str,
    scope: Scope,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<(String, TokenEntry), TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName(name.to_string()));
    }
    if scope == Scope::Agent && !crate::agent::proto::valid_agent_name(name) {
        return Err(TokenError::BadAgentName(name.to_string()));
    }
    let token = generate()?;
    let sha = hex(&digest(&token));
    let entry = TokenEntry {
        id: sha[..8].to_string(),
        name: name.to_string(),
        scope,
        sha256: sha,
        created_unix_ns: now_ns(),
        last_used_unix_ns: None,
        revoked_unix_ns: None,
        labels,
    };
    locked(path, || {
        let mut file = read_file(path)?;
        file.tokens.push(entry.clone());
        write_file(path, &file)
    })?;
    Ok((token, entry))
}

/// Every kept token, revoked ones included.
pub fn list(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    Ok(read_file(path)?.tokens)
}

/// Revokes the tokens whose id or name is `which`; the entries revoked.
pub fn revoke(path: &Path, which: &str) -> Result<Vec<TokenEntry>, TokenError> {
    locked(path, || revoke_locked(path, which))
}

fn revoke_locked(path: &Path, which: &str) -> Result<Vec<TokenEntry>, TokenError> {
    let mut file = read_file(path)?;
    let now = now_ns();
    let mut done = Vec::new();
    for t in file.tokens.iter_mut().filter(|t| (t.id == which || t.name == which) && t.revoked_unix_ns.is_none()) {
        t.revoked_unix_ns = Some(now);
        done.push(t.clone());
    }
    if done.is_empty() {
        return Err(TokenError::Unknown(which.to_string()));
    }
    write_file(path, &file)?;
    Ok(done)
}

/// Who a request is: the token's name and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
    /// The token's labels (an agent's).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The tokens a server accepts: the file's (re-read when it changes) and the server's own admin
/// token, which lives only in memory and in its 0600 token file.
pub struct Keyring {
    path: PathBuf,
    admin: [u8; 32],
    state: Mutex<KeyringState>,
}

#[derive(Default)]
struct KeyringState {
    /// Modification time and length of the file when it was last read.
    seen: Option<(SystemTime, u64)>,
    entries: Vec<(TokenEntry, [u8; 32])>,
    /// Last use of each token by this server, by id.
    used: HashMap<String, u64>,
    /// Whether `used` holds uses the file does not have yet.
    dirty: bool,
    /// When `used` was last written to the file.
    flushed: Option<std::time::Instant>,
}

/// How often a server writes its tokens' last uses to the token file (and when it stops).
pub const USE_FLUSH: std::time::Duration = std::time::Duration::from_secs(60);

impl Keyring {
    pub fn new(path: PathBuf, admin_token: &str) -> Result<Keyring, TokenError> {
        let ring = Keyring { path, admin: digest(admin_token), state: Mutex::new(KeyringState::default()) };
        ring.refresh(&mut ring.lock())?;
        Ok(ring)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyringState> {
        // The state is a cache of the file; a panic while holding it leaves nothing half-done
        // that a re-read would not repair.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refresh(&self, state: &mut KeyringState) -> Result<(), TokenError> {
        let stamp =
            std::fs::metadata(&self.path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp.is_some() && stamp == state.seen {
            return Ok(());
        }
        let file = read_file(&self.path)?;
        state.entries = file.tokens.into_iter().filter_map(|t| unhex(&t.sha256).map(|h| (t, h))).collect();
        state.seen = stamp;
        Ok(())
    }

    /// Who presents `token`, if anyone: revoked tokens are nobody. A token file that cannot be
    /// read leaves only the server's own admin token working (fail closed).
    pub fn check(&self, token: &str) -> Option<Caller> {
        let presented = digest(token);
        let mut state = self.lock();
        if let Err(e) = self.refresh(&mut state) {
            tracing::warn!("{e}");
            state.entries.clear();
            state.seen = None;
        }
        let mut found: Option<Caller> = None;
        let mut used = None;
        // Compare with every entry, whatever matched first: the time depends on the count only.
        let admin = same(&presented, &self.admin);
        for (entry, hash) in &state.entries {
            if same(&presented, hash) && entry.revoked_unix_ns.is_none() && found.is_none() {
                found = Some(Caller { name: entry.name.clone(), scope: entry.scope, labels: entry.labels.clone() });
                used = Some(entry.id.clone());
            }
        }
        if admin {
            return Some(Caller {
                name: "admin (server token)".into(),
                scope: Scope::Admin,
                labels: Default::default(),
            });
        }
        if let Some(id) = used {
            state.used.insert(id, now_ns());
            state.dirty = true;
            if state.flushed.is_none_or(|t| t.elapsed() >= USE_FLUSH) {
                self.flush_locked(&mut state);
            }
        }
        found
    }

    /// Writes the last uses this server saw into the token file (each entry keeps the later of
    /// its own and this server's), so `kitt serve token list` and other servers see them.
    pub fn flush(&self) {
        let mut state = self.lock();
        if state.dirty {
            self.flush_locked(&mut state);
        }
    }

    fn flush_locked(&self, state: &mut KeyringState) {
        state.flushed = Some(std::time::Instant::now());
        let used = state.used.clone();
        let written = locked(&self.path, || {
            let mut file = read_file(&self.path)?;
            let mut changed = false;
            for t in &mut file.tokens {
                if let Some(at) = used.get(&t.id).filter(|at| t.last_used_unix_ns.is_none_or(|had| had < **at)) {
                    t.last_used_unix_ns = Some(*at);
                    changed = true;
                }
            }
            if changed { write_file(&self.path, &file) } else { Ok(()) }
        });
        match written {
            Ok(()) => state.dirty = false,
            // A token file this server may not write (a read-only mount): uses stay in memory.
            Err(e) => tracing::debug!("last uses of tokens not recorded: {e}"),
        }
    }

    /// Every token in the file, with this server's last use of each.
    pub fn entries(&self) -> Result<Vec<TokenEntry>, TokenError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        Ok(state
            .entries
            .iter()
            .map(|(e, _)| {
                let mut e = e.clone();
                if let Some(t) = state.used.get(&e.id) {
                    e.last_used_unix_ns = Some((*t).max(e.last_used_unix_ns.unwrap_or(0)));
                }
                e
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_agent_stands_apart() {
        assert!(Scope::Admin.allows(Scope::Run) && Scope::Run.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Run) && !Scope::Run.allows(Scope::Admin));
        assert!(!Scope::Agent.allows(Scope::Read) && Scope::Agent.allows(Scope::Agent));
        assert!(!Scope::Run.allows(Scope::Agent) && !Scope::Admin.allows(Scope::Agent));
    }

    #[test]
    fn a_token_is_kept_hashed_checked_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t").join("tokens.json");
        let (token, entry) = create(&path, "ci", Scope::Run).unwrap();
        assert_eq!(token.len(), 5 + 64);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token[5..]), "the token itself is never kept");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let ring = Keyring::new(path.clone(), "kitt_admin").unwrap();
        assert_eq!(
            ring.check(&token),
            Some(Caller { name: "ci".into(), scope: Scope::Run, labels: Default::default() })
        );
        assert_eq!(ring.check("kitt_admin").map(|c| c.scope), Some(Scope::Admin));
        assert_eq!(ring.check("kitt_wrong"), None);
        assert!(ring.entries().unwrap()[0].last_used_unix_ns.is_some());
        assert!(list(&path).unwrap()[0].last_used_unix_ns.is_some(), "the first use is written at once");
        revoke(&path, &entry.id).unwrap();
        assert_eq!(ring.check(&token), None, "a revoked token is refused by a running server");
        assert!(matches!(revoke(&path, "nope"), Err(TokenError::Unknown(_))));
        assert!(matches!(create(&path, "a b", Scope::Read), Err(TokenError::BadName(_))));
    }

    #[test]
    fn a_token_file_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        create(&path, "x", Scope::Read).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(list(&path), Err(TokenError::Mode(..))));
    }
}
