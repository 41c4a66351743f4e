//! Fault injection: a 200-run campaign on 4 workers survives its coordinator being
//! SIGKILLed and restarted (same data dir, same port) 20 times at seeded random
//! moments, two workers SIGKILLed mid-run and restarted, and a worker SIGSTOPped past
//! the lease TTL; every run still ends with exactly one accepted result. Also: a
//! worker's journal keeps a result finished while the coordinator was down through
//! the worker's own SIGKILL, and a restarted worker reports the run it was killed in;
//! a second coordinator on a data dir in use is refused, and SIGTERM lets a worker
//! finish its current run before it exits. A full disk and a read-only data dir
//! (`read_only`) refuse new work and lose nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lem_tests::{
    check_exactly_once, describe, fault_rng, leases_held, parse_jsonl, repo_root, run, wait_for,
    ExactlyOnce, Proc,
};
use serde_json::Value;

use crate::{campaign_id, start_coordinator, start_worker, wait_for_addr, COORD, WORKER};

mod read_only;

/// The coordinator's lease TTL in this test; workers renew every third of it.
const TTL_SECS: u64 = 5;
/// Seed of the fault schedule; `LEM_FAULT_SEED` (decimal) explores other interleavings.
const SEED: u64 = 0x5EED_F417_2026_0001;

fn spawn_coord(dir: &Path, coord_dir: &Path, name: &str, listen: &str) -> Proc {
    let ttl = TTL_SECS.to_string();
    Proc::spawn(
        name,
        COORD,
        &[
            "start",
            "--listen",
            listen,
            "--data-dir",
            coord_dir.to_str().unwrap(),
            "--lease-ttl-secs",
            &ttl,
            // 20 kills in under a minute expire far more leases than a real head node
            // would (a lease held through a 10 s baseline sees several): the invariant
            // under test is exactly-once, so attempts must not run out first.
            "--max-attempts",
            "10",
        ],
        dir,
    )
}

/// Every process the test started, dead or alive, so a failure prints all the logs.
struct Fleet {
    dir: PathBuf,
    coord_dir: PathBuf,
    addr: String,
    coord: Proc,
    workers: Vec<Proc>,
    dead: Vec<Proc>,
    n_coords: usize,
    /// Flags every worker gets besides the common ones (`--runtime docker ...`).
    worker_args: Vec<String>,
}

impl Fleet {
    fn start(dir: &Path) -> Fleet {
        let coord_dir = dir.join("coord");
        let coord = spawn_coord(dir, &coord_dir, "coord-0", "127.0.0.1:0");
        let addr = wait_for_addr(&coord, &coord_dir);
        Fleet {
            dir: dir.to_path_buf(),
            coord_dir,
            addr,
            coord,
            workers: Vec::new(),
            dead: Vec::new(),
            n_coords: 1,
            worker_args: Vec::new(),
        }
    }

    fn all(&self) -> Vec<&Proc> {
        std::iter::once(&self.coord)
            .chain(self.workers.iter())
            .chain(self.dead.iter())
            .collect()
    }

    fn fail(&self, msg: &str) -> ! {
        let logs: Vec<String> = self.all().iter().map(|p| p.logs()).collect();
        panic!("{msg}\n{}", logs.join("\n"))
    }

    fn spawn_worker(&self, name: &str, log_name: &str) -> Proc {
        let wdir = self.dir.join(name);
        let mut args = vec![
            "--coordinator",
            &self.addr,
            "--data-dir",
            wdir.to_str().unwrap(),
            "--simulate-gpu",
            "--name",
            name,
            "--prefill-window-seconds",
            "0",
        ];
        args.extend(self.worker_args.iter().map(String::as_str));
        Proc::spawn(log_name, WORKER, &args, &self.dir)
    }

    /// SIGKILLs the coordinator and starts a new one on the same data dir and port,
    /// retrying for a while if the port cannot be bound at once.
    fn restart_coordinator(&mut self) {
        self.coord.kill();
        self.start_coordinator_again();
    }

    /// SIGTERMs the coordinator, which must exit 0 promptly (it stops granting leases
    /// and closes its store), and starts a new one on the same data dir and port.
    fn restart_coordinator_gracefully(&mut self) {
        self.coord.signal(libc::SIGTERM);
        match self.coord.wait_exit(Duration::from_secs(15)) {
            Some(st) if st.success() => {}
            other => self.fail(&format!("the coordinator exits 0 on SIGTERM ({other:?})")),
        }
        self.start_coordinator_again();
    }

