//! What `docker run` is told: built as plain argv, so that no value — a model name with spaces,
//! quotes or `--flag` text — can become an option of its own, and secrets never appear in it.

use std::path::Path;

use crate::manifest::suite::Network;
use crate::plan::MountRef;

/// One engine container.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// `kitt-<run id>-<n>`.
    pub name: String,
    pub image: String,
    /// Arguments after the image (the engine's own command line).
    pub args: Vec<String>,
    /// Environment of the engine. Values travel in the docker CLI's environment (`--env NAME`),
    /// never in its argv, where `ps` would show them.
    pub env: Vec<(String, String)>,
    /// Bind mounts; sources are absolute host paths.
    pub mounts: Vec<MountRef>,
    /// `--gpus` value, already resolved (`auto` is decided by the caller).
    pub gpus: Option<String>,
    pub shm_size: Option<String>,
    pub network: Network,
    /// The port the engine listens on (and, on a bridge network, is published on 127.0.0.1).
    pub port: u16,
    pub labels: Vec<(String, String)>,
    /// Extra `docker run` options from the template or the suite (options by design).
    pub extra_args: Vec<String>,
}

/// One field of a `--mount` value, quoted as Docker's CSV reader expects when it holds a comma
/// or a quote.
fn csv_field(field: String) -> String {
    if field.contains([',', '"', '\n']) { format!("\"{}\"", field.replace('"', "\"\"")) } else { field }
}

impl RunSpec {
    /// The argv after `docker` and the environment the CLI process needs. `log` is recorded in a
    /// label so a sweep can save the logs of a container whose kitt was killed.
    pub fn argv(&self, log: &Path) -> (Vec<String>, Vec<(String, String)>) {
        let mut a: Vec<String> = vec!["run".into(), "--detach".into(), "--name".into(), self.name.clone()];
        let mut label = |k: &str, v: &str| {
            a.push("--label".into());
            a.push(format!("{k}={v}"));
        };
        for (k, v) in &self.labels {
            label(k, v);
        }
        label(super::OWNER_LABEL, &super::owner::label());
        label(super::LOG_LABEL, &log.to_string_lossy());
        match self.network {
            Network::Host => a.extend(["--network".into(), "host".into()]),
            Network::Bridge => a.extend(["--publish".into(), format!("127.0.0.1:{0}:{0}", self.port)]),
        }
        for (k, _) in &self.env {
            a.extend(["--env".into(), k.clone()]);
        }
        for m in &self.mounts {
            let mut fields = vec![
                "type=bind".to_string(),
                csv_field(format!("source={}", m.source)),
                csv_field(format!("target={}", m.target)),
            ];
            if m.readonly {
                fields.push("readonly".into());
            }
            a.extend(["--mount".into(), fields.join(",")]);
        }
        if let Some(g) = &self.gpus {
            a.extend(["--gpus".into(), g.clone()]);
        }
        if let Some(s) = &self.shm_size {
            a.extend(["--shm-size".into(), s.clone()]);
        }
        a.extend(self.extra_args.iter().cloned());
        // `--` ends docker's options: an image name cannot become one.
        a.push("--".into());
        a.push(self.image.clone());
        a.extend(self.args.iter().cloned());
        (a, self.env.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            name: "kitt-r-0".into(),
            image: "img:1".into(),
            args: vec!["--alias".into(), "my model\" --privileged".into(), "--port".into(), "8080".into()],
            env: vec![("HF_TOKEN".into(), "s3cret".into())],
            mounts: vec![MountRef { source: "/m/a,b".into(), target: "/models".into(), readonly: true }],
            gpus: None,
            shm_size: Some("1g".into()),
            network: Network::Host,
            port: 8080,
            labels: vec![("kitt.run".into(), "r".into())],
            extra_args: vec![],
        }
    }

    #[test]
    fn values_stay_single_argv_elements_and_secrets_stay_out() {
        let (argv, env) = spec().argv(Path::new("/runs/r/engine.log"));
        let image = argv.iter().position(|a| a == "img:1").unwrap();
        assert_eq!(argv[image - 1], "--");
        assert_eq!(&argv[image + 1..], ["--alias", "my model\" --privileged", "--port", "8080"]);
        assert!(!argv.iter().any(|a| a.contains("s3cret")), "{argv:?}");
        assert!(argv.windows(2).any(|w| w == ["--env", "HF_TOKEN"]));
        assert_eq!(env, [("HF_TOKEN".to_string(), "s3cret".to_string())]);
        assert!(argv.contains(&"type=bind,\"source=/m/a,b\",target=/models,readonly".to_string()), "{argv:?}");
        assert!(argv.windows(2).any(|w| w == ["--network", "host"]));
    }

    #[test]
    fn bridge_publishes_on_loopback_only() {
        let mut s = spec();
        s.network = Network::Bridge;
        let (argv, _) = s.argv(Path::new("/l"));
        assert!(argv.windows(2).any(|w| w == ["--publish", "127.0.0.1:8080:8080"]));
        assert!(!argv.iter().any(|a| a == "host"));
    }
}
