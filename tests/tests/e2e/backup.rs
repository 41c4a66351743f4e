//! `lem-coord backup` with real processes: made by a running coordinator (the RPC,
//! with the admin credential, from `--data-dir` and from `--credentials`), read from
//! a stopped one's manifest, and each copy restored as another coordinator's manifest
//! that answers `status` as the original did.

use std::path::Path;
use std::time::Duration;

use lem_tests::{describe, run, Proc};
use serde_json::Value;

use crate::{campaign_id, status_json, wait_for_addr, COORD};

/// `lem-coord backup ARGS`: stdout (the file), stderr, and whether it succeeded.
fn backup(args: &[&str]) -> (String, String, Option<i32>) {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let out = run(COORD, &all);
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.code(),
    )
}

fn start(dir: &Path, name: &str) -> (Proc, String) {
    let data = dir.join(name);
    let coord = Proc::spawn(
        name,
        COORD,
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
    );
    let addr = wait_for_addr(&coord, &data);
    (coord, addr)
}

/// What `status ID --json` says of a campaign's runs.
fn counts(s: &Value) -> Vec<u64> {
    ["total", "pending", "running", "done", "failed", "cancelled"]
        .iter()
        .map(|k| s[*k].as_u64().unwrap_or(u64::MAX))
        .collect()
}

/// A coordinator started on a data dir whose manifest is `copy` answers `status` of
/// campaigns `ids` with `want`.
fn restores_as(dir: &Path, name: &str, copy: &Path, ids: &[&str], want: &[Vec<u64>]) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::copy(copy, dir.join(name).join("manifest.redb")).unwrap();
    let (mut coord, addr) = start(dir, name);
    for (id, want) in ids.iter().zip(want) {
        let s = status_json(&addr, id)
            .unwrap_or_else(|| panic!("campaign {id} in the restored copy\n{}", coord.logs()));
        assert_eq!(&counts(&s), want, "campaign {id} restored from {copy:?}");
    }
    coord.kill();
}

#[test]
fn backups_of_a_running_and_a_stopped_coordinator_restore_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut coord, addr) = start(dir, "coord");
    let data = dir.join("coord");
    let data_s = data.to_str().unwrap();
    let study = lem_tests::repo_root().join("tests/fixtures/e2e-12.yaml");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = run(
            COORD,
            &["submit", study.to_str().unwrap(), "--coordinator", &addr],
        );
        assert!(out.status.success(), "{}", describe(&["submit"], &out));
        ids.push(campaign_id(&out.stdout));
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cancel = run(COORD, &["cancel", &ids[1], "--coordinator", &addr]);
    assert!(
        cancel.status.success(),
        "{}",
        describe(&["cancel"], &cancel)
    );
    let want: Vec<Vec<u64>> = ids
        .iter()
        .map(|id| counts(&status_json(&addr, id).unwrap()))
        .collect();

    // Running, on the head node: the coordinator writes the copy (its manifest is
    // locked), asked with the admin credential in the data dir. A relative --out is
    // this directory's.
    let out = run(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && {COORD} backup --out running.redb --data-dir {data_s}",
                dir.display()
            ),
        ],
    );
    assert!(out.status.success(), "{}", describe(&["backup"], &out));
    let running = dir.join("running.redb");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        running.to_str().unwrap()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("by the running coordinator") && stderr.contains("2 campaign(s)"),
        "{stderr}"
    );
    // From elsewhere, with a copy of admin.pem: an absolute path on its host.
    let admin = data.join("tls/admin.pem");
    let remote = dir.join("remote.redb");
    let (file, err, code) = backup(&[
        "--out",
        remote.to_str().unwrap(),
        "--coordinator",
        &addr,
        "--credentials",
        admin.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(file, remote.to_str().unwrap());
    // ... and refused a relative one, or a file that exists (above all the manifest).
    let (_, err, code) = backup(&["--out", "x.redb", "--coordinator", &addr]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("absolute path"), "{err}");
    let manifest = data.join("manifest.redb");
    let (_, err, code) = backup(&["--out", manifest.to_str().unwrap(), "--data-dir", data_s]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("exists"), "{err}");

    // Stopped: the CLI reads the manifest itself.
    coord.signal(libc::SIGTERM);
    assert!(coord.wait_exit(Duration::from_secs(30)).is_some());
    let stopped = dir.join("stopped.redb");
    let (file, err, code) = backup(&["--out", stopped.to_str().unwrap(), "--data-dir", data_s]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(file, stopped.to_str().unwrap());
    assert!(err.contains("stopped coordinator"), "{err}");

    for (name, copy) in [
        ("from-running", &running),
        ("from-remote", &remote),
        ("from-stopped", &stopped),
    ] {
        restores_as(dir, name, copy, &id_refs, &want);
    }
}
