//! The `lem-worker` command line: flags, signal handling, exit code.

use std::path::PathBuf;

use clap::Parser;

/// Runs lem fleet experiments on this host's GPUs, leased from a coordinator.
#[derive(Parser, Debug)]
#[command(name = "lem-worker", version)]
pub struct Args {
    /// Coordinator address (host:port).
    #[arg(long, env = "LEM_COORDINATOR", default_value = "127.0.0.1:7700")]
    pub coordinator: String,
    /// Directory for the worker's harness, logs and journal.
    #[arg(long, env = "LEM_WORKER_DATA_DIR", default_value = "lem-data/worker")]
    pub data_dir: PathBuf,
    /// Runtime for the harness: `process` (a child process; the only one so far).
    #[arg(long, default_value = "process", value_parser = ["process"])]
    pub runtime: String,
    /// Use a labelled simulated GPU (results carry `simulated: true`).
    #[arg(long, env = "LEM_SIMULATE_GPU")]
    pub simulate_gpu: bool,
    /// Number of GPU slots (lease loops).
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
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
    /// Python interpreter for the harness.
    #[arg(long, env = "LEM_PYTHON", default_value = "python3")]
    pub python: String,
}

/// Parses the flags, runs the worker until SIGTERM/SIGINT, returns the exit code.
pub fn main_impl() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = crate::WorkerConfig {
        coordinator: args.coordinator,
        data_dir: args.data_dir,
        name: args.name,
        slots: args.slots,
        simulate_gpu: args.simulate_gpu,
        python: args.python,
        sample_interval: std::time::Duration::from_millis(args.sample_interval_ms),
        counter_interval: std::time::Duration::from_millis(args.counter_interval_ms),
        prefill_window_s: args.prefill_window_seconds,
    };
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
            tracing::info!("stopping after the current run");
            let _ = tx.send(true);
        });
        crate::run_worker(cfg, rx).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lem-worker: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
