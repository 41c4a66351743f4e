//! The worker's journal: a redb file in its data dir that holds each slot's current
//! lease and every finished report (a result or a failure) until the coordinator has
//! acknowledged it.
//!
//! The order of writes is what makes a crash lose nothing:
//! * a lease is journaled before the run starts ([`Journal::record_lease`]);
//! * when the run ends, the lease becomes a report in one transaction
//!   ([`Journal::finish`]): there is no moment where neither is on disk;
//! * a report leaves the journal only once the coordinator answered it
//!   ([`Journal::acknowledge`]), and a definitive refusal moves it to `rejected`
//!   rather than dropping it.
//!
//! When the worker starts again, [`Journal::open`] turns every lease it finds (a run
//! that was going on when the worker died) into a failure report (infrastructure
//! class, so the coordinator retries the run) and the slots re-send every report.
//! The coordinator's `complete` and `fail` are idempotent under the lease's fencing
//! token, so a report sent twice is counted once.
//!
//! Tables (values JSON so the file can be inspected):
//! * `leases`: slot -> [`JournalLease`];
//! * `reports`: (campaign, seq, token) -> [`Report`];
//! * `rejected`: (campaign, seq, token) -> [`Rejected`] — reports the coordinator
//!   refused outright (kept, never re-sent).

use std::path::{Path, PathBuf};

use lem_common::rpc::{CompleteRequest, FailRequest, LeaseGrant};
use lem_common::types::{FailureClass, FencingToken, RunKey, WorkerId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
const REPORTS: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("reports");
const REJECTED: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("rejected");

/// The journal file inside the worker's data dir.
pub const JOURNAL_FILE: &str = "journal.redb";

/// A lease the worker holds, journaled before its run starts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalLease {
    pub worker: WorkerId,
    pub grant: LeaseGrant,
    pub leased_unix_ms: u64,
}

/// A finished run's report, kept until the coordinator acknowledges it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Complete(Box<CompleteRequest>),
    Fail(FailRequest),
}

impl Report {
    pub fn run(&self) -> RunKey {
        match self {
            Report::Complete(r) => r.run,
            Report::Fail(r) => r.run,
        }
    }

    pub fn token(&self) -> FencingToken {
        match self {
            Report::Complete(r) => r.token,
            Report::Fail(r) => r.token,
        }
    }

    fn key(&self) -> (u64, u32, u64) {
        let run = self.run();
        (run.campaign.0, run.seq, self.token().0)
    }
}

/// A report the coordinator refused outright, with its reason.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rejected {
    pub report: Report,
    pub reason: String,
    pub at_unix_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("another lem-worker already uses the data dir of {path} (one worker per --data-dir; stop the other one or choose another --data-dir)")]
    InUse { path: String },
    #[error("cannot open the worker journal {path}: {reason} (finished results not yet acknowledged may be in it: keep a copy; move it aside to start without it)")]
    Open { path: String, reason: String },
    #[error("worker journal {path}: {reason} (is the data dir's disk full or read-only?)")]
    Write { path: String, reason: String },
}

pub struct Journal {
    db: Database,
    path: PathBuf,
}

impl Journal {
    /// Opens (or creates) the journal in `data_dir` and turns leases left by a
    /// previous process into failure reports. Returns the journal and how many runs
    /// it found interrupted.
    pub fn open(data_dir: &Path, now_unix_ms: u64) -> Result<(Journal, usize), JournalError> {
        let journal = Journal::open_db(data_dir, true)?;
        let interrupted = journal.recover(now_unix_ms)?;
        Ok((journal, interrupted))
    }

    /// Opens the journal of a worker that is not running and reads it as it is
    /// (nothing recovered): (leases, reports, rejected).
    #[allow(clippy::type_complexity)]
    pub fn inspect(
        data_dir: &Path,
    ) -> Result<(Vec<(u32, JournalLease)>, Vec<Report>, Vec<Rejected>), JournalError> {
        let j = Journal::open_db(data_dir, false)?;
        Ok((j.leases()?, j.reports()?, j.rejected()?))
    }

