//! The eval mechanism end to end, on the real datasets: the built-in templates load MMLU, GSM8K
//! and TruthfulQA from ../shared/datasets (or `$KITT_TEST_DATA`) — directly and through a local
//! HTTP server speaking plain files and the Hugging Face rows API — and HellaSwag from a fixture
//! written for kitt in its JSONL format (tests/fixtures/hellaswag/val.jsonl). Scores are checked
//! against answers computed here from the data, with fake `generate` callbacks.

mod common;
use common::test_data;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use kitt::cancel::Cancel;
use kitt::eval::{
    self, EvalError, EvalOutcome, EvalResult, EvalSpec, PrepareOptions, Prepared, Progress, Prompt, Request,
    RunOptions, TokenCounter, Verdict,
};
use kitt::manifest::template_kind::BenchmarkSpec;
use serde_json::{Value as Json, json};

// ---------------------------------------------------------------- data and templates

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A built-in eval template compiled for one cell, with `params` over its defaults.
fn template(name: &str, params: Json) -> EvalSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("suites/benchmarks/{name}.yaml"));
    let m = kitt::manifest::read_raw(&path).unwrap().decode::<BenchmarkSpec>().unwrap();
    let mut p = serde_json::Map::new();
    for (k, decl) in &m.spec.params {
        if let Some(d) = &decl.value.default {
            p.insert(k.clone(), d.clone());
        }
    }
    for (k, v) in params.as_object().unwrap() {
        assert!(p.contains_key(k), "{name} has no param `{k}`");
        assert!(m.spec.params[k].value.check(v).is_ok(), "{name}.{k}: {v}");
        p.insert(k.clone(), v.clone());
    }
    let ctx = json!({
        "params": p, "sampling": {}, "run": {"index": 0},
        "model": {"name": "m", "served_name": "m"}, "engine": {"name": "e", "template": "sim"},
    });
    eval::compile(m.spec.eval.as_ref().expect("an eval section"), &ctx).unwrap_or_else(|e| panic!("{name}: {e:#?}"))
}

fn opts(cache: &Path) -> PrepareOptions {
    PrepareOptions {
        base_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        cache_dir: cache.to_path_buf(),
        offline: false,
        hf_endpoint: "http://127.0.0.1:9".into(),
        hf_token: None,
        context_window: Some(1_000_000),
        counter: TokenCounter::Estimate,
        cancel: Cancel::default(),
    }
}

fn csv_records(path: &Path) -> Vec<csv::StringRecord> {
    csv::ReaderBuilder::new().has_headers(false).from_path(path).unwrap().records().map(|r| r.unwrap()).collect()
}

fn letter_of(prepared: &Prepared, i: usize) -> usize {
    (prepared.items[i].target.as_bytes()[0] - b'A') as usize
}

