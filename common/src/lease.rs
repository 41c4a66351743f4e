//! The run lease state machine: what may happen to one run, as a pure function of
//! its record, an event and the time.
//!
//! A run is `pending` until a worker leases it, `leased` while a worker holds a lease
//! (renewed by heartbeats), and ends `done`, `failed` or `cancelled`. Each lease
//! carries a [`FencingToken`] drawn from a monotonic counter and a TTL: a lease that
//! is not renewed before it expires returns the run to `pending`, and anything a
//! worker later says under that token is stale. A result is accepted at most once per
//! run; a result under a stale token is kept as a duplicate record and never counted.
//!
//! The coordinator drives this machine: it opens one store transaction, reads the
//! record, calls one `handle_*` function with `now_ms` (wall-clock milliseconds since
//! the Unix epoch, so that leases survive a coordinator restart), writes the record
//! it returns and commits. Nothing here reads a clock or touches storage, so every
//! transition is unit-tested on a simulated clock.
//!
//! Families of functions, in the order a run meets them:
//! * [`handle_grant`]: a worker was chosen for a pending run;
//! * [`handle_renew`]: a heartbeat from the lease holder;
//! * [`handle_complete`]: a result arrived; [`CompleteOutcome`] says whether it counts;
//! * [`handle_fail`]: the worker reports a failure with its class;
//! * [`handle_expiry`]: the sweeper found the lease past its deadline;
//! * [`handle_cancel`]: the operator cancelled the campaign;
//! * [`handle_retry`]: the operator puts a failed run back to pending.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{FailureClass, FencingToken, WorkerId};

/// The state of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Pending,
    Leased,
    Done,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Done | RunState::Failed | RunState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Leased => "leased",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// The lease a run is under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub token: FencingToken,
    pub worker: WorkerId,
    pub slot: u32,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
}

/// The last failure reported for a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub class: FailureClass,
    pub message: String,
    pub worker: Option<WorkerId>,
    pub at_ms: u64,
}

/// The lease-relevant part of a run's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub state: RunState,
    /// Leases granted so far (each grant is one attempt).
    pub attempts: u32,
    pub lease: Option<Lease>,
    /// The token of the most recent lease, kept after it ends so a late result from
    /// that holder can still be recognised.
    pub last_token: Option<FencingToken>,
    /// The worker the most recent lease was granted to, kept with `last_token`: a
    /// late result counts only from that worker. (Absent in manifests written before
    /// it existed; such a late result is not counted.)
    #[serde(default)]
    pub last_holder: Option<WorkerId>,
    pub last_failure: Option<FailureRecord>,
    /// Worker whose result was accepted.
    pub done_by: Option<WorkerId>,
}

impl LeaseRecord {
    pub fn new_pending() -> Self {
        LeaseRecord {
            state: RunState::Pending,
            attempts: 0,
            lease: None,
            last_token: None,
            last_holder: None,
            last_failure: None,
            done_by: None,
        }
    }
}

/// Policy the coordinator applies; fleet options, not per-study settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    pub ttl_ms: u64,
    pub max_attempts: u32,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            ttl_ms: 30_000,
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("run is {state}, not pending, so it cannot be leased")]
    NotPending { state: &'static str },
    #[error("lease token {presented} is stale (current lease: {current})")]
    StaleToken {
        presented: FencingToken,
        current: String,
    },
    #[error("lease {token} belongs to worker {owner}, not {presented_by}")]
    WrongWorker {
        token: FencingToken,
        owner: WorkerId,
        presented_by: WorkerId,
    },
    #[error("lease {token} expired {ago_ms} ms ago")]
    Expired { token: FencingToken, ago_ms: u64 },
    #[error("run already ended as {state}")]
    Ended { state: &'static str },
}

/// What became of a submitted result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// Counted: this is the run's one accepted result.
    Accepted(LeaseRecord),
    /// The very same lease already delivered its result (a retried `complete`):
    /// acknowledge it, store nothing.
    AlreadyAccepted,
    /// Not counted; keep it as a duplicate record for the audit trail.
    Duplicate { reason: String },
    /// The result came from a worker that neither holds nor last held this lease
    /// (another worker's lease): refused, kept as a duplicate record, never counted.
    NotHolder { reason: String },
}

