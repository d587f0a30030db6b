use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::run::journal;

/// An executor whose steps succeed, except those named in `fail` (by kind:label).
struct Fake {
    plan: Plan,
    fail: Vec<String>,
    runs: Mutex<Vec<usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Executor for Fake {
    fn run(self: Arc<Self>, step: usize, _attempt: u32, _cancel: Cancel) -> StepFuture {
        Box::pin(async move {
            let s = &self.plan.steps[step];
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.runs.lock().unwrap().push(step);
            let name = format!("{}:{}", s.kind.name(), self.plan.step_label(s));
            if self.fail.iter().any(|f| f.strip_prefix("panic ") == Some(name.as_str())) {
                panic!("bug in {name}");
            }
            if self.fail.contains(&name) { Err(StepError::new("boom")) } else { Ok(Json::Null) }
        })
    }
    fn restart(self: Arc<Self>, _step: usize, _cancel: Cancel) -> StepFuture {
        Box::pin(async { Ok(Json::Null) })
    }
}

fn plan() -> Plan {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("s.yaml");
    std::fs::write(
        &suite,
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: s}\nspec:\n  models: [{name: m}]\n  engines: [{name: a, template: sim}, {name: b, template: sim}]\n  benchmarks: [{name: t, template: throughput, params: {concurrency: [1, 2, 4]}}]\n",
    )
    .unwrap();
    crate::plan::compile::compile_file(&suite).unwrap()
}

fn options(dir: &std::path::Path) -> Options {
    Options {
        max_parallel: 4,
        retries: 0,
        step_timeout: Duration::from_secs(10),
        on_failure: OnFailure::Continue,
        isolation: Isolation::Host,
        host_lock: dir.join("host.lock"),
        holder: "test".into(),
        kept_failed: HashSet::new(),
        only: None,
    }
}

