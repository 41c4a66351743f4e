//! `plan_compact` plans exactly what `plan` plans: the same runs in the same order with
//! the same hashes, cycles, gaps and configs, and the same plan-wide fields, on every
//! study file in the repository and the llem examples (single-experiment files, every
//! experiment order, several cycles, dedup off, skips, gaps), and the same errors.

use std::path::{Path, PathBuf};

use lem_common::pyjson::{self, DumpOptions};
use lem_common::study::{
    plan_compact_within, plan_within, CompactPlan, PlanMode, PlanOptions, PlannedRun,
    SkippedConfig, StudyPlan, StudySource, MAX_PLANNED_RUNS,
};
use lem_common::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn llem_examples() -> PathBuf {
    match std::env::var("LLEM_SHARED") {
        Ok(p) => PathBuf::from(p).join("examples"),
        Err(_) => repo().join("../shared/llem/examples"),
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    out
}

fn skips(s: &[SkippedConfig]) -> Vec<(&Value, &String, &Option<String>)> {
    s.iter()
        .map(|k| (&k.config, &k.reason, &k.rule_id))
        .collect()
}

/// The fields a [`StudyPlan`] and a [`CompactPlan`] share, comparable.
macro_rules! plan_wide {
    ($p:expr) => {
        (
            (
                $p.mode,
                &$p.study_name,
                &$p.study_design_hash,
                &$p.execution,
            ),
            (
                $p.n_configs,
                $p.n_valid_declared,
                $p.n_generated,
                &$p.dedup_mode,
            ),
            (&$p.warnings, &$p.dormant_observations, skips(&$p.skipped)),
        )
    };
}

/// Asserts that `c` is `p` with each run's config kept once and rendered.
fn assert_same(name: &str, p: &StudyPlan, c: &CompactPlan) {
    assert_eq!(plan_wide!(c), plan_wide!(p), "{name}: plan-wide fields");
    let dump = |v: &Value| pyjson::dumps(v, &DumpOptions::default());
    assert_eq!(c.configs.len(), p.run_list.len(), "{name}: run list");
    for (i, (cfg, v)) in c.configs.iter().zip(&p.run_list).enumerate() {
        assert_eq!(cfg.config_json, dump(v), "{name}: run list entry {i}");
        assert_eq!(
            &cfg.config(),
            v,
            "{name}: entry {i} read back from its JSON"
        );
    }
    assert_eq!(c.runs.len(), p.runs.len(), "{name}: number of runs");
    for (pos, (r, full)) in c.runs.iter().zip(&p.runs).enumerate() {
        let cfg = &c.configs[r.config as usize];
        let at = format!("{name}: run {pos}");
        assert_eq!(cfg.config_hash, full.config_hash, "{at}: config hash");
        assert_eq!(r.cycle, full.cycle, "{at}: cycle");
        assert_eq!(cfg.engine, full.engine, "{at}: engine");
        assert_eq!(
            r.gap_before_seconds.to_bits(),
            full.gap_before_seconds.to_bits(),
            "{at}: gap"
        );
        assert_eq!(cfg.config_json, dump(&full.config), "{at}: config");
        let model = full
            .config
            .get_path("task.model")
            .and_then(Value::as_str)
            .unwrap_or("");
        assert_eq!(cfg.model, model, "{at}: model");
        assert_eq!(
            cfg.tp_size,
            lem_common::gpus::tp_size(&full.engine, &full.config),
            "{at}: tp_size"
        );
    }
}

/// Plans `src` both ways under `limit` runs: both plan the same, or both refuse it
/// with the same error (returned).
fn check(
    name: &str,
    src: &StudySource,
    opts: &PlanOptions,
    limit: usize,
) -> Result<StudyPlan, String> {
    match (
        plan_within(src, opts, limit),
        plan_compact_within(src, opts, limit),
    ) {
        (Ok(p), Ok(c)) => {
            assert_same(name, &p, &c);
            Ok(p)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "{name}");
            Err(b.to_string())
        }
        (a, b) => panic!(
            "{name}: plan {:?}, plan_compact {:?}",
            a.map(|p| p.runs.len()),
            b.map(|c| c.runs.len())
        ),
    }
}

