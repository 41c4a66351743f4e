//! Randomized differential test against the live oracle (`expand_study.py`).
//!
//! 1,000 generated studies (every experiment order, explicit and derived shuffle
//! seeds, groups with mini-grids, all three range shorthands, `experiments:` lists,
//! engine lists, dedup on and off, gaps) expanded by `plan()` and by llem's own code.
//! llem runs in ONE Python process (`llem_oracle_driver.py`, which calls the oracle's
//! `expand` per file), so the whole test takes well under a minute.
//!
//! Runs only when `LEM_ORACLE_PYTHON` points at a python with llenergymeasure 0.7.0
//! installed (see shared/llem/README.md); otherwise it prints that it was skipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

const ORDERS: [&str; 5] = [
    "sequential",
    "interleave",
    "shuffle",
    "reverse",
    "latin_square",
];

/// A random study; `i` picks the experiment order and dedup setting round-robin so
/// that every combination is covered, the rest is random.
fn study_text(rng: &mut Lcg, i: usize) -> String {
    let mut s =
        String::from("task:\n  model: gpt2\n  max_output_tokens: 32\nserving_mode: offline\n");
    match rng.next() % 6 {
        0 | 1 => s.push_str(&format!(
            "engine: {}\n",
            rng.pick(&["transformers", "vllm", "tensorrt"])
        )),
        2 => s.push_str("engine: [vllm, transformers]\n"),
        _ => {}
    }
    if rng.next() % 3 == 0 {
        s.push_str("transformers:\n  engine_params:\n    dtype: float16\n");
    }
    if rng.next() % 5 == 0 {
        s.push_str("vllm:\n  engine_params:\n    max_num_seqs: 32\n");
    }
    let with_experiments = rng.next() % 4 == 0;
    let axes = [
        "  task.max_input_tokens: [64, 128]\n",
        "  sampling_preset: [deterministic, factual, creative]\n",
        "  transformers.engine_params.dtype: [float32, bfloat16]\n",
        "  transformers.engine_params.attn_implementation: [sdpa, flash_attention_2]\n",
        "  transformers.sampling_params.do_sample: [false, true]\n",
        "  transformers.sampling_params.temperature: {min: 0.1, max: 0.9, num: 4}\n",
        "  transformers.llem_execution.batch_size: {pow2: {min: 1, max: 8}}\n",
        "  vllm.engine_params.max_num_seqs: {pow2: {min: 8, max: 64}}\n",
        "  vllm.sampling_params.seed: [-1, 7]\n",
        "  vllm.sampling_params.top_p: [0.0, 0.5, 1.0]\n",
        "  tensorrt.engine_params.max_batch_size: {log: {min: 1, max: 64, num: 4}}\n",
        "  tensorrt.engine_params.fast_build: [false, true]\n",
        "  task.dataset.order: [interleaved, shuffled]\n",
        "  task.max_output_tokens: {min: 16, max: 64, num: 3}\n",
        "  measurement.baseline.enabled: [true, false]\n",
    ];
    let groups = [
        "  sampling:\n    - {}\n    - {sampling_preset: standard}\n    - {task.random_seed: [1, 2]}\n",
        "  vllm.parallel:\n    - {vllm.engine_params.tensor_parallel_size: 1}\n    - {vllm.engine_params.tensor_parallel_size: 2, vllm.engine_params.max_num_seqs: [16, 32]}\n",
        "  transformers.beams:\n    - {transformers.engine_params.num_beams: 1, transformers.engine_params.early_stopping: true}\n    - {transformers.engine_params.num_beams: 4}\n",
        "  lengths:\n    - {task.max_input_tokens: 32}\n    - {task.max_input_tokens: 64, task.max_output_tokens: [8, 16]}\n",
    ];
    s.push_str("sweep:\n");
    let n = if with_experiments {
        rng.next() as usize % 2
    } else {
        1 + rng.next() as usize % 3
    };
    let mut used = Vec::new();
    while used.len() < n {
        let a = axes[rng.next() as usize % axes.len()];
        if !used.contains(&a) {
            used.push(a);
            s.push_str(a);
        }
    }
    if rng.next() % 3 == 0 {
        s.push_str(groups[rng.next() as usize % groups.len()]);
    }
    if n == 0 && !s.ends_with("sweep:\n") {
        // a group alone is a non-empty sweep
    } else if n == 0 {
        s.truncate(s.len() - "sweep:\n".len());
        s.push_str("sweep: {}\n");
    }
    if with_experiments {
        s.push_str("experiments:\n");
        let entries = [
            "  - {task: {max_input_tokens: 16}}\n",
            "  - {engine: vllm, vllm: {sampling_params: {temperature: 0.5}}}\n",
            "  - {engine: tensorrt, tensorrt: {engine_params: {max_batch_size: 4}}}\n",
            "  - {transformers: {sampling_params: {do_sample: false, temperature: 0.7}}}\n",
            "  - {engine: vllm, vllm: {sampling_params: {seed: -1}}}\n",
            "  - {sampling_preset: creative}\n",
        ];
        for _ in 0..1 + rng.next() % 3 {
            s.push_str(entries[rng.next() as usize % entries.len()]);
        }
    }
    let order = ORDERS[i % ORDERS.len()];
    s.push_str("study_execution:\n");
    if rng.next() % 5 != 0 {
        s.push_str(&format!("  n_cycles: {}\n", 1 + rng.next() % 3));
    }
    if i % 11 != 0 {
        // (every 11th study leaves the order out: the CLI default, shuffle)
        s.push_str(&format!("  experiment_order: {order}\n"));
    }
    if order == "shuffle" {
        match rng.next() % 4 {
            0 => s.push_str(&format!("  shuffle_seed: {}\n", rng.next() % 100_000)),
            1 => s.push_str("  shuffle_seed: -7\n"),
            2 => s.push_str("  shuffle_seed: 98765432109\n"),
            _ => {}
        }
    }
    if (i / ORDERS.len()) % 2 == 1 {
        s.push_str("  deduplicate_equivalent: false\n");
    }
    if rng.next() % 4 == 0 {
        s.push_str("  experiment_gap_seconds: 5\n  cycle_gap_seconds: 30\n");
    }
    s
}

fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_map().and_then(|m| m.get(k))
}

const N_STUDIES: usize = 1000;

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
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llem_oracle_driver.py");
    let dir = std::env::temp_dir().join(format!("lem-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Lcg(0x5eed);
    let mut texts = Vec::with_capacity(N_STUDIES);
    for i in 0..N_STUDIES {
        let text = study_text(&mut rng, i);
        let path = dir.join(format!("s{i}.yaml"));
        std::fs::write(&path, &text).unwrap();
        texts.push((path, text));
    }
    // Two Python processes (one per core; importing llem costs ~0.5 s, so not one per
    // study) each expand half of the studies, while this thread plans them all.
    const PROCS: usize = 2;
    let chunk = N_STUDIES.div_ceil(PROCS);
    let readers: Vec<_> = texts
        .chunks(chunk)
        .map(|part| {
            let list: String = part
                .iter()
                .map(|(p, _)| format!("{}\n", p.display()))
                .collect();
            let mut child = Command::new(&python)
                .arg(&driver)
                .arg(&shared)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                stdin.write_all(list.as_bytes())?;
                drop(stdin);
                child.wait_with_output()
            })
        })
        .collect();
    let plans: Vec<Result<Value, String>> = texts
        .iter()
        .map(|(path, _)| {
            plan(&StudySource::read(path).unwrap(), &PlanOptions::default())
                .map(|p| p.to_oracle_json())
                .map_err(|e| e.to_string())
        })
        .collect();
    let mut stdout = String::new();
    for r in readers {
        let out = r.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "oracle driver failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.push_str(std::str::from_utf8(&out.stdout).unwrap());
    }
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), N_STUDIES, "one oracle answer per study");
    let mut failures = Vec::new();
    let mut seen_orders = std::collections::BTreeSet::new();
    let mut n_ok = 0;
    for (i, (((_, text), answer), got)) in texts.iter().zip(&answers).zip(plans).enumerate() {
        let want = pyjson::parse(answer).unwrap();
        match (get(&want, "error"), got) {
            (Some(_), Err(_)) => {}
            (Some(e), Ok(_)) => failures.push(format!(
                "study {i}: oracle rejected ({}) but plan succeeded\n{text}",
                pyjson::dumps_sorted(e)
            )),
            (None, Err(e)) => failures.push(format!("study {i}: plan failed: {e}\n{text}")),
            (None, Ok(g)) => {
                n_ok += 1;
                if let Some(o) = get(&want, "execution").and_then(|e| get(e, "experiment_order")) {
                    seen_orders.insert(pyjson::dumps_sorted(o));
                }
                for key in [
                    "n_configs",
                    "n_runs",
                    "runs",
                    "study_design_hash",
                    "n_valid_declared",
                    "dedup_mode",
                    "execution",
                ] {
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
                // The one deliberate wording difference (docs/llem-compat.md): the
                // fleet's engine enum also lists its `synthetic` engine.
                let ours = |v: &Value| -> Vec<String> {
                    skips(v)
                        .into_iter()
                        .map(|s| {
                            s.replace(
                                "'transformers', 'vllm', 'tensorrt' or 'synthetic'",
                                "'transformers', 'vllm' or 'tensorrt'",
                            )
                        })
                        .collect()
                };
                if ours(&g) != skips(&want) {
                    failures.push(format!(
                        "study {i}: skipped differs\n  got  {:?}\n  want {:?}\n{text}",
                        ours(&g),
                        skips(&want)
                    ));
                }
            }
        }
        if failures.len() > 20 {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        n_ok * 10 >= N_STUDIES * 8,
        "only {n_ok} of {N_STUDIES} generated studies were valid; the generator lost its coverage"
    );
    assert_eq!(
        seen_orders.len(),
        ORDERS.len(),
        "orders covered: {seen_orders:?}"
    );
}