    fn start_coordinator_again(&mut self) {
        let addr_file = self.coord_dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let name = format!("coord-{}", self.n_coords);
            self.n_coords += 1;
            let fresh = spawn_coord(&self.dir, &self.coord_dir, &name, &self.addr);
            let old = std::mem::replace(&mut self.coord, fresh);
            self.dead.push(old);
            // Up when it wrote its address; retried when it exited (port not free yet).
            loop {
                if std::fs::read_to_string(&addr_file).is_ok_and(|a| a == self.addr) {
                    return;
                }
                if !self.coord.is_running() {
                    break;
                }
                if Instant::now() > deadline {
                    self.fail("the restarted coordinator did not come up");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() > deadline {
                self.fail("the coordinator could not be restarted on its port");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `lem-coord ARGS --coordinator ADDR` parsed as JSON; `None` while unreachable.
    fn query(&self, args: &[&str]) -> Option<Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--coordinator", &self.addr]);
        let out = run(COORD, &all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Submits tests/fixtures/FIXTURE; returns the campaign id.
    fn submit(&self, fixture: &str) -> String {
        let study = repo_root().join("tests/fixtures").join(fixture);
        let args = [
            "submit",
            study.to_str().unwrap(),
            "--coordinator",
            &self.addr,
        ];
        let out = run(COORD, &args);
        if !out.status.success() {
            self.fail(&describe(&args, &out));
        }
        campaign_id(&out.stdout)
    }

    /// Waits (up to 120 s) until all `total` runs of campaign `id` have ended, done or
    /// failed; returns its status.
    fn wait_finished(&self, id: &str, total: u64, what: &str) -> Value {
        let all = self.all();
        wait_for(what, Duration::from_secs(120), &all, || {
            let s = crate::status_json(&self.addr, id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == total).then_some(s)
        })
    }

    /// Runs the submission `args`, which must be refused with an error saying each of
    /// `says`.
    fn submission_refused(&self, args: &[&str], says: &[&str]) {
        let out = run(COORD, args);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !says.iter().all(|s| err.contains(s)) {
            self.fail(&format!(
                "refused, saying {says:?}: {}",
                describe(args, &out)
            ));
        }
    }

    /// Once the coordinator can write again, the submission `args` works (within 30 s,
    /// no restart) and makes a campaign of `total` runs.
    fn submission_works_again(&self, args: &[&str], total: u64) {
        let all = self.all();
        let id = wait_for(
            "a submission to work again",
            Duration::from_secs(30),
            &all,
            || {
                let out = run(COORD, args);
                out.status.success().then(|| campaign_id(&out.stdout))
            },
        );
        let s = crate::status_json(&self.addr, &id).unwrap();
        assert_eq!(s["total"], total, "{s}");
    }

    fn leases_held(&self, worker: &str) -> Option<u64> {
        leases_held(&self.query(&["workers", "--json"])?, worker)
    }

    /// Waits until `worker` holds a lease (it is mid-run).
    fn wait_until_leasing(&self, worker: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.leases_held(worker).unwrap_or(0) == 0 {
            if Instant::now() > deadline {
                self.fail(&format!("{worker} never held a lease"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn worker_index(&self, name: &str) -> usize {
        self.workers
            .iter()
            .position(|w| w.name == name || w.name.starts_with(&format!("{name}-")))
            .unwrap()
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillCoordinator,
    KillWorker(&'static str),
    StopWorker(&'static str),
}

/// Runs in the fault test's study (tests/fixtures/faults-200.yaml).
const FAULT_RUNS: u64 = 200;

#[test]
fn crashes_and_stalls_keep_every_run_exactly_once() {
    crashes_and_stalls(&[]);
}

/// The same faults with every worker's harness in a warm container: a SIGKILLed
/// worker leaves its container running (the next worker on its data dir removes it),
/// a SIGSTOPped worker's container goes on without it.
#[test]
fn docker_runtime_crashes_and_stalls_keep_every_run_exactly_once() {
    if lem_tests::skip_docker("docker_runtime_crashes_and_stalls_keep_every_run_exactly_once") {
        return;
    }
    let image = lem_tests::harness_image();
    crashes_and_stalls(&[
        "--runtime",
        "docker",
        "--image",
        &image,
        "--allow-image",
        &image,
    ]);
}

/// 200 runs on 4 workers (started with `worker_args` too) through 20 coordinator
/// SIGKILLs, two worker SIGKILLs and a worker SIGSTOPped past the lease TTL, in a
/// seeded order: every run ends with exactly one accepted result.
fn crashes_and_stalls(worker_args: &[&str]) {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let dir = dir.as_path();
    let mut fleet = Fleet::start(dir);
    fleet.worker_args = worker_args.iter().map(|a| a.to_string()).collect();
    // The workers' containers (docker runtime) go however the test ends.
    let _containers = lem_tests::RemoveContainers(if worker_args.is_empty() {
        vec![]
    } else {
        (0..4)
            .map(|i| format!("lem.data-dir={}", dir.join(format!("w{i}")).display()))
            .collect()
    });

    // A second coordinator on the same data dir is refused, clearly.
    {
        let mut second = spawn_coord(dir, &fleet.coord_dir, "coord-second", "127.0.0.1:0");
        let status = second.wait_exit(Duration::from_secs(30));
        let stderr = std::fs::read_to_string(&second.stderr).unwrap_or_default();
        fleet.dead.push(second);
        match status {
            None => fleet.fail("a second coordinator on a data dir in use kept running"),
            Some(s) if s.success() => fleet.fail("a second coordinator exited 0"),
            Some(_) if !stderr.contains("already") => {
                fleet.fail(&format!("the refusal does not say why: {stderr:?}"))
            }
            Some(_) => {}
        }
    }

    for i in 0..4 {
        let name = format!("w{i}");
        let w = fleet.spawn_worker(&name, &name);
        fleet.workers.push(w);
    }
    let id = fleet.submit("faults-200.yaml");

    let (seed, mut rng) = fault_rng(SEED);
    // 20 coordinator kills, two worker kills and one stall, in a seeded order.
    let mut plan = vec![Fault::KillCoordinator; 20];
    plan.extend([
        Fault::KillWorker("w1"),
        Fault::KillWorker("w3"),
        Fault::StopWorker("w2"),
    ]);
    for i in (1..plan.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        plan.swap(i, j);
    }
    let mut log = Vec::new();
    for fault in plan {
        std::thread::sleep(rng.between(Duration::from_millis(300), Duration::from_millis(2500)));
        let done = fleet
            .query(&["status", &id, "--json"])
            .and_then(|s| s["done"].as_u64());
        match fault {
            Fault::KillCoordinator => fleet.restart_coordinator(),
            Fault::KillWorker(w) => {
                fleet.wait_until_leasing(w);
                let i = fleet.worker_index(w);
                fleet.workers[i].kill();
                std::thread::sleep(
                    rng.between(Duration::from_millis(100), Duration::from_millis(1500)),
                );
                let fresh = fleet.spawn_worker(w, &format!("{w}-restarted"));
                let old = std::mem::replace(&mut fleet.workers[i], fresh);
                fleet.dead.push(old);
            }
            Fault::StopWorker(w) => {
                let i = fleet.worker_index(w);
                // Stop it while it holds a lease (checked again once it is stopped:
                // a short run may have ended just before the signal).
                let mut tries = 0;
                let stopped = loop {
                    fleet.wait_until_leasing(w);
                    fleet.workers[i].signal(libc::SIGSTOP);
                    let stopped = Instant::now();
                    if fleet.leases_held(w).unwrap_or(0) > 0 {
                        break stopped;
                    }
                    fleet.workers[i].signal(libc::SIGCONT);
                    tries += 1;
                    if tries > 20 {
                        fleet.fail(&format!("could not stop {w} while it held a lease"));
                    }
                };
                // The coordinator takes the lease back once the TTL passed unrenewed
                // (counted from its last renewal, which a coordinator restart just
                // before the stop may have delayed).
                let deadline = stopped + Duration::from_secs(TTL_SECS + 10);
                while fleet.leases_held(w) != Some(0) {
                    if Instant::now() > deadline {
                        fleet.workers[i].signal(libc::SIGCONT);
                        fleet.fail("the stopped worker's lease never expired");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                // Stopped for longer than the TTL in all.
                let rest = Duration::from_secs(TTL_SECS + 1).saturating_sub(stopped.elapsed());
                std::thread::sleep(rest);
                fleet.workers[i].signal(libc::SIGCONT);
            }
        }
        log.push(format!(
            "{:>6.1}s {fault:?} (done before: {done:?})",
            t0.elapsed().as_secs_f64()
        ));
    }
    eprintln!("fault schedule (seed {seed}):\n{}", log.join("\n"));
    // The faults hit a running campaign, not a finished one.
    let at_last = fleet
        .query(&["status", &id, "--json"])
        .and_then(|s| s["done"].as_u64());
    if at_last.is_none_or(|d| d >= FAULT_RUNS) {
        fleet.fail(&format!(
            "the campaign was finished (done {at_last:?}) before the faults were: the test no longer injects them mid-campaign\n{}",
            log.join("\n")
        ));
    }

    let all = fleet.all();
    let status = wait_for(
        "all 200 runs to finish after the faults",
        Duration::from_secs(300),
        &all,
        || {
            let s = fleet.query(&["status", &id, "--json"])?;
            let finished = s["done"].as_u64()? + s["failed"].as_u64()?;
            (finished == s["total"].as_u64()?).then_some(s)
        },
    );
    let out = run(
        COORD,
        &[
            "results",
            &id,
            "--format",
            "jsonl",
            "--coordinator",
            &fleet.addr,
        ],
    );
    if !out.status.success() {
        fleet.fail(&describe(&["results"], &out));
    }
    let rows = parse_jsonl(&out.stdout).unwrap_or_else(|e| fleet.fail(&e));
    let ExactlyOnce {
        duplicates,
        retried,
    } = check_exactly_once(&status, &rows, FAULT_RUNS).unwrap_or_else(|e| fleet.fail(&e));
    // The stopped worker's lease (and the killed worker's) expired: that run was
    // leased again, and its attempts say so.
    if retried == 0 {
        fleet.fail("no run has attempts >= 2 although leases expired");
    }
    // The fleet survived: every current worker is still running.
    for i in 0..fleet.workers.len() {
        if !fleet.workers[i].is_running() {
            fleet.fail(&format!("{} died", fleet.workers[i].name));
        }
    }
    // LEM_FAULT_DEBUG=1 prints every process's log even when all is well (by failing).
    if std::env::var("LEM_FAULT_DEBUG").is_ok() {
        fleet.fail("LEM_FAULT_DEBUG: logs");
    }
    eprintln!(
        "faults test: {} coordinator starts, {retried} run(s) leased more than once, {duplicates} duplicate(s), {:.1}s",
        fleet.n_coords,
        t0.elapsed().as_secs_f64()
    );
}

/// SIGTERM: an idle worker (in its lease long poll) exits at once; a worker in the
/// middle of a run finishes it, has it accepted, and exits 0.
#[test]
fn sigterm_finishes_the_current_run_then_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let status_json = |id: &str| crate::status_json(&addr, id);

    // Idle: registered and waiting for work.
    let mut idle = start_worker(dir, &addr, "idle");
    wait_for(
        "the idle worker to register",
        Duration::from_secs(60),
        &[&coord, &idle],
        || {
            let out = run(COORD, &["workers", "--json", "--coordinator", &addr]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v.as_array()?.len() == 1).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    idle.signal(libc::SIGTERM);
    let st = idle.wait_exit(Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| s.success()),
        "an idle worker exits 0 promptly on SIGTERM ({st:?})\n{}",
        idle.logs()
    );
    eprintln!(
        "idle worker exited {:.1}s after SIGTERM",
        t.elapsed().as_secs_f64()
    );

    // Busy: SIGTERM while a ~3 s run is in progress.
    let mut busy = start_worker(dir, &addr, "busy");
    let study = repo_root().join("tests/fixtures/slow-runs.yaml");
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);
    wait_for(
        "the busy worker to lease a run",
        Duration::from_secs(60),
        &[&coord, &busy],
        || {
            let s = status_json(&id)?;
            (s["running"] == 1).then_some(())
        },
    );
    // Inside the run proper: the study takes no baseline, so the harness is decoding.
    std::thread::sleep(Duration::from_millis(1500));
    let s = status_json(&id).unwrap();
    assert_eq!(s["running"], 1, "still mid-run at SIGTERM: {s}");
    let t = Instant::now();
    busy.signal(libc::SIGTERM);
    let st = busy.wait_exit(Duration::from_secs(60));
    eprintln!(
        "busy worker exited {:.1}s after SIGTERM",
        t.elapsed().as_secs_f64()
    );
    assert!(
        st.is_some_and(|s| s.success()),
        "the worker exits 0 after its run ({st:?})\n{}\n{}",
        busy.logs(),
        coord.logs()
    );
    let s = status_json(&id).unwrap();
    assert_eq!(
        (
            s["done"].as_u64(),
            s["running"].as_u64(),
            s["failed"].as_u64(),
            s["pending"].as_u64()
        ),
        (Some(1), Some(0), Some(0), Some(1)),
        "the run in progress was finished and accepted; the next was not started: {s}\n{}",
        busy.logs()
    );
    assert_eq!(s["duplicates"], 0, "{s}");

    // `retry` from the command line: nothing failed, so nothing changes; an unknown
    // campaign and a cancelled one are refused.
    let args = ["retry", &id, "--failed", "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let s = status_json(&id).unwrap();
    assert_eq!(
        (s["done"].as_u64(), s["pending"].as_u64()),
        (Some(1), Some(1))
    );
    let args = ["retry", "999", "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(!out.status.success(), "{}", describe(&args, &out));
    let args = ["cancel", &id, "--coordinator", &addr];
    assert!(run(COORD, &args).status.success());
    let args = ["retry", &id, "--coordinator", &addr];
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled"),
        "{}",
        describe(&args, &out)
    );
    let s = status_json(&id).unwrap();
    assert_eq!(
        (s["done"].as_u64(), s["cancelled"].as_u64()),
        (Some(1), Some(1))
    );
}

/// The rows `lem-coord results --format jsonl` exports for campaign `id`.
fn result_rows(addr: &str, id: &str) -> Vec<Value> {
    crate::results_jsonl(id, &["--coordinator", addr])
}

/// A coordinator and one worker `name` running the first of tests/fixtures/slow-runs.yaml's
/// two ~3 s runs; returns the fleet and the campaign id.
fn one_worker_mid_run(dir: &Path, name: &str) -> (Fleet, String) {
    let mut fleet = Fleet::start(dir);
    let w = fleet.spawn_worker(name, name);
    fleet.workers.push(w);
    let id = fleet.submit("slow-runs.yaml");
    fleet.wait_until_leasing(name);
    (fleet, id)
}

/// A run finishes while the coordinator is down; the worker cannot deliver its
/// result and is then SIGKILLed. The result is in the worker's journal; once both
/// are back, the restarted worker sends it and it is accepted as that run's only
/// result: the run is not measured again.
#[test]
fn a_journaled_result_survives_the_workers_sigkill() {
    journaled_result_survives(libc::SIGKILL, "j0");
}

/// The same with SIGTERM: a worker asked to stop while the coordinator is away does
/// not wait for it; it exits with the result left in its journal.
#[test]
fn a_worker_stopped_while_the_coordinator_is_away_keeps_its_result() {
    journaled_result_survives(libc::SIGTERM, "t0");
}

fn journaled_result_survives(stop: i32, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut fleet, id) = one_worker_mid_run(tmp.path(), name);
    // The coordinator dies mid-run (~3 s runs; the worker's own TTL, 2/3 of 5 s,
    // would stop a run whose renewals fail, so the kill lands late in the run).
    std::thread::sleep(Duration::from_millis(1500));
    fleet.coord.kill();
    // Wait until the run has ended and its report is waiting for the coordinator:
    // the worker then logs each failed delivery (a sync point, not the assertion).
    let all = fleet.all();
    wait_for(
        "the worker to finish the run and fail to deliver it",
        Duration::from_secs(60),
        &all,
        || {
            std::fs::read_to_string(&fleet.workers[0].stderr)
                .ok()?
                .contains("report not delivered")
                .then_some(())
        },
    );
    if stop == libc::SIGKILL {
        fleet.workers[0].kill();
    } else {
        fleet.workers[0].signal(stop);
        let t = std::time::Instant::now();
        match fleet.workers[0].wait_exit(Duration::from_secs(30)) {
            Some(st) if st.success() => {
                eprintln!(
                    "worker exited {:.1}s after SIGTERM",
                    t.elapsed().as_secs_f64()
                )
            }
            other => fleet.fail(&format!(
                "a worker stopped while the coordinator is away exits 0 within 30 s ({other:?})"
            )),
        }
    }
    let (leases, reports, rejected) =
        lem_worker::journal::Journal::inspect(&fleet.dir.join(name)).unwrap();
    if !(leases.is_empty() && reports.len() == 1 && rejected.is_empty()) {
        fleet.fail(&format!(
            "the journal holds the finished result and no lease: {leases:?} {reports:?} {rejected:?}"
        ));
    }
    let lem_worker::journal::Report::Complete(journaled) = &reports[0] else {
        fleet.fail(&format!("a result, not a failure: {:?}", reports[0]));
    };
    let journaled = journaled.clone();

    fleet.restart_coordinator();
    let fresh = fleet.spawn_worker(name, &format!("{name}-restarted"));
    let old = std::mem::replace(&mut fleet.workers[0], fresh);
    fleet.dead.push(old);
    let all = fleet.all();
    let status = wait_for("both runs done", Duration::from_secs(120), &all, || {
        let s = crate::status_json(&fleet.addr, &id)?;
        (s["done"] == 2).then_some(s)
    });
    if status["duplicates"] != 0 || status["failed"] != 0 {
        fleet.fail(&format!("no duplicate, nothing failed: {status}"));
    }
    let rows = result_rows(&fleet.addr, &id);
    let row = rows
        .iter()
        .find(|r| r["experiment_id"] == journaled.run.to_string())
        .unwrap_or_else(|| fleet.fail(&format!("the journaled run is exported: {rows:?}")));
    // The accepted result is the journaled one, from the first attempt.
    let energy = row["total_energy_j"].as_f64();
    if row["attempts"] != 1 || energy != Some(journaled.result.energy.total_j) {
        fleet.fail(&format!(
            "the run was not measured again: attempts {} energy {energy:?} vs journaled {}",
            row["attempts"], journaled.result.energy.total_j
        ));
    }
    // Delivered, so it left the journal (read after the worker stops).
    fleet.workers[0].kill();
    let (_, reports, _) = lem_worker::journal::Journal::inspect(&fleet.dir.join(name)).unwrap();
    if !reports.is_empty() {
        fleet.fail(&format!(
            "acknowledged reports leave the journal: {reports:?}"
        ));
    }
}

/// A worker SIGKILLed mid-run finds the lease in its journal when it restarts and
/// reports the run as interrupted at once (an infrastructure failure: the run goes
/// back to pending), instead of leaving it to the coordinator's lease TTL.
#[test]
fn a_restarted_worker_reports_the_run_it_was_killed_in() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut fleet, id) = one_worker_mid_run(tmp.path(), "k0");
    fleet.workers[0].kill();
    let (leases, reports, _) =
        lem_worker::journal::Journal::inspect(&fleet.dir.join("k0")).unwrap();
    if leases.len() != 1 || !reports.is_empty() {
        fleet.fail(&format!(
            "the journal holds the lease: {leases:?} {reports:?}"
        ));
    }
    let killed_in = leases[0].1.grant.run;
    let fresh = fleet.spawn_worker("k0", "k0-restarted");
    let old = std::mem::replace(&mut fleet.workers[0], fresh);
    fleet.dead.push(old);
    let all = fleet.all();
    wait_for("both runs done", Duration::from_secs(120), &all, || {
        let s = crate::status_json(&fleet.addr, &id)?;
        (s["done"] == 2).then_some(())
    });
    let rows = result_rows(&fleet.addr, &id);
    let row = rows
        .iter()
        .find(|r| r["experiment_id"] == killed_in.to_string())
        .unwrap_or_else(|| fleet.fail(&format!("run {killed_in} is exported: {rows:?}")));
    let failure = row["last_failure"].as_str().unwrap_or("");
    if row["attempts"] != 2 || !failure.contains("found in its journal") {
        fleet.fail(&format!(
            "the interrupted attempt was reported by the restarted worker, not left to expire: {row}"
        ));
    }
}

/// `lem-worker --drain`: SIGTERM in the middle of a run stops it and hands it back
/// (pending again, the attempt given back); another worker then runs it.
#[test]
fn sigterm_with_drain_hands_the_run_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(tmp.path());
    let wdir = fleet.dir.join("d0");
    let w = Proc::spawn(
        "d0",
        WORKER,
        &[
            "--coordinator",
            &fleet.addr,
            "--data-dir",
            wdir.to_str().unwrap(),
            "--simulate-gpu",
            "--name",
            "d0",
            "--prefill-window-seconds",
            "0",
            "--drain",
        ],
        &fleet.dir,
    );
    fleet.workers.push(w);
    let id = fleet.submit("slow-runs.yaml");
    fleet.wait_until_leasing("d0");
    // Inside the run proper (the study takes no baseline).
    std::thread::sleep(Duration::from_millis(1000));
    fleet.workers[0].signal(libc::SIGTERM);
    let st = fleet.workers[0].wait_exit(Duration::from_secs(30));
    if !st.is_some_and(|s| s.success()) {
        fleet.fail(&format!("a draining worker exits 0 promptly ({st:?})"));
    }
    let s = crate::status_json(&fleet.addr, &id).unwrap();
    if (
        s["pending"].as_u64(),
        s["running"].as_u64(),
        s["done"].as_u64(),
        s["failed"].as_u64(),
    ) != (Some(2), Some(0), Some(0), Some(0))
    {
        fleet.fail(&format!(
            "the run was handed back, not finished or failed: {s}"
        ));
    }
    let rows = result_rows(&fleet.addr, &id);
    let handed: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["last_failure"]
                .as_str()
                .is_some_and(|f| f.contains("--drain"))
        })
        .collect();
    if handed.len() != 1 || handed[0]["attempts"] != 0 {
        fleet.fail(&format!(
            "one run handed back with its attempt given back: {rows:?}"
        ));
    }
    let handed_id = handed[0]["experiment_id"].clone();
    // Another worker runs both.
    let w = fleet.spawn_worker("d1", "d1");
    fleet.workers.push(w);
    let all = fleet.all();
    wait_for("both runs done", Duration::from_secs(120), &all, || {
        let s = crate::status_json(&fleet.addr, &id)?;
        (s["done"] == 2).then_some(())
    });
    let rows = result_rows(&fleet.addr, &id);
    let again = rows
        .iter()
        .find(|r| r["experiment_id"] == handed_id)
        .unwrap();
    if again["attempts"] != 1 || again["worker"] != "d1" {
        fleet.fail(&format!("the handed-back run ran once, on d1: {again}"));
    }
}

/// SIGTERM on the coordinator mid-campaign: it exits 0 with its store closed cleanly;
/// restarted on the same data dir it carries on, and every run ends exactly once.
#[test]
fn sigterm_on_the_coordinator_is_a_clean_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut fleet, id) = one_worker_mid_run(tmp.path(), "t0");
    fleet.restart_coordinator_gracefully();
    let status = fleet.wait_finished(&id, 2, "both runs done");
    let rows = result_rows(&fleet.addr, &id);
    if let Err(e) = check_exactly_once(&status, &rows, 2) {
        fleet.fail(&e);
    }
}

/// Sets the coordinator's file-size limit (RLIMIT_FSIZE, soft): past it, writes that
/// grow a file fail as on a full disk.
fn set_file_size_limit(p: &Proc, bytes: Option<u64>) {
    let lim = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child, with a valid rlimit and no old-value pointer.
    let rc = unsafe {
        libc::prlimit(
            p.child.id() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The coordinator's disk fills up (its manifest cannot grow): a new campaign is
/// refused with an error that says what to check, the campaign already there is
/// intact and keeps running, and once there is space again a submission works.
#[test]
fn a_full_disk_refuses_new_work_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (fleet, id) = one_worker_mid_run(tmp.path(), "f0");
    let manifest = fleet.coord_dir.join("manifest.redb");
    let size = std::fs::metadata(&manifest).unwrap().len();
    set_file_size_limit(&fleet.coord, Some(size));
    let study = repo_root().join("tests/fixtures/faults-200.yaml");
    let args = [
        "submit",
        study.to_str().unwrap(),
        "--coordinator",
        &fleet.addr,
    ];
    fleet.submission_refused(&args, &["free space"]);
    // The first campaign finishes on the full disk (its writes fit in the file).
    fleet.wait_finished(&id, 2, "the first campaign to finish");
    set_file_size_limit(&fleet.coord, None);
    fleet.submission_works_again(&args, 200);
    let status = crate::status_json(&fleet.addr, &id).unwrap();
    let rows = result_rows(&fleet.addr, &id);
    if let Err(e) = check_exactly_once(&status, &rows, 2) {
        fleet.fail(&e);
    }
}
