//! The engine wire formats, end to end: kitt's own client reads the simulator's vLLM, TGI and Ollama
//! APIs, and answers those engines recorded or documented (`tests/fixtures/wire/`), through the
//! API calls of the built-in templates as a suite compiles them; and `kitt sim --mimic` accepts
//! each template's real container arguments and serves where they say.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use kitt::bench::load::body_for;
use kitt::engine::client::{EngineClient, ErrorKind, RequestRecord};
use kitt::engine::sim::{Parsed, SimApi, SimArgs, resolve};
use kitt::manifest::load::ApiKind;
use kitt::manifest::secret::SecretOr;
use kitt::plan::{EngineGroup, Mode, Plan, RequestTemplate};
use serde_json::{Value, json};

/// A built-in engine template as a suite compiles it: its engine group and its two API calls.
struct Compiled {
    group: EngineGroup,
    completion: RequestTemplate,
    chat: RequestTemplate,
}

const MAX_TOKENS: u32 = 12;

/// Compiles a suite with one `template` engine (container mode, its default) serving the model
/// as `served_name`, and a completion and a chat benchmark.
fn compile(template: &str, served_name: &str) -> Compiled {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/m.gguf"), b"GGUF").unwrap();
    std::fs::write(
        dir.path().join("chat.yaml"),
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {name: chat_latency}\nspec:\n  mechanism: load\n  params:\n    max_tokens: {type: integer, default: 1, minimum: 1}\n  load: {api: chat, profile: synchronous, requests: 1, prompt: {synthetic: {input_tokens: 8}}, ignore_eos: true}\n",
    )
    .unwrap();
    let suite = format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: wire}}\nspec:\n  models: [{{name: m, path: ./models/m.gguf, served_name: '{served_name}'}}]\n  engines: [{{name: e, template: {template}}}]\n  benchmarks:\n    - {{name: completion, template: latency, params: {{requests: 1, max_tokens: {MAX_TOKENS}}}}}\n    - {{name: chat, template: chat_latency, params: {{max_tokens: {MAX_TOKENS}}}}}\n  templates: [./chat.yaml]\n"
    );
    let path = dir.path().join("suite.yaml");
    std::fs::write(&path, &suite).unwrap();
    let plan: Plan = kitt::plan::compile::compile_file(&path).unwrap_or_else(|e| panic!("{template}: {e:#?}"));
    let call = |benchmark: &str| {
        let cell = plan.cells.iter().find(|c| c.benchmark == benchmark).unwrap();
        let expected = if benchmark == "chat" { ApiKind::Chat } else { ApiKind::Completion };
        assert_eq!(cell.load.as_ref().unwrap().api, expected);
        kitt::plan::RequestTemplate::clone(cell.request.as_ref().unwrap())
    };
    Compiled { completion: call("completion"), chat: call("chat"), group: plan.groups[0].clone() }
}

/// The group's container args and env with `{{port}}` bound.
fn container(group: &EngineGroup, port: u16) -> (Vec<String>, Vec<(String, String)>) {
    let Mode::Container { args, env, .. } = &group.mode else { panic!("{} is not a container engine", group.template) };
    let bind = |s: &str| {
        let bound = kitt::template::bind_late(&Value::String(s.into()), &[("port", Value::String(port.to_string()))]);
        bound.as_str().unwrap().to_string()
    };
    let env = env
        .iter()
        .map(|(k, v)| match v {
            SecretOr::Plain(v) => (k.clone(), bind(v)),
            other => panic!("{k}: {other:?}"),
        })
        .collect();
    (args.iter().map(|a| bind(a)).collect(), env)
}

/// `kitt sim ARGS`, parsed by kitt's own command line.
fn sim_args(args: &[String]) -> SimArgs {
    let argv = ["kitt", "sim"].into_iter().map(String::from).chain(args.iter().cloned());
    match kitt::cli::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")).command {
        kitt::cli::Command::Sim(args) => args,
        other => panic!("{other:?}"),
    }
}

