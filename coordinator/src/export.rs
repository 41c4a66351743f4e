//! Results export: one flat row per run (JSON lines, CSV, Parquet), one row per
//! configuration with `--aggregate`, and the per-config summary table that
//! `lem-coord run` and `lem-coord summary` print.
//!
//! One column table drives every format: [`RUN_COLUMNS`] names each column, its
//! [`Kind`] (which Parquet type it is, how CSV writes it) and how it is read off a run;
//! [`Table`] holds the columns and rows that [`Table::to_jsonl`], [`Table::to_csv`] and
//! `parquet_export::to_parquet` write, so the formats cannot drift apart. A campaign's
//! varying parameters (`synthetic.engine_params.batch_size`, as the study names them:
//! [`lem_common::aggregate::varying_params`]) become columns of their own after
//! `model_name`.
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

use std::fmt::Write as _;

use lem_common::aggregate::{self, ConfigAggregate, Metric};
use lem_common::rpc::RunRow;
use lem_common::types::{PrefillSplit, RunResult};
use lem_common::{quality, stats};
use serde_json::{json, Value as Json};

/// What a column holds: its Parquet type, and how CSV writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// An RFC 3339 UTC time: a string in JSON lines and CSV, a UTC timestamp (us) in
    /// Parquet.
    Time,
    ListStr,
    ListInt,
    ListFloat,
}

impl Kind {
    /// The kind of a column whose values are known only at export time (a study
    /// parameter): int, float, bool where every non-null value is one, else string.
    pub fn of_values<'a>(values: impl IntoIterator<Item = &'a Json>) -> Kind {
        let non_null: Vec<&Json> = values.into_iter().filter(|v| !v.is_null()).collect();
        if non_null.is_empty() {
            Kind::Str
        } else if non_null.iter().all(|v| v.is_i64() || v.is_u64()) {
            Kind::Int
        } else if non_null.iter().all(|v| v.is_number()) {
            Kind::Float
        } else if non_null.iter().all(|v| v.is_boolean()) {
            Kind::Bool
        } else {
            Kind::Str
        }
    }
}

/// How a column is read off a run.
#[derive(Clone, Copy)]
pub enum Get {
    /// From the run's record (state, cycle, ...): every run has it.
    Run(fn(&RunRow) -> Json),
    /// From the run's result: null for a run without one.
    Result(fn(&RunResult) -> Json),
}

/// One column of the per-run export.
#[derive(Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub get: Get,
}

impl Column {
    const fn run(name: &'static str, kind: Kind, get: fn(&RunRow) -> Json) -> Column {
        Column {
            name,
            kind,
            get: Get::Run(get),
        }
    }

    const fn result(name: &'static str, kind: Kind, get: fn(&RunResult) -> Json) -> Column {
        Column {
            name,
            kind,
            get: Get::Result(get),
        }
    }

    /// The column's value for run `r`.
    pub fn value(&self, r: &RunRow) -> Json {
        match self.get {
            Get::Run(f) => f(r),
            Get::Result(f) => r.result.as_ref().map(f).unwrap_or(Json::Null),
        }
    }
}

