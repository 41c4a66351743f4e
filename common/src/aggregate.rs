//! Aggregation per configuration across cycles: what a researcher reads after a
//! campaign.
//!
//! A campaign runs each configuration (`config_hash`) once per cycle. [`aggregate_rows`]
//! groups a campaign's runs by configuration and summarises each measure over the
//! cycles with a result ([`stats::summarize`]: mean, median, std, CV, percentiles and a
//! seeded 95 % bootstrap interval, BCa where defined), names each configuration by the
//! parameters that differ between the campaign's configurations ([`varying_params`],
//! dotted names as in the study: `synthetic.engine_params.batch_size`), and flags what
//! makes a configuration's figures weaker than its runs' own flags say
//! ([`ConfigFlag`]: a CV over 10 %, an outlying cycle, a different environment between
//! cycles). Rows are sorted by the J/token a researcher compares on ([`rank_metric`]).
//!
//! Pure: no IO, no clock; the bootstrap's seed comes from the config hash, so the same
//! rows give the same intervals on every machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::quality::{self, Flag};
use crate::rpc::RunRow;
use crate::stats::{self, Summary};
use crate::types::RunResult;
use crate::value::Value;

/// A measure summarised per configuration; serialised as its [`Metric::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Throughput: `avg_tokens_per_second`.
    TokensPerSecond,
    /// Raw energy per token (`avg_energy_per_token_j`): the GPU's whole draw.
    EnergyPerToken,
    /// Energy per token less the device-idle baseline (`energy_per_token_adjusted_j`).
    EnergyPerTokenAdjusted,
    /// Energy per token less the resident idle (model loaded): the dynamic energy
    /// (`energy_adjusted_resident_j` over the same tokens).
    EnergyPerTokenDynamic,
    /// Time to first token, the run's mean, in ms.
    TtftMs,
    /// Inter-token latency, the run's mean, in ms.
    ItlMs,
    /// Mean power over the window, W.
    MeanPowerW,
    /// Window energy, J.
    TotalEnergyJ,
    /// Prefill energy (from the prefill window), J.
    PrefillEnergyJ,
    /// Decode energy (window less prefill), J.
    DecodeEnergyJ,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::TokensPerSecond,
        Metric::EnergyPerToken,
        Metric::EnergyPerTokenAdjusted,
        Metric::EnergyPerTokenDynamic,
        Metric::TtftMs,
        Metric::ItlMs,
        Metric::MeanPowerW,
        Metric::TotalEnergyJ,
        Metric::PrefillEnergyJ,
        Metric::DecodeEnergyJ,
    ];

    /// The column stem in aggregate exports (`<name>_mean`, `<name>_ci95_low`, ...):
    /// the per-run export's column name where it has one.
    pub fn name(self) -> &'static str {
        match self {
            Metric::TokensPerSecond => "avg_tokens_per_second",
            Metric::EnergyPerToken => "avg_energy_per_token_j",
            Metric::EnergyPerTokenAdjusted => "energy_per_token_adjusted_j",
            Metric::EnergyPerTokenDynamic => "energy_per_token_dynamic_j",
            Metric::TtftMs => "ttft_ms",
            Metric::ItlMs => "itl_ms",
            Metric::MeanPowerW => "mean_power_w",
            Metric::TotalEnergyJ => "total_energy_j",
            Metric::PrefillEnergyJ => "prefill_energy_j",
            Metric::DecodeEnergyJ => "decode_energy_j",
        }
    }

    /// A short label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Metric::TokensPerSecond => "tok/s",
            Metric::EnergyPerToken => "J/tok (raw)",
            Metric::EnergyPerTokenAdjusted => "J/tok (adj)",
            Metric::EnergyPerTokenDynamic => "J/tok (dyn)",
            Metric::TtftMs => "TTFT ms",
            Metric::ItlMs => "ITL ms",
            Metric::MeanPowerW => "power W",
            Metric::TotalEnergyJ => "energy J",
            Metric::PrefillEnergyJ => "prefill J",
            Metric::DecodeEnergyJ => "decode J",
        }
    }

    /// Whether more is better (throughput) or less (energy, latency, power).
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::TokensPerSecond)
    }

    /// The measure of one run, where the run has it.
    pub fn of(self, r: &RunResult) -> Option<f64> {
        let finite = |v: f64| v.is_finite().then_some(v);
        match self {
            Metric::TokensPerSecond => finite(r.throughput.avg_tokens_per_second),
            Metric::EnergyPerToken => finite(r.throughput.avg_energy_per_token_j),
            Metric::EnergyPerTokenAdjusted => {
                r.throughput.energy_per_token_adjusted_j.and_then(finite)
            }
            // The same tokens as avg_energy_per_token_j counts.
            Metric::EnergyPerTokenDynamic => {
                let dynamic = r.energy.adjusted_resident_j?;
                (r.energy.total_j > 0.0)
                    .then(|| dynamic * r.throughput.avg_energy_per_token_j / r.energy.total_j)
                    .and_then(finite)
            }
            Metric::TtftMs => latency_mean(r, "ttft_ms"),
            Metric::ItlMs => latency_mean(r, "itl_ms"),
            Metric::MeanPowerW => finite(r.energy.mean_power_w),
            Metric::TotalEnergyJ => finite(r.energy.total_j),
            Metric::PrefillEnergyJ => r
                .energy
                .prefill
                .as_ref()
                .and_then(|p| finite(p.prefill_energy_j)),
            Metric::DecodeEnergyJ => r
                .energy
                .prefill
                .as_ref()
                .and_then(|p| finite(p.decode_energy_j)),
        }
    }
}

