//! Bad input: each case exits non-zero with a message that names the file, the key
//! or the address to fix.

use lem_tests::{describe, run};

use crate::COORD;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

const GOOD_HEAD: &str = "task:\n  model: m\nengine: synthetic\nserving_mode: offline\n";

#[test]
fn malformed_yaml_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "broken.yaml",
        "task:\n  model: [unclosed\nsweep: {}\n",
    );
    let args = ["grid", p.as_str()];
    let out = run(COORD, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
    assert!(err.contains("broken.yaml"), "{}", describe(&args, &out));
    assert!(
        err.contains("broken.yaml:"),
        "names a line: {}",
        describe(&args, &out)
    );
}

#[test]
fn unknown_key_names_key_path_and_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "typo.yaml",
        "task:\n  model: m\n  max_output_token: 8\nengine: synthetic\nserving_mode: offline\nsweep: {}\n",
    );
    for args in [
        vec!["grid", p.as_str()],
        vec!["submit", p.as_str(), "--coordinator", "127.0.0.1:1"],
    ] {
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
        assert!(
            err.contains("max_output_token"),
            "{}",
            describe(&args, &out)
        );
        assert!(
            err.contains("max_output_tokens"),
            "suggests the valid key: {}",
            describe(&args, &out)
        );
        assert!(
            err.contains("typo.yaml:3"),
            "names file and line: {}",
            describe(&args, &out)
        );
    }
}

#[test]
fn empty_sweep_axis_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "empty.yaml",
        &format!("{GOOD_HEAD}sweep:\n  synthetic.engine_params.batch_size: []\n"),
    );
    let args = ["grid", p.as_str()];
    let out = run(COORD, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
    assert!(
        err.contains("synthetic.engine_params.batch_size"),
        "{}",
        describe(&args, &out)
    );
}

#[test]
fn coordinator_not_running_names_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "ok.yaml", &format!("{GOOD_HEAD}sweep: {{}}\n"));
    for args in [
        vec!["status", "--coordinator", "127.0.0.1:1"],
        vec!["submit", p.as_str(), "--coordinator", "127.0.0.1:1"],
        vec!["workers", "--coordinator", "127.0.0.1:1"],
    ] {
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{}", describe(&args, &out));
        assert!(err.contains("127.0.0.1:1"), "{}", describe(&args, &out));
        assert!(
            err.contains("lem-coord start"),
            "says what to do: {}",
            describe(&args, &out)
        );
    }
}

#[test]
fn missing_study_file_names_it() {
    let args = ["grid", "/nonexistent/study.yaml"];
    let out = run(COORD, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
    assert!(
        err.contains("/nonexistent/study.yaml"),
        "{}",
        describe(&args, &out)
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the reason once: {err}"
    );
}

#[test]
fn oversized_grid_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "huge.yaml",
        &format!(
            "{GOOD_HEAD}sweep:\n  task.max_input_tokens: {{min: 1, max: 30, num: 30}}\n  task.max_output_tokens: {{min: 1, max: 30, num: 30}}\n  synthetic.engine_params.batch_size: {{min: 1, max: 30, num: 30}}\n"
        ),
    );
    for args in [
        vec!["submit", p.as_str(), "--coordinator", "127.0.0.1:1"],
        vec![
            "run",
            p.as_str(),
            "--data-dir",
            "/nonexistent-never-created",
        ],
    ] {
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
        assert!(
            err.contains("27000"),
            "names the size: {}",
            describe(&args, &out)
        );
        assert!(
            err.contains("--allow-large-grid"),
            "says how to go on: {}",
            describe(&args, &out)
        );
    }
    // With the flag, submit gets past the check (and then finds no coordinator).
    let args = [
        "submit",
        p.as_str(),
        "--allow-large-grid",
        "--coordinator",
        "127.0.0.1:1",
    ];
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&args, &out));
}

