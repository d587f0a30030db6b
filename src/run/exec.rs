//! What each step of a real run does: start and stop engines, warm them up, run benchmark
//! cells, assemble results and write reports.
//!
//! Every resource a step creates has an owner: engine processes live in `engines` until their
//! stop step (or `shutdown`, on every other path) ends them, and an `EngineProcess` dropped
//! unstopped kills its process group.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::facts::{ModelStat, model_fingerprint};
use super::journal::{Facts, unix_ns};
use super::scheduler::{Executor, StepError, StepFuture};
use crate::bench::tokenizer::Tokenizer;
use crate::bench::{load, metrics};
use crate::cancel::Cancel;
use crate::collect::{EngineTarget, Sampler};
use crate::docker::{Container, RunSpec};
use crate::engine::client::{EngineClient, TlsOptions};
use crate::engine::native::{EngineProcess, free_port};
use crate::manifest::load::{LoadSpec, Profile, PromptSpec};
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::{Network, PullPolicy};
use crate::plan::{EngineGroup, Mode, Plan, StepKind};
use crate::report::{CellIdentity, CellResult, CellStatus, Provenance, RESULT_SCHEMA, RunReport};
use crate::template::{bind_late, scalar_text};

/// A started engine.
struct Engine {
    process: Option<EngineProcess>,
    container: Option<Container>,
    client: EngineClient,
    facts: Facts,
    /// The served model name learned from an endpoint (`served_name: auto`).
    served: Option<String>,
    /// What the resource sampler reads for this engine.
    target: EngineTarget,
}

/// Live progress, read by the display.
#[derive(Default)]
pub struct Progress {
    /// Requests completed in the running measuring step.
    pub requests: Arc<AtomicU64>,
    /// Requests the running measuring step will send (0 when bounded by time).
    pub requests_total: AtomicU64,
    /// Label of the running measuring step.
    pub label: Mutex<String>,
    pub steps_done: AtomicU64,
    /// What the run is: new, or resumed with how many steps reused (shown beside the steps).
    pub note: Mutex<String>,
}

pub struct RunExecutor {
    pub plan: Plan,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub kitt_exe: String,
    /// Run-level observed facts.
    pub facts: Facts,
    /// Engine facts recorded by earlier attempts of this run, by group id.
    pub previous_engine_facts: HashMap<String, Facts>,
    pub accept_drift: bool,
    /// Run-level facts that changed since earlier attempts, accepted with `--accept-drift`: every
    /// cell this attempt measures carries them.
    pub run_drift: Vec<String>,
    /// Model fingerprints recorded by earlier attempts of this run, by group id (the fast path).
    pub previous_models: HashMap<String, ModelStat>,
    /// Hash whole model files (`--verify-models`) instead of their edges.
    pub verify_models: bool,
    /// Collect keys finished by earlier attempts (their results are marked reused).
    pub reused: HashSet<String>,
    pub progress: Arc<Progress>,
    engines: tokio::sync::Mutex<HashMap<usize, Engine>>,
    /// Containers started so far (names are `kitt-<run id>-<group>-<n>`).
    containers_started: AtomicU64,
    /// Local tokenizers loaded so far, by file.
    local_tokenizers: Mutex<HashMap<PathBuf, Tokenizer>>,
    drift: Mutex<HashMap<usize, Vec<String>>>,
}

fn err(e: impl std::fmt::Display) -> StepError {
    StepError::new(e.to_string())
}

