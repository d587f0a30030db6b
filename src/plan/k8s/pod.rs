//! One pod of a run's Job: the engine as a native sidecar, kitt as the main container running
//! the unit of the pod's index, and the volumes they share. Only the objects module calls it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec,
    Probe, ResourceRequirements, SecretEnvSource, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{GRACE_SECONDS, INDEX_ENV, RUNS_MOUNT, UNITS_MOUNT};
use crate::manifest::kubernetes::{KITT_IN_IMAGE, Kubernetes};
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::PullPolicy;
use crate::plan::{EngineGroup, Mode, MountRef};
use crate::template::{env_placeholder, env_placeholders, placeholder};

pub(super) fn pod(k: &Kubernetes, run: &str, job: &str, g: &EngineGroup, account: &str) -> PodSpec {
    let mut volumes = vec![
        Volume {
            name: "runs".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: k.runs_claim.value.clone(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "units".to_string(),
            config_map: Some(ConfigMapVolumeSource { name: format!("{job}-units"), ..Default::default() }),
            ..Default::default()
        },
    ];
    let engine = sidecar(k, g, &mut volumes);
    let gpus = matches!(g.mode, Mode::Sidecar { gpus, .. } if gpus > 0);
    PodSpec {
        restart_policy: Some("Never".to_string()),
        service_account_name: Some(account.to_string()),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(GRACE_SECONDS),
        node_selector: k
            .gpu_product
            .as_ref()
            .map(|p| BTreeMap::from([("nvidia.com/gpu.product".to_string(), p.value.clone())])),
        // GPU nodes are commonly tainted so that only pods asking for GPUs land there.
        tolerations: gpus.then(|| {
            vec![Toleration {
                key: Some("nvidia.com/gpu".to_string()),
                operator: Some("Exists".to_string()),
                effect: Some("NoSchedule".to_string()),
                ..Default::default()
            }]
        }),
        priority_class_name: k.priority_class.as_ref().map(|p| p.value.clone()),
        image_pull_secrets: (!k.image_pull_secrets.is_empty())
            .then(|| k.image_pull_secrets.iter().map(|s| LocalObjectReference { name: s.value.clone() }).collect()),
        init_containers: engine.map(|e| vec![e]),
        containers: vec![kitt(k, run)],
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// kitt's own container: `kitt work` for the unit of this pod's index.
fn kitt(k: &Kubernetes, run: &str) -> Container {
    Container {
        name: "kitt".to_string(),
        image: Some(k.image.value.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![KITT_IN_IMAGE.to_string()]),
        args: Some(vec![
            "work".to_string(),
            "--run-dir".to_string(),
            format!("{RUNS_MOUNT}/{run}"),
            "--unit-file".to_string(),
            // Kubernetes expands `$(VAR)` from the container's env.
            format!("{UNITS_MOUNT}/$({INDEX_ENV})"),
            // No driver judges leases here: a retry pod waits out a silent earlier attempt.
            "--take-over-silent".to_string(),
        ]),
        env: Some(vec![EnvVar {
            name: INDEX_ENV.to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations['batch.kubernetes.io/job-completion-index']".to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        env_from: k.secret.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: s.value.clone(), optional: None }),
                ..Default::default()
            }]
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("1".to_string())),
                ("memory".to_string(), Quantity("512Mi".to_string())),
            ])),
            ..Default::default()
        }),
        security_context: Some(locked_down()),
        volume_mounts: Some(vec![
            VolumeMount { name: "runs".to_string(), mount_path: RUNS_MOUNT.to_string(), ..Default::default() },
            VolumeMount {
                name: "units".to_string(),
                mount_path: UNITS_MOUNT.to_string(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), ..Default::default() }),
        ..Default::default()
    }
}

