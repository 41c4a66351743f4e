//! `lem-coord results ID --format llem --output DIR`: a campaign written in llem
//! 0.7.0's study output layout (shared/llem/FORMAT.md 10.1-10.5), so llem's own
//! loader and the tools built on it read fleet results unchanged.
//!
//! ```text
//! DIR/manifest.json                                  (schema 2.0, every run)
//! DIR/_study-artefacts/study_config.yaml             (only with --study FILE)
//! DIR/NNN_c<cycle>_<model-short>-<engine>_<hash8>/   (one per finished run)
//!     result.json  config.json  system.json  fleet.json
//! ```
//!
//! `result.json` has exactly llem's top-level keys in llem's order (its loader rejects
//! any other top-level key). What the fleet knows and llem has no field for (host,
//! worker, slot, lease attempts, the simulated GPU, the energy method and the
//! counter-versus-integral cross-check) goes to the `fleet.json` sidecar. Each run's
//! quality flags ([`lem_common::quality::flags`], as `lem fleet: <explanation>`) and
//! its warnings go into llem's `measurement_warnings`, so that `result.json` alone
//! never passes a modelled joule (a simulated GPU), a shared GPU or an estimated
//! latency off as a clean measurement. Runs without a result appear in the manifest
//! only. Every file is written through a temporary file and a rename.

use std::path::{Path, PathBuf};

use lem_common::pyjson::{self, DumpOptions};
use lem_common::quality;
use lem_common::rpc::RunRow;
use lem_common::study::hash::resolved_config_hash;
use lem_common::types::RunResult;
use lem_common::{Map, Value};
use sha2::{Digest, Sha256};

/// The bundle and manifest versions llem 0.7.0 stamps (FORMAT.md 1).
pub const BUNDLE_VERSION: &str = "2.0";
pub const MANIFEST_SCHEMA_VERSION: &str = "2.0";

/// What the export knows about the campaign besides its runs (the CLI builds it from
/// `status()`; `study_text` only when the user passed `--study FILE`).
#[derive(Clone, Debug, Default)]
pub struct CampaignInfo {
    pub campaign: u64,
    pub study_name: Option<String>,
    pub study_design_hash: String,
    /// When the campaign was submitted (ISO 8601 UTC, `format_utc_ms`).
    pub submitted_at: String,
    /// The coordinator's campaign state (`running`, `done`, `finished_with_failures`,
    /// `cancelled`, `blocked`).
    pub state: String,
    /// The study file's text, for `_study-artefacts/study_config.yaml`.
    pub study_text: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LlemExportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "run {run}: its stored config is not valid JSON ({message}); the manifest may be damaged"
    )]
    BadConfig { run: String, message: String },
    #[error("{path} exists and is not a directory; give --output a directory path")]
    NotADirectory { path: String },
}

/// What [`write_bundle`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Run directories written (finished runs).
    pub runs_written: usize,
    /// Manifest entries without a run directory (pending, running, failed, cancelled).
    pub without_result: usize,
    pub wrote_study_config: bool,
    /// The `result.json` files, in execution order.
    pub result_files: Vec<PathBuf>,
}

/// Writes the campaign's runs under `dir` in llem's layout.
pub fn write_bundle(
    dir: &Path,
    info: &CampaignInfo,
    rows: &[RunRow],
) -> Result<ExportSummary, LlemExportError> {
    if dir.exists() && !dir.is_dir() {
        return Err(LlemExportError::NotADirectory {
            path: dir.display().to_string(),
        });
    }
    mkdir(dir)?;
    let mut entries: Vec<(usize, Value)> = Vec::with_capacity(rows.len());
    let mut summary = ExportSummary {
        runs_written: 0,
        without_result: 0,
        wrote_study_config: false,
        result_files: Vec::new(),
    };
    for row in rows {
        let config =
            pyjson::parse(&row.config_json).map_err(|message| LlemExportError::BadConfig {
                run: row.run.to_string(),
                message,
            })?;
        let index = row.run.seq as usize + 1;
        let mut result_file = None;
        if let (Some(res), "done") = (row.result.as_ref(), row.state.as_str()) {
            let name = run_dir_name(
                index,
                row.cycle,
                &model_of(&config),
                &row.engine,
                &row.config_hash,
            );
            let run_dir = dir.join(&name);
            mkdir(&run_dir)?;
            let b = RunBundle::new(row, res, &config);
            write_file(
                &run_dir.join("result.json"),
                &dump_pydantic(&b.result_json()),
            )?;
            write_file(&run_dir.join("config.json"), &dump_python(&b.config_json()))?;
            write_file(&run_dir.join("system.json"), &dump_python(&b.system_json()))?;
            write_file(
                &run_dir.join("fleet.json"),
                &dump_python(&b.fleet_json(info)),
            )?;
            summary.runs_written += 1;
            summary.result_files.push(run_dir.join("result.json"));
            result_file = Some(format!("{name}/result.json"));
        } else {
            summary.without_result += 1;
        }
        entries.push((index, manifest_entry(row, &config, result_file)));
    }
    if let Some(text) = &info.study_text {
        let art = dir.join("_study-artefacts");
        mkdir(&art)?;
        let first = format!(
            "# study_design_hash: {} | study_name: {}\n",
            info.study_design_hash,
            info.study_name.as_deref().unwrap_or("unnamed-study")
        );
        write_file(&art.join("study_config.yaml"), &(first + text))?;
        summary.wrote_study_config = true;
    }
    let manifest = manifest_json(info, rows, entries);
    write_file(&dir.join("manifest.json"), &dump_pydantic(&manifest))?;
    Ok(summary)
}

