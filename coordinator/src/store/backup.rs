//! A consistent copy of the manifest (`lem-coord backup`).
//!
//! redb has no backup call, and copying the file under a running coordinator could
//! catch a commit half written. A read transaction is a snapshot (redb is MVCC: a
//! reader sees the last commit before it began, whatever commits after), so the copy
//! is that snapshot, table by table, written into a fresh redb file in one write
//! transaction. The file is written beside its destination under a temporary name,
//! read back and checked (every table's entry count), flushed, and only then renamed
//! to its name: a backup that exists is whole. A running coordinator makes the copy
//! itself (the `backup` RPC: it holds the manifest open alone); a stopped one's
//! manifest is opened here, read-only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use redb::{
    Database, MultimapTableHandle, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};

use super::{
    open_database, Store, StoreError, CAMPAIGNS, CLIENT_CERTS, CONFIGS, COUNTS, DUPLICATES,
    ENROLMENTS, FAILED, LEASED, MANIFEST_FILE, META, PENDING, RESULTS, RUNS, STUDIES, WORKERS,
};

/// What a backup wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestBackup {
    pub path: PathBuf,
    pub bytes: u64,
    /// Entries per table, in the order copied; the copy holds exactly these.
    pub tables: Vec<(String, u64)>,
}

impl Store {
    /// Writes a consistent copy of this (open, possibly busy) manifest to `dest`, a
    /// file that must not exist yet, in a directory that does.
    pub fn backup(&self, dest: &Path) -> Result<ManifestBackup, StoreError> {
        write_backup(&self.db.begin_read()?, dest)
    }
}

/// Writes a consistent copy of the manifest in `data_dir` of a coordinator that is
/// not running to `dest`. [`StoreError::AlreadyOpen`] when a coordinator has it
/// open: ask that coordinator instead (the `backup` RPC).
///
/// The manifest is opened read-only. One that was not closed cleanly (its
/// coordinator was killed) cannot be read that way; it is opened as `lem-coord
/// start` would open it, which repairs it first, as that start would have.
pub fn backup_stopped_manifest(data_dir: &Path, dest: &Path) -> Result<ManifestBackup, StoreError> {
    let path = data_dir.join(MANIFEST_FILE);
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(StoreError::BackupTarget(format!(
            "there is no manifest at {shown} (is {} the coordinator's --data-dir?)",
            data_dir.display()
        )));
    }
    match Database::builder().open_read_only(&path) {
        Ok(db) => write_backup(&db.begin_read()?, dest),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(StoreError::AlreadyOpen { path: shown })
        }
        Err(redb::DatabaseError::RepairAborted) => {
            tracing::warn!(manifest = %shown, "the manifest was not closed cleanly; repairing it as `lem-coord start` would, before copying it");
            let db = open_database(&path, false)?;
            write_backup(&db.begin_read()?, dest)
        }
        Err(e) => Err(StoreError::Open {
            path: shown,
            source: e,
        }),
    }
}

/// Copies `def` from the snapshot into `write`; `None` when the manifest has no such
/// table (one written before the table existed and never opened since).
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &ReadTransaction,
    write: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<(String, u64)>, StoreError> {
    let src = match read.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut dst = write.open_table(def)?;
    let mut n = 0u64;
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(Some((def.name().to_string(), n)))
}

/// Copies every table of the snapshot; an error if it has a table this lem-coord
/// does not know (a newer one's), which a copy would silently leave out.
fn copy_tables(
    read: &ReadTransaction,
    write: &redb::WriteTransaction,
) -> Result<Vec<(String, u64)>, StoreError> {
    let copied = [
        copy_table(read, write, META)?,
        copy_table(read, write, CAMPAIGNS)?,
        copy_table(read, write, RUNS)?,
        copy_table(read, write, CONFIGS)?,
        copy_table(read, write, PENDING)?,
        copy_table(read, write, LEASED)?,
        copy_table(read, write, FAILED)?,
        copy_table(read, write, COUNTS)?,
        copy_table(read, write, STUDIES)?,
        copy_table(read, write, RESULTS)?,
        copy_table(read, write, DUPLICATES)?,
        copy_table(read, write, WORKERS)?,
        copy_table(read, write, ENROLMENTS)?,
        copy_table(read, write, CLIENT_CERTS)?,
    ];
    let tables: Vec<(String, u64)> = copied.into_iter().flatten().collect();
    let unknown: Vec<String> = read
        .list_tables()?
        .map(|t| t.name().to_string())
        .chain(read.list_multimap_tables()?.map(|t| t.name().to_string()))
        .filter(|name| !tables.iter().any(|(t, _)| t == name))
        .collect();
    if !unknown.is_empty() {
        return Err(StoreError::Storage(format!(
            "the manifest has table(s) {} that this lem-coord does not know (written by a newer lem-coord?); back it up with that version",
            unknown.join(", ")
        )));
    }
    Ok(tables)
}

