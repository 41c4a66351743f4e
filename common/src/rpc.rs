//! The coordinator's RPC service (tarpc) and its wire types.
//!
//! Workers call `enrol` once (with a join token, to get their certificate), then
//! `register`, `lease` (a long poll), `renew` while a run goes on, and `complete` or
//! `fail`. The CLI calls `submit` and the queries. Who may call what is decided per
//! connection by the coordinator (docs/security.md). The trait is the
//! contract between `lem-coord` and `lem-worker`; only this module imports tarpc, and
//! no transport is chosen here.

use serde::{Deserialize, Serialize};

use crate::types::{
    CampaignId, EngineCapability, FailureClass, FencingToken, RunKey, RunResult, WorkerId,
};

/// An error returned over the wire: a kind the caller can branch on and a message
/// that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub kind: RpcErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcErrorKind {
    /// The study or request is invalid; the message says where.
    InvalidInput,
    NotFound,
    /// The lease is stale, expired or not the caller's.
    LeaseLost,
    /// The worker's protocol version differs from the coordinator's.
    VersionMismatch,
    /// The worker never registered (or the coordinator forgot it).
    NotRegistered,
    /// The coordinator cannot write its store (disk full, read-only) or is stopping.
    Unavailable,
    Internal,
    /// The connection carries no credential this call needs (plain TCP where TLS is
    /// required, no client certificate, a certificate the coordinator does not know).
    Unauthenticated,
    /// The caller is known but may not do this (a worker calling an admin method, or
    /// speaking for another worker).
    PermissionDenied,
}

impl RpcError {
    pub fn new(kind: RpcErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }
}

/// One GPU slot of a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub index: u32,
    pub gpu_name: String,
    pub simulated: bool,
    /// The GPU indices the slot's harness sees (`CUDA_VISIBLE_DEVICES`); a slot
    /// hosts runs whose tensor-parallel size is this many GPUs.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// A dynamic pool (`lem-worker --gpu-groups dynamic`): `gpus` are the worker's
    /// whole pool, and each run gets a group of its own size formed from the GPUs
    /// free when it is leased, so it hosts runs of any tensor-parallel size up to
    /// this many GPUs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic: bool,
}

impl SlotInfo {
    /// GPUs in the slot (1 for a record written before slots had groups).
    pub fn gpu_count(&self) -> u32 {
        (self.gpus.len() as u32).max(1)
    }