fn mkdir(p: &Path) -> Result<(), LlemExportError> {
    std::fs::create_dir_all(p).map_err(|source| LlemExportError::Io {
        path: p.display().to_string(),
        source,
    })
}

/// Writes through a temporary file in the same directory, then renames it into
/// place (mode 0644, as llem's `_atomic_write`).
fn write_file(path: &Path, text: &str) -> Result<(), LlemExportError> {
    use std::io::Write as _;
    let io = |source| LlemExportError::Io {
        path: path.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// `model_dump_json(indent=2)`: UTF-8 kept, two-space indent.
fn dump_pydantic(v: &Value) -> String {
    pyjson::dumps(
        v,
        &DumpOptions {
            indent: Some(2),
            ensure_ascii: false,
            ..Default::default()
        },
    )
}

/// `json.dumps(obj, indent=2)`: non-ASCII escaped, as llem writes its sidecars.
fn dump_python(v: &Value) -> String {
    pyjson::dumps_indent(v, 2)
}

fn model_of(config: &Value) -> String {
    config
        .get_path("task.model")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string()
}

/// The part of a model id after the last `/` (llem's `model_short_name`).
pub fn model_short(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// `NNN_c<cycle>_<model-short>-<engine>_<hash8>` (FORMAT.md 10.1).
pub fn run_dir_name(
    index: usize,
    cycle: u32,
    model: &str,
    engine: &str,
    config_hash: &str,
) -> String {
    let mut slug = format!("{}-{engine}", model_short(model))
        .replace(' ', "_")
        .replace(['/', ':'], "-");
    if slug.chars().count() > 120 {
        slug = slug.chars().take(120).collect();
    }
    let h8: String = config_hash.chars().take(8).collect();
    format!("{index:03}_c{cycle}_{slug}_{h8}")
}

/// An ISO 8601 time as pydantic writes a UTC datetime: seconds, then microseconds
/// (six digits) only when non-zero, then `Z`. Accepts the fleet's
/// `2025-01-15T10:00:00.123Z`; anything unparseable is returned unchanged.
pub fn pydantic_utc(iso: &str) -> String {
    match split_iso(iso) {
        Some((date, hms, 0)) => format!("{date}T{hms}Z"),
        Some((date, hms, micros)) => format!("{date}T{hms}.{micros:06}Z"),
        None => iso.to_string(),
    }
}

/// `str(datetime)` of an aware UTC time: a space, not `T`, and `+00:00` (FORMAT.md 13.13).
pub fn python_str_utc(iso: &str) -> String {
    match split_iso(iso) {
        Some((date, hms, 0)) => format!("{date} {hms}+00:00"),
        Some((date, hms, micros)) => format!("{date} {hms}.{micros:06}+00:00"),
        None => iso.to_string(),
    }
}

/// (`YYYY-MM-DD`, `HH:MM:SS`, microseconds) of a UTC ISO time ending in `Z`.
fn split_iso(iso: &str) -> Option<(&str, &str, u32)> {
    let body = iso.strip_suffix('Z')?;
    let (date, time) = body.split_once('T')?;
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, f),
        None => (time, ""),
    };
    if date.len() != 10
        || hms.len() != 8
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 9
    {
        return None;
    }
    let mut digits: String = frac.chars().take(6).collect();
    while digits.len() < 6 {
        digits.push('0');
    }
    Some((date, hms, digits.parse().ok()?))
}

/// `%Y%m%d_%H%M%S` of a UTC ISO time (for `experiment_id`).
fn compact_time(iso: &str) -> String {
    match split_iso(iso) {
        Some((date, hms, _)) => format!("{}_{}", date.replace('-', ""), hms.replace(':', "")),
        None => "00000000_000000".into(),
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

fn f(v: f64) -> Value {
    Value::Float(v)
}

fn of(v: Option<f64>) -> Value {
    v.map(Value::Float).unwrap_or(Value::Null)
}

fn i(v: u64) -> Value {
    Value::Int(v as i64)
}

fn map<const N: usize>(items: [(&str, Value); N]) -> Value {
    Value::Map(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A JSON number from the harness's metrics (`serde_json`) as a float, if present.
fn jf(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .filter(|x| x.is_finite())
}

fn ju(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}

/// One finished run, ready to be written as llem's files.
struct RunBundle<'a> {
    row: &'a RunRow,
    res: &'a RunResult,
    config: &'a Value,
    experiment_id: String,
    session: Value,
    runner: Value,
}

impl<'a> RunBundle<'a> {
    fn new(row: &'a RunRow, res: &'a RunResult, config: &'a Value) -> Self {
        let experiment_id = format!("{}_{}", model_of(config), compact_time(&res.started_at));
        // llem's session id is 32 hex digits; the fleet's is derived from the run key
        // so that exporting twice writes the same files.
        let digest = Sha256::digest(format!("lem-fleet-session:{}", row.run).as_bytes());
        let session_id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let session = map([
            ("session_id", s(session_id)),
            ("window_count", Value::Int(1)),
            ("level_count", Value::Int(1)),
            ("launch_duration_s", Value::Null),
            ("launch_energy_j", Value::Null),
            ("warmup_total_duration_s", Value::Null),
            ("warmup_total_energy_j", Value::Null),
            ("drain_duration_s", Value::Null),
            ("drain_energy_j", Value::Null),
        ]);
        // The runtime the worker ran it in: a container of the image in the result's
        // environment (docker runtime), else a process. The fleet's worker decided
        // (`source: worker`); the study's runners:/images: only chose which workers may.
        let runner = match res.environment.pointer("/host/harness_image") {
            Some(img) => map([
                ("mode", s("container")),
                (
                    "image",
                    img.get("name")
                        .and_then(serde_json::Value::as_str)
                        .map(s)
                        .unwrap_or(Value::Null),
                ),
                ("source", s("worker")),
                ("image_source", s("worker")),
                // llem's digest is a registry's (`repo@sha256:...`); a locally built
                // image has none. Its id is in fleet.json's environment.
                ("image_digest", Value::Null),
            ]),
            None => map([
                ("mode", s("process")),
                ("image", Value::Null),
                ("source", s("worker")),
                ("image_source", Value::Null),
                ("image_digest", Value::Null),
            ]),
        };
        RunBundle {
            row,
            res,
            config,
            experiment_id,
            session,
            runner,
        }
    }

    fn per_output_token_mj(&self, joules: f64) -> Value {
        if self.res.throughput.output_tokens > 0 {
            f(joules * 1000.0 / self.res.throughput.output_tokens as f64)
        } else {
            Value::Null
        }
    }

    /// `measurement_warnings`: the run's quality flags, explained, then its warnings.
    fn warnings(&self) -> Vec<Value> {
        let mut w: Vec<Value> = quality::flags(self.res)
            .into_iter()
            .map(|flag| s(format!("lem fleet: {}", flag.explanation())))
            .collect();
        w.extend(self.res.warnings.iter().map(|x| s(x.clone())));
        w
    }

    /// `result.json` (FORMAT.md 10.2): every key of llem's `ExperimentResult`, in order.
    fn result_json(&self) -> Value {
        let r = self.res;
        let c = self.config;
        let serving_mode = c
            .get_path("serving_mode")
            .and_then(Value::as_str)
            .unwrap_or("offline")
            .to_string();
        let baseline = r.baselines.device.as_ref();
        let breakdown = map([
            ("raw_j", f(r.energy.total_j)),
            ("adjusted_j", of(r.energy.adjusted_j)),
            ("baseline_power_w", of(r.baselines.device_power_w)),
            (
                "baseline_method",
                s(baseline
                    .map(|b| b.strategy.as_str())
                    .filter(|m| ["cached", "validated", "fresh"].contains(m))
                    .unwrap_or("unavailable")),
            ),
            (
                "baseline_timestamp",
                baseline
                    .filter(|b| !b.measured_at.is_empty())
                    .map(|b| s(pydantic_utc(&b.measured_at)))
                    .unwrap_or(Value::Null),
            ),
            (
                "baseline_cache_age_sec",
                of(baseline.map(|b| b.cache_age_s)),
            ),
        ]);
        let warmup_n = ju(&r.harness.warmup, "iterations_completed");
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("bundle_version", s(BUNDLE_VERSION));
        put("experiment_id", s(self.experiment_id.clone()));
        put("declared_config_hash", s(self.row.config_hash.clone()));
        // Not produced by llenergymeasure: fleet.json names the producer.
        put("llenergymeasure_version", Value::Null);
        put("serving_mode", s(serving_mode));
        put("engine", s(self.row.engine.clone()));
        put("model_name", s(model_of(c)));
        put("input_tokens", i(r.throughput.input_tokens));
        put("output_tokens", i(r.throughput.output_tokens));
        put(
            "total_tokens",
            i(r.throughput.input_tokens + r.throughput.output_tokens),
        );
        put("total_energy_j", f(r.energy.total_j));
        put("total_inference_time_sec", f(r.window.duration_s));
        put(
            "avg_tokens_per_second",
            f(r.throughput.avg_tokens_per_second),
        );
        put(
            "avg_energy_per_token_j",
            f(r.throughput.avg_energy_per_token_j),
        );
        put(
            "energy_per_token_mj_adjusted",
            r.energy
                .adjusted_j
                .map(|a| self.per_output_token_mj(a))
                .unwrap_or(Value::Null),
        );
        put(
            "energy_per_token_mj_total",
            self.per_output_token_mj(r.energy.total_j),
        );
        // The fleet does not estimate FLOPs (llem writes 0.0 when it cannot).
        put("total_flops", f(0.0));
        put("flops_per_output_token", Value::Null);
        put("flops_per_input_token", Value::Null);
        put("flops_per_second", Value::Null);
        put("energy_adjusted_j", of(r.energy.adjusted_j));
        put("energy_per_device_j", Value::Seq(vec![f(r.energy.total_j)]));
        put("energy_breakdown", breakdown);
        put("multi_gpu", Value::Null);
        put("measurement_warnings", Value::Seq(self.warnings()));
        put(
            "warmup_excluded_samples",
            warmup_n.map(i).unwrap_or(Value::Null),
        );
        put("model_load_time_sec", of(r.harness.model_load_seconds));
        put("engine_build_cache_hit", Value::Null);
        put("reproducibility_notes", s(reproducibility_note(r)));
        put("timeseries", Value::Null);
        put("runner_provenance", self.runner.clone());
        put("session", self.session.clone());
        put("server", Value::Null);
        put("server_metrics", Value::Null);
        put("start_time", s(pydantic_utc(&r.started_at)));
        put("end_time", s(pydantic_utc(&r.ended_at)));
        put(
            "aggregation",
            map([
                ("method", s("single_process")),
                ("num_processes", Value::Int(1)),
                ("temporal_overlap_verified", Value::Bool(false)),
                ("gpu_attribution_verified", Value::Bool(false)),
                ("warnings", Value::Seq(Vec::new())),
            ]),
        );
        put("throttle", throttle_json(r));
        put("warmup_result", warmup_json(&r.harness.warmup));
        put("latency_stats", latency_json(&r.harness.metrics));
        put("extended_metrics", extended_json(&r.harness.metrics));
        Value::Map(m)
    }

    /// `config.json` (FORMAT.md 10.3): optional keys omitted when unknown.
    fn config_json(&self) -> Value {
        let c = self.config;
        let mut m = Map::new();
        m.insert("bundle_version".into(), s(BUNDLE_VERSION));
        m.insert("experiment_id".into(), s(self.experiment_id.clone()));
        m.insert(
            "declared_config_hash".into(),
            s(self.row.config_hash.clone()),
        );
        m.insert("engine".into(), s(self.row.engine.clone()));
        if let Some(v) = &self.res.engine_version {
            m.insert("engine_version".into(), s(v.clone()));
        }
        m.insert("model_name".into(), s(model_of(c)));
        m.insert(
            "measurement_methodology".into(),
            s(c.get_path("measurement.measurement_methodology")
                .and_then(Value::as_str)
                .unwrap_or("total")),
        );
        m.insert("steady_state_not_detected".into(), Value::Bool(false));
        m.insert("resolved_config_hash".into(), s(resolved_config_hash(c)));
        m.insert("declared_config".into(), c.clone());
        Value::Map(m)
    }

    /// `system.json` (FORMAT.md 10.4), with what the worker reported.
    fn system_json(&self) -> Value {
        let r = self.res;
        let env = &r.environment;
        let env_str = |k: &str| {
            env.get(k)
                .and_then(serde_json::Value::as_str)
                .map(|x| s(x.to_string()))
                .unwrap_or(Value::Null)
        };
        let hardware = map([
            (
                "gpu",
                map([
                    ("name", s(r.gpu_name.clone())),
                    ("vram_total_mb", of(jf(env, "gpu_memory_total_mb"))),
                    ("compute_capability", env_str("gpu_compute_capability")),
                ]),
            ),
            (
                "cuda",
                map([
                    ("driver_supported_version", env_str("cuda_driver_version")),
                    ("driver_version", env_str("driver_version")),
                ]),
            ),
            (
                "thermal",
                map([
                    ("temperature_c", f(r.thermal.start_temp_c)),
                    ("power_limit_w", of(jf(env, "power_limit_w"))),
                    (
                        "default_power_limit_w",
                        of(jf(env, "default_power_limit_w")),
                    ),
                ]),
            ),
            (
                "cpu",
                map([
                    ("governor", env_str("cpu_governor")),
                    ("model", env_str("cpu_model")),
                    ("platform", env_str("platform")),
                ]),
            ),
            (
                "container",
                map([("detected", Value::Bool(false)), ("runtime", Value::Null)]),
            ),
            ("collected_at", s(python_str_utc(&r.started_at))),
        ]);
        map([
            ("bundle_version", s(BUNDLE_VERSION)),
            ("experiment_id", s(self.experiment_id.clone())),
            ("declared_config_hash", s(self.row.config_hash.clone())),
            ("hardware", hardware),
            ("python_version", env_str("python_version")),
            (
                "tool_version",
                s(format!("lem-fleet {}", env!("CARGO_PKG_VERSION"))),
            ),
            ("cuda_version", env_str("cuda_version")),
            ("cuda_version_source", Value::Null),
            ("runner", self.runner.clone()),
            ("session", self.session.clone()),
        ])
    }

    /// `fleet.json`: everything the fleet measured that llem has no field for.
    fn fleet_json(&self, info: &CampaignInfo) -> Value {
        let r = self.res;
        let res_json = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
        map([
            (
                "producer",
                s(format!("lem-fleet {}", env!("CARGO_PKG_VERSION"))),
            ),
            ("format", s("llenergymeasure 0.7.0 results bundle 2.0")),
            ("campaign", i(info.campaign)),
            ("run", s(self.row.run.to_string())),
            ("seq", i(self.row.run.seq as u64)),
            ("cycle", i(self.row.cycle as u64)),
            ("attempts", i(self.row.attempts as u64)),
            ("worker", s(r.worker.clone())),
            ("host", s(r.host.clone())),
            ("slot", i(r.slot as u64)),
            ("gpu_uuid", s(r.gpu_uuid.clone())),
            ("simulated", Value::Bool(r.simulated)),
            ("energy_method", s(r.energy.method.clone())),
            ("energy_integral_j", of(r.energy.integral_j)),
            ("energy_counter_raw_j", of(r.energy.counter_raw_j)),
            ("energy_disagreement_pct", of(r.energy.disagreement_pct)),
            (
                "energy_disagreement_flagged",
                Value::Bool(r.energy.disagreement_flagged),
            ),
            (
                "energy_adjusted_clamped",
                Value::Bool(r.energy.adjusted_clamped),
            ),
            ("short_window", Value::Bool(r.window.short)),
            (
                "flags",
                Value::Seq(quality::flag_names(r).into_iter().map(s).collect()),
            ),
            (
                "baseline_subtracted",
                Value::Bool(quality::baseline_subtracted(r)),
            ),
            // The whole result as the worker reported it (baseline record, harness
            // metrics, thermal gate, sampler timing), for anything not named above.
            ("run_result", Value::from_json(&res_json)),
        ])
    }
}

fn reproducibility_note(r: &RunResult) -> String {
    let method = match r.energy.method.as_str() {
        "counter_interpolated" => "the NVML energy counter, interpolated at the window edges with sampled power and cross-checked against the power integral",
        "power_integral" => "the integral of sampled NVML power",
        _ => "sampled GPU power",
    };
    let sim = if r.simulated {
        " SIMULATED GPU: the figures come from a model, not hardware."
    } else {
        ""
    };
    format!("Energy measured by lem fleet from {method}. Results may vary with thermal state and system load.{sim}")
}

fn throttle_json(r: &RunResult) -> Value {
    let axis = |hw: bool, sw: bool| {
        map([
            ("hw", Value::Bool(hw)),
            ("sw", Value::Bool(sw)),
            ("any", Value::Bool(hw || sw)),
        ])
    };
    // The worker reports thermal and power throttling without the hardware/software
    // split; a hardware slowdown counts as hardware for both axes.
    let thermal = axis(
        r.thermal.throttle_thermal && r.thermal.hw_slowdown,
        r.thermal.throttle_thermal && !r.thermal.hw_slowdown,
    );
    let power = axis(
        r.thermal.throttle_power && r.thermal.hw_slowdown,
        r.thermal.throttle_power && !r.thermal.hw_slowdown,
    );
    map([
        ("thermal", thermal),
        ("power", power),
        ("throttle_duration_sec", f(0.0)),
        ("max_temperature_c", f(r.thermal.max_temp_c)),
        ("throttle_timestamps", Value::Seq(Vec::new())),
        (
            "detected",
            Value::Bool(r.thermal.throttle_thermal || r.thermal.throttle_power),
        ),
    ])
}

/// `warmup_result` from the harness's `warmup_done` event (null when warmup was off).
fn warmup_json(w: &serde_json::Value) -> Value {
    let (Some(converged), Some(final_cv), Some(n), Some(target), Some(max)) = (
        w.get("converged").and_then(serde_json::Value::as_bool),
        jf(w, "final_cv"),
        ju(w, "iterations_completed"),
        jf(w, "target_cv"),
        ju(w, "max_prompts"),
    ) else {
        return Value::Null;
    };
    let latencies: Vec<Value> = w
        .get("latencies_ms")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_f64)
                .map(f)
                .collect()
        })
        .unwrap_or_default();
    map([
        ("converged", Value::Bool(converged)),
        ("final_cv", f(final_cv)),
        ("iterations_completed", i(n)),
        ("target_cv", f(target)),
        ("max_prompts", i(max)),
        ("latencies_ms", Value::Seq(latencies)),
        (
            "thermal_floor_wait_s",
            f(jf(w, "thermal_floor_seconds").unwrap_or(0.0)),
        ),
    ])
}

/// `latency_stats` from the harness's `ttft_ms` / `itl_ms` (docker/harness/README.md).
/// The harness pools every inter-token gap; llem's primary `itl_*` fields trim the
/// first and last token of each request, so the fleet's figures go to the `itl_full_*`
/// fields and the trimmed ones stay null.
fn latency_json(metrics: &serde_json::Value) -> Value {
    let Some(ttft) = metrics.get("ttft_ms") else {
        return Value::Null;
    };
    let (Some(mean), Some(median), Some(p95), Some(p99), Some(min), Some(max), Some(n)) = (
        jf(ttft, "mean"),
        jf(ttft, "median"),
        jf(ttft, "p95"),
        jf(ttft, "p99"),
        jf(ttft, "min"),
        jf(ttft, "max"),
        ju(ttft, "samples"),
    ) else {
        return Value::Null;
    };
    let itl = metrics.get("itl_ms").cloned().unwrap_or_default();
    let mode = metrics
        .get("itl_measurement_mode")
        .and_then(serde_json::Value::as_str)
        .filter(|m| ["true_streaming", "per_request_batch", "proportional"].contains(m))
        .unwrap_or("true_streaming");
    map([
        ("ttft_mean_ms", f(mean)),
        ("ttft_median_ms", f(median)),
        ("ttft_p95_ms", f(p95)),
        ("ttft_p99_ms", f(p99)),
        ("ttft_min_ms", f(min)),
        ("ttft_max_ms", f(max)),
        ("ttft_samples", i(n)),
        ("itl_mean_ms", Value::Null),
        ("itl_median_ms", Value::Null),
        ("itl_p95_ms", Value::Null),
        ("itl_p99_ms", Value::Null),
        ("itl_samples", Value::Int(0)),
        ("itl_full_mean_ms", of(jf(&itl, "mean"))),
        ("itl_full_p99_ms", of(jf(&itl, "p99"))),
        ("measurement_mode", s(mode)),
    ])
}

/// `extended_metrics`: the batch figures the harness reports; the rest unknown.
fn extended_json(metrics: &serde_json::Value) -> Value {
    if !metrics.is_object() {
        return Value::Null;
    }
    let batch_size = jf(metrics, "batch_size");
    map([
        ("tpot_ms", Value::Null),
        ("token_efficiency_index", Value::Null),
        (
            "memory",
            map([
                ("total_vram_mb", f(0.0)),
                ("model_memory_mb", Value::Null),
                ("peak_memory_mb", Value::Null),
                ("inference_memory_mb", Value::Null),
                ("kv_cache_mb", Value::Null),
                ("tokens_per_gb_vram", Value::Null),
                ("model_memory_utilisation", Value::Null),
                ("kv_cache_memory_ratio", Value::Null),
            ]),
        ),
        (
            "gpu_utilisation",
            map([
                ("sm_utilisation_mean", Value::Null),
                ("sm_utilisation_samples", Value::Int(0)),
                ("memory_bandwidth_utilisation", Value::Null),
            ]),
        ),
        (
            "batch",
            map([
                ("effective_batch_size", of(batch_size)),
                ("batch_utilisation", Value::Null),
                ("padding_overhead", Value::Null),
                (
                    "num_batches",
                    ju(metrics, "batches").map(i).unwrap_or(Value::Null),
                ),
            ]),
        ),
        (
            "kv_cache",
            map([
                ("kv_cache_hit_rate", Value::Null),
                ("kv_cache_blocks_used", Value::Null),
                ("kv_cache_blocks_total", Value::Null),
            ]),
        ),
        (
            "request_latency",
            map([
                ("e2e_latency_mean_ms", Value::Null),
                ("e2e_latency_median_ms", Value::Null),
                ("e2e_latency_p95_ms", Value::Null),
                ("e2e_latency_p99_ms", Value::Null),
                ("e2e_latency_samples", Value::Int(0)),
            ]),
        ),
    ])
}

/// llem's manifest status for a fleet run state.
fn entry_status(state: &str) -> &'static str {
    match state {
        "done" => "completed",
        "failed" => "failed",
        "leased" => "running",
        "cancelled" => "interrupted",
        _ => "pending",
    }
}

