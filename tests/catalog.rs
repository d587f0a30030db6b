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

/// A value for `param` that no other param shares, and the text it shows as in a rendered
/// command or body; `None` for a boolean, which has no distinct value.
fn sentinel(i: usize, decl: &kitt::manifest::template_kind::ParamDecl) -> Option<(serde_json::Value, String)> {
    use kitt::manifest::template_kind::ParamType;
    if let Some(choices) = &decl.choices {
        let pick = choices.iter().rev().find(|c| Some(*c) != decl.default.as_ref())?.clone();
        let text = kitt::template::scalar_text(&pick);
        return Some((pick, text));
    }
    let lo = decl.minimum.unwrap_or(0.0);
    let hi = decl.maximum.unwrap_or(1e9);
    match decl.ty {
        ParamType::Integer => {
            let v = 7001 + i as i64;
            assert!((v as f64) >= lo && (v as f64) <= hi, "sentinel out of range");
            Some((v.into(), v.to_string()))
        }
        ParamType::Number => {
            // Distinct in its third and fourth decimals, inside [lo, hi].
            let v = (lo + (hi - lo).min(1.0) * 0.5 + (i as f64 + 1.0) * 0.0003).min(hi);
            Some((v.into(), serde_json::json!(v).to_string()))
        }
        ParamType::String => Some((format!("sentinel-{i}").into(), format!("sentinel-{i}"))),
        ParamType::List => Some((serde_json::json!([format!("sentinel-{i}")]), format!("sentinel-{i}"))),
        ParamType::Boolean => None,
    }
}