/// Starts the simulator in this process on a free port; returns its base URL.
fn start_sim(flags: &[&str]) -> String {
    let flags: Vec<String> = ["--port", "0"].iter().chain(flags).map(|f| f.to_string()).collect();
    let args = sim_args(&flags);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = kitt::engine::sim::bind(&args).await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap())).unwrap();
            kitt::engine::sim::serve_on(listener, args, std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// A prompt of `n` words.
fn prompt(n: usize, salt: usize) -> String {
    (0..n).map(|i| format!("word{}", i * 7 + salt)).collect::<Vec<_>>().join(" ")
}

async fn send(client: &EngineClient, call: &RequestTemplate, api: ApiKind, text: &str) -> (RequestRecord, Bytes) {
    let body = body_for(call, api, text);
    let mut record = RequestRecord::default();
    client.send(call, &body, Instant::now(), &mut record).await;
    (record, body)
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The value of the Prometheus series `name` (labels included) in `/metrics`.
async fn metric(client: &EngineClient, name: &str) -> f64 {
    let (status, text) = client.get("/metrics", Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, 200);
    let line = text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == name));
    line.unwrap_or_else(|| panic!("{name} in\n{text}")).rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// The version the template's probe reads.
async fn probed_version(client: &EngineClient, group: &EngineGroup) -> Value {
    let probe = group.version.as_ref().unwrap();
    client.get_json(&probe.path).await.unwrap().pointer(&probe.pointer).cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_template_reads_the_openai_sim_exactly() {
    let vllm = compile("vllm", "m-served");
    let url = start_sim(&["--api", "openai", "--model", "m-served", "--server-version", "0.9.1"]);
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    assert_eq!(client.get(&vllm.group.health.path, Duration::from_secs(5)).await.unwrap().0, 200);
    assert_eq!(probed_version(&client, &vllm.group).await, "0.9.1");
    let tokenize = vllm.group.tokenize.as_ref().unwrap();
    let pointer = vllm.group.tokenize_pointer.as_deref().unwrap();
    assert_eq!(client.count_tokens(tokenize, pointer, &prompt(9, 0)).await.unwrap(), 9);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (i, (call, api)) in
        [(&vllm.completion, ApiKind::Completion), (&vllm.chat, ApiKind::Chat)].into_iter().enumerate()
    {
        for n in [1, 5, 9] {
            let (r, _) = send(&client, call, api, &prompt(n, i)).await;
            assert!(r.ok(), "{r:?}");
            // `ignore_eos: true`: exactly max_tokens, one token per event, counted by usage too.
            let expected = (Some(n as u64), Some(u64::from(MAX_TOKENS)));
            assert_eq!((r.usage_prompt_tokens, r.usage_completion_tokens), expected, "{api:?}");
            assert_eq!((r.content_events, words(&r.text)), (MAX_TOKENS, u64::from(MAX_TOKENS)));
            if api == ApiKind::Chat {
                // The role-only chunk is an event, not content.
                assert!(r.first_event_ns.unwrap() <= r.first_content_ns.unwrap());
            }
            prompt_tokens += n;
            completion_tokens += MAX_TOKENS;
        }
    }
    let labels = r#"{model_name="m-served",engine="0"}"#;
    assert_eq!(metric(&client, &format!("vllm:prompt_tokens_total{labels}")).await, prompt_tokens as f64);
    assert_eq!(metric(&client, &format!("vllm:generation_tokens_total{labels}")).await, f64::from(completion_tokens));
    assert_eq!(metric(&client, &format!("vllm:num_requests_running{labels}")).await, 0.0);
    let length = r#"vllm:request_success_total{model_name="m-served",engine="0",finished_reason="length"}"#;
    assert_eq!(metric(&client, length).await, 6.0);

    // Several tokens per event and no usage: kitt falls back to counting, and the text still holds every token.
    let url = start_sim(&["--model", "m-served", "--tokens-per-chunk", "5", "--usage", "false"]);
    let client = EngineClient::new(&url, vec![], 1).unwrap();
    let (r, _) = send(&client, &vllm.completion, ApiKind::Completion, "a b").await;
    assert_eq!((r.usage_completion_tokens, r.content_events, words(&r.text)), (None, 3, u64::from(MAX_TOKENS)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgi_template_reads_the_tgi_sim_exactly() {
    let tgi = compile("tgi", "m-served");
    let url = start_sim(&["--api", "tgi", "--model", "/models/m.gguf", "--server-version", "3.3.4"]);
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    assert_eq!(client.get(&tgi.group.health.path, Duration::from_secs(5)).await.unwrap().0, 200);
    assert_eq!(probed_version(&client, &tgi.group).await, "3.3.4");
    let (mut stopped, mut generated) = (0, 0);
    for n in 1..=8 {
        let (r, body) = send(&client, &tgi.completion, ApiKind::Completion, &prompt(n, 0)).await;
        assert!(r.ok(), "{r:?}");
        // The same body to `/generate` gets the same answer, whole: the reference for the stream.
        let whole = client.post_json("/generate", &serde_json::from_slice(&body).unwrap()).await.unwrap();
        let tokens = whole["details"]["generated_tokens"].as_u64().unwrap();
        assert_eq!((r.usage_completion_tokens, u64::from(r.content_events)), (Some(tokens), tokens));
        let text = whole["generated_text"].as_str().unwrap();
        if whole["details"]["finish_reason"] == "eos_token" {
            // TGI streams its end-of-sequence token as a special token; the template's text pointer keeps it.
            assert_eq!(r.text, format!("{text}</s>"));
            stopped += 1;
        } else {
            assert_eq!((r.text.as_str(), tokens), (text, u64::from(MAX_TOKENS)));
        }
        generated += 2 * tokens; // streamed, then whole
    }
    assert!(stopped > 0 && stopped < 8, "{stopped} of 8 stopped early: both endings must be covered");
    for n in [2, 6] {
        let (r, _) = send(&client, &tgi.chat, ApiKind::Chat, &prompt(n, 1)).await;
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.usage_prompt_tokens, Some(n as u64));
        // The end-of-sequence token is an empty delta: usage counts it, the content does not.
        let usage = r.usage_completion_tokens.unwrap();
        assert!(usage - u64::from(r.content_events) <= 1 && words(&r.text) == u64::from(r.content_events), "{r:?}");
        generated += usage;
    }
    assert_eq!(metric(&client, "tgi_request_success").await, 18.0);
    assert_eq!(metric(&client, "tgi_request_generated_tokens_sum").await, generated as f64);
    assert_eq!(metric(&client, "tgi_batch_current_size").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_template_reads_the_ollama_sim_after_its_setup_pull() {
    let ollama = compile("ollama", "tinyllama");
    let url = start_sim(&["--api", "ollama", "--server-version", "0.6.2"]);
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    let (status, tags) = client.get(&ollama.group.health.path, Duration::from_secs(5)).await.unwrap();
    assert_eq!((status, tags.as_str()), (200, r#"{"models":[]}"#));
    assert_eq!(probed_version(&client, &ollama.group).await, "0.6.2");
    // Before the template's setup step pulls it, the model is Ollama's 404.
    let (r, _) = send(&client, &ollama.completion, ApiKind::Completion, "a b").await;
    assert_eq!(r.error, Some(ErrorKind::Status(404)));
    assert_eq!(r.error_detail.as_deref(), Some(r#"{"error":"model 'tinyllama' not found"}"#));
    for step in &ollama.group.setup {
        assert_eq!((step.method.as_str(), step.path.as_str()), ("POST", "/api/pull"));
        assert_eq!(
            client.post_json(&step.path, step.body.as_ref().unwrap()).await.unwrap(),
            json!({"status": "success"})
        );
    }
    let tags = client.get_json(&ollama.group.health.path).await.unwrap();
    assert_eq!(tags["models"][0]["name"], "tinyllama:latest");
    let mut eval = 0;
    for (i, (call, api)) in
        [(&ollama.completion, ApiKind::Completion), (&ollama.chat, ApiKind::Chat)].into_iter().enumerate()
    {
        for n in [1, 4, 7] {
            let (r, _) = send(&client, call, api, &prompt(n, i)).await;
            assert!(r.ok(), "{r:?}");
            // `num_predict` bounds the answer; each NDJSON line is one token; `eval_count` counts them.
            let tokens = u64::from(r.content_events);
            assert!((1..=u64::from(MAX_TOKENS)).contains(&tokens), "{r:?}");
            assert_eq!(
                (r.usage_prompt_tokens, r.usage_completion_tokens, words(&r.text)),
                (Some(n as u64), Some(tokens), tokens)
            );
            eval += tokens;
        }
    }
    assert!(eval > 6);
}

/// Serves `body` once per connection as a 200 answer of `content_type`, written a few bytes at a
/// time so that events straddle network reads; returns the base URL.
fn replay(content_type: &'static str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 65536];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            for piece in body.chunks(97) {
                let _ = stream.write_all(piece);
                let _ = stream.flush();
            }
        }
    });
    url
}

/// A recorded answer and what kitt must read from it.
struct Fixture<'a> {
    file: &'static str,
    call: &'a RequestTemplate,
    text: &'static str,
    events: u32,
    /// The engine's counts: prompt tokens (when the template reads them) and completion tokens.
    usage: Option<(Option<u64>, u64)>,
}

impl<'a> Fixture<'a> {
    fn new(
        file: &'static str,
        call: &'a RequestTemplate,
        text: &'static str,
        events: u32,
        usage: Option<(Option<u64>, u64)>,
    ) -> Self {
        Fixture { file, call, text, events, usage }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_parse_through_the_builtin_templates() {
    let (vllm, tgi, ollama) = (compile("vllm", "m"), compile("tgi", "m"), compile("ollama", "m"));
    let cases = [
        Fixture::new("vllm_completion_stream.sse", &vllm.completion, " city in the state of California,", 7, None),
        Fixture::new("vllm_chat_stream.sse", &vllm.chat, "가요?", 3, None),
        Fixture::new("vllm_chat_usage_stream.sse", &vllm.chat, " Hello!", 2, Some((Some(12), 3))),
        Fixture::new("tgi_generate_stream.sse", &tgi.completion, " for /api/v1/projects/1", 10, Some((None, 10))),
        Fixture::new("tgi_generate_stream_docs.sse", &tgi.completion, ".", 1, None),
        Fixture::new("tgi_chat_stream.sse", &tgi.chat, "OK!", 2, Some((Some(39), 3))),
        Fixture::new("ollama_generate.ndjson", &ollama.completion, "The", 1, Some((Some(26), 259))),
        Fixture::new("ollama_chat.ndjson", &ollama.chat, "The", 1, Some((Some(26), 282))),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
    for Fixture { file, call, text, events, usage } in cases {
        let (prompt, completion) = (usage.and_then(|u| u.0), usage.map(|u| u.1));
        let body = std::fs::read(dir.join(file)).unwrap();
        let content_type = if file.ends_with(".sse") { "text/event-stream" } else { "application/x-ndjson" };
        let client = EngineClient::new(&replay(content_type, body), vec![], 1).unwrap();
        let mut record = RequestRecord::default();
        client.send(call, b"{}", Instant::now(), &mut record).await;
        assert!(record.ok(), "{file}: {record:?}");
        assert_eq!(record.text, text, "{file}");
        assert_eq!(record.content_events, events, "{file}");
        assert_eq!((record.usage_prompt_tokens, record.usage_completion_tokens), (prompt, completion), "{file}");
        assert_eq!(record.output_tokens(), completion.unwrap_or(u64::from(events)), "{file}");
    }
}

/// The argv a mimic's parsed flags spell, as given: equal to the rendered args only when the
/// engine read every token of them, each as the flag or value the template meant.
fn respelled(parsed: &[Parsed]) -> Vec<String> {
    parsed.iter().flat_map(|p| std::iter::once(p.given.clone()).chain(p.values.iter().cloned())).collect()
}

/// The values the engine read for `flag` (its long name).
fn read<'a>(served: &'a kitt::engine::sim::Served, flag: &str) -> Vec<&'a str> {
    served.parsed.iter().filter(|p| p.flag == flag).flat_map(|p| p.values.iter().map(String::as_str)).collect()
}

#[test]
fn mimic_accepts_each_templates_container_args() {
    let no_env = |_: &str| None;
    let mimic = |engine: &str, args: &[String], env: &dyn Fn(&str) -> Option<String>| {
        let argv = [&["--mimic".into(), engine.into(), "--".into()][..], args].concat();
        resolve(&sim_args(&argv), env).unwrap_or_else(|e| panic!("{engine} {args:?}: {e}"))
    };
    let vllm = compile("vllm", "m-served");
    let (args, _) = container(&vllm.group, 18000);
    let served = mimic("vllm", &args, &no_env);
    assert_eq!(respelled(&served.parsed), args);
    assert_eq!(read(&served, "--gpu-memory-utilization"), ["0.9"]);
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Openai, "127.0.0.1", 18000));
    assert_eq!(
        (served.models, served.root.as_str(), served.max_model_len),
        (vec!["m-served".to_string()], "/models/m.gguf", 4096)
    );

    let tgi = compile("tgi", "m-served");
    let (args, _) = container(&tgi.group, 18080);
    let served = mimic("tgi", &args, &no_env);
    assert_eq!(respelled(&served.parsed), args);
    assert_eq!(read(&served, "--num-shard"), ["1"]);
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Tgi, "127.0.0.1", 18080));
    assert_eq!(
        (served.models, served.max_input_tokens, served.max_model_len),
        (vec!["/models/m.gguf".to_string()], 4096, 8192)
    );

    let llama = compile("llama_cpp", "m-served");
    let (args, _) = container(&llama.group, 18081);
    let served = mimic("llama_cpp", &args, &no_env);
    assert_eq!(respelled(&served.parsed), args);
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Openai, "127.0.0.1", 18081));
    assert_eq!(
        (&served.models, served.root.as_str(), served.max_model_len),
        (&vec!["m-served".to_string()], "/models/m.gguf", 2048)
    );
    // Short flags read as llama-server reads them; `threads: 0` sends no -t.
    assert_eq!(
        (read(&served, "--ctx-size"), read(&served, "--gpu-layers"), read(&served, "--parallel")),
        (vec!["2048"], vec!["0"], vec!["4"])
    );
    assert!(read(&served, "--threads").is_empty() && args.iter().all(|a| a != "-t"), "{args:?}");

    // Ollama's container gets no args (the image runs `ollama serve`) and reads OLLAMA_HOST.
    let ollama = compile("ollama", "tinyllama");
    let (args, env) = container(&ollama.group, 18434);
    assert!(args.is_empty(), "{args:?}");
    let env_of = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let served = mimic("ollama", &["serve".into()], &env_of);
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Ollama, "127.0.0.1", 18434));
    assert!(served.models.is_empty() && served.parsed.is_empty());
    assert_eq!(served.env, env);
}

