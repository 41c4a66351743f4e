//! Domain vocabulary shared by the coordinator, the worker and the CLI.
//!
//! Identifiers and units are newtypes or carry their unit in the field name
//! (`energy_j`, `power_w`, `ttl_ms`), so a joule is never mistaken for a watt and a
//! campaign id never for a run index.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A campaign: one submitted study, expanded into runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignId(pub u64);

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One run of a campaign: a (config, cycle) pair at a position of the execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunKey {
    pub campaign: CampaignId,
    /// 0-based position in the campaign's execution order.
    pub seq: u32,
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:04}", self.campaign.0, self.seq + 1)
    }
}

/// A monotonic token handed out with every lease; a result or renewal carrying an older
/// token than the run's current lease is stale and is never counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A worker's identity as the coordinator knows it (chosen by the worker, unique per host).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The engines the fleet knows. `synthetic` is fleet-only: an emulation for hosts
/// without a GPU; the other three are llem's.
pub const KNOWN_ENGINES: [&str; 4] = ["synthetic", "tensorrt", "transformers", "vllm"];

/// What a worker reports about one engine it could run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineCapability {
    pub engine: String,
    pub available: bool,
    /// Why not, when unavailable (e.g. "python module vllm is not installed").
    pub reason: Option<String>,
    pub version: Option<String>,
}

/// Why a run failed; decides whether the coordinator retries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The host, the network, a crash: another attempt may succeed.
    Infrastructure,
    /// The configuration itself cannot run (out of memory, an invalid parameter):
    /// retrying would fail the same way.
    Configuration,
    /// Not a failure: the worker handed the run back unfinished on request
    /// (`lem-worker --drain` and SIGTERM). The run goes back to pending and the
    /// attempt does not count.
    Handback,
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Infrastructure => "infrastructure",
            FailureClass::Configuration => "configuration",
            FailureClass::Handback => "handback",
        })
    }
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