/// [`check`] on a study text, under the default limit.
fn check_text(name: &str, text: &str, limit: usize) -> Result<StudyPlan, String> {
    let src = StudySource {
        path: "study.yaml".into(),
        text: text.into(),
        base: None,
    };
    check(name, &src, &PlanOptions::default(), limit)
}

#[test]
fn compact_plan_equals_plan_on_every_repository_and_llem_study() {
    let mut files = yaml_files(&llem_examples());
    files.extend(yaml_files(&repo().join("tests/fixtures")));
    files.extend(yaml_files(&repo().join("examples")));
    assert!(files.len() >= 15, "{files:?}");
    let (mut single, mut multi_cycle, mut orders) = (0, 0, Vec::new());
    for path in &files {
        let src = StudySource::read(path).unwrap();
        for library_defaults in [false, true] {
            let opts = PlanOptions { library_defaults };
            let Ok(p) = check(&path.display().to_string(), &src, &opts, MAX_PLANNED_RUNS) else {
                continue;
            };
            if library_defaults {
                continue;
            }
            single += usize::from(p.mode == PlanMode::Experiment);
            multi_cycle += usize::from(p.execution.n_cycles > 1 && p.run_list.len() > 1);
            orders.push(format!("{:?}", p.execution.experiment_order));
        }
    }
    // The files cover what the equality is about.
    assert!(single >= 1, "no single-experiment file");
    assert!(multi_cycle >= 5, "{multi_cycle} multi-cycle studies");
    for o in ["Sequential", "Interleave", "Shuffle"] {
        assert!(orders.iter().any(|x| x == o), "no {o} study: {orders:?}");
    }
}

#[test]
fn compact_plan_equals_plan_for_every_order_gap_and_dedup_setting() {
    for order in [
        "sequential",
        "interleave",
        "shuffle",
        "reverse",
        "latin_square",
    ] {
        for dedup in [true, false] {
            // factual and deterministic presets dedup into one config; the vllm
            // configs carry a tensor_parallel_size and another model.
            let text = format!(
                "task: {{model: gpt2}}\nserving_mode: offline\nsweep:\n  sampling_preset: [deterministic, factual, creative]\n  transformers.llem_execution.batch_size: [1, 2]\nexperiments:\n  - engine: vllm\n    task: {{model: other}}\n    vllm: {{engine_params: {{tensor_parallel_size: 2}}}}\nstudy_execution: {{n_cycles: 3, experiment_order: {order}, experiment_gap_seconds: 2, cycle_gap_seconds: 7.5, deduplicate_equivalent: {dedup}}}\n"
            );
            let name = format!("{order}, dedup {dedup}");
            let p = check_text(&name, &text, MAX_PLANNED_RUNS).unwrap();
            assert!(p.runs.iter().any(|r| r.gap_before_seconds > 2.0), "{name}");
            let tp2 = |r: &PlannedRun| lem_common::gpus::tp_size(&r.engine, &r.config) == 2;
            assert!(p.runs.iter().any(tp2), "{name}");
        }
    }
}

#[test]
fn compact_plan_refuses_what_plan_refuses() {
    let text = "task: {model: m}\nengine: synthetic\nserving_mode: offline\nsweep:\n  task.max_output_tokens: [1, 2]\nstudy_execution: {n_cycles: 4}\n";
    for limit in [1, 7] {
        assert!(check_text("limit", text, limit).is_err(), "{limit}");
    }
    assert_eq!(check_text("limit", text, 8).unwrap().runs.len(), 8);
    for bad in [
        "task: {model: gpt2}\nserving_mode: offline\nsweep:\n  task.max_output_token: [1, 2]\n",
        "task: {model: gpt2}\nengine: vllm\nexperiments:\n  - serving_mode: offline\n  - serving_mode: server\n    server: {traffic: {rate: 1.0}}\n",
        "task: {model: gpt2}\nserving_mode: offline\nsweep:\n  transformers.llem_execution.batch_size: [0, -1]\n",
    ] {
        assert!(check_text(bad, bad, MAX_PLANNED_RUNS).is_err(), "{bad}");
    }
}