/// Every built-in engine × every mode it offers: each param set to its own sentinel value shows
/// up in what that mode runs or sends (argv, env, setup and request bodies), or the template
/// lists it as unused there with a reason; and setting a listed one is refused.
#[test]
fn every_engine_param_reaches_every_mode_that_offers_it() {
    use kitt::catalog::reach::{self, EngineMode};
    let dir = tempfile::tempdir().unwrap();
    let catalog = kitt::catalog::Catalog::builtin();
    assert!(catalog.engines.len() >= 6);
    let mut checked = 0;
    for (name, entry) in &catalog.engines {
        let spec = &entry.manifest.spec;
        for mode in reach::offered(spec) {
            let mut params = serde_json::Map::new();
            let mut expect = Vec::new();
            for (i, (p, decl)) in spec.params.iter().enumerate() {
                if let Some(reason) = reach::unused_reason(spec, mode, p) {
                    assert!(!reason.trim().is_empty(), "{name}/{}: `{p}` unused without a reason", mode.name());
                    continue;
                }
                match sentinel(i, &decl.value) {
                    Some((v, text)) => {
                        params.insert(p.clone(), v);
                        expect.push((p.clone(), text));
                    }
                    None => assert!(reach::uses(spec, mode, None).contains(p), "{name}: `{p}`"),
                }
            }
            let how = match mode {
                EngineMode::Container => "container: {}",
                EngineMode::Native => "native: {}",
                EngineMode::Endpoint => "endpoint: {url: \"http://127.0.0.1:9\"}",
            };
            let suite_with = |params: &serde_json::Map<String, serde_json::Value>| {
                format!(
                    "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: s}}\nspec:\n  models: [{{name: m, path: models/m.gguf, tokenizer: tokenizer.json}}]\n  engines: [{{name: e, template: {name}, {how}, params: {}}}]\n  benchmarks: [{{name: b, template: latency, params: {{requests: 1}}}}]\n",
                    serde_json::Value::Object(params.clone())
                )
            };
            let suite = suite_with(&params);
            let plan = kitt::plan::compile::compile_source(&suite, &dir.path().join("suite.yaml"))
                .unwrap_or_else(|e| panic!("{name}/{}: {e:#?}\n{suite}", mode.name()));
            let g = &plan.groups[0];
            let seen = serde_json::json!({
                "mode": g.mode, "setup": g.setup, "warmup": g.warmup, "tokenize": g.tokenize,
                "requests": plan.cells.iter().map(|c| &c.request).collect::<Vec<_>>(),
            })
            .to_string();
            for (p, text) in &expect {
                assert!(
                    seen.contains(text.as_str()),
                    "{name}/{}: `{p}` = {text} reaches nothing:\n{seen}",
                    mode.name()
                );
            }
            // A param the mode leaves out is refused when set.
            if let Some(p) = spec.params.keys().find(|p| reach::unused_reason(spec, mode, p).is_some()) {
                let decl = &spec.params[p].value;
                let v = sentinel(0, decl).map(|(v, _)| v).unwrap_or(serde_json::json!(true));
                params.insert(p.clone(), v);
                let bad = suite_with(&params);
                let e = kitt::plan::compile::compile_source(&bad, &dir.path().join("suite.yaml"))
                    .expect_err(&format!("{name}/{}: setting unused `{p}` was accepted", mode.name()));
                assert!(
                    e.iter().any(|d| d.message.contains(&format!("param `{p}`")) && d.message.contains("not used")),
                    "{e:#?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked}");
}

/// Every built-in engine × API: a sampling key with a slot in the body arrives with its value;
/// one without a slot is refused, naming the API and the keys it carries.
#[test]
fn every_sampling_key_reaches_each_api_or_is_refused() {
    use kitt::manifest::suite::SAMPLING_KEYS;
    use kitt::manifest::template_kind::ParamType;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "chat.yaml",
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {name: chat1}\nspec:\n  mechanism: load\n  load: {api: chat, profile: synchronous, requests: 1, prompt: {synthetic: {input_tokens: 8}}}\n",
    );
    write(
        dir.path(),
        "completion.yaml",
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {name: completion1}\nspec:\n  mechanism: load\n  load: {api: completion, profile: synchronous, requests: 1, prompt: {synthetic: {input_tokens: 8}}}\n",
    );
    let value = |i: usize, ty: ParamType| -> (String, String) {
        match ty {
            ParamType::Integer => (format!("{}", 9001 + i), format!("{}", 9001 + i)),
            ParamType::Number => (format!("0.{}7", 31 + i), format!("0.{}7", 31 + i)),
            ParamType::List => (format!("[\"stop-{i}\"]"), format!("stop-{i}")),
            _ => unreachable!(),
        }
    };
    let mut checked = 0;
    for (name, entry) in &kitt::catalog::Catalog::builtin().engines {
        let api = &entry.manifest.spec.api;
        for (bench, call) in [("completion1", &api.completion), ("chat1", &api.chat)] {
            let Some(call) = call else { continue };
            let slots = kitt::catalog::reach::sampling_slots(call);
            for (i, (key, ty)) in SAMPLING_KEYS.iter().enumerate() {
                let (v, text) = value(i, *ty);
                let suite = format!(
                    "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: s}}\nspec:\n  templates: [chat.yaml, completion.yaml]\n  models: [{{name: m, path: m.gguf, tokenizer: tokenizer.json}}]\n  engines: [{{name: e, template: {name}, endpoint: {{url: \"http://127.0.0.1:9\"}}}}]\n  benchmarks: [{{name: b, template: {bench}}}]\n  warmup: {{requests: 0}}\n  sampling: {{{key}: {v}}}\n"
                );
                let path = dir.path().join("suite.yaml");
                std::fs::write(&path, &suite).unwrap();
                let got = kitt::plan::compile::compile_file(&path);
                if slots.contains(key) {
                    let plan = got.unwrap_or_else(|e| panic!("{name}/{bench}/{key}: {e:#?}"));
                    let body = plan.cells[0].request.as_ref().unwrap().body.to_string();
                    assert!(body.contains(&text), "{name}/{bench}: `{key}` = {v} is not in the body {body}");
                } else {
                    let e = got.expect_err(&format!("{name}/{bench}: `{key}` has no slot but was accepted"));
                    let d = e.iter().find(|d| d.message.starts_with(&format!("sampling `{key}` has no slot"))).unwrap();
                    assert!(d.message.contains(&call.path), "{}", d.message);
                    // The suggested way out works: unset it for this engine.
                    let fixed = suite.replace("endpoint: {url", &format!("sampling: {{{key}: null}}, endpoint: {{url"));
                    std::fs::write(&path, &fixed).unwrap();
                    kitt::plan::compile::compile_file(&path).unwrap_or_else(|e| panic!("{name}/{bench}/{key}: {e:#?}"));
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "{checked}");
}
