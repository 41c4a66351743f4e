//! `grid`'s size limit, `--format parquet` read back by pyarrow (when
//! `LEM_PYARROW_PYTHON` names a python with pyarrow; otherwise that part is skipped),
//! and the quality flags and warnings in every row of jsonl, csv and parquet.

use std::process::Command;

use lem_common::quality::{self, Flag};
use lem_common::rpc::RunRow;
use lem_common::types::{
    BaselineRecord, Baselines, CampaignId, EnergyFigures, ForeignProcess, HarnessFacts, Isolation,
    MeasuredWindow, RunKey, RunResult, Thermal, Throughput,
};
use lem_coord::cli::{check_grid_size, GRID_LIMIT_CONFIGS};
use lem_coord::export::{run_column_names, to_csv, to_jsonl, Table};
use lem_coord::parquet_export::{table_to_parquet, to_parquet, write_atomic_bytes};
use serde_json::{json, Value as Json};

#[test]
fn grid_size_limit_names_the_count_and_the_flag() {
    assert!(check_grid_size(100, false).is_ok());
    assert!(check_grid_size(GRID_LIMIT_CONFIGS, false).is_ok());
    let e = check_grid_size(GRID_LIMIT_CONFIGS + 1, false).unwrap_err();
    assert!(
        e.contains("10001 configs") && e.contains("--allow-large-grid"),
        "{e}"
    );
    assert!(check_grid_size(GRID_LIMIT_CONFIGS + 1, true).is_ok());
}

#[test]
fn grid_refuses_a_huge_grid_before_expanding_it() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("huge.yaml");
    // 1000 x 1000 = 1,000,000 configs: refused from the count alone, instantly.
    std::fs::write(
        &study,
        "task: {model: gpt2}\nserving_mode: offline\nsweep:\n  task.max_input_tokens: {min: 1, max: 1000, num: 1000}\n  task.max_output_tokens: {min: 1, max: 1000, num: 1000}\n",
    )
    .unwrap();
    let t = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lem-coord"))
        .arg("grid")
        .arg(&study)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("grid of 1000000 config(s) before validation"),
        "{err}"
    );
    assert!(
        err.contains("1000000 configs") && err.contains("--allow-large-grid"),
        "{err}"
    );
    assert!(
        t.elapsed().as_secs() < 20,
        "the refusal must not expand the grid"
    );
}

fn rows() -> Vec<RunRow> {
    (0..3u32)
        .map(|i| RunRow {
            run: RunKey {
                campaign: CampaignId(3),
                seq: i,
            },
            config_hash: format!("{:016x}", 0xabcdef + i as u64),
            cycle: 1 + i,
            engine: "synthetic".into(),
            state: if i == 2 { "failed" } else { "done" }.into(),
            attempts: 1,
            config_json: r#"{"task": {"model": "synthetic/tiny-llama"}}"#.into(),
            result: (i < 2).then(|| RunResult {
                worker: "w".into(),
                host: "h".into(),
                simulated: true,
                started_at: "2026-11-25T10:00:00.000Z".into(),
                energy: EnergyFigures {
                    total_j: 100.5 + i as f64,
                    adjusted_j: (i == 0).then_some(50.25),
                    ..Default::default()
                },
                throughput: Throughput {
                    input_tokens: 1000,
                    output_tokens: 500,
                    ..Default::default()
                },
                ..Default::default()
            }),
            last_failure: (i == 2).then(|| "configuration: out of memory".into()),
        })
        .collect()
}