/// Runs `prepared` to the end with `answer` as the model, in a fresh checkpoint.
async fn score(prepared: &Prepared, answer: impl Fn(&Request) -> String) -> EvalResult {
    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions::new(dir.path().join("ckpt.json"), 8, Cancel::default());
    let generate = |req: Request| {
        let text = answer(&req);
        async move { Ok::<_, String>(text) }
    };
    match eval::run(prepared, generate, &run, |_: &Progress| {}).await.unwrap() {
        EvalOutcome::Finished { result, .. } => *result,
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- a local server

/// Plain files under `/f/NAME` and the datasets-server rows API under `/rows`.
#[derive(Default)]
struct Site {
    files: HashMap<String, Vec<u8>>,
    hf: HashMap<(String, String, String), Vec<Json>>,
    hits: AtomicUsize,
}

struct Server {
    url: String,
    site: Arc<Site>,
}

impl Server {
    fn hits(&self) -> usize {
        self.site.hits.load(Ordering::SeqCst)
    }
}

async fn serve(site: Site) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let site = Arc::new(site);
    let shared = site.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let site = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let site = site.clone();
                    async move { Ok::<_, Infallible>(answer(&site, req.uri())) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    Server { url, site }
}

fn answer(site: &Site, uri: &hyper::Uri) -> hyper::Response<Full<Bytes>> {
    site.hits.fetch_add(1, Ordering::SeqCst);
    let reply = |status: u16, body: Vec<u8>| {
        hyper::Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap()
    };
    if let Some(name) = uri.path().strip_prefix("/f/") {
        return match site.files.get(name) {
            Some(b) => reply(200, b.clone()),
            None => reply(404, b"not found".to_vec()),
        };
    }
    if uri.path() != "/rows" {
        return reply(404, b"not found".to_vec());
    }
    let url = reqwest::Url::parse(&format!("http://x{uri}")).unwrap();
    let q: HashMap<String, String> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let key = (q["dataset"].clone(), q["config"].clone(), q["split"].clone());
    let Some(rows) = site.hf.get(&key) else {
        return reply(404, br#"{"error":"The dataset does not exist."}"#.to_vec());
    };
    let (offset, length): (usize, usize) = (q["offset"].parse().unwrap(), q["length"].parse().unwrap());
    assert!(length <= 100, "the rows API serves at most 100 rows a page");
    let page: Vec<Json> = rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(length)
        .map(|(i, r)| json!({"row_idx": i, "row": r, "truncated_cells": []}))
        .collect();
    let body =
        json!({"features": [], "rows": page, "num_rows_total": rows.len(), "num_rows_per_page": 100, "partial": false});
    reply(200, body.to_string().into_bytes())
}

fn jsonl(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

// ---------------------------------------------------------------- the built-in templates

#[test]
fn every_eval_template_compiles_with_its_defaults() {
    for name in ["mmlu", "gsm8k", "truthfulqa", "hellaswag"] {
        let spec = template(name, json!({}));
        assert_eq!(spec.generation.temperature, Some(0.0), "{name}");
        assert!(spec.dataset.sha256.is_none(), "{name}");
    }
    let mmlu = template("mmlu", json!({}));
    assert_eq!(mmlu.groups.len(), 57);
    assert_eq!(mmlu.fewshot.as_ref().unwrap().k, 5);
    let gsm = template("gsm8k", json!({}));
    assert_eq!(gsm.fewshot.as_ref().unwrap().items.len(), 8, "the 8 CoT exemplars");
}

/// The JSON Schema of `eval:` (for the Benchmark schema) accepts what the built-ins compile to,
/// and rejects a misspelt key.
#[test]
fn the_eval_schema_accepts_every_built_in_eval() {
    let schema = serde_json::to_value(schemars::schema_for!(EvalSpec)).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for name in ["mmlu", "gsm8k", "truthfulqa", "hellaswag"] {
        let mut v = serde_json::to_value(template(name, json!({}))).unwrap();
        v.as_object_mut().unwrap().remove("params");
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        v["fewshot"]["kk"] = json!(1);
        assert!(!validator.is_valid(&v), "{name}");
    }
}

#[tokio::test]
async fn mmlu_from_the_csv_files_every_subject_five_shot() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let spec = template("mmlu", json!({"source": source}));
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    assert_eq!(p.items.len(), 14079, "the README's count of test rows");
    assert_eq!(p.dataset.sources.len(), 57);
    assert!(p.items.iter().all(|i| i.choices.len() == 4 && i.shots == 5));
    let first = &p.items[0];
    assert_eq!(first.group.as_deref(), Some("abstract_algebra"));
    let Prompt::Text(text) = &first.prompt else { panic!() };
    assert!(text.starts_with("The following are multiple choice questions (with answers) about abstract algebra.\n\nFind all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"), "{text}");
    assert!(text.ends_with("\nAnswer:"), "{text}");

    // The constant answer "A" scores exactly the share of rows whose answer column is A.
    let (mut n, mut a) = (0usize, 0usize);
    let mut per_subject: HashMap<String, (usize, usize)> = HashMap::new();
    for subject in &spec.groups {
        for r in csv_records(&data.join(format!("mmlu/data/test/{subject}_test.csv"))) {
            n += 1;
            a += usize::from(&r[5] == "A");
            let e = per_subject.entry(subject.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(&r[5] == "A");
        }
    }
    assert_eq!(n, 14079);
    let result = score(&p, |_| " A".into()).await;
    assert_eq!(result.counts.correct, a);
    assert_eq!(result.accuracy, a as f64 / n as f64);
    assert_eq!(result.groups.len(), 57);
    let (sn, sa) = per_subject["virology"];
    assert_eq!(result.groups["virology"].accuracy, sa as f64 / sn as f64);
    let macro_avg = per_subject.values().map(|(n, a)| *a as f64 / *n as f64).sum::<f64>() / 57.0;
    assert!((result.macro_accuracy.unwrap() - macro_avg).abs() < 1e-12);
    assert_eq!(result.unparseable_share, 0.0);
}

#[tokio::test]
async fn mmlu_subjects_k_and_sample_size_reach_the_prompts() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let spec = template(
        "mmlu",
        json!({"source": source, "subjects": ["anatomy", "virology"], "k": 2, "sample_size": 50, "seed": 7}),
    );
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    assert_eq!(p.items.len(), 50);
    assert_eq!(p.dataset.filtered, 135 + 166);
    assert!(p.items.iter().all(|i| i.shots == 2));
    assert!(p.items.iter().all(|i| matches!(i.group.as_deref(), Some("anatomy" | "virology"))));
    let Prompt::Text(t) = &p.items[0].prompt else { panic!() };
    assert_eq!(t.matches("\nAnswer:").count(), 3, "two shots and the question: {t}");
    // Another seed, another subset; the same seed, the same one.
    let other = eval::prepare(&template("mmlu", json!({"source": source.clone(), "subjects": ["anatomy", "virology"], "k": 2, "sample_size": 50, "seed": 8})), &opts(cache.path())).await.unwrap();
    assert_ne!(other.fingerprint, p.fingerprint);
    assert_eq!(eval::prepare(&spec, &opts(cache.path())).await.unwrap().fingerprint, p.fingerprint);
}

#[tokio::test]
async fn truthfulqa_mc1_options_are_shuffled_and_the_constant_a_scores_the_share_of_a() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let csv_path = data.join("truthfulqa/TruthfulQA.csv");
    let spec = template("truthfulqa", json!({"source": csv_path.to_string_lossy()}));
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    let rows: Vec<csv::StringRecord> =
        csv::Reader::from_path(&csv_path).unwrap().records().map(|r| r.unwrap()).collect();
    assert_eq!(p.items.len(), 817);
    assert_eq!(rows.len(), 817);
    let mut expect_a = 0;
    let mut positions = [0usize; 4];
    for (i, row) in rows.iter().enumerate() {
        let (best, incorrect) = (&row[3], &row[5]);
        let item = &p.items[i];
        let mut want: Vec<String> = std::iter::once(best.trim().to_string())
            .chain(incorrect.split("; ").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
            .collect();
        let mut got = item.choices.clone();
        assert_eq!(item.choices[letter_of(&p, i)], best.trim(), "row {i}: the target is the best answer");
        want.sort();
        got.sort();
        assert_eq!(got, want, "row {i}: the options are the best and the incorrect answers");
        expect_a += usize::from(item.choices[0] == best.trim());
        positions[letter_of(&p, i).min(3)] += 1;
    }
    // Shuffled: the correct option is not always first, and lands in every position.
    assert!(positions.iter().all(|n| *n > 50), "{positions:?}");
    let result = score(&p, |_| "A".into()).await;
    assert_eq!(result.counts.correct, expect_a);
    assert_eq!(result.accuracy, expect_a as f64 / 817.0);
    assert!(result.groups.contains_key("Misconceptions"));
    // The shuffle is seeded: another seed moves the options.
    let other = eval::prepare(
        &template("truthfulqa", json!({"source": csv_path.to_string_lossy(), "seed": 99})),
        &opts(cache.path()),
    )
    .await
    .unwrap();
    assert_ne!(other.items[0].choices, p.items[0].choices);
}

#[tokio::test]
async fn gsm8k_targets_and_a_model_right_on_exactly_two_thirds() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let path = data.join("gsm8k/test.jsonl");
    let p = eval::prepare(&template("gsm8k", json!({"source": path.to_string_lossy()})), &opts(cache.path()))
        .await
        .unwrap();
    let rows = jsonl(&path);
    assert_eq!(p.items.len(), 1319);
    for (item, row) in p.items.iter().zip(&rows) {
        let after = row["answer"].as_str().unwrap().rsplit("#### ").next().unwrap().replace(',', "");
        assert_eq!(item.target, after.trim(), "{}", item.id);
        assert_eq!(item.shots, 8);
    }
    let Prompt::Text(t) = &p.items[0].prompt else { panic!() };
    assert!(t.starts_with("Q: There are 15 trees in the grove."), "{t}");
    assert!(t.contains("The answer is 8.\n\nQ: Janet\u{2019}s ducks lay 16 eggs per day."), "{t}");
    assert!(t.ends_with("\nA:"));
    // Right (in three phrasings) on every item whose index is not a multiple of 3; wrong on the rest.
    let result = score(&p, |req| {
        let target: f64 = p.items[req.index].target.parse().unwrap();
        match req.index % 3 {
            0 => format!("So it is {}. The answer is {}.", target, target + 1.0),
            1 => format!("Adding up, ${target} in all. The answer is ${target}."),
            _ => format!("First 2 + 2 = 4, then we get {target}"),
        }
    })
    .await;
    let right = (0..1319).filter(|i| i % 3 != 0).count();
    assert_eq!(result.counts.correct, right);
    assert_eq!(result.accuracy, right as f64 / 1319.0);
    let p_hat = right as f64 / 1319.0;
    assert!((result.stderr - (p_hat * (1.0 - p_hat) / 1318.0).sqrt()).abs() < 1e-12);
}

#[tokio::test]
async fn hellaswag_from_its_jsonl_format() {
    let cache = tempfile::tempdir().unwrap();
    let path = fixture("hellaswag/val.jsonl");
    let spec = template("hellaswag", json!({"source": path.to_string_lossy()}));
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    let rows = jsonl(&path);
    assert_eq!(p.items.len(), rows.len());
    for (item, row) in p.items.iter().zip(&rows) {
        let label: usize = match &row["label"] {
            Json::String(s) => s.parse().unwrap(),
            n => n.as_u64().unwrap() as usize,
        };
        assert_eq!(item.target, eval::letter(label));
        assert_eq!(item.choices[label], row["endings"][label].as_str().unwrap());
        assert_eq!(item.group.as_deref(), row["activity_label"].as_str());
    }
    let Prompt::Text(t) = &p.items[0].prompt else { panic!() };
    assert_eq!(
        t,
        "Choose the most likely continuation.\n\nWashing dishes: A man stands at a kitchen sink full of plates. He\n\
         A. turns on the tap and scrubs the first plate with a sponge.\nB. throws the plates out of the window one by one.\n\
         C. paints the sink bright green with a small brush.\nD. reads a newspaper that is floating in the water.\nAnswer:"
    );
    // Right on the first 9 of 12, and "I think B" (unparseable) on the rest.
    let result =
        score(
            &p,
            |req| if req.index < 9 { format!(" {}. yes", p.items[req.index].target) } else { "I think B".into() },
        )
        .await;
    assert_eq!(result.counts.correct, 9);
    assert_eq!(result.counts.unparseable, 3);
    assert_eq!(result.accuracy, 0.75);
    assert_eq!(result.unparseable_share, 0.25);
    // k shots come from the other items, never the item itself.
    let p =
        eval::prepare(&template("hellaswag", json!({"source": path.to_string_lossy(), "k": 2})), &opts(cache.path()))
            .await
            .unwrap();
    for item in &p.items {
        let Prompt::Text(t) = &item.prompt else { panic!() };
        assert_eq!(item.shots, 2);
        let ctx = rows.iter().find(|r| item.choices[0] == r["endings"][0].as_str().unwrap()).unwrap()["ctx"]
            .as_str()
            .unwrap();
        assert_eq!(t.matches(ctx).count(), 1, "{t}");
    }
}

// ---------------------------------------------------------------- HTTP, cache, checksums

#[tokio::test]
async fn http_sources_are_cached_and_offline_mode_uses_only_the_cache() {
    let Some(data) = test_data() else { return };
    let mut site = Site::default();
    site.files.insert("test.jsonl".into(), std::fs::read(data.join("gsm8k/test.jsonl")).unwrap());
    site.files.insert("TruthfulQA.csv".into(), std::fs::read(data.join("truthfulqa/TruthfulQA.csv")).unwrap());
    let server = serve(site).await;
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{}/f/test.jsonl", server.url);
    let spec = template("gsm8k", json!({"source": url, "sample_size": 20}));

    // Offline with an empty cache: an error naming what is missing and where the cache is.
    let mut offline = opts(cache.path());
    offline.offline = true;
    let e = eval::prepare(&spec, &offline).await.unwrap_err();
    assert!(matches!(e, EvalError::Offline { .. }), "{e}");
    assert!(e.to_string().contains(&url) && e.to_string().contains(&cache.path().display().to_string()), "{e}");
    assert_eq!(server.hits(), 0);

    let online = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    assert_eq!(server.hits(), 1);
    assert_eq!(online.dataset.rows, 1319);
    // Hit: no request; offline works now; the items are the same.
    let again = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    assert_eq!(server.hits(), 1);
    let off = eval::prepare(&spec, &offline).await.unwrap();
    assert_eq!(server.hits(), 1);
    assert_eq!(again.fingerprint, online.fingerprint);
    assert_eq!(off.fingerprint, online.fingerprint);

    // The same file as a local path: the same items (ids are file names, not locations).
    let local =
        template("gsm8k", json!({"source": data.join("gsm8k/test.jsonl").to_string_lossy(), "sample_size": 20}));
    let local = eval::prepare(&local, &opts(cache.path())).await.unwrap();
    assert_eq!(local.items, online.items);

    // A CSV over HTTP too.
    let tqa = template("truthfulqa", json!({"source": format!("{}/f/TruthfulQA.csv", server.url)}));
    assert_eq!(eval::prepare(&tqa, &opts(cache.path())).await.unwrap().items.len(), 817);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn checksums_are_checked_and_a_mismatch_never_downloads_again() {
    let Some(data) = test_data() else { return };
    let bytes = std::fs::read(data.join("gsm8k/test.jsonl")).unwrap();
    let good = sha256_hex(&bytes);
    let mut site = Site::default();
    site.files.insert("test.jsonl".into(), bytes);
    let server = serve(site).await;
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{}/f/test.jsonl", server.url);
    let bad = "0".repeat(64);

    // A download that does not match is an error and is not cached.
    let e = eval::prepare(&template("gsm8k", json!({"source": url, "sha256": bad})), &opts(cache.path()))
        .await
        .unwrap_err();
    assert!(matches!(e, EvalError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains(&good) && e.to_string().contains(&bad), "{e}");
    assert_eq!(server.hits(), 1);
    let spec = template("gsm8k", json!({"source": url, "sha256": good}));
    eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    assert_eq!(server.hits(), 2);

    // A cached file that changed: an error naming it, and no second download.
    let cached: Vec<PathBuf> = walk(cache.path()).into_iter().filter(|p| p.ends_with("test.jsonl")).collect();
    assert_eq!(cached.len(), 1);
    std::fs::write(&cached[0], b"{\"question\": \"q\", \"answer\": \"#### 1\"}\n").unwrap();
    let e = eval::prepare(&spec, &opts(cache.path())).await.unwrap_err();
    assert!(matches!(e, EvalError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains(&cached[0].display().to_string()), "{e}");
    assert_eq!(server.hits(), 2);

    // A local file is checked too.
    let local = template("gsm8k", json!({"source": data.join("gsm8k/test.jsonl").to_string_lossy(), "sha256": bad}));
    let e = eval::prepare(&local, &opts(cache.path())).await.unwrap_err();
    assert!(matches!(e, EvalError::Checksum { .. }), "{e}");
    let message = e.to_string();
    let named = data.join("gsm8k/test.jsonl").display().to_string();
    assert!(message.contains(&named) && message.contains(&good) && message.contains(&bad), "{message}");
}

/// The built-in GSM8K and HellaSwag sources name a commit, not a branch, and GSM8K's
/// `#sha256=` pin is the sha256 of the real file. A pinned URL whose data differs is an error that
/// names the file and both hashes, and the download is not cached.
#[tokio::test]
async fn built_in_sources_are_pinned_and_data_that_does_not_match_a_pin_is_an_error() {
    let Some(data) = test_data() else { return };
    let url_of = |name: &str| match template(name, json!({})).dataset.source {
        eval::Source::Url(u) => u,
        other => panic!("{name}: {other:?}"),
    };
    let (gsm8k, hellaswag) = (url_of("gsm8k"), url_of("hellaswag"));
    for url in [&gsm8k, &hellaswag] {
        // https://raw.githubusercontent.com/OWNER/REPO/REF/PATH
        let reference = url.split('/').nth(5).unwrap();
        assert!(reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()), "{url}: a commit");
    }
    let (_, pin) = gsm8k.split_once("#sha256=").expect("gsm8k pins its file");
    let bytes = std::fs::read(data.join("gsm8k/test.jsonl")).unwrap();
    assert_eq!(pin, sha256_hex(&bytes), "the pin is the sha256 of the real test split");

    let text = String::from_utf8(bytes.clone()).unwrap();
    let other: String = text.lines().take(50).map(|l| format!("{l}\n")).collect();
    let other_sha = sha256_hex(other.as_bytes());
    let mut site = Site::default();
    site.files.insert("test.jsonl".into(), bytes);
    site.files.insert("other.jsonl".into(), other.into_bytes());
    let server = serve(site).await;
    let cache = tempfile::tempdir().unwrap();
    // The pinned file passes; the fragment is not sent and is not part of the source's name.
    let good = format!("{}/f/test.jsonl", server.url);
    let p = eval::prepare(&template("gsm8k", json!({"source": format!("{good}#sha256={pin}")})), &opts(cache.path()))
        .await
        .unwrap();
    assert_eq!((p.dataset.rows, p.dataset.sources[0].source.as_str()), (1319, good.as_str()));
    // Other data under the same pin: the file and both hashes, and nothing cached.
    let bad = format!("{}/f/other.jsonl", server.url);
    let e = eval::prepare(&template("gsm8k", json!({"source": format!("{bad}#sha256={pin}")})), &opts(cache.path()))
        .await
        .unwrap_err();
    assert!(matches!(e, EvalError::Checksum { .. }), "{e}");
    let message = e.to_string();
    assert!(message.contains(&bad) && message.contains(pin) && message.contains(&other_sha), "{message}");
    assert!(!walk(cache.path()).iter().any(|p| p.ends_with("other.jsonl")), "a mismatch is not cached");
    // A pin that is not a sha256 is refused when the eval is compiled.
    let tree = format!(
        "dataset: {{source: \"{bad}#sha256=abc\"}}\nfields: {{target: answer}}\nprompt: {{template: x}}\ngeneration: {{max_tokens: 1}}\n"
    );
    let e = eval::compile(&kitt::manifest::yaml::parse(&tree).unwrap(), &json!({"params": {}})).unwrap_err();
    assert!(format!("{e:?}").contains("`#sha256=` must be followed by 64 hexadecimal digits"), "{e:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn hugging_face_rows_are_paged_cached_and_mapped() {
    let Some(data) = test_data() else { return };
    let mut site = Site::default();
    site.hf.insert(("openai/gsm8k".into(), "main".into(), "test".into()), jsonl(&data.join("gsm8k/test.jsonl")));
    // MMLU in the rows API's shape: one config per subject, `choices` a list, `answer` an index.
    for subject in ["anatomy", "virology"] {
        for split in ["test", "dev"] {
            let rows: Vec<Json> = csv_records(&data.join(format!("mmlu/data/{split}/{subject}_{split}.csv")))
                .iter()
                .map(|r| {
                    let answer = (r[5].as_bytes()[0] - b'A') as u64;
                    json!({"question": &r[0], "subject": subject, "choices": [&r[1], &r[2], &r[3], &r[4]], "answer": answer})
                })
                .collect();
            site.hf.insert(("cais/mmlu".into(), subject.into(), split.into()), rows);
        }
    }
    let server = serve(site).await;
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.hf_endpoint = server.url.clone();

    let gsm = template("gsm8k", json!({"source": "hf://openai/gsm8k?config=main&split=test"}));
    let p = eval::prepare(&gsm, &o).await.unwrap();
    assert_eq!(p.items.len(), 1319);
    assert_eq!(server.hits(), 14, "1319 rows in pages of 100");
    let local =
        eval::prepare(&template("gsm8k", json!({"source": data.join("gsm8k/test.jsonl").to_string_lossy()})), &o)
            .await
            .unwrap();
    let targets = |p: &Prepared| p.items.iter().map(|i| i.target.clone()).collect::<Vec<_>>();
    assert_eq!(targets(&p), targets(&local));
    eval::prepare(&gsm, &o).await.unwrap();
    assert_eq!(server.hits(), 14, "the second time from the cache");

    // The built-in MMLU source, pointed at the local server.
    let mmlu = template("mmlu", json!({"subjects": ["anatomy", "virology"]}));
    let before = server.hits();
    let p = eval::prepare(&mmlu, &o).await.unwrap();
    assert_eq!(p.items.len(), 135 + 166);
    assert_eq!(server.hits() - before, 2 + 2 + 1 + 1, "test: 2 pages each; dev: 1 page each");
    let from_csv = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let c = eval::prepare(&template("mmlu", json!({"source": from_csv, "subjects": ["anatomy", "virology"]})), &o)
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|i| (&i.prompt, &i.target)).collect::<Vec<_>>(),
        c.items.iter().map(|i| (&i.prompt, &i.target)).collect::<Vec<_>>(),
        "the same prompts from either source"
    );

    // An unknown dataset: the server's answer in the error.
    let e =
        eval::prepare(&template("gsm8k", json!({"source": "hf://nobody/nothing?split=test"})), &o).await.unwrap_err();
    assert!(e.to_string().contains("404") && e.to_string().contains("does not exist"), "{e}");
}

// ---------------------------------------------------------------- errors that say why

#[tokio::test]
async fn zero_items_and_bad_rows_are_errors_that_say_why() {
    let Some(data) = test_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path());
    let tqa = data.join("truthfulqa/TruthfulQA.csv");

    let e = eval::prepare(
        &template("truthfulqa", json!({"source": tqa.to_string_lossy(), "categories": ["Astrology"]})),
        &o,
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, EvalError::Empty { .. }), "{msg}");
    assert!(
        msg.contains("none of the 817 items") && msg.contains("[Astrology]") && msg.contains("Advertising"),
        "{msg}"
    );

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let e = eval::prepare(&template("gsm8k", json!({"source": empty.to_string_lossy()})), &o).await.unwrap_err();
    assert_eq!(e.to_string(), format!("no items to evaluate: {} has no rows", empty.display()));

    let missing = dir.path().join("nope.jsonl");
    let e = eval::prepare(&template("gsm8k", json!({"source": missing.to_string_lossy()})), &o).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}: ", missing.display())), "{e}");

    let e = eval::prepare(&template("gsm8k", json!({"source": "no/such/dir/test.jsonl"})), &o).await.unwrap_err();
    assert!(e.to_string().contains("relative to the suite file's directory"), "{e}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": \"q2\"}\n").unwrap();
    let e = eval::prepare(&template("gsm8k", json!({"source": bad.to_string_lossy()})), &o).await.unwrap_err();
    assert_eq!(e.to_string(), format!("{}:2: no field `answer` (the row has: question)", bad.display()));

    let bad_csv = dir.path().join("x_test.csv");
    std::fs::write(&bad_csv, "q,1,2,3,4,A\n\"unterminated,1,2\n").unwrap();
    let src = format!("{}/{{group}}_{{split}}.csv", dir.path().display());
    let e = eval::prepare(&template("mmlu", json!({"source": src, "subjects": ["x"], "k": 0})), &o).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:2: ", bad_csv.display())), "{e}");

    let letter = dir.path().join("y_test.csv");
    std::fs::write(&letter, "q,1,2,3,4,A\nq2,1,2,3,4,E\n").unwrap();
    let src = format!("{}/{{group}}_{{split}}.csv", dir.path().display());
    let e = eval::prepare(&template("mmlu", json!({"source": src, "subjects": ["y"], "k": 0})), &o).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: the target `E` in `answer` is not an index, a letter or an option's text among 4 options",
            letter.display()
        )
    );
}

