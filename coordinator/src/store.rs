//! The campaign manifest: a redb file in the coordinator's data dir.
//!
//! Nothing the coordinator knows lives only in memory: campaigns, runs with their
//! lease records, accepted results, duplicate results, workers and the counters are
//! all here, and every lease transition is one write transaction that reads the
//! record, hands it to the pure machine in `lem_common::lease`, writes what it
//! returns and commits. A restarted coordinator reopens this file and carries on.
//!
//! Tables (keys are big-endian tuples, values JSON so the file is inspectable):
//! * `meta`: counters (`next_campaign`, `next_token`) and the schema version;
//! * `campaigns`: campaign id -> [`CampaignRecord`];
//! * `runs`: (campaign, seq) -> [`RunRecord`];
//! * `configs`: (campaign, config hash) -> the config's canonical JSON, once per
//!   config however many cycles run it (a run record names its config by hash;
//!   manifests written before this table hold the JSON in the run record itself);
//! * `pending`: (pool, campaign, seq) -> () — the index a lease reads, O(log n); the
//!   pool is the engine, with `/tpK` for runs that need K > 1 GPUs ([`pending_pool`]);
//! * `leased`: (campaign, seq) -> lease deadline (ms), what the sweeper scans;
//! * `failed`: (campaign, seq) -> () — failed runs, what status lists;
//! * `counts`: (campaign, state) -> number of runs, (campaign, `pending/POOL`)
//!   -> pending runs of one pool, so status is O(1) however big the campaign, and
//!   (campaign, `total/ENGINE`) -> the campaign's runs of one engine (written at
//!   submit; absent for campaigns submitted before it was kept), and (campaign,
//!   `flag/NAME`) -> accepted results with that quality flag
//!   (`lem_common::quality`), counted as each is accepted in campaigns whose
//!   `flags_counted` key is set (those submitted since the counts were kept);
//! * `studies`: campaign id -> the study text as submitted (kept out of the campaign
//!   record, which every status reads);
//! * `results`: (campaign, seq) -> the accepted [`RunResult`];
//! * `duplicates`: (campaign, seq, token) -> a result that was not counted;
//! * `workers`: worker id -> [`WorkerRecord`];
//! * `enrolments`: worker id -> [`Enrolment`] (the client certificate it joined with);
//! * `client_certs`: SHA-256 of a worker's certificate -> worker id, how a mutual-TLS
//!   connection learns who it is (docs/security.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use lem_common::lease::{self, CompleteOutcome, LeasePolicy, LeaseRecord, RunState};
use lem_common::runner::{RunnerNeed, WorkerRuntime};
use lem_common::schedule::{self, Candidate, PoolChoice, WarmPolicy};
use lem_common::types::{
    CampaignId, EngineCapability, FailureClass, FencingToken, RunKey, RunResult, WorkerId,
};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod backup;
pub use backup::{backup_stopped_manifest, ManifestBackup};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CAMPAIGNS: TableDefinition<u64, &[u8]> = TableDefinition::new("campaigns");
const RUNS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("runs");
const CONFIGS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("configs");
const PENDING: TableDefinition<(&str, u64, u32), ()> = TableDefinition::new("pending");
const LEASED: TableDefinition<(u64, u32), u64> = TableDefinition::new("leased");
const FAILED: TableDefinition<(u64, u32), ()> = TableDefinition::new("failed");
const COUNTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("counts");
const STUDIES: TableDefinition<u64, &str> = TableDefinition::new("studies");
const RESULTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("results");
const DUPLICATES: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("duplicates");
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
const ENROLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrolments");
const CLIENT_CERTS: TableDefinition<&[u8], &str> = TableDefinition::new("client_certs");

/// Bumped when the on-disk layout changes so that an older lem-coord would misread
/// it. 2: configs in their own table, not in each run record. A manifest of an
/// older version this one can read ([`OLDEST_READABLE_SCHEMA`]) is upgraded in place
/// on open; an older lem-coord then refuses it instead of misreading it.
pub const SCHEMA_VERSION: u64 = 2;
/// Schema 1 manifests hold every config in its run records, which version 2 reads.
pub const OLDEST_READABLE_SCHEMA: u64 = 1;

/// redb's page cache for the manifest.
pub const MANIFEST_CACHE_BYTES: usize = 64 << 20;

/// The name of the manifest file inside the data dir.
pub const MANIFEST_FILE: &str = "manifest.redb";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("another lem-coord already has the manifest {path} open (one coordinator per data dir; stop the other one or choose another --data-dir)")]
    AlreadyOpen { path: String },
    #[error("cannot open the manifest {path}: {source} (if the file is damaged, move it aside and start again; a copy of the data dir is the backup)")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot write the manifest {path}: {reason}: make its data dir writable (remount it read-write, or give this user write access), then try again")]
    NotWritable { path: String, reason: String },
    #[error("manifest {path} has schema version {found}, this lem-coord understands {expected}")]
    SchemaMismatch {
        path: String,
        found: u64,
        expected: u64,
    },
    #[error("manifest storage error: {0}")]
    Storage(String),
    #[error("campaign {0} does not exist")]
    NoCampaign(CampaignId),
    #[error("no run {0}")]
    NoRun(RunKey),
    #[error("campaign {0} was cancelled; its runs are not retried (submit the study again)")]
    CampaignCancelled(CampaignId),
    /// `lem-coord backup` was given a destination it cannot use.
    #[error("backup: {0}")]
    BackupTarget(String),
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A submitted campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CampaignRecord {
    pub id: CampaignId,
    pub study_name: Option<String>,
    pub study_design_hash: String,
    pub source_path: String,
    /// The study as submitted; kept in the `studies` table ([`Store::study_text`]),
    /// so empty in records read back (schema 1 records carry it here).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub study_text: String,
    pub submitted_at: String,
    pub cancelled: bool,
    pub n_runs: u64,
    pub n_configs: u64,
    pub skipped: Vec<serde_json::Value>,
    pub warnings: Vec<String>,
    /// The study's run limits (`study_execution`), handed to workers with each lease.
    #[serde(default = "lem_common::rpc::default_run_timeout_s")]
    pub experiment_timeout_s: f64,
    #[serde(default = "lem_common::rpc::default_silence_s")]
    pub stdout_silence_timeout_s: f64,
    /// Every run starts cold (`submit --force-cold-start`).
    #[serde(default)]
    pub force_cold_start: bool,
    /// The study's `runners:`/`images:` as each engine's need of a worker's runtime
    /// (`lem_common::runner`); engines it does not name run anywhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runner_needs: BTreeMap<String, RunnerNeed>,
}

/// One run: its place in the plan and its lease record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub key: RunKey,
    pub config_hash: String,
    pub cycle: u32,
    pub engine: String,
    pub model: String,
    pub gap_before_s: f64,
    /// The config's canonical JSON. Filled in by every read that returns a record;
    /// stored once per config in the `configs` table, not in each run's record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_json: String,
    pub lease: LeaseRecord,
    /// GPUs the run needs (its tensor-parallel size); only a slot of exactly this
    /// many GPUs is granted it.
    #[serde(default = "one_gpu")]
    pub tp_size: u32,
    /// How many times a lease took a later run while this one was pending and could
    /// have been taken (warm affinity, `lem_common::schedule`): kept here so the
    /// bound on it holds across coordinator restarts. Absent (0) in older records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub passed_over: u32,
    /// What the run needs of a worker's runtime (the study's `runners:`/`images:` for
    /// its engine); part of its pending pool. Absent ([`RunnerNeed::Any`]) in older
    /// records.
    #[serde(default, skip_serializing_if = "is_any")]
    pub need: RunnerNeed,
}

fn is_any(n: &RunnerNeed) -> bool {
    *n == RunnerNeed::Any
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn one_gpu() -> u32 {
    1
}

/// The pending-index pool of runs of `engine` needing `tp_size` GPUs and a runtime
/// that meets `need`: the engine's name for one GPU (so manifests from before
/// multi-GPU slots read the same), else `engine/tpK`; then the need's
/// [`RunnerNeed::pool_suffix`] (none for [`RunnerNeed::Any`], so manifests from
/// before study runners read the same).
pub fn pending_pool(engine: &str, tp_size: u32, need: &RunnerNeed) -> String {
    let suffix = need.pool_suffix();
    if tp_size <= 1 {
        format!("{engine}{suffix}")
    } else {
        format!("{engine}/tp{tp_size}{suffix}")
    }
}

/// The engine, GPU count and runner need of a pending-index pool.
fn parse_pool(pool: &str) -> (String, u32, RunnerNeed) {
    let (base, need) = match pool.split_once('|') {
        Some((base, tail)) => (base, RunnerNeed::from_pool_suffix(tail).unwrap_or_default()),
        None => (pool, RunnerNeed::Any),
    };
    match base.split_once("/tp") {
        Some((engine, k)) => (engine.to_string(), k.parse().unwrap_or(1), need),
        None => (base.to_string(), 1, need),
    }
}

/// A result that arrived but was not counted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DuplicateRecord {
    pub worker: WorkerId,
    pub token: FencingToken,
    pub reason: String,
    pub received_at: String,
    pub result: RunResult,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker: WorkerId,
    pub host: String,
    pub worker_version: String,
    pub slots: Vec<lem_common::rpc::SlotInfo>,
    pub engines: Vec<EngineCapability>,
    pub registered_at: String,
    pub last_seen_ms: u64,
    pub runs_done: u64,
    /// The runtime its harness runs in (`lem-worker --runtime`, `--image`); absent in
    /// records from before runtimes were reported (those ran `process`).
    #[serde(default)]
    pub runtime: WorkerRuntime,
}

/// A worker's enrolment: the certificate it was issued when it joined. A later
/// enrolment under the same name replaces it, and the old certificate stops working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub worker: WorkerId,
    /// SHA-256 of the certificate (DER), lower-case hex.
    pub cert_sha256: String,
    pub enrolled_at: String,
}

/// A run planned for a new campaign.
pub struct NewRun {
    pub config_hash: String,
    pub cycle: u32,
    pub engine: String,
    pub model: String,
    pub gap_before_s: f64,
    pub config_json: String,
    pub tp_size: u32,
    pub need: RunnerNeed,
}

/// Counts per state for one campaign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub pending: u64,
    pub leased: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StateCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.leased + self.done + self.failed + self.cancelled
    }
}

pub struct Store {
    db: Db,
}

/// The manifest's redb database, reopened after a failed write. redb refuses every
/// transaction after an I/O error (`PreviousIo`: "close and re-open the database"),
/// so without this one full disk would stop the coordinator for good; with it, the
/// coordinator answers `Unavailable` while the disk is full and carries on, with the
/// last committed state, once there is space again.
struct Db {
    path: PathBuf,
    current: RwLock<Option<Arc<Database>>>,
    /// A write failed: reopen before the next transaction.
    poisoned: AtomicBool,
}

