//! The process runtime: the worker spawns the resident harness server as a child (in
//! its own process group) and speaks the harness protocol to it over a Unix socket.
//!
//! The server keeps the last model loaded between runs, so a run of a model already
//! resident starts measuring within a second of its lease. If the server dies the
//! next request starts a fresh one; on drop or `stop` the group gets SIGTERM, a grace
//! period, then SIGKILL (nextest's way), so no harness outlives its worker.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures::future::BoxFuture;
use lem_common::harness::HarnessEvent;

use crate::harness_runtime::{EventSink, HarnessFactory, HarnessRuntime, Pong, RunLimits};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/harness_files.rs"));
}

/// How long a fresh harness server may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Writes the embedded harness files into `dir` (overwriting older copies).
pub fn install_harness(dir: &Path) -> anyhow::Result<PathBuf> {
    for (rel, text) in embedded::HARNESS_FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let same = std::fs::read_to_string(&path)
            .map(|t| t == *text)
            .unwrap_or(false);
        if !same {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write harness file {}", path.display()))?;
        }
    }
    Ok(dir.join("server.py"))
}

/// A failure talking to the harness; `Infrastructure` in the lease's terms.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("harness server could not be started: {0}")]
    Start(String),
    #[error("harness connection failed: {0}")]
    Io(String),
    #[error("harness closed the connection before the run finished (server log: {log})")]
    Eof { log: String },
    #[error("run exceeded its timeout of {0} s (study_execution.experiment_timeout_seconds)")]
    Timeout(f64),
    #[error("the harness sent nothing for {0} s (study_execution.stdout_silence_timeout_seconds)")]
    Silent(f64),
    #[error("run stopped: {0}")]
    Cancelled(String),
}

/// A resident harness server for one slot.
pub struct ProcessHarness {
    python: String,
    server_py: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    slot: u32,
    child: Option<Child>,
    /// Extra environment for the server (e.g. `CUDA_VISIBLE_DEVICES` of its slot).
    env: Vec<(String, String)>,
    /// Engines the server reported as available in its last pong.
    pub engines: Vec<String>,
}

