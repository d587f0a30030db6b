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
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value as Json;

use super::{EngineGroup, Plan};
use crate::manifest::kubernetes::Kubernetes;
use crate::manifest::suite::OnFailure;

mod pod;

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
                spec: Some(pod::pod(k, run, name, g, account)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
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