fn model_of(r: &RunRow) -> String {
    lem_common::pyjson::parse(&r.config_json)
        .ok()
        .and_then(|c| {
            c.get_path("task.model")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_default()
}

/// A field of the image the worker ran the run in (docker runtime), from its
/// environment.
fn image(x: &RunResult, k: &str) -> Option<Json> {
    x.environment
        .pointer("/host/harness_image")
        .map(|i| i[k].clone())
}

/// A figure of the run's prefill/decode split (null without a prefill window).
fn prefill(x: &RunResult, f: fn(&PrefillSplit) -> Option<f64>) -> Option<f64> {
    x.energy.prefill.as_ref().and_then(f)
}

/// The columns of the per-run export, in order; the campaign's varying parameters
/// are inserted after `model_name` ([`Table::runs`]).
pub const RUN_COLUMNS: &[Column] = &[
    Column::run("experiment_id", Kind::Str, |r| json!(r.run.to_string())),
    Column::run("cycle", Kind::Int, |r| json!(r.cycle)),
    Column::run("config_hash", Kind::Str, |r| json!(r.config_hash)),
    Column::run("engine", Kind::Str, |r| json!(r.engine)),
    Column::run("model_name", Kind::Str, |r| json!(model_of(r))),
    Column::run("state", Kind::Str, |r| json!(r.state)),
    Column::run("attempts", Kind::Int, |r| json!(r.attempts)),
    Column::result("flags", Kind::ListStr, |x| json!(quality::flag_names(x))),
    Column::result("total_energy_j", Kind::Float, |x| json!(x.energy.total_j)),
    Column::result("energy_adjusted_j", Kind::Float, |x| {
        json!(x.energy.adjusted_j)
    }),
    Column::result("baseline_power_w", Kind::Float, |x| {
        json!(x.baselines.device_power_w)
    }),
    Column::result("avg_tokens_per_second", Kind::Float, |x| {
        json!(x.throughput.avg_tokens_per_second)
    }),
    Column::result("avg_energy_per_token_j", Kind::Float, |x| {
        json!(x.throughput.avg_energy_per_token_j)
    }),
    Column::result("energy_per_token_adjusted_j", Kind::Float, |x| {
        json!(x.throughput.energy_per_token_adjusted_j)
    }),
    Column::result("output_tokens_per_second", Kind::Float, |x| {
        json!(x.throughput.output_tokens_per_second)
    }),
    Column::result("total_inference_time_sec", Kind::Float, |x| {
        json!(x.window.duration_s)
    }),
    Column::result("input_tokens", Kind::Int, |x| {
        json!(x.throughput.input_tokens)
    }),
    Column::result("output_tokens", Kind::Int, |x| {
        json!(x.throughput.output_tokens)
    }),
    Column::result("itl_measurement_mode", Kind::Str, |x| {
        json!(quality::itl_measurement_mode(x))
    }),
    Column::result("latency_estimated", Kind::Bool, |x| {
        json!(quality::latency_estimated(x))
    }),
    Column::result("mean_power_w", Kind::Float, |x| {
        json!(x.energy.mean_power_w)
    }),
    Column::result("energy_method", Kind::Str, |x| json!(x.energy.method)),
    Column::result("energy_integral_j", Kind::Float, |x| {
        json!(x.energy.integral_j)
    }),
    Column::result("energy_counter_raw_j", Kind::Float, |x| {
        json!(x.energy.counter_raw_j)
    }),
    Column::result("energy_disagreement_pct", Kind::Float, |x| {
        json!(x.energy.disagreement_pct)
    }),
    Column::result("energy_disagreement_flagged", Kind::Bool, |x| {
        json!(x.energy.disagreement_flagged)
    }),
    Column::result("short_window", Kind::Bool, |x| json!(x.window.short)),
    Column::result("energy_uncertainty_j", Kind::Float, |x| {
        json!(x.energy.uncertainty_j)
    }),
    Column::result("energy_uncertainty_flagged", Kind::Bool, |x| {
        json!(x.energy.uncertainty_flagged)
    }),
    Column::result("energy_edge_rule", Kind::Str, |x| json!(x.energy.edge_rule)),
    Column::result("quiet_power_w", Kind::Float, |x| {
        json!(x.energy.quiet_power_w)
    }),
    Column::result("baseline_subtracted", Kind::Bool, |x| {
        json!(quality::baseline_subtracted(x))
    }),
    Column::result("energy_adjusted_clamped", Kind::Bool, |x| {
        json!(x.energy.adjusted_clamped)
    }),
    Column::result("max_temperature_c", Kind::Float, |x| {
        json!(x.thermal.max_temp_c)
    }),
    Column::result("thermal_wait_s", Kind::Float, |x| json!(x.thermal.wait_s)),
    Column::result("model_load_time_sec", Kind::Float, |x| {
        json!(x.harness.model_load_seconds)
    }),
    Column::result("model_already_loaded", Kind::Bool, |x| {
        json!(x.harness.model_already_loaded)
    }),
    Column::result("cold_start", Kind::Bool, |x| json!(x.harness.cold_start)),
    Column::result("gpu_memory_before_mb", Kind::Int, |x| {
        json!(x.harness.gpu_memory_before_mb)
    }),
    Column::result("gpu_memory_after_mb", Kind::Int, |x| {
        json!(x.harness.gpu_memory_after_mb)
    }),
    Column::result("harness_recycled", Kind::Str, |x| json!(x.harness.recycled)),
    Column::result("energy_adjusted_resident_j", Kind::Float, |x| {
        json!(x.energy.adjusted_resident_j)
    }),
    Column::result("energy_adjusted_resident_source", Kind::Str, |x| {
        json!(x.energy.adjusted_resident_source)
    }),
    Column::result("energy_adjusted_resident_uncertainty_j", Kind::Float, |x| {
        json!(x.energy.adjusted_resident_uncertainty_j)
    }),
    Column::result("resident_baseline_power_w", Kind::Float, |x| {
        json!(x.baselines.resident.as_ref().map(|b| b.mean_power_w))
    }),
    Column::result("baseline_std_w", Kind::Float, |x| {
        json!(x.baselines.device.as_ref().map(|b| b.std_power_w))
    }),
    Column::result("baseline_settle_s", Kind::Float, |x| {
        json!(x.baselines.device.as_ref().map(|b| b.settle_s))
    }),
    Column::result("resident_baseline_std_w", Kind::Float, |x| {
        json!(x.baselines.resident.as_ref().map(|b| b.std_power_w))
    }),
    Column::result("resident_baseline_settle_s", Kind::Float, |x| {
        json!(x.baselines.resident.as_ref().map(|b| b.settle_s))
    }),
    Column::result("lease_to_measure_s", Kind::Float, |x| {
        json!(x.window.lease_to_measure_s)
    }),
    Column::result("prefill_energy_per_call_j", Kind::Float, |x| {
        json!(prefill(x, |p| Some(p.energy_per_call_j)))
    }),
    Column::result("prefill_energy_j", Kind::Float, |x| {
        json!(prefill(x, |p| Some(p.prefill_energy_j)))
    }),
    Column::result("decode_energy_j", Kind::Float, |x| {
        json!(prefill(x, |p| Some(p.decode_energy_j)))
    }),
    Column::result("prefill_energy_adjusted_j", Kind::Float, |x| {
        json!(prefill(x, |p| p.prefill_energy_adjusted_j))
    }),
    Column::result("decode_energy_adjusted_j", Kind::Float, |x| {
        json!(prefill(x, |p| p.decode_energy_adjusted_j))
    }),
    Column::result("prefill_calls", Kind::Int, |x| {
        json!(x.energy.prefill.as_ref().map_or(0, |p| p.calls))
    }),
    Column::result("throttle_thermal", Kind::Bool, |x| {
        json!(x.thermal.throttle_thermal)
    }),
    Column::result("throttle_power", Kind::Bool, |x| {
        json!(x.thermal.throttle_power)
    }),
    Column::result("hw_slowdown", Kind::Bool, |x| json!(x.thermal.hw_slowdown)),
    Column::result("sm_clock_min_mhz", Kind::Int, |x| {
        json!(x.thermal.sm_clock_min_mhz)
    }),
    Column::result("sm_clock_max_mhz", Kind::Int, |x| {
        json!(x.thermal.sm_clock_max_mhz)
    }),
    Column::result("environment_hash", Kind::Str, |x| json!(x.environment_hash)),
    Column::result("trace_id", Kind::Str, |x| json!(x.trace_id)),
    Column::result("simulated", Kind::Bool, |x| json!(x.simulated)),
    Column::result("gpu_name", Kind::Str, |x| json!(x.gpu_name)),
    Column::result("worker", Kind::Str, |x| json!(x.worker)),
    Column::result("host", Kind::Str, |x| json!(x.host)),
    Column::result("slot", Kind::Int, |x| json!(x.slot)),
    Column::result("runner", Kind::Str, |x| {
        json!(if image(x, "id").is_some() {
            "container"
        } else {
            "process"
        })
    }),
    Column::result("image", Kind::Str, |x| {
        image(x, "name").unwrap_or(json!(null))
    }),
    Column::result("image_id", Kind::Str, |x| {
        image(x, "id").unwrap_or(json!(null))
    }),
    Column::run("tp_size", Kind::Int, |r| {
        json!(lem_common::pyjson::parse(&r.config_json)
            .map(|c| lem_common::gpus::tp_size(&r.engine, &c))
            .unwrap_or(1))
    }),
    Column::result("gpu_indices", Kind::ListInt, |x| json!(x.gpu_indices)),
    Column::result("gpu_energy_j", Kind::ListFloat, |x| {
        json!(x.gpus.iter().map(|g| g.total_energy_j).collect::<Vec<_>>())
    }),
    Column::result("gpu_shared", Kind::Bool, |x| json!(quality::gpu_shared(x))),
    Column::result("gpu_foreign_pids", Kind::ListInt, |x| {
        json!(quality::foreign_pids(x))
    }),
    Column::result("started_at", Kind::Time, |x| json!(x.started_at)),
    Column::result("ended_at", Kind::Time, |x| json!(x.ended_at)),
    Column::result("window_start_mono_ns", Kind::Int, |x| {
        json!(x.window.start_mono_ns)
    }),
    Column::result("window_end_mono_ns", Kind::Int, |x| {
        json!(x.window.end_mono_ns)
    }),
    Column::result("warnings", Kind::ListStr, |x| json!(x.warnings)),
    Column::run("last_failure", Kind::Str, |r| json!(r.last_failure)),
];

/// The fixed columns' names, in order.
pub fn run_column_names() -> Vec<&'static str> {
    RUN_COLUMNS.iter().map(|c| c.name).collect()
}

/// The column after which a campaign's varying parameters go.
const PARAMS_AFTER: &str = "model_name";

/// How CSV joins a list column's items into one field (JSON lines and Parquet keep
/// lists): `;`, except free text, joined by ` | `. A row without a result has null
/// there (an empty field), not `[]`.
pub fn csv_list_separator(column: &str) -> &'static str {
    match column {
        "warnings" | "flag_notes" => " | ",
        _ => ";",
    }
}