/// A write transaction of [`Db`]; its `commit` marks the database for reopening when
/// it fails.
struct WriteTxn<'a> {
    txn: WriteTransaction,
    db: &'a Db,
}

impl std::ops::Deref for WriteTxn<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl WriteTxn<'_> {
    fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().map_err(|e| {
            self.db.poisoned.store(true, Ordering::SeqCst);
            StoreError::Storage(e.to_string())
        })
    }
}

/// Opens the manifest file with every page's checksum verified: a damaged manifest is
/// an error that names it, never a panic inside redb (a plain open may panic on one).
/// Only `create` makes a new one: a reopen that found no file (its data dir unmounted
/// for repair, say) must wait for it, not carry on with an empty manifest.
fn open_database(path: &Path, create: bool) -> Result<Database, StoreError> {
    let display = path.display().to_string();
    let mut builder = Database::builder();
    builder
        .set_check_integrity_on_open(true)
        // redb's default cache is 1 GiB; the hot set (the pending and leased indexes,
        // the counts, the B-tree interiors) is a few MiB even at 1,000,000 runs, and
        // a cache that big would hold whatever a full export touched for the life of
        // the coordinator (docs/performance.md).
        .set_cache_size(MANIFEST_CACHE_BYTES);
    let opened = if create {
        builder.create(path)
    } else {
        builder.open(path)
    };
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: display },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::NotFound =>
        {
            StoreError::Storage(format!(
                "the manifest {display} is not there (is its data dir unmounted?); waiting for it, not starting an empty one"
            ))
        }
        // A read-only mount or a permission problem, not damage: the advice of
        // `Open` (move the file aside) would be wrong.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            StoreError::NotWritable {
                path: display,
                reason: io.to_string(),
            }
        }
        other => StoreError::Open {
            path: display,
            source: other,
        },
    })
}

impl Db {
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        if self.poisoned.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        g.clone().ok_or_else(|| {
            StoreError::Storage("the manifest is being reopened after a write error".into())
        })
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut g = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !self.poisoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The file lock goes with the last reference; a transaction still running on
        // another thread holds one, and the next call tries again.
        drop(g.take());
        let db = open_database(&self.path, false).map_err(|e| {
            StoreError::Storage(format!("reopening the manifest after a write error: {e}"))
        })?;
        tracing::warn!(manifest = %self.path.display(), "manifest reopened after a write error");
        *g = Some(Arc::new(db));
        self.poisoned.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn begin_write(&self) -> Result<WriteTxn<'_>, StoreError> {
        let txn = match self.database()?.begin_write() {
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                self.poisoned.store(true, Ordering::SeqCst);
                self.database()?.begin_write()?
            }
            other => other?,
        };
        Ok(WriteTxn { txn, db: self })
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.database()?.begin_read()?)
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialise")
}

fn from_json<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn bump_count(
    txn: &WriteTransaction,
    campaign: u64,
    state: RunState,
    delta: i64,
) -> Result<(), StoreError> {
    bump_key(txn, campaign, state.as_str(), delta)
}

/// The `counts` key of a pool's pending runs.
fn pool_count_key(pool: &str) -> String {
    format!("{POOL_COUNT_PREFIX}{pool}")
}
const POOL_COUNT_PREFIX: &str = "pending/";
/// The `counts` key prefix of a campaign's runs of one engine (`total/ENGINE`).
const ENGINE_TOTAL_PREFIX: &str = "total/";
/// The `counts` key prefix of a campaign's accepted results with one quality flag
/// (`flag/NAME`, the flag's stable name).
const FLAG_COUNT_PREFIX: &str = "flag/";
/// The `counts` key set (to 1) at submit in campaigns whose flags are counted.
const FLAGS_COUNTED_KEY: &str = "flags_counted";

fn bump_key(
    txn: &WriteTransaction,
    campaign: u64,
    key: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let mut t = txn.open_table(COUNTS)?;
    let cur = t.get((campaign, key))?.map(|g| g.value()).unwrap_or(0);
    let next = (cur as i64 + delta).max(0) as u64;
    if next == 0 && key.starts_with(POOL_COUNT_PREFIX) {
        t.remove((campaign, key))?;
    } else {
        t.insert((campaign, key), next)?;
    }
    Ok(())
}

/// Counts every campaign's pending runs per pool from the `pending` index (the
/// upgrade of a schema 1 manifest, which had no such counts).
fn rebuild_pool_counts(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut counts: std::collections::BTreeMap<(u64, String), u64> = Default::default();
    for item in txn.open_table(PENDING)?.iter()? {
        let (k, _) = item?;
        let (pool, c, _) = k.value();
        *counts.entry((c, pool_count_key(pool))).or_default() += 1;
    }
    let mut t = txn.open_table(COUNTS)?;
    for ((c, key), n) in counts {
        t.insert((c, key.as_str()), n)?;
    }
    let mut failed = txn.open_table(FAILED)?;
    for item in txn.open_table(RUNS)?.iter()? {
        let (k, v) = item?;
        let rec: RunRecord = from_json("runs", v.value())?;
        if rec.lease.state == RunState::Failed {
            failed.insert(k.value(), ())?;
        }
    }
    Ok(())
}

/// Writes a run record whose state may have changed, keeping the indexes in step.
fn put_run(
    txn: &WriteTransaction,
    old: Option<&RunRecord>,
    new: &RunRecord,
) -> Result<(), StoreError> {
    let key = (new.key.campaign.0, new.key.seq);
    let old_state = old.map(|o| o.lease.state);
    let new_state = new.lease.state;
    if old_state != Some(new_state) {
        if let Some(s) = old_state {
            bump_count(txn, key.0, s, -1)?;
        }
        bump_count(txn, key.0, new_state, 1)?;
        let mut pending = txn.open_table(PENDING)?;
        let pool = pending_pool(&new.engine, new.tp_size, &new.need);
        let pool_count = pool_count_key(&pool);
        if old_state == Some(RunState::Pending) {
            pending.remove((pool.as_str(), key.0, key.1))?;
            bump_key(txn, key.0, &pool_count, -1)?;
        }
        if new_state == RunState::Pending {
            pending.insert((pool.as_str(), key.0, key.1), ())?;
            bump_key(txn, key.0, &pool_count, 1)?;
        }
        let mut failed = txn.open_table(FAILED)?;
        if old_state == Some(RunState::Failed) {
            failed.remove(key)?;
        }
        if new_state == RunState::Failed {
            failed.insert(key, ())?;
        }
    }
    {
        let mut leased = txn.open_table(LEASED)?;
        match (&new.lease.state, &new.lease.lease) {
            (RunState::Leased, Some(l)) => {
                leased.insert(key, l.expires_at_ms)?;
            }
            _ => {
                leased.remove(key)?;
            }
        }
    }
    txn.open_table(RUNS)?.insert(key, to_json(new).as_slice())?;
    Ok(())
}

fn get_run(txn: &WriteTransaction, key: RunKey) -> Result<RunRecord, StoreError> {
    let t = txn.open_table(RUNS)?;
    let g = t
        .get((key.campaign.0, key.seq))?
        .ok_or(StoreError::NoRun(key))?;
    from_json("runs", g.value())
}

/// Fills in a run record's config from the `configs` table (records of manifests
/// written before that table carry it already).
fn fill_config(
    configs: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    rec: &mut RunRecord,
) -> Result<(), StoreError> {
    if !rec.config_json.is_empty() {
        return Ok(());
    }
    let g = configs
        .get((rec.key.campaign.0, rec.config_hash.as_str()))?
        .ok_or_else(|| StoreError::Corrupt {
            table: "configs",
            detail: format!("no config {} for run {}", rec.config_hash, rec.key),
        })?;
    rec.config_json = String::from_utf8(g.value().to_vec()).map_err(|e| StoreError::Corrupt {
        table: "configs",
        detail: e.to_string(),
    })?;
    Ok(())
}

fn get_campaign(txn: &WriteTransaction, id: CampaignId) -> Result<CampaignRecord, StoreError> {
    let t = txn.open_table(CAMPAIGNS)?;
    let g = t.get(id.0)?.ok_or(StoreError::NoCampaign(id))?;
    from_json("campaigns", g.value())
}

/// Applies a campaign-wide lease transition (cancel, retry) to every run it changes;
/// returns how many changed.
fn apply_to_campaign(
    txn: &WriteTransaction,
    id: CampaignId,
    transition: fn(&LeaseRecord) -> Option<LeaseRecord>,
) -> Result<usize, StoreError> {
    let seqs: Vec<u32> = {
        let t = txn.open_table(RUNS)?;
        let mut v = Vec::new();
        for item in t.range((id.0, 0)..=(id.0, u32::MAX))? {
            v.push(item?.0.value().1);
        }
        v
    };
    let mut n = 0;
    for seq in seqs {
        let old = get_run(txn, RunKey { campaign: id, seq })?;
        if let Some(l) = transition(&old.lease) {
            let mut new = old.clone();
            new.lease = l;
            put_run(txn, Some(&old), &new)?;
            n += 1;
        }
    }
    Ok(n)
}

fn next_counter(txn: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let cur = meta.get(name)?.map(|g| g.value()).unwrap_or(1);
    meta.insert(name, cur + 1)?;
    Ok(cur)
}

/// One lease transition a worker asks for; [`Store::apply_batch`] applies many in
/// one transaction.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Grant the next pending run of one of `pools` ([`pending_pool`]).
    Lease {
        worker: WorkerId,
        slot: u32,
        pools: Vec<String>,
        /// 0: grant that run. Otherwise (a dynamic pool with this many GPUs free)
        /// grant it only if it needs at most this many GPUs, else nothing
        /// ([`WriteOutcome::LeaseBlocked`], `lem_common::gpus::pool_grant`).
        max_gpus: u32,
        /// The slot's warm `(engine, model)` pairs: a later run of one of them may
        /// be granted first, within the bound of `lem_common::schedule`.
        warm: Vec<(String, String)>,
        /// Only runs of this campaign (`lem-coord run`'s embedded coordinator runs
        /// its own campaign, not what else its manifest holds); `None`: any.
        campaign: Option<CampaignId>,
    },
    Renew {
        key: RunKey,
        token: FencingToken,
        worker: WorkerId,
    },
    Complete {
        key: RunKey,
        token: FencingToken,
        worker: WorkerId,
        result: Box<RunResult>,
        /// When it arrived, as text, for a duplicate record.
        received_at: String,
    },
    Fail {
        key: RunKey,
        token: FencingToken,
        worker: WorkerId,
        class: FailureClass,
        message: String,
    },
}

