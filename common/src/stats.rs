//! Statistics across the cycles of an experiment: centre, spread, percentiles, a bootstrap
//! confidence interval and outliers.
//!
//! Why this exists: one measurement of a short inference run is noisy (sensor blind spots,
//! thermal state, scheduling), so every experiment is repeated and reported as a
//! distribution. A high coefficient of variation (CV > 10%) or an outlying cycle is flagged
//! rather than averaged away.
//!
//! Conventions: every function returns `None` (or an empty result) for empty input or for
//! input holding a non-finite value, instead of a NaN that would travel into a report.
//! Percentiles follow NumPy's default (`method="linear"`), so figures match an analysis
//! notebook. Randomness (the bootstrap) comes from a seeded [`XorShift64`], so a summary is
//! reproducible from its inputs.

use serde::{Deserialize, Serialize};

/// CV (sample std / mean) above which a set of cycles is flagged as too variable.
pub const CV_FLAG_THRESHOLD: f64 = 0.10;

/// Resamples drawn for the percentile bootstrap in [`summarize`].
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Multiple of the interquartile range beyond the quartiles at which a value is an outlier.
pub const OUTLIER_IQR_FACTOR: f64 = 1.5;

/// A small deterministic xorshift64 generator (Marsaglia 2003): reproducible, not secure.
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator from `seed`; seed 0 (a fixed point of xorshift) is replaced by a constant.
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// A uniform index in `0..n` (`n > 0`), by multiply-shift (no modulo bias to speak of).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

fn usable(values: &[f64]) -> bool {
    !values.is_empty() && values.iter().all(|v| v.is_finite())
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Linear-interpolated percentile of already sorted, non-empty, finite values.
fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Arithmetic mean.
pub fn mean(values: &[f64]) -> Option<f64> {
    usable(values).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Median (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 0.5)
}

fn sum_sq_dev(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    Some(values.iter().map(|v| (v - m) * (v - m)).sum())
}

/// Population standard deviation (divides by n; NumPy's `std(ddof=0)`).
pub fn std_population(values: &[f64]) -> Option<f64> {
    Some((sum_sq_dev(values)? / values.len() as f64).sqrt())
}

/// Sample standard deviation (divides by n - 1; NumPy's `std(ddof=1)`); `None` for n < 2.
pub fn std_sample(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    Some((sum_sq_dev(values)? / (values.len() - 1) as f64).sqrt())
}

/// Coefficient of variation: sample std / mean. `None` for n < 2 or mean <= 0.
pub fn cv(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    if m <= 0.0 {
        return None;
    }
    Some(std_sample(values)? / m)
}

/// The `q` quantile (`0 <= q <= 1`) with NumPy's default linear interpolation:
/// for sorted `x`, `h = (n - 1) q` and the result is `x[floor h] + frac(h) (x[floor h + 1] - x[floor h])`.
/// `None` for empty or non-finite input, or `q` outside `[0, 1]`.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if !usable(values) || !(0.0..=1.0).contains(&q) {
        return None;
    }
    Some(percentile_sorted(&sorted(values), q))
}

/// A percentile-bootstrap confidence interval for the mean: `resamples` resamples with
/// replacement, and the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of
/// their means. Deterministic for a given `seed`. `None` for empty or non-finite input,
/// zero resamples, or `confidence` outside `(0, 1)`.
pub fn bootstrap_ci(
    values: &[f64],
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if !usable(values) || resamples == 0 || !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    let n = values.len();
    let mut rng = XorShift64::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Some((
        percentile_sorted(&means, tail),
        percentile_sorted(&means, 1.0 - tail),
    ))
}

/// Indices of the values beyond [`OUTLIER_IQR_FACTOR`] interquartile ranges outside the
/// quartiles (Tukey's fences, quartiles as in [`percentile`]), in input order. A non-finite
/// value is always an outlier; the fences come from the finite values.
pub fn outliers(values: &[f64]) -> Vec<usize> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let fences = (!finite.is_empty()).then(|| {
        let s = sorted(&finite);
        let (q1, q3) = (percentile_sorted(&s, 0.25), percentile_sorted(&s, 0.75));
        let iqr = q3 - q1;
        (q1 - OUTLIER_IQR_FACTOR * iqr, q3 + OUTLIER_IQR_FACTOR * iqr)
    });
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| match fences {
            _ if !v.is_finite() => true,
            Some((lo, hi)) => **v < lo || **v > hi,
            None => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether a CV is above [`CV_FLAG_THRESHOLD`] (10%).
pub fn flag_high_cv(cv: f64) -> bool {
    cv > CV_FLAG_THRESHOLD
}

/// The distribution of one metric across cycles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    /// Sample standard deviation; `None` for a single value.
    pub std: Option<f64>,
    /// Sample std / mean; `None` for a single value or a mean <= 0.
    pub cv: Option<f64>,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// 95% percentile-bootstrap confidence interval for the mean ([`BOOTSTRAP_RESAMPLES`]).
    pub ci95_low: f64,
    pub ci95_high: f64,
    /// `cv` above [`CV_FLAG_THRESHOLD`].
    pub high_cv: bool,
    /// Indices of outlying cycles (see [`outliers`]).
    pub outliers: Vec<usize>,
}

