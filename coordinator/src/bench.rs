//! `lem-coord bench`: the coordinator's throughput and scale, measured on this
//! machine with the real store, server, TLS and clients (docs/performance.md).
//!
//! * `bench leases`: a coordinator with a durable manifest and TLS on, serving
//!   simulated workers over loopback; each worker joins with a real join token,
//!   speaks mutual TLS and does lease + complete in a closed loop. Prints pairs per
//!   second and the latency of a pair, last as `leases_per_s=X p50_ms=Y p99_ms=Z`.
//! * `bench manifest`: a campaign of N runs submitted to a real `lem-coord start`
//!   process, which is then SIGKILLed and started again; prints the time from that
//!   start to the first lease, a status query's time, and the restarted
//!   coordinator's memory.
//!
//! The workers here are simulated (no harness, no GPU): what is measured is the
//! coordinator. Results the bench completes are checked afterwards: every pair
//! counted must be one accepted result in the manifest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use lem_common::rpc::{
    CompleteRequest, CompleteStatus, CoordinatorClient, LeaseReply, LeaseRequest, RegisterRequest,
    SlotInfo,
};
use lem_common::types::{
    EnergyFigures, EngineCapability, MeasuredWindow, RunResult, Throughput, WorkerId,
};
use lem_common::PROTOCOL_VERSION;
use lem_wire::tls::Credentials;
use lem_wire::transport::{self, Endpoint};

use crate::assemble::Setup;
use crate::clock::now_ms;
use crate::pki::Pki;
use crate::store::{CampaignRecord, NewRun, Store};

/// Options of `lem-coord bench leases`.
#[derive(Clone, Debug)]
pub struct LeaseBench {
    pub workers: usize,
    pub seconds: f64,
    /// Seconds run before measuring (connections warm, caches full).
    pub warmup_s: f64,
    /// Pending runs made before the clock starts; more than the run can use.
    pub runs: u64,
    /// Most lease transitions per commit; 1 turns group commit off.
    pub max_batch: usize,
    /// TLS on (the default) or plain TCP on loopback, for comparison.
    pub tls: bool,
    /// Where the manifest goes; a temporary directory by default. Its disk is what
    /// the fsyncs measure.
    pub data_dir: Option<PathBuf>,
}

/// What `bench leases` measured.
#[derive(Clone, Debug)]
pub struct LeaseReport {
    pub pairs: u64,
    pub seconds: f64,
    pub leases_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_batch: f64,
}

fn ctx() -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = Instant::now() + Duration::from_secs(30);
    c
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// A result the size of a real one's summary, so frames and records are not
/// unrealistically small.
fn bench_result(worker: &WorkerId) -> RunResult {
    RunResult {
        worker: worker.0.clone(),
        host: "bench".into(),
        gpu_name: "simulated bench GPU".into(),
        gpu_uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
        simulated: true,
        engine: "synthetic".into(),
        model_name: "bench".into(),
        started_at: "2026-11-25T00:00:00.000Z".into(),
        ended_at: "2026-11-25T00:00:01.000Z".into(),
        energy: EnergyFigures {
            total_j: 150.0,
            method: "counter_interpolated".into(),
            mean_power_w: 150.0,
            ..Default::default()
        },
        throughput: Throughput {
            n_prompts: 8,
            input_tokens: 1024,
            output_tokens: 256,
            ..Default::default()
        },
        window: MeasuredWindow {
            duration_s: 1.0,
            n_power_samples: 20,
            ..Default::default()
        },
        ..RunResult::default()
    }
}

/// Makes `n` pending runs of engine `synthetic` in campaigns of at most 100,000.
fn populate(store: &Store, n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(100_000);
        let runs = (0..k).map(|i| NewRun {
            config_hash: format!("{:016x}", i),
            cycle: 1,
            engine: "synthetic".into(),
            model: "bench".into(),
            gap_before_s: 0.0,
            config_json: r#"{"engine":"synthetic","task":{"model":"bench"}}"#.into(),
            tp_size: 1,
            need: Default::default(),
        });
        let rec = CampaignRecord {
            id: lem_common::types::CampaignId(0),
            study_name: Some("bench".into()),
            study_design_hash: "bench".into(),
            source_path: "bench".into(),
            study_text: String::new(),
            submitted_at: lem_common::types::format_utc_ms(now_ms()),
            cancelled: false,
            n_runs: 0,
            n_configs: k,
            skipped: vec![],
            warnings: vec![],
            experiment_timeout_s: 600.0,
            stdout_silence_timeout_s: 300.0,
            force_cold_start: false,
            runner_needs: Default::default(),
        };
        store.create_campaign(rec, runs)?;
        left -= k;
    }
    Ok(())
}

