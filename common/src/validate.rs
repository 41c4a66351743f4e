//! Sanity checks on one run's stored result: is the measurement self-consistent and
//! physically plausible (`lem-coord results validate`).
//!
//! Quality flags ([`crate::quality`]) say what makes a good measurement weaker; these
//! checks say whether a result can be a measurement at all: energy above zero, the
//! tokens the config asked for, timestamps in order, idle baselines a GPU can draw,
//! a window the energy counter can resolve. Each check is named ([`CHECKS`]), returns
//! PASS, FAIL or SKIP (its inputs are absent: no result, the baseline disabled) with
//! one line saying why, and never looks at anything but the stored result and its
//! config. The checks and their thresholds are documented in docs/results.md
//! ("Validation"); a test keeps that section and [`CHECKS`] in step.

use std::fmt;

use crate::energy::COUNTER_STEP_NS;
use crate::types::{parse_utc_ms, RunResult};
use crate::Value;

/// Every check, in the order [`validate`] returns them.
pub const CHECKS: [&str; 7] = [
    "result",
    "finite",
    "energy",
    "tokens",
    "timestamps",
    "baselines",
    "window",
];

/// The window must span at least this many energy-counter steps
/// ([`COUNTER_STEP_NS`], 100 ms): with fewer, the counter published at most one
/// update inside it and the energy rests on its edges alone.
pub const MIN_WINDOW_COUNTER_STEPS: u64 = 2;

/// A plausible device-idle baseline, in watts per GPU of the slot: below it the
/// sensor read nothing, above it something was running.
pub const DEVICE_IDLE_RANGE_W: (f64, f64) = (5.0, 300.0);

/// A plausible resident-idle baseline (harness and model loaded), in watts per GPU.
pub const RESIDENT_IDLE_RANGE_W: (f64, f64) = (5.0, 400.0);

/// How far, in watts per GPU, the resident idle may sit below the device idle (it adds
/// a CUDA context and a model, so it should not be lower beyond noise).
pub const RESIDENT_BELOW_DEVICE_W: f64 = 5.0;

/// Relative tolerance for a figure recomputed from the ones it derives from (mean
/// power, J/token, tokens/s, the adjusted energy, the per-GPU sum).
pub const RECOMPUTE_TOLERANCE: f64 = 1e-3;

/// How far, in seconds, `duration_s` may differ from the window's monotonic
/// timestamps, and a timeseries point may lie past the window's end.
pub const TIME_TOLERANCE_S: f64 = 0.001;

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Pass,
    Fail,
    /// The check's inputs are absent (no result yet, the baseline disabled).
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named check and why it came out as it did (one line).
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// One of [`CHECKS`].
    pub name: &'static str,
    pub verdict: Verdict,
    pub reason: String,
}

/// The worst verdict of a run's checks: FAIL if any failed, else PASS if any passed,
/// else SKIP.
pub fn overall(checks: &[Check]) -> Verdict {
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if checks.iter().any(|c| c.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::Skip
    }
}

/// Checks one run: its state (`done`, `failed`, ...), its stored result if any, and
/// its config (the canonical experiment config; `None` when it could not be read, so
/// the checks against it are left out). Returns every check of [`CHECKS`], in order.
/// Without a result, `result` FAILs for a done run and every check is SKIPped for any
/// other; a result stored on a run that is not done FAILs `result`.
pub fn validate(state: &str, result: Option<&RunResult>, config: Option<&Value>) -> Vec<Check> {
    let Some(r) = result else {
        let (verdict, reason) = if state == "done" {
            (
                Verdict::Fail,
                "the run is done but no result is stored".to_string(),
            )
        } else {
            (Verdict::Skip, format!("no result (the run is {state})"))
        };
        let mut out = vec![Check {
            name: "result",
            verdict,
            reason,
        }];
        out.extend(CHECKS[1..].iter().map(|name| Check {
            name,
            verdict: Verdict::Skip,
            reason: "no result".into(),
        }));
        return out;
    };
    let (verdict, reason) = if state == "done" {
        (Verdict::Pass, "done, result stored".to_string())
    } else {
        (
            Verdict::Fail,
            format!("a result is stored but the run is {state}, not done"),
        )
    };
    vec![
        Check {
            name: "result",
            verdict,
            reason,
        },
        finite(r),
        energy(r),
        tokens(r, config),
        timestamps(r),
        baselines(r),
        window(r),
    ]
}

