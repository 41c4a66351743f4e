//! The idle baselines a run subtracts, and when a cached one may be reused: llem's
//! `measurement.baseline` strategies as pure functions.
//!
//! Two idle figures (docs/measurement.md, "Idle baseline"): the **device idle**, with no
//! process of the worker's holding a CUDA context (the harness is stopped first), and
//! the **resident idle**, with the harness and the run's model loaded, measured after a
//! run. Each is cached by the slot and reused while the run's strategy allows:
//! `fresh` measures every time, `cached` reuses until `cache_ttl_seconds` old, and
//! `validated` is `cached` plus a 5 s spot check every `validation_interval` runs that
//! re-measures when it drifts by more than `drift_threshold`.

use serde::{Deserialize, Serialize};

use crate::types::BaselineRecord;
use crate::Value;

/// The `validated` strategy's spot check, in seconds.
pub const SPOT_CHECK_S: f64 = 5.0;

/// llem's baseline strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Fresh,
    Cached,
    Validated,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fresh => "fresh",
            Strategy::Cached => "cached",
            Strategy::Validated => "validated",
        }
    }
}

/// A run's `measurement.baseline` settings (llem's defaults where unset).
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineSettings {
    pub enabled: bool,
    pub duration_s: f64,
    pub strategy: Strategy,
    pub cache_ttl_s: f64,
    pub validation_interval: u32,
    pub drift_threshold: f64,
}

impl BaselineSettings {
    /// The settings of `config` (a validated llem config dump).
    pub fn from_config(config: &Value) -> Self {
        let g = |k: &str| config.get_path(&format!("measurement.baseline.{k}"));
        BaselineSettings {
            enabled: g("enabled").and_then(Value::as_bool).unwrap_or(true),
            duration_s: g("duration_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(30.0),
            strategy: match g("strategy").and_then(Value::as_str) {
                Some("fresh") => Strategy::Fresh,
                Some("cached") => Strategy::Cached,
                _ => Strategy::Validated,
            },
            cache_ttl_s: g("cache_ttl_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(7200.0),
            validation_interval: g("validation_interval")
                .and_then(Value::as_i64)
                .unwrap_or(5)
                .max(1) as u32,
            drift_threshold: g("drift_threshold").and_then(Value::as_f64).unwrap_or(0.1),
        }
    }
}

/// One GPU's idle power and temperature.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GpuIdle {
    pub power_w: f64,
    pub temp_c: f64,
}

/// An idle measurement as a run uses it: the slot's record (power summed over its
/// GPUs, the hottest GPU's temperature) and each GPU's share, in slot order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Idle {
    pub record: BaselineRecord,
    pub per_gpu: Vec<GpuIdle>,
}

/// An idle measurement kept for reuse, with when it was taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedIdle {
    pub idle: Idle,
    pub measured_mono_ns: u64,
}

impl CachedIdle {
    /// The cached measurement as a run at `now` uses it (its age and the run's
    /// strategy recorded).
    pub fn as_used(&self, strategy: Strategy, now_ns: u64) -> Idle {
        let mut idle = self.idle.clone();
        idle.record.cache_age_s = age_s(self.measured_mono_ns, now_ns);
        idle.record.strategy = strategy.as_str().to_string();
        idle
    }
}

/// What a slot remembers between runs (per device set, in a dynamic pool).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaselineCache {
    pub device: Option<CachedIdle>,
    /// The resident idle and the model (`task.model`) it was measured with.
    pub resident: Option<(String, CachedIdle)>,
    /// Runs since the device baseline was measured or spot-checked (`validated`).
    pub runs_since_check: u32,
}

fn age_s(measured_ns: u64, now_ns: u64) -> f64 {
    now_ns.saturating_sub(measured_ns) as f64 / 1e9
}

/// What to do about the device idle for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePlan {
    /// Use the cached value as it is.
    Reuse,
    /// Spot-check the cached value (`validated`, every `validation_interval` runs).
    SpotCheck,
    /// Measure it now.
    Measure,
}

/// The device-idle plan for a run at `now` with these settings.
pub fn device_plan(cache: &BaselineCache, s: &BaselineSettings, now_ns: u64) -> DevicePlan {
    let Some(cached) = &cache.device else {
        return DevicePlan::Measure;
    };
    if s.strategy == Strategy::Fresh || age_s(cached.measured_mono_ns, now_ns) >= s.cache_ttl_s {
        return DevicePlan::Measure;
    }
    if s.strategy == Strategy::Validated && cache.runs_since_check >= s.validation_interval {
        return DevicePlan::SpotCheck;
    }
    DevicePlan::Reuse
}