fn current_lease_desc(rec: &LeaseRecord) -> String {
    match &rec.lease {
        Some(l) => format!("{} held by {}", l.token, l.worker),
        None => format!("none, run is {}", rec.state.as_str()),
    }
}

/// A worker was chosen for a pending run: grant it a lease.
pub fn handle_grant(
    rec: &LeaseRecord,
    worker: &WorkerId,
    slot: u32,
    token: FencingToken,
    now_ms: u64,
    policy: &LeasePolicy,
) -> Result<LeaseRecord, LeaseError> {
    if rec.state != RunState::Pending {
        return Err(LeaseError::NotPending {
            state: rec.state.as_str(),
        });
    }
    let mut next = rec.clone();
    next.state = RunState::Leased;
    next.attempts += 1;
    next.lease = Some(Lease {
        token,
        worker: worker.clone(),
        slot,
        granted_at_ms: now_ms,
        expires_at_ms: now_ms + policy.ttl_ms,
    });
    next.last_token = Some(token);
    next.last_holder = Some(worker.clone());
    Ok(next)
}

fn check_holder(
    rec: &LeaseRecord,
    token: FencingToken,
    worker: &WorkerId,
) -> Result<(), LeaseError> {
    match &rec.lease {
        Some(l) if l.token == token => {
            if &l.worker != worker {
                return Err(LeaseError::WrongWorker {
                    token,
                    owner: l.worker.clone(),
                    presented_by: worker.clone(),
                });
            }
            Ok(())
        }
        _ => Err(LeaseError::StaleToken {
            presented: token,
            current: current_lease_desc(rec),
        }),
    }
}

/// A heartbeat: extend the lease by one TTL from now.
pub fn handle_renew(
    rec: &LeaseRecord,
    token: FencingToken,
    worker: &WorkerId,
    now_ms: u64,
    policy: &LeasePolicy,
) -> Result<LeaseRecord, LeaseError> {
    if rec.state.is_terminal() {
        return Err(LeaseError::Ended {
            state: rec.state.as_str(),
        });
    }
    check_holder(rec, token, worker)?;
    let lease = rec.lease.as_ref().expect("checked by check_holder");
    if now_ms > lease.expires_at_ms {
        return Err(LeaseError::Expired {
            token,
            ago_ms: now_ms - lease.expires_at_ms,
        });
    }
    let mut next = rec.clone();
    if let Some(l) = next.lease.as_mut() {
        l.expires_at_ms = now_ms + policy.ttl_ms;
    }
    Ok(next)
}

/// A result arrived under `token` from `worker`.
///
/// It counts when the token is the run's current lease, or when it is the run's most
/// recent lease that expired while nobody else took the run (the measurement is
/// whole and nobody else holds it). Anything else is a duplicate.
pub fn handle_complete(
    rec: &LeaseRecord,
    token: FencingToken,
    worker: &WorkerId,
    _now_ms: u64,
) -> CompleteOutcome {
    match rec.state {
        RunState::Done => {
            if rec.last_token == Some(token) && rec.done_by.as_ref() == Some(worker) {
                CompleteOutcome::AlreadyAccepted
            } else if rec.last_token == Some(token) {
                CompleteOutcome::NotHolder {
                    reason: format!(
                        "lease {token} belongs to worker {}, not {worker}; run already done",
                        rec.done_by.as_ref().map(|w| w.0.as_str()).unwrap_or("?"),
                    ),
                }
            } else {
                CompleteOutcome::Duplicate {
                    reason: format!(
                        "run already done by {} (token {}); result under token {token} not counted",
                        rec.done_by.as_ref().map(|w| w.0.as_str()).unwrap_or("?"),
                        rec.last_token.map(|t| t.0).unwrap_or(0)
                    ),
                }
            }
        }
        RunState::Cancelled | RunState::Failed => CompleteOutcome::Duplicate {
            reason: format!(
                "run is {}; result under token {token} kept but not counted",
                rec.state.as_str()
            ),
        },
        RunState::Leased => match check_holder(rec, token, worker) {
            Ok(()) => CompleteOutcome::Accepted(accept(rec, worker)),
            Err(e @ LeaseError::WrongWorker { .. }) => CompleteOutcome::NotHolder {
                reason: e.to_string(),
            },
            Err(e) => CompleteOutcome::Duplicate {
                reason: e.to_string(),
            },
        },
        RunState::Pending => {
            if rec.last_token == Some(token) {
                match &rec.last_holder {
                    Some(holder) if holder == worker => CompleteOutcome::Accepted(accept(rec, worker)),
                    Some(holder) => CompleteOutcome::NotHolder {
                        reason: format!("lease {token} belongs to worker {holder}, not {worker}"),
                    },
                    None => CompleteOutcome::Duplicate {
                        reason: format!(
                            "lease {token} expired and its holder is not recorded; result not counted"
                        ),
                    },
                }
            } else {
                CompleteOutcome::Duplicate {
                    reason: format!(
                        "token {token} is not the run's latest lease ({})",
                        rec.last_token
                            .map(|t| t.0.to_string())
                            .unwrap_or("none".into())
                    ),
                }
            }
        }
    }
}

