//! The TGI and Ollama wire formats, byte for byte where the engines fix them; the counters behind
//! `/metrics`; and `--mimic` argv reading. (OpenAI/vLLM shapes: `tests.rs`.)

use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::generation::Limits;
use super::tests::{Cli, json_of, post, start};
use super::*;

/// SSE payloads of a TGI stream: every line is `data:` with no space (axum 0.7).
fn tgi_events(text: &str) -> Vec<&str> {
    text.split_terminator("\n\n")
        .map(|e| e.strip_prefix("data:").filter(|p| !p.starts_with(' ')).unwrap_or_else(|| panic!("{e:?}")))
        .collect()
}

/// An object's keys, sorted (whether `serde_json` keeps insertion order depends on its features).
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn words(value: &Value) -> usize {
    value.as_str().map_or(0, |s| s.split_whitespace().count())
}

/// Bodies whose answers stop at end-of-sequence and run to the limit, one of each.
fn bodies_ending_both_ways(make: impl Fn(usize) -> Value, ends_by_length: impl Fn(&Value) -> bool) -> [Value; 2] {
    let (mut eos, mut length) = (None, None);
    for i in 0..64 {
        let body = make(i);
        let slot = if ends_by_length(&body) { &mut length } else { &mut eos };
        slot.get_or_insert(body);
    }
    [eos.unwrap(), length.unwrap()]
}

#[tokio::test]
async fn tgi_streams_one_event_per_token_and_ends_with_text_and_details() {
    let url = start(&["--api", "tgi", "--model", "org/model", "--tokens-per-chunk", "3", "--seed", "1"]).await;
    let make =
        |i| json!({"inputs": format!("p{i} q r"), "parameters": {"max_new_tokens": 6, "details": true, "seed": 7}});
    let args = Cli::parse_from(["sim", "--api", "tgi", "--seed", "1"]).sim;
    let ends_by_length = |body: &Value| {
        let limits = Limits { max: 6, min: None, ignore_eos: false };
        generation::draw(&args, body.to_string().as_bytes(), 3, limits, 0).length
    };
    for body in bodies_ending_both_ways(make, ends_by_length) {
        let streamed = post(&url, "/generate_stream", &body).await;
        assert_eq!(streamed.headers()["content-type"], "text/event-stream");
        let text = streamed.text().await.unwrap();
        let events: Vec<Value> = tgi_events(&text).iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let (last, tokens) = events.split_last().unwrap();
        for (i, event) in tokens.iter().enumerate() {
            assert_eq!(event["index"], i + 1);
            assert_eq!((&event["generated_text"], &event["details"]), (&Value::Null, &Value::Null));
            assert_eq!(event["token"]["special"], false);
            assert_eq!(keys(event), ["details", "generated_text", "index", "token"]);
        }
        let whole = json_of(post(&url, "/generate", &body).await).await;
        let details = &whole["details"];
        let n = details["generated_tokens"].as_u64().unwrap() as usize;
        assert_eq!(events.len(), n);
        assert_eq!(last["generated_text"], whole["generated_text"]);
        assert_eq!(
            last["details"],
            json!({"finish_reason": details["finish_reason"], "generated_tokens": n,
            "seed": 7, "input_length": 3})
        );
        let streamed_tokens: Vec<&Value> = events.iter().map(|e| &e["token"]).collect();
        assert_eq!(streamed_tokens, details["tokens"].as_array().unwrap().iter().collect::<Vec<_>>());
        assert_eq!(details["prefill"], json!([]));
        let text: String = tokens.iter().map(|e| e["token"]["text"].as_str().unwrap()).collect();
        if details["finish_reason"] == "eos_token" {
            assert_eq!(last["token"]["special"], true);
            assert_eq!((&last["token"]["id"], &last["token"]["text"]), (&json!(2), &json!("</s>")));
            assert_eq!(whole["generated_text"], text.as_str());
        } else {
            assert_eq!(details["finish_reason"], "length");
            assert_eq!(n, 6);
            assert_eq!(whole["generated_text"], text + last["token"]["text"].as_str().unwrap());
        }
    }
    // Without `details`, none; `return_full_text` puts the prompt first; `POST /` is the compat route.
    let body = json!({"inputs": "x y", "parameters": {"max_new_tokens": 2, "return_full_text": true}});
    let whole = json_of(post(&url, "/generate", &body).await).await;
    assert!(whole.get("details").is_none() && whole["generated_text"].as_str().unwrap().starts_with("x y"));
    assert_eq!(json_of(post(&url, "/", &body).await).await, json!([whole]));
}

