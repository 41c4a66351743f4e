//! What a researcher reads after a campaign, on a real campaign: rows that name their
//! swept parameter, `summary` with confidence intervals and flags, `results
//! --aggregate`, and `compare` on two batch sizes. One worker runs the first cycles
//! and stops; a second worker, whose simulated GPU throttles (the simulated GPU's
//! TEST HOOK `LEM_SIMGPU_PARAMS`, also a different environment), runs the rest: its
//! runs must be flagged `throttle_thermal` and each configuration measured on both
//! `environment_drift`, exactly where the rows say so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lem_tests::{check_exactly_once, describe, run, wait_for};
use serde_json::Value;

use crate::{
    campaign_id, results_jsonl, start_coordinator, start_worker, start_worker_env, status_json,
    COORD,
};

const STUDY: &str = "study_name: analysis
task:
  model: synthetic/tiny
  dataset:
    n_prompts: 8
  max_input_tokens: 32
  max_output_tokens: 16
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
    load_seconds: 0.5
sweep:
  synthetic.engine_params.batch_size: [1, 16]
study_execution:
  n_cycles: 3
  experiment_order: interleave
";

const N_RUNS: u64 = 6;
const PARAM: &str = "synthetic.engine_params.batch_size";

fn ok(args: &[&str]) -> String {
    let out = run(COORD, args);
    assert!(out.status.success(), "{}", describe(args, &out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn summary_compare_and_flags_on_a_campaign_measured_by_two_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let mut first = start_worker(dir, &addr, "cool");
    let study = dir.join("analysis.yaml");
    std::fs::write(&study, STUDY).unwrap();
    let id =
        campaign_id(ok(&["submit", study.to_str().unwrap(), "--coordinator", &addr]).as_bytes());
    let connect = ["--coordinator", addr.as_str()];

    // The first worker measures at least the first cycle (one run of each config),
    // then stops after the run it holds.
    wait_for(
        "two runs done",
        Duration::from_secs(240),
        &[&coord, &first],
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? >= 2).then_some(())
        },
    );
    first.signal(libc::SIGTERM);
    assert!(
        first.wait_exit(Duration::from_secs(120)).is_some(),
        "the first worker did not stop"
    );
    let hot = start_worker_env(
        dir,
        &addr,
        "hot",
        &[],
        &[("LEM_SIMGPU_PARAMS", r#"{"throttle_c": 0}"#)],
    );
    let status = wait_for(
        "the campaign to finish",
        Duration::from_secs(300),
        &[&coord, &hot],
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? == N_RUNS).then_some(s)
        },
    );

    let rows = results_jsonl(&id, &connect);
    check_exactly_once(&status, &rows, N_RUNS).unwrap();
    // Every row names its batch size, as the study does.
    let batches: BTreeSet<i64> = rows
        .iter()
        .map(|r| r[PARAM].as_i64().expect(PARAM))
        .collect();
    assert_eq!(batches, BTreeSet::from([1, 16]));
    let on_hot = rows.iter().filter(|r| r["worker"] == "hot").count();
    assert!(
        (1..=4).contains(&on_hot),
        "{on_hot} run(s) on the hot worker"
    );
    for r in &rows {
        let flags: Vec<&str> = r["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(
            flags.contains(&"throttle_thermal"),
            r["worker"] == "hot",
            "{} on {}: {flags:?}",
            r["experiment_id"],
            r["worker"]
        );
    }

    // The summary: a config is flagged environment_drift exactly where its runs came
    // from both workers, and counts the throttled runs.
    let summary: Value =
        serde_json::from_str(&ok(&["summary", &id, "--json", "--coordinator", &addr])).unwrap();
    let configs = summary["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 2);
    let mut by_hash: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in &rows {
        by_hash
            .entry(r["config_hash"].as_str().unwrap())
            .or_default()
            .push(r);
    }
    let mut drifted = 0;
    for c in configs {
        let runs = &by_hash[c["config_hash"].as_str().unwrap()];
        let envs: BTreeSet<&str> = runs
            .iter()
            .map(|r| r["environment_hash"].as_str().unwrap())
            .collect();
        let drift = c["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["flag"] == "environment_drift");
        assert_eq!(drift, envs.len() > 1, "{c}");
        drifted += usize::from(drift);
        let hot_runs = runs.iter().filter(|r| r["worker"] == "hot").count();
        assert_eq!(
            c["run_flags"]["throttle_thermal"].as_u64().unwrap_or(0),
            hot_runs as u64,
            "{c}"
        );
        let s = &c["metrics"]["energy_per_token_adjusted_j"];
        assert_eq!(s["n"], 3);
        assert!(s["ci95_low"].as_f64().unwrap() <= s["mean"].as_f64().unwrap());
        assert!(s["mean"].as_f64().unwrap() <= s["ci95_high"].as_f64().unwrap());
    }
    assert!(
        drifted >= 1,
        "the hot worker ran a config the cool one also ran"
    );
    // Best first: batch 16 spends less per token.
    assert_eq!(configs[0]["params"][0][1], 16);
    let table = ok(&["summary", &id, "--coordinator", &addr]);
    for needle in [
        "batch_size",
        "[95% CI]",
        "environment_drift: ",
        "throttle_thermal: ",
        "SIMULATED",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }

    // One row per config in the aggregate export.
    let csv = ok(&[
        "results",
        &id,
        "--aggregate",
        "--format",
        "csv",
        "--coordinator",
        &addr,
    ]);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.lines().next().unwrap().contains(PARAM));

    // compare: batch 16 against batch 1 is better per token, with an interval.
    let a = format!("{id}:batch_size=1");
    let b = format!("{id}:batch_size=16");
    let cmp = ok(&["compare", &a, &b, "--coordinator", &addr]);
    assert!(
        cmp.contains("verdict on energy_per_token_adjusted_j: B is better than A"),
        "{cmp}"
    );
    let cmp: Value =
        serde_json::from_str(&ok(&["compare", &a, &b, "--json", "--coordinator", &addr])).unwrap();
    let d = &cmp[0]["differences"][0];
    assert_eq!(d["verdict"], "better");
    assert!(d["ci95_high"].as_f64().unwrap() < 0.0, "{d}");

    // Edges: an unknown campaign and a selector that matches nothing name what to fix.
    let out = run(COORD, &["summary", "99", "--coordinator", &addr]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("99"),
        "{}",
        describe(&["summary", "99"], &out)
    );
    let none = format!("{id}:batch_size=3");
    let out = run(COORD, &["compare", &a, &none, "--coordinator", &addr]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe(&["compare"], &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_size=16"));
}
