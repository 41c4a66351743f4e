//! Writes the fixtures that pin the flat result of protocol 4 (lem fleet before the
//! nested result model): a fully populated `RunResult` and a sparse one as their JSON
//! (what manifests, worker journals and protocol-4 workers hold), and what every export
//! made of them. Run once, with the flat `RunResult`, by
//! `LEM_WRITE_FLAT_FIXTURES=1 cargo test -p lem-coord --test old_result_fixture`; the
//! nested model's tests read them back.

use std::path::{Path, PathBuf};

use lem_common::rpc::{CampaignStatus, RunRow};
use lem_common::types::{
    BaselineRecord, CampaignId, ForeignProcess, GpuFigures, RunKey, RunResult,
};
use lem_coord::export::{summary_table, timeseries_jsonl, to_csv, to_jsonl, Table};
use lem_coord::llem_export::{write_bundle, CampaignInfo};
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/tests/fixtures")
}

fn baseline(kind: &str, w: f64) -> BaselineRecord {
    BaselineRecord {
        kind: kind.into(),
        mean_power_w: w,
        std_power_w: w / 100.0,
        n_samples: 301,
        duration_s: 30.5,
        settle_s: 2.25,
        temp_c: 38.5,
        sm_clock_mhz: Some(345),
        pstate: Some(8),
        strategy: "validated".into(),
        cache_age_s: 12.5,
        measured_at: "2026-11-25T09:58:00.250Z".into(),
    }
}