/// Enrols a simulated worker with a real join token and returns its endpoint.
async fn enrol(
    addr: &str,
    token: &str,
    dir: &Path,
    name: &str,
    tls: bool,
) -> anyhow::Result<Endpoint> {
    if !tls {
        return Ok(Endpoint::plain(addr));
    }
    let joined = lem_wire::join::join(addr, token, dir, name).await?;
    Endpoint::with_credentials(addr, &Credentials::load(&joined.credentials)?)
}

async fn register(client: &CoordinatorClient, worker: &WorkerId) -> anyhow::Result<()> {
    client
        .register(
            ctx(),
            RegisterRequest {
                worker: worker.clone(),
                host: "bench".into(),
                protocol_version: PROTOCOL_VERSION,
                worker_version: env!("CARGO_PKG_VERSION").into(),
                slots: vec![SlotInfo {
                    index: 0,
                    gpu_name: "simulated bench GPU".into(),
                    simulated: true,
                    gpus: vec![0],
                    dynamic: false,
                }],
                engines: vec![EngineCapability {
                    engine: "synthetic".into(),
                    available: true,
                    reason: None,
                    version: None,
                }],
                runtime: lem_common::runner::WorkerRuntime::process(),
            },
        )
        .await?
        .map_err(|e| anyhow!("register refused: {e}"))?;
    Ok(())
}

/// Asks for a run without waiting, as a one-GPU slot 0 of `worker`.
async fn lease_now(
    client: &CoordinatorClient,
    worker: &WorkerId,
) -> anyhow::Result<Option<lem_common::rpc::LeaseGrant>> {
    client
        .lease(
            ctx(),
            LeaseRequest {
                worker: worker.clone(),
                slot: 0,
                wait_ms: 0,
                warm: vec![],
                gpus: 1,
                max_gpus: 0,
                telemetry: vec![],
            },
        )
        .await?
        .map(LeaseReply::into_grant)
        .map_err(|e| anyhow!("lease refused: {e}"))
}

/// One lease + complete; returns false when there was nothing to lease.
async fn pair(client: &CoordinatorClient, worker: &WorkerId) -> anyhow::Result<bool> {
    let Some(grant) = lease_now(client, worker).await? else {
        return Ok(false);
    };
    let reply = client
        .complete(
            ctx(),
            CompleteRequest {
                worker: worker.clone(),
                run: grant.run,
                token: grant.token,
                result: bench_result(worker),
            },
        )
        .await?
        .map_err(|e| anyhow!("complete refused: {e}"))?;
    if reply.status != CompleteStatus::Accepted {
        bail!(
            "run {} not accepted: {:?} {:?}",
            grant.run,
            reply.status,
            reply.detail
        );
    }
    Ok(true)
}

