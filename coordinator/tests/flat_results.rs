//! Results stored by lem fleet before the nested result model (protocol 4 and before:
//! one flat object) read into today's [`RunResult`] and export exactly as they did.
//!
//! The fixtures in `common/tests/fixtures/` were written by the flat code itself
//! (`run-result-flat-v4-full.json`: every field set, each to its own value;
//! `-sparse.json`: every optional figure absent) together with what every export made
//! of them (`run-result-flat-v4-exports.json`: JSON lines, CSV, the timeseries, the
//! aggregate, the summary, the validation checks, the llem bundle and the HTML report);
//! the generator, `coordinator/tests/old_result_fixture.rs` of commit e5e1dfa, left
//! with the flat struct, and this file builds the same rows from the fixtures.
//! Reading the flat results now and exporting them again must give the same text,
//! except the llem bundle's `fleet.json`, whose `run_result` is the stored result
//! verbatim and so has the nested layout.

use std::path::{Path, PathBuf};

use lem_common::rpc::{CampaignStatus, RunRow};
use lem_common::types::{CampaignId, RunKey, RunResult};
use lem_coord::export::{summary_table, timeseries_jsonl, to_csv, to_jsonl, Table};
use lem_coord::llem_export::{write_bundle, CampaignInfo};
use serde_json::json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/tests/fixtures")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

/// A flat result of protocol 4, read as a manifest or journal holding one is.
fn flat_fixture(name: &str) -> RunResult {
    serde_json::from_str(&read(&format!("run-result-flat-v4-{name}.json"))).unwrap()
}

fn rows() -> Vec<RunRow> {
    ["full", "sparse"]
        .into_iter()
        .map(flat_fixture)
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

/// Run columns added since the fixture was written (by the flat code): the exports
/// must equal the flat code's once these are taken out, and hold them otherwise.
const ADDED_SINCE: &[&str] = &["trace_id"];

/// `export` (a JSON-lines or CSV export of the runs) rewritten the same way for
/// both sides, without [`ADDED_SINCE`] when `added`; every other export as it is.
fn without_added_columns(key: &str, export: &serde_json::Value, added: bool) -> serde_json::Value {
    let text = export.as_str().unwrap_or_default();
    match key {
        "jsonl" => {
            let lines: Vec<String> = text
                .lines()
                .map(|l| {
                    let mut row: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(l).unwrap();
                    for c in ADDED_SINCE.iter().filter(|_| added) {
                        assert!(row.shift_remove(*c).is_some(), "no {c} in {l}");
                    }
                    serde_json::to_string(&row).unwrap()
                })
                .collect();
            json!(lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        }
        "csv" => {
            // No added column holds a comma or a quote here (a trace id is hex).
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap().split(',').collect();
            let drop: Vec<usize> = ADDED_SINCE
                .iter()
                .filter(|_| added)
                .map(|c| header.iter().position(|h| h == c).unwrap())
                .collect();
            let keep = |line: &str| {
                let cells: Vec<&str> = split_csv(line);
                cells
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !drop.contains(i))
                    .map(|(_, c)| *c)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mut out = keep(&header.join(","));
            out.push('\n');
            for l in lines {
                out.push_str(&keep(l));
                out.push('\n');
            }
            json!(out)
        }
        _ => export.clone(),
    }
}

/// A CSV line's cells as written, quotes kept (a quoted cell may hold commas).
fn split_csv(line: &str) -> Vec<&str> {
    let (mut cells, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, ch) in line.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                cells.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cells.push(&line[start..]);
    cells
}

#[test]
fn flat_results_export_as_they_did_before_the_nested_model() {
    let rows = rows();
    let now = exports(&rows);
    let before: serde_json::Value =
        serde_json::from_str(&read("run-result-flat-v4-exports.json")).unwrap();
    let keys: Vec<&String> = before.as_object().unwrap().keys().collect();
    assert_eq!(keys, now.as_object().unwrap().keys().collect::<Vec<_>>());
    for key in keys {
        if key == "llem" {
            continue;
        }
        let now = without_added_columns(key, &now[key], true);
        let before = without_added_columns(key, &before[key], false);
        assert_eq!(now, before, "{key} differs from the flat code's");
    }
    let (llem_now, llem_before) = (
        now["llem"].as_object().unwrap(),
        before["llem"].as_object().unwrap(),
    );
    assert_eq!(
        llem_now.keys().collect::<Vec<_>>(),
        llem_before.keys().collect::<Vec<_>>()
    );
    for (file, text) in llem_before {
        if !file.ends_with("/fleet.json") {
            assert_eq!(&llem_now[file], text, "{file} differs from the flat code's");
            continue;
        }
        // fleet.json: every key as before, but `run_result`, which is the stored
        // result verbatim (now nested).
        let parse = |v: &serde_json::Value| -> serde_json::Value {
            serde_json::from_str(&v.as_str().unwrap().replace("NaN", "null")).unwrap()
        };
        let (mut a, mut b) = (parse(&llem_now[file]), parse(text));
        let run = a["run"].as_str().unwrap().to_string();
        let nested = a.as_object_mut().unwrap().remove("run_result").unwrap();
        b.as_object_mut().unwrap().remove("run_result");
        assert_eq!(a, b, "{file} differs from the flat code's");
        let row = rows.iter().find(|r| r.run.to_string() == run).unwrap();
        assert_eq!(
            nested,
            serde_json::to_value(row.result.as_ref().unwrap()).unwrap()
        );
        assert!(nested["energy"]["total_j"].is_number(), "{nested}");
    }
}
