//! The coordinator's RPC service: a thin driver of the store and the pure lease machine.
//!
//! Each call converts its request into one store operation (one redb write
//! transaction for every lease transition), run on tokio's blocking pool, and maps
//! store errors to [`RpcError`]s that say what to do. `lease` is a long poll: it
//! waits on a [`Notify`] that fires whenever runs become pending (a submit, an
//! expired lease, a failure that will be retried).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lem_common::lease::{CompleteOutcome, LeasePolicy, RunState};
use lem_common::rpc::{
    enrol_proof_message, BlockedEngine, CampaignStatus, CompleteReply, CompleteRequest,
    CompleteStatus, Coordinator, DeregisterRequest, EngineProgress, EnrolReply, EnrolRequest,
    FailRequest, GpuReading, LeaseGrant, LeaseReply, LeaseRequest, ReasonWorkers, RegisterReply,
    RegisterRequest, RenewReply, RenewRequest, RpcError, RpcErrorKind, RunRow, SubmitReply,
    SubmitRequest, WorkerInfo,
};
use lem_common::runner::{RunnerNeed, WorkerRuntime};
use lem_common::study::{self, PlanOptions, StudySource};
use lem_common::types::{format_utc_ms, CampaignId, WorkerId};
use lem_common::PROTOCOL_VERSION;
use tarpc::context::Context;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::group_commit::{GroupCommit, DEFAULT_MAX_BATCH};
use crate::limits::{
    MAX_CONFIGS_PER_CAMPAIGN, MAX_RUNS_PER_CAMPAIGN, MAX_STUDY_BYTES, MAX_WORKER_NAME,
};
use crate::metrics::CoordMetrics;
use crate::overview::{RecentFailure, RECENT_FAILURES};
use crate::pki::Pki;
use crate::store::{
    pending_pool, CampaignRecord, NewRun, Store, StoreError, WorkerRecord, WriteOp, WriteOutcome,
};

/// Refuses a plan with a config the fleet would not measure as asked
/// ([`study::fleet::refusal`]); the error names the file, the config and the key.
pub fn check_fleet_support(
    path: &str,
    configs: &[lem_common::study::PlannedConfig],
) -> Result<(), String> {
    for c in configs {
        if let Some(why) = lem_common::pyjson::parse(&c.config_json)
            .ok()
            .and_then(|v| study::fleet::refusal(&v))
        {
            return Err(format!("{path}: config {}: {why}", c.config_hash));
        }
    }
    Ok(())
}

/// What every lease of a campaign carries besides the run.
#[derive(Clone, Debug)]
struct LeaseFacts {
    study_name: Option<String>,
    experiment_timeout_s: f64,
    stdout_silence_timeout_s: f64,
    force_cold_start: bool,
}

/// Checks a study's size against [`MAX_STUDY_BYTES`]; the error names the file.
pub fn check_study_size(src: &StudySource) -> Result<(), String> {
    let bytes = src.text.len() + src.base.as_ref().map(|(_, t)| t.len()).unwrap_or(0);
    if bytes > MAX_STUDY_BYTES {
        return Err(format!(
            "{}: the study is {bytes} bytes (with its base file), the limit is {MAX_STUDY_BYTES} (4 MiB); a study this large is almost certainly generated: sweep the values instead of listing them",
            src.path
        ));
    }
    Ok(())
}

/// State shared by every connection's service instance.
pub struct Shared {
    pub store: Arc<Store>,
    /// The writer every lease transition goes through (group commit).
    pub commits: GroupCommit,
    pub policy: LeasePolicy,
    /// The CA that enrols workers; none for `lem-coord run`'s plain loopback one.
    pub pki: Option<Arc<Pki>>,
    /// Fires when runs may have become pending.
    pub work_available: Notify,
    /// Engines each registered worker can run and the runtime it runs them in (a
    /// cache of the `workers` table).
    engines_by_worker: Mutex<HashMap<WorkerId, (Vec<String>, WorkerRuntime)>>,
    /// Every runner need a campaign's runs have (the study's `runners:`/`images:`),
    /// [`RunnerNeed::Any`] among them: a lease asks for the pools of those its
    /// worker's runtime meets.
    runner_needs: Mutex<BTreeSet<RunnerNeed>>,
    /// Set when the coordinator is shutting down: no new leases.
    pub stopping: std::sync::atomic::AtomicBool,
    /// When each worker last called in (memory only; the store keeps the
    /// registration time, and a restarted coordinator learns this again within one
    /// lease poll).
    last_seen: Mutex<HashMap<WorkerId, u64>>,
    /// Per worker, the lease calls waiting right now (a long poll is a worker that
    /// is there, though it last called in up to the poll's length ago).
    polling: Mutex<HashMap<WorkerId, u32>>,
    /// Workers that deregistered (stopped cleanly) and have not called in since.
    departed: Mutex<std::collections::HashSet<WorkerId>>,
    /// Each campaign's study name, for lease grants (a campaign's name never
    /// changes; reading its record per lease would parse its whole study text).
    /// Per campaign, what every lease of it carries besides the run: the study's name
    /// and run limits (read once from the manifest).
    study_names: Mutex<HashMap<CampaignId, LeaseFacts>>,
    /// Lease only this campaign's runs (0: any). `lem-coord run` sets it: its local
    /// workers run the campaign it drives, not others its data dir's manifest holds.
    lease_only: std::sync::atomic::AtomicU64,
    /// The counters and histograms of `/metrics` (`crate::metrics`).
    pub metrics: CoordMetrics,
    /// Each worker's GPUs as it last reported them with a lease or renew call, and
    /// when (memory only: an observation for the status page, sent again with the
    /// worker's next call).
    telemetry: Mutex<HashMap<WorkerId, (Vec<GpuReading>, u64)>>,
    /// The last [`RECENT_FAILURES`] failures reported, newest last (memory only:
    /// each failed run's last failure is in the manifest).
    recent_failures: Mutex<VecDeque<RecentFailure>>,
    /// Bumped by every change the status page shows; its long poll waits on it.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// From now on, lease only the runs of `campaign`.
    pub fn lease_only(&self, campaign: CampaignId) {
        self.lease_only
            .store(campaign.0, std::sync::atomic::Ordering::SeqCst);
    }

