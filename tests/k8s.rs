//! `execution.kubernetes` and `kitt plan --output k8s`: the objects of the standard suite and of
//! a multi-GPU engine as golden files, validated against Kubernetes' own schemas (PyPI's
//! `kubernetes-validate`, strict, offline); the Job's shape checked field by field; and the
//! sidecar engine mode, whose keys differ from a container engine's and which `kitt work` runs
//! against an engine already listening on localhost, recording `engine.mode: sidecar`.
//!
//! `KITT_UPDATE_GOLDEN=1 cargo nextest run --test k8s` rewrites the golden files; review the
//! diff. Without `kubernetes-validate` (`pip install kubernetes-validate==1.37.0`) the schema
//! check is skipped with a note, except under `CI=true`, where it fails.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

/// Kubernetes versions the objects are validated against: the first with native sidecars on by
/// default, and the one of the `k8s-openapi` feature kitt builds with.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.33.0"];

const DIGEST: &str = "sha256:4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kitt(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_STORE", "off")
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env_remove("KITT_SIM_REQUEST_LOG");
    c
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn k8s_block(extra: &str) -> String {
    format!(
        "  execution:\n    kubernetes:\n      namespace: llm-bench\n      image: registry.example.com/kitt@{DIGEST}\n      runs_claim: kitt-runs\n{extra}"
    )
}

/// suites/standard.yaml with an `execution.kubernetes` block (and `extra` keys in it).
fn standard_on_kubernetes(dir: &Path, extra: &str) -> PathBuf {
    let source = std::fs::read_to_string(root().join("suites/standard.yaml")).unwrap();
    let anchor = "  reporters: [json, csv, markdown]\n";
    assert!(source.contains(anchor), "suites/standard.yaml changed its reporters line");
    let with = source.replace(anchor, &format!("{}{anchor}", k8s_block(extra)));
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("standard.yaml");
    std::fs::write(&p, with).unwrap();
    p
}

