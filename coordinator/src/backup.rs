//! `lem-coord backup --out FILE`: a consistent copy of the manifest.
//!
//! A running coordinator holds its manifest open alone, so the copy must be its
//! own: the CLI asks it over the RPC (`backup`, an admin call) and it writes FILE
//! on its host. A stopped coordinator's manifest is opened here, read-only. With
//! `--data-dir` (on the head node) the CLI tries the manifest first and asks the
//! coordinator when it is open; with only `--coordinator`/`--credentials` it asks
//! the coordinator, and FILE, a path on the coordinator's host, must be absolute.
//! How the copy is made: `store::backup`.

use std::path::Path;

use anyhow::anyhow;
use lem_common::rpc::{BackupReply, BackupRequest};

use crate::cli::{connect, invalid, rpc, CliError, ConnectArgs};
use crate::store::{backup_stopped_manifest, StoreError};

/// `lem-coord backup`.
pub async fn backup(out: &Path, connect_args: &ConnectArgs) -> Result<(), CliError> {
    let reply = match &connect_args.data_dir {
        Some(dir) => {
            let out = std::path::absolute(out)
                .map_err(|e| invalid(anyhow!("--out {}: {e}", out.display())))?;
            let dir2 = dir.clone();
            let out2 = out.clone();
            let direct = tokio::task::spawn_blocking(move || backup_stopped_manifest(&dir2, &out2))
                .await
                .map_err(|e| anyhow!("the backup task failed: {e}"))?;
            match direct {
                Ok(b) => {
                    let reply = BackupReply {
                        path: b.path.display().to_string(),
                        bytes: b.bytes,
                        tables: b.tables,
                    };
                    report(&reply, "from the stopped coordinator's manifest");
                    return Ok(());
                }
                // Open: a coordinator runs on it; it makes the copy.
                Err(StoreError::AlreadyOpen { .. }) => via_coordinator(&out, connect_args).await?,
                Err(e @ StoreError::BackupTarget(_)) => return Err(invalid(e)),
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            if !out.is_absolute() {
                return Err(invalid(anyhow!(
                    "--out {}: without --data-dir the coordinator writes the file on its own host, so give an absolute path there",
                    out.display()
                )));
            }
            via_coordinator(out, connect_args).await?
        }
    };
    report(&reply, "by the running coordinator");
    Ok(())
}

async fn via_coordinator(out: &Path, connect_args: &ConnectArgs) -> Result<BackupReply, CliError> {
    let ep = connect_args.endpoint()?;
    let client = connect(&ep).await?;
    let req = BackupRequest {
        path: out.display().to_string(),
    };
    // The copy takes as long as the manifest is big (100,000 runs: 81 MB, 17 s in a
    // debug build): longer than the other calls' minute.
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + BACKUP_DEADLINE;
    rpc(&ep, client.backup(ctx, req).await)
}

/// How long the CLI waits for a running coordinator's backup.
const BACKUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// The summary on stderr, the file alone on stdout (for scripts).
fn report(b: &BackupReply, how: &str) {
    eprintln!(
        "backup: {} ({} bytes, written {how}): {} campaign(s), {} run(s), {} result(s), {} worker(s)",
        b.path,
        b.bytes,
        b.entries("campaigns"),
        b.entries("runs"),
        b.entries("results"),
        b.entries("workers"),
    );
    println!("{}", b.path);
}