#[tokio::test]
async fn the_context_policy_drops_shots_then_skips_and_counts() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let spec = template("mmlu", json!({"source": source, "subjects": ["college_medicine"]}));
    // The engine's tokenizer, as the executor would supply it: here one token per word.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut o = opts(cache.path());
    o.counter = TokenCounter::Engine(Arc::new(move |p: Prompt| {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(p.text().split_whitespace().count() as u32) })
    }));
    o.context_window = Some(400);
    let p = eval::prepare(&spec, &o).await.unwrap();
    assert_eq!(p.context.window, 400);
    assert_eq!((p.context.window_from, p.context.counter), ("engine", "engine"));
    let words = |pr: &Prompt| pr.text().split_whitespace().count() as u32;
    assert!(p.items.iter().all(|i| i.prompt_tokens == words(&i.prompt) && i.prompt_tokens + 5 <= 400));
    assert!(p.items.iter().any(|i| i.shots == 5) && p.items.iter().any(|i| i.shots < 5));
    assert!(!p.skipped.is_empty());
    assert!(p.skipped[0].reason.contains("exceeds the context window of 400"), "{}", p.skipped[0].reason);
    assert_eq!(p.items.len() + p.skipped.len(), 173);
    assert_eq!(p.context.fewer_shots, p.items.iter().filter(|i| i.shots < 5).count());
    assert!(calls.load(Ordering::SeqCst) > 173);
    let result = score(&p, |_| "A".into()).await;
    assert_eq!(result.counts.skipped, p.skipped.len());
    assert_eq!(result.counts.scored, p.items.len());

    // A window nothing fits in: an error, not an empty score.
    o.context_window = Some(10);
    let e = eval::prepare(&spec, &o).await.unwrap_err();
    assert!(e.to_string().starts_with("no items to evaluate: all 173 items were skipped: too long"), "{e}");
}

