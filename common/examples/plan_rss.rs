//! Peak memory of planning a study (not a test): `plan` (a config tree per run)
//! against `plan_compact` (each config once, rendered as JSON; each run 16 bytes).
//!
//! ```sh
//! cargo build --release -p lem-common --example plan_rss
//! target/release/examples/plan_rss compact common/examples/plan-1m-runs.yaml
//! target/release/examples/plan_rss plan FILE     # ~15 GB on that study (extrapolated from its 100,000-run variant)
//! ```
//!
//! Run one mode per process: the figure is the process's peak resident set
//! (`VmHWM` in /proc/self/status), read after the plan is built and still held.
//! `compact` then also walks every run the way the coordinator's `submit` turns one
//! into a `NewRun` (owned strings, dropped one at a time), and prints what holding
//! all of them at once would take: the config JSON would be copied once per run.

use std::time::Instant;

use lem_common::study::{self, PlanOptions, StudySource};

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, path) = match args.as_slice() {
        [_, mode, path] if mode == "plan" || mode == "compact" => (mode.as_str(), path),
        _ => {
            eprintln!("usage: plan_rss plan|compact STUDY.yaml");
            std::process::exit(2);
        }
    };
    let src = StudySource::read(std::path::Path::new(path)).expect("read the study");
    let opts = PlanOptions::default();
    let before = vm_hwm_mib();
    let t = Instant::now();
    if mode == "plan" {
        let p = study::plan(&src, &opts).expect("plan");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "mode=plan configs={} runs={} plan_s={secs:.1} peak_rss_mib={:.0} (before planning {before:.0})",
            p.run_list.len(),
            p.runs.len(),
            vm_hwm_mib()
        );
        return;
    }
    let p = study::plan_compact(&src, &opts).expect("plan_compact");
    let secs = t.elapsed().as_secs_f64();
    let json_bytes: usize = p.configs.iter().map(|c| c.config_json.len()).sum();
    println!(
        "mode=compact configs={} runs={} plan_s={secs:.1} peak_rss_mib={:.0} (before planning {before:.0}) config_json_mib={:.0} ({} bytes per config on average)",
        p.configs.len(),
        p.runs.len(),
        vm_hwm_mib(),
        json_bytes as f64 / 1048576.0,
        json_bytes / p.configs.len().max(1)
    );
    // The coordinator's per-run fields, built and dropped one run at a time.
    let t = Instant::now();
    let mut per_run_json = 0usize;
    for r in &p.runs {
        let c = &p.configs[r.config as usize];
        let fields = (
            c.config_hash.clone(),
            r.cycle,
            c.engine.clone(),
            c.model.clone(),
            r.gap_before_seconds,
            c.config_json.clone(),
            c.tp_size,
        );
        per_run_json += std::hint::black_box(fields).5.len();
    }
    println!(
        "runs_streamed_s={:.2} peak_rss_mib={:.0} (a Vec of every per-run record would hold {:.0} MiB of config JSON)",
        t.elapsed().as_secs_f64(),
        vm_hwm_mib(),
        per_run_json as f64 / 1048576.0
    );
}
