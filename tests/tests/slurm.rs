//! Workers as Slurm jobs (docs/slurm.md): a one-node Slurm cluster from Debian's
//! packages (munge, slurmctld, slurmd; the image of docker/slurm-image.sh, no
//! registry) in one container on a private Docker network, started by
//! tests/slurm/start.sh with four GPUs as a generic resource. The coordinator runs
//! in the same container, listening on 0.0.0.0 (so TLS only: the jobs' workers join
//! with a token), with the test's own `lem-coord` and `lem-worker` bind-mounted
//! read-only.
//!
//! 1. `examples/quickstart.yaml` is submitted, `lem-coord slurm-script --array 2
//!    --gpus-per-node 2 --simulate-gpu` writes the script and `sbatch` submits it:
//!    the campaign completes, both jobs end on their own (`--exit-when-idle`) with
//!    exit code 0 and `squeue` is empty, each worker measured exactly the GPUs Slurm
//!    bound to its job (0,1 and 2,3: its log and the results' `gpu_indices`), every
//!    worker deregistered and its credential is gone from the node.
//! 2. A campaign of two long runs and a one-node job of the script (not an array):
//!    `scancel` while both runs go on; the job ends, both runs are handed back
//!    (pending again, their attempts given back) and the workers exit 0.
//!
//! The container and the network carry a unique name and a label, and are removed
//! when the test ends, panics included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use lem_tests::{describe, parse_jsonl, poll_until, repo_root, run, skip_docker};
use serde_json::Value;

const COORD_BIN: &str = env!("CARGO_BIN_EXE_lem-coord-shim");
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_lem-worker-shim");
const COORD_IN: &str = "/opt/lem/bin/lem-coord";
const WORKER_IN: &str = "/opt/lem/bin/lem-worker";
/// The container's host name: the Slurm node and the coordinator's address.
const HOST: &str = "slurmnode";
const LABEL: &str = "org.lem-fleet.test";

fn docker(args: &[&str]) -> Output {
    run("docker", args)
}

/// Builds (or finds) the Slurm image with docker/slurm-image.sh; returns its tag.
fn slurm_image() -> String {
    let script = repo_root().join("docker/slurm-image.sh");
    let out = run(script.to_str().unwrap(), &[]);
    assert!(
        out.status.success(),
        "docker/slurm-image.sh failed; the Slurm test needs Docker (LEM_SKIP_DOCKER=1 ./test.sh skips it)\n{}",
        describe(&[script.to_str().unwrap()], &out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("slurm-image.sh prints the tag last")
        .trim()
        .to_string()
}

/// The cluster's container and network; dropping it removes both (by label).
struct Cluster {
    prefix: String,
    container: String,
    /// Host side of the container's /work.
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Files the container's root wrote into /work: give them to the test's user,
        // so its temp dir can be removed.
        // SAFETY: getuid/getgid cannot fail.
        let owner = unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) };
        let _ = docker(&["exec", &self.container, "chown", "-R", &owner, "/work"]);
        let filter = format!("label={LABEL}={}", self.prefix);
        let out = docker(&["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let out = docker(&["rm", "-f", "-v", id]);
            if !out.status.success() {
                eprintln!("cleanup: {}", describe(&["rm", "-f", "-v", id], &out));
            }
        }
        let out = docker(&["network", "ls", "-q", "--filter", &filter]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let out = docker(&["network", "rm", id]);
            if !out.status.success() {
                eprintln!("cleanup: {}", describe(&["network", "rm", id], &out));
            }
        }
    }
}

