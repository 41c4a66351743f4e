//! Device isolation: whether a process other than the worker's own held a measured
//! GPU when a baseline or a window was measured, and what the worker does about it.
//!
//! Another CUDA context on the card (a leftover notebook kernel, another user's job)
//! keeps it at a higher P-state and adds its own draw (issue 12's example: device idle
//! measured as 120 W instead of 81 W, so every adjusted energy came out short by
//! 39 W over its window, silently). The worker lists the processes NVML reports on the run's GPUs
//! before each baseline and each measured window (and again once they are over),
//! removes its own (its harness server and the harness's descendants, and itself),
//! and hands the rest to [`decide`] with its `--device-isolation` policy:
//!
//! * `warn` (the default): measure, flag the result (`gpu_shared`,
//!   `gpu_foreign_processes`) and add a warning naming the processes
//!   ([`shared_warnings`]); a baseline taken on a shared GPU is used for that run only.
//! * `refuse`: do not measure; the run fails as retryable with a message naming the
//!   processes, the GPU, their memory and the flag to change ([`Verdict::Refuse`]).
//!
//! Everything here is pure: the listing and the pid set are the worker's.
//! A pid the worker cannot see (another container's, whose PID namespace differs)
//! is foreign, with no name.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::types::ForeignProcess;

/// `lem-worker --device-isolation`: what a slot does when a measured GPU is shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IsolationPolicy {
    /// Measure, flag the result and warn.
    #[default]
    Warn,
    /// Do not measure: fail the run as retryable.
    Refuse,
}

impl IsolationPolicy {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationPolicy::Warn => "warn",
            IsolationPolicy::Refuse => "refuse",
        }
    }
}

/// Where in a run the GPU's processes were listed. Each point belongs to one of the
/// three measurements a result records ([`CheckPoint::seen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckPoint {
    /// Before the device-idle baseline (the harness already stopped).
    BeforeBaseline,
    /// As the device-idle baseline (or its spot check) ended.
    AfterBaseline,
    /// Before the resident-idle baseline (the model loaded).
    BeforeResidentBaseline,
    /// As the resident-idle baseline ended.
    AfterResidentBaseline,
    /// Before the run is sent to the harness.
    BeforeWindow,
    /// Right after the harness reported the run (its window and prefill window over).
    AfterWindow,
}

impl CheckPoint {
    /// The measurement this point guards: `baseline`, `resident_baseline` or `window`
    /// (`ForeignProcess.seen`).
    pub fn seen(self) -> &'static str {
        match self {
            CheckPoint::BeforeBaseline | CheckPoint::AfterBaseline => "baseline",
            CheckPoint::BeforeResidentBaseline | CheckPoint::AfterResidentBaseline => {
                "resident_baseline"
            }
            CheckPoint::BeforeWindow | CheckPoint::AfterWindow => "window",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CheckPoint::BeforeBaseline => "before the device-idle baseline",
            CheckPoint::AfterBaseline => "at the end of the device-idle baseline",
            CheckPoint::BeforeResidentBaseline => "before the resident-idle baseline",
            CheckPoint::AfterResidentBaseline => "at the end of the resident-idle baseline",
            CheckPoint::BeforeWindow => "before the measured window",
            CheckPoint::AfterWindow => "right after the measured window",
        }
    }

    /// What refusing at this point does to the run.
    fn refused_what(self) -> &'static str {
        match self {
            CheckPoint::AfterWindow => {
                "its measurement was discarded and the run goes back to pending"
            }
            CheckPoint::BeforeResidentBaseline | CheckPoint::AfterResidentBaseline => {
                "the resident-idle baseline was not measured (the run's own figures stand)"
            }
            _ => "the run was not measured and goes back to pending",
        }
    }
}

/// One process a GPU's process list shows (NVML's compute and graphics lists, or the
/// simulated GPU's test hook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    /// NVML index of the GPU.
    pub gpu_index: u32,
    /// GPU memory it holds, in MiB; `None` where the driver does not say (it may
    /// report "not available", as seen for processes on an H200).
    pub used_memory_mb: Option<u64>,
    /// Its command name, where the worker can see the process.
    pub name: Option<String>,
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No process but the worker's own on the GPUs.
    Clean,
    /// `warn`: measure, and flag the result with these processes.
    Shared(Vec<ForeignProcess>),
    /// `refuse`: do not measure; fail the run (retryable) with `message`.
    Refuse {
        foreign: Vec<ForeignProcess>,
        message: String,
    },
}

