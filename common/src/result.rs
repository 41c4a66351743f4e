//! The stored result of one run: a nested, typed [`RunResult`], the one shape the
//! worker sends with `complete`, its journal keeps, the coordinator's manifest stores
//! and every export reads.
//!
//! Why nested: a hundred flat fields made it hard to see which figures belong
//! together (the energy and how it was got, the baselines subtracted from it, the
//! thermal state it was measured in). Each group is a struct of its own, with names
//! that read within the group (`energy.total_j`, `thermal.wait_s`, `baselines.device`):
//!
//! * at the top, who ran it, where and when: worker, host, slot, the GPU (name, UUID,
//!   simulated), `gpu_indices`, engine and model, `started_at`/`ended_at`, the
//!   environment snapshot and its hash, the warnings, and `gpus` (each GPU's share);
//! * [`EnergyFigures`] (`energy`): the window's energy, its method, cross-checks and
//!   edges, the adjusted energies, and the prefill/decode split ([`PrefillSplit`]);
//! * [`Baselines`] (`baselines`): the device-idle and resident-idle records;
//! * [`Throughput`] (`throughput`): prompts, tokens, tokens per second, J per token;
//! * [`Thermal`] (`thermal`): temperatures, the thermal gate, throttling, SM clocks;
//! * [`MeasuredWindow`] (`window`): the window on the worker's clock, its length, how it
//!   was sampled, and its downsampled timeseries;
//! * [`HarnessFacts`] (`harness`): the model load, memory, recycling, the harness's
//!   own metrics and warmup;
//! * [`Isolation`] (`isolation`): other processes seen on a measured GPU.
//!
//! The result is built in one place, `crate::run::assemble`, a pure function of what
//! the run lifecycle gathered. docs/results.md ("The stored result") lists every field
//! with its export column.
//!
//! **Reading old results.** Up to protocol 4 the result was flat (`total_energy_j`,
//! `baseline`, `thermal_wait_s`, ... at the top). Manifests, worker journals and
//! protocol-4 workers hold that form, so deserializing accepts both: each group is
//! read from its nested key when present, else from the flat fields ([`flat`] has
//! the mapping, tested against a flat result the old code wrote). Serializing always
//! writes the nested form.

pub mod flat;

use serde::{Deserialize, Serialize};

/// Everything a worker measured for one run; sent with `complete` and stored verbatim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "flat::StoredResult")]
pub struct RunResult {
    pub worker: String,
    pub host: String,
    pub slot: u32,
    /// The first GPU of the run's (its name and UUID).
    pub gpu_name: String,
    pub gpu_uuid: String,
    /// True when the GPU was the labelled simulated GPU, not real hardware.
    pub simulated: bool,
    /// The GPU indices that ran it (the slot's group; `[]` in results from before
    /// multi-GPU slots). Energy, power and baselines are sums over these GPUs;
    /// temperatures are the hottest GPU's; the timeseries has the group's and each
    /// GPU's.
    pub gpu_indices: Vec<u32>,
    pub engine: String,
    pub engine_version: Option<String>,
    pub model_name: String,
    /// When the harness began and ended the run (RFC 3339 UTC, wall clock).
    pub started_at: String,
    pub ended_at: String,
    /// Host, GPU and engine versions when the run was measured.
    pub environment: serde_json::Value,
    /// Stable hash of `environment`; cycles of one config with different hashes drifted.
    pub environment_hash: String,
    pub warnings: Vec<String>,
    pub energy: EnergyFigures,
    pub baselines: Baselines,
    pub throughput: Throughput,
    pub thermal: Thermal,
    pub window: MeasuredWindow,
    pub harness: HarnessFacts,
    pub isolation: Isolation,
    /// Per-GPU figures, one per entry of `gpu_indices`.
    pub gpus: Vec<GpuFigures>,
    /// The OpenTelemetry trace of the run (32 hex digits): the worker's lease call,
    /// the coordinator's handling of it and every phase of the run share it, so its
    /// spans can be found in a trace store (docs/observability.md). `None` from
    /// workers before traces.
    pub trace_id: Option<String>,
}

