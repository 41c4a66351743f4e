//! What a study may ask for that llem accepts but lem fleet does not measure yet.
//!
//! llem 0.7.0 accepts every key of its schema; the fleet expands those studies
//! identically, but refuses at submit a config whose measurement it would not carry out
//! as the study asks, rather than measure something else and publish it under the
//! study's name. Pure: a config in, a reason out.

use crate::Value;

/// The methodologies (`measurement.measurement_methodology`) the worker measures.
pub const SUPPORTED_METHODOLOGIES: &[&str] = &["total"];

/// Why the fleet will not run `config` as asked, or `None`. The text names the key, the
/// value, what would be valid, and what to change.
pub fn refusal(config: &Value) -> Option<String> {
    let m = config
        .get_path("measurement.measurement_methodology")
        .and_then(Value::as_str)
        .unwrap_or("total");
    if SUPPORTED_METHODOLOGIES.contains(&m) {
        return None;
    }
    let detail = match m {
        "windowed" => "llem re-integrates power over measurement.measurement_window",
        "steady_state" => {
            "llem drops warmup_discard_seconds (or warmup_discard_fraction of the span) and measures the rest"
        }
        _ => "an unknown methodology",
    };
    Some(format!(
        "measurement.measurement_methodology: {m} ({detail}) is not measured by lem fleet yet: its workers report the energy and tokens of the whole inference span (`total`) only, and would publish that under this study's name. Remove the key or set it to total (valid: {})",
        SUPPORTED_METHODOLOGIES.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    fn config(text: &str) -> Value {
        crate::yaml::load(text, "t.yaml").unwrap().value
    }

    #[test]
    fn total_and_absent_are_measured() {
        assert_eq!(refusal(&config("task: {model: m}\n")), None);
        assert_eq!(
            refusal(&config("measurement: {measurement_methodology: total}\n")),
            None
        );
        assert_eq!(
            refusal(&config("measurement: {measurement_methodology: null}\n")),
            None
        );
    }

    #[test]
    fn windowed_and_steady_state_are_refused_naming_the_key() {
        for m in ["windowed", "steady_state"] {
            let why = refusal(&config(&format!(
                "measurement: {{measurement_methodology: {m}}}\n"
            )))
            .unwrap();
            assert!(why.contains("measurement.measurement_methodology"), "{why}");
            assert!(why.contains(m), "{why}");
            assert!(why.contains("set it to total"), "{why}");
        }
    }
}