    fn touch(&self, worker: &WorkerId) {
        self.last_seen
            .lock()
            .expect("last_seen lock")
            .insert(worker.clone(), now_ms());
        self.departed.lock().expect("departed lock").remove(worker);
    }

    /// Whether `w` is connected at `now` ([`is_connected`] with this coordinator's
    /// lease TTL).
    pub(crate) fn connected(&self, w: &WorkerRecord, now: u64) -> bool {
        let polling = self
            .polling
            .lock()
            .expect("polling lock")
            .get(&w.worker)
            .is_some_and(|n| *n > 0);
        let departed = self
            .departed
            .lock()
            .expect("departed lock")
            .contains(&w.worker);
        is_connected(
            now,
            self.last_seen_ms(w),
            polling,
            departed,
            self.policy.ttl_ms,
        )
    }

    pub(crate) fn last_seen_ms(&self, w: &WorkerRecord) -> u64 {
        let mem = self
            .last_seen
            .lock()
            .expect("last_seen lock")
            .get(&w.worker)
            .copied()
            .unwrap_or(0);
        mem.max(w.last_seen_ms)
    }
}

/// What the status page and `/metrics` read of the coordinator's memory
/// (`crate::overview`).
impl Shared {
    /// How many changes the status page could show have happened.
    pub fn changes(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that sees [`Shared::changes`] move.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Counts a change the status page shows (its long polls answer).
    pub fn note_change(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn record_telemetry(&self, worker: &WorkerId, gpus: &[GpuReading]) {
        if gpus.is_empty() {
            return;
        }
        self.telemetry
            .lock()
            .expect("telemetry lock")
            .insert(worker.clone(), (gpus.to_vec(), now_ms()));
    }

    /// A worker's GPUs as it last reported them, and when (Unix ms).
    pub fn telemetry_of(&self, worker: &WorkerId) -> Option<(Vec<GpuReading>, u64)> {
        self.telemetry
            .lock()
            .expect("telemetry lock")
            .get(worker)
            .cloned()
    }

    fn push_failure(&self, f: RecentFailure) {
        let mut q = self.recent_failures.lock().expect("recent failures lock");
        if q.len() == RECENT_FAILURES {
            q.pop_front();
        }
        q.push_back(f);
    }

    /// The failures reported since the coordinator started (the last
    /// [`RECENT_FAILURES`]), newest first.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        let q = self.recent_failures.lock().expect("recent failures lock");
        q.iter().rev().cloned().collect()
    }
}

impl Shared {
    pub fn new(
        store: Store,
        policy: LeasePolicy,
        pki: Option<Arc<Pki>>,
    ) -> Result<Arc<Shared>, StoreError> {
        Shared::with_max_batch(store, policy, pki, DEFAULT_MAX_BATCH)
    }

    /// [`Shared::new`] with at most `max_batch` lease transitions per commit.
    pub fn with_max_batch(
        store: Store,
        policy: LeasePolicy,
        pki: Option<Arc<Pki>>,
        max_batch: usize,
    ) -> Result<Arc<Shared>, StoreError> {
        let mut map = HashMap::new();
        for w in store.workers()? {
            map.insert(w.worker.clone(), (available_engines(&w), w.runtime.clone()));
        }
        let mut needs = BTreeSet::from([RunnerNeed::Any]);
        for c in store.campaigns()? {
            needs.extend(c.runner_needs.into_values());
        }
        let store = Arc::new(store);
        Ok(Arc::new(Shared {
            commits: GroupCommit::start(store.clone(), policy, max_batch)?,
            store,
            policy,
            pki,
            work_available: Notify::new(),
            engines_by_worker: Mutex::new(map),
            runner_needs: Mutex::new(needs),
            stopping: Default::default(),
            last_seen: Default::default(),
            polling: Default::default(),
            departed: Default::default(),
            study_names: Default::default(),
            lease_only: Default::default(),
            metrics: CoordMetrics::default(),
            telemetry: Default::default(),
            recent_failures: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }))
    }
}

/// A worker's slots for the `blocked` report: `slots of 1, 2 GPU(s)`, `a dynamic
/// pool of 4 GPUs (TP 1 to 4)`, or both.
fn describe_slots(slots: &[lem_common::rpc::SlotInfo]) -> String {
    let mut sizes: Vec<u32> = slots
        .iter()
        .filter(|s| !s.dynamic)
        .map(|s| s.gpu_count())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut parts = Vec::new();
    if !sizes.is_empty() {
        let sizes: Vec<String> = sizes.iter().map(u32::to_string).collect();
        parts.push(format!("slots of {} GPU(s)", sizes.join(", ")));
    }
    for s in slots.iter().filter(|s| s.dynamic) {
        parts.push(format!(
            "a dynamic pool of {n} GPU(s) (TP 1 to {n})",
            n = s.gpu_count()
        ));
    }
    parts.join(" and ")
}

fn available_engines(w: &WorkerRecord) -> Vec<String> {
    w.engines
        .iter()
        .filter(|e| e.available)
        .map(|e| e.engine.clone())
        .collect()
}

/// A worker name that can be enrolled: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` or `-`.
pub fn check_worker_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty()
        || name.len() > MAX_WORKER_NAME
        || !name.chars().all(ok_char)
        || name.starts_with(['.', '-'])
    {
        return Err(format!(
            "worker name `{name}` is not allowed: use 1 to {MAX_WORKER_NAME} of A-Z a-z 0-9 . _ -, not starting with . or - (pass --name)"
        ));
    }
    Ok(())
}

fn store_err(e: StoreError) -> RpcError {
    match e {
        StoreError::NoCampaign(_) | StoreError::NoRun(_) => {
            RpcError::new(RpcErrorKind::NotFound, e.to_string())
        }
        StoreError::Lease(l) => RpcError::new(RpcErrorKind::LeaseLost, l.to_string()),
        StoreError::CampaignCancelled(_) | StoreError::BackupTarget(_) => {
            RpcError::new(RpcErrorKind::InvalidInput, e.to_string())
        }
        StoreError::Storage(s) => RpcError::new(
            RpcErrorKind::Unavailable,
            format!("coordinator cannot write its manifest: {s} (check free space and permissions of its data dir)"),
        ),
        e @ StoreError::NotWritable { .. } => {
            RpcError::new(RpcErrorKind::Unavailable, format!("coordinator: {e}"))
        }
        other => RpcError::new(RpcErrorKind::Internal, other.to_string()),
    }
}