#[test]
fn parquet_reads_back_in_pyarrow_with_typed_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.parquet");
    write_atomic_bytes(&path, &to_parquet(&rows()).unwrap()).unwrap();
    let Ok(python) = std::env::var("LEM_PYARROW_PYTHON") else {
        eprintln!(
            "skipped: the pyarrow read-back (set LEM_PYARROW_PYTHON to a python with pyarrow)"
        );
        return;
    };
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"names": t.column_names, "types": {f.name: str(f.type) for f in t.schema},
                  "rows": t.num_rows, "energy": t.column("total_energy_j").to_pylist(),
                  "adjusted": t.column("energy_adjusted_j").to_pylist(),
                  "simulated": t.column("simulated").to_pylist(),
                  "tokens": t.column("output_tokens").to_pylist()}))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, run_column_names());
    assert_eq!(v["rows"], 3);
    assert_eq!(v["types"]["total_energy_j"], "double");
    assert_eq!(v["types"]["output_tokens"], "int64");
    assert_eq!(v["types"]["simulated"], "bool");
    assert_eq!(v["types"]["engine"], "string");
    assert_eq!(v["energy"], serde_json::json!([100.5, 101.5, null]));
    assert_eq!(v["adjusted"], serde_json::json!([50.25, null, null]));
    assert_eq!(v["simulated"], serde_json::json!([true, true, null]));
    assert_eq!(v["tokens"], serde_json::json!([500, 500, null]));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read as _;
    // `lem-coord grid STUDY | head -c 16` on a grid whose listing is far more than a
    // pipe holds: the reader goes away after 16 bytes.
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("big.yaml");
    let values: Vec<String> = (1..=5000).map(|i| format!("{i}.0")).collect();
    std::fs::write(
        &study,
        format!(
            "task: {{model: m}}\nengine: synthetic\nserving_mode: offline\nsweep:\n  synthetic.engine_params.decode_ms_per_step: [{}]\n",
            values.join(", ")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lem-coord"))
        .arg("grid")
        .arg(&study)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {err}"
    );
}

/// A result that raises every quality flag at once (not a physically consistent run:
/// each fact is set only so that its flag must reach every format).
fn every_flag_result() -> RunResult {
    let foreign = |pid, seen: &str| ForeignProcess {
        pid,
        gpu_index: 0,
        used_memory_mb: Some(512),
        name: Some("python3".into()),
        seen: seen.into(),
    };
    RunResult {
        worker: "w".into(),
        simulated: true,
        environment: json!({"gpu": {"name": "H200", "mig_enabled": true}}),
        warnings: vec![
            "short window: fewer than one counter step or two power samples".into(),
            "energy counter and power integral disagree by 12.0%, see the timeseries".into(),
        ],
        energy: EnergyFigures {
            total_j: 3.25,
            method: "power_integral".into(),
            integral_j: Some(3.25),
            counter_raw_j: Some(2.9),
            disagreement_pct: Some(12.0),
            disagreement_flagged: true,
            uncertainty_j: Some(0.4),
            uncertainty_flagged: true,
            edge_rule: Some("power_trace".into()),
            quiet_power_w: Some(125.5),
            adjusted_resident_j: Some(12.0),
            adjusted_resident_uncertainty_j: Some(3.0),
            adjusted_clamped: true,
            ..Default::default()
        },
        baselines: Baselines {
            resident: Some(BaselineRecord {
                kind: "resident".into(),
                mean_power_w: 120.0,
                ..Default::default()
            }),
            ..Default::default()
        },
        thermal: Thermal {
            throttle_thermal: true,
            throttle_power: true,
            hw_slowdown: true,
            wait_reason: "timeout".into(),
            ..Default::default()
        },
        window: MeasuredWindow {
            short: true,
            start_mono_ns: 1_000_000_000,
            end_mono_ns: 1_250_000_000,
            ..Default::default()
        },
        harness: HarnessFacts {
            metrics: json!({"itl_measurement_mode": "proportional", "latency_estimated": true}),
            ..Default::default()
        },
        isolation: Isolation {
            gpu_shared: true,
            foreign_processes: vec![
                foreign(4242, "baseline"),
                foreign(77, "window"),
                foreign(4242, "window"),
            ],
        },
        ..Default::default()
    }
}

