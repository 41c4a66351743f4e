//! Multi-GPU hosts with simulated GPUs: a worker with `--gpus 4 --gpu-groups "0,1;2;3"`
//! has a 2-GPU slot and two 1-GPU slots; tensor-parallel-2 runs go only to the 2-GPU
//! slot (their energy the sum of two per-GPU figures), TP-1 runs only to 1-GPU slots,
//! and a worker without a 2-GPU slot never gets a TP-2 run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lem_tests::{check_exactly_once, describe, run, wait_for, Proc};
use serde_json::Value;

use crate::{campaign_id, results_jsonl, start_coordinator, start_worker_with, status_json, COORD};

/// 2 TP sizes x 2 batch sizes x 2 cycles of the synthetic engine.
const STUDY: &str = "study_name: tp-mix
task:
  model: synthetic/tp
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
    load_seconds: 0.2
sweep:
  synthetic.engine_params.tensor_parallel_size: [1, 2]
  synthetic.engine_params.batch_size: [1, 2]
study_execution:
  n_cycles: 2
  experiment_order: interleave
";

/// `lem-coord workers --json` once `n` workers registered.
fn wait_for_workers(addr: &str, n: usize, procs: &[&Proc]) -> Value {
    wait_for(
        "the workers to register",
        Duration::from_secs(60),
        procs,
        || {
            let out = run(COORD, &["workers", "--json", "--coordinator", addr]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v.as_array()?.len() == n).then_some(v)
        },
    )
}

fn submit(dir: &Path, addr: &str, text: &str) -> String {
    let study = dir.join("study.yaml");
    std::fs::write(&study, text).unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    campaign_id(&out.stdout)
}