impl ProcessHarness {
    pub fn new(
        python: &str,
        server_py: PathBuf,
        slot_dir: &Path,
        slot: u32,
        env: Vec<(String, String)>,
    ) -> Self {
        ProcessHarness {
            python: python.to_string(),
            server_py,
            socket: slot_dir.join("harness.sock"),
            log: slot_dir.join("harness.log"),
            slot,
            child: None,
            env,
            engines: Vec::new(),
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The file a `task.dataset.source` names: the built-in alias `aienergyscore`
    /// resolves to the copy shipped with the harness, anything else is a path (the
    /// harness checks it exists and reports a configuration error if not).
    pub fn dataset_path(&self, source: &str) -> PathBuf {
        match source {
            "aienergyscore" => self
                .server_py
                .parent()
                .unwrap_or(Path::new("."))
                .join("datasets/aienergyscore.jsonl"),
            other => PathBuf::from(other),
        }
    }

    /// Whether the server process is running (it may still be starting).
    pub fn is_running(&mut self) -> bool {
        self.alive()
    }

    /// The server's pid while it runs: with its descendants, the processes of this
    /// slot that may hold its GPUs (the device isolation check).
    pub fn pid(&mut self) -> Option<u32> {
        if !self.alive() {
            return None;
        }
        self.child.as_ref().and_then(|c| c.id())
    }

    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server if it is not running and waits for its pong.
    pub async fn ensure_started(&mut self) -> Result<serde_json::Value, HarnessError> {
        if self.alive() {
            if let Ok(p) = self.ping().await {
                return Ok(p);
            }
            self.stop().await;
        }
        self.stop_orphan().await;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| HarnessError::Start(format!("cannot open {}: {e}", self.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::Start(e.to_string()))?;
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.server_py)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--slot")
            .arg(self.slot.to_string())
            // The server exits if this process dies, so no harness outlives its worker.
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            HarnessError::Start(format!(
                "cannot run {} {}: {e} (install Python 3.10+ or pass --python)",
                self.python,
                self.server_py.display()
            ))
        })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if !self.alive() {
                return Err(HarnessError::Start(format!(
                    "server exited during start-up; its log {} says: {}",
                    self.log.display(),
                    tail(&self.log)
                )));
            }
            // Only our own child's pong counts (an orphan that outlived a SIGKILLed
            // worker could still answer on the socket for a moment).
            let ours = self.child.as_ref().and_then(|c| c.id());
            if let Some(p) = self
                .ping()
                .await
                .ok()
                .filter(|p| p.get("pid").and_then(|v| v.as_u64()) == ours.map(u64::from))
            {
                self.engines = p
                    .get("engines")
                    .and_then(|e| e.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(p);
            }
            if tokio::time::Instant::now() > deadline {
                self.stop().await;
                return Err(HarnessError::Start(format!(
                    "server did not answer within {} s; log {}: {}",
                    START_TIMEOUT.as_secs(),
                    self.log.display(),
                    tail(&self.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A harness server left by an earlier worker process on this slot (the worker was
    /// SIGKILLed; the server exits by itself within a second or so once it notices)
    /// is stopped now, so the new server can bind the socket and no run is sent to a
    /// server that is about to leave.
    async fn stop_orphan(&mut self) {
        let Ok(pong) = self.ping().await else {
            return;
        };
        let Some(pid) = pong.get("pid").and_then(|v| v.as_u64()) else {
            return;
        };
        // Only a real other process: a pid of 0 or 1 would make `kill(-pid)` signal
        // our own process group or every process we may signal.
        let Ok(pid) = i32::try_from(pid) else {
            return;
        };
        if pid <= 1 || pid as u32 == std::process::id() {
            tracing::warn!(
                slot = self.slot,
                pid,
                "the harness socket answered with an implausible pid; not signalling it"
            );
            return;
        }
        tracing::warn!(
            slot = self.slot,
            pid,
            "stopping a harness server left by an earlier worker process"
        );
        // SAFETY: signalling the process group the earlier worker created for its
        // harness (the server is its group leader), found on our slot's socket.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.ping().await.is_ok() {
            if tokio::time::Instant::now() > deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self) -> Result<serde_json::Value, HarnessError> {
        let mut events = Vec::new();
        self.request_raw(r#"{"type":"ping"}"#, None, |e| events.push(e.clone()))
            .await?;
        events
            .into_iter()
            .find(|e| e.kind() == lem_common::harness::Event::Pong)
            .map(|e| serde_json::Value::Object(e.body))
            .ok_or_else(|| HarnessError::Io("no pong".into()))
    }

    /// Sends one request line and feeds every event line to `on_event` until the
    /// server closes the connection. `cancel` resolving aborts the request.
    async fn request_raw(
        &self,
        line: &str,
        limits: Option<RunLimits>,
        mut on_event: impl FnMut(&HarnessEvent),
    ) -> Result<(), HarnessError> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| HarnessError::Io(format!("connect {}: {e}", self.socket.display())))?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| HarnessError::Io(e.to_string()))?;
        let mut lines = BufReader::new(stream).lines();
        let silence = limits.and_then(|l| l.silence);
        let read_all = async {
            loop {
                let next = match silence {
                    Some(s) => tokio::time::timeout(s, lines.next_line())
                        .await
                        .map_err(|_| HarnessError::Silent(s.as_secs_f64()))?,
                    None => lines.next_line().await,
                };
                let Some(l) = next.map_err(|e| HarnessError::Io(e.to_string()))? else {
                    break;
                };
                if l.trim().is_empty() {
                    continue;
                }
                let ev = HarnessEvent::parse(&l).map_err(|e| HarnessError::Io(e.to_string()))?;
                on_event(&ev);
            }
            Ok::<(), HarnessError>(())
        };
        match limits {
            Some(l) => tokio::time::timeout(l.timeout, read_all)
                .await
                .map_err(|_| HarnessError::Timeout(l.timeout.as_secs_f64()))?,
            None => read_all.await,
        }
    }

    /// Runs one experiment: sends the request and streams its events to `on_event`
    /// until `result` or `error`. Resolving `cancel` stops the run by stopping the
    /// server (a half-finished run leaves no state worth keeping).
    pub async fn run(
        &mut self,
        request_line: &str,
        limits: RunLimits,
        cancel: impl std::future::Future<Output = String>,
        mut on_event: impl FnMut(&HarnessEvent),
    ) -> Result<(), HarnessError> {
        self.ensure_started().await?;
        let mut finished = false;
        let outcome = {
            let fut = self.request_raw(request_line, Some(limits), |e| {
                if e.ends_run() {
                    finished = true;
                }
                on_event(e)
            });
            tokio::select! {
                r = fut => r,
                why = cancel => Err(HarnessError::Cancelled(why)),
            }
        };
        match outcome {
            Ok(()) if finished => Ok(()),
            Ok(()) => {
                let log = format!("{}: {}", self.log.display(), tail(&self.log));
                self.stop().await;
                Err(HarnessError::Eof { log })
            }
            Err(e) => {
                self.stop().await;
                Err(e)
            }
        }
    }

    /// Stops the server: SIGTERM to its process group, a grace period, then SIGKILL.
    /// Returns once no process of the group is left: processes the server started
    /// (an engine's workers) may outlive it by a moment while holding their CUDA
    /// contexts, and the device-idle baseline after a stop must see none of ours.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            // SAFETY: signalling the process group we created for this child.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGTERM);
            }
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
                let _ = child.wait().await;
            }
            let mut killed = false;
            while crate::isolation::group_has_members(pid) {
                if tokio::time::Instant::now() > deadline && !killed {
                    // SAFETY: as above; the group's leader was our child.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                    killed = true;
                } else if tokio::time::Instant::now() > deadline + STOP_GRACE {
                    tracing::warn!(
                        slot = self.slot,
                        pgid = pid,
                        "processes of the stopped harness's group are still alive"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for ProcessHarness {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            if let Some(pid) = child.id() {
                // SAFETY: killing the process group we created; the child is ours.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
        }
    }
}

impl HarnessRuntime for ProcessHarness {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn ensure_started(&mut self) -> BoxFuture<'_, Result<Pong, HarnessError>> {
        Box::pin(async move {
            let body = ProcessHarness::ensure_started(self).await?;
            Ok(Pong {
                engines: self.engines.clone(),
                body,
            })
        })
    }

    fn run<'a>(
        &'a mut self,
        request_line: &'a str,
        limits: RunLimits,
        cancel: BoxFuture<'a, String>,
        on_event: EventSink<'a>,
    ) -> BoxFuture<'a, Result<(), HarnessError>> {
        Box::pin(ProcessHarness::run(
            self,
            request_line,
            limits,
            cancel,
            on_event,
        ))
    }

    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(ProcessHarness::stop(self))
    }

    fn is_running(&mut self) -> bool {
        self.alive()
    }

    fn own_pids(&mut self) -> Vec<u32> {
        match self.pid() {
            Some(pid) => crate::isolation::own_pids(Some(pid))
                .into_iter()
                .filter(|p| *p != std::process::id())
                .collect(),
            None => Vec::new(),
        }
    }

    fn dataset_path(&self, source: &str) -> PathBuf {
        ProcessHarness::dataset_path(self, source)
    }

    fn engines(&self) -> &[String] {
        &self.engines
    }

    fn log_path(&self) -> &Path {
        &self.log
    }
}

/// Makes [`ProcessHarness`]es: `lem-worker --runtime process`.
pub struct ProcessFactory {
    pub python: String,
    pub server_py: PathBuf,
    /// Environment every harness gets besides its GPUs' (the host's policy:
    /// `LLEM_TRUST_REMOTE_CODE=1` under `--trust-remote-code`).
    pub env: Vec<(String, String)>,
}

impl HarnessFactory for ProcessFactory {
    fn make(
        &self,
        dir: &Path,
        slot: u32,
        _gpus: &[u32],
        gpu_env: Vec<(String, String)>,
    ) -> Box<dyn HarnessRuntime> {
        let mut env = gpu_env;
        env.extend(self.env.iter().cloned());
        Box::new(ProcessHarness::new(
            &self.python,
            self.server_py.clone(),
            dir,
            slot,
            env,
        ))
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    let joined: Vec<&str> = lines.into_iter().rev().collect();
    if joined.is_empty() {
        "(empty)".into()
    } else {
        joined.join(" | ")
    }
}

/// Checks that the Python interpreter runs at all, for a clear error at start-up.
pub async fn check_python(python: &str) -> anyhow::Result<String> {
    let out = Command::new(python)
        .arg("-c")
        .arg("import sys; print('%d.%d.%d' % sys.version_info[:3])")
        .output()
        .await
        .map_err(|e| anyhow!("cannot run {python}: {e} (the harness needs Python 3.10+; pass --python PATH or set LEM_PYTHON)"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{python} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