/// Applies one lease transition through the group-commit writer.
async fn commit(shared: &Shared, op: WriteOp) -> Result<WriteOutcome, RpcError> {
    shared.commits.apply(op).await.map_err(store_err)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RpcError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(store_err),
        Err(e) => Err(RpcError::new(
            RpcErrorKind::Internal,
            format!("store task failed: {e}"),
        )),
    }
}

/// One service instance per connection; all share [`Shared`].
#[derive(Clone)]
pub struct CoordService {
    pub shared: Arc<Shared>,
}

impl CoordService {
    /// A campaign's status; with `with_engines`, its runs per engine and state too
    /// (what `status ID` shows; the list of all campaigns leaves them out).
    pub(crate) fn campaign_status(
        shared: &Shared,
        id: CampaignId,
        with_engines: bool,
    ) -> Result<CampaignStatus, StoreError> {
        let c = shared.store.campaign(id)?;
        let counts = shared.store.counts(id)?;
        let dups = shared.store.duplicate_count(id)?;
        let mut blocked = Vec::new();
        let mut disconnected_workers = 0;
        if counts.pending > 0 {
            let workers = shared.store.workers()?;
            let now = now_ms();
            let (live, disconnected) = connected_workers(&workers, |w| shared.connected(w, now));
            disconnected_workers = disconnected;
            blocked = blocked_pools(shared.store.pending_by_pool(id)?, &live, disconnected);
        }
        let engines = if with_engines && !c.cancelled {
            shared
                .store
                .engine_counts(id)?
                .into_iter()
                .map(|(engine, n)| EngineProgress {
                    engine,
                    total: n.total(),
                    pending: n.pending,
                    running: n.leased,
                    done: n.done,
                    failed: n.failed,
                    cancelled: n.cancelled,
                })
                .collect()
        } else {
            vec![]
        };
        let state = if c.cancelled {
            "cancelled"
        } else if counts.pending + counts.leased == 0 {
            if counts.failed > 0 {
                "finished_with_failures"
            } else {
                "done"
            }
        } else if !blocked.is_empty() && counts.leased == 0 {
            "blocked"
        } else {
            "running"
        };
        let recent_failures = if counts.failed > 0 {
            shared
                .store
                .failed_runs(id, 5)?
                .into_iter()
                .filter_map(|r| {
                    r.lease
                        .last_failure
                        .map(|f| format!("run {}: {} ({})", r.key, f.message, f.class))
                })
                .collect()
        } else {
            vec![]
        };
        Ok(CampaignStatus {
            campaign: id.0,
            study_name: c.study_name,
            study_design_hash: c.study_design_hash,
            submitted_at: c.submitted_at,
            state: state.to_string(),
            total: counts.total(),
            pending: counts.pending,
            running: counts.leased,
            done: counts.done,
            failed: counts.failed,
            cancelled: counts.cancelled,
            duplicates: dups,
            n_configs: c.n_configs,
            n_skipped: c.skipped.len() as u64,
            blocked,
            recent_failures,
            engines,
            disconnected_workers,
        })
    }
}

/// Counts a lease call while it waits (dropped when the call ends, however it ends).
struct Polling<'a> {
    shared: &'a Shared,
    worker: WorkerId,
}

impl<'a> Polling<'a> {
    fn new(shared: &'a Shared, worker: &WorkerId) -> Self {
        *shared
            .polling
            .lock()
            .expect("polling lock")
            .entry(worker.clone())
            .or_default() += 1;
        Polling {
            shared,
            worker: worker.clone(),
        }
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut m = self.shared.polling.lock().expect("polling lock");
        if let Some(n) = m.get_mut(&self.worker) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.worker);
            }
        }
    }
}

/// Whether a worker counts as connected: it has not deregistered since it last
/// called in, and it is waiting in a lease call now or called in within the lease
/// TTL (a live worker calls at least that often: an idle slot's long poll is
/// shorter than the TTL, a busy slot renews at a third of it). A worker killed
/// without a word is shown disconnected one TTL after its last call.
pub fn is_connected(
    now: u64,
    last_seen_ms: u64,
    polling: bool,
    departed: bool,
    ttl_ms: u64,
) -> bool {
    !departed && (polling || now.saturating_sub(last_seen_ms) < ttl_ms)
}

/// The connected workers ([`is_connected`]), and how many registered workers are
/// not (disconnected).
fn connected_workers(
    workers: &[WorkerRecord],
    connected: impl Fn(&WorkerRecord) -> bool,
) -> (Vec<&WorkerRecord>, u64) {
    let (live, gone): (Vec<&WorkerRecord>, Vec<&WorkerRecord>) =
        workers.iter().partition(|w| connected(w));
    (live, gone.len() as u64)
}

