//! The docker runtime end to end: real `lem-coord` and `lem-worker --runtime docker`
//! processes on the local Docker engine, with the harness image docker/images.sh
//! builds (no registry). A study runs exactly once per run from one warm container
//! that keeps its model loaded, and leaves no root-owned file in the worker's data
//! dir; a container killed mid-run is replaced and its run retried; an image off the
//! allowlist is refused; a SIGKILLed worker's containers go when a new worker starts
//! on its data dir; `lem-worker bench dispatch` prints its summary.
//!
//! Every test name starts with `docker_runtime`, so `LEM_SKIP_DOCKER=1 ./test.sh`
//! skips them all (each also says it was skipped when run with that variable set).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lem_tests::{
    check_exactly_once, containers_labelled, describe, harness_image, repo_root, run, skip_docker,
    unprivileged_docker_user, wait_for, ExactlyOnce, Proc, RemoveContainers,
};
use serde_json::Value;

use crate::{campaign_id, results_jsonl, start_coordinator, status_json, COORD, WORKER};

/// An address where no coordinator listens: a worker starts its slots anyway (it
/// keeps trying to register), which is all the start-up tests need.
const NO_COORDINATOR: &str = "127.0.0.1:9";

/// A `lem-worker --runtime docker` and what identifies its containers.
struct DockerWorker {
    proc: Proc,
    data_dir: PathBuf,
    /// `lem.data-dir=<canonical data dir>`: the label on every container it makes.
    label: String,
}

impl DockerWorker {
    /// Starts a worker on `dir/<name>` (created, and owned by `user` when given) with
    /// the simulated GPU and no prefill window.
    fn start(
        dir: &Path,
        coordinator: &str,
        name: &str,
        image: &str,
        extra: &[&str],
        user: Option<(u32, u32)>,
    ) -> DockerWorker {
        let data_dir = dir.join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid)).unwrap();
        }
        let data_dir = data_dir.canonicalize().unwrap();
        let mut args = vec![
            "--coordinator",
            coordinator,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--name",
            name,
            "--simulate-gpu",
            "--prefill-window-seconds",
            "0",
            "--runtime",
            "docker",
            "--image",
            image,
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn_as(name, WORKER, &args, &[], dir, user);
        let label = format!("lem.data-dir={}", data_dir.display());
        DockerWorker {
            proc,
            data_dir,
            label,
        }
    }

    /// Waits until exactly one container of this worker runs; returns its id.
    fn wait_container(&self, what: &str, procs: &[&Proc], not: Option<&str>) -> String {
        let mut all: Vec<&Proc> = procs.to_vec();
        all.push(&self.proc);
        wait_for(what, Duration::from_secs(120), &all, || {
            let cs = containers_labelled(&self.label);
            match cs.as_slice() {
                [(id, state)] if state == "running" && Some(id.as_str()) != not => Some(id.clone()),
                _ => None,
            }
        })
    }

    fn harness_log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("slot-0/harness.log")).unwrap_or_default()
    }
}

/// A temp dir every user may enter (a worker running as nobody keeps its data dir
/// in it).
fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

