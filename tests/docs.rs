//! Commands shown in README.md and docs/ are real: each parses as the CLI defines it, and the
//! ones that only read (validate, plan, schema, engines, run --print-suite) run and succeed.

use std::path::Path;

use clap::Parser;

fn commands() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_sh = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_sh = line.trim() == "```sh";
                continue;
            }
            if !in_sh {
                continue;
            }
            let cmd = line.split(" # ").next().unwrap_or("").trim();
            let cmd = cmd.strip_prefix("$ ").unwrap_or(cmd);
            let args = cmd
                .strip_prefix("cargo run --release -- ")
                .map(|a| format!("kitt {a}"))
                .unwrap_or_else(|| cmd.to_string());
            if args.starts_with("kitt ") {
                out.push((f.file_name().unwrap().to_string_lossy().to_string(), args));
            }
        }
    }
    out
}

/// A line showing alternatives or placeholders (`SUITE`, `a | b`, `a / b`) documents a shape,
/// not one command.
fn is_template(cmd: &str) -> bool {
    cmd.split_whitespace()
        .any(|w| w == "|" || w == "/" || (w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')))
}

#[test]
fn every_documented_command_parses() {
    let cmds = commands();
    assert!(cmds.len() >= 10, "found only {cmds:?}");
    for (file, cmd) in &cmds {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if is_template(cmd) {
            // At least the subcommand must exist.
            let r = kitt::cli::Cli::try_parse_from([words[0], words[1], "--help"]);
            let e = r.expect_err("--help exits through an error value");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp,
                "{file}: `{cmd}`: unknown subcommand `{}`",
                words[1]
            );
            continue;
        }
        let expanded: Vec<String> = words
            .iter()
            .flat_map(|w| {
                if w.contains('*') {
                    let mut m: Vec<String> = glob(w);
                    m.sort();
                    m
                } else {
                    vec![w.to_string()]
                }
            })
            .collect();
        if let Err(e) = kitt::cli::Cli::try_parse_from(&expanded) {
            panic!("{file}: `{cmd}` does not parse:\n{e}");
        }
    }
}

fn glob(pattern: &str) -> Vec<String> {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or((".", pattern));
    let (prefix, suffix) = file.split_once('*').unwrap();
    std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect()
}

#[test]
fn documented_read_only_commands_succeed() {
    let mut ran = 0;
    for (file, cmd) in commands() {
        if is_template(&cmd) {
            continue;
        }
        let words: Vec<String> = cmd
            .split_whitespace()
            .skip(1)
            .flat_map(|w| if w.contains('*') { glob(w) } else { vec![w.to_string()] })
            .collect();
        // `engines check` depends on what this machine has installed, so it is only parsed.
        let read_only = matches!(words[0].as_str(), "validate" | "plan")
            || (words[0] == "engines" && words.get(1).is_some_and(|w| w == "list"))
            || (words[0] == "schema" && !words.iter().any(|w| w == "--out"))
            || (words[0] == "run" && words.iter().any(|w| w == "--print-suite"));
        if !read_only {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kitt"))
            .args(&words)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KITT_RUNS_DIR", std::env::temp_dir().join("kitt-docs-test-runs-none"))
            .env("KITT_STORE", "off")
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: `{cmd}` failed:\n{}", String::from_utf8_lossy(&out.stderr));
        ran += 1;
    }
    assert!(ran >= 4, "ran only {ran} documented commands");
}

#[test]
fn the_readme_starts_with_the_two_setup_commands() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block: Vec<&str> = readme
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(block[0].starts_with("cargo run --release -- apply examples/quickstart.yaml"), "{block:?}");
    assert!(block[1].starts_with("cargo nextest run"), "{block:?}");
    // The quickstart itself runs in tests/apply.rs; the CI script runs the same test command.
    let ci = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim_start().starts_with("cargo nextest run")),
        ".ci/run must call the README's test command"
    );
}