/// Columns and rows, ready for any format.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Kind)>,
    pub rows: Vec<Vec<Json>>,
}

impl Table {
    /// One row per run: [`RUN_COLUMNS`], the campaign's varying parameters after
    /// `model_name`.
    pub fn runs(rows: &[RunRow]) -> Table {
        let (names, by_hash) = aggregate::params_of_rows(rows);
        let at = RUN_COLUMNS
            .iter()
            .position(|c| c.name == PARAMS_AFTER)
            .map_or(0, |i| i + 1);
        let param_values = |r: &RunRow| -> Vec<Json> {
            by_hash
                .get(&r.config_hash)
                .map(|v| v.iter().map(|x| x.clone().unwrap_or(Json::Null)).collect())
                .unwrap_or_else(|| vec![Json::Null; names.len()])
        };
        let param_rows: Vec<Vec<Json>> = rows.iter().map(param_values).collect();
        let mut columns: Vec<(String, Kind)> = RUN_COLUMNS
            .iter()
            .map(|c| (c.name.to_string(), c.kind))
            .collect();
        for (i, n) in names.iter().enumerate().rev() {
            let kind = Kind::of_values(param_rows.iter().map(|p| &p[i]));
            columns.insert(at, (n.clone(), kind));
        }
        let rows = rows
            .iter()
            .zip(param_rows)
            .map(|(r, params)| {
                let mut v: Vec<Json> = RUN_COLUMNS.iter().map(|c| c.value(r)).collect();
                v.splice(at..at, params);
                v
            })
            .collect();
        Table { columns, rows }
    }