/// Every field set, each to a value no other field has, so a value that lands in the
/// wrong place cannot go unnoticed.
fn full() -> RunResult {
    RunResult {
        worker: "worker-a".into(),
        host: "gpu-host-1".into(),
        slot: 3,
        gpu_name: "NVIDIA H100 80GB HBM3".into(),
        gpu_uuid: "GPU-00000000-0000-0000-0000-000000000001".into(),
        simulated: true,
        engine: "vllm".into(),
        engine_version: Some("0.10.1".into()),
        model_name: "Qwen/Qwen2.5-0.5B".into(),
        started_at: "2026-11-25T10:00:00.125Z".into(),
        ended_at: "2026-11-25T10:00:13.500Z".into(),
        n_prompts: 16,
        input_tokens: 1237,
        output_tokens: 811,
        duration_s: 12.75,
        total_energy_j: 2413.7,
        energy_method: "counter_interpolated".into(),
        energy_integral_j: Some(2423.35),
        energy_counter_raw_j: Some(2413.4),
        energy_disagreement_pct: Some(0.41),
        energy_disagreement_flagged: true,
        energy_uncertainty_j: Some(0.62),
        energy_uncertainty_flagged: true,
        energy_edge_rule: Some("step_carry".into()),
        energy_edges: json!({
            "start": {"rule": "step_carry", "carry_j": 0.11, "power_w": 180.5, "uncertainty_j": 0.4, "updates": 3},
            "end": {"rule": "quiet", "carry_j": 0.02, "power_w": 121.0, "uncertainty_j": 0.47, "updates": 5}
        }),
        quiet_power_w: Some(121.25),
        window_start_mono_ns: 1_000_000_123,
        window_end_mono_ns: 13_750_000_456,
        gpu_shared: true,
        gpu_foreign_processes: vec![
            ForeignProcess {
                pid: 4242,
                gpu_index: 0,
                used_memory_mb: Some(512),
                name: Some("python3".into()),
                seen: "baseline".into(),
            },
            ForeignProcess {
                pid: 77,
                gpu_index: 1,
                used_memory_mb: None,
                name: None,
                seen: "window".into(),
            },
        ],
        short_window: true,
        mean_power_w: 189.31,
        n_power_samples: 255,
        energy_adjusted_j: Some(1629.575),
        energy_adjusted_clamped: true,
        baseline_power_w: Some(61.5),
        baseline: Some(baseline("device", 61.5)),
        avg_tokens_per_second: 160.627,
        output_tokens_per_second: 63.608,
        avg_energy_per_token_j: 2.9762,
        energy_per_token_adjusted_j: Some(2.0094),
        start_temp_c: 41.5,
        max_temp_c: 67.5,
        end_temp_c: 63.25,
        thermal_wait_s: 4.2,
        thermal_wait_reason: "timeout".into(),
        throttle_thermal: true,
        model_load_seconds: Some(3.25),
        model_already_loaded: true,
        cold_start: true,
        gpu_memory_before_mb: Some(20_480),
        gpu_memory_after_mb: Some(25_600),
        harness_recycled: Some("GPU memory ended at 25600 MiB, 5120 MiB above the 20480 MiB held after the model was loaded (threshold 4096 MiB, lem-worker --recycle-memory-growth-mb): the harness was recycled after the run".into()),
        lease_to_measure_s: 9.5,
        harness_metrics: json!({
            "n_prompts": 16, "input_tokens": 1237, "output_tokens": 811,
            "inference_seconds": 12.75, "batches": 4, "batch_size": 4,
            "input_token_lengths": {"min": 17, "max": 63, "mean": 37.2, "p50": 32.0, "p95": 61.25},
            "output_token_lengths": {"min": 8, "max": 64, "mean": 50.7, "p50": 52.0, "p95": 63.0},
            "ttft_ms": {"mean": 1.63, "median": 1.7, "p95": 1.77, "p99": 1.77, "min": 1.43, "max": 1.78, "samples": 16},
            "itl_ms": {"mean": 2.49, "median": 2.5, "p95": 2.57, "p99": 2.6, "samples": 112},
            "itl_measurement_mode": "proportional",
            "latency_estimated": true,
            "engine_versions": {"vllm": "0.10.1", "torch": "2.7.1"}
        }),
        warmup: json!({
            "converged": true, "final_cv": 0.021, "iterations_completed": 5,
            "target_cv": 0.05, "max_prompts": 5, "latencies_ms": [410.0, 395.5, 392.0, 390.25, 391.0],
            "thermal_floor_seconds": 60.0, "thermal_floor_requested_seconds": 60.0
        }),
        environment: json!({
            "host": {"cpu_model": "AMD EPYC 9454", "cpu_cores": 96, "kernel": "6.8.0",
                     "harness_image": {"name": "lem-harness:vllm", "id": "sha256:0123abcd"}},
            "gpu": {"name": "NVIDIA H100 80GB HBM3", "mig_enabled": true, "driver": "570.86.15"},
            "engine_versions": {"vllm": "0.10.1", "torch": "2.7.1"}
        }),
        environment_hash: "9f8e7d6c5b4a3921".into(),
        resident_baseline: Some(baseline("resident", 118.75)),
        energy_adjusted_resident_j: Some(867.6),
        energy_adjusted_resident_source: Some("quiet".into()),
        energy_adjusted_resident_uncertainty_j: Some(1.9),
        prefill_window_energy_j: Some(351.5),
        prefill_window_s: Some(2.125),
        prefill_calls: 6,
        prefill_passes: 4,
        prefill_energy_per_call_j: Some(58.58),
        prefill_energy_j: Some(87.875),
        decode_energy_j: Some(2325.825),
        prefill_energy_adjusted_j: Some(55.2),
        decode_energy_adjusted_j: Some(1574.375),
        timeseries: json!({
            "t_s": [0.0, 6.375, 12.75],
            "power_w": [180.0, 190.5, 185.25],
            "temp_c": [41.5, 67.5, 63.25],
            "sm_clock_mhz": [1980, 1755, 1830],
            "per_gpu": [
                {"index": 0, "power_w": [90.0, 95.25, 92.5], "temp_c": [41.5, 67.5, 63.25], "sm_clock_mhz": [1980, 1755, 1830]},
                {"index": 1, "power_w": [90.0, 95.25, 92.75], "temp_c": [40.0, 66.0, 62.0], "sm_clock_mhz": [1980, 1770, 1845]}
            ]
        }),
        sm_clock_min_mhz: 1755,
        sm_clock_max_mhz: 1980,
        throttle_power: true,
        hw_slowdown: true,
        sample_interval_ms: 50.5,
        sampler_mean_late_us: 120.25,
        sampler_max_late_us: 950.75,
        warnings: vec![
            "energy counter and power integral disagree by 12.0%".into(),
            "thermal gate timed out after 300 s: the GPU was still cooling".into(),
        ],
        gpu_indices: vec![2, 5],
        gpus: vec![
            GpuFigures {
                index: 2,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-00000000-0000-0000-0000-000000000001".into(),
                total_energy_j: 1206.5,
                energy_method: "counter_interpolated".into(),
                energy_integral_j: Some(1211.0),
                energy_counter_raw_j: Some(1206.25),
                mean_power_w: 94.625,
                baseline_power_w: Some(30.5),
                resident_baseline_power_w: Some(59.25),
                max_temp_c: 67.5,
            },
            GpuFigures {
                index: 5,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-00000000-0000-0000-0000-000000000005".into(),
                total_energy_j: 1207.2,
                energy_method: "power_integral".into(),
                energy_integral_j: Some(1212.35),
                energy_counter_raw_j: None,
                mean_power_w: 94.685,
                baseline_power_w: Some(31.0),
                resident_baseline_power_w: Some(59.5),
                max_temp_c: 66.0,
            },
        ],
    }
}

