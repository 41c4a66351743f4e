//! `grid`'s size limit and `--format parquet` read back by pyarrow (when
//! `LEM_PYARROW_PYTHON` names a python with pyarrow; otherwise that part is skipped).

use std::process::Command;

use lem_common::rpc::RunRow;
use lem_common::types::{CampaignId, RunKey, RunResult};
use lem_coord::cli::{check_grid_size, GRID_LIMIT_CONFIGS};
use lem_coord::export::COLUMNS;
use lem_coord::parquet_export::{to_parquet, write_atomic_bytes};

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
                total_energy_j: 100.5 + i as f64,
                energy_adjusted_j: (i == 0).then_some(50.25),
                input_tokens: 1000,
                output_tokens: 500,
                simulated: true,
                started_at: "2026-11-25T10:00:00.000Z".into(),
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
    assert_eq!(names, COLUMNS);
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