/// Whether a spot check of `spot_w` against the cached `cached_w` drifted past the
/// study's threshold (a fraction of the cached value).
pub fn drifted(spot_w: f64, cached_w: f64, threshold: f64) -> bool {
    (spot_w - cached_w).abs() / cached_w.max(1e-9) > threshold
}

/// Whether the cached resident idle can serve a run of `model` at `now`.
pub fn resident_reusable(
    cache: &BaselineCache,
    model: &str,
    s: &BaselineSettings,
    now_ns: u64,
) -> bool {
    cache.resident.as_ref().is_some_and(|(m, c)| {
        m == model
            && s.strategy != Strategy::Fresh
            && age_s(c.measured_mono_ns, now_ns) < s.cache_ttl_s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn settings(strategy: Strategy) -> BaselineSettings {
        BaselineSettings {
            enabled: true,
            duration_s: 10.0,
            strategy,
            cache_ttl_s: 60.0,
            validation_interval: 3,
            drift_threshold: 0.1,
        }
    }

    fn cached_at(t: u64, w: f64) -> CachedIdle {
        CachedIdle {
            idle: Idle {
                record: BaselineRecord {
                    mean_power_w: w,
                    ..Default::default()
                },
                per_gpu: vec![GpuIdle {
                    power_w: w,
                    temp_c: 40.0,
                }],
            },
            measured_mono_ns: t,
        }
    }

    #[test]
    fn strategies_decide_when_the_device_idle_is_measured() {
        let empty = BaselineCache::default();
        for s in [Strategy::Fresh, Strategy::Cached, Strategy::Validated] {
            assert_eq!(device_plan(&empty, &settings(s), 0), DevicePlan::Measure);
        }
        let cache = BaselineCache {
            device: Some(cached_at(100 * S, 80.0)),
            resident: None,
            runs_since_check: 0,
        };
        assert_eq!(
            device_plan(&cache, &settings(Strategy::Fresh), 101 * S),
            DevicePlan::Measure
        );
        assert_eq!(
            device_plan(&cache, &settings(Strategy::Cached), 101 * S),
            DevicePlan::Reuse
        );
        // Past its TTL it is measured again, whatever the strategy.
        assert_eq!(
            device_plan(&cache, &settings(Strategy::Cached), 160 * S),
            DevicePlan::Measure
        );
        assert_eq!(
            device_plan(&cache, &settings(Strategy::Validated), 101 * S),
            DevicePlan::Reuse
        );
        let due = BaselineCache {
            runs_since_check: 3,
            ..cache.clone()
        };
        assert_eq!(
            device_plan(&due, &settings(Strategy::Validated), 101 * S),
            DevicePlan::SpotCheck
        );
        assert_eq!(
            device_plan(&due, &settings(Strategy::Cached), 101 * S),
            DevicePlan::Reuse
        );
    }

    #[test]
    fn drift_is_relative_to_the_cached_value() {
        assert!(!drifted(84.0, 80.0, 0.1));
        assert!(drifted(89.0, 80.0, 0.1));
        assert!(drifted(71.0, 80.0, 0.1));
    }

    #[test]
    fn the_resident_idle_is_reused_for_the_same_model_only() {
        let cache = BaselineCache {
            device: None,
            resident: Some(("m".into(), cached_at(10 * S, 120.0))),
            runs_since_check: 0,
        };
        let s = settings(Strategy::Cached);
        assert!(resident_reusable(&cache, "m", &s, 20 * S));
        assert!(!resident_reusable(&cache, "other", &s, 20 * S));
        assert!(!resident_reusable(&cache, "m", &s, 80 * S));
        assert!(!resident_reusable(
            &cache,
            "m",
            &settings(Strategy::Fresh),
            20 * S
        ));
    }

    #[test]
    fn a_reused_value_records_its_age_and_the_runs_strategy() {
        let c = cached_at(10 * S, 80.0);
        let used = c.as_used(Strategy::Validated, 25 * S);
        assert_eq!(used.record.cache_age_s, 15.0);
        assert_eq!(used.record.strategy, "validated");
        assert_eq!(used.per_gpu, c.idle.per_gpu);
    }

    #[test]
    fn settings_default_as_llem() {
        let s = BaselineSettings::from_config(&Value::Null);
        assert!(s.enabled);
        assert_eq!(s.strategy, Strategy::Validated);
        assert_eq!(s.duration_s, 30.0);
        assert_eq!(s.cache_ttl_s, 7200.0);
        assert_eq!(s.validation_interval, 5);
        assert_eq!(s.drift_threshold, 0.1);
    }
}