/// Why pools of pending runs are stuck: for each pool (`engine`, GPUs, runner need,
/// pending runs) that no connected worker in `live` can take, the cause, each
/// distinct reason the connected workers give with the workers that give it, and
/// the fix. Disconnected workers are not in `live`; `disconnected` counts them for
/// the case where no worker is connected at all. Pure: the service feeds it the
/// store's pools and the workers it heard from lately.
pub fn blocked_pools(
    pools: Vec<(String, u32, RunnerNeed, u64)>,
    live: &[&WorkerRecord],
    disconnected: u64,
) -> Vec<BlockedEngine> {
    let mut blocked = Vec::new();
    for (engine, tp_size, need, n) in pools {
        let runs_engine =
            |w: &WorkerRecord| w.engines.iter().any(|e| e.engine == engine && e.available);
        let has_group = |w: &WorkerRecord| w.slots.iter().any(|s| s.hosts(tp_size));
        let meets = |w: &WorkerRecord| need.met_by(&w.runtime);
        if live
            .iter()
            .any(|w| runs_engine(w) && has_group(w) && meets(w))
        {
            continue;
        }
        let (cause, reasons, fix): (String, Vec<(String, String)>, Option<String>) = if live
            .is_empty()
        {
            let cause = if disconnected > 0 {
                format!("no worker is connected ({disconnected} registered worker(s) stopped or not heard from within the lease TTL)")
            } else {
                "no worker is connected".to_string()
            };
            (cause, vec![], None)
        } else if live.iter().any(|w| runs_engine(w) && has_group(w)) {
            (
                format!(
                    "the study's runners:/images: ask for {} to run {engine}, and no connected worker that runs {engine} has it",
                    need.describe()
                ),
                live.iter()
                    .filter(|w| runs_engine(w) && has_group(w))
                    .map(|w| (w.worker.0.clone(), w.runtime.describe()))
                    .collect(),
                Some(need.fix()),
            )
        } else if live.iter().any(|w| runs_engine(w)) {
            (
                format!(
                    "these runs need a slot of {tp_size} GPUs (tensor-parallel size {tp_size}) and no connected worker that runs {engine} has one"
                ),
                live.iter()
                    .filter(|w| runs_engine(w))
                    .map(|w| (w.worker.0.clone(), describe_slots(&w.slots)))
                    .collect(),
                Some(format!(
                    "start a worker with --gpu-groups (a group of {tp_size} GPUs, or `dynamic` on a host with at least {tp_size})"
                )),
            )
        } else {
            (
                format!("no connected worker can run {engine}"),
                live.iter()
                    .map(|w| {
                        let r = w
                            .engines
                            .iter()
                            .find(|e| e.engine == engine)
                            .and_then(|e| e.reason.clone())
                            .unwrap_or_else(|| format!("engine {engine} not offered"));
                        (w.worker.0.clone(), r)
                    })
                    .collect(),
                None,
            )
        };
        let by_reason = group_reasons(reasons);
        let mut reason = cause.clone();
        if !by_reason.is_empty() {
            let groups: Vec<String> = by_reason
                .iter()
                .map(|g| format!("{}: {}", name_list(&g.workers, REASON_NAMES), g.reason))
                .collect();
            reason = format!("{reason} ({})", groups.join("; "));
        }
        if let Some(fix) = &fix {
            reason = format!("{reason}; {fix}");
        }
        blocked.push(BlockedEngine {
            engine,
            tp_size,
            pending: n,
            reason,
            cause,
            by_reason,
            fix,
        });
    }
    blocked
}

/// Workers named per distinct reason in a one-line `reason` (the rest are counted).
pub const REASON_NAMES: usize = 5;