async fn go(
    fail: &[&str],
    opts_edit: impl FnOnce(&mut Options),
    reused: HashSet<String>,
) -> (Arc<Fake>, Outcome, Vec<journal::Record>) {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake {
        plan: plan(),
        fail: fail.iter().map(|s| s.to_string()).collect(),
        runs: Mutex::new(Vec::new()),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let path = dir.path().join("journal.jsonl");
    let j = Arc::new(Mutex::new(Journal::open(&path, &journal::read(&path).unwrap()).unwrap()));
    let mut opts = options(dir.path());
    opts_edit(&mut opts);
    let out = run(&fake.plan.clone(), fake.clone(), &reused, &opts, j, &Cancel::default()).await;
    let records = journal::read(&path).unwrap().records;
    (fake, out, records)
}

#[tokio::test]
async fn runs_every_step_once_in_dependency_order() {
    let (fake, out, records) = go(&[], |_| {}, HashSet::new()).await;
    let runs = fake.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), fake.plan.steps.len());
    let pos: Vec<usize> = (0..runs.len()).map(|id| runs.iter().position(|r| *r == id).unwrap()).collect();
    for s in &fake.plan.steps {
        for d in &s.deps {
            assert!(pos[*d] < pos[s.id], "step {} ran before its dependency {}", s.id, d);
        }
    }
    assert_eq!(out.failed_cells, 0);
    assert_eq!(records.iter().filter(|r| matches!(r.event, Event::StepFinished { .. })).count(), runs.len());
    // Measuring steps never overlap (host lease), whatever max_parallel allows.
    let mut open = 0;
    for r in &records {
        match &r.event {
            Event::StepStarted { kind, .. } if kind.measures() => {
                open += 1;
                assert_eq!(open, 1, "two measuring steps at once");
            }
            Event::StepFinished { kind, .. } if kind.measures() => open -= 1,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_failed_cell_fails_only_itself_with_continue() {
    let (fake, out, _) = go(&["benchmark:t concurrency=2 run=0"], |_| {}, HashSet::new()).await;
    assert_eq!(out.failed_cells, 2, "the cell fails on both engines");
    let ran_benchmarks =
        fake.runs.lock().unwrap().iter().filter(|id| fake.plan.steps[**id].kind == StepKind::Benchmark).count();
    assert_eq!(ran_benchmarks, 6, "the other cells still ran");
    let collects_failed = out
        .states
        .iter()
        .zip(&fake.plan.steps)
        .filter(|(st, s)| s.kind == StepKind::Collect && **st == State::Failed)
        .count();
    assert_eq!(collects_failed, 2);
}

#[tokio::test]
async fn on_failure_stop_runs_no_further_cells_but_still_stops_engines() {
    let (fake, out, _) =
        go(&["benchmark:t concurrency=1 run=0"], |o| o.on_failure = OnFailure::Stop, HashSet::new()).await;
    let runs = fake.runs.lock().unwrap().clone();
    let benchmarks = runs.iter().filter(|id| fake.plan.steps[**id].kind == StepKind::Benchmark).count();
    assert_eq!(benchmarks, 1);
    let stops = runs.iter().filter(|id| fake.plan.steps[**id].kind == StepKind::Stop).count();
    assert_eq!(stops, 1, "the started engine is stopped; the other never started");
    assert!(out.failed_cells >= 1);
}

#[tokio::test]
async fn a_failed_start_fails_its_cells_and_the_next_engine_still_runs() {
    let (fake, out, _) = go(&["start:a/m"], |_| {}, HashSet::new()).await;
    assert_eq!(out.failed_cells, 3);
    let runs = fake.runs.lock().unwrap().clone();
    let b_benchmarks = runs.iter().filter(|id| {
        let s = &fake.plan.steps[**id];
        s.kind == StepKind::Benchmark && fake.plan.groups[s.group.unwrap()].engine == "b"
    });
    assert_eq!(b_benchmarks.count(), 3);
}

#[tokio::test]
async fn retries_rerun_a_failed_step() {
    let (_, out, records) = go(&["warmup:a/m"], |o| o.retries = 2, HashSet::new()).await;
    let failures = records.iter().filter(|r| matches!(r.event, Event::StepFailed { .. })).count();
    assert_eq!(failures, 3, "first try and two retries");
    assert_eq!(out.failed_cells, 3);
}

#[tokio::test]
async fn reused_cells_are_not_run_and_their_engine_not_started() {
    let p = plan();
    let reused: HashSet<String> = p
        .steps
        .iter()
        .filter(|s| {
            matches!(s.kind, StepKind::Benchmark | StepKind::Collect) && p.groups[s.group.unwrap()].engine == "a"
        })
        .map(|s| s.key.clone())
        .collect();
    let (fake, out, _) = go(&[], |_| {}, reused).await;
    let runs = fake.runs.lock().unwrap().clone();
    assert!(runs.iter().all(|id| { fake.plan.steps[*id].group.is_none_or(|g| fake.plan.groups[g].engine == "b") }));
    assert_eq!(out.states.iter().filter(|s| **s == State::Reused).count(), 6);
}

#[tokio::test]
async fn max_parallel_bounds_running_steps() {
    let (fake, _, _) = go(
        &[],
        |o| {
            o.max_parallel = 1;
            o.isolation = Isolation::None;
        },
        HashSet::new(),
    )
    .await;
    assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panicking_step_is_journaled_as_failed_with_its_message_and_fails_its_cell() {
    let (fake, out, records) = go(&["panic benchmark:t concurrency=2 run=0"], |_| {}, HashSet::new()).await;
    let failed: Vec<&String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::StepFailed { kind: StepKind::Benchmark, error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "one per engine: {failed:?}");
    assert!(failed.iter().all(|e| e.contains("panicked") && e.contains("bug in benchmark")), "{failed:?}");
    assert_eq!(out.failed_cells, 2);
    assert!(!out.states.contains(&State::Running), "no step stays running");
    let stops = fake.runs.lock().unwrap().iter().filter(|id| fake.plan.steps[**id].kind == StepKind::Stop).count();
    assert_eq!(stops, 2, "both engines are still stopped");
}

#[tokio::test]
async fn on_failure_stop_after_a_failed_start_runs_no_further_cell() {
    let (fake, out, records) = go(&["start:a/m"], |o| o.on_failure = OnFailure::Stop, HashSet::new()).await;
    let runs = fake.runs.lock().unwrap().clone();
    let benchmarks = runs.iter().filter(|id| fake.plan.steps[**id].kind == StepKind::Benchmark).count();
    assert_eq!(benchmarks, 0, "engine b's cells are not run either");
    assert_eq!(out.failed_cells, 3, "the failed engine's cells failed; b's were skipped");
    let stopped = records
        .iter()
        .filter(|r| matches!(&r.event, Event::StepSkipped { kind: StepKind::Benchmark, reason, .. } if reason == STOPPED_BY_POLICY))
        .count();
    assert_eq!(stopped, 3);
}

#[tokio::test]
async fn cells_kept_failed_are_not_run_and_still_count_as_failed() {
    let p = plan();
    let kept: HashSet<String> = p
        .steps
        .iter()
        .filter(|s| {
            matches!(s.kind, StepKind::Benchmark | StepKind::Collect) && p.groups[s.group.unwrap()].engine == "a"
        })
        .map(|s| s.key.clone())
        .collect();
    let (fake, out, _) = go(&[], |o| o.kept_failed = kept, HashSet::new()).await;
    let runs = fake.runs.lock().unwrap().clone();
    assert!(runs.iter().all(|id| fake.plan.steps[*id].group.is_none_or(|g| fake.plan.groups[g].engine == "b")));
    assert_eq!(out.failed_cells, 3);
}
