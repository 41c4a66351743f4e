//! `lem-coord run`'s local workers: `lem-worker` processes, started beside the
//! embedded coordinator and stopped by it. They are the same binary a lab runs on
//! its GPU hosts, so the coordinator carries neither NVML nor the lease loop, and a
//! worker that crashes does not take the coordinator with it.
//!
//! Each worker runs in a process group of its own, so a Ctrl-C at the terminal
//! reaches `lem-coord` alone, which then stops the workers in order (SIGTERM; they
//! run with `--drain`, so a run in progress is handed back). If `lem-coord` itself
//! is killed, the kernel sends each worker SIGTERM (`PR_SET_PDEATHSIG`), so no
//! worker outlives it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::{anyhow, Context as _};

/// The environment variable that names the `lem-worker` binary `run` starts.
pub const WORKER_BIN_ENV: &str = "LEM_WORKER_BIN";

/// Whether this machine has an NVIDIA GPU (its device nodes), as `lem-worker`
/// decides before it loads NVML.
pub fn nvidia_gpu_present() -> bool {
    Path::new("/dev/nvidiactl").exists() || Path::new("/dev/nvidia0").exists()
}

/// The `lem-worker` binary: `$LEM_WORKER_BIN`, else the one beside this
/// `lem-coord`, else the first on `PATH`.
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(WORKER_BIN_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(anyhow!(
                "{WORKER_BIN_ENV}={} is not a file: point it at a lem-worker binary",
                p.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("lem-worker"))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("lem-worker"))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        anyhow!(
            "`lem-coord run` starts its local workers as lem-worker processes, and no lem-worker was found beside lem-coord or on PATH: build it (`cargo build --release -p lem-worker`, which puts it beside lem-coord), or set {WORKER_BIN_ENV}=/path/to/lem-worker"
        )
    })
}

/// Where a local worker runs its harness servers (`lem-worker --runtime`).
#[derive(Clone, Debug, PartialEq)]
pub enum LocalRuntime {
    Process,
    /// A warm container of this image, which the worker is allowed to run.
    Docker {
        image: String,
    },
}

/// One local worker's flags.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalWorkerSpec {
    /// The embedded coordinator's address (plain TCP on loopback).
    pub coordinator: String,
    pub data_dir: PathBuf,
    pub name: String,
    /// `--slots`: a number, or `auto`.
    pub slots: String,
    pub gpu_groups: Option<String>,
    /// `--gpus`: simulated GPUs of the host (with `simulate`).
    pub simulated_gpus: Option<u32>,
    pub simulate: bool,
    pub python: String,
    pub runtime: LocalRuntime,
    /// `--otlp-endpoint`: where the worker exports its spans.
    pub otlp_endpoint: Option<String>,
}

impl LocalWorkerSpec {
    /// The worker's command line after the program name. Pure.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--coordinator".into(),
            self.coordinator.clone().into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--name".into(),
            self.name.clone().into(),
            "--slots".into(),
            self.slots.clone().into(),
            "--python".into(),
            self.python.clone().into(),
            // Stopping hands the run in progress back (it is pending again, its
            // attempt not counted), so a Ctrl-C stops at once and the next `run`
            // does that run first.
            "--drain".into(),
        ];
        if let Some(g) = &self.gpu_groups {
            a.extend(["--gpu-groups".into(), g.into()]);
        }
        if self.simulate {
            a.push("--simulate-gpu".into());
            if let Some(n) = self.simulated_gpus {
                a.extend(["--gpus".into(), n.to_string().into()]);
            }
        }
        if let Some(url) = &self.otlp_endpoint {
            a.extend(["--otlp-endpoint".into(), url.into()]);
        }
        if let LocalRuntime::Docker { image } = &self.runtime {
            a.extend([
                "--runtime".into(),
                "docker".into(),
                "--image".into(),
                image.into(),
                "--allow-image".into(),
                image.into(),
            ]);
        }
        a
    }
}

/// A running local worker.
pub struct LocalWorker {
    pub name: String,
    child: tokio::process::Child,
}

impl LocalWorker {
    /// Starts `bin` with `spec`'s flags; its log (warnings, unless `LEM_LOG` says
    /// otherwise) goes to this process's stderr.
    pub fn spawn(bin: &Path, spec: &LocalWorkerSpec) -> anyhow::Result<LocalWorker> {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(spec.args())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        if std::env::var_os("LEM_LOG").is_none() {
            cmd.env("LEM_LOG", "warn");
        }
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // SIGTERM when the thread that started us ends: lem-coord's runtime
                // threads live as long as it does.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the local worker {}", bin.display()))?;
        Ok(LocalWorker {
            name: spec.name.clone(),
            child,
        })
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop (SIGTERM: with `--drain`, the run in progress is handed back).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by its pid, which is ours until waited.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }

    /// Stops it at once (SIGKILL): its leases are in its journal.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LocalWorkerSpec {
        LocalWorkerSpec {
            coordinator: "127.0.0.1:7000".into(),
            data_dir: "/d/worker-0".into(),
            name: "local-0".into(),
            slots: "1".into(),
            gpu_groups: None,
            simulated_gpus: None,
            simulate: true,
            python: "python3".into(),
            runtime: LocalRuntime::Process,
            otlp_endpoint: None,
        }
    }

    fn joined(s: &LocalWorkerSpec) -> String {
        s.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn flags_of_a_simulated_process_worker() {
        assert_eq!(
            joined(&spec()),
            "--coordinator 127.0.0.1:7000 --data-dir /d/worker-0 --name local-0 --slots 1 --python python3 --drain --simulate-gpu"
        );
    }

    #[test]
    fn flags_of_groups_gpus_and_docker() {
        let mut s = spec();
        s.slots = "auto".into();
        s.gpu_groups = Some("0,1;2".into());
        s.simulated_gpus = Some(3);
        s.otlp_endpoint = Some("http://127.0.0.1:4318".into());
        s.runtime = LocalRuntime::Docker {
            image: "lem-fleet/harness:latest".into(),
        };
        assert_eq!(
            joined(&s),
            "--coordinator 127.0.0.1:7000 --data-dir /d/worker-0 --name local-0 --slots auto --python python3 --drain --gpu-groups 0,1;2 --simulate-gpu --gpus 3 --otlp-endpoint http://127.0.0.1:4318 --runtime docker --image lem-fleet/harness:latest --allow-image lem-fleet/harness:latest"
        );
        // Real GPUs: the simulated count is not passed.
        s.simulate = false;
        assert!(!joined(&s).contains("--gpus"));
    }

    #[test]
    fn a_worker_binary_named_by_the_environment_must_exist() {
        // Only this test touches the variable in this process.
        std::env::set_var(WORKER_BIN_ENV, "/nonexistent/lem-worker");
        let e = worker_binary().unwrap_err().to_string();
        std::env::remove_var(WORKER_BIN_ENV);
        assert!(
            e.contains("LEM_WORKER_BIN=/nonexistent/lem-worker is not a file"),
            "{e}"
        );
    }
}
