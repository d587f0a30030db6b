//! The corpus of broken manifests: each file states, in `# expect: LINE:COL MESSAGE` header
//! lines, every error kitt must report for it (all of them, in order), and `# schema: reject`
//! when the generated JSON Schema must reject it too. No file may panic or hang.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use kitt::manifest::diag::Diagnostic;

struct Expect {
    line: usize,
    col: usize,
    message: String,
}

fn expectations(source: &str) -> (Vec<Expect>, bool) {
    let mut out = Vec::new();
    let mut schema_reject = false;
    for line in source.lines().take_while(|l| l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("# expect: ") {
            let (pos, message) = rest.split_once(' ').expect("`# expect: L:C message`");
            let (l, c) = pos.split_once(':').expect("L:C");
            out.push(Expect { line: l.parse().unwrap(), col: c.parse().unwrap(), message: message.to_string() });
        }
        if line.trim() == "# schema: reject" {
            schema_reject = true;
        }
    }
    (out, schema_reject)
}

/// Validates in a thread with a generous timeout, so a hang fails the test instead of CI.
fn validate(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(kitt::cli::validate_file(&p));
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{} hung or panicked", path.display()))
}

fn check(path: &Path, failures: &mut Vec<String>) {
    let source = std::fs::read_to_string(path).unwrap_or_default();
    let (expected, _) = expectations(&source);
    assert!(!expected.is_empty(), "{} has no `# expect:` header", path.display());
    let diags = match validate(path) {
        Ok(summary) => {
            failures.push(format!("{}: accepted ({summary})", path.display()));
            return;
        }
        Err(d) => d,
    };
    let got: Vec<String> = diags.iter().map(|d| format!("{}:{} {}", d.pos.line, d.pos.col, d.message)).collect();
    let ok = diags.len() == expected.len()
        && diags.iter().zip(&expected).all(|(d, e)| {
            d.pos.line == e.line
                && d.pos.col == e.col
                && d.message.starts_with(&e.message)
                && d.file.as_deref() == Some(path)
        });
    if !ok {
        let want: Vec<String> = expected.iter().map(|e| format!("{}:{} {}", e.line, e.col, e.message)).collect();
        failures.push(format!("{}:\n  expected {want:#?}\n  got      {got:#?}", path.display()));
    }
    for d in &diags {
        assert!(d.help.is_some() || !d.message.is_empty(), "empty diagnostic");
    }
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_broken_manifest_reports_exactly_its_errors() {
    let files = corpus();
    assert!(files.len() >= 30, "the corpus needs at least 30 files, has {}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        check(f, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} broken manifests misreported:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn a_ten_megabyte_manifest_is_refused_at_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let mut text = String::from(
        "# expect: 1:1 manifest is 10485760 bytes, over the limit of 8388608 bytes (8 MiB)\napiVersion: kitt/v1\nkind: Suite\nmetadata: {name: s}\nspec:\n  x: \"",
    );
    text.push_str(&"a".repeat(10 * 1024 * 1024 - text.len() - 2));
    text.push_str("\"\n");
    assert_eq!(text.len(), 10 * 1024 * 1024);
    std::fs::write(&path, &text).unwrap();
    let mut failures = Vec::new();
    check(&path, &mut failures);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn errors_render_with_the_line_and_a_caret() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken/unknown_param_typo.yaml");
    let diags = validate(&path).unwrap_err();
    let source = std::fs::read_to_string(&path).unwrap();
    let text = diags[0].render(Some(&source));
    assert!(text.contains("error: unknown param `concurency` for benchmark template `throughput`"), "{text}");
    assert!(text.contains("12 |       params: {concurency: 4}\n   |                ^^^^^^^^^^"), "{text}");
    assert!(text.contains("help: did you mean `concurrency`?"), "{text}");
}
