//! The CLI's edges and its live view: a campaign that does not exist is an error
//! that names it, `submit --wait` and `status --watch` follow a campaign to its end,
//! and `lem-coord run` stopped by a signal writes what finished and resumes the
//! same campaign when the same command runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use lem_tests::{describe, parse_jsonl, run, wait_for, Proc};
use serde_json::Value;

use crate::{start_coordinator, start_worker, start_worker_with, status_json, COORD};

/// A synthetic study of `configs` batch sizes x `cycles` cycles, each run about
/// `decode_ms` x 4 long (no baseline, no warm-up).
fn write_study(dir: &Path, name: &str, configs: usize, cycles: u32, decode_ms: u32) -> String {
    let sizes: Vec<String> = (1..=configs).map(|b| b.to_string()).collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "study_name: {name}\ntask:\n  model: synthetic/live\n  dataset:\n    n_prompts: 1\n  max_input_tokens: 16\n  max_output_tokens: 4\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    enabled: false\noffline:\n  warmup:\n    enabled: false\nsynthetic:\n  engine_params:\n    load_seconds: 0.2\n    decode_ms_per_step: {decode_ms}.0\nsweep:\n  synthetic.engine_params.batch_size: [{}]\nstudy_execution:\n  n_cycles: {cycles}\n",
            sizes.join(", ")
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `(finished, total)` of each progress line the live view printed, in order.
fn progress(text: &str, campaign: &str) -> Vec<(u64, u64)> {
    let head = format!("campaign {campaign}: ");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&head)?;
            let (frac, _) = rest.split_once(" run(s) finished")?;
            let (a, b) = frac.split_once('/')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_campaign_that_does_not_exist_is_an_error_that_names_it_and_writes_nothing() {
    // `lem-coord results 99 --format csv --output r.csv` once printed "wrote 0 run(s)"
    // and exited 0 for a campaign the coordinator never had. Every command that
    // reads a campaign goes through `fetch_rows`/`fetch_status`.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    // One campaign exists, so 99 is not merely "the coordinator is empty".
    let study = write_study(dir, "one.yaml", 1, 1, 1);
    let out = run(COORD, &["submit", &study, "--coordinator", &addr]);
    assert!(out.status.success(), "{}", describe(&["submit"], &out));
    assert_eq!(lem_tests::campaign_id(&out.stdout), "1");

    let out_dir = dir.join("out");
    let mut cases: Vec<(Vec<String>, Option<std::path::PathBuf>)> = Vec::new();
    for (format, file) in [
        ("jsonl", "r.jsonl"),
        ("csv", "r.csv"),
        ("parquet", "r.parquet"),
        ("timeseries", "t.jsonl"),
        ("llem", "bundle"),
    ] {
        let target = out_dir.join(file);
        cases.push((
            vec![
                "results".into(),
                "99".into(),
                "--format".into(),
                format.into(),
                "--output".into(),
                target.to_str().unwrap().into(),
            ],
            Some(target),
        ));
    }
    let aggregate = out_dir.join("agg.csv");
    cases.push((
        vec![
            "results".into(),
            "99".into(),
            "--aggregate".into(),
            "--format".into(),
            "csv".into(),
            "--output".into(),
            aggregate.to_str().unwrap().into(),
        ],
        Some(aggregate),
    ));
    cases.push((vec!["results".into(), "99".into()], None));
    let report = out_dir.join("report.html");
    cases.push((
        vec![
            "report".into(),
            "99".into(),
            "-o".into(),
            report.to_str().unwrap().into(),
        ],
        Some(report),
    ));
    for cmd in [
        &["summary", "99"][..],
        &["summary", "99", "--json"],
        &["results", "validate", "99"],
        &["results", "validate", "99", "--json"],
        &["compare", "1", "99"],
        &["status", "99"],
        &["status", "99", "--json"],
        &["status", "99", "--watch", "--interval", "0.2"],
        &["cancel", "99"],
        &["retry", "99"],
    ] {
        cases.push((cmd.iter().map(|s| s.to_string()).collect(), None));
    }
    for (cmd, target) in cases {
        let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        args.extend(["--coordinator", &addr]);
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
        assert!(
            err.contains("campaign 99 does not exist on this coordinator")
                && err.contains("`lem-coord status` lists campaigns"),
            "{}",
            describe(&args, &out)
        );
        assert!(out.stdout.is_empty(), "{}", describe(&args, &out));
        if let Some(t) = target {
            assert!(
                !t.exists(),
                "{} was written: {}",
                t.display(),
                describe(&args, &out)
            );
        }
    }
    assert!(!out_dir.exists(), "nothing was written");
    // The campaign that exists is untouched by the refused cancel.
    let s = status_json(&addr, "1").unwrap();
    assert_eq!(s["cancelled"], 0, "{s}");
    drop(coord);
}

#[test]
fn submit_wait_and_status_watch_follow_a_campaign_to_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let worker = start_worker_with(dir, &addr, "w", &["--prefill-window-seconds", "0"]);
    // 3 configs x 2 cycles of about a second each, on one worker.
    let study = write_study(dir, "six.yaml", 3, 2, 250);
    let mut submit = Proc::spawn(
        "submit",
        COORD,
        &[
            "submit",
            &study,
            "--wait",
            "--interval",
            "0.3",
            "--coordinator",
            &addr,
        ],
        dir,
    );
    let id = wait_for(
        "submit --wait to print the campaign id",
        Duration::from_secs(60),
        &[&coord, &worker, &submit],
        || {
            let text = read(&submit.stdout);
            let line = text.lines().next()?.trim().to_string();
            line.parse::<u64>().ok().map(|_| line)
        },
    );
    let mut watch = Proc::spawn(
        "watch",
        COORD,
        &[
            "status",
            &id,
            "--watch",
            "--interval",
            "0.3",
            "--coordinator",
            &addr,
        ],
        dir,
    );
    for p in [&mut submit, &mut watch] {
        let st = p.wait_exit(Duration::from_secs(180));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} exits 0 once every run is done ({st:?})\n{}\n{}",
            p.name,
            p.logs(),
            worker.logs()
        );
    }
    // They waited for the end: every run is done now.
    let s = status_json(&addr, &id).unwrap();
    assert_eq!(
        (s["done"].as_u64(), s["total"].as_u64()),
        (Some(6), Some(6)),
        "{s}"
    );
    assert_eq!(s["engines"][0]["engine"], "synthetic", "{s}");
    assert_eq!(s["engines"][0]["done"], 6, "{s}");
    // Standard output of submit is still the id alone.
    assert_eq!(read(&submit.stdout).trim(), id, "{}", submit.logs());
    // Progress lines: counts that never go back, ending at 6 of 6.
    for p in [&submit, &watch] {
        let lines = progress(&read(&p.stderr), &id);
        assert!(
            lines.last() == Some(&(6, 6))
                && lines.windows(2).all(|w| w[0].0 <= w[1].0)
                && lines.iter().all(|l| l.1 == 6),
            "{}: {lines:?}\n{}",
            p.name,
            p.logs()
        );
    }
    assert!(
        progress(&read(&submit.stderr), &id).len() >= 2,
        "submit --wait printed progress as it went\n{}",
        submit.logs()
    );
    // status --watch ends with the campaign's status on stdout.
    let text = read(&watch.stdout);
    assert!(
        text.contains(&format!("campaign {id}")) && text.contains(" done "),
        "{}",
        watch.logs()
    );
    drop(worker);
}

