//! Remote data: HTTP downloads and the Hugging Face datasets-server rows API, behind a cache.
//!
//! The cache is content-verified: each entry has a sidecar recording the sha256 of what was
//! downloaded, checked on every hit. A mismatch (with the sidecar, or with the spec's `sha256`)
//! is an error naming the file — never a silent re-download, which would hide a changed or
//! corrupt dataset. Offline mode reads only the cache. Writes are temp + fsync + rename.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::super::error::EvalError;
use crate::cancel::Cancel;

/// Rows per rows-API request (the API's maximum).
const PAGE: usize = 100;
/// Tries per request when the server says "later" (429, 5xx).
const TRIES: u32 = 5;

/// Bytes of a remote source and where they are cached.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub path: PathBuf,
}

/// One remote resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Remote {
    Url(String),
    Hf { dataset: String, config: String, split: String },
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Url(u) => write!(f, "{u}"),
            Remote::Hf { dataset, config, split } => write!(f, "hf://{dataset}?config={config}&split={split}"),
        }
    }
}

pub(crate) struct Fetcher<'a> {
    pub cache: &'a Path,
    pub offline: bool,
    pub hf_endpoint: &'a str,
    pub hf_token: Option<&'a str>,
    pub cancel: &'a Cancel,
    client: OnceLock<Result<reqwest::Client, String>>,
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path component made of safe characters only.
fn component(s: &str) -> String {
    let c: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if c.is_empty() || c.chars().all(|x| x == '.') { "_".into() } else { c }
}

impl<'a> Fetcher<'a> {
    pub fn new(
        cache: &'a Path,
        offline: bool,
        hf_endpoint: &'a str,
        hf_token: Option<&'a str>,
        cancel: &'a Cancel,
    ) -> Self {
        Fetcher { cache, offline, hf_endpoint, hf_token, cancel, client: OnceLock::new() }
    }

    /// Where a remote resource lives in the cache.
    pub fn cache_path(&self, remote: &Remote) -> PathBuf {
        match remote {
            Remote::Url(url) => {
                let name = url.split(['?', '#']).next().unwrap_or(url).rsplit('/').next().unwrap_or("");
                let name = if name.is_empty() { "data".to_string() } else { component(name) };
                self.cache.join("url").join(&sha256_hex(url.as_bytes())[..16]).join(name)
            }
            Remote::Hf { dataset, config, split } => self
                .cache
                .join("hf")
                .join(component(&dataset.replace('/', "__")))
                .join(component(config))
                .join(format!("{}.jsonl", component(split))),
        }
    }

    /// Whether a resource is in the cache (for the offline pre-check).
    pub fn cached(&self, remote: &Remote) -> bool {
        let p = self.cache_path(remote);
        p.is_file() && sidecar(&p).is_file()
    }

    /// The bytes of `remote`: from the cache, verified, or downloaded and cached. `expect` is the
    /// spec's sha256 when it covers this resource alone: a download that does not match it is
    /// not cached.
    pub async fn get(&self, remote: &Remote, expect: Option<&str>) -> Result<Fetched, EvalError> {
        let path = self.cache_path(remote);
        if path.is_file() {
            return read_cached(&path, &remote.to_string());
        }
        if self.offline {
            return Err(EvalError::Offline { missing: vec![remote.to_string()], cache: self.cache.to_path_buf() });
        }
        let bytes = match remote {
            Remote::Url(url) => self.download(url).await?,
            Remote::Hf { dataset, config, split } => self.hf_rows(dataset, config, split).await?,
        };
        let sha256 = sha256_hex(&bytes);
        if let Some(want) = expect
            && want != sha256
        {
            return Err(EvalError::Checksum {
                what: remote.to_string(),
                expected: want.to_string(),
                actual: sha256,
                path: PathBuf::from("downloaded, not cached"),
            });
        }
        // The record first: data without its record would be an unverifiable hit, while a record
        // without data is a miss that downloads again and rewrites it.
        let meta = json!({"source": remote.to_string(), "sha256": sha256, "bytes": bytes.len()});
        write_atomic(&sidecar(&path), format!("{meta}\n").as_bytes())?;
        write_atomic(&path, &bytes)?;
        tracing::info!(source = %remote, path = %path.display(), "dataset cached");
        Ok(Fetched { bytes, sha256, path })
    }

