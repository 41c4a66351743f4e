//! `lem-worker bench dispatch`: what a warm container saves per run.
//!
//! Three ways to run the same tiny run of the synthetic engine (one prompt, one output
//! token, no warmup, no prefill window, no quiet spans; a model load of 1 s), taken
//! in turns so drift on the machine hits them alike:
//!
//! * **warm** (the worker's default, `--docker-dispatch socket`): the request over the
//!   resident server's socket in the slot's bind-mounted directory, the model loaded
//!   (what the docker runtime does for every run after a model's first);
//! * **warm exec** (`--docker-dispatch exec`): the same, through an `exec` of the
//!   harness client in the resident container;
//! * **cold**: a fresh container of the same image created, started, waited for, run
//!   and removed (what `docker run --rm` per run would cost: a container start and a
//!   model load every time).
//!
//! No GPU is needed. Prints each mode's p50/p95 and, last, `dispatch warm_p50_ms=X
//! cold_p50_ms=Y ratio=Z` (warm: the default dispatch). docs/performance.md has the
//! numbers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use lem_common::harness::{run_request_line, RunRequest};

use crate::docker::{self, DockerFactory, DockerHarness};
use crate::harness_runtime::RunLimits;

/// The model load the synthetic engine emulates in this bench.
pub const LOAD_SECONDS: f64 = 1.0;

/// Per-mode timings, in milliseconds, in the order taken.
#[derive(Debug, Default)]
pub struct DispatchReport {
    /// Warm, over the server's socket (the default dispatch).
    pub warm_ms: Vec<f64>,
    /// Warm, by an exec of the client.
    pub warm_exec_ms: Vec<f64>,
    pub cold_ms: Vec<f64>,
}

impl DispatchReport {
    /// The report's lines; the last is `dispatch warm_p50_ms=X cold_p50_ms=Y ratio=Z`.
    pub fn lines(&self) -> Vec<String> {
        let warm = percentiles(&self.warm_ms);
        let exec = percentiles(&self.warm_exec_ms);
        let cold = percentiles(&self.cold_ms);
        vec![
            format!(
                "warm: over the resident server's socket, model loaded: n={} p50_ms={:.1} p95_ms={:.1}",
                self.warm_ms.len(),
                warm.0,
                warm.1
            ),
            format!(
                "warm exec: exec of the client into the resident container, model loaded: n={} p50_ms={:.1} p95_ms={:.1} (ratio to cold {:.1})",
                self.warm_exec_ms.len(),
                exec.0,
                exec.1,
                cold.0 / exec.0.max(1e-9)
            ),
            format!(
                "cold: fresh container created, started, run, removed (model load {LOAD_SECONDS} s): n={} p50_ms={:.1} p95_ms={:.1}",
                self.cold_ms.len(),
                cold.0,
                cold.1
            ),
            format!(
                "dispatch warm_p50_ms={:.1} cold_p50_ms={:.1} ratio={:.1}",
                warm.0,
                cold.0,
                cold.0 / warm.0.max(1e-9)
            ),
        ]
    }
}

/// (p50, p95) with linear interpolation (NumPy's default); zeros when empty.
fn percentiles(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    (at(0.5), at(0.95))
}

/// The bench's run request: the synthetic engine, one prompt of 8 tokens, one output
/// token, nothing around the measured window.
fn request(run_id: &str) -> String {
    let config = serde_json::json!({
        "engine": "synthetic",
        "task": {
            "model": "bench/dispatch",
            "dataset": {"n_prompts": 1},
            "max_input_tokens": 8,
            "max_output_tokens": 1,
        },
        "offline": {"warmup": {"enabled": false}},
        "synthetic": {"engine_params": {"load_seconds": LOAD_SECONDS, "noise": 0.0}},
    })
    .to_string();
    run_request_line(&RunRequest {
        run_id,
        config_json: &config,
        dataset_path: "aienergyscore",
        prefill_window_seconds: 0.0,
        quiet_seconds: 0.0,
        per_token_timing: "always",
        force_cold_start: false,
    })
}

/// One run through `harness`; its wall time in ms and whether the model was loaded.
async fn timed_run(harness: &mut DockerHarness, run_id: &str) -> anyhow::Result<(f64, bool)> {
    let line = request(run_id);
    let mut loaded = None;
    let mut error = None;
    let started = Instant::now();
    harness
        .run(
            &line,
            RunLimits::default(),
            Box::pin(std::future::pending()),
            &mut |ev| match ev.event.as_str() {
                "loaded" => loaded = ev.bool_field("already_loaded"),
                "error" => error = Some(ev.str_field("message").unwrap_or("").to_string()),
                _ => {}
            },
        )
        .await
        .with_context(|| format!("bench run {run_id}"))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let Some(e) = error {
        bail!("bench run {run_id}: the harness answered an error: {e}");
    }
    Ok((ms, loaded.unwrap_or(false)))
}

