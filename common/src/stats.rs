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

/// Resamples drawn for the bootstrap in [`summarize`].
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// The modified z-score (Iglewicz and Hoaglin 1993) beyond which [`robust_outliers`]
/// calls a value an outlier.
pub const MODIFIED_Z_LIMIT: f64 = 3.5;

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

    /// The mean of one bootstrap resample of `values` (non-empty): `values.len()`
    /// draws with replacement.
    pub fn resample_mean(&mut self, values: &[f64]) -> f64 {
        let n = values.len();
        (0..n).map(|_| values[self.below(n)]).sum::<f64>() / n as f64
    }
}

/// The means of `resamples` bootstrap resamples of `values` (non-empty), sorted.
fn bootstrap_means(values: &[f64], resamples: usize, seed: u64) -> Vec<f64> {
    let mut rng = XorShift64::new(seed);
    let mut means: Vec<f64> = (0..resamples).map(|_| rng.resample_mean(values)).collect();
    means.sort_by(f64::total_cmp);
    means
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
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
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
    let means = bootstrap_means(values, resamples, seed);
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
/// How [`Summary`]'s confidence interval was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CiMethod {
    /// Bias-corrected and accelerated bootstrap ([`bootstrap_bca_ci`]).
    Bca,
    /// Percentile bootstrap ([`bootstrap_ci`]): where BCa's bias correction is
    /// undefined (every resample on one side of the mean).
    Percentile,
    /// No interval: fewer than two values.
    None,
}

impl CiMethod {
    pub fn name(self) -> &'static str {
        match self {
            CiMethod::Bca => "bca",
            CiMethod::Percentile => "percentile",
            CiMethod::None => "none",
        }
    }
}

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
    /// 95 % bootstrap confidence interval for the mean ([`BOOTSTRAP_RESAMPLES`]
    /// resamples, seeded); `None` for fewer than two values.
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
    pub ci_method: CiMethod,
    /// `cv` above [`CV_FLAG_THRESHOLD`].
    pub high_cv: bool,
    /// Indices of outlying values (see [`robust_outliers`]).
    pub outliers: Vec<usize>,
}

/// Summarises `values` (one per cycle); `seed` drives the bootstrap. `None` for empty or
/// non-finite input. The interval is BCa where it is defined, else the percentile
/// interval, and none for a single value.
pub fn summarize(values: &[f64], seed: u64) -> Option<Summary> {
    if !usable(values) {
        return None;
    }
    let s = sorted(values);
    let (ci, ci_method) = if values.len() < 2 {
        (None, CiMethod::None)
    } else if let Some(ci) = bootstrap_bca_ci(values, BOOTSTRAP_RESAMPLES, 0.95, seed) {
        (Some(ci), CiMethod::Bca)
    } else {
        (
            bootstrap_ci(values, BOOTSTRAP_RESAMPLES, 0.95, seed),
            CiMethod::Percentile,
        )
    };
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
        ci95_low: ci.map(|c| c.0),
        ci95_high: ci.map(|c| c.1),
        ci_method,
        high_cv: cv.is_some_and(flag_high_cv),
        outliers: robust_outliers(values),
    })
}

/// The standard normal CDF, from `erf` (Abramowitz and Stegun 7.1.26, absolute error
/// below 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The standard normal quantile (Acklam's rational approximation, relative error below
/// 1.2e-9); `None` outside (0, 1).
pub fn normal_quantile(p: f64) -> Option<f64> {
    if !(p > 0.0 && p < 1.0) {
        return None;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        let r = (-2.0 * q.ln()).sqrt();
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    Some(if p < 0.024_25 {
        tail(p)
    } else if p > 1.0 - 0.024_25 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    })
}