// ---------------------------------------------------------------- checkpoints

#[tokio::test]
async fn a_cancelled_eval_resumes_from_its_checkpoint_to_the_same_score() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let spec =
        template("gsm8k", json!({"source": data.join("gsm8k/test.jsonl").to_string_lossy(), "sample_size": 200}));
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    let calls = AtomicUsize::new(0);
    let asked = std::sync::Mutex::new(Vec::new());
    // A deterministic model: right on even indices, an error on every 37th item.
    let generate = |req: Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        asked.lock().unwrap().push(req.index);
        let target = p.items[req.index].target.clone();
        let i = req.index;
        async move {
            tokio::task::yield_now().await;
            if i % 37 == 5 {
                return Err("HTTP 500".to_string());
            }
            Ok(if i.is_multiple_of(2) { format!("The answer is {target}.") } else { "The answer is 0.5.".to_string() })
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let whole = RunOptions::new(dir.path().join("whole.json"), 4, Cancel::default());
    let EvalOutcome::Finished { result: expected, items, .. } =
        eval::run(&p, generate, &whole, |_: &Progress| {}).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(calls.swap(0, Ordering::SeqCst), 200);
    let errors = (0..200).filter(|i| i % 37 == 5).count();
    let correct = (0..200usize).filter(|i| i.is_multiple_of(2) && i % 37 != 5).count();
    assert_eq!(
        (expected.counts.errors, expected.counts.correct, expected.counts.scored),
        (errors, correct, 200 - errors)
    );
    assert_eq!(expected.accuracy, correct as f64 / (200 - errors) as f64, "over the answered items");
    assert_eq!(expected.error_share, errors as f64 / 200.0);
    assert_eq!(items.iter().filter(|i| i.verdict == Verdict::Error).count(), expected.counts.errors);

    // Stopped after 70 answers (checkpoints every 16), then resumed.
    let cancel = Cancel::default();
    let mut ropts = RunOptions::new(dir.path().join("ckpt.json"), 4, cancel.clone());
    ropts.checkpoint_every = 16;
    let outcome = eval::run(&p, generate, &ropts, |pr: &Progress| {
        if pr.done == 70 {
            cancel.cancel();
        }
    })
    .await
    .unwrap();
    let EvalOutcome::Interrupted { done, total } = outcome else { panic!("{outcome:?}") };
    assert_eq!((done, total), (70, 200));
    let first = calls.swap(0, Ordering::SeqCst);
    assert!((70..=74).contains(&first), "at most `concurrency` requests beyond the cancel: {first}");
    asked.lock().unwrap().clear();
    let ropts = RunOptions::new(dir.path().join("ckpt.json"), 4, Cancel::default());
    let mut seen_resumed = 0;
    let EvalOutcome::Finished { result, items: resumed_items, resumed, retried } =
        eval::run(&p, generate, &ropts, |pr: &Progress| seen_resumed = pr.resumed).await.unwrap()
    else {
        panic!()
    };
    // Items 5 and 42 failed before the cancel: failures are not answers, they are asked again.
    assert_eq!((resumed, seen_resumed, retried), (68, 68, 2));
    assert_eq!(calls.load(Ordering::SeqCst), 132, "the items not answered before, failures included");
    assert!(asked.lock().unwrap().starts_with(&[5, 42]), "{:?}", asked.lock().unwrap());
    assert_eq!(result, expected);
    assert_eq!(resumed_items, items);

    // items.jsonl: one line per item with prompt, output, extracted answer, expected and verdict.
    let out = dir.path().join("items.jsonl");
    eval::write_items(&out, &items).unwrap();
    let lines = jsonl(&out);
    assert_eq!(lines.len(), 200);
    assert!(lines[0]["prompt"].as_str().unwrap().starts_with("Q: There are 15 trees"));
    assert_eq!(lines[0]["verdict"], "correct");
    assert_eq!(lines[0]["extracted"], lines[0]["expected"]);
    assert_eq!(lines[0]["correct"], true);
    assert_eq!(lines[1]["correct"], false);
    assert_eq!(lines[5]["verdict"], "error");
    assert_eq!(lines[5]["error"], "generation", "a failure given as text has no finer kind");
    assert_eq!(lines[5]["reason"], "HTTP 500");
    assert!(lines[5].get("correct").is_none() && lines[5].get("raw").is_none(), "{}", lines[5]);

    // A checkpoint of another eval is refused, not mixed in.
    let other = eval::prepare(
        &template(
            "gsm8k",
            json!({"source": data.join("gsm8k/test.jsonl").to_string_lossy(), "sample_size": 200, "seed": 2}),
        ),
        &opts(cache.path()),
    )
    .await
    .unwrap();
    let e = eval::run(&other, generate, &ropts, |_: &Progress| {}).await.unwrap_err();
    assert!(matches!(e, EvalError::Checkpoint { .. }) && e.to_string().contains("another eval"), "{e}");
}

