//! Results export: one flat row per run (JSON lines or CSV), and the per-config
//! summary table that `lem-coord run` prints.
//!
//! Column names are llem's where llem has one (`total_energy_j`, `energy_adjusted_j`,
//! `avg_tokens_per_second`, `avg_energy_per_token_j`, ...); the fleet's own columns
//! (`worker`, `host`, `slot`, `attempts`, `simulated`, the counter-vs-integral
//! disagreement) keep names llem never uses. The column set is documented in
//! docs/results.md.
//!
//! Every row carries the run's quality flags (`flags`, from
//! [`lem_common::quality::flags`], the one derivation all exports share) and its
//! warnings; a row without a result has null there, as in every measurement column.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use lem_common::rpc::RunRow;
use lem_common::{quality, stats};
use serde_json::{json, Value as Json};

/// The columns of a flat export row, in order.
pub const COLUMNS: &[&str] = &[
    "experiment_id",
    "cycle",
    "config_hash",
    "engine",
    "model_name",
    "state",
    "attempts",
    "flags",
    "total_energy_j",
    "energy_adjusted_j",
    "baseline_power_w",
    "avg_tokens_per_second",
    "avg_energy_per_token_j",
    "energy_per_token_adjusted_j",
    "output_tokens_per_second",
    "total_inference_time_sec",
    "input_tokens",
    "output_tokens",
    "itl_measurement_mode",
    "latency_estimated",
    "mean_power_w",
    "energy_method",
    "energy_integral_j",
    "energy_counter_raw_j",
    "energy_disagreement_pct",
    "energy_disagreement_flagged",
    "short_window",
    "energy_uncertainty_j",
    "energy_uncertainty_flagged",
    "energy_edge_rule",
    "quiet_power_w",
    "baseline_subtracted",
    "energy_adjusted_clamped",
    "max_temperature_c",
    "thermal_wait_s",
    "model_load_time_sec",
    "model_already_loaded",
    "cold_start",
    "gpu_memory_before_mb",
    "gpu_memory_after_mb",
    "harness_recycled",
    "energy_adjusted_resident_j",
    "energy_adjusted_resident_source",
    "energy_adjusted_resident_uncertainty_j",
    "resident_baseline_power_w",
    "baseline_std_w",
    "baseline_settle_s",
    "resident_baseline_std_w",
    "resident_baseline_settle_s",
    "lease_to_measure_s",
    "prefill_energy_per_call_j",
    "prefill_energy_j",
    "decode_energy_j",
    "prefill_energy_adjusted_j",
    "decode_energy_adjusted_j",
    "prefill_calls",
    "throttle_thermal",
    "throttle_power",
    "hw_slowdown",
    "sm_clock_min_mhz",
    "sm_clock_max_mhz",
    "environment_hash",
    "simulated",
    "gpu_name",
    "worker",
    "host",
    "slot",
    "runner",
    "image",
    "image_id",
    "tp_size",
    "gpu_indices",
    "gpu_energy_j",
    "gpu_shared",
    "gpu_foreign_pids",
    "started_at",
    "ended_at",
    "window_start_mono_ns",
    "window_end_mono_ns",
    "warnings",
    "last_failure",
];

/// The list columns, and how CSV joins each one's items into one field (JSON lines
/// and Parquet keep them lists). A row without a result has null there, not `[]`.
pub const CSV_LIST_SEPARATORS: &[(&str, &str)] = &[
    ("flags", ";"),
    ("gpu_foreign_pids", ";"),
    ("warnings", " | "),
];