/// Bias-corrected and accelerated (BCa) bootstrap confidence interval for the mean
/// (Efron 1987; Efron and Tibshirani 1993, ch. 14): the bootstrap means' percentiles at
/// levels moved by the bias correction `z0` (the share of resampled means below the
/// sample mean) and the acceleration `a` (the jackknife's skewness of the mean). It
/// corrects the percentile interval's coverage for skewed data at the cost of one pass
/// over the values. `None` for fewer than two values, non-finite input, or where `z0`
/// is undefined (every resampled mean on one side of the sample mean).
pub fn bootstrap_bca_ci(
    values: &[f64],
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if !usable(values) || values.len() < 2 || resamples == 0 {
        return None;
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    let n = values.len();
    let theta = mean(values)?;
    let means = bootstrap_means(values, resamples, seed);
    let below = means.iter().filter(|m| **m < theta).count() as f64;
    let equal = means.iter().filter(|m| **m == theta).count() as f64;
    let z0 = normal_quantile((below + 0.5 * equal) / resamples as f64)?;
    let total: f64 = values.iter().sum();
    let jack: Vec<f64> = values
        .iter()
        .map(|v| (total - v) / (n - 1) as f64)
        .collect();
    let jbar = jack.iter().sum::<f64>() / n as f64;
    let num: f64 = jack.iter().map(|j| (jbar - j).powi(3)).sum();
    let den: f64 = jack.iter().map(|j| (jbar - j).powi(2)).sum();
    let a = if den > 0.0 {
        num / (6.0 * den.powf(1.5))
    } else {
        0.0
    };
    let tail = (1.0 - confidence) / 2.0;
    let level = |p: f64| -> Option<f64> {
        let z = normal_quantile(p)?;
        let adj = z0 + (z0 + z) / (1.0 - a * (z0 + z));
        adj.is_finite().then(|| normal_cdf(adj).clamp(0.0, 1.0))
    };
    let (lo, hi) = (level(tail)?, level(1.0 - tail)?);
    Some((percentile_sorted(&means, lo), percentile_sorted(&means, hi)))
}

/// Indices of outlying values by the modified z-score (Iglewicz and Hoaglin 1993):
/// `0.6745 * |x - median| / MAD` above [`MODIFIED_Z_LIMIT`], MAD the median absolute
/// deviation. Robust: one wild cycle does not widen the rule that catches it, as it
/// widens a standard deviation. Where the MAD is 0 (more than half the values equal)
/// the mean absolute deviation times 1.2533 stands in for it (both estimate sigma for
/// normal data); where that is 0 too, nothing is an outlier. Fewer than three values
/// have no outliers. A non-finite value always is one.
pub fn robust_outliers(values: &[f64]) -> Vec<usize> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let scale = (finite.len() >= 3).then(|| {
        let med = percentile_sorted(&sorted(&finite), 0.5);
        let dev: Vec<f64> = finite.iter().map(|v| (v - med).abs()).collect();
        let mad = percentile_sorted(&sorted(&dev), 0.5);
        let scale = if mad > 0.0 {
            mad / 0.6745
        } else {
            1.253_314 * dev.iter().sum::<f64>() / dev.len() as f64
        };
        (med, scale)
    });
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| match scale {
            _ if !v.is_finite() => true,
            Some((med, scale)) if scale > 0.0 => (**v - med).abs() / scale > MODIFIED_Z_LIMIT,
            _ => false,
        })
        .map(|(i, _)| i)
        .collect()
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
        let (lo, hi) = (s.ci95_low.unwrap(), s.ci95_high.unwrap());
        assert!(lo < s.mean && s.mean < hi);
        assert!(lo >= 9.0 && hi <= 30.0);
        assert_eq!(s.ci_method, CiMethod::Bca);
        assert!(s.high_cv);
        assert_eq!(s.outliers, vec![4]);
        assert_eq!(summarize(&v, 1), Some(s));

        let one = summarize(&[5.0], 3).unwrap();
        assert_eq!((one.std, one.cv, one.high_cv), (None, None, false));
        assert_eq!((one.ci95_low, one.ci95_high), (None, None));
        assert_eq!(one.ci_method, CiMethod::None);
        // All equal: the bootstrap means all equal the mean, z0 = 0, a point interval.
        let flat = summarize(&[2.0, 2.0, 2.0], 3).unwrap();
        assert_eq!((flat.ci95_low, flat.ci95_high), (Some(2.0), Some(2.0)));
        assert_eq!(summarize(&[], 1), None);
    }

    #[test]
    fn normal_cdf_and_quantile() {
        for (x, p) in [
            (0.0, 0.5),
            (1.959_964, 0.975),
            (-1.644_854, 0.05),
            (2.326_348, 0.99),
        ] {
            assert!((normal_cdf(x) - p).abs() < 2e-7, "{x}");
            assert!((normal_quantile(p).unwrap() - x).abs() < 1e-5, "{p}");
        }
        assert!((normal_quantile(1e-6).unwrap() + 4.753_424).abs() < 1e-5);
        assert_eq!(normal_quantile(0.0), None);
        assert_eq!(normal_quantile(1.0), None);
    }

    #[test]
    fn bca_moves_with_skew_and_matches_percentile_when_symmetric() {
        // Symmetric values: z0 and a near 0, so BCa is close to the percentile interval.
        let sym: Vec<f64> = (0..40)
            .map(|i| 100.0 + ((i * 37) % 21) as f64 - 10.0)
            .collect();
        let (plo, phi) = bootstrap_ci(&sym, 1000, 0.95, 5).unwrap();
        let (blo, bhi) = bootstrap_bca_ci(&sym, 1000, 0.95, 5).unwrap();
        assert!(
            (plo - blo).abs() < 0.3 && (phi - bhi).abs() < 0.3,
            "{plo} {phi} {blo} {bhi}"
        );
        // Right-skewed values (a long upper tail): BCa shifts the interval up against
        // the percentile interval, the textbook behaviour (Efron and Tibshirani 14.3).
        let skew: Vec<f64> = (1..=30).map(|i| (i as f64 / 6.0).exp()).collect();
        let (plo, phi) = bootstrap_ci(&skew, 4000, 0.95, 9).unwrap();
        let (blo, bhi) = bootstrap_bca_ci(&skew, 4000, 0.95, 9).unwrap();
        assert!(blo > plo && bhi > phi, "{plo} {phi} {blo} {bhi}");
        let m = mean(&skew).unwrap();
        assert!(blo < m && m < bhi);
        // Seeded: the same interval twice.
        assert_eq!(bootstrap_bca_ci(&skew, 4000, 0.95, 9), Some((blo, bhi)));
        assert_eq!(bootstrap_bca_ci(&[1.0], 100, 0.95, 1), None);
    }

    #[test]
    fn robust_outliers_catch_one_wild_cycle() {
        assert_eq!(robust_outliers(&[10.0, 10.2, 9.9, 10.1, 14.0]), vec![4]);
        // Three cycles, one wild.
        assert_eq!(robust_outliers(&[1.00, 1.01, 1.60]), vec![2]);
        // Normal spread is not an outlier.
        assert!(robust_outliers(&[10.0, 10.5, 9.5, 10.2, 9.8]).is_empty());
        // MAD 0 (most values equal): the mean absolute deviation stands in.
        assert_eq!(robust_outliers(&[5.0, 5.0, 5.0, 5.0, 9.0]), vec![4]);
        assert!(robust_outliers(&[5.0, 5.0, 5.0]).is_empty());
        // Two values: no rule.
        assert!(robust_outliers(&[1.0, 100.0]).is_empty());
        assert_eq!(robust_outliers(&[1.0, f64::NAN, 1.0]), vec![1]);
    }
}
