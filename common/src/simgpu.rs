//! The model behind a labelled SIMULATED GPU: a deterministic power, energy-counter and
//! thermal state machine driven by load and time.
//!
//! Why this exists: the fleet must be runnable end to end (quickstart, CI, laptops) on
//! machines without an NVIDIA GPU, and the energy pipeline must be testable against a
//! device whose true energy is known. Readings from this model must always be labelled as
//! simulated wherever they are reported; they are never a measurement.
//!
//! The model, all of it closed-form between calls (so the state at a time does not depend
//! on how often it was advanced, up to floating-point rounding):
//! - Power follows its target with a first-order lag (`power_tau_s`, 5 ms: on the lent
//!   H200 the counter's steps show the card's power settling within a few milliseconds
//!   of a change of work, so a quiet span after work is at idle power at once). The
//!   target is
//!   `floor + (max_w - floor) * utilisation`, where the floor is `idle_w`, plus
//!   `resident_extra_w` while a model is resident (the lent H100 idles at ~72 W without a
//!   CUDA context and ~118 W while a process holds one). A small sine ripple
//!   (`ripple_w`, default +-0.3 W) keeps the trace from being flat.
//! - The energy counter integrates that true power (ripple included) exactly, but, like
//!   NVML's, publishes a new value only every `counter_period_ns` (100 ms), floored to mJ.
//! - Temperature follows `dT/dt = ((ambient_c + r_c_per_w * P) - T) / tau_s`, driven by
//!   the lagged power (the ripple's +-0.04 C is left out). `tau_s` is 8 s, far faster than
//!   a real heatsink, so tests and the quickstart's thermal gate do not wait minutes.
//!   With the default `ambient_c` 30 C the linear model cannot put idle at 35 C *and* full
//!   load at 75 C; `r_c_per_w` is set for 75 C at `max_w` (idle settles near 39 C).
//! - Above `throttle_c` (83 C) the reading reports a thermal throttle and a lower SM clock;
//!   power is not capped by the model.
//!
//! Time is always an argument (`t_mono_ns`); a time earlier than the last one seen is
//! treated as the last one (the model never runs backwards).

use serde::{Deserialize, Serialize};
use std::f64::consts::TAU;

const NS_PER_S: f64 = 1e9;

/// The simulated card's constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimParams {
    /// Power at zero load with no model resident.
    pub idle_w: f64,
    /// Power at full load.
    pub max_w: f64,
    /// Added to the idle floor while a model is resident (a process holds a CUDA context).
    pub resident_extra_w: f64,
    /// Time constant of power following its target.
    pub power_tau_s: f64,
    /// Amplitude of the deterministic power ripple.
    pub ripple_w: f64,
    pub ripple_hz: f64,
    pub ambient_c: f64,
    /// Steady-state temperature rise per watt.
    pub r_c_per_w: f64,
    /// Thermal time constant (deliberately short; see the module docs).
    pub tau_s: f64,
    /// Temperature above which the card reports a thermal throttle.
    pub throttle_c: f64,
    pub idle_sm_clock_mhz: u32,
    pub load_sm_clock_mhz: u32,
    pub throttled_sm_clock_mhz: u32,
    pub mem_clock_mhz: u32,
    /// How often the energy counter publishes a new value.
    pub counter_period_ns: u64,
    /// Counter value at creation (energy since "driver load").
    pub initial_energy_mj: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        Self {
            idle_w: 70.0,
            max_w: 350.0,
            resident_extra_w: 40.0,
            power_tau_s: 0.005,
            ripple_w: 0.3,
            ripple_hz: 1.7,
            ambient_c: 30.0,
            r_c_per_w: 45.0 / 350.0,
            tau_s: 8.0,
            throttle_c: 83.0,
            idle_sm_clock_mhz: 345,
            load_sm_clock_mhz: 1980,
            throttled_sm_clock_mhz: 1590,
            mem_clock_mhz: 2619,
            counter_period_ns: 100_000_000,
            initial_energy_mj: 0,
        }
    }
}

/// One reading of the simulated card, shaped like what the worker reads from NVML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReading {
    pub t_mono_ns: u64,
    /// Instantaneous true power (the real sensor reports a recent average).
    pub power_w: f64,
    /// Total energy counter, published every `counter_period_ns`, monotone.
    pub energy_mj: u64,
    pub temp_c: f64,
    pub sm_clock_mhz: u32,
    pub mem_clock_mhz: u32,
    /// Performance state: 0 (P0) while loaded or resident, 8 (P8) when idle.
    pub pstate: u32,
    pub utilisation_pct: u32,
    pub throttle_thermal: bool,
}

