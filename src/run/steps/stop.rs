//! stop: stops and removes a container engine, or stops a native engine's process group, and
//! removes its pid file once it is gone. Also the shutdown every other ending path takes
//! (errors, Ctrl-C, panics), so nothing kitt started outlives the run.
//!
//! Done when the engine is gone. Nothing to do on resume: a stop runs after its start's last
//! dependent in every attempt that started the engine.

use super::*;

impl RunExecutor {
    pub(super) async fn stop(&self, at: At, cancel: &Cancel) -> Result<Json, StepError> {
        let engine = self.engines.lock().await.remove(&at.unit);
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
        crate::run::pidfile::remove(&self.run_dir, &self.pid_key(at));
        Ok(json!({"exit": status}))
    }

    /// Stops every engine still running (every ending path calls this).
    pub async fn shutdown(&self, urgent: bool) {
        let engines: Vec<(usize, Engine)> = self.engines.lock().await.drain().collect();
        for (unit, e) in engines {
            let at = At { group: self.plan.units[unit].group, unit };
            if let Some(p) = e.process {
                p.stop(Duration::from_secs(5), urgent).await;
            }
            if let Some(c) = e.container {
                let name = c.name.clone();
                if let Err(e) = c.stop(Duration::from_secs(5), urgent).await {
                    tracing::error!("cannot remove container {name}: {e}");
                }
            }
            crate::run::pidfile::remove(&self.run_dir, &self.pid_key(at));
        }
    }
}