/// `model_short / engine / key=value ...` (llem's `format_experiment_header`, 70 chars):
/// the task settings that differ from llem's defaults and the active engine section's
/// set values.
pub fn config_summary(config: &Value, engine: &str) -> String {
    let mut params: Vec<String> = Vec::new();
    let py = |v: &Value| match v {
        Value::Str(x) => x.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => pyjson::dumps(other, &DumpOptions::default()),
    };
    for (path, default) in [
        ("task.max_input_tokens", Value::Int(256)),
        ("task.max_output_tokens", Value::Int(256)),
        ("task.dataset.n_prompts", Value::Int(100)),
        ("task.dataset.source", s("aienergyscore")),
        ("task.dataset.order", s("interleaved")),
    ] {
        if let Some(v) = config
            .get_path(path)
            .filter(|v| !v.is_null() && **v != default)
        {
            params.push(format!(
                "{}={}",
                path.rsplit('.').next().unwrap_or(path),
                py(v)
            ));
        }
    }
    if let Some(Value::Map(section)) = config.get_path(engine) {
        for (sub, v) in section {
            if let Value::Map(fields) = v {
                for (k, x) in fields {
                    if !x.is_null() {
                        params.push(format!("{sub}.{k}={}", py(x)));
                    }
                }
            }
        }
    }
    let mut header = format!("{} / {engine}", model_short(&model_of(config)));
    if !params.is_empty() {
        header.push_str(" / ");
        header.push_str(&params.join(" "));
    }
    if header.chars().count() > 70 {
        header = header.chars().take(67).collect::<String>() + "...";
    }
    header
}

