//! Fault injection: a 40-run campaign survives its coordinator being SIGKILLed and
//! restarted (same data dir, same port) five times, a worker SIGKILLed mid-run and
//! restarted, and a worker SIGSTOPped past the lease TTL; every run still ends with
//! exactly one accepted result. Also: a second coordinator on a data dir in use is
//! refused, and SIGTERM lets a worker finish its current run before it exits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lem_tests::{
    check_exactly_once, describe, fault_rng, leases_held, parse_jsonl, repo_root, run, wait_for,
    ExactlyOnce, Proc,
};
use serde_json::Value;

use crate::{campaign_id, start_coordinator, start_worker, wait_for_addr, COORD, WORKER};

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
        Proc::spawn(
            log_name,
            WORKER,
            &[
                "--coordinator",
                &self.addr,
                "--data-dir",
                wdir.to_str().unwrap(),
                "--simulate-gpu",
                "--name",
                name,
                "--prefill-window-seconds",
                "0",
            ],
            &self.dir,
        )
    }

    /// SIGKILLs the coordinator and starts a new one on the same data dir and port,
    /// retrying for a while if the port cannot be bound at once.
    fn restart_coordinator(&mut self) {
        self.coord.kill();
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
    KillWorker,
    StopWorker,
}

#[test]
fn crashes_and_stalls_keep_every_run_exactly_once() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::start(dir);

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

    for i in 0..3 {
        let name = format!("w{i}");
        let w = fleet.spawn_worker(&name, &name);
        fleet.workers.push(w);
    }
    let study = repo_root().join("tests/fixtures/faults-40.yaml");
    let args = [
        "submit",
        study.to_str().unwrap(),
        "--coordinator",
        &fleet.addr,
    ];
    let out = run(COORD, &args);
    if !out.status.success() {
        fleet.fail(&describe(&args, &out));
    }
    let id = campaign_id(&out.stdout);

    let plan = [
        Fault::KillCoordinator,
        Fault::KillWorker,
        Fault::KillCoordinator,
        Fault::StopWorker,
        Fault::KillCoordinator,
        Fault::KillCoordinator,
        Fault::KillCoordinator,
    ];
    let (seed, mut rng) = fault_rng(SEED);
    let mut log = Vec::new();
    for fault in plan {
        std::thread::sleep(rng.between(Duration::from_millis(500), Duration::from_millis(4000)));
        let done = fleet
            .query(&["status", &id, "--json"])
            .and_then(|s| s["done"].as_u64());
        match fault {
            Fault::KillCoordinator => fleet.restart_coordinator(),
            Fault::KillWorker => {
                fleet.wait_until_leasing("w1");
                let i = fleet.worker_index("w1");
                fleet.workers[i].kill();
                std::thread::sleep(
                    rng.between(Duration::from_millis(100), Duration::from_millis(1500)),
                );
                let fresh = fleet.spawn_worker("w1", "w1-restarted");
                let old = std::mem::replace(&mut fleet.workers[i], fresh);
                fleet.dead.push(old);
            }
            Fault::StopWorker => {
                let i = fleet.worker_index("w2");
                // Stop it while it holds a lease (checked again once it is stopped:
                // a short run may have ended just before the signal).
                let mut tries = 0;
                let stopped = loop {
                    fleet.wait_until_leasing("w2");
                    fleet.workers[i].signal(libc::SIGSTOP);
                    let stopped = Instant::now();
                    if fleet.leases_held("w2").unwrap_or(0) > 0 {
                        break stopped;
                    }
                    fleet.workers[i].signal(libc::SIGCONT);
                    tries += 1;
                    if tries > 20 {
                        fleet.fail("could not stop w2 while it held a lease");
                    }
                };
                // The coordinator takes the lease back once the TTL passed unrenewed
                // (counted from its last renewal, which a coordinator restart just
                // before the stop may have delayed).
                let deadline = stopped + Duration::from_secs(TTL_SECS + 10);
                while fleet.leases_held("w2") != Some(0) {
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
    if at_last.is_none_or(|d| d >= 40) {
        fleet.fail(&format!(
            "the campaign was finished (done {at_last:?}) before the faults were: the test no longer injects them mid-campaign\n{}",
            log.join("\n")
        ));
    }

    let all = fleet.all();
    let status = wait_for(
        "all 40 runs to finish after the faults",
        Duration::from_secs(120),
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
    } = check_exactly_once(&status, &rows, 40).unwrap_or_else(|e| fleet.fail(&e));
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
