//! Reading a stored result in either shape: the nested [`RunResult`] of protocol 5 on,
//! or the flat result of protocol 4 and before, which manifests, worker journals and
//! older workers still hold.
//!
//! [`StoredResult`] is what deserializing reads: the top-level fields both shapes
//! share, each nested group as an option, and every flat field of the old shape. A
//! group present under its nested key is taken as it is; a group absent is built from
//! the flat fields (defaults where those are absent too, as the flat result's own
//! `#[serde(default)]` did). No key of one shape collides with a key of the other.
//!
//! The flat-to-nested mapping is [`FLAT_TO_NESTED`]: each flat field and the path it
//! lands at. Its test reads a fully populated flat result that the flat code wrote
//! (`common/tests/fixtures/run-result-flat-v4-full.json`) and checks every value
//! arrives at its path and every field is mapped.

use serde::Deserialize;

use super::{
    BaselineRecord, Baselines, EnergyFigures, ForeignProcess, GpuFigures, HarnessFacts, Isolation,
    MeasuredWindow, PrefillSplit, RunResult, Thermal, Throughput,
};

/// Each field of the flat (protocol 4) result and the JSON path of its value in the
/// nested result (`/energy/total_j`); the prefill fields land in `energy.prefill`,
/// which exists when `prefill_window_energy_j` does.
pub const FLAT_TO_NESTED: &[(&str, &str)] = &[
    ("worker", "/worker"),
    ("host", "/host"),
    ("slot", "/slot"),
    ("gpu_name", "/gpu_name"),
    ("gpu_uuid", "/gpu_uuid"),
    ("simulated", "/simulated"),
    ("engine", "/engine"),
    ("engine_version", "/engine_version"),
    ("model_name", "/model_name"),
    ("started_at", "/started_at"),
    ("ended_at", "/ended_at"),
    ("n_prompts", "/throughput/n_prompts"),
    ("input_tokens", "/throughput/input_tokens"),
    ("output_tokens", "/throughput/output_tokens"),
    ("duration_s", "/window/duration_s"),
    ("total_energy_j", "/energy/total_j"),
    ("energy_method", "/energy/method"),
    ("energy_integral_j", "/energy/integral_j"),
    ("energy_counter_raw_j", "/energy/counter_raw_j"),
    ("energy_disagreement_pct", "/energy/disagreement_pct"),
    (
        "energy_disagreement_flagged",
        "/energy/disagreement_flagged",
    ),
    ("energy_uncertainty_j", "/energy/uncertainty_j"),
    ("energy_uncertainty_flagged", "/energy/uncertainty_flagged"),
    ("energy_edge_rule", "/energy/edge_rule"),
    ("energy_edges", "/energy/edges"),
    ("quiet_power_w", "/energy/quiet_power_w"),
    ("window_start_mono_ns", "/window/start_mono_ns"),
    ("window_end_mono_ns", "/window/end_mono_ns"),
    ("gpu_shared", "/isolation/gpu_shared"),
    ("gpu_foreign_processes", "/isolation/foreign_processes"),
    ("short_window", "/window/short"),
    ("mean_power_w", "/energy/mean_power_w"),
    ("n_power_samples", "/window/n_power_samples"),
    ("energy_adjusted_j", "/energy/adjusted_j"),
    ("energy_adjusted_clamped", "/energy/adjusted_clamped"),
    ("baseline_power_w", "/baselines/device_power_w"),
    ("baseline", "/baselines/device"),
    ("avg_tokens_per_second", "/throughput/avg_tokens_per_second"),
    (
        "output_tokens_per_second",
        "/throughput/output_tokens_per_second",
    ),
    (
        "avg_energy_per_token_j",
        "/throughput/avg_energy_per_token_j",
    ),
    (
        "energy_per_token_adjusted_j",
        "/throughput/energy_per_token_adjusted_j",
    ),
    ("start_temp_c", "/thermal/start_temp_c"),
    ("max_temp_c", "/thermal/max_temp_c"),
    ("end_temp_c", "/thermal/end_temp_c"),
    ("thermal_wait_s", "/thermal/wait_s"),
    ("thermal_wait_reason", "/thermal/wait_reason"),
    ("throttle_thermal", "/thermal/throttle_thermal"),
    ("model_load_seconds", "/harness/model_load_seconds"),
    ("model_already_loaded", "/harness/model_already_loaded"),
    ("cold_start", "/harness/cold_start"),
    ("gpu_memory_before_mb", "/harness/gpu_memory_before_mb"),
    ("gpu_memory_after_mb", "/harness/gpu_memory_after_mb"),
    ("harness_recycled", "/harness/recycled"),
    ("lease_to_measure_s", "/window/lease_to_measure_s"),
    ("harness_metrics", "/harness/metrics"),
    ("warmup", "/harness/warmup"),
    ("environment", "/environment"),
    ("environment_hash", "/environment_hash"),
    ("resident_baseline", "/baselines/resident"),
    ("energy_adjusted_resident_j", "/energy/adjusted_resident_j"),
    (
        "energy_adjusted_resident_source",
        "/energy/adjusted_resident_source",
    ),
    (
        "energy_adjusted_resident_uncertainty_j",
        "/energy/adjusted_resident_uncertainty_j",
    ),
    ("prefill_window_energy_j", "/energy/prefill/window_energy_j"),
    ("prefill_window_s", "/energy/prefill/window_s"),
    ("prefill_calls", "/energy/prefill/calls"),
    ("prefill_passes", "/energy/prefill/passes"),
    (
        "prefill_energy_per_call_j",
        "/energy/prefill/energy_per_call_j",
    ),
    ("prefill_energy_j", "/energy/prefill/prefill_energy_j"),
    ("decode_energy_j", "/energy/prefill/decode_energy_j"),
    (
        "prefill_energy_adjusted_j",
        "/energy/prefill/prefill_energy_adjusted_j",
    ),
    (
        "decode_energy_adjusted_j",
        "/energy/prefill/decode_energy_adjusted_j",
    ),
    ("timeseries", "/window/timeseries"),
    ("sm_clock_min_mhz", "/thermal/sm_clock_min_mhz"),
    ("sm_clock_max_mhz", "/thermal/sm_clock_max_mhz"),
    ("throttle_power", "/thermal/throttle_power"),
    ("hw_slowdown", "/thermal/hw_slowdown"),
    ("sample_interval_ms", "/window/sample_interval_ms"),
    ("sampler_mean_late_us", "/window/sampler_mean_late_us"),
    ("sampler_max_late_us", "/window/sampler_max_late_us"),
    ("warnings", "/warnings"),
    ("gpu_indices", "/gpu_indices"),
    ("gpus", "/gpus"),
];