/// A clean measurement (no flag), then the all-flags run, then a failed run.
fn flag_rows() -> Vec<RunRow> {
    let clean = RunResult {
        worker: "w".into(),
        energy: EnergyFigures {
            total_j: 1000.0,
            method: "counter_interpolated".into(),
            adjusted_j: Some(400.0),
            edge_rule: Some("quiet".into()),
            ..Default::default()
        },
        baselines: Baselines {
            device: Some(BaselineRecord {
                kind: "device".into(),
                mean_power_w: 60.0,
                ..Default::default()
            }),
            device_power_w: Some(60.0),
            ..Default::default()
        },
        thermal: Thermal {
            wait_reason: "cooled".into(),
            ..Default::default()
        },
        harness: HarnessFacts {
            metrics: json!({"itl_measurement_mode": "true_streaming", "latency_estimated": false}),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut rows = rows();
    rows[0].result = Some(clean);
    rows[1].result = Some(every_flag_result());
    rows
}

fn all_flag_names() -> Vec<&'static str> {
    Flag::ALL.iter().map(|f| f.name()).collect()
}

#[test]
fn the_all_flags_result_raises_every_flag() {
    // Guards the tests below: they would prove nothing if a flag were missing here.
    assert_eq!(quality::flags(&every_flag_result()), Flag::ALL);
}

#[test]
fn jsonl_rows_carry_every_flag_and_warning() {
    let text = to_jsonl(&flag_rows());
    let rows: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(names.len(), run_column_names().len());
    assert_eq!(rows[0]["flags"], json!([]), "a clean run");
    assert_eq!(rows[0]["warnings"], json!([]));
    assert_eq!(rows[0]["baseline_subtracted"], json!(true));
    assert_eq!(rows[0]["energy_edge_rule"], json!("quiet"));
    let r = &rows[1];
    assert_eq!(r["flags"], json!(all_flag_names()));
    assert_eq!(r["warnings"], json!(every_flag_result().warnings));
    assert_eq!(r["gpu_foreign_pids"], json!([4242, 77]));
    for (column, want) in [
        ("energy_counter_raw_j", json!(2.9)),
        ("energy_disagreement_flagged", json!(true)),
        ("short_window", json!(true)),
        ("energy_uncertainty_j", json!(0.4)),
        ("energy_uncertainty_flagged", json!(true)),
        ("energy_edge_rule", json!("power_trace")),
        ("quiet_power_w", json!(125.5)),
        ("baseline_subtracted", json!(false)),
        ("hw_slowdown", json!(true)),
        ("gpu_shared", json!(true)),
        ("itl_measurement_mode", json!("proportional")),
        ("latency_estimated", json!(true)),
        ("window_start_mono_ns", json!(1_000_000_000u64)),
        ("window_end_mono_ns", json!(1_250_000_000u64)),
    ] {
        assert_eq!(r[column], want, "{column}");
    }
    // A run without a result: null, not an empty list.
    for column in [
        "flags",
        "warnings",
        "gpu_foreign_pids",
        "baseline_subtracted",
    ] {
        assert_eq!(rows[2][column], Json::Null, "{column}");
    }
}

/// The fields of one CSV line (RFC 4180 quoting; no newlines inside fields here).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let (mut quoted, mut chars) = (false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[test]
fn csv_rows_carry_every_flag_and_warning_joined() {
    let text = to_csv(&flag_rows());
    let lines: Vec<Vec<String>> = text.lines().map(csv_fields).collect();
    let header = &lines[0];
    assert_eq!(header, &run_column_names());
    let at = |row: usize, column: &str| {
        let i = header.iter().position(|h| h == column).unwrap();
        assert_eq!(lines[row].len(), header.len(), "row {row}");
        lines[row][i].clone()
    };
    assert_eq!(at(1, "flags"), "");
    assert_eq!(at(2, "flags"), all_flag_names().join(";"));
    assert_eq!(at(2, "warnings"), every_flag_result().warnings.join(" | "));
    assert_eq!(at(2, "gpu_foreign_pids"), "4242;77");
    assert_eq!(at(2, "short_window"), "true");
    assert_eq!(at(2, "energy_uncertainty_flagged"), "true");
    assert_eq!(at(2, "baseline_subtracted"), "false");
    assert_eq!(at(2, "energy_edge_rule"), "power_trace");
    assert_eq!(at(2, "itl_measurement_mode"), "proportional");
    assert_eq!(at(2, "window_end_mono_ns"), "1250000000");
    assert_eq!(at(3, "flags"), "");
    assert_eq!(at(3, "baseline_subtracted"), "");
}

#[test]
fn parquet_rows_carry_every_flag_and_warning_as_lists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.parquet");
    write_atomic_bytes(&path, &to_parquet(&flag_rows()).unwrap()).unwrap();
    let Ok(python) = std::env::var("LEM_PYARROW_PYTHON") else {
        eprintln!(
            "skipped: the pyarrow read-back of the flags (set LEM_PYARROW_PYTHON to a python with pyarrow)"
        );
        return;
    };
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"types": {f.name: str(f.type) for f in t.schema},
                  "columns": {n: t.column(n).to_pylist() for n in t.column_names}}))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    let (types, col) = (&v["types"], &v["columns"]);
    assert_eq!(types["flags"], "list<item: string>");
    assert_eq!(types["warnings"], "list<item: string>");
    assert_eq!(types["gpu_foreign_pids"], "list<item: int64>");
    assert_eq!(types["short_window"], "bool");
    assert_eq!(types["energy_uncertainty_j"], "double");
    assert_eq!(types["energy_edge_rule"], "string");
    assert_eq!(types["window_start_mono_ns"], "int64");
    // Times and arrays stay typed.
    assert_eq!(types["started_at"], "timestamp[us, tz=UTC]");
    assert_eq!(types["gpu_indices"], "list<item: int64>");
    assert_eq!(types["gpu_energy_j"], "list<item: double>");
    assert_eq!(col["flags"], json!([[], all_flag_names(), null]));
    assert_eq!(
        col["warnings"],
        json!([[], every_flag_result().warnings, null])
    );
    assert_eq!(col["gpu_foreign_pids"], json!([[], [4242, 77], null]));
    for (column, want) in [
        ("energy_counter_raw_j", json!([null, 2.9, null])),
        ("energy_disagreement_flagged", json!([false, true, null])),
        ("short_window", json!([false, true, null])),
        ("energy_uncertainty_j", json!([null, 0.4, null])),
        ("energy_uncertainty_flagged", json!([false, true, null])),
        ("energy_edge_rule", json!(["quiet", "power_trace", null])),
        ("quiet_power_w", json!([null, 125.5, null])),
        ("baseline_subtracted", json!([true, false, null])),
        ("hw_slowdown", json!([false, true, null])),
        ("gpu_shared", json!([false, true, null])),
        (
            "itl_measurement_mode",
            json!(["true_streaming", "proportional", null]),
        ),
        ("latency_estimated", json!([false, true, null])),
        ("window_end_mono_ns", json!([0, 1_250_000_000u64, null])),
    ] {
        assert_eq!(col[column], want, "{column}");
    }
}