    /// Whether a run needing `tp_size` GPUs can run here: exactly the slot's GPU
    /// count, or for a dynamic pool any count up to its size.
    pub fn hosts(&self, tp_size: u32) -> bool {
        if self.dynamic {
            tp_size.max(1) <= self.gpu_count()
        } else {
            tp_size.max(1) == self.gpu_count()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub worker: WorkerId,
    pub host: String,
    pub protocol_version: u32,
    pub worker_version: String,
    pub slots: Vec<SlotInfo>,
    pub engines: Vec<EngineCapability>,
    /// Where its harness runs: only runs whose study's `runners:`/`images:` this
    /// runtime meets are leased to it ([`crate::runner`]). Absent from older workers
    /// (they ran `process`).
    #[serde(default)]
    pub runtime: crate::runner::WorkerRuntime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterReply {
    pub coordinator_version: String,
    /// The lease TTL the coordinator applies; the worker renews well within it.
    pub lease_ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker: WorkerId,
    pub slot: u32,
    /// How long the coordinator may hold the call open waiting for work.
    pub wait_ms: u64,
    /// Models this slot has resident, as `(engine, task.model)`, for warm affinity:
    /// the coordinator may grant a run of one of them before earlier runs, within the
    /// bound of [`crate::schedule`] (docs/lease-protocol.md#warm-affinity). A fixed
    /// slot: its last successful run's, while its harness runs. A dynamic pool's lane:
    /// those of the idle harnesses whose GPUs it reserved.
    pub warm: Vec<(String, String)>,
    /// GPUs in this slot: only runs whose tensor-parallel size is exactly this are
    /// granted. For a dynamic pool (`max_gpus` > 0): the pool's size.
    pub gpus: u32,
    /// 0: the exact-size lease above. Otherwise the lane asks for a dynamic pool of
    /// `gpus` GPUs of which `max_gpus` are free and reserved for this call: the
    /// coordinator takes the earliest pending run (in study order) needing at most
    /// `gpus` GPUs, and grants it if it needs at most `max_gpus`; if it needs more it
    /// grants nothing and answers [`LeaseReply::Blocked`] at once (head-of-line, so a
    /// large run is not overtaken by smaller ones forever; docs/lease-protocol.md).
    #[serde(default)]
    pub max_gpus: u32,
    /// The worker's GPUs as they read now, for the coordinator's status page and
    /// metrics ([`GpuReading`]). Absent from older workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub telemetry: Vec<GpuReading>,
}

/// One GPU's latest sample, which a worker sends with every `lease` and `renew`
/// call: the coordinator shows it as the worker's live power (its age is at most one
/// lease poll, or a third of the lease TTL while a run goes on). Not a measurement:
/// results come from the worker's own sampler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuReading {
    /// The GPU's index on its host (NVML's, or the simulated GPU's).
    pub gpu: u32,
    pub power_w: f64,
    pub temp_c: f64,
    pub sm_clock_mhz: u32,
}

/// The answer to a lease call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseReply {
    Granted(Box<LeaseGrant>),
    /// No run this slot can take became pending within the wait.
    NoWork,
    /// Dynamic pools only: the earliest pending run the pool can host needs
    /// `needs_gpus` GPUs, more than the request's `max_gpus`; nothing was granted.
    /// Ask again when the pool's runs in progress have freed GPUs.
    Blocked {
        needs_gpus: u32,
    },
}

impl LeaseReply {
    /// The grant, if the call got one.
    pub fn into_grant(self) -> Option<LeaseGrant> {
        match self {
            LeaseReply::Granted(g) => Some(*g),
            LeaseReply::NoWork | LeaseReply::Blocked { .. } => None,
        }
    }
}

/// A lease on one run: what to run, under which token, until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub run: RunKey,
    pub token: FencingToken,
    pub ttl_ms: u64,
    pub attempt: u32,
    pub engine: String,
    pub config_hash: String,
    pub cycle: u32,
    /// The full canonical experiment config, as Python-compatible JSON text.
    pub config_json: String,
    /// Pause the study asks for before this run (`experiment_gap_seconds` and
    /// `cycle_gap_seconds`, FORMAT.md 7.10); the worker's thermal gate waits at least this.
    pub gap_before_s: f64,
    pub study_name: Option<String>,
    /// GPUs the run needs (its tensor-parallel size, as the coordinator read it).
    #[serde(default = "one")]
    pub tp_size: u32,
    /// The study's limit on the whole run (`study_execution.experiment_timeout_seconds`).
    #[serde(default = "default_run_timeout_s")]
    pub experiment_timeout_s: f64,
    /// The study's limit on the harness's silence between events
    /// (`study_execution.stdout_silence_timeout_seconds`; 0 = no watchdog).
    #[serde(default = "default_silence_s")]
    pub stdout_silence_timeout_s: f64,
    /// Start this run cold: recycle the harness and load the model anew.
    #[serde(default)]
    pub force_cold_start: bool,
}

/// llem's `experiment_timeout_seconds` default.
pub fn default_run_timeout_s() -> f64 {
    600.0
}