    /// One row per configuration (`--aggregate`): its name, parameters, run counts,
    /// flags, then for each measure of [`Metric::ALL`] `<measure>_n`, `_mean`,
    /// `_median`, `_std`, `_cv`, `_p50`, `_p95`, `_p99`, `_min`, `_max`, `_ci95_low`,
    /// `_ci95_high` and `_ci_method`.
    pub fn aggregate(aggs: &[ConfigAggregate]) -> Table {
        let mut columns: Vec<(String, Kind)> = vec![
            ("config_hash".into(), Kind::Str),
            ("engine".into(), Kind::Str),
            ("model_name".into(), Kind::Str),
        ];
        let names: Vec<String> = aggs
            .first()
            .map(|a| a.params.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        for (i, n) in names.iter().enumerate() {
            let kind = Kind::of_values(aggs.iter().filter_map(|a| a.params[i].1.as_ref()));
            columns.push((n.clone(), kind));
        }
        for (n, k) in [
            ("rank", Kind::Int),
            ("runs", Kind::Int),
            ("done", Kind::Int),
            ("cycles", Kind::ListInt),
            ("simulated", Kind::Bool),
            ("flags", Kind::ListStr),
            ("flag_notes", Kind::ListStr),
        ] {
            columns.push((n.into(), k));
        }
        for m in Metric::ALL {
            for (suffix, k) in METRIC_STATS {
                columns.push((format!("{}_{suffix}", m.name()), *k));
            }
        }
        let rows = aggs
            .iter()
            .enumerate()
            .map(|(rank, a)| {
                let mut v = vec![json!(a.config_hash), json!(a.engine), json!(a.model)];
                v.extend(
                    a.params
                        .iter()
                        .map(|(_, x)| x.clone().unwrap_or(Json::Null)),
                );
                v.extend([
                    json!(rank + 1),
                    json!(a.runs),
                    json!(a.done),
                    json!(a.cycles),
                    json!(a.simulated),
                    json!(a.flag_names()),
                    json!(flag_notes(a)),
                ]);
                for m in Metric::ALL {
                    let s = a.metrics.get(&m);
                    v.extend(
                        METRIC_STATS
                            .iter()
                            .map(|(suffix, _)| s.map_or(Json::Null, |s| stat_value(s, suffix))),
                    );
                }
                v
            })
            .collect();
        Table { columns, rows }
    }

    /// One JSON object per row, keys in column order.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for r in &self.rows {
            let m: serde_json::Map<String, Json> = self
                .columns
                .iter()
                .zip(r)
                .map(|((n, _), v)| (n.clone(), v.clone()))
                .collect();
            out.push_str(&Json::Object(m).to_string());
            out.push('\n');
        }
        out
    }

    /// A header line and one line per row (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        let mut out = names.join(",");
        out.push('\n');
        for r in &self.rows {
            let fields: Vec<String> = self
                .columns
                .iter()
                .zip(r)
                .map(|((n, _), v)| csv_field(n, v))
                .collect();
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }

    /// The value of column `name` in row `row`, if the column exists.
    pub fn get(&self, row: usize, name: &str) -> Option<&Json> {
        let i = self.columns.iter().position(|(n, _)| n == name)?;
        self.rows.get(row).map(|r| &r[i])
    }
}

