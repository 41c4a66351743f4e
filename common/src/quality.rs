//! Quality flags: the short, documented names of everything that makes one run's
//! figures weaker than a clean measurement (a simulated GPU, a window too short for
//! the counter, a baseline not subtracted, throttling, a shared GPU, estimated
//! latency, ...).
//!
//! [`flags`] is the one place they are derived from a stored [`RunResult`]; every
//! export (`lem-coord results --format jsonl|csv|parquet|llem`) writes its answer, and
//! reports reuse it, so a flag means the same thing everywhere. The names, their
//! meaning and what to do about each are documented in docs/results.md ("Quality
//! flags"); a test here keeps that table and [`Flag::ALL`] in step.
//!
//! The helpers beside it ([`baseline_subtracted`], [`itl_measurement_mode`],
//! [`latency_estimated`], [`gpu_shared`], [`mig_enabled`], [`foreign_pids`]) read the same facts for
//! the export columns of those names, so a column and its flag cannot disagree.

use std::fmt;

use crate::thermal::GateReason;
use crate::types::RunResult;

/// The quiet power beside the window and the resident idle measured after the run
/// should describe the same state (harness and model loaded, GPU idle); a gap above
/// this many watts (over the slot's GPUs, summed) means the resident baseline
/// subtracted from the run is not the idle the run actually sat at.
pub const RESIDENT_IDLE_DRIFT_W: f64 = 2.0;

/// `energy_adjusted_resident_uncertainty_j` above this share of the dynamic energy, in
/// percent, flags it: the run drew too little above idle for its dynamic energy to mean
/// much.
pub const DYNAMIC_UNCERTAINTY_FLAG_PCT: f64 = 10.0;

/// One quality problem of a run. [`Flag::name`] is the stable name written in exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flag {
    /// The GPU was the labelled simulated GPU.
    Simulated,
    /// The energy is the integral of sampled power, not the NVML counter.
    PowerIntegral,
    /// The window was shorter than one counter step or two power samples.
    ShortWindow,
    /// The counter and the power integral disagree by more than 5 %.
    EnergyDisagreement,
    /// The window's edges may be off by more than 1 % of its energy.
    EdgeUncertainty,
    /// No device-idle baseline was measured or subtracted (the study disabled it).
    BaselineNotSubtracted,
    /// The device-idle adjusted energy went below zero and was clamped to 0.
    EnergyClamped,
    /// The quiet power beside the window and the resident idle differ by more than
    /// [`RESIDENT_IDLE_DRIFT_W`].
    ResidentIdleDrift,
    /// The dynamic energy is uncertain by more than [`DYNAMIC_UNCERTAINTY_FLAG_PCT`].
    DynamicEnergyUncertain,
    /// Thermal throttling was seen in the window.
    ThrottleThermal,
    /// Power-cap throttling was seen in the window.
    ThrottlePower,
    /// A hardware slowdown was seen in the window.
    HwSlowdown,
    /// The thermal gate gave up waiting: the GPU was still cooling when the run began.
    ThermalGateTimeout,
    /// Another process held a measured GPU during the baseline or the window.
    GpuShared,
    /// The GPU is in MIG mode: its counter covers every MIG slice of the parent GPU.
    Mig,
    /// TTFT and ITL were estimated, not timed per token.
    LatencyEstimated,
}

impl Flag {
    /// Every flag, in the order [`flags`] lists them.
    pub const ALL: [Flag; 16] = [
        Flag::Simulated,
        Flag::PowerIntegral,
        Flag::ShortWindow,
        Flag::EnergyDisagreement,
        Flag::EdgeUncertainty,
        Flag::BaselineNotSubtracted,
        Flag::EnergyClamped,
        Flag::ResidentIdleDrift,
        Flag::DynamicEnergyUncertain,
        Flag::ThrottleThermal,
        Flag::ThrottlePower,
        Flag::HwSlowdown,
        Flag::ThermalGateTimeout,
        Flag::GpuShared,
        Flag::Mig,
        Flag::LatencyEstimated,
    ];

