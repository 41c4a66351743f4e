//! One GPU slot's lease loop and the measurement of one run.
//!
//! A slot leases a run, waits at the thermal gate, takes (or reuses) the idle
//! baseline, sends the run to its resident harness while the sampler thread records
//! the GPU, computes the energy of the harness's measured window, and reports the
//! result exactly once (retrying `complete` until the coordinator answers). A
//! heartbeat task renews the lease while the run goes on; if renewals fail for longer
//! than the worker's own TTL (shorter than the coordinator's) the run is stopped.
//!
//! In a dynamic pool (`--gpu-groups dynamic`, [`crate::pool`]) a slot is a lease
//! lane: it has no GPUs of its own. When its turn comes it reserves the free GPUs,
//! asks for a run of at most that many, and for the granted run binds the run's GPUs
//! (their samplers, the harness that sees them, the baselines measured on them); the
//! measurement is then the same as a fixed slot's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use lem_common::energy::{adjusted_energy, sum_windows, window_energy_in, EnergyMethod, Window};
use lem_common::gpus::choose_gpus;
use lem_common::harness::{run_request_line, RunOutcome, RunRequest, RunTranscript};
use lem_common::isolation::{
    decide, describe_processes, foreign_processes, merge, shared_warnings, CheckPoint,
    IsolationPolicy, Verdict,
};
use lem_common::rpc::{
    CompleteRequest, CompleteStatus, CoordinatorClient, FailRequest, LeaseGrant, LeaseReply,
    LeaseRequest, RegisterRequest, RenewRequest, RpcError, RpcErrorKind,
};
use lem_common::stats;
use lem_common::thermal::{self, GateDecision, GatePolicy, GateReason};
use lem_common::types::{
    format_utc_ms, BaselineRecord, FailureClass, ForeignProcess, GpuFigures, RunResult, WorkerId,
};
use lem_common::Value;
use tokio::sync::watch;

use crate::clock::{mono_ns, unix_ms};
use crate::env::Environment;
use crate::harness_runtime::{HarnessRuntime, RunLimits};
use crate::isolation;
use crate::journal::{Journal, JournalLease, Report};
use crate::pool::{DynPool, SetState};
use crate::telemetry::{power_samples, LoadSink, Sampler};
use crate::transport;

/// How long one lease call may wait for work.
const LEASE_WAIT_MS: u64 = 20_000;
/// Power is "flat" for the baseline when the last two seconds vary less than this.
const SETTLE_STD_W: f64 = 1.0;
const SETTLE_DRIFT_W: f64 = 0.5;
const SETTLE_MAX: Duration = Duration::from_secs(90);
/// How long the energy counter is read back to back after each window edge: long
/// enough to see two of its ~100 ms updates.
const COUNTER_BURST: Duration = Duration::from_millis(300);
/// Points kept in a result's timeseries (bucket means over the window).
const TIMESERIES_POINTS: usize = 240;
/// How often a slot whose journal failed tries writing it again.
const JOURNAL_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Under `--device-isolation refuse`, how often a slot whose GPUs another process
/// holds lists them again before leasing.
const UNSHARED_RECHECK: Duration = Duration::from_secs(2);
/// A dynamic pool told that its next run needs more GPUs than are free asks again
/// when one of its runs frees GPUs, or after this long (the run may have gone to
/// another worker meanwhile).
const BLOCKED_RECHECK: Duration = Duration::from_secs(5);

/// Connects to the coordinator and registers.
async fn connect_and_register(
    coordinator: &transport::Endpoint,
    register: &RegisterRequest,
) -> anyhow::Result<CoordinatorClient> {
    let c = transport::connect(coordinator).await?;
    c.register(ctx_with(Duration::from_secs(10)), register.clone())
        .await
        .map_err(|e| anyhow!("register: {e}"))?
        .map_err(|e| anyhow::Error::new(e).context("coordinator refused registration"))?;
    Ok(c)
}

/// Everything a slot needs; owned by its loop.
pub struct Slot {
    pub index: u32,
    pub worker: WorkerId,
    pub host: String,
    pub coordinator: transport::Endpoint,
    pub register: RegisterRequest,
    pub harness: Box<dyn HarnessRuntime>,
    /// The GPU indices of this slot (its group), and one sampler per GPU, in order.
    /// In a dynamic pool: those of the run in progress.
    pub gpus: Vec<u32>,
    pub samplers: Vec<Arc<Sampler>>,
    pub load: Arc<dyn LoadSink>,
    pub dir: PathBuf,
    pub environment: Environment,
    /// Length of the prefill-only differential window the harness runs after each run.
    pub prefill_window_s: f64,
    /// Length of the quiet spans the harness holds beside window edges (0 = none).
    pub quiet_s: f64,
    /// The harness's `per_token_timing`.
    pub per_token_timing: &'static str,
    /// On a stop request, cancel the run in progress and hand it back
    /// (`lem-worker --drain`) instead of finishing it.
    pub drain: bool,
    /// The dynamic pool this slot is a lease lane of (`--gpu-groups dynamic`).
    pub pool: Option<Arc<DynPool>>,
    /// `--device-isolation`: what to do when another process holds a measured GPU.
    pub isolation: IsolationPolicy,
    /// When the slot last logged that it is not leasing because another process
    /// holds its GPUs (logged once a minute).
    isolation_logged: Option<tokio::time::Instant>,
    baseline: Option<CachedBaseline>,
    /// Resident idle per model key, with the time it was measured.
    resident: Option<(String, CachedBaseline)>,
    client: Option<CoordinatorClient>,
    /// Runs since the last baseline check (for llem's `validated` strategy).
    runs_since_check: u32,
    /// The worker's journal (shared by its slots).
    journal: Arc<Journal>,
    /// The last journal write failed: lease nothing until a probe write succeeds.
    journal_broken: bool,
    /// When this slot's last run ended and the gap its study asked for: the thermal
    /// gate for the next run is waited out *before* leasing it, so a leased run's
    /// measurement starts at once.
    last_run: Option<(tokio::time::Instant, f64)>,
    /// The gate waited before the current lease (if any), and when it opened.
    pre_gate: Option<(GateOutcome, tokio::time::Instant)>,
    /// Why the slot stopped on its own (a condition retrying cannot fix).
    fatal: Option<String>,
    /// The worker's stop request, once the lease loop runs: a report the coordinator
    /// cannot take is left in the journal instead of holding up the stop.
    stopping: Option<watch::Receiver<bool>>,
}

/// A measured idle baseline, reused while the run's strategy allows.
pub struct CachedBaseline {
    /// The slot's baseline: power summed over its GPUs, the hottest GPU's temperature.
    record: BaselineRecord,
    /// Each GPU's share, in slot order.
    per_gpu: Vec<GpuIdle>,
    measured_mono_ns: u64,
}

/// A baseline as a run uses it: the slot's record and each GPU's share, in slot order.
type RunBaseline = (BaselineRecord, Vec<GpuIdle>);

/// A run's failure: its class and message.
type Failure = (FailureClass, String);

/// What a run's device isolation checks found: the other processes seen on its GPUs
/// (`warn`), GPUs that could not be listed, and other notes for its warnings.
#[derive(Debug, Default)]
struct IsolationLog {
    foreign: Vec<ForeignProcess>,
    errors: std::collections::BTreeSet<String>,
    notes: Vec<String>,
}

impl IsolationLog {
    fn warnings(&self) -> Vec<String> {
        let mut out = shared_warnings(&self.foreign);
        out.extend(self.notes.iter().cloned());
        out.extend(
            self.errors
                .iter()
                .map(|e| format!("device isolation not checked on {e}")),
        );
        out
    }
}

/// One GPU's idle power and temperature.
#[derive(Clone, Copy, Debug)]
struct GpuIdle {
    power_w: f64,
    temp_c: f64,
}

/// The llem `measurement.baseline` settings of a run.
struct BaselineSettings {
    enabled: bool,
    duration_s: f64,
    strategy: String,
    cache_ttl_s: f64,
    validation_interval: u32,
    drift_threshold: f64,
}

