//! The thermal gate's decision: may the next run start, given the GPU's recent
//! temperatures?
//!
//! Before each run the worker waits the study's gap, then until the GPU is back near
//! its idle temperature, so that one run's heat does not slow or inflate the next
//! (pitfall 7 of the research seeds). "Idle" is ambiguous while a model stays
//! resident: a GPU holding a CUDA context and weights idles warmer than the device
//! idle the baseline saw. So the gate also opens once the temperature has stopped
//! falling (a plateau): the GPU has reached the idle it can reach. A maximum wait
//! bounds everything. Pure: the caller passes the samples and the time.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// Open when the temperature is within this of the reference idle temperature.
    pub margin_c: f64,
    /// Length of the window over which the cooling rate is judged.
    pub plateau_window_s: f64,
    /// Cooling slower than this (°C/s) counts as a plateau.
    pub plateau_rate_c_per_s: f64,
    /// Never wait longer than this after the gap.
    pub max_wait_s: f64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            margin_c: 3.0,
            plateau_window_s: 4.0,
            plateau_rate_c_per_s: 0.15,
            max_wait_s: 300.0,
        }
    }
}

/// Why the gate opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateReason {
    /// Within the margin of the reference idle temperature.
    Cooled,
    /// The temperature stopped falling above the reference (a resident model's idle).
    Plateau,
    /// The maximum wait passed.
    Timeout,
    /// No reference temperature is known yet (no baseline was taken).
    NoReference,
}

impl GateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GateReason::Cooled => "cooled",
            GateReason::Plateau => "plateau",
            GateReason::Timeout => "timeout",
            GateReason::NoReference => "no_reference",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GateDecision {
    Wait,
    Open(GateReason),
}

/// Decides from `(t_mono_ns, temp_c)` samples taken since the gate started waiting
/// (`started_ns`, after the gap) whether the run may start at `now_ns`.
pub fn decide(
    samples: &[(u64, f64)],
    reference_c: Option<f64>,
    started_ns: u64,
    now_ns: u64,
    policy: &GatePolicy,
) -> GateDecision {
    let Some(reference) = reference_c else {
        return GateDecision::Open(GateReason::NoReference);
    };
    if let Some(&(_, t)) = samples.last() {
        if t <= reference + policy.margin_c {
            return GateDecision::Open(GateReason::Cooled);
        }
    }
    let waited_s = now_ns.saturating_sub(started_ns) as f64 / 1e9;
    if waited_s >= policy.max_wait_s {
        return GateDecision::Open(GateReason::Timeout);
    }
    let window_ns = (policy.plateau_window_s * 1e9) as u64;
    if waited_s >= policy.plateau_window_s {
        let from = now_ns.saturating_sub(window_ns);
        let recent: Vec<&(u64, f64)> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t >= started_ns)
            .collect();
        if let (Some(first), Some(last)) = (recent.first(), recent.last()) {
            let span_s = (last.0 - first.0) as f64 / 1e9;
            if span_s >= policy.plateau_window_s * 0.75 {
                let rate = (first.1 - last.1) / span_s;
                if rate < policy.plateau_rate_c_per_s {
                    return GateDecision::Open(GateReason::Plateau);
                }
            }
        }
    }
    GateDecision::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cooling(t0: u64, n: usize, from_c: f64, to_c: f64, tau_s: f64) -> Vec<(u64, f64)> {
        (0..n)
            .map(|i| {
                let t = i as f64 * 0.05;
                (
                    t0 + (t * 1e9) as u64,
                    to_c + (from_c - to_c) * (-t / tau_s).exp(),
                )
            })
            .collect()
    }

    #[test]
    fn opens_when_cool_enough() {
        let p = GatePolicy::default();
        let s = vec![(10 * S, 41.0)];
        assert_eq!(
            decide(&s, Some(39.0), 10 * S, 10 * S, &p),
            GateDecision::Open(GateReason::Cooled)
        );
    }

    #[test]
    fn waits_while_cooling_fast_then_opens_on_plateau_above_reference() {
        let p = GatePolicy::default();
        // Cooling from 60 C toward a resident idle of 45 C; device idle was 39 C.
        let s = cooling(0, 2000, 60.0, 45.0, 8.0);
        let at = |secs: f64| (secs * 1e9) as u64;
        let upto = |secs: f64| -> Vec<(u64, f64)> {
            s.iter().cloned().filter(|(t, _)| *t <= at(secs)).collect()
        };
        assert_eq!(
            decide(&upto(2.0), Some(39.0), 0, at(2.0), &p),
            GateDecision::Wait
        );
        assert_eq!(
            decide(&upto(6.0), Some(39.0), 0, at(6.0), &p),
            GateDecision::Wait
        );
        let open_at = (1..2000)
            .map(|i| i as f64 * 0.05)
            .find(|&t| decide(&upto(t), Some(39.0), 0, at(t), &p) != GateDecision::Wait)
            .unwrap();
        assert_eq!(
            decide(&upto(open_at), Some(39.0), 0, at(open_at), &p),
            GateDecision::Open(GateReason::Plateau)
        );
        // Opens once the remaining excess is small: rate = excess / tau < 0.15 C/s.
        let excess = 15.0 * (-open_at / 8.0f64).exp();
        assert!(
            excess < 2.0,
            "opened with {excess:.2} C still to shed at {open_at} s"
        );
    }

    #[test]
    fn times_out() {
        let p = GatePolicy {
            max_wait_s: 5.0,
            ..Default::default()
        };
        // Heating: never cooled, no plateau in the cooling sense... but rising counts as not cooling.
        let s = vec![(0, 80.0), (6 * S, 80.0)];
        assert_eq!(
            decide(&s, Some(39.0), 0, 6 * S, &p),
            GateDecision::Open(GateReason::Timeout)
        );
    }

    #[test]
    fn no_reference_opens_at_once() {
        let p = GatePolicy::default();
        assert_eq!(
            decide(&[], None, 0, 0, &p),
            GateDecision::Open(GateReason::NoReference)
        );
    }
}
