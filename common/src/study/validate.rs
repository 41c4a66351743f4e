//! One generic validator over the registry, with pydantic-lax coercion and texts.
//!
//! [`validate_model`] walks a raw [`Value`] against a [`Model`] the way pydantic 2
//! constructs a model from Python input (FORMAT.md 4.3/4.4): declared fields in order,
//! defaults filled in, typed values stored, passthrough keys kept after the declared
//! ones, errors `{loc, type, msg}` in pydantic's words. [`validate_experiment`] adds
//! llem's pre-checks and model-level checks in 4.1 order, ending with the engine rules.

use crate::pyjson::float_repr;
use crate::study::py::{close_match, py_eq, repr, repr_str, truthy};
use crate::study::rules;
use crate::study::schema::{self, DefaultValue, Extra, Field, Kind, Model};
use crate::value::{Map, Value};

/// One validation error, as pydantic reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Dotted location (`task.max_output_tokens`); empty for model-level checks.
    pub loc: String,
    pub type_: String,
    pub msg: String,
}

impl FieldError {
    fn new(loc: &[String], type_: &str, msg: impl Into<String>) -> Self {
        FieldError {
            loc: loc.join("."),
            type_: type_.into(),
            msg: msg.into(),
        }
    }

    /// A model-level `ValueError`, reported with an empty location.
    pub fn value_error(loc: &[String], message: &str) -> Self {
        FieldError::new(loc, "value_error", format!("Value error, {message}"))
    }
}

pub const RETIRED_HARNESS_KEY_MSG: &str = "The top-level 'harness:' section was removed. Move its knobs (batch_size, torch_compile, torch_compile_mode, torch_compile_backend, allow_tf32, autocast_enabled, autocast_dtype) into the engine section under '<engine>.llem_execution:' (e.g. transformers.llem_execution.batch_size).";
pub const SERVING_MODE_REQUIRED_MSG: &str = "serving_mode is required and has no default: declare 'serving_mode: offline' (batch inference over a fixed prompt set) or 'serving_mode: server' (online serving measurement, with a server: section).";
pub const TRANSFORMERS_SERVER_UNSUPPORTED_MSG: &str = "serving_mode=server is not supported for engine=transformers (a fast-follow). At the pinned transformers version `transformers serve` is upstream-positioned for evaluation and moderate load, not the sustained-load serving a measurement harness drives, so transformers server mode is deferred. Use engine=vllm or engine=tensorrt for server mode, or set serving_mode=offline for transformers.";
pub const SYNTHETIC_SERVER_UNSUPPORTED_MSG: &str = "serving_mode=server is not supported for engine=synthetic (the synthetic engine emulates offline batch inference only). Use engine=vllm or engine=tensorrt for server mode, or set serving_mode=offline for synthetic.";
pub const MEASUREMENT_WARMUP_MIGRATED_MSG: &str = "The 'measurement.warmup' section was moved to 'offline.warmup'. Warmup is now a per-mode protocol (offline uses prompt-loop convergence; server uses a convergence-composite gate), so it lives under the mode section rather than 'measurement:'. Move your warmup knobs under 'offline.warmup' (e.g. offline.warmup.n_prompts). 'measurement:' now holds only mode-invariant methodology (energy_sampler, baseline).";

/// The sampling presets (FORMAT.md 3.6).
pub fn sampling_preset(name: &str) -> Option<Vec<(&'static str, Value)>> {
    Some(match name {
        "deterministic" => vec![("temperature", Value::Float(0.0))],
        "standard" => vec![
            ("temperature", Value::Float(1.0)),
            ("top_p", Value::Float(0.95)),
        ],
        "creative" => vec![
            ("temperature", Value::Float(0.8)),
            ("top_p", Value::Float(0.9)),
            ("repetition_penalty", Value::Float(1.1)),
        ],
        "factual" => vec![("temperature", Value::Float(0.3))],
        _ => return None,
    })
}

/// The outcome of validating one experiment mapping.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The typed dump (pydantic `model_dump`), every default filled in.
    pub dump: Value,
}