/// PASS with `ok` when `problems` is empty, else FAIL with the problems.
fn verdict(name: &'static str, problems: Vec<String>, ok: String) -> Check {
    if problems.is_empty() {
        Check {
            name,
            verdict: Verdict::Pass,
            reason: ok,
        }
    } else {
        Check {
            name,
            verdict: Verdict::Fail,
            reason: problems.join("; "),
        }
    }
}

/// Whether `got` is `want` within [`RECOMPUTE_TOLERANCE`] (relative; absolute near 0).
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= RECOMPUTE_TOLERANCE * want.abs().max(1e-9)
}

fn finite(r: &RunResult) -> Check {
    let bad = r.non_finite_fields();
    let problems = if bad.is_empty() {
        vec![]
    } else {
        vec![format!("not finite: {}", bad.join(", "))]
    };
    verdict("finite", problems, "every figure is finite".into())
}

fn energy(r: &RunResult) -> Check {
    let mut p = Vec::new();
    let total = r.energy.total_j;
    if total <= 0.0 || !total.is_finite() {
        p.push(format!("total_energy_j is {total} J, not above 0"));
    }
    if r.energy.mean_power_w <= 0.0 {
        p.push(format!(
            "mean_power_w is {} W, not above 0",
            r.energy.mean_power_w
        ));
    } else if r.window.duration_s > 0.0
        && !close(r.energy.mean_power_w, total / r.window.duration_s)
    {
        p.push(format!(
            "mean_power_w {:.3} W is not total_energy_j / duration_s = {:.3} W",
            r.energy.mean_power_w,
            total / r.window.duration_s
        ));
    }
    if let Some(a) = r.energy.adjusted_j {
        if a < 0.0 || a > total {
            p.push(format!(
                "energy_adjusted_j {a:.3} J is outside [0, total_energy_j {total:.3} J]"
            ));
        } else if let Some(w) = r.baselines.device_power_w {
            let want = (total - w * r.window.duration_s).max(0.0);
            if !close(a, want) && (a - want).abs() > 1e-6 {
                p.push(format!(
                    "energy_adjusted_j {a:.3} J is not max(0, total - baseline_power_w x duration_s) = {want:.3} J"
                ));
            }
        }
    }
    if let Some(a) = r.energy.adjusted_resident_j {
        if a > total {
            p.push(format!(
                "energy_adjusted_resident_j {a:.3} J is above total_energy_j {total:.3} J"
            ));
        }
    }
    if !r.gpus.is_empty() {
        let sum: f64 = r.gpus.iter().map(|g| g.total_energy_j).sum();
        if !close(sum, total) {
            p.push(format!(
                "the GPUs' energies sum to {sum:.3} J, not total_energy_j {total:.3} J"
            ));
        }
    }
    verdict(
        "energy",
        p,
        format!("{total:.3} J over {:.3} s", r.window.duration_s),
    )
}

/// `n_prompts`, `max_input_tokens` and `max_output_tokens` from the config, where set.
fn task_limits(config: Option<&Value>) -> (Option<u64>, Option<u64>, Option<u64>) {
    let get = |path: &str| {
        config
            .and_then(|c| c.get_path(path))
            .and_then(Value::as_i64)
            .and_then(|v| u64::try_from(v).ok())
    };
    (
        get("task.dataset.n_prompts"),
        get("task.max_input_tokens"),
        get("task.max_output_tokens"),
    )
}