/// Groups `(worker, reason)` pairs by reason: each distinct reason once, with its
/// workers sorted; the reason most workers give first, then by reason.
pub fn group_reasons(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<ReasonWorkers> {
    let mut by: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (worker, reason) in pairs {
        by.entry(reason).or_default().push(worker);
    }
    let mut out: Vec<ReasonWorkers> = by
        .into_iter()
        .map(|(reason, mut workers)| {
            workers.sort();
            workers.dedup();
            ReasonWorkers { reason, workers }
        })
        .collect();
    out.sort_by(|a, b| {
        b.workers
            .len()
            .cmp(&a.workers.len())
            .then(a.reason.cmp(&b.reason))
    });
    out
}

/// `a`, `a, b`, or `a, b, c and 47 more`: at most `max` names, the rest counted.
pub fn name_list(names: &[String], max: usize) -> String {
    if names.len() <= max {
        return names.join(", ");
    }
    format!("{} and {} more", names[..max].join(", "), names.len() - max)
}

impl Coordinator for CoordService {
    async fn register(self, _: Context, req: RegisterRequest) -> Result<RegisterReply, RpcError> {
        if req.protocol_version != PROTOCOL_VERSION {
            let changes: String =
                lem_common::protocol_changes(req.protocol_version, PROTOCOL_VERSION)
                    .iter()
                    .map(|c| format!(" ({c})"))
                    .collect();
            return Err(RpcError::new(
                RpcErrorKind::VersionMismatch,
                format!(
                    "worker {} speaks protocol {} (lem-worker {}), this coordinator speaks {} (lem-coord {}); install the same lem fleet version on both{changes}",
                    req.worker, req.protocol_version, req.worker_version, PROTOCOL_VERSION,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        let now = now_ms();
        let rec = WorkerRecord {
            worker: req.worker.clone(),
            host: req.host,
            worker_version: req.worker_version,
            slots: req.slots,
            engines: req.engines,
            registered_at: format_utc_ms(now),
            last_seen_ms: now,
            runs_done: 0,
            runtime: req.runtime.clone(),
        };
        let engines = (available_engines(&rec), req.runtime);
        let shared = self.shared.clone();
        blocking(move || shared.store.upsert_worker(&rec)).await?;
        self.shared
            .engines_by_worker
            .lock()
            .expect("engines map lock")
            .insert(req.worker.clone(), engines);
        self.shared.note_change();
        tracing::info!(worker = %req.worker, "worker registered");
        Ok(RegisterReply {
            coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            lease_ttl_ms: self.shared.policy.ttl_ms,
        })
    }

    async fn lease(self, _: Context, req: LeaseRequest) -> Result<LeaseReply, RpcError> {
        self.shared.touch(&req.worker);
        self.shared.record_telemetry(&req.worker, &req.telemetry);
        let _polling = Polling::new(&self.shared, &req.worker);
        let engines = self
            .shared
            .engines_by_worker
            .lock()
            .expect("engines map lock")
            .get(&req.worker)
            .cloned();
        let Some((engines, runtime)) = engines else {
            return Err(RpcError::new(
                RpcErrorKind::NotRegistered,
                format!("worker {} is not registered; register first", req.worker),
            ));
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.min(60_000));
        loop {
            if self
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Ok(LeaseReply::NoWork);
            }
            // Register interest before looking, so a submit between the look and the
            // wait is not missed.
            let notified = self.shared.work_available.notified();
            // Only the pools of runs needing exactly this slot's GPU count; for a
            // dynamic pool those of every size it can host, with the head-of-line
            // rule (`lem_common::gpus::pool_grant`) applied to the earliest run.
            let sizes = if req.max_gpus > 0 {
                1..=req.gpus.max(1)
            } else {
                req.gpus.max(1)..=req.gpus.max(1)
            };
            // And of the runner needs this worker's runtime meets.
            let needs: Vec<RunnerNeed> = self
                .shared
                .runner_needs
                .lock()
                .expect("runner needs lock")
                .iter()
                .filter(|n| n.met_by(&runtime))
                .cloned()
                .collect();
            let pools: Vec<String> = engines
                .iter()
                .flat_map(|e| {
                    let needs = &needs;
                    sizes
                        .clone()
                        .flat_map(move |k| needs.iter().map(move |n| pending_pool(e, k, n)))
                })
                .collect();
            let op = WriteOp::Lease {
                worker: req.worker.clone(),
                slot: req.slot,
                pools,
                max_gpus: req.max_gpus.min(req.gpus.max(1)),
                warm: req.warm.clone(),
                campaign: match self
                    .shared
                    .lease_only
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    0 => None,
                    c => Some(CampaignId(c)),
                },
            };
            let got = match commit(&self.shared, op).await? {
                WriteOutcome::Leased(got) => got,
                WriteOutcome::LeaseBlocked { needs_gpus } => {
                    return Ok(LeaseReply::Blocked { needs_gpus })
                }
                _ => unreachable!("a lease op answers Leased or LeaseBlocked"),
            };
            if let Some(rec) = got {
                let id = rec.key.campaign;
                let cached = self
                    .shared
                    .study_names
                    .lock()
                    .expect("study names lock")
                    .get(&id)
                    .cloned();
                let facts = match cached {
                    Some(facts) => facts,
                    None => {
                        let shared = self.shared.clone();
                        let c = blocking(move || shared.store.campaign(id)).await?;
                        let facts = LeaseFacts {
                            study_name: c.study_name,
                            experiment_timeout_s: c.experiment_timeout_s,
                            stdout_silence_timeout_s: c.stdout_silence_timeout_s,
                            force_cold_start: c.force_cold_start,
                        };
                        self.shared
                            .study_names
                            .lock()
                            .expect("study names lock")
                            .insert(id, facts.clone());
                        facts
                    }
                };
                let lease = rec.lease.lease.as_ref().expect("granted lease");
                tracing::info!(run = %rec.key, worker = %req.worker, token = lease.token.0, "lease granted");
                self.shared.metrics.leases_granted.inc();
                self.shared.note_change();
                return Ok(LeaseReply::Granted(Box::new(LeaseGrant {
                    run: rec.key,
                    token: lease.token,
                    ttl_ms: self.shared.policy.ttl_ms,
                    attempt: rec.lease.attempts,
                    engine: rec.engine.clone(),
                    config_hash: rec.config_hash.clone(),
                    cycle: rec.cycle,
                    config_json: rec.config_json.clone(),
                    gap_before_s: rec.gap_before_s,
                    study_name: facts.study_name,
                    tp_size: rec.tp_size,
                    experiment_timeout_s: facts.experiment_timeout_s,
                    stdout_silence_timeout_s: facts.stdout_silence_timeout_s,
                    force_cold_start: facts.force_cold_start,
                })));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(LeaseReply::NoWork),
            }
        }
    }

    async fn renew(self, _: Context, req: RenewRequest) -> Result<RenewReply, RpcError> {
        self.shared.touch(&req.worker);
        self.shared.record_telemetry(&req.worker, &req.telemetry);
        let op = WriteOp::Renew {
            key: req.run,
            token: req.token,
            worker: req.worker,
        };
        let result = commit(&self.shared, op).await;
        if result.is_ok() {
            self.shared.metrics.leases_renewed.inc();
            self.shared.note_change();
        }
        match result {
            Ok(_) => Ok(RenewReply {
                expires_in_ms: self.shared.policy.ttl_ms,
                cancelled: false,
            }),
            Err(e) if e.kind == RpcErrorKind::LeaseLost && e.message.contains("cancelled") => {
                Ok(RenewReply {
                    expires_in_ms: 0,
                    cancelled: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn complete(self, _: Context, req: CompleteRequest) -> Result<CompleteReply, RpcError> {
        let key = req.run;
        let worker = req.worker.clone();
        let op = WriteOp::Complete {
            key: req.run,
            token: req.token,
            worker: req.worker,
            result: Box::new(req.result),
            received_at: format_utc_ms(now_ms()),
        };
        let WriteOutcome::Completed(outcome) = commit(&self.shared, op).await? else {
            unreachable!("a complete op answers Completed")
        };
        self.shared.metrics.result(match &outcome {
            CompleteOutcome::Accepted(_) => "accepted",
            CompleteOutcome::AlreadyAccepted => "already_accepted",
            CompleteOutcome::Duplicate { .. } => "duplicate",
            CompleteOutcome::NotHolder { .. } => "refused",
        });
        self.shared.note_change();
        Ok(match outcome {
            CompleteOutcome::Accepted(_) => {
                tracing::info!(run = %key, "result accepted");
                CompleteReply {
                    status: CompleteStatus::Accepted,
                    detail: None,
                }
            }
            CompleteOutcome::AlreadyAccepted => CompleteReply {
                status: CompleteStatus::AlreadyAccepted,
                detail: None,
            },
            CompleteOutcome::Duplicate { reason } => {
                tracing::warn!(run = %key, %reason, "duplicate result kept, not counted");
                CompleteReply {
                    status: CompleteStatus::Duplicate,
                    detail: Some(reason),
                }
            }
            CompleteOutcome::NotHolder { reason } => {
                tracing::warn!(run = %key, worker = %worker, %reason, "result for another worker's lease refused");
                let at = now_ms();
                self.shared.push_failure(RecentFailure {
                    at: format_utc_ms(at),
                    at_ms: at,
                    run: key.to_string(),
                    worker: worker.0.clone(),
                    outcome: "result_refused".into(),
                    class: "lease".into(),
                    message: reason.clone(),
                });
                return Err(RpcError::new(
                    RpcErrorKind::LeaseLost,
                    format!("result for run {key} refused: {reason} (kept as a duplicate record, never counted)"),
                ));
            }
        })
    }

    async fn deregister(self, _: Context, req: DeregisterRequest) -> Result<(), RpcError> {
        tracing::info!(worker = %req.worker, "worker stopped (deregistered)");
        self.shared
            .departed
            .lock()
            .expect("departed lock")
            .insert(req.worker);
        self.shared.note_change();
        Ok(())
    }

    async fn fail(self, _: Context, req: FailRequest) -> Result<(), RpcError> {
        let handback = req.class == lem_common::types::FailureClass::Handback;
        let (class, worker, message) = (req.class, req.worker.0.clone(), req.message.clone());
        let op = WriteOp::Fail {
            key: req.run,
            token: req.token,
            worker: req.worker,
            class: req.class,
            message: req.message,
        };
        let WriteOutcome::Failed(rec) = commit(&self.shared, op).await? else {
            unreachable!("a fail op answers Failed")
        };
        self.shared.metrics.failure_report(class);
        self.shared.note_change();
        if handback {
            tracing::info!(run = %rec.key, "run handed back");
        } else {
            tracing::warn!(run = %rec.key, state = rec.lease.state.as_str(), "run failed");
            let at = now_ms();
            self.shared.push_failure(RecentFailure {
                at: format_utc_ms(at),
                at_ms: at,
                run: rec.key.to_string(),
                worker,
                outcome: if rec.lease.state == RunState::Pending {
                    "retrying"
                } else {
                    "failed"
                }
                .into(),
                class: class.to_string(),
                message,
            });
        }
        if rec.lease.state == RunState::Pending {
            self.shared.work_available.notify_waiters();
        }
        Ok(())
    }

    async fn submit(self, _: Context, req: SubmitRequest) -> Result<SubmitReply, RpcError> {
        let src = StudySource {
            path: req.path.clone(),
            text: req.text.clone(),
            base: req.base.clone(),
        };
        let invalid = |m: String| RpcError::new(RpcErrorKind::InvalidInput, m);
        check_study_size(&src).map_err(invalid)?;
        let n_configs = study::count_before_expansion(&src, &PlanOptions::default())
            .map_err(|e| invalid(e.to_string()))?;
        if n_configs > MAX_CONFIGS_PER_CAMPAIGN {
            return Err(invalid(format!(
                "{}: the grid expands to {n_configs} configs; this coordinator expands at most {MAX_CONFIGS_PER_CAMPAIGN} per campaign (split the study into several)",
                req.path
            )));
        }
        // The compact plan holds each config once (as its JSON), not once per run:
        // a 1,000,000-run study plans in ~200 MB (docs/performance.md).
        let plan = study::plan_compact_within(&src, &PlanOptions::default(), MAX_RUNS_PER_CAMPAIGN)
            .map_err(|e| RpcError::new(RpcErrorKind::InvalidInput, e.to_string()))?;
        // What llem accepts but the fleet would not measure as asked is refused here,
        // naming the config and the key, before anything is stored.
        check_fleet_support(&req.path, &plan.configs).map_err(invalid)?;
        // llem checks `runners:`/`images:` only as a run starts; the fleet at submit.
        let runner_needs =
            lem_common::runner::study_needs(plan.runners.as_ref(), plan.images.as_ref())
                .map_err(|e| invalid(format!("{}: {e}", req.path)))?;
        let n_runs = plan.runs.len() as u64;
        let record = CampaignRecord {
            id: CampaignId(0),
            study_name: plan.study_name.clone(),
            study_design_hash: plan.study_design_hash.clone(),
            source_path: req.path,
            study_text: req.text,
            submitted_at: format_utc_ms(now_ms()),
            cancelled: false,
            n_runs,
            n_configs: plan.n_configs as u64,
            skipped: plan
                .skipped
                .iter()
                .map(|s| serde_json::json!({"reason": s.reason, "rule_id": s.rule_id, "config": s.config.to_json()}))
                .collect(),
            warnings: plan.warnings.clone(),
            experiment_timeout_s: plan.execution.experiment_timeout_seconds,
            stdout_silence_timeout_s: plan.execution.stdout_silence_timeout_seconds,
            force_cold_start: req.force_cold_start,
            runner_needs: runner_needs.clone(),
        };
        // Known before any of the campaign's runs is pending, so a lease looking for
        // them asks for their pools.
        self.shared
            .runner_needs
            .lock()
            .expect("runner needs lock")
            .extend(runner_needs.values().cloned());
        let (n_configs, n_skipped, warnings) = (
            plan.n_configs as u64,
            plan.skipped.len() as u64,
            plan.warnings.clone(),
        );
        let shared = self.shared.clone();
        let id = blocking(move || {
            // Each run's record is made as it is stored.
            let runs = plan.runs.iter().map(|r| {
                let c = &plan.configs[r.config as usize];
                NewRun {
                    config_hash: c.config_hash.clone(),
                    cycle: r.cycle,
                    engine: c.engine.clone(),
                    model: c.model.clone(),
                    gap_before_s: r.gap_before_seconds,
                    config_json: c.config_json.clone(),
                    tp_size: c.tp_size,
                    need: lem_common::runner::need_of(&runner_needs, &c.engine),
                }
            });
            shared.store.create_campaign(record, runs)
        })
        .await?;
        tracing::info!(campaign = id.0, n_runs, "campaign submitted");
        self.shared.note_change();
        self.shared.work_available.notify_waiters();
        Ok(SubmitReply {
            campaign: id,
            n_runs,
            n_configs,
            n_skipped,
            warnings,
        })
    }

    async fn campaigns(self, _: Context) -> Result<Vec<CampaignStatus>, RpcError> {
        let shared = self.shared.clone();
        blocking(move || {
            shared
                .store
                .campaigns()?
                .into_iter()
                .map(|c| CoordService::campaign_status(&shared, c.id, false))
                .collect()
        })
        .await
    }

    async fn status(self, _: Context, campaign: CampaignId) -> Result<CampaignStatus, RpcError> {
        let shared = self.shared.clone();
        blocking(move || CoordService::campaign_status(&shared, campaign, true)).await
    }

    async fn runs(self, _: Context, campaign: CampaignId) -> Result<Vec<RunRow>, RpcError> {
        let shared = self.shared.clone();
        blocking(move || {
            Ok(shared
                .store
                .runs(campaign)?
                .into_iter()
                .map(|(r, res)| RunRow {
                    run: r.key,
                    config_hash: r.config_hash,
                    cycle: r.cycle,
                    engine: r.engine,
                    state: r.lease.state.as_str().to_string(),
                    attempts: r.lease.attempts,
                    config_json: r.config_json,
                    result: res,
                    last_failure: r
                        .lease
                        .last_failure
                        .map(|f| format!("{} ({})", f.message, f.class)),
                })
                .collect())
        })
        .await
    }

    async fn cancel(self, _: Context, campaign: CampaignId) -> Result<CampaignStatus, RpcError> {
        let shared = self.shared.clone();
        let status = blocking(move || {
            shared.store.cancel(campaign)?;
            CoordService::campaign_status(&shared, campaign, true)
        })
        .await?;
        self.shared.note_change();
        Ok(status)
    }

    async fn retry(self, _: Context, campaign: CampaignId) -> Result<CampaignStatus, RpcError> {
        let shared = self.shared.clone();
        let (n, status) = blocking(move || {
            let n = shared.store.retry(campaign)?;
            Ok((n, CoordService::campaign_status(&shared, campaign, true)?))
        })
        .await?;
        tracing::info!(campaign = campaign.0, n, "failed runs returned to pending");
        self.shared.note_change();
        if n > 0 {
            self.shared.work_available.notify_waiters();
        }
        Ok(status)
    }

    async fn enrol(self, _: Context, req: EnrolRequest) -> Result<EnrolReply, RpcError> {
        let Some(pki) = self.shared.pki.clone() else {
            return Err(RpcError::new(
                RpcErrorKind::InvalidInput,
                "this coordinator has no CA (it is `lem-coord run`'s embedded one, plain on loopback): its workers need no join",
            ));
        };
        let unauthenticated = |m: String| RpcError::new(RpcErrorKind::Unauthenticated, m);
        pki.verify_token(&req.token, now_ms() / 1000)
            .map_err(|e| unauthenticated(e.to_string()))?;
        check_worker_name(&req.worker.0)
            .map_err(|m| RpcError::new(RpcErrorKind::InvalidInput, m))?;
        if req.public_key.len() != 65 || req.public_key[0] != 4 {
            return Err(RpcError::new(
                RpcErrorKind::InvalidInput,
                format!(
                    "the public key is {} bytes; an uncompressed P-256 key has 65, starting with 0x04",
                    req.public_key.len()
                ),
            ));
        }
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &req.public_key,
        )
        .verify(&enrol_proof_message(&req.token, &req.worker), &req.proof)
        .map_err(|_| {
            unauthenticated(
                "the enrolment proof does not verify with the public key sent (the worker must sign the token and its name with the key it enrols)".into(),
            )
        })?;
        let (certificate_pem, digest) = pki
            .issue_worker_certificate(&req.worker, &req.public_key)
            .map_err(|e| RpcError::new(RpcErrorKind::Internal, e.to_string()))?;
        let shared = self.shared.clone();
        let worker = req.worker.clone();
        let replaced = blocking(move || {
            shared
                .store
                .enrol(&worker, &digest, &format_utc_ms(now_ms()))
        })
        .await?;
        let fingerprint = lem_common::token::hex(&digest);
        match replaced {
            Some(old) => {
                tracing::warn!(worker = %req.worker, %fingerprint, previous = %old.cert_sha256, "worker enrolled again; its previous certificate no longer works")
            }
            None => tracing::info!(worker = %req.worker, %fingerprint, "worker enrolled"),
        }
        Ok(EnrolReply {
            certificate_pem,
            ca_pem: pki.ca_pem.clone(),
        })
    }

    async fn workers(self, _: Context) -> Result<Vec<WorkerInfo>, RpcError> {
        let shared = self.shared.clone();
        blocking(move || {
            let leases: HashMap<WorkerId, u64> =
                shared.store.leases_by_worker()?.into_iter().collect();
            let now = now_ms();
            Ok(shared
                .store
                .workers()?
                .into_iter()
                .map(|w| WorkerInfo {
                    leases_held: leases.get(&w.worker).copied().unwrap_or(0),
                    last_seen: format_utc_ms(shared.last_seen_ms(&w)),
                    last_seen_s_ago: now.saturating_sub(shared.last_seen_ms(&w)) as f64 / 1000.0,
                    connected: shared.connected(&w, now),
                    worker: w.worker,
                    host: w.host,
                    worker_version: w.worker_version,
                    slots: w.slots,
                    engines: w.engines,
                    runtime: w.runtime,
                    registered_at: w.registered_at,
                    runs_done: w.runs_done,
                })
                .collect())
        })
        .await
    }

    async fn backup(
        self,
        _: Context,
        req: lem_common::rpc::BackupRequest,
    ) -> Result<lem_common::rpc::BackupReply, RpcError> {
        let path = std::path::PathBuf::from(&req.path);
        // Relative to what? The coordinator's working directory is nobody's guess.
        if !path.is_absolute() {
            return Err(RpcError::new(
                RpcErrorKind::InvalidInput,
                format!(
                    "backup: {} is not an absolute path (the coordinator writes the file on its own host)",
                    req.path
                ),
            ));
        }
        let shared = self.shared.clone();
        let b = blocking(move || shared.store.backup(&path)).await?;
        tracing::info!(path = %b.path.display(), bytes = b.bytes, "manifest backed up");
        Ok(lem_common::rpc::BackupReply {
            path: b.path.display().to_string(),
            bytes: b.bytes,
            tables: b.tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_plain_words() {
        for ok in ["w1", "gpu-host-3.lab", "a_b", &"x".repeat(MAX_WORKER_NAME)] {
            assert_eq!(check_worker_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-rf",
            ".hidden",
            "a b",
            "$(id)",
            "a;b",
            "é",
            &"x".repeat(65),
        ] {
            let e = check_worker_name(bad).unwrap_err();
            assert!(e.contains("--name"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_study_and_its_base_count_together_against_the_size_limit() {
        let src = |text: usize, base: usize| StudySource {
            path: "s.yaml".into(),
            text: " ".repeat(text),
            base: (base > 0).then(|| ("b.yaml".to_string(), " ".repeat(base))),
        };
        assert_eq!(check_study_size(&src(MAX_STUDY_BYTES, 0)), Ok(()));
        let e = check_study_size(&src(MAX_STUDY_BYTES / 2 + 1, MAX_STUDY_BYTES / 2)).unwrap_err();
        assert!(e.starts_with("s.yaml: the study is 4194305 bytes"), "{e}");
    }

    fn worker(
        name: &str,
        engines: &[(&str, Option<&str>)],
        gpus_per_slot: u32,
        last_seen_ms: u64,
    ) -> WorkerRecord {
        WorkerRecord {
            worker: WorkerId(name.into()),
            host: name.into(),
            worker_version: "test".into(),
            slots: vec![lem_common::rpc::SlotInfo {
                index: 0,
                gpu_name: "sim".into(),
                simulated: true,
                gpus: (0..gpus_per_slot).collect(),
                dynamic: false,
            }],
            engines: engines
                .iter()
                .map(|(e, why)| lem_common::types::EngineCapability {
                    engine: e.to_string(),
                    available: why.is_none(),
                    reason: why.map(str::to_string),
                    version: None,
                })
                .collect(),
            registered_at: String::new(),
            last_seen_ms,
            runs_done: 0,
            runtime: WorkerRuntime::process(),
        }
    }

    #[test]
    fn a_worker_is_connected_within_the_ttl_or_while_polling_until_it_deregisters() {
        let ttl = 30_000;
        let now = 1_000_000;
        assert!(is_connected(now, now - 29_999, false, false, ttl));
        assert!(!is_connected(now, now - 30_000, false, false, ttl));
        // A long poll in flight: there, whenever it last called in.
        assert!(is_connected(now, now - 50_000, true, false, ttl));
        // Deregistered: gone at once, polling or not.
        assert!(!is_connected(now, now, false, true, ttl));
        assert!(!is_connected(now, now, true, true, ttl));
    }

    #[test]
    fn blocked_reasons_are_grouped_by_reason_over_connected_workers_only() {
        // 50 hosts that cannot run vllm (48 for one reason, 2 that do not offer it),
        // 3 that left long ago and would run it: one line per distinct reason, not
        // one entry per host, and the departed ones only counted.
        let now = 1_000_000;
        let no_vllm = Some("python module vllm is not installed");
        let mut workers: Vec<WorkerRecord> = (0..48)
            .map(|i| {
                worker(
                    &format!("h{i:02}"),
                    &[("synthetic", None), ("vllm", no_vllm)],
                    1,
                    now,
                )
            })
            .collect();
        workers.push(worker("h48", &[("synthetic", None)], 1, now - 5_000));
        workers.push(worker("h49", &[("synthetic", None)], 1, now));
        for i in 0..3 {
            workers.push(worker(
                &format!("gone{i}"),
                &[("vllm", None)],
                1,
                now - 30_001,
            ));
        }
        let (live, disconnected) = connected_workers(&workers, |w| {
            is_connected(now, w.last_seen_ms, false, false, 30_000)
        });
        assert_eq!((live.len(), disconnected), (50, 3));
        let pools = vec![
            ("vllm".to_string(), 1, RunnerNeed::Any, 40),
            ("synthetic".to_string(), 1, RunnerNeed::Any, 5),
            ("synthetic".to_string(), 2, RunnerNeed::Any, 2),
        ];
        let blocked = blocked_pools(pools, &live, disconnected);
        assert_eq!(
            blocked.len(),
            2,
            "the 1-GPU synthetic runs are not blocked: {blocked:?}"
        );

        let vllm = &blocked[0];
        assert_eq!(
            (vllm.engine.as_str(), vllm.tp_size, vllm.pending),
            ("vllm", 1, 40)
        );
        assert_eq!(vllm.cause, "no connected worker can run vllm");
        assert_eq!(vllm.by_reason.len(), 2, "{:?}", vllm.by_reason);
        assert_eq!(
            vllm.by_reason[0].reason,
            "python module vllm is not installed"
        );
        assert_eq!(vllm.by_reason[0].workers.len(), 48);
        assert_eq!(vllm.by_reason[1].reason, "engine vllm not offered");
        assert_eq!(vllm.by_reason[1].workers, ["h48", "h49"]);
        assert_eq!(
            vllm.reason,
            "no connected worker can run vllm (h00, h01, h02, h03, h04 and 43 more: python module vllm is not installed; h48, h49: engine vllm not offered)"
        );
        assert_eq!(vllm.fix, None);

        let tp2 = &blocked[1];
        assert_eq!(
            (tp2.engine.as_str(), tp2.tp_size, tp2.pending),
            ("synthetic", 2, 2)
        );
        assert!(
            tp2.cause.starts_with("these runs need a slot of 2 GPUs"),
            "{}",
            tp2.cause
        );
        assert_eq!(tp2.by_reason.len(), 1);
        assert_eq!(tp2.by_reason[0].reason, "slots of 1 GPU(s)");
        assert_eq!(tp2.by_reason[0].workers.len(), 50);
        assert!(
            tp2.fix.as_deref().unwrap().contains("--gpu-groups"),
            "{tp2:?}"
        );
        assert!(
            tp2.reason.ends_with(tp2.fix.as_deref().unwrap()),
            "{}",
            tp2.reason
        );

        for b in &blocked {
            let all = serde_json::to_string(b).unwrap();
            assert!(
                !all.contains("gone"),
                "a disconnected worker is left out: {all}"
            );
        }
    }

    #[test]
    fn with_no_worker_connected_the_disconnected_ones_are_counted() {
        let pools = vec![("vllm".to_string(), 1, RunnerNeed::Any, 4)];
        let b = &blocked_pools(pools.clone(), &[], 3)[0];
        assert_eq!(
            b.cause,
            "no worker is connected (3 registered worker(s) stopped or not heard from within the lease TTL)"
        );
        assert!(b.by_reason.is_empty());
        assert_eq!(
            blocked_pools(pools, &[], 0)[0].reason,
            "no worker is connected"
        );
    }

    #[test]
    fn reasons_are_grouped_most_workers_first_and_names_are_cut() {
        let pairs = [("b", "x"), ("a", "y"), ("c", "x"), ("a", "x")]
            .map(|(w, r)| (w.to_string(), r.to_string()));
        let groups = group_reasons(pairs);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            (groups[0].reason.as_str(), groups[0].workers.clone()),
            ("x", vec!["a".to_string(), "b".into(), "c".into()])
        );
        assert_eq!(
            (groups[1].reason.as_str(), groups[1].workers.clone()),
            ("y", vec!["a".to_string()])
        );
        let names: Vec<String> = (0..7).map(|i| format!("w{i}")).collect();
        assert_eq!(name_list(&names[..2], 5), "w0, w1");
        assert_eq!(name_list(&names, 5), "w0, w1, w2, w3, w4 and 2 more");
    }
}