#[tokio::test]
async fn tgi_chat_repeats_the_role_sends_eos_as_an_empty_delta_then_usage_and_done() {
    let url = start(&["--api", "tgi", "--model", "org/model", "--server-version", "3.1.2"]).await;
    for i in 0..8 {
        let body = json!({"model": "tgi", "messages": [{"role": "user", "content": format!("say {i} now")}],
            "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}});
        let text = post(&url, "/v1/chat/completions", &body).await.text().await.unwrap();
        let mut events = tgi_events(&text);
        assert_eq!(events.pop(), Some("[DONE]"));
        let events: Vec<Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let (usage, chunks) = events.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 3);
        assert_eq!(usage["usage"]["completion_tokens"], chunks.len());
        let last = chunks.last().unwrap();
        for chunk in chunks {
            assert_eq!(
                (&chunk["object"], &chunk["id"], &chunk["model"]),
                (&json!("chat.completion.chunk"), &json!(""), &json!("org/model"))
            );
            assert_eq!(chunk["system_fingerprint"], "3.1.2-native");
            assert_eq!((&chunk["usage"], &chunk["choices"][0]["delta"]["role"]), (&Value::Null, &json!("assistant")));
            let expected_finish =
                if std::ptr::eq(chunk, last) { chunk["choices"][0]["finish_reason"].clone() } else { Value::Null };
            assert_eq!(chunk["choices"][0]["finish_reason"], expected_finish);
        }
        match last["choices"][0]["finish_reason"].as_str().unwrap() {
            "stop" => assert_eq!(last["choices"][0]["delta"]["content"], ""),
            "length" => assert_eq!((chunks.len(), words(&last["choices"][0]["delta"]["content"])), (4, 1)),
            other => panic!("finish_reason {other}"),
        }
    }
    let whole = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let answer = json_of(post(&url, "/v1/chat/completions", &whole).await).await;
    assert_eq!((&answer["object"], &answer["model"]), (&json!("chat.completion"), &json!("org/model")));
    assert_eq!(answer["usage"]["prompt_tokens"], 1);
}

#[tokio::test]
async fn tgi_validates_as_tgi_does_and_reports_info_health_and_metrics() {
    let url = start(&["--api", "tgi", "--model", "org/model", "--max-model-len", "8"]).await;
    let invalid = |what: &str| json!({"error": format!("Input validation error: {what}"), "error_type": "validation"});
    let zero = json!({"inputs": "a", "parameters": {"max_new_tokens": 0}});
    let refused = post(&url, "/generate", &zero).await;
    assert_eq!(refused.status(), 422);
    assert_eq!(json_of(refused).await, invalid("`max_new_tokens` must be strictly positive"));
    // A stream reports it as its one event, with HTTP 200.
    let streamed = post(&url, "/generate_stream", &zero).await;
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(tgi_events(&text)[0]).unwrap(),
        invalid("`max_new_tokens` must be strictly positive")
    );
    let long = json!({"inputs": "a b c d e f", "parameters": {"max_new_tokens": 4}});
    let message = "`inputs` tokens + `max_new_tokens` must be <= 8. Given: 6 `inputs` tokens and 4 `max_new_tokens`";
    assert_eq!(json_of(post(&url, "/generate", &long).await).await, invalid(message));
    let no_inputs = post(&url, "/generate", &json!({"parameters": {}})).await;
    assert_eq!(no_inputs.status(), 422);
    assert!(
        no_inputs
            .text()
            .await
            .unwrap()
            .starts_with("Failed to deserialize the JSON body into the target type: missing field `inputs`")
    );

    let health = reqwest::get(format!("{url}/health")).await.unwrap();
    assert_eq!((health.status().as_u16(), health.text().await.unwrap()), (200, String::new()));
    let info = json_of(reqwest::get(format!("{url}/info")).await.unwrap()).await;
    assert_eq!((&info["model_id"], &info["version"]), (&json!("org/model"), &json!("kitt-sim 0.1.0")));
    assert_eq!((&info["max_input_tokens"], &info["max_total_tokens"]), (&json!(7), &json!(8)));
    assert_eq!(info["router"], "text-generation-router");

    let ok = json!({"inputs": "a b", "parameters": {"max_new_tokens": 3, "details": true}});
    let answer = json_of(post(&url, "/generate", &ok).await).await;
    let generated = answer["details"]["generated_tokens"].as_u64().unwrap();
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        "tgi_request_count 5".to_string(),
        "tgi_request_success 1".into(),
        "tgi_request_failure 4".into(),
        "tgi_batch_current_size 0".into(),
        "tgi_request_input_length_sum 2".into(),
        format!("tgi_request_generated_tokens_sum {generated}"),
        "tgi_request_generated_tokens_count 1".into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn ignore_eos_runs_every_tgi_and_ollama_answer_to_its_limit() {
    let (tgi, ollama) = (
        start(&["--api", "tgi", "--ignore-eos"]).await,
        start(&["--api", "ollama", "--models", "m", "--ignore-eos"]).await,
    );
    for i in 0..8 {
        let body = json!({"inputs": format!("p{i}"), "parameters": {"max_new_tokens": 5, "details": true}});
        let details = json_of(post(&tgi, "/generate", &body).await).await["details"].take();
        assert_eq!((&details["generated_tokens"], &details["finish_reason"]), (&json!(5), &json!("length")));
        let body = json!({"model": "m", "prompt": format!("p{i}"), "stream": false, "options": {"num_predict": 5}});
        let answer = json_of(post(&ollama, "/api/generate", &body).await).await;
        assert_eq!((&answer["eval_count"], &answer["done_reason"]), (&json!(5), &json!("length")));
    }
}

/// The NDJSON lines of an Ollama answer, each parsed.
async fn ndjson(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    assert!(text.ends_with('\n'));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn ollama_streams_ndjson_and_ends_with_counts_and_durations() {
    let url = start(&["--api", "ollama", "--models", "tiny,other:7b", "--server-version", "0.5.1"]).await;
    let body = json!({"model": "tiny", "prompt": "why is the sky blue", "options": {"num_predict": 5}});
    let lines = ndjson(post(&url, "/api/generate", &body).await).await;
    let (last, tokens) = lines.split_last().unwrap();
    for line in tokens {
        assert_eq!(keys(line), ["created_at", "done", "model", "response"]);
        assert_eq!((&line["model"], &line["done"]), (&json!("tiny"), &json!(false)));
        assert!(line["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let text: String = tokens.iter().map(|l| l["response"].as_str().unwrap()).collect();
    assert_eq!((&last["done"], &last["response"]), (&json!(true), &json!("")));
    assert_eq!(last["eval_count"], tokens.len());
    assert_eq!(text.split_whitespace().count(), tokens.len());
    assert_eq!(last["prompt_eval_count"], 5);
    assert_eq!(last["done_reason"], if tokens.len() == 5 { "length" } else { "stop" });
    for field in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(last[field].as_u64().unwrap() > 0, "{field}: {last}");
    }
    assert_eq!(last["context"].as_array().unwrap().len(), 5 + tokens.len());
    // Raw mode has no context; `stream: false` is one object with the whole text.
    let raw = json!({"model": "tiny:latest", "prompt": "a b", "raw": true, "stream": false});
    let answer = post(&url, "/api/generate", &raw).await;
    assert_eq!(answer.headers()["content-type"], "application/json; charset=utf-8");
    let answer = json_of(answer).await;
    assert!(answer.get("context").is_none(), "{answer}");
    assert_eq!((&answer["done"], &answer["model"]), (&json!(true), &json!("tiny:latest")));
    assert_eq!(words(&answer["response"]) as u64, answer["eval_count"].as_u64().unwrap());
    // An empty prompt only loads the model.
    let load = json_of(post(&url, "/api/generate", &json!({"model": "tiny"})).await).await;
    assert_eq!((&load["done"], &load["done_reason"], &load["response"]), (&json!(true), &json!("load"), &json!("")));

    let chat = json!({"model": "other:7b", "messages": [{"role": "user", "content": "hi there"}]});
    let lines = ndjson(post(&url, "/api/chat", &chat).await).await;
    let (last, tokens) = lines.split_last().unwrap();
    assert!(tokens.iter().all(|l| l["message"]["role"] == "assistant" && words(&l["message"]["content"]) == 1));
    assert_eq!(last["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!((&last["eval_count"], &last["prompt_eval_count"]), (&json!(tokens.len()), &json!(2)));
    assert!(last.get("context").is_none());
    let version = json_of(reqwest::get(format!("{url}/api/version")).await.unwrap()).await;
    assert_eq!(version, json!({"version": "0.5.1"}));
    let root = reqwest::get(format!("{url}/")).await.unwrap().text().await.unwrap();
    assert_eq!(root, "Ollama is running");
}

#[tokio::test]
async fn ollama_thinks_first_when_asked_to_reason() {
    let url = start(&["--api", "ollama", "--models", "tiny", "--reasoning-tokens", "2"]).await;
    let body = json!({"model": "tiny", "prompt": "q", "options": {"num_predict": 4}});
    let lines = ndjson(post(&url, "/api/generate", &body).await).await;
    let thinking: Vec<usize> = lines.iter().map(|l| words(&l["thinking"])).collect();
    assert_eq!(thinking[..2], [1, 1]);
    assert!(lines[2..].iter().all(|l| l.get("thinking").is_none()));
    let chat =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "q"}], "think": false, "stream": false});
    let answer = json_of(post(&url, "/api/chat", &chat).await).await;
    assert!(answer["message"].get("thinking").is_none(), "{answer}");
}

#[tokio::test]
async fn ollama_models_must_be_pulled_and_then_are_listed() {
    let url = start(&["--api", "ollama"]).await;
    assert_eq!(json_of(reqwest::get(format!("{url}/api/tags")).await.unwrap()).await, json!({"models": []}));
    let generate = json!({"model": "tinyllama", "prompt": "hi", "stream": false});
    let missing = post(&url, "/api/generate", &generate).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), r#"{"error":"model 'tinyllama' not found"}"#);
    let chat = json!({"model": "tinyllama", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&url, "/api/chat", &chat).await.status(), 404);

    let lines = ndjson(post(&url, "/api/pull", &json!({"model": "TinyLlama"})).await).await;
    let statuses: Vec<&str> = lines.iter().map(|l| l["status"].as_str().unwrap()).collect();
    assert_eq!(statuses[0], "pulling manifest");
    assert!(statuses[1].starts_with("pulling ") && lines[1]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(lines[1]["total"], lines[1]["completed"]);
    assert_eq!(statuses[2..], ["verifying sha256 digest", "writing manifest", "success"]);
    let quiet = json!({"name": "qwen:0.5b", "stream": false});
    assert_eq!(json_of(post(&url, "/api/pull", &quiet).await).await, json!({"status": "success"}));

    let tags = json_of(reqwest::get(format!("{url}/api/tags")).await.unwrap()).await;
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["qwen:0.5b", "TinyLlama:latest"]);
    assert_eq!(tags["models"][1]["details"]["format"], "gguf");
    let answer = post(&url, "/api/generate", &generate).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(json_of(answer).await["done"], true);
    assert_eq!(post(&url, "/api/nope", &json!({})).await.text().await.unwrap(), "404 page not found");
}

/// `name{labels} value` lines of a Prometheus text answer, by full series name.
fn series(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn vllm_metrics_count_exactly_what_was_served() {
    let url = start(&["--model", "m\"q", "--itl-ms", "20"]).await;
    let labels = r#"{model_name="m\"q",engine="0"}"#;
    let (mut prompt, mut generated) = (0.0, 0.0);
    for i in 0..3 {
        let body = json!({"prompt": format!("w{i} x y"), "max_tokens": 2, "stream": i % 2 == 0});
        let answer = post(&url, "/v1/completions", &body).await.text().await.unwrap();
        prompt += 3.0;
        generated += if i % 2 == 0 {
            answer.matches("\"text\":\" w").count()
        } else {
            words(&serde_json::from_str::<Value>(&answer).unwrap()["choices"][0]["text"])
        } as f64;
    }
    // A stream its client abandons counts the tokens it sent, then stops running without succeeding.
    let abandoned = json!({"prompt": "a", "max_tokens": 50, "ignore_eos": true, "stream": true});
    let response = post(&url, "/v1/completions", &abandoned).await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    prompt += 1.0;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE vllm:prompt_tokens_total counter"), "{text}");
    let metrics = series(&text);
    let get = |name: &str| metrics.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} in {text}")).1;
    assert_eq!(get(&format!("vllm:num_requests_running{labels}")), 0.0);
    assert_eq!(get(&format!("vllm:prompt_tokens_total{labels}")), prompt);
    let sent = get(&format!("vllm:generation_tokens_total{labels}")) - generated;
    assert!((1.0..50.0).contains(&sent), "the abandoned stream sent {sent} tokens");
    let success = |reason: &str| {
        get(&format!(r#"vllm:request_success_total{{model_name="m\"q",engine="0",finished_reason="{reason}"}}"#))
    };
    assert_eq!(success("stop") + success("length"), 3.0);
}

fn sim_args(argv: &[&str]) -> Result<SimArgs, clap::Error> {
    Cli::try_parse_from(["sim"].iter().chain(argv)).map(|cli| cli.sim)
}

fn argv(args: &str) -> Vec<String> {
    args.split_whitespace().map(String::from).collect()
}

#[test]
fn mimic_reads_vllm_argv_as_vllm_does() {
    let args = sim_args(&["--mimic", "vllm", "--"]).unwrap();
    let no_env = |_: &str| None;
    let parse = |line: &str| {
        let mut args = args.clone();
        args.engine_args = argv(line);
        resolve(&args, &no_env)
    };
    let served = parse("serve /models/m.gguf --served-model-name a b --port=9001 --max_model_len 8k --enable-prefix-caching --dtype auto --seed -1").unwrap();
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Openai, "0.0.0.0", 9001));
    assert_eq!((served.models, served.root.as_str()), (vec!["a".to_string(), "b".into()], "/models/m.gguf"));
    assert_eq!(served.max_model_len, 8000);
    let flags: Vec<(&str, &str, String)> =
        served.parsed.iter().map(|p| (p.flag.as_str(), p.given.as_str(), p.values.join(" "))).collect();
    assert_eq!(
        &flags[..],
        [
            ("--served-model-name", "--served-model-name", "a b".to_string()),
            ("--port", "--port", "9001".into()),
            ("--max-model-len", "--max_model_len", "8k".into()),
            ("--enable-prefix-caching", "--enable-prefix-caching", String::new()),
            ("--dtype", "--dtype", "auto".into()),
            ("--seed", "--seed", "-1".into()),
        ]
    );
    let unknown = parse("--model /m --max-tokens 9").unwrap_err().to_string();
    assert_eq!(
        unknown,
        "--mimic vllm: `--max-tokens` is not a flag of `vllm serve` (see `vllm serve --help`); drop it or fix its spelling"
    );
    let extra = parse("serve /m /n").unwrap_err().to_string();
    assert_eq!(extra, "--mimic vllm: `/n` is not an argument `vllm serve` takes; only flags follow the model");
    let served = parse("--model /m --host 127.0.0.1 --max-model-len 2K").unwrap();
    assert_eq!((served.models, served.port, served.max_model_len), (vec!["/m".to_string()], 8000, 2048));
    assert_eq!(parse("--port").unwrap_err().to_string(), "--mimic vllm: `--port` needs a value");
    assert_eq!(parse("--port 99999").unwrap_err().to_string(), "--mimic vllm: `--port 99999` is not a port");
}

#[test]
fn mimic_reads_tgi_flags_over_its_environment_and_never_hostname() {
    let mut args =
        sim_args(&["--mimic", "tgi", "--", "--model-id", "/models/x", "-p", "9002", "--num-shard", "2"]).unwrap();
    let env = |name: &str| match name {
        "MODEL_ID" => Some("from-env".to_string()),
        "MAX_TOTAL_TOKENS" => Some("512".into()),
        "HOSTNAME" => Some("container-name".into()),
        _ => None,
    };
    let served = resolve(&args, &env).unwrap();
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Tgi, "0.0.0.0", 9002));
    assert_eq!(
        (served.models, served.max_model_len, served.max_input_tokens),
        (vec!["/models/x".to_string()], 512, 511)
    );
    assert_eq!(
        served.parsed.last().map(|p| (p.flag.as_str(), p.values.as_slice())),
        Some(("--num-shard", &["2".to_string()][..]))
    );
    assert_eq!(
        served.env,
        [("MODEL_ID".to_string(), "from-env".to_string()), ("MAX_TOTAL_TOKENS".into(), "512".into())]
    );
    args.engine_args.clear();
    let served = resolve(&args, &env).unwrap();
    assert_eq!((served.models, served.port), (vec!["from-env".to_string()], 3000));
}

