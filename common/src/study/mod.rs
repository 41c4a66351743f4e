//! Study files: loading, validation and expansion to llem 0.7.0's run list.
//!
//! [`plan`] turns a study (or single-experiment) file into the exact run list
//! `llem run` would execute: same configs, same config hashes, same order, same
//! skips (FORMAT.md 6-8). Two departures are deliberate: an unknown or misspelt key
//! anywhere the registry forbids one is a hard error with file:line:col and a
//! suggestion, and an empty sweep axis is an error instead of silently yielding
//! nothing. Everything here is pure except [`StudySource::read`].
//!
//! [`plan_compact`] is the same planner keeping each run-list config once, as JSON
//! text, with runs as indices into them: what the coordinator submits, since a
//! 1,000,000-run [`StudyPlan`] holds a config tree per run (about 15 GB).

pub mod expand;
pub mod fleet;
pub mod hash;
pub mod mt;
pub mod py;
pub mod rules;
pub mod schema;
pub mod validate;

use std::path::Path;

use crate::pyjson;
use crate::value::{Map, Value};
use crate::yaml::{self, Spans, YamlError};

pub use hash::config_hash;
pub use rules::DormantObservation;
pub use schema::registry;
pub use validate::FieldError;

use schema::{Extra, Kind, Model};

/// Whole-study errors: the file cannot be planned at all.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("{file}: invalid json: {message}")]
    Json { file: String, message: String },
    #[error("{file}: unsupported config format '{suffix}' (use .yaml, .yml or .json)")]
    UnsupportedFormat { file: String, suffix: String },
    #[error("{file}: the document must be a mapping of keys to values, found {found}")]
    NotAMapping { file: String, found: String },
    #[error("{file}: base file not found: {resolved} (the 'base:' path is resolved relative to the study file's directory)")]
    BaseNotFound { file: String, resolved: String },
    #[error("{file}:{line}:{col}: unknown key '{key}'{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    UnknownKey {
        file: String,
        line: usize,
        col: usize,
        key: String,
        hint: Option<String>,
    },
    #[error("{file}:{line}:{col}: {message}")]
    EmptyAxis {
        file: String,
        line: usize,
        col: usize,
        key: String,
        message: String,
    },
    #[error("{file}:{line}:{col}: {message}")]
    BadSweep {
        file: String,
        line: usize,
        col: usize,
        key: String,
        message: String,
    },
    #[error("{file}: invalid {block}: {}", render_errors(errors))]
    InvalidBlock {
        file: String,
        block: String,
        errors: Vec<FieldError>,
    },
    #[error("{file}: study_name must be a string or null, found {found}")]
    InvalidStudyName { file: String, found: String },
    #[error("{file}: study produced no experiments (add a 'sweep:' block, an 'experiments:' list, or a top-level task.model)")]
    NoExperiments { file: String },
    #[error("{file}: nothing to run - all {total} generated config(s) are invalid; first failures: {first}")]
    AllInvalid {
        file: String,
        total: usize,
        first: String,
    },
    #[error("{file}: the study mixes serving_mode values ({modes}); a study must use one serving_mode (split it into one study per mode)")]
    MixedServingModes { file: String, modes: String },
    #[error("{file}: invalid experiment config: {}", render_errors(errors))]
    InvalidExperiment {
        file: String,
        errors: Vec<FieldError>,
    },
    #[error("{file}: the sweep expands to {n_configs} configs before validation, more than the limit of {limit} runs (narrow the sweep)")]
    GridTooLarge {
        file: String,
        n_configs: usize,
        limit: usize,
    },
    #[error("{file}: the study plans {n_configs} config(s) x {n_cycles} cycle(s) = {n_runs} runs, more than the limit of {limit} (lower study_execution.n_cycles or narrow the sweep)")]
    TooManyRuns {
        file: String,
        n_configs: usize,
        n_cycles: u32,
        n_runs: u64,
        limit: usize,
    },
}

