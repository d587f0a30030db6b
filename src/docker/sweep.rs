//! The orphan sweep: removes the containers whose kitt is gone ([`owner::judge`]), saving their
//! logs first, at every `kitt apply` (its own runs directory only) and in `kitt gc`.
//!
//! A sweep has a scope — every kitt container on the daemon, those of the runs under one runs
//! directory (label `kitt.run_dir`), or those of one run (`kitt.run`) — so that one kitt's
//! cleanup never reaches into another project's, or another test's, containers. Containers owned
//! from another machine are only listed, unless the caller asks for them (`kitt gc --foreign`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::owner::{self, ContainerOwner, ContainerState, Verdict};
use super::{DockerError, LOG_LABEL, OWNER_LABEL, RUN_DIR_LABEL, docker_sync, strings};

/// Which containers a sweep looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every kitt container on the daemon.
    All,
    /// Those of the runs under this runs directory.
    RunsDir(PathBuf),
    /// Those of one run (by id).
    Run(String),
}

/// A container the sweep removed, or found owned from another machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Swept {
    pub name: String,
    pub run: String,
    pub engine: String,
    /// The owning kitt's machine, pid and Docker host, as its label says.
    pub machine: String,
    pub pid: u32,
    pub docker_host: String,
    /// Why it was removed (or, for a foreign one, what it is).
    pub reason: String,
    /// Why it could not be removed, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sweep {
    /// Removed: their owner is gone (and, when asked, foreign ones).
    pub removed: Vec<Swept>,
    /// Owned from another machine: listed; removed only when the sweep was asked to.
    pub foreign: Vec<Swept>,
    /// Judged removable, but `docker rm` failed.
    pub failed: Vec<Swept>,
}

/// The absolute, symlink-free form of a path kitt records in a label or compares with one.
pub fn label_path(path: &Path) -> String {
    let p = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf());
    p.to_string_lossy().to_string()
}

const FIELDS: [&str; 5] = [OWNER_LABEL, LOG_LABEL, "kitt.run", "kitt.engine", RUN_DIR_LABEL];

/// Removes the containers in `scope` whose kitt is gone — and, with `foreign`, those owned from
/// another machine. Without a usable Docker there is nothing kitt could have started, so a
/// daemon that does not answer gives an empty sweep.
pub fn sweep(scope: &Scope, foreign: bool) -> Sweep {
    let mut result = Sweep::default();
    let format = std::iter::once("{{.Names}}".to_string())
        .chain(FIELDS.iter().map(|l| format!("{{{{.Label \"{l}\"}}}}")))
        .collect::<Vec<_>>()
        .join("\t");
    let mut args = strings(&["ps", "--all", "--no-trunc", "--filter", &format!("label={OWNER_LABEL}")]);
    if let Scope::Run(id) = scope {
        args.extend(["--filter".into(), format!("label=kitt.run={id}")]);
    }
    args.extend(["--format".into(), format]);
    let list = match docker_sync(&args) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("no container sweep: {e}");
            return result;
        }
    };
    let root = match scope {
        Scope::RunsDir(r) => Some(label_path(r)),
        _ => None,
    };
    // Each owner's container is asked about once per sweep.
    let mut asked: HashMap<String, Result<Option<ContainerState>, String>> = HashMap::new();
    let mut inspect = |id: &str| -> Result<Option<ContainerState>, DockerError> {
        let answer =
            asked.entry(id.to_string()).or_insert_with(|| owner::container_state(id).map_err(|e| e.to_string()));
        answer.clone().map_err(|message| DockerError::Failed { command: "container inspect".into(), message, hint: "" })
    };
    for line in list.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, owner, log, run, engine, run_dir] = f[..] else { continue };
        if let Some(root) = &root
            && Path::new(run_dir).parent() != Some(Path::new(root))
        {
            continue;
        }
        let Ok(owner) = serde_json::from_str::<ContainerOwner>(owner) else { continue };
        let verdict = owner::judge(&owner, &mut inspect);
        let mut swept = Swept {
            name: name.to_string(),
            run: run.to_string(),
            engine: engine.to_string(),
            machine: owner.process.machine.clone(),
            pid: owner.process.pid,
            docker_host: owner.docker_host.clone(),
            reason: String::new(),
            error: None,
        };
        match verdict {
            Verdict::Live => continue,
            Verdict::Foreign => {
                swept.reason = "owned by kitt on another machine".into();
                result.foreign.push(swept.clone());
                if !foreign {
                    continue;
                }
                // Its log path names a file of the other machine: not written here.
                swept.reason = "owned by kitt on another machine; removed as asked (--foreign)".into();
            }
            Verdict::Gone(why) => {
                swept.reason = why;
                // Best effort: the logs of an engine whose kitt was killed are worth keeping.
                if !log.is_empty() && Path::new(log).parent().is_some_and(Path::is_dir) {
                    super::save_logs_sync(name, Path::new(log));
                }
            }
        }
        match super::remove_sync(name) {
            Ok(()) => result.removed.push(swept),
            Err(e) => {
                swept.error = Some(e.to_string());
                result.failed.push(swept);
            }
        }
    }
    result
}
