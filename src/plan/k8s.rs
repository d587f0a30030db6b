//! The Kubernetes objects a run of a plan would create (`kitt plan SUITE --output k8s`).
//!
//! Plain data only: built from the typed structs of `k8s-openapi` (so every field has the type
//! and name the API server expects), serialized, never applied. Per run: a ServiceAccount with
//! a Role and RoleBinding (unless the suite names an account of its own), and per engine group
//! a ConfigMap mapping a Job index to a unit id and an Indexed Job with one index per unit.
//!
//! A pod of the Job runs the engine as a native sidecar (an init container with `restartPolicy:
//! Always`, Kubernetes 1.29 and later) and kitt as its main container, `kitt work` for the unit
//! of its index against the engine on localhost; the pod completes when kitt does. The plan was
//! compiled with `execution.kubernetes`, so its engine groups are already in sidecar mode: what
//! kitt would start is here the sidecar's image and args, and kitt's unit only connects.
//!
//! One Job per engine group, because a pod template has one sidecar: the units of a group share
//! it. Names carry the run id, which is made at submission; the plan shows a placeholder.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource,
    EnvVar, EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaimVolumeSource,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecretEnvSource, SecretKeySelector, SecurityContext,
    ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value as Json;

use super::{EngineGroup, Mode, MountRef, Plan};
use crate::manifest::kubernetes::{KITT_IN_IMAGE, Kubernetes};
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::{OnFailure, PullPolicy};
use crate::template::{env_placeholder, env_placeholders, placeholder};

/// What stands for the run id in a plan: a run id of the right shape (`kitt apply` makes
/// `YYYYMMDD-HHMMSS-xxxx`), so every name built from it is a valid Kubernetes name.
pub const RUN_PLACEHOLDER: &str = "00000000-000000-0000";
/// Where the runs claim is mounted in every pod.
pub const RUNS_MOUNT: &str = "/runs";
/// Where a pod's units list is mounted: file `<index>` holds the unit id of Job index `<index>`.
pub const UNITS_MOUNT: &str = "/etc/kitt/units";
/// The environment variable that holds a pod's Job index (from the Downward API).
const INDEX_ENV: &str = "KITT_UNIT_INDEX";
/// Seconds between SIGTERM and SIGKILL: kitt stops its attempt and journals the stop.
const GRACE_SECONDS: i64 = 120;

/// The objects of one run of `plan`, in the order they are applied; `None` when the plan has no
/// `execution.kubernetes`.
pub fn objects(plan: &Plan, run: &str) -> Option<Vec<Json>> {
    let k = plan.execution.kubernetes.as_ref()?;
    let mut out: Vec<Json> = Vec::new();
    let account = match &k.service_account {
        Some(a) => a.value.clone(),
        None => {
            let name = format!("kitt-{run}");
            let jobs: Vec<String> = job_groups(plan).iter().enumerate().map(|(n, _)| job_name(run, n)).collect();
            out.push(to_json(&service_account(k, run, &name)));
            out.push(to_json(&role(k, run, &name, &jobs)));
            out.push(to_json(&role_binding(k, run, &name)));
            name
        }
    };
    for (n, (gi, units)) in job_groups(plan).into_iter().enumerate() {
        let name = job_name(run, n);
        let g = &plan.groups[gi];
        out.push(to_json(&units_map(k, run, &name, &units)));
        out.push(to_json(&job(plan, k, run, &name, g, units.len(), &account)));
    }
    Some(out)
}

fn to_json(value: &impl serde::Serialize) -> Json {
    // Typed objects of plain data serialize without fail.
    serde_json::to_value(value).unwrap_or_default()
}

/// The units of each engine group, in plan order: (group, unit ids).
fn job_groups(plan: &Plan) -> Vec<(usize, Vec<String>)> {
    let mut out: Vec<(usize, Vec<String>)> = Vec::new();
    for u in &plan.units {
        match out.iter_mut().find(|(g, _)| *g == u.group) {
            Some((_, ids)) => ids.push(u.id.clone()),
            None => out.push((u.group, vec![u.id.clone()])),
        }
    }
    out
}

fn job_name(run: &str, n: usize) -> String {
    format!("kitt-{run}-{n}")
}

fn labels(run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kitt".to_string()),
        ("app.kubernetes.io/instance".to_string(), format!("kitt-{run}")),
        ("kitt-run".to_string(), run.to_string()),
    ])
}