fn manifest_entry(row: &RunRow, config: &Value, result_file: Option<String>) -> Value {
    let res = row.result.as_ref().filter(|_| row.state == "done");
    let status = entry_status(&row.state);
    let (error_type, error_message) = match (&row.last_failure, status) {
        (Some(msg), "failed") => (s("RunFailed"), s(msg.clone())),
        (_, "interrupted") => (
            s("Cancelled"),
            s("the campaign was cancelled before this run finished"),
        ),
        _ => (Value::Null, Value::Null),
    };
    map([
        ("config_hash", s(row.config_hash.clone())),
        ("config_summary", s(config_summary(config, &row.engine))),
        ("cycle", i(row.cycle as u64)),
        ("status", s(status)),
        ("resolved_config_hash", s(resolved_config_hash(config))),
        ("result_file", result_file.map(s).unwrap_or(Value::Null)),
        ("log_file", Value::Null),
        ("error_type", error_type),
        ("error_message", error_message),
        (
            "started_at",
            res.map(|r| s(pydantic_utc(&r.started_at)))
                .unwrap_or(Value::Null),
        ),
        (
            "completed_at",
            res.map(|r| s(pydantic_utc(&r.ended_at)))
                .unwrap_or(Value::Null),
        ),
        (
            "elapsed_seconds",
            of(res.map(|r| r.window.lease_to_measure_s + r.window.duration_s)),
        ),
        ("inference_seconds", of(res.map(|r| r.window.duration_s))),
        ("energy_joules", of(res.map(|r| r.energy.total_j))),
        (
            "adj_energy_joules",
            of(res.and_then(|r| r.energy.adjusted_j)),
        ),
        (
            "throughput_tok_s",
            of(res.map(|r| r.throughput.avg_tokens_per_second)),
        ),
        (
            "energy_per_token_mj",
            of(res.filter(|r| r.throughput.output_tokens > 0).map(|r| {
                r.energy.adjusted_j.unwrap_or(r.energy.total_j) * 1000.0
                    / r.throughput.output_tokens as f64
            })),
        ),
    ])
}