/// The statistics of one measure in an aggregate row, by column suffix.
const METRIC_STATS: &[(&str, Kind)] = &[
    ("n", Kind::Int),
    ("mean", Kind::Float),
    ("median", Kind::Float),
    ("std", Kind::Float),
    ("cv", Kind::Float),
    ("p50", Kind::Float),
    ("p95", Kind::Float),
    ("p99", Kind::Float),
    ("min", Kind::Float),
    ("max", Kind::Float),
    ("ci95_low", Kind::Float),
    ("ci95_high", Kind::Float),
    ("ci_method", Kind::Str),
];

fn stat_value(s: &stats::Summary, suffix: &str) -> Json {
    match suffix {
        "n" => json!(s.n),
        "mean" => json!(s.mean),
        "median" => json!(s.median),
        "std" => json!(s.std),
        "cv" => json!(s.cv),
        "p50" => json!(s.p50),
        "p95" => json!(s.p95),
        "p99" => json!(s.p99),
        "min" => json!(s.min),
        "max" => json!(s.max),
        "ci95_low" => json!(s.ci95_low),
        "ci95_high" => json!(s.ci95_high),
        "ci_method" => json!(s.ci_method.name()),
        _ => Json::Null,
    }
}

/// One line per flag of a configuration: config-level flags' explanations, then each
/// run-level flag with how many runs carry it and its explanation.
pub fn flag_notes(a: &ConfigAggregate) -> Vec<String> {
    a.flags
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.explanation()))
        .chain(
            a.run_flags.iter().map(|(f, n)| {
                format!("{} ({n} of {} runs): {}", f.name(), a.done, f.explanation())
            }),
        )
        .collect()
}

/// One flat row per run, as JSON lines.
pub fn to_jsonl(rows: &[RunRow]) -> String {
    Table::runs(rows).to_jsonl()
}

/// One flat row per run, as CSV.
pub fn to_csv(rows: &[RunRow]) -> String {
    Table::runs(rows).to_csv()
}