#[tokio::test]
async fn a_failed_generation_is_not_an_answer_and_the_next_attempt_asks_it_again() {
    let Some(data) = test_data() else { return };
    let cache = tempfile::tempdir().unwrap();
    let spec =
        template("gsm8k", json!({"source": data.join("gsm8k/test.jsonl").to_string_lossy(), "sample_size": 100}));
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    let asked = std::sync::Mutex::new(Vec::new());
    // Right on even items; the engine is down for every fifth item on the first attempt.
    let model = |req: &Request, down: bool| {
        asked.lock().unwrap().push(req.index);
        let target = p.items[req.index].target.clone();
        if down && req.index.is_multiple_of(5) {
            return Err(eval::Failure::new("http_500", "HTTP 500: engine crashed"));
        }
        Ok(if req.index.is_multiple_of(2) { format!("The answer is {target}.") } else { "The answer is 0.5.".into() })
    };
    let dir = tempfile::tempdir().unwrap();
    let ropts = RunOptions::new(dir.path().join("ckpt.json"), 4, Cancel::default());
    let EvalOutcome::Finished { result: first, items, .. } =
        eval::run(&p, |r: Request| std::future::ready(model(&r, true)), &ropts, |_: &Progress| {}).await.unwrap()
    else {
        panic!()
    };
    // 20 failures: neither right nor wrong. 40 of the 80 answers are right (even, not a multiple of 10).
    assert_eq!((first.counts.errors, first.counts.scored, first.counts.correct), (20, 80, 40));
    assert_eq!(first.counts.incorrect + first.counts.unparseable, 40);
    assert_eq!((first.accuracy, first.error_share), (0.5, 0.2));
    let out = dir.path().join("items.jsonl");
    eval::write_items(&out, &items).unwrap();
    let lines = jsonl(&out);
    assert_eq!(lines[0]["error"], "http_500");
    assert_eq!(lines[0]["reason"], "HTTP 500: engine crashed");
    assert!(lines[0].get("correct").is_none(), "{}", lines[0]);
    assert_eq!((&lines[2]["correct"], &lines[3]["correct"]), (&json!(true), &json!(false)));
    assert!(lines[2].get("error").is_none());

    // The next attempt (a step retry, a resume) over the same checkpoint asks only the 20 again.
    asked.lock().unwrap().clear();
    let EvalOutcome::Finished { result, items, resumed, retried } =
        eval::run(&p, |r: Request| std::future::ready(model(&r, false)), &ropts, |_: &Progress| {}).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((resumed, retried), (80, 20));
    let again: Vec<usize> = asked.lock().unwrap().clone();
    assert_eq!(again, (0..100).filter(|i| i % 5 == 0).collect::<Vec<_>>());
    // … and ends with the score of a run that never failed.
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = RunOptions::new(clean_dir.path().join("ckpt.json"), 4, Cancel::default());
    let EvalOutcome::Finished { result: expected, items: expected_items, .. } =
        eval::run(&p, |r: Request| std::future::ready(model(&r, false)), &clean, |_: &Progress| {}).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(result, expected);
    assert_eq!(items, expected_items);
    assert_eq!((result.counts.errors, result.accuracy), (0, 0.5));
}