fn render_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.loc.is_empty() {
                e.msg.clone()
            } else {
                format!("{}: {}", e.loc, e.msg)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A study file's text and, when it has `base:`, the base file's resolved path and text.
#[derive(Clone, Debug)]
pub struct StudySource {
    pub path: String,
    pub text: String,
    pub base: Option<(String, String)>,
}

impl StudySource {
    /// Reads the study file and, if it names a `base:`, that file relative to it.
    pub fn read(path: &Path) -> Result<StudySource, StudyError> {
        let shown = path.display().to_string();
        // The io error goes into the message (not as a source), so the chain that
        // binaries print says it once.
        let text = std::fs::read_to_string(path).map_err(|e| StudyError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut src = StudySource {
            path: shown.clone(),
            text,
            base: None,
        };
        if let Ok(Value::Map(m)) = parse_text(&src.text, &src.path) {
            if let Some(Value::Str(b)) = m.get("base") {
                let bp = Path::new(b);
                let resolved = if bp.is_absolute() {
                    bp.to_path_buf()
                } else {
                    path.parent().unwrap_or(Path::new(".")).join(bp)
                };
                let rshown = resolved.display().to_string();
                let btext =
                    std::fs::read_to_string(&resolved).map_err(|_| StudyError::BaseNotFound {
                        file: shown.clone(),
                        resolved: rshown.clone(),
                    })?;
                src.base = Some((rshown, btext));
            }
        }
        Ok(src)
    }
}

fn parse_text(text: &str, file: &str) -> Result<Value, StudyError> {
    Ok(parse_doc(text, file)?.value)
}

fn parse_doc(text: &str, file: &str) -> Result<yaml::Document, StudyError> {
    let lower = file.to_ascii_lowercase();
    if lower.ends_with(".json") {
        let value = pyjson::parse(text).map_err(|message| StudyError::Json {
            file: file.into(),
            message,
        })?;
        return Ok(yaml::Document {
            value,
            spans: Spans::default(),
        });
    }
    if !(lower.ends_with(".yaml") || lower.ends_with(".yml")) {
        let suffix = Path::new(file)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        return Err(StudyError::UnsupportedFormat {
            file: file.into(),
            suffix,
        });
    }
    Ok(yaml::load(text, file)?)
}

/// How to treat the file: as `llem run` does (default) or as the library's `load_study()`.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    pub library_defaults: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanMode {
    Study,
    Experiment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExperimentOrder {
    Sequential,
    Interleave,
    Shuffle,
    Reverse,
    LatinSquare,
}

impl ExperimentOrder {
    fn parse(s: &str) -> ExperimentOrder {
        match s {
            "interleave" => ExperimentOrder::Interleave,
            "shuffle" => ExperimentOrder::Shuffle,
            "reverse" => ExperimentOrder::Reverse,
            "latin_square" => ExperimentOrder::LatinSquare,
            _ => ExperimentOrder::Sequential,
        }
    }
}

/// The effective `study_execution` block (FORMAT.md 6.2), typed.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyExecution {
    pub n_cycles: u32,
    pub experiment_order: ExperimentOrder,
    pub experiment_gap_seconds: Option<f64>,
    pub cycle_gap_seconds: Option<f64>,
    pub shuffle_seed: Option<i64>,
    pub skip_preflight: bool,
    pub max_consecutive_failures: u32,
    pub circuit_breaker_cooldown_seconds: f64,
    pub wall_clock_timeout_hours: Option<f64>,
    pub experiment_timeout_seconds: f64,
    pub stdout_silence_timeout_seconds: f64,
    pub deduplicate_equivalent: bool,
    pub gpu_indices: Option<Vec<i64>>,
    /// The pydantic dump of the block, as the oracle prints it.
    pub dump: Value,
}

impl StudyExecution {
    fn from_dump(d: Value) -> StudyExecution {
        let g = |k: &str| {
            d.as_map()
                .and_then(|m| m.get(k))
                .cloned()
                .unwrap_or(Value::Null)
        };
        StudyExecution {
            n_cycles: saturate_u32(g("n_cycles").as_i64().unwrap_or(1).max(1)),
            experiment_order: ExperimentOrder::parse(
                g("experiment_order").as_str().unwrap_or("sequential"),
            ),
            experiment_gap_seconds: g("experiment_gap_seconds").as_f64(),
            cycle_gap_seconds: g("cycle_gap_seconds").as_f64(),
            shuffle_seed: g("shuffle_seed").as_i64(),
            skip_preflight: g("skip_preflight").as_bool().unwrap_or(false),
            max_consecutive_failures: saturate_u32(
                g("max_consecutive_failures").as_i64().unwrap_or(10),
            ),
            circuit_breaker_cooldown_seconds: g("circuit_breaker_cooldown_seconds")
                .as_f64()
                .unwrap_or(60.0),
            wall_clock_timeout_hours: g("wall_clock_timeout_hours").as_f64(),
            experiment_timeout_seconds: g("experiment_timeout_seconds").as_f64().unwrap_or(600.0),
            stdout_silence_timeout_seconds: g("stdout_silence_timeout_seconds")
                .as_f64()
                .unwrap_or(300.0),
            deduplicate_equivalent: g("deduplicate_equivalent").as_bool().unwrap_or(true),
            gpu_indices: match g("gpu_indices") {
                Value::Seq(v) => Some(v.iter().filter_map(Value::as_i64).collect()),
                _ => None,
            },
            dump: d,
        }
    }
}

/// `v` as a u32, 0 below and `u32::MAX` above (`n_cycles: 5000000000` must not wrap
/// to a small count).
fn saturate_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// An invalid generated config (a skip, not an error).
#[derive(Clone, Debug)]
pub struct SkippedConfig {
    /// The raw mapping as it was handed to validation.
    pub config: Value,
    pub reason: String,
    pub rule_id: Option<String>,
    pub errors: Vec<FieldError>,
}

/// One run of the plan, in execution order.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub config_hash: String,
    pub cycle: u32,
    /// The full canonical dump (`server.traffic.slo` included).
    pub config: Value,
    pub engine: String,
    /// Experiment gap plus cycle gap that precede this run (0 for the first).
    pub gap_before_seconds: f64,
}

#[derive(Clone, Debug)]
pub struct StudyPlan {
    pub mode: PlanMode,
    pub study_name: Option<String>,
    pub study_design_hash: String,
    pub execution: StudyExecution,
    pub runs: Vec<PlannedRun>,
    pub skipped: Vec<SkippedConfig>,
    /// Distinct config hashes among the runs.
    pub n_configs: usize,
    /// Valid configs before dedup.
    pub n_valid_declared: usize,
    /// Raw configs generated before validation (the grid size).
    pub n_generated: usize,
    pub warnings: Vec<String>,
    pub dormant_observations: Vec<DormantObservation>,
    /// `resolved` or `off`.
    pub dedup_mode: String,
    /// The run list before cycles (one canonical config per entry).
    pub run_list: Vec<Value>,
    /// The study's `runners:` and `images:` as written (FORMAT.md 6.3): no hash covers
    /// them and llem checks them only when a run starts; the coordinator checks them at
    /// submit ([`crate::runner::study_needs`]). `None` when absent or null.
    pub runners: Option<Value>,
    pub images: Option<Value>,
}

/// The plan of [`plan_compact`]: everything [`StudyPlan`] says, with each run-list
/// config kept once (in [`CompactPlan::configs`], rendered) and each run a 16-byte
/// reference to it, so a 1,000,000-run study costs its distinct configs plus 16 MB.
///
/// `C` is what is kept of each config: [`PlannedConfig`] for [`plan_compact`] (the
/// only public way to get one; the parameter lets [`plan`] share this code).
#[derive(Clone, Debug)]
pub struct CompactPlan<C = PlannedConfig> {
    pub mode: PlanMode,
    pub study_name: Option<String>,
    pub study_design_hash: String,
    pub execution: StudyExecution,
    pub skipped: Vec<SkippedConfig>,
    /// Distinct config hashes among the runs.
    pub n_configs: usize,
    /// Valid configs before dedup.
    pub n_valid_declared: usize,
    /// Raw configs generated before validation (the grid size).
    pub n_generated: usize,
    pub warnings: Vec<String>,
    pub dormant_observations: Vec<DormantObservation>,
    /// `resolved` or `off`.
    pub dedup_mode: String,
    /// The study's `runners:` and `images:` as written (FORMAT.md 6.3): no hash covers
    /// them and llem checks them only when a run starts; the coordinator checks them at
    /// submit ([`crate::runner::study_needs`]). `None` when absent or null.
    pub runners: Option<Value>,
    pub images: Option<Value>,
    /// One entry per run-list entry (the run list before cycles), in run-list order:
    /// `StudyPlan::run_list[i]` is `configs[i]`. With `deduplicate_equivalent` (the
    /// default) every entry is a distinct config; with it off, equal configs repeat as
    /// they do in the run list.
    pub configs: Vec<C>,
    /// The runs in execution order, as [`StudyPlan::runs`] lists them.
    pub runs: Vec<CompactRun>,
}

/// One run of a [`CompactPlan`], in execution order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactRun {
    /// Index into [`CompactPlan::configs`].
    pub config: u32,
    pub cycle: u32,
    /// Experiment gap plus cycle gap that precede this run (0 for the first).
    pub gap_before_seconds: f64,
}

/// One run-list config of a [`CompactPlan`], rendered for the store: its JSON text
/// and the fields derived from the tree, instead of the tree itself. The tree of a
/// full canonical dump takes about 12 times the memory of its text (an `IndexMap`
/// per section, a `String` per key: ~15 KB against 1.2 KB for a synthetic config),
/// and the text is what a run record stores, so a 100,000-config study is held as
/// text once per config and nothing else.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedConfig {
    pub config_hash: String,
    pub engine: String,
    /// `task.model` (empty when the config has none).
    pub model: String,
    /// GPUs a run of this config needs ([`crate::gpus::tp_size`]).
    pub tp_size: u32,
    /// `pyjson::dumps(&config, &DumpOptions::default())` of the full canonical dump
    /// (`server.traffic.slo` included), the config [`PlannedRun::config`] holds.
    pub config_json: String,
}

