//! The `lem-worker` command line: flags, signal handling, exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Runs lem fleet experiments on this host's GPUs, leased from a coordinator.
///
/// With `DATA_DIR/credentials.pem` (written by `lem-worker join`) the worker speaks
/// mutual TLS as the worker it joined as; without, plain TCP, which only a
/// coordinator listening on loopback (or started with --insecure) answers.
#[derive(Parser, Debug)]
#[command(name = "lem-worker", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
    /// Coordinator address (host:port).
    #[arg(long, env = "LEM_COORDINATOR", default_value = "127.0.0.1:7700")]
    pub coordinator: String,
    /// Directory for the worker's harness, logs and journal.
    #[arg(long, env = "LEM_WORKER_DATA_DIR", default_value = "lem-data/worker")]
    pub data_dir: PathBuf,
    /// Where each slot's resident harness server runs: `process` (a child of the
    /// worker) or `docker` (the main process of a warm container of --image; each
    /// run is one request to it, as --docker-dispatch says).
    #[arg(long, env = "LEM_RUNTIME", value_enum, default_value_t = Runtime::Process)]
    pub runtime: Runtime,
    /// With --runtime docker: the harness image (built by docker/images.sh). It runs
    /// only if its id is on the allowlist (--allow-image, DATA_DIR/allowed-images).
    #[arg(long, env = "LEM_IMAGE", default_value = crate::docker::DEFAULT_IMAGE)]
    pub image: String,
    /// With --runtime docker: an image this worker may run, by id (`sha256:...`) or
    /// by name (resolved to its id at start, and that id pinned). Repeatable; the ids
    /// in DATA_DIR/allowed-images (one per line) are allowed too.
    #[arg(long = "allow-image", value_name = "ID_OR_NAME")]
    pub allow_images: Vec<String>,
    /// With --runtime docker: how a run reaches the container's harness server:
    /// `socket` (its Unix socket in the slot's bind-mounted directory; no process
    /// per run) or `exec` (an exec of the harness client in the container, about
    /// 60 ms more a run).
    #[arg(long, env = "LEM_DOCKER_DISPATCH", value_enum, default_value_t = DockerDispatch::Socket)]
    pub docker_dispatch: DockerDispatch,
    /// Use a labelled simulated GPU (results carry `simulated: true`).
    #[arg(long, env = "LEM_SIMULATE_GPU")]
    pub simulate_gpu: bool,
    /// Number of GPU slots (lease loops): a number, or `auto` for one slot per
    /// visible GPU (or per `--gpu-groups` group). Default 1; with `--gpu-groups
    /// dynamic` the number of GPUs in the pool, default `auto`.
    #[arg(long)]
    pub slots: Option<lem_common::gpus::SlotCount>,
    /// GPU groups, one slot each: `0,1;2;3` makes a 2-GPU slot (its harness sees
    /// CUDA_VISIBLE_DEVICES=0,1) for tensor-parallel-2 runs and two 1-GPU slots.
    /// `dynamic`: the GPUs form one pool and each run gets a group of its
    /// tensor-parallel size from the GPUs free when it is leased.
    #[arg(long)]
    pub gpu_groups: Option<String>,
    /// With --simulate-gpu: how many simulated GPUs the host has, indices 0..N
    /// (default: the indices CUDA_VISIBLE_DEVICES lists, as Slurm sets it for a job's
    /// GPUs; else one per slot asked for).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Worker name (default: hostname and data dir).
    #[arg(long, env = "LEM_WORKER_NAME")]
    pub name: Option<String>,
    /// Power/temperature sampling interval in milliseconds (10 to 10000).
    #[arg(long, default_value_t = 50)]
    pub sample_interval_ms: u64,
    /// Background energy-counter read interval in milliseconds (real GPUs; 0 = only
    /// the bursts at each measured window's edges, the default).
    #[arg(long, default_value_t = 0)]
    pub counter_interval_ms: u64,
    /// Seconds of repeated prefill-only calls after each run, for prefill energy by
    /// the differential method (0 turns it off).
    #[arg(long, default_value_t = 3.0)]
    pub prefill_window_seconds: f64,
    /// Milliseconds the harness holds the GPU idle beside every window edge while the
    /// energy counter is read back to back, so each edge is anchored at idle power
    /// (0 to 10000; 0 = none, and edges are carried through neighbouring counter steps).
    #[arg(long, default_value_t = 350, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub quiet_ms: u64,
    /// When the harness times every output token inside the measured window: `always`,
    /// or `when-profiling` (only when the study sets measurement.latency_profiling, as
    /// llem does; otherwise per-batch latency, llem's per_request_batch).
    #[arg(long, value_enum, default_value_t = PerTokenTiming::Always)]
    pub per_token_timing: PerTokenTiming,
    /// Let studies run model repositories' own Python on this host
    /// (`trust_remote_code`). Off unless given (or LLEM_TRUST_REMOTE_CODE is set to
    /// 1/true/yes/on for the worker): a study that asks for it is refused here.
    #[arg(long)]
    pub trust_remote_code: bool,
    /// GPU memory growth (MiB) past what the harness held after loading its model that
    /// recycles the harness (its container, on the docker runtime) after a run; 0 never.
    #[arg(long, default_value_t = 4096)]
    pub recycle_memory_growth_mb: u64,
    /// What a slot does when a process other than the worker's own (its harness and
    /// the harness's children) holds a measured GPU before a baseline or around the
    /// measured window: `warn` measures and flags the result (`gpu_shared`, the
    /// processes, a warning); `refuse` does not measure (the run fails as retryable
    /// and goes back to pending) and leases nothing while the process holds the GPU.
    #[arg(long, value_enum, default_value_t = DeviceIsolation::Warn)]
    pub device_isolation: DeviceIsolation,
    /// On SIGTERM/SIGINT, stop the run in progress and hand it back to the coordinator
    /// (it goes back to pending and the attempt does not count) instead of finishing it.
    #[arg(long)]
    pub drain: bool,
    /// Leave when the coordinator has no work this worker can take: every slot's
    /// lease call was answered "no work" after its whole 20 s wait, no run is in
    /// progress, and a run was granted since start or --idle-grace has passed. Then
    /// deregister and exit 0 (for batch jobs: docs/slurm.md).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// With --exit-when-idle: how long a worker that has not been granted a run yet
    /// stays (so one started before the campaign is submitted waits for it): `0`, or
    /// a number with s, m, h or d.
    #[arg(long, default_value = "5m", value_parser = crate::idle::parse_grace, requires = "exit_when_idle")]
    pub idle_grace: std::time::Duration,
    /// Python interpreter for the harness.
    #[arg(long, env = "LEM_PYTHON", default_value = "python3")]
    pub python: String,
    /// Serve Prometheus metrics (`/metrics`: each GPU's power, temperature and SM
    /// clock, the current runs, thermal-gate waits, energy-counter cost) on ADDR
    /// (host:port; port 0 picks one, written to DATA_DIR/http.addr). Off unless given.
    #[arg(long, env = "LEM_WORKER_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Allow --http on an address that is not loopback (the metrics are read-only
    /// but unauthenticated; a warning says so).
    #[arg(long)]
    pub http_public: bool,
    /// Send OpenTelemetry spans (each lease call, each run and its phases: gate,
    /// baseline, load, warmup, window, prefill window, report; every RPC) to this
    /// OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (docs/observability.md).
    /// Off unless given.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// `--runtime`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Process,
    Docker,
}