fn latency_mean(r: &RunResult, key: &str) -> Option<f64> {
    r.harness
        .metrics
        .get(key)
        .and_then(|m| m.get("mean"))
        .and_then(|v| v.as_f64())
        .filter(|v| v.is_finite())
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The J/token a configuration is ranked and compared on: the device-idle adjusted
/// figure where the campaign subtracted a baseline, else the raw one.
pub fn rank_metric(aggs: &[ConfigAggregate]) -> Metric {
    if aggs
        .iter()
        .any(|a| a.metrics.contains_key(&Metric::EnergyPerTokenAdjusted))
    {
        Metric::EnergyPerTokenAdjusted
    } else {
        Metric::EnergyPerToken
    }
}

/// Something that weakens a configuration's figures beyond its runs' own flags.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "flag", rename_all = "snake_case")]
pub enum ConfigFlag {
    /// The CV across cycles of a measure is above [`stats::CV_FLAG_THRESHOLD`].
    HighCv { metric: Metric, cv: f64 },
    /// Cycles whose J/token or throughput is an outlier by the robust rule
    /// ([`stats::robust_outliers`]).
    OutlierCycles { metric: Metric, cycles: Vec<u32> },
    /// The runs' environments (driver, libraries, GPU, host; `environment_hash`)
    /// differ between cycles: the cycles did not measure the same thing.
    EnvironmentDrift { environments: usize },
}

impl ConfigFlag {
    /// The short, stable name written in exports.
    pub fn name(&self) -> &'static str {
        match self {
            ConfigFlag::HighCv { .. } => "high_cv",
            ConfigFlag::OutlierCycles { .. } => "outlier_cycles",
            ConfigFlag::EnvironmentDrift { .. } => "environment_drift",
        }
    }

    /// One line a researcher understands without the docs.
    pub fn explanation(&self) -> String {
        match self {
            ConfigFlag::HighCv { metric, cv } => format!(
                "{} varies by {:.1} % (CV) across cycles, above {:.0} %: the mean is not a stable figure; run more cycles or find the noise",
                metric.name(),
                cv * 100.0,
                stats::CV_FLAG_THRESHOLD * 100.0
            ),
            ConfigFlag::OutlierCycles { metric, cycles } => format!(
                "cycle(s) {} are outliers in {} (modified z-score above {}): look at those runs before trusting the mean",
                cycles
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                metric.name(),
                stats::MODIFIED_Z_LIMIT
            ),
            ConfigFlag::EnvironmentDrift { environments } => format!(
                "the cycles ran in {environments} different environments (driver, libraries, GPU or host changed): they did not measure the same thing"
            ),
        }
    }
}

