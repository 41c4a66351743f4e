//! The `lem-coord` command line: flags, one function per subcommand, exit codes.
//!
//! Exit codes (also in docs/cli.md): 0 success; 1 a failure while running (a run
//! failed, an IO error); 2 invalid input (a study with errors, a bad flag value, a
//! campaign that does not exist); 3 the coordinator could not be reached; 4 the
//! coordinator refused the caller (no credential, or one it does not accept); 130
//! interrupted (SIGINT or SIGTERM: `run` stopped its workers, a watch stopped).

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use lem_common::lease::LeasePolicy;
use lem_common::rpc::{CampaignStatus, CoordinatorClient, RpcErrorKind, RunRow, SubmitRequest};
use lem_common::study::{self, CompactPlan, PlanOptions, StudySource};
use lem_common::types::{format_utc_ms, CampaignId};
use lem_wire::http::HttpBindError;
use lem_wire::transport::{self, Endpoint};

use crate::analysis;
use crate::assemble::{BindError, HttpSetup, PlainTcp, Setup};
use crate::clock::now_ms;
use crate::export;
use crate::limits::Limits;
use crate::live::{self, Interrupts, LiveView};
use crate::llem_export;
use crate::local::{LocalRuntime, LocalWorker, LocalWorkerSpec};
use crate::parquet_export;
use crate::pki::Pki;
use crate::store::Store;

pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const DENIED: u8 = 4;
    /// Stopped by SIGINT or SIGTERM (128 + 2, as a shell reports Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

/// An error with the exit code it should produce.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            code: exit::FAILURE,
            error: e.into(),
        }
    }
}

pub(crate) fn invalid(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: exit::INVALID_INPUT,
        error: e.into(),
    }
}

fn interrupted(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: exit::INTERRUPTED,
        error: e.into(),
    }
}

fn unreachable_err(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: exit::UNREACHABLE,
        error: e.into(),
    }
}

/// lem fleet coordinator: holds campaigns and leases their runs to workers.
#[derive(Parser, Debug)]
#[command(name = "lem-coord", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Send OpenTelemetry spans (every RPC; with `run`, its local workers' runs and
    /// their phases too) to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318
    /// (docs/observability.md). Off unless given.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Coordinator address (host:port). Default: the address in DATA_DIR/coordinator.addr
    /// with --data-dir, else 127.0.0.1:7700.
    #[arg(long, env = "LEM_COORDINATOR")]
    pub coordinator: Option<String>,
    /// On the head node: the coordinator's data dir; its admin credential
    /// (DATA_DIR/tls/admin.pem) and address are used.
    #[arg(long, conflicts_with = "credentials")]
    pub data_dir: Option<PathBuf>,
    /// Elsewhere: a copy of the coordinator's DATA_DIR/tls/admin.pem. Without this
    /// or --data-dir the CLI speaks plain TCP, which only a coordinator listening on
    /// loopback (or started with --insecure) answers.
    #[arg(long, env = "LEM_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

/// The address in a coordinator's data dir, with an unspecified listen address
/// (0.0.0.0, ::) turned into loopback on the same port.
fn address_in(data_dir: &Path) -> Result<String, CliError> {
    let path = data_dir.join("coordinator.addr");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        invalid(anyhow!(
            "cannot read {}: {e} (is {} the data dir of a started coordinator? or pass --coordinator)",
            path.display(),
            data_dir.display()
        ))
    })?;
    let addr: std::net::SocketAddr = text.trim().parse().map_err(|e| {
        invalid(anyhow!(
            "{}: `{}` is not an address: {e}",
            path.display(),
            text.trim()
        ))
    })?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(std::net::SocketAddr::new(ip, addr.port()).to_string())
}

impl ConnectArgs {
    /// Where the coordinator is and with which credential to speak to it.
    pub fn endpoint(&self) -> Result<Endpoint, CliError> {
        let addr = match (&self.coordinator, &self.data_dir) {
            (Some(a), _) => a.clone(),
            (None, Some(dir)) => address_in(dir)?,
            (None, None) => "127.0.0.1:7700".to_string(),
        };
        let path = match (&self.data_dir, &self.credentials) {
            (Some(dir), _) => {
                let p = Pki::admin_credentials_path(dir);
                if !p.exists() {
                    return Err(invalid(anyhow!(
                        "{} not found: is {} the coordinator's data dir (the --data-dir of `lem-coord start`)? It is made on the coordinator's first start",
                        p.display(),
                        dir.display()
                    )));
                }
                p
            }
            (None, Some(file)) => file.clone(),
            (None, None) => return Ok(Endpoint::plain(&addr)),
        };
        warn_if_readable_by_others(&path);
        let creds = lem_wire::tls::Credentials::load(&path).map_err(invalid)?;
        Endpoint::with_credentials(&addr, &creds).map_err(invalid)
    }
}

/// A credential others can read is a credential others can use: say so.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} is readable by others (mode {:o}); anyone who can read it can administer the coordinator (chmod 600 it)",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ResultsFormat {
    /// One JSON object per run (docs/results.md).
    Jsonl,
    /// The same columns as CSV.
    Csv,
    /// Each run's downsampled power/temperature/clock timeseries as JSON lines.
    Timeseries,
    /// The same columns as a typed Parquet file (needs --output FILE).
    Parquet,
    /// llem 0.7.0's study output layout in a directory (needs --output DIR; see
    /// docs/llem-compat.md).
    Llem,
}