impl RunExecutor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Plan,
        run_id: String,
        run_dir: PathBuf,
        facts: Facts,
        previous_engine_facts: HashMap<String, Facts>,
        accept_drift: bool,
        reused: HashSet<String>,
        progress: Arc<Progress>,
    ) -> RunExecutor {
        let kitt_exe =
            std::env::current_exe().map(|p| p.to_string_lossy().to_string()).unwrap_or_else(|_| "kitt".into());
        RunExecutor {
            plan,
            run_id,
            run_dir,
            kitt_exe,
            facts,
            previous_engine_facts,
            accept_drift,
            run_drift: Vec::new(),
            previous_models: HashMap::new(),
            verify_models: false,
            reused,
            progress,
            engines: tokio::sync::Mutex::new(HashMap::new()),
            containers_started: AtomicU64::new(0),
            local_tokenizers: Mutex::new(HashMap::new()),
            drift: Mutex::new(HashMap::new()),
        }
    }

    fn step_dir(&self, key: &str) -> Result<PathBuf, StepError> {
        let d = self.run_dir.join("steps").join(key);
        std::fs::create_dir_all(&d).map_err(|e| err(format!("cannot create {}: {e}", d.display())))?;
        Ok(d)
    }

    fn write(&self, path: PathBuf, value: &impl serde::Serialize) -> Result<(), StepError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(err)?;
        super::dir::write_atomic(&path, &bytes).map_err(|e| err(format!("cannot write {}: {e}", path.display())))
    }

    fn late(&self, port: u16) -> Vec<(&'static str, Json)> {
        vec![("port", json!(port)), ("run.id", json!(self.run_id)), ("kitt.exe", json!(self.kitt_exe))]
    }

    fn secret(name: &str, v: &SecretOr, late: &[(&str, Json)]) -> Result<String, StepError> {
        match v {
            SecretOr::Plain(s) => Ok(scalar_text(&bind_late(&json!(s), late))),
            SecretOr::FromEnv { from_env, prefix } => match std::env::var(from_env) {
                Ok(value) => Ok(format!("{}{value}", prefix.as_deref().unwrap_or(""))),
                Err(_) => Err(err(format!("`{name}` reads the environment variable `{from_env}`, which is not set"))),
            },
        }
    }

    async fn start(&self, gi: usize, key: &str, cancel: &Cancel) -> Result<Json, StepError> {
        let g = &self.plan.groups[gi];
        if matches!(g.mode, Mode::Container { .. }) {
            return self.start_container(gi, key, cancel).await;
        }
        let Mode::Native { argv, env, cwd } = &g.mode else {
            return Err(err(format!("engine `{}`: {} mode has nothing to start", g.engine, g.mode.name())));
        };
        let port = free_port().map_err(|e| err(format!("cannot allocate a port: {e}")))?;
        let late = self.late(port);
        let argv: Vec<String> = argv.iter().map(|a| scalar_text(&bind_late(&json!(a), &late))).collect();
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| Ok((k.clone(), Self::secret(k, v, &late)?))).collect::<Result<_, StepError>>()?;
        let dir = match cwd {
            Some(c) => self.plan.suite.dir.join(c),
            None => self.plan.suite.dir.clone(),
        };
        // A relative program path (`../bin/llama-server`) means relative to the working directory,
        // not to wherever kitt was started; a bare name is looked up on PATH.
        let mut argv = argv;
        if let Some(program) = argv.first_mut()
            && program.contains('/')
            && Path::new(program.as_str()).is_relative()
        {
            *program = dir.join(&*program).to_string_lossy().to_string();
        }
        let model = self.model_stat(gi).await?;
        let log = self.step_dir(key)?.join("engine.log");
        let mut process = EngineProcess::spawn(&argv, &env, &dir, &log).await.map_err(err)?;
        // Recorded at once: an engine may load for minutes, and a kitt killed meanwhile must leave
        // the next apply (or `kitt gc`) enough to stop everything it started.
        super::pidfile::write(&self.run_dir, &g.key, process.pid());
        let client = EngineClient::new(&format!("http://127.0.0.1:{port}"), Vec::new(), 256)
            .map_err(err)
            .map_err(|e| self.forget_process(&g.key, e))?;
        if let Err(e) = wait_healthy(g, &client, Watch::Process(&mut process), cancel).await {
            process.stop(Duration::from_secs(2), true).await;
            return Err(self.forget_process(&g.key, e));
        }
        let mut facts = self.observe(g, &client).await;
        Self::add_model_fact(&mut facts, model.as_ref());
        if let Err(e) = self.check_drift(gi, &facts) {
            process.stop(Duration::from_secs(2), false).await;
            return Err(self.forget_process(&g.key, e));
        }
        let pid = process.pid();
        self.engines.lock().await.insert(
            gi,
            Engine {
                process: Some(process),
                container: None,
                client,
                facts: facts.clone(),
                served: None,
                target: EngineTarget::Process(pid),
            },
        );
        Ok(json!({"port": port, "pid": pid, "facts": facts, "model": model}))
    }

    /// Removes the pid file of an engine that was stopped because it failed to start.
    fn forget_process(&self, group_key: &str, e: StepError) -> StepError {
        super::pidfile::remove(&self.run_dir, group_key);
        e
    }

    /// Makes the image of a container engine present, by its pull policy; records its id.
    async fn pull(&self, gi: usize) -> Result<Json, StepError> {
        let g = &self.plan.groups[gi];
        let Mode::Container { image, pull, .. } = &g.mode else {
            return Err(err(format!("engine `{}` is not a container", g.id)));
        };
        let present = crate::docker::inspect_image(image).await.map_err(err)?;
        let pulled = match (pull, present) {
            (PullPolicy::Never, None) => {
                return Err(err(format!(
                    "engine `{}`: image `{image}` is not present and its pull policy is `never`; build or load it first{}",
                    g.id,
                    if g.template == "llama_cpp" {
                        " (`kitt engines setup llama_cpp --local-build` builds a CPU llama.cpp image)"
                    } else {
                        ""
                    }
                )));
            }
            (PullPolicy::IfNotPresent, Some(_)) | (PullPolicy::Never, Some(_)) => false,
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, None) => {
                crate::docker::pull(image).await.map_err(|e| {
                    err(format!("engine `{}`: cannot pull `{image}`: {e}; with no registry reachable, build or load the image and set `pull: never`", g.id))
                })?;
                true
            }
        };
        let info = crate::docker::inspect_image(image)
            .await
            .map_err(err)?
            .ok_or_else(|| err(format!("image `{image}` is still not present after pulling")))?;
        Ok(json!({"image": image, "id": info.id, "digests": info.digests, "pulled": pulled}))
    }

    /// A container engine: `docker run` it, wait until it is healthy and its own, record facts.
    async fn start_container(&self, gi: usize, key: &str, cancel: &Cancel) -> Result<Json, StepError> {
        let g = &self.plan.groups[gi];
        let Mode::Container { image, args, env, mounts, gpus, shm_size, extra_args, network, .. } = &g.mode else {
            return Err(err(format!("engine `{}` is not a container", g.id)));
        };
        let port = free_port().map_err(|e| err(format!("cannot allocate a port: {e}")))?;
        let late = self.late(port);
        let bind = |a: &String| scalar_text(&bind_late(&json!(a), &late));
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| Ok((k.clone(), Self::secret(k, v, &late)?))).collect::<Result<_, StepError>>()?;
        let mut mount_refs = Vec::new();
        for m in mounts {
            let source = self.plan.suite.dir.join(bind(&m.source));
            let source = std::path::absolute(&source).unwrap_or(source);
            if !source.exists() {
                return Err(err(format!(
                    "engine `{}`: the mount source {} does not exist (mounts are host paths, relative to the suite file)",
                    g.id,
                    source.display()
                )));
            }
            mount_refs.push(crate::plan::MountRef {
                source: source.to_string_lossy().to_string(),
                target: bind(&m.target),
                readonly: m.readonly,
            });
        }
        mount_refs.extend(self.symlinked_model(g, mounts));
        let gpus = match gpus.as_str() {
            "none" => None,
            "auto" => crate::docker::nvidia_runtime().then(|| "all".to_string()),
            other => Some(other.to_string()),
        };
        let n = self.containers_started.fetch_add(1, Ordering::Relaxed);
        let spec = RunSpec {
            name: format!("kitt-{}-{gi}-{n}", self.run_id),
            image: image.clone(),
            args: args.iter().map(bind).collect(),
            env,
            mounts: mount_refs,
            gpus: gpus.clone(),
            shm_size: shm_size.clone(),
            network: *network,
            port,
            labels: vec![
                ("kitt.run".into(), self.run_id.clone()),
                ("kitt.step".into(), key.to_string()),
                ("kitt.engine".into(), g.id.clone()),
                (crate::docker::RUN_DIR_LABEL.into(), crate::docker::label_path(&self.run_dir)),
            ],
            extra_args: extra_args.iter().map(bind).collect(),
        };
        let model = self.model_stat(gi).await?;
        let log = self.step_dir(key)?.join("engine.log");
        let info = crate::docker::inspect_image(image).await.map_err(err)?;
        let container = Container::run(&spec, &log).await.map_err(|e| err(format!("engine `{}`: {e}", g.id)))?;
        let client = EngineClient::new(&format!("http://127.0.0.1:{port}"), Vec::new(), 256).map_err(err)?;
        if let Err(e) = wait_healthy(g, &client, Watch::Container(&container, *network), cancel).await {
            let _ = container.stop(Duration::from_secs(2), true).await;
            return Err(e);
        }
        let mut facts = self.observe(g, &client).await;
        Self::add_model_fact(&mut facts, model.as_ref());
        facts.insert("engine.image".into(), image.clone());
        if let Some(info) = &info {
            facts.insert("engine.image_id".into(), info.id.clone());
            if let Some(d) = info.digests.first() {
                facts.insert("engine.image_digest".into(), d.clone());
            }
        }
        if let Err(e) = self.check_drift(gi, &facts) {
            let _ = container.stop(Duration::from_secs(2), false).await;
            return Err(e);
        }
        let name = container.name.clone();
        let target = match container.state().await {
            Ok(s) if s.pid > 0 => EngineTarget::container(s.pid),
            _ => EngineTarget::None,
        };
        self.engines.lock().await.insert(
            gi,
            Engine { process: None, container: Some(container), client, facts: facts.clone(), served: None, target },
        );
        Ok(json!({"port": port, "container": name, "gpus": gpus, "facts": facts, "model": model}))
    }

    /// A model file that is a symlink out of its directory (a cached download, say) does not
    /// resolve inside the container: mount its target over the link's place.
    fn symlinked_model(&self, g: &EngineGroup, mounts: &[crate::plan::MountRef]) -> Option<crate::plan::MountRef> {
        let path = self.plan.suite.dir.join(g.model.path.as_ref()?);
        if !path.symlink_metadata().ok()?.file_type().is_symlink() {
            return None;
        }
        let target = std::fs::canonicalize(&path).ok()?;
        let file = path.file_name()?.to_string_lossy().to_string();
        let dir = path.parent()?.to_path_buf();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        // The mount whose source is the model's directory.
        let m = mounts.iter().find(|m| {
            let s = self.plan.suite.dir.join(&m.source);
            std::path::absolute(&s).unwrap_or(s) == dir
        })?;
        Some(crate::plan::MountRef {
            source: target.to_string_lossy().to_string(),
            target: format!("{}/{file}", m.target.trim_end_matches('/')),
            readonly: true,
        })
    }

    /// What the server reports about itself: its version (an observed fact).
    async fn observe(&self, g: &EngineGroup, client: &EngineClient) -> Facts {
        let mut facts = Facts::new();
        if let Some(probe) = &g.version {
            match client.get_json(&probe.path).await {
                Ok(v) => {
                    let version = v.pointer(&probe.pointer).map(scalar_text).unwrap_or_default();
                    facts.insert("engine.version".into(), version);
                }
                Err(e) => tracing::warn!("engine `{}`: cannot read its version: {e}", g.id),
            }
        }
        facts
    }

    /// The fingerprint of the group's model file (none when the model has no path), off the
    /// async threads: hashing reads up to 2 MiB per file, or whole files with `--verify-models`.
    async fn model_stat(&self, gi: usize) -> Result<Option<ModelStat>, StepError> {
        let g = &self.plan.groups[gi];
        let Some(path) = &g.model.path else { return Ok(None) };
        let path = self.plan.suite.dir.join(path);
        let previous = self.previous_models.get(&g.id).cloned();
        let verify = self.verify_models;
        let endpoint = matches!(g.mode, Mode::Endpoint { .. });
        let p = path.clone();
        let taken = tokio::task::spawn_blocking(move || model_fingerprint(&p, previous.as_ref(), verify))
            .await
            .map_err(|e| err(format!("fingerprinting {} failed: {e}", path.display())))?;
        match taken {
            Ok(stat) => Ok(Some(stat)),
            // An endpoint's model lives on its server: a path kitt cannot read is no error.
            Err(_) if endpoint => Ok(None),
            Err(e) => Err(err(format!(
                "model `{}`: cannot read {} to fingerprint it: {e}; check `path:` (relative to the suite file)",
                g.model.name,
                path.display()
            ))),
        }
    }

    fn add_model_fact(facts: &mut Facts, model: Option<&ModelStat>) {
        if let Some(m) = model {
            facts.insert("model.fingerprint".into(), m.fingerprint.clone());
        }
    }

    /// Compares the facts just observed with what earlier attempts of this run recorded.
    fn check_drift(&self, gi: usize, facts: &Facts) -> Result<(), StepError> {
        let g = &self.plan.groups[gi];
        let Some(previous) = self.previous_engine_facts.get(&g.id) else { return Ok(()) };
        let changed: Vec<String> = previous
            .iter()
            .filter(|(k, v)| facts.get(*k).is_some_and(|now| now != *v))
            .map(|(k, v)| format!("{k} of engine `{}` was `{v}`, now `{}`", g.id, facts[k]))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if !self.accept_drift {
            return Err(StepError::abort(format!(
                "drift: {}; resuming would mix results from different engines. Rerun with --accept-drift to continue (the cells are marked), or --fresh to start over",
                changed.join("; ")
            )));
        }
        if let Ok(mut d) = self.drift.lock() {
            d.insert(gi, changed);
        }
        Ok(())
    }

    /// An endpoint engine: nothing to start; check its health, learn what it serves, record facts.
    async fn connect(&self, gi: usize, cancel: &Cancel) -> Result<Json, StepError> {
        let g = &self.plan.groups[gi];
        let Mode::Endpoint { url, headers, ca_file, insecure, skip_health } = &g.mode else {
            return Err(err(format!("engine `{}` is not an endpoint", g.id)));
        };
        let headers: Vec<(String, String)> =
            headers.iter().map(|(k, v)| Ok((k.clone(), Self::secret(k, v, &[])?))).collect::<Result<_, StepError>>()?;
        let tls = TlsOptions { ca_file: ca_file.as_ref().map(|c| self.plan.suite.dir.join(c)), insecure: *insecure };
        let client = EngineClient::with_tls(url, headers, 256, &tls).map_err(err)?;
        if !skip_health {
            wait_healthy(g, &client, Watch::Nothing, cancel).await?;
        }
        let model = self.model_stat(gi).await?;
        let mut facts = self.observe(g, &client).await;
        Self::add_model_fact(&mut facts, model.as_ref());
        facts.insert("endpoint.url".into(), url.clone());
        if *insecure {
            tracing::warn!("engine `{}`: TLS certificates of {url} are NOT verified (insecure: true)", g.id);
            facts.insert("endpoint.tls".into(), "INSECURE: certificate not verified".into());
        }
        // The models the server serves are an observed fact; `served_name: auto` picks from them.
        let served_models: Vec<String> = match client.get_json("/v1/models").await {
            Ok(v) => v["data"]
                .as_array()
                .map(|d| d.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if !served_models.is_empty() {
            facts.insert("endpoint.models".into(), served_models.join(","));
        }
        let served = if g.model.served_name == "auto" {
            let pick = match served_models.as_slice() {
                [one] => one.clone(),
                many => many.iter().find(|m| **m == g.model.name).cloned().ok_or_else(|| {
                    err(format!(
                        "model `{}` has `served_name: auto`, but {url}/v1/models lists {}; set `served_name:` to one of them",
                        g.model.name,
                        if many.is_empty() { "no model".to_string() } else { many.join(", ") }
                    ))
                })?,
            };
            facts.insert("engine.served_model".into(), pick.clone());
            Some(pick)
        } else {
            None
        };
        self.check_drift(gi, &facts)?;
        self.engines.lock().await.insert(
            gi,
            Engine { process: None, container: None, client, facts: facts.clone(), served, target: EngineTarget::None },
        );
        Ok(json!({"facts": facts, "model": model}))
    }

    async fn client(&self, gi: usize) -> Result<EngineClient, StepError> {
        Ok(self.engine_handle(gi).await?.0)
    }

    /// The client of a running engine and the model name it serves, when learned at run time.
    async fn engine_handle(&self, gi: usize) -> Result<(EngineClient, Option<String>), StepError> {
        let engines = self.engines.lock().await;
        engines
            .get(&gi)
            .map(|e| (e.client.clone(), e.served.clone()))
            .ok_or_else(|| err(format!("engine `{}` is not running", self.plan.groups[gi].id)))
    }

    async fn setup(&self, gi: usize) -> Result<Json, StepError> {
        let client = self.client(gi).await?;
        for call in &self.plan.groups[gi].setup {
            let body = call.body.clone().unwrap_or(Json::Null);
            client.post_json(&call.path, &body).await.map_err(err)?;
        }
        Ok(json!({"requests": self.plan.groups[gi].setup.len()}))
    }

    async fn served_name(&self, gi: usize) -> Option<String> {
        self.engines.lock().await.get(&gi).and_then(|e| e.served.clone())
    }

    /// The tokenizer of a group: the model's local tokenizer.json when it names one (loaded once
    /// per run), else the engine's tokenize call, else none.
    fn tokenizer(&self, g: &EngineGroup) -> Result<Option<Tokenizer>, StepError> {
        if let Some(file) = &g.model.tokenizer {
            let path = self.plan.suite.dir.join(file);
            let mut cache = self.local_tokenizers.lock().map_err(|_| err("tokenizer cache poisoned"))?;
            if let Some(t) = cache.get(&path) {
                return Ok(Some(t.clone()));
            }
            let t = Tokenizer::from_file(&path).map_err(|e| err(format!("model `{}`: {e}", g.model.name)))?;
            cache.insert(path, t.clone());
            return Ok(Some(t));
        }
        Ok(match (&g.tokenize, &g.tokenize_pointer) {
            (Some(req), Some(pointer)) => Some(Tokenizer::engine(req.clone(), pointer.clone())),
            _ => None,
        })
    }

    async fn measure(&self, gi: usize, m: Measurement<'_>, cancel: &Cancel) -> Result<load::LoadOutcome, StepError> {
        let Measurement {
            call,
            spec,
            label,
            expected_output_tokens,
            seed,
            records,
            index_offset,
            window_opens,
            cutoff,
        } = m;
        let g = &self.plan.groups[gi];
        let (client, served) = self.engine_handle(gi).await?;
        let mut call = call.clone();
        if let Some(name) = served {
            call.body = bind_late(&call.body, &[("model.served_name", json!(name))]);
        }
        let mut tokenize = self.tokenizer(g)?;
        if let (Some(t), Some(name)) = (tokenize.as_mut(), self.served_name(gi).await) {
            t.bind(&[("model.served_name", json!(name))]);
        }
        self.progress.requests.store(0, Ordering::Relaxed);
        self.progress.requests_total.store(spec.requests.unwrap_or(0), Ordering::Relaxed);
        if let Ok(mut l) = self.progress.label.lock() {
            *l = label;
        }
        let mut load = spec.clone();
        // A dataset path is relative to the suite file.
        if let PromptSpec::Dataset(d) = &mut load.prompt {
            d.path = self.plan.suite.dir.join(&d.path).to_string_lossy().to_string();
        }
        let input = load::LoadInput {
            client,
            call,
            load,
            api: spec.api,
            tokenize,
            seed,
            progress: self.progress.requests.clone(),
            cancel: cancel.clone(),
            expected_output_tokens,
            records,
            index_offset,
            window_opens,
            cutoff,
        };
        load::run(input).await.map_err(|e| match e {
            load::LoadError::Cancelled => StepError::cancelled(),
            other => err(other),
        })
    }

    /// A benchmark's load: one measurement, or stage after stage for `stages` and `sweep`
    /// (then every stage's records in one file, indexed in order, the stages' tallies merged, and
    /// each stage's own metrics).
    async fn run_load(
        &self,
        gi: usize,
        m: Measurement<'_>,
        cancel: &Cancel,
    ) -> Result<(load::LoadOutcome, Option<Vec<Json>>), StepError> {
        if !matches!(m.spec.profile, Profile::Stages(_) | Profile::Sweep { .. }) {
            return Ok((self.measure(gi, m, cancel).await?, None));
        }
        let Measurement { call, spec, label, expected_output_tokens, seed, records, window_opens, cutoff, .. } = m;
        let mut stages: Vec<Json> = Vec::new();
        let mut throughputs: Vec<f64> = Vec::new();
        let mut merged: Option<load::LoadOutcome> = None;
        let sweep = matches!(spec.profile, Profile::Sweep { .. });
        // A sweep's cell metrics are one stage's, not a mix of different loads: the highest rate
        // it sustained, or the synchronous stage when it sustained none.
        let mut headline: Option<(usize, load::LoadOutcome)> = None;
        for i in 0.. {
            let Some((name, profile, requests, duration)) = next_stage(spec, i, &throughputs) else { break };
            let sub = LoadSpec {
                profile: profile.clone(),
                requests,
                duration,
                // The benchmark's warmup warms the engine once, before the first stage.
                warmup: if i == 0 { spec.warmup.clone() } else { None },
                ramp: if matches!(profile, Profile::Concurrency(_)) { spec.ramp } else { None },
                ..spec.clone()
            };
            let stage_m = Measurement {
                call,
                spec: &sub,
                label: format!("{label} · {name}"),
                expected_output_tokens,
                // Each stage sends prompts of its own.
                seed: seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                records: records.clone(),
                index_offset: merged.as_ref().map_or(0, |all| all.tally.requests().0),
                window_opens: window_opens.clone(),
                cutoff,
            };
            let outcome = self.measure(gi, stage_m, cancel).await?;
            let truncated = outcome.truncated;
            let sm = metrics::summarize(&outcome);
            throughputs.push(sm.request_throughput);
            let sustained = stage_sustained(spec, &sm, self.plan.execution.max_error_rate);
            // The stage's own window on the benchmark's window clock (that of `samples.csv`).
            let first = merged.as_ref().map_or(outcome.origin, |all| all.origin);
            let start_ms = outcome.origin.saturating_duration_since(first).as_secs_f64() * 1e3;
            let window_ms = [start_ms, start_ms + outcome.window_ns as f64 / 1e6];
            stages.push(json!({"stage": i, "name": name, "profile": profile, "window_ms": window_ms, "metrics": sm}));
            if sweep && (i == 0 || (i >= 2 && sustained.is_ok())) {
                headline = Some((stages.len() - 1, outcome.clone()));
            }
            merged = Some(match merged.take() {
                None => outcome,
                Some(mut all) => {
                    all.tally.merge(&outcome.tally);
                    all.window_ns += outcome.window_ns;
                    all.prompts_exact &= outcome.prompts_exact;
                    all.warmup_requests += outcome.warmup_requests;
                    all
                }
            });
            if truncated {
                if let Some(all) = merged.as_mut() {
                    all.truncated = true;
                }
                break;
            }
            // A sweep stops at the first rate it cannot sustain; the remaining rates are noted.
            if let (Profile::Sweep { rates }, Err(why)) = (&spec.profile, sustained)
                && i >= 2
            {
                let left = (*rates as usize + 2).saturating_sub(i + 1);
                stages.push(json!({"stopped": why, "rates_not_run": left}));
                break;
            }
        }
        let mut all = merged.ok_or_else(|| err("a staged profile ran no stage"))?;
        if let Some((at, mut one)) = headline.filter(|_| !all.truncated) {
            stages[at]["headline"] = json!(true);
            one.warmup_requests = all.warmup_requests;
            return Ok((one, Some(stages)));
        }
        // Schedules of different stages have different origins: the arrival statistics belong to
        // each stage's own metrics, not to the merged window.
        all.open_loop = false;
        Ok((all, Some(stages)))
    }

    async fn warmup(&self, gi: usize, cancel: &Cancel) -> Result<Json, StepError> {
        let g = &self.plan.groups[gi];
        let Some(w) = &g.warmup else {
            return Ok(Json::Null);
        };
        let spec = LoadSpec {
            api: w.api,
            profile: Profile::Synchronous,
            requests: Some(w.requests as u64),
            duration: None,
            prompt: PromptSpec::fixed(w.input_tokens),
            ignore_eos: true,
            max_concurrency: None,
            slo: None,
            warmup: None,
            cold_requests: None,
            ramp: None,
            request_timeout: Some(self.plan.execution.request_timeout),
        };
        let m = Measurement {
            call: &w.request,
            spec: &spec,
            label: format!("warmup {}", g.id),
            expected_output_tokens: None,
            seed: prompt_seed(&g.key),
            records: None,
            index_offset: 0,
            window_opens: None,
            cutoff: None,
        };
        let outcome = self.measure(gi, m, cancel).await?;
        let (requests, ok) = outcome.tally.requests();
        let failed = requests - ok;
        if failed == requests && failed > 0 {
            let detail = outcome.tally.first_error.clone().unwrap_or_default();
            return Err(err(format!("every warmup request failed: {detail}")));
        }
        Ok(json!({"requests": requests, "failed": failed}))
    }

    async fn benchmark(&self, step: usize, attempt: u32, cancel: &Cancel) -> Result<Json, StepError> {
        let s = &self.plan.steps[step];
        let ci = s.cell.ok_or_else(|| err("benchmark step without a cell"))?;
        let cell = &self.plan.cells[ci];
        if cell.eval.is_some() {
            return self.eval_benchmark(step, attempt, cancel).await;
        }
        let (Some(spec), Some(call)) = (&cell.load, &cell.request) else {
            return Err(err(format!("benchmark `{}`: its mechanism is not executable by this kitt", cell.benchmark)));
        };
        let started = unix_ns();
        let expected = if spec.ignore_eos { cell.sampling.get("max_tokens").and_then(Json::as_u64) } else { None };
        let dir = self.step_dir(&s.key)?;
        // Records are appended to a scratch file while the load runs (stage after stage), which
        // becomes requests.jsonl only once the benchmark is done: a retried or interrupted attempt
        // never leaves a partial requests.jsonl, nor appends to one.
        let partial = dir.join(".requests.jsonl.partial");
        let _ = std::fs::remove_file(&partial);
        // A killed attempt may have left its spool behind (a clean one removes its own).
        for stale in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if stale.file_name().to_string_lossy().starts_with(load::SPOOL_PREFIX) {
                let _ = std::fs::remove_file(stale.path());
            }
        }
        let (client, target) = {
            let engines = self.engines.lock().await;
            let e = engines.get(&cell.group);
            (e.map(|e| e.client.clone()), e.map(|e| e.target.clone()).unwrap_or(EngineTarget::None))
        };
        let metrics_path = self.plan.groups[cell.group].metrics_path.clone();
        let interval = self.plan.execution.sample_interval.0;
        // The engine's counters and the resource sampler start where the window opens, after
        // prompt sizing and the benchmark's warmup (the first window, for stages).
        let window = Arc::new(tokio::sync::Mutex::new(Window::default()));
        let window_opens: load::WindowHook = {
            let (window, client, metrics_path, target) =
                (Arc::clone(&window), client.clone(), metrics_path.clone(), target.clone());
            Arc::new(move || {
                let (window, client, metrics_path, target) =
                    (Arc::clone(&window), client.clone(), metrics_path.clone(), target.clone());
                Box::pin(async move {
                    let mut w = window.lock().await;
                    if w.sampler.is_some() {
                        return;
                    }
                    w.before = match (&client, &metrics_path) {
                        (Some(c), Some(p)) => scrape(c, p).await,
                        _ => None,
                    };
                    w.sampler = Some(Sampler::start(target, interval, std::time::Instant::now()));
                })
            })
        };
        // Each cell's prompts come from its own key: two cells never send the same prompts, so an
        // engine's prefix cache cannot make a later cell look faster.
        let m = Measurement {
            call,
            spec,
            label: cell.label(),
            expected_output_tokens: expected,
            seed: prompt_seed(&s.key),
            records: Some(partial.clone()),
            index_offset: 0,
            window_opens: Some(window_opens),
            cutoff: Some(step_cutoff(std::time::Instant::now(), self.plan.execution.step_timeout.0)),
        };
        let outcome = self.run_load(cell.group, m, cancel).await;
        let (before, sampler) = {
            let mut w = window.lock().await;
            (w.before.take(), w.sampler.take())
        };
        let (samples, gpu_note) = sampler.map(Sampler::finish).unwrap_or_default();
        let (outcome, mut stages) = outcome?;
        let finished = unix_ns();
        let engine_metrics = match (&client, &metrics_path, &before) {
            (Some(c), Some(p), Some(b)) => scrape(c, p).await.map(|a| crate::collect::prom::delta(b, &a)),
            _ => None,
        };
        // Each stage's resources over its own window.
        for stage in stages.iter_mut().flatten() {
            if let Some([from, to]) = stage["window_ms"].as_array().and_then(|w| <[Json; 2]>::try_from(w.clone()).ok())
            {
                let (from, to) = (from.as_f64().unwrap_or(0.0), to.as_f64().unwrap_or(f64::MAX));
                let inside: Vec<_> = samples.iter().filter(|x| x.t_ms >= from && x.t_ms <= to).cloned().collect();
                stage["resources"] =
                    serde_json::to_value(crate::collect::summarize(&inside, interval, None)).unwrap_or(Json::Null);
            }
        }
        let resources = crate::collect::summarize(&samples, interval, gpu_note);
        super::dir::write_atomic(&dir.join("samples.csv"), crate::collect::csv(&samples).as_bytes()).map_err(err)?;
        let m = metrics::summarize(&outcome);
        if outcome.truncated {
            // Cut by `step_timeout`: the records are kept for diagnosis, apart from
            // requests.jsonl; the cell fails (`truncated`), is never reused on a resume, and
            // stays out of aggregates and compare.
            // The latest truncated attempt's records (a later one replaces them).
            let kept = dir.join("requests.truncated.jsonl");
            super::dir::rename_durably(&partial, &kept).map_err(err)?;
            let why = format!(
                "truncated: `step_timeout` ({}) passed after {} of its requests; their records are in {}",
                humantime::format_duration(self.plan.execution.step_timeout.0),
                m.requests,
                kept.display()
            );
            let mut m_json = serde_json::to_value(&m).map_err(err)?;
            m_json["truncated"] = json!(true);
            if let Some(stages) = stages {
                m_json["stages"] = Json::Array(stages);
            }
            let record = json!({
                "metrics": m_json, "resources": resources, "engine_metrics": engine_metrics,
                "prompts_exact": outcome.prompts_exact, "attempt": attempt,
                "started_unix_ns": started, "finished_unix_ns": finished, "error": why, "status": "truncated",
            });
            self.write(dir.join("benchmark.json"), &record)?;
            return Err(StepError::truncated(why));
        }
        // The load synced the file; the rename makes it requests.jsonl at once.
        super::dir::rename_durably(&partial, &dir.join("requests.jsonl")).map_err(err)?;
        let error = if m.requests > 0 && m.ok == 0 {
            Some(format!("every request failed ({})", summary_errors(&m)))
        } else if m.error_rate > self.plan.execution.max_error_rate {
            Some(format!(
                "error rate {:.1} % is above the budget of {:.1} % ({})",
                m.error_rate * 100.0,
                self.plan.execution.max_error_rate * 100.0,
                summary_errors(&m)
            ))
        } else {
            None
        };
        let mut m_json = serde_json::to_value(&m).map_err(err)?;
        if let Some(stages) = stages {
            m_json["stages"] = Json::Array(stages);
        }
        let record = json!({
            "metrics": m_json, "resources": resources, "engine_metrics": engine_metrics,
            "prompts_exact": outcome.prompts_exact, "attempt": attempt,
            "started_unix_ns": started, "finished_unix_ns": finished, "error": error,
        });
        self.write(dir.join("benchmark.json"), &record)?;
        match error {
            Some(e) => Err(err(e)),
            None => {
                Ok(json!({"requests": m.requests, "ok": m.ok, "output_token_throughput": m.output_token_throughput}))
            }
        }
    }

    /// An eval cell: prepare the items (dataset, shots, prompts, context policy), answer them
    /// through the engine with bounded concurrency, checkpointing in the step directory so an
    /// interrupted eval resumes where it stopped, and score them.
    async fn eval_benchmark(&self, step: usize, attempt: u32, cancel: &Cancel) -> Result<Json, StepError> {
        use crate::eval::{EvalOutcome, Prompt, RunOptions, TokenCounter};
        let s = &self.plan.steps[step];
        let ci = s.cell.ok_or_else(|| err("benchmark step without a cell"))?;
        let cell = &self.plan.cells[ci];
        let g = &self.plan.groups[cell.group];
        let (Some(spec), Some(call)) = (&cell.eval, &cell.request) else {
            return Err(err(format!("benchmark `{}` has no eval", cell.benchmark)));
        };
        let started = unix_ns();
        let (client, served) = self.engine_handle(cell.group).await?;
        let mut call = call.clone();
        if let Some(name) = &served {
            call.body = bind_late(&call.body, &[("model.served_name", json!(name))]);
        }
        let mut opts = crate::eval::PrepareOptions::from_env(&self.plan.suite.dir);
        opts.cancel = cancel.clone();
        // The engine's context window, where its template has one, for the context policy.
        opts.context_window = ["ctx_size", "max_model_len", "num_ctx", "max_total_tokens"]
            .iter()
            .find_map(|k| g.params.get(*k).and_then(Json::as_u64))
            .map(|n| n as u32);
        if let Some(mut t) = self.tokenizer(g)? {
            if let Some(name) = &served {
                t.bind(&[("model.served_name", json!(name))]);
            }
            let c = client.clone();
            opts.counter = TokenCounter::Engine(Arc::new(move |prompt: Prompt| {
                let (c, t) = (c.clone(), t.clone());
                Box::pin(async move { t.count(&c, &prompt.text()).await.map(|n| n as u32) })
            }));
        }
        let prepared =
            crate::eval::prepare(spec, &opts).await.map_err(|e| err(format!("eval `{}`: {e}", cell.benchmark)))?;
        let dir = self.step_dir(&s.key)?;
        let concurrency = cell.params.get("concurrency").and_then(Json::as_u64).unwrap_or(8).max(1) as usize;
        let mut ropts = RunOptions::new(dir.join("eval-checkpoint.json"), concurrency, cancel.clone());
        // About twenty checkpoints per eval (at most every 50 answers): a kill loses little.
        ropts.checkpoint_every = (prepared.items.len() / 20).clamp(1, 50);
        self.progress.requests.store(0, Ordering::Relaxed);
        self.progress.requests_total.store(prepared.items.len() as u64, Ordering::Relaxed);
        if let Ok(mut l) = self.progress.label.lock() {
            *l = cell.label();
        }
        let origin = std::time::Instant::now();
        let deadlines: crate::engine::client::Deadlines = self.plan.execution.request_timeout.into();
        let generate = |req: crate::eval::Request| {
            let (client, call) = (client.clone(), call.clone());
            async move {
                let body = match req.prompt {
                    Prompt::Text(text) => bind_late(&call.body, &[("prompt", json!(text))]),
                    Prompt::Messages(messages) => bind_late(&call.body, &[("messages", json!(messages))]),
                };
                let mut record = crate::engine::client::RequestRecord::default();
                client.send_within(&call, body.to_string().as_bytes(), origin, &deadlines, &mut record).await;
                match record.error {
                    None => Ok(record.text),
                    Some(kind) => {
                        let detail = record.error_detail.unwrap_or_else(|| kind.to_string());
                        Err(crate::eval::Failure::new(kind.to_string(), detail))
                    }
                }
            }
        };
        let done = self.progress.requests.clone();
        let outcome = crate::eval::run(&prepared, generate, &ropts, |p| done.store(p.done as u64, Ordering::Relaxed))
            .await
            .map_err(|e| err(format!("eval `{}`: {e}", cell.benchmark)))?;
        let (result, items) = match outcome {
            EvalOutcome::Finished { result, items, .. } => (result, items),
            EvalOutcome::Interrupted { .. } => return Err(StepError::cancelled()),
        };
        crate::eval::write_items(&dir.join("items.jsonl"), &items).map_err(err)?;
        // Failed generations are not answers: the accuracy is over the answered items, and the
        // error budget judges the share that failed (a retry or resume asks those items again).
        let c = &result.counts;
        let sent = c.scored + c.errors;
        let metrics = json!({
            "requests": sent, "ok": c.scored, "errors": c.errors, "error_rate": result.error_share,
            "accuracy": result.accuracy, "eval": result,
        });
        let error = (result.error_share > self.plan.execution.max_error_rate).then(|| {
            format!(
                "{} of {} eval generations failed ({:.1} %), above the budget of {:.1} %; \
                 `kitt apply --resume {} --rerun-failed {}` asks only those items again",
                c.errors,
                sent,
                result.error_share * 100.0,
                self.plan.execution.max_error_rate * 100.0,
                self.run_id,
                self.plan.suite.file.display()
            )
        });
        let record = json!({
            "metrics": metrics, "attempt": attempt, "prompts_exact": false,
            "started_unix_ns": started, "finished_unix_ns": unix_ns(), "error": error,
        });
        self.write(dir.join("benchmark.json"), &record)?;
        match error {
            Some(e) => Err(err(e)),
            None => Ok(json!({"items": c.total, "accuracy": result.accuracy})),
        }
    }

    fn identity(&self, ci: usize) -> CellIdentity {
        let c = &self.plan.cells[ci];
        CellIdentity {
            model: c.model.clone(),
            engine: c.engine.clone(),
            engine_template: self.plan.groups[c.group].template.clone(),
            benchmark: c.benchmark.clone(),
            template: c.template.clone(),
            params: c.params.clone(),
            swept: c.swept.clone(),
            run_index: c.run_index,
            sampling: c.sampling.clone(),
        }
    }

    async fn collect(&self, step: usize) -> Result<Json, StepError> {
        let s = &self.plan.steps[step];
        let ci = s.cell.ok_or_else(|| err("collect step without a cell"))?;
        let bench_step =
            s.deps.first().map(|d| &self.plan.steps[*d]).ok_or_else(|| err("collect step without its benchmark"))?;
        let path = self.run_dir.join("steps").join(&bench_step.key).join("benchmark.json");
        let raw: Json = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| err(format!("cannot read {}", path.display())))?;
        let gi = self.plan.cells[ci].group;
        let mut facts = self.facts.clone();
        if let Some(e) = self.engines.lock().await.get(&gi) {
            facts.extend(e.facts.clone());
        }
        let mut drift = self.run_drift.clone();
        drift.extend(self.drift.lock().ok().and_then(|d| d.get(&gi).cloned()).unwrap_or_default());
        let result = CellResult {
            schema: RESULT_SCHEMA.into(),
            cell: self.identity(ci),
            status: CellStatus::Ok,
            error: None,
            metrics: raw["metrics"].clone(),
            resources: serde_json::from_value(raw["resources"].clone()).ok(),
            engine_metrics: serde_json::from_value(raw["engine_metrics"].clone()).ok(),
            provenance: Provenance {
                run_id: self.run_id.clone(),
                key: bench_step.key.clone(),
                attempt: raw["attempt"].as_u64().unwrap_or(0) as u32,
                reused: false,
                started_unix_ns: raw["started_unix_ns"].as_u64().unwrap_or(0),
                finished_unix_ns: raw["finished_unix_ns"].as_u64().unwrap_or(0),
                facts,
                drift,
                prompts_exact: raw["prompts_exact"].as_bool().unwrap_or(false),
            },
        };
        self.write(self.step_dir(&s.key)?.join("result.json"), &result)?;
        Ok(json!({"status": "ok"}))
    }

    async fn stop(&self, gi: usize, cancel: &Cancel) -> Result<Json, StepError> {
        let engine = self.engines.lock().await.remove(&gi);
        let mut status = None;
        if let Some(e) = engine {
            if let Some(p) = e.process {
                status = p.stop(Duration::from_secs(5), cancel.is_urgent()).await.map(|s| s.to_string());
            }
            if let Some(c) = e.container {
                let name = c.name.clone();
                status = Some(
                    c.stop(Duration::from_secs(5), cancel.is_urgent())
                        .await
                        .map_err(|e| err(format!("cannot remove container {name}: {e}")))?,
                );
            }
        }
        // Only once the process is gone: a kill meanwhile leaves the pid file for the sweep.
        super::pidfile::remove(&self.run_dir, &self.plan.groups[gi].key);
        Ok(json!({"exit": status}))
    }

    /// Stops every engine still running (every ending path calls this).
    pub async fn shutdown(&self, urgent: bool) {
        let engines: Vec<(usize, Engine)> = self.engines.lock().await.drain().collect();
        for (gi, e) in engines {
            if let Some(p) = e.process {
                p.stop(Duration::from_secs(5), urgent).await;
            }
            if let Some(c) = e.container {
                let name = c.name.clone();
                if let Err(e) = c.stop(Duration::from_secs(5), urgent).await {
                    tracing::error!("cannot remove container {name}: {e}");
                }
            }
            super::pidfile::remove(&self.run_dir, &self.plan.groups[gi].key);
        }
    }

    /// The result of every cell: finished ones from their step directories, the rest failed.
    pub fn report(&self) -> RunReport {
        let mut cells = Vec::new();
        // Why an engine never served its cells: the last failure of one of its lifecycle steps.
        let mut engine_failure: HashMap<usize, String> = HashMap::new();
        if let Ok(contents) = super::journal::read(&self.run_dir.join("journal.jsonl")) {
            for r in &contents.records {
                if let super::journal::Event::StepFailed { step, error, will_retry: false, .. } = &r.event
                    && let Some(s) = self.plan.steps.get(*step)
                    && matches!(
                        s.kind,
                        StepKind::Pull | StepKind::Start | StepKind::Connect | StepKind::Setup | StepKind::Warmup
                    )
                    && let Some(g) = s.group
                {
                    engine_failure
                        .insert(g, format!("{} of engine `{}` failed: {error}", s.kind.name(), self.plan.groups[g].id));
                }
            }
        }
        for s in self.plan.steps.iter().filter(|s| s.kind == StepKind::Collect) {
            let Some(ci) = s.cell else { continue };
            let path = self.run_dir.join("steps").join(&s.key).join("result.json");
            let result: Option<CellResult> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let cell = match result {
                Some(mut r) => {
                    r.provenance.reused = self.reused.contains(&s.key);
                    r
                }
                None => {
                    let bench = s.deps.first().map(|d| &self.plan.steps[*d]);
                    let raw: Option<Json> = bench
                        .and_then(|b| {
                            std::fs::read(self.run_dir.join("steps").join(&b.key).join("benchmark.json")).ok()
                        })
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    let error = raw
                        .as_ref()
                        .and_then(|r| r["error"].as_str().map(String::from))
                        .or_else(|| engine_failure.get(&self.plan.cells[ci].group).cloned())
                        .unwrap_or_else(|| "did not run (see `kitt runs show`)".into());
                    CellResult {
                        schema: RESULT_SCHEMA.into(),
                        cell: self.identity(ci),
                        status: CellStatus::Failed,
                        error: Some(error),
                        metrics: raw.map(|r| r["metrics"].clone()).unwrap_or(Json::Null),
                        resources: None,
                        engine_metrics: None,
                        provenance: Provenance {
                            run_id: self.run_id.clone(),
                            key: bench.map(|b| b.key.clone()).unwrap_or_default(),
                            attempt: 0,
                            reused: false,
                            started_unix_ns: 0,
                            finished_unix_ns: 0,
                            facts: self.facts.clone(),
                            drift: Vec::new(),
                            prompts_exact: false,
                        },
                    }
                }
            };
            cells.push(cell);
        }
        let failed_cells = cells.iter().filter(|c| c.status == CellStatus::Failed).count();
        RunReport {
            schema: "kitt.report/v1".into(),
            run_id: self.run_id.clone(),
            suite: self.plan.suite.name.clone(),
            suite_file: self.plan.suite.file.to_string_lossy().to_string(),
            kitt_version: env!("CARGO_PKG_VERSION").into(),
            facts: self.facts.clone(),
            hardware: Some(super::fingerprint().clone()),
            repetitions: crate::report::repetitions(&cells),
            cells,
            failed_cells,
        }
    }

    fn write_reports(&self) -> Result<Json, StepError> {
        let report = self.report();
        let dir = self.run_dir.join("report");
        // result.json is the canonical result model: always written; reporters add formats.
        let canonical = serde_json::to_vec_pretty(&report).map_err(err)?;
        super::dir::write_atomic(&dir.join("result.json"), &canonical).map_err(err)?;
        let mut files = vec!["result.json".to_string()];
        for r in &self.plan.reporters {
            let bytes = match r.format {
                crate::manifest::template_kind::ReportFormat::Json => {
                    serde_json::to_vec_pretty(&report).map_err(err)?
                }
                crate::manifest::template_kind::ReportFormat::Csv => crate::report::csv(&report).into_bytes(),
                crate::manifest::template_kind::ReportFormat::Template => match &r.template {
                    Some(t) => crate::report::render_template(t, &report)
                        .map_err(|e| err(format!("reporter `{}`: {e}", r.name)))?
                        .into_bytes(),
                    None => continue,
                },
                crate::manifest::template_kind::ReportFormat::Html => match &r.template {
                    Some(t) => crate::report::html::render(t, &report)
                        .map_err(|e| err(format!("reporter `{}`: {e}", r.name)))?
                        .into_bytes(),
                    None => continue,
                },
            };
            if files.contains(&r.output) {
                continue;
            }
            super::dir::write_inside(&dir, &r.output, &bytes)
                .map_err(|e| err(format!("reporter `{}`: cannot write {}: {e}", r.name, r.output)))?;
            files.push(r.output.clone());
        }
        Ok(json!({"files": files}))
    }
}