/// A configuration's figures across its cycles.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigAggregate {
    pub config_hash: String,
    pub engine: String,
    pub model: String,
    /// The parameters that differ between the campaign's configurations, with this
    /// configuration's value (`None` where it has none), in [`varying_params`]' order.
    pub params: Vec<(String, Option<serde_json::Value>)>,
    /// Runs of this configuration (one per cycle).
    pub runs: usize,
    /// Runs with a result.
    pub done: usize,
    /// The cycles with a result, in the order their values are summarised.
    pub cycles: Vec<u32>,
    pub metrics: BTreeMap<Metric, Summary>,
    /// The values summarised in `metrics`, one per cycle that has the measure, in
    /// cycle order (what [`crate::compare`] resamples).
    pub values: BTreeMap<Metric, Vec<f64>>,
    pub flags: Vec<ConfigFlag>,
    /// How many of its runs carry each run-level quality flag.
    pub run_flags: BTreeMap<Flag, usize>,
    /// Whether any run was measured on the simulated GPU.
    pub simulated: bool,
}

impl ConfigAggregate {
    /// `name=value` for each varying parameter (the last dotted part of its name).
    pub fn label(&self) -> String {
        self.params
            .iter()
            .filter_map(|(k, v)| {
                v.as_ref().map(|v| {
                    let short = k.rsplit('.').next().unwrap_or(k);
                    format!("{short}={}", value_text(v))
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The value of the varying parameter `name`, if this configuration has it.
    pub fn param(&self, name: &str) -> Option<&serde_json::Value> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
    }

    /// The names of every flag, config-level then run-level, each once (`high_cv`
    /// may be raised by several measures).
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for n in self
            .flags
            .iter()
            .map(ConfigFlag::name)
            .chain(self.run_flags.keys().map(|f| f.name()))
        {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
}

/// A parameter value as text: strings bare, anything else its JSON.
pub fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The leaves of a config, by dotted path (nulls left out: an unset option).
pub fn flatten(config: &Value) -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            Value::Map(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            Value::Null => {}
            Value::Bool(b) => {
                out.insert(prefix.into(), (*b).into());
            }
            Value::Int(i) => {
                out.insert(prefix.into(), (*i).into());
            }
            Value::Float(f) => {
                // A non-finite float has no JSON number: keep Python's spelling.
                let j = serde_json::Number::from_f64(*f)
                    .map(serde_json::Value::Number)
                    .unwrap_or_else(|| crate::pyjson::float_repr(*f).into());
                out.insert(prefix.into(), j);
            }
            Value::Str(s) => {
                out.insert(prefix.into(), s.clone().into());
            }
            Value::Seq(_) => {
                out.insert(
                    prefix.into(),
                    crate::pyjson::dumps(v, &Default::default()).into(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", config, &mut out);
    out
}

/// Columns the exports always have, so never repeated as a parameter.
const NOT_PARAMS: &[&str] = &["engine", "task.model"];

/// The dotted names of the parameters that differ between `configs` (a value that
/// differs, or a key some configurations lack), sorted by name. `engine` and `task.model` are left out: every export has them as columns.
pub fn varying_params<'a>(
    configs: impl IntoIterator<Item = &'a BTreeMap<String, serde_json::Value>>,
) -> Vec<String> {
    let configs: Vec<&BTreeMap<String, serde_json::Value>> = configs.into_iter().collect();
    let mut values: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut present: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &configs {
        for (k, v) in c.iter() {
            values.entry(k).or_default().insert(v.to_string());
            *present.entry(k).or_default() += 1;
        }
    }
    values
        .into_iter()
        .filter(|(k, vals)| {
            !NOT_PARAMS.contains(k) && (vals.len() > 1 || present[k] != configs.len())
        })
        .map(|(k, _)| k.to_string())
        .collect()
}

/// The varying parameters of a campaign's rows and each config's values of them:
/// `(names, config_hash -> values in names' order)`.
pub fn params_of_rows(
    rows: &[RunRow],
) -> (
    Vec<String>,
    BTreeMap<String, Vec<Option<serde_json::Value>>>,
) {
    let mut flat: BTreeMap<&str, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for r in rows {
        if flat.contains_key(r.config_hash.as_str()) {
            continue;
        }
        let leaves = crate::pyjson::parse(&r.config_json)
            .map(|v| flatten(&v))
            .unwrap_or_default();
        flat.insert(&r.config_hash, leaves);
    }
    let names = varying_params(flat.values());
    let by_hash = flat
        .iter()
        .map(|(h, leaves)| {
            (
                h.to_string(),
                names.iter().map(|n| leaves.get(n).cloned()).collect(),
            )
        })
        .collect();
    (names, by_hash)
}

/// A seed per configuration, from its hash (FNV-1a), so intervals are reproducible.
fn seed_of(config_hash: &str) -> u64 {
    config_hash.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Aggregates a campaign's runs per configuration, sorted by [`rank_metric`] (lowest
/// first; configurations without it last, in campaign order).
pub fn aggregate_rows(rows: &[RunRow]) -> Vec<ConfigAggregate> {
    let (names, params) = params_of_rows(rows);
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&RunRow>> = BTreeMap::new();
    for r in rows {
        if !groups.contains_key(r.config_hash.as_str()) {
            order.push(&r.config_hash);
        }
        groups.entry(&r.config_hash).or_default().push(r);
    }
    let mut out: Vec<ConfigAggregate> = order
        .iter()
        .map(|h| {
            let mut runs = groups[h].clone();
            runs.sort_by_key(|r| r.cycle);
            let values = params.get(*h).cloned().unwrap_or_default();
            aggregate_config(h, &runs, names.iter().cloned().zip(values).collect())
        })
        .collect();
    let rank = rank_metric(&out);
    // Stable: ties and configurations without the measure keep campaign order.
    out.sort_by(|a, b| {
        let key = |x: &ConfigAggregate| x.metrics.get(&rank).map(|s| s.mean);
        match (key(a), key(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
    out
}

/// One configuration's aggregate from its runs (sorted by cycle).
pub fn aggregate_config(
    config_hash: &str,
    runs: &[&RunRow],
    params: Vec<(String, Option<serde_json::Value>)>,
) -> ConfigAggregate {
    let done: Vec<(u32, &RunResult)> = runs
        .iter()
        .filter_map(|r| r.result.as_ref().map(|x| (r.cycle, x)))
        .collect();
    let seed = seed_of(config_hash);
    let mut metrics = BTreeMap::new();
    let mut values = BTreeMap::new();
    let mut flags = Vec::new();
    for m in Metric::ALL {
        let pairs: Vec<(u32, f64)> = done
            .iter()
            .filter_map(|(c, x)| m.of(x).map(|v| (*c, v)))
            .collect();
        let vals: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let Some(s) = stats::summarize(&vals, seed ^ m as u64) else {
            continue;
        };
        // The measures a researcher ranks on carry the variability flags.
        if matches!(
            m,
            Metric::TokensPerSecond | Metric::EnergyPerToken | Metric::EnergyPerTokenAdjusted
        ) {
            if let (true, Some(cv)) = (s.high_cv, s.cv) {
                flags.push(ConfigFlag::HighCv { metric: m, cv });
            }
            if !s.outliers.is_empty() {
                flags.push(ConfigFlag::OutlierCycles {
                    metric: m,
                    cycles: s.outliers.iter().map(|i| pairs[*i].0).collect(),
                });
            }
        }
        metrics.insert(m, s);
        values.insert(m, vals);
    }
    let environments: BTreeSet<&str> = done
        .iter()
        .map(|(_, x)| x.environment_hash.as_str())
        .filter(|h| !h.is_empty())
        .collect();
    if environments.len() > 1 {
        flags.push(ConfigFlag::EnvironmentDrift {
            environments: environments.len(),
        });
    }
    let mut run_flags = BTreeMap::new();
    for (_, x) in &done {
        for f in quality::flags(x) {
            *run_flags.entry(f).or_insert(0) += 1;
        }
    }
    let first = runs.first();
    let model = first
        .and_then(|r| crate::pyjson::parse(&r.config_json).ok())
        .and_then(|c| {
            c.get_path("task.model")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    ConfigAggregate {
        config_hash: config_hash.to_string(),
        engine: first.map(|r| r.engine.clone()).unwrap_or_default(),
        model,
        params,
        runs: runs.len(),
        done: done.len(),
        cycles: done.iter().map(|(c, _)| *c).collect(),
        metrics,
        values,
        flags,
        run_flags,
        simulated: done.iter().any(|(_, x)| x.simulated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Baselines, CampaignId, EnergyFigures, HarnessFacts, RunKey, Throughput};

    fn config(batch: i64, dtype: &str) -> String {
        format!(
            r#"{{"task": {{"model": "m", "max_output_tokens": 64}}, "engine": "synthetic", "synthetic": {{"engine_params": {{"batch_size": {batch}, "dtype": "{dtype}", "load_seconds": 1.0}}}}}}"#
        )
    }

    fn row(seq: u32, hash: &str, cycle: u32, cfg: &str, jpt: Option<f64>) -> RunRow {
        RunRow {
            run: RunKey {
                campaign: CampaignId(1),
                seq,
            },
            config_hash: hash.into(),
            cycle,
            engine: "synthetic".into(),
            state: if jpt.is_some() { "done" } else { "failed" }.into(),
            attempts: 1,
            config_json: cfg.into(),
            result: jpt.map(|j| RunResult {
                environment_hash: "env-a".into(),
                energy: EnergyFigures {
                    total_j: 64.0 * j,
                    adjusted_resident_j: Some(16.0 * j),
                    mean_power_w: 200.0,
                    adjusted_j: Some(32.0 * j),
                    ..Default::default()
                },
                baselines: Baselines {
                    device: Some(Default::default()),
                    ..Default::default()
                },
                throughput: Throughput {
                    avg_energy_per_token_j: j,
                    energy_per_token_adjusted_j: Some(j / 2.0),
                    avg_tokens_per_second: 100.0 / j,
                    ..Default::default()
                },
                harness: HarnessFacts {
                    metrics: serde_json::json!({"ttft_ms": {"mean": 12.5}}),
                    ..Default::default()
                },
                ..Default::default()
            }),
            last_failure: None,
        }
    }

    #[test]
    fn varying_params_are_the_leaves_that_differ_by_dotted_name() {
        let rows = vec![
            row(0, "a", 1, &config(1, "bf16"), Some(1.0)),
            row(1, "b", 1, &config(8, "bf16"), Some(0.5)),
        ];
        let (names, by_hash) = params_of_rows(&rows);
        assert_eq!(names, vec!["synthetic.engine_params.batch_size"]);
        assert_eq!(by_hash["a"], vec![Some(serde_json::json!(1))]);
        assert_eq!(by_hash["b"], vec![Some(serde_json::json!(8))]);
        // A key one config lacks varies too; engine and model are never params.
        let other = r#"{"task": {"model": "n", "max_output_tokens": 64}, "engine": "transformers", "transformers": {"batch_size": 4}}"#;
        let rows = vec![
            row(0, "a", 1, &config(1, "bf16"), Some(1.0)),
            row(1, "c", 1, other, Some(0.5)),
        ];
        let (names, by_hash) = params_of_rows(&rows);
        assert!(names.contains(&"transformers.batch_size".to_string()));
        assert!(!names.iter().any(|n| n == "engine" || n == "task.model"));
        let i = names
            .iter()
            .position(|n| n == "transformers.batch_size")
            .unwrap();
        assert_eq!(by_hash["a"][i], None);
        assert_eq!(by_hash["c"][i], Some(serde_json::json!(4)));
    }

    #[test]
    fn configs_are_summarised_ranked_and_flagged() {
        let (a, b) = (config(1, "bf16"), config(8, "bf16"));
        let rows = vec![
            row(0, "a", 1, &a, Some(1.00)),
            row(1, "b", 1, &b, Some(0.50)),
            row(2, "a", 2, &a, Some(1.01)),
            row(3, "b", 2, &b, Some(0.51)),
            row(4, "a", 3, &a, Some(0.99)),
            row(5, "b", 3, &b, Some(0.90)),
            row(6, "a", 4, &a, None),
        ];
        let aggs = aggregate_rows(&rows);
        assert_eq!(rank_metric(&aggs), Metric::EnergyPerTokenAdjusted);
        // b (mean adj 0.318) before a (0.5).
        assert_eq!(aggs[0].config_hash, "b");
        let a_agg = &aggs[1];
        assert_eq!((a_agg.runs, a_agg.done), (4, 3));
        assert_eq!(a_agg.cycles, vec![1, 2, 3]);
        assert_eq!(a_agg.label(), "batch_size=1");
        assert_eq!(a_agg.model, "m");
        let s = &a_agg.metrics[&Metric::EnergyPerToken];
        assert!((s.mean - 1.0).abs() < 1e-12);
        let (lo, hi) = (s.ci95_low.unwrap(), s.ci95_high.unwrap());
        assert!(
            lo < 1.0 && 1.0 < hi && lo >= 0.99 - 1e-9 && hi <= 1.01 + 1e-9,
            "{lo} {hi}"
        );
        assert!(a_agg.flags.is_empty(), "{:?}", a_agg.flags);
        assert_eq!(a_agg.metrics[&Metric::TtftMs].mean, 12.5);
        // Dynamic J/token: 16 j over the 64 tokens that j = total / 64 counts.
        assert!((a_agg.metrics[&Metric::EnergyPerTokenDynamic].mean - 0.25).abs() < 1e-12);
        // b's third cycle is wild: high CV and an outlier cycle.
        let b_agg = &aggs[0];
        let names = b_agg.flag_names();
        assert!(names.contains(&"high_cv"), "{names:?}");
        assert_eq!(names.iter().filter(|n| **n == "high_cv").count(), 1);
        assert!(b_agg.flags.contains(&ConfigFlag::OutlierCycles {
            metric: Metric::EnergyPerToken,
            cycles: vec![3]
        }));
        // Same rows, same intervals.
        assert_eq!(aggregate_rows(&rows), aggs);
    }

    #[test]
    fn environment_drift_between_cycles_is_flagged() {
        let a = config(1, "bf16");
        let mut rows = vec![row(0, "a", 1, &a, Some(1.0)), row(1, "a", 2, &a, Some(1.0))];
        assert!(aggregate_rows(&rows)[0].flags.is_empty());
        rows[1].result.as_mut().unwrap().environment_hash = "env-b".into();
        let aggs = aggregate_rows(&rows);
        assert_eq!(
            aggs[0].flags,
            vec![ConfigFlag::EnvironmentDrift { environments: 2 }]
        );
        assert!(aggs[0].flags[0]
            .explanation()
            .contains("2 different environments"));
    }

    #[test]
    fn run_flags_are_counted() {
        let a = config(1, "bf16");
        let mut rows = vec![row(0, "a", 1, &a, Some(1.0)), row(1, "a", 2, &a, Some(1.0))];
        rows[0].result.as_mut().unwrap().thermal.throttle_thermal = true;
        let aggs = aggregate_rows(&rows);
        assert_eq!(aggs[0].run_flags.get(&Flag::ThrottleThermal), Some(&1));
        assert!(aggs[0].flag_names().contains(&"throttle_thermal"));
    }
}
