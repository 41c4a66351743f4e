//! Across hosts: a coordinator, three workers and a CLI client, each in its own
//! container (the registry-free base image of docker/base-image.sh) on a private
//! Docker network, with the test's own `lem-coord` and `lem-worker` binaries
//! bind-mounted read-only. A 60-run campaign goes through three faults:
//!
//! 1. a worker is cut off the network (`docker network disconnect`) mid-run for
//!    longer than the lease TTL, and plugged back in only once another worker has
//!    finished the run it held: its late result must be kept as a duplicate;
//! 2. a worker container is SIGKILLed (`docker kill`) mid-run and started again;
//! 3. the coordinator container is SIGKILLed and started again: the same container,
//!    so the same name and (pinned) IP, the manifest on its bind-mounted data dir.
//!
//! Then, from the manifest's own export (`status --json`, `results --format jsonl`,
//! asked through the client container): every run has exactly one accepted result,
//! none is lost, failed or stuck leased, attempts are recorded, the runs whose
//! leases expired were leased again, and the late result is a duplicate.
//!
//! Containers and the network carry a unique name and a label, and are removed when
//! the test ends, panics included. See docs/testing.md.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use lem_tests::{
    campaign_id, check_exactly_once, describe, fault_rng, leases_held, parse_jsonl, poll_until,
    repo_root, run, ExactlyOnce,
};
use serde_json::Value;

const COORD_BIN: &str = env!("CARGO_BIN_EXE_lem-coord-shim");
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_lem-worker-shim");
/// Where the bind-mounted binaries appear inside every container.
const COORD_IN: &str = "/opt/lem/bin/lem-coord";
const WORKER_IN: &str = "/opt/lem/bin/lem-worker";
/// The coordinator's lease TTL; workers renew every third of it.
const TTL_SECS: u64 = 5;
const PORT: u16 = 7700;
const STUDY: &str = "across-hosts-60.yaml";
const N_RUNS: u64 = 60;
const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
/// Seed of the pauses between faults; `LEM_FAULT_SEED` (decimal) explores others.
const SEED: u64 = 0x5EED_D0C4_2026_0001;
/// The label every container and network of one test run carries.
const LABEL: &str = "org.lem-fleet.test";

// The fleet's command lines, in one place: mutual TLS (an `--insecure` flag for
// plain TCP, or a join step before the workers start) changes only these three.

/// The coordinator container's command; its data dir is a bind mount.
fn coordinator_command() -> Vec<String> {
    let listen = format!("0.0.0.0:{PORT}");
    let ttl = TTL_SECS.to_string();
    let args = ["start", "--listen", &listen, "--data-dir", "/data"];
    // Plain TCP on the private network (`--insecure`): this test is about faults; the
    // mutual-TLS path is proven in tests/tests/e2e/security.rs.
    command(COORD_IN, &args, &["--lease-ttl-secs", &ttl, "--insecure"])
}

/// A worker container's command: the simulated GPU, no prefill window (short runs).
fn worker_command(name: &str, coordinator: &str) -> Vec<String> {
    let args = ["--coordinator", coordinator, "--data-dir", "/data"];
    let rest = [
        "--simulate-gpu",
        "--name",
        name,
        "--prefill-window-seconds",
        "0",
    ];
    command(WORKER_IN, &args, &rest)
}

/// `lem-coord ARGS` as the client container runs it against the coordinator.
fn client_command(args: &[&str], coordinator: &str) -> Vec<String> {
    command(COORD_IN, args, &["--coordinator", coordinator])
}

fn command(bin: &str, args: &[&str], rest: &[&str]) -> Vec<String> {
    std::iter::once(bin)
        .chain(args.iter().copied())
        .chain(rest.iter().copied())
        .map(String::from)
        .collect()
}

/// Runs `docker ARGS` to completion.
fn docker(args: &[&str]) -> Output {
    run("docker", args)
}

