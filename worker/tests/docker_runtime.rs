//! `lem_worker::docker::DockerHarness` on the local Docker engine, with the harness
//! image docker/images.sh builds: a run's events, the study's limits (the silence
//! watchdog, the whole-run timeout) and a cancel, each of which removes the container
//! so the next run gets a fresh one; a dataset file copied in; the container's pids;
//! a server that dies before answering named in the start error.
//!
//! Every test name starts with `docker_runtime`, so `LEM_SKIP_DOCKER=1 ./test.sh`
//! skips them (each also says it was skipped when run with that variable set).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lem_common::harness::{run_request_line, HarnessEvent, RunRequest};
use lem_worker::docker::{self, DockerFactory, DockerHarness};
use lem_worker::harness_runtime::{HarnessRuntime, RunLimits};
use lem_worker::runtime::HarnessError;

fn skip(test: &str) -> bool {
    let skip = std::env::var("LEM_SKIP_DOCKER").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: LEM_SKIP_DOCKER=1 (this test needs Docker; CI never sets it)");
    }
    skip
}

/// The harness image's tag, built (or found) by docker/images.sh.
fn image() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/images.sh");
    let out = std::process::Command::new(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string()
}

/// A factory on a temp data dir; the dir's containers are removed when it drops.
struct Setup {
    factory: DockerFactory,
    dir: tempfile::TempDir,
    rt_docker: bollard::Docker,
}

impl Setup {
    async fn new() -> Setup {
        let docker = docker::connect().await.unwrap();
        let pinned = docker::resolve_image(&docker, &image()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let factory = DockerFactory::new(docker.clone(), pinned, "test", dir.path());
        Setup {
            factory,
            dir,
            rt_docker: docker,
        }
    }

    fn harness(&self, name: &str) -> DockerHarness {
        self.factory
            .harness(&self.dir.path().join(name), 0, &[], vec![])
    }

    async fn cleanup(self) {
        let label = self.dir.path().canonicalize().unwrap();
        let removed = docker::remove_stale(&self.rt_docker, &label.to_string_lossy())
            .await
            .unwrap();
        assert!(removed.is_empty(), "containers left behind: {removed:?}");
    }
}

fn request(run_id: &str, engine_params: serde_json::Value, dataset: &str) -> String {
    let config = serde_json::json!({
        "engine": "synthetic",
        "task": {"model": "test/docker", "dataset": {"n_prompts": 1},
                 "max_input_tokens": 8, "max_output_tokens": 4},
        "offline": {"warmup": {"enabled": false}},
        "synthetic": {"engine_params": engine_params},
    })
    .to_string();
    run_request_line(&RunRequest {
        run_id,
        config_json: &config,
        dataset_path: dataset,
        prefill_window_seconds: 0.0,
        quiet_seconds: 0.0,
        per_token_timing: "always",
        force_cold_start: false,
    })
}

async fn run(
    h: &mut DockerHarness,
    line: &str,
    limits: RunLimits,
    cancel_after: Option<Duration>,
) -> (Result<(), HarnessError>, Vec<HarnessEvent>) {
    let mut events = Vec::new();
    let cancel: futures::future::BoxFuture<'_, String> = match cancel_after {
        Some(d) => Box::pin(async move {
            tokio::time::sleep(d).await;
            "the lease was lost".to_string()
        }),
        None => Box::pin(std::future::pending()),
    };
    let r = HarnessRuntime::run(h, line, limits, cancel, &mut |e| events.push(e.clone())).await;
    (r, events)
}

fn limits(timeout_s: u64, silence_s: Option<u64>) -> RunLimits {
    RunLimits {
        timeout: Duration::from_secs(timeout_s),
        silence: silence_s.map(Duration::from_secs),
    }
}

