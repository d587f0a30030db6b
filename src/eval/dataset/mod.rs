//! Datasets: a source in the spec → the files or pages it names → rows.
//!
//! Owns resolving a source (`{split}` and `{group}` substituted, relative paths against the suite's
//! directory), reading local files, and handing remote ones to the cached fetcher. It never
//! interprets a row: that is `items`. Every row remembers its file and line.

pub(crate) mod fetch;
pub(crate) mod parse;

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::EvalError;
use super::spec::{DatasetSpec, Format, Source};
use fetch::{Fetcher, Remote, sha256_hex};
use parse::{ParseOptions, Row};

/// What was read: for the result's provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInfo {
    /// The path, URL or `hf://` source as resolved.
    pub source: String,
    pub sha256: String,
    pub rows: usize,
}

/// One file or split to read.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub location: Location,
    /// The group this file is (from `{group}`), if the source is per group.
    pub group: Option<String>,
    /// A stable name for item ids: the file name, or `dataset/config/split`.
    pub label: String,
    /// The sha256 the source pins this file to (a URL's `#sha256=` fragment), lowercase.
    pub pin: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Location {
    Local(PathBuf),
    Remote(Remote),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(r) => write!(f, "{r}"),
        }
    }
}

/// Rows with the resource they came from.
pub(crate) struct Loaded {
    pub rows: Vec<(Row, usize)>,
    pub resources: Vec<Resource>,
    pub sources: Vec<SourceInfo>,
    /// The sha256 `dataset.sha256` is checked against (see docs/evals.md).
    pub sha256: String,
}

/// The resources a source names for `split` and `groups`.
pub(crate) fn resolve(
    source: &Source,
    split: Option<&str>,
    groups: &[String],
    base_dir: &Path,
) -> Result<Vec<Resource>, EvalError> {
    let subst = |s: &str, group: Option<&str>| -> Result<String, EvalError> {
        let mut out = s.to_string();
        if out.contains("{split}") {
            let Some(split) = split else {
                return Err(EvalError::Spec(format!("the source `{s}` has `{{split}}` but the eval names no split")));
            };
            out = out.replace("{split}", split);
        }
        if let Some(g) = group {
            out = out.replace("{group}", g);
        }
        Ok(out)
    };
    let per_group: Vec<Option<&str>> =
        if source.per_group() { groups.iter().map(|g| Some(g.as_str())).collect() } else { vec![None] };
    let mut out = Vec::with_capacity(per_group.len());
    for group in per_group {
        let mut pin = None;
        let (location, label) = match source {
            Source::Local(p) => {
                let p = PathBuf::from(subst(p, group)?);
                let p = if p.is_absolute() { p } else { base_dir.join(p) };
                let label = file_label(&p.to_string_lossy());
                (Location::Local(p), label)
            }
            Source::Url(u) => {
                let mut u = subst(u, group)?;
                // `URL#sha256=HEX` (pip's convention) pins the file; the fragment is never sent.
                if let Some(at) = u.find("#sha256=") {
                    pin = Some(u[at + "#sha256=".len()..].to_ascii_lowercase());
                    u.truncate(at);
                }
                let label = file_label(u.split(['?', '#']).next().unwrap_or(&u));
                (Location::Remote(Remote::Url(u)), label)
            }
            Source::Hf { hf } => {
                let dataset = subst(&hf.dataset, group)?;
                let config = subst(hf.config.as_deref().unwrap_or("default"), group)?;
                let split = match &hf.split {
                    Some(s) => subst(s, group)?,
                    None => split.map(str::to_string).ok_or_else(|| {
                        EvalError::Spec(format!(
                            "hf://{dataset}: no split; add `split=` to the source or `split:` to the dataset"
                        ))
                    })?,
                };
                let label = format!("{dataset}/{config}/{split}");
                (Location::Remote(Remote::Hf { dataset, config, split }), label)
            }
        };
        out.push(Resource { location, group: group.map(str::to_string), label, pin });
    }
    Ok(out)
}

fn file_label(path: &str) -> String {
    path.rsplit(['/', '\\']).next().unwrap_or(path).to_string()
}