#[derive(Subcommand, Debug)]
pub enum ResultsAction {
    /// Sanity-check every run's result (energy, tokens, timestamps, baselines, the
    /// window; docs/results.md): the failed checks, then PASS or FAIL; exit 1 on FAIL.
    Validate {
        campaign: u64,
        /// Print every run's checks as JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Print a join token for `lem-worker join`; works while the coordinator runs.
    Create {
        /// The coordinator's data dir (its CA and token key are in DATA_DIR/tls).
        #[arg(long, env = "LEM_DATA_DIR", default_value = "lem-data/coordinator")]
        data_dir: PathBuf,
        /// How long the token is valid: a number with s, m, h or d (up to 30d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the coordinator: serve the RPC API and keep the manifest in DATA_DIR.
    Start {
        /// Address to listen on.
        #[arg(long, env = "LEM_LISTEN", default_value = "127.0.0.1:7700")]
        listen: String,
        /// Directory for the manifest (created if missing).
        #[arg(long, env = "LEM_DATA_DIR", default_value = "lem-data/coordinator")]
        data_dir: PathBuf,
        /// Lease time-to-live in seconds (workers renew within it).
        #[arg(long, default_value_t = 30)]
        lease_ttl_secs: u64,
        /// Leases a run may use before it is marked failed.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// Also serve plain TCP on a listen address that is not loopback: anyone who
        /// can reach the port can then submit work and read results.
        #[arg(long)]
        insecure: bool,
        /// Open connections at most (workers hold one per slot; CLI calls one each).
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Where to serve the read-only status page (`/`) and Prometheus metrics
        /// (`/metrics`), host:port, or `off`. The bound address is also written to
        /// DATA_DIR/http.addr (handy with port 0).
        #[arg(long, env = "LEM_HTTP", value_name = "ADDR|off", default_value = crate::http::DEFAULT_ADDR)]
        http: String,
        /// Allow --http on an address that is not loopback: the page and metrics are
        /// read-only but unauthenticated (a warning says so; docs/security.md).
        #[arg(long)]
        http_public: bool,
    },
    /// Join tokens for new workers.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Submit a study; prints the campaign id as the last line.
    Submit {
        study: PathBuf,
        /// Go on past the grid-size limit (10,000 configs).
        #[arg(long)]
        allow_large_grid: bool,
        /// Start every run cold: the worker recycles the harness (its container, on the
        /// docker runtime) and loads the model anew before each run.
        #[arg(long)]
        force_cold_start: bool,
        /// Then watch the campaign until it finishes, as `status ID --watch` (exit 0
        /// when every run is done, 1 when any failed; Ctrl-C stops watching only).
        #[arg(long)]
        wait: bool,
        /// Seconds between updates with --wait.
        #[arg(long, default_value_t = 2.0, requires = "wait")]
        interval: f64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show one campaign's progress, or all campaigns.
    Status {
        campaign: Option<u64>,
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the campaign's progress until it finishes (exit 0 when every run is
        /// done, 1 when any failed or it was cancelled); Ctrl-C stops watching, never
        /// the campaign (exit 130).
        #[arg(long, requires = "campaign")]
        watch: bool,
        /// Seconds between updates with --watch.
        #[arg(long, default_value_t = 2.0, requires = "watch")]
        interval: f64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Export a campaign's results, one row per run (`results validate ID` checks
    /// them instead).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Results {
        #[arg(required = true)]
        campaign: Option<u64>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ResultsFormat,
        /// Write to FILE instead of standard output (a directory for --format llem).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The campaign's study file, copied to _study-artefacts/study_config.yaml
        /// (--format llem only).
        #[arg(long)]
        study: Option<PathBuf>,
        /// One row per configuration across its cycles (mean, median, std, CV,
        /// percentiles, 95 % bootstrap CI of each measure) instead of one per run
        /// (jsonl, csv, parquet).
        #[arg(long)]
        aggregate: bool,
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        action: Option<ResultsAction>,
    },
    /// A campaign's summary: one line per configuration, best J/token first, with its
    /// 95 % CI, CV and flags (what `run` prints at the end).
    Summary {
        campaign: u64,
        /// The per-configuration aggregates as JSON instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Compare B against A: two configurations (CAMPAIGN:CONFIG, CONFIG a config-hash
    /// prefix or name=value pairs such as batch_size=8) or two campaigns (their common
    /// configurations), with the difference's 95 % CI and a verdict per measure.
    Compare {
        a: String,
        b: String,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Write a campaign's report: one self-contained HTML file (tables, plots, flags,
    /// validation; docs/results.md).
    Report {
        campaign: u64,
        /// Where to write it (default: report-ID.html here).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// The run whose power timeline is drawn, by experiment id (`3-0007`; default:
        /// the median-energy run of the best configuration).
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Cancel a campaign: runs not yet finished are cancelled.
    Cancel {
        campaign: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Put a campaign's failed runs back to pending (attempts kept; cancelled runs
    /// are not retried).
    Retry {
        campaign: u64,
        /// Retry the failed runs (the default, and for now the only choice).
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Write a consistent copy of the manifest to FILE (a redb file that restores as
    /// DATA_DIR/manifest.redb): made by the running coordinator on its host, or read
    /// from a stopped one's data dir.
    Backup {
        /// The file to write; it must not exist. Without --data-dir, an absolute
        /// path on the coordinator's host.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List registered workers.
    Workers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Expand a study without a coordinator: counts, skipped combinations, ordered runs.
    Grid {
        study: PathBuf,
        /// Print exactly what llem's expansion (expand_study.py) prints.
        #[arg(long)]
        json: bool,
        /// Expand as llem's Python API does (1 cycle, sequential) instead of `llem run`.
        #[arg(long)]
        library_defaults: bool,
        /// Expand a grid of more than 10,000 configs anyway.
        #[arg(long)]
        allow_large_grid: bool,
    },
    /// Write an sbatch script that runs lem-worker on the GPU nodes Slurm allocates,
    /// with the GPUs it binds, until the campaign has no work left for them
    /// (docs/slurm.md).
    SlurmScript(crate::slurm::SlurmArgs),
    /// Measure the coordinator on this machine (docs/performance.md).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Run a study end to end here: an embedded coordinator and local workers.
    Run {
        study: PathBuf,
        /// Local workers to start.
        #[arg(long, default_value_t = 2)]
        local_workers: u32,
        /// Where the manifest, worker files and results go.
        #[arg(long, env = "LEM_DATA_DIR", default_value = "lem-data")]
        data_dir: PathBuf,
        /// Use the labelled simulated GPU even if a GPU is present.
        #[arg(long)]
        simulate_gpu: bool,
        /// Python interpreter for the harness.
        #[arg(long, env = "LEM_PYTHON", default_value = "python3")]
        python: String,
        /// Go on past the grid-size limit (10,000 configs).
        #[arg(long)]
        allow_large_grid: bool,
        /// GPU groups of the local worker, as `lem-worker --gpu-groups`: "0,1;2;3"
        /// (one slot per group) or `dynamic` (a group per run from the free GPUs),
        /// for studies with tensor-parallel runs. With the simulated GPU, the worker
        /// has --local-workers simulated GPUs (at least as many as the groups name).
        #[arg(long)]
        gpu_groups: Option<String>,
        /// Where the local workers run their harness servers, as `lem-worker
        /// --runtime`: `process` or `docker` (a warm container of --image).
        #[arg(long, value_parser = ["process", "docker"], default_value = "process")]
        runtime: String,
        /// With --runtime docker: the harness image (docker/images.sh). The local
        /// workers are allowed to run this image (its id, pinned at their start).
        #[arg(long, default_value = lem_common::runner::DEFAULT_HARNESS_IMAGE)]
        image: String,
        /// Submit a new campaign even if DATA_DIR holds an unfinished one of this
        /// study (which is then cancelled; by default it is resumed).
        #[arg(long)]
        new: bool,
        /// Where to serve the status page and metrics while it runs (host:port, or
        /// `off`); the URL is printed and written to DATA_DIR/coordinator/http.addr.
        #[arg(
            long,
            env = "LEM_HTTP",
            value_name = "ADDR|off",
            default_value = "127.0.0.1:0"
        )]
        http: String,
        /// Allow --http on an address that is not loopback (see `start --http-public`).
        #[arg(long)]
        http_public: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable lease + complete pairs per second: simulated workers over loopback,
    /// mutual TLS, the manifest on disk. Prints `leases_per_s=X p50_ms=Y p99_ms=Z` last.
    Leases {
        /// Simulated workers, each with its own TLS connection, in a closed loop.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Seconds measured (after --warmup-secs).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup_secs: f64,
        /// Pending runs made first (must outlast the run).
        #[arg(long, default_value_t = 300_000)]
        runs: u64,
        /// Most lease transitions per commit; 1 commits each on its own.
        #[arg(long, default_value_t = crate::group_commit::DEFAULT_MAX_BATCH)]
        max_batch: usize,
        /// Plain TCP instead of mutual TLS (for comparison).
        #[arg(long)]
        plain: bool,
        /// Directory for the manifest (its disk is what is measured); temporary by default.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Scale of one big campaign: submit N runs to a `lem-coord start` process,
    /// SIGKILL it, start it again; prints the time to the first lease, a status
    /// query's time and the restarted coordinator's memory.
    Manifest {
        /// Runs in the campaign (configs x 10 cycles).
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Status queries timed after the restart.
        #[arg(long, default_value_t = 20)]
        status_queries: usize,
        /// Directory for the manifest; temporary by default.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub fn main_impl(cli: Cli) -> Result<(), CliError> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let otlp_endpoint = cli.otlp_endpoint.clone();
    rt.block_on(async move {
        match cli.command {
            Command::Start {
                listen,
                data_dir,
                lease_ttl_secs,
                max_attempts,
                insecure,
                max_connections,
                http,
                http_public,
            } => {
                let opts = StartOptions {
                    lease_ttl_secs,
                    max_attempts,
                    insecure,
                    max_connections,
                    http: crate::http_flag(&http),
                    http_public,
                };
                start(&listen, &data_dir, &opts).await
            }
            Command::Token {
                action: TokenAction::Create { data_dir, ttl },
            } => token_create(&data_dir, &ttl),
            Command::Submit {
                study,
                allow_large_grid,
                force_cold_start,
                wait,
                interval,
                connect,
            } => {
                let wait = wait.then(|| watch_interval(interval)).transpose()?;
                submit(
                    &study,
                    allow_large_grid,
                    force_cold_start,
                    wait,
                    &connect.endpoint()?,
                )
                .await
            }
            Command::Status {
                campaign,
                json,
                watch,
                interval,
                connect,
            } => match (campaign, watch) {
                (Some(id), true) => {
                    let interval = watch_interval(interval)?;
                    let ep = connect.endpoint()?;
                    let s = watch_campaign(&ep, id, interval).await?;
                    print_status_detail(&s);
                    campaign_outcome(&s)
                }
                _ => status(campaign, json, &connect.endpoint()?).await,
            },
            Command::Results {
                action:
                    Some(ResultsAction::Validate {
                        campaign,
                        json,
                        connect,
                    }),
                ..
            } => results_validate(campaign, json, &connect.endpoint()?).await,
            Command::Results {
                campaign,
                format,
                output,
                study,
                aggregate,
                connect,
                action: None,
            } => {
                let campaign = campaign.expect("clap requires a campaign without a subcommand");
                results(
                    campaign,
                    format,
                    output.as_deref(),
                    study.as_deref(),
                    aggregate,
                    &connect.endpoint()?,
                )
                .await
            }
            Command::Report {
                campaign,
                output,
                run,
                connect,
            } => {
                let output =
                    output.unwrap_or_else(|| PathBuf::from(format!("report-{campaign}.html")));
                report(campaign, &output, run.as_deref(), &connect.endpoint()?).await
            }
            Command::Summary {
                campaign,
                json,
                connect,
            } => analysis::summary(campaign, json, &connect.endpoint()?).await,
            Command::Compare {
                a,
                b,
                json,
                connect,
            } => analysis::compare(&a, &b, json, &connect.endpoint()?).await,
            Command::Cancel { campaign, connect } => cancel(campaign, &connect.endpoint()?).await,
            Command::Retry {
                campaign,
                failed: _,
                connect,
            } => retry(campaign, &connect.endpoint()?).await,
            Command::Workers { json, connect } => workers(json, &connect.endpoint()?).await,
            Command::Backup { out, connect } => crate::backup::backup(&out, &connect).await,
            Command::Grid {
                study,
                json,
                library_defaults,
                allow_large_grid,
            } => grid(&study, json, library_defaults, allow_large_grid),
            Command::SlurmScript(args) => crate::slurm::main(&args),
            Command::Bench { what } => bench(what).await,
            Command::Run {
                study,
                local_workers,
                data_dir,
                simulate_gpu,
                python,
                allow_large_grid,
                gpu_groups,
                runtime,
                image,
                new,
                http,
                http_public,
            } => {
                let runtime = match runtime.as_str() {
                    "docker" => LocalRuntime::Docker { image },
                    _ => LocalRuntime::Process,
                };
                let opts = LocalRun {
                    local_workers,
                    simulate_gpu,
                    python,
                    allow_large_grid,
                    gpu_groups,
                    runtime,
                    new,
                    http: crate::http_flag(&http),
                    http_public,
                    otlp_endpoint,
                };
                run(&study, &data_dir, opts).await
            }
        }
    })
}

pub(crate) fn ctx() -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = std::time::Instant::now() + Duration::from_secs(60);
    c
}

pub(crate) async fn connect(ep: &Endpoint) -> Result<CoordinatorClient, CliError> {
    transport::connect(ep).await.map_err(|e| {
        if e.is_unreachable() {
            unreachable_err(e)
        } else {
            CliError {
                code: exit::DENIED,
                error: e.into(),
            }
        }
    })
}

/// Maps a failed call to an error naming the coordinator.
pub(crate) fn rpc<T>(
    ep: &Endpoint,
    r: Result<Result<T, lem_common::rpc::RpcError>, tarpc::client::RpcError>,
) -> Result<T, CliError> {
    use lem_common::rpc::RpcErrorKind;
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(match e.kind {
            RpcErrorKind::InvalidInput => invalid(anyhow!(e.message)),
            RpcErrorKind::Unauthenticated | RpcErrorKind::PermissionDenied => CliError {
                code: exit::DENIED,
                error: anyhow!("the coordinator at {} refused: {}", ep.addr, e.message),
            },
            _ => CliError::from(anyhow!(e.message)),
        }),
        Err(e) => {
            // A plain client whose connection is dropped may be talking to a
            // coordinator that wants TLS and closed it; say what to try.
            let hint = if matches!(ep.security, transport::Security::Plain) {
                " (if the coordinator requires TLS, pass --credentials FILE or --data-dir DIR)"
            } else {
                ""
            };
            Err(unreachable_err(anyhow!(
                "the coordinator at {} did not answer: {e}{hint}",
                ep.addr
            )))
        }
    }
}

/// The error for a campaign id the coordinator does not have.
fn no_such_campaign(ep: &Endpoint, campaign: u64) -> CliError {
    invalid(anyhow!(
        "campaign {campaign} does not exist on this coordinator ({}); `lem-coord status` lists campaigns",
        ep.addr
    ))
}

/// [`rpc`] for a call about one campaign: a campaign that does not exist is an
/// error naming it (exit 2).
fn campaign_rpc<T>(
    ep: &Endpoint,
    campaign: u64,
    r: Result<Result<T, lem_common::rpc::RpcError>, tarpc::client::RpcError>,
) -> Result<T, CliError> {
    match r {
        Ok(Err(e)) if e.kind == RpcErrorKind::NotFound => Err(no_such_campaign(ep, campaign)),
        r => rpc(ep, r),
    }
}

/// A campaign's status; an error naming the campaign if the coordinator does not
/// have it.
pub(crate) async fn fetch_status(
    client: &CoordinatorClient,
    ep: &Endpoint,
    campaign: u64,
) -> Result<CampaignStatus, CliError> {
    campaign_rpc(
        ep,
        campaign,
        client.status(ctx(), CampaignId(campaign)).await,
    )
}

/// Every run of a campaign with its result, in execution order; an error naming the
/// campaign if the coordinator does not have it, never an empty list. `results`
/// and the other commands that read a campaign's runs go through here.
pub(crate) async fn fetch_rows(
    client: &CoordinatorClient,
    ep: &Endpoint,
    campaign: u64,
) -> Result<Vec<RunRow>, CliError> {
    let rows = campaign_rpc(ep, campaign, client.runs(ctx(), CampaignId(campaign)).await)?;
    if rows.is_empty() {
        // A coordinator from before `runs` refused unknown campaigns answers an
        // empty list: tell that apart from a campaign without runs.
        fetch_status(client, ep, campaign).await?;
    }
    Ok(rows)
}

/// Reads and expands a study locally (errors name file, line and key), after printing
/// and checking its grid size; the compact plan, so a 1,000,000-run study costs
/// about 200 MB here, not the ~15 GB of a config tree per run.
fn read_study(path: &Path, allow_large_grid: bool) -> Result<(StudySource, CompactPlan), CliError> {
    let src = StudySource::read(path).map_err(invalid)?;
    crate::service::check_study_size(&src).map_err(|m| invalid(anyhow!(m)))?;
    let opts = PlanOptions::default();
    grid_size_preflight(path, &src, &opts, allow_large_grid)?;
    let plan = study::plan_compact(&src, &opts).map_err(invalid)?;
    crate::service::check_fleet_support(&src.path, &plan.configs)
        .map_err(|m| invalid(anyhow!(m)))?;
    Ok((src, plan))
}

/// `lem-coord start`'s settings beyond where it listens and keeps its data.
pub struct StartOptions {
    pub lease_ttl_secs: u64,
    pub max_attempts: u32,
    pub insecure: bool,
    pub max_connections: usize,
    /// `--http`: where to serve the status page and metrics (`None`: off).
    pub http: Option<String>,
    pub http_public: bool,
}

async fn start(listen: &str, data_dir: &Path, opts: &StartOptions) -> Result<(), CliError> {
    // A file-size limit (RLIMIT_FSIZE) is a full disk by another name: let the write
    // fail with an error the store reports, rather than the signal killing us.
    // SAFETY: setting a signal's disposition to "ignore" at start-up, before any thread
    // of ours could be relying on it.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let store = Store::open(data_dir).map_err(|e| CliError {
        code: exit::FAILURE,
        error: e.into(),
    })?;
    let (pki, created) = Pki::load_or_create(data_dir)?;
    if created {
        eprintln!(
            "made this coordinator's CA, its certificate and the admin credential in {} (keep that directory private)",
            pki.dir.display()
        );
    }
    let policy = LeasePolicy {
        ttl_ms: opts.lease_ttl_secs.max(1) * 1000,
        max_attempts: opts.max_attempts.max(1),
    };
    if opts.max_connections < 2 {
        return Err(invalid(anyhow!("--max-connections must be at least 2")));
    }
    let mut limits = Limits {
        max_connections: opts.max_connections,
        ..Default::default()
    };
    limits.max_unauthenticated = limits.max_unauthenticated.min(opts.max_connections / 2);
    let coordinator = Setup {
        listen: listen.to_string(),
        store,
        policy,
        max_batch: crate::group_commit::DEFAULT_MAX_BATCH,
        pki: Some(pki),
        tls: true,
        plain: PlainTcp::LoopbackOnly {
            insecure: opts.insecure,
        },
        limits,
        http: opts.http.as_ref().map(|addr| HttpSetup {
            addr: addr.clone(),
            public: opts.http_public,
        }),
        addr_dir: data_dir.to_path_buf(),
    }
    .bind()
    .await
    .map_err(bind_error)?;
    let plain_note = if coordinator.plain_served {
        "TLS, and plain TCP"
    } else {
        "TLS only"
    };
    eprintln!(
        "lem-coord listening on {}, {plain_note} (data dir {})",
        coordinator.addr,
        data_dir.display()
    );
    if let Some(bound) = coordinator.http_addr {
        eprintln!("status page on http://{bound}/ and Prometheus metrics on http://{bound}/metrics (read-only)");
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: no new leases");
    };
    coordinator.serve(shutdown).await?;
    Ok(())
}

/// Maps why the coordinator could not bind to an exit status: an `--http` address
/// that is not loopback without `--http-public` is bad input (exit 2).
fn bind_error(e: BindError) -> CliError {
    match e {
        e @ BindError::Http(HttpBindError::NotLoopback { .. }) => invalid(e),
        e => CliError::from(anyhow::Error::from(e)),
    }
}

async fn bench(what: BenchCommand) -> Result<(), CliError> {
    match what {
        BenchCommand::Leases {
            workers,
            seconds,
            warmup_secs,
            runs,
            max_batch,
            plain,
            data_dir,
        } => {
            if workers == 0 || seconds <= 0.0 {
                return Err(invalid(anyhow!("--workers and --seconds must be positive")));
            }
            let opts = crate::bench::LeaseBench {
                workers,
                seconds,
                warmup_s: warmup_secs.max(0.0),
                runs,
                max_batch: max_batch.max(1),
                tls: !plain,
                data_dir,
            };
            let r = crate::bench::leases(&opts).await?;
            println!(
                "workers={workers} seconds={:.1} pairs={} tls={} max_batch={} mean_batch={:.1} max_ms={:.2}",
                r.seconds, r.pairs, !plain, opts.max_batch, r.mean_batch, r.max_ms
            );
            println!(
                "leases_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
                r.leases_per_s, r.p50_ms, r.p99_ms
            );
            Ok(())
        }
        BenchCommand::Manifest {
            runs,
            status_queries,
            data_dir,
        } => {
            let opts = crate::bench::ManifestBench {
                runs,
                data_dir,
                status_queries,
            };
            let r = crate::bench::manifest(&opts).await?;
            println!(
                "runs={} submit_s={:.1} submit_peak_rss_mb={:.0} manifest_mb={:.0} status_max_ms={:.2} peak_rss_mb={:.0}",
                r.runs, r.submit_s, r.submit_peak_rss_mb, r.manifest_mb, r.status_max_ms, r.peak_rss_mb
            );
            println!(
                "restart_to_first_lease_s={:.2} status_ms={:.2} rss_mb={:.0}",
                r.restart_to_first_lease_s, r.status_p50_ms, r.rss_mb
            );
            Ok(())
        }
    }
}

fn token_create(data_dir: &Path, ttl: &str) -> Result<(), CliError> {
    let ttl_s = lem_common::token::parse_ttl(ttl).map_err(|m| invalid(anyhow!(m)))?;
    let pki = Pki::load(data_dir).map_err(invalid)?;
    let now_s = now_ms() / 1000;
    let token = pki.create_token(ttl_s, now_s);
    println!("{token}");
    eprintln!(
        "join token valid for {ttl}, until {}; on each GPU host: lem-worker join --coordinator HEAD:PORT --token TOKEN --data-dir DIR",
        format_utc_ms((now_s + ttl_s) * 1000)
    );
    Ok(())
}

fn print_plan_summary(path: &Path, plan: &CompactPlan) {
    eprintln!(
        "{}: {} config(s), {} run(s), {} skipped",
        path.display(),
        plan.n_configs,
        plan.runs.len(),
        plan.skipped.len()
    );
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
}

async fn submit(
    path: &Path,
    allow_large_grid: bool,
    force_cold_start: bool,
    wait: Option<Duration>,
    addr: &Endpoint,
) -> Result<(), CliError> {
    let (src, plan) = read_study(path, allow_large_grid)?;
    print_plan_summary(path, &plan);
    let client = connect(addr).await?;
    let reply = rpc(
        addr,
        client
            .submit(
                ctx(),
                SubmitRequest {
                    path: src.path.clone(),
                    text: src.text.clone(),
                    base: src.base.clone(),
                    force_cold_start,
                },
            )
            .await,
    )?;
    println!("{}", reply.campaign);
    let Some(interval) = wait else {
        return Ok(());
    };
    // Standard output stays the campaign id alone (scripts read its last line); the
    // progress and the final status go to standard error.
    std::io::stdout().flush()?;
    let s = watch_campaign(addr, reply.campaign.0, interval).await?;
    for line in status_detail_lines(&s) {
        eprintln!("{line}");
    }
    campaign_outcome(&s)
}

/// `--interval SECS` as a duration: at least 0.1 s.
fn watch_interval(secs: f64) -> Result<Duration, CliError> {
    if !secs.is_finite() || secs < 0.1 {
        return Err(invalid(anyhow!(
            "--interval must be at least 0.1 (seconds), not {secs}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How long a watch goes on asking a coordinator that does not answer.
const WATCH_UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);

/// Watches campaign `id` until nothing is left to run, drawing its progress on
/// stderr ([`LiveView`]); returns its last status. Ctrl-C (or SIGTERM) stops the
/// watch, never the campaign: exit 130. A coordinator that stops answering is asked
/// again for up to a minute (a restart), then the watch gives up.
async fn watch_campaign(
    ep: &Endpoint,
    id: u64,
    interval: Duration,
) -> Result<CampaignStatus, CliError> {
    let mut interrupts = Interrupts::new().context("cannot handle SIGINT and SIGTERM")?;
    let mut client = connect(ep).await?;
    let mut view = LiveView::new(std::io::stderr().is_terminal());
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        match fetch_status(&client, ep, id).await {
            Ok(s) => {
                unreachable_since = None;
                view.update(&s);
                if live::is_over(&s) {
                    view.finish();
                    return Ok(s);
                }
            }
            Err(e) if e.code == exit::UNREACHABLE => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    view.println(&format!(
                        "the coordinator at {} did not answer; asking again for {} s",
                        ep.addr,
                        WATCH_UNREACHABLE_LIMIT.as_secs()
                    ));
                    std::time::Instant::now()
                });
                if since.elapsed() > WATCH_UNREACHABLE_LIMIT {
                    return Err(e);
                }
                if let Ok(c) = connect(ep).await {
                    client = c;
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            sig = interrupts.recv() => {
                view.finish();
                return Err(interrupted(anyhow!(
                    "stopped watching campaign {id} ({sig}); the campaign goes on (`lem-coord status {id} --watch` watches it again)"
                )));
            }
        }
    }
}

/// A watched campaign's exit: success when every run is done; a failure when any
/// run failed or the campaign was cancelled.
fn campaign_outcome(s: &CampaignStatus) -> Result<(), CliError> {
    let id = s.campaign;
    if s.state == "cancelled" {
        return Err(CliError::from(anyhow!(
            "campaign {id} was cancelled ({} of {} run(s) done)",
            s.done,
            s.total
        )));
    }
    if s.failed > 0 {
        return Err(CliError::from(anyhow!(
            "campaign {id}: {} run(s) failed (`lem-coord results {id}` has each failure; `lem-coord retry {id}` runs them again)",
            s.failed
        )));
    }
    Ok(())
}

fn status_line(s: &CampaignStatus) -> String {
    format!(
        "campaign {:<4} {:<24} {:<22} total {:>5}  pending {:>5}  running {:>3}  done {:>5}  failed {:>3}",
        s.campaign,
        s.study_name.as_deref().unwrap_or("-"),
        s.state,
        s.total,
        s.pending,
        s.running,
        s.done,
        s.failed
    )
}

/// One campaign in full: its counts, its runs per engine (when it has more than
/// one engine), the blocked reasons summarised, the recent failures.
fn status_detail_lines(s: &CampaignStatus) -> Vec<String> {
    let mut out = vec![status_line(s)];
    if s.cancelled > 0 {
        out.push(format!("  cancelled runs: {}", s.cancelled));
    }
    if s.duplicates > 0 {
        out.push(format!(
            "  duplicate results kept (not counted): {}",
            s.duplicates
        ));
    }
    if s.engines.len() > 1 {
        out.extend(live::engine_lines(s));
    }
    out.extend(live::blocked_lines(s));
    for f in &s.recent_failures {
        out.push(format!("  failed: {f}"));
    }
    out
}

fn print_status_detail(s: &CampaignStatus) {
    for line in status_detail_lines(s) {
        println!("{line}");
    }
}

async fn status(campaign: Option<u64>, json: bool, addr: &Endpoint) -> Result<(), CliError> {
    let client = connect(addr).await?;
    match campaign {
        Some(id) => {
            let s = fetch_status(&client, addr, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status_detail(&s);
            }
        }
        None => {
            let all = rpc(addr, client.campaigns(ctx()).await)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no campaigns (submit one with `lem-coord submit STUDY`)");
            } else {
                for s in &all {
                    println!("{}", status_line(s));
                }
            }
        }
    }
    Ok(())
}

fn render(rows: &[RunRow], format: ResultsFormat, aggregate: bool) -> Result<Vec<u8>, CliError> {
    let table = || {
        if aggregate {
            export::Table::aggregate(&lem_common::aggregate::aggregate_rows(rows))
        } else {
            export::Table::runs(rows)
        }
    };
    match format {
        ResultsFormat::Jsonl => Ok(table().to_jsonl().into_bytes()),
        ResultsFormat::Csv => Ok(table().to_csv().into_bytes()),
        ResultsFormat::Timeseries => Ok(export::timeseries_jsonl(rows).into_bytes()),
        ResultsFormat::Parquet => Ok(parquet_export::table_to_parquet(&table())?),
        ResultsFormat::Llem => Err(invalid(anyhow!(
            "--format llem writes a directory, not one file: give --output DIR"
        ))),
    }
}

async fn results(
    campaign: u64,
    format: ResultsFormat,
    output: Option<&Path>,
    study: Option<&Path>,
    aggregate: bool,
    addr: &Endpoint,
) -> Result<(), CliError> {
    if aggregate && matches!(format, ResultsFormat::Timeseries | ResultsFormat::Llem) {
        return Err(invalid(anyhow!(
            "--aggregate writes jsonl, csv or parquet (one row per configuration), not --format {}",
            format
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        )));
    }
    if study.is_some() && !matches!(format, ResultsFormat::Llem) {
        return Err(invalid(anyhow!(
            "--study is only used with --format llem (it is copied into the bundle's _study-artefacts)"
        )));
    }
    if let ResultsFormat::Llem = format {
        let Some(dir) = output else {
            return Err(invalid(anyhow!(
                "--format llem writes llem's study layout into a directory: give --output DIR"
            )));
        };
        let study_text = match study {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the study file {}", p.display()))
                    .map_err(invalid)?,
            ),
            None => None,
        };
        let client = connect(addr).await?;
        let status = fetch_status(&client, addr, campaign).await?;
        let rows = fetch_rows(&client, addr, campaign).await?;
        let info = llem_export::CampaignInfo {
            campaign,
            study_name: status.study_name.clone(),
            study_design_hash: status.study_design_hash.clone(),
            submitted_at: status.submitted_at.clone(),
            state: status.state.clone(),
            study_text,
        };
        let summary = llem_export::write_bundle(dir, &info, &rows)?;
        eprintln!(
            "wrote manifest.json and {} run bundle(s) to {}; {} run(s) without a result are listed in the manifest only",
            summary.runs_written,
            dir.display(),
            summary.without_result
        );
        if !summary.wrote_study_config {
            eprintln!("note: _study-artefacts/study_config.yaml not written (pass --study FILE to include the study file)");
        }
        return Ok(());
    }
    if matches!(format, ResultsFormat::Parquet)
        && output.is_none()
        && std::io::stdout().is_terminal()
    {
        return Err(invalid(anyhow!(
            "parquet is a binary format: give --output FILE (or redirect standard output)"
        )));
    }
    let client = connect(addr).await?;
    let rows = fetch_rows(&client, addr, campaign).await?;
    let bytes = render(&rows, format, aggregate)?;
    match output {
        Some(p) => {
            parquet_export::write_atomic_bytes(p, &bytes)?;
            if aggregate {
                let configs: std::collections::BTreeSet<&str> =
                    rows.iter().map(|r| r.config_hash.as_str()).collect();
                eprintln!(
                    "wrote {} configuration(s) ({} run(s)) to {}",
                    configs.len(),
                    rows.len(),
                    p.display()
                );
            } else {
                eprintln!("wrote {} run(s) to {}", rows.len(), p.display());
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
        }
    }
    Ok(())
}

async fn report(
    campaign: u64,
    output: &Path,
    run: Option<&str>,
    addr: &Endpoint,
) -> Result<(), CliError> {
    let client = connect(addr).await?;
    // Both fail with an error naming the campaign when the coordinator has no such one.
    let status = fetch_status(&client, addr, campaign).await?;
    let rows = fetch_rows(&client, addr, campaign).await?;
    let generated_at = format_utc_ms(now_ms());
    let html = crate::report::render(&crate::report::ReportInput {
        campaign,
        status: &status,
        rows: &rows,
        timeline_run: run,
        generated_at: &generated_at,
    })
    .map_err(invalid)?;
    write_atomic(output, &html)?;
    eprintln!(
        "wrote the report of campaign {campaign} ({} run(s)) to {}",
        rows.len(),
        output.display()
    );
    Ok(())
}

async fn results_validate(campaign: u64, json: bool, addr: &Endpoint) -> Result<(), CliError> {
    let client = connect(addr).await?;
    // An error naming the campaign when the coordinator has no such one.
    let rows = fetch_rows(&client, addr, campaign).await?;
    let v = crate::validation::CampaignValidation::new(campaign, &rows);
    if json {
        println!("{}", serde_json::to_string_pretty(&v.to_json())?);
    } else {
        print!("{}", v.to_text());
    }
    if v.verdict() == lem_common::validate::Verdict::Fail {
        return Err(CliError::from(anyhow!(
            "campaign {campaign} failed validation (see above)"
        )));
    }
    Ok(())
}

/// Past this many configs, `grid` (and `submit`/`run`) warn that the grid is large.
pub const GRID_WARN_CONFIGS: usize = 100;
/// Past this many configs they refuse unless `--allow-large-grid` is given.
pub const GRID_LIMIT_CONFIGS: usize = 10_000;

/// Checks a grid's size (raw configs before validation) against the limits: `Err`
/// with a message naming the count and `--allow-large-grid` past
/// [`GRID_LIMIT_CONFIGS`] unless `allow`; a warning on stderr past
/// [`GRID_WARN_CONFIGS`].
pub fn check_grid_size(n_configs: usize, allow: bool) -> Result<(), String> {
    if n_configs > GRID_LIMIT_CONFIGS && !allow {
        return Err(format!(
            "the grid expands to {n_configs} configs, more than the limit of {GRID_LIMIT_CONFIGS}; check the sweep for an unintended axis, or pass --allow-large-grid to go on"
        ));
    }
    if n_configs > GRID_WARN_CONFIGS {
        eprintln!(
            "warning: the grid expands to {n_configs} configs (more than {GRID_WARN_CONFIGS}); each runs n_cycles times"
        );
    }
    Ok(())
}

/// Prints a study's grid size, counted before expansion, and applies
/// [`check_grid_size`]; returns the count.
pub fn grid_size_preflight(
    path: &Path,
    src: &StudySource,
    opts: &PlanOptions,
    allow: bool,
) -> Result<usize, CliError> {
    let n = study::count_before_expansion(src, opts).map_err(invalid)?;
    eprintln!(
        "{}: grid of {n} config(s) before validation",
        path.display()
    );
    check_grid_size(n, allow).map_err(|m| invalid(anyhow!(m)))?;
    Ok(n)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn cancel(campaign: u64, addr: &Endpoint) -> Result<(), CliError> {
    let client = connect(addr).await?;
    let s = campaign_rpc(
        addr,
        campaign,
        client.cancel(ctx(), CampaignId(campaign)).await,
    )?;
    print_status_detail(&s);
    Ok(())
}

async fn retry(campaign: u64, addr: &Endpoint) -> Result<(), CliError> {
    let client = connect(addr).await?;
    let s = campaign_rpc(
        addr,
        campaign,
        client.retry(ctx(), CampaignId(campaign)).await,
    )?;
    print_status_detail(&s);
    Ok(())
}

async fn workers(json: bool, addr: &Endpoint) -> Result<(), CliError> {
    let client = connect(addr).await?;
    let ws = rpc(addr, client.workers(ctx()).await)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ws)?);
        return Ok(());
    }
    if ws.is_empty() {
        println!("no workers registered");
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(vec![
            "worker",
            "host",
            "state",
            "last seen",
            "slots",
            "engines",
            "leases",
            "done",
        ]);
    let (mut up, mut down) = (0, 0);
    // Connected first, then by name.
    let mut ws = ws;
    ws.sort_by(|a, b| {
        b.connected
            .cmp(&a.connected)
            .then(a.worker.0.cmp(&b.worker.0))
    });
    for w in ws {
        if w.connected {
            up += 1;
        } else {
            down += 1;
        }
        let engines: Vec<String> = w
            .engines
            .iter()
            .map(|e| {
                if e.available {
                    e.engine.clone()
                } else {
                    format!("-{}", e.engine)
                }
            })
            .collect();
        let gpus: Vec<String> = w
            .slots
            .iter()
            .map(|s| {
                let group = if s.dynamic {
                    format!(
                        " dynamic pool of GPUs {}",
                        lem_common::gpus::cuda_visible_devices(&s.gpus)
                    )
                } else if s.gpus.len() > 1 {
                    format!(" GPUs {}", lem_common::gpus::cuda_visible_devices(&s.gpus))
                } else {
                    String::new()
                };
                if s.simulated {
                    format!("{}:simulated{group}", s.index)
                } else {
                    format!("{}:{}{group}", s.index, s.gpu_name)
                }
            })
            .collect();
        table.add_row(vec![
            w.worker.0.clone(),
            w.host.clone(),
            if w.connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_string(),
            format!("{:.0}s ago", w.last_seen_s_ago),
            gpus.join(", "),
            engines.join(" "),
            w.leases_held.to_string(),
            w.runs_done.to_string(),
        ]);
    }
    println!("{table}");
    println!("{up} connected, {down} disconnected (engines marked - are not available there)");
    Ok(())
}

fn grid(
    path: &Path,
    json: bool,
    library_defaults: bool,
    allow_large_grid: bool,
) -> Result<(), CliError> {
    let src = StudySource::read(path).map_err(invalid)?;
    let opts = PlanOptions { library_defaults };
    grid_size_preflight(path, &src, &opts, allow_large_grid)?;
    if json {
        let v = study::plan(&src, &opts).map_err(invalid)?.to_oracle_json();
        let text = lem_common::pyjson::dumps(
            &v,
            &lem_common::pyjson::DumpOptions {
                indent: Some(1),
                ..Default::default()
            },
        );
        println!("{text}");
        return Ok(());
    }
    let plan = study::plan_compact(&src, &opts).map_err(invalid)?;
    let mut per_engine: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for r in &plan.runs {
        let c = &plan.configs[r.config as usize];
        let e = per_engine.entry(c.engine.as_str()).or_default();
        e.1 += 1;
        if seen.insert(&c.config_hash) {
            e.0 += 1;
        }
    }
    println!(
        "{}: {} config(s), {} run(s), {} skipped",
        path.display(),
        plan.n_configs,
        plan.runs.len(),
        plan.skipped.len()
    );
    for (e, (c, r)) in &per_engine {
        println!("  {e:<12} {c} config(s), {r} run(s)");
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
    if !plan.skipped.is_empty() {
        println!("skipped:");
        for s in &plan.skipped {
            println!("  {}", s.reason);
        }
    }
    println!("runs (execution order):");
    for (i, r) in plan.runs.iter().enumerate() {
        let c = &plan.configs[r.config as usize];
        println!(
            "  {:>4}  {}  cycle {}  {}{}",
            i + 1,
            c.config_hash,
            r.cycle,
            c.engine,
            if r.gap_before_seconds > 0.0 {
                format!("  (gap {:.0} s before)", r.gap_before_seconds)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Simulated GPUs a local worker with `--gpu-groups spec` gets: `asked`, or more if
/// the groups name a higher index.
fn simulated_gpus_for(spec: &str, asked: u32) -> u32 {
    let highest = spec
        .split([';', ','])
        .filter_map(|t| t.trim().parse::<u32>().ok())
        .max()
        .map_or(0, |i| i + 1);
    asked.max(highest).max(1)
}

/// `lem-coord run`'s settings beyond the study and the data dir.
pub struct LocalRun {
    pub local_workers: u32,
    pub simulate_gpu: bool,
    pub python: String,
    pub allow_large_grid: bool,
    pub gpu_groups: Option<String>,
    pub runtime: LocalRuntime,
    /// Submit a new campaign even if an unfinished one of the study is there.
    pub new: bool,
    /// `--http`: where to serve the status page and metrics (`None`: off).
    pub http: Option<String>,
    pub http_public: bool,
    /// `--otlp-endpoint`: the local workers export their spans there too.
    pub otlp_endpoint: Option<String>,
}

/// A campaign of `run`'s data dir, as `run` weighs it.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownCampaign {
    pub id: u64,
    pub study_name: Option<String>,
    /// Submitted from the same study: the same text, design hash and number of runs.
    pub same_study: bool,
    pub cancelled: bool,
    pub total: u64,
    pub done: u64,
    /// Runs not finished: pending, or leased (by workers of an earlier `run` that
    /// stopped without handing them back).
    pub left: u64,
}

/// What `run` does with the campaigns its data dir already holds.
#[derive(Debug, Default, PartialEq)]
pub struct LocalPlan {
    /// The unfinished campaign of this study to resume (the newest), unless `--new`.
    pub resume: Option<KnownCampaign>,
    /// Unfinished campaigns of this study to cancel (`--new`: a new one replaces them).
    pub cancel: Vec<KnownCampaign>,
    /// The newest finished campaign of this study, when a new one is submitted
    /// (the user is told: a finished campaign is measured anew, not resumed).
    pub finished_before: Option<KnownCampaign>,
    /// Unfinished campaigns left as they are: other studies', and older ones of
    /// this study besides the one resumed. `run` runs only its own campaign.
    pub left_alone: Vec<KnownCampaign>,
}

/// Chooses what `run` does with the campaigns of its data dir: resume the newest
/// unfinished, not cancelled campaign of the same study; with `new`, cancel every
/// such campaign and submit a new one. A finished campaign is never resumed: the
/// study is measured again in a new campaign. Pure.
pub fn plan_local_run(known: &[KnownCampaign], new: bool) -> LocalPlan {
    let mut plan = LocalPlan::default();
    let mut unfinished: Vec<&KnownCampaign> = known
        .iter()
        .filter(|c| c.same_study && !c.cancelled && c.left > 0)
        .collect();
    unfinished.sort_by_key(|c| std::cmp::Reverse(c.id));
    if new {
        plan.cancel = unfinished.iter().map(|c| (*c).clone()).collect();
    } else if let Some((newest, older)) = unfinished.split_first() {
        plan.resume = Some((*newest).clone());
        plan.left_alone.extend(older.iter().map(|c| (*c).clone()));
    }
    if plan.resume.is_none() {
        plan.finished_before = known
            .iter()
            .filter(|c| c.same_study && !c.cancelled && c.left == 0)
            .max_by_key(|c| c.id)
            .cloned();
    }
    plan.left_alone.extend(
        known
            .iter()
            .filter(|c| !c.same_study && !c.cancelled && c.left > 0)
            .cloned(),
    );
    plan.left_alone.sort_by_key(|c| c.id);
    plan
}

/// The campaigns of a manifest as [`plan_local_run`] weighs them against the study
/// `src` (planned as `plan`).
fn known_campaigns(
    store: &Store,
    src: &StudySource,
    plan: &CompactPlan,
) -> Result<Vec<KnownCampaign>, CliError> {
    let mut out = Vec::new();
    for c in store.campaigns()? {
        let counts = store.counts(c.id)?;
        let same_study = c.study_design_hash == plan.study_design_hash
            && counts.total() == plan.runs.len() as u64
            && store.study_text(c.id)? == src.text;
        out.push(KnownCampaign {
            id: c.id.0,
            study_name: c.study_name,
            same_study,
            cancelled: c.cancelled,
            total: counts.total(),
            done: counts.done,
            left: counts.pending + counts.leased,
        });
    }
    Ok(out)
}

/// The command line that resumes a `lem-coord run` given `args` (after the program
/// name): the same arguments, quoted for a POSIX shell where needed, without `--new`
/// (which would cancel the campaign to resume).
pub fn resume_command(args: impl IntoIterator<Item = String>) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./=:,@%+-".contains(c);
    let mut out = vec!["lem-coord".to_string()];
    for a in args {
        if a == "--new" {
            continue;
        }
        if !a.is_empty() && a.chars().all(plain) {
            out.push(a);
        } else {
            out.push(format!("'{}'", a.replace('\'', "'\\''")));
        }
    }
    out.join(" ")
}

/// How a local run's watch ended.
enum LocalEnd {
    /// Nothing left to run.
    Finished,
    /// SIGINT or SIGTERM (its name).
    Interrupted(&'static str),
}

/// How long `run`'s campaign may stay blocked with nothing running (its local
/// workers start, or cannot run it) before `run` gives up, saying why.
const LOCAL_BLOCKED_GRACE: Duration = Duration::from_secs(10);

/// How long `run` waits for its local workers to stop (they hand back the runs in
/// progress, so this is the time to stop their harnesses).
const LOCAL_WORKERS_STOP: Duration = Duration::from_secs(60);

async fn run(path: &Path, data_dir: &Path, opts: LocalRun) -> Result<(), CliError> {
    let (src, plan) = read_study(path, opts.allow_large_grid)?;
    print_plan_summary(path, &plan);
    if opts.local_workers == 0 {
        return Err(invalid(anyhow!("--local-workers must be at least 1")));
    }
    let simulate = if opts.simulate_gpu {
        eprintln!("using the SIMULATED GPU (--simulate-gpu): results are labelled simulated: true");
        true
    } else if !crate::local::nvidia_gpu_present() {
        eprintln!("no NVIDIA GPU found on this machine: using the SIMULATED GPU; results are labelled simulated: true");
        true
    } else {
        false
    };
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let store = Store::open(&data_dir.join("coordinator"))?;
    let local = plan_local_run(&known_campaigns(&store, &src, &plan)?, opts.new);
    let mut setup = Setup::plain("127.0.0.1:0", store, &data_dir.join("coordinator"));
    setup.http = opts.http.as_ref().map(|addr| HttpSetup {
        addr: addr.clone(),
        public: opts.http_public,
    });
    let coordinator = setup.bind().await.map_err(bind_error)?;
    if let Some(bound) = coordinator.http_addr {
        eprintln!("status page: http://{bound}/ (metrics at http://{bound}/metrics)");
    }
    let ep = Endpoint::plain(&coordinator.addr.to_string());
    let coordinator = coordinator.spawn();
    let shared = coordinator.shared.clone();
    // From here on SIGINT and SIGTERM stop the run cleanly instead of ending the
    // process.
    let mut interrupts = Interrupts::new().context("cannot handle SIGINT and SIGTERM")?;
    let outcome = async {
        let client = connect(&ep).await?;
        let id = choose_campaign(&client, &ep, &src, data_dir, &local).await?;
        // The local workers run this campaign only, whatever else the manifest holds.
        shared.lease_only(CampaignId(id));
        let outcome =
            run_local_workers(&ep, &client, id, data_dir, simulate, &opts, &mut interrupts).await;
        Ok::<_, CliError>((client, id, outcome))
    }
    .await;
    let result = match outcome {
        Err(e) => Err(e),
        Ok((client, id, outcome)) => finish_local_run(&client, &ep, id, data_dir, outcome).await,
    };
    drop(shared);
    let _ = coordinator.stop().await;
    result
}

/// Resumes the campaign `local` chose, or cancels the ones it replaces and submits
/// a new one; says which. Returns the campaign's id.
async fn choose_campaign(
    client: &CoordinatorClient,
    ep: &Endpoint,
    src: &StudySource,
    data_dir: &Path,
    local: &LocalPlan,
) -> Result<u64, CliError> {
    for c in &local.left_alone {
        eprintln!(
            "note: campaign {} ({}) in {} is unfinished ({} of {} run(s) left) and is not run now: `lem-coord run` runs one campaign; run its study again to resume it",
            c.id,
            c.study_name.as_deref().unwrap_or("unnamed study"),
            data_dir.display(),
            c.left,
            c.total
        );
    }
    if let Some(c) = &local.resume {
        eprintln!(
            "resuming campaign {} ({} of {} runs left; {} done earlier); --new starts a new campaign instead",
            c.id, c.left, c.total, c.done
        );
        return Ok(c.id);
    }
    for c in &local.cancel {
        campaign_rpc(ep, c.id, client.cancel(ctx(), CampaignId(c.id)).await)?;
        eprintln!(
            "--new: cancelled unfinished campaign {} of this study ({} of {} run(s) were done; what finished is in {})",
            c.id,
            c.done,
            c.total,
            data_dir.join(format!("campaign-{}", c.id)).display()
        );
    }
    if let Some(c) = &local.finished_before {
        eprintln!(
            "campaign {} of this study finished earlier (results in {}); submitting a new campaign to measure it again",
            c.id,
            data_dir.join(format!("campaign-{}", c.id)).display()
        );
    }
    let reply = rpc(
        ep,
        client
            .submit(
                ctx(),
                SubmitRequest {
                    path: src.path.clone(),
                    text: src.text.clone(),
                    base: src.base.clone(),
                    force_cold_start: false,
                },
            )
            .await,
    )?;
    Ok(reply.campaign.0)
}

/// Starts the local workers on campaign `id`, watches it until nothing is left to
/// run, a signal comes or it cannot go on, then stops the workers (each hands back
/// the run it has in progress) and waits for them; a second signal stops waiting.
async fn run_local_workers(
    ep: &Endpoint,
    client: &CoordinatorClient,
    id: u64,
    data_dir: &Path,
    simulate: bool,
    opts: &LocalRun,
    interrupts: &mut Interrupts,
) -> Result<LocalEnd, CliError> {
    // Real GPUs: one local worker with one slot per visible GPU. Several workers would
    // each take the first GPU, and two workers measuring one GPU count each other's
    // power (lem-worker refuses that: worker/src/gpu_claim.rs). Simulated GPUs are
    // each worker's own.
    // With --gpu-groups: one local worker with those groups (on the simulated GPU,
    // with --local-workers simulated GPUs).
    let (local_workers, slots, simulated_gpus) = match (&opts.gpu_groups, simulate) {
        (Some(spec), true) => {
            let n = simulated_gpus_for(spec, opts.local_workers);
            eprintln!("one local worker with {n} simulated GPUs and --gpu-groups {spec}");
            (1, "auto", Some(n))
        }
        (None, true) => (opts.local_workers, "1", None),
        (_, false) => {
            eprintln!(
                "real GPUs: one local worker with one slot per visible GPU or group (CUDA_VISIBLE_DEVICES chooses them; --local-workers counts simulated workers only)"
            );
            (1, "auto", None)
        }
    };
    let bin = crate::local::worker_binary().map_err(CliError::from)?;
    let mut workers = Vec::new();
    for i in 0..local_workers {
        // The same name and data dir each time: a worker of an earlier `run` that was
        // stopped hard left its leases in its journal, and this one reports them at
        // start, so their runs are pending again at once. The embedded
        // coordinator's status page shows them (their power comes with their lease
        // calls); they serve no endpoint of their own.
        let spec = LocalWorkerSpec {
            coordinator: ep.addr.clone(),
            data_dir: data_dir.join(format!("worker-{i}")),
            name: format!("local-{i}"),
            slots: slots.to_string(),
            gpu_groups: opts.gpu_groups.clone(),
            simulated_gpus,
            simulate,
            python: opts.python.clone(),
            runtime: opts.runtime.clone(),
            otlp_endpoint: opts.otlp_endpoint.clone(),
        };
        match LocalWorker::spawn(&bin, &spec) {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop_local_workers(&mut workers, interrupts).await;
                return Err(e.into());
            }
        }
    }
    eprintln!(
        "campaign {id} on {} local worker(s); data in {}",
        workers.len(),
        data_dir.display()
    );
    tracing::info!(bin = %bin.display(), "local workers started");
    let outcome = drive_local_run(ep, client, id, &mut workers, interrupts).await;
    if matches!(outcome, Ok(LocalEnd::Interrupted(_))) {
        eprintln!(
            "stopping the local workers: runs in progress are handed back (Ctrl-C again to stop at once)"
        );
    }
    stop_local_workers(&mut workers, interrupts).await;
    outcome
}

/// Asks every local worker to stop (each hands back the run it has in progress) and
/// waits for them; a second signal, or [`LOCAL_WORKERS_STOP`], kills them instead.
async fn stop_local_workers(workers: &mut [LocalWorker], interrupts: &mut Interrupts) {
    for w in workers.iter() {
        w.terminate();
    }
    let all = futures::future::join_all(workers.iter_mut().map(|w| w.wait()));
    let killed = tokio::select! {
        r = tokio::time::timeout(LOCAL_WORKERS_STOP, all) => r.is_err(),
        sig = interrupts.recv() => {
            eprintln!("{sig} again: stopping at once; the runs in progress are in the workers' journals and run again when the same command runs");
            true
        }
    };
    if killed {
        for w in workers.iter_mut() {
            w.kill().await;
        }
    }
}

/// Watches campaign `id` while the local workers run it: until nothing is left to
/// run, a signal comes, a worker stops, or the campaign is blocked for good.
async fn drive_local_run(
    ep: &Endpoint,
    client: &CoordinatorClient,
    id: u64,
    workers: &mut [LocalWorker],
    interrupts: &mut Interrupts,
) -> Result<LocalEnd, CliError> {
    let mut view = LiveView::new(std::io::stderr().is_terminal());
    let mut blocked_since: Option<tokio::time::Instant> = None;
    loop {
        // A worker that failed to start is fatal: say why instead of waiting forever.
        for w in workers.iter_mut() {
            if let Some(status) = w.exited() {
                let msg = if status.success() {
                    format!("the local worker {} stopped unexpectedly", w.name)
                } else {
                    format!(
                        "the local worker {} failed ({status}); its error is above",
                        w.name
                    )
                };
                view.finish();
                return Err(CliError::from(anyhow!(msg)));
            }
        }
        let mut s = fetch_status(client, ep, id).await?;
        if live::is_over(&s) {
            view.update(&s);
            view.finish();
            return Ok(LocalEnd::Finished);
        }
        if !s.blocked.is_empty() && s.running == 0 {
            let since = *blocked_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > LOCAL_BLOCKED_GRACE {
                view.update(&s);
                view.finish();
                let reasons: Vec<String> = s.blocked.iter().map(|b| b.reason.clone()).collect();
                return Err(CliError::from(anyhow!(
                    "campaign {id} cannot finish: {}",
                    reasons.join("; ")
                )));
            }
            // The local workers are starting (or registering again): not worth
            // a word yet.
            s.blocked.clear();
            s.state = "running".into();
        } else {
            blocked_since = None;
        }
        view.update(&s);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            sig = interrupts.recv() => {
                view.finish();
                return Ok(LocalEnd::Interrupted(sig));
            }
        }
    }
}

/// After the local workers stopped: writes what finished to
/// `DATA_DIR/campaign-ID/` (`results.{jsonl,csv}`, every run that ended, done or
/// failed; `results-aggregate.csv`, `summary.md` and `report.html` of them), prints
/// the summary,
/// and says how the run ended.
async fn finish_local_run(
    client: &CoordinatorClient,
    ep: &Endpoint,
    id: u64,
    data_dir: &Path,
    outcome: Result<LocalEnd, CliError>,
) -> Result<(), CliError> {
    let out_dir = data_dir.join(format!("campaign-{id}"));
    let written = async {
        let rows: Vec<RunRow> = fetch_rows(client, ep, id)
            .await?
            .into_iter()
            .filter(|r| r.state == "done" || r.state == "failed")
            .collect();
        write_atomic(&out_dir.join("results.jsonl"), &export::to_jsonl(&rows))?;
        write_atomic(&out_dir.join("results.csv"), &export::to_csv(&rows))?;
        let aggs = lem_common::aggregate::aggregate_rows(&rows);
        write_atomic(
            &out_dir.join("results-aggregate.csv"),
            &export::Table::aggregate(&aggs).to_csv(),
        )?;
        let summary = export::summary_of(&aggs);
        write_atomic(&out_dir.join("summary.md"), &summary)?;
        let status = fetch_status(client, ep, id).await?;
        if !rows.is_empty() {
            let html = crate::report::render(&crate::report::ReportInput {
                campaign: id,
                status: &status,
                rows: &rows,
                timeline_run: None,
                generated_at: &format_utc_ms(now_ms()),
            })
            .map_err(invalid)?;
            write_atomic(&out_dir.join("report.html"), &html)?;
        }
        Ok::<_, CliError>((rows, summary, status))
    }
    .await;
    let end = match outcome {
        Ok(end) => end,
        Err(e) => {
            if written.is_ok() {
                eprintln!("what finished is in {}", out_dir.display());
            }
            return Err(e);
        }
    };
    let (rows, summary, status) = written?;
    if !rows.is_empty() {
        println!("{summary}");
    }
    match end {
        LocalEnd::Finished => {
            println!(
                "campaign {id}: {} done, {} failed; results in {}",
                status.done,
                status.failed,
                out_dir.display()
            );
            for f in &status.recent_failures {
                println!("  failed: {f}");
            }
            if status.failed > 0 {
                return Err(CliError::from(anyhow!(
                    "{} run(s) failed (see above)",
                    status.failed
                )));
            }
            Ok(())
        }
        LocalEnd::Interrupted(sig) => {
            println!(
                "campaign {id} interrupted: {} of {} run(s) done, {} failed, {} left; what finished is in {}",
                status.done,
                status.total,
                status.failed,
                status.pending + status.running,
                out_dir.display()
            );
            Err(interrupted(anyhow!(
                "stopped by {sig}; the same command resumes campaign {id}: {} (add --new to start a new campaign instead)",
                resume_command(std::env::args().skip(1))
            )))
        }
    }
}

/// The whole binary: logging, flags, exit code.
pub fn run_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A server logs what it does; the one-shot commands (and `run`, which draws a
    // progress bar) only log warnings unless LEM_LOG asks for more.
    let default_filter = match cli.command {
        Command::Start { .. } => "warn,lem_coord=info",
        _ => "warn",
    };
    // A command whose output goes into a pipe (`lem-coord results 1 | head`) ends
    // quietly when the reader goes away, as Unix tools do, instead of panicking on
    // the failed write. The server and the local runner keep Rust's default (EPIPE
    // is an error on the one connection, never the end of the process).
    if !matches!(
        cli.command,
        Command::Start { .. } | Command::Run { .. } | Command::Bench { .. }
    ) {
        // SAFETY: restoring the default disposition of one signal, before any thread
        // is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Before the runtime starts, and dropped after it ends (it flushes the spans).
    let telemetry = match lem_wire::otel::init(lem_wire::otel::TelemetrySetup {
        service: "lem-coord",
        instance: None,
        otlp_endpoint: cli.otlp_endpoint.as_deref(),
        default_log: default_filter,
        // Log lines print above a live progress bar, not through it.
        log_writer: tracing_subscriber::fmt::writer::BoxMakeWriter::new(live::LogWriter),
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lem-coord: error: {e:#}");
            return std::process::ExitCode::from(exit::INVALID_INPUT);
        }
    };
    if let Some(url) = &telemetry.exporting_to {
        tracing::info!(%url, "exporting OpenTelemetry spans");
    }
    let result = main_impl(cli);
    drop(telemetry);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.code == exit::INTERRUPTED => {
            eprintln!("lem-coord: {:#}", e.error);
            std::process::ExitCode::from(e.code)
        }
        Err(e) => {
            eprintln!("lem-coord: error: {:#}", e.error);
            std::process::ExitCode::from(e.code)
        }
    }
}

#[cfg(test)]
mod run_gpu_tests {
    use super::simulated_gpus_for;

    #[test]
    fn simulated_gpus_cover_the_groups_named() {
        assert_eq!(simulated_gpus_for("dynamic", 2), 2);
        assert_eq!(simulated_gpus_for("dynamic", 0), 1);
        assert_eq!(simulated_gpus_for("0,1;2;3", 2), 4);
        assert_eq!(simulated_gpus_for("0,1", 8), 8);
    }
}

#[cfg(test)]
mod parse_tests {
    use clap::Parser as _;

    use super::{Cli, Command, ResultsAction};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lem-coord").chain(args.iter().copied()))
    }

    #[test]
    fn results_takes_a_campaign_or_the_validate_subcommand() {
        match parse(&["results", "3", "--format", "csv"]).unwrap().command {
            Command::Results {
                campaign: Some(3),
                action: None,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        match parse(&["results", "validate", "4", "--json"])
            .unwrap()
            .command
        {
            Command::Results {
                campaign: None,
                action:
                    Some(ResultsAction::Validate {
                        campaign: 4,
                        json: true,
                        ..
                    }),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        // Neither a campaign nor a subcommand, or both: refused.
        assert!(parse(&["results"]).is_err());
        assert!(parse(&["results", "3", "validate", "4"]).is_err());
        assert!(parse(&["results", "validate", "4", "--format", "csv"]).is_err());
    }
}

#[cfg(test)]
mod local_run_tests {
    use super::{plan_local_run, KnownCampaign};

    fn campaign(id: u64, same_study: bool, cancelled: bool, left: u64) -> KnownCampaign {
        KnownCampaign {
            id,
            study_name: Some(format!("s{id}")),
            same_study,
            cancelled,
            total: 15,
            done: 15 - left,
            left,
        }
    }

    #[test]
    fn the_newest_unfinished_campaign_of_the_study_is_resumed() {
        // Ctrl-C, then the same command: the campaign it left is resumed, not a second
        // one submitted (which the same workers would also have run: 30 runs, not 15).
        let known = [
            campaign(1, true, false, 0),
            campaign(2, true, false, 4),
            campaign(3, false, false, 2),
            campaign(4, true, false, 9),
            campaign(5, true, true, 3),
        ];
        let plan = plan_local_run(&known, false);
        assert_eq!(plan.resume.map(|c| c.id), Some(4));
        assert!(plan.cancel.is_empty());
        assert_eq!(plan.finished_before, None);
        let left: Vec<u64> = plan.left_alone.iter().map(|c| c.id).collect();
        assert_eq!(
            left,
            [2, 3],
            "an older one of the study and another study's"
        );
    }

    #[test]
    fn new_cancels_the_unfinished_campaigns_of_the_study_and_submits() {
        let known = [
            campaign(1, true, false, 0),
            campaign(2, true, false, 4),
            campaign(3, false, false, 2),
        ];
        let plan = plan_local_run(&known, true);
        assert_eq!(plan.resume, None);
        assert_eq!(plan.cancel.iter().map(|c| c.id).collect::<Vec<_>>(), [2]);
        assert_eq!(plan.finished_before.map(|c| c.id), Some(1));
        assert_eq!(
            plan.left_alone.iter().map(|c| c.id).collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn the_resume_command_is_the_same_without_new() {
        let args = ["run", "my study.yaml", "--new", "--data-dir", "d", "it's"];
        assert_eq!(
            super::resume_command(args.map(String::from)),
            "lem-coord run 'my study.yaml' --data-dir d 'it'\\''s'"
        );
    }

    #[test]
    fn a_finished_or_changed_study_gets_a_new_campaign() {
        // Finished: measured again in a new campaign (and the user is told).
        let plan = plan_local_run(&[campaign(1, true, false, 0)], false);
        assert_eq!(plan.resume, None);
        assert_eq!(plan.finished_before.map(|c| c.id), Some(1));
        // The study file changed: its old campaign is not resumed.
        let plan = plan_local_run(&[campaign(1, false, false, 5)], false);
        assert_eq!(plan.resume, None);
        assert_eq!(plan.finished_before, None);
        assert_eq!(plan.left_alone.len(), 1);
        // Nothing there: a new campaign, nothing said.
        assert_eq!(plan_local_run(&[], false), Default::default());
    }
}