fn gpu_indices(r: &Value) -> Vec<u64> {
    r["gpu_indices"]
        .as_array()
        .unwrap_or_else(|| panic!("no gpu_indices: {r}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn tp2_runs_run_only_on_the_two_gpu_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let grouped = start_worker_with(
        dir,
        &addr,
        "grouped",
        &["--gpus", "4", "--slots", "auto", "--gpu-groups", "0,1;2;3"],
    );
    let singles = start_worker_with(dir, &addr, "singles", &["--slots", "2"]);
    let all = [&coord, &grouped, &singles];
    let workers = wait_for_workers(&addr, 2, &all);
    let slots_of = |name: &str| -> Vec<Vec<u64>> {
        let w = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker"] == name)
            .unwrap_or_else(|| panic!("{name} registered: {workers}"));
        w["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["gpus"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_u64().unwrap())
                    .collect()
            })
            .collect()
    };
    assert_eq!(slots_of("grouped"), vec![vec![0, 1], vec![2], vec![3]]);
    assert_eq!(slots_of("singles"), vec![vec![0], vec![1]]);

    let id = submit(dir, &addr, STUDY);
    let status = wait_for(
        "all 8 runs to finish",
        Duration::from_secs(300),
        &all,
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == 8).then_some(s)
        },
    );
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    let once = check_exactly_once(&status, &rows, 8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((once.duplicates, once.retried), (0, 0), "{status}");
    let mut tp1_slots = BTreeSet::new();
    for r in &rows {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        let total = r["total_energy_j"].as_f64().unwrap();
        let per_gpu: Vec<f64> = r["gpu_energy_j"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(per_gpu.iter().all(|e| *e > 0.0), "{r}");
        let sum: f64 = per_gpu.iter().sum();
        assert!(
            (sum - total).abs() <= 1e-9 * total.max(1.0),
            "the run's energy is the sum of its GPUs': {r}"
        );
        match r["tp_size"].as_u64().unwrap() {
            2 => {
                assert_eq!(r["worker"], "grouped", "TP-2 only on the 2-GPU slot: {r}");
                assert_eq!(r["slot"], 0, "{r}");
                assert_eq!(gpu_indices(r), vec![0, 1], "{r}");
                assert_eq!(per_gpu.len(), 2, "{r}");
                // Two GPUs idle at about twice one GPU's power.
                let baseline = r["baseline_power_w"].as_f64().unwrap();
                assert!(baseline > 60.0 && baseline < 400.0, "{r}");
            }
            1 => {
                let gpus = gpu_indices(r);
                assert_eq!(gpus.len(), 1, "TP-1 only on 1-GPU slots: {r}");
                assert_eq!(per_gpu.len(), 1, "{r}");
                if r["worker"] == "grouped" {
                    assert!(gpus == [2] || gpus == [3], "{r}");
                    assert_ne!(r["slot"], 0, "{r}");
                }
                tp1_slots.insert((r["worker"].as_str().unwrap().to_string(), gpus[0]));
            }
            other => panic!("unexpected tp_size {other}: {r}"),
        }
    }
    // A TP-2 run's device baseline is the sum over its two GPUs: about twice a
    // single GPU's on the same (simulated) hardware.
    let mean_baseline = |tp: u64| {
        let b: Vec<f64> = rows
            .iter()
            .filter(|r| r["tp_size"] == tp)
            .map(|r| r["baseline_power_w"].as_f64().unwrap())
            .collect();
        b.iter().sum::<f64>() / b.len() as f64
    };
    let ratio = mean_baseline(2) / mean_baseline(1);
    assert!((1.8..2.2).contains(&ratio), "baseline ratio {ratio}");
    assert!(!tp1_slots.is_empty());
}

#[test]
fn tp2_runs_are_blocked_without_a_two_gpu_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let singles = start_worker_with(dir, &addr, "singles", &["--gpus", "2", "--slots", "auto"]);
    let all = [&coord, &singles];
    let workers = wait_for_workers(&addr, 1, &all);
    assert_eq!(
        workers[0]["slots"].as_array().unwrap().len(),
        2,
        "{workers}"
    );
    let study = STUDY
        .replace("tensor_parallel_size: [1, 2]", "tensor_parallel_size: [2]")
        .replace("n_cycles: 2", "n_cycles: 1");
    let id = submit(dir, &addr, &study);
    let s = wait_for(
        "the TP-2 runs to be reported blocked",
        Duration::from_secs(60),
        &all,
        || {
            let s = status_json(&addr, &id)?;
            (!s["blocked"].as_array()?.is_empty()).then_some(s)
        },
    );
    assert_eq!(s["state"], "blocked", "{s}");
    assert_eq!(s["pending"], 2, "{s}");
    assert_eq!(s["running"], 0, "{s}");
    let b = &s["blocked"][0];
    assert_eq!(
        (b["engine"].as_str(), b["tp_size"].as_u64()),
        (Some("synthetic"), Some(2)),
        "{s}"
    );
    let reason = b["reason"].as_str().unwrap();
    assert!(
        reason.contains("2 GPUs") && reason.contains("singles: slots of 1 GPU(s)"),
        "{reason}"
    );
    let args = ["status", &id, "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("blocked: synthetic (TP 2) pending 2 run(s)"),
        "{}",
        describe(&args, &out)
    );
    // Nothing was leased meanwhile: the worker's slots kept asking.
    std::thread::sleep(Duration::from_secs(2));
    let s = status_json(&addr, &id).unwrap();
    assert_eq!(
        (s["pending"].as_u64(), s["done"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
}

#[test]
fn a_worker_with_invalid_gpu_groups_refuses_to_start_naming_the_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--gpus", "4", "--gpu-groups", "0,1;1,2"],
            "GPU 1 is in more than one group",
        ),
        (
            &["--gpus", "2", "--gpu-groups", "0,1;2"],
            "GPU 2 is not visible to this worker (visible: 0, 1)",
        ),
        (
            &["--gpus", "4", "--slots", "3", "--gpu-groups", "0,1;2,3"],
            "--slots 3 but --gpu-groups `0,1;2,3` has 2 group(s)",
        ),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        let mut w = start_worker_with(dir, "127.0.0.1:9", &name, flags);
        let status = w
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{name} still running: {}", w.logs()));
        assert!(!status.success(), "{flags:?}: {}", w.logs());
        assert!(
            w.logs().contains(want),
            "{flags:?}: want {want:?} in {}",
            w.logs()
        );
    }
}
