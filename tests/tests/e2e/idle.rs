//! `lem-worker --exit-when-idle` with real processes (worker/src/idle.rs states the
//! rule): a worker started before the campaign waits for it (the grace), runs it on
//! two slots, and leaves once nothing is left for it: exit 0, deregistered, every
//! result there. Another with no grace leaves after its first full idle long poll,
//! but not when the coordinator stops under it (a stopping coordinator answers its
//! long polls at once: that is not "no work").
//!
//! And `--drain` when the harness is signalled a moment before the worker, as when
//! Slurm signals every process of a job step: the run is handed back, not failed.

use std::time::{Duration, Instant};

use lem_tests::{describe, repo_root, run, wait_for, Proc};
use serde_json::Value;

use crate::{
    campaign_id, connected, results_jsonl, start_worker_with, status_json, wait_for_addr, COORD,
};

/// The worker's lease long poll (worker/src/slot.rs LEASE_WAIT_MS): an idle worker
/// leaves at the end of one.
const LONG_POLL: Duration = Duration::from_secs(20);

fn spawn_coord(dir: &std::path::Path, name: &str, listen: &str) -> Proc {
    let coord_dir = dir.join("coord");
    Proc::spawn(
        name,
        COORD,
        &[
            "start",
            "--listen",
            listen,
            "--data-dir",
            coord_dir.to_str().unwrap(),
        ],
        dir,
    )
}

#[test]
fn exit_when_idle_waits_for_the_campaign_runs_it_and_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let coord_dir = dir.join("coord");
    let coord = spawn_coord(dir, "coord", "127.0.0.1:0");
    let addr = wait_for_addr(&coord, &coord_dir);
    let mut dead = vec![];
    let mut coord = coord;

    // `patient` starts before any campaign exists: the default grace (5 minutes)
    // keeps it through its idle long polls. `eager` has no grace.
    let mut patient = start_worker_with(
        dir,
        &addr,
        "patient",
        &[
            "--exit-when-idle",
            "--slots",
            "2",
            "--prefill-window-seconds",
            "0",
        ],
    );
    let mut eager = start_worker_with(
        dir,
        &addr,
        "eager",
        &["--exit-when-idle", "--idle-grace", "0"],
    );
    for name in ["patient", "eager"] {
        wait_for(
            &format!("{name} connected"),
            Duration::from_secs(60),
            &[&coord, &patient, &eager],
            || connected(&addr, name).filter(|c| *c),
        );
    }

    // The coordinator stops (SIGTERM) in the middle of their first long polls and
    // comes back on the same address: an answer cut short is not "no work".
    coord.signal(libc::SIGTERM);
    assert!(
        coord
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "{}",
        coord.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        eager.is_running(),
        "a stopping coordinator does not send a worker home\n{}",
        eager.logs()
    );
    let _ = std::fs::remove_file(coord_dir.join("coordinator.addr"));
    dead.push(coord);
    coord = spawn_coord(dir, "coord-again", &addr);
    wait_for(
        "the coordinator back on its address",
        Duration::from_secs(30),
        &[&coord],
        || {
            std::fs::read_to_string(coord_dir.join("coordinator.addr"))
                .ok()
                .filter(|a| *a == addr)
        },
    );
    let back = Instant::now();

    // `eager` leaves after one full idle long poll on the restarted coordinator.
    let status = eager.wait_exit(LONG_POLL * 3);
    let after = back.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "eager exits 0 once idle ({status:?})\n{}",
        eager.logs()
    );
    assert!(
        after >= LONG_POLL - Duration::from_secs(2),
        "eager left {after:?} after the restart, before a full long poll\n{}",
        eager.logs()
    );
    let log = std::fs::read_to_string(&eager.stderr).unwrap();
    assert!(log.contains("leaving (--exit-when-idle)"), "{log}");
    assert!(log.contains("deregistered"), "{log}");
    assert_eq!(
        connected(&addr, "eager"),
        Some(false),
        "deregistered on its way out"
    );
    assert!(
        patient.is_running(),
        "patient is within its grace\n{}",
        patient.logs()
    );

    // The campaign: 12 runs, all on `patient`.
    let study = repo_root().join("tests/fixtures/e2e-12.yaml");
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);
    let status = wait_for(
        "the 12 runs to finish",
        Duration::from_secs(300),
        &[&coord, &patient],
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == 12).then_some(s)
        },
    );
    let done_at = Instant::now();
    assert_eq!(status["done"], 12, "{status}");

    // Then it leaves: one full idle long poll after the last run, exit 0.
    let exit = patient.wait_exit(LONG_POLL * 3);
    assert!(
        exit.is_some_and(|s| s.success()),
        "patient exits 0 once the campaign is done ({exit:?})\n{}",
        patient.logs()
    );
    eprintln!(
        "patient left {:.1} s after the campaign finished",
        done_at.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&patient.stderr).unwrap();
    assert!(log.contains("leaving (--exit-when-idle)"), "{log}");
    assert_eq!(connected(&addr, "patient"), Some(false));

    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    assert_eq!(rows.len(), 12);
    let mut slots = std::collections::BTreeSet::new();
    for r in &rows {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["worker"], "patient", "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        assert!(r["total_energy_j"].as_f64().unwrap() > 0.0, "{r}");
        slots.insert(r["gpu_indices"].to_string());
    }
    assert_eq!(slots.len(), 2, "both slots ran runs: {slots:?}");
    drop(dead);
}

/// The pids of `parent`'s children whose command line contains `needle`.
fn children(parent: u32, needle: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn drain_hands_back_a_run_whose_harness_was_signalled_just_before_the_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let coord = spawn_coord(dir, "coord", "127.0.0.1:0");
    let addr = wait_for_addr(&coord, &dir.join("coord"));
    let study = dir.join("long.yaml");
    std::fs::write(
        &study,
        "study_name: long\ntask: {model: synthetic/long, dataset: {n_prompts: 1}, max_input_tokens: 16, max_output_tokens: 4}\nengine: synthetic\nserving_mode: offline\nmeasurement: {baseline: {enabled: false}}\noffline: {warmup: {enabled: false}}\nsynthetic: {engine_params: {load_seconds: 0.2, decode_ms_per_step: 30000.0}}\nsweep: {synthetic.engine_params.batch_size: [1]}\nstudy_execution: {n_cycles: 1}\n",
    )
    .unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);
    let mut worker = start_worker_with(
        dir,
        &addr,
        "w",
        &["--drain", "--prefill-window-seconds", "0"],
    );
    wait_for(
        "the run in progress",
        Duration::from_secs(60),
        &[&coord, &worker],
        || (status_json(&addr, &id)?["running"] == 1).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let harness = children(worker.child.id(), "server.py");
    assert_eq!(harness.len(), 1, "one harness server: {harness:?}");
    // The harness first, the worker 300 ms later (a signal to the whole step reaches
    // them in either order).
    // SAFETY: signalling processes this test started.
    unsafe { libc::kill(harness[0], libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(worker.child.id() as i32, libc::SIGTERM) };
    let exit = worker.wait_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        worker.logs()
    );
    let s = status_json(&addr, &id).unwrap();
    assert_eq!(
        (&s["pending"], &s["failed"]),
        (&Value::from(1), &Value::from(0)),
        "{s}"
    );
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    assert_eq!(
        rows[0]["attempts"], 0,
        "handed back, its attempt given back: {}",
        rows[0]
    );
    let log = std::fs::read_to_string(&worker.stderr).unwrap();
    assert!(log.contains("run handed back"), "{log}");
}
