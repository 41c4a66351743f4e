//! The coordinator's data dir turning read-only (issue 6, "Bad conditions"): while it
//! runs, new work is refused with an error that names the read-only file system, no
//! lease is granted, nothing accepted is lost, and once the file system is writable
//! again the campaign finishes, every run exactly once, with the same coordinator; at
//! start-up, a read-only data dir is one clear error and the manifest is not touched.
//!
//! A running coordinator keeps its manifest open for writing, and Linux refuses
//! `mount -o remount,ro` on a file system with a file open for writing ("mount point
//! is busy"). A data dir turns read-only under a running process only when the kernel
//! forces it, as ext4 does after an error with `errors=remount-ro`: so the running test
//! puts the data dir on an ext4 image on a loop device and triggers that through
//! `/sys/fs/ext4/<dev>/trigger_fs_error`. ext4 does not let such a file system be
//! remounted read-write; an operator unmounts it, checks it (`e2fsck`) and mounts it
//! again, and so does the test, while the coordinator keeps running.
//!
//! Both tests need root with CAP_SYS_ADMIN (the running one also loop devices,
//! `mkfs.ext4` and `e2fsck`). Without them they say so on stderr, past the test
//! harness's output capture, and check what they still can.

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lem_common::rpc::{LeaseRequest, RpcErrorKind};
use lem_common::types::WorkerId;
use lem_tests::{check_exactly_once, wait_for, Proc};
use lem_wire::transport::{self, Endpoint};
use serde_json::Value;

use super::{result_rows, Fleet};
use crate::{ctx, register_request, rt, COORD};

/// What the kernel says when a write meets a read-only file system.
const EROFS: &str = "Read-only file system";

/// Says on stderr, past the test harness's capture (it takes only `print!` and
/// `eprint!`), that part of a test was not run and why: a skipped check must not read
/// as a pass.
fn not_run(test: &str, what: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n*** {test}: NOT RUN: {what}. Why: {why} ***"
    );
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Whether making a file in `dir` fails as on a read-only file system (ext4's
/// `emergency_ro` does not show in statvfs's flags).
fn is_read_only(dir: &Path) -> bool {
    let probe = dir.join(".read-only-probe");
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(e) => e.raw_os_error() == Some(libc::EROFS),
    }
}

