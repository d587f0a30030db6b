//! start: starts a native engine (a host process in its own process group, its pid file written
//! at spawn) or a container engine (`docker run` with labels naming its owner) on a freshly
//! allocated port, waits until it is healthy and the server answering is its own, and records
//! what it observes about itself (version, image digest, model fingerprint).
//!
//! Done when health passes. The start is a *service*: on resume it runs only if some dependent
//! is still to run, and its engine is stopped after its last dependent. Facts that differ from an
//! earlier attempt's stop the run (drift) unless `--accept-drift`.

use super::*;

impl RunExecutor {
    pub(super) async fn start(&self, at: At, key: &str, cancel: &Cancel) -> Result<Json, StepError> {
        let gi = at.group;
        let g = &self.plan.groups[gi];
        if matches!(g.mode, Mode::Container { .. }) {
            return self.start_container(at, key, cancel).await;
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
        crate::run::pidfile::write_started_by(
            &self.run_dir,
            &self.pid_key(at),
            process.pid(),
            crate::run::pidfile::owner_of(std::process::id()),
        );
        let client = EngineClient::new(&format!("http://127.0.0.1:{port}"), Vec::new(), 256)
            .map_err(err)
            .map_err(|e| self.forget_process(&self.pid_key(at), e))?;
        if let Err(e) = wait_healthy(g, &client, Watch::Process(&mut process), cancel).await {
            process.stop(Duration::from_secs(2), true).await;
            return Err(self.forget_process(&self.pid_key(at), e));
        }
        let mut facts = self.observe(g, &client).await;
        Self::add_model_fact(&mut facts, model.as_ref());
        if let Err(e) = self.check_drift(gi, &facts) {
            process.stop(Duration::from_secs(2), false).await;
            return Err(self.forget_process(&self.pid_key(at), e));
        }
        let pid = process.pid();
        self.engines.lock().await.insert(
            at.unit,
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
    pub(super) fn forget_process(&self, pid_key: &str, e: StepError) -> StepError {
        crate::run::pidfile::remove(&self.run_dir, pid_key);
        e
    }

    /// A container engine: `docker run` it, wait until it is healthy and its own, record facts.
    pub(super) async fn start_container(&self, at: At, key: &str, cancel: &Cancel) -> Result<Json, StepError> {
        let gi = at.group;
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
        let gpus = match std::env::var("SLURM_JOB_GPUS") {
            Ok(job) if !job.trim().is_empty() => {
                let minors: Vec<u32> = job.split(',').filter_map(|m| m.trim().parse().ok()).collect();
                let uuids = crate::fingerprint::gpu::uuids_by_minor(
                    std::ffi::OsStr::new(crate::fingerprint::gpu::LIBRARY),
                    &minors,
                );
                let (narrowed, warning) = crate::exec::slurm::narrow_gpus(gpus.as_deref(), &job, uuids);
                if let Some(w) = warning {
                    tracing::warn!("engine `{}`: {w}", g.id);
                }
                narrowed
            }
            _ => gpus,
        };
        // On an agent, the unit's own GPUs only (placement: never part of a key).
        let gpus = match std::env::var(crate::agent::GPUS_ENV) {
            Ok(list) if !list.trim().is_empty() && gpus.is_some() => Some(format!("\"device={}\"", list.trim())),
            _ => gpus,
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
            at.unit,
            Engine { process: None, container: Some(container), client, facts: facts.clone(), served: None, target },
        );
        Ok(json!({"port": port, "container": name, "gpus": gpus, "facts": facts, "model": model}))
    }

    /// A model file that is a symlink out of its directory (a cached download, say) does not
    /// resolve inside the container: mount its target over the link's place.
    pub(super) fn symlinked_model(
        &self,
        g: &EngineGroup,
        mounts: &[crate::plan::MountRef],
    ) -> Option<crate::plan::MountRef> {
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
}
