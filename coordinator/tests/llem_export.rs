//! `--format llem`: bundles built from realistic run rows, checked for llem's layout
//! and key order here, and loaded by llem 0.7.0's own loader (`expand_study.py
//! --validate-result`) and manifest model when `LEM_ORACLE_PYTHON` is set (./test.sh
//! and CI set it; otherwise the oracle part prints that it was skipped).

use std::path::{Path, PathBuf};
use std::process::Command;

use lem_common::pyjson;
use lem_common::quality::{self, Flag};
use lem_common::rpc::RunRow;
use lem_common::study::{plan, PlanOptions, StudySource};
use lem_common::types::{
    BaselineRecord, Baselines, CampaignId, EnergyFigures, ForeignProcess, HarnessFacts,
    MeasuredWindow, RunKey, RunResult, Thermal, Throughput,
};
use lem_common::Value;
use lem_coord::llem_export::{write_bundle, CampaignInfo};

fn shared_dir() -> PathBuf {
    std::env::var("LLEM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/llem"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A finished run's result as a worker reports it (numbers in realistic ranges).
fn result_for(i: usize, engine: &str, model: &str) -> RunResult {
    let input = 1200 + 37 * i as u64;
    let output = if i == 2 { 0 } else { 800 + 11 * i as u64 };
    let duration = 12.5 + i as f64 * 0.25;
    let energy = 2400.0 + 13.7 * i as f64;
    let baseline = (i % 2 == 0).then(|| BaselineRecord {
        kind: "device".into(),
        mean_power_w: 61.5,
        std_power_w: 0.8,
        n_samples: 300,
        duration_s: 30.0,
        settle_s: 2.1,
        temp_c: 38.0,
        sm_clock_mhz: Some(345),
        pstate: Some(8),
        strategy: ["cached", "validated", "fresh"][i % 3].into(),
        cache_age_s: 12.0 * i as f64,
        measured_at: "2026-11-25T09:58:00.250Z".into(),
    });
    let adjusted = baseline
        .as_ref()
        .map(|b| (energy - b.mean_power_w * duration).max(0.0));
    let per_tok = |e: f64| if output > 0 { e / output as f64 } else { 0.0 };
    RunResult {
        worker: format!("worker-{}", i % 2),
        host: "gpu-host-1".into(),
        slot: (i % 2) as u32,
        gpu_name: "NVIDIA H100 80GB HBM3".into(),
        gpu_uuid: "GPU-00000000-0000-0000-0000-000000000001".into(),
        simulated: i % 3 == 0,
        engine: engine.into(),
        engine_version: (engine != "synthetic").then(|| "5.14.1".into()),
        model_name: model.into(),
        started_at: format!("2026-11-25T10:{:02}:00.{:03}Z", i % 60, (i * 7) % 1000),
        ended_at: format!("2026-11-25T10:{:02}:13.000Z", i % 60),
        warnings: if i == 3 {
            vec!["energy counter and power integral disagree by 6.1%".into()]
        } else {
            Vec::new()
        },
        energy: EnergyFigures {
            total_j: energy,
            method: "counter_interpolated".into(),
            integral_j: Some(energy * 1.004),
            counter_raw_j: Some(energy - 0.3),
            disagreement_pct: Some(0.4),
            disagreement_flagged: false,
            mean_power_w: energy / duration,
            adjusted_j: adjusted,
            adjusted_clamped: false,
            ..Default::default()
        },
        baselines: Baselines {
            device_power_w: baseline.as_ref().map(|b| b.mean_power_w),
            device: baseline,
            ..Default::default()
        },
        throughput: Throughput {
            n_prompts: 16,
            input_tokens: input,
            output_tokens: output,
            avg_tokens_per_second: (input + output) as f64 / duration,
            output_tokens_per_second: output as f64 / duration,
            avg_energy_per_token_j: per_tok(energy),
            energy_per_token_adjusted_j: adjusted.map(per_tok),
        },
        thermal: Thermal {
            start_temp_c: 41.0,
            max_temp_c: 67.5,
            end_temp_c: 63.0,
            wait_s: 4.2,
            wait_reason: "cooled".into(),
            throttle_thermal: i == 4,
            ..Default::default()
        },
        window: MeasuredWindow {
            duration_s: duration,
            short: false,
            n_power_samples: 125,
            lease_to_measure_s: 9.5,
            ..Default::default()
        },
        harness: HarnessFacts {
            model_load_seconds: Some(3.25),
            model_already_loaded: i > 0,
            metrics: serde_json::json!({
                "n_prompts": 16, "input_tokens": input, "output_tokens": output,
                "inference_seconds": duration, "batches": 4, "batch_size": 4,
                "input_token_lengths": {"min": 17, "max": 63, "mean": 37.2, "p50": 32.0, "p95": 61.25},
                "output_token_lengths": {"min": 8, "max": 8, "mean": 8.0, "p50": 8.0, "p95": 8.0},
                "ttft_ms": {"mean": 1.63, "median": 1.7, "p95": 1.77, "p99": 1.77, "min": 1.43, "max": 1.78, "samples": 16},
                "itl_ms": if i == 1 {
                    serde_json::json!({"mean": null, "median": null, "p95": null, "p99": null, "samples": 0})
                } else {
                    serde_json::json!({"mean": 2.49, "median": 2.5, "p95": 2.57, "p99": 2.6, "samples": 112})
                },
                "itl_measurement_mode": "true_streaming"
            }),
            warmup: if i % 2 == 1 {
                serde_json::Value::Null
            } else {
                serde_json::json!({
                    "converged": true, "final_cv": 0.021, "iterations_completed": 5,
                    "target_cv": 0.05, "max_prompts": 5, "latencies_ms": [410.0, 395.5, 392.0, 390.25, 391.0],
                    "thermal_floor_seconds": 60.0, "thermal_floor_requested_seconds": 60.0
                })
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Sets a fact behind every quality flag that `result_for` did not set already (a
/// run measured under about every condition that weakens a figure).
fn raise_every_flag(r: &mut RunResult) {
    r.simulated = true;
    r.energy.method = "power_integral".into();
    r.window.short = true;
    r.energy.disagreement_flagged = true;
    r.energy.uncertainty_flagged = true;
    r.energy.uncertainty_j = Some(31.5);
    r.energy.edge_rule = Some("power_trace".into());
    r.baselines.device = None;
    r.baselines.device_power_w = None;
    r.energy.adjusted_j = None;
    r.throughput.energy_per_token_adjusted_j = None;
    r.energy.adjusted_clamped = true;
    r.baselines.resident = Some(BaselineRecord {
        kind: "resident".into(),
        mean_power_w: 120.0,
        ..Default::default()
    });
    r.energy.quiet_power_w = Some(126.0);
    r.energy.adjusted_resident_j = Some(12.0);
    r.energy.adjusted_resident_uncertainty_j = Some(3.0);
    r.thermal.throttle_thermal = true;
    r.thermal.throttle_power = true;
    r.thermal.hw_slowdown = true;
    r.thermal.wait_reason = "timeout".into();
    r.isolation.gpu_shared = true;
    r.isolation.foreign_processes = vec![ForeignProcess {
        pid: 4242,
        gpu_index: 0,
        used_memory_mb: Some(1024),
        name: Some("python3".into()),
        seen: "window".into(),
    }];
    r.environment =
        serde_json::json!({"gpu": {"name": "NVIDIA H100 80GB HBM3", "mig_enabled": true}});
    r.harness.metrics["itl_measurement_mode"] = "proportional".into();
    r.harness.metrics["latency_estimated"] = true.into();
    r.warnings
        .push("thermal gate timed out after 300 s: the GPU was still cooling".into());
}

/// Rows for a study: most runs done, some pending, leased, failed or cancelled; the
/// fourth run of every seven raises every quality flag.
fn rows_for(study: &Path) -> (CampaignInfo, Vec<RunRow>) {
    let src = StudySource::read(study).unwrap();
    let p = plan(&src, &PlanOptions::default()).unwrap();
    let rows = p
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let model = r
                .config
                .get_path("task.model")
                .and_then(Value::as_str)
                .unwrap()
                .to_string();
            let state = match i % 7 {
                4 => "failed",
                5 => "pending",
                6 if i % 2 == 0 => "leased",
                6 => "cancelled",
                _ => "done",
            };
            RunRow {
                run: RunKey {
                    campaign: CampaignId(7),
                    seq: i as u32,
                },
                config_hash: r.config_hash.clone(),
                cycle: r.cycle,
                engine: r.engine.clone(),
                state: state.into(),
                attempts: if state == "failed" { 3 } else { 1 },
                config_json: pyjson::dumps(&r.config, &Default::default()),
                result: (state == "done").then(|| {
                    let mut res = result_for(i, &r.engine, &model);
                    if i % 7 == 3 {
                        raise_every_flag(&mut res);
                    }
                    res
                }),
                last_failure: (state == "failed")
                    .then(|| "configuration: out of memory while loading the model".into()),
            }
        })
        .collect();
    let info = CampaignInfo {
        campaign: 7,
        study_name: p.study_name.clone(),
        study_design_hash: p.study_design_hash.clone(),
        submitted_at: "2026-11-25T09:55:00.000Z".into(),
        state: "running".into(),
        study_text: Some(src.text.clone()),
    };
    (info, rows)
}

fn read_json(p: &Path) -> Value {
    pyjson::parse(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_map().unwrap().keys().cloned().collect()
}

/// Layout and key checks that need no Python.
fn check_layout(dir: &Path, info: &CampaignInfo, rows: &[RunRow], result_files: &[PathBuf]) {
    let reference = read_json(
        &shared_dir()
            .join("examples/result-bundle-synthetic/001_c1_gpt2-transformers_b1fb6d4d/result.json"),
    );
    let done: Vec<&RunRow> = rows.iter().filter(|r| r.state == "done").collect();
    assert_eq!(result_files.len(), done.len());
    for (file, row) in result_files.iter().zip(&done) {
        let name = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            name.starts_with(&format!("{:03}_c{}_", row.run.seq + 1, row.cycle))
                && name.ends_with(&row.config_hash[..8]),
            "{name}"
        );
        let r = read_json(file);
        // Exactly llem's top-level keys, in llem's order: no fleet key leaks in.
        assert_eq!(keys(&r), keys(&reference), "{}", file.display());
        assert_eq!(
            r.get_path("declared_config_hash").unwrap().as_str(),
            Some(row.config_hash.as_str())
        );
        let res = row.result.as_ref().unwrap();
        assert_eq!(
            r.get_path("total_energy_j").unwrap().as_f64(),
            Some(res.energy.total_j)
        );
        // Every flag, explained, then every warning: nothing else, nothing dropped.
        let warnings: Vec<&str> = match r.get_path("measurement_warnings") {
            Some(Value::Seq(w)) => w.iter().map(|x| x.as_str().unwrap()).collect(),
            other => panic!("measurement_warnings is not a list: {other:?}"),
        };
        let explained: Vec<String> = quality::flags(res)
            .iter()
            .map(|f| format!("lem fleet: {}", f.explanation()))
            .collect();
        let want: Vec<&str> = explained
            .iter()
            .map(String::as_str)
            .chain(res.warnings.iter().map(String::as_str))
            .collect();
        assert_eq!(warnings, want, "{}", file.display());
        if res.simulated {
            assert!(
                warnings.iter().any(|w| w.contains("simulated GPU")),
                "{warnings:?}"
            );
        }
        let fleet = read_json(&file.with_file_name("fleet.json"));
        let fleet_flags: Vec<&str> = match fleet.get_path("flags") {
            Some(Value::Seq(f)) => f.iter().map(|x| x.as_str().unwrap()).collect(),
            other => panic!("fleet.json has no flags list: {other:?}"),
        };
        assert_eq!(fleet_flags, quality::flag_names(res));
        assert_eq!(
            fleet.get_path("worker").unwrap().as_str(),
            Some(res.worker.as_str())
        );
        assert_eq!(
            fleet.get_path("simulated").unwrap().as_bool(),
            Some(res.simulated)
        );
        let config = read_json(&file.with_file_name("config.json"));
        assert_eq!(
            pyjson::dumps_sorted(config.get_path("declared_config").unwrap()),
            pyjson::dumps_sorted(&pyjson::parse(&row.config_json).unwrap())
        );
        assert!(file.with_file_name("system.json").is_file());
    }
    let manifest = read_json(&dir.join("manifest.json"));
    assert_eq!(
        manifest.get_path("schema_version").unwrap().as_str(),
        Some("2.0")
    );
    let Some(Value::Seq(entries)) = manifest.get_path("experiments") else {
        panic!("manifest has no experiments list")
    };
    assert_eq!(entries.len(), rows.len());
    let with_file = entries
        .iter()
        .filter(|e| e.get_path("result_file").is_some_and(|f| !f.is_null()))
        .count();
    assert_eq!(with_file, done.len());
    let first = std::fs::read_to_string(dir.join("_study-artefacts/study_config.yaml")).unwrap();
    assert_eq!(
        first.lines().next().unwrap(),
        format!(
            "# study_design_hash: {} | study_name: {}",
            info.study_design_hash,
            info.study_name.as_deref().unwrap_or("unnamed-study")
        )
    );
}

/// Loads every result.json with llem's loader and the manifest with llem's model, in
/// one Python process; returns the failures.
fn oracle_check(python: &str, dir: &Path, result_files: &[PathBuf]) -> Vec<String> {
    let oracle = shared_dir().join("expand_study.py");
    assert!(oracle.is_file(), "oracle not found at {}", oracle.display());
    // The documented command, for the first file.
    let out = Command::new(python)
        .arg(&oracle)
        .arg("--validate-result")
        .arg(&result_files[0])
        .output()
        .unwrap();
    let mut failures = Vec::new();
    if !out.status.success() {
        failures.push(format!(
            "{}: {}",
            result_files[0].display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let script = r#"
import io, contextlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import expand_study
from llenergymeasure.study.manifest import StudyManifest
bad = []
for p in sys.argv[3:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = expand_study.validate_result(Path(p))
    if rc != 0 or "warning" in err.getvalue():
        bad.append(p + ": " + err.getvalue().strip())
try:
    StudyManifest.model_validate_json(Path(sys.argv[2]).read_text())
except Exception as exc:
    bad.append("manifest.json: %s" % exc)
print(json.dumps(bad))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(shared_dir())
        .arg(dir.join("manifest.json"))
        .args(result_files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oracle driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    failures.extend(listed);
    failures
}

#[test]
fn llem_bundles_load_in_llems_own_loader() {
    let studies = [
        repo().join("examples/quickstart.yaml"),
        shared_dir().join("examples/02-multi-engine-sweep.yaml"),
        shared_dir().join("examples/06-presets-warmup-baseline.yaml"),
    ];
    let oracle_python = std::env::var("LEM_ORACLE_PYTHON").ok();
    let mut failures = Vec::new();
    let mut n_files = 0;
    for study in studies {
        let (info, rows) = rows_for(&study);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        let summary = write_bundle(&out, &info, &rows).unwrap();
        assert!(summary.runs_written > 0 && summary.without_result > 0);
        assert!(summary.wrote_study_config);
        check_layout(&out, &info, &rows, &summary.result_files);
        assert!(
            rows.iter()
                .filter_map(|r| r.result.as_ref())
                .any(|res| quality::flags(res) == Flag::ALL),
            "no exported run of {} raises every flag",
            study.display()
        );
        // Exporting again rewrites the same files (atomic replace, same names).
        let again = write_bundle(&out, &info, &rows).unwrap();
        assert_eq!(again.result_files, summary.result_files);
        n_files += summary.result_files.len();
        if let Some(py) = &oracle_python {
            failures.extend(oracle_check(py, &out, &summary.result_files));
        }
    }
    if oracle_python.is_none() {
        eprintln!("skipped: the llem-loader check of {n_files} result.json files (set LEM_ORACLE_PYTHON to a python with llenergymeasure 0.7.0)");
    }
    assert!(
        failures.is_empty(),
        "llem rejected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_oracle_rejects_a_fleet_key_at_the_top_level() {
    // Guards the test above: llem's loader does reject what the export must avoid.
    let Ok(python) = std::env::var("LEM_ORACLE_PYTHON") else {
        eprintln!("skipped: set LEM_ORACLE_PYTHON to run the llem-loader check");
        return;
    };
    let (info, rows) = rows_for(&repo().join("examples/quickstart.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let summary = write_bundle(dir.path(), &info, &rows).unwrap();
    let file = &summary.result_files[0];
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, text.replacen("{\n", "{\n  \"worker\": \"w\",\n", 1)).unwrap();
    let out = Command::new(&python)
        .arg(shared_dir().join("expand_study.py"))
        .arg("--validate-result")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "llem accepted an extra top-level key"
    );
}
