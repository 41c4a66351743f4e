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
use lem_common::energy::Window;
use lem_common::gpus::choose_gpus;
use lem_common::isolation::{describe_processes, foreign_processes, CheckPoint, IsolationPolicy};
use lem_common::rpc::{
    CompleteRequest, CompleteStatus, CoordinatorClient, FailRequest, LeaseGrant, LeaseReply,
    LeaseRequest, RegisterRequest, RenewRequest, RpcError, RpcErrorKind,
};
use lem_common::run::baseline::{BaselineCache, GpuIdle, Idle};
use lem_common::run::{
    Collected, Command, Effect, Failure, GpuCollected, Input, Leased, RunLifecycle, Settings, Where,
};
use lem_common::stats;
use lem_common::thermal::{self, GateDecision, GatePolicy, GateReason};
use lem_common::types::{
    format_utc_ms, BaselineRecord, FailureClass, ForeignProcess, RunResult, WorkerId,
};
use lem_common::Value;
use tokio::sync::watch;
use tracing::{info_span, Instrument as _, Span};

use crate::clock::{mono_ns, unix_ms};
use crate::env::Environment;
use crate::harness_runtime::{HarnessRuntime, RunLimits};
use crate::idle::{self, IdleExit};
use crate::isolation;
use crate::journal::{Journal, JournalLease, Report};
use crate::metrics::WorkerMetrics;
use crate::pool::DynPool;
use crate::telemetry::{LoadSink, Sampler};
use crate::transport;

/// How long one lease call may wait for work.
const LEASE_WAIT_MS: u64 = 20_000;
/// Power is "flat" for the baseline when the last two seconds vary less than this.
const SETTLE_STD_W: f64 = 1.0;
const SETTLE_DRIFT_W: f64 = 0.5;
const SETTLE_MAX: Duration = Duration::from_secs(90);
/// How often a slot whose journal failed tries writing it again.
const JOURNAL_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Under `--device-isolation refuse`, how often a slot whose GPUs another process
/// holds lists them again before leasing.
const UNSHARED_RECHECK: Duration = Duration::from_secs(2);
/// A dynamic pool told that its next run needs more GPUs than are free asks again
/// when one of its runs frees GPUs, or after this long (the run may have gone to
/// another worker meanwhile).
const BLOCKED_RECHECK: Duration = Duration::from_secs(5);

