//! lem-worker: runs on each GPU host, leases runs from the coordinator and measures them.
//!
//! [`run_worker`] installs the embedded harness, starts one telemetry sampler and one
//! resident harness per slot, registers with the coordinator and runs one lease loop
//! per slot until told to stop. With `--gpu-groups dynamic` the GPUs form one pool
//! ([`pool`]) and one lease lane per GPU forms each run's group when it is leased. The binary's `main` only parses flags and calls it;
//! `lem-coord run` starts this binary for its local workers. A worker whose data
//! dir holds `credentials.pem` (written by `lem-worker join`, [`join`]) speaks
//! mutual TLS as the worker named there; one without speaks plain TCP, which only
//! a coordinator on loopback (or started with `--insecure`) answers.

pub mod bench;
pub mod check;
pub mod cli;
pub mod clock;
pub mod docker;
pub mod env;
pub mod gpu_claim;
pub mod harness_runtime;
pub mod http;
pub mod idle;
pub mod isolation;
pub mod journal;
pub mod metrics;
pub mod nvml;
pub mod pool;
pub mod runtime;
pub mod slot;
pub mod telemetry;

use std::path::PathBuf;

pub use lem_wire::{frame, join, tls, transport};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use lem_common::gpus::{
    cuda_visible_devices, is_dynamic, plan_pool, plan_slots, simulated_visible, visible_indices,
    SlotCount,
};
use lem_common::rpc::{RegisterRequest, RpcErrorKind, SlotInfo};
use lem_common::types::{EngineCapability, WorkerId, KNOWN_ENGINES};
use tokio::sync::watch;

pub use crate::harness_runtime::RuntimeConfig;
use crate::harness_runtime::{HarnessFactory, HarnessRuntime};
use crate::pool::{group_snapshot, DynPool, PoolGpu};
use crate::slot::Slot;
use crate::telemetry::{LoadSink, Sampler, SimulatedGpu};
use crate::transport::Endpoint;

/// Default telemetry sampling interval (20 Hz, as the measurement methodology asks).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// Default background energy-counter read interval: none. The counter is read in
/// bursts at window edges; each read costs ~4 ms of CPU on an H100, so steady
/// reading would cost more than the whole power sampler.
pub const COUNTER_INTERVAL: Duration = Duration::ZERO;
/// Samples kept per slot: 30 minutes at 20 Hz.
const RING_CAPACITY: usize = 36_000;

/// The quiet span `lem-worker --quiet-ms` asks for by default, in seconds: at least
/// three counter updates (100 ms apart) fall in it after the guard.
pub const QUIET_S: f64 = 0.35;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The coordinator's address; how to speak to it comes from the data dir.
    pub coordinator: String,
    pub data_dir: PathBuf,
    /// Worker identity; default `<hostname>-<data dir name>`, or the name the data
    /// dir joined as.
    pub name: Option<String>,
    /// Slots asked for (`--slots N` or `auto`).
    pub slots: SlotCount,
    /// `--gpu-groups`: the GPUs of each slot (`0,1;2;3`); `None` = one GPU per slot;
    /// `dynamic` = one pool of GPUs, a group formed per run from its TP size.
    pub gpu_groups: Option<String>,
    /// `--gpus N` with `--simulate-gpu`: simulated GPUs on this host.
    pub simulated_gpus: Option<u32>,
    pub simulate_gpu: bool,
    pub python: String,
    /// Power/temperature sampling interval (10 ms to 10 s).
    pub sample_interval: Duration,
    /// Energy-counter read interval (real GPUs only).
    pub counter_interval: Duration,
    /// Length of the prefill-only differential window after each run (0 = none).
    pub prefill_window_s: f64,
    /// Length of the quiet spans the harness holds beside window edges (0 = none).
    pub quiet_s: f64,
    /// The harness's `per_token_timing`: `always` or `when_profiling`.
    pub per_token_timing: &'static str,
    /// Studies may run model repositories' own Python here (`--trust-remote-code`).
    pub trust_remote_code: bool,
    /// GPU memory growth that recycles the harness after a run (0: never).
    pub recycle_memory_growth_mb: u64,
    /// On SIGTERM, hand the current run back instead of finishing it.
    pub drain: bool,
    /// `--device-isolation`: what a slot does when a process other than its own
    /// holds a measured GPU (flag the result, or refuse to measure).
    pub device_isolation: lem_common::isolation::IsolationPolicy,
    /// `--runtime` (with `--image` and `--allow-image`): where harness servers run.
    pub runtime: RuntimeConfig,
    /// `--http ADDR`: serve `/metrics` there (`None`: off).
    pub http: Option<String>,
    /// `--http-public`: `--http` may be a non-loopback address.
    pub http_public: bool,
}