fn accept(rec: &LeaseRecord, worker: &WorkerId) -> LeaseRecord {
    let mut next = rec.clone();
    next.state = RunState::Done;
    next.lease = None;
    next.done_by = Some(worker.clone());
    next
}

/// The lease holder reports a failure. Infrastructure failures go back to pending
/// until `max_attempts` leases were spent; configuration failures end the run; a
/// handback (the worker was stopped with `--drain`) goes back to pending and gives
/// the attempt back.
pub fn handle_fail(
    rec: &LeaseRecord,
    token: FencingToken,
    worker: &WorkerId,
    class: FailureClass,
    message: &str,
    now_ms: u64,
    policy: &LeasePolicy,
) -> Result<LeaseRecord, LeaseError> {
    if rec.state.is_terminal() {
        return Err(LeaseError::Ended {
            state: rec.state.as_str(),
        });
    }
    check_holder(rec, token, worker)?;
    let mut next = rec.clone();
    next.lease = None;
    next.last_failure = Some(FailureRecord {
        class,
        message: message.to_string(),
        worker: Some(worker.clone()),
        at_ms: now_ms,
    });
    next.state = match class {
        FailureClass::Configuration => RunState::Failed,
        FailureClass::Infrastructure if rec.attempts >= policy.max_attempts => RunState::Failed,
        FailureClass::Infrastructure => RunState::Pending,
        FailureClass::Handback => {
            next.attempts = rec.attempts.saturating_sub(1);
            RunState::Pending
        }
    };
    Ok(next)
}

/// The sweeper's check: a leased run whose deadline passed goes back to pending (or
/// fails when its attempts are spent). Returns `None` when nothing changes.
pub fn handle_expiry(rec: &LeaseRecord, now_ms: u64, policy: &LeasePolicy) -> Option<LeaseRecord> {
    let lease = rec.lease.as_ref()?;
    if rec.state != RunState::Leased || now_ms <= lease.expires_at_ms {
        return None;
    }
    let mut next = rec.clone();
    next.lease = None;
    next.last_failure = Some(FailureRecord {
        class: FailureClass::Infrastructure,
        message: format!(
            "lease {} of worker {} expired without renewal",
            lease.token, lease.worker
        ),
        worker: Some(lease.worker.clone()),
        at_ms: now_ms,
    });
    next.state = if rec.attempts >= policy.max_attempts {
        RunState::Failed
    } else {
        RunState::Pending
    };
    Some(next)
}

/// The campaign was cancelled: a run that has not ended is cancelled.
pub fn handle_cancel(rec: &LeaseRecord) -> Option<LeaseRecord> {
    if rec.state.is_terminal() {
        return None;
    }
    let mut next = rec.clone();
    next.state = RunState::Cancelled;
    next.lease = None;
    Some(next)
}

/// The operator asked to retry a failed run: it goes back to pending, keeping its
/// attempts (so the audit trail says how many leases it used) and its last failure.
/// Runs in any other state are left alone; cancelled runs stay cancelled. Returns
/// `None` when nothing changes.
///
/// The run's `last_token` is kept, so a late result from its most recent lease still
/// counts if it arrives before anybody else leases the run (as after an expiry).
pub fn handle_retry(rec: &LeaseRecord) -> Option<LeaseRecord> {
    if rec.state != RunState::Failed {
        return None;
    }
    let mut next = rec.clone();
    next.state = RunState::Pending;
    next.lease = None;
    next.done_by = None;
    Some(next)
}