/// The window's energy and what it rests on (sums over the run's GPUs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnergyFigures {
    /// Energy over the window, the figure llem calls `total_energy_j`.
    pub total_j: f64,
    /// `counter_interpolated` or `power_integral`.
    pub method: String,
    /// Trapezoid integral of sampled power over the window (the cross-check).
    pub integral_j: Option<f64>,
    /// The raw counter delta, not interpolated (a second cross-check).
    pub counter_raw_j: Option<f64>,
    /// Counter vs integral, in percent, and whether that is above 5 %.
    pub disagreement_pct: Option<f64>,
    pub disagreement_flagged: bool,
    /// What the window's edges could still be off by, in joules (the two edges'
    /// uncertainties in quadrature, per GPU then in quadrature over the group); `None`
    /// when the energy is the power integral. See docs/measurement.md.
    pub uncertainty_j: Option<f64>,
    /// `uncertainty_j` above 1 % of `total_j`.
    pub uncertainty_flagged: bool,
    /// How the edges were anchored: `quiet` (both in quiet spans the harness held,
    /// never another phase's power), `step_carry` or `power_trace` (the weakest edge);
    /// `None` for the power integral.
    pub edge_rule: Option<String>,
    /// Each edge's estimate (rule, carry, power, uncertainty, updates) on a one-GPU slot.
    pub edges: serde_json::Value,
    /// The GPU's power in the quiet spans beside the window, from the counter (sum over
    /// the group): the resident idle right around the run.
    pub quiet_power_w: Option<f64>,
    /// `total_j` / the window's length.
    pub mean_power_w: f64,
    /// Adjusted with the device idle baseline: `max(0, raw - W x s)`; and whether it
    /// went below zero and was clamped.
    pub adjusted_j: Option<f64>,
    pub adjusted_clamped: bool,
    /// `total_j` less the resident idle over the window, where the resident idle is
    /// the GPU's power in the quiet spans beside the window (`quiet_power_w`, its idle
    /// at that moment and temperature) when both edges were quiet, else the resident
    /// baseline; `adjusted_resident_source` says which (`quiet` or
    /// `resident_baseline`). The dynamic energy of the work itself.
    pub adjusted_resident_j: Option<f64>,
    pub adjusted_resident_source: Option<String>,
    /// What `adjusted_resident_j` could be off by, in joules, when it subtracted the
    /// quiet power: the quiet power's standard error (the counter's step noise) times
    /// the window, with `uncertainty_j`, in quadrature. A run drawing only a few watts
    /// above idle has a dynamic energy no finer than this.
    pub adjusted_resident_uncertainty_j: Option<f64>,
    /// The prefill/decode split, when the worker measured a prefill-only window.
    pub prefill: Option<PrefillSplit>,
}

/// The prefill-only differential window and the run's split by it: the window's
/// energy, calls and passes, J per prefill call (one batch), and the measured run's
/// prefill share (window energy / passes) with decode = total - prefill; raw and
/// device-idle adjusted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefillSplit {
    pub window_energy_j: f64,
    pub window_s: f64,
    pub calls: u64,
    pub passes: u64,
    pub energy_per_call_j: f64,
    pub prefill_energy_j: f64,
    pub decode_energy_j: f64,
    /// `None` without a device-idle baseline.
    pub prefill_energy_adjusted_j: Option<f64>,
    pub decode_energy_adjusted_j: Option<f64>,
}

/// The idle baselines the run's energy was adjusted with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Baselines {
    /// The device idle (no process of ours on the GPUs) in use for this run.
    pub device: Option<BaselineRecord>,
    /// The device-idle power subtracted for `energy.adjusted_j` (its record's mean).
    pub device_power_w: Option<f64>,
    /// The resident idle (harness and model loaded, CUDA context held), measured after
    /// the run (or reused from the cache).
    pub resident: Option<BaselineRecord>,
}