/// One measured load: what to send and how to judge it.
/// When a benchmark step that started at `start` must have its load done: its `step_timeout`
/// less a margin (a tenth of it, at most 5 s) to write what it measured before the scheduler's own
/// timeout ends the step.
fn step_cutoff(start: std::time::Instant, step_timeout: Duration) -> std::time::Instant {
    start + step_timeout - (step_timeout / 10).min(Duration::from_secs(5))
}

/// What measures alongside a benchmark's window, started when the window opens.
#[derive(Default)]
struct Window {
    /// The engine's counters at the window's start.
    before: Option<crate::collect::prom::Scrape>,
    sampler: Option<Sampler>,
}

struct Measurement<'a> {
    call: &'a crate::plan::RequestTemplate,
    spec: &'a LoadSpec,
    label: String,
    /// `max_tokens` when the engine was told not to stop early.
    expected_output_tokens: Option<u64>,
    /// Prompt seed: the prompts depend only on it.
    seed: u64,
    /// Where the request records are appended, if they are kept.
    records: Option<PathBuf>,
    /// Added to the recorded request indices (stages after the first).
    index_offset: u64,
    /// Awaited right before each window opens (after prompt sizing and warmup).
    window_opens: Option<load::WindowHook>,
    /// When the step must end by (its `step_timeout`, less a margin).
    cutoff: Option<std::time::Instant>,
}