#[test]
fn watching_a_blocked_campaign_summarises_why_and_ctrl_c_stops_only_the_watch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let worker = start_worker(dir, &addr, "synthetic-only");
    let study = dir.join("vllm.yaml");
    std::fs::write(
        &study,
        "task:\n  model: Qwen/Qwen2.5-0.5B\nengine: vllm\nserving_mode: offline\nsweep:\n  vllm.engine_params.max_num_seqs: [8, 16]\nstudy_execution:\n  n_cycles: 1\n",
    )
    .unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = lem_tests::campaign_id(&out.stdout);
    let mut watch = Proc::spawn(
        "watch",
        COORD,
        &[
            "status",
            &id,
            "--watch",
            "--interval",
            "0.3",
            "--coordinator",
            &addr,
        ],
        dir,
    );
    // The worker's reason, under the engine's cause, once the worker registered.
    wait_for(
        "the watch to say why the runs are blocked",
        Duration::from_secs(60),
        &[&coord, &worker, &watch],
        || {
            let err = read(&watch.stderr);
            let at =
                err.find("blocked: vllm pending 2 run(s): no connected worker can run vllm")?;
            err[at..]
                .lines()
                .nth(1)
                .filter(|l| l.starts_with("    synthetic-only: "))
                .map(|_| ())
        },
    );
    watch.signal(libc::SIGINT);
    let st = watch.wait_exit(Duration::from_secs(20));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(130),
        "Ctrl-C stops the watch with 130\n{}",
        watch.logs()
    );
    assert!(
        read(&watch.stderr).contains(&format!("stopped watching campaign {id}")),
        "{}",
        watch.logs()
    );
    let s = status_json(&addr, &id).unwrap();
    assert_eq!(
        (s["pending"].as_u64(), s["cancelled"].as_u64()),
        (Some(2), Some(0)),
        "the campaign goes on: {s}"
    );
    // Cancelled: a watch ends at once, and not with success.
    let out = run(COORD, &["cancel", &id, "--coordinator", &addr]);
    assert!(out.status.success());
    let args = ["status", &id, "--watch", "--coordinator", &addr];
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was cancelled"),
        "{}",
        describe(&args, &out)
    );
    drop(worker);
}

