//! Multi-GPU hosts with simulated GPUs: a worker with `--gpus 4 --gpu-groups "0,1;2;3"`
//! has a 2-GPU slot and two 1-GPU slots; tensor-parallel-2 runs go only to the 2-GPU
//! slot (their energy the sum of two per-GPU figures), TP-1 runs only to 1-GPU slots,
//! and a worker without a 2-GPU slot never gets a TP-2 run. A worker with
//! `--gpu-groups dynamic` forms each run's group from its free GPUs: TP-1 runs side
//! by side, a TP-4 run on all four once the runs before it end, never overtaken.

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

/// `status --json` of campaign `id` once `ready` says so (`None`: not yet either).
fn wait_for_status(
    what: &str,
    (addr, id): (&str, &str),
    timeout: Duration,
    procs: &[&Proc],
    ready: impl Fn(&Value) -> Option<bool>,
) -> Value {
    wait_for(what, timeout, procs, || {
        let s = status_json(addr, id)?;
        ready(&s)?.then_some(s)
    })
}

/// `status --json` of campaign `id` once its `n` runs have finished.
fn wait_for_finished(addr: &str, id: &str, n: u64, timeout: Duration, procs: &[&Proc]) -> Value {
    let what = format!("all {n} runs to finish");
    wait_for_status(&what, (addr, id), timeout, procs, |s| {
        Some(s["done"].as_u64()? + s["failed"].as_u64()? == n)
    })
}

/// A coordinator and a worker `name` whose `gpus` simulated GPUs form a dynamic
/// pool (no --slots: the pool takes every GPU); returns them, the address and the
/// registered workers.
fn start_pool(dir: &Path, name: &str, gpus: &str) -> ([Proc; 2], String, Value) {
    let (coord, addr) = start_coordinator(dir);
    let pool = start_worker_with(
        dir,
        &addr,
        name,
        &["--gpus", gpus, "--gpu-groups", "dynamic"],
    );
    let workers = wait_for_workers(&addr, 1, &[&coord, &pool]);
    ([coord, pool], addr, workers)
}

fn submit(dir: &Path, addr: &str, text: &str) -> String {
    let study = dir.join("study.yaml");
    std::fs::write(&study, text).unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    campaign_id(&out.stdout)
}

/// A result's per-GPU energies, checked: each positive, their sum the run's total.
fn gpu_energies(r: &Value) -> Vec<f64> {
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
    per_gpu
}