/// Stage `i` of a staged profile, given the request throughput of the stages before it:
/// (name, profile, requests, duration). `None` when there is none left.
fn next_stage(
    spec: &LoadSpec,
    i: usize,
    throughputs: &[f64],
) -> Option<(String, Profile, Option<u64>, Option<crate::manifest::decode::Dur>)> {
    match &spec.profile {
        Profile::Stages(stages) => {
            let s = stages.get(i)?;
            Some((format!("stage {}", i + 1), s.profile.clone(), s.requests, s.duration))
        }
        Profile::Sweep { rates } => {
            let (profile, name) = match i {
                0 => (Profile::Synchronous, "synchronous".to_string()),
                1 => {
                    let n = spec.max_concurrency.unwrap_or(64);
                    (Profile::Concurrency(n), format!("throughput (concurrency {n})"))
                }
                _ => {
                    let k = i - 1;
                    if k > *rates as usize {
                        return None;
                    }
                    let (lo, hi) = (throughputs[0], throughputs[1]);
                    // Evenly between the synchronous and the maximum throughput, endpoints excluded.
                    let rate = lo + (hi - lo).max(0.0) * k as f64 / (*rates as f64 + 1.0);
                    if rate <= 0.0 {
                        return None;
                    }
                    (Profile::Constant(rate), format!("rate {rate:.2}/s"))
                }
            };
            Some((name, profile, spec.requests, spec.duration))
        }
        _ => None,
    }
}