/// What a [`WriteOp`] did.
#[derive(Clone, Debug)]
pub enum WriteOutcome {
    Leased(Option<RunRecord>),
    /// A dynamic pool's lease granted nothing: the next run needs more GPUs than free.
    LeaseBlocked {
        needs_gpus: u32,
    },
    Renewed(RunRecord),
    Completed(CompleteOutcome),
    Failed(RunRecord),
}

impl StoreError {
    /// An op refused before it wrote anything (the lease machine said no, or the
    /// run is unknown): the transaction it ran in is still good for other ops.
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::Lease(_) | StoreError::NoRun(_) | StoreError::NoCampaign(_)
        )
    }
}

/// Applies one op inside `txn`. Every refusal ([`StoreError::is_refusal`]) comes
/// before the op's first write.
fn apply_op(
    txn: &WriteTransaction,
    op: &WriteOp,
    now_ms: u64,
    policy: &LeasePolicy,
) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::Lease {
            worker,
            slot,
            pools,
            max_gpus,
            warm,
            campaign,
        } => {
            let warm_policy = WarmPolicy::default();
            // The first pending runs among the pools in (campaign, seq) order, with
            // the GPUs each needs: one when nothing is warm, else the scheduler's
            // window.
            let window = if warm.is_empty() {
                1
            } else {
                warm_policy.window
            };
            let mut keys: Vec<(u64, u32, u32)> = Vec::new();
            let (first, last) = match campaign {
                Some(c) => (c.0, c.0),
                None => (0, u64::MAX),
            };
            {
                let pending = txn.open_table(PENDING)?;
                for pool in pools {
                    let (_, gpus, _) = parse_pool(pool);
                    let range = pending
                        .range((pool.as_str(), first, 0)..=(pool.as_str(), last, u32::MAX))?;
                    for item in range.take(window) {
                        let (k, _) = item?;
                        let (_, c, s) = k.value();
                        keys.push((c, s, gpus));
                    }
                }
            }
            keys.sort_unstable();
            keys.truncate(window);
            let run_key = |&(c, s, _): &(u64, u32, u32)| RunKey {
                campaign: CampaignId(c),
                seq: s,
            };
            let Some(head) = keys.first() else {
                return Ok(WriteOutcome::Leased(None));
            };
            // The records the scheduler needs: the first run's, and the rest of the
            // window's only when that one is not warm.
            let mut records = vec![get_run(txn, run_key(head))?];
            let head_warm = schedule::is_warm(&candidate(&records[0], head.2), warm);
            if !warm.is_empty() && !head_warm {
                for k in &keys[1..] {
                    records.push(get_run(txn, run_key(k))?);
                }
            }
            let candidates: Vec<Candidate> = records
                .iter()
                .zip(&keys)
                .map(|(r, k)| candidate(r, k.2))
                .collect();
            let i = if *max_gpus > 0 {
                match schedule::choose_in_pool(&candidates, warm, *max_gpus, &warm_policy) {
                    Some(PoolChoice::Take(i)) => i,
                    Some(PoolChoice::Blocked { needs_gpus }) => {
                        return Ok(WriteOutcome::LeaseBlocked { needs_gpus })
                    }
                    None => return Ok(WriteOutcome::Leased(None)),
                }
            } else {
                match schedule::choose(&candidates, warm, &warm_policy) {
                    Some(i) => i,
                    None => return Ok(WriteOutcome::Leased(None)),
                }
            };
            let old = &records[i];
            let token = FencingToken(peek_counter(txn, "next_token")?);
            let mut new = old.clone();
            new.lease = lease::handle_grant(&old.lease, worker, *slot, token, now_ms, policy)?;
            next_counter(txn, "next_token")?;
            // The runs before it were passed over once more.
            for passed in &records[..i] {
                let mut counted = passed.clone();
                counted.passed_over += 1;
                put_run(txn, Some(passed), &counted)?;
            }
            put_run(txn, Some(old), &new)?;
            fill_config(&txn.open_table(CONFIGS)?, &mut new)?;
            Ok(WriteOutcome::Leased(Some(new)))
        }
        WriteOp::Renew { key, token, worker } => {
            let old = get_run(txn, *key)?;
            let mut new = old.clone();
            new.lease = lease::handle_renew(&old.lease, *token, worker, now_ms, policy)?;
            put_run(txn, Some(&old), &new)?;
            Ok(WriteOutcome::Renewed(new))
        }
        WriteOp::Complete {
            key,
            token,
            worker,
            result,
            received_at,
        } => {
            let old = get_run(txn, *key)?;
            let outcome = lease::handle_complete(&old.lease, *token, worker, now_ms);
            match &outcome {
                CompleteOutcome::Accepted(new_lease) => {
                    let mut workers = txn.open_table(WORKERS)?;
                    let counted = match workers.get(worker.0.as_str())? {
                        Some(g) => {
                            let mut w: WorkerRecord = from_json("workers", g.value())?;
                            w.runs_done += 1;
                            Some(w)
                        }
                        None => None,
                    };
                    let mut new = old.clone();
                    new.lease = new_lease.clone();
                    put_run(txn, Some(&old), &new)?;
                    txn.open_table(RESULTS)?
                        .insert((key.campaign.0, key.seq), to_json(result).as_slice())?;
                    if let Some(w) = counted {
                        workers.insert(worker.0.as_str(), to_json(&w).as_slice())?;
                    }
                    for flag in lem_common::quality::flags(result) {
                        let count_key = format!("{FLAG_COUNT_PREFIX}{}", flag.name());
                        bump_key(txn, key.campaign.0, &count_key, 1)?;
                    }
                }
                CompleteOutcome::AlreadyAccepted => {}
                CompleteOutcome::Duplicate { reason } | CompleteOutcome::NotHolder { reason } => {
                    let dup = DuplicateRecord {
                        worker: worker.clone(),
                        token: *token,
                        reason: reason.clone(),
                        received_at: received_at.clone(),
                        result: (**result).clone(),
                    };
                    txn.open_table(DUPLICATES)?
                        .insert((key.campaign.0, key.seq, token.0), to_json(&dup).as_slice())?;
                }
            }
            Ok(WriteOutcome::Completed(outcome))
        }
        WriteOp::Fail {
            key,
            token,
            worker,
            class,
            message,
        } => {
            let old = get_run(txn, *key)?;
            let mut new = old.clone();
            new.lease =
                lease::handle_fail(&old.lease, *token, worker, *class, message, now_ms, policy)?;
            put_run(txn, Some(&old), &new)?;
            Ok(WriteOutcome::Failed(new))
        }
    }
}

/// What the scheduler sees of a pending run that needs `gpus` GPUs.
fn candidate(rec: &RunRecord, gpus: u32) -> Candidate<'_> {
    Candidate {
        engine: &rec.engine,
        model: &rec.model,
        gpus,
        passed_over: rec.passed_over,
    }
}

fn peek_counter(txn: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)?
        .get(name)?
        .map(|g| g.value())
        .unwrap_or(1))
}