/// The mean device baseline of the runs of `tp` GPUs.
fn mean_baseline(rows: &[Value], tp: u64) -> f64 {
    let b: Vec<f64> = rows
        .iter()
        .filter(|r| r["tp_size"] == tp)
        .map(|r| r["baseline_power_w"].as_f64().unwrap())
        .collect();
    b.iter().sum::<f64>() / b.len() as f64
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
    let status = wait_for_finished(&addr, &id, 8, Duration::from_secs(300), &all);
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    let once = check_exactly_once(&status, &rows, 8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((once.duplicates, once.retried), (0, 0), "{status}");
    let mut tp1_slots = BTreeSet::new();
    for r in &rows {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        let per_gpu = gpu_energies(r);
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
    let ratio = mean_baseline(&rows, 2) / mean_baseline(&rows, 1);
    assert!((1.8..2.2).contains(&ratio), "baseline ratio {ratio}");
    assert!(!tp1_slots.is_empty());
    // The timeseries of a TP-2 run: the group's power at each point is the sum of
    // its two GPUs' (rounded to the mW); a TP-1 run's has no per-GPU part.
    let points = crate::results_lines(&id, "timeseries", &["--coordinator", &addr]);
    let tp_of = |id: &Value| {
        rows.iter()
            .find(|r| r["experiment_id"] == *id)
            .map(|r| r["tp_size"].as_u64().unwrap())
            .unwrap()
    };
    let (mut grouped_points, mut single_points) = (0, 0);
    for p in &points {
        match tp_of(&p["experiment_id"]) {
            2 => {
                let per = p["per_gpu"].as_array().unwrap_or_else(|| panic!("{p}"));
                let gpus: Vec<u64> = per.iter().map(|g| g["gpu"].as_u64().unwrap()).collect();
                assert_eq!(gpus, [0, 1], "{p}");
                let sum: f64 = per.iter().map(|g| g["power_w"].as_f64().unwrap()).sum();
                let total = p["power_w"].as_f64().unwrap();
                assert!((sum - total).abs() < 0.01, "{p}");
                grouped_points += 1;
            }
            _ => {
                assert!(p.get("per_gpu").is_none(), "{p}");
                single_points += 1;
            }
        }
    }
    assert!(
        grouped_points > 0 && single_points > 0,
        "{grouped_points} {single_points}"
    );
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

/// [`STUDY`]'s task, measurement and engine settings with runs of a few seconds (8
/// decode steps of 150 ms per batch) in the study order TP 1, 1, 1, 4, 1, 2, 2, 1
/// (sequential, one cycle): three TP-1 runs can start together, then the TP-4 run
/// needs the whole pool while TP-1 and TP-2 runs wait behind it.
fn dynamic_study() -> String {
    let (settings, _sweep) = STUDY.split_once("sweep:").unwrap();
    let settings = settings.replace("study_name: tp-mix", "study_name: tp-dynamic");
    let runs: String = [(1, 1), (1, 2), (1, 4), (4, 1), (1, 3), (2, 1), (2, 2), (1, 5)]
        .iter()
        .map(|(tp, batch)| {
            format!(
                "  - synthetic: {{engine_params: {{tensor_parallel_size: {tp}, batch_size: {batch}}}}}\n"
            )
        })
        .collect();
    format!(
        "{settings}    decode_ms_per_step: 150\nexperiments:\n{runs}study_execution:\n  n_cycles: 1\n  experiment_order: sequential\n"
    )
}

/// A result's `(started_at, ended_at)`: UTC text of one fixed width, so it orders
/// as time does.
fn window(r: &Value) -> (String, String) {
    let t = |k: &str| {
        r[k].as_str()
            .unwrap_or_else(|| panic!("no {k}: {r}"))
            .to_string()
    };
    (t("started_at"), t("ended_at"))
}

#[test]
fn a_dynamic_pool_forms_each_runs_group_from_its_free_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (procs, addr, workers) = start_pool(dir, "pool", "4");
    let slots = workers[0]["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 1, "{workers}");
    assert_eq!(slots[0]["dynamic"], true, "{workers}");
    assert_eq!(
        slots[0]["gpus"],
        serde_json::json!([0, 1, 2, 3]),
        "{workers}"
    );

    let id = submit(dir, &addr, &dynamic_study());
    let status = wait_for_finished(&addr, &id, 8, Duration::from_secs(400), &procs.each_ref());
    let mut rows = results_jsonl(&id, &["--coordinator", &addr]);
    let once = check_exactly_once(&status, &rows, 8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((once.duplicates, once.retried), (0, 0), "{status}");
    // Study order.
    rows.sort_by(|a, b| {
        a["experiment_id"]
            .as_str()
            .cmp(&b["experiment_id"].as_str())
    });
    let tps: Vec<u64> = rows
        .iter()
        .map(|r| r["tp_size"].as_u64().unwrap())
        .collect();
    assert_eq!(tps, [1, 1, 1, 4, 1, 2, 2, 1]);
    for r in &rows {
        assert_eq!(
            (r["state"].as_str(), r["attempts"].as_u64()),
            (Some("done"), Some(1)),
            "{r}"
        );
        let gpus = gpu_indices(r);
        let distinct: BTreeSet<u64> = gpus.iter().copied().collect();
        assert_eq!(distinct.len() as u64, r["tp_size"].as_u64().unwrap(), "{r}");
        assert!(gpus.iter().all(|g| *g < 4), "{r}");
        assert_eq!(gpu_energies(r).len(), gpus.len(), "{r}");
    }
    assert_eq!(gpu_indices(&rows[3]), vec![0, 1, 2, 3], "{}", rows[3]);
    // No two runs whose windows overlap share a GPU.
    let windows: Vec<(String, String)> = rows.iter().map(window).collect();
    let overlap = |i: usize, j: usize| windows[i].0 < windows[j].1 && windows[j].0 < windows[i].1;
    let mut tp1_side_by_side = false;
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            if !overlap(i, j) {
                continue;
            }
            let (a, b) = (gpu_indices(&rows[i]), gpu_indices(&rows[j]));
            assert!(
                a.iter().all(|g| !b.contains(g)),
                "runs {} and {} overlap in time on a GPU: {} {}",
                i + 1,
                j + 1,
                rows[i],
                rows[j]
            );
            tp1_side_by_side |= tps[i] == 1 && tps[j] == 1;
        }
    }
    assert!(
        tp1_side_by_side,
        "no two TP-1 runs ran at once: {windows:?}"
    );
    // The TP-4 run is not starved: the runs before it in study order had ended when
    // it started, and none behind it started before it ended.
    let tp4 = &windows[3];
    assert!(windows[..3].iter().all(|w| w.1 <= tp4.0), "{windows:?}");
    assert!(windows[4..].iter().all(|w| w.0 >= tp4.1), "{windows:?}");
    // A group's device baseline is the sum over its GPUs: about k times one GPU's.
    for tp in [2, 4] {
        let ratio = mean_baseline(&rows, tp) / mean_baseline(&rows, 1);
        let k = tp as f64;
        assert!(
            ratio > 0.9 * k && ratio < 1.1 * k,
            "TP-{tp} baseline ratio {ratio}"
        );
    }
}

#[test]
fn a_dynamic_pool_hosts_runs_up_to_its_size_and_larger_ones_are_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (procs, addr, _) = start_pool(dir, "pool2", "2");
    let study = STUDY
        .replace(
            "tensor_parallel_size: [1, 2]",
            "tensor_parallel_size: [4, 2]",
        )
        .replace("n_cycles: 2", "n_cycles: 1");
    let id = submit(dir, &addr, &study);
    let s = wait_for_status(
        "the TP-4 runs to be reported blocked",
        (&addr, &id),
        Duration::from_secs(60),
        &procs.each_ref(),
        |s| Some(!s["blocked"].as_array()?.is_empty()),
    );
    // Only the TP-4 runs: the 2-GPU pool hosts the TP-2 ones.
    let blocked = s["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{s}");
    assert_eq!(
        (
            blocked[0]["tp_size"].as_u64(),
            blocked[0]["pending"].as_u64()
        ),
        (Some(4), Some(2)),
        "{s}"
    );
    let reason = blocked[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("4 GPUs")
            && reason.contains("pool2: a dynamic pool of 2 GPU(s) (TP 1 to 2)"),
        "{reason}"
    );
    // The TP-4 runs, first in study order, do not hold the pool's TP-2 runs back:
    // they are not the pool's to wait for.
    let s = wait_for_status(
        "a TP-2 run to be leased",
        (&addr, &id),
        Duration::from_secs(60),
        &procs.each_ref(),
        |s| Some(s["running"].as_u64()? + s["done"].as_u64()? > 0),
    );
    assert_eq!(
        s["blocked"][0]["pending"], 2,
        "the TP-4 runs are untouched: {s}"
    );
}

/// `lem-coord run --gpu-groups dynamic`: the one-machine command runs a study with
/// tensor-parallel runs on one local worker whose simulated GPUs form a pool.
#[test]
fn lem_coord_run_with_a_dynamic_pool_runs_tensor_parallel_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let study = dir.join("tp.yaml");
    // STUDY's 8 runs, one cycle: 4 runs, 2 of them TP 2.
    std::fs::write(&study, STUDY.replace("n_cycles: 2", "n_cycles: 1")).unwrap();
    let data = dir.join("lem-data");
    let args = [
        "run",
        study.to_str().unwrap(),
        "--simulate-gpu",
        "--gpu-groups",
        "dynamic",
        "--local-workers",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("one local worker with 2 simulated GPUs and --gpu-groups dynamic"),
        "{stderr}"
    );
    let rows = lem_tests::parse_jsonl(
        &std::fs::read(data.join("campaign-1").join("results.jsonl")).unwrap(),
    )
    .unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r["state"], "done", "{r}");
        let tp = r["tp_size"].as_u64().unwrap();
        let gpus = gpu_indices(r);
        assert_eq!(gpus.len() as u64, tp, "{r}");
        if tp == 2 {
            assert_eq!(gpus, [0, 1], "{r}");
        }
    }
}