/// Whether a stage held up: its error rate within the budget and, with SLOs, enough requests
/// meeting them.
fn stage_sustained(spec: &LoadSpec, m: &metrics::LoadMetrics, max_error_rate: f64) -> Result<(), String> {
    if m.error_rate > max_error_rate {
        return Err(format!(
            "error rate {:.1} % above the budget of {:.1} %",
            m.error_rate * 100.0,
            max_error_rate * 100.0
        ));
    }
    if let (Some(slo), Some(g)) = (&spec.slo, &m.goodput) {
        let need = slo.attainment.unwrap_or(0.9);
        if g.share < need {
            return Err(format!("{:.1} % of requests met the SLOs, below {:.1} %", g.share * 100.0, need * 100.0));
        }
    }
    Ok(())
}

/// The engine's Prometheus metrics, when it answers.
async fn scrape(client: &EngineClient, path: &str) -> Option<crate::collect::prom::Scrape> {
    match client.get(path, Duration::from_secs(5)).await {
        Ok((200, body)) => Some(crate::collect::prom::parse(&body)),
        Ok((code, _)) => {
            tracing::debug!("metrics {path}: HTTP {code}");
            None
        }
        Err(e) => {
            tracing::debug!("metrics {path}: {e}");
            None
        }
    }
}