/// Builds (or finds) the base image with docker/base-image.sh; returns its tag.
fn base_image() -> String {
    let script = repo_root().join("docker/base-image.sh");
    let out = run(script.to_str().unwrap(), &[]);
    assert!(
        out.status.success(),
        "docker/base-image.sh failed; the across-hosts test needs Docker (LEM_SKIP_DOCKER=1 ./test.sh skips it)\n{}",
        describe(&[script.to_str().unwrap()], &out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .expect("base-image.sh prints the tag last")
        .trim()
        .to_string()
}

/// An IPv4 subnet as docker reports it ("172.19.0.0/16").
#[derive(Clone, Copy, Debug)]
struct Subnet {
    base: u32,
    len: u32,
}

impl Subnet {
    fn parse(s: &str) -> Option<Subnet> {
        let (ip, len) = s.split_once('/')?;
        let ip: std::net::Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        (8..=26).contains(&len).then_some(Subnet {
            base: u32::from(ip),
            len,
        })
    }

    /// The `n`th address of the subnet.
    fn host(self, n: u32) -> String {
        std::net::Ipv4Addr::from(self.base + n).to_string()
    }

    /// The upper half, where docker hands out addresses to containers without `--ip`,
    /// so none of them can take the coordinator's address while it is down.
    fn upper_half(self) -> String {
        let half = 1u32 << (32 - self.len - 1);
        format!("{}/{}", self.host(half), self.len + 1)
    }
}

/// One test's containers and network. Dropping it removes them all (by label, so a
/// container whose `docker run` failed half-way goes too).
struct Fleet {
    /// Unique per test run: the prefix of every name, and the label's value.
    prefix: String,
    net: String,
    image: String,
    /// Host side of the bind-mounted data dirs.
    dir: PathBuf,
    coord_ip: String,
    /// Containers started, for their logs.
    containers: Vec<String>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let filter = format!("label={LABEL}={}", self.prefix);
        let out = docker(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let out = docker(&args);
            if !out.status.success() {
                eprintln!("cleanup: {}", describe(&args, &out));
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

impl Fleet {
    fn new(dir: &Path, image: String) -> Fleet {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!("lemft-{}-{nanos:08x}", std::process::id());
        let mut fleet = Fleet {
            net: format!("{prefix}-net"),
            prefix,
            image,
            dir: dir.to_path_buf(),
            coord_ip: String::new(),
            containers: Vec::new(),
        };
        fleet.create_network();
        fleet
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn coord_addr(&self) -> String {
        format!("{}:{PORT}", self.coord_ip)
    }

    /// Every container's logs, then `msg`, as a panic.
    fn fail(&self, msg: &str) -> ! {
        let mut logs = String::new();
        for c in &self.containers {
            let out = docker(&["logs", "--timestamps", c]);
            logs.push_str(&format!(
                "--- {c} (stdout):\n{}\n--- {c} (stderr):\n{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        panic!("{logs}\n{msg}")
    }

    /// `docker ARGS`, which must succeed; returns its trimmed stdout.
    fn docker_ok(&self, args: &[&str]) -> String {
        let out = docker(args);
        if !out.status.success() {
            self.fail(&describe(args, &out));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A private network (`--internal`: no way out) whose subnet is docker's own pick
    /// (so it clashes with no route of the host), created again with that subnet
    /// spelled out: only then does docker let a container keep a fixed address.
    fn create_network(&mut self) {
        let label = format!("{LABEL}={}", self.prefix);
        let ipam = "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}";
        for _ in 0..5 {
            self.docker_ok(&[
                "network",
                "create",
                "--internal",
                "--label",
                &label,
                &self.net,
            ]);
            let picked = self.docker_ok(&["network", "inspect", "-f", ipam, &self.net]);
            self.docker_ok(&["network", "rm", &self.net]);
            let mut it = picked.split_whitespace();
            let (Some(subnet_s), Some(gateway)) = (it.next(), it.next()) else {
                self.fail(&format!(
                    "docker gave the network no IPv4 subnet: {picked:?}"
                ));
            };
            let Some(subnet) = Subnet::parse(subnet_s) else {
                self.fail(&format!(
                    "cannot use docker's subnet {subnet_s:?} (want IPv4, /8 to /26)"
                ));
            };
            let range = subnet.upper_half();
            let args = [
                "network",
                "create",
                "--internal",
                "--label",
                &label,
                "--subnet",
                subnet_s,
                "--gateway",
                gateway,
                "--ip-range",
                &range,
                &self.net,
            ];
            let out = docker(&args);
            if out.status.success() {
                self.coord_ip = subnet.host(10);
                return;
            }
            // Another network took the subnet in between: pick again.
            eprintln!("network create: {}", describe(&args, &out));
        }
        self.fail("could not create a private network with a fixed subnet (5 tries)");
    }

    /// `docker run -d` on the private network as the invoking user (so files on the
    /// bind mounts are ours to clean up), with the binaries mounted read-only.
    fn run_container(&mut self, role: &str, extra: &[String], cmd: &[String]) {
        let name = self.name(role);
        let label = format!("{LABEL}={}", self.prefix);
        // SAFETY: getuid/getgid cannot fail.
        let user = unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) };
        let coord_mount = format!("{COORD_BIN}:{COORD_IN}:ro");
        let worker_mount = format!("{WORKER_BIN}:{WORKER_IN}:ro");
        let mut args: Vec<&str> = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            role,
            "--network",
            &self.net,
            "--label",
            &label,
            "--user",
            &user,
            "-e",
            "HOME=/tmp",
            "-e",
            "LEM_LOG=info",
            "-v",
            &coord_mount,
            "-v",
            &worker_mount,
        ];
        args.extend(extra.iter().map(String::as_str));
        args.push(&self.image);
        args.extend(cmd.iter().map(String::as_str));
        self.containers.push(name.clone());
        self.docker_ok(&args);
    }

    /// A host dir bind-mounted at /data in the container.
    fn data_mount(&self, role: &str) -> Vec<String> {
        let host = self.dir.join(role);
        std::fs::create_dir_all(&host).unwrap();
        vec!["-v".into(), format!("{}:/data", host.display())]
    }

    fn start_coordinator(&mut self) {
        let mut extra = self.data_mount("coord");
        extra.extend(["--ip".to_string(), self.coord_ip.clone()]);
        self.run_container("coord", &extra, &coordinator_command());
        self.wait_coordinator_up();
    }

    /// Up when it wrote its address file (removed before each restart).
    fn wait_coordinator_up(&self) {
        let addr_file = self.dir.join("coord/coordinator.addr");
        let up = poll_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|a| !a.is_empty())
        });
        if up.is_none() {
            self.fail("the coordinator container did not come up (no /data/coordinator.addr)");
        }
    }

    fn start_client(&mut self) {
        let fixtures = format!(
            "{}:/fixtures:ro",
            repo_root().join("tests/fixtures").display()
        );
        let extra = vec!["-v".to_string(), fixtures];
        self.run_container("cli", &extra, &command("sleep", &["infinity"], &[]));
    }

    fn start_worker(&mut self, name: &str) {
        let extra = self.data_mount(name);
        self.run_container(name, &extra, &worker_command(name, &self.coord_addr()));
    }

    /// `lem-coord ARGS` run in the client container; its output.
    fn client(&self, args: &[&str]) -> Output {
        let cli = self.name("cli");
        let cmd = client_command(args, &self.coord_addr());
        let mut all = vec!["exec", cli.as_str()];
        all.extend(cmd.iter().map(String::as_str));
        docker(&all)
    }

    /// `lem-coord ARGS` parsed as JSON; `None` while the coordinator does not answer.
    fn query(&self, args: &[&str]) -> Option<Value> {
        let out = self.client(args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn leases_held(&self, worker: &str) -> Option<u64> {
        leases_held(&self.query(&["workers", "--json"])?, worker)
    }

    /// Waits until `worker` holds a lease (it is mid-run) and has finished at least
    /// `min_done` runs before.
    fn wait_until_leasing(&self, worker: &str, min_done: u64) {
        let ok = poll_until(Duration::from_secs(90), || {
            let ws = self.query(&["workers", "--json"])?;
            let w = ws.as_array()?.iter().find(|w| w["worker"] == worker)?;
            (w["leases_held"].as_u64()? > 0 && w["runs_done"].as_u64()? >= min_done).then_some(())
        });
        if ok.is_none() {
            self.fail(&format!(
                "{worker} never held a lease after {min_done} run(s)"
            ));
        }
    }

    fn status(&self, id: &str) -> Option<Value> {
        self.query(&["status", id, "--json"])
    }

    fn rows(&self, id: &str) -> Vec<Value> {
        let args = ["results", id, "--format", "jsonl"];
        let out = self.client(&args);
        if !out.status.success() {
            self.fail(&describe(&args, &out));
        }
        parse_jsonl(&out.stdout).unwrap_or_else(|e| self.fail(&e))
    }

    fn ip_of(&self, role: &str) -> String {
        let fmt = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.net
        );
        self.docker_ok(&["inspect", "-f", &fmt, &self.name(role)])
    }

    fn is_running(&self, role: &str) -> bool {
        self.docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.name(role)]) == "true"
    }
}

/// Fault 1: cut `worker` off while it holds a lease, keep it off until the lease
/// expired and the run was finished elsewhere, then plug it back in. Its result,
/// finished while it was cut off, arrives late: true once that is recorded as a
/// duplicate. (False in the rare case that the cut fell between the grant and its
/// delivery, so the worker never had a run to report.)
fn disconnect_past_ttl(fleet: &Fleet, id: &str, worker: &str) -> bool {
    let container = fleet.name(worker);
    let mut tries = 0;
    let cut = loop {
        // After one run the harness is warm, so a run is short (see the fixture).
        fleet.wait_until_leasing(worker, 1);
        fleet.docker_ok(&["network", "disconnect", &fleet.net, &container]);
        let cut = Instant::now();
        // Still leased once cut off: the run is in progress and cannot be reported.
        if fleet.leases_held(worker).unwrap_or(0) > 0 {
            break cut;
        }
        fleet.docker_ok(&["network", "connect", &fleet.net, &container]);
        tries += 1;
        if tries > 20 {
            fleet.fail(&format!("could not cut {worker} off while it held a lease"));
        }
    };
    let leased: Vec<(String, u64)> = fleet
        .rows(id)
        .iter()
        .filter(|r| r["state"] == "leased")
        .map(|r| {
            let config = r["config_hash"].as_str().unwrap_or("").to_string();
            (config, r["cycle"].as_u64().unwrap_or(0))
        })
        .collect();
    // The coordinator takes the lease back after the TTL ...
    let expired = poll_until(Duration::from_secs(TTL_SECS + 30), || {
        (fleet.leases_held(worker)? == 0).then_some(())
    });
    if expired.is_none() {
        fleet.fail(&format!(
            "{worker}'s lease never expired while it was cut off"
        ));
    }
    // ... and another worker finishes the run (every run leased at the cut is done;
    // one that ended any other way fails the test at once).
    let redone = poll_until(Duration::from_secs(120), || {
        let rows = fleet.rows(id);
        let states: Vec<&str> = leased
            .iter()
            .map(|(config, cycle)| {
                let row = rows
                    .iter()
                    .find(|r| r["config_hash"] == config.as_str() && r["cycle"] == *cycle);
                row.and_then(|r| r["state"].as_str()).unwrap_or("missing")
            })
            .collect();
        if states
            .iter()
            .any(|s| !["leased", "pending", "done"].contains(s))
        {
            return Some(Err(format!("{leased:?} are {states:?}")));
        }
        states.iter().all(|s| *s == "done").then_some(Ok(()))
    });
    match redone {
        Some(Ok(())) => {}
        Some(Err(e)) => fleet.fail(&format!(
            "a run leased when {worker} was cut off did not end done: {e}"
        )),
        None => fleet.fail(&format!(
            "the runs leased when {worker} was cut off were not finished by others: {leased:?}"
        )),
    }
    let rest = Duration::from_secs(TTL_SECS + 1).saturating_sub(cut.elapsed());
    std::thread::sleep(rest);
    let before = fleet.status(id).and_then(|s| s["duplicates"].as_u64());
    let Some(before) = before else {
        fleet.fail("status --json has no duplicates count");
    };
    fleet.docker_ok(&["network", "connect", &fleet.net, &container]);
    eprintln!(
        "{worker} was cut off for {:.1}s (TTL {TTL_SECS}s); leased at the cut: {leased:?}",
        cut.elapsed().as_secs_f64()
    );
    // It retries `complete` with a backoff of at most 5 s once it can reach the
    // coordinator again.
    poll_until(Duration::from_secs(45), || {
        let d = fleet.status(id)?["duplicates"].as_u64()?;
        (d > before).then_some(())
    })
    .is_some()
}

/// Fault 2: SIGKILL `worker`'s container mid-run, then start the same container again.
fn kill_worker(fleet: &Fleet, worker: &str, pause: Duration) {
    fleet.wait_until_leasing(worker, 0);
    let container = fleet.name(worker);
    fleet.docker_ok(&["kill", "--signal", "KILL", &container]);
    std::thread::sleep(pause);
    fleet.docker_ok(&["start", &container]);
}

/// Fault 3: SIGKILL the coordinator's container and start it again: same data dir,
/// same name, same address.
fn restart_coordinator(fleet: &Fleet) {
    let container = fleet.name("coord");
    fleet.docker_ok(&["kill", "--signal", "KILL", &container]);
    let _ = std::fs::remove_file(fleet.dir.join("coord/coordinator.addr"));
    fleet.docker_ok(&["start", &container]);
    fleet.wait_coordinator_up();
    let ip = fleet.ip_of("coord");
    if ip != fleet.coord_ip {
        fleet.fail(&format!(
            "the restarted coordinator has address {ip}, not {}",
            fleet.coord_ip
        ));
    }
}

#[test]
fn containers_across_hosts_keep_every_run_exactly_once() {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("{:>6.1}s {what}", t0.elapsed().as_secs_f64());
    let image = base_image();
    step(&format!("image {image}"));
    let tmp = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::new(tmp.path(), image);
    step(&format!(
        "network {} (coordinator at {})",
        fleet.net, fleet.coord_ip
    ));
    fleet.start_coordinator();
    step("coordinator up");
    fleet.start_client();
    for w in WORKERS {
        fleet.start_worker(w);
    }
    step("client and workers started");
    let registered = poll_until(Duration::from_secs(180), || {
        let ws = fleet.query(&["workers", "--json"])?;
        (ws.as_array()?.len() == WORKERS.len()).then_some(())
    });
    if registered.is_none() {
        fleet.fail("the three worker containers did not register");
    }
    let study = format!("/fixtures/{STUDY}");
    let args = ["submit", study.as_str()];
    let out = fleet.client(&args);
    if !out.status.success() {
        fleet.fail(&describe(&args, &out));
    }
    let id = campaign_id(&out.stdout);
    step(&format!("workers registered, campaign {id} submitted"));

    let (seed, mut rng) = fault_rng(SEED);
    let mut log = Vec::new();
    let mut note = |what: &str, fleet: &Fleet| {
        let done = fleet.status(&id).and_then(|s| s["done"].as_u64());
        log.push(format!(
            "{:>6.1}s {what} (done after: {done:?})",
            t0.elapsed().as_secs_f64()
        ));
    };
    let mut cuts = 0;
    loop {
        cuts += 1;
        let late = disconnect_past_ttl(&fleet, &id, "w2");
        note("w2 cut off past the TTL, plugged back in", &fleet);
        if late {
            break;
        }
        if cuts == 3 {
            fleet.fail("w2 was cut off mid-run three times and never sent a late result");
        }
    }
    std::thread::sleep(rng.between(Duration::from_millis(200), Duration::from_millis(1500)));
    kill_worker(
        &fleet,
        "w1",
        rng.between(Duration::from_millis(100), Duration::from_millis(1500)),
    );
    note("w1 SIGKILLed and started again", &fleet);
    std::thread::sleep(rng.between(Duration::from_millis(200), Duration::from_millis(1500)));
    restart_coordinator(&fleet);
    note("coordinator SIGKILLed and started again", &fleet);
    eprintln!("fault schedule (seed {seed}):\n{}", log.join("\n"));
    // The faults hit a running campaign, not a finished one.
    let at_last = fleet.status(&id).and_then(|s| s["done"].as_u64());
    if at_last.is_none_or(|d| d >= N_RUNS) {
        fleet.fail(&format!(
            "the campaign was finished (done {at_last:?}) before the faults were: the test no longer injects them mid-campaign\n{}",
            log.join("\n")
        ));
    }

    let status = poll_until(Duration::from_secs(180), || {
        let s = fleet.status(&id)?;
        let finished = s["done"].as_u64()? + s["failed"].as_u64()?;
        (finished == s["total"].as_u64()?).then_some(s)
    })
    .unwrap_or_else(|| fleet.fail(&format!("all {N_RUNS} runs to finish after the faults")));
    let rows = fleet.rows(&id);
    let ExactlyOnce {
        duplicates,
        retried,
    } = check_exactly_once(&status, &rows, N_RUNS).unwrap_or_else(|e| fleet.fail(&e));
    // The cut-off worker's lease and the killed worker's expired: two runs were
    // leased again, and their attempts say so.
    if retried < 2 {
        fleet.fail(&format!(
            "{retried} run(s) with attempts >= 2; two leases expired"
        ));
    }
    if duplicates < 1 {
        fleet.fail("the late result is not counted as a duplicate");
    }
    // The fleet survived: every container is still running.
    for role in ["coord", "cli", "w0", "w1", "w2"] {
        if !fleet.is_running(role) {
            fleet.fail(&format!("the {role} container stopped"));
        }
    }
    if std::env::var("LEM_FAULT_DEBUG").is_ok() {
        fleet.fail("LEM_FAULT_DEBUG: logs");
    }
    eprintln!(
        "across-hosts test: {retried} run(s) leased more than once, {duplicates} duplicate(s), {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