/// A stored result in either shape (see the module docs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StoredResult {
    // The top level, the same in both shapes.
    worker: String,
    host: String,
    slot: u32,
    gpu_name: String,
    gpu_uuid: String,
    simulated: bool,
    gpu_indices: Vec<u32>,
    engine: String,
    engine_version: Option<String>,
    model_name: String,
    started_at: String,
    ended_at: String,
    environment: serde_json::Value,
    environment_hash: String,
    warnings: Vec<String>,
    gpus: Vec<GpuFigures>,
    trace_id: Option<String>,
    // The nested groups (protocol 5 on).
    energy: Option<EnergyFigures>,
    baselines: Option<Baselines>,
    throughput: Option<Throughput>,
    thermal: Option<Thermal>,
    window: Option<MeasuredWindow>,
    harness: Option<HarnessFacts>,
    isolation: Option<Isolation>,
    // The flat fields (protocol 4 and before).
    n_prompts: u64,
    input_tokens: u64,
    output_tokens: u64,
    duration_s: f64,
    total_energy_j: f64,
    energy_method: String,
    energy_integral_j: Option<f64>,
    energy_counter_raw_j: Option<f64>,
    energy_disagreement_pct: Option<f64>,
    energy_disagreement_flagged: bool,
    energy_uncertainty_j: Option<f64>,
    energy_uncertainty_flagged: bool,
    energy_edge_rule: Option<String>,
    energy_edges: serde_json::Value,
    quiet_power_w: Option<f64>,
    window_start_mono_ns: u64,
    window_end_mono_ns: u64,
    gpu_shared: bool,
    gpu_foreign_processes: Vec<ForeignProcess>,
    short_window: bool,
    mean_power_w: f64,
    n_power_samples: usize,
    energy_adjusted_j: Option<f64>,
    energy_adjusted_clamped: bool,
    baseline_power_w: Option<f64>,
    baseline: Option<BaselineRecord>,
    avg_tokens_per_second: f64,
    output_tokens_per_second: f64,
    avg_energy_per_token_j: f64,
    energy_per_token_adjusted_j: Option<f64>,
    start_temp_c: f64,
    max_temp_c: f64,
    end_temp_c: f64,
    thermal_wait_s: f64,
    thermal_wait_reason: String,
    throttle_thermal: bool,
    model_load_seconds: Option<f64>,
    model_already_loaded: bool,
    cold_start: bool,
    gpu_memory_before_mb: Option<u64>,
    gpu_memory_after_mb: Option<u64>,
    harness_recycled: Option<String>,
    lease_to_measure_s: f64,
    harness_metrics: serde_json::Value,
    warmup: serde_json::Value,
    resident_baseline: Option<BaselineRecord>,
    energy_adjusted_resident_j: Option<f64>,
    energy_adjusted_resident_source: Option<String>,
    energy_adjusted_resident_uncertainty_j: Option<f64>,
    prefill_window_energy_j: Option<f64>,
    prefill_window_s: Option<f64>,
    prefill_calls: u64,
    prefill_passes: u64,
    prefill_energy_per_call_j: Option<f64>,
    prefill_energy_j: Option<f64>,
    decode_energy_j: Option<f64>,
    prefill_energy_adjusted_j: Option<f64>,
    decode_energy_adjusted_j: Option<f64>,
    timeseries: serde_json::Value,
    sm_clock_min_mhz: u32,
    sm_clock_max_mhz: u32,
    throttle_power: bool,
    hw_slowdown: bool,
    sample_interval_ms: f64,
    sampler_mean_late_us: f64,
    sampler_max_late_us: f64,
}