    /// The short name written in the exports' `flags` column (snake_case, stable).
    pub fn name(self) -> &'static str {
        match self {
            Flag::Simulated => "simulated",
            Flag::PowerIntegral => "power_integral",
            Flag::ShortWindow => "short_window",
            Flag::EnergyDisagreement => "energy_disagreement",
            Flag::EdgeUncertainty => "edge_uncertainty",
            Flag::BaselineNotSubtracted => "baseline_not_subtracted",
            Flag::EnergyClamped => "energy_clamped",
            Flag::ResidentIdleDrift => "resident_idle_drift",
            Flag::DynamicEnergyUncertain => "dynamic_energy_uncertain",
            Flag::ThrottleThermal => "throttle_thermal",
            Flag::ThrottlePower => "throttle_power",
            Flag::HwSlowdown => "hw_slowdown",
            Flag::ThermalGateTimeout => "thermal_gate_timeout",
            Flag::GpuShared => "gpu_shared",
            Flag::Mig => "mig",
            Flag::LatencyEstimated => "latency_estimated",
        }
    }

    /// The flag named `name`, if any.
    pub fn from_name(name: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.name() == name)
    }

    /// One line a researcher understands without the docs: what is wrong with the
    /// figures (the llem bundle writes it into `measurement_warnings`).
    pub fn explanation(self) -> &'static str {
        match self {
            Flag::Simulated => {
                "measured on a simulated GPU: the energy comes from the fleet's GPU model, not from hardware"
            }
            Flag::PowerIntegral => {
                "energy is the integral of sampled power, not the NVML energy counter (no counter, or it never moved in the window): expect several percent of error"
            }
            Flag::ShortWindow => {
                "the measured window was shorter than one energy-counter step or two power samples: its energy is a rough estimate"
            }
            Flag::EnergyDisagreement => {
                "the energy counter and the power integral disagree by more than 5 %: one of them is off for this window"
            }
            Flag::EdgeUncertainty => {
                "the window's edges may be off by more than 1 % of its energy (energy_uncertainty_j)"
            }
            Flag::BaselineNotSubtracted => {
                "no idle baseline was measured or subtracted (the study disabled it): energy_adjusted_j is missing and total_energy_j includes idle power"
            }
            Flag::EnergyClamped => {
                "the idle-adjusted energy came out negative and was clamped to 0: the baseline is suspect"
            }
            Flag::ResidentIdleDrift => {
                "the GPU's quiet power beside the window differs from the resident idle baseline by more than 2 W: the resident-adjusted energy is off by that power times the window"
            }
            Flag::DynamicEnergyUncertain => {
                "the run drew so little above its idle power that its dynamic energy (energy_adjusted_resident_j) is uncertain by more than 10 % (energy_adjusted_resident_uncertainty_j): compare total energies, or measure a longer window"
            }
            Flag::ThrottleThermal => {
                "the GPU throttled for temperature during the window: speed and energy are not those of a cool GPU"
            }
            Flag::ThrottlePower => {
                "the GPU hit its power cap during the window: speed and energy are capped"
            }
            Flag::HwSlowdown => {
                "the GPU reported a hardware slowdown during the window: speed and energy are not representative"
            }
            Flag::ThermalGateTimeout => {
                "the thermal gate timed out: the GPU was still cooling when the run started"
            }
            Flag::GpuShared => {
                "another process used a measured GPU during the baseline or the window: its work is in the energy"
            }
            Flag::Mig => {
                "the GPU is in MIG mode: the energy covers every MIG slice of the parent GPU, not just this instance"
            }
            Flag::LatencyEstimated => {
                "TTFT and inter-token latency were estimated (itl_measurement_mode), not timed per token"
            }
        }
    }
}

impl serde::Serialize for Flag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every quality problem of the run, in [`Flag::ALL`]'s order (empty for a clean
/// measurement).
pub fn flags(r: &RunResult) -> Vec<Flag> {
    Flag::ALL.into_iter().filter(|f| has(r, *f)).collect()
}

/// The names of [`flags`], as the exports write them.
pub fn flag_names(r: &RunResult) -> Vec<&'static str> {
    flags(r).into_iter().map(Flag::name).collect()
}