    /// Opens the file with its checksums verified (a damaged journal is an error that
    /// names it, never a panic); `create` makes it if missing.
    fn open_db(data_dir: &Path, create: bool) -> Result<Journal, JournalError> {
        let path = data_dir.join(JOURNAL_FILE);
        let open_err = |reason: String| JournalError::Open {
            path: path.display().to_string(),
            reason,
        };
        if !create && !path.exists() {
            return Err(open_err("no such file".into()));
        }
        let builder = {
            let mut b = Database::builder();
            b.set_check_integrity_on_open(true);
            b
        };
        let opened = if create {
            builder.create(&path)
        } else {
            builder.open(&path)
        };
        let db = opened.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => JournalError::InUse {
                path: data_dir.display().to_string(),
            },
            other => open_err(other.to_string()),
        })?;
        Ok(Journal { db, path })
    }

    fn write_err(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Write {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// One write transaction: `f` gets the three tables.
    fn write<T>(
        &self,
        f: impl FnOnce(
            &mut redb::Table<u32, &[u8]>,
            &mut redb::Table<(u64, u32, u64), &[u8]>,
            &mut redb::Table<(u64, u32, u64), &[u8]>,
        ) -> Result<T, redb::StorageError>,
    ) -> Result<T, JournalError> {
        let txn = self.db.begin_write().map_err(|e| self.write_err(e))?;
        let out = {
            let mut leases = txn.open_table(LEASES).map_err(|e| self.write_err(e))?;
            let mut reports = txn.open_table(REPORTS).map_err(|e| self.write_err(e))?;
            let mut rejected = txn.open_table(REJECTED).map_err(|e| self.write_err(e))?;
            f(&mut leases, &mut reports, &mut rejected).map_err(|e| self.write_err(e))?
        };
        txn.commit().map_err(|e| self.write_err(e))?;
        Ok(out)
    }

    fn recover(&self, now_unix_ms: u64) -> Result<usize, JournalError> {
        self.write(|leases, reports, _| {
            let mut found = Vec::new();
            for entry in leases.iter()? {
                let (slot, value) = entry?;
                found.push((slot.value(), value.value().to_vec()));
            }
            for (slot, bytes) in &found {
                leases.remove(*slot)?;
                // A lease that cannot be decoded is dropped: the coordinator's TTL
                // returns its run to pending anyway.
                let Ok(lease) = serde_json::from_slice::<JournalLease>(bytes) else {
                    continue;
                };
                let report = Report::Fail(FailRequest {
                    worker: lease.worker,
                    run: lease.grant.run,
                    token: lease.grant.token,
                    class: FailureClass::Infrastructure,
                    message: format!(
                        "the worker stopped while the run was going on (slot {slot}, leased {} s before it restarted); found in its journal",
                        now_unix_ms.saturating_sub(lease.leased_unix_ms) / 1000
                    ),
                });
                let value = serde_json::to_vec(&report).expect("reports serialise");
                reports.insert(report.key(), value.as_slice())?;
            }
            Ok(found.len())
        })
    }

    /// Journals `slot`'s new lease, before its run starts.
    pub fn record_lease(&self, slot: u32, lease: &JournalLease) -> Result<(), JournalError> {
        let value = serde_json::to_vec(lease).expect("leases serialise");
        self.write(|leases, _, _| {
            leases.insert(slot, value.as_slice())?;
            Ok(())
        })
    }

    /// The run on `slot` ended: its lease becomes `report`, in one transaction.
    pub fn finish(&self, slot: u32, report: &Report) -> Result<(), JournalError> {
        let value = serde_json::to_vec(report).expect("reports serialise");
        self.write(|leases, reports, _| {
            leases.remove(slot)?;
            reports.insert(report.key(), value.as_slice())?;
            Ok(())
        })
    }

    /// The coordinator answered `report` (accepted, already accepted, kept as a
    /// duplicate, or the lease had already ended): it leaves the journal.
    pub fn acknowledge(&self, report: &Report) -> Result<(), JournalError> {
        self.write(|_, reports, _| {
            reports.remove(report.key())?;
            Ok(())
        })
    }

    /// The coordinator refused `report` outright: it moves to `rejected`, kept.
    pub fn reject(
        &self,
        report: &Report,
        reason: &str,
        now_unix_ms: u64,
    ) -> Result<(), JournalError> {
        let value = serde_json::to_vec(&Rejected {
            report: report.clone(),
            reason: reason.to_string(),
            at_unix_ms: now_unix_ms,
        })
        .expect("rejected reports serialise");
        self.write(|_, reports, rejected| {
            reports.remove(report.key())?;
            rejected.insert(report.key(), value.as_slice())?;
            Ok(())
        })
    }

    /// Writes and removes a marker: whether the journal can be written now.
    pub fn probe(&self) -> Result<(), JournalError> {
        self.write(|leases, _, _| {
            leases.insert(u32::MAX, &b"probe"[..])?;
            leases.remove(u32::MAX)?;
            Ok(())
        })
    }

    /// Every value of `table` that decodes as `T`, in key order; an entry that
    /// cannot be decoded is left in place and logged.
    fn read_all<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<(K::SelfType<'static>, T)>, JournalError>
    where
        for<'a> K::SelfType<'a>: ToOwned<Owned = K::SelfType<'static>>,
    {
        let read_err = |e: &dyn std::fmt::Display| JournalError::Open {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| read_err(&e))?;
        let table = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(read_err(&e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| read_err(&e))? {
            let (key, value) = entry.map_err(|e| read_err(&e))?;
            match serde_json::from_slice::<T>(value.value()) {
                Ok(v) => out.push((key.value().to_owned(), v)),
                Err(e) => {
                    tracing::error!(journal = %self.path.display(), error = %e, "a journal entry cannot be decoded; left in place")
                }
            }
        }
        Ok(out)
    }

    /// Reports not yet acknowledged, oldest run first.
    pub fn reports(&self) -> Result<Vec<Report>, JournalError> {
        Ok(self
            .read_all::<(u64, u32, u64), Report>(REPORTS)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Leases held now (slot, lease).
    pub fn leases(&self) -> Result<Vec<(u32, JournalLease)>, JournalError> {
        self.read_all::<u32, JournalLease>(LEASES)
    }

    /// Reports the coordinator refused, with their reasons.
    pub fn rejected(&self) -> Result<Vec<Rejected>, JournalError> {
        Ok(self
            .read_all::<(u64, u32, u64), Rejected>(REJECTED)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::types::CampaignId;

    fn grant(seq: u32, token: u64) -> LeaseGrant {
        LeaseGrant {
            run: RunKey {
                campaign: CampaignId(7),
                seq,
            },
            token: FencingToken(token),
            ttl_ms: 30_000,
            attempt: 1,
            engine: "synthetic".into(),
            config_hash: "abc".into(),
            cycle: 1,
            config_json: "{}".into(),
            gap_before_s: 0.0,
            study_name: None,
            tp_size: 1,
            experiment_timeout_s: 600.0,
            stdout_silence_timeout_s: 300.0,
            force_cold_start: false,
        }
    }

    fn lease(seq: u32, token: u64) -> JournalLease {
        JournalLease {
            worker: WorkerId("w".into()),
            grant: grant(seq, token),
            leased_unix_ms: 1_000,
        }
    }

    fn fail(seq: u32, token: u64) -> Report {
        Report::Fail(FailRequest {
            worker: WorkerId("w".into()),
            run: grant(seq, token).run,
            token: FencingToken(token),
            class: FailureClass::Configuration,
            message: "oom".into(),
        })
    }

    #[test]
    fn a_lease_left_by_a_dead_worker_becomes_an_infrastructure_failure() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, n) = Journal::open(dir.path(), 0).unwrap();
            assert_eq!(n, 0);
            j.record_lease(0, &lease(3, 41)).unwrap();
            j.record_lease(1, &lease(4, 42)).unwrap();
            j.finish(1, &fail(4, 42)).unwrap();
            assert_eq!(j.leases().unwrap().len(), 1);
        }
        let (j, n) = Journal::open(dir.path(), 61_000).unwrap();
        assert_eq!(n, 1, "one run was going on");
        assert!(j.leases().unwrap().is_empty());
        let reports = j.reports().unwrap();
        assert_eq!(reports.len(), 2, "{reports:?}");
        let Report::Fail(interrupted) = &reports[0] else {
            panic!("{reports:?}")
        };
        assert_eq!(interrupted.run.seq, 3);
        assert_eq!(interrupted.token, FencingToken(41));
        assert_eq!(interrupted.class, FailureClass::Infrastructure);
        assert!(
            interrupted.message.contains("60 s"),
            "{}",
            interrupted.message
        );
        assert_eq!(reports[1], fail(4, 42));
    }

    #[test]
    fn reports_leave_only_when_acknowledged_and_rejections_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 0).unwrap();
        j.record_lease(0, &lease(1, 5)).unwrap();
        j.finish(0, &fail(1, 5)).unwrap();
        j.record_lease(0, &lease(2, 6)).unwrap();
        j.finish(0, &fail(2, 6)).unwrap();
        j.acknowledge(&fail(1, 5)).unwrap();
        j.acknowledge(&fail(1, 5)).unwrap(); // idempotent
        j.reject(&fail(2, 6), "non-finite field", 9).unwrap();
        assert!(j.reports().unwrap().is_empty());
        let rejected = j.rejected().unwrap();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].reason, "non-finite field");
        assert_eq!(rejected[0].report, fail(2, 6));
    }

    /// A journal left by a worker from before the nested result model holds its
    /// finished result flat (protocol 4): the next worker reads it, nested, and sends
    /// it on instead of leaving it undecoded.
    #[test]
    fn a_flat_result_journaled_by_an_older_worker_reads_back_nested() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 0).unwrap();
        let flat: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../common/tests/fixtures/run-result-flat-v4-full.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let run = grant(5, 9).run;
        let old = serde_json::json!({"complete": {
            "worker": "w", "run": run, "token": 9, "result": flat.clone()
        }});
        let bytes = serde_json::to_vec(&old).unwrap();
        j.write(|_, reports, _| {
            reports.insert((7, 5, 9), bytes.as_slice())?;
            Ok(())
        })
        .unwrap();
        let reports = j.reports().unwrap();
        let [Report::Complete(c)] = reports.as_slice() else {
            panic!("{reports:?}")
        };
        assert_eq!((c.run, c.token), (run, FencingToken(9)));
        assert_eq!(c.result.energy.total_j, 2413.7);
        assert_eq!(c.result.thermal.max_temp_c, 67.5);
        assert_eq!(
            c.result,
            serde_json::from_value::<lem_common::types::RunResult>(flat).unwrap()
        );
    }

    #[test]
    fn a_second_worker_on_the_same_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_j, _) = Journal::open(dir.path(), 0).unwrap();
        let err = Journal::open(dir.path(), 0).err().expect("refused");
        assert!(err.to_string().contains("another lem-worker"), "{err}");
    }
}
