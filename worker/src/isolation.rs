//! The device isolation check's IO edge: the pids that are the worker's own, the
//! names of the others, and the listing of a run's GPUs. What to do with a listing
//! is decided by the pure `lem_common::isolation::decide`.
//!
//! The worker's own processes are itself and, when a harness server runs, the server
//! and every process descended from it (an engine may fork workers that hold their
//! own CUDA contexts). Descendants are found by walking `/proc/*/stat` for parent
//! pids, which works on every kernel (`/proc/PID/task/*/children` needs
//! `CONFIG_PROC_CHILDREN`). A pid that `/proc` does not show (another container's:
//! NVML reports pids of the host's PID namespace) is foreign, with no name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lem_common::isolation::GpuProcess;

use crate::telemetry::Sampler;

/// What listing a run's GPUs found: the processes, named where `/proc` shows them,
/// and the GPUs that could not be listed (with why).
#[derive(Debug, Default)]
pub struct Listing {
    pub processes: Vec<GpuProcess>,
    pub errors: Vec<String>,
}

/// Lists the processes on `gpus` (their samplers, in the same order). Blocking: NVML
/// and `/proc` reads take milliseconds; call it off the async executor.
pub fn list(samplers: &[Arc<Sampler>], gpus: &[u32]) -> Listing {
    let mut out = Listing::default();
    for (i, sampler) in samplers.iter().enumerate() {
        let gpu = gpus.get(i).copied().unwrap_or(i as u32);
        let Some(lister) = sampler.processes() else {
            out.errors.push(format!(
                "GPU {gpu}: its processes cannot be listed on this source"
            ));
            continue;
        };
        match lister.gpu_processes() {
            Ok(ps) => out.processes.extend(ps.into_iter().map(|mut p| {
                p.name = process_name(p.pid);
                p
            })),
            Err(e) => out.errors.push(format!("GPU {gpu}: {e:#}")),
        }
    }
    out
}

/// The worker's own pids while `harness` (the slot's harness server, if running)
/// may hold the GPU: the worker, the server and the server's descendants.
pub fn own_pids(harness: Option<u32>) -> BTreeSet<u32> {
    let mut own = BTreeSet::from([std::process::id()]);
    if let Some(h) = harness {
        own.insert(h);
        own.extend(descendants(h, &parents()));
    }
    own
}

/// The worker's own pids while the slot's harness runs as `harness` (its server and
/// everything it started, as [`crate::harness_runtime::HarnessRuntime::own_pids`]
/// lists them): with the worker itself.
pub fn own_set(harness: &[u32]) -> BTreeSet<u32> {
    let mut own = BTreeSet::from([std::process::id()]);
    own.extend(harness.iter().copied());
    own
}

/// The worker and every process descended from it (all its harness servers): a
/// dynamic pool's own processes before a run is bound to GPUs (an idle harness kept
/// warm on a GPU is the worker's, and a run on that GPU stops or reuses it).
pub fn worker_and_descendants() -> BTreeSet<u32> {
    let me = std::process::id();
    let mut own = descendants(me, &parents());
    own.insert(me);
    own
}

/// Whether `pid` is a live process here (not a zombie): NVML lists a process only
/// while it holds a context, so the simulated GPU's declared processes follow this.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .is_some_and(|st| st.live())
}

/// Whether a live process of process group `pgid` remains (a harness server's group:
/// engine workers it started may outlive it by a moment, holding their contexts).
pub fn group_has_members(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
            && std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|st| st.pgrp == pgid && st.live())
    })
}

/// A process's command name (`/proc/PID/comm`); `None` where this worker cannot see
/// the pid (gone, or in another PID namespace).
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether this worker runs in a PID namespace other than the host's (a container
/// without `--pid=host`). The initial namespace's inode is fixed by the kernel
/// (`PROC_PID_INIT_INO`); NVML always reports the host's pids, so in a child namespace
/// the harness's own processes cannot be matched by pid.
pub fn in_child_pid_namespace() -> bool {
    const PROC_PID_INIT_INO: &str = "pid:[4026531836]";
    std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy() != PROC_PID_INIT_INO)
        .unwrap_or(false)
}

/// Every process's parent, from `/proc/*/stat`.
fn parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read: skipped.
        if let Some(st) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            out.insert(pid, st.ppid);
        }
    }
    out
}

/// The processes descended from `root`, given every process's parent.
fn descendants(root: u32, parents: &BTreeMap<u32, u32>) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (&pid, &ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = BTreeSet::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if c != root && out.insert(c) {
                queue.push(c);
            }
        }
    }
    out
}

/// The fields of a `/proc/PID/stat` line this module reads.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: u32,
    pgrp: u32,
}

impl Stat {
    /// Not a zombie (exited, not reaped) nor dead.
    fn live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// The state, parent pid and process group of a `/proc/PID/stat` line (`1234 (comm)
/// S 1 1234 ...`; the command name may hold spaces and parentheses, so the fields are
/// read after the last `)`).
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// On real processes: `worker/tests/isolation_procs.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        assert_eq!(
            parse_stat("1234 (python3) S 99 1200 1200 0 -1"),
            Some(Stat {
                state: 'S',
                ppid: 99,
                pgrp: 1200
            })
        );
        let zombie = parse_stat("77 (a) b (c)) Z 5 77 77 0").unwrap();
        assert_eq!((zombie.state, zombie.ppid, zombie.live()), ('Z', 5, false));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn descendants_follow_every_generation_and_nothing_else() {
        let parents = BTreeMap::from([(10, 1), (11, 10), (12, 11), (13, 10), (20, 1), (21, 20)]);
        assert_eq!(descendants(10, &parents), BTreeSet::from([11, 12, 13]));
        assert!(descendants(12, &parents).is_empty());
    }
}
