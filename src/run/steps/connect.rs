//! connect: the lifecycle step of an endpoint engine, one kitt does not start. Checks its health
//! (unless `skip_health`), learns which models it serves (`served_name: auto` picks from them) and
//! records observed facts (URL, TLS verification, version, model fingerprint where readable).
//!
//! Done when the endpoint answers. On resume it runs again with the cells that still need it;
//! facts that differ from an earlier attempt's are drift.

use super::*;

impl RunExecutor {
    /// An endpoint engine: nothing to start; check its health, learn what it serves, record facts.
    pub(super) async fn connect(&self, at: At, cancel: &Cancel) -> Result<Json, StepError> {
        let gi = at.group;
        let g = &self.plan.groups[gi];
        if let Mode::Sidecar { image, port, .. } = &g.mode {
            return self.connect_sidecar(at, image, *port, cancel).await;
        }
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
            at.unit,
            Engine { process: None, container: None, client, facts: facts.clone(), served, target: EngineTarget::None },
        );
        Ok(json!({"facts": facts, "model": model}))
    }

    /// A sidecar engine: a container of the same pod, started (and probed) by Kubernetes before
    /// kitt. kitt waits for its health on 127.0.0.1 as for an endpoint, and records that it did
    /// not start it: `engine.mode: sidecar` and the image the pod was given (a digest only when
    /// the suite names the image by one; kitt pulled nothing, so it observed none).
    async fn connect_sidecar(&self, at: At, image: &str, port: u16, cancel: &Cancel) -> Result<Json, StepError> {
        let gi = at.group;
        let g = &self.plan.groups[gi];
        let url = format!("http://127.0.0.1:{port}");
        let client = EngineClient::with_tls(&url, Vec::new(), 256, &TlsOptions::default()).map_err(err)?;
        wait_healthy(g, &client, Watch::Nothing, cancel).await?;
        let model = self.model_stat(gi).await?;
        let mut facts = self.observe(g, &client).await;
        Self::add_model_fact(&mut facts, model.as_ref());
        facts.insert("engine.mode".into(), "sidecar".into());
        facts.insert("engine.url".into(), url);
        facts.insert("sidecar.image".into(), image.to_string());
        self.check_drift(gi, &facts)?;
        self.engines.lock().await.insert(
            at.unit,
            Engine {
                process: None,
                container: None,
                client,
                facts: facts.clone(),
                served: None,
                target: EngineTarget::None,
            },
        );
        Ok(json!({"facts": facts, "model": model}))
    }
}
