//! pull: makes a container engine's image present, by its pull policy (if-not-present, always,
//! never), and records the image id and digests it found.
//!
//! Done when the image's id is recorded. On resume it runs again (it is cheap): the start that
//! follows records the image digest as an observed fact, and a digest different from the one an
//! earlier attempt recorded stops the resume (`--accept-drift` goes on and marks the cells).

use super::*;

impl RunExecutor {
    /// Makes the image of a container engine present, by its pull policy; records its id.
    pub(super) async fn pull(&self, gi: usize) -> Result<Json, StepError> {
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
}