/// A prompt seed from a key (hex): stable across runs and resumes, different between cells.
fn prompt_seed(key: &str) -> u64 {
    u64::from_str_radix(&key[..key.len().min(16)], 16).unwrap_or(0)
}

fn summary_errors(m: &metrics::LoadMetrics) -> String {
    m.errors_by_kind.iter().map(|(k, v)| format!("{v}× {k}")).collect::<Vec<_>>().join(", ")
}

/// What `wait_healthy` watches besides the health path: the engine must stay alive, and the
/// server answering must be its own.
enum Watch<'a> {
    /// An endpoint: nothing of ours to watch.
    Nothing,
    Process(&'a mut EngineProcess),
    Container(&'a Container, Network),
}

impl Watch<'_> {
    /// Why the engine cannot become healthy any more, with its last log lines.
    async fn dead(&mut self, g: &EngineGroup, client: &EngineClient) -> Option<String> {
        match self {
            Watch::Nothing => None,
            Watch::Process(p) => {
                let status = p.exited()?;
                let port = client.base_url().rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                let holder = port
                    .and_then(crate::engine::native::port_holder)
                    .map(|h| format!("; port {} is held by {h}", port.unwrap_or(0)))
                    .unwrap_or_default();
                Some(format!(
                    "engine `{}` exited ({status}) before it was healthy{holder}; last log lines:\n{}",
                    g.id,
                    p.last_log_lines(50)
                ))
            }
            Watch::Container(c, _) => {
                let trouble = match c.state().await {
                    Ok(state) => state.trouble()?,
                    Err(e) => format!("cannot be inspected ({e})"),
                };
                Some(format!(
                    "engine `{}`: container {} {trouble} before it was healthy; last log lines:\n{}",
                    g.id,
                    c.name,
                    c.last_log_lines(50).await
                ))
            }
        }
    }

    /// Whether the server that answered is ours: for a native engine, the process listening on
    /// the port must be one kitt started or a descendant of it; for a host-network container, it
    /// must live in the container's pid namespace. The port was free when kitt chose it, but
    /// another server may have taken it before the engine bound it, and would be benchmarked.
    async fn owns(&mut self, g: &EngineGroup, client: &EngineClient) -> Result<(), String> {
        let Some(port) = client.base_url().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
            return Ok(());
        };
        if let Watch::Process(p) = self {
            return crate::engine::native::owns_port(p.pid(), port)
                .map_err(|holder| format!("engine `{}`: port {port} answers, but not from the engine kitt started (pid {}): it is held by {holder}", g.id, p.pid()));
        }
        let Watch::Container(c, Network::Host) = self else { return Ok(()) };
        let state = c.state().await.map_err(|e| e.to_string())?;
        let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let (Some(theirs), Some(pids)) = (ns(state.pid), crate::engine::native::listener_pids(port)) else {
            // kitt itself runs in a container (sibling mode) and cannot see the engine's
            // processes: the container being alive is all it can check.
            return Ok(());
        };
        if pids.is_empty() || pids.iter().any(|p| ns(*p).as_ref() == Some(&theirs)) {
            return Ok(());
        }
        Err(format!(
            "engine `{}`: port {port} answers, but not from container {}: it is held by {}",
            g.id,
            c.name,
            crate::engine::native::port_holder(port).unwrap_or_default()
        ))
    }
}

