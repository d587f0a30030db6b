//! `kitt plan SUITE --output sbatch`: the array jobs a Slurm run would submit, built from
//! `execution.slurm` (every key of which reaches the argv), with nothing submitted. The rules
//! that reject bad values, with their positions, are in tests/broken/slurm_*.yaml.

use std::path::Path;
use std::process::{Command, Output};

fn kitt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kitt")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().unwrap()
}

fn sbatch_json(suite: &Path) -> serde_json::Value {
    let out = kitt(&["plan", suite.to_str().unwrap(), "--output", "sbatch-json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn argv(job: &serde_json::Value) -> Vec<String> {
    job["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

fn suite_with(dir: &Path, slurm: &str) -> std::path::PathBuf {
    let p = dir.join("suite.yaml");
    let yaml = format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: s}}\nspec:\n  models: [{{name: m}}]\n  \
         engines: [{{name: a, template: sim}}, {{name: b, template: sim, params: {{ttft_ms: 50}}}}]\n  \
         benchmarks: [{{name: l, template: latency}}]\n  execution:\n    slurm: {slurm}\n"
    );
    std::fs::write(&p, yaml).unwrap();
    p
}

#[test]
fn the_example_prints_its_argv_and_job_script() {
    let out = kitt(&["plan", "examples/slurm.yaml", "--output", "sbatch"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    insta::assert_snapshot!("slurm_example", String::from_utf8(out.stdout).unwrap());
}

#[test]
fn every_key_reaches_the_argv_and_the_units_list_is_the_plans_units() {
    let v = sbatch_json(Path::new("examples/slurm.yaml"));
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    let dir = "/lustre/team/kitt-runs/RUN/slurm";
    assert_eq!(
        argv(&jobs[0]),
        [
            "sbatch",
            "--parsable",
            "--array=0-1%8",
            "--requeue",
            "--signal=B:TERM@120",
            "--export=NONE",
            "--comment",
            "kitt:RUN",
            "--job-name",
            "kitt-RUN",
            "--output",
            &format!("{dir}/%A_%a.log"),
            "--open-mode=append",
            "--chdir",
            "/lustre/team/kitt-runs/RUN",
            "--partition",
            "gpu",
            "--gres",
            "gpu:1",
            "--time",
            "02:00:00",
            "--account",
            "llm",
            "--constraint",
            "h100",
            "--qos=bench",
            &format!("{dir}/job-0.sh"),
        ]
    );
    let out = kitt(&["plan", "examples/slurm.yaml", "--units", "--output", "json"]);
    let units: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = units.as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    let listed: Vec<&str> = jobs[0]["units"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(listed, ids);
    assert_eq!(jobs[0]["units_path"], format!("{dir}/units-0.txt"));

    // The script only maps the array index to a unit and execs `kitt work`: no suite text.
    let script = jobs[0]["script"].as_str().unwrap();
    assert!(
        script.contains("$((SLURM_ARRAY_TASK_ID + 1))p\" /lustre/team/kitt-runs/RUN/slurm/units-0.txt"),
        "{script}"
    );
    assert!(
        script.contains(
            "exec /lustre/team/kitt-runs/bin/kitt-BUILD work --run-dir /lustre/team/kitt-runs/RUN --unit \"$unit\""
        ),
        "{script}"
    );
    for suite_text in ["latency", "ttft_ms", "tiny", "qos"] {
        assert!(!script.contains(suite_text), "the job script holds suite text `{suite_text}`:\n{script}");
    }
}

#[test]
fn optional_keys_are_left_out_and_humane_times_become_slurm_times() {
    let t = tempfile::tempdir().unwrap();
    for (time, want) in
        [("90m", "01:30:00"), ("\"1-12\"", "1-12:00:00"), ("45", "00:45:00"), ("\"1h 30m\"", "01:30:00")]
    {
        let suite =
            suite_with(t.path(), &format!("{{partition: debug, time: {time}, shared_dir: '/scratch/my runs'}}"));
        let v = sbatch_json(&suite);
        let a = argv(&v["jobs"][0]);
        assert_eq!(a[2], "--array=0-1", "no max_jobs, no throttle");
        let tail: Vec<&str> = a[12..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--open-mode=append",
                "--chdir",
                "/scratch/my runs/RUN",
                "--exclusive",
                "--partition",
                "debug",
                "--time",
                want,
                "/scratch/my runs/RUN/slurm/job-0.sh"
            ],
            "time {time}"
        );
    }
    // A shared directory with a space is one argv element, and quoted in the script and the line.
    let out = kitt(&["plan", t.path().join("suite.yaml").to_str().unwrap(), "--output", "sbatch"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("--output '/scratch/my runs/RUN/slurm/%A_%a.log'"), "{text}");
    assert!(text.contains("exec '/scratch/my runs/bin/kitt-BUILD' work --run-dir '/scratch/my runs/RUN'"), "{text}");
}

#[test]
fn accepted_values_validate() {
    let t = tempfile::tempdir().unwrap();
    let suite = suite_with(
        t.path(),
        "{partition: gpu.a-1_b, gres: 'gpu:nvidia_h100:4', time: '1-00:00:00', shared_dir: /s, \
         extra: ['--exclusive', '--mem=0', '--gres-flags=enforce-binding', '--mail-user=a@b.c']}",
    );
    let v = sbatch_json(&suite);
    let a = argv(&v["jobs"][0]);
    assert!(a.windows(2).any(|w| w == ["--gres", "gpu:nvidia_h100:4"]), "{a:?}");
    assert!(a.windows(2).any(|w| w == ["--time", "1-00:00:00"]), "{a:?}");
    for e in ["--exclusive", "--mem=0", "--gres-flags=enforce-binding", "--mail-user=a@b.c"] {
        assert!(a.iter().any(|x| x == e), "{e} missing from {a:?}");
    }
}

#[test]
fn a_suite_without_execution_slurm_is_refused_naming_the_key() {
    let out = kitt(&["plan", "examples/quickstart.yaml", "--output", "sbatch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("examples/quickstart.yaml: the suite has no `execution.slurm`"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn units_and_sbatch_do_not_combine() {
    let out = kitt(&["plan", "examples/slurm.yaml", "--units", "--output", "sbatch"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_engine_with_a_shape_of_its_own_is_an_array_job_of_its_own() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("suite.yaml");
    std::fs::write(
        &p,
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: s}\nspec:\n  models: [{name: m}]\n  \
         engines:\n    - {name: small, template: sim}\n    - {name: big, template: sim, params: {ttft_ms: 50}, slurm: {gres: 'gpu:4', time: 6h, constraint: h200}}\n    - {name: small2, template: sim, params: {ttft_ms: 70}}\n  \
         benchmarks: [{name: l, template: latency}]\n  execution:\n    slurm: {partition: gpu, gres: 'gpu:1', time: 2h, constraint: h100, shared_dir: /s}\n",
    )
    .unwrap();
    let v = sbatch_json(&p);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "one array job per shape");
    let (base, big) = (argv(&jobs[0]), argv(&jobs[1]));
    assert!(base.windows(2).any(|w| w == ["--gres", "gpu:1"]) && base.windows(2).any(|w| w == ["--time", "02:00:00"]));
    assert!(big.windows(2).any(|w| w == ["--gres", "gpu:4"]), "{big:?}");
    assert!(big.windows(2).any(|w| w == ["--time", "06:00:00"]), "{big:?}");
    assert!(big.windows(2).any(|w| w == ["--constraint", "h200"]), "{big:?}");
    assert_eq!(jobs[0]["units"].as_array().unwrap().len(), 2);
    assert_eq!(jobs[1]["units"].as_array().unwrap().len(), 1);
    assert_eq!(jobs[1]["units_path"], "/s/RUN/slurm/units-1.txt");
    assert!(big.last().unwrap().ends_with("/s/RUN/slurm/job-1.sh"));
    // The shape is placement: the engine's steps keep the keys they have without it.
    let keys = |suite: &Path| -> Vec<String> {
        let out = kitt(&["plan", suite.to_str().unwrap(), "--output", "json"]);
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["steps"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap().to_string()).collect()
    };
    let with = keys(&p);
    let text = std::fs::read_to_string(&p).unwrap().replace(", slurm: {gres: 'gpu:4', time: 6h, constraint: h200}", "");
    std::fs::write(&p, text).unwrap();
    assert_eq!(keys(&p), with);
}

#[test]
fn units_without_shards_share_a_job_whatever_their_engine_and_only_an_endpoints_shards_may_spread() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("suite.yaml");
    let write = |clients: &str| {
        std::fs::write(
            &p,
            format!(
                "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: s}}\nspec:\n  models: [{{name: m, served_name: m}}]\n  \
                 engines:\n    - {{name: local, template: sim}}\n    - {{name: remote, template: vllm, endpoint: {{url: 'http://10.0.0.5:8000'}}}}\n  \
                 benchmarks: [{{name: t, template: throughput, params: {{concurrency: 2, requests: 8}}{clients}}}]\n  \
                 execution:\n    slurm: {{partition: gpu, time: 1h, shared_dir: /s}}\n"
            ),
        )
        .unwrap();
    };
    // One client per cell: the started engine and the endpoint are one shape, one array job.
    write("");
    let v = sbatch_json(&p);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{v:#}");
    assert_eq!(jobs[0]["units"].as_array().unwrap().len(), 2, "{v:#}");
    assert!(!argv(&jobs[0]).iter().any(|a| a.starts_with("--ntasks") || a.starts_with("--nodes")), "{v:#}");
    // Two client shards per cell: a task per shard; on the started engine's node, anywhere for
    // the endpoint.
    write(", clients: 2");
    let v = sbatch_json(&p);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{v:#}");
    let (local, remote) = (argv(&jobs[0]), argv(&jobs[1]));
    assert!(local.contains(&"--ntasks=2".to_string()) && local.contains(&"--nodes=1".to_string()), "{local:?}");
    assert!(remote.contains(&"--ntasks=2".to_string()) && !remote.contains(&"--nodes=1".to_string()), "{remote:?}");
}
