//! End-to-end tests: real processes on loopback. One binary, one module per area.

mod analysis;
mod backup;
mod bad_input;
mod docker_runtime;
mod faults;
mod flow;
mod gpus;
mod idle;
mod isolation;
mod live;
mod metrics;
mod otel;
mod presence;
mod report;
mod security;
mod warm;

pub const COORD: &str = env!("CARGO_BIN_EXE_lem-coord-shim");
pub const WORKER: &str = env!("CARGO_BIN_EXE_lem-worker-shim");

use std::path::Path;
use std::time::Duration;

use lem_common::rpc::RegisterRequest;
use lem_common::types::{EngineCapability, WorkerId};
pub use lem_tests::campaign_id;
use lem_tests::{wait_for, Proc};

/// Starts `lem-coord start` on an ephemeral loopback port; returns it and its address.
pub fn start_coordinator(dir: &Path) -> (Proc, String) {
    start_coordinator_env(dir, &[])
}

/// [`start_coordinator`] with extra environment variables.
pub fn start_coordinator_env(dir: &Path, env: &[(&str, &str)]) -> (Proc, String) {
    let coord_dir = dir.join("coord");
    let coord = Proc::spawn_with_env(
        "coord",
        COORD,
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            coord_dir.to_str().unwrap(),
        ],
        env,
        dir,
    );
    let addr = wait_for_addr(&coord, &coord_dir);
    (coord, addr)
}

/// Waits for a coordinator started with `--data-dir coord_dir` to write its address.
pub fn wait_for_addr(coord: &Proc, coord_dir: &Path) -> String {
    wait_for(
        "coordinator address file",
        Duration::from_secs(30),
        &[coord],
        || {
            std::fs::read_to_string(coord_dir.join("coordinator.addr"))
                .ok()
                .filter(|a| !a.is_empty())
        },
    )
}

/// `lem-coord workers --json`, parsed; `None` while the coordinator does not answer.
pub fn workers_json(addr: &str) -> Option<Vec<serde_json::Value>> {
    let out = lem_tests::run(COORD, &["workers", "--json", "--coordinator", addr]);
    out.status.success().then_some(())?;
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()?
        .as_array()
        .cloned()
}

/// Whether worker `name` is shown connected by `lem-coord workers`; `None` if it is
/// not listed (or the coordinator does not answer).
pub fn connected(addr: &str, name: &str) -> Option<bool> {
    workers_json(addr)?
        .iter()
        .find(|w| w["worker"] == name)
        .and_then(|w| w["connected"].as_bool())
}

/// `lem-coord status ID --json`, parsed; `None` while the coordinator does not answer.
pub fn status_json(addr: &str, id: &str) -> Option<serde_json::Value> {
    let out = lem_tests::run(COORD, &["status", id, "--json", "--coordinator", addr]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `lem-coord results ID --format jsonl` with `connect` (the address and any
/// credential flags), parsed; panics with the command's output if it fails.
pub fn results_jsonl(id: &str, connect: &[&str]) -> Vec<serde_json::Value> {
    results_lines(id, "jsonl", connect)
}

/// `lem-coord results ID --format FORMAT` (a JSON-lines format), parsed.
pub fn results_lines(id: &str, format: &str, connect: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["results", id, "--format", format];
    args.extend_from_slice(connect);
    let out = lem_tests::run(COORD, &args);
    assert!(out.status.success(), "{}", lem_tests::describe(&args, &out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Starts a `lem-worker` named `name` with the simulated GPU in `dir/name`.
pub fn start_worker(dir: &Path, addr: &str, name: &str) -> Proc {
    start_worker_with(dir, addr, name, &[])
}

/// [`start_worker`] with more flags (`--gpus 4 --gpu-groups 0,1;2;3`).
pub fn start_worker_with(dir: &Path, addr: &str, name: &str, extra: &[&str]) -> Proc {
    start_worker_env(dir, addr, name, extra, &[])
}

/// [`start_worker_with`] with extra environment variables.
pub fn start_worker_env(
    dir: &Path,
    addr: &str,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let wdir = dir.join(name);
    let mut args = vec![
        "--coordinator",
        addr,
        "--data-dir",
        wdir.to_str().unwrap(),
        "--simulate-gpu",
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    Proc::spawn_with_env(name, WORKER, &args, env, dir)
}

/// A one-thread runtime for an in-test RPC client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An RPC context with a 20 s deadline.
pub fn ctx() -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = std::time::Instant::now() + Duration::from_secs(20);
    c
}

/// Registration of an in-test worker `worker`: no slots, the synthetic engine.
pub fn register_request(worker: &str) -> RegisterRequest {
    RegisterRequest {
        worker: WorkerId(worker.into()),
        host: "test".into(),
        protocol_version: lem_common::PROTOCOL_VERSION,
        worker_version: "test".into(),
        slots: vec![],
        engines: vec![EngineCapability {
            engine: "synthetic".into(),
            available: true,
            reason: None,
            version: None,
        }],
        runtime: lem_common::runner::WorkerRuntime::process(),
    }
}
