//! `kitt sim --fault` as a process: a `crash` ends the process after a known number of requests,
//! once per state file; and the `sim` template's `faults` param becomes the sim's `--fault` args.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use kitt::engine::sim::{CRASH_EXIT, FaultArg, FaultKind, SimArgs};
use kitt::plan::Mode;
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes one HTTP/1.1 request and reads until the server closes: the response, or `None` when the
/// connection ended without a status line (closed or reset).
fn exchange(port: u16, request: &str) -> Option<String> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    let _ = socket.read_to_end(&mut bytes); // a reset ends the read with what had arrived
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.starts_with("HTTP/1.1 ").then_some(text)
}

fn completion(i: usize) -> String {
    let body = format!(r#"{{"prompt": "request {i}", "max_tokens": 3}}"#);
    format!(
        "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `kitt sim` on a free port with `flags` and `faults` (`KITT_SIM_FAULTS`), once its health check
/// answers.
fn sim(flags: &[&str], faults: &str) -> (Child, u16) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .args(["sim", "--port", &port.to_string()])
        .args(flags)
        .env_remove("KITT_SIM_REQUEST_LOG")
        .env("KITT_SIM_FAULTS", faults)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = "GET /health HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n";
    while !exchange(port, health).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "kitt sim did not become healthy");
        assert!(child.try_wait().unwrap().is_none(), "kitt sim exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn wait(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kitt sim did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn crash_exits_after_after_requests_once_per_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let (state, log) = (dir.path().join("state"), dir.path().join("requests.jsonl"));
    let flags =
        ["--fault", "crash::2", "--fault-state", state.to_str().unwrap(), "--request-log", log.to_str().unwrap()];
    let (mut first, port) = sim(&flags, "");
    for i in 0..2 {
        let answer = exchange(port, &completion(i)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(exchange(port, &completion(2)), None, "the third request gets no answer");
    assert_eq!(wait(&mut first), Some(CRASH_EXIT));
    assert!(state.exists(), "the crash is recorded");
    let lines = log_lines(&log);
    let faults: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/v1/completions").map(|l| &l["fault"]).collect();
    assert_eq!(faults, [&Value::Null, &Value::Null, &Value::from("crash")], "logged before the exit");

    // Restarted with the same state file, it serves on.
    let (mut second, port) = sim(&flags, "");
    for i in 0..5 {
        assert!(exchange(port, &completion(i)).unwrap().starts_with("HTTP/1.1 200"));
    }
    assert!(second.try_wait().unwrap().is_none(), "no second crash");
    let _ = second.kill();
    let _ = second.wait();

    // Without a state file every start crashes (here configured by the environment, as in a container).
    let (mut third, port) = sim(&[], "http_500:0,crash");
    assert_eq!(exchange(port, &completion(0)), None);
    assert_eq!(wait(&mut third), Some(CRASH_EXIT));
}

/// The `sim` engine's argv, as a suite with these engine `params` compiles it.
fn sim_argv(params: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let suite = format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: faults}}\nspec:\n  models: [{{name: m}}]\n  engines: [{{name: s, template: sim, params: {params}}}]\n  benchmarks: [{{name: l, template: latency, params: {{requests: 1}}}}]\n"
    );
    let path = dir.path().join("suite.yaml");
    std::fs::write(&path, suite).unwrap();
    let plan = kitt::plan::compile::compile_file(&path).unwrap_or_else(|e| panic!("{e:#?}"));
    let Mode::Native { argv, .. } = &plan.groups[0].mode else { panic!("sim is a native engine") };
    let port = [("port", Value::from(8000))];
    argv.iter()
        .map(|a| kitt::template::scalar_text(&kitt::template::bind_late(&Value::from(a.as_str()), &port)))
        .collect()
}

fn parse(argv: &[String]) -> SimArgs {
    let argv: Vec<String> = ["kitt".to_string()].into_iter().chain(argv[1..].iter().cloned()).collect();
    match kitt::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command {
        kitt::cli::Command::Sim(args) => args,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_sim_templates_faults_param_becomes_fault_args() {
    let argv = sim_argv("{faults: ['stall:0.2', 'http_429::3'], fault_delay_ms: 50, fault_state: crash.state}");
    assert!(argv.contains(&"--fault=stall:0.2,http_429::3".to_string()), "{argv:?}");
    let args = parse(&argv);
    let kinds: Vec<(FaultKind, u64)> = args.faults.iter().filter_map(|f| f.0).map(|s| (s.kind, s.after)).collect();
    assert_eq!(kinds, [(FaultKind::Stall, 0), (FaultKind::Http429, 3)]);
    assert_eq!((args.fault_delay, args.fault_state.as_str()), (50.0, "crash.state"));

    let plain = parse(&sim_argv("{}"));
    assert_eq!(plain.faults, [FaultArg(None)], "no faults by default");
    assert_eq!(plain.fault_state, "");
}