/// Applies the sampling-preset pre-check (4.1 step 1a) in place; true if it wrote anything.
pub fn expand_sampling_preset(raw: &mut Map) -> bool {
    let Some(Value::Str(name)) = raw.get("sampling_preset") else {
        return false;
    };
    let Some(values) = sampling_preset(name) else {
        return false;
    };
    let engine_key = match raw.get("engine") {
        None => "transformers".to_string(),
        Some(Value::Str(e)) => e.clone(),
        // llem's `engine_str`: `str(engine)` for anything that is not an Engine, so
        // a list-valued engine gets a section keyed by the list's repr (then rejected
        // as an extra key, as llem does).
        Some(other) => crate::study::py::to_str(other),
    };
    let before = raw.get(&engine_key).cloned();
    if !matches!(raw.get(&engine_key), Some(Value::Map(_))) {
        raw.insert(engine_key.clone(), Value::Map(Map::new()));
    }
    let section = raw
        .get_mut(&engine_key)
        .and_then(Value::as_map_mut)
        .expect("section just ensured");
    if !matches!(section.get("sampling_params"), Some(Value::Map(_))) {
        section.insert("sampling_params".into(), Value::Map(Map::new()));
    }
    let sampling = section
        .get_mut("sampling_params")
        .and_then(Value::as_map_mut)
        .expect("sampling just ensured");
    for (k, v) in values {
        if !sampling.contains_key(k) {
            sampling.insert(k.to_string(), v);
        }
    }
    before.as_ref() != raw.get(&engine_key)
}

