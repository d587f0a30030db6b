//! setup: the engine's preparation after start, from its template (e.g. Ollama's model pull or
//! create): each call is sent in order and must succeed.
//!
//! Done when every call answered. On resume it re-runs with its start, since it prepares the
//! engine that start brought up.

use super::*;

impl RunExecutor {
    pub(super) async fn setup(&self, at: At) -> Result<Json, StepError> {
        let gi = at.group;
        let client = self.client(at).await?;
        for call in &self.plan.groups[gi].setup {
            let body = call.body.clone().unwrap_or(Json::Null);
            client.post_json(&call.path, &body).await.map_err(err)?;
        }
        Ok(json!({"requests": self.plan.groups[gi].setup.len()}))
    }
}