/// The remote resources that offline mode would miss.
pub(crate) fn missing_offline(fetcher: &Fetcher, resources: &[Resource]) -> Vec<String> {
    resources
        .iter()
        .filter_map(|r| match &r.location {
            Location::Remote(remote) if !fetcher.cached(remote) => Some(remote.to_string()),
            _ => None,
        })
        .collect()
}

fn format_of(spec: &DatasetSpec, r: &Resource) -> Result<Format, EvalError> {
    if let Location::Remote(Remote::Hf { .. }) = r.location {
        return Ok(Format::Jsonl);
    }
    if let Some(f) = spec.format {
        return Ok(f);
    }
    let name = r.label.to_ascii_lowercase();
    if name.ends_with(".csv") {
        Ok(Format::Csv)
    } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        Ok(Format::Jsonl)
    } else if name.ends_with(".json") {
        Ok(Format::Json)
    } else {
        Err(EvalError::Spec(format!("cannot tell the format of {}; set `format: csv | jsonl | json`", r.location)))
    }
}

/// Reads every resource (in order) into rows.
pub(crate) async fn load(
    spec: &DatasetSpec,
    resources: Vec<Resource>,
    fetcher: &Fetcher<'_>,
    check_sha256: bool,
) -> Result<Loaded, EvalError> {
    let expect = spec.sha256.as_deref().filter(|_| check_sha256);
    let single = resources.len() == 1;
    let mut rows = Vec::new();
    let mut sources = Vec::with_capacity(resources.len());
    for (i, r) in resources.iter().enumerate() {
        let format = format_of(spec, r)?;
        let (bytes, sha256, shown) = match &r.location {
            Location::Local(p) => {
                let bytes = std::fs::read(p).map_err(|e| EvalError::io(p, read_hint(e)))?;
                let sha = sha256_hex(&bytes);
                (bytes, sha, p.display().to_string())
            }
            Location::Remote(remote) => {
                let f = fetcher.get(remote, r.pin.as_deref().or(expect.filter(|_| single))).await?;
                // Errors in a downloaded file name the cached copy, which can be opened.
                let shown = f.path.display().to_string();
                (f.bytes, f.sha256, shown)
            }
        };
        if let Some(pin) = r.pin.as_ref().filter(|pin| **pin != sha256) {
            return Err(EvalError::Checksum {
                what: r.location.to_string(),
                expected: pin.clone(),
                actual: sha256,
                path: PathBuf::from(&shown),
            });
        }
        let parsed = match (&r.location, format) {
            (Location::Remote(Remote::Hf { .. }), _) => {
                parse::jsonl_rows(&bytes, std::sync::Arc::from(r.location.to_string().as_str()), false)?
            }
            _ => parse::parse(
                &bytes,
                &shown,
                &ParseOptions { format, header: spec.header, columns: &spec.columns, records: spec.records.as_deref() },
            )?,
        };
        sources.push(SourceInfo { source: r.location.to_string(), sha256, rows: parsed.len() });
        rows.extend(parsed.into_iter().map(|row| (row, i)));
    }
    let sha256 = if single {
        sources.first().map(|s| s.sha256.clone()).unwrap_or_default()
    } else {
        let listing: String =
            sources.iter().zip(&resources).map(|(s, r)| format!("{}  {}\n", s.sha256, r.label)).collect();
        sha256_hex(listing.as_bytes())
    };
    if let Some(want) = expect
        && want != sha256
    {
        let what = match resources.as_slice() {
            [one] => one.location.to_string(),
            many => format!("{} files ({} … {})", many.len(), many[0].label, many[many.len() - 1].label),
        };
        let path = match resources.as_slice() {
            [Resource { location: Location::Local(p), .. }] => p.clone(),
            [Resource { location: Location::Remote(r), .. }] => fetcher.cache_path(r),
            _ => fetcher.cache.to_path_buf(),
        };
        return Err(EvalError::Checksum { what, expected: want.to_string(), actual: sha256, path });
    }
    Ok(Loaded { rows, resources, sources, sha256 })
}

fn read_hint(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("{e} (a relative dataset path is relative to the suite file's directory; check the `source` param)")
    } else {
        e.to_string()
    }
}