impl PlannedConfig {
    fn render(c: RunListConfig) -> PlannedConfig {
        PlannedConfig {
            model: c
                .config
                .get_path("task.model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            tp_size: crate::gpus::tp_size(&c.engine, &c.config),
            config_json: {
                // Held for the plan's life: without the slack of a growing String
                // (up to half of it).
                let mut text = pyjson::dumps(&c.config, &pyjson::DumpOptions::default());
                text.shrink_to_fit();
                text
            },
            config_hash: c.config_hash,
            engine: c.engine,
        }
    }

    /// The config tree, read back from [`PlannedConfig::config_json`] (the text
    /// round-trips exactly: ints stay ints, floats are shortest repr, key order kept).
    pub fn config(&self) -> Value {
        pyjson::parse(&self.config_json).expect("a config's own JSON rendering parses")
    }
}

/// A config of the run list as the planner produces it, before it is kept.
struct RunListConfig {
    config: Value,
    config_hash: String,
    engine: String,
}

impl CompactPlan<RunListConfig> {
    /// The full plan: each run gets its own copy of its config.
    fn into_study_plan(self) -> StudyPlan {
        let runs = self
            .runs
            .iter()
            .map(|r| {
                let c = &self.configs[r.config as usize];
                PlannedRun {
                    config_hash: c.config_hash.clone(),
                    cycle: r.cycle,
                    config: c.config.clone(),
                    engine: c.engine.clone(),
                    gap_before_seconds: r.gap_before_seconds,
                }
            })
            .collect();
        StudyPlan {
            mode: self.mode,
            study_name: self.study_name,
            study_design_hash: self.study_design_hash,
            execution: self.execution,
            runs,
            skipped: self.skipped,
            n_configs: self.n_configs,
            n_valid_declared: self.n_valid_declared,
            n_generated: self.n_generated,
            warnings: self.warnings,
            dormant_observations: self.dormant_observations,
            dedup_mode: self.dedup_mode,
            run_list: self.configs.into_iter().map(|c| c.config).collect(),
            runners: self.runners,
            images: self.images,
        }
    }
}

/// The number of raw configs a study expands to before validation (the grid size),
/// computed from the sweep's axis lengths and group sizes without building a single
/// config, so a runaway grid can be refused before it takes the memory to expand it.
/// A single-experiment file counts 1.
pub fn count_before_expansion(src: &StudySource, opts: &PlanOptions) -> Result<usize, StudyError> {
    match prepare(src, opts)? {
        Prepared::Single { .. } => Ok(1),
        Prepared::Study(p) => {
            let n = expand::count_sweep(&p.sweep, &p.merged_fixed, p.entries.is_empty())
                .map_err(|e| p.sweep_error(e))?;
            Ok(n.saturating_add(p.entries.len()))
        }
    }
}

/// The raw (unvalidated) configs of a study in llem's generation order: the sweep
/// then the `experiments:` entries (FORMAT.md 7.3-7.4). A single-experiment file
/// yields its one mapping. [`plan`] validates, canonicalises and orders these.
pub fn expand_raw(
    src: &StudySource,
    opts: &PlanOptions,
) -> Result<Vec<expand::RawConfig>, StudyError> {
    match prepare(src, opts)? {
        Prepared::Single { raw, .. } => Ok(vec![expand::RawConfig {
            map: raw,
            shared_section: None,
        }]),
        Prepared::Study(p) => p.expand(),
    }
}

/// Streams the raw configs of a study to `f` in generation order, one at a time (the
/// way [`plan`] consumes them), and returns how many there were.
pub fn for_each_raw(
    src: &StudySource,
    opts: &PlanOptions,
    mut f: impl FnMut(expand::RawConfig),
) -> Result<usize, StudyError> {
    match prepare(src, opts)? {
        Prepared::Single { raw, .. } => {
            f(expand::RawConfig {
                map: raw,
                shared_section: None,
            });
            Ok(1)
        }
        Prepared::Study(p) => {
            let mut n = 0;
            for rc in p.raw_configs()? {
                f(rc?);
                n += 1;
            }
            Ok(n)
        }
    }
}

const STUDY_ONLY: &[&str] = &[
    "sweep",
    "experiments",
    "study_execution",
    "base",
    "study_name",
    "version",
    "runners",
    "images",
    "output",
];

/// A study file read up to the point where expansion starts (FORMAT.md 7.1-7.2).
struct StudyParts {
    file: String,
    spans: Spans,
    study_name: Option<String>,
    execution: StudyExecution,
    runners: Option<Value>,
    images: Option<Value>,
    merged_fixed: Map,
    sweep: Map,
    entries: Vec<Value>,
}

enum Prepared {
    /// Not a study (2.2): the file's mapping, for the single-experiment path.
    Single {
        raw: Map,
        spans: Spans,
        file: String,
    },
    Study(Box<StudyParts>),
}

impl StudyParts {
    fn sweep_error(&self, e: expand::SweepError) -> StudyError {
        let (line, col) = self
            .spans
            .nearest(&["sweep", e.key.as_str()])
            .unwrap_or((1, 1));
        if e.empty_axis {
            StudyError::EmptyAxis {
                file: self.file.clone(),
                line,
                col,
                key: e.key,
                message: e.message,
            }
        } else {
            StudyError::BadSweep {
                file: self.file.clone(),
                line,
                col,
                key: e.key,
                message: e.message,
            }
        }
    }

    /// The raw configs (7.3, 7.4), sweep configs then experiment entries, built one
    /// at a time.
    fn raw_configs(
        &self,
    ) -> Result<impl Iterator<Item = Result<expand::RawConfig, StudyError>> + '_, StudyError> {
        let sweep =
            expand::SweepExpansion::new(&self.sweep, &self.merged_fixed, self.entries.is_empty())
                .map_err(|e| self.sweep_error(e))?;
        let experiments = expand::expand_experiments(&self.entries, &self.merged_fixed);
        Ok(sweep
            .map(|r| r.map_err(|e| self.sweep_error(e)))
            .chain(experiments.into_iter().map(Ok)))
    }

    /// All raw configs in a vector; an empty expansion is an error.
    fn expand(&self) -> Result<Vec<expand::RawConfig>, StudyError> {
        let raws = self.raw_configs()?.collect::<Result<Vec<_>, _>>()?;
        if raws.is_empty() {
            return Err(StudyError::NoExperiments {
                file: self.file.clone(),
            });
        }
        Ok(raws)
    }
}

