//! Randomized differential test against the live oracle (`expand_study.py`).
//!
//! Runs only when `LEM_ORACLE_PYTHON` points at a python with llenergymeasure 0.7.0
//! installed (see shared/llem/README.md); otherwise it prints that it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use lem_common::pyjson;
use lem_common::study::{plan, PlanOptions, StudySource};
use lem_common::Value;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

fn study_text(rng: &mut Lcg) -> String {
    let mut s =
        String::from("task:\n  model: gpt2\n  max_output_tokens: 32\nserving_mode: offline\n");
    if rng.next() % 3 == 0 {
        s.push_str(&format!(
            "engine: {}\n",
            rng.pick(&["transformers", "vllm", "tensorrt"])
        ));
    }
    if rng.next() % 3 == 0 {
        s.push_str("transformers:\n  engine_params:\n    dtype: float16\n");
    }
    s.push_str("sweep:\n");
    let axes = [
        "  task.max_input_tokens: [64, 128]\n",
        "  sampling_preset: [deterministic, factual, creative]\n",
        "  transformers.engine_params.dtype: [float32, bfloat16]\n",
        "  transformers.engine_params.attn_implementation: [sdpa, flash_attention_2]\n",
        "  transformers.sampling_params.do_sample: [false, true]\n",
        "  transformers.sampling_params.temperature: {min: 0.1, max: 0.9, num: 4}\n",
        "  vllm.engine_params.max_num_seqs: {pow2: {min: 8, max: 64}}\n",
        "  vllm.sampling_params.seed: [-1, 7]\n",
        "  vllm.sampling_params.top_p: [0.0, 0.5, 1.0]\n",
        "  tensorrt.engine_params.max_batch_size: {log: {min: 1, max: 64, num: 4}}\n",
        "  tensorrt.engine_params.fast_build: [false, true]\n",
        "  task.dataset.order: [interleaved, shuffled]\n",
    ];
    let n = 1 + rng.next() as usize % 3;
    let mut used = Vec::new();
    while used.len() < n {
        let a = axes[rng.next() as usize % axes.len()];
        if !used.contains(&a) {
            used.push(a);
            s.push_str(a);
        }
    }
    let order = rng.pick(&[
        "sequential",
        "interleave",
        "shuffle",
        "reverse",
        "latin_square",
    ]);
    s.push_str(&format!(
        "study_execution:\n  n_cycles: {}\n  experiment_order: {order}\n",
        1 + rng.next() % 3
    ));
    if rng.next() % 2 == 0 {
        s.push_str("  deduplicate_equivalent: false\n");
    }
    s
}

fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_map().and_then(|m| m.get(k))
}

#[test]
fn random_studies_match_the_live_oracle() {
    let Ok(python) = std::env::var("LEM_ORACLE_PYTHON") else {
        eprintln!("skipped: set LEM_ORACLE_PYTHON to a python with llenergymeasure 0.7.0 to run the live-oracle test");
        return;
    };
    let shared = std::env::var("LLEM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/llem"));
    let oracle = shared.join("expand_study.py");
    assert!(oracle.is_file(), "oracle not found at {}", oracle.display());
    let dir = std::env::temp_dir().join(format!("lem-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Lcg(0x5eed);
    let mut failures = Vec::new();
    for i in 0..40 {
        let text = study_text(&mut rng);
        let path = dir.join(format!("s{i}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(&python)
            .arg(&oracle)
            .arg(&path)
            .arg("--compact")
            .output()
            .unwrap();
        let want = pyjson::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let got = plan(&StudySource::read(&path).unwrap(), &PlanOptions::default());
        match (get(&want, "error"), got) {
            (Some(_), Err(_)) => {}
            (Some(e), Ok(_)) => failures.push(format!(
                "study {i}: oracle rejected ({}) but plan succeeded\n{text}",
                pyjson::dumps_sorted(e)
            )),
            (None, Err(e)) => failures.push(format!("study {i}: plan failed: {e}\n{text}")),
            (None, Ok(p)) => {
                let g = p.to_oracle_json();
                for key in ["n_configs", "n_runs", "runs", "study_design_hash"] {
                    if get(&g, key).map(pyjson::dumps_sorted)
                        != get(&want, key).map(pyjson::dumps_sorted)
                    {
                        failures.push(format!("study {i}: {key} differs\n{text}"));
                    }
                }
                let skips = |v: &Value| -> Vec<String> {
                    match get(v, "skipped") {
                        Some(Value::Seq(s)) => s
                            .iter()
                            .map(|e| {
                                format!(
                                    "{} {} {}",
                                    get(e, "config")
                                        .map(pyjson::dumps_sorted)
                                        .unwrap_or_default(),
                                    get(e, "rule_id")
                                        .map(pyjson::dumps_sorted)
                                        .unwrap_or_default(),
                                    get(e, "reason")
                                        .map(pyjson::dumps_sorted)
                                        .unwrap_or_default()
                                )
                            })
                            .collect(),
                        _ => Vec::new(),
                    }
                };
                if skips(&g) != skips(&want) {
                    failures.push(format!(
                        "study {i}: skipped differs\n  got  {:?}\n  want {:?}\n{text}",
                        skips(&g),
                        skips(&want)
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