/// The simulated card's state machine. See the module docs for the model.
#[derive(Debug, Clone)]
pub struct SimGpuModel {
    params: SimParams,
    epoch_ns: u64,
    t_ns: u64,
    utilisation: f64,
    resident: bool,
    /// Lagged power without ripple, at `t_ns`.
    lag_w: f64,
    temp_c: f64,
    /// True energy at `t_ns`.
    energy_mj: f64,
    published_mj: u64,
    published_at_ns: u64,
}

/// Load for a harness phase: "prefill" 0.95, "decode" `min(0.35 + 0.08 * batch_size, 0.9)`,
/// anything else ("idle" included) 0.
pub fn utilisation_for(phase: &str, batch_size: u32) -> f64 {
    match phase {
        "prefill" => 0.95,
        "decode" => (0.35 + 0.08 * f64::from(batch_size)).min(0.9),
        _ => 0.0,
    }
}

impl SimGpuModel {
    /// A card at `t_mono_ns`, idle, no model resident, at its idle steady state.
    pub fn new(params: SimParams, t_mono_ns: u64) -> Self {
        let lag_w = params.idle_w;
        let temp_c = params.ambient_c + params.r_c_per_w * lag_w;
        let published_mj = params.initial_energy_mj;
        Self {
            epoch_ns: t_mono_ns,
            t_ns: t_mono_ns,
            utilisation: 0.0,
            resident: false,
            lag_w,
            temp_c,
            energy_mj: published_mj as f64,
            published_mj,
            published_at_ns: t_mono_ns,
            params,
        }
    }

    pub fn params(&self) -> &SimParams {
        &self.params
    }

    pub fn utilisation(&self) -> f64 {
        self.utilisation
    }

    pub fn resident(&self) -> bool {
        self.resident
    }

    /// The exact (unpublished) energy integral at the last time the model was advanced to.
    pub fn true_energy_mj(&self) -> f64 {
        self.energy_mj
    }

    /// The power the card is heading for at the current load and residency.
    pub fn target_w(&self) -> f64 {
        let p = &self.params;
        let floor = p.idle_w
            + if self.resident {
                p.resident_extra_w
            } else {
                0.0
            };
        floor + (p.max_w - floor) * self.utilisation
    }

    /// Sets the load (clamped to 0..=1; NaN is 0) from `t_mono_ns` on.
    pub fn set_load(&mut self, utilisation: f64, t_mono_ns: u64) {
        self.advance(t_mono_ns);
        self.utilisation = if utilisation.is_nan() {
            0.0
        } else {
            utilisation.clamp(0.0, 1.0)
        };
    }

    /// Loads (`true`) or unloads a model from `t_mono_ns` on.
    pub fn set_resident(&mut self, resident: bool, t_mono_ns: u64) {
        self.advance(t_mono_ns);
        self.resident = resident;
    }

    fn ripple_w(&self, t: u64) -> f64 {
        let s = (t - self.epoch_ns) as f64 / NS_PER_S;
        self.params.ripple_w * (TAU * self.params.ripple_hz * s).sin()
    }

    /// Integral of the ripple over `[a, b]`, in joules.
    fn ripple_j(&self, a: u64, b: u64) -> f64 {
        let p = &self.params;
        if p.ripple_hz <= 0.0 {
            return 0.0;
        }
        let w = TAU * p.ripple_hz;
        let sa = (a - self.epoch_ns) as f64 / NS_PER_S;
        let sb = (b - self.epoch_ns) as f64 / NS_PER_S;
        p.ripple_w / w * ((w * sa).cos() - (w * sb).cos())
    }

    /// Lagged power `s` seconds after `t_ns` at the current target.
    fn lag_after(&self, s: f64) -> f64 {
        let target = self.target_w();
        target + (self.lag_w - target) * (-s / self.params.power_tau_s).exp()
    }

    /// True energy in mJ at `t` (`t >= t_ns`) at the current target.
    fn energy_at_mj(&self, t: u64) -> f64 {
        let s = (t - self.t_ns) as f64 / NS_PER_S;
        let target = self.target_w();
        let tau = self.params.power_tau_s;
        let lag_j = target * s + (self.lag_w - target) * tau * (1.0 - (-s / tau).exp());
        self.energy_mj + 1000.0 * (lag_j + self.ripple_j(self.t_ns, t))
    }