fn meta(k: &Kubernetes, run: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(k.namespace.value.clone()),
        labels: Some(labels(run)),
        ..Default::default()
    }
}

/// The pods' own account: not the namespace's `default`, which may carry others' grants. kitt
/// work calls no Kubernetes API, so no token is mounted.
fn service_account(k: &Kubernetes, run: &str, name: &str) -> ServiceAccount {
    ServiceAccount { metadata: meta(k, run, name), automount_service_account_token: Some(false), ..Default::default() }
}

/// Read access to this run's Jobs and units lists, by name, and nothing else: what a watcher of
/// the run inside the cluster needs.
fn role(k: &Kubernetes, run: &str, name: &str, jobs: &[String]) -> Role {
    let rule = |group: &str, resource: &str, names: Vec<String>| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: Some(names),
        verbs: vec!["get".to_string()],
        ..Default::default()
    };
    Role {
        metadata: meta(k, run, name),
        rules: Some(vec![
            rule("batch", "jobs", jobs.to_vec()),
            rule("", "configmaps", jobs.iter().map(|j| format!("{j}-units")).collect()),
        ]),
    }
}

fn role_binding(k: &Kubernetes, run: &str, name: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(k, run, name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: name.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: name.to_string(),
            namespace: Some(k.namespace.value.clone()),
            ..Default::default()
        }]),
    }
}

/// Index → unit id, one key per index (mounted as one file per index).
fn units_map(k: &Kubernetes, run: &str, job: &str, units: &[String]) -> ConfigMap {
    ConfigMap {
        metadata: meta(k, run, &format!("{job}-units")),
        data: Some(units.iter().enumerate().map(|(i, u)| (i.to_string(), u.clone())).collect()),
        immutable: Some(true),
        ..Default::default()
    }
}

fn job(plan: &Plan, k: &Kubernetes, run: &str, name: &str, g: &EngineGroup, units: usize, account: &str) -> Job {
    let completions = i32::try_from(units).unwrap_or(i32::MAX);
    let parallelism = k.max_jobs.as_ref().map_or(completions, |m| completions.min(m.value as i32));
    let attempts = k.max_attempts() as i32;
    Job {
        metadata: meta(k, run, name),
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".to_string()),
            completions: Some(completions),
            parallelism: Some(parallelism),
            backoff_limit_per_index: Some(attempts - 1),
            // `on_failure: stop` ends the run at the first unit that failed for good.
            max_failed_indexes: (plan.execution.on_failure == OnFailure::Stop).then_some(0),
            // A drained node or a preempted pod is not the unit's fault: it runs again without
            // using up an attempt.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".to_string(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".to_string(),
                        status: "True".to_string(),
                    }]),
                    ..Default::default()
                }],
            }),
            active_deadline_seconds: k.deadline.as_ref().map(|d| d.value.0.as_secs() as i64),
            ttl_seconds_after_finished: k
                .ttl_after_finished
                .as_ref()
                .map(|d| i32::try_from(d.value.0.as_secs()).unwrap_or(i32::MAX)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(run)), ..Default::default() }),
                spec: Some(pod(k, run, name, g, account)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(k: &Kubernetes, run: &str, job: &str, g: &EngineGroup, account: &str) -> PodSpec {
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

/// The objects as YAML documents, `---` between them, with a header saying what they are.
pub fn yaml(plan: &Plan, objects: &[Json]) -> String {
    let jobs = objects.iter().filter(|o| o["kind"] == "Job").count();
    let mut out = format!(
        "# suite `{}`: {} unit(s) in {jobs} Indexed Job(s); nothing is applied.\n\
         # `{RUN_PLACEHOLDER}` stands for the run id, made at submission.\n",
        plan.suite.name,
        plan.units.len(),
    );
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        // apiVersion, kind and metadata first, as people write them; the rest in key order.
        let mut rest = o.clone();
        for key in ["apiVersion", "kind", "metadata"] {
            if let Some(v) = rest.as_object_mut().and_then(|m| m.remove(key)) {
                out.push_str(&crate::manifest::emit::to_yaml(&serde_json::json!({ key: v })));
            }
        }
        out.push_str(&crate::manifest::emit::to_yaml(&rest));
    }
    out
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