/// One flat row for a run (nulls where the run has no result).
pub fn row(r: &RunRow) -> serde_json::Map<String, Json> {
    let model = lem_common::pyjson::parse(&r.config_json)
        .ok()
        .and_then(|c| {
            c.get_path("task.model")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    let res = r.result.as_ref();
    let f = |get: &dyn Fn(&lem_common::types::RunResult) -> Json| -> Json {
        res.map(get).unwrap_or(Json::Null)
    };
    let mut m = serde_json::Map::new();
    m.insert("experiment_id".into(), json!(r.run.to_string()));
    m.insert("cycle".into(), json!(r.cycle));
    m.insert("config_hash".into(), json!(r.config_hash));
    m.insert("engine".into(), json!(r.engine));
    m.insert("model_name".into(), json!(model));
    m.insert("state".into(), json!(r.state));
    m.insert("attempts".into(), json!(r.attempts));
    m.insert("flags".into(), f(&|x| json!(quality::flag_names(x))));
    m.insert("total_energy_j".into(), f(&|x| json!(x.total_energy_j)));
    m.insert(
        "energy_adjusted_j".into(),
        f(&|x| json!(x.energy_adjusted_j)),
    );
    m.insert("baseline_power_w".into(), f(&|x| json!(x.baseline_power_w)));
    m.insert(
        "avg_tokens_per_second".into(),
        f(&|x| json!(x.avg_tokens_per_second)),
    );
    m.insert(
        "avg_energy_per_token_j".into(),
        f(&|x| json!(x.avg_energy_per_token_j)),
    );
    m.insert(
        "energy_per_token_adjusted_j".into(),
        f(&|x| json!(x.energy_per_token_adjusted_j)),
    );
    m.insert(
        "output_tokens_per_second".into(),
        f(&|x| json!(x.output_tokens_per_second)),
    );
    m.insert(
        "total_inference_time_sec".into(),
        f(&|x| json!(x.duration_s)),
    );
    m.insert("input_tokens".into(), f(&|x| json!(x.input_tokens)));
    m.insert("output_tokens".into(), f(&|x| json!(x.output_tokens)));
    m.insert(
        "itl_measurement_mode".into(),
        f(&|x| json!(quality::itl_measurement_mode(x))),
    );
    m.insert(
        "latency_estimated".into(),
        f(&|x| json!(quality::latency_estimated(x))),
    );
    m.insert("mean_power_w".into(), f(&|x| json!(x.mean_power_w)));
    m.insert("energy_method".into(), f(&|x| json!(x.energy_method)));
    m.insert(
        "energy_integral_j".into(),
        f(&|x| json!(x.energy_integral_j)),
    );
    m.insert(
        "energy_counter_raw_j".into(),
        f(&|x| json!(x.energy_counter_raw_j)),
    );
    m.insert(
        "energy_disagreement_pct".into(),
        f(&|x| json!(x.energy_disagreement_pct)),
    );
    m.insert(
        "energy_disagreement_flagged".into(),
        f(&|x| json!(x.energy_disagreement_flagged)),
    );
    m.insert("short_window".into(), f(&|x| json!(x.short_window)));
    m.insert(
        "energy_uncertainty_j".into(),
        f(&|x| json!(x.energy_uncertainty_j)),
    );
    m.insert(
        "energy_uncertainty_flagged".into(),
        f(&|x| json!(x.energy_uncertainty_flagged)),
    );
    m.insert("energy_edge_rule".into(), f(&|x| json!(x.energy_edge_rule)));
    m.insert("quiet_power_w".into(), f(&|x| json!(x.quiet_power_w)));
    m.insert(
        "baseline_subtracted".into(),
        f(&|x| json!(quality::baseline_subtracted(x))),
    );
    m.insert(
        "energy_adjusted_clamped".into(),
        f(&|x| json!(x.energy_adjusted_clamped)),
    );
    m.insert("max_temperature_c".into(), f(&|x| json!(x.max_temp_c)));
    m.insert("thermal_wait_s".into(), f(&|x| json!(x.thermal_wait_s)));
    m.insert(
        "model_load_time_sec".into(),
        f(&|x| json!(x.model_load_seconds)),
    );
    m.insert(
        "model_already_loaded".into(),
        f(&|x| json!(x.model_already_loaded)),
    );
    m.insert("cold_start".into(), f(&|x| json!(x.cold_start)));
    m.insert(
        "gpu_memory_before_mb".into(),
        f(&|x| json!(x.gpu_memory_before_mb)),
    );
    m.insert(
        "gpu_memory_after_mb".into(),
        f(&|x| json!(x.gpu_memory_after_mb)),
    );
    m.insert("harness_recycled".into(), f(&|x| json!(x.harness_recycled)));
    m.insert(
        "energy_adjusted_resident_j".into(),
        f(&|x| json!(x.energy_adjusted_resident_j)),
    );
    m.insert(
        "energy_adjusted_resident_source".into(),
        f(&|x| json!(x.energy_adjusted_resident_source)),
    );
    m.insert(
        "energy_adjusted_resident_uncertainty_j".into(),
        f(&|x| json!(x.energy_adjusted_resident_uncertainty_j)),
    );
    m.insert(
        "resident_baseline_power_w".into(),
        f(&|x| json!(x.resident_baseline.as_ref().map(|b| b.mean_power_w))),
    );
    m.insert(
        "baseline_std_w".into(),
        f(&|x| json!(x.baseline.as_ref().map(|b| b.std_power_w))),
    );
    m.insert(
        "baseline_settle_s".into(),
        f(&|x| json!(x.baseline.as_ref().map(|b| b.settle_s))),
    );
    m.insert(
        "resident_baseline_std_w".into(),
        f(&|x| json!(x.resident_baseline.as_ref().map(|b| b.std_power_w))),
    );
    m.insert(
        "resident_baseline_settle_s".into(),
        f(&|x| json!(x.resident_baseline.as_ref().map(|b| b.settle_s))),
    );
    m.insert(
        "lease_to_measure_s".into(),
        f(&|x| json!(x.lease_to_measure_s)),
    );
    m.insert(
        "prefill_energy_per_call_j".into(),
        f(&|x| json!(x.prefill_energy_per_call_j)),
    );
    m.insert("prefill_energy_j".into(), f(&|x| json!(x.prefill_energy_j)));
    m.insert("decode_energy_j".into(), f(&|x| json!(x.decode_energy_j)));
    m.insert(
        "prefill_energy_adjusted_j".into(),
        f(&|x| json!(x.prefill_energy_adjusted_j)),
    );
    m.insert(
        "decode_energy_adjusted_j".into(),
        f(&|x| json!(x.decode_energy_adjusted_j)),
    );
    m.insert("prefill_calls".into(), f(&|x| json!(x.prefill_calls)));
    m.insert("throttle_thermal".into(), f(&|x| json!(x.throttle_thermal)));
    m.insert("throttle_power".into(), f(&|x| json!(x.throttle_power)));
    m.insert("hw_slowdown".into(), f(&|x| json!(x.hw_slowdown)));
    m.insert("sm_clock_min_mhz".into(), f(&|x| json!(x.sm_clock_min_mhz)));
    m.insert("sm_clock_max_mhz".into(), f(&|x| json!(x.sm_clock_max_mhz)));
    m.insert("environment_hash".into(), f(&|x| json!(x.environment_hash)));
    m.insert("simulated".into(), f(&|x| json!(x.simulated)));
    m.insert("gpu_name".into(), f(&|x| json!(x.gpu_name)));
    m.insert("worker".into(), f(&|x| json!(x.worker)));
    m.insert("host".into(), f(&|x| json!(x.host)));
    m.insert("slot".into(), f(&|x| json!(x.slot)));
    // The runtime the worker ran it in: a container of the image in its environment
    // (docker runtime), else a process.
    let image = |x: &lem_common::types::RunResult, k: &str| {
        x.environment
            .pointer("/host/harness_image")
            .map(|i| i[k].clone())
    };
    m.insert(
        "runner".into(),
        f(&|x| {
            json!(if image(x, "id").is_some() {
                "container"
            } else {
                "process"
            })
        }),
    );
    m.insert(
        "image".into(),
        f(&|x| image(x, "name").unwrap_or(json!(null))),
    );
    m.insert(
        "image_id".into(),
        f(&|x| image(x, "id").unwrap_or(json!(null))),
    );
    m.insert(
        "tp_size".into(),
        json!(lem_common::pyjson::parse(&r.config_json)
            .map(|c| lem_common::gpus::tp_size(&r.engine, &c))
            .unwrap_or(1)),
    );
    m.insert("gpu_indices".into(), f(&|x| json!(x.gpu_indices)));
    m.insert(
        "gpu_energy_j".into(),
        f(&|x| json!(x.gpus.iter().map(|g| g.total_energy_j).collect::<Vec<_>>())),
    );
    m.insert("gpu_shared".into(), f(&|x| json!(quality::gpu_shared(x))));
    m.insert(
        "gpu_foreign_pids".into(),
        f(&|x| json!(quality::foreign_pids(x))),
    );
    m.insert("started_at".into(), f(&|x| json!(x.started_at)));
    m.insert("ended_at".into(), f(&|x| json!(x.ended_at)));
    m.insert(
        "window_start_mono_ns".into(),
        f(&|x| json!(x.window_start_mono_ns)),
    );
    m.insert(
        "window_end_mono_ns".into(),
        f(&|x| json!(x.window_end_mono_ns)),
    );
    m.insert("warnings".into(), f(&|x| json!(x.warnings)));
    m.insert("last_failure".into(), json!(r.last_failure));
    debug_assert_eq!(m.len(), COLUMNS.len());
    m
}

pub fn to_jsonl(rows: &[RunRow]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(&Json::Object(row(r)).to_string());
        out.push('\n');
    }
    out
}

/// One CSV field: null is empty, a string as is, a list column of
/// [`CSV_LIST_SEPARATORS`] its items joined, anything else its JSON text.
fn csv_field(column: &str, v: &Json) -> String {
    let text = |v: &Json| match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let joined = CSV_LIST_SEPARATORS
        .iter()
        .find(|(c, _)| *c == column)
        .and_then(|(_, sep)| v.as_array().map(|items| (items, sep)));
    let s = match joined {
        Some((items, sep)) => items.iter().map(text).collect::<Vec<_>>().join(sep),
        None => text(v),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub fn to_csv(rows: &[RunRow]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        let m = row(r);
        let fields: Vec<String> = COLUMNS.iter().map(|c| csv_field(c, &m[*c])).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// The parameters that differ between a campaign's configs, per config hash, for a
/// readable "config" column (`batch_size=4 dtype=float16`).
fn varying_params(rows: &[RunRow]) -> BTreeMap<String, String> {
    let mut flat: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in rows {
        if flat.contains_key(&r.config_hash) {
            continue;
        }
        let mut m = BTreeMap::new();
        if let Ok(v) = lem_common::pyjson::parse(&r.config_json) {
            flatten("", &v, &mut m);
        }
        flat.insert(r.config_hash.clone(), m);
    }
    let mut keys: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for m in flat.values() {
        for (k, v) in m {
            keys.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    let n = flat.len();
    let varying: Vec<&String> = keys
        .iter()
        .filter(|(k, vals)| {
            vals.len() > 1 || flat.values().filter(|m| m.contains_key(*k)).count() != n
        })
        .map(|(k, _)| k)
        .collect();
    flat.into_iter()
        .map(|(h, m)| {
            let parts: Vec<String> = varying
                .iter()
                .filter_map(|k| {
                    m.get(*k).map(|v| {
                        let short = k.rsplit('.').next().unwrap_or(k);
                        format!("{short}={v}")
                    })
                })
                .collect();
            (h, parts.join(" "))
        })
        .collect()
}

fn flatten(prefix: &str, v: &lem_common::Value, out: &mut BTreeMap<String, String>) {
    match v {
        lem_common::Value::Map(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        lem_common::Value::Null => {}
        other => {
            out.insert(
                prefix.to_string(),
                lem_common::pyjson::dumps(other, &Default::default()),
            );
        }
    }
}

/// The summary table: one line per config with cycles, tokens/s, adjusted J/token and
/// the CV across cycles.
pub fn summary_table(rows: &[RunRow]) -> String {
    let labels = varying_params(rows);
    let mut order: Vec<String> = Vec::new();
    let mut by_hash: BTreeMap<String, Vec<&RunRow>> = BTreeMap::new();
    for r in rows {
        if !by_hash.contains_key(&r.config_hash) {
            order.push(r.config_hash.clone());
        }
        by_hash.entry(r.config_hash.clone()).or_default().push(r);
    }
    let mut out = String::new();
    let simulated = rows
        .iter()
        .any(|r| r.result.as_ref().is_some_and(|x| x.simulated));
    writeln!(
        out,
        "{:<16} {:<12} {:<34} {:>6} {:>10} {:>14} {:>14} {:>7}",
        "config_hash", "engine", "config", "cycles", "tok/s", "J/tok (raw)", "J/tok (adj)", "CV"
    )
    .unwrap();
    for h in order {
        let runs = &by_hash[&h];
        let done: Vec<&lem_common::types::RunResult> =
            runs.iter().filter_map(|r| r.result.as_ref()).collect();
        let tps: Vec<f64> = done.iter().map(|x| x.avg_tokens_per_second).collect();
        let raw: Vec<f64> = done.iter().map(|x| x.avg_energy_per_token_j).collect();
        let adj: Vec<f64> = done
            .iter()
            .filter_map(|x| x.energy_per_token_adjusted_j)
            .collect();
        let cv = stats::cv(if adj.is_empty() { &raw } else { &adj });
        let fmt_opt = |v: Option<f64>, prec: usize| {
            v.map(|x| format!("{x:.prec$}"))
                .unwrap_or_else(|| "-".into())
        };
        let mut label = labels.get(&h).cloned().unwrap_or_default();
        if label.len() > 34 {
            label.truncate(33);
            label.push('~');
        }
        writeln!(
            out,
            "{:<16} {:<12} {:<34} {:>6} {:>10} {:>14} {:>14} {:>7}",
            h,
            runs[0].engine,
            label,
            format!("{}/{}", done.len(), runs.len()),
            fmt_opt(stats::mean(&tps), 1),
            fmt_opt(stats::mean(&raw), 6),
            fmt_opt(stats::mean(&adj), 6),
            cv.map(|c| format!(
                "{:.1}%{}",
                c * 100.0,
                if stats::flag_high_cv(c) { "!" } else { "" }
            ))
            .unwrap_or_else(|| "-".into()),
        )
        .unwrap();
    }
    if simulated {
        writeln!(
            out,
            "note: measured on a SIMULATED GPU (no NVIDIA GPU here): the joules come from a model, not hardware"
        )
        .unwrap();
    }
    out
}

/// The timeseries of every run with a result, one JSON line per point:
/// `{"experiment_id", "cycle", "config_hash", "t_s", "power_w", "temp_c", "sm_clock_mhz"}`;
/// for a run on a group of GPUs also `per_gpu`: `[{"gpu", "power_w", "temp_c",
/// "sm_clock_mhz"}]` at that point (the run's `power_w` is their sum).
pub fn timeseries_jsonl(rows: &[RunRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let Some(ts) = r.result.as_ref().map(|x| &x.timeseries) else {
            continue;
        };
        let col = |k: &str| {
            ts.get(k)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let (t, p, c, k) = (
            col("t_s"),
            col("power_w"),
            col("temp_c"),
            col("sm_clock_mhz"),
        );
        let per_gpu = ts
            .get("per_gpu")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for (i, t_s) in t.iter().enumerate() {
            let mut line = json!({
                "experiment_id": r.run.to_string(),
                "cycle": r.cycle,
                "config_hash": r.config_hash,
                "t_s": t_s,
                "power_w": p.get(i),
                "temp_c": c.get(i),
                "sm_clock_mhz": k.get(i),
            });
            if !per_gpu.is_empty() {
                let at = |g: &Json, key: &str| g.get(key).and_then(|a| a.get(i)).cloned();
                line["per_gpu"] = per_gpu
                    .iter()
                    .map(|g| {
                        json!({
                            "gpu": g.get("gpu"),
                            "power_w": at(g, "power_w"),
                            "temp_c": at(g, "temp_c"),
                            "sm_clock_mhz": at(g, "sm_clock_mhz"),
                        })
                    })
                    .collect();
            }
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_joins_list_columns_and_quotes_what_needs_it() {
        let list = json!(["simulated", "short_window"]);
        assert_eq!(csv_field("flags", &list), "simulated;short_window");
        assert_eq!(csv_field("flags", &json!([])), "");
        assert_eq!(csv_field("flags", &Json::Null), "");
        assert_eq!(csv_field("gpu_foreign_pids", &json!([7, 9])), "7;9");
        assert_eq!(
            csv_field("warnings", &json!(["a, b", "say \"c\""])),
            "\"a, b | say \"\"c\"\"\""
        );
        // Other arrays keep their JSON text.
        assert_eq!(csv_field("gpu_indices", &json!([0, 1])), "\"[0,1]\"");
        for (column, _) in CSV_LIST_SEPARATORS {
            assert!(COLUMNS.contains(column), "{column} is not a column");
        }
    }

    #[test]
    fn a_row_has_exactly_the_columns_with_or_without_a_result() {
        let done = RunRow {
            run: lem_common::types::RunKey {
                campaign: lem_common::types::CampaignId(1),
                seq: 0,
            },
            config_hash: "a0767dbccba6fc45".into(),
            cycle: 1,
            engine: "synthetic".into(),
            state: "done".into(),
            attempts: 1,
            config_json: r#"{"task": {"model": "gpt2"}}"#.into(),
            result: Some(lem_common::types::RunResult {
                simulated: true,
                ..Default::default()
            }),
            last_failure: None,
        };
        let failed = RunRow {
            state: "failed".into(),
            result: None,
            ..done.clone()
        };
        for r in [&done, &failed] {
            let m = row(r);
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            assert_eq!(keys, COLUMNS);
        }
        assert_eq!(
            row(&done)["flags"],
            json!(["simulated", "baseline_not_subtracted"])
        );
        assert_eq!(row(&failed)["flags"], Json::Null);
        assert_eq!(row(&failed)["warnings"], Json::Null);
    }
}