fn tokens(r: &RunResult, config: Option<&Value>) -> Check {
    let mut p = Vec::new();
    let (n_prompts, max_in, max_out) = task_limits(config);
    if r.throughput.output_tokens == 0 {
        p.push("output_tokens is 0".to_string());
    }
    if r.throughput.input_tokens == 0 {
        p.push("input_tokens is 0".to_string());
    }
    if let Some(n) = n_prompts {
        if r.throughput.n_prompts != n {
            p.push(format!(
                "{} prompts were run, the config's task.dataset.n_prompts is {n}",
                r.throughput.n_prompts
            ));
        }
    }
    let n = r.throughput.n_prompts;
    if let Some(m) = max_out {
        // The synthetic engine writes every token it may; a real engine may stop at
        // an end-of-sequence token, so its count is only bounded.
        if r.engine == "synthetic" && r.throughput.output_tokens != n * m {
            p.push(format!(
                "output_tokens {} is not n_prompts x max_output_tokens = {n} x {m} = {} (the synthetic engine writes them all)",
                r.throughput.output_tokens,
                n * m
            ));
        } else if r.throughput.output_tokens > n * m {
            p.push(format!(
                "output_tokens {} is above n_prompts x max_output_tokens = {n} x {m} = {}",
                r.throughput.output_tokens,
                n * m
            ));
        }
    }
    if let Some(m) = max_in {
        if r.throughput.input_tokens > n * m {
            p.push(format!(
                "input_tokens {} is above n_prompts x max_input_tokens = {n} x {m} = {}",
                r.throughput.input_tokens,
                n * m
            ));
        }
    }
    if r.throughput.output_tokens > 0 && r.window.duration_s > 0.0 {
        let out = r.throughput.output_tokens as f64;
        let jpt = r.energy.total_j / out;
        if !close(r.throughput.avg_energy_per_token_j, jpt) {
            p.push(format!(
                "avg_energy_per_token_j {:.6} is not total_energy_j / output_tokens = {jpt:.6}",
                r.throughput.avg_energy_per_token_j
            ));
        }
        let tps =
            (r.throughput.input_tokens + r.throughput.output_tokens) as f64 / r.window.duration_s;
        if !close(r.throughput.avg_tokens_per_second, tps) {
            p.push(format!(
                "avg_tokens_per_second {:.3} is not (input + output tokens) / duration_s = {tps:.3}",
                r.throughput.avg_tokens_per_second
            ));
        }
        let otps = out / r.window.duration_s;
        if !close(r.throughput.output_tokens_per_second, otps) {
            p.push(format!(
                "output_tokens_per_second {:.3} is not output_tokens / duration_s = {otps:.3}",
                r.throughput.output_tokens_per_second
            ));
        }
    }
    let against = match (n_prompts, max_out) {
        (Some(n), Some(m)) => format!(" ({n} prompts x at most {m})"),
        _ => String::new(),
    };
    verdict(
        "tokens",
        p,
        format!(
            "{} input, {} output tokens{against}",
            r.throughput.input_tokens, r.throughput.output_tokens
        ),
    )
}

fn timestamps(r: &RunResult) -> Check {
    let mut p = Vec::new();
    let started = parse_utc_ms(&r.started_at);
    let ended = parse_utc_ms(&r.ended_at);
    if started.is_none() {
        p.push(format!("started_at `{}` is not a UTC time", r.started_at));
    }
    if ended.is_none() {
        p.push(format!("ended_at `{}` is not a UTC time", r.ended_at));
    }
    if let (Some(s), Some(e)) = (started, ended) {
        if e < s {
            p.push(format!(
                "ended_at {} is before started_at {}",
                r.ended_at, r.started_at
            ));
        } else if r.window.duration_s > (e - s) as f64 / 1000.0 + TIME_TOLERANCE_S {
            p.push(format!(
                "the window ({:.3} s) is longer than the run ({:.3} s from started_at to ended_at)",
                r.window.duration_s,
                (e - s) as f64 / 1000.0
            ));
        }
    }
    if r.window.duration_s <= 0.0 {
        p.push(format!(
            "duration_s is {} s, not above 0",
            r.window.duration_s
        ));
    }
    // Results from before the monotonic window was recorded have 0 in both.
    let (w0, w1) = (r.window.start_mono_ns, r.window.end_mono_ns);
    if (w0, w1) != (0, 0) {
        if w1 <= w0 {
            p.push(format!(
                "window_end_mono_ns {w1} is not after window_start_mono_ns {w0}"
            ));
        } else {
            let mono_s = (w1 - w0) as f64 / 1e9;
            if (mono_s - r.window.duration_s).abs() > TIME_TOLERANCE_S {
                p.push(format!(
                    "duration_s {:.6} s differs from the monotonic window {mono_s:.6} s",
                    r.window.duration_s
                ));
            }
        }
    }
    if let Some(t) = r
        .window
        .timeseries
        .get("t_s")
        .and_then(serde_json::Value::as_array)
    {
        let ts: Vec<f64> = t.iter().filter_map(serde_json::Value::as_f64).collect();
        if ts.windows(2).any(|w| w[1] < w[0]) {
            p.push("the timeseries' t_s goes backwards".to_string());
        }
        if let Some(bad) = ts
            .iter()
            .find(|&&x| x < 0.0 || x > r.window.duration_s + TIME_TOLERANCE_S)
        {
            p.push(format!(
                "a timeseries point at t_s {bad} s is outside the window [0, {:.3} s]",
                r.window.duration_s
            ));
        }
    }
    if let (Some(b), Some(e)) = (r.baselines.device.as_ref(), ended) {
        if parse_utc_ms(&b.measured_at).is_some_and(|m| m > e) {
            p.push(format!(
                "the device baseline was measured at {}, after the run ended ({})",
                b.measured_at, r.ended_at
            ));
        }
    }
    verdict(
        "timestamps",
        p,
        format!("{} to {}", r.started_at, r.ended_at),
    )
}