/// Reads a study up to expansion: the unknown-key check, CLI defaults, `output` and
/// `study_execution` validation, `base:` and the fixed fields.
fn prepare(src: &StudySource, opts: &PlanOptions) -> Result<Prepared, StudyError> {
    let file = src.path.clone();
    let doc = parse_doc(&src.text, &file)?;
    let yaml::Document { value, spans } = doc;
    let Value::Map(mut raw) = value else {
        return Err(StudyError::NotAMapping {
            file,
            found: value.py_type_name().into(),
        });
    };
    let is_study = raw.contains_key("sweep") || raw.contains_key("experiments");
    if !opts.library_defaults && !is_study {
        return Ok(Prepared::Single { raw, spans, file });
    }
    check_study_keys(&raw, &spans, &file)?;
    if !opts.library_defaults {
        let exec = raw.get("study_execution").cloned().unwrap_or(Value::Null);
        let exec_map = exec.as_map().cloned().unwrap_or_default();
        let mut overrides = Map::new();
        if !exec_map.contains_key("n_cycles") {
            overrides.insert("n_cycles".into(), Value::Int(3));
        }
        if !exec_map.contains_key("experiment_order") {
            overrides.insert("experiment_order".into(), Value::Str("shuffle".into()));
        }
        if !overrides.is_empty() {
            let mut o = Map::new();
            o.insert("study_execution".into(), Value::Map(overrides));
            raw = expand::deep_merge(&raw, &o);
        }
    }
    raw.shift_remove("version");
    let study_name = match raw.get("study_name") {
        None | Some(Value::Null) => None,
        Some(Value::Str(s)) => Some(s.clone()),
        Some(other) => {
            return Err(StudyError::InvalidStudyName {
                file,
                found: other.py_type_name().into(),
            })
        }
    };
    let mut errs = Vec::new();
    let output_raw = raw
        .get("output")
        .filter(|v| py::truthy(v))
        .cloned()
        .unwrap_or(Value::Map(Map::new()));
    match &output_raw {
        Value::Map(m) => {
            validate::validate_map(m, &schema::OUTPUT, &[], &mut errs);
        }
        _ => errs.push(FieldError {
            loc: String::new(),
            type_: "model_type".into(),
            msg: "Input should be a valid dictionary or instance of OutputConfig".into(),
        }),
    }
    if !errs.is_empty() {
        return Err(StudyError::InvalidBlock {
            file,
            block: "output".into(),
            errors: errs,
        });
    }
    let exec_raw = raw
        .get("study_execution")
        .filter(|v| py::truthy(v))
        .cloned()
        .unwrap_or(Value::Map(Map::new()));
    let exec_dump = match &exec_raw {
        Value::Map(m) => validate::validate_map(m, &schema::EXECUTION, &[], &mut errs),
        _ => {
            errs.push(FieldError {
                loc: String::new(),
                type_: "model_type".into(),
                msg: "Input should be a valid dictionary or instance of ExecutionConfig".into(),
            });
            None
        }
    };
    let Some(exec_dump) = exec_dump.filter(|_| errs.is_empty()) else {
        return Err(StudyError::InvalidBlock {
            file,
            block: "study_execution".into(),
            errors: errs,
        });
    };
    let execution = StudyExecution::from_dump(Value::Map(exec_dump));

    // Fixed fields (7.2).
    let base_fields: Map = match (raw.get("base"), &src.base) {
        (None | Some(Value::Null), _) => Map::new(),
        (Some(Value::Str(b)), None) => {
            return Err(StudyError::BaseNotFound {
                file,
                resolved: b.clone(),
            })
        }
        (Some(_), Some((bpath, btext))) => {
            let bdoc = parse_doc_any(btext, bpath)?;
            let bmap = match bdoc.value {
                Value::Null => Map::new(),
                Value::Map(m) => m,
                other => {
                    return Err(StudyError::NotAMapping {
                        file: bpath.clone(),
                        found: other.py_type_name().into(),
                    })
                }
            };
            let bmap: Map = bmap
                .into_iter()
                .filter(|(k, _)| !STUDY_ONLY.contains(&k.as_str()))
                .collect();
            check_experiment_keys(&bmap, &[], &bdoc.spans, bpath, "")?;
            bmap
        }
        (Some(other), None) => {
            return Err(StudyError::BaseNotFound {
                file,
                resolved: py::to_str(other),
            })
        }
    };
    let fixed: Map = raw
        .iter()
        .filter(|(k, _)| !STUDY_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut merged_fixed = base_fields;
    for (k, v) in fixed {
        merged_fixed.insert(k, v);
    }

    // Expansion (7.3, 7.4).
    let sweep = match raw.get("sweep") {
        Some(Value::Map(m)) => m.clone(),
        _ => Map::new(),
    };
    let entries: Vec<Value> = match raw.get("experiments") {
        Some(Value::Seq(v)) => v.clone(),
        _ => Vec::new(),
    };
    // FORMAT.md 7.1 step 3: null or empty is none.
    let block = |k: &str| match raw.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::Map(m)) if m.is_empty() => None,
        Some(v) => Some(v.clone()),
    };
    let (runners, images) = (block("runners"), block("images"));
    Ok(Prepared::Study(Box::new(StudyParts {
        file,
        spans,
        study_name,
        execution,
        runners,
        images,
        merged_fixed,
        sweep,
        entries,
    })))
}

/// Most runs [`plan`] builds (distinct configs times `n_cycles`); the coordinator
/// accepts no larger campaign, and a run list this long already takes hundreds of MB.
pub const MAX_PLANNED_RUNS: usize = 1_000_000;

/// Plans a study or single-experiment file, refusing one of more than
/// [`MAX_PLANNED_RUNS`] runs.
pub fn plan(src: &StudySource, opts: &PlanOptions) -> Result<StudyPlan, StudyError> {
    plan_within(src, opts, MAX_PLANNED_RUNS)
}

/// [`plan`] with another run limit: a study whose grid has more than `max_runs`
/// configs before validation ([`StudyError::GridTooLarge`], counted without
/// expanding it) or that plans more than `max_runs` runs
/// ([`StudyError::TooManyRuns`]) is refused before the run list is built.
pub fn plan_within(
    src: &StudySource,
    opts: &PlanOptions,
    max_runs: usize,
) -> Result<StudyPlan, StudyError> {
    Ok(plan_kept(src, opts, max_runs, |c| c)?.into_study_plan())
}

/// [`plan`] without a config tree per run: the same runs, order, hashes, cycles and
/// gaps (both are the same code), with each run-list config held once, rendered as
/// JSON text ([`PlannedConfig`]), and each run an index into them ([`CompactRun`]).
/// A study of 100,000 configs x 10 cycles plans in under 200 MB where [`plan`]
/// would take about 15 GB (`common/examples/plan_rss.rs` measures both).
pub fn plan_compact(src: &StudySource, opts: &PlanOptions) -> Result<CompactPlan, StudyError> {
    plan_compact_within(src, opts, MAX_PLANNED_RUNS)
}