#[tokio::test]
async fn docker_runtime_runs_stream_events_and_limits_replace_the_container() {
    if skip("docker_runtime_runs_stream_events_and_limits_replace_the_container") {
        return;
    }
    let setup = Setup::new().await;
    let mut h = setup.harness("slot-0");
    let pong = HarnessRuntime::ensure_started(&mut h).await.unwrap();
    assert_eq!(
        pong.engines,
        vec!["synthetic".to_string()],
        "{:?}",
        pong.body
    );
    assert_eq!(h.kind(), "docker");
    let first = h.container_id().unwrap().to_string();

    // The container's processes: the server among them, as the host numbers it.
    let pids = HarnessRuntime::own_pids(&mut h);
    let server = pids.iter().find(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("server.py"))
    });
    assert!(
        server.is_some(),
        "the server is among the container's pids {pids:?}"
    );
    assert!(!pids.contains(&std::process::id()));

    // A run: its events in order, ending with the result.
    let fast = serde_json::json!({"load_seconds": 0.1});
    let (r, events) = run(
        &mut h,
        &request("r1", fast.clone(), "aienergyscore"),
        limits(60, Some(30)),
        None,
    )
    .await;
    r.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"loaded"), "{names:?}");
    assert_eq!(names.last(), Some(&"result"), "{names:?}");
    assert!(names.contains(&"measure_start") && names.contains(&"measure_end"));
    // The next one in the same container, the model still loaded.
    let (r, events) = run(
        &mut h,
        &request("r2", fast.clone(), "aienergyscore"),
        limits(60, Some(30)),
        None,
    )
    .await;
    r.unwrap();
    assert_eq!(events[0].bool_field("already_loaded"), Some(true));
    assert_eq!(h.container_id(), Some(first.as_str()));

    // Silence: decode steps of 3 s against a 1 s watchdog.
    let slow = serde_json::json!({"load_seconds": 0.1, "decode_ms_per_step": 3000.0});
    let (r, _) = run(
        &mut h,
        &request("r3", slow.clone(), "aienergyscore"),
        limits(60, Some(1)),
        None,
    )
    .await;
    assert!(matches!(r, Err(HarnessError::Silent(_))), "{r:?}");
    assert!(!h.is_running(), "a broken-off run leaves no container");
    assert!(h.container_id().is_none());

    // The whole-run timeout, in a fresh container.
    let (r, _) = run(
        &mut h,
        &request("r4", slow.clone(), "aienergyscore"),
        limits(2, None),
        None,
    )
    .await;
    assert!(matches!(r, Err(HarnessError::Timeout(_))), "{r:?}");
    assert!(h.container_id().is_none());

    // A cancel.
    let (r, _) = run(
        &mut h,
        &request("r5", slow, "aienergyscore"),
        limits(60, None),
        Some(Duration::from_secs(2)),
    )
    .await;
    match r {
        Err(HarnessError::Cancelled(why)) => assert_eq!(why, "the lease was lost"),
        other => panic!("a cancelled run: {other:?}"),
    }
    assert!(h.container_id().is_none());

    // And after all that, a run works again, in a new container that loads afresh.
    let (r, events) = run(
        &mut h,
        &request("r6", fast, "aienergyscore"),
        limits(60, Some(30)),
        None,
    )
    .await;
    r.unwrap();
    assert_eq!(events[0].bool_field("already_loaded"), Some(false));
    assert_ne!(h.container_id(), Some(first.as_str()));
    HarnessRuntime::stop(&mut h).await;
    setup.cleanup().await;
}

#[tokio::test]
async fn docker_runtime_copies_host_datasets_into_the_slot_dir() {
    if skip("docker_runtime_copies_host_datasets_into_the_slot_dir") {
        return;
    }
    let setup = Setup::new().await;
    let mut h = setup.harness("slot-0");
    let host = setup.dir.path().join("prompts.jsonl");
    std::fs::write(
        &host,
        "{\"prompt\": \"one two three four five six seven eight\"}\n",
    )
    .unwrap();
    let inside = h.dataset_path(host.to_str().unwrap());
    assert!(
        inside.starts_with("/run/lem/datasets"),
        "{}",
        inside.display()
    );
    assert_eq!(
        h.dataset_path("aienergyscore"),
        PathBuf::from("/opt/lem/harness/datasets/aienergyscore.jsonl")
    );
    let params = serde_json::json!({"load_seconds": 0.0, "input_length": "dataset"});
    let line = request("d1", params.clone(), inside.to_str().unwrap());
    let (r, events) = run(&mut h, &line, limits(60, Some(30)), None).await;
    r.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.event, "result", "{:?}", last.body);

    // A host file that is not there: the harness says so, naming it.
    let missing = setup.dir.path().join("missing.jsonl");
    let line = request(
        "d2",
        params,
        h.dataset_path(missing.to_str().unwrap()).to_str().unwrap(),
    );
    let (r, events) = run(&mut h, &line, limits(60, Some(30)), None).await;
    r.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.str_field("class"), Some("configuration"));
    assert!(
        last.str_field("message")
            .unwrap()
            .contains(missing.to_str().unwrap()),
        "{:?}",
        last.body
    );
    HarnessRuntime::stop(&mut h).await;
    setup.cleanup().await;
}

#[tokio::test]
async fn docker_runtime_start_errors_name_the_container_log() {
    if skip("docker_runtime_start_errors_name_the_container_log") {
        return;
    }
    let setup = Setup::new().await;
    let mut h = setup.harness("slot-0");
    // The server cannot open its log: the slot dir's harness.log is a directory.
    std::fs::create_dir_all(setup.dir.path().join("slot-0/harness.log")).unwrap();
    let err = HarnessRuntime::ensure_started(&mut h).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exited during start-up"), "{msg}");
    assert!(
        msg.contains("cannot open --log-file"),
        "the container log's tail: {msg}"
    );
    assert!(h.container_id().is_none());
    setup.cleanup().await;
}