/// The study status llem would write for the campaign's state.
fn study_status(state: &str) -> &'static str {
    match state {
        "done" => "completed",
        "finished_with_failures" => "failed",
        "cancelled" => "interrupted",
        _ => "running",
    }
}

fn manifest_json(info: &CampaignInfo, rows: &[RunRow], entries: Vec<(usize, Value)>) -> Value {
    // Grouped by config hash in first-appearance order, cycles ascending (10.5).
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.config_hash.as_str()) {
            order.push(&r.config_hash);
        }
    }
    let mut keyed: Vec<(usize, u32, Value)> = rows
        .iter()
        .zip(entries)
        .map(|(r, (_, e))| {
            let g = order.iter().position(|h| *h == r.config_hash).unwrap_or(0);
            (g, r.cycle, e)
        })
        .collect();
    keyed.sort_by_key(|(g, c, _)| (*g, *c));
    let count = |st: &str| rows.iter().filter(|r| entry_status(&r.state) == st).count() as u64;
    let finished = rows
        .iter()
        .all(|r| matches!(r.state.as_str(), "done" | "failed" | "cancelled"));
    let completed_at = if finished {
        rows.iter()
            .filter_map(|r| r.result.as_ref().map(|x| x.ended_at.clone()))
            .max()
            .map(|t| s(pydantic_utc(&t)))
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    map([
        ("schema_version", s(MANIFEST_SCHEMA_VERSION)),
        (
            "study_name",
            s(info
                .study_name
                .clone()
                .unwrap_or_else(|| "unnamed-study".into())),
        ),
        ("study_design_hash", s(info.study_design_hash.clone())),
        // llem types this as a string; the fleet is the producer, named as such.
        (
            "llenergymeasure_version",
            s(format!("lem-fleet {}", env!("CARGO_PKG_VERSION"))),
        ),
        ("started_at", s(pydantic_utc(&info.submitted_at))),
        ("completed_at", completed_at),
        ("status", s(study_status(&info.state))),
        ("total_experiments", i(rows.len() as u64)),
        ("completed", i(count("completed"))),
        ("failed", i(count("failed"))),
        ("pending", i(count("pending") + count("running"))),
        ("skipped", i(0)),
        ("interrupted", i(count("interrupted"))),
        (
            "experiments",
            Value::Seq(keyed.into_iter().map(|(_, _, e)| e).collect()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_llem_writes_them() {
        assert_eq!(
            pydantic_utc("2025-01-15T10:00:00.000Z"),
            "2025-01-15T10:00:00Z"
        );
        assert_eq!(
            pydantic_utc("2025-01-15T10:00:41.250Z"),
            "2025-01-15T10:00:41.250000Z"
        );
        assert_eq!(
            python_str_utc("2025-01-15T10:00:00.000Z"),
            "2025-01-15 10:00:00+00:00"
        );
        assert_eq!(
            python_str_utc("2025-01-15T10:00:00.5Z"),
            "2025-01-15 10:00:00.500000+00:00"
        );
        assert_eq!(compact_time("2025-01-15T10:00:41.250Z"), "20250115_100041");
        assert_eq!(pydantic_utc("not a time"), "not a time");
    }

    #[test]
    fn run_dir_names_follow_llem() {
        assert_eq!(
            run_dir_name(1, 1, "gpt2", "transformers", "b1fb6d4d731390d0"),
            "001_c1_gpt2-transformers_b1fb6d4d"
        );
        assert_eq!(
            run_dir_name(12, 3, "Qwen/Qwen2.5 0.5B:int4", "vllm", "0123456789abcdef"),
            "012_c3_Qwen2.5_0.5B-int4-vllm_01234567"
        );
        assert_eq!(
            run_dir_name(1000, 1, "m", "synthetic", "ffffffffffffffff"),
            "1000_c1_m-synthetic_ffffffff"
        );
    }
}