/// The engine as a native sidecar (an endpoint engine has none: kitt reaches it over the
/// network). Adds the volumes it mounts to `volumes`.
fn sidecar(k: &Kubernetes, g: &EngineGroup, volumes: &mut Vec<Volume>) -> Option<Container> {
    let Mode::Sidecar { image, pull, command, args, env, mounts, gpus, shm_size, port } = &g.mode else {
        return None;
    };
    // `{{port}}` is the engine port; a secret param's `{{from_env.NAME}}` is `$(NAME)`, which
    // Kubernetes expands from the env var NAME below (read from the Secret).
    let bind = |a: &String| {
        let mut out = a.replace(&placeholder("port"), &port.to_string());
        for var in env_placeholders(a) {
            out = out.replace(&env_placeholder(var), &format!("$({var})"));
        }
        out
    };
    let from_secret = |name: &str, key: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                // Compiling refused a secret without `execution.kubernetes.secret`.
                name: k.secret.as_ref().map(|s| s.value.clone()).unwrap_or_default(),
                key: key.to_string(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Variables that args and env values name, defined first so that `$(NAME)` expands.
    let plain = env.values().filter_map(|v| match v {
        SecretOr::Plain(p) => Some(p),
        SecretOr::FromEnv { .. } => None,
    });
    // A prefixed secret (`prefix: "Bearer "`) is its prefix before `$(NAME)`.
    let prefixed = env.values().filter_map(|v| match v {
        SecretOr::FromEnv { from_env, prefix: Some(_) } => Some(from_env.as_str()),
        _ => None,
    });
    let mut named: Vec<&str> = args
        .iter()
        .chain(plain)
        .flat_map(|a| env_placeholders(a))
        .chain(prefixed)
        .filter(|v| !env.contains_key(*v))
        .collect();
    named.sort_unstable();
    named.dedup();
    let mut volume_mounts: Vec<VolumeMount> = mounts.iter().map(model_mount).collect();
    if !mounts.is_empty()
        && let Some(claim) = &k.models_claim
    {
        volumes.push(Volume {
            name: "models".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.value.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
    }
    if let Some(size) = shm_size {
        volumes.push(Volume {
            name: "dshm".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: quantity(size).map(Quantity),
            }),
            ..Default::default()
        });
        volume_mounts.push(VolumeMount {
            name: "dshm".to_string(),
            mount_path: "/dev/shm".to_string(),
            ..Default::default()
        });
    }
    let env: Vec<EnvVar> = named
        .iter()
        .map(|var| from_secret(var, var))
        .chain(env.iter().map(|(name, v)| match v {
            SecretOr::Plain(value) => EnvVar { name: name.clone(), value: Some(bind(value)), ..Default::default() },
            SecretOr::FromEnv { from_env, prefix: None } => from_secret(name, from_env),
            SecretOr::FromEnv { from_env, prefix: Some(prefix) } => {
                EnvVar { name: name.clone(), value: Some(format!("{prefix}$({from_env})")), ..Default::default() }
            }
        }))
        .collect();
    let health = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(g.health.path.clone()),
            port: IntOrString::Int(i32::from(*port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(period.min(5)),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    // The startup probe allows the template's health timeout, polled at its longest interval
    // (1 to 10 s), like kitt's own wait for a container it starts.
    let period = g.health.max_interval.0.as_secs().clamp(1, 10) as i32;
    let startup_failures = (g.health.timeout.0.as_secs().div_ceil(period as u64)).max(1);
    let mut limits = BTreeMap::new();
    if *gpus > 0 {
        limits.insert("nvidia.com/gpu".to_string(), Quantity(gpus.to_string()));
    }
    Some(Container {
        name: "engine".to_string(),
        image: Some(image.clone()),
        image_pull_policy: Some(
            match pull {
                PullPolicy::Always => "Always",
                PullPolicy::Never => "Never",
                PullPolicy::IfNotPresent => "IfNotPresent",
            }
            .to_string(),
        ),
        command: (!command.is_empty()).then(|| command.clone()),
        args: Some(args.iter().map(bind).collect()),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: i32::from(*port),
            ..Default::default()
        }]),
        restart_policy: Some("Always".to_string()),
        startup_probe: Some(health(period, i32::try_from(startup_failures).unwrap_or(i32::MAX))),
        readiness_probe: Some(health(10, 3)),
        resources: (!limits.is_empty()).then(|| ResourceRequirements { limits: Some(limits), ..Default::default() }),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        ..Default::default()
    })
}

/// A template's mount of a model directory, from the models claim: the directory as written
/// (relative to the suite) is the path inside the claim.
fn model_mount(m: &MountRef) -> VolumeMount {
    let sub = m.source.trim_start_matches("./").trim_end_matches('/');
    VolumeMount {
        name: "models".to_string(),
        mount_path: m.target.clone(),
        read_only: Some(true),
        sub_path: (!sub.is_empty() && sub != ".").then(|| sub.to_string()),
        ..Default::default()
    }
}

/// A `docker run --shm-size` size (`8g`, `512m`, bytes) as a Kubernetes quantity (`8Gi`).
fn quantity(size: &str) -> Option<String> {
    let s = size.trim().to_ascii_lowercase();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit = match &s[digits.len()..] {
        "" | "b" => "",
        "k" | "kb" => "Ki",
        "m" | "mb" => "Mi",
        "g" | "gb" => "Gi",
        "t" | "tb" => "Ti",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn shm_sizes() {
        assert_eq!(quantity("8g").as_deref(), Some("8Gi"));
        assert_eq!(quantity("512M").as_deref(), Some("512Mi"));
        assert_eq!(quantity("1024").as_deref(), Some("1024"));
        assert_eq!(quantity("lots"), None);
    }
}