fn baselines(r: &RunResult) -> Check {
    if r.baselines.device.is_none() && r.baselines.resident.is_none() {
        return Check {
            name: "baselines",
            verdict: Verdict::Skip,
            reason: "no baseline measured (measurement.baseline.enabled: false)".into(),
        };
    }
    let mut p = Vec::new();
    let n_gpus = r.gpu_indices.len().max(1) as f64;
    let per_gpu = if n_gpus > 1.0 {
        format!(" ({} GPUs)", n_gpus as usize)
    } else {
        String::new()
    };
    let in_range = |what: &str, w: f64, (lo, hi): (f64, f64), p: &mut Vec<String>| {
        if !(lo * n_gpus..=hi * n_gpus).contains(&w) {
            p.push(format!(
                "{what} {w:.1} W is outside the plausible {:.0}-{:.0} W{per_gpu}",
                lo * n_gpus,
                hi * n_gpus
            ));
        }
    };
    let device = r.baselines.device.as_ref().map(|b| b.mean_power_w);
    let resident = r.baselines.resident.as_ref().map(|b| b.mean_power_w);
    if let Some(d) = device {
        in_range("the device idle", d, DEVICE_IDLE_RANGE_W, &mut p);
        if let Some(w) = r.baselines.device_power_w {
            if !close(w, d) {
                p.push(format!(
                    "baseline_power_w {w:.3} W is not the device baseline's mean {d:.3} W"
                ));
            }
        }
        if r.energy.mean_power_w > 0.0 && d >= r.energy.mean_power_w {
            p.push(format!(
                "the device idle {d:.1} W is not below the run's mean power {:.1} W",
                r.energy.mean_power_w
            ));
        }
    }
    if let Some(res) = resident {
        in_range("the resident idle", res, RESIDENT_IDLE_RANGE_W, &mut p);
        if let Some(d) = device {
            if res < d - RESIDENT_BELOW_DEVICE_W * n_gpus {
                p.push(format!(
                    "the resident idle {res:.1} W is more than {:.0} W below the device idle {d:.1} W",
                    RESIDENT_BELOW_DEVICE_W * n_gpus
                ));
            }
        }
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |w| format!("{w:.1} W"));
    verdict(
        "baselines",
        p,
        format!(
            "device idle {}, resident idle {}{per_gpu}",
            show(device),
            show(resident)
        ),
    )
}