/// Whether a device-idle baseline was measured and subtracted (`energy_adjusted_j`
/// exists); false when the study disabled the baseline.
pub fn baseline_subtracted(r: &RunResult) -> bool {
    r.baselines.device.is_some() && r.energy.adjusted_j.is_some()
}

/// |quiet power beside the window - resident idle| in watts, when both are known.
pub fn resident_idle_drift_w(r: &RunResult) -> Option<f64> {
    let quiet = r.energy.quiet_power_w?;
    let resident = r.baselines.resident.as_ref()?.mean_power_w;
    Some((quiet - resident).abs())
}

/// The harness's `itl_measurement_mode` (`true_streaming`, `proportional`,
/// `per_request_batch`), if it reported one.
pub fn itl_measurement_mode(r: &RunResult) -> Option<&str> {
    r.harness
        .metrics
        .get("itl_measurement_mode")
        .and_then(serde_json::Value::as_str)
}

/// The harness's `latency_estimated`, if it reported one.
pub fn latency_estimated(r: &RunResult) -> Option<bool> {
    r.harness
        .metrics
        .get("latency_estimated")
        .and_then(serde_json::Value::as_bool)
}

/// Whether the environment snapshot says a measured GPU is in MIG mode: the worker
/// records `gpu.mig_enabled` for a one-GPU slot and `gpu.group[i].mig_enabled` for
/// each GPU of a group (worker/src/nvml.rs, worker/src/pool.rs).
pub fn mig_enabled(r: &RunResult) -> bool {
    let Some(gpu) = r.environment.get("gpu") else {
        return false;
    };
    let on = |g: &serde_json::Value| g.get("mig_enabled") == Some(&serde_json::Value::Bool(true));
    on(gpu)
        || gpu
            .get("group")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|gs| gs.iter().any(on))
}

/// Whether another process held a measured GPU (the worker's `gpu_shared`, or any
/// foreign process recorded).
pub fn gpu_shared(r: &RunResult) -> bool {
    r.isolation.gpu_shared || !r.isolation.foreign_processes.is_empty()
}

/// The pids of the foreign processes seen on a measured GPU, each once, in the order
/// first seen.
pub fn foreign_pids(r: &RunResult) -> Vec<u32> {
    let mut pids = Vec::new();
    for p in &r.isolation.foreign_processes {
        if !pids.contains(&p.pid) {
            pids.push(p.pid);
        }
    }
    pids
}