/// Everything a worker measured for one run; sent with `complete` and stored verbatim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    pub worker: String,
    pub host: String,
    pub slot: u32,
    pub gpu_name: String,
    pub gpu_uuid: String,
    /// True when the GPU was the labelled simulated GPU, not real hardware.
    pub simulated: bool,
    pub engine: String,
    pub engine_version: Option<String>,
    pub model_name: String,
    pub started_at: String,
    pub ended_at: String,
    pub n_prompts: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Length of the measured window (harness `measure_start` to `measure_end`).
    pub duration_s: f64,
    /// Energy over the window, the figure llem calls `total_energy_j`.
    pub total_energy_j: f64,
    /// `counter_interpolated` or `power_integral`.
    pub energy_method: String,
    pub energy_integral_j: Option<f64>,
    pub energy_counter_raw_j: Option<f64>,
    pub energy_disagreement_pct: Option<f64>,
    pub energy_disagreement_flagged: bool,
    /// What the window's edges could still be off by, in joules (the two edges'
    /// uncertainties in quadrature, per GPU then in quadrature over the group); `None`
    /// when the energy is the power integral. See docs/measurement.md.
    pub energy_uncertainty_j: Option<f64>,
    /// `energy_uncertainty_j` above 1 % of `total_energy_j`.
    pub energy_uncertainty_flagged: bool,
    /// How the edges were anchored: `quiet` (both in quiet spans the harness held,
    /// never another phase's power), `step_carry` or `power_trace` (the weakest edge);
    /// `None` for the power integral.
    pub energy_edge_rule: Option<String>,
    /// Each edge's estimate (rule, carry, power, uncertainty, updates) on a one-GPU slot.
    pub energy_edges: serde_json::Value,
    /// The GPU's power in the quiet spans beside the window, from the counter (sum over
    /// the group): the resident idle right around the run.
    pub quiet_power_w: Option<f64>,
    /// The measured window on the worker's CLOCK_MONOTONIC, for lining results up with
    /// other traces taken on the host (nanoseconds; 0 in results from before).
    pub window_start_mono_ns: u64,
    pub window_end_mono_ns: u64,
    /// Another process (not this run's harness) held a measured GPU when its baseline
    /// or the window was taken (`lem-worker --device-isolation warn`); the processes.
    pub gpu_shared: bool,
    pub gpu_foreign_processes: Vec<ForeignProcess>,
    pub short_window: bool,
    pub mean_power_w: f64,
    pub n_power_samples: usize,
    /// Adjusted with the device idle baseline: `max(0, raw - W x s)`.
    pub energy_adjusted_j: Option<f64>,
    pub energy_adjusted_clamped: bool,
    pub baseline_power_w: Option<f64>,
    pub baseline: Option<BaselineRecord>,
    /// `(input + output) tokens / s`, as llem defines `avg_tokens_per_second`.
    pub avg_tokens_per_second: f64,
    pub output_tokens_per_second: f64,
    /// `total_energy_j / output_tokens`, as llem defines it.
    pub avg_energy_per_token_j: f64,
    /// `energy_adjusted_j / output_tokens`.
    pub energy_per_token_adjusted_j: Option<f64>,
    pub start_temp_c: f64,
    pub max_temp_c: f64,
    pub end_temp_c: f64,
    pub thermal_wait_s: f64,
    /// Why the thermal gate opened: `cooled`, `timeout`, `no_gap`.
    pub thermal_wait_reason: String,
    pub throttle_thermal: bool,
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
    pub harness_recycled: Option<String>,
    /// Seconds from the lease being granted to the harness's `measure_start`.
    pub lease_to_measure_s: f64,
    /// The harness's own metrics (latency, token length distributions) as it sent them.
    pub harness_metrics: serde_json::Value,
    pub warmup: serde_json::Value,
    /// Host, GPU and engine versions when the run was measured.
    pub environment: serde_json::Value,
    /// Stable hash of `environment`; cycles of one config with different hashes drifted.
    pub environment_hash: String,
    /// The resident idle (harness and model loaded, CUDA context held), measured after
    /// the run, and the energy adjusted with it: the dynamic energy of the work itself.
    pub resident_baseline: Option<BaselineRecord>,
    /// `total_energy_j` less the resident idle over the window, where the resident idle
    /// is the GPU's power in the quiet spans beside the window (`quiet_power_w`, its
    /// idle at that moment and temperature) when both edges were quiet, else the
    /// resident baseline; `energy_adjusted_resident_source` says which.
    pub energy_adjusted_resident_j: Option<f64>,
    /// `quiet` or `resident_baseline`.
    pub energy_adjusted_resident_source: Option<String>,
    /// What `energy_adjusted_resident_j` could be off by, in joules, when it subtracted
    /// the quiet power: the quiet power's standard error (the counter's step noise)
    /// times the window, with `energy_uncertainty_j`, in quadrature. A run drawing only
    /// a few watts above idle has a dynamic energy no finer than this.
    pub energy_adjusted_resident_uncertainty_j: Option<f64>,
    /// The prefill-only differential window: its energy, calls and passes, J per
    /// prefill call (one batch), and the measured run's prefill share (window energy /
    /// passes) with decode = total - prefill; raw and device-idle adjusted.
    pub prefill_window_energy_j: Option<f64>,
    pub prefill_window_s: Option<f64>,
    pub prefill_calls: u64,
    pub prefill_passes: u64,
    pub prefill_energy_per_call_j: Option<f64>,
    pub prefill_energy_j: Option<f64>,
    pub decode_energy_j: Option<f64>,
    pub prefill_energy_adjusted_j: Option<f64>,
    pub decode_energy_adjusted_j: Option<f64>,
    /// The window's power, temperature and SM clock, downsampled (bucket means, at most
    /// 240 points; `t_s` from the window start). On a group of GPUs: the group's power
    /// (sum), hottest temperature and slowest clock, and `per_gpu` with each GPU's
    /// columns. `lem-coord results --format timeseries` exports it.
    pub timeseries: serde_json::Value,
    /// Max/min SM clock (MHz) and throttle reasons seen in the window.
    pub sm_clock_min_mhz: u32,
    pub sm_clock_max_mhz: u32,
    pub throttle_power: bool,
    pub hw_slowdown: bool,
    /// Sampler timing: samples in the window and how late they were.
    pub sample_interval_ms: f64,
    pub sampler_mean_late_us: f64,
    pub sampler_max_late_us: f64,
    pub warnings: Vec<String>,
    /// The GPU indices that ran it (the slot's group; `[]` in results from before
    /// multi-GPU slots). Energy, power and baselines above are sums over these GPUs;
    /// temperatures are the hottest GPU's; `timeseries` has the group's and each GPU's.
    pub gpu_indices: Vec<u32>,
    /// Per-GPU figures, one per entry of `gpu_indices`.
    pub gpus: Vec<GpuFigures>,
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
    /// Names of numeric fields that are NaN or infinite (JSON cannot carry them, and
    /// a result holding one must not be published).
    pub fn non_finite_fields(&self) -> Vec<&'static str> {
        let opt = |v: Option<f64>| v.is_none_or(f64::is_finite);
        let checks: [(&'static str, bool); 31] = [
            ("duration_s", self.duration_s.is_finite()),
            ("total_energy_j", self.total_energy_j.is_finite()),
            ("energy_integral_j", opt(self.energy_integral_j)),
            ("energy_counter_raw_j", opt(self.energy_counter_raw_j)),
            ("energy_disagreement_pct", opt(self.energy_disagreement_pct)),
            ("energy_uncertainty_j", opt(self.energy_uncertainty_j)),
            ("quiet_power_w", opt(self.quiet_power_w)),
            (
                "energy_adjusted_resident_uncertainty_j",
                opt(self.energy_adjusted_resident_uncertainty_j),
            ),
            ("mean_power_w", self.mean_power_w.is_finite()),
            ("energy_adjusted_j", opt(self.energy_adjusted_j)),
            ("baseline_power_w", opt(self.baseline_power_w)),
            (
                "avg_tokens_per_second",
                self.avg_tokens_per_second.is_finite(),
            ),
            (
                "output_tokens_per_second",
                self.output_tokens_per_second.is_finite(),
            ),
            (
                "avg_energy_per_token_j",
                self.avg_energy_per_token_j.is_finite(),
            ),
            (
                "energy_per_token_adjusted_j",
                opt(self.energy_per_token_adjusted_j),
            ),
            ("start_temp_c", self.start_temp_c.is_finite()),
            ("max_temp_c", self.max_temp_c.is_finite()),
            ("end_temp_c", self.end_temp_c.is_finite()),
            ("thermal_wait_s", self.thermal_wait_s.is_finite()),
            ("model_load_seconds", opt(self.model_load_seconds)),
            ("lease_to_measure_s", self.lease_to_measure_s.is_finite()),
            (
                "baseline",
                self.baseline.as_ref().is_none_or(|b| {
                    b.mean_power_w.is_finite() && b.std_power_w.is_finite() && b.temp_c.is_finite()
                }),
            ),
            ("harness_metrics", json_finite(&self.harness_metrics)),
            ("timeseries", json_finite(&self.timeseries)),
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
            (
                "energy_adjusted_resident_j",
                opt(self.energy_adjusted_resident_j),
            ),
            ("prefill_window_energy_j", opt(self.prefill_window_energy_j)),
            ("prefill_energy_j", opt(self.prefill_energy_j)),
            ("decode_energy_j", opt(self.decode_energy_j)),
            (
                "prefill_energy_adjusted_j",
                opt(self.prefill_energy_adjusted_j),
            ),
            (
                "decode_energy_adjusted_j",
                opt(self.decode_energy_adjusted_j),
            ),
        ];
        checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| *n)
            .collect()
    }
}

