//! Grid-expansion benchmark (not a test): how long the study code takes to expand a
//! 1,000,000-config sweep and to validate one config.
//!
//! ```sh
//! cargo run --release -p lem-common --example bench_grid
//! ```
//!
//! Prints one line, `expand_1m_configs_s=X validate_one_config_us=Y count_1m_configs_us=Z`
//! (expansion streamed, as `plan` consumes it), the same expansion collected into
//! memory at once, then a line with the full plan (validate, canonicalise, dedup, hash, order) of a
//! 10,000-config study for scale. Targets (docs/performance.md): expansion under 1 s,
//! validation of one config under 10 us, in release.

use std::time::Instant;

use lem_common::study::{self, validate, PlanOptions, StudySource};

/// 100 x 100 x 100 = 1,000,000 raw configs: two universal task axes and one
/// synthetic-engine axis, as a real sweep over prompt and batch sizes would be.
const STUDY_1M: &str = "\
study_name: bench-1m
task:
  model: gpt2
  dataset: {n_prompts: 50}
serving_mode: offline
engine: synthetic
synthetic:
  engine_params: {dtype: float16}
sweep:
  task.max_input_tokens: {min: 1, max: 100, num: 100}
  task.max_output_tokens: {min: 1, max: 100, num: 100}
  synthetic.engine_params.batch_size: {min: 1, max: 100, num: 100}
study_execution: {n_cycles: 1, experiment_order: sequential}
";

/// 10 x 10 x 10 x 10 = 10,000 transformers configs for the full-plan figure.
const STUDY_10K: &str = "\
study_name: bench-10k
task: {model: gpt2}
serving_mode: offline
sweep:
  task.max_input_tokens: {min: 10, max: 100, num: 10}
  task.max_output_tokens: {min: 10, max: 100, num: 10}
  transformers.llem_execution.batch_size: {min: 1, max: 10, num: 10}
  transformers.sampling_params.temperature: {min: 0.1, max: 1.0, num: 10}
study_execution: {n_cycles: 1, experiment_order: shuffle}
";

fn source(name: &str, text: &str) -> StudySource {
    StudySource {
        path: name.into(),
        text: text.into(),
        base: None,
    }
}

fn main() {
    let opts = PlanOptions::default();
    let src = source("bench-1m.yaml", STUDY_1M);

    // Validation of one config (preset pre-check, registry walk with coercion and
    // defaults, model-level checks, engine rules), averaged over the 1,000 configs of
    // the same sweep at 10 x 10 x 10, timed first while the heap is fresh.
    let small = STUDY_1M.replace("num: 100", "num: 10");
    let sample = study::expand_raw(&source("bench-1k.yaml", &small), &opts).expect("expand 1k");
    let mut n_valid = 0usize;
    let iters = 20;
    let t = Instant::now();
    for _ in 0..iters {
        for rc in &sample {
            let mut m = rc.map.clone();
            validate::expand_sampling_preset(&mut m);
            if validate::validate_experiment(&m).is_ok() {
                n_valid += 1;
            }
        }
    }
    let validate_us = t.elapsed().as_secs_f64() * 1e6 / (iters * sample.len()) as f64;
    assert_eq!(n_valid, iters * sample.len(), "every bench config is valid");
    drop(sample);

    let t = Instant::now();
    let n = study::count_before_expansion(&src, &opts).expect("count");
    let count_us = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(n, 1_000_000);

    // Streamed expansion, as `plan` consumes it: every raw config is built in full,
    // handed over and dropped. Best of three runs.
    let mut expand_s = f64::INFINITY;
    for _ in 0..3 {
        let mut i = 0usize;
        let t = Instant::now();
        let n = study::for_each_raw(&src, &opts, |rc| {
            std::hint::black_box(&rc);
            i += 1;
        })
        .expect("expand");
        expand_s = expand_s.min(t.elapsed().as_secs_f64());
        assert_eq!(n, 1_000_000);
    }

    // The whole grid materialised in memory at once (what a caller that collects pays).
    let t = Instant::now();
    let raws = study::expand_raw(&src, &opts).expect("expand");
    let collect_s = t.elapsed().as_secs_f64();
    assert_eq!(raws.len(), 1_000_000);
    drop(raws);

    println!(
        "expand_1m_configs_s={expand_s:.3} validate_one_config_us={validate_us:.2} count_1m_configs_us={count_us:.0}"
    );
    println!("expand_1m_configs_collected_s={collect_s:.3} (all 1,000,000 raw configs held in memory at once)");

    let t = Instant::now();
    let p = study::plan(&source("bench-10k.yaml", STUDY_10K), &opts).expect("plan");
    let plan_s = t.elapsed().as_secs_f64();
    println!(
        "plan_10k_configs_s={plan_s:.3} ({} runs, {:.1} us per run: validate, canonicalise, dedup, hash, order)",
        p.runs.len(),
        plan_s * 1e6 / p.runs.len() as f64
    );
}