/// Whether the run has `flag` (the one rule per flag that [`flags`] applies).
fn has(r: &RunResult, flag: Flag) -> bool {
    match flag {
        Flag::Simulated => r.simulated,
        Flag::PowerIntegral => r.energy.method == "power_integral",
        Flag::ShortWindow => r.window.short,
        Flag::EnergyDisagreement => r.energy.disagreement_flagged,
        Flag::EdgeUncertainty => r.energy.uncertainty_flagged,
        Flag::BaselineNotSubtracted => !baseline_subtracted(r),
        Flag::EnergyClamped => r.energy.adjusted_clamped,
        Flag::ResidentIdleDrift => {
            resident_idle_drift_w(r).is_some_and(|d| d > RESIDENT_IDLE_DRIFT_W)
        }
        Flag::DynamicEnergyUncertain => match (
            r.energy.adjusted_resident_uncertainty_j,
            r.energy.adjusted_resident_j,
        ) {
            (Some(u), Some(e)) => u > e.abs() * DYNAMIC_UNCERTAINTY_FLAG_PCT / 100.0,
            _ => false,
        },
        Flag::ThrottleThermal => r.thermal.throttle_thermal,
        Flag::ThrottlePower => r.thermal.throttle_power,
        Flag::HwSlowdown => r.thermal.hw_slowdown,
        Flag::ThermalGateTimeout => r.thermal.wait_reason == GateReason::Timeout.as_str(),
        Flag::GpuShared => gpu_shared(r),
        Flag::Mig => mig_enabled(r),
        Flag::LatencyEstimated => {
            latency_estimated(r) == Some(true)
                || matches!(
                    itl_measurement_mode(r),
                    Some("proportional" | "per_request_batch")
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        BaselineRecord, Baselines, EnergyFigures, ForeignProcess, HarnessFacts, Isolation, Thermal,
    };
    use serde_json::json;

    /// A clean measurement: counter energy, baselines subtracted, streamed latency.
    fn clean() -> RunResult {
        let baseline = |w: f64| BaselineRecord {
            kind: "device".into(),
            mean_power_w: w,
            ..Default::default()
        };
        RunResult {
            environment: json!({"gpu": {"name": "H200", "mig_enabled": false}}),
            energy: EnergyFigures {
                method: "counter_interpolated".into(),
                total_j: 1000.0,
                adjusted_j: Some(400.0),
                quiet_power_w: Some(121.5),
                ..Default::default()
            },
            baselines: Baselines {
                device_power_w: Some(60.0),
                device: Some(baseline(60.0)),
                resident: Some(baseline(120.0)),
            },
            thermal: Thermal {
                wait_reason: "cooled".into(),
                ..Default::default()
            },
            harness: HarnessFacts {
                metrics: json!({"itl_measurement_mode": "true_streaming", "latency_estimated": false}),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_clean_run_has_no_flags() {
        assert_eq!(flags(&clean()), Vec::<Flag>::new());
        assert!(baseline_subtracted(&clean()));
    }

    /// Sets the fact behind one flag.
    type Raise = fn(&mut RunResult);

    #[test]
    fn each_flag_is_raised_by_its_own_fact() {
        let cases: Vec<(Flag, Raise)> = vec![
            (Flag::Simulated, |r| r.simulated = true),
            (Flag::PowerIntegral, |r| {
                r.energy.method = "power_integral".into()
            }),
            (Flag::ShortWindow, |r| r.window.short = true),
            (Flag::EnergyDisagreement, |r| {
                r.energy.disagreement_flagged = true
            }),
            (Flag::EdgeUncertainty, |r| {
                r.energy.uncertainty_flagged = true
            }),
            (Flag::BaselineNotSubtracted, |r| {
                r.baselines.device = None;
                r.baselines.device_power_w = None;
                r.energy.adjusted_j = None;
            }),
            (Flag::EnergyClamped, |r| r.energy.adjusted_clamped = true),
            (Flag::ResidentIdleDrift, |r| {
                r.energy.quiet_power_w = Some(117.5)
            }),
            (Flag::DynamicEnergyUncertain, |r| {
                r.energy.adjusted_resident_j = Some(10.0);
                r.energy.adjusted_resident_uncertainty_j = Some(1.5);
            }),
            (Flag::ThrottleThermal, |r| r.thermal.throttle_thermal = true),
            (Flag::ThrottlePower, |r| r.thermal.throttle_power = true),
            (Flag::HwSlowdown, |r| r.thermal.hw_slowdown = true),
            (Flag::ThermalGateTimeout, |r| {
                r.thermal.wait_reason = "timeout".into()
            }),
            (Flag::GpuShared, |r| r.isolation.gpu_shared = true),
            (Flag::Mig, |r| {
                r.environment["gpu"]["mig_enabled"] = json!(true)
            }),
            (Flag::LatencyEstimated, |r| {
                r.harness.metrics["latency_estimated"] = json!(true)
            }),
        ];
        let covered: Vec<Flag> = cases.iter().map(|(flag, _)| *flag).collect();
        assert_eq!(covered, Flag::ALL, "every flag has its case, in order");
        for (flag, set) in cases {
            let mut r = clean();
            set(&mut r);
            assert_eq!(flags(&r), vec![flag], "{}", flag.name());
        }
    }

    #[test]
    fn everything_at_once_comes_in_the_documented_order() {
        let mut r = clean();
        r.simulated = true;
        r.window.short = true;
        r.thermal.throttle_power = true;
        r.isolation.foreign_processes = vec![ForeignProcess {
            pid: 4242,
            seen: "window".into(),
            ..Default::default()
        }];
        assert_eq!(
            flag_names(&r),
            ["simulated", "short_window", "throttle_power", "gpu_shared"]
        );
    }

    #[test]
    fn resident_idle_drift_needs_both_figures_and_more_than_the_threshold() {
        let mut r = clean();
        r.energy.quiet_power_w = Some(120.0 + RESIDENT_IDLE_DRIFT_W);
        assert!(
            !flags(&r).contains(&Flag::ResidentIdleDrift),
            "at the threshold"
        );
        r.energy.quiet_power_w = Some(120.0 + RESIDENT_IDLE_DRIFT_W + 0.1);
        assert!(flags(&r).contains(&Flag::ResidentIdleDrift));
        r.baselines.resident = None;
        assert_eq!(resident_idle_drift_w(&r), None);
        assert!(!flags(&r).contains(&Flag::ResidentIdleDrift));
        let mut r = clean();
        r.energy.quiet_power_w = None;
        assert!(!flags(&r).contains(&Flag::ResidentIdleDrift));
    }

    #[test]
    fn mig_is_read_from_a_single_gpu_or_any_gpu_of_a_group() {
        let mut r = clean();
        r.environment = json!({"gpu": {"group": [{"mig_enabled": false}, {"mig_enabled": true}]}});
        assert!(mig_enabled(&r));
        r.environment = json!({"gpu": {"group": [{"mig_enabled": false}, {"mig_enabled": null}]}});
        assert!(!mig_enabled(&r));
        // A simulated GPU's snapshot and results from before the snapshot.
        r.environment = json!({"gpu": {"name": "sim", "simulated": true}});
        assert!(!mig_enabled(&r));
        r.environment = serde_json::Value::Null;
        assert!(!mig_enabled(&r));
    }

    #[test]
    fn estimated_latency_is_read_from_the_mode_too() {
        for mode in ["proportional", "per_request_batch"] {
            let mut r = clean();
            r.harness.metrics = json!({"itl_measurement_mode": mode});
            assert_eq!(flags(&r), vec![Flag::LatencyEstimated], "{mode}");
            assert_eq!(itl_measurement_mode(&r), Some(mode));
            assert_eq!(latency_estimated(&r), None);
        }
    }

    #[test]
    fn foreign_pids_are_listed_once_each() {
        let p = |pid, seen: &str| ForeignProcess {
            pid,
            seen: seen.into(),
            ..Default::default()
        };
        let r = RunResult {
            isolation: Isolation {
                foreign_processes: vec![p(7, "baseline"), p(9, "window"), p(7, "window")],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(foreign_pids(&r), [7, 9]);
    }

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for f in Flag::ALL {
            assert!(seen.insert(f.name()), "duplicate name {}", f.name());
            assert!(
                f.name().chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                f.name()
            );
            assert_eq!(Flag::from_name(f.name()), Some(f));
            assert!(!f.explanation().contains('\n'), "{}", f.name());
        }
        assert_eq!(Flag::from_name("nope"), None);
    }

    #[test]
    fn explanations_quote_the_thresholds_in_force() {
        let has = |f: Flag, text: String| {
            assert!(f.explanation().contains(&text), "{}: {text}", f.name());
        };
        has(
            Flag::ResidentIdleDrift,
            format!("{RESIDENT_IDLE_DRIFT_W} W"),
        );
        has(
            Flag::EnergyDisagreement,
            format!("{} %", crate::energy::DISAGREEMENT_FLAG_PCT),
        );
        has(
            Flag::EdgeUncertainty,
            format!("{} %", crate::energy::UNCERTAINTY_FLAG_PCT),
        );
    }

    #[test]
    fn every_flag_is_documented_in_results_md() {
        let doc = include_str!("../../docs/results.md");
        let section = doc
            .split("## Quality flags")
            .nth(1)
            .expect("docs/results.md has a \"## Quality flags\" section");
        for f in Flag::ALL {
            assert!(
                section.contains(&format!("| `{}` |", f.name())),
                "docs/results.md's quality flags table has no row for `{}`",
                f.name()
            );
        }
    }
}