/// llem's `stdout_silence_timeout_seconds` default.
pub fn default_silence_s() -> f64 {
    300.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub worker: WorkerId,
    pub run: RunKey,
    pub token: FencingToken,
    /// As [`LeaseRequest::telemetry`]. Absent from older workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub telemetry: Vec<GpuReading>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewReply {
    pub expires_in_ms: u64,
    /// The campaign was cancelled: stop the run.
    pub cancelled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub worker: WorkerId,
    pub run: RunKey,
    pub token: FencingToken,
    pub result: RunResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompleteStatus {
    /// This result is the run's accepted result.
    Accepted,
    /// The same result was accepted before (a retried call); nothing changed.
    AlreadyAccepted,
    /// Kept as a duplicate record; not counted.
    Duplicate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompleteReply {
    pub status: CompleteStatus,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailRequest {
    pub worker: WorkerId,
    pub run: RunKey,
    pub token: FencingToken,
    pub class: FailureClass,
    pub message: String,
}

/// A study as the client read it: the file's text, and its `base:` file if any, so
/// the coordinator expands exactly what the user wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    pub path: String,
    pub text: String,
    pub base: Option<(String, String)>,
    /// Every run of the campaign starts cold: the harness (its container, on the
    /// docker runtime) is recycled and the model loaded anew (`submit --force-cold-start`).
    #[serde(default)]
    pub force_cold_start: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitReply {
    pub campaign: CampaignId,
    pub n_runs: u64,
    pub n_configs: u64,
    pub n_skipped: u64,
    pub warnings: Vec<String>,
}

/// Progress of one campaign. `running` counts leased runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CampaignStatus {
    pub campaign: u64,
    pub study_name: Option<String>,
    pub study_design_hash: String,
    pub submitted_at: String,
    pub state: String,
    pub total: u64,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub duplicates: u64,
    pub n_configs: u64,
    pub n_skipped: u64,
    /// Runs pending per engine, with the reason no connected worker can take them.
    pub blocked: Vec<BlockedEngine>,
    /// The last failure messages, newest first (at most a few).
    pub recent_failures: Vec<String>,
    /// The campaign's runs per engine and state, in engine order (empty for a
    /// cancelled campaign, and from coordinators older than this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<EngineProgress>,
    /// Registered workers not heard from lately (disconnected): left out of the
    /// `blocked` reasons, counted here.
    #[serde(default)]
    pub disconnected_workers: u64,
}

/// One engine's runs of a campaign, per state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineProgress {
    pub engine: String,
    pub total: u64,
    pub pending: u64,
    /// Leased runs.
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// Pending runs of one engine and GPU count that no connected worker can take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockedEngine {
    pub engine: String,
    /// GPUs each of these runs needs (their tensor-parallel size).
    #[serde(default = "one")]
    pub tp_size: u32,
    pub pending: u64,
    /// The whole reason in one line: `cause`, each distinct worker reason with (at
    /// most a few of) the workers that give it, and `fix`.
    pub reason: String,
    /// Why, without the workers' own reasons: `no connected worker can run vllm`.
    /// Empty from coordinators older than this field (use `reason`).
    #[serde(default)]
    pub cause: String,
    /// Each distinct reason a connected worker gives, with every worker that gives
    /// it; most workers first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_reason: Vec<ReasonWorkers>,
    /// What to do about it, when there is one thing to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// One distinct reason and the workers that give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonWorkers {
    pub reason: String,
    /// Sorted by name.
    pub workers: Vec<String>,
}

fn one() -> u32 {
    1
}

/// One run of a campaign with its result, for `results`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub run: RunKey,
    pub config_hash: String,
    pub cycle: u32,
    pub engine: String,
    pub state: String,
    pub attempts: u32,
    pub config_json: String,
    pub result: Option<RunResult>,
    pub last_failure: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker: WorkerId,
    pub host: String,
    pub worker_version: String,
    pub slots: Vec<SlotInfo>,
    pub engines: Vec<EngineCapability>,
    #[serde(default)]
    pub runtime: crate::runner::WorkerRuntime,
    pub registered_at: String,
    pub last_seen: String,
    pub last_seen_s_ago: f64,
    /// Heard from within the lease TTL (or waiting in a lease call now), and not
    /// deregistered since.
    #[serde(default)]
    pub connected: bool,
    pub leases_held: u64,
    pub runs_done: u64,
}