impl BaselineSettings {
    fn from_config(config: &Value) -> Self {
        let g = |k: &str| config.get_path(&format!("measurement.baseline.{k}"));
        BaselineSettings {
            enabled: g("enabled").and_then(Value::as_bool).unwrap_or(true),
            duration_s: g("duration_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(30.0),
            strategy: g("strategy")
                .and_then(Value::as_str)
                .unwrap_or("validated")
                .to_string(),
            cache_ttl_s: g("cache_ttl_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(7200.0),
            validation_interval: g("validation_interval")
                .and_then(Value::as_i64)
                .unwrap_or(5)
                .max(1) as u32,
            drift_threshold: g("drift_threshold").and_then(Value::as_f64).unwrap_or(0.1),
        }
    }
}

fn ctx_with(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}

/// What one lease call came to.
enum Asked {
    /// The worker is stopping.
    Stop,
    Reply(LeaseReply),
    /// Refused or not delivered; handled (the lane reconnects or backed off).
    Failed,
}

/// What the thermal gate did.
#[derive(Clone, Copy, Debug)]
struct GateOutcome {
    waited_s: f64,
    reason: GateReason,
}

impl Slot {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u32,
        worker: WorkerId,
        host: String,
        coordinator: transport::Endpoint,
        register: RegisterRequest,
        harness: Box<dyn HarnessRuntime>,
        gpus: Vec<u32>,
        samplers: Vec<Arc<Sampler>>,
        load: Arc<dyn LoadSink>,
        dir: PathBuf,
        environment: Environment,
        journal: Arc<Journal>,
    ) -> Slot {
        Slot {
            index,
            worker,
            host,
            coordinator,
            register,
            harness,
            gpus,
            samplers,
            load,
            dir,
            environment,
            prefill_window_s: 3.0,
            quiet_s: 0.35,
            per_token_timing: "always",
            drain: false,
            pool: None,
            isolation: IsolationPolicy::Warn,
            isolation_logged: None,
            baseline: None,
            resident: None,
            client: None,
            runs_since_check: 0,
            journal,
            journal_broken: false,
            last_run: None,
            pre_gate: None,
            fatal: None,
            stopping: None,
        }
    }

    /// Connects and registers if not connected. Retries until it works or `stop` fires.
    async fn client(&mut self, stop: &watch::Receiver<bool>) -> Option<CoordinatorClient> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return None;
            }
            if let Some(c) = &self.client {
                return Some(c.clone());
            }
            match self.connect_and_register().await {
                Ok(c) => {
                    self.client = Some(c.clone());
                    return Some(c);
                }
                Err(e)
                    if e.downcast_ref::<RpcError>()
                        .is_some_and(|r| r.kind == RpcErrorKind::VersionMismatch) =>
                {
                    // Retrying cannot help: the operator must install matching versions.
                    tracing::error!(slot = self.index, error = %e, "not leasing");
                    self.fatal = Some(format!("{e:#}"));
                    return None;
                }
                Err(e) => {
                    tracing::warn!(slot = self.index, error = %e, "coordinator not reachable; retrying");
                    // SIGTERM while the coordinator is away stops at once.
                    let mut stopped = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connect_and_register(&self) -> anyhow::Result<CoordinatorClient> {
        connect_and_register(&self.coordinator, &self.register).await
    }

    /// The slot's lease loop: runs until `stop` becomes true (after the current run),
    /// or until the coordinator refuses this worker for good (the error is returned).
    pub async fn lease_loop(mut self, mut stop: watch::Receiver<bool>) -> Option<String> {
        self.stopping = Some(stop.clone());
        loop {
            let Some(client) = self.client(&stop).await else {
                break;
            };
            // Slot 0 re-sends what the journal holds: results and failures of an
            // earlier process, or reports the coordinator was away for.
            if self.index == 0 {
                self.flush_journal(&client).await;
            }
            if self.journal_broken {
                match self.journal.probe() {
                    Ok(()) => {
                        tracing::info!(slot = self.index, "the journal is writable again; leasing");
                        self.journal_broken = false;
                    }
                    Err(e) => {
                        tracing::warn!(slot = self.index, error = %e, "not leasing: the journal cannot be written");
                        let mut stopped = stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(JOURNAL_PROBE_INTERVAL) => {}
                            _ = stopped.changed() => {}
                        }
                        if *stop.borrow() {
                            break;
                        }
                        continue;
                    }
                }
            }
            if let Some(pool) = self.pool.clone() {
                if !self.dynamic_turn(&pool, &client, &mut stop).await {
                    break;
                }
                continue;
            }
            // Under `refuse`, a run leased while another process holds the GPUs
            // would only be refused (and spend an attempt): wait until none does.
            if !self.wait_for_unshared_gpus(&stop).await {
                break;
            }
            // Cool down after the last run before asking for the next one.
            if let (Some((ended, gap_s)), None) = (self.last_run, &self.pre_gate) {
                let remaining = gap_s - ended.elapsed().as_secs_f64();
                let idle_temps = self.idle_temps();
                let mut stopped = stop.clone();
                let gate = tokio::select! {
                    g = self.thermal_gate(remaining.max(0.0), &idle_temps) => g,
                    _ = stopped.changed() => break,
                };
                self.pre_gate = Some((gate, tokio::time::Instant::now()));
            }
            let req = LeaseRequest {
                worker: self.worker.clone(),
                slot: self.index,
                wait_ms: LEASE_WAIT_MS,
                warm: vec![],
                gpus: self.samplers.len() as u32,
                max_gpus: 0,
            };
            match self.ask(&client, req, &mut stop).await {
                Asked::Stop => break,
                Asked::Reply(LeaseReply::Granted(grant)) => {
                    self.handle_grant(&client, *grant, &stop).await
                }
                Asked::Reply(LeaseReply::NoWork | LeaseReply::Blocked { .. }) | Asked::Failed => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        self.harness.stop().await;
        self.fatal
    }

    /// One lease call; errors are handled here (reconnect, back off).
    async fn ask(
        &mut self,
        client: &CoordinatorClient,
        req: LeaseRequest,
        stop: &mut watch::Receiver<bool>,
    ) -> Asked {
        let call = client.lease(ctx_with(Duration::from_millis(LEASE_WAIT_MS + 10_000)), req);
        let reply = tokio::select! {
            r = call => r,
            _ = stop.changed() => return Asked::Stop,
        };
        match reply {
            Ok(Ok(reply)) => return Asked::Reply(reply),
            Ok(Err(e)) if e.kind == RpcErrorKind::NotRegistered => {
                self.client = None;
            }
            Ok(Err(e)) => {
                tracing::error!(slot = self.index, error = %e, "lease refused");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(slot = self.index, error = %e, "lost the coordinator; reconnecting");
                self.client = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Asked::Failed
    }

    /// One turn of a dynamic pool's lane: wait for the turn to ask, reserve the free
    /// GPUs, ask for a run of at most that many, and run what is granted on the
    /// GPUs it needs (the rest are freed at once). While the coordinator answers
    /// that the next run needs more GPUs than are free, the lane keeps the turn and
    /// asks again when a run of the pool frees GPUs (or after [`BLOCKED_RECHECK`]),
    /// so no lane takes a smaller run meanwhile. Returns false when the worker stops.
    async fn dynamic_turn(
        &mut self,
        pool: &Arc<DynPool>,
        client: &CoordinatorClient,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        if *stop.borrow() {
            return false;
        }
        let turn = tokio::select! {
            t = pool.turn.lock() => t,
            _ = stop.changed() => return false,
        };
        loop {
            let (reserved, mut released) = tokio::select! {
                r = pool.reserve() => r,
                _ = stop.changed() => return false,
            };
            // Under `refuse`, GPUs another process holds are not offered: a run on
            // them would only be refused (and spend an attempt).
            let shared = self.shared_pool_gpus(pool, &reserved).await;
            let reserved = if shared.is_empty() {
                reserved
            } else {
                pool.unreserve(&shared);
                let clean: Vec<u32> = reserved
                    .into_iter()
                    .filter(|g| !shared.contains(g))
                    .collect();
                if clean.is_empty() {
                    drop(turn);
                    tokio::select! {
                        _ = tokio::time::sleep(UNSHARED_RECHECK) => {}
                        _ = stop.changed() => return false,
                    }
                    return !*stop.borrow();
                }
                clean
            };
            let req = LeaseRequest {
                worker: self.worker.clone(),
                slot: self.index,
                wait_ms: LEASE_WAIT_MS,
                warm: vec![],
                gpus: pool.size(),
                max_gpus: reserved.len() as u32,
            };
            let grant = match self.ask(client, req, stop).await {
                Asked::Stop => {
                    pool.unreserve(&reserved);
                    return false;
                }
                Asked::Failed | Asked::Reply(LeaseReply::NoWork) => {
                    pool.unreserve(&reserved);
                    return !*stop.borrow();
                }
                Asked::Reply(LeaseReply::Blocked { needs_gpus }) => {
                    pool.unreserve(&reserved);
                    tracing::debug!(
                        slot = self.index,
                        needs_gpus,
                        free = reserved.len(),
                        "the next run needs more GPUs than are free; waiting for runs to end"
                    );
                    tokio::select! {
                        _ = released.changed() => {}
                        _ = tokio::time::sleep(BLOCKED_RECHECK) => {}
                        _ = stop.changed() => return false,
                    }
                    continue;
                }
                Asked::Reply(LeaseReply::Granted(grant)) => *grant,
            };
            let model = lem_common::pyjson::parse(&grant.config_json)
                .ok()
                .and_then(|c| {
                    c.get_path("task.model")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .unwrap_or_default();
            let chosen = choose_gpus(&reserved, grant.tp_size, &pool.preferred_sets(&model).await);
            let Some(gpus) = chosen.filter(|g| pool.keep(&reserved, g).is_ok()) else {
                pool.unreserve(&reserved);
                drop(turn);
                self.refuse_grant(client, grant, reserved.len()).await;
                return !*stop.borrow();
            };
            drop(turn);
            tracing::info!(slot = self.index, run = %grant.run, gpus = ?gpus, "GPUs of the run");
            self.bind(pool, &gpus).await;
            self.handle_grant(client, grant, stop).await;
            self.unbind(pool, model).await;
            return !*stop.borrow();
        }
    }

    /// Under `--device-isolation refuse`, waits until no process but the slot's own
    /// holds its GPUs, listing them every [`UNSHARED_RECHECK`]; false if the worker
    /// stops meanwhile. Under `warn` returns at once.
    async fn wait_for_unshared_gpus(&mut self, stop: &watch::Receiver<bool>) -> bool {
        if self.isolation != IsolationPolicy::Refuse {
            return true;
        }
        loop {
            let own = self.harness.own_pids();
            let foreign = foreign_now(self.samplers.clone(), self.gpus.clone(), move || {
                isolation::own_set(&own)
            })
            .await;
            if foreign.is_empty() {
                if self.isolation_logged.take().is_some() {
                    tracing::info!(
                        slot = self.index,
                        "no other process holds the GPUs now; leasing"
                    );
                }
                return true;
            }
            self.log_not_leasing(&foreign);
            let mut stopped = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(UNSHARED_RECHECK) => {}
                _ = stopped.changed() => return false,
            }
            if *stop.borrow() {
                return false;
            }
        }
    }

    /// Under `--device-isolation refuse`, the GPUs of `reserved` that a process other
    /// than the worker's own holds (an idle harness of the pool is the worker's: a
    /// run on its GPUs stops or reuses it). Empty under `warn`.
    async fn shared_pool_gpus(&mut self, pool: &DynPool, reserved: &[u32]) -> Vec<u32> {
        if self.isolation != IsolationPolicy::Refuse {
            return vec![];
        }
        let foreign = foreign_now(
            pool.samplers_of(reserved),
            reserved.to_vec(),
            isolation::worker_and_descendants,
        )
        .await;
        if foreign.is_empty() {
            if self.isolation_logged.take().is_some() {
                tracing::info!(
                    slot = self.index,
                    "no other process holds the pool's free GPUs now"
                );
            }
            return vec![];
        }
        self.log_not_leasing(&foreign);
        let mut shared: Vec<u32> = foreign.iter().map(|f| f.gpu_index).collect();
        shared.dedup();
        shared
    }

    /// Logs (once a minute) that GPUs are not leased on because others hold them.
    fn log_not_leasing(&mut self, foreign: &[ForeignProcess]) {
        if self
            .isolation_logged
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.isolation_logged = Some(tokio::time::Instant::now());
        tracing::warn!(
            slot = self.index,
            processes = %describe_processes(foreign),
            "not leasing on GPUs other processes hold (--device-isolation refuse); checking again every {} s",
            UNSHARED_RECHECK.as_secs()
        );
    }

    /// Lists the processes on the run's GPUs at `at` and applies the slot's policy:
    /// `Ok(true)` when another process holds one (`warn`: recorded in `log`),
    /// `Ok(false)` when none does (GPUs that could not be listed are noted in `log`),
    /// and under `refuse` the run's retryable failure, naming them.
    async fn isolation_check(
        &mut self,
        at: CheckPoint,
        log: &mut IsolationLog,
    ) -> Result<bool, Failure> {
        let harness = self.harness.own_pids();
        let (samplers, gpus) = (self.samplers.clone(), self.gpus.clone());
        let listed = tokio::task::spawn_blocking(move || {
            (
                isolation::list(&samplers, &gpus),
                isolation::own_set(&harness),
            )
        })
        .await;
        let (listing, own) = match listed {
            Ok(l) => l,
            Err(e) => {
                log.errors
                    .insert(format!("the slot's GPUs: the listing failed ({e})"));
                return Ok(false);
            }
        };
        log.errors.extend(listing.errors);
        match decide(&listing.processes, &own, at, self.isolation) {
            Verdict::Clean => Ok(false),
            Verdict::Shared(foreign) => {
                tracing::warn!(
                    slot = self.index,
                    seen = at.seen(),
                    processes = %describe_processes(&foreign),
                    "a measured GPU is shared with other processes; the result is flagged"
                );
                merge(&mut log.foreign, &foreign);
                Ok(true)
            }
            Verdict::Refuse { message, .. } => {
                tracing::warn!(slot = self.index, %message, "refusing to measure");
                Err((FailureClass::Infrastructure, message))
            }
        }
    }

    /// A grant for more GPUs than the lane reserved (a coordinator bug): handed back
    /// without being started.
    async fn refuse_grant(&mut self, client: &CoordinatorClient, grant: LeaseGrant, free: usize) {
        let message = format!(
            "worker {} got a run of {} GPUs with {free} free in its pool; handed back",
            self.worker, grant.tp_size
        );
        tracing::error!(slot = self.index, run = %grant.run, %message);
        let report = Report::Fail(FailRequest {
            worker: self.worker.clone(),
            run: grant.run,
            token: grant.token,
            class: FailureClass::Handback,
            message,
        });
        self.deliver(client, &report).await;
    }

    /// Makes `gpus` this lane's for one run: their samplers and load, the harness
    /// that sees exactly them (idle harnesses on any of them are stopped), the
    /// baselines measured on them, and when their last run ended.
    async fn bind(&mut self, pool: &DynPool, gpus: &[u32]) {
        self.harness = pool.take_harness(gpus).await;
        self.gpus = gpus.to_vec();
        self.samplers = pool.samplers_of(gpus);
        self.load = pool.load_of(gpus);
        self.environment = pool.environment_of(gpus);
        let state = pool.take_state(gpus);
        self.baseline = state.baseline;
        self.resident = state.resident;
        self.runs_since_check = state.runs_since_check;
        self.last_run = pool.last_run_of(gpus);
        self.pre_gate = None;
    }

    /// The run is over: its harness stays warm on the shelf, its baselines are kept
    /// for the set, and its GPUs are free again.
    async fn unbind(&mut self, pool: &DynPool, model: String) {
        let gpus = std::mem::take(&mut self.gpus);
        let harness = std::mem::replace(&mut self.harness, pool.placeholder_harness(self.index));
        pool.shelve(&gpus, Some(model), harness).await;
        pool.put_state(
            &gpus,
            SetState {
                baseline: self.baseline.take(),
                resident: self.resident.take(),
                runs_since_check: self.runs_since_check,
            },
        );
        self.samplers.clear();
        pool.release(&gpus, self.last_run);
    }

    async fn handle_grant(
        &mut self,
        client: &CoordinatorClient,
        grant: LeaseGrant,
        stop: &watch::Receiver<bool>,
    ) {
        let lease_mono = mono_ns();
        tracing::info!(slot = self.index, run = %grant.run, token = grant.token.0, "run leased");
        // Journal the lease before the run starts. Without a journal a crash would
        // lose the run silently until the TTL, so the run is handed back instead and
        // the slot waits for the journal to be writable again.
        let lease = JournalLease {
            worker: self.worker.clone(),
            grant: grant.clone(),
            leased_unix_ms: unix_ms(),
        };
        if let Err(e) = self.journal.record_lease(self.index, &lease) {
            tracing::error!(slot = self.index, run = %grant.run, error = %e, "cannot journal the lease; handing the run back");
            self.journal_broken = true;
            let report = Report::Fail(FailRequest {
                worker: self.worker.clone(),
                run: grant.run,
                token: grant.token,
                class: FailureClass::Infrastructure,
                message: format!("worker {} cannot write its journal: {e}", self.worker),
            });
            self.deliver(client, &report).await;
            return;
        }
        // Heartbeats: renew every third of the TTL; stop the run if the lease is lost
        // or cannot be renewed for longer than our own TTL (two thirds of the
        // coordinator's, so we stop before it re-leases the run).
        let (cancel_tx, cancel_rx) = watch::channel(None::<String>);
        let cancel_tx = Arc::new(cancel_tx);
        // `--drain`: a stop request cancels the run, which is handed back.
        let drainer = self.drain.then(|| {
            let (tx, mut stop) = (cancel_tx.clone(), stop.clone());
            tokio::spawn(async move {
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Some(
                    "handed back: the worker is stopping with --drain".into(),
                ));
            })
        });
        // A coordinator that restarts (on the same address, with the manifest that
        // still holds this lease) is reconnected to: a renewal that fails on the
        // transport reconnects before the next one.
        let renewer = {
            let mut client = client.clone();
            let (worker, run, token) = (self.worker.clone(), grant.run, grant.token);
            let (addr, register) = (self.coordinator.clone(), self.register.clone());
            let ttl = Duration::from_millis(grant.ttl_ms);
            tokio::spawn(async move {
                let mut last_ok = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let r = client
                        .renew(
                            ctx_with(ttl / 3),
                            RenewRequest {
                                worker: worker.clone(),
                                run,
                                token,
                            },
                        )
                        .await;
                    match r {
                        Ok(Ok(reply)) if reply.cancelled => {
                            let _ = cancel_tx.send(Some("the campaign was cancelled".into()));
                            return;
                        }
                        Ok(Ok(_)) => last_ok = tokio::time::Instant::now(),
                        Ok(Err(e)) if e.kind == RpcErrorKind::LeaseLost => {
                            let _ = cancel_tx.send(Some(format!("lease lost: {e}")));
                            return;
                        }
                        other => {
                            if last_ok.elapsed() > ttl * 2 / 3 {
                                let _ = cancel_tx.send(Some(
                                    "could not renew the lease within the worker TTL".into(),
                                ));
                                return;
                            }
                            if other.is_err() {
                                if let Ok(Ok(c)) = tokio::time::timeout(
                                    ttl / 3,
                                    connect_and_register(&addr, &register),
                                )
                                .await
                                {
                                    client = c;
                                }
                            }
                        }
                    }
                }
            })
        };
        let mut outcome = self.measure(&grant, lease_mono, cancel_rx).await;
        renewer.abort();
        if let Some(d) = drainer {
            d.abort();
        }
        if self.drain && *stop.borrow() {
            if let Err((class, _)) = &mut outcome {
                *class = FailureClass::Handback;
            }
        }
        self.last_run = Some((tokio::time::Instant::now(), grant.gap_before_s));
        self.pre_gate = None;
        let report = match outcome {
            Ok(result) => Report::Complete(Box::new(CompleteRequest {
                worker: self.worker.clone(),
                run: grant.run,
                token: grant.token,
                result,
            })),
            Err((class, message)) => {
                tracing::warn!(slot = self.index, run = %grant.run, %class, %message, "run failed");
                Report::Fail(FailRequest {
                    worker: self.worker.clone(),
                    run: grant.run,
                    token: grant.token,
                    class,
                    message,
                })
            }
        };
        // The lease becomes the report on disk before anything is sent: a crash from
        // here on re-sends it on restart. If the journal cannot be written the report
        // is still delivered from memory.
        if let Err(e) = self.journal.finish(self.index, &report) {
            tracing::error!(slot = self.index, run = %grant.run, error = %e, "cannot journal the finished run; delivering it from memory");
            self.journal_broken = true;
        }
        self.deliver(client, &report).await;
    }

    /// Sends `report` until the coordinator answers it, then takes it out of the
    /// journal (acknowledged) or moves it to the journal's rejected table (refused
    /// outright). Gives up after a while if the coordinator stays away; the report
    /// stays journaled and the lease loop sends it again later.
    async fn deliver(&mut self, client: &CoordinatorClient, report: &Report) {
        let run = report.run();
        let mut client = client.clone();
        let mut backoff = Duration::from_millis(200);
        for attempt in 0..100 {
            let answer: Result<Result<(), RpcError>, tarpc::client::RpcError> = match report {
                Report::Complete(req) => client
                    .complete(ctx_with(Duration::from_secs(20)), (**req).clone())
                    .await
                    .map(|r| {
                        r.map(|reply| match reply.status {
                            CompleteStatus::Accepted | CompleteStatus::AlreadyAccepted => {
                                tracing::info!(slot = self.index, run = %run, "result accepted")
                            }
                            CompleteStatus::Duplicate => tracing::warn!(
                                slot = self.index, run = %run,
                                detail = reply.detail.as_deref().unwrap_or(""),
                                "result kept as a duplicate, not counted"
                            ),
                        })
                    }),
                Report::Fail(req) => client
                    .fail(ctx_with(Duration::from_secs(10)), req.clone())
                    .await
                    .map(|r| match r {
                        // The run already ended or went to someone else: nothing to tell.
                        Err(e) if e.kind == RpcErrorKind::LeaseLost => {
                            tracing::info!(slot = self.index, run = %run, reason = %e, "failure report not needed");
                            Ok(())
                        }
                        other => other,
                    }),
            };
            match answer {
                Ok(Ok(())) => {
                    if let Err(e) = self.journal.acknowledge(report) {
                        tracing::error!(slot = self.index, run = %run, error = %e, "cannot clear the journaled report (it will be re-sent, and counted once)");
                    }
                    return;
                }
                // The coordinator cannot write now (disk full, stopping) or forgot
                // us: try again.
                Ok(Err(e))
                    if matches!(
                        e.kind,
                        RpcErrorKind::Unavailable | RpcErrorKind::NotRegistered
                    ) =>
                {
                    tracing::warn!(slot = self.index, run = %run, error = %e, "report not taken yet; retrying");
                }
                Ok(Err(e)) => {
                    tracing::error!(slot = self.index, run = %run, error = %e, "report refused; kept in the journal's rejected table");
                    if let Err(je) = self.journal.reject(report, &e.to_string(), unix_ms()) {
                        tracing::error!(slot = self.index, run = %run, error = %je, "cannot move the refused report");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(slot = self.index, error = %e, "report not delivered; retrying");
                }
            }
            // Stopping and the coordinator still away after a few tries: the report
            // is safe in the journal, and the next start sends it. (One held only in
            // memory, because the journal could not be written, is tried on.)
            let stop_requested = self.stopping.as_ref().is_some_and(|s| *s.borrow());
            if stop_requested && attempt >= 2 && !self.journal_broken {
                tracing::warn!(slot = self.index, run = %run, "stopping with the coordinator away: the report stays in the journal and is sent when the worker starts again");
                return;
            }
            // Not taken: back off, reconnect, send again.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if let Ok(c) = self.connect_and_register().await {
                self.client = Some(c.clone());
                client = c;
            }
        }
        tracing::error!(slot = self.index, run = %run, "coordinator unreachable; the report stays in the journal and is sent again later");
    }

    /// Sends every report the journal still holds (left by a crash, or not
    /// delivered earlier).
    async fn flush_journal(&mut self, client: &CoordinatorClient) {
        let reports = match self.journal.reports() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(slot = self.index, error = %e, "cannot read the journal");
                return;
            }
        };
        for report in reports {
            tracing::info!(slot = self.index, run = %report.run(), "re-sending a journaled report");
            self.deliver(client, &report).await;
        }
    }

    /// The thermal gate for a leased run. Usually it was waited out before the lease
    /// (the previous run's gap); then only what this run's own gap adds is waited, and
    /// the temperature is checked once more (the gate opens at once on a GPU that
    /// stayed settled). The recorded wait is the whole wait since the last run.
    async fn gate_after_lease(&mut self, gap_s: f64, idle_temps: &[Option<f64>]) -> GateOutcome {
        let since_last = self
            .last_run
            .map(|(ended, _)| ended.elapsed().as_secs_f64());
        let Some((pre, opened)) = self.pre_gate.take() else {
            // No gate before the lease: the first run of a fixed slot (the whole
            // gap), or a dynamic pool's run (what is left of the gap since the last
            // run on any of its GPUs ended).
            let remaining = gap_s - since_last.unwrap_or(0.0);
            return self.thermal_gate(remaining.max(0.0), idle_temps).await;
        };
        let remaining = gap_s - since_last.unwrap_or(0.0);
        let post = self.thermal_gate(remaining.max(0.0), idle_temps).await;
        GateOutcome {
            waited_s: pre.waited_s + post.waited_s,
            // The reason of whichever gate did the waiting.
            reason: if post.waited_s > 0.5 || opened.elapsed().as_secs_f64() > 60.0 {
                post.reason
            } else {
                pre.reason
            },
        }
    }

    /// Each GPU's idle temperature from the cached device-idle baseline (none yet:
    /// `None` per GPU).
    fn idle_temps(&self) -> Vec<Option<f64>> {
        (0..self.samplers.len())
            .map(|i| {
                self.baseline
                    .as_ref()
                    .and_then(|b| b.per_gpu.get(i))
                    .map(|g| g.temp_c)
            })
            .collect()
    }

    /// Waits for the study's gap, then for every GPU of the slot to cool to near its
    /// idle temperature or to stop cooling (`lem_common::thermal::decide`).
    async fn thermal_gate(&self, gap_s: f64, idle_temps: &[Option<f64>]) -> GateOutcome {
        let start = tokio::time::Instant::now();
        if gap_s > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(gap_s)).await;
        }
        let policy = GatePolicy::default();
        // The samples of the last plateau window count too: a GPU that has already
        // settled (the harness idled through a baseline or the gap) opens the gate at once.
        let started_ns = mono_ns().saturating_sub((policy.plateau_window_s * 1e9) as u64);
        loop {
            let now = mono_ns();
            let mut reasons = Vec::new();
            for (i, sampler) in self.samplers.iter().enumerate() {
                let temps: Vec<(u64, f64)> = sampler
                    .window(started_ns, now, 0)
                    .iter()
                    .map(|s| (s.t_mono_ns, s.temp_c))
                    .collect();
                let idle = idle_temps.get(i).copied().flatten();
                match thermal::decide(&temps, idle, started_ns, now, &policy) {
                    GateDecision::Open(reason) => reasons.push(reason),
                    _ => break,
                }
            }
            if reasons.len() == self.samplers.len() {
                // The reason of a GPU that did not simply cool down, if any.
                let reason = reasons
                    .iter()
                    .copied()
                    .find(|r| *r != GateReason::Cooled)
                    .unwrap_or(GateReason::Cooled);
                return GateOutcome {
                    waited_s: start.elapsed().as_secs_f64(),
                    reason,
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Measures idle power: waits until power is flat, then averages a window.
    /// On a multi-GPU slot every GPU must have settled; the record's power is the sum
    /// over the GPUs (their spreads added in quadrature), its temperature the hottest.
    async fn measure_idle(
        &self,
        duration_s: f64,
        kind: &str,
        strategy: &str,
    ) -> (BaselineRecord, Vec<GpuIdle>) {
        // Settled = the last 3 s are flat (spread under SETTLE_STD_W) and no lower than
        // the 3 s before them by more than SETTLE_DRIFT_W: NVML's power is a lagging
        // average on the H100, and after a CUDA context goes away the card keeps
        // stepping down for seconds, so "flat for 2 s" alone measured 73-86 W there.
        // Only samples taken after this call count: the power just before it (a model
        // still resident, a run just ended) says nothing about the state being measured,
        // and NVML's lagging average can look flat across the change (measured on the
        // H100: a device baseline taken right after the harness stopped averaged 82-84 W
        // with a 20 W spread while the card was still stepping down from 120 W to 71 W).
        let settle_start = tokio::time::Instant::now();
        let settle_start_ns = mono_ns();
        loop {
            let now = mono_ns();
            if now < settle_start_ns + 6_000_000_000 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let settled = self.samplers.iter().all(|sampler| {
                let stats_of = |from: u64, to: u64| {
                    let p: Vec<f64> = sampler
                        .window(from, to, 0)
                        .iter()
                        .map(|s| s.power_w)
                        .collect();
                    (stats::mean(&p), stats::std_population(&p), p.len())
                };
                let (recent, spread, n) = stats_of(now.saturating_sub(3_000_000_000), now);
                let (earlier, _, m) = stats_of(
                    now.saturating_sub(6_000_000_000),
                    now.saturating_sub(3_000_000_000),
                );
                match (recent, spread, earlier) {
                    (Some(r), Some(sd), Some(e)) if n >= 10 && m >= 10 => {
                        sd < SETTLE_STD_W && (e - r) < SETTLE_DRIFT_W
                    }
                    _ => false,
                }
            });
            if settled || settle_start.elapsed() > SETTLE_MAX {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let settle_s = settle_start.elapsed().as_secs_f64();
        let t0 = mono_ns();
        tokio::time::sleep(Duration::from_secs_f64(duration_s)).await;
        let t1 = mono_ns();
        let mut per_gpu = Vec::new();
        let (mut variance, mut n_samples, mut first_last) = (0.0, 0, None);
        for sampler in &self.samplers {
            sampler.wait_past(t1).await;
            let w = sampler.window(t0, t1, 0);
            let p: Vec<f64> = w.iter().map(|s| s.power_w).collect();
            let last = w.last().cloned().unwrap_or_default();
            variance += stats::std_population(&p).unwrap_or(0.0).powi(2);
            n_samples += p.len();
            per_gpu.push(GpuIdle {
                power_w: stats::mean(&p).unwrap_or(0.0),
                temp_c: last.temp_c,
            });
            first_last.get_or_insert(last);
        }
        let last = first_last.unwrap_or_default();
        let record = BaselineRecord {
            kind: kind.to_string(),
            mean_power_w: per_gpu.iter().map(|g| g.power_w).sum(),
            std_power_w: variance.sqrt(),
            n_samples,
            duration_s: (t1 - t0) as f64 / 1e9,
            settle_s,
            temp_c: per_gpu.iter().map(|g| g.temp_c).fold(f64::MIN, f64::max),
            sm_clock_mhz: Some(last.sm_clock_mhz),
            pstate: Some(last.pstate),
            strategy: strategy.to_string(),
            cache_age_s: 0.0,
            measured_at: format_utc_ms(unix_ms()),
        };
        (record, per_gpu)
    }

    /// The device-idle baseline for this run (the slot's record and each GPU's
    /// share), per llem's strategy: measured with no process of ours holding the GPUs
    /// (the harness is stopped first), then reused while fresh. The GPUs' processes
    /// are listed before and after each measurement: a baseline measured while
    /// another process held a GPU is used for this run only and never cached (`warn`),
    /// and under `refuse` the run fails instead. A `validated` spot check on a shared
    /// GPU would say nothing: it waits for a later run and the cached value is used.
    async fn baseline_for(
        &mut self,
        s: &BaselineSettings,
        log: &mut IsolationLog,
    ) -> Result<RunBaseline, Failure> {
        let now = mono_ns();
        let age_s = |b: &CachedBaseline| (now - b.measured_mono_ns) as f64 / 1e9;
        let reuse = match (&self.baseline, s.strategy.as_str()) {
            (Some(_), "fresh") | (None, _) => false,
            (Some(b), _) => age_s(b) < s.cache_ttl_s,
        };
        if reuse && s.strategy == "validated" && self.runs_since_check >= s.validation_interval {
            // Spot check: 5 s of device idle against the cached value.
            self.stop_harness_for_baseline().await;
            let mut spot_log = IsolationLog::default();
            let mut shared = self
                .isolation_check(CheckPoint::BeforeBaseline, &mut spot_log)
                .await?;
            if !shared {
                let (spot, _) = self.measure_idle(5.0, "device", "validated").await;
                shared = self
                    .isolation_check(CheckPoint::AfterBaseline, &mut spot_log)
                    .await?;
                if !shared {
                    self.runs_since_check = 0;
                    let cached = self.baseline.as_ref().expect("reuse implies cached");
                    let drift = (spot.mean_power_w - cached.record.mean_power_w).abs()
                        / cached.record.mean_power_w.max(1e-9);
                    if drift > s.drift_threshold {
                        tracing::warn!(slot = self.index, drift, "baseline drifted; re-measuring");
                        if let Some(run_only) = self.measure_device_idle(s, log).await? {
                            return Ok(run_only);
                        }
                    }
                }
            }
            log.errors.extend(spot_log.errors);
            if shared {
                log.notes.push(format!(
                    "baseline spot check postponed: {}; the cached baseline (measured with no other process on the GPUs) was used",
                    describe_processes(&spot_log.foreign)
                ));
            }
        } else if !reuse {
            self.stop_harness_for_baseline().await;
            if let Some(run_only) = self.measure_device_idle(s, log).await? {
                return Ok(run_only);
            }
        }
        self.runs_since_check += 1;
        let b = self.baseline.as_ref().expect("baseline set above");
        let mut rec = b.record.clone();
        rec.cache_age_s = (mono_ns() - b.measured_mono_ns) as f64 / 1e9;
        rec.strategy = s.strategy.clone();
        Ok((rec, b.per_gpu.clone()))
    }

    /// Measures the device idle (the harness already stopped) between two isolation
    /// checks. With no other process on the GPUs it becomes the cached baseline and
    /// `None` is returned; on a shared GPU (`warn`) it is returned for this run only
    /// and the cache is left as it was.
    async fn measure_device_idle(
        &mut self,
        s: &BaselineSettings,
        log: &mut IsolationLog,
    ) -> Result<Option<RunBaseline>, Failure> {
        let before = self
            .isolation_check(CheckPoint::BeforeBaseline, log)
            .await?;
        let (record, per_gpu) = self.measure_idle(s.duration_s, "device", &s.strategy).await;
        let after = self.isolation_check(CheckPoint::AfterBaseline, log).await?;
        if before || after {
            return Ok(Some((record, per_gpu)));
        }
        self.baseline = Some(CachedBaseline {
            record,
            per_gpu,
            measured_mono_ns: mono_ns(),
        });
        self.runs_since_check = 0;
        Ok(None)
    }

    /// The resident idle for `model`: measured now (model loaded, after a run) unless
    /// a fresh enough value for the same model is cached. Measured while another
    /// process held a GPU (`warn`), it is used for this run only and never cached;
    /// under `refuse` none is measured then (the run's own figures stand, and a
    /// warning says why the resident figures are missing).
    async fn resident_baseline_for(
        &mut self,
        s: &BaselineSettings,
        model: &str,
        log: &mut IsolationLog,
    ) -> Option<RunBaseline> {
        let now = mono_ns();
        let fresh_enough = self.resident.as_ref().is_some_and(|(m, b)| {
            m == model
                && s.strategy != "fresh"
                && ((now - b.measured_mono_ns) as f64 / 1e9) < s.cache_ttl_s
        });
        if !fresh_enough {
            let before = match self
                .isolation_check(CheckPoint::BeforeResidentBaseline, log)
                .await
            {
                Ok(b) => b,
                Err((_, message)) => {
                    log.notes.push(message);
                    return None;
                }
            };
            let (record, per_gpu) = self
                .measure_idle(s.duration_s, "resident", &s.strategy)
                .await;
            let after = match self
                .isolation_check(CheckPoint::AfterResidentBaseline, log)
                .await
            {
                Ok(a) => a,
                Err((_, message)) => {
                    log.notes.push(message);
                    return None;
                }
            };
            if before || after {
                return Some((record, per_gpu));
            }
            self.resident = Some((
                model.to_string(),
                CachedBaseline {
                    record,
                    per_gpu,
                    measured_mono_ns: mono_ns(),
                },
            ));
        }
        let (_, b) = self.resident.as_ref().expect("set above");
        let mut rec = b.record.clone();
        rec.cache_age_s = (mono_ns() - b.measured_mono_ns) as f64 / 1e9;
        Some((rec, b.per_gpu.clone()))
    }

    /// Device idle means no process of ours holds a CUDA context: unloading weights
    /// is not enough (the context keeps the H100 at P0, ~118 W instead of ~72 W), so
    /// the harness server is stopped; the next run starts it again.
    async fn stop_harness_for_baseline(&mut self) {
        self.harness.stop().await;
        self.load.on_resident(false, mono_ns());
    }

    /// Runs one experiment and measures it. Errors carry the failure class.
    async fn measure(
        &mut self,
        grant: &LeaseGrant,
        lease_mono: u64,
        mut cancel: watch::Receiver<Option<String>>,
    ) -> Result<RunResult, (FailureClass, String)> {
        let config = lem_common::pyjson::parse(&grant.config_json).map_err(|e| {
            (
                FailureClass::Configuration,
                format!("the coordinator sent a config that is not JSON: {e}"),
            )
        })?;
        let mut warnings = Vec::new();
        // What the device isolation checks find, before each baseline and around the
        // window; under `refuse` a check that finds another process ends the run here.
        let mut iso = IsolationLog::default();

        // Baseline first (it may unload the model), then the thermal gate.
        let bs = BaselineSettings::from_config(&config);
        let (baseline, baseline_gpus) = if bs.enabled {
            let (record, per_gpu) = self.baseline_for(&bs, &mut iso).await?;
            (Some(record), Some(per_gpu))
        } else {
            warnings.push(
                "measurement.baseline.enabled is false: energy_adjusted_j is not reported"
                    .to_string(),
            );
            (None, None)
        };
        // The idle temperatures of the baseline this run uses (one measured for this
        // run only, on a shared GPU, is not in the cache).
        let idle_temps = match &baseline_gpus {
            Some(per_gpu) => per_gpu.iter().map(|g| Some(g.temp_c)).collect(),
            None => self.idle_temps(),
        };
        let gate = self.gate_after_lease(grant.gap_before_s, &idle_temps).await;
        if gate.reason == GateReason::Timeout {
            warnings.push(format!(
                "thermal gate timed out after {:.0} s: the GPU was still cooling",
                gate.waited_s
            ));
        }

        // The run itself.
        let source = config
            .get_path("task.dataset.source")
            .and_then(Value::as_str)
            .unwrap_or("aienergyscore");
        let dataset_path = self.harness.dataset_path(source);
        let run_id = grant.run.to_string();
        let dataset = dataset_path.to_string_lossy();
        let request = run_request_line(&RunRequest {
            run_id: &run_id,
            config_json: &grant.config_json,
            dataset_path: &dataset,
            prefill_window_seconds: self.prefill_window_s,
            quiet_seconds: self.quiet_s,
            per_token_timing: self.per_token_timing,
            force_cold_start: false,
        });
        // With quiet spans, the counter is read back to back over each span and never
        // inside a window; without, in a burst from each window edge.
        let quiet_burst = Duration::from_secs_f64(self.quiet_s + 0.1);
        let quiet = self.quiet_s > 0.0;
        // The last look at the GPUs before the run goes to the harness.
        self.isolation_check(CheckPoint::BeforeWindow, &mut iso)
            .await?;
        let started_ms = unix_ms();
        let mut transcript = RunTranscript::default();
        let load = self.load.clone();
        let samplers = &self.samplers;
        let cancel_fut = async move {
            loop {
                if let Some(why) = cancel.borrow().clone() {
                    return why;
                }
                if cancel.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let res = self
            .harness
            .run(
                &request,
                RunLimits::default(),
                Box::pin(cancel_fut),
                &mut |ev| {
                    match ev.event.as_str() {
                        "phase" => load.on_phase(
                            ev.str_field("phase").unwrap_or("idle"),
                            ev.u64_field("batch_size").unwrap_or(1) as u32,
                            ev.t_mono_ns,
                        ),
                        "loaded" => load.on_resident(true, ev.t_mono_ns),
                        "quiet_start" => {
                            for s in samplers {
                                s.counter_burst(quiet_burst);
                            }
                        }
                        "quiet_end" => {
                            for s in samplers {
                                s.counter_burst_stop();
                            }
                        }
                        "measure_start"
                        | "measure_end"
                        | "prefill_window_start"
                        | "prefill_window_end"
                            if !quiet =>
                        {
                            for s in samplers {
                                s.counter_burst(COUNTER_BURST);
                            }
                        }
                        "error" | "result" => load.on_phase("idle", 1, ev.t_mono_ns),
                        _ => {}
                    }
                    transcript.handle_event(ev);
                },
            )
            .await;
        self.load.on_phase("idle", 1, mono_ns());
        if let Err(e) = res {
            // Every harness/transport failure is the host's, not the config's.
            return Err((FailureClass::Infrastructure, e.to_string()));
        }
        // Who held the GPUs as the window ended (NVML keeps no history: a process
        // that came and went inside the window is not seen).
        self.isolation_check(CheckPoint::AfterWindow, &mut iso)
            .await?;
        let ended_ms = unix_ms();
        let (metrics, engine_version) = match transcript.outcome.clone() {
            Some(RunOutcome::Result {
                metrics,
                engine_version,
            }) => (metrics, engine_version),
            Some(RunOutcome::Error { class, message }) => return Err((class, message)),
            None => {
                return Err((
                    FailureClass::Infrastructure,
                    "harness ended without a result".into(),
                ))
            }
        };
        let Some(window) = transcript.window() else {
            return Err((
                FailureClass::Infrastructure,
                "harness result has no measure_start/measure_end window".into(),
            ));
        };
        let (t0, t1) = (window.t0, window.t1);
        // The counter reads reach past the window by the quiet spans beside it.
        let reach = |w: &Window| {
            let before = w.quiet_before.map_or(0, |q| w.t0.saturating_sub(q.from_ns));
            let after = w.quiet_after.map_or(0, |q| q.to_ns.saturating_sub(w.t1));
            before.max(after)
        };

        // Energy over the harness's window, per GPU of the slot, then summed.
        let interval_ns = self.samplers[0].interval.as_nanos() as u64;
        let margin = 2 * interval_ns + 200_000_000;
        let mut per_gpu_energy = Vec::new();
        let mut per_gpu_samples = Vec::new();
        for sampler in &self.samplers {
            sampler.wait_counter_burst().await;
            sampler.wait_past(t1 + 2 * interval_ns).await;
            let samples = sampler.window(t0, t1, margin);
            let counter = sampler.counter_window(t0, t1, margin + 500_000_000 + reach(&window));
            let we =
                window_energy_in(&power_samples(&samples), &counter, &window).map_err(|e| {
                    (
                        FailureClass::Infrastructure,
                        format!(
                            "no usable samples of GPU {} for the window ({e}); sampler: {}",
                            sampler.description.uuid,
                            sampler.last_error().unwrap_or_else(|| "no error".into())
                        ),
                    )
                })?;
            per_gpu_energy.push(we);
            per_gpu_samples.push(samples);
        }
        let we = sum_windows(&per_gpu_energy).expect("a slot has at least one GPU");
        if we.disagreement_flagged {
            warnings.push(format!(
                "energy counter and power integral disagree by {:.1}%",
                we.disagreement_pct.unwrap_or(0.0)
            ));
        }
        if we.short_window {
            warnings.push("short window: fewer than one counter step or two power samples".into());
        }
        if we.uncertainty_flagged {
            warnings.push(format!(
                "the window's edges may be off by {:.2} J ({:.1}% of its energy): {}",
                we.uncertainty_j.unwrap_or(0.0),
                we.uncertainty_j.unwrap_or(0.0) / we.energy_j.abs().max(1e-9) * 100.0,
                match we.edge_rule {
                    Some(lem_common::energy::EdgeRule::Quiet) | None =>
                        "too few counter updates for its length",
                    Some(_) =>
                        "an edge was carried through a counter step that no quiet span isolated",
                }
            ));
        }
        // Temperatures and throttling: the samples inside the window, or for a window
        // shorter than the sampling interval, the samples nearest its edges; on a
        // multi-GPU slot the hottest GPU's temperatures and any GPU's throttling.
        let in_windows: Vec<Vec<&crate::telemetry::TelemetrySample>> = per_gpu_samples
            .iter()
            .map(|samples| {
                let mut in_window: Vec<_> = samples
                    .iter()
                    .filter(|s| s.t_mono_ns >= t0 && s.t_mono_ns <= t1)
                    .collect();
                if in_window.is_empty() {
                    let before = samples.iter().rev().find(|s| s.t_mono_ns < t0);
                    let after = samples.iter().find(|s| s.t_mono_ns > t1);
                    in_window.extend(before.into_iter().chain(after));
                }
                in_window
            })
            .collect();
        let hottest = |f: &dyn Fn(&[&crate::telemetry::TelemetrySample]) -> Option<f64>| {
            in_windows
                .iter()
                .filter_map(|w| f(w))
                .fold(None, |acc: Option<f64>, t| {
                    Some(acc.map_or(t, |a| a.max(t)))
                })
        };
        let start_temp = hottest(&|w| w.first().map(|s| s.temp_c));
        let end_temp = hottest(&|w| w.last().map(|s| s.temp_c));
        let gpu_max_temp = |w: &[&crate::telemetry::TelemetrySample]| {
            w.iter().map(|s| s.temp_c).fold(f64::MIN, f64::max).max(0.0)
        };
        let max_temp = hottest(&|w| Some(gpu_max_temp(w)));
        let any = |f: &dyn Fn(&crate::telemetry::TelemetrySample) -> bool| {
            in_windows.iter().flatten().any(|s| f(s))
        };
        let throttle = any(&|s| s.throttle_thermal);
        if throttle {
            warnings.push("thermal throttling seen during the window".into());
        }
        let throttle_power = any(&|s| s.throttle_power);
        if throttle_power {
            warnings.push("power-cap throttling seen during the window".into());
        }
        let hw_slowdown = any(&|s| s.hw_slowdown);
        if hw_slowdown {
            warnings.push("hardware slowdown seen during the window".into());
        }
        let clocks: Vec<u32> = in_windows
            .iter()
            .flatten()
            .map(|s| s.sm_clock_mhz)
            .collect();
        if let Some(w) = engine_version_warning(&grant.engine, engine_version.as_deref()) {
            warnings.push(w);
        }
        let versions = metrics_versions(&metrics);
        let (environment, environment_hash) = self.environment.with_engine(&versions);
        let jitter = self.samplers.iter().map(|s| s.jitter()).fold(
            crate::telemetry::JitterStats::default(),
            |a, j| crate::telemetry::JitterStats {
                n: a.n + j.n,
                mean_late_us: a.mean_late_us.max(j.mean_late_us),
                max_late_us: a.max_late_us.max(j.max_late_us),
            },
        );
        let groups: Vec<&[crate::telemetry::TelemetrySample]> =
            per_gpu_samples.iter().map(|s| s.as_slice()).collect();
        let timeseries = downsample(&groups, &self.gpus, t0, t1, TIMESERIES_POINTS);
        let input_tokens = metrics
            .get("input_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let output_tokens = metrics
            .get("output_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let n_prompts = metrics
            .get("n_prompts")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let duration_s = we.duration_s;
        let adjusted = baseline
            .as_ref()
            .map(|b| adjusted_energy(we.energy_j, b.mean_power_w, duration_s));
        if adjusted.is_some_and(|a| a.clamped) {
            warnings.push("baseline-adjusted energy was negative and was clamped to 0".into());
        }
        // Prefill energy by the differential method: the prefill-only window's energy
        // per pass over the run's batches; decode is the rest of the run.
        let mut prefill = None;
        if let (Some(pw), Some(pwin)) = (
            transcript.prefill_window.clone(),
            transcript.prefill_window_edges(),
        ) {
            if pw.passes > 0 && pw.calls > 0 {
                let (start, end) = (pwin.t0, pwin.t1);
                let parts: Result<Vec<_>, _> = self
                    .samplers
                    .iter()
                    .map(|sampler| {
                        let s = sampler.window(start, end, margin);
                        let c =
                            sampler.counter_window(start, end, margin + 500_000_000 + reach(&pwin));
                        window_energy_in(&power_samples(&s), &c, &pwin)
                    })
                    .collect();
                match parts.map(|p| sum_windows(&p).expect("a slot has at least one GPU")) {
                    Ok(e) => prefill = Some((e, pw)),
                    Err(e) => warnings.push(format!("prefill window energy unavailable: {e}")),
                }
            }
        }
        // Resident idle: the model stays loaded after the run; measure it (cached per
        // model and strategy like the device idle) so the dynamic energy can be given.
        let model_key = config
            .get_path("task.model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (resident, resident_gpus) = match bs.enabled {
            true => match self.resident_baseline_for(&bs, &model_key, &mut iso).await {
                Some((record, per_gpu)) => (Some(record), Some(per_gpu)),
                None => (None, None),
            },
            false => (None, None),
        };
        warnings.extend(iso.warnings());
        // The resident idle to subtract for the dynamic energy: the quiet spans' power
        // beside this very window (the GPU's idle at this temperature; on the H200 the
        // cached baseline drifted ~1 W over a campaign, 2-15 % of a low-power run's
        // dynamic energy), else the resident baseline.
        let resident_idle = match (bs.enabled, we.quiet_power_w, resident.as_ref()) {
            (true, Some(q), _) => Some((q, "quiet")),
            (true, None, Some(r)) => Some((r.mean_power_w, "resident_baseline")),
            _ => None,
        };
        let per_token = |e: f64| {
            if output_tokens > 0 {
                e / output_tokens as f64
            } else {
                0.0
            }
        };
        let desc = &self.samplers[0].description;
        let method_name = |m: EnergyMethod| match m {
            EnergyMethod::CounterInterpolated => "counter_interpolated".to_string(),
            EnergyMethod::PowerIntegral => "power_integral".to_string(),
        };
        let idle_of = |per_gpu: Option<&Vec<GpuIdle>>, i: usize| {
            per_gpu.and_then(|g| g.get(i)).map(|g| g.power_w)
        };
        let gpus: Vec<GpuFigures> = self
            .samplers
            .iter()
            .enumerate()
            .map(|(i, sampler)| {
                let e = &per_gpu_energy[i];
                GpuFigures {
                    index: self.gpus[i],
                    name: sampler.description.name.clone(),
                    uuid: sampler.description.uuid.clone(),
                    total_energy_j: e.energy_j,
                    energy_method: method_name(e.method),
                    energy_integral_j: e.integral_j,
                    energy_counter_raw_j: e.counter_delta_raw_j,
                    mean_power_w: e.mean_power_w,
                    baseline_power_w: idle_of(baseline_gpus.as_ref(), i),
                    resident_baseline_power_w: idle_of(resident_gpus.as_ref(), i),
                    max_temp_c: gpu_max_temp(&in_windows[i]),
                }
            })
            .collect();
        let result = RunResult {
            worker: self.worker.0.clone(),
            host: self.host.clone(),
            slot: self.index,
            gpu_name: desc.name.clone(),
            gpu_uuid: desc.uuid.clone(),
            simulated: desc.simulated,
            engine: grant.engine.clone(),
            engine_version,
            model_name: config
                .get_path("task.model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            started_at: format_utc_ms(started_ms),
            ended_at: format_utc_ms(ended_ms),
            n_prompts,
            input_tokens,
            output_tokens,
            duration_s,
            total_energy_j: we.energy_j,
            energy_method: method_name(we.method),
            energy_integral_j: we.integral_j,
            energy_counter_raw_j: we.counter_delta_raw_j,
            energy_disagreement_pct: we.disagreement_pct,
            energy_disagreement_flagged: we.disagreement_flagged,
            energy_uncertainty_j: we.uncertainty_j,
            energy_uncertainty_flagged: we.uncertainty_flagged,
            energy_edge_rule: we.edge_rule.map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
            energy_edges: we
                .edges
                .as_ref()
                .and_then(|e| serde_json::to_value(e).ok())
                .unwrap_or(serde_json::Value::Null),
            quiet_power_w: we.quiet_power_w,
            window_start_mono_ns: t0,
            window_end_mono_ns: t1,
            gpu_shared: !iso.foreign.is_empty(),
            gpu_foreign_processes: iso.foreign,
            short_window: we.short_window,
            mean_power_w: we.mean_power_w,
            n_power_samples: we.n_power_samples,
            energy_adjusted_j: adjusted.map(|a| a.adjusted_j),
            energy_adjusted_clamped: adjusted.is_some_and(|a| a.clamped),
            baseline_power_w: baseline.as_ref().map(|b| b.mean_power_w),
            baseline: baseline.clone(),
            avg_tokens_per_second: (input_tokens + output_tokens) as f64 / duration_s,
            output_tokens_per_second: output_tokens as f64 / duration_s,
            avg_energy_per_token_j: per_token(we.energy_j),
            energy_per_token_adjusted_j: adjusted.map(|a| per_token(a.adjusted_j)),
            start_temp_c: start_temp.unwrap_or(0.0),
            max_temp_c: max_temp.unwrap_or(0.0),
            end_temp_c: end_temp.unwrap_or(0.0),
            thermal_wait_s: gate.waited_s,
            thermal_wait_reason: gate.reason.as_str().to_string(),
            throttle_thermal: throttle,
            model_load_seconds: transcript.load_seconds,
            model_already_loaded: transcript.already_loaded.unwrap_or(false),
            lease_to_measure_s: (t0.saturating_sub(lease_mono)) as f64 / 1e9,
            harness_metrics: metrics,
            warmup: transcript.warmup.unwrap_or(serde_json::Value::Null),
            energy_adjusted_resident_j: resident_idle
                .map(|(w, _)| adjusted_energy(we.energy_j, w, duration_s).adjusted_j),
            energy_adjusted_resident_source: resident_idle.map(|(_, source)| source.to_string()),
            energy_adjusted_resident_uncertainty_j: resident_idle
                .filter(|(_, source)| *source == "quiet")
                .and(we.quiet_power_se_w)
                .map(|se| {
                    ((se * duration_s).powi(2) + we.uncertainty_j.unwrap_or(0.0).powi(2)).sqrt()
                }),
            resident_baseline: resident,
            prefill_window_energy_j: prefill.as_ref().map(|(e, _)| e.energy_j),
            prefill_window_s: prefill.as_ref().map(|(e, _)| e.duration_s),
            prefill_calls: prefill.as_ref().map(|(_, p)| p.calls).unwrap_or(0),
            prefill_passes: prefill.as_ref().map(|(_, p)| p.passes).unwrap_or(0),
            prefill_energy_per_call_j: prefill.as_ref().map(|(e, p)| e.energy_j / p.calls as f64),
            prefill_energy_j: prefill.as_ref().map(|(e, p)| e.energy_j / p.passes as f64),
            decode_energy_j: prefill
                .as_ref()
                .map(|(e, p)| (we.energy_j - e.energy_j / p.passes as f64).max(0.0)),
            prefill_energy_adjusted_j: prefill.as_ref().and_then(|(e, p)| {
                baseline.as_ref().map(|b| {
                    adjusted_energy(e.energy_j, b.mean_power_w, e.duration_s).adjusted_j
                        / p.passes as f64
                })
            }),
            decode_energy_adjusted_j: prefill.as_ref().and_then(|(e, p)| {
                let b = baseline.as_ref()?;
                let run_adj = adjusted_energy(we.energy_j, b.mean_power_w, duration_s).adjusted_j;
                let pre_adj = adjusted_energy(e.energy_j, b.mean_power_w, e.duration_s).adjusted_j
                    / p.passes as f64;
                Some((run_adj - pre_adj).max(0.0))
            }),
            environment,
            environment_hash,
            timeseries,
            sm_clock_min_mhz: clocks.iter().copied().min().unwrap_or(0),
            sm_clock_max_mhz: clocks.iter().copied().max().unwrap_or(0),
            throttle_power,
            hw_slowdown,
            sample_interval_ms: self.samplers[0].interval.as_secs_f64() * 1000.0,
            sampler_mean_late_us: jitter.mean_late_us,
            sampler_max_late_us: jitter.max_late_us,
            warnings,
            gpu_indices: self.gpus.clone(),
            gpus,
        };
        // JSON has no NaN: a non-finite number would poison the connection, and a
        // wrong number must never be published. Refuse the result instead.
        let bad = result.non_finite_fields();
        if !bad.is_empty() {
            return Err((
                FailureClass::Infrastructure,
                format!("measurement produced non-finite values in {} (a worker bug; the run will be retried)", bad.join(", ")),
            ));
        }
        Ok(result)
    }
}

/// The processes other than `own()`'s on `gpus` (their samplers, in order) now,
/// listed off the executor; a GPU that cannot be listed counts as unshared.
async fn foreign_now(
    samplers: Vec<Arc<Sampler>>,
    gpus: Vec<u32>,
    own: impl FnOnce() -> std::collections::BTreeSet<u32> + Send + 'static,
) -> Vec<ForeignProcess> {
    tokio::task::spawn_blocking(move || {
        let listing = isolation::list(&samplers, &gpus);
        foreign_processes(&listing.processes, &own(), CheckPoint::BeforeWindow)
    })
    .await
    .unwrap_or_default()
}

/// The library versions a run's harness reported (`versions` in its result), kept in
/// the environment snapshot.
fn metrics_versions(metrics: &serde_json::Value) -> serde_json::Value {
    metrics
        .get("versions")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A warning when the engine version a run saw differs from the version llem 0.7.0's
/// parameter registry is pinned to (its parameters and defaults may differ).
fn engine_version_warning(engine: &str, seen: Option<&str>) -> Option<String> {
    let pinned = lem_common::study::schema::pinned_engine_version(engine)?;
    match seen {
        Some(v) if v == pinned => None,
        Some(v) => Some(format!(
            "engine {engine} {v} differs from the version the parameter registry is pinned to ({pinned}); parameters and defaults may differ"
        )),
        None => Some(format!(
            "engine {engine} did not report its version (registry pinned to {pinned})"
        )),
    }
}

/// The samples of `[t0, t1]`; for a window shorter than the sampling interval, the
/// samples nearest its edges, placed at the edges.
fn window_samples(
    samples: &[crate::telemetry::TelemetrySample],
    t0: u64,
    t1: u64,
) -> Vec<crate::telemetry::TelemetrySample> {
    let mut inside: Vec<_> = samples
        .iter()
        .filter(|s| s.t_mono_ns >= t0 && s.t_mono_ns <= t1)
        .cloned()
        .collect();
    if inside.is_empty() {
        let before = samples.iter().rev().find(|s| s.t_mono_ns < t0);
        let after = samples.iter().find(|s| s.t_mono_ns > t1);
        for (s, at) in before
            .into_iter()
            .map(|s| (s, t0))
            .chain(after.map(|s| (s, t1)))
        {
            let mut s = s.clone();
            s.t_mono_ns = at;
            inside.push(s);
        }
    }
    inside
}

/// One bucket's means: seconds from `t0`, power, temperature, SM clock.
type BucketMeans = (f64, f64, f64, f64);

/// `n` buckets of equal length over `[t0, t1]`, each the mean of its samples (none
/// where it has none).
fn bucket_means(
    inside: &[crate::telemetry::TelemetrySample],
    t0: u64,
    t1: u64,
    n: usize,
) -> Vec<Option<BucketMeans>> {
    let span = (t1 - t0).max(1) as f64;
    let mut acc = vec![(0usize, 0.0, 0.0, 0.0, 0.0); n];
    for s in inside {
        let i = (((s.t_mono_ns - t0) as f64 / span) * n as f64) as usize;
        let b = &mut acc[i.min(n - 1)];
        b.0 += 1;
        b.1 += (s.t_mono_ns - t0) as f64 / 1e9;
        b.2 += s.power_w;
        b.3 += s.temp_c;
        b.4 += s.sm_clock_mhz as f64;
    }
    acc.into_iter()
        .map(|(k, t, p, c, m)| {
            let k = k as f64;
            (k > 0.0).then(|| (t / k, p / k, c / k, m / k))
        })
        .collect()
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The window's telemetry, downsampled for storage: at most `max_points` buckets of
/// equal length over `[t0, t1]`, each the mean of the samples in it. Times are
/// seconds from `t0`.
///
/// For a group of GPUs (`per_gpu`, one sample list per GPU of `gpus`, in order) the
/// buckets are the same for every GPU and only those where every GPU has samples are
/// kept: `power_w` is the group's (the sum of the GPUs' means, as the run's energy is
/// a sum), `temp_c` the hottest GPU's, `sm_clock_mhz` the slowest GPU's, and
/// `per_gpu` holds each GPU's own columns on the same `t_s`.
fn downsample(
    per_gpu: &[&[crate::telemetry::TelemetrySample]],
    gpus: &[u32],
    t0: u64,
    t1: u64,
    max_points: usize,
) -> serde_json::Value {
    let inside: Vec<Vec<_>> = per_gpu.iter().map(|s| window_samples(s, t0, t1)).collect();
    let fewest = inside.iter().map(Vec::len).min().unwrap_or(0);
    let n = max_points.clamp(1, fewest.max(1));
    let buckets: Vec<Vec<Option<BucketMeans>>> =
        inside.iter().map(|s| bucket_means(s, t0, t1, n)).collect();
    let kept: Vec<usize> = (0..n)
        .filter(|&i| !buckets.is_empty() && buckets.iter().all(|g| g[i].is_some()))
        .collect();
    let at = |g: usize, i: usize| buckets[g][i].expect("kept buckets have samples");
    let column =
        |f: &dyn Fn(usize) -> f64| -> Vec<f64> { kept.iter().map(|&i| round3(f(i))).collect() };
    let k = buckets.len().max(1);
    let mut out = serde_json::json!({
        "n_raw_samples": inside.iter().map(Vec::len).sum::<usize>(),
        "downsampling": format!("bucket means, at most {max_points} points"),
        "t_s": column(&|i| (0..buckets.len()).map(|g| at(g, i).0).sum::<f64>() / k as f64),
        "power_w": column(&|i| (0..buckets.len()).map(|g| at(g, i).1).sum()),
        "temp_c": column(&|i| (0..buckets.len()).map(|g| at(g, i).2).fold(f64::MIN, f64::max)),
        "sm_clock_mhz": column(&|i| (0..buckets.len()).map(|g| at(g, i).3).fold(f64::MAX, f64::min)),
    });
    if buckets.len() > 1 {
        let per: Vec<serde_json::Value> = (0..buckets.len())
            .map(|g| {
                serde_json::json!({
                    "gpu": gpus.get(g).copied().unwrap_or(g as u32),
                    "power_w": column(&|i| at(g, i).1),
                    "temp_c": column(&|i| at(g, i).2),
                    "sm_clock_mhz": column(&|i| at(g, i).3),
                })
            })
            .collect();
        out["per_gpu"] = serde_json::Value::Array(per);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::engine_version_warning;

    use super::downsample;
    use crate::telemetry::TelemetrySample;

    /// Samples every `step_ms` over `[0, 1 s]` at `power` W, `temp` C, `clock` MHz.
    fn samples(step_ms: u64, power: f64, temp: f64, clock: u32) -> Vec<TelemetrySample> {
        (0..=1000 / step_ms)
            .map(|i| TelemetrySample {
                t_mono_ns: i * step_ms * 1_000_000,
                power_w: power,
                temp_c: temp,
                sm_clock_mhz: clock,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn one_gpu_keeps_its_own_columns_and_no_per_gpu_part() {
        let a = samples(50, 100.0, 40.0, 1980);
        let ts = downsample(&[&a], &[3], 0, 1_000_000_000, 10);
        assert_eq!(ts["power_w"].as_array().unwrap().len(), 10);
        assert!(ts["power_w"].as_array().unwrap().iter().all(|p| p == 100.0));
        assert_eq!(ts["n_raw_samples"], 21);
        assert!(ts.get("per_gpu").is_none());
    }

    #[test]
    fn a_group_sums_power_takes_the_hottest_and_slowest_gpu_and_keeps_each_gpu() {
        // GPU 0 sampled every 50 ms, GPU 1 every 100 ms (a slower sampler): the
        // buckets are the same for both and set by the sparser one.
        let a = samples(50, 100.0, 40.0, 1980);
        let b = samples(100, 250.0, 55.0, 1755);
        let ts = downsample(&[&a, &b], &[0, 1], 0, 1_000_000_000, 240);
        let n = ts["t_s"].as_array().unwrap().len();
        assert_eq!(n, 11, "{ts}");
        assert!(ts["power_w"].as_array().unwrap().iter().all(|p| p == 350.0));
        assert!(ts["temp_c"].as_array().unwrap().iter().all(|t| t == 55.0));
        assert!(ts["sm_clock_mhz"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == 1755.0));
        let per = ts["per_gpu"].as_array().unwrap();
        assert_eq!(per.len(), 2);
        assert_eq!(
            (per[0]["gpu"].clone(), per[1]["gpu"].clone()),
            (0.into(), 1.into())
        );
        for (g, w) in [(0, 100.0), (1, 250.0)] {
            let p = per[g]["power_w"].as_array().unwrap();
            assert_eq!(p.len(), n);
            assert!(p.iter().all(|x| x == w));
        }
        assert_eq!(ts["n_raw_samples"], 21 + 11);
    }

    #[test]
    fn a_bucket_missing_on_one_gpu_is_left_out() {
        let a = samples(50, 100.0, 40.0, 1980);
        // GPU 1 has no samples in the second half of the window.
        let b: Vec<_> = samples(50, 200.0, 50.0, 1980)
            .into_iter()
            .filter(|s| s.t_mono_ns < 500_000_000)
            .collect();
        let ts = downsample(&[&a, &b], &[0, 1], 0, 1_000_000_000, 4);
        let t: Vec<f64> = ts["t_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(t.len(), 2, "{ts}");
        assert!(t.iter().all(|&x| x < 0.5), "{t:?}");
        assert!(ts["power_w"].as_array().unwrap().iter().all(|p| p == 300.0));
    }

    #[test]
    fn engine_version_mismatch_warns() {
        assert_eq!(engine_version_warning("transformers", Some("5.14.1")), None);
        let w = engine_version_warning("transformers", Some("5.17.0")).unwrap();
        assert!(w.contains("5.17.0") && w.contains("5.14.1"), "{w}");
        assert!(engine_version_warning("transformers", None).is_some());
        assert_eq!(engine_version_warning("synthetic", Some("0.1.0")), None);
    }
}