#[tokio::test]
async fn an_eval_whose_every_request_failed_is_an_error() {
    let cache = tempfile::tempdir().unwrap();
    let p = eval::prepare(
        &template("hellaswag", json!({"source": fixture("hellaswag/val.jsonl").to_string_lossy()})),
        &opts(cache.path()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ropts = RunOptions::new(dir.path().join("c.json"), 2, Cancel::default());
    let e = eval::run(&p, |_req: Request| async { Err::<String, _>("connection refused") }, &ropts, |_: &Progress| {})
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "all 12 requests failed; the first error: connection refused");
}

#[tokio::test]
async fn requests_carry_the_generation_params_and_chat_prompts_are_messages() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tree = format!(
        r#"
dataset: {{source: "{}"}}
fields: {{group: activity_label, choices: endings, target: {{field: label, format: index}}}}
fewshot: {{k: 1, select: first, same_group: false}}
prompt:
  api: chat
  system: "Answer with a letter."
  user: "{{{{ctx}}}}\n{{{{#each choices}}}}{{{{letter @index}}}}) {{{{this}}}}\n{{{{/each}}}}"
  assistant: "{{{{target}}}}"
generation: {{max_tokens: 3, temperature: 0.5, stop: "\n"}}
answer: {{extract: [first_letter, choice_text]}}
"#,
        fixture("hellaswag/val.jsonl").display()
    );
    let spec = eval::compile(&kitt::manifest::yaml::parse(&tree).unwrap(), &json!({"params": {}})).unwrap();
    let p = eval::prepare(&spec, &opts(cache.path())).await.unwrap();
    let Prompt::Messages(m) = &p.items[1].prompt else { panic!() };
    let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(m[2].content, "A", "the shot (item 0) answers A");
    let seen = std::sync::Mutex::new(Vec::new());
    let ropts = RunOptions::new(dir.path().join("c.json"), 1, Cancel::default());
    let EvalOutcome::Finished { result, .. } = eval::run(
        &p,
        |req: Request| {
            seen.lock().unwrap().push(req.clone());
            // The option's text instead of its letter: choice_text reads it.
            let text = p.items[req.index].choices[(p.items[req.index].target.as_bytes()[0] - b'A') as usize].clone();
            async move { Ok::<_, String>(text) }
        },
        &ropts,
        |_: &Progress| {},
    )
    .await
    .unwrap() else {
        panic!()
    };
    assert_eq!(result.accuracy, 1.0);
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 12);
    assert!(seen.iter().all(|r| r.max_tokens == 3 && r.temperature == Some(0.5) && r.stop == ["\n"]));
}

