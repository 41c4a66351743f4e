//! llem's hashes, bit-exact (FORMAT.md 8.1-8.4).

use sha2::{Digest, Sha256};

use crate::pyjson::{dumps_resolved, dumps_sorted};
use crate::value::{Map, Value};

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The declared config hash (8.1): the dump without `server.traffic.slo`, sorted JSON, SHA-256[..16].
pub fn config_hash(config: &Value) -> String {
    let mut c = config.clone();
    if let Some(Value::Map(traffic)) = c
        .as_map_mut()
        .and_then(|m| m.get_mut("server"))
        .and_then(Value::as_map_mut)
        .and_then(|s| s.get_mut("traffic"))
    {
        traffic.shift_remove("slo");
    }
    sha256_hex(&dumps_sorted(&c))[..16].to_string()
}

/// The study design hash (8.2) over the run list before cycles.
pub fn study_design_hash(configs: &[Value]) -> String {
    let mut h = DesignHasher::default();
    for c in configs {
        h.push(c);
    }
    h.finish()
}

/// [`study_design_hash`] taken one config at a time, so the run list need not be
/// held whole: the digest of `json.dumps(run_list, sort_keys=True)` fed as the list's
/// text is written, `[`, each config's text joined by `, `, `]`.
#[derive(Clone, Default)]
pub struct DesignHasher {
    sha: Sha256,
    n: usize,
}

impl DesignHasher {
    /// Appends the next config of the run list.
    pub fn push(&mut self, config: &Value) {
        self.sha.update(if self.n == 0 { "[" } else { ", " });
        self.sha.update(dumps_sorted(config));
        self.n += 1;
    }

    /// The hash of the configs pushed so far (16 hex digits).
    pub fn finish(mut self) -> String {
        self.sha.update(if self.n == 0 { "[]" } else { "]" });
        hex(&self.sha.finalize())[..16].to_string()
    }
}

/// The shuffle seed derived from a design hash (8.4).
pub fn derived_shuffle_seed(design_hash: &str) -> i64 {
    (u64::from_str_radix(design_hash, 16).unwrap_or(0) & 0xffff_ffff) as i64
}

/// The resolved view of a canonical config (8.3).
pub fn resolved_view(config: &Value) -> Value {
    let get = |k: &str| {
        config
            .as_map()
            .and_then(|m| m.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let engine = get("engine");
    let engine_name = engine.as_str().unwrap_or("transformers").to_string();
    let mode = get("serving_mode");
    let mut section = match get(&engine_name) {
        Value::Map(m) => m,
        _ => Map::new(),
    };
    let or_empty = |v: Option<Value>| match v {
        Some(Value::Map(m)) => m,
        _ => Map::new(),
    };
    let mut engine_params = or_empty(section.shift_remove("engine_params"));
    let sampling = or_empty(section.shift_remove("sampling_params"));
    let execution = or_empty(section.shift_remove("llem_execution"));
    engine_params.extend(section);
    let mut mode_section = Map::new();
    if mode.as_str() == Some("server") {
        if let Value::Map(server) = get("server") {
            let mut traffic = or_empty(server.get("traffic").cloned());
            traffic.shift_remove("slo");
            mode_section.insert("traffic".into(), Value::Map(traffic));
            mode_section.insert(
                "warmup".into(),
                server.get("warmup").cloned().unwrap_or(Value::Null),
            );
            mode_section.insert(
                "cooldown_seconds".into(),
                server
                    .get("cooldown_seconds")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
    } else if let Value::Map(offline) = get("offline") {
        mode_section.insert(
            "warmup".into(),
            offline.get("warmup").cloned().unwrap_or(Value::Null),
        );
    }
    let mut view = Map::new();
    view.insert("engine".into(), Value::Str(engine_name));
    view.insert("task".into(), get("task"));
    view.insert("serving_mode".into(), mode);
    view.insert("mode_section".into(), Value::Map(mode_section));
    view.insert("observed_engine_params".into(), Value::Map(engine_params));
    view.insert("observed_sampling_params".into(), Value::Map(sampling));
    view.insert(
        "passthrough_kwargs".into(),
        Value::Map(or_empty(Some(get("passthrough_kwargs")))),
    );
    view.insert("llem_execution".into(), Value::Map(execution));
    view.insert("measurement".into(), get("measurement"));
    Value::Map(view)
}

/// llem's `_normalise` (8.3): floats to 12 significant digits, integral floats to ints.
pub fn normalise(v: &Value) -> Value {
    match v {
        Value::Float(f) => {
            if f.is_nan() {
                return Value::Str("NaN".into());
            }
            if f.is_infinite() {
                return Value::Str(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into());
            }
            if f.fract() == 0.0 {
                return fold_int(*f);
            }
            let mag = f.abs().log10().floor() as i32;
            let e = 11 - mag;
            let factor = 10f64.powi(e);
            let rounded = (f * factor).round_ties_even();
            let out = rounded / factor;
            if out.fract() == 0.0 {
                fold_int(out)
            } else {
                Value::Float(out)
            }
        }
        Value::Seq(items) => Value::Seq(items.iter().map(normalise).collect()),
        Value::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), normalise(v))).collect()),
        other => other.clone(),
    }
}

fn fold_int(f: f64) -> Value {
    if f.abs() < 9.2e18 {
        Value::Int(f as i64)
    } else {
        Value::Float(f)
    }
}

/// The resolved config hash (64 hex digits) of a canonical config.
pub fn resolved_config_hash(config: &Value) -> String {
    sha256_hex(&dumps_resolved(&normalise(&resolved_view(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_rounds_to_twelve_digits() {
        assert_eq!(normalise(&Value::Float(0.1 + 0.2)), Value::Float(0.3));
        assert_eq!(normalise(&Value::Float(2.0)), Value::Int(2));
        assert_eq!(
            normalise(&Value::Float(0.123456789012345)),
            Value::Float(0.123456789012)
        );
        assert_eq!(derived_shuffle_seed("b7fbc062f271cd53"), 4067544403);
    }

    #[test]
    fn design_hash_streamed_is_the_hash_of_the_whole_list() {
        let whole = |configs: &[Value]| {
            sha256_hex(&dumps_sorted(&Value::Seq(configs.to_vec())))[..16].to_string()
        };
        let a = crate::pyjson::parse(r#"{"b": [1, 2.5, {"z": null, "a": "\u00e9"}], "a": true}"#)
            .unwrap();
        let b = Value::Str("x".into());
        for list in [vec![], vec![a.clone()], vec![a.clone(), b.clone(), a]] {
            assert_eq!(study_design_hash(&list), whole(&list));
        }
    }
}