    fn client(&self) -> Result<&reqwest::Client, EvalError> {
        let built = self.client.get_or_init(|| {
            crate::engine::client::crypto_provider();
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(120))
                .user_agent(concat!("kitt/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        });
        built.as_ref().map_err(|e| EvalError::Fetch { url: "(building the HTTP client)".into(), reason: e.clone() })
    }

    /// GET with retries on 429 and 5xx, cancellable; the body of a 2xx answer.
    async fn get_bytes(&self, url: &str, token: Option<&str>) -> Result<Vec<u8>, EvalError> {
        let fail = |reason: String| EvalError::Fetch { url: url.to_string(), reason };
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=TRIES {
            let mut req = self.client()?.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let answer = tokio::select! {
                () = self.cancel.cancelled() => return Err(EvalError::Cancelled),
                r = async {
                    let resp = req.send().await?;
                    let status = resp.status();
                    resp.bytes().await.map(|b| (status, b))
                } => r,
            };
            let (status, body) = answer.map_err(|e| fail(chain(&e)))?;
            if status.is_success() {
                return Ok(body.to_vec());
            }
            let retry = status.as_u16() == 429 || status.is_server_error();
            if !retry || attempt == TRIES {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.chars().take(300).collect();
                return Err(fail(format!("HTTP {status}: {}", text.trim())));
            }
            tracing::warn!(%url, %status, "retrying in {wait:?}");
            tokio::select! {
                () = self.cancel.cancelled() => return Err(EvalError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            wait *= 2;
        }
        Err(fail("no answer".into()))
    }

    async fn download(&self, url: &str) -> Result<Vec<u8>, EvalError> {
        self.get_bytes(url, None).await
    }

    /// Every row of a split through the rows API, paged, as JSONL (one `row` object a line).
    async fn hf_rows(&self, dataset: &str, config: &str, split: &str) -> Result<Vec<u8>, EvalError> {
        let base = format!("{}/rows", self.hf_endpoint.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let (o, l) = (offset.to_string(), PAGE.to_string());
            let params = [("dataset", dataset), ("config", config), ("split", split), ("offset", &o), ("length", &l)];
            let url = reqwest::Url::parse_with_params(&base, &params)
                .map_err(|e| EvalError::Fetch { url: base.clone(), reason: e.to_string() })?
                .to_string();
            let body = self.get_bytes(&url, self.hf_token).await?;
            let bad = |reason: String| EvalError::Fetch { url: url.clone(), reason };
            let page: Json = serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
            let total = page["num_rows_total"]
                .as_u64()
                .ok_or_else(|| bad("no `num_rows_total` (is this the datasets-server rows API?)".into()))?
                as usize;
            let rows = page["rows"].as_array().ok_or_else(|| bad("no `rows` list".into()))?;
            for (i, r) in rows.iter().enumerate() {
                let idx = r["row_idx"].as_u64().map(|x| x as usize);
                if idx != Some(offset + i) {
                    return Err(bad(format!("row {i} of the page has row_idx {idx:?}, expected {}", offset + i)));
                }
                if r["truncated_cells"].as_array().is_some_and(|t| !t.is_empty()) {
                    return Err(bad(format!("row {} has truncated cells {}", offset + i, r["truncated_cells"])));
                }
                let row = r
                    .get("row")
                    .filter(|v| v.is_object())
                    .ok_or_else(|| bad(format!("row {} has no `row` object", offset + i)))?;
                serde_json::to_writer(&mut out, row).map_err(|e| bad(e.to_string()))?;
                out.push(b'\n');
            }
            offset += rows.len();
            if offset >= total {
                return Ok(out);
            }
            if rows.is_empty() {
                return Err(bad(format!("an empty page at offset {offset} of {total} rows")));
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn sidecar(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".meta.json");
    path.with_file_name(name)
}

/// A cache hit, verified against the sha256 its sidecar recorded.
fn read_cached(path: &Path, what: &str) -> Result<Fetched, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let meta_path = sidecar(path);
    let meta: Json = std::fs::read(&meta_path)
        .map_err(|e| {
            EvalError::io(
                &meta_path,
                format!("{e} (the cache entry's record; delete {} to download again)", path.display()),
            )
        })
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| EvalError::io(&meta_path, format!("not JSON: {e}"))))?;
    let recorded = meta["sha256"].as_str().unwrap_or_default().to_string();
    let sha256 = sha256_hex(&bytes);
    if recorded != sha256 {
        return Err(EvalError::Checksum {
            what: format!("cached {what}"),
            expected: recorded,
            actual: sha256,
            path: path.into(),
        });
    }
    tracing::debug!(path = %path.display(), "dataset cache hit");
    Ok(Fetched { bytes, sha256, path: path.to_path_buf() })
}

/// temp + fsync + rename (+ fsync of the directory).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    // Unique per process and call: two evals may write the same cache entry at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all(); // durability of the rename; not every filesystem supports it
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EvalError::io(path, e)
    })
}