/// A file system mounted by the test; detached (lazily) when dropped, so a failing
/// test leaves no mount behind.
struct Mounted {
    at: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SAFETY: umount2 with a valid C string.
        unsafe {
            libc::umount2(c_path(&self.at).as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Mounts a small tmpfs on `at` (made if missing).
fn mount_tmpfs(at: &Path) -> Result<Mounted, String> {
    std::fs::create_dir_all(at).map_err(|e| format!("cannot make {}: {e}", at.display()))?;
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c_path(at).as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=16m".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount -t tmpfs on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Mounted {
        at: at.to_path_buf(),
    })
}

/// Runs a system tool; its output when it fails (or exits with a code not in `ok`).
fn tool(bin: &str, args: &[&str], ok: &[i32]) -> Result<(), String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    match out.status.code() {
        Some(c) if ok.contains(&c) => Ok(()),
        _ => Err(format!(
            "{bin} {args:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// An ext4 image on a loop device, mounted with `errors=remount-ro`, that the test can
/// turn read-only under a running process as a failing disk would.
struct Ext4Disk {
    image: PathBuf,
    at: PathBuf,
    mounted: Option<Mounted>,
}

impl Ext4Disk {
    /// Makes a 32 MiB image and mounts it on `at`; `Err` says what this machine lacks.
    fn new(image: &Path, at: &Path) -> Result<Ext4Disk, String> {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(32 << 20))
            .map_err(|e| format!("cannot make {}: {e}", image.display()))?;
        std::fs::create_dir_all(at).map_err(|e| format!("cannot make {}: {e}", at.display()))?;
        tool("e2fsck", &["-V"], &[0])?;
        tool("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()], &[0])?;
        let mut disk = Ext4Disk {
            image: image.to_path_buf(),
            at: at.to_path_buf(),
            mounted: None,
        };
        disk.mount()?;
        let trigger = disk.trigger()?;
        if !trigger.exists() {
            return Err(format!("this kernel has no {}", trigger.display()));
        }
        Ok(disk)
    }

    fn mount(&mut self) -> Result<(), String> {
        let (img, at) = (self.image.to_str().unwrap(), self.at.to_str().unwrap());
        tool("mount", &["-o", "loop,errors=remount-ro", img, at], &[0])?;
        self.mounted = Some(Mounted {
            at: self.at.clone(),
        });
        Ok(())
    }

    /// `/sys/fs/ext4/loopN/trigger_fs_error` of the loop device mounted on `at`.
    fn trigger(&self) -> Result<PathBuf, String> {
        let at = self.at.canonicalize().map_err(|e| e.to_string())?;
        let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
        // The last mount on `at` is the one in force.
        let dev = mounts
            .lines()
            .rev()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some((f.next()?, f.next()?))
            })
            .find(|(_, point)| Path::new(point) == at)
            .map(|(dev, _)| dev)
            .ok_or_else(|| format!("{} is not in /proc/self/mounts", at.display()))?;
        let name = Path::new(dev).file_name().unwrap().to_string_lossy();
        Ok(PathBuf::from(format!(
            "/sys/fs/ext4/{name}/trigger_fs_error"
        )))
    }

    /// An ext4 error: with `errors=remount-ro` the kernel makes the file system
    /// read-only at once, under every open file.
    fn fail(&self) -> Result<(), String> {
        let trigger = self.trigger()?;
        std::fs::write(&trigger, "1").map_err(|e| format!("{}: {e}", trigger.display()))?;
        if !is_read_only(&self.at) {
            return Err(format!("{} is still writable", self.at.display()));
        }
        Ok(())
    }

    /// What an operator does: unmount (once the coordinator has let go of the
    /// manifest), check, mount again. The coordinator is not touched; while the file
    /// system is away it must not write into the bare mount point.
    fn repair(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // SAFETY: umount2 with a valid C string.
            let rc = unsafe { libc::umount2(c_path(&self.at).as_ptr(), 0) };
            if rc == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if Instant::now() > deadline {
                return Err(format!(
                    "cannot unmount {} ({e}): does the coordinator still hold the read-only manifest?",
                    self.at.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Unmounted: the guard has nothing left to detach.
        std::mem::forget(self.mounted.take());
        // Unmounted a while (the coordinator retries every sweep, 0.5 s): it must wait
        // for its manifest, not make an empty one in the bare mount point.
        std::thread::sleep(Duration::from_millis(1500));
        let bare: Vec<_> = std::fs::read_dir(&self.at)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if !bare.is_empty() {
            return Err(format!(
                "the coordinator wrote {bare:?} into the unmounted data dir {}",
                self.at.display()
            ));
        }
        // 0: clean, 1: errors corrected (the one the test triggered).
        tool(
            "e2fsck",
            &["-f", "-y", self.image.to_str().unwrap()],
            &[0, 1],
        )?;
        self.mount()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// "run leased" lines in every worker's log: one per lease a worker was granted.
fn leases_granted(fleet: &Fleet) -> usize {
    fleet
        .workers
        .iter()
        .map(|w| w.logs().matches("run leased").count())
        .sum()
}

const PROBE: &str = "probe";

/// Registers the in-test worker [`PROBE`] (no slots of its own: it leases by hand).
fn register_probe(addr: &str) {
    rt().block_on(async {
        let c = transport::connect(&Endpoint::plain(addr)).await.unwrap();
        c.register(ctx(), register_request(PROBE))
            .await
            .unwrap()
            .unwrap();
    });
}

/// [`PROBE`] asks for a lease on a 1-GPU slot; the reply, as text.
fn probe_lease(addr: &str) -> Result<String, (RpcErrorKind, String)> {
    rt().block_on(async {
        let c = transport::connect(&Endpoint::plain(addr)).await.unwrap();
        let req = LeaseRequest {
            worker: WorkerId(PROBE.into()),
            slot: 0,
            wait_ms: 1_000,
            warm: vec![],
            gpus: 1,
            max_gpus: 0,
            telemetry: vec![],
        };
        match c.lease(ctx(), req).await.unwrap() {
            Ok(grant) => Ok(format!("{grant:?}")),
            Err(e) => Err((e.kind, e.message)),
        }
    })
}

/// The fields of an accepted result that must not change.
fn accepted(rows: &[Value]) -> Vec<(String, String)> {
    rows.iter()
        .filter(|r| r["state"] == "done")
        .map(|r| {
            let key = r["experiment_id"].to_string();
            let what = ["worker", "started_at", "ended_at", "total_energy_j"]
                .map(|k| r[k].to_string())
                .join(" ");
            (key, what)
        })
        .collect()
}

/// Runs in tests/fixtures/read-only-8.yaml.
const RO_RUNS: u64 = 8;

/// The data dir's file system turns read-only mid-campaign (an ext4 error with
/// `errors=remount-ro`): the coordinator keeps running, a submission is refused
/// naming the read-only file system and the data dir, a lease asked for is refused,
/// no worker is granted one; after the file system is checked and mounted again the
/// same coordinator finishes the campaign, every run exactly once, the results
/// accepted before unchanged, and a submission works.
#[test]
fn a_read_only_data_dir_refuses_new_work_and_loses_nothing() {
    const TEST: &str = "a_read_only_data_dir_refuses_new_work_and_loses_nothing";
    let tmp = tempfile::tempdir().unwrap();
    // The data dir is the file system's root (Fleet puts it at DIR/coord).
    let mut disk = match Ext4Disk::new(&tmp.path().join("data.img"), &tmp.path().join("coord")) {
        Ok(d) => d,
        Err(why) => {
            not_run(
                TEST,
                "the data dir turning read-only under a running coordinator (needs root with CAP_SYS_ADMIN, loop devices, mkfs.ext4, e2fsck); the start-up checks are in lem_coord_start_on_a_read_only_data_dir_fails_clearly",
                &why,
            );
            return;
        }
    };
    let mut fleet = Fleet::start(tmp.path());
    let w = fleet.spawn_worker("r0", "r0");
    fleet.workers.push(w);
    register_probe(&fleet.addr);
    let id = fleet.submit("read-only-8.yaml");
    let all = fleet.all();
    wait_for("two runs done", Duration::from_secs(60), &all, || {
        let s = crate::status_json(&fleet.addr, &id)?;
        (s["done"].as_u64()? >= 2).then_some(())
    });
    let before = accepted(&result_rows(&fleet.addr, &id));

    if let Err(e) = disk.fail() {
        fleet.fail(&format!("the data dir turns read-only: {e}"));
    }
    let ro_since = unix_ms();
    let study = lem_tests::repo_root().join("tests/fixtures/read-only-8.yaml");
    let submit = [
        "submit",
        study.to_str().unwrap(),
        "--coordinator",
        &fleet.addr,
    ];
    fleet.submission_refused(&submit, &[EROFS, "data dir"]);
    match probe_lease(&fleet.addr) {
        Err((RpcErrorKind::Unavailable, m)) if m.contains(EROFS) => {}
        other => fleet.fail(&format!(
            "a lease asked for on the read-only data dir is refused (Unavailable, naming it): {other:?}"
        )),
    }
    // Runs granted before the file system failed may still be logged; none after.
    let granted = leases_granted(&fleet);
    // The worker finishes its run and cannot report it (or cannot lease).
    let all = fleet.all();
    wait_for(
        "a worker to meet the read-only manifest",
        Duration::from_secs(30),
        &all,
        || {
            let logs: String = fleet.workers.iter().map(|w| w.logs()).collect();
            logs.contains(EROFS).then_some(())
        },
    );
    // Read-only past a lease TTL: the run in flight has ended and its lease's
    // deadline passes while nothing can be written.
    let hold = Duration::from_secs(super::TTL_SECS + 1);
    let held = Duration::from_millis(unix_ms() - ro_since);
    std::thread::sleep(hold.saturating_sub(held).max(Duration::from_secs(1)));
    if leases_granted(&fleet) != granted {
        fleet.fail("no lease is granted while the data dir is read-only");
    }
    if !fleet.coord.is_running() {
        fleet.fail("the coordinator keeps running on a read-only data dir");
    }
    let ro_for = Duration::from_millis(unix_ms() - ro_since);

    if let Err(e) = disk.repair() {
        fleet.fail(&format!("the data dir is repaired and mounted again: {e}"));
    }
    let status = fleet.wait_finished(&id, RO_RUNS, "the campaign to finish after the repair");
    let rows = result_rows(&fleet.addr, &id);
    if let Err(e) = check_exactly_once(&status, &rows, RO_RUNS) {
        fleet.fail(&e);
    }
    let after = accepted(&rows);
    if let Some(lost) = before.iter().find(|b| !after.contains(b)) {
        fleet.fail(&format!(
            "a result accepted before the data dir turned read-only is kept as it was: {lost:?} not in {after:?}"
        ));
    }
    fleet.submission_works_again(&submit, RO_RUNS);
    if !fleet.coord.is_running() || fleet.n_coords != 1 || fleet.coord.logs().contains("panicked") {
        fleet.fail("one coordinator, never restarted, no panic");
    }
    eprintln!(
        "read-only for {ro_for:?}; {} accepted before, all {RO_RUNS} done once after",
        before.len()
    );
}

/// How a start-up test makes its data dir read-only.
enum ReadOnly {
    /// A tmpfs on the data dir, remounted read-only.
    Mount(Mounted),
    /// Mode bits (a user without CAP_DAC_OVERRIDE, where mounting is not allowed:
    /// why not).
    Chmod(PathBuf, String),
}

impl ReadOnly {
    /// A writable, empty `dir` that [`ReadOnly::engage`] can make read-only; `Err`
    /// when this user can do neither.
    fn new(dir: &Path) -> Result<ReadOnly, String> {
        let mount_err = match mount_tmpfs(dir) {
            Ok(m) => return Ok(ReadOnly::Mount(m)),
            Err(e) => e,
        };
        set_mode(dir, 0o555);
        let restricts = std::fs::File::create(dir.join("probe")).is_err();
        set_mode(dir, 0o755);
        let _ = std::fs::remove_file(dir.join("probe"));
        if restricts {
            Ok(ReadOnly::Chmod(dir.to_path_buf(), mount_err))
        } else {
            Err(format!("{mount_err}; and mode bits do not restrict this user (root without CAP_SYS_ADMIN?)"))
        }
    }

    fn engage(&self) {
        match self {
            ReadOnly::Mount(m) => {
                // SAFETY: mount(2) remounting with valid C strings.
                let rc = unsafe {
                    libc::mount(
                        std::ptr::null(),
                        c_path(&m.at).as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    )
                };
                let e = std::io::Error::last_os_error();
                assert_eq!(rc, 0, "mount -o remount,ro {}: {e}", m.at.display());
                assert!(is_read_only(&m.at));
            }
            ReadOnly::Chmod(dir, _) => walk_modes(dir, 0o555, 0o444),
        }
    }

    /// The kernel's word for the refusal.
    fn reason(&self) -> &'static str {
        match self {
            ReadOnly::Mount(_) => EROFS,
            ReadOnly::Chmod(..) => "Permission denied",
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        // Writable again, so the temp dir can be removed.
        if let ReadOnly::Chmod(dir, _) = self {
            walk_modes(dir, 0o755, 0o644);
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// Sets `dirs` on `dir` and every directory below it, `files` on every file.
fn walk_modes(dir: &Path, dirs: u32, files: u32) {
    set_mode(dir, 0o755);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk_modes(&p, dirs, files);
        } else {
            set_mode(&p, files);
        }
    }
    set_mode(dir, dirs);
}

/// `lem-coord start` on `data_dir`, which must exit by itself; its exit status and
/// stderr.
fn start_must_exit(dir: &Path, data_dir: &Path, name: &str) -> (std::process::ExitStatus, String) {
    let mut p = Proc::spawn(
        name,
        COORD,
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        dir,
    );
    let Some(status) = p.wait_exit(Duration::from_secs(30)) else {
        panic!(
            "lem-coord start on a read-only data dir exits\n{}",
            p.logs()
        );
    };
    (status, std::fs::read_to_string(&p.stderr).unwrap())
}

/// One line, an error (exit 1, not a signal or a panic) naming `what` and `reason`
/// and saying what to do.
fn check_refusal(status: std::process::ExitStatus, stderr: &str, what: &str, reason: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let ok = status.code() == Some(1)
        && lines.len() == 1
        && lines[0].starts_with("lem-coord: error:")
        && lines[0].contains(what)
        && lines[0].contains(reason)
        && lines[0].contains("writable")
        && !stderr.contains("panicked");
    assert!(
        ok,
        "one clear error naming {what} and {reason}, exit 1: {status}\n{stderr}"
    );
}

/// `lem-coord start` on a read-only data dir, one it used before and one it has never
/// seen: it exits 1 with one line naming the manifest (or the data dir) and the
/// read-only file system and saying what to do, and the manifest is not changed.
#[test]
fn lem_coord_start_on_a_read_only_data_dir_fails_clearly() {
    const TEST: &str = "lem_coord_start_on_a_read_only_data_dir_fails_clearly";
    let tmp = tempfile::tempdir().unwrap();
    let coord_dir = tmp.path().join("coord");
    let ro = match ReadOnly::new(&coord_dir) {
        Ok(ro) => ro,
        Err(why) => {
            not_run(TEST, "every check (no way to make a read-only dir)", &why);
            return;
        }
    };
    if let ReadOnly::Chmod(_, why) = &ro {
        not_run(
            TEST,
            "the read-only mount (remount,ro); checked with mode bits (Permission denied) instead",
            why,
        );
    }
    // A first start makes the manifest and the CA; SIGTERM stops it cleanly.
    let (mut coord, _) = crate::start_coordinator(tmp.path());
    coord.signal(libc::SIGTERM);
    let st = coord.wait_exit(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", coord.logs());
    let manifest = coord_dir.join("manifest.redb");
    let bytes = std::fs::read(&manifest).unwrap();

    ro.engage();
    let (status, stderr) = start_must_exit(tmp.path(), &coord_dir, "coord-ro");
    check_refusal(status, &stderr, manifest.to_str().unwrap(), ro.reason());
    assert!(
        std::fs::read(&manifest).unwrap() == bytes,
        "the manifest is byte-identical after the refused start"
    );

    let fresh = coord_dir.join("fresh");
    let (status, stderr) = start_must_exit(tmp.path(), &fresh, "coord-fresh");
    check_refusal(status, &stderr, fresh.to_str().unwrap(), ro.reason());
    assert!(!fresh.exists());
}
