//! The walking skeleton end to end: `lem-coord start`, two `lem-worker`s with the
//! simulated GPU, a 12-run synthetic study, every run done exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lem_tests::{describe, repo_root, run, wait_for, Proc};
use serde_json::Value;

use crate::{campaign_id, results_jsonl, start_coordinator, start_worker, status_json, COORD};

#[test]
fn twelve_runs_two_workers_each_run_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let workers: Vec<Proc> = (0..2)
        .map(|i| start_worker(dir, &addr, &format!("w{i}")))
        .collect();
    let all: Vec<&Proc> = std::iter::once(&coord).chain(workers.iter()).collect();

    let study = repo_root().join("tests/fixtures/e2e-12.yaml");
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let id = stdout
        .lines()
        .last()
        .expect("campaign id line")
        .trim()
        .to_string();
    assert!(id.parse::<u64>().is_ok(), "last line is the id: {stdout:?}");

    let status = wait_for(
        "all 12 runs to finish",
        Duration::from_secs(300),
        &all,
        || {
            let s = status_json(&addr, &id)?;
            let finished = s["done"].as_u64()? + s["failed"].as_u64()?;
            (finished == 12).then_some(s)
        },
    );
    assert_eq!(status["total"], 12, "{status}");
    assert_eq!(status["done"], 12, "{status}");
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["running"], 0, "{status}");
    let sum: u64 = ["pending", "running", "done", "failed", "cancelled"]
        .iter()
        .map(|k| status[*k].as_u64().unwrap())
        .sum();
    assert_eq!(
        sum,
        status["total"].as_u64().unwrap(),
        "counts add up: {status}"
    );
    assert_eq!(status["duplicates"], 0, "{status}");

    // Results: one row per run, each (config, cycle) exactly once, energy present.
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    assert_eq!(rows.len(), 12);
    let pairs: BTreeSet<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["config_hash"].as_str().unwrap().to_string(),
                r["cycle"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), 12, "every (config, cycle) once");
    let configs: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["config_hash"].as_str().unwrap())
        .collect();
    assert_eq!(configs.len(), 6);
    for r in &rows {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(
            r["simulated"], true,
            "results from the simulated GPU say so: {r}"
        );
        let total = r["total_energy_j"].as_f64().unwrap();
        let adjusted = r["energy_adjusted_j"].as_f64().unwrap();
        let baseline = r["baseline_power_w"].as_f64().unwrap();
        let seconds = r["total_inference_time_sec"].as_f64().unwrap();
        assert!(total > 0.0 && adjusted >= 0.0 && adjusted <= total, "{r}");
        assert!(
            baseline > 30.0 && baseline < 200.0,
            "idle power is plausible: {r}"
        );
        // Adjusted energy is raw minus baseline power over the window.
        let expected = (total - baseline * seconds).max(0.0);
        assert!((adjusted - expected).abs() < 1e-6 * total.max(1.0), "{r}");
        assert!(r["avg_tokens_per_second"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["avg_energy_per_token_j"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
    }
    // Warm harness: on each worker, every run after its first found the model loaded.
    let mut by_worker: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &rows {
        by_worker
            .entry(r["worker"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    let mut warm_runs = 0;
    for (w, mut runs) in by_worker {
        runs.sort_by_key(|r| r["started_at"].as_str().unwrap().to_string());
        assert_eq!(
            runs[0]["model_already_loaded"], false,
            "first run on {w} loads the model"
        );
        for r in &runs[1..] {
            assert_eq!(
                r["model_already_loaded"], true,
                "later runs on {w} reuse the model: {r}"
            );
            warm_runs += 1;
        }
    }
    assert!(warm_runs >= 10, "12 runs on 2 workers: at least 10 warm");

    // Every run keeps its window's timeseries, exportable as JSON lines.
    let points = crate::results_lines(&id, "timeseries", &["--coordinator", &addr]);
    let runs_with_points: BTreeSet<&str> = points
        .iter()
        .map(|p| p["experiment_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs_with_points.len(), 12, "every run has a timeseries");
    for p in &points {
        assert!(p["power_w"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["t_s"].as_f64().unwrap() >= 0.0, "{p}");
    }

    // CSV has a header and 12 rows.
    let csv_path = dir.join("out/results.csv");
    let args = [
        "results",
        &id,
        "--format",
        "csv",
        "--output",
        csv_path.to_str().unwrap(),
        "--coordinator",
        &addr,
    ];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .starts_with("experiment_id,cycle,config_hash,engine"));

    // Workers are listed.
    let args = ["workers", "--json", "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let ws: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ws.as_array().unwrap().len(), 2, "{ws}");
    drop(workers);
    drop(coord);
}

/// A worker without an engine never leases its runs; `status` says why, and `cancel`
/// ends them.
#[test]
fn runs_of_an_engine_no_worker_has_are_blocked_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let worker = start_worker(dir, &addr, "synthetic-only");
    wait_for(
        "the worker to register",
        Duration::from_secs(60),
        &[&coord, &worker],
        || {
            let out = run(COORD, &["workers", "--json", "--coordinator", &addr]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v.as_array()?.len() == 1).then_some(())
        },
    );
    let study = dir.join("vllm.yaml");
    std::fs::write(
        &study,
        "task:\n  model: Qwen/Qwen2.5-0.5B\nengine: vllm\nserving_mode: offline\nsweep:\n  vllm.engine_params.max_num_seqs: [8, 16]\nstudy_execution:\n  n_cycles: 1\n",
    )
    .unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);
    let s = wait_for(
        "the vllm runs to be reported blocked",
        Duration::from_secs(60),
        &[&coord, &worker],
        || {
            let s = status_json(&addr, &id)?;
            (!s["blocked"].as_array()?.is_empty()).then_some(s)
        },
    );
    assert_eq!(s["pending"], 2, "{s}");
    assert_eq!(s["running"], 0, "{s}");
    assert_eq!(s["state"], "blocked", "{s}");
    let b = &s["blocked"][0];
    assert_eq!(b["engine"], "vllm", "{s}");
    let reason = b["reason"].as_str().unwrap();
    assert!(
        reason.contains("synthetic-only") && reason.contains("vllm"),
        "{reason}"
    );
    // It names the image that has vLLM and the command that gives a worker it.
    assert!(
        reason.contains("docker/engine-images.sh vllm")
            && reason.contains("--image lem-fleet/vllm:0.19.1"),
        "{reason}"
    );
    // The human status says it too.
    let args = ["status", &id, "--coordinator", &addr];
    let out = run(COORD, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("blocked: vllm pending 2 run(s)"),
        "{}",
        describe(&args, &out)
    );
    // Cancel ends them.
    let args = ["cancel", &id, "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let s = status_json(&addr, &id).unwrap();
    assert_eq!(
        (s["cancelled"].as_u64(), s["pending"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    assert_eq!(s["state"], "cancelled", "{s}");
}

#[test]
fn the_studys_own_limits_cut_a_run_and_say_which() {
    // study_execution.experiment_timeout_seconds bounds a run (llem's default 600 s; the
    // worker used a constant before), and stdout_silence_timeout_seconds is a watchdog
    // on the harness's events. A run cut by either fails with the limit and its value.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let worker = crate::start_worker_with(dir, &addr, "w", &["--prefill-window-seconds", "0"]);
    let head = "task:\n  model: synthetic/limits\n  dataset:\n    n_prompts: 1\n  max_input_tokens: 16\n  max_output_tokens: 4\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    enabled: false\noffline:\n  warmup:\n    enabled: false\nsweep: {}\n";
    for (name, body, needle) in [
        (
            "timeout.yaml",
            // Four decoding steps of 1.5 s: the run needs 4.5 s, the study allows 2 s.
            "synthetic:\n  engine_params:\n    load_seconds: 0.1\n    decode_ms_per_step: 1500.0\nstudy_execution:\n  n_cycles: 1\n  experiment_timeout_seconds: 2\n",
            "timeout of 2 s (study_execution.experiment_timeout_seconds)",
        ),
        (
            "silence.yaml",
            // A 4 s model load with nothing said: the study allows 1.5 s of silence.
            "synthetic:\n  engine_params:\n    load_seconds: 4.0\nstudy_execution:\n  n_cycles: 1\n  stdout_silence_timeout_seconds: 1.5\n",
            "sent nothing for 1.5 s (study_execution.stdout_silence_timeout_seconds)",
        ),
    ] {
        let study = dir.join(name);
        std::fs::write(&study, format!("{head}{body}")).unwrap();
        let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
        let out = run(COORD, &args);
        assert!(out.status.success(), "{}", describe(&args, &out));
        let id = campaign_id(&out.stdout);
        let rows = wait_for(
            "the run to fail on the study's limit",
            Duration::from_secs(120),
            &[&coord, &worker],
            || {
                let rows = crate::results_jsonl(&id, &["--coordinator", &addr]);
                let failure = rows[0]["last_failure"].as_str()?.to_string();
                failure.contains(needle).then_some(rows)
            },
        );
        assert_ne!(rows[0]["state"], "done", "{}", rows[0]);
    }
}

#[test]
fn a_campaign_submitted_cold_starts_every_run_cold() {
    // `submit --force-cold-start`: each run's harness is recycled and the model loaded
    // anew, and the result says so (`cold_start`, `model_already_loaded` false, the load
    // time); without it the second run of a model finds it loaded.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let worker = crate::start_worker_with(dir, &addr, "w", &["--prefill-window-seconds", "0"]);
    let study = dir.join("cold.yaml");
    std::fs::write(
        &study,
        "task:\n  model: synthetic/cold\n  dataset:\n    n_prompts: 2\n  max_input_tokens: 16\n  max_output_tokens: 4\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    enabled: false\noffline:\n  warmup:\n    enabled: false\nsynthetic:\n  engine_params:\n    load_seconds: 0.5\nsweep:\n  synthetic.engine_params.batch_size: [1, 2]\nstudy_execution:\n  n_cycles: 1\n",
    )
    .unwrap();
    for (cold, flags) in [(false, vec![]), (true, vec!["--force-cold-start"])] {
        let mut args = vec!["submit", study.to_str().unwrap(), "--coordinator", &addr];
        args.extend(flags);
        let out = run(COORD, &args);
        assert!(out.status.success(), "{}", describe(&args, &out));
        let id = campaign_id(&out.stdout);
        let rows = wait_for(
            "both runs to be done",
            Duration::from_secs(120),
            &[&coord, &worker],
            || {
                let rows = crate::results_jsonl(&id, &["--coordinator", &addr]);
                rows.iter().all(|r| r["state"] == "done").then_some(rows)
            },
        );
        for r in &rows {
            assert_eq!(r["cold_start"], cold, "{r}");
            if cold {
                assert_eq!(r["model_already_loaded"], false, "{r}");
                assert!(r["model_load_time_sec"].as_f64().unwrap() >= 0.4, "{r}");
            }
        }
        if !cold {
            assert_eq!(rows[1]["model_already_loaded"], true, "{}", rows[1]);
        }
    }
}

#[test]
fn a_study_asking_for_remote_code_runs_only_where_the_host_allows_it() {
    remote_code_runs_only_where_allowed(&|dir, addr, name, flags| {
        crate::start_worker_with(dir, addr, name, flags)
    });
}

/// Starts a worker (of either runtime): `(dir, coordinator address, name, flags)`.
pub(crate) type StartWorker<'a> =
    dyn Fn(&std::path::Path, &str, &str, &[&str]) -> lem_tests::Proc + 'a;

/// `passthrough_kwargs: {trust_remote_code: true}` would run a model repository's own
/// Python on every host; the host's policy wins: refused at lease with the reason,
/// unless the worker runs with --trust-remote-code. `start(dir, addr, name, flags)`
/// starts a worker (of either runtime) with `flags`.
pub(crate) fn remote_code_runs_only_where_allowed(start: &StartWorker<'_>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let dir = dir.as_path();
    let (coord, addr) = start_coordinator(dir);
    let study = dir.join("remote.yaml");
    std::fs::write(
        &study,
        "task:\n  model: synthetic/remote\n  dataset:\n    n_prompts: 1\n  max_input_tokens: 16\n  max_output_tokens: 4\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    enabled: false\noffline:\n  warmup:\n    enabled: false\npassthrough_kwargs:\n  trust_remote_code: true\nsweep: {}\nstudy_execution:\n  n_cycles: 1\n",
    )
    .unwrap();
    for (name, flags, done) in [
        ("strict", vec!["--prefill-window-seconds", "0"], false),
        (
            "trusting",
            vec!["--prefill-window-seconds", "0", "--trust-remote-code"],
            true,
        ),
    ] {
        let worker = start(dir, &addr, name, &flags);
        let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
        let out = run(COORD, &args);
        assert!(out.status.success(), "{}", describe(&args, &out));
        let id = campaign_id(&out.stdout);
        let row = wait_for(
            "the run to end",
            Duration::from_secs(120),
            &[&coord, &worker],
            || {
                let rows = crate::results_jsonl(&id, &["--coordinator", &addr]);
                (rows[0]["state"] == "done" || rows[0]["state"] == "failed")
                    .then(|| rows[0].clone())
            },
        );
        if done {
            assert_eq!(row["state"], "done", "{row}");
        } else {
            assert_eq!(row["state"], "failed", "{row}");
            let why = row["last_failure"].as_str().unwrap();
            assert!(
                why.contains("passthrough_kwargs.trust_remote_code")
                    && why.contains("--trust-remote-code")
                    && why.contains("strict"),
                "{why}"
            );
        }
        drop(worker);
    }
}