/// The processes of `listed` that are not in `own`, one per (GPU, pid) with the
/// largest memory any listing of it gave (NVML may list a process in both its
/// compute and graphics lists), sorted by GPU then pid, marked `seen` as `at` says.
pub fn foreign_processes(
    listed: &[GpuProcess],
    own: &BTreeSet<u32>,
    at: CheckPoint,
) -> Vec<ForeignProcess> {
    let mut out: Vec<ForeignProcess> = Vec::new();
    for p in listed.iter().filter(|p| !own.contains(&p.pid)) {
        match out
            .iter_mut()
            .find(|f| f.pid == p.pid && f.gpu_index == p.gpu_index)
        {
            Some(f) => {
                f.used_memory_mb = f.used_memory_mb.max(p.used_memory_mb);
                if f.name.is_none() {
                    f.name = p.name.clone();
                }
            }
            None => out.push(ForeignProcess {
                pid: p.pid,
                gpu_index: p.gpu_index,
                used_memory_mb: p.used_memory_mb,
                name: p.name.clone(),
                seen: at.seen().to_string(),
            }),
        }
    }
    out.sort_by_key(|f| (f.gpu_index, f.pid));
    out
}

/// Decides what a slot does, given what the GPUs' process lists showed at `at`, the
/// pids that are the worker's own (itself, its harness and the harness's
/// descendants) and the policy.
pub fn decide(
    listed: &[GpuProcess],
    own: &BTreeSet<u32>,
    at: CheckPoint,
    policy: IsolationPolicy,
) -> Verdict {
    let foreign = foreign_processes(listed, own, at);
    if foreign.is_empty() {
        return Verdict::Clean;
    }
    match policy {
        IsolationPolicy::Warn => Verdict::Shared(foreign),
        IsolationPolicy::Refuse => {
            let message = format!(
                "device isolation: {} held by other processes {}: {}; {} (lem-worker --device-isolation refuse). Stop those processes, or run the worker with --device-isolation warn to measure shared GPUs and flag the results",
                gpus_phrase(&foreign),
                at.describe(),
                describe_processes(&foreign),
                at.refused_what(),
            );
            Verdict::Refuse { foreign, message }
        }
    }
}

/// Adds `more` to `into`, once per (pid, GPU, seen); a repeat keeps the larger memory.
pub fn merge(into: &mut Vec<ForeignProcess>, more: &[ForeignProcess]) {
    for p in more {
        match into
            .iter_mut()
            .find(|f| f.pid == p.pid && f.gpu_index == p.gpu_index && f.seen == p.seen)
        {
            Some(f) => {
                f.used_memory_mb = f.used_memory_mb.max(p.used_memory_mb);
                if f.name.is_none() {
                    f.name = p.name.clone();
                }
            }
            None => into.push(p.clone()),
        }
    }
}

/// The result's warnings for the processes a run saw (`warn`): one per measurement
/// they were seen at, naming each pid, its GPU and its memory.
pub fn shared_warnings(foreign: &[ForeignProcess]) -> Vec<String> {
    let mut out = Vec::new();
    for (seen, what, consequence) in [
        (
            "baseline",
            "device-idle baseline",
            "the baseline includes their draw and was used for this run only",
        ),
        (
            "resident_baseline",
            "resident-idle baseline",
            "the baseline includes their draw and was used for this run only",
        ),
        (
            "window",
            "measured window",
            "the run's energy may include their draw",
        ),
    ] {
        let at: Vec<ForeignProcess> = foreign.iter().filter(|f| f.seen == seen).cloned().collect();
        if at.is_empty() {
            continue;
        }
        out.push(format!(
            "GPU shared at the {what}: {} held by other processes: {}; {consequence} (lem-worker --device-isolation warn)",
            gpus_phrase(&at),
            describe_processes(&at)
        ));
    }
    out
}

/// `pid 4242 (sleep, 512 MiB) on GPU 0, pid 77 (name unknown, memory not reported)
/// on GPU 1`.
pub fn describe_processes(foreign: &[ForeignProcess]) -> String {
    let mut s = String::new();
    for (i, f) in foreign.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let name = f.name.as_deref().unwrap_or("name unknown");
        let _ = write!(s, "pid {} ({name}, ", f.pid);
        match f.used_memory_mb {
            Some(mb) => {
                let _ = write!(s, "{mb} MiB");
            }
            None => s.push_str("memory not reported"),
        }
        let _ = write!(s, ") on GPU {}", f.gpu_index);
    }
    s
}