impl From<StoredResult> for RunResult {
    fn from(s: StoredResult) -> RunResult {
        let energy = match s.energy {
            Some(e) => e,
            None => EnergyFigures {
                total_j: s.total_energy_j,
                method: s.energy_method,
                integral_j: s.energy_integral_j,
                counter_raw_j: s.energy_counter_raw_j,
                disagreement_pct: s.energy_disagreement_pct,
                disagreement_flagged: s.energy_disagreement_flagged,
                uncertainty_j: s.energy_uncertainty_j,
                uncertainty_flagged: s.energy_uncertainty_flagged,
                edge_rule: s.energy_edge_rule,
                edges: s.energy_edges,
                quiet_power_w: s.quiet_power_w,
                mean_power_w: s.mean_power_w,
                adjusted_j: s.energy_adjusted_j,
                adjusted_clamped: s.energy_adjusted_clamped,
                adjusted_resident_j: s.energy_adjusted_resident_j,
                adjusted_resident_source: s.energy_adjusted_resident_source,
                adjusted_resident_uncertainty_j: s.energy_adjusted_resident_uncertainty_j,
                // The worker wrote every prefill figure or none (only the adjusted
                // pair hangs on a baseline).
                prefill: s
                    .prefill_window_energy_j
                    .map(|window_energy_j| PrefillSplit {
                        window_energy_j,
                        window_s: s.prefill_window_s.unwrap_or(0.0),
                        calls: s.prefill_calls,
                        passes: s.prefill_passes,
                        energy_per_call_j: s.prefill_energy_per_call_j.unwrap_or(0.0),
                        prefill_energy_j: s.prefill_energy_j.unwrap_or(0.0),
                        decode_energy_j: s.decode_energy_j.unwrap_or(0.0),
                        prefill_energy_adjusted_j: s.prefill_energy_adjusted_j,
                        decode_energy_adjusted_j: s.decode_energy_adjusted_j,
                    }),
            },
        };
        RunResult {
            worker: s.worker,
            host: s.host,
            slot: s.slot,
            gpu_name: s.gpu_name,
            gpu_uuid: s.gpu_uuid,
            simulated: s.simulated,
            gpu_indices: s.gpu_indices,
            engine: s.engine,
            engine_version: s.engine_version,
            model_name: s.model_name,
            started_at: s.started_at,
            ended_at: s.ended_at,
            environment: s.environment,
            environment_hash: s.environment_hash,
            warnings: s.warnings,
            trace_id: s.trace_id,
            energy,
            baselines: s.baselines.unwrap_or(Baselines {
                device: s.baseline,
                device_power_w: s.baseline_power_w,
                resident: s.resident_baseline,
            }),
            throughput: s.throughput.unwrap_or(Throughput {
                n_prompts: s.n_prompts,
                input_tokens: s.input_tokens,
                output_tokens: s.output_tokens,
                avg_tokens_per_second: s.avg_tokens_per_second,
                output_tokens_per_second: s.output_tokens_per_second,
                avg_energy_per_token_j: s.avg_energy_per_token_j,
                energy_per_token_adjusted_j: s.energy_per_token_adjusted_j,
            }),
            thermal: s.thermal.unwrap_or(Thermal {
                start_temp_c: s.start_temp_c,
                max_temp_c: s.max_temp_c,
                end_temp_c: s.end_temp_c,
                wait_s: s.thermal_wait_s,
                wait_reason: s.thermal_wait_reason,
                throttle_thermal: s.throttle_thermal,
                throttle_power: s.throttle_power,
                hw_slowdown: s.hw_slowdown,
                sm_clock_min_mhz: s.sm_clock_min_mhz,
                sm_clock_max_mhz: s.sm_clock_max_mhz,
            }),
            window: s.window.unwrap_or(MeasuredWindow {
                start_mono_ns: s.window_start_mono_ns,
                end_mono_ns: s.window_end_mono_ns,
                duration_s: s.duration_s,
                short: s.short_window,
                n_power_samples: s.n_power_samples,
                sample_interval_ms: s.sample_interval_ms,
                sampler_mean_late_us: s.sampler_mean_late_us,
                sampler_max_late_us: s.sampler_max_late_us,
                lease_to_measure_s: s.lease_to_measure_s,
                timeseries: s.timeseries,
            }),
            harness: s.harness.unwrap_or(HarnessFacts {
                model_load_seconds: s.model_load_seconds,
                model_already_loaded: s.model_already_loaded,
                cold_start: s.cold_start,
                gpu_memory_before_mb: s.gpu_memory_before_mb,
                gpu_memory_after_mb: s.gpu_memory_after_mb,
                recycled: s.harness_recycled,
                metrics: s.harness_metrics,
                warmup: s.warmup,
            }),
            isolation: s.isolation.unwrap_or(Isolation {
                gpu_shared: s.gpu_shared,
                foreign_processes: s.gpu_foreign_processes,
            }),
            gpus: s.gpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/run-result-flat-v4-{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// Every flat field of the fully populated fixture arrives at its path, unchanged,
    /// and every flat field and every nested leaf is in [`FLAT_TO_NESTED`].
    #[test]
    fn a_flat_result_of_protocol_4_reads_into_the_nested_one() {
        let flat = fixture("full");
        let r: RunResult = serde_json::from_value(flat.clone()).unwrap();
        let nested = serde_json::to_value(&r).unwrap();
        let flat_keys: Vec<&String> = flat.as_object().unwrap().keys().collect();
        let mapped: Vec<&str> = FLAT_TO_NESTED.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            flat_keys.len(),
            mapped.len(),
            "every flat field is mapped once"
        );
        for key in &flat_keys {
            assert!(mapped.contains(&key.as_str()), "{key} is not mapped");
        }
        for (key, path) in FLAT_TO_NESTED {
            assert!(!flat[key].is_null(), "the fixture leaves {key} empty");
            assert_eq!(
                nested.pointer(path),
                Some(&flat[key]),
                "{key} should be at {path}"
            );
        }
        // Nothing in the nested result comes from nowhere: each leaf group field is
        // one flat field's destination.
        let mut leaves = Vec::new();
        for (group, fields) in nested.as_object().unwrap() {
            match fields.as_object() {
                Some(m) if !["environment"].contains(&group.as_str()) => {
                    for (k, v) in m {
                        if group == "energy" && k == "prefill" {
                            for p in v.as_object().unwrap().keys() {
                                leaves.push(format!("/energy/prefill/{p}"));
                            }
                        } else {
                            leaves.push(format!("/{group}/{k}"));
                        }
                    }
                }
                // Added after protocol 4: no flat result has it.
                _ if group == "trace_id" => {}
                _ => leaves.push(format!("/{group}")),
            }
        }
        let paths: Vec<&str> = FLAT_TO_NESTED.iter().map(|(_, p)| *p).collect();
        for leaf in &leaves {
            assert!(paths.contains(&leaf.as_str()), "{leaf} has no flat source");
        }
        assert_eq!(leaves.len(), paths.len());
    }

    #[test]
    fn a_sparse_flat_result_keeps_its_absent_figures_absent() {
        let flat = fixture("sparse");
        let r: RunResult = serde_json::from_value(flat.clone()).unwrap();
        assert_eq!(r.energy.total_j, 400.25);
        assert_eq!(r.energy.prefill, None);
        assert_eq!(r.baselines, Baselines::default());
        assert_eq!(r.energy.adjusted_j, None);
        assert_eq!(r.thermal.wait_reason, "no_gap");
        assert_eq!(r.window.duration_s, 2.0);
        assert_eq!(r.throughput.output_tokens, 40);
        for (key, path) in FLAT_TO_NESTED {
            let nested = serde_json::to_value(&r).unwrap();
            if path.starts_with("/energy/prefill/") {
                continue;
            }
            assert_eq!(nested.pointer(path), Some(&flat[key]), "{key} at {path}");
        }
    }

    #[test]
    fn the_nested_form_round_trips_and_wins_over_flat_keys() {
        let r: RunResult = serde_json::from_value(fixture("full")).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<RunResult>(&text).unwrap(), r);
        // A nested group is taken as it is even beside a stray flat key of it.
        let mut v = serde_json::to_value(&r).unwrap();
        v["total_energy_j"] = serde_json::json!(1.0);
        let back: RunResult = serde_json::from_value(v).unwrap();
        assert_eq!(back.energy.total_j, r.energy.total_j);
        // And an empty object is the default result, as before.
        assert_eq!(
            serde_json::from_str::<RunResult>("{}").unwrap(),
            RunResult::default()
        );
    }
}
