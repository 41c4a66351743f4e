//! The seam between the worker and where its harness server runs.
//!
//! A [`HarnessRuntime`] keeps one resident harness server for a slot (or a dynamic
//! pool's GPU group) and carries run requests to it: `process` spawns the server as a
//! child of the worker and speaks to it over a Unix socket ([`crate::runtime`]),
//! `docker` keeps it as the main process of a warm container and dispatches each run by
//! `exec`ing the harness client in it. Both speak the same harness protocol
//! (docker/harness/README.md), so the worker above this trait does not know which one
//! it drives.
//!
//! The trait is object-safe (futures are boxed) so a slot holds a
//! `Box<dyn HarnessRuntime>` chosen at start-up (`lem-worker --runtime`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use lem_common::harness::HarnessEvent;

pub use crate::runtime::HarnessError;

/// `lem-worker --runtime`: where each slot's harness server runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RuntimeConfig {
    /// A child process of the worker ([`crate::runtime::ProcessFactory`]).
    #[default]
    Process,
    /// A warm container of `image` ([`crate::docker::DockerFactory`]), which runs only
    /// if its id is allowed: by `allow_images` (ids, or names pinned to their ids at
    /// start) or by `DATA_DIR/allowed-images`.
    Docker {
        image: String,
        allow_images: Vec<String>,
        /// How runs reach the container's server.
        dispatch: crate::docker::Dispatch,
    },
}

/// The harness server's answer to a ping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pong {
    /// The engines the server can run (it imported them and they see a device).
    pub engines: Vec<String>,
    /// The whole pong, as the server sent it.
    pub body: serde_json::Value,
}

/// The study's limits on one run (llem's `study_execution`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunLimits {
    /// The whole run, from the request to its last event
    /// (`experiment_timeout_seconds`, llem's default 600 s).
    pub timeout: Duration,
    /// Longest gap between two of the harness's events (`stdout_silence_timeout_seconds`,
    /// llem's default 300 s); `None` = no watchdog (llem's 0).
    pub silence: Option<Duration>,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            timeout: Duration::from_secs(600),
            silence: Some(Duration::from_secs(300)),
        }
    }
}

/// Called with every event of a run, in order.
pub type EventSink<'a> = &'a mut (dyn FnMut(&HarnessEvent) + Send);

/// A resident harness server and the way runs reach it.
pub trait HarnessRuntime: Send + Sync {
    /// `process` or `docker`, for results and logs.
    fn kind(&self) -> &'static str;

    /// Starts the server if it is not running (reusing a live one) and returns its
    /// pong. A server that does not answer is replaced.
    fn ensure_started(&mut self) -> BoxFuture<'_, Result<Pong, HarnessError>>;

    /// Runs one request line and streams its events to `on_event` until `result` or
    /// `error`. `limits` bound the whole run and the silence between events
    /// ([`HarnessError::Timeout`], [`HarnessError::Silent`]); `cancel` resolving (with
    /// the reason) stops it. A run that breaks off leaves the server stopped, so the
    /// next run starts a fresh one.
    fn run<'a>(
        &'a mut self,
        request_line: &'a str,
        limits: RunLimits,
        cancel: BoxFuture<'a, String>,
        on_event: EventSink<'a>,
    ) -> BoxFuture<'a, Result<(), HarnessError>>;

    /// Stops the server and waits until none of its processes is left holding a GPU.
    fn stop(&mut self) -> BoxFuture<'_, ()>;

    /// Whether the server is running (it may still be starting).
    fn is_running(&mut self) -> bool;

    /// Host pids of the server and everything it started, while it runs: the
    /// processes of this slot that may hold its GPUs (the device isolation check).
    fn own_pids(&mut self) -> Vec<u32>;

    /// The path, as the harness sees it, of the prompt file a `task.dataset.source`
    /// names (the built-in `aienergyscore` is shipped with the harness).
    fn dataset_path(&self, source: &str) -> PathBuf;

    /// The engines the server reported in its last pong.
    fn engines(&self) -> &[String];

    /// Where the server's log is, for error messages.
    fn log_path(&self) -> &Path;
}

/// Makes the runtime of a slot (or of a dynamic pool's GPU group): the worker holds one
/// factory, chosen by `lem-worker --runtime`.
pub trait HarnessFactory: Send + Sync {
    /// A runtime for the harness of slot `slot`, seeing the GPUs `gpus` (NVML indices)
    /// through `gpu_env` (`CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER`; empty on the
    /// simulated GPU), keeping its files in `dir`. Not started.
    fn make(
        &self,
        dir: &Path,
        slot: u32,
        gpus: &[u32],
        gpu_env: Vec<(String, String)>,
    ) -> Box<dyn HarnessRuntime>;
}