/// Where and under which temporary name a backup to `dest` is written.
fn backup_paths(dest: &Path) -> Result<(PathBuf, PathBuf), StoreError> {
    let bad = |m: String| Err(StoreError::BackupTarget(m));
    let shown = dest.display();
    let Some(name) = dest.file_name().and_then(|n| n.to_str()) else {
        return bad(format!("{shown} names no file"));
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return bad(format!(
            "the directory of {shown} does not exist (create {} first)",
            dir.display()
        ));
    }
    // Never replace a file: not an older backup, and above all not the manifest.
    if dest.symlink_metadata().is_ok() {
        return bad(format!(
            "{shown} exists; a backup never replaces a file (choose a new name, e.g. with the date in it)"
        ));
    }
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    Ok((dir, tmp))
}

/// The snapshot `read` written to `dest` through a temporary file, checked, flushed
/// and renamed; the temporary file is removed if anything fails.
fn write_backup(read: &ReadTransaction, dest: &Path) -> Result<ManifestBackup, StoreError> {
    let (dir, tmp) = backup_paths(dest)?;
    let result = write_checked(read, &tmp).and_then(|tables| {
        std::fs::rename(&tmp, dest).map_err(|e| io_err(dest, "cannot rename the copy to", e))?;
        // The rename is durable once the directory is.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&dir, "cannot flush the directory", e))?;
        let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        Ok(ManifestBackup {
            path: dest.to_path_buf(),
            bytes,
            tables,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("backup: {what} {}: {e}", path.display()))
}

/// Copies the snapshot into a new redb file at `tmp` (mode 0600: it holds every
/// result), reopens that with every page checked, compares each table's entries and
/// flushes it to disk.
fn write_checked(read: &ReadTransaction, tmp: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| io_err(tmp, "cannot create", e))?;
    let tables = {
        let copy = Database::builder()
            .create(tmp)
            .map_err(|e| StoreError::Storage(format!("backup: {}: {e}", tmp.display())))?;
        let write = copy.begin_write()?;
        let tables = copy_tables(read, &write)?;
        write.commit()?;
        tables
    };
    let copy = Database::builder()
        .set_check_integrity_on_open(true)
        .open(tmp)
        .map_err(|e| {
            StoreError::Storage(format!(
                "backup: the copy {} does not open: {e}",
                tmp.display()
            ))
        })?;
    let check = copy.begin_read()?;
    let mut found = Vec::new();
    for handle in check.list_tables()? {
        let n = check.open_untyped_table(handle.clone())?.len()?;
        found.push((handle.name().to_string(), n));
    }
    let (mut want, mut got) = (tables.clone(), found);
    want.sort();
    got.sort();
    if want != got {
        return Err(StoreError::Storage(format!(
            "backup: the copy holds {got:?}, the manifest {want:?}"
        )));
    }
    drop(check);
    drop(copy);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(tmp)
        .map_err(|e| io_err(tmp, "cannot reopen", e))?;
    f.flush().ok();
    f.sync_all().map_err(|e| io_err(tmp, "cannot flush", e))?;
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{campaign, runs};
    use super::*;
    use lem_common::lease::LeasePolicy;
    use lem_common::types::{RunResult, WorkerId};

    /// A store with two campaigns, a finished run, a leased one, a duplicate and a
    /// worker: every kind of table has entries.
    fn busy_store(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        let policy = LeasePolicy::default();
        store
            .create_campaign(campaign(), runs(&["synthetic", "synthetic", "synthetic"]))
            .unwrap();
        store
            .create_campaign(campaign(), runs(&["synthetic"]))
            .unwrap();
        let (a, eng) = (WorkerId("a".into()), vec!["synthetic".to_string()]);
        let r = store.lease_next(&a, 0, &eng, 1, &policy).unwrap().unwrap();
        let token = r.lease.lease.as_ref().unwrap().token;
        store
            .complete(r.key, token, &a, &RunResult::default(), 2, "x")
            .unwrap();
        store.lease_next(&a, 0, &eng, 3, &policy).unwrap().unwrap();
        store.enrol(&a, &[7; 32], "now").unwrap();
        store
    }

    /// Everything a reader of the manifest sees, per campaign.
    fn contents(store: &Store) -> String {
        let mut out = String::new();
        for c in store.campaigns().unwrap() {
            let counts = store.counts(c.id).unwrap();
            out.push_str(&format!("{:?} {:?} {counts:?}\n", c.id, c.study_name));
            for (run, result) in store.runs(c.id).unwrap() {
                out.push_str(&format!(
                    "  {} {} {:?} {}\n",
                    run.key,
                    run.lease.state.as_str(),
                    run.lease.attempts,
                    result.is_some()
                ));
            }
        }
        let enrolled = store.enrolled_worker(&[7; 32]).unwrap();
        out.push_str(&format!("enrolled {enrolled:?}\n"));
        out
    }

    #[test]
    fn a_backup_of_a_running_store_opens_as_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = busy_store(dir.path());
        let want = contents(&store);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("manifest-1.redb");
        let b = store.backup(&dest).unwrap();
        assert_eq!(b.path, dest);
        assert!(b.bytes > 0);
        let n = |t: &str| b.tables.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
        assert_eq!(n("campaigns"), Some(2));
        assert_eq!(n("runs"), Some(4));
        assert_eq!(n("results"), Some(1));
        assert_eq!(n("leased"), Some(1));
        assert_eq!(b.tables.len(), 14, "{:?}", b.tables);
        // The store goes on being written after the copy: the copy does not change.
        let policy = LeasePolicy::default();
        let (a, eng) = (WorkerId("a".into()), vec!["synthetic".to_string()]);
        store.lease_next(&a, 0, &eng, 4, &policy).unwrap().unwrap();
        assert_ne!(contents(&store), want);
        // Restored: the copy as a data dir's manifest is the manifest as it was.
        let restored = tempfile::tempdir().unwrap();
        std::fs::copy(&dest, restored.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(contents(&Store::open(restored.path()).unwrap()), want);
        // No temporary file is left beside it, and the copy is the owner's alone.
        let names: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("manifest-1.redb")]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_stopped_manifest_is_copied_and_an_open_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = busy_store(dir.path());
        let want = contents(&store);
        let out = tempfile::tempdir().unwrap();
        // Open by a coordinator: refused, so the CLI asks that coordinator instead.
        let err = backup_stopped_manifest(dir.path(), &out.path().join("a.redb")).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
        assert!(!out.path().join("a.redb").exists());
        drop(store);
        let b = backup_stopped_manifest(dir.path(), &out.path().join("b.redb")).unwrap();
        let restored = tempfile::tempdir().unwrap();
        std::fs::copy(&b.path, restored.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(contents(&Store::open(restored.path()).unwrap()), want);
        // The source is untouched and opens as before.
        assert_eq!(contents(&Store::open(dir.path()).unwrap()), want);
    }

    #[test]
    fn a_backup_never_replaces_a_file_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = busy_store(dir.path());
        // Not the manifest itself, nor any other file.
        let manifest = dir.path().join(MANIFEST_FILE);
        let err = store.backup(&manifest).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        let missing = dir.path().join("no/such/dir/m.redb");
        let err = store.backup(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = backup_stopped_manifest(empty.path(), &dir.path().join("x.redb"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("there is no manifest"), "{err}");
        drop(store);
        assert!(Store::open(dir.path()).unwrap().campaigns().unwrap().len() == 2);
    }
}
