//! Device isolation end to end (`lem-worker --device-isolation`): a real foreign
//! process (`sleep`) is declared, through the simulated GPU's test hook
//! (`LEM_SIMGPU_FOREIGN_PROCESSES`), as holding simulated GPU 0. With `warn` every
//! run is measured once and flagged with that pid, and the baseline is measured again
//! for each run; with `refuse` nothing is measured while it lives (the run leased when
//! it appears fails as retryable and goes back to pending, and the worker leases
//! nothing more), and once it is killed the campaign completes, each run once.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use lem_common::rpc::RunRow;
use lem_common::simgpu::FOREIGN_PROCESSES_ENV;
use lem_common::types::CampaignId;
use lem_tests::{check_exactly_once, describe, repo_root, run, wait_for, Proc};
use lem_wire::transport::{connect, Endpoint};

use crate::{campaign_id, results_jsonl, start_coordinator, start_worker_env, status_json, COORD};

/// A process the test started, killed and reaped when dropped.
struct Foreign(Child);

impl Foreign {
    fn sleep() -> Foreign {
        Foreign(Command::new("sleep").arg("300").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, then reap it, so it is gone from `/proc` (not a zombie).
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The stored runs of campaign `id`, with their full results, over the RPC.
fn runs(addr: &str, id: &str) -> Vec<RunRow> {
    let campaign = CampaignId(id.parse().unwrap());
    crate::rt().block_on(async {
        let client = connect(&Endpoint::plain(addr)).await.unwrap();
        client.runs(crate::ctx(), campaign).await.unwrap().unwrap()
    })
}

fn submit(addr: &str) -> String {
    let study = repo_root().join("tests/fixtures/isolation-2.yaml");
    let args = ["submit", study.to_str().unwrap(), "--coordinator", addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    campaign_id(&out.stdout)
}

fn start(dir: &Path, addr: &str, policy: &str, hook: &Path) -> Proc {
    start_worker_env(
        dir,
        addr,
        "w0",
        &[
            "--device-isolation",
            policy,
            "--prefill-window-seconds",
            "0",
        ],
        &[(FOREIGN_PROCESSES_ENV, hook.to_str().unwrap())],
    )
}

#[test]
fn warn_measures_a_shared_gpu_flags_every_result_and_never_caches_its_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let foreign = Foreign::sleep();
    let hook = dir.join("gpu-processes.txt");
    let worker = start(dir, &addr, "warn", &hook);
    // The worker itself is declared too: its own pid is never foreign.
    std::fs::write(
        &hook,
        format!(
            "# GPU PID MIB\n0 {} 512\n0 {} 64\n",
            foreign.pid(),
            worker.child.id()
        ),
    )
    .unwrap();
    let id = submit(&addr);
    let status = wait_for(
        "both runs to finish",
        Duration::from_secs(240),
        &[&coord, &worker],
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == 2).then_some(s)
        },
    );
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    let once = check_exactly_once(&status, &rows, 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(once.retried, 0, "{rows:?}");

    let stored = runs(&addr, &id);
    assert_eq!(stored.len(), 2);
    let mut measured_at = Vec::new();
    for row in &stored {
        let r = row.result.as_ref().expect("a done run has its result");
        assert!(
            r.isolation.gpu_shared,
            "{:?}",
            r.isolation.foreign_processes
        );
        for seen in ["baseline", "resident_baseline", "window"] {
            let p = r
                .isolation
                .foreign_processes
                .iter()
                .find(|p| p.seen == seen)
                .unwrap_or_else(|| {
                    panic!("seen at the {seen}: {:?}", r.isolation.foreign_processes)
                });
            assert_eq!(
                (p.pid, p.gpu_index, p.used_memory_mb, p.name.as_deref()),
                (foreign.pid(), 0, Some(512), Some("sleep")),
                "{p:?}"
            );
        }
        assert!(
            r.isolation
                .foreign_processes
                .iter()
                .all(|p| p.pid == foreign.pid()),
            "the worker's own pid is not foreign: {:?}",
            r.isolation.foreign_processes
        );
        let named = format!("pid {} (sleep, 512 MiB) on GPU 0", foreign.pid());
        let flagged = r.warnings.iter().filter(|w| w.contains(&named)).count();
        assert_eq!(flagged, 3, "one warning per measurement: {:?}", r.warnings);
        // Measured for this run, not taken from the cache.
        let b = r.baselines.device.as_ref().expect("device baseline");
        let rb = r.baselines.resident.as_ref().expect("resident baseline");
        assert!(b.cache_age_s < 1.0 && rb.cache_age_s < 1.0, "{b:?} {rb:?}");
        assert!(r.baselines.device_power_w.is_some() && r.energy.adjusted_j.is_some());
        measured_at.push(b.measured_at.clone());
    }
    measured_at.dedup();
    assert_eq!(
        measured_at.len(),
        2,
        "the baseline was measured again for the second run: {measured_at:?}"
    );
}

#[test]
fn refuse_measures_nothing_while_a_foreign_process_holds_the_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let mut foreign = Foreign::sleep();
    let hook = dir.join("gpu-processes.txt");
    let worker = start(dir, &addr, "refuse", &hook);
    let all = [&coord, &worker];
    let id = submit(&addr);
    // The process appears while the first run's baseline is being measured.
    wait_for(
        "the first run to be leased",
        Duration::from_secs(60),
        &all,
        || (status_json(&addr, &id)?["running"].as_u64()? == 1).then_some(()),
    );
    std::fs::write(&hook, format!("0 {} 512\n", foreign.pid())).unwrap();
    let refused = wait_for(
        "the leased run to be refused",
        Duration::from_secs(120),
        &all,
        || {
            runs(&addr, &id)
                .into_iter()
                .find(|r| r.state == "pending" && r.attempts == 1)
        },
    );
    let message = refused.last_failure.clone().unwrap_or_default();
    for want in [
        format!("pid {} (sleep, 512 MiB) on GPU 0", foreign.pid()),
        "GPU 0 was held by other processes".to_string(),
        "--device-isolation warn".to_string(),
        "(infrastructure)".to_string(),
    ] {
        assert!(message.contains(&want), "{want:?} in {message}");
    }
    // While the process lives the worker leases nothing, so nothing is measured and
    // no attempt is spent.
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let s = status_json(&addr, &id).expect("status");
        assert_eq!(
            (
                s["running"].as_u64(),
                s["done"].as_u64(),
                s["failed"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{s}"
        );
    }
    foreign.kill();
    let status = wait_for(
        "both runs to finish once the process is gone",
        Duration::from_secs(240),
        &all,
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == 2).then_some(s)
        },
    );
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    let once = check_exactly_once(&status, &rows, 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(once.retried, 1, "only the refused run took two leases");
    for row in runs(&addr, &id) {
        let r = row.result.as_ref().expect("a done run has its result");
        assert!(
            !r.isolation.gpu_shared && r.isolation.foreign_processes.is_empty(),
            "{r:?}"
        );
        let want_attempts = if row.run == refused.run { 2 } else { 1 };
        assert_eq!(row.attempts, want_attempts, "{:?}", row.run);
    }
}