/// The custom eval in docs/evals.md is real: it decodes, compiles, prepares and scores.
#[tokio::test]
async fn the_documented_custom_eval_runs() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/evals.md")).unwrap();
    let yaml =
        doc.split("```yaml").map(|b| b.split("```").next().unwrap()).find(|b| b.contains("kind: Benchmark")).unwrap();
    let m = kitt::manifest::parse_raw(yaml, Path::new("docs/evals.md")).unwrap().decode::<BenchmarkSpec>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("boolq.jsonl");
    let rows: String = (0..10)
        .map(|i| {
            format!(
                "{}\n",
                json!({"passage": format!("Passage {i}."), "question": format!("is {i} even"), "answer": i % 2 == 0})
            )
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let ctx = json!({"params": {"source": data.to_string_lossy(), "sample_size": 0}});
    let spec = eval::compile(m.spec.eval.as_ref().unwrap(), &ctx).unwrap();
    let p = eval::prepare(&spec, &opts(dir.path())).await.unwrap();
    assert_eq!(p.items.len(), 10);
    assert!(p.items.iter().all(|i| i.shots == 2));
    let Prompt::Text(t) = &p.items[3].prompt else { panic!() };
    assert!(t.ends_with("Passage 3.\nQuestion: is 3 even? Answer true or false:"), "{t}");
    // "True"/"FALSE" in any case; wrong on item 0.
    let result = score(&p, |r| {
        let even = r.index.is_multiple_of(2);
        let said = if r.index == 0 { !even } else { even };
        if said { " True".into() } else { " FALSE, because".into() }
    })
    .await;
    assert_eq!(result.counts.correct, 9);
}