/// One CSV field: null is empty, a string as is, a list its items joined by
/// [`csv_list_separator`], anything else its JSON text.
fn csv_field(column: &str, v: &Json) -> String {
    let text = |v: &Json| match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s = match v.as_array() {
        Some(items) => items
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(csv_list_separator(column)),
        None => text(v),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `x` with `digits` significant digits (no exponent for the magnitudes results
/// have).
pub fn sig(x: f64, digits: usize) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i64;
    let decimals = (digits as i64 - 1 - magnitude).clamp(0, 12) as usize;
    format!("{x:.decimals$}")
}

/// The summary table of a campaign (what `lem-coord run` prints and `lem-coord summary`
/// shows): one line per configuration, best first by the ranked J/token
/// ([`aggregate::rank_metric`]), with each varying parameter as a column, the mean
/// throughput, raw and ranked J/token with its 95 % CI, the CV across cycles and the
/// flags; then a line per flag that occurs, with its explanation. Markdown, so it
/// pastes into notes as a table.
pub fn summary_table(rows: &[RunRow]) -> String {
    summary_of(&aggregate::aggregate_rows(rows))
}

/// [`summary_table`] from aggregates.
pub fn summary_of(aggs: &[ConfigAggregate]) -> String {
    use comfy_table::{presets, CellAlignment, Table as Grid};
    let rank = aggregate::rank_metric(aggs);
    let params: Vec<String> = aggs
        .first()
        .map(|a| a.params.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let short = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let mut header = vec!["#".to_string(), "config_hash".into(), "engine".into()];
    header.extend(params.iter().map(|k| short(k)));
    header.extend(
        [
            "cycles",
            "tok/s",
            "J/tok (raw)",
            &format!("{} [95% CI]", rank.label()),
            "CV",
            "flags",
        ]
        .map(String::from),
    );
    let mut grid = Grid::new();
    grid.load_preset(presets::ASCII_MARKDOWN).set_header(header);
    let mean = |a: &ConfigAggregate, m: Metric| {
        a.metrics
            .get(&m)
            .map(|s| sig(s.mean, 4))
            .unwrap_or_else(|| "-".into())
    };
    for (i, a) in aggs.iter().enumerate() {
        let mut row = vec![(i + 1).to_string(), a.config_hash.clone(), a.engine.clone()];
        row.extend(params.iter().map(|k| {
            a.param(k)
                .map(aggregate::value_text)
                .unwrap_or_else(|| "-".into())
        }));
        let ranked = a.metrics.get(&rank);
        row.push(format!("{}/{}", a.done, a.runs));
        row.push(mean(a, Metric::TokensPerSecond));
        row.push(mean(a, Metric::EnergyPerToken));
        row.push(match ranked {
            Some(s) => match (s.ci95_low, s.ci95_high) {
                (Some(lo), Some(hi)) => {
                    format!("{} [{}, {}]", sig(s.mean, 4), sig(lo, 4), sig(hi, 4))
                }
                _ => sig(s.mean, 4),
            },
            None => "-".into(),
        });
        row.push(
            ranked
                .and_then(|s| s.cv)
                .map(|c| {
                    format!(
                        "{:.1}%{}",
                        c * 100.0,
                        if stats::flag_high_cv(c) { "!" } else { "" }
                    )
                })
                .unwrap_or_else(|| "-".into()),
        );
        row.push(a.flag_names().join(" "));
        grid.add_row(row);
    }
    for i in 0..grid.column_count() {
        if let Some(c) = grid.column_mut(i) {
            if i == 0 || (i >= 3 + params.len() && i < 3 + params.len() + 5) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    let mut out = grid.to_string();
    out.push('\n');
    // Each flag that occurs, once, with what it means.
    let mut seen = std::collections::BTreeSet::new();
    let mut notes = Vec::new();
    for a in aggs {
        for f in &a.flags {
            if seen.insert(f.name()) {
                notes.push(format!("  {}: {}", f.name(), f.explanation()));
            }
        }
        for f in a.run_flags.keys() {
            if seen.insert(f.name()) {
                notes.push(format!("  {}: {}", f.name(), f.explanation()));
            }
        }
    }
    if !notes.is_empty() {
        out.push_str("flags:\n");
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    if aggs.iter().any(|a| a.simulated) {
        out.push_str(
            "note: measured on a SIMULATED GPU (no NVIDIA GPU here): the joules come from a model, not hardware\n",
        );
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
        let Some(ts) = r.result.as_ref().map(|x| &x.window.timeseries) else {
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
        assert_eq!(csv_field("gpu_indices", &json!([0, 1])), "0;1");
        assert_eq!(
            csv_field("warnings", &json!(["a, b", "say \"c\""])),
            "\"a, b | say \"\"c\"\"\""
        );
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
        let t = Table::runs(&[done.clone(), failed.clone()]);
        let names: Vec<&str> = t.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, run_column_names());
        assert!(t.rows.iter().all(|r| r.len() == names.len()));
        assert_eq!(
            t.get(0, "flags"),
            Some(&json!(["simulated", "baseline_not_subtracted"]))
        );
        assert_eq!(t.get(1, "flags"), Some(&Json::Null));
        assert_eq!(t.get(1, "warnings"), Some(&Json::Null));
        // Names are unique.
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len());
    }
}
