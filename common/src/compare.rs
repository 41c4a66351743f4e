//! Comparing two sets of cycles: two configurations, or one configuration in two
//! campaigns (`lem-coord compare`).
//!
//! The difference of the means (B - A) with a 95 % bootstrap confidence interval:
//! each side resampled on its own (they are independent measurements), 1,000 times,
//! seeded, percentile interval. The verdict is plain: where the interval excludes
//! zero, B is better or worse than A for that measure (lower is better for energy,
//! latency and power, higher for throughput); where it holds zero, there is no
//! significant difference at that level; where a side has fewer than two cycles,
//! nothing can be said. Pure: no IO.

use serde::Serialize;

use crate::aggregate::Metric;
use crate::stats::{self, XorShift64};

/// Resamples drawn for a difference's interval.
pub const RESAMPLES: usize = 1000;

/// What the difference says about B against A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    NoSignificantDifference,
    /// A side has fewer than two values: no interval can be drawn.
    TooFewCycles,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::NoSignificantDifference => "no significant difference",
            Verdict::TooFewCycles => "too few cycles to tell",
        }
    }
}

/// One measure compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    pub metric: Metric,
    pub n_a: usize,
    pub n_b: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    /// mean_b - mean_a.
    pub diff: f64,
    /// diff / mean_a, in percent (`None` where mean_a is 0).
    pub diff_pct: Option<f64>,
    /// 95 % bootstrap interval of `diff` (`None` with fewer than two values a side).
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
    pub verdict: Verdict,
}

/// Compares `b` against `a` for `metric`; `None` when either side is empty or holds a
/// non-finite value.
pub fn difference(metric: Metric, a: &[f64], b: &[f64], seed: u64) -> Option<Difference> {
    let (mean_a, mean_b) = (stats::mean(a)?, stats::mean(b)?);
    let diff = mean_b - mean_a;
    let diff_pct = (mean_a != 0.0).then(|| 100.0 * diff / mean_a.abs());
    let ci = (a.len() >= 2 && b.len() >= 2).then(|| bootstrap_diff(a, b, seed));
    let verdict = match ci {
        None => Verdict::TooFewCycles,
        Some((lo, hi)) if lo > 0.0 || hi < 0.0 => {
            // The interval excludes 0: B is higher (lo > 0) or lower than A.
            if (lo > 0.0) == metric.higher_is_better() {
                Verdict::Better
            } else {
                Verdict::Worse
            }
        }
        Some(_) => Verdict::NoSignificantDifference,
    };
    Some(Difference {
        metric,
        n_a: a.len(),
        n_b: b.len(),
        mean_a,
        mean_b,
        diff,
        diff_pct,
        ci95_low: ci.map(|c| c.0),
        ci95_high: ci.map(|c| c.1),
        verdict,
    })
}

/// The percentile interval of mean(b*) - mean(a*) over [`RESAMPLES`] independent
/// resamples of each side.
fn bootstrap_diff(a: &[f64], b: &[f64], seed: u64) -> (f64, f64) {
    let mut rng = XorShift64::new(seed);
    let mut diffs: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let mb = rng.resample_mean(b);
            mb - rng.resample_mean(a)
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    (
        stats::percentile_sorted(&diffs, 0.025),
        stats::percentile_sorted(&diffs, 0.975),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_difference_gets_a_verdict_in_the_right_direction() {
        let a = [1.00, 1.02, 0.98, 1.01];
        let b = [0.50, 0.51, 0.49, 0.50];
        let d = difference(Metric::EnergyPerToken, &a, &b, 1).unwrap();
        assert_eq!(d.verdict, Verdict::Better, "less energy is better");
        assert!((d.diff + 0.5025).abs() < 1e-12);
        assert!(d.ci95_high.unwrap() < 0.0);
        assert!((d.diff_pct.unwrap() + 50.0).abs() < 0.5);
        // The same numbers as throughput: higher b is better, lower is worse.
        let t = difference(Metric::TokensPerSecond, &a, &b, 1).unwrap();
        assert_eq!(t.verdict, Verdict::Worse);
        let t = difference(Metric::TokensPerSecond, &b, &a, 1).unwrap();
        assert_eq!(t.verdict, Verdict::Better);
    }

    #[test]
    fn overlapping_noise_is_no_significant_difference() {
        let a = [1.0, 1.2, 0.8, 1.1, 0.9];
        let b = [1.05, 0.85, 1.15, 0.95, 1.0];
        let d = difference(Metric::EnergyPerToken, &a, &b, 7).unwrap();
        assert_eq!(d.verdict, Verdict::NoSignificantDifference);
        assert!(d.ci95_low.unwrap() < 0.0 && d.ci95_high.unwrap() > 0.0);
        // Seeded: the same interval again.
        assert_eq!(difference(Metric::EnergyPerToken, &a, &b, 7), Some(d));
    }

    #[test]
    fn one_cycle_a_side_cannot_be_judged() {
        let d = difference(Metric::EnergyPerToken, &[1.0], &[0.5, 0.6], 1).unwrap();
        assert_eq!(d.verdict, Verdict::TooFewCycles);
        assert_eq!(d.ci95_low, None);
        assert_eq!(difference(Metric::EnergyPerToken, &[], &[1.0], 1), None);
    }
}
