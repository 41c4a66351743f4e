//! Warm affinity with real processes: one `lem-worker` (simulated GPU) runs a study
//! whose interleaved order alternates two models, so taking runs in study order would
//! load a model at every run. The worker reports the model its harness holds with
//! each lease and the coordinator grants a run of that model first, within the bound
//! of `lem_common::schedule`: far fewer loads, every run once, and no run started
//! after more than the bound of runs that come after it in study order.

use std::time::Duration;

use lem_common::schedule::MAX_PASSED_OVER;
use lem_tests::{check_exactly_once, describe, run, wait_for};
use serde_json::Value;

use crate::{campaign_id, results_jsonl, start_coordinator, start_worker_with, status_json, COORD};

/// Two models x 4 cycles, interleaved: a, b, a, b, ... with a 3 s load each time a
/// harness loads a model.
const STUDY: &str = "study_name: warm-affinity
task:
  dataset:
    n_prompts: 4
  max_input_tokens: 32
  max_output_tokens: 8
engine: synthetic
serving_mode: offline
measurement:
  baseline:
    duration_seconds: 5
    strategy: cached
offline:
  warmup:
    enabled: false
synthetic:
  engine_params:
    load_seconds: 3
sweep:
  task.model: [synthetic/a, synthetic/b]
study_execution:
  n_cycles: 4
  experiment_order: interleave
";

const N_RUNS: u64 = 8;

/// A run's place in study order, from its `experiment_id` (`CAMPAIGN-SEQ`).
fn study_position(row: &Value) -> u32 {
    let id = row["experiment_id"].as_str().expect("experiment_id");
    id.rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("experiment_id {id} is CAMPAIGN-SEQ"))
}

/// How often a slot running `models` in this order loads one: the first run and
/// every change of model.
fn loads_in(models: &[&str]) -> usize {
    models.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!models.is_empty())
}

#[test]
fn one_worker_loads_each_model_far_less_often_than_study_order_would() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let worker = start_worker_with(dir, &addr, "w", &["--prefill-window-seconds", "0"]);
    let procs = [&coord, &worker];

    let study = dir.join("warm.yaml");
    std::fs::write(&study, STUDY).unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);

    let status = wait_for(
        "the study to finish",
        Duration::from_secs(300),
        &procs,
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == N_RUNS).then_some(s)
        },
    );
    let mut rows = results_jsonl(&id, &["--coordinator", &addr]);
    if let Err(e) = check_exactly_once(&status, &rows, N_RUNS) {
        panic!("{e}");
    }

    // Study order alternates the models: a load at every run.
    rows.sort_by_key(study_position);
    let model = |r: &Value| r["model_name"].as_str().unwrap().to_string();
    let in_study_order: Vec<String> = rows.iter().map(model).collect();
    let refs: Vec<&str> = in_study_order.iter().map(String::as_str).collect();
    assert_eq!(loads_in(&refs), N_RUNS as usize, "{in_study_order:?}");

    // The order the worker ran them in (one slot: one run at a time).
    rows.sort_by_key(|r| r["started_at"].as_str().unwrap().to_string());
    let as_run: Vec<String> = rows.iter().map(model).collect();
    let refs: Vec<&str> = as_run.iter().map(String::as_str).collect();
    let cold: Vec<&Value> = rows
        .iter()
        .filter(|r| r["model_already_loaded"] == false)
        .collect();
    // The harness says what it loaded: exactly at the first run and every change.
    assert_eq!(cold.len(), loads_in(&refs), "{as_run:?}");
    assert!(
        cold.len() <= 3,
        "{} loads for {N_RUNS} runs (study order: {N_RUNS}): {as_run:?}",
        cold.len()
    );
    // A reload is visible: each cold run spent the engine's 3 s loading.
    for r in &cold {
        let load_s = r["model_load_time_sec"].as_f64().unwrap_or(0.0);
        assert!(load_s >= 2.5, "a cold run loads for 3 s: {r}");
    }

    // The bound: no run started after more than MAX_PASSED_OVER runs that come
    // after it in study order.
    let positions: Vec<u32> = rows.iter().map(study_position).collect();
    for (k, &p) in positions.iter().enumerate() {
        let overtaken_by = positions[..k].iter().filter(|&&q| q > p).count();
        assert!(
            overtaken_by <= MAX_PASSED_OVER as usize,
            "run {p} started after {overtaken_by} later runs: order {positions:?}"
        );
    }
}