fn plan_k8s(dir: &Path, suite: &Path, output: &str) -> String {
    let out = kitt(dir).args(["plan", "--output", output]).arg(suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Compares `actual` with golden file `name`, or rewrites it under `KITT_UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("KITT_UPDATE_GOLDEN").is_some_and(|v| v != "0") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with KITT_UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{name} differs from its golden file at line {}:\n  golden: {}\n  actual: {}\n\
             if the change is intended, run with KITT_UPDATE_GOLDEN=1 and review the diff",
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

/// `python3 -m kubernetes_validate --strict` on `file` for every pinned version; `false` when the
/// validator is missing outside CI.
fn validate(file: &Path) -> bool {
    let probe = Command::new("python3").args(["-m", "kubernetes_validate", "--version"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "kubernetes-validate is missing: pip install kubernetes-validate==1.37.0"
        );
        eprintln!(
            "note: kubernetes-validate is missing (pip install kubernetes-validate==1.37.0): schema check skipped"
        );
        return false;
    }
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", version])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{} against Kubernetes {version}:\n{}", file.display(), text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("ERROR") && said.contains("passed"), "{said}");
    }
    true
}

/// Golden file `name` from `yaml`, and the schema check of what it holds.
fn golden_and_valid(name: &str, yaml: &str) {
    check_golden(name, yaml);
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join(name);
    std::fs::write(&file, yaml).unwrap();
    if validate(&file) {
        // The validator must reject what Kubernetes would: an unknown field fails strict mode.
        let bad = yaml.replacen("completionMode: Indexed", "completionMode: Indexed\n  parallelizm: 2", 1);
        assert_ne!(bad, yaml);
        std::fs::write(&file, bad).unwrap();
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBERNETES_VERSIONS[0]])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "an unknown field passed: {}", text(&out));
    }
}

#[test]
fn the_standard_suite_as_kubernetes_objects() {
    let t = tempfile::tempdir().unwrap();
    let suite = standard_on_kubernetes(t.path(), "");
    golden_and_valid("k8s-standard.yaml", &plan_k8s(t.path(), &suite, "k8s"));
}

#[test]
fn a_multi_gpu_engine_as_kubernetes_objects() {
    let t = tempfile::tempdir().unwrap();
    golden_and_valid("k8s-multi-gpu.yaml", &plan_k8s(t.path(), &root().join("examples/kubernetes.yaml"), "k8s"));
}

fn items(list: &Json, kind: &str) -> Vec<Json> {
    list["items"].as_array().unwrap().iter().filter(|o| o["kind"] == kind).cloned().collect()
}

#[test]
fn the_job_is_indexed_with_one_index_per_unit_and_the_engine_as_a_sidecar() {
    let t = tempfile::tempdir().unwrap();
    let suite = root().join("examples/kubernetes.yaml");
    let list: Json = serde_json::from_str(&plan_k8s(t.path(), &suite, "k8s-json")).unwrap();
    let units = kitt(t.path()).args(["plan", "--units", "--output", "json"]).arg(&suite).output().unwrap();
    let units: Json = serde_json::from_slice(&units.stdout).unwrap();
    let unit_ids: Vec<&str> = units.as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    // granularity: cell, three concurrencies: three units.
    assert_eq!(unit_ids.len(), 3, "{units}");

    let jobs = items(&list, "Job");
    assert_eq!(jobs.len(), 1, "one engine group, one Job");
    let spec = &jobs[0]["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 3);
    assert_eq!(spec["parallelism"], 2, "max_jobs");
    assert_eq!(spec["backoffLimitPerIndex"], 2, "max_attempts 3");
    assert_eq!(spec["activeDeadlineSeconds"], 12 * 3600);
    assert_eq!(spec["ttlSecondsAfterFinished"], 86400);
    let rule = &spec["podFailurePolicy"]["rules"][0];
    assert_eq!(rule["action"], "Ignore");
    assert_eq!(rule["onPodConditions"][0]["type"], "DisruptionTarget");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
    assert_eq!(pod["automountServiceAccountToken"], false);

    let engine = &pod["initContainers"][0];
    assert_eq!(engine["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(engine["image"], "vllm/vllm-openai:v0.6.3");
    assert_eq!(engine["resources"]["limits"]["nvidia.com/gpu"], "4");
    assert_eq!(engine["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(engine["startupProbe"]["httpGet"]["port"], 8000);
    assert_eq!(engine["readinessProbe"]["httpGet"]["port"], 8000);
    // 600 s of health timeout at 10 s a probe.
    assert_eq!(engine["startupProbe"]["failureThreshold"], 60);
    let args: Vec<&str> = engine["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let at = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(at("--port"), "8000", "the port placeholder is bound");
    assert_eq!(at("--host"), "0.0.0.0", "the kubelet probes the pod's address");
    assert_eq!(at("--tensor-parallel-size"), "4");
    assert_eq!(engine["volumeMounts"][0]["subPath"], "models", "the model directory inside the claim");

    let kitt_c = &pod["containers"][0];
    assert_eq!(kitt_c["image"], format!("registry.example.com/kitt@{DIGEST}"));
    let kargs: Vec<&str> = kitt_c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        kargs,
        [
            "work",
            "--run-dir",
            "/runs/00000000-000000-0000",
            "--unit-file",
            "/etc/kitt/units/$(KITT_UNIT_INDEX)",
            "--take-over-silent"
        ]
    );
    assert_eq!(
        kitt_c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );

    // The units list maps each index to the unit `kitt plan --units` lists at that place.
    let maps = items(&list, "ConfigMap");
    assert_eq!(maps.len(), 1);
    for (i, id) in unit_ids.iter().enumerate() {
        assert_eq!(maps[0]["data"][i.to_string()], *id);
    }
    assert_eq!(pod["volumes"][1]["configMap"]["name"], maps[0]["metadata"]["name"]);

    // Least privilege: read this run's own Job and units list, by name, nothing else.
    let roles = items(&list, "Role");
    let rules = roles[0]["rules"].as_array().unwrap();
    assert!(rules.iter().all(|r| r["verbs"] == serde_json::json!(["get"])), "{rules:?}");
    assert_eq!(rules[0]["resourceNames"][0], jobs[0]["metadata"]["name"]);
    let binding = &items(&list, "RoleBinding")[0];
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
}

#[test]
fn a_service_account_of_ones_own_means_no_rbac_objects() {
    let t = tempfile::tempdir().unwrap();
    let suite = standard_on_kubernetes(t.path(), "      service_account: bench-runner\n      max_attempts: 1\n");
    let list: Json = serde_json::from_str(&plan_k8s(t.path(), &suite, "k8s-json")).unwrap();
    let kinds: Vec<&str> = list["items"].as_array().unwrap().iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Job"]);
    let job = &items(&list, "Job")[0];
    assert_eq!(job["spec"]["template"]["spec"]["serviceAccountName"], "bench-runner");
    assert_eq!(job["spec"]["backoffLimitPerIndex"], 0);
}

#[test]
fn units_and_k8s_do_not_combine() {
    let t = tempfile::tempdir().unwrap();
    let out = kitt(t.path())
        .args(["plan", "--units", "--output", "k8s"])
        .arg(root().join("examples/kubernetes.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_suite_without_the_block_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let out =
        kitt(t.path()).args(["plan", "--output", "k8s"]).arg(root().join("suites/standard.yaml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `execution.kubernetes`"), "{}", text(&out));
}

fn keyed(plan: &kitt::plan::Plan) -> Vec<(String, String)> {
    plan.steps.iter().map(|s| (format!("{}:{}", s.kind.name(), plan.step_label(s)), s.key.clone())).collect()
}

#[test]
fn sidecar_keys_differ_from_a_container_engines() {
    let t = tempfile::tempdir().unwrap();
    let plain = kitt::plan::compile::compile_file(&root().join("suites/standard.yaml")).unwrap();
    let sidecar = kitt::plan::compile::compile_file(&standard_on_kubernetes(t.path(), "")).unwrap();
    assert_eq!(plain.groups[0].mode.name(), "native");
    assert_eq!(sidecar.groups[0].mode.name(), "sidecar");
    assert_eq!(sidecar.units[0].needs.engine, "sidecar");
    // kitt neither starts nor stops a sidecar: it connects.
    let kinds = |p: &kitt::plan::Plan| p.steps.iter().map(|s| s.kind.name()).collect::<Vec<_>>();
    assert!(kinds(&plain).contains(&"start") && kinds(&plain).contains(&"stop"));
    assert!(!kinds(&sidecar).contains(&"start") && !kinds(&sidecar).contains(&"stop"), "{:?}", kinds(&sidecar));
    assert_eq!(kinds(&sidecar)[0], "connect");
    // Every step of the engine group has a key of its own in sidecar mode.
    let plain_keys: std::collections::HashSet<String> = keyed(&plain).into_iter().map(|(_, k)| k).collect();
    for (what, key) in keyed(&sidecar).into_iter().filter(|(w, _)| !w.starts_with("report")) {
        assert!(!plain_keys.contains(&key), "{what} has the same key as on a host process");
    }
    assert_ne!(plain.groups[0].key, sidecar.groups[0].key);
    // The port is placement, as for an engine kitt starts: another port, the same keys.
    let elsewhere =
        kitt::plan::compile::compile_file(&standard_on_kubernetes(&t.path().join("b"), "      engine_port: 9000\n"))
            .unwrap();
    assert_eq!(keyed(&sidecar), keyed(&elsewhere));
    let kitt::plan::Mode::Sidecar { port, image, command, .. } = &elsewhere.groups[0].mode else { unreachable!() };
    assert_eq!(*port, 9000);
    // kitt's simulator runs from the kitt image.
    assert_eq!(image, &format!("registry.example.com/kitt@{DIGEST}"));
    assert_eq!(command, &["/usr/local/bin/kitt"]);
}

/// Starts the simulator in this process on a free port, as a pod's sidecar would be; its port.
fn start_sim() -> u16 {
    common::start_sim(&["--port", "0", "--model", "tiny"])
}

#[test]
fn kitt_work_runs_a_unit_against_a_sidecar_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let port = start_sim();
    let suite = t.path().join("suite.yaml");
    std::fs::write(
        &suite,
        format!(
            "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: beside}}\nspec:\n  models: [{{name: tiny}}]\n  \
             engines: [{{name: sim, template: sim}}]\n  benchmarks:\n    - {{name: lat, template: latency, params: {{requests: 4, max_tokens: 8}}}}\n  \
             warmup: {{requests: 1}}\n  reporters: [json]\n{}",
            k8s_block(&format!("      engine_port: {port}\n"))
        ),
    )
    .unwrap();
    // Each unit runs as a child `kitt work`, as in a pod.
    let out = kitt(t.path()).arg("apply").arg(&suite).args(["--executor", "processes"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let runs = t.path().join("runs");
    let run = std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    let report: Json = serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap();
    let facts = &report["cells"][0]["provenance"]["facts"];
    assert_eq!(facts["engine.mode"], "sidecar", "{facts}");
    assert_eq!(facts["engine.url"], format!("http://127.0.0.1:{port}"));
    assert_eq!(facts["sidecar.image"], format!("registry.example.com/kitt@{DIGEST}"));
    // The cell was measured on the engine kitt found there.
    assert_eq!(report["cells"][0]["metrics"]["requests"], 4, "{}", report["cells"][0]["metrics"]);
    assert_eq!(report["cells"][0]["metrics"]["ok"], 4);

    // `--unit-file`, as a pod reads its unit from the units list: the unit is done, so it
    // commits nothing more and exits 0; an empty file is refused.
    let plan: Json = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    let unit = plan["units"][0]["id"].as_str().unwrap();
    let file = t.path().join("0");
    std::fs::write(&file, format!("{unit}\n")).unwrap();
    let out = kitt(t.path()).arg("work").arg("--run-dir").arg(&run).arg("--unit-file").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("unit {unit}")), "{}", text(&out));
    std::fs::write(&file, "").unwrap();
    let out = kitt(t.path()).arg("work").arg("--run-dir").arg(&run).arg("--unit-file").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"), "{}", text(&out));

    // A retry pod: the newest attempt is held on another machine (a pod gone with its node),
    // whose lease no longer moves. Plain `kitt work` cannot judge it and refuses; with
    // `--take-over-silent` it waits one lease, marks it expired and takes the unit.
    let attempts = run.join("attempts").join(unit);
    let newest = std::fs::read_dir(&attempts)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .max()
        .unwrap();
    let claim_path = attempts.join(newest.to_string());
    let mut claim: Json = serde_json::from_slice(&std::fs::read(&claim_path).unwrap()).unwrap();
    claim["boot_id"] = "another-boot".into();
    claim["machine"] = "another-machine".into();
    std::fs::write(&claim_path, serde_json::to_vec(&claim).unwrap()).unwrap();
    let work = |take_over: bool| {
        let mut c = kitt(t.path());
        c.arg("work").arg("--run-dir").arg(&run).args(["--unit", unit]);
        if take_over {
            c.arg("--take-over-silent");
        }
        c.env("KITT_TEST_LEASE_RENEW_MS", "100").env("KITT_TEST_LEASE_MS", "600").output().unwrap()
    };
    let out = work(false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is claimed by attempt"), "{}", text(&out));
    let out = work(true);
    assert!(out.status.success(), "{}", text(&out));
    assert!(attempts.join(format!("{newest}.expired")).exists());
    assert!(attempts.join((newest + 1).to_string()).exists(), "the next attempt took the unit");
}

#[test]
fn without_its_sidecar_a_unit_fails_at_connect() {
    let t = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one and let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let suite = t.path().join("suite.yaml");
    // The simulator with a short health timeout: kitt waits that long for a sidecar to answer.
    std::fs::write(
        t.path().join("quick-sim.yaml"),
        "apiVersion: kitt/v1\nkind: Engine\nmetadata: {name: quick-sim}\nspec:\n  base: sim\n  \
         health: {path: /health, timeout: 2s, initial_interval: 10ms, max_interval: 200ms}\n",
    )
    .unwrap();
    std::fs::write(
        &suite,
        format!(
            "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: alone}}\nspec:\n  templates: [quick-sim.yaml]\n  models: [{{name: tiny}}]\n  \
             engines: [{{name: sim, template: quick-sim}}]\n  benchmarks: [{{name: lat, template: latency, params: {{requests: 2}}}}]\n  \
             reporters: [json]\n{}",
            k8s_block(&format!("      engine_port: {port}\n"))
        ),
    )
    .unwrap();
    let out = kitt(t.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("connect"), "{}", text(&out));
}

/// kitt's simulator behind a key: a secret param in its args and its env.
const KEYED_SIM: &str = r#"apiVersion: kitt/v1
kind: Engine
metadata: {name: keyed-sim}
spec:
  base: vllm
  image: null
  container: null
  metrics: null
  params:
    gpu_memory_utilization: null
    max_model_len: null
    tensor_parallel_size: null
    dtype: null
    binary: null
    api_key: {type: string, secret: true}
  native:
    command: ["{{kitt.exe}}", "sim", "--host", "{{bind_host}}", "--port", "{{port}}", "--api-key", "{{params.api_key}}"]
    env: {KITT_SIM_MODELS: "{{model.served_name}},{{params.api_key}}"}
  health: {path: /health, timeout: 30s, initial_interval: 10ms, max_interval: 500ms}
"#;

fn keyed_suite(dir: &Path, k8s_extra: &str) -> PathBuf {
    std::fs::write(dir.join("keyed-sim.yaml"), KEYED_SIM).unwrap();
    let p = dir.join("suite.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: keyed}}\nspec:\n  templates: [keyed-sim.yaml]\n  models: [{{name: m}}]\n  \
             engines:\n    - name: s\n      template: keyed-sim\n      params: {{api_key: {{from_env: SIM_KEY}}}}\n      \
             env: {{TOKEN: {{from_env: SIM_TOKEN}}, AUTH: {{from_env: SIM_TOKEN, prefix: \"Bearer \"}}, PLAIN: x}}\n  \
             benchmarks: [{{name: lat, template: latency, params: {{requests: 3}}}}]\n  execution:\n    on_failure: stop\n{}",
            k8s_block(k8s_extra).replacen("  execution:\n", "", 1)
        ),
    )
    .unwrap();
    p
}

#[test]
fn every_key_of_the_block_reaches_the_objects() {
    let t = tempfile::tempdir().unwrap();
    let suite = keyed_suite(
        t.path(),
        "      secret: bench-secrets\n      engine_port: 9100\n      priority_class: batch-low\n      \
         image_pull_secrets: [registry-creds]\n      gpu_product: NVIDIA-A100-SXM4-80GB\n      max_jobs: 8\n      \
         max_attempts: 5\n      deadline: 90m\n      ttl_after_finished: 10m\n",
    );
    let yaml = plan_k8s(t.path(), &suite, "k8s");
    let file = t.path().join("objects.yaml");
    std::fs::write(&file, &yaml).unwrap();
    validate(&file);
    let list: Json = serde_json::from_str(&plan_k8s(t.path(), &suite, "k8s-json")).unwrap();
    for o in list["items"].as_array().unwrap() {
        assert_eq!(o["metadata"]["namespace"], "llm-bench", "{o}");
        assert_eq!(o["metadata"]["labels"]["kitt-run"], "00000000-000000-0000");
    }
    let job = &items(&list, "Job")[0];
    let spec = &job["spec"];
    assert_eq!(spec["parallelism"], 1, "max_jobs 8, but one unit");
    assert_eq!(spec["backoffLimitPerIndex"], 4);
    assert_eq!(spec["maxFailedIndexes"], 0, "on_failure: stop");
    assert_eq!(spec["activeDeadlineSeconds"], 5400);
    assert_eq!(spec["ttlSecondsAfterFinished"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "batch-low");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-creds");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.product"], "NVIDIA-A100-SXM4-80GB");
    assert!(pod["tolerations"].is_null(), "no GPUs asked for, no GPU toleration");
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "kitt-runs");
    assert_eq!(pod["containers"][0]["envFrom"][0]["secretRef"]["name"], "bench-secrets");

    let engine = &pod["initContainers"][0];
    assert_eq!(engine["startupProbe"]["httpGet"]["port"], 9100, "engine_port");
    let args: Vec<&str> = engine["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, ["sim", "--host", "0.0.0.0", "--port", "9100", "--api-key", "$(SIM_KEY)"]);
    let env = engine["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} in {env:?}"));
    // The secret param's variable comes first, so that `$(SIM_KEY)` expands.
    assert_eq!(env[0]["name"], "SIM_KEY");
    assert_eq!(env[0]["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "bench-secrets", "key": "SIM_KEY"}));
    assert_eq!(var("TOKEN")["valueFrom"]["secretKeyRef"]["key"], "SIM_TOKEN");
    assert_eq!(var("AUTH")["value"], "Bearer $(SIM_TOKEN)");
    assert_eq!(var("PLAIN")["value"], "x");
    assert_eq!(var("KITT_SIM_MODELS")["value"], "m,$(SIM_KEY)");
    // No secret value is anywhere: only names.
    assert!(!yaml.contains("from_env"), "{yaml}");
}

#[test]
fn a_secret_without_a_kubernetes_secret_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let suite = keyed_suite(t.path(), "");
    let out = kitt(t.path()).args(["validate"]).arg(&suite).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("engine `s` reads `SIM_TOKEN` from the environment"),
        "{}",
        text(&out)
    );
}