/// An idle-power baseline as measured by a worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineRecord {
    /// `device` (no model of ours resident) or `resident` (harness and model loaded).
    pub kind: String,
    pub mean_power_w: f64,
    pub std_power_w: f64,
    pub n_samples: usize,
    pub duration_s: f64,
    /// Seconds spent waiting for power to settle before the window.
    pub settle_s: f64,
    pub temp_c: f64,
    pub sm_clock_mhz: Option<u32>,
    pub pstate: Option<u32>,
    /// `fresh`, `cached` or `validated` (llem's strategies).
    pub strategy: String,
    /// Age of the measurement when this run used it.
    pub cache_age_s: f64,
    pub measured_at: String,
}

/// What the run produced per second and per joule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Throughput {
    pub n_prompts: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// `(input + output) tokens / s`, as llem defines `avg_tokens_per_second`.
    pub avg_tokens_per_second: f64,
    pub output_tokens_per_second: f64,
    /// `energy.total_j / output_tokens`, as llem defines it.
    pub avg_energy_per_token_j: f64,
    /// `energy.adjusted_j / output_tokens`.
    pub energy_per_token_adjusted_j: Option<f64>,
}

/// The GPUs' thermal state around the run (the hottest GPU's temperatures, any GPU's
/// throttling).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thermal {
    pub start_temp_c: f64,
    pub max_temp_c: f64,
    pub end_temp_c: f64,
    /// Seconds at the thermal gate before the run, and why it opened: `cooled`,
    /// `timeout`, `no_gap`, `no_reference`.
    pub wait_s: f64,
    pub wait_reason: String,
    /// Throttle reasons seen in the window.
    pub throttle_thermal: bool,
    pub throttle_power: bool,
    pub hw_slowdown: bool,
    /// Min/max SM clock (MHz) seen in the window.
    pub sm_clock_min_mhz: u32,
    pub sm_clock_max_mhz: u32,
}

/// The measured window (harness `measure_start` to `measure_end`) and how it was
/// sampled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeasuredWindow {
    /// The window on the worker's CLOCK_MONOTONIC, for lining results up with other
    /// traces taken on the host (nanoseconds; 0 in results from before).
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
    /// Its length.
    pub duration_s: f64,
    /// Shorter than one counter step or two power samples: its energy is a rough
    /// positive estimate.
    pub short: bool,
    /// Power samples in the window, the sampling interval, and how late they were.
    pub n_power_samples: usize,
    pub sample_interval_ms: f64,
    pub sampler_mean_late_us: f64,
    pub sampler_max_late_us: f64,
    /// Seconds from the lease being granted to the harness's `measure_start`.
    pub lease_to_measure_s: f64,
    /// The window's power, temperature and SM clock, downsampled (bucket means, at most
    /// 240 points; `t_s` from the window start). On a group of GPUs: the group's power
    /// (sum), hottest temperature and slowest clock, and `per_gpu` with each GPU's
    /// columns. `lem-coord results --format timeseries` exports it.
    pub timeseries: serde_json::Value,
}

/// The harness that ran it: the model load, its GPU memory, its own metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HarnessFacts {
    pub model_load_seconds: Option<f64>,
    pub model_already_loaded: bool,
    /// The run was asked to start cold (`submit --force-cold-start`): the harness was
    /// recycled and the model loaded anew before it (`model_load_seconds` says how long).
    pub cold_start: bool,
    /// GPU memory in use (MiB, summed over the run's GPUs) as the run began and as it
    /// ended (NVML).
    pub gpu_memory_before_mb: Option<u64>,
    pub gpu_memory_after_mb: Option<u64>,
    /// Why the harness (its container, on the docker runtime) was recycled after this
    /// run: its GPU memory grew past `lem-worker --recycle-memory-growth-mb`.
    pub recycled: Option<String>,
    /// The harness's own metrics (latency, token length distributions) as it sent them.
    pub metrics: serde_json::Value,
    /// The harness's `warmup_done` event (null when warmup was off).
    pub warmup: serde_json::Value,
}