fn submit(addr: &str, fixture: &str) -> String {
    let study = repo_root().join("tests/fixtures").join(fixture);
    let args = ["submit", study.to_str().unwrap(), "--coordinator", addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    campaign_id(&out.stdout)
}

fn wait_finished(addr: &str, id: &str, total: u64, procs: &[&Proc]) -> Value {
    wait_for(
        &format!("all {total} runs to finish"),
        Duration::from_secs(300),
        procs,
        || {
            let s = status_json(addr, id)?;
            let finished = s["done"].as_u64()? + s["failed"].as_u64()?;
            (finished == total).then_some(s)
        },
    )
}

/// Files (and dirs) under `dir` owned by root.
fn root_owned(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.uid() == 0 {
                out.push(entry.path());
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

fn image_id(image: &str) -> String {
    let args = ["image", "inspect", "-f", "{{.Id}}", image];
    let out = run("docker", &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn docker_runtime_serves_every_run_from_one_warm_container() {
    if skip_docker("docker_runtime_serves_every_run_from_one_warm_container") {
        return;
    }
    serves_every_run_from_one_warm_container("socket");
}

#[test]
fn docker_runtime_by_exec_serves_every_run_from_one_warm_container() {
    if skip_docker("docker_runtime_by_exec_serves_every_run_from_one_warm_container") {
        return;
    }
    serves_every_run_from_one_warm_container("exec");
}

/// Six runs of one model through one warm container, each sent by `dispatch`
/// (`lem-worker --docker-dispatch`).
fn serves_every_run_from_one_warm_container(dispatch: &str) {
    let image = harness_image();
    let tmp = tempdir();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let user = unprivileged_docker_user();
    let mut w = DockerWorker::start(
        dir,
        &addr,
        "wd",
        &image,
        &["--allow-image", &image, "--docker-dispatch", dispatch],
        user,
    );
    let _cleanup = RemoveContainers(vec![w.label.clone()]);
    let container = w.wait_container("the worker's harness container", &[&coord], None);

    let id = submit(&addr, "docker-6.yaml");
    let status = wait_finished(&addr, &id, 6, &[&coord, &w.proc]);
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    let ExactlyOnce { retried, .. } =
        check_exactly_once(&status, &rows, 6).unwrap_or_else(|e| panic!("{e}\n{}", w.proc.logs()));
    assert_eq!(retried, 0, "no run was retried: {rows:?}");

    // One container served every run: the one the worker started with, still up,
    // whose server started once and took all six runs.
    assert_eq!(
        containers_labelled(&w.label),
        vec![(container.clone(), "running".to_string())],
        "the same container, still running"
    );
    // The runs went the way asked: the worker says how it sends them.
    let want = if dispatch == "exec" {
        "dispatch=Exec"
    } else {
        "dispatch=Socket"
    };
    assert!(
        w.proc.logs().contains(want),
        "{want} not in\n{}",
        w.proc.logs()
    );
    let log = w.harness_log();
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
    assert_eq!(log.matches(": start").count(), 6, "{log}");
    // The model stayed loaded: only the first run loaded it.
    let mut rows = rows;
    rows.sort_by_key(|r| r["started_at"].as_str().unwrap_or("").to_string());
    let loaded: Vec<&Value> = rows.iter().map(|r| &r["model_already_loaded"]).collect();
    assert_eq!(
        loaded[0], false,
        "the first run loads the model: {loaded:?}"
    );
    assert!(loaded[1..].iter().all(|l| **l == true), "{loaded:?}");

    // Nothing in the worker's data dir belongs to root (the containers run as the
    // worker's uid:gid). As root with no other user able to use Docker, every file
    // is the worker's and root's at once, and there is nothing to tell apart.
    match user {
        Some((uid, _)) => {
            let bad = root_owned(&w.data_dir);
            assert!(bad.is_empty(), "root-owned files (the worker runs as {uid}): {bad:?}");
        }
        // SAFETY: getuid cannot fail.
        None if unsafe { libc::getuid() } != 0 => {
            let bad = root_owned(&w.data_dir);
            assert!(bad.is_empty(), "root-owned files: {bad:?}");
        }
        None => eprintln!(
            "docker_runtime: running as root and no unprivileged user can use the Docker socket: the root-owned-file check is not meaningful here and was not made"
        ),
    }

    // SIGTERM: the worker stops its container and removes it before it exits.
    w.proc.signal(libc::SIGTERM);
    let exited = w.proc.wait_exit(Duration::from_secs(60));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the worker exits 0 on SIGTERM ({exited:?})\n{}",
        w.proc.logs()
    );
    assert!(
        containers_labelled(&w.label).is_empty(),
        "no container left after the worker stopped"
    );
}

#[test]
fn docker_runtime_replaces_a_container_killed_mid_run_and_retries_the_run() {
    if skip_docker("docker_runtime_replaces_a_container_killed_mid_run_and_retries_the_run") {
        return;
    }
    let image = harness_image();
    let tmp = tempdir();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let user = unprivileged_docker_user();
    let w = DockerWorker::start(dir, &addr, "wk", &image, &["--allow-image", &image], user);
    let _cleanup = RemoveContainers(vec![w.label.clone()]);
    let first = w.wait_container("the worker's harness container", &[&coord], None);

    // Runs of about 3 s (slow decode steps): kill the container once a run is in it.
    let id = submit(&addr, "slow-runs.yaml");
    let running = wait_for(
        "a run inside the container",
        Duration::from_secs(120),
        &[&coord, &w.proc],
        || {
            let log = w.harness_log();
            let started: Vec<&str> = log
                .lines()
                .filter_map(|l| l.split("] run ").nth(1)?.strip_suffix(": start"))
                .collect();
            started
                .into_iter()
                .find(|r| !log.contains(&format!("run {r}: done")))
                .map(String::from)
        },
    );
    let args = ["kill", "--signal", "KILL", first.as_str()];
    let out = run("docker", &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    eprintln!("killed container {first} during run {running}");

    let status = wait_finished(&addr, &id, 2, &[&coord, &w.proc]);
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    let ExactlyOnce { retried, .. } =
        check_exactly_once(&status, &rows, 2).unwrap_or_else(|e| panic!("{e}\n{}", w.proc.logs()));
    assert_eq!(
        retried, 1,
        "the run in the killed container was leased again: {rows:?}"
    );
    let second = w.wait_container("a fresh harness container", &[&coord], Some(&first));
    assert_ne!(second, first);
    let log = w.proc.logs();
    assert!(
        log.contains("harness closed the connection before the run finished"),
        "the worker says why the run failed\n{log}"
    );
}

#[test]
fn docker_runtime_refuses_an_image_off_its_allowlist() {
    if skip_docker("docker_runtime_refuses_an_image_off_its_allowlist") {
        return;
    }
    let image = harness_image();
    let id = image_id(&image);
    let tmp = tempdir();
    let dir = tmp.path();
    let mut w = DockerWorker::start(dir, NO_COORDINATOR, "wa", &image, &[], None);
    let _cleanup = RemoveContainers(vec![w.label.clone()]);
    let status = w.proc.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a worker whose image is not allowed exits with an error ({status:?})\n{}",
        w.proc.logs()
    );
    let stderr = std::fs::read_to_string(&w.proc.stderr).unwrap();
    for needle in [
        image.as_str(),
        id.as_str(),
        "not on this worker's allowlist",
        "--allow-image",
        "allowed-images",
    ] {
        assert!(
            stderr.contains(needle),
            "the refusal names {needle:?}:\n{stderr}"
        );
    }
    assert!(
        containers_labelled(&w.label).is_empty(),
        "no container was made"
    );

    // The same image, allowed by its id in DATA_DIR/allowed-images, starts.
    std::fs::write(
        w.data_dir.join("allowed-images"),
        format!("# the harness image of this checkout\n{id}\n"),
    )
    .unwrap();
    let mut allowed = DockerWorker::start(dir, NO_COORDINATOR, "wa", &image, &[], None);
    allowed.wait_container("the allowed image's container", &[], None);
    allowed.proc.kill();
}

#[test]
fn docker_runtime_removes_the_containers_of_a_killed_worker() {
    if skip_docker("docker_runtime_removes_the_containers_of_a_killed_worker") {
        return;
    }
    let image = harness_image();
    let tmp = tempdir();
    let dir = tmp.path();
    let allow = ["--allow-image", image.as_str()];
    let mut first = DockerWorker::start(dir, NO_COORDINATOR, "ws", &image, &allow, None);
    let _cleanup = RemoveContainers(vec![first.label.clone()]);
    let old = first.wait_container("the first worker's container", &[], None);
    first.proc.kill();
    // A SIGKILLed worker cannot clean up: its container outlives it.
    assert_eq!(
        containers_labelled(&first.label),
        vec![(old.clone(), "running".to_string())]
    );

    let second = DockerWorker::start(dir, NO_COORDINATOR, "ws", &image, &allow, None);
    let new = second.wait_container("the second worker's own container", &[], Some(&old));
    assert_ne!(new, old);
    let log = second.proc.logs();
    assert!(
        log.contains("removed containers an earlier worker on this data dir left"),
        "{log}"
    );
}

#[test]
fn docker_runtime_bench_dispatch_prints_per_mode_percentiles_and_a_summary() {
    if skip_docker("docker_runtime_bench_dispatch_prints_per_mode_percentiles_and_a_summary") {
        return;
    }
    let image = harness_image();
    let args = [
        "bench",
        "dispatch",
        "--runs",
        "2",
        "--image",
        image.as_str(),
    ];
    let out = run(WORKER, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for mode in ["warm:", "warm exec:", "cold:"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(mode))
            .unwrap_or_else(|| panic!("a {mode} line\n{}", describe(&args, &out)));
        assert!(
            line.contains("n=2 p50_ms=") && line.contains(" p95_ms="),
            "{line}"
        );
    }
    // The last line, exactly: dispatch warm_p50_ms=X cold_p50_ms=Y ratio=Z.
    let last: Vec<&str> = lines.last().unwrap().split(' ').collect();
    assert_eq!(last.len(), 4, "{stdout}");
    assert_eq!(last[0], "dispatch");
    for (field, key) in last[1..]
        .iter()
        .zip(["warm_p50_ms", "cold_p50_ms", "ratio"])
    {
        let (k, v) = field.split_once('=').unwrap_or_else(|| panic!("{field}"));
        assert_eq!(k, key, "{stdout}");
        assert!(v.parse::<f64>().is_ok_and(|x| x > 0.0), "{field}");
    }
}

/// The line of `lem-worker check`'s report for `item`.
fn check_line<'a>(report: &'a str, item: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(item)))
        .unwrap_or_else(|| panic!("a {item:?} line in\n{report}"))
}

#[test]
fn docker_runtime_check_reports_each_prerequisite_with_its_fix() {
    if skip_docker("docker_runtime_check_reports_each_prerequisite_with_its_fix") {
        return;
    }
    let image = harness_image();
    let id = image_id(&image);
    let tmp = tempdir();
    let data_dir = tmp.path().join("w");
    let dd = data_dir.to_str().unwrap();
    let base = [
        "check",
        "--runtime",
        "docker",
        "--simulate-gpu",
        "--data-dir",
        dd,
        "--image",
        image.as_str(),
    ];

    // The image is there but not allowed: a failure, whose fix is the flag to pass.
    let out = run(WORKER, &base);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&base, &out));
    assert!(check_line(&report, "docker").starts_with("ok"), "{report}");
    assert!(
        check_line(&report, "image").contains(&id),
        "the image line names its id\n{report}"
    );
    assert!(
        check_line(&report, "allowlist").starts_with("FAIL"),
        "{report}"
    );
    assert!(
        report.contains(&format!("fix: pass --allow-image {id}")),
        "{report}"
    );

    // Allowed: every item is ok or a warning (the simulated GPU needs no NVIDIA
    // runtime), the harness in a container of the image answers, and no container
    // is left behind.
    let mut allowed = base.to_vec();
    allowed.extend(["--allow-image", id.as_str()]);
    let out = run(WORKER, &allowed);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", describe(&allowed, &out));
    assert!(
        check_line(&report, "allowlist").starts_with("ok"),
        "{report}"
    );
    assert!(
        check_line(&report, "engines").contains("synthetic"),
        "the image's harness said which engines it runs\n{report}"
    );
    assert!(
        report.lines().last().unwrap().ends_with(" 0 failure(s)"),
        "{report}"
    );
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=lem.worker=check"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "the check removed its container"
    );

    // An image that is not there: a failure naming the script that builds it.
    let mut missing = base.to_vec();
    missing[7] = "lem-fleet/no-such-image:0";
    let out = run(WORKER, &missing);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&missing, &out));
    assert!(check_line(&report, "image").starts_with("FAIL"), "{report}");
    assert!(report.contains("docker/images.sh"), "{report}");
}

