//! What several test binaries share.

use std::path::{Path, PathBuf};

/// The shared datasets (`KITT_TEST_DATA`, default ../shared/datasets), or `None` (a skip, said
/// on stderr) when they are absent outside CI. Under `CI=true` absence fails the test.
#[allow(dead_code)] // each test binary uses what it needs
pub fn test_data() -> Option<PathBuf> {
    let dir = std::env::var_os("KITT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"));
    if dir.join("mmlu/data/test").is_dir() {
        return Some(dir);
    }
    let msg = format!("the test datasets are not at {} (set KITT_TEST_DATA)", dir.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

/// A scratch place for `kitt` runs: its own runs directory, host lock and no store, with every
/// test hook cleared, so a test sees only what it set.
#[allow(dead_code)] // each test binary uses what it needs
pub struct KittEnv {
    pub dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl KittEnv {
    pub fn new() -> KittEnv {
        KittEnv { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn runs(&self) -> PathBuf {
        self.path().join("runs")
    }

    /// `kitt` with this place's runs directory and host lock, and no hook set.
    pub fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kitt"));
        c.env("KITT_RUNS_DIR", self.runs())
            .env("KITT_STORE", "off")
            .env("KITT_HOST_LOCK", self.path().join("host.lock"))
            .env_remove("KITT_SIM_REQUEST_LOG")
            .env_remove("KITT_TEST_KILL_AFTER_RECORD")
            .env_remove("KITT_TEST_WORK_KILL_AFTER_RECORD")
            .env_remove("KITT_TEST_KILL_IN_BENCHMARK")
            .env_remove("KITT_TEST_BUILD_ID")
            .env_remove("KITT_TEST_PANIC_STEP")
            .env_remove("KITT_SIM_VERSION")
            .env("NO_COLOR", "1");
        c
    }

    /// Writes `yaml` as `suite.yaml` here; its path.
    pub fn suite(&self, yaml: &str) -> PathBuf {
        let p = self.path().join("suite.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// The one run in the runs directory.
    pub fn only_run(&self) -> PathBuf {
        let runs: Vec<PathBuf> = std::fs::read_dir(self.runs()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(runs.len(), 1, "expected one run, found {runs:?}");
        runs[0].clone()
    }
}

/// A run's journal records.
#[allow(dead_code)]
pub fn journal(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A run's `report/result.json`.
#[allow(dead_code)]
pub fn report(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

/// A finished command's status and output, for assertion messages.
#[allow(dead_code)]
pub fn text(o: &std::process::Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Live `kitt sim` processes whose command line holds `marker` (each test names its model).
#[allow(dead_code)]
pub fn sims_alive(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            cmdline.contains(" sim ") && cmdline.contains(marker) && !stat.contains(") Z ")
        })
        .count()
}

/// What must be equal between two runs' reports apart from timings (DESIGN decision 7): each
/// cell's identity, status, metric names and counts; with `reused`, also whether it was reused.
#[allow(dead_code)]
pub fn comparable(report: &serde_json::Value, reused: bool) -> Vec<serde_json::Value> {
    report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let m = &c["metrics"];
            let names: Vec<&String> = m.as_object().map(|o| o.keys().collect()).unwrap_or_default();
            let mut v = serde_json::json!({
                "cell": c["cell"], "status": c["status"], "metric_names": names,
                "requests": m["requests"], "errors": m["errors"], "output_tokens": m["output_tokens"]["total"],
                "input_tokens": m["input_tokens"]["total"],
            });
            if reused {
                v["reused"] = c["provenance"]["reused"].clone();
            }
            v
        })
        .collect()
}

/// An Engine template with a secret param that reaches the engine both ways: on its command line
/// (the simulator's request log path) and in its environment (the simulator's model list).
#[allow(dead_code)]
pub const KEYED_SIM: &str = r#"apiVersion: kitt/v1
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
    api_key: {type: string, secret: true, description: the key the server wants}
  native:
    command: ["{{kitt.exe}}", "sim", "--api", "openai", "--host", "{{bind_host}}", "--port", "{{port}}",
              "--model", "{{model.served_name}}", "--request-log", "{{params.api_key}}.jsonl"]
    env: {KITT_SIM_MODELS: "{{model.served_name}},{{params.api_key}}"}
  health: {path: /health, timeout: 30s, initial_interval: 10ms, max_interval: 500ms}
"#;

/// Every record of every journal shard of `run` (the `kitt work` attempts').
#[allow(dead_code)]
pub fn shard_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(run.join("journal"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| {
            std::fs::read_to_string(e.path()).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

#[derive(clap::Parser)]
struct SimCli {
    #[command(flatten)]
    sim: kitt::engine::sim::SimArgs,
}

/// Starts kitt's simulator in this process with `flags` (as `kitt sim` takes them, `--port 0`
/// among them for a free port) on a runtime of its own; its port.
#[allow(dead_code)]
pub fn start_sim(flags: &[&str]) -> u16 {
    use clap::Parser as _;
    let args = SimCli::parse_from(std::iter::once(&"sim").chain(flags)).sim;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = kitt::engine::sim::bind(&args).await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            kitt::engine::sim::serve_on(listener, args, std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// (llama-server, tiny model) from the build `scripts/llama-cpp.sh --link .kitt/llama.cpp` made
/// (CI makes it), if there is one. Under CI (`CI=true`) a missing build is a failure; elsewhere
/// the test says what is missing and passes without running.
#[allow(dead_code)]
pub fn llama_cpp_build() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".kitt/llama.cpp");
    let (server, model) = (dir.join("bin/llama-server"), dir.join("models/tiny.gguf"));
    if server.exists() && model.exists() {
        return Some((server, model));
    }
    let msg = "llama-server is not built: run `scripts/llama-cpp.sh --link .kitt/llama.cpp`";
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{msg}");
    eprintln!("skipping: {msg}");
    None
}

/// Live `llama-server` processes serving `alias`.
#[allow(dead_code)]
pub fn llama_servers(alias: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            cmd.contains("llama-server") && cmd.contains(alias) && !stat.contains(") Z ")
        })
        .count()
}
