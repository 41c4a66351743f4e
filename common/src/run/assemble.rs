//! The run's result from what its lifecycle gathered: [`assemble`] is the one place a
//! [`RunResult`] is built, whatever the GPU (NVML or the simulated one) and whatever
//! the runtime. Pure: the gathered figures in, the result out.
//!
//! The layout it fills is documented on [`crate::result`] and in docs/results.md ("The
//! stored result").

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::sample::TelemetrySample;
use super::{window, Gathered, Leased, Where, TIMESERIES_POINTS};
use crate::energy::{adjusted_energy, EnergyMethod};
use crate::harness::RunOutcome;
use crate::result::{
    Baselines, EnergyFigures, GpuFigures, HarnessFacts, Isolation, MeasuredWindow, PrefillSplit,
    RunResult, Thermal, Throughput,
};
use crate::run::baseline::Idle;
use crate::thermal::GateReason;

/// Stable hash of a JSON value: SHA-256 (first 16 hex digits) of its text with sorted
/// keys. Fields that change on their own (none so far: no clocks, temperatures or
/// times are in an environment snapshot) must stay out of what is hashed.
pub fn stable_hash(v: &Json) -> String {
    fn sorted(v: &Json) -> Json {
        match v {
            Json::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Json::Object(out)
            }
            Json::Array(a) => Json::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let text = sorted(v).to_string();
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A slot's environment snapshot with the engine versions one run reported
/// (`engine_versions`), and its [`stable_hash`].
pub fn with_engine_versions(snapshot: &Json, engine_versions: &Json) -> (Json, String) {
    let mut s = snapshot.clone();
    if !s.is_object() {
        s = Json::Object(serde_json::Map::new());
    }
    s["engine_versions"] = engine_versions.clone();
    let h = stable_hash(&s);
    (s, h)
}

fn method_name(m: EnergyMethod) -> String {
    match m {
        EnergyMethod::CounterInterpolated => "counter_interpolated".to_string(),
        EnergyMethod::PowerIntegral => "power_integral".to_string(),
    }
}

/// The result of the run `leased` on `place`, from everything gathered (`model` is
/// the config's `task.model`; `baseline_enabled` the study's
/// `measurement.baseline.enabled`). Warnings about what the window's telemetry shows
/// (throttling, a clamped adjustment, a shared GPU) are added to the gathered ones.
///
/// Panics when called before the window was measured or without the harness's result
/// (the lifecycle calls it only after both).
pub(super) fn assemble(
    leased: &Leased,
    place: &Where,
    model: String,
    baseline_enabled: bool,
    got: Gathered,
) -> RunResult {
    let m = got.window.expect("assembled after the window was measured");
    let mut warnings = got.warnings;
    let (metrics, engine_version) = match got.transcript.outcome.clone() {
        Some(RunOutcome::Result {
            metrics,
            engine_version,
        }) => (metrics, engine_version),
        _ => unreachable!("assembled only after a result"),
    };
    let we = &m.energy;
    let (t0, t1) = (m.run.t0, m.run.t1);
    // Temperatures and throttling: the samples inside the window, or for a window
    // shorter than the sampling interval, the samples nearest its edges; on a
    // multi-GPU slot the hottest GPU's temperatures and any GPU's throttling.
    let hottest = |f: &dyn Fn(&[TelemetrySample]) -> Option<f64>| {
        m.samples
            .iter()
            .filter_map(|w| f(w))
            .fold(None, |acc: Option<f64>, t| {
                Some(acc.map_or(t, |a| a.max(t)))
            })
    };
    let gpu_max_temp =
        |w: &[TelemetrySample]| w.iter().map(|s| s.temp_c).fold(f64::MIN, f64::max).max(0.0);
    let start_temp = hottest(&|w| w.first().map(|s| s.temp_c));
    let end_temp = hottest(&|w| w.last().map(|s| s.temp_c));
    let max_temp = hottest(&|w| Some(gpu_max_temp(w)));
    let any = |f: &dyn Fn(&TelemetrySample) -> bool| m.samples.iter().flatten().any(f);
    let throttle = any(&|s| s.throttle_thermal);
    if throttle {
        warnings.push("thermal throttling seen during the window".into());
    }
    let throttle_power = any(&|s| s.throttle_power);
    if throttle_power {
        warnings.push("power-cap throttling seen during the window".into());
    }
    let hw_slowdown = any(&|s| s.hw_slowdown);
    if hw_slowdown {
        warnings.push("hardware slowdown seen during the window".into());
    }
    let clocks: Vec<u32> = m.samples.iter().flatten().map(|s| s.sm_clock_mhz).collect();
    if let Some(w) = window::engine_version_warning(&leased.engine, engine_version.as_deref()) {
        warnings.push(w);
    }
    let groups: Vec<&[TelemetrySample]> = m
        .collected
        .gpus
        .iter()
        .map(|g| g.samples.as_slice())
        .collect();
    let timeseries = window::downsample(&groups, &place.gpus, t0, t1, TIMESERIES_POINTS);
    let count = |k: &str| metrics.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let (input_tokens, output_tokens, n_prompts) = (
        count("input_tokens"),
        count("output_tokens"),
        count("n_prompts"),
    );
    let duration_s = we.duration_s;
    let baseline = got.baseline;
    let adjusted = baseline
        .as_ref()
        .map(|b| adjusted_energy(we.energy_j, b.record.mean_power_w, duration_s));
    if adjusted.is_some_and(|a| a.clamped) {
        warnings.push("baseline-adjusted energy was negative and was clamped to 0".into());
    }
    warnings.extend(got.iso.warnings());
    // The resident idle to subtract for the dynamic energy: the quiet spans' power
    // beside this very window (the GPU's idle at this temperature; on the H200 the
    // cached baseline drifted ~1 W over a campaign, 2-15 % of a low-power run's
    // dynamic energy), else the resident baseline.
    let resident = got.resident;
    let resident_idle = match (baseline_enabled, we.quiet_power_w, resident.as_ref()) {
        (true, Some(q), _) => Some((q, "quiet")),
        (true, None, Some(r)) => Some((r.record.mean_power_w, "resident_baseline")),
        _ => None,
    };
    let per_token = |e: f64| {
        if output_tokens > 0 {
            e / output_tokens as f64
        } else {
            0.0
        }
    };
    let idle_of =
        |idle: Option<&Idle>, i: usize| idle.and_then(|b| b.per_gpu.get(i)).map(|g| g.power_w);
    let desc = |i: usize| place.gpu_descriptions.get(i).cloned().unwrap_or_default();
    let gpus: Vec<GpuFigures> = m
        .per_gpu
        .iter()
        .enumerate()
        .map(|(i, e)| GpuFigures {
            index: place.gpus.get(i).copied().unwrap_or(i as u32),
            name: desc(i).0,
            uuid: desc(i).1,
            total_energy_j: e.energy_j,
            energy_method: method_name(e.method),
            energy_integral_j: e.integral_j,
            energy_counter_raw_j: e.counter_delta_raw_j,
            mean_power_w: e.mean_power_w,
            baseline_power_w: idle_of(baseline.as_ref(), i),
            resident_baseline_power_w: idle_of(resident.as_ref(), i),
            max_temp_c: m.samples.get(i).map_or(0.0, |w| gpu_max_temp(w)),
        })
        .collect();
    let (gate_waited_s, gate_reason) = got.gate.unwrap_or((0.0, GateReason::NoReference));
    let baseline_w = baseline.as_ref().map(|b| b.record.mean_power_w);
    // The prefill-only window's energy per pass over the run's batches is the run's
    // prefill; decode is the rest of the run (raw, and device-idle adjusted).
    let prefill = m
        .prefill
        .as_ref()
        .zip(got.transcript.prefill_window.as_ref())
        .map(|(e, p)| {
            let passes = p.passes as f64;
            let prefill_adjusted = baseline_w
                .map(|b| adjusted_energy(e.energy_j, b, e.duration_s).adjusted_j / passes);
            PrefillSplit {
                window_energy_j: e.energy_j,
                window_s: e.duration_s,
                calls: p.calls,
                passes: p.passes,
                energy_per_call_j: e.energy_j / p.calls as f64,
                prefill_energy_j: e.energy_j / passes,
                decode_energy_j: (we.energy_j - e.energy_j / passes).max(0.0),
                prefill_energy_adjusted_j: prefill_adjusted,
                decode_energy_adjusted_j: baseline_w.zip(prefill_adjusted).map(|(b, pre)| {
                    (adjusted_energy(we.energy_j, b, duration_s).adjusted_j - pre).max(0.0)
                }),
            }
        });
    let (environment, environment_hash) =
        with_engine_versions(&place.environment, &window::metrics_versions(&metrics));
    RunResult {
        worker: place.worker.clone(),
        host: place.host.clone(),
        slot: place.slot,
        gpu_name: desc(0).0,
        gpu_uuid: desc(0).1,
        simulated: desc(0).2,
        gpu_indices: place.gpus.clone(),
        engine: leased.engine.clone(),
        engine_version,
        model_name: model,
        started_at: crate::types::format_utc_ms(got.started_unix_ms),
        ended_at: crate::types::format_utc_ms(got.ended_unix_ms),
        environment,
        environment_hash,
        warnings,
        // The worker sets it: the trace is the driver's, not the lifecycle's.
        trace_id: None,
        energy: EnergyFigures {
            total_j: we.energy_j,
            method: method_name(we.method),
            integral_j: we.integral_j,
            counter_raw_j: we.counter_delta_raw_j,
            disagreement_pct: we.disagreement_pct,
            disagreement_flagged: we.disagreement_flagged,
            uncertainty_j: we.uncertainty_j,
            uncertainty_flagged: we.uncertainty_flagged,
            edge_rule: we.edge_rule.map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
            edges: we
                .edges
                .as_ref()
                .and_then(|e| serde_json::to_value(e).ok())
                .unwrap_or(Json::Null),
            quiet_power_w: we.quiet_power_w,
            mean_power_w: we.mean_power_w,
            adjusted_j: adjusted.map(|a| a.adjusted_j),
            adjusted_clamped: adjusted.is_some_and(|a| a.clamped),
            adjusted_resident_j: resident_idle
                .map(|(w, _)| adjusted_energy(we.energy_j, w, duration_s).adjusted_j),
            adjusted_resident_source: resident_idle.map(|(_, source)| source.to_string()),
            adjusted_resident_uncertainty_j: resident_idle
                .filter(|(_, source)| *source == "quiet")
                .and(we.quiet_power_se_w)
                .map(|se| {
                    ((se * duration_s).powi(2) + we.uncertainty_j.unwrap_or(0.0).powi(2)).sqrt()
                }),
            prefill,
        },
        baselines: Baselines {
            device: baseline.as_ref().map(|b| b.record.clone()),
            device_power_w: baseline_w,
            resident: resident.as_ref().map(|r| r.record.clone()),
        },
        throughput: Throughput {
            n_prompts,
            input_tokens,
            output_tokens,
            avg_tokens_per_second: (input_tokens + output_tokens) as f64 / duration_s,
            output_tokens_per_second: output_tokens as f64 / duration_s,
            avg_energy_per_token_j: per_token(we.energy_j),
            energy_per_token_adjusted_j: adjusted.map(|a| per_token(a.adjusted_j)),
        },
        thermal: Thermal {
            start_temp_c: start_temp.unwrap_or(0.0),
            max_temp_c: max_temp.unwrap_or(0.0),
            end_temp_c: end_temp.unwrap_or(0.0),
            wait_s: gate_waited_s,
            wait_reason: gate_reason.as_str().to_string(),
            throttle_thermal: throttle,
            throttle_power,
            hw_slowdown,
            sm_clock_min_mhz: clocks.iter().copied().min().unwrap_or(0),
            sm_clock_max_mhz: clocks.iter().copied().max().unwrap_or(0),
        },
        window: MeasuredWindow {
            start_mono_ns: t0,
            end_mono_ns: t1,
            duration_s,
            short: we.short_window,
            n_power_samples: we.n_power_samples,
            sample_interval_ms: m.collected.sample_interval_ms,
            sampler_mean_late_us: m.collected.sampler_mean_late_us,
            sampler_max_late_us: m.collected.sampler_max_late_us,
            lease_to_measure_s: t0.saturating_sub(leased.lease_mono_ns) as f64 / 1e9,
            timeseries,
        },
        harness: HarnessFacts {
            model_load_seconds: got.transcript.load_seconds,
            model_already_loaded: got.transcript.already_loaded.unwrap_or(false),
            cold_start: leased.force_cold_start,
            gpu_memory_before_mb: m.memory_mb.map(|(b, _)| b),
            gpu_memory_after_mb: m.memory_mb.map(|(_, a)| a),
            recycled: m.recycle.clone(),
            metrics,
            warmup: got.transcript.warmup.clone().unwrap_or(Json::Null),
        },
        isolation: Isolation {
            gpu_shared: !got.iso.foreign.is_empty(),
            foreign_processes: got.iso.foreign,
        },
        gpus,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_hash_ignores_key_order_and_sees_engine_versions() {
        let a = json!({"host": {"x": 1, "y": 2}, "gpu": {"name": "g"}});
        let b = json!({"gpu": {"name": "g"}, "host": {"y": 2, "x": 1}});
        assert_eq!(super::stable_hash(&a), super::stable_hash(&b));
        let (s1, h1) = super::with_engine_versions(&a, &json!({"torch": "2.11"}));
        let (_, h2) = super::with_engine_versions(&a, &json!({"torch": "2.12"}));
        assert_ne!(h1, h2);
        assert_eq!(s1["engine_versions"]["torch"], "2.11");
        assert_eq!(h1.len(), 16);
    }
}