/// The worker's `--http` flag, for messages.
pub const HTTP_FLAG: http::HttpFlag = http::HttpFlag {
    flag: "--http",
    public_flag: "--http-public",
    what: "this worker's metrics (its name, GPUs, power and current runs)",
};

/// Whether this machine has an NVIDIA GPU whose management library can be loaded.
pub fn nvidia_gpu_present() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists() || std::path::Path::new("/dev/nvidia0").exists()
}

/// Why a worker cannot run `engine`, for a blocked campaign's status: where its harness
/// runs and, for the engines with their own image (docs/engines.md), the image and
/// the command that gives a worker that engine.
fn unavailable_engine_reason(
    engine: &str,
    host: &str,
    runtime: &lem_common::runner::WorkerRuntime,
) -> String {
    let place = match runtime.image.as_deref() {
        Some(image) => format!("the harness in image {image} on {host}"),
        None => format!("the harness on {host}"),
    };
    let image = match engine {
        "vllm" => Some(("vLLM 0.19.1", "lem-fleet/vllm:0.19.1", "vllm")),
        "tensorrt" => Some(("TensorRT-LLM 1.2.1", "lem-fleet/tensorrt:1.2.1", "tensorrt")),
        _ => None,
    };
    match image {
        Some((what, tag, script_arg)) => format!(
            "{place} cannot run {engine} ({what} is not importable there with a GPU visible); build the {engine} image with docker/engine-images.sh {script_arg} (docs/engines.md) and start a worker with --runtime docker --image {tag} --allow-image {tag}"
        ),
        None => format!(
            "{place} cannot run {engine} (its Python environment lacks the {engine} engine's libraries)"
        ),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The name a worker gets when none is given: `<hostname>-<data dir name>`.
pub fn default_worker_name(data_dir: &std::path::Path) -> String {
    let dir = data_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "worker".into());
    format!("{}-{dir}", hostname())
}

/// How this worker speaks to the coordinator, and as whom: mutual TLS as the worker
/// its data dir joined as, or plain TCP under its `--name` (or the default name).
pub fn endpoint_and_name(cfg: &WorkerConfig) -> anyhow::Result<(Endpoint, WorkerId)> {
    let path = cfg.data_dir.join(tls::CREDENTIALS_FILE);
    if !path.exists() {
        let name = cfg
            .name
            .clone()
            .unwrap_or_else(|| default_worker_name(&cfg.data_dir));
        return Ok((Endpoint::plain(&cfg.coordinator), WorkerId(name)));
    }
    let creds = tls::Credentials::load(&path)?;
    let Some(joined_as) = creds.worker.clone() else {
        bail!(
            "{}: no `# worker:` line, so it is not a worker credential (join again with `lem-worker join`)",
            path.display()
        );
    };
    if let Some(name) = &cfg.name {
        if name != &joined_as.0 {
            bail!(
                "{} joined as worker {joined_as}, but --name is {name}: drop --name, or join again with --name {name}",
                cfg.data_dir.display()
            );
        }
    }
    Ok((
        Endpoint::with_credentials(&cfg.coordinator, &creds)?,
        joined_as,
    ))
}

/// Registers once before the slots start, so a coordinator that will never take
/// this worker (it requires TLS, does not know the certificate, speaks another
/// protocol) is a clear error now instead of retries forever. A coordinator that
/// is not up yet is fine: the slots keep trying.
async fn check_admission(endpoint: &Endpoint, register: &RegisterRequest) -> anyhow::Result<()> {
    let client = match transport::connect(endpoint).await {
        Ok(c) => c,
        Err(e) if e.is_unreachable() => {
            tracing::warn!(error = %e, "coordinator not reachable yet; the slots keep trying");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + Duration::from_secs(10);
    if let Ok(Err(e)) = client.register(ctx, register.clone()).await {
        if matches!(
            e.kind,
            RpcErrorKind::Unauthenticated
                | RpcErrorKind::PermissionDenied
                | RpcErrorKind::VersionMismatch
                | RpcErrorKind::InvalidInput
        ) {
            bail!(
                "the coordinator at {} refused worker {}: {e}",
                endpoint.addr,
                register.worker
            );
        }
    }
    Ok(())
}

/// Tells the coordinator this worker stopped, so `workers` and `status` show it
/// disconnected at once. Best effort, a few seconds at most: a coordinator that does
/// not answer (or predates the call) shows it disconnected one lease TTL later.
async fn deregister(endpoint: &Endpoint, worker: &WorkerId) {
    let call = async {
        let client = transport::connect(endpoint).await.ok()?;
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + Duration::from_secs(3);
        client
            .deregister(
                ctx,
                lem_common::rpc::DeregisterRequest {
                    worker: worker.clone(),
                },
            )
            .await
            .ok()?
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Some(())) => tracing::info!(worker = %worker, "deregistered"),
        _ => {
            tracing::debug!(worker = %worker, "could not deregister; the coordinator shows this worker disconnected after the lease TTL")
        }
    }
}

/// A slot (or a dynamic pool) planned at start: its GPUs' samplers, load sinks and
/// environment snapshots, in group order, and its harness, started.
struct Planned {
    index: u32,
    group: Vec<u32>,
    harness: Box<dyn HarnessRuntime>,
    samplers: Vec<Arc<telemetry::Sampler>>,
    loads: Vec<Arc<dyn LoadSink>>,
    snapshots: Vec<serde_json::Value>,
    dir: PathBuf,
}

/// Starts the sampler of one GPU (simulated, or NVML index `gpu_index`); returns it
/// with the GPU's load sink and environment snapshot.
fn start_gpu(
    cfg: &WorkerConfig,
    nvml: Option<&Arc<nvml_wrapper::Nvml>>,
    gpu_index: u32,
) -> anyhow::Result<(Sampler, Arc<dyn LoadSink>, serde_json::Value)> {
    let Some(nvml) = nvml else {
        let (gpu, patched) = SimulatedGpu::from_env(gpu_index)?;
        let load: Arc<dyn LoadSink> = Arc::new(gpu.clone());
        let counter: Box<dyn telemetry::CounterSource> = Box::new(gpu.clone());
        let processes = Arc::new(gpu.clone());
        let sampler = Sampler::start(
            Box::new(gpu),
            cfg.sample_interval,
            RING_CAPACITY,
            Some((counter, cfg.counter_interval)),
        );
        let sampler = sampler.with_processes(processes);
        let mut snapshot = serde_json::json!({"name": sampler.description.name, "simulated": true});
        if let Some(p) = patched {
            // Other simulated hardware, another environment.
            snapshot["sim_params"] = p;
        }
        return Ok((sampler, load, snapshot));
    };
    let gpu = nvml::NvmlGpu::new(nvml.clone(), gpu_index)?;
    let snapshot = gpu.snapshot();
    let counter = gpu.counter().map(|c| {
        (
            Box::new(c) as Box<dyn telemetry::CounterSource>,
            cfg.counter_interval,
        )
    });
    if counter.is_none() {
        tracing::warn!(
            gpu = gpu_index,
            "this GPU has no energy counter: energy is the power integral alone"
        );
    }
    let processes = Arc::new(gpu.processes());
    let sampler = Sampler::start(Box::new(gpu), cfg.sample_interval, RING_CAPACITY, counter)
        .with_processes(processes);
    Ok((sampler, Arc::new(telemetry::NoLoadSink), snapshot))
}

/// The environment that makes a harness see exactly the GPUs `group` (NVML indices,
/// as `nvidia-smi` numbers them: PCI bus order). CUDA numbers devices fastest first
/// unless told otherwise, so without `CUDA_DEVICE_ORDER=PCI_BUS_ID` a harness on a
/// host of mixed GPUs could run on a different GPU than the one its slot measures.
pub(crate) fn harness_gpu_env(group: &[u32]) -> Vec<(String, String)> {
    vec![
        ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
        (
            "CUDA_VISIBLE_DEVICES".to_string(),
            cuda_visible_devices(group),
        ),
    ]
}

/// Runs the worker until `stop` turns true; each slot finishes its current run first.
pub async fn run_worker(cfg: WorkerConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    run_worker_with(cfg, stop, None).await
}

/// [`run_worker`], and with `exit_when_idle` (`--exit-when-idle`, its value the
/// `--idle-grace`) also until the coordinator has no work this worker can take
/// ([`idle`]); either way it deregisters and returns `Ok`.
pub async fn run_worker_with(
    cfg: WorkerConfig,
    stop: watch::Receiver<bool>,
    exit_when_idle: Option<Duration>,
) -> anyhow::Result<()> {
    if cfg.sample_interval < Duration::from_millis(10)
        || cfg.sample_interval > Duration::from_secs(10)
    {
        bail!("--sample-interval-ms must be between 10 and 10000");
    }
    let (nvml, visible) = if cfg.simulate_gpu {
        // `--gpus N`, else the GPUs CUDA_VISIBLE_DEVICES lists (a Slurm job's), else
        // one per slot asked for.
        let cuda_visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let visible = simulated_visible(cfg.simulated_gpus, cfg.slots, cuda_visible.as_deref());
        if cfg.simulated_gpus.is_none() {
            if let Some(v) = cuda_visible
                .as_deref()
                .filter(|v| visible_indices(v).is_some())
            {
                tracing::info!(gpus = ?visible, "simulated GPUs: the ones CUDA_VISIBLE_DEVICES={v} lists");
            }
        }
        (None, visible)
    } else {
        if cfg.simulated_gpus.is_some() {
            bail!("--gpus sets the number of simulated GPUs and needs --simulate-gpu (real GPUs are discovered through NVML and CUDA_VISIBLE_DEVICES)");
        }
        if !nvidia_gpu_present() {
            bail!("no NVIDIA GPU found on this host (no /dev/nvidiactl); run with --simulate-gpu for a labelled simulated GPU");
        }
        let nvml = nvml::init()?;
        let visible = nvml::visible_gpus(&nvml)?;
        (Some(nvml), visible)
    };
    // A dynamic pool is planned as one group: its GPUs' samplers and the harness
    // that finds the engines; its lanes form the groups of runs later.
    let dynamic = is_dynamic(cfg.gpu_groups.as_deref());
    let planned = if dynamic {
        plan_pool(&visible, cfg.slots).map(|pool| vec![pool])
    } else {
        plan_slots(&visible, cfg.slots, cfg.gpu_groups.as_deref())
    };
    let groups = planned.map_err(|e| {
        anyhow::anyhow!(
            "{e} (CUDA_VISIBLE_DEVICES={})",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
        )
    })?;
    // Real GPUs: one measuring worker per GPU on this host (gpu_claim), held until
    // this function returns.
    let _gpu_claim = match &nvml {
        Some(nvml) => {
            let mut gpus = Vec::new();
            for &index in groups.iter().flatten() {
                let uuid = nvml
                    .device_by_index(index)
                    .and_then(|d| d.uuid())
                    .with_context(|| format!("cannot read the UUID of GPU {index}"))?;
                gpus.push((index, uuid));
            }
            Some(gpu_claim::claim(&gpu_claim::lock_dir(), &gpus)?)
        }
        None => None,
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // The journal first: it also refuses a second worker on this data dir.
    let (journal, interrupted) = journal::Journal::open(&cfg.data_dir, clock::unix_ms())?;
    if interrupted > 0 {
        tracing::warn!(
            runs = interrupted,
            "runs were going on when this worker last stopped; reporting them as interrupted (the coordinator retries them)"
        );
    }
    let journal = Arc::new(journal);
    let (endpoint, worker) = endpoint_and_name(&cfg)?;
    let metrics = Arc::new(metrics::WorkerMetrics::default());
    metrics.set_worker(&worker.0);
    // Bound before the harnesses start, so a taken port is an error at once.
    let http_task = match cfg.http.as_deref() {
        None => None,
        Some(addr) => {
            let listener = http::bind(&HTTP_FLAG, addr, cfg.http_public).await?;
            let bound = listener.local_addr()?;
            http::write_addr_file(&cfg.data_dir, bound).with_context(|| {
                format!(
                    "cannot write {}",
                    cfg.data_dir.join(http::ADDR_FILE).display()
                )
            })?;
            tracing::info!(url = %format!("http://{bound}/metrics"), "metrics served");
            let m = metrics.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = http::serve_worker(listener, m).await {
                    tracing::error!(error = %e, "the metrics endpoint stopped");
                }
            }))
        }
    };
    // The HTTP task ends with this function, however it returns.
    let _http_task = AbortOnDrop(http_task);
    // The process runtime runs the embedded harness with the host's Python; the
    // docker runtime, the image's (its Python version comes with the first pong, and
    // the image, pinned by id, goes into every result's environment).
    let (factory, mut py_version, image_env, worker_runtime): (
        Arc<dyn HarnessFactory>,
        Option<String>,
        _,
        lem_common::runner::WorkerRuntime,
    ) = match &cfg.runtime {
        RuntimeConfig::Process => {
            let py_version = runtime::check_python(&cfg.python).await?;
            let server_py = runtime::install_harness(&cfg.data_dir.join("harness"))?;
            let factory = runtime::ProcessFactory {
                python: cfg.python.clone(),
                server_py,
                env: policy_env(cfg.trust_remote_code),
            };
            (
                Arc::new(factory),
                Some(py_version),
                None,
                lem_common::runner::WorkerRuntime::process(),
            )
        }
        RuntimeConfig::Docker {
            image,
            allow_images,
            dispatch,
        } => {
            let factory =
                docker::DockerFactory::start(&cfg.data_dir, &worker.0, image, allow_images)
                    .await?
                    .with_env(policy_env(cfg.trust_remote_code))
                    .with_dispatch(*dispatch);
            let pinned = factory.image();
            tracing::info!(image = %pinned.name, id = %pinned.id, harness = ?pinned.harness_version, "docker runtime");
            let image_env = serde_json::json!({
                "name": pinned.name,
                "id": pinned.id,
                "harness_version": pinned.harness_version,
            });
            let worker_runtime =
                lem_common::runner::WorkerRuntime::docker(&pinned.name, &pinned.id);
            (Arc::new(factory), None, Some(image_env), worker_runtime)
        }
    };
    let host = hostname();

    let mut slots = Vec::new();
    let mut slot_infos = Vec::new();
    let mut engines: Option<Vec<String>> = None;
    for (index, group) in groups.iter().enumerate() {
        let index = index as u32;
        let dir = if dynamic {
            pool::set_dir(&cfg.data_dir, group)
        } else {
            cfg.data_dir.join(format!("slot-{index}"))
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut samplers = Vec::new();
        let mut loads: Vec<Arc<dyn LoadSink>> = Vec::new();
        let mut snapshots = Vec::new();
        for &gpu_index in group {
            let (sampler, load, snapshot) = start_gpu(&cfg, nvml.as_ref(), gpu_index)?;
            let sampler = Arc::new(sampler);
            metrics.add_gpu(gpu_index, sampler.clone());
            samplers.push(sampler);
            loads.push(load);
            snapshots.push(snapshot);
        }
        let gpu_env = if nvml.is_some() {
            harness_gpu_env(group)
        } else {
            vec![]
        };
        let mut harness = factory.make(&dir, index, group, gpu_env);
        let pong = harness.ensure_started().await.with_context(|| {
            format!(
                "slot {index}: harness did not start (log: {})",
                harness.log_path().display()
            )
        })?;
        engines.get_or_insert_with(|| pong.engines.clone());
        check_harness_policy(&pong.body, cfg.trust_remote_code, harness.log_path())?;
        if py_version.is_none() {
            py_version = pong
                .body
                .get("python")
                .and_then(|v| v.as_str())
                .map(String::from);
        }
        slot_infos.push(SlotInfo {
            index,
            gpu_name: samplers[0].description.name.clone(),
            simulated: samplers[0].description.simulated,
            gpus: group.clone(),
            dynamic,
        });
        slots.push(Planned {
            index,
            group: group.clone(),
            harness,
            samplers,
            loads,
            snapshots,
            dir,
        });
    }
    let offered = engines.unwrap_or_default();
    let capabilities: Vec<EngineCapability> = KNOWN_ENGINES
        .iter()
        .map(|e| {
            let available = offered.iter().any(|o| o == e);
            EngineCapability {
                engine: e.to_string(),
                available,
                reason: (!available).then(|| unavailable_engine_reason(e, &host, &worker_runtime)),
                version: None,
            }
        })
        .collect();
    let register = RegisterRequest {
        worker: worker.clone(),
        host: host.clone(),
        protocol_version: lem_common::PROTOCOL_VERSION,
        worker_version: env!("CARGO_PKG_VERSION").to_string(),
        slots: slot_infos,
        engines: capabilities,
        runtime: worker_runtime,
    };
    check_admission(&endpoint, &register).await?;
    if nvml.is_some() && isolation::in_child_pid_namespace() {
        tracing::warn!(
            "this worker runs in its own PID namespace (a container without --pid=host): NVML reports the host's pids, so the device isolation check cannot tell this worker's harness from other processes and flags it (start the container with --pid=host)"
        );
    }
    let py_version = py_version.unwrap_or_default();
    let tls = matches!(endpoint.security, transport::Security::Tls(_));
    tracing::info!(worker = %worker, slots = ?groups, python = %py_version, engines = ?offered, simulated = cfg.simulate_gpu, tls, "worker starting");
    let mut host_env = env::host_snapshot(&py_version);
    if let Some(image) = image_env {
        host_env["harness_image"] = image;
    }
    let new_slot = |index: u32, p: Planned, environment: env::Environment| {
        let load: Arc<dyn LoadSink> = Arc::new(telemetry::FanOutLoad(p.loads));
        let mut slot = Slot::new(
            index,
            worker.clone(),
            host.clone(),
            endpoint.clone(),
            register.clone(),
            p.harness,
            p.group,
            p.samplers,
            load,
            p.dir,
            environment,
            journal.clone(),
        );
        slot.prefill_window_s = cfg.prefill_window_s;
        slot.quiet_s = cfg.quiet_s;
        slot.per_token_timing = cfg.per_token_timing;
        slot.host_policy = lem_common::policy::HostPolicy {
            trust_remote_code: cfg.trust_remote_code,
        };
        slot.recycle_memory_growth_mb = cfg.recycle_memory_growth_mb;
        slot.drain = cfg.drain;
        slot.isolation = cfg.device_isolation;
        slot.metrics = metrics.clone();
        metrics.add_slot(index);
        slot
    };
    let mut lanes = Vec::new();
    let mut dyn_pool = None;
    if dynamic {
        let p = slots.pop().expect("a dynamic pool is planned as one group");
        let gpus = p.group.iter().enumerate().map(|(i, &index)| PoolGpu {
            index,
            sampler: p.samplers[i].clone(),
            load: p.loads[i].clone(),
            snapshot: p.snapshots[i].clone(),
        });
        let pool = Arc::new(DynPool::new(
            gpus.collect(),
            factory.clone(),
            &cfg.data_dir,
            nvml.is_some(),
            host_env.clone(),
        ));
        // The harness that found the engines sees the whole pool: kept warm for a
        // run of that size, stopped by the first run on fewer GPUs.
        pool.shelve(&p.group, None, None, p.harness).await;
        // One lane per GPU: enough for a TP-1 run on every GPU at once.
        for lane in 0..pool.size() {
            let placeholder = Planned {
                index: lane,
                group: vec![],
                harness: pool.placeholder_harness(lane),
                samplers: vec![],
                loads: vec![],
                snapshots: vec![],
                dir: cfg.data_dir.clone(),
            };
            let environment = env::Environment::new(host_env.clone(), serde_json::Value::Null);
            let mut slot = new_slot(lane, placeholder, environment);
            slot.pool = Some(pool.clone());
            lanes.push(slot);
        }
        dyn_pool = Some(pool);
    } else {
        for p in slots {
            let environment = env::Environment::new(host_env.clone(), group_snapshot(&p.snapshots));
            lanes.push(new_slot(p.index, p, environment));
        }
    }
    // `--exit-when-idle`: the slots share one view of whether the worker leaves, and
    // leaving stops them as `stop` does (no slot is running a run or asking then).
    let (stop, idle_exit) = match exit_when_idle {
        None => (stop, None),
        Some(grace) => {
            let idle_exit = Arc::new(idle::IdleExit::new(lanes.len(), grace));
            for slot in &mut lanes {
                slot.idle = Some(idle_exit.clone());
            }
            tracing::info!(
                grace_s = grace.as_secs(),
                "--exit-when-idle: leaving once no slot can lease a run (after the first run, or --idle-grace after start)"
            );
            (either_stop(stop, idle_exit.subscribe()), Some(idle_exit))
        }
    };
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|slot| tokio::spawn(slot.lease_loop(stop.clone())))
        .collect();
    let mut fatal = None;
    for t in tasks {
        if let Ok(Some(e)) = t.await {
            fatal.get_or_insert(e);
        }
    }
    if let Some(pool) = dyn_pool {
        pool.stop_all().await;
    }
    if fatal.is_none() && *stop.borrow() {
        if idle_exit.is_some_and(|i| *i.subscribe().borrow()) {
            tracing::info!(worker = %worker, "no work this worker can take: leaving (--exit-when-idle)");
        }
        deregister(&endpoint, &worker).await;
    }
    match fatal {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

/// A stop signal that turns true when either `a` or `b` does.
fn either_stop(a: watch::Receiver<bool>, b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    async fn turned_true(mut r: watch::Receiver<bool>) {
        if r.wait_for(|v| *v).await.is_err() {
            // Its sender is gone without saying stop: only the other one can.
            std::future::pending::<()>().await
        }
    }
    let (tx, rx) = watch::channel(*a.borrow() || *b.borrow());
    tokio::spawn(async move {
        tokio::select! {
            _ = turned_true(a) => {}
            _ = turned_true(b) => {}
            _ = tx.closed() => return,
        }
        let _ = tx.send(true);
    });
    rx
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Refuses to start when the harness does not see the host's remote-code policy the
/// worker was started with (its pong's `trust_remote_code`): the environment did not
/// reach it (a container runtime that drops it, a wrapper that sets it).
fn check_harness_policy(
    pong: &serde_json::Value,
    trust_remote_code: bool,
    log: &std::path::Path,
) -> anyhow::Result<()> {
    let Some(seen) = pong.get("trust_remote_code").and_then(|v| v.as_bool()) else {
        anyhow::bail!(
            "the harness did not report its remote-code policy (an older harness image? rebuild it with docker/images.sh); log: {}",
            log.display()
        );
    };
    if seen != trust_remote_code {
        anyhow::bail!(
            "the harness sees LLEM_TRUST_REMOTE_CODE {} but this worker was started with remote code {}: the host's policy did not reach it (log: {})",
            if seen { "on" } else { "off" },
            if trust_remote_code {
                "allowed (--trust-remote-code)"
            } else {
                "off"
            },
            log.display()
        );
    }
    Ok(())
}

/// The harness environment the host's policy sets: llem's remote-code gate, on exactly
/// when the worker allows remote code (the harness refuses a study's
/// `trust_remote_code` otherwise, whatever the worker's own environment says).
pub fn policy_env(trust_remote_code: bool) -> Vec<(String, String)> {
    vec![(
        "LLEM_TRUST_REMOTE_CODE".into(),
        if trust_remote_code { "1" } else { "0" }.into(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_with_its_own_image_is_blocked_with_the_image_and_the_command() {
        let docker =
            lem_common::runner::WorkerRuntime::docker("lem-fleet/harness:latest", "sha256:ab");
        let r = unavailable_engine_reason("vllm", "h1", &docker);
        assert_eq!(
            r,
            "the harness in image lem-fleet/harness:latest on h1 cannot run vllm (vLLM 0.19.1 is not importable there with a GPU visible); build the vllm image with docker/engine-images.sh vllm (docs/engines.md) and start a worker with --runtime docker --image lem-fleet/vllm:0.19.1 --allow-image lem-fleet/vllm:0.19.1"
        );
        let process = lem_common::runner::WorkerRuntime::process();
        let r = unavailable_engine_reason("tensorrt", "h1", &process);
        assert!(
            r.starts_with("the harness on h1 cannot run tensorrt (TensorRT-LLM 1.2.1"),
            "{r}"
        );
        assert!(
            r.ends_with("--image lem-fleet/tensorrt:1.2.1 --allow-image lem-fleet/tensorrt:1.2.1"),
            "{r}"
        );
        let r = unavailable_engine_reason("transformers", "h1", &process);
        assert_eq!(r, "the harness on h1 cannot run transformers (its Python environment lacks the transformers engine's libraries)");
    }

    #[test]
    fn a_harness_that_does_not_see_the_hosts_policy_stops_the_worker() {
        let log = std::path::Path::new("/data/slot-0/harness.log");
        let pong = |on: bool| serde_json::json!({"trust_remote_code": on});
        assert!(check_harness_policy(&pong(false), false, log).is_ok());
        assert!(check_harness_policy(&pong(true), true, log).is_ok());
        let e = check_harness_policy(&pong(true), false, log)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LLEM_TRUST_REMOTE_CODE on") && e.contains("harness.log"),
            "{e}"
        );
        let e = check_harness_policy(&pong(false), true, log)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--trust-remote-code"), "{e}");
        let e = check_harness_policy(&serde_json::json!({}), false, log)
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker/images.sh"), "{e}");
    }
}