    /// Temperature `s` seconds after `t_ns`, solving the thermal ODE driven by the lag.
    fn temp_after(&self, s: f64) -> f64 {
        let p = &self.params;
        let target = self.target_w();
        let a = p.ambient_c + p.r_c_per_w * target;
        let c = p.r_c_per_w * (self.lag_w - target);
        let (tp, tt) = (p.power_tau_s, p.tau_s);
        let et = (-s / tt).exp();
        if (tp - tt).abs() < 1e-9 {
            return a + (self.temp_c - a) * et + c * (s / tt) * et;
        }
        let b = c * tp / (tp - tt);
        a + b * (-s / tp).exp() + (self.temp_c - a - b) * et
    }

    /// Moves the model to `t_mono_ns` (no-op for a time not after the last one).
    pub fn advance(&mut self, t_mono_ns: u64) {
        if t_mono_ns <= self.t_ns {
            return;
        }
        let period = self.params.counter_period_ns.max(1);
        let publish_at = self.epoch_ns + (t_mono_ns - self.epoch_ns) / period * period;
        if publish_at > self.published_at_ns {
            // publish_at > published_at_ns >= the last publish instant <= t_ns, so >= t_ns.
            let e = self.energy_at_mj(publish_at).floor().max(0.0) as u64;
            self.published_mj = self.published_mj.max(e);
            self.published_at_ns = publish_at;
        }
        let s = (t_mono_ns - self.t_ns) as f64 / NS_PER_S;
        let energy = self.energy_at_mj(t_mono_ns);
        let temp = self.temp_after(s);
        self.lag_w = self.lag_after(s);
        self.temp_c = temp;
        self.energy_mj = energy;
        self.t_ns = t_mono_ns;
    }

    /// Advances to `t_mono_ns` (a time not after the last one reads the state at the last
    /// one) and reads the card.
    pub fn sample(&mut self, t_mono_ns: u64) -> SimReading {
        self.advance(t_mono_ns);
        let p = &self.params;
        let throttle_thermal = self.temp_c > p.throttle_c;
        let active = self.utilisation > 0.0 || self.resident;
        let sm_clock_mhz = if !active {
            p.idle_sm_clock_mhz
        } else if throttle_thermal {
            p.throttled_sm_clock_mhz
        } else {
            p.load_sm_clock_mhz
        };
        SimReading {
            t_mono_ns: self.t_ns,
            power_w: self.lag_w + self.ripple_w(self.t_ns),
            energy_mj: self.published_mj,
            temp_c: self.temp_c,
            sm_clock_mhz,
            mem_clock_mhz: p.mem_clock_mhz,
            pstate: if active { 0 } else { 8 },
            utilisation_pct: (self.utilisation * 100.0).round() as u32,
            throttle_thermal,
        }
    }
}

/// The environment variable naming the simulated GPU's foreign-process file, a TEST
/// HOOK of the simulated GPU only: the worker's simulated GPUs report the processes it
/// declares as holding them (`lem-worker --device-isolation`, docs/measurement.md).
/// Real GPUs never read it; their processes come from NVML.
pub const FOREIGN_PROCESSES_ENV: &str = "LEM_SIMGPU_FOREIGN_PROCESSES";

/// TEST HOOK of the simulated GPU: a JSON object of [`SimParams`] fields that replace
/// the defaults (`{"throttle_c": 20}` makes the card throttle at any load, as a hot
/// card does). The simulated card's environment snapshot carries the object, so a
/// worker started with other parameters is a different environment. Real GPUs never
/// read it.
pub const PARAMS_ENV: &str = "LEM_SIMGPU_PARAMS";

/// The defaults with the fields of `json` (an object) replaced; an unknown field or a
/// wrong type is an error naming it.
pub fn params_with(json: &str) -> Result<SimParams, String> {
    let patch: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let Some(patch) = patch.as_object() else {
        return Err("give a JSON object of simulated-GPU parameters".into());
    };
    let mut v = serde_json::to_value(SimParams::default()).map_err(|e| e.to_string())?;
    let fields = v.as_object_mut().expect("SimParams is a struct");
    for (k, x) in patch {
        if !fields.contains_key(k) {
            let known: Vec<&String> = fields.keys().collect();
            return Err(format!("unknown parameter '{k}' (known: {known:?})"));
        }
        fields.insert(k.clone(), x.clone());
    }
    serde_json::from_value(v).map_err(|e| format!("wrong value: {e}"))
}

/// One process the simulated GPU's test hook declares as holding a simulated GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredProcess {
    pub gpu_index: u32,
    pub pid: u32,
    /// `None` for `-`: the memory "not available", as NVML reports it on some cards.
    pub used_memory_mb: Option<u64>,
}