fn json_finite(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.as_f64().is_none_or(f64::is_finite),
        serde_json::Value::Array(a) => a.iter().all(json_finite),
        serde_json::Value::Object(o) => o.values().all(json_finite),
        _ => true,
    }
}

/// Formats Unix milliseconds as ISO 8601 UTC with a `Z` (`2026-11-25T10:00:00.123Z`),
/// through chrono.
pub fn format_utc_ms(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads back an RFC 3339 time in UTC with a `Z`, as [`format_utc_ms`] writes it (the
/// fraction may have 0 to 9 digits, read to the millisecond), as Unix milliseconds;
/// `None` for anything else (an offset other than `Z`, a date before 1970).
pub fn parse_utc_ms(text: &str) -> Option<u64> {
    if !text.ends_with('Z') {
        return None;
    }
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_utc_ms(1_736_935_200_123),
            "2025-01-15T10:00:00.123Z"
        );
        assert_eq!(
            super::format_utc_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [0, 951_782_400_000, 1_736_935_200_123, 4_102_444_799_999] {
            let text = super::format_utc_ms(ms);
            assert_eq!(super::parse_utc_ms(&text), Some(ms), "{text}");
        }
        assert_eq!(
            super::parse_utc_ms("2025-01-15T10:00:00Z"),
            Some(1_736_935_200_000)
        );
        assert_eq!(
            super::parse_utc_ms("2025-01-15T10:00:00.1234567Z"),
            Some(1_736_935_200_123)
        );
        for bad in [
            "",
            "2025-01-15T10:00:00",
            "2025-01-15T10:00:00+01:00",
            "2025-13-15T10:00:00Z",
            "2025-01-15T10:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2025-01-15T1a:00:00Z",
        ] {
            assert_eq!(super::parse_utc_ms(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod result_tests {
    use super::*;

    #[test]
    fn non_finite_fields_are_named() {
        let mut r = RunResult {
            max_temp_c: f64::NAN,
            energy_adjusted_j: Some(f64::INFINITY),
            harness_metrics: serde_json::json!({"a": [1.0, 2.0]}),
            ..Default::default()
        };
        assert_eq!(
            r.non_finite_fields(),
            vec!["energy_adjusted_j", "max_temp_c"]
        );
        r.max_temp_c = 50.0;
        r.energy_adjusted_j = None;
        assert!(r.non_finite_fields().is_empty());
    }
}