/// A worker that stops cleanly says so (`lem-worker` on SIGTERM or Ctrl-C), so it is
/// shown disconnected at once rather than after the lease TTL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeregisterRequest {
    pub worker: WorkerId,
}

/// A new worker asks for its client certificate (`lem-worker join`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The join token `lem-coord token create` printed.
    pub token: String,
    /// The name the worker will have; its certificate is bound to it.
    pub worker: WorkerId,
    /// The worker's ECDSA P-256 public key, uncompressed (65 bytes, `0x04 || x || y`).
    pub public_key: Vec<u8>,
    /// Proof that the worker holds the private key: an ASN.1 ECDSA-P256-SHA256
    /// signature over [`enrol_proof_message`].
    pub proof: Vec<u8>,
}

/// What an enrolment proof signs: the token and the name, so a proof cannot be
/// replayed for another name or token.
pub fn enrol_proof_message(token: &str, worker: &WorkerId) -> Vec<u8> {
    let mut m = b"lem-fleet enrol v1\0".to_vec();
    m.extend_from_slice(token.trim().as_bytes());
    m.push(0);
    m.extend_from_slice(worker.0.as_bytes());
    m
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrolReply {
    /// The worker's client certificate (PEM).
    pub certificate_pem: String,
    /// The coordinator's CA certificate (PEM).
    pub ca_pem: String,
}

/// `lem-coord backup`: the coordinator writes a consistent copy of its manifest (one
/// read transaction's snapshot of every table, in a fresh redb file) to `path` on its
/// own host, as the user it runs as. The path must be absolute and not exist yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupRequest {
    pub path: String,
}

/// What a backup holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupReply {
    /// The file written (on the coordinator's host).
    pub path: String,
    pub bytes: u64,
    /// Entries per table of the manifest, in the manifest's table order; the copy was
    /// read back and holds exactly these.
    pub tables: Vec<(String, u64)>,
}

impl BackupReply {
    /// Entries in `table` (0 for a table the manifest does not have).
    pub fn entries(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

#[tarpc::service]
pub trait Coordinator {
    async fn register(req: RegisterRequest) -> Result<RegisterReply, RpcError>;
    /// Waits up to `req.wait_ms` for a run this worker can take.
    async fn lease(req: LeaseRequest) -> Result<LeaseReply, RpcError>;
    async fn renew(req: RenewRequest) -> Result<RenewReply, RpcError>;
    async fn complete(req: CompleteRequest) -> Result<CompleteReply, RpcError>;
    async fn fail(req: FailRequest) -> Result<(), RpcError>;
    /// The worker stops: show it disconnected now (its leases stay as they are).
    async fn deregister(req: DeregisterRequest) -> Result<(), RpcError>;
    async fn submit(req: SubmitRequest) -> Result<SubmitReply, RpcError>;
    async fn campaigns() -> Result<Vec<CampaignStatus>, RpcError>;
    async fn status(campaign: CampaignId) -> Result<CampaignStatus, RpcError>;
    async fn runs(campaign: CampaignId) -> Result<Vec<RunRow>, RpcError>;
    async fn cancel(campaign: CampaignId) -> Result<CampaignStatus, RpcError>;
    /// Puts the campaign's failed runs back to pending (attempts kept); cancelled runs
    /// are not retried, and a cancelled campaign is refused.
    async fn retry(campaign: CampaignId) -> Result<CampaignStatus, RpcError>;
    async fn workers() -> Result<Vec<WorkerInfo>, RpcError>;
    /// Issues a client certificate to a worker that presents a valid join token.
    async fn enrol(req: EnrolRequest) -> Result<EnrolReply, RpcError>;
    /// Writes a consistent copy of the manifest to a file on the coordinator's host.
    async fn backup(req: BackupRequest) -> Result<BackupReply, RpcError>;
}