/// Polls the health path with exponential backoff until it answers 2xx; fails at once if the
/// engine exits, and on timeout says what was polled and what it last answered.
async fn wait_healthy(
    g: &EngineGroup,
    client: &EngineClient,
    mut watch: Watch<'_>,
    cancel: &Cancel,
) -> Result<(), StepError> {
    let h = &g.health;
    let started = std::time::Instant::now();
    let mut interval = h.initial_interval.0.max(Duration::from_millis(5));
    let mut last: String;
    loop {
        match client.get(&h.path, Duration::from_secs(5)).await {
            Ok((code, _)) if (200..300).contains(&code) => {
                // The answer must come from our engine, which must still be alive.
                if let Some(dead) = watch.dead(g, client).await {
                    return Err(err(dead));
                }
                watch.owns(g, client).await.map_err(err)?;
                return Ok(());
            }
            Ok((code @ (401 | 403), _)) => {
                // Credentials do not fix themselves by waiting.
                return Err(err(format!(
                    "engine `{}` refused kitt's credentials: HTTP {code} from {}{}; check the endpoint's `headers:`",
                    g.id,
                    client.base_url(),
                    h.path
                )));
            }
            Ok((code, body)) => last = format!("HTTP {code}: {}", body.chars().take(200).collect::<String>()),
            // An untrusted certificate does not become trusted by waiting either.
            Err(e) if e.to_string().to_lowercase().contains("certificate") => {
                return Err(err(format!(
                    "engine `{}`: TLS failed at {}{}: {e}; trust its CA with `ca_file:` (or, knowingly, `insecure: true`)",
                    g.id,
                    client.base_url(),
                    h.path
                )));
            }
            Err(e) => last = e.to_string(),
        }
        if let Some(dead) = watch.dead(g, client).await {
            return Err(err(dead));
        }
        if started.elapsed() >= h.timeout.0 {
            return Err(err(format!(
                "engine `{}` was not healthy after {}: polled {}{}, last answer: {last}",
                g.id,
                humantime::format_duration(h.timeout.0),
                client.base_url(),
                h.path
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return Err(StepError::cancelled()),
        }
        interval = (interval * 2).min(h.max_interval.0);
    }
}

impl Executor for RunExecutor {
    fn run(self: Arc<Self>, step: usize, attempt: u32, cancel: Cancel) -> StepFuture {
        Box::pin(async move {
            let s = &self.plan.steps[step];
            let group = s.group;
            let g = || group.ok_or_else(|| err("step without an engine group"));
            panic_if_asked(s.kind, &self.plan.step_label(s), attempt);
            let result = match s.kind {
                StepKind::Pull => self.pull(g()?).await,
                StepKind::Start => self.start(g()?, &s.key, &cancel).await,
                StepKind::Connect => self.connect(g()?, &cancel).await,
                StepKind::Setup => self.setup(g()?).await,
                StepKind::Warmup => self.warmup(g()?, &cancel).await,
                StepKind::Benchmark => self.benchmark(step, attempt, &cancel).await,
                StepKind::Collect => self.collect(step).await,
                StepKind::Stop => self.stop(g()?, &cancel).await,
                StepKind::Report => self.write_reports(),
            };
            if result.is_ok() {
                self.progress.steps_done.fetch_add(1, Ordering::Relaxed);
            }
            result
        })
    }

    fn restart(self: Arc<Self>, group: usize, cancel: Cancel) -> StepFuture {
        Box::pin(async move {
            // kitt did not start an endpoint and cannot restart it: the retry simply runs again.
            if matches!(self.plan.groups[group].mode, Mode::Endpoint { .. }) {
                return Ok(Json::Null);
            }
            self.stop(group, &cancel).await?;
            let key = self
                .plan
                .steps
                .iter()
                .find(|s| s.kind == StepKind::Start && s.group == Some(group))
                .map(|s| s.key.clone())
                .unwrap_or_default();
            self.start(group, &key, &cancel).await?;
            self.warmup(group, &cancel).await
        })
    }
}

/// Test hook: `KITT_TEST_PANIC_STEP=<kind>[:<label part>][@<attempt>]` makes the steps of that
/// kind (whose label contains the part, on that attempt) panic, so tests can prove that a
/// panicking step is journaled as failed. Never set it outside tests.
fn panic_if_asked(kind: StepKind, label: &str, attempt: u32) {
    let Ok(spec) = std::env::var("KITT_TEST_PANIC_STEP") else { return };
    let (spec, on_attempt) = match spec.rsplit_once('@') {
        Some((s, a)) => (s.to_string(), a.parse::<u32>().ok()),
        None => (spec, None),
    };
    let (k, part) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
    if k == kind.name() && label.contains(part) && on_attempt.is_none_or(|a| a == attempt) {
        panic!("KITT_TEST_PANIC_STEP: {} `{label}` panics (attempt {attempt})", kind.name());
    }
}
