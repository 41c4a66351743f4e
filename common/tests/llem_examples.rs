//! Differential test: `plan()` against the oracle's expected output for every example.
//!
//! The examples live in the shared llem folder beside the repository checkout
//! (`$LLEM_SHARED`, default `<CARGO_MANIFEST_DIR>/../../shared/llem`).

use std::path::{Path, PathBuf};

use lem_common::pyjson;
use lem_common::study::{plan, PlanOptions, StudySource};
use lem_common::Value;

fn shared_dir() -> PathBuf {
    match std::env::var("LLEM_SHARED") {
        Ok(p) => PathBuf::from(p),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/llem"),
    }
}

fn examples() -> Vec<PathBuf> {
    let dir = shared_dir().join("examples");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "llem examples folder not found at {} ({e}); set LLEM_SHARED to the shared/llem folder",
            dir.display()
        )
    });
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.yaml examples in {}", dir.display());
    out
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| m.get(k))
        .unwrap_or_else(|| panic!("missing key {k}"))
}

/// JSON-value equality (key order ignored, ints and floats kept apart as the oracle's text does).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

#[test]
fn every_example_matches_the_oracle() {
    let mut failures = Vec::new();
    let mut byte_identical = 0;
    for path in examples() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expected_path = path.with_extension("expected.json");
        let expected_text = std::fs::read_to_string(&expected_path).unwrap();
        let expected = pyjson::parse(&expected_text).unwrap();
        let src = StudySource::read(&path).unwrap();
        let got = match plan(&src, &PlanOptions::default()) {
            Ok(p) => p.to_oracle_json(),
            Err(e) => {
                failures.push(format!("{name}: plan failed: {e}"));
                continue;
            }
        };
        for key in ["n_configs", "n_runs"] {
            if get(&got, key) != get(&expected, key) {
                failures.push(format!(
                    "{name}: {key} {:?} != {:?}",
                    get(&got, key),
                    get(&expected, key)
                ));
            }
        }
        let pairs = |v: &Value| -> Vec<(Value, Value)> {
            match get(v, "runs") {
                Value::Seq(runs) => runs
                    .iter()
                    .map(|r| (get(r, "config_hash").clone(), get(r, "cycle").clone()))
                    .collect(),
                _ => Vec::new(),
            }
        };
        if pairs(&got) != pairs(&expected) {
            failures.push(format!(
                "{name}: (config_hash, cycle) order differs:\n  got {:?}\n  want {:?}",
                pairs(&got),
                pairs(&expected)
            ));
        }
        if let (Value::Seq(g), Value::Seq(w)) = (get(&got, "runs"), get(&expected, "runs")) {
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                if !same(get(a, "config"), get(b, "config")) {
                    failures.push(format!(
                        "{name}: run {i} config differs:\n  got  {}\n  want {}",
                        pyjson::dumps_sorted(get(a, "config")),
                        pyjson::dumps_sorted(get(b, "config"))
                    ));
                }
            }
        }
        if let (Value::Seq(g), Value::Seq(w)) = (get(&got, "skipped"), get(&expected, "skipped")) {
            if g.len() != w.len() {
                failures.push(format!("{name}: {} skipped, want {}", g.len(), w.len()));
            }
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                for key in ["config", "rule_id", "reason"] {
                    if !same(get(a, key), get(b, key)) {
                        failures.push(format!(
                            "{name}: skipped[{i}].{key} differs:\n  got  {}\n  want {}",
                            pyjson::dumps_sorted(get(a, key)),
                            pyjson::dumps_sorted(get(b, key))
                        ));
                    }
                }
            }
        }
        if pyjson::dumps_indent(&got, 1) + "\n" == expected_text {
            byte_identical += 1;
        } else {
            eprintln!("{name}: not byte-identical to the expected file");
        }
    }
    eprintln!("{byte_identical} example(s) byte-identical");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