/// Validates one raw experiment mapping (the preset pre-check must already have run).
pub fn validate_experiment(raw: &Map) -> Result<Validated, Vec<FieldError>> {
    let root: Vec<String> = Vec::new();
    if !raw.contains_key("serving_mode") {
        return Err(vec![FieldError::value_error(
            &root,
            SERVING_MODE_REQUIRED_MSG,
        )]);
    }
    if raw.contains_key("harness") {
        return Err(vec![FieldError::value_error(
            &root,
            RETIRED_HARNESS_KEY_MSG,
        )]);
    }
    let mut errors = Vec::new();
    let dump = validate_map(raw, &schema::EXPERIMENT, &root, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut dump = dump.expect("no errors means a dump");
    model_checks(&dump).map_err(|e| vec![e])?;
    let engine = dump
        .get("engine")
        .and_then(Value::as_str)
        .unwrap_or("transformers")
        .to_string();
    if engine != "synthetic" {
        dump.shift_remove("synthetic");
    }
    let dump = Value::Map(dump);
    if let Some(err) = rules::first_error(&engine, &dump) {
        return Err(vec![err]);
    }
    Ok(Validated { dump })
}

fn engine_repr(e: &str) -> String {
    format!("<Engine.{}: '{}'>", e.to_ascii_uppercase(), e)
}

/// llem's model-level checks 1-8 (FORMAT.md 4.1 step 3).
fn model_checks(d: &Map) -> Result<(), FieldError> {
    let root: Vec<String> = Vec::new();
    let fail = |m: String| Err(FieldError::value_error(&root, &m));
    let engine = d
        .get("engine")
        .and_then(Value::as_str)
        .unwrap_or("transformers");
    let mode = d
        .get("serving_mode")
        .and_then(Value::as_str)
        .unwrap_or("offline");
    let present = |k: &str| d.get(k).is_some_and(|v| !v.is_null());
    for e in schema::ENGINES {
        if present(e) && *e != engine {
            return fail(format!(
                "{e}: config section provided but engine={}. Remove the {e}: section or set engine: {e}.",
                engine_repr(engine)
            ));
        }
    }
    for section in ["server", "offline"] {
        if present(section) && mode != section {
            return fail(format!(
                "{section}: config section provided but serving_mode={}. Remove the {section}: section or set serving_mode: {section}.",
                repr_str(mode)
            ));
        }
    }
    if mode == "server" && !present("server") {
        return fail(format!(
            "serving_mode={} requires a server: section (with a traffic spec including traffic.rate). Add the server: section or set serving_mode: offline.",
            repr_str(mode)
        ));
    }
    if mode == "server" && engine == "transformers" {
        return fail(TRANSFORMERS_SERVER_UNSUPPORTED_MSG.into());
    }
    if mode == "server" && engine == "synthetic" {
        return fail(SYNTHETIC_SERVER_UNSUPPORTED_MSG.into());
    }
    if mode == "server"
        && d.get("server")
            .and_then(|s| s.get_path("traffic.window_requests"))
            .is_some()
    {
        return fail("server.traffic.window_requests (count-bound windows) is not supported at v0.7: the server-mode measurement path (measured-span timing and the per-level stability gate) is duration-grounded. Use server.traffic.window_seconds instead (it defaults to 240s when omitted).".into());
    }
    if let (Some(Value::Map(section)), Some(model)) =
        (d.get(engine), schema::engine_section(engine))
    {
        let subs: Vec<(&str, &'static Model)> = ["engine_params", "sampling_params"]
            .iter()
            .filter_map(|s| match model.field(s).map(|f| f.kind) {
                Some(Kind::Model(m)) => Some((*s, m)),
                _ => None,
            })
            .collect();
        for key in section.keys() {
            if model.field(key).is_some() {
                continue;
            }
            for (sub, m) in &subs {
                if m.field(key).is_some() {
                    return fail(format!(
                        "{engine}.{key} moved to {engine}.{sub}.{key} (flat engine config was replaced by the nested shape in v0.10)."
                    ));
                }
            }
            let mut names: Vec<&str> = subs
                .iter()
                .flat_map(|(_, m)| m.fields.iter().map(|f| f.name))
                .collect();
            names.sort();
            names.dedup();
            let hint = close_match(key, &names, 0.6)
                .map(|s| format!("; did you mean engine_params.{s}?"))
                .unwrap_or_default();
            return fail(format!("unknown field {} on {engine}{hint}", repr_str(key)));
        }
    }
    if let Some(Value::Map(pk)) = d.get("passthrough_kwargs") {
        let mut collisions: Vec<&str> = pk
            .keys()
            .map(String::as_str)
            .filter(|k| schema::EXPERIMENT.field(k).is_some())
            .collect();
        if !collisions.is_empty() {
            collisions.sort();
            let list = collisions
                .iter()
                .map(|c| repr_str(c))
                .collect::<Vec<_>>()
                .join(", ");
            return fail(format!(
                "passthrough_kwargs keys collide with ExperimentConfig fields: [{list}]. Use the named fields instead."
            ));
        }
    }
    if engine == "transformers" {
        if let Some(Value::Map(ep)) = d
            .get("transformers")
            .and_then(|s| s.as_map())
            .and_then(|s| s.get("engine_params"))
        {
            let attn = ep
                .get("attn_implementation")
                .cloned()
                .unwrap_or(Value::Null);
            let is_fa = matches!(&attn, Value::Str(s) if s == "flash_attention_2" || s == "flash_attention_3");
            let dtype = ep.get("dtype").cloned().unwrap_or(Value::Null);
            let dtype = if truthy(&dtype) {
                dtype
            } else {
                Value::Str("bfloat16".into())
            };
            if is_fa && py_eq(&dtype, &Value::Str("float32".into())) {
                return fail(format!(
                    "attn_implementation='{}' requires dtype='float16' or dtype='bfloat16'. FlashAttention does not support float32 computation.",
                    crate::study::py::to_str(&attn)
                ));
            }
        }
    }
    if engine == "tensorrt" {
        if let Some(Value::Map(ep)) = d
            .get("tensorrt")
            .and_then(|s| s.as_map())
            .and_then(|s| s.get("engine_params"))
        {
            let has_path = ep.get("engine_path").is_some_and(|v| !v.is_null());
            let backend = ep.get("backend").cloned().unwrap_or(Value::Null);
            if has_path && !matches!(&backend, Value::Str(b) if b == "trt") {
                return fail(format!(
                    "engine_path requires backend='trt' (got backend={}). engine_path loads a prebuilt compiled-TensorRT engine directory, which only the trt constructor can read; the pytorch backend would misinterpret it as a checkpoint. Set backend: trt, or drop engine_path to build from the model checkpoint.",
                    repr(&backend)
                ));
            }
        }
    }
    Ok(())
}

/// Validates a mapping against `model`; `None` when errors were recorded.
pub fn validate_map(
    raw: &Map,
    model: &'static Model,
    loc: &[String],
    errors: &mut Vec<FieldError>,
) -> Option<Map> {
    let n_before = errors.len();
    // Model "before" validators.
    if model.class_name == "MeasurementConfig" && raw.contains_key("warmup") {
        errors.push(FieldError::value_error(
            loc,
            MEASUREMENT_WARMUP_MIGRATED_MSG,
        ));
        return None;
    }
    let mut out = Map::with_capacity(model.fields.len() + raw.len().min(8));
    // One location buffer per model, its last segment rewritten per field (no
    // allocation per field on the happy path).
    let mut floc = Vec::with_capacity(loc.len() + 1);
    floc.extend_from_slice(loc);
    floc.push(String::with_capacity(32));
    for f in model.fields {
        if let Some(last) = floc.last_mut() {
            last.clear();
            last.push_str(f.name);
        }
        match raw.get(f.name) {
            Some(v) => {
                if let Some(v) = validate_field(v, f, &floc, errors) {
                    out.insert(f.name.to_string(), v);
                }
            }
            None => match default_value(f) {
                Some(v) => {
                    out.insert(f.name.to_string(), v);
                }
                None => errors.push(FieldError::new(&floc, "missing", "Field required")),
            },
        }
    }
    for (k, v) in raw {
        if model.field(k).is_some() {
            continue;
        }
        match model.extra {
            Extra::Forbid => {
                let mut floc = loc.to_vec();
                floc.push(k.clone());
                errors.push(FieldError::new(
                    &floc,
                    "extra_forbidden",
                    "Extra inputs are not permitted",
                ));
            }
            Extra::Allow => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if errors.len() > n_before {
        return None;
    }
    // Model "after" validators.
    let after: Result<(), String> = match model.class_name {
        "MeasurementConfig" => measurement_window_check(&out),
        "TrafficConfig" => {
            let ws = out.get("window_seconds").is_some_and(|v| !v.is_null());
            let wr = out.get("window_requests").is_some_and(|v| !v.is_null());
            if ws && wr {
                Err("traffic.window accepts at most one of window_seconds or window_requests (both were set).".into())
            } else {
                if !ws && !wr {
                    out.insert("window_seconds".into(), Value::Float(240.0));
                }
                Ok(())
            }
        }
        "TransformersLlemExecution" => {
            let compile = matches!(out.get("torch_compile"), Some(Value::Bool(true)));
            let set = |k: &str| out.get(k).is_some_and(|v| !v.is_null());
            if (set("torch_compile_mode") || set("torch_compile_backend")) && !compile {
                Err("torch_compile_mode/torch_compile_backend requires torch_compile=True".into())
            } else {
                Ok(())
            }
        }
        "ExecutionConfig" => gpu_indices_check(&out),
        _ => Ok(()),
    };
    if let Err(m) = after {
        errors.push(FieldError::value_error(loc, &m));
        return None;
    }
    Some(out)
}

fn measurement_window_check(m: &Map) -> Result<(), String> {
    if m.get("measurement_methodology").and_then(Value::as_str) != Some("windowed") {
        return Ok(());
    }
    let Some(Value::Seq(w)) = m.get("measurement_window") else {
        return Err("measurement_window (start_sec, end_sec) is required when measurement_methodology='windowed'".into());
    };
    let start = w.first().and_then(Value::as_f64).unwrap_or(0.0);
    let end = w.get(1).and_then(Value::as_f64).unwrap_or(0.0);
    if start < 0.0 {
        return Err("measurement_window start_sec must be >= 0".into());
    }
    if end <= start {
        return Err("measurement_window end_sec must be > start_sec".into());
    }
    Ok(())
}

fn gpu_indices_check(m: &Map) -> Result<(), String> {
    let Some(Value::Seq(g)) = m.get("gpu_indices") else {
        return Ok(());
    };
    let shown = format!("[{}]", g.iter().map(repr).collect::<Vec<_>>().join(", "));
    if g.is_empty() {
        return Err(
            "study_execution.gpu_indices must not be empty; omit it (null) to use all GPUs.".into(),
        );
    }
    if g.iter().any(|v| v.as_i64().is_some_and(|i| i < 0)) {
        return Err(format!(
            "study_execution.gpu_indices must be non-negative host device indices, got {shown}."
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if !g.iter().all(|v| seen.insert(v.as_i64())) {
        return Err(format!(
            "study_execution.gpu_indices must not contain duplicates, got {shown}."
        ));
    }
    Ok(())
}

/// The dumped default of a field; `None` when it is required.
pub fn default_value(f: &Field) -> Option<Value> {
    Some(match f.default {
        DefaultValue::Required => return None,
        DefaultValue::Null => Value::Null,
        DefaultValue::Int(i) => Value::Int(i),
        DefaultValue::Float(x) => Value::Float(x),
        DefaultValue::Bool(b) => Value::Bool(b),
        DefaultValue::Str(s) => Value::Str(s.into()),
        DefaultValue::EmptyList => Value::Seq(Vec::new()),
        DefaultValue::Model => match f.kind {
            Kind::Model(m) => {
                let mut errs = Vec::new();
                Value::Map(
                    validate_map(&Map::new(), m, &[], &mut errs)
                        .expect("defaults of a model validate"),
                )
            }
            _ => Value::Null,
        },
    })
}

fn validate_field(
    v: &Value,
    f: &Field,
    loc: &[String],
    errors: &mut Vec<FieldError>,
) -> Option<Value> {
    if v.is_null() && f.nullable {
        return Some(Value::Null);
    }
    if let Kind::Any = f.kind {
        return Some(v.clone());
    }
    match coerce(v, f.kind, loc, errors) {
        Some(out) => {
            if let Some(e) = bound_error(&out, f) {
                errors.push(FieldError::new(loc, e.0, e.1));
                return None;
            }
            Some(out)
        }
        None => None,
    }
}

fn fmt_bound(b: f64) -> String {
    if b.fract() == 0.0 && b.abs() < 1e15 {
        format!("{}", b as i64)
    } else {
        float_repr(b)
    }
}

fn bound_error(v: &Value, f: &Field) -> Option<(&'static str, String)> {
    let x = match v {
        Value::Int(i) => *i as f64,
        Value::Float(x) => *x,
        _ => return None,
    };
    if let Some(le) = f.le {
        if x > le {
            return Some((
                "less_than_equal",
                format!("Input should be less than or equal to {}", fmt_bound(le)),
            ));
        }
    }
    if let Some(lt) = f.lt {
        if x >= lt {
            return Some((
                "less_than",
                format!("Input should be less than {}", fmt_bound(lt)),
            ));
        }
    }
    if let Some(ge) = f.ge {
        if x < ge {
            return Some((
                "greater_than_equal",
                format!("Input should be greater than or equal to {}", fmt_bound(ge)),
            ));
        }
    }
    if let Some(gt) = f.gt {
        if x <= gt {
            return Some((
                "greater_than",
                format!("Input should be greater than {}", fmt_bound(gt)),
            ));
        }
    }
    None
}

fn choices_text(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} or {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

type Coerced = Result<Value, (&'static str, &'static str)>;

pub fn coerce_int(v: &Value) -> Coerced {
    match v {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Bool(b) => Ok(Value::Int(*b as i64)),
        Value::Float(f) => {
            if !f.is_finite() {
                Err(("finite_number", "Input should be a finite number"))
            } else if f.fract() != 0.0 {
                Err((
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ))
            } else {
                Ok(Value::Int(*f as i64))
            }
        }
        Value::Str(s) => {
            let t: String = s.trim().chars().filter(|c| *c != '_').collect();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Value::Int(i));
            }
            if let Some((ip, frac)) = t.split_once('.') {
                if !frac.is_empty() && frac.chars().all(|c| c == '0') {
                    if let Ok(i) = ip.parse::<i64>() {
                        return Ok(Value::Int(i));
                    }
                }
            }
            Err((
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            ))
        }
        _ => Err(("int_type", "Input should be a valid integer")),
    }
}

pub fn coerce_float(v: &Value) -> Coerced {
    match v {
        Value::Float(f) => Ok(Value::Float(*f)),
        Value::Int(i) => Ok(Value::Float(*i as f64)),
        Value::Bool(b) => Ok(Value::Float(if *b { 1.0 } else { 0.0 })),
        Value::Str(s) => s.trim().parse::<f64>().map(Value::Float).map_err(|_| {
            (
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            )
        }),
        _ => Err(("float_type", "Input should be a valid number")),
    }
}

pub fn coerce_bool(v: &Value) -> Coerced {
    const BAD: (&str, &str) = (
        "bool_parsing",
        "Input should be a valid boolean, unable to interpret input",
    );
    match v {
        Value::Bool(b) => Ok(Value::Bool(*b)),
        Value::Int(0) => Ok(Value::Bool(false)),
        Value::Int(1) => Ok(Value::Bool(true)),
        Value::Int(_) => Err(BAD),
        Value::Float(f) if *f == 0.0 => Ok(Value::Bool(false)),
        Value::Float(f) if *f == 1.0 => Ok(Value::Bool(true)),
        Value::Float(_) => Err(BAD),
        Value::Str(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(Value::Bool(false)),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Value::Bool(true)),
            _ => Err(BAD),
        },
        _ => Err(("bool_type", "Input should be a valid boolean")),
    }
}

fn coerce(v: &Value, kind: Kind, loc: &[String], errors: &mut Vec<FieldError>) -> Option<Value> {
    let simple = |r: Coerced, errors: &mut Vec<FieldError>| match r {
        Ok(v) => Some(v),
        Err((t, m)) => {
            errors.push(FieldError::new(loc, t, m));
            None
        }
    };
    match kind {
        Kind::Any => Some(v.clone()),
        Kind::Int => simple(coerce_int(v), errors),
        Kind::Float => simple(coerce_float(v), errors),
        Kind::Bool => simple(coerce_bool(v), errors),
        Kind::Str { min_len } => match v {
            Value::Str(s) if s.chars().count() < min_len => {
                errors.push(FieldError::new(
                    loc,
                    "string_too_short",
                    format!(
                        "String should have at least {min_len} character{}",
                        if min_len == 1 { "" } else { "s" }
                    ),
                ));
                None
            }
            Value::Str(s) => Some(Value::Str(s.clone())),
            _ => {
                errors.push(FieldError::new(
                    loc,
                    "string_type",
                    "Input should be a valid string",
                ));
                None
            }
        },
        Kind::Choice(opts) | Kind::Enum(opts) => match v {
            Value::Str(s) if opts.contains(&s.as_str()) => Some(v.clone()),
            _ => {
                let t = if matches!(kind, Kind::Enum(_)) {
                    "enum"
                } else {
                    "literal_error"
                };
                let items: Vec<String> = opts.iter().map(|o| format!("'{o}'")).collect();
                errors.push(FieldError::new(
                    loc,
                    t,
                    format!("Input should be {}", choices_text(&items)),
                ));
                None
            }
        },
        Kind::IntChoice(opts) => {
            let as_int = match v {
                Value::Int(i) => Some(*i),
                Value::Bool(b) => Some(*b as i64),
                Value::Float(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i64),
                _ => None,
            };
            match as_int {
                Some(i) if opts.contains(&i) => Some(Value::Int(i)),
                _ => {
                    let items: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
                    errors.push(FieldError::new(
                        loc,
                        "literal_error",
                        format!("Input should be {}", choices_text(&items)),
                    ));
                    None
                }
            }
        }
        Kind::BoolOrNever => match coerce_bool(v) {
            Ok(b) => Some(b),
            Err(_) if matches!(v, Value::Str(s) if s == "never") => Some(v.clone()),
            Err((t, m)) => {
                let mut l1 = loc.to_vec();
                l1.push("bool".into());
                errors.push(FieldError::new(&l1, t, m));
                let mut l2 = loc.to_vec();
                l2.push("literal['never']".into());
                errors.push(FieldError::new(
                    &l2,
                    "literal_error",
                    "Input should be 'never'",
                ));
                None
            }
        },
        Kind::FloatPair => match v {
            Value::Seq(items) => {
                if items.len() > 2 {
                    errors.push(FieldError::new(
                        loc,
                        "too_long",
                        format!(
                            "Tuple should have at most 2 items after validation, not {}",
                            items.len()
                        ),
                    ));
                    return None;
                }
                let mut out = Vec::new();
                let mut ok = true;
                for idx in 0..2 {
                    let mut l = loc.to_vec();
                    l.push(idx.to_string());
                    match items.get(idx) {
                        None => {
                            errors.push(FieldError::new(&l, "missing", "Field required"));
                            ok = false;
                        }
                        Some(item) => match coerce_float(item) {
                            Ok(x) => out.push(x),
                            Err((t, m)) => {
                                errors.push(FieldError::new(&l, t, m));
                                ok = false;
                            }
                        },
                    }
                }
                ok.then_some(Value::Seq(out))
            }
            _ => {
                errors.push(FieldError::new(
                    loc,
                    "tuple_type",
                    "Input should be a valid tuple",
                ));
                None
            }
        },
        Kind::StrMap => match v {
            Value::Map(_) => Some(v.clone()),
            _ => {
                errors.push(FieldError::new(
                    loc,
                    "dict_type",
                    "Input should be a valid dictionary",
                ));
                None
            }
        },
        Kind::IntList => match v {
            Value::Seq(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (idx, item) in items.iter().enumerate() {
                    match coerce_int(item) {
                        Ok(x) => out.push(x),
                        Err((t, m)) => {
                            let mut l = loc.to_vec();
                            l.push(idx.to_string());
                            errors.push(FieldError::new(&l, t, m));
                            ok = false;
                        }
                    }
                }
                ok.then_some(Value::Seq(out))
            }
            _ => {
                errors.push(FieldError::new(
                    loc,
                    "list_type",
                    "Input should be a valid list",
                ));
                None
            }
        },
        Kind::Model(m) => match v {
            Value::Map(raw) => validate_map(raw, m, loc, errors).map(Value::Map),
            _ => {
                errors.push(FieldError::new(
                    loc,
                    "model_type",
                    format!(
                        "Input should be a valid dictionary or instance of {}",
                        m.class_name
                    ),
                ));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyjson::parse;

    fn raw(text: &str) -> Map {
        parse(text).unwrap().as_map().unwrap().clone()
    }

    #[test]
    fn coercion_and_error_texts() {
        let r = raw(
            r#"{"task": {"model": "gpt2", "max_input_tokens": " 64 ", "max_output_tokens": 0}, "serving_mode": "offline", "bogus": 1}"#,
        );
        let errs = validate_experiment(&r).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].loc, "task.max_output_tokens");
        assert_eq!(errs[0].msg, "Input should be greater than or equal to 1");
        assert_eq!(errs[1].type_, "extra_forbidden");
        let r = raw(
            r#"{"task": {"model": "gpt2", "max_input_tokens": "64"}, "serving_mode": "offline", "measurement": {"baseline": {"drift_threshold": 0.9}}}"#,
        );
        let errs = validate_experiment(&r).unwrap_err();
        assert_eq!(errs[0].msg, "Input should be less than or equal to 0.5");
        let r = raw(r#"{"task": {"model": "gpt2"}, "serving_mode": "bulk"}"#);
        let errs = validate_experiment(&r).unwrap_err();
        assert_eq!(errs[0].msg, "Input should be 'offline' or 'server'");
    }

    #[test]
    fn synthetic_dump_only_for_synthetic_engine() {
        let r = raw(r#"{"task": {"model": "gpt2"}, "serving_mode": "offline"}"#);
        let d = validate_experiment(&r).unwrap().dump;
        assert!(!d.as_map().unwrap().contains_key("synthetic"));
        let r = raw(
            r#"{"task": {"model": "gpt2"}, "serving_mode": "offline", "engine": "synthetic", "synthetic": {"engine_params": {"batch_size": 4}}}"#,
        );
        let d = validate_experiment(&r).unwrap().dump;
        assert_eq!(
            d.get_path("synthetic.engine_params.noise"),
            Some(&Value::Float(0.02))
        );
        let r = raw(
            r#"{"task": {"model": "gpt2"}, "serving_mode": "offline", "engine": "vllm", "synthetic": {}}"#,
        );
        let errs = validate_experiment(&r).unwrap_err();
        assert!(
            errs[0].msg.contains("<Engine.VLLM: 'vllm'>"),
            "{}",
            errs[0].msg
        );
        let r = raw(
            r#"{"task": {"model": "gpt2"}, "serving_mode": "offline", "engine": "synthetic", "synthetic": {"engine_params": {"bogus": 1}}}"#,
        );
        let errs = validate_experiment(&r).unwrap_err();
        assert_eq!(errs[0].loc, "synthetic.engine_params.bogus");
    }
}