/// [`plan_compact`] with another run limit, as [`plan_within`].
pub fn plan_compact_within(
    src: &StudySource,
    opts: &PlanOptions,
    max_runs: usize,
) -> Result<CompactPlan, StudyError> {
    plan_kept(src, opts, max_runs, PlannedConfig::render)
}

/// The planner behind [`plan`] and [`plan_compact`]: each run-list config is handed
/// to `keep` as soon as it is canonicalised, deduplicated and hashed, and only what
/// `keep` returns is held; no other config tree outlives its turn of the loop.
fn plan_kept<C>(
    src: &StudySource,
    opts: &PlanOptions,
    max_runs: usize,
    mut keep: impl FnMut(RunListConfig) -> C,
) -> Result<CompactPlan<C>, StudyError> {
    let parts = match prepare(src, opts)? {
        Prepared::Single { raw, spans, file } => return plan_single(raw, &spans, &file, keep),
        Prepared::Study(p) => p,
    };
    let file = parts.file.clone();
    let n_grid = expand::count_sweep(&parts.sweep, &parts.merged_fixed, parts.entries.is_empty())
        .map_err(|e| parts.sweep_error(e))?
        .saturating_add(parts.entries.len());
    if n_grid > max_runs {
        return Err(StudyError::GridTooLarge {
            file,
            n_configs: n_grid,
            limit: max_runs,
        });
    }

    // Validation with the preset side effect (7.5), config by config as the grid is
    // generated, so the raw grid is never held whole. Each valid config is
    // canonicalised (7.6) and deduplicated (7.7) in the same turn: the checks below
    // that need every config (all invalid, mixed modes) only read counts and modes,
    // and canonicalisation cannot fail, so doing it early changes no outcome.
    let mut shared: Map = Map::new();
    for e in schema::ENGINES {
        if let Some(v @ Value::Map(_)) = parts.merged_fixed.get(*e) {
            shared.insert(e.to_string(), v.clone());
        }
    }
    let dedup = parts.execution.deduplicate_equivalent;
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    let mut n_generated = 0usize;
    let mut n_valid_declared = 0usize;
    let mut modes = std::collections::BTreeSet::new();
    let mut observations: Vec<DormantObservation> = Vec::new();
    let mut seen_resolved = std::collections::HashSet::new();
    let mut run_list = RunList::new();
    for (idx, rc) in parts.raw_configs()?.enumerate() {
        let rc = rc?;
        n_generated += 1;
        let mut map = rc.map;
        if let Some(e) = &rc.shared_section {
            let current = shared.get(e).cloned().unwrap_or(Value::Null);
            if map.get(e) != Some(&current) {
                warnings.push(format!(
                    "{file}: generated config {} inherits sampling values written into the shared '{e}:' section by an earlier config's sampling_preset (llem 0.7.0 behaviour, reproduced; add any '{e}.' sweep key to avoid it)",
                    idx + 1
                ));
            }
            map.insert(e.clone(), current);
        }
        let snapshot = Value::Map(map.clone());
        validate::expand_sampling_preset(&mut map);
        if let Some(e) = &rc.shared_section {
            if let Some(v) = map.get(e) {
                shared.insert(e.clone(), v.clone());
            }
        }
        let valid = match validate::validate_experiment(&map) {
            Ok(v) => v.dump,
            Err(errors) => {
                skipped.push(skip_record(snapshot, errors));
                continue;
            }
        };
        n_valid_declared += 1;
        if let Some(m) = valid.get_path("serving_mode").and_then(Value::as_str) {
            if !modes.contains(m) {
                modes.insert(m.to_string());
            }
        }
        let mut found = Vec::new();
        let canonical = rules::canonicalise(&engine_of(&valid), &valid, &mut found);
        for o in found {
            if !observations.contains(&o) {
                observations.push(o);
            }
        }
        if dedup && !seen_resolved.insert(hash::resolved_config_hash(&canonical)) {
            continue;
        }
        run_list.push(canonical, &mut keep);
    }
    drop(seen_resolved);
    if n_generated == 0 {
        return Err(StudyError::NoExperiments { file });
    }
    let StudyParts {
        study_name,
        execution,
        runners,
        images,
        ..
    } = *parts;
    let total = n_valid_declared + skipped.len();
    if n_valid_declared == 0 {
        let first = skipped
            .iter()
            .take(5)
            .map(|s| s.reason.chars().take(120).collect::<String>())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(StudyError::AllInvalid { file, total, first });
    }
    if skipped.len() * 2 > total {
        warnings.push(format!(
            "{file}: most of the sweep is invalid ({}/{} configs skipped)",
            skipped.len(),
            total
        ));
    }
    if modes.len() > 1 {
        return Err(StudyError::MixedServingModes {
            file,
            modes: modes.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    if n_valid_declared > 100 {
        warnings.push(format!(
            "{file}: large study: {n_valid_declared} valid experiments"
        ));
    }
    let n_runs = run_list.kept.len() as u64 * u64::from(execution.n_cycles);
    if n_runs > max_runs as u64 {
        return Err(StudyError::TooManyRuns {
            file,
            n_configs: run_list.kept.len(),
            n_cycles: execution.n_cycles,
            n_runs,
            limit: max_runs,
        });
    }
    let dedup_mode = if dedup { "resolved" } else { "off" };
    let head = PlanHead {
        mode: PlanMode::Study,
        study_name,
        execution,
        skipped,
        n_valid_declared,
        n_generated,
        warnings,
        dormant_observations: observations,
        dedup_mode: dedup_mode.into(),
        runners,
        images,
    };
    Ok(run_list.finish(head, cycle_order))
}

/// The engine a config names (`transformers` when it names none).
fn engine_of(config: &Value) -> String {
    config
        .get_path("engine")
        .and_then(Value::as_str)
        .unwrap_or("transformers")
        .to_string()
}

/// The run list as it is built: what is kept of each config, the design hash over
/// the configs so far (8.2), and which entries share a config hash.
struct RunList<C> {
    kept: Vec<C>,
    design: hash::DesignHasher,
    /// Per entry, the index of its config hash among the distinct ones.
    hash_ids: Vec<u32>,
    distinct: std::collections::HashMap<String, u32>,
}

impl<C> RunList<C> {
    fn new() -> RunList<C> {
        RunList {
            kept: Vec::new(),
            design: hash::DesignHasher::default(),
            hash_ids: Vec::new(),
            distinct: std::collections::HashMap::new(),
        }
    }

    fn push(&mut self, config: Value, keep: &mut impl FnMut(RunListConfig) -> C) {
        self.design.push(&config);
        let config_hash = config_hash(&config);
        let next = to_u32(self.distinct.len());
        let id = *self.distinct.entry(config_hash.clone()).or_insert(next);
        self.hash_ids.push(id);
        self.kept.push(keep(RunListConfig {
            engine: engine_of(&config),
            config,
            config_hash,
        }));
    }

    /// Orders the run list over the cycles with `order` ([`cycle_order`], 7.9) and
    /// fills in the plan.
    fn finish(
        self,
        head: PlanHead,
        order: impl FnOnce(usize, &StudyExecution, &str) -> Vec<usize>,
    ) -> CompactPlan<C> {
        let study_design_hash = self.design.finish();
        let order = order(self.kept.len(), &head.execution, &study_design_hash);
        let runs = build_runs(&order, &self.hash_ids, self.distinct.len(), &head.execution);
        CompactPlan {
            mode: head.mode,
            study_name: head.study_name,
            study_design_hash,
            execution: head.execution,
            skipped: head.skipped,
            n_configs: self.distinct.len(),
            n_valid_declared: head.n_valid_declared,
            n_generated: head.n_generated,
            warnings: head.warnings,
            dormant_observations: head.dormant_observations,
            dedup_mode: head.dedup_mode,
            runners: head.runners,
            images: head.images,
            configs: self.kept,
            runs,
        }
    }
}

/// The fields of a plan settled before the run list is ordered.
struct PlanHead {
    mode: PlanMode,
    study_name: Option<String>,
    execution: StudyExecution,
    skipped: Vec<SkippedConfig>,
    n_valid_declared: usize,
    n_generated: usize,
    warnings: Vec<String>,
    dormant_observations: Vec<DormantObservation>,
    dedup_mode: String,
    runners: Option<Value>,
    images: Option<Value>,
}

/// A run-list index as a [`CompactRun::config`]; the grid limit keeps run lists far
/// below 2^32 entries.
fn to_u32(i: usize) -> u32 {
    u32::try_from(i).expect("a run list of fewer than 2^32 configs")
}

impl StudyPlan {
    /// Exactly the object `expand_study.py` prints (same keys, same order).
    pub fn to_oracle_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("n_configs".into(), Value::Int(self.n_configs as i64));
        m.insert("n_runs".into(), Value::Int(self.runs.len() as i64));
        m.insert(
            "skipped".into(),
            Value::Seq(
                self.skipped
                    .iter()
                    .map(|s| {
                        let mut e = Map::new();
                        e.insert("config".into(), s.config.clone());
                        e.insert("reason".into(), Value::Str(s.reason.clone()));
                        e.insert(
                            "rule_id".into(),
                            s.rule_id.clone().map(Value::Str).unwrap_or(Value::Null),
                        );
                        e.insert(
                            "errors".into(),
                            Value::Seq(s.errors.iter().map(error_json).collect()),
                        );
                        Value::Map(e)
                    })
                    .collect(),
            ),
        );
        m.insert(
            "runs".into(),
            Value::Seq(
                self.runs
                    .iter()
                    .map(|r| {
                        let mut e = Map::new();
                        e.insert("config_hash".into(), Value::Str(r.config_hash.clone()));
                        e.insert("cycle".into(), Value::Int(r.cycle as i64));
                        e.insert("config".into(), r.config.clone());
                        Value::Map(e)
                    })
                    .collect(),
            ),
        );
        match self.mode {
            PlanMode::Experiment => {
                m.insert("mode".into(), Value::Str("experiment".into()));
            }
            PlanMode::Study => {
                m.insert("mode".into(), Value::Str("study".into()));
                m.insert(
                    "study_name".into(),
                    self.study_name
                        .clone()
                        .map(Value::Str)
                        .unwrap_or(Value::Null),
                );
                m.insert(
                    "study_design_hash".into(),
                    Value::Str(self.study_design_hash.clone()),
                );
                m.insert(
                    "n_valid_declared".into(),
                    Value::Int(self.n_valid_declared as i64),
                );
                m.insert("dedup_mode".into(), Value::Str(self.dedup_mode.clone()));
                m.insert(
                    "dormant_observations".into(),
                    Value::Seq(
                        self.dormant_observations
                            .iter()
                            .map(|o| {
                                let mut e = Map::new();
                                e.insert("engine".into(), Value::Str(o.engine.clone()));
                                e.insert("rule_id".into(), Value::Str(o.rule_id.clone()));
                                e.insert("field_path".into(), Value::Str(o.field_path.clone()));
                                e.insert(
                                    "normalisation".into(),
                                    Value::Str(o.normalisation.clone()),
                                );
                                Value::Map(e)
                            })
                            .collect(),
                    ),
                );
                m.insert("execution".into(), self.execution.dump.clone());
            }
        }
        Value::Map(m)
    }
}

fn error_json(e: &FieldError) -> Value {
    let mut m = Map::new();
    m.insert("loc".into(), Value::Str(e.loc.clone()));
    m.insert("type".into(), Value::Str(e.type_.clone()));
    m.insert("msg".into(), Value::Str(e.msg.clone()));
    Value::Map(m)
}

fn parse_doc_any(text: &str, file: &str) -> Result<yaml::Document, StudyError> {
    // llem reads the base with safe_load whatever its suffix.
    Ok(yaml::load(text, file)?)
}

fn rule_id_of(errors: &[FieldError]) -> Option<String> {
    for e in errors {
        if e.type_ != "value_error" {
            continue;
        }
        let Some(rest) = e.msg.strip_prefix("Value error, [") else {
            continue;
        };
        let Some((id, _)) = rest.split_once(']') else {
            continue;
        };
        if !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Some(id.to_string());
        }
    }
    None
}

fn skip_record(config: Value, errors: Vec<FieldError>) -> SkippedConfig {
    let rule_id = rule_id_of(&errors);
    let reason = match &rule_id {
        Some(id) => format!("rule {id}"),
        None => render_errors(&errors),
    };
    SkippedConfig {
        config,
        reason,
        rule_id,
        errors,
    }
}

/// The order of run-list indices over all cycles (7.9).
pub fn cycle_order(k: usize, ex: &StudyExecution, design_hash: &str) -> Vec<usize> {
    let n = ex.n_cycles as usize;
    let base: Vec<usize> = (0..k).collect();
    let mut out = Vec::with_capacity(k * n);
    match ex.experiment_order {
        ExperimentOrder::Sequential => {
            for i in 0..k {
                out.extend(std::iter::repeat_n(i, n));
            }
        }
        ExperimentOrder::Interleave => {
            for _ in 0..n {
                out.extend(&base);
            }
        }
        ExperimentOrder::Reverse => {
            for c in 0..n {
                if c % 2 == 0 {
                    out.extend(&base);
                } else {
                    out.extend(base.iter().rev());
                }
            }
        }
        ExperimentOrder::LatinSquare => {
            if k > 0 {
                for c in 0..n {
                    out.extend(latin_square_row(k, c % k));
                }
            }
        }
        ExperimentOrder::Shuffle => {
            let seed = ex
                .shuffle_seed
                .unwrap_or_else(|| hash::derived_shuffle_seed(design_hash));
            let mut rng = mt::PyRandom::new(seed as i128);
            for _ in 0..n {
                let mut pass = base.clone();
                rng.shuffle(&mut pass);
                out.extend(pass);
            }
        }
    }
    out
}

/// Row `i` of llem's latin square over k items.
pub fn latin_square_row(k: usize, i: usize) -> Vec<usize> {
    let (k, i) = (k as i64, i as i64);
    (0..k)
        .map(|j| {
            let v = if j == 0 {
                i
            } else if j % 2 == 1 {
                i + (j + 1) / 2
            } else {
                i - j / 2
            };
            v.rem_euclid(k) as usize
        })
        .collect()
}

/// The runs of `order` (run-list indices in execution order): each run's cycle is
/// how many runs of its config hash came before it plus one, and its gap is the
/// experiment gap plus, at each cycle boundary, the cycle gap (7.9, 7.10).
fn build_runs(
    order: &[usize],
    hash_ids: &[u32],
    n_distinct: usize,
    ex: &StudyExecution,
) -> Vec<CompactRun> {
    let b = if ex.experiment_order == ExperimentOrder::Sequential && n_distinct >= 2 {
        ex.n_cycles as usize
    } else {
        n_distinct
    };
    let mut counts = vec![0u32; n_distinct];
    let mut runs = Vec::with_capacity(order.len());
    for (pos, &i) in order.iter().enumerate() {
        let c = &mut counts[hash_ids[i] as usize];
        *c += 1;
        let mut gap = 0.0;
        if pos > 0 {
            gap += ex
                .experiment_gap_seconds
                .filter(|g| *g > 0.0)
                .unwrap_or(0.0);
            if ex.n_cycles >= 2 && b > 0 && pos % b == 0 {
                gap += ex.cycle_gap_seconds.filter(|g| *g > 0.0).unwrap_or(0.0);
            }
        }
        runs.push(CompactRun {
            config: to_u32(i),
            cycle: *c,
            gap_before_seconds: gap,
        });
    }
    runs
}

/// The single-experiment path (7.11): one run, no canonicalisation, errors are fatal.
fn plan_single<C>(
    mut raw: Map,
    spans: &Spans,
    file: &str,
    mut keep: impl FnMut(RunListConfig) -> C,
) -> Result<CompactPlan<C>, StudyError> {
    raw.shift_remove("version");
    check_experiment_keys(&raw, &[], spans, file, "")?;
    validate::expand_sampling_preset(&mut raw);
    let dump = validate::validate_experiment(&raw)
        .map_err(|errors| StudyError::InvalidExperiment {
            file: file.into(),
            errors,
        })?
        .dump;
    let execution = StudyExecution::from_dump(Value::Map(
        validate::validate_map(&Map::new(), &schema::EXECUTION, &[], &mut Vec::new())
            .unwrap_or_default(),
    ));
    let mut run_list = RunList::new();
    run_list.push(dump, &mut keep);
    let head = PlanHead {
        mode: PlanMode::Experiment,
        study_name: None,
        execution,
        skipped: Vec::new(),
        n_valid_declared: 1,
        n_generated: 1,
        warnings: Vec::new(),
        dormant_observations: Vec::new(),
        dedup_mode: "off".into(),
        runners: None,
        images: None,
    };
    // One run whatever the (default) execution block says.
    Ok(run_list.finish(head, |_, _, _| vec![0]))
}

// ---- the unknown-key check (a deliberate departure from llem) -----------------------

fn unknown(
    file: &str,
    spans: &Spans,
    span_path: &[String],
    key: String,
    candidates: &[&str],
    bad: &str,
) -> StudyError {
    let (line, col) = spans.nearest(span_path).unwrap_or((1, 1));
    let hint = match (key.as_str(), bad) {
        ("harness", _) => Some("the top-level 'harness:' section was removed; its knobs moved to '<engine>.llem_execution'".to_string()),
        (_, "warmup") if key.ends_with("measurement.warmup") => Some("it moved to 'offline.warmup'".to_string()),
        _ => py::close_match(bad, candidates, 0.6).map(|s| format!("did you mean '{s}'?")),
    };
    StudyError::UnknownKey {
        file: file.into(),
        line,
        col,
        key,
        hint,
    }
}

fn field_names(m: &Model) -> Vec<&'static str> {
    m.fields.iter().map(|f| f.name).collect()
}

