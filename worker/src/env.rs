//! The environment snapshot attached to every result: the host (CPU, governor,
//! kernel, OS, container) and the GPU (from NVML, or the simulated GPU's label),
//! with a stable hash so drift between cycles of one config can be flagged.
//!
//! Read once per slot at start-up; only files under /proc and /sys are read.

use lem_common::run::assemble::stable_hash;
use serde_json::{json, Value};

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn os_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

fn container() -> Value {
    let docker = std::path::Path::new("/.dockerenv").exists();
    let podman = std::path::Path::new("/run/.containerenv").exists();
    let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    let kube = std::env::var("KUBERNETES_SERVICE_HOST").is_ok();
    let runtime = if docker || cgroup.contains("docker") {
        Some("docker")
    } else if podman {
        Some("podman")
    } else if kube || cgroup.contains("kubepods") {
        Some("kubernetes")
    } else {
        None
    };
    json!({"detected": runtime.is_some(), "runtime": runtime})
}

/// What the host looks like (the same for every slot).
pub fn host_snapshot(python_version: &str) -> Value {
    json!({
        "cpu_model": cpu_model(),
        "cpu_cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_governor": read_trim("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "os": os_name(),
        "container": container(),
        "python_version": python_version,
        "lem_worker_version": env!("CARGO_PKG_VERSION"),
    })
}

/// A slot's snapshot and its hash.
#[derive(Clone, Debug)]
pub struct Environment {
    pub snapshot: Value,
    pub hash: String,
}

impl Environment {
    pub fn new(host: Value, gpu: Value) -> Environment {
        let snapshot = json!({"host": host, "gpu": gpu});
        Environment {
            hash: stable_hash(&snapshot),
            snapshot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::run::assemble::with_engine_versions;

    #[test]
    fn hash_is_stable_and_order_independent() {
        let a = Environment::new(json!({"x": 1, "y": 2}), json!({"name": "g"}));
        let b = Environment::new(json!({"y": 2, "x": 1}), json!({"name": "g"}));
        assert_eq!(a.hash, b.hash);
        let c = Environment::new(json!({"x": 1, "y": 3}), json!({"name": "g"}));
        assert_ne!(a.hash, c.hash);
        // Each run's result adds its engine versions (`lem_common::run::assemble`).
        let (_, h1) = with_engine_versions(&a.snapshot, &json!({"torch": "2.11"}));
        let (_, h2) = with_engine_versions(&a.snapshot, &json!({"torch": "2.12"}));
        assert_ne!(h1, h2);
    }

    #[test]
    fn host_snapshot_has_the_basics() {
        let h = host_snapshot("3.11.7");
        assert!(h["kernel"].is_string());
        assert!(h["cpu_cores"].as_u64().unwrap() >= 1);
    }
}
