//! The deliberate departures from llem 0.7.0 and the quirks kept on purpose, one test
//! each (docs/llem-compat.md names them).

use lem_common::study::{plan, PlanOptions, StudyError, StudySource};
use lem_common::Value;

fn src(text: &str) -> StudySource {
    StudySource {
        path: "study.yaml".into(),
        text: text.into(),
        base: None,
    }
}

fn run(text: &str) -> Result<lem_common::study::StudyPlan, StudyError> {
    plan(&src(text), &PlanOptions::default())
}

#[test]
fn preset_leak_is_reproduced_and_warned() {
    // FORMAT.md 7.5: a shared engine section receives an earlier config's preset.
    let p = run("task: {model: gpt2}\nserving_mode: offline\ntransformers:\n  engine_params: {dtype: float16}\nsweep:\n  sampling_preset: [deterministic, factual, creative]\nstudy_execution: {n_cycles: 1, experiment_order: sequential}\n").unwrap();
    assert_eq!(
        p.n_configs, 2,
        "factual dedups into deterministic, as in llem"
    );
    let temps: Vec<f64> = p
        .run_list
        .iter()
        .map(|c| {
            c.get_path("transformers.sampling_params.temperature")
                .and_then(Value::as_f64)
                .unwrap()
        })
        .collect();
    assert_eq!(temps, vec![0.0, 0.0]);
    assert!(
        p.warnings.iter().any(|w| w
            .contains("inherits sampling values written into the shared 'transformers:' section")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn typo_in_an_experiments_entry_is_an_error_not_a_skip() {
    let e = run("task: {model: gpt2}\nserving_mode: offline\nexperiments:\n  - task: {max_output_token: 3}\n  - task: {max_output_tokens: 3}\n").unwrap_err();
    assert!(matches!(e, StudyError::UnknownKey { .. }));
    assert_eq!(
        e.to_string(),
        "study.yaml:4:12: unknown key 'experiments[0].task.max_output_token' (did you mean 'max_output_tokens'?)"
    );
}

#[test]
fn unknown_top_level_key_of_a_study_is_an_error_not_every_config_skipped() {
    let e = run("task: {model: gpt2}\nserving_mode: offline\nmodle: x\nsweep: {}\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("study.yaml:3:1: unknown key 'modle'"),
        "{e}"
    );
}

#[test]
fn single_experiment_unknown_key_is_one_deterministic_error() {
    // llem: "Unknown field 'X'" with a did-you-mean whose ties depend on hash seeds.
    let e = run("task: {model: gpt2}\nserving_mode: offline\nsampling_presett: standard\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "study.yaml:3:1: unknown key 'sampling_presett' (did you mean 'sampling_preset'?)"
    );
    let e = run("task: {model: gpt2}\n").unwrap_err();
    assert!(e.to_string().contains("serving_mode is required"), "{e}");
}

#[test]
fn engine_enum_message_lists_the_synthetic_engine() {
    let p = run(
        "task: {model: gpt2}\nserving_mode: offline\nexperiments:\n  - {engine: bogus}\n  - {}\n",
    )
    .unwrap();
    assert_eq!(p.skipped.len(), 1);
    assert_eq!(
        p.skipped[0].reason,
        "engine: Input should be 'transformers', 'vllm', 'tensorrt' or 'synthetic'"
    );
}

#[test]
fn wrong_engine_section_keeps_llems_enum_repr() {
    let p = run("task: {model: gpt2}\nserving_mode: offline\nengine: vllm\nexperiments:\n  - {transformers: {engine_params: {dtype: float16}}}\n  - {}\n").unwrap();
    assert_eq!(p.skipped.len(), 1);
    assert!(
        p.skipped[0].reason.contains("<Engine.VLLM: 'vllm'>"),
        "{}",
        p.skipped[0].reason
    );
}

#[test]
fn null_gaps_mean_no_pause_as_llems_runner_does() {
    let p = run("task: {model: gpt2}\nserving_mode: offline\nsweep:\n  task.max_input_tokens: [8, 16]\nstudy_execution: {n_cycles: 2, experiment_order: interleave}\n").unwrap();
    assert!(p.runs.iter().all(|r| r.gap_before_seconds == 0.0));
    let p = run("task: {model: gpt2}\nserving_mode: offline\nsweep:\n  task.max_input_tokens: [8, 16]\nstudy_execution: {n_cycles: 2, experiment_order: interleave, experiment_gap_seconds: 5, cycle_gap_seconds: 30}\n").unwrap();
    let gaps: Vec<f64> = p.runs.iter().map(|r| r.gap_before_seconds).collect();
    assert_eq!(gaps, vec![0.0, 5.0, 35.0, 5.0]);
}