/// Checks a mapping written against `model`, recursing into nested models.
fn check_map(
    map: &Map,
    model: &'static Model,
    span_path: &[String],
    shown: &str,
    spans: &Spans,
    file: &str,
) -> Result<(), StudyError> {
    let is_section = schema::ENGINES
        .iter()
        .any(|e| schema::engine_section(e).is_some_and(|s| std::ptr::eq(s, model)));
    for (k, v) in map {
        let mut sp = span_path.to_vec();
        sp.push(k.clone());
        let key_shown = if shown.is_empty() {
            k.clone()
        } else {
            format!("{shown}.{k}")
        };
        match model.field(k) {
            Some(f) => {
                if let (Kind::Model(sub), Value::Map(m)) = (f.kind, v) {
                    check_map(m, sub, &sp, &key_shown, spans, file)?;
                }
            }
            None => {
                if model.extra == Extra::Forbid || is_section {
                    return Err(unknown(file, spans, &sp, key_shown, &field_names(model), k));
                }
            }
        }
    }
    Ok(())
}

fn check_experiment_keys(
    map: &Map,
    span_path: &[String],
    spans: &Spans,
    file: &str,
    shown: &str,
) -> Result<(), StudyError> {
    check_map(map, &schema::EXPERIMENT, span_path, shown, spans, file)
}