/// Parses the test hook's file: one process per line, `GPU PID [MIB|-]` separated by
/// white space; blank lines and `#` comments are skipped. The error names the line.
pub fn parse_declared_processes(text: &str) -> Result<Vec<DeclaredProcess>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || {
            format!(
                "line {}: {line:?} is not `GPU PID [MIB|-]` (e.g. `0 4242 512`)",
                i + 1
            )
        };
        let (gpu, pid, mem) = match fields.as_slice() {
            [g, p] => (g, p, None),
            [g, p, m] => (g, p, Some(*m)),
            _ => return Err(bad()),
        };
        let used_memory_mb = match mem {
            None | Some("-") => None,
            Some(m) => Some(m.parse::<u64>().map_err(|_| bad())?),
        };
        out.push(DeclaredProcess {
            gpu_index: gpu.parse().map_err(|_| bad())?,
            pid: pid.parse().map_err(|_| bad())?,
            used_memory_mb,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    const T0: u64 = 5_000 * S + 123;

    fn model() -> SimGpuModel {
        SimGpuModel::new(SimParams::default(), T0)
    }

    #[test]
    fn steady_states() {
        let mut m = model();
        let r = m.sample(T0 + 60 * S);
        assert!((r.power_w - 70.0).abs() <= 0.3 + 1e-9, "{r:?}");
        assert!(
            (r.temp_c - (30.0 + 70.0 * 45.0 / 350.0)).abs() < 0.01,
            "{r:?}"
        );
        assert_eq!((r.sm_clock_mhz, r.pstate, r.utilisation_pct), (345, 8, 0));
        assert!(!r.throttle_thermal);

        m.set_resident(true, T0 + 60 * S);
        let r = m.sample(T0 + 70 * S);
        assert!((r.power_w - 110.0).abs() <= 0.3 + 1e-6, "{r:?}");
        assert_eq!((r.sm_clock_mhz, r.pstate), (1980, 0));

        m.set_load(1.0, T0 + 70 * S);
        let r = m.sample(T0 + 200 * S);
        assert!((r.power_w - 350.0).abs() <= 0.3 + 1e-6, "{r:?}");
        assert!((r.temp_c - 75.0).abs() < 0.01, "{r:?}");
        assert_eq!((r.sm_clock_mhz, r.utilisation_pct), (1980, 100));
        assert!(!r.throttle_thermal);
    }

    #[test]
    fn power_lags_its_target() {
        let mut m = model();
        m.set_load(1.0, T0 + S);
        let r = m.sample(T0 + S + 5 * MS);
        let expected = 70.0 + 280.0 * (1.0 - (-1.0f64).exp());
        assert!((r.power_w - expected).abs() <= 0.3 + 1e-6, "{r:?}");
        let r = m.sample(T0 + S + 2 * S);
        assert!((r.power_w - 350.0).abs() < 0.4);
        m.set_load(0.0, T0 + 3 * S);
        let r = m.sample(T0 + 3 * S + 5 * MS);
        let expected = 70.0 + 280.0 * (-1.0f64).exp();
        assert!((r.power_w - expected).abs() < 0.4, "{r:?} vs {expected}");
    }

    #[test]
    fn counter_publishes_every_period_and_matches_the_integral() {
        let mut m = model();
        let mut last = m.sample(T0);
        let mut integral_j = 0.0;
        let mut changes = Vec::new();
        let step = MS;
        for k in 1..=3000u64 {
            let t = T0 + k * step;
            match k {
                500 => m.set_load(0.95, t),
                1200 => m.set_load(utilisation_for("decode", 4), t),
                2100 => m.set_resident(true, t),
                2400 => m.set_load(0.0, t),
                _ => {}
            }
            let r = m.sample(t);
            integral_j += 0.5 * (last.power_w + r.power_w) * step as f64 / 1e9;
            assert!(r.energy_mj >= last.energy_mj);
            if r.energy_mj != last.energy_mj {
                changes.push(t);
                assert_eq!((t - T0) % (100 * MS), 0, "published off the 100 ms grid");
                // At a publish instant the counter holds the exact integral, floored.
                assert_eq!(r.energy_mj, m.true_energy_mj().floor() as u64);
                let integral_mj = integral_j * 1000.0;
                assert!(
                    (r.energy_mj as f64 - integral_mj).abs() < 1e-3 * integral_mj + 2.0,
                    "{} vs {integral_mj}",
                    r.energy_mj
                );
            }
            last = r;
        }
        assert_eq!(changes.len(), 30);
    }

    #[test]
    fn counter_starts_at_the_initial_value() {
        let params = SimParams {
            initial_energy_mj: 9_000_000_000,
            ..SimParams::default()
        };
        let mut m = SimGpuModel::new(params, T0);
        assert_eq!(m.sample(T0 + 50 * MS).energy_mj, 9_000_000_000);
        // 70 W for 100 ms, plus at most a few mJ of ripple.
        let e = m.sample(T0 + 100 * MS).energy_mj - 9_000_000_000;
        assert!((7_000..7_030).contains(&e), "{e}");
    }

    #[test]
    fn cools_toward_ambient() {
        let mut m = model();
        m.set_load(1.0, T0);
        let hot = m.sample(T0 + 100 * S).temp_c;
        assert!(hot > 74.0);
        m.set_load(0.0, T0 + 100 * S);
        let mut prev = hot;
        for k in 1..=60 {
            let r = m.sample(T0 + 100 * S + k * S);
            assert!(r.temp_c < prev, "not cooling at {k} s: {r:?}");
            assert!(r.temp_c > 30.0);
            prev = r.temp_c;
        }
        let idle_c = 30.0 + 70.0 * 45.0 / 350.0;
        assert!((prev - idle_c).abs() < 0.1, "{prev}");
    }

    #[test]
    fn throttles_when_hot() {
        let params = SimParams {
            ambient_c: 45.0,
            ..SimParams::default()
        };
        let mut m = SimGpuModel::new(params, T0);
        m.set_load(1.0, T0);
        let r = m.sample(T0 + 60 * S);
        assert!(r.temp_c > 83.0 && r.throttle_thermal, "{r:?}");
        assert_eq!(r.sm_clock_mhz, 1590);
    }

    #[test]
    fn deterministic_and_independent_of_step_size() {
        let run = |step: u64| {
            let mut m = model();
            let mut out = Vec::new();
            let mut t = T0;
            while t <= T0 + 10 * S {
                if t == T0 + 2 * S {
                    m.set_load(0.7, t);
                }
                if t == T0 + 6 * S {
                    m.set_load(0.1, t);
                }
                let r = m.sample(t);
                if (t - T0) % S == 0 {
                    out.push(r);
                }
                t += step;
            }
            out
        };
        let a = run(10 * MS);
        assert_eq!(a, run(10 * MS));
        let b = run(S);
        for (x, y) in a.iter().zip(&b) {
            assert!((x.power_w - y.power_w).abs() < 1e-9);
            assert!((x.temp_c - y.temp_c).abs() < 1e-9);
            assert!(x.energy_mj.abs_diff(y.energy_mj) <= 1);
        }
        // Time never runs backwards.
        let mut m = model();
        let r = m.sample(T0 + S);
        assert_eq!(m.sample(T0), r);
    }

    #[test]
    fn phases_map_to_load() {
        assert_eq!(utilisation_for("prefill", 8), 0.95);
        assert!((utilisation_for("decode", 1) - 0.43).abs() < 1e-12);
        assert_eq!(utilisation_for("decode", 64), 0.9);
        assert_eq!(utilisation_for("idle", 1), 0.0);
        assert_eq!(utilisation_for("warmup?", 1), 0.0);
    }

    #[test]
    fn declared_processes_parse_and_bad_lines_are_named() {
        let text = "# gpu pid mib\n0 4242 512\n\n1 77 -   # memory not reported\n2 8\n";
        let got = parse_declared_processes(text).unwrap();
        assert_eq!(
            got,
            vec![
                DeclaredProcess {
                    gpu_index: 0,
                    pid: 4242,
                    used_memory_mb: Some(512)
                },
                DeclaredProcess {
                    gpu_index: 1,
                    pid: 77,
                    used_memory_mb: None
                },
                DeclaredProcess {
                    gpu_index: 2,
                    pid: 8,
                    used_memory_mb: None
                },
            ]
        );
        assert_eq!(parse_declared_processes("").unwrap(), vec![]);
        let e = parse_declared_processes("0 4242\nzero 1 2\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse_declared_processes("0 1 2 3").is_err());
        assert!(parse_declared_processes("0 1 lots").is_err());
    }

    #[test]
    fn params_are_patched_from_json_or_refused_by_name() {
        let p = params_with(r#"{"throttle_c": 20.0}"#).unwrap();
        assert_eq!(p.throttle_c, 20.0);
        assert_eq!(p.idle_w, SimParams::default().idle_w);
        assert!(params_with(r#"{"throttle": 1}"#)
            .unwrap_err()
            .contains("unknown parameter 'throttle'"));
        assert!(params_with(r#"{"throttle_c": "hot"}"#)
            .unwrap_err()
            .contains("wrong value"));
        assert!(params_with("[1]").is_err());
    }
}