/// Three configurations (batch size 1, 4, 16) over two cycles, as a sweep makes them.
fn sweep_rows() -> Vec<RunRow> {
    let mut out = Vec::new();
    for cycle in 1..=2u32 {
        for (i, batch) in [1i64, 4, 16].into_iter().enumerate() {
            let jpt = 1.0 / batch as f64 + 0.01 * cycle as f64;
            out.push(RunRow {
                run: RunKey {
                    campaign: CampaignId(4),
                    seq: out.len() as u32,
                },
                config_hash: format!("{:016x}", 0x100 + i),
                cycle,
                engine: "synthetic".into(),
                state: "done".into(),
                attempts: 1,
                config_json: format!(
                    r#"{{"task": {{"model": "synthetic/tiny-llama", "max_output_tokens": 64}}, "engine": "synthetic", "synthetic": {{"engine_params": {{"batch_size": {batch}, "dtype": "bfloat16"}}}}}}"#
                ),
                result: Some(RunResult {
started_at: "2026-11-25T10:00:00.250Z".into(),
gpu_indices: vec![0],
energy: EnergyFigures { total_j: 64.0 * jpt, ..Default::default() },
throughput: Throughput { avg_energy_per_token_j: jpt, avg_tokens_per_second: 100.0 * batch as f64, output_tokens: 64, ..Default::default() },
..Default::default()
}),
                last_failure: None,
            });
        }
    }
    out
}