impl Store {
    /// Opens (or creates) the manifest in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Storage(format!(
                "cannot create data dir {}: {e} (choose a --data-dir on a writable file system, or make this one writable)",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(MANIFEST_FILE);
        let display = path.display().to_string();
        let db = open_database(&path, true)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|g| g.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(v) if (OLDEST_READABLE_SCHEMA..SCHEMA_VERSION).contains(&v) => {
                    rebuild_pool_counts(&txn)?;
                    tracing::info!(manifest = %path.display(), from = v, to = SCHEMA_VERSION, "manifest schema upgraded");
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(v) if v != SCHEMA_VERSION => {
                    return Err(StoreError::SchemaMismatch {
                        path: display,
                        found: v,
                        expected: SCHEMA_VERSION,
                    })
                }
                Some(_) => {}
            }
            // Create every table so readers never meet a missing one.
            txn.open_table(CAMPAIGNS)?;
            txn.open_table(RUNS)?;
            txn.open_table(CONFIGS)?;
            txn.open_table(PENDING)?;
            txn.open_table(LEASED)?;
            txn.open_table(FAILED)?;
            txn.open_table(COUNTS)?;
            txn.open_table(STUDIES)?;
            txn.open_table(RESULTS)?;
            txn.open_table(DUPLICATES)?;
            txn.open_table(WORKERS)?;
            txn.open_table(ENROLMENTS)?;
            txn.open_table(CLIENT_CERTS)?;
        }
        txn.commit()?;
        Ok(Store {
            db: Db {
                path,
                current: RwLock::new(Some(Arc::new(db))),
                poisoned: AtomicBool::new(false),
            },
        })
    }

    /// Stores a new campaign and all its runs in one transaction. The runs are
    /// taken one at a time, so a caller can make each as it is stored (a
    /// 1,000,000-run campaign is never held as 1,000,000 records).
    pub fn create_campaign(
        &self,
        mut campaign: CampaignRecord,
        runs: impl IntoIterator<Item = NewRun>,
    ) -> Result<CampaignId, StoreError> {
        let txn = self.db.begin_write()?;
        let id = CampaignId(next_counter(&txn, "next_campaign")?);
        campaign.id = id;
        txn.open_table(STUDIES)?
            .insert(id.0, campaign.study_text.as_str())?;
        campaign.study_text = String::new();
        let mut configs = txn.open_table(CONFIGS)?;
        let mut run_table = txn.open_table(RUNS)?;
        let mut pending = txn.open_table(PENDING)?;
        // Every new run is pending: the indexes are written here directly and the
        // counts once at the end (what `put_run` does one run at a time).
        let mut pool_counts: std::collections::BTreeMap<String, u64> = Default::default();
        let mut engine_totals: BTreeMap<String, u64> = Default::default();
        campaign.n_runs = 0;
        for (seq, r) in runs.into_iter().enumerate() {
            campaign.n_runs += 1;
            match engine_totals.get_mut(&r.engine) {
                Some(n) => *n += 1,
                None => {
                    engine_totals.insert(r.engine.clone(), 1);
                }
            }
            if configs.get((id.0, r.config_hash.as_str()))?.is_none() {
                configs.insert((id.0, r.config_hash.as_str()), r.config_json.as_bytes())?;
            }
            let rec = RunRecord {
                key: RunKey {
                    campaign: id,
                    seq: seq as u32,
                },
                config_hash: r.config_hash,
                cycle: r.cycle,
                engine: r.engine,
                model: r.model,
                gap_before_s: r.gap_before_s,
                config_json: String::new(),
                lease: LeaseRecord::new_pending(),
                tp_size: r.tp_size.max(1),
                passed_over: 0,
                need: r.need,
            };
            let pool = pending_pool(&rec.engine, rec.tp_size, &rec.need);
            pending.insert((pool.as_str(), id.0, rec.key.seq), ())?;
            run_table.insert((id.0, rec.key.seq), to_json(&rec).as_slice())?;
            *pool_counts.entry(pool).or_default() += 1;
        }
        drop((configs, run_table, pending));
        bump_count(&txn, id.0, RunState::Pending, campaign.n_runs as i64)?;
        for (pool, n) in pool_counts {
            bump_key(&txn, id.0, &pool_count_key(&pool), n as i64)?;
        }
        for (engine, n) in engine_totals {
            bump_key(
                &txn,
                id.0,
                &format!("{ENGINE_TOTAL_PREFIX}{engine}"),
                n as i64,
            )?;
        }
        bump_key(&txn, id.0, FLAGS_COUNTED_KEY, 1)?;
        txn.open_table(CAMPAIGNS)?
            .insert(id.0, to_json(&campaign).as_slice())?;
        txn.commit()?;
        Ok(id)
    }

    pub fn campaign(&self, id: CampaignId) -> Result<CampaignRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CAMPAIGNS)?;
        let g = t.get(id.0)?.ok_or(StoreError::NoCampaign(id))?;
        from_json("campaigns", g.value())
    }

    pub fn campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CAMPAIGNS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(from_json("campaigns", v.value())?);
        }
        Ok(out)
    }

    pub fn counts(&self, id: CampaignId) -> Result<StateCounts, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(COUNTS)?;
        let get = |s: RunState| -> Result<u64, StoreError> {
            Ok(t.get((id.0, s.as_str()))?.map(|g| g.value()).unwrap_or(0))
        };
        Ok(StateCounts {
            pending: get(RunState::Pending)?,
            leased: get(RunState::Leased)?,
            done: get(RunState::Done)?,
            failed: get(RunState::Failed)?,
            cancelled: get(RunState::Cancelled)?,
        })
    }

    /// A campaign's accepted results per quality flag (flags no result has are left
    /// out), from the counts kept as results are accepted: O(flags), not O(runs).
    /// `None` for a campaign submitted before the counts were kept.
    pub fn flag_counts(&self, id: CampaignId) -> Result<Option<BTreeMap<String, u64>>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(COUNTS)?;
        if t.get((id.0, FLAGS_COUNTED_KEY))?.is_none() {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for item in t.range((id.0, FLAG_COUNT_PREFIX)..(id.0, "flag0"))? {
            let (k, n) = item?;
            if let Some(flag) = k.value().1.strip_prefix(FLAG_COUNT_PREFIX) {
                out.insert(flag.to_string(), n.value());
            }
        }
        Ok(Some(out))
    }

    pub fn duplicate_count(&self, id: CampaignId) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DUPLICATES)?;
        Ok(t.range((id.0, 0, 0)..=(id.0, u32::MAX, u64::MAX))?.count() as u64)
    }

    /// Runs of a campaign in execution order, with accepted results;
    /// [`StoreError::NoCampaign`] for a campaign that does not exist (a campaign
    /// without runs is an empty list).
    pub fn runs(&self, id: CampaignId) -> Result<Vec<(RunRecord, Option<RunResult>)>, StoreError> {
        let txn = self.db.begin_read()?;
        if txn.open_table(CAMPAIGNS)?.get(id.0)?.is_none() {
            return Err(StoreError::NoCampaign(id));
        }
        let runs = txn.open_table(RUNS)?;
        let results = txn.open_table(RESULTS)?;
        let configs = txn.open_table(CONFIGS)?;
        let mut out = Vec::new();
        for item in runs.range((id.0, 0)..=(id.0, u32::MAX))? {
            let (k, v) = item?;
            let mut rec: RunRecord = from_json("runs", v.value())?;
            fill_config(&configs, &mut rec)?;
            let res = match results.get(k.value())? {
                Some(g) => Some(from_json("results", g.value())?),
                None => None,
            };
            out.push((rec, res));
        }
        Ok(out)
    }

    /// Pending runs per engine and GPU count for a campaign (for the `blocked` report),
    /// from the per-pool counts: O(pools), not O(runs).
    pub fn pending_by_pool(
        &self,
        id: CampaignId,
    ) -> Result<Vec<(String, u32, RunnerNeed, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(COUNTS)?;
        let mut out = Vec::new();
        let (from, to) = (POOL_COUNT_PREFIX, "pending0");
        for item in t.range((id.0, from)..(id.0, to))? {
            let (k, n) = item?;
            let (_, key) = k.value();
            let Some(pool) = key.strip_prefix(POOL_COUNT_PREFIX) else {
                continue;
            };
            if n.value() > 0 {
                let (engine, tp, need) = parse_pool(pool);
                out.push((engine, tp, need, n.value()));
            }
        }
        Ok(out)
    }

    /// A campaign's runs per engine and state, in engine order. From the counts
    /// kept at submit, the per-pool pending counts and the leased and failed indexes:
    /// O(pools + leased + failed runs), not O(runs). A campaign submitted before the
    /// per-engine totals were kept, or a cancelled one, is counted run by run.
    pub fn engine_counts(
        &self,
        id: CampaignId,
    ) -> Result<BTreeMap<String, StateCounts>, StoreError> {
        let txn = self.db.begin_read()?;
        let campaign: CampaignRecord = {
            let t = txn.open_table(CAMPAIGNS)?;
            let g = t.get(id.0)?.ok_or(StoreError::NoCampaign(id))?;
            from_json("campaigns", g.value())?
        };
        let counts = txn.open_table(COUNTS)?;
        let runs = txn.open_table(RUNS)?;
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for item in counts.range((id.0, ENGINE_TOTAL_PREFIX)..(id.0, "total0"))? {
            let (k, n) = item?;
            if let Some(engine) = k.value().1.strip_prefix(ENGINE_TOTAL_PREFIX) {
                totals.insert(engine.to_string(), n.value());
            }
        }
        let mut out: BTreeMap<String, StateCounts> = BTreeMap::new();
        if totals.is_empty() || campaign.cancelled {
            for item in runs.range((id.0, 0)..=(id.0, u32::MAX))? {
                let (_, v) = item?;
                let rec: RunRecord = from_json("runs", v.value())?;
                let c = out.entry(rec.engine).or_default();
                match rec.lease.state {
                    RunState::Pending => c.pending += 1,
                    RunState::Leased => c.leased += 1,
                    RunState::Done => c.done += 1,
                    RunState::Failed => c.failed += 1,
                    RunState::Cancelled => c.cancelled += 1,
                }
            }
            return Ok(out);
        }
        for item in counts.range((id.0, POOL_COUNT_PREFIX)..(id.0, "pending0"))? {
            let (k, n) = item?;
            if let Some(pool) = k.value().1.strip_prefix(POOL_COUNT_PREFIX) {
                out.entry(parse_pool(pool).0).or_default().pending += n.value();
            }
        }
        let engine_of = |key: (u64, u32)| -> Result<String, StoreError> {
            let g = runs.get(key)?.ok_or_else(|| StoreError::Corrupt {
                table: "runs",
                detail: format!("run {}-{} is indexed but has no record", key.0, key.1),
            })?;
            Ok(from_json::<RunRecord>("runs", g.value())?.engine)
        };
        for item in txn
            .open_table(LEASED)?
            .range((id.0, 0)..=(id.0, u32::MAX))?
        {
            out.entry(engine_of(item?.0.value())?).or_default().leased += 1;
        }
        for item in txn
            .open_table(FAILED)?
            .range((id.0, 0)..=(id.0, u32::MAX))?
        {
            out.entry(engine_of(item?.0.value())?).or_default().failed += 1;
        }
        // Cancelled runs are only in cancelled campaigns (counted above), so the
        // rest of each engine's runs are done.
        for (engine, total) in totals {
            let c = out.entry(engine).or_default();
            c.done = total.saturating_sub(c.pending + c.leased + c.failed);
        }
        Ok(out)
    }

    /// The first `limit` failed runs of a campaign, in execution order.
    pub fn failed_runs(&self, id: CampaignId, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let failed = txn.open_table(FAILED)?;
        let runs = txn.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in failed.range((id.0, 0)..=(id.0, u32::MAX))?.take(limit) {
            let (k, _) = item?;
            let g = runs.get(k.value())?.ok_or_else(|| StoreError::Corrupt {
                table: "failed",
                detail: format!(
                    "run {}-{} is indexed as failed but has no record",
                    id.0,
                    k.value().1
                ),
            })?;
            out.push(from_json("runs", g.value())?);
        }
        Ok(out)
    }

    /// The study text a campaign was submitted with.
    pub fn study_text(&self, id: CampaignId) -> Result<String, StoreError> {
        let txn = self.db.begin_read()?;
        if let Some(g) = txn.open_table(STUDIES)?.get(id.0)? {
            return Ok(g.value().to_string());
        }
        // Schema 1 kept it in the campaign record.
        let t = txn.open_table(CAMPAIGNS)?;
        let g = t.get(id.0)?.ok_or(StoreError::NoCampaign(id))?;
        Ok(from_json::<CampaignRecord>("campaigns", g.value())?.study_text)
    }

    /// Grants the next pending run of one of the pending pools `pools` (engines, see
    /// [`pending_pool`]) to `worker`, if any.
    ///
    /// Order: lowest campaign id first, then the campaign's execution order, so the
    /// study's `experiment_order` (interleaving against drift) is what the fleet runs.
    pub fn lease_next(
        &self,
        worker: &WorkerId,
        slot: u32,
        pools: &[String],
        now_ms: u64,
        policy: &LeasePolicy,
    ) -> Result<Option<RunRecord>, StoreError> {
        self.lease_next_warm(worker, slot, pools, &[], now_ms, policy)
    }

    /// [`Store::lease_next`] for a slot with the models `warm` loaded: a later run
    /// of one of them may come first, within the bound of `lem_common::schedule`
    /// (each run it passes over counts it in [`RunRecord::passed_over`]).
    pub fn lease_next_warm(
        &self,
        worker: &WorkerId,
        slot: u32,
        pools: &[String],
        warm: &[(String, String)],
        now_ms: u64,
        policy: &LeasePolicy,
    ) -> Result<Option<RunRecord>, StoreError> {
        let op = WriteOp::Lease {
            worker: worker.clone(),
            slot,
            pools: pools.to_vec(),
            max_gpus: 0,
            warm: warm.to_vec(),
            campaign: None,
        };
        match self.write_one(&op, now_ms, policy)? {
            WriteOutcome::Leased(r) => Ok(r),
            _ => unreachable!("a lease op answers Leased"),
        }
    }

    pub fn renew(
        &self,
        key: RunKey,
        token: FencingToken,
        worker: &WorkerId,
        now_ms: u64,
        policy: &LeasePolicy,
    ) -> Result<RunRecord, StoreError> {
        let op = WriteOp::Renew {
            key,
            token,
            worker: worker.clone(),
        };
        match self.write_one(&op, now_ms, policy)? {
            WriteOutcome::Renewed(r) => Ok(r),
            _ => unreachable!("a renew op answers Renewed"),
        }
    }

    /// Records a result. Returns the outcome; an accepted result is stored with the
    /// run's transition to done in the same transaction.
    pub fn complete(
        &self,
        key: RunKey,
        token: FencingToken,
        worker: &WorkerId,
        result: &RunResult,
        now_ms: u64,
        now_text: &str,
    ) -> Result<CompleteOutcome, StoreError> {
        let op = WriteOp::Complete {
            key,
            token,
            worker: worker.clone(),
            result: Box::new(result.clone()),
            received_at: now_text.to_string(),
        };
        match self.write_one(&op, now_ms, &LeasePolicy::default())? {
            WriteOutcome::Completed(o) => Ok(o),
            _ => unreachable!("a complete op answers Completed"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn fail(
        &self,
        key: RunKey,
        token: FencingToken,
        worker: &WorkerId,
        class: FailureClass,
        message: &str,
        now_ms: u64,
        policy: &LeasePolicy,
    ) -> Result<RunRecord, StoreError> {
        let op = WriteOp::Fail {
            key,
            token,
            worker: worker.clone(),
            class,
            message: message.to_string(),
        };
        match self.write_one(&op, now_ms, policy)? {
            WriteOutcome::Failed(r) => Ok(r),
            _ => unreachable!("a fail op answers Failed"),
        }
    }

    fn write_one(
        &self,
        op: &WriteOp,
        now_ms: u64,
        policy: &LeasePolicy,
    ) -> Result<WriteOutcome, StoreError> {
        let txn = self.db.begin_write()?;
        let out = apply_op(&txn, op, now_ms, policy)?;
        txn.commit()?;
        Ok(out)
    }

    /// Applies `ops` in order in one write transaction and one commit (group
    /// commit, `crate::group_commit`): each op sees the ones before it, exactly as
    /// if each had its own transaction, and nothing is answered before the commit
    /// is durable. An op refused by the lease machine (or naming no run) changes
    /// nothing and does not disturb the others: every op does all its checks before
    /// its first write. Should an op fail in a way that might leave a partial
    /// write (a corrupt record, a storage error), the batch is abandoned and every
    /// op is applied again in its own transaction, so one bad op never decides the
    /// fate of another.
    pub fn apply_batch(
        &self,
        ops: &[WriteOp],
        now_ms: u64,
        policy: &LeasePolicy,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        if ops.len() == 1 {
            return vec![self.write_one(&ops[0], now_ms, policy)];
        }
        let txn = match self.db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                return ops
                    .iter()
                    .map(|_| Err(StoreError::Storage(msg.clone())))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            match apply_op(&txn, op, now_ms, policy) {
                Err(e) if !e.is_refusal() => {
                    tracing::warn!(error = %e, "a grouped write failed; applying the group one by one");
                    drop(txn);
                    return ops
                        .iter()
                        .map(|op| self.write_one(op, now_ms, policy))
                        .collect();
                }
                r => out.push(r),
            }
        }
        match txn.commit() {
            Ok(()) => out,
            Err(e) => {
                let msg = e.to_string();
                ops.iter()
                    .map(|_| Err(StoreError::Storage(msg.clone())))
                    .collect()
            }
        }
    }

    /// Returns expired leases to pending. Returns how many runs changed.
    pub fn expire_leases(&self, now_ms: u64, policy: &LeasePolicy) -> Result<usize, StoreError> {
        let expired: Vec<(u64, u32)> = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(LEASED)?;
            let mut v = Vec::new();
            for item in t.iter()? {
                let (k, d) = item?;
                if d.value() < now_ms {
                    v.push(k.value());
                }
            }
            v
        };
        if expired.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut n = 0;
        for (c, s) in expired {
            let key = RunKey {
                campaign: CampaignId(c),
                seq: s,
            };
            let old = get_run(&txn, key)?;
            if let Some(l) = lease::handle_expiry(&old.lease, now_ms, policy) {
                let mut new = old.clone();
                new.lease = l;
                put_run(&txn, Some(&old), &new)?;
                n += 1;
            }
        }
        txn.commit()?;
        Ok(n)
    }

    pub fn cancel(&self, id: CampaignId) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let mut campaign = get_campaign(&txn, id)?;
        campaign.cancelled = true;
        txn.open_table(CAMPAIGNS)?
            .insert(id.0, to_json(&campaign).as_slice())?;
        let n = apply_to_campaign(&txn, id, lease::handle_cancel)?;
        txn.commit()?;
        Ok(n)
    }

    /// Puts every failed run of a campaign back to pending, attempts kept
    /// (`lem_common::lease::handle_retry`), in one transaction. Cancelled runs are
    /// not retried, and a cancelled campaign is refused. Returns how many runs changed.
    pub fn retry(&self, id: CampaignId) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        if get_campaign(&txn, id)?.cancelled {
            return Err(StoreError::CampaignCancelled(id));
        }
        let n = apply_to_campaign(&txn, id, lease::handle_retry)?;
        txn.commit()?;
        Ok(n)
    }

    pub fn run_state(&self, key: RunKey) -> Result<RunRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let g = t
            .get((key.campaign.0, key.seq))?
            .ok_or(StoreError::NoRun(key))?;
        let mut rec: RunRecord = from_json("runs", g.value())?;
        fill_config(&txn.open_table(CONFIGS)?, &mut rec)?;
        Ok(rec)
    }

    pub fn upsert_worker(&self, rec: &WorkerRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(WORKERS)?;
            let runs_done = match t.get(rec.worker.0.as_str())? {
                Some(g) => from_json::<WorkerRecord>("workers", g.value())?.runs_done,
                None => 0,
            };
            let mut rec = rec.clone();
            rec.runs_done = runs_done;
            t.insert(rec.worker.0.as_str(), to_json(&rec).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records a worker's enrolment with the certificate `cert_sha256` (raw
    /// digest); returns the enrolment it replaced, whose certificate is forgotten.
    pub fn enrol(
        &self,
        worker: &WorkerId,
        cert_sha256: &[u8; 32],
        enrolled_at: &str,
    ) -> Result<Option<Enrolment>, StoreError> {
        let rec = Enrolment {
            worker: worker.clone(),
            cert_sha256: lem_common::token::hex(cert_sha256),
            enrolled_at: enrolled_at.to_string(),
        };
        let txn = self.db.begin_write()?;
        let replaced = {
            let mut enrolments = txn.open_table(ENROLMENTS)?;
            let mut certs = txn.open_table(CLIENT_CERTS)?;
            let old = enrolments
                .get(worker.0.as_str())?
                .map(|g| from_json::<Enrolment>("enrolments", g.value()))
                .transpose()?;
            if let Some(old) = &old {
                if let Some(digest) = lem_common::token::unhex(&old.cert_sha256) {
                    certs.remove(digest.as_slice())?;
                }
            }
            enrolments.insert(worker.0.as_str(), to_json(&rec).as_slice())?;
            certs.insert(cert_sha256.as_slice(), worker.0.as_str())?;
            old
        };
        txn.commit()?;
        Ok(replaced)
    }

    /// The worker whose current enrolment is the certificate with this SHA-256.
    pub fn enrolled_worker(&self, cert_sha256: &[u8; 32]) -> Result<Option<WorkerId>, StoreError> {
        let txn = self.db.begin_read()?;
        let certs = txn.open_table(CLIENT_CERTS)?;
        let found = certs
            .get(cert_sha256.as_slice())?
            .map(|g| WorkerId(g.value().to_string()));
        Ok(found)
    }

    pub fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(WORKERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(from_json("workers", item?.1.value())?);
        }
        Ok(out)
    }

    /// Number of runs currently leased, per worker.
    pub fn leases_by_worker(&self) -> Result<Vec<(WorkerId, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let leased = txn.open_table(LEASED)?;
        let runs = txn.open_table(RUNS)?;
        let mut map: std::collections::BTreeMap<WorkerId, u64> = Default::default();
        for item in leased.iter()? {
            let (k, _) = item?;
            if let Some(g) = runs.get(k.value())? {
                let rec: RunRecord = from_json("runs", g.value())?;
                if let Some(l) = rec.lease.lease {
                    *map.entry(l.worker).or_default() += 1;
                }
            }
        }
        Ok(map.into_iter().collect())
    }

    pub fn n_leased(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(LEASED)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn campaign() -> CampaignRecord {
        CampaignRecord {
            id: CampaignId(0),
            study_name: Some("t".into()),
            study_design_hash: "h".into(),
            source_path: "s.yaml".into(),
            study_text: String::new(),
            submitted_at: "now".into(),
            cancelled: false,
            n_runs: 0,
            n_configs: 1,
            skipped: vec![],
            warnings: vec![],
            experiment_timeout_s: 600.0,
            stdout_silence_timeout_s: 300.0,
            force_cold_start: false,
            runner_needs: Default::default(),
        }
    }

    pub(super) fn runs(engines: &[&str]) -> Vec<NewRun> {
        engines
            .iter()
            .enumerate()
            .map(|(i, e)| NewRun {
                config_hash: format!("h{i}"),
                cycle: 1,
                engine: e.to_string(),
                model: "m".into(),
                gap_before_s: 0.0,
                config_json: "{}".into(),
                tp_size: 1,
                need: RunnerNeed::Any,
            })
            .collect()
    }

    /// A campaign of `rs` created in a store at `dir`, and the store opened anew.
    fn created_then_reopened(dir: &Path, rs: Vec<NewRun>) -> (Store, CampaignId) {
        let id = Store::open(dir)
            .unwrap()
            .create_campaign(campaign(), rs)
            .unwrap();
        (Store::open(dir).unwrap(), id)
    }

    #[test]
    fn quality_flags_are_counted_once_per_accepted_result() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let (store, id) = created_then_reopened(dir.path(), runs(&["synthetic", "synthetic"]));
        assert_eq!(store.flag_counts(id).unwrap(), Some(BTreeMap::new()));
        let (a, eng) = (WorkerId("a".into()), vec!["synthetic".to_string()]);
        let result = RunResult::default();
        for now in [1, 2] {
            let r = store
                .lease_next(&a, 0, &eng, now, &policy)
                .unwrap()
                .unwrap();
            let token = r.lease.lease.as_ref().unwrap().token;
            store.complete(r.key, token, &a, &result, now, "x").unwrap();
            // The same result again changes nothing (AlreadyAccepted).
            store.complete(r.key, token, &a, &result, now, "x").unwrap();
        }
        let names = lem_common::quality::flag_names(&result);
        assert!(!names.is_empty(), "a default result has flags");
        let want: BTreeMap<String, u64> = names.iter().map(|n| (n.to_string(), 2)).collect();
        assert_eq!(store.flag_counts(id).unwrap(), Some(want));
        // A campaign from before the counts were kept says so rather than guessing.
        let txn = store.db.begin_write().unwrap();
        txn.open_table(COUNTS)
            .unwrap()
            .remove((id.0, FLAGS_COUNTED_KEY))
            .unwrap();
        txn.commit().unwrap();
        assert_eq!(store.flag_counts(id).unwrap(), None);
    }

    #[test]
    fn a_run_goes_only_to_a_slot_of_its_tp_size_and_its_pool_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let mut rs = runs(&["synthetic", "synthetic", "synthetic"]);
        rs[0].tp_size = 2;
        rs[2].tp_size = 2;
        let (store, id) = created_then_reopened(dir.path(), rs);
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![
                ("synthetic".to_string(), 1, RunnerNeed::Any, 1),
                ("synthetic".to_string(), 2, RunnerNeed::Any, 2)
            ]
        );
        let one = [pending_pool("synthetic", 1, &RunnerNeed::Any)];
        let two = [pending_pool("synthetic", 2, &RunnerNeed::Any)];
        let r = store.lease_next(&w, 0, &one, 0, &policy).unwrap().unwrap();
        assert_eq!((r.key.seq, r.tp_size), (1, 1));
        assert!(store.lease_next(&w, 0, &one, 0, &policy).unwrap().is_none());
        let r = store.lease_next(&w, 1, &two, 0, &policy).unwrap().unwrap();
        assert_eq!((r.key.seq, r.tp_size), (0, 2));
        // Expiry returns a TP-2 run to its own pool.
        assert_eq!(store.expire_leases(31_000, &policy).unwrap(), 2);
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![
                ("synthetic".to_string(), 1, RunnerNeed::Any, 1),
                ("synthetic".to_string(), 2, RunnerNeed::Any, 2)
            ]
        );
        assert_eq!(
            parse_pool("vllm/tp4"),
            ("vllm".to_string(), 4, RunnerNeed::Any)
        );
        assert_eq!(
            parse_pool("vllm/tp4|container=reg:5000/v/llm@sha256:00"),
            (
                "vllm".to_string(),
                4,
                RunnerNeed::Container {
                    image: Some("reg:5000/v/llm@sha256:00".into())
                }
            )
        );
    }

    #[test]
    fn a_run_with_a_runner_need_stays_in_its_own_pool_through_expiry_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let need = RunnerNeed::Container {
            image: Some("lem-fleet/harness:1".into()),
        };
        let mut rs = runs(&["synthetic", "synthetic"]);
        rs[1].need = need.clone();
        let (store, id) = created_then_reopened(dir.path(), rs);
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![
                ("synthetic".to_string(), 1, RunnerNeed::Any, 1),
                ("synthetic".to_string(), 1, need.clone(), 1)
            ]
        );
        let any = [pending_pool("synthetic", 1, &RunnerNeed::Any)];
        let container = [pending_pool("synthetic", 1, &need)];
        assert_eq!(container[0], "synthetic|container=lem-fleet/harness:1");
        let r = store.lease_next(&w, 0, &any, 0, &policy).unwrap().unwrap();
        assert_eq!(r.key.seq, 0);
        assert!(store.lease_next(&w, 0, &any, 0, &policy).unwrap().is_none());
        let r = store
            .lease_next(&w, 1, &container, 0, &policy)
            .unwrap()
            .unwrap();
        assert_eq!((r.key.seq, &r.need), (1, &need));
        assert_eq!(store.expire_leases(31_000, &policy).unwrap(), 2);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store
            .lease_next(&w, 0, &any, 40_000, &policy)
            .unwrap()
            .is_some());
        assert!(store
            .lease_next(&w, 0, &any, 40_000, &policy)
            .unwrap()
            .is_none());
        let r = store
            .lease_next(&w, 1, &container, 40_000, &policy)
            .unwrap()
            .unwrap();
        assert_eq!(r.key.seq, 1);
    }

    #[test]
    fn a_dynamic_pool_takes_runs_in_study_order_and_waits_for_a_large_one() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let store = Store::open(dir.path()).unwrap();
        // Study order: TP 1, 4, 1, 2, 8.
        let mut rs = runs(&["synthetic"; 5]);
        for (r, tp) in rs.iter_mut().zip([1, 4, 1, 2, 8]) {
            r.tp_size = tp;
        }
        let id = store.create_campaign(campaign(), rs).unwrap();
        // A 4-GPU pool asks for the pools of sizes 1 to 4.
        let pools: Vec<String> = (1..=4)
            .map(|k| pending_pool("synthetic", k, &RunnerNeed::Any))
            .collect();
        let lease = |free: u32| {
            let op = WriteOp::Lease {
                worker: w.clone(),
                slot: 0,
                pools: pools.clone(),
                max_gpus: free,
                warm: vec![],
                campaign: None,
            };
            match store.write_one(&op, 0, &policy).unwrap() {
                WriteOutcome::Leased(r) => Ok(r.map(|r| (r.key.seq, r.tp_size))),
                WriteOutcome::LeaseBlocked { needs_gpus } => Err(needs_gpus),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(lease(4), Ok(Some((0, 1))));
        // The TP-4 run is next: with 3 GPUs free nothing is granted, not even the
        // TP-1 run behind it.
        assert_eq!(lease(3), Err(4));
        assert_eq!(lease(3), Err(4));
        assert_eq!(lease(4), Ok(Some((1, 4))));
        assert_eq!(lease(1), Ok(Some((2, 1))));
        assert_eq!(lease(1), Err(2));
        assert_eq!(lease(2), Ok(Some((3, 2))));
        // The TP-8 run is not this pool's: nothing left for it.
        assert_eq!(lease(4), Ok(None));
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![("synthetic".to_string(), 8, RunnerNeed::Any, 1)]
        );
        // An exact-size lease (max_gpus 0) is unchanged by the blocking rule.
        let op = WriteOp::Lease {
            worker: w.clone(),
            slot: 0,
            pools: vec![pending_pool("synthetic", 8, &RunnerNeed::Any)],
            max_gpus: 0,
            warm: vec![],
            campaign: None,
        };
        assert!(matches!(
            store.write_one(&op, 0, &policy).unwrap(),
            WriteOutcome::Leased(Some(r)) if r.tp_size == 8
        ));
    }

    /// Runs of the synthetic engine of `models`, one GPU each, in this order.
    fn runs_of_models(models: &[&str]) -> Vec<NewRun> {
        let mut rs = runs(&vec!["synthetic"; models.len()]);
        for (r, m) in rs.iter_mut().zip(models) {
            r.model = m.to_string();
        }
        rs
    }

    #[test]
    fn a_warm_run_is_leased_first_and_a_cold_one_waits_at_most_the_bound() {
        use lem_common::schedule::MAX_PASSED_OVER;
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let pools = [pending_pool("synthetic", 1, &RunnerNeed::Any)];
        let warm_b = [("synthetic".to_string(), "b".to_string())];
        // Study order: one run of model a, then more runs of b than the bound.
        let n_b = MAX_PASSED_OVER as usize + 2;
        let models: Vec<&str> = std::iter::once("a")
            .chain(std::iter::repeat_n("b", n_b))
            .collect();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let id = store
                .create_campaign(campaign(), runs_of_models(&models))
                .unwrap();
            // A slot with b warm gets the b run behind the cold a run.
            let r = store
                .lease_next_warm(&w, 0, &pools, &warm_b, 0, &policy)
                .unwrap()
                .unwrap();
            assert_eq!((r.key.seq, r.model.as_str()), (1, "b"));
            let a = store
                .run_state(RunKey {
                    campaign: id,
                    seq: 0,
                })
                .unwrap();
            assert_eq!(a.passed_over, 1);
            id
        };
        // The count survives a restart: the a run is passed over exactly up to the
        // bound, then taken although b runs are still pending.
        let store = Store::open(dir.path()).unwrap();
        let mut order = vec![];
        while let Some(r) = store
            .lease_next_warm(&w, 0, &pools, &warm_b, 0, &policy)
            .unwrap()
        {
            order.push(r.key.seq);
        }
        let at_bound: Vec<u32> = (2..=MAX_PASSED_OVER).collect();
        let rest: Vec<u32> = (MAX_PASSED_OVER + 1..=n_b as u32).collect();
        assert_eq!(order, [at_bound, vec![0], rest].concat(), "{order:?}");
        let a = store
            .run_state(RunKey {
                campaign: id,
                seq: 0,
            })
            .unwrap();
        assert_eq!(a.passed_over, MAX_PASSED_OVER);
        // Runs of b were never passed over; every run was leased once.
        for seq in 1..=n_b as u32 {
            let r = store.run_state(RunKey { campaign: id, seq }).unwrap();
            assert_eq!((r.passed_over, r.lease.attempts), (0, 1), "{seq}");
        }
        assert_eq!(store.counts(id).unwrap().leased, 1 + n_b as u64);
    }

    #[test]
    fn a_dynamic_pool_takes_a_warm_run_only_if_the_first_still_fits() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let store = Store::open(dir.path()).unwrap();
        // Study order: a on 2 GPUs, then b on 1, twice.
        let mut rs = runs_of_models(&["a", "b", "b"]);
        rs[0].tp_size = 2;
        store.create_campaign(campaign(), rs).unwrap();
        let pools: Vec<String> = (1..=4)
            .map(|k| pending_pool("synthetic", k, &RunnerNeed::Any))
            .collect();
        let lease = |free: u32| {
            let op = WriteOp::Lease {
                worker: w.clone(),
                slot: 0,
                pools: pools.clone(),
                max_gpus: free,
                warm: vec![("synthetic".to_string(), "b".to_string())],
                campaign: None,
            };
            match store.write_one(&op, 0, &policy).unwrap() {
                WriteOutcome::Leased(r) => Ok(r.map(|r| r.key.seq)),
                WriteOutcome::LeaseBlocked { needs_gpus } => Err(needs_gpus),
                other => panic!("{other:?}"),
            }
        };
        // One GPU free: the 2-GPU run blocks the pool, warm or not.
        assert_eq!(lease(1), Err(2));
        // Three: the warm b run, and the a run still fits in the other two.
        assert_eq!(lease(3), Ok(Some(1)));
        // Two: the b run would leave the a run too few; the a run.
        assert_eq!(lease(2), Ok(Some(0)));
        assert_eq!(lease(1), Ok(Some(2)));
        assert_eq!(lease(4), Ok(None));
    }

    #[test]
    fn lease_follows_order_and_capabilities_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w1".into());
        let id;
        {
            let store = Store::open(dir.path()).unwrap();
            id = store
                .create_campaign(campaign(), runs(&["vllm", "synthetic", "synthetic"]))
                .unwrap();
            let counts = store.counts(id).unwrap();
            assert_eq!(counts.pending, 3);
            let only_synth = vec!["synthetic".to_string()];
            let r = store
                .lease_next(&w, 0, &only_synth, 1_000, &policy)
                .unwrap()
                .unwrap();
            assert_eq!(r.key.seq, 1, "vllm run skipped: worker cannot run it");
            assert_eq!(store.counts(id).unwrap().leased, 1);
        }
        // Reopen: the lease is still there, counts unchanged.
        let store = Store::open(dir.path()).unwrap();
        let c = store.counts(id).unwrap();
        assert_eq!((c.pending, c.leased), (2, 1));
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![
                ("synthetic".to_string(), 1, RunnerNeed::Any, 1),
                ("vllm".to_string(), 1, RunnerNeed::Any, 1)
            ]
        );
        // Expiry returns it to pending.
        assert_eq!(store.expire_leases(1_000 + 31_000, &policy).unwrap(), 1);
        assert_eq!(store.counts(id).unwrap().pending, 3);
    }

    #[test]
    fn retry_puts_failed_runs_back_to_pending_with_attempts_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let policy = LeasePolicy {
            ttl_ms: 1_000,
            max_attempts: 1,
        };
        let id = store
            .create_campaign(campaign(), runs(&["synthetic", "synthetic", "synthetic"]))
            .unwrap();
        let a = WorkerId("a".into());
        let eng = vec!["synthetic".to_string()];
        // Run 0 fails (configuration), run 1 expires past max_attempts, run 2 is done.
        let r0 = store.lease_next(&a, 0, &eng, 0, &policy).unwrap().unwrap();
        let t0 = r0.lease.lease.as_ref().unwrap().token;
        store
            .fail(
                r0.key,
                t0,
                &a,
                FailureClass::Configuration,
                "oom",
                1,
                &policy,
            )
            .unwrap();
        let r1 = store.lease_next(&a, 0, &eng, 2, &policy).unwrap().unwrap();
        let r2 = store.lease_next(&a, 0, &eng, 3, &policy).unwrap().unwrap();
        let t2 = r2.lease.lease.as_ref().unwrap().token;
        store
            .complete(r2.key, t2, &a, &RunResult::default(), 4, "x")
            .unwrap();
        assert_eq!(store.expire_leases(5_000, &policy).unwrap(), 1);
        let c = store.counts(id).unwrap();
        assert_eq!((c.failed, c.done, c.pending), (2, 1, 0));
        let failed: Vec<u32> = store
            .failed_runs(id, 5)
            .unwrap()
            .iter()
            .map(|r| r.key.seq)
            .collect();
        assert_eq!(failed, [0, 1]);

        assert_eq!(store.retry(id).unwrap(), 2);
        assert!(store.failed_runs(id, 5).unwrap().is_empty());
        let c = store.counts(id).unwrap();
        assert_eq!((c.failed, c.done, c.pending, c.total()), (0, 1, 2, 3));
        for key in [r0.key, r1.key] {
            let rec = store.run_state(key).unwrap();
            assert_eq!(rec.lease.state, RunState::Pending);
            assert_eq!(rec.lease.attempts, 1, "attempts kept");
        }
        // Leasable again, in order; nothing left to retry.
        let again = store.lease_next(&a, 0, &eng, 6, &policy).unwrap().unwrap();
        assert_eq!((again.key, again.lease.attempts), (r0.key, 2));
        assert_eq!(store.retry(id).unwrap(), 0);
        // A cancelled campaign is refused; its cancelled runs stay cancelled.
        store.cancel(id).unwrap();
        assert!(matches!(
            store.retry(id),
            Err(StoreError::CampaignCancelled(_))
        ));
        assert_eq!(store.counts(id).unwrap().cancelled, 2);
        assert!(matches!(
            store.retry(CampaignId(99)),
            Err(StoreError::NoCampaign(_))
        ));
    }

    #[test]
    fn a_batch_applies_its_ops_in_order_and_a_refused_op_disturbs_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .create_campaign(campaign(), runs(&["synthetic", "synthetic", "synthetic"]))
            .unwrap();
        let (a, b) = (WorkerId("a".into()), WorkerId("b".into()));
        let pools = vec!["synthetic".to_string()];
        let lease = |w: &WorkerId| WriteOp::Lease {
            worker: w.clone(),
            slot: 0,
            pools: pools.clone(),
            max_gpus: 0,
            warm: vec![],
            campaign: None,
        };
        // Two leases in one batch get two different runs, in order.
        let out = store.apply_batch(&[lease(&a), lease(&b)], 1_000, &policy);
        let granted: Vec<RunRecord> = out
            .into_iter()
            .map(|r| match r.unwrap() {
                WriteOutcome::Leased(Some(rec)) => rec,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!((granted[0].key.seq, granted[1].key.seq), (0, 1));
        let token = |r: &RunRecord| r.lease.lease.as_ref().unwrap().token;
        assert_ne!(token(&granted[0]), token(&granted[1]));
        // In one batch: a's complete, b's renew under a's token (refused by the lease
        // machine), a renew of a run that does not exist, b's complete, a third lease.
        let complete = |r: &RunRecord, w: &WorkerId| WriteOp::Complete {
            key: r.key,
            token: token(r),
            worker: w.clone(),
            result: Box::new(RunResult::default()),
            received_at: "t".into(),
        };
        let ops = [
            complete(&granted[0], &a),
            WriteOp::Renew {
                key: granted[1].key,
                token: token(&granted[0]),
                worker: b.clone(),
            },
            WriteOp::Renew {
                key: RunKey {
                    campaign: id,
                    seq: 99,
                },
                token: token(&granted[0]),
                worker: a.clone(),
            },
            complete(&granted[1], &b),
            lease(&a),
        ];
        let out = store.apply_batch(&ops, 2_000, &policy);
        assert!(matches!(
            out[0],
            Ok(WriteOutcome::Completed(CompleteOutcome::Accepted(_)))
        ));
        assert!(matches!(out[1], Err(StoreError::Lease(_))), "{:?}", out[1]);
        assert!(matches!(out[2], Err(StoreError::NoRun(_))), "{:?}", out[2]);
        assert!(matches!(
            out[3],
            Ok(WriteOutcome::Completed(CompleteOutcome::Accepted(_)))
        ));
        let third = match &out[4] {
            Ok(WriteOutcome::Leased(Some(r))) => r.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(third.key.seq, 2);
        // Durable, and the indexes agree with the records after a reopen.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let c = store.counts(id).unwrap();
        assert_eq!((c.done, c.leased, c.pending), (2, 1, 0));
        assert_eq!(store.n_leased().unwrap(), 1);
        assert!(store
            .lease_next(&b, 0, &pools, 3_000, &policy)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_corrupt_record_in_a_batch_fails_only_its_own_op() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .create_campaign(campaign(), runs(&["synthetic", "synthetic"]))
            .unwrap();
        let a = WorkerId("a".into());
        let pools = vec!["synthetic".to_string()];
        let r0 = store
            .lease_next(&a, 0, &pools, 0, &policy)
            .unwrap()
            .unwrap();
        let t0 = r0.lease.lease.as_ref().unwrap().token;
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(RUNS)
                .unwrap()
                .insert((id.0, 1), b"{not json".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let ops = [
            WriteOp::Renew {
                key: RunKey {
                    campaign: id,
                    seq: 1,
                },
                token: t0,
                worker: a.clone(),
            },
            WriteOp::Complete {
                key: r0.key,
                token: t0,
                worker: a.clone(),
                result: Box::new(RunResult::default()),
                received_at: "t".into(),
            },
        ];
        let out = store.apply_batch(&ops, 1_000, &policy);
        assert!(
            matches!(out[0], Err(StoreError::Corrupt { .. })),
            "{:?}",
            out[0]
        );
        assert!(matches!(
            out[1],
            Ok(WriteOutcome::Completed(CompleteOutcome::Accepted(_)))
        ));
        assert_eq!(store.counts(id).unwrap().done, 1);
    }

    #[test]
    fn a_schema_1_manifest_with_configs_in_its_run_records_is_read_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            let id = store
                .create_campaign(campaign(), runs(&["synthetic", "synthetic"]))
                .unwrap();
            // What lem-coord wrote before the configs table: the config inline, no
            // configs rows, schema 1.
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(RUNS).unwrap();
                for seq in 0..2u32 {
                    let mut rec: RunRecord =
                        from_json("runs", t.get((id.0, seq)).unwrap().unwrap().value()).unwrap();
                    rec.config_json = format!(r#"{{"seq": {seq}}}"#);
                    t.insert((id.0, seq), to_json(&rec).as_slice()).unwrap();
                }
                let mut c = txn.open_table(CONFIGS).unwrap();
                c.retain(|_, _| false).unwrap();
                let mut counts = txn.open_table(COUNTS).unwrap();
                counts
                    .retain(|(_, k), _| !k.starts_with(POOL_COUNT_PREFIX))
                    .unwrap();
                txn.open_table(STUDIES).unwrap().remove(id.0).unwrap();
                let mut campaigns = txn.open_table(CAMPAIGNS).unwrap();
                let mut rec: CampaignRecord =
                    from_json("campaigns", campaigns.get(id.0).unwrap().unwrap().value()).unwrap();
                rec.study_text = "study_name: old\n".into();
                campaigns.insert(id.0, to_json(&rec).as_slice()).unwrap();
                txn.open_table(META)
                    .unwrap()
                    .insert("schema_version", 1)
                    .unwrap();
            }
            txn.commit().unwrap();
            id
        };
        let store = Store::open(dir.path()).unwrap();
        {
            let txn = store.db.begin_read().unwrap();
            let v = txn
                .open_table(META)
                .unwrap()
                .get("schema_version")
                .unwrap()
                .unwrap()
                .value();
            assert_eq!(v, SCHEMA_VERSION);
        }
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![("synthetic".to_string(), 1, RunnerNeed::Any, 2)],
            "pool counts rebuilt"
        );
        assert_eq!(store.study_text(id).unwrap(), "study_name: old\n");
        let w = WorkerId("w".into());
        let r = store
            .lease_next(&w, 0, &["synthetic".to_string()], 0, &policy)
            .unwrap()
            .unwrap();
        assert_eq!(r.config_json, r#"{"seq": 0}"#);
        let all = store.runs(id).unwrap();
        assert_eq!(all[1].0.config_json, r#"{"seq": 1}"#);
        assert_eq!(
            store.pending_by_pool(id).unwrap(),
            vec![("synthetic".to_string(), 1, RunnerNeed::Any, 1)]
        );
        // A newer schema is refused, naming both versions.
        drop(store);
        {
            let db = open_database(&dir.path().join(MANIFEST_FILE), false).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[test]
    fn configs_are_stored_once_and_every_read_fills_them_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rs = runs(&["synthetic", "synthetic", "synthetic"]);
        for (i, r) in rs.iter_mut().enumerate() {
            r.config_hash = if i == 1 { "b".into() } else { "a".into() };
            r.config_json = format!(r#"{{"config": "{}"}}"#, r.config_hash);
        }
        let id = store.create_campaign(campaign(), rs).unwrap();
        let txn = store.db.begin_read().unwrap();
        assert_eq!(txn.open_table(CONFIGS).unwrap().len().unwrap(), 2);
        let raw = txn.open_table(RUNS).unwrap();
        let stored = raw.get((id.0, 2)).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(stored.value()).contains("config_json"));
        let all = store.runs(id).unwrap();
        let got: Vec<&str> = all.iter().map(|(r, _)| r.config_json.as_str()).collect();
        assert_eq!(
            got,
            [
                r#"{"config": "a"}"#,
                r#"{"config": "b"}"#,
                r#"{"config": "a"}"#
            ]
        );
    }

    #[test]
    fn second_open_of_same_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(
            err.to_string().contains("already has the manifest"),
            "{err}"
        );
    }

    /// A manifest written before the nested result model holds flat results
    /// (protocol 4): they read back into the nested `RunResult`, figures in place.
    #[test]
    fn a_flat_result_in_an_old_manifest_reads_back_nested() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let policy = LeasePolicy::default();
        let id = store
            .create_campaign(campaign(), runs(&["synthetic"]))
            .unwrap();
        let w = WorkerId("w".into());
        let eng = vec!["synthetic".to_string()];
        let r = store.lease_next(&w, 0, &eng, 0, &policy).unwrap().unwrap();
        let token = r.lease.lease.as_ref().unwrap().token;
        store
            .complete(r.key, token, &w, &RunResult::default(), 1, "t")
            .unwrap();
        let flat = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../common/tests/fixtures/run-result-flat-v4-full.json"),
        )
        .unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(RESULTS)
            .unwrap()
            .insert((id.0, 0), flat.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let runs = store.runs(id).unwrap();
        let res = runs[0].1.as_ref().expect("the flat result reads");
        assert_eq!(res.energy.total_j, 2413.7);
        assert_eq!(res.baselines.device.as_ref().unwrap().mean_power_w, 61.5);
        assert_eq!(res.thermal.wait_reason, "timeout");
        assert_eq!(res.throughput.output_tokens, 811);
        assert_eq!(res.energy.prefill.as_ref().unwrap().passes, 4);
        let want: RunResult = serde_json::from_slice(&flat).unwrap();
        assert_eq!(res, &want);
    }

    #[test]
    fn complete_counts_once_and_keeps_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let policy = LeasePolicy::default();
        let id = store
            .create_campaign(campaign(), runs(&["synthetic"]))
            .unwrap();
        let a = WorkerId("a".into());
        let b = WorkerId("b".into());
        let eng = vec!["synthetic".to_string()];
        let r = store.lease_next(&a, 0, &eng, 0, &policy).unwrap().unwrap();
        let t1 = r.lease.lease.as_ref().unwrap().token;
        store.expire_leases(40_000, &policy).unwrap();
        let r2 = store
            .lease_next(&b, 0, &eng, 40_001, &policy)
            .unwrap()
            .unwrap();
        let t2 = r2.lease.lease.as_ref().unwrap().token;
        let res = RunResult::default();
        assert!(matches!(
            store.complete(r.key, t1, &a, &res, 40_002, "x").unwrap(),
            CompleteOutcome::Duplicate { .. }
        ));
        assert!(matches!(
            store.complete(r.key, t2, &b, &res, 40_003, "x").unwrap(),
            CompleteOutcome::Accepted(_)
        ));
        assert!(matches!(
            store.complete(r.key, t2, &b, &res, 40_004, "x").unwrap(),
            CompleteOutcome::AlreadyAccepted
        ));
        // Another worker replaying b's token is refused and recorded, not counted.
        let mallory = WorkerId("mallory".into());
        assert!(matches!(
            store
                .complete(r.key, t2, &mallory, &res, 40_005, "x")
                .unwrap(),
            CompleteOutcome::NotHolder { .. }
        ));
        let c = store.counts(id).unwrap();
        assert_eq!((c.done, c.total()), (1, 1));
        assert_eq!(store.duplicate_count(id).unwrap(), 2);
        assert_eq!(
            store
                .runs(id)
                .unwrap()
                .iter()
                .filter(|r| r.1.is_some())
                .count(),
            1
        );
    }

    #[test]
    fn a_new_enrolment_replaces_the_old_certificate_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let w = WorkerId("gpu-1".into());
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.enrol(&w, &[1; 32], "t1").unwrap(), None);
            assert_eq!(store.enrolled_worker(&[1; 32]).unwrap(), Some(w.clone()));
            let replaced = store.enrol(&w, &[2; 32], "t2").unwrap().unwrap();
            assert_eq!(replaced.cert_sha256, "01".repeat(32));
            assert_eq!(
                store.enrolled_worker(&[1; 32]).unwrap(),
                None,
                "old cert forgotten"
            );
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.enrolled_worker(&[2; 32]).unwrap(), Some(w));
        assert_eq!(store.enrolled_worker(&[3; 32]).unwrap(), None);
    }

    #[test]
    fn runs_of_a_campaign_that_does_not_exist_are_an_error_not_an_empty_list() {
        // `lem-coord results 99` once wrote "0 run(s)" and exited 0 for a campaign
        // that did not exist: the store must tell the two apart.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.runs(CampaignId(99)),
            Err(StoreError::NoCampaign(CampaignId(99)))
        ));
        let id = store.create_campaign(campaign(), vec![]).unwrap();
        assert!(
            store.runs(id).unwrap().is_empty(),
            "an empty campaign exists"
        );
        assert_eq!(
            StoreError::NoCampaign(CampaignId(99)).to_string(),
            "campaign 99 does not exist"
        );
    }

    #[test]
    fn engine_counts_follow_every_transition_without_reading_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let (store, id) = created_then_reopened(dir.path(), runs(&["a", "b", "a", "b", "a", "a"]));
        let counts = |store: &Store| -> Vec<(String, [u64; 5])> {
            store
                .engine_counts(id)
                .unwrap()
                .into_iter()
                .map(|(e, c)| (e, [c.pending, c.leased, c.done, c.failed, c.cancelled]))
                .collect()
        };
        assert_eq!(
            counts(&store),
            [("a".into(), [4, 0, 0, 0, 0]), ("b".into(), [2, 0, 0, 0, 0])]
        );
        let pools_a = [pending_pool("a", 1, &RunnerNeed::Any)];
        let pools_b = [pending_pool("b", 1, &RunnerNeed::Any)];
        // a: one done, one failed for good, one leased; b: one leased.
        let r = store
            .lease_next(&w, 0, &pools_a, 0, &policy)
            .unwrap()
            .unwrap();
        let token = r.lease.lease.as_ref().unwrap().token;
        store
            .complete(r.key, token, &w, &RunResult::default(), 1, "t")
            .unwrap();
        let r = store
            .lease_next(&w, 0, &pools_a, 0, &policy)
            .unwrap()
            .unwrap();
        let token = r.lease.lease.as_ref().unwrap().token;
        store
            .fail(
                r.key,
                token,
                &w,
                FailureClass::Configuration,
                "bad",
                2,
                &policy,
            )
            .unwrap();
        store
            .lease_next(&w, 0, &pools_a, 3, &policy)
            .unwrap()
            .unwrap();
        store
            .lease_next(&w, 1, &pools_b, 3, &policy)
            .unwrap()
            .unwrap();
        let expected = [("a".into(), [1, 1, 1, 1, 0]), ("b".into(), [1, 1, 0, 0, 0])];
        assert_eq!(counts(&store), expected);
        // The same counted run by run (a campaign from before the per-engine totals).
        let scanned = {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(COUNTS)
                .unwrap()
                .retain(|(_, k), _| !k.starts_with(ENGINE_TOTAL_PREFIX))
                .unwrap();
            txn.commit().unwrap();
            counts(&store)
        };
        assert_eq!(scanned, expected);
        // Cancelled: what was not finished is cancelled, per engine.
        store.cancel(id).unwrap();
        assert_eq!(
            counts(&store),
            [("a".into(), [0, 0, 1, 1, 2]), ("b".into(), [0, 0, 0, 0, 2])]
        );
        assert!(matches!(
            store.engine_counts(CampaignId(99)),
            Err(StoreError::NoCampaign(_))
        ));
    }

    #[test]
    fn a_lease_for_one_campaign_takes_none_of_another() {
        // `lem-coord run` leases only its own campaign: an older unfinished campaign
        // in its data dir (lower id, so first in lease order) is not run with it.
        let dir = tempfile::tempdir().unwrap();
        let policy = LeasePolicy::default();
        let w = WorkerId("w".into());
        let store = Store::open(dir.path()).unwrap();
        let older = store
            .create_campaign(campaign(), runs(&["synthetic", "synthetic"]))
            .unwrap();
        let mine = store
            .create_campaign(campaign(), runs(&["synthetic"]))
            .unwrap();
        let lease = |campaign: Option<CampaignId>| WriteOp::Lease {
            worker: w.clone(),
            slot: 0,
            pools: vec![pending_pool("synthetic", 1, &RunnerNeed::Any)],
            max_gpus: 0,
            warm: vec![],
            campaign,
        };
        let leased = |op: &WriteOp| match store.write_one(op, 0, &policy).unwrap() {
            WriteOutcome::Leased(r) => r.map(|r| r.key.campaign),
            _ => unreachable!(),
        };
        assert_eq!(leased(&lease(Some(mine))), Some(mine));
        assert_eq!(
            leased(&lease(Some(mine))),
            None,
            "only the older one is left"
        );
        assert_eq!(leased(&lease(None)), Some(older));
    }
}