fn window(r: &RunResult) -> Check {
    let mut p = Vec::new();
    let min_s = (MIN_WINDOW_COUNTER_STEPS * COUNTER_STEP_NS) as f64 / 1e9;
    if r.window.duration_s < min_s {
        p.push(format!(
            "the window is {:.3} s, shorter than {MIN_WINDOW_COUNTER_STEPS} energy-counter steps ({min_s:.1} s): the counter can barely see it",
            r.window.duration_s
        ));
    }
    if r.window.short {
        p.push("the worker flagged it short_window".to_string());
    }
    if r.window.n_power_samples < 2 {
        p.push(format!(
            "{} power sample(s) in the window, fewer than 2",
            r.window.n_power_samples
        ));
    }
    verdict(
        "window",
        p,
        format!(
            "{:.3} s, {} power samples",
            r.window.duration_s, r.window.n_power_samples
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        BaselineRecord, Baselines, EnergyFigures, GpuFigures, MeasuredWindow, Throughput,
    };
    use serde_json::json;

    /// The config of a run of 4 prompts of at most 32 input and exactly 8 output tokens.
    fn config() -> Value {
        crate::pyjson::parse(
            r#"{"task": {"model": "m", "dataset": {"n_prompts": 4}, "max_input_tokens": 32, "max_output_tokens": 8}, "engine": "synthetic"}"#,
        )
        .unwrap()
    }

    /// A consistent result: 100 J over 0.5 s, 4 x 8 output tokens, baselines 70 and 110 W.
    fn good() -> RunResult {
        let baseline = |kind: &str, w: f64| BaselineRecord {
            kind: kind.into(),
            mean_power_w: w,
            measured_at: "2026-01-01T00:00:00.000Z".into(),
            ..Default::default()
        };
        RunResult {
            engine: "synthetic".into(),
            started_at: "2026-01-01T00:00:01.000Z".into(),
            ended_at: "2026-01-01T00:00:03.500Z".into(),
            gpu_indices: vec![0],
            energy: EnergyFigures {
                total_j: 100.0,
                mean_power_w: 200.0,
                adjusted_j: Some(65.0),
                adjusted_resident_j: Some(45.0),
                ..Default::default()
            },
            baselines: Baselines {
                device_power_w: Some(70.0),
                device: Some(baseline("device", 70.0)),
                resident: Some(baseline("resident", 110.0)),
            },
            throughput: Throughput {
                n_prompts: 4,
                input_tokens: 100,
                output_tokens: 32,
                avg_energy_per_token_j: 100.0 / 32.0,
                avg_tokens_per_second: 132.0 / 0.5,
                output_tokens_per_second: 64.0,
                ..Default::default()
            },
            window: MeasuredWindow {
                duration_s: 0.5,
                start_mono_ns: 1_000_000_000,
                end_mono_ns: 1_500_000_000,
                n_power_samples: 10,
                timeseries: json!({"t_s": [0.025, 0.075, 0.475], "power_w": [200.0, 201.0, 199.0]}),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn run(r: &RunResult) -> Vec<Check> {
        validate("done", Some(r), Some(&config()))
    }

    fn get<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_consistent_run_passes_every_check() {
        let checks = run(&good());
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(names, CHECKS);
        for c in &checks {
            assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
            assert!(!c.reason.contains('\n'), "{c:?}");
        }
        assert_eq!(overall(&checks), Verdict::Pass);
    }

    /// Breaks one fact of [`good`].
    type Break = fn(&mut RunResult);

    #[test]
    fn each_check_fails_on_its_own_fact() {
        let cases: Vec<(&str, Break, &str)> = vec![
            ("finite", |r| r.thermal.max_temp_c = f64::NAN, "max_temp_c"),
            (
                "energy",
                |r| {
                    r.energy.total_j = 0.0;
                    r.energy.mean_power_w = 0.0;
                    r.throughput.avg_energy_per_token_j = 0.0;
                    r.energy.adjusted_j = None;
                    r.energy.adjusted_resident_j = None;
                },
                "total_energy_j is 0 J",
            ),
            (
                "energy",
                |r| r.energy.mean_power_w = 150.0,
                "mean_power_w 150.000 W is not",
            ),
            (
                "energy",
                |r| r.energy.adjusted_j = Some(120.0),
                "outside [0, total_energy_j",
            ),
            (
                "energy",
                |r| r.energy.adjusted_j = Some(50.0),
                "is not max(0, total",
            ),
            (
                "energy",
                |r| {
                    r.gpu_indices = vec![0, 1];
                    r.gpus = vec![
                        GpuFigures {
                            total_energy_j: 40.0,
                            ..Default::default()
                        },
                        GpuFigures {
                            total_energy_j: 40.0,
                            ..Default::default()
                        },
                    ];
                },
                "sum to 80.000 J",
            ),
            (
                "tokens",
                |r| r.throughput.output_tokens = 30,
                "output_tokens 30 is not n_prompts x max_output_tokens = 4 x 8 = 32",
            ),
            (
                "tokens",
                |r| r.throughput.n_prompts = 3,
                "3 prompts were run",
            ),
            (
                "tokens",
                |r| r.throughput.input_tokens = 200,
                "input_tokens 200 is above",
            ),
            (
                "tokens",
                |r| r.throughput.avg_energy_per_token_j = 1.0,
                "avg_energy_per_token_j",
            ),
            (
                "tokens",
                |r| r.throughput.avg_tokens_per_second = 1.0,
                "avg_tokens_per_second",
            ),
            (
                "timestamps",
                |r| r.ended_at = "2026-01-01T00:00:00.500Z".into(),
                "is before started_at",
            ),
            (
                "timestamps",
                |r| r.ended_at = "soon".into(),
                "not a UTC time",
            ),
            (
                "timestamps",
                |r| r.window.end_mono_ns = 900_000_000,
                "is not after window_start_mono_ns",
            ),
            (
                "timestamps",
                |r| r.window.end_mono_ns = 1_600_000_000,
                "differs from the monotonic window",
            ),
            (
                "timestamps",
                |r| r.window.timeseries = json!({"t_s": [0.3, 0.2]}),
                "goes backwards",
            ),
            (
                "timestamps",
                |r| r.window.timeseries = json!({"t_s": [0.2, 0.7]}),
                "outside the window",
            ),
            (
                "timestamps",
                |r| {
                    r.baselines.device.as_mut().unwrap().measured_at = "2026-01-01T00:01:00Z".into()
                },
                "after the run ended",
            ),
            (
                "baselines",
                |r| {
                    r.baselines.device.as_mut().unwrap().mean_power_w = 2.0;
                    r.baselines.device_power_w = Some(2.0);
                    r.energy.adjusted_j = Some(99.0);
                },
                "the device idle 2.0 W is outside the plausible 5-300 W",
            ),
            (
                "baselines",
                |r| r.baselines.resident.as_mut().unwrap().mean_power_w = 900.0,
                "the resident idle 900.0 W is outside",
            ),
            (
                "baselines",
                |r| r.baselines.resident.as_mut().unwrap().mean_power_w = 60.0,
                "more than 5 W below the device idle",
            ),
            (
                "baselines",
                |r| {
                    r.baselines.device.as_mut().unwrap().mean_power_w = 250.0;
                    r.baselines.device_power_w = Some(250.0);
                    r.energy.adjusted_j = Some(0.0);
                    r.baselines.resident = None;
                },
                "not below the run's mean power",
            ),
            (
                "baselines",
                |r| {
                    r.baselines.device_power_w = Some(71.0);
                    r.energy.adjusted_j = Some(64.5);
                },
                "baseline_power_w 71.000 W is not",
            ),
            (
                "window",
                |r| {
                    r.window.duration_s = 0.05;
                    r.energy.mean_power_w = 2000.0;
                    r.energy.adjusted_j = Some(96.5);
                    r.throughput.avg_tokens_per_second = 132.0 / 0.05;
                    r.throughput.output_tokens_per_second = 32.0 / 0.05;
                    r.window.end_mono_ns = 1_050_000_000;
                    r.window.timeseries = json!({});
                },
                "shorter than 2 energy-counter steps (0.2 s)",
            ),
            ("window", |r| r.window.short = true, "short_window"),
            ("window", |r| r.window.n_power_samples = 1, "fewer than 2"),
        ];
        for (name, breaks, needle) in cases {
            let mut r = good();
            breaks(&mut r);
            let checks = run(&r);
            let c = get(&checks, name);
            assert_eq!(c.verdict, Verdict::Fail, "{name} ({needle}): {checks:#?}");
            assert!(
                c.reason.contains(needle),
                "{name}: {:?} lacks {needle:?}",
                c.reason
            );
            assert_eq!(overall(&checks), Verdict::Fail);
            for other in checks.iter().filter(|c| c.name != name) {
                assert_eq!(
                    other.verdict,
                    Verdict::Pass,
                    "breaking {name} ({needle}) broke {other:?} too"
                );
            }
        }
    }

    #[test]
    fn a_real_engine_may_stop_early_but_not_write_more() {
        let mut r = good();
        r.engine = "vllm".into();
        r.throughput.output_tokens = 20;
        r.throughput.avg_energy_per_token_j = 5.0;
        r.throughput.avg_tokens_per_second = 240.0;
        r.throughput.output_tokens_per_second = 40.0;
        assert_eq!(get(&run(&r), "tokens").verdict, Verdict::Pass);
        r.throughput.output_tokens = 40;
        r.throughput.avg_energy_per_token_j = 2.5;
        r.throughput.avg_tokens_per_second = 280.0;
        r.throughput.output_tokens_per_second = 80.0;
        let checks = run(&r);
        let c = get(&checks, "tokens");
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.reason.contains("above n_prompts x max_output_tokens"),
            "{c:?}"
        );
    }

    #[test]
    fn missing_inputs_skip_rather_than_fail() {
        // No baseline measured at all: the baselines check is skipped.
        let mut r = good();
        r.baselines.device = None;
        r.baselines.device_power_w = None;
        r.energy.adjusted_j = None;
        r.baselines.resident = None;
        let checks = run(&r);
        assert_eq!(get(&checks, "baselines").verdict, Verdict::Skip);
        assert_eq!(overall(&checks), Verdict::Pass);
        // A config that cannot be read: the tokens are checked for what is left.
        let checks = validate("done", Some(&good()), None);
        assert_eq!(get(&checks, "tokens").verdict, Verdict::Pass);
        // Results from before the monotonic window: not held against them.
        let mut r = good();
        (r.window.start_mono_ns, r.window.end_mono_ns) = (0, 0);
        assert_eq!(get(&run(&r), "timestamps").verdict, Verdict::Pass);
        // A multi-GPU slot's idle is the sum over its GPUs: 2 x 300 W is plausible.
        let mut r = good();
        r.gpu_indices = vec![0, 1];
        r.baselines.device.as_mut().unwrap().mean_power_w = 180.0;
        r.baselines.device_power_w = Some(180.0);
        r.energy.adjusted_j = Some(10.0);
        r.baselines.resident.as_mut().unwrap().mean_power_w = 190.0;
        assert_eq!(get(&run(&r), "baselines").verdict, Verdict::Pass);
    }

    #[test]
    fn runs_without_a_result() {
        for state in ["pending", "leased", "failed", "cancelled"] {
            let checks = validate(state, None, Some(&config()));
            assert_eq!(checks.len(), CHECKS.len());
            assert!(checks.iter().all(|c| c.verdict == Verdict::Skip), "{state}");
            assert!(checks[0].reason.contains(state));
            assert_eq!(overall(&checks), Verdict::Skip);
        }
        let checks = validate("done", None, Some(&config()));
        assert_eq!(checks[0].verdict, Verdict::Fail);
        assert_eq!(overall(&checks), Verdict::Fail);
        // A result on a run that is not done is as wrong.
        let checks = validate("failed", Some(&good()), Some(&config()));
        assert_eq!(checks[0].verdict, Verdict::Fail);
    }

    #[test]
    fn every_check_is_documented_in_results_md() {
        let doc = include_str!("../../docs/results.md");
        let section = doc
            .split("## Validation")
            .nth(1)
            .expect("docs/results.md has a \"## Validation\" section");
        for name in CHECKS {
            assert!(
                section.contains(&format!("| `{name}` |")),
                "docs/results.md's validation table has no row for `{name}`"
            );
        }
        for threshold in ["0.2 s", "5-300 W", "5-400 W", "5 W", "0.1 %", "1 ms"] {
            assert!(
                section.contains(threshold),
                "docs/results.md's validation section does not state {threshold}"
            );
        }
    }
}