/// Checks a dotted sweep key (and a mapping value under it) against the registry.
fn check_dotted(
    key: &str,
    value: Option<&Value>,
    span_path: &[String],
    spans: &Spans,
    file: &str,
) -> Result<(), StudyError> {
    let mut model: &'static Model = &schema::EXPERIMENT;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, seg) in parts.iter().enumerate() {
        let is_section = schema::ENGINES
            .iter()
            .any(|e| schema::engine_section(e).is_some_and(|s| std::ptr::eq(s, model)));
        match model.field(seg) {
            Some(f) => match f.kind {
                Kind::Model(sub) => {
                    model = sub;
                    if i == parts.len() - 1 {
                        if let Some(Value::Map(m)) = value {
                            check_map(m, sub, span_path, key, spans, file)?;
                        }
                    }
                }
                _ => return Ok(()),
            },
            None => {
                if model.extra == Extra::Forbid || is_section {
                    return Err(unknown(
                        file,
                        spans,
                        span_path,
                        key.to_string(),
                        &field_names(model),
                        seg,
                    ));
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

fn check_study_keys(raw: &Map, spans: &Spans, file: &str) -> Result<(), StudyError> {
    let fixed: Map = raw
        .iter()
        .filter(|(k, _)| !STUDY_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_experiment_keys(&fixed, &[], spans, file, "")?;
    for (block, model) in [
        ("study_execution", &schema::EXECUTION),
        ("output", &schema::OUTPUT),
    ] {
        if let Some(Value::Map(m)) = raw.get(block) {
            check_map(m, model, &[block.to_string()], block, spans, file)?;
        }
    }
    if let Some(Value::Map(sweep)) = raw.get("sweep") {
        for (key, value) in sweep {
            let sp = vec!["sweep".to_string(), key.clone()];
            let is_group = matches!(value, Value::Seq(items) if !items.is_empty() && items.iter().all(|i| matches!(i, Value::Map(_))));
            if is_group {
                let Value::Seq(items) = value else { continue };
                for (idx, item) in items.iter().enumerate() {
                    let Value::Map(m) = item else { continue };
                    for (ik, iv) in m {
                        let isp = vec![
                            "sweep".to_string(),
                            key.clone(),
                            idx.to_string(),
                            ik.clone(),
                        ];
                        check_dotted(ik, Some(iv), &isp, spans, file)?;
                    }
                }
            } else {
                check_dotted(key, None, &sp, spans, file)?;
            }
        }
    }
    if let Some(Value::Seq(entries)) = raw.get("experiments") {
        for (idx, e) in entries.iter().enumerate() {
            if let Value::Map(m) = e {
                let sp = vec!["experiments".to_string(), idx.to_string()];
                check_map(
                    m,
                    &schema::EXPERIMENT,
                    &sp,
                    &format!("experiments[{idx}]"),
                    spans,
                    file,
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> StudySource {
        StudySource {
            path: "study.yaml".into(),
            text: text.into(),
            base: None,
        }
    }

    // Found while writing the fuzz targets (and now in their dictionary):
    // `n_cycles: 4000000000` made `cycle_order` ask for 64 GB and abort, and
    // `n_cycles: 4294967297` wrapped to 1 cycle.
    #[test]
    fn a_run_list_past_the_limit_is_refused_before_it_is_built() {
        let study = |n_cycles: &str| {
            format!("task: {{model: m}}\nengine: synthetic\nserving_mode: offline\nsweep:\n  task.max_output_tokens: [1, 2]\nstudy_execution: {{n_cycles: {n_cycles}}}\n")
        };
        let e = plan(&src(&study("4000000000")), &PlanOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "study.yaml: the study plans 2 config(s) x 4000000000 cycle(s) = 8000000000 runs, more than the limit of 1000000 (lower study_execution.n_cycles or narrow the sweep)");
        let e = plan(&src(&study("4294967297")), &PlanOptions::default()).unwrap_err();
        assert!(
            matches!(
                e,
                StudyError::TooManyRuns {
                    n_cycles: u32::MAX,
                    ..
                }
            ),
            "{e}"
        );
        let p = plan_within(&src(&study("3")), &PlanOptions::default(), 6).unwrap();
        assert_eq!(p.runs.len(), 6);
        let e = plan_within(&src(&study("4")), &PlanOptions::default(), 6).unwrap_err();
        assert!(
            matches!(e, StudyError::TooManyRuns { n_runs: 8, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_grid_past_the_limit_is_refused_before_it_is_expanded() {
        let text = "task: {model: m}\nengine: synthetic\nserving_mode: offline\nsweep:\n  task.max_output_tokens: {min: 1, max: 1000, num: 1000}\n  task.max_input_tokens: {min: 1, max: 1000, num: 1000}\n  synthetic.engine_params.batch_size: {min: 1, max: 1000, num: 1000}\n";
        let e = plan(&src(text), &PlanOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "study.yaml: the sweep expands to 1000000000 configs before validation, more than the limit of 1000000 runs (narrow the sweep)");
    }

    #[test]
    fn latin_square_rows_match_format() {
        assert_eq!(latin_square_row(4, 0), vec![0, 1, 3, 2]);
        assert_eq!(latin_square_row(4, 1), vec![1, 2, 0, 3]);
        assert_eq!(latin_square_row(4, 2), vec![2, 3, 1, 0]);
        assert_eq!(latin_square_row(4, 3), vec![3, 0, 2, 1]);
        assert_eq!(latin_square_row(3, 1), vec![1, 2, 0]);
    }

    #[test]
    fn unknown_sweep_key_is_an_error_with_position_and_suggestion() {
        let text = "task:\n  model: gpt2\nserving_mode: offline\nsweep:\n  task.max_output_token: [1, 2]\n";
        let e = plan(&src(text), &PlanOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "study.yaml:5:3: unknown key 'task.max_output_token' (did you mean 'max_output_tokens'?)");
        let text =
            "task:\n  model: gpt2\n  max_output_token: 3\nserving_mode: offline\nsweep: {}\n";
        let e = plan(&src(text), &PlanOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "study.yaml:3:3: unknown key 'task.max_output_token' (did you mean 'max_output_tokens'?)");
        let text = "task: {model: gpt2}\nserving_mode: offline\nexperiments:\n  - engine: vllm\n    vllm: {engine_param: {}}\n";
        let e = plan(&src(text), &PlanOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("study.yaml:5:12: unknown key 'experiments[0].vllm.engine_param'"),
            "{e}"
        );
        // Passthrough keys inside llem engine params stay allowed.
        let text = "task: {model: gpt2}\nserving_mode: offline\nengine: vllm\nsweep:\n  vllm.engine_params.all2all_backend: [naive]\n";
        assert!(plan(&src(text), &PlanOptions::default()).is_ok());
    }

    #[test]
    fn empty_axis_is_an_error_naming_the_key() {
        let text = "task: {model: gpt2}\nserving_mode: offline\nsweep:\n  transformers.llem_execution.batch_size: []\n";
        let e = plan(&src(text), &PlanOptions::default()).unwrap_err();
        assert!(matches!(e, StudyError::EmptyAxis { .. }));
        assert!(
            e.to_string().starts_with(
                "study.yaml:4:3: sweep axis 'transformers.llem_execution.batch_size' has no values"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_yaml_reports_position() {
        let e = plan(&src("task: [1, 2\nsweep: {}\n"), &PlanOptions::default()).unwrap_err();
        assert!(e.to_string().starts_with("study.yaml:"), "{e}");
    }

    #[test]
    fn synthetic_engine_sweeps_like_a_scoped_engine() {
        let text = "task: {model: gpt2}\nserving_mode: offline\nsweep:\n  synthetic.engine_params.batch_size: [1, 2, 4]\n  tensorrt.engine_params.max_batch_size: [8]\nstudy_execution: {n_cycles: 1, experiment_order: sequential}\n";
        let p = plan(&src(text), &PlanOptions::default()).unwrap();
        let engines: Vec<&str> = p.runs.iter().map(|r| r.engine.as_str()).collect();
        assert_eq!(
            engines,
            vec!["synthetic", "synthetic", "synthetic", "tensorrt"]
        );
        assert!(p.runs[3]
            .config
            .as_map()
            .unwrap()
            .get("synthetic")
            .is_none());
    }
}