impl Cluster {
    /// The container (on a private network: Slurm resolves addresses with
    /// AI_ADDRCONFIG, which needs an interface besides loopback) with Slurm up.
    fn start(image: &str, dir: &Path) -> Cluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!("lemslurm-{}-{nanos:08x}", std::process::id());
        let cluster = Cluster {
            container: format!("{prefix}-node"),
            prefix,
            dir: dir.to_path_buf(),
        };
        let label = format!("{LABEL}={}", cluster.prefix);
        let net = format!("{}-net", cluster.prefix);
        cluster.docker_ok(&["network", "create", "--internal", "--label", &label, &net]);
        let mounts = [
            format!("{COORD_BIN}:{COORD_IN}:ro"),
            format!("{WORKER_BIN}:{WORKER_IN}:ro"),
            format!("{}:/work", dir.display()),
            format!("{}:/examples:ro", repo_root().join("examples").display()),
            format!("{}:/lem-test:ro", repo_root().join("tests/slurm").display()),
        ];
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &cluster.container,
            "--hostname",
            HOST,
            "--network",
            &net,
            "--label",
            &label,
            "-e",
            "LEM_LOG=info",
        ];
        for m in &mounts {
            args.extend(["-v", m.as_str()]);
        }
        args.extend([image, "sleep", "infinity"]);
        cluster.docker_ok(&args);
        cluster.sh_ok("/lem-test/start.sh 4");
        cluster
    }

    /// `docker ARGS`, which must succeed; its trimmed stdout.
    fn docker_ok(&self, args: &[&str]) -> String {
        let out = docker(args);
        if !out.status.success() {
            self.fail(&describe(args, &out));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `bash -c CMD` in the container, in /work.
    fn sh(&self, cmd: &str) -> Output {
        let cmd = format!("cd /work && {cmd}");
        docker(&["exec", &self.container, "bash", "-c", &cmd])
    }

    /// [`Cluster::sh`], which must succeed; its trimmed stdout.
    fn sh_ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        if !out.status.success() {
            self.fail(&describe(&["bash", "-c", cmd], &out));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `lem-coord ARGS --data-dir /work/coord` (the admin credential) parsed as JSON;
    /// `None` while it fails.
    fn coord_json(&self, args: &str) -> Option<Value> {
        let out = self.sh(&format!("{COORD_IN} {args} --data-dir /work/coord"));
        out.status.success().then_some(())?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status(&self, id: &str) -> Option<Value> {
        self.coord_json(&format!("status {id} --json"))
    }

    /// `squeue`'s jobs, one line each; `None` if it fails.
    fn squeue(&self) -> Option<Vec<String>> {
        let out = self.sh("squeue -h -o '%i %T'");
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect()
        })
    }

    /// What the cluster logged, then `msg`, as a panic.
    fn fail(&self, msg: &str) -> ! {
        let out = self.sh(
            "for f in /work/coord.log /work/*.out /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do \
             [ -f \"$f\" ] && { echo \"--- $f\"; tail -n 80 \"$f\"; }; done; \
             echo '--- squeue'; squeue; echo '--- scontrol show job'; scontrol show job",
        );
        panic!(
            "{}\n{}\n{msg}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        poll_until(timeout, f).unwrap_or_else(|| {
            self.fail(&format!("timed out after {timeout:?} waiting for {what}"))
        })
    }

    /// `sbatch --parsable FILE` from /work (where the job logs go); the job id.
    fn sbatch(&self, file: &str) -> String {
        let id = self.sh_ok(&format!("sbatch --parsable {file}"));
        id.split(';').next().unwrap_or_default().to_string()
    }

    fn submit(&self, study: &str) -> String {
        let out = self.sh_ok(&format!("{COORD_IN} submit {study} --data-dir /work/coord"));
        out.lines().last().unwrap_or_default().trim().to_string()
    }

    /// `JobState` and `ExitCode` of every job of `id` (an array's tasks).
    fn job_states(&self, id: &str) -> Vec<(String, String)> {
        let text = self.sh_ok(&format!("scontrol -o show job {id}"));
        text.lines()
            .map(|l| {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix(k))
                        .unwrap_or_default()
                        .to_string()
                };
                (field("JobState="), field("ExitCode="))
            })
            .collect()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel)).unwrap_or_default()
    }
}

/// From a job log: the worker's name and the GPUs Slurm gave it
/// (`lem-worker job J on N: worker W, GPUs CUDA_VISIBLE_DEVICES=2,3, ...`).
fn worker_and_gpus(log: &str) -> Option<(String, BTreeSet<u64>)> {
    let line = log
        .lines()
        .find(|l| l.contains("GPUs CUDA_VISIBLE_DEVICES="))?;
    let worker = line
        .split(": worker ")
        .nth(1)?
        .split(',')
        .next()?
        .to_string();
    let gpus = line
        .split("CUDA_VISIBLE_DEVICES=")
        .nth(1)?
        .split(',')
        .map_while(|g| g.trim().parse::<u64>().ok())
        .collect();
    Some((worker, gpus))
}