/// The rows of `DATA/campaign-ID/results.jsonl`, keyed by experiment id.
fn results_file(data: &Path, id: u64) -> BTreeMap<String, Value> {
    let path = data.join(format!("campaign-{id}")).join("results.jsonl");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows = parse_jsonl(&bytes).unwrap();
    let n = rows.len();
    let by_id: BTreeMap<String, Value> = rows
        .into_iter()
        .map(|r| (r["experiment_id"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(by_id.len(), n, "one row per run in {}", path.display());
    // Beside them: the summary table, one row per configuration and the report.
    let dir = data.join(format!("campaign-{id}"));
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("| config_hash"), "{summary}");
    let aggregate = std::fs::read_to_string(dir.join("results-aggregate.csv")).unwrap();
    assert!(aggregate.starts_with("config_hash,"), "{aggregate}");
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains(&format!("campaign {id}")));
    by_id
}

/// The campaigns of `run`'s manifest: (id, cancelled, total, done, pending + leased).
fn manifest(data: &Path) -> Vec<(u64, bool, u64, u64, u64)> {
    let store = lem_coord::store::Store::open(&data.join("coordinator")).unwrap();
    store
        .campaigns()
        .unwrap()
        .into_iter()
        .map(|c| {
            let n = store.counts(c.id).unwrap();
            (c.id.0, c.cancelled, n.total(), n.done, n.pending + n.leased)
        })
        .collect()
}

/// Starts `lem-coord run` in the background; waits until `n` runs have finished
/// (its progress lines say so), then sends `sig`; returns it once it exited.
fn run_until(dir: &Path, name: &str, args: &[&str], n: u64, sig: i32) -> Proc {
    let mut p = Proc::spawn(name, COORD, args, dir);
    wait_for(
        &format!("{name} to finish {n} run(s)"),
        Duration::from_secs(120),
        &[&p],
        || {
            let err = read(&p.stderr);
            let done = progress(&err, "1").last().map_or(0, |l| l.0);
            let started = err.contains("local worker(s); data in");
            (started && done >= n).then_some(())
        },
    );
    p.signal(sig);
    let st = p.wait_exit(Duration::from_secs(90));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(130),
        "a signal stops `run` with 130\n{}",
        p.logs()
    );
    p
}