#[test]
fn mimic_refuses_a_flag_the_engine_lacks_naming_it() {
    for (engine, flag, program) in [
        ("llama_cpp", "--max-model-len", "llama-server"),
        ("vllm", "--ctx-size", "vllm serve"),
        ("tgi", "--served-model-name", "text-generation-launcher"),
        ("ollama", "--port", "ollama serve"),
    ] {
        let mut argv: Vec<String> = ["--mimic", engine, "--"].into_iter().map(String::from).collect();
        if engine == "ollama" {
            argv.push("serve".into());
        }
        argv.extend([flag.to_string(), "9".into()]);
        let error = resolve(&sim_args(&argv), &|_| None).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "--mimic {engine}: `{flag}` is not a flag of `{program}` (see `{program} --help`); drop it or fix its spelling"
            )
        );
    }
}

/// A `kitt sim` process, killed when dropped.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `kitt ARGS` with `env` and waits until `health` answers 200 on `port`.
async fn spawn_sim(args: &[String], env: &[(String, String)], port: u16, health: &str) -> SimProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kitt"));
    command.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for name in [
        "KITT_SIM_TTFT_MS",
        "KITT_SIM_ITL_MS",
        "KITT_SIM_TOKENS_PER_CHUNK",
        "KITT_SIM_MODELS",
        "OLLAMA_HOST",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut process = SimProcess(command.spawn().unwrap());
    let client = EngineClient::new(&format!("http://127.0.0.1:{port}"), vec![], 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = client.get(health, Duration::from_secs(1)).await {
            return process;
        }
        if let Some(status) = process.0.try_wait().unwrap() {
            let mut stderr = String::new();
            process.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("kitt {args:?} exited with {status}: {stderr}");
        }
        assert!(Instant::now() < deadline, "kitt {args:?} never answered {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the process wrote on stderr, once it is stopped.
fn stderr_of(mut process: SimProcess) -> String {
    let _ = process.0.kill();
    let _ = process.0.wait();
    let mut stderr = String::new();
    process.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitt_sim_mimic_serves_each_template_from_its_container_args() {
    for (template, mimic) in [("vllm", "vllm"), ("tgi", "tgi"), ("ollama", "ollama"), ("llama_cpp", "llama_cpp")] {
        let compiled = compile(template, "m-served");
        let port = free_port();
        let (args, mut env) = container(&compiled.group, port);
        // The way a container image would run it: the template's args after `kitt sim --mimic X --`.
        let mut argv: Vec<String> = ["sim", "--mimic", mimic, "--"].into_iter().map(String::from).collect();
        argv.extend(if template == "ollama" { vec!["serve".to_string()] } else { args.clone() });
        env.push(("KITT_SIM_TTFT_MS".into(), "40".into()));
        let process = spawn_sim(&argv, &env, port, &compiled.group.health.path).await;
        let client = EngineClient::new(&format!("http://127.0.0.1:{port}"), vec![], 1).unwrap();
        for step in &compiled.group.setup {
            client.post_json(&step.path, step.body.as_ref().unwrap()).await.unwrap();
        }
        assert_eq!(probed_version(&client, &compiled.group).await, "kitt-sim 0.1.0", "{template}");
        let (r, _) = send(&client, &compiled.completion, ApiKind::Completion, "one two three").await;
        assert!(r.ok(), "{template}: {r:?}");
        assert_eq!(r.usage_completion_tokens, Some(u64::from(r.content_events)), "{template}: {r:?}");
        // KITT_SIM_TTFT_MS configured the delay, as a container's env would.
        assert!(r.first_content_ns.unwrap() - r.sent_ns >= 40_000_000, "{template}: {r:?}");
        // The startup report: every flag the engine read, token for token what the template sent.
        let stderr = stderr_of(process);
        let line = stderr
            .lines()
            .find(|l| l.starts_with('{') && l.contains(r#""mimic":"#))
            .unwrap_or_else(|| panic!("{stderr}"));
        let report: Value = serde_json::from_str(line).unwrap();
        assert_eq!(report["mimic"], mimic, "{line}");
        let parsed: Vec<Parsed> = report["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Parsed {
                flag: p["flag"].as_str().unwrap().into(),
                given: p["given"].as_str().unwrap().into(),
                values: p["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect(),
            })
            .collect();
        assert_eq!(respelled(&parsed), args, "{template}: {line}");
        if template == "ollama" {
            assert_eq!(report["env"]["OLLAMA_HOST"], format!("127.0.0.1:{port}"), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_commands_in_the_engines_doc_serve() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/engines.md")).unwrap();
    let section = doc.split("## Simulators").nth(1).expect("docs/engines.md has a `## Simulators` section");
    let commands: Vec<&str> = section
        .split("```sh")
        .skip(1)
        .flat_map(|block| block.split("```").next().unwrap().lines())
        .map(|line| line.split(" # ").next().unwrap().trim())
        .filter(|line| line.contains("kitt sim"))
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    for line in commands {
        // Each documented port is replaced by a free one, wherever it is written.
        let port = free_port();
        let mut env = Vec::new();
        let mut args = Vec::new();
        let mut words = line.split_whitespace().peekable();
        while let Some((name, value)) = words.peek().and_then(|w| w.split_once('=')) {
            let value = value.rsplit_once(':').map_or(value.to_string(), |(host, _)| format!("{host}:{port}"));
            env.push((name.to_string(), value));
            words.next();
        }
        assert_eq!(words.next(), Some("kitt"), "{line}");
        let mut previous = "";
        for word in words {
            args.push(if previous == "--port" { port.to_string() } else { word.to_string() });
            previous = word;
        }
        let env_of = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let served = resolve(&sim_args(&args[1..]), &env_of).unwrap_or_else(|e| panic!("{line}: {e}"));
        let health = match served.api {
            SimApi::Ollama => "/api/tags",
            SimApi::Openai | SimApi::Tgi => "/health",
        };
        drop(spawn_sim(&args, &env, port, health).await);
    }
}