/// Other processes on the measured GPUs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Isolation {
    /// Another process (not this run's harness) held a measured GPU when its baseline
    /// or the window was taken (`lem-worker --device-isolation warn`); the processes.
    pub gpu_shared: bool,
    pub foreign_processes: Vec<ForeignProcess>,
}

/// A process other than the run's own harness that held a measured GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForeignProcess {
    pub pid: u32,
    /// NVML index of the GPU it held.
    pub gpu_index: u32,
    /// GPU memory it held, in MiB (`None` where NVML does not say).
    pub used_memory_mb: Option<u64>,
    /// Its command name (`/proc/PID/comm`), where readable.
    pub name: Option<String>,
    /// When it was seen: `baseline`, `resident_baseline` or `window`.
    pub seen: String,
}

/// One GPU's share of a run on a multi-GPU slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuFigures {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub total_energy_j: f64,
    pub energy_method: String,
    pub energy_integral_j: Option<f64>,
    pub energy_counter_raw_j: Option<f64>,
    pub mean_power_w: f64,
    /// This GPU's device-idle and resident-idle baselines.
    pub baseline_power_w: Option<f64>,
    pub resident_baseline_power_w: Option<f64>,
    pub max_temp_c: f64,
}

impl RunResult {
    /// Paths (`energy.total_j`, `thermal.max_temp_c`, ...) of numeric fields that are NaN
    /// or infinite (JSON cannot carry them, and a result holding one must not be
    /// published).
    pub fn non_finite_fields(&self) -> Vec<&'static str> {
        let opt = |v: Option<f64>| v.is_none_or(f64::is_finite);
        let e = &self.energy;
        let record = |b: &Option<BaselineRecord>| {
            b.as_ref().is_none_or(|b| {
                [
                    b.mean_power_w,
                    b.std_power_w,
                    b.duration_s,
                    b.settle_s,
                    b.temp_c,
                ]
                .iter()
                .all(|v| v.is_finite())
            })
        };
        let prefill =
            |f: fn(&PrefillSplit) -> Option<f64>| e.prefill.as_ref().is_none_or(|p| opt(f(p)));
        let checks: [(&'static str, bool); 39] = [
            ("energy.total_j", e.total_j.is_finite()),
            ("energy.integral_j", opt(e.integral_j)),
            ("energy.counter_raw_j", opt(e.counter_raw_j)),
            ("energy.disagreement_pct", opt(e.disagreement_pct)),
            ("energy.uncertainty_j", opt(e.uncertainty_j)),
            ("energy.edges", json_finite(&e.edges)),
            ("energy.quiet_power_w", opt(e.quiet_power_w)),
            ("energy.mean_power_w", e.mean_power_w.is_finite()),
            ("energy.adjusted_j", opt(e.adjusted_j)),
            ("energy.adjusted_resident_j", opt(e.adjusted_resident_j)),
            (
                "energy.adjusted_resident_uncertainty_j",
                opt(e.adjusted_resident_uncertainty_j),
            ),
            (
                "energy.prefill.window_energy_j",
                prefill(|p| Some(p.window_energy_j)),
            ),
            ("energy.prefill.window_s", prefill(|p| Some(p.window_s))),
            (
                "energy.prefill.energy_per_call_j",
                prefill(|p| Some(p.energy_per_call_j)),
            ),
            (
                "energy.prefill.prefill_energy_j",
                prefill(|p| Some(p.prefill_energy_j)),
            ),
            (
                "energy.prefill.decode_energy_j",
                prefill(|p| Some(p.decode_energy_j)),
            ),
            (
                "energy.prefill.prefill_energy_adjusted_j",
                prefill(|p| p.prefill_energy_adjusted_j),
            ),
            (
                "energy.prefill.decode_energy_adjusted_j",
                prefill(|p| p.decode_energy_adjusted_j),
            ),
            ("baselines.device", record(&self.baselines.device)),
            (
                "baselines.device_power_w",
                opt(self.baselines.device_power_w),
            ),
            ("baselines.resident", record(&self.baselines.resident)),
            (
                "throughput.avg_tokens_per_second",
                self.throughput.avg_tokens_per_second.is_finite(),
            ),
            (
                "throughput.output_tokens_per_second",
                self.throughput.output_tokens_per_second.is_finite(),
            ),
            (
                "throughput.avg_energy_per_token_j",
                self.throughput.avg_energy_per_token_j.is_finite(),
            ),
            (
                "throughput.energy_per_token_adjusted_j",
                opt(self.throughput.energy_per_token_adjusted_j),
            ),
            (
                "thermal.start_temp_c",
                self.thermal.start_temp_c.is_finite(),
            ),
            ("thermal.max_temp_c", self.thermal.max_temp_c.is_finite()),
            ("thermal.end_temp_c", self.thermal.end_temp_c.is_finite()),
            ("thermal.wait_s", self.thermal.wait_s.is_finite()),
            ("window.duration_s", self.window.duration_s.is_finite()),
            (
                "window.sample_interval_ms",
                self.window.sample_interval_ms.is_finite(),
            ),
            (
                "window.sampler_mean_late_us",
                self.window.sampler_mean_late_us.is_finite(),
            ),
            (
                "window.sampler_max_late_us",
                self.window.sampler_max_late_us.is_finite(),
            ),
            (
                "window.lease_to_measure_s",
                self.window.lease_to_measure_s.is_finite(),
            ),
            ("window.timeseries", json_finite(&self.window.timeseries)),
            (
                "harness.model_load_seconds",
                opt(self.harness.model_load_seconds),
            ),
            ("harness.metrics", json_finite(&self.harness.metrics)),
            ("harness.warmup", json_finite(&self.harness.warmup)),
            (
                "gpus",
                self.gpus.iter().all(|g| {
                    [g.total_energy_j, g.mean_power_w, g.max_temp_c]
                        .iter()
                        .all(|v| v.is_finite())
                        && [
                            g.energy_integral_j,
                            g.energy_counter_raw_j,
                            g.baseline_power_w,
                            g.resident_baseline_power_w,
                        ]
                        .into_iter()
                        .all(opt)
                }),
            ),
        ];
        checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Whether every number in `v` is finite (serde_json holds no NaN, but a `Value`
/// built in memory might).
fn json_finite(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.as_f64().is_none_or(f64::is_finite),
        serde_json::Value::Array(a) => a.iter().all(json_finite),
        serde_json::Value::Object(o) => o.values().all(json_finite),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_fields_are_named_by_their_path() {
        let mut r = RunResult::default();
        r.thermal.max_temp_c = f64::NAN;
        r.energy.adjusted_j = Some(f64::INFINITY);
        r.harness.metrics = serde_json::json!({"a": [1.0, 2.0]});
        assert_eq!(
            r.non_finite_fields(),
            vec!["energy.adjusted_j", "thermal.max_temp_c"]
        );
        r.thermal.max_temp_c = 50.0;
        r.energy.adjusted_j = None;
        r.energy.prefill = Some(PrefillSplit {
            decode_energy_adjusted_j: Some(f64::NEG_INFINITY),
            ..Default::default()
        });
        assert_eq!(
            r.non_finite_fields(),
            vec!["energy.prefill.decode_energy_adjusted_j"]
        );
        r.energy.prefill = None;
        assert!(r.non_finite_fields().is_empty());
    }
}