/// `GPU 0 was` / `GPUs 0, 1 were`.
fn gpus_phrase(foreign: &[ForeignProcess]) -> String {
    let gpus: BTreeSet<u32> = foreign.iter().map(|f| f.gpu_index).collect();
    let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
    if gpus.len() == 1 {
        format!("GPU {} was", list[0])
    } else {
        format!("GPUs {} were", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, gpu: u32, mb: Option<u64>, name: Option<&str>) -> GpuProcess {
        GpuProcess {
            pid,
            gpu_index: gpu,
            used_memory_mb: mb,
            name: name.map(String::from),
        }
    }

    fn own(pids: &[u32]) -> BTreeSet<u32> {
        pids.iter().copied().collect()
    }

    #[test]
    fn only_our_own_processes_is_clean() {
        let listed = [p(100, 0, Some(2048), Some("python3")), p(1, 0, None, None)];
        for policy in [IsolationPolicy::Warn, IsolationPolicy::Refuse] {
            assert_eq!(
                decide(&listed, &own(&[1, 100]), CheckPoint::AfterWindow, policy),
                Verdict::Clean
            );
            assert_eq!(
                decide(&[], &own(&[1]), CheckPoint::BeforeBaseline, policy),
                Verdict::Clean
            );
        }
    }

    #[test]
    fn warn_flags_the_foreign_processes_only() {
        let listed = [
            p(100, 0, Some(2048), Some("python3")),
            p(4242, 0, Some(512), Some("sleep")),
            // A pid of another PID namespace: the worker cannot see it, so no name.
            p(9_000_001, 1, None, None),
        ];
        let Verdict::Shared(f) = decide(
            &listed,
            &own(&[1, 100]),
            CheckPoint::BeforeWindow,
            IsolationPolicy::Warn,
        ) else {
            panic!("shared");
        };
        assert_eq!(
            f,
            vec![
                ForeignProcess {
                    pid: 4242,
                    gpu_index: 0,
                    used_memory_mb: Some(512),
                    name: Some("sleep".into()),
                    seen: "window".into(),
                },
                ForeignProcess {
                    pid: 9_000_001,
                    gpu_index: 1,
                    used_memory_mb: None,
                    name: None,
                    seen: "window".into(),
                },
            ]
        );
        let w = shared_warnings(&f);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("measured window")
                && w[0].contains("GPUs 0, 1 were")
                && w[0].contains("pid 4242 (sleep, 512 MiB) on GPU 0")
                && w[0].contains("pid 9000001 (name unknown, memory not reported) on GPU 1"),
            "{}",
            w[0]
        );
        assert!(!w[0].contains("pid 100 "), "{}", w[0]);
    }

    #[test]
    fn refuse_names_the_pids_the_gpu_the_memory_and_the_flag() {
        let listed = [p(4242, 3, Some(512), Some("sleep"))];
        let Verdict::Refuse { foreign, message } = decide(
            &listed,
            &own(&[1]),
            CheckPoint::BeforeBaseline,
            IsolationPolicy::Refuse,
        ) else {
            panic!("refused");
        };
        assert_eq!(foreign.len(), 1);
        assert_eq!(foreign[0].seen, "baseline");
        for want in [
            "GPU 3 was held by other processes before the device-idle baseline",
            "pid 4242 (sleep, 512 MiB) on GPU 3",
            "the run was not measured and goes back to pending",
            "--device-isolation refuse",
            "--device-isolation warn",
        ] {
            assert!(message.contains(want), "{want:?} in {message}");
        }
        let Verdict::Refuse { message, .. } = decide(
            &listed,
            &own(&[1]),
            CheckPoint::AfterWindow,
            IsolationPolicy::Refuse,
        ) else {
            panic!("refused");
        };
        assert!(
            message.contains("its measurement was discarded"),
            "{message}"
        );
        let Verdict::Refuse { message, .. } = decide(
            &listed,
            &own(&[1]),
            CheckPoint::BeforeResidentBaseline,
            IsolationPolicy::Refuse,
        ) else {
            panic!("refused");
        };
        assert!(
            message.contains("resident-idle baseline was not measured")
                && !message.contains("pending"),
            "{message}"
        );
    }

    #[test]
    fn a_process_in_both_lists_is_one_foreign_process_with_its_larger_memory() {
        let listed = [
            p(7, 0, None, None),
            p(7, 0, Some(300), Some("Xorg")),
            p(7, 1, Some(10), Some("Xorg")),
        ];
        let f = foreign_processes(&listed, &own(&[]), CheckPoint::AfterResidentBaseline);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            (f[0].gpu_index, f[0].used_memory_mb, f[0].name.as_deref()),
            (0, Some(300), Some("Xorg"))
        );
        assert_eq!(f[0].seen, "resident_baseline");
        assert_eq!(f[1].gpu_index, 1);
    }

    #[test]
    fn merge_keeps_one_entry_per_pid_gpu_and_measurement() {
        let mut all = Vec::new();
        let listed = [p(5, 0, Some(100), Some("a"))];
        let before = foreign_processes(&listed, &own(&[]), CheckPoint::BeforeWindow);
        let after = foreign_processes(
            &[p(5, 0, Some(200), Some("a"))],
            &own(&[]),
            CheckPoint::AfterWindow,
        );
        let baseline = foreign_processes(&listed, &own(&[]), CheckPoint::AfterBaseline);
        merge(&mut all, &before);
        merge(&mut all, &after);
        merge(&mut all, &baseline);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(
            (all[0].seen.as_str(), all[0].used_memory_mb),
            ("window", Some(200))
        );
        assert_eq!(all[1].seen, "baseline");
        let w = shared_warnings(&all);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("device-idle baseline") && w[0].contains("this run only"));
        assert!(w[1].contains("measured window") && w[1].contains("200 MiB"));
    }

    #[test]
    fn no_foreign_processes_no_warnings() {
        assert!(shared_warnings(&[]).is_empty());
    }
}