/// The bench's data dir: the one given, or a temporary one removed when the
/// returned guard drops.
fn bench_dir(given: Option<&Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(d) => Ok((d.to_path_buf(), None)),
        None => {
            let tmp = tempfile::tempdir().context("cannot make a temporary data dir")?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// Runs `bench leases`.
pub async fn leases(opts: &LeaseBench) -> anyhow::Result<LeaseReport> {
    let (data_dir, _tmp) = bench_dir(opts.data_dir.as_deref())?;
    let coord_dir = data_dir.join("coordinator");
    let store = Store::open(&coord_dir)?;
    let t = Instant::now();
    populate(&store, opts.runs)?;
    eprintln!(
        "bench: {} pending runs made in {:.1} s (manifest in {})",
        opts.runs,
        t.elapsed().as_secs_f64(),
        coord_dir.display()
    );
    let (pki, _) = Pki::load_or_create(&coord_dir)?;
    let token = pki.create_token(3600, now_ms() / 1000);
    let mut setup = Setup::plain("127.0.0.1:0", store, &coord_dir);
    setup.pki = Some(pki);
    setup.tls = opts.tls;
    setup.max_batch = opts.max_batch;
    let coordinator = setup.bind().await?.spawn();
    let shared = coordinator.shared.clone();
    let addr = coordinator.addr.to_string();

    let mut clients = Vec::new();
    for i in 0..opts.workers {
        let worker = WorkerId(format!("bench-{i}"));
        let dir = data_dir.join(&worker.0);
        let ep = enrol(&addr, &token, &dir, &worker.0, opts.tls).await?;
        let client = transport::connect(&ep).await?;
        register(&client, &worker).await?;
        clients.push((worker, client));
    }
    eprintln!(
        "bench: {} simulated workers joined and connected ({})",
        opts.workers,
        if opts.tls { "mutual TLS" } else { "plain TCP" }
    );

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(opts.warmup_s);
    let end = measure_from + Duration::from_secs_f64(opts.seconds);
    let mut tasks = Vec::new();
    for (worker, client) in clients {
        tasks.push(tokio::spawn(async move {
            let mut lat_us: Vec<u64> = Vec::new();
            let mut total = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                if !pair(&client, &worker).await? {
                    bail!("the bench ran out of pending runs: give it more with --runs");
                }
                total += 1;
                if t0 >= measure_from {
                    lat_us.push(t0.elapsed().as_micros() as u64);
                }
            }
            Ok::<_, anyhow::Error>((lat_us, total))
        }));
    }
    // The writer's counters when the measured window opens.
    tokio::time::sleep_until(measure_from.into()).await;
    let stats = &shared.commits.stats;
    let counted = || {
        (
            stats.batches.load(std::sync::atomic::Ordering::Relaxed),
            stats.ops.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let (b0, o0) = counted();
    let mut lat: Vec<u64> = Vec::new();
    let mut total = 0u64;
    for t in tasks {
        let (l, n) = t.await??;
        lat.extend(l);
        total += n;
    }
    let measured = end.duration_since(measure_from).as_secs_f64();
    let (b1, o1) = counted();
    coordinator.stop().await?;

    // Every pair the clients counted is one accepted result; nothing else is done.
    let mut done = 0u64;
    for c in shared.store.campaigns()? {
        done += shared.store.counts(c.id)?.done;
    }
    if done != total {
        bail!("the clients completed {total} pairs but the manifest holds {done} accepted results");
    }
    lat.sort_unstable();
    Ok(LeaseReport {
        pairs: lat.len() as u64,
        seconds: measured,
        leases_per_s: lat.len() as f64 / measured,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        mean_batch: if b1 > b0 {
            (o1 - o0) as f64 / (b1 - b0) as f64
        } else {
            0.0
        },
    })
}

/// Options of `lem-coord bench manifest`.
#[derive(Clone, Debug)]
pub struct ManifestBench {
    /// Runs in the campaign: configs x 10 cycles (or 1 cycle when not a multiple of 10).
    pub runs: u64,
    /// Where the manifest goes; a temporary directory by default.
    pub data_dir: Option<PathBuf>,
    /// Status queries timed after the restart.
    pub status_queries: usize,
}

/// What `bench manifest` measured.
#[derive(Clone, Debug)]
pub struct ManifestReport {
    pub runs: u64,
    pub submit_s: f64,
    /// The coordinator's peak resident memory over start and submit.
    pub submit_peak_rss_mb: f64,
    pub manifest_mb: f64,
    pub restart_to_first_lease_s: f64,
    pub status_p50_ms: f64,
    pub status_max_ms: f64,
    /// The restarted coordinator's resident memory after its first lease and the
    /// status queries, and its peak since its start.
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
}

/// The study `bench manifest` submits: `runs` runs of the synthetic engine, one
/// sweep axis of distinct values (so every config is distinct), 10 cycles.
pub fn manifest_study(runs: u64) -> anyhow::Result<String> {
    let cycles = if runs >= 10 && runs % 10 == 0 { 10 } else { 1 };
    let configs = runs / cycles;
    if configs == 0 || configs > crate::limits::MAX_CONFIGS_PER_CAMPAIGN as u64 {
        bail!(
            "--runs {runs}: the bench makes configs x {cycles} cycles, and a campaign holds 1 to {} configs",
            crate::limits::MAX_CONFIGS_PER_CAMPAIGN
        );
    }
    let values: Vec<String> = (1..=configs).map(|i| format!("{i}.0")).collect();
    Ok(format!(
        "# lem-coord bench manifest: {runs} runs ({configs} configs x {cycles} cycles)\n\
         study_name: bench-manifest\n\
         task:\n  model: synthetic/bench\n  dataset:\n    n_prompts: 8\n  max_input_tokens: 128\n  max_output_tokens: 64\n\
         engine: synthetic\n\
         serving_mode: offline\n\
         offline:\n  warmup:\n    enabled: false\n\
         sweep:\n  synthetic.engine_params.decode_ms_per_step: [{}]\n\
         study_execution:\n  n_cycles: {cycles}\n  experiment_order: interleave\n",
        values.join(", ")
    ))
}

/// Resident and peak resident memory of a process, in MiB (Linux `/proc`).
fn rss_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// A `lem-coord start` child process on loopback with a port chosen by the kernel.
struct Coordinator {
    child: std::process::Child,
    addr: String,
}

impl Coordinator {
    async fn start(dir: &Path) -> anyhow::Result<Coordinator> {
        let addr_file = dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bench-coordinator.log"))?;
        let exe = std::env::current_exe().context("cannot find lem-coord's own path")?;
        let mut child = std::process::Command::new(exe)
            .args([
                "start",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "off",
                "--data-dir",
            ])
            .arg(dir)
            .env("LEM_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start lem-coord")?;
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                return Ok(Coordinator { child, addr });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "lem-coord start exited ({status}); see {}",
                    dir.join("bench-coordinator.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(mut self, signal: i32) -> anyhow::Result<()> {
        self.signal(signal);
        self.child.wait()?;
        Ok(())
    }

    fn signal(&mut self, signal: i32) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }
}

impl Drop for Coordinator {
    /// A bench that fails half-way leaves no coordinator behind.
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs `bench manifest`.
pub async fn manifest(opts: &ManifestBench) -> anyhow::Result<ManifestReport> {
    let study = manifest_study(opts.runs)?;
    let (data_dir, _tmp) = bench_dir(opts.data_dir.as_deref())?;
    let coord_dir = data_dir.join("coordinator");
    let coordinator = Coordinator::start(&coord_dir).await?;
    let admin = Endpoint::with_credentials(
        &coordinator.addr,
        &Credentials::load(&Pki::admin_credentials_path(&coord_dir))?,
    )?;
    let client = transport::connect(&admin).await?;
    let mut long = ctx();
    long.deadline = Instant::now() + Duration::from_secs(3600);
    let t = Instant::now();
    let reply = client
        .submit(
            long,
            lem_common::rpc::SubmitRequest {
                path: "bench-manifest.yaml".into(),
                text: study,
                base: None,
                force_cold_start: false,
            },
        )
        .await?
        .map_err(|e| anyhow!("submit refused: {e}"))?;
    let submit_s = t.elapsed().as_secs_f64();
    if reply.n_runs != opts.runs {
        bail!("the study planned {} runs, not {}", reply.n_runs, opts.runs);
    }
    let (_, submit_peak) = rss_mb(coordinator.pid())?;
    eprintln!(
        "bench: campaign {} of {} runs submitted in {submit_s:.1} s (coordinator peak RSS {submit_peak:.0} MiB)",
        reply.campaign, reply.n_runs
    );
    // A worker joins now, so after the restart it only connects, as a real one would.
    let token = Pki::load(&coord_dir)?.create_token(3600, now_ms() / 1000);
    let worker = WorkerId("bench-0".into());
    let worker_ep = enrol(
        &coordinator.addr,
        &token,
        &data_dir.join("bench-0"),
        &worker.0,
        true,
    )
    .await?;
    drop(client);
    coordinator.kill(libc::SIGKILL)?;
    let manifest_mb = std::fs::metadata(coord_dir.join(crate::store::MANIFEST_FILE))?.len() as f64
        / (1024.0 * 1024.0);
    eprintln!("bench: coordinator SIGKILLed; manifest {manifest_mb:.0} MiB; starting it again");

    let t = Instant::now();
    let coordinator = Coordinator::start(&coord_dir).await?;
    let ep = Endpoint {
        addr: coordinator.addr.clone(),
        ..worker_ep
    };
    let wclient = transport::connect(&ep).await?;
    register(&wclient, &worker).await?;
    let grant = lease_now(&wclient, &worker)
        .await?
        .ok_or_else(|| anyhow!("no run leased after the restart"))?;
    let restart_s = t.elapsed().as_secs_f64();
    eprintln!(
        "bench: run {} leased {restart_s:.2} s after the restart",
        grant.run
    );

    let admin = Endpoint {
        addr: coordinator.addr.clone(),
        ..admin
    };
    let client = transport::connect(&admin).await?;
    let mut times_us = Vec::new();
    for _ in 0..opts.status_queries.max(1) {
        let t = Instant::now();
        let s = client
            .status(ctx(), reply.campaign)
            .await?
            .map_err(|e| anyhow!("status refused: {e}"))?;
        times_us.push(t.elapsed().as_micros() as u64);
        if s.total != opts.runs || s.running != 1 {
            bail!(
                "status after the restart shows {} runs, {} running; expected {} and 1",
                s.total,
                s.running,
                opts.runs
            );
        }
    }
    times_us.sort_unstable();
    let (rss, peak) = rss_mb(coordinator.pid())?;
    drop(client);
    drop(wclient);
    coordinator.kill(libc::SIGTERM)?;
    Ok(ManifestReport {
        runs: opts.runs,
        submit_s,
        submit_peak_rss_mb: submit_peak,
        manifest_mb,
        restart_to_first_lease_s: restart_s,
        status_p50_ms: percentile(&times_us, 0.5),
        status_max_ms: times_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        rss_mb: rss,
        peak_rss_mb: peak,
    })
}