/// A scratch directory for the bench's slot directories, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the bench: `runs` warm and `runs` cold runs of `image`, in turns.
pub async fn dispatch(image: &str, runs: usize) -> anyhow::Result<DispatchReport> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let docker = docker::connect().await?;
    let pinned = docker::resolve_image(&docker, image).await?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let scratch =
        Scratch(std::env::temp_dir().join(format!("lem-bench-{}-{nanos:08x}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("cannot create {}", scratch.0.display()))?;
    eprintln!(
        "bench dispatch: image {} ({}), {runs} warm and {runs} cold runs in turns",
        pinned.name, pinned.id
    );
    let factory = DockerFactory::new(docker.clone(), pinned, "bench", &scratch.0);
    let outcome = measure(&factory, &scratch.0, runs).await;
    // Whatever failed, no container of the bench is left.
    let label = scratch.0.canonicalize().unwrap_or(scratch.0.clone());
    let _ = docker::remove_stale(&docker, &label.to_string_lossy()).await;
    outcome
}

/// A warm harness of `factory` in `dir` dispatching by `dispatch`, started, with the
/// bench's model loaded.
async fn warm_harness(
    factory: &DockerFactory,
    dir: &Path,
    slot: u32,
    dispatch: docker::Dispatch,
) -> anyhow::Result<DockerHarness> {
    let mut warm = factory
        .clone()
        .with_dispatch(dispatch)
        .harness(dir, slot, &[], vec![]);
    if warm.dispatch() != dispatch {
        bail!(
            "the bench's directory {} is too deep for a socket path; set TMPDIR to a shorter one",
            dir.display()
        );
    }
    warm.ensure_started().await?;
    let (load_ms, already) = timed_run(&mut warm, "load").await?;
    eprintln!(
        "warm container {} ({dispatch:?}) up; first run (model load) {load_ms:.0} ms",
        warm.container_name()
    );
    if already {
        bail!("the fresh warm container had the model loaded already");
    }
    Ok(warm)
}

async fn measure(
    factory: &DockerFactory,
    dir: &Path,
    runs: usize,
) -> anyhow::Result<DispatchReport> {
    let mut warm = warm_harness(factory, &dir.join("warm"), 0, docker::Dispatch::Socket).await?;
    let mut exec = warm_harness(factory, &dir.join("exec"), 2, docker::Dispatch::Exec).await?;
    let mut report = DispatchReport::default();
    for i in 0..runs {
        // Rotate which mode goes first, so none always follows another.
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    let mut cold = factory.harness(&dir.join(format!("cold-{i}")), 1, &[], vec![]);
                    let started = Instant::now();
                    let pong = cold.ensure_started().await;
                    let run = match pong {
                        Ok(_) => timed_run(&mut cold, &format!("cold-{i}")).await,
                        Err(e) => Err(e.into()),
                    };
                    cold.stop().await;
                    let (_, already) = run?;
                    if already {
                        bail!("a fresh container had the model loaded already");
                    }
                    report.cold_ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
                1 => {
                    let (ms, already) = timed_run(&mut warm, &format!("warm-{i}")).await?;
                    if !already {
                        bail!("the warm container had to load the model again (run {i})");
                    }
                    report.warm_ms.push(ms);
                }
                _ => {
                    let (ms, already) = timed_run(&mut exec, &format!("exec-{i}")).await?;
                    if !already {
                        bail!("the warm exec container had to load the model again (run {i})");
                    }
                    report.warm_exec_ms.push(ms);
                }
            }
        }
    }
    warm.stop().await;
    exec.stop().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ends_with_the_summary_line() {
        let r = DispatchReport {
            warm_ms: vec![10.0, 20.0, 30.0],
            warm_exec_ms: vec![50.0, 60.0, 70.0],
            cold_ms: vec![1000.0, 1200.0, 1100.0],
        };
        let lines = r.lines();
        assert_eq!(
            lines.last().unwrap(),
            "dispatch warm_p50_ms=20.0 cold_p50_ms=1100.0 ratio=55.0"
        );
        assert_eq!(percentiles(&[1.0, 2.0, 3.0, 4.0]).0, 2.5);
    }

    #[test]
    fn the_request_is_a_run_of_the_synthetic_engine() {
        let v: serde_json::Value = serde_json::from_str(&request("x")).unwrap();
        assert_eq!(v["type"], "run");
        assert_eq!(v["config"]["engine"], "synthetic");
        assert_eq!(v["prefill_window_seconds"], 0.0);
    }
}