/// When the record next needs the sweeper (its lease deadline), if ever.
pub fn poll_deadline(rec: &LeaseRecord) -> Option<u64> {
    match (&rec.state, &rec.lease) {
        (RunState::Leased, Some(l)) => Some(l.expires_at_ms),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> WorkerId {
        WorkerId(s.to_string())
    }

    /// A fresh run leased to worker `a` under token 1 at t = 0.
    fn granted_to_a() -> LeaseRecord {
        handle_grant(
            &LeaseRecord::new_pending(),
            &w("a"),
            0,
            FencingToken(1),
            0,
            &P,
        )
        .unwrap()
    }

    /// [`granted_to_a`], then failed by `a` as a configuration error at t = 5.
    fn failed_by_configuration() -> LeaseRecord {
        let failure = FailureClass::Configuration;
        handle_fail(
            &granted_to_a(),
            FencingToken(1),
            &w("a"),
            failure,
            "out of memory",
            5,
            &P,
        )
        .unwrap()
    }

    const P: LeasePolicy = LeasePolicy {
        ttl_ms: 1_000,
        max_attempts: 3,
    };

    #[test]
    fn grant_renew_complete_happy_path() {
        let r0 = LeaseRecord::new_pending();
        let r1 = handle_grant(&r0, &w("a"), 0, FencingToken(1), 100, &P).unwrap();
        assert_eq!(r1.state, RunState::Leased);
        assert_eq!(r1.attempts, 1);
        assert_eq!(poll_deadline(&r1), Some(1_100));
        let r2 = handle_renew(&r1, FencingToken(1), &w("a"), 900, &P).unwrap();
        assert_eq!(poll_deadline(&r2), Some(1_900));
        // Not expired at 1_500 thanks to the renewal.
        assert_eq!(handle_expiry(&r2, 1_500, &P), None);
        let CompleteOutcome::Accepted(r3) = handle_complete(&r2, FencingToken(1), &w("a"), 1_600)
        else {
            panic!("expected accepted")
        };
        assert_eq!(r3.state, RunState::Done);
        assert_eq!(r3.done_by, Some(w("a")));
        // The same complete again (a retry after a lost reply) is idempotent.
        assert_eq!(
            handle_complete(&r3, FencingToken(1), &w("a"), 1_700),
            CompleteOutcome::AlreadyAccepted
        );
    }

    #[test]
    fn only_pending_runs_can_be_granted() {
        let r0 = LeaseRecord::new_pending();
        let r1 = handle_grant(&r0, &w("a"), 0, FencingToken(1), 0, &P).unwrap();
        assert_eq!(
            handle_grant(&r1, &w("b"), 0, FencingToken(2), 0, &P),
            Err(LeaseError::NotPending { state: "leased" })
        );
    }

    #[test]
    fn expired_lease_returns_to_pending_and_stale_result_is_duplicate() {
        let r0 = LeaseRecord::new_pending();
        let r1 = handle_grant(&r0, &w("a"), 0, FencingToken(1), 0, &P).unwrap();
        assert_eq!(
            handle_expiry(&r1, 1_000, &P),
            None,
            "deadline itself is still valid"
        );
        let r2 = handle_expiry(&r1, 1_001, &P).unwrap();
        assert_eq!(r2.state, RunState::Pending);
        assert!(handle_renew(&r2, FencingToken(1), &w("a"), 1_002, &P).is_err());
        // Re-leased to b; a's late result must not count.
        let r3 = handle_grant(&r2, &w("b"), 0, FencingToken(2), 1_010, &P).unwrap();
        assert_eq!(r3.attempts, 2);
        assert!(matches!(
            handle_complete(&r3, FencingToken(1), &w("a"), 1_020),
            CompleteOutcome::Duplicate { .. }
        ));
        let CompleteOutcome::Accepted(r4) = handle_complete(&r3, FencingToken(2), &w("b"), 1_030)
        else {
            panic!("b holds the lease")
        };
        // a's result arriving after b's is still a duplicate, never a second count.
        assert!(matches!(
            handle_complete(&r4, FencingToken(1), &w("a"), 1_040),
            CompleteOutcome::Duplicate { .. }
        ));
    }

    #[test]
    fn late_result_of_expired_lease_counts_if_nobody_else_took_the_run() {
        let r1 = handle_grant(
            &LeaseRecord::new_pending(),
            &w("a"),
            0,
            FencingToken(7),
            0,
            &P,
        )
        .unwrap();
        let r2 = handle_expiry(&r1, 5_000, &P).unwrap();
        assert!(matches!(
            handle_complete(&r2, FencingToken(7), &w("a"), 5_001),
            CompleteOutcome::Accepted(_)
        ));
    }

    #[test]
    fn wrong_worker_is_refused() {
        let r1 = handle_grant(
            &LeaseRecord::new_pending(),
            &w("a"),
            0,
            FencingToken(3),
            0,
            &P,
        )
        .unwrap();
        assert!(matches!(
            handle_renew(&r1, FencingToken(3), &w("mallory"), 10, &P),
            Err(LeaseError::WrongWorker { .. })
        ));
        assert!(matches!(
            handle_complete(&r1, FencingToken(3), &w("mallory"), 10),
            CompleteOutcome::NotHolder { .. }
        ));
        // After the lease expired, its token still belongs to a alone.
        let expired = handle_expiry(&r1, 5_000, &P).unwrap();
        let CompleteOutcome::NotHolder { reason } =
            handle_complete(&expired, FencingToken(3), &w("mallory"), 5_001)
        else {
            panic!("mallory's result for a's expired lease must be refused")
        };
        assert_eq!(reason, "lease 3 belongs to worker a, not mallory");
        // And once a delivered, the same token from mallory is still refused.
        let CompleteOutcome::Accepted(done) =
            handle_complete(&expired, FencingToken(3), &w("a"), 5_002)
        else {
            panic!("a's late result counts")
        };
        assert!(matches!(
            handle_complete(&done, FencingToken(3), &w("mallory"), 5_003),
            CompleteOutcome::NotHolder { .. }
        ));
    }

    #[test]
    fn a_late_result_without_a_recorded_holder_is_not_counted() {
        // A record written before `last_holder` existed.
        let mut legacy = handle_expiry(&granted_to_a(), 5_000, &P).unwrap();
        legacy.last_holder = None;
        assert!(matches!(
            handle_complete(&legacy, FencingToken(1), &w("a"), 5_001),
            CompleteOutcome::Duplicate { .. }
        ));
        let json = serde_json::to_string(&legacy)
            .unwrap()
            .replace(",\"last_holder\":null", "");
        assert!(!json.contains("last_holder"), "{json}");
        let back: LeaseRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, legacy);
    }

    #[test]
    fn failures_retry_infrastructure_until_max_attempts() {
        let mut rec = LeaseRecord::new_pending();
        for attempt in 1..=3u64 {
            rec = handle_grant(&rec, &w("a"), 0, FencingToken(attempt), attempt * 10, &P).unwrap();
            rec = handle_fail(
                &rec,
                FencingToken(attempt),
                &w("a"),
                FailureClass::Infrastructure,
                "container died",
                attempt * 10 + 5,
                &P,
            )
            .unwrap();
        }
        assert_eq!(rec.state, RunState::Failed);
        assert_eq!(rec.attempts, 3);
        assert_eq!(rec.last_failure.as_ref().unwrap().message, "container died");
    }

    #[test]
    fn a_handback_returns_the_run_without_spending_an_attempt() {
        let mut rec = LeaseRecord::new_pending();
        // Handed back five times (more than max_attempts): never failed.
        for t in 1..=5u64 {
            rec = handle_grant(&rec, &w("a"), 0, FencingToken(t), t * 10, &P).unwrap();
            assert_eq!(rec.attempts, 1);
            rec = handle_fail(
                &rec,
                FencingToken(t),
                &w("a"),
                FailureClass::Handback,
                "drained",
                t * 10 + 1,
                &P,
            )
            .unwrap();
            assert_eq!((rec.state, rec.attempts), (RunState::Pending, 0));
        }
        // A stale handback is refused like any stale report.
        assert!(handle_fail(
            &rec,
            FencingToken(1),
            &w("a"),
            FailureClass::Handback,
            "late",
            99,
            &P
        )
        .is_err());
    }

    #[test]
    fn configuration_failure_is_not_retried() {
        let rec = failed_by_configuration();
        assert_eq!(rec.state, RunState::Failed);
    }

    #[test]
    fn cancel_ends_live_runs_only() {
        let rec = granted_to_a();
        let c = handle_cancel(&rec).unwrap();
        assert_eq!(c.state, RunState::Cancelled);
        assert_eq!(handle_cancel(&c), None);
        assert!(matches!(
            handle_complete(&c, FencingToken(1), &w("a"), 1),
            CompleteOutcome::Duplicate { .. }
        ));
    }

    #[test]
    fn retry_returns_failed_runs_to_pending_keeping_attempts() {
        let failed = failed_by_configuration();
        assert_eq!(failed.state, RunState::Failed);
        let retried = handle_retry(&failed).unwrap();
        assert_eq!(retried.state, RunState::Pending);
        assert_eq!(retried.attempts, 1, "attempts are kept");
        assert_eq!(retried.lease, None);
        assert_eq!(
            retried.last_failure.as_ref().map(|f| f.message.as_str()),
            Some("out of memory")
        );
        // It can be leased again; the new lease is attempt 2.
        let again = handle_grant(&retried, &w("b"), 0, FencingToken(2), 10, &P).unwrap();
        assert_eq!(again.attempts, 2);
        // Nothing else is retried: pending, leased, done and cancelled runs stay.
        assert_eq!(handle_retry(&LeaseRecord::new_pending()), None);
        assert_eq!(handle_retry(&granted_to_a()), None);
        let CompleteOutcome::Accepted(done) = handle_complete(&again, FencingToken(2), &w("b"), 20)
        else {
            panic!("b holds the lease")
        };
        assert_eq!(handle_retry(&done), None);
        let cancelled = handle_cancel(&granted_to_a()).unwrap();
        assert_eq!(handle_retry(&cancelled), None);
    }

    /// Two parties on a simulated clock, with heartbeats lost and results delivered
    /// twice or late: whatever happens, at most one result per run is accepted.
    #[test]
    fn randomized_exactly_once() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _trial in 0..300 {
            let mut rec = LeaseRecord::new_pending();
            let mut now = 0u64;
            let mut token = 0u64;
            let mut accepted = 0;
            let mut outstanding: Vec<(FencingToken, WorkerId)> = Vec::new();
            for _step in 0..40 {
                now += next() % 700;
                match next() % 5 {
                    0 => {
                        let wk = w(if next() % 2 == 0 { "a" } else { "b" });
                        token += 1;
                        if let Ok(r) = handle_grant(&rec, &wk, 0, FencingToken(token), now, &P) {
                            rec = r;
                            outstanding.push((FencingToken(token), wk));
                        }
                    }
                    1 => {
                        if let Some(r) = handle_expiry(&rec, now, &P) {
                            rec = r;
                        }
                    }
                    2 | 3 => {
                        if !outstanding.is_empty() {
                            let i = (next() as usize) % outstanding.len();
                            let (t, wk) = outstanding[i].clone();
                            match handle_complete(&rec, t, &wk, now) {
                                CompleteOutcome::Accepted(r) => {
                                    rec = r;
                                    accepted += 1;
                                }
                                CompleteOutcome::AlreadyAccepted
                                | CompleteOutcome::Duplicate { .. }
                                | CompleteOutcome::NotHolder { .. } => {}
                            }
                            // A third worker replays the same token: never counted.
                            let replay = handle_complete(&rec, t, &w("mallory"), now);
                            assert!(
                                !matches!(replay, CompleteOutcome::Accepted(_)),
                                "another worker's token was counted"
                            );
                        }
                    }
                    _ => {
                        if let Some((t, wk)) = outstanding.last().cloned() {
                            if let Ok(r) = handle_renew(&rec, t, &wk, now, &P) {
                                rec = r;
                            }
                        }
                    }
                }
                assert!(accepted <= 1, "a run was counted twice");
                assert!(rec.attempts <= token as u32);
            }
        }
    }
}