/// `--docker-dispatch`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerDispatch {
    Socket,
    Exec,
}

impl DockerDispatch {
    pub fn dispatch(self) -> crate::docker::Dispatch {
        match self {
            DockerDispatch::Socket => crate::docker::Dispatch::Socket,
            DockerDispatch::Exec => crate::docker::Dispatch::Exec,
        }
    }
}

/// `--per-token-timing`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerTokenTiming {
    Always,
    WhenProfiling,
}

impl PerTokenTiming {
    /// The harness request's value.
    pub fn wire(self) -> &'static str {
        match self {
            PerTokenTiming::Always => "always",
            PerTokenTiming::WhenProfiling => "when_profiling",
        }
    }
}

/// `--device-isolation`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceIsolation {
    Warn,
    Refuse,
}

impl DeviceIsolation {
    pub fn policy(self) -> lem_common::isolation::IsolationPolicy {
        match self {
            DeviceIsolation::Warn => lem_common::isolation::IsolationPolicy::Warn,
            DeviceIsolation::Refuse => lem_common::isolation::IsolationPolicy::Refuse,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// Enrol with a coordinator using a join token (`lem-coord token create`) and
    /// store this worker's client certificate in DATA_DIR/credentials.pem.
    Join {
        /// Coordinator address (host:port).
        #[arg(long, env = "LEM_COORDINATOR", default_value = "127.0.0.1:7700")]
        coordinator: String,
        /// The join token `lem-coord token create` printed.
        #[arg(long, env = "LEM_JOIN_TOKEN")]
        token: String,
        /// The worker's data dir (the one later runs use).
        #[arg(long, env = "LEM_WORKER_DATA_DIR", default_value = "lem-data/worker")]
        data_dir: PathBuf,
        /// Worker name, bound into the certificate (default: hostname and data dir).
        #[arg(long, env = "LEM_WORKER_NAME")]
        name: Option<String>,
    },
    /// Check what this host needs to measure with these flags (NVML and its GPUs,
    /// other workers' GPU locks, disk space, Python and the engines it imports, or
    /// Docker, its NVIDIA runtime, the image and the allowlist), each with the fix for
    /// what is missing. Exit status 1 when a worker with these flags cannot run.
    Check {
        /// The runtime to check (as `lem-worker --runtime`).
        #[arg(long, env = "LEM_RUNTIME", value_enum, default_value_t = Runtime::Process)]
        runtime: Runtime,
        /// With --runtime docker: the harness image.
        #[arg(long, env = "LEM_IMAGE", default_value = crate::docker::DEFAULT_IMAGE)]
        image: String,
        /// With --runtime docker: images this worker may run (as `lem-worker --allow-image`).
        #[arg(long = "allow-image", value_name = "ID_OR_NAME")]
        allow_images: Vec<String>,
        /// The worker's data dir.
        #[arg(long, env = "LEM_WORKER_DATA_DIR", default_value = "lem-data/worker")]
        data_dir: PathBuf,
        /// With --runtime process: the Python the harness runs with.
        #[arg(long, env = "LEM_PYTHON", default_value = "python3")]
        python: String,
        /// The worker will measure the labelled simulated GPU: a missing GPU or NVIDIA
        /// runtime is a warning, not a failure.
        #[arg(long, env = "LEM_SIMULATE_GPU")]
        simulate_gpu: bool,
    },
    /// Measure the worker's runtimes on this machine (docs/performance.md).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Per-run overhead of the docker runtime: a run into the resident container
    /// (model loaded) over its server's socket and by exec, against a fresh
    /// container created, started, run and removed, in turns; the synthetic engine,
    /// no GPU. Prints
    /// `dispatch warm_p50_ms=X cold_p50_ms=Y ratio=Z` last.
    Dispatch {
        /// Runs of each mode.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The harness image (docker/images.sh).
        #[arg(long, env = "LEM_IMAGE", default_value = crate::docker::DEFAULT_IMAGE)]
        image: String,
    },
}

fn bench_main(what: &BenchCommand) -> std::process::ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match what {
        BenchCommand::Dispatch { runs, image } => {
            match rt.block_on(crate::bench::dispatch(image, *runs)) {
                Ok(report) => {
                    for line in report.lines() {
                        println!("{line}");
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lem-worker: error: {e:#}");
                    std::process::ExitCode::from(1)
                }
            }
        }
    }
}

fn check_main(o: crate::check::Options) -> std::process::ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let items = rt.block_on(crate::check::run(&o));
    print!("{}", crate::check::render(&items));
    if items.iter().any(|i| i.status == crate::check::Status::Fail) {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn join_main(
    coordinator: &str,
    token: &str,
    data_dir: &std::path::Path,
    name: Option<&str>,
) -> std::process::ExitCode {
    // The default name holds the data dir's own name, so make the dir first.
    let _ = std::fs::create_dir_all(data_dir);
    let name = name
        .map(String::from)
        .unwrap_or_else(|| crate::default_worker_name(data_dir));
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(lem_wire::join::join(coordinator, token, data_dir, &name)) {
        Ok(j) => {
            if let Some(before) = j.replaced {
                eprintln!(
                    "replaced the earlier credential (worker {}); the coordinator forgets that certificate when the same name joins again",
                    before.map(|w| w.0).unwrap_or_else(|| "unknown".into())
                );
            }
            eprintln!(
                "joined as worker {}; credential in {} (keep it private). Start the worker with: lem-worker --coordinator {coordinator} --data-dir {}",
                j.worker,
                j.credentials.display(),
                data_dir.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lem-worker: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Parses the flags, runs the worker until SIGTERM/SIGINT, returns the exit code.
pub fn main_impl() -> std::process::ExitCode {
    let args = Args::parse();
    // Before any runtime starts, and dropped after it ends (it flushes the spans).
    let telemetry = match lem_wire::otel::init(lem_wire::otel::TelemetrySetup {
        service: "lem-worker",
        instance: args.name.clone(),
        otlp_endpoint: args.otlp_endpoint.as_deref(),
        default_log: "info",
        log_writer: tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lem-worker: error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(url) = &telemetry.exporting_to {
        tracing::info!(%url, "exporting OpenTelemetry spans");
    }
    let code = worker_main(args);
    drop(telemetry);
    code
}

fn worker_main(args: Args) -> std::process::ExitCode {
    if let Some(WorkerCommand::Join {
        coordinator,
        token,
        data_dir,
        name,
    }) = &args.command
    {
        return join_main(coordinator, token, data_dir, name.as_deref());
    }
    if let Some(WorkerCommand::Bench { what }) = &args.command {
        return bench_main(what);
    }
    if let Some(WorkerCommand::Check {
        runtime,
        image,
        allow_images,
        data_dir,
        python,
        simulate_gpu,
    }) = &args.command
    {
        return check_main(crate::check::Options {
            runtime: *runtime,
            image: image.clone(),
            allow_images: allow_images.clone(),
            data_dir: data_dir.clone(),
            python: python.clone(),
            simulate_gpu: *simulate_gpu,
        });
    }
    let cfg = crate::WorkerConfig {
        coordinator: args.coordinator,
        data_dir: args.data_dir,
        name: args.name,
        slots: args.slots.unwrap_or(
            if lem_common::gpus::is_dynamic(args.gpu_groups.as_deref()) {
                lem_common::gpus::SlotCount::Auto
            } else {
                lem_common::gpus::SlotCount::Fixed(1)
            },
        ),
        gpu_groups: args.gpu_groups,
        simulated_gpus: args.gpus,
        simulate_gpu: args.simulate_gpu,
        python: args.python,
        sample_interval: std::time::Duration::from_millis(args.sample_interval_ms),
        counter_interval: std::time::Duration::from_millis(args.counter_interval_ms),
        prefill_window_s: args.prefill_window_seconds,
        quiet_s: args.quiet_ms as f64 / 1000.0,
        per_token_timing: args.per_token_timing.wire(),
        trust_remote_code: args.trust_remote_code || trust_remote_code_env(),
        recycle_memory_growth_mb: args.recycle_memory_growth_mb,
        drain: args.drain,
        device_isolation: args.device_isolation.policy(),
        runtime: match args.runtime {
            Runtime::Process => crate::RuntimeConfig::Process,
            Runtime::Docker => crate::RuntimeConfig::Docker {
                image: args.image,
                allow_images: args.allow_images,
                dispatch: args.docker_dispatch.dispatch(),
            },
        },
        http: args
            .http
            .as_deref()
            .and_then(crate::http::parse_flag)
            .map(String::from),
        http_public: args.http_public,
    };
    let drain = args.drain;
    let exit_when_idle = args.exit_when_idle.then_some(args.idle_grace);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!(
                drain,
                "stopping (with --drain: handing the current run back; otherwise after it)"
            );
            let _ = tx.send(true);
        });
        crate::run_worker_with(cfg, rx, exit_when_idle).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lem-worker: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// llem's host gate for remote code: `LLEM_TRUST_REMOTE_CODE` set to 1/true/yes/on.
pub fn trust_remote_code_env() -> bool {
    std::env::var("LLEM_TRUST_REMOTE_CODE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}
