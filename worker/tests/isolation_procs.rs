//! The device isolation check's process helpers (`lem_worker::isolation`) on real
//! processes. They spawn children, so they live in their own test binary: a child
//! forked while a unit test of the library holds a lock file shares that lock until it
//! execs (`gpu_claim`'s tests take, drop and retake `flock`s).

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use lem_worker::isolation::{
    group_has_members, is_alive, own_pids, process_name, worker_and_descendants,
};

/// A real process tree: a shell that starts a sleep is the harness's stand-in; both
/// are ours, the test process (the "worker") too, and an unrelated process is not.
#[test]
fn own_pids_hold_the_worker_the_harness_and_its_children() {
    let mut harness = Command::new("sh")
        .args(["-c", "sleep 30 & wait"])
        .spawn()
        .unwrap();
    let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
    let hpid = harness.id();
    // Wait for the shell's child to appear.
    let mut own = BTreeSet::new();
    for _ in 0..100 {
        own = own_pids(Some(hpid));
        if own.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = harness.kill();
    let _ = stranger.kill();
    let _ = harness.wait();
    let _ = stranger.wait();
    assert!(own.contains(&std::process::id()), "{own:?}");
    assert!(own.contains(&hpid), "{own:?}");
    assert_eq!(own.len(), 3, "the worker, the shell and its sleep: {own:?}");
    assert!(!own.contains(&stranger.id()), "{own:?}");
    assert_eq!(own_pids(None), BTreeSet::from([std::process::id()]));
    assert!(worker_and_descendants().contains(&std::process::id()));
}

/// A group whose leader is gone still has members while a child it started lives.
#[test]
fn a_group_has_members_until_its_last_live_process_ends() {
    let mut leader = Command::new("sh")
        .args(["-c", "sleep 30 & echo started; wait"])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = leader.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    // The leader dies; its sleep (same group) lives on.
    let _ = leader.kill();
    let _ = leader.wait();
    let outlived = group_has_members(pgid);
    // SAFETY: signalling the process group this test created.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
    let mut gone = false;
    for _ in 0..250 {
        if !group_has_members(pgid) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(outlived, "the sleep outlives its shell");
    assert!(gone, "no live member once the group is killed");
}

#[test]
fn names_and_liveness_come_from_proc() {
    assert!(is_alive(std::process::id()));
    assert!(process_name(std::process::id()).is_some());
    // Pid 0 is never a process in /proc, nor is a pid past pid_max.
    assert!(!is_alive(0));
    assert_eq!(process_name(u32::MAX), None);
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    // Exited but not reaped: a zombie, not alive.
    for _ in 0..100 {
        if !is_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_alive(pid));
    let _ = child.wait();
}
