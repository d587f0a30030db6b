//! Suite-local templates: they add to the built-ins or replace them by name, inherit with
//! `base:`, and the plan says which file each came from.

use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `kitt apply suite.yaml` in `dir`, with its own runs directory and host lock.
fn apply(dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(dir.join("suite.yaml"))
        .env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_STORE", "off")
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .output()
        .unwrap()
}

fn setup(dir: &Path) {
    write(
        dir,
        "templates/slow-sim.yaml",
        "apiVersion: kitt/v1\nkind: Engine\nmetadata: {name: slow-sim}\nspec:\n  base: sim\n  params:\n    ttft_ms: {type: number, default: 7, minimum: 0}\n",
    );
    write(
        dir,
        "templates/throughput.yaml",
        r#"apiVersion: kitt/v1
kind: Benchmark
metadata: {name: throughput, description: our own throughput}
spec:
  mechanism: load
  params:
    users: {type: integer, default: 2, minimum: 1}
    max_tokens: {type: integer, default: 5}
  load:
    profile: {concurrency: "{{params.users}}"}
    requests: 6
    prompt: {synthetic: {input_tokens: 8}}
"#,
    );
    write(
        dir,
        "suite.yaml",
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: local}
spec:
  models: [{name: localmodel}]
  engines: [{name: e, template: slow-sim}]
  benchmarks: [{name: t, template: throughput, params: {users: [1, 3]}}]
  templates: [./templates/]
  warmup: {requests: 0}
"#,
    );
}

#[test]
fn local_templates_extend_and_override_and_the_plan_names_their_files() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let plan = kitt::plan::compile::compile_file(&d.path().join("suite.yaml")).unwrap();
    let text = kitt::plan::render::text(&plan, &Default::default());
    assert!(text.contains("slow-sim") && text.contains("templates/slow-sim.yaml"), "{text}");
    assert!(text.contains("templates/throughput.yaml (overrides built-in)"), "{text}");
    // base: sim brought the native command; the override of ttft_ms's default reached argv.
    let argv = match &plan.groups[0].mode {
        kitt::plan::Mode::Native { argv, .. } => argv.clone(),
        other => panic!("{other:?}"),
    };
    let i = argv.iter().position(|a| a == "--ttft-ms").unwrap();
    assert_eq!(argv[i + 1], "7");
    assert_eq!(plan.cells.len(), 2);
    assert_eq!(plan.cells[1].load.as_ref().unwrap().profile, kitt::manifest::load::Profile::Concurrency(3));
}

#[test]
fn a_suite_with_local_templates_runs() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = apply(d.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("t users=1 #0") && stdout.contains("t users=3 #0"), "{stdout}");
}

#[test]
fn a_broken_local_template_is_reported_in_its_own_file() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    write(
        d.path(),
        "templates/slow-sim.yaml",
        "apiVersion: kitt/v1\nkind: Engine\nmetadata: {name: slow-sim}\nspec:\n  base: sim\n  helth: {path: /x}\n",
    );
    let errors = kitt::plan::compile::compile_file(&d.path().join("suite.yaml")).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].file.as_ref().unwrap().ends_with("templates/slow-sim.yaml"));
    assert_eq!((errors[0].pos.line, errors[0].pos.col), (6, 3));
    assert!(errors[0].message.contains("unknown key `helth`"), "{}", errors[0].message);
    assert_eq!(errors[0].help.as_deref(), Some("did you mean `health`?"));
}

#[test]
fn a_reporter_of_your_own_is_a_manifest_and_a_template_file() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    write(
        d.path(),
        "templates/brief.yaml",
        "apiVersion: kitt/v1\nkind: Reporter\nmetadata: {name: brief}\nspec: {format: template, template: brief.txt.hbs, output: brief.txt}\n",
    );
    write(
        d.path(),
        "templates/brief.txt.hbs",
        "{{#each cells}}{{cell.benchmark}} {{params cell.swept}}: {{fixed metrics.request_throughput 0}} req/s\n{{/each}}",
    );
    let suite = std::fs::read_to_string(d.path().join("suite.yaml"))
        .unwrap()
        .replace("  warmup:", "  reporters: [brief]\n  warmup:");
    write(d.path(), "suite.yaml", &suite);
    let out = apply(d.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(d.path().join("runs")).unwrap().next().unwrap().unwrap().path();
    let brief = std::fs::read_to_string(run.join("report/brief.txt")).unwrap();
    let lines: Vec<&str> = brief.lines().collect();
    assert_eq!(lines.len(), 2, "{brief}");
    assert!(lines[0].starts_with("t users=1: ") && lines[0].ends_with(" req/s"), "{brief}");
    // A template that does not parse is an error before anything runs.
    write(d.path(), "templates/brief.txt.hbs", "{{#each cells}}unclosed");
    let errors = kitt::plan::compile::compile_file(&d.path().join("suite.yaml")).unwrap_err();
    assert!(errors[0].message.contains("does not parse"), "{errors:?}");
}
