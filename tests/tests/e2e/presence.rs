//! Worker presence with real processes: a worker that stops cleanly (SIGTERM) is
//! shown disconnected at once; one killed without a word (SIGKILL) within one lease
//! TTL of its last call, measured; `workers` prints a header and the state, and
//! `status` of a campaign nobody can run says no worker is connected.

use std::time::{Duration, Instant};

use lem_tests::{describe, run, wait_for, Proc};

use crate::{campaign_id, connected, start_worker, status_json, wait_for_addr, COORD};

const TTL_S: u64 = 6;

#[test]
fn stopped_and_killed_workers_are_shown_disconnected_within_the_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let coord_dir = dir.join("coord");
    let ttl = TTL_S.to_string();
    let coord = Proc::spawn(
        "coord",
        COORD,
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            coord_dir.to_str().unwrap(),
            "--lease-ttl-secs",
            &ttl,
        ],
        dir,
    );
    let addr = wait_for_addr(&coord, &coord_dir);
    let mut calm = start_worker(dir, &addr, "calm");
    let mut sudden = start_worker(dir, &addr, "sudden");
    for name in ["calm", "sudden"] {
        wait_for(
            &format!("{name} connected"),
            Duration::from_secs(60),
            &[&coord],
            || connected(&addr, name).filter(|c| *c),
        );
    }
    // Both stay connected over several TTLs while idle (long polls, no runs).
    std::thread::sleep(Duration::from_secs(TTL_S * 2));
    assert_eq!(connected(&addr, "calm"), Some(true));
    assert_eq!(connected(&addr, "sudden"), Some(true));
    let out = run(COORD, &["workers", "--coordinator", &addr]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let header = text.lines().next().unwrap_or_default();
    for column in ["worker", "host", "state", "last seen", "slots", "engines"] {
        assert!(header.contains(column), "no {column} in the header: {text}");
    }
    assert!(text.contains("2 connected, 0 disconnected"), "{text}");

    // SIGTERM: the worker deregisters on its way out.
    calm.signal(libc::SIGTERM);
    assert!(calm.wait_exit(Duration::from_secs(60)).is_some());
    assert_eq!(
        connected(&addr, "calm"),
        Some(false),
        "a stopped worker is disconnected at once"
    );

    // SIGKILL: nothing said; shown disconnected one TTL after its last call (a long
    // poll in flight ends with its connection).
    sudden.kill();
    let t0 = Instant::now();
    wait_for(
        "sudden disconnected",
        Duration::from_secs(60),
        &[&coord],
        || connected(&addr, "sudden").filter(|c| !*c),
    );
    let took = t0.elapsed();
    eprintln!(
        "a SIGKILLed worker was shown disconnected after {:.1} s (TTL {TTL_S} s)",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(TTL_S + 3),
        "took {took:?} with a TTL of {TTL_S} s"
    );

    // A campaign now: nobody to run it, and status says so.
    let study = dir.join("s.yaml");
    std::fs::write(
        &study,
        "task: {model: m, dataset: {n_prompts: 1}, max_output_tokens: 4}\nengine: synthetic\nserving_mode: offline\noffline: {warmup: {enabled: false}}\n",
    )
    .unwrap();
    let args = ["submit", study.to_str().unwrap(), "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);
    let s = status_json(&addr, &id).unwrap();
    let blocked = s["blocked"].to_string();
    assert!(
        blocked.contains("no worker is connected (2 registered worker(s)"),
        "{s}"
    );
    let out = run(COORD, &["workers", "--coordinator", &addr]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 connected, 2 disconnected"));
}