/// A study of two runs that each decode for a long while (so `scancel` finds them
/// in progress).
const LONG_RUNS: &str = "study_name: slurm-long
task:
  model: synthetic/long
  dataset:
    n_prompts: 1
  max_input_tokens: 16
  max_output_tokens: 4
engine: synthetic
serving_mode: offline
measurement:
  baseline:
    enabled: false
offline:
  warmup:
    enabled: false
synthetic:
  engine_params:
    load_seconds: 0.2
    decode_ms_per_step: 30000.0
sweep:
  synthetic.engine_params.batch_size: [1, 2]
study_execution:
  n_cycles: 1
";

#[test]
fn slurm_jobs_run_a_campaign_on_the_gpus_slurm_binds_and_give_the_allocation_back() {
    if skip_docker("slurm_jobs_run_a_campaign_on_the_gpus_slurm_binds_and_give_the_allocation_back")
    {
        return;
    }
    let started = Instant::now();
    let image = slurm_image();
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&image, tmp.path());
    eprintln!("slurm up after {:.1} s", started.elapsed().as_secs_f64());

    // The coordinator on the head node (here the same container): TLS only.
    let _ = docker(&[
        "exec",
        "-d",
        &cluster.container,
        "bash",
        "-c",
        &format!(
            "exec {COORD_IN} start --listen 0.0.0.0:7700 --data-dir /work/coord --http off >/work/coord.log 2>&1"
        ),
    ]);
    cluster.wait_for("the coordinator", Duration::from_secs(30), || {
        std::fs::read_to_string(tmp.path().join("coord/coordinator.addr"))
            .ok()
            .filter(|a| !a.is_empty())
    });
    // The token on the "shared file system", readable by its owner only.
    cluster.sh_ok(&format!(
        "umask 077 && {COORD_IN} token create --data-dir /work/coord --ttl 1h >/work/token"
    ));

    // --- 1: an array of two jobs runs the quickstart campaign and leaves ------------------
    let id = cluster.submit("/examples/quickstart.yaml");
    let made = cluster.sh_ok(&format!(
        "{COORD_IN} slurm-script --coordinator {HOST}:7700 --token-file /work/token \
         --array 2 --gpus-per-node 2 --time 10 --lem-worker {WORKER_IN} --simulate-gpu \
         --out /work/job.sbatch -- --prefill-window-seconds 0 2>&1 && bash -n /work/job.sbatch"
    ));
    assert!(made.contains("sbatch /work/job.sbatch"), "{made}");
    let job = cluster.sbatch("/work/job.sbatch");
    let status = cluster.wait_for("the campaign to finish", Duration::from_secs(240), || {
        let s = cluster.status(&id)?;
        (s["done"].as_u64()? + s["failed"].as_u64()? == s["total"].as_u64()?).then_some(s)
    });
    let finished = Instant::now();
    if status["done"] != 6 || status["failed"] != 0 {
        cluster.fail(&format!("every run done: {status}"));
    }
    // The jobs end on their own: the allocation goes back.
    cluster.wait_for("squeue to be empty", Duration::from_secs(120), || {
        cluster.squeue().filter(|q| q.is_empty())
    });
    eprintln!(
        "campaign done {:.1} s after start; squeue empty {:.1} s after that",
        finished.duration_since(started).as_secs_f64(),
        finished.elapsed().as_secs_f64()
    );
    let states = cluster.job_states(&job);
    if states.len() != 2
        || states
            .iter()
            .any(|(state, code)| state != "COMPLETED" || code != "0:0")
    {
        cluster.fail(&format!(
            "both array tasks COMPLETED with exit code 0:0: {states:?}"
        ));
    }
    // Each worker saw exactly the GPUs Slurm bound to its job.
    let mut gpus_of: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for task in 0..2 {
        let log = cluster.read(&format!("lem-worker-{job}_{task}.out"));
        let Some((worker, gpus)) = worker_and_gpus(&log) else {
            cluster.fail(&format!("task {task} logs its worker and GPUs: {log}"))
        };
        assert!(
            log.contains(&format!("worker {worker} exited with status 0")),
            "{log}"
        );
        assert!(log.contains("leaving (--exit-when-idle)"), "{log}");
        gpus_of.insert(worker, gpus);
    }
    let bound: BTreeSet<BTreeSet<u64>> = gpus_of.values().cloned().collect();
    let want: BTreeSet<BTreeSet<u64>> = [[0, 1].into(), [2, 3].into()].into();
    assert_eq!(bound, want, "Slurm bound disjoint GPUs to the two jobs");
    let out = cluster.sh_ok(&format!(
        "{COORD_IN} results {id} --format jsonl --data-dir /work/coord"
    ));
    let rows = parse_jsonl(out.as_bytes()).unwrap_or_else(|e| cluster.fail(&e));
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let worker = r["worker"].as_str().unwrap_or_default();
        let Some(gpus) = gpus_of.get(worker) else {
            cluster.fail(&format!("a run by a worker of the jobs: {r}"))
        };
        let used: BTreeSet<u64> = r["gpu_indices"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        assert!(
            used.len() == 1 && used.is_subset(gpus),
            "run measured on the job's GPUs {gpus:?}: {r}"
        );
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["simulated"], true, "{r}");
    }
    let workers = cluster
        .coord_json("workers --json")
        .unwrap_or_else(|| cluster.fail("workers --json"));
    for w in workers.as_array().unwrap() {
        assert_eq!(w["connected"], false, "deregistered: {w}");
    }
    let left = cluster.sh_ok("find /tmp -name credentials.pem");
    assert!(left.is_empty(), "credentials left on the node: {left}");

    // --- 2: scancel while runs go on: handed back, the job ends ---------------------------
    std::fs::write(tmp.path().join("long.yaml"), LONG_RUNS).unwrap();
    let id2 = cluster.submit("/work/long.yaml");
    cluster.sh_ok(&format!(
        "{COORD_IN} slurm-script --coordinator {HOST}:7700 --token-file /work/token \
         --nodes 1 --gpus-per-node 2 --job-name lem-preempt --lem-worker {WORKER_IN} \
         --simulate-gpu --out /work/job2.sbatch -- --prefill-window-seconds 0"
    ));
    let job2 = cluster.sbatch("/work/job2.sbatch");
    cluster.wait_for("both long runs leased", Duration::from_secs(60), || {
        (cluster.status(&id2)?["running"] == 2).then_some(())
    });
    // Into the measured window (the worker and the harness are both running it).
    std::thread::sleep(Duration::from_secs(3));
    cluster.sh_ok(&format!("scancel {job2}"));
    cluster.wait_for("the cancelled job to end", Duration::from_secs(60), || {
        cluster.squeue().filter(|q| q.is_empty())
    });
    let s = cluster
        .status(&id2)
        .unwrap_or_else(|| cluster.fail("status"));
    if s["pending"] != 2 || s["running"] != 0 || s["failed"] != 0 {
        cluster.fail(&format!("both runs handed back, pending again: {s}"));
    }
    let out = cluster.sh_ok(&format!(
        "{COORD_IN} results {id2} --format jsonl --data-dir /work/coord"
    ));
    let rows = parse_jsonl(out.as_bytes()).unwrap_or_else(|e| cluster.fail(&e));
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert_eq!(r["state"], "pending", "{r}");
        assert_eq!(r["attempts"], 0, "a handback gives its attempt back: {r}");
    }
    let log = cluster.read(&format!("lem-worker-{job2}.out"));
    assert_eq!(log.matches("run handed back").count(), 2, "{log}");
    assert!(log.contains("exited with status 0"), "{log}");
    let states = cluster.job_states(&job2);
    assert!(
        states.iter().all(|(state, _)| state == "CANCELLED"),
        "{states:?}"
    );
    eprintln!("slurm test took {:.1} s", started.elapsed().as_secs_f64());
}