/// A worker of another protocol version is refused at registration with a message
/// that names both versions (spoken over a real connection, as an old lem-worker
/// would), and nothing about it is recorded.
#[test]
fn a_worker_of_another_protocol_version_is_refused() {
    use lem_common::rpc::{RegisterRequest, RpcErrorKind};
    use lem_common::types::WorkerId;
    let tmp = tempfile::tempdir().unwrap();
    let (coord, addr) = crate::start_coordinator(tmp.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let register = |name: &str, protocol_version: u32, worker_version: &str| {
        rt.block_on(async {
            let client = lem_wire::transport::connect(&lem_wire::transport::Endpoint::plain(&addr))
                .await
                .unwrap();
            client
                .register(
                    tarpc::context::current(),
                    RegisterRequest {
                        worker: WorkerId(name.into()),
                        host: "h".into(),
                        protocol_version,
                        worker_version: worker_version.into(),
                        slots: vec![],
                        engines: vec![],
                        runtime: Default::default(),
                    },
                )
                .await
                .unwrap()
        })
    };
    let reply = register("from-the-future", lem_common::PROTOCOL_VERSION + 1, "9.9.9");
    let err = reply.expect_err("refused");
    assert_eq!(
        err.kind,
        RpcErrorKind::VersionMismatch,
        "{err}\n{}",
        coord.logs()
    );
    let want = format!("speaks protocol {}", lem_common::PROTOCOL_VERSION + 1);
    assert!(err.message.contains(&want), "{err}");
    assert!(err.message.contains("9.9.9"), "{err}");
    // A worker from before the nested result (protocol 4) is told why it must not send.
    let err = register("from-the-past", 4, "0.0.4").expect_err("refused");
    assert_eq!(err.kind, RpcErrorKind::VersionMismatch, "{err}");
    assert!(
        err.message.contains("speaks protocol 4") && err.message.contains("nested"),
        "{err}"
    );
    let out = run(COORD, &["workers", "--json", "--coordinator", &addr]);
    assert!(out.status.success(), "{}", describe(&["workers"], &out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn a_study_past_the_size_limit_is_refused_before_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    let padding = "# padding\n".repeat(500_000);
    let p = write(
        tmp.path(),
        "huge.yaml",
        &format!("{GOOD_HEAD}sweep: {{}}\n{padding}"),
    );
    let args = ["submit", p.as_str(), "--coordinator", "127.0.0.1:1"];
    let out = run(COORD, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
    assert!(
        err.contains("huge.yaml: the study is") && err.contains("the limit is 4194304"),
        "{}",
        describe(&args, &out)
    );
}

#[test]
fn a_methodology_the_fleet_does_not_measure_is_refused_naming_the_key() {
    // llem accepts measurement_methodology: windowed / steady_state; the fleet measures
    // the whole span only, so it refuses rather than publish another span's energy.
    let tmp = tempfile::tempdir().unwrap();
    for (name, m) in [
        (
            "windowed.yaml",
            "measurement:\n  measurement_methodology: windowed\n  measurement_window: [1.0, 2.0]\n",
        ),
        (
            "steady.yaml",
            "measurement:\n  measurement_methodology: steady_state\n",
        ),
    ] {
        let p = write(tmp.path(), name, &format!("{GOOD_HEAD}{m}sweep: {{}}\n"));
        let args = ["submit", p.as_str(), "--coordinator", "127.0.0.1:1"];
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
        assert!(
            err.contains(name),
            "names the file: {}",
            describe(&args, &out)
        );
        assert!(
            err.contains("measurement.measurement_methodology"),
            "names the key: {}",
            describe(&args, &out)
        );
        assert!(err.contains("set it to total"), "{}", describe(&args, &out));
        // The same study expands as llem expands it (the refusal is the fleet's, at submit).
        let args = ["grid", p.as_str()];
        let out = run(COORD, &args);
        assert!(out.status.success(), "{}", describe(&args, &out));
    }
}

#[test]
fn worker_check_names_what_a_process_worker_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = tmp.path().join("w");
    let dd = dd.to_str().unwrap();
    // A Python that is not there: a failure naming the flag that fixes it.
    let args = [
        "check",
        "--simulate-gpu",
        "--data-dir",
        dd,
        "--python",
        "/nonexistent/python3",
    ];
    let out = run(crate::WORKER, &args);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(report.contains("FAIL  python"), "{report}");
    assert!(report.contains("--python"), "{report}");

    // The host's Python: the harness starts and says which engines it runs.
    let args = ["check", "--simulate-gpu", "--data-dir", dd];
    let out = run(crate::WORKER, &args);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert!(report.contains("ok    python"), "{report}");
    assert!(report.contains("engines"), "{report}");
    assert!(report.contains("synthetic"), "{report}");

    // Without --simulate-gpu a host with no NVIDIA driver fails, naming the fix
    // (on a GPU host the NVML line is ok instead).
    let args = ["check", "--data-dir", dd];
    let out = run(crate::WORKER, &args);
    let report = String::from_utf8_lossy(&out.stdout);
    if report.contains("FAIL  nvml") {
        assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
        assert!(report.contains("--simulate-gpu"), "{report}");
    } else {
        assert!(report.contains("ok    nvml"), "{report}");
    }
}

#[test]
fn a_bad_runner_is_refused_at_submit_with_llems_rename_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let (_coord, addr) = crate::start_coordinator(tmp.path());
    for (block, needles) in [
        (
            "runners: {synthetic: docker}\n",
            &["runners.synthetic", "renamed", "\"container\""][..],
        ),
        (
            "runners: {synthetic: 'docker:img:1'}\n",
            &["\"container:img:1\""][..],
        ),
        (
            "runners: {synthetic: podman}\n",
            &[
                "runners.synthetic",
                "valid: process, container, container:<image>",
            ][..],
        ),
        (
            "runners: {syntetic: process}\n",
            &["runners.syntetic", "is not an engine"][..],
        ),
        (
            "images: {synthetic: 7}\n",
            &["images.synthetic: must be a string"][..],
        ),
    ] {
        let p = write(
            tmp.path(),
            "runners.yaml",
            &format!("{GOOD_HEAD}sweep:\n  task.max_output_tokens: [4]\n{block}"),
        );
        let args = ["submit", p.as_str(), "--coordinator", addr.as_str()];
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
        assert!(err.contains("runners.yaml"), "{}", describe(&args, &out));
        for n in needles {
            assert!(err.contains(n), "{n:?}: {}", describe(&args, &out));
        }
    }
}
