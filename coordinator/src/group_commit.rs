//! Group commit: one writer thread applies the workers' lease transitions in batches,
//! one redb transaction and one durable commit (one fsync) per batch.
//!
//! A commit's cost is dominated by its fsync, which is the same for one op or for a
//! hundred, so committing every `lease`, `renew`, `complete` and `fail` on its own
//! caps the fleet at a few hundred to a thousand transitions a second on an ordinary
//! disk. Here every RPC hands its op to the writer and waits; the writer takes
//! whatever has queued while the previous commit was in flight, applies it in
//! arrival order in one transaction ([`Store::apply_batch`]: each op sees the ones
//! before it, a refused op changes nothing) and answers every op only once that
//! transaction is durable. Under light load a batch is one op, so latency is that of
//! a single commit; under heavy load batches grow and throughput follows.
//!
//! Nothing is acknowledged before it is on disk, so a crash loses only
//! unacknowledged ops, which the workers retry (their journal keeps every result
//! until it is acknowledged).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lem_common::lease::LeasePolicy;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::store::{Store, StoreError, WriteOp, WriteOutcome};

/// Most ops in one transaction: bounds a batch's latency and its memory.
pub const DEFAULT_MAX_BATCH: usize = 1024;

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Counters of the writer: totals for `lem-coord bench`, and each batch's size and
/// commit time for the coordinator's metrics (`crate::metrics`).
#[derive(Debug)]
pub struct CommitStats {
    pub batches: AtomicU64,
    pub ops: AtomicU64,
    /// Ops per batch.
    pub batch_ops: Histogram,
    /// Seconds from a batch's first write to its durable commit.
    pub commit_seconds: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            batches: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.5, 12)),
        }
    }
}

/// The handle RPCs use to reach the writer thread. Dropping it lets the thread
/// finish the ops already queued and stop; the drop waits for that, so the store
/// is closed cleanly when the coordinator exits.
pub struct GroupCommit {
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// Starts the writer thread over `store`; `max_batch` 1 commits every op on its
    /// own (the comparison `lem-coord bench leases --max-batch 1` prints).
    pub fn start(
        store: Arc<Store>,
        policy: LeasePolicy,
        max_batch: usize,
    ) -> Result<GroupCommit, StoreError> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("lem-commit".into())
                .spawn(move || writer(store, policy, max_batch.max(1), rx, stats))
                .map_err(|e| {
                    StoreError::Storage(format!("cannot start the manifest writer thread: {e}"))
                })?
        };
        Ok(GroupCommit {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    /// Applies `op` in the next batch; answers once it is durable.
    pub async fn apply(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sent = match self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(tx) => tx.send(Job { op, reply }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Storage(
                "the coordinator is stopping: its manifest writer has stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Storage(
                "the manifest writer stopped before answering".into(),
            ))
        })
    }

    /// Stops taking ops, lets the writer finish the queued ones, and waits for it.
    pub fn stop(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer(
    store: Arc<Store>,
    policy: LeasePolicy,
    max_batch: usize,
    rx: Receiver<Job>,
    stats: Arc<CommitStats>,
) {
    let mut jobs: Vec<Job> = Vec::new();
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) =
            jobs.drain(..).map(|j| (j.op, j.reply)).unzip();
        let started = std::time::Instant::now();
        let results = store.apply_batch(&ops, now_ms(), &policy);
        stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        stats.batch_ops.observe(ops.len() as f64);
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that went away (its connection closed) needs no answer; its
            // op is applied all the same, as it would be without grouping.
            let _ = reply.send(result);
        }
    }
}