#[test]
fn mimic_ollama_serves_where_ollama_host_says() {
    let args = sim_args(&["--mimic", "ollama", "--models", "a,b", "--", "serve"]).unwrap();
    let served = resolve(&args, &|name| (name == "OLLAMA_HOST").then(|| "127.0.0.1:9003".to_string())).unwrap();
    assert_eq!((served.api, served.host.as_str(), served.port), (SimApi::Ollama, "127.0.0.1", 9003));
    assert_eq!(served.models, ["a", "b"]);
    let served = resolve(&sim_args(&["--mimic", "ollama"]).unwrap(), &|_| None).unwrap();
    assert_eq!((served.host.as_str(), served.port), ("127.0.0.1", 11434));
    let run = sim_args(&["--mimic", "ollama", "--", "run", "x"]).unwrap();
    assert_eq!(
        resolve(&run, &|_| None).unwrap_err().to_string(),
        "--mimic ollama imitates `ollama serve` only, not `ollama run`"
    );
}

#[test]
fn mimic_fixes_the_api_and_the_listen_address() {
    for conflicting in [
        &["--mimic", "vllm", "--port", "1"][..],
        &["--mimic", "tgi", "--model", "m"],
        &["--mimic", "ollama", "--host", "h"],
    ] {
        let error = sim_args(conflicting).err().unwrap();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict, "{error}");
    }
    let error = sim_args(&["--", "--model", "m"]).err().unwrap();
    assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{error}");
    let clash = sim_args(&["--api", "tgi", "--mimic", "vllm"]).unwrap();
    let message = "--mimic vllm implies `--api openai`; drop `--api tgi`";
    assert_eq!(resolve(&clash, &|_| None).unwrap_err().to_string(), message);
    let same = sim_args(&["--api", "openai", "--mimic", "vllm"]).unwrap();
    assert_eq!(resolve(&same, &|_| None).unwrap().api, SimApi::Openai);
    let plain = resolve(&sim_args(&[]).unwrap(), &|_| None).unwrap();
    assert_eq!(
        (plain.api, plain.host.as_str(), plain.port, plain.models),
        (SimApi::Openai, "127.0.0.1", 8000, vec!["sim".to_string()])
    );
}