#[test]
fn run_stopped_by_ctrl_c_writes_what_finished_and_the_same_command_resumes_it() {
    // Ctrl-C on `lem-coord run`, then the same command: the first campaign's runs were
    // neither finished nor written, a second campaign was submitted, and the same
    // workers ran the leftovers of both (twice the runs).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let study = write_study(dir, "eight.yaml", 4, 2, 300);
    let data = dir.join("lem-data");
    let args = [
        "run",
        study.as_str(),
        "--simulate-gpu",
        "--local-workers",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let first = run_until(dir, "run-1", &args, 2, libc::SIGINT);
    let err = read(&first.stderr);
    assert!(
        err.contains(&format!(
            "the same command resumes campaign 1: lem-coord run {study} --simulate-gpu"
        )),
        "says how to resume\n{}",
        first.logs()
    );
    // What finished is written, and only that.
    let partial = results_file(&data, 1);
    let status = manifest(&data);
    assert_eq!(status.len(), 1, "{status:?}");
    let (_, cancelled, total, done, left) = status[0];
    assert!(!cancelled && total == 8, "{status:?}");
    assert!(done >= 2 && left > 0, "stopped mid-campaign: {status:?}");
    assert_eq!(partial.len() as u64, done, "{partial:?}");
    assert!(
        partial.values().all(|r| r["state"] == "done"),
        "{partial:?}"
    );

    // The same command again: the same campaign, resumed; nothing done is run again.
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("resuming campaign 1 ({left} of 8 runs left")),
        "{}",
        describe(&args, &out)
    );
    assert_eq!(
        manifest(&data),
        [(1, false, 8, 8, 0)],
        "one campaign, every run done: {}",
        describe(&args, &out)
    );
    let all = results_file(&data, 1);
    assert_eq!(all.len(), 8);
    let pairs: BTreeSet<(String, u64)> = all
        .values()
        .map(|r| {
            assert_eq!(r["state"], "done", "{r}");
            (
                r["config_hash"].as_str().unwrap().to_string(),
                r["cycle"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), 8, "each (config, cycle) once");
    for (id, before) in &partial {
        let after = &all[id];
        assert_eq!(
            (
                &after["started_at"],
                &after["total_energy_j"],
                &after["attempts"]
            ),
            (
                &before["started_at"],
                &before["total_energy_j"],
                &before["attempts"]
            ),
            "run {id} finished before the Ctrl-C is not run again"
        );
    }
    assert!(!data.join("campaign-2").exists());

    // Finished: the same command measures the study again, in a new campaign.
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("campaign 1 of this study finished earlier"),
        "{}",
        describe(&args, &out)
    );
    assert_eq!(manifest(&data), [(1, false, 8, 8, 0), (2, false, 8, 8, 0)]);
}

#[test]
fn run_new_cancels_the_unfinished_campaign_and_runs_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let study = write_study(dir, "four.yaml", 2, 2, 300);
    let data = dir.join("lem-data");
    let mut args = vec![
        "run",
        study.as_str(),
        "--simulate-gpu",
        "--local-workers",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    // SIGTERM stops `run` as Ctrl-C does.
    let _first = run_until(dir, "run-1", &args, 1, libc::SIGTERM);
    let before = manifest(&data);
    let (_, _, _, done_before, left) = before[0];
    assert!(left > 0, "{before:?}");
    args.push("--new");
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--new: cancelled unfinished campaign 1"),
        "{}",
        describe(&args, &out)
    );
    // Campaign 1 is cancelled with what it had done, and none of its runs was run
    // with campaign 2's; campaign 2 ran all four.
    assert_eq!(
        manifest(&data),
        [(1, true, 4, done_before, 0), (2, false, 4, 4, 0)],
        "{}",
        describe(&args, &out)
    );
    assert_eq!(results_file(&data, 2).len(), 4);
}