#[test]
fn every_format_names_the_swept_parameter_as_a_column() {
    let rows = sweep_rows();
    let param = "synthetic.engine_params.batch_size";
    // JSON lines: a key right after model_name, typed as the study wrote it.
    let lines: Vec<Json> = to_jsonl(&rows)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
    let at = keys.iter().position(|k| *k == "model_name").unwrap();
    assert_eq!(keys[at + 1], param);
    let batches: Vec<&Json> = lines.iter().map(|l| &l[param]).collect();
    assert_eq!(
        batches,
        [
            &json!(1),
            &json!(4),
            &json!(16),
            &json!(1),
            &json!(4),
            &json!(16)
        ]
    );
    // dtype is the same everywhere: not a column.
    assert!(!keys.iter().any(|k| k.ends_with("dtype")));
    // CSV: the same header.
    let csv = to_csv(&rows);
    let header = csv_fields(csv.lines().next().unwrap());
    assert_eq!(header[at + 1], param);
    assert_eq!(csv_fields(csv.lines().nth(3).unwrap())[at + 1], "16");
    // Parquet: an int64 column of that name (pyarrow, when present).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.parquet");
    write_atomic_bytes(&path, &to_parquet(&rows).unwrap()).unwrap();
    let Ok(python) = std::env::var("LEM_PYARROW_PYTHON") else {
        eprintln!("skipped: the pyarrow read-back (set LEM_PYARROW_PYTHON)");
        return;
    };
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"types": {f.name: str(f.type) for f in t.schema},
                  "batch": t.column(sys.argv[2]).to_pylist(),
                  "started": [str(x) for x in t.column("started_at").to_pylist()]}))
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(param)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["types"][param], "int64");
    assert_eq!(v["batch"], json!([1, 4, 16, 1, 4, 16]));
    assert_eq!(v["started"][0], "2026-11-25 10:00:00.250000+00:00");
}

#[test]
fn the_aggregate_table_has_a_row_per_config_in_every_format() {
    let aggs = lem_common::aggregate::aggregate_rows(&sweep_rows());
    let t = Table::aggregate(&aggs);
    assert_eq!(t.rows.len(), 3);
    // Best first: batch 16 has the lowest J/token.
    let param = "synthetic.engine_params.batch_size";
    assert_eq!(t.get(0, param), Some(&json!(16)));
    assert_eq!(t.get(0, "rank"), Some(&json!(1)));
    assert_eq!(t.get(2, param), Some(&json!(1)));
    let mean = t
        .get(0, "avg_energy_per_token_j_mean")
        .unwrap()
        .as_f64()
        .unwrap();
    assert!((mean - (1.0 / 16.0 + 0.015)).abs() < 1e-12);
    assert_eq!(t.get(0, "avg_energy_per_token_j_n"), Some(&json!(2)));
    let lo = t
        .get(0, "avg_energy_per_token_j_ci95_low")
        .unwrap()
        .as_f64()
        .unwrap();
    let hi = t
        .get(0, "avg_energy_per_token_j_ci95_high")
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(lo <= mean && mean <= hi && lo < hi, "{lo} {mean} {hi}");
    assert_eq!(t.get(0, "cycles"), Some(&json!([1, 2])));
    let csv = t.to_csv();
    assert_eq!(csv.lines().count(), 4);
    assert_eq!(t.to_jsonl().lines().count(), 3);
    let bytes = table_to_parquet(&t).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");
}
