//! `lem-coord bench` runs end to end (small sizes; the numbers are for
//! docs/performance.md, never asserted here): its last line has the documented
//! shape, and the manifests it leaves say what it claimed.

use std::process::Command;

use lem_coord::store::Store;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lem-coord"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run lem-coord bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "lem-coord bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of `key=` in a line of `key=value` pairs.
fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn bench_leases_completes_each_pair_once_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = bench(&[
        "leases",
        "--workers",
        "4",
        "--seconds",
        "1",
        "--warmup-secs",
        "0.2",
        "--runs",
        "20000",
        "--data-dir",
        d,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    let last = lines.last().unwrap();
    assert!(last.starts_with("leases_per_s="), "{out}");
    for k in ["leases_per_s", "p50_ms", "p99_ms"] {
        assert!(field(last, k) > 0.0, "{out}");
    }
    let summary = lines[lines.len() - 2];
    assert_eq!(field(summary, "workers"), 4.0);
    assert!(summary.contains("tls=true"), "{summary}");
    // The manifest it leaves: done runs are exactly the pairs made (measured or
    // warm-up), none leased, the rest pending.
    let store = Store::open(&dir.path().join("coordinator")).unwrap();
    let mut total = lem_coord::store::StateCounts::default();
    for c in store.campaigns().unwrap() {
        let n = store.counts(c.id).unwrap();
        total.done += n.done;
        total.leased += n.leased;
        total.pending += n.pending;
    }
    assert_eq!(total.leased, 0);
    assert_eq!(total.done + total.pending, 20_000);
    assert!(total.done as f64 >= field(summary, "pairs"), "{out}");
}

#[test]
fn bench_manifest_restarts_a_killed_coordinator_and_reports_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = bench(&["manifest", "--runs", "2000", "--data-dir", d]);
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("restart_to_first_lease_s="), "{out}");
    assert!(field(last, "rss_mb") > 0.0, "{out}");
    // The restarted coordinator leased one run of the 2,000 and was stopped.
    let store = Store::open(&dir.path().join("coordinator")).unwrap();
    let c = store.campaigns().unwrap();
    assert_eq!(c.len(), 1);
    let n = store.counts(c[0].id).unwrap();
    assert_eq!((n.total(), n.leased, n.pending), (2000, 1, 1999));
    assert!(store
        .study_text(c[0].id)
        .unwrap()
        .contains("bench-manifest"));
}
