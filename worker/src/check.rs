//! `lem-worker check`: what this host needs to measure, checked one item at a time,
//! each with the fix for what is missing. The exit status is non-zero when anything a
//! worker with these flags needs is missing.

use std::path::{Path, PathBuf};

use crate::cli::Runtime;
use crate::harness_runtime::HarnessRuntime;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Not needed with these flags, or a limitation worth knowing.
    Warn,
    /// A worker with these flags cannot run.
    Fail,
}

/// One checked item.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or a failure.
    pub fix: Option<String>,
}

impl Item {
    fn ok(name: &'static str, detail: impl Into<String>) -> Item {
        Item {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Item {
        Item {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What to check: the flags a worker would start with.
#[derive(Clone, Debug)]
pub struct Options {
    pub runtime: Runtime,
    pub image: String,
    pub allow_images: Vec<String>,
    pub data_dir: PathBuf,
    pub python: String,
    pub simulate_gpu: bool,
}

/// Free space under which the data dir fails the check, and under which it warns.
const DISK_FAIL_MB: u64 = 512;
const DISK_WARN_MB: u64 = 2048;

/// Runs every check; the items in order.
pub async fn run(o: &Options) -> Vec<Item> {
    let mut items = Vec::new();
    items.extend(gpus(o));
    items.push(disk(&o.data_dir));
    match o.runtime {
        Runtime::Process => items.extend(process_runtime(o).await),
        Runtime::Docker => items.extend(docker_runtime(o).await),
    }
    items
}

/// NVML, the GPUs it sees, and whether another worker already measures one.
fn gpus(o: &Options) -> Vec<Item> {
    // Without a GPU a worker can still run on the simulated GPU: a warning, not a
    // failure, unless real GPUs are what the flags ask for.
    let missing = if o.simulate_gpu {
        Status::Warn
    } else {
        Status::Fail
    };
    let nvml = match crate::nvml::init() {
        Ok(n) => n,
        Err(e) => {
            return vec![Item::bad(
                "nvml",
                missing,
                format!("{e:#}"),
                "install the NVIDIA driver (nvidia-smi must work), or measure the labelled simulated GPU with --simulate-gpu",
            )];
        }
    };
    let driver = nvml
        .sys_driver_version()
        .unwrap_or_else(|_| "unknown".into());
    let mut out = vec![Item::ok("nvml", format!("driver {driver}"))];
    let visible = match crate::nvml::visible_gpus(&nvml) {
        Ok(v) => v,
        Err(e) => {
            out.push(Item::bad(
                "gpus",
                missing,
                format!("{e:#}"),
                "check nvidia-smi",
            ));
            return out;
        }
    };
    if visible.is_empty() {
        out.push(Item::bad(
            "gpus",
            missing,
            "NVML sees no GPU this process may use",
            "check CUDA_VISIBLE_DEVICES and nvidia-smi",
        ));
        return out;
    }
    let mut names = Vec::new();
    let mut claims = Vec::new();
    for i in &visible {
        if let Ok(d) = nvml.device_by_index(*i) {
            let name = d.name().unwrap_or_else(|_| "?".into());
            let uuid = d.uuid().unwrap_or_default();
            names.push(format!("{i}: {name}"));
            claims.push((*i, uuid));
        }
    }
    out.push(Item::ok("gpus", names.join(", ")));
    // A GPU another worker holds (its lock) cannot be measured by a second one.
    match crate::gpu_claim::claim(&crate::gpu_claim::lock_dir(), &claims) {
        Ok(_claim) => out.push(Item::ok("gpu locks", "no other worker measures these GPUs")),
        Err(e) => out.push(Item::bad(
            "gpu locks",
            Status::Fail,
            format!("{e:#}"),
            "stop the other worker, or give this one other GPUs (CUDA_VISIBLE_DEVICES, --gpu-groups)",
        )),
    }
    out
}

/// Free space in the data dir (its nearest existing ancestor).
fn disk(data_dir: &Path) -> Item {
    let mut dir = data_dir.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            dir = PathBuf::from(".");
            break;
        }
    }
    let Some(free_mb) = free_mb(&dir) else {
        return Item::bad(
            "disk",
            Status::Warn,
            format!("cannot read the free space of {}", dir.display()),
            "check the data dir's file system",
        );
    };
    disk_item(free_mb, &dir)
}

/// The disk item for `free_mb` MiB free in `dir`.
fn disk_item(free_mb: u64, dir: &Path) -> Item {
    let detail = format!("{free_mb} MiB free in {}", dir.display());
    if free_mb < DISK_FAIL_MB {
        Item::bad(
            "disk",
            Status::Fail,
            detail,
            format!("free at least {DISK_FAIL_MB} MiB there (the journal, logs and copied datasets live in the data dir), or pass another --data-dir"),
        )
    } else if free_mb < DISK_WARN_MB {
        Item::bad(
            "disk",
            Status::Warn,
            detail,
            format!("a campaign's logs grow; {DISK_WARN_MB} MiB or more is comfortable"),
        )
    } else {
        Item::ok("disk", detail)
    }
}

fn free_mb(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own, from a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64 / (1024 * 1024))
}

/// The host's Python and the engines the harness can import with it.
async fn process_runtime(o: &Options) -> Vec<Item> {
    let mut out = Vec::new();
    match crate::runtime::check_python(&o.python).await {
        Ok(v) => {
            let new_enough = v
                .split('.')
                .take(2)
                .map(|p| p.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
                >= vec![3, 10];
            if new_enough {
                out.push(Item::ok("python", format!("{} {v}", o.python)));
            } else {
                out.push(Item::bad(
                    "python",
                    Status::Fail,
                    format!("{} is {v}", o.python),
                    "the harness needs Python 3.10 or newer: install one and pass --python",
                ));
                return out;
            }
        }
        Err(e) => {
            out.push(Item::bad(
                "python",
                Status::Fail,
                format!("{e:#}"),
                "install Python 3.10+ or pass --python PATH",
            ));
            return out;
        }
    }
    out.push(harness_engines(o).await);
    out
}

/// Starts a harness in a scratch directory and asks which engines it can run.
async fn harness_engines(o: &Options) -> Item {
    let scratch = std::env::temp_dir().join(format!("lem-worker-check-{}", std::process::id()));
    let result = async {
        let server_py = crate::runtime::install_harness(&scratch.join("harness"))?;
        let mut h = crate::runtime::ProcessHarness::new(&o.python, server_py, &scratch, 0, vec![]);
        let pong = HarnessRuntime::ensure_started(&mut h).await;
        HarnessRuntime::stop(&mut h).await;
        anyhow::Ok(pong?)
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    engines_item(
        result,
        "install torch and transformers into this Python (or pass --python to one that has them) to measure real models",
    )
}

/// The Docker daemon, its NVIDIA runtime, and the image and its allowlist.
async fn docker_runtime(o: &Options) -> Vec<Item> {
    let mut out = Vec::new();
    let docker = match crate::docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            out.push(Item::bad(
                "docker",
                Status::Fail,
                e.to_string(),
                "install Docker Engine and start dockerd; the worker's user must be able to use its socket (DOCKER_HOST, or the docker group)",
            ));
            return out;
        }
    };
    let version = docker
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_else(|| "unknown".into());
    out.push(Item::ok("docker", format!("Docker Engine {version}")));
    let runtimes: Vec<String> = docker
        .info()
        .await
        .ok()
        .and_then(|i| i.runtimes)
        .map(|r| r.into_keys().collect())
        .unwrap_or_default();
    let cdi = Path::new("/etc/cdi/nvidia.yaml").exists()
        || Path::new("/var/run/cdi/nvidia.yaml").exists();
    if runtimes.iter().any(|r| r == "nvidia") || cdi {
        out.push(Item::ok(
            "nvidia container runtime",
            if cdi {
                "CDI spec present"
            } else {
                "runtime nvidia registered"
            },
        ));
    } else {
        out.push(Item::bad(
            "nvidia container runtime",
            if o.simulate_gpu { Status::Warn } else { Status::Fail },
            format!("Docker's runtimes: {}", runtimes.join(", ")),
            "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`, then restart dockerd (the simulated GPU needs none)",
        ));
    }
    match crate::docker::resolve_image(&docker, &o.image).await {
        Err(e) => out.push(Item::bad(
            "image",
            Status::Fail,
            e.to_string(),
            "build it with docker/images.sh (no registry is needed), or docker/engine-images.sh vllm|tensorrt for an engine image (docs/engines.md), or pass --image",
        )),
        Ok(pinned) => {
            let pin = pinned
                .engine_pin
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            out.push(Item::ok("image", format!("{} is {}{pin}", o.image, pinned.id)));
            match crate::docker::allowed_ids(&docker, &o.allow_images, &o.data_dir).await {
                Ok(ids) if ids.contains(&pinned.id) => {
                    out.push(Item::ok("allowlist", format!("{} is allowed", pinned.id)));
                    out.push(container_engines(docker, pinned).await);
                }
                Ok(_) => out.push(Item::bad(
                    "allowlist",
                    Status::Fail,
                    format!(
                        "{} ({}) is not on this worker's allowlist",
                        o.image, pinned.id
                    ),
                    format!(
                        "pass --allow-image {} or add the id to {}",
                        pinned.id,
                        o.data_dir.join("allowed-images").display()
                    ),
                )),
                Err(e) => out.push(Item::bad(
                    "allowlist",
                    Status::Fail,
                    e.to_string(),
                    "fix the allowlist file (one image id per line)",
                )),
            }
        }
    }
    out
}

/// Starts a container of the image (no GPU, a scratch data dir: nothing a running
/// worker owns) and asks its harness which engines it can run.
async fn container_engines(docker: bollard::Docker, pinned: crate::docker::PinnedImage) -> Item {
    use crate::harness_runtime::HarnessFactory as _;
    let scratch = std::env::temp_dir().join(format!("lem-worker-check-{}", std::process::id()));
    let result = async {
        std::fs::create_dir_all(scratch.join("slot-0"))?;
        let factory = crate::docker::DockerFactory::new(docker, pinned, "check", &scratch);
        let mut h = factory.make(&scratch.join("slot-0"), 0, &[], vec![]);
        let pong = h.ensure_started().await;
        h.stop().await;
        anyhow::Ok(pong?)
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    engines_item(result, "the image of docker/images.sh has the synthetic engine only: measure real models with an engine image (docker/engine-images.sh vllm|tensorrt on a GPU host, docs/engines.md) or one that adds torch and transformers (docs/runtimes.md)")
}

/// The `engines` item from a harness's first pong.
fn engines_item(result: anyhow::Result<crate::harness_runtime::Pong>, fix_synthetic: &str) -> Item {
    match result {
        Ok(pong) if pong.engines.iter().any(|e| e != "synthetic") => {
            Item::ok("engines", pong.engines.join(", "))
        }
        Ok(pong) => Item::bad(
            "engines",
            Status::Warn,
            format!(
                "only {} (no engine library imports there); the simulated GPU still runs",
                pong.engines.join(", ")
            ),
            fix_synthetic,
        ),
        Err(e) => Item::bad(
            "engines",
            Status::Fail,
            format!("the harness did not start: {e:#}"),
            "read the harness log the error names, and check the install",
        ),
    }
}

/// The report as text: one line per item, then the fixes, then a summary line.
pub fn render(items: &[Item]) -> String {
    let mut s = String::new();
    for i in items {
        let mark = match i.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        s.push_str(&format!("{mark}  {:<26} {}\n", i.name, i.detail));
        if let Some(fix) = &i.fix {
            s.push_str(&format!("      {:<26} fix: {fix}\n", ""));
        }
    }
    let count = |st| items.iter().filter(|i| i.status == st).count();
    s.push_str(&format!(
        "check: {} ok, {} warning(s), {} failure(s)\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_thresholds_name_the_fix() {
        let dir = Path::new("/data");
        assert_eq!(disk_item(100, dir).status, Status::Fail);
        assert!(disk_item(100, dir).fix.unwrap().contains("--data-dir"));
        assert_eq!(disk_item(DISK_FAIL_MB, dir).status, Status::Warn);
        assert_eq!(disk_item(DISK_WARN_MB, dir).status, Status::Ok);
    }

    #[test]
    fn render_counts_and_fixes() {
        let items = vec![
            Item::ok("a", "fine"),
            Item::bad("b", Status::Fail, "broken", "mend it"),
            Item::bad("c", Status::Warn, "meh", "consider it"),
        ];
        let text = render(&items);
        assert!(text.contains("FAIL  b"));
        assert!(text.contains("fix: mend it"));
        assert!(text.ends_with("check: 1 ok, 1 warning(s), 1 failure(s)\n"));
    }

    #[tokio::test]
    async fn a_missing_python_fails_with_the_fix() {
        let o = Options {
            runtime: Runtime::Process,
            image: String::new(),
            allow_images: vec![],
            data_dir: std::env::temp_dir(),
            python: "/nonexistent/python3".into(),
            simulate_gpu: true,
        };
        let items = process_runtime(&o).await;
        assert_eq!(items[0].name, "python");
        assert_eq!(items[0].status, Status::Fail);
        assert!(items[0].fix.as_ref().unwrap().contains("--python"));
    }
}