/// Under `--drain`, how long a run that failed as infrastructure waits for the
/// worker's own stop request before it is reported: a signal sent to every process
/// of the worker's tree may stop the harness first (`handle_grant`).
const STOP_RACE: Duration = Duration::from_secs(2);

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
    /// What this host lets a study decide (remote code, host files, credentials).
    pub host_policy: lem_common::policy::HostPolicy,
    /// GPU memory growth that recycles the harness after a run (0: never).
    pub recycle_memory_growth_mb: u64,
    /// The GPU memory the harness held after its last run that loaded a model, and
    /// that model (the lifecycle measures growth from it).
    memory_mark: Option<(String, u64)>,
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
    /// The idle baselines measured on this slot's GPUs, kept for the next runs (the
    /// run lifecycle decides when they are reused).
    cache: BaselineCache,
    client: Option<CoordinatorClient>,
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
    /// The `(engine, task.model)` the harness loaded for the last run that
    /// succeeded, sent with each lease while the harness runs (warm affinity,
    /// `lem_common::schedule`); cleared when the harness is stopped.
    warm: Option<(String, String)>,
    /// The worker's metrics: this slot's runs and gate waits count into them, and
    /// every lease and renew call carries their GPU readings.
    pub metrics: Arc<WorkerMetrics>,
    /// `--exit-when-idle`: the slots' shared view of whether the worker leaves
    /// ([`crate::idle`]).
    pub idle: Option<Arc<IdleExit>>,
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
            host_policy: Default::default(),
            recycle_memory_growth_mb: 4096,
            memory_mark: None,
            drain: false,
            pool: None,
            isolation: IsolationPolicy::Warn,
            isolation_logged: None,
            cache: BaselineCache::default(),
            client: None,
            journal,
            journal_broken: false,
            last_run: None,
            pre_gate: None,
            fatal: None,
            stopping: None,
            warm: None,
            metrics: Arc::new(WorkerMetrics::default()),
            idle: None,
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
            let warm = match &self.warm {
                Some(pair) if self.harness.is_running() => vec![pair.clone()],
                _ => vec![],
            };
            let req = LeaseRequest {
                worker: self.worker.clone(),
                slot: self.index,
                wait_ms: LEASE_WAIT_MS,
                warm,
                gpus: self.samplers.len() as u32,
                max_gpus: 0,
                telemetry: self.metrics.readings(),
            };
            let lease_span = info_span!("lease", slot = self.index);
            let asked_at = tokio::time::Instant::now();
            let asked = self
                .ask(&client, req, &mut stop)
                .instrument(lease_span.clone())
                .await;
            match asked {
                Asked::Stop => break,
                Asked::Reply(LeaseReply::Granted(grant)) => {
                    let run_span = run_span(&lease_span, &grant, self.index);
                    self.idle_mark(true);
                    self.handle_grant(&client, *grant, &stop)
                        .instrument(run_span)
                        .await;
                    self.idle_mark(false);
                }
                Asked::Reply(LeaseReply::NoWork) if self.idle_full_poll(asked_at) => {
                    if self.idle_leaves(&stop).await {
                        break;
                    }
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

    /// `--exit-when-idle`: a run was granted to this slot (`true`) or it ended.
    fn idle_mark(&self, granted: bool) {
        match &self.idle {
            Some(idle) if granted => idle.granted(self.index),
            Some(idle) => idle.run_ended(self.index),
            None => {}
        }
    }

    /// `--exit-when-idle`: whether a `no_work` answer to a lease call made at `asked`
    /// counts as idle (the coordinator held the call for its whole wait).
    fn idle_full_poll(&self, asked: tokio::time::Instant) -> bool {
        self.idle.is_some()
            && idle::full_poll(asked.elapsed(), Duration::from_millis(LEASE_WAIT_MS))
    }

    /// `--exit-when-idle`, after a full long poll answered `no_work`: true when the
    /// slot leaves (every slot is idle, or the worker stops), false when it asks again
    /// ([`crate::idle`]).
    async fn idle_leaves(&self, stop: &watch::Receiver<bool>) -> bool {
        let Some(idle) = &self.idle else {
            return false;
        };
        match idle.no_work(self.index) {
            idle::Next::Lease => false,
            idle::Next::Leave => true,
            idle::Next::Wait => idle.wait(self.index, stop).await,
        }
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
                warm: pool.warm_models(&reserved).await,
                gpus: pool.size(),
                max_gpus: reserved.len() as u32,
                telemetry: self.metrics.readings(),
            };
            let lease_span = info_span!("lease", slot = self.index);
            let asked_at = tokio::time::Instant::now();
            let asked = self
                .ask(client, req, stop)
                .instrument(lease_span.clone())
                .await;
            let grant = match asked {
                Asked::Stop => {
                    pool.unreserve(&reserved);
                    return false;
                }
                // `--exit-when-idle`: nothing pending, every GPU of the pool free.
                Asked::Reply(LeaseReply::NoWork)
                    if self.idle_full_poll(asked_at)
                        && reserved.len() as u32 == pool.size()
                        && self.idle.as_ref().is_some_and(|i| i.pool_idle()) =>
                {
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
            let run_span = run_span(&lease_span, &grant, self.index);
            self.idle_mark(true);
            self.handle_grant(client, grant, stop)
                .instrument(run_span)
                .await;
            self.idle_mark(false);
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
        self.cache = pool.take_state(gpus);
        self.last_run = pool.last_run_of(gpus);
        self.pre_gate = None;
    }

    /// The run is over: its harness stays warm on the shelf, its baselines are kept
    /// for the set, and its GPUs are free again.
    async fn unbind(&mut self, pool: &DynPool, model: String) {
        let gpus = std::mem::take(&mut self.gpus);
        let harness = std::mem::replace(&mut self.harness, pool.placeholder_harness(self.index));
        pool.shelve(&gpus, Some(model), self.warm.take(), harness)
            .await;
        pool.put_state(&gpus, std::mem::take(&mut self.cache));
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
        self.metrics.run_started(self.index, grant.run);
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
            let metrics = self.metrics.clone();
            let ttl = Duration::from_millis(grant.ttl_ms);
            tokio::spawn(
                async move {
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
                                    telemetry: metrics.readings(),
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
                }
                .instrument(Span::current()),
            )
        };
        let mut outcome = self.measure(&grant, lease_mono, cancel_rx).await;
        if let Ok(result) = &outcome {
            self.warm = Some((result.engine.clone(), result.model_name.clone()));
        }
        renewer.abort();
        if let Some(d) = drainer {
            d.abort();
        }
        // A signal for the worker's whole process tree (Slurm signals every process
        // of a job step; a terminal's Ctrl-C, the process group) can stop the harness
        // a moment before the worker hears it: under --drain, a run that failed so is
        // handed back too, if the worker's own stop follows within STOP_RACE.
        if self.drain
            && !*stop.borrow()
            && matches!(&outcome, Err((FailureClass::Infrastructure, _)))
        {
            let mut stopping = stop.clone();
            let _ = tokio::time::timeout(STOP_RACE, stopping.wait_for(|s| *s)).await;
        }
        if self.drain && *stop.borrow() {
            if let Err((class, _)) = &mut outcome {
                *class = FailureClass::Handback;
            }
        }
        self.last_run = Some((tokio::time::Instant::now(), grant.gap_before_s));
        self.pre_gate = None;
        let ended = match &outcome {
            Ok(_) => "completed".to_string(),
            Err((class, _)) => class.to_string(),
        };
        self.metrics.run_ended(self.index, &ended);
        let report = match outcome {
            Ok(mut result) => Report::Complete(Box::new(CompleteRequest {
                result: {
                    // The run's trace (its lease call, the coordinator's handling of
                    // it, every phase here), for finding its spans later.
                    result.trace_id = lem_wire::otel::trace_id(&Span::current());
                    result
                },
                worker: self.worker.clone(),
                run: grant.run,
                token: grant.token,
            })),
            Err((class, message)) => {
                if class == FailureClass::Handback {
                    // Asked for (`--drain`, or `lem-coord run` stopping): not a failure.
                    tracing::info!(slot = self.index, run = %grant.run, %message, "run handed back");
                } else {
                    tracing::warn!(slot = self.index, run = %grant.run, %class, %message, "run failed");
                }
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
        self.deliver(client, &report)
            .instrument(info_span!("report"))
            .await;
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
                self.cache
                    .device
                    .as_ref()
                    .and_then(|b| b.idle.per_gpu.get(i))
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
                let waited_s = start.elapsed().as_secs_f64();
                self.metrics.gate_waited(self.index, reason, waited_s);
                return GateOutcome { waited_s, reason };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Measures idle power: waits until power is flat, then averages a window.
    /// On a multi-GPU slot every GPU must have settled; the record's power is the sum
    /// over the GPUs (their spreads added in quadrature), its temperature the hottest.
    async fn measure_idle(&self, duration_s: f64, kind: &str, strategy: &str) -> Idle {
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
        Idle { record, per_gpu }
    }

    /// Device idle means no process of ours holds a CUDA context: unloading weights
    /// is not enough (the context keeps the H100 at P0, ~118 W instead of ~72 W), so
    /// the harness server is stopped; the next run starts it again.
    async fn stop_harness_for_baseline(&mut self) {
        self.harness.stop().await;
        self.memory_mark = None;
        self.warm = None;
        self.load.on_resident(false, mono_ns());
    }

    /// Runs one experiment and measures it: the driver of its [`RunLifecycle`], which
    /// decides every step; this only carries the steps out. Errors carry the failure
    /// class.
    async fn measure(
        &mut self,
        grant: &LeaseGrant,
        lease_mono: u64,
        cancel: watch::Receiver<Option<String>>,
    ) -> Result<RunResult, Failure> {
        let mut cancel = Some(cancel);
        let mut lc = RunLifecycle::new(
            Leased {
                run_id: grant.run.to_string(),
                engine: grant.engine.clone(),
                config_json: grant.config_json.clone(),
                gap_before_s: grant.gap_before_s,
                lease_mono_ns: lease_mono,
                timeout: Duration::from_secs_f64(grant.experiment_timeout_s.max(1.0)),
                silence: (grant.stdout_silence_timeout_s > 0.0)
                    .then(|| Duration::from_secs_f64(grant.stdout_silence_timeout_s)),
                force_cold_start: grant.force_cold_start,
            },
            Settings {
                prefill_window_s: self.prefill_window_s,
                quiet_s: self.quiet_s,
                per_token_timing: self.per_token_timing.to_string(),
                isolation: self.isolation,
                host: self.host_policy,
                recycle_memory_growth_mb: self.recycle_memory_growth_mb,
            },
            Where {
                worker: self.worker.0.clone(),
                host: self.host.clone(),
                slot: self.index,
                gpus: self.gpus.clone(),
                gpu_descriptions: self
                    .samplers
                    .iter()
                    .map(|s| {
                        let d = &s.description;
                        (d.name.clone(), d.uuid.clone(), d.simulated)
                    })
                    .collect(),
                memory_mark: self.memory_mark.clone(),
                environment: self.environment.snapshot.clone(),
            },
            self.cache.clone(),
        );
        loop {
            let Some(command) = lc.poll(mono_ns()) else {
                return Err((
                    FailureClass::Infrastructure,
                    "worker bug: the run lifecycle stopped without finishing".into(),
                ));
            };
            let input = match command {
                Command::Finish(outcome) => return outcome.map(|result| *result),
                Command::StopHarness => {
                    self.stop_harness_for_baseline()
                        .instrument(info_span!("stop_harness"))
                        .await;
                    Input::HarnessStopped
                }
                Command::ListProcesses(at) => self.list_processes(at).await,
                Command::MeasureIdle {
                    kind,
                    duration_s,
                    strategy,
                } => Input::Idle(
                    self.measure_idle(duration_s, kind.as_str(), strategy)
                        .instrument(info_span!("baseline", kind = kind.as_str(), duration_s))
                        .await,
                ),
                Command::Remember(cache) => {
                    self.cache = *cache;
                    continue;
                }
                Command::MarkMemory(mark) => {
                    self.memory_mark = mark;
                    continue;
                }
                Command::WaitGate { gap_s, idle_temps } => {
                    let gate = self
                        .gate_after_lease(gap_s, &idle_temps)
                        .instrument(info_span!("gate", gap_s))
                        .await;
                    Input::GateOpened {
                        waited_s: gate.waited_s,
                        reason: gate.reason,
                    }
                }
                Command::ResolveDataset(source) => Input::Dataset(
                    self.harness
                        .dataset_path(&source)
                        .to_string_lossy()
                        .into_owned(),
                ),
                Command::Dispatch {
                    request_line,
                    timeout,
                    silence,
                } => {
                    let started_unix_ms = unix_ms();
                    let (load, samplers) = (self.load.clone(), &self.samplers);
                    let mut cancel = cancel.take().expect("one dispatch per run");
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
                    let dispatch = info_span!("dispatch");
                    let mut phases = PhaseSpans::new(&dispatch);
                    let res = self
                        .harness
                        .run(
                            &request_line,
                            RunLimits { timeout, silence },
                            Box::pin(cancel_fut),
                            &mut |ev| {
                                phases.on_event(&ev.kind());
                                for effect in lc.handle_event(ev) {
                                    apply(&effect, samplers, load.as_ref());
                                }
                            },
                        )
                        .instrument(dispatch.clone())
                        .await;
                    drop(phases);
                    self.load.on_phase("idle", 1, mono_ns());
                    Input::HarnessEnded {
                        result: res.map_err(|e| e.to_string()),
                        started_unix_ms,
                        ended_unix_ms: unix_ms(),
                    }
                }
                Command::Collect { run, prefill } => Input::Collected(
                    self.collect(&run, prefill.as_ref())
                        .instrument(info_span!("collect"))
                        .await,
                ),
            };
            lc.handle(input, mono_ns());
        }
    }

    /// The processes on the slot's GPUs and the worker's own (itself, its harness and
    /// everything the harness started), listed off the executor.
    async fn list_processes(&mut self, _at: CheckPoint) -> Input {
        let harness = self.harness.own_pids();
        let (samplers, gpus) = (self.samplers.clone(), self.gpus.clone());
        let listed = tokio::task::spawn_blocking(move || {
            (
                isolation::list(&samplers, &gpus),
                isolation::own_set(&harness),
            )
        })
        .await;
        match listed {
            Ok((listing, own)) => Input::Processes {
                listed: listing.processes,
                own,
                errors: listing.errors,
            },
            Err(e) => Input::Processes {
                listed: vec![],
                own: Default::default(),
                errors: vec![format!("the slot's GPUs: the listing failed ({e})")],
            },
        }
    }

    /// Each GPU's samples and counter reads around the run's window and the prefill
    /// window, once the counter bursts are over and the samplers are past the window.
    async fn collect(&self, run: &Window, prefill: Option<&Window>) -> Collected {
        // The counter reads reach past a window by the quiet spans beside it.
        let reach = |w: &Window| {
            let before = w.quiet_before.map_or(0, |q| w.t0.saturating_sub(q.from_ns));
            let after = w.quiet_after.map_or(0, |q| q.to_ns.saturating_sub(w.t1));
            before.max(after)
        };
        let interval_ns = self.samplers[0].interval.as_nanos() as u64;
        let margin = 2 * interval_ns + 200_000_000;
        let mut gpus = Vec::new();
        for sampler in &self.samplers {
            sampler.wait_counter_burst().await;
            sampler.wait_past(run.t1 + 2 * interval_ns).await;
            let window = |w: &Window| {
                (
                    sampler.window(w.t0, w.t1, margin),
                    sampler.counter_window(w.t0, w.t1, margin + 500_000_000 + reach(w)),
                )
            };
            let (samples, counter) = window(run);
            let (prefill_samples, prefill_counter) = prefill.map(window).unwrap_or_default();
            gpus.push(GpuCollected {
                samples,
                counter,
                prefill_samples,
                prefill_counter,
                last_error: sampler.last_error(),
            });
        }
        let jitter = self.samplers.iter().map(|s| s.jitter()).fold(
            crate::telemetry::JitterStats::default(),
            |a, j| crate::telemetry::JitterStats {
                n: a.n + j.n,
                mean_late_us: a.mean_late_us.max(j.mean_late_us),
                max_late_us: a.max_late_us.max(j.max_late_us),
            },
        );
        Collected {
            gpus,
            sample_interval_ms: self.samplers[0].interval.as_secs_f64() * 1000.0,
            sampler_mean_late_us: jitter.mean_late_us,
            sampler_max_late_us: jitter.max_late_us,
        }
    }
}

/// Applies what the run lifecycle asks for while the harness runs: counter bursts on
/// every GPU of the run, and the load of the simulated GPU.
fn apply(effect: &Effect, samplers: &[Arc<Sampler>], load: &dyn LoadSink) {
    match effect {
        Effect::CounterBurst(d) => samplers.iter().for_each(|s| s.counter_burst(*d)),
        Effect::CounterBurstStop => samplers.iter().for_each(|s| s.counter_burst_stop()),
        Effect::Phase {
            phase,
            batch_size,
            t_mono_ns,
        } => load.on_phase(phase, *batch_size, *t_mono_ns),
        Effect::Resident { t_mono_ns } => load.on_resident(true, *t_mono_ns),
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

/// The span of a leased run: a child of the lease call that got it, so the run, the
/// coordinator's grant and every later call about the run share one trace.
fn run_span(lease: &Span, grant: &LeaseGrant, slot: u32) -> Span {
    info_span!(
        parent: lease,
        "run",
        run = %grant.run,
        engine = %grant.engine,
        slot,
        gap_before_s = grant.gap_before_s,
    )
}

/// The spans of the phases inside the harness's request (load, warmup, the measured
/// window, the prefill window), opened and closed as its events arrive; a span's
/// times are the worker's when it saw the event.
struct PhaseSpans {
    parent: Span,
    load: Option<Span>,
    warmup: Option<Span>,
    window: Option<Span>,
    prefill: Option<Span>,
}

impl PhaseSpans {
    /// The request begins with the model's load (at once when it is resident).
    fn new(parent: &Span) -> PhaseSpans {
        PhaseSpans {
            parent: parent.clone(),
            load: Some(info_span!(parent: parent, "load", already_loaded = tracing::field::Empty)),
            warmup: None,
            window: None,
            prefill: None,
        }
    }

    fn on_event(&mut self, ev: &lem_common::harness::Event<'_>) {
        use lem_common::harness::Event;
        let parent = &self.parent;
        match ev {
            Event::Loaded { already_loaded, .. } => {
                if let (Some(s), Some(a)) = (&self.load, already_loaded) {
                    s.record("already_loaded", a);
                }
                self.load = None;
                self.warmup = Some(info_span!(parent: parent, "warmup"));
            }
            Event::WarmupDone => self.warmup = None,
            Event::MeasureStart => {
                self.load = None;
                self.warmup = None;
                self.window = Some(info_span!(parent: parent, "window"));
            }
            Event::MeasureEnd => self.window = None,
            Event::PrefillWindowStart => {
                self.prefill = Some(info_span!(parent: parent, "prefill_window"));
            }
            Event::PrefillWindowEnd { .. } => self.prefill = None,
            _ => {}
        }
    }
}
