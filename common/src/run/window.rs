//! A measured window's telemetry, from the samples the worker's sampler took: the
//! samples inside it, its downsampled timeseries, and what the harness's versions say.
//! Pure: samples in, figures out.

use super::sample::TelemetrySample;

/// The library versions a run's harness reported (`versions` in its result), kept in
/// the environment snapshot.
pub fn metrics_versions(metrics: &serde_json::Value) -> serde_json::Value {
    metrics
        .get("versions")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A warning when the engine version a run saw differs from the version llem 0.7.0's
/// parameter registry is pinned to (its parameters and defaults may differ).
pub fn engine_version_warning(engine: &str, seen: Option<&str>) -> Option<String> {
    let pinned = crate::study::schema::pinned_engine_version(engine)?;
    match seen {
        Some(v) if v == pinned => None,
        Some(v) => Some(format!(
            "engine {engine} {v} differs from the version the parameter registry is pinned to ({pinned}); parameters and defaults may differ"
        )),
        None => Some(format!(
            "engine {engine} did not report its version (registry pinned to {pinned})"
        )),
    }
}

/// The samples of `[t0, t1]`; for a window shorter than the sampling interval, the
/// samples nearest its edges, placed at the edges.
pub fn window_samples(samples: &[TelemetrySample], t0: u64, t1: u64) -> Vec<TelemetrySample> {
    let mut inside: Vec<_> = samples
        .iter()
        .filter(|s| s.t_mono_ns >= t0 && s.t_mono_ns <= t1)
        .cloned()
        .collect();
    if inside.is_empty() {
        let before = samples.iter().rev().find(|s| s.t_mono_ns < t0);
        let after = samples.iter().find(|s| s.t_mono_ns > t1);
        for (s, at) in before
            .into_iter()
            .map(|s| (s, t0))
            .chain(after.map(|s| (s, t1)))
        {
            let mut s = s.clone();
            s.t_mono_ns = at;
            inside.push(s);
        }
    }
    inside
}

/// One bucket's means: seconds from `t0`, power, temperature, SM clock.
type BucketMeans = (f64, f64, f64, f64);

/// `n` buckets of equal length over `[t0, t1]`, each the mean of its samples (none
/// where it has none).
fn bucket_means(
    inside: &[TelemetrySample],
    t0: u64,
    t1: u64,
    n: usize,
) -> Vec<Option<BucketMeans>> {
    let span = (t1 - t0).max(1) as f64;
    let mut acc = vec![(0usize, 0.0, 0.0, 0.0, 0.0); n];
    for s in inside {
        let i = (((s.t_mono_ns - t0) as f64 / span) * n as f64) as usize;
        let b = &mut acc[i.min(n - 1)];
        b.0 += 1;
        b.1 += (s.t_mono_ns - t0) as f64 / 1e9;
        b.2 += s.power_w;
        b.3 += s.temp_c;
        b.4 += s.sm_clock_mhz as f64;
    }
    acc.into_iter()
        .map(|(k, t, p, c, m)| {
            let k = k as f64;
            (k > 0.0).then(|| (t / k, p / k, c / k, m / k))
        })
        .collect()
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The window's telemetry, downsampled for storage: at most `max_points` buckets of
/// equal length over `[t0, t1]`, each the mean of the samples in it. Times are
/// seconds from `t0`.
///
/// For a group of GPUs (`per_gpu`, one sample list per GPU of `gpus`, in order) the
/// buckets are the same for every GPU and only those where every GPU has samples are
/// kept: `power_w` is the group's (the sum of the GPUs' means, as the run's energy is
/// a sum), `temp_c` the hottest GPU's, `sm_clock_mhz` the slowest GPU's, and
/// `per_gpu` holds each GPU's own columns on the same `t_s`.
pub fn downsample(
    per_gpu: &[&[TelemetrySample]],
    gpus: &[u32],
    t0: u64,
    t1: u64,
    max_points: usize,
) -> serde_json::Value {
    let inside: Vec<Vec<_>> = per_gpu.iter().map(|s| window_samples(s, t0, t1)).collect();
    let fewest = inside.iter().map(Vec::len).min().unwrap_or(0);
    let n = max_points.clamp(1, fewest.max(1));
    let buckets: Vec<Vec<Option<BucketMeans>>> =
        inside.iter().map(|s| bucket_means(s, t0, t1, n)).collect();
    let kept: Vec<usize> = (0..n)
        .filter(|&i| !buckets.is_empty() && buckets.iter().all(|g| g[i].is_some()))
        .collect();
    let at = |g: usize, i: usize| buckets[g][i].expect("kept buckets have samples");
    let column =
        |f: &dyn Fn(usize) -> f64| -> Vec<f64> { kept.iter().map(|&i| round3(f(i))).collect() };
    let k = buckets.len().max(1);
    let mut out = serde_json::json!({
        "n_raw_samples": inside.iter().map(Vec::len).sum::<usize>(),
        "downsampling": format!("bucket means, at most {max_points} points"),
        "t_s": column(&|i| (0..buckets.len()).map(|g| at(g, i).0).sum::<f64>() / k as f64),
        "power_w": column(&|i| (0..buckets.len()).map(|g| at(g, i).1).sum()),
        "temp_c": column(&|i| (0..buckets.len()).map(|g| at(g, i).2).fold(f64::MIN, f64::max)),
        "sm_clock_mhz": column(&|i| (0..buckets.len()).map(|g| at(g, i).3).fold(f64::MAX, f64::min)),
    });
    if buckets.len() > 1 {
        let per: Vec<serde_json::Value> = (0..buckets.len())
            .map(|g| {
                serde_json::json!({
                    "gpu": gpus.get(g).copied().unwrap_or(g as u32),
                    "power_w": column(&|i| at(g, i).1),
                    "temp_c": column(&|i| at(g, i).2),
                    "sm_clock_mhz": column(&|i| at(g, i).3),
                })
            })
            .collect();
        out["per_gpu"] = serde_json::Value::Array(per);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::engine_version_warning;

    use super::downsample;
    use crate::run::sample::TelemetrySample;

    /// Samples every `step_ms` over `[0, 1 s]` at `power` W, `temp` C, `clock` MHz.
    fn samples(step_ms: u64, power: f64, temp: f64, clock: u32) -> Vec<TelemetrySample> {
        (0..=1000 / step_ms)
            .map(|i| TelemetrySample {
                t_mono_ns: i * step_ms * 1_000_000,
                power_w: power,
                temp_c: temp,
                sm_clock_mhz: clock,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn one_gpu_keeps_its_own_columns_and_no_per_gpu_part() {
        let a = samples(50, 100.0, 40.0, 1980);
        let ts = downsample(&[&a], &[3], 0, 1_000_000_000, 10);
        assert_eq!(ts["power_w"].as_array().unwrap().len(), 10);
        assert!(ts["power_w"].as_array().unwrap().iter().all(|p| p == 100.0));
        assert_eq!(ts["n_raw_samples"], 21);
        assert!(ts.get("per_gpu").is_none());
    }

    #[test]
    fn a_group_sums_power_takes_the_hottest_and_slowest_gpu_and_keeps_each_gpu() {
        // GPU 0 sampled every 50 ms, GPU 1 every 100 ms (a slower sampler): the
        // buckets are the same for both and set by the sparser one.
        let a = samples(50, 100.0, 40.0, 1980);
        let b = samples(100, 250.0, 55.0, 1755);
        let ts = downsample(&[&a, &b], &[0, 1], 0, 1_000_000_000, 240);
        let n = ts["t_s"].as_array().unwrap().len();
        assert_eq!(n, 11, "{ts}");
        assert!(ts["power_w"].as_array().unwrap().iter().all(|p| p == 350.0));
        assert!(ts["temp_c"].as_array().unwrap().iter().all(|t| t == 55.0));
        assert!(ts["sm_clock_mhz"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == 1755.0));
        let per = ts["per_gpu"].as_array().unwrap();
        assert_eq!(per.len(), 2);
        assert_eq!(
            (per[0]["gpu"].clone(), per[1]["gpu"].clone()),
            (0.into(), 1.into())
        );
        for (g, w) in [(0, 100.0), (1, 250.0)] {
            let p = per[g]["power_w"].as_array().unwrap();
            assert_eq!(p.len(), n);
            assert!(p.iter().all(|x| x == w));
        }
        assert_eq!(ts["n_raw_samples"], 21 + 11);
    }

    #[test]
    fn a_bucket_missing_on_one_gpu_is_left_out() {
        let a = samples(50, 100.0, 40.0, 1980);
        // GPU 1 has no samples in the second half of the window.
        let b: Vec<_> = samples(50, 200.0, 50.0, 1980)
            .into_iter()
            .filter(|s| s.t_mono_ns < 500_000_000)
            .collect();
        let ts = downsample(&[&a, &b], &[0, 1], 0, 1_000_000_000, 4);
        let t: Vec<f64> = ts["t_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(t.len(), 2, "{ts}");
        assert!(t.iter().all(|&x| x < 0.5), "{t:?}");
        assert!(ts["power_w"].as_array().unwrap().iter().all(|p| p == 300.0));
    }

    #[test]
    fn engine_version_mismatch_warns() {
        assert_eq!(engine_version_warning("transformers", Some("5.14.1")), None);
        let w = engine_version_warning("transformers", Some("5.17.0")).unwrap();
        assert!(w.contains("5.17.0") && w.contains("5.14.1"), "{w}");
        assert!(engine_version_warning("transformers", None).is_some());
        assert_eq!(engine_version_warning("synthetic", Some("0.1.0")), None);
    }
}