/// `docker-6.yaml` with a `runners:` (and `images:`) block appended, written to `dir`.
fn with_runners(dir: &Path, name: &str, block: &str) -> String {
    let base = std::fs::read_to_string(repo_root().join("tests/fixtures/docker-6.yaml")).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{base}{block}")).unwrap();
    path.to_str().unwrap().to_string()
}

fn submit_file(addr: &str, study: &str) -> String {
    let args = ["submit", study, "--coordinator", addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    campaign_id(&out.stdout)
}

#[test]
fn docker_runtime_study_runners_choose_the_workers_that_run_each_engine() {
    if skip_docker("docker_runtime_study_runners_choose_the_workers_that_run_each_engine") {
        return;
    }
    let image = harness_image();
    let id = image_id(&image);
    let tmp = tempdir();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let process = crate::start_worker(dir, &addr, "wp");

    // The study wants its engine in a container of the harness image: the process
    // worker takes none of its runs, and the campaign says why and what to start.
    let study = with_runners(
        dir,
        "container.yaml",
        &format!("runners:\n  synthetic: container\nimages:\n  synthetic: {image}\n"),
    );
    let c1 = submit_file(&addr, &study);
    let s = wait_for(
        "the campaign to say it is blocked once the process worker registered",
        Duration::from_secs(60),
        &[&coord, &process],
        || {
            let s = status_json(&addr, &c1)?;
            let registered = s["blocked"][0]["reason"]
                .as_str()
                .is_some_and(|r| !r.contains("no worker is connected"));
            (s["state"] == "blocked" && registered).then_some(s)
        },
    );
    assert_eq!(s["running"], 0, "{s}");
    assert_eq!(s["done"], 0, "{s}");
    let reason = s["blocked"][0]["reason"].as_str().unwrap().to_string();
    for needle in [
        format!("a container of image {image}"),
        "wp: process runtime".to_string(),
        format!("--runtime docker --image {image}"),
    ] {
        assert!(reason.contains(&needle), "{needle:?} in {reason}");
    }

    // A docker worker of that image comes: it runs all six, in its container.
    let w = DockerWorker::start(dir, &addr, "wd", &image, &["--allow-image", &image], None);
    let _cleanup = RemoveContainers(vec![w.label.clone()]);
    let status = wait_finished(&addr, &c1, 6, &[&coord, &process, &w.proc]);
    let rows = results_jsonl(&c1, &["--coordinator", &addr]);
    check_exactly_once(&status, &rows, 6).unwrap_or_else(|e| panic!("{e}"));
    for r in &rows {
        assert_eq!(r["worker"], "wd", "{r}");
        assert_eq!(r["runner"], "container", "{r}");
        assert_eq!(r["image"], image.as_str(), "{r}");
        assert_eq!(r["image_id"], id.as_str(), "{r}");
    }

    // `process`: only the process worker; an image by id (a 12-digit prefix, as
    // `docker images` prints it) binds only containers, and a process may run it.
    let study = with_runners(dir, "process.yaml", "runners:\n  synthetic: process\n");
    let c2 = submit_file(&addr, &study);
    let status = wait_finished(&addr, &c2, 6, &[&coord, &process, &w.proc]);
    let rows = results_jsonl(&c2, &["--coordinator", &addr]);
    check_exactly_once(&status, &rows, 6).unwrap_or_else(|e| panic!("{e}"));
    assert!(rows.iter().all(|r| r["worker"] == "wp"), "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["runner"] == "process" && r["image_id"].is_null()),
        "{rows:?}"
    );

    let short = &id["sha256:".len().."sha256:".len() + 12];
    let study = with_runners(
        dir,
        "by-id.yaml",
        &format!("runners:\n  synthetic: 'container:{short}'\n"),
    );
    let c3 = submit_file(&addr, &study);
    let status = wait_finished(&addr, &c3, 6, &[&coord, &process, &w.proc]);
    let rows = results_jsonl(&c3, &["--coordinator", &addr]);
    check_exactly_once(&status, &rows, 6).unwrap_or_else(|e| panic!("{e}"));
    assert!(rows.iter().all(|r| r["worker"] == "wd"), "{rows:?}");
}

#[test]
fn docker_runtime_study_asking_for_remote_code_runs_only_where_the_host_allows_it() {
    if skip_docker("docker_runtime_study_asking_for_remote_code_runs_only_where_the_host_allows_it")
    {
        return;
    }
    // The host's policy reaches the container (the worker checks the harness sees it
    // at start) and wins over the study, as with the process runtime.
    let image = harness_image();
    let cleanup = std::cell::RefCell::new(Vec::new());
    crate::flow::remote_code_runs_only_where_allowed(&|dir, addr, name, flags| {
        // DockerWorker::start already passes --prefill-window-seconds 0.
        let mut extra: Vec<&str> = flags
            .iter()
            .copied()
            .filter(|f| *f == "--trust-remote-code")
            .collect();
        extra.extend(["--allow-image", image.as_str()]);
        let w = DockerWorker::start(dir, addr, name, &image, &extra, None);
        cleanup
            .borrow_mut()
            .push(RemoveContainers(vec![w.label.clone()]));
        w.proc
    });
}
