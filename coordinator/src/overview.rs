//! What the coordinator shows of itself over HTTP: every campaign's progress and
//! quality-flag counts, every worker's presence and live power, and the failures
//! reported lately. It is the JSON of `/api/status` (the status page's data) and the
//! source of the gauges of `/metrics` (`crate::metrics`), so the two never disagree.
//!
//! One [`overview`] costs what `lem-coord status` and `workers` cost, per campaign
//! and per worker: the manifest's counters (`Store::counts`, `flag_counts`,
//! `pending_by_pool`, the failed and leased indexes), never a scan of a campaign's
//! runs, so a million-run manifest is scraped as cheaply as a small one.

use std::collections::BTreeMap;

use lem_common::rpc::{CampaignStatus, GpuReading};
use lem_common::types::format_utc_ms;
use serde::Serialize;

use crate::clock::now_ms;
use crate::service::{CoordService, Shared};
use crate::store::StoreError;

/// Failures kept for the status page (memory only; `status` keeps each failed run's
/// last failure in the manifest).
pub const RECENT_FAILURES: usize = 50;

#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    pub coordinator_version: String,
    pub generated_at: String,
    /// Bumped by every change this shows (a lease, a renewal, a result, a failure, a
    /// submit, a worker's arrival or departure); `/api/status?since=N` waits until
    /// it is past N.
    pub changes: u64,
    pub lease_ttl_s: f64,
    /// Oldest first.
    pub campaigns: Vec<CampaignOverview>,
    /// Connected first, then by name.
    pub workers: Vec<WorkerOverview>,
    /// Newest first.
    pub recent_failures: Vec<RecentFailure>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CampaignOverview {
    /// What `lem-coord status ID --json` shows, without the per-engine counts.
    #[serde(flatten)]
    pub status: CampaignStatus,
    /// Accepted results per quality flag (flags no result has are left out); `null`
    /// for a campaign submitted before the counts were kept.
    pub flags: Option<BTreeMap<String, u64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerOverview {
    pub worker: String,
    pub host: String,
    pub connected: bool,
    pub last_seen: String,
    pub last_seen_s_ago: f64,
    pub leases_held: u64,
    pub runs_done: u64,
    pub slots: u32,
    /// `process`, or the docker runtime and its image.
    pub runtime: String,
    /// Its GPUs as it last reported them with a `lease` or `renew` call (empty from
    /// workers that do not report them).
    pub gpus: Vec<GpuReading>,
    /// Seconds since that report.
    pub telemetry_age_s: Option<f64>,
    /// The sum of `gpus`' power.
    pub power_w: Option<f64>,
}

/// A failure a worker reported (or a result refused) since the coordinator started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentFailure {
    pub at: String,
    pub at_ms: u64,
    /// The run (`CAMPAIGN-SEQ`).
    pub run: String,
    pub worker: String,
    /// `failed` (for good), `retrying` (back to pending for another attempt) or
    /// `result_refused` (a result for a lease that was not the worker's).
    pub outcome: String,
    /// The failure class (`infrastructure`, `configuration`), or `lease` for a
    /// refused result.
    pub class: String,
    pub message: String,
}

/// Reads the overview from the manifest and the coordinator's memory (blocking: call
/// it on the blocking pool).
pub fn overview(shared: &Shared) -> Result<Overview, StoreError> {
    let now = now_ms();
    let changes = shared.changes();
    let mut campaigns = Vec::new();
    for c in shared.store.campaigns()? {
        campaigns.push(CampaignOverview {
            status: CoordService::campaign_status(shared, c.id, false)?,
            flags: shared.store.flag_counts(c.id)?,
        });
    }
    let leases: BTreeMap<_, u64> = shared.store.leases_by_worker()?.into_iter().collect();
    let mut workers: Vec<WorkerOverview> = shared
        .store
        .workers()?
        .into_iter()
        .map(|w| {
            let last_seen = shared.last_seen_ms(&w);
            let (gpus, age) = match shared.telemetry_of(&w.worker) {
                Some((gpus, at)) => (gpus, Some(now.saturating_sub(at) as f64 / 1000.0)),
                None => (vec![], None),
            };
            let power_w = (!gpus.is_empty()).then(|| gpus.iter().map(|g| g.power_w).sum());
            WorkerOverview {
                connected: shared.connected(&w, now),
                last_seen: format_utc_ms(last_seen),
                last_seen_s_ago: now.saturating_sub(last_seen) as f64 / 1000.0,
                leases_held: leases.get(&w.worker).copied().unwrap_or(0),
                runs_done: w.runs_done,
                slots: w.slots.len() as u32,
                runtime: w.runtime.describe(),
                host: w.host,
                worker: w.worker.0,
                gpus,
                telemetry_age_s: age,
                power_w,
            }
        })
        .collect();
    workers.sort_by(|a, b| {
        b.connected
            .cmp(&a.connected)
            .then_with(|| a.worker.cmp(&b.worker))
    });
    Ok(Overview {
        coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
        generated_at: format_utc_ms(now),
        changes,
        lease_ttl_s: shared.policy.ttl_ms as f64 / 1000.0,
        campaigns,
        workers,
        recent_failures: shared.recent_failures(),
    })
}