/// Summarises `values` (one per cycle); `seed` drives the bootstrap. `None` for empty or
/// non-finite input.
pub fn summarize(values: &[f64], seed: u64) -> Option<Summary> {
    if !usable(values) {
        return None;
    }
    let s = sorted(values);
    let (ci95_low, ci95_high) = bootstrap_ci(values, BOOTSTRAP_RESAMPLES, 0.95, seed)?;
    let cv = cv(values);
    Some(Summary {
        n: values.len(),
        mean: mean(values)?,
        median: percentile_sorted(&s, 0.5),
        std: std_sample(values),
        cv,
        min: s[0],
        max: s[s.len() - 1],
        p50: percentile_sorted(&s, 0.5),
        p95: percentile_sorted(&s, 0.95),
        p99: percentile_sorted(&s, 0.99),
        ci95_low,
        ci95_high,
        high_cv: cv.is_some_and(flag_high_cv),
        outliers: outliers(values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn centre_and_spread() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(mean(&v), Some(2.5));
        assert_eq!(median(&v), Some(2.5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert!(close(std_population(&v).unwrap(), 1.25f64.sqrt()));
        assert!(close(std_sample(&v).unwrap(), (5.0f64 / 3.0).sqrt()));
        assert!(close(cv(&v).unwrap(), (5.0f64 / 3.0).sqrt() / 2.5));
        assert_eq!(std_population(&[7.0]), Some(0.0));
        assert_eq!(std_sample(&[7.0]), None);
        assert_eq!(cv(&[7.0]), None);
        assert_eq!(cv(&[-1.0, 1.0]), None);
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn percentiles_match_numpy() {
        // np.percentile([1, 2, 3, 4], 95) == 3.85
        assert!(close(
            percentile(&[1.0, 2.0, 3.0, 4.0], 0.95).unwrap(),
            3.85
        ));
        // np.percentile([[10, 7, 4], [3, 2, 1]], 50) == 3.5
        let a = [10.0, 7.0, 4.0, 3.0, 2.0, 1.0];
        assert!(close(percentile(&a, 0.5).unwrap(), 3.5));
        // np.percentile([10, 7, 4, 3, 2, 1], 25) == 2.25; 99 -> 9.85
        assert!(close(percentile(&a, 0.25).unwrap(), 2.25));
        assert!(close(percentile(&a, 0.99).unwrap(), 9.85));
        assert_eq!(percentile(&a, 0.0), Some(1.0));
        assert_eq!(percentile(&a, 1.0), Some(10.0));
        assert_eq!(percentile(&[5.0], 0.3), Some(5.0));
        assert_eq!(percentile(&a, 1.5), None);
        assert_eq!(percentile(&a, f64::NAN), None);
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn outliers_beyond_fences() {
        // q1 = 2, q3 = 4, IQR 2: fences -1 and 7.
        assert_eq!(outliers(&[1.0, 2.0, 100.0, 3.0, 4.0]), vec![2]);
        assert_eq!(outliers(&[1.0, 2.0, 3.0, 4.0, 5.0]), Vec::<usize>::new());
        assert_eq!(outliers(&[-50.0, 10.0, 10.5, 11.0, 10.2]), vec![0]);
        assert_eq!(outliers(&[1.0, f64::NAN, 1.0]), vec![1]);
        assert!(outliers(&[]).is_empty());
    }

    #[test]
    fn high_cv_flag() {
        assert!(!flag_high_cv(0.10));
        assert!(flag_high_cv(0.1001));
    }

    #[test]
    fn xorshift_is_seeded_and_in_range() {
        let mut a = XorShift64::new(42);
        let mut b = XorShift64::new(42);
        for _ in 0..100 {
            let x = a.below(7);
            assert_eq!(x, b.below(7));
            assert!(x < 7);
        }
        assert_ne!(XorShift64::new(0).next_u64(), 0);
    }

    #[test]
    fn bootstrap_ci_is_deterministic_and_sensible() {
        let v: Vec<f64> = (0..30).map(|i| 100.0 + ((i * 37) % 11) as f64).collect();
        let m = mean(&v).unwrap();
        let (lo, hi) = bootstrap_ci(&v, 2000, 0.95, 7).unwrap();
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        assert_eq!(bootstrap_ci(&v, 2000, 0.95, 7), Some((lo, hi)));
        // Roughly mean +- 1.96 sem.
        let sem = std_sample(&v).unwrap() / (v.len() as f64).sqrt();
        assert!((hi - lo) > 2.0 * 1.96 * sem * 0.8 && (hi - lo) < 2.0 * 1.96 * sem * 1.2);
        assert_eq!(
            bootstrap_ci(&[3.0, 3.0, 3.0], 100, 0.95, 1),
            Some((3.0, 3.0))
        );
        assert_eq!(bootstrap_ci(&[], 100, 0.95, 1), None);
        assert_eq!(bootstrap_ci(&v, 100, 1.0, 1), None);
    }

    #[test]
    fn summary() {
        let v = [10.0, 11.0, 9.0, 10.5, 30.0];
        let s = summarize(&v, 1).unwrap();
        assert_eq!(s.n, 5);
        assert!(close(s.mean, 14.1));
        assert_eq!(s.median, 10.5);
        assert_eq!(s.p50, 10.5);
        assert_eq!((s.min, s.max), (9.0, 30.0));
        // sorted [9, 10, 10.5, 11, 30]: h = 3.8 -> 11 + 0.8 * 19
        assert!(close(s.p95, 26.2));
        assert!(close(s.p99, 11.0 + 0.96 * 19.0));
        assert!(s.ci95_low < s.mean && s.mean < s.ci95_high);
        assert!(s.ci95_low >= 9.0 && s.ci95_high <= 30.0);
        assert!(s.high_cv);
        assert_eq!(s.outliers, vec![4]);
        assert_eq!(summarize(&v, 1), Some(s));

        let one = summarize(&[5.0], 3).unwrap();
        assert_eq!((one.std, one.cv, one.high_cv), (None, None, false));
        assert_eq!((one.ci95_low, one.ci95_high), (5.0, 5.0));
        assert_eq!(summarize(&[], 1), None);
    }
}