/// A run as a worker without baselines or a prefill window reports it: every optional
/// figure absent.
fn sparse() -> RunResult {
    RunResult {
        worker: "worker-b".into(),
        host: "gpu-host-2".into(),
        slot: 0,
        gpu_name: "Simulated GPU".into(),
        gpu_uuid: "SIM-0".into(),
        simulated: true,
        engine: "synthetic".into(),
        model_name: "synthetic/tiny-llama".into(),
        started_at: "2026-11-25T11:00:00.000Z".into(),
        ended_at: "2026-11-25T11:00:03.000Z".into(),
        n_prompts: 4,
        input_tokens: 100,
        output_tokens: 40,
        duration_s: 2.0,
        total_energy_j: 400.25,
        energy_method: "power_integral".into(),
        mean_power_w: 200.125,
        n_power_samples: 40,
        avg_tokens_per_second: 70.0,
        output_tokens_per_second: 20.0,
        avg_energy_per_token_j: 10.00625,
        start_temp_c: 40.0,
        max_temp_c: 45.0,
        end_temp_c: 44.0,
        thermal_wait_reason: "no_gap".into(),
        sm_clock_min_mhz: 1400,
        sm_clock_max_mhz: 1410,
        sample_interval_ms: 50.0,
        warnings: vec![
            "measurement.baseline.enabled is false: energy_adjusted_j is not reported".into(),
        ],
        gpu_indices: vec![0],
        ..Default::default()
    }
}

fn rows() -> Vec<RunRow> {
    [full(), sparse()]
        .into_iter()
        .enumerate()
        .map(|(i, r)| RunRow {
            run: RunKey {
                campaign: CampaignId(9),
                seq: i as u32,
            },
            config_hash: format!("{:016x}", 0x5eed_0000 + i as u64),
            cycle: 1,
            engine: r.engine.clone(),
            state: "done".into(),
            attempts: 1,
            config_json: format!(
                r#"{{"task": {{"model": "{}"}}, "engine": "{}", "{}": {{"engine_params": {{"batch_size": {}}}}}}}"#,
                r.model_name,
                r.engine,
                r.engine,
                4 + i
            ),
            result: Some(r),
            last_failure: None,
        })
        .collect()
}

/// What every export makes of the fixture rows.
pub fn exports(rows: &[RunRow]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let info = CampaignInfo {
        campaign: 9,
        study_name: Some("fixture".into()),
        study_design_hash: "0123456789abcdef".into(),
        submitted_at: "2026-11-25T09:55:00.000Z".into(),
        state: "done".into(),
        study_text: None,
    };
    let bundle = write_bundle(dir.path(), &info, rows).unwrap();
    let mut llem = serde_json::Map::new();
    for f in &bundle.result_files {
        let run_dir = f.parent().unwrap();
        for name in ["result.json", "config.json", "system.json", "fleet.json"] {
            let key = format!("{}/{name}", run_dir.file_name().unwrap().to_string_lossy());
            llem.insert(
                key,
                json!(std::fs::read_to_string(run_dir.join(name)).unwrap()),
            );
        }
    }
    let aggs = lem_common::aggregate::aggregate_rows(rows);
    json!({
        "jsonl": to_jsonl(rows),
        "csv": to_csv(rows),
        "timeseries": timeseries_jsonl(rows),
        "aggregate_csv": Table::aggregate(&aggs).to_csv(),
        "summary": summary_table(rows),
        "aggregate": serde_json::to_value(&aggs).unwrap(),
        "validate": rows
            .iter()
            .map(|r| format!("{:?}", lem_common::validate::validate("done", r.result.as_ref(), None)))
            .collect::<Vec<_>>(),
        "llem": llem,
        "report_html": lem_coord::report::render(&lem_coord::report::ReportInput {
            campaign: 9,
            status: &CampaignStatus {
                campaign: 9,
                state: "done".into(),
                total: 2,
                done: 2,
                n_configs: 2,
                ..Default::default()
            },
            rows,
            timeline_run: None,
            generated_at: "2026-11-25T12:00:00.000Z",
        })
        .unwrap(),
    })
}

#[test]
fn write_flat_fixtures() {
    if std::env::var_os("LEM_WRITE_FLAT_FIXTURES").is_none() {
        eprintln!("skipped: set LEM_WRITE_FLAT_FIXTURES=1 to write the flat fixtures");
        return;
    }
    let dir = fixtures();
    for (name, r) in [("full", full()), ("sparse", sparse())] {
        let text = serde_json::to_string_pretty(&r).unwrap() + "\n";
        std::fs::write(dir.join(format!("run-result-flat-v4-{name}.json")), text).unwrap();
    }
    let text = serde_json::to_string_pretty(&exports(&rows())).unwrap() + "\n";
    std::fs::write(dir.join("run-result-flat-v4-exports.json"), text).unwrap();
}
